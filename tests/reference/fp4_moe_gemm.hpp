// tests/reference/fp4_moe_gemm.hpp — CPU reference of the FP4 MoE's grouped GEMM (contract ops/fp4_moe_internal.hpp,
// spec fp4-moe.md §5, §7, §12.3): weights dequantized from canonical codes + block scales, the grouped GEMM in double,
// both epilogues in double, each written value rounded once to bf16; and the weights' packed layout
// (kiln/fp4_moe_gemm_args.h), written independently of the GPU prepack for a bit-exact comparison.
#pragma once
#include <cstdint>
#include <vector>

#include "reference/fp4_quant.hpp"  // e2m1_value

namespace kiln::ref {

// A block-scale byte → its factor: nvfp4 (format 0) the E4M3 value, mxfp4 (1) 2^(s − 127).
double fp4_scale_value(uint8_t byte, int format);

// Canonical codes [E, R, K/2] (element 2i in the low nibble) and scales [E, R, K/16 | K/32] → W [E, R, K].
std::vector<double> fp4_dequant(const std::vector<uint8_t>& codes, const std::vector<uint8_t>& scales, int64_t E,
                                int64_t R, int64_t K, int format);

// The packed layout of fp4_moe_prepack (fp4_moe_packed_bytes bytes).
std::vector<uint8_t> fp4_moe_prepack(const std::vector<uint8_t>& codes, const std::vector<uint8_t>& scales, int64_t E,
                                     int64_t R, int64_t K, int format, bool gated);

struct Fp4MoeGemmRef {
  int64_t E = 0, R = 0, K = 0;  // weights W [E, R, K] (dequantized); gated: R = 2I
  bool gemm1 = false, gated = false;
  int activation = 7;             // Fp4MoeActivation: 3 Swiglu, 4 Geglu, 6 Relu2, 7 Identity
  std::vector<int32_t> offsets;   // [E + 1]
  std::vector<int32_t> counts;    // [E]
  int64_t rows_cap = 0;
  // Optional per-row / per-expert inputs (empty: absent).
  std::vector<float> row_scale, bias, scale_a, scale_b, alpha, beta, limit;
};

// out [rows_cap, R or R/2]: bf16-rounded values for rows inside a segment (r < offsets[e] + counts[e]), NaN elsewhere
// (never written). act [rows_cap, K] bf16 values.
std::vector<double> fp4_moe_gemm(const Fp4MoeGemmRef& p, const std::vector<double>& w, const std::vector<float>& act);

}  // namespace kiln::ref
