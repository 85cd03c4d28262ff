// kiln/rms_norm.cuh — RMSNorm forward and backward.
//
//   forward:  r = 1/sqrt(Σx²/N + eps),  y = (x · r) · w                         (fp32 math, y in x's dtype)
//   backward: dx = r·g·w − r³·x·(Σ_k x·g·w)/N,   dw = Σ_rows x·g·r
// One warp per row; a row of x (and g) is held in registers between the reduction and the elementwise pass, so each
// input is read from memory once. The backward's dw is reduced deterministically: every CTA of a persistent grid
// accumulates its rows into its own slice of an fp32 workspace [grid, N] (per-warp rows in shared memory, summed in
// warp order), and a second kernel adds the slices in CTA order.
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

template <int N, int WARPS, typename T, typename W>
__global__ void __launch_bounds__(WARPS * 32) rms_norm_bwd_kernel(const RmsNormBwdArgs a) {
  constexpr int V = VecTraits<T>::kElems;
  constexpr int CHUNKS = N / V;
  constexpr int STEPS = (CHUNKS + 31) / 32;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* acc = reinterpret_cast<float*>(smem_raw);  // [WARPS][N] per-warp dw rows
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* my = acc + warp * N;
  for (int k = lane; k < N; k += 32) my[k] = 0.f;

  for (int row = blockIdx.x * WARPS + warp; row < a.M; row += gridDim.x * WARPS) {
    const char* xr = static_cast<const char*>(a.x) + static_cast<i64>(row) * a.x_stride * sizeof(T);
    const char* gr = static_cast<const char*>(a.dy) + static_cast<i64>(row) * a.dy_stride * sizeof(T);
    char* dxr = static_cast<char*>(a.dx) + static_cast<i64>(row) * a.dx_stride * sizeof(T);
    // The second pass re-reads x and dy from L1/L2 (this warp loaded them moments ago): holding both rows in
    // registers cost 237 registers at N = 2048, one CTA per SM, and 81 µs instead of 62 (bench/NOTES.md).
    float ss = 0.f, dot = 0.f;
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
      const int c = s * 32 + lane;
      if (c < CHUNKS) {
        const Vec16 x16 = load16(xr + c * 16);
        const Vec16 g16 = load16(gr + c * 16);
        float wv[V];
        load_floats<W, V>(a.w, c * V, wv);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const float xf = vec_get<T>(x16, i), gf = vec_get<T>(g16, i);
          ss += xf * xf;
          dot += xf * gf * wv[i];
        }
      }
    }
    ss = warp_sum(ss);
    dot = warp_sum(dot);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(N) + a.eps);
    const float coef = r * r * r * dot / static_cast<float>(N);
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
      const int c = s * 32 + lane;
      if (c < CHUNKS) {
        const Vec16 x16 = load16(xr + c * 16);
        const Vec16 g16 = load16(gr + c * 16);
        float wv[V];
        load_floats<W, V>(a.w, c * V, wv);
        // This lane's dw slots for the chunk: V consecutive floats, read and written as 16-byte words.
        float4* acc4 = reinterpret_cast<float4*>(my + c * V);
        Vec16 o;
#pragma unroll
        for (int j = 0; j < V / 4; ++j) {
          float4 d = acc4[j];
          float* dv = reinterpret_cast<float*>(&d);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int e = j * 4 + i;
            const float xf = vec_get<T>(x16, e), gf = vec_get<T>(g16, e);
            vec_set<T>(o, e, r * gf * wv[e] - coef * xf);
            dv[i] += xf * gf * r;
          }
          acc4[j] = d;
        }
        store16(dxr + c * 16, o);
      }
    }
  }
  __syncthreads();
  float* out = a.partial + static_cast<i64>(blockIdx.x) * N;
  for (int k = threadIdx.x; k < N; k += WARPS * 32) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) s += acc[w * N + k];
    out[k] = s;
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
