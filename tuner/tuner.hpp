// tuner/tuner.hpp — measures every config of a specialization's search space on the GPU and picks the fastest
// one that computes the same result as the family's heuristic default.
//
// Per (specialization, token count):
//   1. The family's tune_instance allocates inputs (fresh random non-zero data) and outputs at that token count.
//   2. Every candidate runs once through the public op with its config forced (ForceConfigScope) on outputs poisoned
//      beforehand (an in-place op's input then restored: BenchInstance::restore); its outputs are compared with the
//      default's (compare_outputs: relative L2 by dtype, fp8 codes exact but for rare one-step flips, integers
//      exact). A candidate that disagrees is rejected and reported.
//   3. Each candidate is timed: warm-up, then ≥ 20 calls each on a cold L2 (runtime/bench.hpp), median.
//   4. choose(): the fastest valid candidate must beat the default by more than the noise band
//      max(kNoiseBand · t, kNoiseFloorUs); among candidates within the band of the fastest, the earliest in search-space
//      order wins (so that two runs pick the same config). The winner is then re-timed interleaved with the default
//      and kept only if it still wins by more than the band. Ties go to the default.
//   5. Budgets: candidates not reached within spec_budget_s are skipped (reported); a run stops starting new
//      specializations after run_budget_s.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "kiln/dtype.hpp"
#include "kiln/runtime.hpp"
#include "runtime/bench.hpp"
#include "runtime/specialization.hpp"
#include "tuner/tuning_db.hpp"

namespace kiln::tuner {

// The absolute part of the noise band: CUDA-event medians of one kernel move by about this much run to run.
inline constexpr double kNoiseFloorUs = 0.5;
// Two times closer than this are a tie: max(kNoiseBand · us, kNoiseFloorUs).
inline double noise_band_us(double us) { return us * kNoiseBand > kNoiseFloorUs ? us * kNoiseBand : kNoiseFloorUs; }

// A test hook: an extra candidate with its own run function, verified and timed like the search space's. If it won,
// its entry would carry `config`.
struct InjectedCandidate {
  std::string name;
  detail::Specialization config;  // the config it claims to be (only config is used)
  std::function<void(const detail::BenchInstance&, Stream)> run;
};

struct TuneOptions {
  int warmup = 5;
  int repeats = 30;              // timed calls per candidate (at least 20 are used)
  double spec_budget_s = 60;     // per (specialization, token count)
  double run_budget_s = 0;       // whole run; 0 = no limit
  int compile_jobs = 0;          // parallel compiles of all candidates up front (0: one per core)
  // Before every timed call (after the L2 flush) evict every SM's instruction caches, as `kiln bench --cold-code`
  // does: the times of a training step, where other kernels run between two calls of one. The entries say so
  // (Provenance::timing). tune() only; tune_one() times as the L2Flusher it is given is set.
  bool cold_code = false;
  std::vector<InjectedCandidate> inject;  // tests only
  // Candidates known not to compile (key → the compiler's message): rejected without another attempt. tune() fills
  // it from its parallel compile.
  std::unordered_map<detail::Key128, std::string, detail::Key128Hash> compile_errors;
};

struct CandidateResult {
  std::string label;               // "warps=8 rows=0", or an injected candidate's name
  detail::Specialization spec;     // the config it runs
  bool is_default = false;
  bool injected = false;
  double us = 0;                   // median; 0 if never timed
  std::string status = "ok";       // "ok" | "mismatch: …" | "error: …" | "skipped: …"
  bool ok() const { return status == "ok"; }
};

struct TuneResult {
  detail::Specialization base;     // the specialization, with the config the op runs by default at `tokens`
  int64_t tokens = 0;
  bool unused = false;             // the op never runs this kernel for this shape on this GPU: nothing to tune
  std::vector<CandidateResult> candidates;  // [0] = the default
  size_t winner = 0;               // index into candidates
  double default_us = 0, best_us = 0;       // after confirmation (the entry's default_us and median_us)
  bool has_entry = false;          // false: the default could not be measured (see note)
  TuningEntry entry;
  std::string note;                // why the default was kept, budget notes, errors
  double seconds = 0;
  size_t rejected() const;
  double gain_percent() const { return best_us > 0 ? (default_us / best_us - 1) * 100 : 0; }
};

// Where and with what this measurement is taken (GPU of `rt`, driver, CUDA, NVRTC, kiln, UTC date, host name).
Provenance current_provenance(Runtime& rt);

// Whether `got` matches `ref` (the default config's output), both `n` elements of `dtype`: "" if so, else why
// (first differing index, values). bf16 / fp16 / fp32: relative L2 ≤ 1e-2 / 2e-3 / 1e-5 and NaN / inf exactly where
// ref has them; fp8 (e4m3, e5m2): codes equal except one-step flips of the magnitude in at most max(2, n/1000)
// elements; integers and raw bytes: exact.
std::string compare_outputs(DType dtype, const void* ref, const void* got, size_t n);

// Step 4's pick over measured candidates ([0] = the default; only ok() ones with us > 0 count). Returns the index.
size_t choose(const std::vector<CandidateResult>& candidates);

// Tunes one specialization at `tokens` rows (its candidates must already be compiled or will compile on first
// use). The default is what the op itself runs at `tokens` with no database (observed through one call: a family's
// heuristic may depend on M), whatever config `base` carries. `deadline`: stop timing new candidates after it.
// Needs the GPU; runs on the legacy default stream.
TuneResult tune_one(Runtime& rt, const detail::Specialization& base, int64_t tokens, const TuneOptions& opts,
                    detail::L2Flusher& l2,
                    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max());

// Which specializations can be tuned: the family has a tune_instance and more than one search-space point.
bool tunable(const detail::Specialization& s);

// The tunable specializations of `specs`, one per shape (family, kernel, params, arch; configs ignored), in order.
std::vector<detail::Specialization> unique_tunable(const std::vector<detail::Specialization>& specs);

// Tunes every (specialization, token count) of unique_tunable(specs): compiles all candidates in parallel through
// the cache first, then measures one by one. `on_result` is called as each finishes.
std::vector<TuneResult> tune(Runtime& rt, const std::vector<detail::Specialization>& specs,
                             const std::vector<int64_t>& tokens, const TuneOptions& opts,
                             const std::function<void(const TuneResult&)>& on_result = {});

}  // namespace kiln::tuner
