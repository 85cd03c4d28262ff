// tests/reference/fp4_quant.cpp — see fp4_quant.hpp.
#include "reference/fp4_quant.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "reference/rms_norm.hpp"  // e4m3_from_float
#include "test_util.hpp"            // e4m3_to_float

namespace kiln::ref {
namespace {

constexpr float kE2m1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

float finite_abs(float v) { return std::isfinite(v) ? std::fabs(v) : 0.0f; }

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

uint8_t e2m1_from_float(float v) {
  if (std::isnan(v)) return 0;
  const uint8_t sign = std::signbit(v) ? 8 : 0;
  const float a = std::fabs(v);
  if (a >= 6.0f) return sign | 7;
  int hi = 1;
  while (kE2m1[hi] <= a) ++hi;  // kE2m1[hi − 1] ≤ a < kE2m1[hi]
  const int lo = hi - 1;
  const float mid = (kE2m1[lo] + kE2m1[hi]) * 0.5f;  // exact
  const int code = a < mid ? lo : a > mid ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<uint8_t>(sign | code);
}

float e2m1_value(uint8_t code) { return (code & 8 ? -1.0f : 1.0f) * kE2m1[code & 7]; }

float e4m3_value(uint8_t code) { return test::e4m3_to_float(code); }

int mx_exponent(float amax, double max_value) {
  int e = -160;
  while (std::ldexp(max_value, e) < static_cast<double>(amax)) ++e;
  return e;
}

BlockQuant quantize_nvfp4(std::span<const float> x, int64_t K, float G) {
  require(K % 16 == 0 && static_cast<int64_t>(x.size()) % (K > 0 ? K : 1) == 0, "quantize_nvfp4: shape");
  const int64_t blocks = static_cast<int64_t>(x.size()) / 16;
  BlockQuant out{std::vector<uint8_t>(x.size() / 2, 0), std::vector<uint8_t>(blocks, 0)};
  for (int64_t b = 0; b < blocks; ++b) {
    const float* v = x.data() + b * 16;
    float amax = 0.0f;
    for (int i = 0; i < 16; ++i) amax = std::max(amax, finite_abs(v[i]));
    volatile float p = G * amax;  // volatile: one fp32 rounding an operation, in the spec's order
    volatile float t = p / 6.0f;
    const uint8_t sfb = static_cast<uint8_t>(e4m3_from_float(t) & 0x7F);
    out.sf[b] = sfb;
    if (sfb == 0) continue;  // codes 0
    const float sf = e4m3_value(sfb == 0x7F ? 0x7E : sfb);
    for (int i = 0; i < 16; ++i) {
      volatile float a = v[i] * G;
      volatile float c = a / sf;
      out.q[b * 8 + i / 2] |= static_cast<uint8_t>(e2m1_from_float(c) << (4 * (i % 2)));
    }
  }
  return out;
}

namespace {

BlockQuant quantize_mx(std::span<const float> x, int64_t K, bool fp8) {
  require(K % 32 == 0 && static_cast<int64_t>(x.size()) % (K > 0 ? K : 1) == 0, "quantize_mx: shape");
  const int64_t blocks = static_cast<int64_t>(x.size()) / 32;
  BlockQuant out{std::vector<uint8_t>(fp8 ? x.size() : x.size() / 2, 0), std::vector<uint8_t>(blocks, 0)};
  for (int64_t b = 0; b < blocks; ++b) {
    const float* v = x.data() + b * 32;
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, finite_abs(v[i]));
    const int byte = amax == 0.0f ? 0 : std::clamp(mx_exponent(amax, fp8 ? 448.0 : 6.0) + 127, 0, 254);
    out.sf[b] = static_cast<uint8_t>(byte);
    for (int i = 0; i < 32; ++i) {
      const float y = static_cast<float>(std::ldexp(static_cast<double>(v[i]), 127 - byte));  // exact where normal
      if (fp8)
        out.q[b * 32 + i] = e4m3_from_float(y);
      else
        out.q[b * 16 + i / 2] |= static_cast<uint8_t>(e2m1_from_float(y) << (4 * (i % 2)));
    }
  }
  return out;
}

}  // namespace

BlockQuant quantize_mxfp4(std::span<const float> x, int64_t K) { return quantize_mx(x, K, false); }
BlockQuant quantize_mxfp8(std::span<const float> x, int64_t K) { return quantize_mx(x, K, true); }

}  // namespace kiln::ref
