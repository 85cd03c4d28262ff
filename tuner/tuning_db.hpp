// tuner/tuning_db.hpp — the tuning database: which tile config was measured fastest for one specialization.
//
// A tuning file is JSON, made on one node by the tuner and shipped to every node of a cluster:
//   {"schema": "kiln-tuning", "version": 1, "entries": [
//     {"family": "rms_norm_block_quant", "kernel": "tile", "arch": "sm_90a",
//      "params": {"N": 2048, "mode": 2, "round_scale": 1, "w_f32": 0}, "tokens": 8192,
//      "config": {"warps": 0, "col_blocks": 1, "prefetch": 0, "stages": 0, "overlap": 0, "exchange": 0}, "median_us": 38.7, "default_us": 41.2,
//      "provenance": {"gpu": "…", "sm_count": 132, "driver": "13.0", "cuda": "13.0", "nvrtc": "13.0",
//                     "kiln_version": "0.1.0", "date": "2026-11-25T23:00:00Z", "host": "…"}}]}
// Loading is strict: a file that is not exactly this shape, or that names a family, kernel, parameter or config
// field this build does not have, is rejected with file:line and the field path. A tuning file that is silently
// half-used would make different ranks of one job pick different kernels.
#pragma once
#include <compare>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/specialization.hpp"

namespace kiln::tuner {

inline constexpr const char* kTuningSchema = "kiln-tuning";
inline constexpr int kTuningVersion = 1;
// Two medians closer than this (relative) are the same measurement: run-to-run noise on one GPU is about 1–2 %.
inline constexpr double kNoiseBand = 0.03;

// The token-count bucket of M rows: the smallest power of two ≥ M (1 for M ≤ 0). Tuned configs are keyed by it so
// that a handful of tuned sizes cover every M.
uint64_t token_bucket(int64_t M);

// Named integer values in the family's declared order (FamilyDef::param_names / config_names).
using NamedValues = std::vector<std::pair<std::string, int64_t>>;

// What a tuned config is for. Ordered so that a saved file is sorted the same way every time.
struct TuningKey {
  std::string family;
  std::string kernel;
  std::string arch;  // canonical, as Arch::name() prints it
  NamedValues params;
  uint64_t tokens = 1;  // token_bucket(M)

  auto operator<=>(const TuningKey&) const = default;
  bool operator==(const TuningKey&) const = default;
  // "rms_norm_block_quant tile sm_90a N=2048 mode=2 … tokens=8192"
  std::string describe() const;
};

// Where and with what a measurement was taken.
struct Provenance {
  std::string gpu;
  int64_t sm_count = 0;
  std::string driver, cuda, nvrtc, kiln_version, date, host;
  // How the calls were timed: "" (the file has no "timing" field) = warm, each config's calls back to back;
  // kTimingColdCode = `kiln tune --cold-code`, every SM's instruction caches evicted before each timed call.
  std::string timing;
  bool operator==(const Provenance&) const = default;
};
inline constexpr const char* kTimingColdCode = "cold-code";

struct TuningEntry {
  TuningKey key;
  NamedValues config;     // the tuned tile config
  double median_us = 0;   // the tuned config's median time
  double default_us = 0;  // the family's heuristic default's median time, same run
  Provenance provenance;
  bool operator==(const TuningEntry&) const = default;
  // Speed-up of the tuned config over the default, in percent (positive = faster).
  double gain_percent() const { return default_us > 0 ? (default_us / median_us - 1.0) * 100.0 : 0.0; }
};

struct TuningDb {
  std::vector<TuningEntry> entries;  // sorted by key, keys unique (load, merge and sort_entries keep it so)

  // Reads and validates `path`; throws InvalidArgument naming path:line and the field on any problem.
  static TuningDb load(const std::string& path);
  // Same, from text; `source` names it in messages.
  static TuningDb parse(std::string_view text, const std::string& source);

  // The canonical text: entries sorted by key, fields in a fixed order, two-space indent, trailing newline.
  std::string to_json() const;
  // Writes to_json() to `path` atomically (temp file in the same directory, fsync, rename): readers see the old
  // file or the new one, never a torn one. Throws kiln::Error on I/O failure.
  void save(const std::string& path) const;

  // Sorts by key; throws InvalidArgument if two entries share a key.
  void sort_entries();
  const TuningEntry* find(const TuningKey& key) const;
};

// merge: for a key in both inputs, which entry was kept and why.
struct MergeDecision {
  TuningKey key;
  bool kept_first = true;
  double first_us = 0, second_us = 0;
  std::string first_timing, second_timing;  // Provenance::timing of each ("" = warm)
  // "first is faster (38.70 µs vs 41.00 µs)", "tie at 38.70 µs: kept the first", "timed differently (first warm,
  // second cold-code): took the second"
  std::string why() const;
};

struct MergeResult {
  TuningDb db;
  std::vector<MergeDecision> decisions;  // one per key present in both, in key order
};

// Union of both; a key in both keeps the entry with the lower median_us (the first on a tie) — if both were timed the
// same way. Times taken warm and with cold instruction caches are not comparable: then the second entry is taken
// (with `kiln tuning import` and store_entries the new measurement, with `kiln tuning merge A B` B's).
MergeResult merge(const TuningDb& first, const TuningDb& second);

struct TuningChange {
  TuningEntry before, after;
  bool config_changed = false;
  double time_change_percent = 0;  // (after - before) / before · 100
};

struct TuningDiff {
  std::vector<TuningEntry> added;    // in `after` only
  std::vector<TuningEntry> removed;  // in `before` only
  std::vector<TuningChange> changed;  // config differs, or median_us moved by more than kNoiseBand
  bool empty() const { return added.empty() && removed.empty() && changed.empty(); }
};

// What changed from `before` to `after`. Provenance and default_us alone never count as a change.
TuningDiff diff(const TuningDb& before, const TuningDb& after);

// Adds `entries` to the tuning file at `path` safely with other processes doing the same: takes an exclusive flock
// on `path`.lock, re-reads the file (if any), merges (a key already there keeps the faster entry), and saves
// atomically. No entry another writer stored meanwhile is lost. Creates the file and its directory if needed.
// Returns what the file holds afterwards. Throws InvalidArgument if the existing file is malformed (it is left
// untouched), kiln::Error on I/O failure.
TuningDb store_entries(const std::string& path, const std::vector<TuningEntry>& entries);

// The runtime specialization an entry names (family pointer, kernel index, params and config in the family's
// declared order, arch). False if this build has no such family, kernel or field names (a loaded entry always fits).
bool to_specialization(const TuningEntry& entry, detail::Specialization& out);
// The inverse: the entry naming `s` (family, kernel, arch, params and config by the family's names) at token bucket
// `tokens`; times and provenance are left for the caller.
TuningEntry to_entry(const detail::Specialization& s, uint64_t tokens);

}  // namespace kiln::tuner
