// kiln/dw_reduce_args.h — argument block of dw_reduce_kernel (kiln/dw_reduce.cuh), shared by template and host recipes.
#pragma once

namespace kiln {

constexpr int kDwReduceThreads = 1024;  // block size of dw_reduce_kernel: 32 columns × 32 row slices

struct DwReduceArgs {
  const float* partial;  // [G][FOLD·NOUT] fp32, one row per CTA of the first stage
  void* dw;              // [NLO] (null: not wanted)
  int G;
  void* dw_hi = nullptr;  // [NOUT − NLO] when the kernel's NLO < NOUT (null: not wanted)
};

}  // namespace kiln
