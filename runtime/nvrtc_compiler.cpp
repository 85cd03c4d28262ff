#include "runtime/nvrtc_compiler.hpp"

#include <nvrtc.h>
#include <xxhash.h>

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kiln/errors.hpp"
#include "runtime/embedded.hpp"
#include "runtime/log.hpp"

namespace kiln::detail {
namespace {

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) return {};
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void nvrtc_check(nvrtcResult r, const char* what) {
  if (r != NVRTC_SUCCESS) throw CompileError(fmt::format("{} failed: {}", what, nvrtcGetErrorString(r)), "", "");
}

}  // namespace

const std::vector<std::string>& base_compile_flags() {
  // -std=c++17: templates use if constexpr. No fast-math: quantization needs correctly rounded division.
  static const std::vector<std::string> flags = {"-std=c++17", "-default-device", "--device-as-default-execution-space",
                                                 "-DKILN_NVRTC=1"};
  return flags;
}

std::string nvrtc_version() {
  int major = 0, minor = 0;
  nvrtcVersion(&major, &minor);
  return fmt::format("{}.{}", major, minor);
}

const std::string& cuda_include_dir() {
  static const std::string dir = [] {
    for (const char* var : {"KILN_CUDA_HOME", "CUDA_HOME"}) {
      const char* v = std::getenv(var);
      if (v && *v) return std::string(v) + "/include";
    }
    return std::string("/usr/local/cuda/include");
  }();
  return dir;
}

const std::string& toolkit_fingerprint() {
  // kiln's templates include no toolkit header today; the toolkit's identity still goes into the key so that a
  // template that starts including one never meets a cubin built against other headers.
  static const std::string fp = [] {
    std::string blob = read_file(std::filesystem::path(cuda_include_dir()) / "cuda.h");
    blob += read_file(std::filesystem::path(cuda_include_dir()) / ".." / "version.json");
    XXH128_hash_t h = XXH3_128bits(blob.data(), blob.size());
    return fmt::format("{:016x}{:016x}", h.high64, h.low64);
  }();
  return fp;
}

const std::string& embedded_headers_hash() {
  static const std::string hash = [] {
    XXH3_state_t* st = XXH3_createState();
    XXH3_128bits_reset(st);
    for (const EmbeddedFile& f : embedded_templates()) {
      XXH3_128bits_update(st, f.name, std::strlen(f.name) + 1);
      XXH3_128bits_update(st, f.data, f.size);
    }
    XXH128_hash_t h = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    return fmt::format("{:016x}{:016x}", h.high64, h.low64);
  }();
  return hash;
}

CompileOutput nvrtc_compile(const CompileRequest& req, const std::string& failed_source_path) {
  auto t0 = std::chrono::steady_clock::now();
  std::vector<const char*> header_data, header_names;
  for (const EmbeddedFile& f : embedded_templates()) {
    header_data.push_back(f.data);
    header_names.push_back(f.name);
  }

  auto run = [&](bool cubin, CompileOutput& out) {
    nvrtcProgram prog;
    nvrtc_check(nvrtcCreateProgram(&prog, req.source.c_str(), "kiln_kernel.cu", static_cast<int>(header_data.size()),
                                   header_data.data(), header_names.data()),
                "nvrtcCreateProgram");
    struct Guard {
      nvrtcProgram& p;
      ~Guard() { nvrtcDestroyProgram(&p); }
    } guard{prog};
    nvrtc_check(nvrtcAddNameExpression(prog, req.name_expression.c_str()), "nvrtcAddNameExpression");

    std::vector<std::string> opts = base_compile_flags();
    opts.push_back("--gpu-architecture=" + (cubin ? req.arch.name() : req.arch.virtual_name()));
    if (std::filesystem::exists(cuda_include_dir())) opts.push_back("-I" + cuda_include_dir());
    if (req.lineinfo) opts.push_back("-lineinfo");
    std::vector<const char*> copts;
    for (auto& o : opts) copts.push_back(o.c_str());

    nvrtcResult r = nvrtcCompileProgram(prog, static_cast<int>(copts.size()), copts.data());
    size_t log_size = 0;
    nvrtcGetProgramLogSize(prog, &log_size);
    std::string log(log_size, '\0');
    if (log_size) nvrtcGetProgramLog(prog, log.data());
    while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
    if (r != NVRTC_SUCCESS) {
      std::ofstream(failed_source_path) << req.source;
      throw CompileError(fmt::format("NVRTC failed to compile {} for {}: {}\n{}\n(rendered source: {})",
                                     req.name_expression, req.arch.name(), nvrtcGetErrorString(r), log,
                                     failed_source_path),
                         log, failed_source_path);
    }
    const char* lowered = nullptr;
    nvrtc_check(nvrtcGetLoweredName(prog, req.name_expression.c_str(), &lowered), "nvrtcGetLoweredName");
    out.lowered_name = lowered;
    out.log = log;
    size_t n = 0;
    if (cubin) {
      nvrtc_check(nvrtcGetCUBINSize(prog, &n), "nvrtcGetCUBINSize");
      out.cubin.resize(n);
      nvrtc_check(nvrtcGetCUBIN(prog, out.cubin.data()), "nvrtcGetCUBIN");
    } else {
      nvrtc_check(nvrtcGetPTXSize(prog, &n), "nvrtcGetPTXSize");
      out.ptx.resize(n);
      nvrtc_check(nvrtcGetPTX(prog, out.ptx.data()), "nvrtcGetPTX");
      while (!out.ptx.empty() && out.ptx.back() == '\0') out.ptx.pop_back();
    }
  };

  CompileOutput out;
  run(true, out);
  if (req.want_ptx) {
    CompileOutput p;
    run(false, p);
    out.ptx = std::move(p.ptx);
  }
  out.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace kiln::detail
