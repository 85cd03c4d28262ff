// Tuned configs at op time (CPU, no GPU needed): the lookup table's precedence (GPU tier, bucket, nearest bucket,
// heuristic fallback), what Runtime::Impl::tuned returns for the ops' specializations with KILN_TUNING_DB files,
// the tuner's forced-config override, strict loading at Runtime start, the autotune DB writer under concurrent
// processes, the tuner's output comparison and choice rules, a structure-aware fuzz of the tuning file parser, and
// a simulated cluster start (8 processes, imported database, prewarmed cache: zero compiles, zero tunes).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kiln/errors.hpp"
#include "kiln/model.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"
#include "tuner/tuner.hpp"
#include "tuner/tuning_db.hpp"
#include "tuner/tuning_table.hpp"

namespace {

namespace fs = std::filesystem;
using kiln::detail::Specialization;
using kiln::test::CliResult;
using kiln::test::contains;
using kiln::test::run_kiln;
using kiln::test::TempDir;
using nlohmann::json;
using namespace kiln::tuner;

// The ling-mini-2.0 specialization of a family's kernel (for `mode` ≥ 0: that rms_norm_block_quant mode with
// round_scale 1), as prewarm enumerates it for sm_90a: the exact spec the op builds, with its heuristic config.
Specialization ling(const char* family, const char* kernel, int mode = -1, const char* arch = "sm_90a") {
  const kiln::detail::FamilyDef* f = kiln::detail::find_family(family);
  std::vector<Specialization> specs;
  f->enumerate(kiln::load_model("ling-mini-2.0"), kiln::detail::Arch::parse(arch), specs);
  for (const Specialization& s : specs)
    if (std::string(f->kernels.at(s.kernel)) == kernel && (mode < 0 || (s.params[1] == mode && s.params[2] == 1)))
      return s;
  throw std::logic_error("no such specialization");
}

// A config of `s`'s search space other than its heuristic default (the `nth` such).
Specialization other_config(const Specialization& s, size_t nth = 0) {
  std::vector<Specialization> space;
  s.family->search_space(s, space);
  for (const Specialization& c : space)
    if (c.config != s.config && nth-- == 0) return c;
  throw std::logic_error("search space has no other config");
}

TuningEntry entry_for(const Specialization& s, uint64_t tokens, double median_us, const std::string& gpu = "H100",
                      int64_t sm_count = 132) {
  TuningEntry e = kiln::tuner::to_entry(s, tokens);
  e.median_us = median_us;
  e.default_us = median_us * 1.2;
  e.provenance = {gpu, sm_count, "13.0", "13.0", "13.0", "0.1.0", "2026-11-26T00:00:00Z", "node-1"};
  return e;
}

std::string save(const fs::path& path, std::vector<TuningEntry> entries) {
  TuningDb db{std::move(entries)};
  db.sort_entries();
  db.save(path.string());
  return path.string();
}

TableEntry table_entry(const Specialization& s, uint64_t bucket, double us, const std::string& gpu, int64_t sms,
                       size_t order = 0) {
  TableEntry t;
  t.spec = s;
  t.bucket = bucket;
  t.median_us = us;
  t.provenance.gpu = gpu;
  t.provenance.sm_count = sms;
  t.order = order;
  t.source = fmt::format("file{}", order);
  return t;
}

int32_t picked(const TuningTable& t, const Specialization& s, int64_t tokens, bool* exact = nullptr) {
  const TuningTable::Hit h = t.find(shape_key(s), bucket_log2(tokens));
  if (exact) *exact = h.exact;
  return h.config ? (*h.config)[0] : -1;
}

kiln::RuntimeOptions cpu_options(const std::string& tuning_db) {
  kiln::RuntimeOptions o;
  o.arch = "sm_90a";  // no device needed to build specializations
  o.memory_only = true;
  o.read_env = false;
  o.tuning_db = tuning_db;
  return o;
}

// ---- the lookup table --------------------------------------------------------------------------------------------

TEST(TuningTable, BucketLog2MatchesTokenBucket) {
  for (int64_t m : {int64_t{-3}, int64_t{0}, int64_t{1}, int64_t{2}, int64_t{3}, int64_t{4}, int64_t{1000},
                    int64_t{1024}, int64_t{1025}, int64_t{1} << 40, (int64_t{1} << 40) + 1})
    EXPECT_EQ(uint64_t{1} << bucket_log2(m), token_bucket(m)) << m;
}

// A config measured on this GPU model wins over a faster one measured on another; name beats SM count; with no GPU
// known, the faster wins.
TEST(TuningTable, SameGpuIsPreferredOverFasterEntriesFromOthers) {
  const Specialization fwd = ling("rms_norm", "fwd");
  Specialization a = fwd, b = fwd, c = fwd;
  a.config[0] = 2;
  b.config[0] = 4;
  c.config[0] = 16;
  const std::vector<TableEntry> entries = {table_entry(a, 1024, 20, "NVIDIA H100 80GB HBM3", 132),
                                           table_entry(b, 1024, 10, "NVIDIA H100 PCIe", 114),
                                           table_entry(c, 1024, 15, "NVIDIA H100 NVL", 132)};
  EXPECT_EQ(picked(TuningTable(entries, {"NVIDIA H100 80GB HBM3", 132}), fwd, 1024), 2);
  EXPECT_EQ(picked(TuningTable(entries, {"NVIDIA H100 PCIe", 114}), fwd, 1024), 4);
  EXPECT_EQ(picked(TuningTable(entries, {"NVIDIA H100 NVL", 132}), fwd, 1024), 16);
  EXPECT_EQ(picked(TuningTable(entries, {"NVIDIA H100 80GB HBM3", 100}), fwd, 1024), 2);  // name only (tier 2)
  EXPECT_EQ(picked(TuningTable(entries, {"Some other GPU", 132}), fwd, 1024), 16);  // SM count only: a (20) vs c (15)
  EXPECT_EQ(picked(TuningTable(entries, {"NVIDIA A100", 108}), fwd, 1024), 4);      // nothing matches: the fastest
  EXPECT_EQ(picked(TuningTable(entries, {}), fwd, 1024), 4);                        // no GPU known: the fastest
}

// The tier is chosen per specialization: this GPU's entry at another bucket beats another GPU's at this bucket.
TEST(TuningTable, TierBeforeBucket) {
  const Specialization fwd = ling("rms_norm", "fwd");
  Specialization a = fwd, b = fwd;
  a.config[0] = 2;
  b.config[0] = 4;
  const TuningTable t({table_entry(a, 8192, 20, "H100", 132), table_entry(b, 1024, 10, "A100", 108)}, {"H100", 132});
  bool exact = true;
  EXPECT_EQ(picked(t, fwd, 1000, &exact), 2);
  EXPECT_FALSE(exact);
  EXPECT_EQ(picked(t, fwd, 8000, &exact), 2);
  EXPECT_TRUE(exact);
}

TEST(TuningTable, SameTierSameBucketLowerMedianThenEarlierFile) {
  const Specialization fwd = ling("rms_norm", "fwd");
  Specialization a = fwd, b = fwd, c = fwd;
  a.config[0] = 2;
  b.config[0] = 4;
  c.config[0] = 16;
  EXPECT_EQ(picked(TuningTable({table_entry(a, 64, 12, "H100", 132, 0), table_entry(b, 64, 11, "H100", 132, 1)},
                               {"H100", 132}),
                   fwd, 64),
            4);
  EXPECT_EQ(picked(TuningTable({table_entry(c, 64, 11, "H100", 132, 1), table_entry(a, 64, 11, "H100", 132, 0)},
                               {"H100", 132}),
                   fwd, 64),
            2);
}

// Buckets with no entry take the nearest tuned bucket (in powers of two), the larger on a tie.
TEST(TuningTable, NearestBucket) {
  const Specialization fwd = ling("rms_norm", "fwd");
  Specialization a = fwd, b = fwd;
  a.config[0] = 2;
  b.config[0] = 16;
  const TuningTable t({table_entry(a, 1024, 10, "H100", 132), table_entry(b, 4096, 20, "H100", 132)}, {});
  bool exact = false;
  EXPECT_EQ(picked(t, fwd, 1024, &exact), 2);
  EXPECT_TRUE(exact);
  EXPECT_EQ(picked(t, fwd, 513, &exact), 2);  // bucket 1024
  EXPECT_TRUE(exact);
  EXPECT_EQ(picked(t, fwd, 3000, &exact), 16);  // bucket 4096
  EXPECT_TRUE(exact);
  EXPECT_EQ(picked(t, fwd, 2048, &exact), 16);  // 2^11: one step from both, the larger wins
  EXPECT_FALSE(exact);
  EXPECT_EQ(picked(t, fwd, 1, &exact), 2);
  EXPECT_FALSE(exact);
  EXPECT_EQ(picked(t, fwd, int64_t{1} << 30, &exact), 16);
  EXPECT_EQ(picked(t, fwd, 600, &exact), 2);  // bucket 1024
}

TEST(TuningTable, OtherArchOrShapeIsNotFound) {
  const Specialization fwd = ling("rms_norm", "fwd");
  Specialization a = fwd;
  a.config[0] = 2;
  const TuningTable t({table_entry(a, 1024, 10, "H100", 132)}, {});
  EXPECT_EQ(picked(t, ling("rms_norm", "fwd", -1, "sm_100a"), 1024), -1);
  Specialization wider = fwd;
  wider.params[0] = 4096;
  EXPECT_EQ(picked(t, wider, 1024), -1);
  EXPECT_EQ(picked(t, ling("rms_norm", "bwd"), 1024), -1);
  EXPECT_EQ(t.specializations(), 1u);
}

// ---- Runtime::Impl::tuned with KILN_TUNING_DB files --------------------------------------------------------------

TEST(TuningRuntime, OpsSpecializationsTakeTheDatabasesConfigPerBucket) {
  const TempDir dir;
  const Specialization fwd = ling("rms_norm", "fwd"), quant = ling("rms_norm_block_quant", "tile", 2);
  const Specialization fwd_small = other_config(fwd, 0), fwd_big = other_config(fwd, 1), quant2 = other_config(quant);
  const std::string file = save(dir.path() / "t.json", {entry_for(fwd_small, 1024, 5), entry_for(fwd_big, 8192, 30),
                                                        entry_for(quant2, 8192, 40)});
  kiln::Runtime rt(cpu_options(file));
  auto& impl = rt.impl();
  EXPECT_EQ(impl.tuned(fwd, 1024).config, fwd_small.config);
  EXPECT_EQ(impl.tuned(fwd, 700).config, fwd_small.config);
  EXPECT_EQ(impl.tuned(fwd, 8192).config, fwd_big.config);
  EXPECT_EQ(impl.tuned(fwd, 6000).config, fwd_big.config);
  EXPECT_EQ(impl.tuned(fwd, 1).config, fwd_small.config);        // nearest: 1024
  EXPECT_EQ(impl.tuned(fwd, 1 << 20).config, fwd_big.config);    // nearest: 8192
  EXPECT_EQ(impl.tuned(quant, 100).config, quant2.config);       // the only bucket
  // No entry: the heuristic default, untouched.
  const Specialization bwd = ling("rms_norm", "bwd"), mode0 = ling("rms_norm_block_quant", "row", 0);
  EXPECT_EQ(impl.tuned(bwd, 8192).config, bwd.config);
  EXPECT_EQ(impl.tuned(mode0, 8192).config, mode0.config);
  EXPECT_EQ(impl.tuned(ling("rms_norm", "fwd", -1, "sm_100a"), 8192).config, fwd.config);
  // Everything else about the specialization is the op's.
  const Specialization t = impl.tuned(fwd, 8192);
  EXPECT_EQ(t.family, fwd.family);
  EXPECT_EQ(t.kernel, fwd.kernel);
  EXPECT_EQ(t.params, fwd.params);
  EXPECT_TRUE(contains(impl.tuning_source(fwd, 8192), "tuned (" + file + ", bucket 8192, H100)"))
      << impl.tuning_source(fwd, 8192);
  EXPECT_EQ(impl.tuning_source(bwd, 8192), "heuristic");
  EXPECT_EQ(rt.stats().tunes, 0u);
  EXPECT_EQ(rt.stats().compiles, 0u);
}

// The op-time lookup with a database loaded costs well under the 2 µs host budget of a whole op call (measured
// here on the CPU alone: median over rounds, so that a loaded CI machine does not make it flaky).
TEST(TuningRuntime, LookupIsCheap) {
  const TempDir dir;
  const Specialization fwd = ling("rms_norm", "fwd");
  std::vector<TuningEntry> entries;
  for (int b = 0; b < 14; b += 2) entries.push_back(entry_for(other_config(fwd, static_cast<size_t>(b / 2) % 3), uint64_t{1} << b, 5));
  for (int n = 1; n <= 200; ++n) {  // other specializations in the table
    Specialization s = fwd;
    s.params[0] = 8 * n;
    entries.push_back(entry_for(other_config(s), 4096, 5));
  }
  kiln::Runtime rt(cpu_options(save(dir.path() / "t.json", entries)));
  auto& impl = rt.impl();
  std::vector<double> rounds;
  int64_t sink = 0;
  for (int round = 0; round < 31; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 10000; ++i) sink += impl.tuned(fwd, 1 + (i & 8191)).config[0];
    rounds.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / 10000);
  }
  std::nth_element(rounds.begin(), rounds.begin() + 15, rounds.end());
  std::printf("[ lookup ] tuned(): %.0f ns per call (sink %lld)\n", rounds[15], static_cast<long long>(sink));
  EXPECT_LE(rounds[15], 500.0);
}

// Several files: for one key, the lower median wins (GPU unknown: one tier), then the earlier file.
TEST(TuningRuntime, SeveralFilesFasterThenEarlier) {
  const TempDir dir;
  const Specialization fwd = ling("rms_norm", "fwd");
  const Specialization c0 = other_config(fwd, 0), c1 = other_config(fwd, 1);
  const std::string a = save(dir.path() / "a.json", {entry_for(c0, 4096, 12)});
  const std::string b = save(dir.path() / "b.json", {entry_for(c1, 4096, 11)});
  const std::string c = save(dir.path() / "c.json", {entry_for(c1, 4096, 12)});
  EXPECT_EQ(kiln::Runtime(cpu_options(a + ":" + b)).impl().tuned(fwd, 4096).config, c1.config);
  EXPECT_EQ(kiln::Runtime(cpu_options(b + ":" + a)).impl().tuned(fwd, 4096).config, c1.config);
  EXPECT_EQ(kiln::Runtime(cpu_options(a + ":" + c)).impl().tuned(fwd, 4096).config, c0.config);
  EXPECT_EQ(kiln::Runtime(cpu_options(c + ":" + a)).impl().tuned(fwd, 4096).config, c1.config);
  kiln::Runtime rt(cpu_options(a + "::" + b + ":"));  // empty items are ignored
  EXPECT_EQ(rt.impl().tuning_files, (std::vector<std::string>{a, b}));
}

// The tuner's override: a forced config wins over the database for its own specialization only, on this thread
// only, and is counted.
TEST(TuningRuntime, ForcedConfigOverridesOnlyItsSpecializationOnThisThread) {
  const TempDir dir;
  const Specialization fwd = ling("rms_norm", "fwd"), bwd = ling("rms_norm", "bwd");
  const Specialization db_cfg = other_config(fwd, 0), forced_cfg = other_config(fwd, 1);
  kiln::Runtime rt(cpu_options(save(dir.path() / "t.json", {entry_for(db_cfg, 1024, 5)})));
  auto& impl = rt.impl();
  {
    kiln::detail::ForceConfigScope force(forced_cfg);
    EXPECT_EQ(impl.tuned(fwd, 1024).config, forced_cfg.config);
    EXPECT_EQ(impl.tuned(fwd, 99999).config, forced_cfg.config);
    EXPECT_EQ(impl.tuned(bwd, 1024).config, bwd.config);  // another specialization: untouched
    std::thread([&] { EXPECT_EQ(impl.tuned(fwd, 1024).config, db_cfg.config); }).join();
    {
      kiln::detail::ForceConfigScope inner(fwd);  // nested: the default
      EXPECT_EQ(impl.tuned(fwd, 1024).config, fwd.config);
    }
    EXPECT_EQ(impl.tuned(fwd, 1024).config, forced_cfg.config);
    EXPECT_EQ(force.applied(), 3u);
  }
  EXPECT_EQ(impl.tuned(fwd, 1024).config, db_cfg.config);
  // Without any database the override works too.
  kiln::Runtime plain(cpu_options(""));
  kiln::detail::ForceConfigScope force(forced_cfg);
  EXPECT_EQ(plain.impl().tuned(fwd, 1).config, forced_cfg.config);
}

// The tuner's observation mode: tuned() runs the op's own heuristic (not the database's config) and records it.
TEST(TuningRuntime, ObserveRecordsTheOpsOwnConfig) {
  const TempDir dir;
  const Specialization fwd = ling("rms_norm", "fwd");
  kiln::Runtime rt(cpu_options(save(dir.path() / "t.json", {entry_for(other_config(fwd), 1024, 5)})));
  Specialization asked = fwd;
  asked.config[0] = 16;  // what an op with an M-dependent heuristic might ask for at this M
  kiln::detail::ForceConfigScope watch(other_config(fwd, 1), /*observe=*/true);
  EXPECT_EQ(rt.impl().tuned(asked, 1024).config, asked.config);
  EXPECT_EQ(watch.applied(), 1u);
  EXPECT_EQ(watch.observed(), asked.config);
}

TEST(TunerSpecs, UniqueTunableDropsRepeatsAndUntunable) {
  const Specialization fwd = ling("rms_norm", "fwd"), bwd = ling("rms_norm", "bwd"), red = ling("rms_norm", "dw_reduce");
  const std::vector<Specialization> u = unique_tunable({fwd, other_config(fwd), red, bwd, other_config(bwd), fwd});
  ASSERT_EQ(u.size(), 2u);
  EXPECT_EQ(u[0].config, fwd.config);  // the first of a shape is kept
  EXPECT_EQ(u[1].kernel, bwd.kernel);
}

TEST(TuningRuntime, FilesAreLoadedStrictlyAtStart) {
  const TempDir dir;
  const Specialization fwd = ling("rms_norm", "fwd");
  const std::string good = save(dir.path() / "good.json", {entry_for(other_config(fwd), 1024, 5)});
  std::string text = kiln::test::read_file(good);
  text.replace(text.find("\"warps\""), 7, "\"wraps\"");
  const std::string bad = dir.write("bad.json", text).string();
  EXPECT_THROW_NAMING(kiln::Runtime(cpu_options(good + ":" + bad)), "", kiln::InvalidArgument);
  try {
    kiln::Runtime rt(cpu_options(good + ":" + bad));
  } catch (const kiln::InvalidArgument& e) {
    EXPECT_TRUE(contains(e.what(), bad + ":")) << e.what();
    EXPECT_TRUE(contains(e.what(), "config.wraps")) << e.what();
  }
  const std::string missing = (dir.path() / "missing.json").string();
  EXPECT_THROW_NAMING(kiln::Runtime(cpu_options(missing)), "", kiln::InvalidArgument);
  // Under autotune the first file is where results go: it may not exist yet (the others must).
  kiln::RuntimeOptions o = cpu_options(missing + ":" + good);
  o.autotune = true;
  kiln::Runtime rt(o);
  EXPECT_EQ(rt.impl().autotune_file, missing);
  EXPECT_EQ(rt.impl().tuned(fwd, 1024).config, other_config(fwd).config);
  o.tuning_db = good + ":" + missing;
  EXPECT_THROW(kiln::Runtime{o}, kiln::InvalidArgument);
}

TEST(TuningRuntime, EnvironmentNamesTheFilesAndAutotune) {
  const TempDir dir;
  const Specialization fwd = ling("rms_norm", "fwd");
  const std::string file = save(dir.path() / "t.json", {entry_for(other_config(fwd), 1024, 5)});
  ::setenv("KILN_TUNING_DB", file.c_str(), 1);
  ::setenv("KILN_AUTOTUNE", "1", 1);
  kiln::RuntimeOptions o = cpu_options("");
  o.read_env = true;
  kiln::Runtime with_env(o);
  o.read_env = false;
  kiln::Runtime without(o);
  ::unsetenv("KILN_TUNING_DB");
  ::unsetenv("KILN_AUTOTUNE");
  EXPECT_EQ(with_env.impl().tuning_files, std::vector<std::string>{file});
  EXPECT_TRUE(with_env.impl().autotune);
  EXPECT_EQ(with_env.impl().tuned(fwd, 1024).config, other_config(fwd).config);
  EXPECT_TRUE(without.impl().tuning_files.empty());
  EXPECT_FALSE(without.impl().autotune);
  EXPECT_EQ(without.impl().tuned(fwd, 1024).config, fwd.config);
}

// Autotune with no GPU: a specialization with one config is settled without a device (the heuristic, remembered);
// one that needs measuring asks for the device (DeviceError here). Either way nothing is counted as tuned.
TEST(TuningRuntime, AutotuneWithoutAGpu) {
  if (kiln::detail::driver_available()) GTEST_SKIP() << "a GPU is present: covered by the GPU tests";
  const TempDir dir;
  kiln::RuntimeOptions o = cpu_options((dir.path() / "auto.json").string());
  o.autotune = true;
  kiln::Runtime rt(o);
  const Specialization reduce = ling("rms_norm", "dw_reduce"), fwd = ling("rms_norm", "fwd");
  EXPECT_EQ(rt.impl().tuned(reduce, 4096).config, reduce.config);
  EXPECT_EQ(rt.impl().tuned(reduce, 4096).config, reduce.config);
  EXPECT_EQ(rt.impl().tuning_source(reduce, 4096), "heuristic (nothing to tune)");
  EXPECT_THROW(rt.impl().tuned(fwd, 4096), kiln::DeviceError);
  EXPECT_EQ(rt.stats().tunes, 0u);
  EXPECT_FALSE(fs::exists(o.tuning_db));
  // Another process stores the entry after this Runtime started: the next call adopts it instead of tuning.
  const Specialization theirs = other_config(fwd, 1);
  store_entries(o.tuning_db, {entry_for(theirs, 4096, 7.0)});
  EXPECT_EQ(rt.impl().tuned(fwd, 4096).config, theirs.config);
  EXPECT_EQ(rt.impl().tuned(fwd, 3000).config, theirs.config);
  EXPECT_EQ(rt.stats().tunes, 0u);
  EXPECT_THROW(rt.impl().tuned(fwd, 8192), kiln::DeviceError);  // a bucket nobody measured still needs a tune
}

// Lookups from several threads while another thread makes the runtime adopt new entries (each adoption rebuilds
// the table): every lookup returns a config that was valid at some point, never garbage, and the final table has
// every entry.
TEST(TuningRuntime, LookupsStayConsistentWhileTheTableIsRebuilt) {
  const TempDir dir;
  kiln::RuntimeOptions o = cpu_options((dir.path() / "auto.json").string());
  o.autotune = true;
  kiln::Runtime rt(o);
  const Specialization fwd = ling("rms_norm", "fwd");
  std::vector<Specialization> space;
  fwd.family->search_space(fwd, space);
  std::set<std::array<int32_t, kiln::detail::kMaxConfig>> valid;
  for (const Specialization& c : space) valid.insert(c.config);
  std::atomic<bool> stop{false};
  std::atomic<size_t> bad{0}, lookups{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t)
    readers.emplace_back([&] {
      while (!stop.load()) {
        // Buckets ≥ 2^21 are never stored: only table reads (nearest bucket, or the heuristic before any entry).
        for (int64_t m : {int64_t{1} << 21, int64_t{1} << 25}) {
          kiln::detail::t_tuning_depth = 1;  // reads only: a miss must not start a tune on this thread
          const Specialization r = rt.impl().tuned(fwd, m);
          kiln::detail::t_tuning_depth = 0;
          if (!valid.count(r.config)) ++bad;
          ++lookups;
        }
      }
    });
  for (int b = 0; b < 12; ++b) {
    const Specialization c = space[static_cast<size_t>(b) % space.size()];
    store_entries(o.tuning_db, {entry_for(c, uint64_t{1} << b, 5.0 + b)});
    EXPECT_EQ(rt.impl().tuned(fwd, int64_t{1} << b).config, c.config) << b;  // adopted from the file
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(lookups.load(), 0u);
  EXPECT_EQ(rt.stats().tunes, 0u);
}

// ---- the autotune writer: several processes, one file, nothing lost ----------------------------------------------

TEST(TuningDbWriter, ConcurrentProcessesLoseNoEntry) {
  const TempDir dir;
  const std::string path = (dir.path() / "sub" / "tuning.json").string();
  const Specialization fwd = ling("rms_norm", "fwd");
  constexpr int kProcs = 8, kEach = 20;
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcs; ++p) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int rc = 0;
      try {
        for (int i = 0; i < kEach; ++i) {
          Specialization s = fwd;
          s.params[0] = 1000 * (p + 1) + i;  // a key of its own
          store_entries(path, {entry_for(s, 1024, 10 + i)});
          // …and one key every process writes, with its own time: the fastest must survive.
          store_entries(path, {entry_for(fwd, 4096, 50.0 - p - i * 0.01)});
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child %d: %s\n", p, e.what());
        rc = 1;
      }
      ::_exit(rc);
    }
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  const TuningDb db = TuningDb::load(path);
  EXPECT_EQ(db.entries.size(), size_t{kProcs * kEach + 1});
  std::set<int64_t> ns;
  for (const TuningEntry& e : db.entries) ns.insert(e.key.params[0].second);
  for (int p = 0; p < kProcs; ++p)
    for (int i = 0; i < kEach; ++i) EXPECT_TRUE(ns.count(1000 * (p + 1) + i)) << p << " " << i;
  const TuningEntry* shared = db.find(entry_for(fwd, 4096, 1).key);
  ASSERT_NE(shared, nullptr);
  EXPECT_DOUBLE_EQ(shared->median_us, 50.0 - (kProcs - 1) - (kEach - 1) * 0.01);
  for (const auto& f : fs::directory_iterator(dir.path() / "sub"))  // no temp file left behind
    EXPECT_TRUE(f.path().filename() == "tuning.json" || f.path().filename() == "tuning.json.lock") << f.path();
}

TEST(TuningDbWriter, MalformedExistingFileIsNeitherUsedNorReplaced) {
  const TempDir dir;
  const fs::path path = dir.write("tuning.json", "{\"schema\": \"kiln-tuning\", \"version\": 1, \"entries\": [}\n");
  const std::string before = kiln::test::read_file(path);
  EXPECT_THROW(store_entries(path.string(), {entry_for(ling("rms_norm", "fwd"), 1, 1)}), kiln::InvalidArgument);
  EXPECT_EQ(kiln::test::read_file(path), before);
}

// ---- the tuner's rules (host side) -------------------------------------------------------------------------------

std::vector<uint16_t> bf16_of(const std::vector<float>& v) {
  std::vector<uint16_t> out;
  for (float f : v) out.push_back(kiln::test::float_to_bf16(f));
  return out;
}

TEST(TunerCompare, FloatsWithinRoundingPassAndRealDifferencesFail) {
  const std::vector<float> ref = kiln::test::randn(4096, 1);
  const std::vector<uint16_t> a = bf16_of(ref);
  EXPECT_EQ(compare_outputs(kiln::DType::bf16, a.data(), a.data(), a.size()), "");
  std::vector<uint16_t> b = a;
  for (size_t i = 0; i < b.size(); i += 7) b[i] ^= 1;  // one-ulp flips in 1/7 of the elements
  EXPECT_EQ(compare_outputs(kiln::DType::bf16, a.data(), b.data(), a.size()), "");
  std::vector<uint16_t> c = a;
  c[1234] = kiln::test::float_to_bf16(kiln::test::bf16_to_float(a[1234]) * 1.5f + 0.1f);  // one element wrong
  const std::string why = compare_outputs(kiln::DType::bf16, a.data(), c.data(), a.size());
  EXPECT_TRUE(contains(why, "[1234]")) << why;
  std::vector<uint16_t> d = a;
  d[5] = 0x7fc0;  // NaN where the default has a number
  EXPECT_NE(compare_outputs(kiln::DType::bf16, a.data(), d.data(), a.size()), "");
  std::vector<uint16_t> e = a;
  e[5] = 0x7fc0;  // NaN in both: fine
  EXPECT_EQ(compare_outputs(kiln::DType::bf16, e.data(), e.data(), e.size()), "");

  std::vector<float> f32 = ref, g32 = ref;
  for (float& v : g32) v = std::nextafter(v, 1e9f);
  EXPECT_EQ(compare_outputs(kiln::DType::f32, f32.data(), g32.data(), f32.size()), "");
  const size_t big = static_cast<size_t>(std::find_if(ref.begin(), ref.end(), [](float v) { return std::abs(v) > 0.5f; }) - ref.begin());
  g32[big] *= 1.01f;
  EXPECT_NE(compare_outputs(kiln::DType::f32, f32.data(), g32.data(), f32.size()), "");
}

TEST(TunerCompare, Fp8AllowsRareOneStepFlipsOnly) {
  std::vector<uint8_t> ref(10000);
  std::mt19937 rng(3);
  for (auto& v : ref) v = static_cast<uint8_t>(rng() % 0x7e) | (rng() % 2 ? 0x80 : 0);
  for (auto& v : ref)
    if ((v & 0x7f) == 0) v |= 0x10;  // keep clear of ±0 so a "one step" never crosses the sign
  std::vector<uint8_t> got = ref;
  got[10] = static_cast<uint8_t>(got[10] + 1);
  got[20] = static_cast<uint8_t>(got[20] - 1);
  EXPECT_EQ(compare_outputs(kiln::DType::e4m3, ref.data(), got.data(), ref.size()), "");  // 2 flips ≤ max(2, 10)
  for (size_t i = 100; i < 120; ++i) got[i] = static_cast<uint8_t>(got[i] + 1);           // 22 flips > 10
  EXPECT_TRUE(contains(compare_outputs(kiln::DType::e4m3, ref.data(), got.data(), ref.size()), "flips"));
  got = ref;
  got[42] = static_cast<uint8_t>(got[42] + 2);  // two steps
  EXPECT_TRUE(contains(compare_outputs(kiln::DType::e4m3, ref.data(), got.data(), ref.size()), "[42]"));
  got = ref;
  std::vector<uint8_t> top = ref;
  top[7] = 0x7e;  // 448
  got = top;
  got[7] = 0x7f;  // NaN: one code away, but never a rounding flip
  EXPECT_TRUE(contains(compare_outputs(kiln::DType::e4m3, top.data(), got.data(), top.size()), "[7]"));
  got = ref;
  got[43] ^= 0x80;  // sign
  EXPECT_NE(compare_outputs(kiln::DType::e5m2, ref.data(), got.data(), ref.size()), "");
  std::vector<int32_t> i1 = {1, 2, 3}, i2 = {1, 2, 4};
  EXPECT_EQ(compare_outputs(kiln::DType::i32, i1.data(), i1.data(), 3), "");
  EXPECT_TRUE(contains(compare_outputs(kiln::DType::i32, i1.data(), i2.data(), 3), "[2]"));
}

// The same block's power-of-two scale (an fp32 output) twice or half the default's: a few pass (session 19: the
// TuneCliGpu run found one at rms_norm_block_quant mode 2, 8192 × 2048, scale 2^-7 against the default's 2^-8, three
// configs), a systematic rescale or any other difference does not.
TEST(TunerCompare, F32AcceptsAFewRescaledScalesOnly) {
  std::vector<float> ref(131072);
  std::mt19937 rng(7);
  for (auto& v : ref) v = std::ldexp(1.0f, static_cast<int>(rng() % 16) - 12);  // power-of-two scales
  std::vector<float> got = ref;
  got[108826] *= 2.0f;
  got[5] *= 0.5f;
  EXPECT_EQ(compare_outputs(kiln::DType::f32, ref.data(), got.data(), ref.size()), "");
  got[77] *= 4.0f;  // two binades: a real difference
  EXPECT_TRUE(contains(compare_outputs(kiln::DType::f32, ref.data(), got.data(), ref.size()), "[77]"));
  got = ref;
  for (size_t i = 0; i < 100; ++i) got[1000 * i] *= 2.0f;  // 100 > max(4, 13)
  EXPECT_TRUE(contains(compare_outputs(kiln::DType::f32, ref.data(), got.data(), ref.size()), "rescaled"));
  std::vector<float> vals = kiln::test::randn(4096, 3), twice = vals;
  twice[9] = vals[9] * 2.0f;  // not a power of two: an ordinary wrong value
  int ex = 0;
  if (std::frexp(std::abs(vals[9]), &ex) != 0.5f)
    EXPECT_TRUE(contains(compare_outputs(kiln::DType::f32, vals.data(), twice.data(), vals.size()), "[9]"));
  std::vector<float> neg = ref;
  neg[3] = -ref[3] * 2.0f;  // the sign too
  EXPECT_TRUE(contains(compare_outputs(kiln::DType::f32, ref.data(), neg.data(), ref.size()), "[3]"));
}

// A config that sums a row's squares in another order may move one block's power-of-two scale by ×2: that block's
// codes then differ by one exponent step (8 in e4m3). A few such blocks pass; a systematic rescale does not.
TEST(TunerCompare, Fp8AcceptsAFewRescaledBlocksOnly) {
  std::vector<uint8_t> ref(1 << 20);
  std::mt19937 rng(5);
  for (auto& v : ref) v = static_cast<uint8_t>(0x20 + rng() % 0x50) | (rng() % 2 ? 0x80 : 0);  // normal codes
  std::vector<uint8_t> got = ref;
  for (size_t i = 4096; i < 4096 + 128; ++i) got[i] = static_cast<uint8_t>(got[i] - 8);  // one block's scale ×2
  EXPECT_EQ(compare_outputs(kiln::DType::e4m3, ref.data(), got.data(), ref.size()), "");
  got[9000] = static_cast<uint8_t>(got[9000] + 3);  // three steps: still a real difference
  EXPECT_TRUE(contains(compare_outputs(kiln::DType::e4m3, ref.data(), got.data(), ref.size()), "[9000]"));
  got = ref;
  for (size_t i = 0; i < ref.size() / 2; ++i) got[i] = static_cast<uint8_t>(got[i] - 8);  // half of all blocks
  EXPECT_TRUE(contains(compare_outputs(kiln::DType::e4m3, ref.data(), got.data(), ref.size()), "exponent step"));
  got = ref;
  for (size_t i = 0; i < 128; ++i) got[i] = static_cast<uint8_t>(got[i] - 4);  // e5m2: one exponent step is 4
  EXPECT_EQ(compare_outputs(kiln::DType::e5m2, ref.data(), got.data(), ref.size()), "");
  EXPECT_TRUE(contains(compare_outputs(kiln::DType::e4m3, ref.data(), got.data(), ref.size()), "[0]"));
}

// The comparisons run over 1 Mi-element chunks on several threads: counts, the first differing index and the relative
// L2 are those of the whole array, whichever chunk (and thread) saw them.
TEST(TunerCompare, ChunkedComparisonsReportTheWholeArray) {
  const size_t n = (size_t{3} << 20) + 777;  // four chunks, the last one short
  std::vector<uint16_t> a(n);
  std::mt19937 rng(11);
  for (auto& v : a) v = static_cast<uint16_t>(0x3f00 + rng() % 0x100);  // bf16 in [0.5, 1)
  std::vector<uint16_t> b = a;
  for (size_t i = 0; i < n; i += 3) b[i] ^= 1;  // one-ulp flips in every chunk: accepted
  EXPECT_EQ(compare_outputs(kiln::DType::bf16, a.data(), b.data(), n), "");
  b[n - 5] = 0x4000;             // 2.0 where [0.5, 1) was: in the last chunk
  b[(size_t{1} << 20) + 9] = 0;  // 0 in the second chunk: the first bad one
  const std::string why = compare_outputs(kiln::DType::bf16, a.data(), b.data(), n);
  EXPECT_TRUE(contains(why, "2 of " + std::to_string(n)) && contains(why, "[1048585]")) << why;

  std::vector<uint8_t> q(n), g;
  for (auto& v : q) v = static_cast<uint8_t>(0x20 + rng() % 0x50);
  g = q;
  g[(size_t{2} << 20) + 1] = static_cast<uint8_t>(g[(size_t{2} << 20) + 1] + 3);  // third chunk
  g[(size_t{3} << 20) + 2] = static_cast<uint8_t>(g[(size_t{3} << 20) + 2] + 3);  // fourth chunk
  const std::string why8 = compare_outputs(kiln::DType::e4m3, q.data(), g.data(), n);
  EXPECT_TRUE(contains(why8, "2 of " + std::to_string(n)) && contains(why8, "[2097153]")) << why8;

  std::vector<float> f(n, 1.0f), h(n, 1.0f);
  h[(size_t{3} << 20) + 100] = 1.5f;  // one element of 3 Mi: relative L2 ≈ 2.8e-4, and 0.5 > 1e-4 + 1e-4
  const std::string whyf = compare_outputs(kiln::DType::f32, f.data(), h.data(), n);
  EXPECT_TRUE(contains(whyf, "1 of") && contains(whyf, "[3145828]")) << whyf;
}

std::vector<CandidateResult> timed(std::vector<double> us, std::vector<std::string> status = {}) {
  std::vector<CandidateResult> c;
  for (size_t i = 0; i < us.size(); ++i) {
    CandidateResult r;
    r.label = std::to_string(i);
    r.is_default = i == 0;
    r.us = us[i];
    if (i < status.size() && !status[i].empty()) r.status = status[i];
    c.push_back(r);
  }
  return c;
}

TEST(TunerChoose, TiesGoToTheDefaultAndNearTiesToTheEarliest) {
  EXPECT_EQ(choose(timed({100, 98, 99})), 0u);          // 2 % faster: within the 3 % band
  EXPECT_EQ(choose(timed({100, 96, 90})), 2u);          // 10 % faster
  EXPECT_EQ(choose(timed({100, 90, 89})), 1u);          // 89 and 90 are a tie: the earlier config
  EXPECT_EQ(choose(timed({10, 9.6})), 0u);              // 0.4 µs: under the 0.5 µs floor
  EXPECT_EQ(choose(timed({10, 9.4})), 1u);
  EXPECT_EQ(choose(timed({100, 50, 80}, {"", "mismatch: output 0", ""})), 2u);  // a wrong one never wins
  EXPECT_EQ(choose(timed({100, 50, 0}, {"", "error: x", "skipped: time budget"})), 0u);
  EXPECT_EQ(choose(timed({100, 50}, {"error: default failed"})), 0u);
  EXPECT_DOUBLE_EQ(noise_band_us(100), 3.0);
  EXPECT_DOUBLE_EQ(noise_band_us(4), 0.5);
}

// ---- structure-aware fuzz of the tuning file parser --------------------------------------------------------------

// Every field of a valid entry replaced by values of every JSON type and edge: the file either loads, or fails
// with InvalidArgument naming file:line and that field's path. Whatever loads survives a save/load round trip.
TEST(TuningDbFuzz, EveryFieldWithEveryKindOfValue) {
  const Specialization fwd = ling("rms_norm", "fwd");
  const json base = json::parse(TuningDb{{entry_for(other_config(fwd), 1024, 5)}}.to_json());
  const std::vector<json> values = {nullptr, true, 0, -1, 1, 3, 1024, 1.5, -2.5, 1e300, "x", "", "sm_90a",
                                    json::array(), json::array({1}), json::object(), json::object({{"a", 1}}),
                                    int64_t{1} << 40, uint64_t{1} << 63};
  std::vector<std::string> paths;
  std::function<void(const json&, const std::string&)> walk = [&](const json& j, const std::string& p) {
    if (!p.empty()) paths.push_back(p);
    if (j.is_object())
      for (const auto& [k, v] : j.items()) walk(v, p + "/" + k);
  };
  walk(base["entries"][0], "");
  size_t cases = 0, loaded = 0;
  for (const std::string& p : paths)
    for (const json& v : values) {
      json doc = base;
      doc["entries"][0][json::json_pointer(p)] = v;
      const std::string text = doc.dump(2);
      ++cases;
      try {
        const TuningDb db = TuningDb::parse(text, "fuzz.json");
        ++loaded;
        const TuningDb again = TuningDb::parse(db.to_json(), "again.json");
        EXPECT_EQ(again.entries, db.entries) << p << " = " << v.dump();
      } catch (const kiln::InvalidArgument& e) {
        EXPECT_TRUE(contains(e.what(), "fuzz.json:")) << e.what();
        EXPECT_TRUE(contains(e.what(), "entries[0]")) << p << ": " << e.what();
      } catch (const std::exception& e) {
        ADD_FAILURE() << p << " = " << v.dump() << ": non-InvalidArgument " << e.what();
      }
    }
  // Deleting any field, or adding an unknown one anywhere, is always an error.
  for (const std::string& p : paths) {
    json doc = base;
    const size_t slash = p.rfind('/');
    json& parent = p.substr(0, slash).empty() ? doc["entries"][0] : doc["entries"][0][json::json_pointer(p.substr(0, slash))];
    parent.erase(p.substr(slash + 1));
    EXPECT_THROW(TuningDb::parse(doc.dump(), "fuzz.json"), kiln::InvalidArgument) << "without " << p;
    json extra = base;
    json& obj = extra["entries"][0][json::json_pointer(p)];
    if (obj.is_object()) {
      obj["surprise"] = 1;
      EXPECT_THROW(TuningDb::parse(extra.dump(), "fuzz.json"), kiln::InvalidArgument) << "extra field in " << p;
    }
  }
  EXPECT_GT(cases, 300u);
  EXPECT_GT(loaded, 0u);
}

// ---- the simulated cluster start ---------------------------------------------------------------------------------

// One node tunes and ships a file; every node imports it and prewarms its cache from it (plus the model's heuristic
// specializations); then 8 ranks start at once with KILN_TUNING_DB, KILN_REQUIRE_PREWARMED and even KILN_AUTOTUNE
// set, and resolve every op specialization at the job's token counts exactly as the ops do: each takes the shipped
// configs, fetches every cubin from the cache, and compiles nothing and tunes nothing (a tune would need a GPU,
// a compile is forbidden by KILN_REQUIRE_PREWARMED: either would fail the rank).
TEST(TuningCluster, EightRanksStartWithZeroCompilesAndZeroTunes) {
  const TempDir dir;
  const Specialization fwd = ling("rms_norm", "fwd"), bwd = ling("rms_norm", "bwd");
  const std::vector<TuningEntry> shipped_entries = {
      entry_for(other_config(fwd, 0), 1024, 3.1), entry_for(other_config(fwd, 1), 8192, 21.0),
      entry_for(other_config(bwd, 0), 1024, 9.0), entry_for(bwd, 8192, 60.0)};  // the default can win too
  const std::string shipped = save(dir.path() / "h100-ling-mini-2.0.json", shipped_entries);
  const std::string node_db = (dir.path() / "node" / "tuning.json").string();
  const std::string cache = (dir.path() / "cache").string();
  fs::create_directories(dir.path() / "node");

  CliResult r = run_kiln({"tuning", "import", shipped, "--into", node_db});
  ASSERT_EQ(r.rc, 0) << r;
  r = run_kiln({"prewarm", "--tuning", node_db, "--cache-dir", cache, "--json"});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_EQ(json::parse(r.out).at("entries").size(), 4u);
  r = run_kiln({"prewarm", "--model", "ling-mini-2.0", "--arch", "sm_90a", "--families", "rms_norm", "--cache-dir",
                cache, "--json"});
  ASSERT_EQ(r.rc, 0) << r;

  const std::map<std::string, std::string> env = {
      {"KILN_TUNING_DB", node_db}, {"KILN_REQUIRE_PREWARMED", "1"}, {"KILN_AUTOTUNE", "1"}, {"KILN_ARCH", ""}};
  std::vector<CliResult> ranks(8);
  std::vector<std::thread> procs;
  for (auto& rank : ranks)
    procs.emplace_back([&rank, &cache, &env] {
      rank = run_kiln({"resolve", "--model", "ling-mini-2.0", "--arch", "sm_90a", "--tokens", "1024,8192",
                       "--families", "rms_norm", "--cache-dir", cache, "--json"},
                      env);
    });
  for (auto& t : procs) t.join();

  auto config_text = [](const TuningEntry& e) {
    std::string s;
    for (const auto& [n, v] : e.config) s += fmt::format("{}{}={}", s.empty() ? "" : " ", n, v);
    return s;
  };
  for (const CliResult& rank : ranks) {
    ASSERT_EQ(rank.rc, 0) << rank;
    const json j = json::parse(rank.out);
    const json& sum = j.at("summary");
    EXPECT_EQ(sum.at("compiles").get<int64_t>(), 0) << rank;
    EXPECT_EQ(sum.at("tunes").get<int64_t>(), 0) << rank;
    EXPECT_EQ(sum.at("entries").get<int64_t>(), 6);  // fwd, bwd, dw_reduce × 2 token counts
    EXPECT_EQ(sum.at("tuned").get<int64_t>(), 4);
    for (const json& e : j.at("entries")) {
      EXPECT_EQ(e.at("status").get<std::string>(), "hit") << e;
      const std::string kernel = e.at("kernel").get<std::string>();
      if (kernel == "dw_reduce") {
        EXPECT_EQ(e.at("source").get<std::string>(), "heuristic (nothing to tune)") << e;
        continue;
      }
      const TuningEntry* want = nullptr;
      for (const TuningEntry& t : shipped_entries)
        if (t.key.kernel == kernel && t.key.tokens == e.at("tokens").get<uint64_t>()) want = &t;
      ASSERT_NE(want, nullptr) << e;
      EXPECT_EQ(e.at("config").get<std::string>(), config_text(*want)) << e;
      EXPECT_TRUE(contains(e.at("source").get<std::string>(), "tuned (" + node_db)) << e;
    }
  }
}

// Without KILN_AUTOTUNE, a token count between tuned buckets takes the nearest one, and the table says so.
TEST(TuningCluster, ResolveReportsNearestBucketsAndHeuristics) {
  const TempDir dir;
  const Specialization fwd = ling("rms_norm", "fwd");
  const std::string file = save(dir.path() / "t.json", {entry_for(other_config(fwd, 2), 8192, 20.0)});
  const CliResult r = run_kiln({"resolve", "--model", "ling-mini-2.0", "--arch", "sm_90a", "--tokens", "3000",
                                "--families", "rms_norm", "--tuning", file, "--cache-dir",
                                (dir.path() / "c").string(), "--json"},
                               {{"KILN_AUTOTUNE", ""}, {"KILN_REQUIRE_PREWARMED", ""}});
  ASSERT_EQ(r.rc, 0) << r;
  const json j = json::parse(r.out);
  for (const json& e : j.at("entries")) {
    if (e.at("kernel").get<std::string>() == "fwd") {
      EXPECT_TRUE(contains(e.at("source").get<std::string>(), "bucket 8192")) << e;
      EXPECT_EQ(e.at("status").get<std::string>(), "compiled") << e;
    } else {
      EXPECT_EQ(e.at("source").get<std::string>(), "heuristic") << e;
    }
  }
  EXPECT_EQ(j.at("summary").at("tuned").get<int64_t>(), 1);
  EXPECT_EQ(j.at("summary").at("compiles").get<int64_t>(), 3);
}

// ---- kiln tune's command line ------------------------------------------------------------------------------------

TEST(TuneCli, UsageErrors) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"tune", "--model", "ling-mini-2.0"},
        {"tune", "--out", "x.json"},
        {"tune", "--model", "ling-mini-2.0", "--out", "x.json", "--tokens", "0"},
        {"tune", "--model", "ling-mini-2.0", "--out", "x.json", "--tokens", "a,b"},
        {"tune", "--model", "ling-mini-2.0", "--out", "x.json", "--budget-s", "-1"},
        {"tune", "--model", "ling-mini-2.0", "--out", "x.json", "--families", "no_such_family"},
        {"tune", "--model", "ling-mini-2.0", "--out", "x.json", "--repeats", "3"},
        {"tune", "--model", "ling-mini-2.0", "--out", "x.json", "--cold-code=1"},
        {"tune", "--model", "ling-mini-2.0", "--out", "x.json", "--cold"},
        {"resolve", "--model", "ling-mini-2.0"},
        {"prewarm", "--tuning", "x.json", "--families", "rms_norm"}}) {
    const CliResult r = run_kiln(args);
    EXPECT_EQ(r.rc, 2) << r;
  }
}

TEST(TuneCli, NeedsAGpu) {
  if (kiln::detail::driver_available()) GTEST_SKIP() << "a GPU is present: see TuneCliGpu";
  const TempDir dir;
  const CliResult r = run_kiln({"tune", "--model", "ling-mini-2.0", "--out", (dir.path() / "t.json").string()});
  EXPECT_EQ(r.rc, 1) << r;
  EXPECT_TRUE(contains(r.err, "driver")) << r;
  EXPECT_FALSE(fs::exists(dir.path() / "t.json"));
  // --cold-code is a flag: accepted, then the same missing driver.
  const CliResult c =
      run_kiln({"tune", "--model", "ling-mini-2.0", "--out", (dir.path() / "t.json").string(), "--cold-code"});
  EXPECT_EQ(c.rc, 1) << c;
  EXPECT_TRUE(contains(c.err, "driver")) << c;
}

}  // namespace
