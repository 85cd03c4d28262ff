// kiln/ops/fp8_linear.hpp — FP8Linear (../shared/spec/triton-ops.md §6, kiln's decision §8.5): y = x · Wᵀ (+ bias)
// through fp8_gemm on the uint8 "FP8 compatibility format", the weight quantized per tensor and prepared once, the
// activation quantized per tensor on every call. Forward only (the quantized path has no gradient).
//
// Unlike triton_ops' module, whose quantized weight is cached on the first forward and never refreshed (optimizer
// steps and load_state_dict are silently ignored), the prepared weight here is keyed by the weight's address, dtype
// and a caller-given version (e.g. torch's tensor._version): a forward with a different key prepares it again. A
// change of the weight's values under the same address and version is the caller's to announce (bump the version or
// call invalidate()).
#pragma once
#include <cstdint>
#include <memory>

#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

class FP8Linear {
 public:
  // in_features: K, a multiple of 16 in [16, 66304]; out_features: N in [1, 65536] (fp8_gemm's limits; typed errors
  // otherwise). No device work until the first forward.
  FP8Linear(Runtime& rt, int64_t in_features, int64_t out_features);
  ~FP8Linear();
  FP8Linear(const FP8Linear&) = delete;
  FP8Linear& operator=(const FP8Linear&) = delete;

  int64_t in_features() const;
  int64_t out_features() const;

  // y [..., out] = x [..., in] · weightᵀ (+ bias [out]). x: fp32 / bf16 / fp16, contiguous, rank ≥ 2 (the leading
  // dims are the rows, as x.view(−1, in)); weight: fp32 / bf16 / fp16 [out, in], contiguous, 16-byte aligned; bias
  // (optional): fp32 / bf16 / fp16 [out], added in fp32 before y's one rounding (triton_ops adds it after rounding
  // through fp16); y: fp16 / bf16 / fp32 with x's leading dims and last dim out (rank 2: any row stride; higher
  // ranks contiguous). Enqueued on `stream`; the prepared weight is written on the stream of the forward that
  // prepares it, so later forwards on other streams must be ordered after that one. Not safe to call from two
  // threads at once.
  void forward(const TensorRef& x, const TensorRef& weight, uint64_t weight_version, const TensorRef* bias,
               const TensorRef& y, Stream stream);

  // Drops the prepared weight: the next forward prepares it again.
  void invalidate();
  // Whether a prepared weight is held, and how many times one has been prepared (tests, logs).
  bool has_prepared_weight() const;
  int64_t prepare_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln
