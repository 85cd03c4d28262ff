// kiln/moe_routing.cuh — MoE top-k routing (forward, backward) and the padded row-id map.
//
// Top-k forward, per token t (one warp; lane l owns EL contiguous experts, see moe_route_kernel):
//   s = softmax(z) or σ(z)                         (kiln_exp below: fixed fp32 operation sequence, CPU-reproducible;
//                                                   the softmax sum: lane sums in expert order, then a 32-lane butterfly)
//   key = s + bias (BIAS) or z (no bias: s is monotone in z, so the selection is the same and exact)
//   grouped (G > 1): group score = sum of the group's two largest keys (largest by ordered bits, so −0 < +0);
//   keep the TG best groups (score desc, group asc)
//   top-K of key over the kept experts, ties → lower expert index
//   p_e = s_e [/ (Σ_sel s + 1e-20), summed in pick order] · scale for selected e, 0 elsewhere
// Backward from dprobs g, recomputing s from the logits and the selection from the routing map:
//   ds_k = scale·g_k (no renorm) or (scale/D)(g_k − Σ_j g_j s_j / D) for selected k, 0 elsewhere
//   dz = s ⊙ (ds − Σ ds·s) (softmax) or ds ⊙ s(1 − s) (sigmoid)
// Row-id map of any routing map, no host sync: one launch where its grid is resident at once (moe_map_fused_kernel,
// below), else three: per-block histograms (map_count) → map_scan (per
// expert: exclusive prefix over blocks, totals) → map_write (expert offsets off_e = Σ_{e'<e} roundup(c_e', P), each
// token's destination off_e + prefix[block][e] + rank of the token among the block's tokens routed to e, the inverse
// index list, padding entries −1). The forward builds the map itself (moe_route → moe_route_map). Integer counts
// only: deterministic by construction.
#pragma once
#include "kiln/common.cuh"
#include "kiln/grid_sync.cuh"
#include "kiln/mbarrier.cuh"
#include "kiln/moe_routing_args.h"
#include "kiln/pdl.cuh"
#include "kiln/ptx.cuh"

namespace kiln {

// exp(x) from a fixed sequence of correctly rounded fp32 operations (x clamped to [−104, 88.75], range reduction
// by n·ln2 in two fma steps, degree-7 Taylor polynomial in Horner form, scaling by 2^n in two exact-exponent
// multiplies), so a CPU reference running the same operations gets the same bits. Max error ≈ 2 ulp; exp(−inf) = 0,
// exp(+inf) = inf, and a NaN argument counts as −104 (result 0), so a NaN logit gets no probability.
__device__ __forceinline__ float kiln_exp(float x) {
  x = fminf(fmaxf(x, -104.0f), 88.75f);
  // rint(x·log2 e) by adding 1.5·2^23 (exact round-to-nearest-even for |x·log2 e| < 2^22), and its integer from the
  // sum's low bits: no conversion instructions.
  const float big = __fadd_rn(__fmul_rn(x, 1.44269504f), 12582912.0f);
  const float n = __fsub_rn(big, 12582912.0f);
  float r = __fmaf_rn(n, -0.693145751953125f, x);
  r = __fmaf_rn(n, -1.42860677e-06f, r);
  float p = 1.98412701e-04f;                 // 1/5040
  p = __fmaf_rn(p, r, 1.38888892e-03f);      // 1/720
  p = __fmaf_rn(p, r, 8.33333377e-03f);      // 1/120
  p = __fmaf_rn(p, r, 4.16666679e-02f);      // 1/24
  p = __fmaf_rn(p, r, 1.66666672e-01f);      // 1/6
  p = __fmaf_rn(p, r, 0.5f);
  p = __fmaf_rn(p, r, 1.0f);
  p = __fmaf_rn(p, r, 1.0f);
  const int ni = __float_as_int(big) - 0x4b400000;
  const int n1 = ni >> 1, n2 = ni - n1;      // both in [−75, 64]: normal powers of two
  return __fmul_rn(__fmul_rn(p, __int_as_float((n1 + 127) << 23)), __int_as_float((n2 + 127) << 23));
}

// 1 + kiln_exp(x), bit for bit, for x < 87 (or NaN), in 7 instructions fewer: below −20 both give exactly 1 (kiln_exp
// < 2^−25 there, as at its own clamp −104 and for NaN), so x is clamped at −20 only; then n ∈ [−29, 126] and p·2^n is a
// normal float, so kiln_exp's two exact power-of-two multiplies equal one integer add into p's exponent field. big's
// bits are 0x4b400000 + n and 0x4b400000 << 23 ≡ 0 (mod 2^32), so the add is (big's bits << 23): one LEA.
__device__ __forceinline__ float kiln_one_plus_exp_lt87(float x) {
  x = fmaxf(x, -20.0f);
  const float big = __fadd_rn(__fmul_rn(x, 1.44269504f), 12582912.0f);
  const float n = __fsub_rn(big, 12582912.0f);
  float r = __fmaf_rn(n, -0.693145751953125f, x);
  r = __fmaf_rn(n, -1.42860677e-06f, r);
  float p = 1.98412701e-04f;
  p = __fmaf_rn(p, r, 1.38888892e-03f);
  p = __fmaf_rn(p, r, 8.33333377e-03f);
  p = __fmaf_rn(p, r, 4.16666679e-02f);
  p = __fmaf_rn(p, r, 1.66666672e-01f);
  p = __fmaf_rn(p, r, 0.5f);
  p = __fmaf_rn(p, r, 1.0f);
  p = __fmaf_rn(p, r, 1.0f);
  return __fadd_rn(1.0f, __int_as_float(__float_as_int(p) + (__float_as_int(big) << 23)));
}

// 1/(1 + e^−z): __frcp_rn is the correctly rounded reciprocal, the same value as an IEEE 1.0f / x.
__device__ __forceinline__ float kiln_sigmoid(float z) { return __frcp_rn(__fadd_rn(1.0f, kiln_exp(-z))); }

// Order-preserving map of a float to u32 (NaN must be sanitized first); 0 is below every float (−inf ↦ 0x007fffff).
__device__ __forceinline__ u32 ordered_bits(float f) {
  const u32 u = __float_as_uint(f);
  return u ^ (static_cast<u32>(static_cast<int>(u) >> 31) | 0x80000000u);  // negative: ~u; else u | sign bit
}

// x / d and roundup(x, d) for x ≥ 0, d ≥ 1 at run time: a shift / mask where d is a power of two (a branch uniform
// over the grid), else the division.
__device__ __forceinline__ int moe_div(int x, int d) {
  return (d & (d - 1)) == 0 ? x >> (__ffs(d) - 1) : x / d;
}
__device__ __forceinline__ int moe_roundup(int x, int d) {
  return (d & (d - 1)) == 0 ? (x + d - 1) & -d : (x + d - 1) / d * d;
}

// a > b (a ≥ b) as 0xffffffff, else 0 (PTX set: a compare without predicates; false if either is NaN).
__device__ __forceinline__ u32 set_gt_u32(float a, float b) {
  u32 d;
  asm("set.gt.u32.f32 %0, %1, %2;" : "=r"(d) : "f"(a), "f"(b));
  return d;
}
__device__ __forceinline__ u32 set_ge_u32(float a, float b) {
  u32 d;
  asm("set.ge.u32.f32 %0, %1, %2;" : "=r"(d) : "f"(a), "f"(b));
  return d;
}

// Fixed-order butterfly sum (the CPU reference replays it lane by lane).
__device__ __forceinline__ float warp_sum_rn(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// rank + how many of the list entries in slots [from, to) are larger than me (the rank's count): slots are read two at
// a time (one 16-byte shared load), so `from` is even and a slot past the list's end holds 0, below every entry.
__device__ __forceinline__ int moe_count_larger(const u64* lst, int from, int to, u64 me, int rank = 0) {
  for (int r = from; r < to; r += 2) {
    const Vec16 pr = lds16(smem_u32(lst + r));
    const u64 x0 = static_cast<u64>(pr.w[1]) << 32 | pr.w[0], x1 = static_cast<u64>(pr.w[3]) << 32 | pr.w[2];
    rank += (x0 > me ? 1 : 0) + (x1 > me ? 1 : 0);
  }
  return rank;
}

// Scores of one token row: z in, s out (NI chunks of 4 per lane, chunk i valid when 128i + 4·lane < E).
template <int E, bool SIGMOID>
__device__ __forceinline__ void moe_scores(const float (&z)[(E + 127) / 128][4], float (&s)[(E + 127) / 128][4],
                                           int lane) {
  constexpr int NI = (E + 127) / 128;
  if constexpr (SIGMOID) {
#pragma unroll
    for (int i = 0; i < NI; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = kiln_sigmoid(z[i][j]);
  } else {
    float m = -__int_as_float(0x7f800000);
#pragma unroll
    for (int i = 0; i < NI; ++i)
      if (128 * i + 4 * lane < E)
#pragma unroll
        for (int j = 0; j < 4; ++j) m = fmaxf(m, z[i][j]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < NI; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[i][j] = (128 * i + 4 * lane < E) ? kiln_exp(__fsub_rn(z[i][j], m)) : 0.0f;
        sum = __fadd_rn(sum, s[i][j]);
      }
    sum = warp_sum_rn(sum);
#pragma unroll
    for (int i = 0; i < NI; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = __fdiv_rn(s[i][j], sum);
  }
}

// ---- top-k backward ---------------------------------------------------------------------------------------------
template <int E, bool SIGMOID, bool RENORM, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) moe_topk_bwd_kernel(const MoeTopkBwdArgs a) {
  constexpr int NI = (E + 127) / 128;
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * WARPS + (threadIdx.x >> 5);
  if (t >= a.T) return;
  const i64 base = static_cast<i64>(t) * E;
  float z[NI][4], s[NI][4], g[NI][4];
  u32 sel = 0;
#pragma unroll
  for (int i = 0; i < NI; ++i) {
    const int e0 = 128 * i + 4 * lane;
    if (e0 < E) {
      const Vec16 zv = load16_stream(a.logits + base + e0), gv = load16_stream(a.dprobs + base + e0);
      const u32 m = *reinterpret_cast<const u32*>(a.routing_map + base + e0);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        z[i][j] = __uint_as_float(zv.w[j]);
        g[i][j] = __uint_as_float(gv.w[j]);
        if ((m >> (8 * j)) & 0xffu) sel |= 1u << (4 * i + j);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) { z[i][j] = -__int_as_float(0x7f800000); g[i][j] = 0.0f; }
    }
  }
  moe_scores<E, SIGMOID>(z, s, lane);
  float ds[NI][4];
  if constexpr (RENORM) {
    float d = 0.0f, c = 0.0f;
#pragma unroll
    for (int i = 0; i < NI; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (sel >> (4 * i + j) & 1u) { d += s[i][j]; c += g[i][j] * s[i][j]; }
    d = warp_sum(d) + 1e-20f;
    c = warp_sum(c);
    const float f = a.scale / d, cd = c / d;
#pragma unroll
    for (int i = 0; i < NI; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) ds[i][j] = (sel >> (4 * i + j) & 1u) ? f * (g[i][j] - cd) : 0.0f;
  } else {
#pragma unroll
    for (int i = 0; i < NI; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) ds[i][j] = (sel >> (4 * i + j) & 1u) ? a.scale * g[i][j] : 0.0f;
  }
  float dot = 0.0f;
  if constexpr (!SIGMOID) {
#pragma unroll
    for (int i = 0; i < NI; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) dot += ds[i][j] * s[i][j];
    dot = warp_sum(dot);
  }
#pragma unroll
  for (int i = 0; i < NI; ++i) {
    const int e0 = 128 * i + 4 * lane;
    if (e0 < E) {
      Vec16 o;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float v = SIGMOID ? ds[i][j] * s[i][j] * (1.0f - s[i][j]) : s[i][j] * (ds[i][j] - dot);
        o.w[j] = __float_as_uint(v);
      }
      store16(a.dlogits + base + e0, o);
    }
  }
}

// ---- row-id map -------------------------------------------------------------------------------------------------
// Four routing flags (nonzero = routed) of experts e0 … e0+3 of one row, as bits 0..3.
template <typename MapT>
__device__ __forceinline__ u32 load_flags4(const void* map, i64 off) {
  if constexpr (sizeof(MapT) == 1) {
    const u32 w = *reinterpret_cast<const u32*>(static_cast<const u8*>(map) + off);
    return ((w & 0xffu) != 0) | (((w >> 8) & 0xffu) != 0) << 1 | (((w >> 16) & 0xffu) != 0) << 2 |
           ((w >> 24) != 0) << 3;
  } else {
    const Vec16 v = load16(static_cast<const int*>(map) + off);
    return (v.w[0] != 0) | (v.w[1] != 0) << 1 | (v.w[2] != 0) << 2 | (v.w[3] != 0) << 3;
  }
}

// Per-block histograms of an arbitrary routing map (u8 or i32). CTA: 8 warps over one 32-token block.
template <int E, typename MapT>
__global__ void __launch_bounds__(256) moe_map_count_kernel(const MoeMapCountArgs a) {
  constexpr int NI = (E + 127) / 128;
  __shared__ int hist[E];
  for (int e = threadIdx.x; e < E; e += 256) hist[e] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int k = 0; k < kMoeMapBlockTokens / 8; ++k) {
    const int t = blockIdx.x * kMoeMapBlockTokens + warp * (kMoeMapBlockTokens / 8) + k;
    if (t >= a.T) break;
    u32 fl = 0;  // bit 4i + j: expert 128i + 4·lane + j
#pragma unroll
    for (int i = 0; i < NI; ++i) {
      const int e0 = 128 * i + 4 * lane;
      if (e0 < E) fl |= load_flags4<MapT>(a.routing_map, static_cast<i64>(t) * E + e0) << (4 * i);
    }
    for (; fl; fl &= fl - 1u) {
      const int b = __ffs(fl) - 1;
      atomicAdd(&hist[128 * (b >> 2) + 4 * lane + (b & 3)], 1);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += 256) a.hist[static_cast<i64>(blockIdx.x) * E + e] = hist[e];
  pdl_launch_dependents();
}

// Per expert: exclusive prefix of the block histograms (in place) and the total. CTA: 32 experts (lanes) × 32
// slices of the blocks (warps); grid ceil(E/32).
template <int E>
__global__ void __launch_bounds__(1024) moe_map_scan_kernel(const MoeMapScanArgs a) {
  __shared__ int part[32][33];
  pdl_wait();  // launched with LaunchDims::pdl after the histogram kernel
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int e = blockIdx.x * 32 + lane;
  const int chunk = (a.nblocks + 31) / 32;
  const int b0 = min(a.nblocks, w * chunk), b1 = min(a.nblocks, b0 + chunk);
  int sum = 0;
  if (e < E) {
#pragma unroll 8
    for (int b = b0; b < b1; ++b) sum += a.hist[static_cast<i64>(b) * E + e];
  }
  part[w][lane] = sum;
  __syncthreads();
  {
    // Warp w scans expert blockIdx.x·32 + w over the 32 slices (lane = slice): 5 shuffles, all warps at once.
    const int x = part[lane][w];
    const int inc = warp_inclusive_scan(x);
    part[lane][w] = inc - x;
    const int ew = blockIdx.x * 32 + w;
    if (lane == 31 && ew < E) a.counts[ew] = inc;
  }
  __syncthreads();
  int run = part[w][lane];
  if (e < E)
    for (int b = b0; b < b1; b += 8) {
      // Eight counts loaded together, then their prefixes stored (no load waits behind a store to the same array).
      int v[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = b + k < b1 ? a.hist[static_cast<i64>(b + k) * E + e] : 0;
#pragma unroll
      for (int k = 0; k < 8; ++k)
        if (b + k < b1) {
          a.hist[static_cast<i64>(b + k) * E + e] = run;
          run += v[k];
        }
    }
  pdl_launch_dependents();
}

__device__ __forceinline__ int block_exclusive_scan256(int v, int* warp_tot, int& total) {
  return block_exclusive_scan<256>(v, warp_tot, total);
}

// Expert e's outputs of the padded map beside its base (off: its offset, c: its tokens, pc: c rounded up to the
// multiple P), by the CTA of index blk: CTA 0 writes its count (unless `counts` is null), padded count and offset; the
// CTA e % grid writes −1 to the inverse list's entries of e's padding rows (one CTA per expert, round robin).
__device__ __forceinline__ void moe_expert_outputs(int e, int off, int c, int pc, int blk, int* counts, int* padded_counts,
                                                   int* offsets, int* row_id_indices, int num_out) {
  if (blk == 0) {
    if (counts) counts[e] = c;
    if (padded_counts) padded_counts[e] = pc;
    if (offsets) offsets[e] = off;
  }
  if (row_id_indices && e % gridDim.x == blk)
    for (int r = off + c; r < off + pc && r < num_out; ++r) row_id_indices[r] = -1;
}
// After every expert's: the end offset offsets[E] = total (CTA 0) and −1 in the inverse list past the total (its
// entries round robin over the grid's CTAs of NTH threads).
template <int NTH>
__device__ __forceinline__ void moe_map_outputs_tail(int E, int total, int blk, int* offsets, int* row_id_indices,
                                                     int num_out) {
  if (blk == 0 && threadIdx.x == 0 && offsets) offsets[E] = total;
  if (row_id_indices)
    for (i64 r = total + static_cast<i64>(blk) * NTH + threadIdx.x; r < num_out; r += static_cast<i64>(gridDim.x) * NTH)
      row_id_indices[r] = -1;
}

// Destinations. CTA: 8 warps over one 32-token block (4 tokens per warp).
template <int E, typename MapT>
__global__ void __launch_bounds__(256) moe_map_write_kernel(const MoeMapWriteArgs a) {
  constexpr int NI = (E + 127) / 128;
  constexpr int EPT = (E + 255) / 256;  // experts per thread in the offset scan
  constexpr int TPW = kMoeMapBlockTokens / 8;
  __shared__ int base[E];
  constexpr int W = kMoeMapBlockTokens / 32;  // mask words per expert
  __shared__ u32 mask[E][W];
  __shared__ int warp_tot[8];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int P = a.multiple_of;
  const int block = blockIdx.x;
  pdl_wait();  // launched with LaunchDims::pdl after the scan

  // Every load the CTA needs is issued first: the warp's routing flags, the counts, the block's prefixes.
  u32 f[TPW][NI];
#pragma unroll
  for (int k = 0; k < TPW; ++k) {
    const int t = block * kMoeMapBlockTokens + warp * TPW + k;
#pragma unroll
    for (int i = 0; i < NI; ++i) {
      const int e0 = 128 * i + 4 * lane;
      f[k][i] = (t < a.T && e0 < E) ? load_flags4<MapT>(a.routing_map, static_cast<i64>(t) * E + e0) : 0u;
    }
  }
  int pre[EPT];
#pragma unroll
  for (int k = 0; k < EPT; ++k) {
    const int e = threadIdx.x * EPT + k;
    pre[k] = (e < E && block * kMoeMapBlockTokens < a.T) ? a.prefix[static_cast<i64>(block) * E + e] : 0;
  }

  // Expert offsets: exclusive scan of roundup(count, P) over experts.
  int c[EPT], pc[EPT], local = 0;
#pragma unroll
  for (int k = 0; k < EPT; ++k) {
    const int e = threadIdx.x * EPT + k;
    c[k] = e < E ? a.counts[e] : 0;
    pc[k] = (c[k] + P - 1) / P * P;
    local += pc[k];
  }
  int total;
  int off = block_exclusive_scan256(local, warp_tot, total);
#pragma unroll
  for (int k = 0; k < EPT; ++k) {
    const int e = threadIdx.x * EPT + k;
    if (e < E) {
      base[e] = off + pre[k];
#pragma unroll
      for (int w = 0; w < W; ++w) mask[e][w] = 0u;
      moe_expert_outputs(e, off, c[k], pc[k], block, nullptr, a.padded_counts, a.offsets, a.row_id_indices, a.num_out);
    }
    off += pc[k];
  }
  moe_map_outputs_tail<256>(E, total, block, a.offsets, a.row_id_indices, a.num_out);
  __syncthreads();

  // Each lane's flags of a token as one bitmask (bit 4i + j: expert 128i + 4·lane + j): the loops below visit the set
  // flags only (about one per lane per token), not every position.
  u32 fl[TPW];
#pragma unroll
  for (int k = 0; k < TPW; ++k) {
    fl[k] = 0;
#pragma unroll
    for (int i = 0; i < NI; ++i) fl[k] |= f[k][i] << (4 * i);
  }
  // The block's token sets per expert (flags loaded at the start, with the counts and prefixes).
#pragma unroll
  for (int k = 0; k < TPW; ++k) {
    const int lt = warp * TPW + k;
    for (u32 m = fl[k]; m; m &= m - 1u) {
      const int b = __ffs(m) - 1;
      atomicOr(&mask[128 * (b >> 2) + 4 * lane + (b & 3)][lt >> 5], 1u << (lt & 31));
    }
  }
  __syncthreads();

  // Destinations: −1 over the token's row, then each routed entry (the same thread: in order).
#pragma unroll
  for (int k = 0; k < TPW; ++k) {
    const int lt = warp * TPW + k, t = block * kMoeMapBlockTokens + lt;
    if (t >= a.T) break;
    const u32 below = (1u << (lt & 31)) - 1u;
    int* rr = a.row_id_map + static_cast<i64>(t) * E;
    const Vec16 m1{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}};
#pragma unroll
    for (int i = 0; i < NI; ++i)
      if (128 * i + 4 * lane < E) store16(rr + 128 * i + 4 * lane, m1);
    for (u32 m = fl[k]; m; m &= m - 1u) {
      const int b = __ffs(m) - 1, e = 128 * (b >> 2) + 4 * lane + (b & 3);
      int rank = 0;
#pragma unroll
      for (int w = 0; w < W; ++w)
        rank += w < (lt >> 5) ? __popc(mask[e][w]) : w == (lt >> 5) ? __popc(mask[e][w] & below) : 0;
      const int row = base[e] + rank;
      rr[e] = row;
      if (a.row_id_indices && row < a.num_out) a.row_id_indices[row] = t;
    }
  }
}

// The expert bases of chunk c (a CTA of NTH threads; E ≤ kMoeTopkMaxExperts): counts = Σ superblock rows, offsets
// off_e = exclusive scan of roundup(count_e, P) over experts, base[e] = off_e + the tokens of the chunks before c
// routed to e (the superblock rows before c's superblock, then the chunk rows of c's superblock before c: ≤ 16 of
// each at T = 8192, loaded together, one memory latency). Chunk 0 writes counts, padded
// counts and offsets; the CTAs together write the inverse list's −1 entries (padding rows, round robin over experts,
// and the tail up to num_out). The rows are read through L2 (ld.cg): in the fused forward other CTAs of the same
// launch wrote them. base [E] and warp_tot [NTH / 32] in shared memory; ends with __syncthreads (base complete).
// after_loads(v, 0): called by every thread once its rows are summed (v depends on them; a trace stamp); after_loads(v,
// 1): once the block scan is done (v: its result).
struct MoeNoStamp {
  __device__ __forceinline__ void operator()(int, int) const {}
};
template <int E, int NTH, class AfterLoads, bool WARPPAD = false, bool FASTDIV = false>
__device__ __forceinline__ void moe_chunk_bases_finish(const MoeChunkMap& m, int c,
                                                       const int (&tot)[(E + NTH - 1) / NTH],
                                                       const int (&pre)[(E + NTH - 1) / NTH], int* base, int* warp_tot,
                                                       AfterLoads after_loads);
// (FASTDIV: moe_div / moe_roundup for the runtime divisors; the same values)
// moe_chunk_bases' loads: each thread's totals and prefixes of its EPT experts (the rows summed).
template <int E, int NTH, bool FASTDIV = false>
__device__ __forceinline__ void moe_chunk_rows(const MoeChunkMap& m, int c, int (&tot)[(E + NTH - 1) / NTH],
                                               int (&pre)[(E + NTH - 1) / NTH]) {
  constexpr int EPT = (E + NTH - 1) / NTH;  // experts per thread (contiguous: the scan's order)
  constexpr int B = 16;
  const int sb = FASTDIV ? moe_div(c, m.super_chunks) : c / m.super_chunks;
  const int nsuper = FASTDIV ? moe_div(m.nchunks + m.super_chunks - 1, m.super_chunks)
                             : (m.nchunks + m.super_chunks - 1) / m.super_chunks;
  const int ncr = c - sb * m.super_chunks;  // chunk rows sb·SC … c − 1
#pragma unroll
  for (int k = 0; k < EPT; ++k) {
    tot[k] = pre[k] = 0;
    const int e = threadIdx.x * EPT + k;
    if (e >= E) continue;  // whole warps when E ≥ 32·(warps with experts): they skip the loads
    // Superblock and chunk rows in batches of B each, both batches in flight together; a row is one load at a
    // constant offset from the batch's pointer.
    const int* sp = m.super + e;
    const int* cp = m.chunk_counts + static_cast<i64>(sb) * m.super_chunks * E + e;
#pragma unroll 1
    for (int rb = 0; rb < nsuper || rb < ncr; rb += B) {
      const int ns = nsuper - rb, nc = ncr - rb, nb = sb - rb;
      const int* sq = sp + static_cast<i64>(rb) * E;
      const int* cq = cp + static_cast<i64>(rb) * E;
      int vs[B], vc[B];
#pragma unroll
      for (int j = 0; j < B; ++j) {
        vs[j] = j < ns ? __ldcg(sq + j * E) : 0;
        vc[j] = j < nc ? __ldcg(cq + j * E) : 0;
      }
#pragma unroll
      for (int j = 0; j < B; ++j) {
        tot[k] += vs[j];
        pre[k] += (j < nb ? vs[j] : 0) + vc[j];
      }
    }
  }
}
template <int E, int NTH, class AfterLoads = MoeNoStamp, bool WARPPAD = false, bool FASTDIV = false>
__device__ __forceinline__ void moe_chunk_bases(const MoeChunkMap& m, int c, int* base, int* warp_tot,
                                                AfterLoads after_loads = {}) {
  constexpr int EPT = (E + NTH - 1) / NTH;
  int tot[EPT], pre[EPT];
  moe_chunk_rows<E, NTH, FASTDIV>(m, c, tot, pre);
  moe_chunk_bases_finish<E, NTH, AfterLoads, WARPPAD, FASTDIV>(m, c, tot, pre, base, warp_tot, after_loads);
}

// The counts of a thread's EPT experts padded to the map's multiple P (pc); returns their sum.
template <int EPT, bool FASTDIV>
__device__ __forceinline__ int moe_padded_counts(int P, const int (&tot)[EPT], int (&pc)[EPT]) {
  int local = 0;
#pragma unroll
  for (int k = 0; k < EPT; ++k) {
    pc[k] = FASTDIV ? moe_roundup(tot[k], P) : (tot[k] + P - 1) / P * P;
    local += pc[k];
  }
  return local;
}

// The per-expert outputs of a thread's EPT experts from `off`, the padded offset of its first one (counts, offsets,
// the padding rows of this CTA's experts with WARPPAD), then the map's tail; each(e, k, o) runs first for every expert
// e < E (its k and padded offset o).
template <int E, int NTH, bool WARPPAD, bool FASTDIV, class Each>
__device__ __forceinline__ void moe_chunk_outputs(const MoeChunkMap& m, int c, const int (&tot)[(E + NTH - 1) / NTH],
                                                  const int (&pc)[(E + NTH - 1) / NTH], int off, int total,
                                                  Each each) {
  constexpr int EPT = (E + NTH - 1) / NTH;
#pragma unroll
  for (int k = 0; k < EPT; ++k) {
    const int e = threadIdx.x * EPT + k;
    if (e < E) {
      each(e, k, off);
      moe_expert_outputs(e, off, tot[k], pc[k], c, m.counts, m.padded_counts, m.offsets,
                         WARPPAD ? nullptr : m.row_id_indices, m.num_out);
    }
    if constexpr (WARPPAD) {
      // The padding rows of this CTA's experts (e % grid == c), a lane a row (k is uniform over the warp).
      if (m.row_id_indices) {
        // (FASTDIV: with at least E CTAs, e % grid = e)
        u32 mm = __ballot_sync(0xffffffffu, e < E && (FASTDIV && gridDim.x >= E ? e : e % gridDim.x) == c);
        while (mm) {
          const int src = __ffs(mm) - 1;
          mm &= mm - 1u;
          const int r0 = __shfl_sync(0xffffffffu, off + tot[k], src), r1 = __shfl_sync(0xffffffffu, off + pc[k], src);
          for (int r = r0 + (threadIdx.x & 31); r < r1 && r < m.num_out; r += 32) m.row_id_indices[r] = -1;
        }
      }
    }
    off += pc[k];
  }
  moe_map_outputs_tail<NTH>(E, total, c, m.offsets, m.row_id_indices, m.num_out);
}

// moe_chunk_bases' second half, from each thread's totals and prefixes of its EPT experts (the rows summed).
template <int E, int NTH, class AfterLoads, bool WARPPAD, bool FASTDIV>
__device__ __forceinline__ void moe_chunk_bases_finish(const MoeChunkMap& m, int c,
                                                       const int (&tot)[(E + NTH - 1) / NTH],
                                                       const int (&pre)[(E + NTH - 1) / NTH], int* base, int* warp_tot,
                                                       AfterLoads after_loads) {
  constexpr int EPT = (E + NTH - 1) / NTH;
  int pc[EPT];
  const int local = moe_padded_counts<EPT, FASTDIV>(m.multiple_of, tot, pc);
  after_loads(local + pre[0], 0);  // (a trace stamp that waits for the loaded rows: TRACE of moe_route_run_kernel)
  int total;
  // Only the first ceil(E / EPT / 32) warps hold experts (the others add 0).
  int off = block_exclusive_scan<NTH, ((E + EPT - 1) / EPT + 31) / 32>(local, warp_tot, total);
  after_loads(off, 1);
  moe_chunk_outputs<E, NTH, WARPPAD, FASTDIV>(m, c, tot, pc, off, total,
                                              [&](int e, int k, int o) { base[e] = o + pre[k]; });
  __syncthreads();  // base[]
}

// EARLYPUT (moe_routing_args.h kMoeRunEarlyPut): moe_chunk_bases_finish with the routed rows put right after the
// block scan's one CTA barrier and no barrier after the outputs. Before that barrier each expert's thread stores its
// base less the totals of the warps before its own — its warp-exclusive prefix of the padded counts plus its chunk
// prefix — into part[e]; after it put(base_of) runs, where base_of(e) = part[e] + the totals of the warps before e's:
// the same integer as moe_chunk_bases' base[e]. Then the outputs, as moe_chunk_bases_finish writes them.
template <int E, int NTH, class AfterLoads, bool WARPPAD, bool FASTDIV, class Put>
__device__ __forceinline__ void moe_chunk_bases_put(const MoeChunkMap& m, int c, const int (&tot)[(E + NTH - 1) / NTH],
                                                    const int (&pre)[(E + NTH - 1) / NTH], int* part, int* warp_tot,
                                                    AfterLoads after_loads, Put put) {
  constexpr int EPT = (E + NTH - 1) / NTH;
  constexpr int NWU = ((E + EPT - 1) / EPT + 31) / 32;  // the warps that hold experts
  int pc[EPT];
  const int local = moe_padded_counts<EPT, FASTDIV>(m.multiple_of, tot, pc);
  after_loads(local + pre[0], 0);
  const int w = threadIdx.x >> 5;
  const int inc = warp_inclusive_scan(local);
  if ((threadIdx.x & 31) == 31) warp_tot[w] = inc;
  {
    int o = inc - local;
#pragma unroll
    for (int k = 0; k < EPT; ++k) {
      const int e = threadIdx.x * EPT + k;
      if (e < E) part[e] = o + pre[k];
      o += pc[k];
    }
  }
  __syncthreads();  // (warp_tot, part)
  int wt[NWU], before = 0, total = 0;
#pragma unroll
  for (int k = 0; k < NWU; ++k) {
    wt[k] = warp_tot[k];
    if (k < w) before += wt[k];
    total += wt[k];
  }
  int off = before + inc - local;
  after_loads(off, 1);
  put([&](int e) {
    const int we = (e / EPT) >> 5;
    int b = part[e];
#pragma unroll
    for (int k = 0; k < NWU - 1; ++k) b += k < we ? wt[k] : 0;
    return b;
  });
  moe_chunk_outputs<E, NTH, WARPPAD, FASTDIV>(m, c, tot, pc, off, total, [](int, int, int) {});
}

// The fused forward's grid-wide arrival (the whole grid is resident: the host checks): one thread spins until the
// counter, which every CTA increments with release semantics once its counts are out, reaches the grid's CTAs (acquire
// loads at GPU scope, SLEEP ns apart); a wait that never ends traps instead of hanging.
template <int SLEEP>
__device__ __forceinline__ void moe_wait_arrivals(const unsigned* arrive) {
  unsigned n, spins = 0;
  for (;;) {
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(n) : "l"(arrive) : "memory");
    if (n >= gridDim.x) break;
    __nanosleep(SLEEP);
    if (++spins == (1u << 25)) __trap();
  }
}

// PERSIST: the call's half of the stream's superblock rows, the arrival word's top bit when the call starts (a relaxed
// load by one thread, published to the CTA through shared memory and a later CTA barrier).
__device__ __forceinline__ u32 moe_persist_parity(const unsigned* arrive) {
  u32 w;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(w) : "l"(arrive) : "memory");
  return w >> 31;
}
// PERSIST (moe_routing_args.h kMoeRunPersist): the other half of the stream's superblock rows (`half` ints at
// `other`), zeroed whole for the next call on the stream (the previous call used it, perhaps with more superblock
// rows than this one; it has completed) by 16-byte stores over the grid's NTH-thread CTAs.
template <int NTH>
__device__ __forceinline__ void moe_persist_zero_half(int* other, int half) {
  for (int i = 4 * (blockIdx.x * NTH + threadIdx.x); i < half; i += 4 * gridDim.x * NTH)
    store16(other + i, Vec16{{0u, 0u, 0u, 0u}});
}

// One routed entry of the map: row_id_map[t][e] = row, and the inverse index.
__device__ __forceinline__ void moe_put_row(const MoeChunkMap& m, int E, i64 t, int e, int row) {
  m.row_id_map[t * E + e] = row;
  if (m.row_id_indices && row < m.num_out) m.row_id_indices[row] = static_cast<int>(t);
}

// ---- row-id map in one launch ------------------------------------------------------------------------------------
// moe_map_fused_kernel (the whole grid resident at once — the host checks): CTA c owns the tokens [c·CT, c·CT + CT)
// (CT = a.chunk_tokens, a multiple of 32). Its 8 warps load their tokens' routing flags (warp w: tokens w·CT/8 …, four
// tokens' loads in flight at a time) and record them as per-expert token masks in shared memory (bit lt of
// mask[e][lt / 32]: token lt of the chunk is routed to e) and per-token lane flags; the CTA writes its chunk row of
// counts and adds them into its superblock row; then a grid-wide arrival, moe_chunk_bases (the expert offsets, this
// chunk's prefix, the counts / padded counts / offsets and the inverse list's −1 entries) and each routed entry's row
// = base[e] + the tokens of the chunk before it in e's mask. The CTA's rows of row_id_map are set to −1 before its
// arrival, or (LATE) after it, while it waits for the others. The same rows as the three-kernel path (map_count →
// map_scan → map_write): integer counts, deterministic.
// OPT (ops/moe_routing.cpp map_fused's `load` bits): 1 PERSIST — the arrival word and the superblock rows are the
// stream's (a.persist_half ints a half; the CTA-run route kernel's protocol, moe_routing_args.h kMoeRunPersist): no
// route_zero before the launch; the call adds into the half the word's top bit names at its start, zeroes the other
// half while it waits, and the self-resetting count (CTA 0 adds 2^31 − (n − 1), the others 1) flips the top bit once
// every CTA arrived. Without it the kernel runs behind moe_route_zero (PDL), which zeroes the rows and the word.
// (Session 18 also measured the −1 rows by bulk async copies from a block of −1 in shared memory, the route kernel's
// FILLTMA: +0.6 µs, removed.)
// Dynamic shared memory (fixed for every CT ≤ kMoeMapFusedMaxChunk): mask [E][CTmax/32] u32, lane flags [CTmax][32]
// u32, base [E], warp totals [8], parity [8].
// V (measurement only, bench rows moe_make_row_id_map_cfg): 1 no −1 fill, 2 no wait for the other CTAs, 4 no bases
// and puts after the arrival, 16 no puts (the map is then wrong); 64 TRACE: thread 0 stamps its phases into a.trace
// (kMoeMapTraceSlots a CTA; same outputs).
template <int E, typename MapT, bool LATE, int OPT = 0, int V = 0>
__global__ void __launch_bounds__(256) moe_map_fused_kernel(const MoeMapFusedArgs a) {
  constexpr int NI = (E + 127) / 128;
  constexpr int MWMAX = kMoeMapFusedMaxChunk / 32;
  constexpr bool PERSIST = (OPT & 1) != 0;
  static_assert(NI <= 8, "a lane's flags of a token: 4 bits per 128 experts in one u32");
  extern __shared__ __align__(16) int moe_smem[];
  u32* const mask = reinterpret_cast<u32*>(moe_smem);  // [E][MWMAX]
  u32* const lf = mask + E * MWMAX;                      // [CTmax][32]
  int* const base = reinterpret_cast<int*>(lf + kMoeMapFusedMaxChunk * 32);
  int* const warp_tot = base + E;
  u32* const misc = reinterpret_cast<u32*>(warp_tot + 8);  // [0]: the parity (PERSIST)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int CT = a.chunk_tokens, MW = CT >> 5, tpw = CT >> 3;  // (tpw: a multiple of 4)
  const int c = blockIdx.x;
  const i64 t0 = static_cast<i64>(c) * CT;
  const int nt = static_cast<int>(min(static_cast<i64>(CT), a.T - t0));
  auto stamp = [&](int slot) {
    if constexpr ((V & 64) != 0) {
      if (threadIdx.x == 0) {
        u64 ns;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns)::"memory");
        a.trace[static_cast<i64>(c) * kMoeMapTraceSlots + slot] = ns;
      }
    }
  };
  stamp(0);
  if (threadIdx.x == 0) {
    if constexpr ((V & 64) != 0) {
      u32 sm;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
      a.trace[static_cast<i64>(c) * kMoeMapTraceSlots + 6] = sm;
    }
    if constexpr (PERSIST) {
      misc[0] = moe_persist_parity(a.arrive);
    }
  }
  for (int i = threadIdx.x; i < E * MWMAX; i += 256) mask[i] = 0u;
  __syncthreads();

  for (int k0 = 0; k0 < tpw; k0 += 4) {
    u32 f[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int lt = warp * tpw + k0 + j;
      f[j] = 0u;
#pragma unroll
      for (int i = 0; i < NI; ++i) {
        const int e0 = 128 * i + 4 * lane;
        if (lt < nt && e0 < E) f[j] |= load_flags4<MapT>(a.routing_map, (t0 + lt) * E + e0) << (4 * i);
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int lt = warp * tpw + k0 + j;
      lf[lt * 32 + lane] = f[j];
      for (u32 m = f[j]; m; m &= m - 1u) {
        const int b = __ffs(m) - 1;
        atomicOr(&mask[(128 * (b >> 2) + 4 * lane + (b & 3)) * MWMAX + (lt >> 5)], 1u << (lt & 31));
      }
    }
  }
  int* const rr = a.map.row_id_map + t0 * E;
  auto fill_rows = [&] {
    if constexpr ((V & 1) != 0) return;
    const Vec16 m1{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}};
    for (int q = threadIdx.x; q < nt * (E / 4); q += 256) store16(rr + 4 * q, m1);
  };
  if constexpr (!LATE) fill_rows();
  __syncthreads();  // (mask, parity)
  stamp(1);

  const u32 par = PERSIST ? misc[0] : 0u;
  int* const superp = a.super + (PERSIST ? static_cast<i64>(par) * a.persist_half : 0);
  if constexpr (!PERSIST) pdl_wait();  // moe_route_zero has zeroed the superblock rows and the arrival word
  for (int e = threadIdx.x; e < E; e += 256) {
    int n = 0;
    for (int w = 0; w < MW; ++w) n += __popc(mask[e * MWMAX + w]);
    a.chunk_counts[static_cast<i64>(c) * E + e] = n;
    if (n) atomicAdd(&superp[static_cast<i64>(c / a.map.super_chunks) * E + e], n);
  }
  __syncthreads();
  stamp(2);
  // Grid-wide arrival: the CTA's count stores and atomics (ordered before it by the barrier), then one release add;
  // an acquire spin (a wait that never ends traps).
  u32 tok = 0;
  if (threadIdx.x == 0) {
    if constexpr (PERSIST) tok = grid_count_arrive(a.arrive);
    else asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(a.arrive) : "memory");
  }
  if constexpr (PERSIST) moe_persist_zero_half<256>(a.super + static_cast<i64>(par ^ 1u) * a.persist_half, a.persist_half);
  if constexpr (LATE) fill_rows();
  if (!(V & 2) && threadIdx.x == 0) {
    if constexpr (PERSIST) grid_count_wait(a.arrive, tok);
    else moe_wait_arrivals<64>(a.arrive);
  }
  __syncthreads();
  stamp(3);
  if constexpr ((V & 4) != 0) return;
  {
    MoeChunkMap cm = a.map;
    cm.super = superp;
    moe_chunk_bases<E, 256>(cm, c, base, warp_tot);
  }
  stamp(4);
  if constexpr ((V & 16) != 0) return;

  // The routed entries over the −1 rows (ordered by the barriers in between): the warp's tokens, a lane's flags each.
  for (int k = 0; k < tpw; ++k) {
    const int lt = warp * tpw + k;
    if (lt >= nt) break;
    const u32 below = (1u << (lt & 31)) - 1u;
    for (u32 m = lf[lt * 32 + lane]; m; m &= m - 1u) {
      const int b = __ffs(m) - 1, e = 128 * (b >> 2) + 4 * lane + (b & 3);
      const u32* const me = mask + e * MWMAX;
      int rank = __popc(me[lt >> 5] & below);
      for (int w = 0; w < (lt >> 5); ++w) rank += __popc(me[w]);
      moe_put_row(a.map, E, t0 + lt, e, base[e] + rank);
    }
  }
  if constexpr ((V & 64) != 0) {
    __syncthreads();
    stamp(5);
  }
}

// ---- top-k forward ----------------------------------------------------------------------------------------------
// Three launches chained by programmatic dependent launch (kiln/pdl.cuh), no host sync, integer counts only:
//   moe_route_zero  zeroes the superblock count rows (map) or tokens_per_expert (no map);
//   moe_route       one warp per token (tokens_per_warp tokens in sequence, the next token's logits loaded while the
//                   current one is routed); lane l owns the EL contiguous experts l·EL … l·EL + EL − 1. Writes probs,
//                   the routing map and (map, fill = 0) the −1 rows of row_id_map; counts the CTA's chunk of tokens
//                   per expert and adds them into the superblock row (map) or tokens_per_expert (no map); with the
//                   map also each pick's record (expert, rank among the chunk's tokens routed to that expert);
//   moe_route_map   (map only) one CTA per chunk: counts = Σ superblock rows, offsets (exclusive scan of the padded
//                   counts), the chunk's prefix (its superblock's predecessors + ≤ super_chunks − 1 chunk rows), then
//                   each record's row of row_id_map and the inverse index list (fill = 1: it writes the whole rows).
// Fused (fill = 3 / 4, where the whole grid is resident at once): moe_route itself does moe_route_map's work for its
// chunk after a grid-wide arrival counter (zeroed by moe_route_zero) says every chunk's counts are in, from the
// records in its shared memory: two launches, no records through global memory.
//
// Selection in moe_route: each lane keeps its two best live (key, expert, score) in (key desc, expert asc) order; a
// pick is the warp's maximum key over the lanes' heads (redux.sync), the lowest lane holding it (one ballot: lanes own
// ascending expert ranges, a head is its lane's lowest expert among equal keys) wins and pops its head. A lane whose
// list runs dry refills it from its live experts below its last pick (a rare branch). Ties therefore go to the lower
// expert index, exactly as K rounds of argmax over (key, −e).

__global__ void __launch_bounds__(256) moe_route_zero_kernel(const MoeZeroArgs a) {
  pdl_launch_dependents();  // moe_route starts at once; it waits for this kernel before its first atomic
  for (int i = blockIdx.x * 256 + threadIdx.x; i < a.n; i += gridDim.x * 256) a.p[i] = 0;
}

template <bool NARROW> struct MoeLaneMask { using type = unsigned long long; };
template <> struct MoeLaneMask<true> { using type = u32; };

// Inverse of ordered_bits (0 ↦ NaN: never a real key).
__device__ __forceinline__ float ordered_float(u32 o) {
  return __uint_as_float(o ^ (~static_cast<u32>(static_cast<int>(o) >> 31) | 0x80000000u));
}

// Dynamic shared memory: cnt [W][E] int (per-warp expert counts, then their exclusive prefix over warps), the tokens'
// rows [W][tokens_per_warp][32·EL] (the scores),
// picks [W][tokens_per_warp][K] (expert int, score float), and with the map the chunk's records [W·tokens_per_warp][K]
// u32.
// EL (experts per lane, a multiple of 4 with 32·EL ≥ E) and the group layout are chosen by the host
// (ops/moe_routing.cpp lane_experts): groups either span SPAN = GS/EL whole lanes or a lane holds EL/GS whole groups.
// FUSE (map): the map is written by this launch — after its counts every CTA arrives at a grid-wide
// counter, waits for all (the host launches it only when the whole grid is resident at once), then writes its
// chunk's rows of row_id_map from the records in shared memory (moe_chunk_bases); no moe_route_map launch. FILL: the
// −1 rows are not written in the token loop (FUSE: by the warp after its tokens; LATE: after the CTA's arrival).
// The next token's row is loaded into registers while the current one is routed. (Loading every row of the warp at
// kernel start by cp.async, `load` 1, measured slower at every point in session 7 round 1 and was removed.)
// PERSIST (FUSE only; ops/moe_routing.cpp `load` 256, session 19): the arrival word and the superblock rows are the
// stream's, as in the CTA-run kernel and map_fused (moe_routing_args.h kMoeRunPersist): no moe_route_zero before the
// launch; the call adds into the half the word's top bit names at its start, zeroes the other half while it waits,
// and arrives at the self-resetting count (grid_count_arrive / grid_count_wait).
template <int E, int K, bool SIGMOID, int G, int TG, bool RENORM, bool BIAS, bool MAP, bool FILL, int EL, int W,
          bool FUSE, bool LATE, bool PERSIST = false>
__global__ void __launch_bounds__(W * 32) moe_route_kernel(const MoeRouteArgs a) {
  static_assert(!PERSIST || (MAP && FUSE), "PERSIST: the fused map's arrival");
  constexpr int NCH = EL / 4;
  constexpr int GS = E / G;
  constexpr bool FULLW = E == 32 * EL;                    // every lane owns EL experts
  constexpr bool UNIFORM = G == 1 || GS % EL == 0;        // a lane's experts lie in one group
  constexpr int SPAN = (G > 1 && GS % EL == 0) ? GS / EL : 1;
  constexpr int NGL = UNIFORM ? 1 : EL / GS;              // groups per lane (!UNIFORM)
  constexpr u32 ALL = 0xffffffffu;
  static_assert(EL % 4 == 0 && EL >= 4 && EL <= 64 && 32 * EL >= E && E % 4 == 0, "bad lane layout");
  static_assert(K >= 1 && K <= E && G >= 1 && G <= 32 && E % G == 0 && TG >= 1 && TG <= G, "bad K/groups");
  static_assert(UNIFORM || EL % GS == 0, "groups must align with the lanes' expert ranges");
  using Mask = typename MoeLaneMask<(EL <= 32)>::type;
  extern __shared__ __align__(16) int moe_smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int tpw = a.tpw;
  int* cnt = moe_smem + warp * E;
  // Per warp and token slot (tpw slots): the scores, the picks' experts and their scores.
  float* srow = reinterpret_cast<float*>(moe_smem + W * E) + warp * tpw * 32 * EL;
  int* pe = moe_smem + W * E + W * tpw * 32 * EL + warp * tpw * K;
  float* ps = reinterpret_cast<float*>(moe_smem + W * E + W * tpw * 32 * EL + W * tpw * K) + warp * tpw * K;
  u32* rec = reinterpret_cast<u32*>(moe_smem + W * E + W * tpw * 32 * EL + 2 * W * tpw * K);
  // Softmax without a bias: the keys are the logits, so the scores stay unnormalized (e^(z − m)) in the rows and only
  // the K picks a token are divided by its sum (tsum, [W][tpw] after the records), in the picks' stores.
  constexpr bool LATEDIV = !SIGMOID && !BIAS;
  float* tsum = reinterpret_cast<float*>(moe_smem + W * E + W * tpw * 32 * EL + 2 * W * tpw * K +
                                         (MAP ? W * tpw * K : 0)) + warp * tpw;
  pdl_launch_dependents();  // moe_route_map (map) waits for this grid before it reads anything
  __shared__ u32 persist_par;  // (PERSIST: the arrival word's top bit at the start — this call's half)
  if constexpr (PERSIST) {
    if (threadIdx.x == 0) {
      persist_par = moe_persist_parity(a.arrive);  // (read after the loop's CTA barriers)
    }
  }
  for (int e = lane; e < E; e += 32) cnt[e] = 0;
  __syncwarp();

  const int e0 = lane * EL;
  const float neg_inf = -__int_as_float(0x7f800000);
  auto valid = [&](int c) { return FULLW || e0 + c < E; };
  const int tc0 = blockIdx.x * (W * tpw);  // the chunk's first token
  const int tb = tc0 + warp * tpw, te = min(tb + tpw, a.T);
  // The next token's row in registers while the current one is routed.
  Vec16 nz[NCH];
  auto load_row = [&](int t) {
    const float* zr = a.logits + static_cast<i64>(t) * E + e0;
#pragma unroll
    for (int c = 0; c < NCH; ++c)
      nz[c] = valid(4 * c) ? load16(zr + 4 * c) : Vec16{{0xff800000u, 0xff800000u, 0xff800000u, 0xff800000u}};
  };
#pragma unroll
  for (int c = 0; c < NCH; ++c) nz[c] = Vec16{{0xff800000u, 0xff800000u, 0xff800000u, 0xff800000u}};
  if (tb < te) load_row(tb);
  float bv[BIAS ? EL : 1];
  if constexpr (BIAS) {
#pragma unroll
    for (int c = 0; c < NCH; ++c) {
      const Vec16 v = valid(4 * c) ? load16(a.bias + e0 + 4 * c) : Vec16{{0u, 0u, 0u, 0u}};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        // A NaN bias makes every key of that expert NaN, which counts as −inf: with σ (never NaN) −inf gives the same
        // key, so the σ path needs no NaN test per token.
        const float b = __uint_as_float(v.w[q]);
        bv[4 * c + q] = SIGMOID && b != b ? neg_inf : b;
      }
    }
  }
  const u32 below_me = (1u << lane) - 1u;
#pragma unroll 1
  for (int t = tb; t < te; ++t) {
    float* st = srow + (t - tb) * 32 * EL;
    int* pk = pe + (t - tb) * K;
    // The slot's picks as a shared-memory address through a shuffle: the compiler keeps it in a register instead of
    // recomputing it in every pick's winner branch.
    const u32 pt = __shfl_sync(ALL, static_cast<u32>(__cvta_generic_to_shared(pk)), 0);
    float z[EL];
#pragma unroll
    for (int c = 0; c < NCH; ++c)
#pragma unroll
      for (int q = 0; q < 4; ++q) z[4 * c + q] = __uint_as_float(nz[c].w[q]);
    if (t + 1 < te) load_row(t + 1);

    auto store_row = [&](const float (&v)[EL]) {
#pragma unroll
      for (int c = 0; c < NCH; ++c)
        *reinterpret_cast<Vec16*>(st + e0 + 4 * c) =
            Vec16{{__float_as_uint(v[4 * c]), __float_as_uint(v[4 * c + 1]), __float_as_uint(v[4 * c + 2]),
                   __float_as_uint(v[4 * c + 3])}};
    };
    // Exact scores of the lane's experts.
    auto exact_scores = [&](float (&s)[EL]) {
      if constexpr (SIGMOID) {
        // σ = 1/(1 + e^−z) correctly rounded: MUFU.RCP and one Newton step are exact while 1 + e^−z < 2^126, i.e. for
        // z > −87 (or NaN: kiln_exp treats it as −104), where 1 + e^−z also takes the short form
        // (kiln_one_plus_exp_lt87); one check per lane instead of one per score, the rare lane with a z ≤ −87
        // recomputes its scores in full.
        float zmin = __int_as_float(0x7f800000), d[EL];
#pragma unroll
        for (int c = 0; c < EL; ++c) {
          zmin = valid(c) ? fminf(zmin, z[c]) : zmin;
          d[c] = kiln_one_plus_exp_lt87(-z[c]);
        }
        if (!(zmin <= -87.0f)) {
#pragma unroll
          for (int c = 0; c < EL; ++c) {
            const float r = rcp_ftz(d[c]);
            s[c] = valid(c) ? __fmaf_rn(r, __fmaf_rn(-d[c], r, 1.0f), r) : 0.0f;
          }
        } else {
#pragma unroll
          for (int c = 0; c < EL; ++c) s[c] = valid(c) ? kiln_sigmoid(z[c]) : 0.0f;
        }
      } else {
        float m = neg_inf;
#pragma unroll
        for (int c = 0; c < EL; ++c) m = fmaxf(m, z[c]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(ALL, m, o));
        float sum = 0.0f;
#pragma unroll
        for (int c = 0; c < EL; ++c) {
          s[c] = valid(c) ? kiln_exp(__fsub_rn(z[c], m)) : 0.0f;
          sum = __fadd_rn(sum, s[c]);
        }
        // Fixed-order butterfly (the CPU reference replays it lane by lane).
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) sum = __fadd_rn(sum, __shfl_xor_sync(ALL, sum, o));
        if constexpr (LATEDIV) {
          if (lane == 0) tsum[t - tb] = sum;
        } else {
#pragma unroll
          for (int c = 0; c < EL; ++c) s[c] = __fdiv_rn(s[c], sum);
        }
      }
    };
    // The keys as order-preserving u32 (NaN counts as −inf; 0 = no expert, below every real key) from the scores s:
    // s + bias, or the logit itself without a bias (s is monotone in z: the same selection, exact).
    auto make_keys = [&](const float (&s)[EL], u32 (&ok)[EL]) {
#pragma unroll
      for (int c = 0; c < EL; ++c) {
        float k = BIAS ? __fadd_rn(s[c], bv[BIAS ? c : 0]) : z[c];
        if constexpr (!(SIGMOID && BIAS)) k = k != k ? neg_inf : k;
        ok[c] = valid(c) ? ordered_bits(k) : 0u;
      }
    };

    Mask taken;
    // The selection from exact keys ok: groups, then K picks (the winners store their experts at pk in pick order;
    // taken marks the lane's picked experts).
    auto select = [&](const u32 (&ok)[EL]) {
      u32 h0 = 0u, h1 = 0u;
      int i0 = 0, i1 = 0;
      auto insert = [&](u32 k, int c) {
        const bool gt0 = k > h0, gt1 = k > h1;
        h1 = gt0 ? h0 : gt1 ? k : h1;
        i1 = gt0 ? i0 : gt1 ? c : i1;
        h0 = gt0 ? k : h0;
        i0 = gt0 ? c : i0;
      };
      Mask live = 0;  // !UNIFORM: the lane's experts in kept groups
      if constexpr (UNIFORM) {
#pragma unroll
        for (int c = 0; c < EL; ++c) insert(ok[c], c);
        if constexpr (G > 1) {
          // The group's two largest keys (ordered, so ±0 and ties are order-independent): merged down to the group's
          // first lane over its SPAN lanes, then summed as floats.
          u32 a1 = h0, a2 = h1;
#pragma unroll
          for (int o = 1; o < SPAN; o <<= 1) {
            const u32 b1 = __shfl_down_sync(ALL, a1, o), b2 = __shfl_down_sync(ALL, a2, o);
            if (lane % SPAN + o < SPAN) {
              a2 = max(min(a1, b1), max(a2, b2));
              a1 = max(a1, b1);
            }
          }
          const int gi = lane / SPAN;
          float sc = __fadd_rn(ordered_float(a1), ordered_float(a2));
          sc = sc != sc ? neg_inf : sc;
          const u32 gsc = ordered_bits(sc);
          // Kept iff fewer than TG groups rank above (score desc, group asc): the same groups as TG rounds of argmax.
          int rank;
          if constexpr (G <= 8) {
            // Ranks from ballots: lane l judges "group h = l % 8 ranks above group l / 8" and "… above l / 8 + 4"; a
            // group's rank is the popcount of its 8 bits in its half's ballot (3 shuffles and 2 ballots, not G
            // shuffles).
            const int h = lane & 7, g1 = lane >> 3, g2 = g1 + 4;
            const u32 sh = __shfl_sync(ALL, gsc, min(h, G - 1) * SPAN);
            const u32 s1 = __shfl_sync(ALL, gsc, min(g1, G - 1) * SPAN);
            const u32 v1 = __ballot_sync(ALL, h < G && g1 < G && (sh > s1 || (sh == s1 && h < g1)));
            u32 v2 = 0u;
            if constexpr (G > 4) {
              const u32 s2 = __shfl_sync(ALL, gsc, min(g2, G - 1) * SPAN);
              v2 = __ballot_sync(ALL, h < G && g2 < G && (sh > s2 || (sh == s2 && h < g2)));
            }
            rank = __popc(((gi < 4 ? v1 : v2) >> (8 * (gi & 3))) & 0xffu);
          } else {
            const u32 mine = __shfl_sync(ALL, gsc, gi * SPAN);
            rank = 0;
#pragma unroll
            for (int g = 0; g < G; ++g) {
              const u32 og = __shfl_sync(ALL, gsc, g * SPAN);
              rank += (og > mine || (og == mine && g < gi)) ? 1 : 0;
            }
          }
          if (rank >= TG) h0 = h1 = 0u;  // a dropped group: its lanes never win
        }
      } else {
        // NGL whole groups per lane.
        u32 gsc[NGL];
        int rank[NGL];
#pragma unroll
        for (int q = 0; q < NGL; ++q) {
          u32 a1 = 0u, a2 = 0u;
#pragma unroll
          for (int c = q * GS; c < q * GS + GS; ++c) {
            a2 = max(a2, min(a1, ok[c]));
            a1 = max(a1, ok[c]);
          }
          float sc = GS >= 2 ? __fadd_rn(ordered_float(a1), ordered_float(a2)) : ordered_float(a1);
          sc = sc != sc ? neg_inf : sc;
          gsc[q] = ordered_bits(sc);
          rank[q] = 0;
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const u32 og = __shfl_sync(ALL, gsc[g % NGL], g / NGL);
#pragma unroll
          for (int q = 0; q < NGL; ++q) rank[q] += (og > gsc[q] || (og == gsc[q] && g < lane * NGL + q)) ? 1 : 0;
        }
#pragma unroll
        for (int c = 0; c < EL; ++c)
          if (rank[c / GS] < TG && ok[c] != 0u) live |= Mask(1) << c;
#pragma unroll
        for (int c = 0; c < EL; ++c) insert((live >> c & 1u) ? ok[c] : 0u, c);
      }

      taken = 0;
      u32 lk = 0xffffffffu;  // the lane's last pick (key, expert): none yet
      int lc = -1;
      auto pick = [&](int r) {
        const u32 m = __reduce_max_sync(ALL, h0);
        // The winner: the lowest lane whose head is the maximum (no lane below it holds it).
        const u32 tops = __ballot_sync(ALL, h0 == m);
        if (h0 == m && (tops & below_me) == 0u) {
          asm volatile("st.shared.u32 [%0], %1;" ::"r"(pt + 4u * r), "r"(e0 + i0) : "memory");
          lk = h0;
          lc = i0;
          taken |= Mask(1) << i0;
          h0 = h1;
          i0 = i1;
          h1 = 0u;
          if (r + 1 < K && h0 == 0u) {
            // The list ran dry (this lane won its third pick …): refill it from the live experts below the last pick
            // (all its picks lie above: a lane's picks come in its own descending order); none may be left.
#pragma unroll
            for (int c = 0; c < EL; ++c) {
              const u32 k = UNIFORM ? ok[c] : ((live >> c & 1u) ? ok[c] : 0u);
              const bool below = k < lk || (k == lk && c > lc);
              insert(below ? k : 0u, c);
            }
          }
        }
      };
      if constexpr (K <= 8) {
#pragma unroll
        for (int r = 0; r < K; ++r) pick(r);
      } else {
#pragma unroll 1
        for (int r = 0; r < K; ++r) pick(r);
      }
    };

    u32 ok[EL];
    float sc[EL];
    exact_scores(sc);
    store_row(sc);  // a pick's score is read from there
    make_keys(sc, ok);
    select(ok);

    // Zeros, the map bytes (and −1 map rows) over the lane's experts; the picks' stores follow for all the warp's
    // tokens at once.
    const Vec16 zero{{0u, 0u, 0u, 0u}}, m1{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}};
    const i64 row = static_cast<i64>(t) * E;
#pragma unroll
    for (int c = 0; c < NCH; ++c)
      if (valid(4 * c)) {
        store16(a.probs + row + e0 + 4 * c, zero);
        const u32 m4 = static_cast<u32>(taken >> (4 * c)) & 0xfu;
        *reinterpret_cast<u32*>(a.routing_map + row + e0 + 4 * c) = (m4 * 0x00204081u) & 0x01010101u;  // bit q → byte q
        if constexpr (MAP && !FILL) store16(a.row_id_map + row + e0 + 4 * c, m1);
      }
  }

  // The picks of all the warp's tokens at once (lane i: pick i % K of token slot i / K, 32 per round): the score,
  // the renormalization denominator in pick order (the CPU reference's order), the prob over the zeros stored above,
  // the rank among the warp's tokens routed to the same expert (earlier tokens = lower lanes of its match set, plus
  // the earlier rounds' counts) and the record.
  __syncwarp();
  const int nk = max(0, te - tb) * K;
  for (int i = lane; i < nk; i += 32) {
    const float sv = srow[(i / K) * 32 * EL + pe[i]];
    ps[i] = LATEDIV ? __fdiv_rn(sv, tsum[i / K]) : sv;
  }
  __syncwarp();
#pragma unroll 1
  for (int b = 0; b < nk; b += 32) {
    const int i = b + lane;
    const bool v = i < nk;
    const int tl = v ? i / K : 0;
    const int e = v ? pe[i] : 0;
    float den = 0.0f;
#pragma unroll 8
    for (int r = 0; r < K; ++r) den = __fadd_rn(den, ps[tl * K + r]);
    const float d = __fadd_rn(den, 1e-20f);
    const u32 same = __match_any_sync(ALL, v ? e : E + lane);
    const int rk = cnt[e] + __popc(same & below_me);
    __syncwarp();  // every lane has read the counts before the last lane of each set updates them
    if (v) {
      if ((same >> lane) == 1u) cnt[e] = rk + 1;
      const float sv = ps[i];
      a.probs[static_cast<i64>(tb + tl) * E + e] = __fmul_rn(RENORM ? __fdiv_rn(sv, d) : sv, a.scale);
      if constexpr (MAP) rec[(tb - tc0) * K + i] = static_cast<u32>(e) | static_cast<u32>(rk) << 16;
    }
    __syncwarp();
  }
  // The −1 rows of the warp's tokens (contiguous; FUSE && FILL), stored while other CTAs still route: before the
  // CTA's arrival, or (LATE) after it, while the CTA waits for the others (the arrival's fence then has no fill stores
  // to wait for). The routed entries are written over them after the grid-wide arrival (ordered by the barriers in
  // between).
  auto fill_rows = [&] {
    const Vec16 m1{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}};
    int* rr = a.row_id_map + static_cast<i64>(tb) * E;
    for (int q = lane; q < max(0, te - tb) * (E / 4); q += 32) store16(rr + 4 * q, m1);
  };
  if constexpr (MAP && FUSE && FILL && !LATE) fill_rows();

  __syncthreads();
  if constexpr (!PERSIST) pdl_wait();  // moe_route_zero has zeroed the rows the atomics below add into
  const u32 par = PERSIST ? persist_par : 0u;
  int* const superp = MAP ? a.super + (PERSIST ? static_cast<i64>(par) * a.persist_half : 0) : nullptr;
  for (int e = threadIdx.x; e < E; e += W * 32) {
    int run = 0;
#pragma unroll
    for (int w = 0; w < W; ++w) {
      const int c = moe_smem[w * E + e];
      moe_smem[w * E + e] = run;  // exclusive prefix over warps (= over the chunk's tokens in order)
      run += c;
    }
    if constexpr (MAP) {
      a.chunk_counts[static_cast<i64>(blockIdx.x) * E + e] = run;
      if (run) atomicAdd(&superp[static_cast<i64>(blockIdx.x / a.super_chunks) * E + e], run);
    } else {
      if (run) atomicAdd(&a.counts[e], run);
    }
  }
  if constexpr (MAP && !FUSE) {
    __syncthreads();
    const int nt = min(W * tpw, a.T - tc0);
    for (int i = threadIdx.x; i < nt * K; i += W * 32) {
      const u32 v = rec[i];
      const int e = static_cast<int>(v & 0xffffu), w = i / K / tpw;
      a.records[static_cast<i64>(tc0) * K + i] = static_cast<u32>(e) | static_cast<u32>(moe_smem[w * E + e] + static_cast<int>(v >> 16)) << 16;
    }
  }
  if constexpr (MAP && FUSE) {
    // Grid-wide arrival (cooperative-groups style: the CTA's count stores and atomics, then one release arrival),
    // then wait for every CTA. The host launches FUSE only when the whole grid is resident at once; a
    // wait that still never ends traps (an error, not a hang) after ≥ 2 s.
    __syncthreads();
    // A release add (covering the CTA's count stores and atomics, ordered before it by the barrier) and an acquire
    // spin, as cooperative groups' grid barrier (no SC fences).
    u32 tok = 0;
    if (threadIdx.x == 0) {
      if constexpr (PERSIST) tok = grid_count_arrive(a.arrive);
      else asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(a.arrive) : "memory");
    }
    if constexpr (PERSIST)  // (while the CTA waits for the others)
      moe_persist_zero_half<W * 32>(a.super + static_cast<i64>(par ^ 1u) * a.persist_half, a.persist_half);
    if constexpr (FILL && LATE) fill_rows();
    if (threadIdx.x == 0) {
      if constexpr (PERSIST) grid_count_wait(a.arrive, tok);
      else moe_wait_arrivals<64>(a.arrive);
    }
    __syncthreads();
    // base [E] over the scores' space, the scan's warp totals over the picks' (both dead now).
    int* base = reinterpret_cast<int*>(moe_smem + W * E);
    MoeChunkMap cm = a.map;
    cm.super = superp;
    moe_chunk_bases<E, W * 32>(cm, blockIdx.x, base, moe_smem + W * E + W * tpw * 32 * EL);
    const int nt = min(W * tpw, a.T - tc0);
    for (int i = threadIdx.x; i < nt * K; i += W * 32) {
      const u32 v = rec[i];
      const int e = static_cast<int>(v & 0xffffu), w = i / K / tpw;
      moe_put_row(a.map, E, static_cast<i64>(tc0) + i / K, e, base[e] + moe_smem[w * E + e] + static_cast<int>(v >> 16));
    }
  }
}

// CTA: one chunk of moe_route (chunk_tokens tokens), 8 warps.
template <int E, int K, bool FILL>
__global__ void __launch_bounds__(256) moe_route_map_kernel(const MoeRouteMapArgs a) {
  __shared__ int base[E];
  __shared__ int warp_tot[8];
  pdl_wait();  // moe_route's records, chunk rows and superblock counts
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int c = blockIdx.x;
  const int t0 = c * a.chunk_tokens;
  const int nt = min(a.chunk_tokens, a.T - t0);
  // The first record of each thread is loaded with the count rows (one memory latency for both).
  const u32 v0 = !FILL && static_cast<int>(threadIdx.x) < nt * K ? a.records[static_cast<i64>(t0) * K + threadIdx.x] : 0u;
  moe_chunk_bases<E, 256>(a.map, c, base, warp_tot);

  auto put = [&](i64 t, u32 v) {
    const int e = static_cast<int>(v & 0xffffu);
    moe_put_row(a.map, E, t, e, base[e] + static_cast<int>(v >> 16));
  };
  if constexpr (FILL) {
    // A warp per token: −1 over the row, then the routed entries (lane r: pick r).
    const Vec16 m1{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}};
    for (int tl = warp; tl < nt; tl += 8) {
      const i64 t = t0 + tl;
      const u32 v0 = lane < K ? a.records[t * K + lane] : 0u;
      int* rr = a.map.row_id_map + t * E;
      for (int q = lane; q < E / 4; q += 32) store16(rr + 4 * q, m1);
      __syncwarp();
      if (lane < K) put(t, v0);
      for (int r = lane + 32; r < K; r += 32) put(t, a.records[t * K + r]);
    }
  } else {
    if (static_cast<int>(threadIdx.x) < nt * K) put(t0 + threadIdx.x / K, v0);
    for (int i = threadIdx.x + 256; i < nt * K; i += 256) put(t0 + i / K, a.records[static_cast<i64>(t0) * K + i]);
  }
}


// ---- top-k forward on CTA runs, 16 threads per token (moe_route_run_kernel) ---------------------------------------
// Sigmoid routing, same selection and same bits as moe_route_kernel (and the CPU reference), organized for memory
// instead of latency (bench/NOTES.md, session 7):
//   * CTA c owns the contiguous tokens [c·n, c·n + n) (n = a.run_tokens ≤ TPW·W, TPW = 32/TPT tokens per warp);
//     thread 0 requests every row at kernel start by cp.async.bulk into (padded) shared rows in warp order, each
//     warp's on its mbarrier (one DRAM latency per warp, not one per token; the first warps compute while the later
//     rows land), the bias ahead of them on its own mbarrier;
//   * lane = token + TPW·part: part j owns experts j·E/TPT … (j+1)·E/TPT − 1 (whole groups, or 1/SPAN of a group);
//     exact σ, keys (σ + bias, or the logit itself without a bias) and each group's two best keys in the thread (merged
//     over the SPAN threads of a group by xor shuffles); the group ranks from G shuffles;
//   * L = the smallest of the two best keys of the kept groups (2·TG ≥ K distinct kept keys are ≥ L, so every pick
//     is ≥ L); the candidates (kept, key ≥ L) go as packed (ordered key, 0xffff − e) into a per-token list, and each
//     candidate's rank is the number of larger entries (key desc, expert asc: the order of K argmax rounds); more
//     than kMoeRunCap candidates (ties) make the warp take K exact argmax rounds over its candidates instead;
//   * the prob and routing-map rows are built in shared memory and written complete by 16-byte stores; with the
//     map, the −1 rows of row_id_map by 16-byte stores, a grid-wide arrival after the chunk counts (the whole grid is
//     resident: the host checks), then the routed rows. FM (map): 3 = the −1 rows at kernel start and the prob / map
//     rows as each warp finishes; 4 = the −1 rows after the CTA's arrival, while it waits for the others; 5 = both
//     the −1 rows and the prob / map rows after the arrival (its release then covers no bulk writes).
template <bool FLOATKEY> struct MoeRunKey { using type = u32; };
template <> struct MoeRunKey<true> { using type = float; };

// CTAs of 32 or 64 tokens (32/TPT per warp): 64 tokens' threads fit an SM at once (the register budget for it).
template <int W, int TPT> struct MoeRunMinBlocks { static constexpr int value = 64 / (32 / TPT * W) > 1 ? 64 / (32 / TPT * W) : 1; };

// V (moe_routing_args.h kMoeRun*): the options of the config's `load` bits — APPROX (approximate keys), ISSUELAST
// (the last warp issues the copies before any CTA barrier), COOP (one cooperative launch: no route_zero; the grid
// barrier word instead of the arrival counter; only with ISSUELAST) — and measurement variants (TRACE, the phases
// left out, and the candidates ISSUE0, BULKST, BIASPRE, PERSIST, WARPPAD, FILLTMA: see their comments below and
// bench/NOTES.md sessions 8–9; EARLY, PACK, FILLW and COOP without ISSUE0 lost in two rounds each and were deleted).
template <int E, int K, int G, int TG, bool RENORM, bool BIAS, bool MAP, int W, int FM, int TPT, int V = 0>
__global__ void __launch_bounds__(W * 32, (MoeRunMinBlocks<W, TPT>::value)) moe_route_run_kernel(const MoeRouteArgs a) {
  constexpr int TPW = 32 / TPT;               // tokens per warp
  constexpr int EPT = E / TPT;                // experts per thread
  constexpr int GS = E / G;
  constexpr int BS = G > 1 && GS < EPT ? GS : EPT;  // the blocks whose two best keys bound the K-th key
  constexpr int NB = EPT / BS;                // blocks (groups) per thread
  constexpr int SPAN = G > 1 && GS > EPT ? GS / EPT : 1;  // threads per group
  constexpr int NTH = W * 32;
  constexpr int CAP = kMoeRunCap;
  constexpr MoeRunSmem L = moe_run_smem(E, K, W, TPT, (V & kMoeRunLean3) != 0);
  constexpr int RSF = L.rsf, KP = L.kp, NMW = L.nmw;
  constexpr u32 ALL = 0xffffffffu;
  constexpr bool LATE = MAP && FM >= 4, DEFER = MAP && FM == 5;
  constexpr bool TRACE = (V & kMoeRunTrace) != 0, NOFILL = (V & kMoeRunNoFill) != 0, NOROWS = (V & kMoeRunNoRows) != 0,
                 NOTAIL = (V & kMoeRunNoTail) != 0, NOWAIT = (V & (kMoeRunNoWait | kMoeRunNoZero)) != 0,
                 NOARRIVE = (V & kMoeRunNoArrive) != 0;
  // EARLYPUT (moe_routing_args.h kMoeRunEarlyPut; session 15): the routed rows put right after the bases' scan barrier
  // (moe_chunk_bases_put), each pick's expert and rank in the chunk read during the spin by the upper half's threads.
  constexpr bool EARLYPUT = MAP && (V & kMoeRunPersist) != 0 && (V & kMoeRunEarlyPut) != 0;
  // COOP (config load bit 4, with ISSUELAST): a cooperative launch with no moe_route_zero before it; the kernel
  // zeroes the superblock rows itself behind a first grid barrier (waited for only before its atomics) and arrives at
  // the driver's grid-barrier word (kiln/grid_sync.cuh: needs no reset) instead of the workspace counter.
  constexpr bool COOP = MAP && (V & kMoeRunCoop) != 0;
  // APPROX (config load 1: a search-space point): the selection on approximate keys, exact σ for the candidates only.
  constexpr bool APPROX = BIAS && (V & kMoeRunApprox) != 0;
  // Candidates: the row copies before the first CTA barrier (ISSUE0); and by the CTA's last warp, whose rows land
  // last anyway, instead of warp 0 (ISSUELAST, with ISSUE0): warp 0 then computes as soon as its rows land.
  constexpr bool ISSUELAST = (V & kMoeRunIssueLast) != 0, ISSUE0 = ISSUELAST || (V & kMoeRunIssue0) != 0;
  constexpr int SW = ISSUELAST ? W - 1 : 0;  // the warp that inits the barriers and issues the copies
  static_assert(!COOP || ISSUE0, "COOP: with the copies issued before the first CTA barrier");
  static_assert(!(MAP && FM == 3 && (V & kMoeRunFillTma)) || ISSUE0, "FILLTMA at fill 3: by the copy-issuing warp");
  // Session 9 candidates (outputs exact): BULKST (the prob and map rows by bulk async copies, one lane a warp),
  // BIASPRE (the bias clamped — NaN → −inf — and its max |finite| formed once per CTA by warp 0, published by mbarrier
  // W + 1). (WAITEARLY, COUNTW, NOFENCE and PRELOAD were measured in rounds 1–2 and deleted: bench/NOTES.md.)
  constexpr bool BULKST = (V & kMoeRunBulkStore) != 0;
  constexpr bool BIASPRE = BIAS && (V & kMoeRunBiasPre) != 0;
  // PERSIST (moe_routing_args.h kMoeRunPersist): a.arrive and a.super outlive the call (per stream); no route_zero,
  // no cooperative launch. par (the arrival word's top bit at the start, read by thread 0 into smisc[1]) picks the
  // half of the superblock rows this call adds into; it zeroes the other half for the next call.
  constexpr bool PERSIST = MAP && (V & kMoeRunPersist) != 0;
  // WARPPAD, FILLTMA (moe_routing_args.h kMoeRunWarpPad, kMoeRunFillTma).
  constexpr bool WARPPAD = MAP && (V & kMoeRunWarpPad) != 0;
  constexpr bool FILLTMA = MAP && (FM == 3 || FM == 4) && (V & kMoeRunFillTma) != 0;
  constexpr bool FILLTMA3 = FILLTMA && FM == 3;
  constexpr bool NOKEYS = (V & kMoeRunNoKeys) != 0, NOSELECT = NOKEYS || (V & kMoeRunNoSelect) != 0;
  // LEAN (moe_routing_args.h kMoeRunLean): the approximate-key selection in fewer instructions; Ling's layout only
  // (a group spans 2 threads, G · 2 = TPT).
  constexpr bool LEAN = (V & kMoeRunLean) != 0;
  constexpr bool LEAN3 = LEAN && (V & kMoeRunLean3) != 0;
  // LEAN4 (moe_routing_args.h kMoeRunLean4, on LEAN3): the same selection in fewer SASS instructions a thread.
  constexpr bool LEAN4 = LEAN3 && (V & kMoeRunLean4) != 0;
  // GRP5 (moe_routing_args.h kMoeRunGrp5, on LEAN4; session 13): the group ranks and the margin by sign bits, the tie
  // at the cut by one popcount.
  constexpr bool GRP5 = LEAN4 && (V & kMoeRunGrp5) != 0;
  // DRANK (moe_routing_args.h kMoeRunDRank, on GRP5; session 13, in the default since round D): the list's entries as
  // doubles, the 16-slot rank count by DADD signs.
  constexpr bool DRANK = GRP5 && (V & kMoeRunDRank) != 0;
  constexpr bool WAITLEAN = (V & kMoeRunWaitLean) != 0, FASTDIV = (V & kMoeRunFastDiv) != 0;
  // REGLATE12 (moe_routing_args.h kMoeRunRegLate12): warps RW … W − 1 (the last W/4) load their rows by 16-byte
  // register loads (no row copies, no mbarrier wait loop for them), the others by the bulk copies.
  constexpr int RW = (V & kMoeRunRegLate12) != 0 ? 3 * W / 4 : W;
  constexpr bool REGLATE = RW < W;
  static_assert(!LEAN || (APPROX && G > 1 && TG < G && NB == 1 && SPAN == 2 && G * SPAN == TPT && TPW == 2),
                "LEAN: the approximate keys on Ling's group layout");
  static_assert(!((V & kMoeRunLean3) != 0) || (LEAN && MAP && FM != 5 && (V & kMoeRunBulkStore) != 0),
                "LEAN3: on LEAN, with the map at fill 3 / 4 and the bulk row copies");
  static_assert(!(PERSIST && COOP), "PERSIST: not with the cooperative launch");
  constexpr int CT = SW == 0 ? 32 : 0;       // COOP with ISSUE0: the thread that arrives at the first grid barrier
  static_assert(!(COOP && NOARRIVE), "COOP arrives at the grid barrier");
  u32 coop_tok = 0;
  // (4 and 8 threads per token were measured slower in every round of session 7, and 8 again in session 9 round 2
  // with the approximate keys; the layout code keeps TPT general.)
  static_assert(TPT == 16 && E % (4 * TPT) == 0 && EPT <= 64, "E / threads per token");
  static_assert(G == 1 ? K <= 2 * TPT
                       : ((EPT % GS == 0 || (GS % EPT == 0 && (SPAN & (SPAN - 1)) == 0)) && GS >= 2 && K <= 2 * TG &&
                          TG <= G),
                "groups / top-k layout");
  static_assert(W >= 4 && W <= 32, "warps");
  // Float keys (σ + bias: never NaN — a NaN bias is −inf — never −0, so float order = the reference's ordered-bits
  // order); without a bias the keys are the logits as ordered u32 (NaN → −inf, −0 < +0).
  using Key = typename MoeRunKey<BIAS>::type;
  extern __shared__ __align__(128) unsigned char run_smem[];
  float* rows = reinterpret_cast<float*>(run_smem + L.rows);
  float* sbias = reinterpret_cast<float*>(run_smem + L.bias);
  float* sp = reinterpret_cast<float*>(run_smem + L.sp);
  int* picks = reinterpret_cast<int*>(run_smem + L.picks);
  u64* list = reinterpret_cast<u64*>(run_smem + L.list);
  u8* mapbuf = run_smem + L.mapbuf;
  u32* emask = reinterpret_cast<u32*>(run_smem + L.emask);
  u64* bars = reinterpret_cast<u64*>(run_smem + L.bars);  // [W] rows, [W] the bias, [W + 1] BIASPRE's bias ready
  float* smisc = reinterpret_cast<float*>(run_smem + L.misc);
  const float neg_inf = -__int_as_float(0x7f800000);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ti = lane % TPW, part = lane / TPW;
  const int tl = warp * TPW + ti;                    // the token's slot in the CTA
  const int tc0 = blockIdx.x * a.run_tokens;         // the CTA's first token
  const int nct = min(a.run_tokens, a.T - tc0);      // its tokens (≥ 1)
  const int nw = max(0, min(TPW, nct - warp * TPW)); // the warp's tokens
  const bool valid = tl < nct;
  // TRACE: SM clock stamps (asm volatile with a memory clobber: not moved across the loads and stores around them).
  u64* const tr = TRACE ? reinterpret_cast<u64*>(a.trace) + static_cast<i64>(blockIdx.x) * kMoeRunTraceSlots : nullptr;
  // Stamps are globaltimer ns (one clock for every warp and SM: the SM clocks of a CTA's warps disagree) read by a
  // predicated move whose predicate comes from a volatile shared-memory load, so that the read is not hoisted above
  // the barriers and waits before it (a plain register read was: the loop-barrier stamp read before the barrier).
  auto gns = [&] {
    u64 t;
    asm volatile(
        "{\n.reg .pred p;\n.reg .u32 d;\nld.volatile.shared.u32 d, [%1];\nsetp.ne.u32 p, d, 0x7fc00001;\n"
        "@p mov.u64 %0, %%globaltimer;\n@!p mov.u64 %0, 1;\n}\n"
        : "=l"(t)
        : "r"(smem_u32(bars))
        : "memory");
    return t;
  };
  auto clk = [] {
    u64 t;
    asm volatile("mov.u64 %0, %%clock64;" : "=l"(t)::"memory");
    return t;
  };
  // stamp: in a thread's own flow (thread 0's copy issue and spin); stamp0 / stampw: called by every thread of the
  // CTA / of the warp where they are converged, written by thread 0 / lane 0, the warp converged again right after
  // (a lane-0 branch left open before a CTA barrier is run after it: the stamp would read a later clock).
  auto stamp = [&](int slot) {
    if constexpr (TRACE) tr[slot] = gns();
  };
  auto stampw = [&](int slot) {
    if constexpr (TRACE) {
      const u64 t = gns();
      if (lane == 0) tr[slot] = t;
      __syncwarp();
    }
  };
  auto stamp0 = [&](int slot) {
    if constexpr (TRACE) {
      const u64 t = gns();
      if (threadIdx.x == 0) tr[slot] = t;
      __syncwarp();
    }
  };
  // REGLATE: a register-loading warp's thread loads its share of its token's row, coalesced (16 threads a token read
  // 256 contiguous bytes a load: load q of part p = floats 4·(q·TPT + p) … + 3), once the CTA's init is done (the
  // copy-issuing warp: after its copies), and stores it into the shared row where the warp would wait: the
  // scoreboard waits, no instructions are issued while they are in flight.
  constexpr int NRL = REGLATE ? E / (4 * TPT) : 1;
  Vec16 rreg[NRL];
  auto load_regs = [&] {
    if constexpr (REGLATE) {
      if (warp >= RW && valid) {
        const float* src = a.logits + static_cast<i64>(tc0 + tl) * E;
        u64 pol;
        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
#pragma unroll
        for (int q = 0; q < NRL; ++q)
          asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                       : "=r"(rreg[q].w[0]), "=r"(rreg[q].w[1]), "=r"(rreg[q].w[2]), "=r"(rreg[q].w[3])
                       : "l"(src + 4 * (q * TPT + part)), "l"(pol)
                       : "memory");
      }
    }
  };
  if constexpr (TRACE) {
    if (threadIdx.x == 0) {
      tr[kMoeRunTrStartNs] = gns();
      tr[kMoeRunTrStartClk] = clk();
      u32 sm;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
      tr[kMoeRunTrSm] = sm;
    }
  }

  auto issue_rows = [&] {
    if (threadIdx.x != SW * 32) return;
    // Every row of the CTA in token order by one thread, so that the rows land in warp order (the copy engine and
    // DRAM serve them about first come, first served): warp 0 computes while the later warps' rows still arrive.
#pragma unroll 1
    for (int w = 0; w < RW; ++w) {  // (REGLATE12: warps RW … W − 1 load their own)
      const int n = max(0, min(TPW, nct - w * TPW));
      if (n == 0) break;
      mbar_arrive_expect_tx(&bars[w], static_cast<u32>(n * E * 4));
      const float* src = a.logits + static_cast<i64>(tc0 + w * TPW) * E;
      if constexpr (RSF == E) {
        bulk_load_evict_first(rows + w * TPW * E, src, n * E * 4, &bars[w]);  // unpadded rows: one copy
      } else {
#pragma unroll 1
        for (int i = 0; i < n; ++i)
          bulk_load_evict_first(rows + (w * TPW + i) * RSF, src + static_cast<i64>(i) * E, E * 4, &bars[w]);
      }
    }
    stamp(kMoeRunTrIssued);
  };
  if (warp == SW) {
    // The rows' barriers by the lanes of warp 0 (published by the CTA barrier below), the bias barrier by thread 0,
    // which issues the bias copy right away (ISSUELAST: warp W − 1 and its lane 0).
    if (lane < W) mbar_init(&bars[lane], 1);
    if (lane == 0) mbar_init(&bars[W], 1);
    if (BIASPRE && lane == 1) mbar_init(&bars[W + 1], 1);
    fence_mbar_init();
  }
  if (threadIdx.x == SW * 32) {
    if constexpr (BIAS) {
      // The bias first (ahead of the rows in the copy queue), on its own barrier: no CTA barrier waits for it.
      mbar_arrive_expect_tx(&bars[W], E * 4);
      bulk_load(sbias, a.bias, E * 4, &bars[W]);
    }
  }
  if constexpr (ISSUE0) {
    // ISSUE0: the rows' copies right away — warp SW's barrier inits ordered before them by the warp's sync — instead
    // of after a CTA barrier that waits for the CTA's last warp to start. Named barrier 1 publishes warp SW's inits
    // (it only arrives, then issues); the other warps zero the masks before it and arrive at barrier 2, which warp SW
    // passes once its copies are issued, before its first use of the masks.
    // With COOP the other warps also zero the CTA's share of the superblock rows, and thread CT (the first of them)
    // arrives at the grid barrier once barrier 1 has ordered their stores (it alone waits for the grid, later).
    if (warp == SW) {
      __syncwarp();
      asm volatile("bar.arrive 1, %0;" ::"n"(NTH) : "memory");
      if constexpr (FILLTMA3 && !NOFILL) {
        u8* fb = run_smem + L.fillb;
        for (int q = lane; q < 4096 / 16; q += 32)
          sts16(smem_u32(fb + 16 * q), Vec16{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}});
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        __syncwarp();
      }
      issue_rows();
      if constexpr (FILLTMA3 && !NOFILL) {
        // The CTA's −1 rows of row_id_map behind its row copies in the copy engine's queue (waited for by this
        // thread before the loop barrier: the routed entries go on top of them after it).
        if (lane == 0) {
          const i64 bytes = static_cast<i64>(nct) * E * 4;
          u8* rr = reinterpret_cast<u8*>(a.row_id_map + static_cast<i64>(tc0) * E);
          for (i64 o = 0; o < bytes; o += 4096) {
            const u32 nb = static_cast<u32>(bytes - o < 4096 ? bytes - o : 4096);
            asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(rr + o),
                         "r"(smem_u32(run_smem + L.fillb)), "r"(nb)
                         : "memory");
          }
          asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        }
      }
      __syncwarp();
      named_barrier_sync(2, NTH);
    } else {
      const int ot = threadIdx.x - (warp > SW ? 32 : 0);  // 0 … NTH − 33
      for (int i = ot; i < E * NMW; i += NTH - 32) emask[i] = 0u;
      if constexpr (LEAN)  // (LEAN: the candidate lists and their counters start at 0)
        for (int i = ot; i < TPW * W * (CAP + 2) / 2; i += NTH - 32) sts16(smem_u32(list + 2 * i), Vec16{{0u, 0u, 0u, 0u}});
      if constexpr (LEAN3) {  // (LEAN3: the staged prob rows and the map rows start at 0)
        for (int i = ot; i < TPW * W * E / 4; i += NTH - 32) sts16(smem_u32(run_smem + L.stage + 16 * i), Vec16{{0u, 0u, 0u, 0u}});
        for (int i = ot; i < TPW * W * E / 16; i += NTH - 32) sts16(smem_u32(mapbuf + 16 * i), Vec16{{0u, 0u, 0u, 0u}});
      }
      if constexpr (COOP) {
        const int nsup = (a.map.nchunks + a.map.super_chunks - 1) / a.map.super_chunks;
        for (int i = blockIdx.x * (NTH - 32) + ot; i < nsup * E; i += gridDim.x * (NTH - 32)) a.super[i] = 0;
      }
      named_barrier_sync(1, NTH);
      if constexpr (COOP) {
        if (threadIdx.x == CT) coop_tok = grid_count_arrive(grid_barrier_word());
      }
      asm volatile("bar.arrive 2, %0;" ::"n"(NTH) : "memory");
    }
  } else {
    for (int i = threadIdx.x; i < E * NMW; i += NTH) emask[i] = 0u;
    if constexpr (LEAN)
      for (int i = threadIdx.x; i < TPW * W * (CAP + 2) / 2; i += NTH) sts16(smem_u32(list + 2 * i), Vec16{{0u, 0u, 0u, 0u}});
    if constexpr (LEAN3) {
      for (int i = threadIdx.x; i < TPW * W * E / 4; i += NTH) sts16(smem_u32(run_smem + L.stage + 16 * i), Vec16{{0u, 0u, 0u, 0u}});
      for (int i = threadIdx.x; i < TPW * W * E / 16; i += NTH) sts16(smem_u32(mapbuf + 16 * i), Vec16{{0u, 0u, 0u, 0u}});
    }
    __syncthreads();
  }
  stamp0(kMoeRunTrInit);
  if constexpr (PERSIST) {
    if (threadIdx.x == 0) {
      reinterpret_cast<u32*>(smisc)[1] = moe_persist_parity(a.arrive);  // (read after the loop barrier)
    }
  }
  if constexpr (!ISSUE0) issue_rows();
  load_regs();
  pdl_launch_dependents();
  // The −1 rows of the CTA's tokens in row_id_map (contiguous); the routed entries are written over them after the
  // grid-wide arrival (ordered by the CTA barriers in between).
  auto fill_rows = [&] {
    if constexpr (NOFILL) return;
    const Vec16 m1{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}};
    int* rr = a.row_id_map + static_cast<i64>(tc0) * E;
    if constexpr (FILLTMA3) {
      // (the copy-issuing warp has queued them behind the row copies)
    } else if constexpr (FILLTMA) {
      // FILLTMA (after the arrival: the selection's list is free): 4 KB of −1 in shared memory, then thread 0 copies
      // it over the CTA's rows by bulk stores (waited for, with a proxy fence, before the routed entries go on top).
      constexpr int FB = 4096;
      u8* fb = reinterpret_cast<u8*>(list);
      static_assert((32 / TPT) * W * (kMoeRunCap + 2) * 8 >= FB, "FILLTMA: the −1 block fits the list");
      for (int q = threadIdx.x; q < FB / 16; q += NTH) sts16(smem_u32(fb + 16 * q), m1);
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      __syncthreads();
      if (threadIdx.x == 0) {
        const i64 bytes = static_cast<i64>(nct) * E * 4;
        for (i64 o = 0; o < bytes; o += FB) {
          const u32 nb = static_cast<u32>(bytes - o < FB ? bytes - o : FB);
          asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(
                           reinterpret_cast<u8*>(rr) + o),
                       "r"(smem_u32(fb)), "r"(nb)
                       : "memory");
        }
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
      }
    } else {
      for (int q = threadIdx.x; q < nct * (E / 4); q += NTH) store16(rr + 4 * q, m1);
    }
  };
  if constexpr (MAP && !LATE) {
    fill_rows();
    stamp0(kMoeRunTrFilled);
  }

  // Phase 0 of a barrier: each try_wait may suspend the thread up to 20 µs (few polling instructions while the rows
  // are in flight); a wait past 2 s — a copy that never lands — traps instead of hanging.
  // (WAITLEAN: no clock read an iteration; each try_wait suspends until a copy of the CTA completes or up to 20 µs,
  // so 2^22 iterations are seconds or more before a lost copy traps.)
  auto wait_bar = [](u64* b) {
    const u32 bar = smem_u32(b);
    u64 t0 = 0;
    for (u32 it = 0;; ++it) {
      u32 done;
      asm volatile(
          "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0, 20000;\nselp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(done) : "r"(bar) : "memory");
      if (done) break;
      if constexpr (WAITLEAN) {
        if (it == (1u << 22)) __trap();
      } else {
        const u64 t = globaltimer_ns();
        if (it == 0) t0 = t;
        else if (t - t0 > 2000000000ull) __trap();
      }
    }
  };
  // The picks' scores, the denominator in pick order (the reference's), the probs; then the token's prob and map rows
  // built in shared memory (over its scores, no longer needed) and copied out complete by 16-byte stores. A warp with
  // tokens calls it after its selection.
  int* const pk = picks + tl * KP;
  auto emit_rows = [&] {
    constexpr int MP = (K + TPT - 1) / TPT;  // picks per thread
    float pv[MP];
    int pe[MP];
    if (valid) {
#pragma unroll
      for (int q = 0; q < MP; ++q) {
        const int r = part + TPT * q;
        if (r < K) {
          pe[q] = pk[r];
          if constexpr (!LEAN) {  // (LEAN: the ranking thread stored the pick's σ)
            const float x = rows[tl * RSF + pe[q]];
            sp[tl * KP + r] = BIAS ? x : kiln_sigmoid(x);
          }
        }
      }
    }
    if constexpr (!LEAN) __syncwarp();
    if (valid) {
      float den = 0.0f;
#pragma unroll
      for (int r = 0; r < K; ++r) den = __fadd_rn(den, sp[tl * KP + r]);
      const float d = __fadd_rn(den, 1e-20f);
#pragma unroll
      for (int q = 0; q < MP; ++q) {
        const int r = part + TPT * q;
        if (r < K) {
          const float sv = sp[tl * KP + r];
          pv[q] = __fmul_rn(RENORM ? __fdiv_rn(sv, d) : sv, a.scale);
        }
      }
    }
    if constexpr (!LEAN3) __syncwarp();  // every read of the scores row before it is overwritten
    // (LEAN3: the prob rows go to their own staging rows, zero from the start, with the map rows)
    float* prow = LEAN3 ? reinterpret_cast<float*>(run_smem + L.stage) + tl * E : rows + tl * RSF;
    u8* mrow = mapbuf + tl * E;
    if (!LEAN3 && valid) {
      const Vec16 zero{{0u, 0u, 0u, 0u}};
      // 16-byte units of the rows, spread over the token's threads (E/4 of the prob row, E/16 of the map row).
#pragma unroll
      for (int u = part; u < E / 4; u += TPT) sts16(smem_u32(prow + 4 * u), zero);
#pragma unroll
      for (int u = part; u < E / 16; u += TPT) sts16(smem_u32(mrow + 16 * u), zero);
    }
    if constexpr (!LEAN3) __syncwarp();
    if (valid) {
#pragma unroll
      for (int q = 0; q < MP; ++q)
        if (part + TPT * q < K) {
          prow[pe[q]] = pv[q];
          mrow[pe[q]] = 1;
        }
    }
    __syncwarp();
    if constexpr (BULKST) {
      // BULKST: the warp's rows by bulk async copies from its lane 0 (one a prob row — the shared rows are padded —
      // and one for the warp's map rows), after every lane's proxy fence (its shared writes → the async proxy).
      // The copies' reads are waited for before the CTA exits; nothing writes these rows again.
      if (!DEFER && !NOROWS) {
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        __syncwarp();
        if (lane == 0) {
          const int nwt = max(0, min(TPW, nct - warp * TPW));
          const i64 t0w = tc0 + warp * TPW;
          if constexpr (LEAN3) {  // (the warp's staged prob rows are contiguous: one copy)
            asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(a.probs + t0w * E),
                         "r"(smem_u32(run_smem + L.stage + warp * TPW * E * 4)), "r"(nwt * E * 4)
                         : "memory");
          } else {
            for (int i = 0; i < nwt; ++i)
              asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(a.probs + (t0w + i) * E),
                           "r"(smem_u32(rows + (warp * TPW + i) * RSF)), "r"(E * 4)
                           : "memory");
          }
          asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(a.routing_map + t0w * E),
                       "r"(smem_u32(mapbuf + warp * TPW * E)), "r"(nwt * E)
                       : "memory");
          asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        }
      }
    } else if (!DEFER && !NOROWS && valid) {
      const i64 t = tc0 + tl;
#pragma unroll
      for (int u = part; u < E / 4; u += TPT) store16(a.probs + t * E + 4 * u, lds16(smem_u32(prow + 4 * u)));
#pragma unroll
      for (int u = part; u < E / 16; u += TPT) store16(a.routing_map + t * E + 16 * u, lds16(smem_u32(mrow + 16 * u)));
    }
    if constexpr (TRACE) {
      __syncwarp();
      stampw(kMoeRunTrWarp + 4 * warp + 3);
    }
  };
  if constexpr (BIASPRE) {
    // BIASPRE: warp 0 clamps the bias in place (a NaN bias counts as −inf: fmaxf drops the NaN; every later use
    // clamps again, idempotent) and forms max |finite bias| once, then publishes both on mbarrier W + 1 (its arrive
    // releases at CTA scope what the warp wrote before its __syncwarp; the waiters' try_wait acquires).
    if (warp == 0) {
      wait_bar(&bars[W]);
      float bm = 0.0f;
      for (int e = lane; e < E; e += 32) {
        const float b = sbias[e];
        if (fabsf(b) < __int_as_float(0x7f800000)) bm = fmaxf(bm, fabsf(b));
        sbias[e] = fmaxf(b, neg_inf);
      }
#pragma unroll
      for (int o = 16; o; o >>= 1) bm = fmaxf(bm, __shfl_xor_sync(ALL, bm, o));
      if (lane == 0) smisc[0] = bm;
      __syncwarp();
      if (lane == 0) mbar_arrive(&bars[W + 1]);
    }
  }
  constexpr int BB = BIASPRE ? W + 1 : W;  // the barrier behind which the bias is read
  if (nw > 0) {
    if (REGLATE && warp >= RW) {  // the register loads into the shared rows (the scoreboard waits for them)
      if (valid) {
#pragma unroll
        for (int q = 0; q < NRL; ++q) sts16(smem_u32(rows + tl * RSF + 4 * (q * TPT + part)), rreg[q]);
      }
      __syncwarp();
    } else {
      wait_bar(&bars[warp]);  // the warp's rows
    }
    stampw(kMoeRunTrWarp + 4 * warp);
    // A lane past the CTA's tokens computes on its warp's first row (discarded: it writes nothing).
    const int rt = valid ? tl : warp * TPW;
    float* zrow = rows + rt * RSF + part * EPT;  // the thread's experts: scores (BIAS) or logits, then the outputs
    const float* brow = sbias + part * EPT;
    const int e0 = part * EPT;
    // Position c of the thread's arrays holds expert e0 + xo(c): the 16-byte chunks in an order rotated per part
    // (E = 256, rows padded by 32 bytes), so that the 8 lanes of a quarter-warp (2 tokens × 4 parts at 16 threads a
    // token, 4 × 2 at 8) touch 8 distinct bank groups: the parts whose row offsets part·EPT agree modulo 32 words
    // (parts 0 / 2 and 1 / 3 at 16, 0 / 1 at 8) differ by one chunk. Else in order. Selection does not depend on the
    // order within a block.
    constexpr int NC4 = EPT / 4;
    constexpr bool ROT = E == 256 && NB == 1;
    const int rot = ROT ? (part * EPT / 32) & 1 : 0;
    auto xo = [&](int c) { return ROT ? 4 * (((c >> 2) + rot) & (NC4 - 1)) + (c & 3) : c; };
    auto xpos = [&](int o) { return ROT ? 4 * (((o >> 2) - rot) & (NC4 - 1)) + (o & 3) : o; };  // inverse of xo

    Key key[EPT];
    // The exact keys: σ = 1/(1 + e^−z) correctly rounded for every expert of the thread (as moe_route_kernel: the
    // short form for z > −87, else kiln_sigmoid), stored over the logits; keys σ + bias. Without a bias the logits.
    // The thread's EPT values of a shared row (its logits / scores, or the bias) in position order, 16 bytes a load.
    auto lds_row = [&](const float* r, float (&out)[EPT]) {
#pragma unroll
      for (int c = 0; c < EPT; c += 4) {
        const Vec16 q = lds16(smem_u32(r + xo(c)));
#pragma unroll
        for (int j = 0; j < 4; ++j) out[c + j] = __uint_as_float(q.w[j]);
      }
    };
    auto exact_keys = [&] {
      float v[EPT];
      lds_row(zrow, v);
      if constexpr (BIAS) {
        float zmin = __int_as_float(0x7f800000);
#pragma unroll
        for (int c = 0; c < EPT; ++c) zmin = fminf(zmin, v[c]);  // (the thread's smallest logit picks the σ form)
        if (!(zmin <= -87.0f)) {
#pragma unroll
          for (int c = 0; c < EPT; ++c) {
            const float d = kiln_one_plus_exp_lt87(-v[c]);
            const float r = rcp_ftz(d);
            v[c] = __fmaf_rn(r, __fmaf_rn(-d, r, 1.0f), r);
          }
        } else {
#pragma unroll
          for (int c = 0; c < EPT; ++c) v[c] = kiln_sigmoid(v[c]);
        }
        if (valid) {
#pragma unroll
          for (int c = 0; c < EPT; c += 4)
            sts16(smem_u32(zrow + xo(c)), Vec16{{__float_as_uint(v[c]), __float_as_uint(v[c + 1]),
                                             __float_as_uint(v[c + 2]), __float_as_uint(v[c + 3])}});
        }
        wait_bar(&bars[BB]);  // the bias (long landed)
        // A NaN bias counts as −inf (fmaxf drops the NaN): every key of its expert is −inf, the reference's NaN key.
        float b[EPT];
        lds_row(brow, b);
#pragma unroll
        for (int c = 0; c < EPT; ++c) key[c] = __fadd_rn(v[c], BIASPRE ? b[c] : fmaxf(b[c], neg_inf));
      } else {
#pragma unroll
        for (int c = 0; c < EPT; ++c) key[c] = ordered_bits(v[c] != v[c] ? neg_inf : v[c]);
      }
    };
    // APPROX: keys from σ̃ = rcp.approx(1 + ex2.approx(max(−z·log2 e, −20·log2 e))) (4 instructions, not ≈ 19), within
    // dk = 2^−18 + (1 + max|finite bias|)·2^−21 of the exact keys (|σ̃ − σ| ≲ 2^−21 for every z, NaN included: both
    // 1; each key's add rounds by ≤ (1 + |bias|)·2^−24). The kept groups are the exact ones when the lowest kept and
    // the highest dropped approximate group score differ by more than 4·dk + (1 + max|bias|)·2^−20 (else the warp
    // recomputes exact keys: a near tie); every exact pick then has an approximate key ≥ lo − 2·dk, so the
    // candidates are taken with that slack and only they get their exact σ (stored over their logits; spread over the
    // token's threads as the list entries are), from which the list's keys, the ranks and the probs come: the same
    // bits as the exact path.
    bool approx = false;
    float dk = 0.0f, bm1 = 1.0f;  // APPROX: the key error bound, 1 + max|finite bias|
    if constexpr (NOKEYS) {
#pragma unroll
      for (int c = 0; c < EPT; ++c) key[c] = Key{};
    } else if constexpr (APPROX) {
      float bm = 0.0f, v[EPT];
      lds_row(zrow, v);
#pragma unroll
      for (int c = 0; c < EPT; ++c) {
        key[c] = rcp_ftz(__fadd_rn(1.0f, ex2_ftz(fmaxf(__fmul_rn(v[c], -1.44269504f), -28.8539009f))));
      }
      wait_bar(&bars[BB]);  // the bias (long landed)
      lds_row(brow, v);
      if constexpr (BIASPRE) {
#pragma unroll
        for (int c = 0; c < EPT; ++c) key[c] = __fadd_rn(key[c], v[c]);  // (clamped by warp 0)
        bm = smisc[0];
      } else {
#pragma unroll
        for (int c = 0; c < EPT; ++c) {
          if (fabsf(v[c]) < __int_as_float(0x7f800000)) bm = fmaxf(bm, fabsf(v[c]));
          key[c] = __fadd_rn(key[c], fmaxf(v[c], neg_inf));
        }
#pragma unroll
        for (int o = TPW; o < 32; o <<= 1) bm = fmaxf(bm, __shfl_xor_sync(ALL, bm, o));
      }
      bm1 = 1.0f + bm;
      dk = __fmaf_rn(bm1, 4.76837158e-07f, 3.81469727e-06f);  // 2^−18 + (1 + bm)·2^−21
      approx = true;
    } else {
      exact_keys();
    }
    auto kmax = [](Key x, Key y) -> Key {
      if constexpr (BIAS) return fmaxf(x, y); else return max(x, y);
    };
    auto kmin = [](Key x, Key y) -> Key {
      if constexpr (BIAS) return fminf(x, y); else return min(x, y);
    };
    auto kfloat = [](Key x) -> float {
      if constexpr (BIAS) return x; else return ordered_float(x);
    };
    auto kord = [](Key x) -> u32 {
      if constexpr (BIAS) return ordered_bits(x); else return x;
    };
    // The key of position c (expert e0 + xo(c)), recomputed from shared memory (the same operations: the same bits).
    auto key_at = [&](int c) -> u32 {
      const int o = xo(c);
      if constexpr (BIAS) return ordered_bits(__fadd_rn(zrow[o], fmaxf(brow[o], neg_inf)));
      else {
        const float z = zrow[o];
        return ordered_bits(z != z ? neg_inf : z);
      }
    };
    // DRANK: an entry (ordered key k, 0xffff − e) is stored as the bits of the double 2^52 + k·2^16 + (0xffff − e) —
    // the same order as the u64 k << 32 | (0xffff − e) both as doubles and as u64 bits, and exact (< 2^53).
    auto enc = [](u32 k, u32 lo16) -> u64 {
      if constexpr (DRANK) return static_cast<u64>(0x43300000u | (k >> 16)) << 32 | (k << 16 | lo16);
      else return static_cast<u64>(k) << 32 | lo16;
    };
    auto entry = [&](int c) -> u64 {
      if constexpr (DRANK) return enc(key_at(c), static_cast<u32>(0xffff - (e0 + xo(c))));
      else
      return static_cast<u64>(key_at(c)) << 32 | static_cast<u32>(0xffff - (e0 + xo(c)));
    };

    // The exact σ of expert e0 + o from its logit (the same bits as the thread-wide choice in exact_keys: both forms
    // agree for z > −87), and its key.
    auto exact_sigmoid = [](float z) -> float {
      if (!(z <= -87.0f)) {
        const float d = kiln_one_plus_exp_lt87(-z);
        const float r = rcp_ftz(d);
        return __fmaf_rn(r, __fmaf_rn(-d, r, 1.0f), r);
      }
      return kiln_sigmoid(z);
    };
    // APPROX: the exact entry of a candidate listed as 0xffff − e: its exact σ (written over its logit in the token's
    // row `trow`: the probs read it, returned in sg) and its exact key over 0xffff − e.
    auto exact_entry = [&](float* trow, u64 listed, float& sg) -> u64 {
      const int e = 0xffff - static_cast<int>(listed & 0xffffu);
      sg = exact_sigmoid(trow[e]);
      trow[e] = sg;
      if constexpr (DRANK) return enc(ordered_bits(__fadd_rn(sg, fmaxf(sbias[e], neg_inf))), static_cast<u32>(0xffff - e));
      else
      return static_cast<u64>(ordered_bits(__fadd_rn(sg, fmaxf(sbias[e], neg_inf)))) << 32 |
             static_cast<u32>(0xffff - e);
    };
    stampw(kMoeRunTrWarp + 4 * warp + 1);
    // Pick r of the thread's token is expert e (its rank among the CTA's tokens routed to e: the token mask).
    auto record = [&](int r, int e) {
      pk[r] = e;
      atomicOr(&emask[e * NMW + (tl >> 5)], 1u << (tl & 31));
    };
    // K argmax rounds over the thread's candidates (the set bits of the first H words of m): each round the token's
    // threads take their largest entry, the owner of the token's maximum clears its bit and, for a valid token,
    // hands (round, expert offset) to `pick` (exact; the fallback where many keys are equal).
    auto argmax_rounds = [&](u32 (&m)[2], int H, auto&& pick) {
#pragma unroll 1
      for (int r = 0; r < K; ++r) {
        u64 best = 0ull;
#pragma unroll
        for (int h = 0; h < H; ++h)
          for (u32 mm = m[h]; mm; mm &= mm - 1u) {
            const u64 x = entry(32 * h + __ffs(mm) - 1);
            best = x > best ? x : best;
          }
        u64 top = best;
#pragma unroll
        for (int o = TPW; o < 32; o <<= 1) {
          const u64 x = __shfl_xor_sync(ALL, top, o);
          top = x > top ? x : top;
        }
        if (top != 0ull && best == top) {
          const int o = 0xffff - static_cast<int>(top & 0xffffu) - e0, c = xpos(o);
          if (H == 1 || c < 32) m[0] &= ~(1u << c);
          else m[1] &= ~(1u << (c - 32));
          if (valid) pick(r, o);
        }
      }
    };
    if constexpr (NOSELECT) {
      // (timing only: keys formed, no selection; NOKEYS: not even the keys)
      bool hit = false;
      if constexpr (!NOKEYS) {
        Key mx = key[0];
#pragma unroll
        for (int c = 1; c < EPT; ++c) mx = kmax(mx, key[c]);
        hit = kfloat(mx) == 1234.5f;
      }
      if (valid && part < K) record(part, e0 + (hit ? 1 : 0));
    } else if constexpr (LEAN) {
      // LEAN (moe_routing_args.h kMoeRunLean): the same selection in fewer instructions and shorter chains.
      // The group: the thread's two best keys by a tree (depth 4, not a 16-long chain), merged with the partner's.
      auto lean_groups = [&](Key& lo_out, bool& kept_out, bool& gap_out) {
        Key h[EPT / 2], l[EPT / 2];
#pragma unroll
        for (int i = 0; i < EPT / 2; ++i) {
          h[i] = kmax(key[2 * i], key[2 * i + 1]);
          l[i] = kmin(key[2 * i], key[2 * i + 1]);
        }
#pragma unroll
        for (int w = EPT / 2; w > 1; w >>= 1)
#pragma unroll
          for (int i = 0; i < w / 2; ++i) {
            const Key n2 = kmax(kmin(h[2 * i], h[2 * i + 1]), kmax(l[2 * i], l[2 * i + 1]));
            h[i] = kmax(h[2 * i], h[2 * i + 1]);
            l[i] = n2;
          }
        Key a1 = h[0], a2 = l[0];
        {
          const Key b1 = __shfl_xor_sync(ALL, a1, TPW), b2 = __shfl_xor_sync(ALL, a2, TPW);
          a2 = kmax(kmin(a1, b1), kmax(a2, b2));
          a1 = kmax(a1, b1);
        }
        // The group score (a NaN sum counts as −inf; never −0, so float order is the reference's ordered-bits
        // order) and its rank among the token's G groups (score desc, group asc) from G shuffles: first the groups
        // strictly above (two instructions a group); where that keeps other than TG groups of a token (equal scores
        // at the cut) the ranks again with the ties broken by group index. With approximate keys also the highest
        // score strictly below, for the kept groups' margin (judged by the thread of rank TG − 1).
        const float sc = fmaxf(__fadd_rn(kfloat(a1), kfloat(a2)), neg_inf);
        // (approximate keys: the lowest kept group is certain when no other group lies within the margin below it)
        const float floor_sc = __fsub_rn(sc, __fmaf_rn(bm1, 1.90734863e-06f, 4.0f * dk));  // 4·dk + (1 + bm)·2^−19
        // The G scores and second-best keys gathered at once (independent shuffles, one latency); the kept groups of
        // both tokens from one ballot (lane ti + 2·p votes for part p's group): lo = the smallest second-best key of
        // the kept groups, formed in the thread (no reduction rounds).
        int rank = 0, near = 0;
        float og[G];
        Key o2[G];
#pragma unroll
        for (int g = 0; g < G; ++g) {
          og[g] = __shfl_sync(ALL, sc, ti + TPW * (SPAN * g));
          if constexpr (!LEAN4) o2[g] = __shfl_sync(ALL, a2, ti + TPW * (SPAN * g));
          if constexpr (GRP5) {
            // (GRP5: og > sc exactly when sc − og < 0 — scores are never NaN nor −0, a difference of unequal floats is
            // never ±0 (no flush), equal infinities give the canonical NaN, sign clear — so the sign bit is the
            // comparison: FADD + LEA.HI a group. near counts og < floor_sc the same way: itself excluded below.)
            rank += static_cast<int>(__float_as_uint(__fsub_rn(sc, og[g])) >> 31);
            if (approx) near += static_cast<int>(__float_as_uint(__fsub_rn(og[g], floor_sc)) >> 31);
          } else {
          rank -= static_cast<int>(set_gt_u32(og[g], sc));         // (set: 0 or 0xffffffff, no predicates)
          if (approx) near -= static_cast<int>(set_ge_u32(og[g], floor_sc));  // (itself included)
          }
        }
        if constexpr (GRP5) near = G - near;  // (og ≥ floor_sc: the groups not below it)
        u32 kb = __ballot_sync(ALL, rank < TG);
        // (warp-uniform: a token whose strict ranks keep other than TG groups has equal scores at the cut)
        // (GRP5: strict ranks keep at least TG groups of every token — the TG best all have rank < TG — and every lane
        // of the warp votes for a real row, so the ballot holds more than TPW·SPAN·TG lanes exactly when a tie does)
        const bool tie = GRP5 ? __popc(kb) != TPW * SPAN * TG
                              : __popc(kb & 0x55555555u) != SPAN * TG || __popc(kb & 0xaaaaaaaau) != SPAN * TG;
        if (tie) {
          const int mg = part / SPAN;
          rank = 0;
#pragma unroll
          for (int g = 0; g < G; ++g) rank += og[g] > sc || (og[g] == sc && g < mg) ? 1 : 0;
          kb = __ballot_sync(ALL, rank < TG);
        }
        kept_out = rank < TG;
        // (approximate keys with equal scores at the cut: not certain either)
        gap_out = !approx || (!tie && (rank != TG - 1 || near == TG));
        Key lo = __int_as_float(0x7f800000);
        if constexpr (LEAN4) {
          // (LEAN4: lo = the minimum of the kept groups' second-best keys by log2 G xor rounds over the token's groups —
          // log2 G shuffles + minima instead of G shuffles and G predicated minima; both threads of a group hold the
          // group's a2 after the partner merge; fminf is exact and order-free: the same bits)
          lo = kept_out ? a2 : lo;
#pragma unroll
          for (int o = TPW * SPAN; o < 32; o <<= 1) lo = kmin(lo, __shfl_xor_sync(ALL, lo, o));
        } else {
          kb >>= ti;  // bit TPW·SPAN·g: group g of the thread's token kept
#pragma unroll
          for (int g = 0; g < G; ++g)
            if (kb & (1u << (TPW * SPAN * g))) lo = kmin(lo, o2[g]);
        }
        lo_out = lo;
      };
      Key lo;
      bool kept, gap_ok;
      lean_groups(lo, kept, gap_ok);
      if constexpr (APPROX) {
        if (__any_sync(ALL, valid && !gap_ok)) {  // a near tie of group scores: exact keys for the warp
          approx = false;
          exact_keys();
          lean_groups(lo, kept, gap_ok);
        }
        if (approx) lo = __fsub_rn(lo, 2.0f * dk);
      }
      // Candidates (kept, key ≥ lo) appended to the token's list at positions from a shared-memory counter (list
      // slot CAP + 1, zero from the kernel start): the list's order does not matter, ranks are counted.
      u32 m[2] = {0u, 0u};
      if constexpr (LEAN4) {
        // (LEAN4: bit c = key[c] ≥ lo from the sign of key[c] − lo, shifted in by funnel shifts — FADD + SHF a key,
        // not FSETP + SEL + LOP3. key − lo is < 0 exactly when key < lo: a difference of floats is ±0 only for equal
        // operands, and then +0 (round to nearest, no flush: keys are never NaN, never −0); equal infinities give the
        // canonical NaN 0x7fffffff, sign 0: ≥, as the comparison. Two chains (positions EPT/2 … EPT − 1 and 0 …
        // EPT/2 − 1), each filled from its highest position down, so that the last shifted in sits in bit 0.)
        static_assert(EPT % 2 == 0 && EPT <= 32, "LEAN4: two chains of keys");
        constexpr u32 EMASK = EPT == 32 ? 0xffffffffu : (1u << EPT) - 1u;
        u32 lt_hi = 0u, lt_lo = 0u;
#pragma unroll
        for (int c = EPT / 2 - 1; c >= 0; --c) {
          lt_hi = __funnelshift_l(__float_as_uint(__fsub_rn(key[c + EPT / 2], lo)), lt_hi, 1);
          lt_lo = __funnelshift_l(__float_as_uint(__fsub_rn(key[c], lo)), lt_lo, 1);
        }
        m[0] = kept ? ~(lt_hi << (EPT / 2) | lt_lo) & EMASK : 0u;
      } else if constexpr (LEAN3) {
        // (four independent chains of set + or, not one 16-long chain of predicated adds)
        u32 q4[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int c = 0; c < EPT; ++c) q4[c & 3] |= set_ge_u32(key[c], lo) & (1u << c);
        m[0] = kept ? (q4[0] | q4[1]) | (q4[2] | q4[3]) : 0u;
      } else {
#pragma unroll
        for (int c = 0; c < EPT; ++c)
          if (kept && key[c] >= lo) m[0] |= 1u << c;
      }
      u64* lst = list + tl * (CAP + 2);
      u32* cnt = reinterpret_cast<u32*>(lst + CAP + 1);
      const u32 mine = __popc(m[0]);
      u32 pos = 0;
      if (valid && mine) pos = atomicAdd(cnt, mine);
      if constexpr (LEAN4) {
        // (LEAN4: the appends' value chosen once — approximate keys list expert indices — not per candidate, where
        // the compiler kept both the index and the exact entry's two shared loads behind a branch in each append)
        auto append = [&](auto&& val) {
          auto put = [&](int c, u32 at) {
            if (at < CAP) lst[at] = val(c);
          };
          u32 mm = m[0];
          if (mm) {  // (the first two unrolled, as LEAN3)
            const u32 m2 = mm & (mm - 1u);
            put(__ffs(mm) - 1, pos);
            if (m2) put(__ffs(m2) - 1, pos + 1);
            mm = m2 & (m2 - 1u);
            pos += 2;
          }
          for (; mm; mm &= mm - 1u) put(__ffs(mm) - 1, pos++);
        };
        if (valid) {
          if (approx) {
            // (approximate keys: the mask rotated once into expert order — position c holds expert offset xo(c) =
            // c + 4·rot mod EPT (E = 256; else c) — so an append is its bit's index, no per-candidate chunk
            // arithmetic; and a position past the list clamped to the unused slot CAP instead of a bounds branch:
            // with n > CAP the list is not read, the argmax rounds take the candidates from m)
            static_assert(!ROT || (EPT == 16 && NC4 == 4), "LEAN4: the rotation of 4 chunks of 4");
            const u32 m0 = m[0];
            u32 mm = ROT ? ((m0 << (4 * rot)) | (m0 >> (16 - 4 * rot))) & 0xffffu : m0;
            const u32 eb = 0xffffu - static_cast<u32>(e0);
            auto put = [&](u32 at, u32 mbits) {
              lst[min(at, static_cast<u32>(CAP))] = static_cast<u64>(eb - static_cast<u32>(__ffs(mbits) - 1));
            };
            if (mm) {
              const u32 m2 = mm & (mm - 1u);
              put(pos, mm);
              if (m2) put(pos + 1, m2);
              mm = m2 & (m2 - 1u);
              pos += 2;
            }
            for (; mm; mm &= mm - 1u) put(pos++, mm);
          } else {
            append([&](int c) { return entry(c); });
          }
        }
      } else if (valid) {
        auto put = [&](int c, u32 at) {
          if (at < CAP) lst[at] = approx ? static_cast<u64>(0xffff - (e0 + xo(c))) : entry(c);
        };
        u32 mm = m[0];
        if constexpr (LEAN3) {
          // (the first two candidates unrolled: independent stores, no loop-carried chain)
          if (mm) {
            const u32 m2 = mm & (mm - 1u);
            put(__ffs(mm) - 1, pos);
            if (m2) put(__ffs(m2) - 1, pos + 1);
            mm = m2 & (m2 - 1u);
            pos += 2;
          }
        }
        for (; mm; mm &= mm - 1u) put(__ffs(mm) - 1, pos++);
      }
      __syncwarp();
      const int n = valid ? static_cast<int>(*cnt) : 0;
      if (!__any_sync(ALL, n > CAP)) {
        u64 me = 0;
        float my_sg = 0.0f;
        if constexpr (APPROX) {
          if (approx) {
            // Each candidate's exact σ (stored over its logit: the probs read it) and exact key, spread over the
            // token's threads as the entries are.
            if (valid) {
              float* trow = rows + tl * RSF;
              if constexpr (LEAN4) {
                // (LEAN4: n ≤ CAP = 2·TPT here, so at most two slots a thread: no trip-count arithmetic)
                static_assert(CAP == 2 * TPT, "LEAN4: two list slots a thread");
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  const int qi = part + TPT * h;
                  if (qi < n) {
                    float sg;
                    const u64 x = exact_entry(trow, lst[qi], sg);
                    lst[qi] = x;
                    if (h == 0) {
                      me = x;
                      my_sg = sg;
                    }
                  }
                }
              } else {
              for (int qi = part; qi < n; qi += TPT) {
                float sg;
                const u64 x = exact_entry(trow, lst[qi], sg);
                lst[qi] = x;
                if (qi == part) {
                  me = x;
                  my_sg = sg;
                }
              }
              }
            }
            __syncwarp();
          }
        }
        if (valid) {
          // Ranks by counting the larger entries: the first 16 slots at once (the slots past n are 0, below every
          // entry), the rest (n > 16, rare) in a loop.
          if constexpr (LEAN4) {
            // (LEAN4: at most two slots a thread, unrolled: no trip-count arithmetic)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int qi = part + TPT * h;
              if (qi < n) {
                if (h != 0 || !approx) me = lst[qi];
                // (LEAN4: x > me counted as the carry out of the 64-bit x + ~me — x + 2^64 − 1 − me ≥ 2^64 exactly
                // when x > me — added by addc: 2.5 instructions an entry where ptxas pairs the carries, not two
                // compares, an add and a predicated move)
                u32 rank_u = 0u;
                if constexpr (DRANK) {
                  // (DRANK: x > me exactly when the double me − x < 0 — both are integers in [2^52, 2^52 + 2^48) or an
                  // empty slot's +0, so the difference is exact and ±0 only for x = me — its sign bit added by LEA.HI:
                  // a DADD (FP64 pipe) and one ALU instruction an entry instead of 2.5 ALU carries)
                  const double md = __longlong_as_double(static_cast<long long>(me));
#pragma unroll
                  for (int r = 0; r < 16; r += 2) {
                    const Vec16 pr = lds16(smem_u32(lst + r));
                    const double d0 = __dsub_rn(md, __hiloint2double(static_cast<int>(pr.w[1]), static_cast<int>(pr.w[0])));
                    const double d1 = __dsub_rn(md, __hiloint2double(static_cast<int>(pr.w[3]), static_cast<int>(pr.w[2])));
                    rank_u += static_cast<u32>(__double2hiint(d0)) >> 31;
                    rank_u += static_cast<u32>(__double2hiint(d1)) >> 31;
                  }
                } else {
                const u32 nlo = ~static_cast<u32>(me), nhi = ~static_cast<u32>(me >> 32);
#pragma unroll
                for (int r = 0; r < 16; r += 2) {
                  const Vec16 pr = lds16(smem_u32(lst + r));
                  asm("{\n.reg .u32 t;\n"
                      "add.cc.u32 t, %3, %1;\naddc.cc.u32 t, %4, %2;\naddc.u32 %0, %0, 0;\n"
                      "add.cc.u32 t, %5, %1;\naddc.cc.u32 t, %6, %2;\naddc.u32 %0, %0, 0;\n}"
                      : "+r"(rank_u)
                      : "r"(nlo), "r"(nhi), "r"(pr.w[0]), "r"(pr.w[1]), "r"(pr.w[2]), "r"(pr.w[3]));
                }
                }
                const int rank = moe_count_larger(lst, 16, n, me, static_cast<int>(rank_u));
                if (rank < K) {
                  const int e = 0xffff - static_cast<int>(me & 0xffffu);
                  record(rank, e);
                  sp[tl * KP + rank] = approx && h == 0 ? my_sg : rows[tl * RSF + e];
                }
              }
            }
          } else {
          for (int qi = part; qi < n; qi += TPT) {
            if (qi != part || !approx) me = lst[qi];
            const int rank = moe_count_larger(lst, 16, n, me, moe_count_larger(lst, 0, 16, me));
            if (rank < K) {
              // (the pick's exact σ for the probs: from the σ pass, or stored over its logit)
              const int e = 0xffff - static_cast<int>(me & 0xffffu);
              record(rank, e);
              sp[tl * KP + rank] = approx && qi == part ? my_sg : rows[tl * RSF + e];
            }
          }
          }
        }
      } else {
        // Many equal keys: K argmax rounds over the candidates (exact, slower), as below.
        if constexpr (APPROX) {
          if (approx && valid) {
            for (u32 mm = m[0]; mm; mm &= mm - 1u) {
              const int o = xo(__ffs(mm) - 1);
              zrow[o] = exact_sigmoid(zrow[o]);
            }
          }
        }
        argmax_rounds(m, 1, [&](int r, int o) {
          record(r, e0 + o);
          sp[tl * KP + r] = zrow[o];  // (exact σ)
        });
      }
    } else {
    bool kept[NB];
    Key lo;
    bool gap_ok = true;  // APPROX: the kept groups are certain
    // The kept groups (fewer than TG groups rank above: score desc, group asc) from each group's two best keys, and
    // lo = the smallest of the kept groups' second-best keys over the token's threads.
    auto groups = [&] {
      // Each block's two largest keys.
      Key a1[NB], a2[NB];
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        if constexpr (BIAS) a1[b] = a2[b] = neg_inf; else a1[b] = a2[b] = 0u;
#pragma unroll
        for (int c = b * BS; c < b * BS + BS; ++c) {
          a2[b] = kmax(a2[b], kmin(a1[b], key[c]));
          a1[b] = kmax(a1[b], key[c]);
        }
      }
      if constexpr (SPAN > 1) {
        // A group spans SPAN threads (consecutive parts): merge their two best keys (every thread gets the group's).
#pragma unroll
        for (int o = 1; o < SPAN; o <<= 1) {
          const Key b1 = __shfl_xor_sync(ALL, a1[0], TPW * o), b2 = __shfl_xor_sync(ALL, a2[0], TPW * o);
          a2[0] = kmax(kmin(a1[0], b1), kmax(a2[0], b2));
          a1[0] = kmax(a1[0], b1);
        }
      }
      // Kept groups: fewer than TG groups rank above (score desc, group asc); the bound lo over the kept blocks.
      if constexpr (BIAS) lo = __int_as_float(0x7f800000); else lo = 0xffffffffu;
      if constexpr (G > 1) {
        u32 gsc[NB];
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          float sc = __fadd_rn(kfloat(a1[b]), kfloat(a2[b]));
          sc = sc != sc ? neg_inf : sc;
          gsc[b] = ordered_bits(sc);
        }
        int rank[NB];
#pragma unroll
        for (int b = 0; b < NB; ++b) rank[b] = 0;
        const int mg = part / SPAN * NB;  // the thread's first group
#pragma unroll
        for (int p = 0; p < TPT; p += SPAN)
#pragma unroll
          for (int qb = 0; qb < NB; ++qb) {
            const u32 o = __shfl_sync(ALL, gsc[qb], ti + TPW * p);
            const int og = p / SPAN * NB + qb;
#pragma unroll
            for (int b = 0; b < NB; ++b) rank[b] += (o > gsc[b] || (o == gsc[b] && og < mg + b)) ? 1 : 0;
          }
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          kept[b] = rank[b] < TG;
          if (kept[b]) lo = kmin(lo, a2[b]);
        }
        if constexpr (APPROX && TG < G) {
          if (approx) {
            // The lowest kept and the highest dropped approximate group score over the token's threads.
            float lk = __int_as_float(0x7f800000), hd = neg_inf;
#pragma unroll
            for (int b = 0; b < NB; ++b) {
              const float sc = ordered_float(gsc[b]);
              if (kept[b]) lk = fminf(lk, sc);
              else hd = fmaxf(hd, sc);
            }
#pragma unroll
            for (int o = TPW; o < 32; o <<= 1) {
              lk = fminf(lk, __shfl_xor_sync(ALL, lk, o));
              hd = fmaxf(hd, __shfl_xor_sync(ALL, hd, o));
            }
            gap_ok = __fsub_rn(lk, hd) > __fmaf_rn(bm1, 9.53674316e-07f, 4.0f * dk);  // 4·dk + (1 + bm)·2^−20
          }
        }
      } else {
        kept[0] = true;
        lo = a2[0];
      }
#pragma unroll
      for (int o = TPW; o < 32; o <<= 1) lo = kmin(lo, __shfl_xor_sync(ALL, lo, o));
    };
    groups();
    if constexpr (APPROX) {
      if (__any_sync(ALL, valid && !gap_ok)) {  // a near tie of group scores: exact keys for the warp
        approx = false;
        gap_ok = true;
        exact_keys();
        groups();
      }
      if (approx) lo = __fsub_rn(lo, 2.0f * dk);
    }

    // Candidates: kept and key ≥ lo.
    u32 m[2] = {0u, 0u};
#pragma unroll
    for (int c = 0; c < EPT; ++c)
      if (kept[c / BS] && key[c] >= lo) m[c >> 5] |= 1u << (c & 31);
    const int mine = __popc(m[0]) + __popc(m[1]);
    int inc = mine;  // inclusive prefix over the token's parts
#pragma unroll
    for (int o = TPW; o < 32; o <<= 1) {
      const int x = __shfl_up_sync(ALL, inc, o);
      if (lane >= o) inc += x;
    }
    const int n = __shfl_sync(ALL, inc, ti + TPW * (TPT - 1));
    if (!__any_sync(ALL, valid && n > CAP)) {
      u64* lst = list + tl * (CAP + 2);
      if (valid) {
        int pos = inc - mine;
        // (APPROX: the expert only; its exact σ and key are formed below by the thread that ranks the entry.)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          for (u32 mm = m[h]; mm; mm &= mm - 1u) {
            const int c = 32 * h + __ffs(mm) - 1;
            lst[pos++] = approx ? static_cast<u64>(0xffff - (e0 + xo(c))) : entry(c);
          }
        if (part == TPT - 1) {
          lst[n] = 0ull;  // pads the list to pairs (0 ranks below every entry)
          lst[n + 1] = 0ull;
        }
      }
      __syncwarp();
      if constexpr (APPROX) {
        if (approx) {
          // Each candidate's exact σ (stored over its logit: the probs read it) and exact key, spread over the token's
          // threads as the entries are.
          if (valid) {
            float* trow = rows + tl * RSF;
            for (int qi = part; qi < n; qi += TPT) {
              float sg;
              lst[qi] = exact_entry(trow, lst[qi], sg);
            }
          }
          __syncwarp();
        }
      }
      if (valid) {
        for (int qi = part; qi < n; qi += TPT) {
          const u64 me = lst[qi];
          const int rank = moe_count_larger(lst, 0, n, me);
          if (rank < K) record(rank, 0xffff - static_cast<int>(me & 0xffffu));
        }
      }
    } else {
      // Many equal keys: K argmax rounds over the candidates (exact, slower). (APPROX: the thread's candidates' exact
      // σ over their logits first.)
      if constexpr (APPROX) {
        if (approx && valid) {
#pragma unroll
          for (int h = 0; h < 2; ++h)
            for (u32 mm = m[h]; mm; mm &= mm - 1u) {
              const int o = xo(32 * h + __ffs(mm) - 1);
              zrow[o] = exact_sigmoid(zrow[o]);
            }
        }
      }
      argmax_rounds(m, 2, [&](int r, int o) { record(r, e0 + o); });
    }
    }  // (!NOSELECT)
    __syncwarp();
    stampw(kMoeRunTrWarp + 4 * warp + 2);

    emit_rows();
  }

  // The CTA's counts per expert (token masks), then the chunk row and the superblock atomics (map) or the totals.
  if constexpr (FILLTMA3 && !NOFILL) {
    if (threadIdx.x == SW * 32) asm volatile("cp.async.bulk.wait_group 0;\nfence.proxy.async.global;" ::: "memory");
  }
  __syncthreads();
  stamp0(kMoeRunTrLoopDone);
  if constexpr (COOP) {
    // COOP: thread CT arrived at the first grid barrier; it waits for the grid (the superblock rows zeroed
    // everywhere), and a CTA barrier after it publishes that.
    if (threadIdx.x == CT) {
      const u32* word = grid_barrier_word();
      for (u32 it = 0;; ++it) {
        u32 cur;
        asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(cur) : "l"(word) : "memory");
        if ((coop_tok ^ cur) & 0x80000000u) break;
        if (it == (1u << 26)) __trap();
      }
    }
    __syncthreads();
  } else if constexpr (!PERSIST) {
    pdl_wait();  // moe_route_zero has zeroed the rows the atomics below add into
  }
  // The superblock rows this call adds into (PERSIST: the half of this call's parity) and the release arrival.
  const int nsup = !MAP ? 0
                   : FASTDIV ? moe_div(a.map.nchunks + a.map.super_chunks - 1, a.map.super_chunks)
                             : (a.map.nchunks + a.map.super_chunks - 1) / a.map.super_chunks;
  const int csb = FASTDIV ? moe_div(blockIdx.x, a.super_chunks) : blockIdx.x / a.super_chunks;  // (the CTA's superblock)
  const u32 par = PERSIST ? reinterpret_cast<const u32*>(smisc)[1] : 0u;
  int* const superp = a.super + (PERSIST ? static_cast<i64>(par) * a.persist_half : 0);
  auto arrive_release = [&] {  // (one thread)
    if constexpr (COOP || PERSIST) {
      coop_tok = grid_count_arrive(COOP ? grid_barrier_word() : a.arrive);
    } else {
      asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(a.arrive) : "memory");
    }
  };
  stamp0(kMoeRunTrPdl);
  for (int e = threadIdx.x; e < E; e += NTH) {
    int c = 0;
#pragma unroll
    for (int w = 0; w < NMW; ++w) c += __popc(emask[e * NMW + w]);
    if constexpr (MAP) {
      a.chunk_counts[static_cast<i64>(blockIdx.x) * E + e] = c;
      if (c) atomicAdd(&superp[static_cast<i64>(csb) * E + e], c);
    } else {
      if (c) atomicAdd(&a.counts[e], c);
    }
  }
  if constexpr (MAP) {
    // Grid-wide arrival: a release add (covering the CTA's count row and atomics, ordered before it by the barrier)
    // and an acquire spin; the whole grid is resident (checked on the host; a wait that never ends traps).
    if constexpr (COOP) {
      coop_tok = grid_barrier_arrive();
    } else {
      __syncthreads();
      if (!NOARRIVE && threadIdx.x == 0) arrive_release();
    }
    stamp0(kMoeRunTrCounted);
    if constexpr (PERSIST)  // (while the CTA waits for the others)
      moe_persist_zero_half<NTH>(a.super + static_cast<i64>(par ^ 1u) * a.persist_half, a.persist_half);
    if constexpr (LATE) fill_rows();
    if constexpr (DEFER && !NOROWS) {
      // The CTA's prob and map rows (staged in shared memory), 16-byte units over all threads.
      constexpr int UP = E / 4, UM = E / 16;
      for (int i = threadIdx.x; i < nct * (UP + UM); i += NTH) {
        const int t = i / (UP + UM), u = i - t * (UP + UM);
        const i64 g = static_cast<i64>(tc0 + t) * E;
        if (u < UP) store16(a.probs + g + 4 * u, lds16(smem_u32(rows + t * RSF + 4 * u)));
        else store16(a.routing_map + g + 16 * (u - UP), lds16(smem_u32(mapbuf + t * E + 16 * (u - UP))));
      }
    }
    stamp0(kMoeRunTrArrived);
    // EARLYPUT: thread i0 (the upper half first) puts pick i0 (and i0 + NTH …); the first one's token, expert and rank
    // among the chunk's tokens of that expert are read here, while thread 0 spins (the picks and token masks are final
    // since the loop barrier).
    const int i0 = EARLYPUT ? (static_cast<int>(threadIdx.x) + NTH / 2) % NTH : 0;
    auto pick_of = [&](int i, int& t, int& e, int& rank) {
      t = i / K;
      e = picks[t * KP + i % K];
      rank = __popc(emask[e * NMW + (t >> 5)] & ((1u << (t & 31)) - 1u));
#pragma unroll
      for (int w = 0; w < NMW - 1; ++w) rank += w < (t >> 5) ? __popc(emask[e * NMW + w]) : 0;
    };
    int pt0 = 0, pe0 = 0, pr0 = 0;
    if constexpr (EARLYPUT)
      if (i0 < nct * K) pick_of(i0, pt0, pe0, pr0);
    if constexpr (COOP) {
      if constexpr (NOWAIT) __syncthreads();
      else grid_barrier_wait(coop_tok);
      stamp0(kMoeRunTrWaited);
    } else {
      if (!NOARRIVE && !NOWAIT && threadIdx.x == 0) {
        if constexpr (PERSIST) grid_count_wait(a.arrive, coop_tok);
        else moe_wait_arrivals<32>(a.arrive);
        stamp(kMoeRunTrWaited);
      }
      __syncthreads();
    }
    if constexpr (!NOARRIVE && !NOTAIL) {
      int* base = reinterpret_cast<int*>(run_smem + L.base);
      // (TRACE: a stamp when thread 0's count rows have landed, through a dependency on their sum; and when its
      // block scan is done.)
      auto loaded = [&](int dep, int phase) {
        if constexpr (TRACE) {
          u64 t;
          asm volatile(
              "{\n.reg .pred p;\n.reg .u32 d;\nld.volatile.shared.u32 d, [%1];\nadd.u32 d, d, %2;\n"
              "setp.ne.u32 p, d, 0x7fc00001;\n@p mov.u64 %0, %%globaltimer;\n@!p mov.u64 %0, 1;\n}\n"
              : "=l"(t)
              : "r"(smem_u32(bars)), "r"(dep)
              : "memory");
          if (threadIdx.x == 0) tr[phase == 0 ? kMoeRunTrBasesLoaded : kMoeRunTrScanned] = t;
        }
      };
      MoeChunkMap cm = a.map;
      cm.super = superp;
      if constexpr (FILLTMA) {
        // The bulk −1 rows complete (long since) before the routed entries are stored over them (the bases' CTA
        // barriers order the puts after this).
        if (threadIdx.x == 0) {
          asm volatile("cp.async.bulk.wait_group 0;\nfence.proxy.async.global;" ::: "memory");
          if constexpr (TRACE) tr[kMoeRunTrFillDone] = gns();
        }
      }
      const int cb = blockIdx.x;
      if constexpr (EARLYPUT) {
        constexpr int EPTB = (E + NTH - 1) / NTH;
        int tot[EPTB], pre[EPTB];
        moe_chunk_rows<E, NTH, FASTDIV>(cm, cb, tot, pre);
        moe_chunk_bases_put<E, NTH, decltype(loaded), WARPPAD, FASTDIV>(
            cm, cb, tot, pre, base, reinterpret_cast<int*>(run_smem + L.wtot), loaded, [&](auto base_of) {
              for (int i = i0; i < nct * K; i += NTH) {
                int t = pt0, e = pe0, rank = pr0;
                if (i != i0) pick_of(i, t, e, rank);
                moe_put_row(a.map, E, static_cast<i64>(tc0) + t, e, base_of(e) + rank);
              }
            });
        stamp0(kMoeRunTrBases);
      } else {
        moe_chunk_bases<E, NTH, decltype(loaded), WARPPAD, FASTDIV>(cm, cb, base,
                                                           reinterpret_cast<int*>(run_smem + L.wtot), loaded);
        stamp0(kMoeRunTrBases);
        for (int i = threadIdx.x; i < nct * K; i += NTH) {
          const int t = i / K, e = picks[t * KP + i % K];
          int rank = __popc(emask[e * NMW + (t >> 5)] & ((1u << (t & 31)) - 1u));
#pragma unroll
          for (int w = 0; w < NMW - 1; ++w) rank += w < (t >> 5) ? __popc(emask[e * NMW + w]) : 0;
          moe_put_row(a.map, E, static_cast<i64>(tc0) + t, e, base[e] + rank);
        }
      }
      stamp0(kMoeRunTrPut);
    }
  }
  if constexpr (BULKST || FILLTMA) {
    if (lane == 0) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");  // (the rows' shared memory)
  }
  if constexpr (TRACE) {
    __syncthreads();
    if (threadIdx.x == 0) {
      tr[kMoeRunTrEndClk] = clk();
      tr[kMoeRunTrEndNs] = gns();
    }
  }
}

}  // namespace kiln
