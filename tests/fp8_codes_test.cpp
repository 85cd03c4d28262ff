// tests/fp8_codes_test.cpp — CPU tests of the uint8 "FP8 compatibility format" (quantize_fp8 / dequantize_fp8): the
// reference's rule, the family (specializations, search space, NVRTC compiles), and every argument error (fake
// pointers, never dereferenced).
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <vector>

#include "compile_util.hpp"
#include "kiln/kiln.hpp"
#include "reference/fp8_codes.hpp"
#include "runtime/family.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The spec's rule on hand-worked values: s = 448 / max|x|; max|x| ↦ 255, −max|x| ↦ 1, 0 ↦ 128; the step is
// max|x| / 127; ties go to even (v = 0.5 ↦ 0, 1.5 ↦ 2, −0.5 ↦ −0, −1.5 ↦ −2).
TEST(Fp8CodesReference, TheSpecsRule) {
  const std::vector<float> x = {-2.0f, 0.5f, 1.0f, 2.0f};
  const float s = ref::fp8_scale(x);
  EXPECT_EQ(s, 224.0f);
  EXPECT_EQ(ref::fp8_encode(2.0f, s), 255);
  EXPECT_EQ(ref::fp8_encode(-2.0f, s), 1);
  EXPECT_EQ(ref::fp8_encode(0.0f, s), 128);
  EXPECT_EQ(ref::fp8_encode(-0.0f, s), 128);
  EXPECT_EQ(ref::fp8_encode(1.0f, s), 128 + 64);  // 224 / 448 · 127 = 63.5 → 64 (even)
  // With s = 448 (max|x| = 1) the code of x is rint(127·x) + 128: 0.5/127 and 1.5/127 fall on ties when exact.
  EXPECT_EQ(ref::fp8_encode(0.5f, 448.0f), 128 + 64);    // 63.5 → 64
  EXPECT_EQ(ref::fp8_encode(-0.5f, 448.0f), 128 - 64);   // −63.5 → −64
  EXPECT_EQ(ref::fp8_encode(0.25f, 448.0f), 128 + 32);   // 31.75 → 32
  // Clamp: beyond ±448 after the multiply (values larger than the max the scale came from).
  EXPECT_EQ(ref::fp8_encode(3.0f, s), 255);
  EXPECT_EQ(ref::fp8_encode(-1e30f, s), 1);
  // Decode: (q − 128) · (448/127) / s.
  EXPECT_EQ(ref::fp8_decode(255, s), 127.0f * (448.0f / 127.0f) / 224.0f);
  EXPECT_EQ(ref::fp8_decode(128, s), 0.0f);
  EXPECT_EQ(ref::fp8_decode(1, 448.0f), -1.0f);
}

// kiln's rules where triton_ops has none: NaN ↦ 128 and ±inf ↦ 255 / 1, neither entering max|x|; max|x| = 0 (or no
// finite value) ↦ s = 1; s capped at FLT_MAX where 448 / max|x| overflows fp32, so zeros stay 128 (0 · ∞ would be NaN).
TEST(Fp8CodesReference, NonFiniteZerosAndTinyMaxima) {
  const std::vector<float> x = {kNaN, kInf, -kInf, 4.0f};
  const float s = ref::fp8_scale(x);
  EXPECT_EQ(s, 112.0f);
  EXPECT_EQ(ref::fp8_encode(kNaN, s), 128);
  EXPECT_EQ(ref::fp8_encode(kInf, s), 255);
  EXPECT_EQ(ref::fp8_encode(-kInf, s), 1);
  EXPECT_EQ(ref::fp8_scale(std::vector<float>{0.0f, -0.0f}), 1.0f);
  EXPECT_EQ(ref::fp8_scale(std::vector<float>{}), 1.0f);
  EXPECT_EQ(ref::fp8_scale(std::vector<float>{kNaN, kInf}), 1.0f);
  const float tiny = std::numeric_limits<float>::denorm_min();
  const float st = ref::fp8_scale(std::vector<float>{tiny, 0.0f});
  EXPECT_EQ(st, FLT_MAX);
  EXPECT_EQ(ref::fp8_encode(0.0f, st), 128);
  // The price of the cap: tiny · FLT_MAX ≈ 4.8e−7, 1.4e−7 of a step: code 128. Values below ≈ 448 / FLT_MAX / 254
  // (5e−39) encode as zero instead of ±127 steps — an fp32 scale cannot express their multiplier.
  EXPECT_EQ(ref::fp8_encode(tiny, st), 128);
  EXPECT_EQ(ref::fp8_encode(1e-30f, st), 255);
}

// The encode multiplier is 448 / max|x| divided in fp64 and rounded once to fp32 (not an fp32 division).
TEST(Fp8CodesReference, ScaleIsOneRoundingOfTheFp64Quotient) {
  for (float m : {3.0f, 7.0f, 0.1f, 1e-20f, 3e38f, 123.456f}) {
    const std::vector<float> x = {m, -m / 2};
    EXPECT_EQ(ref::fp8_scale(x), static_cast<float>(448.0 / static_cast<double>(m))) << m;
  }
}

// Every code decodes to within half a step of the value it came from, for values inside ±max|x|.
TEST(Fp8CodesReference, RoundTripWithinHalfAStep) {
  const std::vector<float> x = randn(20000, 7, 3.0f);
  const float s = ref::fp8_scale(x);
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  const double step = static_cast<double>(amax) / 127.0;
  for (float v : x) {
    const double back = ref::fp8_decode(ref::fp8_encode(v, s), s);
    ASSERT_LE(std::fabs(back - v), 0.5 * step * (1 + 1e-5)) << v;
  }
}

// The kernel's encode (templates/kiln/fp8_codes.cuh) forms t / 448 without a division: q0 = t·fp32(1/448), then
// q0 + fma(−q0, 448, t)·fp32(1/448). That is not always the correctly rounded quotient, so this checks, for EVERY fp32
// t in [0, 448] (the clamp's range; the rule is odd in t: −t gives the mirrored code), that the code it leads to —
// rint(q·127) — is the spec's rint((t / 448)·127). Each operation here is one fp32 rounding (x86-64 SSE, no
// contraction in ISO C++ mode), as the kernel's __fmul_rn / __fmaf_rn.
TEST(Fp8CodesReference, DivisionFreeQuotientGivesTheSpecsCodes) {
  constexpr float inv = 1.0f / 448.0f;
  uint32_t last = 0;
  const float top = 448.0f;
  std::memcpy(&last, &top, 4);
  uint64_t bad = 0, first_bad = 0;
  for (uint32_t u = 0; u <= last; ++u) {
    float t;
    std::memcpy(&t, &u, 4);
    const float spec = std::nearbyint((t / 448.0f) * 127.0f);
    const float q0 = t * inv;
    const float fast = std::nearbyint(std::fma(std::fma(-q0, 448.0f, t), inv, q0) * 127.0f);
    if (fast != spec && bad++ == 0) first_bad = u;
  }
  EXPECT_EQ(bad, 0u) << "first at bits 0x" << std::hex << first_bad;
}

const detail::FamilyDef& family() { return registered_family("fp8_codes"); }

TEST(Fp8CodesFamily, LayoutEnumerationAndSearchSpace) {
  const detail::FamilyDef& f = family();
  ASSERT_EQ(f.kernels.size(), 2u);
  EXPECT_STREQ(f.kernels[0], "quantize");
  EXPECT_STREQ(f.kernels[1], "dequantize");
  std::vector<detail::Specialization> specs;
  f.enumerate(load_model("ling-mini-2.0"), detail::Arch::parse("sm_90a"), specs);
  ASSERT_EQ(specs.size(), 4u);  // quantize and dequantize × bf16, fp16
  std::set<std::string> keys;
  for (const auto& s : specs) {
    EXPECT_TRUE(keys.insert(s.key().hex()).second) << s.describe();
    const auto space = checked_search_space(s);
    ASSERT_EQ(space.size(), 3u);
    EXPECT_EQ(space.front().config, s.config) << "the default comes first";
  }
}

// NVRTC compiles both kernels for every dtype and warp count, for sm_90a and sm_80 (nothing arch-specific).
TEST(Fp8CodesCompile, EveryKernelDtypeAndWarpCount) {
  std::vector<detail::Specialization> specs;
  for (const char* arch : {"sm_90a", "sm_80"})
    for (uint32_t k : {0u, 1u})
      for (DType t : {DType::bf16, DType::f16, DType::f32}) {
        detail::Specialization s;
        s.family = &family();
        s.arch = detail::Arch::parse(arch);
        s.kernel = k;
        s.params[0] = static_cast<int64_t>(t);
        s.config[0] = 8;
        const auto space = checked_search_space(s);
        specs.insert(specs.end(), space.begin(), space.end());
      }
  expect_compiles(specs);
}

class Fp8CodesErrors : public ::testing::Test {
 protected:
  void quantize() { quantize_fp8(rt, x, q, scale, nullptr); }
  void dequantize() { dequantize_fp8(rt, q, scale, out, nullptr); }

  Runtime rt{RuntimeOptions{.memory_only = true}};
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {64, 48});
  TensorRef q = TensorRef::contiguous(fake(1), DType::u8, {64, 48});
  TensorRef scale = TensorRef::contiguous(fake(2), DType::f32, {1});
  TensorRef out = TensorRef::contiguous(fake(3), DType::f16, {3072});
};

TEST_F(Fp8CodesErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(quantize());
  EXPECT_REACHES_DEVICE(dequantize());
  scale = TensorRef::contiguous(fake(2), DType::f32, {});
  EXPECT_REACHES_DEVICE(quantize());
}

TEST_F(Fp8CodesErrors, Dtypes) {
  x.dtype = DType::i32;
  EXPECT_THROW_NAMING(quantize(), "x", UnsupportedDtypeError);
  x.dtype = DType::e4m3;  // real E4M3 is another format, never reinterpreted
  EXPECT_THROW_NAMING(quantize(), "x", UnsupportedDtypeError);
  x.dtype = DType::bf16;
  q.dtype = DType::e4m3;
  EXPECT_THROW_NAMING(quantize(), "q", UnsupportedDtypeError);
  EXPECT_THROW_NAMING(dequantize(), "q", UnsupportedDtypeError);
  q.dtype = DType::u8;
  scale.dtype = DType::bf16;
  EXPECT_THROW_NAMING(quantize(), "scale", UnsupportedDtypeError);
  EXPECT_THROW_NAMING(dequantize(), "scale", UnsupportedDtypeError);
  scale.dtype = DType::f32;
  out.dtype = DType::u8;
  EXPECT_THROW_NAMING(dequantize(), "out", UnsupportedDtypeError);
}

TEST_F(Fp8CodesErrors, Shapes) {
  q = TensorRef::contiguous(fake(1), DType::u8, {64, 47});
  EXPECT_THROW_NAMING(quantize(), "q", ShapeMismatchError);
  EXPECT_THROW_NAMING(dequantize(), "out", ShapeMismatchError);
  q = TensorRef::contiguous(fake(1), DType::u8, {3072});  // any shape with x's element count
  EXPECT_REACHES_DEVICE(quantize());
  scale = TensorRef::contiguous(fake(2), DType::f32, {2});
  EXPECT_THROW_NAMING(quantize(), "scale", ShapeMismatchError);
  scale = TensorRef::contiguous(fake(2), DType::f32, {1, 1});
  EXPECT_THROW_NAMING(dequantize(), "scale", ShapeMismatchError);
}

TEST_F(Fp8CodesErrors, LayoutNullAndAlignment) {
  x.strides = {1, 64};  // transposed view
  EXPECT_THROW_NAMING(quantize(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(static_cast<char*>(fake(0)) + 2, DType::bf16, {64, 48});
  EXPECT_THROW_NAMING(quantize(), "x", InvalidArgument);
  x = TensorRef::contiguous(fake(0), DType::bf16, {64, 48});
  q.data = static_cast<char*>(fake(1)) + 8;
  EXPECT_THROW_NAMING(quantize(), "q", InvalidArgument);
  q.data = nullptr;
  EXPECT_THROW_NAMING(dequantize(), "q", InvalidArgument);
  q.data = fake(1);
  scale.data = static_cast<char*>(fake(2)) + 2;
  EXPECT_THROW_NAMING(quantize(), "scale", InvalidArgument);
  scale.data = fake(2);
  out.data = nullptr;
  EXPECT_THROW_NAMING(dequantize(), "out", InvalidArgument);
}

// Empty tensors: quantize writes scale 1 (a device copy), dequantize does nothing; null data is fine when empty.
TEST_F(Fp8CodesErrors, EmptyTensors) {
  x = TensorRef::contiguous(nullptr, DType::f32, {0, 16});
  q = TensorRef::contiguous(nullptr, DType::u8, {0});
  EXPECT_REACHES_DEVICE(quantize());
  out = TensorRef::contiguous(nullptr, DType::bf16, {0});
  EXPECT_NO_THROW(dequantize());
}

}  // namespace
}  // namespace kiln::test
