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

/* dy, x, dx [M, N] contiguous in dtype; dweight [N] in dweight_dtype. Workspace allocated stream-ordered. */
kiln_status kiln_rms_norm_bwd(kiln_runtime* rt, const void* dy, const void* x, void* dx, int64_t M, int64_t N,
                              kiln_dtype dtype, const void* weight, kiln_dtype weight_dtype, void* dweight,
                              kiln_dtype dweight_dtype, float eps, void* stream);

#ifdef __cplusplus
}
#endif
#endif
