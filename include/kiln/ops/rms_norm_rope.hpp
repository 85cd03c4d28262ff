// kiln/ops/rms_norm_rope.hpp — fused RMSNorm over the whole hidden dim + rotate-half RoPE on every head
// (triton_ops `fused_rmsnorm_rope`), forward and backward.
//
// Semantics: ../shared/spec/triton-ops.md §2. Per row (b, s) of x [B, S, Hd], Hd = num_heads·D:
//   r = 1/sqrt(mean_c(x_c²) + eps),  n = x·r·w  (fp32, not rounded),
//   y[h·D + i]       = n[h·D + i]·cos[s, i] − n[h·D + i + D/2]·sin[s, i]
//   y[h·D + i + D/2] = n[h·D + i]·sin[s, i] + n[h·D + i + D/2]·cos[s, i]      (i < D/2)
// Only columns [0, D/2) of cos/sin are read (HF-style caches repeat the table in both halves). Position = s: callers
// slice the cache for offsets.
// Compile-time (specialization key): Hd, D, dtypes of x, weight and cos/sin. Run-time: B, S, strides, eps.
#pragma once
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

// x [B, S, Hd] (fp16, bf16 or fp32; any batch/sequence strides, last dim dense, rows aligned to the vector width:
// 16 bytes when D/2 is a multiple of 16/sizeof(x)); weight [Hd] (fp16/bf16/fp32, contiguous);
// cos, sin [S, D] or [1, S, 1, D] (fp16/bf16/fp32, one dtype for both, same shape; row stride free, last dim dense);
// y [B, S, Hd] in x's dtype (may alias x). D must be even; num_heads = 0 means Hd/D, otherwise num_heads·D must
// equal Hd. Math in fp32.
void rms_norm_rope_fwd(Runtime& rt, const TensorRef& x, const TensorRef& weight, const TensorRef& cos,
                       const TensorRef& sin, const TensorRef& y, float eps = 1e-6f, int num_heads = 0,
                       Stream stream = nullptr);

// The backward (kiln extension; triton_ops has none): dy, x, dx [B, S, Hd] in x's dtype (dx may alias dy);
// dweight [Hd] fp32 = Σ_rows x·r·gn (gn = the rotation's adjoint applied to dy), reduced in a fixed order
// (per-CTA slices, then a second kernel): bitwise reproducible for a given device.
// workspace: optional fp32 buffer of rms_norm_rope_bwd_workspace_elems(…) elements; if empty, kiln uses the
// Runtime's scratch for `stream` (README: scratch memory).
void rms_norm_rope_bwd(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& weight,
                       const TensorRef& cos, const TensorRef& sin, const TensorRef& dx, const TensorRef& dweight,
                       float eps = 1e-6f, int num_heads = 0, const TensorRef& workspace = {}, Stream stream = nullptr);
// rows = B·S; depends on the device (the persistent grid fills the GPU).
int64_t rms_norm_rope_bwd_workspace_elems(Runtime& rt, int64_t rows, int64_t hidden, int64_t head_dim,
                                          DType dtype = DType::bf16);

}  // namespace kiln
