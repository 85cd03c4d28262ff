// kiln/ops/fp4_moe_import.hpp — importers of FP4 MoE expert weights into kiln's canonical layout (spec fp4-moe.md
// §6.2–§6.4), for loading checkpoints: host memory in, host memory out, plain byte moves (no GPU, no Runtime). The
// canonical layout is what fp4_moe_prepack takes: codes [E_l, R, K/2] (element 2i in the low nibble), block scales
// [E_l, R, K/16 | K/32] bytes, biases fp32 [E_l, R]; a gated GEMM1 has R = 2I rows, [0, I) linear ("up"), [I, 2I)
// gate.
#pragma once
#include <cstdint>

#include "kiln/ops/fp4_moe.hpp"

namespace kiln {

// One expert-batched weight tensor in host memory. `bias` may be null (then the output's bias is not written).
struct Fp4HostWeights {
  const uint8_t* codes = nullptr;   // [E_l, rows, k/2]
  const uint8_t* scales = nullptr;  // canonical [E_l, rows, k/B] or TRT-LLM-gen swizzled (fp4_moe_trtllm_scale_bytes)
  const float* bias = nullptr;      // [E_l, rows] or null
};
struct Fp4HostWeightsOut {
  uint8_t* codes = nullptr;
  uint8_t* scales = nullptr;
  float* bias = nullptr;  // written when the input has a bias (then required)
};

// The shape of a tensor: E_l experts × `rows` × `k` elements, its format (B = 16 nvfp4, 32 mxfp4), and whether it is
// a gated GEMM1 (rows = 2I).
struct Fp4HostShape {
  int64_t experts = 0, rows = 0, k = 0;
  Fp4WeightFormat format = Fp4WeightFormat::nvfp4;
  bool gated = false;
};

// ---- TRT-LLM-gen's shuffled layout (FlashInfer use_shuffled_weight = True, MajorK; §6.4) ---------------------------
// Export (canonical → TRT-LLM-gen): 1. gated only: row 2j = linear row j, row 2j + 1 = gate row I + j; 2. inside
// every aligned block of `row_block` rows (32 when epilogue_tile_m is a multiple of 128, else 16) destination row d
// takes source row (row_block / 8)·(d mod 8) + ⌊d / 8⌋; 3. the same row order for scales and biases; 4. scales in the
// 128×4 swizzled layout — rows padded to 128, columns (C = k/B) to 4, byte (e, r, c) at
// e·⌈R/128⌉·⌈C/4⌉·512 + (r/128)·⌈C/4⌉·512 + (c/4)·512 + (r mod 32)·16 + ((r mod 128)/32)·4 + (c mod 4), padding 0.
// Import inverts it. gpt-oss checkpoints shuffled the way vLLM does (pairs (up, gate) instead of step 1) give the
// same bytes, so they import the same way. Constraints (typed errors): rows a multiple of row_block, k a positive
// multiple of B, row_block 16 or 32; `out.scales` holds fp4_moe_trtllm_scale_bytes bytes on export.
int64_t fp4_moe_trtllm_scale_bytes(const Fp4HostShape& shape);
void fp4_moe_import_trtllm(const Fp4HostWeights& in, const Fp4HostShape& shape, const Fp4HostWeightsOut& out,
                           int row_block = 32);
void fp4_moe_export_trtllm(const Fp4HostWeights& in, const Fp4HostShape& shape, const Fp4HostWeightsOut& out,
                           int row_block = 32);

// ---- gpt-oss checkpoints (§6.3 b): GEMM1 rows interleaved, row 2j = gate j, row 2j + 1 = up j, scales and bias the
// same → canonical [up; gate]. shape.gated must be true (rows = 2I).
void fp4_moe_import_gpt_oss(const Fp4HostWeights& in, const Fp4HostShape& shape, const Fp4HostWeightsOut& out);

// ---- plain per-expert projections (§6.3 c): w1 (gate) and w3 (up), each [E_l, I, k/2] with scales [E_l, I, k/B]
// and optional biases [E_l, I] → canonical GEMM1 [w3; w1] with rows = 2I (shape.rows = 2I, shape.gated = true).
// Both biases or neither.
void fp4_moe_import_w1_w3(const Fp4HostWeights& w1, const Fp4HostWeights& w3, const Fp4HostShape& shape,
                          const Fp4HostWeightsOut& out);

}  // namespace kiln
