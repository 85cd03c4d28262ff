// tests/reference/fp4_quant.hpp — CPU references of the FP4 MoE's block-scaled formats (spec fp4-moe.md §5, kiln's
// decisions §13; the rules are in include/kiln/ops/fp4.hpp). Codes are found by bracketing against decoded value
// tables and scale exponents by exact doubling, not by the kernel's bit tricks, so each side checks the other.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace kiln::ref {

// E2M1: nearest of 0, 0.5, 1, 1.5, 2, 3, 4, 6, ties to the even code, saturating at 6; bit 3 the sign (a negative
// value rounding to 0 gives −0, code 8); NaN → 0.
uint8_t e2m1_from_float(float v);
float e2m1_value(uint8_t code);
// The value of an E4M3 byte (0x7F / 0xFF: NaN): test::e4m3_to_float.
float e4m3_value(uint8_t code);
// The smallest integer e with max_value·2^e ≥ amax (amax finite, > 0).
int mx_exponent(float amax, double max_value);

struct BlockQuant {
  std::vector<uint8_t> q;   // packed E2M1 (element 2i low nibble) or E4M3 bytes, row-major
  std::vector<uint8_t> sf;  // one byte a block, row-major [rows, K/B]
};

// x: rows of K (row-major), K a multiple of the block.
BlockQuant quantize_nvfp4(std::span<const float> x, int64_t K, float global_scale);
BlockQuant quantize_mxfp4(std::span<const float> x, int64_t K);
BlockQuant quantize_mxfp8(std::span<const float> x, int64_t K);

}  // namespace kiln::ref
