// ops/bench/rms_norm.hpp — prepared instances of the RMSNorm ops (random non-zero inputs, outputs allocated), shared
// by the bench cases (ops/bench/rms_norm.cpp) and the families' tune instances (ops/rms_norm*.cpp).
#pragma once
#include <cstdint>

#include "kiln/dtype.hpp"
#include "kiln/runtime.hpp"
#include "runtime/bench.hpp"

namespace kiln::detail {

// rms_norm_block_quant_fwd at [M, N] in output_mode `mode` (mode 1 reads the rms_inv of a mode-0 call made here).
// outputs: q, q_scale, rms_inv (modes 0, 2) and qT, qT_scale (modes 1, 2).
BenchInstance rms_norm_block_quant_instance(Runtime& rt, int64_t M, int64_t N, int mode, bool round, bool w_f32);
// rms_norm_fwd at [M, N]; outputs: y, rms_inv.
BenchInstance rms_norm_fwd_instance(Runtime& rt, int64_t M, int64_t N, DType dtype, DType w_dtype);
// rms_norm_bwd at [M, N] with a caller-sized workspace (workspace_elems ≤ 0: rms_norm_bwd_workspace_elems);
// outputs: dx, dweight.
BenchInstance rms_norm_bwd_instance(Runtime& rt, int64_t M, int64_t N, DType dtype, DType w_dtype, DType dw_dtype,
                                    int64_t workspace_elems);

}  // namespace kiln::detail
