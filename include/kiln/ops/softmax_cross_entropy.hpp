// kiln/ops/softmax_cross_entropy.hpp — token-wise softmax cross-entropy over a vocabulary: forward, backward, fused
// forward+backward (in place), and the vocab-parallel form (local partials + merge).
//
// Semantics: ../shared/spec/linghe-kernels.md §8 (linghe HEAD numerics: always max-subtracted, ignore_index).
//   lse_m  = log Σ_j exp(z_mj)                                    (computed as max + log Σ exp(z − max))
//   loss_m = lse_m − (1−ε)·z_m,y − (ε/V)·Σ_j z_mj + λ·lse_m²       (ε = label_smoothing, λ = z_loss)
//   dz_mj  = g_m·(softmax_mj·(1 + 2λ·lse_m) − (1−ε)·[j = y_m] − ε/V)
// No reduction in the forward (per-token fp32 loss). A row whose label equals ignore_index gets loss 0, row_max 0,
// sum_exp 0 and a zero gradient row (its logits are not read). Any other label outside [0, V) is never used as an
// index: its row gets loss NaN and a zero gradient, and the op reports it (see CrossEntropyOptions::bad_label_row).
//
// Tensors: logits [M, V] or [B, S, V] (viewed as [M = B·S, V]) in bf16, fp16 or fp32, last dim contiguous, any row
// stride ≥ V; labels int64 or int32 with M elements (contiguous); per-row outputs fp32 with M elements (contiguous).
// Compile-time (specialization key): V, the logits dtype, the label dtype, whether label smoothing is on, the grad
// dtype of the backward. Run-time: M, pointers, strides, ignore_index, ε, λ, the vocab-parallel offsets.
#pragma once
#include <cstdint>

#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

struct CrossEntropyOptions {
  int64_t ignore_index = -100;
  float label_smoothing = 0.f;  // ε in [0, 1)
  float z_loss = 0.f;           // λ ≥ 0: adds λ·lse² to every token's loss
  // Vocab-parallel form: this call's logits are the columns [vocab_start, vocab_start + V) of a vocabulary of
  // vocab_total classes (0: V, unsharded); labels are global class ids. Read by softmax_cross_entropy_partial_fwd,
  // _merge and _bwd; the plain forward and the fused op need the whole vocabulary (vocab_start = 0).
  int64_t vocab_start = 0;
  int64_t vocab_total = 0;
  // Labels out of [0, vocab_total) other than ignore_index. Empty (default): kiln records the first such row in a
  // device flag, synchronizes `stream` after the launch and throws InvalidArgument naming labels, the row and its
  // value. Given ([1] int32 device tensor): kiln writes into it the first bad row, or INT32_MAX (2147483647) if every
  // label is valid, and does not synchronize (check it when convenient).
  TensorRef bad_label_row;
};

// loss [M] fp32; row_max, sum_exp [M] fp32 (optional, both or neither): the statistics the backward needs
// (row max and Σ exp(z − max); 0 and 0 for ignored rows).
void softmax_cross_entropy_fwd(Runtime& rt, const TensorRef& logits, const TensorRef& labels, const TensorRef& loss,
                               const TensorRef& row_max, const TensorRef& sum_exp, const CrossEntropyOptions& opts,
                               Stream stream);

// dlogits = grad_loss[m]·∂loss_m/∂logits, written in the logits dtype. grad_loss: M elements, fp32, bf16 or fp16.
// dlogits has the logits' shape; pass dlogits = logits (the same tensor) to write in place (no second [M, V] buffer).
// A separate dlogits must not overlap logits, and its rows must sit at the same offset from a 16-byte boundary as the
// logits rows (true for any two contiguous tensors from a caching allocator).
// Vocab-parallel: each rank passes its shard with opts.vocab_start/vocab_total and the merged row_max/sum_exp; only
// the rank owning a row's label subtracts the target term. Labels are not checked here (the forward reports them);
// rows with a bad label get a zero gradient.
void softmax_cross_entropy_bwd(Runtime& rt, const TensorRef& logits, const TensorRef& labels,
                               const TensorRef& row_max, const TensorRef& sum_exp, const TensorRef& grad_loss,
                               const TensorRef& dlogits, const CrossEntropyOptions& opts, Stream stream);

enum class LossReduction {
  sum,   // total = scale · Σ_m loss_m,              g_m = scale
  mean,  // total = scale · Σ_m loss_m / N_valid,    g_m = scale / N_valid  (N_valid = non-ignored rows; 0 → 1)
};

struct FusedCrossEntropyOptions {
  LossReduction reduction = LossReduction::mean;
  float scale = 1.f;
  TensorRef loss_total;  // optional [1] fp32: the reduced loss (summed in a fixed order: deterministic)
  TensorRef row_max;     // optional [M] fp32 (as the forward's)
  TensorRef sum_exp;     // optional [M] fp32
};

// Forward and backward in one pass for a loss reduced as opts.reduction says (the upstream gradient is known before
// the forward): per-token loss [M] fp32, dlogits = ∂total/∂logits in the logits dtype (dlogits = logits: in place).
// On Hopper the logits are read from memory once: each row is split over a cluster of CTAs that stage their slices
// in shared memory and exchange (max, Σexp) through distributed shared memory. Where a row's slices do not fit shared
// memory (or before sm_90) it runs the forward then the backward (two reads). vocab_start must be 0.
void softmax_cross_entropy_fused(Runtime& rt, const TensorRef& logits, const TensorRef& labels, const TensorRef& loss,
                                 const TensorRef& dlogits, const FusedCrossEntropyOptions& fused,
                                 const CrossEntropyOptions& opts, Stream stream);

// Vocab-parallel forward, step 1 on each rank: the local statistics of its shard logits [M, V_local] as partial
// [4, M] fp32 = (local max, local Σexp(z − local max), the target logit if this rank owns the label else −inf,
// local Σ z). The caller gathers the tp partials into [tp, 4, M] (e.g. NCCL all-gather) and calls _merge.
void softmax_cross_entropy_partial_fwd(Runtime& rt, const TensorRef& logits, const TensorRef& labels,
                                       const TensorRef& partial, const CrossEntropyOptions& opts, Stream stream);

// Step 2 (on every rank, identical results): partials [tp, 4, M] fp32 → loss [M], and the global row_max / sum_exp
// [M] (optional, both or neither) for softmax_cross_entropy_bwd. opts.vocab_total is the full vocabulary (required).
void softmax_cross_entropy_merge(Runtime& rt, const TensorRef& partials, const TensorRef& labels,
                                 const TensorRef& loss, const TensorRef& row_max, const TensorRef& sum_exp,
                                 const CrossEntropyOptions& opts, Stream stream);

}  // namespace kiln
