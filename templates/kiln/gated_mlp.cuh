// kiln/gated_mlp.cuh — Hopper (sm_90a) fused gated MLP expansion: out = act(x · W_gᵀ) ⊙ (x · W_uᵀ).
//
// CTA = one producer warpgroup + two consumer warpgroups, output tile 128 rows × BN columns of out. The producer's
// first thread streams H in chunks of 128 bytes (64 bf16/fp16 or 32 fp32 elements) through a STAGES-deep ring: the x
// tile [128 rows][128 B] and the W_g and W_u tiles [BN rows][128 B] land by TMA (128-byte swizzle: the K-major layout
// wgmma reads), completing on the stage's `full` mbarrier; rows past M or I and columns past H are zero-filled by the
// copy engine, so every chunk lands full boxes and no operand is ever read out of bounds. Consumer warpgroup j takes
// rows [64·j, 64·j + 64) of the tile and keeps two accumulator sets, gate and up (m64nBN each, fp32), issuing per k
// step one wgmma on W_g and one on W_u that share the A descriptor; it keeps one chunk of MMAs in flight and releases a
// stage once the MMAs reading it have completed. Epilogue straight from the registers: act(g)·u in fp32, rounded once
// to the output dtype, rows past M and columns past I masked.
// Tiles are rastered in groups of 8 row tiles: consecutive CTAs share a weight tile (read once from DRAM while the
// group's x rows stay in L2).
#pragma once
#include "kiln/gated_mlp_args.h"
#include "kiln/mbarrier.cuh"
#include "kiln/ptx.cuh"

namespace kiln {
namespace gmlp {

// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart.
__device__ __forceinline__ u64 desc_sw128(u32 smem_byte_addr) {
  return static_cast<u64>((smem_byte_addr & 0x3FFFF) >> 4) | (static_cast<u64>(1) << 16) |
         (static_cast<u64>(1024 >> 4) << 32) | (static_cast<u64>(1) << 62);
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// One wgmma.m64nNk{16|8}: bf16 / fp16 operands (k16) or fp32 operands read as TF32 (k8); 32 bytes of K either way.
// Written out in full: PTX needs every accumulator register named.
template <int N, typename T>
__device__ __forceinline__ void wgmma(float (&d)[N / 2], u64 a, u64 b);
// d[64 × 128] += A[64 × 16] · B[128 × 16]ᵀ, bf16 operands from shared memory (K-major).
template <> __device__ __forceinline__ void wgmma<128, bf16>(float (&d)[64], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(1));
}

// d[64 × 128] += A[64 × 16] · B[128 × 16]ᵀ, f16 operands from shared memory (K-major).
template <> __device__ __forceinline__ void wgmma<128, f16>(float (&d)[64], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(1));
}

// d[64 × 128] += A[64 × 8] · B[128 × 8]ᵀ, tf32 operands from shared memory (K-major).
template <> __device__ __forceinline__ void wgmma<128, float>(float (&d)[64], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(1));
}

// d[64 × 64] += A[64 × 16] · B[64 × 16]ᵀ, bf16 operands from shared memory (K-major).
template <> __device__ __forceinline__ void wgmma<64, bf16>(float (&d)[32], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(1));
}

// d[64 × 64] += A[64 × 16] · B[64 × 16]ᵀ, f16 operands from shared memory (K-major).
template <> __device__ __forceinline__ void wgmma<64, f16>(float (&d)[32], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(1));
}

// d[64 × 64] += A[64 × 8] · B[64 × 8]ᵀ, tf32 operands from shared memory (K-major).
template <> __device__ __forceinline__ void wgmma<64, float>(float (&d)[32], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(1));
}

template <int ACT>
__device__ __forceinline__ float activation(float z) {
  if constexpr (ACT == 0) {
    return z / (1.0f + expf(-z));  // silu; z → −∞: −0, z → +∞: z, NaN stays NaN
  } else {
    return 0.5f * z * (1.0f + erff(z * 0.7071067811865476f));  // exact erf GELU
  }
}

// Two adjacent output elements of a row at column `col`, the second only if `second` (col + 1 < I): one 4- or
// 8-byte store where the pair is aligned (`aligned`: an even row stride), else one element at a time.
template <typename T>
__device__ __forceinline__ void store2(T* row, int col, float v0, float v1, bool second, bool aligned) {
  if (second && aligned) {
    if constexpr (sizeof(T) == 4)
      *reinterpret_cast<float2*>(row + col) = make_float2(v0, v1);
    else
      *reinterpret_cast<u32*>(row + col) = pack2<T>(v0, v1);
  } else {
    row[col] = from_float<T>(v0);
    if (second) row[col + 1] = from_float<T>(v1);
  }
}

}  // namespace gmlp

// Grid: m_tiles · ceil(I / BN) CTAs (1-D), 384 threads, dynamic shared memory 1 KiB alignment slack + STAGES ×
// (16 KiB x tile + 2 × BN·128 B weight tiles) + 2·STAGES mbarriers.
template <int H, int I, int ACT, typename T, int BN, int STAGES>
__global__ void __launch_bounds__(384, 1) gated_mlp_kernel(const __grid_constant__ GatedMlpArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(BN == 64 || BN == 128, "BN: 64 or 128 output columns a CTA");
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "bf16, fp16 or fp32 (TF32 MMAs)");
  constexpr int BM = 128, KB = 128 / static_cast<int>(sizeof(T)), CHUNKS = (H + KB - 1) / KB;
  constexpr int A_BYTES = BM * 128, B_BYTES = BN * 128, STAGE = A_BYTES + 2 * B_BYTES;
  constexpr int NT = (I + BN - 1) / BN, GM = 8;
  constexpr u32 TX = STAGE;  // every box lands whole (out-of-range elements as zeros)

  extern __shared__ __align__(16) char smem_raw[];
  const u32 base = (smem_u32(smem_raw) + 1023u) & ~1023u, bars = base + STAGES * STAGE;
  const int tid = threadIdx.x, wg = tid / 128;

  // Tile of this CTA: groups of GM row tiles, row tile fastest inside a group.
  const int b = static_cast<int>(blockIdx.x), group = b / (GM * NT), first = group * GM;
  const int gm = a.m_tiles - first < GM ? a.m_tiles - first : GM, r = b - group * GM * NT;
  const int m0 = (first + r % gm) * BM, n0 = (r / gm) * BN;

  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(bars + 8 * s, 1);
      mbar_init(bars + 8 * (STAGES + s), 2);  // both consumer warpgroups release every stage
    }
    fence_mbar_init();
  }
  __syncthreads();

  if (wg == 0) {  // producer
    setmaxnreg_dec<40>();
    if (tid == 0) {
      prefetch_tmap(&a.tmx);
      prefetch_tmap(&a.tmg);
      prefetch_tmap(&a.tmu);
      int s = 0;
      u32 phase = 0;
      for (int kc = 0; kc < CHUNKS; ++kc) {
        mbar_wait(bars + 8 * (STAGES + s), phase ^ 1);
        const u32 full = bars + 8 * s, sa = base + s * STAGE;
        mbar_arrive_expect_tx(full, TX);
        tma_load_2d(sa, &a.tmx, full, kc * KB, m0);
        tma_load_2d(sa + A_BYTES, &a.tmg, full, kc * KB, n0);
        tma_load_2d(sa + A_BYTES + B_BYTES, &a.tmu, full, kc * KB, n0);
        if (++s == STAGES) {
          s = 0;
          phase ^= 1;
        }
      }
    }
  } else {  // consumers
    setmaxnreg_inc<232>();
    const int wm = wg - 1, lane = tid & 31, warp = (tid & 127) >> 5;
    float g[BN / 2], u[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) g[i] = u[i] = 0.f;
    int s = 0, prev = -1;
    u32 phase = 0;
    for (int kc = 0; kc < CHUNKS; ++kc) {
      mbar_wait(bars + 8 * s, phase);
      const u32 sa = base + s * STAGE + wm * 64 * 128, sg = base + s * STAGE + A_BYTES, su = sg + B_BYTES;
      gmlp::fence_regs(g);
      gmlp::fence_regs(u);
      gmlp::wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        const u64 da = gmlp::desc_sw128(sa + ks * 32);
        gmlp::wgmma<BN, T>(g, da, gmlp::desc_sw128(sg + ks * 32));
        gmlp::wgmma<BN, T>(u, da, gmlp::desc_sw128(su + ks * 32));
      }
      gmlp::wgmma_commit();
      gmlp::wgmma_wait<1>();
      gmlp::fence_regs(g);
      gmlp::fence_regs(u);
      if (prev >= 0 && (tid & 127) == 0) mbar_arrive(bars + 8 * (STAGES + prev));  // its MMAs are done
      prev = s;
      if (++s == STAGES) {
        s = 0;
        phase ^= 1;
      }
    }
    gmlp::wgmma_wait<0>();
    gmlp::fence_regs(g);
    gmlp::fence_regs(u);
    // Register i of lane l: row 16·warp + l/4 + 8·((i/2) & 1), columns 8·(i/4) + 2·(l & 3) + {0, 1}.
    const int row0 = m0 + wm * 64 + warp * 16 + (lane >> 2);
    T* out = static_cast<T*>(a.out);
    const bool even = (a.out_stride & 1) == 0;  // pairs of an odd row stride are not aligned in every row
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + 8 * h;
      if (row >= a.M) continue;
      T* dst = out + static_cast<i64>(row) * a.out_stride;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        const int col = n0 + 8 * j + 2 * (lane & 3);
        if (col >= I) continue;
        const int i = 4 * j + 2 * h;
        const float v0 = gmlp::activation<ACT>(g[i]) * u[i], v1 = gmlp::activation<ACT>(g[i + 1]) * u[i + 1];
        gmlp::store2<T>(dst, col, v0, v1, I % 2 == 0 || col + 1 < I, even);
      }
    }
  }
#else
  __trap();  // sm_90a only (the host recipe never launches it elsewhere)
#endif
}

}  // namespace kiln
