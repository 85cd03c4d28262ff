// tests/gpu/rms_norm_block_quant_pipe_measure_test.cpp — measurements of the mode-0 pipe kernel (issue 3's
// M = 8192, N = 2048 target) that one GPU round can take at once. Not in the RmsNormBlockQuant ctest regex: run them
// with `kiln_gpu_tests --gtest_filter='RmsqPipeMeasure*'`. They print, and check only what must hold whatever the
// numbers are: every variant writes the same bits as its baseline structure, tracing changes no output, and the
// trace's timestamps are ordered.
//
//  * Sweep: forced pipe configs (the kRmsqPipe* variant bits in the config's overlap field) timed in one process,
//    interleaved in rounds (L2 flushed before each call, as `kiln bench`), so run-to-run drift hits all alike.
//  * Timeline: the TRACE variant's per-warp timestamps (rms_norm_block_quant_pipe_kernel): when each warp starts,
//    issues its first copies, waits for each row and finishes it; per-SM end times (the straggler tail).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "kiln/ops/rms_norm.hpp"
#include "kiln/rms_norm_block_quant_args.h"
#include "ops/bench/rms_norm.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "measure_util.hpp"
#include "test_util.hpp"

namespace kiln::detail {
bool rms_norm_block_quant_force_config(int64_t N, int mode, int warps, int col_blocks, int prefetch, int stages,
                                       int overlap, int exchange);
extern std::atomic<unsigned long long*> rms_norm_block_quant_pipe_trace;
}  // namespace kiln::detail

namespace kiln::test {
namespace {

struct PipeCfg {
  const char* name;
  int64_t N;
  int warps, prefetch, stages, overlap, exchange;
  const char* baseline;  // the config whose outputs it must equal bit for bit (same row split: same Σx² order)
};

void force(const PipeCfg& c) {
  ASSERT_TRUE(detail::rms_norm_block_quant_force_config(c.N, 0, c.warps, 4, c.prefetch, c.stages, c.overlap,
                                                        c.exchange))
      << "not a search-space point: " << c.name;
}

class RmsqPipeMeasure : public GpuTest {
 protected:
  void TearDown() override {
    detail::rms_norm_block_quant_force_config(0, 0, 0, 0, 0, 0, 0, 0);
    detail::rms_norm_block_quant_pipe_trace.store(nullptr);
  }
};

// Bits: 1 START1, 4 LEAN, 8 NOFENCE (rms_norm_block_quant_args.h); 13 = all three.
TEST_F(RmsqPipeMeasure, Sweep) {
  const std::vector<PipeCfg> cfgs = {
      {"2048 plain 8x2 split2", 2048, 8, 1, 2, 0, 1, nullptr},
      {"2048 START1", 2048, 8, 1, 2, 1, 1, "2048 plain 8x2 split2"},
      {"2048 LEAN", 2048, 8, 1, 2, 4, 1, "2048 plain 8x2 split2"},
      {"2048 LEAN+NOFENCE", 2048, 8, 1, 2, 12, 1, "2048 plain 8x2 split2"},
      {"2048 START1+LEAN+NOFENCE (default)", 2048, 8, 1, 2, 13, 1, "2048 plain 8x2 split2"},
      {"2048 8x3 START1", 2048, 8, 1, 3, 1, 1, "2048 plain 8x2 split2"},
      {"2048 8x3 START1+LEAN+NOFENCE", 2048, 8, 1, 3, 13, 1, "2048 plain 8x2 split2"},
      {"2048 8x2 one warp a row", 2048, 8, 1, 2, 0, 0, nullptr},
      {"2048 8x2 one warp START1+LEAN+NOFENCE", 2048, 8, 1, 2, 13, 0, "2048 8x2 one warp a row"},
      {"7168 plain 8x2 split2", 7168, 8, 0, 2, 0, 1, nullptr},
      {"7168 START1", 7168, 8, 0, 2, 1, 1, "7168 plain 8x2 split2"},
      {"7168 LEAN+NOFENCE", 7168, 8, 0, 2, 12, 1, "7168 plain 8x2 split2"},
      {"7168 START1+LEAN+NOFENCE (default)", 7168, 8, 0, 2, 13, 1, "7168 plain 8x2 split2"},
  };
  Runtime& r = rt();
  bind_device(r);  // the bench instance allocates before any op has bound the context on this thread
  const int64_t M = 8192;
  std::map<int64_t, detail::BenchInstance> inst;
  for (int64_t N : {2048, 7168}) inst.emplace(N, detail::rms_norm_block_quant_instance(r, M, N, 0, true, false));
  detail::L2Flusher l2(r, nullptr);
  // Compile + first run of each (outputs checked against the baseline's), then timing rounds.
  first_runs_checked(cfgs, [](const PipeCfg& c) { force(c); },
                     [&](const PipeCfg& c) -> detail::BenchInstance& { return inst.at(c.N); });
  std::vector<std::string> names;
  for (const PipeCfg& c : cfgs) names.emplace_back(c.name);
  interleaved_sweep(
      "[pipe sweep] M = " + std::to_string(M) + ", round_scale 1", names, [&](size_t i) { force(cfgs[i]); },
      [&](size_t i) { return inst.at(cfgs[i].N).run; }, l2, 5, 12);
}

// One traced run per config after an L2 flush (and one untraced run before: the outputs must match).
TEST_F(RmsqPipeMeasure, Timeline) {
  const std::vector<PipeCfg> cfgs = {
      {"plain 8x2 split2 (default before session 6)", 2048, 8, 1, 2, 0, 1, nullptr},
      {"START1", 2048, 8, 1, 2, 1, 1, nullptr},
      {"START1+LEAN+NOFENCE (the default)", 2048, 8, 1, 2, 13, 1, nullptr},
      {"one warp a row 8x2", 2048, 8, 1, 2, 0, 0, nullptr},
  };
  Runtime& r = rt();
  bind_device(r);  // the bench instance allocates before any op has bound the context on this thread
  const int64_t M = 8192, N = 2048;
  detail::BenchInstance inst = detail::rms_norm_block_quant_instance(r, M, N, 0, true, false);
  const size_t max_warps = 256 * 64;  // ≥ SMs × resident warps (64 an SM at most)
  DeviceBuffer tb(r, max_warps * kRmsqPipeTraceSlots * 8);
  detail::L2Flusher l2(r, nullptr);
  CUevent ev0, ev1;
  detail::check(detail::driver().cuEventCreate(&ev0, CU_EVENT_DEFAULT), "cuEventCreate");
  detail::check(detail::driver().cuEventCreate(&ev1, CU_EVENT_DEFAULT), "cuEventCreate");
  for (const PipeCfg& c : cfgs) {
    SCOPED_TRACE(c.name);
    force(c);
    inst.run(nullptr);
    synchronize();
    const std::vector<uint8_t> plain = download_outputs(inst);
    for (int rep = 0; rep < 2; ++rep) {
      tb.fill(0);
      detail::rms_norm_block_quant_pipe_trace.store(static_cast<unsigned long long*>(tb.data()));
      inst.run(nullptr);  // compiles the TRACE variant (first rep) and warms it
      synchronize();
      l2.flush(nullptr);
      tb.fill(0);
      detail::check(detail::driver().cuEventRecord(ev0, nullptr), "cuEventRecord");
      inst.run(nullptr);
      detail::check(detail::driver().cuEventRecord(ev1, nullptr), "cuEventRecord");
      synchronize();
      detail::rms_norm_block_quant_pipe_trace.store(nullptr);
      float ms = 0;
      detail::check(detail::driver().cuEventElapsedTime(&ms, ev0, ev1), "cuEventElapsedTime");
      EXPECT_TRUE(download_outputs(inst) == plain) << "tracing changed the outputs";
      EXPECT_TRUE(tb.guards_intact());

      const std::vector<uint64_t> tr = tb.download<uint64_t>(max_warps * kRmsqPipeTraceSlots);
      struct W {
        uint64_t ns0, clk0, issued, end_clk, ns1;
        int rows, sm, kept;
        uint64_t ready[kRmsqPipeTraceRows], done[kRmsqPipeTraceRows];
      };
      std::vector<W> ws;
      for (size_t w = 0; w < max_warps; ++w) {
        const uint64_t* t = tr.data() + w * kRmsqPipeTraceSlots;
        if (t[0] == 0) continue;  // no such warp (the grid is smaller)
        W x{t[0], t[1], t[2], t[4], t[5], static_cast<int>(t[3] & 0xffffffffu), static_cast<int>(t[3] >> 32), 0, {}, {}};
        x.kept = std::min(x.rows, kRmsqPipeTraceRows);
        for (int k = 0; k < x.kept; ++k) {
          x.ready[k] = t[6 + 2 * k];
          x.done[k] = t[7 + 2 * k];
        }
        // Ordered: entry ≤ issued ≤ ready 0 ≤ done 0 ≤ ready 1 … ≤ end.
        uint64_t prev = x.clk0;
        bool ordered = x.issued >= prev;
        prev = x.issued;
        for (int k = 0; k < x.kept; ++k) {
          ordered = ordered && x.ready[k] >= prev && x.done[k] >= x.ready[k];
          prev = x.done[k];
        }
        ordered = ordered && x.end_clk >= prev && x.ns1 >= x.ns0;
        EXPECT_TRUE(ordered) << "warp slot " << w << " timestamps out of order";
        ws.push_back(x);
      }
      ASSERT_FALSE(ws.empty());
      std::vector<double> rate;
      for (const W& x : ws)
        if (x.ns1 > x.ns0 && x.end_clk > x.clk0)
          rate.push_back(static_cast<double>(x.end_clk - x.clk0) / static_cast<double>(x.ns1 - x.ns0));
      ASSERT_FALSE(rate.empty());
      std::sort(rate.begin(), rate.end());
      const double ghz = rate[rate.size() / 2];
      uint64_t t0 = ~0ull;
      for (const W& x : ws) t0 = std::min(t0, x.ns0);
      auto at = [&](const W& x, uint64_t clk) {
        return (x.ns0 - t0) / 1000.0 + (static_cast<double>(clk) - static_cast<double>(x.clk0)) / ghz / 1000.0;
      };
      auto q = [](std::vector<double> v, double p) {
        std::sort(v.begin(), v.end());
        return v.empty() ? 0.0 : v[static_cast<size_t>(p * (v.size() - 1) + 0.5)];
      };
      auto row5 = [&](const char* name, const std::vector<double>& v) {
        std::printf("  %-22s %7.2f %7.2f %7.2f %7.2f %7.2f\n", name, q(v, 0), q(v, 0.1), q(v, 0.5), q(v, 0.9),
                    q(v, 1));
      };
      std::vector<double> start, issued, ready0, done0, last_ready, end, rows;
      double span = 0, wait_sum = 0, busy_sum = 0, life_sum = 0;
      std::map<int, std::pair<double, double>> sm;  // SM → (first start, last end)
      for (const W& x : ws) {
        const double st = (x.ns0 - t0) / 1000.0, en = at(x, x.end_clk);
        start.push_back(st);
        issued.push_back(at(x, x.issued));
        end.push_back(en);
        rows.push_back(x.rows);
        span = std::max(span, (x.ns1 - t0) / 1000.0);
        life_sum += en - st;
        if (x.kept > 0) {
          ready0.push_back(at(x, x.ready[0]));
          done0.push_back(at(x, x.done[0]));
          last_ready.push_back(at(x, x.ready[x.kept - 1]));
          uint64_t prev = x.issued;
          for (int k = 0; k < x.kept; ++k) {
            wait_sum += (static_cast<double>(x.ready[k]) - static_cast<double>(prev)) / ghz / 1000.0;
            busy_sum += (static_cast<double>(x.done[k]) - static_cast<double>(x.ready[k])) / ghz / 1000.0;
            prev = x.done[k];
          }
        }
        auto it = sm.find(x.sm);
        if (it == sm.end()) sm[x.sm] = {st, en};
        else it->second = {std::min(it->second.first, st), std::max(it->second.second, en)};
      }
      std::printf("[pipe timeline] %s rep %d: %zu warps on %zu SMs, SM clock %.3f GHz; events %.2f µs, warp span "
                  "(globaltimer) %.2f µs; µs after the first warp's start (min / p10 / p50 / p90 / max over warps)\n",
                  c.name, rep, ws.size(), sm.size(), ghz, ms * 1000.0, span);
      row5("start", start);
      row5("first copies issued", issued);
      row5("row 0 landed", ready0);
      row5("row 0 done", done0);
      row5("last row landed", last_ready);
      row5("end", end);
      row5("rows a warp", rows);
      std::vector<double> sm_end, sm_start;
      for (const auto& [id, se] : sm) {
        sm_start.push_back(se.first);
        sm_end.push_back(se.second);
      }
      row5("SM first start", sm_start);
      row5("SM last end", sm_end);
      // Per row index: the wait (landed − previous row done, or − issued for row 0) and the compute (done − landed).
      for (int k = 0; k < kRmsqPipeTraceRows; ++k) {
        std::vector<double> wait, busy;
        for (const W& x : ws)
          if (k < x.kept) {
            const uint64_t prev = k == 0 ? x.issued : x.done[k - 1];
            wait.push_back((static_cast<double>(x.ready[k]) - static_cast<double>(prev)) / ghz / 1000.0);
            busy.push_back((static_cast<double>(x.done[k]) - static_cast<double>(x.ready[k])) / ghz / 1000.0);
          }
        if (wait.empty()) break;
        std::printf("  row %2d (%5zu warps): wait p10/p50/p90 %5.2f %5.2f %5.2f   compute p10/p50/p90 %5.2f %5.2f %5.2f\n",
                    k, wait.size(), q(wait, 0.1), q(wait, 0.5), q(wait, 0.9), q(busy, 0.1), q(busy, 0.5),
                    q(busy, 0.9));
      }
      const double sm_window = q(sm_end, 1) - q(sm_start, 0);
      double sm_busy = 0;
      for (size_t i = 0; i < sm_end.size(); ++i) sm_busy += sm_end[i] - sm_start[i];
      std::printf("  warp time: %.0f%% waiting for rows, %.0f%% computing (of the warps' lifetimes); SMs hold warps "
                  "%.0f%% of the window from the first start to the last end\n",
                  100.0 * wait_sum / life_sum, 100.0 * busy_sum / life_sum,
                  100.0 * sm_busy / (sm_window * static_cast<double>(sm_end.size())));
    }
  }
  detail::driver().cuEventDestroy(ev0);
  detail::driver().cuEventDestroy(ev1);
}

}  // namespace
}  // namespace kiln::test
