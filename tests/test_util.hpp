// tests/test_util.hpp — what every kiln test shares: number formats on the host, deterministic random data,
// device buffers with poison and guard zones, a GPU fixture that skips without a driver, typed-error checks.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <ostream>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "kiln/dtype.hpp"
#include "kiln/errors.hpp"
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"
#include "runtime/driver.hpp"

// Skips the current test when no CUDA driver or device is present (CPU-only CI machines).
#define KILN_SKIP_IF_NO_GPU()                                                                   \
  do {                                                                                          \
    if (!::kiln::detail::driver_available()) GTEST_SKIP() << "no CUDA driver or GPU present"; \
  } while (0)

// Expects `stmt` to throw a kiln::Error of one of the listed types whose message names `arg` (as a whole word;
// "" skips the name check). Runs `stmt` once.
#define EXPECT_THROW_NAMING(stmt, arg, ...) \
  EXPECT_TRUE((::kiln::test::throws_naming<__VA_ARGS__>([&] { stmt; }, arg)))

// For argument checks without a GPU: `stmt` passed validation and failed only when it reached the device (it throws
// DeviceError where there is no driver; skipped where there is one, since fake pointers would then run).
#define EXPECT_REACHES_DEVICE(stmt)                                                                     \
  do {                                                                                                \
    if (::kiln::detail::driver_available()) GTEST_SKIP() << "a GPU is present: fake pointers would run"; \
    EXPECT_THROW_NAMING(stmt, "", DeviceError);                                                         \
  } while (0)

namespace kiln::detail {
struct FamilyDef;
}

namespace kiln::test {

// ---- host number formats ------------------------------------------------------------------------------------

float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);  // round to nearest even; NaN stays a (quiet) NaN; overflow rounds to ±inf
float f16_to_float(uint16_t h);
uint16_t float_to_f16(float f);   // round to nearest even, subnormals included; NaN stays NaN
// float8_e4m3fn decoded from its fields (bias 7, subnormals, no inf; 0x7F/0xFF are NaN).
float e4m3_to_float(uint8_t code);
inline bool e4m3_is_nan(uint8_t code) { return (code & 0x7F) == 0x7F; }

// v after a round trip through `dtype` (bf16, f16 or f32).
float round_to(DType dtype, float v);
void round_to(DType dtype, std::span<float> v);
// Packs floats (already representable, or rounded to nearest even) into `dtype`'s bytes, and back.
std::vector<uint8_t> encode(DType dtype, std::span<const float> v);
std::vector<float> decode(DType dtype, std::span<const uint8_t> bytes);

// ---- deterministic random data ----------------------------------------------------------------------------

// Folds the parameters of a case into one seed, so every case gets its own stream and can be reproduced.
uint64_t mix_seed(std::initializer_list<uint64_t> parts);
// n draws of mean + stddev·N(0,1). Generated in fixed-size chunks with per-chunk seeds, so the result depends only
// on (n, seed) however many threads produce it.
std::vector<float> randn(int64_t n, uint64_t seed, float stddev = 1.0f, float mean = 0.0f);
// The same rounded to `dtype` (values a tensor of that type holds exactly).
std::vector<float> random_values(int64_t n, uint64_t seed, DType dtype, float stddev = 1.0f, float mean = 0.0f);
// randn(n, seed, stddev) as doubles (inputs of the double-precision references).
std::vector<double> randd(int64_t n, uint64_t seed, double stddev = 1.0);

// ---- host parallelism for the references ------------------------------------------------------------------

// Calls body(begin, end) over disjoint chunks of [0, n) on all hardware threads. Bodies must not use gtest assertions.
void parallel_for(int64_t n, const std::function<void(int64_t begin, int64_t end)>& body);

// ---- comparisons ----------------------------------------------------------------------------------------------

// ||got − ref||₂ / ||ref||₂; 0 when both are zero, +inf when only ref is zero, NaN when got holds NaN.
double relative_l2(std::span<const float> got, std::span<const double> ref);

// An analytic gradient against central differences of loss() (step h) in every element of v (each restored after
// its two evaluations): max |fd − analytic| ≤ rel · max |fd|.
::testing::AssertionResult matches_finite_differences(std::vector<double>& v, const std::vector<double>& analytic,
                                                      const std::function<double()>& loss, double h = 1e-6,
                                                      double rel = 1e-7);

// Values in failure messages: a float with its bits ("%.9g (0x%08x)"), a double as "%.9g", an e4m3 code with its
// value ("0x%02x (%g)").
std::string show(float v);
std::string show(double v);
std::string show_code(uint8_t c);

// Tolerances of the norm families' outputs in `dtype`: its explicit mantissa bits, one ulp at |v| (0 for 0 and
// non-finite v), and the relative L2 bound of a whole tensor.
int mantissa_bits(DType d);
double ulp(DType d, double v);
double rel_l2_tol(DType d);
// Element-wise check of a [rows, n] tensor: NaN exactly where the reference is NaN, ±inf where it is, else
// |got − ref| ≤ K·ulp(ref) + A·(the reference row's rms over its finite values), K = 64 / A = 1e-6 for f32 and
// 2 / 1e-3 for 16-bit outputs. Failures name the element as "[<row_name> r, <col_name> c]".
::testing::AssertionResult close_rows(const char* what, const std::vector<float>& got, const std::vector<double>& ref,
                                      int64_t rows, int64_t n, DType dtype, const char* row_name = "row",
                                      const char* col_name = "col");

// Checks equal(i) for i in [0, n); on failure reports the count and describe(i) for the first `max_report`.
template <typename Equal, typename Describe>
::testing::AssertionResult all_equal(std::string_view what, int64_t n, Equal equal, Describe describe,
                                     int max_report = 8) {
  int64_t bad = 0;
  std::string first;
  for (int64_t i = 0; i < n; ++i) {
    if (equal(i)) continue;
    if (bad < max_report) first += "\n    " + describe(i);
    ++bad;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << n << " elements differ; first:" << first;
}

// Element-wise bitwise equality of two arrays (NaN == NaN when the bits agree), reporting the first differences
// instead of printing whole arrays.
template <typename T>
::testing::AssertionResult bitwise_equal(std::string_view what, const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": " << got.size() << " elements, expected " << want.size();
  return all_equal(
      what, static_cast<int64_t>(got.size()),
      [&](int64_t i) { return std::memcmp(&got[i], &want[i], sizeof(T)) == 0; },
      [&](int64_t i) {
        return "[" + std::to_string(i) + "]: " + ::testing::PrintToString(got[i]) + " vs " +
               ::testing::PrintToString(want[i]);
      });
}

// ---- typed errors ---------------------------------------------------------------------------------------------

// True if `name` occurs in `message` as a whole identifier (not inside a longer word: "x" is not found in
// "expected", but is in "argument 'x': …").
bool message_names(std::string_view message, std::string_view name);
std::string demangled_type_name(const std::type_info& t);

template <typename... Allowed, typename F>
::testing::AssertionResult throws_naming(F&& f, std::string_view arg) {
  static_assert(sizeof...(Allowed) > 0, "name at least one error type");
  try {
    std::forward<F>(f)();
  } catch (const kiln::Error& e) {
    const bool type_ok = (... || (dynamic_cast<const Allowed*>(&e) != nullptr));
    if (!type_ok) {
      auto r = ::testing::AssertionFailure() << "threw " << demangled_type_name(typeid(e)) << ", expected";
      ((r << ' ' << demangled_type_name(typeid(Allowed))), ...);
      return r << "; message: " << e.what();
    }
    if (!arg.empty() && !message_names(e.what(), arg))
      return ::testing::AssertionFailure() << "message does not name '" << arg << "': " << e.what();
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-kiln exception " << demangled_type_name(typeid(e)) << ": "
                                         << e.what();
  } catch (...) {
    return ::testing::AssertionFailure() << "threw a non-std exception";
  }
  return ::testing::AssertionFailure() << "did not throw";
}

// ---- temporary directories and runtimes ----------------------------------------------------------------------

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  explicit TempDir(std::string_view prefix = "kiln-test-");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }
  // Writes `text` to the file `name` in the directory; returns its path.
  std::filesystem::path write(const std::string& name, const std::string& text) const;

 private:
  std::filesystem::path path_;
};

// ---- the kiln CLI as a child process --------------------------------------------------------------------------

struct CliResult {
  int rc = -1;
  std::string out, err;
};
std::ostream& operator<<(std::ostream& os, const CliResult& r);

// Runs the built `kiln` binary with `args`. `env` overrides (value set) or removes (value "") variables of this
// process's environment; KILN_CACHE_DIR always points into a scratch directory so that no test touches ~/.cache.
CliResult run_kiln(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {});

std::string read_file(const std::filesystem::path& p);
inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Default options with the cubin cache in a per-process temporary directory (removed at exit), so tests never
// read or pollute the user's cache.
RuntimeOptions test_runtime_options();

// The registered family `name` (the families register with the first Runtime: one memory-only runtime is made once
// for that); throws std::runtime_error if there is none.
const detail::FamilyDef& registered_family(std::string_view name);

// ---- argument checks without a GPU ----------------------------------------------------------------------------

// Distinct, 16 MiB-aligned device addresses (i ≥ 0) for ops that only validate; never dereferenced.
inline void* fake(int i) { return reinterpret_cast<void*>(static_cast<uintptr_t>(i + 1) << 24); }

// A runtime that compiles in memory only: nothing in an argument-check test may compile or touch the disk cache.
inline RuntimeOptions cpu_options() {
  RuntimeOptions o;
  o.memory_only = true;
  return o;
}

// ---- device memory --------------------------------------------------------------------------------------------

// Device memory from the driver API, with guard zones on both sides. fill() writes the whole allocation, guards
// included; guards_intact() then tells whether anything was written outside [data(), data() + bytes()).
// Every buffer is non-null even for zero bytes, so empty tensors (M = 0) still carry a valid pointer.
class DeviceBuffer {
 public:
  static constexpr size_t kGuardBytes = 256;  // keeps data() 256-byte aligned (cuMemAlloc aligns the base)
  static constexpr uint8_t kPoison = 0x55;    // fp32 0x55555555 ≈ 1.47e13, never a legitimate scale or rms_inv

  DeviceBuffer() = default;
  DeviceBuffer(Runtime& rt, size_t bytes);  // binds rt's device context on the calling thread, then allocates
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const;
  size_t bytes() const { return bytes_; }

  void fill(uint8_t byte);                      // whole allocation, guards included (synchronous)
  void poison(uint8_t byte = kPoison) { fill(byte); }
  bool guards_intact() const;                   // both guards still hold the last fill byte
  void upload(const void* src, size_t n);       // n ≤ bytes()
  void download(void* dst, size_t n) const;     // n ≤ bytes()

  template <typename T>
  void upload(const std::vector<T>& v) { upload(v.data(), v.size() * sizeof(T)); }
  template <typename T>
  std::vector<T> download(size_t count) const {
    std::vector<T> v(count);
    download(v.data(), count * sizeof(T));
    return v;
  }

  TensorRef ref(DType dtype, std::initializer_list<int64_t> dims) const {
    return TensorRef::contiguous(data(), dtype, dims);
  }

 private:
  void release() noexcept;
  uint64_t base_ = 0;  // CUdeviceptr of the allocation (guard included)
  size_t bytes_ = 0;
  uint8_t fill_byte_ = 0;
  bool filled_ = false;
};

// Binds rt's device context to the calling thread (the Runtime binds it on its first GPU op; tests allocate before).
void bind_device(Runtime& rt);
// Waits for all work on the bound context; throws DeviceError if a kernel faulted.
void synchronize();

// Median over 31 rounds of the host time per enqueue of `call`, in µs (rounds of 256 calls, each drained before the
// next so the launch queue never fills and blocks the host).
template <typename F>
double host_us_per_call(F&& call) {
  std::vector<double> rounds;
  for (int round = 0; round < 31; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 256; ++i) call();
    const auto t1 = std::chrono::steady_clock::now();
    synchronize();
    rounds.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / 256);
  }
  std::nth_element(rounds.begin(), rounds.begin() + 15, rounds.end());
  return rounds[15];
}

// Base fixture for GPU tests: one Runtime per test suite (cache in the per-process temp dir), every test skipped
// when no driver or GPU is present.
class GpuTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  void SetUp() override { KILN_SKIP_IF_NO_GPU(); }
  static Runtime& rt();

 private:
  static std::unique_ptr<Runtime> runtime_;
};

}  // namespace kiln::test
