// tests/gpu/rms_norm_block_quant_stream_measure_test.cpp — measurements of the mode-2 stream kernel (issue 3's
// M = 8192, N = 2048 / 7168 targets) that one GPU round can take at once. Not in the RmsNormBlockQuant ctest regex: run
// them with `kiln_gpu_tests --gtest_filter='RmsqStreamMeasure*'`. They print, and check only what must hold whatever
// the numbers are: every variant writes the same bits as its baseline structure, tracing changes no output, and the
// trace's records are ordered.
//
//  * Sweep: forced stream configs (the variant bits in the config's overlap field) timed in one process, interleaved
//    in rounds (L2 flushed before each call, as `kiln bench`), so run-to-run drift hits all alike; one compile each.
//  * Timeline: the TRACE variant's per-CTA records (rms_norm_block_quant_stream_args.h): when each CTA's first block
//    lands, and per item how long it waits for its blocks, sums, waits for the exchange and quantizes; CTA end times.
//  * $KILN_MEASURE_ONLY / $KILN_MEASURE_SKIP select configs by name (only() below); each config prints a "[config]" line
//    before it runs, so a call that does not finish names its config.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <tuple>
#include <utility>
#include <string>
#include <vector>

#include "kiln/ops/rms_norm.hpp"
#include "kiln/rms_norm_block_quant_stream_args.h"
#include "ops/bench/rms_norm.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "measure_util.hpp"
#include "test_util.hpp"

namespace kiln::detail {
bool rms_norm_block_quant_force_config(int64_t N, int mode, int warps, int col_blocks, int prefetch, int stages,
                                       int overlap, int exchange);
extern std::atomic<unsigned long long*> rms_norm_block_quant_stream_trace;
extern std::atomic<int> rms_norm_block_quant_stream_grid;
}  // namespace kiln::detail

namespace kiln::test {
namespace {

struct StreamCfg {
  const char* name;
  int64_t N;
  int col_blocks, stages, overlap;
  const char* baseline;  // the config whose outputs it must equal bit for bit (same chunking: same Σx² order)
  bool round = true;     // round_scale
  int grid = 0;          // CTAs launched (detail::rms_norm_block_quant_stream_grid; 0: the host's choice)
  int prefetch = 1;      // the config's prefetch field (session 14: 1 | the codes' L2 hint bits)
  bool cold = false;     // session 14: before each timed call's L2 flush, persisting L2 lines reset to normal
  bool host = false;     // no config forced: the host's default (make_spec and launch_stream's rules)
  int64_t M = 8192;      // tokens
  const char* control = nullptr;  // session 15: a second row to pair it with (its code-shape control)
  bool cold_code = false;  // session 22: every SM's instruction caches evicted before each timed call (--cold-code)
};

// Session 14: the context's persisting-L2 controls (cuda.h's CU_LIMIT_PERSISTING_L2_CACHE_SIZE; evict-last lines may
// live there), resolved from libcuda directly (measurement only: kiln's driver table does not carry them).
struct PersistL2 {
  using Reset = CUresult (*)();
  using GetLimit = CUresult (*)(size_t*, CUlimit);
  using SetLimit = CUresult (*)(CUlimit, size_t);
  Reset reset = nullptr;
  GetLimit get = nullptr;
  SetLimit set = nullptr;
  PersistL2() {
    if (void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD)) {
      reset = reinterpret_cast<Reset>(dlsym(lib, "cuCtxResetPersistingL2Cache"));
      get = reinterpret_cast<GetLimit>(dlsym(lib, "cuCtxGetLimit"));
      set = reinterpret_cast<SetLimit>(dlsym(lib, "cuCtxSetLimit"));
    }
  }
  size_t limit() const {
    size_t v = 0;
    if (get) detail::check(get(&v, CU_LIMIT_PERSISTING_L2_CACHE_SIZE), "cuCtxGetLimit");
    return v;
  }
};
const PersistL2& persist_l2() {
  static const PersistL2 p;
  return p;
}
// detail::time_calls_us with, for `cold`, the persisting L2 lines reset to normal before each call's flush (so the
// 256 MB read evicts evict-last lines a previous call left as well).
std::vector<double> timed_calls(const std::function<void(Stream)>& fn, detail::L2Flusher& l2, int warmup, int calls,
                                bool cold) {
  if (!cold) return detail::time_calls_us(fn, nullptr, l2, warmup, calls);
  return detail::time_calls_us(fn, nullptr, l2, warmup, calls, [] {
    detail::check(persist_l2().reset(), "cuCtxResetPersistingL2Cache");
  });
}

void force(const StreamCfg& c) {
  std::printf("[config] %s\n", c.name);  // (progress: a config that does not finish is the last one printed)
  std::fflush(stdout);
  detail::rms_norm_block_quant_stream_grid.store(c.grid);
  if (c.host) {
    ASSERT_TRUE(detail::rms_norm_block_quant_force_config(0, 0, 0, 0, 0, 0, 0, 0));
    return;
  }
  ASSERT_TRUE(detail::rms_norm_block_quant_force_config(c.N, 2, 16, c.col_blocks, c.prefetch, c.stages, c.overlap, 3))
      << "not a search-space point: " << c.name;
}

// '|'-separated parts of an environment variable (none when unset).
std::vector<std::string> env_parts(const char* var) {
  std::vector<std::string> parts;
  const char* e = std::getenv(var);
  for (std::string rest = e ? e : "";;) {
    const size_t bar = rest.find('|');
    if (!rest.substr(0, bar).empty()) parts.push_back(rest.substr(0, bar));
    if (bar == std::string::npos) break;
    rest = rest.substr(bar + 1);
  }
  return parts;
}
// $KILN_MEASURE_ONLY: '|'-separated parts of config names; only the configs whose names contain one of them run (with
// their baselines), in their order (unset or empty: all); $KILN_MEASURE_SKIP: '|'-separated whole names that do not.
std::vector<StreamCfg> only(const std::vector<StreamCfg>& cfgs) {
  const std::vector<std::string> parts = env_parts("KILN_MEASURE_ONLY"), skip = env_parts("KILN_MEASURE_SKIP");
  std::vector<bool> keep(cfgs.size(), parts.empty());
  for (size_t i = 0; i < cfgs.size(); ++i) {
    for (const std::string& p : parts)
      if (std::string(cfgs[i].name).find(p) != std::string::npos) keep[i] = true;
    for (const std::string& p : skip)
      if (p == cfgs[i].name) keep[i] = false;
  }
  for (size_t i = 0; i < cfgs.size(); ++i)
    if (keep[i] && cfgs[i].baseline)
      for (size_t j = 0; j < cfgs.size(); ++j)
        if (std::string(cfgs[j].name) == cfgs[i].baseline) keep[j] = true;
  std::vector<StreamCfg> out;
  for (size_t i = 0; i < cfgs.size(); ++i)
    if (keep[i]) out.push_back(cfgs[i]);
  return out;
}

class RmsqStreamMeasure : public GpuTest {
 protected:
  void TearDown() override {
    detail::rms_norm_block_quant_force_config(0, 0, 0, 0, 0, 0, 0, 0);
    detail::rms_norm_block_quant_stream_trace.store(nullptr);
    detail::rms_norm_block_quant_stream_grid.store(0);
  }
};

// Overlap bits: 1 base, 2 LEAN, 32 FIRST, 128 START, 256 TIGHT, 512 SPLIT, 2048 FLAT, 16384 WLDG; stages = ring
// slots. (Measured here and deleted, rows in bench/NOTES.md: TABLE 1024, AHEADX 4096, SPLIT2 8192; session 9's HELP
// 32768, HX 131072, EPS 262144; session 10's DYN 524288, HALF0 1048576, L2PF 2097152, EARLYR 4194304. Session 7 and
// round 1 of session 8 measured FIRST + START, one block an item and round_scale 0 here; session 11's SKEW 8388608,
// MID 16777216, PSKEW 33554432, START on 19203 and EPOLL 67108864 were measured and deleted; session 12's FR 134217728,
// its parts FRC 4, FRR 8, FRB 16, the control FRN 1073741824, NOSLEEP 268435456 and EAGER 536870912 likewise;
// session 13's GATE 65536 (on FIRST + START), FS (FIRST + START on 19203) and HP1 / HP1b (19203 with prefetch 2)
// likewise.)
// The sweep's rows (the variants under measurement go here, each with its baseline). Session 12 (q2d) measured the
// default's cubin on P CTAs here (the host's grid: 128 at N = 2048, M = 8192; the wave at 7168). Session 14 (q2f):
// round B the L2 hints on 19203 (config prefetch 1 | bits) and a start-up L2 prefetch, round C QEL (16, the codes
// stored evict-last) with "cold" rows (the persisting L2 lines reset to normal before each call's flush), round D QELD
// (QEL with the code lines demoted at the end), round E the final code at M = 8192 (bench/NOTES.md); round F: the
// host's default (QEL from N = 4096 where M·N ≥ 2^25) against the old default (19203, prefetch 1) forced at other M —
// 7168 × 5120 (just above the rule's 2^25), 7168 × 16384, 4096 × 16384.
// Session 22: round_scale 0 at N = 2048, one and two blocks an item, LEAN and TIGHT, each timed as `kiln bench` does
// and with cold instruction caches (`kiln bench --cold-code`: L2Flusher::set_cold_code) — the tuner read the two-block
// TIGHT kernel (6520 SASS instructions) ≈ 5 µs slower re-timed right after another kernel than repeated, which code
// size would explain; the power-of-two default for reference. Baselines: the same chunking (one or two blocks an
// item); a cold row's baseline is its warm twin (the same config: the same bits).
std::vector<StreamCfg> session22_cfgs() {
  auto row = [](const char* name, int cb, int overlap, bool round, const char* base, bool cold_code) {
    StreamCfg c{name, 2048, cb, 2 * cb, overlap, base, round};
    c.cold_code = cold_code;
    return c;
  };
  return {
      row("rs0 LEAN cb2", 2, 3, false, nullptr, false),
      row("rs0 TIGHT cb2 (19203)", 2, 19203, false, "rs0 LEAN cb2", false),
      row("rs0 LEAN cb1", 1, 3, false, nullptr, false),
      row("rs0 TIGHT cb1 (17155)", 1, 17155, false, "rs0 LEAN cb1", false),
      row("rs1 default (19203)", 2, 19203, true, nullptr, false),
      row("rs0 LEAN cb2 cold", 2, 3, false, "rs0 LEAN cb2", true),
      row("rs0 TIGHT cb2 cold", 2, 19203, false, "rs0 TIGHT cb2 (19203)", true),
      row("rs0 LEAN cb1 cold", 1, 3, false, "rs0 LEAN cb1", true),
      row("rs0 TIGHT cb1 cold", 1, 17155, false, "rs0 TIGHT cb1 (17155)", true),
      row("rs1 default cold", 2, 19203, true, "rs1 default (19203)", true),
  };
}
std::vector<StreamCfg> session_cfgs() {
  // Session 15 (q2g), against QEL's left-over evict-last lines (bench/NOTES.md): rounds A–C measured DISC / DISCC /
  // DISCZ / DISC4, LATE2, EF2 / EF4 against SELALL, DEM / DEM2 against DEMZ (all deleted) and DISC1 (526353: each CTA
  // discards its last item's code lines at its start) against DISCZ1 (786449: its code, no line) and QEL. Round D:
  // the host default (DISC1 with QEL from N = 7168) against QEL forced (the old default) at 7168 × 8192 and 7168 ×
  // 16384, QEL cold for reference; 4096 (QEL the host default there) against DISC1 and DISCZ1 forced. Each config's
  // timed calls follow its own calls (the bench's pattern: the left-overs are its own).
  const char* q7 = "7168 QEL (pf 17, old default)";
  const char* z7 = "7168 DISCZ1 (pf 786449)";
  const char* d4 = "4096 host default (QEL)";
  const char* z4 = "4096 DISCZ1 (pf 786449)";
  const char* q7l = "7168x16384 QEL (pf 17)";
  auto row = [](const char* name, int64_t N, int pf, const char* base, const char* control = nullptr,
                bool cold = false, bool host = false, int64_t M = 8192) {
    StreamCfg c{name, N, 2, 4, 19203, base, true, 0, pf, cold, host, M};
    c.control = control;
    return c;
  };
  return {
      row(q7, 7168, 17, nullptr),
      row("7168 QEL cold", 7168, 17, q7, nullptr, true),
      row(z7, 7168, 786449, q7),
      row("7168 host default (DISC1)", 7168, 526353, q7, z7, false, true),
      row(d4, 4096, 17, nullptr, nullptr, false, true),
      row(z4, 4096, 786449, d4),
      row("4096 DISC1 (pf 526353)", 4096, 526353, d4, z4),
      row(q7l, 7168, 17, nullptr, nullptr, false, false, 16384),
      row("7168x16384 host default (DISC1)", 7168, 526353, q7l, nullptr, false, true, 16384),
  };
}

// interleaved_sweep (measure_util.hpp) with each row's round medians also compared, round by round, with its
// baseline's (the default of the same N): "wins" = rounds where the row's median is lower, and the median of the
// per-round differences.
void paired_sweep(const std::string& title, const std::vector<StreamCfg>& cfgs,
                  const std::function<void(size_t)>& select,
                  const std::function<std::function<void(Stream)>(size_t)>& run, detail::L2Flusher& l2, int rounds,
                  int calls) {
  std::vector<std::vector<double>> med(cfgs.size());
  for (int round = 0; round < rounds; ++round)
    for (size_t k = 0; k < cfgs.size(); ++k) {
      const size_t i = round % 2 == 0 ? k : cfgs.size() - 1 - k;
      select(i);
      if (cfgs[i].cold_code) l2.set_cold_code(true, nullptr);
      med[i].push_back(detail::median(timed_calls(run(i), l2, 2, calls, cfgs[i].cold)));
      l2.set_cold_code(false, nullptr);
    }
  std::printf("%s, %d rounds x %d calls (L2 flushed): median of round medians (min .. max round median), µs; "
              "against the baseline: median of the per-round differences, rounds won\n",
              title.c_str(), rounds, calls);
  for (size_t i = 0; i < cfgs.size(); ++i) {
    std::vector<double> v = med[i];
    std::sort(v.begin(), v.end());
    std::printf("  %-28s %7.2f  (%.2f .. %.2f)", cfgs[i].name, v[v.size() / 2], v.front(), v.back());
    size_t b = cfgs.size();
    for (size_t j = 0; j < cfgs.size() && cfgs[i].baseline; ++j)
      if (std::string(cfgs[j].name) == cfgs[i].baseline) b = j;
    if (b < cfgs.size()) {
      const PairedDiff pd = paired_diff(med[b], med[i]);
      std::printf("  diff %+6.2f, won %d / %d", pd.d[pd.d.size() / 2], pd.wins, rounds);
    }
    for (size_t j = 0; j < cfgs.size() && cfgs[i].control; ++j)
      if (std::string(cfgs[j].name) == cfgs[i].control) {
        const PairedDiff pd = paired_diff(med[j], med[i]);
        std::printf("; vs control %+6.2f, won %d / %d", pd.d[pd.d.size() / 2], pd.wins, rounds);
      }
    std::printf("\n");
  }
}

TEST_F(RmsqStreamMeasure, Sweep) {
  // $KILN_MEASURE_SESSION=22: session 22's rows (cold instruction caches) instead of session 15's.
  const char* which = std::getenv("KILN_MEASURE_SESSION");
  const std::vector<StreamCfg> cfgs =
      only(which && std::string(which) == "22" ? session22_cfgs() : session_cfgs());



  Runtime& r = rt();
  bind_device(r);  // the bench instance allocates before any op has bound the context on this thread
  std::map<std::tuple<int64_t, bool, int64_t>, detail::BenchInstance> inst;
  auto key = [](const StreamCfg& c) { return std::make_tuple(c.N, c.round, c.M); };
  for (const StreamCfg& c : cfgs)
    if (!inst.count(key(c)))
      inst.emplace(key(c), detail::rms_norm_block_quant_instance(r, c.M, c.N, 2, c.round, false));
  std::printf("[stream sweep] persisting L2 limit of the context: %zu bytes%s\n", persist_l2().limit(),
              persist_l2().reset ? "" : " (cuCtxResetPersistingL2Cache not found: cold rows would fail)");
  auto at = [&](const StreamCfg& c) -> detail::BenchInstance& { return inst.at(key(c)); };
  detail::L2Flusher l2(r, nullptr);
  // Compile + first run of each (outputs checked against the baseline's), then timing rounds.
  first_runs_checked(cfgs, [](const StreamCfg& c) { force(c); }, at);
  const char* rounds_env = std::getenv("KILN_MEASURE_ROUNDS");
  const int rounds = rounds_env ? std::max(1, std::atoi(rounds_env)) : 9;
  paired_sweep(
      "[stream sweep] mode 2, M = 8192 unless named, round_scale 1 (rs0: 0)", cfgs,
      [&](size_t i) { force(cfgs[i]); }, [&](size_t i) { return at(cfgs[i]).run; }, l2, rounds, 10);
}

// Session 14 (fact-finding, not a kiln setting): QEL (round C) / QELD (round D) against the default with the context's
// persisting-L2 limit raised to the device's maximum (rounds C / D: the default rows, run after QEL / QELD rows, slowed
// 92 → 139 / 205 µs at 7168 — left-over evict-last lines, or the set-aside itself?). Round E: every row cold (the
// persisting lines reset to normal before each call's flush), so no row sees another's leftovers.
TEST_F(RmsqStreamMeasure, PersistMax) {
  const char* d2 = "2048 default, persist max, cold";
  const char* d7 = "7168 default, persist max, cold";
  const std::vector<StreamCfg> cfgs = only({
      {d7, 7168, 2, 4, 19203, nullptr, true, 0, 1, true},
      {"7168 QEL, persist max, cold", 7168, 2, 4, 19203, d7, true, 0, 17, true},
      {d2, 2048, 2, 4, 19203, nullptr, true, 0, 1, true},
      {"2048 QEL, persist max, cold", 2048, 2, 4, 19203, d2, true, 0, 17, true},
  });
  Runtime& r = rt();
  bind_device(r);
  ASSERT_TRUE(persist_l2().set && persist_l2().get) << "cuCtxSetLimit / cuCtxGetLimit not found";
  int max_bytes = 0;
  detail::check(detail::driver().cuDeviceGetAttribute(&max_bytes, CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE,
                                                      0),
                "cuDeviceGetAttribute");
  const size_t before = persist_l2().limit();
  detail::check(persist_l2().set(CU_LIMIT_PERSISTING_L2_CACHE_SIZE, static_cast<size_t>(max_bytes)), "cuCtxSetLimit");
  struct Restore {
    size_t v;
    ~Restore() { persist_l2().set(CU_LIMIT_PERSISTING_L2_CACHE_SIZE, v); }
  } restore{before};
  std::printf("[persist max] persisting L2 limit %zu -> %zu bytes (device maximum %d)\n", before, persist_l2().limit(),
              max_bytes);
  const int64_t M = 8192;
  std::map<int64_t, detail::BenchInstance> inst;
  for (int64_t N : {2048, 7168}) inst.emplace(N, detail::rms_norm_block_quant_instance(r, M, N, 2, true, false));
  auto at = [&](const StreamCfg& c) -> detail::BenchInstance& { return inst.at(c.N); };
  detail::L2Flusher l2(r, nullptr);
  first_runs_checked(cfgs, [](const StreamCfg& c) { force(c); }, at);
  const char* rounds_env = std::getenv("KILN_MEASURE_ROUNDS");
  const int rounds = rounds_env ? std::max(1, std::atoi(rounds_env)) : 9;
  paired_sweep(
      "[persist max] M = 8192, mode 2, round_scale 1", cfgs, [&](size_t i) { force(cfgs[i]); },
      [&](size_t i) { return at(cfgs[i]).run; }, l2, rounds, 10);
}

// One call per config, outputs compared with the first config of the same N (a target for `ncu -k regex:stream_kernel
// -c 6`: ncu flushes the caches before each profiled kernel): LEAN, TIGHT + FLAT + SPLIT, and + WLDG at N = 2048 and
// 7168. (With $KILN_MEASURE_ONLY / _SKIP also a quick check that a config finishes and matches before it is timed.)
TEST_F(RmsqStreamMeasure, Profile) {
  const std::vector<StreamCfg> cfgs = only({
      {"2048 LEAN R4", 2048, 2, 4, 3, nullptr},
      {"2048 LEAN+TIGHT+FLAT+SPLIT R4", 2048, 2, 4, 2819, "2048 LEAN R4"},
      {"2048 LEAN+TIGHT+FLAT+SPLIT+WLDG R4", 2048, 2, 4, 19203, "2048 LEAN R4"},
      {"7168 LEAN R4", 7168, 2, 4, 3, nullptr},
      {"7168 LEAN+TIGHT+FLAT+SPLIT R4", 7168, 2, 4, 2819, "7168 LEAN R4"},
      {"7168 LEAN+TIGHT+FLAT+SPLIT+WLDG R4", 7168, 2, 4, 19203, "7168 LEAN R4"},
  });
  Runtime& r = rt();
  bind_device(r);
  std::map<int64_t, detail::BenchInstance> inst;
  for (int64_t N : {2048, 7168}) inst.emplace(N, detail::rms_norm_block_quant_instance(r, 8192, N, 2, true, false));
  first_runs_checked(cfgs, [](const StreamCfg& c) { force(c); },
                     [&](const StreamCfg& c) -> detail::BenchInstance& { return inst.at(c.N); });
}

// One traced run per config after an L2 flush (and one untraced run before: the outputs must match).
TEST_F(RmsqStreamMeasure, Timeline) {
  const std::vector<StreamCfg> cfgs = only({
      {"2048 default (19203, P=128)", 2048, 2, 4, 19203, nullptr},
      {"2048 P=132 (wave)", 2048, 2, 4, 19203, nullptr, true, 132},
      {"7168 default (19203, wave)", 7168, 2, 4, 19203, nullptr},
      {"7168 P=128", 7168, 2, 4, 19203, nullptr, true, 128},
  });
  Runtime& r = rt();
  bind_device(r);
  const int64_t M = 8192;
  std::map<int64_t, detail::BenchInstance> inst;
  for (int64_t N : {2048, 7168}) inst.emplace(N, detail::rms_norm_block_quant_instance(r, M, N, 2, true, false));
  const size_t max_ctas = 1024;  // ≥ the grid (one or two CTAs an SM)
  DeviceBuffer tb(r, max_ctas * kRmsqStreamTraceSlots * 8);
  detail::L2Flusher l2(r, nullptr);
  CUevent ev0, ev1;
  detail::check(detail::driver().cuEventCreate(&ev0, CU_EVENT_DEFAULT), "cuEventCreate");
  detail::check(detail::driver().cuEventCreate(&ev1, CU_EVENT_DEFAULT), "cuEventCreate");
  auto q = [](std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[static_cast<size_t>(p * (v.size() - 1) + 0.5)];
  };
  auto row5 = [&](const std::string& name, const std::vector<double>& v) {
    std::printf("  %-30s %7.2f %7.2f %7.2f %7.2f %7.2f\n", name.c_str(), q(v, 0), q(v, 0.1), q(v, 0.5), q(v, 0.9),
                q(v, 1));
  };
  for (const StreamCfg& c : cfgs) {
    SCOPED_TRACE(c.name);
    force(c);
    detail::BenchInstance& in = inst.at(c.N);
    in.run(nullptr);
    synchronize();
    const std::vector<uint8_t> plain = download_outputs(in);
    tb.fill(0);
    detail::rms_norm_block_quant_stream_trace.store(static_cast<unsigned long long*>(tb.data()));
    in.run(nullptr);  // compiles the TRACE variant and warms it
    synchronize();
    l2.flush(nullptr);
    tb.fill(0);
    detail::check(detail::driver().cuEventRecord(ev0, nullptr), "cuEventRecord");
    in.run(nullptr);
    detail::check(detail::driver().cuEventRecord(ev1, nullptr), "cuEventRecord");
    synchronize();
    detail::rms_norm_block_quant_stream_trace.store(nullptr);
    float ms = 0;
    detail::check(detail::driver().cuEventElapsedTime(&ms, ev0, ev1), "cuEventElapsedTime");
    EXPECT_TRUE(download_outputs(in) == plain) << "tracing changed the outputs";
    EXPECT_TRUE(tb.guards_intact());

    const std::vector<uint64_t> tr = tb.download<uint64_t>(max_ctas * kRmsqStreamTraceSlots);
    struct Rec {
      int kind, item;
      double us;  // after this CTA's start
    };
    struct Cta {
      uint64_t t0;
      int sm;
      std::vector<Rec> recs;
    };
    std::vector<Cta> ctas;
    for (size_t b = 0; b < max_ctas; ++b) {
      const uint64_t* t = tr.data() + b * kRmsqStreamTraceSlots;
      if (t[0] == 0) continue;  // no such CTA
      Cta x{t[0], static_cast<int>(t[1]), {}};
      double prev = 0;
      bool ordered = true;
      for (int k = 2; k < kRmsqStreamTraceSlots && t[k] != 0; ++k) {
        const Rec rec{static_cast<int>(t[k] >> 48), static_cast<int>((t[k] >> 40) & 0xff),
                      static_cast<double>(t[k] & ((1ull << 40) - 1)) / 1000.0};
        ordered = ordered && rec.us >= prev;
        prev = rec.us;
        x.recs.push_back(rec);
      }
      EXPECT_TRUE(ordered) << "CTA " << b << " records out of order";
      EXPECT_TRUE(!x.recs.empty() && x.recs.back().kind == 5) << "CTA " << b << " has no end record";
      ctas.push_back(std::move(x));
    }
    ASSERT_FALSE(ctas.empty());
    uint64_t t0 = ~0ull;
    for (const Cta& x : ctas) t0 = std::min(t0, x.t0);
    std::vector<double> start, end, first_landed;
    // Per item index (of a CTA's own walk): block wait (landed − the previous phase end), pass 1 (sums stored −
    // landed), exchange (r ready − the later of the item's pass 1 and the previous pass 2), pass 2 (its duration).
    // polled (kind 6, S > 1): every partial sum of the item current, after the same start as the exchange.
    std::map<int, std::vector<double>> wait_blocks, pass1, exch, pass2, p2_end, polled;
    for (const Cta& x : ctas) {
      const double st = static_cast<double>(x.t0 - t0) / 1000.0;
      start.push_back(st);
      double prev_end = 0;  // the previous phase end (this CTA's clock)
      std::map<int, double> landed, p1done, ex_start;
      double last_p2 = 0;
      for (const Rec& rec : x.recs) {
        switch (rec.kind) {
          case 1:
            wait_blocks[rec.item].push_back(rec.us - prev_end);
            landed[rec.item] = rec.us;
            break;
          case 2:
            if (landed.count(rec.item)) pass1[rec.item].push_back(rec.us - landed[rec.item]);
            p1done[rec.item] = rec.us;
            break;
          case 6:
            ex_start[rec.item] = std::max(prev_end, p1done.count(rec.item) ? p1done[rec.item] : 0.0);
            polled[rec.item].push_back(rec.us - ex_start[rec.item]);
            break;
          case 3:
            exch[rec.item].push_back(rec.us - (ex_start.count(rec.item)
                                                   ? ex_start[rec.item]
                                                   : std::max(prev_end, p1done.count(rec.item) ? p1done[rec.item] : 0.0)));
            break;
          case 4:
            pass2[rec.item].push_back(rec.us - prev_end);
            p2_end[rec.item].push_back(st + rec.us);
            last_p2 = rec.us;
            break;
          case 5:
            end.push_back(st + rec.us);
            break;
          default:
            break;
        }
        if (rec.kind == 1 && rec.item == 0) first_landed.push_back(st + rec.us);
        if (rec.kind != 6) prev_end = rec.us;
      }
      (void)last_p2;
    }
    double span = q(end, 1);
    std::printf("[stream timeline] %s: %zu CTAs, events %.2f µs, CTA span (globaltimer, first start → last end) "
                "%.2f µs; µs (min / p10 / p50 / p90 / max over CTAs)\n",
                c.name, ctas.size(), ms * 1000.0, span);
    row5("start (after the first CTA's)", start);
    row5("item 0's first block landed", first_landed);
    row5("end", end);
    {
      std::vector<double> items;  // items a CTA quantized (the static walk: ⌈items / CTAs⌉ or one fewer)
      for (const Cta& x : ctas)
        items.push_back(static_cast<double>(
            std::count_if(x.recs.begin(), x.recs.end(), [](const Rec& r) { return r.kind == 4; })));
      row5("items quantized", items);
    }
    for (const auto& [it, v] : wait_blocks) {
      std::printf("  item %2d (%4zu CTAs): blocks wait p50/p90 %5.2f %5.2f | pass 1 %5.2f | exchange p50/p90 %5.2f "
                  "%5.2f (polled %5.2f %5.2f) | pass 2 p50/p90 %5.2f %5.2f | pass 2 end p50/max %6.2f %6.2f\n",
                  it, v.size(), q(v, 0.5), q(v, 0.9), q(pass1[it], 0.5), q(exch[it], 0.5), q(exch[it], 0.9),
                  q(polled[it], 0.5), q(polled[it], 0.9), q(pass2[it], 0.5), q(pass2[it], 0.9), q(p2_end[it], 0.5),
                  q(p2_end[it], 1));
    }
  }
  detail::driver().cuEventDestroy(ev0);
  detail::driver().cuEventDestroy(ev1);
}

}  // namespace
}  // namespace kiln::test
