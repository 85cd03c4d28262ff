// kiln/moe_routing.cuh — MoE top-k routing (forward, backward) and the padded row-id map.
//
// Top-k forward, per token t (L = 8 lanes per token for E % 32 == 0, each owning E/L contiguous experts):
//   s = softmax(z) or σ(z)                         (kiln_exp below: fixed fp32 operation sequence, CPU-reproducible)
//   key = s + bias (BIAS) or z (no bias: s is monotone in z, so the selection is the same and exact)
//   grouped (G > 1): group score = sum of the two largest keys of the group (DeepSeek-V3); keep the TG best groups
//   top-K of key over the kept experts, ties → lower expert index (one warp argmax over (key, −e) per pick)
//   p_e = s_e [/ (Σ_sel s + 1e-20), summed in pick order] · scale for selected e, 0 elsewhere
//   writes probs [T, E], routing_map [T, E] (u8 0/1) and the CTA's per-expert histogram hist[block, E]
// Backward from dprobs g, recomputing s from the logits and the selection from the routing map:
//   ds_k = scale·g_k (no renorm) or (scale/D)(g_k − Σ_j g_j s_j / D) for selected k, 0 elsewhere
//   dz = s ⊙ (ds − Σ ds·s) (softmax) or ds ⊙ s(1 − s) (sigmoid)
// Row-id map (three launches, no host sync): per-block histograms (from top-k, or map_count from any routing map) →
// map_scan (per expert: exclusive prefix over blocks, totals) → map_write (expert offsets off_e = Σ_{e'<e}
// roundup(c_e', P), each token's destination off_e + prefix[block][e] + rank of the token among the block's tokens
// routed to e, the inverse index list, padding entries −1). Integer counts only: deterministic by construction.
#pragma once
#include "kiln/common.cuh"
#include "kiln/moe_routing_args.h"
#include "kiln/pdl.cuh"

namespace kiln {

// exp(x) from a fixed sequence of correctly rounded fp32 operations (x clamped to [−104, 88.75], range reduction
// by n·ln2 in two fma steps, degree-7 Taylor polynomial in Horner form, scaling by 2^n in two exact-exponent
// multiplies), so a CPU reference running the same operations gets the same bits. Max error ≈ 2 ulp; exp(−inf) = 0,
// exp(+inf) = inf, and a NaN argument counts as −104 (result 0), so a NaN logit gets no probability.
__device__ __forceinline__ float kiln_exp(float x) {
  x = fminf(fmaxf(x, -104.0f), 88.75f);
  const float n = rintf(__fmul_rn(x, 1.44269504f));
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
  const int ni = static_cast<int>(n);
  const int n1 = ni >> 1, n2 = ni - n1;      // both in [−75, 64]: normal powers of two
  return __fmul_rn(__fmul_rn(p, __int_as_float((n1 + 127) << 23)), __int_as_float((n2 + 127) << 23));
}

// 1/(1 + e^−z): __frcp_rn is the correctly rounded reciprocal, the same value as an IEEE 1.0f / x.
__device__ __forceinline__ float kiln_sigmoid(float z) { return __frcp_rn(__fadd_rn(1.0f, kiln_exp(-z))); }

// Order-preserving map of a float to u32 (NaN must be sanitized first); 0 is below every float (−inf ↦ 0x007fffff).
__device__ __forceinline__ u32 ordered_bits(float f) {
  const u32 u = __float_as_uint(f);
  return u ^ (static_cast<u32>(static_cast<int>(u) >> 31) | 0x80000000u);  // negative: ~u; else u | sign bit
}

// Fixed-order butterfly sum (the CPU reference replays it lane by lane).
__device__ __forceinline__ float warp_sum_rn(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Warp argmax over (key, lowest index): every lane ends with the winner.
__device__ __forceinline__ void warp_argmax(u32& key, u32& idx) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const u32 ok = __shfl_xor_sync(0xffffffffu, key, o), oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (ok > key || (ok == key && oi < idx)) { key = ok; idx = oi; }
  }
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

// ---- top-k forward ----------------------------------------------------------------------------------------------
// L lanes per token (the largest power of two ≤ 16 with E % 4L == 0); lane j of a token owns the EL = E/L contiguous
// experts j·EL … j·EL + EL − 1 in registers, so a warp routes 32/L tokens at once and every cross-lane step
// (softmax max/sum, group merges, the K picks) takes log2(L) shuffles instead of 5. 16 lanes at E = 256: 4096 warps
// for 8192 tokens, enough to hide the latency of the picks' shuffle chains.
template <int E>
struct MoeTopkLanes {
  static constexpr int L = E % 64 == 0 ? 16 : E % 32 == 0 ? 8 : E % 16 == 0 ? 4 : E % 8 == 0 ? 2 : 1;
  static constexpr int EL = E / L;
};

// CTA: one map block of 32 tokens, 32·L threads.
template <int E, int K, bool SIGMOID, int G, int TG, bool RENORM, bool BIAS>
__global__ void __launch_bounds__(kMoeMapBlockTokens * MoeTopkLanes<E>::L, MoeTopkLanes<E>::EL <= 16 ? 2 : 1)
    moe_topk_fwd_kernel(const MoeTopkFwdArgs a) {
  constexpr int L = MoeTopkLanes<E>::L, EL = MoeTopkLanes<E>::EL, NC = EL / 4;
  constexpr int GS = E / G;
  constexpr int THREADS = kMoeMapBlockTokens * L;
  static_assert(E % 4 == 0 && EL <= 64 && K >= 1 && K <= E, "bad E/K");
  static_assert(G >= 1 && G <= 32 && E % G == 0 && TG >= 1 && TG <= G, "bad groups");
  static_assert(G == 1 || EL % GS == 0 || GS % EL == 0, "groups must align with the lanes' expert ranges");
  __shared__ int hist[E];
  for (int e = threadIdx.x; e < E; e += THREADS) hist[e] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31, j = lane & (L - 1), seg = lane & ~(L - 1);
  const int t = blockIdx.x * kMoeMapBlockTokens + static_cast<int>(threadIdx.x) / L;
  const bool valid = t < a.T;
  const int e0 = j * EL;
  const float neg_inf = -__int_as_float(0x7f800000);

  float z[EL], s[EL], kf[EL];
  {
    const float* zr = a.logits + static_cast<i64>(valid ? t : 0) * E + e0;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const Vec16 v = valid ? load16(zr + 4 * c) : Vec16{{0xff800000u, 0xff800000u, 0xff800000u, 0xff800000u}};
#pragma unroll
      for (int q = 0; q < 4; ++q) z[4 * c + q] = __uint_as_float(v.w[q]);
    }
  }
  if constexpr (SIGMOID) {
#pragma unroll
    for (int c = 0; c < EL; ++c) s[c] = kiln_sigmoid(z[c]);
  } else {
    float m = neg_inf;
#pragma unroll
    for (int c = 0; c < EL; ++c) m = fmaxf(m, z[c]);
#pragma unroll
    for (int o = L / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < EL; ++c) {
      s[c] = kiln_exp(__fsub_rn(z[c], m));
      sum = __fadd_rn(sum, s[c]);
    }
#pragma unroll
    for (int o = L / 2; o > 0; o >>= 1) sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, o));
#pragma unroll
    for (int c = 0; c < EL; ++c) s[c] = __fdiv_rn(s[c], sum);
  }
  // Selection keys; NaN counts as −inf.
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    float b[4] = {0.f, 0.f, 0.f, 0.f};
    if constexpr (BIAS) {
      const Vec16 v = load16(a.bias + e0 + 4 * c);
#pragma unroll
      for (int q = 0; q < 4; ++q) b[q] = __uint_as_float(v.w[q]);
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float k = BIAS ? __fadd_rn(s[4 * c + q], b[q]) : z[4 * c + q];
      kf[4 * c + q] = k != k ? neg_inf : k;
    }
  }
  unsigned long long live = EL == 64 ? ~0ull : (1ull << EL) - 1ull;
  if constexpr (G > 1) {
    // Group scores (the sum of a group's two largest keys) and the TG best groups, ties to the lower group.
    constexpr int NGL = EL % GS == 0 ? EL / GS : 1;      // whole groups in this lane …
    constexpr int SPAN = EL % GS == 0 ? 1 : GS / EL;      // … or lanes sharing one group
    float gsc[NGL];
#pragma unroll
    for (int q = 0; q < NGL; ++q) {
      constexpr int W = EL % GS == 0 ? GS : EL;
      float a1 = neg_inf, a2 = neg_inf;
#pragma unroll
      for (int c = q * W; c < q * W + W; ++c) {
        const float v = kf[c];
        if (v > a1) { a2 = a1; a1 = v; } else if (v > a2) { a2 = v; }
      }
#pragma unroll
      for (int o = 1; o < SPAN; o <<= 1) {
        const float b1 = __shfl_xor_sync(0xffffffffu, a1, o), b2 = __shfl_xor_sync(0xffffffffu, a2, o);
        if (b1 > a1) { a2 = fmaxf(a1, b2); a1 = b1; } else { a2 = fmaxf(a2, b1); }
      }
      const float sc = GS >= 2 ? __fadd_rn(a1, a2) : a1;
      gsc[q] = sc != sc ? neg_inf : sc;
    }
    const int g0 = EL % GS == 0 ? j * NGL : j / SPAN;  // group of gsc[0]
    u32 kept = 0;
#pragma unroll 1
    for (int r = 0; r < TG; ++r) {
      unsigned long long best = 0;
#pragma unroll
      for (int q = 0; q < NGL; ++q) {
        const u32 g = static_cast<u32>(g0 + q);
        const unsigned long long k =
            (kept >> g & 1u) ? 0ull : (static_cast<unsigned long long>(ordered_bits(gsc[q])) << 32) | (0xffffffffu - g);
        best = k > best ? k : best;
      }
#pragma unroll
      for (int o = 1; o < L; o <<= 1) {
        const unsigned long long other = __shfl_xor_sync(0xffffffffu, best, o);
        best = other > best ? other : best;
      }
      kept |= 1u << (0xffffffffu - static_cast<u32>(best));
    }
#pragma unroll
    for (int c = 0; c < EL; ++c)
      if (!(kept >> ((e0 + c) / GS) & 1u)) live &= ~(1ull << c);
  }
  u32 ok[EL];
#pragma unroll
  for (int c = 0; c < EL; ++c) ok[c] = ordered_bits(kf[c]);
  // K picks. Each lane keeps its four best live keys in order (ties: lower expert first, as the scan goes up); a
  // pick is the segment's maximum of (key, −e) over the lanes' heads, and the winner pops its head. A lane whose
  // list runs dry while it still has live experts rescans (rare: a warp-uniform branch).
  u32 hk[4] = {0u, 0u, 0u, 0u};
  int hc[4] = {0, 0, 0, 0};
  float hs[4] = {0.f, 0.f, 0.f, 0.f};
  auto fill = [&]() {
#pragma unroll
    for (int c = 0; c < EL; ++c) {
      const u32 k = (live >> c & 1ull) ? ok[c] : 0u;
      if (k > hk[3]) {
        if (k > hk[0]) {
          hk[3] = hk[2]; hc[3] = hc[2]; hs[3] = hs[2];
          hk[2] = hk[1]; hc[2] = hc[1]; hs[2] = hs[1];
          hk[1] = hk[0]; hc[1] = hc[0]; hs[1] = hs[0];
          hk[0] = k; hc[0] = c; hs[0] = s[c];
        } else if (k > hk[1]) {
          hk[3] = hk[2]; hc[3] = hc[2]; hs[3] = hs[2];
          hk[2] = hk[1]; hc[2] = hc[1]; hs[2] = hs[1];
          hk[1] = k; hc[1] = c; hs[1] = s[c];
        } else if (k > hk[2]) {
          hk[3] = hk[2]; hc[3] = hc[2]; hs[3] = hs[2];
          hk[2] = k; hc[2] = c; hs[2] = s[c];
        } else {
          hk[3] = k; hc[3] = c; hs[3] = s[c];
        }
      }
    }
  };
  fill();
  unsigned long long taken = 0;
  float denom = 0.0f;
#pragma unroll 1
  for (int r = 0; r < K; ++r) {
    if (__any_sync(0xffffffffu, hk[0] == 0u && live != 0ull)) {
      if (hk[0] == 0u && live != 0ull) fill();
    }
    unsigned long long key =
        hk[0] ? (static_cast<unsigned long long>(hk[0]) << 32) | (0xffffffffu - static_cast<u32>(e0 + hc[0])) : 0ull;
#pragma unroll
    for (int o = 1; o < L; o <<= 1) {
      const unsigned long long other = __shfl_xor_sync(0xffffffffu, key, o);
      key = other > key ? other : key;
    }
    const int we = static_cast<int>(0xffffffffu - static_cast<u32>(key));
    const int wl = we / EL;
    denom = __fadd_rn(denom, __shfl_sync(0xffffffffu, hs[0], seg | wl));
    if (j == wl) {
      live &= ~(1ull << hc[0]);
      taken |= 1ull << hc[0];
      hk[0] = hk[1]; hc[0] = hc[1]; hs[0] = hs[1];
      hk[1] = hk[2]; hc[1] = hc[2]; hs[1] = hs[2];
      hk[2] = hk[3]; hc[2] = hc[3]; hs[2] = hs[3];
      hk[3] = 0u;
    }
  }
  if (valid) {
    const float d = __fadd_rn(denom, 1e-20f);
    float* pr = a.probs + static_cast<i64>(t) * E + e0;
    unsigned char* mr = a.routing_map + static_cast<i64>(t) * E + e0;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      Vec16 pv;
      u32 mv = 0;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int cc = 4 * c + q;
        float p = 0.0f;
        if (taken >> cc & 1ull) {
          p = __fmul_rn(RENORM ? __fdiv_rn(s[cc], d) : s[cc], a.scale);
          mv |= 1u << (8 * q);
          atomicAdd(&hist[e0 + cc], 1);
        }
        pv.w[q] = __float_as_uint(p);
      }
      store16(pr + 4 * c, pv);
      *reinterpret_cast<u32*>(mr + 4 * c) = mv;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += THREADS) a.hist[static_cast<i64>(blockIdx.x) * E + e] = hist[e];
  pdl_launch_dependents();
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
    int inc = x;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, inc, o);
      if (lane >= o) inc += n;
    }
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

// Exclusive block-wide scan of one int per thread (256 threads); returns the prefix, `total` gets the sum.
__device__ __forceinline__ int block_exclusive_scan256(int v, int* warp_tot, int& total) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  if (lane == 31) warp_tot[w] = inc;
  __syncthreads();
  int before = 0;
  total = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int x = warp_tot[k];
    if (k < w) before += x;
    total += x;
  }
  return before + inc - v;
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
      if (block == 0) {
        if (a.padded_counts) a.padded_counts[e] = pc[k];
        if (a.offsets) a.offsets[e] = off;
      }
      // Padding rows of this expert get −1 in the inverse list (one CTA per expert, round robin).
      if (a.row_id_indices && e % gridDim.x == block)
        for (int r = off + c[k]; r < off + pc[k] && r < a.num_out; ++r) a.row_id_indices[r] = -1;
    }
    off += pc[k];
  }
  if (block == 0 && threadIdx.x == 0 && a.offsets) a.offsets[E] = total;
  if (a.row_id_indices)
    for (i64 r = total + static_cast<i64>(block) * 256 + threadIdx.x; r < a.num_out; r += static_cast<i64>(gridDim.x) * 256)
      a.row_id_indices[r] = -1;
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

// ---- fused routing pipeline -------------------------------------------------------------------------------------
// Three launches chained by programmatic dependent launch (kiln/pdl.cuh), no host sync, integer counts only:
//   moe_route_zero  zeroes the superblock counts (map) or tokens_per_expert (no map);
//   moe_route       top-k of one 32-token map block per CTA (the same selection and fp32 operation sequence as
//                   moe_topk_fwd_kernel, a cheaper search), probs, routing map, and with the map: −1 over the
//                   block's rows of row_id_map (issued while the logits are in flight), the block's histogram row and
//                   one atomic add per expert into its superblock row; without: one atomic add per expert into the
//                   counts;
//   moe_route_map   per CTA a run of consecutive blocks: counts = Σ superblock rows, expert offsets (exclusive scan
//                   of the padded counts), the run's prefix = its superblock's predecessors + ≤ 15 block rows, then
//                   the routed entries of row_id_map (off_e + prefix + rank of the token among the block's tokens
//                   routed to e) and the inverse index list.

__global__ void __launch_bounds__(256) moe_route_zero_kernel(const MoeZeroArgs a) {
  pdl_launch_dependents();  // moe_route starts at once; it waits for this kernel before its first atomic
  for (int i = blockIdx.x * 256 + threadIdx.x; i < a.n; i += gridDim.x * 256) a.p[i] = 0;
  if (a.q && blockIdx.x == 0 && threadIdx.x == 0) a.q[0] = 0;
}

template <bool NARROW> struct MoeLaneMask { using type = unsigned long long; };
template <> struct MoeLaneMask<true> { using type = u32; };

// CTA: one map block of 32 tokens, 32·L threads (L lanes per token, MoeTopkLanes).
// Search: each lane keeps its two best live (key, expert, score) in order; a pick is the segment's maximum key over the
// lanes' heads, the lowest lane among equal heads (lanes own ascending expert ranges and a head is its lane's lowest
// expert among equal keys), found with one ballot; the winner pops its head. A lane whose list runs dry while it has
// live experts left refills it from the experts below its last pick (a warp-uniform, rare branch). A lane's selected
// experts are then exactly its live experts at or above its last pick in (key desc, expert asc) order.
template <int E, int K, bool SIGMOID, int G, int TG, bool RENORM, bool BIAS, bool MAP, bool APPROX>
__global__ void __launch_bounds__(kMoeMapBlockTokens * MoeTopkLanes<E>::L, MoeTopkLanes<E>::EL <= 16 ? 2 : 1)
    moe_route_kernel(const MoeRouteArgs a) {
  constexpr int L = MoeTopkLanes<E>::L, EL = MoeTopkLanes<E>::EL, NC = EL / 4;
  constexpr int GS = E / G;
  constexpr int THREADS = kMoeMapBlockTokens * L;
  constexpr u32 SEGMASK = L == 32 ? 0xffffffffu : (1u << L) - 1u;
  static_assert(E % 4 == 0 && EL <= 64 && K >= 1 && K <= E, "bad E/K");
  static_assert(G >= 1 && G <= 32 && E % G == 0 && TG >= 1 && TG <= G, "bad groups");
  static_assert(G == 1 || EL % GS == 0 || GS % EL == 0, "groups must align with the lanes' expert ranges");
  using Mask = typename MoeLaneMask<(EL <= 32)>::type;  // one bit per expert of the lane
  // Scores in shared memory (thread-major) for the output pass's picks, where they fit (E ≤ 256 at 16 lanes).
  constexpr bool S_SMEM = THREADS * EL * 4 <= 32768;
  __shared__ int hist[E];
  __shared__ float s_sm[S_SMEM ? THREADS * EL : 1];  // [c][thread]: conflict-free at any per-lane c
  auto sm = [&](int c) -> float& { return s_sm[c * THREADS + threadIdx.x]; };
  const int lane = threadIdx.x & 31, j = lane & (L - 1), seg = lane & ~(L - 1);
  const int t = blockIdx.x * kMoeMapBlockTokens + static_cast<int>(threadIdx.x) / L;
  const bool valid = t < a.T;
  const int e0 = j * EL;
  const float neg_inf = -__int_as_float(0x7f800000);

  float z[EL], s[EL];
  {
    const float* zr = a.logits + static_cast<i64>(valid ? t : 0) * E + e0;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const Vec16 v = valid ? load16(zr + 4 * c) : Vec16{{0xff800000u, 0xff800000u, 0xff800000u, 0xff800000u}};
#pragma unroll
      for (int q = 0; q < 4; ++q) z[4 * c + q] = __uint_as_float(v.w[q]);
    }
  }
  float bv[BIAS ? EL : 1];
  if constexpr (BIAS) {
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const Vec16 v = load16(a.bias + e0 + 4 * c);
#pragma unroll
      for (int q = 0; q < 4; ++q) bv[4 * c + q] = __uint_as_float(v.w[q]);
    }
  }
  if constexpr (MAP) {
    // The block's rows of row_id_map start as −1 (moe_route_map writes the routed entries after this kernel).
    if (valid && a.row_id_map) {
      const Vec16 m1{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}};
      int* rr = a.row_id_map + static_cast<i64>(t) * E + e0;
#pragma unroll
      for (int c = 0; c < NC; ++c) store16(rr + 4 * c, m1);
    }
  }

  for (int e = threadIdx.x; e < E; e += THREADS) hist[e] = 0;
  __syncthreads();

  constexpr bool UNIFORM = G == 1 || EL <= GS;
  // FAST: σ scores with a bias (the grouped sigmoid routers): exact scores only for each lane's candidates.
  constexpr bool FAST = APPROX && SIGMOID && BIAS && UNIFORM && S_SMEM;
  Mask live = EL == 8 * sizeof(Mask) ? ~Mask(0) : (Mask(1) << EL) - Mask(1);
  Mask cand = 0;  // FAST: the experts whose exact score is in s_sm (the rest hold their logit)
  u32 ok[FAST ? 1 : EL];  // the generic path's order-preserving keys
  // Two-entry list of the lane's best live experts below (lk, lc) in (key desc, expert asc) order. UNIFORM: all of a
  // lane's experts lie in one group (or there are no groups), so `live` is all or nothing until the first pick.
  u32 h0 = 0u, h1 = 0u;
  int i0 = 0, i1 = 0;
  float s0 = 0.f, s1 = 0.f;
  u32 lk = 0xffffffffu;
  int lc = -1;  // the lane's last pick (none yet)
  auto insert = [&](u32 k, int c, float sv) {
    const bool gt0 = k > h0, gt1 = k > h1;
    h1 = gt0 ? h0 : gt1 ? k : h1;
    i1 = gt0 ? i0 : gt1 ? c : i1;
    s1 = gt0 ? s0 : gt1 ? sv : s1;
    h0 = gt0 ? k : h0;
    i0 = gt0 ? c : i0;
    s0 = gt0 ? sv : s0;
  };
  if constexpr (FAST) {
    // Approximate keys (MUFU exp and reciprocal, within δ of the exact ones), the lane's two largest, and candidates:
    // every expert whose approximate key is ≥ a2 − 2δ. The lane's exact two largest keys are among them (any other
    // expert's exact key is < a2 − δ, below both). Exact scores are computed for the candidates only (in key order of
    // discovery: ascending expert), and z is staged in shared memory so that a candidate's logit is one load.
#pragma unroll
    for (int c = 0; c < EL; ++c) sm(c) = z[c];
    float A[EL];
    float a1 = neg_inf, a2 = neg_inf;
#pragma unroll
    for (int c = 0; c < EL; ++c) {
      const float x = fminf(fmaxf(-z[c], -104.0f), 88.75f);  // kiln_exp's clamp (a NaN logit: −104, as there)
      float e, r;
      asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x * 1.44269504f));
      asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.0f + e));
      float k = r + bv[BIAS ? c : 0];
      k = k != k ? neg_inf : k;
      A[c] = k;
      a2 = fmaxf(a2, fminf(a1, k));
      a1 = fmaxf(a1, k);
    }
    // |approximate − exact| ≤ |σ error| (≤ 1e-6) + one rounding of the key: δ below is ten times that.
    const float delta = 1e-5f + 2e-6f * (fabsf(a1) + fabsf(a2));
    float thr = a2 - 2.0f * delta;
    if (!(thr > neg_inf)) thr = neg_inf;  // fewer than two finite keys (or inf − inf): every expert is a candidate
#pragma unroll
    for (int c = 0; c < EL; ++c)
      if (A[c] >= thr) cand |= Mask(1) << c;
    for (Mask m = cand; m != Mask(0); m &= m - Mask(1)) {
      const int c = sizeof(Mask) == 4 ? __ffs(static_cast<u32>(m)) - 1 : __ffsll(static_cast<long long>(m)) - 1;
      float& slot = sm(c);
      const float sc = kiln_sigmoid(slot);
      slot = sc;  // the exact score replaces the logit
      float k = __fadd_rn(sc, a.bias[e0 + c]);
      k = k != k ? neg_inf : k;
      insert(ordered_bits(k), c, sc);
    }
    if constexpr (G > 1) {
      // The lane's (exact) two largest keys, merged over the SPAN lanes of its group: the group's two largest.
      constexpr int SPAN = GS / EL;
      auto key_of = [](u32 o) { return o == 0u ? -__int_as_float(0x7f800000)
                                                 : __uint_as_float((o & 0x80000000u) ? (o ^ 0x80000000u) : ~o); };
      float g1 = key_of(h0), g2 = key_of(h1);
#pragma unroll
      for (int o = 1; o < SPAN; o <<= 1) {
        const float b1 = __shfl_xor_sync(0xffffffffu, g1, o), b2 = __shfl_xor_sync(0xffffffffu, g2, o);
        if (b1 > g1) { g2 = fmaxf(g1, b2); g1 = b1; } else { g2 = fmaxf(g2, b1); }
      }
      float sc = GS >= 2 ? __fadd_rn(g1, g2) : g1;
      sc = sc != sc ? neg_inf : sc;
      const int g0 = j / SPAN;
      const u32 mine = ordered_bits(sc);
      int rank = 0;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const u32 og = ordered_bits(__shfl_sync(0xffffffffu, sc, seg | (g * SPAN)));
        rank += (og > mine || (og == mine && g < g0)) ? 1 : 0;
      }
      if (rank >= TG) {
        live = 0;
        h0 = h1 = 0u;
      }
    }
  } else {
  if constexpr (SIGMOID) {
#pragma unroll
      for (int c = 0; c < EL; ++c) s[c] = kiln_sigmoid(z[c]);
    } else {
      float m = neg_inf;
#pragma unroll
      for (int c = 0; c < EL; ++c) m = fmaxf(m, z[c]);
#pragma unroll
      for (int o = L / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < EL; ++c) {
        s[c] = kiln_exp(__fsub_rn(z[c], m));
        sum = __fadd_rn(sum, s[c]);
      }
#pragma unroll
      for (int o = L / 2; o > 0; o >>= 1) sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, o));
#pragma unroll
      for (int c = 0; c < EL; ++c) s[c] = __fdiv_rn(s[c], sum);
    }
    if constexpr (S_SMEM) {
#pragma unroll
      for (int c = 0; c < EL; ++c) sm(c) = s[c];
    }
    // Selection keys (NaN counts as −inf) as order-preserving u32.
    float kf[G > 1 ? EL : 1];
#pragma unroll
    for (int c = 0; c < EL; ++c) {
      float k = BIAS ? __fadd_rn(s[c], bv[BIAS ? c : 0]) : z[c];
      k = k != k ? neg_inf : k;
      if constexpr (G > 1) kf[c] = k;
      ok[c] = ordered_bits(k);
    }
    if constexpr (G > 1) {
      // Group scores (the sum of a group's two largest keys), then each lane's groups kept iff fewer than TG groups
      // rank above them (score desc, group asc): the same groups as TG rounds of argmax.
      constexpr int NGL = EL % GS == 0 ? EL / GS : 1;  // whole groups in this lane …
      constexpr int SPAN = EL % GS == 0 ? 1 : GS / EL;  // … or lanes sharing one group
      constexpr int W = EL % GS == 0 ? GS : EL;
      float gsc[NGL];
#pragma unroll
      for (int q = 0; q < NGL; ++q) {
        float a1 = neg_inf, a2 = neg_inf;
#pragma unroll
        for (int c = q * W; c < q * W + W; ++c) {
          const float v = kf[c];
          if (v > a1) { a2 = a1; a1 = v; } else if (v > a2) { a2 = v; }
        }
#pragma unroll
        for (int o = 1; o < SPAN; o <<= 1) {
          const float b1 = __shfl_xor_sync(0xffffffffu, a1, o), b2 = __shfl_xor_sync(0xffffffffu, a2, o);
          if (b1 > a1) { a2 = fmaxf(a1, b2); a1 = b1; } else { a2 = fmaxf(a2, b1); }
        }
        const float sc = GS >= 2 ? __fadd_rn(a1, a2) : a1;
        gsc[q] = sc != sc ? neg_inf : sc;
      }
      const int g0 = EL % GS == 0 ? j * NGL : j / SPAN;  // group of gsc[0]
      int rank[NGL];
#pragma unroll
      for (int q = 0; q < NGL; ++q) rank[q] = 0;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        // Group g's score lives in lane g / NGL (slot g % NGL), or in lane g·SPAN of the segment.
        const int src = seg | (EL % GS == 0 ? g / NGL : g * SPAN);
        const u32 og = ordered_bits(__shfl_sync(0xffffffffu, gsc[g % NGL], src));
#pragma unroll
        for (int q = 0; q < NGL; ++q) {
          const u32 mine = ordered_bits(gsc[q]);
          rank[q] += (og > mine || (og == mine && g < g0 + q)) ? 1 : 0;
        }
      }
#pragma unroll
      for (int c = 0; c < EL; ++c) {
        const int q = EL % GS == 0 ? c / GS : 0;
        if (rank[q] >= TG) live &= ~(Mask(1) << c);
      }
    }
  
    if (UNIFORM) {
      if (live != Mask(0))
#pragma unroll
        for (int c = 0; c < EL; ++c) insert(ok[c], c, s[c]);
    } else {
#pragma unroll
      for (int c = 0; c < EL; ++c) insert((live >> c & 1u) ? ok[c] : 0u, c, s[c]);
    }
  }
  Mask taken = 0;
  int left = sizeof(Mask) == 4 ? __popc(static_cast<u32>(live)) : __popcll(static_cast<unsigned long long>(live));  // live experts of this lane not picked yet
  float denom = 0.0f;
#pragma unroll 1
  for (int r = 0; r < K; ++r) {
    if (__any_sync(0xffffffffu, h0 == 0u && left > 0)) {
      if (h0 == 0u && left > 0) {
        // Refill from the live experts below the last pick (this lane has picked both entries already).
        h0 = h1 = 0u;
        if constexpr (FAST) {
          // Exact scores for every expert of the lane now.
#pragma unroll 1
          for (int c = 0; c < EL; ++c) {
            float& slot = sm(c);
            const float sc = (cand >> c & 1u) ? slot : kiln_sigmoid(slot);
            slot = sc;
            float k = __fadd_rn(sc, a.bias[e0 + c]);
            k = k != k ? neg_inf : k;
            const u32 o = ordered_bits(k);
            const bool below = o < lk || (o == lk && c > lc);
            insert(((live >> c & 1u) && below) ? o : 0u, c, sc);
          }
          cand = ~Mask(0);
        } else {
#pragma unroll
          for (int c = 0; c < EL; ++c) {
            const bool below = ok[c] < lk || (ok[c] == lk && c > lc);
            insert(((live >> c & 1u) && below) ? ok[c] : 0u, c, s[c]);
          }
        }
      }
    }
    u32 m = h0;
#pragma unroll
    for (int o = 1; o < L; o <<= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    const u32 heads = __ballot_sync(0xffffffffu, h0 == m);
    const int wl = __ffs((heads >> seg) & SEGMASK) - 1;  // the segment's lowest lane holding the maximum
    denom = __fadd_rn(denom, __shfl_sync(0xffffffffu, s0, seg | wl));
    if (j == wl) {
      lk = h0;
      lc = i0;
      taken |= Mask(1) << i0;
      --left;
      h0 = h1; i0 = i1; s0 = s1;
      h1 = 0u;
    }
  }
  if (S_SMEM && valid) {
    // Zeros and the map bytes for the lane's experts, then one store per pick (the same thread: in order). (Zeroing
    // these rows at the start, with the loads in flight, measured slower: 56.2 vs 44.6 µs.)
    const float d = __fadd_rn(denom, 1e-20f);
    float* pr = a.probs + static_cast<i64>(t) * E + e0;
    unsigned char* mr = a.routing_map + static_cast<i64>(t) * E + e0;
    const Vec16 zero{{0u, 0u, 0u, 0u}};
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      store16(pr + 4 * c, zero);
      const u32 m4 = static_cast<u32>(taken >> (4 * c)) & 0xfu;
      *reinterpret_cast<u32*>(mr + 4 * c) = (m4 * 0x00204081u) & 0x01010101u;  // bit q → byte q
    }
    for (Mask m = taken; m != Mask(0); m &= m - Mask(1)) {
      const int c = sizeof(Mask) == 4 ? __ffs(static_cast<u32>(m)) - 1 : __ffsll(static_cast<long long>(m)) - 1;
      const float sv = sm(c);
      pr[c] = __fmul_rn(RENORM ? __fdiv_rn(sv, d) : sv, a.scale);
      atomicAdd(&hist[e0 + c], 1);
    }
  } else if (valid) {
    const float d = __fadd_rn(denom, 1e-20f);
    float* pr = a.probs + static_cast<i64>(t) * E + e0;
    unsigned char* mr = a.routing_map + static_cast<i64>(t) * E + e0;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      Vec16 pv;
      u32 mv = 0;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int cc = 4 * c + q;
        float p = 0.0f;
        if (taken >> cc & 1u) {
          p = __fmul_rn(RENORM ? __fdiv_rn(s[cc], d) : s[cc], a.scale);
          mv |= 1u << (8 * q);
          atomicAdd(&hist[e0 + cc], 1);
        }
        pv.w[q] = __float_as_uint(p);
      }
      store16(pr + 4 * c, pv);
      *reinterpret_cast<u32*>(mr + 4 * c) = mv;
    }
  }
  __syncthreads();
  pdl_wait();  // moe_route_zero has zeroed the rows the atomics below add into
  for (int e = threadIdx.x; e < E; e += THREADS) {
    const int h = hist[e];
    if constexpr (MAP) a.hist[static_cast<i64>(blockIdx.x) * E + e] = h;
    if (h && a.super) atomicAdd(&a.super[static_cast<i64>(blockIdx.x / kMoeSuperBlocks) * E + e], h);
  }
  if constexpr (!MAP) {
    // The last CTA to finish sums the superblock rows into the counts (16 CTAs per atomic address, not all of them).
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(a.done, 1) == static_cast<int>(gridDim.x) - 1;
    __syncthreads();
    if (last) {
      __threadfence();
      const int nsuper = (static_cast<int>(gridDim.x) + kMoeSuperBlocks - 1) / kMoeSuperBlocks;
      for (int e = threadIdx.x; e < E; e += THREADS) {
        int n = 0;
        for (int r = 0; r < nsuper; ++r) n += __ldcg(a.super + static_cast<i64>(r) * E + e);
        a.counts[e] = n;
      }
    }
  }
  pdl_launch_dependents();
}

// CTA: 8 warps over a run of blocks_per_cta consecutive 32-token map blocks (4 tokens per warp per block).
template <int E>
__global__ void __launch_bounds__(256) moe_route_map_kernel(const MoeRouteMapArgs a) {
  constexpr int NI = (E + 127) / 128;
  constexpr int EPT = (E + 255) / 256;  // experts per thread in the offset scan
  constexpr int TPW = kMoeMapBlockTokens / 8;
  constexpr int W = kMoeMapBlockTokens / 32;  // mask words per expert
  __shared__ int base[E];
  __shared__ u32 mask[E][W];
  __shared__ int warp_tot[8];
  pdl_wait();  // moe_route's routing map, histograms and superblock counts
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int P = a.multiple_of;
  const int b0 = blockIdx.x * a.blocks_per_cta, b1 = min(b0 + a.blocks_per_cta, a.nblocks);
  const int nsuper = (a.nblocks + kMoeSuperBlocks - 1) / kMoeSuperBlocks;
  const int sb = b0 / kMoeSuperBlocks;

  // A lane's routing flags of one token as a bitmask (bit 4i + q: expert 128i + 4·lane + q); the routing map is
  // moe_route's, so every byte is 0 or 1. The first block's are loaded first (their latency overlaps the prefix sums).
  u32 fl[TPW];
  auto load_flags = [&](int block) {
#pragma unroll
    for (int k = 0; k < TPW; ++k) {
      const int t = block * kMoeMapBlockTokens + warp * TPW + k;
      u32 bits = 0;
#pragma unroll
      for (int i = 0; i < NI; ++i) {
        const int e0 = 128 * i + 4 * lane;
        if (block < b1 && t < a.T && e0 < E) {
          const u32 w = *reinterpret_cast<const u32*>(a.routing_map + static_cast<i64>(t) * E + e0);
          bits |= ((w * 0x01020408u) >> 24) << (4 * i);  // bytes 0..3 (0/1) → bits 0..3
        }
      }
      fl[k] = bits;
    }
  };
  load_flags(b0);

  // Counts (all superblock rows) and the run's prefix (superblocks before sb, then blocks sb·16 … b0 − 1).
  int tot[EPT], pre[EPT];
#pragma unroll
  for (int k = 0; k < EPT; ++k) tot[k] = pre[k] = 0;
#pragma unroll 16
  for (int r = 0; r < nsuper; ++r)
#pragma unroll
    for (int k = 0; k < EPT; ++k) {
      const int e = threadIdx.x * EPT + k;
      const int v = e < E ? a.super[static_cast<i64>(r) * E + e] : 0;
      tot[k] += v;
      pre[k] += r < sb ? v : 0;
    }
#pragma unroll 16
  for (int b = sb * kMoeSuperBlocks; b < b0; ++b)
#pragma unroll
    for (int k = 0; k < EPT; ++k) {
      const int e = threadIdx.x * EPT + k;
      pre[k] += e < E ? a.hist[static_cast<i64>(b) * E + e] : 0;
    }

  // Expert offsets: exclusive scan of roundup(count, P) over experts.
  int pc[EPT], local = 0;
#pragma unroll
  for (int k = 0; k < EPT; ++k) {
    pc[k] = (tot[k] + P - 1) / P * P;
    local += pc[k];
  }
  int total;
  int off = block_exclusive_scan256(local, warp_tot, total);
#pragma unroll
  for (int k = 0; k < EPT; ++k) {
    const int e = threadIdx.x * EPT + k;
    if (e < E) {
      base[e] = off + pre[k];
      if (blockIdx.x == 0) {
        a.counts[e] = tot[k];
        if (a.padded_counts) a.padded_counts[e] = pc[k];
        if (a.offsets) a.offsets[e] = off;
      }
      // Padding rows of this expert get −1 in the inverse list (one CTA per expert, round robin).
      if (a.row_id_indices && e % gridDim.x == blockIdx.x)
        for (int r = off + tot[k]; r < off + pc[k] && r < a.num_out; ++r) a.row_id_indices[r] = -1;
    }
    off += pc[k];
  }
  if (blockIdx.x == 0 && threadIdx.x == 0 && a.offsets) a.offsets[E] = total;
  if (a.row_id_indices)
    for (i64 r = total + static_cast<i64>(blockIdx.x) * 256 + threadIdx.x; r < a.num_out;
         r += static_cast<i64>(gridDim.x) * 256)
      a.row_id_indices[r] = -1;

#pragma unroll 1
  for (int block = b0; block < b1; ++block) {
    if (block != b0) load_flags(block);
    for (int e = threadIdx.x; e < E; e += 256)
#pragma unroll
      for (int w = 0; w < W; ++w) mask[e][w] = 0u;
    __syncthreads();  // base[] written, masks cleared (and the previous block's reads of them done)
#pragma unroll
    for (int k = 0; k < TPW; ++k) {
      const int lt = warp * TPW + k;
      for (u32 m = fl[k]; m; m &= m - 1u) {
        const int b = __ffs(m) - 1, e = 128 * (b >> 2) + 4 * lane + (b & 3);
        atomicOr(&mask[e][lt >> 5], 1u << (lt & 31));
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < TPW; ++k) {
      const int lt = warp * TPW + k, t = block * kMoeMapBlockTokens + lt;
      const u32 below = (1u << (lt & 31)) - 1u;
      for (u32 m = fl[k]; m; m &= m - 1u) {
        const int b = __ffs(m) - 1, e = 128 * (b >> 2) + 4 * lane + (b & 3);
        int rank = 0;
#pragma unroll
        for (int w = 0; w < W; ++w)
          rank += w < (lt >> 5) ? __popc(mask[e][w]) : w == (lt >> 5) ? __popc(mask[e][w] & below) : 0;
        const int row = base[e] + rank;
        a.row_id_map[static_cast<i64>(t) * E + e] = row;
        if (a.row_id_indices && row < a.num_out) a.row_id_indices[row] = t;
      }
    }
    __syncthreads();  // every rank read before the next block's base update
    for (int e = threadIdx.x; e < E; e += 256) {
      int n = 0;
#pragma unroll
      for (int w = 0; w < W; ++w) n += __popc(mask[e][w]);
      base[e] += n;
    }
  }
}

}  // namespace kiln
