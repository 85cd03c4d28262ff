// kiln/moe_permute.cuh — MoE permute (token rows → padded expert-major rows) and unpermute (combine back).
//
// permute, a CTA per token t (scatter: every input row is read from memory exactly once):
//   the row of t is loaded into registers while warp 0 compacts the map row (E ints) into the list of t's
//   destinations in ascending expert order (ballot + popc); then the row is stored to every destination,
//   scale_out[j, r] = scale(t, j) (token-major [T, NS] or M-major [NS, T] input) and probs_out[r] = probs[t, e].
//   CTAs T … T+E−1 fill expert e's padding rows offsets[e] + counts[e] … offsets[e+1] − 1, and the last
//   kMoePermuteTailCtas CTAs the rows offsets[E] … num_out − 1: data 0, scale pad_scale, prob 0 — the same launch.
// unpermute, a CTA per token t (gather: out[t] = Σ_{e ascending, r = map[t,e] ≥ 0} w[r]·x[r]):
//   warp 0 compacts the map row into (row, weight) pairs and writes restore[t, e] = w[r] or 0; the sum runs in
//   fp32 in ascending expert order (fma with weights, plain adds without), four rows' loads in flight, and is
//   rounded once to the output dtype. No atomics: the same inputs give the same bits.
#pragma once
#include "kiln/common.cuh"
#include "kiln/moe_permute_args.h"

namespace kiln {

// Warp 0 (lane `lane`) compacts row t of the map into rows[] (ascending e); returns the count on every lane.
// `visit(e, r, ok, pos)` is called for every expert (ok: r is a destination, stored at rows[pos]).
template <int E, typename Visit>
__device__ __forceinline__ int compact_map_row(const int* mr, int num_out, int lane, int* rows, Visit visit) {
  int n = 0;
#pragma unroll 1
  for (int c = 0; c < E; c += 32) {
    const int e = c + lane;
    const int r = e < E ? mr[e] : -1;
    const bool ok = r >= 0 && r < num_out;
    const u32 bal = __ballot_sync(0xffffffffu, ok);
    if (ok) rows[n + __popc(bal & ((1u << lane) - 1u))] = r;
    if (e < E) visit(e, r, ok, n + __popc(bal & ((1u << lane) - 1u)));
    n += __popc(bal);
  }
  return n;
}

template <int ROW_BYTES, int E, int NS, bool M_MAJOR, bool PROBS, int THREADS>
__global__ void __launch_bounds__(THREADS) moe_permute_kernel(const MoePermuteArgs a) {
  static_assert(ROW_BYTES % 16 == 0, "rows are copied in 16-byte vectors");
  constexpr int NV = ROW_BYTES / 16;
  constexpr int VPT = (NV + THREADS - 1) / THREADS;
  __shared__ int dst[E];
  __shared__ int ndst;
  const int tid = threadIdx.x, lane = tid & 31;
  const int b = blockIdx.x;
  if (b < a.T) {
    const int t = b;
    const char* src = static_cast<const char*>(a.inp) + static_cast<i64>(t) * ROW_BYTES;
    Vec16 v[VPT];
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int idx = tid + k * THREADS;
      if (idx < NV) v[k] = load16_stream(src + idx * 16);
    }
    if (tid < 32) {
      const float* pr = a.probs + static_cast<i64>(t) * E;
      const int n = compact_map_row<E>(a.row_id_map + static_cast<i64>(t) * E, a.num_out, lane, dst,
                                       [&](int e, int r, bool ok, int) {
                                         if (PROBS && ok) a.probs_out[r] = pr[e];
                                       });
      if (lane == 0) ndst = n;
    }
    __syncthreads();
    const int n = ndst;
#pragma unroll 1
    for (int i = 0; i < n; ++i) {
      char* d = static_cast<char*>(a.out) + static_cast<i64>(dst[i]) * ROW_BYTES;
#pragma unroll
      for (int k = 0; k < VPT; ++k) {
        const int idx = tid + k * THREADS;
        if (idx < NV) store16(d + idx * 16, v[k]);
      }
    }
    if constexpr (NS > 0) {
      for (int idx = tid; idx < NS * n; idx += THREADS) {
        const int j = idx / n, i = idx - j * n;
        const float s = M_MAJOR ? a.scale[static_cast<i64>(j) * a.T + t] : a.scale[static_cast<i64>(t) * NS + j];
        a.scale_out[static_cast<i64>(j) * a.num_out + dst[i]] = s;
      }
    }
    return;
  }
  // Padding rows.
  int r0, r1, step;
  if (b < a.T + E) {
    const int e = b - a.T;
    r0 = a.offsets[e] + a.counts[e];
    r1 = a.offsets[e + 1];
    step = 1;
  } else {
    r0 = a.offsets[E] + (b - a.T - E);
    r1 = a.num_out;
    step = kMoePermuteTailCtas;
  }
  r1 = min(r1, a.num_out);
  const Vec16 zero{{0u, 0u, 0u, 0u}};
#pragma unroll 1
  for (int r = r0; r < r1; r += step) {
    char* d = static_cast<char*>(a.out) + static_cast<i64>(r) * ROW_BYTES;
    for (int idx = tid; idx < NV; idx += THREADS) store16(d + idx * 16, zero);
    if constexpr (NS > 0)
      for (int j = tid; j < NS; j += THREADS) a.scale_out[static_cast<i64>(j) * a.num_out + r] = a.pad_scale;
    if (PROBS && tid == 0) a.probs_out[r] = 0.0f;
  }
}

template <int H, typename T, int E, bool WEIGHTS, bool RESTORE, int THREADS>
__global__ void __launch_bounds__(THREADS) moe_unpermute_kernel(const MoeUnpermuteArgs a) {
  constexpr int V = VecTraits<T>::kElems;
  static_assert(H % V == 0, "rows are read in 16-byte vectors");
  constexpr int NV = H / V;
  constexpr int VPT = (NV + THREADS - 1) / THREADS;
  constexpr int ROW_BYTES = H * static_cast<int>(sizeof(T));
  __shared__ int rows[E];
  __shared__ float ws[E];
  __shared__ int nrows;
  const int tid = threadIdx.x, lane = tid & 31;
  const int t = blockIdx.x;
  if (tid < 32) {
    float* rr = RESTORE ? a.restore + static_cast<i64>(t) * E : nullptr;
    const int n = compact_map_row<E>(a.row_id_map + static_cast<i64>(t) * E, a.num_out, lane, rows,
                                     [&](int e, int r, bool ok, int pos) {
                                       const float w = (WEIGHTS && ok) ? a.weights[r] : 0.0f;
                                       if (ok) ws[pos] = w;
                                       if (RESTORE) rr[e] = w;
                                     });
    if (lane == 0) nrows = n;
  }
  __syncthreads();
  const int n = nrows;
  float acc[VPT][V];
#pragma unroll
  for (int k = 0; k < VPT; ++k)
#pragma unroll
    for (int u = 0; u < V; ++u) acc[k][u] = 0.0f;
#pragma unroll 1
  for (int i0 = 0; i0 < n; i0 += 4) {
    Vec16 x[4][VPT];
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (i0 + q < n) {
        const char* src = static_cast<const char*>(a.x) + static_cast<i64>(rows[i0 + q]) * ROW_BYTES;
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
          const int idx = tid + k * THREADS;
          if (idx < NV) x[q][k] = load16(src + idx * 16);
        }
      }
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (i0 + q < n) {
        const float w = ws[i0 + q];
#pragma unroll
        for (int k = 0; k < VPT; ++k)
#pragma unroll
          for (int u = 0; u < V; ++u) {
            const float xv = vec_get<T>(x[q][k], u);
            acc[k][u] = WEIGHTS ? __fmaf_rn(xv, w, acc[k][u]) : __fadd_rn(acc[k][u], xv);
          }
      }
  }
  char* dst = static_cast<char*>(a.out) + static_cast<i64>(t) * ROW_BYTES;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int idx = tid + k * THREADS;
    if (idx < NV) {
      Vec16 o;
#pragma unroll
      for (int u = 0; u < V; ++u) vec_set<T>(o, u, acc[k][u]);
      store16(dst + idx * 16, o);
    }
  }
}

}  // namespace kiln
