#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "kiln/errors.hpp"
#include "kiln/model.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/log.hpp"
#include "runtime/runtime_impl.hpp"
#include "tuner/tuning_db.hpp"

namespace kiln {
namespace detail {
namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v && *v) ? v : nullptr;
}

bool env_true(const char* name) {
  const char* v = env(name);
  return v && std::string_view(v) != "0" && std::string_view(v) != "false";
}

LogLevel parse_level(std::string_view v) {
  if (v == "error") return LogLevel::error;
  if (v == "warn" || v == "warning") return LogLevel::warn;
  if (v == "info") return LogLevel::info;
  if (v == "debug") return LogLevel::debug;
  throw InvalidArgument(fmt::format("KILN_LOG_LEVEL: expected error|warn|info|debug, got '{}'", v));
}

}  // namespace
}  // namespace detail

using namespace detail;

Runtime::Impl::Impl(RuntimeOptions o) : options(std::move(o)) {
  families();  // registration assigns family ids before any op builds a key
  if (options.read_env) {
    if (const char* v = env("KILN_LOG_LEVEL")) options.log_level = parse_level(v);
    if (options.arch.empty())
      if (const char* v = env("KILN_ARCH")) options.arch = v;
    if (env_true("KILN_REQUIRE_PREWARMED")) options.require_prewarmed = true;
  }
  set_log_level(options.log_level);
  if (!options.arch.empty()) arch_override_ = Arch::parse(options.arch);
  if (!options.memory_only) {
    cache = std::make_unique<cache::CubinCache>(options.cache_dir.empty() ? cache::default_cache_root()
                                                                          : options.cache_dir);
    if (!cache->enabled())
      log(LogLevel::warn, "cubin cache disabled, compiling in memory only: {}", cache->disabled_reason());
  }
  registry = std::make_unique<KernelRegistry>(cache.get(), options.require_prewarmed, counters);
}

void Runtime::Impl::init_device() {
  std::lock_guard g(device_mutex_);
  if (device_ready_.load(std::memory_order_relaxed)) return;
  const Driver& d = driver();
  int count = 0;
  check(d.cuDeviceGetCount(&count), "cuDeviceGetCount");
  if (count == 0) throw DeviceError("no CUDA device found");
  int ordinal = options.device;
  if (ordinal < 0) {
    CUcontext cur = nullptr;
    CUdevice dev = 0;
    ordinal = (d.cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur && d.cuCtxGetDevice(&dev) == CUDA_SUCCESS) ? dev : 0;
  }
  if (ordinal >= count)
    throw DeviceError(fmt::format("RuntimeOptions.device: device {} requested, {} present", ordinal, count));
  DeviceInfo info;
  info.ordinal = ordinal;
  check(d.cuDeviceGet(&info.device, ordinal), "cuDeviceGet");
  check(d.cuDevicePrimaryCtxRetain(&info.context, info.device), "cuDevicePrimaryCtxRetain");
  check(d.cuCtxSetCurrent(info.context), "cuCtxSetCurrent");
  int major = 0, minor = 0;
  check(d.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, info.device), "cuDeviceGetAttribute");
  check(d.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, info.device), "cuDeviceGetAttribute");
  check(d.cuDeviceGetAttribute(&info.sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, info.device),
        "cuDeviceGetAttribute");
  check(d.cuDeviceGetAttribute(&info.max_smem_per_block_optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                               info.device),
        "cuDeviceGetAttribute");
  info.arch.sm = major * 10 + minor;
  info.arch.suffix = info.arch.sm >= 90 ? 'a' : 0;  // arch-specific features (wgmma, setmaxnreg) on Hopper+
  char name[256] = {};
  d.cuDeviceGetName(name, sizeof name, info.device);
  info.name = name;
  device_ = info;
  device_ready_.store(true, std::memory_order_release);
}

void Runtime::Impl::launch_raw(const Kernel& k, const LaunchDims& dims, Stream stream, void** params) {
  const Driver& d = driver();
  // The calling thread may have no context current (a fresh worker thread): bind the runtime's device.
  CUcontext cur = nullptr;
  if (d.cuCtxGetCurrent(&cur) != CUDA_SUCCESS || cur == nullptr) check(d.cuCtxSetCurrent(device_.context), "cuCtxSetCurrent");
  CUlaunchConfig cfg{};
  cfg.gridDimX = dims.grid[0];
  cfg.gridDimY = dims.grid[1];
  cfg.gridDimZ = dims.grid[2];
  cfg.blockDimX = dims.block[0];
  cfg.blockDimY = dims.block[1];
  cfg.blockDimZ = dims.block[2];
  cfg.sharedMemBytes = dims.smem;
  cfg.hStream = reinterpret_cast<CUstream>(stream);
  CUlaunchAttribute attr[1];
  if (dims.cluster[0] * dims.cluster[1] * dims.cluster[2] > 1) {
    attr[0].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr[0].value.clusterDim.x = dims.cluster[0];
    attr[0].value.clusterDim.y = dims.cluster[1];
    attr[0].value.clusterDim.z = dims.cluster[2];
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  check(d.cuLaunchKernelEx(&cfg, k.fn, params, nullptr), "cuLaunchKernelEx");
  counters.launches.fetch_add(1, std::memory_order_relaxed);
}

Specialization Runtime::Impl::tuned(const Specialization& s, int64_t /*tokens*/) {
  return s;  // no tuning database support yet (issue 4): the heuristic default
}

int Runtime::Impl::resident_per_sm(const Kernel& k, int threads, int smem) {
  int n = k.resident_per_sm.load(std::memory_order_relaxed);
  if (n == 0) {
    check(driver().cuOccupancyMaxActiveBlocksPerMultiprocessor(&n, k.fn, threads, static_cast<size_t>(smem)),
          "cuOccupancyMaxActiveBlocksPerMultiprocessor");
    n = std::max(n, 1);
    k.resident_per_sm.store(n, std::memory_order_relaxed);
  }
  return n;
}

CUdeviceptr Runtime::Impl::alloc_async(size_t bytes, Stream stream) {
  CUdeviceptr p = 0;
  check(driver().cuMemAllocAsync(&p, bytes, reinterpret_cast<CUstream>(stream)), "cuMemAllocAsync (workspace)");
  return p;
}

void Runtime::Impl::free_async(CUdeviceptr p, Stream stream) {
  check(driver().cuMemFreeAsync(p, reinterpret_cast<CUstream>(stream)), "cuMemFreeAsync (workspace)");
}

Runtime::Runtime(RuntimeOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Runtime::~Runtime() = default;

const RuntimeOptions& Runtime::options() const { return impl_->options; }
std::string Runtime::cache_dir() const {
  return impl_->cache && impl_->cache->enabled() ? impl_->cache->root() : std::string();
}

RuntimeStats Runtime::stats() const {
  const auto& c = impl_->counters;
  return {c.memory_hits.load(), c.disk_hits.load(), c.compiles.load(), c.rebuilt.load(), c.launches.load()};
}

namespace {

// Builds (or finds in the cache) every specialization in `specs` on a pool of `jobs` threads; reports each through
// `on_entry` as it finishes and rethrows the first failure after all workers stop.
std::vector<PrewarmEntry> prewarm_specializations(Runtime::Impl& impl, const std::vector<Specialization>& specs,
                                                  int jobs,
                                                  void (*on_entry)(const PrewarmEntry&, size_t, size_t, void*),
                                                  void* user) {
  std::vector<PrewarmEntry> entries(specs.size());
  std::atomic<size_t> next{0}, done{0};
  std::mutex cb_mutex;
  std::exception_ptr first_error;
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < specs.size();) {
      const Specialization& s = specs[i];
      PrewarmEntry& e = entries[i];
      try {
        EnsureResult r = ensure_cubin(s, impl.cache.get(), impl.options.require_prewarmed, impl.counters);
        e = {s.family->name, r.disk_key, s.arch.name(), s.describe(), r.status, r.compile_ms, r.cubin.size()};
      } catch (...) {
        std::lock_guard g(cb_mutex);
        if (!first_error) first_error = std::current_exception();
        continue;
      }
      std::lock_guard g(cb_mutex);
      size_t n = ++done;
      if (on_entry) on_entry(e, n, specs.size(), user);
    }
  };
  if (jobs <= 0) jobs = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  jobs = std::min<int>(jobs, static_cast<int>(std::max<size_t>(1, specs.size())));
  std::vector<std::thread> pool;
  for (int j = 1; j < jobs; ++j) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (first_error) std::rethrow_exception(first_error);
  return entries;
}

}  // namespace

std::vector<PrewarmEntry> Runtime::prewarm(const ModelConfig& model, const std::vector<std::string>& archs, int jobs,
                                           void (*on_entry)(const PrewarmEntry&, size_t, size_t, void*), void* user) {
  std::vector<Specialization> specs;
  std::unordered_set<Key128, Key128Hash> seen;
  for (const std::string& a : archs) {
    const Arch arch = Arch::parse(a);
    for (const FamilyDef* f : families()) {
      std::vector<Specialization> part;
      if (f->enumerate) f->enumerate(model, arch, part);
      for (Specialization& s : part)
        if (seen.insert(s.key()).second) specs.push_back(s);
    }
  }
  return prewarm_specializations(*impl_, specs, jobs, on_entry, user);
}

std::vector<PrewarmEntry> Runtime::prewarm_tuning(const std::string& tuning_file, const std::vector<std::string>& archs,
                                                  int jobs,
                                                  void (*on_entry)(const PrewarmEntry&, size_t, size_t, void*),
                                                  void* user) {
  const tuner::TuningDb db = tuner::TuningDb::load(tuning_file);
  std::unordered_set<std::string> wanted;
  for (const std::string& a : archs) wanted.insert(Arch::parse(a).name());
  std::vector<Specialization> specs;
  std::unordered_set<Key128, Key128Hash> seen;  // entries for several token buckets often share one config
  for (const tuner::TuningEntry& e : db.entries) {
    if (!wanted.empty() && !wanted.count(e.key.arch)) continue;
    Specialization s;
    if (!tuner::to_specialization(e, s))
      throw InvalidArgument(fmt::format("{}: entry {} does not fit this build's families", tuning_file, e.key.describe()));
    if (seen.insert(s.key()).second) specs.push_back(s);
  }
  return prewarm_specializations(*impl_, specs, jobs, on_entry, user);
}

}  // namespace kiln
