// kiln/ops/fp4_moe.hpp — the FP4 MoE's routing step (../shared/spec/fp4-moe.md §3, §12.2 step 1; seed-era enum
// numbers). The fused FP4 MoE op itself is not built yet; this is its first kernel.
#pragma once
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

enum class Fp4MoeRoutingMethod : int {
  Default = 0,           // top-K of softmax(z); weight p_j (not renormalized)
  Renormalize = 1,       // top-K of z; softmax over the K selected logits
  DeepSeekV3 = 2,        // σ(z) + bias selects (grouped when n_group > 1); rsf · s_j / (Σ_sel s + 1e-20)
  Llama4 = 3,            // top-1 of z; σ(z_j)
  RenormalizeNaive = 4,  // = Renormalize
  TopK = 5,              // top-K of z; z_j
  SigmoidRenorm = 6,     // top-K of σ(z); σ_j / max(Σ_sel σ, 1e-20) if norm_topk_prob, else σ_j
  MiniMax2 = 7,          // top-K of σ(z) + bias; σ_j / (Σ_sel σ + 1e-20) (route scale 1: rsf ignored, seed era)
  Sigmoid = 8,           // top-K of σ(z); σ_j
};

struct Fp4MoeRouteOptions {
  Fp4MoeRoutingMethod method = Fp4MoeRoutingMethod::Default;
  int top_k = 1;
  int n_group = 0, topk_group = 0;  // DeepSeekV3 only; n_group ≤ 1: no groups
  float routed_scaling_factor = 1.0f;
  bool norm_topk_prob = true;
};

// logits [T, E] fp32 or bf16; bias [E] (same dtype; DeepSeekV3 and MiniMax2 only, else null); topk_ids [T, K] int32
// (descending selection key, ties to the lower expert); topk_weights [T, K] bf16. Constraints (typed errors): E % 4
// == 0, E > K, 1 ≤ K ≤ 32, E ≤ 512; Llama4 K == 1; DeepSeekV3 K ≤ 22 and with groups topk_group ≤ 4, n_group ≤ 8,
// E % n_group == 0, E / n_group ≤ 32, n_group ≥ topk_group. Compile-time: E, K, method, groups, bias presence, dtype.
void fp4_moe_route(Runtime& rt, const TensorRef& logits, const TensorRef* bias, const TensorRef& topk_ids,
                   const TensorRef& topk_weights, const Fp4MoeRouteOptions& opt, Stream stream);

}  // namespace kiln
