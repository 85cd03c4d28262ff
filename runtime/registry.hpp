// runtime/registry.hpp — key → loaded kernel, and the slow path that fills it (cache, then NVRTC).
#pragma once
#include <cuda.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include "cache/cubin_cache.hpp"
#include "kiln/runtime.hpp"
#include "runtime/specialization.hpp"

namespace kiln::detail {

struct Kernel {
  CUfunction fn = nullptr;
  int max_dynamic_smem = 0;
  // CTAs of one SM at the launch shape a persistent recipe uses (0 until first asked; see Runtime::Impl).
  mutable std::atomic<int> resident_per_sm{0};
  // Clusters resident at once at the launch shape a cluster recipe uses (-1 until first asked; 0: the cluster cannot
  // be co-scheduled).
  mutable std::atomic<int> resident_clusters{-1};
};

// Result of making sure a specialization's cubin exists (no GPU needed).
struct EnsureResult {
  std::string cubin;
  std::string lowered_name;
  std::string disk_key;
  const char* status = "hit";  // "hit" | "compiled" | "rebuilt"
  double compile_ms = 0;
};

struct Counters {
  std::atomic<uint64_t> memory_hits{0}, disk_hits{0}, compiles{0}, rebuilt{0}, launches{0};
};

// Everything the on-disk key covers (content only: no paths, no mtimes).
struct KeyInputs {
  std::string source;             // the rendered instantiation
  std::string name_expression;
  std::string headers_hash;       // every embedded kiln header's name and bytes
  std::string toolkit_fingerprint;
  std::string nvrtc_version;
  std::string kiln_version;
  std::string flags;
};
// The inputs for `s` in this build and environment (renders the source).
KeyInputs key_inputs(const Specialization& s);
// 32 hex digits.
std::string disk_key(const Specialization& s, const KeyInputs& in);

// Finds or builds the cubin of `s` through the disk cache (nullptr or disabled = memory only).
EnsureResult ensure_cubin(const Specialization& s, cache::CubinCache* cache, bool require_prewarmed, Counters& counters);

class KernelRegistry {
 public:
  KernelRegistry(cache::CubinCache* cache, bool require_prewarmed, Counters& counters)
      : cache_(cache), require_prewarmed_(require_prewarmed), counters_(counters) {}
  ~KernelRegistry();

  // Hot path: hash + shared-lock lookup. On a miss, loads from disk or compiles (needs the device context current).
  const Kernel& get(const Specialization& s) {
    const Key128 k = s.key();
    {
      std::shared_lock lock(mutex_);
      auto it = map_.find(k);
      if (it != map_.end()) {
        counters_.memory_hits.fetch_add(1, std::memory_order_relaxed);
        return *it->second;
      }
    }
    return load_slow(s, k);
  }

 private:
  const Kernel& load_slow(const Specialization& s, const Key128& k);

  cache::CubinCache* cache_;
  bool require_prewarmed_;
  Counters& counters_;
  std::shared_mutex mutex_;
  std::unordered_map<Key128, std::unique_ptr<Kernel>, Key128Hash> map_;
  std::vector<CUmodule> modules_;
  std::mutex build_mutex_;  // serializes this process's slow-path builds (the per-key file lock covers other processes)
};

}  // namespace kiln::detail
