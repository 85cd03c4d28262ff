// tuner/tuning_table.hpp — what the runtime looks tuned configs up in: an immutable hash table built from the loaded
// tuning files for one GPU, keyed by a specialization without its config, holding per token bucket the config to run.
//
// Which entry wins (built once, so that the op-time lookup is one hash probe and an array index):
//   1. Only entries for the specialization's arch (the arch is part of the key).
//   2. GPU match tier, per specialization: entries measured on a GPU of the same name and SM count, else the same
//      name, else the same SM count, else any. Only the best tier present is used: a config measured on another GPU
//      model is a fallback for when nothing was measured on this one, never mixed with this GPU's own entries.
//      With no GPU known (compile-only work, KILN_ARCH without a device), every entry is in one tier.
//   3. Per token bucket within that tier, the lower median time, then the earlier file (KILN_TUNING_DB order).
//   4. A token count whose bucket has no entry uses the nearest tuned bucket (in powers of two; on a tie the larger).
//   5. A specialization with no entry at all keeps the family's heuristic default.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/specialization.hpp"
#include "tuner/tuning_db.hpp"

namespace kiln::tuner {

// A specialization's identity without its tile config: what a tuned config is chosen for.
inline detail::Key128 shape_key(detail::Specialization s) {
  s.config = {};
  return s.key();
}

// log2 of token_bucket(M), 0..63, without a branch-heavy loop (the hot path calls it).
inline int bucket_log2(int64_t M) {
  return M <= 1 ? 0 : 64 - __builtin_clzll(static_cast<unsigned long long>(M - 1));
}

// The GPU a table is built for (name as cuDeviceGetName reports it). Empty name and 0 SMs: unknown.
struct GpuIdentity {
  std::string name;
  int64_t sm_count = 0;
  bool known() const { return !name.empty() || sm_count > 0; }
};

// How well a measurement's GPU matches `gpu`: 3 same name and SM count, 2 same name, 1 same SM count, 0 neither
// (or `gpu` unknown).
int gpu_match(const Provenance& p, const GpuIdentity& gpu);

// One candidate for the table: a loaded entry (or one the autotuner just measured) as the runtime specialization it
// names, with where it came from.
struct TableEntry {
  detail::Specialization spec;  // config = the tuned config
  uint64_t bucket = 1;
  double median_us = 0;
  Provenance provenance;
  std::string source;  // the file it came from
  size_t order = 0;    // file precedence (lower wins ties)
};

// Converts a loaded database's entries (they always fit: loading validated them).
std::vector<TableEntry> table_entries(const TuningDb& db, const std::string& source, size_t order);

class TuningTable {
 public:
  using Config = std::array<int32_t, detail::kMaxConfig>;

  TuningTable(const std::vector<TableEntry>& entries, GpuIdentity gpu);

  struct Hit {
    const Config* config = nullptr;  // null: nothing tuned for this specialization
    bool exact = false;              // measured at this very bucket (not the nearest one)
  };
  // Hot path: one hash probe.
  Hit find(const detail::Key128& shape, int bucket_log2) const {
    auto it = slots_.find(shape);
    if (it == slots_.end()) return {};
    const Slot& s = it->second;
    return {&s.configs[s.pick[static_cast<size_t>(bucket_log2)]], ((s.exact >> bucket_log2) & 1) != 0};
  }
  // Slow path (diagnostics): the entry `find` picks, or null.
  const TableEntry* explain(const detail::Key128& shape, int bucket_log2) const;

  const GpuIdentity& gpu() const { return gpu_; }
  size_t specializations() const { return slots_.size(); }

 private:
  struct Slot {
    uint64_t exact = 0;                 // bit b: an entry was measured at bucket 2^b
    std::array<uint8_t, 64> pick{};     // bucket log2 → index into configs / chosen
    std::vector<Config> configs;
    std::vector<TableEntry> chosen;     // parallel to configs
  };
  std::unordered_map<detail::Key128, Slot, detail::Key128Hash> slots_;
  GpuIdentity gpu_;
};

}  // namespace kiln::tuner
