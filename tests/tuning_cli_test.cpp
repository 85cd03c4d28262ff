// `kiln tuning …` and `kiln prewarm --tuning`, run as a child process: exit codes, messages, files written.
//
// TuningCliPrewarm.* compile real kernels with NVRTC (no GPU needed); every other test is instant.
#include <gtest/gtest.h>
#include <spawn.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>
#include "test_util.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace kiln::test;  // run_kiln, CliResult, TempDir, read_file, contains








// ---- tuning files ------------------------------------------------------------------------------------------------

json provenance() {
  return {{"gpu", "NVIDIA H100 80GB HBM3"}, {"sm_count", 132},       {"driver", "13.0"},
          {"cuda", "13.0"},                 {"nvrtc", "13.0"},       {"kiln_version", "0.1.0"},
          {"date", "2026-11-25T23:00:00Z"}, {"host", "node-1"}};
}

json rms_fwd(int64_t N, uint64_t tokens, int warps, double us, const std::string& arch = "sm_90a") {
  return {{"family", "rms_norm"},
          {"kernel", "fwd"},
          {"arch", arch},
          {"params", {{"N", N}, {"dtype", 0}, {"w_dtype", 0}, {"dw_dtype", 0}}},
          {"tokens", tokens},
          {"config", {{"warps", warps}, {"rows", 0}, {"stages", 0}}},
          {"median_us", us},
          {"default_us", 20.0},
          {"provenance", provenance()}};
}

// rms_norm_block_quant's tile kernel, mode 1: col_blocks must divide N/128.
json quant_tile(int64_t N, uint64_t tokens, int col_blocks, double us) {
  return {{"family", "rms_norm_block_quant"},
          {"kernel", "tile"},
          {"arch", "sm_90a"},
          {"params", {{"N", N}, {"mode", 1}, {"round_scale", 0}, {"w_f32", 0}}},
          {"tokens", tokens},
          {"config", {{"warps", 0}, {"col_blocks", col_blocks}, {"prefetch", 0}, {"stages", 0}, {"overlap", 0}, {"exchange", 0}}},
          {"median_us", us},
          {"default_us", 40.0},
          {"provenance", provenance()}};
}

// Writes a tuning file, one entry per line (entry i on line 3 + i).
std::string write_tuning(const fs::path& path, const std::vector<json>& entries) {
  std::string text = "{\"schema\": \"kiln-tuning\", \"version\": 1,\n \"entries\": [\n";
  for (size_t i = 0; i < entries.size(); ++i) text += "  " + entries[i].dump() + (i + 1 < entries.size() ? ",\n" : "\n");
  text += "]}\n";
  std::ofstream(path) << text;
  return path.string();
}

json show_json(const std::string& file) {
  const CliResult r = run_kiln({"tuning", "show", file, "--json"});
  EXPECT_EQ(r.rc, 0) << r;
  json j;
  EXPECT_NO_THROW(j = json::parse(r.out)) << r;
  return j;
}

TEST(TuningCli, ShowTableAndJson) {
  const TempDir dir;
  const std::string file =
      write_tuning(dir.path() / "t.json", {rms_fwd(2048, 1024, 4, 16.0), quant_tile(2048, 8192, 2, 32.0)});
  CliResult r = run_kiln({"tuning", "show", file});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_TRUE(contains(r.out, "family")) << r;
  EXPECT_TRUE(contains(r.out, "gain %")) << r;
  EXPECT_TRUE(contains(r.out, "N=2048 mode=1 round_scale=0 w_f32=0")) << r;
  EXPECT_TRUE(contains(r.out, "warps=0 col_blocks=2 prefetch=0 stages=0 overlap=0 exchange=0")) << r;
  EXPECT_TRUE(contains(r.out, "+25.0")) << r;  // 40 µs default / 32 µs tuned
  EXPECT_TRUE(contains(r.out, "2 entries in " + file)) << r;

  const json j = show_json(file);
  ASSERT_EQ(j.at("entries").size(), 2u);
  const json& q = j.at("entries")[1];
  EXPECT_EQ(q.at("family"), "rms_norm_block_quant");
  EXPECT_EQ(q.at("tokens"), 8192);
  EXPECT_EQ(q.at("config").at("col_blocks"), 2);
  EXPECT_DOUBLE_EQ(q.at("gain_percent").get<double>(), 25.0);
  EXPECT_EQ(q.at("timing"), "warm");
}

// An entry timed by `kiln tune --cold-code` says so in show's JSON and in the table's last line.
TEST(TuningCli, ShowsColdCodeTiming) {
  const TempDir dir;
  json cold = quant_tile(2048, 8192, 2, 32.0);
  cold["provenance"]["timing"] = "cold-code";
  const std::string file = write_tuning(dir.path() / "t.json", {rms_fwd(2048, 1024, 4, 16.0), cold});
  const CliResult r = run_kiln({"tuning", "show", file});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_TRUE(contains(r.out, "2 entries in " + file + " (1 timed with cold instruction caches)")) << r;
  const json j = show_json(file);
  EXPECT_EQ(j.at("entries")[0].at("timing"), "warm");
  EXPECT_EQ(j.at("entries")[1].at("timing"), "cold-code");
}

TEST(TuningCli, BadFileExitsOneNamingFileAndLine) {
  const TempDir dir;
  json bad = quant_tile(2048, 8192, 2, 32.0);
  bad["config"]["col_blocks"] = "x";
  const std::string file = write_tuning(dir.path() / "bad.json", {rms_fwd(2048, 1024, 4, 16.0), bad});
  const std::string good = write_tuning(dir.path() / "good.json", {rms_fwd(2048, 1024, 4, 16.0)});
  const std::string expected = file + ":4: entries[1].config.col_blocks: expected an integer, got \"x\"";
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"tuning", "show", file}, {"tuning", "diff", good, file},
        {"tuning", "merge", good, file, "--out", (dir.path() / "m.json").string()},
        {"tuning", "import", file, "--into", (dir.path() / "db.json").string()},
        {"prewarm", "--tuning", file, "--cache-dir", (dir.path() / "cache").string()}}) {
    const CliResult r = run_kiln(args);
    EXPECT_EQ(r.rc, 1) << args[1] << "\n" << r;
    EXPECT_TRUE(contains(r.err, expected)) << r;
  }
  EXPECT_FALSE(fs::exists(dir.path() / "m.json"));
  EXPECT_FALSE(fs::exists(dir.path() / "db.json"));
  // Syntax errors name the line too.
  std::ofstream(dir.path() / "broken.json") << "{\"schema\": \"kiln-tuning\",\n \"version\": 1,\n \"entries\": [,]}\n";
  const CliResult r = run_kiln({"tuning", "show", (dir.path() / "broken.json").string()});
  EXPECT_EQ(r.rc, 1) << r;
  EXPECT_TRUE(contains(r.err, "broken.json:3: invalid JSON")) << r;
}

TEST(TuningCli, UsageErrors) {
  const TempDir dir;
  const std::string file = write_tuning(dir.path() / "t.json", {rms_fwd(2048, 1024, 4, 16.0)});
  for (const std::vector<std::string>& args : {
           std::vector<std::string>{"tuning"},
           {"tuning", "explode"},
           {"tuning", "show"},
           {"tuning", "show", file, file},
           {"tuning", "merge", file, file},                      // no --out
           {"tuning", "diff", file},                             // one file
           {"tuning", "show", file, "--out", "x.json"},          // --out belongs to merge/export
           {"tuning", "merge", file, file, "--out", "x", "--json"},
           {"tuning", "import", file},                           // no --into
           {"tuning", "export", "--out", "x.json"},              // no files, no $KILN_TUNING_DB
           {"prewarm", "--tuning", file, "--model", "ling-mini-2.0"},
           {"prewarm", "--tuning", file, "--arch", ","},
       }) {
    const CliResult r = run_kiln(args, {{"KILN_TUNING_DB", ""}});
    EXPECT_EQ(r.rc, 2) << r;
    EXPECT_TRUE(contains(r.err, "usage: kiln")) << r;
  }
}

TEST(TuningCli, MergeKeepsTheFasterAndSaysWhich) {
  const TempDir dir;
  const std::string a = write_tuning(dir.path() / "a.json", {rms_fwd(2048, 1024, 4, 16.0), rms_fwd(4096, 1024, 4, 30.0)});
  const std::string b = write_tuning(dir.path() / "b.json", {rms_fwd(2048, 1024, 8, 12.0), rms_fwd(8192, 1024, 4, 50.0)});
  const std::string out = (dir.path() / "out" / "merged.json").string();
  fs::create_directories(dir.path() / "out");
  const CliResult r = run_kiln({"tuning", "merge", a, b, "--out", out});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_TRUE(contains(r.out, "rms_norm fwd sm_90a N=2048 dtype=0 w_dtype=0 dw_dtype=0 tokens=1024: took " + b +
                                  " — second is faster (12.00 µs vs 16.00 µs)"))
      << r;
  EXPECT_TRUE(contains(r.out, "merged 2 + 2 entries into 3 entries in " + out)) << r;
  const json merged = show_json(out);
  ASSERT_EQ(merged.at("entries").size(), 3u);
  EXPECT_EQ(merged.at("entries")[0].at("config").at("warps"), 8);  // N=2048 from b
  // The output is canonical: merging it with itself changes nothing.
  const std::string text = read_file(out);
  ASSERT_EQ(run_kiln({"tuning", "merge", out, out, "--out", out}).rc, 0);
  EXPECT_EQ(read_file(out), text);
}

TEST(TuningCli, DiffExitCodes) {
  const TempDir dir;
  const std::string a = write_tuning(dir.path() / "a.json", {rms_fwd(2048, 1024, 4, 16.0), rms_fwd(4096, 1024, 4, 30.0)});
  const std::string noise =
      write_tuning(dir.path() / "noise.json", {rms_fwd(2048, 1024, 4, 16.3), rms_fwd(4096, 1024, 4, 29.5)});
  const std::string b = write_tuning(dir.path() / "b.json",
                                     {rms_fwd(2048, 1024, 8, 16.0), rms_fwd(8192, 1024, 4, 50.0)});
  CliResult r = run_kiln({"tuning", "diff", a, noise});
  EXPECT_EQ(r.rc, 0) << r;
  EXPECT_TRUE(contains(r.out, "0 added, 0 removed, 0 changed")) << r;

  r = run_kiln({"tuning", "diff", a, b});
  EXPECT_EQ(r.rc, 1) << r;
  EXPECT_TRUE(contains(r.out, "+ rms_norm fwd sm_90a N=8192")) << r;
  EXPECT_TRUE(contains(r.out, "- rms_norm fwd sm_90a N=4096")) << r;
  EXPECT_TRUE(contains(r.out, "~ rms_norm fwd sm_90a N=2048 dtype=0 w_dtype=0 dw_dtype=0 tokens=1024: warps=4 rows=0 "
                              "stages=0 → warps=8 rows=0 stages=0")) << r;
  EXPECT_TRUE(contains(r.out, "1 added, 1 removed, 1 changed")) << r;

  r = run_kiln({"tuning", "diff", a, b, "--json"});
  EXPECT_EQ(r.rc, 1) << r;
  const json j = json::parse(r.out);
  EXPECT_EQ(j.at("identical"), false);
  EXPECT_EQ(j.at("added").size(), 1u);
  EXPECT_EQ(j.at("removed").size(), 1u);
  ASSERT_EQ(j.at("changed").size(), 1u);
  EXPECT_EQ(j.at("changed")[0].at("config_changed"), true);
  r = run_kiln({"tuning", "diff", a, a, "--json"});
  EXPECT_EQ(r.rc, 0) << r;
  EXPECT_EQ(json::parse(r.out).at("identical"), true);
}

TEST(TuningCli, ImportInstallsAndMergesWithTheExistingFile) {
  const TempDir dir;
  const std::string a = write_tuning(dir.path() / "a.json", {rms_fwd(2048, 1024, 4, 16.0)});
  const std::string b = write_tuning(dir.path() / "b.json", {rms_fwd(2048, 1024, 8, 20.0), rms_fwd(4096, 1024, 4, 30.0)});
  const std::string db = (dir.path() / "db.json").string();
  CliResult r = run_kiln({"tuning", "import", a, "--into", db});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_EQ(show_json(db).at("entries").size(), 1u);

  r = run_kiln({"tuning", "import", b, "--into", db});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_TRUE(contains(r.out, "took " + db + " — first is faster (16.00 µs vs 20.00 µs)")) << r;
  const json merged = show_json(db);
  ASSERT_EQ(merged.at("entries").size(), 2u);
  EXPECT_EQ(merged.at("entries")[0].at("config").at("warps"), 4);

  // A bad file leaves the installed one untouched.
  const std::string before = read_file(db);
  std::ofstream(dir.path() / "bad.json") << "{\"schema\": \"kiln-tuning\", \"version\": 2, \"entries\": []}";
  r = run_kiln({"tuning", "import", (dir.path() / "bad.json").string(), "--into", db});
  EXPECT_EQ(r.rc, 1) << r;
  EXPECT_TRUE(contains(r.err, "bad.json:1: version: unsupported version 2")) << r;
  EXPECT_EQ(read_file(db), before);
}

TEST(TuningCli, ExportMergesFilesOrKilnTuningDb) {
  const TempDir dir;
  const std::string a = write_tuning(dir.path() / "a.json", {rms_fwd(2048, 1024, 4, 16.0)});
  const std::string b = write_tuning(dir.path() / "b.json", {rms_fwd(4096, 1024, 4, 30.0)});
  const std::string out = (dir.path() / "out.json").string();
  CliResult r = run_kiln({"tuning", "export", "--out", out}, {{"KILN_TUNING_DB", a + ":" + b}});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_TRUE(contains(r.out, "exported 2 entries from 2 files into " + out)) << r;
  EXPECT_EQ(show_json(out).at("entries").size(), 2u);

  const std::string explicit_out = (dir.path() / "explicit.json").string();
  r = run_kiln({"tuning", "export", "--out", explicit_out, b, a}, {{"KILN_TUNING_DB", ""}});
  ASSERT_EQ(r.rc, 0) << r;
  EXPECT_EQ(read_file(explicit_out), read_file(out));  // canonical: input order does not matter

  r = run_kiln({"tuning", "export", "--out", out}, {{"KILN_TUNING_DB", a + ":" + (dir.path() / "missing.json").string()}});
  EXPECT_EQ(r.rc, 1) << r;
  EXPECT_TRUE(contains(r.err, "missing.json")) << r;
}

// ---- prewarm --tuning (NVRTC, no GPU) ----------------------------------------------------------------------------

TEST(TuningCliPrewarm, CompilesExactlyTheTunedConfigsThenHits) {
  const TempDir dir;
  const std::string cache = (dir.path() / "cache").string();
  // Two token buckets share one rms_norm config (one specialization); an sm_100a entry is filtered out by --arch.
  const std::string file = write_tuning(dir.path() / "t.json", {rms_fwd(1024, 1024, 4, 16.0), rms_fwd(1024, 8192, 4, 90.0),
                                                                quant_tile(1024, 4096, 2, 32.0),
                                                                rms_fwd(1024, 1024, 8, 16.0, "sm_100a")});
  auto prewarm = [&] {
    const CliResult r = run_kiln({"prewarm", "--tuning", file, "--arch", "sm_90a", "--cache-dir", cache, "--json"});
    EXPECT_EQ(r.rc, 0) << r;
    json j;
    EXPECT_NO_THROW(j = json::parse(r.out)) << r;
    return j;
  };
  const json first = prewarm();
  ASSERT_EQ(first.at("entries").size(), 2u) << first;
  for (const json& e : first.at("entries")) EXPECT_EQ(e.at("status"), "compiled") << e;
  EXPECT_EQ(first.at("summary").at("tuning"), file);
  EXPECT_EQ(first.at("summary").at("compiled"), 2);

  // The cache holds exactly the file's sm_90a configs.
  const CliResult ls = run_kiln({"cache", "ls", "--cache-dir", cache, "--json"});
  ASSERT_EQ(ls.rc, 0) << ls;
  std::set<std::string> stored;
  for (const json& e : json::parse(ls.out)) {
    const json& m = e.at("manifest");
    stored.insert(m.at("family").get<std::string>() + " " + m.at("kernel").get<std::string>() + " " +
                  m.at("arch").get<std::string>() + " " + m.at("params").dump() + " " + m.at("config").dump());
  }
  const std::set<std::string> expected = {
      R"(rms_norm fwd sm_90a {"N":1024,"dtype":0,"dw_dtype":0,"w_dtype":0} {"rows":0,"stages":0,"warps":4})",
      R"(rms_norm_block_quant tile sm_90a {"N":1024,"mode":1,"round_scale":0,"w_f32":0} {"col_blocks":2,"exchange":0,"overlap":0,"prefetch":0,"stages":0,"warps":0})"};
  EXPECT_EQ(stored, expected);

  const json second = prewarm();
  ASSERT_EQ(second.at("entries").size(), 2u);
  for (const json& e : second.at("entries")) EXPECT_EQ(e.at("status"), "hit") << e;
  EXPECT_EQ(second.at("summary").at("hits"), 2);

  // The text form names the file in its summary line.
  const CliResult text = run_kiln({"prewarm", "--tuning", file, "--arch", "sm_90a", "--cache-dir", cache});
  EXPECT_EQ(text.rc, 0) << text;
  EXPECT_TRUE(contains(text.out, "prewarm " + file + ": 2 specializations for sm_90a — 0 compiled, 2 hits")) << text;
}

}  // namespace
