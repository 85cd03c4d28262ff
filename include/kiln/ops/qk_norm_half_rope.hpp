// kiln/ops/qk_norm_half_rope.hpp — split qkv → per-head RMSNorm of q and k → rotate-half RoPE on the first half of
// each head → transpose to [B, S, heads, D]; and its backward. (linghe QkNormHalfRopeFunction; spec
// ../shared/spec/linghe-kernels.md §4.)
//
// Forward, per row (s, b) and q/k head t (D channels), w = q_norm_weight or k_norm_weight, Q = D/4, f = freqs[pos]:
//   r = 1/sqrt(Σ_{c<D} t_c²/D + eps)        (fp32 sum of squares over the whole head)
//   n_c = t_c·r·w_c
//   out_j   = n_j·cos f_j         − n_{j+Q}·sin f_j          j < Q
//   out_j+Q = n_{j+Q}·cos f_{j+Q} + n_j·sin f_{j+Q}          (rotate-half pairing inside channels [0, D/2))
//   out_c   = n_c                                          D/2 ≤ c < D
//   v heads are copied.
// Backward: the exact adjoint (dqkv, and dq_norm_weight / dk_norm_weight = Σ over rows and heads of t·r·g', with g'
// the gradient un-rotated), reduced deterministically (per-CTA partials summed in a fixed order; no float atomics).
//
// Compile-time (specialization key): H, h, D, head layout, dtypes. Run-time: S, B, strides, eps, positions.
#pragma once
#include <cstdint>

#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

struct QkNormHalfRopeOptions {
  int num_heads = 0;         // H: query heads
  int num_groups = 0;        // h: key/value heads (query groups); H % h == 0
  float eps = 1e-6f;
  // Head layout of qkv's last dim. Interleaved (Megatron linear_qkv, linghe's facade): h groups, each
  // [H/h query heads, its key head, its value head]. Otherwise [all H q | all h k | all h v].
  bool interleaved = true;
  // Rotary positions. Without cu_seqlens row s has position position_offset + s. With cu_seqlens (int32 [n+1],
  // device memory, non-decreasing, cu_seqlens[0] = 0: packed "THD" sequences along S, shared by every b) the position
  // restarts at every sequence start: position_offset + s − cu_seqlens[i] for the last i ≤ n with cu_seqlens[i] ≤ s
  // (rows at or past cu_seqlens[n] continue from cu_seqlens[n], as padding). freqs must have a row for every position:
  // at least position_offset + S rows, or position_offset + max_seqlen with cu_seqlens (max_seqlen 0 means S).
  // A row whose position is outside freqs anyway (e.g. malformed cu_seqlens) gets NaN q and k heads (backward: NaN
  // in its dqkv q/k heads and in the weight gradients); nothing outside freqs is read.
  int64_t position_offset = 0;
  TensorRef cu_seqlens;
  int64_t max_seqlen = 0;
};

// qkv       [S, B, (H+2h)·D]  bf16 or fp16; last dim contiguous, dims 0 and 1 any strides (a slice of a wider
//                              tensor) that keep rows 16-byte aligned. D = last dim / (H + 2h): a power of two in
//                              [32, 256].
// q_norm_weight, k_norm_weight [D]  qkv's dtype or fp32, contiguous.
// freqs     [P, D/2] fp32 angles (not cos/sin), contiguous; row p serves position p (see the options).
// q         [B, S, H, D], k, v [B, S, h, D]: qkv's dtype, contiguous (flash-attention "bshd").
void qk_norm_half_rope_fwd(Runtime& rt, const TensorRef& qkv, const TensorRef& q_norm_weight,
                           const TensorRef& k_norm_weight, const TensorRef& freqs, const TensorRef& q,
                           const TensorRef& k, const TensorRef& v, const QkNormHalfRopeOptions& opts, Stream stream);

// gq [B, S, H, D], gk, gv [B, S, h, D]: qkv's dtype, contiguous. qkv, weights, freqs and options as in the forward.
// dqkv [S, B, (H+2h)·D]: qkv's dtype and head layout, its own strides (rules as qkv's; every element of the view is
// written). dq_norm_weight, dk_norm_weight [D] fp32 (overwritten, not accumulated); either may be empty (not computed;
// with both empty the weight-gradient reduction is skipped entirely, e.g. for frozen norm weights).
// workspace: optional fp32 buffer of at least qk_norm_half_rope_bwd_workspace_elems(rt, D) elements; if empty, kiln
// uses the Runtime's scratch for `stream` (README: scratch memory).
void qk_norm_half_rope_bwd(Runtime& rt, const TensorRef& gq, const TensorRef& gk, const TensorRef& gv,
                           const TensorRef& qkv, const TensorRef& q_norm_weight, const TensorRef& k_norm_weight,
                           const TensorRef& freqs, const TensorRef& dqkv, const TensorRef& dq_norm_weight,
                           const TensorRef& dk_norm_weight, const QkNormHalfRopeOptions& opts,
                           const TensorRef& workspace, Stream stream);
// Upper bound of the backward's per-CTA partials (2·D floats per resident CTA of the device); any S, B, H, h.
int64_t qk_norm_half_rope_bwd_workspace_elems(Runtime& rt, int64_t head_dim);

}  // namespace kiln
