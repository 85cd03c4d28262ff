// kiln/rms_norm.cuh — RMSNorm forward and backward.
//
//   forward:  r = 1/sqrt(Σx²/N + eps),  y = (x · r) · w                         (fp32 math, y in x's dtype)
//   backward: dx = r·g·w − r³·x·(Σ_k x·g·w)/N,   dw = Σ_rows x·g·r
// Forward: one warp per row; the row of x is held in registers between the reduction and the elementwise pass, so x
// is read from memory once. Backward: a persistent grid whose warps stream their rows through shared-memory rings
// (rms_norm_bwd_pipe_kernel; the older tile kernel stays as a search-space point and the fallback for rows too long
// for it); dw is reduced deterministically (kiln/dw_reduce.cuh): every CTA accumulates its rows into its own row of
// an fp32 workspace [grid, N], and dw_reduce_kernel adds the rows in CTA order.
#pragma once
#include "kiln/common.cuh"
#include "kiln/dw_reduce.cuh"
#include "kiln/rms_norm_args.h"
#include "kiln/row_pipe.cuh"

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
  pdl_launch_dependents();  // dw_reduce_kernel (PDL) may be placed beside this grid now; it waits for it to end
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

// ---- pipelined backward ----------------------------------------------------------------------------------------
// Persistent grid sized to the GPU; CTA c of G takes rows c, c + G, … (CtaRows: counts differ by ≤ 1 row, so every SM
// streams the same bytes). The WARPS warps form GROUPS = WARPS/SPLIT groups; group g takes every GROUPS-th of the
// CTA's rows, starting with its g-th, and warp `sub` of the group owns the contiguous column slice
// [sub·NS, (sub+1)·NS) of those rows (NS = N/SPLIT). Each warp streams its slices of x and dy through its own ring of
// DEPTH shared-memory slots (WarpRing: TMA bulk copies on sm_90, cp.async before), so DEPTH − 1 rows per warp are in
// flight while it computes one, and no warp ever waits for another except the SPLIT warps sharing a row (one named
// barrier per row to add their Σx² and Σx·dy·w). A lane owns chunks lane, lane + 32, … of its warp's slice: the
// weights stay in registers as loaded, dw accumulates in fp32 registers over all the CTA's rows (fixed order), and at
// the end the groups' dw go through shared memory and are added in group order into partial[blockIdx.x]
// (dw_cta_partial), which dw_reduce_kernel adds in CTA order.
template <int N, int SPLIT, typename T, typename W>
struct RmsBwdPipeLayout {
  static constexpr int V = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
  static constexpr int NS = N / SPLIT;                         // columns per warp slice
  static_assert(NS * SPLIT == N && NS % V == 0, "SPLIT cuts the row into 16-byte-aligned slices");
  static constexpr int CS = NS / V;                            // chunks per slice
  static constexpr int CPL = (CS + 31) / 32;                   // chunks per lane
  static constexpr int WV = V * static_cast<int>(sizeof(W)) / 4;  // 32-bit words of weight per chunk
  static constexpr int PIECE = NS * static_cast<int>(sizeof(T));  // bytes of one tensor's slice
  static constexpr int SLOT = 2 * PIECE;                          // x slice, then dy slice
};

template <typename W, int WV>
__device__ __forceinline__ float weight_at(const u32 (&w)[WV], int e) {
  if constexpr (sizeof(W) == 4) return __uint_as_float(w[e]);
  else return to_float(W{static_cast<u16>((e & 1) ? (w[e >> 1] >> 16) : (w[e >> 1] & 0xffffu))});
}

template <int N, int WARPS, int SPLIT, int DEPTH, bool BULK, typename T, typename W>
__global__ void __launch_bounds__(WARPS * 32, 1) rms_norm_bwd_pipe_kernel(const RmsNormBwdArgs a) {
  pdl_launch_dependents();  // dw_reduce_kernel (PDL) may be placed beside this grid now; it waits for it to end
  using L = RmsBwdPipeLayout<N, SPLIT, T, W>;
  constexpr int V = L::V, NS = L::NS, CS = L::CS, CPL = L::CPL, WV = L::WV, PIECE = L::PIECE, SLOT = L::SLOT;
  constexpr int GROUPS = WARPS / SPLIT;
  static_assert(WARPS % SPLIT == 0 && (SPLIT == 1 || GROUPS <= 15), "SPLIT divides WARPS; ≤ 15 groups");
  static_assert(DEPTH >= 2, "a ring of at least two slots");
#if __CUDA_ARCH__ < 900
  static_assert(!BULK, "TMA bulk copies need sm_90");
#endif
  extern __shared__ __align__(128) unsigned char smem_raw[];  // [WARPS][DEPTH][SLOT], then [WARPS][DEPTH] mbarriers
  __shared__ float xch[2][WARPS][2];  // per-row partial sums of a group's warps, double-buffered by row parity
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int group = warp / SPLIT, sub = warp - group * SPLIT;
  const int col0 = sub * NS;

  WarpRing<DEPTH, SLOT, BULK> ring{smem_raw + warp * DEPTH * SLOT,
                                   reinterpret_cast<u64*>(smem_raw + WARPS * DEPTH * SLOT) + warp * DEPTH};
  ring.init(lane);

  const CtaRows strip(a.M, group, GROUPS);
  const int rows = strip.n;  // this warp's rows
  const T* const xg = static_cast<const T*>(a.x) + col0;
  const T* const dyg = static_cast<const T*>(a.dy) + col0;
  auto issue = [&](int k) {
    const i64 row = strip.row(k);
    const void* const src[2] = {xg + row * a.x_stride, dyg + row * a.dy_stride};
    ring.template issue<PIECE, 2>(k, k < rows, src, lane);
  };
#pragma unroll
  for (int k = 0; k < DEPTH; ++k) issue(k);

  // The lane's weights, as loaded (16-bit weights stay packed).
  u32 wr[CPL][WV];
#pragma unroll
  for (int i = 0; i < CPL; ++i) {
    const int c = lane + 32 * i;
    if (CS % 32 == 0 || c < CS) {
      const char* wp = static_cast<const char*>(a.w) + static_cast<i64>(col0 + c * V) * sizeof(W);
#pragma unroll
      for (int j = 0; j < WV / 4; ++j) {
        const Vec16 v = load16(wp + 16 * j);
#pragma unroll
        for (int q = 0; q < 4; ++q) wr[i][4 * j + q] = v.w[q];
      }
    }
  }
  float dw[CPL][V];
#pragma unroll
  for (int i = 0; i < CPL; ++i)
#pragma unroll
    for (int e = 0; e < V; ++e) dw[i][e] = 0.f;

  for (int k = 0; k < rows; ++k) {
    ring.wait(k);
    const T* xs = reinterpret_cast<const T*>(ring.slot(k));
    const T* gs = xs + NS;
    float ss = 0.f, dot = 0.f;
#pragma unroll
    for (int i = 0; i < CPL; ++i) {
      const int c = lane + 32 * i;
      if (CS % 32 == 0 || c < CS) {
        const Vec16 x16 = lds16(smem_u32(xs + c * V)), g16 = lds16(smem_u32(gs + c * V));
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float xf = vec_get<T>(x16, e), gf = vec_get<T>(g16, e);
          ss = fmaf(xf, xf, ss);
          dot = fmaf(xf * gf, weight_at<W>(wr[i], e), dot);
        }
      }
    }
    ss = warp_sum(ss);
    dot = warp_sum(dot);
    if constexpr (SPLIT > 1) {
      const int par = k & 1;
      if (lane == 0) {
        xch[par][warp][0] = ss;
        xch[par][warp][1] = dot;
      }
      named_barrier_sync(1 + group, SPLIT * 32);
      ss = xch[par][group * SPLIT][0];
      dot = xch[par][group * SPLIT][1];
#pragma unroll
      for (int q = 1; q < SPLIT; ++q) {
        ss += xch[par][group * SPLIT + q][0];
        dot += xch[par][group * SPLIT + q][1];
      }
    }
    const float rv = 1.0f / sqrtf(ss / static_cast<float>(N) + a.eps);
    // (dot/N)·r first: r³ alone underflows fp32 for rows of rms ≳ 1e13, while the product stays representable.
    const float coef = (dot / static_cast<float>(N)) * rv * rv * rv;
    const i64 row = strip.row(k);
    char* dxr = reinterpret_cast<char*>(static_cast<T*>(a.dx) + row * a.dx_stride + col0);
#pragma unroll
    for (int i = 0; i < CPL; ++i) {
      const int c = lane + 32 * i;
      if (CS % 32 == 0 || c < CS) {
        const Vec16 x16 = lds16(smem_u32(xs + c * V)), g16 = lds16(smem_u32(gs + c * V));
        Vec16 o;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float xf = vec_get<T>(x16, e), gf = vec_get<T>(g16, e);
          vec_set<T>(o, e, rv * gf * weight_at<W>(wr[i], e) - coef * xf);
          dw[i][e] = fmaf(xf * gf, rv, dw[i][e]);
        }
        store16(dxr + c * 16, o);
      }
    }
    ring.release();
    issue(k + DEPTH);
  }
  ring.drain();

  // The groups' dw through shared memory (the ring is idle: every copy issued was consumed), added in group order.
  __syncthreads();
  float* red = reinterpret_cast<float*>(smem_raw);  // [GROUPS][N] fp32 ≤ the ring (DEPTH·2·sizeof(T) ≥ 4)
  static_assert(GROUPS * N * 4 <= WARPS * DEPTH * SLOT, "the dw slices fit the ring");
#pragma unroll
  for (int i = 0; i < CPL; ++i) {
    const int c = lane + 32 * i;
    if (CS % 32 == 0 || c < CS) {
      float4* d = reinterpret_cast<float4*>(red + group * N + col0 + c * V);
#pragma unroll
      for (int e = 0; e < V; e += 4) d[e / 4] = float4{dw[i][e], dw[i][e + 1], dw[i][e + 2], dw[i][e + 3]};
    }
  }
  __syncthreads();
  dw_cta_partial<GROUPS, WARPS * 32, true>(red, N, N, a.partial + static_cast<i64>(blockIdx.x) * N, threadIdx.x);
}

}  // namespace kiln
