// ops/fp4_moe_internal.hpp — the contract between the FP4 MoE's grouped GEMM (ops/fp4_moe_gemm.cpp) and the layer's
// other steps (ops/fp4_moe.cpp: permutation, activation gather, finalize, the public op). Spec: fp4-moe.md §7, §12.
#pragma once
#include <cstdint>
#include <optional>

#include "kiln/model.hpp"
#include "kiln/ops/fp4_moe.hpp"

namespace kiln::detail {

// The token tile of the grouped GEMM (wgmma N) for a call whose permuted rows are at most `rows_cap` over `experts`
// local experts: every expert's segment of the permuted buffer starts at a multiple of it (the permutation pads each
// expert's rows up to it). One value per (rows_cap, experts): the layer asks once and passes it to both GEMMs.
int fp4_moe_gemm_token_tile(Runtime& rt, int64_t rows_cap, int64_t experts);

// One grouped GEMM over the local experts: for every expert e and every permuted row r of its segment
// [expert_offsets[e], expert_offsets[e] + expert_counts[e]):
//   acc[r, j] = Σ_k act[r, k] · W[e][j, k]   (W dequantized exactly: e2m1 · block scale; fp32 accumulation)
// and the epilogue writes out[r, ·] (bf16, row stride out_ld):
//   plain (GEMM2, or GEMM1 with a non-gated activation):
//     v = scale_a[e] · (row_scale[r] · acc + bias[e, j]);  out[r, j] = bf16(scale_b[e] · act(v))   (j < rows)
//       act = identity for GEMM2 (activation ignored) and Identity; max(v, 0)² for Relu2
//   gated (GEMM1, Swiglu / Geglu; W rows [0, I) linear, [I, 2I) gate; out has I columns):
//     x0 = scale_a[e] · (row_scale[r] · acc[r, j] + bias[e, j]);  x1 = scale_a[e] · (row_scale[r] · acc[r, I + j] + bias[e, I + j])
//     Swiglu: g = min(x1, L), l = clamp(x0, −L, L), h = g · σ(α · g) · (l + β)   (α = 1, β = 0, L = +inf when absent)
//     Geglu:  h = gelu_erf(x1) · x0
//     out[r, j] = bf16(h · scale_b[e] / scale_a[e])   (= s_c / s_gate: FC1 output in the units §7 hands GEMM2)
// Absent pointers mean 1 (scales, row_scale), 0 (bias) or the Swiglu defaults. Rows of a segment past its count and
// the padding between segments are neither read for the result nor written. scale_a = s_gate (GEMM1) or s_2 (GEMM2),
// scale_b = s_c (GEMM1) or absent (GEMM2). Where scale_a[e] == 0 the gated output is 0.
struct Fp4MoeGemmCall {
  Fp4MoeWeights w;                         // prepacked [E_l, rows, k]
  const void* act = nullptr;               // bf16 [rows_cap, w.k], row stride act_ld (elements, multiple of 8)
  int64_t act_ld = 0;
  const int32_t* expert_offsets = nullptr; // device [E_l + 1]; multiples of the token tile; [E_l] = total padded rows
  const int32_t* expert_counts = nullptr;  // device [E_l]
  int64_t rows_cap = 0;                    // host bound on expert_offsets[E_l] (grid sizing, no host sync)
  int token_tile = 0;                      // fp4_moe_gemm_token_tile(rt, rows_cap, w.experts)
  int split = 0;                           // split-K ranks 1, 2, 4; 0: the tuned config's, else by the grid
  int64_t tiles_cap = 0;                   // host bound on the token tiles holding rows (0: ceil(rows_cap / tile));
                                           // every tile of a padded segment holds ≥ 1 real row, so the routed rows
                                           // (T·K) bound it: at decode the grid is T·K tiles, not rows_cap / tile
  const float* row_scale = nullptr;        // [rows_cap] (per_token_scale gathered to permuted rows)
  const float* bias = nullptr;             // [E_l, w.rows] accumulator units, canonical row order
  const float* scale_a = nullptr;          // [E_l]
  const float* scale_b = nullptr;          // [E_l]
  const float* alpha = nullptr;            // [E_l] Swiglu
  const float* beta = nullptr;             // [E_l] Swiglu
  const float* limit = nullptr;            // [E_l] Swiglu
  bool gemm1 = false;                      // epilogue with the activation (gated when w.gated)
  Fp4MoeActivation activation = Fp4MoeActivation::Swiglu;
  void* out = nullptr;                     // bf16 [rows_cap, w.gated ? w.rows / 2 : w.rows], row stride out_ld
  int64_t out_ld = 0;
  // Launched as a programmatic dependent of the previous kernel on the stream (runtime_impl.hpp LaunchDims::pdl):
  // only where that kernel is kiln's own and wrote the activations / row_scale (the layer's gather, GEMM1) and the
  // offsets and counts were complete when it started. The weights' first stages load before the wait.
  bool pdl = false;
};

// A model config's FP4 MoE as the layer's kernels are specialized for it (prewarm: the three families' enumerate):
// nullopt when ModelConfig::fp4_moe is empty or a shape is one the op refuses. Routing method −1 is derived:
// sigmoid with groups or an expert bias → DeepSeekV3, else SigmoidRenorm (norm_topk_prob) / Sigmoid; softmax →
// Renormalize (norm_topk_prob) / Default.
struct Fp4MoeModel {
  Fp4WeightFormat weights = Fp4WeightFormat::nvfp4;
  Fp4MoeHiddenFormat hidden = Fp4MoeHiddenFormat::bf16;
  Fp4MoeActivation activation = Fp4MoeActivation::Swiglu;
  Fp4MoeRouteOptions routing;
  bool routing_bias = false;  // the selection bias (DeepSeekV3, MiniMax2 with expert_bias)
  int64_t experts = 0, local_experts = 0, hidden_size = 0, intermediate = 0;
};
std::optional<Fp4MoeModel> fp4_moe_of(const ModelConfig& m);

// Validates the call (typed errors naming the field) and launches the GEMM on `stream` (sm_90a; DeviceError
// elsewhere). Nothing on the host depends on the routing.
void fp4_moe_gemm(Runtime& rt, const Fp4MoeGemmCall& call, Stream stream);

// ---------------------------------------------------------------------------------------------------------------
// The layer's own steps (ops/fp4_moe.cpp, templates/kiln/fp4_moe.cuh), also entry points for the tests and benches.
// No validation beyond the launch shape: the public op validates. `pdl`: launched as a programmatic dependent of the
// previous kernel on the stream (only where that kernel is kiln's own, runtime_impl.hpp LaunchDims::pdl).

// Permutation metadata from topk_ids [T, K] (global ids; local = id − expert_offset in [0, experts)): rows ordered by
// (local expert, token, k), each expert's segment padded up to token_tile; expert_offsets[experts] = total padded
// rows ≤ rows_cap. Padding rows get token and k −1; rows past the total are not written. Deterministic, no host sync.
struct Fp4MoePermuteCall {
  const int32_t* topk_ids = nullptr;   // [T, K]
  int64_t tokens = 0;
  int top_k = 0;
  int64_t experts = 0;                 // E_l
  int64_t expert_offset = 0;
  int token_tile = 0;
  int32_t* expert_counts = nullptr;    // [E_l]
  int32_t* expert_offsets = nullptr;   // [E_l + 1]
  int32_t* expanded_idx_to_permuted_idx = nullptr;  // [T·K], −1 for a non-local expert
  int32_t* permuted_idx_to_token = nullptr;         // [rows_cap]
  int32_t* permuted_idx_to_k = nullptr;             // [rows_cap]
  int32_t* chunk_counts = nullptr;     // [fp4_moe_permute_chunk_words(T, E_l)] scratch of the three-kernel path
  int16_t* replay = nullptr;           // [≥ T, K] int16 global ids of the rows < T, or null
  int path = -1;                       // −1: by T·K; 0: one CTA; 1: histogram / scan / scatter
  bool pdl = false;
};
int64_t fp4_moe_permute_chunk_words(int64_t tokens, int64_t experts);
void fp4_moe_permute(Runtime& rt, const Fp4MoePermuteCall& call, Stream stream);

// Permuted bf16 activations [rows_cap, H] (row stride H) from the hidden states, and row_scale[r] =
// per_token_scale[token] (0 on padding rows) when both are given. Padding rows become zeros; rows ≥
// expert_offsets[experts] are not touched. H % 32 == 0.
struct Fp4MoeGatherCall {
  const void* hidden = nullptr;        // bf16 [T, H] | nvfp4 u8 [T, H/2] | mxfp8 / e4m3 [T, H]
  const void* hidden_scale = nullptr;  // nvfp4 [T, H/16] E4M3 | mxfp8 [T, H/32] UE8M0 | null
  Fp4MoeHiddenFormat format = Fp4MoeHiddenFormat::bf16;
  int64_t hidden_size = 0;             // H
  const float* per_token_scale = nullptr;
  const int32_t* permuted_idx_to_token = nullptr;
  const int32_t* expert_offsets = nullptr;
  int64_t experts = 0;
  int64_t rows_cap = 0;
  void* act = nullptr;
  float* row_scale = nullptr;
  bool pdl = false;
};
void fp4_moe_gather(Runtime& rt, const Fp4MoeGatherCall& call, Stream stream);

// out[t, :H_out] = bf16(Σ_k w[t,k]·y[expanded[t·K+k]]) over the slots with expanded ≥ 0, fixed k order, fp32. H_out % 8
// == 0, strides multiples of 8 elements.
struct Fp4MoeFinalizeCall {
  const void* y = nullptr;             // bf16 [rows, y_ld]
  int64_t y_ld = 0;
  const int32_t* expanded_idx_to_permuted_idx = nullptr;
  const void* weights = nullptr;       // bf16 [T, K]
  int64_t tokens = 0;
  int top_k = 0;
  int64_t hidden_out = 0;
  void* out = nullptr;                 // bf16 [T, out_ld]
  int64_t out_ld = 0;
  bool pdl = false;
};
void fp4_moe_finalize(Runtime& rt, const Fp4MoeFinalizeCall& call, Stream stream);

// The token tile the layer asks the GEMM for (fp4_moe_gemm_token_tile with rows_cap = T·K, the routed rows), and the
// permuted rows' bound T·K + E_l·(tile − 1) (0 for T = 0).
int fp4_moe_layer_token_tile(Runtime& rt, int64_t T, int64_t top_k, int64_t local_experts);

}  // namespace kiln::detail
