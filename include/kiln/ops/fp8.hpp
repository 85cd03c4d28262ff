// kiln/ops/fp8.hpp — the triton_ops uint8 "FP8 compatibility format" (../shared/spec/triton-ops.md §4): despite the
// name not E4M3 but a symmetric linear grid of 255 levels with step max|x|/127, the format of triton_ops' fp8_gemm and
// FP8Linear.
//
//   s = 448 / max|x|  (fp64 division, stored fp32; 1 where max|x| = 0)       — the ENCODE multiplier
//   q = rint(clamp(x·s, −448, 448) / 448 · 127) + 128  ∈ [1, 255]             (fp32 ops in this order; half-to-even)
//   x ≈ (q − 128) · (448/127) / s
//
// kiln's rules where triton_ops has none (README "fp8 codes"): NaN encodes as 128 and ±inf clamp to 255 / 1, neither
// entering max|x| (triton_ops: NaN makes the scale NaN and every code undefined; an infinite max raises
// NumericalOverflowError for the then non-positive scale); s is capped at FLT_MAX where 448 / max|x| overflows fp32
// (a max|x| below ≈ 1.3e−36) instead of becoming +inf (whose products with zeros are NaN).
#pragma once
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

// x: fp32 / bf16 / fp16, contiguous, any shape (empty too), 16-byte aligned. q: uint8 with x's number of elements,
// contiguous, 16-byte aligned. scale: one fp32 element (shape [] or [1]), written on the device (no host sync).
// One launch; deterministic.
void quantize_fp8(Runtime& rt, const TensorRef& x, const TensorRef& q, const TensorRef& scale, Stream stream);

// q: uint8 codes; scale: one fp32 element (the encode multiplier quantize_fp8 wrote); out: bf16 / fp16 / fp32 with
// q's number of elements, contiguous, 16-byte aligned: out = fp32((q − 128) · fp32(448/127)) / s, rounded once.
void dequantize_fp8(Runtime& rt, const TensorRef& q, const TensorRef& scale, const TensorRef& out, Stream stream);

}  // namespace kiln
