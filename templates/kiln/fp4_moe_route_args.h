// kiln/fp4_moe_route_args.h — argument block of templates/kiln/fp4_moe_route.cuh (host and device share it).
#pragma once

namespace kiln {

struct Fp4MoeRouteArgs {
  const void* logits;    // [T, E] fp32 or bf16 (TL)
  const void* bias;      // [E] same dtype, or null (DeepSeekV3 / MiniMax2 only)
  int* ids;              // [T, K] int32, descending selection key
  unsigned short* weights;  // [T, K] bf16 bits
  long long T;
  float routed_scaling_factor;
  int norm_topk_prob;
};

}  // namespace kiln
