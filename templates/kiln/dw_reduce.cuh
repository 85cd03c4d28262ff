// kiln/dw_reduce.cuh — the deterministic weight-gradient reduction every row-wise norm backward shares (rms_norm,
// rms_norm_rope, group_rms_norm_gate, qk_norm_half_rope).
//
// Stage 1 (in each family's backward kernel): a persistent grid; every CTA accumulates dw for its rows in fp32 in a
// fixed order (registers or per-warp shared-memory slices), adds its slices in slice order with dw_cta_partial and
// writes one row partial[blockIdx.x][·]. Stage 2 (dw_reduce_kernel): out[j] = Σ_g partial[g][j] in a fixed order.
// No atomics anywhere: the result depends only on the grid size, never on timing.
#pragma once
#include "kiln/common.cuh"
#include "kiln/dw_reduce_args.h"
#include "kiln/grid_sync.cuh"
#include "kiln/pdl.cuh"

namespace kiln {

// out[k] = Σ_{s < SLICES} red[s·stride + k] for k < n, added in slice order, by the NT threads of the CTA (thread
// index tid). red: shared memory; out: the CTA's row of the partial buffer. With n, stride and both pointers 16-byte
// multiples (VEC4) the accesses are float4.
template <int SLICES, int NT, bool VEC4>
__device__ __forceinline__ void dw_cta_partial(const float* red, int stride, int n, float* out, int tid) {
  if constexpr (VEC4) {
    const float4* r4 = reinterpret_cast<const float4*>(red);
    float4* o4 = reinterpret_cast<float4*>(out);
    const int n4 = n / 4, s4 = stride / 4;
    for (int k = tid; k < n4; k += NT) {
      float4 t = r4[k];
#pragma unroll
      for (int s = 1; s < SLICES; ++s) {
        const float4 u = r4[s * s4 + k];
        t.x += u.x; t.y += u.y; t.z += u.z; t.w += u.w;
      }
      o4[k] = t;
    }
  } else {
    for (int k = tid; k < n; k += NT) {
      float t = red[k];
#pragma unroll
      for (int s = 1; s < SLICES; ++s) t += red[s * stride + k];
      out[k] = t;
    }
  }
}

// Stage 2, one output column j < NOUT, slice ty of 8: Σ over rows g ≡ ty (mod 8) of partial[g][f·NOUT + j] in
// ascending g (and f). COHERENT: the loads bypass L1 (ld.global.cg) — for rows other CTAs of the same grid wrote
// (dw_reduce_fused); the standalone kernel reads rows a completed kernel wrote and uses plain loads.
template <int NOUT, int FOLD, bool COHERENT>
__device__ __forceinline__ float dw_reduce_slice(const float* __restrict__ partial, int G, int j, int ty) {
  constexpr int SLICES = kDwReduceThreads / kDwReduceCols;
  auto ld = [](const float* p) {
    if constexpr (COHERENT) {
      float v;
      asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
      return v;
    } else {
      return *p;
    }
  };
  float s = 0.f;
  int g = ty;
  if constexpr (FOLD == 1) {
    // 16 rows' loads in flight at once, then added in ascending g (the order of the loop below): a slice of 264
    // CTA rows takes 3 L2 round trips instead of 5.
    constexpr int U = 16;
    for (; g + (U - 1) * SLICES < G; g += U * SLICES) {
      float v[U];
#pragma unroll
      for (int u = 0; u < U; ++u) v[u] = ld(partial + static_cast<i64>(g + u * SLICES) * NOUT + j);
#pragma unroll
      for (int u = 0; u < U; ++u) s += v[u];
    }
  }
#pragma unroll 8
  for (; g < G; g += SLICES) {
    const float* row = partial + static_cast<i64>(g) * (FOLD * NOUT);
#pragma unroll
    for (int f = 0; f < FOLD; ++f) s += ld(row + f * NOUT + j);
  }
  return s;
}

// The 8 slice sums of column j (slice[k][tx], k < 8) added in slice order and stored (j < NLO: dw[j], else
// dw_hi[j − NLO]; a null pointer skips).
template <int NOUT, typename DW, int NLO>
__device__ __forceinline__ void dw_reduce_store(const DwReduceArgs& a, const float (*slice)[kDwReduceCols + 1], int j,
                                                int tx) {
  constexpr int SLICES = kDwReduceThreads / kDwReduceCols;
  float t = slice[0][tx];
#pragma unroll
  for (int k = 1; k < SLICES; ++k) t += slice[k][tx];
  if (j < NLO) {
    if (a.dw) static_cast<DW*>(a.dw)[j] = from_float<DW>(t);
  } else if (a.dw_hi) {
    static_cast<DW*>(a.dw_hi)[j - NLO] = from_float<DW>(t);
  }
}

// Stage 2. partial: [G][FOLD·NOUT] fp32 (one row per CTA of stage 1); out[j] = Σ_g Σ_f partial[g][f·NOUT + j].
// A CTA of kDwReduceThreads threads takes kDwReduceCols (16) output columns: slice ty (of 8) sums rows g ≡ ty (mod 8)
// of column tx in ascending g (16 lanes read 64 contiguous bytes of a row), then the 8 slice sums are added in ty
// order. A fixed order: the result does not depend on timing. Output j < NLO goes to dw[j], j ≥ NLO to
// dw_hi[j − NLO] (two weights reduced by one launch); a null output pointer skips its columns. G = 0 writes zeros
// (the gradient of an empty batch). Launched with LaunchDims::pdl: stage 1 calls pdl_launch_dependents as it starts,
// so these CTAs are placed beside it (≈ 4 K registers, < 1 KiB of shared memory each) and wait in pdl_wait until it
// has completed; the sum then costs a few L2 round trips.
template <int NOUT, int FOLD, typename DW, int NLO = NOUT>
__global__ void __launch_bounds__(kDwReduceThreads) dw_reduce_kernel(const DwReduceArgs a) {
  constexpr int COLS = kDwReduceCols, SLICES = kDwReduceThreads / kDwReduceCols;
  __shared__ float slice[SLICES][COLS + 1];
  pdl_wait();  // stage 1 has completed and its partials are visible
  const int tx = threadIdx.x % COLS, ty = threadIdx.x / COLS;
  const int j = blockIdx.x * COLS + tx;
  slice[ty][tx] = j < NOUT ? dw_reduce_slice<NOUT, FOLD, false>(a.partial, a.G, j, ty) : 0.f;
  __syncthreads();
  if (ty == 0 && j < NOUT) dw_reduce_store<NOUT, DW, NLO>(a, slice, j, tx);
}

// Stage 2 folded into stage 1 (a kernel launched cooperatively: LaunchDims::cooperative, so that all its CTAs are
// resident at once). Every thread of every CTA calls it after the CTA's partial row has been written (by any of its
// threads). The CTA arrives on the grid barrier; then the CTAs that own column blocks wait for every CTA's arrival
// and compute them exactly as dw_reduce_kernel does (same slices, same order: the same bits); the others return at
// once. Column block cb (16 columns × 8 slices = 128 threads) goes to CTA cb mod nCTA (linear id over x, y), its
// 128-thread group cb / nCTA (a CTA has NT / 128 groups; NT a multiple of 128; NT / 128 × 544 bytes of static shared
// memory). trace (measurement only, normally null): thread 0 stores clock64 when the barrier has passed (trace[0]) and
// when its column blocks are stored (trace[1]).
// clock64, not moved across the memory operations and barriers around it (measurement).
__device__ __forceinline__ unsigned long long clock_ordered() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(t)::"memory");
  return t;
}

template <int NOUT, int FOLD, typename DW, int NT, int NLO = NOUT>
__device__ __forceinline__ void dw_reduce_fused(const DwReduceArgs& a, unsigned long long* trace = nullptr) {
  static_assert(NT % kDwReduceThreads == 0, "whole 128-thread groups");
  constexpr int COLS = kDwReduceCols, SLICES = kDwReduceThreads / kDwReduceCols, PER = NT / kDwReduceThreads;
  constexpr int NCB = (NOUT + COLS - 1) / COLS;
  const u32 token = grid_barrier_arrive();  // CTA barrier, then a release arrival on the grid barrier
  const int ncta = static_cast<int>(gridDim.x * gridDim.y);
  const int bid = static_cast<int>(blockIdx.y * gridDim.x + blockIdx.x);
  if (bid >= NCB) return;  // no column block here (uniform over the CTA)
  grid_barrier_wait(token);  // every CTA's partial row is visible (acquire), then a CTA barrier
  if (trace && threadIdx.x == 0) trace[0] = clock_ordered();
  const int sub = static_cast<int>(threadIdx.x) / kDwReduceThreads, t = static_cast<int>(threadIdx.x) % kDwReduceThreads;
  const int tx = t % COLS, ty = t / COLS;
  __shared__ float slices[PER][SLICES][COLS + 1];
  float(*slice)[COLS + 1] = slices[sub];
  const int rounds = (NCB - bid + ncta * PER - 1) / (ncta * PER);  // uniform over the CTA
  for (int r = 0; r < rounds; ++r) {
    const int cb = (r * PER + sub) * ncta + bid;
    const int j = cb * COLS + tx;
    if (cb < NCB) slice[ty][tx] = j < NOUT ? dw_reduce_slice<NOUT, FOLD, true>(a.partial, a.G, j, ty) : 0.f;
    __syncthreads();
    if (cb < NCB && ty == 0 && j < NOUT) dw_reduce_store<NOUT, DW, NLO>(a, slice, j, tx);
    __syncthreads();
  }
  if (trace && threadIdx.x == 0) trace[1] = clock_ordered();
}

}  // namespace kiln
