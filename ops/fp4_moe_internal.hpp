// ops/fp4_moe_internal.hpp — the contract between the FP4 MoE's grouped GEMM (ops/fp4_moe_gemm.cpp) and the layer's
// other steps (ops/fp4_moe.cpp: permutation, activation gather, finalize, the public op). Spec: fp4-moe.md §7, §12.
#pragma once
#include <cstdint>

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
};

// Validates the call (typed errors naming the field) and launches the GEMM on `stream` (sm_90a; DeviceError
// elsewhere). Nothing on the host depends on the routing.
void fp4_moe_gemm(Runtime& rt, const Fp4MoeGemmCall& call, Stream stream);

}  // namespace kiln::detail
