// kiln/ops/group_rms_norm_gate.hpp — group RMSNorm × sigmoid gate (linghe GroupNormGateFunction, the README's "fused
// linear gate" of linear attention), forward and backward.
//
// Semantics: ../shared/spec/linghe-kernels.md §11. For token (b, s) and channel c of group q (dim split into G
// contiguous groups of d = dim/G channels):
//   r_q = 1/sqrt(mean_{c∈q}(x_c²) + eps),   out_c = x_c·r_q·w_c·sigmoid(gate_c)          (fp32 math)
// Compile-time (specialization key): dim, G, shared-weight form, dtypes. Run-time: B, S, eps, strides, layout.
#pragma once
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

struct GroupRmsNormGateOptions {
  int groups = 4;         // G, the NUMBER of groups (linghe calls it group_size); must divide dim
  float eps = 1e-6f;
  bool transpose = true;  // gate, out, dy, dgate are [S, B, dim] (sequence-first); false: [B, S, dim] like x
};

// x [B, S, dim] (bf16, fp16 or fp32); gate and out in x's dtype, [S, B, dim] (transpose) or [B, S, dim];
// weight [dim] (one per channel) or [dim/G] (shared by all groups), bf16/fp16/fp32. Every tensor may be a strided
// view with a dense last dim and rows aligned to the vector width (16 bytes when d is a multiple of 16/sizeof(x)).
// Any B and S (no multiple-of-8 requirement).
void group_rms_norm_gate_fwd(Runtime& rt, const TensorRef& x, const TensorRef& gate, const TensorRef& weight,
                             const TensorRef& out, const GroupRmsNormGateOptions& opts = {}, Stream stream = nullptr);

// dy in out's layout; dx [B, S, dim] (x's layout), dgate in gate's layout, both x's dtype;
// dweight fp32 with weight's shape: Σ_tokens x·r·dy·σ (summed over groups too for a shared weight), reduced in a fixed
// order (per-CTA slices, then a second kernel): bitwise reproducible for a given device.
// workspace: optional fp32 buffer of group_rms_norm_gate_bwd_workspace_elems(…) elements; if empty, kiln uses the
// Runtime's scratch for `stream` (README: scratch memory).
void group_rms_norm_gate_bwd(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& gate,
                             const TensorRef& weight, const TensorRef& dx, const TensorRef& dgate,
                             const TensorRef& dweight, const GroupRmsNormGateOptions& opts = {},
                             const TensorRef& workspace = {}, Stream stream = nullptr);
// tokens = B·S; depends on the device (the persistent grid fills the GPU).
int64_t group_rms_norm_gate_bwd_workspace_elems(Runtime& rt, int64_t tokens, int64_t dim, int groups,
                                                DType dtype = DType::bf16);

}  // namespace kiln
