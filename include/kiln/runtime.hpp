// kiln/runtime.hpp — the handle every op takes: options, the kernel registry, the cubin cache, the device.
//
// A Runtime is bound to one CUDA device (the current device of the calling thread when the first GPU op runs,
// or options.device). It is thread-safe: ops may be called from several threads at once.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct CUstream_st;

namespace kiln {

// The caller's stream: a cudaStream_t or CUstream (both are CUstream_st*); nullptr is the legacy default stream.
using Stream = CUstream_st*;

enum class LogLevel : int { error = 0, warn = 1, info = 2, debug = 3 };

struct RuntimeOptions {
  // On-disk cubin cache. Empty: $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln.
  std::string cache_dir;
  // Compile for this arch ("sm_90a", "sm_100a", …) instead of the device's. Empty: the device's (or $KILN_ARCH).
  std::string arch;
  // Device ordinal; -1 = the calling thread's current device at first use (device 0 if none is current).
  int device = -1;
  // Disable the on-disk cache entirely (memory only).
  bool memory_only = false;
  // Raise CacheError on any cache miss instead of compiling ($KILN_REQUIRE_PREWARMED=1 sets it too).
  bool require_prewarmed = false;
  // Messages at or below this level go to stderr. Default: warn, or $KILN_LOG_LEVEL (error|warn|info|debug).
  LogLevel log_level = LogLevel::warn;
  // Tuning files (see `kiln tune`), ':'-separated, earlier files winning ties. Loaded strictly when the Runtime is
  // created (a malformed file throws InvalidArgument naming file:line); ops then run the tuned config of each
  // specialization for the current GPU and token count, else the family's heuristic. Empty: $KILN_TUNING_DB.
  std::string tuning_db;
  // Online tuning: the first call of a specialization at a token bucket with no tuned entry measures every config
  // of its search space on this GPU (synchronizing the device, on buffers of its own), stores the winner in the
  // first tuning file (else <cache dir>/tuning.json), and uses it from then on. Also $KILN_AUTOTUNE=1.
  bool autotune = false;
  // Read KILN_* environment variables for anything left at its default.
  bool read_env = true;
};

// Counters since the Runtime was created (for observability and tests).
struct RuntimeStats {
  uint64_t memory_hits = 0;    // specialization found in the in-memory registry
  uint64_t disk_hits = 0;      // loaded from the on-disk cache
  uint64_t compiles = 0;       // NVRTC compilations
  uint64_t rebuilt = 0;        // corrupt disk entries detected, removed and rebuilt
  uint64_t launches = 0;
  uint64_t tunes = 0;          // specializations tuned online (KILN_AUTOTUNE)
};

// One specialization a prewarm handled.
struct PrewarmEntry {
  std::string family;
  std::string key;       // 32 hex digits
  std::string arch;
  std::string params;    // "N=2048 mode=2 round_scale=1 …"
  std::string status;    // "hit" | "compiled" | "rebuilt"
  double compile_ms = 0;
  uint64_t cubin_bytes = 0;
  uint64_t code_bytes = 0;  // the kernel's SASS (its .text section in the cubin; 0 if it cannot be read)
};

// How one specialization resolves at a token count (Runtime::resolve).
struct ResolvedEntry {
  std::string family;
  std::string kernel;
  std::string arch;
  std::string params;   // "N=2048 mode=2 …"
  int64_t tokens = 0;
  std::string config;   // "warps=8 rows=0" (the config an op would launch)
  std::string source;   // "tuned (FILE, bucket B, GPU …)" | "heuristic"
  std::string key;      // the cubin's cache key (32 hex digits)
  std::string status;   // "hit" | "compiled" | "rebuilt"
};

struct ModelConfig;

class Runtime {
 public:
  explicit Runtime(RuntimeOptions options = {});
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  const RuntimeOptions& options() const;
  // The cache directory in use ("" when memory-only).
  std::string cache_dir() const;
  RuntimeStats stats() const;

  // Compile (or find in the cache) every specialization `model` needs for each arch. Needs no GPU.
  // `jobs` compiles run in parallel (0 = hardware concurrency). `on_entry` is called as each finishes.
  // `families` (empty: all) narrows it to those kernel families.
  std::vector<PrewarmEntry> prewarm(const ModelConfig& model, const std::vector<std::string>& archs, int jobs = 0,
                                    void (*on_entry)(const PrewarmEntry&, size_t done, size_t total, void* user) = nullptr,
                                    void* user = nullptr, const std::vector<std::string>& families = {});
  // Compile (or find in the cache) exactly the tuned configs of a tuning file (see tuner/tuning_db.hpp), those
  // whose arch is in `archs` (every entry if `archs` is empty), each distinct specialization once. Needs no GPU.
  // The file is loaded strictly: a malformed one throws InvalidArgument naming file:line and compiles nothing.
  std::vector<PrewarmEntry> prewarm_tuning(const std::string& tuning_file, const std::vector<std::string>& archs,
                                           int jobs = 0,
                                           void (*on_entry)(const PrewarmEntry&, size_t done, size_t total,
                                                            void* user) = nullptr,
                                           void* user = nullptr);

  // The specializations `model` needs on `arch` (as prewarm lists them), each with the tile config its op would run
  // at each token count (tuning database or heuristic, exactly as the op picks it) and that config's cubin fetched
  // from the cache (compiled if missing, unless require_prewarmed is set). Launches nothing and needs no GPU, so a
  // cluster's start-up path can be checked anywhere. `families` (empty: all) narrows it.
  std::vector<ResolvedEntry> resolve(const ModelConfig& model, const std::vector<int64_t>& tokens,
                                     const std::string& arch, const std::vector<std::string>& families = {});

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln
