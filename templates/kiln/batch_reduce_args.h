// kiln/batch_reduce_args.h — argument block of the list reductions (grad norm, zero count), shared by the device
// template (templates/kiln/batch_reduce.cuh) and the host recipe (ops/batch_reduce.cpp).
#pragma once

namespace kiln {

// One tensor of the list (device table built by the op).
struct BatchReduceTensor {
  const void* ptr;
  long long numel;
  int dtype;  // kiln::DType code: 0 bf16, 1 fp16, 2 fp32
  int pad;
};

// The fixed work decomposition, independent of the launch shape: every tensor is cut into chunks of kChunk elements
// (the last one partial), a chunk into kSubs sub-chunks of kSub elements reduced by one warp each.
constexpr int kBatchReduceSub = 4096;
constexpr int kBatchReduceSubs = 16;
constexpr long long kBatchReduceChunk = static_cast<long long>(kBatchReduceSub) * kBatchReduceSubs;
constexpr int kBatchReduceSlots = 1024;  // the final fixed-order tree: partial k goes to slot k mod 1024

struct BatchReduceArgs {
  const BatchReduceTensor* tensors;  // [num_tensors]
  const long long* chunk_start;      // [num_tensors + 1]: first global chunk of each tensor
  int num_tensors;
  int num_chunks;
  double* partials;                  // [num_chunks]
  unsigned* counters;                // [2] zeroed: next chunk to take, CTAs finished
  void* out;                         // [1] fp32 (sums, max), int64 (zero count)
  int root;                          // ord 2: write √Σx²
};

}  // namespace kiln
