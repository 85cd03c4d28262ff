// kiln/ops/fp8_gemm.hpp — GEMM on the triton_ops uint8 "FP8 compatibility format" (../shared/spec/triton-ops.md §5,
// kiln's decision §8.3): c[M, N] = (448/127)² / (a_scale · b_scale) · Σ_k (q_a[m, k] − 128)(q_b[k, n] − 128), the
// sum exact in integers (int8 tensor-core MMAs), one fp32 multiply, one rounding to c's dtype — no TF32 and no fp16
// intermediate (triton_ops rounds through both; results differ from it by those roundings).
#pragma once
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

// a [M, K]: uint8 codes (then a_scale, its encode multiplier, one fp32 element, is required) or fp32 / bf16 / fp16
// (quantized per tensor by quantize_fp8 into the Runtime's scratch first; a_scale must then be null). Rows 16-byte
// aligned (K a multiple of 16), any row stride. b [K, N] contiguous, the same two kinds with b_scale. c [M, N]
// fp16 / bf16 / fp32 (2-D, any row stride ≥ N). Compile-time: N, K, the output dtype; run-time: M (0 … 2³¹ − 1).
// K ≤ 66 304 (the int32 sum's bound). sm_90a only (DeviceError elsewhere).
void fp8_gemm(Runtime& rt, const TensorRef& a, const TensorRef& b, const TensorRef* a_scale, const TensorRef* b_scale,
              const TensorRef& c, Stream stream);

}  // namespace kiln
