#include "runtime/registry.hpp"

#include <xxhash.h>

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>

#include "kiln/errors.hpp"
#include "kiln/version.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/log.hpp"
#include "runtime/nvrtc_compiler.hpp"

namespace kiln::detail {
namespace {

std::string hash_hex(const std::string& s) {
  XXH128_hash_t h = XXH3_128bits(s.data(), s.size());
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

bool dump_wants(const char* what) {
  const char* v = std::getenv("KILN_DUMP");
  return v && std::string_view(v).find(what) != std::string_view::npos;
}

// KILN_CACHE_MAX_MB in bytes, read at each store; none when unset or empty. A value that is not a whole number of MiB
// in [0, 2^30] (what `kiln cache prune` accepts) is ignored with one warning: strtoull read "lots" or "-1" as 0 MiB
// and emptied the cache at every store.
std::optional<uint64_t> cache_cap_bytes() {
  const char* v = std::getenv("KILN_CACHE_MAX_MB");
  if (!v || !*v) return std::nullopt;
  const std::string_view text(v);
  uint64_t mb = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), mb);
  if (ec == std::errc() && end == text.data() + text.size() && mb <= (uint64_t{1} << 30)) return mb << 20;
  static std::once_flag warned;
  std::call_once(warned, [&] {
    log(LogLevel::warn, "KILN_CACHE_MAX_MB: expected a whole number of MiB in [0, {}], got '{}'; not pruning",
        uint64_t{1} << 30, text);
  });
  return std::nullopt;
}

bool lineinfo_enabled() {
  const char* v = std::getenv("KILN_LINEINFO");
  return v && *v && std::string_view(v) != "0";
}

std::string iso_now() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// SASS through the toolkit's cuobjdump (KILN_DUMP=sass only). None where the toolkit has no cuobjdump (NVRTC-only
// installs): one warning, and no kernel.sass, instead of a kernel.sass holding the error text.
std::optional<std::string> disassemble(const std::string& cubin) {
  namespace fs = std::filesystem;
  fs::path tool = fs::path(cuda_include_dir()) / ".." / "bin" / "cuobjdump";
  if (!fs::exists(tool)) {
    static std::once_flag warned;
    std::call_once(warned, [&] {
      log(LogLevel::warn, "KILN_DUMP=sass: no cuobjdump at {}; kernel.sass is not written",
          tool.lexically_normal().string());
    });
    return std::nullopt;
  }
  fs::path tmp = fs::temp_directory_path() / fmt::format("kiln-sass-{}-{}.cubin", ::getpid(), std::rand());
  std::ofstream(tmp, std::ios::binary) << cubin;
  std::string out;
  if (FILE* p = ::popen(fmt::format("'{}' -sass '{}' 2>&1", tool.string(), tmp.string()).c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    ::pclose(p);
  }
  fs::remove(tmp);
  return out;
}

// Logs what is being compiled if a compile runs past one second (a stuck cluster job then says why).
class SlowCompileWatch {
 public:
  explicit SlowCompileWatch(std::string what) : what_(std::move(what)), thread_([this] { watch(); }) {}
  ~SlowCompileWatch() {
    {
      std::lock_guard g(m_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

 private:
  void watch() {
    std::unique_lock g(m_);
    if (!cv_.wait_for(g, std::chrono::seconds(1), [this] { return done_; }))
      log(LogLevel::warn, "compiling {} (taking more than 1 s)", what_);
  }
  std::string what_;
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace

KeyInputs key_inputs(const Specialization& s) {
  KeyInputs in;
  s.family->render(s, in.source, in.name_expression);
  in.headers_hash = embedded_headers_hash();
  in.toolkit_fingerprint = toolkit_fingerprint();
  in.nvrtc_version = nvrtc_version();
  in.kiln_version = kVersion;
  for (const auto& f : base_compile_flags()) in.flags += f + " ";
  if (lineinfo_enabled()) in.flags += "-lineinfo ";
  return in;
}

std::string disk_key(const Specialization& s, const KeyInputs& in) {
  return hash_hex(fmt::format("{}\n{}\n{}\n{}\n{}\n{}\n{}\nnvrtc {}\nkiln {}\n{}", s.key().hex(), s.family->name,
                              in.name_expression, s.arch.name(), in.source, in.headers_hash, in.toolkit_fingerprint,
                              in.nvrtc_version, in.kiln_version, in.flags));
}

EnsureResult ensure_cubin(const Specialization& s, cache::CubinCache* cache, bool require_prewarmed,
                          Counters& counters) {
  const FamilyDef& fam = *s.family;
  const KeyInputs in = key_inputs(s);
  const std::string& source = in.source;
  const std::string& name_expr = in.name_expression;
  const std::string& flags = in.flags;
  const bool lineinfo = lineinfo_enabled();
  const std::string full_source_hash = hash_hex(source + "\n" + in.headers_hash + "\n" + in.toolkit_fingerprint);

  EnsureResult res;
  res.disk_key = disk_key(s, in);
  const std::string group = s.arch.name() + "/" + fam.name;
  const bool use_cache = cache && cache->enabled();

  auto try_load = [&]() -> bool {
    if (!use_cache) return false;
    cache::CachedEntry e;
    std::string why;
    switch (cache->load(group, res.disk_key, e, &why)) {
      case cache::CubinCache::Lookup::hit:
        res.cubin = std::move(e.cubin);
        res.lowered_name = e.manifest.value("lowered_name", "");
        if (res.lowered_name.empty()) return false;
        return true;
      case cache::CubinCache::Lookup::corrupt:
        log(LogLevel::warn, "cache entry {}/{} is corrupt ({}); removed, rebuilding", group, res.disk_key, why);
        res.status = "rebuilt";
        counters.rebuilt.fetch_add(1);
        return false;
      case cache::CubinCache::Lookup::miss:
        return false;
    }
    return false;
  };

  if (try_load()) {
    counters.disk_hits.fetch_add(1);
    return res;
  }
  if (require_prewarmed)
    throw CacheError(fmt::format(
        "KILN_REQUIRE_PREWARMED is set and {} [{}] for {} is not in the cache (key {}, cache {}); run `kiln prewarm` "
        "for this model and arch first",
        fam.name, s.describe(), s.arch.name(), res.disk_key, use_cache ? cache->root() : "disabled"));

  cache::CubinCache::KeyLock lock;
  if (use_cache) {
    lock = cache->lock(group, res.disk_key);
    if (lock.acquired() && try_load()) {  // another process built it while we waited
      counters.disk_hits.fetch_add(1);
      return res;
    }
  }

  CompileRequest req{source, name_expr, s.arch, lineinfo, dump_wants("ptx")};
  const std::string failed_path = use_cache ? cache->failed_source_path(group, res.disk_key)
                                            : (std::filesystem::temp_directory_path() /
                                               fmt::format("kiln-{}-{}.cu", fam.name, res.disk_key)).string();
  CompileOutput out;
  {
    SlowCompileWatch watch(fmt::format("{} [{}] for {}", fam.name, s.describe(), s.arch.name()));
    out = nvrtc_compile(req, failed_path);
  }
  counters.compiles.fetch_add(1);
  log(LogLevel::info, "compiled {} [{}] for {} in {:.0f} ms ({} bytes)", fam.name, s.describe(), s.arch.name(), out.ms,
      out.cubin.size());
  if (std::string_view(res.status) != "rebuilt") res.status = "compiled";
  res.compile_ms = out.ms;
  res.lowered_name = out.lowered_name;
  res.cubin = std::move(out.cubin);

  if (use_cache) {
    nlohmann::json params = nlohmann::json::object(), config = nlohmann::json::object();
    for (size_t i = 0; i < fam.param_names.size(); ++i) params[fam.param_names[i]] = s.params[i];
    for (size_t i = 0; i < fam.config_names.size(); ++i) config[fam.config_names[i]] = s.config[i];
    nlohmann::json manifest = {
        {"family", fam.name},         {"kernel", fam.kernels.at(s.kernel)},
        {"params", params},           {"config", config},
        {"arch", s.arch.name()},      {"nvrtc_version", nvrtc_version()},
        {"kiln_version", kVersion},   {"flags", flags},
        {"source_xxh3_128", full_source_hash}, {"lowered_name", res.lowered_name},
        {"compile_ms", out.ms},       {"created", iso_now()},
        {"key", res.disk_key},        {"describe", s.describe()}};
    std::vector<std::pair<std::string, std::string>> extras;
    if (dump_wants("source")) extras.emplace_back("source.cu", source);
    if (dump_wants("ptx")) extras.emplace_back("kernel.ptx", out.ptx);
    if (dump_wants("sass"))
      if (std::optional<std::string> sass = disassemble(res.cubin)) extras.emplace_back("kernel.sass", std::move(*sass));
    std::string err;
    if (!cache->store(group, res.disk_key, res.cubin, std::move(manifest), extras, &err) && !err.empty())
      log(LogLevel::warn, "could not store {}/{} in the cache: {}", group, res.disk_key, err);
    if (const std::optional<uint64_t> cap = cache_cap_bytes())
      if (size_t n = cache->prune(*cap)) log(LogLevel::info, "KILN_CACHE_MAX_MB: pruned {} entries", n);
  }
  return res;
}

KernelRegistry::~KernelRegistry() {
  // Modules are unloaded with the context at process exit; unloading here could race a driver shutdown.
}

const Kernel& KernelRegistry::load_slow(const Specialization& s, const Key128& k) {
  std::lock_guard build(build_mutex_);
  {
    std::shared_lock lock(mutex_);
    auto it = map_.find(k);
    if (it != map_.end()) return *it->second;
  }
  EnsureResult r = ensure_cubin(s, cache_, require_prewarmed_, counters_);
  const Driver& d = driver();
  CUmodule mod = nullptr;
  check(d.cuModuleLoadData(&mod, r.cubin.data()), "cuModuleLoadData");
  auto kern = std::make_unique<Kernel>();
  check(d.cuModuleGetFunction(&kern->fn, mod, r.lowered_name.c_str()), "cuModuleGetFunction");
  kern->max_dynamic_smem = s.family->dynamic_smem_bytes ? s.family->dynamic_smem_bytes(s) : 0;
  if (kern->max_dynamic_smem > 0)
    check(d.cuFuncSetAttribute(kern->fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, kern->max_dynamic_smem),
          "cuFuncSetAttribute(max dynamic shared memory)");
  if (s.arch.sm >= 90)
    check(d.cuFuncSetAttribute(kern->fn, CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
          "cuFuncSetAttribute(non-portable cluster size)");
  std::unique_lock lock(mutex_);
  modules_.push_back(mod);
  auto [it, inserted] = map_.emplace(k, std::move(kern));
  return *it->second;
}

}  // namespace kiln::detail
