// kiln/gated_mlp.cuh — Hopper (sm_90a) fused gated MLP expansion: out = act(x · W_gᵀ) ⊙ (x · W_uᵀ).
//
// CTA = one producer warpgroup + two consumer warpgroups, output tile 128 rows × BN columns of out. The producer's
// first thread streams H in chunks of 128 bytes (64 bf16/fp16 or 32 fp32 elements) through a STAGES-deep ring: the x
// tile [128 rows][128 B] and the W_g and W_u tiles [BN rows][128 B] land by TMA (128-byte swizzle: the K-major layout
// wgmma reads), completing on the stage's `full` mbarrier; rows past M or I and columns past H are zero-filled by the
// copy engine, so every chunk lands full boxes and no operand is ever read out of bounds. Consumer warpgroup j takes
// rows [64·j, 64·j + 64) of the tile and keeps two accumulator sets, gate and up (m64nBN each, fp32), issuing per k
// step one wgmma on W_g and one on W_u that share the A descriptor; it keeps one chunk of MMAs in flight and releases a
// stage once the MMAs reading it have completed. Epilogue: act(g)·u in fp32, rounded once to the output dtype; for
// 16-bit outputs with 16-byte-aligned rows (a.staged) each warpgroup writes its 64 × BN block by stmatrix into its
// own staging buffer (128-byte-swizzled boxes of 64 columns, the layout of the out tensor map) and one thread stores
// it by TMA, so the warpgroup goes on to the next tile's MMAs while the copy engine writes (rows past M and columns
// past I are clipped by the copy); otherwise straight from the registers, rows past M and columns past I masked.
// Tiles are rastered in groups of 8 row tiles: consecutive tiles share a weight tile (read once from DRAM while the
// group's x rows stay in L2). A CTA takes tiles blockIdx.x, + gridDim.x, …: with one CTA a tile (grid = the tile
// count) that is one tile; with a persistent grid (one CTA an SM) the ring runs on across tiles, so the producer lands
// the next tile's first chunks while the consumers finish the current one's MMAs and epilogue.
#pragma once
#include "kiln/gated_mlp_args.h"
#include "kiln/tile_pipeline.cuh"
#include "kiln/wgmma.cuh"
#include "kiln/mbarrier.cuh"
#include "kiln/ptx.cuh"

namespace kiln {
namespace gmlp {

template <int ACT>
__device__ __forceinline__ float activation(float z) {
  if constexpr (ACT == 0) {
    // silu = z · 1 / (1 + e^−z) with the SFU's exp2 and reciprocal (relative error ≈ 2⁻²¹, far below the output's
    // rounding; the IEEE expf and division cost ≈ 25 instructions an element in the epilogue). z → −∞: −0 (the
    // reciprocal of ∞ is 0), −∞ itself NaN as z / ∞; z → +∞: z; NaN stays NaN.
    float e, r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(z * -1.4426950408889634f));
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.0f + e));
    return z * r;
  } else {
    // Exact erf GELU as z·Φ(z) = ½·z·erfc(x), x = −z/√2, erfc by the Numerical Recipes Chebyshev fit (fractional
    // error < 1.2e-7 everywhere): erfc(|x|) = t·e^(p(t) − x²), t = 1 / (1 + |x|/2); erfc(x) = 2 − erfc(|x|) for x < 0.
    // Branch-free, SFU reciprocal and exp2. Unlike ½·z·(1 + erf(z/√2)) in fp32, whose 1 + erf cancels for z < −1 (up
    // to 4.8 % relative error on [−5, −1], −0 below z ≈ −5.54), the tail keeps its relative accuracy (≤ 3e-6 for
    // z ≥ −5, ≤ 2.2e-5 down to the last normal values; fp32 emulation against double). z = −∞: NaN as before
    // (−∞ · 0); +∞: +∞; NaN stays NaN.
    const float x = z * -0.7071067811865476f, ax = fabsf(x);
    float t, e;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(t) : "f"(fmaf(0.5f, ax, 1.0f)));
    float p = 0.17087277f;
    p = fmaf(p, t, -0.82215223f);
    p = fmaf(p, t, 1.48851587f);
    p = fmaf(p, t, -1.13520398f);
    p = fmaf(p, t, 0.27886807f);
    p = fmaf(p, t, -0.18628806f);
    p = fmaf(p, t, 0.09678418f);
    p = fmaf(p, t, 0.37409196f);
    p = fmaf(p, t, 1.00002368f);
    p = fmaf(p, t, -1.26551223f);
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(fmaf(-ax, ax, p) * 1.4426950408889634f));
    const float r = t * e;  // erfc(|x|)
    return 0.5f * z * (x >= 0.f ? r : 2.0f - r);
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

// Grid: 1-D, at most m_tiles · ceil(I / BN) CTAs (fewer: each takes every gridDim.x-th tile), 384 threads, dynamic
// shared memory 1 KiB alignment slack + STAGES × (16 KiB x tile + 2 × BN·128 B weight tiles) + (16-bit T: two
// 64 × BN staging buffers, 256·BN bytes) + 2·STAGES mbarriers.
template <int H, int I, int ACT, typename T, int BN, int STAGES>
__global__ void __launch_bounds__(384, 1) gated_mlp_kernel(const __grid_constant__ GatedMlpArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(BN == 64 || BN == 128, "BN: 64 or 128 output columns a CTA");
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "bf16, fp16 or fp32 (TF32 MMAs)");
  constexpr int BM = 128, KB = 128 / static_cast<int>(sizeof(T)), CHUNKS = (H + KB - 1) / KB;
  constexpr int A_BYTES = BM * 128, B_BYTES = BN * 128, STAGE = A_BYTES + 2 * B_BYTES;
  constexpr int NT = (I + BN - 1) / BN, GM = 8;
  constexpr u32 TX = STAGE;  // every box lands whole (out-of-range elements as zeros)
  constexpr int STG = sizeof(T) == 2 ? 64 * BN * 2 : 0;  // a warpgroup's staging buffer (BN / 64 boxes of 8 KiB)

  extern __shared__ __align__(16) char smem_raw[];
  const u32 base = (smem_u32(smem_raw) + 1023u) & ~1023u, stg = base + STAGES * STAGE, bars = stg + 2 * STG;
  const int tid = threadIdx.x, wg = tid / 128;

  // Tile t's origin: groups of GM row tiles, row tile fastest inside a group.
  const int tiles = a.m_tiles * NT;
  auto origin = [&](int t, int& m0, int& n0) { tp::grouped_origin<GM, NT, BM, BN>(t, a.m_tiles, m0, n0); };

  if (tid == 0) tp::ring_init<STAGES>(bars, 2);  // both consumer warpgroups release every stage
  __syncthreads();

  if (wg == 0) {  // producer
    setmaxnreg_dec<40>();
    if (tid == 0) {
      prefetch_tmap(&a.tmx);
      prefetch_tmap(&a.tmg);
      prefetch_tmap(&a.tmu);
      tp::RingPos<STAGES> rp;
      for (int t = static_cast<int>(blockIdx.x); t < tiles; t += static_cast<int>(gridDim.x)) {
        int m0, n0;
        origin(t, m0, n0);
        for (int kc = 0; kc < CHUNKS; ++kc) {
          mbar_wait(bars + 8 * (STAGES + rp.s), rp.phase ^ 1);
          const u32 full = bars + 8 * rp.s, sa = base + rp.s * STAGE;
          mbar_arrive_expect_tx(full, TX);
          tma_load_2d(sa, &a.tmx, full, kc * KB, m0);
          tma_load_2d(sa + A_BYTES, &a.tmg, full, kc * KB, n0);
          tma_load_2d(sa + A_BYTES + B_BYTES, &a.tmu, full, kc * KB, n0);
          rp.next();
        }
      }
    }
  } else {  // consumers
    setmaxnreg_inc<232>();
    const int wm = wg - 1, lane = tid & 31, warp = (tid & 127) >> 5;
    T* out = static_cast<T*>(a.out);
    const bool even = (a.out_stride & 1) == 0;  // pairs of an odd row stride are not aligned in every row
    tp::RingPos<STAGES> rp;
    for (int t = static_cast<int>(blockIdx.x); t < tiles; t += static_cast<int>(gridDim.x)) {
      int m0, n0;
      origin(t, m0, n0);
      float g[BN / 2], u[BN / 2];
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) g[i] = u[i] = 0.f;
      int prev = -1;
      for (int kc = 0; kc < CHUNKS; ++kc) {
        mbar_wait(bars + 8 * rp.s, rp.phase);
        const u32 sa = base + rp.s * STAGE + wm * 64 * 128, sg = base + rp.s * STAGE + A_BYTES, su = sg + B_BYTES;
        wgmma::fence_regs(g);
        wgmma::fence_regs(u);
        wgmma::wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
          const u64 da = wgmma::desc_sw128(sa + ks * 32);
          wgmma::mma<BN, T>(g, da, wgmma::desc_sw128(sg + ks * 32));
          wgmma::mma<BN, T>(u, da, wgmma::desc_sw128(su + ks * 32));
        }
        wgmma::wgmma_commit();
        wgmma::wgmma_wait<1>();
        wgmma::fence_regs(g);
        wgmma::fence_regs(u);
        if (prev >= 0 && (tid & 127) == 0) mbar_arrive(bars + 8 * (STAGES + prev));  // its MMAs are done
        prev = rp.s;
        rp.next();
      }
      wgmma::wgmma_wait<0>();
      wgmma::fence_regs(g);
      wgmma::fence_regs(u);
      if ((tid & 127) == 0) mbar_arrive(bars + 8 * (STAGES + prev));  // the last chunk: the next tile may land
      // Register i of lane l: row 16·warp + l/4 + 8·((i/2) & 1), columns 8·(i/4) + 2·(l & 3) + {0, 1}.
      if constexpr (STG > 0) {
        if (a.staged) {
          tp::store_block_tma<BN>(stg + wm * STG, &a.tmo, wm, tid, lane, warp, m0, n0, a.M, I, [&](int i) {
            return pack2<T>(gmlp::activation<ACT>(g[i]) * u[i], gmlp::activation<ACT>(g[i + 1]) * u[i + 1]);
          });
          continue;
        }
      }
      const int row0 = m0 + wm * 64 + warp * 16 + (lane >> 2);
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
    if constexpr (STG > 0)
      if (a.staged && (tid & 127) == 0) bulk_wait_read();  // shared memory stays valid until the stores have read it
  }
#else
  __trap();  // sm_90a only (the host recipe never launches it elsewhere)
#endif
}

}  // namespace kiln
