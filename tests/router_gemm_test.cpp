// tests/router_gemm_test.cpp — the fp32 router GEMM on the CPU (runs in CI without a driver): the reference on
// hand-checked cases, the hi/lo split of g, the family's specializations and search space (render + NVRTC compile
// for sm_90a), and every argument check of router_gemm_fp32_fwd / _bwd.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>

#include "kiln/ops/router_gemm.hpp"
#include "ops/router_gemm_internal.hpp"
#include "reference/router_gemm.hpp"
#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

// ---- reference --------------------------------------------------------------------------------------------------

TEST(RouterGemmReference, SmallCasesByHand) {
  // T = 2, K = 3, E = 2.   x = [[1, 2, 3], [-1, 0, 0.5]],  w = [[1, 1, 1], [0.5, -2, 4]]
  const std::vector<float> x = {1, 2, 3, -1, 0, 0.5f}, w = {1, 1, 1, 0.5f, -2, 4};
  const ref::GemmRef y = ref::router_gemm_fwd(x, w, 2, 3, 2);
  EXPECT_EQ(y.value, (std::vector<double>{6, 8.5, -0.5, 1.5}));
  EXPECT_EQ(y.abs, (std::vector<double>{6, 16.5, 1.5, 2.5}));
  // dx = g · w with g = [[1, -1], [0.25, 2]]
  const std::vector<float> g = {1, -1, 0.25f, 2};
  const ref::GemmRef dx = ref::router_gemm_dx(g, w, 2, 3, 2);
  EXPECT_EQ(dx.value, (std::vector<double>{0.5, 3, -3, 1.25, -3.75, 8.25}));
  EXPECT_EQ(dx.abs, (std::vector<double>{1.5, 3, 5, 1.25, 4.25, 8.25}));
  // dw = gᵀ · x
  const ref::GemmRef dw = ref::router_gemm_dw(g, x, 2, 3, 2);
  EXPECT_EQ(dw.value, (std::vector<double>{0.75, 2, 3.125, -3, -2, -2}));
  EXPECT_EQ(dw.abs, (std::vector<double>{1.25, 2, 3.125, 3, 2, 4}));
}

TEST(RouterGemmReference, EmptyReductionIsZero) {
  const ref::GemmRef dw = ref::router_gemm_dw({}, {}, 0, 16, 8);
  EXPECT_EQ(dw.value, std::vector<double>(128, 0.0));
}

// The two-term split keeps 16 significant bits: |g − hi − lo| ≤ 2⁻¹⁷·|g| for normal g (hi carries 8 bits, lo the
// next 8 of the remainder, each rounded to nearest); non-finite values pass through hi.
TEST(RouterGemmReference, SplitKeepsSixteenBits) {
  const std::vector<float> v = randn(100000, 0x5eed, 1.0f);
  for (float scale : {1.0f, 1e-30f, 1e-6f, 3e4f, 1e30f}) {
    for (float f : v) {
      const float g = f * scale;
      float hi, lo;
      ref::split_bf16(g, hi, lo);
      const double residual = std::fabs(static_cast<double>(g) - hi - lo);
      ASSERT_LE(residual, std::ldexp(std::fabs(static_cast<double>(g)), -17) + 1e-45) << "g = " << g;
    }
  }
  float hi, lo;
  ref::split_bf16(std::numeric_limits<float>::infinity(), hi, lo);
  EXPECT_TRUE(std::isinf(hi) && hi > 0);
  EXPECT_EQ(lo, 0.f);
  ref::split_bf16(std::numeric_limits<float>::quiet_NaN(), hi, lo);
  EXPECT_TRUE(std::isnan(hi));
  EXPECT_EQ(lo, 0.f);
  ref::split_bf16(3.4e38f, hi, lo);  // rounds up to inf in bf16: lo dropped, so the product is ±inf, not NaN
  EXPECT_TRUE(std::isinf(hi));
  EXPECT_EQ(lo, 0.f);
}

// The tf32 backward's fp16 pass (the dx kernel multiplies exactly ref::f16_scaled_rows(g) · f16_scaled_cols(w)),
// checked on the CPU against the exact product on inputs built to break the scales: rows of g at 2^−40 … 2^40 and
// rows spanning that range, zero rows, w columns at 2^−30 … 2^30 and spanning it, zero columns. Every element must
// satisfy |emulated − exact| ≤ 2⁻¹¹·Σ|g·w| + 2⁻³⁸·(max_row|g|·Σ_e|w| + max_col|w|·Σ_e|g|) (+ double rounding), the
// bound the GPU tests use; bf16(g) must break the 2⁻¹¹ part of it (else the test would not tell the two apart).
TEST(RouterGemmReference, F16PassKeepsElevenBits) {
  const int64_t T = 48, K = 96, E = 256;
  std::vector<float> g = randn(T * E, 0xf16a, 1.0f), w = randn(E * K, 0xf16b, 0.02f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) {
      float& v = g[t * E + e];
      if (t % 7 == 3) v = 0.f;
      else if (t % 5 == 1) v = std::ldexp(v, static_cast<int>((e * 29) % 81) - 40);
      else v = std::ldexp(v, static_cast<int>((t * 13) % 81) - 40);
    }
  for (int64_t e = 0; e < E; ++e)
    for (int64_t k = 0; k < K; ++k) {
      float& v = w[e * K + k];
      if (k % 11 == 5) v = 0.f;
      else if (k % 3 == 0) v = std::ldexp(v, static_cast<int>((e * 17 + k) % 61) - 30);
      else v = std::ldexp(v, static_cast<int>((k * 37) % 61) - 30);
    }
  for (float& v : w) v = round_to(DType::bf16, v);
  const ref::GemmRef exact = ref::router_gemm_dx(g, w, T, K, E);
  const ref::GemmRef f16 = ref::router_gemm_dx(ref::f16_scaled_rows(g, T, E), ref::f16_scaled_cols(w, E, K), T, K, E);
  std::vector<float> gb = g;
  for (float& v : gb) v = round_to(DType::bf16, v);
  const ref::GemmRef b16 = ref::router_gemm_dx(gb, w, T, K, E);
  std::vector<double> rmax(T, 0), rsum(T, 0), cmax(K, 0), csum(K, 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) {
      rmax[t] = std::max(rmax[t], std::fabs(static_cast<double>(g[t * E + e])));
      rsum[t] += std::fabs(g[t * E + e]);
    }
  for (int64_t e = 0; e < E; ++e)
    for (int64_t k = 0; k < K; ++k) {
      cmax[k] = std::max(cmax[k], std::fabs(static_cast<double>(w[e * K + k])));
      csum[k] += std::fabs(w[e * K + k]);
    }
  int64_t bf16_breaks = 0, nonzero = 0;
  for (int64_t i = 0; i < T * K; ++i) {
    const int64_t t = i / K, k = i % K;
    const double bound = 0x1p-11 * exact.abs[i] + 0x1p-38 * (rmax[t] * csum[k] + cmax[k] * rsum[t]) +
                         1e-15 * exact.abs[i];
    ASSERT_LE(std::fabs(f16.value[i] - exact.value[i]), bound) << "t " << t << " k " << k;
    if (exact.abs[i] > 0) ++nonzero;
    if (std::fabs(b16.value[i] - exact.value[i]) > bound) ++bf16_breaks;
  }
  EXPECT_GT(nonzero, T * K / 2);
  EXPECT_GT(bf16_breaks, nonzero / 20) << "bf16(g) meets the fp16 bound: the test cannot tell them apart";
  // Exactness above the threshold: a bf16 w is exact in the fp16 pass, and the scale exponents follow the rule.
  EXPECT_EQ(ref::f16_scale_exp(1.0), -14);
  EXPECT_EQ(ref::f16_scale_exp(0x1.fffffep14), 0);
  EXPECT_EQ(ref::f16_scale_exp(0.0), -100);
  EXPECT_EQ(ref::f16_scale_exp(0x1p120), 100);
  const std::vector<float> wr = ref::f16_scaled_cols(w, E, K);
  for (int64_t i = 0; i < E * K; ++i)
    if (std::fabs(w[i]) >= std::ldexp(cmax[i % K], -28)) ASSERT_EQ(wr[i], w[i]) << i;
}

// ---- specializations and search space ---------------------------------------------------------------------------

using detail::Arch;
using detail::Specialization;

const detail::FamilyDef& family() {
  static Runtime rt(RuntimeOptions{.memory_only = true});  // registers the families
  const detail::FamilyDef* f = detail::find_family("router_gemm");
  EXPECT_NE(f, nullptr);
  return *f;
}

std::vector<Specialization> enumerated(int K, int E, const char* arch);
// The enumerated specialization of kernel id `kernel` (ops/router_gemm.cpp's enum) at K × E on sm_90a.
Specialization enumerated_kernel(int K, int E, uint32_t kernel) {
  for (const auto& s : enumerated(K, E, "sm_90a"))
    if (s.kernel == kernel) return s;
  ADD_FAILURE() << "kernel " << kernel << " not enumerated";
  return {};
}
std::vector<Specialization> enumerated(int K, int E, const char* arch) {
  ModelConfig m;
  m.hidden_size = K;
  m.num_experts = E;
  std::vector<Specialization> out;
  family().enumerate(m, Arch::parse(arch), out);
  return out;
}

TEST(RouterGemmFamily, EnumeratesEveryKernelOfAMoeModelAndNothingForADenseOne) {
  const auto specs = enumerated(2048, 256, "sm_90a");
  ASSERT_EQ(specs.size(), 17u);
  std::set<uint32_t> kernels;
  for (const auto& s : specs) kernels.insert(s.kernel);
  // The last: the TMA dx kernel (6) again, with w by multicast to clusters of 2 (the side-by-side backward's form).
  EXPECT_EQ(specs.back().kernel, 6u);
  EXPECT_EQ(specs.back().config[4], 2);
  EXPECT_NE(specs.back().key().hex(), specs[6].key().hex());
  // 4–15: the wgmma kernels, sm_90a only (6–9: the TMA backward from bf16(g) or hi + lo; 11: the forward over expert
  // pairs, E % 16 == 0; 12–14: the TMA backward's fp16 pass and its w operand prep; 15: the backward in one launch,
  // precision standard).
  EXPECT_EQ(kernels, (std::set<uint32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}));
  std::set<std::pair<uint32_t, int64_t>> keys;  // one entry per kernel and shape (the tuning database's key)
  for (size_t i = 0; i + 1 < specs.size(); ++i)
    EXPECT_TRUE(keys.insert({specs[i].kernel, specs[i].params[0] * 4096 + specs[i].params[1]}).second);
  EXPECT_EQ(enumerated(2048, 256, "sm_80").size(), 4u);
  EXPECT_EQ(enumerated(2048, 256, "sm_100a").size(), 4u);
  EXPECT_EQ(enumerated(2048, 384, "sm_90a").size(), 4u);  // E > 256: mma.sync only
  EXPECT_TRUE(enumerated(2048, 0, "sm_90a").empty());
  EXPECT_TRUE(enumerated(2050, 256, "sm_90a").empty());  // K not a multiple of 8: not servable
  EXPECT_EQ(enumerated(2048, 128, "sm_90a").size(), 16u);  // E ≤ 128: dw in clusters of 1, no multicast dx form
  const auto ds = enumerated(7168, 256, "sm_90a");
  ASSERT_EQ(ds.size(), 17u);
  EXPECT_EQ(ds[0].params[0], 7168);
  EXPECT_EQ(ds[0].params[1], 256);
}

// Every default is in its search space, every point is distinct and fits shared memory, for the shapes the issue
// names (E not a power of two included) and for the archs kiln compiles.
TEST(RouterGemmFamily, SearchSpacesHoldTheDefaultAndFit) {
  for (const char* arch : {"sm_90a", "sm_80", "sm_89"}) {
    const int limit = std::string(arch) == "sm_90a" ? 227 * 1024 : std::string(arch) == "sm_80" ? 163 * 1024 : 99 * 1024;
    for (int K : {1536, 2048, 4096, 7168})
      for (int E : {8, 64, 128, 160, 256, 384}) {
        for (const Specialization& s : enumerated(K, E, arch)) {
          std::vector<Specialization> space;
          family().search_space(s, space);
          ASSERT_FALSE(space.empty()) << arch << " " << s.describe();
          EXPECT_TRUE(detail::in_search_space(s)) << arch << " default not in its space: " << s.describe();
          std::set<std::string> keys;
          for (const auto& c : space) {
            EXPECT_TRUE(keys.insert(c.key().hex()).second) << c.describe();
            EXPECT_LE(family().dynamic_smem_bytes(c), limit) << arch << " " << c.describe();
          }
          // dw_reduce, w16: no tiles
          if (std::string(arch) == "sm_90a" && s.kernel != 3 && s.kernel != 14)
            EXPECT_GE(space.size(), 3u) << s.describe();
          if (s.kernel >= 4) EXPECT_EQ(std::string(arch), "sm_90a");
        }
      }
  }
}

// The backward's side-by-side plan (variant 4): dw in whole T ranges of its 128 × 256 tiles on about half the SMs (an
// even count of ranges for clusters of 2, at most 8), dx on the rest; no split where one range of dw's tiles takes
// more than half the SMs. Exactly 4 ranges from clusters of 2: one cluster of 4 and dx in multicast pairs (session 27).
TEST(RouterGemmSideBySide, PlanSplitsTheSmsInWholeRanges) {
  using detail::router_gemm_side_by_side_plan;
  struct Case {
    int64_t K, E;
    int sms, cluster, dw_sms, dx_ctas;
  };
  for (const Case& c : {Case{2048, 256, 132, 2, 64, 68},    // 16 tiles × 4 ranges (session 24's fastest split)
                        Case{2048, 256, 132, 1, 64, 68},    // 66 / 16 = 4 ranges either way
                        Case{2048, 256, 114, 2, 32, 82},    // 57 / 16 = 3 ranges → 2 (whole clusters)
                        Case{2048, 256, 114, 1, 48, 66},    // … 3 ranges in clusters of 1
                        Case{4096, 256, 132, 2, 64, 68},    // 32 tiles × 2
                        Case{7168, 256, 132, 2, 56, 76},    // 56 tiles: one range
                        Case{1536, 160, 132, 2, 48, 84},    // 12 tiles: 5 ranges → 4
                        Case{2048, 64, 132, 1, 64, 68},     // 8 tiles (one expert tile): 8 ranges, the most
                        Case{2048, 64, 264, 1, 64, 200},    // … still 8 ranges on 264 SMs
                        Case{8448, 256, 132, 2, 66, 66},    // 66 tiles: half the SMs, one range
                        Case{8704, 256, 132, 2, 0, 0},      // 68 tiles: more than half, no split
                        Case{16384, 256, 132, 2, 0, 0}}) {  // 128 tiles
    SCOPED_TRACE("K=" + std::to_string(c.K) + " E=" + std::to_string(c.E) + " sms=" + std::to_string(c.sms) +
                 " cluster=" + std::to_string(c.cluster));
    const detail::RouterGemmSideBySide p = router_gemm_side_by_side_plan(c.K, c.E, c.sms, c.cluster);
    EXPECT_EQ(p.dw_sms, c.dw_sms);
    EXPECT_EQ(p.dx_ctas, c.dx_ctas);
    const int64_t tiles = ((c.E + 127) / 128) * ((c.K + 255) / 256);
    if (p.dx_ctas > 0) {
      EXPECT_EQ(p.dw_sms + p.dx_ctas, c.sms);
      EXPECT_EQ(p.dw_sms % tiles, 0) << "whole T ranges";
    }
    // Exactly 4 ranges from clusters of 2 (here: 2048 → 256 and 1536 → 160 on 132 SMs): one cluster of 4, dx by
    // multicast in pairs; else the kernels' own clusters.
    const bool four = p.dx_ctas > 0 && p.dw_sms == 4 * tiles && c.cluster == 2;
    EXPECT_EQ(p.dw_cluster, four ? 4 : 0);
    EXPECT_EQ(p.dx_cluster, four ? 2 : 0);
  }
  EXPECT_EQ(router_gemm_side_by_side_plan(2048, 256, 132, 2).dw_cluster, 4);
  EXPECT_EQ(router_gemm_side_by_side_plan(1536, 160, 132, 2).dw_cluster, 4);
}

// The backward's default arrangement at precision standard: side by side up to T + K/2 = 9216 on 132 SMs (scaled by
// the SM count), and at any T where dw's own grid fits its side-by-side share; never where the plan does not split.
TEST(RouterGemmSideBySide, DefaultFollowsTheMeasuredCrossovers) {
  using detail::router_gemm_side_by_side_default;
  using detail::router_gemm_side_by_side_plan;
  struct Case {
    int64_t T, K, E;
    int sms, cluster, own;  // own: the dw kernel's grid alone
    bool sbs;
  };
  for (const Case& c : {Case{8192, 2048, 256, 132, 2, 128, true},     // on the line: 55.3 vs 56.8 µs
                        Case{8193, 2048, 256, 132, 2, 128, false},    // past it
                        Case{16384, 2048, 256, 132, 2, 128, false},   // 102.5 vs 101.9
                        Case{1024, 2048, 256, 132, 2, 128, true},     // 19.3 vs 23.0
                        Case{7168, 4096, 256, 132, 2, 128, true},     // on the line: 87.1 vs 91.6
                        Case{8192, 4096, 256, 132, 2, 128, false},    // 99.1 vs 97.1
                        Case{5120, 7168, 256, 132, 2, 112, true},     // 116.5 vs 122.1
                        Case{6144, 7168, 256, 132, 2, 112, false},    // 134.7 vs 131.3
                        Case{6912, 2048, 256, 114, 2, 112, true},     // fewer SMs: T + K/2 ≤ 7959
                        Case{7168, 2048, 256, 114, 2, 112, false},
                        Case{16384, 2048, 128, 132, 1, 64, true},     // dw's own grid = its share: 64.3 vs 86.1
                        Case{65536, 2048, 128, 132, 1, 64, true},
                        Case{1024, 16384, 256, 132, 2, 128, false}}) {  // 128 dw tiles: no split
    SCOPED_TRACE("T=" + std::to_string(c.T) + " K=" + std::to_string(c.K) + " E=" + std::to_string(c.E) +
                 " sms=" + std::to_string(c.sms));
    const detail::RouterGemmSideBySide p = router_gemm_side_by_side_plan(c.K, c.E, c.sms, c.cluster);
    EXPECT_EQ(router_gemm_side_by_side_default(c.T, c.K, c.sms, c.own, p), c.sbs);
  }
}

// The dx kernel's column parts: the most (from the base) whose units still fit the CTAs once, at most one 256-column
// block each and never an empty part; the base where even that does not fit.
TEST(RouterGemmDxParts, FillTheCtasOnceWithoutEmptyParts) {
  using detail::router_gemm_dx_parts;
  struct Case {
    int64_t tiles, K;
    int cm, base, ctas, parts;
  };
  for (const Case& c : {Case{128, 2048, 1, 1, 132, 1},   // 8192 tokens: the tiles fill the GPU already
                        Case{128, 2048, 1, 1, 68, 1},    // … more tiles than CTAs: the base
                        Case{64, 2048, 1, 1, 132, 2},    // 4096 tokens: 128 units
                        Case{64, 2048, 1, 1, 68, 1},     // … beside dw on 68 CTAs
                        Case{16, 2048, 1, 1, 132, 8},    // 1024 tokens: one block a unit
                        Case{16, 2048, 1, 1, 68, 4},
                        Case{1, 2048, 1, 1, 132, 8},     // one token: every block its own unit
                        Case{1, 1536, 1, 1, 132, 6},     // K = 1536: 6 blocks
                        Case{1, 7168, 1, 1, 132, 28},    // 28 blocks
                        Case{5, 7168, 1, 1, 132, 14},    // 26 parts would leave empty ones (2 blocks a part: 14)
                        Case{16, 2048, 2, 1, 132, 8},    // clusters of 2: 8 groups × 8 parts
                        Case{16, 2048, 2, 1, 64, 4},     // … 32 clusters
                        Case{8, 2048, 1, 2, 132, 8},     // 128-token units: from their two halves
                        Case{64, 2048, 1, 2, 132, 2},    // … 128 units already
                        Case{100, 2048, 1, 2, 132, 2}}) {  // … more than the CTAs: the base
    SCOPED_TRACE("tiles=" + std::to_string(c.tiles) + " K=" + std::to_string(c.K) + " cm=" + std::to_string(c.cm) +
                 " base=" + std::to_string(c.base) + " ctas=" + std::to_string(c.ctas));
    const int p = router_gemm_dx_parts(c.tiles, c.K, c.cm, c.base, c.ctas);
    EXPECT_EQ(p, c.parts);
    const int64_t nch = (c.K + 255) / 256, per = (nch + p - 1) / p;
    EXPECT_LT(per * (p - 1), nch) << "an empty part";
  }
}

TEST(RouterGemmFamily, InvalidConfigsAreOutsideTheSpace) {
  Specialization s = enumerated(2048, 256, "sm_90a")[0];  // fwd
  Specialization bad = s;
  bad.config[1] = 200;  // BN not a multiple of WN·16
  EXPECT_FALSE(detail::in_search_space(bad));
  bad = s;
  bad.config[5] = 12;  // 12 stages of 46 KiB
  EXPECT_FALSE(detail::in_search_space(bad));
}

// Render + NVRTC for sm_90a: the defaults at shapes outside the presets (E = 160 and 64, K = 1536) and a few search
// points (compile_test covers every preset default and the whole ling-mini-2.0 space).
TEST(RouterGemmFamily, OddShapesAndSearchPointsCompile) {
  detail::Counters counters;
  std::vector<Specialization> specs;
  for (auto [K, E] : {std::pair{1536, 160}, std::pair{2048, 64}, std::pair{2056, 8}})
    for (const auto& s : enumerated(K, E, "sm_90a"))
      if (s.kernel != 3) specs.push_back(s);
  std::vector<Specialization> space;
  family().search_space(enumerated(7168, 256, "sm_90a")[0], space);
  specs.push_back(space.back());
  space.clear();
  family().search_space(enumerated_kernel(2048, 256, 4), space);  // wgmma forward: its last point splits K
  ASSERT_EQ(space.back().config[4], 2);
  specs.push_back(space.back());
  // The TMA forward: multicast clusters of 2 and 4 (space[1], space[4]) and 128-token tiles (compile_test covers
  // every point); the K-split forward's quarters.
  space.clear();
  family().search_space(enumerated_kernel(2048, 256, 5), space);
  ASSERT_GE(space.size(), 8u);
  for (size_t i : {size_t{1}, size_t{4}, space.size() - 1}) specs.push_back(space[i]);
  space.clear();
  family().search_space(enumerated_kernel(2048, 256, 10), space);  // the TMA forward with K split
  ASSERT_GE(space.size(), 4u);
  specs.push_back(space[2]);
  for (uint32_t k : {6u, 7u, 11u, 12u, 13u}) {  // TMA dx, dw, expert-pair forward, fp16 dx, dw: a non-default point
    space.clear();
    family().search_space(enumerated_kernel(2048, 256, k), space);
    EXPECT_GE(space.size(), 4u);
    specs.push_back(space.back());
  }
  for (const auto& s : specs) {
    const detail::EnsureResult r = detail::ensure_cubin(s, nullptr, false, counters);
    EXPECT_GT(r.cubin.size(), 1000u) << s.describe();
    EXPECT_NE(r.lowered_name.find("router_gemm"), std::string::npos) << r.lowered_name;
  }
}

// ---- argument checks --------------------------------------------------------------------------------------------

class RouterGemmErrors : public ::testing::Test {
 protected:
  static constexpr int64_t T = 96, K = 2048, E = 160;
  void fwd() { router_gemm_fp32_fwd(rt, x, w, logits, nullptr); }
  void bwd() { router_gemm_fp32_bwd(rt, g, x, w, dx, dw, ws, nullptr); }

  Runtime rt{cpu_options()};
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {T, K});
  TensorRef w = TensorRef::contiguous(fake(1), DType::bf16, {E, K});
  TensorRef logits = TensorRef::contiguous(fake(2), DType::f32, {T, E});
  TensorRef g = TensorRef::contiguous(fake(3), DType::f32, {T, E});
  TensorRef dx = TensorRef::contiguous(fake(4), DType::bf16, {T, K});
  TensorRef dw = TensorRef::contiguous(fake(5), DType::f32, {E, K});
  TensorRef ws;
};

TEST_F(RouterGemmErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(fwd());
  EXPECT_REACHES_DEVICE(bwd());
}
TEST_F(RouterGemmErrors, Valid3dAndStridedCallsReachTheDevice) {
  x = TensorRef::contiguous(fake(0), DType::bf16, {4, T / 4, K});
  logits = TensorRef::contiguous(fake(2), DType::f32, {4, T / 4, E});
  EXPECT_REACHES_DEVICE(fwd());
  x = TensorRef::strided_2d(fake(0), DType::bf16, T, K, K + 64);
  logits = TensorRef::strided_2d(fake(2), DType::f32, T, E, E + 4);
  EXPECT_REACHES_DEVICE(fwd());
}
TEST_F(RouterGemmErrors, OnlyDxOrOnlyDwReachTheDevice) {
  dw = {};
  EXPECT_REACHES_DEVICE(bwd());
  dw = TensorRef::contiguous(fake(5), DType::f32, {E, K});
  dx = {};
  EXPECT_REACHES_DEVICE(bwd());
}

TEST_F(RouterGemmErrors, WrongDtypes) {
  for (DType d : {DType::f32, DType::f16, DType::e4m3}) {
    TensorRef bad = x;
    bad.dtype = d;
    EXPECT_THROW_NAMING(router_gemm_fp32_fwd(rt, bad, w, logits, nullptr), "x", UnsupportedDtypeError);
  }
  w.dtype = DType::f32;  // linghe takes weight.data in bf16; kiln does too
  EXPECT_THROW_NAMING(fwd(), "w", UnsupportedDtypeError);
  w.dtype = DType::bf16;
  logits.dtype = DType::bf16;
  EXPECT_THROW_NAMING(fwd(), "logits", UnsupportedDtypeError);
  g.dtype = DType::bf16;  // the gradient is fp32
  EXPECT_THROW_NAMING(bwd(), "g", UnsupportedDtypeError);
  g.dtype = DType::f32;
  dx.dtype = DType::f32;
  EXPECT_THROW_NAMING(bwd(), "dx", UnsupportedDtypeError);
  dx.dtype = DType::bf16;
  dw.dtype = DType::bf16;  // kiln returns dw in fp32 (linghe HEAD)
  EXPECT_THROW_NAMING(bwd(), "dw", UnsupportedDtypeError);
}

TEST_F(RouterGemmErrors, HiddenSizeOutOfRange) {
  for (int64_t k : {int64_t{2044}, int64_t{8}, int64_t{16392}}) {
    x = TensorRef::contiguous(fake(0), DType::bf16, {T, k});
    w = TensorRef::contiguous(fake(1), DType::bf16, {E, k});
    EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
  }
}

TEST_F(RouterGemmErrors, ExpertCountOutOfRange) {
  for (int64_t e : {int64_t{100}, int64_t{0}, int64_t{1032}}) {
    w = TensorRef::contiguous(fake(1), DType::bf16, {e, K});
    logits = TensorRef::contiguous(fake(2), DType::f32, {T, e});
    EXPECT_THROW_NAMING(fwd(), "w", ShapeMismatchError);
  }
}

TEST_F(RouterGemmErrors, WeightShapeOrLayout) {
  w = TensorRef::contiguous(fake(1), DType::bf16, {E, K + 8});  // K differs from x's
  EXPECT_THROW_NAMING(fwd(), "w", ShapeMismatchError);
  w = TensorRef::contiguous(fake(1), DType::bf16, {E * K});
  EXPECT_THROW_NAMING(fwd(), "w", ShapeMismatchError);
  w = TensorRef::strided_2d(fake(1), DType::bf16, E, K, K + 8);  // rows must be packed
  EXPECT_THROW_NAMING(fwd(), "w", ShapeMismatchError);
}

TEST_F(RouterGemmErrors, OutputShapes) {
  logits = TensorRef::contiguous(fake(2), DType::f32, {T, E + 8});
  EXPECT_THROW_NAMING(fwd(), "logits", ShapeMismatchError);
  logits = TensorRef::contiguous(fake(2), DType::f32, {T + 1, E});
  EXPECT_THROW_NAMING(fwd(), "logits", ShapeMismatchError);
  logits = TensorRef::contiguous(fake(2), DType::f32, {2, T / 2, E});  // rank differs from x's
  EXPECT_THROW_NAMING(fwd(), "logits", ShapeMismatchError);
  g = TensorRef::contiguous(fake(3), DType::f32, {T, E - 8});
  EXPECT_THROW_NAMING(bwd(), "g", ShapeMismatchError);
  g = TensorRef::contiguous(fake(3), DType::f32, {T, E});
  dx = TensorRef::contiguous(fake(4), DType::bf16, {T, K - 8});
  EXPECT_THROW_NAMING(bwd(), "dx", ShapeMismatchError);
  dx = TensorRef::contiguous(fake(4), DType::bf16, {T, K});
  dw = TensorRef::contiguous(fake(5), DType::f32, {K, E});
  EXPECT_THROW_NAMING(bwd(), "dw", ShapeMismatchError);
}

TEST_F(RouterGemmErrors, ThreeDimLeadingDimsMustMatch) {
  x = TensorRef::contiguous(fake(0), DType::bf16, {4, T / 4, K});
  logits = TensorRef::contiguous(fake(2), DType::f32, {T / 4, 4, E});
  EXPECT_THROW_NAMING(fwd(), "logits", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {2, 2, T / 4, K});  // rank 4
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
}

TEST_F(RouterGemmErrors, NonContiguousOrMisalignedRows) {
  x.strides = {2 * K, 2};
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
  x = TensorRef::strided_2d(fake(0), DType::bf16, T, K, K + 4);  // rows 8-byte aligned only
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
  x = TensorRef::contiguous(fake(0), DType::bf16, {T, K});
  logits = TensorRef::strided_2d(fake(2), DType::f32, T, E, E + 2);
  EXPECT_THROW_NAMING(fwd(), "logits", InvalidArgument);
  logits = TensorRef::contiguous(fake(2), DType::f32, {T, E});
  x = TensorRef::contiguous(fake(0), DType::bf16, {4, T / 4, K});
  x.strides = {T / 4 * K * 2, K * 2, 1};  // 3-D views must be contiguous
  logits = TensorRef::contiguous(fake(2), DType::f32, {4, T / 4, E});
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
}

TEST_F(RouterGemmErrors, NullOrMisalignedPointers) {
  x.data = nullptr;
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
  x.data = static_cast<char*>(fake(0)) + 8;
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
  x.data = fake(0);
  w.data = static_cast<char*>(fake(1)) + 2;
  EXPECT_THROW_NAMING(fwd(), "w", InvalidArgument);
  w.data = fake(1);
  logits.data = static_cast<char*>(fake(2)) + 4;
  EXPECT_THROW_NAMING(fwd(), "logits", InvalidArgument);
  g.data = nullptr;
  EXPECT_THROW_NAMING(bwd(), "g", InvalidArgument);
  g.data = fake(3);
  dw.data = static_cast<char*>(fake(5)) + 4;
  EXPECT_THROW_NAMING(bwd(), "dw", InvalidArgument);
}

TEST_F(RouterGemmErrors, BackwardNeedsAnOutput) {
  dx = {};
  dw = {};
  EXPECT_THROW_NAMING(bwd(), "dx", InvalidArgument);
}

TEST_F(RouterGemmErrors, UnknownPrecision) {
  RouterGemmBwdOptions o;
  o.precision = static_cast<RouterGemmPrecision>(7);
  EXPECT_THROW_NAMING(router_gemm_fp32_bwd(rt, g, x, w, dx, dw, ws, o, nullptr), "precision", InvalidArgument);
}

TEST_F(RouterGemmErrors, WorkspaceOfWrongDtype) {
  ws = TensorRef::contiguous(fake(6), DType::bf16, {1 << 20});
  EXPECT_THROW_NAMING(bwd(), "workspace", UnsupportedDtypeError);
}

TEST_F(RouterGemmErrors, TooManyTokens) {
  const int64_t t = int64_t{1} << 31;
  x = TensorRef::contiguous(fake(0), DType::bf16, {t, K});
  logits = TensorRef::contiguous(fake(2), DType::f32, {t, E});
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
}

TEST_F(RouterGemmErrors, EmptyInputsNeedNoDeviceForTheForward) {
  x = TensorRef::contiguous(nullptr, DType::bf16, {0, K});
  logits = TensorRef::contiguous(nullptr, DType::f32, {0, E});
  EXPECT_NO_THROW(fwd());  // T = 0: nothing to launch
}

}  // namespace
}  // namespace kiln::test
