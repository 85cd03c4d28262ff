// tests/fp8_gemm_test.cpp — CPU tests of fp8_gemm: the reference against a direct fp64 evaluation of the spec's
// formula, the family (specializations, search space, NVRTC compiles for sm_90a), and every argument error.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <utility>
#include <vector>

#include "compile_util.hpp"
#include "kiln/kiln.hpp"
#include "reference/fp8_codes.hpp"
#include "reference/fp8_gemm.hpp"
#include "runtime/family.hpp"
#include "test_util.hpp"

namespace kiln::detail {
std::pair<int, int> fp8_gemm_default_config(int64_t N, int64_t M, int sms);  // ops/fp8_gemm.cpp
}  // namespace kiln::detail

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
  EXPECT_EQ(specs[0].kernel, 1u);  // the b prep kernel ([K, N] b)
  EXPECT_EQ(specs[1].kernel, 2u);  // the b prep kernel of K-major weights ([N, K])
  std::set<std::string> keys;
  for (const auto& s : specs) {
    EXPECT_TRUE(keys.insert(s.key().hex()).second) << s.describe();
    const auto space = checked_search_space(s);
    ASSERT_FALSE(space.empty());
    bool listed = false;  // each enumerated config (both by-M defaults of a GEMM) is a search-space point
    for (const auto& p : space) listed |= p.config == s.config;
    EXPECT_TRUE(listed) << s.describe();
    for (const auto& p : space) EXPECT_LE(family().dynamic_smem_bytes(p), 227 * 1024) << p.describe();
  }
  EXPECT_EQ(specs.size(), 2u + 2u * ((specs.size() - 2) / 2));  // every GEMM with its small-M default
  std::vector<detail::Specialization> none;
  family().enumerate(load_model("ling-mini-2.0"), detail::Arch::parse("sm_80"), none);
  EXPECT_TRUE(none.empty());
}

// The by-M default: 128 × 128 tiles unless they would leave SMs idle, then 128 × 64 (8 stages).
TEST(Fp8GemmFamily, DefaultConfigByM) {
  using P = std::pair<int, int>;
  EXPECT_EQ(detail::fp8_gemm_default_config(7168, 128, 132), P(64, 8));     // 56 tiles
  EXPECT_EQ(detail::fp8_gemm_default_config(7168, 256, 132), P(64, 8));     // 2 × 56 = 112 tiles
  EXPECT_EQ(detail::fp8_gemm_default_config(7168, 384, 132), P(128, 6));    // 168 tiles
  EXPECT_EQ(detail::fp8_gemm_default_config(4096, 1024, 132), P(128, 6));   // 256 tiles
  EXPECT_EQ(detail::fp8_gemm_default_config(4096, -1, 132), P(128, 6));     // no token count
  EXPECT_EQ(detail::fp8_gemm_default_config(4096, 64, 0), P(128, 6));       // no SM count
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
  prep.kernel = 2;
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

TEST(Fp8GemmWeight, BytesHoldTheTransposeTheSumsAndTheScale) {
  EXPECT_EQ(fp8_gemm_weight_bytes(64, 256), 64 * 256 + 64 * 4 + 16);
  EXPECT_EQ(fp8_gemm_weight_bytes(7, 16), 112 + 32 + 16);  // each piece rounded up to 16 bytes
  EXPECT_EQ(fp8_gemm_weight_bytes(-1, 16), 0);
}

class Fp8GemmWeightErrors : public Fp8GemmErrors {
 protected:
  void prepare() { fp8_gemm_prepare_weight(rt, b, bs, layout, w, nullptr); }
  void gemm() { fp8_gemm(rt, a, as, w, bias, c, nullptr); }

  Fp8WeightLayout layout = Fp8WeightLayout::kn;
  Fp8GemmWeight w{fake(5), 64, 256};
  TensorRef bias_t = TensorRef::contiguous(fake(6), DType::f32, {64});
  const TensorRef* bias = &bias_t;
};

TEST_F(Fp8GemmWeightErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(prepare());
  EXPECT_REACHES_DEVICE(gemm());
  layout = Fp8WeightLayout::nk;
  b = TensorRef::contiguous(fake(1), DType::bf16, {64, 256});  // a Linear's weight [out, in], quantized
  bs = nullptr;
  EXPECT_REACHES_DEVICE(prepare());
}

TEST_F(Fp8GemmWeightErrors, PrepareChecksTheWeightAgainstB) {
  w.N = 63;
  EXPECT_THROW_NAMING(prepare(), "weight", ShapeMismatchError);
  w.N = 64;
  layout = Fp8WeightLayout::nk;  // b [256, 64] read as [N, K]: N 256, K 64
  EXPECT_THROW_NAMING(prepare(), "weight", ShapeMismatchError);
  layout = Fp8WeightLayout::kn;
  w.data = static_cast<char*>(fake(5)) + 4;
  EXPECT_THROW_NAMING(prepare(), "weight", InvalidArgument);
  w.data = nullptr;
  EXPECT_THROW_NAMING(prepare(), "weight", InvalidArgument);
  w.data = fake(5);
  bs = nullptr;
  EXPECT_THROW_NAMING(prepare(), "b_scale", InvalidArgument);
}

TEST_F(Fp8GemmWeightErrors, GemmChecksKBiasAndC) {
  w.K = 512;
  EXPECT_THROW_NAMING(gemm(), "weight", ShapeMismatchError);
  w.K = 256;
  bias_t = TensorRef::contiguous(fake(6), DType::f32, {65});
  EXPECT_THROW_NAMING(gemm(), "bias", ShapeMismatchError);
  bias_t = TensorRef::contiguous(fake(6), DType::i32, {64});
  EXPECT_THROW_NAMING(gemm(), "bias", UnsupportedDtypeError);
  bias_t = TensorRef::contiguous(static_cast<char*>(fake(6)) + 2, DType::f32, {64});
  EXPECT_THROW_NAMING(gemm(), "bias", InvalidArgument);
  bias = nullptr;
  c = TensorRef::contiguous(fake(4), DType::bf16, {100, 65});
  EXPECT_THROW_NAMING(gemm(), "c", ShapeMismatchError);
  c = TensorRef::contiguous(fake(4), DType::bf16, {100, 64});
  w.data = nullptr;
  EXPECT_THROW_NAMING(gemm(), "weight", InvalidArgument);
}

TEST(Fp8LinearErrors, FeaturesAndArguments) {
  Runtime rt{RuntimeOptions{.arch = "sm_90a", .memory_only = true}};
  EXPECT_THROW_NAMING(FP8Linear(rt, 100, 64), "in_features", ShapeMismatchError);
  EXPECT_THROW_NAMING(FP8Linear(rt, 0, 64), "in_features", ShapeMismatchError);
  EXPECT_THROW_NAMING(FP8Linear(rt, 256, 0), "out_features", ShapeMismatchError);
  FP8Linear lin(rt, 256, 64);
  EXPECT_EQ(lin.in_features(), 256);
  EXPECT_EQ(lin.out_features(), 64);
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {100, 256});
  TensorRef w = TensorRef::contiguous(fake(1), DType::f32, {64, 256});
  TensorRef y = TensorRef::contiguous(fake(2), DType::bf16, {100, 64});
  TensorRef bias = TensorRef::contiguous(fake(3), DType::f32, {64});
  auto fwd = [&](const TensorRef* b) { lin.forward(x, w, 0, b, y, nullptr); };
  EXPECT_REACHES_DEVICE(fwd(&bias));
  EXPECT_FALSE(lin.has_prepared_weight());
  x.dtype = DType::u8;
  EXPECT_THROW_NAMING(fwd(nullptr), "x", UnsupportedDtypeError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {100, 128});
  EXPECT_THROW_NAMING(fwd(nullptr), "x", ShapeMismatchError);
  // [B, S, in] → [B, S, out], as x.view(−1, in); y must keep x's leading dims.
  x = TensorRef::contiguous(fake(0), DType::bf16, {4, 25, 256});
  y = TensorRef::contiguous(fake(2), DType::bf16, {4, 25, 64});
  EXPECT_REACHES_DEVICE(fwd(nullptr));
  y = TensorRef::contiguous(fake(2), DType::bf16, {100, 64});
  EXPECT_THROW_NAMING(fwd(nullptr), "y", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {256});  // rank 1
  EXPECT_THROW_NAMING(fwd(nullptr), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {100, 256});
  w = TensorRef::contiguous(fake(1), DType::f32, {256, 64});  // [in, out]: the module's weight is [out, in]
  EXPECT_THROW_NAMING(fwd(nullptr), "weight", ShapeMismatchError);
  w = TensorRef::contiguous(fake(1), DType::f32, {64, 256});
  y = TensorRef::contiguous(fake(2), DType::bf16, {99, 64});
  EXPECT_THROW_NAMING(fwd(nullptr), "y", ShapeMismatchError);
  y = TensorRef::contiguous(fake(2), DType::bf16, {100, 64});
  bias = TensorRef::contiguous(fake(3), DType::f32, {256});
  EXPECT_THROW_NAMING(fwd(&bias), "bias", ShapeMismatchError);
}

}  // namespace
}  // namespace kiln::test
