// tests/gpu/gated_mlp_test.cpp — fused_gated_mlp on the GPU (sm_90 only: TMA + wgmma) against the double CPU
// reference (tests/reference/gated_mlp.hpp).
//
// Inputs: x ~ U(−1, 1), W_g and W_u ~ U(−1, 1)/√H, so g and u are O(1) (σ ≈ 1/3) at every H; values rounded to the
// dtype before upload, so the reference sees exactly what the GPU reads. fp32 inputs: the reference truncates every
// operand to TF32 first (what the tensor cores read); 16-bit operands are exact in the MMAs.
// Tolerances (the output is rounded once from fp32):
//  * relative L2 over the whole output: bf16 ≤ 5e-3 (its rounding alone gives ≈ 1.6e-3), fp16 ≤ 2e-3 (≈ 2e-4),
//    fp32 ≤ 2e-3. The fp32 bound also covers a device that rounds operands to TF32 to nearest instead of truncating:
//    the two references differ by ≈ 1.6e-3 on these inputs (GatedMlpReference.Tf32TruncationAndRoundingAgree); fp32
//    accumulation over H adds ~1e-6.
//  * per element: |got − ref| ≤ 2e-2·(|ref| + rms(ref)), loose (5× bf16's relative rounding), catching a wrong
//    element that the L2 norm would average away; every element must be finite where the reference is.
// Outputs (and the padding of strided outputs, and guard zones) are poisoned first and must keep their poison outside
// the [M, I] result; the padding of strided x holds NaN, which must never be read.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/ops/gated_mlp.hpp"
#include "reference/gated_mlp.hpp"
#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/specialization.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kElemTol = 2e-2;

double rel_tol(DType t) { return t == DType::bf16 ? 5e-3 : 2e-3; }

bool device_has_wgmma(Runtime& r) { return r.impl().device().arch.sm == 90; }

// n draws of U(−scale, scale) (erf(z/√2) of z ~ N(0, 1) is uniform on (−1, 1)), rounded to `t`.
std::vector<float> uniform(int64_t n, uint64_t seed, double scale, DType t) {
  std::vector<float> v = randn(n, seed);
  for (float& e : v) e = static_cast<float>(scale * std::erf(e * 0.70710678118654752440));
  round_to(t, v);
  return v;
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

struct Case {
  int64_t M, H, I;
  DType dtype;
  GatedActivation act;
  int64_t B = 0;          // > 0: x and out are 3-D [B, M/B, *] (contiguous)
  int64_t x_ld = 0;       // 2-D: x's row stride in elements (0: H)
  int64_t out_ld = 0;     // 2-D: out's row stride (0: I)
  double x_scale = 1.0;   // x ~ U(−x_scale, x_scale)
  int64_t xs() const { return x_ld ? x_ld : H; }
  int64_t os() const { return out_ld ? out_ld : I; }
};

std::string name(const Case& c) {
  std::string s = "M" + std::to_string(c.M) + "_H" + std::to_string(c.H) + "_I" + std::to_string(c.I) + "_" +
                  std::string(dtype_name(c.dtype)) + (c.act == GatedActivation::silu ? "_silu" : "_gelu");
  if (c.B) s += "_B" + std::to_string(c.B);
  if (c.x_ld) s += "_xld" + std::to_string(c.x_ld);
  if (c.out_ld) s += "_outld" + std::to_string(c.out_ld);
  if (c.x_scale != 1.0) s += "_xscale" + std::to_string(static_cast<int64_t>(c.x_scale));
  return s;
}
void PrintTo(const Case& c, std::ostream* os) { *os << name(c); }

uint64_t case_seed(uint64_t tag, const Case& c) {
  return mix_seed({tag, static_cast<uint64_t>(c.M), static_cast<uint64_t>(c.H), static_cast<uint64_t>(c.I),
                   static_cast<uint64_t>(c.dtype), static_cast<uint64_t>(c.act)});
}

// Host values of a case: x [M, H], W_g and W_u [I, H], dense.
struct Data {
  Case c;
  std::vector<float> x, wg, wu;
};
Data make_data(const Case& c, uint64_t seed) {
  const double ws = 1.0 / std::sqrt(static_cast<double>(c.H));
  return {c, uniform(c.M * c.H, mix_seed({seed, 1}), c.x_scale, c.dtype), uniform(c.I * c.H, mix_seed({seed, 2}), ws, c.dtype),
          uniform(c.I * c.H, mix_seed({seed, 3}), ws, c.dtype)};
}

ref::GatedMlpRef reference(const Data& d) {
  const Case& c = d.c;
  return ref::gated_mlp(d.x, d.wg, d.wu, c.M, c.H, c.I, c.act,
                        c.dtype == DType::f32 ? ref::Tf32::truncate : ref::Tf32::none);
}

struct Result {
  std::vector<float> out;      // [M, I] dense
  std::vector<uint8_t> bytes;  // the raw [M, I] result (determinism)
  bool padding_ok = true;      // out's row padding still holds the poison
  bool guards_ok = true;
  uint64_t forced_applied = 0;
};

class GatedMlpGpu : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device (fused_gated_mlp needs wgmma)";
  }

  // The specialization the op runs for the case (its default config), on this device's arch.
  static detail::Specialization spec_of(const Case& c) {
    detail::Specialization s;
    s.family = detail::find_family("gated_mlp");
    EXPECT_NE(s.family, nullptr);
    s.arch = rt().impl().target_arch();
    s.kernel = 0;
    s.params[0] = c.H;
    s.params[1] = c.I;
    s.params[2] = static_cast<int64_t>(c.act);
    s.params[3] = static_cast<int64_t>(c.dtype);
    return s;
  }
  static std::vector<detail::Specialization> space_of(const Case& c) {
    std::vector<detail::Specialization> space;
    const detail::Specialization s = spec_of(c);
    s.family->search_space(s, space);
    return space;
  }

  // Uploads the case (x's row padding NaN), runs the op (with `forced`'s config when given), downloads out.
  static Result run(const Data& d, const detail::Specialization* forced = nullptr) {
    Runtime& r = rt();
    const Case& c = d.c;
    const DType t = c.dtype;
    const size_t es = dtype_size(t);
    std::vector<float> xp(static_cast<size_t>(std::max<int64_t>(c.M * c.xs(), 1)), kNaN);
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t h = 0; h < c.H; ++h) xp[m * c.xs() + h] = d.x[m * c.H + h];
    DeviceBuffer xb(r, xp.size() * es), gb(r, d.wg.size() * es), ub(r, d.wu.size() * es);
    xb.poison();
    gb.poison();
    ub.poison();
    xb.upload(encode(t, xp));
    gb.upload(encode(t, d.wg));
    ub.upload(encode(t, d.wu));
    const size_t out_elems = static_cast<size_t>(std::max<int64_t>(c.M * c.os(), 1));
    DeviceBuffer ob(r, out_elems * es);
    ob.poison();

    TensorRef x, out;
    if (c.B > 0) {
      x = xb.ref(t, {c.B, c.M / c.B, c.H});
      out = ob.ref(t, {c.B, c.M / c.B, c.I});
    } else {
      x = TensorRef::strided_2d(xb.data(), t, c.M, c.H, c.xs());
      out = TensorRef::strided_2d(ob.data(), t, c.M, c.I, c.os());
    }
    Result res;
    {
      std::optional<detail::ForceConfigScope> scope;
      if (forced) scope.emplace(*forced);
      fused_gated_mlp(r, x, gb.ref(t, {c.I, c.H}), ub.ref(t, {c.I, c.H}), out, c.act, nullptr);
      if (forced) res.forced_applied = scope->applied();
    }
    synchronize();
    const std::vector<uint8_t> raw = ob.download<uint8_t>(out_elems * es);
    res.bytes.resize(static_cast<size_t>(c.M * c.I) * es);
    for (int64_t m = 0; m < c.M; ++m) {
      std::memcpy(res.bytes.data() + m * c.I * es, raw.data() + m * c.os() * es, c.I * es);
      for (size_t b = (m * c.os() + c.I) * es; b < static_cast<size_t>((m + 1) * c.os()) * es; ++b)
        res.padding_ok &= raw[b] == DeviceBuffer::kPoison;
    }
    if (c.M == 0) res.padding_ok = raw[0] == DeviceBuffer::kPoison;  // nothing written
    res.out = decode(t, res.bytes);
    res.guards_ok = xb.guards_intact() && gb.guards_intact() && ub.guards_intact() && ob.guards_intact();
    return res;
  }
};

// got against the reference over rows `rows` (all when empty) of [M, I]: every element finite and within
// kElemTol·(|ref| + rms(ref)), and the relative L2 error ≤ rel_tol(t). Stores the relative L2 error in *err.
::testing::AssertionResult close_to(const std::vector<float>& got, const std::vector<double>& want, int64_t M,
                                    int64_t I, DType t, double* err = nullptr,
                                    const std::vector<int64_t>& skip_rows = {}) {
  std::vector<float> g;
  std::vector<double> w;
  std::vector<int64_t> where;
  for (int64_t m = 0; m < M; ++m) {
    if (std::find(skip_rows.begin(), skip_rows.end(), m) != skip_rows.end()) continue;
    for (int64_t i = 0; i < I; ++i) {
      g.push_back(got[m * I + i]);
      w.push_back(want[m * I + i]);
      where.push_back(m * I + i);
    }
  }
  double ss = 0;
  for (double v : w) ss += v * v;
  const double rms = w.empty() ? 0 : std::sqrt(ss / static_cast<double>(w.size()));
  const auto r = all_equal(
      "out", static_cast<int64_t>(g.size()),
      [&](int64_t k) {
        return std::isfinite(g[k]) && std::fabs(g[k] - w[k]) <= kElemTol * (std::fabs(w[k]) + rms);
      },
      [&](int64_t k) {
        return "[" + std::to_string(where[k] / I) + ", " + std::to_string(where[k] % I) + "]: got " + show(g[k]) +
               ", want " + show(w[k]) + ", bound " + show(kElemTol * (std::fabs(w[k]) + rms));
      });
  if (!r) return r;
  const double e = relative_l2(g, w);
  if (err) *err = e;
  if (!(e <= rel_tol(t)))
    return ::testing::AssertionFailure() << "out: relative L2 error " << e << " > " << rel_tol(t);
  return ::testing::AssertionSuccess() << "out: relative L2 error " << e;
}

// ---- the grid ---------------------------------------------------------------------------------------------------

std::vector<Case> cases() {
  using enum DType;
  std::vector<Case> v;
  const GatedActivation acts[] = {GatedActivation::silu, GatedActivation::gelu};
  // Row counts around the 128-row tile; (H, I): tiny, H not a multiple of the 128-byte K chunk and I of the column
  // tile, one output column (odd I, the 64-column default), a partial last column tile with odd I.
  for (const auto& [H, I] : {std::pair<int64_t, int64_t>{64, 128}, {200, 96}, {136, 1}, {1024, 777}})
    for (int64_t M : {0, 1, 7, 127, 128, 129, 1000})
      for (DType t : {bf16, f16, f32})
        for (GatedActivation a : acts) v.push_back({M, H, I, t, a});
  // Ling-mini-2.0's dense MLP.
  for (int64_t M : {1, 129, 1000})
    for (DType t : {bf16, f16, f32})
      for (GatedActivation a : acts) v.push_back({M, 2048, 5120, t, a});
  // Layouts: contiguous 3-D x and out; 2-D x with a row stride (a slice of a wider buffer) and out with a padded one.
  for (DType t : {bf16, f16, f32})
    for (const auto& [H, I] : {std::pair<int64_t, int64_t>{200, 96}, {1024, 777}, {2048, 5120}}) {
      const GatedActivation a = I % 2 ? GatedActivation::gelu : GatedActivation::silu;
      v.push_back({129, H, I, t, a, 3});
      v.push_back({1000, H, I, t, a, 8});
      Case p{129, H, I, t, a};
      p.x_ld = H + 24;                 // keeps rows 16-byte aligned for every dtype
      p.out_ld = round_up(I + 5, 8);   // ≥ 5 elements of padding, rows 16-byte aligned
      v.push_back(p);
    }
  v.push_back({0, 200, 96, bf16, GatedActivation::silu, 2});  // [2, 0, H]
  v.push_back({7, 136, 1, f32, GatedActivation::gelu, 7});    // [7, 1, H] → [7, 1, 1]
  return v;
}

class GatedMlpGrid : public GatedMlpGpu, public ::testing::WithParamInterface<Case> {};

TEST_P(GatedMlpGrid, MatchesReference) {
  const Case c = GetParam();
  const uint64_t seed = case_seed(0x71, c);
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Data d = make_data(c, seed);
  Result res;
  ASSERT_NO_THROW(res = run(d));
  EXPECT_TRUE(res.guards_ok) << "written outside the buffers";
  EXPECT_TRUE(res.padding_ok) << "out's row padding was written";
  if (c.M == 0) return;
  double err = 0;
  EXPECT_TRUE(close_to(res.out, reference(d).out, c.M, c.I, c.dtype, &err));
  RecordProperty("out_rel_l2", std::to_string(err));
}

INSTANTIATE_TEST_SUITE_P(Grid, GatedMlpGrid, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return name(i.param); });

// ---- special values, magnitudes, determinism, configs -------------------------------------------------------------

// A NaN, +inf or −inf in one row of x makes that row non-finite (NaN·w = NaN; ±inf·w = ±inf, then silu(−inf) and
// gelu(−inf) are −inf·0 = NaN) and leaves every other row — in the same 128-row tile or another — finite and correct.
TEST_F(GatedMlpGpu, NonFiniteRowStaysInItsRow) {
  for (DType t : {DType::bf16, DType::f16, DType::f32})
    for (GatedActivation a : {GatedActivation::silu, GatedActivation::gelu}) {
      const Case c{300, 1024, 384, t, a};
      SCOPED_TRACE(name(c));
      Data d = make_data(c, case_seed(0x72, c));
      const std::vector<int64_t> bad = {5, 130, 299};
      d.x[5 * c.H + 17] = kNaN;
      d.x[130 * c.H + 1000] = kInf;
      d.x[299 * c.H + 0] = -kInf;
      const Result res = run(d);
      EXPECT_TRUE(res.guards_ok);
      const ref::GatedMlpRef want = reference(d);
      for (int64_t m : bad)
        for (int64_t i = 0; i < c.I; ++i) {
          ASSERT_FALSE(std::isfinite(want.out[m * c.I + i])) << "reference row " << m;
          EXPECT_FALSE(std::isfinite(res.out[m * c.I + i])) << "row " << m << " col " << i << ": " << res.out[m * c.I + i];
        }
      EXPECT_TRUE(close_to(res.out, want.out, c.M, c.I, t, nullptr, bad));
    }
}

// bf16 x up to ±1e3 (g and u up to ~±1e3, out up to ~1e6, still far inside bf16's range; silu(z) at z ≈ −1e3 must be
// −0, not NaN from e^−z = inf): every output finite where the reference is, within the usual tolerance.
TEST_F(GatedMlpGpu, LargeMagnitudeInputs) {
  for (const auto& [H, I] : {std::pair<int64_t, int64_t>{2048, 1024}, {1024, 776}})
    for (GatedActivation a : {GatedActivation::silu, GatedActivation::gelu}) {
      Case c{256, H, I, DType::bf16, a};
      c.x_scale = 1e3;
      SCOPED_TRACE(name(c));
      const Data d = make_data(c, case_seed(0x73, c));
      const Result res = run(d);
      const ref::GatedMlpRef want = reference(d);
      double amax = 0;
      for (double v : want.out) amax = std::max(amax, std::fabs(v));
      EXPECT_GT(amax, 1e4) << "the case does not reach large outputs";
      EXPECT_TRUE(close_to(res.out, want.out, c.M, c.I, c.dtype));
    }
}

// Same inputs, same bits: no atomics, no split reductions.
TEST_F(GatedMlpGpu, RunsAreBitwiseIdentical) {
  for (const Case& c : {Case{1000, 2048, 5120, DType::bf16, GatedActivation::silu},
                        Case{129, 1024, 776, DType::f32, GatedActivation::gelu},
                        Case{129, 200, 96, DType::f16, GatedActivation::silu}}) {
    SCOPED_TRACE(name(c));
    const Data d = make_data(c, case_seed(0x74, c));
    const Result a = run(d), b = run(d);
    EXPECT_TRUE(bitwise_equal("out", a.bytes, b.bytes));
  }
}

// Every point of the search space (forced through the tuner's hook) gives a result within tolerance, never writes
// outside out, and is deterministic; the hook must actually be consulted.
TEST_F(GatedMlpGpu, EverySearchSpacePointMatches) {
  for (const Case& c : {Case{1000, 2048, 5120, DType::bf16, GatedActivation::silu},
                        Case{129, 1024, 768, DType::f32, GatedActivation::gelu},
                        Case{300, 200, 96, DType::f16, GatedActivation::gelu},
                        Case{77, 136, 8, DType::bf16, GatedActivation::silu}}) {
    SCOPED_TRACE(name(c));
    const Data d = make_data(c, case_seed(0x75, c));
    const std::vector<double> want = reference(d).out;
    const auto space = space_of(c);
    EXPECT_EQ(space.size(), 5u);
    for (const auto& s : space) {
      SCOPED_TRACE(s.describe());
      ASSERT_TRUE(detail::in_search_space(s));
      Result res;
      ASSERT_NO_THROW(res = run(d, &s));
      EXPECT_GT(res.forced_applied, 0u) << "the op did not ask for its config";
      EXPECT_TRUE(res.guards_ok);
      EXPECT_TRUE(close_to(res.out, want, c.M, c.I, c.dtype));
      const Result again = run(d, &s);
      EXPECT_TRUE(bitwise_equal("out (rerun)", again.bytes, res.bytes));
    }
  }
}

// GELU's relative accuracy across z ∈ [−9, 9] (fp32 out, so nothing is rounded after the activation): x row m =
// (z_m, 1, 0, …) with z_m = −9 + m/16 (exact in TF32), W_g row i = (1, 0, …), W_u row i = (0, 1, 0, …), so g = z_m,
// u = 1 and out[m][i] = GELU(z_m) exactly but for the activation. Every element within 1e-5 of the double reference,
// relatively (the kernel's erfc form: ≤ 2.2e-5 only below z ≈ −12; the fp32 ½·z·(1 + erf) form would miss by up to
// 4.8 % on [−5, −1] and return −0 below −5.54).
TEST_F(GatedMlpGpu, GeluKeepsItsRelativeAccuracyInTheTail) {
  const Case c{289, 8, 16, DType::f32, GatedActivation::gelu};
  Data d{c, std::vector<float>(c.M * c.H, 0.0f), std::vector<float>(c.I * c.H, 0.0f),
         std::vector<float>(c.I * c.H, 0.0f)};
  for (int64_t m = 0; m < c.M; ++m) {
    d.x[m * c.H] = -9.0f + static_cast<float>(m) / 16.0f;
    d.x[m * c.H + 1] = 1.0f;
  }
  for (int64_t i = 0; i < c.I; ++i) {
    d.wg[i * c.H] = 1.0f;
    d.wu[i * c.H + 1] = 1.0f;
  }
  const Result res = run(d);
  double worst = 0, at = 0;
  for (int64_t m = 0; m < c.M; ++m) {
    const double z = -9.0 + static_cast<double>(m) / 16.0, want = 0.5 * z * std::erfc(-z / std::sqrt(2.0));
    for (int64_t i = 0; i < c.I; ++i) {
      const double got = res.out[m * c.I + i];
      const double rel = want == 0 ? std::fabs(got) : std::fabs(got - want) / std::fabs(want);
      if (!(rel <= worst)) {
        worst = std::isnan(rel) ? INFINITY : rel;
        at = z;
      }
    }
  }
  RecordProperty("worst_relative_error", std::to_string(worst));
  EXPECT_LE(worst, 1e-5) << "at z = " << at;
}

// How the tensor cores read fp32 operands: x = 1 + 3·2⁻¹² is 1 truncated to TF32 and 1 + 2⁻¹⁰ rounded to nearest,
// W = 1, so g = u = H·x̃ tells the two apart by 2⁻¹⁰ relative (fp32 accumulation of H = 64 such terms is exact). The
// reference (and the grid's tolerance argument) assumes truncation; the result names what the device does.
TEST_F(GatedMlpGpu, Tf32OperandsAreTruncated) {
  const Case c{128, 64, 64, DType::f32, GatedActivation::silu};
  Data d{c, std::vector<float>(c.M * c.H, 1.0f + 0x3p-12f), std::vector<float>(c.I * c.H, 1.0f),
         std::vector<float>(c.I * c.H, 1.0f)};
  for (int64_t h = 0; h < c.H; h += 2) d.x[h] = -1.0f - 0x3p-12f;  // row 0: g = 0 either way, a sign check
  const Result res = run(d);
  const auto trunc = ref::gated_mlp(d.x, d.wg, d.wu, c.M, c.H, c.I, c.act, ref::Tf32::truncate);
  const auto rnd = ref::gated_mlp(d.x, d.wg, d.wu, c.M, c.H, c.I, c.act, ref::Tf32::round);
  const double e_trunc = relative_l2(res.out, trunc.out), e_round = relative_l2(res.out, rnd.out);
  RecordProperty("rel_l2_vs_truncate", std::to_string(e_trunc));
  RecordProperty("rel_l2_vs_round", std::to_string(e_round));
  EXPECT_LE(e_trunc, 1e-6) << "the device does not truncate fp32 operands to TF32 (relative L2 against rounding to "
                           << "nearest: " << e_round << ")";
}

// ---- argument errors with real buffers --------------------------------------------------------------------------

class GatedMlpGpuErrors : public GatedMlpGpu {
 protected:
  static constexpr int64_t M = 64, H = 256, I = 96;
  void SetUp() override {
    GatedMlpGpu::SetUp();
    if (IsSkipped()) return;
    Runtime& r = rt();
    xb = DeviceBuffer(r, M * (H + 64) * 4);
    gb = DeviceBuffer(r, I * (H + 64) * 4);
    ub = DeviceBuffer(r, I * (H + 64) * 4);
    ob = DeviceBuffer(r, M * (I + 64) * 4);
    for (DeviceBuffer* b : {&xb, &gb, &ub, &ob}) b->fill(0);
    x = xb.ref(DType::bf16, {M, H});
    gate_weight = gb.ref(DType::bf16, {I, H});
    up_weight = ub.ref(DType::bf16, {I, H});
    out = ob.ref(DType::bf16, {M, I});
  }
  void call() { fused_gated_mlp(rt(), x, gate_weight, up_weight, out, act, nullptr); }
  static void* off(const DeviceBuffer& b, int bytes) { return static_cast<char*>(b.data()) + bytes; }

  DeviceBuffer xb, gb, ub, ob;
  TensorRef x, gate_weight, up_weight, out;
  GatedActivation act = GatedActivation::silu;
};

TEST_F(GatedMlpGpuErrors, TypedErrorsNameTheArgument) {
  EXPECT_NO_THROW(call());  // the valid baseline
  synchronize();

  act = static_cast<GatedActivation>(2);
  EXPECT_THROW_NAMING(call(), "activation", InvalidArgument);
  act = GatedActivation::silu;

  x.dtype = DType::e4m3;
  EXPECT_THROW_NAMING(call(), "x", UnsupportedDtypeError);
  x.dtype = DType::bf16;
  gate_weight.dtype = DType::f16;
  EXPECT_THROW_NAMING(call(), "gate_weight", UnsupportedDtypeError);
  gate_weight.dtype = DType::bf16;
  up_weight.dtype = DType::f32;
  EXPECT_THROW_NAMING(call(), "up_weight", UnsupportedDtypeError);
  up_weight.dtype = DType::bf16;
  out.dtype = DType::f32;
  EXPECT_THROW_NAMING(call(), "out", UnsupportedDtypeError);
  out.dtype = DType::bf16;

  x = xb.ref(DType::bf16, {M * H});  // x not 2-D / 3-D
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
  x = xb.ref(DType::bf16, {M, H});
  gate_weight = gb.ref(DType::bf16, {I, H + 8});  // H from x
  EXPECT_THROW_NAMING(call(), "gate_weight", ShapeMismatchError);
  gate_weight = gb.ref(DType::bf16, {I, H});
  up_weight = ub.ref(DType::bf16, {I - 8, H});  // up.shape != gate.shape
  EXPECT_THROW_NAMING(call(), "up_weight", ShapeMismatchError);
  up_weight = ub.ref(DType::bf16, {I, H});
  out = ob.ref(DType::bf16, {M, I + 8});  // x's leading dims × I
  EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError);
  out = ob.ref(DType::bf16, {2, M / 2, I});
  EXPECT_THROW_NAMING(call(), "out", ShapeMismatchError);
  out = ob.ref(DType::bf16, {M, I});

  // H·sizeof(dtype) a multiple of 16; H, I in [1, 65536].
  x = xb.ref(DType::bf16, {2, M / 2, H - 4});
  gate_weight = gb.ref(DType::bf16, {I, H - 4});
  up_weight = ub.ref(DType::bf16, {I, H - 4});
  out = ob.ref(DType::bf16, {2, M / 2, I});
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
  x = xb.ref(DType::bf16, {M, H});
  gate_weight = gb.ref(DType::bf16, {0, H});
  up_weight = ub.ref(DType::bf16, {0, H});
  out = ob.ref(DType::bf16, {M, 0});
  EXPECT_THROW_NAMING(call(), "gate_weight", ShapeMismatchError);
  gate_weight = gb.ref(DType::bf16, {I, H});
  up_weight = ub.ref(DType::bf16, {I, H});
  out = ob.ref(DType::bf16, {M, I});

  x.data = nullptr;
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
  x.data = off(xb, 8);
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
  x.data = xb.data();
  gate_weight.data = nullptr;
  EXPECT_THROW_NAMING(call(), "gate_weight", InvalidArgument);
  gate_weight.data = off(gb, 4);
  EXPECT_THROW_NAMING(call(), "gate_weight", InvalidArgument);
  gate_weight.data = gb.data();
  up_weight.data = off(ub, 2);
  EXPECT_THROW_NAMING(call(), "up_weight", InvalidArgument);
  up_weight.data = ub.data();
  out.data = off(ob, 8);
  EXPECT_THROW_NAMING(call(), "out", InvalidArgument);
  out.data = nullptr;
  EXPECT_THROW_NAMING(call(), "out", InvalidArgument);
  out.data = ob.data();

  gate_weight = TensorRef::strided_2d(gb.data(), DType::bf16, I, H, H + 8);  // weights must be dense
  EXPECT_THROW_NAMING(call(), "gate_weight", ShapeMismatchError, InvalidArgument);
  gate_weight = gb.ref(DType::bf16, {I, H});
  x = TensorRef::strided_2d(xb.data(), DType::bf16, M, H, H + 4);  // rows 8 bytes off 16-byte alignment
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
  x = xb.ref(DType::bf16, {M, H});

  // Nothing above launched or broke the runtime: the valid call still works and its output is sane.
  EXPECT_NO_THROW(call());
  synchronize();
}

// Elsewhere than sm_90 the op is a DeviceError (no wgmma), M = 0 excepted (nothing to launch).
TEST(GatedMlpOtherGpus, NonHopperDeviceIsADeviceError) {
  KILN_SKIP_IF_NO_GPU();
  Runtime r(test_runtime_options());
  if (device_has_wgmma(r)) GTEST_SKIP() << "an sm_90 device: covered by the tests above";
  DeviceBuffer xb(r, 64 * 256 * 2), gb(r, 96 * 256 * 2), ub(r, 96 * 256 * 2), ob(r, 64 * 96 * 2);
  auto call = [&](int64_t m) {
    fused_gated_mlp(r, xb.ref(DType::bf16, {m, 256}), gb.ref(DType::bf16, {96, 256}), ub.ref(DType::bf16, {96, 256}),
                    ob.ref(DType::bf16, {m, 96}), GatedActivation::silu, nullptr);
  };
  EXPECT_THROW_NAMING(call(64), "", DeviceError);
  EXPECT_NO_THROW(call(0));
}

}  // namespace
}  // namespace kiln::test
