// The `kiln` command line, run as a child process: exit codes, messages, and JSON output.
//
// CliPrewarm.* compile real kernels with NVRTC (no GPU needed) and take a while; every other test is instant.
#include <gtest/gtest.h>
#include <spawn.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "test_util.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace kiln::test;  // run_kiln, CliResult, TempDir, read_file, contains

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// ---- usage, help, version ----------------------------------------------------------------------------------------

TEST(Cli, NoArgumentsIsBadUsage) {
  const CliResult r = run_kiln({});
  EXPECT_EQ(r.rc, 2) << r;
  EXPECT_TRUE(contains(r.err, "kiln: error:")) << r;
  EXPECT_TRUE(contains(r.err, "usage: kiln")) << r;
  EXPECT_TRUE(r.out.empty()) << r;
}

TEST(Cli, UnknownCommandIsBadUsage) {
  const CliResult r = run_kiln({"frobnicate"});
  EXPECT_EQ(r.rc, 2) << r;
  EXPECT_TRUE(contains(r.err, "kiln: error: unknown command 'frobnicate'")) << r;
}

TEST(Cli, UnknownOptionIsBadUsage) {
  const CliResult r = run_kiln({"presets", "--frobnicate"});
  EXPECT_EQ(r.rc, 2) << r;
  EXPECT_TRUE(contains(r.err, "--frobnicate")) << r;
}

TEST(Cli, MissingOptionValueIsBadUsage) {
  CliResult r = run_kiln({"prewarm", "--arch", "sm_90a", "--model"});
  EXPECT_EQ(r.rc, 2) << r;
  EXPECT_TRUE(contains(r.err, "--model")) << r;

  // An option where a value should be is a missing value, not a value.
  r = run_kiln({"prewarm", "--model", "--arch", "sm_90a"});
  EXPECT_EQ(r.rc, 2) << r;
}

TEST(Cli, HelpAndVersion) {
  for (const char* help : {"help", "--help", "-h"}) {
    const CliResult r = run_kiln({help});
    EXPECT_EQ(r.rc, 0) << help << "\n" << r;
    EXPECT_TRUE(contains(r.out, "usage: kiln")) << r;
    EXPECT_TRUE(contains(r.out, "prewarm")) << r;
  }
  const CliResult r = run_kiln({"--version"});
  EXPECT_EQ(r.rc, 0) << r;
  EXPECT_TRUE(contains(r.out, "kiln 0.")) << r;
}

// ---- presets -----------------------------------------------------------------------------------------------------

TEST(Cli, PresetsListsNamesAndDims) {
  const CliResult r = run_kiln({"presets"});
  EXPECT_EQ(r.rc, 0) << r;
  for (const char* name : {"ling-mini-2.0", "deepseek-v3", "qwen3-30b-a3b"}) EXPECT_TRUE(contains(r.out, name)) << r;
  EXPECT_TRUE(contains(r.out, "157184")) << r;  // ling-mini-2.0's vocabulary
  EXPECT_TRUE(contains(r.out, "7168")) << r;    // deepseek-v3's hidden size
}

TEST(Cli, PresetsJson) {
  const CliResult r = run_kiln({"presets", "--json"});
  ASSERT_EQ(r.rc, 0) << r;
  const json presets = json::parse(r.out);
  ASSERT_TRUE(presets.is_array());
  std::set<std::string> names;
  for (const json& p : presets) {
    names.insert(p.at("name").get<std::string>());
    EXPECT_GT(p.at("hidden_size").get<int>(), 0);
  }
  EXPECT_TRUE(names.count("qwen3-30b-a3b"));
}

// ---- cache -------------------------------------------------------------------------------------------------------

TEST(Cli, CacheStatsOnAnEmptyDirectory) {
  const TempDir dir;
  CliResult r = run_kiln({"cache", "stats", "--cache-dir", dir.str()});
  EXPECT_EQ(r.rc, 0) << r;
  EXPECT_TRUE(contains(r.out, "0 entries")) << r;

  r = run_kiln({"cache", "stats", "--cache-dir", dir.str(), "--json"});
  ASSERT_EQ(r.rc, 0) << r;
  const json stats = json::parse(r.out);
  EXPECT_EQ(stats.at("entries"), 0);
  EXPECT_EQ(stats.at("bytes"), 0);
}

TEST(Cli, CacheCommandsOnAnEmptyDirectory) {
  const TempDir dir;
  for (const char* sub : {"ls", "verify", "clear"}) {
    const CliResult r = run_kiln({"cache", sub, "--cache-dir", dir.str()});
    EXPECT_EQ(r.rc, 0) << sub << "\n" << r;
  }
  const CliResult r = run_kiln({"cache", "ls", "--cache-dir", dir.str(), "--json"});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_EQ(json::parse(r.out), json::array());
}

// A cache that does not exist holds no entries, and the maintenance commands do not create it (a mistyped
// --cache-dir used to leave the directory behind).
TEST(Cli, CacheCommandsOnAMissingDirectory) {
  const TempDir dir;
  const fs::path missing = dir.path() / "no" / "such" / "cache";
  for (std::vector<std::string> cmd : {std::vector<std::string>{"ls"}, {"stats"}, {"verify"}, {"verify", "--remove"},
                                       {"prune", "--max-mb", "0"}, {"clear"}}) {
    const std::string sub = cmd[0];
    cmd.insert(cmd.begin(), "cache");
    for (const char* extra : {"--cache-dir", missing.c_str(), "--json"}) cmd.push_back(extra);
    const CliResult r = run_kiln(cmd);
    EXPECT_EQ(r.rc, 0) << sub << "\n" << r;
    EXPECT_TRUE(contains(r.err, "does not exist")) << sub << "\n" << r;
    EXPECT_TRUE(json::accept(r.out)) << sub << "\n" << r;
    EXPECT_FALSE(fs::exists(dir.path() / "no")) << sub << " created the cache directory";
  }
}

TEST(Cli, CacheDirDefaultsToTheEnvironment) {
  const TempDir dir;
  const CliResult r = run_kiln({"cache", "stats", "--json"}, {{"KILN_CACHE_DIR", dir.str()}});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_EQ(json::parse(r.out).at("root"), dir.str());
}

TEST(Cli, CachePruneNeedsALimit) {
  const TempDir dir;
  CliResult r = run_kiln({"cache", "prune", "--cache-dir", dir.str()});
  EXPECT_EQ(r.rc, 2) << r;
  EXPECT_TRUE(contains(r.err, "--max-mb")) << r;

  r = run_kiln({"cache", "prune", "--cache-dir", dir.str(), "--max-mb", "lots"});
  EXPECT_EQ(r.rc, 2) << r;

  r = run_kiln({"cache", "prune", "--cache-dir", dir.str(), "--max-mb", "100"});
  EXPECT_EQ(r.rc, 0) << r;

  r = run_kiln({"cache", "prune", "--cache-dir", dir.str()}, {{"KILN_CACHE_MAX_MB", "100"}});
  EXPECT_EQ(r.rc, 0) << r;
}

TEST(Cli, CacheSubcommandErrors) {
  EXPECT_EQ(run_kiln({"cache"}).rc, 2);
  EXPECT_EQ(run_kiln({"cache", "explode"}).rc, 2);
  EXPECT_EQ(run_kiln({"cache", "ls", "--max-mb", "10"}).rc, 2);  // --max-mb belongs to prune
}

// ---- bench -------------------------------------------------------------------------------------------------------

TEST(Cli, BenchWithoutADriverFails) {
  if (kiln::detail::driver_available()) GTEST_SKIP() << "a CUDA driver and GPU are present";
  const CliResult r = run_kiln({"bench"});
  EXPECT_EQ(r.rc, 1) << r;
  EXPECT_TRUE(contains(r.err, "kiln: error:")) << r;
  EXPECT_TRUE(contains(lower(r.err), "driver")) << r;
}

// --cold-code is a flag of bench: accepted (the run then fails on the missing driver, not on the usage), and it takes
// no value.
TEST(Cli, BenchColdCodeIsAFlag) {
  if (kiln::detail::driver_available()) GTEST_SKIP() << "a CUDA driver and GPU are present";
  const CliResult r = run_kiln({"bench", "--cold-code", "--filter", "nothing"});
  EXPECT_EQ(r.rc, 1) << r;
  EXPECT_TRUE(contains(lower(r.err), "driver")) << r;
  EXPECT_EQ(run_kiln({"bench", "--cold-code=1"}).rc, 2);
  EXPECT_EQ(run_kiln({"bench", "--cold"}).rc, 2);
}

TEST(Cli, BenchBadRepeatsIsBadUsage) {
  EXPECT_EQ(run_kiln({"bench", "--repeats", "0"}).rc, 2);
  EXPECT_EQ(run_kiln({"bench", "--repeats", "ten"}).rc, 2);
}

// ---- prewarm: argument errors ------------------------------------------------------------------------------------

TEST(Cli, PrewarmUnknownModel) {
  const TempDir dir;
  const CliResult r = run_kiln({"prewarm", "--model", "no-such-model", "--arch", "sm_90a", "--cache-dir", dir.str()});
  EXPECT_TRUE(r.rc == 1 || r.rc == 2) << r;
  EXPECT_TRUE(contains(r.err, "no-such-model")) << r;
  EXPECT_TRUE(contains(r.err, "ling-mini-2.0")) << r;  // the message lists the presets
}

TEST(Cli, PrewarmNeedsModelAndArch) {
  EXPECT_EQ(run_kiln({"prewarm", "--arch", "sm_90a"}).rc, 2);
  EXPECT_EQ(run_kiln({"prewarm", "--model", "ling-mini-2.0"}).rc, 2);
  EXPECT_EQ(run_kiln({"prewarm", "--model", "ling-mini-2.0", "--arch", ","}).rc, 2);
  EXPECT_EQ(run_kiln({"prewarm", "--model", "ling-mini-2.0", "--arch", "sm_90a", "--jobs", "-1"}).rc, 2);
}

TEST(Cli, PrewarmBadArchFails) {
  const TempDir dir;
  const CliResult r = run_kiln({"prewarm", "--model", "ling-mini-2.0", "--arch", "gfx942", "--cache-dir", dir.str()});
  EXPECT_EQ(r.rc, 1) << r;
  EXPECT_TRUE(contains(r.err, "gfx942")) << r;
}

// ---- prewarm end to end (NVRTC, no GPU) --------------------------------------------------------------------------

json prewarm_json(const std::string& cache_dir, const std::string& archs) {
  const CliResult r =
      run_kiln({"prewarm", "--model", "ling-mini-2.0", "--arch", archs, "--cache-dir", cache_dir, "--json"});
  EXPECT_EQ(r.rc, 0) << r;
  // --json prints exactly one JSON document on stdout: parse() rejects anything around it.
  json j;
  EXPECT_NO_THROW(j = json::parse(r.out)) << r;
  return j;
}

size_t count_status(const json& report, const std::string& status) {
  size_t n = 0;
  for (const json& e : report.at("entries")) n += e.at("status") == status;
  return n;
}

TEST(CliPrewarm, SecondRunIsAllHits) {
  const TempDir dir;
  const json first = prewarm_json(dir.str(), "sm_90a");
  ASSERT_TRUE(first.is_object());
  const json& entries = first.at("entries");
  ASSERT_FALSE(entries.empty());
  std::set<std::string> keys;
  for (const json& e : entries) {
    EXPECT_EQ(e.at("status"), "compiled") << e;
    EXPECT_EQ(e.at("arch"), "sm_90a") << e;
    EXPECT_FALSE(e.at("family").get<std::string>().empty()) << e;
    EXPECT_EQ(e.at("key").get<std::string>().size(), 32u) << e;
    EXPECT_GT(e.at("cubin_bytes").get<uint64_t>(), 0u) << e;
    // the kernel's SASS: read from the cubin's .text section, inside the cubin
    EXPECT_GT(e.at("code_bytes").get<uint64_t>(), 0u) << e;
    EXPECT_LT(e.at("code_bytes").get<uint64_t>(), e.at("cubin_bytes").get<uint64_t>()) << e;
    EXPECT_GT(e.at("compile_ms").get<double>(), 0.0) << e;
    keys.insert(e.at("key").get<std::string>());
  }
  const json& summary = first.at("summary");
  EXPECT_EQ(summary.at("model"), "ling-mini-2.0");
  EXPECT_EQ(summary.at("archs"), json::array({"sm_90a"}));
  EXPECT_EQ(summary.at("total"), entries.size());
  EXPECT_EQ(summary.at("compiled"), entries.size());
  EXPECT_EQ(summary.at("hits"), 0);
  EXPECT_EQ(summary.at("rebuilt"), 0);
  EXPECT_EQ(summary.at("cache_dir"), dir.str());

  const json second = prewarm_json(dir.str(), "sm_90a");
  EXPECT_EQ(count_status(second, "hit"), entries.size());
  EXPECT_EQ(second.at("summary").at("hits"), entries.size());
  EXPECT_EQ(second.at("summary").at("compiled"), 0);
  std::set<std::string> second_keys;
  for (const json& e : second.at("entries")) second_keys.insert(e.at("key").get<std::string>());
  EXPECT_EQ(second_keys, keys);

  // The cache tools see what prewarm stored.
  CliResult r = run_kiln({"cache", "stats", "--cache-dir", dir.str(), "--json"});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_EQ(json::parse(r.out).at("entries"), entries.size());
  r = run_kiln({"cache", "ls", "--cache-dir", dir.str()});
  EXPECT_EQ(r.rc, 0) << r;
  EXPECT_TRUE(contains(r.out, entries[0].at("key").get<std::string>())) << r;
  r = run_kiln({"cache", "verify", "--cache-dir", dir.str()});
  EXPECT_EQ(r.rc, 0) << r;
}

TEST(CliPrewarm, TableAndSummaryLine) {
  const TempDir dir;
  const CliResult r = run_kiln({"prewarm", "--model", "ling-mini-2.0", "--arch", "sm_90a", "--cache-dir", dir.str()});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_TRUE(contains(r.out, "family")) << r;
  EXPECT_TRUE(contains(r.out, "prewarm ling-mini-2.0: ")) << r;
  EXPECT_TRUE(contains(r.out, "specializations for sm_90a")) << r;
  EXPECT_TRUE(contains(r.out, "0 hits")) << r;
  EXPECT_TRUE(contains(r.out, "(cache: " + dir.str() + ")")) << r;
  EXPECT_FALSE(contains(r.err, "\r")) << "no progress bar when stderr is not a terminal\n" << r;
}

TEST(CliPrewarm, SeveralArchs) {
  const TempDir dir;
  const json report = prewarm_json(dir.str(), "sm_90a,sm_100a");
  ASSERT_TRUE(report.is_object());
  std::set<std::string> archs;
  for (const json& e : report.at("entries")) archs.insert(e.at("arch").get<std::string>());
  EXPECT_EQ(archs, (std::set<std::string>{"sm_90a", "sm_100a"}));
  EXPECT_EQ(report.at("summary").at("archs"), json::array({"sm_90a", "sm_100a"}));
}

TEST(CliPrewarm, CorruptEntriesAreRebuiltAndVerifyFindsThem) {
  const TempDir dir;
  const json first = prewarm_json(dir.str(), "sm_90a");
  ASSERT_TRUE(first.is_object());
  const size_t total = first.at("entries").size();
  ASSERT_GT(total, 0u);

  std::vector<fs::path> cubins;
  for (const auto& f : fs::recursive_directory_iterator(dir.path()))
    if (f.is_regular_file() && f.path().filename() == "cubin") cubins.push_back(f.path());
  ASSERT_EQ(cubins.size(), total);
  auto corrupt = [](const fs::path& p) {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(16);
    f.put('\x5a').put('\xa5');
  };

  // prewarm repairs a corrupt entry by itself.
  corrupt(cubins[0]);
  const json second = prewarm_json(dir.str(), "sm_90a");
  EXPECT_EQ(count_status(second, "rebuilt"), 1u) << second.dump(2);
  EXPECT_EQ(count_status(second, "hit"), total - 1) << second.dump(2);

  // verify reports one, --remove deletes it, and the cache is clean again.
  corrupt(cubins[0]);
  CliResult r = run_kiln({"cache", "verify", "--cache-dir", dir.str()});
  EXPECT_EQ(r.rc, 1) << r;
  EXPECT_TRUE(contains(r.out, "1 bad")) << r;
  r = run_kiln({"cache", "verify", "--cache-dir", dir.str(), "--remove", "--json"});
  EXPECT_EQ(r.rc, 1) << r;
  EXPECT_EQ(json::parse(r.out).at("bad").size(), 1u) << r;
  r = run_kiln({"cache", "verify", "--cache-dir", dir.str()});
  EXPECT_EQ(r.rc, 0) << r;

  // clear empties it.
  r = run_kiln({"cache", "clear", "--cache-dir", dir.str(), "--json"});
  EXPECT_EQ(r.rc, 0) << r;
  EXPECT_EQ(json::parse(r.out).at("removed"), total - 1);
  r = run_kiln({"cache", "stats", "--cache-dir", dir.str(), "--json"});
  EXPECT_EQ(json::parse(r.out).at("entries"), 0) << r;
}

}  // namespace

namespace {

// Eight processes prewarm the same preset into one empty cache at once: the per-key locks make each entry compile
// exactly once across all of them, and the cache verifies clean afterwards.
TEST(CliPrewarm, EightConcurrentProcessesCompileEachEntryOnce) {
  const TempDir dir;
  std::vector<CliResult> results(8);
  std::vector<std::thread> procs;
  for (auto& r : results)
    procs.emplace_back([&r, &dir] {
      r = run_kiln({"prewarm", "--model", "ling-mini-2.0", "--arch", "sm_90a", "--cache-dir", dir.str(), "--json",
                    "--jobs", "1"});
    });
  for (auto& t : procs) t.join();
  std::map<std::string, int> compiled;  // key → processes that compiled it
  size_t total = 0;
  for (const CliResult& r : results) {
    ASSERT_EQ(r.rc, 0) << r;
    const json j = json::parse(r.out);
    total = j.at("entries").size();
    for (const json& e : j.at("entries")) {
      EXPECT_NE(e.at("status"), "rebuilt") << e;  // nobody ever saw a half-written entry
      if (e.at("status") == "compiled") ++compiled[e.at("key").get<std::string>()];
    }
  }
  ASSERT_GT(total, 0u);
  EXPECT_EQ(compiled.size(), total);  // every entry was compiled by someone…
  for (const auto& [key, n] : compiled) EXPECT_EQ(n, 1) << key;  // …and by exactly one process
  const CliResult v = run_kiln({"cache", "verify", "--cache-dir", dir.str(), "--json"});
  EXPECT_EQ(v.rc, 0) << v;
  const CliResult st = run_kiln({"cache", "stats", "--cache-dir", dir.str(), "--json"});
  EXPECT_EQ(json::parse(st.out).at("entries"), total) << st;
}

// The key hashes content, never paths: a cache copied elsewhere (another node, a moved install) still hits.
TEST(CliPrewarm, CopiedCacheStillHits) {
  const TempDir a, b;
  const json first = prewarm_json(a.str(), "sm_90a");
  fs::copy(a.path(), b.path() / "copy", fs::copy_options::recursive);
  const json second = prewarm_json((b.path() / "copy").string(), "sm_90a");
  EXPECT_EQ(count_status(second, "hit"), first.at("entries").size());
}

}  // namespace

// `kiln bench --filter`: substrings, '|' alternatives, and a trailing '$' that anchors a term at the name's end.
TEST(BenchFilter, SubstringsAlternativesAndAnchoredEnds) {
  using kiln::detail::bench_filter_matches;
  const std::string base = "group_rms_norm_gate_bwd B=2 S=4096 dim=2048 G=4 bf16 transpose=1";
  const std::string variant = base + " rows=3 warps=8";
  EXPECT_TRUE(bench_filter_matches("", variant));
  EXPECT_TRUE(bench_filter_matches("gate_bwd", variant));
  EXPECT_TRUE(bench_filter_matches("nothing|gate_bwd", base));
  EXPECT_FALSE(bench_filter_matches("nothing|else", base));
  EXPECT_TRUE(bench_filter_matches("transpose=1$", base));
  EXPECT_FALSE(bench_filter_matches("transpose=1$", variant));
  EXPECT_TRUE(bench_filter_matches("x|" + base + "$", base));
  EXPECT_FALSE(bench_filter_matches(base + "$", variant));
  EXPECT_TRUE(bench_filter_matches("warps=8$", variant));
  EXPECT_FALSE(bench_filter_matches("$|", base));  // empty terms match nothing
  EXPECT_FALSE(bench_filter_matches("|", base));
}
