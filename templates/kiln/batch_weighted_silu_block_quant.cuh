// kiln/batch_weighted_silu_block_quant.cuh — the batched prob-weighted SiLU + block quant (E experts' rows back to back
// in x; counts [E] on the device). The tile kernel is silu_tile_kernel<…, BATCHED = true, …>; this file adds the
// device-side schedule (no host list of counts, any E) and the deterministic dw reduction of the backward.
#pragma once
#include "kiln/silu_block_quant.cuh"

namespace kiln {

// One CTA of 1024 threads. Pass 1 validates the counts (non-negative, Σ = M or with trailing rows Σ ≤ M, schedule
// fits the workspace); pass 2
// scans them 1024 experts at a time (warp shuffles, then the 32 warp totals) into row starts s_e and token-block
// starts b_e, and each thread writes its expert's ceil(c_e/128) entries {s_e, c_e, i}. Invalid counts: T = 0 (the
// tile kernel writes nothing), status 1.
__global__ void __launch_bounds__(kSiluScheduleThreads) silu_schedule_kernel(const SiluScheduleArgs a) {
  __shared__ long long red_rows[32];
  __shared__ long long red_blocks[32];
  __shared__ int red_neg[32];
  __shared__ long long carry[2];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  pdl_launch_dependents();  // the tile kernel (launched programmatically) runs its prologue meanwhile

  // Pass 1: Σ c_e, Σ ceil(c_e/128), first negative index.
  long long rows = 0, blocks = 0;
  int neg = 0x7fffffff;
  for (int e = tid; e < a.E; e += kSiluScheduleThreads) {
    const int c = a.counts[e];
    if (c < 0) neg = min(neg, e);
    else {
      rows += c;
      blocks += (c + 127) / 128;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    rows += __shfl_xor_sync(0xffffffffu, rows, o);
    blocks += __shfl_xor_sync(0xffffffffu, blocks, o);
    neg = min(neg, __shfl_xor_sync(0xffffffffu, neg, o));
  }
  if (lane == 0) {
    red_rows[warp] = rows;
    red_blocks[warp] = blocks;
    red_neg[warp] = neg;
  }
  __syncthreads();
  if (tid == 0) {
    long long r = 0, b = 0;
    int n = 0x7fffffff;
    for (int w = 0; w < 32; ++w) {
      r += red_rows[w];
      b += red_blocks[w];
      n = min(n, red_neg[w]);
    }
    const bool ok = n == 0x7fffffff && (r == a.M || (a.trailing && r <= a.M)) && b <= a.capacity;
    a.ws[0] = ok ? static_cast<int>(b) : 0;
    a.ws[1] = ok ? 0 : 1;
    a.ws[2] = static_cast<int>(r > 0x7fffffffLL ? 0x7fffffffLL : r);
    a.ws[3] = n == 0x7fffffff ? -1 : n;
    if (a.status) a.status[0] = ok ? 0 : 1;
    carry[0] = ok ? 0 : -1;
    carry[1] = 0;
  }
  __syncthreads();
  if (carry[0] < 0) return;

  // Pass 2: exclusive scans of c_e and ceil(c_e/128), chunk by chunk.
  int4* entries = reinterpret_cast<int4*>(a.ws + 4);
  for (int base = 0; base < a.E; base += kSiluScheduleThreads) {
    const int e = base + tid;
    const int c = e < a.E ? a.counts[e] : 0;
    const int nb = (c + 127) / 128;
    int incl_r = c, incl_b = nb;  // per chunk Σ ≤ M and ≤ capacity: int32
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int ur = __shfl_up_sync(0xffffffffu, incl_r, o), ub = __shfl_up_sync(0xffffffffu, incl_b, o);
      if (lane >= o) {
        incl_r += ur;
        incl_b += ub;
      }
    }
    __syncthreads();  // the previous chunk's reads of red_* are done
    if (lane == 31) {
      red_rows[warp] = incl_r;
      red_blocks[warp] = incl_b;
    }
    __syncthreads();
    long long off_r = carry[0], off_b = carry[1];
    for (int w = 0; w < warp; ++w) {
      off_r += red_rows[w];
      off_b += red_blocks[w];
    }
    const int s_e = static_cast<int>(off_r + incl_r - c), b_e = static_cast<int>(off_b + incl_b - nb);
    for (int i = 0; i < nb; ++i) entries[b_e + i] = make_int4(s_e, c, i, 0);
    __syncthreads();  // everyone has read carry
    if (tid == kSiluScheduleThreads - 1) {
      carry[0] = off_r + incl_r;
      carry[1] = off_b + incl_b;
    }
  }
}

// dw[m] = Σ_j partial[j, m], j in order (a fixed summation order: the result does not depend on the schedule).
template <int NB>
__global__ void __launch_bounds__(256) silu_dw_reduce_kernel(const SiluDwReduceArgs a) {
  pdl_wait();  // launched programmatically after the tile kernel: its partials are complete
  const int m = blockIdx.x * 256 + threadIdx.x;
  if (m >= a.M) return;
  if (a.ws[1] != 0) {
    a.dw[m] = __int_as_float(0x7fffffff);
    return;
  }
  if (m >= a.ws[2]) {  // a trailing row (valid counts: ws[2] = Σ counts ≤ M, exact)
    a.dw[m] = 0.0f;
    return;
  }
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < NB; ++j) s = __fadd_rn(s, a.partial[static_cast<i64>(j) * a.M + m]);
  a.dw[m] = s;
}

}  // namespace kiln
