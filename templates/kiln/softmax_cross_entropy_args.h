// kiln/softmax_cross_entropy_args.h — kernel argument blocks of the softmax cross-entropy family, shared by the
// device template and the host recipe (templates/kiln/softmax_cross_entropy.cuh, ops/softmax_cross_entropy.cpp).
#pragma once

namespace kiln {

// Forward: per-row statistics of logits[M, V] (V = the columns this call sees: the whole vocabulary, or one rank's
// shard of it). Full mode (partial == null) writes loss/row_max/sum_exp; partial mode writes the row's local
// (max, sumexp, target logit, Σ logits) to partial[0..3][M] for a later merge across ranks.
struct CeFwdArgs {
  const void* logits; long long stride;  // [M, V], stride in elements between rows
  const void* labels;                    // [M] int64 or int32, global class ids
  float* loss;                           // [M] (full mode)
  float* row_max;                        // [M] or null (full mode)
  float* sum_exp;                        // [M] or null (full mode)
  float* partial;                        // [4, M] (partial mode) or null
  int* bad_row;                          // [1]: atomicMin of the rows whose label is out of range, or null
  long long ignore_index;
  long long vocab_start;                 // global id of column 0
  long long vocab_total;                 // labels must lie in [0, vocab_total) unless ignored
  float smoothing, z_loss;
  int M;
};

// Fused forward + backward: loss and dlogits = g·∂loss/∂logits in one pass over the logits (grad may alias logits).
struct CeFusedArgs {
  const void* logits; long long stride;
  void* grad; long long grad_stride;     // [M, V] in the logits dtype (may be the logits buffer itself)
  const void* labels;
  float* loss;                           // [M]
  float* row_max;                        // [M] or null
  float* sum_exp;                        // [M] or null
  const float* scale_dev;                // g per row read from here when non-null (mean reduction), else `scale`
  float scale;
  int* bad_row;
  long long ignore_index;
  float smoothing, z_loss;
  int M;
};

// Backward from saved statistics: dlogits = g_row·(softmax·(1 + 2·z_loss·lse) − (1−ε)·onehot − ε/vocab_total).
struct CeBwdArgs {
  const void* logits; long long stride;
  void* grad; long long grad_stride;
  const void* labels;
  const float* row_max;                  // [M]
  const float* sum_exp;                  // [M]
  const void* grad_loss;                 // [M] upstream gradient per row (fp32, bf16 or fp16), or null:
  const float* scale_dev;                //   then g = *scale_dev when non-null, else `scale`, for every row
  float scale;
  long long ignore_index;
  long long vocab_start, vocab_total;
  float smoothing, z_loss;
  int M;
};

// Merge of vocab-parallel partials [tp, 4, M] → loss, row_max, sum_exp (global statistics for the backward).
struct CeMergeArgs {
  const float* partials;                 // [tp, 4, M]
  int tp;
  const void* labels;
  float* loss;
  float* row_max;                        // [M] or null
  float* sum_exp;                        // [M] or null
  long long ignore_index, vocab_total;
  float smoothing, z_loss;
  int M;
};

// Whole-batch helpers (one CTA): count the valid labels (mean reduction: scale_out = scale / max(valid, 1)) and
// report bad labels; or reduce the per-row loss to one number in a fixed order (total_out = factor · Σ loss).
struct CeBatchArgs {
  const void* labels;
  const float* loss;                     // [M] (total mode)
  int* bad_row;                          // or null
  float* scale_out;                      // [1] (count mode)
  float* total_out;                      // [1] (total mode)
  const float* factor_dev;               // total mode: factor read here when non-null, else `factor`
  float factor;
  long long ignore_index, vocab_total;
  int M;
  int init_flag;                         // count mode: store INT32_MAX to bad_row first (no separate memset)
};

// Chunks (16 bytes each) of one CTA's slice of a row, and the TMA pieces the fused kernel stages it in.
constexpr int ce_slice_chunks(int V, int elem_bytes, int cluster) {
  return (V / (16 / elem_bytes) + cluster - 1) / cluster;
}
constexpr int ce_fused_pieces(int chunks, int threads) {
  return chunks >= 4 * threads ? 4 : chunks >= 2 * threads ? 2 : 1;
}
// Dynamic shared memory of the fused kernel: the CTA's slice of the row, then one mbarrier per piece.
constexpr int ce_fused_smem_bytes(int V, int elem_bytes, int cluster, int threads) {
  return ce_slice_chunks(V, elem_bytes, cluster) * 16 +
         8 * ce_fused_pieces(ce_slice_chunks(V, elem_bytes, cluster), threads);
}

}  // namespace kiln
