// The tuning database (tuner/tuning_db.hpp): round trip, canonical form, merge, diff, strict loading, fuzzing,
// and the conversion to runtime specializations. CPU only, no NVRTC.
#include "tuner/tuning_db.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kiln/errors.hpp"
#include "kiln/model.hpp"
#include "runtime/family.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using kiln::test::TempDir;
using nlohmann::json;
using namespace kiln::tuner;

json provenance() {
  return {{"gpu", "NVIDIA H100 80GB HBM3"}, {"sm_count", 132},       {"driver", "13.0"},
          {"cuda", "13.0"},                 {"nvrtc", "13.0"},       {"kiln_version", "0.1.0"},
          {"date", "2026-11-25T23:00:00Z"}, {"host", "node-1"}};
}

// Three valid entries of different families and kernels.
std::vector<json> valid_entries() {
  return {
      {{"family", "rms_norm"},
       {"kernel", "fwd"},
       {"arch", "sm_90a"},
       {"params", {{"N", 2048}, {"dtype", 0}, {"w_dtype", 0}, {"dw_dtype", 0}}},
       {"tokens", 4096},
       {"config", {{"warps", 4}, {"rows", 0}, {"stages", 0}}},
       {"median_us", 12.5},
       {"default_us", 13.1},
       {"provenance", provenance()}},
      {{"family", "rms_norm_block_quant"},
       {"kernel", "tile"},
       {"arch", "sm_90a"},
       {"params", {{"N", 2048}, {"mode", 2}, {"round_scale", 1}, {"w_f32", 0}}},
       {"tokens", 8192},
       {"config", {{"warps", 0}, {"col_blocks", 1}, {"prefetch", 0}, {"stages", 0}, {"overlap", 0}, {"exchange", 0}}},
       {"median_us", 38.7},
       {"default_us", 41.2},
       {"provenance", provenance()}},
      {{"family", "rms_norm"},
       {"kernel", "bwd"},
       {"arch", "sm_100a"},
       {"params", {{"N", 4096}, {"dtype", 0}, {"w_dtype", 0}, {"dw_dtype", 0}}},
       {"tokens", 1024},
       {"config", {{"warps", 0}, {"rows", 4}, {"stages", 1}}},
       {"median_us", 80},
       {"default_us", 80},
       {"provenance", provenance()}},
  };
}

// A file whose layout is known: the header on lines 1–2, entry i on line 3 + i, the closing line after them.
std::string file_text(const std::vector<json>& entries, const std::string& header_extra = "") {
  std::string text = "{\"schema\": \"kiln-tuning\", \"version\": 1," + header_extra + "\n \"entries\": [\n";
  for (size_t i = 0; i < entries.size(); ++i) text += "  " + entries[i].dump() + (i + 1 < entries.size() ? ",\n" : "\n");
  return text + "]}\n";
}

std::string valid_text() { return file_text(valid_entries()); }

// The message of the InvalidArgument that parsing `text` throws ("" if it parses).
std::string load_error(const std::string& text) {
  try {
    TuningDb::parse(text, "tuning.json");
  } catch (const kiln::InvalidArgument& e) {
    return e.what();
  }
  return "";
}

TuningEntry entry(const std::string& family, const std::string& kernel, int64_t N, uint64_t tokens, NamedValues config,
                  double median_us) {
  TuningEntry e;
  e.key = {family, kernel, "sm_90a", {{"N", N}, {"dtype", 0}, {"w_dtype", 0}, {"dw_dtype", 0}}, tokens};
  e.config = std::move(config);
  e.median_us = median_us;
  e.default_us = median_us * 1.1;
  e.provenance.gpu = "H100";
  return e;
}

TuningDb db_of(std::vector<TuningEntry> entries) {
  TuningDb db{std::move(entries)};
  db.sort_entries();
  return db;
}


// ---- round trip and canonical form -------------------------------------------------------------------------------

TEST(TuningDb, ParsesEveryField) {
  const TuningDb db = TuningDb::parse(valid_text(), "tuning.json");
  ASSERT_EQ(db.entries.size(), 3u);
  // Sorted by key: family, then kernel.
  EXPECT_EQ(db.entries[0].key.kernel, "bwd");
  EXPECT_EQ(db.entries[1].key.kernel, "fwd");
  const TuningEntry& q = db.entries[2];
  EXPECT_EQ(q.key.family, "rms_norm_block_quant");
  EXPECT_EQ(q.key.kernel, "tile");
  EXPECT_EQ(q.key.arch, "sm_90a");
  EXPECT_EQ(q.key.params, (NamedValues{{"N", 2048}, {"mode", 2}, {"round_scale", 1}, {"w_f32", 0}}));
  EXPECT_EQ(q.key.tokens, 8192u);
  EXPECT_EQ(q.config, (NamedValues{{"warps", 0}, {"col_blocks", 1}, {"prefetch", 0}, {"stages", 0}, {"overlap", 0}, {"exchange", 0}}));
  EXPECT_DOUBLE_EQ(q.median_us, 38.7);
  EXPECT_DOUBLE_EQ(q.default_us, 41.2);
  EXPECT_EQ(q.provenance.gpu, "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(q.provenance.sm_count, 132);
  EXPECT_EQ(q.provenance.host, "node-1");
  EXPECT_NEAR(q.gain_percent(), (41.2 / 38.7 - 1) * 100, 1e-9);
  EXPECT_EQ(db.find(q.key), &db.entries[2]);
  TuningKey other = q.key;
  other.tokens = 4096;
  EXPECT_EQ(db.find(other), nullptr);
}

TEST(TuningDb, RoundTripThroughAFile) {
  const TempDir dir;
  const std::string path = (dir.path() / "tuning.json").string();
  const TuningDb db = TuningDb::parse(valid_text(), "tuning.json");
  db.save(path);
  const TuningDb back = TuningDb::load(path);
  EXPECT_EQ(back.entries, db.entries);
  // Atomic save leaves no temp file behind, and overwriting works.
  db.save(path);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
}

TEST(TuningDb, CanonicalSaveIsStable) {
  const std::string once = TuningDb::parse(valid_text(), "a.json").to_json();
  const std::string twice = TuningDb::parse(once, "b.json").to_json();
  EXPECT_EQ(once, twice);
  // The order of entries in the input does not matter.
  std::vector<json> reversed = valid_entries();
  std::reverse(reversed.begin(), reversed.end());
  EXPECT_EQ(TuningDb::parse(file_text(reversed), "c.json").to_json(), once);
  // Fields are written in the documented order, params in the family's declared order.
  EXPECT_LT(once.find("\"schema\""), once.find("\"entries\""));
  const size_t tile = once.find("\"tile\"");
  ASSERT_NE(tile, std::string::npos);
  EXPECT_LT(once.find("\"N\"", tile), once.find("\"mode\"", tile));
  EXPECT_LT(once.find("\"mode\"", tile), once.find("\"w_f32\"", tile));
}

// Provenance::timing: absent for warm timing (every file before `kiln tune --cold-code`, and still what warm runs
// write), "cold-code" otherwise; it survives a save and load and takes part in an entry's equality.
TEST(TuningDb, TimingRoundTripsAndIsOptional) {
  std::vector<json> entries = valid_entries();
  entries[1]["provenance"]["timing"] = "cold-code";
  const TuningDb db = TuningDb::parse(file_text(entries), "tuning.json");
  const TuningEntry& q = db.entries[2];  // entries[1], sorted last
  EXPECT_EQ(q.key.family, "rms_norm_block_quant");
  EXPECT_EQ(q.provenance.timing, kTimingColdCode);
  EXPECT_EQ(db.entries[0].provenance.timing, "");
  const std::string text = db.to_json();
  EXPECT_EQ(TuningDb::parse(text, "b.json").entries, db.entries);
  // Only the cold entry carries the field: a warm file's bytes are what they were before the field existed.
  size_t n = 0;
  for (size_t at = text.find("\"timing\""); at != std::string::npos; at = text.find("\"timing\"", at + 1)) ++n;
  EXPECT_EQ(n, 1u);
  EXPECT_EQ(TuningDb::parse(valid_text(), "a.json").to_json().find("timing"), std::string::npos);
  TuningEntry warm = q;
  warm.provenance.timing.clear();
  EXPECT_NE(warm, q);
}

TEST(TuningDb, TokenBucket) {
  EXPECT_EQ(token_bucket(-5), 1u);
  EXPECT_EQ(token_bucket(0), 1u);
  EXPECT_EQ(token_bucket(1), 1u);
  EXPECT_EQ(token_bucket(2), 2u);
  EXPECT_EQ(token_bucket(3), 4u);
  EXPECT_EQ(token_bucket(1024), 1024u);
  EXPECT_EQ(token_bucket(1025), 2048u);
  EXPECT_EQ(token_bucket(8191), 8192u);
  EXPECT_EQ(token_bucket((int64_t{1} << 40) + 1), uint64_t{1} << 41);
}

// ---- merge and diff ----------------------------------------------------------------------------------------------

TEST(TuningDb, MergeKeepsTheFasterAndSaysWhich) {
  const TuningDb a = db_of({entry("rms_norm", "fwd", 1024, 1024, {{"warps", 4}, {"rows", 0}, {"stages", 0}}, 10.0),
                            entry("rms_norm", "fwd", 2048, 1024, {{"warps", 8}, {"rows", 0}, {"stages", 0}}, 20.0),
                            entry("rms_norm", "fwd", 4096, 1024, {{"warps", 8}, {"rows", 0}, {"stages", 0}}, 30.0)});
  const TuningDb b = db_of({entry("rms_norm", "fwd", 2048, 1024, {{"warps", 4}, {"rows", 0}, {"stages", 0}}, 15.0),
                            entry("rms_norm", "fwd", 4096, 1024, {{"warps", 4}, {"rows", 0}, {"stages", 0}}, 30.0),
                            entry("rms_norm", "bwd", 2048, 1024, {{"warps", 0}, {"rows", 2}, {"stages", 1}}, 50.0)});
  const MergeResult r = merge(a, b);
  ASSERT_EQ(r.db.entries.size(), 4u);  // one only in a, one only in b, two shared
  ASSERT_EQ(r.decisions.size(), 2u);

  const MergeDecision& faster_b = r.decisions[0];  // N=2048 sorts before N=4096
  EXPECT_EQ(faster_b.key.params[0].second, 2048);
  EXPECT_FALSE(faster_b.kept_first);
  EXPECT_EQ(faster_b.why(), "second is faster (15.00 µs vs 20.00 µs)");
  const TuningEntry* kept = r.db.find(faster_b.key);
  ASSERT_NE(kept, nullptr);
  EXPECT_DOUBLE_EQ(kept->median_us, 15.0);
  EXPECT_EQ(kept->config[0].second, 4);

  const MergeDecision& tie = r.decisions[1];
  EXPECT_TRUE(tie.kept_first);
  EXPECT_EQ(tie.why(), "tie at 30.00 µs: kept the first");
  EXPECT_EQ(r.db.find(tie.key)->config[0].second, 8);  // a's config

  // Keys in one input only are kept as they are.
  EXPECT_NE(r.db.find(a.entries[1].key), nullptr);
  EXPECT_NE(r.db.find(b.entries[0].key), nullptr);
  // Merging is symmetric in what it keeps, except for ties.
  const MergeResult swapped = merge(b, a);
  EXPECT_DOUBLE_EQ(swapped.db.find(faster_b.key)->median_us, 15.0);
  EXPECT_EQ(swapped.db.find(tie.key)->config[0].second, 4);  // b's, now first
}

// Times taken warm and with cold instruction caches are not compared: the second entry is taken, whichever is faster.
TEST(TuningDb, MergeAcrossTimingsTakesTheSecond) {
  TuningEntry warm = entry("rms_norm", "fwd", 2048, 1024, {{"warps", 4}, {"rows", 0}, {"stages", 0}}, 10.0);
  TuningEntry cold = entry("rms_norm", "fwd", 2048, 1024, {{"warps", 8}, {"rows", 0}, {"stages", 0}}, 12.0);
  cold.provenance.timing = kTimingColdCode;
  const MergeResult r = merge(db_of({warm}), db_of({cold}));
  ASSERT_EQ(r.decisions.size(), 1u);
  EXPECT_FALSE(r.decisions[0].kept_first);
  EXPECT_EQ(r.decisions[0].why(), "timed differently (first warm, second cold-code): took the second");
  EXPECT_EQ(r.db.entries.at(0), cold);
  const MergeResult back = merge(db_of({cold}), db_of({warm}));
  EXPECT_EQ(back.db.entries.at(0), warm);
  EXPECT_EQ(back.decisions.at(0).why(), "timed differently (first cold-code, second warm): took the second");
  // Both cold: the faster, as for warm entries.
  TuningEntry cold2 = warm;
  cold2.provenance.timing = kTimingColdCode;
  const MergeResult both = merge(db_of({cold}), db_of({cold2}));
  EXPECT_EQ(both.db.entries.at(0), cold2);
  EXPECT_EQ(both.decisions.at(0).why(), "second is faster (10.00 µs vs 12.00 µs)");
}

TEST(TuningDb, DiffReportsAddedRemovedAndChangedOutsideTheNoiseBand) {
  const auto fwd = [](int64_t N, int warps, double us) {
    return entry("rms_norm", "fwd", N, 1024, {{"warps", warps}, {"rows", 0}, {"stages", 0}}, us);
  };
  const TuningDb before = db_of({fwd(1024, 4, 10.0), fwd(2048, 4, 20.0), fwd(4096, 4, 30.0), fwd(8192, 4, 40.0)});
  TuningDb after = db_of({fwd(2048, 4, 20.5),    // +2.5 %: noise
                          fwd(4096, 8, 30.0),    // config changed, same time
                          fwd(8192, 4, 42.0),    // +5 %: changed
                          fwd(16384, 4, 50.0)});  // new
  after.entries[0].provenance.host = "another node";  // provenance never counts as a change
  const TuningDiff d = diff(before, after);
  ASSERT_EQ(d.added.size(), 1u);
  EXPECT_EQ(d.added[0].key.params[0].second, 16384);
  ASSERT_EQ(d.removed.size(), 1u);
  EXPECT_EQ(d.removed[0].key.params[0].second, 1024);
  ASSERT_EQ(d.changed.size(), 2u);
  EXPECT_EQ(d.changed[0].after.key.params[0].second, 4096);
  EXPECT_TRUE(d.changed[0].config_changed);
  EXPECT_EQ(d.changed[1].after.key.params[0].second, 8192);
  EXPECT_FALSE(d.changed[1].config_changed);
  EXPECT_NEAR(d.changed[1].time_change_percent, 5.0, 1e-9);
  EXPECT_FALSE(d.empty());

  EXPECT_TRUE(diff(before, before).empty());
  const TuningDb faster = db_of({fwd(1024, 4, 9.0), fwd(2048, 4, 20.0), fwd(4096, 4, 30.0), fwd(8192, 4, 40.0)});
  EXPECT_EQ(diff(before, faster).changed.size(), 1u);  // −10 % is outside the band in either direction
}

// ---- strict loading ----------------------------------------------------------------------------------------------

// The valid file with entry 2 (line 5) replaced by `e`.
std::string with_entry2(const json& e) {
  std::vector<json> entries = valid_entries();
  entries[2] = e;
  return file_text(entries);
}

json entry2() { return valid_entries()[2]; }

struct StrictCase {
  const char* name;
  std::string text;
  std::string expected_prefix;  // file:line: path
  std::string expected_detail;  // further text the message must hold
};

std::vector<StrictCase> strict_cases() {
  std::vector<StrictCase> cases;
  auto add_entry_case = [&](const char* name, json e, const std::string& path, const std::string& detail) {
    cases.push_back({name, with_entry2(e), "tuning.json:5: " + path, detail});
  };
  json e;

  std::string t = valid_text();
  cases.push_back({"unknown schema", t.replace(t.find("kiln-tuning"), 11, "kiln-tunin"), "tuning.json:1: schema",
                   "expected \"kiln-tuning\""});
  t = valid_text();
  cases.push_back({"unknown version", t.replace(t.find("\"version\": 1"), 12, "\"version\": 2"),
                   "tuning.json:1: version", "unsupported version 2"});
  cases.push_back({"unknown top-level field", file_text(valid_entries(), "\n \"comment\": \"hi\","),
                   "tuning.json:2: comment", "unknown field"});
  t = valid_text();
  cases.push_back({"missing entries", "{\"schema\": \"kiln-tuning\", \"version\": 1}", "tuning.json:1: ",
                   "missing field \"entries\""});
  cases.push_back({"entries not an array", "{\"schema\": \"kiln-tuning\", \"version\": 1,\n \"entries\": {}}",
                   "tuning.json:2: entries", "expected an array"});
  cases.push_back({"top level not an object", "[1, 2]", "tuning.json:1: ", "expected a JSON object"});
  t = valid_text();
  cases.push_back({"syntax error", t.replace(t.find("},\n  {") + 1, 1, ""), "tuning.json:4: ", "invalid JSON"});
  t = valid_text();
  cases.push_back({"duplicate JSON field", t.replace(t.rfind("\"tokens\""), 0, "\"tokens\": 2, "),
                   "tuning.json:5: entries[2].tokens", "duplicate field"});

  add_entry_case("entry not an object", 5, "entries[2]", "expected an object, got 5");
  e = entry2();
  e["colour"] = "blue";
  add_entry_case("unknown entry field", e, "entries[2].colour", "unknown field");
  e = entry2();
  e.erase("config");
  add_entry_case("missing entry field", e, "entries[2]", "missing field \"config\"");
  e = entry2();
  e["family"] = "flash_attention";
  add_entry_case("unknown family", e, "entries[2].family", "unknown family \"flash_attention\"");
  e = entry2();
  e["family"] = 7;
  add_entry_case("family not a string", e, "entries[2].family", "expected a string, got 7");
  e = entry2();
  e["kernel"] = "tile";
  add_entry_case("unknown kernel", e, "entries[2].kernel", "unknown kernel \"tile\" of rms_norm");
  e = entry2();
  e["arch"] = "gfx942";
  add_entry_case("bad arch", e, "entries[2].arch", "got \"gfx942\"");
  e = entry2();
  e["arch"] = "sm_0100a";
  add_entry_case("non-canonical arch", e, "entries[2].arch", "expected \"sm_100a\"");
  e = entry2();
  e["params"].erase("dw_dtype");
  add_entry_case("missing param", e, "entries[2].params", "missing parameter \"dw_dtype\"");
  e = entry2();
  e["params"]["K"] = 1;
  add_entry_case("extra param", e, "entries[2].params.K", "unknown parameter");
  e = entry2();
  e["params"]["N"] = true;
  add_entry_case("boolean param", e, "entries[2].params.N", "expected an integer, got true");
  e = entry2();
  e["params"] = json::array();
  add_entry_case("params not an object", e, "entries[2].params", "expected an object");
  e = entry2();
  e["config"]["rows"] = "x";
  add_entry_case("string config", e, "entries[2].config.rows", "expected an integer, got \"x\"");
  e = entry2();
  e["config"]["rows"] = 1.5;
  add_entry_case("float config", e, "entries[2].config.rows", "expected an integer, got 1.5");
  e = entry2();
  e["config"]["rows"] = -1;
  add_entry_case("negative config", e, "entries[2].config.rows", "expected an integer in [0, 2147483647]");
  e = entry2();
  e["config"]["rows"] = 4294967296LL;
  add_entry_case("config beyond int32", e, "entries[2].config.rows", "expected an integer in [0, 2147483647]");
  e = entry2();
  e["config"]["cluster"] = 2;
  add_entry_case("extra config", e, "entries[2].config.cluster", "unknown config field");
  e = entry2();
  e["config"].erase("warps");
  add_entry_case("missing config", e, "entries[2].config", "missing config field \"warps\"");
  e = entry2();
  e["tokens"] = 1000;
  add_entry_case("tokens not a power of two", e, "entries[2].tokens", "expected a power of two");
  e = entry2();
  e["tokens"] = 0;
  add_entry_case("zero tokens", e, "entries[2].tokens", "expected a power of two");
  e = entry2();
  e["median_us"] = -3.0;
  add_entry_case("negative time", e, "entries[2].median_us", "expected a positive time");
  e = entry2();
  e["default_us"] = 0;
  add_entry_case("zero time", e, "entries[2].default_us", "expected a positive time");
  e = entry2();
  e["median_us"] = "fast";
  add_entry_case("time not a number", e, "entries[2].median_us", "expected a time in µs");
  e = entry2();
  e["provenance"]["sm_count"] = "132";
  add_entry_case("provenance type", e, "entries[2].provenance.sm_count", "expected an integer");
  e = entry2();
  e["provenance"].erase("host");
  add_entry_case("provenance missing", e, "entries[2].provenance", "missing field \"host\"");
  e = entry2();
  e["provenance"]["rack"] = 4;
  add_entry_case("provenance extra", e, "entries[2].provenance.rack", "unknown field");
  e = entry2();
  e["provenance"]["timing"] = "warm";  // warm timing is written as no field at all
  add_entry_case("provenance timing value", e, "entries[2].provenance.timing", "expected \"cold-code\"");
  e = entry2();
  e["provenance"]["timing"] = true;
  add_entry_case("provenance timing type", e, "entries[2].provenance.timing", "expected a string, got true");
  // Same key as entry 0 (only the config and time differ).
  e = valid_entries()[0];
  e["config"]["warps"] = 8;
  e["median_us"] = 11.0;
  add_entry_case("duplicate key", e, "entries[2]", "duplicate key: same family, kernel, arch, params and tokens as "
                                                    "entries[0] (line 3)");
  // A NaN cannot be written in JSON; a literal that overflows to infinity is a JSON error of its own.
  t = with_entry2(entry2());
  cases.push_back({"infinite time", t.replace(t.rfind("\"median_us\":80"), 14, "\"median_us\":1e999"),
                   "tuning.json:5: ", "invalid JSON: number overflow parsing '1e999'"});
  return cases;
}

TEST(TuningDbStrict, ValidFileLoads) { EXPECT_EQ(load_error(valid_text()), ""); }

TEST(TuningDbStrict, EveryProblemNamesFileLineAndField) {
  const std::vector<StrictCase> cases = strict_cases();
  EXPECT_GE(cases.size(), 30u);
  for (const StrictCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string message = load_error(c.text);
    EXPECT_EQ(message.rfind(c.expected_prefix, 0), 0u) << "message: " << message << "\nexpected prefix: "
                                                       << c.expected_prefix << "\ntext:\n" << c.text;
    EXPECT_NE(message.find(c.expected_detail), std::string::npos) << "message: " << message;
  }
}

TEST(TuningDbStrict, LineNumbersSurviveTrickyStringsAndPrettyPrinting) {
  // Quotes, braces and commas inside strings must not confuse the line scanner.
  std::vector<json> entries = valid_entries();
  entries[1]["provenance"]["host"] = "a\"},{[,\\\"]\n";
  entries[2]["config"]["rows"] = "x";
  EXPECT_EQ(load_error(file_text(entries)).rfind("tuning.json:5: entries[2].config.rows:", 0), 0u)
      << load_error(file_text(entries));

  // In the canonical (pretty-printed) form, the line is where the offending entry's object starts.
  entries[2]["config"]["rows"] = 4;
  std::string text = TuningDb::parse(file_text(entries), "x").to_json();
  const size_t bad = text.find("\"rows\": 4");  // rms_norm bwd, sorted first: entries[0]
  ASSERT_NE(bad, std::string::npos);
  text.replace(bad, 9, "\"rows\": 4.5");
  const size_t start = text.rfind("    {", bad);
  const int line = 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<ptrdiff_t>(start), '\n'));
  EXPECT_GT(line, 4);
  const std::string message = load_error(text);
  EXPECT_EQ(message.rfind(fmt::format("tuning.json:{}: entries[0].config.rows: expected an integer, got 4.5", line), 0),
            0u)
      << message;
}

TEST(TuningDbStrict, UnreadableFile) {
  try {
    TuningDb::load("/nonexistent/tuning.json");
    FAIL() << "no error";
  } catch (const kiln::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tuning.json"), std::string::npos) << e.what();
  }
  const std::string dir = std::filesystem::temp_directory_path().string();  // a directory opens and reads as empty
  try {
    TuningDb::load(dir);
    FAIL() << "no error";
  } catch (const kiln::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
}

TEST(TuningDbStrict, EmptyEntriesIsValid) {
  const TuningDb db = TuningDb::parse("{\"schema\": \"kiln-tuning\", \"version\": 1, \"entries\": []}", "x.json");
  EXPECT_TRUE(db.entries.empty());
}

// Any input either loads or throws kiln::Error: never a crash, never another exception type.
TEST(TuningDbFuzz, RandomTruncatedAndMutatedInputs) {
  std::mt19937_64 rng(0x6b696c6e);  // fixed seed: failures reproduce
  const std::string valid = valid_text();
  size_t cases = 0, loaded = 0;
  auto attempt = [&](const std::string& text) {
    ++cases;
    try {
      TuningDb::parse(text, "fuzz.json");
      ++loaded;
    } catch (const kiln::Error&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "non-kiln exception " << e.what() << " for input:\n" << text;
    } catch (...) {
      ADD_FAILURE() << "unknown exception for input:\n" << text;
    }
  };
  for (int i = 0; i < 1000; ++i) {
    std::string text(rng() % 256, '\0');
    for (char& c : text) c = static_cast<char>(rng() & 0xff);
    attempt(text);
  }
  for (size_t n = 0; n < valid.size(); ++n) attempt(valid.substr(0, n));
  // Mutations biased towards JSON's structural characters, which reach deeper into the validator.
  static constexpr char kInteresting[] = "{}[],:\"\\0123456789-.eE tfn\n";
  for (int i = 0; i < 1500; ++i) {
    std::string text = valid;
    const size_t at = rng() % text.size();
    text[at] = rng() % 2 ? static_cast<char>(rng() & 0xff) : kInteresting[rng() % (sizeof kInteresting - 1)];
    attempt(text);
  }
  EXPECT_GE(cases, 3000u);
  EXPECT_GT(loaded, 0u);  // some mutations (inside strings, whitespace) keep the file valid
}

// ---- conversion to the runtime's Specialization ------------------------------------------------------------------

TuningEntry entry_for(const kiln::detail::Specialization& s, uint64_t tokens) {
  TuningEntry e = kiln::tuner::to_entry(s, tokens);
  e.median_us = e.default_us = 1.0;
  return e;
}

TEST(TuningDb, ToSpecializationMatchesWhatTheFamilyBuilds) {
  kiln::ModelConfig model;
  model.hidden_size = 2048;
  size_t checked = 0;
  for (const char* name : {"rms_norm_block_quant", "rms_norm"}) {
    const kiln::detail::FamilyDef* family = kiln::detail::find_family(name);
    ASSERT_NE(family, nullptr) << name;
    std::vector<kiln::detail::Specialization> specs;
    family->enumerate(model, kiln::detail::Arch::parse("sm_90a"), specs);
    ASSERT_FALSE(specs.empty()) << name;
    for (const auto& s : specs) {
      kiln::detail::Specialization back;
      ASSERT_TRUE(to_specialization(entry_for(s, 8192), back)) << s.describe();
      EXPECT_EQ(back.key(), s.key()) << s.describe();
      EXPECT_EQ(back.describe(), s.describe());
      EXPECT_EQ(back.arch, s.arch);
      ++checked;
    }
  }
  EXPECT_GE(checked, 6u);
}

TEST(TuningDb, ToSpecializationRejectsWhatTheBuildLacks) {
  kiln::ModelConfig model;
  model.hidden_size = 2048;
  std::vector<kiln::detail::Specialization> specs;
  kiln::detail::find_family("rms_norm")->enumerate(model, kiln::detail::Arch::parse("sm_90a"), specs);
  const TuningEntry good = entry_for(specs.at(0), 1024);
  kiln::detail::Specialization s;
  TuningEntry e = good;
  e.key.family = "flash_attention";
  EXPECT_FALSE(to_specialization(e, s));
  e = good;
  e.key.kernel = "tile";
  EXPECT_FALSE(to_specialization(e, s));
  e = good;
  std::swap(e.key.params[0], e.key.params[1]);
  EXPECT_FALSE(to_specialization(e, s));
  e = good;
  e.config.pop_back();
  EXPECT_FALSE(to_specialization(e, s));
  e = good;
  e.key.arch = "gfx942";
  EXPECT_FALSE(to_specialization(e, s));
  EXPECT_TRUE(to_specialization(good, s));
}

}  // namespace

namespace kiln::tuner {
namespace {

// A config outside the family's search space (col_blocks must divide N/128 = 16; fwd has no 3-warp point) is
// rejected at load time with the line, the field and the valid choices.
TEST(TuningDbStrict, ConfigOutsideTheSearchSpaceIsRejected) {
  std::vector<json> entries = valid_entries();
  entries[1]["config"]["col_blocks"] = 3;
  std::string err = load_error(file_text(entries));
  EXPECT_NE(err.find("tuning.json:4: entries[1].config"), std::string::npos) << err;
  EXPECT_NE(err.find("col_blocks=1"), std::string::npos) << err;  // lists the valid points
  entries = valid_entries();
  entries[0]["config"]["warps"] = 3;
  err = load_error(file_text(entries));
  EXPECT_NE(err.find("tuning.json:3: entries[0].config"), std::string::npos) << err;
}

}  // namespace
}  // namespace kiln::tuner
