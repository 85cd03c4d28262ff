// tests/fp8_gemm_test.cpp — CPU tests of fp8_gemm: the reference against a direct fp64 evaluation of the spec's
// formula, the family (specializations, search space, NVRTC compiles for sm_90a), and every argument error.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "compile_util.hpp"
#include "kiln/kiln.hpp"
#include "reference/fp8_codes.hpp"
#include "reference/fp8_gemm.hpp"
#include "runtime/family.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

// The integer form equals the spec's dequantized one, va = (qa − 128)·448/127 / s_a, Σ va·vb, within fp32 rounding.
TEST(Fp8GemmReference, EqualsTheSpecsFormula) {
  const int64_t M = 5, N = 7, K = 48;
  std::vector<uint8_t> qa(M * K), qb(K * N);
  for (size_t i = 0; i < qa.size(); ++i) qa[i] = static_cast<uint8_t>(1 + (i * 77 + 3) % 255);
  for (size_t i = 0; i < qb.size(); ++i) qb[i] = static_cast<uint8_t>(1 + (i * 31 + 9) % 255);
  const float sa = 37.5f, sb = 0.125f;
  const std::vector<float> c = ref::fp8_gemm(qa, qb, M, N, K, sa, sb);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double want = 0;
      for (int64_t k = 0; k < K; ++k)
        want += ((qa[m * K + k] - 128.0) * 448.0 / 127.0 / sa) * ((qb[k * N + n] - 128.0) * 448.0 / 127.0 / sb);
      EXPECT_NEAR(c[m * N + n], want, 2e-7 * (std::fabs(want) + 1)) << m << "," << n;
    }
  EXPECT_EQ(ref::fp8_gemm_alpha(1.0f, 1.0f), static_cast<float>(200704.0 / 16129.0));
}

const detail::FamilyDef& family() { return registered_family("fp8_gemm"); }

detail::Specialization gemm_spec(int64_t N, int64_t K, DType out, int stages = 6) {
  detail::Specialization s;
  s.family = &family();
  s.arch = detail::Arch::parse("sm_90a");
  s.kernel = 0;
  s.params[0] = N;
  s.params[1] = K;
  s.params[2] = static_cast<int64_t>(out);
  s.config[0] = 128;
  s.config[1] = stages;
  return s;
}

TEST(Fp8GemmFamily, EnumerationAndSearchSpace) {
  std::vector<detail::Specialization> specs;
  family().enumerate(load_model("ling-mini-2.0"), detail::Arch::parse("sm_90a"), specs);
  ASSERT_GE(specs.size(), 2u);
  EXPECT_EQ(specs.front().kernel, 1u);  // the b prep kernel
  std::set<std::string> keys;
  for (const auto& s : specs) {
    EXPECT_TRUE(keys.insert(s.key().hex()).second) << s.describe();
    const auto space = checked_search_space(s);
    ASSERT_FALSE(space.empty());
    EXPECT_EQ(space.front().config, s.config);
    for (const auto& p : space) EXPECT_LE(family().dynamic_smem_bytes(p), 227 * 1024) << p.describe();
  }
  std::vector<detail::Specialization> none;
  family().enumerate(load_model("ling-mini-2.0"), detail::Arch::parse("sm_80"), none);
  EXPECT_TRUE(none.empty());
}

TEST(Fp8GemmCompile, KernelsCompileForSm90a) {
  std::vector<detail::Specialization> specs = checked_search_space(gemm_spec(4096, 7168, DType::bf16));
  specs.push_back(gemm_spec(200, 144, DType::f32, 4));  // partial column tile, register stores
  specs.push_back(gemm_spec(96, 16, DType::f16, 4));    // one 16-byte chunk of K
  detail::Specialization prep = gemm_spec(0, 0, DType::bf16);
  prep.kernel = 1;
  prep.params = {};
  prep.config = {};
  specs.push_back(prep);
  expect_compiles(specs);
}

class Fp8GemmErrors : public ::testing::Test {
 protected:
  void call() { fp8_gemm(rt, a, b, as, bs, c, nullptr); }

  Runtime rt{RuntimeOptions{.arch = "sm_90a", .memory_only = true}};
  TensorRef a = TensorRef::contiguous(fake(0), DType::u8, {100, 256});
  TensorRef b = TensorRef::contiguous(fake(1), DType::u8, {256, 64});
  TensorRef sa = TensorRef::contiguous(fake(2), DType::f32, {1});
  TensorRef sb = TensorRef::contiguous(fake(3), DType::f32, {});
  const TensorRef* as = &sa;
  const TensorRef* bs = &sb;
  TensorRef c = TensorRef::contiguous(fake(4), DType::bf16, {100, 64});
};

TEST_F(Fp8GemmErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(call());
  a.dtype = DType::bf16;  // floating point: quantized internally, no scale
  as = nullptr;
  EXPECT_REACHES_DEVICE(call());
}

TEST_F(Fp8GemmErrors, Scales) {
  as = nullptr;
  EXPECT_THROW_NAMING(call(), "a_scale", InvalidArgument);
  as = &sa;
  b.dtype = DType::f32;
  EXPECT_THROW_NAMING(call(), "b_scale", InvalidArgument);  // a float b has no scale
  b.dtype = DType::u8;
  sb.dtype = DType::bf16;
  EXPECT_THROW_NAMING(call(), "b_scale", UnsupportedDtypeError);
  sb.dtype = DType::f32;
  sa = TensorRef::contiguous(fake(2), DType::f32, {2});
  EXPECT_THROW_NAMING(call(), "a_scale", ShapeMismatchError);
}

TEST_F(Fp8GemmErrors, DtypesAndShapes) {
  a.dtype = DType::e4m3;  // real E4M3 is not these codes
  EXPECT_THROW_NAMING(call(), "a", UnsupportedDtypeError);
  a.dtype = DType::u8;
  c.dtype = DType::u8;
  EXPECT_THROW_NAMING(call(), "c", UnsupportedDtypeError);
  c.dtype = DType::bf16;
  b = TensorRef::contiguous(fake(1), DType::u8, {255, 64});
  EXPECT_THROW_NAMING(call(), "b", ShapeMismatchError);
  b = TensorRef::contiguous(fake(1), DType::u8, {256, 64});
  c = TensorRef::contiguous(fake(4), DType::bf16, {100, 65});
  EXPECT_THROW_NAMING(call(), "c", ShapeMismatchError);
  c = TensorRef::contiguous(fake(4), DType::bf16, {100, 64});
  a = TensorRef::contiguous(fake(0), DType::u8, {100, 200});  // K % 16 != 0
  b = TensorRef::contiguous(fake(1), DType::u8, {200, 64});
  EXPECT_THROW_NAMING(call(), "a", ShapeMismatchError);
  a = TensorRef::contiguous(fake(0), DType::u8, {100, 66304 + 16});  // past the int32 sum's bound
  b = TensorRef::contiguous(fake(1), DType::u8, {66304 + 16, 64});
  EXPECT_THROW_NAMING(call(), "a", ShapeMismatchError);
}

TEST_F(Fp8GemmErrors, LayoutAndAlignment) {
  a = TensorRef::contiguous(static_cast<char*>(fake(0)) + 8, DType::u8, {100, 256});
  EXPECT_THROW_NAMING(call(), "a", InvalidArgument);
  a = TensorRef::strided_2d(fake(0), DType::u8, 100, 256, 272);  // a row stride is fine for codes
  EXPECT_REACHES_DEVICE(call());
  b.strides = {1, 256};
  EXPECT_THROW_NAMING(call(), "b", ShapeMismatchError);
}

}  // namespace
}  // namespace kiln::test
