// tests/softmax_cross_entropy_test.cpp — CPU tests of the softmax cross-entropy family: the reference against
// independent formulas (naive log-sum-exp, the label-smoothing definition, finite differences), rendering and NVRTC
// compilation of specializations beyond the presets, the search space's pruning, and every argument error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kiln/kiln.hpp"
#include "reference/softmax_cross_entropy.hpp"
#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "compile_util.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

using detail::Arch;
using detail::FamilyDef;
using detail::Specialization;

// ---- the reference ----------------------------------------------------------------------------------------------

TEST(SoftmaxCrossEntropyReference, UniformRowGivesLogV) {
  const int64_t V = 1000;
  std::vector<float> z(V, 0.f);
  const ref::CeRow r = ref::softmax_cross_entropy_row(z, 3, {});
  EXPECT_NEAR(r.loss, std::log(1000.0), 1e-12);
  EXPECT_EQ(r.max, 0.0);
  EXPECT_NEAR(r.sum_exp, 1000.0, 1e-9);
  std::vector<double> g(V);
  ref::softmax_cross_entropy_grad_row(z, 3, r, 2.0, {}, g);
  EXPECT_NEAR(g[0], 2.0 / 1000, 1e-15);
  EXPECT_NEAR(g[3], 2.0 * (1.0 / 1000 - 1), 1e-15);
}

TEST(SoftmaxCrossEntropyReference, MatchesNaiveLogSumExpAndStaysFiniteOnVeryNegativeRows) {
  const std::vector<float> z = randn(777, 5, 3.0f);
  double s = 0;
  for (float v : z) s += std::exp(static_cast<double>(v));
  const ref::CeRow r = ref::softmax_cross_entropy_row(z, 776, {});
  EXPECT_NEAR(r.loss, std::log(s) - z[776], 1e-12);
  // −1e4 everywhere: exp underflows without the max subtraction; the loss is log V.
  std::vector<float> neg(777, -1e4f);
  const ref::CeRow n = ref::softmax_cross_entropy_row(neg, 0, {});
  EXPECT_NEAR(n.loss, std::log(777.0), 1e-9);
}

TEST(SoftmaxCrossEntropyReference, LabelSmoothingIsTheMixtureOfTargets) {
  const std::vector<float> z = randn(50, 6, 2.0f);
  const double eps = 0.1;
  // (1 − ε)·CE(y) + ε·mean_j CE(j)
  double mean_ce = 0;
  for (int j = 0; j < 50; ++j) mean_ce += ref::softmax_cross_entropy_row(z, j, {}).loss / 50;
  const double want = (1 - eps) * ref::softmax_cross_entropy_row(z, 7, {}).loss + eps * mean_ce;
  ref::CeOptions o;
  o.smoothing = eps;
  EXPECT_NEAR(ref::softmax_cross_entropy_row(z, 7, o).loss, want, 1e-12);
}

TEST(SoftmaxCrossEntropyReference, GradientMatchesFiniteDifferences) {
  std::vector<float> z = randn(40, 7, 1.5f);
  ref::CeOptions o;
  o.smoothing = 0.2;
  o.z_loss = 0.05;
  const int64_t y = 11;
  const double g = 1.7;
  std::vector<double> grad(40);
  ref::softmax_cross_entropy_grad_row(z, y, ref::softmax_cross_entropy_row(z, y, o), g, o, grad);
  for (int j = 0; j < 40; ++j) {
    const float h = 1.0f / 64;  // exact in float, so z ± h is exact
    std::vector<float> zp = z, zm = z;
    zp[j] += h;
    zm[j] -= h;
    const double fd =
        g * (ref::softmax_cross_entropy_row(zp, y, o).loss - ref::softmax_cross_entropy_row(zm, y, o).loss) / (2 * h);
    EXPECT_NEAR(grad[j], fd, 2e-4) << "j = " << j;
  }
}

TEST(SoftmaxCrossEntropyReference, IgnoredAndBadRows) {
  const std::vector<float> z = randn(10, 8);
  const ref::CeRow i = ref::softmax_cross_entropy_row(z, -100, {});
  EXPECT_TRUE(i.ignored);
  EXPECT_EQ(i.loss, 0.0);
  EXPECT_EQ(i.sum_exp, 0.0);
  const ref::CeRow b = ref::softmax_cross_entropy_row(z, 10, {});
  EXPECT_TRUE(b.bad);
  EXPECT_TRUE(std::isnan(b.loss));
  std::vector<double> g(10, 1.0);
  ref::softmax_cross_entropy_grad_row(z, 10, b, 1.0, {}, g);
  for (double v : g) EXPECT_EQ(v, 0.0);
}

// ---- specializations ---------------------------------------------------------------------------------------------

const FamilyDef& family() { return registered_family("softmax_cross_entropy"); }

enum Kernel : uint32_t { kFwd = 0, kFused = 1, kBwd = 2, kMerge = 3, kBatch = 4 };

// The heuristic default of a kernel at the given params (the first point of its search space).
Specialization spec(uint32_t kernel, int64_t V, DType t, DType label, bool smooth, DType grad = DType::f32,
                    const char* arch = "sm_90a", int mode = 0) {
  Specialization s;
  s.family = &family();
  s.arch = Arch::parse(arch);
  s.kernel = kernel;
  if (kernel <= kBwd) {
    s.params[0] = V;
    s.params[1] = static_cast<int64_t>(t);
  }
  s.params[2] = static_cast<int64_t>(label);
  if (kernel != kBatch) s.params[3] = smooth;
  if (kernel == kBwd) s.params[4] = static_cast<int64_t>(grad);
  if (kernel == kBatch) s.params[5] = mode;
  std::vector<Specialization> space;
  family().search_space(s, space);
  if (space.empty()) throw std::runtime_error("empty search space");
  return space.front();
}

TEST(SoftmaxCrossEntropyCompile, SpecializationsBeyondThePresetsCompile) {
  expect_compiles({
      spec(kFwd, 157168, DType::bf16, DType::i32, true),   // V not a multiple of 64, int32 labels, smoothing
      spec(kFused, 157168, DType::bf16, DType::i32, true),
      spec(kBwd, 157168, DType::f16, DType::i64, true, DType::bf16),
      spec(kFwd, 50257, DType::f32, DType::i64, false),    // odd V: rows cross 16-byte boundaries
      spec(kBwd, 50257, DType::f32, DType::i64, false, DType::f16),
      spec(kFused, 157184, DType::f32, DType::i64, false),  // fp32: a non-portable cluster of 16
      spec(kMerge, 0, DType::f32, DType::i32, true),
      spec(kFwd, 129280, DType::bf16, DType::i64, false, DType::f32, "sm_80"),
  });
}

TEST(SoftmaxCrossEntropySearchSpace, DefaultsAndPruning) {
  // bf16 V = 157184: forward in clusters of 2, fused in clusters of 8 (39 KB slices), backward in 5 parts.
  EXPECT_EQ(spec(kFwd, 157184, DType::bf16, DType::i64, false).config[0], 2);
  const Specialization fused = spec(kFused, 157184, DType::bf16, DType::i64, false);
  EXPECT_EQ(fused.config[0], 8);
  EXPECT_LE(family().dynamic_smem_bytes(fused), 48 * 1024);
  EXPECT_EQ(spec(kBwd, 157184, DType::bf16, DType::i64, false).config[0], 5);
  // bf16 V = 151936 (qwen3): clusters of 4, whose 76 KB slices fit 3 CTAs an SM (228 KB of a row's slices against
  // 190 KB for clusters of 8: session 18's tune, 1737 vs 1825 µs); V = 129280 (deepseek): 4 or 8 hold the same, 8
  // stays.
  EXPECT_EQ(spec(kFused, 151936, DType::bf16, DType::i64, false).config[0], 4);
  EXPECT_EQ(spec(kFused, 151936, DType::bf16, DType::i64, false).config[1], 512);  // 4748-chunk slices
  EXPECT_EQ(fused.config[1], 256);
  EXPECT_EQ(spec(kFused, 129280, DType::bf16, DType::i64, false).config[0], 8);
  // fp32 at the same V needs a cluster of 16.
  EXPECT_EQ(spec(kFused, 157184, DType::f32, DType::i64, false).config[0], 16);
  // A row that no cluster of ≤ 16 CTAs holds in shared memory: no single-pass kernel (the op runs fwd + bwd).
  EXPECT_EQ(spec(kFused, 1 << 20, DType::f32, DType::i64, false).config[0], 0);
  // Before sm_90: no clusters, no fused kernel.
  EXPECT_EQ(spec(kFused, 157184, DType::bf16, DType::i64, false, DType::f32, "sm_80").config[0], 0);
  Specialization f80 = spec(kFwd, 157184, DType::bf16, DType::i64, false, DType::f32, "sm_80");
  std::vector<Specialization> space;
  family().search_space(f80, space);
  for (const auto& s : space) EXPECT_EQ(s.config[0], 1) << s.describe();
  // Every fused point fits shared memory.
  space.clear();
  family().search_space(fused, space);
  EXPECT_GE(space.size(), 3u);
  for (const auto& s : space) EXPECT_LE(family().dynamic_smem_bytes(s), 227 * 1024 - 1024) << s.describe();
}

// ---- argument errors ---------------------------------------------------------------------------------------------

class SoftmaxCrossEntropyErrors : public ::testing::Test {
 protected:
  static constexpr int64_t M = 64, V = 1000;
  void fwd() { softmax_cross_entropy_fwd(rt, logits, labels, loss, row_max, sum_exp, opts, nullptr); }
  void bwd() { softmax_cross_entropy_bwd(rt, logits, labels, row_max, sum_exp, grad_loss, dlogits, opts, nullptr); }
  void fused() { softmax_cross_entropy_fused(rt, logits, labels, loss, dlogits, fopts, opts, nullptr); }
  void partial() { softmax_cross_entropy_partial_fwd(rt, logits, labels, partial_out, popts(), nullptr); }
  void merge() { softmax_cross_entropy_merge(rt, partials, labels, loss, row_max, sum_exp, mopts(), nullptr); }
  CrossEntropyOptions popts() const {
    CrossEntropyOptions o = opts;
    o.vocab_start = 2 * V;
    o.vocab_total = 4 * V;
    return o;
  }
  CrossEntropyOptions mopts() const {
    CrossEntropyOptions o = opts;
    o.vocab_total = 4 * V;
    return o;
  }

  Runtime rt{cpu_options()};
  TensorRef logits = TensorRef::contiguous(fake(0), DType::bf16, {M, V});
  TensorRef labels = TensorRef::contiguous(fake(1), DType::i64, {M});
  TensorRef loss = TensorRef::contiguous(fake(2), DType::f32, {M});
  TensorRef row_max = TensorRef::contiguous(fake(3), DType::f32, {M});
  TensorRef sum_exp = TensorRef::contiguous(fake(4), DType::f32, {M});
  TensorRef grad_loss = TensorRef::contiguous(fake(5), DType::f32, {M});
  TensorRef dlogits = TensorRef::contiguous(fake(6), DType::bf16, {M, V});
  TensorRef partial_out = TensorRef::contiguous(fake(7), DType::f32, {4, M});
  TensorRef partials = TensorRef::contiguous(fake(8), DType::f32, {4, 4, M});
  CrossEntropyOptions opts;
  FusedCrossEntropyOptions fopts;
};

TEST_F(SoftmaxCrossEntropyErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(fwd());
  EXPECT_REACHES_DEVICE(bwd());
  EXPECT_REACHES_DEVICE(fused());
  EXPECT_REACHES_DEVICE(partial());
  EXPECT_REACHES_DEVICE(merge());
}

TEST_F(SoftmaxCrossEntropyErrors, ValidVariantsReachTheDevice) {
  logits = TensorRef::contiguous(fake(0), DType::f32, {2, M / 2, V});  // [B, S, V], fp32
  dlogits = TensorRef::contiguous(fake(6), DType::f32, {2, M / 2, V});
  labels = TensorRef::contiguous(fake(1), DType::i32, {2, M / 2});
  grad_loss.dtype = DType::bf16;
  EXPECT_REACHES_DEVICE(fwd());
  EXPECT_REACHES_DEVICE(bwd());
  dlogits = logits;  // in place
  EXPECT_REACHES_DEVICE(fused());
}

TEST_F(SoftmaxCrossEntropyErrors, EmptyBatchReturnsWithoutTheDevice) {
  logits = TensorRef::contiguous(nullptr, DType::bf16, {0, V});
  dlogits = logits;
  labels = TensorRef::contiguous(nullptr, DType::i64, {0});
  loss = row_max = sum_exp = grad_loss = TensorRef::contiguous(nullptr, DType::f32, {0});
  EXPECT_NO_THROW(fwd());
  EXPECT_NO_THROW(bwd());
}

TEST_F(SoftmaxCrossEntropyErrors, LogitsDtypeShapeAndLayout) {
  logits.dtype = DType::e4m3;
  EXPECT_THROW_NAMING(fwd(), "logits", UnsupportedDtypeError);
  logits = TensorRef::contiguous(fake(0), DType::bf16, {M * V});
  EXPECT_THROW_NAMING(fwd(), "logits", ShapeMismatchError);
  logits = TensorRef::contiguous(fake(0), DType::bf16, {M, V});
  logits.strides = {V, 2};  // columns not contiguous
  EXPECT_THROW_NAMING(fwd(), "logits", ShapeMismatchError);
  logits = TensorRef::strided_2d(fake(0), DType::bf16, M, V, V - 1);  // overlapping rows
  EXPECT_THROW_NAMING(fwd(), "logits", ShapeMismatchError);
  logits = TensorRef::contiguous(fake(0), DType::bf16, {2, M / 2, V});
  logits.strides = {V * M, V, 1};  // dims 0 and 1 do not collapse
  EXPECT_THROW_NAMING(fwd(), "logits", ShapeMismatchError);
  logits = TensorRef::contiguous(static_cast<char*>(fake(0)) + 1, DType::bf16, {M, V});  // not element-aligned
  EXPECT_THROW_NAMING(fwd(), "logits", InvalidArgument);
  logits = TensorRef::contiguous(nullptr, DType::bf16, {M, V});
  EXPECT_THROW_NAMING(fwd(), "logits", InvalidArgument);
  logits = TensorRef::contiguous(fake(0), DType::bf16, {M, 0});
  EXPECT_THROW_NAMING(fwd(), "logits", ShapeMismatchError);
}

TEST_F(SoftmaxCrossEntropyErrors, MismatchedRowCounts) {
  labels = TensorRef::contiguous(fake(1), DType::i64, {M + 1});
  EXPECT_THROW_NAMING(fwd(), "labels", ShapeMismatchError);
  labels = TensorRef::contiguous(fake(1), DType::i64, {M});
  loss = TensorRef::contiguous(fake(2), DType::f32, {M - 1});
  EXPECT_THROW_NAMING(fwd(), "loss", ShapeMismatchError);
  EXPECT_THROW_NAMING(fused(), "loss", ShapeMismatchError);
  loss = TensorRef::contiguous(fake(2), DType::f32, {M});
  row_max = TensorRef::contiguous(fake(3), DType::f32, {2 * M});
  EXPECT_THROW_NAMING(fwd(), "row_max", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "row_max", ShapeMismatchError);
  row_max = TensorRef::contiguous(fake(3), DType::f32, {M});
  grad_loss = TensorRef::contiguous(fake(5), DType::f32, {M, 2});
  EXPECT_THROW_NAMING(bwd(), "grad_loss", ShapeMismatchError);
  partial_out = TensorRef::contiguous(fake(7), DType::f32, {3, M});
  EXPECT_THROW_NAMING(partial(), "partial", ShapeMismatchError);
  partials = TensorRef::contiguous(fake(8), DType::f32, {4, 3, M});
  EXPECT_THROW_NAMING(merge(), "partials", ShapeMismatchError);
  partials = TensorRef::contiguous(fake(8), DType::f32, {4, 4, M + 1});
  EXPECT_THROW_NAMING(merge(), "labels", ShapeMismatchError);
}

TEST_F(SoftmaxCrossEntropyErrors, WrongDtypes) {
  labels.dtype = DType::f32;
  EXPECT_THROW_NAMING(fwd(), "labels", UnsupportedDtypeError);
  labels.dtype = DType::i16;
  EXPECT_THROW_NAMING(fwd(), "labels", UnsupportedDtypeError);
  labels.dtype = DType::i64;
  loss.dtype = DType::bf16;
  EXPECT_THROW_NAMING(fwd(), "loss", UnsupportedDtypeError);
  loss.dtype = DType::f32;
  sum_exp.dtype = DType::f16;
  EXPECT_THROW_NAMING(fwd(), "sum_exp", UnsupportedDtypeError);
  sum_exp.dtype = DType::f32;
  grad_loss.dtype = DType::i32;
  EXPECT_THROW_NAMING(bwd(), "grad_loss", UnsupportedDtypeError);
  grad_loss.dtype = DType::f32;
  dlogits.dtype = DType::f32;  // must be the logits' dtype
  EXPECT_THROW_NAMING(bwd(), "dlogits", UnsupportedDtypeError);
  EXPECT_THROW_NAMING(fused(), "dlogits", UnsupportedDtypeError);
  dlogits.dtype = DType::bf16;
  partials.dtype = DType::bf16;
  EXPECT_THROW_NAMING(merge(), "partials", UnsupportedDtypeError);
}

TEST_F(SoftmaxCrossEntropyErrors, StatsComeTogetherAndTheBackwardNeedsThem) {
  sum_exp = {};
  EXPECT_THROW_NAMING(fwd(), "sum_exp", InvalidArgument);
  EXPECT_THROW_NAMING(bwd(), "sum_exp", InvalidArgument);
  row_max = {};
  EXPECT_REACHES_DEVICE(fwd());  // neither: fine for the forward
  EXPECT_THROW_NAMING(bwd(), "row_max", InvalidArgument);
}

TEST_F(SoftmaxCrossEntropyErrors, DlogitsLayout) {
  dlogits = TensorRef::contiguous(fake(6), DType::bf16, {M, V + 8});
  EXPECT_THROW_NAMING(bwd(), "dlogits", ShapeMismatchError);
  // Partial overlap with the logits.
  dlogits = TensorRef::contiguous(static_cast<char*>(fake(0)) + 64, DType::bf16, {M, V});
  EXPECT_THROW_NAMING(bwd(), "dlogits", InvalidArgument);
  EXPECT_THROW_NAMING(fused(), "dlogits", InvalidArgument);
  // In place with another row stride.
  logits = TensorRef::strided_2d(fake(0), DType::bf16, M, V, V + 8);
  dlogits = TensorRef::contiguous(fake(0), DType::bf16, {M, V});
  EXPECT_THROW_NAMING(bwd(), "dlogits", InvalidArgument);
  // Disjoint, but rows at another 16-byte phase.
  logits = TensorRef::contiguous(fake(0), DType::bf16, {M, V});
  dlogits = TensorRef::contiguous(static_cast<char*>(fake(6)) + 2, DType::bf16, {M, V});
  EXPECT_THROW_NAMING(bwd(), "dlogits", InvalidArgument);
}

TEST_F(SoftmaxCrossEntropyErrors, OptionValues) {
  for (float eps : {-0.1f, 1.0f, std::numeric_limits<float>::quiet_NaN()}) {
    opts.label_smoothing = eps;
    EXPECT_THROW_NAMING(fwd(), "label_smoothing", InvalidArgument);
  }
  opts.label_smoothing = 0;
  for (float z : {-1.f, std::numeric_limits<float>::infinity()}) {
    opts.z_loss = z;
    EXPECT_THROW_NAMING(fwd(), "z_loss", InvalidArgument);
  }
  opts.z_loss = 0;
  opts.vocab_start = 10;  // the plain forward needs the whole vocabulary
  EXPECT_THROW_NAMING(fwd(), "vocab_start", InvalidArgument);
  EXPECT_THROW_NAMING(fused(), "vocab_start", InvalidArgument);
  opts.vocab_start = 0;
  opts.vocab_total = V + 1;
  EXPECT_THROW_NAMING(fwd(), "vocab_total", InvalidArgument);
  opts.vocab_total = 0;
  opts.bad_label_row = TensorRef::contiguous(fake(9), DType::i64, {1});
  EXPECT_THROW_NAMING(fwd(), "bad_label_row", UnsupportedDtypeError);
  opts.bad_label_row = TensorRef::contiguous(fake(9), DType::i32, {2});
  EXPECT_THROW_NAMING(fwd(), "bad_label_row", ShapeMismatchError);
  opts.bad_label_row = TensorRef::contiguous(fake(9), DType::i32, {1});
  EXPECT_THROW_NAMING(bwd(), "bad_label_row", InvalidArgument);
  fopts.scale = std::numeric_limits<float>::infinity();
  EXPECT_THROW_NAMING(fused(), "scale", InvalidArgument);
  fopts.scale = 1;
  fopts.loss_total = TensorRef::contiguous(fake(10), DType::f32, {2});
  EXPECT_THROW_NAMING(fused(), "loss_total", ShapeMismatchError);
}

TEST_F(SoftmaxCrossEntropyErrors, NegativeDimsAndRowsBeyondInt32) {
  logits.shape[0] = -M;
  EXPECT_THROW_NAMING(fwd(), "logits", ShapeMismatchError);
  EXPECT_THROW_NAMING(fused(), "logits", ShapeMismatchError);
  logits = TensorRef::contiguous(fake(0), DType::bf16, {int64_t{1} << 16, int64_t{1} << 15, V});  // 2^31 rows
  EXPECT_THROW_NAMING(fwd(), "logits", InvalidArgument);
  EXPECT_THROW_NAMING(bwd(), "logits", InvalidArgument);
  EXPECT_THROW_NAMING(partial(), "logits", InvalidArgument);
}

TEST_F(SoftmaxCrossEntropyErrors, NullMisalignedAndStridedPerRowTensors) {
  labels.data = nullptr;
  EXPECT_THROW_NAMING(fwd(), "labels", InvalidArgument);
  labels.data = static_cast<char*>(fake(1)) + 4;  // int64: 8-byte aligned
  EXPECT_THROW_NAMING(fwd(), "labels", InvalidArgument);
  labels = TensorRef::strided_2d(fake(1), DType::i64, 2, M / 2, M);  // [B, S] with padded rows: not contiguous
  EXPECT_THROW_NAMING(fwd(), "labels", ShapeMismatchError);
  labels = TensorRef::contiguous(fake(1), DType::i64, {M});
  loss.data = static_cast<char*>(fake(2)) + 2;
  EXPECT_THROW_NAMING(fwd(), "loss", InvalidArgument);
  EXPECT_THROW_NAMING(fused(), "loss", InvalidArgument);
  loss.data = fake(2);
  grad_loss.data = nullptr;
  EXPECT_THROW_NAMING(bwd(), "grad_loss", InvalidArgument);
  grad_loss.data = fake(5);
  dlogits.data = nullptr;
  EXPECT_THROW_NAMING(bwd(), "dlogits", InvalidArgument);
}

TEST_F(SoftmaxCrossEntropyErrors, ShardOutsideTheVocabulary) {
  CrossEntropyOptions o = popts();
  o.vocab_total = 2 * V + V / 2;  // the shard [2V, 3V) sticks out
  EXPECT_THROW_NAMING(softmax_cross_entropy_partial_fwd(rt, logits, labels, partial_out, o, nullptr), "vocab_total",
                      InvalidArgument);
  o.vocab_start = -1;
  o.vocab_total = 4 * V;
  EXPECT_THROW_NAMING(softmax_cross_entropy_partial_fwd(rt, logits, labels, partial_out, o, nullptr), "vocab_start",
                      InvalidArgument);
  o = mopts();
  o.vocab_total = 0;  // the merge needs the full vocabulary size
  EXPECT_THROW_NAMING(softmax_cross_entropy_merge(rt, partials, labels, loss, row_max, sum_exp, o, nullptr),
                      "vocab_total", InvalidArgument);
}

}  // namespace
}  // namespace kiln::test
