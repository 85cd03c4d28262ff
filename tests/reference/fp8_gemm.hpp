// tests/reference/fp8_gemm.hpp — CPU reference of fp8_gemm on uint8 codes (include/kiln/ops/fp8_gemm.hpp): the exact
// integer sum, then the kernel's fp32 operations — bit-exact before the output's rounding.
#pragma once
#include <cstdint>
#include <vector>

namespace kiln::ref {

// α = fp32((448² / 127²) / (s_a · s_b)) with the division and product in fp64.
float fp8_gemm_alpha(float a_scale, float b_scale);
// c[m][n] = fp32(Σ_k (qa[m][k] − 128)(qb[k][n] − 128)) · α (fp32), qa [M, K], qb [K, N] row-major.
std::vector<float> fp8_gemm(const std::vector<uint8_t>& qa, const std::vector<uint8_t>& qb, int64_t M, int64_t N,
                            int64_t K, float a_scale, float b_scale);

}  // namespace kiln::ref
