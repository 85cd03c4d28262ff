// tests/gpu/rms_norm_block_quant_split_measure_test.cpp — the split-role mode-2 kernel (rms_norm_block_quant_split.cuh)
// timed against the stream kernel's default in one process (issue 3's M = 8192, N = 2048 / 7168, round_scale 1). Not in
// the 'RmsNormBlockQuant|RmsqSplit' ctest regex: run it with `kiln_gpu_tests --gtest_filter='SplitRoleMeasure*'`. It
// prints, and checks only what must hold whatever the numbers are: a split point writes the same bits as the stream
// kernel's LEAN point with the same blocks an item (same pass 1 and exchange order: the same r). Timeline: the split
// kernel's per-CTA phase records (TRACE, through the stream kernel's trace hook), as RmsqStreamMeasure.Timeline.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kiln/ops/rms_norm.hpp"
#include "kiln/rms_norm_block_quant_stream_args.h"
#include "ops/bench/rms_norm.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "test_util.hpp"

namespace kiln::detail {
bool rms_norm_block_quant_force_config(int64_t N, int mode, int warps, int col_blocks, int prefetch, int stages,
                                       int overlap, int exchange);
extern std::atomic<unsigned long long*> rms_norm_block_quant_stream_trace;
}  // namespace kiln::detail

namespace kiln::test {
namespace {

struct Cfg {
  const char* name;
  int64_t N;
  int col_blocks, stages, overlap, exchange;
  const char* baseline;  // bit-identical outputs expected (nullptr: none)
  bool round = true;
};

std::vector<uint8_t> download_outputs(const detail::BenchInstance& inst) {
  std::vector<uint8_t> all;
  for (const TensorRef& t : inst.outputs) {
    const size_t bytes = static_cast<size_t>(t.numel()) * (t.dtype == DType::e4m3 ? 1 : 4);
    const size_t at = all.size();
    all.resize(at + bytes);
    detail::check(detail::driver().cuMemcpyDtoH(all.data() + at, reinterpret_cast<CUdeviceptr>(t.data), bytes),
                  "cuMemcpyDtoH");
  }
  return all;
}

class SplitRoleMeasure : public GpuTest {
 protected:
  void TearDown() override {
    detail::rms_norm_block_quant_force_config(0, 0, 0, 0, 0, 0, 0, 0);
    detail::rms_norm_block_quant_stream_trace.store(nullptr);
  }
};

TEST_F(SplitRoleMeasure, Sweep) {
  const std::vector<Cfg> cfgs = {
      {"2048 stream LEAN cb2 R4 (default)", 2048, 2, 4, 3, 3, nullptr},
      {"2048 stream LEAN cb1 R2", 2048, 1, 2, 3, 3, nullptr},
      {"2048 split cb2 R6", 2048, 2, 6, 1, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb1 R3", 2048, 1, 3, 1, 7, "2048 stream LEAN cb1 R2"},
      {"2048 split cb2 R6 EP", 2048, 2, 6, 65, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb2 R7", 2048, 2, 7, 129, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb2 R7 EP", 2048, 2, 7, 193, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb2 R6 FIRST", 2048, 2, 6, 513, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb2 R7 EP FIRST", 2048, 2, 7, 705, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb2 R6 FIRST START", 2048, 2, 6, 1537, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb2 R7 EP FIRST START", 2048, 2, 7, 1729, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"7168 stream LEAN cb2 R4 (default)", 7168, 2, 4, 3, 3, nullptr},
      {"7168 split cb2 R6", 7168, 2, 6, 1, 7, "7168 stream LEAN cb2 R4 (default)"},
      {"7168 split cb2 R6 EP", 7168, 2, 6, 65, 7, "7168 stream LEAN cb2 R4 (default)"},
      {"7168 split cb2 R7", 7168, 2, 7, 129, 7, "7168 stream LEAN cb2 R4 (default)"},
      {"7168 split cb2 R7 EP", 7168, 2, 7, 193, 7, "7168 stream LEAN cb2 R4 (default)"},
      {"7168 split cb2 R7 EP FIRST", 7168, 2, 7, 705, 7, "7168 stream LEAN cb2 R4 (default)"},
      {"7168 split cb2 R7 EP FIRST START", 7168, 2, 7, 1729, 7, "7168 stream LEAN cb2 R4 (default)"},
      {"2048 rs0 stream LEAN cb2 R4 (default)", 2048, 2, 4, 3, 3, nullptr, false},
      {"2048 rs0 split cb2 R6", 2048, 2, 6, 1, 7, "2048 rs0 stream LEAN cb2 R4 (default)", false},
  };
  Runtime& r = rt();
  bind_device(r);
  const int64_t M = 8192;
  std::map<std::pair<int64_t, bool>, detail::BenchInstance> inst;
  for (int64_t N : {2048, 7168})
    for (bool round : {true, false})
      if (round || N == 2048)
        inst.emplace(std::make_pair(N, round), detail::rms_norm_block_quant_instance(r, M, N, 2, round, false));
  auto at = [&](const Cfg& c) -> detail::BenchInstance& { return inst.at(std::make_pair(c.N, c.round)); };
  auto force = [](const Cfg& c) {
    return detail::rms_norm_block_quant_force_config(c.N, 2, 16, c.col_blocks, 1, c.stages, c.overlap, c.exchange);
  };
  detail::L2Flusher l2(r, nullptr);
  std::map<std::string, std::vector<uint8_t>> outs;
  for (const Cfg& c : cfgs) {
    SCOPED_TRACE(c.name);
    ASSERT_TRUE(force(c)) << "not a search-space point: " << c.name;
    at(c).run(nullptr);
    synchronize();
    outs[c.name] = download_outputs(at(c));
    if (c.baseline) {
      const std::vector<uint8_t>& want = outs.at(c.baseline);
      const std::vector<uint8_t>& got = outs.at(c.name);
      ASSERT_EQ(got.size(), want.size());
      const auto diff = std::mismatch(got.begin(), got.end(), want.begin());
      EXPECT_TRUE(diff.first == got.end()) << "first differing output byte " << (diff.first - got.begin()) << ": "
                                           << int(*diff.first) << " vs " << int(*diff.second) << " (" << c.baseline
                                           << ")";
    }
  }
  const int rounds = 5, calls = 10;
  std::map<std::string, std::vector<double>> med;
  for (int round = 0; round < rounds; ++round)
    for (size_t i = 0; i < cfgs.size(); ++i) {
      const Cfg& c = cfgs[round % 2 == 0 ? i : cfgs.size() - 1 - i];
      ASSERT_TRUE(force(c));
      med[c.name].push_back(detail::median(detail::time_calls_us(at(c).run, nullptr, l2, 2, calls)));
    }
  std::printf("[split sweep] M = %lld, mode 2, round_scale 1 (rs0: 0), %d rounds x %d calls (L2 flushed): median of "
              "round medians (min .. max round median), us\n",
              static_cast<long long>(M), rounds, calls);
  for (const Cfg& c : cfgs) {
    std::vector<double> v = med[c.name];
    std::sort(v.begin(), v.end());
    std::printf("  %-40s %7.2f  (%.2f .. %.2f)\n", c.name, v[v.size() / 2], v.front(), v.back());
  }
}

TEST_F(SplitRoleMeasure, Timeline) {
  const std::vector<Cfg> cfgs = {
      {"2048 stream LEAN R4 (default; the same trace records)", 2048, 2, 4, 3, 3, nullptr},
      {"2048 split cb2 R6", 2048, 2, 6, 1, 7, nullptr},
      {"2048 split cb2 R7 EP", 2048, 2, 7, 193, 7, nullptr},
      {"2048 split cb2 R6 FIRST START", 2048, 2, 6, 1537, 7, nullptr},
      {"2048 split cb2 R7 EP FIRST START", 2048, 2, 7, 1729, 7, nullptr},
      {"7168 split cb2 R7 EP", 7168, 2, 7, 193, 7, nullptr},
  };
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
  for (const Cfg& c : cfgs) {
    SCOPED_TRACE(c.name);
    ASSERT_TRUE(detail::rms_norm_block_quant_force_config(c.N, 2, 16, c.col_blocks, 1, c.stages, c.overlap, c.exchange));
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
    std::map<int, std::vector<double>> wait_blocks, pass1, exch, pass2, p2_end;
    for (const Cta& x : ctas) {
      const double st = static_cast<double>(x.t0 - t0) / 1000.0;
      start.push_back(st);
      double prev_end = 0;  // the previous phase end (this CTA's clock)
      std::map<int, double> landed, p1done;
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
          case 3:
            exch[rec.item].push_back(rec.us - std::max(prev_end, p1done.count(rec.item) ? p1done[rec.item] : 0.0));
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
        prev_end = rec.us;
      }
      (void)last_p2;
    }
    double span = q(end, 1);
    std::printf("[split timeline] %s: %zu CTAs, events %.2f µs, CTA span (globaltimer, first start → last end) "
                "%.2f µs; µs (min / p10 / p50 / p90 / max over CTAs)\n",
                c.name, ctas.size(), ms * 1000.0, span);
    row5("start (after the first CTA's)", start);
    row5("item 0's first block landed", first_landed);
    row5("end", end);
    for (const auto& [it, v] : wait_blocks) {
      std::printf("  item %2d (%4zu CTAs): blocks wait p50/p90 %5.2f %5.2f | pass 1 %5.2f | exchange p50/p90 %5.2f "
                  "%5.2f | pass 2 p50/p90 %5.2f %5.2f | pass 2 end p50/max %6.2f %6.2f\n",
                  it, v.size(), q(v, 0.5), q(v, 0.9), q(pass1[it], 0.5), q(exch[it], 0.5), q(exch[it], 0.9),
                  q(pass2[it], 0.5), q(pass2[it], 0.9), q(p2_end[it], 0.5), q(p2_end[it], 1));
    }
  }
  detail::driver().cuEventDestroy(ev0);
  detail::driver().cuEventDestroy(ev1);
}

}  // namespace
}  // namespace kiln::test
