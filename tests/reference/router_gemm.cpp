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

GemmRef router_gemm_dx(std::span<const float> g, std::span<const float> w, int64_t T, int64_t K, int64_t E) {
  require(static_cast<int64_t>(g.size()) == T * E && static_cast<int64_t>(w.size()) == E * K, "router_gemm_dx: sizes");
  GemmRef r{std::vector<double>(T * K), std::vector<double>(T * K)};
  test::parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      double* s = r.value.data() + t * K;
      double* a = r.abs.data() + t * K;
      for (int64_t e = 0; e < E; ++e) {
        const double ge = g[t * E + e];
        const float* wr = w.data() + e * K;
        for (int64_t k = 0; k < K; ++k) {
          const double p = ge * wr[k];
          s[k] += p;
          a[k] += std::fabs(p);
        }
      }
    }
  });
  return r;
}

GemmRef router_gemm_dw(std::span<const float> g, std::span<const float> x, int64_t T, int64_t K, int64_t E) {
  require(static_cast<int64_t>(g.size()) == T * E && static_cast<int64_t>(x.size()) == T * K, "router_gemm_dw: sizes");
  GemmRef r{std::vector<double>(E * K), std::vector<double>(E * K)};
  test::parallel_for(E, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      double* s = r.value.data() + e * K;
      double* a = r.abs.data() + e * K;
      for (int64_t t = 0; t < T; ++t) {
        const double ge = g[t * E + e];
        const float* xr = x.data() + t * K;
        for (int64_t k = 0; k < K; ++k) {
          const double p = ge * xr[k];
          s[k] += p;
          a[k] += std::fabs(p);
        }
      }
    }
  });
  return r;
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
