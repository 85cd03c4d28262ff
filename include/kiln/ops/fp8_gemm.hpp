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

// A weight prepared once for many GEMMs (what a Linear layer keeps between calls): bᵀ as int8 [N, K] (code − 128),
// its column sums Σ_k (q − 128) [N] int32 and its encode multiplier, in one caller-owned device buffer of
// fp8_gemm_weight_bytes(N, K) bytes, 16-byte aligned. fp8_gemm above prepares b into scratch on every call (its
// b prep pass reads and writes N·K bytes); with a prepared weight a call reads only a and the weight.
struct Fp8GemmWeight {
  void* data = nullptr;
  int64_t N = 0, K = 0;
};
// The layout of the tensor a weight is prepared from: kn = fp8_gemm's b [K, N]; nk = [N, K] (a Linear's weight
// [out_features, in_features], already K-major: its prep is one elementwise pass).
enum class Fp8WeightLayout { kn, nk };

int64_t fp8_gemm_weight_bytes(int64_t N, int64_t K);

// b: uint8 codes with b_scale, or fp32 / bf16 / fp16 (quantized per tensor, b_scale null); contiguous, 16-byte
// aligned, in `layout`; weight.N / weight.K must match it. Stream-ordered: the weight is ready for GEMMs enqueued
// after it on the same stream.
void fp8_gemm_prepare_weight(Runtime& rt, const TensorRef& b, const TensorRef* b_scale, Fp8WeightLayout layout,
                             const Fp8GemmWeight& weight, Stream stream);

// c [M, N] = a [M, K] · weight (+ bias [N], fp32 / bf16 / fp16, added in fp32 before the one rounding of c). a as in
// fp8_gemm above (codes with a_scale, or float quantized per call).
void fp8_gemm(Runtime& rt, const TensorRef& a, const TensorRef* a_scale, const Fp8GemmWeight& weight,
              const TensorRef* bias, const TensorRef& c, Stream stream);

}  // namespace kiln
