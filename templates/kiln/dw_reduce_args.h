// kiln/dw_reduce_args.h — argument block of dw_reduce_kernel (kiln/dw_reduce.cuh), shared by template and host recipes.
#pragma once

namespace kiln {

// dw_reduce_kernel's CTA: kDwReduceCols output columns × 8 row slices. Small on purpose: launched with PDL while the
// backward runs, its CTAs fit beside the backward's on an SM and wait there, so it starts the moment the backward ends.
constexpr int kDwReduceCols = 16;
constexpr int kDwReduceThreads = kDwReduceCols * 8;

struct DwReduceArgs {
  const float* partial;  // [G][FOLD·NOUT] fp32, one row per CTA of the first stage
  void* dw;              // [NLO] (null: not wanted)
  int G;
  void* dw_hi = nullptr;  // [NOUT − NLO] when the kernel's NLO < NOUT (null: not wanted)
};

}  // namespace kiln
