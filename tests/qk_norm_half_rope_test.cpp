// tests/qk_norm_half_rope_test.cpp — qk-norm + half RoPE on the CPU (runs in CI without a driver):
//  * the double reference: head layouts, positions, a hand-computed head, rotation properties;
//  * the reference backward against central finite differences of the reference forward (dqkv, both weight
//    gradients; freqs rows with unequal halves, offsets and packed sequences);
//  * rendering + NVRTC compilation for sm_90a (preset specializations, other head dims, dtypes and layouts);
//  * every argument check of qk_norm_half_rope_fwd / _bwd: the typed error naming the argument.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kiln/kiln.hpp"
#include "reference/qk_norm_half_rope.hpp"
#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "compile_util.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

using ref::QkRopeProblem;

// ---- reference ----------------------------------------------------------------------------------------------------

TEST(QkNormRopeReference, InterleavedAndPlainHeadLayouts) {
  QkRopeProblem p{.H = 4, .h = 2, .D = 8};
  // Interleaved: [q0 q1 k0 v0 | q2 q3 k1 v1].
  const int want_il[8][2] = {{0, 0}, {0, 1}, {1, 0}, {2, 0}, {0, 2}, {0, 3}, {1, 1}, {2, 1}};
  // Plain: [q0 q1 q2 q3 | k0 k1 | v0 v1].
  const int want_plain[8][2] = {{0, 0}, {0, 1}, {0, 2}, {0, 3}, {1, 0}, {1, 1}, {2, 0}, {2, 1}};
  for (bool il : {true, false}) {
    p.interleaved = il;
    for (int j = 0; j < 8; ++j) {
      int kind, idx;
      ref::qkv_slot(p, j, kind, idx);
      const auto& w = il ? want_il[j] : want_plain[j];
      EXPECT_EQ(kind, w[0]) << "slot " << j << " interleaved " << il;
      EXPECT_EQ(idx, w[1]) << "slot " << j << " interleaved " << il;
    }
  }
}

TEST(QkNormRopeReference, Positions) {
  QkRopeProblem p{.S = 10, .freqs_rows = 10};
  EXPECT_EQ(ref::rope_position(p, 0), 0);
  EXPECT_EQ(ref::rope_position(p, 9), 9);
  p.position_offset = 3;
  EXPECT_EQ(ref::rope_position(p, 6), 9);
  EXPECT_EQ(ref::rope_position(p, 7), -1);  // no row 10 in the table
  p.position_offset = 0;
  p.cu_seqlens = {0, 4, 4, 7};  // sequences [0,4), [4,4) empty, [4,7); rows 7..9 continue from 7
  const int64_t want[10] = {0, 1, 2, 3, 0, 1, 2, 0, 1, 2};
  for (int64_t s = 0; s < 10; ++s) EXPECT_EQ(ref::rope_position(p, s), want[s]) << "s " << s;
  p.position_offset = 5;
  EXPECT_EQ(ref::rope_position(p, 3), 8);
  EXPECT_EQ(ref::rope_position(p, 9), 7);
}

// D = 8 (Q = 2, rotated channels 0..3), one q head computed by hand.
TEST(QkNormRopeReference, HandComputedHead) {
  // eps below an ulp of Σt²/D for row 1 keeps the all-zero row 0 finite.
  QkRopeProblem p{.S = 2, .B = 1, .H = 1, .h = 1, .D = 8, .eps = 1e-30, .freqs_rows = 2};
  const std::vector<float> t = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<float> qkv(2 * 3 * 8, 0.f);
  for (int c = 0; c < 8; ++c) {
    qkv[24 + c] = t[c];           // row s = 1, q head
    qkv[24 + 8 + c] = 2 * t[c];   // k head: r halves, so the result is the same as q's before the weights
    qkv[24 + 16 + c] = -t[c];     // v head
  }
  const std::vector<float> wq = {1, 1, 1, 1, 2, 2, 2, 2}, wk(8, 1.f);
  const std::vector<float> freqs = {0, 0, 0, 0, 0.25f, 0.5f, 0.75f, 1.0f};  // row 1: angles of channels 0..3
  const auto o = ref::qk_norm_half_rope_fwd(p, qkv, wq, wk, freqs);
  const double r = 1.0 / std::sqrt(204.0 / 8.0);  // Σ t² = 204
  double n[8];
  for (int c = 0; c < 8; ++c) n[c] = t[c] * r * wq[c];
  const double want[8] = {n[0] * std::cos(0.25) - n[2] * std::sin(0.25), n[1] * std::cos(0.5) - n[3] * std::sin(0.5),
                          n[2] * std::cos(0.75) + n[0] * std::sin(0.75), n[3] * std::cos(1.0) + n[1] * std::sin(1.0),
                          n[4], n[5], n[6], n[7]};
  for (int c = 0; c < 8; ++c) {
    EXPECT_NEAR(o.q[8 + c], want[c], 1e-12) << "q channel " << c;  // q [B=1, S=2, 1, 8], s = 1
    // Position 0: no rotation, plain norm.
    EXPECT_EQ(o.q[c], 0.0);
    EXPECT_EQ(o.v[8 + c], -t[c]);
  }
  // k = 2t: identical normalized values; wk = 1.
  const double nk2 = 3 * r;  // t_2 · r
  EXPECT_NEAR(o.k[8 + 2], nk2 * std::cos(0.75) + 1 * r * std::sin(0.75), 1e-12);
}

// With Megatron tables (equal halves) the rotation keeps each pair's length; the unrotated half is plain n.
TEST(QkNormRopeReference, RotationPreservesPairNorms) {
  QkRopeProblem p{.S = 5, .B = 2, .H = 2, .h = 1, .D = 16, .freqs_rows = 5};
  const auto freqs = ref::half_rope_freqs(5, 16);
  const std::vector<float> qkv = randn(p.S * p.B * p.width(), 11);
  const std::vector<float> w = randn(16, 12, 0.2f, 1.f);
  const auto o = ref::qk_norm_half_rope_fwd(p, qkv, w, w, freqs);
  p.freqs_rows = 5;
  QkRopeProblem p0 = p;  // position 0 for every row: no rotation
  p0.position_offset = 0;
  std::vector<float> zero(freqs.size(), 0.f);
  const auto n = ref::qk_norm_half_rope_fwd(p0, qkv, w, w, zero);
  for (size_t h0 = 0; h0 < o.q.size(); h0 += 16) {
    for (int j = 0; j < 4; ++j) {
      const double a = std::hypot(o.q[h0 + j], o.q[h0 + j + 4]), b = std::hypot(n.q[h0 + j], n.q[h0 + j + 4]);
      EXPECT_NEAR(a, b, 1e-12 * (1 + b));
    }
    for (int c = 8; c < 16; ++c) EXPECT_EQ(o.q[h0 + c], n.q[h0 + c]);
  }
}

// ---- finite differences ---------------------------------------------------------------------------------------------

struct FdCase {
  int H, h, D;
  bool interleaved;
  int64_t S, B, offset;
  std::vector<int32_t> cu;
};

// L = Σ gq·q + gk·k + gv·v; the reference backward must be its gradient w.r.t. qkv, wq and wk.
void check_finite_differences(const FdCase& c) {
  QkRopeProblem p{.S = c.S, .B = c.B, .H = c.H, .h = c.h, .D = c.D, .interleaved = c.interleaved, .eps = 1e-3,
      .position_offset = c.offset, .cu_seqlens = c.cu, .freqs_rows = c.offset + c.S};
  const uint64_t seed = mix_seed({0x51, static_cast<uint64_t>(c.H), static_cast<uint64_t>(c.D), c.interleaved});
  const std::vector<float> qkv = randn(p.S * p.B * p.width(), mix_seed({seed, 1}));
  const std::vector<float> wq = randn(p.D, mix_seed({seed, 2}), 0.3f, 1.f);
  const std::vector<float> wk = randn(p.D, mix_seed({seed, 3}), 0.3f, 1.f);
  // Unequal halves: the backward must be the adjoint of the forward as defined, not linghe's equal-halves shortcut.
  const std::vector<float> freqs = randn(p.freqs_rows * p.D / 2, mix_seed({seed, 4}), 2.f);
  const std::vector<float> gq = randn(p.B * p.S * p.H * p.D, mix_seed({seed, 5}));
  const std::vector<float> gk = randn(p.B * p.S * p.h * p.D, mix_seed({seed, 6}));
  const std::vector<float> gv = randn(p.B * p.S * p.h * p.D, mix_seed({seed, 7}));
  const auto grads = ref::qk_norm_half_rope_bwd(p, gq, gk, gv, qkv, wq, wk, freqs);

  std::vector<double> x(qkv.begin(), qkv.end()), a(wq.begin(), wq.end()), b(wk.begin(), wk.end());
  auto loss = [&] {
    const auto o = ref::qk_norm_half_rope_fwd(p, x, a, b, freqs);
    double l = 0.0;
    for (size_t i = 0; i < o.q.size(); ++i) l += gq[i] * o.q[i];
    for (size_t i = 0; i < o.k.size(); ++i) l += gk[i] * o.k[i] + gv[i] * o.v[i];
    return l;
  };
  const double h = 1e-6;
  auto numeric = [&](double& v) {
    const double keep = v;
    v = keep + h;
    const double up = loss();
    v = keep - h;
    const double down = loss();
    v = keep;
    return (up - down) / (2 * h);
  };
  auto close = [](double got, double want) { return std::fabs(got - want) <= 1e-6 * (1.0 + std::fabs(want)); };
  for (size_t i = 0; i < x.size(); ++i) {
    const double nd = numeric(x[i]);
    ASSERT_TRUE(close(grads.dqkv[i], nd)) << "dqkv[" << i << "] (row " << i / p.width() << ", slot "
                                          << (i % p.width()) / p.D << ", channel " << i % p.D
                                          << "): analytic " << grads.dqkv[i] << ", numeric " << nd;
  }
  for (int c = 0; c < p.D; ++c) {
    const double ndq = numeric(a[c]), ndk = numeric(b[c]);
    ASSERT_TRUE(close(grads.dwq[c], ndq)) << "dwq[" << c << "]: analytic " << grads.dwq[c] << ", numeric " << ndq;
    ASSERT_TRUE(close(grads.dwk[c], ndk)) << "dwk[" << c << "]: analytic " << grads.dwk[c] << ", numeric " << ndk;
  }
}

TEST(QkNormRopeReference, BackwardMatchesFiniteDifferencesInterleaved) {
  check_finite_differences({4, 2, 8, true, 3, 2, 0, {}});
}
TEST(QkNormRopeReference, BackwardMatchesFiniteDifferencesPlainLayout) {
  check_finite_differences({2, 1, 16, false, 2, 3, 1, {}});
}
TEST(QkNormRopeReference, BackwardMatchesFiniteDifferencesPackedSequences) {
  check_finite_differences({2, 2, 8, true, 5, 1, 2, {0, 2, 5}});
}

// ---- NVRTC compilation ------------------------------------------------------------------------------------------------

const detail::FamilyDef* family() {
  const detail::FamilyDef* f = detail::find_family("qk_norm_half_rope");
  EXPECT_NE(f, nullptr);
  return f;
}

TEST(QkNormRopeCompile, LingMiniEnumeratesForwardBackwardReduce) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  const detail::FamilyDef* f = family();
  ASSERT_NE(f, nullptr);
  std::vector<detail::Specialization> specs;
  f->enumerate(load_model("ling-mini-2.0"), detail::Arch::parse("sm_90a"), specs);
  ASSERT_EQ(specs.size(), 3u);
  std::set<uint32_t> kernels;
  for (const auto& s : specs) {
    kernels.insert(s.kernel);
    EXPECT_EQ(s.params[2], 128) << s.describe();  // D
    if (s.kernel != 2) {
      EXPECT_EQ(s.params[0], 16) << s.describe();  // H
      EXPECT_EQ(s.params[1], 4) << s.describe();   // h
      EXPECT_EQ(s.params[3], 1) << s.describe();   // interleaved
    }
    std::vector<detail::Specialization> space;
    f->search_space(s, space);
    EXPECT_TRUE(detail::in_search_space(s)) << s.describe();
    EXPECT_FALSE(space.empty());
  }
  EXPECT_EQ(kernels.size(), 3u);
  // A model whose head counts do not divide gets nothing (and no error).
  ModelConfig bad = load_model("ling-mini-2.0");
  bad.num_key_value_heads = 3;
  specs.clear();
  f->enumerate(bad, detail::Arch::parse("sm_90a"), specs);
  EXPECT_TRUE(specs.empty());
}

// Beyond the presets (compiled by compile_test): other head dims, the plain layout, fp16 with fp32 weights.
TEST(QkNormRopeCompile, OtherShapesDtypesAndLayoutsCompileForSm90a) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  const detail::FamilyDef* f = family();
  ASSERT_NE(f, nullptr);
  struct Point { uint32_t kernel; int H, h, D; bool il; DType t, w; };
  const Point points[] = {
      {0, 64, 8, 64, false, DType::bf16, DType::bf16},
      {1, 16, 16, 256, true, DType::f16, DType::f32},
      {0, 6, 2, 32, true, DType::bf16, DType::f32},
      {2, 0, 0, 256, true, DType::bf16, DType::bf16},
  };
  std::vector<detail::Specialization> specs;
  for (const Point& pt : points) {
    detail::Specialization& s = specs.emplace_back();
    s.family = f;
    s.arch = detail::Arch::parse("sm_90a");
    s.kernel = pt.kernel;
    s.params = {pt.H, pt.h, pt.D, pt.il, static_cast<int64_t>(pt.t), static_cast<int64_t>(pt.w)};
    if (pt.kernel != 2) s.config = {pt.kernel == 0 ? 4 : 8, pt.kernel == 0 ? 4 : 2};
    else s.params = {0, 0, pt.D, 0, 0, 0};
  }
  expect_compiles(specs);
}

// ---- argument checks ---------------------------------------------------------------------------------------------------

TensorRef strided3(void* data, DType t, int64_t S, int64_t B, int64_t W, int64_t s0, int64_t s1, int64_t s2 = 1) {
  TensorRef r = TensorRef::contiguous(data, t, {S, B, W});
  r.strides[0] = s0;
  r.strides[1] = s1;
  r.strides[2] = s2;
  return r;
}

class QkNormRopeErrors : public ::testing::Test {
 protected:
  static constexpr int64_t S = 64, B = 2, D = 128;
  static constexpr int H = 16, h = 4;
  static constexpr int64_t W = (H + 2 * h) * D;

  QkNormRopeErrors() {
    opts.num_heads = H;
    opts.num_groups = h;
  }
  void fwd() { qk_norm_half_rope_fwd(rt, qkv, wq, wk, freqs, q, k, v, opts, nullptr); }
  void bwd() { qk_norm_half_rope_bwd(rt, gq, gk, gv, qkv, wq, wk, freqs, dqkv, dwq, dwk, opts, ws, nullptr); }

  Runtime rt{cpu_options()};
  QkNormHalfRopeOptions opts;
  TensorRef qkv = TensorRef::contiguous(fake(0), DType::bf16, {S, B, W});
  TensorRef wq = TensorRef::contiguous(fake(1), DType::bf16, {D});
  TensorRef wk = TensorRef::contiguous(fake(2), DType::bf16, {D});
  TensorRef freqs = TensorRef::contiguous(fake(3), DType::f32, {S, D / 2});
  TensorRef q = TensorRef::contiguous(fake(4), DType::bf16, {B, S, H, D});
  TensorRef k = TensorRef::contiguous(fake(5), DType::bf16, {B, S, h, D});
  TensorRef v = TensorRef::contiguous(fake(6), DType::bf16, {B, S, h, D});
  TensorRef gq = TensorRef::contiguous(fake(7), DType::bf16, {B, S, H, D});
  TensorRef gk = TensorRef::contiguous(fake(8), DType::bf16, {B, S, h, D});
  TensorRef gv = TensorRef::contiguous(fake(9), DType::bf16, {B, S, h, D});
  TensorRef dqkv = TensorRef::contiguous(fake(10), DType::bf16, {S, B, W});
  TensorRef dwq = TensorRef::contiguous(fake(11), DType::f32, {D});
  TensorRef dwk = TensorRef::contiguous(fake(12), DType::f32, {D});
  TensorRef ws;
};

TEST_F(QkNormRopeErrors, ValidCallsReachTheDevice) {
  if (::kiln::detail::driver_available()) GTEST_SKIP() << "a GPU is present: fake pointers would run";
  EXPECT_THROW_NAMING(fwd(), "", DeviceError);
  EXPECT_THROW_NAMING(bwd(), "", DeviceError);
  // Strided slices (a qkv view into a wider buffer, dqkv with [B, S] row order), fp32 weights, the plain layout,
  // an offset, packed sequences with max_seqlen: all valid.
  qkv = strided3(fake(0), DType::bf16, S, B, W, B * (W + 64), W + 64);
  dqkv = strided3(fake(10), DType::bf16, S, B, W, W, S * W);
  wq.dtype = wk.dtype = DType::f32;
  opts.interleaved = false;
  opts.position_offset = 5;
  freqs = TensorRef::contiguous(fake(3), DType::f32, {S + 5, D / 2});
  EXPECT_THROW_NAMING(fwd(), "", DeviceError);
  EXPECT_THROW_NAMING(bwd(), "", DeviceError);
  opts.cu_seqlens = TensorRef::contiguous(fake(13), DType::i32, {4});
  opts.max_seqlen = 20;
  freqs = TensorRef::contiguous(fake(3), DType::f32, {25, D / 2});
  EXPECT_THROW_NAMING(fwd(), "", DeviceError);
  EXPECT_THROW_NAMING(bwd(), "", DeviceError);
}

// The weight gradients are optional, each on its own.
TEST_F(QkNormRopeErrors, WeightGradientsAreOptional) {
  if (::kiln::detail::driver_available()) GTEST_SKIP() << "a GPU is present: fake pointers would run";
  dwq = {};
  EXPECT_THROW_NAMING(bwd(), "", DeviceError);
  dwk = {};
  EXPECT_THROW_NAMING(bwd(), "", DeviceError);
  dwq = TensorRef::contiguous(fake(11), DType::f32, {D});
  EXPECT_THROW_NAMING(bwd(), "", DeviceError);
}

// A dim of size 1 may carry any stride (torch reports the row length, or anything after a slice): never an error.
TEST_F(QkNormRopeErrors, SizeOneDimsIgnoreTheirStride) {
  if (::kiln::detail::driver_available()) GTEST_SKIP() << "a GPU is present: fake pointers would run";
  for (const auto& [s1, s0] : {std::pair<int64_t, int64_t>{W, W}, {5, W}, {0, W + 64}, {3 * W, 2 * W}}) {
    SCOPED_TRACE("B = 1, strides [" + std::to_string(s0) + ", " + std::to_string(s1) + ", 1]");
    qkv = strided3(fake(0), DType::bf16, S, 1, W, s0, s1);
    dqkv = strided3(fake(10), DType::bf16, S, 1, W, s0, s1);
    q = TensorRef::contiguous(fake(4), DType::bf16, {1, S, H, D});
    k = TensorRef::contiguous(fake(5), DType::bf16, {1, S, h, D});
    v = TensorRef::contiguous(fake(6), DType::bf16, {1, S, h, D});
    gq = q;
    gk = k;
    gv = v;
    EXPECT_THROW_NAMING(fwd(), "", DeviceError);
    EXPECT_THROW_NAMING(bwd(), "", DeviceError);
  }
  // S = 1 with any stride along S.
  freqs = TensorRef::contiguous(fake(3), DType::f32, {1, D / 2});
  for (const int64_t s0 : {int64_t{0}, int64_t{7}, B * W}) {
    qkv = strided3(fake(0), DType::bf16, 1, B, W, s0, W);
    dqkv = strided3(fake(10), DType::bf16, 1, B, W, s0, W + 64);
    q = TensorRef::contiguous(fake(4), DType::bf16, {B, 1, H, D});
    k = TensorRef::contiguous(fake(5), DType::bf16, {B, 1, h, D});
    v = TensorRef::contiguous(fake(6), DType::bf16, {B, 1, h, D});
    gq = q;
    gk = k;
    gv = v;
    EXPECT_THROW_NAMING(fwd(), "", DeviceError);
    EXPECT_THROW_NAMING(bwd(), "", DeviceError);
  }
  // But with B = 1 the S rows still must not overlap.
  qkv = strided3(fake(0), DType::bf16, S, 1, W, W - 8, W);
  q = TensorRef::contiguous(fake(4), DType::bf16, {1, S, H, D});
  k = TensorRef::contiguous(fake(5), DType::bf16, {1, S, h, D});
  v = TensorRef::contiguous(fake(6), DType::bf16, {1, S, h, D});
  freqs = TensorRef::contiguous(fake(3), DType::f32, {S, D / 2});
  EXPECT_THROW_NAMING(fwd(), "qkv", ShapeMismatchError);
}

TEST_F(QkNormRopeErrors, EmptyInputsLaunchNothing) {
  // S = 0: the forward returns after validation without touching the device (no outputs to write).
  qkv = TensorRef::contiguous(nullptr, DType::bf16, {0, B, W});
  q = TensorRef::contiguous(nullptr, DType::bf16, {B, 0, H, D});
  k = TensorRef::contiguous(nullptr, DType::bf16, {B, 0, h, D});
  v = TensorRef::contiguous(nullptr, DType::bf16, {B, 0, h, D});
  freqs = TensorRef::contiguous(nullptr, DType::f32, {0, D / 2});
  EXPECT_NO_THROW(fwd());
}

TEST_F(QkNormRopeErrors, HeadCounts) {
  opts.num_groups = 3;  // 16 % 3 != 0
  EXPECT_THROW_NAMING(fwd(), "num_groups", InvalidArgument);
  EXPECT_THROW_NAMING(bwd(), "num_groups", InvalidArgument);
  opts.num_groups = 0;
  EXPECT_THROW_NAMING(fwd(), "num_groups", InvalidArgument);
  opts.num_groups = h;
  opts.num_heads = -16;
  EXPECT_THROW_NAMING(fwd(), "num_heads", InvalidArgument);
  // Head counts that divide each other but not qkv's width: (H + 2h) = 18 does not divide 24·128.
  opts.num_heads = 16;
  opts.num_groups = 1;
  EXPECT_THROW_NAMING(fwd(), "qkv", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "qkv", ShapeMismatchError);
}

TEST_F(QkNormRopeErrors, UnsupportedHeadDim) {
  for (int64_t d : {16, 96, 512}) {
    const int64_t w = (H + 2 * h) * d;
    qkv = TensorRef::contiguous(fake(0), DType::bf16, {S, B, w});
    EXPECT_THROW_NAMING(fwd(), "qkv", ShapeMismatchError);
  }
}

TEST_F(QkNormRopeErrors, QkvDtypeRankAndInnerStride) {
  for (DType d : {DType::f32, DType::e4m3, DType::i32}) {
    qkv.dtype = d;
    EXPECT_THROW_NAMING(fwd(), "qkv", UnsupportedDtypeError);
    EXPECT_THROW_NAMING(bwd(), "qkv", UnsupportedDtypeError);
  }
  qkv = TensorRef::contiguous(fake(0), DType::bf16, {S * B, W});
  EXPECT_THROW_NAMING(fwd(), "qkv", ShapeMismatchError);
  qkv = strided3(fake(0), DType::bf16, S, B, W, 2 * B * W, 2 * W, 2);  // every other element
  EXPECT_THROW_NAMING(fwd(), "qkv", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "qkv", ShapeMismatchError);
}

TEST_F(QkNormRopeErrors, QkvStridesAlignmentAndOverlap) {
  qkv = strided3(fake(0), DType::bf16, S, B, W, B * (W + 4), W + 4);  // rows 8 bytes apart from 16-byte alignment
  EXPECT_THROW_NAMING(fwd(), "qkv", InvalidArgument);
  qkv = strided3(fake(0), DType::bf16, S, B, W, B * W, W - 8);  // rows of one s overlap
  EXPECT_THROW_NAMING(fwd(), "qkv", ShapeMismatchError);
  qkv = strided3(fake(0), DType::bf16, S, B, W, W, W);  // s and b rows alias
  EXPECT_THROW_NAMING(fwd(), "qkv", ShapeMismatchError);
  qkv = TensorRef::contiguous(static_cast<char*>(fake(0)) + 8, DType::bf16, {S, B, W});  // misaligned base
  EXPECT_THROW_NAMING(fwd(), "qkv", InvalidArgument);
  qkv = TensorRef::contiguous(nullptr, DType::bf16, {S, B, W});
  EXPECT_THROW_NAMING(fwd(), "qkv", InvalidArgument);
}

TEST_F(QkNormRopeErrors, Weights) {
  wq = TensorRef::contiguous(fake(1), DType::bf16, {D / 2});
  EXPECT_THROW_NAMING(fwd(), "q_norm_weight", ShapeMismatchError);
  wq = TensorRef::contiguous(fake(1), DType::f16, {D});
  EXPECT_THROW_NAMING(fwd(), "q_norm_weight", UnsupportedDtypeError);
  wq = TensorRef::contiguous(fake(1), DType::f32, {D});  // fp32 q weight with a bf16 k weight
  EXPECT_THROW_NAMING(fwd(), "k_norm_weight", UnsupportedDtypeError);
  EXPECT_THROW_NAMING(bwd(), "k_norm_weight", UnsupportedDtypeError);
  wq.dtype = DType::bf16;
  wk = TensorRef::contiguous(fake(2), DType::bf16, {1, D});
  EXPECT_THROW_NAMING(fwd(), "k_norm_weight", ShapeMismatchError);
  wk = TensorRef::contiguous(static_cast<char*>(fake(2)) + 2, DType::bf16, {D});
  EXPECT_THROW_NAMING(bwd(), "k_norm_weight", InvalidArgument);
}

TEST_F(QkNormRopeErrors, Freqs) {
  freqs = TensorRef::contiguous(fake(3), DType::f32, {S, D});  // cos/sin-sized, not D/2
  EXPECT_THROW_NAMING(fwd(), "freqs", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "freqs", ShapeMismatchError);
  freqs = TensorRef::contiguous(fake(3), DType::f32, {S - 1, D / 2});  // too few positions
  EXPECT_THROW_NAMING(fwd(), "freqs", ShapeMismatchError);
  freqs = TensorRef::contiguous(fake(3), DType::f32, {S, D / 2});
  opts.position_offset = 1;  // the offset needs one more row
  EXPECT_THROW_NAMING(fwd(), "freqs", ShapeMismatchError);
  opts.position_offset = 0;
  freqs = TensorRef::contiguous(fake(3), DType::bf16, {S, D / 2});
  EXPECT_THROW_NAMING(fwd(), "freqs", UnsupportedDtypeError);
  freqs = TensorRef::contiguous(fake(3), DType::f32, {S, 1, D / 2});
  EXPECT_THROW_NAMING(fwd(), "freqs", ShapeMismatchError);
  freqs = TensorRef::contiguous(fake(3), DType::f32, {S, D / 2});
  freqs.strides[0] = D;  // rows not packed
  EXPECT_THROW_NAMING(fwd(), "freqs", ShapeMismatchError);
}

TEST_F(QkNormRopeErrors, Positions) {
  opts.position_offset = -1;
  EXPECT_THROW_NAMING(fwd(), "position_offset", InvalidArgument);
  opts.position_offset = 0;
  opts.max_seqlen = 8;  // only meaningful with cu_seqlens
  EXPECT_THROW_NAMING(fwd(), "max_seqlen", InvalidArgument);
  opts.max_seqlen = 0;
  opts.cu_seqlens = TensorRef::contiguous(fake(13), DType::i64, {4});
  EXPECT_THROW_NAMING(fwd(), "cu_seqlens", UnsupportedDtypeError);
  EXPECT_THROW_NAMING(bwd(), "cu_seqlens", UnsupportedDtypeError);
  opts.cu_seqlens = TensorRef::contiguous(fake(13), DType::i32, {1});
  EXPECT_THROW_NAMING(fwd(), "cu_seqlens", ShapeMismatchError);
  opts.cu_seqlens = TensorRef::contiguous(fake(13), DType::i32, {2, 2});
  EXPECT_THROW_NAMING(fwd(), "cu_seqlens", ShapeMismatchError);
  opts.cu_seqlens = TensorRef::contiguous(static_cast<char*>(fake(13)) + 2, DType::i32, {4});
  EXPECT_THROW_NAMING(fwd(), "cu_seqlens", InvalidArgument);
  opts.cu_seqlens = TensorRef::contiguous(fake(13), DType::i32, {4});
  opts.max_seqlen = -1;
  EXPECT_THROW_NAMING(fwd(), "max_seqlen", InvalidArgument);
  opts.max_seqlen = S + 1;  // freqs has S rows
  EXPECT_THROW_NAMING(fwd(), "freqs", ShapeMismatchError);
}

TEST_F(QkNormRopeErrors, Eps) {
  for (float e : {-1e-6f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    opts.eps = e;
    EXPECT_THROW_NAMING(fwd(), "eps", InvalidArgument);
    EXPECT_THROW_NAMING(bwd(), "eps", InvalidArgument);
  }
}

TEST_F(QkNormRopeErrors, ForwardOutputs) {
  q = TensorRef::contiguous(fake(4), DType::bf16, {S, B, H, D});  // sbhd instead of bshd
  EXPECT_THROW_NAMING(fwd(), "q", ShapeMismatchError);
  q = TensorRef::contiguous(fake(4), DType::bf16, {B, S, H, D});
  k = TensorRef::contiguous(fake(5), DType::bf16, {B, S, H, D});
  EXPECT_THROW_NAMING(fwd(), "k", ShapeMismatchError);
  k = TensorRef::contiguous(fake(5), DType::bf16, {B, S, h, D});
  v = TensorRef::contiguous(fake(6), DType::f16, {B, S, h, D});
  EXPECT_THROW_NAMING(fwd(), "v", UnsupportedDtypeError);
  v = TensorRef::contiguous(fake(6), DType::bf16, {B, S, h, D});
  v.strides[1] = 2 * h * D;  // not contiguous
  EXPECT_THROW_NAMING(fwd(), "v", ShapeMismatchError);
  v = TensorRef::contiguous(nullptr, DType::bf16, {B, S, h, D});
  EXPECT_THROW_NAMING(fwd(), "v", InvalidArgument);
}

TEST_F(QkNormRopeErrors, BackwardGradients) {
  gq = TensorRef::contiguous(fake(7), DType::bf16, {B, S, h, D});
  EXPECT_THROW_NAMING(bwd(), "gq", ShapeMismatchError);
  gq = TensorRef::contiguous(fake(7), DType::bf16, {B, S, H, D});
  gk = TensorRef::contiguous(fake(8), DType::f32, {B, S, h, D});
  EXPECT_THROW_NAMING(bwd(), "gk", UnsupportedDtypeError);
  gk = TensorRef::contiguous(fake(8), DType::bf16, {B, S, h, D});
  gv = TensorRef::contiguous(fake(9), DType::bf16, {B, S + 1, h, D});
  EXPECT_THROW_NAMING(bwd(), "gv", ShapeMismatchError);
}

TEST_F(QkNormRopeErrors, BackwardOutputs) {
  dqkv = TensorRef::contiguous(fake(10), DType::bf16, {S, B, W - D});
  EXPECT_THROW_NAMING(bwd(), "dqkv", ShapeMismatchError);
  dqkv = TensorRef::contiguous(fake(10), DType::f32, {S, B, W});
  EXPECT_THROW_NAMING(bwd(), "dqkv", UnsupportedDtypeError);
  dqkv = strided3(fake(10), DType::bf16, S, B, W, B * W, W, 2);
  EXPECT_THROW_NAMING(bwd(), "dqkv", ShapeMismatchError);
  dqkv = strided3(fake(10), DType::bf16, S, B, W, B * W, W - 8);  // overlapping rows: a race
  EXPECT_THROW_NAMING(bwd(), "dqkv", ShapeMismatchError);
  dqkv = strided3(fake(10), DType::bf16, S, B, W, B * (W + 4), W + 4);
  EXPECT_THROW_NAMING(bwd(), "dqkv", InvalidArgument);
  dqkv = TensorRef::contiguous(fake(10), DType::bf16, {S, B, W});
  dwq = TensorRef::contiguous(fake(11), DType::bf16, {D});  // fp32 only
  EXPECT_THROW_NAMING(bwd(), "dq_norm_weight", UnsupportedDtypeError);
  dwq = TensorRef::contiguous(fake(11), DType::f32, {D});
  dwk = TensorRef::contiguous(fake(12), DType::f32, {D + 1});
  EXPECT_THROW_NAMING(bwd(), "dk_norm_weight", ShapeMismatchError);
  dwk = TensorRef::contiguous(fake(12), DType::f32, {D});
  ws = TensorRef::contiguous(fake(14), DType::bf16, {4096});
  EXPECT_THROW_NAMING(bwd(), "workspace", UnsupportedDtypeError);
}

TEST_F(QkNormRopeErrors, TooManyRows) {
  const int64_t s = (int64_t{1} << 30) + 1;  // S·B > INT32_MAX
  qkv = TensorRef::contiguous(fake(0), DType::bf16, {s, B, W});
  EXPECT_THROW_NAMING(fwd(), "qkv", InvalidArgument);
  EXPECT_THROW_NAMING(bwd(), "qkv", InvalidArgument);
}

TEST_F(QkNormRopeErrors, NegativeDims) {
  qkv.shape[1] = -B;
  EXPECT_THROW_NAMING(fwd(), "qkv", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "qkv", ShapeMismatchError);
  qkv.shape[1] = B;
  dqkv.shape[0] = -S;
  EXPECT_THROW_NAMING(bwd(), "dqkv", ShapeMismatchError);
}

TEST(QkNormRopeWorkspace, HeadDimChecked) {
  Runtime rt{cpu_options()};
  EXPECT_THROW_NAMING(qk_norm_half_rope_bwd_workspace_elems(rt, 96), "head_dim", InvalidArgument);
}

}  // namespace
}  // namespace kiln::test
