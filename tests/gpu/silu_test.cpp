// tests/gpu/silu_test.cpp — the SiLU + block-quant families on the GPU against the CPU reference.
//
// Procedure (spec linghe-kernels.md §2, §7, §14.2): the kernels compute y (forward) and dx (backward) with a fixed
// sequence of correctly rounded fp32 operations that tests/reference/silu.cpp repeats on the CPU, so the reference
// values are the kernels' values. Scales must then match BIT-EXACTLY; codes must match too, except that a code one
// e4m3 step away is counted as a flip and tolerated up to kMaxFlipFraction of the elements (every flip is reported;
// none is expected). Codes further apart, or any scale difference, fail. dprob (batched backward) is an fp32 sum in
// the kernel's order, compared with a double sum within a bound proportional to Σ|terms|. Outputs and their guard
// zones are poisoned before each run, so unwritten elements and out-of-bounds writes are caught.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "kiln/ops/silu.hpp"
#include "kiln/silu_block_quant_args.h"
#include "reference/silu.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kMaxFlipFraction = 1e-4;

// e4m3 codes: 0 equal (NaN == NaN, +0 == −0 only when both are zero codes of the same sign), 1 one step apart on the
// same side of zero (or ±smallest subnormal vs zero), 2 anything else.
int code_distance(uint8_t a, uint8_t b) {
  if (a == b || (e4m3_is_nan(a) && e4m3_is_nan(b))) return 0;
  if (e4m3_is_nan(a) || e4m3_is_nan(b)) return 2;
  const int sa = (a & 0x80) ? -1 : 1, sb = (b & 0x80) ? -1 : 1;
  const int va = sa * (a & 0x7F), vb = sb * (b & 0x7F);
  return std::abs(va - vb) <= 1 ? 1 : 2;
}

// ---- inputs ---------------------------------------------------------------------------------------------------------

struct Input {
  int64_t M = 0, n = 0, x_stride = 0;
  std::vector<float> x;       // [M, 2n] bf16 values (dense)
  std::vector<float> g;       // [M, n] bf16 values (backward)
  std::vector<float> prob;    // [M] (batched)
  std::vector<int> counts;    // [E] (batched)
};

// x ~ N(0, 2) (so σ spans its range), g ~ N(0, 1), prob in [0.05, 1).
Input random_input(int64_t M, int64_t n, uint64_t seed, int64_t x_stride = 0) {
  Input in;
  in.M = M;
  in.n = n;
  in.x_stride = x_stride ? x_stride : 2 * n;
  in.x = randn(M * 2 * n, mix_seed({seed, 1}), 2.0f);
  round_to(DType::bf16, in.x);
  in.g = randn(M * n, mix_seed({seed, 2}));
  round_to(DType::bf16, in.g);
  in.prob = randn(M, mix_seed({seed, 3}), 0.25f, 0.5f);
  for (auto& p : in.prob) p = std::clamp(p, 0.05f, 1.0f);
  return in;
}

// Random counts summing to M over E experts, with some experts empty (every third expert when zero_every > 0).
std::vector<int> random_counts(int64_t M, int64_t E, uint64_t seed, int zero_every = 3) {
  std::vector<double> wts(static_cast<size_t>(E));
  const std::vector<float> r = randn(E, seed, 1.0f);
  for (int64_t e = 0; e < E; ++e) wts[e] = (zero_every > 0 && e % zero_every == 1) ? 0.0 : 0.2 + std::fabs(r[e]);
  double tot = 0;
  for (double w : wts) tot += w;
  std::vector<int> c(static_cast<size_t>(E), 0);
  int64_t used = 0;
  for (int64_t e = 0; e < E && tot > 0; ++e) {
    c[e] = static_cast<int>(std::floor(M * wts[e] / tot));
    used += c[e];
  }
  // The remainder goes to the last non-empty expert.
  for (int64_t e = E - 1; e >= 0; --e)
    if (wts[e] > 0 || tot == 0) {
      c[e] += static_cast<int>(M - used);
      break;
    }
  return c;
}

// ---- one call -------------------------------------------------------------------------------------------------------

struct RunSpec {
  bool batched = false, bwd = false;
  int mode = 2;
  bool round_scale = false;
  uint8_t poison = DeviceBuffer::kPoison;
  bool with_status = false;
  bool check_counts = false;
  bool trailing_rows = false;
  int64_t qT_scale_rows = -1;  // batched: rows of W in qT_scale (-1: exactly Σ ceil(c_e/128))
};

struct Result {
  std::vector<uint8_t> q, qT;
  std::vector<float> q_scale, qT_scale, dprob;
  int status = -1;
  std::vector<std::string> written_outside;
  uint64_t launches = 0;
};

// Every output of two runs bit for bit (dprob too when `dprob`).
void expect_same_bits(const Result& got, const Result& want, bool dprob) {
  EXPECT_TRUE(bitwise_equal("q", got.q, want.q));
  EXPECT_TRUE(bitwise_equal("q_scale", got.q_scale, want.q_scale));
  EXPECT_TRUE(bitwise_equal("qT", got.qT, want.qT));
  EXPECT_TRUE(bitwise_equal("qT_scale", got.qT_scale, want.qT_scale));
  if (dprob) EXPECT_TRUE(bitwise_equal("dprob", got.dprob, want.dprob));
}

bool rowwise(const RunSpec& s) { return s.bwd || s.mode != 1; }
bool transposed(const RunSpec& s) { return s.bwd || s.mode != 0; }

class SiluGpuTest : public GpuTest {
 protected:
  static Result run(const Input& in, const RunSpec& spec) {
    Runtime& r = rt();
    const int64_t M = in.M, n = in.n, W = spec.bwd ? 2 * n : n;
    const int64_t E = static_cast<int64_t>(in.counts.size());
    const int64_t tblocks = spec.batched ? (spec.qT_scale_rows >= 0 ? spec.qT_scale_rows : ref::token_blocks(in.counts))
                                         : (M + 127) / 128;

    std::vector<float> x_padded(static_cast<size_t>(M * in.x_stride), kNaN);
    for (int64_t m = 0; m < M; ++m) std::copy_n(&in.x[m * 2 * n], 2 * n, &x_padded[m * in.x_stride]);
    DeviceBuffer x_buf(r, x_padded.size() * 2), g_buf(r, spec.bwd ? M * n * 2 : 0);
    x_buf.upload(encode(DType::bf16, x_padded));
    if (spec.bwd) g_buf.upload(encode(DType::bf16, in.g));
    DeviceBuffer p_buf(r, spec.batched ? M * 4 : 0), c_buf(r, spec.batched ? E * 4 : 0);
    if (spec.batched) {
      p_buf.upload(in.prob);
      c_buf.upload(in.counts);
    }

    const bool row = rowwise(spec), tr = transposed(spec);
    DeviceBuffer q(r, row ? M * W : 0), q_scale(r, row ? W / 128 * M * 4 : 0), qT(r, tr ? M * W : 0),
        qT_scale(r, tr ? tblocks * W * 4 : 0), dprob(r, spec.batched && spec.bwd ? M * 4 : 0),
        status(r, spec.with_status ? 4 : 0);
    for (DeviceBuffer* b : {&q, &q_scale, &qT, &qT_scale, &dprob, &status}) b->poison(spec.poison);

    SiluBlockQuantOutputs out;
    if (row) {
      out.q = q.ref(DType::e4m3, {M, W});
      out.q_scale = spec.batched ? q_scale.ref(DType::f32, {W / 128 * M}) : q_scale.ref(DType::f32, {W / 128, M});
    }
    if (tr) {
      out.qT = spec.batched ? qT.ref(DType::e4m3, {M * W}) : qT.ref(DType::e4m3, {W, M});
      out.qT_scale = spec.batched ? qT_scale.ref(DType::f32, {tblocks * W}) : qT_scale.ref(DType::f32, {tblocks, W});
    }
    const TensorRef x = TensorRef::strided_2d(x_buf.data(), DType::bf16, M, 2 * n, in.x_stride);
    const TensorRef g = g_buf.ref(DType::bf16, {M, n});
    const TensorRef st = spec.with_status ? status.ref(DType::i32, {1}) : TensorRef{};

    const uint64_t launches_before = r.stats().launches;
    if (!spec.batched) {
      if (spec.bwd) silu_block_quant_bwd(r, g, x, out, spec.round_scale, nullptr);
      else silu_block_quant_fwd(r, x, out, {spec.round_scale, spec.mode}, nullptr);
    } else {
      const BatchSiluOptions o{spec.round_scale, spec.mode, spec.check_counts, spec.trailing_rows};
      const TensorRef p = p_buf.ref(DType::f32, {M}), c = c_buf.ref(DType::i32, {E});
      if (spec.bwd) batch_weighted_silu_block_quant_bwd(r, g, x, p, c, out, dprob.ref(DType::f32, {M}), st, o, nullptr);
      else batch_weighted_silu_block_quant_fwd(r, x, p, c, out, st, o, nullptr);
    }
    synchronize();

    Result res;
    res.launches = r.stats().launches - launches_before;
    if (row) {
      res.q = q.download<uint8_t>(M * W);
      res.q_scale = q_scale.download<float>(W / 128 * M);
    }
    if (tr) {
      res.qT = qT.download<uint8_t>(M * W);
      res.qT_scale = qT_scale.download<float>(tblocks * W);
    }
    if (spec.batched && spec.bwd) res.dprob = dprob.download<float>(M);
    if (spec.with_status) res.status = status.download<int>(1)[0];
    const std::pair<const char*, const DeviceBuffer*> named[] = {{"q", &q},   {"q_scale", &q_scale},
                                                                 {"qT", &qT}, {"qT_scale", &qT_scale},
                                                                 {"dprob", &dprob}, {"status", &status}};
    for (const auto& [name, buf] : named)
      if (!buf->guards_intact()) res.written_outside.push_back(name);
    return res;
  }

  // The reference values (y or dx, [M, W]) and dprob.
  static std::vector<float> reference_values(const Input& in, const RunSpec& spec, ref::SiluGrads* grads = nullptr) {
    const std::span<const float> prob = spec.batched ? std::span<const float>(in.prob) : std::span<const float>{};
    if (!spec.bwd) return ref::silu_fwd_values(in.x, in.M, in.n, prob);
    ref::SiluGrads gr = ref::silu_bwd_values(in.g, in.x, in.M, in.n, prob);
    std::vector<float> dx = gr.dx;
    if (grads) *grads = std::move(gr);
    return dx;
  }

  static ::testing::AssertionResult scales_equal(const char* what, const std::vector<float>& got,
                                                 const std::vector<float>& want) {
    if (got.size() != want.size())
      return ::testing::AssertionFailure() << what << ": " << got.size() << " elements, expected " << want.size();
    return all_equal(
        what, static_cast<int64_t>(got.size()),
        [&](int64_t i) { return std::bit_cast<uint32_t>(got[i]) == std::bit_cast<uint32_t>(want[i]); },
        [&](int64_t i) { return "[" + std::to_string(i) + "]: got " + show(got[i]) + ", want " + show(want[i]); });
  }

  // Codes: no difference beyond one step, flips ≤ kMaxFlipFraction (all reported). value(i) describes element i.
  template <typename Describe>
  static ::testing::AssertionResult codes_match(const char* what, const std::vector<uint8_t>& got,
                                                const std::vector<uint8_t>& want, Describe describe) {
    if (got.size() != want.size())
      return ::testing::AssertionFailure() << what << ": " << got.size() << " elements, expected " << want.size();
    int64_t flips = 0, bad = 0;
    std::string report;
    for (size_t i = 0; i < got.size(); ++i) {
      const int d = code_distance(got[i], want[i]);
      if (d == 0) continue;
      (d == 1 ? flips : bad)++;
      if (flips + bad <= 8)
        report += std::string("\n    ") + (d == 1 ? "flip " : "MISMATCH ") + describe(static_cast<int64_t>(i)) +
                  ": got " + show_code(got[i]) + ", want " + show_code(want[i]);
    }
    if (flips > 0) std::printf("[ note ] %s: %lld one-step flips of %zu codes%s\n", what,
                               static_cast<long long>(flips), got.size(), report.c_str());
    if (bad == 0 && flips <= kMaxFlipFraction * static_cast<double>(got.size()) + 1)
      return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << what << ": " << bad << " codes differ by more than one step, " << flips
                                         << " one-step flips, of " << got.size() << report;
  }

  static void check(const Input& in, const RunSpec& spec, const Result& res) {
    const int64_t M = in.M, W = spec.bwd ? 2 * in.n : in.n;
    EXPECT_TRUE(res.written_outside.empty()) << "written outside their bounds: "
                                             << ::testing::PrintToString(res.written_outside);
    ref::SiluGrads grads;
    const std::vector<float> v = reference_values(in, spec, &grads);
    const ref::QuantOutputs want =
        spec.batched ? ref::quantize_segmented(v, in.counts, W, spec.round_scale, rowwise(spec), transposed(spec))
                     : ref::quantize_plain(v, M, W, spec.round_scale, rowwise(spec), transposed(spec));
    if (rowwise(spec)) {
      EXPECT_TRUE(scales_equal("q_scale", res.q_scale, want.q_scale));
      EXPECT_TRUE(codes_match("q [M, W]", res.q, want.q, [&](int64_t i) {
        return "q[m=" + std::to_string(i / W) + ", c=" + std::to_string(i % W) + "] value " + show(v[i]);
      }));
    }
    if (transposed(spec)) {
      std::vector<float> got_scale = res.qT_scale;
      got_scale.resize(want.qT_scale.size());  // a larger qT_scale buffer: the rows past Σ ceil(c_e/128) are unused
      EXPECT_TRUE(scales_equal("qT_scale", got_scale, want.qT_scale));
      EXPECT_TRUE(codes_match("qT", res.qT, want.qT, [&](int64_t i) { return "qT flat " + std::to_string(i); }));
    }
    if (spec.batched && spec.bwd) {
      ASSERT_EQ(res.dprob.size(), static_cast<size_t>(M));
      // Bound: fp32 summation of n terms, |error| ≤ n·2^-24·Σ|terms| in the worst case; we use 1e-6·Σ|terms|·√n.
      std::vector<double> mag(static_cast<size_t>(M), 0.0);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < in.n; ++k) {
          const float a = in.x[m * 2 * in.n + k], b = in.x[m * 2 * in.n + in.n + k];
          mag[m] += std::fabs(static_cast<double>(a) * ref::silu_sigmoid(a) * b * in.g[m * in.n + k]);
        }
      EXPECT_TRUE(all_equal(
          "dprob", M,
          [&](int64_t m) {
            const double want_v = grads.dprob[m], got = res.dprob[m];
            if (std::isnan(want_v) || std::isinf(want_v)) return std::isnan(got) == std::isnan(want_v) &&
                                                                    (std::isnan(got) || got == want_v);
            return std::fabs(got - want_v) <= 1e-6 * std::sqrt(static_cast<double>(in.n)) * mag[m] + 1e-30;
          },
          [&](int64_t m) {
            return "dprob[" + std::to_string(m) + "]: got " + show(res.dprob[m]) + ", want " +
                   std::to_string(grads.dprob[m]) + " (Σ|terms| " + std::to_string(mag[m]) + ")";
          }));
    }
  }

  static Result run_and_check(const Input& in, const RunSpec& spec) {
    Result res = run(in, spec);
    check(in, spec, res);
    return res;
  }
};

// ---- shared expert: every shape ---------------------------------------------------------------------------------------

struct SharedCase {
  int64_t n, M;
  bool bwd;
  int mode;
  bool round_scale;
};
void PrintTo(const SharedCase& c, std::ostream* os) {
  *os << "n=" << c.n << " M=" << c.M << (c.bwd ? " bwd" : " fwd") << " mode=" << c.mode << " rs=" << c.round_scale;
}

std::vector<SharedCase> shared_cases() {
  std::vector<SharedCase> v;
  for (int64_t n : {128, 512, 1024, 1536, 2048})
    for (int64_t M : {0, 1, 127, 128, 129, 8192, 16384})
      for (bool bwd : {false, true}) v.push_back({n, M, bwd, 2, true});
  const std::pair<int64_t, int64_t> subset[] = {{128, 0}, {128, 129}, {512, 16384}, {1536, 127}, {2048, 1000}};
  for (const auto& [n, M] : subset) {
    for (int mode : {0, 1}) v.push_back({n, M, false, mode, true});
    for (int mode : {0, 1, 2}) v.push_back({n, M, false, mode, false});
    v.push_back({n, M, true, 2, false});
  }
  return v;
}

class SiluShapes : public SiluGpuTest, public ::testing::WithParamInterface<SharedCase> {};

TEST_P(SiluShapes, MatchesReference) {
  const SharedCase c = GetParam();
  const uint64_t seed = mix_seed({0x51, static_cast<uint64_t>(c.n), static_cast<uint64_t>(c.M), c.bwd,
                                  static_cast<uint64_t>(c.mode), c.round_scale});
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Input in = random_input(c.M, c.n, seed);
  RunSpec spec{.bwd = c.bwd, .mode = c.mode, .round_scale = c.round_scale};
  const Result res = run_and_check(in, spec);
  if (c.M == 0) EXPECT_EQ(res.launches, 0u) << "M = 0 must launch nothing";
}

INSTANTIATE_TEST_SUITE_P(Grid, SiluShapes, ::testing::ValuesIn(shared_cases()),
                         [](const ::testing::TestParamInfo<SharedCase>& i) {
                           return "n" + std::to_string(i.param.n) + "_M" + std::to_string(i.param.M) +
                                  (i.param.bwd ? "_bwd" : "_fwd") + "_mode" + std::to_string(i.param.mode) + "_rs" +
                                  std::to_string(i.param.round_scale);
                         });

// ---- special values ---------------------------------------------------------------------------------------------------

// n = 512, M = 700: single special rows in the first token block; whole token blocks of one kind after it, so the
// transposed scales see all-zero, tiny and huge blocks too. g gets its own specials for the backward.
Input special_input(uint64_t seed) {
  const int64_t M = 700, n = 512;
  Input in = random_input(M, n, seed);
  const float bf16_max = bf16_to_float(0x7F7F);
  auto fill = [&](int64_t m0, int64_t m1, int64_t k0, int64_t k1, float v) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t k = k0; k < k1; ++k) in.x[m * 2 * n + k] = v;
  };
  fill(3, 4, 0, 2 * n, 0.0f);               // all-zero row
  fill(4, 5, 0, n, 0.0f);                    // gate zero: y = 0, dx₁ = g·up·0.5
  fill(5, 6, n, 2 * n, 0.0f);                // up zero
  fill(6, 7, 0, 2 * n, 1e30f);               // huge: y overflows fp32 → inf, scale inf
  fill(7, 8, 0, n, -1e30f);                  // gate very negative: σ = 0, y = −0·up
  fill(8, 9, 0, 2 * n, bf16_max);            // ±bf16 max
  for (int64_t k = 0; k < 2 * n; k += 2) in.x[8 * 2 * n + k] = -bf16_max;
  in.x[9 * 2 * n + 17] = kNaN;               // NaN gate
  in.x[10 * 2 * n + n + 300] = kNaN;         // NaN up
  in.x[11 * 2 * n + 5] = kInf;
  in.x[11 * 2 * n + 6] = -kInf;
  in.x[11 * 2 * n + n + 7] = kInf;
  fill(12, 13, 0, 2 * n, 1e-30f);            // y ≈ 5e-61 → 0
  fill(13, 14, 0, 2 * n, 3e-20f);            // y below the 1e-30 scale floor: subnormal codes
  fill(14, 15, 0, n, 88.0f);                 // σ = 1 exactly
  fill(15, 16, 0, n, -88.0f);                // σ = 0 exactly (e flushed)
  fill(16, 17, 0, n, -86.5f);                // σ tiny but normal
  fill(17, 18, 0, 2 * n, 30.0f);             // y = 900 > 448 with a row of equal values: saturating scale rule
  for (int64_t k = 0; k < n; ++k) in.x[18 * 2 * n + n + k] = k == 3 ? 1e4f : 1.0f;  // one large value per block
  fill(128, 256, 0, 2 * n, 0.0f);            // all-zero token block
  fill(256, 384, 0, 2 * n, 1e-30f);
  fill(384, 512, 0, 2 * n, 1e20f);           // products overflow to inf in every element
  fill(512, 640, 0, n, -20.0f);              // σ small
  round_to(DType::bf16, in.x);
  for (int64_t k = 0; k < n; ++k) {
    in.g[20 * n + k] = 0.0f;
    in.g[21 * n + k] = 1e30f;
    in.g[22 * n + k] = -bf16_max;
  }
  in.g[23 * n + 9] = kNaN;
  in.g[24 * n + 9] = -kInf;
  round_to(DType::bf16, in.g);
  return in;
}

class SiluSpecialValues : public SiluGpuTest, public ::testing::WithParamInterface<std::tuple<bool, bool, bool>> {};

TEST_P(SiluSpecialValues, MatchesReference) {
  const auto [batched, bwd, rs] = GetParam();
  const uint64_t seed = mix_seed({0x52, batched, bwd, rs});
  SCOPED_TRACE("seed " + std::to_string(seed));
  Input in = special_input(seed);
  if (batched) {
    in.counts = {0, 13, 115, 300, 0, 272};  // sums to 700; the special rows straddle experts
    in.prob[14] = 0.0f;
    in.prob[100] = kInf;
  }
  RunSpec spec{.batched = batched, .bwd = bwd, .round_scale = rs};
  run_and_check(in, spec);
}

INSTANTIATE_TEST_SUITE_P(All, SiluSpecialValues, ::testing::Combine(::testing::Bool(), ::testing::Bool(), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<bool, bool, bool>>& i) {
                           return std::string(std::get<0>(i.param) ? "batched" : "shared") +
                                  (std::get<1>(i.param) ? "_bwd" : "_fwd") + "_rs" +
                                  std::to_string(std::get<2>(i.param));
                         });

// ---- batched: experts ------------------------------------------------------------------------------------------------

struct BatchCase {
  int64_t E, M, n;
  bool bwd;
  int mode;
  bool round_scale;
};
void PrintTo(const BatchCase& c, std::ostream* os) {
  *os << "E=" << c.E << " M=" << c.M << " n=" << c.n << (c.bwd ? " bwd" : " fwd") << " mode=" << c.mode
      << " rs=" << c.round_scale;
}

std::vector<BatchCase> batch_cases() {
  std::vector<BatchCase> v;
  for (int64_t E : {1, 7, 32, 256})
    for (int64_t M : {0, 1, 129, 8192})
      for (bool bwd : {false, true}) v.push_back({E, M, E == 7 ? 1536 : E == 256 ? 128 : 512, bwd, 2, true});
  for (int64_t E : {7, 32}) {
    for (int mode : {0, 1}) v.push_back({E, 5000, 1024, false, mode, false});
    v.push_back({E, 5000, 1024, false, 2, false});
    v.push_back({E, 5000, 1024, true, 2, false});
  }
  v.push_back({256, 16384, 2048, false, 2, true});
  v.push_back({256, 16384, 2048, true, 2, true});
  return v;
}

class BatchSiluShapes : public SiluGpuTest, public ::testing::WithParamInterface<BatchCase> {};

TEST_P(BatchSiluShapes, MatchesReference) {
  const BatchCase c = GetParam();
  const uint64_t seed = mix_seed({0x53, static_cast<uint64_t>(c.E), static_cast<uint64_t>(c.M),
                                  static_cast<uint64_t>(c.n), c.bwd, static_cast<uint64_t>(c.mode), c.round_scale});
  SCOPED_TRACE("seed " + std::to_string(seed));
  Input in = random_input(c.M, c.n, seed);
  in.counts = random_counts(c.M, c.E, mix_seed({seed, 9}));
  RunSpec spec{.batched = true, .bwd = c.bwd, .mode = c.mode, .round_scale = c.round_scale, .with_status = true};
  const Result res = run_and_check(in, spec);
  EXPECT_EQ(res.status, 0);
}

INSTANTIATE_TEST_SUITE_P(Grid, BatchSiluShapes, ::testing::ValuesIn(batch_cases()),
                         [](const ::testing::TestParamInfo<BatchCase>& i) {
                           return "E" + std::to_string(i.param.E) + "_M" + std::to_string(i.param.M) + "_n" +
                                  std::to_string(i.param.n) + (i.param.bwd ? "_bwd" : "_fwd") + "_mode" +
                                  std::to_string(i.param.mode) + "_rs" + std::to_string(i.param.round_scale);
                         });

// The benchmark split at a quarter of the rows: 32 experts, counts in [512, 1536] (multiples of 16), n = 1024.
TEST_F(SiluGpuTest, BatchedBenchLikeShape) {
  std::vector<int> counts;
  int64_t M = 0;
  for (int e = 0; e < 32; ++e) {
    counts.push_back((2048 + 16 * ((97 * e + 31) % 257)) / 64 * 16);
    M += counts.back();
  }
  Input in = random_input(M, 1024, 0x54);
  in.counts = counts;
  for (bool bwd : {false, true}) {
    SCOPED_TRACE(bwd ? "bwd" : "fwd");
    RunSpec spec{.batched = true, .bwd = bwd, .round_scale = true};
    run_and_check(in, spec);
  }
}

// Counts not multiples of 16 or 128 (transposed rows not 16-byte aligned: byte stores), single-row experts, and
// every expert empty but one.
TEST_F(SiluGpuTest, BatchedOddCounts) {
  const std::vector<std::vector<int>> splits = {{1, 1, 1, 1, 1}, {77, 0, 129, 3, 255, 0, 0, 16},
                                                {0, 0, 0, 1000, 0}, {127, 128, 129}};
  for (size_t i = 0; i < splits.size(); ++i) {
    int64_t M = 0;
    for (int c : splits[i]) M += c;
    Input in = random_input(M, 256, mix_seed({0x55, i}));
    in.counts = splits[i];
    for (bool bwd : {false, true})
      for (int mode : {0, 1, 2}) {
        if (bwd && mode != 2) continue;
        SCOPED_TRACE("split " + std::to_string(i) + (bwd ? " bwd" : " fwd") + " mode " + std::to_string(mode));
        RunSpec spec{.batched = true, .bwd = bwd, .mode = mode};
        run_and_check(in, spec);
      }
  }
}

// A qT_scale buffer with the documented upper bound of rows (larger than needed) works the same.
TEST_F(SiluGpuTest, BatchedUpperBoundScaleBuffer) {
  Input in = random_input(3000, 512, 0x56);
  in.counts = random_counts(3000, 32, 0x57);
  RunSpec spec{.batched = true, .qT_scale_rows = batch_weighted_silu_max_token_blocks(3000, 32)};
  run_and_check(in, spec);
}

// Invalid counts: status 1, nothing written (poison intact), dprob NaN; with check_counts a typed error.
TEST_F(SiluGpuTest, BatchedInvalidCounts) {
  const std::vector<std::vector<int>> bad = {{100, 100, 100}, {500, -100, 100}, {600, 0, 0, 1}};
  for (size_t i = 0; i < bad.size(); ++i) {
    Input in = random_input(500, 256, mix_seed({0x58, i}));
    in.counts = bad[i];
    for (bool bwd : {false, true}) {
      SCOPED_TRACE("counts " + ::testing::PrintToString(bad[i]) + (bwd ? " bwd" : " fwd"));
      RunSpec spec{.batched = true, .bwd = bwd, .poison = 0x55, .with_status = true};
      const Result res = run(in, spec);
      EXPECT_EQ(res.status, 1);
      EXPECT_TRUE(res.written_outside.empty());
      EXPECT_TRUE(std::all_of(res.q.begin(), res.q.end(), [](uint8_t b) { return b == 0x55; })) << "q written";
      EXPECT_TRUE(std::all_of(res.qT.begin(), res.qT.end(), [](uint8_t b) { return b == 0x55; })) << "qT written";
      if (bwd) EXPECT_TRUE(std::all_of(res.dprob.begin(), res.dprob.end(), [](float v) { return std::isnan(v); }));
      spec.check_counts = true;
      EXPECT_THROW_NAMING(run(in, spec), "counts", InvalidArgument);
    }
  }
  // Valid counts pass check_counts.
  Input in = random_input(500, 256, 0x59);
  in.counts = {100, 0, 400};
  RunSpec spec{.batched = true, .check_counts = true};
  run_and_check(in, spec);
  // A qT_scale buffer too small for the counts' token blocks is reported the same way.
  in.counts = {1, 1, 1, 497};  // 3 + 4 = 7 blocks
  spec.qT_scale_rows = 6;
  EXPECT_THROW_NAMING(run(in, spec), "counts", InvalidArgument);
}

// options.trailing_rows: x has more rows than the experts own (Σ counts < M, like a permute's num_out capacity). The
// experts' segments hold exactly what the op computes for x cut to Σ counts rows; everything past them is untouched
// (poison intact) and dprob is 0 on the trailing rows, which hold NaN (reading them would show). Without the option
// such counts are invalid; with it, Σ counts > M still is.
TEST_F(SiluGpuTest, BatchedTrailingRows) {
  const int64_t M = 1000, S = 700, n = 256;
  for (bool bwd : {false, true}) {
    SCOPED_TRACE(bwd ? "bwd" : "fwd");
    Input in = random_input(M, n, mix_seed({0x62, bwd}));
    in.counts = random_counts(S, 7, mix_seed({0x63, bwd}));
    for (int64_t i = S * 2 * n; i < M * 2 * n; ++i) in.x[i] = kNaN;
    for (int64_t i = S * n; i < M * n; ++i) in.g[i] = kNaN;
    Input cut = in;
    cut.M = S;
    cut.x.resize(S * 2 * n);
    cut.g.resize(S * n);
    cut.prob.resize(S);
    RunSpec spec{.batched = true, .bwd = bwd, .round_scale = true, .poison = 0x55, .with_status = true};
    const Result want = run_and_check(cut, spec);

    spec.trailing_rows = true;
    const Result got = run(in, spec);
    EXPECT_EQ(got.status, 0);
    EXPECT_TRUE(got.written_outside.empty());
    const int64_t W = bwd ? 2 * n : n;
    auto head = [](const auto& v, int64_t k) { return std::vector(v.begin(), v.begin() + k); };
    EXPECT_TRUE(bitwise_equal("q (expert rows)", head(got.q, S * W), want.q));
    EXPECT_TRUE(bitwise_equal("q_scale (segments)", head(got.q_scale, S * W / 128), want.q_scale));
    EXPECT_TRUE(bitwise_equal("qT (segments)", head(got.qT, S * W), want.qT));
    EXPECT_TRUE(bitwise_equal("qT_scale", got.qT_scale, want.qT_scale));
    EXPECT_TRUE(std::all_of(got.q.begin() + S * W, got.q.end(), [](uint8_t b) { return b == 0x55; })) << "q tail";
    EXPECT_TRUE(std::all_of(got.qT.begin() + S * W, got.qT.end(), [](uint8_t b) { return b == 0x55; })) << "qT tail";
    EXPECT_TRUE(std::all_of(got.q_scale.begin() + S * W / 128, got.q_scale.end(),
                            [](float v) { return std::bit_cast<uint32_t>(v) == 0x55555555u; }))
        << "q_scale tail";
    if (bwd) {
      EXPECT_TRUE(bitwise_equal("dprob (expert rows)", head(got.dprob, S), want.dprob));
      EXPECT_TRUE(std::all_of(got.dprob.begin() + S, got.dprob.end(), [](float v) { return v == 0.0f; }))
          << "dprob of trailing rows";
    }
    spec.check_counts = true;  // valid with the option: no throw
    EXPECT_NO_THROW(run(in, spec));

    spec.check_counts = false;
    spec.trailing_rows = false;  // without the option these counts are invalid
    EXPECT_EQ(run(in, spec).status, 1);
    spec.check_counts = true;
    EXPECT_THROW_NAMING(run(in, spec), "counts", InvalidArgument);

    spec.trailing_rows = true;  // Σ counts > M stays invalid
    Input over = cut;
    over.counts.back() += 1;
    spec.check_counts = false;
    EXPECT_EQ(run(over, spec).status, 1);
    spec.check_counts = true;
    EXPECT_THROW_NAMING(run(over, spec), "counts", InvalidArgument);
  }
}

// M = 0 with a status: the counts (all zero) are validated on the device, nothing else runs.
TEST_F(SiluGpuTest, BatchedEmpty) {
  Input in = random_input(0, 256, 0x5a);
  in.counts = {0, 0, 0};
  for (bool bwd : {false, true}) {
    RunSpec spec{.batched = true, .bwd = bwd, .with_status = true};
    const Result res = run(in, spec);
    EXPECT_EQ(res.status, 0);
    EXPECT_TRUE(res.written_outside.empty());
    in.counts = {0, 1, 0};
    EXPECT_EQ(run(in, spec).status, 1);
    in.counts = {0, 0, 0};
  }
}

// ---- layouts and contracts ---------------------------------------------------------------------------------------

// Rows of x 16-byte aligned but 2n + 64 elements apart; the gap holds NaN, so reading it would poison the output.
TEST_F(SiluGpuTest, StridedX) {
  for (bool batched : {false, true})
    for (bool bwd : {false, true}) {
      SCOPED_TRACE(std::string(batched ? "batched" : "shared") + (bwd ? " bwd" : " fwd"));
      Input in = random_input(1000, 512, mix_seed({0x5b, batched, bwd}), 2 * 512 + 64);
      if (batched) in.counts = random_counts(1000, 7, 0x5c);
      RunSpec spec{.batched = batched, .bwd = bwd, .round_scale = true};
      run_and_check(in, spec);
    }
}

// Two runs with different poison bytes give identical outputs: an element the kernel never writes would differ.
TEST_F(SiluGpuTest, EveryOutputElementIsWritten) {
  for (bool batched : {false, true})
    for (bool bwd : {false, true})
      for (int mode : {0, 1, 2}) {
        if (bwd && mode != 2) continue;
        SCOPED_TRACE(std::string(batched ? "batched" : "shared") + (bwd ? " bwd" : " fwd") + " mode " +
                     std::to_string(mode));
        Input in = random_input(777, 384, mix_seed({0x5d, batched, bwd, static_cast<uint64_t>(mode)}));
        if (batched) in.counts = random_counts(777, 5, 0x5e);
        RunSpec spec{.batched = batched, .bwd = bwd, .mode = mode, .poison = 0x55};
        const Result a = run(in, spec);
        spec.poison = 0xAA;
        const Result b = run(in, spec);
        expect_same_bits(a, b, true);
      }
}

// The batched op with one expert and prob = 1 is the shared op (identical bits: w multiplies by exactly 1).
TEST_F(SiluGpuTest, OneExpertWithUnitProbIsTheSharedOp) {
  Input in = random_input(1000, 1024, 0x5f);
  std::fill(in.prob.begin(), in.prob.end(), 1.0f);
  in.counts = {1000};
  for (bool bwd : {false, true}) {
    RunSpec s;
    s.bwd = bwd;
    s.round_scale = true;
    const Result shared = run(in, s);
    s.batched = true;
    const Result batched = run(in, s);
    expect_same_bits(shared, batched, false);
  }
}

// Every search-space point of both families (stages, σ table variants) computes the same bits as the default the
// recipe picks, and those match the CPU reference: each point is forced through the public op with the tuner's
// forced-config hook (ForceConfigScope), which also proves the op asks for its tuned config.
TEST_F(SiluGpuTest, OtherConfigsSameBits) {
  for (bool batched : {false, true})
    for (bool bwd : {false, true}) {
      const int64_t M = 1500, n = 512;
      Input in = random_input(M, n, mix_seed({0x60, batched, bwd}));
      for (int64_t k = 0; k < 64; ++k) in.x[7 * 2 * n + k] = 1e-5f * static_cast<float>(k);  // below the tables
      for (int64_t k = 0; k < 16; ++k) in.x[9 * 2 * n + k] = (k % 2 ? -1.0f : 1.0f) * 300.0f;  // above them
      for (int64_t k = 0; k < 16; ++k) in.x[11 * 2 * n + k] = (k % 2 ? -1e-9f : 1e-9f) * static_cast<float>(k + 1);
      const float special[] = {kNaN, kInf, -kInf, -300.0f, 0.0f, -0.0f};  // σ's constant rows / computed fallbacks
      for (int64_t k = 0; k < 6; ++k) in.x[13 * 2 * n + 5 + k] = special[k];
      round_to(DType::bf16, in.x);
      if (batched) in.counts = random_counts(M, 5, 0x61);
      RunSpec spec{.batched = batched, .bwd = bwd, .round_scale = true};
      const Result def = run_and_check(in, spec);

      detail::Specialization s;
      s.family = detail::find_family(batched ? "batch_weighted_silu_block_quant" : "silu_block_quant");
      ASSERT_NE(s.family, nullptr);
      s.arch = rt().impl().target_arch();
      s.kernel = bwd ? 1 : 0;
      s.params[0] = n;
      s.params[1] = 2;
      s.params[2] = 1;
      std::vector<detail::Specialization> points;
      s.family->search_space(s, points);
      ASSERT_GE(points.size(), 4u);
      for (const detail::Specialization& p : points) {
        SCOPED_TRACE(std::string(batched ? "batched " : "shared ") + (bwd ? "bwd " : "fwd ") + p.describe());
        Result res;
        {
          detail::ForceConfigScope force(p);
          res = run(in, spec);
          EXPECT_EQ(force.applied(), 1u) << "the op did not run the forced config";
        }
        EXPECT_TRUE(res.written_outside.empty());
        expect_same_bits(res, def, true);
      }
    }
}

// The shared family's search-space points over many tiles a CTA (M = 16549: 130 token blocks × 4 channel blocks =
// 520 tiles ≈ 4 a CTA, the last token block partial), where the pipelines' cross-tile paths run: a tile's codes
// stored after the next tile's barrier (code_buffers = 2), the rotating column-maxima buffers, the refills. Every
// point computes the bits of the default, which is checked against the CPU reference here; output modes 0 and 1 for
// the one-code-buffer points (the default has two).
TEST_F(SiluGpuTest, SharedConfigsManyTilesPerCta) {
  const int64_t M = 16549, n = 512;
  struct Run {
    bool bwd;
    int mode;
  };
  for (const Run& run_spec : {Run{false, 2}, Run{true, 2}, Run{false, 0}, Run{false, 1}}) {
    Input in = random_input(M, n, mix_seed({0x62, run_spec.bwd, static_cast<uint64_t>(run_spec.mode)}));
    round_to(DType::bf16, in.x);
    RunSpec spec{.bwd = run_spec.bwd, .mode = run_spec.mode, .round_scale = true};
    const Result def = run_and_check(in, spec);

    detail::Specialization s;
    s.family = detail::find_family("silu_block_quant");
    ASSERT_NE(s.family, nullptr);
    s.arch = rt().impl().target_arch();
    s.kernel = run_spec.bwd ? 1 : 0;
    s.params[0] = n;
    s.params[1] = run_spec.mode;
    s.params[2] = 1;
    std::vector<detail::Specialization> points;
    s.family->search_space(s, points);
    for (const detail::Specialization& p : points) {
      if (run_spec.mode != 2 && p.config[2] != 1) continue;
      SCOPED_TRACE(std::string(run_spec.bwd ? "bwd " : "fwd ") + p.describe());
      Result res;
      {
        detail::ForceConfigScope force(p);
        res = run(in, spec);
        EXPECT_EQ(force.applied(), 1u) << "the op did not run the forced config";
      }
      EXPECT_TRUE(res.written_outside.empty());
      expect_same_bits(res, def, false);
    }
  }
}

}  // namespace
}  // namespace kiln::test
