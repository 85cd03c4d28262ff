// tests/gpu/moe_routing_test.cpp — top-k routing and the row-id map on the GPU against the CPU reference.
//
// The forward replays kiln's fp32 operation sequence on the CPU (reference/moe.cpp), so probs, routing map and
// counts are compared BIT-EXACTLY; the map (row ids, inverse indices, counts, padded counts, offsets) is compared
// exactly with the map the reference builds from the reference routing. The backward is compared with a double
// reference by relative L2 (tolerance 1e-5: fp32 sums in a different order). Outputs are poisoned first and their
// guard zones checked, so unwritten elements and out-of-bounds writes fail.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include <memory>

#include "kiln/ops/moe.hpp"
#include "gpu/moe_route_spec.hpp"
#include "reference/moe.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

std::string show(float v) {
  char b[48];
  std::snprintf(b, sizeof b, "%.9g (0x%08x)", v, std::bit_cast<uint32_t>(v));
  return b;
}

struct Case {
  int64_t T, E;
  MoeRoutingOptions o;
  bool bias = false;
  int P = 16;
  bool indices = true;
  bool workspace = false;  // pass a caller workspace instead of letting kiln allocate one
  int warps = 0, tpw = 0;  // the route kernel's config (warps per CTA, tokens per warp): 0 = the op's choice, else
  int fill = 0;            // forced through the tuner's hook together with how the map is written (0: −1 fill in
                           // route, 1: whole rows in route_map, 3 / 4: fused into route; 5: CTA-run only) and how
  int load = 0;            // the logits rows are loaded (0 only: the next one into registers)
  int tpt = 0;             // threads per token: 0 the warp kernel, 4 / 8 / 16 the CTA-run kernel (tpw 32 / tpt)
  bool with_map = true;    // build the padded map in the same call (else only probs, routing map and counts)
  int pattern = 0;         // logits: 0 random; 1 ties and ulp-level differences; 2 large biases (keys ~ ±1e3);
                           // 3 eight clear winners per token with sub-ulp differences among them; 4 / 5 non-finite biases (LeanSelection);
                           // 6 random with an isolated NaN logit in every fifth token (LeanSelection)
};

// The route kernel's specialization with the case's config (forced for the scope's lifetime by force_config).
detail::Specialization route_spec_of(Runtime& r, const Case& c) {
  return moe_route_spec(r.impl().target_arch(), c.E, c.o, c.bias, c.with_map, {c.warps, c.tpw, c.fill, c.load, c.tpt});
}
std::unique_ptr<detail::ForceConfigScope> force_config(Runtime& r, const Case& c) {
  if (c.warps == 0) return nullptr;
  const detail::Specialization s = route_spec_of(r, c);
  EXPECT_TRUE(detail::in_search_space(s)) << s.describe();
  return std::make_unique<detail::ForceConfigScope>(s);
}

std::string name(const Case& c) {
  char b[220];
  std::snprintf(b, sizeof b, "T=%lld E=%lld k=%d %s groups=%d/%d renorm=%d scale=%g bias=%d P=%d config=%dx%d fill=%d load=%d tpt=%d map=%d pattern=%d",
                static_cast<long long>(c.T), static_cast<long long>(c.E), c.o.top_k,
                c.o.score == MoeScore::sigmoid ? "sigmoid" : "softmax", c.o.n_group, c.o.topk_group, c.o.renormalize,
                c.o.scaling_factor, c.bias, c.P, c.warps, c.tpw, c.fill, c.load, c.tpt, c.with_map, c.pattern);
  return b;
}

ref::TopkOptions ref_opts(const MoeRoutingOptions& o) {
  return {o.top_k, o.score == MoeScore::sigmoid, o.n_group, o.topk_group, o.renormalize, o.scaling_factor};
}

template <typename T>
::testing::AssertionResult exact(const char* what, const std::vector<T>& got, const std::vector<T>& want,
                                 int64_t row_len = 0) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": size " << got.size() << " vs " << want.size();
  return all_equal(
      what, static_cast<int64_t>(got.size()),
      [&](int64_t i) {
        // Bit for bit; a NaN matches any NaN (its sign and payload come from the platform's default NaN: the CPU's
        // 0xffc00000, the GPU's 0x7fffffff).
        if constexpr (std::is_same_v<T, float>)
          if (std::isnan(got[i]) && std::isnan(want[i])) return true;
        return std::memcmp(&got[i], &want[i], sizeof(T)) == 0;
      },
      [&](int64_t i) {
        std::string at = row_len ? "[" + std::to_string(i / row_len) + ", " + std::to_string(i % row_len) + "]"
                                 : "[" + std::to_string(i) + "]";
        if constexpr (std::is_same_v<T, float>) return at + ": got " + show(got[i]) + ", want " + show(want[i]);
        else return at + ": got " + std::to_string(got[i]) + ", want " + std::to_string(want[i]);
      });
}

class MoeRoutingTest : public GpuTest {
 protected:
  // One forward call's inputs, expected outputs and device buffers: random logits (with a few special values, or a
  // tie pattern) and the reference's routing and map; outputs poisoned.
  struct Routing {
    Case c;
    ref::TopkResult want;
    ref::RowIdMapResult want_map;
    int64_t num_out = 0;
    DeviceBuffer zb, bb, pb, mb, cb, rb, ib, pcb, ob, wsb;
    MoeRowIdMap map;

    Routing(const Case& cs, uint64_t seed) : c(cs) {
      Runtime& r = rt();
      const int64_t T = c.T, E = c.E;
      std::vector<float> z = randn(T * E, mix_seed({seed, 1}), 2.0f);
      for (int64_t t = 0; t < T; t += 97) z[t * E + (t % E)] = -std::numeric_limits<float>::infinity();
      for (int64_t t = 5; t < T; t += 131) z[t * E + ((3 * t) % E)] = 60.0f;  // a dominant expert
      std::vector<float> b;
      if (c.bias) b = randn(E, mix_seed({seed, 2}), c.pattern == 2 ? 500.0f : 0.05f);
      if (c.pattern == 1) {
        // Exact ties and near-ties (the fast σ path must fall back to exact keys and break ties by expert index).
        if (c.bias)
          for (int64_t e = 0; e < E; ++e) b[e] = static_cast<float>(e % 3) * 1e-7f;
        const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < T; ++t)
          for (int64_t e = 0; e < E; ++e) {
            float& v = z[t * E + e];
            switch (t % 6) {
              case 0: v = 0.5f; break;                                          // every key equal (per bias class)
              case 1: v = 0.25f + static_cast<float>(e % 7) * 3e-8f; break;    // sub-ulp score differences
              case 2: v = 1.0f + static_cast<float>((e * 37) % 11) * 1e-6f; break;  // ulp-level differences
              case 3: v = e % 5 == 0 ? nan : e % 5 == 1 ? inf : e % 5 == 2 ? -inf : v; break;
              case 4: v = e % 2 ? 30.0f : -30.0f; break;                         // saturated scores
              default: break;                                                    // random
            }
          }
      }
      if (c.pattern == 3) {
        // Per token 8 clear winners (2 in each of 4 groups when there are groups) whose logits differ by sub-ulp
        // amounts: their order comes from exact keys that tie or differ by one ulp (ties to the lower expert).
        const int64_t GS = E / c.o.n_group;
        for (float& v : z) v = 0.5f * v - 4.0f;  // the others: σ ≲ 0.3
        for (int64_t t = 0; t < T; ++t)
          for (int64_t j = 0; j < 8; ++j) {
            const int64_t g = c.o.n_group >= 4 ? (j / 2 + t) % c.o.n_group : 0;
            const int64_t e = g * GS + (j % 2 == 0 ? (t * 7 + j) % GS : (t * 7 + j + GS / 2) % GS);
            z[t * E + e] = 3.0f + static_cast<float>((t + j * 5) % 4) * 2.4e-7f;
          }
        if (c.bias)
          for (int64_t e = 0; e < E; ++e) b[e] = static_cast<float>(e % 2) * 6e-8f;
      }
      if (c.bias && (c.pattern == 4 || c.pattern == 5)) {
        // Non-finite biases (session 12, helper topk5: LEAN4's candidate mask takes the sign of key − lo, which for
        // equal infinite keys is the canonical NaN's). Pattern 4: the experts of groups 3 … 7 biased NaN or −inf
        // (their keys −inf, their group scores −inf): group 3 is kept by index among the equal −inf scores, lo is −inf
        // and every key of the kept groups a candidate (more than 32: the argmax rounds). Pattern 5: two experts of
        // each of groups 0 … 3 biased +inf (group scores +inf, kept; lo +inf: exactly those 8 keys, all equal).
        const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
        const int64_t GS = E / std::max<int64_t>(c.o.n_group, 1);
        for (int64_t e = 0; e < E; ++e) {
          const int64_t g = e / GS, o = e % GS;
          if (c.pattern == 4 && g >= 3) b[e] = e % 2 ? nan : -inf;
          if (c.pattern == 5 && g < 4 && (o == 5 || o == GS / 2 + 4)) b[e] = inf;
        }
      }
      if (c.pattern == 6)  // (session 13, KEY5: a NaN logit among random ones — σ 1, a likely pick — its key NaN)
        for (int64_t t = 0; t < T; t += 5) z[t * E + (7 * t + 3) % E] = std::numeric_limits<float>::quiet_NaN();
      want = ref::topk_routing(z, T, E, b, ref_opts(c.o));
      num_out = moe_max_out_rows(T, E, c.o.top_k, c.P);
      want_map = ref::row_id_map(want.routing_map, T, E, c.P, num_out);
      zb = DeviceBuffer(r, T * E * 4);
      bb = DeviceBuffer(r, E * 4);
      pb = DeviceBuffer(r, T * E * 4);
      mb = DeviceBuffer(r, T * E);
      cb = DeviceBuffer(r, E * 4);
      rb = DeviceBuffer(r, T * E * 4);
      ib = DeviceBuffer(r, num_out * 4);
      pcb = DeviceBuffer(r, E * 4);
      ob = DeviceBuffer(r, (E + 1) * 4);
      zb.upload(z);
      if (c.bias) bb.upload(b);
      for (DeviceBuffer* x : {&pb, &mb, &cb, &rb, &ib, &pcb, &ob}) x->poison();
      map = MoeRowIdMap{rb.ref(DType::i32, {T, E}), c.indices ? ib.ref(DType::i32, {num_out}) : TensorRef{}, {},
                        pcb.ref(DType::i32, {E}), ob.ref(DType::i32, {E + 1})};
      wsb = DeviceBuffer(r, c.workspace ? moe_routing_workspace_elems(T, E) * 4 : 0);
      wsb.poison();
    }
    // moe_topk_routing_fwd on `stream` through runtime `r` (the config in force on this thread).
    void call(Runtime& r, Stream stream) {
      const int64_t T = c.T, E = c.E, ws_elems = moe_routing_workspace_elems(T, E);
      moe_topk_routing_fwd(r, zb.ref(DType::f32, {T, E}), c.bias ? bb.ref(DType::f32, {E}) : TensorRef{},
                           pb.ref(DType::f32, {T, E}), mb.ref(DType::u8, {T, E}), cb.ref(DType::i32, {E}), c.o,
                           stream, c.with_map ? &map : nullptr, c.P,
                           c.workspace ? wsb.ref(DType::i32, {ws_elems}) : TensorRef{});
    }
    // The outputs poisoned again (before a call that should rewrite them).
    void repoison() {
      for (DeviceBuffer* x : {&pb, &mb, &cb, &rb, &ib, &pcb, &ob}) x->poison();
    }
    // Everything against the reference (after the call has completed).
    void verify() const {
      SCOPED_TRACE(name(c));
      const int64_t T = c.T, E = c.E;
      for (auto [nm, x] : {std::pair{"probs", &pb}, {"routing_map", &mb}, {"tokens_per_expert", &cb},
                           {"row_id_map", &rb}, {"row_id_indices", &ib}, {"padded_counts", &pcb}, {"offsets", &ob}})
        EXPECT_TRUE(x->guards_intact()) << nm << " written outside its bounds";
      EXPECT_TRUE(exact("routing_map", mb.download<uint8_t>(T * E), want.routing_map, E));
      EXPECT_TRUE(exact("probs", pb.download<float>(T * E), want.probs, E));
      EXPECT_TRUE(exact("tokens_per_expert", cb.download<int32_t>(E), want.counts));
      if (!c.with_map) return;
      EXPECT_TRUE(exact("row_id_map", rb.download<int32_t>(T * E), want_map.row_id_map, E));
      if (c.indices) EXPECT_TRUE(exact("row_id_indices", ib.download<int32_t>(num_out), want_map.row_id_indices));
      EXPECT_TRUE(exact("padded_counts", pcb.download<int32_t>(E), want_map.padded_counts));
      EXPECT_TRUE(exact("offsets", ob.download<int32_t>(E + 1), want_map.offsets));
    }
  };

  // Routes the case's logits through moe_topk_routing_fwd (with its forced config, if any) and checks everything
  // against the reference.
  static void run_case(const Case& c, uint64_t seed) {
    SCOPED_TRACE(name(c));
    Runtime& r = rt();
    Routing x(c, seed);
    {
      const auto forced = force_config(r, c);
      x.call(r, nullptr);
      if (forced) EXPECT_GT(forced->applied(), 0u) << "the forced config was not asked for";
    }
    synchronize();
    x.verify();
  }
};

const MoeRoutingOptions kLing{8, MoeScore::sigmoid, 8, 4, true, 2.5f};
const MoeRoutingOptions kQwen{8, MoeScore::softmax, 1, 1, true, 1.0f};

TEST_F(MoeRoutingTest, LingMiniGroupedSigmoidBias) {
  for (int64_t T : {1, 7, 4096, 8192}) run_case({T, 256, kLing, true, 16, true, T == 4096}, 100 + T);
}
TEST_F(MoeRoutingTest, LingMini65536Tokens) { run_case({65536, 256, kLing, true, 16}, 7); }
TEST_F(MoeRoutingTest, QwenSoftmaxRenormalized) {
  for (int64_t T : {1, 7, 4096}) run_case({T, 128, kQwen, false, 1}, 200 + T);
}
// Plain softmax top-8 with the map at E = 256 and 128 (the warp kernel without a bias divides only the picks by the
// sum since session 17), on random logits, ties and ulp-level differences, and isolated NaN logits.
// The CTA-run route kernel (Ling, with the map: PERSIST) and moe_make_row_id_map's one launch share the stream's
// superblock rows and arrival word: calls of both on one stream, interleaved and at two token counts (halves of
// different sizes), each against the reference; the standalone map from the route's routing map.
TEST_F(MoeRoutingTest, RouteAndStandaloneMapShareTheStreamState) {
  Runtime& r = rt();
  for (int rep = 0; rep < 2; ++rep)
    for (int64_t T : {8192, 3000}) {
      SCOPED_TRACE("T=" + std::to_string(T) + " rep " + std::to_string(rep));
      Routing x({T, 256, kLing, true, 16}, 900 + T);
      x.call(r, nullptr);
      const int64_t E = 256, num_out = x.num_out;
      DeviceBuffer rb(r, T * E * 4), ib(r, num_out * 4), cb(r, E * 4), pcb(r, E * 4), ob(r, (E + 1) * 4);
      for (DeviceBuffer* y : {&rb, &ib, &cb, &pcb, &ob}) y->poison();
      MoeRowIdMap m{rb.ref(DType::i32, {T, E}), ib.ref(DType::i32, {num_out}), cb.ref(DType::i32, {E}),
                    pcb.ref(DType::i32, {E}), ob.ref(DType::i32, {E + 1})};
      moe_make_row_id_map(r, x.mb.ref(DType::u8, {T, E}), m, 16, nullptr, 8);
      // plain softmax routing with the map (the warp kernel's fused map, on the same per-stream state since session
      // 19) between the map and the CTA-run kernel's next call
      Routing y({T, 256, {8, MoeScore::softmax, 1, 1, false, 1.0f}, false, 16}, 950 + T);
      y.call(r, nullptr);
      x.repoison();
      x.call(r, nullptr);  // the route again, after the map on the same stream
      synchronize();
      x.verify();
      y.verify();
      EXPECT_TRUE(exact("row_id_map", rb.download<int32_t>(T * E), x.want_map.row_id_map, E));
      EXPECT_TRUE(exact("row_id_indices", ib.download<int32_t>(num_out), x.want_map.row_id_indices));
      EXPECT_TRUE(exact("tokens_per_expert", cb.download<int32_t>(E), x.want.counts));
      EXPECT_TRUE(exact("offsets", ob.download<int32_t>(E + 1), x.want_map.offsets));
    }
}

TEST_F(MoeRoutingTest, PlainSoftmaxWithTheMap) {
  const MoeRoutingOptions o{8, MoeScore::softmax, 1, 1, false, 1.0f};
  for (int64_t T : {1, 777, 8192}) run_case({T, 256, o, false, 16}, 500 + T);
  run_case({4100, 128, {8, MoeScore::softmax, 1, 1, false, 2.0f}, false, 32}, 510);
  for (int pattern : {1, 2, 3, 6}) {
    Case c{600, 256, o, false, 16};
    c.pattern = pattern;
    run_case(c, 520 + pattern);
    c.E = 128;
    c.o.renormalize = true;
    run_case(c, 530 + pattern);
  }
}
TEST_F(MoeRoutingTest, Top1Top2AndOddExpertCounts) {
  run_case({777, 8, {1, MoeScore::softmax, 1, 1, false, 1.0f}, false, 128}, 1);
  run_case({4096, 64, {2, MoeScore::softmax, 1, 1, false, 1.0f}, false, 16}, 2);
  run_case({4096, 64, {2, MoeScore::sigmoid, 1, 1, false, 1.0f}, true, 32}, 3);
  run_case({1000, 160, {8, MoeScore::sigmoid, 1, 1, true, 1.0f}, true, 16}, 4);
  run_case({1000, 160, {6, MoeScore::softmax, 4, 2, false, 1.5f}, true, 1}, 5);
  run_case({300, 512, {8, MoeScore::sigmoid, 16, 4, true, 2.0f}, true, 64}, 6);    // two groups per lane
  run_case({999, 96, {4, MoeScore::softmax, 2, 1, true, 1.0f}, true, 16}, 9);      // a group spans 4 lanes
  run_case({64, 12, {3, MoeScore::softmax, 1, 1, false, 1.0f}, false, 16}, 10);   // one lane per token
}
// Route configs of the warp kernel's search space (chunks of 32 or 64 tokens; the −1 fill in route, whole rows in
// route_map, or the map fused into route with the −1 fill after the warp's tokens or after the CTA's arrival), with and
// without the map, on the
// target routing and odd shapes (a partial last lane, groups spanning 5 lanes, two groups per lane, one lane per
// token); a shape whose shared memory the search space excludes (E = 512 at 16 × 4) is skipped. The fused configs at
// T = 65536 (2048 chunks: more than fit at once) exercise their fallback to fill 1.
TEST_F(MoeRoutingTest, EveryRouteConfigWithAndWithoutTheMap) {
  struct Cfg { int warps, tpw, fill, load; };
  for (const Cfg& k : {Cfg{8, 4, 0, 0}, Cfg{16, 2, 1, 0}, Cfg{16, 4, 0, 0}, Cfg{8, 4, 1, 0}, Cfg{16, 2, 0, 0},
                       Cfg{8, 4, 3, 0}, Cfg{16, 2, 3, 0}, Cfg{16, 4, 3, 0}, Cfg{8, 4, 4, 0}, Cfg{16, 2, 4, 0},
                       Cfg{16, 2, 3, 256}, Cfg{8, 4, 4, 256}, Cfg{16, 4, 3, 256}})
    for (bool with_map : {true, false}) {
      if (k.fill && !with_map) continue;
      auto forced = [&](Case c) {
        c.warps = k.warps;
        c.tpw = k.tpw;
        c.fill = k.fill;
        c.load = k.load;
        c.with_map = with_map;
        return c;
      };
      run_case(forced({8192, 256, kLing, true, 16, true, with_map && k.warps == 16}), 300 + k.warps + k.tpw);
      if (k.warps == 8 && k.tpw == 4) run_case(forced({65536, 256, kLing, true, 16}), 320 + k.fill + 4 * k.load);
      for (const Case& o : {Case{1, 256, kLing, true, 16}, Case{1000, 160, {6, MoeScore::softmax, 4, 2, false, 1.5f}, true, 1},
                            Case{300, 512, {8, MoeScore::sigmoid, 16, 4, true, 2.0f}, true, 64},
                            Case{64, 12, {3, MoeScore::softmax, 1, 1, false, 1.0f}, false, 16},
                            Case{333, 8, {3, MoeScore::sigmoid, 4, 2, true, 1.0f}, true, 16},
                            Case{8500, 64, kQwen, false, 128}})
        if (detail::in_search_space(route_spec_of(rt(), forced(o)))) run_case(forced(o), 310 + k.tpw + 2 * with_map);
    }
}
// Ties, ulp-level differences, NaN/±inf logits and huge biases must match the reference bit for bit (ties to the lower
// expert index; refills of a lane's two-entry list when it wins more than two picks; sub-ulp winners ordered by their
// exact keys).
TEST_F(MoeRoutingTest, TiesNearTiesAndLargeBiases) {
  for (int pattern : {1, 2, 3})
    for (const MoeRoutingOptions& o : {kLing, MoeRoutingOptions{8, MoeScore::sigmoid, 1, 1, true, 1.0f},
                                       MoeRoutingOptions{6, MoeScore::sigmoid, 4, 2, false, 1.5f},
                                       MoeRoutingOptions{8, MoeScore::softmax, 8, 4, true, 1.0f}}) {
      Case c{600, o.n_group == 4 ? 160 : 256, o, true, 16};
      c.pattern = pattern;
      run_case(c, 400 + pattern);
      c.warps = 16;
      c.tpw = 2;
      c.fill = 1;
      run_case(c, 410 + pattern);
      c.warps = 8;
      c.tpw = 4;
      c.fill = 3;
      run_case(c, 430 + pattern);
      c.fill = 4;
      run_case(c, 435 + pattern);
      c.fill = 1;
      c.warps = 16;
      c.tpw = 2;
      if (detail::in_search_space(route_spec_of(rt(), c))) run_case(c, 450 + pattern);
      c.with_map = false;
      c.fill = 0;
      if (detail::in_search_space(route_spec_of(rt(), c))) run_case(c, 465 + pattern);
    }
}
// The CTA-run kernel (tpt 16: contiguous token runs per CTA, 16 threads per token, rank-counted candidates, bulk row
// copies; fill 3 / 4 / 5: when the −1 rows and the prob / map rows are written; load bits: 1 approximate keys, 2 the
// copies issued by the last warp, 4 one cooperative launch without route_zero, 32 the prob / map rows by bulk copies,
// 64 the bias prepared once a CTA, 256 the per-stream arrival word and rows instead of 4, 8 the bases' padding rows
// a lane a row, 16 the −1 rows by bulk copies, 128 the LEAN selection): every config of its space on the
// target routing at the token counts (runs of 32 … 64 tokens, a partial last run, a partial last warp), with
// and without the map; the shapes it serves beside Ling (no groups,
// groups of 40 in a 40-expert thread, no bias: keys are the logits), ties (more than 32 candidates: the argmax rounds),
// NaN/±inf, huge biases and sub-ulp winners; T = 65536 (more runs than fit at once) falls back to the warp kernel.
TEST_F(MoeRoutingTest, CtaRunKernel) {
  struct Cfg { int warps, fill, tpt, load = 0; };
  for (const Cfg& k : {Cfg{32, 3, 16}, Cfg{16, 3, 16}, Cfg{32, 4, 16}, Cfg{16, 4, 16}, Cfg{32, 5, 16}, Cfg{16, 5, 16},
                       Cfg{16, 3, 16, 1}, Cfg{16, 4, 16, 1}, Cfg{16, 3, 16, 6}, Cfg{16, 4, 16, 6}, Cfg{16, 3, 16, 7},
                       Cfg{16, 4, 16, 7}, Cfg{16, 4, 16, 291}, Cfg{16, 4, 16, 379}, Cfg{16, 3, 16, 379},
                       Cfg{16, 4, 16, 3451}, Cfg{16, 4, 16, 4091}, Cfg{16, 4, 16, 16781307}})
    for (bool with_map : {true, false}) {
      if (!with_map && (k.fill != 3 || k.load > 7)) continue;  // (the session-9 options are map options)
      auto forced = [&](Case c) {
        c.warps = k.warps;
        c.tpw = 32 / k.tpt;
        c.fill = with_map ? k.fill : 0;
        c.tpt = k.tpt;
        c.load = with_map ? k.load : k.load & ~4;  // (load bit 4, the cooperative launch, is a map option)
        c.with_map = with_map;
        return c;
      };
      // Every config on the target at 7 and 8192 tokens; partial runs and warps and 65536 tokens on one shape per
      // threads-per-token with the −1 rows at the start (and all rows after the arrival at tpt 16); other shapes and
      // ties on the −1-rows-at-the-start shapes only (each shape is a compile: device time is scarce).
      for (int64_t T : {7, 8192})
        run_case(forced({T, 256, kLing, true, 16, true, T == 8192}), 500 + T + k.warps + k.fill + k.tpt + with_map);
      // (and the default, load 379 at fill 3, and at fill 4: ties, NaN / ±inf and huge biases)
      const bool full = (k.fill == 3 && k.warps == 16) || k.load >= 379;
      if (!full && !(k.fill == 5 && k.tpt == 16 && k.warps == 16)) continue;
      for (int64_t T : {1, 33, 4096, 8191})
        run_case(forced({T, 256, kLing, true, 16, true, T == 4096}), 500 + T + k.warps + k.fill + k.tpt + with_map);
      run_case(forced({65536, 256, kLing, true, 16}), 590 + k.fill + k.tpt + with_map);
      if (!full) continue;
      for (const Case& o : {Case{4096, 64, {2, MoeScore::sigmoid, 1, 1, false, 1.0f}, false, 32},
                            Case{1000, 160, {8, MoeScore::sigmoid, 1, 1, true, 1.0f}, true, 16},
                            Case{1000, 160, {4, MoeScore::sigmoid, 4, 2, true, 1.5f}, true, 1},
                            Case{3000, 256, {8, MoeScore::sigmoid, 8, 4, true, 2.5f}, false, 16},
                            Case{777, 128, {6, MoeScore::sigmoid, 8, 3, false, 1.0f}, true, 128}}) {
        // (E = 160 does not fit 16 threads per token: E/16 = 10 experts, not a multiple of 4; the approximate keys,
        // load bit 1, need a bias.)
        // (LEAN, load bit 128: 8 groups only.)
        const bool fits = o.E != 160 && (!(k.load & 1) || o.bias) &&
                          (!(k.load & 128) || (o.o.n_group == 8 && o.o.topk_group < 8));
        ASSERT_EQ(detail::in_search_space(route_spec_of(rt(), forced(o))), fits) << name(forced(o));
        if (fits) run_case(forced(o), 540 + o.E + k.warps + k.tpt + with_map);
      }
      for (int pattern : {1, 2, 3})
        for (const MoeRoutingOptions& o : {kLing, MoeRoutingOptions{8, MoeScore::sigmoid, 1, 1, true, 1.0f}}) {
          Case c = forced({600, o.n_group == 4 ? 160 : 256, o, true, 16});
          if (!detail::in_search_space(route_spec_of(rt(), c))) continue;
          c.pattern = pattern;
          run_case(c, 560 + pattern + k.warps + k.load);
          c.bias = false;
          if (detail::in_search_space(route_spec_of(rt(), c))) run_case(c, 570 + pattern + k.warps);
        }
    }
}
// The default with the map keeps per-stream state in the Runtime (PERSIST, Runtime::Impl::stream_state: an arrival
// word and two halves of superblock rows that every call leaves ready for the next call on its stream): runs of calls
// without a synchronization between them on two streams and through two runtimes, the token count growing (a new,
// larger buffer for the stream) and shrinking (a call on the larger halves), then the op captured in a CUDA graph
// (no per-stream state under capture: the cooperative launch) and replayed on the capturing stream between
// uncaptured calls and on another stream — every call bit-exact against the reference. (The two streams are
// synchronized against each other: two fused-map grids at once could each wait for CTAs the other keeps off the SMs.)
TEST_F(MoeRoutingTest, PerStreamStateAcrossStreamsRuntimesAndGraphs) {
  const auto& d = detail::driver();
  Runtime& r = rt();
  Runtime r2(test_runtime_options());
  Case base{8192, 256, kLing, true, 16};
  base.warps = 16;
  base.tpw = 2;
  base.fill = 4;
  base.load = 16781307;  // (the default: PERSIST, load bit 256, whatever a tuning file says; under capture
                         // session 9's cooperative variant)
  base.tpt = 16;
  const auto forced = force_config(r, base);
  auto at = [&](int64_t T) {
    Case c = base;
    c.T = T;
    return c;
  };
  CUstream s1 = nullptr, s2 = nullptr;
  ASSERT_EQ(d.cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(d.cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  const Stream st1 = reinterpret_cast<Stream>(s1), st2 = reinterpret_cast<Stream>(s2);
  struct Step {
    Runtime* rt;
    Stream stream;
    int64_t T;
  };
  const Step steps[] = {{&r, st1, 4096}, {&r, st1, 8192}, {&r, st1, 33},   {&r2, st1, 8192}, {&r, st1, 8191},
                        {&r2, st1, 1},   {&r, st2, 8192}, {&r, st2, 1000}, {&r2, st2, 4096}, {&r, st2, 8192},
                        {&r, st1, 7},    {&r2, st1, 8192}};
  std::vector<std::unique_ptr<Routing>> xs;
  for (size_t i = 0; i < std::size(steps); ++i)
    xs.push_back(std::make_unique<Routing>(at(steps[i].T), 700 + i));
  for (size_t i = 0; i < std::size(steps); ++i) {
    if (i > 0 && steps[i].stream != steps[i - 1].stream)
      ASSERT_EQ(d.cuStreamSynchronize(reinterpret_cast<CUstream>(steps[i - 1].stream)), CUDA_SUCCESS);
    xs[i]->call(*steps[i].rt, steps[i].stream);
  }
  synchronize();
  for (size_t i = 0; i < std::size(steps); ++i) {
    SCOPED_TRACE("step " + std::to_string(i));
    xs[i]->verify();
  }

  Routing g(at(8192), 720), a(at(8192), 721), b(at(2000), 722);
  ASSERT_EQ(d.cuStreamBeginCapture(s1, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), CUDA_SUCCESS);
  g.call(r, st1);
  CUgraph graph = nullptr;
  ASSERT_EQ(d.cuStreamEndCapture(s1, &graph), CUDA_SUCCESS);
  CUgraphExec exec = nullptr;
  ASSERT_EQ(d.cuGraphInstantiateWithFlags(&exec, graph, 0), CUDA_SUCCESS);
  a.call(r, st1);
  ASSERT_EQ(d.cuGraphLaunch(exec, s1), CUDA_SUCCESS);
  b.call(r, st1);
  synchronize();
  {
    SCOPED_TRACE("replay 1 on the capturing stream");
    g.verify();
  }
  a.verify();
  b.verify();
  g.repoison();
  a.repoison();
  a.call(r, st1);
  ASSERT_EQ(d.cuStreamSynchronize(s1), CUDA_SUCCESS);
  ASSERT_EQ(d.cuGraphLaunch(exec, s2), CUDA_SUCCESS);
  ASSERT_EQ(d.cuStreamSynchronize(s2), CUDA_SUCCESS);
  b.repoison();
  b.call(r, st1);
  synchronize();
  {
    SCOPED_TRACE("replay 2 on another stream");
    g.verify();
  }
  a.verify();
  b.verify();
  d.cuGraphExecDestroy(exec);
  d.cuGraphDestroy(graph);
  d.cuStreamDestroy(s1);
  d.cuStreamDestroy(s2);
}
// The default with the map on Ling-like shapes, load 4091 (session 9's 379 + the LEAN selection + LEAN3's staging +
// WAITLEAN + FASTDIV), and session 9's default with only WAITLEAN + FASTDIV (3451), at fill 4, against the CPU
// reference: the target at the token counts with partial runs and warps, ties / NaN / ±inf / huge biases / sub-ulp
// winners (the exact-key fallback, equal group scores at the cut, more than 16 and more than 32 candidates), and 8
// groups of 16 experts (E = 128, 3 of them kept). (MoeRoutingTest.CtaRunKernel runs the same configs among the others.)
TEST_F(MoeRoutingTest, LeanSelection) {
  // (16781307: 4091 + REGLATE12, the default in session 12; 16785403: + LEAN4, the selection in fewer instructions,
  // the default in session 13 round A; 16801787: + GRP5, the group ranks by sign bits, the default in round C;
  // 17326075: + DRANK, the candidates' ranks by DADD signs, the default in sessions 13–14; 17334267: + EARLYPUT, the
  // tail's puts right after the bases' scan barrier, the default since session 15)
  int nth = 0;
  for (int load : {17334267, 17326075, 16801787, 16785403, 16781307, 4091, 3451}) {
    // ($KILN_LEAN_FIRST = n: only the first n loads of the list — a round's time; the suite runs them all)
    static const int first = std::getenv("KILN_LEAN_FIRST") ? std::atoi(std::getenv("KILN_LEAN_FIRST")) : 0;
    if (first > 0 && nth++ >= first) break;
    SCOPED_TRACE("load " + std::to_string(load));
    std::printf("[lean] load %d\n", load);  // (progress: a round's log shows which loads ran)
    std::fflush(stdout);
    auto lean = [&](Case c) {
      c.warps = 16;
      c.tpw = 2;
      c.fill = 4;
      c.load = load;
      c.tpt = 16;
      return c;
    };
    for (int64_t T : {1, 7, 33, 4096, 8191, 8192})
      run_case(lean({T, 256, kLing, true, 16, true, T == 4096}), 800 + T + load);
    for (int pattern : {1, 2, 3}) {
      Case c = lean({600, 256, kLing, true, 16});
      c.pattern = pattern;
      run_case(c, 820 + pattern + load);
    }
    run_case(lean({777, 128, {6, MoeScore::sigmoid, 8, 3, false, 1.0f}, true, 128}), 830 + load);
    if (load >= 16781307)  // (non-finite biases and isolated NaN logits: the default, LEAN4, 16781307)
      for (int pattern : {4, 5, 6}) {
        Case c = lean({600, 256, kLing, true, 16});
        c.pattern = pattern;
        run_case(c, 840 + pattern + load);
      }
  }
}
TEST_F(MoeRoutingTest, WithoutInverseIndices) { run_case({513, 64, kQwen, false, 16, false}, 8); }

TEST_F(MoeRoutingTest, ZeroTokensGiveZeroCounts) {
  Runtime& r = rt();
  const int64_t E = 64;
  DeviceBuffer zb(r, 16), pb(r, 16), mb(r, 16), cb(r, E * 4), rb(r, 16), ob(r, (E + 1) * 4), ib(r, 64 * 4);
  cb.poison();
  ob.poison();
  ib.poison();
  MoeRowIdMap map{rb.ref(DType::i32, {0, E}), ib.ref(DType::i32, {64}), {}, {}, ob.ref(DType::i32, {E + 1})};
  moe_topk_routing_fwd(r, zb.ref(DType::f32, {0, E}), {}, pb.ref(DType::f32, {0, E}), mb.ref(DType::u8, {0, E}),
                       cb.ref(DType::i32, {E}), kQwen, nullptr, &map, 16);
  synchronize();
  EXPECT_TRUE(exact("tokens_per_expert", cb.download<int32_t>(E), std::vector<int32_t>(E, 0)));
  EXPECT_TRUE(exact("offsets", ob.download<int32_t>(E + 1), std::vector<int32_t>(E + 1, 0)));
  EXPECT_TRUE(exact("row_id_indices", ib.download<int32_t>(64), std::vector<int32_t>(64, -1)));
}

// moe_make_row_id_map from given routing maps (uint8 and int32): all tokens to one expert, experts without tokens,
// every multiple_of.
class MoeRowIdMapTest : public GpuTest {
 protected:
  static void run_map(const std::vector<uint8_t>& flags, int64_t T, int64_t E, int P, bool i32, int k) {
    SCOPED_TRACE("T=" + std::to_string(T) + " E=" + std::to_string(E) + " P=" + std::to_string(P) +
                 (i32 ? " int32" : " uint8"));
    Runtime& r = rt();
    const int64_t num_out = moe_max_out_rows(T, E, k, P) + 5;  // a tail of unused rows
    const auto want = ref::row_id_map(flags, T, E, P, num_out);
    DeviceBuffer fb(r, T * E * (i32 ? 4 : 1)), rb(r, T * E * 4), ib(r, num_out * 4), cb(r, E * 4), pcb(r, E * 4),
        ob(r, (E + 1) * 4);
    if (i32) fb.upload(std::vector<int32_t>(flags.begin(), flags.end()));
    else fb.upload(flags);
    // Every path, twice each (the stream's superblock rows and arrival word are left for the next call, or zeroed by
    // route_zero before each): one launch with the −1 rows after the CTA's arrival with the stream's rows (the
    // default) or behind route_zero; before the arrival with either; the three kernels (fill 0).
    for (auto [fill, load] : {std::pair{4, 256}, {4, 0}, {3, 256}, {3, 0}, {0, 0}}) {
      SCOPED_TRACE("fill " + std::to_string(fill) + " load " + std::to_string(load));
      const detail::Specialization s = moe_map_fused_spec(r.impl().target_arch(), E, i32, fill, load);
      detail::ForceConfigScope force(s);
      for (int rep = 0; rep < 2; ++rep) {
        for (DeviceBuffer* x : {&rb, &ib, &cb, &pcb, &ob}) x->poison();
        MoeRowIdMap m{rb.ref(DType::i32, {T, E}), ib.ref(DType::i32, {num_out}), cb.ref(DType::i32, {E}),
                      pcb.ref(DType::i32, {E}), ob.ref(DType::i32, {E + 1})};
        moe_make_row_id_map(r, fb.ref(i32 ? DType::i32 : DType::u8, {T, E}), m, P, nullptr, k);
        synchronize();
        for (DeviceBuffer* x : {&rb, &ib, &cb, &pcb, &ob}) EXPECT_TRUE(x->guards_intact());
        EXPECT_TRUE(exact("row_id_map", rb.download<int32_t>(T * E), want.row_id_map, E));
        EXPECT_TRUE(exact("row_id_indices", ib.download<int32_t>(num_out), want.row_id_indices));
        EXPECT_TRUE(exact("tokens_per_expert", cb.download<int32_t>(E), want.counts));
        EXPECT_TRUE(exact("padded_counts", pcb.download<int32_t>(E), want.padded_counts));
        EXPECT_TRUE(exact("offsets", ob.download<int32_t>(E + 1), want.offsets));
      }
      EXPECT_EQ(force.applied(), 2u);
    }
  }
};

TEST_F(MoeRowIdMapTest, AllTokensToOneExpert) {
  for (int64_t T : {1, 7, 4096, 65536}) {
    const int64_t E = 64;
    std::vector<uint8_t> f(T * E, 0);
    for (int64_t t = 0; t < T; ++t) f[t * E + 37] = 1;
    for (int P : {1, 16, 128}) run_map(f, T, E, P, T == 4096, 1);
  }
}

TEST_F(MoeRowIdMapTest, SparseExpertsAndVariableFanOut) {
  // Tokens routed to 0 … 3 experts, only even experts used; E = 160.
  const int64_t T = 8192, E = 160;
  std::vector<uint8_t> f(T * E, 0);
  uint64_t s = 12345;
  for (int64_t t = 0; t < T; ++t) {
    const int n = static_cast<int>(t % 4);
    for (int i = 0; i < n; ++i) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      f[t * E + 2 * ((s >> 33) % (E / 2))] = 1;
    }
  }
  for (int P : {1, 16, 64}) run_map(f, T, E, P, P == 64, 3);
}

TEST_F(MoeRowIdMapTest, LargestExpertCountAndEdgeTokenCounts) {
  // E = 1024 (the map's largest: 4 experts a thread in the bases), 0 … 5 experts a token; T = 0, 1, 33 (a partial
  // second chunk), 777; and T = 131072 (chunks of 128 or 256 tokens, so that the fused grid fits at once).
  for (int64_t T : {0, 1, 33, 777}) {
    const int64_t E = 1024;
    std::vector<uint8_t> f(T * E, 0);
    uint64_t s = 99 + T;
    for (int64_t t = 0; t < T; ++t)
      for (int i = 0; i < static_cast<int>(t % 6); ++i) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        f[t * E + (s >> 33) % E] = 1;
      }
    run_map(f, T, E, T == 777 ? 16 : 1, T == 33, 5);
  }
  const int64_t T = 131072, E = 64;
  std::vector<uint8_t> f(T * E, 0);
  for (int64_t t = 0; t < T; ++t) f[t * E + (t * 7) % E] = f[t * E + (t * 13 + 5) % E] = 1;
  run_map(f, T, E, 32, false, 2);
}

TEST_F(MoeRowIdMapTest, DenseRandomTop8) {
  const int64_t T = 4096, E = 256;
  std::vector<float> z = randn(T * E, 77);
  const auto routed = ref::topk_routing(z, T, E, {}, {8, false, 1, 1, false, 1.0f});
  run_map(routed.routing_map, T, E, 16, false, 8);
  run_map(routed.routing_map, T, E, 128, true, 8);
}

TEST_F(MoeRoutingTest, BackwardMatchesDoubleReference) {
  Runtime& r = rt();
  struct B { int64_t T, E; MoeRoutingOptions o; };
  for (const B& c : {B{4096, 256, kLing}, B{4096, 128, kQwen}, B{7, 64, {2, MoeScore::softmax, 1, 1, false, 1.0f}},
                     B{1, 160, {8, MoeScore::sigmoid, 1, 1, false, 2.0f}}, B{1000, 8, {1, MoeScore::softmax, 1, 1, true, 1.0f}}}) {
    SCOPED_TRACE(name({c.T, c.E, c.o}));
    const int64_t T = c.T, E = c.E;
    std::vector<float> z = randn(T * E, mix_seed({9, static_cast<uint64_t>(T), static_cast<uint64_t>(E)}));
    std::vector<float> g = randn(T * E, mix_seed({10, static_cast<uint64_t>(T)}));
    const auto fwd = ref::topk_routing(z, T, E, {}, ref_opts(c.o));
    const auto want = ref::topk_routing_bwd(g, z, fwd.routing_map, T, E, ref_opts(c.o));
    DeviceBuffer zb(r, T * E * 4), gb(r, T * E * 4), mb(r, T * E), db(r, T * E * 4);
    zb.upload(z);
    gb.upload(g);
    mb.upload(fwd.routing_map);
    db.poison();
    moe_topk_routing_bwd(r, gb.ref(DType::f32, {T, E}), zb.ref(DType::f32, {T, E}), mb.ref(DType::u8, {T, E}),
                         db.ref(DType::f32, {T, E}), c.o, nullptr);
    synchronize();
    const auto got = db.download<float>(T * E);
    // Errors are measured against the size of the incoming gradient (|dz| ≲ scale·|g|): the reference can be near 0
    // where the math cancels (top-1 renormalized: p ≡ 1, dz = 0 up to rounding), so a plain relative error of dz
    // would compare rounding noise with nothing.
    double err2 = 0, g2 = 0, gmax = 0, worst = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < T * E; ++i) {
      const double d = std::abs(got[i] - want[i]);
      err2 += d * d;
      g2 += static_cast<double>(g[i]) * g[i] * c.o.scaling_factor * c.o.scaling_factor;
      gmax = std::max(gmax, std::abs(static_cast<double>(g[i])) * c.o.scaling_factor);
      if (!(d <= worst)) { worst = d; at = i; }
    }
    EXPECT_LE(std::sqrt(err2), 1e-5 * std::sqrt(g2)) << "L2 error of dlogits relative to ||scale·dprobs||";
    EXPECT_LE(worst, 1e-5 * gmax) << "max abs error at [" << at / E << ", " << at % E << "]: got " << got[at]
                                  << ", want " << want[at];
  }
}

}  // namespace
}  // namespace kiln::test
