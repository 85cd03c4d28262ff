// ops/dw_partials.hpp — the fp32 weight-gradient partials of the norm families' backward kernels (rms_norm,
// rms_norm_rope, group_rms_norm_gate, qk_norm_half_rope): one row per CTA of the persistent backward, in the caller's
// workspace or in stream-ordered scratch, summed into the weight gradient by dw_reduce_kernel (kiln/dw_reduce.cuh),
// whose search space is one point.
#pragma once
#include <fmt/format.h>

#include <cstdint>
#include <vector>

#include "kiln/dw_reduce_args.h"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln::detail {

class DwPartials {
 public:
  // `workspace` (optional) is the caller's: the op has checked its dtype (fp32), shape and alignment.
  DwPartials(Runtime::Impl& impl, Stream stream, const TensorRef& workspace)
      : impl_(impl), stream_(stream), workspace_(workspace), data_(static_cast<float*>(workspace.data)) {}
  DwPartials(const DwPartials&) = delete;
  DwPartials& operator=(const DwPartials&) = delete;
  // Frees the scratch if the op threw before release() (a failed launch or cache lookup): stream-ordered after
  // whatever was launched.
  ~DwPartials() {
    try {
      release();
    } catch (...) {
    }
  }

  // Storage for `elems` floats: the caller's workspace, which must hold them (else ShapeMismatchError naming
  // `sized_by`, the function that sizes it), else scratch allocated on the stream.
  void reserve(const Check& ck, const char* sized_by, int64_t elems) {
    if (workspace_.defined()) {
      if (workspace_.numel() < elems)
        ck.shape_error("workspace",
                       fmt::format("expected ≥ {} fp32 elements ({}), got {}", elems, sized_by, workspace_.numel()));
      return;
    }
    static const char owner = 0;  // (every row is written before dw_reduce reads it: stale rows are harmless)
    owned_ = impl_.scratch(&owner, static_cast<size_t>(elems) * 4, stream_);
    data_ = reinterpret_cast<float*>(owned_.ptr);
  }
  // The partial rows (the workspace's pointer, possibly null, until reserve()).
  float* data() const { return data_; }

  // dw[cols] (and dw_hi, for kernels that split their output) = the sum of the first `slices` partial rows (zeros
  // for none), launched with PDL (dw_reduce_kernel waits for the backward), then release().
  void reduce(const Specialization& reducer, int64_t slices, int64_t cols, void* dw, void* dw_hi = nullptr) {
    const DwReduceArgs r{data_, dw, static_cast<int>(slices), dw_hi};
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>((cols + kDwReduceCols - 1) / kDwReduceCols);
    d.block[0] = kDwReduceThreads;
    d.pdl = true;  // starts while the backward's last CTAs finish (dw_reduce_kernel waits for them: kiln/dw_reduce.cuh)
    impl_.launch(reducer, d, stream_, r);
    release();
  }
  // Frees the scratch on the stream (after the kernels launched so far); nothing for the caller's workspace.
  void release() {
    const ScratchBuffer b = owned_;
    owned_ = {};
    impl_.release_scratch(b, stream_);
  }

 private:
  Runtime::Impl& impl_;
  Stream stream_;
  const TensorRef& workspace_;
  float* data_;
  ScratchBuffer owned_;
};

// dw_reduce_kernel has nothing to tune: the search space of a family's dw_reduce kernel is its one point (config
// zero). True, with that point added to `out`, when `base` is the family's `dw_reduce` kernel.
inline bool dw_reduce_space(const Specialization& base, uint32_t dw_reduce, std::vector<Specialization>& out) {
  if (base.kernel != dw_reduce) return false;
  Specialization s = base;
  s.config = {};
  out.push_back(s);
  return true;
}

}  // namespace kiln::detail
