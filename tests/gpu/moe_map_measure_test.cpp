// tests/gpu/moe_map_measure_test.cpp — a timeline of moe_make_row_id_map's one launch (moe_map_fused_kernel) at the
// bench shape (T = 8192, E = 256, top-8, P = 16). Not in the CI suites' regex (…Measure…): run it with
// `kiln_gpu_tests --gtest_filter='MoeMapMeasure*'`. It prints per phase the µs after the first CTA's start
// (min / p50 / p90 / max over CTAs) and checks only what must hold whatever the numbers are: tracing changes no
// output and each CTA's stamps are ordered.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <vector>

#include "gpu/measure_util.hpp"
#include "gpu/moe_route_spec.hpp"
#include "kiln/moe_routing_args.h"
#include "kiln/ops/moe.hpp"
#include "ops/bench/moe_instances.hpp"
#include "runtime/bench.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::detail {
extern std::atomic<unsigned long long*> moe_map_trace;
}  // namespace kiln::detail

namespace kiln::test {
namespace {

class MoeMapMeasure : public GpuTest {
 protected:
  void TearDown() override { detail::moe_map_trace.store(nullptr); }
};

TEST_F(MoeMapMeasure, Timeline) {
  Runtime& r = rt();
  bind_device(r);
  constexpr int64_t T = 8192, E = 256;
  detail::BenchInstance in = detail::moe_row_id_map_instance(r, T, E, 8, 16);
  const int max_ctas = 1024;
  DeviceBuffer tb(r, static_cast<int64_t>(max_ctas) * kMoeMapTraceSlots * 8);
  detail::L2Flusher l2(r, nullptr);
  const char* names[] = {"loaded", "counted", "waited", "based", "end"};
  for (auto [fill, load] : {std::pair{4, 256}, {4, 0}}) {
    std::vector<uint8_t> plain;
    {
      detail::ForceConfigScope f(moe_map_fused_spec(r.impl().target_arch(), E, false, fill, load));
      in.run(nullptr);
      synchronize();
      plain = download_outputs(in);
    }
    detail::Specialization s = moe_map_fused_spec(r.impl().target_arch(), E, false, fill, load);
    s.config[5] = 64;
    detail::ForceConfigScope f(s);
    detail::moe_map_trace.store(static_cast<unsigned long long*>(tb.data()));
    in.run(nullptr);  // compiles the TRACE variant
    synchronize();
    for (int rep = 0; rep < 2; ++rep) {
      tb.fill(0);
      l2.flush(nullptr);
      in.run(nullptr);
      synchronize();
      EXPECT_TRUE(download_outputs(in) == plain) << "tracing changed the outputs";
      const std::vector<uint64_t> tr = tb.download<uint64_t>(static_cast<int64_t>(max_ctas) * kMoeMapTraceSlots);
      int ctas = 0;
      while (ctas < max_ctas && tr[static_cast<size_t>(ctas) * kMoeMapTraceSlots] != 0) ++ctas;
      ASSERT_GT(ctas, 0);
      uint64_t t0 = ~0ull;
      for (int b = 0; b < ctas; ++b) t0 = std::min(t0, tr[static_cast<size_t>(b) * kMoeMapTraceSlots]);
      std::printf("[map timeline] fill %d load %d rep %d: %d CTAs; µs after the first start: min / p50 / p90 / max\n",
                  fill, load, rep, ctas);
      for (int slot = 0; slot < 6; ++slot) {
        std::vector<double> v;
        for (int b = 0; b < ctas; ++b) {
          const uint64_t x = tr[static_cast<size_t>(b) * kMoeMapTraceSlots + slot];
          if (slot > 0) EXPECT_GE(x, tr[static_cast<size_t>(b) * kMoeMapTraceSlots + slot - 1]) << "CTA " << b;
          v.push_back(static_cast<double>(x - t0) * 1e-3);
        }
        std::sort(v.begin(), v.end());
        auto q = [&](double p) { return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5)]; };
        std::printf("  %-8s %7.2f %7.2f %7.2f %7.2f\n", slot == 0 ? "start" : names[slot - 1], v.front(), q(0.5),
                    q(0.9), v.back());
      }
      // Per CTA phase durations (p50 / max).
      for (int slot = 1; slot < 6; ++slot) {
        std::vector<double> d;
        for (int b = 0; b < ctas; ++b)
          d.push_back(static_cast<double>(tr[static_cast<size_t>(b) * kMoeMapTraceSlots + slot] -
                                          tr[static_cast<size_t>(b) * kMoeMapTraceSlots + slot - 1]) * 1e-3);
        std::sort(d.begin(), d.end());
        std::printf("  d(%s) p50 %.2f max %.2f\n", names[slot - 1], d[d.size() / 2], d.back());
      }
    }
  }
}

}  // namespace
}  // namespace kiln::test
