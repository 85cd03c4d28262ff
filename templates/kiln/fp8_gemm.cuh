// kiln/fp8_gemm.cuh — GEMM on the triton_ops uint8 "FP8 compatibility format" (spec: ../shared/spec/triton-ops.md §5):
// c = (448/127)² / (s_a·s_b) · Σ_k (q_a − 128)(q_b − 128), exact in integers, one fp32 multiply, one rounding.
//
// The codes of a go to the tensor cores as they are (unsigned 8-bit) and bᵀ as int8 t = q_b − 128 (the prep kernel:
// transpose, xor 0x80, and the column sums Σ_k t[n][k]): Σ q_a·t = Σ (q_a − 128)·t + 128·Σ_k t, so the epilogue
// subtracts 128·colsum[n] from the s32 accumulator — exact while 255·127·K < 2³¹ (K ≤ 66 311; the host checks).
// Kernel = the gated MLP's skeleton (templates/kiln/gated_mlp.cuh): producer warpgroup streaming K in 128-byte chunks
// of the a tile [128 rows] and the bᵀ tile [BN rows] by TMA through a STAGES-deep ring, two consumer warpgroups of 64
// rows each issuing wgmma.m64n128k32.s32.u8.s8 (4 a chunk), persistent grid, tiles rastered in groups of 8 row tiles;
// epilogue: v = fp32(acc − 128·colsum[n]) · α, α = fp32((448²/127²) / (s_a·s_b)) (fp64), rounded once to the output
// dtype — for 16-bit outputs with 16-byte-aligned rows and N % 8 == 0 staged by stmatrix and stored by TMA, otherwise
// from the registers.
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp8_gemm_args.h"
#include "kiln/mbarrier.cuh"
#include "kiln/ptx.cuh"
#include "kiln/wgmma.cuh"

namespace kiln {

// Grid (ceil(N / 64), ceil(K / 64)), 256 threads: one 64 × 64 tile of b through shared memory.
__global__ void __launch_bounds__(256) fp8_gemm_b_prep_kernel(const __grid_constant__ Fp8BPrepArgs a) {
  __shared__ unsigned char tile[64][65];
  const int n0 = blockIdx.x * 64, k0 = blockIdx.y * 64, t = threadIdx.x;
  for (int r = t / 64; r < 64; r += 4) {  // coalesced along n
    const int k = k0 + r, n = n0 + (t & 63);
    tile[r][t & 63] = (k < a.K && n < a.N) ? a.b[static_cast<i64>(k) * a.N + n] : 128;
  }
  __syncthreads();
  for (int r = t / 64; r < 64; r += 4) {  // coalesced along k
    const int n = n0 + r, k = k0 + (t & 63);
    if (n < a.N && k < a.K) a.bt[static_cast<i64>(n) * a.K + k] = static_cast<signed char>(tile[t & 63][r] ^ 0x80);
  }
  if (t < 64 && n0 + t < a.N) {
    int s = 0;
    for (int r = 0; r < 64; ++r) s += static_cast<int>(tile[r][t]) - 128;  // rows past K hold 128: add 0
    atomicAdd(a.colsum + n0 + t, s);  // integers: the same sum in any order
  }
}

// Grid: 1-D persistent (each CTA takes every gridDim.x-th tile), 384 threads, dynamic shared memory 1 KiB slack +
// STAGES × (16 KiB a tile + BN·128 B bᵀ tile) + (16-bit TO: two 64 × BN staging buffers) + 2·STAGES mbarriers.
template <int N, int K, typename TO, int BN, int STAGES>
__global__ void __launch_bounds__(384, 1) fp8_gemm_kernel(const __grid_constant__ Fp8GemmArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(BN == 128, "BN: 128 columns a CTA");
  constexpr int BM = 128, KB = 128, CHUNKS = (K + KB - 1) / KB;
  constexpr int A_BYTES = BM * 128, B_BYTES = BN * 128, STAGE = A_BYTES + B_BYTES;
  constexpr int NT = (N + BN - 1) / BN, GM = 8;
  constexpr u32 TX = STAGE;
  constexpr int STG = sizeof(TO) == 2 ? 64 * BN * 2 : 0;

  extern __shared__ __align__(16) char smem_raw[];
  const u32 base = (smem_u32(smem_raw) + 1023u) & ~1023u, stg = base + STAGES * STAGE, bars = stg + 2 * STG;
  const int tid = threadIdx.x, wg = tid / 128;
  const int tiles = a.m_tiles * NT;
  auto origin = [&](int t, int& m0, int& n0) {
    const int group = t / (GM * NT), first = group * GM;
    const int gm = a.m_tiles - first < GM ? a.m_tiles - first : GM, r = t - group * GM * NT;
    m0 = (first + r % gm) * BM;
    n0 = (r / gm) * BN;
  };

  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(bars + 8 * s, 1);
      mbar_init(bars + 8 * (STAGES + s), 2);
    }
    fence_mbar_init();
  }
  __syncthreads();

  if (wg == 0) {  // producer
    setmaxnreg_dec<40>();
    if (tid == 0) {
      prefetch_tmap(&a.tma);
      prefetch_tmap(&a.tmb);
      int s = 0;
      u32 phase = 0;
      for (int t = static_cast<int>(blockIdx.x); t < tiles; t += static_cast<int>(gridDim.x)) {
        int m0, n0;
        origin(t, m0, n0);
        for (int kc = 0; kc < CHUNKS; ++kc) {
          mbar_wait(bars + 8 * (STAGES + s), phase ^ 1);
          const u32 full = bars + 8 * s, sa = base + s * STAGE;
          mbar_arrive_expect_tx(full, TX);
          tma_load_2d(sa, &a.tma, full, kc * KB, m0);
          tma_load_2d(sa + A_BYTES, &a.tmb, full, kc * KB, n0);
          if (++s == STAGES) {
            s = 0;
            phase ^= 1;
          }
        }
      }
    }
  } else {  // consumers
    setmaxnreg_inc<232>();
    const int wm = wg - 1, lane = tid & 31, warp = (tid & 127) >> 5;
    const float alpha = static_cast<float>((200704.0 / 16129.0) /
                                           (static_cast<double>(__ldg(a.a_scale)) * static_cast<double>(__ldg(a.b_scale))));
    TO* out = static_cast<TO*>(a.out);
    int s = 0;
    u32 phase = 0;
    for (int t = static_cast<int>(blockIdx.x); t < tiles; t += static_cast<int>(gridDim.x)) {
      int m0, n0;
      origin(t, m0, n0);
      int acc[64];
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[i] = 0;
      int prev = -1;
      for (int kc = 0; kc < CHUNKS; ++kc) {
        mbar_wait(bars + 8 * s, phase);
        const u32 sa = base + s * STAGE + wm * 64 * 128, sb = base + s * STAGE + A_BYTES;
        wgmma::fence_regs(acc);
        wgmma::wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
          wgmma::mma_u8s8_n128(acc, wgmma::desc_sw128(sa + ks * 32), wgmma::desc_sw128(sb + ks * 32));
        wgmma::wgmma_commit();
        wgmma::wgmma_wait<1>();
        wgmma::fence_regs(acc);
        if (prev >= 0 && (tid & 127) == 0) mbar_arrive(bars + 8 * (STAGES + prev));
        prev = s;
        if (++s == STAGES) {
          s = 0;
          phase ^= 1;
        }
      }
      wgmma::wgmma_wait<0>();
      wgmma::fence_regs(acc);
      if ((tid & 127) == 0) mbar_arrive(bars + 8 * (STAGES + prev));
      // Register i of lane l: row 16·warp + l/4 + 8·((i/2) & 1), columns 8·(i/4) + 2·(l & 3) + {0, 1}.
      float v[64];
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int col = n0 + 8 * j + 2 * (lane & 3);
        const int c0 = col < N ? __ldg(a.colsum + col) : 0, c1 = col + 1 < N ? __ldg(a.colsum + col + 1) : 0;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          v[4 * j + 2 * h] = __fmul_rn(static_cast<float>(acc[4 * j + 2 * h] - 128 * c0), alpha);
          v[4 * j + 2 * h + 1] = __fmul_rn(static_cast<float>(acc[4 * j + 2 * h + 1] - 128 * c1), alpha);
        }
      }
      if constexpr (STG > 0) {
        if (a.staged) {
          const u32 buf = stg + wm * STG;
          if ((tid & 127) == 0) bulk_wait_read();
          asm volatile("bar.sync %0, 128;" ::"r"(1 + wm) : "memory");
          wgmma::stage_sw128<BN>(buf, lane, warp, [&](int i) { return pack2<TO>(v[i], v[i + 1]); });
          fence_proxy_async();
          asm volatile("bar.sync %0, 128;" ::"r"(1 + wm) : "memory");
          if ((tid & 127) == 0 && m0 + wm * 64 < a.M) {
#pragma unroll
            for (int at = 0; at < BN / 64; ++at)
              if (n0 + at * 64 < N) tma_store_2d(&a.tmo, buf + at * 8192, n0 + at * 64, m0 + wm * 64);
            bulk_commit();
          }
          continue;
        }
      }
      const int row0 = m0 + wm * 64 + warp * 16 + (lane >> 2);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + 8 * h;
        if (row >= a.M) continue;
        TO* dst = out + static_cast<i64>(row) * a.out_stride;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const int col = n0 + 8 * j + 2 * (lane & 3);
          if (col < N) dst[col] = from_float<TO>(v[4 * j + 2 * h]);
          if (col + 1 < N) dst[col + 1] = from_float<TO>(v[4 * j + 2 * h + 1]);
        }
      }
    }
    if constexpr (STG > 0)
      if (a.staged && (tid & 127) == 0) bulk_wait_read();
  }
#else
  __trap();  // sm_90a only (the host recipe never launches it elsewhere)
#endif
}

}  // namespace kiln
