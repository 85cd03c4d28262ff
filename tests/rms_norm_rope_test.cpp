// tests/rms_norm_rope_test.cpp — fused RMSNorm + RoPE on the CPU (runs in CI without a GPU): the reference against
// independent facts (identity rotation = RMSNorm, rotations keep each head's norm, the backward = finite differences
// of the forward), NVRTC compiles of a handful of specializations for sm_90a, and every argument error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kiln/ops/rms_norm_rope.hpp"
#include "reference/rms_norm_rope.hpp"
#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "compile_util.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

// ---- reference sanity ---------------------------------------------------------------------------------------------

TEST(RmsNormRopeReference, IdentityRotationIsRmsNorm) {
  const int64_t B = 2, S = 3, Hd = 16, D = 8;
  const auto x = randd(B * S * Hd, 1), w = randd(Hd, 2);
  std::vector<double> cos(S * D, 1.0), sin(S * D, 0.0);
  const auto y = ref::rms_norm_rope_fwd(x, w, cos, sin, B, S, Hd, D, 1e-6);
  for (int64_t m = 0; m < B * S; ++m) {
    double ss = 0;
    for (int64_t c = 0; c < Hd; ++c) ss += x[m * Hd + c] * x[m * Hd + c];
    const double r = 1.0 / std::sqrt(ss / Hd + 1e-6);
    for (int64_t c = 0; c < Hd; ++c) EXPECT_NEAR(y[m * Hd + c], x[m * Hd + c] * r * w[c], 1e-12) << m << " " << c;
  }
}

// With cos²+sin² = 1 every pair keeps its length: each head of y has the norm of the same head of n = x·r·w.
// A quarter turn (cos 0, sin 1) maps (a, b) to (−b, a).
TEST(RmsNormRopeReference, RotationKeepsPairNormsAndQuarterTurn) {
  const int64_t B = 1, S = 4, Hd = 24, D = 12;
  const auto x = randd(B * S * Hd, 3);
  const std::vector<double> w(Hd, 1.0);
  std::vector<double> cos(S * D), sin(S * D);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t i = 0; i < D; ++i) {
      const double th = 0.37 * (s + 1) * (i % (D / 2) + 1);
      cos[s * D + i] = std::cos(th);
      sin[s * D + i] = std::sin(th);
    }
  const auto y = ref::rms_norm_rope_fwd(x, w, cos, sin, B, S, Hd, D, 0.0);
  for (int64_t s = 0; s < S; ++s) {
    double ss = 0;
    for (int64_t c = 0; c < Hd; ++c) ss += x[s * Hd + c] * x[s * Hd + c];
    const double r = 1.0 / std::sqrt(ss / Hd);
    for (int64_t c = 0; c < Hd; ++c) {
      const int64_t h = c / D, i = c % D;
      if (i >= D / 2) continue;
      const double a = x[s * Hd + c] * r, b = x[s * Hd + c + D / 2] * r;
      const double ya = y[s * Hd + c], yb = y[s * Hd + c + D / 2];
      EXPECT_NEAR(ya * ya + yb * yb, a * a + b * b, 1e-12) << "s " << s << " head " << h << " pair " << i;
    }
  }
  std::vector<double> c0(S * D, 0.0), s1(S * D, 1.0);
  const auto q = ref::rms_norm_rope_fwd(x, w, c0, s1, B, S, Hd, D, 0.0);
  const auto n = ref::rms_norm_rope_fwd(x, w, s1, c0, B, S, Hd, D, 0.0);  // identity
  for (int64_t c = 0; c < Hd; ++c) {
    const int64_t i = c % D;
    if (i < D / 2) {
      EXPECT_NEAR(q[c], -n[c + D / 2], 1e-12);
      EXPECT_NEAR(q[c + D / 2], n[c], 1e-12);
    }
  }
}

// Only columns [0, D/2) of cos/sin are read.
TEST(RmsNormRopeReference, SecondHalfOfTheTableIsIgnored) {
  const int64_t B = 2, S = 3, Hd = 16, D = 8;
  const auto x = randd(B * S * Hd, 4), w = randd(Hd, 5);
  auto cos = randd(S * D, 6), sin = randd(S * D, 7);
  const auto y = ref::rms_norm_rope_fwd(x, w, cos, sin, B, S, Hd, D, 1e-6);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t i = D / 2; i < D; ++i) cos[s * D + i] = sin[s * D + i] = 1e9;
  EXPECT_EQ(ref::rms_norm_rope_fwd(x, w, cos, sin, B, S, Hd, D, 1e-6), y);
}

// The analytic backward equals central differences of L = Σ y·g through the double forward (h = 1e-6: truncation
// error ~h²·|f'''| ≈ 1e-12, rounding ~1e-16/h ≈ 1e-10, so 1e-7 relative is a real check).
TEST(RmsNormRopeReference, BackwardMatchesFiniteDifferences) {
  for (const auto& [B, S, Hd, D] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{2, 3, 12, 4}, {1, 5, 12, 6},
                                    {3, 2, 8, 8}}) {
    SCOPED_TRACE("B " + std::to_string(B) + " S " + std::to_string(S) + " Hd " + std::to_string(Hd) + " D " +
                 std::to_string(D));
    const uint64_t seed = mix_seed({0x51, static_cast<uint64_t>(Hd), static_cast<uint64_t>(D)});
    auto x = randd(B * S * Hd, seed + 1), w = randd(Hd, seed + 2, 0.7);
    const auto g = randd(B * S * Hd, seed + 3), cos = randd(S * D, seed + 4), sin = randd(S * D, seed + 5);
    const double eps = 1e-3;
    auto loss = [&] {
      const auto y = ref::rms_norm_rope_fwd(x, w, cos, sin, B, S, Hd, D, eps);
      double l = 0;
      for (size_t i = 0; i < y.size(); ++i) l += y[i] * g[i];
      return l;
    };
    const auto grads = ref::rms_norm_rope_bwd(g, x, w, cos, sin, B, S, Hd, D, eps);
    EXPECT_TRUE(matches_finite_differences(x, grads.dx, loss)) << "dx";
    EXPECT_TRUE(matches_finite_differences(w, grads.dweight, loss)) << "dweight";
  }
}

// ---- specializations compile ----------------------------------------------------------------------------------

const detail::FamilyDef& family() { return registered_family("rms_norm_rope"); }

// kernel 0 fwd, 1 bwd, 2 dw_reduce; params Hd, D, dtype, w_dtype, cs_dtype; config warps, rows (0 re-read, 1 kept
// in registers, 2 staged in shared memory), split (warps per row; 0 = 1).
detail::Specialization make(uint32_t kernel, int64_t Hd, int64_t D, DType t, DType w, DType cs, int warps, int rows) {
  detail::Specialization s;
  s.family = &family();
  s.arch = detail::Arch::parse("sm_90a");
  s.kernel = kernel;
  s.params[0] = Hd;
  if (kernel != 2) {
    s.params[1] = D;
    s.params[2] = static_cast<int64_t>(t);
    s.params[3] = static_cast<int64_t>(w);
    s.params[4] = static_cast<int64_t>(cs);
    s.config[0] = warps;
    s.config[1] = rows;
  }
  return s;
}

TEST(RmsNormRopeCompile, SpecializationsCompileForSm90a) {
  ASSERT_EQ(family().param_names.size(), 5u);
  ASSERT_EQ(family().config_names.size(), 3u);
  // Mixed dtypes, a head dim whose half is odd (scalar accesses), kept rows, fp32 tables, a wide hidden dim.
  std::vector<detail::Specialization> specs = {
      make(0, 2048, 128, DType::f16, DType::f32, DType::f32, 8, 0),
      make(0, 18, 6, DType::f32, DType::bf16, DType::f16, 4, 0),
      make(1, 2048, 128, DType::bf16, DType::bf16, DType::bf16, 8, 1),
      make(1, 2048, 128, DType::bf16, DType::f32, DType::f32, 4, 2),  // the staged backward
      make(1, 4096, 64, DType::f32, DType::f32, DType::bf16, 4, 0),
      make(1, 18, 6, DType::f16, DType::f16, DType::f32, 2, 0),
      make(0, 7168, 128, DType::bf16, DType::bf16, DType::bf16, 4, 0),
  };
  auto split = [](detail::Specialization s, int k) {
    s.config[2] = k;
    return s;
  };
  specs.push_back(split(make(1, 2048, 128, DType::bf16, DType::bf16, DType::bf16, 8, 1), 2));  // 2 warps per row
  specs.push_back(split(make(1, 1024, 64, DType::f16, DType::f32, DType::bf16, 16, 0), 4));
  expect_compiles(specs);
}

TEST(RmsNormRopeCompile, SearchSpaceHoldsTheDefaultAndFitsSharedMemory) {
  const ModelConfig m = load_model("ling-mini-2.0");
  std::vector<detail::Specialization> specs;
  family().enumerate(m, detail::Arch::parse("sm_90a"), specs);
  ASSERT_EQ(specs.size(), 3u);
  for (const auto& s : specs) {
    checked_search_space(s);
    EXPECT_TRUE(detail::in_search_space(s));
  }
  // The defaults at Hd = 2048 (see ops/rms_norm_rope.cpp): forward 4 warps per CTA; backward staged, 16 warps, 4 per
  // row: the fp32 weights, then per warp 3 ring slots of its 512 channels of x and dy and an mbarrier each.
  EXPECT_EQ(specs[0].config[0], 4);
  EXPECT_EQ(specs[1].config[0], 16);
  EXPECT_EQ(specs[1].config[1], 2);
  EXPECT_EQ(specs[1].config[2], 4);
  EXPECT_EQ(family().dynamic_smem_bytes(specs[1]), 2048 * 4 + 16 * 3 * (2 * 512 * 2 + 8));
  // Hd = 7168 (deepseek-v3): 16 staged warps × 4 a row do not fit shared memory, so the backward default is 8 staged
  // warps × 4 a row (session 17: 136.9 µs at 8192 tokens, against 310.7 for the kept rows it fell to before).
  {
    std::vector<detail::Specialization> ds;
    family().enumerate(load_model("deepseek-v3"), detail::Arch::parse("sm_90a"), ds);
    ASSERT_EQ(ds.size(), 3u);
    ASSERT_EQ(ds[1].kernel, specs[1].kernel);
    EXPECT_EQ(ds[1].params[0], 7168);
    EXPECT_EQ(ds[1].config[0], 8);
    EXPECT_EQ(ds[1].config[1], 2);
    EXPECT_EQ(ds[1].config[2], 4);
    EXPECT_LE(family().dynamic_smem_bytes(ds[1]), 227 * 1024);
    EXPECT_TRUE(detail::in_search_space(ds[1]));
  }
  // Hd = 7168 bf16 keeps no rows (x and dy would take 224 registers): re-read, 2 warps of 28 KiB slices.
  const auto wide = make(1, 7168, 128, DType::bf16, DType::bf16, DType::bf16, 0, 0);
  std::vector<detail::Specialization> wide_space;
  family().search_space(wide, wide_space);
  for (const auto& c : wide_space) EXPECT_NE(c.config[1], 1) << c.describe();
  // The staged variant is offered where it applies (16-byte pair-chunks, whole heads per warp, dw in ≤ 64 registers)
  // and only there: at Hd = 7168 a lane's dw fits only with ≥ 4 warps per row (split).
  auto min_staged_split = [&](const detail::Specialization& s) {
    std::vector<detail::Specialization> space;
    family().search_space(s, space);
    int m = 0;
    for (const auto& c : space)
      if (c.config[1] == 2 && (m == 0 || std::max(1, c.config[2]) < m)) m = std::max(1, c.config[2]);
    return m;
  };
  EXPECT_EQ(min_staged_split(specs[1]), 1);
  EXPECT_EQ(min_staged_split(make(1, 7168, 128, DType::bf16, DType::bf16, DType::bf16, 2, 0)), 4);
  EXPECT_EQ(min_staged_split(make(1, 60, 6, DType::bf16, DType::bf16, DType::bf16, 8, 0)), 0);  // 2-byte chunks
  // Every backward default of the dtype combinations the GPU tests run (the first point of its space) fits shared
  // memory and compiles (an fp32 row of 2048 does not fit a staged ring of 8 warps, for one).
  std::vector<detail::Specialization> defaults;
  for (const auto& [t, w, cs] : {std::tuple{DType::f32, DType::bf16, DType::bf16}, {DType::f16, DType::f32, DType::f32},
                                 {DType::bf16, DType::bf16, DType::bf16}, {DType::f32, DType::f32, DType::f32}}) {
    std::vector<detail::Specialization> space;
    family().search_space(make(1, 2048, 128, t, w, cs, 0, 0), space);
    ASSERT_FALSE(space.empty());
    defaults.push_back(space.front());
    EXPECT_LE(family().dynamic_smem_bytes(defaults.back()), 227 * 1024) << defaults.back().describe();
  }
  expect_compiles(defaults);
}

// ---- argument errors --------------------------------------------------------------------------------------------

class RmsNormRopeErrors : public ::testing::Test {
 protected:
  static constexpr int64_t B = 2, S = 64, Hd = 256, D = 64;
  void fwd() { rms_norm_rope_fwd(rt, x, weight, cos, sin, y, eps, num_heads, nullptr); }
  void bwd() { rms_norm_rope_bwd(rt, dy, x, weight, cos, sin, dx, dweight, eps, num_heads, workspace, nullptr); }

  Runtime rt{RuntimeOptions{.memory_only = true}};
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {B, S, Hd});
  TensorRef weight = TensorRef::contiguous(fake(1), DType::bf16, {Hd});
  TensorRef cos = TensorRef::contiguous(fake(2), DType::bf16, {S, D});
  TensorRef sin = TensorRef::contiguous(fake(3), DType::bf16, {S, D});
  TensorRef y = TensorRef::contiguous(fake(4), DType::bf16, {B, S, Hd});
  TensorRef dy = TensorRef::contiguous(fake(5), DType::bf16, {B, S, Hd});
  TensorRef dx = TensorRef::contiguous(fake(6), DType::bf16, {B, S, Hd});
  TensorRef dweight = TensorRef::contiguous(fake(7), DType::f32, {Hd});
  TensorRef workspace;
  float eps = 1e-6f;
  int num_heads = 0;
};

TEST_F(RmsNormRopeErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(fwd());
  EXPECT_REACHES_DEVICE(bwd());
}
TEST_F(RmsNormRopeErrors, ValidVariantsReachTheDevice) {
  cos = TensorRef::contiguous(fake(2), DType::f32, {1, S, 1, D});  // the 4-D cache form, fp32 table
  sin = TensorRef::contiguous(fake(3), DType::f32, {1, S, 1, D});
  weight.dtype = DType::f32;
  num_heads = static_cast<int>(Hd / D);
  x.strides = {S * 2 * Hd, 2 * Hd, 1};  // a slice of a wider buffer
  EXPECT_REACHES_DEVICE(fwd());
  EXPECT_REACHES_DEVICE(bwd());
}
TEST_F(RmsNormRopeErrors, StridesOfUnitDimsAreIgnored) {  // frameworks leave any stride on a dim of extent 1
  x = TensorRef::contiguous(fake(0), DType::bf16, {1, S, Hd});
  x.strides[0] = 3;
  y = TensorRef::contiguous(fake(4), DType::bf16, {1, S, Hd});
  y.strides[0] = -1;
  EXPECT_REACHES_DEVICE(fwd());
}
TEST_F(RmsNormRopeErrors, EmptyInputLaunchesNothing) {
  for (int64_t b : {int64_t{0}, B}) {
    const int64_t s = b == 0 ? S : 0;
    x = TensorRef::contiguous(fake(0), DType::bf16, {b, s, Hd});
    y = TensorRef::contiguous(fake(4), DType::bf16, {b, s, Hd});
    cos = TensorRef::contiguous(fake(2), DType::bf16, {s, D});
    sin = TensorRef::contiguous(fake(3), DType::bf16, {s, D});
    EXPECT_NO_THROW(fwd()) << "B = " << b << ", S = " << s;
  }
}

TEST_F(RmsNormRopeErrors, HeadCountsThatDoNotDivide) {
  cos = TensorRef::contiguous(fake(2), DType::bf16, {S, 96});  // 256 % 96 != 0
  sin = TensorRef::contiguous(fake(3), DType::bf16, {S, 96});
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "x", ShapeMismatchError);
}
TEST_F(RmsNormRopeErrors, NumHeadsMustCoverTheHiddenDim) {
  for (int h : {1, 3, 5, 8}) {  // Hd/D = 4
    num_heads = h;
    EXPECT_THROW_NAMING(fwd(), "num_heads", ShapeMismatchError);
    EXPECT_THROW_NAMING(bwd(), "num_heads", ShapeMismatchError);
  }
  num_heads = -1;
  EXPECT_THROW_NAMING(fwd(), "num_heads", InvalidArgument);
}
TEST_F(RmsNormRopeErrors, CosShape) {
  cos = TensorRef::contiguous(fake(2), DType::bf16, {S + 1, D});
  EXPECT_THROW_NAMING(fwd(), "cos", ShapeMismatchError);
  cos = TensorRef::contiguous(fake(2), DType::bf16, {S, 1, D});
  EXPECT_THROW_NAMING(fwd(), "cos", ShapeMismatchError);
  cos = TensorRef::contiguous(fake(2), DType::bf16, {2, S, 1, D});  // a batch dim other than 1
  EXPECT_THROW_NAMING(fwd(), "cos", ShapeMismatchError);
  cos = TensorRef::contiguous(fake(2), DType::bf16, {S, 63});  // odd head dim
  sin = TensorRef::contiguous(fake(3), DType::bf16, {S, 63});
  EXPECT_THROW_NAMING(fwd(), "cos", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "cos", ShapeMismatchError);
}
TEST_F(RmsNormRopeErrors, SinMustMatchCos) {
  sin = TensorRef::contiguous(fake(3), DType::bf16, {S, D / 2});
  EXPECT_THROW_NAMING(fwd(), "sin", ShapeMismatchError);
  sin = TensorRef::contiguous(fake(3), DType::bf16, {1, S, 1, D});
  EXPECT_THROW_NAMING(fwd(), "sin", ShapeMismatchError);
  sin = TensorRef::contiguous(fake(3), DType::f32, {S, D});
  EXPECT_THROW_NAMING(fwd(), "sin", UnsupportedDtypeError);
  EXPECT_THROW_NAMING(bwd(), "sin", UnsupportedDtypeError);
}
TEST_F(RmsNormRopeErrors, NonUnitInnerStride) {
  x.strides = {S * Hd * 2, Hd * 2, 2};
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {B, S, Hd});
  y.strides = {S * Hd * 2, Hd * 2, 2};
  EXPECT_THROW_NAMING(fwd(), "y", ShapeMismatchError);
  y = TensorRef::contiguous(fake(4), DType::bf16, {B, S, Hd});
  cos.strides = {2 * D, 2};
  EXPECT_THROW_NAMING(fwd(), "cos", ShapeMismatchError);
  cos = TensorRef::contiguous(fake(2), DType::bf16, {S, D});
  sin.strides = {2 * D, 2};
  EXPECT_THROW_NAMING(fwd(), "sin", ShapeMismatchError);
  sin = TensorRef::contiguous(fake(3), DType::bf16, {S, D});
  dy.strides = {S * Hd * 2, Hd * 2, 2};
  EXPECT_THROW_NAMING(bwd(), "dy", ShapeMismatchError);
  dy = TensorRef::contiguous(fake(5), DType::bf16, {B, S, Hd});
  dx.strides = {S * Hd * 2, Hd * 2, 2};
  EXPECT_THROW_NAMING(bwd(), "dx", ShapeMismatchError);
  dx = TensorRef::contiguous(fake(6), DType::bf16, {B, S, Hd});
  weight.strides = {2};
  EXPECT_THROW_NAMING(fwd(), "weight", ShapeMismatchError);
}
TEST_F(RmsNormRopeErrors, MisalignedRowsAndPointers) {
  x.strides = {S * (Hd + 4), Hd + 4, 1};  // rows 8 bytes apart from 16-byte alignment
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
  x = TensorRef::contiguous(static_cast<char*>(fake(0)) + 2, DType::bf16, {B, S, Hd});
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
  x = TensorRef::contiguous(fake(0), DType::bf16, {B, S, Hd});
  cos.strides = {D + 4, 1};
  EXPECT_THROW_NAMING(fwd(), "cos", InvalidArgument);
  cos = TensorRef::contiguous(fake(2), DType::bf16, {S, D});
  weight.data = static_cast<char*>(fake(1)) + 8;
  EXPECT_THROW_NAMING(fwd(), "weight", InvalidArgument);
  weight.data = nullptr;
  EXPECT_THROW_NAMING(fwd(), "weight", InvalidArgument);
}
TEST_F(RmsNormRopeErrors, UnsupportedDtypes) {
  for (DType d : {DType::e4m3, DType::i32, DType::u8}) {
    x.dtype = d;
    EXPECT_THROW_NAMING(fwd(), "x", UnsupportedDtypeError);
    x.dtype = DType::bf16;
    weight.dtype = d;
    EXPECT_THROW_NAMING(fwd(), "weight", UnsupportedDtypeError);
    weight.dtype = DType::bf16;
    cos.dtype = d;
    EXPECT_THROW_NAMING(fwd(), "cos", UnsupportedDtypeError);
    cos.dtype = DType::bf16;
  }
  y.dtype = DType::f16;  // outputs take x's dtype
  EXPECT_THROW_NAMING(fwd(), "y", UnsupportedDtypeError);
  dx.dtype = DType::f32;
  EXPECT_THROW_NAMING(bwd(), "dx", UnsupportedDtypeError);
  dx.dtype = DType::bf16;
  dy.dtype = DType::f16;
  EXPECT_THROW_NAMING(bwd(), "dy", UnsupportedDtypeError);
  dy.dtype = DType::bf16;
  dweight.dtype = DType::bf16;  // fp32 only
  EXPECT_THROW_NAMING(bwd(), "dweight", UnsupportedDtypeError);
}
TEST_F(RmsNormRopeErrors, ShapesOfOutputsAndWeight) {
  y = TensorRef::contiguous(fake(4), DType::bf16, {B, S + 1, Hd});
  EXPECT_THROW_NAMING(fwd(), "y", ShapeMismatchError);
  y = TensorRef::contiguous(fake(4), DType::bf16, {B * S, Hd});
  EXPECT_THROW_NAMING(fwd(), "y", ShapeMismatchError);
  weight = TensorRef::contiguous(fake(1), DType::bf16, {Hd / 2});
  EXPECT_THROW_NAMING(fwd(), "weight", ShapeMismatchError);
  weight = TensorRef::contiguous(fake(1), DType::bf16, {Hd});
  x = TensorRef::contiguous(fake(0), DType::bf16, {B * S, Hd});
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {B, S, Hd});
  dweight = TensorRef::contiguous(fake(7), DType::f32, {Hd + 1});
  EXPECT_THROW_NAMING(bwd(), "dweight", ShapeMismatchError);
  dweight = TensorRef::contiguous(fake(7), DType::f32, {Hd});
  dx = TensorRef::contiguous(fake(6), DType::bf16, {B + 1, S, Hd});
  EXPECT_THROW_NAMING(bwd(), "dx", ShapeMismatchError);
  dx = TensorRef::contiguous(fake(6), DType::bf16, {B, S, Hd});
  workspace = TensorRef::contiguous(fake(8), DType::bf16, {1024});
  EXPECT_THROW_NAMING(bwd(), "workspace", UnsupportedDtypeError);
}
TEST_F(RmsNormRopeErrors, OverlappingOutputRows) {
  y.strides = {S * Hd, Hd / 2, 1};  // consecutive rows share half their channels
  EXPECT_THROW_NAMING(fwd(), "y", InvalidArgument);
  y.strides = {0, Hd, 1};  // every batch writes the same rows
  EXPECT_THROW_NAMING(fwd(), "y", InvalidArgument);
  y = TensorRef::contiguous(fake(4), DType::bf16, {B, S, Hd});
  dx.strides = {Hd, Hd, 1};  // (b 1, s 0) and (b 0, s 1) are one row
  EXPECT_THROW_NAMING(bwd(), "dx", InvalidArgument);
  dx.strides = {Hd, B * Hd, 1};  // [S, B]-ordered rows: fine
  EXPECT_REACHES_DEVICE(bwd());
}
TEST_F(RmsNormRopeErrors, BroadcastInputsAreAllowed) {
  x.strides = {0, Hd, 1};  // the same x for every batch entry
  EXPECT_REACHES_DEVICE(fwd());
}
TEST_F(RmsNormRopeErrors, Eps) {
  for (float e : {-1.0f, std::nanf(""), INFINITY}) {
    eps = e;
    EXPECT_THROW_NAMING(fwd(), "eps", InvalidArgument);
    EXPECT_THROW_NAMING(bwd(), "eps", InvalidArgument);
  }
}
TEST_F(RmsNormRopeErrors, HiddenDimTooLarge) {
  const int64_t big = 65536;
  x = TensorRef::contiguous(fake(0), DType::bf16, {1, S, big});
  y = TensorRef::contiguous(fake(4), DType::bf16, {1, S, big});
  weight = TensorRef::contiguous(fake(1), DType::bf16, {big});
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
}
TEST_F(RmsNormRopeErrors, NegativeDims) {  // a negative batch count once reached the launch as a huge grid
  x = TensorRef::contiguous(fake(0), DType::bf16, {-B, S, Hd});
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {B, S, Hd});
  y = TensorRef::contiguous(fake(4), DType::bf16, {B, S, Hd});
  y.shape[0] = -B;
  EXPECT_THROW_NAMING(fwd(), "y", ShapeMismatchError);
}
TEST_F(RmsNormRopeErrors, RowCountBeyondInt32) {  // B·S rows index with 32-bit ints in the kernels
  const int64_t b = int64_t{1} << 16, s = (int64_t{1} << 15) + 1;
  for (TensorRef* t : {&x, &y, &dy, &dx}) *t = TensorRef::contiguous(t->data, DType::bf16, {b, s, Hd});
  cos = TensorRef::contiguous(fake(2), DType::bf16, {s, D});
  sin = TensorRef::contiguous(fake(3), DType::bf16, {s, D});
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
  EXPECT_THROW_NAMING(bwd(), "x", InvalidArgument);
}

}  // namespace
}  // namespace kiln::test
