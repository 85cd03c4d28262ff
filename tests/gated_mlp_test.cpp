// tests/gated_mlp_test.cpp — the fused gated MLP expansion on the CPU (runs in CI without a GPU): the reference against
// hand-computed values and identities, its TF32 emulation, the family's search space and enumeration, NVRTC compiles
// for sm_90a (the preset specializations are compiled by compile_test's EveryPresetSpecializationCompilesForSm90a),
// and every argument check of fused_gated_mlp.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kiln/ops/gated_mlp.hpp"
#include "reference/gated_mlp.hpp"
#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "compile_util.hpp"
#include "test_util.hpp"

namespace kiln::detail {
std::pair<int, int> gated_mlp_default_config(int64_t I, int64_t M, int sms);  // ops/gated_mlp.cpp
}  // namespace kiln::detail

namespace kiln::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// n draws of U(−scale, scale): erf(z/√2) of z ~ N(0, 1) is uniform on (−1, 1) (the GPU tests' inputs).
std::vector<float> uniform(int64_t n, uint64_t seed, double scale) {
  std::vector<float> v = randn(n, seed);
  for (float& e : v) e = static_cast<float>(scale * std::erf(e * 0.70710678118654752440));
  return v;
}

// ---- reference ----------------------------------------------------------------------------------------------------

TEST(GatedMlpReference, SmallCaseByHand) {
  // M = 2, H = 3, I = 2.  x = [[1, 2, 3], [−1, 0, 0.5]],  W_g = [[1, 0, 0], [0.5, −1, 1]],  W_u = [[1, 1, 1], [0, 2, 0]]
  const std::vector<float> x = {1, 2, 3, -1, 0, 0.5f}, wg = {1, 0, 0, 0.5f, -1, 1}, wu = {1, 1, 1, 0, 2, 0};
  const ref::GatedMlpRef r = ref::gated_mlp(x, wg, wu, 2, 3, 2, GatedActivation::silu);
  EXPECT_EQ(r.g, (std::vector<double>{1, 1.5, -1, 0}));
  EXPECT_EQ(r.u, (std::vector<double>{6, 4, -0.5, 0}));
  const double silu1 = 0.73105857863000487925, silu15 = 1.5 / (1 + std::exp(-1.5)), silum1 = -0.26894142136999512075;
  EXPECT_NEAR(r.out[0], silu1 * 6, 1e-15);
  EXPECT_NEAR(r.out[1], silu15 * 4, 1e-15);
  EXPECT_NEAR(r.out[2], silum1 * -0.5, 1e-15);
  EXPECT_EQ(r.out[3], 0.0);
  const ref::GatedMlpRef q = ref::gated_mlp(x, wg, wu, 2, 3, 2, GatedActivation::gelu);
  const double gelu1 = 0.84134474606854292578;  // Φ(1)
  EXPECT_NEAR(q.out[0], gelu1 * 6, 1e-15);
  EXPECT_NEAR(q.out[2], (gelu1 - 1) * -0.5, 1e-15);  // gelu(−1) = −(1 − Φ(1))
}

// silu(z) − silu(−z) = z and gelu(z) − gelu(−z) = z (σ(z) + σ(−z) = 1, erf odd); both vanish at 0, approach z for
// large z and 0 for very negative z (no NaN from e^−z overflowing: z/∞ = −0); gelu is the exact erf form, not tanh.
TEST(GatedMlpReference, ActivationIdentities) {
  for (GatedActivation a : {GatedActivation::silu, GatedActivation::gelu}) {
    for (double z : {1e-8, 0.1, 0.5, 1.0, 2.7, 10.0, 40.0})
      EXPECT_NEAR(ref::gated_activation(z, a) - ref::gated_activation(-z, a), z, 1e-15 * (1 + z)) << z;
    EXPECT_EQ(ref::gated_activation(0.0, a), 0.0);
    EXPECT_EQ(ref::gated_activation(1e3, a), 1e3);
    EXPECT_EQ(ref::gated_activation(-1e3, a), 0.0);
    EXPECT_TRUE(std::isnan(ref::gated_activation(std::nan(""), a)));
  }
  // The tanh approximation differs by up to 4.7e-4 near z ≈ −2.7 (spec §3.2); the reference must not be it.
  const double z = -2.7, tanh_form = 0.5 * z * (1 + std::tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)));
  EXPECT_GT(std::fabs(ref::gated_activation(z, GatedActivation::gelu) - tanh_form), 3e-4);
}

TEST(GatedMlpReference, Tf32KeepsTenMantissaBits) {
  const float one_and_a_half_ulp = 1.0f + 0x1p-10f + 0x1p-11f;  // a tie between 1 + 2⁻¹⁰ (odd) and 1 + 2⁻⁹ (even)
  EXPECT_EQ(ref::to_tf32(one_and_a_half_ulp, ref::Tf32::truncate), 1.0f + 0x1p-10f);
  EXPECT_EQ(ref::to_tf32(one_and_a_half_ulp, ref::Tf32::round), 1.0f + 0x1p-9f);
  EXPECT_EQ(ref::to_tf32(-(1.0f + 0x1p-11f), ref::Tf32::round), -1.0f);  // tie to even
  EXPECT_EQ(ref::to_tf32(1.0f + 0x1p-11f + 0x1p-20f, ref::Tf32::round), 1.0f + 0x1p-10f);
  EXPECT_EQ(ref::to_tf32(0x1.fffffep0f, ref::Tf32::truncate), 0x1.ffcp0f);
  EXPECT_EQ(ref::to_tf32(0x1.fffffep0f, ref::Tf32::round), 2.0f);  // carries into the exponent
  EXPECT_EQ(ref::to_tf32(0x1.fffffep0f, ref::Tf32::none), 0x1.fffffep0f);
  EXPECT_EQ(std::bit_cast<uint32_t>(ref::to_tf32(-0.0f, ref::Tf32::truncate)), 0x80000000u);
  EXPECT_TRUE(std::isnan(ref::to_tf32(std::bit_cast<float>(0x7f800001u), ref::Tf32::truncate)));  // not inf
  EXPECT_EQ(ref::to_tf32(kInf, ref::Tf32::round), kInf);
  // bf16 and fp16 values are TF32 values: the 16-bit paths need no emulation.
  for (float v : random_values(4096, 0x7f32, DType::bf16)) ASSERT_EQ(ref::to_tf32(v, ref::Tf32::truncate), v);
  for (float v : random_values(4096, 0x7f33, DType::f16)) ASSERT_EQ(ref::to_tf32(v, ref::Tf32::truncate), v);
  // Every truncated value has its low 13 bits clear and lies within 2⁻¹⁰ relative below |v|.
  for (float v : randn(4096, 0x7f34)) {
    const float t = ref::to_tf32(v, ref::Tf32::truncate);
    ASSERT_EQ(std::bit_cast<uint32_t>(t) & 0x1FFFu, 0u);
    ASSERT_LE(std::fabs(t), std::fabs(v));
    ASSERT_LE(std::fabs(v - t), std::ldexp(std::fabs(v), -10));
  }
}

// The GPU tests hold fp32 (TF32) outputs to relative L2 ≤ 2e-3 against the truncating reference. A device that
// rounded operands to nearest instead would differ from it by the amount measured here, ≈ 1.6e-3: truncation shrinks
// every operand by ~2⁻¹¹·0.72 on average, a bias that adds up coherently in g, u and their product. That leaves 10%
// of the tolerance, far more than fp32 accumulation over H needs (~1e-6 relative). The same inputs without TF32
// emulation differ far more than fp32 rounding would, so the emulation is what the comparison needs.
TEST(GatedMlpReference, Tf32TruncationAndRoundingAgree) {
  const int64_t M = 48, H = 2048, I = 96;
  const std::vector<float> x = uniform(M * H, 0x91, 1.0), wg = uniform(I * H, 0x92, 1 / std::sqrt(double(H))),
                           wu = uniform(I * H, 0x93, 1 / std::sqrt(double(H)));
  for (GatedActivation a : {GatedActivation::silu, GatedActivation::gelu}) {
    const auto trunc = ref::gated_mlp(x, wg, wu, M, H, I, a, ref::Tf32::truncate);
    const auto rnd = ref::gated_mlp(x, wg, wu, M, H, I, a, ref::Tf32::round);
    const auto exact = ref::gated_mlp(x, wg, wu, M, H, I, a, ref::Tf32::none);
    std::vector<float> rf(rnd.out.begin(), rnd.out.end()), ef(exact.out.begin(), exact.out.end());
    const double d_round = relative_l2(rf, trunc.out), d_exact = relative_l2(ef, trunc.out);
    EXPECT_LE(d_round, 1.8e-3) << "act " << static_cast<int>(a);
    EXPECT_GT(d_exact, 1e-4) << "act " << static_cast<int>(a);
    RecordProperty(a == GatedActivation::silu ? "silu_trunc_vs_round" : "gelu_trunc_vs_round", std::to_string(d_round));
    RecordProperty(a == GatedActivation::silu ? "silu_trunc_vs_exact" : "gelu_trunc_vs_exact", std::to_string(d_exact));
  }
}

// Rows are independent: a NaN or ±inf in one row of x makes that row non-finite and leaves every other row as it was.
TEST(GatedMlpReference, NonFiniteInputsStayInTheirRow) {
  const int64_t M = 5, H = 16, I = 8;
  std::vector<float> x = uniform(M * H, 0xa1, 1.0);
  const std::vector<float> wg = uniform(I * H, 0xa2, 0.25), wu = uniform(I * H, 0xa3, 0.25);
  for (GatedActivation a : {GatedActivation::silu, GatedActivation::gelu}) {
    std::vector<float> bad = x;
    bad[1 * H + 3] = kNaN;
    bad[3 * H + 7] = kInf;
    bad[4 * H + 0] = -kInf;
    const auto clean = ref::gated_mlp(x, wg, wu, M, H, I, a), r = ref::gated_mlp(bad, wg, wu, M, H, I, a);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t i = 0; i < I; ++i) {
        const double v = r.out[m * I + i];
        if (m == 1 || m == 3 || m == 4)
          EXPECT_FALSE(std::isfinite(v)) << m << " " << i;
        else
          EXPECT_EQ(v, clean.out[m * I + i]) << m << " " << i;
      }
  }
}

// ---- family: specializations, search space, enumeration --------------------------------------------------------

const detail::FamilyDef& family() { return registered_family("gated_mlp"); }

// kernel 0 fwd; params H, I, act, dtype; config bn, stages.
detail::Specialization make(int64_t H, int64_t I, GatedActivation act, DType t, int bn = 128, int stages = 4,
                            const char* arch = "sm_90a") {
  detail::Specialization s;
  s.family = &family();
  s.arch = detail::Arch::parse(arch);
  s.kernel = 0;
  s.params[0] = H;
  s.params[1] = I;
  s.params[2] = static_cast<int64_t>(act);
  s.params[3] = static_cast<int64_t>(t);
  s.config[0] = bn;
  s.config[1] = stages;
  return s;
}

std::vector<detail::Specialization> enumerated(const ModelConfig& m, const char* arch = "sm_90a") {
  std::vector<detail::Specialization> out;
  family().enumerate(m, detail::Arch::parse(arch), out);
  return out;
}

TEST(GatedMlpFamily, Layout) {
  const detail::FamilyDef& f = family();
  ASSERT_EQ(f.kernels.size(), 1u);
  EXPECT_STREQ(f.kernels[0], "fwd");
  ASSERT_EQ(f.param_names.size(), 4u);
  EXPECT_STREQ(f.param_names[0], "H");
  EXPECT_STREQ(f.param_names[1], "I");
  EXPECT_STREQ(f.param_names[2], "act");
  EXPECT_STREQ(f.param_names[3], "dtype");
  ASSERT_EQ(f.config_names.size(), 2u);
  EXPECT_STREQ(f.config_names[0], "bn");
  EXPECT_STREQ(f.config_names[1], "stages");
  EXPECT_NE(f.search_space, nullptr);
  EXPECT_NE(f.tune_instance, nullptr);
}

// The preset models: the dense MLP (hidden → intermediate) and, where a model has shared experts, their expansion
// (hidden → moe_intermediate · shared), bf16 SiLU, each with its default config; nothing on other archs.
TEST(GatedMlpFamily, EnumeratesThePresetsMlps) {
  struct Want {
    const char* preset;
    std::vector<std::pair<int64_t, int64_t>> hi;
  };
  for (const Want& w : {Want{"ling-mini-2.0", {{2048, 5120}, {2048, 512}}},
                        Want{"deepseek-v3", {{7168, 18432}, {7168, 2048}}},
                        Want{"qwen3-30b-a3b", {{2048, 6144}}}}) {
    SCOPED_TRACE(w.preset);
    const ModelConfig m = load_model(w.preset);
    const auto specs = enumerated(m);
    ASSERT_EQ(specs.size(), 2 * w.hi.size());  // both defaults the op picks from by M
    std::set<std::string> keys;
    for (size_t k = 0; k < specs.size(); ++k) {
      const auto& s = specs[k];
      EXPECT_EQ(s.family, &family());
      EXPECT_EQ(s.kernel, 0u);
      EXPECT_EQ(s.params[0], w.hi[k / 2].first);
      EXPECT_EQ(s.params[1], w.hi[k / 2].second);
      EXPECT_EQ(s.params[2], static_cast<int64_t>(GatedActivation::silu));
      EXPECT_EQ(s.params[3], static_cast<int64_t>(DType::bf16));
      EXPECT_EQ(s.config[0], k % 2 ? 64 : 128) << s.describe();
      EXPECT_EQ(s.config[1], k % 2 ? 6 : 4) << s.describe();
      EXPECT_TRUE(detail::in_search_space(s)) << s.describe();
      EXPECT_TRUE(keys.insert(s.key().hex()).second) << s.describe();
    }
    for (const char* arch : {"sm_80", "sm_89", "sm_90", "sm_100a"}) EXPECT_TRUE(enumerated(m, arch).empty()) << arch;
  }
  ModelConfig dense;  // no shared experts: the dense MLP only
  dense.hidden_size = 1024;
  dense.intermediate_size = 4096;
  dense.moe_intermediate_size = 1408;
  EXPECT_EQ(enumerated(dense).size(), 2u);
  dense.intermediate_size = 64;  // I ≤ 64: the 64-column tile alone
  const auto narrow = enumerated(dense);
  ASSERT_EQ(narrow.size(), 1u);
  EXPECT_EQ(narrow[0].config[0], 64);
  EXPECT_EQ(narrow[0].config[1], 6);
}

// The default by M (the wave model, ops/gated_mlp.cpp): at I = 5120 on 132 SMs the 128-column tile from M = 2048 up,
// the 64-column one at M ≤ 1024 (the session-29 H200 rows: 61.0 against 69.5 µs at M = 1024, 16.6 against 25.9 at
// 128; 116.1 against 121.6 at 2048 the other way); 64 columns wherever I ≤ 64; no token count or SM count: 128.
TEST(GatedMlpFamily, DefaultConfigFollowsTheWaveModel) {
  using detail::gated_mlp_default_config;
  const std::pair<int, int> wide{128, 4}, narrow{64, 6};
  EXPECT_EQ(gated_mlp_default_config(5120, 8192, 132), wide);
  EXPECT_EQ(gated_mlp_default_config(5120, 2048, 132), wide);
  EXPECT_EQ(gated_mlp_default_config(5120, 1024, 132), narrow);
  EXPECT_EQ(gated_mlp_default_config(5120, 128, 132), narrow);
  EXPECT_EQ(gated_mlp_default_config(5120, 1, 132), narrow);
  EXPECT_EQ(gated_mlp_default_config(5120, -1, 132), wide);
  EXPECT_EQ(gated_mlp_default_config(5120, 1024, 0), wide);
  // One row tile: 150 / 300 tiles are 2 against 3 waves (0.53 · 3 < 2): narrow; 200 / 400 are 2 against 4 (2.12):
  // wide; 132 / 264 are 1 against 2 (1.06): wide.
  EXPECT_EQ(gated_mlp_default_config(128 * 150, 128, 132), narrow);
  EXPECT_EQ(gated_mlp_default_config(128 * 200, 128, 132), wide);
  EXPECT_EQ(gated_mlp_default_config(128 * 132, 128, 132), wide);
  for (int64_t M : {int64_t{1}, int64_t{8192}, int64_t{65536}}) {
    EXPECT_EQ(gated_mlp_default_config(64, M, 132), narrow) << M;
    EXPECT_EQ(gated_mlp_default_config(1, M, 132), narrow) << M;
  }
}

// The space on sm_90a: bn 128 × stages {4, 3} and bn 64 × stages {6, 5, 4}, the default (128, 4) first, all within
// 227 KiB of shared memory; the default alone elsewhere.
TEST(GatedMlpFamily, SearchSpaceHoldsTheDefaultAndFits) {
  for (DType t : {DType::bf16, DType::f16, DType::f32}) {
    const auto def = make(2048, 5120, GatedActivation::silu, t);
    const auto space = checked_search_space(def);
    std::set<std::pair<int, int>> points;
    for (const auto& c : space) {
      EXPECT_TRUE(points.insert({c.config[0], c.config[1]}).second) << c.describe();
      EXPECT_EQ(c.params, def.params);
      EXPECT_EQ(c.kernel, def.kernel);
      EXPECT_TRUE(detail::in_search_space(c)) << c.describe();
    }
    EXPECT_EQ(points, (std::set<std::pair<int, int>>{{128, 3}, {128, 4}, {64, 4}, {64, 5}, {64, 6}}));
    ASSERT_FALSE(space.empty());
    EXPECT_EQ(space.front().config[0], 128);
    EXPECT_EQ(space.front().config[1], 4);
    // 1 KiB alignment slack + 4 × (16 KiB x tile + 2 × 16 KiB weight tiles) + mbarriers.
    EXPECT_GE(family().dynamic_smem_bytes(space.front()), 1024 + 4 * 3 * 16384);
  }
  const auto odd = checked_search_space(make(136, 1, GatedActivation::gelu, DType::f32, 64, 6));
  EXPECT_EQ(odd.size(), 5u);
  std::vector<detail::Specialization> other;
  family().search_space(make(2048, 5120, GatedActivation::silu, DType::bf16, 128, 4, "sm_80"), other);
  EXPECT_EQ(other.size(), 1u);
  EXPECT_FALSE(detail::in_search_space(make(2048, 5120, GatedActivation::silu, DType::bf16, 256, 4)));
  EXPECT_FALSE(detail::in_search_space(make(2048, 5120, GatedActivation::silu, DType::bf16, 128, 6)));
}

// NVRTC compiles for sm_90a: the default for every dtype × activation at the shape of the GPU tests' odd cases
// (H 1024, I 777: a partial last column tile, single-element stores). The preset specializations compile in
// compile_test (EveryPresetSpecializationCompilesForSm90a).
TEST(GatedMlpCompile, DefaultsForEveryDtypeAndActivationCompileForSm90a) {
  std::vector<detail::Specialization> specs;
  for (DType t : {DType::bf16, DType::f16, DType::f32})
    for (GatedActivation a : {GatedActivation::silu, GatedActivation::gelu}) {
      std::vector<detail::Specialization> space;
      family().search_space(make(1024, 777, a, t), space);
      ASSERT_FALSE(space.empty());
      specs.push_back(space.front());
    }
  expect_compiles(specs);
}

// Every point of Ling-mini-2.0's dense MLP space, for the 16-bit (k16) and the TF32 (k8) MMAs (~0.3 s a compile).
TEST(GatedMlpCompile, EverySearchSpacePointCompilesForSm90a) {
  std::vector<detail::Specialization> specs;
  for (DType t : {DType::bf16, DType::f32}) {
    const auto space = checked_search_space(make(2048, 5120, GatedActivation::silu, t));
    // bf16's default is a preset specialization (compiled in compile_test).
    specs.insert(specs.end(), space.begin() + (t == DType::bf16 ? 1 : 0), space.end());
  }
  // I = 1 (one output column, H 136: a partial K chunk) with the 128-column tile, fp32.
  specs.push_back(make(136, 1, GatedActivation::silu, DType::f32, 128, 3));
  expect_compiles(specs);
}

// ---- argument checks --------------------------------------------------------------------------------------------

class GatedMlpErrors : public ::testing::Test {
 protected:
  static constexpr int64_t B = 2, S = 64, M = B * S, H = 2048, I = 512;
  void call() { fused_gated_mlp(rt, x, gate_weight, up_weight, out, act, nullptr); }
  // x [M, h] (or [B, S, h]) with weights [i, h] and out [M, i] (or [B, S, i]), all contiguous, dtype t.
  void shapes(int64_t h, int64_t i, DType t = DType::bf16, bool three_d = false) {
    x = three_d ? TensorRef::contiguous(fake(0), t, {B, S, h}) : TensorRef::contiguous(fake(0), t, {M, h});
    gate_weight = TensorRef::contiguous(fake(1), t, {i, h});
    up_weight = TensorRef::contiguous(fake(2), t, {i, h});
    out = three_d ? TensorRef::contiguous(fake(3), t, {B, S, i}) : TensorRef::contiguous(fake(3), t, {M, i});
  }

  Runtime rt{cpu_options()};
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {M, H});
  TensorRef gate_weight = TensorRef::contiguous(fake(1), DType::bf16, {I, H});
  TensorRef up_weight = TensorRef::contiguous(fake(2), DType::bf16, {I, H});
  TensorRef out = TensorRef::contiguous(fake(3), DType::bf16, {M, I});
  GatedActivation act = GatedActivation::silu;
};

TEST_F(GatedMlpErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(call());
  act = GatedActivation::gelu;
  EXPECT_REACHES_DEVICE(call());
  for (DType t : {DType::f16, DType::f32}) {
    shapes(H, I, t);
    EXPECT_REACHES_DEVICE(call());
  }
  shapes(H, I, DType::bf16, true);
  EXPECT_REACHES_DEVICE(call());
  shapes(8, 8);  // the smallest bf16 row (16 bytes)
  EXPECT_REACHES_DEVICE(call());
  shapes(8, 1, DType::bf16, true);  // one output column
  EXPECT_REACHES_DEVICE(call());
  shapes(4, 3, DType::f32, true);
  EXPECT_REACHES_DEVICE(call());
  shapes(65536, 65536);  // the largest dims
  EXPECT_REACHES_DEVICE(call());
}

// A 2-D x with a row stride (a slice of a wider buffer), out with a padded row stride; unit dims with any stride.
TEST_F(GatedMlpErrors, StridedRowsReachTheDevice) {
  x = TensorRef::strided_2d(fake(0), DType::bf16, M, H, H + 64);
  out = TensorRef::strided_2d(fake(3), DType::bf16, M, I, I + 8);
  EXPECT_REACHES_DEVICE(call());
  x = TensorRef::contiguous(fake(0), DType::bf16, {1, S, H});
  x.strides[0] = 3;
  out = TensorRef::contiguous(fake(3), DType::bf16, {1, S, I});
  out.strides[0] = -1;
  EXPECT_REACHES_DEVICE(call());
}

// An odd intermediate size with dense outputs (the header: out [M, I], 2-D "any row stride ≥ I"). Row m of out then
// starts at m·I elements: the kernel's stores must not assume more alignment than that.
TEST_F(GatedMlpErrors, OddIntermediateSizesWithDenseOutputsReachTheDevice) {
  for (DType t : {DType::bf16, DType::f32})
    for (int64_t i : {int64_t{1}, int64_t{777}})
      for (bool three_d : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(t)) + " I " + std::to_string(i) + (three_d ? " 3-D" : " 2-D"));
        shapes(1024, i, t, three_d);
        EXPECT_REACHES_DEVICE(call());
      }
}

TEST_F(GatedMlpErrors, EmptyInputLaunchesNothing) {
  for (bool three_d : {false, true}) {
    x = three_d ? TensorRef::contiguous(nullptr, DType::bf16, {0, S, H}) : TensorRef::contiguous(nullptr, DType::bf16, {0, H});
    out = three_d ? TensorRef::contiguous(nullptr, DType::bf16, {0, S, I}) : TensorRef::contiguous(nullptr, DType::bf16, {0, I});
    EXPECT_NO_THROW(call()) << (three_d ? "3-D" : "2-D");
  }
}

// sm_90 only: compiling for another arch is a DeviceError before anything touches a device.
TEST_F(GatedMlpErrors, OtherArchsAreADeviceError) {
  for (const char* arch : {"sm_80", "sm_89", "sm_90", "sm_100a"}) {
    RuntimeOptions o = cpu_options();
    o.arch = arch;
    Runtime other(o);
    try {
      fused_gated_mlp(other, x, gate_weight, up_weight, out, act, nullptr);
      ADD_FAILURE() << arch << ": did not throw";
    } catch (const DeviceError& e) {
      EXPECT_TRUE(contains(e.what(), "sm_90")) << arch << ": " << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << arch << ": " << demangled_type_name(typeid(e)) << ": " << e.what();
    }
  }
  // sm_90a passes the arch check and fails only where it needs the driver (none here).
  RuntimeOptions o = cpu_options();
  o.arch = "sm_90a";
  Runtime hopper(o);
  EXPECT_REACHES_DEVICE(fused_gated_mlp(hopper, x, gate_weight, up_weight, out, act, nullptr));
}

TEST_F(GatedMlpErrors, Activation) {
  for (int a : {2, -1, 7}) {
    act = static_cast<GatedActivation>(a);
    EXPECT_THROW_NAMING(call(), "activation", InvalidArgument);
  }
}

TEST_F(GatedMlpErrors, Dtypes) {
  for (DType d : {DType::e4m3, DType::i32, DType::u8}) {
    TensorRef bad = x;
    bad.dtype = d;
    EXPECT_THROW_NAMING(fused_gated_mlp(rt, bad, gate_weight, up_weight, out, act, nullptr), "x",
                        UnsupportedDtypeError);
  }
  for (DType d : {DType::f16, DType::f32, DType::e4m3}) {  // everything else takes x's dtype
    TensorRef g = gate_weight, u = up_weight, o = out;
    g.dtype = d;
    EXPECT_THROW_NAMING(fused_gated_mlp(rt, x, g, up_weight, out, act, nullptr), "gate_weight", UnsupportedDtypeError);
    u.dtype = d;
    EXPECT_THROW_NAMING(fused_gated_mlp(rt, x, gate_weight, u, out, act, nullptr), "up_weight", UnsupportedDtypeError);
    o.dtype = d;
    EXPECT_THROW_NAMING(fused_gated_mlp(rt, x, gate_weight, up_weight, o, act, nullptr), "out", UnsupportedDtypeError);
  }
  shapes(H, I, DType::f32);
  out.dtype = DType::bf16;  // no down-cast on the way out
  EXPECT_THROW_NAMING(call(), "out", UnsupportedDtypeError);
}

TEST_F(GatedMlpErrors, RankOfX) {
  x = TensorRef::contiguous(fake(0), DType::bf16, {M * H});
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {2, B, S / 2, H});
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
}

TEST_F(GatedMlpErrors, HiddenSize) {
  // Rows of H·sizeof(dtype) bytes must be a multiple of 16 (TMA rows): bf16/fp16 H % 8, fp32 H % 4. A shape error
  // for 2-D x as for 3-D (a dense x has no row stride of its own to blame).
  for (const auto& [h, t] : {std::pair{int64_t{100}, DType::bf16}, {int64_t{2044}, DType::f16}, {int64_t{4}, DType::bf16},
                             {int64_t{130}, DType::f32}, {int64_t{2}, DType::f32}}) {
    SCOPED_TRACE(std::string(dtype_name(t)) + " H " + std::to_string(h));
    shapes(h, I, t);
    EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
  }
  for (int64_t h : {int64_t{0}, int64_t{65544}}) {  // outside [1, 65536]
    shapes(h, I);
    EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
  }
  shapes(8, I, DType::f16);  // 16-byte rows: fine
  EXPECT_REACHES_DEVICE(call());
}

TEST_F(GatedMlpErrors, IntermediateSize) {
  for (int64_t i : {int64_t{0}, int64_t{65537}, int64_t{131072}}) {
    shapes(H, i);
    EXPECT_THROW_NAMING(call(), "gate_weight", ShapeMismatchError);
  }
}

TEST_F(GatedMlpErrors, WeightShapes) {
  gate_weight = TensorRef::contiguous(fake(1), DType::bf16, {I, H + 8});  // H differs from x's
  EXPECT_THROW_NAMING(call(), "gate_weight", ShapeMismatchError);
  gate_weight = TensorRef::contiguous(fake(1), DType::bf16, {H, I});  // transposed
  EXPECT_THROW_NAMING(call(), "gate_weight", ShapeMismatchError);
  gate_weight = TensorRef::contiguous(fake(1), DType::bf16, {I * H});
  EXPECT_THROW_NAMING(call(), "gate_weight", ShapeMismatchError);
  gate_weight = TensorRef::contiguous(fake(1), DType::bf16, {1, I, H});
  EXPECT_THROW_NAMING(call(), "gate_weight", ShapeMismatchError);
  gate_weight = TensorRef::contiguous(fake(1), DType::bf16, {I, H});
  for (const auto& [i, h] : {std::pair{I + 8, H}, {I - 1, H}, {I, H + 8}, {H, I}}) {  // up_weight.shape != gate's
    up_weight = TensorRef::contiguous(fake(2), DType::bf16, {i, h});
    EXPECT_THROW_NAMING(call(), "up_weight", ShapeMismatchError);
  }
  up_weight = TensorRef::contiguous(fake(2), DType::bf16, {I * H});
  EXPECT_THROW_NAMING(call(), "up_weight", ShapeMismatchError);
}

TEST_F(GatedMlpErrors, OutputShape) {
  for (const auto& [m, i] : {std::pair{M, I + 8}, {M + 1, I}, {M - 1, I}, {M, H}}) {
    out = TensorRef::contiguous(fake(3), DType::bf16, {m, i});
    EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError);
  }
  out = TensorRef::contiguous(fake(3), DType::bf16, {B, S, I});  // rank differs from x's
  EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError);
  out = TensorRef::contiguous(fake(3), DType::bf16, {M * I});
  EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError);
  shapes(H, I, DType::bf16, true);
  out = TensorRef::contiguous(fake(3), DType::bf16, {S, B, I});  // x's leading dims, in order
  EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError);
  out = TensorRef::contiguous(fake(3), DType::bf16, {M, I});
  EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError);
  out = TensorRef::contiguous(fake(3), DType::bf16, {B, S, I + 8});
  EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError);
}

TEST_F(GatedMlpErrors, NegativeDims) {
  x = TensorRef::contiguous(fake(0), DType::bf16, {-M, H});
  out = TensorRef::contiguous(fake(3), DType::bf16, {-M, I});
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {-B, S, H});
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
  shapes(H, I);
  out.shape[0] = -M;
  EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError);
}

TEST_F(GatedMlpErrors, NullPointers) {
  x.data = nullptr;
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
  x.data = fake(0);
  gate_weight.data = nullptr;
  EXPECT_THROW_NAMING(call(), "gate_weight", InvalidArgument);
  gate_weight.data = fake(1);
  up_weight.data = nullptr;
  EXPECT_THROW_NAMING(call(), "up_weight", InvalidArgument);
  up_weight.data = fake(2);
  out.data = nullptr;
  EXPECT_THROW_NAMING(call(), "out", InvalidArgument);
}

TEST_F(GatedMlpErrors, MisalignedPointers) {  // 16-byte aligned (TMA bases, vector stores)
  for (int off : {2, 4, 8}) {
    SCOPED_TRACE("offset " + std::to_string(off));
    x.data = static_cast<char*>(fake(0)) + off;
    EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
    x.data = fake(0);
    gate_weight.data = static_cast<char*>(fake(1)) + off;
    EXPECT_THROW_NAMING(call(), "gate_weight", InvalidArgument);
    gate_weight.data = fake(1);
    up_weight.data = static_cast<char*>(fake(2)) + off;
    EXPECT_THROW_NAMING(call(), "up_weight", InvalidArgument);
    up_weight.data = fake(2);
    out.data = static_cast<char*>(fake(3)) + off;
    EXPECT_THROW_NAMING(call(), "out", InvalidArgument);
    out.data = fake(3);
  }
}

// Weights must be dense [I, H] (a layout error, as Check::contiguous reports it everywhere in kiln).
TEST_F(GatedMlpErrors, NonContiguousWeights) {
  gate_weight = TensorRef::strided_2d(fake(1), DType::bf16, I, H, H + 8);
  EXPECT_THROW_NAMING(call(), "gate_weight", ShapeMismatchError, InvalidArgument);
  gate_weight = TensorRef::contiguous(fake(1), DType::bf16, {I, H});
  up_weight.strides = {1, I};  // a transposed view
  EXPECT_THROW_NAMING(call(), "up_weight", ShapeMismatchError, InvalidArgument);
  up_weight = TensorRef::contiguous(fake(2), DType::bf16, {I, H});
  up_weight.strides = {2 * H, 2};
  EXPECT_THROW_NAMING(call(), "up_weight", ShapeMismatchError, InvalidArgument);
}

TEST_F(GatedMlpErrors, RowLayouts) {
  x = TensorRef::strided_2d(fake(0), DType::bf16, M, H, H + 4);  // rows 8 bytes off 16-byte alignment
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
  x = TensorRef::strided_2d(fake(0), DType::bf16, M, H, H - 8);  // overlapping rows
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {M, H});
  x.strides = {2 * H, 2};  // a non-unit inner stride
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {M, H});
  // out takes any row stride ≥ I (the kernel stores element by element where pairs would be misaligned).
  out = TensorRef::strided_2d(fake(3), DType::bf16, M, I, I - 8);
  EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError);
  out = TensorRef::contiguous(fake(3), DType::bf16, {M, I});
  out.strides = {2 * I, 2};
  EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError);
  shapes(H, I, DType::bf16, true);  // 3-D views must be contiguous
  x.strides = {S * (H + 64), H + 64, 1};
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError, InvalidArgument);
  shapes(H, I, DType::bf16, true);
  out.strides = {S * (I + 8), I + 8, 1};
  EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError, InvalidArgument);
}

TEST_F(GatedMlpErrors, TooManyRows) {
  const int64_t m = int64_t{1} << 31;
  x = TensorRef::contiguous(fake(0), DType::bf16, {m, H});
  out = TensorRef::contiguous(fake(3), DType::bf16, {m, I});
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
}

}  // namespace
}  // namespace kiln::test
