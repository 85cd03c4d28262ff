// tests/reference_test.cpp — CPU tests of the references and host number formats the GPU tests trust.
//
// Every encoder is checked against a second, independently written method: the table-search e4m3 reference against
// a bit-level encoder and NVIDIA's own host conversion (cuda_fp8.h), bf16 against exact double arithmetic, fp16
// against the compiler's _Float16.
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kiln/rms_norm_block_quant_args.h"
#include "reference/rms_norm.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::string hex(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%02x", v);
  return b;
}

// ---- second e4m3 encoder: bit manipulation on the fp32 encoding ----------------------------------------------

uint8_t e4m3_by_bits(float v) {
  const uint32_t u = std::bit_cast<uint32_t>(v);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  const uint32_t au = u & 0x7FFFFFFFu;
  if (au > 0x7F800000u) return 0x7F;                 // NaN
  if (au > 0x43E00000u) return sign | 0x7E;          // above 448.0f (0x43E00000), inf included: saturate
  const int fexp = static_cast<int>(au >> 23);      // biased fp32 exponent
  const uint32_t frac = au & 0x7FFFFFu;
  if (fexp >= 121) {
    // ≥ 2^-6: e4m3 normal with biased exponent fexp − 127 + 7; keep 3 of the 23 fraction bits, round the rest.
    uint32_t code = (static_cast<uint32_t>(fexp - 120) << 3) | (frac >> 20);
    const uint32_t rest = frac & 0xFFFFFu, half = 0x80000u;
    if (rest > half || (rest == half && (code & 1u))) ++code;  // a carry into the exponent is still right
    return static_cast<uint8_t>(sign | code);                  // ≤ 0x7E since |v| ≤ 448
  }
  // Below 2^-6: multiples of 2^-9. |v| = sig·2^(e−150) with sig the 24-bit significand, so |v|/2^-9 = sig·2^(e−141).
  const uint32_t sig = fexp == 0 ? frac : (frac | 0x800000u);
  const int e = fexp == 0 ? 1 : fexp;
  const int shift = 141 - e;  // ≥ 21
  if (shift >= 32) return sign;  // far below 2^-10
  uint32_t q = sig >> shift;
  const uint32_t rest = sig & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rest > half || (rest == half && (q & 1u))) ++q;
  return static_cast<uint8_t>(sign | q);  // q == 8 is 2^-6, whose normal code is also 8
}

uint8_t e4m3_by_nvidia(float v) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

// Boundary values: every code's value and its fp32 neighbours, every midpoint between neighbouring codes and its
// neighbours, both signs, and the specials.
std::vector<float> e4m3_boundary_values() {
  std::vector<float> mags;
  for (int c = 0; c < 127; ++c) {
    const float a = e4m3_to_float(static_cast<uint8_t>(c));
    mags.insert(mags.end(), {a, std::nextafter(a, kInf), std::nextafter(a, 0.0f)});
    if (c < 126) {
      const float mid = (a + e4m3_to_float(static_cast<uint8_t>(c + 1))) * 0.5f;
      mags.insert(mags.end(), {mid, std::nextafter(mid, kInf), std::nextafter(mid, 0.0f)});
    }
  }
  mags.insert(mags.end(), {448.0f, 449.0f, 464.0f, 465.0f, 480.0f, 1e30f, FLT_MAX, kInf, 0x1p-10f, 0x1p-11f,
                           std::nextafter(0x1p-10f, kInf), std::nextafter(0x1p-10f, 0.0f), 0x1p-6f, 0x1p-7f,
                           std::numeric_limits<float>::denorm_min(), FLT_MIN, 1e-30f, 1e-40f, 0.0f});
  std::vector<float> out;
  for (float a : mags) out.insert(out.end(), {a, -a});
  out.insert(out.end(), {kNaN, -kNaN});
  return out;
}

// Random fp32 values: log-uniform magnitudes over [2^-20, 2^10) (the e4m3 range and a margin), random signs, plus
// raw random bit patterns (every class: NaN, inf, huge, fp32 subnormals).
std::vector<float> e4m3_random_values(uint64_t seed, size_t n) {
  std::vector<float> out;
  out.reserve(2 * n);
  uint64_t s = seed;
  auto next = [&] {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  for (size_t i = 0; i < n; ++i) {
    const uint64_t r = next();
    const int e = static_cast<int>(r % 30) - 20;
    const float m = 1.0f + static_cast<float>((r >> 8) & 0x7FFFFF) * 0x1p-23f;
    const float v = std::ldexp(m, e);
    out.push_back((r >> 40) & 1 ? -v : v);
    out.push_back(std::bit_cast<float>(static_cast<uint32_t>(next())));
  }
  return out;
}

// ---- bf16 ----------------------------------------------------------------------------------------------------

TEST(ReferenceBf16, RoundTripsEveryCode) {
  for (uint32_t c = 0; c < 0x10000; ++c) {
    const float f = bf16_to_float(static_cast<uint16_t>(c));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(f)))) << hex(c);
    } else {
      ASSERT_EQ(float_to_bf16(f), c) << hex(c);
    }
  }
}

TEST(ReferenceBf16, RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3F808000u)), 0x3F80);  // tie, even below
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3F818000u)), 0x3F82);  // tie, even above
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3F808001u)), 0x3F81);  // just above the tie
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3F807FFFu)), 0x3F80);  // just below the tie
  EXPECT_EQ(float_to_bf16(FLT_MAX), 0x7F80);                           // beyond the largest bf16 half-ulp: inf
  EXPECT_EQ(float_to_bf16(-kInf), 0xFF80);
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(kNaN))));
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x00008000u)), 0x0000);  // fp32 subnormal tie → even (zero)
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x00018000u)), 0x0002);
}

// Second method: pick the nearer of the two bf16 neighbours with exact double arithmetic.
TEST(ReferenceBf16, MatchesExactArithmeticOnRandomBits) {
  const std::vector<float> values = e4m3_random_values(11, 500000);
  for (float f : values) {
    if (std::isnan(f)) continue;
    const uint32_t u = std::bit_cast<uint32_t>(f);
    const uint32_t lo_code = u >> 16;  // truncation: the neighbour towards zero
    const double a = std::fabs(static_cast<double>(f));
    const double lo = std::fabs(static_cast<double>(bf16_to_float(static_cast<uint16_t>(lo_code))));
    const int biased = static_cast<int>((lo_code >> 7) & 0xFF);
    if (biased == 0xFF) {  // ±inf
      EXPECT_EQ(float_to_bf16(f), lo_code);
      continue;
    }
    const double ulp = std::ldexp(1.0, (biased == 0 ? 1 : biased) - 127 - 7);
    const double d_lo = a - lo, d_hi = lo + ulp - a;  // both exact in double
    const bool up = d_hi < d_lo || (d_hi == d_lo && (lo_code & 1));
    ASSERT_EQ(float_to_bf16(f), up ? lo_code + 1 : lo_code) << "bits " << hex(u);
  }
}

// ---- fp16 ----------------------------------------------------------------------------------------------------

TEST(ReferenceF16, RoundTripsEveryCode) {
  for (uint32_t c = 0; c < 0x10000; ++c) {
    const float f = f16_to_float(static_cast<uint16_t>(c));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(f)))) << hex(c);
    } else {
      ASSERT_EQ(float_to_f16(f), c) << hex(c);
    }
  }
}

TEST(ReferenceF16, RoundsToNearestEvenAndSaturatesToInf) {
  EXPECT_EQ(float_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_f16(std::nextafter(65520.0f, 0.0f)), 0x7BFF);
  EXPECT_EQ(float_to_f16(65520.0f), 0x7C00);  // tie between 65504 (odd) and 2^16: even = inf
  EXPECT_EQ(float_to_f16(-1e10f), 0xFC00);
  EXPECT_EQ(float_to_f16(0x1p-24f), 0x0001);
  EXPECT_EQ(float_to_f16(0x1p-25f), 0x0000);          // tie → even (zero)
  EXPECT_EQ(float_to_f16(-0x1p-25f), 0x8000);
  EXPECT_EQ(float_to_f16(3 * 0x1p-25f), 0x0002);      // tie → even
  EXPECT_EQ(float_to_f16(1.0f + 0x1p-11f), 0x3C00);   // tie → even
  EXPECT_EQ(float_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);
  EXPECT_EQ(float_to_f16(std::nextafter(0x1p-14f, 0.0f)), 0x0400);  // rounds up into the smallest normal
}

#ifdef __FLT16_MAX__
TEST(ReferenceF16, MatchesCompilerFloat16) {
  std::vector<float> values = e4m3_random_values(12, 500000);
  for (float f : {65504.0f, 65519.0f, 65520.0f, 0x1p-24f, 0x1p-25f, 3 * 0x1p-25f, 0x1p-14f}) {
    values.push_back(f);
    values.push_back(std::nextafter(f, kInf));
    values.push_back(std::nextafter(f, 0.0f));
  }
  for (float f : values) {
    if (std::isnan(f)) continue;
    const _Float16 h = static_cast<_Float16>(f);
    ASSERT_EQ(float_to_f16(f), std::bit_cast<uint16_t>(h)) << "bits " << hex(std::bit_cast<uint32_t>(f));
  }
}
#endif

// ---- e4m3 -----------------------------------------------------------------------------------------------------

TEST(ReferenceE4m3, DecodesKnownCodes) {
  EXPECT_EQ(e4m3_to_float(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(e4m3_to_float(0x80)));
  EXPECT_EQ(e4m3_to_float(0x01), 0x1p-9f);   // smallest subnormal
  EXPECT_EQ(e4m3_to_float(0x07), 7 * 0x1p-9f);
  EXPECT_EQ(e4m3_to_float(0x08), 0x1p-6f);   // smallest normal
  EXPECT_EQ(e4m3_to_float(0x38), 1.0f);
  EXPECT_EQ(e4m3_to_float(0x39), 1.125f);
  EXPECT_EQ(e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_float(0xFE), -448.0f);
  EXPECT_EQ(e4m3_to_float(0x77), 240.0f);    // exponent field 14, no inf in e4m3fn
  EXPECT_TRUE(std::isnan(e4m3_to_float(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3_to_float(0xFF)));
  int nans = 0;
  for (int c = 0; c < 256; ++c) nans += std::isnan(e4m3_to_float(static_cast<uint8_t>(c)));
  EXPECT_EQ(nans, 2);
}

TEST(ReferenceE4m3, RoundTripsEveryFiniteCode) {
  for (int c = 0; c < 256; ++c) {
    if (e4m3_is_nan(static_cast<uint8_t>(c))) continue;
    EXPECT_EQ(ref::e4m3_from_float(e4m3_to_float(static_cast<uint8_t>(c))), c) << hex(c);
  }
}

TEST(ReferenceE4m3, SaturatesKeepsNanAndSignOfZero) {
  EXPECT_EQ(ref::e4m3_from_float(448.0f), 0x7E);
  EXPECT_EQ(ref::e4m3_from_float(449.0f), 0x7E);
  EXPECT_EQ(ref::e4m3_from_float(464.0f), 0x7E);  // torch's cast gives NaN from here on; satfinite does not
  EXPECT_EQ(ref::e4m3_from_float(1e30f), 0x7E);
  EXPECT_EQ(ref::e4m3_from_float(kInf), 0x7E);
  EXPECT_EQ(ref::e4m3_from_float(-kInf), 0xFE);
  EXPECT_EQ(ref::e4m3_from_float(-500.0f), 0xFE);
  EXPECT_TRUE(e4m3_is_nan(ref::e4m3_from_float(kNaN)));
  EXPECT_TRUE(e4m3_is_nan(ref::e4m3_from_float(-kNaN)));
  EXPECT_EQ(ref::e4m3_from_float(0.0f), 0x00);
  EXPECT_EQ(ref::e4m3_from_float(-0.0f), 0x80);
  EXPECT_EQ(ref::e4m3_from_float(-1e-10f), 0x80);  // underflow keeps the sign
}

TEST(ReferenceE4m3, TiesGoToTheEvenCode) {
  EXPECT_EQ(ref::e4m3_from_float(1.0625f), 0x38);        // between 1.0 (0x38) and 1.125 (0x39)
  EXPECT_EQ(ref::e4m3_from_float(1.1875f), 0x3A);        // between 1.125 (0x39) and 1.25 (0x3A)
  EXPECT_EQ(ref::e4m3_from_float(432.0f), 0x7E);         // between 416 (0x7D) and 448 (0x7E)
  EXPECT_EQ(ref::e4m3_from_float(0x1p-10f), 0x00);       // between 0 and 2^-9
  EXPECT_EQ(ref::e4m3_from_float(3 * 0x1p-10f), 0x02);   // between 2^-9 (0x01) and 2·2^-9 (0x02)
  EXPECT_EQ(ref::e4m3_from_float(15 * 0x1p-10f), 0x08);  // between 7·2^-9 (0x07) and 2^-6 (0x08)
  EXPECT_EQ(ref::e4m3_from_float(-1.0625f), 0xB8);
}

TEST(ReferenceE4m3, MatchesBitLevelEncoder) {
  std::vector<float> values = e4m3_boundary_values();
  const std::vector<float> random = e4m3_random_values(13, 1000000);
  values.insert(values.end(), random.begin(), random.end());
  int64_t checked = 0;
  for (float v : values) {
    const uint8_t a = ref::e4m3_from_float(v), b = e4m3_by_bits(v);
    ASSERT_EQ(a, b) << "v=" << v << " bits " << hex(std::bit_cast<uint32_t>(v));
    ++checked;
  }
  EXPECT_GT(checked, 2000000);
}

// NVIDIA's host implementation of the conversion the kernels use (satfinite, round to nearest even).
TEST(ReferenceE4m3, MatchesNvidiaHostConversion) {
  std::vector<float> values = e4m3_boundary_values();
  const std::vector<float> random = e4m3_random_values(14, 1000000);
  values.insert(values.end(), random.begin(), random.end());
  for (float v : values) {
    const uint8_t a = ref::e4m3_from_float(v), b = e4m3_by_nvidia(v);
    if (e4m3_is_nan(a) || e4m3_is_nan(b)) {
      ASSERT_TRUE(e4m3_is_nan(a) && e4m3_is_nan(b)) << "v=" << v << " ref " << hex(a) << " nvidia " << hex(b);
    } else {
      ASSERT_EQ(a, b) << "v=" << v << " bits " << hex(std::bit_cast<uint32_t>(v));
    }
  }
}

// ---- division by a block scale without a division a value (templates/kiln/fp8.cuh's div_exact, e4m3x4_div) --------
// The device sequence repeated with host IEEE single operations (SSE arithmetic, std::fma; 1.0f / s1 is __frcp_rn's
// correctly rounded reciprocal): its result must be IEEE y / s bit for bit wherever |y / s| ≥ 2^-100 and must have the
// same e4m3 code everywhere, for every block scale s (normal ≥ 1e-30, or +inf) and every y of its block (|y| ≤ 448·s,
// or NaN). The quantizing kernels' GPU tests then check the device code itself against the reference's division.
struct HostScaleDiv {
  float m, s1, inv;
};
HostScaleDiv host_scale_div(float s) {
  const uint32_t b = std::bit_cast<uint32_t>(s);
  if (b >= 0x7f800000u) return {0.0f, 1.0f, 1.0f};
  const float s1 = std::bit_cast<float>((b & 0x007fffffu) | 0x3f800000u);
  return {std::bit_cast<float>(0x7f000000u - (b & 0x7f800000u)), s1, 1.0f / s1};
}
float host_div_scale(float y, const HostScaleDiv& d) {
  const float a = y * d.m;
  float q = a * d.inv;
  q = std::fma(-std::fma(d.s1, q, -a), d.inv, q);
  return std::fma(-std::fma(d.s1, q, -a), d.inv, q);
}
// fp8.cuh's scale_div / e4m3x4_div: the codes of y·lo and y·hi (reciprocals widened outwards); where they agree they
// must be the code of IEEE y / s. Returns whether they agreed (else the device redoes the values by div_exact).
struct HostBracket {
  float lo, hi;
};
// The device's r = rcp.approx(s) is not reproducible here; it is within 2^-22 of 1/s, so the narrowest bracket it can
// give — lo from the largest r, hi from the smallest — is the one checked (a wider one only disagrees more often).
HostBracket host_bracket(float s) {
  if (std::isinf(s)) return {0.0f, 0.0f};
  const double r = 1.0 / static_cast<double>(s);
  const float r_hi = static_cast<float>(r * (1 + 0x1p-22)), r_lo = static_cast<float>(r * (1 - 0x1p-22));
  return {r_hi * (1.0f - 0x1p-19f), r_lo * (1.0f + 0x1p-19f)};
}
// One (y, s) pair: div_exact's bits where the quotient is ≥ 2^-100 (NaN for NaN) and its e4m3 code always; the
// bracket's code where its two codes agree (*agreed). Returns false on a mismatch.
bool div_scale_matches(float y, float s, std::string* why, bool* agreed = nullptr) {
  const float want = y / s, got = host_div_scale(y, host_scale_div(s));
  const uint8_t cw = ref::e4m3_from_float(want), cg = ref::e4m3_from_float(got);
  const bool bits = std::isnan(want) ? std::isnan(got)
                                     : (std::fabs(want) < 0x1p-100f ||
                                        std::bit_cast<uint32_t>(want) == std::bit_cast<uint32_t>(got));
  const HostBracket br = host_bracket(s);
  const uint8_t cl = ref::e4m3_from_float(y * br.lo), ch = ref::e4m3_from_float(y * br.hi);
  if (agreed) *agreed = cl == ch;
  const bool bracket = cl != ch || cl == cw || (e4m3_is_nan(cl) && e4m3_is_nan(cw));
  if (bits && cw == cg && bracket) return true;
  char b[200];
  std::snprintf(b, sizeof b, "y %a s %a: y/s %a (e4m3 %02x), div_exact %a (%02x), bracket %02x / %02x", y, s, want, cw,
                got, cg, cl, ch);
  *why = b;
  return false;
}

TEST(ReferenceDivScale, EdgeCases) {
  std::string why;
  const float scales[] = {1e-30f, 0x1p-99f, 0x1.8p-90f, 1.0f, 1.5f, 0x1.fffffep0f, 3.0f, 1.0f / 448.0f,
                          0x1p100f, FLT_MAX / 448.0f, 0x1.fffffep118f, kInf};
  for (float s : scales) {
    std::vector<float> ys = {0.0f, -0.0f, kNaN, -kNaN, 0x1p-149f, -0x1p-149f, 0x1p-126f, -0x1.8p-140f};
    if (!std::isinf(s)) {
      for (float u : {448.0f, -448.0f, 1.0f, 0.5f, 0x1p-10f, 0x1p-9f, 3 * 0x1p-10f, 1.0625f, 432.0f, 1e-20f}) {
        const float y = u * s;  // rounded: both sides of the e4m3 ties
        ys.insert(ys.end(), {y, std::nextafter(y, 0.0f), std::nextafter(y, 2 * y), -y});
      }
    } else {
      ys.insert(ys.end(), {1.0f, -3.5f, FLT_MAX, -FLT_MAX, kInf, -kInf});
    }
    for (float y : ys) {
      if (std::isfinite(s) && (std::isinf(y) || std::fabs(y) > 448.0 * s * (1 + 0x1p-20))) continue;  // not of this block
      EXPECT_TRUE(div_scale_matches(y, s, &why)) << why;
    }
  }
  // zeros keep their sign through the corrections
  EXPECT_TRUE(std::signbit(host_div_scale(-0.0f, host_scale_div(3.0f))));
  EXPECT_FALSE(std::signbit(host_div_scale(0.0f, host_scale_div(3.0f))));
  EXPECT_TRUE(std::signbit(host_div_scale(-2.0f, host_scale_div(kInf))));
}

// Every mantissa of s (the sequence's result depends on the exponents only through the exact scaling by m), each at
// an exponent drawn from the block scales' range, with random y of the block: log-uniform magnitudes from 448·s down
// to 2^-40·s (where e4m3 codes are decided) and a few far below, both signs; and y on e4m3 ties (RN(m·s) and its
// neighbours). KILN_DIV_SCALE_ROUNDS (default 2) sets the random y a scale.
TEST(ReferenceDivScale, EveryScaleMantissaRandomValues) {
  const char* env = std::getenv("KILN_DIV_SCALE_ROUNDS");
  const int rounds = env ? std::atoi(env) : 2;
  std::mt19937_64 rng(20261127);
  std::uniform_real_distribution<double> lg(-40.0, std::log2(448.0));
  std::string why;
  int64_t checked = 0, failures = 0, redone = 0, random_checked = 0, ties = 0, ties_redone = 0, tie_values = 0;
  for (uint32_t mant = 0; mant < (1u << 23); ++mant) {
    const int e = static_cast<int>(rng() % 219) - 99;  // s in [2^-99, 2^120)
    const float s = std::bit_cast<float>((static_cast<uint32_t>(e + 127) << 23) | mant);
    if (s < 1e-30f || !(s <= FLT_MAX / 448.0f)) continue;
    for (int r = 0; r < rounds; ++r) {
      const double u = std::exp2(r == 0 && (mant & 7) == 0 ? lg(rng) - 60.0 : lg(rng));
      float y = static_cast<float>(u * static_cast<double>(s));
      if (std::fabs(y) > 448.0f * s) y = 448.0f * s;
      if (rng() & 1) y = -y;
      ++checked;
      bool agreed = true;
      if (!div_scale_matches(y, s, &why, &agreed) && failures++ < 5) ADD_FAILURE() << why;
      redone += !agreed;
    }
    // a tie of the e4m3 rounding: k/16 · 2^j for k odd (the midpoints between codes), scaled by s and rounded
    const int j = static_cast<int>(rng() % 17) - 10;
    const float t = static_cast<float>((2 * (rng() % 8) + 17)) / 16.0f * std::exp2f(static_cast<float>(j - 1));
    if (t <= 448.0f) {
      const float y = t * s;
      for (float v : {y, std::nextafter(y, 0.0f), std::nextafter(y, 2 * y)}) {
        ++checked;
        ++tie_values;
        bool agreed = true;
        if (!div_scale_matches(v, s, &why, &agreed) && failures++ < 5) ADD_FAILURE() << why;
        if (t >= 0x1p-6f) {  // (a tie of e4m3's normal range; below, t lies between e4m3's subnormal midpoints)
          ++ties;
          ties_redone += !agreed;
        }
      }
    }
  }
  random_checked = checked - tie_values;
  EXPECT_EQ(failures, 0);
  EXPECT_GT(checked, 20000000);
  // The bracket decides almost every random value alone (an e4m3 boundary within ≈ 2^-19 of y/s: ≈ 2^-14 of them;
  // more near the bottom of the range, where e4m3's steps are relatively coarse) and almost none on the ties.
  EXPECT_LT(static_cast<double>(redone), 1e-3 * static_cast<double>(random_checked))
      << redone << " of " << random_checked;
  EXPECT_GT(static_cast<double>(ties_redone), 0.9 * static_cast<double>(ties)) << ties_redone << " of " << ties;
}

// fp8.cuh's block_scale_fast<false>: amax / 448 by the same sequence (s = 448: m = 2^-8, s1 = 1.75, inv = RN(1/1.75)),
// floored at 1e-30, inf for inf — IEEE max(amax / 448, 1e-30) bit for bit for every non-negative float of a stride-7
// walk (≈ 3e8 values), every float within 2^12 ulps of the floor's boundary, 0 and inf.
TEST(ReferenceDivScale, BlockScaleWithoutDivision) {
  const HostScaleDiv d{0x1p-8f, 1.75f, 1.0f / 1.75f};
  ASSERT_EQ(std::bit_cast<uint32_t>(d.inv), 0x3f124925u);  // (fp8.cuh's literal 0x1.24924ap-1)
  auto fast = [&](float a) { return std::isinf(a) ? a : std::fmax(host_div_scale(a, d), 1e-30f); };
  auto ieee = [](float a) { return std::fmax(a / 448.0f, 1e-30f); };
  int64_t bad = 0;
  auto check = [&](uint32_t bits) {
    const float a = std::bit_cast<float>(bits);
    if (std::bit_cast<uint32_t>(fast(a)) != std::bit_cast<uint32_t>(ieee(a)) && bad++ < 5)
      ADD_FAILURE() << "amax " << std::hexfloat << a << ": " << fast(a) << " against " << ieee(a);
  };
  for (uint64_t b = 0; b <= 0x7f800000u; b += 7) check(static_cast<uint32_t>(b));
  const uint32_t edge = std::bit_cast<uint32_t>(448.0f * 1e-30f);
  for (uint32_t b = edge - 4096; b <= edge + 4096; ++b) check(b);
  check(0u);
  check(0x7f800000u);
  EXPECT_EQ(bad, 0);
}

// fp8.cuh's scale_bracket_of_max: the bracket of 1 / s (s = max(amax / 448, 1e-30)) from amax alone, r =
// rcp.approx(max(amax, RN(448·1e-30))·2^-8), lo / hi = RN(r·1.75·(1 ∓ 2^-19)). rcp.approx is within 1 ulp of the
// reciprocal, so both neighbours of the correctly rounded one are checked (lo from the larger, hi from the smaller):
// lo·(1 + 2^-24) < (1 / s)(1 − 2^-24) and hi·(1 − 2^-24) > (1 / s)(1 + 2^-24) in double (the condition fp8.cuh's
// argument needs), no wider than (1 / s)(1 ∓ 2^-18) (the redo stays rare), and the codes of y·lo and y·hi of a random
// y of the block, where they agree, are IEEE y / s's. Every amax mantissa at a random exponent, every float within
// 2^12 ulps of the floor's boundary and of FLT_MAX, 0, the smallest floats and inf.
TEST(ReferenceDivScale, BracketOfMax) {
  const float a0 = 448.0f * 1e-30f;
  const float c_lo = 1.75f * (1.0f - 0x1p-19f), c_hi = 1.75f * (1.0f + 0x1p-19f);
  ASSERT_EQ(static_cast<double>(c_lo), 1.75 * (1 - 0x1p-19));  // (exact constants)
  ASSERT_EQ(static_cast<double>(c_hi), 1.75 * (1 + 0x1p-19));
  std::mt19937_64 rng(20261128);
  std::uniform_real_distribution<double> lg(-40.0, std::log2(448.0));
  int64_t bad = 0, checked = 0;
  auto check = [&](float amax) {
    const float s = std::fmax(amax / 448.0f, 1e-30f);
    const float a = std::fmax(amax, a0) * 0x1p-8f;
    const float rn = 1.0f / a;
    const float r_big = std::nextafter(rn, kInf), r_small = std::nextafter(rn, 0.0f);
    const float lo = r_big * c_lo, hi = r_small * c_hi;
    ++checked;
    if (std::isinf(amax)) {  // (rcp.approx(inf) is +0 exactly: lo = hi = 0, as scale_div(inf))
      if ((rn * c_lo != 0.0f || rn * c_hi != 0.0f) && bad++ < 5) ADD_FAILURE() << "inf: " << rn;
      return;
    }
    const double inv = 1.0 / static_cast<double>(s);
    const bool sound = static_cast<double>(lo) * (1 + 0x1p-24) < inv * (1 - 0x1p-24) &&
                       static_cast<double>(hi) * (1 - 0x1p-24) > inv * (1 + 0x1p-24);
    const bool tight = static_cast<double>(std::nextafter(rn, 0.0f) * c_lo) > inv * (1 - 0x1p-18) &&
                       static_cast<double>(std::nextafter(rn, kInf) * c_hi) < inv * (1 + 0x1p-18);
    float y = static_cast<float>(std::exp2(lg(rng)) * static_cast<double>(s));
    if (std::fabs(y) > amax) y = amax;
    if (rng() & 1) y = -y;
    const uint8_t cl = ref::e4m3_from_float(y * lo), ch = ref::e4m3_from_float(y * hi);
    const bool codes = cl != ch || cl == ref::e4m3_from_float(y / s);
    if (!(sound && tight && codes) && bad++ < 5)
      ADD_FAILURE() << std::hexfloat << "amax " << amax << " s " << s << " lo " << lo << " hi " << hi << " y " << y
                    << (sound ? "" : " (not sound)") << (tight ? "" : " (too wide)") << (codes ? "" : " (codes)");
  };
  for (uint32_t mant = 0; mant < (1u << 23); ++mant) {
    const int e = static_cast<int>(rng() % 254) - 126;  // amax in [2^-126, 2^128)
    check(std::bit_cast<float>((static_cast<uint32_t>(e + 127) << 23) | mant));
  }
  for (uint32_t edge : {std::bit_cast<uint32_t>(a0), std::bit_cast<uint32_t>(FLT_MAX) - 4096})
    for (uint32_t b = edge - 4096; b <= edge + 4096; ++b) check(std::bit_cast<float>(b));
  for (float amax : {0.0f, 0x1p-149f, 0x1p-126f, 1e-35f, 448.0f, FLT_MAX, kInf}) check(amax);
  EXPECT_EQ(bad, 0);
  EXPECT_GT(checked, 8000000);
}

// ---- the scale rule --------------------------------------------------------------------------------------------

TEST(ReferenceBlockScale, ZeroBlockGetsTheFloor) {
  EXPECT_EQ(ref::block_scale(0.0f, false), 1e-30f);
  EXPECT_EQ(ref::block_scale(0.0f, true), std::ldexp(1.0f, -99));  // log2(1e-30) = −99.66 rounds up to −99
  EXPECT_EQ(ref::block_scale(1e-35f, false), 1e-30f);
  EXPECT_EQ(ref::block_scale(1e-35f, true), std::ldexp(1.0f, -99));
}

TEST(ReferenceBlockScale, ExactPowersOfTwo) {
  for (int k = -40; k <= 40; ++k) {
    const float p = std::ldexp(1.0f, k);
    const float amax = 448.0f * p;
    EXPECT_EQ(ref::block_scale(amax, false), p) << k;
    EXPECT_EQ(ref::block_scale(amax, true), p) << k;
    EXPECT_EQ(ref::block_scale(std::nextafter(amax, kInf), true), 2 * p) << k;
    EXPECT_EQ(ref::block_scale(std::nextafter(amax, 0.0f), true), p) << k;
  }
}

TEST(ReferenceBlockScale, RoundScaleIsTheSmallestPowerOfTwoNotBelow) {
  for (float amax : e4m3_random_values(15, 100000)) {
    amax = std::fabs(amax);
    if (!std::isfinite(amax)) continue;
    const float plain = ref::block_scale(amax, false);
    const float rounded = ref::block_scale(amax, true);
    int e = 0;
    ASSERT_EQ(std::frexp(rounded, &e), 0.5f) << amax;  // a power of two
    ASSERT_GE(rounded, plain) << amax;
    ASSERT_LT(rounded / 2, plain) << amax;
    // The fp32 division is correctly rounded (a double quotient of a/448 is never a float tie, so one more
    // rounding to float gives the same value).
    ASSERT_EQ(plain, std::max(static_cast<float>(static_cast<double>(amax) / 448.0), 1e-30f)) << amax;
  }
}

// ---- block quantization layouts --------------------------------------------------------------------------------

// The kernels' power-of-two scale from the bits of amax (no division) equals the rule's
// exp2(ceil(log2(max(amax/448, 1e-30)))) for every amax they can see (a max from 0 ignoring NaN: +0 … +inf): every
// 127th float, all around each 448·2^k and each power of two, the mantissa boundary 1.75, zero, subnormals, the
// largest float and inf.
// The same for the reciprocal the quantizers multiply by (rms_norm_block_quant_pow2_inv_bits_of_max: 1/s exactly, 0
// for s = inf) and the scale rebuilt from it (0x7F000000 − its bits, inf for 0).
TEST(ReferenceBlockQuant, Pow2ScaleBitsWithoutDivision) {
  auto check = [](uint32_t bits) {
    const float amax = std::bit_cast<float>(bits);
    const uint32_t got = kiln::rms_norm_block_quant_pow2_scale_bits_of_max(bits);
    const float scale = ref::block_scale(amax, true);
    const uint32_t want = std::bit_cast<uint32_t>(scale);
    if (got != want) {
      ADD_FAILURE() << "amax " << amax << " (0x" << std::hex << bits << "): got 0x" << got << ", want 0x" << want;
      return false;
    }
    const uint32_t inv = kiln::rms_norm_block_quant_pow2_inv_bits_of_max(bits);
    const uint32_t want_inv = std::isinf(scale) ? 0u : std::bit_cast<uint32_t>(1.0f / scale);
    const uint32_t rebuilt = inv != 0u ? 0x7f000000u - inv : 0x7f800000u;
    if (inv != want_inv || rebuilt != want) {
      ADD_FAILURE() << "amax " << amax << " (0x" << std::hex << bits << "): reciprocal 0x" << inv << ", want 0x"
                    << want_inv << "; scale from it 0x" << rebuilt << ", want 0x" << want;
      return false;
    }
    return true;
  };
  size_t n = 0;
  for (uint64_t b = 0; b <= 0x7f800000u; b += 127) {
    if (!check(static_cast<uint32_t>(b))) return;
    ++n;
  }
  for (int k = -160; k <= 130; ++k)
    for (const float base : {448.0f, 1.0f, 1.75f}) {
      const float v = std::ldexp(base, k);
      if (!(v < std::numeric_limits<float>::infinity()) || v == 0.0f) continue;
      const uint32_t vb = std::bit_cast<uint32_t>(v);
      for (int64_t d = -3; d <= 3; ++d) {
        const int64_t b = static_cast<int64_t>(vb) + d;
        if (b < 0 || b > 0x7f800000) continue;
        if (!check(static_cast<uint32_t>(b))) return;
        ++n;
      }
    }
  for (uint32_t b : {0u, 1u, 0x007fffffu, 0x00800000u, 0x7f7fffffu, 0x7f800000u, 0x43e00000u, 0x43dfffffu, 0x43e00001u})
    if (!check(b)) return;
  EXPECT_GT(n, 16000000u);
}

TEST(ReferenceBlockQuant, RowwiseScaleLayoutIsMMajor) {
  const int64_t M = 3, N = 384;
  std::vector<float> y(M * N, 0.25f);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = 0; j < N / 128; ++j) y[m * N + j * 128 + 5] = 448.0f * static_cast<float>((m + 1) * (j + 1));
  }
  std::vector<uint8_t> q(M * N);
  std::vector<float> s(N / 128 * M);
  ref::block_quant_rowwise(y, M, N, false, q, s);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = 0; j < N / 128; ++j) {
      EXPECT_EQ(s[j * M + m], static_cast<float>((m + 1) * (j + 1))) << m << "," << j;
      EXPECT_EQ(q[m * N + j * 128 + 5], 0x7E);
      EXPECT_EQ(q[m * N + j * 128 + 6], ref::e4m3_from_float(0.25f / s[j * M + m]));
    }
  }
}

TEST(ReferenceBlockQuant, NanIsIgnoredByTheAmaxAndQuantizesToNan) {
  const int64_t M = 2, N = 128;
  std::vector<float> y(M * N, kNaN);  // row 1 is all NaN
  for (int64_t k = 0; k < N; ++k) y[k] = static_cast<float>(k) - 64.0f;
  y[10] = kNaN;
  for (bool rs : {false, true}) {
    std::vector<uint8_t> q(M * N);
    std::vector<float> s(M);
    ref::block_quant_rowwise(y, M, N, rs, q, s);
    EXPECT_EQ(s[0], ref::block_scale(64.0f, rs));
    EXPECT_TRUE(e4m3_is_nan(q[10]));
    EXPECT_EQ(s[1], ref::block_scale(0.0f, rs));  // all-NaN block: amax 0
    for (int64_t k = 0; k < N; ++k) EXPECT_TRUE(e4m3_is_nan(q[N + k]));
  }
}

// The transposed layout equals the row-wise quantization of yᵀ zero-padded to whole token blocks (a partial block
// uses its valid rows only, and zero padding cannot raise an amax).
TEST(ReferenceBlockQuant, TransposedEqualsRowwiseOfPaddedTranspose) {
  const int64_t M = 300, N = 256, Mp = 384;
  std::vector<float> y = randn(M * N, 21, 3.0f);
  for (int64_t m = 0; m < M; ++m) y[m * N + (m % N)] *= 100.0f;  // vary the block maxima
  for (bool rs : {false, true}) {
    std::vector<uint8_t> qT(M * N);
    std::vector<float> sT(3 * N);
    ref::block_quant_transposed(y, M, N, rs, qT, sT);
    std::vector<float> yt(N * Mp, 0.0f);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) yt[n * Mp + m] = y[m * N + n];
    }
    std::vector<uint8_t> q(N * Mp);
    std::vector<float> s(Mp / 128 * N);
    ref::block_quant_rowwise(yt, N, Mp, rs, q, s);
    EXPECT_EQ(sT, s);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t m = 0; m < M; ++m) ASSERT_EQ(qT[n * M + m], q[n * Mp + m]) << n << "," << m;
    }
  }
}

TEST(ReferenceBlockQuant, DequantizesClose) {
  const int64_t M = 64, N = 512;
  std::vector<float> y = randn(M * N, 22);
  for (int64_t i = 0; i < M * N; i += 97) y[i] *= 1e4f;
  for (bool rs : {false, true}) {
    std::vector<uint8_t> q(M * N);
    std::vector<float> s(N / 128 * M);
    ref::block_quant_rowwise(y, M, N, rs, q, s);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t k = 0; k < N; ++k) {
        const float sc = s[(k / 128) * M + m];
        const float back = e4m3_to_float(q[m * N + k]) * sc;
        // Half an ulp of a 3-bit mantissa (2^-4 relative), or half the subnormal step 2^-9·s.
        ASSERT_LE(std::fabs(back - y[m * N + k]), std::fabs(y[m * N + k]) * 0x1p-4f + sc * 0x1p-10f)
            << m << "," << k << " rs=" << rs;
      }
    }
  }
}

// ---- RMSNorm ------------------------------------------------------------------------------------------------

TEST(ReferenceRmsNorm, RmsInvKnownRows) {
  const int64_t N = 128;
  std::vector<float> x(5 * N, 3.0f);
  for (int64_t k = 0; k < N; ++k) x[N + k] = 0.0f;
  x[2 * N + 7] = kInf;
  x[3 * N + 9] = kNaN;
  for (int64_t k = 0; k < N; ++k) x[4 * N + k] = 1e30f;  // fine in double, would overflow an fp32 sum
  const std::vector<float> r = ref::rms_inv(x, 5, N, 1e-6f);
  EXPECT_EQ(r[0], static_cast<float>(1.0 / std::sqrt(9.0 + static_cast<double>(1e-6f))));
  EXPECT_EQ(r[1], static_cast<float>(1.0 / std::sqrt(static_cast<double>(1e-6f))));
  EXPECT_EQ(r[2], 0.0f);
  EXPECT_TRUE(std::isnan(r[3]));
  EXPECT_FLOAT_EQ(r[4], 1e-30f);
}

TEST(ReferenceRmsNorm, ApplyRoundsAfterEachMultiply) {
  // x·r = 1 + 2^-11 + 2^-24 is a tie and rounds (to even) to 1 + 2^-11 before the weight multiply, so
  // y = (1 + 2^-11)(1 − 2^-24) → 1 + 2^-11 − 2^-23. One rounding of the whole product, 1 + 2^-11 − 2^-35 − 2^-48,
  // would give 1 + 2^-11 instead.
  const std::vector<float> x = {1.0f + 0x1p-12f}, r = {1.0f + 0x1p-12f}, w = {1.0f - 0x1p-24f};
  const std::vector<float> y = ref::rms_norm_apply(x, w, r, 1, 1);
  EXPECT_EQ(x[0] * r[0], 1.0f + 0x1p-11f);
  EXPECT_EQ(y[0], 1.0f + 0x1p-11f - 0x1p-23f);
  EXPECT_EQ(static_cast<float>(static_cast<double>(x[0]) * r[0] * w[0]), 1.0f + 0x1p-11f);
}

// The backward reference against central differences of a double forward, L = Σ dy·y.
TEST(ReferenceRmsNorm, BackwardMatchesFiniteDifferences) {
  const int64_t M = 3, N = 16;
  const float eps = 1e-3f;
  const std::vector<float> x = randn(M * N, 31), dy = randn(M * N, 32), w = randn(N, 33, 0.5f, 1.0f);
  auto loss = [&](const std::vector<double>& xd, const std::vector<double>& wd) {
    double L = 0;
    for (int64_t m = 0; m < M; ++m) {
      double ss = 0;
      for (int64_t k = 0; k < N; ++k) ss += xd[m * N + k] * xd[m * N + k];
      const double r = 1.0 / std::sqrt(ss / N + static_cast<double>(eps));
      for (int64_t k = 0; k < N; ++k) L += dy[m * N + k] * xd[m * N + k] * r * wd[k];
    }
    return L;
  };
  const std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end());
  const ref::RmsNormGrads g = ref::rms_norm_bwd(dy, x, w, M, N, eps);
  const double h = 1e-6;
  for (int64_t i = 0; i < M * N; ++i) {
    auto xp = xd, xm = xd;
    xp[i] += h;
    xm[i] -= h;
    EXPECT_NEAR(g.dx[i], (loss(xp, wd) - loss(xm, wd)) / (2 * h), 1e-6) << i;
  }
  for (int64_t k = 0; k < N; ++k) {
    auto wp = wd, wm = wd;
    wp[k] += h;
    wm[k] -= h;
    EXPECT_NEAR(g.dweight[k], (loss(xd, wp) - loss(xd, wm)) / (2 * h), 1e-6) << k;
  }
}

// ---- test utilities ------------------------------------------------------------------------------------------

TEST(ReferenceTestUtil, RandnIsDeterministicAndStandardNormal) {
  const std::vector<float> a = randn(1 << 20, 41), b = randn(1 << 20, 41), c = randn(1 << 20, 42);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  double sum = 0, sq = 0;
  for (float v : a) {
    sum += v;
    sq += static_cast<double>(v) * v;
  }
  const double mean = sum / a.size();
  EXPECT_LT(std::fabs(mean), 0.01);
  EXPECT_LT(std::fabs(sq / a.size() - mean * mean - 1.0), 0.01);
  EXPECT_NE(mix_seed({1, 2}), mix_seed({2, 1}));
}

TEST(ReferenceTestUtil, MessageNamesMatchesWholeWords) {
  EXPECT_TRUE(message_names("rms_norm_block_quant_fwd: argument 'x': expected bf16", "x"));
  EXPECT_FALSE(message_names("expected dtype bf16", "x"));
  EXPECT_FALSE(message_names("argument 'q_scale': bad shape", "q"));
  EXPECT_TRUE(message_names("argument 'q_scale': bad shape", "q_scale"));
  EXPECT_FALSE(message_names("argument 'rms_inv_in' missing", "rms_inv"));
  EXPECT_TRUE(message_names("eps must be >= 0", "eps"));
}

TEST(ReferenceTestUtil, RelativeL2) {
  const std::vector<float> got = {1.0f, 2.0f};
  EXPECT_DOUBLE_EQ(relative_l2(got, std::vector<double>{1.0, 2.0}), 0.0);
  EXPECT_NEAR(relative_l2(got, std::vector<double>{1.0, 2.5}), 0.5 / std::sqrt(7.25), 1e-12);
  EXPECT_EQ(relative_l2(std::vector<float>{0.0f}, std::vector<double>{0.0}), 0.0);
  EXPECT_TRUE(std::isinf(relative_l2(std::vector<float>{1.0f}, std::vector<double>{0.0})));
  EXPECT_TRUE(std::isnan(relative_l2(std::vector<float>{kNaN}, std::vector<double>{1.0})));
}

}  // namespace
}  // namespace kiln::test
