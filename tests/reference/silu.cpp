// tests/reference/silu.cpp — see silu.hpp. Every fp32 operation below is one IEEE operation (the build does not
// contract a·b + c into an fma on its own; fmas are written out where the kernel uses them).
#include "reference/silu.hpp"

#include <cmath>
#include <cstring>
#include <stdexcept>

#include "test_util.hpp"

namespace kiln::ref {

namespace {
void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}
float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
// Kept out of line so the compiler cannot fuse a product into a following sum.
[[gnu::noinline]] float mul(float a, float b) { return a * b; }
[[gnu::noinline]] float add(float a, float b) { return a + b; }
}  // namespace

float silu_exp_neg_abs(float a) {
  const float t = -std::fabs(a);
  if (!(t >= -87.0f)) return 0.0f;
  const float k = std::nearbyint(mul(t, 1.44269504088896341f));
  float r = std::fmaf(-k, 0.693359375f, t);
  r = std::fmaf(-k, -2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fmaf(p, r, 1.3981999507e-3f);
  p = std::fmaf(p, r, 8.3334519073e-3f);
  p = std::fmaf(p, r, 4.1665795894e-2f);
  p = std::fmaf(p, r, 1.6666665459e-1f);
  p = std::fmaf(p, r, 5.0000001201e-1f);
  p = std::fmaf(p, mul(r, r), r);
  p = add(p, 1.0f);
  return mul(p, from_bits(static_cast<uint32_t>(static_cast<int>(k) + 127) << 23));
}

float silu_sigmoid(float a) {
  const float e = silu_exp_neg_abs(a);
  const float r = 1.0f / add(1.0f, e);
  return a >= 0.0f ? r : mul(e, r);
}

std::vector<float> silu_fwd_values(std::span<const float> x, int64_t M, int64_t n, std::span<const float> prob) {
  require(static_cast<int64_t>(x.size()) == M * 2 * n, "silu_fwd_values: x size");
  require(prob.empty() || static_cast<int64_t>(prob.size()) == M, "silu_fwd_values: prob size");
  std::vector<float> y(static_cast<size_t>(M * n));
  test::parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t k = 0; k < n; ++k) {
        const float a = x[m * 2 * n + k], b = x[m * 2 * n + n + k];
        float v = mul(mul(a, silu_sigmoid(a)), b);
        if (!prob.empty()) v = mul(v, prob[m]);
        y[m * n + k] = v;
      }
  });
  return y;
}

SiluGrads silu_bwd_values(std::span<const float> g, std::span<const float> x, int64_t M, int64_t n,
                          std::span<const float> prob) {
  require(static_cast<int64_t>(x.size()) == M * 2 * n && static_cast<int64_t>(g.size()) == M * n,
          "silu_bwd_values: sizes");
  require(prob.empty() || static_cast<int64_t>(prob.size()) == M, "silu_bwd_values: prob size");
  SiluGrads out;
  out.dx.resize(static_cast<size_t>(M * 2 * n));
  if (!prob.empty()) out.dprob.assign(static_cast<size_t>(M), 0.0);
  test::parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      double dsum = 0.0;
      for (int64_t k = 0; k < n; ++k) {
        const float a = x[m * 2 * n + k], b = x[m * 2 * n + n + k], gg = g[m * n + k];
        const float sig = silu_sigmoid(a);
        const float s = mul(a, sig);
        const float gw = prob.empty() ? gg : mul(gg, prob[m]);
        out.dx[m * 2 * n + n + k] = mul(gw, s);
        const float one_m = add(1.0f, -sig);
        const float deriv = add(1.0f, mul(a, one_m));
        out.dx[m * 2 * n + k] = mul(mul(mul(gw, b), sig), deriv);
        if (!prob.empty()) dsum += static_cast<double>(mul(mul(s, b), gg));
      }
      if (!prob.empty()) out.dprob[m] = dsum;
    }
  });
  return out;
}

QuantOutputs quantize_plain(std::span<const float> y, int64_t M, int64_t W, bool round_scale, bool rowwise,
                            bool transposed) {
  QuantOutputs o;
  if (rowwise) {
    o.q.resize(static_cast<size_t>(M * W));
    o.q_scale.resize(static_cast<size_t>(W / kQuantBlock * M));
    block_quant_rowwise(y, M, W, round_scale, o.q, o.q_scale);
  }
  if (transposed) {
    o.qT.resize(static_cast<size_t>(M * W));
    o.qT_scale.resize(static_cast<size_t>((M + kQuantBlock - 1) / kQuantBlock * W));
    block_quant_transposed(y, M, W, round_scale, o.qT, o.qT_scale);
  }
  return o;
}

int64_t token_blocks(std::span<const int> counts) {
  int64_t b = 0;
  for (int c : counts) b += (c + kQuantBlock - 1) / kQuantBlock;
  return b;
}

QuantOutputs quantize_segmented(std::span<const float> y, std::span<const int> counts, int64_t W, bool round_scale,
                                bool rowwise, bool transposed) {
  int64_t M = 0;
  for (int c : counts) {
    require(c >= 0, "quantize_segmented: negative count");
    M += c;
  }
  require(static_cast<int64_t>(y.size()) == M * W, "quantize_segmented: y size");
  QuantOutputs o;
  if (rowwise) {
    o.q.resize(static_cast<size_t>(M * W));
    o.q_scale.resize(static_cast<size_t>(W / kQuantBlock * M));
  }
  if (transposed) {
    o.qT.resize(static_cast<size_t>(M * W));
    o.qT_scale.resize(static_cast<size_t>(token_blocks(counts) * W));
  }
  int64_t s = 0, b = 0;
  for (int c : counts) {
    const std::span<const float> seg = y.subspan(static_cast<size_t>(s * W), static_cast<size_t>(c * W));
    const QuantOutputs e = quantize_plain(seg, c, W, round_scale, rowwise, transposed);
    if (rowwise) {
      std::copy(e.q.begin(), e.q.end(), o.q.begin() + s * W);
      std::copy(e.q_scale.begin(), e.q_scale.end(), o.q_scale.begin() + s * (W / kQuantBlock));
    }
    if (transposed) {
      std::copy(e.qT.begin(), e.qT.end(), o.qT.begin() + s * W);
      std::copy(e.qT_scale.begin(), e.qT_scale.end(), o.qT_scale.begin() + b * W);
    }
    s += c;
    b += (c + kQuantBlock - 1) / kQuantBlock;
  }
  return o;
}

}  // namespace kiln::ref
