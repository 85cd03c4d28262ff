// tests/reference/fp4_moe.hpp — CPU reference of the FP4 MoE's routing (../shared/spec/fp4-moe.md §3; seed-era enum
// numbers): per token the top-K experts (descending selection key, ties to the lower expert index) and their weights,
// rounded to bf16 as the op emits them. Scores in fp32 (each formula evaluated in double and rounded once to fp32),
// weights in double from those fp32 scores, then rounded to bf16 (round to nearest even).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace kiln::ref {

enum class Fp4MoeRouting : int {
  Default = 0,           // top-K of softmax(z); weight p_j (not renormalized)
  Renormalize = 1,       // top-K of z; softmax over the K selected logits
  DeepSeekV3 = 2,        // σ(z) + bias selects (grouped when n_group > 1); rsf · s_j / (Σ_sel s + 1e-20)
  Llama4 = 3,            // top-1 of z; σ(z_j)
  RenormalizeNaive = 4,  // = Renormalize
  TopK = 5,              // top-K of z; z_j
  SigmoidRenorm = 6,     // top-K of σ(z); σ_j / max(Σ_sel σ, 1e-20) if norm_topk_prob, else σ_j
  MiniMax2 = 7,          // top-K of σ(z) + bias; σ_j / (Σ_sel σ + 1e-20) (seed era: route scale 1, rsf ignored)
  Sigmoid = 8,           // top-K of σ(z); σ_j
};

struct Fp4MoeRouteOptions {
  Fp4MoeRouting method = Fp4MoeRouting::Default;
  int top_k = 1;
  int n_group = 0, topk_group = 0;  // DeepSeekV3 only (n_group ≤ 1: no groups)
  float routed_scaling_factor = 1.0f;
  bool norm_topk_prob = true;
};

struct Fp4MoeRoute {
  std::vector<int32_t> ids;    // [T, K], descending key
  std::vector<float> weights;  // [T, K], bf16 values
};

// The launcher's constraints (spec §3): E % 4 == 0, E > K, 1 ≤ K ≤ 32 (Llama4: K == 1; DeepSeekV3: K ≤ 22,
// topk_group ≤ 4, n_group ≤ 8, E % n_group == 0, E / n_group ≤ 32, n_group ≥ topk_group, E ≤ 512); bias [E] only for
// DeepSeekV3 and MiniMax2 (else empty). Violations throw std::invalid_argument naming the rule.
Fp4MoeRoute fp4_moe_route(std::span<const float> logits, int64_t T, int64_t E, std::span<const float> bias,
                          const Fp4MoeRouteOptions& opt);

}  // namespace kiln::ref
