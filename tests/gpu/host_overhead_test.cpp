// tests/gpu/host_overhead_test.cpp — what a call costs on the host, and what a disk hit costs.
//
// Targets (issue: the spine): an op call on an in-memory hit costs ≤ 2 µs of host time beyond the driver's own
// launch; a disk hit (read, verify, load the module) ≤ 5 ms. The launch itself is measured with the same kernel
// launched directly through the driver, and subtracted.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "kiln/ops/rms_norm.hpp"
#include "kiln/rms_norm_args.h"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

using Clock = std::chrono::steady_clock;

TEST(HostOverhead, InMemoryHitCostsAtMostTwoMicrosecondsBeyondTheLaunch) {
  KILN_SKIP_IF_NO_GPU();
  Runtime rt(test_runtime_options());
  constexpr int64_t M = 1, N = 2048;
  DeviceBuffer x(rt, M * N * 2), w(rt, N * 2), y(rt, M * N * 2);
  x.fill(0x3c);
  w.fill(0x3c);
  const TensorRef xt = TensorRef::contiguous(x.data(), DType::bf16, {M, N});
  const TensorRef wt = TensorRef::contiguous(w.data(), DType::bf16, {N});
  const TensorRef yt = TensorRef::contiguous(y.data(), DType::bf16, {M, N});
  rms_norm_fwd(rt, xt, wt, yt, {}, 1e-6f, nullptr);  // compile / load once
  synchronize();
  const RuntimeStats before = rt.stats();
  const double op_us = host_us_per_call([&] { rms_norm_fwd(rt, xt, wt, yt, {}, 1e-6f, nullptr); });
  const RuntimeStats after = rt.stats();
  EXPECT_EQ(after.compiles, before.compiles);
  EXPECT_EQ(after.disk_hits, before.disk_hits);
  EXPECT_GE(after.memory_hits - before.memory_hits, 31u * 256u);

  // The same kernel (the recipe's specialization for this shape), launched straight through the driver.
  detail::Specialization s;
  s.family = detail::find_family("rms_norm");
  ASSERT_NE(s.family, nullptr);
  s.arch = rt.impl().target_arch();
  s.kernel = 0;
  s.params[0] = N;
  s.config[0] = 8;
  const detail::Kernel& k = rt.impl().registry->get(s);
  RmsNormFwdArgs a{x.data(), N, w.data(), y.data(), N, nullptr, static_cast<int>(M), 1e-6f};
  void* params[] = {&a};
  detail::LaunchDims d;
  d.block[0] = 256;
  const double raw_us = host_us_per_call([&] { rt.impl().launch_raw(k, d, nullptr, params); });

  std::printf("[ host     ] op call %.2f us, bare launch %.2f us, kiln overhead %.2f us\n", op_us, raw_us,
              op_us - raw_us);
  EXPECT_LE(op_us - raw_us, 2.0);
}

TEST(HostOverhead, DiskHitLoadsWithoutCompiling) {
  KILN_SKIP_IF_NO_GPU();
  const RuntimeOptions opts = test_runtime_options();
  constexpr int64_t M = 7, N = 4096;
  {
    Runtime warm(opts);  // puts the entry on disk
    DeviceBuffer x(warm, M * N * 2), w(warm, N * 2), y(warm, M * N * 2);
    x.fill(0x3c);
    w.fill(0x3c);
    rms_norm_fwd(warm, TensorRef::contiguous(x.data(), DType::bf16, {M, N}),
                 TensorRef::contiguous(w.data(), DType::bf16, {N}),
                 TensorRef::contiguous(y.data(), DType::bf16, {M, N}), {}, 1e-6f, nullptr);
    synchronize();
  }
  Runtime rt(opts);  // empty registry, same cache
  DeviceBuffer x(rt, M * N * 2), w(rt, N * 2), y(rt, M * N * 2);
  x.fill(0x3c);
  w.fill(0x3c);
  const auto t0 = Clock::now();
  rms_norm_fwd(rt, TensorRef::contiguous(x.data(), DType::bf16, {M, N}), TensorRef::contiguous(w.data(), DType::bf16, {N}),
               TensorRef::contiguous(y.data(), DType::bf16, {M, N}), {}, 1e-6f, nullptr);
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  synchronize();
  std::printf("[ disk hit ] first call with the entry on disk: %.2f ms\n", ms);
  EXPECT_EQ(rt.stats().compiles, 0u);
  EXPECT_EQ(rt.stats().disk_hits, 1u);
  EXPECT_LE(ms, 5.0);
}

}  // namespace
}  // namespace kiln::test
