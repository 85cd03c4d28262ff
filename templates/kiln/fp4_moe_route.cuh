// kiln/fp4_moe_route.cuh — the FP4 MoE's routing (spec ../shared/spec/fp4-moe.md §3, §12.2 step 1; reference
// tests/reference/fp4_moe.*): one warp a token. Expert e belongs to lane e % 32 (slot e / 32, P = ceil(E/32) slots);
// scores in fp32; the selection key of an expert packs its order-preserving fp32 bits above 0xFFFF − e into 64 bits,
// so a warp maximum picks the largest key and, among equal keys, the lower expert. K picks of one 64-bit warp max
// each; the k-th pick is kept by lane k, which writes id and bf16 weight (coalesced rows of K).
// DeepSeekV3 with groups: a group (E / n_group ≤ 32 contiguous experts) scores the sum of its two largest keys (a
// warp top-2 a group), the topk_group best groups stay (ties to the lower group), the others' keys are cleared.
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp4_moe_route_args.h"

namespace kiln {
namespace f4r_route {

__device__ __forceinline__ unsigned long long key_of(float f, int e) {
  const u32 b = __float_as_uint(f);
  const u32 ord = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<unsigned long long>(ord) << 32) | static_cast<u32>(0xFFFF - e);
}
__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}
__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }
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
  constexpr int P = (E + 31) / 32;
  const int lane = threadIdx.x & 31;
  const long long t = static_cast<long long>(blockIdx.x) * WARPS + (threadIdx.x >> 5);
  if (t >= a.T) return;
  const TL* zrow = static_cast<const TL*>(a.logits) + t * E;
  float z[P], s[P];
  unsigned long long key[P];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int e = p * 32 + lane;
    z[p] = e < E ? to_float(zrow[e]) : __int_as_float(0xff800000);
  }
  // Scores s (what the weight uses) and keys (what selects).
  if constexpr (METHOD == 0) {  // softmax over all E
    float mx = __int_as_float(0xff800000);
#pragma unroll
    for (int p = 0; p < P; ++p) mx = fmaxf(mx, z[p]);
    mx = warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int p = 0; p < P; ++p) sum += p * 32 + lane < E ? expf(z[p] - mx) : 0.0f;
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
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int e = p * 32 + lane;
    float k = s[p];
    if constexpr (BIAS) k = e < E ? k + to_float(static_cast<const TL*>(a.bias)[e]) : k;
    key[p] = e < E ? f4r_route::key_of(k, e) : 0ull;
  }
  if constexpr (METHOD == 2 && G > 1) {  // groups of E / G contiguous experts
    constexpr int PER = E / G;
    float gscore[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      // the group's two largest keys: a warp top-2 of the lanes' local top-2
      unsigned long long b1 = 0, b2 = 0;
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int e = p * 32 + lane;
        if (e < E && e / PER == g) {
          if (key[p] > b1) {
            b2 = b1;
            b1 = key[p];
          } else if (key[p] > b2) {
            b2 = key[p];
          }
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long c1 = __shfl_xor_sync(0xffffffffu, b1, o), c2 = __shfl_xor_sync(0xffffffffu, b2, o);
        const unsigned long long hi = c1 > b1 ? c1 : b1, lo1 = c1 > b1 ? b1 : c1;
        const unsigned long long lo2 = c2 > b2 ? c2 : b2;
        b1 = hi;
        b2 = lo1 > lo2 ? lo1 : lo2;
      }
      auto val = [](unsigned long long k) {  // the key's fp32 value back
        const u32 ord = static_cast<u32>(k >> 32);
        return __uint_as_float((ord & 0x80000000u) ? (ord & 0x7fffffffu) : ~ord);
      };
      gscore[g] = val(b1) + (PER > 1 ? val(b2) : 0.0f);
    }
    u32 keep = 0;  // bit g: group g kept
#pragma unroll
    for (int r = 0; r < TG; ++r) {
      int best = -1;
#pragma unroll
      for (int g = 0; g < G; ++g)
        if (!((keep >> g) & 1u) && (best < 0 || gscore[g] > gscore[best])) best = g;
      keep |= 1u << best;
    }
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int e = p * 32 + lane;
      if (e < E && !((keep >> (e / PER)) & 1u)) key[p] = 0ull;
    }
  }
  // K picks; lane k keeps the k-th (id, s, z).
  int my_id = 0;
  float my_s = 0.0f, my_z = 0.0f;
#pragma unroll 1
  for (int k = 0; k < K; ++k) {
    unsigned long long best = 0;
#pragma unroll
    for (int p = 0; p < P; ++p) best = key[p] > best ? key[p] : best;
    best = f4r_route::warp_max_u64(best);
    const int e = 0xFFFF - static_cast<int>(best & 0xFFFFu);
    const int owner = e & 31, slot = e >> 5;
    float se = 0.0f, ze = 0.0f;
#pragma unroll
    for (int p = 0; p < P; ++p)
      if (p == slot) {
        se = s[p];
        ze = z[p];
        if (lane == owner) key[p] = 0ull;
      }
    se = __shfl_sync(0xffffffffu, se, owner);
    ze = __shfl_sync(0xffffffffu, ze, owner);
    if (lane == k) {
      my_id = e;
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
