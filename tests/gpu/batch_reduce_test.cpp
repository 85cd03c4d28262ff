// tests/gpu/batch_reduce_test.cpp — batch_sum_with_ord / batch_count_zero on the GPU against the fp64 reference.
//
// Lists of 1 to 1000 tensors of odd sizes (empty ones included), fp32, bf16 and mixed, some starting off a 16-byte
// boundary; an empty list; NaN and signed zeros; large tensors. Tolerances (relative): fp64 accumulation 1e-6 (the
// fp32 output's rounding is 6e-8), fp32 accumulation 2e-5 (fp32 sums of 4096 positive terms per sub-chunk);
// max|x| and the zero count exact. The result must be bit-identical across launch shapes (grid size, block size).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kiln/ops/batch_reduce.hpp"
#include "reference/batch_reduce.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A list on the device: every tensor a view into one buffer, at a 256-byte boundary plus `misalign` elements.
struct DeviceList {
  std::vector<std::vector<float>> values;  // as the kernel reads them (rounded to each tensor's dtype)
  std::vector<DType> dtypes;
  std::vector<TensorRef> refs;
  DeviceBuffer buf;

  std::vector<std::span<const float>> spans() const {
    std::vector<std::span<const float>> s;
    for (const auto& v : values) s.emplace_back(v);
    return s;
  }
};

enum class Mix { f32, bf16, mixed };

// n tensors; sizes drawn from odd sizes around the chunk boundaries (65536 elements) and sub-chunks (4096), up to
// `max_size`; about `zero_per_mille`‰ exact zeros (half of them −0); per-tensor scales from 1e-4 to 1e2.
DeviceList make_list(Runtime& rt, int n, uint64_t seed, Mix mix, int64_t max_size, int zero_per_mille = 20) {
  static const int64_t odd[] = {0, 1, 3, 7, 31, 255, 4095, 4096, 4097, 65535, 65536, 65537, 131071, 200003};
  DeviceList l;
  uint64_t s = seed;
  std::vector<int64_t> offsets;
  int64_t bytes = 0;
  for (int i = 0; i < n; ++i) {
    const uint64_t r = splitmix(s);
    int64_t size = (r & 1) ? odd[(r >> 1) % 14] : static_cast<int64_t>((r >> 8) % static_cast<uint64_t>(max_size + 1));
    size = std::min(size, max_size);
    const DType dt = mix == Mix::f32 ? DType::f32 : mix == Mix::bf16 ? DType::bf16 : ((r >> 40) & 1 ? DType::f32 : DType::bf16);
    const int64_t mis = (r >> 50) % 3 == 0 ? static_cast<int64_t>((r >> 52) % 3 + 1) : 0;
    const float scale = std::pow(10.f, static_cast<float>((r >> 56) % 7) - 4.f);
    std::vector<float> v = randn(size, mix_seed({seed, static_cast<uint64_t>(i)}), scale);
    for (auto& x : v) {
      const uint64_t z = splitmix(s) % 1000;
      if (static_cast<int>(z) < zero_per_mille) x = (z & 1) ? -0.f : 0.f;
    }
    round_to(dt, v);
    bytes = (bytes + 255) / 256 * 256 + mis * static_cast<int64_t>(dtype_size(dt));
    offsets.push_back(bytes);
    bytes += size * static_cast<int64_t>(dtype_size(dt));
    l.values.push_back(std::move(v));
    l.dtypes.push_back(dt);
  }
  l.buf = DeviceBuffer(rt, static_cast<size_t>(std::max<int64_t>(bytes, 16)));
  std::vector<uint8_t> host(static_cast<size_t>(std::max<int64_t>(bytes, 16)), 0);
  for (int i = 0; i < n; ++i) {
    const std::vector<uint8_t> e = encode(l.dtypes[i], l.values[i]);
    std::memcpy(host.data() + offsets[i], e.data(), e.size());
    l.refs.push_back(TensorRef::contiguous(static_cast<char*>(l.buf.data()) + offsets[i], l.dtypes[i],
                                           {static_cast<int64_t>(l.values[i].size())}));
  }
  l.buf.upload(host);
  return l;
}

class BatchReduceTest : public GpuTest {
 protected:
  static float sum(const DeviceList& l, const BatchNormOptions& o, const BatchReduceLaunch& launch = {}) {
    DeviceBuffer out(rt(), 4);
    out.poison();
    batch_sum_with_ord(rt(), l.refs, out.ref(DType::f32, {1}), o, nullptr, launch);
    synchronize();
    EXPECT_TRUE(out.guards_intact());
    return out.download<float>(1)[0];
  }
  static int64_t zeros(const DeviceList& l, const BatchReduceLaunch& launch = {}) {
    DeviceBuffer out(rt(), 8);
    out.poison();
    batch_count_zero(rt(), l.refs, out.ref(DType::i64, {}), nullptr, launch);
    synchronize();
    EXPECT_TRUE(out.guards_intact());
    return out.download<int64_t>(1)[0];
  }
};

::testing::AssertionResult close(float got, double want, double rel) {
  if (std::isnan(want) ? std::isnan(got) : std::fabs(got - want) <= rel * std::fabs(want))
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << show(got) << ", want " << want << " (relative error "
                                       << std::fabs(got - want) / std::fabs(want) << ", tolerance " << rel << ")";
}

struct ListCase {
  int n;
  Mix mix;
  int64_t max_size;
};

class BatchReduceLists : public BatchReduceTest, public ::testing::WithParamInterface<ListCase> {};

TEST_P(BatchReduceLists, MatchReference) {
  const ListCase c = GetParam();
  const DeviceList l = make_list(rt(), c.n, mix_seed({0xb7, static_cast<uint64_t>(c.n), static_cast<uint64_t>(c.mix)}),
                                 c.mix, c.max_size);
  const auto xs = l.spans();
  const double s1 = ref::list_reduce(xs, ref::ListReduce::sum_abs), s2 = ref::list_reduce(xs, ref::ListReduce::sum_sq);
  const double mx = ref::list_reduce(xs, ref::ListReduce::max_abs), nz = ref::list_reduce(xs, ref::ListReduce::count_zero);
  for (Accumulate acc : {Accumulate::f64, Accumulate::f32}) {
    SCOPED_TRACE(acc == Accumulate::f64 ? "fp64 accumulation" : "fp32 accumulation");
    const double rel = acc == Accumulate::f64 ? 1e-6 : 2e-5;
    EXPECT_TRUE(close(sum(l, {NormOrd::l1, false, acc}), s1, rel)) << "Σ|x|";
    EXPECT_TRUE(close(sum(l, {NormOrd::l2, false, acc}), s2, rel)) << "Σx²";
    EXPECT_TRUE(close(sum(l, {NormOrd::l2, true, acc}), std::sqrt(s2), rel)) << "√Σx²";
    EXPECT_EQ(sum(l, {NormOrd::inf, false, acc}), static_cast<float>(mx)) << "max|x|";
    EXPECT_EQ(sum(l, {NormOrd::inf, true, acc}), static_cast<float>(mx)) << "max|x| (root ignored)";
  }
  EXPECT_EQ(zeros(l), static_cast<int64_t>(nz));
}

INSTANTIATE_TEST_SUITE_P(Grid, BatchReduceLists,
                         ::testing::Values(ListCase{1, Mix::f32, 1000}, ListCase{1, Mix::bf16, 300000},
                                           ListCase{2, Mix::f32, 70000}, ListCase{17, Mix::mixed, 300000},
                                           ListCase{100, Mix::bf16, 100000}, ListCase{1000, Mix::f32, 100000},
                                           ListCase{1000, Mix::mixed, 20000}),
                         [](const ::testing::TestParamInfo<ListCase>& i) {
                           const char* m = i.param.mix == Mix::f32 ? "f32" : i.param.mix == Mix::bf16 ? "bf16" : "mixed";
                           return std::to_string(i.param.n) + "_" + m + "_max" + std::to_string(i.param.max_size);
                         });

// The same bits for any grid size and block size.
TEST_F(BatchReduceTest, BitIdenticalAcrossLaunchShapes) {
  DeviceList l = make_list(rt(), 300, 0xb8, Mix::mixed, 3'000'000);
  const std::vector<BatchReduceLaunch> shapes = {{0, 0}, {1, 16}, {5, 4}, {1000, 8}, {3, 16}};
  for (const BatchNormOptions& o : {BatchNormOptions{NormOrd::l2, false, Accumulate::f64},
                                    BatchNormOptions{NormOrd::l2, true, Accumulate::f32},
                                    BatchNormOptions{NormOrd::l1, false, Accumulate::f64}}) {
    const float base = sum(l, o);
    for (const auto& s : shapes)
      EXPECT_EQ(std::bit_cast<uint32_t>(sum(l, o, s)), std::bit_cast<uint32_t>(base))
          << "max_ctas " << s.max_ctas << " warps " << s.warps << ": " << show(sum(l, o, s)) << " vs " << show(base);
  }
  const int64_t z = zeros(l);
  for (const auto& s : shapes) EXPECT_EQ(zeros(l, s), z);
}

TEST_F(BatchReduceTest, EmptyListAndEmptyTensorsGiveZero) {
  DeviceList none = make_list(rt(), 0, 1, Mix::f32, 10);
  EXPECT_EQ(sum(none, {}), 0.f);
  EXPECT_EQ(zeros(none), 0);
  DeviceList empties = make_list(rt(), 5, 2, Mix::f32, 0);  // five empty tensors
  EXPECT_EQ(sum(empties, {NormOrd::l1}), 0.f);
  EXPECT_EQ(sum(empties, {NormOrd::inf}), 0.f);
  EXPECT_EQ(zeros(empties), 0);
}

// Uploads explicit fp32 tensors as a list (each at a 256-byte boundary).
DeviceList explicit_list(Runtime& rt, std::vector<std::vector<float>> values) {
  DeviceList l;
  size_t bytes = 0;
  std::vector<size_t> offsets;
  for (const auto& v : values) {
    offsets.push_back(bytes);
    bytes += (v.size() * 4 + 255) / 256 * 256;
  }
  l.buf = DeviceBuffer(rt, std::max<size_t>(bytes, 16));
  std::vector<uint8_t> host(std::max<size_t>(bytes, 16), 0);
  for (size_t i = 0; i < values.size(); ++i) {
    std::memcpy(host.data() + offsets[i], values[i].data(), values[i].size() * 4);
    l.refs.push_back(TensorRef::contiguous(static_cast<char*>(l.buf.data()) + offsets[i], DType::f32,
                                           {static_cast<int64_t>(values[i].size())}));
    l.dtypes.push_back(DType::f32);
  }
  l.buf.upload(host);
  l.values = std::move(values);
  return l;
}

TEST_F(BatchReduceTest, NanPropagatesAndSignedZerosCount) {
  std::vector<std::vector<float>> v = {randn(1000, 31), randn(5000, 32), randn(77, 33)};
  v[1][123] = std::numeric_limits<float>::quiet_NaN();
  v[2][7] = -0.f;
  v[2][8] = 0.f;
  const DeviceList l = explicit_list(rt(), v);
  EXPECT_TRUE(std::isnan(sum(l, {NormOrd::l2})));
  EXPECT_TRUE(std::isnan(sum(l, {NormOrd::l1})));
  EXPECT_TRUE(std::isnan(sum(l, {NormOrd::inf})));
  EXPECT_EQ(zeros(l), static_cast<int64_t>(ref::list_reduce(l.spans(), ref::ListReduce::count_zero)));
  EXPECT_GE(zeros(l), 2);
  // Without the NaN, max|x| is exact.
  v[1][123] = 0.5f;
  const DeviceList clean = explicit_list(rt(), v);
  EXPECT_EQ(sum(clean, {NormOrd::inf}), static_cast<float>(ref::list_reduce(clean.spans(), ref::ListReduce::max_abs)));
}

// Large tensors (2048 chunks, 32 groups): the sums stay within tolerance, the count exact.
TEST_F(BatchReduceTest, LargeTensors) {
  const int64_t n = int64_t{4096} * 8192;
  DeviceList l;
  l.buf = DeviceBuffer(rt(), static_cast<size_t>(4 * n * 4));
  for (int i = 0; i < 4; ++i) {
    std::vector<float> v = randn(n, mix_seed({0xb9, static_cast<uint64_t>(i)}), 1e-3f);
    for (int64_t k = i; k < n; k += 97) v[k] = 0.f;
    const std::vector<uint8_t> e = encode(DType::f32, v);
    detail::check(detail::driver().cuMemcpyHtoD(reinterpret_cast<CUdeviceptr>(l.buf.data()) + i * n * 4, e.data(), e.size()), "upload");
    l.refs.push_back(TensorRef::contiguous(static_cast<char*>(l.buf.data()) + i * n * 4, DType::f32, {4096, 8192}));
    l.values.push_back(std::move(v));
    l.dtypes.push_back(DType::f32);
  }
  const auto xs = l.spans();
  EXPECT_TRUE(close(sum(l, {NormOrd::l2}), ref::list_reduce(xs, ref::ListReduce::sum_sq), 1e-6));
  EXPECT_TRUE(close(sum(l, {NormOrd::l1, false, Accumulate::f32}), ref::list_reduce(xs, ref::ListReduce::sum_abs), 2e-5));
  EXPECT_EQ(zeros(l), static_cast<int64_t>(ref::list_reduce(xs, ref::ListReduce::count_zero)));
}

}  // namespace
}  // namespace kiln::test
