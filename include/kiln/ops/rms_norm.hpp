// kiln/ops/rms_norm.hpp — RMSNorm forward/backward and RMSNorm fused with fp8 1×128 block quantization.
//
// Semantics: ../shared/spec/linghe-kernels.md §2, §3, §13 (kiln keeps linghe's operation order
// y = (x · r) · w with r = 1/sqrt(mean(x²) + eps), all in fp32).
// Compile-time (specialization key): N, dtypes, output_mode, round_scale. Run-time: M, eps, pointers, strides.
#pragma once
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

struct RmsNormBlockQuantOptions {
  float eps = 1e-6f;
  bool round_scale = false;  // power-of-two scales: s = 2^ceil(log2(amax/448))
  int output_mode = 2;       // 0 row-wise only, 1 transposed only (needs rms_inv_in), 2 both
};

// Outputs the caller allocates. Only those the mode produces are needed; the others may be left empty.
struct RmsNormBlockQuantOutputs {
  TensorRef q;         // [M, N] fp8_e4m3            modes 0, 2
  TensorRef q_scale;   // [N/128, M] fp32 (M-major)  modes 0, 2
  TensorRef rms_inv;   // [M] fp32, optional         modes 0, 2: 1/sqrt(mean(x²)+eps)
  TensorRef qT;        // [N, M] fp8_e4m3            modes 1, 2
  TensorRef qT_scale;  // [ceil(M/128), N] fp32      modes 1, 2
};

// x [M, N] bf16 (row stride may exceed N; rows 16-byte aligned), weight [N] bf16 or fp32.
// rms_inv_in [M] fp32 is read in mode 1 (the rms_inv of an earlier mode-0/2 call) and must be empty otherwise.
void rms_norm_block_quant_fwd(Runtime& rt, const TensorRef& x, const TensorRef& weight, const TensorRef& rms_inv_in,
                              const RmsNormBlockQuantOutputs& out, const RmsNormBlockQuantOptions& opts,
                              Stream stream);

// y = x / sqrt(mean(x²) + eps) · w. x, y [M, N] (bf16, fp16 or fp32, same dtype), weight [N] (x's dtype or fp32),
// rms_inv [M] fp32 optional.
void rms_norm_fwd(Runtime& rt, const TensorRef& x, const TensorRef& weight, const TensorRef& y,
                  const TensorRef& rms_inv, float eps, Stream stream);

// dx = r·dy·w − r³·x·Σ(x·dy·w)/N,  dweight = Σ_rows x·dy·r  (deterministic: fixed-order two-stage reduction).
// dy, x, dx [M, N] in x's dtype; weight [N]; dweight [N] fp32 or weight's dtype.
// workspace: optional fp32 buffer of rms_norm_bwd_workspace_elems(rt, M, N, x.dtype) elements (it depends on the
// device: the persistent grid is as large as the GPU holds at once); if empty, kiln uses the Runtime's scratch for
// `stream` (README: scratch memory).
void rms_norm_bwd(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& weight, const TensorRef& dx,
                  const TensorRef& dweight, float eps, const TensorRef& workspace, Stream stream);
int64_t rms_norm_bwd_workspace_elems(Runtime& rt, int64_t M, int64_t N, DType dtype = DType::bf16);

}  // namespace kiln
