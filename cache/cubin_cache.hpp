// cache/cubin_cache.hpp — kiln's on-disk cubin cache.
//
// Knows files, checksums, locks and pruning; nothing about NVRTC, kernel families or tuning. An entry is a
// directory  <root>/<group>/<key>/  (group = "<arch>/<family>", key = 32 hex digits) holding
//   cubin           the binary
//   manifest.json   caller-supplied fields + "cubin_xxh3_128", "cubin_bytes" added by the cache
//   …               optional extra files (rendered source, PTX, SASS when KILN_DUMP asks for them)
// Writes build the entry in a temp directory beside it, fsync every file, rename into place, fsync the parent.
// A reader verifies the manifest parses and the cubin's size and checksum match; anything else is "corrupt": the
// entry is moved aside and deleted, and the caller rebuilds it.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace kiln::cache {

// 128-bit XXH3 of bytes, as 32 lowercase hex digits.
std::string xxh3_128_hex(const void* data, size_t size);

struct CachedEntry {
  std::string cubin;
  nlohmann::json manifest;
};

struct EntryInfo {
  std::string group;        // "<arch>/<family>"
  std::string key;
  uint64_t bytes = 0;       // all files of the entry
  int64_t last_used = 0;    // unix seconds (mtime of the entry's "last_used" stamp)
  nlohmann::json manifest;  // null if unreadable
};

struct VerifyReport {
  size_t ok = 0;
  std::vector<std::string> bad;  // "<group>/<key>: reason"
};

class CubinCache {
 public:
  // Creates `root` if needed (with `create`; else a missing root disables the cache: the maintenance tools never
  // create one). If it cannot be created or written, the cache is disabled (every lookup misses, stores are dropped)
  // and `enabled()` is false; `disabled_reason()` says why.
  explicit CubinCache(std::string root, bool create = true);

  bool enabled() const { return enabled_; }
  const std::string& root() const { return root_; }
  const std::string& disabled_reason() const { return disabled_reason_; }

  enum class Lookup { hit, miss, corrupt };
  // On hit fills `out` and refreshes the entry's last-used stamp. On corrupt the entry is already removed and
  // `reason` says what was wrong.
  Lookup load(const std::string& group, const std::string& key, CachedEntry& out, std::string* reason = nullptr);

  // Atomically publishes an entry. Returns false if another writer published the same key first (the existing
  // entry is kept) or the cache is disabled; throws nothing on I/O failure (logs via the returned error string).
  // `error` is left untouched when the only reason is a lost race, so callers can tell it from a failure.
  bool store(const std::string& group, const std::string& key, const std::string& cubin, nlohmann::json manifest,
             const std::vector<std::pair<std::string, std::string>>& extra_files = {},
             std::string* error = nullptr);

  // A per-key exclusive lock (flock on <root>/<group>/<key>.lock) so that processes missing the same key compile
  // it once. `acquired()` is false where locks do not work (some network filesystems): the caller then compiles
  // on its own and a lost publish race is harmless.
  class KeyLock {
   public:
    KeyLock() = default;
    KeyLock(KeyLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
    KeyLock& operator=(KeyLock&& o) noexcept;
    ~KeyLock();
    bool acquired() const { return fd_ >= 0; }

   private:
    friend class CubinCache;
    int fd_ = -1;
  };
  KeyLock lock(const std::string& group, const std::string& key);

  // Where a rendered source that failed to compile can be written for the user to read (not an entry).
  std::string failed_source_path(const std::string& group, const std::string& key) const;

  // Tools (kiln cache ls|stats|verify|prune|clear).
  std::vector<EntryInfo> list() const;
  VerifyReport verify(bool remove_bad);
  // Removes least-recently-used entries until the total is ≤ max_bytes. Returns the number removed.
  size_t prune(uint64_t max_bytes);
  // Removes every entry. Returns the number removed.
  size_t clear();

 private:
  std::string root_;
  bool enabled_ = false;
  std::string disabled_reason_;
};

// The default root: $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else $HOME/.cache/kiln.
std::string default_cache_root();

}  // namespace kiln::cache
