#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "kiln/errors.hpp"
#include "kiln/model.hpp"
#include "runtime/cubin_elf.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/log.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/bench.hpp"
#include "tuner/tuner.hpp"
#include "tuner/tuning_db.hpp"
#include "tuner/tuning_table.hpp"

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

std::vector<std::string> split_paths(std::string_view list) {
  std::vector<std::string> out;
  while (!list.empty()) {
    const size_t colon = list.find(':');
    if (colon != 0) out.emplace_back(list.substr(0, colon));
    if (colon == std::string_view::npos) break;
    list.remove_prefix(colon + 1);
  }
  return out;
}

}  // namespace
}  // namespace detail

using namespace detail;

Runtime::Impl::Impl(RuntimeOptions o, Runtime& owner_) : options(std::move(o)), owner(owner_) {
  families();  // registration assigns family ids before any op builds a key
  if (options.read_env) {
    if (options.log_level == LogLevel::warn)  // the default: an explicit level wins, as arch and tuning_db do
      if (const char* v = env("KILN_LOG_LEVEL")) options.log_level = parse_level(v);
    if (options.arch.empty())
      if (const char* v = env("KILN_ARCH")) options.arch = v;
    if (env_true("KILN_REQUIRE_PREWARMED")) options.require_prewarmed = true;
    if (options.tuning_db.empty())
      if (const char* v = env("KILN_TUNING_DB")) options.tuning_db = v;
    if (env_true("KILN_AUTOTUNE")) options.autotune = true;
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

  // Tuning files: loaded strictly, once. Under autotune the first file is where results go and may not exist yet;
  // with no file named, results go to <cache root>/tuning.json, loaded if present.
  autotune = options.autotune;
  tuning_files = split_paths(options.tuning_db);
  autotune_file = !tuning_files.empty() ? tuning_files.front()
                                        : (std::filesystem::path(cache && cache->enabled() ? cache->root()
                                                                                           : cache::default_cache_root()) /
                                           "tuning.json")
                                              .string();
  if (autotune && tuning_files.empty()) tuning_files.push_back(autotune_file);
  for (size_t i = 0; i < tuning_files.size(); ++i) {
    const std::string& f = tuning_files[i];
    if (autotune && f == autotune_file && !std::filesystem::exists(f)) continue;
    const tuner::TuningDb db = tuner::TuningDb::load(f);  // throws InvalidArgument naming file:line
    std::vector<tuner::TableEntry> part = tuner::table_entries(db, f, i);
    tuning_entries_.insert(tuning_entries_.end(), part.begin(), part.end());
    log(LogLevel::info, "tuning file {}: {} entries", f, db.entries.size());
  }
  tuning_enabled_ = autotune || !tuning_entries_.empty();
  if (tuning_enabled_) {
    std::lock_guard g(tuning_mutex_);
    rebuild_table();
  }
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
  // alloc_async's pool, created here, never on a first allocation: that may come under stream capture (a call whose
  // other scratch is the per-stream buffer), where creating a pool is not permitted and invalidates the capture.
  {
    CUmemPoolProps props{};
    props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    props.handleTypes = CU_MEM_HANDLE_TYPE_NONE;
    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = ordinal;
    CUmemoryPool created = nullptr;
    if (d.cuMemPoolCreate(&created, &props) == CUDA_SUCCESS) {
      cuuint64_t keep = ~cuuint64_t{0};
      if (d.cuMemPoolSetAttribute(created, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep) == CUDA_SUCCESS)
        scratch_.pool = created;
      else
        d.cuMemPoolDestroy(created);
    }
    if (!scratch_.pool) log(LogLevel::debug, "scratch memory from the device's default pool (no pool of kiln's own)");
  }
  device_ready_.store(true, std::memory_order_release);
}

const DeviceInfo& Runtime::Impl::bind_device() {
  const DeviceInfo& dev = device();
  CUcontext cur = nullptr;
  if (driver().cuCtxGetCurrent(&cur) != CUDA_SUCCESS || cur != dev.context)
    check(driver().cuCtxSetCurrent(dev.context), "cuCtxSetCurrent");
  return dev;
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
  CUlaunchAttribute attr[3];
  unsigned n = 0;
  if (dims.cluster[0] * dims.cluster[1] * dims.cluster[2] > 1) {
    attr[n].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr[n].value.clusterDim.x = dims.cluster[0];
    attr[n].value.clusterDim.y = dims.cluster[1];
    attr[n].value.clusterDim.z = dims.cluster[2];
    ++n;
  }
  if (dims.pdl && device_.arch.sm >= 90) {
    attr[n].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr[n].value.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (dims.cooperative) {
    attr[n].id = CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
    attr[n].value.cooperative = 1;
    ++n;
  }
  if (n) {
    cfg.attrs = attr;
    cfg.numAttrs = n;
  }
  check(d.cuLaunchKernelEx(&cfg, k.fn, params, nullptr), "cuLaunchKernelEx");
  counters.launches.fetch_add(1, std::memory_order_relaxed);
}

// ---- tuned configs -------------------------------------------------------------------------------------------------

const tuner::TuningTable* Runtime::Impl::rebuild_table() {
  tuner::GpuIdentity gpu;
  if (device_ready_.load(std::memory_order_acquire)) gpu = {device_.name, device_.sm_count};
  auto table = std::make_unique<tuner::TuningTable>(tuning_entries_, gpu);
  const tuner::TuningTable* t = table.get();
  tables_.push_back(std::move(table));
  table_knows_gpu_.store(gpu.known(), std::memory_order_release);
  table_.store(t, std::memory_order_release);
  return t;
}

// The table for the bound GPU: the one built at start knows no GPU (the device binds lazily); once the device is
// bound, it is rebuilt once so that same-GPU entries win.
const tuner::TuningTable* Runtime::Impl::current_table() {
  const tuner::TuningTable* t = table_.load(std::memory_order_acquire);
  if (table_knows_gpu_.load(std::memory_order_acquire) || !device_ready_.load(std::memory_order_acquire)) return t;
  std::lock_guard g(tuning_mutex_);
  if (table_knows_gpu_.load(std::memory_order_acquire)) return table_.load(std::memory_order_acquire);
  return rebuild_table();
}

Specialization Runtime::Impl::tuned(const Specialization& s, int64_t tokens) {
  ForcedConfig* forced = t_forced_config;
  if (!forced && !tuning_enabled_) return s;
  const Key128 shape = tuner::shape_key(s);
  Specialization out = s;
  if (forced && forced->shape == shape) {
    ++forced->applied;
    if (forced->observe) {
      forced->observed = s.config;
      return s;
    }
    out.config = forced->config;
    return out;
  }
  if (!tuning_enabled_) return s;
  const tuner::TuningTable::Hit hit = current_table()->find(shape, tuner::bucket_log2(tokens));
  if (hit.config && (hit.exact || !autotune)) {
    out.config = *hit.config;
    return out;
  }
  if (autotune && t_tuning_depth == 0) return autotune_slow(s, tokens, shape);
  if (hit.config) out.config = *hit.config;
  return out;
}

std::string Runtime::Impl::tuning_source(const Specialization& s, int64_t tokens) {
  if (!tuning_enabled_) return "heuristic";
  const tuner::TuningTable* t = current_table();
  const tuner::TableEntry* e = t->explain(tuner::shape_key(s), tuner::bucket_log2(tokens));
  if (!e) return "heuristic";
  if (e->median_us <= 0) return "heuristic (nothing to tune)";
  return fmt::format("tuned ({}, bucket {}{}{})", e->source, e->bucket, e->provenance.gpu.empty() ? "" : ", ",
                     e->provenance.gpu);
}

void Runtime::Impl::pin_heuristic(const Specialization& s, uint64_t bucket) {
  tuner::TableEntry e;
  e.spec = s;
  e.bucket = bucket;
  e.provenance.gpu = device_.name;
  e.provenance.sm_count = device_.sm_count;
  e.source = "(in memory)";
  tuning_entries_.push_back(std::move(e));
  rebuild_table();
}

// KILN_AUTOTUNE's slow path: this bucket of `s` has no entry measured at it.
Specialization Runtime::Impl::autotune_slow(const Specialization& s, int64_t tokens, const Key128& shape) {
  std::lock_guard one_at_a_time(autotune_mutex_);
  const int b = tuner::bucket_log2(tokens);
  const uint64_t bucket = uint64_t{1} << b;
  auto lookup = [&]() -> std::optional<Specialization> {
    const tuner::TuningTable::Hit hit = current_table()->find(shape, b);
    if (!hit.config || !hit.exact) return std::nullopt;
    Specialization out = s;
    out.config = *hit.config;
    return out;
  };
  if (auto done = lookup()) return *done;  // another thread tuned it while this one waited

  // Another process may have stored it since this Runtime started.
  if (std::filesystem::exists(autotune_file)) {
    tuner::TuningDb db;
    try {
      db = tuner::TuningDb::load(autotune_file);
    } catch (const std::exception& e) {  // stores would fail too; this process still tunes for itself
      log(LogLevel::warn, "KILN_AUTOTUNE: cannot re-read {}: {}", autotune_file, e.what());
    }
    std::vector<tuner::TableEntry> fresh;
    for (tuner::TableEntry& e : tuner::table_entries(db, autotune_file, 0))
      if (tuner::shape_key(e.spec) == shape) fresh.push_back(std::move(e));
    if (!fresh.empty()) {
      std::lock_guard g(tuning_mutex_);
      tuning_entries_.insert(tuning_entries_.end(), fresh.begin(), fresh.end());
      rebuild_table();
    }
    if (auto done = lookup()) return *done;
  }

  if (!tuner::tunable(s)) {  // one config only, or the family cannot be tuned: the heuristic, without asking again
    std::lock_guard g(tuning_mutex_);
    pin_heuristic(s, bucket);
    return s;
  }
  bind_device();
  log(LogLevel::info, "KILN_AUTOTUNE: tuning {} [{}] for {} rows (bucket {})", s.family->name, s.describe(), tokens,
      bucket);
  // Quiesce the device so that the caller's queued work does not land in the timings.
  check(driver().cuCtxSynchronize(), "cuCtxSynchronize");
  tuner::TuneResult r;
  try {
    L2Flusher l2(owner, nullptr);
    r = tuner::tune_one(owner, s, tokens, tuner::TuneOptions{}, l2);
  } catch (const std::exception& e) {
    r.has_entry = false;
    r.note = e.what();
  }
  std::lock_guard g(tuning_mutex_);
  if (!r.has_entry) {
    log(LogLevel::warn, "KILN_AUTOTUNE: {} [{}]: {}; using the heuristic", s.family->name, s.describe(), r.note);
    pin_heuristic(s, bucket);
    return s;
  }
  tunes.fetch_add(1, std::memory_order_relaxed);
  try {
    tuner::store_entries(autotune_file, {r.entry});
  } catch (const std::exception& e) {
    log(LogLevel::warn, "KILN_AUTOTUNE: could not store the result in {}: {}", autotune_file, e.what());
  }
  std::vector<tuner::TableEntry> part = tuner::table_entries(tuner::TuningDb{{r.entry}}, autotune_file, 0);
  tuning_entries_.insert(tuning_entries_.end(), part.begin(), part.end());
  rebuild_table();
  log(LogLevel::info, "KILN_AUTOTUNE: {} [{}] at bucket {}: {} ({:.2f} µs, default {:.2f} µs, {} rejected) in {:.2f} s",
      s.family->name, s.describe(), bucket, r.candidates[r.winner].label, r.best_us, r.default_us, r.rejected(),
      r.seconds);
  Specialization out = s;
  out.config = r.candidates[r.winner].spec.config;
  return out;
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

int Runtime::Impl::resident_clusters(const Kernel& k, unsigned cluster, unsigned threads, unsigned smem) {
  int n = k.resident_clusters.load(std::memory_order_relaxed);
  if (n < 0) {
    CUlaunchConfig cfg{};
    cfg.gridDimX = cluster;
    cfg.gridDimY = 1;
    cfg.gridDimZ = 1;
    cfg.blockDimX = threads;
    cfg.blockDimY = 1;
    cfg.blockDimZ = 1;
    cfg.sharedMemBytes = smem;
    CUlaunchAttribute attr[1];
    attr[0].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr[0].value.clusterDim.x = cluster;
    attr[0].value.clusterDim.y = 1;
    attr[0].value.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (driver().cuOccupancyMaxActiveClusters(&n, k.fn, &cfg) != CUDA_SUCCESS) n = 0;  // treated as unschedulable
    log(LogLevel::debug, "{} clusters of {} CTAs ({} threads, {} B shared) resident at once", n, cluster, threads,
        smem);
    k.resident_clusters.store(n, std::memory_order_relaxed);
  }
  return n;
}

uint32_t Runtime::Impl::workspace_tag(CUdeviceptr ws, size_t words, Stream stream, const char* what) {
  static std::atomic<uint32_t> last_tag{0};
  constexpr uint32_t kCapturedTag = 0xffffffffu;
  CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_ACTIVE;
  if (driver().cuStreamIsCapturing(reinterpret_cast<CUstream>(stream), &capture) != CUDA_SUCCESS)
    capture = CU_STREAM_CAPTURE_STATUS_ACTIVE;  // unknown: the safe path
  if (capture != CU_STREAM_CAPTURE_STATUS_NONE) {
    check(driver().cuMemsetD32Async(ws, 0, words, reinterpret_cast<CUstream>(stream)), what);
    return kCapturedTag;
  }
  uint32_t tag;
  do tag = last_tag.fetch_add(1, std::memory_order_relaxed) + 1; while (tag == 0 || tag == kCapturedTag);
  return tag;
}

StreamStateTable::Buffer Runtime::Impl::stream_state(const void* owner, Stream stream, size_t bytes) {
  // The per-thread default stream is one handle for a different stream on every thread: keyed by a per-thread address.
  thread_local const char per_thread_key = 0;
  const Stream key = stream == reinterpret_cast<Stream>(CU_STREAM_PER_THREAD)
                         ? reinterpret_cast<Stream>(const_cast<char*>(&per_thread_key))
                         : stream;
  return stream_states_.get(owner, key, bytes, [&](size_t n) {
    bind_device();
    CUdeviceptr p = 0;
    check(driver().cuMemAlloc(&p, n), "cuMemAlloc (stream state)");
    // Zeroed in order on the stream that uses it: cuMemsetD8 would run on the legacy stream, which a non-blocking
    // stream's kernels do not wait for (and it may return before the memory is written).
    if (const CUresult r = driver().cuMemsetD8Async(p, 0, n, reinterpret_cast<CUstream>(stream)); r != CUDA_SUCCESS) {
      driver().cuMemFree(p);
      check(r, "cuMemsetD8 (stream state)");
    }
    return p;
  });
}

ScratchBuffer Runtime::Impl::scratch(const void* owner, size_t bytes, Stream stream) {
  CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_ACTIVE;
  if (driver().cuStreamIsCapturing(reinterpret_cast<CUstream>(stream), &capture) != CUDA_SUCCESS)
    capture = CU_STREAM_CAPTURE_STATUS_ACTIVE;  // unknown: the safe path
  if (capture != CU_STREAM_CAPTURE_STATUS_NONE || detail::scratch_per_call.load(std::memory_order_relaxed))
    return {alloc_async(std::max<size_t>(bytes, 16), stream), true};
  size_t want = 4096;  // (powers of two: a stream's buffer is outgrown a few times at most, and a buffer allocated
  while (want < bytes) want *= 2;  // for a larger call serves a smaller one)
  return {stream_state(owner, stream, want).ptr, false};
}

Runtime::Impl::~Impl() {
  // The buffers of stream_state (cuMemFree waits for the work that may still use them). Errors are ignored: a driver
  // being torn down at process exit frees them anyway.
  if (stream_states_.allocations() == 0) return;
  CUcontext prev = nullptr;
  const bool had = driver().cuCtxGetCurrent(&prev) == CUDA_SUCCESS;
  if (driver().cuCtxSetCurrent(device_.context) != CUDA_SUCCESS) return;
  stream_states_.release_all([](CUdeviceptr p) { driver().cuMemFree(p); });
  if (had) driver().cuCtxSetCurrent(prev);
}

Runtime::Impl::ScratchPool::~ScratchPool() {
  if (pool) driver().cuMemPoolDestroy(pool);  // (outstanding frees complete first; the driver releases it then)
}

CUdeviceptr Runtime::Impl::alloc_async(size_t bytes, Stream stream) {
  bind_device();
  const CUmemoryPool pool = scratch_.pool;  // (created by init_device, before the device is published)
  CUdeviceptr p = 0;
  if (pool)
    check(driver().cuMemAllocFromPoolAsync(&p, bytes, pool, reinterpret_cast<CUstream>(stream)),
          "cuMemAllocFromPoolAsync (workspace)");
  else
    check(driver().cuMemAllocAsync(&p, bytes, reinterpret_cast<CUstream>(stream)), "cuMemAllocAsync (workspace)");
  return p;
}

void Runtime::Impl::free_async(CUdeviceptr p, Stream stream) {
  check(driver().cuMemFreeAsync(p, reinterpret_cast<CUstream>(stream)), "cuMemFreeAsync (workspace)");
}

Runtime::Runtime(RuntimeOptions options) : impl_(std::make_unique<Impl>(std::move(options), *this)) {}
Runtime::~Runtime() = default;

const RuntimeOptions& Runtime::options() const { return impl_->options; }
std::string Runtime::cache_dir() const {
  return impl_->cache && impl_->cache->enabled() ? impl_->cache->root() : std::string();
}

RuntimeStats Runtime::stats() const {
  const auto& c = impl_->counters;
  return {c.memory_hits.load(), c.disk_hits.load(), c.compiles.load(), c.rebuilt.load(), c.launches.load(),
          impl_->tunes.load()};
}

std::vector<PrewarmEntry> Runtime::Impl::ensure_all(const std::vector<Specialization>& specs, int jobs,
                                                    void (*on_entry)(const PrewarmEntry&, size_t, size_t, void*),
                                                    void* user, std::vector<std::string>* errors) {
  Runtime::Impl& impl = *this;
  std::vector<PrewarmEntry> entries(specs.size());
  if (errors) errors->assign(specs.size(), std::string());
  std::atomic<size_t> next{0}, done{0};
  std::mutex cb_mutex;
  std::exception_ptr first_error;
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < specs.size();) {
      const Specialization& s = specs[i];
      PrewarmEntry& e = entries[i];
      try {
        EnsureResult r = ensure_cubin(s, impl.cache.get(), impl.options.require_prewarmed, impl.counters);
        e = {s.family->name, r.disk_key,    s.arch.name(), s.describe(), r.status, r.compile_ms, r.cubin.size(),
             cubin_code_bytes(r.cubin, r.lowered_name)};
      } catch (const std::exception& ex) {
        std::lock_guard g(cb_mutex);
        if (errors)
          (*errors)[i] = ex.what();
        else if (!first_error)
          first_error = std::current_exception();
        continue;
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

namespace {
bool wanted_family(const FamilyDef* f, const std::vector<std::string>& families) {
  return families.empty() || std::find(families.begin(), families.end(), f->name) != families.end();
}
void check_family_names(const std::vector<std::string>& families) {
  for (const std::string& name : families)
    if (!find_family(name)) {
      std::string known;
      for (const FamilyDef* f : detail::families()) known += (known.empty() ? "" : ", ") + std::string(f->name);
      throw InvalidArgument(fmt::format("families: unknown family '{}' (this kiln has {})", name, known));
    }
}
}  // namespace

std::vector<PrewarmEntry> Runtime::prewarm(const ModelConfig& model, const std::vector<std::string>& archs, int jobs,
                                           void (*on_entry)(const PrewarmEntry&, size_t, size_t, void*), void* user,
                                           const std::vector<std::string>& families) {
  check_family_names(families);
  std::vector<Specialization> specs;
  std::unordered_set<Key128, Key128Hash> seen;
  for (const std::string& a : archs) {
    const Arch arch = Arch::parse(a);
    for (const FamilyDef* f : detail::families()) {
      if (!wanted_family(f, families)) continue;
      std::vector<Specialization> part;
      if (f->enumerate) f->enumerate(model, arch, part);
      for (Specialization& s : part)
        if (seen.insert(s.key()).second) specs.push_back(s);
    }
  }
  return impl_->ensure_all(specs, jobs, on_entry, user);
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
  return impl_->ensure_all(specs, jobs, on_entry, user);
}

std::vector<ResolvedEntry> Runtime::resolve(const ModelConfig& model, const std::vector<int64_t>& tokens,
                                            const std::string& arch_name, const std::vector<std::string>& families) {
  check_family_names(families);
  const Arch arch = Arch::parse(arch_name);
  std::vector<Specialization> specs;
  std::unordered_set<Key128, Key128Hash> seen;
  for (const FamilyDef* f : detail::families()) {
    if (!wanted_family(f, families) || !f->enumerate) continue;
    std::vector<Specialization> part;
    f->enumerate(model, arch, part);
    for (Specialization& s : part)
      if (seen.insert(s.key()).second) specs.push_back(s);
  }
  // Exactly what an op does: the heuristic spec, then the tuning database's choice for m rows.
  std::vector<Specialization> chosen;
  for (const Specialization& s : specs)
    for (int64_t m : tokens) chosen.push_back(impl_->tuned(s, m));
  // Each distinct cubin fetched once (in parallel, as prewarm does).
  std::vector<Specialization> distinct;
  std::unordered_map<Key128, size_t, Key128Hash> index;
  for (const Specialization& t : chosen)
    if (index.emplace(t.key(), distinct.size()).second) distinct.push_back(t);
  const std::vector<PrewarmEntry> fetched = impl_->ensure_all(distinct, 0);
  std::vector<ResolvedEntry> out;
  size_t k = 0;
  for (const Specialization& s : specs)
    for (int64_t m : tokens) {
      const Specialization& t = chosen[k++];
      const PrewarmEntry& f = fetched[index.at(t.key())];
      ResolvedEntry e;
      e.family = s.family->name;
      e.kernel = s.family->kernels.at(s.kernel);
      e.arch = arch.name();
      for (size_t i = 0; i < s.family->param_names.size(); ++i)
        e.params += fmt::format("{}{}={}", i ? " " : "", s.family->param_names[i], s.params[i]);
      e.tokens = m;
      for (size_t i = 0; i < s.family->config_names.size(); ++i)
        e.config += fmt::format("{}{}={}", i ? " " : "", s.family->config_names[i], t.config[i]);
      e.source = impl_->tuning_source(s, m);
      e.key = f.key;
      e.status = f.status;
      out.push_back(std::move(e));
    }
  return out;
}

}  // namespace kiln
