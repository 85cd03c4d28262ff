// tests/gpu/rms_norm_block_quant_split_measure_test.cpp — the split-role mode-2 kernel (rms_norm_block_quant_split.cuh)
// timed against the stream kernel's default in one process (issue 3's M = 8192, N = 2048 / 7168, round_scale 1). Not in
// the 'RmsNormBlockQuant|RmsqSplit' ctest regex: run it with `kiln_gpu_tests --gtest_filter='SplitRoleMeasure*'`. It
// prints, and checks only what must hold whatever the numbers are: a split point writes the same bits as the stream
// kernel's LEAN point with the same blocks an item (same pass 1 and exchange order: the same r).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kiln/ops/rms_norm.hpp"
#include "ops/bench/rms_norm.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "test_util.hpp"

namespace kiln::detail {
bool rms_norm_block_quant_force_config(int64_t N, int mode, int warps, int col_blocks, int prefetch, int stages,
                                       int overlap, int exchange);
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
  void TearDown() override { detail::rms_norm_block_quant_force_config(0, 0, 0, 0, 0, 0, 0, 0); }
};

TEST_F(SplitRoleMeasure, Sweep) {
  const std::vector<Cfg> cfgs = {
      {"2048 stream LEAN cb2 R4 (default)", 2048, 2, 4, 3, 3, nullptr},
      {"2048 stream LEAN cb1 R2", 2048, 1, 2, 3, 3, nullptr},
      {"2048 split cb2 R6", 2048, 2, 6, 1, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb1 R3", 2048, 1, 3, 1, 7, "2048 stream LEAN cb1 R2"},
      {"2048 split cb2 R6 PRO3", 2048, 2, 6, 3, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb1 R3 PRO3", 2048, 1, 3, 3, 7, "2048 stream LEAN cb1 R2"},
      {"2048 split cb2 R6 TC", 2048, 2, 6, 5, 7, nullptr},
      {"2048 split cb1 R3 TC", 2048, 1, 3, 5, 7, nullptr},
      {"2048 split cb1 R3 YS", 2048, 1, 3, 9, 7, "2048 stream LEAN cb1 R2"},
      {"2048 split cb1 R3 YS+TC", 2048, 1, 3, 13, 7, nullptr},
      {"2048 split cb1 R3 YS+P1C", 2048, 1, 3, 25, 7, "2048 stream LEAN cb1 R2"},
      {"2048 split cb2 R6 EP", 2048, 2, 6, 65, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb2 R7", 2048, 2, 7, 129, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb2 R7 EP", 2048, 2, 7, 193, 7, "2048 stream LEAN cb2 R4 (default)"},
      {"2048 split cb1 R3 YS+EP", 2048, 1, 3, 73, 7, "2048 stream LEAN cb1 R2"},
      {"2048 split cb1 R3 YS+P1C+EP", 2048, 1, 3, 89, 7, "2048 stream LEAN cb1 R2"},
      {"7168 stream LEAN cb2 R4 (default)", 7168, 2, 4, 3, 3, nullptr},
      {"7168 split cb2 R6", 7168, 2, 6, 1, 7, "7168 stream LEAN cb2 R4 (default)"},
      {"7168 split cb1 R3", 7168, 1, 3, 1, 7, nullptr},
      {"7168 split cb2 R6 PRO3", 7168, 2, 6, 3, 7, "7168 stream LEAN cb2 R4 (default)"},
      {"7168 split cb2 R6 TC", 7168, 2, 6, 5, 7, nullptr},
      {"7168 split cb1 R3 YS", 7168, 1, 3, 9, 7, "7168 split cb1 R3"},
      {"7168 split cb1 R3 YS+TC", 7168, 1, 3, 13, 7, nullptr},
      {"7168 split cb1 R3 YS+P1C", 7168, 1, 3, 25, 7, "7168 split cb1 R3"},
      {"7168 split cb2 R6 EP", 7168, 2, 6, 65, 7, "7168 stream LEAN cb2 R4 (default)"},
      {"7168 split cb2 R7", 7168, 2, 7, 129, 7, "7168 stream LEAN cb2 R4 (default)"},
      {"7168 split cb2 R7 EP", 7168, 2, 7, 193, 7, "7168 stream LEAN cb2 R4 (default)"},
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

}  // namespace
}  // namespace kiln::test
