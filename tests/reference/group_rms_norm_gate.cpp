// tests/reference/group_rms_norm_gate.cpp — see group_rms_norm_gate.hpp.
#include "reference/group_rms_norm_gate.hpp"

#include <cmath>
#include <stdexcept>

#include "test_util.hpp"

namespace kiln::ref {
namespace {

std::vector<double> widen(std::span<const float> v) { return std::vector<double>(v.begin(), v.end()); }

int64_t check_sizes(size_t x, size_t gate, size_t w, int64_t M, int64_t dim, int64_t G) {
  if (G <= 0 || dim % G != 0 || x != static_cast<size_t>(M * dim) || gate != x ||
      (w != static_cast<size_t>(dim) && w != static_cast<size_t>(dim / G)))
    throw std::invalid_argument("group_rms_norm_gate reference: inconsistent sizes");
  return dim / G;
}

double sigmoid(double g) { return 1.0 / (1.0 + std::exp(-g)); }

}  // namespace

std::vector<double> group_rms_norm_gate_fwd(std::span<const double> x, std::span<const double> gate,
                                            std::span<const double> w, int64_t M, int64_t dim, int64_t G,
                                            double eps) {
  const int64_t d = check_sizes(x.size(), gate.size(), w.size(), M, dim, G);
  const int64_t wn = static_cast<int64_t>(w.size());
  std::vector<double> out(x.size());
  test::parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t q = 0; q < G; ++q) {
        const int64_t base = m * dim + q * d;
        double ss = 0;
        for (int64_t j = 0; j < d; ++j) ss += x[base + j] * x[base + j];
        const double r = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
        for (int64_t j = 0; j < d; ++j) {
          const int64_t c = q * d + j;
          out[base + j] = x[base + j] * r * w[c % wn] * sigmoid(gate[base + j]);
        }
      }
  });
  return out;
}

std::vector<double> group_rms_norm_gate_fwd(std::span<const float> x, std::span<const float> gate,
                                            std::span<const float> w, int64_t M, int64_t dim, int64_t G, float eps) {
  return group_rms_norm_gate_fwd(widen(x), widen(gate), widen(w), M, dim, G, eps);
}

GroupRmsNormGateGrads group_rms_norm_gate_bwd(std::span<const double> dy, std::span<const double> x,
                                              std::span<const double> gate, std::span<const double> w, int64_t M,
                                              int64_t dim, int64_t G, double eps) {
  const int64_t d = check_sizes(x.size(), gate.size(), w.size(), M, dim, G);
  if (dy.size() != x.size()) throw std::invalid_argument("group_rms_norm_gate reference: dy size");
  const int64_t wn = static_cast<int64_t>(w.size());
  GroupRmsNormGateGrads g;
  g.dx.assign(x.size(), 0.0);
  g.dgate.assign(x.size(), 0.0);
  std::vector<double> contrib(x.size());
  test::parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t q = 0; q < G; ++q) {
        const int64_t base = m * dim + q * d;
        double ss = 0, Q = 0;
        for (int64_t j = 0; j < d; ++j) {
          const double xv = x[base + j];
          ss += xv * xv;
          Q += xv * dy[base + j] * w[(q * d + j) % wn] * sigmoid(gate[base + j]);
        }
        const double r = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
        const double coef = r * r * r * Q / static_cast<double>(d);
        for (int64_t j = 0; j < d; ++j) {
          const int64_t i = base + j;
          const double sg = sigmoid(gate[i]), t = dy[i] * w[(q * d + j) % wn] * sg;
          g.dx[i] = r * t - coef * x[i];
          g.dgate[i] = x[i] * r * t * (1.0 - sg);
          contrib[i] = x[i] * r * dy[i] * sg;
        }
      }
  });
  g.dweight.assign(static_cast<size_t>(wn), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < dim; ++c) g.dweight[c % wn] += contrib[m * dim + c];
  return g;
}

GroupRmsNormGateGrads group_rms_norm_gate_bwd(std::span<const float> dy, std::span<const float> x,
                                              std::span<const float> gate, std::span<const float> w, int64_t M,
                                              int64_t dim, int64_t G, float eps) {
  return group_rms_norm_gate_bwd(widen(dy), widen(x), widen(gate), widen(w), M, dim, G, eps);
}

}  // namespace kiln::ref
