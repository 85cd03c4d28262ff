// kiln/ops/batch_reduce.hpp — reductions over a whole list of tensors in one launch: the grad norm's building block
// (Σ|x|, Σx², max|x|, optionally the norm) and the zero count. Semantics: ../shared/spec/linghe-kernels.md §9, §10
// (linghe triton_batch_sum_with_ord / triton_batch_count_zero; HEAD's triton_batch_norm for ord inf, the root and
// fp64 accumulation).
//
// xs: any number of tensors (an empty list is fine), each contiguous, of any shape and size (empty tensors too), in
// fp32, bf16 or fp16 (dtypes may be mixed within a list). The result is deterministic: the same bits for any launch
// shape, grid size or SM count (fixed chunks, fixed-order trees; see templates/kiln/batch_reduce.cuh).
// Compile-time (specialization key): the reduction and the accumulation precision. Run-time: the list.
#pragma once
#include <span>

#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

enum class NormOrd {
  l1,   // Σ|x|
  l2,   // Σx² (or √Σx² with root)
  inf,  // max|x| (NaN if any element is NaN)
};

// Precision of the accumulation within each 4096-element sub-chunk (the terms of one 16-byte vector, 4 fp32 or 8 bf16
// elements, are added in fp32 first); every level above a sub-chunk combines in fp64 either way.
enum class Accumulate { f32, f64 };

struct BatchNormOptions {
  NormOrd ord = NormOrd::l2;
  bool root = false;  // l2: write √Σx² (the norm) instead of Σx²; l1 and inf are norms already
  Accumulate accumulate = Accumulate::f64;
};

// Launch-shape override for tests and tuning: the result does not depend on it. 0 = kiln's choice.
struct BatchReduceLaunch {
  int max_ctas = 0;  // at most this many CTAs (default: as many as fit the GPU at once)
  int warps = 0;     // warps per CTA: 4, 8 or 16
};

// out: one fp32 element (shape [] or [1]): Σ_tensors Σ_i |x_i|^p (p = 1, 2) or max |x_i| over the list; 0 for an
// empty list.
void batch_sum_with_ord(Runtime& rt, std::span<const TensorRef> xs, const TensorRef& out, const BatchNormOptions& opts,
                        Stream stream, const BatchReduceLaunch& launch = {});

// out: one int64 element: the number of elements equal to ±0 over the list (NaN is not zero), exact.
void batch_count_zero(Runtime& rt, std::span<const TensorRef> xs, const TensorRef& out, Stream stream,
                      const BatchReduceLaunch& launch = {});

}  // namespace kiln
