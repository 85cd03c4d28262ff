// tests/reference/router_gemm.cpp — see router_gemm.hpp.
#include "reference/router_gemm.hpp"

#include <cmath>
#include <stdexcept>

#include "test_util.hpp"

namespace kiln::ref {

namespace {
void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}
}  // namespace

GemmRef router_gemm_fwd(std::span<const float> x, std::span<const float> w, int64_t T, int64_t K, int64_t E) {
  require(static_cast<int64_t>(x.size()) == T * K && static_cast<int64_t>(w.size()) == E * K,
          "router_gemm_fwd: sizes");
  GemmRef r{std::vector<double>(T * E), std::vector<double>(T * E)};
  test::parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t e = 0; e < E; ++e) {
        double s = 0, a = 0;
        const float* xr = x.data() + t * K;
        const float* wr = w.data() + e * K;
        for (int64_t k = 0; k < K; ++k) {
          const double p = static_cast<double>(xr[k]) * wr[k];
          s += p;
          a += std::fabs(p);
        }
        r.value[t * E + e] = s;
        r.abs[t * E + e] = a;
      }
  });
  return r;
}

namespace {
// out[r, k] = Σ_j c(r, j) · b[j, k] over j < J in order (b [J, K] row-major), rows r < R in parallel, with Σ|products|:
// dx (r = t, j = e, b = w) and dw (r = e, j = t, b = x) are both sums of g-scaled rows.
template <typename Coef>
GemmRef scaled_row_sums(int64_t R, int64_t J, int64_t K, std::span<const float> b, Coef c) {
  GemmRef r{std::vector<double>(R * K), std::vector<double>(R * K)};
  test::parallel_for(R, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      double* s = r.value.data() + i * K;
      double* a = r.abs.data() + i * K;
      for (int64_t j = 0; j < J; ++j) {
        const double cj = c(i, j);
        const float* br = b.data() + j * K;
        for (int64_t k = 0; k < K; ++k) {
          const double p = cj * br[k];
          s[k] += p;
          a[k] += std::fabs(p);
        }
      }
    }
  });
  return r;
}
}  // namespace

GemmRef router_gemm_dx(std::span<const float> g, std::span<const float> w, int64_t T, int64_t K, int64_t E) {
  require(static_cast<int64_t>(g.size()) == T * E && static_cast<int64_t>(w.size()) == E * K, "router_gemm_dx: sizes");
  return scaled_row_sums(T, E, K, w, [&](int64_t t, int64_t e) { return static_cast<double>(g[t * E + e]); });
}

GemmRef router_gemm_dw(std::span<const float> g, std::span<const float> x, int64_t T, int64_t K, int64_t E) {
  require(static_cast<int64_t>(g.size()) == T * E && static_cast<int64_t>(x.size()) == T * K, "router_gemm_dw: sizes");
  return scaled_row_sums(E, T, K, x, [&](int64_t e, int64_t t) { return static_cast<double>(g[t * E + e]); });
}

void split_bf16(float g, float& hi, float& lo) {
  hi = test::bf16_to_float(test::float_to_bf16(g));
  lo = std::isfinite(hi) ? test::bf16_to_float(test::float_to_bf16(g - hi)) : 0.f;
}

int f16_scale_exp(double amax) {
  int s = -127 - 14;  // zero (and fp32 subnormals, as the kernels read the exponent field)
  if (amax >= 0x1p-126) {
    int e = 0;
    std::frexp(amax, &e);  // amax = m·2^e, m in [0.5, 1): ⌊log2 amax⌋ = e − 1
    s = e - 1 - 14;
  }
  return s < -100 ? -100 : (s > 100 ? 100 : s);
}

namespace {
// v[i] of group members i → fp16(v·2^−s)·2^s with the group's s.
void f16_group(std::span<const float> v, std::vector<float>& out, int64_t first, int64_t count, int64_t step) {
  double amax = 0;
  for (int64_t j = 0; j < count; ++j) {
    const float a = std::fabs(v[first + j * step]);
    if (std::isfinite(a) && a > amax) amax = a;
  }
  const int s = f16_scale_exp(amax);
  for (int64_t j = 0; j < count; ++j) {
    const int64_t i = first + j * step;
    const float scaled = static_cast<float>(std::ldexp(static_cast<double>(v[i]), -s));
    out[i] = static_cast<float>(std::ldexp(static_cast<double>(test::f16_to_float(test::float_to_f16(scaled))), s));
  }
}
}  // namespace

std::vector<float> f16_scaled_rows(std::span<const float> v, int64_t rows, int64_t cols) {
  require(static_cast<int64_t>(v.size()) == rows * cols, "f16_scaled_rows: size");
  std::vector<float> out(v.size());
  for (int64_t r = 0; r < rows; ++r) f16_group(v, out, r * cols, cols, 1);
  return out;
}

std::vector<float> f16_scaled_cols(std::span<const float> v, int64_t rows, int64_t cols) {
  require(static_cast<int64_t>(v.size()) == rows * cols, "f16_scaled_cols: size");
  std::vector<float> out(v.size());
  for (int64_t c = 0; c < cols; ++c) f16_group(v, out, c, rows, cols);
  return out;
}

}  // namespace kiln::ref
