// runtime/bench.hpp — benchmark cases (one per family and shape) and the harness `kiln bench` runs.
//
// Timing method (../shared/guide/h100.md): CUDA events around each call, L2 flushed before every timed call by
// reading a 256 MB buffer, warm-up first, median of ≥ 20 repeats, fresh random non-zero inputs; the device-to-device
// copy bandwidth is measured in the same run and every case reports its percent of it.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln::detail {

// A prepared case: inputs allocated and filled, ready to run repeatedly.
struct BenchInstance {
  uint64_t bytes = 0;                        // minimal bytes moved (each input read once, each output written once)
  std::function<void(Stream)> run;           // the kiln op
  std::function<void(Stream)> baseline;      // a naive baseline (may be empty)
  std::string baseline_name;                 // e.g. "naive two-pass"; without `baseline`: why there is none
  std::shared_ptr<void> keepalive;           // owns the device buffers
  std::vector<TensorRef> outputs;            // what run() writes (device tensors), compared across configs by the tuner
  // For an op that writes over its own input (in place): puts the input back. The tuner calls it after poisoning
  // the outputs and before each checked run, so that every candidate is checked on the same real input (poisoned,
  // an in-place input would be a constant).
  std::function<void(Stream)> restore;
};

struct BenchCase {
  std::string op;     // "rms_norm_block_quant_fwd"
  std::string shape;  // "M=8192 N=2048 mode=2 round_scale=1"
  std::function<BenchInstance(Runtime&)> prepare;
};

// Cases register from each family's bench file (ops/<family>_bench.cpp is not required: any TU may register).
std::vector<BenchCase>& bench_cases();

struct Specialization;
// `inst` with its op's config forced to `cand`'s (the tuner's forced-config hook, for the call's thread), so that one
// bench run times a search-space point or a measurement variant beside the default; a call whose op never asks for
// `cand`'s shape throws (naming `what`).
BenchInstance with_forced_config(BenchInstance inst, const Specialization& cand, const std::string& what);
struct BenchRegistrar {
  explicit BenchRegistrar(std::function<void(std::vector<BenchCase>&)> add) { add(bench_cases()); }
};

struct BenchResult {
  std::string op, shape;
  double us = 0, baseline_us = 0;
  std::string baseline;  // what the baseline is (empty: none; with baseline_us 0: why it could not run)
  uint64_t bytes = 0;
  double gbps = 0, pct_copy_bw = 0;
};

struct BenchReport {
  std::string device, driver, cuda;
  double copy_gbps = 0;
  // An empty kernel timed like every case (L2 flushed, events around one launch): the part of every row's µs that
  // no kernel can remove. It differs between machines of the same kind (3.1 µs on most of the project's H100s).
  double empty_kernel_us = 0;
  bool cold_code = false;  // BenchOptions::cold_code: every row (and the empty kernel) timed with cold instruction caches
  std::vector<BenchResult> results;
  std::vector<std::string> failures;  // "op shape: error" of cases that threw (the run goes on without them)
};

struct BenchOptions {
  int warmup = 5;
  int repeats = 30;
  // Before every timed call, also run a kernel of ≈ 320 KB of code on every SM (L2Flusher::set_cold_code), so that
  // the timed kernel's code is in no SM's instruction cache, as in a training step (`kiln bench --cold-code`).
  bool cold_code = false;
  std::string filter;  // '|'-separated terms matched against "op shape" (bench_filter_matches)
};

// Whether a case named `name` ("op shape") runs under `filter`: an empty filter runs everything; otherwise any of
// the '|'-separated terms matches, a term as a substring of the name, or, when it ends in '$', as the name's end
// (so "op shape$" selects that one case and not its variant rows, whose shapes extend it).
bool bench_filter_matches(const std::string& filter, const std::string& name);

// Runs every registered case (needs a GPU).
BenchReport run_benchmarks(Runtime& rt, const BenchOptions& opts,
                           const std::function<void(const BenchResult&)>& on_result = {});

// Reads `bytes` of `buf` through L2 with a kernel (a read leaves no dirty lines). `sink`: 4 writable bytes.
void l2_flush(Runtime& rt, const void* buf, size_t bytes, unsigned* sink, Stream stream);
// Launches that kernel with nothing to read (one warp): the fixed cost of a timed call (`sink`: 4 writable bytes).
void empty_launch(Runtime& rt, unsigned* sink, Stream stream);
// Runs templates/kiln/code_evict.cuh's kernel (≈ 320 KB of straight-line code) on every SM: afterwards no SM's
// instruction caches hold any other kernel's code (`sink`: 4 writable bytes).
void evict_code(Runtime& rt, unsigned* sink, Stream stream);

// Evicts L2 by reading a 256 MB buffer with kiln's l2_flush kernel. The constructor runs it once (so that its
// compilation is part of no timing) and synchronizes.
class L2Flusher {
 public:
  L2Flusher(Runtime& rt, Stream stream);
  ~L2Flusher();
  L2Flusher(const L2Flusher&) = delete;
  L2Flusher& operator=(const L2Flusher&) = delete;
  // The L2 read-flush, then (with set_cold_code) evict_code.
  void flush(Stream stream);
  // The empty kernel (empty_launch) on the flusher's 4-byte sink.
  void empty(Stream stream);
  // Whether flush() also evicts every SM's instruction caches (evict_code). Turning it on runs evict_code once and
  // synchronizes, so that its compilation is part of no timing.
  void set_cold_code(bool on, Stream stream);
  bool cold_code() const { return cold_code_; }

 private:
  Runtime& rt_;
  void* buffer_ = nullptr;
  void* sink_ = nullptr;
  bool cold_code_ = false;
};

// Per-call microseconds of `fn`: `warmup` untimed calls, then `repeats` calls each timed with CUDA events on a cold
// L2 (flushed just before), half of them at each parity of the stream's launch count (an empty launch before every
// odd call's flush). `before_flush` (optional, measurement only) runs on the host before each timed call's flush.
// Synchronizes.
std::vector<double> time_calls_us(const std::function<void(Stream)>& fn, Stream stream, L2Flusher& l2, int warmup,
                                  int repeats, const std::function<void()>& before_flush = {});
double median(std::vector<double> v);

// "13.0" from 13000 (the encoding of cuDriverGetVersion and CUDA_VERSION: 1000 × major + 10 × minor).
std::string cuda_version_string(int v);

// Device helpers for bench cases and tests (driver API; throw DeviceError).
void* device_alloc(size_t bytes);
void device_free(void* p);
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void device_synchronize();

// ---- preparing bench instances (bench cases and FamilyDef::tune_instance) -------------------------------------------
// Device buffers an instance owns (hand the object to BenchInstance::keepalive): freed together.
struct DeviceBuffers {
  std::vector<void*> ptrs;
  DeviceBuffers() = default;
  DeviceBuffers(const DeviceBuffers&) = delete;
  DeviceBuffers& operator=(const DeviceBuffers&) = delete;
  ~DeviceBuffers();
  // At least 16 bytes: an empty tensor still gets a valid, aligned address.
  void* alloc(size_t bytes);
  void* upload(const void* host, size_t bytes);
  // n values mean + sigma·N(0, 1) in `dtype` (f32, bf16 or f16; rounded to nearest even), never exactly 0 (zeros hide
  // unwritten outputs and can run faster than real data).
  void* random(DType dtype, size_t n, float sigma, uint32_t seed, float mean = 0.f);
};
// A fresh seed per call (std::random_device): every instance gets new data.
uint32_t bench_seed();
// IEEE binary32 → bf16 / binary16 bits, rounded to nearest even (finite inputs; f16 overflows to ±inf).
uint16_t bf16_bits(float f);
uint16_t f16_bits(float f);

}  // namespace kiln::detail
