// runtime/bench.cpp — the bench case registry, device helpers, and the timing harness behind `kiln bench`.
//
// Every number is a median of CUDA-event timings on the Runtime's device, with L2 flushed before each timed call,
// so that a case reports what it costs when its inputs come from HBM, as they do inside a training step.
#include "runtime/bench.hpp"

#include <cuda.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <random>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/errors.hpp"
#include "runtime/driver.hpp"
#include "runtime/log.hpp"
#include "runtime/nvrtc_compiler.hpp"
#include "runtime/runtime_impl.hpp"

namespace kiln::detail {

BenchInstance with_forced_config(BenchInstance inst, const Specialization& cand, const std::string& what) {
  inst.run = [run = std::move(inst.run), cand, what](Stream s) {
    ForceConfigScope force(cand);
    run(s);
    if (force.applied() == 0) throw kiln::Error(fmt::format("bench: the {} op did not ask for its config", what));
  };
  return inst;
}

namespace {

// The copy-bandwidth probe: large enough that launch overhead and L2 do not matter (1 GiB ≫ 50 MB of L2).
constexpr size_t kCopyProbeBytes = size_t{1} << 30;
constexpr int kCopyProbeWarmup = 3;
constexpr int kMinCopyProbeRepeats = 20;
// Reading this much evicts everything a previous call left in L2 (50 MB on H100).
constexpr size_t kL2FlushBytes = size_t{256} << 20;

// A device allocation released on scope exit, so that a failing case does not leak gigabytes.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : ptr_(device_alloc(bytes)), bytes_(bytes) {}
  ~DeviceBuffer() { device_free(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  CUdeviceptr get() const { return reinterpret_cast<CUdeviceptr>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_;
  size_t bytes_;
};

class Event {
 public:
  Event() { check(driver().cuEventCreate(&event_, CU_EVENT_DEFAULT), "cuEventCreate"); }
  ~Event() { driver().cuEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(Stream stream) { check(driver().cuEventRecord(event_, stream), "cuEventRecord"); }
  // Milliseconds from `start` to this event; waits for this event.
  float ms_since(const Event& start) const {
    check(driver().cuEventSynchronize(event_), "cuEventSynchronize");
    float ms = 0;
    check(driver().cuEventElapsedTime(&ms, start.event_, event_), "cuEventElapsedTime");
    return ms;
  }

 private:
  CUevent event_ = nullptr;
};

// Bandwidth of a large device-to-device copy, counting bytes read + written: the ceiling a memory-bound op can hope
// to approach, measured in the same run so that every case's percentage is relative to this GPU as it is now.
double measure_copy_gbps(Stream stream, int repeats) {
  const Driver& d = driver();
  DeviceBuffer src(kCopyProbeBytes), dst(kCopyProbeBytes);
  check(d.cuMemsetD8(src.get(), 0x3c, kCopyProbeBytes), "cuMemsetD8");
  for (int i = 0; i < kCopyProbeWarmup; ++i)
    check(d.cuMemcpyDtoDAsync(dst.get(), src.get(), kCopyProbeBytes, stream), "cuMemcpyDtoDAsync");

  Event start, stop;
  std::vector<double> ms;
  for (int i = 0; i < std::max(repeats, kMinCopyProbeRepeats); ++i) {
    start.record(stream);
    check(d.cuMemcpyDtoDAsync(dst.get(), src.get(), kCopyProbeBytes, stream), "cuMemcpyDtoDAsync");
    stop.record(stream);
    ms.push_back(stop.ms_since(start));
  }
  return 2.0 * static_cast<double>(kCopyProbeBytes) / (median(ms) * 1e-3) / 1e9;
}

}  // namespace

std::string cuda_version_string(int v) { return fmt::format("{}.{}", v / 1000, (v % 1000) / 10); }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// A read, so it leaves no dirty lines whose write-back the timed call would pay for.
L2Flusher::L2Flusher(Runtime& rt, Stream stream) : rt_(rt) {
  rt.impl().bind_device();
  buffer_ = device_alloc(kL2FlushBytes);
  try {
    sink_ = device_alloc(sizeof(unsigned));
    check(driver().cuMemsetD8(reinterpret_cast<CUdeviceptr>(buffer_), 0x5a, kL2FlushBytes), "cuMemsetD8");
    flush(stream);
    check(driver().cuStreamSynchronize(stream), "cuStreamSynchronize");
  } catch (...) {
    device_free(sink_);
    device_free(buffer_);
    throw;
  }
}

L2Flusher::~L2Flusher() {
  device_free(sink_);
  device_free(buffer_);
}

void L2Flusher::flush(Stream stream) {
  l2_flush(rt_, buffer_, kL2FlushBytes, static_cast<unsigned*>(sink_), stream);
  if (cold_code_) evict_code(rt_, static_cast<unsigned*>(sink_), stream);
}
void L2Flusher::set_cold_code(bool on, Stream stream) {
  cold_code_ = on;
  if (!on) return;
  evict_code(rt_, static_cast<unsigned*>(sink_), stream);
  check(driver().cuStreamSynchronize(stream), "cuStreamSynchronize");
}
void L2Flusher::empty(Stream stream) { empty_launch(rt_, static_cast<unsigned*>(sink_), stream); }

std::vector<double> time_calls_us(const std::function<void(Stream)>& fn, Stream stream, L2Flusher& l2, int warmup,
                                  int repeats, const std::function<void()>& before_flush) {
  // Warm-up: compilation, module load, first touch.
  for (int i = 0; i < warmup; ++i) fn(stream);
  check(driver().cuStreamSynchronize(stream), "cuStreamSynchronize");
  Event start, stop;
  std::vector<double> us;
  for (int i = 0; i < std::max(repeats, 1); ++i) {
    // Launch parity balanced: one empty launch before the flush of every odd call, so half of the timed calls sit at
    // each parity of the stream's launch count whatever ran before. Session 15: some kernels run 0.6-0.8 us slower at
    // one parity (the router GEMM forward, mode 2 at N = 7168; which parity is set by the process's history), and
    // every timed call of an unbalanced block shares one parity, so a row read the slow or the fast mode as a whole.
    if (before_flush) before_flush();
    if (i & 1) l2.empty(stream);
    l2.flush(stream);
    start.record(stream);
    fn(stream);
    stop.record(stream);
    us.push_back(stop.ms_since(start) * 1e3);
  }
  return us;
}

namespace {
double time_us(const std::function<void(Stream)>& fn, Stream stream, L2Flusher& l2, const BenchOptions& opts) {
  return median(time_calls_us(fn, stream, l2, opts.warmup, opts.repeats));
}
}  // namespace

bool bench_filter_matches(const std::string& filter, const std::string& name) {
  if (filter.empty()) return true;
  for (size_t b = 0; b <= filter.size();) {
    size_t e = filter.find('|', b);
    if (e == std::string::npos) e = filter.size();
    std::string_view term(filter.data() + b, e - b);
    if (!term.empty() && term.back() == '$') {
      term.remove_suffix(1);
      if (!term.empty() && name.size() >= term.size() && name.compare(name.size() - term.size(), term.size(), term) == 0)
        return true;
    } else if (!term.empty() && name.find(term) != std::string::npos) {
      return true;
    }
    b = e + 1;
  }
  return false;
}

std::vector<BenchCase>& bench_cases() {
  static std::vector<BenchCase> cases;
  return cases;
}

void* device_alloc(size_t bytes) {
  CUdeviceptr p = 0;
  check(driver().cuMemAlloc(&p, bytes), "cuMemAlloc");
  return reinterpret_cast<void*>(p);
}

void device_free(void* p) {
  // Called from destructors: a failure here cannot be handled and must not throw.
  if (p) driver().cuMemFree(reinterpret_cast<CUdeviceptr>(p));
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  check(driver().cuMemcpyHtoD(reinterpret_cast<CUdeviceptr>(dst), src, bytes), "cuMemcpyHtoD");
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  check(driver().cuMemcpyDtoH(dst, reinterpret_cast<CUdeviceptr>(src), bytes), "cuMemcpyDtoH");
}

void device_synchronize() { check(driver().cuCtxSynchronize(), "cuCtxSynchronize"); }

DeviceBuffers::~DeviceBuffers() {
  for (void* p : ptrs) device_free(p);
}

void* DeviceBuffers::alloc(size_t bytes) {
  ptrs.reserve(ptrs.size() + 1);  // push_back cannot throw after the allocation (no leak)
  ptrs.push_back(device_alloc(std::max<size_t>(bytes, 16)));
  return ptrs.back();
}

void* DeviceBuffers::upload(const void* host, size_t bytes) {
  void* d = alloc(bytes);
  if (bytes) copy_to_device(d, host, bytes);
  return d;
}

void* DeviceBuffers::random(DType dtype, size_t n, float sigma, uint32_t seed, float mean) {
  const size_t es = dtype_size(dtype);
  std::vector<uint8_t> h(n * es);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(mean, sigma);
  for (size_t i = 0; i < n; ++i) {
    float f = dist(rng);
    if (f == 0.f) f = 1e-3f;
    if (dtype == DType::f32) {
      std::memcpy(&h[i * 4], &f, 4);
    } else {
      const uint16_t v = dtype == DType::bf16 ? bf16_bits(f) : f16_bits(f);
      std::memcpy(&h[i * 2], &v, 2);
    }
  }
  return upload(h.data(), h.size());
}

uint32_t bench_seed() {
  static std::random_device rd;
  static std::mutex m;
  std::lock_guard g(m);
  return rd();
}

uint16_t bf16_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return static_cast<uint16_t>((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}

uint16_t f16_bits(float f) {
  const _Float16 v = static_cast<_Float16>(f);
  uint16_t b;
  std::memcpy(&b, &v, 2);
  return b;
}

BenchReport run_benchmarks(Runtime& rt, const BenchOptions& opts,
                           const std::function<void(const BenchResult&)>& on_result) {
  // Binds the Runtime's device (primary context) on this thread; every driver call below relies on it.
  const DeviceInfo& dev = rt.impl().device();
  const Driver& d = driver();
  // The legacy default stream: the harness synchronizes after every timed call anyway.
  const Stream stream = nullptr;

  BenchReport report;
  char name[256] = {};
  check(d.cuDeviceGetName(name, sizeof(name), dev.device), "cuDeviceGetName");
  report.device = name;
  report.driver = cuda_version_string(d.version);
  report.cuda = fmt::format("{} (nvrtc {})", cuda_version_string(CUDA_VERSION), nvrtc_version());
  report.copy_gbps = measure_copy_gbps(stream, opts.repeats);

  L2Flusher l2(rt, stream);
  l2.set_cold_code(opts.cold_code, stream);
  report.cold_code = l2.cold_code();
  report.empty_kernel_us = time_us([&](Stream s) { l2.empty(s); }, stream, l2, opts);
  for (const BenchCase& c : bench_cases()) {
    if (!bench_filter_matches(opts.filter, c.op + " " + c.shape)) continue;

    // Scoped to this iteration: the instance's buffers are freed before the next case allocates its own.
    // A case that throws (a rejected argument, a compile error) is reported and the run goes on; a device fault
    // leaves the context unusable, so DeviceError ends the run.
    BenchResult r;
    r.op = c.op;
    r.shape = c.shape;
    try {
      BenchInstance instance = c.prepare(rt);
      r.bytes = instance.bytes;
      r.us = time_us(instance.run, stream, l2, opts);
      r.baseline = instance.baseline_name;  // also without a baseline to time: then it says why (e.g. unavailable)
      if (instance.baseline) r.baseline_us = time_us(instance.baseline, stream, l2, opts);
    } catch (const kiln::DeviceError&) {
      throw;
    } catch (const kiln::Error& e) {
      report.failures.push_back(fmt::format("{} {}: {}", c.op, c.shape, e.what()));
      log_line(LogLevel::error, "bench case failed: " + report.failures.back());
      continue;
    }
    r.gbps = static_cast<double>(r.bytes) / r.us / 1e3;
    r.pct_copy_bw = r.gbps / report.copy_gbps * 100.0;

    if (on_result) on_result(r);
    report.results.push_back(std::move(r));
  }
  return report;
}

}  // namespace kiln::detail
