// tests/gpu/router_gemm_test.cpp — router_gemm_fp32_fwd / _bwd on the GPU against the double-precision reference.
//
// Tolerances follow from the numerics (u = 2⁻²⁴, the fp32 unit roundoff; S = Σ|products| of the output element):
//  * products of bf16 values are exact; each mma.sync adds a 16-term dot product into the fp32 accumulator, so an
//    output of reduction length n sees a chain of about n/16 + 4 fp32 additions. With up to 2u per addition
//    (truncating tensor-core adds), |got − exact| ≤ 2u·(n/16 + 4)·S (worst case; typical errors are far smaller).
//  * backward: g enters as bf16 hi + lo, |g − hi − lo| ≤ 2⁻¹⁷|g|, adding 2⁻¹⁷·S; both halves are MMAs, so the chain
//    doubles (n/8 + 8); dw adds its split partials in order (+ splits, ≤ 256).
//  * dx is rounded once to bf16 (8 significant bits): + 2⁻⁸·(|exact| + the bound above).
//  * the TMA backward's default precision (tf32: one fp16 pass with power-of-two scales, README router_gemm): g is
//    rounded to 11 significant bits (|error| ≤ 2⁻¹¹|g|, TF32's bound) where it is ≥ 2⁻²⁸ of its group's max (dx: its
//    row; dw: its expert's running max), with |error| ≤ 2⁻³⁹·max below; x and w convert exactly above the same
//    threshold, likewise below. So + 2⁻¹¹·S + 2⁻³⁸·(max|g|·Σ|w or x| + max|w or x|·Σ|g|) over the reduction, the
//    maxima taken over the group (dx: g's row, w's column; dw: g's expert column over all T, x over all of x). One
//    MMA pass: the chain is n/16 + 4 (+ dw's ranges). fp16 keeps 3 more bits than bf16: against bf16(g) (8 bits) the
//    tests also require the error to be ≥ 4× smaller where it can be told apart.
// Every element must be within its bound, and the relative L2 error over the whole output must be small as well
// (≤ 2e-5 for fp32 outputs, ≤ 3e-3 for bf16 dx, whose rounding alone gives ≈ 1e-3), so a systematic error cannot hide
// below the worst-case bound. Outputs and guard zones are poisoned before each run; non-finite references must be
// matched in kind (NaN, +inf, −inf).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kiln/ops/router_gemm.hpp"
#include "kiln/router_gemm_args.h"
#include "ops/bench/cublaslt.hpp"
#include "ops/router_gemm_internal.hpp"
#include "reference/router_gemm.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/specialization.hpp"
#include "measure_util.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr double kU = 5.9604644775390625e-08;  // 2⁻²⁴
constexpr double kSplit = 7.62939453125e-06;   // 2⁻¹⁷
constexpr double kBf16Round = 3.90625e-03;     // 2⁻⁸: bf16's unit roundoff (8 significant bits)

// "a|b|c" → {"a", "b", "c"} with sep '|' (lists from the environment).
std::vector<std::string> split_on(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = s.find(sep, b)) != std::string::npos; b = e + 1) out.push_back(s.substr(b, e - b));
  out.push_back(s.substr(b));
  return out;
}
std::vector<std::string> split_bar(const std::string& s) { return split_on(s, '|'); }

std::string show(float v) {
  char b[48];
  std::snprintf(b, sizeof b, "%.9g (0x%08x)", v, std::bit_cast<uint32_t>(v));
  return b;
}

std::string fmt_config(const detail::RouterGemmConfig& c) {
  return "bm=" + std::to_string(c[0]) + " bn=" + std::to_string(c[1]) + " bk=" + std::to_string(c[2]) +
         " wm=" + std::to_string(c[3]) + " wn=" + std::to_string(c[4]) + " stages=" + std::to_string(c[5]);
}

std::vector<float> bf16_values(int64_t n, uint64_t seed, float stddev) {
  std::vector<float> v = randn(n, seed, stddev);
  round_to(DType::bf16, v);
  return v;
}

// The operands: x [T, K] (σ 1) and w [E, K] (σ 0.02) as bf16 values, from their seeds.
struct XW {
  std::vector<float> x, w;
};
XW bf16_xw(int64_t T, int64_t K, int64_t E, uint64_t x_seed, uint64_t w_seed) {
  return {bf16_values(T * K, x_seed, 1.0f), bf16_values(E * K, w_seed, 0.02f)};
}

DeviceBuffer upload(Runtime& rt, DType dtype, const std::vector<float>& v) {
  DeviceBuffer b(rt, std::max<size_t>(v.size(), 1) * dtype_size(dtype));
  if (!v.empty()) b.upload(encode(dtype, v));
  return b;
}

std::vector<float> download(const DeviceBuffer& b, DType dtype, int64_t n) {
  return decode(dtype, b.download<uint8_t>(static_cast<size_t>(n) * dtype_size(dtype)));
}

bool same_kind(float got, double want) {
  if (std::isnan(want)) return std::isnan(got);
  return std::isinf(got) && (got > 0) == (want > 0);
}

// Checks got against the reference: every element within `bound(i)` (non-finite references matched in kind), and
// the relative L2 error over the finite elements ≤ rel_l2_max. `cols` names the 2-D position in messages.
::testing::AssertionResult close_to(const char* what, const std::vector<float>& got, const ref::GemmRef& want,
                                    int64_t cols, double rel_l2_max, const std::function<double(int64_t)>& bound) {
  const int64_t n = static_cast<int64_t>(want.value.size());
  if (static_cast<int64_t>(got.size()) != n)
    return ::testing::AssertionFailure() << what << ": " << got.size() << " elements, expected " << n;
  double num = 0, den = 0;
  const auto r = all_equal(
      what, n,
      [&](int64_t i) {
        const double v = want.value[i];
        if (!std::isfinite(v)) return same_kind(got[i], v);
        if (!std::isfinite(got[i])) return false;
        const double d = got[i] - v;
        num += d * d;
        den += v * v;
        return std::fabs(d) <= bound(i);
      },
      [&](int64_t i) {
        char b[160];
        std::snprintf(b, sizeof b, ", exact %.9g, |diff| %.3g, bound %.3g, Σ|products| %.3g", want.value[i],
                      std::fabs(got[i] - want.value[i]), bound(i), want.abs[i]);
        return std::string(what) + "[" + std::to_string(i / cols) + ", " + std::to_string(i % cols) + "]: got " +
               show(got[i]) + b;
      });
  if (!r) return r;
  const double rel = den > 0 ? std::sqrt(num / den) : (num > 0 ? INFINITY : 0.0);
  if (!(rel <= rel_l2_max))
    return ::testing::AssertionFailure() << what << ": relative L2 error " << rel << " > " << rel_l2_max;
  return ::testing::AssertionSuccess() << what << ": relative L2 error " << rel;
}

double fwd_bound(const ref::GemmRef& r, int64_t i, int64_t K) { return 2 * kU * (K / 16.0 + 4) * r.abs[i]; }
// The logits [T, E] against their reference: every element within fwd_bound, relative L2 error ≤ 2e-5.
::testing::AssertionResult logits_close(const std::vector<float>& y, const ref::GemmRef& want, int64_t K, int64_t E) {
  return close_to("logits", y, want, E, 2e-5, [&](int64_t i) { return fwd_bound(want, i, K); });
}
double dx_bound(const ref::GemmRef& r, int64_t i, int64_t E) {
  const double acc = (2 * kU * (E / 8.0 + 8) + kSplit) * r.abs[i];
  return kBf16Round * (std::fabs(r.value[i]) + acc) + acc;
}
double dw_bound(const ref::GemmRef& r, int64_t i, int64_t T) {
  return (2 * kU * (T / 8.0 + 8 + 256) + kSplit) * r.abs[i];
}
// The TMA backward from bf16(g) alone (bench only: one MMA per product; g rounded once, |g − bf16(g)| ≤ 2⁻⁸|g|,
// adding 2⁻⁸·S, before dx's own bf16 rounding). Its precision `high` (g hi + lo) meets dx_bound / dw_bound.
double dx_bound_bf16g(const ref::GemmRef& r, int64_t i, int64_t E) {
  const double acc = (2 * kU * (E / 16.0 + 4) + kBf16Round) * r.abs[i];
  return kBf16Round * (std::fabs(r.value[i]) + acc) + acc;
}
double dw_bound_bf16g(const ref::GemmRef& r, int64_t i, int64_t T) {
  return (2 * kU * (T / 16.0 + 8 + 256) + kBf16Round) * r.abs[i];
}

// The tf32 (fp16 pass) bounds. Per-group maxima and sums of the inputs (finite values only) give the absolute term.
constexpr double kF16Round = 4.8828125e-04;  // 2⁻¹¹: fp16's (and TF32's) unit roundoff
constexpr double kF16Tiny = 0x1p-38;          // values more than 2²⁸ below their group's max (see the header)
struct AbsStats {
  std::vector<double> max, sum;
};
// Over the rows (along = 1: each row's max / sum over its cols) or the columns (along = 0) of v [rows, cols].
AbsStats abs_stats(const std::vector<float>& v, int64_t rows, int64_t cols, int along) {
  AbsStats st;
  const int64_t n = along ? rows : cols;
  st.max.assign(n, 0.0);
  st.sum.assign(n, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double a = std::fabs(v[r * cols + c]);
      if (!std::isfinite(a)) continue;
      const int64_t i = along ? r : c;
      st.max[i] = std::max(st.max[i], a);
      st.sum[i] += a;
    }
  return st;
}
struct DxF16 {
  AbsStats g_rows, w_cols;
  DxF16(const std::vector<float>& g, const std::vector<float>& w, int64_t T, int64_t K, int64_t E)
      : g_rows(abs_stats(g, T, E, 1)), w_cols(abs_stats(w, E, K, 0)) {}
  double bound(const ref::GemmRef& r, int64_t i, int64_t K, int64_t E) const {
    const int64_t t = i / K, k = i % K;
    const double tiny = kF16Tiny * (g_rows.max[t] * w_cols.sum[k] + w_cols.max[k] * g_rows.sum[t]);
    const double acc = (2 * kU * (E / 16.0 + 4) + kF16Round) * r.abs[i] + tiny;
    return kBf16Round * (std::fabs(r.value[i]) + acc) + acc;
  }
};
struct DwF16 {
  AbsStats g_cols, x_cols;
  double x_max = 0;
  DwF16(const std::vector<float>& g, const std::vector<float>& x, int64_t T, int64_t K, int64_t E)
      : g_cols(abs_stats(g, T, E, 0)), x_cols(abs_stats(x, T, K, 0)) {
    for (double m : x_cols.max) x_max = std::max(x_max, m);
  }
  double bound(const ref::GemmRef& r, int64_t i, int64_t T, int64_t K) const {
    const int64_t e = i / K, k = i % K;
    const double tiny = kF16Tiny * (g_cols.max[e] * x_cols.sum[k] + x_max * g_cols.sum[e]);
    return (2 * kU * (T / 16.0 + 8 + 256) + kF16Round) * r.abs[i] + tiny;
  }
};

// A backward problem's fp64 references, and dx / dw checked against them at a precision: 0 tf32 (the fp16 pass:
// DxF16 / DwF16), 1 high (g hi + lo, as the mma.sync backward: dx_bound / dw_bound), 2 bf16(g) alone
// (dx_bound_bf16g / dw_bound_bf16g), 4 standard (the public default: bf16(g)'s dx, high's dw).
struct BwdRef {
  int64_t T, K, E;
  ref::GemmRef dx, dw;
  DxF16 fx;
  DwF16 fw;
  BwdRef(const std::vector<float>& g, const std::vector<float>& x, const std::vector<float>& w, int64_t t, int64_t k,
         int64_t e)
      : T(t), K(k), E(e), dx(ref::router_gemm_dx(g, w, t, k, e)), dw(ref::router_gemm_dw(g, x, t, k, e)),
        fx(g, w, t, k, e), fw(g, x, t, k, e) {}
  ::testing::AssertionResult check_dx(const std::vector<float>& got, int prec) const {
    return close_to("dx", got, dx, K, 3e-3, [&](int64_t i) {
      return prec == 0 ? fx.bound(dx, i, K, E) : prec == 1 ? dx_bound(dx, i, E) : dx_bound_bf16g(dx, i, E);
    });
  }
  ::testing::AssertionResult check_dw(const std::vector<float>& got, int prec) const {
    return close_to("dw", got, dw, K, prec == 0 ? 5e-4 : prec == 2 ? 3e-3 : 2e-5, [&](int64_t i) {
      return prec == 0 ? fw.bound(dw, i, T, K) : prec == 2 ? dw_bound_bf16g(dw, i, T) : dw_bound(dw, i, T);
    });
  }
};

class RouterGemmTest : public GpuTest {
 protected:
  struct Fwd {
    std::vector<float> y;
    bool guards_ok = false;
    uint64_t launches = 0;
  };
  // x [T, K] (row stride x_ld ≥ K), w [E, K]; logits [T, E] with row stride y_ld ≥ E.
  static Fwd run_fwd(const std::vector<float>& x, const std::vector<float>& w, int64_t T, int64_t K, int64_t E,
                     const detail::RouterGemmConfig* cfg = nullptr, int64_t x_ld = 0, int64_t y_ld = 0,
                     int variant = -1) {
    Runtime& r = rt();
    if (x_ld == 0) x_ld = K;
    if (y_ld == 0) y_ld = E;
    std::vector<float> xs(T * x_ld, 0.f);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k) xs[t * x_ld + k] = x[t * K + k];
    DeviceBuffer xb = upload(r, DType::bf16, xs), wb = upload(r, DType::bf16, w);
    DeviceBuffer yb(r, std::max<int64_t>(T * y_ld, 1) * 4);
    yb.poison();
    const uint64_t before = r.stats().launches;
    detail::router_gemm_fp32_fwd_config(r, TensorRef::strided_2d(xb.data(), DType::bf16, T, K, x_ld),
                                        wb.ref(DType::bf16, {E, K}),
                                        TensorRef::strided_2d(yb.data(), DType::f32, T, E, y_ld), variant, cfg,
                                        nullptr);
    synchronize();
    Fwd f;
    f.launches = r.stats().launches - before;
    const std::vector<float> all = yb.download<float>(T * y_ld);
    f.y.resize(T * E);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e) f.y[t * E + e] = all[t * y_ld + e];
    // Padding columns of a strided logits buffer must keep the poison.
    f.guards_ok = yb.guards_intact();
    for (int64_t t = 0; t < T && f.guards_ok; ++t)
      for (int64_t e = E; e < y_ld; ++e)
        if (std::bit_cast<uint32_t>(all[t * y_ld + e]) != 0x55555555u) f.guards_ok = false;
    return f;
  }

  // Every config of `pts` through the forward entry point's `variant`, against `want`; nothing written outside logits.
  static void check_fwd_configs(const std::vector<detail::RouterGemmConfig>& pts, int variant,
                                const std::vector<float>& x, const std::vector<float>& w, int64_t T, int64_t K,
                                int64_t E, const ref::GemmRef& want) {
    for (const auto& c : pts) {
      SCOPED_TRACE(fmt_config(c) + " T=" + std::to_string(T) + " K=" + std::to_string(K) + " E=" + std::to_string(E));
      const Fwd f = run_fwd(x, w, T, K, E, &c, 0, 0, variant);
      EXPECT_TRUE(f.guards_ok);
      EXPECT_TRUE(logits_close(f.y, want, K, E));
    }
  }

  // The default config of the forward's `variant` at [T, K] → E (inputs from `tag` and the shape) against the
  // reference; `empty_launches_nothing`: T = 0 must launch no kernel.
  static void check_fwd_default(int variant, uint64_t tag, int64_t T, int64_t K, int64_t E,
                                bool empty_launches_nothing) {
    const uint64_t seed = mix_seed({tag, static_cast<uint64_t>(T), static_cast<uint64_t>(K), static_cast<uint64_t>(E)});
    SCOPED_TRACE("seed " + std::to_string(seed));
    const auto [x, w] = bf16_xw(T, K, E, mix_seed({seed, 1}), mix_seed({seed, 2}));
    const Fwd f = run_fwd(x, w, T, K, E, nullptr, 0, 0, variant);
    EXPECT_TRUE(f.guards_ok) << "written outside logits";
    if (empty_launches_nothing && T == 0) EXPECT_EQ(f.launches, 0u) << "T = 0 must launch nothing";
    const auto r = logits_close(f.y, ref::router_gemm_fwd(x, w, T, K, E), K, E);
    EXPECT_TRUE(r);
    RecordProperty("result", r.message());
  }

  // x rows K + 64 elements apart and logits rows E + 12 apart (T = 300, K = 2048) through the forward's `variant`:
  // the padding columns of logits stay untouched.
  static void check_fwd_strided(int variant, int64_t E, uint64_t x_seed, uint64_t w_seed) {
    const int64_t T = 300, K = 2048;
    const auto [x, w] = bf16_xw(T, K, E, x_seed, w_seed);
    const Fwd f = run_fwd(x, w, T, K, E, nullptr, K + 64, E + 12, variant);
    EXPECT_TRUE(f.guards_ok) << "written outside logits' [T, E] view, E = " << E;
    EXPECT_TRUE(logits_close(f.y, ref::router_gemm_fwd(x, w, T, K, E), K, E));
  }

  struct Bwd {
    std::vector<float> dx, dw;
    bool guards_ok = false;
  };
  static Bwd run_bwd(const std::vector<float>& g, const std::vector<float>& x, const std::vector<float>& w, int64_t T,
                     int64_t K, int64_t E, bool want_dx = true, bool want_dw = true,
                     const detail::RouterGemmConfig* cfg_dx = nullptr, const detail::RouterGemmConfig* cfg_dw = nullptr,
                     bool user_workspace = false, int variant = 0, int precision = 0) {
    Runtime& r = rt();
    DeviceBuffer gb = upload(r, DType::f32, g), xb = upload(r, DType::bf16, x), wb = upload(r, DType::bf16, w);
    DeviceBuffer dxb(r, std::max<int64_t>(T * K, 1) * 2), dwb(r, E * K * 4);
    dxb.poison();
    dwb.poison();
    RouterGemmBwdOptions opt;
    opt.precision = precision == 1   ? RouterGemmPrecision::high
                    : precision == 4 ? RouterGemmPrecision::standard
                                     : RouterGemmPrecision::tf32;
    const int64_t ws_elems = user_workspace ? router_gemm_fp32_bwd_workspace_elems(r, T, K, E, opt) : 0;
    DeviceBuffer wsb(r, std::max<int64_t>(ws_elems, 1) * 4);
    wsb.poison();
    detail::router_gemm_fp32_bwd_config(
        r, gb.ref(DType::f32, {T, E}), xb.ref(DType::bf16, {T, K}), wb.ref(DType::bf16, {E, K}),
        want_dx ? dxb.ref(DType::bf16, {T, K}) : TensorRef{}, want_dw ? dwb.ref(DType::f32, {E, K}) : TensorRef{},
        user_workspace ? wsb.ref(DType::f32, {ws_elems}) : TensorRef{}, variant, precision, cfg_dx, cfg_dw, nullptr);
    synchronize();
    Bwd b;
    if (want_dx) b.dx = download(dxb, DType::bf16, T * K);
    if (want_dw) b.dw = dwb.download<float>(E * K);
    b.guards_ok = dxb.guards_intact() && dwb.guards_intact() && wsb.guards_intact();
    if (!want_dx) b.guards_ok = b.guards_ok && dxb.download<uint8_t>(1)[0] == DeviceBuffer::kPoison;
    return b;
  }

  static std::vector<detail::RouterGemmConfig> space(uint32_t kernel, int64_t K, int64_t E) {
    Runtime& r = rt();
    (void)r;
    const detail::FamilyDef* f = detail::find_family("router_gemm");
    ModelConfig m;
    m.hidden_size = static_cast<int>(K);
    m.num_experts = static_cast<int>(E);
    std::vector<detail::Specialization> specs, pts;
    f->enumerate(m, detail::Arch::parse("sm_90a"), specs);
    for (const auto& s : specs)
      if (s.kernel == kernel) f->search_space(s, pts);
    std::vector<detail::RouterGemmConfig> out;
    for (const auto& p : pts) out.push_back(p.config);
    return out;
  }
};

// ---- forward ---------------------------------------------------------------------------------------------------

struct Shape {
  int64_t T, K, E;
};
void PrintTo(const Shape& c, std::ostream* os) { *os << "T=" << c.T << " K=" << c.K << " E=" << c.E; }
std::string shape_name(const ::testing::TestParamInfo<Shape>& i) {
  return "T" + std::to_string(i.param.T) + "_K" + std::to_string(i.param.K) + "_E" + std::to_string(i.param.E);
}

std::vector<Shape> shapes() {
  std::vector<Shape> v;
  for (int64_t T : {0, 1, 7, 127, 4096, 8192})
    for (auto [K, E] : {std::pair<int64_t, int64_t>{2048, 256}, {2048, 160}, {1536, 64}}) v.push_back({T, K, E});
  v.push_back({7, 7168, 256});
  v.push_back({4096, 7168, 256});
  v.push_back({8192, 1536, 160});
  v.push_back({1000, 4096, 128});
  v.push_back({333, 2056, 8});  // K not a multiple of the tile's BK, E below one warp column
  return v;
}

class RouterGemmFwd : public RouterGemmTest, public ::testing::WithParamInterface<Shape> {};

TEST_P(RouterGemmFwd, MatchesReference) {
  const auto [T, K, E] = GetParam();
  check_fwd_default(/*variant=*/0, 0x90, T, K, E, true);  // the mma.sync kernel (any arch)
}

INSTANTIATE_TEST_SUITE_P(Grid, RouterGemmFwd, ::testing::ValuesIn(shapes()), shape_name);

// Every tile config the tuner may pick, at shapes that leave partial tiles in T (and in E for E = 160).
TEST_F(RouterGemmTest, FwdEveryConfig) {
  for (auto [T, K, E] : {Shape{1000, 2048, 256}, Shape{777, 1536, 160}}) {
    const auto [x, w] =
        bf16_xw(T, K, E, mix_seed({0x91, static_cast<uint64_t>(E)}), mix_seed({0x92, static_cast<uint64_t>(E)}));
    const ref::GemmRef want = ref::router_gemm_fwd(x, w, T, K, E);
    check_fwd_configs(space(0, K, E), 0, x, w, T, K, E, want);
  }
}

// A row stride on x and on logits (the padding columns of logits stay untouched).
TEST_F(RouterGemmTest, FwdStridedRows) {
  check_fwd_strided(0, 160, mix_seed({0x93}), mix_seed({0x94}));
}

// 3-D input [B, S, K] with 3-D logits gives the same bits as the flattened 2-D call.
TEST_F(RouterGemmTest, Fwd3dEqualsFlat) {
  Runtime& r = rt();
  const int64_t B = 3, S = 50, K = 2048, E = 256, T = B * S;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0x95}), mix_seed({0x96}));
  DeviceBuffer xb = upload(r, DType::bf16, x), wb = upload(r, DType::bf16, w), yb(r, T * E * 4);
  yb.poison();
  router_gemm_fp32_fwd(r, xb.ref(DType::bf16, {B, S, K}), wb.ref(DType::bf16, {E, K}), yb.ref(DType::f32, {B, S, E}),
                       nullptr);
  synchronize();
  const std::vector<float> y3 = yb.download<float>(T * E);
  const Fwd flat = run_fwd(x, w, T, K, E);
  EXPECT_TRUE(bitwise_equal("logits 3-D vs 2-D", y3, flat.y));
}

// ---- the sm_90a wgmma forward ------------------------------------------------------------------------------------

bool device_has_wgmma(Runtime& r) { return r.impl().device().arch.sm == 90; }

class RouterGemmFwdSm90 : public RouterGemmTest, public ::testing::WithParamInterface<Shape> {};

TEST_P(RouterGemmFwdSm90, MatchesReference) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const auto [T, K, E] = GetParam();
  if (E > 256) GTEST_SKIP();
  check_fwd_default(/*variant=*/1, 0x9b, T, K, E, false);
}

INSTANTIATE_TEST_SUITE_P(Grid, RouterGemmFwdSm90, ::testing::ValuesIn(shapes()), shape_name);

TEST_F(RouterGemmTest, FwdSm90EveryConfig) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  for (auto [T, K, E] : {Shape{1000, 2048, 256}, Shape{777, 1536, 160}, Shape{130, 2056, 8}}) {
    const auto [x, w] =
        bf16_xw(T, K, E, mix_seed({0x9c, static_cast<uint64_t>(E)}), mix_seed({0x9d, static_cast<uint64_t>(E)}));
    const ref::GemmRef want = ref::router_gemm_fwd(x, w, T, K, E);
    check_fwd_configs(space(4, K, E), 1, x, w, T, K, E, want);
  }
}

TEST_F(RouterGemmTest, FwdSm90StridedRows) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  check_fwd_strided(1, 160, mix_seed({0x9e}), mix_seed({0x9f}));
}

// ---- the sm_90a TMA forward (the default on sm_90a) ------------------------------------------------------------------

class RouterGemmFwdTma : public RouterGemmTest, public ::testing::WithParamInterface<Shape> {};

TEST_P(RouterGemmFwdTma, MatchesReference) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const auto [T, K, E] = GetParam();
  if (E > 256) GTEST_SKIP();
  check_fwd_default(/*variant=*/2, 0x9b7, T, K, E, true);
}

INSTANTIATE_TEST_SUITE_P(Grid, RouterGemmFwdTma, ::testing::ValuesIn(shapes()), shape_name);

// Every search-space point (clusters of 1, 2, 4 multicasting w; one or two consumer warpgroups), at shapes with
// partial tiles in T, E not a power of two, K not a multiple of 64, and T = 17000 where every CTA of the
// persistent grid walks several token tiles (266 tiles of 64 > 132 SMs) and a cluster of 4 has padding tiles.
TEST_F(RouterGemmTest, FwdTmaEveryConfig) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  for (auto [T, K, E] : {Shape{1000, 2048, 256}, Shape{777, 1536, 160}, Shape{130, 2056, 8}, Shape{17000, 1536, 64},
                         Shape{1, 2048, 256}}) {
    const auto [x, w] =
        bf16_xw(T, K, E, mix_seed({0x9c7, static_cast<uint64_t>(E)}), mix_seed({0x9d7, static_cast<uint64_t>(E)}));
    const ref::GemmRef want = ref::router_gemm_fwd(x, w, T, K, E);
    const auto pts = space(5, K, E);
    EXPECT_GE(pts.size(), E % 16 == 0 ? 8u : 2u);
    check_fwd_configs(pts, 2, x, w, T, K, E, want);
  }
}

// The K-split TMA forward (the default at up to ~8448 tokens on 132 SMs): every point, at the shapes above.
TEST_F(RouterGemmTest, FwdTmaKsplitEveryConfig) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  for (auto [T, K, E] : {Shape{1000, 2048, 256}, Shape{777, 1536, 160}, Shape{130, 2056, 8}, Shape{8192, 2048, 256},
                         Shape{1, 2048, 256}, Shape{4096, 7168, 256}}) {
    const auto [x, w] =
        bf16_xw(T, K, E, mix_seed({0x9c8, static_cast<uint64_t>(E)}), mix_seed({0x9d8, static_cast<uint64_t>(E)}));
    const ref::GemmRef want = ref::router_gemm_fwd(x, w, T, K, E);
    const auto pts = space(10, K, E);
    EXPECT_GE(pts.size(), 3u);
    check_fwd_configs(pts, 3, x, w, T, K, E, want);
    // Deterministic: the cluster adds its partial tiles in rank order.
    const Fwd a = run_fwd(x, w, T, K, E, nullptr, 0, 0, 3), b = run_fwd(x, w, T, K, E, nullptr, 0, 0, 3);
    EXPECT_TRUE(bitwise_equal("logits twice", b.y, a.y));
  }
}

// The forward over expert pairs (variant 5, the default on sm_90a where E % 16 == 0 and T ≥ ~7600: clusters of 2
// CTAs, E/2 experts each, x multicast): every search-space point at shapes with a partial last tile (T = 1: the second CTA's half of the x tile entirely past T), E = 160 /
// 64 / 16, K not a multiple of 64, and T = 17000 (a persistent cluster walks several tiles); strided rows.
TEST_F(RouterGemmTest, FwdTmaXmcEveryConfig) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  for (auto [T, K, E] : {Shape{1000, 2048, 256}, Shape{777, 1536, 160}, Shape{130, 2056, 16}, Shape{17000, 1536, 64},
                         Shape{1, 2048, 256}, Shape{8192, 2048, 256}, Shape{33, 7168, 256}}) {
    const auto [x, w] =
        bf16_xw(T, K, E, mix_seed({0x9ca, static_cast<uint64_t>(E)}), mix_seed({0x9da, static_cast<uint64_t>(E)}));
    const ref::GemmRef want = ref::router_gemm_fwd(x, w, T, K, E);
    const auto pts = space(11, K, E);
    EXPECT_GE(pts.size(), 4u);
    check_fwd_configs(pts, 5, x, w, T, K, E, want);
  }
  for (int64_t E : {160, 128}) check_fwd_strided(5, E, mix_seed({0x9eb}), mix_seed({0x9fb}));
}

// The expert-pair forward's kernel options: kRgRotateK (tile t walks its K chunks from chunk t mod CHUNKS on) and
// kRgBalance (one tile per CTA pair: tile_rows < 128, so x boxes overlap the next tile's rows and only owned rows are
// stored), both together, and the 8-byte stores from the registers (kRgEpiDirect) instead of the default staged
// epilogue (a cluster's last tile through shared memory with 16-byte stores; ping-pong keeps its direct stores), alone
// and with kRgBalance, at the default point, a two-chunks-at-once point (bk = 128), the ping-pong form
// (64-row tiles, consumers alternating; with kRgBalance two tiles a pair) and clusters of 4 (2 token tiles × the
// expert pair, x and w multicast; where E % 32 == 0), across shapes with
// partial tiles, K not a multiple of 128 or 64, several tiles per cluster (T = 17000) and tiny T; deterministic.
TEST_F(RouterGemmTest, FwdTmaXmcRotateAndBalance) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  for (auto [T, K, E] : {Shape{8192, 2048, 256}, Shape{4097, 2056, 160}, Shape{17000, 1536, 64}, Shape{7, 2048, 256},
                         Shape{1, 1600, 16}, Shape{300, 7168, 256}}) {
    const auto [x, w] =
        bf16_xw(T, K, E, mix_seed({0xa0c, static_cast<uint64_t>(T)}), mix_seed({0xa1c, static_cast<uint64_t>(E)}));
    const ref::GemmRef want = ref::router_gemm_fwd(x, w, T, K, E);
    const detail::RouterGemmConfig two{128, static_cast<int32_t>(E / 2), 128, 2, 2, 6};
    const detail::RouterGemmConfig pp{64, static_cast<int32_t>(E / 2), 64, 2, 2, 9};
    const detail::RouterGemmConfig quad{128, static_cast<int32_t>(E / 2), 64, 2, 4, 6};  // clusters of 4
    const detail::RouterGemmConfig quadpp{64, static_cast<int32_t>(E / 2), 64, 2, 4, 9};
    for (int flags : {kRgRotateK | kRgBalance, kRgBalance, kRgEpiDirect, kRgEpiDirect | kRgBalance})
      for (const detail::RouterGemmConfig* c : {static_cast<const detail::RouterGemmConfig*>(nullptr), &two, &pp,
                                                E % 32 == 0 ? &quad : &two, E % 32 == 0 ? &quadpp : &pp}) {
        SCOPED_TRACE("flags " + std::to_string(flags) + (c ? " " + fmt_config(*c) : " default") + " T=" +
                     std::to_string(T) + " K=" + std::to_string(K) + " E=" + std::to_string(E));
        detail::router_gemm_measure_flags.store(flags);
        const Fwd f = run_fwd(x, w, T, K, E, c, 0, 0, 5);
        const Fwd g = run_fwd(x, w, T, K, E, c, 0, E + 4, 5);  // strided logits: rows past a tile's own untouched
        detail::router_gemm_measure_flags.store(0);
        EXPECT_TRUE(f.guards_ok && g.guards_ok);
        EXPECT_TRUE(logits_close(f.y, want, K, E));
        EXPECT_TRUE(bitwise_equal("logits twice", g.y, f.y));
      }
  }
}

// The expert-pair forward's session-7 option: the TMA-store epilogue (kRgEpiTma: warps stage their rows in the x rows
// of the ring their warpgroup no longer reads and store 16 × 32 boxes; rows past T clipped by the tensor map), alone,
// with kRgRotateK, with warpgroup 1 storing from its registers meanwhile (kRgEpiMix), with each warp's boxes stored as
// soon as they are staged (session 14's kRgEpiTmaPipe, in the op's default: alone, with kRgEpiMix, without the
// producer tail), at the default point, 7 stages, two chunks at once (bk = 128), 64-token tiles (one consumer warpgroup), clusters of 4
// (each at some of the shapes), and where the epilogue does not apply (ping-pong, kRgBalance's overlapping tiles, E/2
// not a multiple of 32: the staged epilogue instead). Shapes with partial tiles, tiny T, K not a multiple of 64, several
// tiles per cluster. Every result must equal the default options' bit for bit (the same sums in the same order) and the
// fp64 reference within the fp32-accumulation bound; rows past the view untouched (guards, strided logits).
TEST_F(RouterGemmTest, FwdTmaXmcEpiTma) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  for (auto [T, K, E] : {Shape{8192, 2048, 256}, Shape{4097, 2056, 192}, Shape{17000, 1536, 64}, Shape{7, 2048, 256},
                         Shape{300, 7168, 256}, Shape{1000, 2048, 160}, Shape{130, 64, 128}, Shape{17000, 1040, 256}}) {
    const auto [x, w] =
        bf16_xw(T, K, E, mix_seed({0xb0c, static_cast<uint64_t>(T)}), mix_seed({0xb1c, static_cast<uint64_t>(E)}));
    const ref::GemmRef want = ref::router_gemm_fwd(x, w, T, K, E);
    const int32_t eh = static_cast<int32_t>(E / 2);
    const detail::RouterGemmConfig s7{128, eh, 64, 2, 2, 7}, two{128, eh, 128, 2, 2, 6}, one{64, eh, 64, 1, 2, 8},
        pp{64, eh, 64, 2, 2, 9}, quad{128, eh, 64, 2, 4, 6}, wide{128, eh, 64, 2, 2, 6};
    // The default everywhere; the other points at the target shape and at one odd shape each.
    std::vector<const detail::RouterGemmConfig*> cfgs = {nullptr};
    if (T == 8192) cfgs.insert(cfgs.end(), {&s7, &two, &pp});
    if (T == 4097 || T == 7 || T == 130) cfgs.push_back(&one);
    if (T < 8192) cfgs.push_back(&wide);  // 128-token tiles below the op's threshold (partial and persistent tiles)
    if (E % 32 == 0 && (T == 8192 || T == 4097 || T == 300)) cfgs.push_back(&quad);
    for (const detail::RouterGemmConfig* c : cfgs) {
      const std::string where = (c ? fmt_config(*c) : std::string("default")) + " T=" + std::to_string(T) +
                                " K=" + std::to_string(K) + " E=" + std::to_string(E);
      const Fwd base = run_fwd(x, w, T, K, E, c, 0, 0, 5);
      for (int flags : {kRgEpiTma, kRgEpiTma | kRgRotateK, kRgEpiTma | kRgBalance, kRgXmcPlain, kRgEpiTma | kRgEpiMix,
                        kRgEpiTma | kRgEpiTmaPipe, kRgEpiTma | kRgEpiMix | kRgEpiTmaPipe,
                        kRgEpiTma | kRgNoExitSync | kRgEpiTmaPipe}) {
        SCOPED_TRACE("flags " + std::to_string(flags) + " " + where);
        detail::router_gemm_measure_flags.store(flags);
        const Fwd f = run_fwd(x, w, T, K, E, c, 0, 0, 5);
        const Fwd g = run_fwd(x, w, T, K, E, c, 0, E + 4, 5);  // strided logits (16-byte rows: TMA stores)
        detail::router_gemm_measure_flags.store(0);
        EXPECT_TRUE(f.guards_ok && g.guards_ok);
        EXPECT_TRUE(logits_close(f.y, want, K, E));
        if (!(flags & (kRgRotateK | kRgBalance))) EXPECT_TRUE(bitwise_equal("logits vs default options", f.y, base.y));
        EXPECT_TRUE(bitwise_equal("strided logits", g.y, f.y));
      }
    }
  }
}

// Measurement (prints; checks only that tracing changes no result and that the timestamps are ordered): where the
// expert-pair forward's time goes at 8192 × 2048 → 256, L2 flushed before each traced run. Per CTA, from
// RouterGemmFwdTmaArgs::trace: start (globaltimer, µs after the first CTA's), then on the SM clock converted to µs:
// producer's first TMA issue, warpgroup 0's first stage landed, last stage landed, MMAs done, stores issued, stores
// performed (fence), and the globaltimer end. Modes: the default, the options (rot, bal) and the ablations
// (nostore; now: no w loaded).
TEST_F(RouterGemmTest, FwdTmaXmcTimeline) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  Runtime& r = rt();
  const int64_t T = 8192, K = 2048, E = 256;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xa2c}), mix_seed({0xa3c}));
  DeviceBuffer xb = upload(r, DType::bf16, x), wb = upload(r, DType::bf16, w), yb(r, T * E * 4);
  const int max_ctas = 1024;
  DeviceBuffer tb(r, static_cast<size_t>(max_ctas) * kRgTraceFwdSlots * 8);
  detail::L2Flusher l2(r, nullptr);
  CUevent ev0, ev1;
  detail::check(detail::driver().cuEventCreate(&ev0, CU_EVENT_DEFAULT), "cuEventCreate");
  detail::check(detail::driver().cuEventCreate(&ev1, CU_EVENT_DEFAULT), "cuEventCreate");
  float event_us = 0;
  // traced: L2 flushed first (unless back_to_back: the same call right before instead), CUDA events around the call.
  auto run = [&](int flags, bool traced, const detail::RouterGemmConfig* cfg, bool back_to_back) {
    tb.fill(0);
    detail::router_gemm_measure_flags.store(flags);
    auto call = [&] {
      detail::router_gemm_fp32_fwd_config(r, xb.ref(DType::bf16, {T, K}), wb.ref(DType::bf16, {E, K}),
                                          yb.ref(DType::f32, {T, E}), 5, cfg, nullptr);
    };
    if (traced) {
      if (back_to_back) call();
      else l2.flush(nullptr);
      detail::router_gemm_trace.store(static_cast<unsigned long long*>(tb.data()));
      detail::check(detail::driver().cuEventRecord(ev0, nullptr), "cuEventRecord");
    }
    call();
    if (traced) detail::check(detail::driver().cuEventRecord(ev1, nullptr), "cuEventRecord");
    synchronize();
    if (traced) {
      float ms = 0;
      detail::check(detail::driver().cuEventElapsedTime(&ms, ev0, ev1), "cuEventElapsedTime");
      event_us = ms * 1000.f;
    }
    detail::router_gemm_trace.store(nullptr);
    detail::router_gemm_measure_flags.store(0);
  };
  struct Mode {
    const char* name;
    int flags;
    detail::RouterGemmConfig cfg;  // bm = 0: the default
    bool back_to_back;
  };
  const detail::RouterGemmConfig def{}, stages7{128, 128, 64, 2, 2, 7}, pp9{64, 128, 64, 2, 2, 9},
      stages6{128, 128, 64, 2, 2, 6};
  const char* reps_env = std::getenv("KILN_RG_TIMELINE_REPS");  // traced runs a mode (default 2)
  const int reps = reps_env && std::atoi(reps_env) > 0 ? std::atoi(reps_env) : 2;
  for (const Mode m : {Mode{"default (both warpgroups TMA, each box stored as staged)", 0, def, false},
                       Mode{"noexit (producer tail, no final cluster barrier)", kRgNoExitSync, def, false},
                       Mode{"default again", 0, def, false},
                       Mode{"staged 16-byte stores (kRgXmcPlain)", kRgXmcPlain, def, false},
                       Mode{"epitma (TMA-store epilogue)", kRgEpiTma, def, false},
                       Mode{"noload + nomma + mix", kRgSkipLoad | kRgSkipMma | kRgEpiTma | kRgEpiMix, def, false},
                       Mode{"7 stages + epitma", kRgEpiTma, stages7, false},
                       Mode{"nostore", kRgSkipStore, def, false},
                       Mode{"noload (MMAs on stale shared memory)", kRgSkipLoad, def, false},
                       Mode{"nomma (data movement + stores)", kRgSkipMma, def, false},
                       Mode{"noload + nomma (ring protocol + staged stores)", kRgSkipLoad | kRgSkipMma | kRgXmcPlain, def, false},
                       Mode{"noload + nomma + epitma", kRgSkipLoad | kRgSkipMma | kRgEpiTma, def, false},
                       Mode{"direct 8-byte stores", kRgEpiDirect, def, false}, Mode{"7 stages, staged", kRgXmcPlain, stages7, false},
                       Mode{"default, back to back (no flush)", 0, def, true},
                       Mode{"staged, back to back (no flush)", kRgXmcPlain, def, true},
                       Mode{"7 stages + mix", kRgEpiTma | kRgEpiMix, stages7, false},
                       Mode{"epitma, back to back (no flush)", kRgEpiTma, def, true},
                       Mode{"pingpong 9 stages (64-row tiles, warpgroups on alternate tiles)", 0, pp9, false},
                       Mode{"session-13 default (mixed epilogue, 6 stages)", kRgEpiTma | kRgEpiMix | kRgNoExitSync, stages6,
                            false},
                       Mode{"mixed epilogue + pipe", kRgEpiTma | kRgEpiMix | kRgNoExitSync | kRgEpiTmaPipe, def, false}}) {
    // $KILN_RG_TIMELINE: only the modes whose name contains one of its '|'-separated parts (all when unset).
    if (const char* f = std::getenv("KILN_RG_TIMELINE"); f && *f) {
      bool hit = false;
      for (const std::string& part : split_bar(f)) hit = hit || std::string(m.name).find(part) != std::string::npos;
      if (!hit) continue;
    }
    SCOPED_TRACE(m.name);
    const bool checked = !(m.flags & (kRgSkipStore | kRgSkipW | kRgHalfStore | kRgSkipLoad | kRgSkipMma));
    const detail::RouterGemmConfig* cfg = m.cfg[0] ? &m.cfg : nullptr;
    run(m.flags, false, cfg, false);  // compiles; the untraced result
    const std::vector<float> plain = checked ? yb.download<float>(T * E) : std::vector<float>{};
    for (int rep = 0; rep < reps; ++rep) {
      run(m.flags, true, cfg, m.back_to_back);
      if (checked) EXPECT_TRUE(bitwise_equal("traced logits", yb.download<float>(T * E), plain));
      const std::vector<uint64_t> tr = tb.download<uint64_t>(static_cast<size_t>(max_ctas) * kRgTraceFwdSlots);
      int ctas = 0;
      while (ctas < max_ctas && tr[static_cast<size_t>(ctas) * kRgTraceFwdSlots + kRgTraceStartNs] != 0) ++ctas;
      ASSERT_GT(ctas, 0);
      auto at = [&](int c, int slot) { return tr[static_cast<size_t>(c) * kRgTraceFwdSlots + slot]; };
      auto wg0 = [&](int c, int slot) { return at(c, kRgTraceWg0 + slot); };
      const bool stores = !(m.flags & kRgSkipStore);
      // SM clock rate (cycles per ns) from CTAs' globaltimer span over their clock span; the median.
      std::vector<double> rate;
      for (int c = 0; c < ctas; ++c) {
        const uint64_t cs = at(c, kRgTraceStartClk), ce = wg0(c, kRgTraceFenced);
        const uint64_t gs = at(c, kRgTraceStartNs), ge = at(c, kRgTraceEndNs);
        EXPECT_LE(cs, at(c, kRgTraceProducerFirst)) << "CTA " << c;
        EXPECT_LE(at(c, kRgTraceProducerFirst), at(c, kRgTraceProducerLast)) << "CTA " << c;
        EXPECT_LE(cs, wg0(c, kRgTraceFirstFull)) << "CTA " << c;
        EXPECT_LE(wg0(c, kRgTraceFirstFull), wg0(c, kRgTraceLastFull)) << "CTA " << c;
        EXPECT_LE(wg0(c, kRgTraceLastFull), wg0(c, kRgTraceMmaDone)) << "CTA " << c;
        if (stores) EXPECT_LE(wg0(c, kRgTraceMmaDone), wg0(c, kRgTraceStored)) << "CTA " << c;
        EXPECT_LE(wg0(c, kRgTraceMmaDone), ce) << "CTA " << c;
        EXPECT_LE(gs, ge) << "CTA " << c;
        if (ge > gs && ce > cs) rate.push_back(static_cast<double>(ce - cs) / static_cast<double>(ge - gs));
      }
      ASSERT_FALSE(rate.empty());
      std::sort(rate.begin(), rate.end());
      const double ghz = rate[rate.size() / 2];
      uint64_t t0 = ~0ull;
      for (int c = 0; c < ctas; ++c) t0 = std::min<uint64_t>(t0, at(c, kRgTraceStartNs));
      // Columns (µs after the first CTA's start).
      const char* names[] = {"start",      "prod first", "first full", "last full",   "mma done",
                             "stored",     "fenced",     "end (gt)",   "wg1 fenced",  "prod last",
                             "init done",  "cluster ok", "before fill", "exit (gt)",  "wg1 lastfull",
                             "wg1 mmadone"};
      constexpr int COLS = 16;
      std::vector<std::vector<double>> col(COLS);
      std::vector<std::pair<double, int>> ends;
      for (int c = 0; c < ctas; ++c) {
        const double st = (at(c, kRgTraceStartNs) - t0) / 1000.0;
        auto rel = [&](uint64_t clk) { return st + (static_cast<double>(clk) - at(c, kRgTraceStartClk)) / ghz / 1000.0; };
        col[0].push_back(st);
        col[1].push_back(rel(at(c, kRgTraceProducerFirst)));
        col[2].push_back(rel(wg0(c, kRgTraceFirstFull)));
        col[3].push_back(rel(wg0(c, kRgTraceLastFull)));
        col[4].push_back(rel(wg0(c, kRgTraceMmaDone)));
        col[5].push_back(stores ? rel(wg0(c, kRgTraceStored)) : 0.0);
        col[6].push_back(rel(wg0(c, kRgTraceFenced)));
        col[7].push_back((at(c, kRgTraceEndNs) - t0) / 1000.0);
        const uint64_t f1 = at(c, kRgTraceWg0 + kRgTraceWgSlots + kRgTraceFenced);  // 0: warpgroup 1 had no tile
        col[8].push_back(f1 ? rel(f1) : 0.0);
        col[9].push_back(rel(at(c, kRgTraceProducerLast)));
        col[10].push_back(rel(at(c, kRgTraceInitDone)));
        col[11].push_back(rel(at(c, kRgTraceClusterDone)));
        col[12].push_back(rel(at(c, kRgTraceProducerPre)));
        col[13].push_back((at(c, kRgTraceExitNs) - t0) / 1000.0);
        const uint64_t l1 = at(c, kRgTraceWg0 + kRgTraceWgSlots + kRgTraceLastFull),
                       m1 = at(c, kRgTraceWg0 + kRgTraceWgSlots + kRgTraceMmaDone);
        col[14].push_back(f1 && l1 ? rel(l1) : 0.0);
        col[15].push_back(f1 && m1 ? rel(m1) : 0.0);
        ends.push_back({std::max(col[6].back(), col[8].back()), c});
      }
      double span = 0;
      for (int c = 0; c < ctas; ++c) span = std::max(span, (at(c, kRgTraceEndNs) - t0) / 1000.0);
      std::printf("[timeline] %s rep %d: %d CTAs, SM clock %.3f GHz; events %.2f µs, CTA span (globaltimer) %.2f µs; "
                  "µs after the first CTA start (min / p10 / p50 / p90 / max over CTAs)\n",
                  m.name, rep, ctas, ghz, event_us, span);
      for (int k = 0; k < COLS; ++k) {
        std::vector<double> v = col[k];
        std::sort(v.begin(), v.end());
        auto q = [&](double p) { return v[static_cast<size_t>(p * (v.size() - 1) + 0.5)]; };
        std::printf("  %-11s %7.2f %7.2f %7.2f %7.2f %7.2f\n", names[k], v.front(), q(0.1), q(0.5), q(0.9), v.back());
      }
      // Per-CTA durations: main loop (first → last stage landed), fill (start → first stage), tail, stores.
      std::vector<double> fill, loop, tail, st;
      for (int c = 0; c < ctas; ++c) {
        fill.push_back(col[2][c] - col[0][c]);
        loop.push_back(col[3][c] - col[2][c]);
        tail.push_back(col[4][c] - col[3][c]);
        st.push_back(col[6][c] - col[4][c]);
      }
      for (auto [name, v] : {std::pair<const char*, std::vector<double>*>{"d fill", &fill}, {"d loop", &loop},
                             {"d last mma", &tail}, {"d stores", &st}}) {
        std::sort(v->begin(), v->end());
        auto q = [&](double p) { return (*v)[static_cast<size_t>(p * (v->size() - 1) + 0.5)]; };
        std::printf("  %-11s %7.2f %7.2f %7.2f %7.2f %7.2f\n", name, v->front(), q(0.1), q(0.5), q(0.9), v->back());
      }
      std::sort(ends.begin(), ends.end());
      std::printf("  earliest done (CTA:SM @µs):");
      for (size_t i = 0; i < std::min<size_t>(6, ends.size()); ++i)
        std::printf(" %d:%llu@%.2f", ends[i].second, static_cast<unsigned long long>(at(ends[i].second, kRgTraceSm)),
                    ends[i].first);
      std::printf("\n  latest done:");
      for (size_t i = ends.size() > 6 ? ends.size() - 6 : 0; i < ends.size(); ++i)
        std::printf(" %d:%llu@%.2f", ends[i].second, static_cast<unsigned long long>(at(ends[i].second, kRgTraceSm)),
                    ends[i].first);
      std::printf("\n");
    }
  }
  detail::driver().cuEventDestroy(ev0);
  detail::driver().cuEventDestroy(ev1);
}

// One call of `fn` on a cold L2, timed with CUDA events (the bench method: detail::time_calls_us): µs.
double timed_once(detail::L2Flusher& l2, const std::function<void()>& fn) {
  return detail::time_calls_us([&](Stream) { fn(); }, nullptr, l2, 0, 1)[0];
}

// The forward A/Bs' settings: $KILN_RG_AB_ROUNDS (default 24) and $KILN_RG_AB_SHAPES ("TxK,…", E = 256; else `dflt`).
int ab_rounds() {
  const char* env = std::getenv("KILN_RG_AB_ROUNDS");
  return env && std::atoi(env) > 0 ? std::atoi(env) : 24;
}
std::vector<Shape> ab_shapes(std::vector<Shape> dflt) {
  const char* sh = std::getenv("KILN_RG_AB_SHAPES");
  if (!sh || !*sh) return dflt;
  std::vector<Shape> out;
  for (const std::string& part : split_on(sh, ',')) {
    const size_t xpos = part.find('x');
    if (xpos != std::string::npos)
      out.push_back({std::atoll(part.substr(0, xpos).c_str()), std::atoll(part.substr(xpos + 1).c_str()), 256});
  }
  return out;
}

// The forward's measurement flags by name, '+'-separated (nostore, tma, mix, noexit, plain, direct, half, rot, bal,
// now = no w loaded): their OR, or −1 if a name is unknown.
int rg_flags_named(const std::string& spec) {
  const std::pair<const char*, int> names[] = {{"nostore", kRgSkipStore}, {"tma", kRgEpiTma},     {"mix", kRgEpiMix},
                                               {"noexit", kRgNoExitSync}, {"plain", kRgXmcPlain}, {"direct", kRgEpiDirect},
                                               {"half", kRgHalfStore},    {"rot", kRgRotateK},    {"bal", kRgBalance},
                                               {"now", kRgSkipW},         {"pipe", kRgEpiTmaPipe}};
  int flags = 0;
  for (const std::string& n : split_on(spec, '+')) {
    bool hit = false;
    for (auto [nm, v] : names)
      if (n == nm) flags |= v, hit = true;
    if (!hit) return -1;
  }
  return flags;
}

// `arms` calls timed `rounds` times each, every round in a fresh random order (L2 flushed before every call; `before`,
// if given, runs untimed just before the flush), then
// printed under `tag`: per arm median / mean / p10 / p90, and per pair (p, q) the per-round differences q − p with the
// share of rounds q was faster. Returns us[arm][round].
std::vector<std::vector<double>> ab_random_order(detail::L2Flusher& l2, const char* tag, int64_t T, int64_t K,
                                                 const std::vector<std::string>& names, int rounds, unsigned seed,
                                                 const std::function<void(int)>& call,
                                                 const std::vector<std::pair<int, int>>& pairs,
                                                 const std::function<void(int)>& before = {}) {
  const int n = static_cast<int>(names.size());
  std::vector<std::vector<double>> us(n, std::vector<double>(rounds));
  std::mt19937 rng(seed);
  std::vector<int> order(n);
  for (int k = 0; k < n; ++k) order[k] = k;
  for (int i = 0; i < rounds; ++i) {
    std::shuffle(order.begin(), order.end(), rng);
    for (int k : order) {
      if (before) before(k);  // untimed, before the flush
      us[k][i] = timed_once(l2, [&] { call(k); });
    }
  }
  for (int k = 0; k < n; ++k) {
    std::vector<double> v = us[k];
    std::sort(v.begin(), v.end());
    double mean = 0;
    for (double t : v) mean += t / rounds;
    std::printf("[%s] T=%lld K=%lld %-28s median %.2f  mean %.2f  p10 %.2f  p90 %.2f  (n %d)\n", tag,
                static_cast<long long>(T), static_cast<long long>(K), names[k].c_str(), detail::median(v), mean,
                v[v.size() / 10], v[v.size() * 9 / 10], rounds);
  }
  for (auto [p, q] : pairs) {
    const PairedDiff pd = paired_diff(us[p], us[q]);
    std::printf("[%s] T=%lld K=%lld paired %s − %s: median %+.2f  p10 %+.2f  p90 %+.2f  faster in %d/%d\n", tag,
                static_cast<long long>(T), static_cast<long long>(K), names[q].c_str(), names[p].c_str(),
                detail::median(pd.d), pd.d[pd.d.size() / 10], pd.d[pd.d.size() * 9 / 10], pd.wins, rounds);
  }
  return us;
}

// Measurement (prints; checks only that both paths give the same bits): `kiln bench`'s op row (router_gemm_fp32_fwd)
// read 0.5–1.0 µs above the sweep row of the same kernel and config (variant 5, the default) in every round of sessions
// 4–8. Here, in one process and on the same card: (a) the public op and the variant-5 call on the same buffers and on a
// second buffer set, in blocks of 30 and interleaved call by call; (b) the first calls after a 300 ms idle GPU; (c) the
// host time of one call (it is hidden behind the 85 µs flush kernel only while it stays shorter); (d) the bench's own
// path: router_gemm_instance("fwd") and ("fwd_tmaxmc") prepared like bench cases and timed by time_calls_us in the
// order A B A B.
TEST_F(RouterGemmTest, FwdOpVsSweepAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  Runtime& r = rt();
  const int64_t T = 8192, K = 2048, E = 256;
  const auto [xa, wa] = bf16_xw(T, K, E, mix_seed({0xa4c}), mix_seed({0xa5c}));
  const auto [xb_, wb_] = bf16_xw(T, K, E, mix_seed({0xa6c}), mix_seed({0xa7c}));
  DeviceBuffer xA = upload(r, DType::bf16, xa), wA = upload(r, DType::bf16, wa), yA(r, T * E * 4), yA5(r, T * E * 4);
  DeviceBuffer xB = upload(r, DType::bf16, xb_), wB = upload(r, DType::bf16, wb_), yB(r, T * E * 4);
  detail::L2Flusher l2(r, nullptr);
  struct Set {
    DeviceBuffer *x, *w, *y;
  };
  auto op = [&](const Set& b) {
    router_gemm_fp32_fwd(r, b.x->ref(DType::bf16, {T, K}), b.w->ref(DType::bf16, {E, K}), b.y->ref(DType::f32, {T, E}),
                         nullptr);
  };
  auto v5 = [&](const Set& b) {
    detail::router_gemm_fp32_fwd_config(r, b.x->ref(DType::bf16, {T, K}), b.w->ref(DType::bf16, {E, K}),
                                        b.y->ref(DType::f32, {T, E}), 5, nullptr, nullptr);
  };
  const Set A{&xA, &wA, &yA}, A5{&xA, &wA, &yA5}, B{&xB, &wB, &yB};
  op(A);
  v5(A5);
  synchronize();
  EXPECT_TRUE(bitwise_equal("op vs variant 5", yA5.download<float>(T * E), yA.download<float>(T * E)));
  auto timed = [&](const std::function<void()>& fn) { return timed_once(l2, fn); };
  struct Row {
    const char* name;
    std::function<void()> fn;
  };
  const std::vector<Row> rows = {{"op A", [&] { op(A); }}, {"variant 5 A", [&] { v5(A); }},
                                 {"op B", [&] { op(B); }}, {"variant 5 B", [&] { v5(B); }}};
  for (int i = 0; i < 5; ++i)
    for (const Row& row : rows) row.fn();
  synchronize();
  for (int round = 0; round < 2; ++round)
    for (const Row& row : rows) {
      std::vector<double> us;
      for (int i = 0; i < 30; ++i) us.push_back(timed(row.fn));
      std::printf("[ab] block %d %-12s median %.2f µs (min %.2f)\n", round, row.name, detail::median(us),
                  *std::min_element(us.begin(), us.end()));
    }
  std::vector<std::vector<double>> inter(rows.size());
  for (int i = 0; i < 40; ++i)
    for (size_t k = 0; k < rows.size(); ++k) inter[(k + i) % rows.size()].push_back(timed(rows[(k + i) % rows.size()].fn));
  for (size_t k = 0; k < rows.size(); ++k)
    std::printf("[ab] interleaved %-12s median %.2f µs (min %.2f)\n", rows[k].name, detail::median(inter[k]),
                *std::min_element(inter[k].begin(), inter[k].end()));
  for (const Row& row : {rows[0], rows[1]}) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::printf("[ab] after 300 ms idle, %s:", row.name);
    for (int i = 0; i < 8; ++i) std::printf(" %.2f", timed(row.fn));
    std::printf("\n");
  }
  for (const Row& row : {rows[0], rows[1]}) {  // host cost of enqueueing one call (the GPU busy meanwhile)
    l2.flush(nullptr);
    const auto h0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 50; ++i) row.fn();
    const double host_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - h0).count();
    synchronize();
    std::printf("[ab] host time per call, %s: %.2f µs\n", row.name, host_us / 50);
  }
  // The bench path itself: prepared instances, time_calls_us (5 warm-up calls, then 30 flushed, timed calls).
  {
    detail::BenchInstance io = detail::router_gemm_instance(r, T, K, E, "fwd");
    detail::BenchInstance is = detail::router_gemm_instance(r, T, K, E, "fwd_tmaxmc");
    for (int round = 0; round < 2; ++round)
      for (auto [name, inst] : {std::pair<const char*, detail::BenchInstance*>{"bench op row (fwd)", &io},
                                {"bench sweep row (fwd_tmaxmc)", &is}}) {
        const std::vector<double> us = detail::time_calls_us(inst->run, nullptr, l2, 5, 30);
        std::printf("[ab] %s round %d: median %.2f µs\n", name, round, detail::median(us));
      }
  }
}

// Measurement (prints; checks only that every placement gives the default's bits): round 1 of session 9 read the same
// kernel and config (op and sweep twins alike) at either ≈ 21.1 or ≈ 21.9 µs per bench row. Which property of a row
// decides? In one process, L2 flushed before every timed call: (a) the default on one buffer set in 4 blocks of 20
// calls with 200 ms of idle GPU between blocks (a clock or time effect shows as blocks that differ); (b) x, w and the
// logits at chosen offsets inside their own allocations, all resident, timed round-robin (an address effect shows as
// placements that differ in every round); (c) six bench instances (router_gemm_instance, fresh allocations and data,
// as `kiln bench` prepares a row) timed round-robin. (The options, call by call: FwdOptionsAB.)
TEST_F(RouterGemmTest, FwdPlacementAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  Runtime& r = rt();
  const int64_t T = 8192, K = 2048, E = 256;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xa8c}), mix_seed({0xa9c}));
  const std::vector<uint8_t> xh = encode(DType::bf16, x), wh = encode(DType::bf16, w);
  constexpr size_t kMiB = size_t{1} << 20, kKiB = 1024;
  const size_t xbytes = T * K * 2, wbytes = E * K * 2, ybytes = T * E * 4;
  struct Place {
    const char* name;
    size_t xoff, woff, yoff;  // bytes into the placement's own allocation
  };
  const std::vector<Place> places = {
      {"x@0 w@32M y@34M", 0, 32 * kMiB, 34 * kMiB},
      {"x@64K w@33M y@35M+64K", 64 * kKiB, 33 * kMiB, 35 * kMiB + 64 * kKiB},
      {"x@1M w@34M y@36M", kMiB, 34 * kMiB, 36 * kMiB},
      {"x@2M+4K w@35M y@38M+4K", 2 * kMiB + 4 * kKiB, 35 * kMiB, 38 * kMiB + 4 * kKiB},
      {"y@0 w@8M x@10M", 10 * kMiB, 8 * kMiB, 0},
      {"x@0 y@32M w@40M (adjacent)", 0, 40 * kMiB, 32 * kMiB},
  };
  std::vector<DeviceBuffer> bufs;
  for (const Place& p : places) {
    bufs.emplace_back(r, 48 * kMiB);
    char* base = static_cast<char*>(bufs.back().data());
    detail::copy_to_device(base + p.xoff, xh.data(), xbytes);
    detail::copy_to_device(base + p.woff, wh.data(), wbytes);
  }
  auto call = [&](size_t i, int flags, const detail::RouterGemmConfig* cfg = nullptr) {
    char* base = static_cast<char*>(bufs[i].data());
    detail::router_gemm_measure_flags.store(flags);
    detail::router_gemm_fp32_fwd_config(r, TensorRef::contiguous(base + places[i].xoff, DType::bf16, {T, K}),
                                        TensorRef::contiguous(base + places[i].woff, DType::bf16, {E, K}),
                                        TensorRef::contiguous(base + places[i].yoff, DType::f32, {T, E}), 5, cfg,
                                        nullptr);
    detail::router_gemm_measure_flags.store(0);
  };
  auto logits = [&](size_t i) {
    std::vector<float> y(T * E);
    detail::copy_to_host(y.data(), static_cast<char*>(bufs[i].data()) + places[i].yoff, ybytes);
    return y;
  };
  for (size_t i = 0; i < places.size(); ++i) call(i, 0);
  synchronize();
  const std::vector<float> want = logits(0);
  for (size_t i = 1; i < places.size(); ++i) EXPECT_TRUE(bitwise_equal(places[i].name, logits(i), want));
  detail::L2Flusher l2(r, nullptr);
  auto timed = [&](const std::function<void()>& fn) { return timed_once(l2, fn); };
  auto report = [](const char* what, const std::string& name, const std::vector<double>& us) {
    std::vector<double> v = us;
    std::sort(v.begin(), v.end());
    std::printf("[place] %s %-34s median %.2f  p10 %.2f  p90 %.2f  (n %zu)\n", what, name.c_str(), detail::median(v),
                v[v.size() / 10], v[v.size() * 9 / 10], v.size());
  };
  // (a) one buffer set, blocks separated by idle time
  for (int b = 0; b < 4; ++b) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::vector<double> us;
    for (int i = 0; i < 20; ++i) us.push_back(timed([&] { call(0, 0); }));
    report("(a) block", std::to_string(b), us);
  }
  // (b) placements, round-robin
  std::vector<std::vector<double>> pu(places.size());
  for (int i = 0; i < 20; ++i)
    for (size_t k = 0; k < places.size(); ++k) pu[k].push_back(timed([&] { call(k, 0); }));
  for (size_t k = 0; k < places.size(); ++k) report("(b) placement", places[k].name, pu[k]);
  // (c) bench instances, round-robin
  {
    std::vector<detail::BenchInstance> inst;
    for (int i = 0; i < 6; ++i) inst.push_back(detail::router_gemm_instance(r, T, K, E, "fwd_tmaxmc"));
    for (auto& in : inst) in.run(nullptr);
    synchronize();
    std::vector<std::vector<double>> iu(inst.size());
    for (int i = 0; i < 20; ++i)
      for (size_t k = 0; k < inst.size(); ++k) iu[k].push_back(timed([&] { inst[k].run(nullptr); }));
    for (size_t k = 0; k < inst.size(); ++k) {
      const auto* y = static_cast<const char*>(inst[k].outputs[0].data);
      report("(c) bench instance", std::to_string(k) + " (logits at ...+" +
                                       std::to_string(reinterpret_cast<uintptr_t>(y) % (64 * kMiB) / kKiB) + " KiB mod 64M)",
             iu[k]);
    }
  }
}

// Measurement (prints; checks only that the options that keep the sums give the default's bits): the expert-pair
// forward's options against the default on one buffer set, timed call by call round-robin (24 rounds, L2 flushed before
// every call), so that a slow phase of the card or a slow allocation hits every option alike. Session 9 round 2 found
// single bench rows of one kernel ≈ 0.8 µs apart (a per-call bimodality whose share varies with the row).
TEST_F(RouterGemmTest, FwdOptionsAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  Runtime& r = rt();
  const int64_t T = 8192, K = 2048, E = 256;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xaac}), mix_seed({0xabc}));
  DeviceBuffer xb = upload(r, DType::bf16, x), wb = upload(r, DType::bf16, w), yb(r, T * E * 4);
  auto call = [&](size_t, int flags, const detail::RouterGemmConfig* cfg = nullptr) {
    detail::router_gemm_measure_flags.store(flags);
    detail::router_gemm_fp32_fwd_config(r, xb.ref(DType::bf16, {T, K}), wb.ref(DType::bf16, {E, K}),
                                        yb.ref(DType::f32, {T, E}), 5, cfg, nullptr);
    detail::router_gemm_measure_flags.store(0);
  };
  call(0, 0);
  synchronize();
  const std::vector<float> want = yb.download<float>(T * E);
  detail::L2Flusher l2(r, nullptr);
  auto timed = [&](const std::function<void()>& fn) { return timed_once(l2, fn); };
  auto report = [](const char* what, const std::string& name, const std::vector<double>& us) {
    std::vector<double> v = us;
    std::sort(v.begin(), v.end());
    std::printf("[opts] %s %-50s median %.2f  p10 %.2f  p90 %.2f  (n %zu)\n", what, name.c_str(), detail::median(v),
                v[v.size() / 10], v[v.size() * 9 / 10], v.size());
  };
  // The options: the epilogues (mixed = default, staged, TMA-only), the K walk rotated per tile, 66 tiles of 125 rows,
  // 7 stages, no final cluster barrier (the producer's tail), and no stores (ablation).
  const detail::RouterGemmConfig s7{128, 128, 64, 2, 2, 7};
  struct Opt {
    const char* name;
    int flags;
    const detail::RouterGemmConfig* cfg;
  };
  const Opt opts[] = {{"default", 0, nullptr},
                      {"staged epilogue (plain)", kRgXmcPlain, nullptr},
                      {"epitma (TMA stores only)", kRgEpiTma, nullptr},
                      {"rot (K walk rotated per tile)", kRgRotateK, nullptr},
                      {"bal (66 tiles of 125 rows)", kRgBalance, nullptr},
                      {"7 stages", 0, &s7},
                      {"nostore", kRgSkipStore, nullptr},
                      {"noexit (producer tail, no final cluster barrier)", kRgNoExitSync, nullptr},
                      {"noexit + staged", kRgNoExitSync | kRgXmcPlain, nullptr},
                      {"default again", 0, nullptr}};
  for (const Opt& o : opts) call(0, o.flags, o.cfg);  // compiles the 7-stage point outside the timing
  synchronize();
  std::vector<std::vector<double>> ou(std::size(opts));
  for (int i = 0; i < 24; ++i)
    for (size_t k = 0; k < std::size(opts); ++k) ou[k].push_back(timed([&] { call(0, opts[k].flags, opts[k].cfg); }));
  for (size_t k = 0; k < std::size(opts); ++k) report("option", opts[k].name, ou[k]);
  // The options that keep every sum (not the ablations) must give the default's bits.
  for (const Opt& o : opts) {
    if (o.flags & (kRgSkipStore | kRgRotateK | kRgBalance)) continue;
    call(0, o.flags, o.cfg);
    synchronize();
    EXPECT_TRUE(bitwise_equal(o.name, yb.download<float>(T * E), want));
  }
}

// Measurement (prints; checks that both give the same bits): the op's default since session 9 round 3 (no cluster
// barrier at the end, kRgNoExitSync) against the one before (the same epilogue with the final cluster barrier: mixed
// TMA / register stores for 128-token tiles, the staged epilogue for the 64-token tiles below 4225 tokens), call by call
// round-robin at the bench shapes: 8192 × 2048 and 8192 × 7168 → 256, 4096 and 1024 × 2048 → 256.
TEST_F(RouterGemmTest, FwdNoExitAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  Runtime& r = rt();
  detail::L2Flusher l2(r, nullptr);
  for (auto [T, K, E] : {Shape{8192, 2048, 256}, Shape{8192, 7168, 256}, Shape{4096, 2048, 256}, Shape{1024, 2048, 256}}) {
    const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xacc, static_cast<uint64_t>(T)}), mix_seed({0xadc}));
    DeviceBuffer xb = upload(r, DType::bf16, x), wb = upload(r, DType::bf16, w), yb(r, T * E * 4);
    const int64_t sms = r.impl().device().sm_count;
    // the op's earlier default: 128-token tiles where their CTA pairs fill ≥ 90 % of the SMs, else 64-token tiles
    const int before = (T + 127) / 128 * 2 * 10 >= sms * 9 ? kRgEpiTma | kRgEpiMix : kRgXmcPlain;
    auto call = [&](int flags) {
      detail::router_gemm_measure_flags.store(flags);
      router_gemm_fp32_fwd(r, xb.ref(DType::bf16, {T, K}), wb.ref(DType::bf16, {E, K}), yb.ref(DType::f32, {T, E}),
                           nullptr);
      detail::router_gemm_measure_flags.store(0);
    };
    call(before);
    synchronize();
    const std::vector<float> want = yb.download<float>(T * E);
    call(0);
    synchronize();
    EXPECT_TRUE(bitwise_equal("default vs the earlier default", yb.download<float>(T * E), want));
    auto timed = [&](int flags) { return timed_once(l2, [&] { call(flags); }); };
    std::vector<double> a, b, a2, b2;
    for (int i = 0; i < 20; ++i) {
      a.push_back(timed(0));
      b.push_back(timed(before));
      b2.push_back(timed(before));
      a2.push_back(timed(0));
    }
    auto line = [&](const char* name, std::vector<double> v) {
      std::sort(v.begin(), v.end());
      std::printf("[noexit] T=%lld K=%lld %-36s median %.2f  p10 %.2f  p90 %.2f\n", static_cast<long long>(T),
                  static_cast<long long>(K), name, detail::median(v), v[v.size() / 10], v[v.size() * 9 / 10]);
    };
    line("default (no final cluster barrier)", a);
    line("earlier default", b);
    line("earlier default, second slot", b2);
    line("default, second slot", a2);
  }
}

// The expert-pair forward's producer tail instead of the final cluster barrier (kRgNoExitSync, session 9; the op's
// default), with the staged / TMA-store epilogues, with kRgRotateK and without it (kRgXmcPlain: none of the op's
// options), at the default point, 7 stages, 64-token tiles (one consumer warpgroup, 8 stages), ping-pong, clusters of
// 4, bk = 128; shapes with a partial last tile, tiny T (the second CTA's rows past T), K not a multiple of 64, several
// tiles per cluster, strided x rows. Every result must equal the default's bit for bit (the same sums in the same
// order; with kRgRotateK the rotated default's) and the fp64 reference.
TEST_F(RouterGemmTest, FwdTmaXmcNoExitSync) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  for (auto [T, K, E] : {Shape{8192, 2048, 256}, Shape{4097, 2056, 192}, Shape{17000, 1536, 64}, Shape{7, 2048, 256},
                         Shape{300, 7168, 256}, Shape{1000, 2048, 160}, Shape{130, 320, 128}, Shape{1, 1600, 16}}) {
    const auto [x, w] =
        bf16_xw(T, K, E, mix_seed({0xc0c, static_cast<uint64_t>(T)}), mix_seed({0xc1c, static_cast<uint64_t>(E)}));
    const ref::GemmRef want = ref::router_gemm_fwd(x, w, T, K, E);
    const int32_t eh = static_cast<int32_t>(E / 2);
    const detail::RouterGemmConfig s7{128, eh, 64, 2, 2, 7}, one{64, eh, 64, 1, 2, 8}, pp{64, eh, 64, 2, 2, 9},
        quad{128, eh, 64, 2, 4, 6}, two{128, eh, 128, 2, 2, 6}, wide{128, eh, 64, 2, 2, 6};
    std::vector<const detail::RouterGemmConfig*> cfgs = {nullptr, &wide};
    if (T == 8192 || T == 7) cfgs.insert(cfgs.end(), {&s7, &pp, &two});
    if (T == 4097 || T == 7 || T == 1 || T == 130) cfgs.push_back(&one);
    if (E % 32 == 0 && (T == 8192 || T == 300)) cfgs.push_back(&quad);
    for (const detail::RouterGemmConfig* c : cfgs) {
      const std::string where = (c ? fmt_config(*c) : std::string("default")) + " T=" + std::to_string(T) +
                                " K=" + std::to_string(K) + " E=" + std::to_string(E);
      const Fwd base = run_fwd(x, w, T, K, E, c, 0, 0, 5);
      detail::router_gemm_measure_flags.store(kRgRotateK);
      const Fwd rot = run_fwd(x, w, T, K, E, c, 0, 0, 5);
      detail::router_gemm_measure_flags.store(0);
      for (int flags : {kRgXmcPlain, kRgNoExitSync, kRgNoExitSync | kRgXmcPlain, kRgNoExitSync | kRgEpiTma,
                        kRgNoExitSync | kRgRotateK}) {
        SCOPED_TRACE("flags " + std::to_string(flags) + " " + where);
        detail::router_gemm_measure_flags.store(flags);
        const Fwd f = run_fwd(x, w, T, K, E, c, 0, 0, 5);
        const Fwd g = run_fwd(x, w, T, K, E, c, K + 24, E + 4, 5);  // strided x and logits rows
        detail::router_gemm_measure_flags.store(0);
        EXPECT_TRUE(f.guards_ok && g.guards_ok);
        EXPECT_TRUE(logits_close(f.y, want, K, E));
        EXPECT_TRUE(bitwise_equal("logits vs default options", f.y, (flags & kRgRotateK) ? rot.y : base.y));
        EXPECT_TRUE(bitwise_equal("strided rows", g.y, f.y));
      }
    }
  }
}

// Measurement (prints; checks that every arm gives the same bits): one more ring stage for the expert-pair forward now
// that its consumers run at the tensor pipe's rate (session 10: the lean chunk loop) — session 10 round 2 found the
// main loop short of bytes in flight (clusters holding 4 of 6 stages ran 1.6 µs slower). Call by call on one buffer set,
// $KILN_RG_AB_ROUNDS rounds (default 24) each in a random order, L2 flushed before every call. Arms: the op's default
// (its config from the tuning database or the heuristic: since round 3, 7 stages for 128-token tiles where K ≥ 4096),
// the default config with the stage count forced to the default's and to one more (128-token tiles: 6 / 7; 64-token
// tiles: 8 / 9), and the op's default again. Shapes: $KILN_RG_AB_SHAPES ("TxK,…", E = 256; default 8192x2048,
// 8192x7168, 4096x2048, 1024x2048).
TEST_F(RouterGemmTest, FwdStagesAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  Runtime& r = rt();
  detail::L2Flusher l2(r, nullptr);
  const int rounds = ab_rounds();
  for (auto [T, K, E] : ab_shapes({{8192, 2048, 256}, {8192, 7168, 256}, {4096, 2048, 256}, {1024, 2048, 256}})) {
    const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xd4c, static_cast<uint64_t>(T)}), mix_seed({0xd5c}));
    DeviceBuffer xb = upload(r, DType::bf16, x), wb = upload(r, DType::bf16, w), yb(r, T * E * 4);
    const bool big = (T + 127) / 128 * 2 * 10 >= r.impl().device().sm_count * 9;  // the op's 128-token tiles
    const detail::RouterGemmConfig a = big ? detail::RouterGemmConfig{128, 128, 64, 2, 2, 6}
                                           : detail::RouterGemmConfig{64, 128, 64, 1, 2, 8};
    detail::RouterGemmConfig b = a;
    b[5] += 1;
    auto call = [&](const detail::RouterGemmConfig* c) {
      detail::router_gemm_fp32_fwd_config(r, xb.ref(DType::bf16, {T, K}), wb.ref(DType::bf16, {E, K}),
                                          yb.ref(DType::f32, {T, E}), -1, c, nullptr);
    };
    call(&a);
    synchronize();
    const std::vector<float> want = yb.download<float>(T * E);
    using Cfg = const detail::RouterGemmConfig*;
    for (Cfg c : {static_cast<Cfg>(&b), static_cast<Cfg>(nullptr)}) {
      call(c);
      synchronize();
      EXPECT_TRUE(bitwise_equal(c ? "one more stage vs fewer" : "the op's default vs the forced config",
                                yb.download<float>(T * E), want));
    }
    const detail::RouterGemmConfig* arm[4] = {nullptr, &a, &b, nullptr};
    ab_random_order(l2, "stages", T, K,
                    {"op default", "forced " + std::to_string(a[5]) + " stages",
                     "forced " + std::to_string(b[5]) + " stages", "op default again"},
                    rounds, 0x5e11 + static_cast<unsigned>(T + K), [&](int k) { call(arm[k]); },
                    {{1, 2}, {1, 0}, {2, 0}, {1, 3}});
  }
}

// Measurement (prints; checks that every full-output arm gives the first arm's bits): arms named in the environment,
// each timed once a round in a fresh random order, L2 flushed before every call, at each shape of $KILN_RG_AB_SHAPES
// ("TxK,…", E = 256; default 8192x2048), $KILN_RG_AB_ROUNDS rounds (default 24). $KILN_RG_ARMS: arms separated by '|',
// each "label=variant/config/flags": variant as router_gemm_fp32_fwd_config's (-1: the op's choice), config
// "bm.bn.bk.wm.wn.stages" or "-" (the variant's default), flags '+'-separated names (nostore, tma, mix, noexit, plain,
// direct, half, rot, bal, now = no w loaded) or "-". Paired: every arm against the first, and the pairs "i-j" of $KILN_RG_AB_PAIRS (',').
TEST_F(RouterGemmTest, FwdArmsAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const char* spec = std::getenv("KILN_RG_ARMS");
  if (!spec || !*spec) GTEST_SKIP() << "no $KILN_RG_ARMS";
  Runtime& r = rt();
  detail::L2Flusher l2(r, nullptr);
  const int rounds = ab_rounds();
  struct Arm {
    std::string name;
    int variant = -1;
    bool has_cfg = false;
    detail::RouterGemmConfig cfg{};
    int flags = 0;
  };
  std::vector<Arm> arms;
  for (const std::string& a : split_on(spec, '|')) {
    const size_t eq = a.find('=');
    ASSERT_NE(eq, std::string::npos) << a;
    const std::vector<std::string> f = split_on(a.substr(eq + 1), '/');
    ASSERT_EQ(f.size(), 3u) << a;
    Arm arm;
    arm.name = a.substr(0, eq);
    arm.variant = std::atoi(f[0].c_str());
    if (f[1] != "-") {
      const std::vector<std::string> c = split_on(f[1], '.');
      ASSERT_EQ(c.size(), 6u) << a;
      for (int i = 0; i < 6; ++i) arm.cfg[i] = std::atoi(c[i].c_str());
      arm.has_cfg = true;
    }
    if (f[2] != "-") {
      const int fl = rg_flags_named(f[2]);
      ASSERT_GE(fl, 0) << "unknown flag in " << f[2];
      arm.flags = fl;
    }
    arms.push_back(arm);
  }
  const int N = static_cast<int>(arms.size());
  std::vector<std::pair<int, int>> pairs;
  for (int k = 1; k < N; ++k) pairs.push_back({0, k});
  if (const char* pe = std::getenv("KILN_RG_AB_PAIRS"); pe && *pe)
    for (const std::string& p : split_on(pe, ',')) {
      const size_t d = p.find('-');
      if (d == std::string::npos) continue;
      const int i = std::atoi(p.substr(0, d).c_str()), j = std::atoi(p.substr(d + 1).c_str());
      if (i >= 0 && j >= 0 && i < N && j < N) pairs.push_back({i, j});
    }
  std::vector<std::string> arm_names;
  for (const Arm& a : arms) arm_names.push_back(a.name);
  for (auto [T, K, E] : ab_shapes({{8192, 2048, 256}})) {
    const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xe6c, static_cast<uint64_t>(T)}), mix_seed({0xe7c}));
    DeviceBuffer xb = upload(r, DType::bf16, x), wb = upload(r, DType::bf16, w), yb(r, T * E * 4);
    auto call = [&](const Arm& a) {
      detail::router_gemm_measure_flags.store(a.flags);
      detail::router_gemm_fp32_fwd_config(r, xb.ref(DType::bf16, {T, K}), wb.ref(DType::bf16, {E, K}),
                                          yb.ref(DType::f32, {T, E}), a.variant, a.has_cfg ? &a.cfg : nullptr,
                                          nullptr);
      detail::router_gemm_measure_flags.store(0);
    };
    std::vector<float> want;
    for (const Arm& a : arms) {  // compiles every point outside the timing; full-output arms: the first one's bits
      call(a);
      synchronize();
      if (a.flags & (kRgSkipStore | kRgHalfStore | kRgSkipW)) continue;
      if (want.empty()) want = yb.download<float>(T * E);
      else EXPECT_TRUE(bitwise_equal(a.name.c_str(), yb.download<float>(T * E), want)) << a.name;
    }
    ab_random_order(l2, "arms", T, K, arm_names, rounds, 0x5e13 + static_cast<unsigned>(T + K),
                    [&](int k) { call(arms[k]); }, pairs);
  }
}

// Measurement (prints; checks that cuBLASLt's output is within a relative L2 of 1e-4 of the op's): the op's forward
// against cuBLASLt doing the same GEMM (ops/bench/cublaslt.hpp: bf16 x bf16ᵀ → fp32, the op's layouts, the heuristic's
// first algorithm; skipped where libcublasLt.so.13 cannot be opened), each arm timed once a round in a fresh random
// order with L2 flushed before every call, $KILN_RG_AB_ROUNDS rounds (default here 150), at $KILN_RG_AB_SHAPES
// (default 8192x2048,8192x7168). Each arm twice (the second pair says how large a difference between two samples of
// the same thing is in this run), and the op without its logits stores (kRgSkipStore: the main loop and prologue alone,
// what the store phase costs in this run). $KILN_RG_CUBLAS_ARMS adds arms of the op with measurement flags,
// "label=flag+flag|…" (rg_flags_named), each paired against the op and against cuBLASLt; full-output ones must give the
// op's bits; "label=flag+flag@S" (flags "-" for none) runs the op's 128-token tiles with S stages. $KILN_RG_AB_PAIRS adds
// pairs "i-j" (arm indices).
TEST_F(RouterGemmTest, FwdVsCublasAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  Runtime& r = rt();
  detail::L2Flusher l2(r, nullptr);
  const int rounds = std::getenv("KILN_RG_AB_ROUNDS") ? ab_rounds() : 150;
  std::vector<std::string> names = {"kiln op", "cuBLASLt", "kiln op again", "cuBLASLt again", "kiln nostore"};
  std::vector<int> arm_flags = {0, 0, 0, 0, kRgSkipStore};
  std::vector<int> arm_stages = {0, 0, 0, 0, 0};  // > 0: the op's default config with this many stages
  std::vector<std::pair<int, int>> pairs = {{0, 1}, {2, 3}, {0, 2}, {1, 3}, {0, 4}, {4, 1}};
  if (const char* extra = std::getenv("KILN_RG_CUBLAS_ARMS"); extra && *extra)
    for (const std::string& a : split_on(extra, '|')) {
      // "label=flag+flag" or "label=flag+flag@S" (S stages; flags "-" for none)
      const size_t eq = a.find('=');
      ASSERT_NE(eq, std::string::npos) << a;
      std::string fs = a.substr(eq + 1);
      int stages = 0;
      if (const size_t at = fs.find('@'); at != std::string::npos) {
        stages = std::atoi(fs.substr(at + 1).c_str());
        fs = fs.substr(0, at);
      }
      const int fl = fs == "-" ? 0 : rg_flags_named(fs);
      ASSERT_GE(fl, 0) << "unknown flag in " << a;
      const int k = static_cast<int>(names.size());
      names.push_back(a.substr(0, eq));
      arm_flags.push_back(fl);
      arm_stages.push_back(stages);
      pairs.push_back({0, k});
      pairs.push_back({1, k});
    }
  if (const char* pe = std::getenv("KILN_RG_AB_PAIRS"); pe && *pe)  // more pairs "i-j" (arm indices)
    for (const std::string& p : split_on(pe, ',')) {
      const size_t d = p.find('-');
      if (d == std::string::npos) continue;
      const int i = std::atoi(p.substr(0, d).c_str()), j = std::atoi(p.substr(d + 1).c_str());
      if (i >= 0 && j >= 0 && i < static_cast<int>(names.size()) && j < static_cast<int>(names.size()))
        pairs.push_back({i, j});
    }
  for (auto [T, K, E] : ab_shapes({{8192, 2048, 256}, {8192, 4096, 256}, {8192, 7168, 256}})) {
    detail::CublasLtGemm lt(T, K, E);
    if (!lt.available()) GTEST_SKIP() << "cuBLASLt: " << lt.why();
    const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xcb1, static_cast<uint64_t>(T + K)}), mix_seed({0xcb2}));
    DeviceBuffer xb = upload(r, DType::bf16, x), wb = upload(r, DType::bf16, w), yb(r, T * E * 4), yc(r, T * E * 4);
    std::vector<detail::RouterGemmConfig> cfgs(names.size());
    for (size_t k = 0; k < names.size(); ++k)  // the op's 128-token tiles with the arm's stage count
      cfgs[k] = detail::RouterGemmConfig{128, static_cast<int32_t>(E / 2), 64, 2, 2, arm_stages[k]};
    auto ours = [&](int flags = 0, const detail::RouterGemmConfig* cfg = nullptr) {
      detail::router_gemm_measure_flags.store(flags);
      detail::router_gemm_fp32_fwd_config(r, xb.ref(DType::bf16, {T, K}), wb.ref(DType::bf16, {E, K}),
                                          yb.ref(DType::f32, {T, E}), -1, cfg, nullptr);
      detail::router_gemm_measure_flags.store(0);
    };
    auto arm_cfg = [&](size_t k) { return arm_stages[k] > 0 ? &cfgs[k] : nullptr; };
    auto theirs = [&] { lt.run(xb.data(), wb.data(), yc.data(), nullptr); };
    ours();
    theirs();
    const double rel = detail::relative_l2_device(yc.data(), yb.data(), T * E);
    std::printf("[cublas] T=%lld K=%lld %s: relative L2 to the op %.3g\n", static_cast<long long>(T),
                static_cast<long long>(K), lt.description().c_str(), rel);
    EXPECT_LE(rel, 1e-4);
    const std::vector<float> want = yb.download<float>(T * E);
    for (size_t k = 4; k < names.size(); ++k) {  // compiled outside the timing; full-output arms: the op's bits
      yb.poison();
      ours(arm_flags[k], arm_cfg(k));
      synchronize();
      if (!(arm_flags[k] & (kRgSkipStore | kRgHalfStore | kRgSkipW)))
        EXPECT_TRUE(bitwise_equal(names[k].c_str(), yb.download<float>(T * E), want)) << names[k];
    }
    ab_random_order(l2, "cublas", T, K, names, rounds, 0xcb1a + static_cast<unsigned>(T + K),
                    [&](int k) { k == 1 || k == 3 ? theirs() : ours(arm_flags[k], arm_cfg(k)); }, pairs);
  }
}

// Measurement (prints; checks cuBLASLt's bits against the op's): does a call's time depend on the kernel that ran before
// the L2 flush? Round B of session 13 read cuBLASLt 18.80 µs against the op's 20.45 as `kiln bench` rows (each timed
// back to back with itself) but 20.13 against 20.21 call by call in random order. Arms: the timed call (op or cuBLASLt)
// × the untimed call made just before its flush (op, cuBLASLt, the empty kernel, the op without stores, the op with
// both warpgroups storing by TMA, the op with both storing from registers; the last three with the producer tail like
// the default), every round in a fresh random order, $KILN_RG_AB_ROUNDS rounds (default 150), at $KILN_RG_AB_SHAPES
// (default 8192x2048). Then the bench's own method in blocks (5 warm-up calls, median of 30), op and cuBLASLt
// alternately, three blocks each.
TEST_F(RouterGemmTest, FwdOrderAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  Runtime& r = rt();
  detail::L2Flusher l2(r, nullptr);
  const int rounds = std::getenv("KILN_RG_AB_ROUNDS") ? ab_rounds() : 150;
  for (auto [T, K, E] : ab_shapes({{8192, 2048, 256}})) {
    detail::CublasLtGemm lt(T, K, E);
    if (!lt.available()) GTEST_SKIP() << "cuBLASLt: " << lt.why();
    const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xcb3, static_cast<uint64_t>(T + K)}), mix_seed({0xcb4}));
    DeviceBuffer xb = upload(r, DType::bf16, x), wb = upload(r, DType::bf16, w), yb(r, T * E * 4), yc(r, T * E * 4);
    auto ours = [&](int flags) {
      detail::router_gemm_measure_flags.store(flags);
      detail::router_gemm_fp32_fwd_config(r, xb.ref(DType::bf16, {T, K}), wb.ref(DType::bf16, {E, K}),
                                          yb.ref(DType::f32, {T, E}), -1, nullptr, nullptr);
      detail::router_gemm_measure_flags.store(0);
    };
    auto theirs = [&] { lt.run(xb.data(), wb.data(), yc.data(), nullptr); };
    // The previous call: 0 op, 1 cuBLASLt, 2 empty kernel, 3 op nostore, 4 op TMA-only epilogue, 5 op register stores.
    const char* prev_names[] = {"op", "cuBLASLt", "empty", "op nostore", "op tma-only", "op direct"};
    const int prev_flags[] = {0, 0, 0, kRgSkipStore, kRgEpiTma | kRgNoExitSync, kRgEpiDirect | kRgNoExitSync};
    auto prev = [&](int p) {
      if (p == 1) theirs();
      else if (p == 2) l2.empty(nullptr);
      else ours(prev_flags[p]);
    };
    ours(0);
    theirs();
    synchronize();
    const std::vector<float> want = yb.download<float>(T * E);
    EXPECT_TRUE(bitwise_equal("cuBLASLt vs the op", yc.download<float>(T * E), want));
    for (int p = 3; p < 6; ++p) prev(p);  // compiled outside the timing
    synchronize();
    std::vector<std::string> names;
    for (const char* timed : {"op", "cuBLASLt"})
      for (const char* pn : prev_names) names.push_back(std::string(timed) + " after " + pn);
    ab_random_order(l2, "order", T, K, names, rounds, 0x0cb5 + static_cast<unsigned>(T + K),
                    [&](int k) { k < 6 ? ours(0) : theirs(); },
                    {{0, 1}, {0, 2}, {0, 3}, {0, 4}, {0, 5}, {6, 7}, {6, 8}, {6, 9}, {6, 10}, {6, 11}, {0, 6}, {1, 7}},
                    [&](int k) { prev(k % 6); });
    for (int b = 0; b < 6; ++b) {
      const bool op = b % 2 == 0;
      std::vector<double> v = detail::time_calls_us([&](Stream) { op ? ours(0) : theirs(); }, nullptr, l2, 5, 30);
      std::sort(v.begin(), v.end());
      std::printf("[order] T=%lld K=%lld bench-method block %d (%s x 35, back to back): median %.2f  p10 %.2f  p90 "
                  "%.2f\n",
                  static_cast<long long>(T), static_cast<long long>(K), b, op ? "op" : "cuBLASLt", detail::median(v),
                  v[v.size() / 10], v[v.size() * 9 / 10]);
    }
  }
}

// Measurement (prints; checks that the swapped outputs carry the same bits): why `kiln bench`'s router_gemm_fp32_fwd
// row and its cuBLASLt baseline read the other way round from FwdVsCublasAB (session 14: bench rows op 19.58–19.94 µs,
// cuBLASLt 18.77–19.39 in eight processes; call by call in one process op 19.17, cuBLASLt 19.46). $KILN_RG_BM_INSTANCES
// (default 3) instances prepared as `kiln bench` prepares the row (router_gemm_instance "fwd_cublas": fresh x / w / op
// logits y, then cuBLASLt's workspace and logits yc), each (1) timed by the bench's own method right after it is
// prepared (detail::time_calls_us: 5 warm-up calls, then 30 timed calls with L2 flushed before each — in round A still
// 65 launches a block; parity-balanced since — the op's block, then cuBLASLt's: the bench's order). Then, all instances
// prepared: (2) cuBLASLt's block first, then the op's; (3) the outputs swapped (op → yc, cuBLASLt → y), op block first;
// (4) every instance's four calls (op / cuBLASLt × y / yc) one by one in a fresh random order every round,
// $KILN_RG_AB_ROUNDS rounds (default 200); (5) the bench's order again. With $KILN_RG_BM_COPYPROBE=1 the process first
// does what `kiln bench` does before its rows: the copy probe (two 1 GiB buffers, a memset, 33 device-to-device copies,
// freed), then the flusher.
TEST_F(RouterGemmTest, FwdBenchMethodAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  Runtime& r = rt();
  if (const char* cp = std::getenv("KILN_RG_BM_COPYPROBE"); cp && std::atoi(cp) > 0) {
    const size_t bytes = size_t{1} << 30;
    DeviceBuffer src(r, bytes), dst(r, bytes);
    detail::check(detail::driver().cuMemsetD8(reinterpret_cast<CUdeviceptr>(src.data()), 0x3c, bytes), "cuMemsetD8");
    for (int i = 0; i < 33; ++i)
      detail::check(detail::driver().cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(dst.data()),
                                                       reinterpret_cast<CUdeviceptr>(src.data()), bytes, nullptr),
                    "cuMemcpyDtoDAsync");
    synchronize();
    std::printf("[bm] the copy probe's buffers allocated, copied and freed first\n");
  }
  detail::L2Flusher l2(r, nullptr);
  const int rounds = std::getenv("KILN_RG_AB_ROUNDS") ? ab_rounds() : 200;
  const char* ienv = std::getenv("KILN_RG_BM_INSTANCES");
  const int n_inst = ienv && std::atoi(ienv) > 0 ? std::atoi(ienv) : 3;
  for (auto [T, K, E] : ab_shapes({{8192, 2048, 256}})) {
    std::vector<detail::BenchInstance> inst;
    std::vector<detail::RouterGemmFwdBenchIo> io;
    auto op = [&](int i, void* out) {
      detail::router_gemm_fp32_fwd_config(r, io[i].x, io[i].w, TensorRef::contiguous(out, DType::f32, {T, E}), -1,
                                          nullptr, nullptr);
    };
    auto lt = [&](int i, void* out) { io[i].lt->run(io[i].x.data, io[i].w.data, out, nullptr); };
    auto block = [&](const std::function<void()>& fn) {
      std::vector<double> v = detail::time_calls_us([&](Stream) { fn(); }, nullptr, l2, 5, 30);
      std::sort(v.begin(), v.end());
      return std::array<double, 3>{detail::median(v), v[v.size() / 10], v[v.size() * 9 / 10]};
    };
    auto print_blocks = [&](const char* what, int i, const char* n1, std::array<double, 3> a, const char* n2,
                            std::array<double, 3> b) {
      std::printf("[bm] T=%lld K=%lld instance %d %-34s %s %.2f (p10 %.2f p90 %.2f)  %s %.2f (p10 %.2f p90 %.2f)  "
                  "cuBLASLt − op %+.2f\n",
                  static_cast<long long>(T), static_cast<long long>(K), i, what, n1, a[0], a[1], a[2], n2, b[0], b[1],
                  b[2], (n1[0] == 'c' ? a[0] - b[0] : b[0] - a[0]));
    };
    for (int i = 0; i < n_inst; ++i) {  // (1) prepared, then timed at once, as a bench row is
      inst.push_back(detail::router_gemm_instance(r, T, K, E, "fwd_cublas"));
      io.push_back(detail::router_gemm_fwd_bench_io(inst.back()));
      if (!inst.back().baseline || !io.back().lt) GTEST_SKIP() << "no cuBLASLt baseline: " << inst.back().baseline_name;
      const auto a = block([&] { inst[i].run(nullptr); });
      const auto b = block([&] { inst[i].baseline(nullptr); });
      print_blocks("(1) bench order, just prepared:", i, "op", a, "cuBLASLt", b);
    }
    auto download = [&](const void* p) {
      std::vector<float> v(static_cast<size_t>(T * E));
      detail::copy_to_host(v.data(), p, v.size() * 4);
      return v;
    };
    for (int i = 0; i < n_inst; ++i) {  // the swapped outputs carry the same bits (untimed)
      synchronize();
      const std::vector<float> want = download(io[i].y.data);
      op(i, io[i].yc);
      synchronize();
      EXPECT_TRUE(bitwise_equal("op into cuBLASLt's buffer", download(io[i].yc), want));
      lt(i, io[i].y.data);
      synchronize();
      EXPECT_TRUE(bitwise_equal("cuBLASLt into the op's buffer", download(io[i].y.data), want));
    }
    for (int i = 0; i < n_inst; ++i) {
      const auto b = block([&] { inst[i].baseline(nullptr); });
      const auto a = block([&] { inst[i].run(nullptr); });
      print_blocks("(2) cuBLASLt block first:", i, "cuBLASLt", b, "op", a);
    }
    for (int i = 0; i < n_inst; ++i) {
      const auto a = block([&] { op(i, io[i].yc); });
      const auto b = block([&] { lt(i, io[i].y.data); });
      print_blocks("(3) outputs swapped, op first:", i, "op→yc", a, "cuBLASLt→y", b);
    }
    std::vector<std::string> names;
    std::vector<std::pair<int, int>> pairs;
    for (int i = 0; i < n_inst; ++i) {
      for (const char* n : {"op→y", "cuBLASLt→yc", "op→yc", "cuBLASLt→y"})
        names.push_back("i" + std::to_string(i) + " " + n);
      const int b = 4 * i;
      pairs.insert(pairs.end(), {{b, b + 1}, {b + 2, b + 3}, {b, b + 3}, {b + 2, b + 1}, {b, b + 2}, {b + 1, b + 3}});
      if (i > 0) pairs.insert(pairs.end(), {{0, b}, {1, b + 1}});
    }
    ab_random_order(l2, "bm", T, K, names, rounds, 0xb15 + static_cast<unsigned>(T + K),
                    [&](int k) {
                      const int i = k / 4, a = k % 4;
                      if (a == 0) op(i, io[i].y.data);
                      else if (a == 1) lt(i, io[i].yc);
                      else if (a == 2) op(i, io[i].yc);
                      else lt(i, io[i].y.data);
                    },
                    pairs);
    for (int i = 0; i < n_inst; ++i) {
      const auto a = block([&] { inst[i].run(nullptr); });
      const auto b = block([&] { inst[i].baseline(nullptr); });
      print_blocks("(5) bench order again:", i, "op", a, "cuBLASLt", b);
    }
  }
}

// Measurement (prints; checks the traced logits' bits): round A of session 15 (FwdBenchMethodAB) found the bench's
// blocks (time_calls_us: 5 warm-up calls + 30 × (flush, call) = 65 launches) alternating slow / fast by ≈ 0.8 µs,
// whichever kernel runs in them, with the phase set by the process's history — as if each call's time depended on the
// parity of its launch's index. Here, on one buffer set: (a) six op blocks back to back by time_calls_us, then six more
// each after one extra untimed empty launch (rounds B / C: 65 and 66 launches a block, the first six alternating; from
// round D time_calls_us balances the parity, an empty launch before every other call's flush); (b) $KILN_RG_AB_ROUNDS
// rounds (default 150), each arm timed once a round in a fresh random order, every timed launch's index parity (counted
// from the loop's start; flush, empty kernel, op and cuBLASLt one launch each) set by one or two untimed empty launches
// before its flush: the op, no-op grids of the op's kernel and of the 64-token kernel (no clusters), with and without
// dynamic shared memory, the empty kernel, cuBLASLt × even / odd; (c) 16 traced op calls alternating parity: the SMs
// left idle, the CTA span and the SM clock of each (the expert-pair kernel's trace).
TEST_F(RouterGemmTest, FwdLaunchParityAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  Runtime& r = rt();
  const int64_t T = 8192, K = 2048, E = 256;
  detail::CublasLtGemm lt(T, K, E);
  if (!lt.available()) GTEST_SKIP() << "cuBLASLt: " << lt.why();
  detail::L2Flusher l2(r, nullptr);
  const int rounds = std::getenv("KILN_RG_AB_ROUNDS") ? ab_rounds() : 150;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xba1}), mix_seed({0xba2}));
  DeviceBuffer xb = upload(r, DType::bf16, x), wb = upload(r, DType::bf16, w), yb(r, T * E * 4), yc(r, T * E * 4);
  constexpr int kCalls = 16, kMaxCtas = 256;
  DeviceBuffer tb(r, static_cast<size_t>(kCalls) * kMaxCtas * kRgTraceFwdSlots * 8);
  tb.fill(0);
  // variant -1: the op's kernel (expert pairs, 2-CTA clusters); 2: the 64-token TMA kernel (no clusters: no-op grids).
  auto ours = [&](int flags, int variant = -1) {
    detail::router_gemm_measure_flags.store(flags);
    detail::router_gemm_fp32_fwd_config(r, xb.ref(DType::bf16, {T, K}), wb.ref(DType::bf16, {E, K}),
                                        yb.ref(DType::f32, {T, E}), variant, nullptr, nullptr);
    detail::router_gemm_measure_flags.store(0);
  };
  auto theirs = [&] { lt.run(xb.data(), wb.data(), yc.data(), nullptr); };
  // Arms in pairs (even, odd): the op; its grid returning at once (2-CTA clusters, 213 KB), the same without dynamic
  // shared memory; the 64-token TMA kernel's grid returning at once (128 single CTAs, 205 KB / none); the empty kernel
  // (one warp); cuBLASLt. (Round D of session 15 also launched the op and its no-op grid with the cluster scheduling
  // policies spread / load-balancing: no parity cost removed beyond noise; deleted.)
  struct Arm {
    const char* name;
    int flags, variant;  // variant -3: the empty kernel, -2: cuBLASLt
  };
  const Arm arms[] = {{"op", 0, -1},
                      {"noop", kRgNoop, -1},
                      {"noop0", kRgNoop | kRgNoopNoSmem, -1},
                      {"tma noop", kRgNoop, 2},
                      {"tma noop0", kRgNoop | kRgNoopNoSmem, 2},
                      {"empty", 0, -3},
                      {"cuBLASLt", 0, -2}};
  const int n_arms = static_cast<int>(std::size(arms));
  auto arm_call = [&](const Arm& a) {
    if (a.variant == -3) l2.empty(nullptr);
    else if (a.variant == -2) theirs();
    else ours(a.flags, a.variant);
  };
  for (const Arm& a : arms) arm_call(a);  // compiles and loads outside the timing
  synchronize();
  ours(kRgSkipStore);
  ours(0);
  theirs();
  synchronize();
  const std::vector<float> want = yb.download<float>(T * E);
  EXPECT_TRUE(bitwise_equal("cuBLASLt vs the op", yc.download<float>(T * E), want));
  // (a) blocks
  for (int extra = 0; extra < 2; ++extra) {
    std::printf("[parity] op blocks of 5 + 30 calls back to back (time_calls_us), %s:",
                extra ? "one empty launch before each" : "nothing between them");
    for (int b = 0; b < 6; ++b) {
      if (extra) l2.empty(nullptr);
      std::vector<double> v = detail::time_calls_us([&](Stream) { ours(0); }, nullptr, l2, 5, 30);
      std::printf(" %.2f", detail::median(v));
    }
    std::printf("\n");
  }
  // (b) call by call with the timed launch's parity set
  long long launches = 0;
  auto set_parity = [&](int want_odd) {  // before the flush: 1 or 2 empty launches; then the flush and the call (2)
    int extra = 1;
    if ((launches + extra + 2) % 2 != want_odd) extra = 2;
    for (int e = 0; e < extra; ++e) l2.empty(nullptr);
    launches += extra + 2;
  };
  std::vector<std::string> names;
  std::vector<std::pair<int, int>> pairs;
  for (int a = 0; a < n_arms; ++a) {
    names.push_back(std::string(arms[a].name) + " even");
    names.push_back(std::string(arms[a].name) + " odd");
    pairs.push_back({2 * a, 2 * a + 1});
  }
  const int cub = 2 * (n_arms - 1);
  pairs.insert(pairs.end(), {{0, cub}, {1, cub + 1}});
  ab_random_order(l2, "parity", T, K, names, rounds, 0xba3, [&](int k) { arm_call(arms[k / 2]); }, pairs,
                  [&](int k) { set_parity(k % 2); });
  // (c) traced calls, parity alternating
  synchronize();
  std::vector<double> ev(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    set_parity(i % 2);
    ev[i] = timed_once(l2, [&] {
      detail::router_gemm_trace.store(static_cast<unsigned long long*>(tb.data()) +
                                      static_cast<size_t>(i) * kMaxCtas * kRgTraceFwdSlots);
      ours(0);
      detail::router_gemm_trace.store(nullptr);
    });
  }
  synchronize();
  EXPECT_TRUE(bitwise_equal("traced logits", yb.download<float>(T * E), want));
  const std::vector<uint64_t> tr = tb.download<uint64_t>(static_cast<size_t>(kCalls) * kMaxCtas * kRgTraceFwdSlots);
  const int sms = r.impl().device().sm_count;
  for (int i = 0; i < kCalls; ++i) {
    auto at = [&](int c, int slot) { return tr[(static_cast<size_t>(i) * kMaxCtas + c) * kRgTraceFwdSlots + slot]; };
    int ctas = 0;
    while (ctas < kMaxCtas && at(ctas, kRgTraceStartNs) != 0) ++ctas;
    ASSERT_GT(ctas, 0);
    std::vector<int> used(static_cast<size_t>(std::max(sms, 1)), 0);
    uint64_t t0 = ~0ull, t1 = 0;
    std::vector<double> rate, first;
    for (int c = 0; c < ctas; ++c) {
      const uint64_t sm = at(c, kRgTraceSm);
      if (sm < used.size()) ++used[sm];
      t0 = std::min<uint64_t>(t0, at(c, kRgTraceStartNs));
      t1 = std::max<uint64_t>(t1, at(c, kRgTraceEndNs));
      const uint64_t cs = at(c, kRgTraceStartClk), ce = at(c, kRgTraceWg0 + kRgTraceFenced);
      const uint64_t gs = at(c, kRgTraceStartNs), ge = at(c, kRgTraceEndNs);
      if (ge > gs && ce > cs) rate.push_back(static_cast<double>(ce - cs) / static_cast<double>(ge - gs));
    }
    std::sort(rate.begin(), rate.end());
    const double ghz = rate.empty() ? 0 : rate[rate.size() / 2];
    for (int c = 0; c < ctas && ghz > 0; ++c)
      first.push_back((at(c, kRgTraceStartNs) - t0) / 1000.0 +
                      (static_cast<double>(at(c, kRgTraceWg0 + kRgTraceFirstFull)) - at(c, kRgTraceStartClk)) / ghz /
                          1000.0);
    std::sort(first.begin(), first.end());
    std::string idle;
    for (int s = 0; s < sms; ++s)
      if (!used[s]) idle += (idle.empty() ? "" : ",") + std::to_string(s);
    std::printf("[parity] traced call %2d (%s): events %.2f µs, CTA span %.2f µs, SM clock %.3f GHz, first stage p50 "
                "%.2f µs, %d CTAs, idle SMs %s\n",
                i, i % 2 ? "odd" : "even", ev[i], (t1 - t0) / 1000.0, ghz,
                first.empty() ? 0.0 : first[first.size() / 2], ctas, idle.c_str());
  }
}

TEST_F(RouterGemmTest, FwdTmaKsplitStridedRows) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  check_fwd_strided(3, 160, mix_seed({0x9e8}), mix_seed({0x9f8}));
}

TEST_F(RouterGemmTest, FwdTmaStridedRows) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  check_fwd_strided(2, 160, mix_seed({0x9e7}), mix_seed({0x9f7}));
}

// NaN and ±inf in x propagate like IEEE arithmetic; large and small magnitudes keep their relative accuracy.
TEST_F(RouterGemmTest, FwdNonFiniteAndExtremeMagnitudes) {
  const int64_t T = 64, K = 2048, E = 256;
  std::vector<float> x = bf16_values(T * K, mix_seed({0x97}), 1.0f);
  const std::vector<float> w = bf16_values(E * K, mix_seed({0x98}), 0.02f);
  x[3 * K + 5] = std::numeric_limits<float>::quiet_NaN();
  x[10 * K + 100] = std::numeric_limits<float>::infinity();
  x[20 * K + 7] = -std::numeric_limits<float>::infinity();
  const Fwd f = run_fwd(x, w, T, K, E);
  const ref::GemmRef want = ref::router_gemm_fwd(x, w, T, K, E);
  EXPECT_TRUE(logits_close(f.y, want, K, E));
  for (float scale : {1e-15f, 1e15f}) {
    SCOPED_TRACE("x and w scaled by " + std::to_string(scale));
    std::vector<float> xs = bf16_values(T * K, mix_seed({0x99}), scale);
    std::vector<float> ws = bf16_values(E * K, mix_seed({0x9a}), scale);
    const Fwd fs = run_fwd(xs, ws, T, K, E);
    const ref::GemmRef ws_ref = ref::router_gemm_fwd(xs, ws, T, K, E);
    EXPECT_TRUE(logits_close(fs.y, ws_ref, K, E));
  }
}

// ---- backward --------------------------------------------------------------------------------------------------

class RouterGemmBwd : public RouterGemmTest, public ::testing::WithParamInterface<Shape> {};

TEST_P(RouterGemmBwd, MatchesReference) {
  const auto [T, K, E] = GetParam();
  const uint64_t seed = mix_seed({0xa0, static_cast<uint64_t>(T), static_cast<uint64_t>(K), static_cast<uint64_t>(E)});
  SCOPED_TRACE("seed " + std::to_string(seed));
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({seed, 1}), mix_seed({seed, 2}));
  const std::vector<float> g = randn(T * E, mix_seed({seed, 3}), 1e-4f);  // full fp32 mantissas
  const Bwd b = run_bwd(g, x, w, T, K, E);
  EXPECT_TRUE(b.guards_ok) << "written outside dx, dw or the workspace";
  const BwdRef want(g, x, w, T, K, E);
  const auto rdx = want.check_dx(b.dx, 1);
  EXPECT_TRUE(rdx);
  // T = 0: dw is an empty sum, zeros (the poison would fail the bound of 0).
  const auto rdw = want.check_dw(b.dw, 1);
  EXPECT_TRUE(rdw);
  RecordProperty("dx", rdx.message());
  RecordProperty("dw", rdw.message());
}

INSTANTIATE_TEST_SUITE_P(Grid, RouterGemmBwd, ::testing::ValuesIn(shapes()), shape_name);

// dw adds its T-split partials in a fixed order: repeated runs are bitwise identical (dx too).
TEST_F(RouterGemmTest, BwdIsDeterministic) {
  const int64_t T = 8192, K = 2048, E = 256;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xa1}), mix_seed({0xa2}));
  const std::vector<float> g = randn(T * E, mix_seed({0xa3}), 1e-4f);
  const Bwd a = run_bwd(g, x, w, T, K, E);
  // (The advertised workspace size is the default kernels'; the portable ones allocate their own here.)
  const Bwd b = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, /*user_workspace=*/false, /*variant=*/0);
  EXPECT_TRUE(b.guards_ok);
  EXPECT_TRUE(bitwise_equal("dw", b.dw, a.dw));
  EXPECT_TRUE(bitwise_equal("dx", b.dx, a.dx));
}

// Only dx, or only dw: the other output is not touched.
TEST_F(RouterGemmTest, BwdOneOutputOnly) {
  const int64_t T = 1000, K = 2048, E = 160;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xa4}), mix_seed({0xa5}));
  const std::vector<float> g = randn(T * E, mix_seed({0xa6}), 1e-4f);
  const Bwd both = run_bwd(g, x, w, T, K, E);
  const Bwd only_dx = run_bwd(g, x, w, T, K, E, true, false);
  const Bwd only_dw = run_bwd(g, x, w, T, K, E, false, true);
  EXPECT_TRUE(only_dx.guards_ok && only_dw.guards_ok);
  EXPECT_TRUE(bitwise_equal("dx alone", only_dx.dx, both.dx));
  EXPECT_TRUE(bitwise_equal("dw alone", only_dw.dw, both.dw));
}

TEST_F(RouterGemmTest, BwdEveryConfig) {
  for (auto [T, K, E] : {Shape{1000, 2048, 256}, Shape{777, 1536, 160}}) {
    const auto [x, w] =
        bf16_xw(T, K, E, mix_seed({0xa7, static_cast<uint64_t>(E)}), mix_seed({0xa8, static_cast<uint64_t>(E)}));
    const std::vector<float> g = randn(T * E, mix_seed({0xa9, static_cast<uint64_t>(E)}), 1e-4f);
    const BwdRef want(g, x, w, T, K, E);
    for (const auto& c : space(1, K, E)) {
      SCOPED_TRACE("dx " + fmt_config(c) + " E=" + std::to_string(E));
      const Bwd b = run_bwd(g, x, w, T, K, E, true, false, &c, nullptr);
      EXPECT_TRUE(b.guards_ok);
      EXPECT_TRUE(want.check_dx(b.dx, 1));
    }
    for (const auto& c : space(2, K, E)) {
      SCOPED_TRACE("dw " + fmt_config(c) + " E=" + std::to_string(E));
      const Bwd b = run_bwd(g, x, w, T, K, E, false, true, nullptr, &c);
      EXPECT_TRUE(b.guards_ok);
      EXPECT_TRUE(want.check_dw(b.dw, 1));
    }
  }
}

// (The cp.async wgmma backward — variant 1 — was removed in session 7: never the default on sm_90a, its tests went
// with it; bench/NOTES.md keeps its measurements.)

// Non-finite g propagates through the public op's default (the TMA backward, here at precision tf32), and with a
// caller's workspace of the advertised size (the sums of dw's T-range groups: 2 groups of 4 ranges at 4096 tokens
// on 132 SMs) it gives the bits of the internal TMA entry point.
TEST_F(RouterGemmTest, BwdDefaultWithWorkspaceAndNonFinite) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const int64_t T = 4096, K = 2048, E = 256;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xc4}), mix_seed({0xc5}));
  std::vector<float> g = randn(T * E, mix_seed({0xc6}), 1e-4f);
  g[5 * E + 3] = std::numeric_limits<float>::quiet_NaN();
  g[50 * E + 100] = std::numeric_limits<float>::infinity();
  const BwdRef want(g, x, w, T, K, E);
  // The public op's default on sm_90a is the TMA backward; with a caller's workspace of the advertised size (the
  // sums of dw's T-range groups: 2 groups of 4 ranges at 4096 tokens on 132 SMs) it gives the same bits.
  const Bwd t = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, 2);
  const Bwd b = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, /*user_workspace=*/true, /*variant=*/-1);
  EXPECT_TRUE(b.guards_ok);
  EXPECT_TRUE(bitwise_equal("dw (TMA vs default)", b.dw, t.dw));
  EXPECT_TRUE(bitwise_equal("dx (TMA vs default)", b.dx, t.dx));
  EXPECT_TRUE(want.check_dx(t.dx, 0));
  EXPECT_TRUE(want.check_dw(t.dw, 0));
}

// ---- the sm_90a TMA backward (the default on sm_90a) -----------------------------------------------------------------

// precision: 0 = tf32 (the fp16 pass, the default), 1 = high (g hi + lo), 2 = bf16(g) alone (bench only).
const char* const kPrecName[] = {"tf32", "high", "bf16g", "?", "standard"};

class RouterGemmBwdTma : public RouterGemmTest, public ::testing::WithParamInterface<Shape> {};

TEST_P(RouterGemmBwdTma, MatchesReference) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const auto [T, K, E] = GetParam();
  const uint64_t seed = mix_seed({0xc7, static_cast<uint64_t>(T), static_cast<uint64_t>(K), static_cast<uint64_t>(E)});
  SCOPED_TRACE("seed " + std::to_string(seed));
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({seed, 1}), mix_seed({seed, 2}));
  const std::vector<float> g = randn(T * E, mix_seed({seed, 3}), 1e-4f);
  const BwdRef want(g, x, w, T, K, E);
  for (int prec : {0, 1}) {
    SCOPED_TRACE(kPrecName[prec]);
    const Bwd b = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, /*variant=*/2, prec);
    EXPECT_TRUE(b.guards_ok) << "written outside dx or dw";
    const auto rdx = want.check_dx(b.dx, prec);
    EXPECT_TRUE(rdx);
    const auto rdw = want.check_dw(b.dw, prec);
    EXPECT_TRUE(rdw);
    RecordProperty(std::string("dx_") + kPrecName[prec], rdx.message());
    RecordProperty(std::string("dw_") + kPrecName[prec], rdw.message());
  }
}

INSTANTIATE_TEST_SUITE_P(Grid, RouterGemmBwdTma, ::testing::ValuesIn(shapes()), shape_name);

// Search-space points beyond the defaults, split so each test compiles only a few kernels (every NVRTC compile takes
// seconds): the fp16 pass's dx with 128-token units and with w multicast to a cluster of 2; its dw with 32-token
// chunks (6 stages), with clusters of 1 (dw stored straight from registers) and of 4 ranges; `high` dw with 32-token
// chunks; the bf16(g) kernels' defaults; and the defaults at T = 17000 (several token tiles a persistent dx CTA:
// row scales rewritten between units). E = 160 leaves a partial expert tile, K = 1536 partial column blocks; the
// defaults at every shape are in Grid/RouterGemmBwdTma.
struct TmaCase {
  int prec;                   // 0 tf32, 1 high, 2 bf16(g)
  bool dx;                    // else dw
  std::array<int32_t, 6> c;   // bm bn bk wm wn stages
};

class RouterGemmBwdTmaConfigs : public RouterGemmTest {
 public:
  void check(int64_t T, int64_t K, int64_t E, std::initializer_list<TmaCase> cases) {
    if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
    constexpr uint32_t kDxKernel[] = {12, 8, 6}, kDwKernel[] = {13, 7, 9};
    const auto [x, w] =
        bf16_xw(T, K, E, mix_seed({0xc8, static_cast<uint64_t>(E)}), mix_seed({0xc9, static_cast<uint64_t>(E)}));
    const std::vector<float> g = randn(T * E, mix_seed({0xca, static_cast<uint64_t>(E)}), 1e-4f);
    const BwdRef want(g, x, w, T, K, E);
    for (const TmaCase& tc : cases) {
      detail::RouterGemmConfig c{};
      std::copy(tc.c.begin(), tc.c.end(), c.begin());
      SCOPED_TRACE(std::string(tc.dx ? "dx_tma " : "dw_tma ") + kPrecName[tc.prec] + " " + fmt_config(c) +
                   " T=" + std::to_string(T) + " E=" + std::to_string(E));
      bool listed = false;  // every point tested here is one the tuner may pick
      for (const auto& p : space(tc.dx ? kDxKernel[tc.prec] : kDwKernel[tc.prec], K, E)) listed = listed || p == c;
      EXPECT_TRUE(listed) << "not in the search space";
      if (tc.dx) {
        const Bwd b = run_bwd(g, x, w, T, K, E, true, false, &c, nullptr, false, 2, tc.prec);
        EXPECT_TRUE(b.guards_ok);
        EXPECT_TRUE(want.check_dx(b.dx, tc.prec));
      } else {
        const Bwd b = run_bwd(g, x, w, T, K, E, false, true, nullptr, &c, false, 2, tc.prec);
        EXPECT_TRUE(b.guards_ok);
        EXPECT_TRUE(want.check_dw(b.dw, tc.prec));
      }
    }
  }
};

TEST_F(RouterGemmBwdTmaConfigs, Fp16Dx) {
  check(1000, 2048, 256, {{0, true, {128, 256, 64, 2, 1, 3}}, {0, true, {64, 256, 64, 2, 2, 5}}});
}
TEST_F(RouterGemmBwdTmaConfigs, Fp16DwDeepRing) {
  check(1000, 2048, 256, {{0, false, {128, 256, 32, 2, 8, 6}}, {0, false, {128, 256, 32, 2, 8, 7}}});
}
TEST_F(RouterGemmBwdTmaConfigs, Fp16DwClusters) {
  check(777, 1536, 160, {{0, false, {128, 256, 64, 1, 8, 3}}, {0, false, {128, 256, 64, 4, 4, 3}}});
}
// dw with clusters of 1: 8 range partials straight from the registers, added by dw_reduce — 8 ranges of 256 tokens
// at K = 2048, E = 256, and at E = 160, K = 1536, T = 840 (12 tiles × 8 ranges of 128 tokens: the last range empty,
// a partial expert tile).
TEST_F(RouterGemmBwdTmaConfigs, HighDwClustersOf1) {
  check(2000, 2048, 256, {{1, false, {128, 256, 64, 1, 8, 3}}, {2, false, {128, 256, 64, 1, 8, 3}}});
  check(840, 1536, 160, {{1, false, {128, 256, 64, 1, 8, 3}}});
}
TEST_F(RouterGemmBwdTmaConfigs, HighDwDeepRing) {
  check(777, 1536, 160, {{1, false, {128, 256, 32, 2, 8, 6}}});
}
TEST_F(RouterGemmBwdTmaConfigs, Bf16gDefaults) {
  check(1000, 2048, 256, {{2, true, {64, 256, 64, 2, 1, 5}}, {2, false, {128, 256, 64, 2, 8, 3}}});
}
TEST_F(RouterGemmBwdTmaConfigs, PersistentDxTiles) {
  check(17000, 1536, 64, {{0, true, {64, 256, 64, 2, 1, 5}}, {1, true, {64, 256, 64, 2, 1, 4}}});
}
// The bf16(g) dx (precision standard's) with 128-token units (its g rows loaded in two batches) and with w
// multicast to clusters of 2; hi + lo with 128-token units.
TEST_F(RouterGemmBwdTmaConfigs, Bf16gDxWide) {
  check(777, 1536, 160, {{2, true, {128, 256, 64, 2, 1, 3}}, {2, true, {64, 256, 64, 2, 2, 5}},
                         {1, true, {128, 256, 64, 2, 1, 2}}});
}

// The backward in one launch (variant 3: the dw role, then the dx role, in every CTA; the op's default at precision
// standard where it fits), precision standard: the same partition and the same kernels' bodies as the two-kernel op
// (variant 2), so dx and dw equal its bits — at the issue's shape, with a caller's workspace, with several dx tiles a CTA (T = 17000 over 48 CTAs), a partial expert
// tile and partial column blocks (E = 160, K = 1536), one token, one range per tile (T = 64), K = 7168 (56 CTAs), and
// with clusters of 1 (8 range partials stored from the registers). Both against the fp64 reference too. `runs`:
// (variant, kRgOne* measurement switches) of the one launch.
struct OneLaunchChecks : RouterGemmTest {
  static void equals_two_kernels(const std::vector<std::pair<int, int>>& runs);
};
void OneLaunchChecks::equals_two_kernels(const std::vector<std::pair<int, int>>& runs) {
  struct Case {
    Shape sh;
    bool user_ws;
    detail::RouterGemmConfig cfg;  // bm = 0: the default
  };
  const detail::RouterGemmConfig dflt{};
  for (const Case& c : {Case{{8192, 2048, 256}, true, dflt}, Case{{17000, 1536, 64}, false, dflt},
                        Case{{777, 1536, 160}, false, dflt}, Case{{1, 2048, 256}, false, dflt},
                        Case{{64, 2048, 256}, true, dflt}, Case{{4096, 7168, 256}, false, dflt},
                        Case{{2000, 2048, 256}, false, {64, 256, 64, 1, 8, 3}}}) {
    const auto [T, K, E] = c.sh;
    const uint64_t seed = mix_seed({0xd1, static_cast<uint64_t>(T), static_cast<uint64_t>(K), static_cast<uint64_t>(E)});
    const auto [x, w] = bf16_xw(T, K, E, mix_seed({seed, 1}), mix_seed({seed, 2}));
    const std::vector<float> g = randn(T * E, mix_seed({seed, 3}), 1e-4f);
    const BwdRef want(g, x, w, T, K, E);
    const Bwd two = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, /*variant=*/2, /*precision=*/4);
    std::optional<Bwd> sbs;  // (the op's default where it runs the two kernels side by side: fewer T ranges)
    for (auto [variant, om] : runs) {
      if (variant < 0 && c.cfg[0]) continue;
      SCOPED_TRACE("variant " + std::to_string(variant) + " measure " + std::to_string(om) + " T=" +
                   std::to_string(T) + " K=" + std::to_string(K) + " E=" + std::to_string(E) +
                   (c.cfg[0] ? " config " + fmt_config(c.cfg) : std::string()));
      detail::router_gemm_bwd_one_measure.store(om);
      const Bwd one = run_bwd(g, x, w, T, K, E, true, true, c.cfg[0] ? &c.cfg : nullptr, nullptr, c.user_ws, variant,
                              /*precision=*/4);
      detail::router_gemm_bwd_one_measure.store(0);
      EXPECT_TRUE(one.guards_ok) << "written outside dx, dw or the workspace";
      if (c.cfg[0]) {  // another T partition than the two-kernel default: the reference only
        EXPECT_TRUE(want.check_dx(one.dx, 4));
        EXPECT_TRUE(want.check_dw(one.dw, 4));
        EXPECT_TRUE(bitwise_equal("dx (one launch vs two kernels)", one.dx, two.dx));
        continue;
      }
      EXPECT_TRUE(bitwise_equal("dx (one launch vs two kernels)", one.dx, two.dx));
      if (variant < 0 && one.dw != two.dw) {  // the default: one launch, two kernels or side by side, bit for bit
        if (!sbs) sbs = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, /*variant=*/4, /*precision=*/4);
        EXPECT_TRUE(bitwise_equal("dw (the default vs side by side)", one.dw, sbs->dw));
      } else {
        EXPECT_TRUE(bitwise_equal("dw (one launch vs two kernels)", one.dw, two.dw));
      }
      EXPECT_TRUE(want.check_dx(one.dx, 4));
      EXPECT_TRUE(want.check_dw(one.dw, 4));
    }
  }
}
// (-1: the op's default — the one launch where it fits, else the two kernels)
TEST_F(RouterGemmTest, BwdOneLaunchEqualsTwoKernels) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  OneLaunchChecks::equals_two_kernels({{3, 0}, {-1, 0}});
}
// The one launch without its default option (kRgOneExplicit with none: session 9's path, the A/B's reference).
TEST_F(RouterGemmTest, BwdOneLaunchCandidatesEqualTwoKernels) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const int x = kRgOneExplicit;
  OneLaunchChecks::equals_two_kernels({{3, x}});
}

// The two kernels side by side (variant 4, opt-in; detail::router_gemm_side_by_side_plan): the dx kernel on fewer CTAs,
// the dw kernel beside it on whole T ranges of its tiles. dx is the two kernels' bit for bit (the same tiles on fewer
// CTAs); dw sums other T ranges than the two kernels' default, so it is checked against the fp64 reference. Shapes: the
// issue's, several dx tiles a CTA with partial expert and column tiles (T = 17000, K = 1536, E = 160), one token,
// K = 7168 (one range beside dx), E = 64 (clusters of 1); precisions standard, high and tf32; with a caller's
// workspace. (Where no split applies, variant 4 is variant 2: the plan's CPU test covers where that is.)
TEST_F(RouterGemmTest, BwdSideBySideEqualsTwoKernels) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  for (const Shape& sh : {Shape{8192, 2048, 256}, Shape{17000, 1536, 160}, Shape{1, 2048, 256}, Shape{4096, 7168, 256},
                          Shape{3000, 2048, 64}}) {
    const auto [T, K, E] = sh;
    const uint64_t seed = mix_seed({0x5b5, static_cast<uint64_t>(T), static_cast<uint64_t>(K), static_cast<uint64_t>(E)});
    const auto [x, w] = bf16_xw(T, K, E, mix_seed({seed, 1}), mix_seed({seed, 2}));
    const std::vector<float> g = randn(T * E, mix_seed({seed, 3}), 1e-4f);
    const BwdRef want(g, x, w, T, K, E);
    for (int precision : {4, 1, 0}) {
      SCOPED_TRACE("T=" + std::to_string(T) + " K=" + std::to_string(K) + " E=" + std::to_string(E) + " precision " +
                   std::to_string(precision));
      const Bwd two = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, /*variant=*/2, precision);
      const Bwd sbs = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, /*user_workspace=*/precision != 1,
                              /*variant=*/4, precision);
      EXPECT_TRUE(sbs.guards_ok) << "written outside dx, dw or the workspace";
      EXPECT_TRUE(bitwise_equal("dx (side by side vs two kernels)", sbs.dx, two.dx));
      EXPECT_TRUE(want.check_dx(sbs.dx, precision));
      EXPECT_TRUE(want.check_dw(sbs.dw, precision));
    }
  }
}

// The dx kernel's column parts (session 25: a token tile cut into parts of its 256-column blocks where the tiles alone
// leave CTAs idle): dx alone (every SM: the most parts) equals the one launch's dx (one part a tile) bit for bit, and
// every dx config — clusters of 2 and 4 sharing w, 128-token units — and precision is within its bound of fp64, at
// token counts that give 1 … 28 parts (T = 1: every block its own unit; K = 7168: 28 blocks; K = 1536, E = 160).
// The balanced ranges of (tile, block) pairs (session 26's measurement mode) too, on every SM, 52 and 7 CTAs.
TEST_F(RouterGemmTest, BwdDxColumnParts) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  using C = detail::RouterGemmConfig;
  static const C cm2{64, 256, 64, 2, 2, 5}, cm4{64, 256, 64, 2, 4, 5}, tm128{128, 256, 64, 2, 1, 3};
  for (const Shape& sh : {Shape{1, 2048, 256}, Shape{64, 2048, 256}, Shape{777, 2048, 256}, Shape{1000, 7168, 256},
                          Shape{300, 1536, 160}, Shape{2500, 2048, 64}}) {
    const auto [T, K, E] = sh;
    SCOPED_TRACE("T=" + std::to_string(T) + " K=" + std::to_string(K) + " E=" + std::to_string(E));
    const uint64_t seed = mix_seed({0xc07, static_cast<uint64_t>(T), static_cast<uint64_t>(K), static_cast<uint64_t>(E)});
    const auto [x, w] = bf16_xw(T, K, E, mix_seed({seed, 1}), mix_seed({seed, 2}));
    const std::vector<float> g = randn(T * E, mix_seed({seed, 3}), 1e-4f);
    const BwdRef want(g, x, w, T, K, E);
    const Bwd one = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, /*variant=*/3, /*precision=*/4);
    const Bwd dx = run_bwd(g, x, w, T, K, E, true, false, nullptr, nullptr, false, /*variant=*/2, /*precision=*/4);
    EXPECT_TRUE(dx.guards_ok) << "written outside dx";
    EXPECT_TRUE(bitwise_equal("dx (column parts vs the one launch's tiles)", dx.dx, one.dx));
    EXPECT_TRUE(want.check_dx(dx.dx, 4));
    for (const C* c : {&cm2, &cm4, &tm128}) {
      SCOPED_TRACE(fmt_config(*c));
      const Bwd b = run_bwd(g, x, w, T, K, E, true, false, c, nullptr, false, 2, 4);
      EXPECT_TRUE(b.guards_ok);
      EXPECT_TRUE(bitwise_equal("dx (a config's parts vs the one launch's tiles)", b.dx, one.dx));
    }
    // Balanced ranges of (tile, column block) pairs (session 26; measurement hook −1) on every SM, 52 and 7 CTAs.
    for (const int ctas : {0, 52, 7})
      for (const C* c : {static_cast<const C*>(nullptr), &cm2, &cm4, &tm128}) {
        SCOPED_TRACE("ranges on " + std::to_string(ctas) + " CTAs, " + (c ? fmt_config(*c) : std::string("default")));
        detail::router_gemm_dx_parts_force.store(-1);
        detail::router_gemm_dx_ctas.store(ctas);
        const Bwd b = run_bwd(g, x, w, T, K, E, true, false, c, nullptr, false, 2, 4);
        detail::router_gemm_dx_parts_force.store(0);
        detail::router_gemm_dx_ctas.store(0);
        EXPECT_TRUE(b.guards_ok);
        EXPECT_TRUE(bitwise_equal("dx (balanced ranges vs the one launch's tiles)", b.dx, one.dx));
      }
    for (int precision : {1, 0}) {
      SCOPED_TRACE("precision " + std::to_string(precision));
      const Bwd b = run_bwd(g, x, w, T, K, E, true, false, nullptr, nullptr, false, 2, precision);
      EXPECT_TRUE(b.guards_ok);
      EXPECT_TRUE(want.check_dx(b.dx, precision));
    }
  }
}

// The one-launch backward's misuse: another precision than standard is refused naming the variant.
TEST_F(RouterGemmTest, BwdOneLaunchNeedsStandard) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const int64_t T = 64, K = 2048, E = 256;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xd5}), mix_seed({0xd6}));
  const std::vector<float> g = randn(T * E, mix_seed({0xd7}), 1e-4f);
  EXPECT_THROW_NAMING(run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, 3, /*precision=*/1),
                      "variant", InvalidArgument);
}

// The backward's buffers at a shape (by default the issue's, 8192 × 2048 → 256): g, x, w from the seeds, dx, dw and
// the advertised workspace (at least 16 partials).
struct BwdIssueBuffers {
  int64_t T, K, E;
  int64_t ws_elems;
  DeviceBuffer gb, xb, wb, dxb, dwb, wsb;
  BwdIssueBuffers(Runtime& r, uint64_t s0, uint64_t s1, uint64_t s2, Shape sh = {8192, 2048, 256})
      : T(sh.T), K(sh.K), E(sh.E),
        ws_elems(std::max<int64_t>(router_gemm_fp32_bwd_workspace_elems(r, T, K, E), 16 * E * K)),
        dxb(r, T * K * 2), dwb(r, E * K * 4), wsb(r, ws_elems * 4) {
    const auto [x, w] = bf16_xw(T, K, E, s0, s1);
    gb = upload(r, DType::f32, randn(T * E, s2, 1e-4f));
    xb = upload(r, DType::bf16, x);
    wb = upload(r, DType::bf16, w);
  }
};

// Per-CTA timeline of the TMA backward at 8192 × 2048 → 256, precision standard (measurement; prints): one traced
// call after an L2 flush per mode, dx and dw stamps on one time base (µs after the first dx CTA's entry). dx: entry,
// the producer's first TMA, A tile ready, last stage landed, MMAs done, last store issued, stores read out, exit;
// dw: entry, first TMA, first / last stage landed, MMAs done, epilogue done, after the last cluster barrier, exit.
// The traced outputs must equal the untraced ones bit for bit. Modes: side by side (variant 4, the default here since
// session 25; added in session 27), the two kernels (variant 2) and the one-launch
// kernel (variant 3) with its default option and without it (session 9's path). Session 10 added per-block dx stamps
// (a block's first stage landed, its MMAs done) and dw's staging cluster barrier (bench/NOTES.md).
TEST_F(RouterGemmTest, BwdTmaTimeline) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  Runtime& r = rt();
  BwdIssueBuffers bufs(r, mix_seed({0xb1}), mix_seed({0xb2}), mix_seed({0xb3}));
  const int64_t T = bufs.T, K = bufs.K, E = bufs.E;
  DeviceBuffer &gb = bufs.gb, &xb = bufs.xb, &wb = bufs.wb, &dxb = bufs.dxb, &dwb = bufs.dwb, &wsb = bufs.wsb;
  const int64_t ws_elems = bufs.ws_elems;
  const size_t slots = 2 * static_cast<size_t>(kRgTraceBwdDwOffset);
  DeviceBuffer tb(r, slots * 8);
  detail::L2Flusher l2(r, nullptr);
  const detail::RouterGemmConfig* cdw = nullptr;
  int variant = 2;
  auto call = [&](const detail::RouterGemmConfig* cdx) {
    detail::router_gemm_fp32_bwd_config(r, gb.ref(DType::f32, {T, E}), xb.ref(DType::bf16, {T, K}),
                                        wb.ref(DType::bf16, {E, K}), dxb.ref(DType::bf16, {T, K}),
                                        dwb.ref(DType::f32, {E, K}), wsb.ref(DType::f32, {ws_elems}), variant, 4, cdx,
                                        cdw, nullptr);
  };
  struct Mode {
    const char* name;
    detail::RouterGemmConfig dx, dw;  // bm = 0: the default
    int variant = 2;                  // 3: one launch (dw then dx; the dx stamps are its CTAs')
    int om = 0;                       // kRgOne* (measurement switches of the one launch)
  };
  const int ex = kRgOneExplicit;
  for (const Mode m : {Mode{"side by side (the default at this shape)", {}, {}, 4}, Mode{"two kernels", {}, {}},
                       Mode{"one launch (default: w prefetched near dw's end)", {}, {}, 3},
                       Mode{"one launch, session 9's path (no options)", {}, {}, 3, ex},
                       Mode{"one launch (default) again", {}, {}, 3}}) {
    SCOPED_TRACE(m.name);
    variant = m.variant;
    const detail::RouterGemmConfig* cdx = m.dx[0] ? &m.dx : nullptr;
    cdw = m.dw[0] ? &m.dw : nullptr;
    detail::router_gemm_bwd_one_measure.store(m.om);
    call(cdx);
    synchronize();
    const std::vector<uint16_t> dx0 = dxb.download<uint16_t>(T * K);
    const std::vector<float> dw0 = dwb.download<float>(E * K);
    tb.fill(0);
    l2.flush(nullptr);
    detail::router_gemm_trace.store(static_cast<unsigned long long*>(tb.data()));
    call(cdx);
    synchronize();
    detail::router_gemm_trace.store(nullptr);
    detail::router_gemm_bwd_one_measure.store(0);
    EXPECT_TRUE(dxb.download<uint16_t>(T * K) == dx0) << "traced dx differs";
    EXPECT_TRUE(bitwise_equal("traced dw", dwb.download<float>(E * K), dw0));
    const std::vector<uint64_t> tr = tb.download<uint64_t>(slots);
    auto at = [&](size_t base, int c, int slot) { return tr[base + static_cast<size_t>(c) * kRgTraceSlots + slot]; };
    // SM clock (cycles per ns): the median over both kernels' CTAs of clock span / globaltimer span.
    std::vector<double> rate;
    uint64_t t0 = ~0ull;
    int n[2] = {0, 0};
    for (int k = 0; k < 2; ++k) {
      const size_t b = k * static_cast<size_t>(kRgTraceBwdDwOffset);
      while (n[k] < 1024 && at(b, n[k], kRgTraceStartNs) != 0) ++n[k];
      for (int c = 0; c < n[k]; ++c) {
        const uint64_t gs = at(b, c, kRgTraceStartNs), ge = at(b, c, kRgTraceEndNs);
        const uint64_t cs = at(b, c, kRgTraceStartClk), ce = at(b, c, kRgTraceWg0 + kRgTraceFenced);
        if (ge > gs && ce > cs) rate.push_back(static_cast<double>(ce - cs) / static_cast<double>(ge - gs));
        if (k == 0) t0 = std::min(t0, gs);
      }
    }
    ASSERT_GT(n[0], 0);
    ASSERT_GT(n[1], 0);
    ASSERT_FALSE(rate.empty());
    std::sort(rate.begin(), rate.end());
    const double ghz = rate[rate.size() / 2];
    std::printf("[bwd timeline] %s: dx %d CTAs, dw %d CTAs, SM clock %.3f GHz; µs after the first dx CTA entry "
                "(min / p10 / p50 / p90 / max)\n", m.name, n[0], n[1], ghz);
    const char* names[2][8] = {{"entry", "first tma", "A ready", "last full", "mma done", "last store", "stores read",
                                "exit"},
                               {"entry", "first tma", "first full", "last full", "mma done", "epilogue", "cluster bar",
                                "exit"}};
    for (int k = 0; k < 2; ++k) {
      const size_t b = k * static_cast<size_t>(kRgTraceBwdDwOffset);
      std::vector<std::vector<double>> col(8);
      for (int c = 0; c < n[k]; ++c) {
        const double st = (static_cast<double>(at(b, c, kRgTraceStartNs)) - static_cast<double>(t0)) / 1000.0;
        auto rel = [&](uint64_t clk) {
          return clk ? st + (static_cast<double>(clk) - at(b, c, kRgTraceStartClk)) / ghz / 1000.0 : -1.0;
        };
        col[0].push_back(st);
        col[1].push_back(rel(at(b, c, kRgTraceProducerFirst)));
        for (int q = 0; q < 5; ++q) col[2 + q].push_back(rel(at(b, c, kRgTraceWg0 + q)));
        col[7].push_back((static_cast<double>(at(b, c, kRgTraceEndNs)) - static_cast<double>(t0)) / 1000.0);
        EXPECT_LE(at(b, c, kRgTraceStartClk), at(b, c, kRgTraceProducerFirst)) << (k ? "dw" : "dx") << " CTA " << c;
        EXPECT_LE(at(b, c, kRgTraceWg0 + kRgTraceLastFull), at(b, c, kRgTraceWg0 + kRgTraceMmaDone))
            << (k ? "dw" : "dx") << " CTA " << c;
      }
      std::printf("  %s\n", k ? "dw" : "dx");
      if (k == 1 && at(b, 0, kRgTraceWg0 + kRgTraceWgSlots) != 0) {  // the one-launch kernel's in-kernel group sum
        std::vector<double> v;
        for (int c = 0; c < n[k]; ++c) {
          const double st = (static_cast<double>(at(b, c, kRgTraceStartNs)) - static_cast<double>(t0)) / 1000.0;
          v.push_back(st + (static_cast<double>(at(b, c, kRgTraceWg0 + kRgTraceWgSlots)) - at(b, c, kRgTraceStartClk)) /
                               ghz / 1000.0);
        }
        std::sort(v.begin(), v.end());
        auto qq = [&](double p) { return v[static_cast<size_t>(p * (v.size() - 1) + 0.5)]; };
        std::printf("    %-12s %7.2f %7.2f %7.2f %7.2f %7.2f\n", "groups sum", v.front(), qq(0.1), qq(0.5), qq(0.9),
                    v.back());
      }
      for (int q = 0; q < 8; ++q) {
        std::vector<double> v = col[q];
        std::sort(v.begin(), v.end());
        auto qq = [&](double p) { return v[static_cast<size_t>(p * (v.size() - 1) + 0.5)]; };
        std::printf("    %-12s %7.2f %7.2f %7.2f %7.2f %7.2f\n", names[k][q], v.front(), qq(0.1), qq(0.5), qq(0.9),
                    v.back());
      }
      // Session 10: the dw epilogue's staging cluster barrier; dx's column blocks one by one (first stage landed,
      // MMAs done) — where a block's time goes.
      auto stamp_row = [&](const char* name, int slot) {
        std::vector<double> v;
        for (int c = 0; c < n[k]; ++c) {
          const uint64_t clk = at(b, c, slot);
          if (clk == 0) continue;
          const double st = (static_cast<double>(at(b, c, kRgTraceStartNs)) - static_cast<double>(t0)) / 1000.0;
          v.push_back(st + (static_cast<double>(clk) - at(b, c, kRgTraceStartClk)) / ghz / 1000.0);
        }
        if (v.empty()) return;
        std::sort(v.begin(), v.end());
        auto qq = [&](double p) { return v[static_cast<size_t>(p * (v.size() - 1) + 0.5)]; };
        std::printf("    %-12s %7.2f %7.2f %7.2f %7.2f %7.2f\n", name, v.front(), qq(0.1), qq(0.5), qq(0.9), v.back());
      };
      if (k == 1) stamp_row("staged+sync", static_cast<int>(kRgTraceWg0) + kRgTraceDwStaged);
      if (k == 0 && n[0] <= 512)
        for (int blk = 0; blk < 8; ++blk) {
          const std::string f = "blk" + std::to_string(blk) + " full", d = "blk" + std::to_string(blk) + " mma";
          stamp_row(f.c_str(), kRgTraceDxBlocks + 2 * blk);
          stamp_row(d.c_str(), kRgTraceDxBlocks + 2 * blk + 1);
        }
    }
    std::fflush(stdout);  // (a later mode's fault leaves this one's lines)
  }
}

// The configs the backward's A/Bs force (measurement): dx at 64-token tiles (its default: no multicast, 5 stages; with
// w multicast to clusters of 2 or 4 — clusters of 2 are side by side's default since session 27) and 128-token units
// (3 stages, staged); dw's T ranges in clusters of 2 (4 or 6 ranges), of 1 (5 ranges) or all 4 in one cluster of 4
// (side by side's default since session 27).
const detail::RouterGemmConfig dx64{64, 256, 64, 2, 1, 5}, dx128{128, 256, 64, 2, 1, 3}, dx64c2{64, 256, 64, 2, 2, 5},
    dx64c4{64, 256, 64, 2, 4, 5};
const detail::RouterGemmConfig dw4c2{128, 256, 64, 2, 4, 3}, dw5c1{128, 256, 64, 1, 5, 3}, dw6c2{128, 256, 64, 2, 6, 3},
    dw4c4{128, 256, 64, 4, 4, 3};

// Measurement (prints; checks that the options that keep the sums give the default's bits): session 10 — why the one
// launch's dx role runs its column blocks ≈ 40 % slower after the dw role than the dx kernel at the start of a launch,
// and the candidates. Call by call round-robin (L2 flushed before every call) at 8192 × 2048 → 256, precision
// standard. Ablations (BwdOneLaunchAB): the one launch with its dx role storing nothing / loading no w, its dw role as
// a skeleton (no loads, MMAs, stores: the dx role as at a launch's start, in the same kernel) or storing nothing, x
// without evict-first; dx and dw alone. The default option (BwdOneLaunchCandidatesAB, 80 rounds, paired per round):
// w prefetched into L2 near dw's end against session 9's path (no options) and the two kernels. (Measured in session 10
// and removed: the dx tile's g rows preloaded under dw's epilogue, the early dx start, the partials discarded from L2
// once summed, dw's ranges in clusters of 1, a grid-wide wait before the dx role: bench/NOTES.md.) Two tests, each
// with the baselines, so that a fault in one leaves the other's numbers.
struct OneLaunchAB : RouterGemmTest {
  struct Opt {
    const char* name;
    int variant, flags, om;
    bool dx, dw, same_bits;
    const detail::RouterGemmConfig* cfg = nullptr;  // a forced config (the one launch's or the dx kernel's)
    const detail::RouterGemmConfig* dwcfg = nullptr;  // the dw kernel's forced config (variant 2)
    int dx_ctas = 0;       // detail::router_gemm_dx_ctas (variant 2: dx on that many CTAs, dw beside it)
    bool dx_bits = false;  // dx equal to option 0's bit for bit, dw within 4·√T·2⁻²⁴ (relative L2; other T ranges)
    int dx_parts = 0;      // detail::router_gemm_dx_parts_force (the dx kernel's column parts; 0: its policy)
  };
  // `tag` prefixes every printed line (the shape, where a test runs several).
  static void run(const std::vector<Opt>& opts, int rounds = 24, size_t ref = 0, Shape sh = {8192, 2048, 256},
                  const std::string& tag = "");
};
void OneLaunchAB::run(const std::vector<Opt>& opts, int rounds, size_t ref, Shape sh, const std::string& tag) {
  Runtime& r = rt();
  BwdIssueBuffers bufs(r, mix_seed({0xbb1}), mix_seed({0xbb2}), mix_seed({0xbb3}), sh);
  const int64_t T = bufs.T, K = bufs.K, E = bufs.E;
  DeviceBuffer &gb = bufs.gb, &xb = bufs.xb, &wb = bufs.wb, &dxb = bufs.dxb, &dwb = bufs.dwb, &wsb = bufs.wsb;
  const int64_t ws_elems = bufs.ws_elems;
  auto call = [&](const Opt& o) {
    detail::router_gemm_measure_flags.store(o.flags);
    detail::router_gemm_bwd_one_measure.store(o.om);
    detail::router_gemm_dx_ctas.store(o.dx_ctas);
    detail::router_gemm_dx_parts_force.store(o.dx_parts);
    detail::router_gemm_fp32_bwd_config(r, gb.ref(DType::f32, {T, E}), xb.ref(DType::bf16, {T, K}),
                                        wb.ref(DType::bf16, {E, K}), o.dx ? dxb.ref(DType::bf16, {T, K}) : TensorRef{},
                                        o.dw ? dwb.ref(DType::f32, {E, K}) : TensorRef{},
                                        wsb.ref(DType::f32, {ws_elems}), o.variant, 4, o.cfg, o.dwcfg, nullptr);
    detail::router_gemm_measure_flags.store(0);
    detail::router_gemm_bwd_one_measure.store(0);
    detail::router_gemm_dx_ctas.store(0);
    detail::router_gemm_dx_parts_force.store(0);
  };
  call(opts[0]);
  synchronize();
  const std::vector<uint16_t> dx0 = dxb.download<uint16_t>(T * K);
  const std::vector<float> dw0 = dwb.download<float>(E * K);
  for (const Opt& o : opts) {  // compiles every kernel outside the timing; one at a time (a hang names its option)
    std::printf("[bwd ab] %sfirst call: %s\n", tag.c_str(), o.name);
    std::fflush(stdout);
    call(o);
    synchronize();
  }
  detail::L2Flusher l2(r, nullptr);
  std::vector<std::vector<double>> us(opts.size());
  for (int i = 0; i < rounds; ++i)
    for (size_t k = 0; k < opts.size(); ++k) {
      const size_t j = i % 2 == 0 ? k : opts.size() - 1 - k;  // forward and backward order in turn
      us[j].push_back(timed_once(l2, [&] { call(opts[j]); }));
    }
  // Per option: the median, p10, p90 of its calls, and paired against option 0 (the default) and option `ref` in the
  // same rounds: the median of the per-round differences and the share of rounds in which the option was faster.
  auto paired = [&](size_t k, size_t r0, double& dmed, double& win) {
    const PairedDiff pd = paired_diff(us[r0], us[k]);
    dmed = detail::median(pd.d);
    win = static_cast<double>(pd.wins) / pd.d.size();
  };
  for (size_t k = 0; k < opts.size(); ++k) {
    std::vector<double> v = us[k];
    std::sort(v.begin(), v.end());
    double d0, w0, dr, wr;
    paired(k, 0, d0, w0);
    paired(k, ref, dr, wr);
    std::printf("[bwd ab] %s%-50s median %.2f p10 %.2f p90 %.2f | vs 0 %+.2f (faster in %.0f %%) | vs %zu %+.2f "
                "(%.0f %%)\n",
                tag.c_str(), opts[k].name, detail::median(v), v[v.size() / 10], v[v.size() * 9 / 10], d0, 100 * w0, ref, dr,
                100 * wr);
  }
  for (const Opt& o : opts) {
    if (!o.same_bits && !o.dx_bits) continue;
    SCOPED_TRACE(o.name);
    dxb.fill(0);
    dwb.fill(0);
    call(o);
    synchronize();
    EXPECT_TRUE(dxb.download<uint16_t>(T * K) == dx0) << "dx differs";
    if (!o.dw) continue;  // (dx alone)
    const std::vector<float> dw1 = dwb.download<float>(E * K);
    if (o.same_bits) {
      EXPECT_TRUE(bitwise_equal("dw", dw1, dw0));
    } else {
      double num = 0, den = 0;
      for (size_t i = 0; i < dw0.size(); ++i) {
        num += (static_cast<double>(dw1[i]) - dw0[i]) * (static_cast<double>(dw1[i]) - dw0[i]);
        den += static_cast<double>(dw0[i]) * dw0[i];
      }
      // (each dw element sums T products in fp32: another partition of the sum moves it by ≈ √T·2⁻²⁴ of its
      // magnitude; measured: 1.9–2.8e-6 at T = 8192 for 6, 5 and 4 ranges against 8 (session 24), 1.0e-5 at T = 7168
      // for one range against two (session 25))
      EXPECT_LE(std::sqrt(num / std::max(den, 1e-300)), 4 * std::sqrt(static_cast<double>(T)) * 0x1p-24)
          << "dw (other T ranges) against option 0's";
    }
  }
}
// The ablations (which part of the dx role after dw is slow).
TEST_F(RouterGemmTest, BwdOneLaunchAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  OneLaunchAB::run({{"one launch", 3, 0, 0, true, true, true},
                    {"two kernels", 2, 0, 0, true, true, true},
                    {"one launch, dx role stores nothing", 3, 0, kRgOneDxNoStore, true, true, false},
                    {"one launch, dx role loads no w", 3, 0, kRgOneDxNoLoad, true, true, false},
                    {"one launch, dw role skeleton", 3, 0, kRgOneDwSkeleton, true, true, false},
                    {"one launch, dw role stores nothing", 3, 0, kRgOneDwNoStore, true, true, false},
                    {"one launch, dw skeleton + dx stores nothing", 3, 0, kRgOneDwSkeleton | kRgOneDxNoStore, true,
                     true, false},
                    {"one launch, x without evict-first", 3, kRgNoXEvictFirst, 0, true, true, true},
                    {"dx kernel alone", 2, 0, 0, true, false, false},
                    {"dw kernel alone", 2, 0, 0, false, true, false},
                    {"one launch again", 3, 0, 0, true, true, true}});
}
// The candidates (opt-in until they win here).
TEST_F(RouterGemmTest, BwdOneLaunchCandidatesAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  OneLaunchAB::run({{"one launch (its default: w prefetch)", 3, 0, 0, true, true, true},
                    {"two kernels", 2, 0, 0, true, true, true},
                    {"session 9's path (no options)", 3, 0, kRgOneExplicit, true, true, true},
                    {"one launch again", 3, 0, 0, true, true, true}},
                   80, /*ref: session 9's path*/ 2);
}

// Measurement (prints; dx bit for bit and dw within 4·√T·2⁻²⁴ of the one launch's): session 24 — the two kernels
// side by side (the op's default at this shape since session 25: variant 4).
// The dx kernel takes only `dx_ctas` CTAs (persistent over its units) and the dw kernel, launched behind it with PDL,
// starts at once on the SMs left over, with `ranges` T ranges (16 tiles each at K = 2048, E = 256) in clusters of 2 or
// 1; dx in 64-token tiles or 128-token units (half the columns each: half of w's L2 reads). Session 6 measured the same
// split inside one kernel with 64-token tiles only (dx starved of L2 bandwidth on 36–52 SMs: 78 µs).
TEST_F(RouterGemmTest, BwdSideBySideAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  OneLaunchAB::run({{"one launch", 3, 0, 0, true, true, true},
                    {"two kernels", 2, 0, 0, true, true, false, nullptr, nullptr, 0, true},
                    {"dx 36 CTAs x 64 tok | dw 6 ranges c2 (96)", 2, 0, 0, true, true, false, &dx64, &dw6c2, 36, true},
                    {"dx 36 CTAs x 128 tok | dw 6 ranges c2 (96)", 2, 0, 0, true, true, false, &dx128, &dw6c2, 36, true},
                    {"dx 52 CTAs x 64 tok | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx64, &dw5c1, 52, true},
                    {"dx 52 CTAs x 128 tok | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx128, &dw5c1, 52, true},
                    {"dx 44 CTAs x 128 tok | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx128, &dw5c1, 44, true},
                    {"dx 64 CTAs x 64 tok | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx64, &dw4c2, 64, true},
                    {"dx 64 CTAs x 128 tok | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx128, &dw4c2, 64, true},
                    {"variant 4 (the op's side-by-side plan)", 4, 0, 0, true, true, false, nullptr, nullptr, 0, true},
                    {"dw 5 ranges c1 alone (80)", 2, 0, 0, false, true, false, nullptr, &dw5c1},
                    {"dx 52 CTAs x 128 tok alone", 2, 0, 0, true, false, false, &dx128, nullptr, 52},
                    {"one launch again", 3, 0, 0, true, true, true}});
}

// Measurement (prints; dx bit for bit and dw within 4·√T·2⁻²⁴ of the op's default's), written in session 25 for
// session 26: side by side with dx's token tiles cut into more column parts than fit its CTAs once, so that the CTAs' shares of dx
// even out and dw can take more SMs. At 8192 × 2048 → 256 the default gives dw 4 ranges (64 CTAs) and dx 68 CTAs for
// 128 tiles (60 CTAs take two, 8 one). dw alone on 5 ranges (80 CTAs, clusters of 1) took 45.5 µs in session 24, and
// dx on 52 CTAs 3 tiles' time (54.8 µs); cut in 2 parts, 256 half-tiles on 52 CTAs are 2.5 tiles a CTA (≈ 45 µs at
// session 24's ≈ 18 µs a tile, before the extra g conversions: every part converts its tile's g rows). Prediction:
// dx 52 × 2 parts | dw 80 ≈ 47–50 µs against the default's 55.3, if dx's per-SM rate holds beside dw on 80 SMs.
TEST_F(RouterGemmTest, BwdSideBySideBalanceAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  OneLaunchAB::run({{"side by side (op default)", -1, 0, 0, true, true, true},
                    {"dx 68 p2 | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx64, &dw4c2, 68, true, 2},
                    {"dx 52 p1 | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx64, &dw5c1, 52, true, 1},
                    {"dx 52 p2 | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx64, &dw5c1, 52, true, 2},
                    {"dx 52 p4 | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx64, &dw5c1, 52, true, 4},
                    {"dx 52 p8 | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx64, &dw5c1, 52, true, 8},
                    {"dx 36 p4 | dw 6 ranges c2 (96)", 2, 0, 0, true, true, false, &dx64, &dw6c2, 36, true, 4},
                    {"dx 36 p8 | dw 6 ranges c2 (96)", 2, 0, 0, true, true, false, &dx64, &dw6c2, 36, true, 8},
                    {"side by side (op default) again", -1, 0, 0, true, true, true}});
}

// Measurement (prints; no checks: the ablations' outputs are garbage), written in session 26: the dx kernel alone at
// 8192 × 2048 → 256 on every SM, 64-token tiles (the default) against 128-token units × 2 column parts, each with
// its stores, w loads and MMAs taken away (kRgSkipStore / kRgSkipLoad / kRgSkipMma) — which of them bounds a unit.
// Session 25's per-unit times: ≈ 18 µs a 64-token tile of all 2048 columns, ≈ 17.7 a 128-token half-width unit
// (the same MMA work, half the w bytes landing per SM).
TEST_F(RouterGemmTest, BwdDxAloneAblationAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const int S = kRgSkipStore, L = kRgSkipLoad, M = kRgSkipMma;
  std::vector<OneLaunchAB::Opt> opts;
  for (const auto& [cfg, tag, parts] : {std::tuple{&dx64, "64 tok", 0}, std::tuple{&dx128, "128 tok p2", 0},
                                        std::tuple{&dx128, "128 tok p1 (64 CTAs)", 1}})
    for (const auto& [flags, what] : {std::pair{0, ""}, std::pair{S, " nostore"}, std::pair{L, " noload"},
                                      std::pair{M, " nomma"}, std::pair{L | M, " noload+nomma"},
                                      std::pair{L | M | S, " g conversion only"}}) {
      static std::deque<std::string> names;  // (the options keep pointers into it: a deque never moves them)
      names.push_back(std::string("dx alone ") + tag + what);
      opts.push_back({names.back().c_str(), 2, flags, 0, true, false, false, cfg, nullptr, 0, false, parts});
    }
  OneLaunchAB::run(opts, ab_rounds());
}

// Measurement (prints; dx bit for bit and dw within 4·√T·2⁻²⁴ of the op's default's), written in session 26: the dx
// kernel's register prefetch of the next unit's g rows (under the current unit's last block) against none
// (kRgNoGPrefetch), side by side at the op's split and at dw 5 ranges (80 CTAs) | dx 52 in 2 and 4 column parts, and
// dx alone on 52 CTAs. Prediction (session 25's balance A/B: ≈ 1.8 µs a unit's g conversion, 5 units a CTA at
// 52 × 2 parts): dx 52 p2 | dw 80 from 54.6 to ≈ 48 µs, bound by dw (45 alone on 80 CTAs).
TEST_F(RouterGemmTest, BwdDxGPrefetchAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const int N = kRgNoGPrefetch;
  OneLaunchAB::run({{"side by side (op default)", -1, 0, 0, true, true, true},
                    {"side by side, no g prefetch", -1, N, 0, true, true, true},
                    {"dx 52 p2 | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx64, &dw5c1, 52, true, 2},
                    {"dx 52 p2 | dw 5 ranges c1, no g prefetch", 2, N, 0, true, true, false, &dx64, &dw5c1, 52, true, 2},
                    {"dx 52 p4 | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx64, &dw5c1, 52, true, 4},
                    {"dx 52 p4 | dw 5 ranges c1, no g prefetch", 2, N, 0, true, true, false, &dx64, &dw5c1, 52, true, 4},
                    {"dx 36 p4 | dw 6 ranges c2 (96)", 2, 0, 0, true, true, false, &dx64, &dw6c2, 36, true, 4},
                    {"dx 52 p2 alone", 2, 0, 0, true, false, false, &dx64, nullptr, 52, false, 2},
                    {"dx 52 p2 alone, no g prefetch", 2, N, 0, true, false, false, &dx64, nullptr, 52, false, 2},
                    {"dx alone (every SM, its parts)", 2, 0, 0, true, false, false, &dx64},
                    {"dw 5 ranges c1 alone (80)", 2, 0, 0, false, true, false, nullptr, &dw5c1},
                    {"side by side (op default) again", -1, 0, 0, true, true, true}});
}

// Measurement (prints; dx bit for bit and dw within 4·√T·2⁻²⁴ of the op's default's), written in session 26: side by
// side with 128-token dx units (half the w bytes landing per token) against the op's split with 64-token units.
// Session 26 (24 rounds, with a register prefetch of the first g batch that was then removed: it changed nothing):
// op 55.8; dx128 68 × 2 parts | dw 64 55.8; dx128 52 × 2 | dw 80 59.4, × 3 59.1; dx128 52 × 2 alone 51.7 (3 units
// on the busiest CTAs: ≈ 17.2 µs a 128-token unit of 1024 columns, no faster than two 64-token units).
TEST_F(RouterGemmTest, BwdDx128SideBySideAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  OneLaunchAB::run({{"side by side (op default)", -1, 0, 0, true, true, true},
                    {"dx128 68 p2 | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx128, &dw4c2, 68, true, 2},
                    {"dx128 52 p2 | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx128, &dw5c1, 52, true, 2},
                    {"dx128 52 p3 | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx128, &dw5c1, 52, true, 3},
                    {"dx128 52 p2 alone", 2, 0, 0, true, false, false, &dx128, nullptr, 52, false, 2},
                    {"dx128 alone (every SM, 2 parts)", 2, 0, 0, true, false, false, &dx128, nullptr, 0, false, 2},
                    {"dw 4 ranges c2 alone (64)", 2, 0, 0, false, true, false, nullptr, &dw4c2},
                    {"side by side (op default) again", -1, 0, 0, true, true, true}});
}

// Profiling target (skipped unless $KILN_RG_NCU is set; run under ncu, written in session 26): at 8192 × 2048 → 256,
// each of dx alone at 64-token tiles (the default) and 128-token units × 2 parts on every SM, dw alone on 4 ranges in
// clusters of 2 (64 CTAs, its side-by-side share) and dw alone with its own grid — once to compile and warm, then
// once more each (ncu: skip the first 4 launches of router_gemm_d[xw]_tma_kernel, profile the next 4).
TEST_F(RouterGemmTest, BwdNcuTargets) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  if (!std::getenv("KILN_RG_NCU")) GTEST_SKIP() << "no $KILN_RG_NCU";
  using C = detail::RouterGemmConfig;
  Runtime& r = rt();
  BwdIssueBuffers b(r, mix_seed({0xbc1}), mix_seed({0xbc2}), mix_seed({0xbc3}));
  const int64_t T = b.T, K = b.K, E = b.E;
  struct Arm {
    const C* dx;
    const C* dw;
    int parts;
  };
  const Arm arms[] = {{&dx64, nullptr, 0}, {&dx128, nullptr, 2}, {nullptr, &dw4c2, 0}, {nullptr, nullptr, 0}};
  auto call = [&](const Arm& a, bool dw_default) {
    detail::router_gemm_dx_parts_force.store(a.parts);
    const bool want_dx = a.dx != nullptr, want_dw = a.dw != nullptr || dw_default;
    detail::router_gemm_fp32_bwd_config(r, b.gb.ref(DType::f32, {T, E}), b.xb.ref(DType::bf16, {T, K}),
                                        b.wb.ref(DType::bf16, {E, K}),
                                        want_dx ? b.dxb.ref(DType::bf16, {T, K}) : TensorRef{},
                                        want_dw ? b.dwb.ref(DType::f32, {E, K}) : TensorRef{},
                                        b.wsb.ref(DType::f32, {b.ws_elems}), 2, 4, a.dx, a.dw, nullptr);
    detail::router_gemm_dx_parts_force.store(0);
    synchronize();
  };
  for (int round = 0; round < 2; ++round)
    for (size_t i = 0; i < std::size(arms); ++i) call(arms[i], i == 3);
}

// Measurement (prints; dx bit for bit and dw within 4·√T·2⁻²⁴ of the op's default's), written in session 26 after
// ncu: dx alone at 64-token tiles keeps its tensor pipe busy 40 % of the time with L2 at 52 % of its throughput and
// no eligible warp 73 % of the cycles — latency, not bandwidth. If a CTA's w stream is bound by the bytes its ring
// keeps in flight (Little's law: 160 KiB at 5 stages, 96 KiB at the 128-token units' 3), 128-token units with 5
// stages (no staging tiles: their epilogue stores from registers) should land 640 KB a unit in ≈ 11 µs instead of
// ≈ 17, and side by side with them ≈ 47 µs (dw-bound) against 55.
TEST_F(RouterGemmTest, BwdDxStagesAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  using C = detail::RouterGemmConfig;
  static const C dx64s6{64, 256, 64, 2, 1, 6}, dx128s4{128, 256, 64, 2, 1, 4}, dx128s5{128, 256, 64, 2, 1, 5};
  OneLaunchAB::run({{"side by side (op default)", -1, 0, 0, true, true, true},
                    {"dx64 s5 alone (every SM)", 2, 0, 0, true, false, false, &dx64},
                    {"dx64 s6 (unstaged) alone", 2, 0, 0, true, false, false, &dx64s6},
                    {"dx128 s3 p2 alone (every SM)", 2, 0, 0, true, false, false, &dx128, nullptr, 0, false, 2},
                    {"dx128 s4 (unstaged) p2 alone", 2, 0, 0, true, false, false, &dx128s4, nullptr, 0, false, 2},
                    {"dx128 s5 (unstaged) p2 alone", 2, 0, 0, true, false, false, &dx128s5, nullptr, 0, false, 2},
                    {"dx64 s5 52 p2 alone", 2, 0, 0, true, false, false, &dx64, nullptr, 52, false, 2},
                    {"dx64 s6 52 p2 alone", 2, 0, 0, true, false, false, &dx64s6, nullptr, 52, false, 2},
                    {"dx128 s3 52 p2 alone", 2, 0, 0, true, false, false, &dx128, nullptr, 52, false, 2},
                    {"dx128 s5 52 p2 alone", 2, 0, 0, true, false, false, &dx128s5, nullptr, 52, false, 2},
                    {"dx128 s5 68 p2 | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx128s5, &dw4c2, 68, true, 2},
                    {"dx128 s5 52 p2 | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx128s5, &dw5c1, 52, true, 2},
                    {"dx64 s6 68 p2 | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx64s6, &dw4c2, 68, true, 2},
                    {"side by side (op default) again", -1, 0, 0, true, true, true}});
}

// Measurement (prints; no checks: the ablations' outputs are garbage), written in session 26: is the dx kernel's w
// stream bound by the bytes its ring keeps in flight (Little's law: time ∝ 1 / stages) or by a per-SM landing rate
// (time independent of stages)? dx alone at 8192 × 2048 → 256, 64-token tiles, 2 … 5 stages of 32 KiB (all staged),
// in full, without MMAs (kRgSkipMma: a stage is released as soon as it lands) and without MMAs and stores.
TEST_F(RouterGemmTest, BwdDxRingDepthAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  using C = detail::RouterGemmConfig;
  static const C cfg[] = {{64, 256, 64, 2, 1, 5}, {64, 256, 64, 2, 1, 4}, {64, 256, 64, 2, 1, 3}, {64, 256, 64, 2, 1, 2}};
  static std::deque<std::string> names;  // (the options keep pointers into it: a deque never moves them)
  std::vector<OneLaunchAB::Opt> opts;
  for (const C& c : cfg)
    for (const auto& [flags, what] : {std::pair{0, ""}, std::pair{int{kRgSkipMma}, " nomma"},
                                      std::pair{kRgSkipMma | kRgSkipStore, " nomma nostore"}}) {
      names.push_back("dx alone, " + std::to_string(c[5]) + " stages" + what);
      opts.push_back({names.back().c_str(), 2, flags, 0, true, false, false, &c});
    }
  OneLaunchAB::run(opts, ab_rounds());
}

// Measurement (prints; dx bit for bit and dw within 4·√T·2⁻²⁴ of the op's default's), written in session 26: dx
// units as balanced ranges of (tile, column block) pairs (router_gemm_dx_parts_force = −1: 1024 blocks over 52 CTAs
// are 19–20 blocks each in ≤ 4 units, against 5 half-tiles of 4 blocks = 20 blocks and 5 g conversions at 2 parts).
// Prediction: dx 52 alone 49.3 → ≈ 46 µs (fewer conversions; the ranges' first units' g rows not prefetched); beside
// dw's 5 ranges (45 alone) ≈ 50 against the op's 55.3.
TEST_F(RouterGemmTest, BwdDxRangesAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  OneLaunchAB::run({{"side by side (op default)", -1, 0, 0, true, true, true},
                    {"dx 52 p2 | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx64, &dw5c1, 52, true, 2},
                    {"dx 52 ranges | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx64, &dw5c1, 52, true, -1},
                    {"dx 68 ranges | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx64, &dw4c2, 68, true, -1},
                    {"dx 52 p2 alone", 2, 0, 0, true, false, false, &dx64, nullptr, 52, false, 2},
                    {"dx 52 ranges alone", 2, 0, 0, true, false, false, &dx64, nullptr, 52, false, -1},
                    {"dx ranges alone (every SM)", 2, 0, 0, true, false, false, &dx64, nullptr, 0, false, -1},
                    {"dx alone (every SM, its parts)", 2, 0, 0, true, false, false, &dx64},
                    {"side by side (op default) again", -1, 0, 0, true, true, true}});
}

// Measurement (prints; dx bit for bit and dw within 4·√T·2⁻²⁴ of the op's default's), written in session 26, run in
// session 27: side by side with dx's w shared by multicast in clusters of 2 or 4. Alone, multicast did not speed dx up
// (sessions 3, 5, 16: each SM lands the same bytes). Side by side, dx and dw slow each other: halving dx's L2 reads of
// w might lower the L2 latency dw sees. Prediction: 0 to −3 µs; measured −0.70 (pairs) and −0.53 (clusters of 4)
// against the op's default of then (bench/NOTES.md, session 27; the op's default has since changed).
TEST_F(RouterGemmTest, BwdSideBySideMulticastAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  OneLaunchAB::run({{"side by side (op default)", -1, 0, 0, true, true, true},
                    {"dx 68 c1 | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx64, &dw4c2, 68, true},
                    {"dx 68 c2 | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx64c2, &dw4c2, 68, true},
                    {"dx 68 c4 | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx64c4, &dw4c2, 68, true},
                    {"dx 52 c2 p2 | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx64c2, &dw5c1, 52, true, 2},
                    {"dx 52 c2 ranges | dw 5 ranges c1 (80)", 2, 0, 0, true, true, false, &dx64c2, &dw5c1, 52, true, -1},
                    {"dx 68 c2 alone", 2, 0, 0, true, false, false, &dx64c2, nullptr, 68},
                    {"dx 68 c1 alone", 2, 0, 0, true, false, false, &dx64, nullptr, 68},
                    {"side by side (op default) again", -1, 0, 0, true, true, true}});
}

// Measurement (prints; checks bits), session 27: side by side with dw's 4 T ranges in one cluster of 4 a tile (the
// DSMEM sum covers every range: no partials, no dw_reduce kernel) against clusters of 2 (two groups, dw_reduce), each
// with dx's w by multicast to clusters of 2 or not (session 27's first run: dx c2 −0.70 µs against the default, faster
// in 83 % of 24 rounds); dw alone in both forms. The risk: dw's clusters of 4 may not all find 4 free SMs of one GPC
// beside dx's CTAs. (Run once, session 27, before its winner became the op's default.)
TEST_F(RouterGemmTest, BwdSideBySideDwClusterAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  OneLaunchAB::run({{"side by side (op default)", -1, 0, 0, true, true, true},
                    {"dx 68 c1 | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx64, &dw4c2, 68, true},
                    {"dx 68 c2 | dw 4 ranges c2 (64)", 2, 0, 0, true, true, false, &dx64c2, &dw4c2, 68, true},
                    {"dx 68 c1 | dw 4 ranges c4 (64)", 2, 0, 0, true, true, false, &dx64, &dw4c4, 68, true},
                    {"dx 68 c2 | dw 4 ranges c4 (64)", 2, 0, 0, true, true, false, &dx64c2, &dw4c4, 68, true},
                    {"dw 4 ranges c2 alone", 2, 0, 0, false, true, false, nullptr, &dw4c2, 0},
                    {"dw 4 ranges c4 alone", 2, 0, 0, false, true, false, nullptr, &dw4c4, 0},
                    {"side by side (op default) again", -1, 0, 0, true, true, true}},
                   ab_rounds());
}

// The shapes of $KILN_RG_SBS_SHAPES ("TxKxE,…"), or `dflt` where it is unset: the side-by-side A/Bs' shape list.
std::vector<std::pair<std::string, Shape>> sbs_shapes(const char* dflt) {
  const char* env = std::getenv("KILN_RG_SBS_SHAPES");
  std::vector<std::pair<std::string, Shape>> out;
  for (const std::string& part : split_on(env && *env ? env : dflt, ',')) {
    Shape sh{};
    if (std::sscanf(part.c_str(), "%ldx%ldx%ld", &sh.T, &sh.K, &sh.E) != 3)
      throw std::invalid_argument("$KILN_RG_SBS_SHAPES: expected TxKxE, got " + part);
    out.emplace_back(part, sh);
  }
  return out;
}
constexpr const char* kSbsShapes = "8192x2048x256,4096x2048x256,1024x2048x256,4096x1536x160";

// Measurement (prints; checks bits), session 27: side by side as router_gemm_side_by_side_plan now arranges it where
// dw has exactly 4 ranges (one cluster of 4, dx in multicast pairs) against the kernels' own clusters
// (kRgSbsOwnClusters: dw in clusters of 2 + dw_reduce, dx without multicast), at each shape of $KILN_RG_SBS_SHAPES
// ("TxKxE,…"; default: 8192, 4096, 1024 × 2048 → 256 and 4096 × 1536 → 160). dx equal bit for bit, dw within
// 4·√T·2⁻²⁴ (another grouping of the same ranges).
TEST_F(RouterGemmTest, BwdSideBySideClustersShapesAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  for (const auto& [part, sh] : sbs_shapes(kSbsShapes)) {
    SCOPED_TRACE(part);
    OneLaunchAB::run({{"side by side (op default)", -1, 0, 0, true, true, true},
                      {"side by side, own clusters", -1, kRgSbsOwnClusters, 0, true, true, false, nullptr, nullptr, 0,
                       true},
                      {"side by side (op default) again", -1, 0, 0, true, true, true}},
                     ab_rounds(), 0, sh, part + " ");
  }
}

// Measurement (prints; checks bits), session 27: side by side with the dw kernel launched first and dx behind it by
// PDL (the default where dw is one group) against dx first (kRgSbsDxFirst) and against session 26's arrangement
// (kRgSbsOwnClusters: dx first, dw in clusters of 2 + dw_reduce), at each shape of $KILN_RG_SBS_SHAPES (default as
// BwdSideBySideClustersShapesAB). The same bits as dx first; dw within 4·√T·2⁻²⁴ of the own-clusters arm's.
TEST_F(RouterGemmTest, BwdSideBySideDwFirstShapesAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  for (const auto& [part, sh] : sbs_shapes(kSbsShapes)) {
    SCOPED_TRACE(part);
    OneLaunchAB::run({{"side by side (op default: dw first)", -1, 0, 0, true, true, true},
                      {"side by side, dx first", -1, kRgSbsDxFirst, 0, true, true, true},
                      {"side by side, own clusters (session 26)", -1, kRgSbsOwnClusters, 0, true, true, false, nullptr,
                       nullptr, 0, true},
                      {"side by side (op default) again", -1, 0, 0, true, true, true}},
                     ab_rounds(), 0, sh, part + " ");
  }
}

// Measurement (prints; checks bits), session 27: the configs around the new side-by-side default at 8192 × 2048 →
// 256 (dx 68 CTAs in multicast pairs, 5 stages | dw 4 ranges in one cluster of 4, 3 stages of 64 tokens): dx in
// clusters of 4 or with 4 stages; dw with 2 stages or 32-token chunks (5 / 6 stages).
TEST_F(RouterGemmTest, BwdSideBySideC4ConfigsAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  using C = detail::RouterGemmConfig;
  static const C dxc2s4{64, 256, 64, 2, 2, 4}, dw2{128, 256, 64, 4, 4, 2}, dw32s5{128, 256, 32, 4, 4, 5},
      dw32s6{128, 256, 32, 4, 4, 6};
  OneLaunchAB::run({{"side by side (op default)", -1, 0, 0, true, true, true},
                    {"dx c2 5st | dw c4 3st (the default, forced)", 2, 0, 0, true, true, true, &dx64c2, &dw4c4, 68, true},
                    {"dx c4 5st | dw c4 3st", 2, 0, 0, true, true, true, &dx64c4, &dw4c4, 68, true},
                    {"dx c2 4st | dw c4 3st", 2, 0, 0, true, true, true, &dxc2s4, &dw4c4, 68, true},
                    {"dx c2 5st | dw c4 2st", 2, 0, 0, true, true, true, &dx64c2, &dw2, 68, true},
                    {"dx c2 5st | dw c4 32-token 5st", 2, 0, 0, true, true, false, &dx64c2, &dw32s5, 68, true},
                    {"dx c2 5st | dw c4 32-token 6st", 2, 0, 0, true, true, false, &dx64c2, &dw32s6, 68, true},
                    {"side by side (op default) again", -1, 0, 0, true, true, true}},
                   ab_rounds());
}

// Measurement (prints; checks bits): the backward at precision standard by the one launch (variant 3), the two
// kernels one after the other (variant 2) and side by side (variant 4), at each shape of $KILN_RG_SBS_SHAPES
// ("TxKxE,…"; skipped when unset), $KILN_RG_AB_ROUNDS rounds (default 24) through OneLaunchAB::run: dx equal to the
// one launch's bit for bit in every arm, dw within 4·√T·2⁻²⁴ relative L2 (other T ranges: another summation order).
TEST_F(RouterGemmTest, BwdSideBySideShapesAB) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const char* env = std::getenv("KILN_RG_SBS_SHAPES");
  if (!env || !*env) GTEST_SKIP() << "no $KILN_RG_SBS_SHAPES";
  for (const auto& [part, sh] : sbs_shapes(env)) {
    SCOPED_TRACE(part);
    OneLaunchAB::run({{"one launch", 3, 0, 0, true, true, true},
                      {"two kernels", 2, 0, 0, true, true, false, nullptr, nullptr, 0, true},
                      {"side by side", 4, 0, 0, true, true, false, nullptr, nullptr, 0, true}},
                     ab_rounds(), 0, sh, part + " ");
  }
}

// The public default (precision standard): dx from bf16(g) and dw from hi + lo — the same kernels and bits as the
// bf16(g) dx and the `high` dw, within their bounds; with the advertised workspace. (At 4096 × 2048 → 256 the default
// runs dx and dw side by side: `high` is run the same way, so that dw has the same T ranges.)
TEST_F(RouterGemmTest, BwdTmaStandardIsTheDefault) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const int64_t T = 4096, K = 2048, E = 256;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xe8}), mix_seed({0xe9}));
  const std::vector<float> g = randn(T * E, mix_seed({0xea}), 1e-4f);
  const Bwd d = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, /*user_workspace=*/true, -1, /*precision=*/4);
  const Bwd lo = run_bwd(g, x, w, T, K, E, true, false, nullptr, nullptr, false, 2, /*precision=*/2);
  const Bwd hi = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, 4, /*precision=*/1);
  EXPECT_TRUE(d.guards_ok);
  EXPECT_TRUE(bitwise_equal("dx (standard vs bf16(g))", d.dx, lo.dx));
  EXPECT_TRUE(bitwise_equal("dw (standard vs high)", d.dw, hi.dw));
  const BwdRef want(g, x, w, T, K, E);
  EXPECT_TRUE(want.check_dx(d.dx, 4));
  EXPECT_TRUE(want.check_dw(d.dw, 4));
}

// The precision of each choice, pinned. tf32: dx is the fp32-accumulated product of exactly the values
// ref::f16_scaled_rows(g) · ref::f16_scaled_cols(w) (against a reference built from them it meets the
// accumulation-only bound); dw's relative L2 error is TF32-grade (≤ 5e-4) and ≥ 4× below bf16(g)'s; high: dw
// fp32-grade (≤ 1e-5, ≥ 20× below bf16(g)'s).
TEST_F(RouterGemmTest, BwdTmaPrecision) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const int64_t T = 4096, K = 1536, E = 64;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xcb}), mix_seed({0xcc}));
  const std::vector<float> g = randn(T * E, mix_seed({0xcd}), 1e-3f);
  std::vector<float> g16 = g;
  round_to(DType::bf16, g16);
  const ref::GemmRef dw = ref::router_gemm_dw(g, x, T, K, E);
  const ref::GemmRef dw16 = ref::router_gemm_dw(g16, x, T, K, E);
  std::vector<float> dw16f(dw16.value.begin(), dw16.value.end());
  const double err16 = relative_l2(dw16f, dw.value);

  const Bwd t = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, 2, /*precision=*/0);
  const ref::GemmRef dxe = ref::router_gemm_dx(ref::f16_scaled_rows(g, T, E), ref::f16_scaled_cols(w, E, K), T, K, E);
  EXPECT_TRUE(close_to("dx (tf32) vs its fp16 operands", t.dx, dxe, K, 3e-3, [&](int64_t i) {
    const double acc = 2 * kU * (E / 16.0 + 4) * dxe.abs[i];
    return kBf16Round * (std::fabs(dxe.value[i]) + acc) + acc;
  }));
  const double errt = relative_l2(t.dw, dw.value);
  EXPECT_LE(errt, 5e-4);
  EXPECT_GE(err16, 4 * errt) << "the fp16 pass is no better than bf16(g)";

  const Bwd h = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, 2, /*precision=*/1);
  const double errh = relative_l2(h.dw, dw.value);
  EXPECT_LE(errh, 1e-5);
  EXPECT_GE(err16, 20 * errh) << "a bf16 g would be about as good: the test lost its point";
  const ref::GemmRef dx = ref::router_gemm_dx(g, w, T, K, E);
  RecordProperty("dx_rel_l2_tf32", std::to_string(relative_l2(t.dx, dx.value)));
  RecordProperty("dx_rel_l2_high", std::to_string(relative_l2(h.dx, dx.value)));
  RecordProperty("dw_rel_l2_tf32", std::to_string(errt));
  RecordProperty("dw_rel_l2_high", std::to_string(errh));
  RecordProperty("dw_rel_l2_bf16g_reference", std::to_string(err16));
  std::printf("dw relative L2: tf32 %.3g, high %.3g, bf16(g) %.3g\n", errt, errh, err16);
}

// Inputs built to break the scales: rows of g at 2^−40 … 2^40 (whole rows, and spans inside one row), zero rows,
// w columns at 2^−30 … 2^30 (whole columns, spans inside a column) and zero columns, x columns at 2^−10 … 2^10 and
// zero columns, g growing along T (dw's running maxima grow chunk after chunk: accumulator rescales) — at T not a
// multiple of the tiles, T = 1 and T = 64 (one chunk), both precisions; every element within its bound.
TEST_F(RouterGemmTest, BwdTmaAdversarialScales) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  for (auto [T, K, E] : {Shape{1, 2048, 256}, Shape{64, 2048, 256}, Shape{1333, 2048, 256}, Shape{777, 1536, 160}}) {
    const uint64_t seed = mix_seed({0xe0, static_cast<uint64_t>(T), static_cast<uint64_t>(E)});
    std::vector<float> g = randn(T * E, mix_seed({seed, 1}), 1.0f);
    std::vector<float> w = randn(E * K, mix_seed({seed, 2}), 0.02f);
    std::vector<float> x = randn(T * K, mix_seed({seed, 3}), 1.0f);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e) {
        float& v = g[t * E + e];
        if (t % 7 == 3) v = 0.f;                                                        // zero rows
        else if (t % 5 == 1) v = std::ldexp(v, static_cast<int>((e * 29) % 81) - 40);  // spans inside a row
        else v = std::ldexp(v, static_cast<int>((t * 13 + T / 3) % 81) - 40);          // whole rows, growing along T
      }
    for (int64_t e = 0; e < E; ++e)
      for (int64_t k = 0; k < K; ++k) {
        float& v = w[e * K + k];
        if (k % 11 == 5) v = 0.f;                                                       // zero columns
        else if (k % 3 == 0) v = std::ldexp(v, static_cast<int>((e * 17 + k) % 61) - 30);  // spans in a column
        else v = std::ldexp(v, static_cast<int>((k * 37) % 61) - 30);                     // whole columns
      }
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k) {
        float& v = x[t * K + k];
        v = k % 13 == 7 ? 0.f : std::ldexp(v, static_cast<int>((k * 7) % 21) - 10);
      }
    round_to(DType::bf16, w);
    round_to(DType::bf16, x);
    const BwdRef want(g, x, w, T, K, E);
    for (int prec : {0, 1}) {
      SCOPED_TRACE(std::string(kPrecName[prec]) + " T=" + std::to_string(T) + " E=" + std::to_string(E));
      const Bwd b = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, /*user_workspace=*/prec == 0, 2, prec);
      EXPECT_TRUE(b.guards_ok);
      // The relative L2 error is dominated by the largest rows / columns; the per-element bounds carry the test.
      EXPECT_TRUE(want.check_dx(b.dx, prec));
      EXPECT_TRUE(want.check_dw(b.dw, prec));
    }
  }
}

// NaN / ±inf in g (and, for tf32, an inf in x) propagate without spoiling the scales of the other values; tiny and
// large g keep their relative accuracy; repeated runs give the same bits. (`high` multiplies an infinite x by both
// g halves: where lo has the other sign inf − inf gives NaN instead of ±inf, so x stays finite for it.)
TEST_F(RouterGemmTest, BwdTmaNonFiniteExtremeAndDeterministic) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const int64_t T = 1200, K = 2048, E = 256;
  const std::vector<float> w = bf16_values(E * K, mix_seed({0xcf}), 0.02f);
  std::vector<float> g = randn(T * E, mix_seed({0xd3}), 1e-4f);
  g[5 * E + 3] = std::numeric_limits<float>::quiet_NaN();
  g[50 * E + 100] = std::numeric_limits<float>::infinity();
  g[1150 * E + 200] = -std::numeric_limits<float>::infinity();
  for (int prec : {0, 1, 4}) {  // 4: standard (dx from bf16(g), dw from hi + lo)
    SCOPED_TRACE(kPrecName[prec]);
    std::vector<float> x = bf16_values(T * K, mix_seed({0xce}), 1.0f);
    if (prec == 0) x[700 * K + 1000] = std::numeric_limits<float>::infinity();
    const BwdRef want(g, x, w, T, K, E);
    const Bwd b = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, 2, prec);
    const Bwd b2 = run_bwd(g, x, w, T, K, E, true, true, nullptr, nullptr, false, 2, prec);
    EXPECT_TRUE(bitwise_equal("dw twice", b2.dw, b.dw));
    EXPECT_TRUE(bitwise_equal("dx twice", b2.dx, b.dx));
    EXPECT_TRUE(want.check_dx(b.dx, prec));
    EXPECT_TRUE(want.check_dw(b.dw, prec));
  }
  const std::vector<float> x1 = bf16_values(T * K, mix_seed({0xce}), 1.0f);
  for (float scale : {1e-12f, 1e6f}) {
    SCOPED_TRACE("g scaled to " + std::to_string(scale));
    const std::vector<float> gs = randn(T * E, mix_seed({0xd4}), scale);
    const Bwd bs = run_bwd(gs, x1, w, T, K, E, true, true, nullptr, nullptr, false, 2, 0);
    const BwdRef want(gs, x1, w, T, K, E);
    EXPECT_TRUE(want.check_dx(bs.dx, 0));
    EXPECT_TRUE(want.check_dw(bs.dw, 0));
  }
}

// Measurement switch: the wgmma forward without the proxy fence after its cp.async copies (what the bench's
// *_nofence row times). Recorded here so a faster variant is only adopted with its results checked.
TEST_F(RouterGemmTest, Sm90WithoutCopyFence) {
  if (!device_has_wgmma(rt())) GTEST_SKIP() << "not an sm_90 device";
  const int64_t T = 8192, K = 2048, E = 256;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xd0}), mix_seed({0xd1}));
  detail::router_gemm_measure_flags.store(kRgSkipCopyFence);
  const Fwd f = run_fwd(x, w, T, K, E, nullptr, 0, 0, 1);
  detail::router_gemm_measure_flags.store(0);
  const ref::GemmRef y = ref::router_gemm_fwd(x, w, T, K, E);
  EXPECT_TRUE(logits_close(f.y, y, K, E));
}

// g with NaN / ±inf, and g at the scales gradients take (tiny and large).
TEST_F(RouterGemmTest, BwdNonFiniteAndExtremeMagnitudes) {
  const int64_t T = 200, K = 2048, E = 256;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xb0}), mix_seed({0xb1}));
  std::vector<float> g = randn(T * E, mix_seed({0xb2}), 1e-4f);
  g[5 * E + 3] = std::numeric_limits<float>::quiet_NaN();
  g[50 * E + 100] = std::numeric_limits<float>::infinity();
  g[150 * E + 200] = -std::numeric_limits<float>::infinity();
  const Bwd b = run_bwd(g, x, w, T, K, E);
  const BwdRef want(g, x, w, T, K, E);
  EXPECT_TRUE(want.check_dx(b.dx, 1));
  EXPECT_TRUE(want.check_dw(b.dw, 1));
  for (float scale : {1e-12f, 1e6f}) {
    SCOPED_TRACE("g scaled to " + std::to_string(scale));
    const std::vector<float> gs = randn(T * E, mix_seed({0xb3}), scale);
    const Bwd bs = run_bwd(gs, x, w, T, K, E);
    const BwdRef want_s(gs, x, w, T, K, E);
    EXPECT_TRUE(want_s.check_dx(bs.dx, 1));
    EXPECT_TRUE(want_s.check_dw(bs.dw, 1));
  }
}

// The point of the hi/lo split: dw keeps fp32-grade accuracy where rounding g to bf16 would not. g values with a
// long mantissa; the relative L2 error of dw must sit far below what bf16(g) gives (≈ 1e-3).
TEST_F(RouterGemmTest, BwdKeepsTheFp32Gradient) {
  const int64_t T = 4096, K = 1536, E = 64;
  const auto [x, w] = bf16_xw(T, K, E, mix_seed({0xb4}), mix_seed({0xb5}));
  const std::vector<float> g = randn(T * E, mix_seed({0xb6}), 1e-3f);
  std::vector<float> g16 = g;
  round_to(DType::bf16, g16);
  const Bwd b = run_bwd(g, x, w, T, K, E, false, true);
  const ref::GemmRef dw = ref::router_gemm_dw(g, x, T, K, E);
  const ref::GemmRef dw16 = ref::router_gemm_dw(g16, x, T, K, E);
  std::vector<float> dw16f(dw16.value.begin(), dw16.value.end());
  const double err = relative_l2(b.dw, dw.value), err16 = relative_l2(dw16f, dw.value);
  EXPECT_LE(err, 1e-5);
  EXPECT_GE(err16, 20 * err) << "a bf16 g would be about as good: the test lost its point";
  RecordProperty("dw_rel_l2", std::to_string(err));
  RecordProperty("bf16_g_rel_l2", std::to_string(err16));
}

}  // namespace
}  // namespace kiln::test
