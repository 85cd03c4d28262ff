// runtime/runtime_impl.hpp — what host recipes use from the Runtime: the device, the registry, launch.
#pragma once
#include <cuda.h>

#include <memory>
#include <mutex>
#include <optional>

#include "cache/cubin_cache.hpp"
#include "kiln/runtime.hpp"
#include "runtime/registry.hpp"
#include "runtime/specialization.hpp"

namespace kiln::detail {

struct DeviceInfo {
  int ordinal = 0;
  CUdevice device = 0;
  CUcontext context = nullptr;
  Arch arch{};
  int sm_count = 0;
  int max_smem_per_block_optin = 0;
  std::string name;
};

struct LaunchDims {
  unsigned grid[3] = {1, 1, 1};
  unsigned block[3] = {1, 1, 1};
  unsigned cluster[3] = {1, 1, 1};
  unsigned smem = 0;
};

}  // namespace kiln::detail

namespace kiln {
using detail::Arch;
using detail::DeviceInfo;
using detail::Kernel;
using detail::LaunchDims;
using detail::Specialization;

struct Runtime::Impl {
  explicit Impl(RuntimeOptions o);

  RuntimeOptions options;
  std::unique_ptr<cache::CubinCache> cache;  // null when memory-only
  detail::Counters counters;
  std::unique_ptr<detail::KernelRegistry> registry;

  // The bound device (initialized on first call; throws DeviceError without a driver or device).
  const DeviceInfo& device() {
    if (!device_ready_.load(std::memory_order_acquire)) init_device();
    return device_;
  }
  // The arch kernels are compiled for: options.arch if set, else the device's.
  Arch target_arch() { return arch_override_ ? *arch_override_ : device().arch; }

  // The loaded kernel of a specialization (compiling or loading it on first use).
  const Kernel& kernel(const Specialization& s) {
    device();
    return registry->get(s);
  }
  // The specialization to launch for `tokens` rows (the op's run-time M): `s` carries the family's heuristic default
  // config; when a tuning database is loaded (KILN_TUNING_DB) and holds an entry for s's family, kernel, params,
  // arch and the token bucket of `tokens`, its config replaces s.config. Recipes derive their launch shape from the
  // config this returns. A hit costs one hash lookup; nothing is formatted or read from disk.
  Specialization tuned(const Specialization& s, int64_t tokens);

  // How many CTAs of `threads` threads and `smem` dynamic shared memory fit on one SM (asked once per kernel:
  // a persistent recipe always launches a kernel at one block shape).
  int resident_per_sm(const Kernel& k, int threads, int smem);

  // Launches with one by-value struct argument.
  template <typename Args>
  void launch(const Kernel& k, const LaunchDims& d, Stream stream, const Args& args) {
    void* params[] = {const_cast<Args*>(&args)};
    launch_raw(k, d, stream, params);
  }
  template <typename Args>
  void launch(const Specialization& s, const LaunchDims& d, Stream stream, const Args& args) {
    launch(kernel(s), d, stream, args);
  }
  void launch_raw(const Kernel& k, const LaunchDims& d, Stream stream, void** params);

  // Stream-ordered scratch memory (cuMemAllocAsync / cuMemFreeAsync).
  CUdeviceptr alloc_async(size_t bytes, Stream stream);
  void free_async(CUdeviceptr p, Stream stream);

 private:
  void init_device();
  std::mutex device_mutex_;
  std::atomic<bool> device_ready_{false};
  DeviceInfo device_;
  std::optional<Arch> arch_override_;
};

}  // namespace kiln
