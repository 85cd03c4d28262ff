// kiln/fp4_moe_gemm.cuh — Hopper (sm_90a) grouped GEMM of the FP4 MoE, W4A16 (spec fp4-moe.md §12.3; contract
// ops/fp4_moe_internal.hpp): for every expert e and permuted row r of its segment, acc[r, j] = Σ_k act[r, k]·W[e][j, k]
// with W's E2M1 codes × block scales dequantized exactly to bf16 in registers, fp32 accumulation, then the plain or
// gated epilogue, bf16 out.
//
// Swapped operands: the CTA computes Dᵀ = W·Xᵀ for 128 packed weight rows × N tokens (N = the token tile, wgmma N):
// the weights are wgmma's A operand from registers (consumer warpgroup wg owns packed rows 64·wg …), the permuted
// bf16 activations its B operand in shared memory (TMA, 128-byte swizzle, K-major, two boxes of 64 columns × N rows a
// 128-wide K tile). Grid: token tiles (≤ ceil(rows_cap / N)) × row blocks × split-K ranks in one dimension, row block
// fastest: a CTA whose tile starts at or past offsets[E] exits; its expert is the last e with offsets[e] ≤ tile start
// (binary search). CTA = two consumer warpgroups + a producer (one warp, or a warpgroup for N > 32) whose first thread
// issues, per K tile, the two activation boxes and one 1-D bulk copy of the packed chunk (codes + scales,
// kiln/fp4_moe_gemm_args.h) into a STAGES-deep mbarrier ring. Split-K (decode: too few tiles to fill the GPU): a
// cluster of S CTAs shares a tile, each rank a contiguous K range; rank 0 sums the partials in rank order.
// A 128-token tile with ≤ 64 rows (an expert's partial last tile) runs the K loop on m64n64k16 (half the MMA work).
// Programmatic dependent launch (the layer): the CTA lets the next kernel start at once, finds its segment and loads
// its first stages' weights, then waits for the previous kernel (which wrote the activations) before their boxes.
//
// Consumer, per K tile: its scale bytes (one 16- or 8-byte shared load) become bf16 pairs {sf, sf} per k16 step and
// row half; per half tile one 16-byte shared load holds the codes of 4 k16 steps (32 values). FP4 → bf16: with the
// nibble at bits 12–15 / 28–31, (q & 0x80008000) | ((q >> 6) & 0x01C001C0) is the bf16 pair e2m1·2^−126 (code 1 is a
// bf16 subnormal: bf16 arithmetic keeps subnormals). MXFP4: × 2^(s−1) gives the weight exactly in one multiply
// when every scale byte of the warp's K tile is ≤ 127 (a warp vote; real checkpoints), else × 2^126, × 2^(s−127).
// NVFP4: one multiply by sf·2^106 gives the weight × 2^−20 exactly (every E2M1 × E4M3 product fits bf16's 8
// significant bits and stays normal there); the epilogue folds 2^20 into row_scale. Each half tile is
// one batch of 4 wgmma m64nNk16 on its own register set (A registers are read asynchronously: two sets alternate,
// wgmma.wait_group 1 after each batch); the stage is released once the batch after its last one has been waited for.
//
// Epilogue (accumulator register i of lane l: packed row 16·warp + l/4 + 8·((i/2) & 1), token 8·(i/4) + 2·(l & 3) +
// (i & 1)): plain: out = scale_b·act(scale_a·(row_scale·acc + bias)); gated (packed rows 0–7 of a 16-row slab linear,
// 8–15 the matching gate rows, so registers i and i + 2 pair up): x0, x1 as above, Swiglu / Geglu, × scale_b / scale_a.
// Values go to a per-warpgroup staging buffer [N tokens][64 | 32 columns] in shared memory, then each token row's
// valid part is stored with 16-byte global stores; rows past the segment's count are never written.
#pragma once
#include "kiln/fp4_moe_gemm_args.h"
#include "kiln/gated_mlp.cuh"  // gmlp::activation<1>: the erf GELU
#include "kiln/mbarrier.cuh"
#include "kiln/pdl.cuh"
#include "kiln/ptx.cuh"
#include "kiln/tile_pipeline.cuh"
#include "kiln/wgmma.cuh"

namespace kiln {
namespace f4g {

// d[64 × N] = A[64 × 16] · B[N × 16]ᵀ + (scale_d ? d : 0): A bf16 pairs in registers (per warp the mma.m16n8k16 A-fragment layout of its
// 16 rows), B bf16 in shared memory (K-major descriptor). Written out per N: PTX needs every register named.
// MmaRa<N>::run takes accumulators of any length M ≥ N/2 and uses the first N/2 (a 128-token tile's half-width loop
// runs N = 64 on its 64 registers).
template <int N>
struct MmaRa;
template <>
struct MmaRa<16> {
  template <int M>
  __device__ __forceinline__ static void run(float (&d)[M], const u32 (&a)[4], u64 b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d));
  }
};
template <>
struct MmaRa<32> {
  template <int M>
  __device__ __forceinline__ static void run(float (&d)[M], const u32 (&a)[4], u64 b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d));
  }
};
template <>
struct MmaRa<64> {
  template <int M>
  __device__ __forceinline__ static void run(float (&d)[M], const u32 (&a)[4], u64 b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d));
  }
};
template <>
struct MmaRa<128> {
  template <int M>
  __device__ __forceinline__ static void run(float (&d)[M], const u32 (&a)[4], u64 b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d));
  }
};
template <int N, int M>
__device__ __forceinline__ void mma_ra(float (&d)[M], const u32 (&a)[4], u64 b, int scale_d) {
  static_assert(M >= N / 2, "accumulators for N / 2 columns");
  MmaRa<N>::run(d, a, b, scale_d);
}

// The bf16 pair e2m1·2^−126 of the nibbles at bits 12–15 and 28–31 of q << 4j.
__device__ __forceinline__ u32 e2m1_pair(u32 q, int j) {
  const u32 s = q << (4 * j);
  return (s & 0x80008000u) | ((s >> 6) & 0x01C001C0u);
}
constexpr u32 kTwo126 = 0x7E807E80u;  // bf16 pair {2^126, 2^126}

// NVFP4 weights carry 2^−20 (the epilogue multiplies the accumulator back by 2^20): t · (sf·2^106) is then one
// multiply, e2m1·sf·2^−20 ∈ [2^−30, 2^−8.6] stays a normal bf16, exact (≤ 6 significant bits; checked exhaustively
// on the CPU), and sf·2^106 ≤ 448·2^106 < 2^115 fits.
constexpr float kNvfp4ScaleUp = 8.1129638414606682e31f;  // 2^106
constexpr float kNvfp4AccUp = 1048576.0f;                 // 2^20
// Two E4M3 bytes (low: row r, high: row r + 8) → bf16 pairs {sf_r, sf_r}·2^106 and {sf_r8, sf_r8}·2^106 (exact:
// E4M3 values have 4 significant bits).
__device__ __forceinline__ void e4m3x2_pairs(u32 two, u32& p0, u32& p1) {
  u32 h2;
  asm("{\n.reg .b16 t;\ncvt.u16.u32 t, %1;\ncvt.rn.f16x2.e4m3x2 %0, t;\n}" : "=r"(h2) : "r"(two & 0xFFFFu));
  float f0, f1;
  asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.f32.f16 %0, l;\ncvt.f32.f16 %1, h;\n}" : "=f"(f0), "=f"(f1) : "r"(h2));
  f0 *= kNvfp4ScaleUp;
  f1 *= kNvfp4ScaleUp;
  p0 = cvt_bf16x2(f0, f0);
  p1 = cvt_bf16x2(f1, f1);
}
// A UE8M0 byte → bf16 pair {2^(s−127), 2^(s−127)} (s = 0: the subnormal 2^−127; s = 255: inf). (The folded pairs
// {2^(s−1), 2^(s−1)} of bytes ≤ 127 are made four at a time in the K loop.)
__device__ __forceinline__ u32 ue8m0_pair(u32 s) {
  const u32 v = s != 0 ? s << 7 : 0x40u;
  return v | (v << 16);
}
// Whether `pred` holds in every lane of the warp.
__device__ __forceinline__ bool warp_all(bool pred) {
  u32 r;
  asm volatile("{\n.reg .pred p, q;\nsetp.ne.u32 p, %1, 0;\nvote.sync.all.pred q, p, 0xffffffff;\nselp.u32 %0, 1, 0, q;\n}"
               : "=r"(r)
               : "r"(static_cast<u32>(pred)));
  return r != 0;
}

// The expert whose padded segment holds row m0 (the last e with offsets[e] ≤ m0; −1 when m0 is outside
// [offsets[0], offsets[E])) and, in `left`, its rows from m0 on (offsets[e] + counts[e] − m0), by the whole warp
// (every lane gets them): each round the 32 lanes read 32 evenly spaced offsets of the interval and a ballot keeps
// one piece, so E + 1 ≤ 32 takes one round of loads and ≤ 1024 two (a binary search took log2 E dependent loads,
// ≈ 1 µs each at the start of a decode kernel; the last round reads the counts beside the offsets).
__device__ __forceinline__ int find_segment(const int* offsets, const int* counts, int E, int m0, int lane, int& left) {
  int lo = 0, hi = E + 1;  // offsets[lo] ≤ m0 < offsets[hi] (offsets[E + 1] = +inf)
  while (true) {
    const int step = (hi - lo + 31) >> 5, i = lo + lane * step;
    const bool in = i < hi;
    const int o = in ? __ldg(offsets + i) : 0;
    const int c = in && step == 1 && i < E ? __ldg(counts + i) : 0;
    const u32 b = __ballot_sync(0xffffffffu, in && o <= m0);
    if (b == 0) return -1;  // m0 < offsets[0]
    const int L = 31 - __clz(static_cast<int>(b));
    if (step == 1) {
      left = __shfl_sync(0xffffffffu, o + c, L) - m0;
      return lo + L < E ? lo + L : -1;
    }
    lo += L * step;
    hi = lo + step < hi ? lo + step : hi;
  }
}

__device__ __forceinline__ float sigmoid(float z) { return rcp_ftz(1.0f + ex2_ftz(z * -1.4426950408889634f)); }

// The plain epilogue's act: Relu2 (6) max(v, 0)², else identity.
template <int ACT>
__device__ __forceinline__ float plain_act(float v) {
  if constexpr (ACT == 6) {
    const float r = fmaxf(v, 0.0f);
    return r * r;
  } else {
    return v;
  }
}

}  // namespace f4g

// Grid: (token tiles × row blocks) × S in one dimension, row block fastest, in clusters of S CTAs (split-K, S = the
// cluster size, 1 without clusters): cluster rank p takes K tiles [p·KT/S, (p+1)·KT/S); after the main loop ranks
// p > 0 leave their fp32 accumulators in their shared memory and rank 0 adds them in rank order through distributed
// shared memory (a fixed order: the same bits on every run) before its epilogue. Dynamic shared memory 1 KiB
// alignment slack + STAGES × (2·N·128 activation bytes + the chunk rounded up to 1 KiB) + two staging buffers
// N × (2·OC + 16) bytes + 2·STAGES mbarriers (OC = 32 gated, else 64); the split-K partials (256 threads × N/2 floats)
// reuse the ring. FMT 0 nvfp4, 1 mxfp4; ACT: 3 Swiglu, 4 Geglu (gated), 6 Relu2, 7 Identity (also GEMM2's plain
// epilogue).
template <int N, int FMT, int ACT, int STAGES>
__global__ void __launch_bounds__(fp4_moe_gemm_threads(N), fp4_moe_gemm_ctas_per_sm(N))
    fp4_moe_gemm_kernel(const __grid_constant__ Fp4MoeGemmArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(N == 16 || N == 32 || N == 64 || N == 128, "token tile: 16, 32, 64 or 128");
  static_assert(FMT == 0 || FMT == 1, "nvfp4 (0) or mxfp4 (1)");
  static_assert(ACT == 3 || ACT == 4 || ACT == 6 || ACT == 7, "Swiglu, Geglu, Relu2 or Identity");
  constexpr bool GATED = ACT == 3 || ACT == 4;
  constexpr int ACT_BOX = N * 128, CHUNK = Fp4MoeChunk<FMT>::kBytes;
  constexpr int STAGE = 2 * ACT_BOX + (CHUNK + 1023) / 1024 * 1024;
  constexpr u32 TX = 2 * ACT_BOX + CHUNK;  // every activation box lands whole (zeros outside the tensor)
  constexpr int OC = GATED ? 32 : 64, SP = 2 * OC + 16, STG = N * SP;

  // Row block fastest: a token tile's CTAs run together, so its activation tile is read from DRAM once and then
  // from L2, and an expert's next token tile finds the same weight row blocks in L2 a row-block sweep later (token
  // tile fastest re-read every activation tile from DRAM once per row block: 86 % of DRAM bandwidth in GEMM1).
  pdl_launch_dependents();  // the next kernel (GEMM2, finalize) may start its prologue and weight loads
  u32 S;  // split-K ranks (the cluster size)
  asm("mov.u32 %0, %%cluster_nctarank;" : "=r"(S));
  const u32 unit = blockIdx.x / S, rank = S > 1 ? cluster_ctarank() : 0u;
  const int rb = static_cast<int>(unit % static_cast<unsigned>(a.row_blocks));
  const int m0 = static_cast<int>(unit / static_cast<unsigned>(a.row_blocks)) * N;
  // Past the padded rows, or a tile with no row to write: uniform over the cluster (every rank has the same unit).
  int left;  // rows of the segment from m0 on
  const int e = f4g::find_segment(a.offsets, a.counts, a.experts, m0, static_cast<int>(threadIdx.x & 31), left);
  if (e < 0) return;
  const int valid = left < N ? left : N;  // tokens of the tile to write
  if (valid <= 0) return;

  extern __shared__ __align__(16) char smem_raw[];
  const u32 base = (smem_u32(smem_raw) + 1023u) & ~1023u, stg = base + STAGES * STAGE, bars = stg + 2 * STG;
  const int tid = threadIdx.x, wg = tid / 128;
  const int k0 = static_cast<int>(rank * static_cast<u32>(a.k_tiles) / S);  // this rank's K tiles [k0, k1)
  const int k1 = static_cast<int>((rank + 1) * static_cast<u32>(a.k_tiles) / S);

  if (tid == 0) tp::ring_init<STAGES>(bars, 2);  // both consumer warpgroups release every stage
  __syncthreads();

  if (wg == 2) {  // producer
    if constexpr (N > 32) setmaxnreg_dec<40>();  // N ≤ 32: a single warp, several CTAs an SM
    if (tid == 256) {
      prefetch_tmap(&a.tma);
      const unsigned char* src = a.w + static_cast<i64>(e) * a.expert_bytes + static_cast<i64>(rb) * a.k_tiles * CHUNK;
      auto load_chunk = [&](int kt, u32 full, u32 sa) {
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                         sa + 2 * ACT_BOX),
                     "l"(src + static_cast<i64>(kt) * CHUNK), "r"(static_cast<u32>(CHUNK)), "r"(full)
                     : "memory");
      };
      // PDL: the first stages' weights (not written by any kernel) load before the wait for the previous kernel
      // (the gather or GEMM1, which writes the activations); their activation boxes after it.
      const int pre = k1 - k0 < STAGES ? k1 - k0 : STAGES;
      for (int i = 0; i < pre; ++i) {
        mbar_arrive_expect_tx(bars + 8 * i, TX);
        load_chunk(k0 + i, bars + 8 * i, base + i * STAGE);
      }
      pdl_wait();
      tp::RingPos<STAGES> rp;
      for (int i = 0; i < pre; ++i) {
        tma_load_2d(base + i * STAGE, &a.tma, bars + 8 * i, (k0 + i) * 128, m0);
        tma_load_2d(base + i * STAGE + ACT_BOX, &a.tma, bars + 8 * i, (k0 + i) * 128 + 64, m0);
        rp.next();
      }
      for (int kt = k0 + pre; kt < k1; ++kt) {
        mbar_wait(bars + 8 * (STAGES + rp.s), rp.phase ^ 1);
        const u32 full = bars + 8 * rp.s, sa = base + rp.s * STAGE;
        mbar_arrive_expect_tx(full, TX);
        tma_load_2d(sa, &a.tma, full, kt * 128, m0);
        tma_load_2d(sa + ACT_BOX, &a.tma, full, kt * 128 + 64, m0);
        load_chunk(kt, full, sa);
        rp.next();
      }
    }
    __syncwarp();
    if (S > 1) {  // the cluster's two barriers (below): every thread of every rank takes part
      cluster_sync();
      cluster_sync();
    }
  } else {  // consumers
    if constexpr (N > 32) setmaxnreg_inc<232>();
    const int wm = wg, lane = tid & 31, warp = (tid & 127) >> 5;
    float acc[N / 2];  // the first wgmma overwrites it (scale-d 0: zero-filled registers would serialize the wgmmas)
    // A 128-token tile with ≤ 64 rows (an expert's partial last tile) multiplies only its first 64 tokens: half the
    // MMA work; the other accumulators stay unwritten and their tokens are never stored.
    [[maybe_unused]] const bool half_tile = N == 128 && valid <= 64;
    const u32 code_off = 16u * (256 * wm + 32 * warp + lane);
    const u32 sc_off = kFp4MoeCodeBytes + (FMT == 0 ? 16u : 8u) * (32 * wm + 8 * warp + (lane >> 2));
    u32 A[2][4][4];  // [half tile][k16 step][register]
    // The K loop, once per accumulator width (a loop each, so that every wgmma's registers are fixed at compile time).
    auto k_loop = [&](auto half_flag) {
      constexpr bool HALF = decltype(half_flag)::value;
      tp::RingPos<STAGES> rp;
      int prev = -1;
      for (int kt = k0; kt < k1; ++kt) {
        mbar_wait(bars + 8 * rp.s, rp.phase);
        const u32 sa = base + rp.s * STAGE, sw = sa + 2 * ACT_BOX;
        const u64 dsa = wgmma::desc_sw128(sa);
        // Both half tiles' codes at once: the second one's load is not behind the first batch's wgmma wait.
        const Vec16 qh[2] = {lds16(sw + code_off), lds16(sw + code_off + 2048u)};
        u32 sp[8][2];  // [k16 step][row half]: {sf, sf}
        bool fold = true;  // MXFP4: every scale byte of the warp's tile ≤ 127 (real checkpoints): one multiply
        if constexpr (FMT == 0) {
          const Vec16 v = lds16(sw + sc_off);
#pragma unroll
          for (int m = 0; m < 4; ++m) {
            f4g::e4m3x2_pairs(v.w[m], sp[2 * m][0], sp[2 * m][1]);
            f4g::e4m3x2_pairs(v.w[m] >> 16, sp[2 * m + 1][0], sp[2 * m + 1][1]);
          }
        } else {
          u32 w0, w1;
          asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(w0), "=r"(w1) : "r"(sw + sc_off));
          fold = f4g::warp_all(((w0 | w1) & 0x80808080u) == 0u);
          if (fold) {  // every byte ≤ 127: s + 126 ≤ 253 in all four bytes at once (no carries), then one byte
                       // permute puts it at bits 8–15 and 24–31 and a shift makes the pair {2^(s−1), 2^(s−1)}
            const u32 f0 = w0 + 0x7E7E7E7Eu, f1 = w1 + 0x7E7E7E7Eu;
#pragma unroll
            for (int b = 0; b < 4; ++b)
#pragma unroll
              for (int hh = 0; hh < 2; ++hh) {
                const u32 i = 2 * (b & 1) + hh;
                sp[2 * b][hh] = sp[2 * b + 1][hh] = __byte_perm(b < 2 ? f0 : f1, 0u, (i << 12) | 0x400u | (i << 4) | 4u) >> 1;
              }
          } else {
#pragma unroll
            for (int b = 0; b < 4; ++b)
#pragma unroll
              for (int hh = 0; hh < 2; ++hh) {
                const u32 byte = ((b < 2 ? w0 : w1) >> (8 * (2 * (b & 1) + hh))) & 0xFFu;
                sp[2 * b][hh] = sp[2 * b + 1][hh] = f4g::ue8m0_pair(byte);
              }
          }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const Vec16& q = qh[h];
          if (FMT == 0 || fold) {  // NVFP4: e2m1·2^−126 · sf·2^106; MXFP4 folded: e2m1·2^−126 · 2^(s−1)
#pragma unroll
            for (int m = 0; m < 4; ++m)
#pragma unroll
              for (int j = 0; j < 4; ++j) A[h][m][j] = mul_bf16x2(f4g::e2m1_pair(q.w[m], j), sp[4 * h + m][j & 1]);
          } else {  // e2m1·2^−126 · 2^126 · 2^(s−127)
#pragma unroll
            for (int m = 0; m < 4; ++m)
#pragma unroll
              for (int j = 0; j < 4; ++j)
                A[h][m][j] =
                    mul_bf16x2(mul_bf16x2(f4g::e2m1_pair(q.w[m], j), f4g::kTwo126), sp[4 * h + m][j & 1]);
          }
          wgmma::fence_regs(acc);
          wgmma::wgmma_fence();  // the A registers just written → the wgmmas reading them
          // desc(sa + x) = desc(sa) + x / 16: the start-address field (bits 0–13) holds every shared address / 16
#pragma unroll
          for (int m = 0; m < 4; ++m) {
            const u64 db = dsa + static_cast<u32>((h * ACT_BOX + m * 32) >> 4);
            f4g::mma_ra<HALF ? 64 : N>(acc, A[h][m], db, kt > k0 || h > 0 || m > 0);
          }
          wgmma::wgmma_commit();
          wgmma::wgmma_wait<1>();  // the batch before this one (the other register set) has completed
          wgmma::fence_regs(acc);
          if (h == 0) {  // that batch was the previous K tile's last: its stage may refill
            if (prev >= 0 && (tid & 127) == 0) mbar_arrive(bars + 8 * (STAGES + prev));
            prev = rp.s;
          }
        }
        rp.next();
      }
      wgmma::wgmma_wait<0>();
      wgmma::fence_regs(acc);
      if (prev >= 0 && (tid & 127) == 0) mbar_arrive(bars + 8 * (STAGES + prev));
    };
    if constexpr (N == 128) {
      if (half_tile) k_loop(Flag<true>{});
      else k_loop(Flag<false>{});
    } else {
      k_loop(Flag<false>{});
    }
    pdl_wait();  // (long satisfied: the activations came after the producer's wait) the epilogue reads row_scale

    if (S > 1) {  // split-K: ranks > 0 publish their partials in the (drained) ring, rank 0 adds them in rank order
      const u32 part = base + 4u * static_cast<u32>(tid);  // element i at part + 1024·i (256 threads × 4 bytes)
      if (rank != 0) {
#pragma unroll
        for (int i = 0; i < N / 2; ++i) asm volatile("st.shared.f32 [%0], %1;" ::"r"(part + 1024u * i), "f"(acc[i]) : "memory");
      }
      cluster_sync();  // partials visible cluster-wide
      if (rank == 0) {
        for (u32 p = 1; p < S; ++p) {
          u32 remote;
          asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(part), "r"(p));
#pragma unroll
          for (int i = 0; i < N / 2; ++i) {
            float v;
            asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote + 1024u * i) : "memory");
            acc[i] += v;
          }
        }
      }
      cluster_sync();  // rank 0 has read them: the other ranks may exit
      if (rank != 0) return;
    }

    // ---- epilogue ----
    const float sa_e = a.scale_a != nullptr ? a.scale_a[e] : 1.0f, sb_e = a.scale_b != nullptr ? a.scale_b[e] : 1.0f;
    const u32 buf = stg + wm * STG;
    const float* bias = a.bias != nullptr ? a.bias + static_cast<i64>(e) * a.bias_ld : nullptr;
    float rs[N / 4];  // row_scale (× 2^20 for nvfp4) of the thread's tokens 8·q + 2·(lane & 3) + b, at index 2q + b
#pragma unroll
    for (int q = 0; q < N / 8; ++q)
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        const int col = 8 * q + 2 * (lane & 3) + b;
        rs[2 * q + b] = (a.row_scale != nullptr && col < valid ? a.row_scale[m0 + col] : 1.0f) *
                        (FMT == 0 ? f4g::kNvfp4AccUp : 1.0f);
      }
    if constexpr (!GATED) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int r = 16 * warp + (lane >> 2) + 8 * hh, j = rb * 128 + wm * 64 + r;
        const float bj = bias != nullptr && j < a.out_cols ? bias[j] : 0.0f;
#pragma unroll
        for (int q = 0; q < N / 8; ++q)
#pragma unroll
          for (int b = 0; b < 2; ++b) {
            const int col = 8 * q + 2 * (lane & 3) + b;
            const float v = sb_e * f4g::plain_act<ACT>(sa_e * fmaf(rs[2 * q + b], acc[4 * q + 2 * hh + b], bj));
            asm volatile("st.shared.u16 [%0], %1;" ::"r"(buf + col * SP + 2 * r), "h"(from_float<bf16>(v).bits)
                         : "memory");
          }
      }
    } else {
      const int jc = 8 * warp + (lane >> 2), j = rb * 64 + wm * 32 + jc;
      const bool in = bias != nullptr && j < a.out_cols;
      const float b0 = in ? bias[j] : 0.0f, b1 = in ? bias[a.half_rows + j] : 0.0f;
      const float ratio = sa_e != 0.0f ? sb_e / sa_e : 0.0f;
      float al = 1.0f, be = 0.0f, L = __int_as_float(0x7f800000);
      if constexpr (ACT == 3) {
        if (a.alpha != nullptr) al = a.alpha[e];
        if (a.beta != nullptr) be = a.beta[e];
        if (a.limit != nullptr) L = a.limit[e];
      }
#pragma unroll
      for (int q = 0; q < N / 8; ++q)
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          const int col = 8 * q + 2 * (lane & 3) + b;
          const float x0 = sa_e * fmaf(rs[2 * q + b], acc[4 * q + b], b0);
          const float x1 = sa_e * fmaf(rs[2 * q + b], acc[4 * q + 2 + b], b1);
          float hv;
          if constexpr (ACT == 3) {
            const float g = fminf(x1, L), l = fminf(fmaxf(x0, -L), L);
            hv = g * f4g::sigmoid(al * g) * (l + be);
          } else {
            hv = gmlp::activation<1>(x1) * x0;
          }
          const float v = sa_e != 0.0f ? hv * ratio : 0.0f;
          asm volatile("st.shared.u16 [%0], %1;" ::"r"(buf + col * SP + 2 * jc), "h"(from_float<bf16>(v).bits)
                       : "memory");
        }
    }
    named_barrier_sync(1 + wm, 128);
    constexpr int CPR = OC / 8;  // 16-byte pieces a token row
    const int j0 = GATED ? rb * 64 + wm * 32 : rb * 128 + wm * 64;
    bf16* out = static_cast<bf16*>(a.out);
    for (int c = tid & 127; c < N * CPR; c += 128) {
      const int t = c / CPR, part = c % CPR, j = j0 + 8 * part;
      if (t < valid && j < a.out_cols)
        store16(out + static_cast<i64>(m0 + t) * a.out_ld + j, lds16(buf + t * SP + 16 * part));
    }
  }
#else
  __trap();  // sm_90a only (the host recipe never launches it elsewhere)
#endif
}

// ---- prepack ----------------------------------------------------------------------------------------------------
// Canonical codes [E_l, rows, K/2] + scales [E_l, rows, K/16 | K/32] → the packed layout (kiln/fp4_moe_gemm_args.h).
// One thread a 16-byte code vector or a scale vector (576 units a chunk), grid-stride.
namespace f4g {
// The canonical row of packed row p (−1: padding). Gated: slab p/16 holds linear rows 8·slab … and gate rows I + ….
__device__ __forceinline__ int canonical_row(int p, int rows, bool gated) {
  if (!gated) return p < rows ? p : -1;
  const int I = rows / 2, j = (p >> 4) * 8 + (p & 7);
  return j < I ? ((p & 15) < 8 ? j : I + j) : -1;
}
}  // namespace f4g

template <int FMT, int GATED>
__global__ void __launch_bounds__(256) fp4_moe_prepack_kernel(const __grid_constant__ Fp4MoePrepackArgs a) {
  constexpr int CHUNK = Fp4MoeChunk<FMT>::kBytes, SB = FMT == 0 ? 16 : 32;
  const int ks = a.k / SB;
  const i64 kb = a.k / 2;
  for (i64 u = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; u < a.units;
       u += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 ch = u / 576;
    const int r = static_cast<int>(u - ch * 576), kt = static_cast<int>(ch % a.k_tiles);
    const int rb = static_cast<int>((ch / a.k_tiles) % a.row_blocks);
    const i64 e = ch / (static_cast<i64>(a.k_tiles) * a.row_blocks);
    unsigned char* dst = a.packed + ch * CHUNK;
    if (r < 512) {
      const int wg = r >> 8, h = (r >> 7) & 1, warp = (r >> 5) & 3, lane = r & 31;
      Vec16 v;
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        u32 word = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int p = rb * 128 + wg * 64 + 16 * warp + (lane >> 2) + 8 * (j & 1);
          const int row = f4g::canonical_row(p, a.rows, GATED != 0);
          const int k = kt * 128 + 16 * (4 * h + m) + 2 * (lane & 3) + 8 * (j >> 1);  // even element
#pragma unroll
          for (int odd = 0; odd < 2; ++odd) {
            u32 c = 0;
            if (row >= 0 && k + odd < a.k) {
              const u32 byte = a.codes[(e * a.rows + row) * kb + (k + odd) / 2];
              c = (byte >> (4 * ((k + odd) & 1))) & 15u;
            }
            word |= c << (4 * (odd ? 7 - j : 3 - j));
          }
        }
        v.w[m] = word;
      }
      store16(dst + 16 * r, v);
    } else {
      const int s = r - 512, wg = s >> 5, warp = (s >> 3) & 3, q = s & 7;
      constexpr int NB = FMT == 0 ? 8 : 4;  // scale blocks a K tile
      unsigned char b[16];
#pragma unroll
      for (int blk = 0; blk < NB; ++blk)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int p = rb * 128 + wg * 64 + 16 * warp + q + 8 * hh;
          const int row = f4g::canonical_row(p, a.rows, GATED != 0), kblk = kt * NB + blk;
          b[2 * blk + hh] = row >= 0 && kblk < ks ? a.scales[(e * a.rows + row) * ks + kblk]
                                                  : static_cast<unsigned char>(FMT == 0 ? 0 : 127);
        }
      if constexpr (FMT == 0) {
        Vec16 v;
#pragma unroll
        for (int m = 0; m < 4; ++m)
          v.w[m] = b[4 * m] | (b[4 * m + 1] << 8) | (b[4 * m + 2] << 16) | (static_cast<u32>(b[4 * m + 3]) << 24);
        store16(dst + kFp4MoeCodeBytes + 16 * s, v);
      } else {
        u32* d = reinterpret_cast<u32*>(dst + kFp4MoeCodeBytes + 8 * s);
        d[0] = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<u32>(b[3]) << 24);
        d[1] = b[4] | (b[5] << 8) | (b[6] << 16) | (static_cast<u32>(b[7]) << 24);
      }
    }
  }
}

}  // namespace kiln
