// tests/test_util.cpp — see test_util.hpp.
#include "test_util.hpp"

#include <cxxabi.h>
#include <execinfo.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>
#include <stdlib.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <limits>
#include <numbers>
#include <stdexcept>
#include <thread>
#include <utility>

#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"

extern char** environ;

namespace kiln::test {

// ---- host number formats ------------------------------------------------------------------------------------

float bf16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t float_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x0040);  // keep sign and payload top, force quiet
  // Adding 0x7FFF plus the kept LSB rounds the dropped 16 bits to nearest, ties to even; a carry out of the
  // mantissa bumps the exponent, which is exactly the rounded value (up to ±inf).
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_float(uint16_t h) {
  const int exp = (h >> 10) & 0x1F;
  const int man = h & 0x3FF;
  float mag;
  if (exp == 0) {
    mag = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    mag = man ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    mag = std::ldexp(static_cast<float>(man | 0x400), exp - 25);
  }
  return (h & 0x8000) ? -mag : mag;
}

uint16_t float_to_f16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return sign | 0x7E00;
  const float a = std::fabs(f);
  // 65520 is the midpoint between the largest finite half (65504, odd mantissa) and 2^16: ties go to even = inf.
  if (a >= 65520.0f) return sign | 0x7C00;
  if (a < 0x1p-14f) {
    // Subnormal range: multiples of 2^-24. The product is exact in double and nearbyint rounds half to even
    // (default rounding mode); 1024 encodes the smallest normal, which is also the right code.
    return sign | static_cast<uint16_t>(std::nearbyint(static_cast<double>(a) * 0x1p24));
  }
  int e = 0;
  const double m = std::frexp(static_cast<double>(a), &e);  // a = m·2^e, m in [0.5, 1)
  double sig = std::nearbyint(m * 2048.0);                  // 11 significant bits, in [1024, 2048]
  if (sig == 2048.0) {
    sig = 1024.0;
    ++e;
  }
  // a ≈ (sig/1024)·2^(e−1), biased exponent e − 1 + 15.
  return sign | static_cast<uint16_t>(((e + 14) << 10) | (static_cast<int>(sig) - 1024));
}

float e4m3_to_float(uint8_t code) {
  const int exp = (code >> 3) & 0xF;
  const int man = code & 0x7;
  if (exp == 15 && man == 7) return std::numeric_limits<float>::quiet_NaN();
  // Subnormal: man/8·2^-6 = man·2^-9. Normal: (1 + man/8)·2^(exp−7) = (8 + man)·2^(exp−10).
  const float mag = exp == 0 ? std::ldexp(static_cast<float>(man), -9) : std::ldexp(static_cast<float>(8 + man), exp - 10);
  return (code & 0x80) ? -mag : mag;
}

float round_to(DType dtype, float v) {
  switch (dtype) {
    case DType::bf16: return bf16_to_float(float_to_bf16(v));
    case DType::f16: return f16_to_float(float_to_f16(v));
    case DType::f32: return v;
    default: throw std::invalid_argument("round_to: not a bf16/fp16/fp32 dtype");
  }
}

void round_to(DType dtype, std::span<float> v) {
  for (float& x : v) x = round_to(dtype, x);
}

std::vector<uint8_t> encode(DType dtype, std::span<const float> v) {
  std::vector<uint8_t> out(v.size() * dtype_size(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    switch (dtype) {
      case DType::bf16: {
        const uint16_t b = float_to_bf16(v[i]);
        std::memcpy(&out[2 * i], &b, 2);
        break;
      }
      case DType::f16: {
        const uint16_t h = float_to_f16(v[i]);
        std::memcpy(&out[2 * i], &h, 2);
        break;
      }
      case DType::f32: std::memcpy(&out[4 * i], &v[i], 4); break;
      default: throw std::invalid_argument("encode: not a bf16/fp16/fp32 dtype");
    }
  }
  return out;
}

std::vector<float> decode(DType dtype, std::span<const uint8_t> bytes) {
  const size_t n = bytes.size() / dtype_size(dtype);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::bf16: {
        uint16_t b;
        std::memcpy(&b, &bytes[2 * i], 2);
        out[i] = bf16_to_float(b);
        break;
      }
      case DType::f16: {
        uint16_t h;
        std::memcpy(&h, &bytes[2 * i], 2);
        out[i] = f16_to_float(h);
        break;
      }
      case DType::f32: std::memcpy(&out[i], &bytes[4 * i], 4); break;
      default: throw std::invalid_argument("decode: not a bf16/fp16/fp32 dtype");
    }
  }
  return out;
}

// ---- deterministic random data ----------------------------------------------------------------------------

namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

uint64_t mix_seed(std::initializer_list<uint64_t> parts) {
  uint64_t h = 0x6B696C6E2D746573ull;  // "kiln-tes"
  for (uint64_t p : parts) {
    uint64_t s = h ^ p;
    h = splitmix64(s);
  }
  return h;
}

std::vector<float> randn(int64_t n, uint64_t seed, float stddev, float mean) {
  constexpr int64_t kChunk = 1 << 16;  // even, so Box–Muller pairs never straddle chunks
  std::vector<float> out(static_cast<size_t>(n));
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(chunks, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      uint64_t state = mix_seed({seed, static_cast<uint64_t>(c)});
      const int64_t end = std::min(n, (c + 1) * kChunk);
      for (int64_t i = c * kChunk; i < end; i += 2) {
        // Box–Muller on two uniforms in (0, 1] and [0, 1).
        const double u1 = 1.0 - static_cast<double>(splitmix64(state) >> 11) * 0x1p-53;
        const double u2 = static_cast<double>(splitmix64(state) >> 11) * 0x1p-53;
        const double r = std::sqrt(-2.0 * std::log(u1));
        const double t = 2.0 * std::numbers::pi * u2;
        out[i] = static_cast<float>(mean + stddev * r * std::cos(t));
        if (i + 1 < end) out[i + 1] = static_cast<float>(mean + stddev * r * std::sin(t));
      }
    }
  });
  return out;
}

// ---- host parallelism ---------------------------------------------------------------------------------------

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t threads = std::min<int64_t>({hw, n, 64});
  if (threads == 1) {
    body(0, n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads));
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t b = n * t / threads, e = n * (t + 1) / threads;
    pool.emplace_back([&body, b, e] { body(b, e); });
  }
  for (auto& th : pool) th.join();
}

// ---- comparisons ----------------------------------------------------------------------------------------------

double relative_l2(std::span<const float> got, std::span<const double> ref) {
  if (got.size() != ref.size()) throw std::invalid_argument("relative_l2: sizes differ");
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  if (std::isnan(num)) return std::numeric_limits<double>::quiet_NaN();
  if (den == 0) return num == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(num / den);
}

// ---- typed errors ---------------------------------------------------------------------------------------------

std::vector<float> random_values(int64_t n, uint64_t seed, DType dtype, float stddev, float mean) {
  std::vector<float> v = randn(n, seed, stddev, mean);
  round_to(dtype, v);
  return v;
}

std::vector<double> randd(int64_t n, uint64_t seed, double stddev) {
  const std::vector<float> f = randn(n, seed, static_cast<float>(stddev));
  return std::vector<double>(f.begin(), f.end());
}

::testing::AssertionResult matches_finite_differences(std::vector<double>& v, const std::vector<double>& analytic,
                                                      const std::function<double()>& loss, double h, double rel) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const double v0 = v[i];
    v[i] = v0 + h;
    const double lp = loss();
    v[i] = v0 - h;
    const double lm = loss();
    v[i] = v0;
    const double fd = (lp - lm) / (2 * h);
    err = std::max(err, std::fabs(fd - analytic[i]));
    norm = std::max(norm, std::fabs(fd));
  }
  if (err <= rel * norm) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |finite difference − analytic| = " << err << " > " << rel
                                       << " · max |finite difference| = " << rel * norm;
}

std::string show(float v) {
  char b[48];
  std::snprintf(b, sizeof b, "%.9g (0x%08x)", v, std::bit_cast<uint32_t>(v));
  return b;
}
std::string show(double v) {
  char b[48];
  std::snprintf(b, sizeof b, "%.9g", v);
  return b;
}
std::string show_code(uint8_t c) {
  char b[48];
  std::snprintf(b, sizeof b, "0x%02x (%g)", c, e4m3_to_float(c));
  return b;
}

int mantissa_bits(DType d) { return d == DType::bf16 ? 7 : d == DType::f16 ? 10 : 23; }
double ulp(DType d, double v) {
  v = std::fabs(v);
  if (v == 0 || !std::isfinite(v)) return 0;
  return std::ldexp(1.0, std::ilogb(v) - mantissa_bits(d));
}
double rel_l2_tol(DType d) { return d == DType::bf16 ? 2.5e-3 : d == DType::f16 ? 5e-4 : 2e-6; }

::testing::AssertionResult close_rows(const char* what, const std::vector<float>& got, const std::vector<double>& ref,
                                      int64_t rows, int64_t n, DType dtype, const char* row_name,
                                      const char* col_name) {
  const double K = dtype == DType::f32 ? 64 : 2, A = dtype == DType::f32 ? 1e-6 : 1e-3;
  std::vector<double> rms(rows, 0.0);
  for (int64_t m = 0; m < rows; ++m) {
    double s = 0;
    int64_t cnt = 0;
    for (int64_t c = 0; c < n; ++c)
      if (std::isfinite(ref[m * n + c])) {
        s += ref[m * n + c] * ref[m * n + c];
        ++cnt;
      }
    rms[m] = cnt ? std::sqrt(s / cnt) : 0;
  }
  return all_equal(
      what, rows * n,
      [&](int64_t i) {
        const double r = ref[i], g = got[i];
        if (std::isnan(r)) return std::isnan(g);
        if (std::isinf(r)) return g == r;
        return std::fabs(g - r) <= K * ulp(dtype, r) + A * rms[i / n];
      },
      [&](int64_t i) {
        return std::string("[") + row_name + " " + std::to_string(i / n) + ", " + col_name + " " +
               std::to_string(i % n) + "]: got " + show(static_cast<double>(got[i])) + ", reference " + show(ref[i]) +
               " (row rms " + show(rms[i / n]) + ")";
      });
}

bool message_names(std::string_view message, std::string_view name) {
  if (name.empty()) return true;
  auto ident = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  for (size_t pos = message.find(name); pos != std::string_view::npos; pos = message.find(name, pos + 1)) {
    const bool start_ok = pos == 0 || !ident(message[pos - 1]);
    const size_t end = pos + name.size();
    const bool end_ok = end == message.size() || !ident(message[end]);
    if (start_ok && end_ok) return true;
  }
  return false;
}

std::string demangled_type_name(const std::type_info& t) {
  int status = 0;
  char* s = abi::__cxa_demangle(t.name(), nullptr, nullptr, &status);
  std::string out = (status == 0 && s) ? s : t.name();
  std::free(s);
  return out;
}

// ---- temporary directories and runtimes ----------------------------------------------------------------------

TempDir::TempDir(std::string_view prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/" + std::string(prefix) + "XXXXXX";
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("TempDir: mkdtemp failed for " + tmpl);
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::filesystem::path TempDir::write(const std::string& name, const std::string& text) const {
  const std::filesystem::path p = path_ / name;
  std::ofstream(p, std::ios::binary) << text;
  return p;
}

// ---- the kiln CLI as a child process --------------------------------------------------------------------------

std::ostream& operator<<(std::ostream& os, const CliResult& r) {
  return os << "rc=" << r.rc << "\n--- stdout ---\n" << r.out << "\n--- stderr ---\n" << r.err;
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

CliResult run_kiln(const std::vector<std::string>& args, const std::map<std::string, std::string>& env) {
  static constexpr const char* kKiln = KILN_TEST_BINARY_DIR "/tools/kiln";
  static const TempDir scratch("kiln-cli-");
  std::map<std::string, std::string> overrides = {{"KILN_CACHE_DIR", (scratch.path() / "default-cache").string()},
                                                   {"KILN_CACHE_MAX_MB", ""}};
  for (const auto& [k, v] : env) overrides[k] = v;

  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    if (!overrides.count(entry.substr(0, entry.find('=')))) env_strings.push_back(entry);
  }
  for (const auto& [k, v] : overrides)
    if (!v.empty()) env_strings.push_back(k + "=" + v);

  std::vector<char*> argv = {const_cast<char*>(kKiln)}, envp;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  // Files rather than pipes: no risk of a full pipe blocking the child while the parent waits.
  const TempDir io("kiln-cli-io-");
  const std::string out_path = (io.path() / "stdout").string(), err_path = (io.path() / "stderr").string();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int spawn_rc = posix_spawn(&pid, kKiln, &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);

  CliResult r;
  if (spawn_rc != 0) {
    r.err = std::string("posix_spawn failed: ") + std::strerror(spawn_rc);
    return r;
  }
  int status = 0;
  waitpid(pid, &status, 0);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out_path);
  r.err = read_file(err_path);
  return r;
}

const detail::FamilyDef& registered_family(std::string_view name) {
  static Runtime rt(cpu_options());  // registers the families
  const detail::FamilyDef* f = detail::find_family(name);
  if (!f) throw std::runtime_error(std::string(name) + " is not registered");
  return *f;
}

RuntimeOptions test_runtime_options() {
  static const TempDir dir;  // one per process; removed when the process exits
  RuntimeOptions o;
  o.cache_dir = (dir.path() / "cache").string();
  return o;
}

// ---- device memory --------------------------------------------------------------------------------------------

void bind_device(Runtime& rt) {
  const detail::DeviceInfo& dev = rt.impl().device();
  detail::check(detail::driver().cuCtxSetCurrent(dev.context), "cuCtxSetCurrent");
}

void synchronize() { detail::check(detail::driver().cuCtxSynchronize(), "cuCtxSynchronize"); }

DeviceBuffer::DeviceBuffer(Runtime& rt, size_t bytes) : bytes_(bytes) {
  bind_device(rt);
  CUdeviceptr p = 0;
  detail::check(detail::driver().cuMemAlloc(&p, bytes + 2 * kGuardBytes), "cuMemAlloc");
  base_ = p;
}

DeviceBuffer::~DeviceBuffer() { release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : base_(std::exchange(o.base_, 0)), bytes_(std::exchange(o.bytes_, 0)), fill_byte_(o.fill_byte_),
      filled_(std::exchange(o.filled_, false)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    release();
    base_ = std::exchange(o.base_, 0);
    bytes_ = std::exchange(o.bytes_, 0);
    fill_byte_ = o.fill_byte_;
    filled_ = std::exchange(o.filled_, false);
  }
  return *this;
}

void DeviceBuffer::release() noexcept {
  if (base_) (void)detail::driver().cuMemFree(static_cast<CUdeviceptr>(base_));
  base_ = 0;
}

void* DeviceBuffer::data() const {
  return base_ ? reinterpret_cast<void*>(static_cast<uintptr_t>(base_ + kGuardBytes)) : nullptr;
}

void DeviceBuffer::fill(uint8_t byte) {
  detail::check(detail::driver().cuMemsetD8(static_cast<CUdeviceptr>(base_), byte, bytes_ + 2 * kGuardBytes),
                "cuMemsetD8");
  // cuMemsetD8 may return before the device has finished; the op under test may run on another stream.
  synchronize();
  fill_byte_ = byte;
  filled_ = true;
}

bool DeviceBuffer::guards_intact() const {
  if (!filled_) throw std::logic_error("DeviceBuffer::guards_intact: buffer was never filled");
  std::vector<uint8_t> g(kGuardBytes);
  for (uint64_t at : {base_, base_ + kGuardBytes + bytes_}) {
    detail::check(detail::driver().cuMemcpyDtoH(g.data(), static_cast<CUdeviceptr>(at), kGuardBytes), "cuMemcpyDtoH");
    if (std::any_of(g.begin(), g.end(), [&](uint8_t b) { return b != fill_byte_; })) return false;
  }
  return true;
}

void DeviceBuffer::upload(const void* src, size_t n) {
  if (n > bytes_) throw std::out_of_range("DeviceBuffer::upload: more bytes than the buffer holds");
  if (n == 0) return;
  detail::check(detail::driver().cuMemcpyHtoD(static_cast<CUdeviceptr>(base_ + kGuardBytes), src, n), "cuMemcpyHtoD");
}

void DeviceBuffer::download(void* dst, size_t n) const {
  if (n > bytes_) throw std::out_of_range("DeviceBuffer::download: more bytes than the buffer holds");
  if (n == 0) return;
  detail::check(detail::driver().cuMemcpyDtoH(dst, static_cast<CUdeviceptr>(base_ + kGuardBytes), n), "cuMemcpyDtoH");
}

// ---- crash reports ----------------------------------------------------------------------------------------------

namespace {
// A test binary that dies of a signal prints where (symbols need -rdynamic, which tests/CMakeLists.txt sets).
void print_backtrace(int sig) {
  void* frames[64];
  const int n = backtrace(frames, 64);
  const char msg[] = "\n*** kiln test binary: fatal signal, backtrace:\n";
  (void)!write(2, msg, sizeof msg - 1);
  backtrace_symbols_fd(frames, n, 2);
  signal(sig, SIG_DFL);
  raise(sig);
}
const bool g_backtrace_installed = [] {
  signal(SIGSEGV, print_backtrace);
  signal(SIGABRT, print_backtrace);
  signal(SIGBUS, print_backtrace);
  return true;
}();
}  // namespace

// ---- GPU fixture -----------------------------------------------------------------------------------------------

std::unique_ptr<Runtime> GpuTest::runtime_;

void GpuTest::SetUpTestSuite() {
  if (detail::driver_available()) runtime_ = std::make_unique<Runtime>(test_runtime_options());
}

void GpuTest::TearDownTestSuite() { runtime_.reset(); }

Runtime& GpuTest::rt() {
  if (!runtime_) throw std::logic_error("GpuTest::rt: no runtime (no GPU, or used outside a test)");
  return *runtime_;
}

}  // namespace kiln::test
