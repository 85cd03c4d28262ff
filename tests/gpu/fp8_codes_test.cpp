// tests/gpu/fp8_codes_test.cpp — quantize_fp8 / dequantize_fp8 on the GPU against tests/reference/fp8_codes.*, bit for
// bit (the codes, the scale, the decoded values): every input dtype, sizes around the 16-byte vector and the grid's
// stride (0 … 2^24 + 5), NaN / ±inf / signed zeros, all-zero input (scale 1), a maximum so small that 448 / max|x|
// overflows fp32 (the FLT_MAX cap), magnitudes from 1e−30 to 3e38; every search-space point (warp counts); reruns
// bit-identical; nothing written past the outputs.
#include <gtest/gtest.h>

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "kiln/ops/fp8.hpp"
#include "reference/fp8_codes.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct QuantResult {
  std::vector<uint8_t> q;
  float scale = 0;
  bool guards_ok = true;
  uint64_t forced_applied = 0;
};

class Fp8CodesGpu : public GpuTest {
 protected:
  // x (already rounded to t) → codes and scale; with `warps` > 0 that config forced through the tuner's hook.
  static QuantResult quantize(const std::vector<float>& x, DType t, int warps = 0) {
    Runtime& r = rt();
    const int64_t n = static_cast<int64_t>(x.size());
    DeviceBuffer xb(r, std::max<size_t>(x.size() * dtype_size(t), 16)), qb(r, std::max<size_t>(x.size(), 16)),
        sb(r, 16);
    xb.poison();
    qb.poison();
    sb.poison();
    if (n > 0) xb.upload(encode(t, x));
    QuantResult res;
    {
      std::optional<detail::ForceConfigScope> scope;
      detail::Specialization s;
      if (warps > 0) {
        s.family = detail::find_family("fp8_codes");
        s.arch = r.impl().target_arch();
        s.kernel = 0;
        s.params[0] = static_cast<int64_t>(t);
        s.config[0] = warps;
        scope.emplace(s);
      }
      quantize_fp8(r, xb.ref(t, {n}), qb.ref(DType::u8, {n}), sb.ref(DType::f32, {1}), nullptr);
      if (warps > 0) res.forced_applied = scope->applied();
    }
    synchronize();
    res.q = qb.download<uint8_t>(static_cast<size_t>(n));
    res.scale = sb.download<float>(1)[0];
    const std::vector<uint8_t> tail = qb.download<uint8_t>(qb.bytes());
    for (size_t i = static_cast<size_t>(n); i < tail.size(); ++i) res.guards_ok &= tail[i] == DeviceBuffer::kPoison;
    res.guards_ok &= xb.guards_intact() && qb.guards_intact() && sb.guards_intact();
    return res;
  }

  // Codes and scale against the reference; the first mismatch named.
  static ::testing::AssertionResult matches(const std::vector<float>& x, const QuantResult& got) {
    const float s = ref::fp8_scale(x);
    if (std::bit_cast<uint32_t>(s) != std::bit_cast<uint32_t>(got.scale))
      return ::testing::AssertionFailure() << "scale " << show(got.scale) << ", reference " << show(s);
    for (size_t i = 0; i < x.size(); ++i) {
      const uint8_t want = ref::fp8_encode(x[i], s);
      if (got.q[i] != want)
        return ::testing::AssertionFailure() << "code " << int(got.q[i]) << " at " << i << " (x = " << show(x[i])
                                             << "), reference " << int(want);
    }
    if (!got.guards_ok) return ::testing::AssertionFailure() << "wrote past q or outside a buffer";
    return ::testing::AssertionSuccess();
  }
};

std::vector<float> values(int64_t n, uint64_t seed, DType t, float stddev) {
  std::vector<float> v = randn(n, seed, stddev);
  round_to(t, v);
  return v;
}

TEST_F(Fp8CodesGpu, QuantizeMatchesTheReferenceBitForBit) {
  for (DType t : {DType::bf16, DType::f16, DType::f32})
    for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{7}, int64_t{8}, int64_t{15}, int64_t{17}, int64_t{255},
                      int64_t{4097}, int64_t{65539}, int64_t{1000003}, int64_t{8192} * 2048 + 5}) {
      SCOPED_TRACE(std::string(dtype_name(t)) + " n=" + std::to_string(n));
      const std::vector<float> x = values(n, mix_seed({0xF8, static_cast<uint64_t>(t), static_cast<uint64_t>(n)}), t,
                                          t == DType::f16 ? 30.0f : 3.0f);
      EXPECT_TRUE(matches(x, quantize(x, t)));
    }
}

// NaN / ±inf / ±0 sprinkled in (neither enters max|x|), a row of extremes, all zeros, a denormal maximum.
TEST_F(Fp8CodesGpu, NonFiniteZerosAndExtremeMagnitudes) {
  for (DType t : {DType::bf16, DType::f16, DType::f32}) {
    SCOPED_TRACE(dtype_name(t));
    std::vector<float> x = values(70001, mix_seed({0xF9, static_cast<uint64_t>(t)}), t, 2.0f);
    for (size_t i = 0; i < x.size(); i += 97) x[i] = kNaN;
    for (size_t i = 5; i < x.size(); i += 131) x[i] = kInf;
    for (size_t i = 9; i < x.size(); i += 173) x[i] = -kInf;
    for (size_t i = 11; i < x.size(); i += 59) x[i] = (i & 1) ? -0.0f : 0.0f;
    EXPECT_TRUE(matches(x, quantize(x, t)));
    const std::vector<float> zeros(4099, 0.0f);
    const QuantResult z = quantize(zeros, t);
    EXPECT_EQ(z.scale, 1.0f);
    EXPECT_TRUE(matches(zeros, z));
  }
  // fp32 only: magnitudes up to 3e38 and down to a denormal maximum (448 / max|x| overflows fp32: s = FLT_MAX).
  std::vector<float> big = values(10007, 0xFA, DType::f32, 1.0f);
  big[17] = 3.0e38f;
  big[18] = -1e-30f;
  EXPECT_TRUE(matches(big, quantize(big, DType::f32)));
  std::vector<float> tiny(513, 0.0f);
  tiny[100] = std::numeric_limits<float>::denorm_min();
  tiny[200] = -std::numeric_limits<float>::denorm_min();
  const QuantResult r = quantize(tiny, DType::f32);
  EXPECT_EQ(r.scale, FLT_MAX);
  EXPECT_TRUE(matches(tiny, r));
}

// Empty x: scale 1 written, nothing else.
TEST_F(Fp8CodesGpu, EmptyTensorWritesScaleOne) {
  const QuantResult r = quantize({}, DType::bf16);
  EXPECT_EQ(r.scale, 1.0f);
  EXPECT_TRUE(r.guards_ok);
}

// The result does not depend on the launch shape (every warp count of the search space), and reruns are identical.
TEST_F(Fp8CodesGpu, EverySearchSpacePointAndRerunsAgree) {
  const std::vector<float> x = values(3000017, 0xFB, DType::bf16, 1.5f);
  const QuantResult base = quantize(x, DType::bf16);
  ASSERT_TRUE(matches(x, base));
  for (int warps : {4, 8, 16}) {
    SCOPED_TRACE(warps);
    const QuantResult r = quantize(x, DType::bf16, warps);
    EXPECT_GT(r.forced_applied, 0u) << "the op did not ask for its config";
    EXPECT_EQ(r.q, base.q);
    EXPECT_EQ(r.scale, base.scale);
  }
  EXPECT_EQ(quantize(x, DType::bf16).q, base.q);
}

// Every code at several scales decodes bit for bit as the reference, in every output dtype; sizes around a vector.
TEST_F(Fp8CodesGpu, DequantizeMatchesTheReferenceBitForBit) {
  Runtime& r = rt();
  for (DType t : {DType::bf16, DType::f16, DType::f32})
    for (float s : {1.0f, 224.0f, 3.5e-3f, 1e30f, FLT_MAX})
      for (int64_t n : {int64_t{256}, int64_t{259}, int64_t{1} << 20}) {
        SCOPED_TRACE(std::string(dtype_name(t)) + " s=" + show(s) + " n=" + std::to_string(n));
        std::vector<uint8_t> q(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) q[i] = static_cast<uint8_t>((i * 37 + 11) & 0xff);
        DeviceBuffer qb(r, q.size()), sb(r, 16), ob(r, q.size() * dtype_size(t));
        ob.poison();
        qb.upload(q);
        sb.upload(std::vector<float>{s});
        dequantize_fp8(r, qb.ref(DType::u8, {n}), sb.ref(DType::f32, {}), ob.ref(t, {n}), nullptr);
        synchronize();
        const std::vector<float> got = decode(t, ob.download<uint8_t>(q.size() * dtype_size(t)));
        int bad = 0;
        for (int64_t i = 0; i < n && bad < 5; ++i) {
          const float want = round_to(t, ref::fp8_decode(q[i], s));
          if (std::bit_cast<uint32_t>(got[i]) != std::bit_cast<uint32_t>(want)) {
            ADD_FAILURE() << "code " << int(q[i]) << " at " << i << ": " << show(got[i]) << ", reference " << show(want);
            ++bad;
          }
        }
        EXPECT_TRUE(ob.guards_intact());
      }
}

// quantize then dequantize: every value within half a step (max|x| / 254) of where it started, before the output's
// own rounding.
TEST_F(Fp8CodesGpu, RoundTripWithinHalfAStep) {
  Runtime& r = rt();
  const int64_t n = 100003;
  const std::vector<float> x = values(n, 0xFC, DType::f32, 5.0f);
  DeviceBuffer xb(r, n * 4), qb(r, n), sb(r, 16), ob(r, n * 4);
  xb.upload(x);
  quantize_fp8(r, xb.ref(DType::f32, {n}), qb.ref(DType::u8, {n}), sb.ref(DType::f32, {1}), nullptr);
  dequantize_fp8(r, qb.ref(DType::u8, {n}), sb.ref(DType::f32, {1}), ob.ref(DType::f32, {n}), nullptr);
  synchronize();
  const std::vector<float> back = ob.download<float>(n);
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  const double half = 0.5 * amax / 127.0 * (1 + 1e-5);
  for (int64_t i = 0; i < n; ++i) ASSERT_LE(std::fabs(static_cast<double>(back[i]) - x[i]), half) << i;
}

}  // namespace
}  // namespace kiln::test
