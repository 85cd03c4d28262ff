// tests/reference/moe.hpp — CPU references for MoE routing, the padded row-id map, permute and unpermute.
//
// Semantics: shared/spec/linghe-kernels.md §6, §13; fp4-moe.md §3. The top-k forward replays kiln's fp32 operation
// sequence exactly (kiln_exp, the softmax sum in the GPU's lane order, the pick-order denominator), so ids, probs and
// counts are compared bit-exactly; the backward is computed in double and compared with a tolerance. The map,
// permute and unpermute are exact (integer rules, byte copies, one fixed fp32 accumulation order).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace kiln::ref {

// kiln's exp(x) (templates/kiln/moe_routing.cuh kiln_exp), same fp32 operations.
float kiln_exp(float x);

struct TopkOptions {
  int top_k = 8;
  bool sigmoid = false;
  int n_group = 1, topk_group = 1;
  bool renormalize = false;
  float scale = 1.0f;
};

struct TopkResult {
  std::vector<float> probs;          // [T, E]
  std::vector<uint8_t> routing_map;  // [T, E]
  std::vector<int32_t> counts;       // [E]
  std::vector<float> scores;         // [T, E] s (softmax or sigmoid), for tests
  std::vector<float> keys;           // [T, E] selection keys, for tests
  std::vector<int32_t> picks;        // [T, top_k] expert ids in pick order
};

// logits [T, E]; bias [E] or empty.
TopkResult topk_routing(std::span<const float> logits, int64_t T, int64_t E, std::span<const float> bias,
                        const TopkOptions& o);

// dlogits [T, E] in double from dprobs, logits and the forward's routing map.
std::vector<double> topk_routing_bwd(std::span<const float> dprobs, std::span<const float> logits,
                                     std::span<const uint8_t> routing_map, int64_t T, int64_t E,
                                     const TopkOptions& o);

struct RowIdMapResult {
  std::vector<int32_t> row_id_map;      // [T, E]
  std::vector<int32_t> row_id_indices;  // [num_out]
  std::vector<int32_t> counts, padded_counts;  // [E]
  std::vector<int32_t> offsets;         // [E + 1]
};

// routing flags [T, E] (nonzero = routed).
RowIdMapResult row_id_map(std::span<const uint8_t> flags, int64_t T, int64_t E, int multiple_of, int64_t num_out);

// Permute of rows of `row_bytes` bytes: out [num_out, row_bytes]; scales (optional; token-major [T, ns] or M-major
// [ns, T]) → scale_out [ns, num_out]; probs (optional) [T, E] → probs_out [num_out]. Padding rows (in a segment past
// its real count, and rows ≥ offsets[E]; a test compares those only with fill_tail): data 0, scale `pad_scale`,
// prob 0.
struct PermuteResult {
  std::vector<uint8_t> out;
  std::vector<float> scale_out, probs_out;
};
// ns = 0: no scales; has_probs: probs_out is produced (probs may be empty when T = 0).
PermuteResult permute(std::span<const uint8_t> inp, int64_t row_bytes, std::span<const float> scale, int64_t ns,
                      bool scale_m_major, std::span<const float> probs, bool has_probs, const RowIdMapResult& map,
                      int64_t T, int64_t E, int64_t num_out, float pad_scale);

// out[t] = Σ_{e ascending, r = map[t,e] ≥ 0} x[r]·w[r] in fp32 (fma; without weights plain adds), x given as floats
// [num_out, H]; returned in fp32 (the caller rounds to the output dtype). restore [T, E] = w[r] or 0.
void unpermute(std::span<const float> x, int64_t H, std::span<const float> weights, std::span<const int32_t> map,
               int64_t T, int64_t E, std::vector<float>& out, std::vector<float>& restore);

// Fused permute + pad + 1×128 quantization (kiln moe_permute_block_quant): x [T, Hd] bf16 values as floats, the
// map's inverse indices and offsets; outputs sized like the op's (q [num_out·Hd], q_scale [num_out·Hd/128],
// qT [num_out·Hd], qT_scale [(ceil(num_out/128) + E)·Hd], probs_out [num_out]); only the segments are written.
struct BlockQuantPermuteResult {
  std::vector<uint8_t> q, qT;
  std::vector<float> q_scale, qT_scale, probs_out;
  int64_t scale_blocks_used = 0;  // Σ_e ceil(pc_e/128)
};
void permute_block_quant(std::span<const float> x, int64_t T, int64_t Hd, std::span<const float> probs,
                         const RowIdMapResult& map, int64_t E, int64_t num_out, bool round_scale,
                         BlockQuantPermuteResult& out);

}  // namespace kiln::ref
