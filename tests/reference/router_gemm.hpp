// tests/reference/router_gemm.hpp — CPU reference of the fp32 router GEMM and its backward (linghe-kernels.md §5).
//
// Inputs are the values the GPU sees (bf16 x and w already rounded, fp32 g); every product and sum is in double, so
// the result is exact up to double rounding. Each output also gets Σ|products|, the scale of its accumulation error.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace kiln::ref {

struct GemmRef {
  std::vector<double> value;  // the exact-ish sum
  std::vector<double> abs;    // Σ |products|, same shape
};

// logits[t, e] = Σ_k x[t, k] · w[e, k]          x [T, K], w [E, K] row-major → [T, E]
GemmRef router_gemm_fwd(std::span<const float> x, std::span<const float> w, int64_t T, int64_t K, int64_t E);
// dx[t, k] = Σ_e g[t, e] · w[e, k]              g [T, E], w [E, K] → [T, K]
GemmRef router_gemm_dx(std::span<const float> g, std::span<const float> w, int64_t T, int64_t K, int64_t E);
// dw[e, k] = Σ_t g[t, e] · x[t, k]              g [T, E], x [T, K] → [E, K]
GemmRef router_gemm_dw(std::span<const float> g, std::span<const float> x, int64_t T, int64_t K, int64_t E);

// The kernels' treatment of an fp32 g: hi = bf16(g) (nearest even), lo = bf16(g − hi), lo = 0 when hi is not finite.
// hi + lo is what the tensor cores multiply.
void split_bf16(float g, float& hi, float& lo);
// The tf32 backward's fp16 pass: a group's scale exponent s = clamp(⌊log2 amax⌋ − 14, −100, 100) (amax over the
// finite |values|; zero → −100), so amax·2^−s lies in [2¹⁴, 2¹⁵).
int f16_scale_exp(double amax);
// The values the dx kernel multiplies: each group — a row (f16_scaled_rows: g [T, E]) or a column (f16_scaled_cols:
// w [E, K]) — scaled by 2^−s, rounded to fp16 (nearest even, subnormals kept), scaled back by 2^s (exact in fp32).
std::vector<float> f16_scaled_rows(std::span<const float> v, int64_t rows, int64_t cols);
std::vector<float> f16_scaled_cols(std::span<const float> v, int64_t rows, int64_t cols);

}  // namespace kiln::ref
