// tests/reference/fp4_moe_layer.cpp — see fp4_moe_layer.hpp.
#include "reference/fp4_moe_layer.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "reference/fp4_quant.hpp"
#include "test_util.hpp"

namespace kiln::ref {
namespace {

float bf16v(double v) { return test::bf16_to_float(test::float_to_bf16(static_cast<float>(v))); }
float ue8m0_value(uint8_t s) {
  return s == 255 ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.0f, static_cast<int>(s) - 127);
}
float or1(const std::vector<float>& v, int64_t e) { return v.empty() ? 1.0f : v[e]; }

}  // namespace

Fp4MoePermutation fp4_moe_permute(std::span<const int32_t> ids, int64_t T, int K, int64_t E_l, int64_t expert_offset,
                                  int tile) {
  if (static_cast<int64_t>(ids.size()) != T * K || tile < 1) throw std::invalid_argument("fp4_moe_permute: sizes");
  Fp4MoePermutation p;
  p.counts.assign(E_l, 0);
  p.offsets.assign(E_l + 1, 0);
  p.expanded.assign(T * K, -1);
  auto local = [&](int64_t i) {
    const int64_t e = ids[i] - expert_offset;
    return e >= 0 && e < E_l ? e : int64_t{-1};
  };
  for (int64_t i = 0; i < T * K; ++i)
    if (local(i) >= 0) ++p.counts[local(i)];
  for (int64_t e = 0; e < E_l; ++e) p.offsets[e + 1] = p.offsets[e] + (p.counts[e] + tile - 1) / tile * tile;
  p.perm_token.assign(p.offsets[E_l], -1);
  p.perm_k.assign(p.offsets[E_l], -1);
  std::vector<int32_t> next(p.offsets.begin(), p.offsets.end() - 1);
  // (expert, token, k) order: walk the experts, then the slots in (token, k) order.
  for (int64_t e = 0; e < E_l; ++e)
    for (int64_t i = 0; i < T * K; ++i)
      if (local(i) == e) {
        const int32_t r = next[e]++;
        p.expanded[i] = r;
        p.perm_token[r] = static_cast<int32_t>(i / K);
        p.perm_k[r] = static_cast<int32_t>(i % K);
      }
  return p;
}

std::vector<float> fp4_moe_dequant_hidden(Fp4MoeHidden f, int64_t T, int64_t H, std::span<const float> bf16_values,
                                          std::span<const uint8_t> codes, std::span<const uint8_t> scales) {
  std::vector<float> x(T * H);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      float v = 0.0f;
      switch (f) {
        case Fp4MoeHidden::bf16: v = bf16_values[t * H + h]; break;
        case Fp4MoeHidden::nvfp4: {
          const uint8_t b = codes[t * (H / 2) + h / 2];
          v = e2m1_value(h % 2 ? b >> 4 : b & 15) * e4m3_value(scales[t * (H / 16) + h / 16]);
          break;
        }
        case Fp4MoeHidden::mxfp8: v = e4m3_value(codes[t * H + h]) * ue8m0_value(scales[t * (H / 32) + h / 32]); break;
        case Fp4MoeHidden::e4m3: v = e4m3_value(codes[t * H + h]); break;
      }
      x[t * H + h] = bf16v(v);
    }
  return x;
}

std::vector<float> fp4_moe_finalize(std::span<const float> y, int64_t H, std::span<const int32_t> expanded,
                                    std::span<const float> weights, int64_t T, int K, int64_t H_out) {
  std::vector<float> out(T * H_out);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H_out; ++h) {
      float acc = 0.0f;
      for (int k = 0; k < K; ++k) {
        const int32_t r = expanded[t * K + k];
        if (r < 0) continue;
        acc = std::fma(weights[t * K + k], y[static_cast<int64_t>(r) * H + h], acc);
      }
      out[t * H_out + h] = bf16v(acc);
    }
  return out;
}

std::vector<float> fp4_moe_dequant_weights(bool mxfp4, int64_t E_l, int64_t R, int64_t C,
                                           std::span<const uint8_t> codes,
                                           std::span<const uint8_t> scales) {
  const int64_t B = mxfp4 ? 32 : 16;
  std::vector<float> w(E_l * R * C);
  for (int64_t r = 0; r < E_l * R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const uint8_t b = codes[r * (C / 2) + c / 2];
      const uint8_t s = scales[r * (C / B) + c / B];
      w[r * C + c] = e2m1_value(c % 2 ? b >> 4 : b & 15) * (mxfp4 ? ue8m0_value(s) : e4m3_value(s));
    }
  return w;
}

Fp4MoeLayerResult fp4_moe_layer(const Fp4MoeLayerProblem& p) {
  Fp4MoeLayerResult res;
  const int K = p.route.top_k;
  const int64_t T = p.T, H = p.H, I = p.I;
  res.route = fp4_moe_route(p.logits, T, p.E, p.routing_bias, p.route);
  const bool gated = p.activation == Fp4MoeAct::Swiglu || p.activation == Fp4MoeAct::Geglu;
  const int64_t R1 = gated ? 2 * I : I;
  res.y.assign(T * K * H, 0.0f);
  test::parallel_for(T * K, [&](int64_t i0, int64_t i1) {
    std::vector<double> u(R1), h(I);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / K;
      const int64_t e = res.route.ids[i] - p.expert_offset;
      if (e < 0 || e >= p.E_l) continue;
      const float* x = p.x.data() + t * H;
      const double rs = p.per_token_scale.empty() ? 1.0 : p.per_token_scale[t];
      const double sa = or1(p.s_gate, e), sb = or1(p.s_c, e);
      for (int64_t j = 0; j < R1; ++j) {
        const float* w = p.w1.data() + (e * R1 + j) * H;
        double acc = 0;
        for (int64_t k = 0; k < H; ++k) acc += static_cast<double>(x[k]) * w[k];
        u[j] = sa * (rs * acc + (p.b1.empty() ? 0.0 : p.b1[e * R1 + j]));
      }
      for (int64_t j = 0; j < I; ++j) {
        double v;
        if (gated) {
          const double x0 = u[j], x1 = u[I + j];
          double a;
          if (p.activation == Fp4MoeAct::Swiglu) {
            const double al = p.alpha.empty() ? 1.0 : p.alpha[e], be = p.beta.empty() ? 0.0 : p.beta[e];
            const double L = p.limit.empty() ? std::numeric_limits<double>::infinity() : p.limit[e];
            const double g = std::min(x1, L), l = std::clamp(x0, -L, L);
            a = g / (1.0 + std::exp(-al * g)) * (l + be);
          } else {
            a = 0.5 * x1 * (1.0 + std::erf(x1 / std::sqrt(2.0))) * x0;
          }
          v = sa == 0.0 ? 0.0 : a * sb / sa;
        } else {
          const double a = p.activation == Fp4MoeAct::Relu2 ? std::pow(std::max(u[j], 0.0), 2) : u[j];
          v = sb * a;
        }
        h[j] = bf16v(v);
      }
      const double s2 = or1(p.s_2, e);
      for (int64_t j = 0; j < H; ++j) {
        const float* w = p.w2.data() + (e * H + j) * I;
        double acc = 0;
        for (int64_t k = 0; k < I; ++k) acc += h[k] * w[k];
        res.y[i * H + j] = bf16v(s2 * (acc + (p.b2.empty() ? 0.0 : p.b2[e * H + j])));
      }
    }
  });
  // Finalize over the slots' rows (slot i's row is i itself here).
  std::vector<int32_t> slot(T * K);
  for (int64_t i = 0; i < T * K; ++i) {
    const int64_t e = res.route.ids[i] - p.expert_offset;
    slot[i] = e >= 0 && e < p.E_l ? static_cast<int32_t>(i) : -1;
  }
  res.out = fp4_moe_finalize(res.y, H, slot, res.route.weights, T, K, p.H_out);
  return res;
}

}  // namespace kiln::ref
