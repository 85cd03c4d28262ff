// kiln/ops/fp4_moe.hpp — the FP4 block-scaled fused MoE (../shared/spec/fp4-moe.md; FlashInfer / TRT-LLM semantics,
// seed-era enum numbers) on sm_90a: routing (§3), the weights' prepack into kiln's Hopper layout (§12.3) and the
// whole layer (route → permute → GEMM1 + activation → GEMM2 → finalize, §2, §12.2), W4A16: FP4 weights dequantized
// exactly to bf16 in registers, bf16 activations, fp32 accumulation, bf16 intermediate.
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

// ---------------------------------------------------------------------------------------------------------------
// Weights (§5.2, §5.3, §6.2). Canonical layout: codes [E_l, R, K/2] u8 (element 2i in the low nibble) and block scales
// [E_l, R, K/16] (nvfp4: E4M3 bytes) or [E_l, R, K/32] (mxfp4: UE8M0 bytes), dtype u8 or e4m3 (bytes either way).
// GEMM1 of a gated activation: R = 2I, rows [0, I) the linear ("up") rows, [I, 2I) the gate rows; non-gated R = I.
// GEMM2: R = H, K = I.
enum class Fp4WeightFormat : int { nvfp4 = 0, mxfp4 = 1 };

// Activation of GEMM1 (§4; seed-era values).
enum class Fp4MoeActivation : int { Swiglu = 3, Geglu = 4, Relu2 = 6, Identity = 7 };

// Bytes of the packed (Hopper-layout) form of E_l experts × R rows × K columns.
int64_t fp4_moe_packed_bytes(int64_t experts, int64_t rows, int64_t k, Fp4WeightFormat format);

// A prepacked weight tensor (device memory owned by the caller), as fp4_moe_prepack returns it.
struct Fp4MoeWeights {
  const void* data = nullptr;  // fp4_moe_packed_bytes bytes, 256-byte aligned
  int64_t experts = 0, rows = 0, k = 0;
  Fp4WeightFormat format = Fp4WeightFormat::nvfp4;
  bool gated = false;  // GEMM1 of a gated activation (rows = 2I: linear then gate)
};

// Canonical codes + scales → kiln's packed layout in `packed` (u8 [fp4_moe_packed_bytes]); run once per weight tensor.
Fp4MoeWeights fp4_moe_prepack(Runtime& rt, const TensorRef& weights, const TensorRef& scales, Fp4WeightFormat format,
                              bool gated, const TensorRef& packed, Stream stream);

// ---------------------------------------------------------------------------------------------------------------
// The layer (§1.2). Optional tensors are null pointers when absent. Per-expert tensors are indexed by local expert.
struct Fp4MoeInputs {
  TensorRef routing_logits;                      // [T, E] f32 | bf16 (routing over all E experts)
  const TensorRef* routing_bias = nullptr;       // [E], the logits' dtype (DeepSeekV3, MiniMax2)
  TensorRef hidden_states;                       // bf16 [T, H] | nvfp4 u8 [T, H/2] | mxfp8 / e4m3 [T, H]
  const TensorRef* hidden_states_scale = nullptr;  // nvfp4 [T, H/16] E4M3 bytes | mxfp8 [T, H/32] UE8M0 bytes
  const TensorRef* per_token_scale = nullptr;    // [T] f32: multiplies GEMM1's accumulator of token t
  Fp4MoeWeights w1, w2;                          // prepacked: w1 [E_l, 2I | I, H], w2 [E_l, H, I]
  const TensorRef* gemm1_bias = nullptr;         // [E_l, 2I | I] f32, accumulator units (§7), canonical row order
  const TensorRef* gemm1_alpha = nullptr;        // [E_l] f32 (Swiglu only)
  const TensorRef* gemm1_beta = nullptr;         // [E_l] f32 (Swiglu only)
  const TensorRef* gemm1_clamp_limit = nullptr;  // [E_l] f32 (Swiglu only)
  const TensorRef* gemm2_bias = nullptr;         // [E_l, H] f32, accumulator units
  const TensorRef* output1_scale_scalar = nullptr;       // [E_l] f32: s_c
  const TensorRef* output1_scale_gate_scalar = nullptr;  // [E_l] f32: s_gate
  const TensorRef* output2_scale_scalar = nullptr;       // [E_l] f32: s_2
  const TensorRef* routing_replay_out = nullptr;  // i16 [N ≥ T, K]: the selected global expert ids
};

enum class Fp4MoeHiddenFormat : int { bf16 = 0, nvfp4 = 1, mxfp8 = 2, e4m3 = 3 };

struct Fp4MoeOptions {
  Fp4MoeRouteOptions routing;  // method, top_k, groups, routed_scaling_factor, norm_topk_prob
  Fp4MoeActivation activation = Fp4MoeActivation::Swiglu;
  Fp4MoeHiddenFormat hidden_format = Fp4MoeHiddenFormat::bf16;
  int64_t num_experts = 0;          // E (routing); the logits' second dim
  int64_t local_expert_offset = 0;  // local experts [offset, offset + w1.experts)
  bool do_finalize = true;
};

// do_finalize: output bf16 [T, H_out], H_out ≤ H. Otherwise gemm2_output bf16 [≥ fp4_moe_max_padded_rows, H]
// (permuted, per-expert padded; padding rows undefined), expert_weights bf16 [T, K], expanded_idx_to_permuted_idx
// i32 [T·K] (−1 for a non-local expert).
struct Fp4MoeOutputs {
  const TensorRef* output = nullptr;
  const TensorRef* gemm2_output = nullptr;
  const TensorRef* expert_weights = nullptr;
  const TensorRef* expanded_idx_to_permuted_idx = nullptr;
};

// Rows of the permuted buffers for T tokens (an upper bound independent of the routing: T·K + E_l·(tile − 1)).
int64_t fp4_moe_max_padded_rows(Runtime& rt, int64_t T, int64_t top_k, int64_t local_experts);
// Workspace bytes the layer needs (taken from the Runtime's scratch when `workspace` is null).
int64_t fp4_moe_workspace_bytes(Runtime& rt, int64_t T, int64_t H, int64_t I, const Fp4MoeOptions& opt,
                                int64_t local_experts);

// Formats: every weight (nvfp4, mxfp4) × hidden (bf16, nvfp4, mxfp8, e4m3) combination is accepted — more than
// FlashInfer's §5.5 list — since the GEMM runs W4A16 on activations dequantized exactly to bf16 (block scales only; an
// nvfp4 / e4m3 global or per-token factor goes through the §7 scalars or per_token_scale). H % 32 == 0, I % 8 == 0,
// H_out % 8 == 0. T = 0 launches nothing. Typed errors name the argument (ops/fp4_moe.cpp).
void fp4_block_scale_moe(Runtime& rt, const Fp4MoeInputs& in, const Fp4MoeOutputs& out, const Fp4MoeOptions& opt,
                         Stream stream, const TensorRef* workspace = nullptr);

}  // namespace kiln
