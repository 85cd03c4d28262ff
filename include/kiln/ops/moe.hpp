// kiln/ops/moe.hpp — MoE dispatch: top-k routing (forward, backward), the padded row-id map, permute, unpermute.
//
// Semantics: ../shared/spec/linghe-kernels.md §6 (map, permute, unpermute), §13 (HEAD group_topk_score) and
// ../shared/spec/fp4-moe.md §3 (routing methods). Everything runs on the device with no host synchronization: counts
// and offsets stay on the GPU, grids are sized from upper bounds, so every op can be captured in a CUDA graph.
// Compile-time (specialization key): E, top_k, score function, n_group, topk_group, renormalize, bias presence;
// the row width and dtypes of the permutes. Run-time: T, pointers, scaling factor, multiple_of, num_out_tokens.
#pragma once
#include <cstdint>

#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

enum class MoeScore : int { softmax = 0, sigmoid = 1 };

struct MoeRoutingOptions {
  int top_k = 8;
  MoeScore score = MoeScore::softmax;
  int n_group = 1;             // DeepSeek-V3 grouped top-k: E/n_group contiguous experts per group …
  int topk_group = 1;          // … of which the topk_group best (sum of each group's two largest keys) stay eligible
  bool renormalize = false;    // p = s / (Σ_selected s + 1e-20)
  float scaling_factor = 1.0f; // routed scaling factor, applied last
};

// The padded row-id map (linghe triton_make_row_id_map_and_indices, plus kiln's counts and offsets).
struct MoeRowIdMap {
  TensorRef row_id_map;         // [T, E] int32: destination row of (t, e), −1 where t is not routed to e
  TensorRef row_id_indices;     // [num_out] int32, optional: token of each row; −1 on padding rows and past the end
  TensorRef tokens_per_expert;  // [E] int32: real counts c_e
  TensorRef padded_counts;      // [E] int32, optional: roundup(c_e, multiple_of)
  TensorRef offsets;            // [E + 1] int32, optional: off_e = Σ_{e'<e} padded counts; [E] = rows used
};

// Upper bound of the rows a map with at most `k` experts per token can use: T·k + min(E, T·k)·(multiple_of − 1).
int64_t moe_max_out_rows(int64_t T, int64_t E, int64_t k, int64_t multiple_of);

// Top-k routing from fp32 logits [T, E] (E % 4 == 0, E ≤ 512, top_k ≤ E, n_group | E, n_group ≤ 32,
// topk_group ≤ n_group, top_k ≤ topk_group·E/n_group; groups of E/n_group experts must fit a lane layout: a multiple
// of 4 experts per lane, ≥ E/32 and ≤ 64, dividing or divisible by the group size — true for every group size that is
// a multiple of 4 and most others). expert_bias [E] fp32 optional (selection only).
// Outputs: probs [T, E] fp32 (0 where not routed), routing_map [T, E] uint8 (0/1), tokens_per_expert [E] int32.
// Selection: scores s = softmax(z) or σ(z); key = s + bias with a bias, else z (same order as s); ties go to the
// lower expert index. If `map` is given (its tokens_per_expert may be left empty: the op's own is used), the padded
// row-id map is built in the same call (multiple_of ∈ {1, 2, …, 128}) from the routing kernel's per-chunk counts and
// per-pick records.
// workspace: optional int32 [≥ moe_routing_workspace_elems(T, E, top_k)] (chunk and superblock counts, the picks'
// records); its contents need no initialization. If empty, kiln uses the Runtime's scratch for `stream` (README:
// scratch memory).
void moe_topk_routing_fwd(Runtime& rt, const TensorRef& logits, const TensorRef& expert_bias, const TensorRef& probs,
                          const TensorRef& routing_map, const TensorRef& tokens_per_expert,
                          const MoeRoutingOptions& opts, Stream stream, const MoeRowIdMap* map = nullptr,
                          int multiple_of = 1, const TensorRef& workspace = {});
// (max(ceil(T/32), 1) + ceil(T/512))·E + T·k, k = min(top_k, E) (top_k 0: E, enough for any routing and for
// moe_make_row_id_map, which needs (ceil(T/32) + ceil(T/512))·E + 1 for T ≥ 1, E for T = 0).
int64_t moe_routing_workspace_elems(int64_t T, int64_t E, int64_t top_k = 0);

// dlogits [T, E] fp32 from dprobs [T, E] fp32, the forward's logits and routing_map (opts as in the forward).
void moe_topk_routing_bwd(Runtime& rt, const TensorRef& dprobs, const TensorRef& logits,
                          const TensorRef& routing_map, const TensorRef& dlogits, const MoeRoutingOptions& opts,
                          Stream stream);

// Row-id map of any routing map [T, E] (uint8 or int32, nonzero = routed): expert-major rows, each expert's segment
// padded to a multiple of `multiple_of` (1 … 128), tokens in order inside a segment. `max_per_token` bounds the
// routed experts per token (default E) and sets the least row_id_indices length (moe_max_out_rows). workspace as
// in moe_topk_routing_fwd.
void moe_make_row_id_map(Runtime& rt, const TensorRef& routing_map, const MoeRowIdMap& out, int multiple_of,
                         Stream stream, int max_per_token = 0, const TensorRef& workspace = {});

// ---- permute / unpermute -----------------------------------------------------------------------------------------

enum class MoeScaleLayout : int {
  automatic = 0,    // from the shape; a typed error when both or neither fit (T == Hd/128 is ambiguous)
  token_major = 1,  // [T, Hd/128] (linghe's permute)
  m_major = 2,      // [Hd/128, T] (kiln's and linghe's quantizers, DeepGEMM's LHS scales)
};

struct MoePermuteOptions {
  // The routing the map came from, for the host-side bound num_out ≥ moe_max_out_rows(T, E, top_k, multiple_of)
  // (the counts themselves live on the device). top_k 0 means E.
  int top_k = 0;
  int multiple_of = 1;
  MoeScaleLayout scale_layout = MoeScaleLayout::automatic;
  bool round_scale = false;  // padding rows get scale 2^-99 (the power-of-two rule's zero-block scale), else 1e-30
  // Also write the rows past offsets[E] (the slack of a num_out sized for the worst case) as padding rows. Off by
  // default: no consumer reads them (grouped GEMMs take the offsets), and at T = 8192, top-8, P = 16 they would
  // add ≈ 2000 rows of writes.
  bool fill_tail = false;
};

// Rows of inp [T, Hd] (bf16 or fp8 e4m3; copied verbatim, Hd·size a multiple of 16) into the expert-major rows of a
// row-id map: out [num_out, Hd] (inp's dtype). Optional: fp8 1×128 block scales `scale` (fp32, token-major [T, Hd/128]
// or M-major [Hd/128, T]; e4m3 input only) → scale_out [Hd/128, num_out] (M-major over the permuted rows); router
// probs [T, E] fp32 → probs_out [num_out]. map.row_id_map is required; with map.offsets and map.tokens_per_expert the
// padding rows inside each expert's padded segment (and, with fill_tail, every row past offsets[E]) are written by
// the same launch: data 0, scale 1e-30 (2^-99 with round_scale), prob 0. Without them the map must be unpadded and
// only the routed rows are written.
void moe_permute(Runtime& rt, const TensorRef& inp, const TensorRef& scale, const TensorRef& probs,
                 const MoeRowIdMap& map, const TensorRef& out, const TensorRef& scale_out, const TensorRef& probs_out,
                 const MoePermuteOptions& opts, Stream stream);

// out[t] = Σ_{e ascending, r = row_id_map[t, e] ≥ 0} weights[r]·x[r] (fp32, fma in that order, rounded once to x's
// dtype; without weights a plain sum). x [num_out, H] bf16 or fp32, out [T, H] x's dtype, weights [num_out] fp32
// optional (the prob-weighted combine). restore_probs [T, E] fp32 optional (needs weights): weights[r] where routed,
// 0 elsewhere — the backward of the probs permutation. Deterministic (no atomics); padding rows are never read.
void moe_unpermute(Runtime& rt, const TensorRef& x, const TensorRef& row_id_map, const TensorRef& weights,
                   const TensorRef& out, const TensorRef& restore_probs, const MoePermuteOptions& opts,
                   Stream stream);

// Fused permute + pad + fp8 1×128 block quantization of bf16 rows in both layouts (linghe HEAD's block-padded
// permute), reading x once: the rows of each expert's padded segment (the map's multiple_of, a multiple of 4; 16 in
// linghe) are gathered through map.row_id_indices (padding rows read as 0) and quantized with linghe-kernels.md §2's
// rule and per-expert segmented layout, with c_e = the padded count pc_e and off_e = offsets[e]:
//   q         [num_out, Hd] e4m3        rows off_e … off_e + pc_e − 1 (row-wise 1×128 blocks)
//   q_scale   [num_out·Hd/128] fp32     expert e at off_e·Hd/128, shaped [Hd/128, pc_e]
//   qT        [num_out·Hd] e4m3         expert e at off_e·Hd, shaped [Hd, pc_e] (128 tokens × 1 channel blocks)
//   qT_scale  [moe_block_quant_scale_blocks(num_out, E)·Hd] fp32: expert e at b_e·Hd, [ceil(pc_e/128), Hd],
//             b_e = Σ_{e'<e} ceil(pc_e'/128) (a partial last token block is quantized as if zero-padded)
//   probs_out [num_out] fp32 optional (from probs [T, E]; 0 on padding rows)
// Padding rows get codes 0 and scale 1e-30 (2^-99 with round_scale), the quantization of a zero block. Rows past
// offsets[E] are not written. map needs row_id_indices and offsets.
struct MoeBlockQuantPermuteOutputs {
  TensorRef q, q_scale, qT, qT_scale, probs_out;
};
int64_t moe_block_quant_scale_blocks(int64_t num_out, int64_t E);  // ceil(num_out/128) + E ≥ Σ_e ceil(pc_e/128)
void moe_permute_block_quant(Runtime& rt, const TensorRef& x, const TensorRef& probs, const MoeRowIdMap& map,
                             const MoeBlockQuantPermuteOutputs& out, const MoePermuteOptions& opts, Stream stream);

}  // namespace kiln
