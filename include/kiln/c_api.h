/* kiln/c_api.h — a C ABI over kiln's ops: raw device pointers, status codes, thread-local last-error text.
 * Usable from C, and from Python through ctypes (tensor.data_ptr()). */
#ifndef KILN_C_API_H
#define KILN_C_API_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kiln_status {
  KILN_OK = 0,
  KILN_ERROR_INVALID_ARGUMENT = 1,
  KILN_ERROR_SHAPE_MISMATCH = 2,
  KILN_ERROR_UNSUPPORTED_DTYPE = 3,
  KILN_ERROR_DEVICE = 4,
  KILN_ERROR_COMPILE = 5,
  KILN_ERROR_CACHE = 6,
  KILN_ERROR_UNKNOWN = 7
} kiln_status;

/* Same numbering as kiln::DType. */
typedef enum kiln_dtype {
  KILN_BF16 = 0, KILN_F16 = 1, KILN_F32 = 2, KILN_E4M3 = 3, KILN_E5M2 = 4,
  KILN_I32 = 5, KILN_I64 = 6, KILN_I16 = 7, KILN_U8 = 8
} kiln_dtype;

typedef struct kiln_runtime kiln_runtime;

/* The message of the last failed call on this thread ("" if none). */
const char* kiln_last_error(void);
const char* kiln_version(void);

/* cache_dir and arch may be NULL (defaults / environment). */
kiln_status kiln_runtime_create(const char* cache_dir, const char* arch, kiln_runtime** out);
void kiln_runtime_destroy(kiln_runtime* rt);

/* x [M, N] bf16 with row stride x_stride (elements); weight [N] (weight_dtype bf16 or f32). Outputs contiguous;
 * those the mode does not produce may be NULL. rms_inv may be NULL; rms_inv_in is read in mode 1 only. */
kiln_status kiln_rms_norm_block_quant_fwd(kiln_runtime* rt, const void* x, int64_t M, int64_t N, int64_t x_stride,
                                          const void* weight, kiln_dtype weight_dtype, const float* rms_inv_in,
                                          void* q, float* q_scale, float* rms_inv, void* qT, float* qT_scale,
                                          float eps, int round_scale, int output_mode, void* stream);

/* x, y [M, N] contiguous in dtype; weight [N] in weight_dtype; rms_inv [M] f32 or NULL. */
kiln_status kiln_rms_norm_fwd(kiln_runtime* rt, const void* x, void* y, int64_t M, int64_t N, kiln_dtype dtype,
                              const void* weight, kiln_dtype weight_dtype, float* rms_inv, float eps, void* stream);

/* dy, x, dx [M, N] contiguous in dtype; dweight [N] in dweight_dtype. Workspace: the runtime's scratch. */
kiln_status kiln_rms_norm_bwd(kiln_runtime* rt, const void* dy, const void* x, void* dx, int64_t M, int64_t N,
                              kiln_dtype dtype, const void* weight, kiln_dtype weight_dtype, void* dweight,
                              kiln_dtype dweight_dtype, float eps, void* stream);

/* ---- ops over tensor descriptors --------------------------------------------------------------------------------
 * A kiln_tensor describes one device tensor as kiln::TensorRef does: pointer, dtype, ndim (1 … 6) and, per dim, the
 * size and the stride in elements (row-major contiguous: kiln_tensor_contiguous). An optional tensor is passed as
 * NULL (a kiln_tensor* of 0). Shapes, dtypes and strides are validated by the op exactly as in C++ (the C++ header
 * named beside each call states them); a violation returns its status with the message naming the argument. */
#define KILN_MAX_DIMS 6
typedef struct kiln_tensor {
  void* data;
  kiln_dtype dtype;
  int32_t ndim;
  int64_t shape[KILN_MAX_DIMS];
  int64_t strides[KILN_MAX_DIMS]; /* elements */
} kiln_tensor;

/* A row-major contiguous descriptor (ndim outside 1 … 6 gives ndim 0: rejected by any op that receives it). */
kiln_tensor kiln_tensor_contiguous(void* data, kiln_dtype dtype, int32_t ndim, const int64_t* shape);

/* kiln/ops/router_gemm.hpp: logits[T, E] f32 = x[T, K] bf16 · w[E, K]ᵀ bf16. */
kiln_status kiln_router_gemm_fp32_fwd(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* w,
                                      const kiln_tensor* logits, void* stream);
/* dx = g · w (bf16), dw = gᵀ · x (f32); dx or dw may be NULL (not both), workspace may be NULL (kiln uses the
 * runtime's scratch). precision: 4 standard (default), 0 tf32, 1 high — kiln::RouterGemmPrecision. */
kiln_status kiln_router_gemm_fp32_bwd(kiln_runtime* rt, const kiln_tensor* g, const kiln_tensor* x,
                                      const kiln_tensor* w, const kiln_tensor* dx, const kiln_tensor* dw,
                                      const kiln_tensor* workspace, int precision, void* stream);
kiln_status kiln_router_gemm_fp32_bwd_workspace_elems(kiln_runtime* rt, int64_t T, int64_t K, int64_t E,
                                                      int precision, int64_t* out);

/* kiln/ops/moe.hpp. score: 0 softmax, 1 sigmoid (kiln::MoeScore). */
typedef struct kiln_moe_routing_options {
  int32_t top_k;
  int32_t score;
  int32_t n_group;
  int32_t topk_group;
  int32_t renormalize;
  float scaling_factor;
} kiln_moe_routing_options;
/* The padded row-id map (kiln::MoeRowIdMap); row_id_map is required where a map is, the others may be NULL. */
typedef struct kiln_moe_row_id_map {
  const kiln_tensor* row_id_map;
  const kiln_tensor* row_id_indices;
  const kiln_tensor* tokens_per_expert;
  const kiln_tensor* padded_counts;
  const kiln_tensor* offsets;
} kiln_moe_row_id_map;
/* scale_layout: 0 automatic, 1 token-major, 2 M-major (kiln::MoeScaleLayout). */
typedef struct kiln_moe_permute_options {
  int32_t top_k;
  int32_t multiple_of;
  int32_t scale_layout;
  int32_t round_scale;
  int32_t fill_tail;
} kiln_moe_permute_options;

int64_t kiln_moe_max_out_rows(int64_t T, int64_t E, int64_t k, int64_t multiple_of);
int64_t kiln_moe_routing_workspace_elems(int64_t T, int64_t E, int64_t top_k);
/* map may be NULL (no map); expert_bias and workspace may be NULL. */
kiln_status kiln_moe_topk_routing_fwd(kiln_runtime* rt, const kiln_tensor* logits, const kiln_tensor* expert_bias,
                                      const kiln_tensor* probs, const kiln_tensor* routing_map,
                                      const kiln_tensor* tokens_per_expert, const kiln_moe_routing_options* opts,
                                      const kiln_moe_row_id_map* map, int multiple_of, const kiln_tensor* workspace,
                                      void* stream);
kiln_status kiln_moe_topk_routing_bwd(kiln_runtime* rt, const kiln_tensor* dprobs, const kiln_tensor* logits,
                                      const kiln_tensor* routing_map, const kiln_tensor* dlogits,
                                      const kiln_moe_routing_options* opts, void* stream);
kiln_status kiln_moe_make_row_id_map(kiln_runtime* rt, const kiln_tensor* routing_map, const kiln_moe_row_id_map* out,
                                     int multiple_of, int max_per_token, const kiln_tensor* workspace, void* stream);
kiln_status kiln_moe_permute(kiln_runtime* rt, const kiln_tensor* inp, const kiln_tensor* scale,
                             const kiln_tensor* probs, const kiln_moe_row_id_map* map, const kiln_tensor* out,
                             const kiln_tensor* scale_out, const kiln_tensor* probs_out,
                             const kiln_moe_permute_options* opts, void* stream);
kiln_status kiln_moe_unpermute(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* row_id_map,
                               const kiln_tensor* weights, const kiln_tensor* out, const kiln_tensor* restore_probs,
                               const kiln_moe_permute_options* opts, void* stream);

/* kiln/ops/moe.hpp: the fused permute + pad + fp8 1×128 block quantization (moe_permute_block_quant). probs and
 * probs_out may be NULL; opts as for kiln_moe_permute (scale_layout and fill_tail unused). */
typedef struct kiln_moe_block_quant_permute_outputs {
  const kiln_tensor* q;
  const kiln_tensor* q_scale;
  const kiln_tensor* qT;
  const kiln_tensor* qT_scale;
  const kiln_tensor* probs_out;
} kiln_moe_block_quant_permute_outputs;
int64_t kiln_moe_block_quant_scale_blocks(int64_t num_out, int64_t E);
kiln_status kiln_moe_permute_block_quant(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* probs,
                                         const kiln_moe_row_id_map* map,
                                         const kiln_moe_block_quant_permute_outputs* out,
                                         const kiln_moe_permute_options* opts, void* stream);

/* ---- the other families -------------------------------------------------------------------------------------------
 * An options pointer may be NULL: the C++ defaults (stated beside each struct). Booleans are int32 (0 false, else
 * true); enum numbers are the C++ enums' (out-of-range values are rejected naming the field). A workspace tensor may be
 * NULL (kiln uses the runtime's scratch); a *_workspace_elems call depends on the device (a device error without a
 * driver). */

/* kiln/ops/silu.hpp: the quantized outputs (only those the mode produces; the others may be NULL). */
typedef struct kiln_silu_block_quant_outputs {
  const kiln_tensor* q;
  const kiln_tensor* q_scale;
  const kiln_tensor* qT;
  const kiln_tensor* qT_scale;
} kiln_silu_block_quant_outputs;
/* Defaults: round_scale 0, output_mode 2 (0 row-wise, 1 transposed, 2 both); check_counts 0, trailing_rows 0 (read
 * by the batched ops only). */
typedef struct kiln_silu_options {
  int32_t round_scale;
  int32_t output_mode;
  int32_t check_counts;
  int32_t trailing_rows;
} kiln_silu_options;
kiln_status kiln_silu_block_quant_fwd(kiln_runtime* rt, const kiln_tensor* x, const kiln_silu_block_quant_outputs* out,
                                      const kiln_silu_options* opts, void* stream);
/* round_scale of opts only. */
kiln_status kiln_silu_block_quant_bwd(kiln_runtime* rt, const kiln_tensor* g, const kiln_tensor* x,
                                      const kiln_silu_block_quant_outputs* dx, const kiln_silu_options* opts,
                                      void* stream);
int64_t kiln_batch_weighted_silu_max_token_blocks(int64_t M, int64_t E);
/* status may be NULL. */
kiln_status kiln_batch_weighted_silu_block_quant_fwd(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* prob,
                                                     const kiln_tensor* counts,
                                                     const kiln_silu_block_quant_outputs* out,
                                                     const kiln_tensor* status, const kiln_silu_options* opts,
                                                     void* stream);
kiln_status kiln_batch_weighted_silu_block_quant_bwd(kiln_runtime* rt, const kiln_tensor* g, const kiln_tensor* x,
                                                     const kiln_tensor* prob, const kiln_tensor* counts,
                                                     const kiln_silu_block_quant_outputs* dx, const kiln_tensor* dprob,
                                                     const kiln_tensor* status, const kiln_silu_options* opts,
                                                     void* stream);

/* kiln/ops/qk_norm_half_rope.hpp. Defaults: num_heads 0, num_groups 0 (both must be set), eps 1e-6, interleaved 1,
 * position_offset 0, cu_seqlens NULL, max_seqlen 0. */
typedef struct kiln_qk_norm_half_rope_options {
  int32_t num_heads;
  int32_t num_groups;
  float eps;
  int32_t interleaved;
  int64_t position_offset;
  const kiln_tensor* cu_seqlens;
  int64_t max_seqlen;
} kiln_qk_norm_half_rope_options;
kiln_status kiln_qk_norm_half_rope_fwd(kiln_runtime* rt, const kiln_tensor* qkv, const kiln_tensor* q_norm_weight,
                                       const kiln_tensor* k_norm_weight, const kiln_tensor* freqs,
                                       const kiln_tensor* q, const kiln_tensor* k, const kiln_tensor* v,
                                       const kiln_qk_norm_half_rope_options* opts, void* stream);
/* dq_norm_weight / dk_norm_weight may be NULL (not computed). */
kiln_status kiln_qk_norm_half_rope_bwd(kiln_runtime* rt, const kiln_tensor* gq, const kiln_tensor* gk,
                                       const kiln_tensor* gv, const kiln_tensor* qkv, const kiln_tensor* q_norm_weight,
                                       const kiln_tensor* k_norm_weight, const kiln_tensor* freqs,
                                       const kiln_tensor* dqkv, const kiln_tensor* dq_norm_weight,
                                       const kiln_tensor* dk_norm_weight, const kiln_qk_norm_half_rope_options* opts,
                                       const kiln_tensor* workspace, void* stream);
kiln_status kiln_qk_norm_half_rope_bwd_workspace_elems(kiln_runtime* rt, int64_t head_dim, int64_t* out);

/* kiln/ops/rms_norm_rope.hpp (no options struct: eps, and num_heads with 0 meaning Hd/D, as in C++). */
kiln_status kiln_rms_norm_rope_fwd(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* weight,
                                   const kiln_tensor* cos, const kiln_tensor* sin, const kiln_tensor* y, float eps,
                                   int num_heads, void* stream);
kiln_status kiln_rms_norm_rope_bwd(kiln_runtime* rt, const kiln_tensor* dy, const kiln_tensor* x,
                                   const kiln_tensor* weight, const kiln_tensor* cos, const kiln_tensor* sin,
                                   const kiln_tensor* dx, const kiln_tensor* dweight, float eps, int num_heads,
                                   const kiln_tensor* workspace, void* stream);
kiln_status kiln_rms_norm_rope_bwd_workspace_elems(kiln_runtime* rt, int64_t rows, int64_t hidden, int64_t head_dim,
                                                   kiln_dtype dtype, int64_t* out);

/* kiln/ops/group_rms_norm_gate.hpp. Defaults: groups 4 (the number of groups), eps 1e-6, transpose 1. */
typedef struct kiln_group_rms_norm_gate_options {
  int32_t groups;
  float eps;
  int32_t transpose;
} kiln_group_rms_norm_gate_options;
kiln_status kiln_group_rms_norm_gate_fwd(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* gate,
                                         const kiln_tensor* weight, const kiln_tensor* out,
                                         const kiln_group_rms_norm_gate_options* opts, void* stream);
kiln_status kiln_group_rms_norm_gate_bwd(kiln_runtime* rt, const kiln_tensor* dy, const kiln_tensor* x,
                                         const kiln_tensor* gate, const kiln_tensor* weight, const kiln_tensor* dx,
                                         const kiln_tensor* dgate, const kiln_tensor* dweight,
                                         const kiln_group_rms_norm_gate_options* opts, const kiln_tensor* workspace,
                                         void* stream);
kiln_status kiln_group_rms_norm_gate_bwd_workspace_elems(kiln_runtime* rt, int64_t tokens, int64_t dim, int groups,
                                                         kiln_dtype dtype, int64_t* out);

/* kiln/ops/softmax_cross_entropy.hpp. Defaults: ignore_index -100, label_smoothing 0, z_loss 0, vocab_start 0,
 * vocab_total 0 (V), bad_label_row NULL (kiln synchronizes and returns KILN_ERROR_INVALID_ARGUMENT naming labels). */
typedef struct kiln_cross_entropy_options {
  int64_t ignore_index;
  float label_smoothing;
  float z_loss;
  int64_t vocab_start;
  int64_t vocab_total;
  const kiln_tensor* bad_label_row;
} kiln_cross_entropy_options;
/* reduction: 0 sum, 1 mean (kiln::LossReduction). Defaults: reduction 1, scale 1, the tensors NULL. */
typedef struct kiln_fused_cross_entropy_options {
  int32_t reduction;
  float scale;
  const kiln_tensor* loss_total;
  const kiln_tensor* row_max;
  const kiln_tensor* sum_exp;
} kiln_fused_cross_entropy_options;
/* row_max and sum_exp may be NULL (both or neither). */
kiln_status kiln_softmax_cross_entropy_fwd(kiln_runtime* rt, const kiln_tensor* logits, const kiln_tensor* labels,
                                           const kiln_tensor* loss, const kiln_tensor* row_max,
                                           const kiln_tensor* sum_exp, const kiln_cross_entropy_options* opts,
                                           void* stream);
kiln_status kiln_softmax_cross_entropy_bwd(kiln_runtime* rt, const kiln_tensor* logits, const kiln_tensor* labels,
                                           const kiln_tensor* row_max, const kiln_tensor* sum_exp,
                                           const kiln_tensor* grad_loss, const kiln_tensor* dlogits,
                                           const kiln_cross_entropy_options* opts, void* stream);
kiln_status kiln_softmax_cross_entropy_fused(kiln_runtime* rt, const kiln_tensor* logits, const kiln_tensor* labels,
                                             const kiln_tensor* loss, const kiln_tensor* dlogits,
                                             const kiln_fused_cross_entropy_options* fused,
                                             const kiln_cross_entropy_options* opts, void* stream);
kiln_status kiln_softmax_cross_entropy_partial_fwd(kiln_runtime* rt, const kiln_tensor* logits,
                                                   const kiln_tensor* labels, const kiln_tensor* partial,
                                                   const kiln_cross_entropy_options* opts, void* stream);
kiln_status kiln_softmax_cross_entropy_merge(kiln_runtime* rt, const kiln_tensor* partials, const kiln_tensor* labels,
                                             const kiln_tensor* loss, const kiln_tensor* row_max,
                                             const kiln_tensor* sum_exp, const kiln_cross_entropy_options* opts,
                                             void* stream);

/* kiln/ops/batch_reduce.hpp: xs is an array of count descriptors (NULL when count is 0). ord: 0 l1, 1 l2, 2 inf
 * (kiln::NormOrd); accumulate: 0 f32, 1 f64 (kiln::Accumulate). Defaults: ord 1, root 0, accumulate 1. */
typedef struct kiln_batch_norm_options {
  int32_t ord;
  int32_t root;
  int32_t accumulate;
} kiln_batch_norm_options;
kiln_status kiln_batch_sum_with_ord(kiln_runtime* rt, const kiln_tensor* xs, int64_t count, const kiln_tensor* out,
                                    const kiln_batch_norm_options* opts, void* stream);
kiln_status kiln_batch_count_zero(kiln_runtime* rt, const kiln_tensor* xs, int64_t count, const kiln_tensor* out,
                                  void* stream);

/* kiln/ops/gated_mlp.hpp: out = act(x · gate_weightᵀ) ⊙ (x · up_weightᵀ), x [M, H] or [B, S, H], weights [I, H],
 * out [M, I] or [B, S, I], all in x's dtype (bf16, f16 or f32). activation: 0 silu, 1 gelu (kiln::GatedActivation;
 * other values: KILN_ERROR_INVALID_ARGUMENT naming 'activation'). sm_90 only (elsewhere KILN_ERROR_DEVICE). */
kiln_status kiln_fused_gated_mlp(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* gate_weight,
                                 const kiln_tensor* up_weight, const kiln_tensor* out, int activation, void* stream);

/* kiln/ops/fp8.hpp: triton_ops' uint8 "FP8 compatibility format" (a linear 255-level grid, not E4M3). quantize: x
 * (f32, bf16 or f16, contiguous) → q (uint8, x's element count) and scale (one f32: the encode multiplier 448 /
 * max|x|, written on the device); dequantize: q and scale → out (bf16, f16 or f32). */
kiln_status kiln_quantize_fp8(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* q, const kiln_tensor* scale,
                              void* stream);
kiln_status kiln_dequantize_fp8(kiln_runtime* rt, const kiln_tensor* q, const kiln_tensor* scale,
                                const kiln_tensor* out, void* stream);

/* kiln/ops/fp8_gemm.hpp: c [M, N] = a [M, K] · b [K, N] on those codes (exact int32 sums, one f32 multiply, one
 * rounding to c: f16, bf16 or f32). a and b: uint8 codes with their scale (a_scale / b_scale, one f32 each), or
 * f32 / bf16 / f16 quantized per tensor (the scale then NULL). sm_90 only (elsewhere KILN_ERROR_DEVICE). */
kiln_status kiln_fp8_gemm(kiln_runtime* rt, const kiln_tensor* a, const kiln_tensor* b, const kiln_tensor* a_scale,
                          const kiln_tensor* b_scale, const kiln_tensor* c, void* stream);
/* A weight prepared once for many GEMMs (kiln::Fp8GemmWeight): a caller-owned device buffer of
 * kiln_fp8_gemm_weight_bytes(N, K) bytes, 16-byte aligned. layout: 0 = b [K, N] (kiln_fp8_gemm's), 1 = [N, K] (a
 * Linear's weight [out, in]); other values: KILN_ERROR_INVALID_ARGUMENT naming 'layout'. bias: NULL or [N] (f32,
 * bf16 or f16), added in f32 before c's rounding. */
int64_t kiln_fp8_gemm_weight_bytes(int64_t n, int64_t k);
kiln_status kiln_fp8_gemm_prepare_weight(kiln_runtime* rt, const kiln_tensor* b, const kiln_tensor* b_scale,
                                         int layout, void* weight, int64_t n, int64_t k, void* stream);
kiln_status kiln_fp8_gemm_prepared(kiln_runtime* rt, const kiln_tensor* a, const kiln_tensor* a_scale,
                                   const void* weight, int64_t n, int64_t k, const kiln_tensor* bias,
                                   const kiln_tensor* c, void* stream);

/* ---- FP4 block-scaled fused MoE (kiln/ops/fp4_moe.hpp; W4A16 on sm_90a, elsewhere KILN_ERROR_DEVICE) -----------
 * Enum values as in C++: format 0 nvfp4, 1 mxfp4; routing method 0 … 8 (kiln::Fp4MoeRoutingMethod); activation
 * 3 Swiglu, 4 Geglu, 6 Relu2, 7 Identity; hidden_format 0 bf16, 1 nvfp4, 2 mxfp8, 3 e4m3. Out-of-range values:
 * KILN_ERROR_INVALID_ARGUMENT from the op, naming its argument (method, activation, hidden_format, format, w1 / w2). */
typedef struct kiln_fp4_moe_route_options {
  int method, top_k, n_group, topk_group;
  float routed_scaling_factor;
  int norm_topk_prob;
} kiln_fp4_moe_route_options;
/* A prepacked weight tensor (kiln::Fp4MoeWeights), as kiln_fp4_moe_prepack fills it. */
typedef struct kiln_fp4_moe_weights {
  const void* data;
  int64_t experts, rows, k;
  int format, gated;
} kiln_fp4_moe_weights;
/* The layer's inputs (kiln::Fp4MoeInputs): optional tensors NULL when absent. */
typedef struct kiln_fp4_moe_inputs {
  const kiln_tensor *routing_logits, *routing_bias, *hidden_states, *hidden_states_scale, *per_token_scale;
  kiln_fp4_moe_weights w1, w2;
  const kiln_tensor *gemm1_bias, *gemm1_alpha, *gemm1_beta, *gemm1_clamp_limit, *gemm2_bias;
  const kiln_tensor *output1_scale_scalar, *output1_scale_gate_scalar, *output2_scale_scalar, *routing_replay_out;
} kiln_fp4_moe_inputs;
typedef struct kiln_fp4_moe_options {
  kiln_fp4_moe_route_options routing;
  int activation, hidden_format;
  int64_t num_experts, local_expert_offset;
  int do_finalize;
} kiln_fp4_moe_options;
typedef struct kiln_fp4_moe_outputs {
  const kiln_tensor *output, *gemm2_output, *expert_weights, *expanded_idx_to_permuted_idx;
} kiln_fp4_moe_outputs;

kiln_status kiln_fp4_moe_route(kiln_runtime* rt, const kiln_tensor* logits, const kiln_tensor* bias,
                               const kiln_tensor* topk_ids, const kiln_tensor* topk_weights,
                               const kiln_fp4_moe_route_options* options, void* stream);
kiln_status kiln_fp4_moe_packed_bytes(int64_t experts, int64_t rows, int64_t k, int format, int64_t* out);
kiln_status kiln_fp4_moe_prepack(kiln_runtime* rt, const kiln_tensor* weights, const kiln_tensor* scales, int format,
                                 int gated, const kiln_tensor* packed, void* stream, kiln_fp4_moe_weights* out);
kiln_status kiln_fp4_moe_max_padded_rows(kiln_runtime* rt, int64_t T, int64_t top_k, int64_t local_experts,
                                         int64_t* out);
kiln_status kiln_fp4_moe_workspace_bytes(kiln_runtime* rt, int64_t T, int64_t H, int64_t I,
                                         const kiln_fp4_moe_options* options, int64_t local_experts, int64_t* out);
/* workspace: NULL (the runtime's scratch) or u8 [kiln_fp4_moe_workspace_bytes]. */
kiln_status kiln_fp4_block_scale_moe(kiln_runtime* rt, const kiln_fp4_moe_inputs* inputs,
                                     const kiln_fp4_moe_outputs* outputs, const kiln_fp4_moe_options* options,
                                     void* stream, const kiln_tensor* workspace);

/* kiln/ops/fp4_moe_import.hpp: host-memory importers into the canonical layout (no GPU; rt not needed). codes,
 * scales, bias: host pointers (bias may be NULL; then out_bias is not written). row_block 16 or 32. */
typedef struct kiln_fp4_host_shape {
  int64_t experts, rows, k;
  int format, gated;
} kiln_fp4_host_shape;
kiln_status kiln_fp4_moe_trtllm_scale_bytes(const kiln_fp4_host_shape* shape, int64_t* out);
kiln_status kiln_fp4_moe_import_trtllm(const uint8_t* codes, const uint8_t* scales, const float* bias,
                                       const kiln_fp4_host_shape* shape, uint8_t* out_codes, uint8_t* out_scales,
                                       float* out_bias, int row_block);
kiln_status kiln_fp4_moe_export_trtllm(const uint8_t* codes, const uint8_t* scales, const float* bias,
                                       const kiln_fp4_host_shape* shape, uint8_t* out_codes, uint8_t* out_scales,
                                       float* out_bias, int row_block);
kiln_status kiln_fp4_moe_import_gpt_oss(const uint8_t* codes, const uint8_t* scales, const float* bias,
                                        const kiln_fp4_host_shape* shape, uint8_t* out_codes, uint8_t* out_scales,
                                        float* out_bias);

#ifdef __cplusplus
}
#endif
#endif
