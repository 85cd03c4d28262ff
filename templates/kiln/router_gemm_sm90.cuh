// kiln/router_gemm_sm90.cuh — Hopper (sm_90a) forward of the fp32 router GEMM on warpgroup MMAs (wgmma).
//
//   logits[t, e] = Σ_k x[t, k] · w[e, k]      (bf16 × bf16 → fp32, exact products, fp32 accumulation)
//
// A CTA holds NWG warpgroups; each computes 64 tokens × all E experts (E ≤ 256) with wgmma.m64nNk16, E split into
// instructions of N ∈ {256, 128, 64, 32, 16, 8} (E a multiple of 8), accumulators in registers. x and w stream in
// chunks of 64 along K through a STAGES-deep ring filled with cp.async (every thread copies 16-byte pieces into the
// 128-byte-swizzled K-major layout wgmma reads; rows past T and columns past K are zero-filled), so x is read from
// memory exactly once and w from L2. Each chunk: wait for its copies, fence them into the async proxy, barrier,
// issue 4 wgmmas (k16 each), keep one chunk of MMAs in flight, and refill the stage the previous chunk used.
// Epilogue: accumulators → shared memory → 16-byte coalesced stores, rows past T masked.
// Generated wrappers (wgmma_n*) are written out in full: PTX needs every accumulator register named.
#pragma once
#include "kiln/mbarrier.cuh"
#include "kiln/router_gemm.cuh"
#include "kiln/wgmma.cuh"

namespace kiln {
namespace rg90 {

// The K-major 128-byte-swizzle descriptor, wgmma fence / commit / wait and the register fence: kiln/wgmma.cuh.
using wgmma::desc_sw128;
using wgmma::fence_regs;
using wgmma::wgmma_commit;
using wgmma::wgmma_fence;
using wgmma::wgmma_wait;

// desc_sw128 split in its two 32-bit words: the high word is the same for every address (SBO 1024 bytes, 128-byte
// swizzle), and the low word is (addr >> 4) | LBO 1 — for addresses below 256 KiB (every shared-memory address) a
// 16-byte-granular offset d moves it by d / 16 with no carry out of the start-address field, so a descriptor can be
// advanced by integer adds: desc_sw128(addr + d) == desc_from_lo(desc_lo(addr) + d / 16).
constexpr u32 kDescSw128Hi = (1024 >> 4) | (1u << 30);
__device__ __forceinline__ u32 desc_lo(u32 smem_byte_addr) { return ((smem_byte_addr & 0x3FFFF) >> 4) | (1u << 16); }
__device__ __forceinline__ u64 desc_from_lo(u32 lo) { return (static_cast<u64>(kDescSw128Hi) << 32) | lo; }

// d[64 × 256] += A[64 × 16] · B[256 × 16]ᵀ (both from shared memory, K-major).
__device__ __forceinline__ void wgmma_n256(float (&d)[128], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(a), "l"(b), "r"(1));
}

// d[64 × 128] += A[64 × 16] · B[128 × 16]ᵀ (both from shared memory, K-major).
__device__ __forceinline__ void wgmma_n128(float (&d)[64], u64 a, u64 b) { wgmma::mma<128, bf16>(d, a, b); }

// d[64 × 64] += A[64 × 16] · B[64 × 16]ᵀ (both from shared memory, K-major).
__device__ __forceinline__ void wgmma_n64(float (&d)[32], u64 a, u64 b) { wgmma::mma<64, bf16>(d, a, b); }

// d[64 × 32] += A[64 × 16] · B[32 × 16]ᵀ (both from shared memory, K-major).
__device__ __forceinline__ void wgmma_n32(float (&d)[16], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(1));
}

// d[64 × 16] += A[64 × 16] · B[16 × 16]ᵀ (both from shared memory, K-major).
__device__ __forceinline__ void wgmma_n16(float (&d)[8], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "l"(a), "l"(b), "r"(1));
}

// d[64 × 8] += A[64 × 16] · B[8 × 16]ᵀ (both from shared memory, K-major).
__device__ __forceinline__ void wgmma_n8(float (&d)[4], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3}, %4, %5, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "l"(a), "l"(b), "r"(1));
}


// The wgmmas of one k16 step over columns [C0, E): the widest instruction that fits, then the rest. Each
// instruction's accumulators are a separate array in a nested struct (indices stay compile-time, so they live in
// registers: the asynchronous MMAs write registers, never memory).
template <int E, int C0>
struct WgmmaRow {
  static constexpr int REM = E - C0;
  static constexpr int N = REM >= 256 ? 256 : REM >= 128 ? 128 : REM >= 64 ? 64 : REM >= 32 ? 32 : REM >= 16 ? 16 : 8;
  using Next = WgmmaRow<E, C0 + N>;
  struct Acc {
    float d[N / 2];
    typename Next::Acc next;
  };
  __device__ __forceinline__ static void zero(Acc& a) {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) a.d[i] = 0.f;
    Next::zero(a.next);
  }
  __device__ __forceinline__ static void fence(Acc& a) {
    fence_regs(a.d);
    Next::fence(a.next);
  }
  // This instruction's wgmma (its N columns) with descriptors adesc / b.
  __device__ __forceinline__ static void issue(Acc& a, u64 adesc, u64 b) {
    if constexpr (N == 256) wgmma_n256(a.d, adesc, b);
    else if constexpr (N == 128) wgmma_n128(a.d, adesc, b);
    else if constexpr (N == 64) wgmma_n64(a.d, adesc, b);
    else if constexpr (N == 32) wgmma_n32(a.d, adesc, b);
    else if constexpr (N == 16) wgmma_n16(a.d, adesc, b);
    else wgmma_n8(a.d, adesc, b);
  }
  // b_addr: shared address of B's row 0 for this k16 step.
  __device__ __forceinline__ static void mma(Acc& a, u64 adesc, u32 b_addr) {
    issue(a, adesc, desc_sw128(b_addr + C0 * 128));
    Next::mma(a.next, adesc, b_addr);
  }
  // The same from descriptor low words (desc_lo): b_lo is B's row 0 for this k16 step; instruction C0's rows start
  // C0 · 128 bytes later.
  __device__ __forceinline__ static void mma_lo(Acc& a, u64 adesc, u32 b_lo) {
    issue(a, adesc, desc_from_lo(b_lo + C0 * 8));
    Next::mma_lo(a.next, adesc, b_lo);
  }
  // Writes the accumulators to a row-major fp32 tile in shared memory (`pitch` bytes a row). Register i of the
  // thread (lane `lane` of warp v in its warpgroup) holds row 16v + lane/4 + 8·((i/2) & 1) — row0 is the first —
  // and column C0 + 8·(i/4) + 2·(lane & 3) + (i & 1).
  __device__ __forceinline__ static void stage(const Acc& a, u32 tile, int row0, int lane, int pitch) {
#pragma unroll
    for (int i = 0; i < N / 2; i += 2) {
      const int r = row0 + 8 * ((i >> 1) & 1), c = C0 + 8 * (i >> 2) + 2 * (lane & 3);
      asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(tile + r * pitch + c * 4), "f"(a.d[i]), "f"(a.d[i + 1])
                   : "memory");
    }
    Next::stage(a.next, tile, row0, lane, pitch);
  }
  // Writes this warp's 16 rows of the accumulators as the boxes a 128-byte-swizzled fp32 TMA store reads: box b
  // (columns [32b, 32b + 32)) at slot + 2048·b, row r (0–15) at 128·r, its 16-byte piece j at (j ^ (r & 7))·16.
  // Conflict-free: per register pair the warp's 8 rows × 4 lanes cover every bank twice (256 bytes, 2 wavefronts).
  __device__ __forceinline__ static void stage_sw128(const Acc& a, u32 slot, int lane) {
#pragma unroll
    for (int i = 0; i < N / 2; i += 2) {
      const int r = (lane >> 2) + 8 * ((i >> 1) & 1), c = C0 + 8 * (i >> 2) + 2 * (lane & 3);
      const int cc = c & 31, j = cc >> 2;
      const u32 addr = slot + (c >> 5) * 2048 + r * 128 + ((j ^ (r & 7)) << 4) + (cc & 3) * 4;
      asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(addr), "f"(a.d[i]), "f"(a.d[i + 1]) : "memory");
    }
    Next::stage_sw128(a.next, slot, lane);
  }
};
template <int E>
struct WgmmaRow<E, E> {
  struct Acc {};
  __device__ __forceinline__ static void zero(Acc&) {}
  __device__ __forceinline__ static void fence(Acc&) {}
  __device__ __forceinline__ static void mma(Acc&, u64, u32) {}
  __device__ __forceinline__ static void mma_lo(Acc&, u64, u32) {}
  __device__ __forceinline__ static void stage(const Acc&, u32, int, int, int) {}
  __device__ __forceinline__ static void stage_sw128(const Acc&, u32, int) {}
};

}  // namespace rg90

// Grid: (ceil(T / (64·NWG)), KSPLIT) CTAs of NWG·128 threads; KSPLIT > 1 launches clusters of (1, KSPLIT, 1): the
// CTAs of a cluster share one token block, each takes its own range of K, and they add their fp32 tiles through
// distributed shared memory in cluster-rank order (deterministic), each CTA finishing BM/KSPLIT rows. Splitting K
// halves the w traffic a token block costs at the same MMA work per CTA. Dynamic shared memory: host recipe.
// BK (64 or 128): K columns a stage holds, as BK/64 swizzle atoms (64 columns each) per tile.
template <int K, int E, int NWG, int STAGES, int KSPLIT, int BK = 64>
__global__ void __launch_bounds__(NWG * 128, 1) router_gemm_fwd_sm90_kernel(const RouterGemmFwdArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(E % 8 == 0 && E >= 8 && E <= 256, "E: a multiple of 8 up to 256");
  static_assert(BK == 64 || BK == 128, "BK: one or two 64-column atoms");
  constexpr int BM = 64 * NWG, THREADS = NWG * 128, ATOMS = BK / 64;
  constexpr int A_ATOM = BM * 128, B_ATOM = ((E * 128 + 1023) / 1024) * 1024;  // every tile 1024-byte aligned
  constexpr int A_BYTES = ATOMS * A_ATOM, STAGE = A_BYTES + ATOMS * B_ATOM;
  static_assert(A_ATOM % 1024 == 0, "A tile: whole swizzle atoms");
  using Row = rg90::WgmmaRow<E, 0>;
  constexpr int ALL_CHUNKS = (K + BK - 1) / BK, PER_SPLIT = (ALL_CHUNKS + KSPLIT - 1) / KSPLIT;
  static_assert(KSPLIT == 1 || (KSPLIT == 2 && BM % 2 == 0), "KSPLIT: 1 or 2");
  const int c0 = static_cast<int>(blockIdx.y) * PER_SPLIT;  // this CTA's first K chunk
  const int CHUNKS = ALL_CHUNKS - c0 < PER_SPLIT ? ALL_CHUNKS - c0 : PER_SPLIT;

  extern __shared__ __align__(16) char smem_raw[];
  const u32 raw = static_cast<u32>(__cvta_generic_to_shared(smem_raw));
  const u32 base = (raw + 1023u) & ~1023u;
  char* smem = smem_raw + (base - raw);

  const int tid = threadIdx.x, wg = tid / 128;
  const int m0 = blockIdx.x * BM;
  const int rows_valid = a.T - m0;
  const char* x = static_cast<const char*>(a.x) + static_cast<i64>(m0) * a.x_stride * 2;
  const char* w = static_cast<const char*>(a.w);
  const i64 xld = a.x_stride * 2;

  // Copies chunk kc (K columns [64·kc, 64·kc + 64)) into stage s: 16-byte piece j of row r lands at
  // r·128 + ((j ^ (r & 7))·16), the 128-byte swizzle wgmma expects.
  auto load = [&](int s, int kc_local) {
    const int kc = c0 + kc_local;
    char* sa = smem + s * STAGE;
    char* sb = sa + A_BYTES;
    const int kbytes = (K - kc * BK) * 2;  // valid bytes of a row in this chunk (≥ 16, a multiple of 16)
#pragma unroll
    for (int it = 0; it < BM * 8 * ATOMS / THREADS; ++it) {
      const int i = it * THREADS + tid, r = (i >> 3) % BM, j = i & 7, at = (i >> 3) / BM;
      const bool ok = r < rows_valid && at * 128 + j * 16 < kbytes;
      cp_async16(sa + at * A_ATOM + r * 128 + ((j ^ (r & 7)) << 4),
                 ok ? x + r * xld + kc * BK * 2 + at * 128 + j * 16 : a.x, ok);
    }
#pragma unroll
    for (int it = 0; it < (E * 8 * ATOMS + THREADS - 1) / THREADS; ++it) {
      const int i = it * THREADS + tid, r = (i >> 3) % E, j = i & 7, at = (i >> 3) / E;
      if ((E * 8 * ATOMS) % THREADS != 0 && i >= E * 8 * ATOMS) break;
      const bool ok = at * 128 + j * 16 < kbytes;
      cp_async16(sb + at * B_ATOM + r * 128 + ((j ^ (r & 7)) << 4),
                 ok ? w + static_cast<i64>(r) * K * 2 + kc * BK * 2 + at * 128 + j * 16 : w, ok);
    }
  };

  typename Row::Acc acc;
  Row::zero(acc);

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < CHUNKS) load(s, s);
    cp_async_commit();
  }
  for (int kc = 0; kc < CHUNKS; ++kc) {
    cp_async_wait_group<STAGES - 2>();
    if (!(a.flags & kRgSkipCopyFence)) fence_proxy_async();
    __syncthreads();  // chunk kc is in shared memory, visible to the async proxy
    const u32 sa = base + (kc % STAGES) * STAGE + wg * 64 * 128;
    const u32 sb = base + (kc % STAGES) * STAGE + A_BYTES;
    Row::fence(acc);
    rg90::wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks)  // atom ks/4, k16 step ks%4 inside it
      Row::mma(acc, rg90::desc_sw128(sa + (ks >> 2) * A_ATOM + (ks & 3) * 32), sb + (ks >> 2) * B_ATOM + (ks & 3) * 32);
    rg90::wgmma_commit();
    rg90::wgmma_wait<1>();  // chunk kc − 1's MMAs are done: its stage may be refilled
    Row::fence(acc);
    __syncthreads();
    const int next = kc + STAGES - 1;
    if (next < CHUNKS) load(next % STAGES, next);
    cp_async_commit();
  }
  rg90::wgmma_wait<0>();
  Row::fence(acc);
  cp_async_wait_group<0>();
  __syncthreads();  // the ring is free: stage the tile through it

  constexpr int PITCH = (E + 8) * 4;
  Row::stage(acc, base, wg * 64 + ((tid & 127) >> 5) * 16 + ((tid & 31) >> 2), tid & 31, PITCH);
  constexpr int CPR = E / 4;  // 16-byte pieces per row
  char* out = reinterpret_cast<char*>(a.out + static_cast<i64>(m0) * a.out_stride);
  if constexpr (KSPLIT == 1) {
    __syncthreads();
    for (int i = tid; i < BM * CPR; i += THREADS) {
      const int r = i / CPR, c = i - r * CPR;
      if (r < rows_valid)
        store16(out + r * a.out_stride * 4 + c * 16, *reinterpret_cast<const Vec16*>(smem + r * PITCH + c * 16));
    }
  } else {
    cluster_sync();  // every CTA of the cluster has staged its partial tile
    const u32 rank = cluster_ctarank();
    constexpr int ROWS = BM / KSPLIT;
    for (int i = tid; i < ROWS * CPR; i += THREADS) {
      const int r = static_cast<int>(rank) * ROWS + i / CPR, c = i % CPR;
      const u32 local = base + r * PITCH + c * 16;
      float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int q = 0; q < KSPLIT; ++q) {  // cluster-rank order: the same bits whichever CTA adds
        u32 remote;
        float v[4];
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(q));
        asm volatile("ld.shared::cluster.v4.f32 {%0,%1,%2,%3}, [%4];"
                     : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3]) : "r"(remote) : "memory");
#pragma unroll
        for (int j = 0; j < 4; ++j) sum[j] += v[j];
      }
      if (r < rows_valid) {
        Vec16 o;
#pragma unroll
        for (int j = 0; j < 4; ++j) o.w[j] = __float_as_uint(sum[j]);
        store16(out + r * a.out_stride * 4 + c * 16, o);
      }
    }
    cluster_sync();  // keep this CTA's tile alive until the other CTAs have read it
  }
#else
  __trap();  // sm_90a only (the host recipe never launches it elsewhere)
#endif
}

}  // namespace kiln
