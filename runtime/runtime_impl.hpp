// runtime/runtime_impl.hpp — what host recipes use from the Runtime: the device, the registry, launch.
#pragma once
#include <cuda.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "cache/cubin_cache.hpp"
#include "kiln/runtime.hpp"
#include "runtime/registry.hpp"
#include "runtime/specialization.hpp"
#include "runtime/stream_state.hpp"
#include "tuner/tuning_table.hpp"

namespace kiln::detail {

// How the tuner runs one candidate config through a public op: while a ForcedConfig is installed on a thread,
// Runtime::Impl::tuned returns its config for the specialization it names (at any token count), on that thread only.
struct ForcedConfig {
  Key128 shape;                                // tuner::shape_key of the specialization
  std::array<int32_t, kMaxConfig> config{};
  uint64_t applied = 0;  // times tuned() returned it: 0 after a run means the op never asked (cannot be tuned)
  // Observe instead of force: tuned() returns the op's own heuristic config (no table, no autotune) and records it
  // here; the tuner learns what the op runs by default at a token count (a heuristic may depend on M).
  bool observe = false;
  std::array<int32_t, kMaxConfig> observed{};
};
inline thread_local ForcedConfig* t_forced_config = nullptr;
// > 0 while this thread is tuning: an op a tune instance runs for another specialization (preparing inputs) uses the
// table or the heuristic and never starts a nested online tune.
inline thread_local int t_tuning_depth = 0;

// Measurement hook (tests/gpu/scratch_test.cpp): while set, Runtime::Impl::scratch allocates every call's
// scratch from the stream-ordered pool (alloc_async / free_async), as before the per-stream scratch, for the A/B.
inline std::atomic<bool> scratch_per_call{false};

// Scratch memory of one call (Runtime::Impl::scratch): `ptr`, and whether the call frees it after its launches
// (Runtime::Impl::release_scratch: stream-ordered; false for the Runtime's per-stream buffer).
struct ScratchBuffer {
  CUdeviceptr ptr = 0;
  bool per_call = false;
};

// Installs a ForcedConfig for `candidate` (its shape and config) on this thread for the scope's lifetime.
class ForceConfigScope {
 public:
  explicit ForceConfigScope(const Specialization& candidate, bool observe = false) : previous_(t_forced_config) {
    forced_.shape = tuner::shape_key(candidate);
    forced_.config = candidate.config;
    forced_.observe = observe;
    t_forced_config = &forced_;
  }
  ~ForceConfigScope() { t_forced_config = previous_; }
  ForceConfigScope(const ForceConfigScope&) = delete;
  ForceConfigScope& operator=(const ForceConfigScope&) = delete;
  uint64_t applied() const { return forced_.applied; }
  const std::array<int32_t, kMaxConfig>& observed() const { return forced_.observed; }

 private:
  ForcedConfig forced_;
  ForcedConfig* previous_;
};

struct TuningDepthScope {
  TuningDepthScope() { ++t_tuning_depth; }
  ~TuningDepthScope() { --t_tuning_depth; }
};

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
  // Programmatic dependent launch (sm_90+; ignored before): the kernel may start while the previous kernel on the
  // stream is still running, once every CTA of that kernel has executed griddepcontrol.launch_dependents (or exited).
  // Only for a kernel that executes griddepcontrol.wait (kiln/pdl.cuh) in every CTA before it reads anything the
  // previous kernel writes or writes anything it reads, and whose previous kernel on the stream is kiln's own (a
  // recipe's second or later launch): what ran before that kernel has completed when it started.
  bool pdl = false;
  // Cooperative launch (CU_LAUNCH_ATTRIBUTE_COOPERATIVE): every CTA of the grid is resident at once (the launch fails
  // otherwise), and the kernel gets the driver's grid-barrier word (kiln/grid_sync.cuh).
  bool cooperative = false;
};

}  // namespace kiln::detail

namespace kiln {
using detail::Arch;
using detail::DeviceInfo;
using detail::Kernel;
using detail::LaunchDims;
using detail::ScratchBuffer;
using detail::Specialization;
using detail::StreamStateTable;

struct Runtime::Impl {
  Impl(RuntimeOptions o, Runtime& owner);
  ~Impl();  // frees the stream states (stream_state)
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  RuntimeOptions options;
  Runtime& owner;  // the public handle (families' tune instances take it)
  std::unique_ptr<cache::CubinCache> cache;  // null when memory-only
  detail::Counters counters;
  std::unique_ptr<detail::KernelRegistry> registry;

  // The bound device (initialized on first call; throws DeviceError without a driver or device).
  const DeviceInfo& device() {
    if (!device_ready_.load(std::memory_order_acquire)) init_device();
    return device_;
  }
  // device(), and its context made current on the calling thread (for driver calls outside launch: allocations,
  // copies, events on a thread that has not run an op yet).
  const DeviceInfo& bind_device();
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
  // With no database and no autotune this is a thread-local read and a branch. Under KILN_AUTOTUNE a bucket with no
  // entry measured at it is tuned on the spot (slow path, once per specialization and bucket per process).
  Specialization tuned(const Specialization& s, int64_t tokens);
  // Where tuned(s, tokens)'s config comes from: "tuned (FILE, bucket B, GPU G)" or "heuristic" (slow path).
  std::string tuning_source(const Specialization& s, int64_t tokens);

  // Tuning files loaded at start (in precedence order), and where online tuning stores its results.
  std::vector<std::string> tuning_files;
  std::string autotune_file;
  bool autotune = false;
  std::atomic<uint64_t> tunes{0};

  // Finds or builds every specialization's cubin through the cache on `jobs` threads (0: one per core); reports each
  // through `on_entry` as it finishes; rethrows the first failure after all workers stop, or, with `errors`, records
  // each failure's message at its index ("" for success) and goes on. Needs no GPU.
  std::vector<PrewarmEntry> ensure_all(const std::vector<Specialization>& specs, int jobs,
                                       void (*on_entry)(const PrewarmEntry&, size_t, size_t, void*) = nullptr,
                                       void* user = nullptr, std::vector<std::string>* errors = nullptr);

  // How many CTAs of `threads` threads and `smem` dynamic shared memory fit on one SM (asked once per kernel:
  // a persistent recipe always launches a kernel at one block shape).
  int resident_per_sm(const Kernel& k, int threads, int smem);
  // How many clusters of `cluster` CTAs (`threads` threads, `smem` bytes of dynamic shared memory each) fit on the GPU
  // at once; 0 where they cannot be co-scheduled (asked once per kernel, as resident_per_sm).
  int resident_clusters(const Kernel& k, unsigned cluster, unsigned threads, unsigned smem);
  // The tag of one launch over a tagged workspace (`words` 32-bit words at `ws`: entries count only with this launch's
  // tag, so the workspace is never cleared between launches): never 0 (fresh memory) nor the captured tag. A CUDA
  // graph replays a captured launch with the same tag, so under stream capture the workspace is cleared first (a
  // memset node on `stream`) and the tag is 0xffffffff, which no uncaptured launch uses. `what` names the workspace
  // in errors.
  uint32_t workspace_tag(CUdeviceptr ws, size_t words, Stream stream, const char* what);
  // Device memory that a recipe keeps per stream from one call to the next (state its kernels leave for the next
  // call on the stream: calls on one stream never overlap): at least `bytes` at 16-byte alignment, zero when
  // allocated; `owner` names the recipe's state (the address of a static object of the recipe). A call that finds
  // its buffer (every call on the stream but the first, or one that needs more bytes) costs a lock-free hash lookup:
  // no mutex, no driver call; the first allocates (cuMemAlloc, then a memset in order on `stream`) under a mutex, as
  // does one that needs more bytes (a new zeroed buffer: the old one stays allocated until the runtime is destroyed,
  // a call on the stream may still use it). The buffer's `bytes` may exceed `bytes`. CU_STREAM_PER_THREAD (a
  // different stream on every thread) is keyed per thread. Not for a stream under capture: a graph's launches may run
  // on any stream, concurrently with the calls on this one (the recipe uses stateless launches there).
  StreamStateTable::Buffer stream_state(const void* owner, Stream stream, size_t bytes);
  // A persistent grid: the CTAs of `threads` threads and `smem` bytes of dynamic shared memory that fit on the GPU at
  // once (SMs × resident_per_sm), split `share` ways (a grid dimension of that size beside this one), never more than
  // `work` (the units to deal out), at least 1.
  int64_t persistent_grid(const Kernel& k, int threads, int smem, int64_t work, int64_t share = 1) {
    const int64_t full = static_cast<int64_t>(device().sm_count) * resident_per_sm(k, threads, smem);
    return std::max<int64_t>(1, std::min(full / share, work));
  }

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

  // Scratch memory for one call on `stream` (≥ `bytes`, 16-byte aligned) that no later call reads: contents a call
  // writes before it reads them, or words that count only with the call's own tag (workspace_tag), so stale contents
  // of an earlier call of the same recipe are harmless. `owner` names the recipe's scratch (the address of a static
  // object of the recipe): recipes never share a buffer. Outside stream capture it is the Runtime's buffer for
  // (owner, stream) (stream_state: a lock-free lookup on a hit; grown to a power of two ≥ `bytes` when a call needs
  // more, the outgrown buffer kept until the Runtime is destroyed), reused by every later call of the recipe on the
  // stream (calls on one stream never overlap; a recipe's first launch of a call never starts early (no PDL), so it
  // waits for the previous call's last kernel); a call on another stream gets its own. Under stream capture (or when
  // the capture status cannot be read) it is per-call stream-ordered memory (alloc_async, freed by release_scratch):
  // a graph owns its allocation, and its replays — on any stream, concurrently with later uncaptured calls on this
  // one — never alias the per-stream buffer. Call release_scratch after the call's last launch.
  ScratchBuffer scratch(const void* owner, size_t bytes, Stream stream);
  void release_scratch(const ScratchBuffer& b, Stream stream) {
    if (b.per_call) free_async(b.ptr, stream);
  }
  // scratch(owner, bytes, stream) for the launches `body(ptr)` issues, released after them (also when they throw);
  // `bytes` 0 takes none (ptr 0).
  template <typename F>
  void with_scratch(const void* owner, size_t bytes, Stream stream, F&& body) {
    if (bytes == 0) {
      body(CUdeviceptr{0});
      return;
    }
    const ScratchBuffer b = scratch(owner, bytes, stream);
    try {
      body(b.ptr);
    } catch (...) {
      release_scratch(b, stream);
      throw;
    }
    release_scratch(b, stream);
  }

  // Stream-ordered scratch memory (cuMemAllocFromPoolAsync / cuMemFreeAsync) from kiln's own pool on the device,
  // created with the device (init_device: creating it under stream capture would invalidate the capture) with
  // release threshold UINT64_MAX: freed scratch stays mapped across synchronizations (the default pool's threshold 0
  // returns it at every synchronize and the next allocation maps it again, inside the caller's stream order: ≈ 2.5 µs
  // of a timed op measured). Falls back to the device's default pool. Even so an allocation + free around a launch
  // costs ≈ 0.6 µs of GPU time (session 11: an empty kernel 0.61 µs slower in 100 % of 200 rounds): recipes use
  // scratch() instead, which takes this path only under stream capture.
  CUdeviceptr alloc_async(size_t bytes, Stream stream);
  void free_async(CUdeviceptr p, Stream stream);

 private:
  void init_device();
  const tuner::TuningTable* current_table();
  const tuner::TuningTable* rebuild_table();  // caller holds tuning_mutex_
  Specialization autotune_slow(const Specialization& s, int64_t tokens, const detail::Key128& shape);
  void pin_heuristic(const Specialization& s, uint64_t bucket);  // caller holds tuning_mutex_

  bool tuning_enabled_ = false;  // a file is loaded or autotune is on (else tuned() returns at once)
  std::atomic<const tuner::TuningTable*> table_{nullptr};
  std::atomic<bool> table_knows_gpu_{false};
  std::vector<std::unique_ptr<tuner::TuningTable>> tables_;  // every table built: a reader may still hold an old one
  std::vector<tuner::TableEntry> tuning_entries_;
  std::mutex tuning_mutex_;    // guards tables_ and tuning_entries_
  std::mutex autotune_mutex_;  // one online tune at a time in this process

  std::mutex device_mutex_;
  struct ScratchPool {  // alloc_async's pool, made by init_device (null: the device's default pool is used)
    CUmemoryPool pool = nullptr;
    ScratchPool() = default;
    ScratchPool(const ScratchPool&) = delete;
    ScratchPool& operator=(const ScratchPool&) = delete;
    ~ScratchPool();
  };
  ScratchPool scratch_;
  StreamStateTable stream_states_;  // stream_state's buffers (freed by ~Impl)
  std::atomic<bool> device_ready_{false};
  DeviceInfo device_;
  std::optional<Arch> arch_override_;
};

}  // namespace kiln
