// kiln/rms_norm_block_quant.cuh — RMSNorm fused with fp8 e4m3 1×128 block quantization.
//
//   r[m]   = 1 / sqrt(Σ_k x[m,k]² / N + eps)                    (fp32; mode 1 reads r from rms_in)
//   y[m,k] = (x[m,k] · r[m]) · w[k]                             (fp32, this order, no FMA)
//   row-wise   q[m, :], q_scale[N/128, M]   : blocks of 128 columns of a row          (modes 0, 2)
//   transposed qT[n, :], qT_scale[M/128, N] : blocks of 128 consecutive tokens of a channel (modes 1, 2)
//
// Two kernels:
//  * row_kernel (mode 0): one warp per row. The row stays in registers between the sum of squares and the
//    quantization, so x is read once. Lanes 0–15 own one 128-column block of each 256-column step, lanes 16–31 the
//    next: a block's amax is a 16-lane butterfly.
//  * tile_kernel (modes 1, 2): the transposed output needs a whole 128-token block per channel, and the norm needs a
//    whole row, so a cluster of S CTAs splits a 128-token × N tile by columns. Each CTA copies its 128 × C slice of
//    x into shared memory once (cp.async), sums squares per row, and the cluster exchanges the 128 partial sums
//    through distributed shared memory (every CTA adds them in rank order, so all see the same r). Then it writes
//    the row-wise blocks (a warp per row) and the transposed blocks (a thread per column) from shared memory.
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp8.cuh"
#include "kiln/rms_norm_block_quant_args.h"

namespace kiln {

template <bool W_F32>
__device__ __forceinline__ float load_weight(const void* w, int k) {
  if (W_F32) return static_cast<const float*>(w)[k];
  return to_float(static_cast<const bf16*>(w)[k]);
}

// ---------------------------------------------------------------------------------------------------------------------
// Mode 0. N % 128 == 0. Each lane holds STEPS 16-byte chunks (8 bf16) of its row.
template <int N, int WARPS, bool ROUND, bool W_F32>
__global__ void __launch_bounds__(WARPS * 32) rms_norm_block_quant_row_kernel(const RmsNormBlockQuantArgs a) {
  constexpr int CHUNKS = N / 8;               // 16-byte chunks per row
  constexpr int STEPS = (CHUNKS + 31) / 32;   // 256-column steps
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * WARPS + (threadIdx.x >> 5);
  if (row >= a.M) return;
  const bf16* xr = static_cast<const bf16*>(a.x) + static_cast<i64>(row) * a.x_stride;

  Vec16 v[STEPS];
  float ss = 0.f;
#pragma unroll
  for (int s = 0; s < STEPS; ++s) {
    const int c = s * 32 + lane;
    if (c < CHUNKS) {
      v[s] = load16_stream(xr + c * 8);
#pragma unroll
      for (int i = 0; i < 8; ++i) { const float f = vec_get<bf16>(v[s], i); ss += f * f; }
    }
  }
  ss = warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(N) + a.eps);
  if (a.rms_out && lane == 0) a.rms_out[row] = r;

#pragma unroll
  for (int s = 0; s < STEPS; ++s) {
    const int c = s * 32 + lane;
    const bool active = c < CHUNKS;  // half-warp uniform: CHUNKS is a multiple of 16
    float y[8];
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      y[i] = active ? __fmul_rn(__fmul_rn(vec_get<bf16>(v[s], i), r), load_weight<W_F32>(a.w, c * 8 + i)) : 0.f;
      amax = fmaxf(amax, fabsf(y[i]));
    }
    amax = warp_max<16>(amax);
    if (!active) continue;
    const Quantizer<ROUND> quant(block_scale<ROUND>(amax));
    uint2 out;
    out.x = e4m3x4(quant(y[0]), quant(y[1]), quant(y[2]), quant(y[3]));
    out.y = e4m3x4(quant(y[4]), quant(y[5]), quant(y[6]), quant(y[7]));
    *reinterpret_cast<uint2*>(a.q + static_cast<i64>(row) * N + c * 8) = out;
    if ((lane & 15) == 0) a.q_scale[static_cast<i64>(c / 16) * a.M + row] = quant.s;
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Modes 1 and 2. CTA (rank, tb) covers tokens [128·tb, 128·tb + 128) × columns [C·rank, C·rank + C), C = 128·CB.
// MODE 2 launches clusters of S = N / C CTAs along x; MODE 1 reads r and needs no cluster.
template <int N, int CB, int THREADS, int MODE, bool ROUND, bool W_F32>
__global__ void __launch_bounds__(THREADS) rms_norm_block_quant_tile_kernel(const RmsNormBlockQuantArgs a) {
  constexpr int C = CB * 128;
  constexpr int S = N / C;
  constexpr int ROWS = 128;
  constexpr int WARPS = THREADS / 32;
  constexpr int CHUNKS = C / 8;  // 16-byte chunks per tile row
  static_assert(N % C == 0, "the cluster must tile N");
  static_assert(THREADS % 32 == 0 && THREADS >= 128, "");
  static_assert(N <= kRmsNormBlockQuantMaxN, "");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* tile = reinterpret_cast<bf16*>(smem_raw);                          // [ROWS][C]
  float* wsm = reinterpret_cast<float*>(smem_raw + ROWS * C * 2);          // [C]
  float* partial = wsm + C;                                                // [ROWS] this CTA's Σx² per row
  float* rinv = partial + ROWS;                                            // [ROWS]
  float* rscale = rinv + ROWS;                                             // [CB][ROWS] row-block scales

  const int rank = blockIdx.x;
  const int col0 = rank * C;
  const int m0 = blockIdx.y * ROWS;
  const int valid = min(ROWS, a.M - m0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  // 1. x slice → shared (rows past M are zero-filled: they add nothing to any amax).
  for (int i = threadIdx.x; i < ROWS * CHUNKS; i += THREADS) {
    const int r = i / CHUNKS, c = i % CHUNKS;
    const bool ok = r < valid;
    const bf16* src = static_cast<const bf16*>(a.x) + static_cast<i64>(m0 + (ok ? r : 0)) * a.x_stride + col0 + c * 8;
    cp_async16(tile + r * C + c * 8, src, ok);
  }
  for (int i = threadIdx.x; i < C; i += THREADS) wsm[i] = load_weight<W_F32>(a.w, col0 + i);
  cp_async_wait_all();
  __syncthreads();

  // 2. r per row.
  if (MODE == 2) {
    for (int r = warp; r < ROWS; r += WARPS) {
      float ss = 0.f;
      for (int c = lane; c < CHUNKS; c += 32) {
        const Vec16 v = *reinterpret_cast<const Vec16*>(tile + r * C + c * 8);
#pragma unroll
        for (int i = 0; i < 8; ++i) { const float f = vec_get<bf16>(v, i); ss += f * f; }
      }
      ss = warp_sum(ss);
      if (lane == 0) partial[r] = ss;
    }
    if (S > 1) cluster_sync(); else __syncthreads();
    for (int r = threadIdx.x; r < ROWS; r += THREADS) {
      float ss = 0.f;
      for (int k = 0; k < S; ++k) ss += (S > 1) ? cluster_load(partial + r, k) : partial[r];
      const float rv = 1.0f / sqrtf(ss / static_cast<float>(N) + a.eps);
      rinv[r] = rv;
      if (rank == 0 && a.rms_out && r < valid) a.rms_out[m0 + r] = rv;
    }
    if (S > 1) cluster_arrive();  // our partial[] may be read until every CTA passes the wait at the end
  } else {
    for (int r = threadIdx.x; r < ROWS; r += THREADS) rinv[r] = r < valid ? a.rms_in[m0 + r] : 0.f;
  }
  __syncthreads();

  // 3. Row-wise blocks (mode 2): a warp per row, 4 columns per lane per block.
  if (MODE == 2) {
    for (int r = warp; r < valid; r += WARPS) {
      const float rv = rinv[r];
#pragma unroll
      for (int b = 0; b < CB; ++b) {
        const int c = b * 128 + lane * 4;
        const uint2 raw = *reinterpret_cast<const uint2*>(tile + r * C + c);
        float y[4];
        y[0] = __fmul_rn(__fmul_rn(__uint_as_float(raw.x << 16), rv), wsm[c + 0]);
        y[1] = __fmul_rn(__fmul_rn(__uint_as_float(raw.x & 0xffff0000u), rv), wsm[c + 1]);
        y[2] = __fmul_rn(__fmul_rn(__uint_as_float(raw.y << 16), rv), wsm[c + 2]);
        y[3] = __fmul_rn(__fmul_rn(__uint_as_float(raw.y & 0xffff0000u), rv), wsm[c + 3]);
        const float amax = warp_max(fmaxf(fmaxf(fabsf(y[0]), fabsf(y[1])), fmaxf(fabsf(y[2]), fabsf(y[3]))));
        const Quantizer<ROUND> quant(block_scale<ROUND>(amax));
        *reinterpret_cast<u32*>(a.q + static_cast<i64>(m0 + r) * N + col0 + c) =
            e4m3x4(quant(y[0]), quant(y[1]), quant(y[2]), quant(y[3]));
        if (lane == 0) rscale[b * ROWS + r] = quant.s;
      }
    }
  }

  // 4. Transposed blocks: a thread per column; amax over the 128 tokens, then 16 codes per 16-byte store.
  const i64 tb = blockIdx.y;
  const bool aligned16 = (a.M % 16) == 0;
  for (int c = threadIdx.x; c < C; c += THREADS) {
    const float wv = wsm[c];
    float amax = 0.f;
    for (int r = 0; r < ROWS; ++r)
      amax = fmaxf(amax, fabsf(__fmul_rn(__fmul_rn(to_float(tile[r * C + c]), rinv[r]), wv)));
    const Quantizer<ROUND> quant(block_scale<ROUND>(amax));
    const int n = col0 + c;
    a.qT_scale[tb * N + n] = quant.s;
    u8* dst = a.qT + static_cast<i64>(n) * a.M + m0;
    for (int r0 = 0; r0 < valid; r0 += 16) {
      u32 w4[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float y[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = r0 + j * 4 + i;
          y[i] = quant(__fmul_rn(__fmul_rn(to_float(tile[r * C + c]), rinv[r]), wv));
        }
        w4[j] = e4m3x4(y[0], y[1], y[2], y[3]);
      }
      if (aligned16 && r0 + 16 <= valid) {
        store16(dst + r0, Vec16{{w4[0], w4[1], w4[2], w4[3]}});
      } else {
        for (int i = 0; i < 16 && r0 + i < valid; ++i) dst[r0 + i] = static_cast<u8>(w4[i >> 2] >> ((i & 3) * 8));
      }
    }
  }

  // Row-wise scales, M-major: for block b the 128 rows are contiguous.
  if (MODE == 2) {
    __syncthreads();
    for (int i = threadIdx.x; i < CB * ROWS; i += THREADS) {
      const int b = i / ROWS, r = i % ROWS;
      if (r < valid) a.q_scale[static_cast<i64>(col0 / 128 + b) * a.M + m0 + r] = rscale[i];
    }
    if (S > 1) cluster_wait();
  }
}

}  // namespace kiln
