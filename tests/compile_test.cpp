// Every template compiles (sm_90a for everything a preset needs; the other archs for one of each kernel), and the
// in-memory and on-disk keys change with everything that changes the binary.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "kiln/kiln.hpp"
#include "runtime/cubin_elf.hpp"
#include "runtime/family.hpp"
#include "runtime/nvrtc_compiler.hpp"
#include "runtime/registry.hpp"
#include "test_util.hpp"

namespace kiln::detail {
namespace {

std::vector<Specialization> preset_specs(const std::string& arch) {
  std::vector<Specialization> out;
  std::set<std::string> seen;
  for (const std::string& p : preset_names()) {
    const ModelConfig m = load_model(p);
    for (const FamilyDef* f : families()) {
      if (!f->enumerate) continue;
      std::vector<Specialization> part;
      f->enumerate(m, Arch::parse(arch), part);
      for (auto& s : part)
        if (seen.insert(s.key().hex()).second) out.push_back(s);
    }
  }
  return out;
}

TEST(Compile, EveryPresetSpecializationCompilesForSm90a) {
  Runtime rt(RuntimeOptions{.memory_only = true});  // registers the families
  const auto specs = preset_specs("sm_90a");
  ASSERT_GE(specs.size(), 9u);
  std::set<std::string> kernels;
  Counters counters;
  for (const auto& s : specs) {
    EnsureResult r = ensure_cubin(s, nullptr, false, counters);
    EXPECT_GT(r.cubin.size(), 1000u) << s.family->name << " " << s.describe();
    EXPECT_FALSE(r.lowered_name.empty());
    EXPECT_STREQ(r.status, "compiled");
    kernels.insert(std::string(s.family->name) + "/" + s.family->kernels[s.kernel]);
  }
  // Every kernel of every family is covered by some preset.
  size_t total = 0;
  for (const FamilyDef* f : families())
    if (f->enumerate) total += f->kernels.size();
  EXPECT_EQ(kernels.size(), total);
  EXPECT_EQ(counters.compiles.load(), specs.size());
}

TEST(Compile, FamiliesOutsideModelsCompile) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  Counters counters;
  for (const FamilyDef* f : families()) {
    if (f->enumerate) continue;
    Specialization s;
    s.family = f;
    s.arch = Arch::parse("sm_90a");
    EXPECT_GT(ensure_cubin(s, nullptr, false, counters).cubin.size(), 500u) << f->name;
  }
}

// The l2_flush family's kernel `kernel` (0: the L2 read-flush, 1: the instruction-cache evictor) compiled for sm_90a.
EnsureResult l2_flush_cubin(uint32_t kernel) {
  Counters counters;
  Specialization s;
  s.family = find_family("l2_flush");
  EXPECT_NE(s.family, nullptr);
  EXPECT_EQ(s.family->kernels.size(), 2u);
  s.kernel = kernel;
  s.arch = Arch::parse("sm_90a");
  return ensure_cubin(s, nullptr, false, counters);
}

// The benchmarks' instruction-cache evictor (l2_flush kernel 1, `kiln bench --cold-code`) is as large as it means to
// be: its code is a few times an SM's instruction caches (the cubin holds ≈ 320 KB of SASS; more than 256 KB checked).
TEST(Compile, CodeEvictKernelIsLarge) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  const EnsureResult r = l2_flush_cubin(1);
  EXPECT_GT(r.cubin.size(), 256u * 1024u);
  EXPECT_NE(r.lowered_name.find("code_evict_kernel"), std::string::npos) << r.lowered_name;
  // its SASS alone (the .text section): ≈ 5 instructions of 16 bytes a step
  const uint64_t code = cubin_code_bytes(r.cubin, r.lowered_name);
  EXPECT_GT(code, 256u * 1024u);
  EXPECT_LE(code, r.cubin.size());
}

// cubin_code_bytes reads the kernel's .text section size from the ELF section headers, and 0 for anything else: the
// L2 flush kernel's few hundred bytes, not the evictor's; a wrong name, a truncated or a non-ELF buffer give 0.
TEST(CubinElf, CodeBytesOfAKernel) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  const EnsureResult r = l2_flush_cubin(0);
  const uint64_t code = cubin_code_bytes(r.cubin, r.lowered_name);
  EXPECT_GT(code, 64u);
  EXPECT_LT(code, 8192u);
  EXPECT_EQ(code % 16, 0u);  // whole instructions
  EXPECT_EQ(cubin_code_bytes(r.cubin, r.lowered_name + "x"), 0u);
  EXPECT_EQ(cubin_code_bytes(r.cubin, ""), 0u);
  EXPECT_EQ(cubin_code_bytes(std::string_view(r.cubin).substr(0, 200), r.lowered_name), 0u);
  EXPECT_EQ(cubin_code_bytes("not an ELF object at all, but long enough to pass the size check of the header..",
                             r.lowered_name),
            0u);
  std::string bad = r.cubin;
  bad[0x2f] = '\x7f';  // e_shoff far past the end: no section header can be read
  EXPECT_EQ(cubin_code_bytes(bad, r.lowered_name), 0u);
}

TEST(Compile, OtherArchs) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  Counters counters;
  for (const char* arch : {"sm_80", "sm_89", "sm_100a"}) {
    std::set<std::string> done;
    for (const auto& s : preset_specs(arch)) {
      const std::string k = std::string(s.family->name) + s.family->kernels[s.kernel];
      if (!done.insert(k).second) continue;
      EXPECT_GT(ensure_cubin(s, nullptr, false, counters).cubin.size(), 1000u) << arch << " " << k;
    }
  }
}

TEST(Keys, InMemoryKeyCoversFamilyKernelParamsConfigArch) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  const auto specs = preset_specs("sm_90a");
  std::set<std::string> keys;
  for (const auto& s : specs) keys.insert(s.key().hex());
  EXPECT_EQ(keys.size(), specs.size());
  const Specialization base = specs.front();
  auto differs = [&](auto mutate) {
    Specialization s = base;
    mutate(s);
    return !(s.key() == base.key());
  };
  EXPECT_TRUE(differs([](Specialization& s) { s.arch = Arch::parse("sm_100a"); }));
  EXPECT_TRUE(differs([](Specialization& s) { s.arch = Arch::parse("sm_90"); }));
  EXPECT_TRUE(differs([](Specialization& s) { s.params[0] += 128; }));
  EXPECT_TRUE(differs([](Specialization& s) { s.params[kMaxParams - 1] = 1; }));
  EXPECT_TRUE(differs([](Specialization& s) { s.config[0] += 1; }));
  EXPECT_TRUE(differs([](Specialization& s) { s.kernel += 1; }));
  EXPECT_FALSE(differs([](Specialization&) {}));
}

TEST(Keys, DiskKeyCoversSourceHeadersToolchainVersionFlags) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  const Specialization s = preset_specs("sm_90a").front();
  const KeyInputs in = key_inputs(s);
  const std::string k = disk_key(s, in);
  EXPECT_EQ(k.size(), 32u);
  EXPECT_EQ(k, disk_key(s, key_inputs(s)));  // stable
  auto changed = [&](auto mutate) {
    KeyInputs m = in;
    mutate(m);
    return disk_key(s, m) != k;
  };
  EXPECT_TRUE(changed([](KeyInputs& m) { m.source += " "; }));
  EXPECT_TRUE(changed([](KeyInputs& m) { m.headers_hash[0] ^= 1; }));
  EXPECT_TRUE(changed([](KeyInputs& m) { m.toolkit_fingerprint[0] ^= 1; }));
  EXPECT_TRUE(changed([](KeyInputs& m) { m.nvrtc_version = "99.9"; }));
  EXPECT_TRUE(changed([](KeyInputs& m) { m.kiln_version = "9.9.9"; }));
  EXPECT_TRUE(changed([](KeyInputs& m) { m.flags += "-lineinfo "; }));
  Specialization other = s;
  other.arch = Arch::parse("sm_100a");
  EXPECT_NE(disk_key(other, key_inputs(other)), k);
}

TEST(Keys, LineinfoChangesTheKey) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  const Specialization s = preset_specs("sm_90a").front();
  const std::string plain = disk_key(s, key_inputs(s));
  setenv("KILN_LINEINFO", "1", 1);
  const std::string with = disk_key(s, key_inputs(s));
  unsetenv("KILN_LINEINFO");
  EXPECT_NE(plain, with);
}

TEST(Arch, ParseAndName) {
  EXPECT_EQ(Arch::parse("sm_90a").name(), "sm_90a");
  EXPECT_EQ(Arch::parse("sm_80").name(), "sm_80");
  EXPECT_EQ(Arch::parse("sm_100a").virtual_name(), "compute_100a");
  EXPECT_THROW(Arch::parse("90a"), InvalidArgument);
  EXPECT_THROW(Arch::parse("sm_90x"), InvalidArgument);
  EXPECT_THROW(Arch::parse("sm_"), InvalidArgument);
}

}  // namespace
}  // namespace kiln::detail

namespace kiln::detail {
namespace {

// A template that does not compile raises CompileError carrying NVRTC's log and the rendered source on disk.
TEST(Compile, BrokenTemplateRaisesCompileErrorWithLogAndSource) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  static FamilyDef broken{"broken_for_test", {"k"}, {"N"}, {},
                          [](const Specialization&, std::string& source, std::string& name) {
                            source = "#include \"kiln/common.cuh\"\ntemplate <int N> __global__ void k() { undeclared_x = N; }\n";
                            name = "k<7>";
                          },
                          nullptr, nullptr};
  Specialization s;
  s.family = &broken;
  s.arch = Arch::parse("sm_90a");
  Counters counters;
  try {
    ensure_cubin(s, nullptr, false, counters);
    FAIL() << "expected CompileError";
  } catch (const CompileError& e) {
    EXPECT_NE(e.log().find("undeclared_x"), std::string::npos) << e.log();
    EXPECT_NE(std::string(e.what()).find(e.source_path()), std::string::npos);
    std::ifstream f(e.source_path());
    std::stringstream ss;
    ss << f.rdbuf();
    EXPECT_NE(ss.str().find("undeclared_x = N"), std::string::npos) << e.source_path();
  }
  EXPECT_EQ(counters.compiles.load(), 0u);
}

// KILN_DUMP keeps the rendered source and the PTX next to the cubin.
TEST(Compile, DumpKeepsSourceAndPtxBesideTheCubin) {
  const test::TempDir tmp("kiln-dump-");
  const std::string dir = tmp.str();
  setenv("KILN_DUMP", "ptx,source", 1);
  Runtime rt(RuntimeOptions{.cache_dir = dir});
  const auto entries = rt.prewarm(load_model("ling-mini-2.0"), {"sm_90a"}, 2);
  unsetenv("KILN_DUMP");
  ASSERT_FALSE(entries.empty());
  const auto& e = entries.front();
  const std::string entry = dir + "/sm_90a/" + e.family + "/" + e.key;
  EXPECT_TRUE(std::filesystem::exists(entry + "/cubin"));
  EXPECT_TRUE(std::filesystem::exists(entry + "/source.cu"));
  EXPECT_GT(std::filesystem::file_size(entry + "/kernel.ptx"), 100u);
}

// KILN_DUMP=sass disassembles with the toolkit's cuobjdump; where there is none (NVRTC-only installs) it says so once
// and writes no kernel.sass (it used to write one holding the error text).
TEST(Compile, DumpSassNeedsCuobjdump) {
  const test::TempDir tmp("kiln-dump-sass-");
  setenv("KILN_DUMP", "sass", 1);
  const bool have_tool = std::filesystem::exists(std::filesystem::path(cuda_include_dir()) / ".." / "bin" / "cuobjdump");
  Runtime rt(RuntimeOptions{.cache_dir = tmp.str()});
  ::testing::internal::CaptureStderr();
  const auto entries = rt.prewarm(load_model("ling-mini-2.0"), {"sm_90a"}, 1, nullptr, nullptr, {"batch_reduce"});
  const std::string err = ::testing::internal::GetCapturedStderr();
  unsetenv("KILN_DUMP");
  ASSERT_FALSE(entries.empty());
  for (const auto& e : entries) {
    const std::string sass = tmp.str() + "/sm_90a/" + e.family + "/" + e.key + "/kernel.sass";
    if (have_tool) {
      EXPECT_NE(test::read_file(sass).find("Function"), std::string::npos) << sass;
    } else {
      EXPECT_FALSE(std::filesystem::exists(sass)) << sass;
    }
  }
  if (!have_tool) EXPECT_NE(err.find("no cuobjdump"), std::string::npos) << err;
}

// KILN_CACHE_MAX_MB prunes the cache after each store: 0 MiB keeps nothing. A malformed value is ignored (with a
// warning), never read as 0 MiB (which emptied the cache at every store).
TEST(Compile, CacheCapFromTheEnvironment) {
  const test::TempDir tmp("kiln-cap-");
  static FamilyDef tiny{"tiny_for_test", {"k"}, {"N"}, {},
                        [](const Specialization& s, std::string& source, std::string& name) {
                          source = "template <int N> __global__ void k(int* p) { *p = N; }\n";
                          name = "k<" + std::to_string(s.params[0]) + ">";
                        },
                        nullptr, nullptr};
  cache::CubinCache cache(tmp.str());
  ASSERT_TRUE(cache.enabled());
  Counters counters;
  Specialization s;
  s.family = &tiny;
  s.arch = Arch::parse("sm_90a");
  const char* old = std::getenv("KILN_CACHE_MAX_MB");
  const std::string saved = old ? old : "";
  for (const char* bad : {"lots", "-1", "2G", "99999999999"}) {
    setenv("KILN_CACHE_MAX_MB", bad, 1);
    ++s.params[0];
    EXPECT_STREQ(ensure_cubin(s, &cache, false, counters).status, "compiled");
    EXPECT_EQ(cache.list().size(), static_cast<size_t>(s.params[0])) << "KILN_CACHE_MAX_MB=" << bad;
  }
  setenv("KILN_CACHE_MAX_MB", "0", 1);
  ++s.params[0];
  ensure_cubin(s, &cache, false, counters);
  EXPECT_EQ(cache.list().size(), 0u);
  if (old) setenv("KILN_CACHE_MAX_MB", saved.c_str(), 1);
  else unsetenv("KILN_CACHE_MAX_MB");
}

}  // namespace
}  // namespace kiln::detail

namespace kiln::detail {
namespace {

// Every specialization a preset needs has a search space holding its heuristic default, with distinct points.
TEST(SearchSpace, HoldsTheDefaultAndDistinctPoints) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  for (const char* arch : {"sm_90a", "sm_80"})
    for (const Specialization& s : preset_specs(arch)) {
      if (!s.family->search_space) continue;
      std::vector<Specialization> space;
      s.family->search_space(s, space);
      ASSERT_FALSE(space.empty()) << s.family->name << " " << s.describe();
      EXPECT_TRUE(in_search_space(s)) << "default not in its space: " << s.family->name << " " << s.describe();
      std::set<std::string> keys;
      for (const auto& c : space) EXPECT_TRUE(keys.insert(c.key().hex()).second) << c.describe();
    }
}

// Pruning: mode 2 never implies a cluster above 16 CTAs (and none before sm_90); the backward's tile must fit.
TEST(SearchSpace, PrunesInvalidPoints) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  const FamilyDef* q = find_family("rms_norm_block_quant");
  Specialization s;
  s.family = q;
  s.kernel = 1;  // tile
  s.params = {7168, 2, 1, 0};
  s.arch = Arch::parse("sm_90a");
  std::vector<Specialization> space;
  q->search_space(s, space);
  std::set<int> cbs;
  for (const auto& c : space)
    // (exchange 3: the stream kernel's GLOBAL walk, no clusters; 5, 6: the tile and tile512 kernels' clusters of 8
    // through global memory)
    if (c.config[5] < 3) cbs.insert(c.config[1]);
  EXPECT_EQ(cbs, (std::set<int>{4, 7, 8, 14, 28, 56}));  // the divisors of 56 with 56/cb ≤ 16
  space.clear();
  s.arch = Arch::parse("sm_80");
  q->search_space(s, space);
  ASSERT_EQ(space.size(), 1u);
  EXPECT_EQ(space[0].config[1], 56);  // no clusters: one CTA per 128-token tile

  const FamilyDef* n = find_family("rms_norm");
  Specialization b;
  b.family = n;
  b.kernel = 1;  // bwd
  b.params = {16384, static_cast<int64_t>(DType::f32), static_cast<int64_t>(DType::f32), 2};
  b.arch = Arch::parse("sm_90a");
  space.clear();
  n->search_space(b, space);
  for (const auto& c : space) EXPECT_LE(c.config[1] * 2 * 16384 * 4, 227 * 1024) << c.describe();
  EXPECT_FALSE(space.empty());
}

// rms_norm_block_quant's heuristic default is a point of its own space at every hidden size it accepts (N a
// multiple of 128 up to 8192), in every mode, with and without clusters.
TEST(SearchSpace, RmsNormBlockQuantDefaultsAtEveryN) {
  const FamilyDef* q = find_family("rms_norm_block_quant");
  ASSERT_NE(q, nullptr);
  for (const char* arch : {"sm_90a", "sm_80"})
    for (int N = 128; N <= 8192; N += 128) {
      ModelConfig m;
      m.hidden_size = N;
      std::vector<Specialization> specs;
      q->enumerate(m, Arch::parse(arch), specs);
      ASSERT_EQ(specs.size(), 6u) << N;
      for (const Specialization& s : specs) EXPECT_TRUE(in_search_space(s)) << arch << " " << s.describe();
    }
}

// Every point of the N = 2048 spaces compiles (what the tuner would try).
TEST(SearchSpace, EveryPointCompiles) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  const ModelConfig m = load_model("ling-mini-2.0");
  Counters counters;
  size_t points = 0;
  for (const FamilyDef* f : families()) {
    if (!f->enumerate || !f->search_space) continue;
    std::vector<Specialization> specs;
    f->enumerate(m, Arch::parse("sm_90a"), specs);
    std::set<std::string> seen;
    for (const Specialization& s : specs) {
      if (s.params[2] != 1 && std::string(f->name) == "rms_norm_block_quant") continue;  // round_scale = 1 only
      std::vector<Specialization> space;
      f->search_space(s, space);
      for (const auto& c : space)
        if (seen.insert(c.key().hex()).second) {
          EXPECT_GT(ensure_cubin(c, nullptr, false, counters).cubin.size(), 1000u) << f->name << " " << c.describe();
          ++points;
        }
    }
  }
  EXPECT_GT(points, 20u);
}

}  // namespace
}  // namespace kiln::detail
