// tests/gpu/bench_harness_test.cpp — the bench harness's own GPU paths: `kiln bench --cold-code` (L2Flusher's
// instruction-cache eviction, templates/kiln/code_evict.cuh) runs on the device, leaves the timed op's outputs alone,
// and every timed call reads a finite, positive time.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/bench/rms_norm.hpp"
#include "runtime/bench.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

class BenchHarnessGpu : public GpuTest {};

TEST_F(BenchHarnessGpu, ColdCodeEvictsAndTimes) {
  Runtime& r = rt();
  bind_device(r);
  detail::BenchInstance inst = detail::rms_norm_block_quant_instance(r, 1024, 2048, 2, false, false);
  detail::L2Flusher l2(r, nullptr);
  // The op's outputs after a plain call, then after calls timed with the evictor before each: the same bytes.
  inst.run(nullptr);
  detail::device_synchronize();
  auto bytes_of = [](const TensorRef& t) { return static_cast<size_t>(t.numel()) * dtype_size(t.dtype); };
  std::vector<std::vector<uint8_t>> before;
  for (const auto& o : inst.outputs) {
    before.emplace_back(bytes_of(o));
    detail::copy_to_host(before.back().data(), o.data, bytes_of(o));
  }
  ASSERT_FALSE(l2.cold_code());
  l2.set_cold_code(true, nullptr);
  ASSERT_TRUE(l2.cold_code());
  const std::vector<double> cold = detail::time_calls_us(inst.run, nullptr, l2, 1, 6);
  const std::vector<double> empty = detail::time_calls_us([&](Stream s) { l2.empty(s); }, nullptr, l2, 1, 6);
  l2.set_cold_code(false, nullptr);
  const std::vector<double> warm = detail::time_calls_us(inst.run, nullptr, l2, 1, 6);
  for (const std::vector<double>* v : {&cold, &empty, &warm}) {
    ASSERT_EQ(v->size(), 6u);
    for (double us : *v) EXPECT_TRUE(std::isfinite(us) && us > 0.0) << us;
  }
  for (size_t i = 0; i < inst.outputs.size(); ++i) {
    std::vector<uint8_t> after(bytes_of(inst.outputs[i]));
    detail::copy_to_host(after.data(), inst.outputs[i].data, after.size());
    EXPECT_EQ(after, before[i]) << "output " << i;
  }
  std::printf("[cold code] rms_norm_block_quant mode 2 round_scale 0, 1024 x 2048: cold %.2f us, warm %.2f us; "
              "empty kernel cold %.2f us\n",
              detail::median(cold), detail::median(warm), detail::median(empty));
}

}  // namespace
}  // namespace kiln::test
