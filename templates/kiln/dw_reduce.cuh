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
  const float* __restrict__ partial = a.partial;
  const int tx = threadIdx.x % COLS, ty = threadIdx.x / COLS;
  const int j = blockIdx.x * COLS + tx;
  float s = 0.f;
  if (j < NOUT) {
    int g = ty;
    if constexpr (FOLD == 1) {
      // 16 rows' loads in flight at once, then added in ascending g (the order of the loop below): a slice of 264
      // CTA rows takes 3 L2 round trips instead of 5.
      constexpr int U = 16;
      for (; g + (U - 1) * SLICES < a.G; g += U * SLICES) {
        float v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) v[u] = partial[static_cast<i64>(g + u * SLICES) * NOUT + j];
#pragma unroll
        for (int u = 0; u < U; ++u) s += v[u];
      }
    }
#pragma unroll 8
    for (; g < a.G; g += SLICES) {
      const float* row = partial + static_cast<i64>(g) * (FOLD * NOUT);
#pragma unroll
      for (int f = 0; f < FOLD; ++f) s += row[f * NOUT + j];
    }
  }
  slice[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && j < NOUT) {
    float t = slice[0][tx];
#pragma unroll
    for (int k = 1; k < SLICES; ++k) t += slice[k][tx];
    if (j < NLO) {
      if (a.dw) static_cast<DW*>(a.dw)[j] = from_float<DW>(t);
    } else if (a.dw_hi) {
      static_cast<DW*>(a.dw_hi)[j - NLO] = from_float<DW>(t);
    }
  }
}

}  // namespace kiln
