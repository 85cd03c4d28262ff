// tests/batch_reduce_test.cpp — CPU tests of the list reductions: the reference, the family's specializations and
// search space, and every argument error (fake pointers, never dereferenced).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>
#include <vector>

#include "kiln/kiln.hpp"
#include "reference/batch_reduce.hpp"
#include "runtime/family.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

TEST(BatchReduceReference, SumsMaxAndZeros) {
  const std::vector<float> a = {1.f, -2.f, 0.f, -0.f}, b = {3.f}, c = {};
  const std::vector<std::span<const float>> xs = {a, b, c};
  EXPECT_EQ(ref::list_reduce(xs, ref::ListReduce::sum_abs), 6.0);
  EXPECT_EQ(ref::list_reduce(xs, ref::ListReduce::sum_sq), 14.0);
  EXPECT_EQ(ref::list_reduce(xs, ref::ListReduce::max_abs), 3.0);
  EXPECT_EQ(ref::list_reduce(xs, ref::ListReduce::count_zero), 2.0);
  EXPECT_EQ(ref::list_reduce({}, ref::ListReduce::sum_sq), 0.0);
  const std::vector<float> n = {1.f, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_TRUE(std::isnan(ref::list_reduce({n}, ref::ListReduce::max_abs)));
  EXPECT_EQ(ref::list_reduce({n}, ref::ListReduce::count_zero), 0.0);
}

TEST(BatchReduceReference, PairwiseSumIsAccurate) {
  // 2^24 + 1 ones: a float running sum would stop at 2^24.
  const std::vector<float> ones((1 << 24) + 1, 1.f);
  EXPECT_EQ(ref::list_reduce({ones}, ref::ListReduce::sum_abs), 16777217.0);
}

TEST(BatchReduceFamily, EnumeratesNormAndCountAndSearchSpaceKeepsTheDefault) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  const detail::FamilyDef* f = detail::find_family("batch_reduce");
  ASSERT_NE(f, nullptr);
  std::vector<detail::Specialization> specs;
  f->enumerate(load_model("deepseek-v3"), detail::Arch::parse("sm_90a"), specs);
  std::set<int64_t> ops;
  for (const auto& s : specs) {
    ops.insert(s.params[0]);
    std::vector<detail::Specialization> space;
    f->search_space(s, space);
    ASSERT_FALSE(space.empty());
    EXPECT_EQ(space.front().config, s.config) << "the default comes first";
  }
  EXPECT_EQ(ops, (std::set<int64_t>{1, 3}));  // Σx² and the zero count
}

class BatchReduceErrors : public ::testing::Test {
 protected:
  void norm() { batch_sum_with_ord(rt, xs, out, opts, nullptr, launch); }
  void count() { batch_count_zero(rt, xs, count_out, nullptr, launch); }

  Runtime rt{RuntimeOptions{.memory_only = true}};
  std::vector<TensorRef> xs = {TensorRef::contiguous(fake(0), DType::f32, {100, 7}),
                               TensorRef::contiguous(fake(1), DType::bf16, {33}),
                               TensorRef::contiguous(nullptr, DType::f32, {0}),  // empty: may be null
                               TensorRef::contiguous(fake(2), DType::f16, {4, 5, 6})};
  TensorRef out = TensorRef::contiguous(fake(3), DType::f32, {1});
  TensorRef count_out = TensorRef::contiguous(fake(4), DType::i64, {});
  BatchNormOptions opts;
  BatchReduceLaunch launch;
};

TEST_F(BatchReduceErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(norm());
  EXPECT_REACHES_DEVICE(count());
  xs.clear();  // an empty list writes 0: still a device call
  EXPECT_REACHES_DEVICE(norm());
}

TEST_F(BatchReduceErrors, TensorDtypes) {
  xs[1].dtype = DType::i32;
  EXPECT_THROW_NAMING(norm(), "xs[1]", UnsupportedDtypeError);
  xs[1].dtype = DType::e4m3;
  EXPECT_THROW_NAMING(count(), "xs[1]", UnsupportedDtypeError);
}

TEST_F(BatchReduceErrors, NonContiguousTensor) {
  xs[3].strides = {60, 1, 5};  // dims 1 and 2 swapped
  EXPECT_THROW_NAMING(norm(), "xs[3]", ShapeMismatchError);
}

TEST_F(BatchReduceErrors, NullOrMisalignedTensor) {
  xs[0].data = nullptr;
  EXPECT_THROW_NAMING(norm(), "xs[0]", InvalidArgument);
  xs[0].data = static_cast<char*>(fake(0)) + 2;  // not 4-byte aligned for fp32
  EXPECT_THROW_NAMING(norm(), "xs[0]", InvalidArgument);
}

TEST_F(BatchReduceErrors, Output) {
  out.dtype = DType::i64;
  EXPECT_THROW_NAMING(norm(), "out", UnsupportedDtypeError);
  out = TensorRef::contiguous(fake(3), DType::f32, {2});
  EXPECT_THROW_NAMING(norm(), "out", ShapeMismatchError);
  out = TensorRef::contiguous(nullptr, DType::f32, {1});
  EXPECT_THROW_NAMING(norm(), "out", InvalidArgument);
  count_out.dtype = DType::f32;
  EXPECT_THROW_NAMING(count(), "out", UnsupportedDtypeError);
}

TEST_F(BatchReduceErrors, OptionsAndLaunchShape) {
  opts.ord = static_cast<NormOrd>(7);
  EXPECT_THROW_NAMING(norm(), "ord", InvalidArgument);
  opts.ord = NormOrd::l2;
  opts.accumulate = static_cast<Accumulate>(5);
  EXPECT_THROW_NAMING(norm(), "accumulate", InvalidArgument);
  opts.accumulate = Accumulate::f64;
  launch.warps = 5;
  EXPECT_THROW_NAMING(norm(), "warps", InvalidArgument);
  launch.warps = 0;
  launch.max_ctas = -1;
  EXPECT_THROW_NAMING(count(), "max_ctas", InvalidArgument);
}

TEST_F(BatchReduceErrors, NegativeDims) {
  xs[3].shape[1] = -5;
  EXPECT_THROW_NAMING(norm(), "xs[3]", ShapeMismatchError);
  EXPECT_THROW_NAMING(count(), "xs[3]", ShapeMismatchError);
}

TEST_F(BatchReduceErrors, CountOutputAndTensors) {
  count_out = TensorRef::contiguous(fake(4), DType::i64, {2});
  EXPECT_THROW_NAMING(count(), "out", ShapeMismatchError);
  count_out = TensorRef::contiguous(static_cast<char*>(fake(4)) + 4, DType::i64, {1});  // int64: 8-byte aligned
  EXPECT_THROW_NAMING(count(), "out", InvalidArgument);
  count_out = TensorRef::contiguous(fake(4), DType::i64, {});
  xs[1].data = nullptr;
  EXPECT_THROW_NAMING(count(), "xs[1]", InvalidArgument);
  xs[1].data = fake(1);
  xs[3].strides = {60, 1, 5};
  EXPECT_THROW_NAMING(count(), "xs[3]", ShapeMismatchError);
}

TEST_F(BatchReduceErrors, MisalignedOutput) {
  out.data = static_cast<char*>(fake(3)) + 2;  // fp32: 4-byte aligned
  EXPECT_THROW_NAMING(norm(), "out", InvalidArgument);
}

// The chunk index of the whole list is a 32-bit int in the kernel (with room for a doubled grid): at most 2^30 − 1
// chunks of 64 Ki elements.
TEST_F(BatchReduceErrors, ElementCountBeyondTheChunkIndex) {
  xs.push_back(TensorRef::contiguous(fake(5), DType::bf16, {int64_t{1} << 47}));  // 2^31 chunks
  EXPECT_THROW_NAMING(norm(), "xs", InvalidArgument);
  EXPECT_THROW_NAMING(count(), "xs", InvalidArgument);
}

}  // namespace
}  // namespace kiln::test
