// tests/moe_test.cpp — MoE routing, row-id map, permute, unpermute on the CPU: reference sanity checks, NVRTC
// compiles of non-preset specializations, and every argument error (fake pointers, never dereferenced).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <limits>
#include <numeric>
#include <set>

#include "kiln/kiln.hpp"
#include "kiln/moe_routing_args.h"
#include "reference/moe.hpp"
#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

// ---- references ---------------------------------------------------------------------------------------------------

TEST(MoeReference, KilnExpIsAccurate) {
  int64_t worst = 0;
  for (float x = -100.0f; x < 88.0f; x += 0.0137f) {
    const float got = ref::kiln_exp(x), want = static_cast<float>(std::exp(static_cast<double>(x)));
    if (want < 1.2e-38f) continue;  // subnormal results: absolute error only
    const int64_t ulps = std::abs(static_cast<int64_t>(std::bit_cast<int32_t>(got)) - std::bit_cast<int32_t>(want));
    worst = std::max(worst, ulps);
  }
  EXPECT_LE(worst, 3);
  EXPECT_EQ(ref::kiln_exp(0.0f), 1.0f);
  EXPECT_EQ(ref::kiln_exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_TRUE(std::isinf(ref::kiln_exp(100.0f)));
  EXPECT_EQ(ref::kiln_exp(std::numeric_limits<float>::quiet_NaN()), 0.0f);
  EXPECT_TRUE(std::isinf(ref::kiln_exp(std::numeric_limits<float>::infinity())));
  EXPECT_EQ(ref::kiln_exp(-200.0f), 0.0f);
  EXPECT_GT(ref::kiln_exp(-103.0f), 0.0f);  // subnormal, not flushed
}

// The route kernel's short form of 1 + kiln_exp(x) for x < 87 (moe_routing.cuh kiln_one_plus_exp_lt87: clamp at −20,
// rint by the 1.5·2^23 sum, 2^n applied as an integer add of the sum's bits << 23), replayed with the same fp32
// operations, equals 1 + kiln_exp(x) bit for bit wherever the kernel uses it (x < 87, NaN).
float one_plus_exp_lt87(float x) {
  x = std::fmax(x, -20.0f);
  const volatile float prod = x * 1.44269504f;  // no contraction into an fma: the kernel rounds the product first
  const float big = prod + 12582912.0f;
  const float n = big - 12582912.0f;
  float r = std::fma(n, -0.693145751953125f, x);
  r = std::fma(n, -1.42860677e-06f, r);
  float p = 1.98412701e-04f;
  for (float c : {1.38888892e-03f, 8.33333377e-03f, 4.16666679e-02f, 1.66666672e-01f, 0.5f, 1.0f, 1.0f})
    p = std::fma(p, r, c);
  const uint32_t e = std::bit_cast<uint32_t>(p) + (std::bit_cast<uint32_t>(big) << 23);
  return 1.0f + std::bit_cast<float>(e);
}

TEST(MoeReference, ShortSigmoidDenominatorIsExact) {
  int64_t n = 0;
  auto check = [&](float x) {
    const float want = 1.0f + ref::kiln_exp(x), got = one_plus_exp_lt87(x);
    ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << "x = " << x;
    ++n;
  };
  for (float x = -130.0f; x < 87.0f; x += 0.00731f) check(x);
  // Every float near the clamp, the rounding boundaries of n and the top of the range.
  for (float c : {-20.0f, -17.0f, -16.5f, 0.0f, 0.3465736f, 86.9f}) {
    float x = c;
    for (int i = 0; i < 4096; ++i) x = std::nextafter(x, 100.0f);
    for (int i = 0; i < 8192 && x < 87.0f; ++i, x = std::nextafter(x, -100.0f)) check(x);
  }
  check(std::nextafter(87.0f, 0.0f));
  check(-std::numeric_limits<float>::infinity());
  check(std::numeric_limits<float>::quiet_NaN());
  EXPECT_GT(n, 60000);
}

// Plain top-k picks the k largest logits (sorted, ties to the lower index) and softmax probs sum to the kept mass.
TEST(MoeReference, TopkSoftmaxPicksTheLargestLogits) {
  const int64_t T = 64, E = 160;
  std::vector<float> z = randn(T * E, 11);
  for (int64_t e = 0; e < E; e += 7) z[3 * E + e] = 0.5f;  // ties on token 3
  ref::TopkOptions o;
  o.top_k = 8;
  const auto r = ref::topk_routing(z, T, E, {}, o);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int> idx(E);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return z[t * E + a] > z[t * E + b]; });
    double mass = 0;
    for (int k = 0; k < o.top_k; ++k) {
      EXPECT_EQ(r.picks[t * o.top_k + k], idx[k]) << "t " << t << " k " << k;
      mass += r.probs[t * E + idx[k]];
    }
    double all = 0;
    for (int64_t e = 0; e < E; ++e) all += r.scores[t * E + e];
    EXPECT_NEAR(all, 1.0, 1e-5);
    EXPECT_LT(mass, 1.0);
  }
  EXPECT_EQ(std::accumulate(r.counts.begin(), r.counts.end(), 0), T * o.top_k);
}

// Grouped sigmoid routing with a bias: picks lie in the topk_group groups with the best top-2 sums, probs are the
// unbiased sigmoids renormalized and scaled.
TEST(MoeReference, GroupedSigmoidWithBias) {
  const int64_t T = 32, E = 256;
  std::vector<float> z = randn(T * E, 12), b = randn(E, 13, 0.1f);
  ref::TopkOptions o{8, true, 8, 4, true, 2.5f};
  const auto r = ref::topk_routing(z, T, E, b, o);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<std::pair<double, int>> gs;
    for (int g = 0; g < 8; ++g) {
      std::vector<double> k;
      for (int e = g * 32; e < (g + 1) * 32; ++e) k.push_back(r.keys[t * E + e]);
      std::sort(k.rbegin(), k.rend());
      gs.push_back({k[0] + k[1], g});
    }
    std::sort(gs.begin(), gs.end(), [](auto a, auto c) { return a.first > c.first || (a.first == c.first && a.second < c.second); });
    std::set<int> kept;
    for (int i = 0; i < 4; ++i) kept.insert(gs[i].second);
    double sum = 0;
    for (int k = 0; k < 8; ++k) {
      const int e = r.picks[t * 8 + k];
      EXPECT_TRUE(kept.count(e / 32)) << "t " << t << " expert " << e;
      sum += r.probs[t * E + e];
      const double s = 1 / (1 + std::exp(-static_cast<double>(z[t * E + e])));
      EXPECT_NEAR(r.scores[t * E + e], s, 1e-6);
      EXPECT_FLOAT_EQ(r.keys[t * E + e], r.scores[t * E + e] + b[e]);
    }
    EXPECT_NEAR(sum, 2.5, 1e-5);
  }
}

TEST(MoeReference, BackwardMatchesFiniteDifferences) {
  const int64_t T = 3, E = 64;
  std::vector<float> z = randn(T * E, 14), g = randn(T * E, 15);
  for (bool sig : {false, true})
    for (bool renorm : {false, true}) {
      ref::TopkOptions o{4, sig, 1, 1, renorm, 1.5f};
      const auto fwd = ref::topk_routing(z, T, E, {}, o);
      const auto dz = ref::topk_routing_bwd(g, z, fwd.routing_map, T, E, o);
      // d/dz_e of Σ g·p with the selection held fixed, in double.
      auto loss = [&](std::vector<double> zz, int64_t t) {
        std::vector<double> s(E);
        double m = -INFINITY, sum = 0;
        for (int64_t e = 0; e < E; ++e) m = std::max(m, zz[e]);
        for (int64_t e = 0; e < E; ++e) s[e] = sig ? 1 / (1 + std::exp(-zz[e])) : std::exp(zz[e] - m);
        if (!sig) {
          for (double v : s) sum += v;
          for (double& v : s) v /= sum;
        }
        double D = 1e-20;
        for (int64_t e = 0; e < E; ++e) if (fwd.routing_map[t * E + e]) D += s[e];
        double l = 0;
        for (int64_t e = 0; e < E; ++e)
          if (fwd.routing_map[t * E + e]) l += g[t * E + e] * (renorm ? s[e] / D : s[e]) * 1.5;
        return l;
      };
      for (int64_t t = 0; t < T; ++t)
        for (int64_t e = 0; e < E; e += 5) {
          std::vector<double> zz(z.begin() + t * E, z.begin() + (t + 1) * E);
          const double h = 1e-5;
          zz[e] += h;
          const double lp = loss(zz, t);
          zz[e] -= 2 * h;
          const double lm = loss(zz, t);
          EXPECT_NEAR(dz[t * E + e], (lp - lm) / (2 * h), 1e-6) << "sig " << sig << " renorm " << renorm;
        }
    }
}

TEST(MoeReference, RowIdMapIsExpertMajorPaddedAndOrdered) {
  const int64_t T = 7, E = 8;
  std::vector<uint8_t> f(T * E, 0);
  const int routes[][2] = {{0, 3}, {0, 5}, {1, 3}, {2, 0}, {3, 3}, {4, 7}, {5, 0}, {6, 3}};
  for (auto [t, e] : routes) f[t * E + e] = 1;
  const auto m = ref::row_id_map(f, T, E, 4, 24);
  EXPECT_EQ(m.counts, (std::vector<int32_t>{2, 0, 0, 4, 0, 1, 0, 1}));
  EXPECT_EQ(m.padded_counts, (std::vector<int32_t>{4, 0, 0, 4, 0, 4, 0, 4}));
  EXPECT_EQ(m.offsets, (std::vector<int32_t>{0, 4, 4, 4, 8, 8, 12, 12, 16}));
  EXPECT_EQ(m.row_id_map[2 * E + 0], 0);
  EXPECT_EQ(m.row_id_map[5 * E + 0], 1);
  EXPECT_EQ(m.row_id_map[0 * E + 3], 4);
  EXPECT_EQ(m.row_id_map[6 * E + 3], 7);
  EXPECT_EQ(m.row_id_map[0 * E + 5], 8);
  EXPECT_EQ(m.row_id_map[4 * E + 7], 12);
  EXPECT_EQ(m.row_id_map[1 * E + 1], -1);
  EXPECT_EQ(m.row_id_indices, (std::vector<int32_t>{2, 5, -1, -1, 0, 1, 3, 6, 0, -1, -1, -1, 4, -1, -1, -1, -1, -1,
                                                    -1, -1, -1, -1, -1, -1}));
}

TEST(MoeReference, PermuteAndUnpermuteRoundTrip) {
  const int64_t T = 5, E = 4, H = 3;
  std::vector<uint8_t> f(T * E, 0);
  for (int64_t t = 0; t < T; ++t) { f[t * E + t % E] = 1; f[t * E + (t + 1) % E] = 1; }
  const auto m = ref::row_id_map(f, T, E, 2, 16);
  std::vector<float> x(T * H);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i + 1);
  std::vector<uint8_t> bytes(x.size() * 4);
  std::memcpy(bytes.data(), x.data(), bytes.size());
  std::vector<float> probs(T * E, 0.0f);
  for (int64_t i = 0; i < T * E; ++i) probs[i] = f[i] ? 0.25f * static_cast<float>(i % 3 + 1) : 0.0f;
  const auto p = ref::permute(bytes, H * 4, {}, 0, false, probs, true, m, T, E, 16, 1e-30f);
  std::vector<float> rows(16 * H);
  std::memcpy(rows.data(), p.out.data(), p.out.size());
  std::vector<float> out, restore;
  ref::unpermute(rows, H, {}, m.row_id_map, T, E, out, restore);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) EXPECT_EQ(out[t * H + h], 2 * x[t * H + h]);
  ref::unpermute(rows, H, p.probs_out, m.row_id_map, T, E, out, restore);
  EXPECT_EQ(restore, probs);
  for (int64_t r = m.offsets[E]; r < 16; ++r) EXPECT_EQ(p.probs_out[r], 0.0f);
}

// ---- compiles ---------------------------------------------------------------------------------------------------

// Routing variants no preset enumerates (softmax with groups and bias, E not a power of two, top-1, an int32
// routing map) compile for sm_90a; the presets' own specializations are compiled by Compile.* in compile_test.
TEST(MoeCompile, NonPresetVariants) {
  Runtime rt(cpu_options());
  ModelConfig m;
  m.name = "test";
  m.hidden_size = 1536;
  m.num_experts = 160;
  m.num_experts_per_tok = 1;
  m.n_group = 4;
  m.topk_group = 2;
  m.expert_bias = true;
  const auto* fam = detail::find_family("moe_routing");
  ASSERT_NE(fam, nullptr);
  std::vector<detail::Specialization> specs;
  fam->enumerate(m, detail::Arch::parse("sm_90a"), specs);
  // route (with the map), topk_bwd, map_count, map_scan, map_write, route without the map, route_zero, route_map
  // (−1 fill in route, then in route_map), map_fused (moe_make_row_id_map in one launch).
  ASSERT_EQ(specs.size(), 10u);
  EXPECT_EQ(specs[9].kernel, 7u);
  EXPECT_EQ(specs[9].config[2], 4);    // one launch, the −1 rows after the CTA's arrival,
  EXPECT_EQ(specs[9].config[3], 256);  // the stream's superblock rows (PERSIST)
  EXPECT_EQ(specs[0].kernel, 0u);
  EXPECT_EQ(specs[0].params[8], 1);
  EXPECT_EQ(specs[5].kernel, 0u);
  EXPECT_EQ(specs[5].params[8], 0);
  EXPECT_EQ(specs[8].kernel, 6u);
  EXPECT_EQ(specs[8].params[9], 1);
  detail::Counters counters;
  // route with groups + bias + softmax (E = 160 in 4 groups of 40: 8 experts per lane, a group spans 5 lanes), the
  // map writer for an int32 routing map, route without the map, and route_map writing whole rows.
  detail::Specialization wr = specs[4];
  wr.params[7] = 1;
  // map_fused: the default, the −1 rows after / before the arrival × PERSIST, the three kernels (fill 0);
  // the kernels compile (the default; route_zero + 16-byte stores before the arrival, for an int32 map at E = 1024,
  // the map's largest).
  std::vector<detail::Specialization> fused;
  fam->search_space(specs[9], fused);
  ASSERT_EQ(fused.size(), 5u);
  EXPECT_EQ(fused[0].config, specs[9].config);
  EXPECT_EQ(fused[3].config[2], 3);
  EXPECT_EQ(fused[3].config[3], 0);
  EXPECT_EQ(fused[4].config[2], 0);
  detail::Specialization wide = fused[3];
  wide.params[0] = 1024;
  wide.params[7] = 1;
  for (const auto& s : {specs[0], wr, specs[5], specs[8], specs[9], wide}) {
    const auto r = detail::ensure_cubin(s, nullptr, false, counters);
    EXPECT_GT(r.cubin.size(), 1000u) << s.describe();
  }
  // route's search space (warp kernel): how the map is written (fill 0, 1, 3 / 4 = fused, −1 rows after the warp's
  // tokens / after the CTA's arrival) × (warps, tokens per warp), the fused fills with and without the stream's
  // arrival word and superblock rows (`load` 256, PERSIST: the default's), the default first; they compile.
  // Without the map: fill 0 only. (No CTA-run points: softmax.)
  std::vector<detail::Specialization> space;
  fam->search_space(specs[0], space);
  ASSERT_EQ(space.size(), 18u);
  EXPECT_EQ(space[0].config, specs[0].config);
  EXPECT_EQ(specs[0].config[3], 256);  // PERSIST
  auto point = [&](int warps, int tpw, int fill, int load) -> const detail::Specialization* {
    for (const auto& p : space)
      if (p.config[0] == warps && p.config[1] == tpw && p.config[2] == fill && p.config[3] == load) return &p;
    return nullptr;
  };
  // the 18 points: 3 shapes × (fill 0, 1 without PERSIST; fill 3, 4 with and without it)
  for (auto [w, tpw] : {std::pair{8, 4}, {16, 2}, {16, 4}})
    for (auto [fill, load] : {std::pair{0, 0}, {1, 0}, {3, 0}, {3, 256}, {4, 0}, {4, 256}})
      EXPECT_NE(point(w, tpw, fill, load), nullptr) << w << " × " << tpw << " fill " << fill << " load " << load;
  for (const auto* p : {point(16, 4, 3, 0), point(16, 4, 3, 256), point(8, 4, 4, 0), point(8, 4, 4, 256)})
    if (p) EXPECT_GT(detail::ensure_cubin(*p, nullptr, false, counters).cubin.size(), 1000u) << p->describe();
  space.clear();
  fam->search_space(specs[5], space);
  EXPECT_EQ(space.size(), 3u);
  // The default shape is 16 warps of 2 tokens, with the map (fill 4, PERSIST: session 19) and without it, a point of
  // the space.
  EXPECT_EQ(specs[5].config[0], 16);
  EXPECT_EQ(specs[5].config[1], 2);
  EXPECT_EQ(specs[0].config[0], 16);
  EXPECT_EQ(specs[0].config[1], 2);
  EXPECT_EQ(specs[0].config[2], 4);
  EXPECT_TRUE(detail::in_search_space(specs[5]));
  // Two groups per lane (E = 8 in 4 groups of 2, sigmoid, no bias, top-3): the per-lane group layout.
  detail::Specialization small = specs[5];
  small.params = {8, 3, 1, 4, 2, 0, 0, 0, 0, 0};
  EXPECT_GT(detail::ensure_cubin(small, nullptr, false, counters).cubin.size(), 1000u);
  space.clear();
  fam->search_space(specs[1], space);
  ASSERT_EQ(space.size(), 3u);
  EXPECT_GT(detail::ensure_cubin(space[2], nullptr, false, counters).cubin.size(), 1000u);
}

// A Ling-like model's routing (E = 256, top-8, sigmoid, 8 groups / top-4, renormalized, expert bias).
ModelConfig ling_like_model() {
  ModelConfig m;
  m.name = "ling-like";
  m.hidden_size = 2048;
  m.num_experts = 256;
  m.num_experts_per_tok = 8;
  m.scoring_func = "sigmoid";
  m.n_group = 8;
  m.topk_group = 4;
  m.norm_topk_prob = true;
  m.expert_bias = true;
  return m;
}
// A model's routing specializations for sm_90a, as `kiln prewarm` enumerates them.
std::vector<detail::Specialization> routing_specs(const detail::FamilyDef& fam, const ModelConfig& m) {
  std::vector<detail::Specialization> specs;
  fam.enumerate(m, detail::Arch::parse("sm_90a"), specs);
  return specs;
}
std::vector<detail::Specialization> ling_like_routing_specs(const detail::FamilyDef& fam) {
  return routing_specs(fam, ling_like_model());
}
// The CTA-run points (config tpt ≠ 0) of a route specialization's search space.
std::vector<detail::Specialization> run_points_of(const detail::FamilyDef& fam, const detail::Specialization& s) {
  std::vector<detail::Specialization> space, run;
  fam.search_space(s, space);
  for (const auto& p : space)
    if (p.config[4] != 0) run.push_back(p);
  return run;
}

// Without an expert bias the default with the map is the warp kernel, even where the CTA-run kernel serves the shape
// (session 17, kiln tune on the H100, plain sigmoid top-8 + map at 8192 × 256: 28.3 µs on the CTA-run default against
// 19.1 for the warp kernel's); the CTA-run kernel stays a point of the space there.
TEST(MoeCompile, NoBiasDefaultsToTheWarpKernel) {
  Runtime rt(cpu_options());
  const auto* fam = detail::find_family("moe_routing");
  ASSERT_NE(fam, nullptr);
  ModelConfig m = ling_like_model();  // the same routing without groups and without the bias
  m.n_group = 1;
  m.topk_group = 1;
  m.expert_bias = false;
  const auto specs = routing_specs(*fam, m), biased = ling_like_routing_specs(*fam);
  ASSERT_FALSE(specs.empty());
  ASSERT_EQ(specs[0].kernel, biased[0].kernel);  // the route kernel with the map comes first, as for Ling
  EXPECT_EQ(specs[0].config[4], 0) << specs[0].describe();
  EXPECT_EQ(biased[0].config[4], 16) << biased[0].describe();
  EXPECT_FALSE(run_points_of(*fam, specs[0]).empty());
}

// The CTA-run kernel (config tpt = 16 threads per token) is in the route space of the sigmoid shapes it serves (32 or
// 16 warps × the −1 rows at kernel start or after the arrival with the map, or both them and the prob / map rows
// after it; fill 0 without; and the session-9 options), not in the softmax ones, and is the default with the map; its
// points compile (with the map: 32
// warps with the −1 rows at the start, 16 warps with them after the arrival, 16 warps with all rows after it; a group
// spans 2 threads; without: no groups, no bias).
TEST(MoeCompile, CtaRunKernelPoints) {
  Runtime rt(cpu_options());
  const auto* fam = detail::find_family("moe_routing");
  ASSERT_NE(fam, nullptr);
  const std::vector<detail::Specialization> specs = ling_like_routing_specs(*fam);
  // The 9 of every routing model, then the warp kernel's default with the map (the fallback where the CTA-run grid
  // does not fit at once), so that prewarm compiles it, then map_fused.
  ASSERT_EQ(specs.size(), 11u);
  EXPECT_EQ(specs[10].kernel, 7u);
  EXPECT_EQ(specs[9].kernel, 0u);
  EXPECT_EQ(specs[9].params, specs[0].params);
  EXPECT_EQ(specs[9].config[4], 0);
  EXPECT_EQ(specs[9].config[2], 4);
  EXPECT_EQ(specs[9].config[3], 256);
  EXPECT_TRUE(detail::in_search_space(specs[9]));
  detail::Counters counters;
  const auto with_map = run_points_of(*fam, specs[0]);
  // The default, tpt 16 × fill 3 / 4 / 5 × 2 shapes, 16 warps with options (load bits) 1 | 2 | 4 at fill 3 / 4, 2 | 4
  // and 1 at fill 3 / 4, session 9's default (379) at fill 4 / 3 and with WAITLEAN | FASTDIV (3451), and at fill 4
  // session 9's 291 and 355; session 10's 4091 (the default before session 12's REGLATE12); session 12's 16781307;
  // session 13's 16785403 (LEAN4, round A's default) and 16801787 (+ GRP5, round C's).
  // (session 15: + 17326075, the default of sessions 13–14, now that EARLYPUT on it, 17334267, is the default)
  ASSERT_EQ(with_map.size(), 23u);
  // With the map the default is the CTA-run kernel, 16 warps, copies issued by the last warp, the −1 rows as bulk
  // copies after the arrival (fill 4; fill 3 lost in the final run's tune), approximate keys, per-stream arrival word
  // and superblock rows instead of the cooperative launch, prob / map rows by bulk copies, the bias prepared once a
  // CTA, the bases' padding rows a lane a row (session 9: load 1 | 2 | 8 | 16 | 32 | 64 | 256 = 379), and on 8 groups
  // with a bias the LEAN selection with LEAN3's staging, WAITLEAN's wait loop and FASTDIV's tail (session 10 rounds 3
  // and 4: + 128 | 512 | 1024 | 2048 = 4091) and the last 4 warps' rows by register loads (session 12 rounds B and C:
  // + 16777216 = 16781307) and the LEAN4 selection (session 13 round A: + 4096 = 16785403) with GRP5's group ranks
  // (session 13 rounds B and C: + 16384 = 16801787) and DRANK's candidate ranks (round D: + 524288 = 17326075) and
  // EARLYPUT's puts right after the bases' scan barrier (session 15 rounds B–D: + 8192 = 17334267): the
  // first point of the space; without the map the warp kernel.
  EXPECT_EQ(with_map[0].config, specs[0].config);
  EXPECT_EQ(specs[0].config[0], 16);
  EXPECT_EQ(specs[0].config[1], 2);
  EXPECT_EQ(specs[0].config[2], 4);
  EXPECT_EQ(specs[0].config[3], 17334267);
  EXPECT_EQ(specs[0].config[4], 16);
  EXPECT_EQ(specs[5].config[4], 0);
  auto find = [&](int warps, int fill, int tpt, int load) {
    for (const auto& p : with_map)
      if (p.config[0] == warps && p.config[1] == 32 / tpt && p.config[2] == fill && p.config[4] == tpt &&
          p.config[3] == load)
        return p;
    ADD_FAILURE() << "no point warps=" << warps << " fill=" << fill << " tpt=" << tpt << " load=" << load;
    return with_map[0];
  };
  for (const auto& s : {find(32, 3, 16, 0), find(16, 4, 16, 379), find(16, 3, 16, 379), find(16, 4, 16, 291),
                        find(16, 4, 16, 7), find(16, 5, 16, 0), find(16, 4, 16, 1), find(16, 4, 16, 355),
                        find(16, 4, 16, 3451), find(16, 4, 16, 4091), find(16, 4, 16, 16781307),
                        find(16, 4, 16, 16785403), find(16, 4, 16, 16801787), find(16, 4, 16, 17326075)})
    EXPECT_GT(detail::ensure_cubin(s, nullptr, false, counters).cubin.size(), 1000u) << s.describe();
  {  // (session 12: the Timeline's traced variants of 4091, with and without the prob / map row stores)
    for (int v : {static_cast<int>(kMoeRunTrace), kMoeRunTrace | kMoeRunNoRows}) {
      detail::Specialization t = find(16, 4, 16, 4091);
      t.config[5] = v;
      EXPECT_GT(detail::ensure_cubin(t, nullptr, false, counters).cubin.size(), 1000u) << t.describe();
    }
    // (helper topk4: REGLATE12, traced)
    {
      detail::Specialization t = find(16, 4, 16, 16781307);
      t.config[5] = kMoeRunTrace;
      EXPECT_GT(detail::ensure_cubin(t, nullptr, false, counters).cubin.size(), 1000u) << t.describe();
    }
    // (helper topk5: LEAN4, load 16785403 = 16781307 + 4096, and helper topk6's GRP5 + DRANK on it, 17326075 — the
    // default since session 13 round D — plain and traced)
    for (auto [load, v] : {std::pair{17326075, 0}, {17326075, static_cast<int>(kMoeRunTrace)},
                           {16785403, static_cast<int>(kMoeRunTrace)},
                           {17334267, 0}, {17334267, static_cast<int>(kMoeRunTrace)}}) {  // (session 15: EARLYPUT)
      detail::Specialization t = specs[0];
      t.config[3] = load;
      t.config[5] = v;
      EXPECT_GT(detail::ensure_cubin(t, nullptr, false, counters).cubin.size(), 1000u) << t.describe();
    }
    // (and on LeanSelection's 8 groups of 16 experts: E = 128, top-6, 3 groups kept — 8 keys a thread, no rotation)
    {
      detail::Specialization t = specs[0];
      t.params = {128, 6, 1, 8, 3, 0, 1, 0, 1, 0};
      for (int load : {16785403, 16801787, 17326075, 17334267}) {  // (and GRP5, DRANK, EARLYPUT there)
        t.config[3] = load;
        EXPECT_GT(detail::ensure_cubin(t, nullptr, false, counters).cubin.size(), 1000u) << t.describe();
      }
    }
  }
  const auto without = run_points_of(*fam, specs[5]);
  // 32 / 16 warps, + at 16 the last warp's issue with approximate keys (load 3), without them (2), approximate keys
  // (1)
  ASSERT_EQ(without.size(), 5u);
  EXPECT_EQ(without[0].config[2], 0);
  EXPECT_EQ(without[2].config[3], 3);
  EXPECT_EQ(without[3].config[3], 2);
  EXPECT_EQ(without[4].config[3], 1);
  EXPECT_GT(detail::ensure_cubin(without[2], nullptr, false, counters).cubin.size(), 1000u) << without[2].describe();
  for (const auto& w : {without[1]}) {
    detail::Specialization plain = w;
    plain.params = {64, 2, 1, 1, 1, 0, 0, 0, 0, 0};  // E = 64, top-2, sigmoid, no groups, no bias
    EXPECT_TRUE(detail::in_search_space(plain));
    EXPECT_GT(detail::ensure_cubin(plain, nullptr, false, counters).cubin.size(), 1000u) << plain.describe();
  }
  // Softmax, E = 512 and top-k above 2·topk_group keep the warp kernel only.
  for (const std::vector<int64_t>& p : {std::vector<int64_t>{256, 8, 0, 8, 4, 1, 1, 0, 1, 0},
                                        std::vector<int64_t>{512, 8, 1, 16, 4, 1, 1, 0, 1, 0},
                                        std::vector<int64_t>{256, 8, 1, 8, 3, 1, 1, 0, 1, 0}}) {
    detail::Specialization s = specs[0];
    s.params = {};
    std::copy(p.begin(), p.end(), s.params.begin());
    EXPECT_TRUE(run_points_of(*fam, s).empty()) << s.describe();
  }
}

// The CTA-run kernel's measurement variants (config field 5: the TRACE stamps, the phases left out; used only by
// tests/gpu/moe_route_measure_test.cpp through forced configs) render under their own kernel name and compile: the
// trace alone on the default, every phase left out at once, the candidates ISSUE0, ISSUELAST and COOP (with the
// approximate keys), and session 9's BULKST, BIASPRE (on the approximate and the exact keys), PERSIST, WARPPAD and
// FILLTMA.
TEST(MoeCompile, CtaRunMeasureVariants) {
  Runtime rt(cpu_options());
  const auto* fam = detail::find_family("moe_routing");
  ASSERT_NE(fam, nullptr);
  const std::vector<detail::Specialization> specs = ling_like_routing_specs(*fam);
  ASSERT_FALSE(specs.empty());
  ASSERT_EQ(specs[0].config[4], 16);  // the CTA-run default with the map
  detail::Counters counters;
  std::string plain_src, plain_name;
  detail::Specialization plain = specs[0];
  plain.config[3] = 0;
  fam->render(plain, plain_src, plain_name);
  for (int v : {static_cast<int>(kMoeRunTrace), kMoeRunNoFill | kMoeRunNoRows | kMoeRunNoTail | kMoeRunNoWait | kMoeRunNoArrive,
                kMoeRunIssue0 | kMoeRunApprox | kMoeRunTrace, kMoeRunIssueLast | kMoeRunCoop | kMoeRunTrace,
                kMoeRunIssueLast | kMoeRunCoop | kMoeRunApprox | kMoeRunBulkStore | kMoeRunBiasPre | kMoeRunTrace,
                kMoeRunBulkStore | kMoeRunBiasPre, kMoeRunIssueLast | kMoeRunPersist | kMoeRunBiasPre | kMoeRunTrace,
                kMoeRunIssueLast | kMoeRunApprox | kMoeRunPersist | kMoeRunBulkStore | kMoeRunWarpPad | kMoeRunFillTma |
                    kMoeRunTrace,
                kMoeRunIssueLast | kMoeRunCoop | kMoeRunFillTma}) {
    detail::Specialization s = specs[0];
    s.config[3] = 0;  // (no options from the config's load bits: V is the variant alone)
    s.config[5] = v;
    EXPECT_FALSE(detail::in_search_space(s));
    std::string src, name;
    fam->render(s, src, name);
    EXPECT_NE(name, plain_name);
    EXPECT_NE(name.find(", " + std::to_string(v) + ">"), std::string::npos) << name;
    EXPECT_GT(detail::ensure_cubin(s, nullptr, false, counters).cubin.size(), 1000u) << name;
  }
  // FILLTMA at fill 3 (the copy-issuing warp queues the −1 rows behind the row copies) on the default's options.
  detail::Specialization f3 = specs[0];
  f3.config[2] = 3;
  f3.config[5] = kMoeRunFillTma | kMoeRunWarpPad;
  EXPECT_GT(detail::ensure_cubin(f3, nullptr, false, counters).cubin.size(), 1000u) << f3.describe();
}

// ---- argument errors ------------------------------------------------------------------------------------------

class MoeRoutingErrors : public ::testing::Test {
 protected:
  static constexpr int64_t T = 256, E = 64;
  void call() {
    moe_topk_routing_fwd(rt, logits, bias, probs, rmap, counts, opts, nullptr, with_map ? &map : nullptr, P);
  }
  Runtime rt{cpu_options()};
  TensorRef logits = TensorRef::contiguous(fake(0), DType::f32, {T, E});
  TensorRef bias = TensorRef::contiguous(fake(1), DType::f32, {E});
  TensorRef probs = TensorRef::contiguous(fake(2), DType::f32, {T, E});
  TensorRef rmap = TensorRef::contiguous(fake(3), DType::u8, {T, E});
  TensorRef counts = TensorRef::contiguous(fake(4), DType::i32, {E});
  MoeRoutingOptions opts{8, MoeScore::sigmoid, 8, 4, true, 2.5f};
  MoeRowIdMap map{TensorRef::contiguous(fake(5), DType::i32, {T, E}),
                  TensorRef::contiguous(fake(6), DType::i32, {moe_max_out_rows(T, E, 8, 16)}), {},
                  TensorRef::contiguous(fake(7), DType::i32, {E}), TensorRef::contiguous(fake(8), DType::i32, {E + 1})};
  bool with_map = true;
  int P = 16;
};

TEST_F(MoeRoutingErrors, ValidCallReachesTheDevice) { EXPECT_REACHES_DEVICE(call()); }
TEST_F(MoeRoutingErrors, TopKLargerThanE) {
  opts = {E + 1, MoeScore::softmax, 1, 1, false, 1.0f};
  EXPECT_THROW_NAMING(call(), "top_k", InvalidArgument);
  opts.top_k = 0;
  EXPECT_THROW_NAMING(call(), "top_k", InvalidArgument);
}
TEST_F(MoeRoutingErrors, NGroupMustDivideE) {
  opts.n_group = 6;
  EXPECT_THROW_NAMING(call(), "n_group", InvalidArgument);
  opts.n_group = 64;  // > 32
  EXPECT_THROW_NAMING(call(), "n_group", InvalidArgument);
}
TEST_F(MoeRoutingErrors, GroupsMustAlignWithLanes) {
  // E = 396: a lane owns a multiple of 4 experts ≥ 13 (≤ 64) that divides or is a multiple of the group size: groups of
  // 132 (n_group 3) fit 44 per lane; groups of 99 (n_group 4) fit none.
  logits = TensorRef::contiguous(fake(0), DType::f32, {T, 396});
  probs = TensorRef::contiguous(fake(2), DType::f32, {T, 396});
  rmap = TensorRef::contiguous(fake(3), DType::u8, {T, 396});
  bias = TensorRef::contiguous(fake(1), DType::f32, {396});
  counts = TensorRef::contiguous(fake(4), DType::i32, {396});
  with_map = false;
  opts = {4, MoeScore::sigmoid, 4, 2, true, 1.0f};
  EXPECT_THROW_NAMING(call(), "n_group", InvalidArgument);
  opts.n_group = 3;
  EXPECT_REACHES_DEVICE(call());
}
TEST_F(MoeRoutingErrors, TooManyExpertsForTopk) {
  logits = TensorRef::contiguous(fake(0), DType::f32, {T, 1024});
  EXPECT_THROW_NAMING(call(), "logits", InvalidArgument);
}
TEST_F(MoeRoutingErrors, TopkGroupAboveNGroup) {
  opts.topk_group = 9;
  EXPECT_THROW_NAMING(call(), "topk_group", InvalidArgument);
}
TEST_F(MoeRoutingErrors, TopKBeyondKeptGroups) {
  opts.topk_group = 1;  // 8 experts per group, 9 wanted
  opts.top_k = 9;
  EXPECT_THROW_NAMING(call(), "top_k", InvalidArgument);
}
TEST_F(MoeRoutingErrors, NonFiniteScaling) {
  opts.scaling_factor = std::numeric_limits<float>::infinity();
  EXPECT_THROW_NAMING(call(), "scaling_factor", InvalidArgument);
}
TEST_F(MoeRoutingErrors, LogitsDtypeAndShape) {
  logits.dtype = DType::bf16;
  EXPECT_THROW_NAMING(call(), "logits", UnsupportedDtypeError);
  logits = TensorRef::contiguous(fake(0), DType::f32, {T, 62});
  EXPECT_THROW_NAMING(call(), "logits", ShapeMismatchError);
  logits = TensorRef::contiguous(fake(0), DType::f32, {T, E, 1});
  EXPECT_THROW_NAMING(call(), "logits", ShapeMismatchError);
}
TEST_F(MoeRoutingErrors, ProbsShapeOrDtypeMismatch) {
  probs = TensorRef::contiguous(fake(2), DType::f32, {T, E + 4});
  EXPECT_THROW_NAMING(call(), "probs", ShapeMismatchError);
  probs = TensorRef::contiguous(fake(2), DType::bf16, {T, E});
  EXPECT_THROW_NAMING(call(), "probs", UnsupportedDtypeError);
}
TEST_F(MoeRoutingErrors, RoutingMapShapeOrDtypeMismatch) {
  rmap = TensorRef::contiguous(fake(3), DType::u8, {T - 1, E});
  EXPECT_THROW_NAMING(call(), "routing_map", ShapeMismatchError);
  rmap = TensorRef::contiguous(fake(3), DType::f32, {T, E});
  EXPECT_THROW_NAMING(call(), "routing_map", UnsupportedDtypeError);
}
TEST_F(MoeRoutingErrors, BiasAndCounts) {
  bias = TensorRef::contiguous(fake(1), DType::f32, {E - 4});
  EXPECT_THROW_NAMING(call(), "expert_bias", ShapeMismatchError);
  bias = TensorRef::contiguous(static_cast<char*>(fake(1)) + 4, DType::f32, {E});
  EXPECT_THROW_NAMING(call(), "expert_bias", InvalidArgument);
  bias = {};
  counts.dtype = DType::i64;
  EXPECT_THROW_NAMING(call(), "tokens_per_expert", UnsupportedDtypeError);
}
TEST_F(MoeRoutingErrors, NumOutTokensTooSmall) {
  map.row_id_indices = TensorRef::contiguous(fake(6), DType::i32, {moe_max_out_rows(T, E, 8, 16) - 1});
  EXPECT_THROW_NAMING(call(), "row_id_indices", ShapeMismatchError);
}
TEST_F(MoeRoutingErrors, WorkspaceTooSmallOrWrongType) {
  const int64_t need = moe_routing_workspace_elems(T, E, opts.top_k);
  // Block (chunk) rows, superblock rows and the picks' records.
  EXPECT_EQ(need, ((T + 31) / 32 + (T + 511) / 512) * E + T * opts.top_k);
  EXPECT_EQ(moe_routing_workspace_elems(T, E), ((T + 31) / 32 + (T + 511) / 512) * E + T * E);
  const TensorRef ws = TensorRef::contiguous(fake(12), DType::i32, {need});
  EXPECT_REACHES_DEVICE(moe_topk_routing_fwd(rt, logits, bias, probs, rmap, counts, opts, nullptr, &map, P, ws));
  const TensorRef small = TensorRef::contiguous(fake(12), DType::i32, {need - 1});
  EXPECT_THROW_NAMING(moe_topk_routing_fwd(rt, logits, bias, probs, rmap, counts, opts, nullptr, &map, P, small),
                      "workspace", ShapeMismatchError);
  const TensorRef f32 = TensorRef::contiguous(fake(12), DType::f32, {need});
  EXPECT_THROW_NAMING(moe_topk_routing_fwd(rt, logits, bias, probs, rmap, counts, opts, nullptr, &map, P, f32),
                      "workspace", UnsupportedDtypeError);
}
TEST_F(MoeRoutingErrors, MultipleOfRange) {
  P = 0;
  EXPECT_THROW_NAMING(call(), "multiple_of", InvalidArgument);
  P = 256;
  EXPECT_THROW_NAMING(call(), "multiple_of", InvalidArgument);
}
TEST_F(MoeRoutingErrors, MapShapes) {
  map.row_id_map = TensorRef::contiguous(fake(5), DType::i32, {T, E - 4});
  EXPECT_THROW_NAMING(call(), "row_id_map", ShapeMismatchError);
  map.row_id_map = TensorRef::contiguous(fake(5), DType::i32, {T, E});
  map.offsets = TensorRef::contiguous(fake(8), DType::i32, {E});
  EXPECT_THROW_NAMING(call(), "offsets", ShapeMismatchError);
}
TEST_F(MoeRoutingErrors, Int32RowOverflow) {
  const int64_t t = (int64_t{1} << 31) / 8;  // T·8 + padding > INT32_MAX
  logits = TensorRef::contiguous(fake(0), DType::f32, {t, E});
  probs = TensorRef::contiguous(fake(2), DType::f32, {t, E});
  rmap = TensorRef::contiguous(fake(3), DType::u8, {t, E});
  map.row_id_map = TensorRef::contiguous(fake(5), DType::i32, {t, E});
  EXPECT_THROW_NAMING(call(), "row_id_map", InvalidArgument);
}
TEST_F(MoeRoutingErrors, BackwardShapes) {
  const TensorRef g = TensorRef::contiguous(fake(9), DType::f32, {T, E});
  TensorRef dz = TensorRef::contiguous(fake(10), DType::f32, {T, E});
  EXPECT_REACHES_DEVICE(moe_topk_routing_bwd(rt, g, logits, rmap, dz, opts, nullptr));
  dz = TensorRef::contiguous(fake(10), DType::f32, {T, E / 2});
  EXPECT_THROW_NAMING(moe_topk_routing_bwd(rt, g, logits, rmap, dz, opts, nullptr), "dlogits", ShapeMismatchError);
  EXPECT_THROW_NAMING(moe_topk_routing_bwd(rt, logits, logits, probs, logits, opts, nullptr), "routing_map",
                      UnsupportedDtypeError);
}

TEST(MoeRowIdMapErrors, Validation) {
  Runtime rt(cpu_options());
  const int64_t T = 100, E = 32;
  TensorRef rm = TensorRef::contiguous(fake(0), DType::i32, {T, E});
  MoeRowIdMap out{TensorRef::contiguous(fake(1), DType::i32, {T, E}),
                  TensorRef::contiguous(fake(2), DType::i32, {moe_max_out_rows(T, E, 2, 16)}),
                  TensorRef::contiguous(fake(3), DType::i32, {E}), {}, {}};
  EXPECT_REACHES_DEVICE(moe_make_row_id_map(rt, rm, out, 16, nullptr, 2));
  EXPECT_THROW_NAMING(moe_make_row_id_map(rt, rm, out, 16, nullptr, 0), "row_id_indices", ShapeMismatchError);
  EXPECT_THROW_NAMING(moe_make_row_id_map(rt, rm, out, 16, nullptr, 33), "max_per_token", InvalidArgument);
  // A workspace of (ceil(T/32) + ceil(T/512))·E + 1 int32 (either path's rows and the arrival word) is enough, one
  // element less is not; moe_routing_workspace_elems covers it.
  const int64_t need = (4 + 1) * E + 1;
  EXPECT_REACHES_DEVICE(
      moe_make_row_id_map(rt, rm, out, 16, nullptr, 2, TensorRef::contiguous(fake(4), DType::i32, {need})));
  EXPECT_THROW_NAMING(
      moe_make_row_id_map(rt, rm, out, 16, nullptr, 2, TensorRef::contiguous(fake(4), DType::i32, {need - 1})),
      "workspace", ShapeMismatchError);
  EXPECT_GE(moe_routing_workspace_elems(T, E, 1), need);
  rm.dtype = DType::f32;
  EXPECT_THROW_NAMING(moe_make_row_id_map(rt, rm, out, 16, nullptr, 2), "routing_map", UnsupportedDtypeError);
  rm.dtype = DType::u8;
  out.tokens_per_expert = {};
  EXPECT_THROW_NAMING(moe_make_row_id_map(rt, rm, out, 16, nullptr, 2), "tokens_per_expert", ShapeMismatchError,
                      UnsupportedDtypeError);
}

class MoePermuteErrors : public ::testing::Test {
 protected:
  static constexpr int64_t T = 128, E = 64, Hd = 2048, K = 8, P = 16;
  static constexpr int64_t kOut = T * K + E * (P - 1);  // moe_max_out_rows(T, E, K, P)
  void permute() { moe_permute(rt, inp, scale, probs, map, out, scale_out, probs_out, opts, nullptr); }
  void unpermute() { moe_unpermute(rt, x, map.row_id_map, weights, uout, restore, opts, nullptr); }
  Runtime rt{cpu_options()};
  TensorRef inp = TensorRef::contiguous(fake(0), DType::e4m3, {T, Hd});
  TensorRef scale = TensorRef::contiguous(fake(1), DType::f32, {Hd / 128, T});
  TensorRef probs = TensorRef::contiguous(fake(2), DType::f32, {T, E});
  MoeRowIdMap map{TensorRef::contiguous(fake(3), DType::i32, {T, E}), {},
                  TensorRef::contiguous(fake(4), DType::i32, {E}), {}, TensorRef::contiguous(fake(5), DType::i32, {E + 1})};
  TensorRef out = TensorRef::contiguous(fake(6), DType::e4m3, {kOut, Hd});
  TensorRef scale_out = TensorRef::contiguous(fake(7), DType::f32, {Hd / 128, kOut});
  TensorRef probs_out = TensorRef::contiguous(fake(8), DType::f32, {kOut});
  MoePermuteOptions opts{8, 16};
  TensorRef x = TensorRef::contiguous(fake(9), DType::bf16, {kOut, Hd});
  TensorRef weights = TensorRef::contiguous(fake(10), DType::f32, {kOut});
  TensorRef uout = TensorRef::contiguous(fake(11), DType::bf16, {T, Hd});
  TensorRef restore = TensorRef::contiguous(fake(12), DType::f32, {T, E});
};

TEST_F(MoePermuteErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(permute());
  EXPECT_REACHES_DEVICE(unpermute());
}
TEST_F(MoePermuteErrors, TokenMajorScalesAreAccepted) {
  scale = TensorRef::contiguous(fake(1), DType::f32, {T, Hd / 128});
  EXPECT_REACHES_DEVICE(permute());
}
TEST_F(MoePermuteErrors, ScaleFittingNeitherLayout) {
  scale = TensorRef::contiguous(fake(1), DType::f32, {T, Hd / 64});
  EXPECT_THROW_NAMING(permute(), "scale", ShapeMismatchError);
  scale = TensorRef::contiguous(fake(1), DType::f32, {Hd / 128, T, 1});
  EXPECT_THROW_NAMING(permute(), "scale", ShapeMismatchError);
  opts.scale_layout = MoeScaleLayout::token_major;  // an M-major tensor declared token-major
  scale = TensorRef::contiguous(fake(1), DType::f32, {Hd / 128, T});
  EXPECT_THROW_NAMING(permute(), "scale", ShapeMismatchError);
}
TEST_F(MoePermuteErrors, AmbiguousScaleLayoutNeedsTheFlag) {
  const int64_t t = Hd / 128;  // T == Hd/128: both layouts fit
  inp = TensorRef::contiguous(fake(0), DType::e4m3, {t, Hd});
  scale = TensorRef::contiguous(fake(1), DType::f32, {t, t});
  probs = TensorRef::contiguous(fake(2), DType::f32, {t, E});
  map.row_id_map = TensorRef::contiguous(fake(3), DType::i32, {t, E});
  EXPECT_THROW_NAMING(permute(), "scale", InvalidArgument);
  opts.scale_layout = MoeScaleLayout::m_major;
  EXPECT_REACHES_DEVICE(permute());
}
TEST_F(MoePermuteErrors, ScalesOnlyWithFp8Rows) {
  inp.dtype = DType::bf16;
  out.dtype = DType::bf16;
  EXPECT_THROW_NAMING(permute(), "scale", InvalidArgument);
  scale = {};
  EXPECT_THROW_NAMING(permute(), "scale_out", InvalidArgument);
}
TEST_F(MoePermuteErrors, NumOutTokensTooSmall) {
  out = TensorRef::contiguous(fake(6), DType::e4m3, {kOut - 1, Hd});
  EXPECT_THROW_NAMING(permute(), "out", ShapeMismatchError);
  x = TensorRef::contiguous(fake(9), DType::bf16, {kOut - 1, Hd});
  EXPECT_THROW_NAMING(unpermute(), "x", ShapeMismatchError);
}
TEST_F(MoePermuteErrors, Int32OffsetOverflow) {
  const int64_t big = int64_t{1} << 31;
  out = TensorRef::contiguous(fake(6), DType::e4m3, {big, Hd});
  EXPECT_THROW_NAMING(permute(), "out", InvalidArgument);
}
TEST_F(MoePermuteErrors, MapAndProbsMismatch) {
  map.row_id_map = TensorRef::contiguous(fake(3), DType::i32, {T + 1, E});
  EXPECT_THROW_NAMING(permute(), "inp", ShapeMismatchError);
  map.row_id_map = TensorRef::contiguous(fake(3), DType::i64, {T, E});
  EXPECT_THROW_NAMING(permute(), "row_id_map", UnsupportedDtypeError);
  map.row_id_map = TensorRef::contiguous(fake(3), DType::i32, {T, E});
  probs = TensorRef::contiguous(fake(2), DType::f32, {T, E + 1});
  EXPECT_THROW_NAMING(permute(), "probs", ShapeMismatchError);
  probs = TensorRef::contiguous(fake(2), DType::bf16, {T, E});
  EXPECT_THROW_NAMING(permute(), "probs", UnsupportedDtypeError);
  probs = TensorRef::contiguous(fake(2), DType::f32, {T, E});
  probs_out = TensorRef::contiguous(fake(8), DType::f32, {kOut + 1});
  EXPECT_THROW_NAMING(permute(), "probs_out", ShapeMismatchError);
  map.offsets = TensorRef::contiguous(fake(5), DType::i32, {E});
  probs_out = TensorRef::contiguous(fake(8), DType::f32, {kOut});
  EXPECT_THROW_NAMING(permute(), "offsets", ShapeMismatchError);
}
TEST_F(MoePermuteErrors, OutputDtypeAndRowAlignment) {
  out.dtype = DType::bf16;
  EXPECT_THROW_NAMING(permute(), "out", UnsupportedDtypeError);
  inp = TensorRef::contiguous(fake(0), DType::bf16, {T, 100});  // 200-byte rows
  EXPECT_THROW_NAMING(permute(), "inp", ShapeMismatchError);
}
TEST_F(MoePermuteErrors, UnpermuteArguments) {
  restore = TensorRef::contiguous(fake(12), DType::f32, {T, E + 4});
  EXPECT_THROW_NAMING(unpermute(), "restore_probs", ShapeMismatchError);
  restore = TensorRef::contiguous(fake(12), DType::f32, {T, E});
  weights = {};
  EXPECT_THROW_NAMING(unpermute(), "restore_probs", InvalidArgument);
  weights = TensorRef::contiguous(fake(10), DType::bf16, {kOut});
  EXPECT_THROW_NAMING(unpermute(), "weights", UnsupportedDtypeError);
  weights = TensorRef::contiguous(fake(10), DType::f32, {kOut});
  uout = TensorRef::contiguous(fake(11), DType::f32, {T, Hd});
  EXPECT_THROW_NAMING(unpermute(), "out", UnsupportedDtypeError);
  uout = TensorRef::contiguous(fake(11), DType::bf16, {T - 1, Hd});
  EXPECT_THROW_NAMING(unpermute(), "out", ShapeMismatchError);
  x.dtype = DType::e4m3;
  EXPECT_THROW_NAMING(unpermute(), "x", UnsupportedDtypeError);
  opts.top_k = E + 1;
  x.dtype = DType::bf16;
  EXPECT_THROW_NAMING(unpermute(), "top_k", InvalidArgument);
}
TEST_F(MoePermuteErrors, NullMisalignedAndStridedTensors) {
  inp.data = nullptr;
  EXPECT_THROW_NAMING(permute(), "inp", InvalidArgument);
  inp.data = static_cast<char*>(fake(0)) + 8;  // rows move as 16-byte vectors
  EXPECT_THROW_NAMING(permute(), "inp", InvalidArgument);
  inp = TensorRef::strided_2d(fake(0), DType::e4m3, T, Hd, Hd + 16);  // padded rows: not taken
  EXPECT_THROW_NAMING(permute(), "inp", ShapeMismatchError);
  inp = TensorRef::contiguous(fake(0), DType::e4m3, {T, Hd});
  map.row_id_map.data = static_cast<char*>(fake(3)) + 2;
  EXPECT_THROW_NAMING(permute(), "row_id_map", InvalidArgument);
  EXPECT_THROW_NAMING(unpermute(), "row_id_map", InvalidArgument);
  map.row_id_map.data = fake(3);
  scale.data = nullptr;
  EXPECT_THROW_NAMING(permute(), "scale", InvalidArgument);
  scale.data = fake(1);
  probs_out.data = static_cast<char*>(fake(8)) + 2;
  EXPECT_THROW_NAMING(permute(), "probs_out", InvalidArgument);
  x.data = static_cast<char*>(fake(9)) + 4;
  EXPECT_THROW_NAMING(unpermute(), "x", InvalidArgument);
  x = TensorRef::strided_2d(fake(9), DType::bf16, kOut, Hd, Hd + 8);
  EXPECT_THROW_NAMING(unpermute(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(9), DType::bf16, {kOut, Hd});
  uout.data = nullptr;
  EXPECT_THROW_NAMING(unpermute(), "out", InvalidArgument);
}
TEST_F(MoePermuteErrors, NegativeDimsAndTokenCountBeyondInt32) {
  map.row_id_map.shape[0] = -T;
  EXPECT_THROW_NAMING(permute(), "row_id_map", ShapeMismatchError);
  EXPECT_THROW_NAMING(unpermute(), "row_id_map", ShapeMismatchError);
  const int64_t big = int64_t{1} << 31;  // T·E map entries index with 32-bit ints
  map.row_id_map = TensorRef::contiguous(fake(3), DType::i32, {big, E});
  EXPECT_THROW_NAMING(permute(), "row_id_map", InvalidArgument);
  EXPECT_THROW_NAMING(unpermute(), "row_id_map", InvalidArgument);
}

class MoeBlockQuantPermuteErrors : public ::testing::Test {
 protected:
  static constexpr int64_t T = 128, E = 64, Hd = 2048, K = 8, P = 16;
  static constexpr int64_t kOut = T * K + E * (P - 1);
  static constexpr int64_t kBlocks = (kOut + 127) / 128 + E;
  void call() { moe_permute_block_quant(rt, x, probs, map, out, opts, nullptr); }
  Runtime rt{cpu_options()};
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {T, Hd});
  TensorRef probs = TensorRef::contiguous(fake(1), DType::f32, {T, E});
  MoeRowIdMap map{{}, TensorRef::contiguous(fake(2), DType::i32, {kOut}), {}, {},
                  TensorRef::contiguous(fake(3), DType::i32, {E + 1})};
  MoeBlockQuantPermuteOutputs out{TensorRef::contiguous(fake(4), DType::e4m3, {kOut, Hd}),
                                  TensorRef::contiguous(fake(5), DType::f32, {kOut * Hd / 128}),
                                  TensorRef::contiguous(fake(6), DType::e4m3, {kOut * Hd}),
                                  TensorRef::contiguous(fake(7), DType::f32, {kBlocks * Hd}),
                                  TensorRef::contiguous(fake(8), DType::f32, {kOut})};
  MoePermuteOptions opts{8, 16};
};

TEST_F(MoeBlockQuantPermuteErrors, ValidCallReachesTheDevice) {
  EXPECT_EQ(moe_block_quant_scale_blocks(kOut, E), kBlocks);
  EXPECT_REACHES_DEVICE(call());
}
TEST_F(MoeBlockQuantPermuteErrors, NeedsInverseIndicesAndOffsets) {
  map.row_id_indices = {};
  EXPECT_THROW_NAMING(call(), "row_id_indices", InvalidArgument);
  map.row_id_indices = TensorRef::contiguous(fake(2), DType::i32, {kOut});
  map.offsets = {};
  EXPECT_THROW_NAMING(call(), "offsets", InvalidArgument);
}
TEST_F(MoeBlockQuantPermuteErrors, ShapesAndDtypes) {
  x = TensorRef::contiguous(fake(0), DType::bf16, {T, 2000});
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::e4m3, {T, Hd});
  EXPECT_THROW_NAMING(call(), "x", UnsupportedDtypeError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {T, Hd});
  out.qT_scale = TensorRef::contiguous(fake(7), DType::f32, {(kBlocks - 1) * Hd});
  EXPECT_THROW_NAMING(call(), "qT_scale", ShapeMismatchError);
  out.qT_scale = TensorRef::contiguous(fake(7), DType::f32, {kBlocks * Hd});
  out.q_scale = TensorRef::contiguous(fake(5), DType::f32, {Hd / 128, kOut});
  EXPECT_THROW_NAMING(call(), "q_scale", ShapeMismatchError);
  out.q_scale = TensorRef::contiguous(fake(5), DType::f32, {kOut * Hd / 128});
  probs = TensorRef::contiguous(fake(1), DType::f32, {T, E + 4});
  EXPECT_THROW_NAMING(call(), "probs", ShapeMismatchError);
}
TEST_F(MoeBlockQuantPermuteErrors, NumOutAndMultipleOf) {
  map.row_id_indices = TensorRef::contiguous(fake(2), DType::i32, {kOut - 1});
  EXPECT_THROW_NAMING(call(), "row_id_indices", ShapeMismatchError);
  map.row_id_indices = TensorRef::contiguous(fake(2), DType::i32, {kOut});
  opts.multiple_of = 6;
  EXPECT_THROW_NAMING(call(), "", ShapeMismatchError, InvalidArgument);
}

}  // namespace
}  // namespace kiln::test
