// kiln/rms_norm.cuh — RMSNorm forward and backward.
//
//   forward:  r = 1/sqrt(Σx²/N + eps),  y = (x · r) · w                         (fp32 math, y in x's dtype)
//   backward: dx = r·g·w − r³·x·(Σ_k x·g·w)/N,   dw = Σ_rows x·g·r
// Forward: one warp per row; the row of x is held in registers between the reduction and the elementwise pass, so x
// is read from memory once. Backward: tiles of rows staged in shared memory (below); dw is reduced
// deterministically: every CTA of a persistent grid accumulates its rows into its own slice of an fp32 workspace
// [grid, N], and a second kernel adds the slices in CTA order.
#pragma once
#include "kiln/common.cuh"
#include "kiln/rms_norm_args.h"

namespace kiln {


// T: x/y dtype, W: weight dtype.
template <int N, int WARPS, typename T, typename W>
__global__ void __launch_bounds__(WARPS * 32) rms_norm_fwd_kernel(const RmsNormFwdArgs a) {
  constexpr int V = VecTraits<T>::kElems;  // elements per 16-byte chunk
  constexpr int CHUNKS = N / V;
  constexpr int STEPS = (CHUNKS + 31) / 32;
  // Rows stay in registers between the two passes (x read once); measured: re-reading long rows from L1/L2 instead
  // was slower at N = 7168 (118 vs 100 µs on H100).
  constexpr bool KEEP = STEPS <= 32;
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * WARPS + (threadIdx.x >> 5);
  if (row >= a.M) return;
  const char* xr = static_cast<const char*>(a.x) + static_cast<i64>(row) * a.x_stride * sizeof(T);
  char* yr = static_cast<char*>(a.y) + static_cast<i64>(row) * a.y_stride * sizeof(T);

  Vec16 v[KEEP ? STEPS : 1];
  float ss = 0.f;
#pragma unroll
  for (int s = 0; s < STEPS; ++s) {
    const int c = s * 32 + lane;
    if (c < CHUNKS) {
      const Vec16 x16 = KEEP ? load16_stream(xr + c * 16) : load16(xr + c * 16);
      if constexpr (KEEP) v[s] = x16;
#pragma unroll
      for (int i = 0; i < V; ++i) { const float f = vec_get<T>(x16, i); ss += f * f; }
    }
  }
  ss = warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(N) + a.eps);
  if (a.rms_out && lane == 0) a.rms_out[row] = r;
#pragma unroll
  for (int s = 0; s < STEPS; ++s) {
    const int c = s * 32 + lane;
    if (c < CHUNKS) {
      float wv[V];
      load_floats<W, V>(a.w, c * V, wv);
      const Vec16 x16 = KEEP ? v[KEEP ? s : 0] : load16(xr + c * 16);
      Vec16 o;
#pragma unroll
      for (int i = 0; i < V; ++i) vec_set<T>(o, i, __fmul_rn(__fmul_rn(vec_get<T>(x16, i), r), wv[i]));
      store16(yr + c * 16, o);
    }
  }
}

// Backward. A CTA of 256 threads takes tiles of R rows (grid-stride over tiles, a persistent grid):
//  1. x and dy of the tile → shared memory (cp.async; rows past M zero-filled). With STAGES = 2 the next tile is
//     staged into the other buffer while this one is computed, so each CTA keeps loads in flight during its compute;
//     with STAGES = 1 only the other CTAs of the SM overlap it;
//  2. a warp per row: Σx² and Σx·dy·w → r and coef = r³·Σx·dy·w / N;
//  3. each thread owns 16-byte column chunks c = tid, tid + 256, …: dx for those chunks of every row of the tile
//     (coalesced stores), and dweight for those columns accumulated in registers over all the CTA's tiles, in a fixed
//     order, so the result is deterministic. The CTA's dweight slice goes to partial[blockIdx.x].
template <int N, int R, int STAGES, typename T, typename W>
__global__ void __launch_bounds__(256) rms_norm_bwd_kernel(const RmsNormBwdArgs a) {
  static_assert(STAGES == 1 || STAGES == 2, "one or two staged tiles");
  constexpr int V = VecTraits<T>::kElems;  // elements per 16-byte chunk
  constexpr int CHUNKS = N / V;
  constexpr int CPT = (CHUNKS + 255) / 256;  // chunks per thread
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* const stage0 = reinterpret_cast<T*>(smem_raw);  // STAGES × { x [R][N], dy [R][N] }
  float* rrow = reinterpret_cast<float*>(stage0 + STAGES * 2 * R * N);  // [R]
  float* crow = rrow + R;                                                // [R]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  float dw[CPT][V];
#pragma unroll
  for (int k = 0; k < CPT; ++k)
#pragma unroll
    for (int e = 0; e < V; ++e) dw[k][e] = 0.f;

  const int tiles = (a.M + R - 1) / R;
  // Issues the copies of tile t into stage `b` as one cp.async group.
  auto stage = [&](int t, int b) {
    T* xs = stage0 + b * 2 * R * N;
    T* gs = xs + R * N;
    const int m0 = t * R;
    for (int i = threadIdx.x; i < R * CHUNKS; i += 256) {
      const int r = i / CHUNKS, c = i % CHUNKS;
      const bool ok = m0 + r < a.M;
      const i64 row = ok ? m0 + r : 0;
      cp_async16(xs + r * N + c * V, static_cast<const T*>(a.x) + row * a.x_stride + c * V, ok);
      cp_async16(gs + r * N + c * V, static_cast<const T*>(a.dy) + row * a.dy_stride + c * V, ok);
    }
    cp_async_commit();
  };
  if (STAGES == 2 && static_cast<int>(blockIdx.x) < tiles) stage(blockIdx.x, 0);
  int it = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x, ++it) {
    const int m0 = t * R;
    const int b = STAGES == 2 ? (it & 1) : 0;
    const T* xs = stage0 + b * 2 * R * N;
    const T* gs = xs + R * N;
    if constexpr (STAGES == 2) {
      // The other buffer was last read in the previous iteration, which ended with a barrier.
      if (t + static_cast<int>(gridDim.x) < tiles) stage(t + gridDim.x, b ^ 1);
      else cp_async_commit();  // an empty group keeps the count: "all but the newest" is this tile
      cp_async_wait_group<1>();
    } else {
      stage(t, 0);
      cp_async_wait_group<0>();
    }
    __syncthreads();

    for (int r = warp; r < R; r += 8) {
      float ss = 0.f, dot = 0.f;
      for (int c = lane; c < CHUNKS; c += 32) {
        const Vec16 x16 = *reinterpret_cast<const Vec16*>(xs + r * N + c * V);
        const Vec16 g16 = *reinterpret_cast<const Vec16*>(gs + r * N + c * V);
        float wv[V];
        load_floats<W, V>(a.w, c * V, wv);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const float xf = vec_get<T>(x16, i), gf = vec_get<T>(g16, i);
          ss += xf * xf;
          dot += xf * gf * wv[i];
        }
      }
      ss = warp_sum(ss);
      dot = warp_sum(dot);
      if (lane == 0) {
        const float rv = 1.0f / sqrtf(ss / static_cast<float>(N) + a.eps);
        rrow[r] = rv;
        crow[r] = rv * rv * rv * dot / static_cast<float>(N);
      }
    }
    __syncthreads();

    for (int r = 0; r < R && m0 + r < a.M; ++r) {
      const float rv = rrow[r], coef = crow[r];
      char* dxr = static_cast<char*>(a.dx) + static_cast<i64>(m0 + r) * a.dx_stride * sizeof(T);
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        const int c = threadIdx.x + k * 256;
        if (c < CHUNKS) {
          const Vec16 x16 = *reinterpret_cast<const Vec16*>(xs + r * N + c * V);
          const Vec16 g16 = *reinterpret_cast<const Vec16*>(gs + r * N + c * V);
          float wv[V];
          load_floats<W, V>(a.w, c * V, wv);
          Vec16 o;
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const float xf = vec_get<T>(x16, e), gf = vec_get<T>(g16, e);
            vec_set<T>(o, e, rv * gf * wv[e] - coef * xf);
            dw[k][e] += xf * gf * rv;
          }
          store16(dxr + c * 16, o);
        }
      }
    }
    __syncthreads();  // this tile's buffer is restaged next (STAGES = 1) or in the next iteration (STAGES = 2)
  }

  float* out = a.partial + static_cast<i64>(blockIdx.x) * N;
#pragma unroll
  for (int k = 0; k < CPT; ++k) {
    const int c = threadIdx.x + k * 256;
    if (c < CHUNKS)
#pragma unroll
      for (int e = 0; e < V; ++e) out[c * V + e] = dw[k][e];
  }
}

template <int N, typename DW>
__global__ void __launch_bounds__(256) rms_norm_dw_reduce_kernel(const RmsNormDwArgs a) {
  const int k = blockIdx.x * 256 + threadIdx.x;
  if (k >= N) return;
  float s = 0.f;
  for (int g = 0; g < a.G; ++g) s += a.partial[static_cast<i64>(g) * N + k];
  static_cast<DW*>(a.dw)[k] = from_float<DW>(s);
}

}  // namespace kiln
