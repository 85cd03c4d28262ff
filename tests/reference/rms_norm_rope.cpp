// tests/reference/rms_norm_rope.cpp — see rms_norm_rope.hpp.
#include "reference/rms_norm_rope.hpp"

#include <cmath>
#include <stdexcept>

#include "test_util.hpp"

namespace kiln::ref {
namespace {

std::vector<double> widen(std::span<const float> v) { return std::vector<double>(v.begin(), v.end()); }

void check_sizes(size_t x, size_t w, size_t cs, int64_t B, int64_t S, int64_t Hd, int64_t D) {
  if (D <= 0 || D % 2 != 0 || Hd % D != 0 || x != static_cast<size_t>(B * S * Hd) || w != static_cast<size_t>(Hd) ||
      cs != static_cast<size_t>(S * D))
    throw std::invalid_argument("rms_norm_rope reference: inconsistent sizes");
}

double inv_rms(const double* xr, int64_t Hd, double eps) {
  double ss = 0;
  for (int64_t c = 0; c < Hd; ++c) ss += xr[c] * xr[c];
  return 1.0 / std::sqrt(ss / static_cast<double>(Hd) + eps);
}

}  // namespace

std::vector<double> rms_norm_rope_fwd(std::span<const double> x, std::span<const double> w,
                                      std::span<const double> cos, std::span<const double> sin, int64_t B, int64_t S,
                                      int64_t Hd, int64_t D, double eps) {
  check_sizes(x.size(), w.size(), cos.size(), B, S, Hd, D);
  std::vector<double> y(x.size());
  const int64_t h2 = D / 2;
  test::parallel_for(B * S, [&](int64_t m0, int64_t m1) {
    std::vector<double> n(Hd);
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t s = m % S;
      const double* xr = &x[m * Hd];
      const double r = inv_rms(xr, Hd, eps);
      for (int64_t c = 0; c < Hd; ++c) n[c] = xr[c] * r * w[c];
      for (int64_t h = 0; h < Hd / D; ++h)
        for (int64_t i = 0; i < h2; ++i) {
          const double c = cos[s * D + i], sn = sin[s * D + i];
          const double a = n[h * D + i], b = n[h * D + i + h2];
          y[m * Hd + h * D + i] = a * c - b * sn;
          y[m * Hd + h * D + i + h2] = a * sn + b * c;
        }
    }
  });
  return y;
}

std::vector<double> rms_norm_rope_fwd(std::span<const float> x, std::span<const float> w, std::span<const float> cos,
                                      std::span<const float> sin, int64_t B, int64_t S, int64_t Hd, int64_t D,
                                      float eps) {
  return rms_norm_rope_fwd(widen(x), widen(w), widen(cos), widen(sin), B, S, Hd, D, eps);
}

RmsNormRopeGrads rms_norm_rope_bwd(std::span<const double> dy, std::span<const double> x, std::span<const double> w,
                                   std::span<const double> cos, std::span<const double> sin, int64_t B, int64_t S,
                                   int64_t Hd, int64_t D, double eps) {
  check_sizes(x.size(), w.size(), cos.size(), B, S, Hd, D);
  if (dy.size() != x.size()) throw std::invalid_argument("rms_norm_rope reference: dy size");
  const int64_t M = B * S, h2 = D / 2;
  RmsNormRopeGrads g;
  g.dx.assign(x.size(), 0.0);
  std::vector<double> contrib(static_cast<size_t>(M * Hd));  // per-row dweight terms, summed in row order
  test::parallel_for(M, [&](int64_t m0, int64_t m1) {
    std::vector<double> gn(Hd);
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t s = m % S;
      const double* xr = &x[m * Hd];
      const double* gr = &dy[m * Hd];
      for (int64_t h = 0; h < Hd / D; ++h)
        for (int64_t i = 0; i < h2; ++i) {
          const double c = cos[s * D + i], sn = sin[s * D + i];
          const double a = gr[h * D + i], b = gr[h * D + i + h2];
          gn[h * D + i] = a * c + b * sn;
          gn[h * D + i + h2] = b * c - a * sn;
        }
      const double r = inv_rms(xr, Hd, eps);
      double P = 0;
      for (int64_t c = 0; c < Hd; ++c) P += xr[c] * w[c] * gn[c];
      const double coef = r * r * r * P / static_cast<double>(Hd);
      for (int64_t c = 0; c < Hd; ++c) {
        g.dx[m * Hd + c] = r * w[c] * gn[c] - coef * xr[c];
        contrib[m * Hd + c] = xr[c] * r * gn[c];
      }
    }
  });
  g.dweight.assign(Hd, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < Hd; ++c) g.dweight[c] += contrib[m * Hd + c];
  return g;
}

RmsNormRopeGrads rms_norm_rope_bwd(std::span<const float> dy, std::span<const float> x, std::span<const float> w,
                                   std::span<const float> cos, std::span<const float> sin, int64_t B, int64_t S,
                                   int64_t Hd, int64_t D, float eps) {
  return rms_norm_rope_bwd(widen(dy), widen(x), widen(w), widen(cos), widen(sin), B, S, Hd, D, eps);
}

}  // namespace kiln::ref
