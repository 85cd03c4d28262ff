// kiln/fp4_moe_route.cuh — the FP4 MoE's routing (spec ../shared/spec/fp4-moe.md §3, §12.2 step 1; reference
// tests/reference/fp4_moe.*): one warp a token. Lane l holds the P = ceil(E/32) contiguous experts l·P … l·P + P − 1,
// so a lower lane holds lower experts; scores in fp32; an expert is selected by the order-preserving bits of its
// selection value (32-bit unsigned maxima), and among equal values by the lowest lane (a ballot) and then its lowest
// slot: ties go to the lower expert with 32-bit shuffles only. K picks; the k-th is kept by lane k, which writes id
// and bf16 weight (coalesced rows of K). DeepSeekV3 with groups: a group (E / n_group contiguous experts) scores the
// sum of its two largest values; where a lane's experts lie in one group (E/n_group a power-of-two multiple of P) the
// group's top-2 is a reduction over its LPG lanes, all groups at once; else a warp top-2 a group. The topk_group best
// groups stay (ties to the lower group), the others' experts leave the selection.
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp4_moe_route_args.h"

namespace kiln {
namespace f4r_route {

__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }
// Order-preserving bits of an fp32 (−NaN payloads below −inf, +NaN above +inf, −0 below +0) and back.
__device__ __forceinline__ u32 ord_of(float f) {
  const u32 b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float val_of(u32 o) { return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o); }
__device__ __forceinline__ void top2(u32& b1, u32& b2, u32 v) {
  b2 = umax(b2, umin(b1, v));
  b1 = umax(b1, v);
}
// The P logits (or bias values) of lane `lane`: experts lane·P … lane·P + P − 1 (−inf / 0 past E).
template <typename TL, int P, bool FULL, int E>
__device__ __forceinline__ void load_lane(const TL* row, int lane, float (&v)[P]) {
  const TL* q = row + lane * P;
  if constexpr (FULL && sizeof(TL) == 4 && P % 4 == 0) {
#pragma unroll
    for (int i = 0; i < P / 4; ++i) {
      const float4 f = reinterpret_cast<const float4*>(q)[i];
      v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
    }
  } else if constexpr (FULL && sizeof(TL) == 2 && P % 4 == 0) {
#pragma unroll
    for (int i = 0; i < P / 4; ++i) {
      const uint2 u = reinterpret_cast<const uint2*>(q)[i];
      v[4 * i] = __uint_as_float(u.x << 16), v[4 * i + 1] = __uint_as_float(u.x & 0xffff0000u);
      v[4 * i + 2] = __uint_as_float(u.y << 16), v[4 * i + 3] = __uint_as_float(u.y & 0xffff0000u);
    }
  } else {
#pragma unroll
    for (int p = 0; p < P; ++p) v[p] = lane * P + p < E ? to_float(q[p]) : __int_as_float(0xff800000);
  }
}
__device__ __forceinline__ unsigned short bf16_bits(float v) {
  u32 b = __float_as_uint(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  b += 0x7fffu + ((b >> 16) & 1u);  // round to nearest even
  return static_cast<unsigned short>(b >> 16);
}

}  // namespace f4r_route

// METHOD: the seed-era enum (0 Default, 1 Renormalize, 2 DeepSeekV3, 3 Llama4, 4 RenormalizeNaive, 5 TopK,
// 6 SigmoidRenorm, 7 MiniMax2, 8 Sigmoid). G, TG: n_group, topk_group (G ≤ 1: no groups). Grid: ceil(T / WARPS) CTAs
// of WARPS warps (a warp a token).
template <typename TL, int METHOD, int E, int K, int G, int TG, bool BIAS, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) fp4_moe_route_kernel(const __grid_constant__ Fp4MoeRouteArgs a) {
  static_assert(E % 4 == 0 && E > K && K >= 1 && K <= 32 && E <= 512, "the launcher's constraints");
  constexpr int P = (E + 31) / 32;  // experts a lane: lane l holds e = l·P + p, so a lower lane has lower experts
  constexpr bool FULL = E == 32 * P;
  const int lane = threadIdx.x & 31;
  const long long t = static_cast<long long>(blockIdx.x) * WARPS + (threadIdx.x >> 5);
  if (t >= a.T) return;
  const TL* zrow = static_cast<const TL*>(a.logits) + t * E;
  float z[P], s[P];
  u32 ord[P];  // order-preserving bits of the selection value (s, + bias where given)
  u32 live = 0;  // bit p: expert l·P + p exists and is still selectable
  f4r_route::load_lane<TL, P, FULL, E>(zrow, lane, z);
#pragma unroll
  for (int p = 0; p < P; ++p) live |= (lane * P + p < E ? 1u : 0u) << p;
  if constexpr (METHOD == 0) {  // softmax over all E
    float mx = __int_as_float(0xff800000);
#pragma unroll
    for (int p = 0; p < P; ++p) mx = fmaxf(mx, z[p]);
    mx = warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int p = 0; p < P; ++p) sum += (live >> p) & 1u ? expf(z[p] - mx) : 0.0f;
    sum = warp_sum(sum);
#pragma unroll
    for (int p = 0; p < P; ++p) s[p] = expf(z[p] - mx) / sum;
  } else if constexpr (METHOD == 2 || METHOD == 6 || METHOD == 7 || METHOD == 8) {
#pragma unroll
    for (int p = 0; p < P; ++p) s[p] = f4r_route::sigmoid(z[p]);
  } else {
#pragma unroll
    for (int p = 0; p < P; ++p) s[p] = z[p];
  }
  {
    float b[P];
    if constexpr (BIAS) f4r_route::load_lane<TL, P, FULL, E>(static_cast<const TL*>(a.bias), lane, b);
#pragma unroll
    for (int p = 0; p < P; ++p) ord[p] = f4r_route::ord_of(BIAS ? s[p] + b[p] : s[p]);
  }
  if constexpr (METHOD == 2 && G > 1) {  // groups of E / G contiguous experts; a group scores its two largest values
    constexpr int PER = E / G;
    constexpr int LPG = PER % P == 0 ? PER / P : 0;  // lanes a group when a lane's experts lie in one group
    float gs[G];
    if constexpr (LPG > 0 && LPG <= 32 && (LPG & (LPG - 1)) == 0) {
      u32 b1 = 0, b2 = 0;  // the lane's two largest, then its group's (xor partners within LPG lanes)
#pragma unroll
      for (int p = 0; p < P; ++p)
        if ((live >> p) & 1u) f4r_route::top2(b1, b2, ord[p]);
#pragma unroll
      for (int o = LPG / 2; o > 0; o >>= 1) {
        const u32 c1 = __shfl_xor_sync(0xffffffffu, b1, o), c2 = __shfl_xor_sync(0xffffffffu, b2, o);
        b2 = umax(umin(b1, c1), umax(b2, c2));
        b1 = umax(b1, c1);
      }
      const float mine = f4r_route::val_of(b1) + (PER > 1 ? f4r_route::val_of(b2) : 0.0f);
#pragma unroll
      for (int g = 0; g < G; ++g) gs[g] = __shfl_sync(0xffffffffu, mine, g * LPG);
    } else {  // a lane's experts may span groups: a warp top-2 a group
#pragma unroll
      for (int g = 0; g < G; ++g) {
        u32 b1 = 0, b2 = 0;
#pragma unroll
        for (int p = 0; p < P; ++p)
          if (((live >> p) & 1u) && (lane * P + p) / PER == g) f4r_route::top2(b1, b2, ord[p]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
          const u32 c1 = __shfl_xor_sync(0xffffffffu, b1, o), c2 = __shfl_xor_sync(0xffffffffu, b2, o);
          b2 = umax(umin(b1, c1), umax(b2, c2));
          b1 = umax(b1, c1);
        }
        gs[g] = f4r_route::val_of(b1) + (PER > 1 ? f4r_route::val_of(b2) : 0.0f);
      }
    }
    u32 keep = 0;  // bit g: group g kept; ties to the lower group
#pragma unroll
    for (int r = 0; r < TG; ++r) {
      int best = -1;
      float bv = 0.0f;
#pragma unroll
      for (int g = 0; g < G; ++g)
        if (!((keep >> g) & 1u) && (best < 0 || gs[g] > bv)) {
          best = g;
          bv = gs[g];
        }
      keep |= 1u << best;
    }
#pragma unroll
    for (int p = 0; p < P; ++p)
      if (!((keep >> ((lane * P + p) / PER)) & 1u)) live &= ~(1u << p);
  }
  // K picks: the warp maximum of the lanes' largest live values; among equal values the lowest lane, then its
  // lowest slot — the lowest expert. Lane k keeps the k-th (id, s, z).
  int my_id = 0;
  float my_s = 0.0f, my_z = 0.0f;
#pragma unroll 1
  for (int k = 0; k < K; ++k) {
    u32 lm = 0;
#pragma unroll
    for (int p = 0; p < P; ++p) lm = (live >> p) & 1u ? umax(lm, ord[p]) : lm;
    u32 m = lm;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = umax(m, __shfl_xor_sync(0xffffffffu, m, o));
    const u32 vote = __ballot_sync(0xffffffffu, live != 0 && lm == m);
    const int owner = vote ? __ffs(vote) - 1 : 0;
    int slot = 0;
    float se = 0.0f, ze = 0.0f;
#pragma unroll
    for (int p = P - 1; p >= 0; --p)
      if (((live >> p) & 1u) && ord[p] == m) {
        slot = p;
        se = s[p];
        ze = z[p];
      }
    if (lane == owner) live &= ~(1u << slot);
    slot = __shfl_sync(0xffffffffu, slot, owner);
    se = __shfl_sync(0xffffffffu, se, owner);
    ze = __shfl_sync(0xffffffffu, ze, owner);
    if (lane == k) {
      my_id = owner * P + slot;
      my_s = se;
      my_z = ze;
    }
  }
  // Weights.
  const bool mine = lane < K;
  const float sum = warp_sum(mine ? my_s : 0.0f);
  float w;
  if constexpr (METHOD == 1 || METHOD == 4) {  // softmax over the selected logits; pick 0 has the largest
    const float mx = __shfl_sync(0xffffffffu, my_z, 0);
    const float ex = mine ? expf(my_z - mx) : 0.0f;
    w = ex / warp_sum(ex);
  } else if constexpr (METHOD == 2) {
    w = a.routed_scaling_factor * (my_s / (sum + 1e-20f));
  } else if constexpr (METHOD == 3) {
    w = f4r_route::sigmoid(my_z);
  } else if constexpr (METHOD == 6) {
    w = a.norm_topk_prob ? my_s / fmaxf(sum, 1e-20f) : my_s;
  } else if constexpr (METHOD == 7) {
    w = my_s / (sum + 1e-20f);
  } else {  // 0, 5, 8
    w = my_s;
  }
  if (mine) {
    a.ids[t * K + lane] = my_id;
    a.weights[t * K + lane] = f4r_route::bf16_bits(w);
  }
}

}  // namespace kiln
