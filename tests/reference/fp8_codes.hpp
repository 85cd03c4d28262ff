// tests/reference/fp8_codes.hpp — CPU reference of the uint8 "FP8 compatibility format" (triton-ops.md §4;
// include/kiln/ops/fp8.hpp), the same fp32 operations in the same order as the kernels: bit-exact.
#pragma once
#include <cstdint>
#include <span>

namespace kiln::ref {

// The encode multiplier of values `x` (as the kernel reads them): 448 / max|x| over the finite values, the division in
// fp64 and capped at FLT_MAX, rounded to fp32; 1 where that max is 0 (or there are no finite values).
float fp8_scale(std::span<const float> x);
// rint(clamp(x·s, −448, 448) / 448 · 127) + 128 in fp32, half-to-even; NaN → 128, ±inf → 255 / 1.
uint8_t fp8_encode(float x, float s);
// fp32((q − 128) · fp32(448/127)) / s.
float fp8_decode(uint8_t q, float s);

}  // namespace kiln::ref
