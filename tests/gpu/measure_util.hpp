// tests/gpu/measure_util.hpp — the harness the forced-config measurement suites share
// (rms_norm_block_quant_pipe_measure_test.cpp, rms_norm_block_quant_stream_measure_test.cpp,
// moe_route_measure_test.cpp): a bench instance's outputs downloaded for a bit-for-bit comparison, each config's first
// run checked against its baseline, and the interleaved timing sweep over configs in one process.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kiln/dtype.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "test_util.hpp"

namespace kiln::test {

// Every output tensor of a bench instance back to back.
inline std::vector<uint8_t> download_outputs(const detail::BenchInstance& inst) {
  std::vector<uint8_t> all;
  for (const TensorRef& t : inst.outputs) {
    const size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(t.dtype);
    const size_t at = all.size();
    all.resize(at + bytes);
    detail::check(detail::driver().cuMemcpyDtoH(all.data() + at, reinterpret_cast<CUdeviceptr>(t.data), bytes),
                  "cuMemcpyDtoH");
  }
  return all;
}

// Fails (naming the first differing byte) unless `got` equals `want`, the outputs of config `baseline`, bit for bit.
inline void expect_same_bits(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want, const char* baseline) {
  ASSERT_EQ(got.size(), want.size()) << "(" << baseline << ")";
  const auto diff = std::mismatch(got.begin(), got.end(), want.begin());
  EXPECT_TRUE(diff.first == got.end()) << "first differing output byte " << (diff.first - got.begin()) << ": "
                                       << int(*diff.first) << " vs " << int(*diff.second) << " (" << baseline << ")";
}

// Forces each config of `cfgs` (force(c)), runs it once on at(c) (compiling it) and returns its outputs by name;
// a config naming a `baseline` (listed before it) must equal that config's outputs bit for bit.
template <class Cfg, class Force, class At>
std::map<std::string, std::vector<uint8_t>> first_runs_checked(const std::vector<Cfg>& cfgs, Force force, At at) {
  std::map<std::string, std::vector<uint8_t>> outs;
  for (const Cfg& c : cfgs) {
    SCOPED_TRACE(c.name);
    force(c);
    at(c).run(nullptr);
    synchronize();
    outs[c.name] = download_outputs(at(c));
    if (c.baseline) expect_same_bits(outs.at(c.name), outs.at(c.baseline), c.baseline);
  }
  return outs;
}

// Round-by-round differences other[i] − base[i] of two timings taken in the same rounds, sorted, and the number of
// rounds in which `other` was faster (the paired A/B every measurement suite prints).
struct PairedDiff {
  std::vector<double> d;  // sorted
  int wins = 0;
  double at(double q) const { return d.empty() ? 0.0 : d[static_cast<size_t>(q * (d.size() - 1) + 0.5)]; }
};
inline PairedDiff paired_diff(const std::vector<double>& base, const std::vector<double>& other) {
  PairedDiff p;
  for (size_t i = 0; i < base.size() && i < other.size(); ++i) {
    p.d.push_back(other[i] - base[i]);
    p.wins += other[i] < base[i];
  }
  std::sort(p.d.begin(), p.d.end());
  return p;
}

// Times `names.size()` configs in one process: `rounds` rounds, each calling select(i) (forcing config i) and timing
// `calls` calls of run(i) (L2 flushed before each, 2 warm-up calls), in forward order in even rounds and backward in
// odd ones (no config always follows the same one), then prints per config the median of its round medians and the
// range of the round medians under `title`.
inline void interleaved_sweep(const std::string& title, const std::vector<std::string>& names,
                              const std::function<void(size_t)>& select,
                              const std::function<std::function<void(Stream)>(size_t)>& run, detail::L2Flusher& l2,
                              int rounds, int calls) {
  std::map<std::string, std::vector<double>> med;  // per round
  for (int round = 0; round < rounds; ++round)
    for (size_t k = 0; k < names.size(); ++k) {
      const size_t i = round % 2 == 0 ? k : names.size() - 1 - k;
      select(i);
      med[names[i]].push_back(detail::median(detail::time_calls_us(run(i), nullptr, l2, 2, calls)));
    }
  std::printf("%s, %d rounds x %d calls (L2 flushed): median of round medians (min .. max round median), µs\n",
              title.c_str(), rounds, calls);
  for (const std::string& name : names) {
    std::vector<double> v = med[name];
    std::sort(v.begin(), v.end());
    std::printf("  %-40s %7.2f  (%.2f .. %.2f)\n", name.c_str(), v[v.size() / 2], v.front(), v.back());
  }
}

}  // namespace kiln::test
