// tests/reference/fp4_moe_layer.hpp — CPU references of the FP4 MoE layer (../shared/spec/fp4-moe.md §2, §4, §7–§10):
// the permutation metadata and the finalize bit for bit as the kernels must produce them, the gather's exact
// dequantization, and the whole layer (double accumulation, weights dequantized from their canonical codes, routed by
// ref::fp4_moe_route, h rounded to bf16 in the §7 units GEMM2 expects, y rounded to bf16 as gemm2_output holds it,
// out = bf16(Σ_k w·y in fp32, fixed k order)).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "reference/fp4_moe.hpp"

namespace kiln::ref {

// Rows ordered by (local expert, token, k); each expert's segment padded up to `tile`; offsets[E_l] = total.
struct Fp4MoePermutation {
  std::vector<int32_t> counts;      // [E_l]
  std::vector<int32_t> offsets;     // [E_l + 1]
  std::vector<int32_t> expanded;    // [T·K]: permuted row of slot (t, k), −1 for a non-local expert
  std::vector<int32_t> perm_token;  // [offsets[E_l]]: −1 on padding rows
  std::vector<int32_t> perm_k;      // [offsets[E_l]]: −1 on padding rows
};
// ids [T, K] global expert ids; local = id − expert_offset in [0, E_l).
Fp4MoePermutation fp4_moe_permute(std::span<const int32_t> ids, int64_t T, int K, int64_t E_l, int64_t expert_offset,
                                  int tile);

enum class Fp4MoeHidden : int { bf16 = 0, nvfp4 = 1, mxfp8 = 2, e4m3 = 3 };
// The hidden states as the gather emits them (bf16 values; block scales only: no global scale, no per-token scale):
// bf16 as is (`bf16_values`), NVFP4 e2m1(code)·e4m3(sf) ([T, H/2] codes, [T, H/16] scales), MXFP8
// e4m3(code)·2^(s−127) ([T, H] codes, [T, H/32] scales), E4M3 e4m3(code). Returns [T, H].
std::vector<float> fp4_moe_dequant_hidden(Fp4MoeHidden format, int64_t T, int64_t H, std::span<const float> bf16_values,
                                          std::span<const uint8_t> codes, std::span<const uint8_t> scales);

// out[t, :H_out] = bf16(Σ_k (k ascending, slots with expanded ≥ 0) w[t,k]·y[expanded[t·K+k], :]) in fp32; y holds
// bf16 values [rows, H] (row stride H), w bf16 values [T, K].
std::vector<float> fp4_moe_finalize(std::span<const float> y, int64_t H, std::span<const int32_t> expanded,
                                    std::span<const float> weights, int64_t T, int K, int64_t H_out);

// FP4 weights [E_l, R, C] dequantized from canonical codes [E_l, R, C/2] and scales [E_l, R, C/16] (nvfp4: E4M3) or
// [E_l, R, C/32] (mxfp4: UE8M0): e2m1·sf — nvfp4's per-expert global factor lives in the §7 scalars.
std::vector<float> fp4_moe_dequant_weights(bool mxfp4, int64_t E_l, int64_t R, int64_t C,
                                           std::span<const uint8_t> codes,
                                           std::span<const uint8_t> scales);

enum class Fp4MoeAct : int { Swiglu = 3, Geglu = 4, Relu2 = 6, Identity = 7 };

struct Fp4MoeLayerProblem {
  int64_t T = 0, H = 0, I = 0, E = 0, E_l = 0, expert_offset = 0, H_out = 0;
  Fp4MoeRouteOptions route;
  Fp4MoeAct activation = Fp4MoeAct::Swiglu;
  std::vector<float> logits;        // [T, E] (values of the logits' dtype)
  std::vector<float> routing_bias;  // [E] or empty
  std::vector<float> x;             // [T, H] dequantized hidden states (fp4_moe_dequant_hidden)
  std::vector<float> per_token_scale;             // [T] or empty
  std::vector<float> w1, w2;                      // dequantized [E_l, 2I | I, H], [E_l, H, I]
  std::vector<float> b1, b2;                      // [E_l, 2I | I], [E_l, H] or empty (accumulator units)
  std::vector<float> alpha, beta, limit;          // [E_l] or empty
  std::vector<float> s_c, s_gate, s_2;            // [E_l] or empty (1)
};

struct Fp4MoeLayerResult {
  Fp4MoeRoute route;        // ids [T, K], bf16 weights
  std::vector<float> y;     // [T·K, H] bf16 values: GEMM2's row of slot (t, k) (0 for non-local slots)
  std::vector<float> out;   // [T, H_out] bf16 values
};

Fp4MoeLayerResult fp4_moe_layer(const Fp4MoeLayerProblem& p);

}  // namespace kiln::ref
