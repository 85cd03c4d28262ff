// tests/fp4_quant_test.cpp — CPU tests of the FP4 MoE's block-scaled quantizers: the reference's rules on hand-worked
// values (E2M1 ties, saturation, the NVFP4 scale, the MX ceil rule), the family, NVRTC compiles, every argument error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <vector>

#include "compile_util.hpp"
#include "kiln/fp4_rules.h"
#include "kiln/kiln.hpp"
#include "reference/fp4_quant.hpp"
#include "runtime/family.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Nearest of 0, .5, 1, 1.5, 2, 3, 4, 6 with ties to the even code (0.25 → 0, 0.75 → 1.0, 1.25 → 1.0, 1.75 → 2,
// 2.5 → 2, 3.5 → 4, 5 → 4), saturating; sign in bit 3.
TEST(Fp4QuantReference, E2m1RoundsToNearestEvenAndSaturates) {
  const std::vector<std::pair<float, int>> cases = {
      {0.0f, 0},  {0.25f, 0}, {0.2501f, 1}, {0.5f, 1},  {0.75f, 2},  {0.7499f, 1}, {1.0f, 2}, {1.25f, 2},
      {1.2501f, 3}, {1.5f, 3}, {1.75f, 4}, {2.0f, 4},  {2.5f, 4},   {2.5001f, 5}, {3.0f, 5}, {3.5f, 6},
      {4.0f, 6},  {5.0f, 6},  {5.0001f, 7}, {6.0f, 7}, {1e30f, 7}, {kInf, 7}};
  for (const auto& [v, code] : cases) {
    EXPECT_EQ(ref::e2m1_from_float(v), code) << v;
    EXPECT_EQ(ref::e2m1_from_float(-v), code | 8) << -v;
  }
  EXPECT_EQ(ref::e2m1_from_float(kNaN), 0);
  EXPECT_EQ(ref::e2m1_from_float(-0.1f), 8);  // −0
  for (int c = 0; c < 16; ++c) EXPECT_EQ(ref::e2m1_from_float(ref::e2m1_value(static_cast<uint8_t>(c))), c) << c;
}

TEST(Fp4QuantReference, E4m3ValuesAndTheMxExponent) {
  EXPECT_EQ(ref::e4m3_value(0x7E), 448.0f);
  EXPECT_EQ(ref::e4m3_value(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(ref::e4m3_value(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(ref::e4m3_value(0xB8), -1.0f);
  EXPECT_TRUE(std::isnan(ref::e4m3_value(0x7F)));
  // The smallest e with 6·2^e ≥ amax: 6 → 0, 6.0001 → 1, 3 → −1, 1.5 → −2, 1.5001 → −1.
  EXPECT_EQ(ref::mx_exponent(6.0f, 6.0), 0);
  EXPECT_EQ(ref::mx_exponent(6.0001f, 6.0), 1);
  EXPECT_EQ(ref::mx_exponent(3.0f, 6.0), -1);
  EXPECT_EQ(ref::mx_exponent(1.5f, 6.0), -2);
  EXPECT_EQ(ref::mx_exponent(1.5001f, 6.0), -1);
  EXPECT_EQ(ref::mx_exponent(448.0f, 448.0), 0);
  EXPECT_EQ(ref::mx_exponent(449.0f, 448.0), 1);
}

// NVFP4 on one hand-worked block: G = 1, amax 6 → SF = e4m3(1) = 0x38, codes x itself; a block of zeros → SF 0,
// codes 0; NaN → +0, ±inf → ±6 and not in amax.
TEST(Fp4QuantReference, Nvfp4HandWorked) {
  std::vector<float> x = {6, -6, 0.5f, 1.25f, 3.5f, -0.2f, 2.5f, 0, 1, 1.5f, 2, 3, 4, -4, kNaN, -kInf};
  x.resize(32, 0.0f);  // the second block: zeros
  const ref::BlockQuant r = ref::quantize_nvfp4(x, 32, 1.0f);
  ASSERT_EQ(r.sf.size(), 2u);
  EXPECT_EQ(r.sf[0], 0x38);  // e4m3(1.0): (G·6) / 6
  EXPECT_EQ(r.sf[1], 0x00);
  const int want[16] = {7, 15, 1, 2, 6, 8, 4, 0, 2, 3, 4, 5, 6, 14, 0, 15};
  for (int i = 0; i < 16; ++i) EXPECT_EQ((r.q[i / 2] >> (4 * (i % 2))) & 15, want[i]) << i;
  for (int i = 8; i < 16; ++i) EXPECT_EQ(r.q[i], 0) << i;
  // G scales the block: G = 2 → SF = e4m3(2) = 0x40, the same codes.
  const ref::BlockQuant r2 = ref::quantize_nvfp4(x, 32, 2.0f);
  EXPECT_EQ(r2.sf[0], 0x40);
  EXPECT_EQ(std::vector<uint8_t>(r2.q.begin(), r2.q.begin() + 8), std::vector<uint8_t>(r.q.begin(), r.q.begin() + 8));
}

// MX: amax 12 → e = 1 (6·2 ≥ 12), byte 128, x / 2; amax 0 → byte 0; MXFP8 amax 448·4 → e = 2.
TEST(Fp4QuantReference, MxHandWorked) {
  std::vector<float> x(64, 0.0f);
  x[0] = 12.0f;
  x[1] = -1.0f;
  x[2] = 5.0f;  // 2.5 → 2 (tie to even)
  const ref::BlockQuant r = ref::quantize_mxfp4(x, 64);
  EXPECT_EQ(r.sf[0], 128);
  EXPECT_EQ(r.sf[1], 0);
  EXPECT_EQ(r.q[0], 7 | (9 << 4));  // 6, −0.5
  EXPECT_EQ(r.q[1] & 15, 4);
  std::vector<float> y(32, 1.0f);
  y[5] = 1792.0f;
  const ref::BlockQuant r8 = ref::quantize_mxfp8(y, 32);
  EXPECT_EQ(r8.sf[0], 129);
  EXPECT_EQ(r8.q[5], 0x7E);           // 448
  EXPECT_EQ(r8.q[0], 0x28);           // 0.25 = 2^-2: exponent field 5
}

// The kernel's E2M1 rounding from the fp32 bits (kiln/fp4_rules.h, the same function on the host) equals the
// reference's bracketing for EVERY fp32 y in [0, 8] (1.09 G values), at +inf and NaN, and at a stride above 8.
TEST(Fp4QuantRules, E2m1FromTheBitsEqualsTheReference) {
  uint64_t bad = 0;
  uint32_t first = 0;
  auto check = [&](uint32_t u) {
    float y;
    std::memcpy(&y, &u, 4);
    if (f4r::e2m1_mag_bits(y) != (ref::e2m1_from_float(y) & 7u) && bad++ == 0) first = u;
  };
  for (uint32_t u = 0; u <= 0x41000000u; ++u) check(u);
  for (uint32_t u = 0x41000000u; u < 0x7f800000u; u += 4093) check(u);
  check(0x7f800000u);
  EXPECT_EQ(f4r::e2m1_mag_bits(kNaN), 0u);
  EXPECT_EQ(bad, 0u) << "first at bits 0x" << std::hex << first;
}

// The packed bf16 rule (two codes an operation, used by the bf16 MXFP4 kernel on blocks without inf / NaN) equals
// the reference's code, sign included, for every finite bf16 value in either half of the pair.
TEST(Fp4QuantRules, PackedBf16CodesEqualTheReference) {
  uint64_t bad = 0;
  uint32_t first = 0;
  const uint32_t other[3] = {0x0000u, 0xbfc0u, 0x40a1u};  // 0, −1.5, 5.03 in the other half
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    if ((b & 0x7f80u) == 0x7f80u) continue;  // inf / NaN: the general path's
    float y;
    const uint32_t u = b << 16;
    std::memcpy(&y, &u, 4);
    const unsigned want = ref::e2m1_from_float(y);
    for (uint32_t o : other) {
      float yo;
      const uint32_t uo = o << 16;
      std::memcpy(&yo, &uo, 4);
      const unsigned wo = ref::e2m1_from_float(yo);
      const unsigned lo = f4r::e2m1x2_bf16(b | (o << 16)), hi = f4r::e2m1x2_bf16(o | (b << 16));
      if ((lo != (want | (wo << 4)) || hi != (wo | (want << 4))) && bad++ == 0) first = b;
    }
  }
  EXPECT_EQ(bad, 0u) << "first at bf16 bits 0x" << std::hex << first;
}

// The NVFP4 code from per-block thresholds equals the code of the IEEE quotient fl(a / sf), for every E4M3 scale
// (the 126 positive values), at and around (±256 ulps) every threshold, and at 20 000 random a per scale.
TEST(Fp4QuantRules, Nvfp4ThresholdsGiveTheQuotientsCode) {
  uint64_t bad = 0, checked = 0;
  std::string first;
  uint64_t s = 12345;
  for (int code = 1; code <= 0x7E; ++code) {
    const float sf = ref::e4m3_value(static_cast<uint8_t>(code));
    const f4r::Nvfp4Thresholds t = f4r::nvfp4_thresholds(sf);
    auto check = [&](float a) {
      volatile float q = a / sf;
      const unsigned want = ref::e2m1_from_float(q), got = f4r::nvfp4_code(a, t);
      ++checked;
      if (want != got && bad++ == 0) first = "sf " + std::to_string(sf) + " a " + std::to_string(a);
    };
    for (int i = 0; i < 7; ++i) {
      uint32_t c;
      std::memcpy(&c, &t.t[i], 4);
      for (int d = -256; d <= 256; ++d) {
        const uint32_t u = c + static_cast<uint32_t>(d);
        float a;
        std::memcpy(&a, &u, 4);
        check(a);
        check(-a);
      }
    }
    for (int k = 0; k < 20000; ++k) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      const float a = std::ldexp(static_cast<float>((s >> 40) & 0xffffff) / 16777216.0f, static_cast<int>((s >> 20) % 40) - 30);
      check(a);
    }
  }
  EXPECT_EQ(bad, 0u) << first << " (" << checked << " checked)";
}

const detail::FamilyDef& family() { return registered_family("fp4_quant"); }

TEST(Fp4QuantFamily, EnumerationSearchSpaceAndCompiles) {
  std::vector<detail::Specialization> specs;
  family().enumerate(load_model("ling-mini-2.0"), detail::Arch::parse("sm_90a"), specs);
  ASSERT_EQ(specs.size(), 3u);  // bf16 × NVFP4, MXFP4, MXFP8
  std::set<std::string> keys;
  std::vector<detail::Specialization> all;
  for (const auto& s : specs) {
    EXPECT_TRUE(keys.insert(s.key().hex()).second) << s.describe();
    const auto space = checked_search_space(s);
    ASSERT_EQ(space.size(), 3u);
    EXPECT_EQ(space.front().config, s.config);
    all.insert(all.end(), space.begin(), space.end());
  }
  for (DType t : {DType::f32, DType::f16})
    for (int64_t f : {0, 1, 2}) {
      detail::Specialization s = specs[0];
      s.params = {static_cast<int64_t>(t), f};
      all.push_back(s);
    }
  expect_compiles(all);
}

class Fp4QuantErrors : public ::testing::Test {
 protected:
  Runtime rt{RuntimeOptions{.arch = "sm_90a", .memory_only = true}};
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {100, 256});
  TensorRef q = TensorRef::contiguous(fake(1), DType::u8, {100, 128});
  TensorRef q8 = TensorRef::contiguous(fake(1), DType::e4m3, {100, 256});
  TensorRef sf16 = TensorRef::contiguous(fake(2), DType::e4m3, {100, 16});
  TensorRef sf32 = TensorRef::contiguous(fake(2), DType::u8, {100, 8});
  TensorRef g = TensorRef::contiguous(fake(3), DType::f32, {1});
};

TEST_F(Fp4QuantErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(quantize_nvfp4(rt, x, g, q, sf16, nullptr));
  EXPECT_REACHES_DEVICE(quantize_mxfp4(rt, x, q, sf32, nullptr));
  EXPECT_REACHES_DEVICE(quantize_mxfp8(rt, x, q8, sf32, nullptr));
}

TEST_F(Fp4QuantErrors, ShapesDtypesAndScales) {
  EXPECT_THROW_NAMING(quantize_nvfp4(rt, x, g, q, sf32, nullptr), "sf", ShapeMismatchError);
  EXPECT_THROW_NAMING(quantize_mxfp4(rt, x, q8, sf32, nullptr), "q", UnsupportedDtypeError);  // packed fp4: uint8
  const TensorRef qwide = TensorRef::contiguous(fake(1), DType::u8, {100, 256});
  EXPECT_THROW_NAMING(quantize_mxfp4(rt, x, qwide, sf32, nullptr), "q", ShapeMismatchError);
  EXPECT_THROW_NAMING(quantize_mxfp8(rt, x, q, sf32, nullptr), "q", ShapeMismatchError);
  TensorRef bad = x;
  bad.dtype = DType::i32;
  EXPECT_THROW_NAMING(quantize_mxfp4(rt, bad, q, sf32, nullptr), "x", UnsupportedDtypeError);
  const TensorRef x24 = TensorRef::contiguous(fake(0), DType::bf16, {100, 24});  // not a multiple of 16
  EXPECT_THROW_NAMING(quantize_nvfp4(rt, x24, g, q, sf16, nullptr), "x", ShapeMismatchError);
  const TensorRef x48 = TensorRef::contiguous(fake(0), DType::bf16, {100, 48});  // 16 | 48 but not 32
  EXPECT_THROW_NAMING(quantize_mxfp8(rt, x48, q8, sf32, nullptr), "x", ShapeMismatchError);
  const TensorRef g2 = TensorRef::contiguous(fake(3), DType::f32, {2});
  EXPECT_THROW_NAMING(quantize_nvfp4(rt, x, g2, q, sf16, nullptr), "global_scale", ShapeMismatchError);
  const TensorRef gb = TensorRef::contiguous(fake(3), DType::bf16, {1});
  EXPECT_THROW_NAMING(quantize_nvfp4(rt, x, gb, q, sf16, nullptr), "global_scale", UnsupportedDtypeError);
  const TensorRef xm = TensorRef::contiguous(static_cast<char*>(fake(0)) + 2, DType::bf16, {100, 256});
  EXPECT_THROW_NAMING(quantize_mxfp4(rt, xm, q, sf32, nullptr), "x", InvalidArgument);
  TensorRef xs = x;
  xs.strides[0] = 512;  // padded rows: not contiguous
  EXPECT_THROW_NAMING(quantize_mxfp4(rt, xs, q, sf32, nullptr), "x", ShapeMismatchError);
}

}  // namespace
}  // namespace kiln::test
