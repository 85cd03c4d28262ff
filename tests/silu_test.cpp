// tests/silu_test.cpp — the SiLU + block-quant families on the CPU (runs in CI without a driver): the reference's
// deterministic sigmoid against double precision over every bf16 input, the forward/backward value formulas against
// double math and finite differences, the per-expert segmented layout, NVRTC compilation of the specializations the
// presets do not enumerate, and every argument check of the four ops (typed errors naming the argument).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

#include "kiln/ops/silu.hpp"
#include "kiln/silu_block_quant_args.h"
#include "reference/silu.hpp"
#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

double sigmoid_exact(double a) { return a >= 0 ? 1.0 / (1.0 + std::exp(-a)) : std::exp(a) / (1.0 + std::exp(a)); }

// ---- the deterministic sigmoid ----------------------------------------------------------------------------------

// Every finite bf16 gate value (the kernels' whole input domain): within 3 fp32 ulps (relative 3·2^-24) of the exact
// sigmoid where it is a normal float; exactly 0.5 at 0; monotone.
TEST(SiluReference, SigmoidOverEveryBf16) {
  double worst = 0;
  float worst_at = 0;
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float a = bf16_to_float(static_cast<uint16_t>(b));
    if (!std::isfinite(a)) continue;
    const float s = ref::silu_sigmoid(a);
    const double want = sigmoid_exact(a);
    ASSERT_TRUE(s >= 0.0f && s <= 1.0f) << a;
    if (a < -87.0f) {  // exp(−|a|) flushed to 0: σ = 0 where the exact value is below 1.7e-38
      EXPECT_EQ(s, 0.0f) << a;
      continue;
    }
    const double rel = std::fabs(s - want) / want;
    if (rel > worst) {
      worst = rel;
      worst_at = a;
    }
  }
  EXPECT_LE(worst, 3.0 * std::ldexp(1.0, -24)) << "at a = " << worst_at;
  EXPECT_EQ(ref::silu_sigmoid(0.0f), 0.5f);
  EXPECT_EQ(ref::silu_sigmoid(-0.0f), 0.5f);
  float prev = 0.0f;
  for (float a = -100.0f; a <= 100.0f; a += 0.03125f) {
    const float s = ref::silu_sigmoid(a);
    EXPECT_GE(s, prev) << a;
    prev = s;
  }
}

TEST(SiluReference, SigmoidSpecialValues) {
  EXPECT_EQ(ref::silu_sigmoid(kInf), 1.0f);
  EXPECT_EQ(ref::silu_sigmoid(-kInf), 0.0f);
  EXPECT_EQ(ref::silu_sigmoid(1e30f), 1.0f);
  EXPECT_EQ(ref::silu_sigmoid(-1e30f), 0.0f);
  EXPECT_EQ(ref::silu_sigmoid(100.0f), 1.0f);
  // NaN: σ = 0, and a·σ = NaN carries the NaN into y and dx.
  EXPECT_TRUE(std::isnan(kNaN * ref::silu_sigmoid(kNaN)));
  // exp(−|a|) is exact at 0 and within 2 ulps elsewhere in range.
  EXPECT_EQ(ref::silu_exp_neg_abs(0.0f), 1.0f);
  for (float a : {0.5f, 1.0f, 3.0f, 10.0f, 40.0f, 86.9f}) {
    const double want = std::exp(-static_cast<double>(a));
    EXPECT_NEAR(ref::silu_exp_neg_abs(a), want, want * 2.5 * std::ldexp(1.0, -24)) << a;
  }
}

// The kernels' σ table (templates/kiln/silu_block_quant.cuh: fill and lookup, transcribed): for every non-NaN bf16
// gate, the table either holds exactly the σ computed for it or flags it for the computed fallback; the two-stage
// forward's table is complete (no fallback at all); the constant rows' claims (σ = 0.5 below exponent 102, σ = 1 or
// 0 from exponent 134) hold for every bf16 value.
TEST(SiluReference, SigmaTableLookupEqualsComputedSigma) {
  struct Variant {
    bool bwd;
    int stages, table;
  };
  for (const auto& [bwd, stages, tbl] : {Variant{false, 2, 1}, Variant{false, 1, 1}, Variant{true, 2, 1},
                                           Variant{true, 1, 1}, Variant{true, 1, 2}, Variant{false, 1, 2},
                                           Variant{false, 3, 1}, Variant{true, 3, 1}, Variant{false, 4, 1},
                                           Variant{false, 2, 3}, Variant{true, 1, 4}}) {
    SCOPED_TRACE(std::string(bwd ? "bwd" : "fwd") + " stages " + std::to_string(stages) + " table " +
                 std::to_string(tbl));
    const SiluTableShape T = silu_table_shape(bwd, stages, tbl);
    const int R = T.rows();
    const int F = T.entry / 4;  // floats an entry (table 4: {σ, 1 + a·(1 − σ)})
    ASSERT_EQ(T.entry, tbl == 4 ? 8 : 4);
    ASSERT_EQ(T.bytes(), 2 * R * 128 * T.entry);
    // The derivative factor as tests/reference/silu.cpp forms it: fp32 operations one at a time.
    auto dfac = [](float g, float sg) {
      volatile float one_m = 1.0f - sg;
      volatile float prod = g * one_m;
      return 1.0f + prod;
    };
    std::vector<float> table(2 * R * 128 * F);
    for (int i = 0; i < 2 * R * 128; ++i) {  // layout [row][mantissa][sign]
      const int sign = i & 1, row = i / 256, m = (i / 2) % 128;
      if (T.low_const && row == 0) table[F * i] = 0.5f;
      else if (T.high_const && row == R - 1) table[F * i] = sign ? 0.0f : 1.0f;
      else {
        const uint32_t E = static_cast<uint32_t>(T.lo + row - (T.low_const ? 1 : 0));
        const float g = bf16_to_float(static_cast<uint16_t>((sign << 15) | (E << 7) | m));
        const float sg = ref::silu_sigmoid(g);
        table[F * i] = tbl == 3 ? g * sg : sg;  // table 3: silu(a) = a·σ(a)
        if (F == 2) table[F * i + 1] = dfac(g, sg);
      }
    }
    // silu_table_offset2 transcribed: 16-bit lane-wise clamp of the magnitudes, (clamped − L)·8 | sign·4 per half,
    // fallback test; the element index is the byte offset / 4.
    const uint32_t R128 = static_cast<uint32_t>(R) * 128u;
    const uint32_t L = static_cast<uint32_t>(T.lo - (T.low_const ? 1 : 0)) << 7, U = L + R128 - 1;
    ASSERT_LT(U + R128 - L, 0x10000u);
    auto index2 = [&](uint32_t w, uint32_t& i0, uint32_t& i1) {
      bool fallback = false;
      uint32_t idx = 0;
      for (int h = 0; h < 2; ++h) {
        const uint32_t half = (w >> (16 * h)) & 0xffffu, m = half & 0x7fffu;
        const uint32_t lo = std::max(m, L), c = std::min(lo, U);
        if (!T.low_const && lo != m) fallback = true;
        if (!T.high_const && c != lo) fallback = true;
        const uint32_t off = ((c - L) << (F == 2 ? 4 : 3)) | ((half >> 15) << (F == 2 ? 3 : 2));
        EXPECT_LT(off, 0x10000u);
        idx |= off << (16 * h);
      }
      i0 = (idx & 0xffffu) / 4;
      i1 = (idx >> 16) / 4;
      return fallback;
    };
    int64_t fallbacks = 0;
    for (uint32_t b = 0; b < 0x10000; ++b) {
      const float a = bf16_to_float(static_cast<uint16_t>(b));
      const int E = static_cast<int>((b >> 7) & 0xffu);
      const bool has = !((!T.low_const && E < T.lo) || (!T.high_const && E >= T.hi));  // silu_table_has
      // b in either half, paired with a gate inside the table (1.0) so that only b can set the fallback flag.
      for (int h = 0; h < 2; ++h) {
        const uint32_t w = h ? (b << 16) | 0x3f80u : 0x3f800000u | b;
        uint32_t i0, i1;
        const bool fb = index2(w, i0, i1);
        const uint32_t idx = h ? i1 : i0;
        ASSERT_LT(idx, table.size());
        ASSERT_EQ(fb, !has) << std::hex << b;
        if (!has || std::isnan(a)) continue;  // σ(NaN) is irrelevant: a·σ is NaN either way
        const float want = tbl == 3 ? a * ref::silu_sigmoid(a) : ref::silu_sigmoid(a);
        ASSERT_EQ(idx % F, 0u);
        ASSERT_EQ(std::bit_cast<uint32_t>(table[idx]), std::bit_cast<uint32_t>(want)) << a;
        if (F == 2)
          ASSERT_EQ(std::bit_cast<uint32_t>(table[idx + 1]), std::bit_cast<uint32_t>(dfac(a, ref::silu_sigmoid(a)))) << a;
        const uint32_t other = h ? i0 : i1;
        ASSERT_EQ(std::bit_cast<uint32_t>(table[other]), std::bit_cast<uint32_t>(ref::silu_sigmoid(1.0f)));  // 1·σ(1) = σ(1)
      }
      if (!has && !std::isnan(a)) ++fallbacks;
    }
    if (T.complete()) EXPECT_EQ(fallbacks, 0);
    EXPECT_EQ(T.complete(), tbl == 2 || (!bwd && stages >= 2 && tbl != 3 && tbl != 4));
    EXPECT_LE(T.bytes(), bwd && tbl == 1 ? 15328 : tbl == 4 ? 65536 : 35840);
  }
}

// The kernels' division-free power-of-two scale (fp8.cuh block_scale_fast<true>, transcribed) equals the reference scale
// rule for a stride through every non-negative float, every boundary 448·2^k ± 1 ulp, zero, subnormals and inf
// (the device formula was also checked against the division on every non-negative float).
TEST(SiluReference, DivisionFreePowerOfTwoScale) {
  auto fast = [](float amax) {
    const uint32_t A = std::bit_cast<uint32_t>(amax);
    if (A >= 0x7f800000u) return std::bit_cast<float>(0x7f800000u);
    const int e = std::max(static_cast<int>(A >> 23) - 8 + ((A & 0x7fffffu) > 0x600000u ? 1 : 0), 28);
    return std::bit_cast<float>(static_cast<uint32_t>(e) << 23);
  };
  std::vector<uint32_t> bits = {0u, 1u, 0x7fffffu, 0x800000u, 0x7f7fffffu, 0x7f800000u};
  for (uint64_t b = 0; b < 0x7f800000ull; b += 9973) bits.push_back(static_cast<uint32_t>(b));
  for (int k = -140; k <= 120; ++k) {
    const float t = std::ldexp(448.0f, k);
    const uint32_t tb = std::bit_cast<uint32_t>(t);
    if (!std::isfinite(t) || t == 0.0f) continue;
    for (int d = -2; d <= 2; ++d) bits.push_back(tb + static_cast<uint32_t>(d));
  }
  for (uint32_t b : bits) {
    const float a = std::bit_cast<float>(b);
    ASSERT_EQ(std::bit_cast<uint32_t>(fast(a)), std::bit_cast<uint32_t>(ref::block_scale(a, true))) << std::hex << b;
  }
}

// ---- value formulas -----------------------------------------------------------------------------------------------

struct Data {
  int64_t M, n;
  std::vector<float> x, g, prob;
};
Data random_data(int64_t M, int64_t n, uint64_t seed) {
  Data d{M, n, randn(M * 2 * n, mix_seed({seed, 1}), 2.0f), randn(M * n, mix_seed({seed, 2})), {}};
  round_to(DType::bf16, d.x);
  round_to(DType::bf16, d.g);
  d.prob = randn(M, mix_seed({seed, 3}), 0.3f, 0.5f);
  return d;
}

TEST(SiluReference, ForwardValuesMatchDoubleMath) {
  const Data d = random_data(64, 256, 11);
  for (bool weighted : {false, true}) {
    const std::vector<float> y =
        ref::silu_fwd_values(d.x, d.M, d.n, weighted ? std::span<const float>(d.prob) : std::span<const float>{});
    for (int64_t m = 0; m < d.M; ++m)
      for (int64_t k = 0; k < d.n; ++k) {
        const double a = d.x[m * 2 * d.n + k], b = d.x[m * 2 * d.n + d.n + k];
        const double want = a * sigmoid_exact(a) * b * (weighted ? d.prob[m] : 1.0);
        ASSERT_NEAR(y[m * d.n + k], want, 8e-7 * std::fabs(want) + 1e-30) << m << "," << k;
      }
  }
}

// The backward formula is the derivative of the forward: checked against central differences in double, and the
// fp32 reference against the double formula.
TEST(SiluReference, BackwardValuesAreTheGradient) {
  const Data d = random_data(32, 128, 12);
  const ref::SiluGrads gr = ref::silu_bwd_values(d.g, d.x, d.M, d.n, d.prob);
  auto f = [](double a, double b) { return a * sigmoid_exact(a) * b; };
  for (int64_t m = 0; m < d.M; ++m) {
    double dprob = 0;
    for (int64_t k = 0; k < d.n; ++k) {
      const double a = d.x[m * 2 * d.n + k], b = d.x[m * 2 * d.n + d.n + k], g = d.g[m * d.n + k], w = d.prob[m];
      const double h = 1e-5;
      const double da = g * w * (f(a + h, b) - f(a - h, b)) / (2 * h);
      const double db = g * w * (f(a, b + h) - f(a, b - h)) / (2 * h);
      ASSERT_NEAR(gr.dx[m * 2 * d.n + k], da, 1e-5 * (1 + std::fabs(da))) << m << "," << k;
      ASSERT_NEAR(gr.dx[m * 2 * d.n + d.n + k], db, 1e-5 * (1 + std::fabs(db))) << m << "," << k;
      dprob += g * f(a, b);
    }
    EXPECT_NEAR(gr.dprob[m], dprob, 1e-5 * (1 + std::fabs(dprob))) << m;
  }
}

// ---- segmented layout -------------------------------------------------------------------------------------------

TEST(SiluReference, SegmentedLayoutIsPerExpertStandalone) {
  const int64_t W = 256;
  const std::vector<int> counts = {130, 0, 1, 128, 0, 77};
  int64_t M = 0;
  for (int c : counts) M += c;
  std::vector<float> y = randn(M * W, 21);
  std::fill_n(y.begin() + 131 * W, 128 * W, 0.0f);  // expert 3 all zero: scales 1e-30
  const ref::QuantOutputs seg = ref::quantize_segmented(y, counts, W, true, true, true);
  EXPECT_EQ(ref::token_blocks(counts), 2 + 1 + 1 + 1);
  ASSERT_EQ(seg.qT_scale.size(), static_cast<size_t>(5 * W));
  int64_t s = 0, b = 0;
  for (int c : counts) {
    const ref::QuantOutputs e =
        ref::quantize_plain(std::span<const float>(y).subspan(s * W, c * W), c, W, true, true, true);
    for (size_t i = 0; i < e.q_scale.size(); ++i) ASSERT_EQ(seg.q_scale[s * W / 128 + i], e.q_scale[i]);
    for (size_t i = 0; i < e.qT.size(); ++i) ASSERT_EQ(seg.qT[s * W + i], e.qT[i]);
    for (size_t i = 0; i < e.qT_scale.size(); ++i) ASSERT_EQ(seg.qT_scale[b * W + i], e.qT_scale[i]);
    s += c;
    b += (c + 127) / 128;
  }
  EXPECT_EQ(seg.qT_scale[3 * W], std::ldexp(1.0f, -99));  // expert 3's first token block (zero): 2^-99
  // One expert is the plain layout.
  const std::vector<int> one = {static_cast<int>(M)};
  const ref::QuantOutputs a = ref::quantize_segmented(y, one, W, false, true, true);
  const ref::QuantOutputs p = ref::quantize_plain(y, M, W, false, true, true);
  EXPECT_TRUE(bitwise_equal("q", a.q, p.q));
  EXPECT_TRUE(bitwise_equal("q_scale", a.q_scale, p.q_scale));
  EXPECT_TRUE(bitwise_equal("qT", a.qT, p.qT));
  EXPECT_TRUE(bitwise_equal("qT_scale", a.qT_scale, p.qT_scale));
}

TEST(SiluReference, MaxTokenBlocksBoundsEveryValidSplit) {
  for (int64_t E : {1, 7, 32, 256}) {
    for (uint64_t seed = 0; seed < 20; ++seed) {
      std::vector<int> counts(static_cast<size_t>(E));
      int64_t M = 0;
      uint64_t r = mix_seed({seed, static_cast<uint64_t>(E)});
      for (auto& c : counts) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        c = static_cast<int>((r >> 33) % 300);
        M += c;
      }
      EXPECT_LE(ref::token_blocks(counts), batch_weighted_silu_max_token_blocks(M, E));
    }
    // The worst case: every expert one row past a multiple of 128.
    std::vector<int> counts(static_cast<size_t>(E), 129);
    EXPECT_LE(ref::token_blocks(counts), batch_weighted_silu_max_token_blocks(129 * E, E));
  }
}

// ---- NVRTC: specializations outside the presets' enumeration (modes 0 and 1, one stage) -------------------------

TEST(SiluCompile, OutputModesAndStagesCompile) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  detail::Counters counters;
  for (const char* fam : {"silu_block_quant", "batch_weighted_silu_block_quant"}) {
    const detail::FamilyDef* f = detail::find_family(fam);
    ASSERT_NE(f, nullptr) << fam;
    for (int mode : {0, 1}) {
      detail::Specialization s;
      s.family = f;
      s.arch = detail::Arch::parse("sm_90a");
      s.kernel = 0;  // fwd
      s.params[0] = 128;
      s.params[1] = mode;
      s.params[2] = mode;  // round_scale 0 with mode 0, 1 with mode 1
      // The search space's non-default points: one stage; the silu(a) table with one code buffer.
      if (mode == 0) s.config = {1, 1, 1};
      else s.config = {2, 3, 1};
      EXPECT_TRUE(detail::in_search_space(s)) << s.describe();
      EXPECT_GT(detail::ensure_cubin(s, nullptr, false, counters).cubin.size(), 1000u) << fam << " " << s.describe();
    }
  }
  // The one-stage backward with the complete σ table (a search-space point of the backward only).
  detail::Specialization s;
  s.family = detail::find_family("silu_block_quant");
  s.arch = detail::Arch::parse("sm_90a");
  s.kernel = 1;  // bwd
  s.params = {256, 2, 1};
  s.config = {1, 2, 1};
  EXPECT_TRUE(detail::in_search_space(s)) << s.describe();
  EXPECT_GT(detail::ensure_cubin(s, nullptr, false, counters).cubin.size(), 1000u) << s.describe();
}

// Shared memory of every search-space point: within the opt-in limit (227 KiB), and the one-stage forward small
// enough for two CTAs an SM (228 KiB an SM, 1 KiB reserved per CTA).
TEST(SiluCompile, SearchSpaceSharedMemoryFits) {
  for (const char* fam : {"silu_block_quant", "batch_weighted_silu_block_quant"})
    for (uint32_t kernel : {0u, 1u}) {
      detail::Specialization s;
      s.family = detail::find_family(fam);
      ASSERT_NE(s.family, nullptr);
      s.arch = detail::Arch::parse("sm_90a");
      s.kernel = kernel;
      s.params = {1024, 2, 1};
      std::vector<detail::Specialization> points;
      s.family->search_space(s, points);
      ASSERT_FALSE(points.empty());
      for (const detail::Specialization& p : points) {
        const int smem = s.family->dynamic_smem_bytes(p);
        EXPECT_LE(smem, 227 * 1024) << fam << " " << p.describe();
        if (kernel == 0 && p.config[0] == 1) EXPECT_LE(smem, 114 * 1024 - 1024) << fam << " " << p.describe();
      }
    }
}

// ---- argument checks ----------------------------------------------------------------------------------------------

SiluBlockQuantOutputs plain_outputs(int64_t M, int64_t W) {
  SiluBlockQuantOutputs o;
  o.q = TensorRef::contiguous(fake(2), DType::e4m3, {M, W});
  o.q_scale = TensorRef::contiguous(fake(3), DType::f32, {W / 128, M});
  o.qT = TensorRef::contiguous(fake(4), DType::e4m3, {W, M});
  o.qT_scale = TensorRef::contiguous(fake(5), DType::f32, {(M + 127) / 128, W});
  return o;
}

class SiluErrors : public ::testing::Test {
 protected:
  static constexpr int64_t M = 300, n = 512;
  void fwd() { silu_block_quant_fwd(rt, x, out, opts, nullptr); }
  void bwd() { silu_block_quant_bwd(rt, g, x, dx, false, nullptr); }
  Runtime rt{cpu_options()};
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {M, 2 * n});
  TensorRef g = TensorRef::contiguous(fake(1), DType::bf16, {M, n});
  SiluBlockQuantOutputs out = plain_outputs(M, n);
  SiluBlockQuantOutputs dx = plain_outputs(M, 2 * n);
  SiluBlockQuantOptions opts;
};

TEST_F(SiluErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(fwd());
  EXPECT_REACHES_DEVICE(bwd());
  opts.output_mode = 0;
  out.qT = {};
  out.qT_scale = {};
  EXPECT_REACHES_DEVICE(fwd());
}

TEST_F(SiluErrors, EmptyInputLaunchesNothing) {
  x = TensorRef::contiguous(fake(0), DType::bf16, {0, 2 * n});
  g = TensorRef::contiguous(fake(1), DType::bf16, {0, n});
  out = plain_outputs(0, n);
  dx = plain_outputs(0, 2 * n);
  EXPECT_NO_THROW(fwd());
  EXPECT_NO_THROW(bwd());
}

TEST_F(SiluErrors, NNotAMultipleOf128) {
  for (int64_t bad : {64, 200, 1000}) {
    x = TensorRef::contiguous(fake(0), DType::bf16, {M, 2 * bad});
    EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
    EXPECT_THROW_NAMING(bwd(), "x", ShapeMismatchError);
  }
  x = TensorRef::contiguous(fake(0), DType::bf16, {M, 2 * n + 8});  // odd split
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
}

TEST_F(SiluErrors, WrongDtypes) {
  for (DType d : {DType::f32, DType::f16, DType::e4m3}) {
    x.dtype = d;
    EXPECT_THROW_NAMING(fwd(), "x", UnsupportedDtypeError);
    EXPECT_THROW_NAMING(bwd(), "x", UnsupportedDtypeError);
  }
  x.dtype = DType::bf16;
  g.dtype = DType::f32;
  EXPECT_THROW_NAMING(bwd(), "g", UnsupportedDtypeError);
  out.q.dtype = DType::bf16;
  EXPECT_THROW_NAMING(fwd(), "q", UnsupportedDtypeError);
  out = plain_outputs(M, n);
  out.qT_scale.dtype = DType::bf16;
  EXPECT_THROW_NAMING(fwd(), "qT_scale", UnsupportedDtypeError);
}

TEST_F(SiluErrors, WrongShapes) {
  g = TensorRef::contiguous(fake(1), DType::bf16, {M, 2 * n});
  EXPECT_THROW_NAMING(bwd(), "g", ShapeMismatchError);
  g = TensorRef::contiguous(fake(1), DType::bf16, {M + 1, n});
  EXPECT_THROW_NAMING(bwd(), "g", ShapeMismatchError);
  out.q_scale = TensorRef::contiguous(fake(3), DType::f32, {M, n / 128});  // token-major: not the §2 layout
  EXPECT_THROW_NAMING(fwd(), "q_scale", ShapeMismatchError);
  out = plain_outputs(M, n);
  out.qT = TensorRef::contiguous(fake(4), DType::e4m3, {M, n});
  EXPECT_THROW_NAMING(fwd(), "qT", ShapeMismatchError);
  out = plain_outputs(M, n);
  out.qT_scale = TensorRef::contiguous(fake(5), DType::f32, {M / 128, n});  // floor instead of ceil
  EXPECT_THROW_NAMING(fwd(), "qT_scale", ShapeMismatchError);
  g = TensorRef::contiguous(fake(1), DType::bf16, {M, n});
  dx = plain_outputs(M, n);  // the backward's outputs are 2n wide
  EXPECT_THROW_NAMING(bwd(), "q", ShapeMismatchError);
}

TEST_F(SiluErrors, OutputModeAndMissingOutputs) {
  opts.output_mode = 3;
  EXPECT_THROW_NAMING(fwd(), "output_mode", InvalidArgument);
  opts.output_mode = 1;
  out.qT = {};
  EXPECT_THROW_NAMING(fwd(), "qT", ShapeMismatchError, InvalidArgument, UnsupportedDtypeError);
  dx = plain_outputs(M, 2 * n);
  dx.q_scale = {};
  EXPECT_THROW_NAMING(bwd(), "q_scale", ShapeMismatchError, InvalidArgument, UnsupportedDtypeError);
}

TEST_F(SiluErrors, MisalignedRows) {
  x = TensorRef::strided_2d(fake(0), DType::bf16, M, 2 * n, 2 * n + 1);
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError, InvalidArgument);
  x = TensorRef::contiguous(static_cast<char*>(fake(0)) + 2, DType::bf16, {M, 2 * n});
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
}

TEST_F(SiluErrors, NegativeRows) {  // a negative row count once reached the launch as a huge grid
  x.shape[0] = -M;
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
  x.shape[0] = M;
  g.shape[0] = -M;
  EXPECT_THROW_NAMING(bwd(), "g", ShapeMismatchError);
}

TEST_F(SiluErrors, TooManyRows) {  // rows index with 32-bit ints
  const int64_t m = int64_t{1} << 31;
  x = TensorRef::contiguous(fake(0), DType::bf16, {m, 2 * n});
  out = plain_outputs(m, n);
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
}

class BatchSiluErrors : public ::testing::Test {
 protected:
  static constexpr int64_t M = 1000, n = 256, E = 7;
  static SiluBlockQuantOutputs seg_outputs(int64_t m, int64_t W, int64_t e) {
    SiluBlockQuantOutputs o;
    o.q = TensorRef::contiguous(fake(2), DType::e4m3, {m, W});
    o.q_scale = TensorRef::contiguous(fake(3), DType::f32, {m * W / 128});
    o.qT = TensorRef::contiguous(fake(4), DType::e4m3, {m * W});
    o.qT_scale =
        TensorRef::contiguous(fake(5), DType::f32, {batch_weighted_silu_max_token_blocks(m, e) * W});
    return o;
  }
  void fwd() { batch_weighted_silu_block_quant_fwd(rt, x, prob, counts, out, status, opts, nullptr); }
  void bwd() { batch_weighted_silu_block_quant_bwd(rt, g, x, prob, counts, dx, dprob, status, opts, nullptr); }
  Runtime rt{cpu_options()};
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {M, 2 * n});
  TensorRef g = TensorRef::contiguous(fake(1), DType::bf16, {M, n});
  TensorRef prob = TensorRef::contiguous(fake(6), DType::f32, {M});
  TensorRef counts = TensorRef::contiguous(fake(7), DType::i32, {E});
  TensorRef dprob = TensorRef::contiguous(fake(8), DType::f32, {M});
  TensorRef status;
  SiluBlockQuantOutputs out = seg_outputs(M, n, E);
  SiluBlockQuantOutputs dx = seg_outputs(M, 2 * n, E);
  BatchSiluOptions opts;
};

TEST_F(BatchSiluErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(fwd());
  EXPECT_REACHES_DEVICE(bwd());
  prob = TensorRef::contiguous(fake(6), DType::f32, {M, 1});  // [M, 1] as linghe passes it
  status = TensorRef::contiguous(fake(9), DType::i32, {1});
  EXPECT_REACHES_DEVICE(fwd());
  // M = 0 still validates the counts on the device when a status is requested.
  x = TensorRef::contiguous(fake(0), DType::bf16, {0, 2 * n});
  prob = TensorRef::contiguous(fake(6), DType::f32, {0});
  out = seg_outputs(0, n, E);
  EXPECT_REACHES_DEVICE(fwd());
}

TEST_F(BatchSiluErrors, EmptyInputWithoutStatusLaunchesNothing) {
  x = TensorRef::contiguous(fake(0), DType::bf16, {0, 2 * n});
  g = TensorRef::contiguous(fake(1), DType::bf16, {0, n});
  prob = TensorRef::contiguous(fake(6), DType::f32, {0});
  dprob = TensorRef::contiguous(fake(8), DType::f32, {0});
  out = seg_outputs(0, n, E);
  dx = seg_outputs(0, 2 * n, E);
  EXPECT_NO_THROW(fwd());
  EXPECT_NO_THROW(bwd());
}

TEST_F(BatchSiluErrors, ProbOfWrongLengthOrDtype) {
  prob = TensorRef::contiguous(fake(6), DType::f32, {M - 1});
  EXPECT_THROW_NAMING(fwd(), "prob", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "prob", ShapeMismatchError);
  prob = TensorRef::contiguous(fake(6), DType::f32, {M, 2});
  EXPECT_THROW_NAMING(fwd(), "prob", ShapeMismatchError);
  prob = TensorRef::contiguous(fake(6), DType::bf16, {M});
  EXPECT_THROW_NAMING(fwd(), "prob", UnsupportedDtypeError);
}

TEST_F(BatchSiluErrors, CountsOfWrongDtypeOrShape) {
  counts.dtype = DType::f32;
  EXPECT_THROW_NAMING(fwd(), "counts", UnsupportedDtypeError);
  counts = TensorRef::contiguous(fake(7), DType::i32, {0});
  EXPECT_THROW_NAMING(fwd(), "counts", ShapeMismatchError);
  counts = TensorRef::contiguous(fake(7), DType::i32, {E, 2});
  EXPECT_THROW_NAMING(bwd(), "counts", ShapeMismatchError);
  counts = TensorRef::contiguous(nullptr, DType::i32, {E});
  EXPECT_THROW_NAMING(fwd(), "counts", InvalidArgument);
}

TEST_F(BatchSiluErrors, NNotAMultipleOf128) {
  x = TensorRef::contiguous(fake(0), DType::bf16, {M, 2 * 200});
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::f16, {M, 2 * n});
  EXPECT_THROW_NAMING(fwd(), "x", UnsupportedDtypeError);
}

TEST_F(BatchSiluErrors, SegmentedOutputsOfWrongShape) {
  out.q_scale = TensorRef::contiguous(fake(3), DType::f32, {n / 128, M});  // flat, not 2-D
  EXPECT_THROW_NAMING(fwd(), "q_scale", ShapeMismatchError);
  out = seg_outputs(M, n, E);
  out.qT = TensorRef::contiguous(fake(4), DType::e4m3, {n, M});
  EXPECT_THROW_NAMING(fwd(), "qT", ShapeMismatchError);
  out = seg_outputs(M, n, E);
  out.qT_scale = TensorRef::contiguous(fake(5), DType::f32, {10 * n + 1});
  EXPECT_THROW_NAMING(fwd(), "qT_scale", ShapeMismatchError);
  dx.q = TensorRef::contiguous(fake(2), DType::e4m3, {M, n});
  EXPECT_THROW_NAMING(bwd(), "q", ShapeMismatchError);
}

TEST_F(BatchSiluErrors, GradAndDprob) {
  g = TensorRef::contiguous(fake(1), DType::bf16, {M, 2 * n});
  EXPECT_THROW_NAMING(bwd(), "g", ShapeMismatchError);
  g = TensorRef::contiguous(fake(1), DType::bf16, {M, n});
  dprob = TensorRef::contiguous(fake(8), DType::f32, {M + 1});
  EXPECT_THROW_NAMING(bwd(), "dprob", ShapeMismatchError);
  dprob = TensorRef::contiguous(fake(8), DType::bf16, {M});
  EXPECT_THROW_NAMING(bwd(), "dprob", UnsupportedDtypeError);
}

TEST_F(BatchSiluErrors, StatusAndOptions) {
  status = TensorRef::contiguous(fake(9), DType::f32, {1});
  EXPECT_THROW_NAMING(fwd(), "status", UnsupportedDtypeError);
  status = TensorRef::contiguous(fake(9), DType::i32, {2});
  EXPECT_THROW_NAMING(fwd(), "status", ShapeMismatchError);
  status = {};
  opts.output_mode = -1;
  EXPECT_THROW_NAMING(fwd(), "output_mode", InvalidArgument);
}

TEST_F(BatchSiluErrors, NegativeAndTooManyRows) {
  x.shape[0] = -M;  // once reached the launch as a huge grid
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "x", ShapeMismatchError);
  const int64_t m = int64_t{1} << 31;  // rows index with 32-bit ints
  x = TensorRef::contiguous(fake(0), DType::bf16, {m, 2 * n});
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
}

TEST_F(BatchSiluErrors, NullMisalignedAndStridedWeights) {
  // (tensor, its name, the call that reads it, a bad pointer: null or 2 bytes off the 4-byte alignment)
  for (const auto& [t, arg, backward, null] :
       {std::tuple{&prob, "prob", false, true}, {&prob, "prob", true, false}, {&counts, "counts", false, false},
        {&dprob, "dprob", true, true}}) {
    void* const good = t->data;
    t->data = null ? nullptr : static_cast<char*>(good) + 2;
    if (backward) EXPECT_THROW_NAMING(bwd(), arg, InvalidArgument);
    else EXPECT_THROW_NAMING(fwd(), arg, InvalidArgument);
    t->data = good;
  }
  prob = TensorRef::strided_2d(fake(6), DType::f32, M, 1, 2);  // [M, 1] with a row stride of 2: not contiguous
  EXPECT_THROW_NAMING(fwd(), "prob", ShapeMismatchError);
}

}  // namespace
}  // namespace kiln::test
