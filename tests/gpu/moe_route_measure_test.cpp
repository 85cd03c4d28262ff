// tests/gpu/moe_route_measure_test.cpp — measurements of the top-k forward with the padded map (issue 6: T = 8192,
// E = 256, top-8, Ling routing, P = 16) that one GPU round can take at once. Not in the MoeRouting ctest regex: run
// them with `kiln_gpu_tests --gtest_filter='MoeRouteMeasure*'`. They print, and check only what must hold whatever the
// numbers are: the variants that leave nothing out write the same bits as the default, tracing changes no output, and
// the trace's stamps are ordered.
//
//  * Ablation: forced configs of the route kernel (the warp kernel, the CTA-run kernel and its measurement variants
//    that leave a phase out: config field 5, moe_routing_args.h kMoeRunNo*) timed in one process, interleaved in
//    rounds (L2 flushed before each call, as `kiln bench`), so drift hits all alike; per config the median of the
//    round medians, their range, and p10 / p50 / p90 over every call (the CTA-run kernel's run-to-run spread against the
//    warp kernel's, same process).
//  * Timeline: the CTA-run kernel's TRACE variant (kMoeRunTrace: per-CTA SM-clock stamps of its phases, per-warp rows
//    landed / rows stored), one traced call after an L2 flush, two repeats; µs after the first CTA's entry
//    (min / p10 / p50 / p90 / max over CTAs) and per-CTA phase durations; the tail by arrival order and the CTAs / SMs
//    whose rows and loop barriers come last.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gpu/measure_util.hpp"
#include "gpu/moe_route_spec.hpp"
#include "kiln/moe_routing_args.h"
#include "kiln/ops/moe.hpp"
#include "ops/bench/moe_instances.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::detail {
extern std::atomic<unsigned long long*> moe_route_run_trace;
}  // namespace kiln::detail

namespace kiln::test {
namespace {

const MoeRoutingOptions kLing{8, MoeScore::sigmoid, 8, 4, true, 2.5f};
constexpr int64_t kT = 8192, kE = 256;

struct RouteCfg {
  const char* name;
  bool map;
  int warps, tpw, fill, tpt, variant;
  bool exact;  // writes everything: must equal the default's outputs
  int load = 0;  // 1: the run kernel's approximate-key selection (a search-space point)
};

// The route kernel's specialization at the issue's shape with the config's fields (not its variant).
detail::Specialization spec_of(Runtime& r, const RouteCfg& c) {
  return moe_route_spec(r.impl().target_arch(), kE, kLing, true, c.map, {c.warps, c.tpw, c.fill, c.load, c.tpt});
}

std::unique_ptr<detail::ForceConfigScope> force(Runtime& r, const RouteCfg& c) {
  detail::Specialization s = spec_of(r, c);
  EXPECT_TRUE(detail::in_search_space(s)) << c.name << ": " << s.describe();
  s.config[5] = c.variant;
  return std::make_unique<detail::ForceConfigScope>(s);
}

double quantile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5)];
}

// $KILN_ROUTE_ONLY (comma-separated substrings): only the configs whose names contain one of them, and the first (the
// default) — a round's fragment times the rows it decides on without compiling the others.
std::vector<RouteCfg> only(std::vector<RouteCfg> cfgs) {
  const char* env = std::getenv("KILN_ROUTE_ONLY");
  if (!env || !*env) return cfgs;
  std::vector<std::string> pats;
  for (std::string v = env; !v.empty();) {
    const size_t k = v.find(',');
    pats.push_back(v.substr(0, k));
    v = k == std::string::npos ? std::string() : v.substr(k + 1);
  }
  std::vector<RouteCfg> out{cfgs[0]};
  for (size_t i = 1; i < cfgs.size(); ++i)
    for (const std::string& p : pats)
      if (!p.empty() && std::string(cfgs[i].name).find(p) != std::string::npos) {
        out.push_back(cfgs[i]);
        break;
      }
  return out;
}

class MoeRouteMeasure : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    if (rt().impl().target_arch().sm < 90) GTEST_SKIP() << "the CTA-run kernel needs sm_90";
  }
  void TearDown() override { detail::moe_route_run_trace.store(nullptr); }
};

constexpr int kNoFill = kMoeRunNoFill, kNoRows = kMoeRunNoRows, kNoTail = kMoeRunNoTail;
constexpr int kBulkSt = kMoeRunBulkStore, kBiasPre = kMoeRunBiasPre, kPersist = kMoeRunPersist,
              kIL = kMoeRunIssueLast, kWarpPad = kMoeRunWarpPad,
              kFillTma = kMoeRunFillTma;

TEST_F(MoeRouteMeasure, Ablation) {
  const std::vector<RouteCfg> cfgs = only({
      // (session 12, helper topk3: nine candidates on 4091 in four rounds, none faster; helper topk4: REGROWS +1.27,
      // REGLATE8 −0.10, REGLATE8 + AFTER +0.79, REGPRE4 −0.20, deleted; REGLATE12 −0.22 / −0.23 in rounds B / C,
      // lower in 52 of 52 rounds: the default since — bench/NOTES.md)
      // (session 12, helper topk5: LEAN4 — the selection in fewer SASS instructions, outputs exact; session 13 round A:
      // 16.05 µs against 17.12, the default since)
      // (session 13, helper topk6: GRP5 — the group ranks by sign bits — −0.19 / −0.26 against 16785403 in rounds B / C,
      // the default since; TAIL5 +0.05, and on GRP5 STROWS +0.20, KEY5 −0.01, LO8 +0.24: deleted — bench/NOTES.md)
      // (round D: DRANK — the candidates' ranks by DADD signs — −0.13 against GRP5, −0.10 against 16785403, the default
      // since; SEGIDX −0.04: deleted)
      // (session 14, helper topk8: sixteen candidates on 17326075 in rounds A – E — the load side, the arrival's spin
      // and fill, the counts, the tail's puts — none faster; deleted: bench/NOTES.md. The timing-only rows below say
      // what each phase costs at most.)
      // (session 15, helper topk9: EARLYPUT — the tail's puts right after the bases' scan barrier — the default since
      // round D; round B: FULLQ / FULLH / FULLALL, whole rows written after the puts by the last quarter / half / all of
      // the arrivals, +0.35 / +0.69 / +0.80 µs; round C: FILLTAIL / FILLTAILH, the bulk −1 rows after the spin,
      // +0.80 / +0.24; round E: HELPFILL, the first half also filling the second half's −1 rows, +0.51: deleted —
      // bench/NOTES.md)
      {"map: load 17334267 (default)", true, 16, 2, 4, 16, 0, true, 17334267},
      {"map: load 17326075 (session 14's default)", true, 16, 2, 4, 16, 0, true, 17326075},
      {"map: load 16801787 (round C's default)", true, 16, 2, 4, 16, 0, true, 16801787},
      {"map: load 16785403 (round A's default)", true, 16, 2, 4, 16, 0, true, 16785403},
      {"map: 17334267 - no selection", true, 16, 2, 4, 16, kMoeRunNoSelect, false, 17334267},
      {"map: 17334267 - no tail", true, 16, 2, 4, 16, kNoTail, false, 17334267},
      {"map: 17334267 - no -1 fill", true, 16, 2, 4, 16, kNoFill, false, 17334267},
      {"map: 17334267 - no prob / map rows", true, 16, 2, 4, 16, kNoRows, false, 17334267},
  });




  Runtime& r = rt();
  bind_device(r);
  detail::BenchInstance with_map = detail::moe_routing_fwd_instance(r, kT, kE, kLing, true, true, 16);
  detail::BenchInstance no_map = detail::moe_routing_fwd_instance(r, kT, kE, kLing, true, false, 16);
  auto inst = [&](const RouteCfg& c) -> detail::BenchInstance& { return c.map ? with_map : no_map; };
  detail::L2Flusher l2(r, nullptr);
  // Compile + first run of each; the complete ones must equal the first complete config of their kind.
  std::map<bool, std::vector<uint8_t>> want;
  for (const RouteCfg& c : cfgs) {
    SCOPED_TRACE(c.name);
    auto f = force(r, c);
    inst(c).run(nullptr);
    synchronize();
    if (!c.exact) continue;
    const std::vector<uint8_t> got = download_outputs(inst(c));
    auto [it, first] = want.emplace(c.map, got);
    if (!first) {
      ASSERT_EQ(got.size(), it->second.size());
      const auto d = std::mismatch(got.begin(), got.end(), it->second.begin());
      EXPECT_TRUE(d.first == got.end()) << "first differing output byte " << (d.first - got.begin());
    }
  }
  // ($KILN_ROUTE_ABLATION_ROUNDS: more rounds where the arms differ by less than a round's noise)
  const char* rounds_env = std::getenv("KILN_ROUTE_ABLATION_ROUNDS");
  const int rounds = rounds_env && std::atoi(rounds_env) > 0 ? std::atoi(rounds_env) : 31, calls = 10;
  std::map<std::string, std::vector<double>> med, all;
  for (int round = 0; round < rounds; ++round)
    for (size_t i = 0; i < cfgs.size(); ++i) {
      const RouteCfg& c = cfgs[round % 2 == 0 ? i : cfgs.size() - 1 - i];
      auto f = force(r, c);
      const std::vector<double> us = detail::time_calls_us(inst(c).run, nullptr, l2, 1, calls);
      med[c.name].push_back(detail::median(us));
      all[c.name].insert(all[c.name].end(), us.begin(), us.end());
    }
  std::printf("[route ablation] T = %lld, E = %lld, Ling top-8, P = 16; %d rounds x %d calls (L2 flushed), µs: median "
              "of round medians (min .. max round median) | p10 / p50 / p90 over all calls\n",
              static_cast<long long>(kT), static_cast<long long>(kE), rounds, calls);
  for (const RouteCfg& c : cfgs) {
    const std::vector<double>& v = med[c.name];
    const std::vector<double>& a = all[c.name];
    std::printf("  %-38s %7.2f  (%6.2f .. %6.2f) | %6.2f %6.2f %6.2f\n", c.name, quantile(v, 0.5), quantile(v, 0),
                quantile(v, 1), quantile(a, 0.1), quantile(a, 0.5), quantile(a, 0.9));
  }
  // Each config against the first (the default), round by round: the paired differences' p10 / p50 / p90 and the
  // rounds in which it was faster.
  for (size_t i = 1; i < cfgs.size(); ++i) {
    const PairedDiff pd = paired_diff(med[cfgs[0].name], med[cfgs[i].name]);
    std::printf("  [vs default] %-38s %+6.2f (p10 %+.2f .. p90 %+.2f), lower in %d / %d rounds\n", cfgs[i].name,
                pd.at(0.5), pd.at(0.1), pd.at(0.9), pd.wins, rounds);
  }
  // The A/B of the two defaults with the map, round by round (the same process, alternating order).
  std::printf("[route A/B] round medians in list order (%zu configs), round by round:", cfgs.size());
  for (int k = 0; k < rounds; ++k) {
    std::printf(" ");
    for (size_t i = 0; i < cfgs.size(); ++i) std::printf("%s%.2f", i ? "/" : "", med[cfgs[i].name][k]);
  }
  std::printf("\n");
}

// The candidates with exact outputs (COOP, ISSUELAST, the approximate keys of load 1, session 9's, combinations)
// write the same bits
// as the CTA-run kernel's plain config (itself checked against the CPU reference by MoeRoutingTest.CtaRunKernel) at the token
// counts where runs are partial or single (1, 7, 33, 4095) and at 8192, after a call of another config on the same
// buffers, twice (the outputs poisoned before each call: every output element must be written).
TEST_F(MoeRouteMeasure, CandidatesMatchTheDefault) {
  Runtime& r = rt();
  bind_device(r);
  for (int64_t T : {1, 7, 33, 4095, 8192})
    for (int fill : {3, 4}) {
      detail::BenchInstance in = detail::moe_routing_fwd_instance(r, T, kE, kLing, true, true, 16);
      const RouteCfg plain{"plain", true, 16, 2, fill, 16, 0, true};
      std::vector<uint8_t> want;
      {
        auto f = force(r, plain);
        in.run(nullptr);
        synchronize();
        want = download_outputs(in);
      }
      std::vector<RouteCfg> cands;
      for (int vl : {static_cast<int>(kMoeRunApprox), static_cast<int>(kMoeRunIssueLast), kMoeRunIssueLast | kMoeRunCoop,
                     kMoeRunIssueLast | kMoeRunCoop | kMoeRunApprox,
                     // session 9: each alone where it applies, and with the default's options (load 291)
                     kMoeRunApprox | kBiasPre, kBiasPre, kBulkSt, kWarpPad, kMoeRunIssueLast | kMoeRunApprox | kPersist,
                     kMoeRunIssueLast | kMoeRunApprox | kPersist | kBulkSt | kBiasPre,
                     kMoeRunIssueLast | kPersist | kBulkSt,
                     kMoeRunIssueLast | kMoeRunApprox | kPersist | kBulkSt | kWarpPad | kFillTma,
                     kMoeRunIssueLast | kMoeRunCoop | kMoeRunApprox | kBulkSt | kFillTma,
                     // session 10: the LEAN selection alone, with the options of session 9's default, + LEAN3, + WAITLEAN +
                     // FASTDIV (the default: load 4091)
                     kMoeRunApprox | kMoeRunLean,
                     kMoeRunIssueLast | kMoeRunApprox | kPersist | kBulkSt | kWarpPad | kFillTma | kBiasPre |
                         kMoeRunLean,
                     kMoeRunIssueLast | kMoeRunApprox | kPersist | kBulkSt | kWarpPad | kFillTma | kBiasPre |
                         kMoeRunLean | kMoeRunLean3,
                     // round 3: WAITLEAN + FASTDIV on the default's options and on them + LEAN + LEAN3
                     kMoeRunIssueLast | kMoeRunApprox | kPersist | kBulkSt | kWarpPad | kFillTma | kBiasPre |
                         kMoeRunWaitLean | kMoeRunFastDiv,
                     kMoeRunIssueLast | kMoeRunApprox | kPersist | kBulkSt | kWarpPad | kFillTma | kBiasPre |
                         kMoeRunLean | kMoeRunLean3 | kMoeRunWaitLean | kMoeRunFastDiv}) {
        // (kMoeRunApprox stands for the config's load 1 here)
        RouteCfg c = plain;
        c.variant = vl & ~kMoeRunApprox;
        c.load = (vl & kMoeRunApprox) ? 1 : 0;
        cands.push_back(c);
      }
      for (const RouteCfg& c : cands) {
        SCOPED_TRACE("T " + std::to_string(T) + " fill " + std::to_string(fill) + " warps " + std::to_string(c.warps) +
                     " tpt " + std::to_string(c.tpt) + " variant " + std::to_string(c.variant) + " load " +
                     std::to_string(c.load));
        auto f = force(r, c);
        // Twice: what the first call leaves (count words, the barrier word) must not change the second's outputs.
        for (int rep = 0; rep < 2; ++rep) {
          for (const TensorRef& t : in.outputs)
            detail::check(detail::driver().cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(t.data), 0xa5,
                                                           static_cast<size_t>(t.numel()) * (t.dtype == DType::u8 ? 1 : 4),
                                                           nullptr),
                          "cuMemsetD8Async");
          in.run(nullptr);
          synchronize();
          const std::vector<uint8_t> got = download_outputs(in);
          ASSERT_EQ(got.size(), want.size());
          const auto d = std::mismatch(got.begin(), got.end(), want.begin());
          EXPECT_TRUE(d.first == got.end()) << "call " << rep << ": first differing output byte "
                                            << (d.first - got.begin()) << " of " << got.size();
        }
      }
    }
}

// One traced call after an L2 flush (two repeats) per config; an untraced call first (the outputs must match where
// the config writes everything).
TEST_F(MoeRouteMeasure, Timeline) {
  const std::vector<RouteCfg> cfgs = only({
      {"load 17334267 (default)", true, 16, 2, 4, 16, 0, true, 17334267},
      {"load 17326075 (session 14's default)", true, 16, 2, 4, 16, 0, true, 17326075},
      {"load 16785403 (round A's default)", true, 16, 2, 4, 16, 0, true, 16785403},
  });



  Runtime& r = rt();
  bind_device(r);
  detail::BenchInstance in = detail::moe_routing_fwd_instance(r, kT, kE, kLing, true, true, 16);
  const size_t max_ctas = 1024;
  DeviceBuffer tb(r, max_ctas * kMoeRunTraceSlots * 8);
  detail::L2Flusher l2(r, nullptr);
  CUevent ev0, ev1;
  detail::check(detail::driver().cuEventCreate(&ev0, CU_EVENT_DEFAULT), "cuEventCreate");
  detail::check(detail::driver().cuEventCreate(&ev1, CU_EVENT_DEFAULT), "cuEventCreate");
  for (const RouteCfg& c0 : cfgs) {
    SCOPED_TRACE(c0.name);
    std::vector<uint8_t> plain;
    {
      auto f = force(r, c0);
      in.run(nullptr);
      synchronize();
      plain = download_outputs(in);
    }
    RouteCfg c = c0;
    c.variant |= kMoeRunTrace;
    auto f = force(r, c);
    detail::moe_route_run_trace.store(static_cast<unsigned long long*>(tb.data()));
    in.run(nullptr);  // compiles the TRACE variant
    synchronize();
    for (int rep = 0; rep < 2; ++rep) {
      tb.fill(0);
      l2.flush(nullptr);
      detail::check(detail::driver().cuEventRecord(ev0, nullptr), "cuEventRecord");
      in.run(nullptr);
      detail::check(detail::driver().cuEventRecord(ev1, nullptr), "cuEventRecord");
      synchronize();
      float ms = 0;
      detail::check(detail::driver().cuEventElapsedTime(&ms, ev0, ev1), "cuEventElapsedTime");
      if (c0.exact) EXPECT_TRUE(download_outputs(in) == plain) << "tracing changed the outputs";
      EXPECT_TRUE(tb.guards_intact());
      const std::vector<uint64_t> tr = tb.download<uint64_t>(max_ctas * kMoeRunTraceSlots);
      int ctas = 0;
      while (ctas < static_cast<int>(max_ctas) && tr[static_cast<size_t>(ctas) * kMoeRunTraceSlots] != 0) ++ctas;
      ASSERT_GT(ctas, 0);
      auto at = [&](int b, int slot) { return tr[static_cast<size_t>(b) * kMoeRunTraceSlots + slot]; };
      // SM clock rate: the CTAs' clock span over their globaltimer span (median); globaltimer's granularity.
      std::vector<double> rate;
      std::vector<uint64_t> starts;
      for (int b = 0; b < ctas; ++b) {
        const uint64_t gs = at(b, kMoeRunTrStartNs), ge = at(b, kMoeRunTrEndNs);
        const uint64_t cs = at(b, kMoeRunTrStartClk), ce = at(b, kMoeRunTrEndClk);
        EXPECT_LE(gs, ge) << "CTA " << b;
        EXPECT_LE(cs, ce) << "CTA " << b;
        if (ge > gs && ce > cs) rate.push_back(static_cast<double>(ce - cs) / static_cast<double>(ge - gs));
        starts.push_back(gs);
      }
      ASSERT_FALSE(rate.empty());
      const double ghz = quantile(rate, 0.5);
      std::sort(starts.begin(), starts.end());
      uint64_t gran = ~0ull;
      for (size_t i = 1; i < starts.size(); ++i)
        if (starts[i] != starts[i - 1]) gran = std::min(gran, starts[i] - starts[i - 1]);
      const uint64_t t0 = starts.front();
      const int W = c.warps;
      // Columns: µs after the first CTA's entry.
      enum { ENTRY, INIT, ISSUED, FILLED, W0ROWS, LASTROWS, W0DONE, LASTDONE, LOOP, PDL, COUNTED, ARRIVED, WAITED,
             FILLDONE, BLOADED, SCANNED, BASES, PUT, END, NCOL };
      const char* names[NCOL] = {"entry",       "init",          "rows issued", "fill issued", "warp0 rows",
                                 "last rows",   "warp0 stored",  "last stored", "loop barrier", "pdl wait",
                                 "counted",     "arrived+late",  "spin passed", "fill done",    "bases loaded",
                                 "scan done",   "bases",         "routed put",  "end"};
      std::vector<std::vector<double>> col(NCOL);
      std::vector<double> d_rows, d_compute, d_keys, d_sel, d_emit, d_skew, d_counts, d_spin, d_bload, d_bases, d_put,
          d_exit;
      // Per warp index (the copies are issued in warp order): µs after the CTA's own entry that its rows landed, its
      // keys were formed, its picks recorded and its rows stored — whether a warp's compute keeps pace with the
      // rows' arrival (constant per-warp durations) or falls behind (growing with the warp index).
      std::vector<std::vector<double>> pw_rows(W), pw_keys(W), pw_sel(W), pw_done(W);
      for (int b = 0; b < ctas; ++b) {
        const double st = static_cast<double>(at(b, kMoeRunTrStartNs) - t0) / 1000.0;
        // (Phase stamps are globaltimer ns; 0 = not reached.)
        auto rel = [&](uint64_t ns) { return ns ? static_cast<double>(ns - t0) / 1000.0 : -1.0; };
        auto put = [&](int k, double v) {
          if (v >= 0) col[k].push_back(v);
        };
        put(ENTRY, st);
        put(INIT, rel(at(b, kMoeRunTrInit)));
        put(ISSUED, rel(at(b, kMoeRunTrIssued)));
        put(FILLED, rel(at(b, kMoeRunTrFilled)));
        double first_rows = 1e30, last_rows = -1, last_done = -1, first_done = 1e30;
        std::vector<double> comp, ks, sel, emit;
        for (int w = 0; w < W; ++w) {
          const double rl = rel(at(b, kMoeRunTrWarp + 4 * w)), dn = rel(at(b, kMoeRunTrWarp + 4 * w + 3));
          const double kd = rel(at(b, kMoeRunTrWarp + 4 * w + 1)), sd = rel(at(b, kMoeRunTrWarp + 4 * w + 2));
          if (rl < 0 || dn < 0) continue;
          if (kd >= rl && sd >= kd && dn >= sd) {
            pw_rows[w].push_back(rl - st);
            pw_keys[w].push_back(kd - st);
            pw_sel[w].push_back(sd - st);
            pw_done[w].push_back(dn - st);
            ks.push_back(kd - rl);
            sel.push_back(sd - kd);
            emit.push_back(dn - sd);
          }
          EXPECT_LE(rl, dn + 0.1) << "CTA " << b << " warp " << w;
          if (w == 0) {
            put(W0ROWS, rl);
            put(W0DONE, dn);
          }
          first_rows = std::min(first_rows, rl);
          last_rows = std::max(last_rows, rl);
          first_done = std::min(first_done, dn);
          last_done = std::max(last_done, dn);
          comp.push_back(dn - rl);
        }
        put(LASTROWS, last_rows);
        put(LASTDONE, last_done);
        const double loop = rel(at(b, kMoeRunTrLoopDone)), counted = rel(at(b, kMoeRunTrCounted)),
                     arrived = rel(at(b, kMoeRunTrArrived)), waited = rel(at(b, kMoeRunTrWaited)),
                     bases = rel(at(b, kMoeRunTrBases)), putd = rel(at(b, kMoeRunTrPut)), end = rel(at(b, kMoeRunTrEndNs));
        put(LOOP, loop);
        put(PDL, rel(at(b, kMoeRunTrPdl)));
        put(COUNTED, counted);
        put(ARRIVED, arrived);
        put(WAITED, waited);
        const double bloaded = rel(at(b, kMoeRunTrBasesLoaded));
        put(FILLDONE, rel(at(b, kMoeRunTrFillDone)));
        put(BLOADED, bloaded);
        put(SCANNED, rel(at(b, kMoeRunTrScanned)));
        put(BASES, bases);
        put(PUT, putd);
        put(END, end);
        // Ordered up to the globaltimer's step (32 ns on H100) and the store after a stamp.
        constexpr double tol = 0.1;
        EXPECT_LE(last_done, loop + tol) << "CTA " << b;
        if (counted >= 0) EXPECT_LE(loop, counted + tol) << "CTA " << b;
        if (waited >= 0 && counted >= 0) EXPECT_LE(counted, waited + tol) << "CTA " << b;
        EXPECT_LE(loop, end + tol) << "CTA " << b;
        if (last_rows >= 0) d_rows.push_back(last_rows - rel(at(b, kMoeRunTrIssued)));
        if (!comp.empty()) d_compute.push_back(quantile(comp, 0.5));
        if (!ks.empty()) {
          d_keys.push_back(quantile(ks, 0.5));
          d_sel.push_back(quantile(sel, 0.5));
          d_emit.push_back(quantile(emit, 0.5));
        }
        if (last_done >= 0) d_skew.push_back(loop - first_done);
        if (counted >= 0) d_counts.push_back(counted - loop);
        if (waited >= 0 && arrived >= 0) d_spin.push_back(waited - arrived);
        if (bases >= 0 && waited >= 0) d_bases.push_back(bases - waited);
        if (bloaded >= 0 && waited >= 0) d_bload.push_back(bloaded - waited);
        if (putd >= 0 && bases >= 0) d_put.push_back(putd - bases);
        if (putd >= 0) d_exit.push_back(end - putd);
      }
      double span = 0;
      for (int b = 0; b < ctas; ++b)
        span = std::max(span, static_cast<double>(at(b, kMoeRunTrEndNs) - t0) / 1000.0);
      std::printf("[route timeline] %s rep %d: %d CTAs, SM clock %.3f GHz, globaltimer step >= %llu ns; events %.2f "
                  "µs, CTA span %.2f µs; µs after the first CTA entry (n, min / p10 / p50 / p90 / max over CTAs)\n",
                  c0.name, rep, ctas, ghz, static_cast<unsigned long long>(gran == ~0ull ? 0 : gran), ms * 1000.0,
                  span);
      auto row = [](const char* name, const std::vector<double>& v) {
        if (v.empty()) return;
        std::printf("  %-14s %4zu %7.2f %7.2f %7.2f %7.2f %7.2f\n", name, v.size(), quantile(v, 0), quantile(v, 0.1),
                    quantile(v, 0.5), quantile(v, 0.9), quantile(v, 1));
      };
      for (int k = 0; k < NCOL; ++k) row(names[k], col[k]);
      row("d rows land", d_rows);      // issued → the CTA's last warp's rows landed
      row("d warp comp", d_compute);   // a warp's rows landed → its rows stored (median over the CTA's warps)
      row(" . keys", d_keys);           //   rows landed → keys formed (σ, bias)
      row(" . select", d_sel);          //   keys → picks recorded (groups, candidates, list, ranks)
      row(" . emit", d_emit);           //   picks → prob / map rows stored
      row("d loop skew", d_skew);      // the CTA's first warp done → the loop barrier passed
      row("d counts", d_counts);       // loop barrier → counts published
      row("d spin", d_spin);           // arrival (+ late stores) → every CTA arrived
      row("d bases", d_bases);         // spin passed → bases done
      row(" . loads", d_bload);         //   spin passed → thread 0's count rows landed
      row("d put", d_put);             // bases → routed rows stored (thread 0)
      row("d exit", d_exit);           // routed rows → the CTA's end
      // The tail by arrival order (session 12): CTAs sorted by their arrival ("counted"); the last 26 (≈ 10 %) against
      // the rest — spin passed → fill done / thread 0's rows loaded / scan done (every row of the CTA in) / end; and
      // the CTA that ends last: its arrival rank, chunk in its superblock (b % 16: its chunk rows), SM partner's rank.
      {
        std::vector<std::pair<double, int>> order;
        for (int b = 0; b < ctas; ++b) {
          const uint64_t cn = at(b, kMoeRunTrCounted);
          if (cn) order.push_back({static_cast<double>(cn - t0) / 1000.0, b});
        }
        std::sort(order.begin(), order.end());
        std::vector<int> rank(ctas, -1);
        for (size_t i = 0; i < order.size(); ++i) rank[order[i].second] = static_cast<int>(i);
        auto rl = [&](int b, int slot) {
          const uint64_t v = at(b, slot);
          return v ? static_cast<double>(v - t0) / 1000.0 : -1.0;
        };
        const int late_from = static_cast<int>(order.size()) - std::max(1, static_cast<int>(order.size()) / 10);
        std::vector<double> lf[2], ll[2], ls[2], le[2];
        int last_b = 0;
        for (int b = 0; b < ctas; ++b) {
          if (rl(b, kMoeRunTrEndNs) > rl(last_b, kMoeRunTrEndNs)) last_b = b;
          if (rank[b] < 0) continue;
          const int g = rank[b] >= late_from ? 1 : 0;
          const double w = rl(b, kMoeRunTrWaited);
          if (w < 0) continue;
          if (rl(b, kMoeRunTrFillDone) >= 0) lf[g].push_back(rl(b, kMoeRunTrFillDone) - w);
          if (rl(b, kMoeRunTrBasesLoaded) >= 0) ll[g].push_back(rl(b, kMoeRunTrBasesLoaded) - w);
          if (rl(b, kMoeRunTrScanned) >= 0) ls[g].push_back(rl(b, kMoeRunTrScanned) - w);
          le[g].push_back(rl(b, kMoeRunTrEndNs) - w);
        }
        for (int g = 0; g < 2; ++g)
          std::printf("  %s arrivals (%zu): after the spin, p50 / max µs: fill done %.2f / %.2f, rows loaded %.2f / "
                      "%.2f, scan done %.2f / %.2f, end %.2f / %.2f\n",
                      g ? "last 10% " : "first 90%", le[g].size(), quantile(lf[g], 0.5), quantile(lf[g], 1),
                      quantile(ll[g], 0.5), quantile(ll[g], 1), quantile(ls[g], 0.5), quantile(ls[g], 1),
                      quantile(le[g], 0.5), quantile(le[g], 1));
        int partner = -1;
        for (int b = 0; b < ctas; ++b)
          if (b != last_b && at(b, kMoeRunTrSm) == at(last_b, kMoeRunTrSm)) partner = b;
        std::printf("  last to end: CTA %d (arrival rank %d of %zu, chunk %d of its superblock), counted %.2f, spin "
                    "passed %.2f, fill done %.2f, rows loaded %.2f, scan done %.2f, bases %.2f, put %.2f, end %.2f; "
                    "SM partner CTA %d rank %d\n",
                    last_b, rank[last_b], order.size(), last_b % 16, rl(last_b, kMoeRunTrCounted),
                    rl(last_b, kMoeRunTrWaited), rl(last_b, kMoeRunTrFillDone), rl(last_b, kMoeRunTrBasesLoaded),
                    rl(last_b, kMoeRunTrScanned), rl(last_b, kMoeRunTrBases), rl(last_b, kMoeRunTrPut),
                    rl(last_b, kMoeRunTrEndNs), partner, partner >= 0 ? rank[partner] : -1);
        // The CTAs whose last rows landed last and whose loop barrier came last (the DRAM service skew): their SM
        // ids, to see whether the same SMs are late in every repeat.
        {
          std::vector<std::pair<double, int>> lr, lb;
          for (int b = 0; b < ctas; ++b) {
            double m = -1;
            for (int w = 0; w < W; ++w) m = std::max(m, rl(b, kMoeRunTrWarp + 4 * w));
            lr.push_back({m, b});
            lb.push_back({rl(b, kMoeRunTrLoopDone), b});
          }
          std::sort(lr.rbegin(), lr.rend());
          std::sort(lb.rbegin(), lb.rend());
          std::printf("  latest rows (µs: CTA/SM):");
          for (int i = 0; i < 12 && i < ctas; ++i)
            std::printf(" %.2f:%d/%d", lr[i].first, lr[i].second, static_cast<int>(at(lr[i].second, kMoeRunTrSm)));
          std::printf("\n  latest loop barriers (µs: CTA/SM):");
          for (int i = 0; i < 12 && i < ctas; ++i)
            std::printf(" %.2f:%d/%d", lb[i].first, lb[i].second, static_cast<int>(at(lb[i].second, kMoeRunTrSm)));
          std::printf("\n");
        }
        // End by the CTA's chunk index in its superblock (its chunk rows: 0 … 15), p50 over the 16 superblocks.
        std::printf("  end − spin passed by chunk in superblock (p50 µs):");
        for (int j = 0; j < 16; ++j) {
          std::vector<double> v;
          for (int b = j; b < ctas; b += 16)
            if (rl(b, kMoeRunTrWaited) >= 0) v.push_back(rl(b, kMoeRunTrEndNs) - rl(b, kMoeRunTrWaited));
          std::printf(" %.2f", quantile(v, 0.5));
        }
        std::printf("\n");
      }
      std::printf("  per warp (p50 over CTAs, µs after the CTA's entry): warp: rows landed / keys / picks / stored\n ");
      for (int w = 0; w < W; ++w)
        std::printf(" %d: %.2f/%.2f/%.2f/%.2f%s", w, quantile(pw_rows[w], 0.5), quantile(pw_keys[w], 0.5),
                    quantile(pw_sel[w], 0.5), quantile(pw_done[w], 0.5), w % 4 == 3 ? "\n " : "");
      std::printf("\n");
    }
    detail::moe_route_run_trace.store(nullptr);
  }
  detail::check(detail::driver().cuEventDestroy(ev0), "cuEventDestroy");
  detail::check(detail::driver().cuEventDestroy(ev1), "cuEventDestroy");
}

}  // namespace
}  // namespace kiln::test
