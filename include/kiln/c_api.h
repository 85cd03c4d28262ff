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

#ifdef __cplusplus
}
#endif
#endif
