// tests/reference/gated_mlp.cpp — see gated_mlp.hpp.
#include "reference/gated_mlp.hpp"

#include <bit>
#include <cmath>
#include <stdexcept>

#include "test_util.hpp"

namespace kiln::ref {

float to_tf32(float v, Tf32 mode) {
  if (mode == Tf32::none || !std::isfinite(v)) return v;
  uint32_t b = std::bit_cast<uint32_t>(v);
  if (mode == Tf32::round) b += 0xFFFu + ((b >> 13) & 1u);  // to nearest, ties to even (carries into the exponent)
  return std::bit_cast<float>(b & ~0x1FFFu);
}

double gated_activation(double z, GatedActivation act) {
  if (act == GatedActivation::silu) return z / (1.0 + std::exp(-z));
  return 0.5 * z * (1.0 + std::erf(z * 0.70710678118654752440));
}

GatedMlpRef gated_mlp(std::span<const float> x, std::span<const float> gate_weight, std::span<const float> up_weight,
                      int64_t M, int64_t H, int64_t I, GatedActivation act, Tf32 tf32) {
  if (static_cast<int64_t>(x.size()) != M * H || static_cast<int64_t>(gate_weight.size()) != I * H ||
      static_cast<int64_t>(up_weight.size()) != I * H)
    throw std::invalid_argument("ref::gated_mlp: sizes");
  auto reduced = [&](std::span<const float> v) {
    std::vector<double> d(v.size());
    for (size_t i = 0; i < v.size(); ++i) d[i] = to_tf32(v[i], tf32);
    return d;
  };
  const std::vector<double> xd = reduced(x), wg = reduced(gate_weight), wu = reduced(up_weight);
  GatedMlpRef r{std::vector<double>(M * I), std::vector<double>(M * I), std::vector<double>(M * I)};
  test::parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const double* xr = xd.data() + m * H;
      for (int64_t i = 0; i < I; ++i) {
        const double* gr = wg.data() + i * H;
        const double* ur = wu.data() + i * H;
        double g = 0, u = 0;
        for (int64_t h = 0; h < H; ++h) {
          g += xr[h] * gr[h];
          u += xr[h] * ur[h];
        }
        r.g[m * I + i] = g;
        r.u[m * I + i] = u;
        r.out[m * I + i] = gated_activation(g, act) * u;
      }
    }
  });
  return r;
}

}  // namespace kiln::ref
