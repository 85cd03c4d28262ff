// tools/kiln.cpp — the `kiln` command line: prewarm a model's kernels, maintain the cubin cache and tuning files, list presets, bench.
//
// A thin face over the library: each command is a few library calls plus formatting. Exit codes: 0 success,
// 1 failure (the library or the OS said no), 2 bad usage (the command line itself is wrong).
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "cache/cubin_cache.hpp"
#include "kiln/kiln.hpp"
#include "runtime/bench.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "tuner/tuner.hpp"
#include "tuner/tuning_db.hpp"

namespace {

using ordered_json = nlohmann::ordered_json;

constexpr const char* kUsage = R"(usage: kiln <command> [options]

commands:
  prewarm --model <preset|file> --arch sm_90a[,sm_100a] [--cache-dir DIR] [--jobs N] [--json]
      Compile (or find in the cache) every kernel specialization a model needs. Needs no GPU.
      --model takes a preset name (see `kiln presets`), a kiln preset file, or a Hugging Face config.json
      (or the model directory holding it).

  prewarm ... [--families a,b]   only those kernel families (with --model)

  prewarm --tuning FILE [--arch sm_90a[,sm_100a]] [--cache-dir DIR] [--jobs N] [--json]
      Compile (or find in the cache) exactly the tuned configs of a tuning file (only those for --arch, if
      given). --model and --tuning are mutually exclusive.

  tune --model <preset|file> --out FILE [--tokens 1024,4096,8192] [--budget-s N] [--spec-budget-s N]
       [--families a,b] [--repeats N] [--jobs N] [--cold-code] [--json]
      Measure every tile config of each tunable specialization the model needs, at each token count, on this
      GPU; keep the fastest one whose outputs match the default config's (ties within max(3 %, 0.5 µs) go to the
      default) and write the tuning file (replacing FILE). Prints per specialization the default and best µs,
      the gain and the rejected candidates, then the gain per family. --budget-s bounds the whole run (default:
      none), --spec-budget-s each specialization and token count (default 60). --cold-code evicts every SM's
      instruction caches before each timed call, as bench --cold-code does (the entries record it as "timing":
      "cold-code"; a merge never compares them with warm ones). Needs a GPU.

  resolve --model <preset|file> --arch sm_90a [--tokens 1024,4096,8192] [--families a,b] [--tuning FILES]
          [--cache-dir DIR] [--json]
      What each op of the model would run at each token count: the tile config the tuning files
      (--tuning, else $KILN_TUNING_DB, ':'-separated) or the heuristic pick, and its cubin fetched from the
      cache (compiled if missing; $KILN_REQUIRE_PREWARMED=1 makes a miss an error). Launches nothing; needs no
      GPU. The summary counts compiles, cache hits and online tunes.

  tuning show FILE [--json]            the entries of a tuning file, with their gain over the default config
  tuning merge A B --out OUT           merge two files; for a key in both, keep the faster entry (says which)
  tuning diff A B [--json]             added, removed and changed entries; exit 0 if none, 1 if any
  tuning import FILE --into PATH       validate FILE and install it at PATH (merged with PATH if it exists)
  tuning export --out OUT [FILE...]    merge FILEs (default: the ':'-separated $KILN_TUNING_DB) into one file
      Tuning files are loaded strictly: any problem exits 1 naming file:line and the field.
      A change is a different config, or a median time moved by more than 3 % (the noise band).

  cache ls|stats|verify|prune|clear [--cache-dir DIR] [--json]
      ls       every entry: group, key, size, last use, parameters
      stats    entry count and size, per arch and per family
      verify   check every entry's checksum; exit 1 if any is bad (--remove deletes the bad ones)
      prune    drop least-recently-used entries until the cache fits --max-mb N (default $KILN_CACHE_MAX_MB)
      clear    remove every entry
      The cache is --cache-dir, else $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln.

  presets [--json]
      List the built-in model presets and their dimensions.

  bench [--json FILE] [--filter S[|S…]] [--repeats N] [--cold-code]
      Time every benchmark case (or those whose "op shape" contains S; an S ending in '$' must end it) on
      the GPU, as a share of the device-to-device copy bandwidth measured in the same run; --json writes
      the results to FILE. --cold-code also runs, before every timed call, a kernel of ~320 KB of code on
      every SM, so that the timed kernel's code is in no instruction cache (as after other kernels).

  help, --help       show this help
  --version          print kiln's version
)";

int print_usage() {
  fmt::print("{}", kUsage);
  return 0;
}

// The command line is wrong: exit 2 and show the usage.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The options of one command: "--name value", "--name=value", flags, and positional arguments.
class Args {
 public:
  Args(std::string_view command, std::span<const std::string_view> argv,
       std::initializer_list<std::string_view> valued, std::initializer_list<std::string_view> flags)
      : command_(command) {
    auto known = [](std::initializer_list<std::string_view> names, std::string_view n) {
      return std::find(names.begin(), names.end(), n) != names.end();
    };
    for (size_t i = 0; i < argv.size(); ++i) {
      const std::string_view arg = argv[i];
      if (arg == "--") {
        positional_.insert(positional_.end(), argv.begin() + i + 1, argv.end());
        break;
      }
      if (arg == "--help" || arg == "-h") {
        help_ = true;
        continue;
      }
      if (!arg.starts_with("-") || arg == "-") {
        positional_.emplace_back(arg);
        continue;
      }
      const size_t eq = arg.find('=');
      const std::string_view name = arg.substr(0, eq);
      if (known(valued, name)) {
        if (eq != std::string_view::npos) {
          values_[std::string(name)] = arg.substr(eq + 1);
        } else if (i + 1 < argv.size() && !argv[i + 1].starts_with("--")) {
          values_[std::string(name)] = argv[++i];
        } else {
          throw UsageError(fmt::format("{}: option {} needs a value", command_, name));
        }
      } else if (known(flags, name)) {
        if (eq != std::string_view::npos) throw UsageError(fmt::format("{}: option {} takes no value", command_, name));
        values_[std::string(name)] = "";
      } else {
        throw UsageError(fmt::format("{}: unknown option '{}'", command_, name));
      }
    }
  }

  bool help() const { return help_; }
  bool has(std::string_view name) const { return values_.count(std::string(name)) > 0; }
  std::optional<std::string> value(std::string_view name) const {
    auto it = values_.find(std::string(name));
    return it == values_.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
  std::string required(std::string_view name) const {
    std::optional<std::string> v = value(name);
    if (!v || v->empty()) throw UsageError(fmt::format("{}: {} is required", command_, name));
    return *v;
  }
  // An integer option in [min, max]; `fallback` if absent.
  int integer(std::string_view name, int min, int max, int fallback) const {
    std::optional<std::string> v = value(name);
    return v ? parse_integer(fmt::format("{} {}", command_, name), *v, min, max) : fallback;
  }
  const std::vector<std::string>& positional() const { return positional_; }
  void no_positional() const {
    if (!positional_.empty()) throw UsageError(fmt::format("{}: unexpected argument '{}'", command_, positional_[0]));
  }

  static int parse_integer(std::string_view what, std::string_view text, int min, int max) {
    int v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size() || v < min || v > max)
      throw UsageError(fmt::format("{}: expected an integer in [{}, {}], got '{}'", what, min, max, text));
    return v;
  }

 private:
  std::string command_;
  bool help_ = false;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// A plain-text table: columns sized to their widest cell, numbers right-aligned.
class Table {
 public:
  Table(std::vector<std::string> header, std::vector<bool> right_aligned)
      : header_(std::move(header)), right_(std::move(right_aligned)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void print(std::FILE* out) const {
    std::vector<size_t> width(header_.size());
    for (size_t c = 0; c < header_.size(); ++c) width[c] = header_[c].size();
    for (const auto& row : rows_)
      for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], display_width(row[c]));
    print_row(out, header_, width);
    for (const auto& row : rows_) print_row(out, row, width);
  }

 private:
  // Cells are ASCII except for the odd "µ" or "…": count UTF-8 code points, not bytes.
  static size_t display_width(const std::string& s) {
    return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char ch) { return (ch & 0xC0) != 0x80; }));
  }
  void print_row(std::FILE* out, const std::vector<std::string>& row, const std::vector<size_t>& width) const {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      const std::string pad(width[c] - display_width(row[c]), ' ');
      if (c) line += "  ";
      line += right_[c] ? pad + row[c] : (c + 1 == row.size() ? row[c] : row[c] + pad);
    }
    fmt::print(out, "{}\n", line);
  }

  std::vector<std::string> header_;
  std::vector<bool> right_;
  std::vector<std::vector<std::string>> rows_;
};

std::string mib(uint64_t bytes) { return fmt::format("{:.1f}", static_cast<double>(bytes) / (1 << 20)); }
std::string kib(uint64_t bytes) { return fmt::format("{:.1f}", static_cast<double>(bytes) / (1 << 10)); }

std::vector<std::string> split_list(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (!item.empty()) out.emplace_back(item);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return out;
}

std::string join(const std::vector<std::string>& items, std::string_view sep) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : std::string(sep)) + s;
  return out;
}

// ---- prewarm -----------------------------------------------------------------------------------------------------

// A one-line progress bar on stderr, redrawn as each specialization finishes. The library may report from its
// compile workers, hence the lock.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled) {}
  ~ProgressBar() { finish(); }

  static void on_entry(const kiln::PrewarmEntry& e, size_t done, size_t total, void* self) {
    static_cast<ProgressBar*>(self)->draw(e, done, total);
  }
  void finish() {
    std::lock_guard lock(mutex_);
    if (drawn_) fmt::print(stderr, "\r\033[K");
    drawn_ = false;
  }

 private:
  void draw(const kiln::PrewarmEntry& e, size_t done, size_t total) {
    if (!enabled_ || total == 0) return;
    std::lock_guard lock(mutex_);
    constexpr size_t kWidth = 30;
    const size_t filled = kWidth * std::min(done, total) / total;
    std::string what = fmt::format("{} {} {}", e.family, e.params, e.arch);
    if (what.size() > 60) what = what.substr(0, 59) + "…";
    fmt::print(stderr, "\r\033[K[{}{}] {}/{} {}", std::string(filled, '#'), std::string(kWidth - filled, '.'), done,
               total, what);
    std::fflush(stderr);
    drawn_ = true;
  }

  bool enabled_;
  bool drawn_ = false;
  std::mutex mutex_;
};

int cmd_prewarm(std::span<const std::string_view> argv) {
  const Args args("prewarm", argv, {"--model", "--tuning", "--arch", "--cache-dir", "--jobs", "--families"}, {"--json"});
  if (args.help()) return print_usage();
  args.no_positional();
  const std::optional<std::string> tuning_file = args.value("--tuning");
  if (tuning_file && args.has("--model")) throw UsageError("prewarm: --model and --tuning are mutually exclusive");
  if (tuning_file && args.has("--families")) throw UsageError("prewarm: --families goes with --model");
  const std::vector<std::string> families = split_list(args.value("--families").value_or(""));
  if (tuning_file && tuning_file->empty()) throw UsageError("prewarm: --tuning needs a file");
  // A tuning file names its archs; --arch only narrows it. A model needs them spelled out.
  const std::vector<std::string> archs =
      tuning_file && !args.has("--arch") ? std::vector<std::string>{} : split_list(args.required("--arch"));
  if (archs.empty() && args.has("--arch")) throw UsageError("prewarm: --arch needs at least one arch, e.g. sm_90a");
  const int jobs = args.integer("--jobs", 0, 1024, 0);
  const bool json = args.has("--json");

  std::string source;  // what was prewarmed: the model's name or the tuning file
  std::optional<kiln::ModelConfig> model;
  if (tuning_file) {
    source = *tuning_file;
  } else {
    model = kiln::load_model(args.required("--model"));
    source = model->name;
  }
  kiln::RuntimeOptions options;
  options.cache_dir = args.value("--cache-dir").value_or("");
  kiln::Runtime rt(options);

  const auto start = std::chrono::steady_clock::now();
  std::vector<kiln::PrewarmEntry> entries;
  {
    ProgressBar progress(isatty(STDERR_FILENO) != 0);
    entries = tuning_file ? rt.prewarm_tuning(*tuning_file, archs, jobs, &ProgressBar::on_entry, &progress)
                          : rt.prewarm(*model, archs, jobs, &ProgressBar::on_entry, &progress, families);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::map<std::string, size_t> by_status;
  for (const auto& e : entries) ++by_status[e.status];
  const std::string cache_dir = rt.cache_dir();

  if (json) {
    ordered_json out;
    out["entries"] = ordered_json::array();
    for (const auto& e : entries)
      out["entries"].push_back({{"family", e.family}, {"key", e.key}, {"arch", e.arch}, {"params", e.params},
                                {"status", e.status}, {"compile_ms", e.compile_ms}, {"cubin_bytes", e.cubin_bytes},
                                {"code_bytes", e.code_bytes}});
    out["summary"] = {{tuning_file ? "tuning" : "model", source}, {"archs", archs},
                      {"total", entries.size()},      {"compiled", by_status["compiled"]},
                      {"hits", by_status["hit"]},     {"rebuilt", by_status["rebuilt"]},
                      {"seconds", seconds},           {"cache_dir", cache_dir}};
    fmt::print("{}\n", out.dump(2));
    return 0;
  }

  Table table({"family", "params", "arch", "status", "compile ms", "cubin KiB", "code KiB"},
              {false, false, false, false, true, true, true});
  for (const auto& e : entries)
    table.add({e.family, e.params, e.arch, e.status, e.status == "hit" ? "-" : fmt::format("{:.1f}", e.compile_ms),
               kib(e.cubin_bytes), kib(e.code_bytes)});
  table.print(stdout);
  fmt::print("prewarm {}: {} specializations for {} — {} compiled, {} hits, {} rebuilt in {:.2f} s (cache: {})\n",
             source, entries.size(), archs.empty() ? "every arch in the file" : join(archs, ", "), by_status["compiled"], by_status["hit"],
             by_status["rebuilt"], seconds, cache_dir.empty() ? "memory only" : cache_dir);
  return 0;
}

// ---- tuning ------------------------------------------------------------------------------------------------------

std::string named_values(const kiln::tuner::NamedValues& values) {
  std::string out;
  for (const auto& [name, value] : values) out += fmt::format("{}{}={}", out.empty() ? "" : " ", name, value);
  return out;
}

ordered_json key_json(const kiln::tuner::TuningKey& k) {
  ordered_json params = ordered_json::object();
  for (const auto& [name, value] : k.params) params[name] = value;
  return {{"family", k.family}, {"kernel", k.kernel}, {"arch", k.arch}, {"params", params}, {"tokens", k.tokens}};
}

ordered_json entry_json(const kiln::tuner::TuningEntry& e) {
  ordered_json out = key_json(e.key);
  ordered_json config = ordered_json::object();
  for (const auto& [name, value] : e.config) config[name] = value;
  out["config"] = config;
  out["median_us"] = e.median_us;
  out["default_us"] = e.default_us;
  out["gain_percent"] = e.gain_percent();
  out["gpu"] = e.provenance.gpu;
  out["timing"] = e.provenance.timing.empty() ? "warm" : e.provenance.timing;
  return out;
}

int tuning_show(const std::string& file, bool json) {
  const kiln::tuner::TuningDb db = kiln::tuner::TuningDb::load(file);
  if (json) {
    ordered_json out = {{"file", file}, {"entries", ordered_json::array()}};
    for (const auto& e : db.entries) out["entries"].push_back(entry_json(e));
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  Table table({"family", "kernel", "arch", "params", "tokens", "config", "median µs", "default µs", "gain %"},
              {false, false, false, false, true, false, true, true, true});
  for (const auto& e : db.entries)
    table.add({e.key.family, e.key.kernel, e.key.arch, named_values(e.key.params), std::to_string(e.key.tokens),
               named_values(e.config), fmt::format("{:.2f}", e.median_us), fmt::format("{:.2f}", e.default_us),
               fmt::format("{:+.1f}", e.gain_percent())});
  table.print(stdout);
  const auto cold = std::count_if(db.entries.begin(), db.entries.end(),
                                  [](const auto& e) { return e.provenance.timing == kiln::tuner::kTimingColdCode; });
  fmt::print("{} entries in {}{}\n", db.entries.size(), file,
             cold ? fmt::format(" ({} timed with cold instruction caches)", cold) : "");
  return 0;
}

// Merges `second` into `first`, printing which entry was taken for every key both have.
kiln::tuner::TuningDb merge_reporting(const kiln::tuner::TuningDb& first, const std::string& first_name,
                                      const kiln::tuner::TuningDb& second, const std::string& second_name) {
  kiln::tuner::MergeResult merged = kiln::tuner::merge(first, second);
  for (const auto& d : merged.decisions)
    fmt::print("{}: took {} — {}\n", d.key.describe(), d.kept_first ? first_name : second_name, d.why());
  return std::move(merged.db);
}

int tuning_diff(const std::string& before_file, const std::string& after_file, bool json) {
  const auto before = kiln::tuner::TuningDb::load(before_file);
  const auto after = kiln::tuner::TuningDb::load(after_file);
  const kiln::tuner::TuningDiff d = kiln::tuner::diff(before, after);
  if (json) {
    ordered_json out = {{"identical", d.empty()},
                        {"added", ordered_json::array()},
                        {"removed", ordered_json::array()},
                        {"changed", ordered_json::array()}};
    for (const auto& e : d.added) out["added"].push_back(entry_json(e));
    for (const auto& e : d.removed) out["removed"].push_back(entry_json(e));
    for (const auto& c : d.changed)
      out["changed"].push_back({{"before", entry_json(c.before)},
                                {"after", entry_json(c.after)},
                                {"config_changed", c.config_changed},
                                {"time_change_percent", c.time_change_percent}});
    fmt::print("{}\n", out.dump(2));
  } else {
    for (const auto& e : d.added)
      fmt::print("+ {}: {} ({:.2f} µs)\n", e.key.describe(), named_values(e.config), e.median_us);
    for (const auto& e : d.removed)
      fmt::print("- {}: {} ({:.2f} µs)\n", e.key.describe(), named_values(e.config), e.median_us);
    for (const auto& c : d.changed)
      fmt::print("~ {}: {} → {}, {:.2f} → {:.2f} µs ({:+.1f} %)\n", c.after.key.describe(), named_values(c.before.config),
                 named_values(c.after.config), c.before.median_us, c.after.median_us, c.time_change_percent);
    fmt::print("{} added, {} removed, {} changed (noise band ±{:.0f} %)\n", d.added.size(), d.removed.size(),
               d.changed.size(), kiln::tuner::kNoiseBand * 100);
  }
  return d.empty() ? 0 : 1;
}

int cmd_tuning(std::span<const std::string_view> argv) {
  const Args args("tuning", argv, {"--out", "--into"}, {"--json"});
  if (args.help()) return print_usage();
  const std::vector<std::string>& pos = args.positional();
  if (pos.empty()) throw UsageError("tuning: missing subcommand (show|merge|diff|import|export)");
  const std::string& sub = pos[0];
  const std::vector<std::string> files(pos.begin() + 1, pos.end());
  auto expect_files = [&](size_t n, const char* what) {
    if (files.size() != n) throw UsageError(fmt::format("tuning {}: expected {}", sub, what));
  };
  auto only_for = [&](std::string_view option, std::initializer_list<std::string_view> subs) {
    if (args.has(option) && std::find(subs.begin(), subs.end(), sub) == subs.end())
      throw UsageError(fmt::format("tuning {}: unknown option '{}'", sub, option));
  };
  only_for("--json", {"show", "diff"});
  only_for("--out", {"merge", "export"});
  only_for("--into", {"import"});

  if (sub == "show") {
    expect_files(1, "one FILE");
    return tuning_show(files[0], args.has("--json"));
  }
  if (sub == "diff") {
    expect_files(2, "two files, A B");
    return tuning_diff(files[0], files[1], args.has("--json"));
  }
  if (sub == "merge") {
    expect_files(2, "two files, A B");
    const std::string out = args.required("--out");
    const auto a = kiln::tuner::TuningDb::load(files[0]);
    const auto b = kiln::tuner::TuningDb::load(files[1]);
    const kiln::tuner::TuningDb merged = merge_reporting(a, files[0], b, files[1]);
    merged.save(out);
    fmt::print("merged {} + {} entries into {} entries in {}\n", a.entries.size(), b.entries.size(),
               merged.entries.size(), out);
    return 0;
  }
  if (sub == "import") {
    expect_files(1, "one FILE");
    const std::string into = args.required("--into");
    // Validate the new file before touching the installed one: a bad file must never replace a good one.
    const auto incoming = kiln::tuner::TuningDb::load(files[0]);
    kiln::tuner::TuningDb result = incoming;
    if (std::filesystem::exists(into))
      result = merge_reporting(kiln::tuner::TuningDb::load(into), into, incoming, files[0]);
    result.save(into);
    fmt::print("imported {} entries from {} into {} ({} entries)\n", incoming.entries.size(), files[0], into,
               result.entries.size());
    return 0;
  }
  if (sub == "export") {
    const std::string out = args.required("--out");
    std::vector<std::string> inputs = files;
    if (inputs.empty())
      if (const char* env = std::getenv("KILN_TUNING_DB"))
        for (std::string_view rest = env; !rest.empty();) {
          const size_t colon = rest.find(':');
          if (colon != 0) inputs.emplace_back(rest.substr(0, colon));
          if (colon == std::string_view::npos) break;
          rest.remove_prefix(colon + 1);
        }
    if (inputs.empty()) throw UsageError("tuning export: no FILE given and $KILN_TUNING_DB is empty");
    kiln::tuner::TuningDb merged = kiln::tuner::TuningDb::load(inputs[0]);
    std::string merged_name = inputs[0];
    for (size_t i = 1; i < inputs.size(); ++i) {
      merged = merge_reporting(merged, merged_name, kiln::tuner::TuningDb::load(inputs[i]), inputs[i]);
      merged_name = "earlier files";
    }
    merged.save(out);
    fmt::print("exported {} entries from {} files into {}\n", merged.entries.size(), inputs.size(), out);
    return 0;
  }
  throw UsageError(fmt::format("tuning: unknown subcommand '{}' (show|merge|diff|import|export)", sub));
}

// ---- tune / resolve ----------------------------------------------------------------------------------------------

std::vector<int64_t> parse_tokens(const std::string& text) {
  std::vector<int64_t> out;
  for (const std::string& item : split_list(text)) out.push_back(Args::parse_integer("--tokens", item, 1, 1 << 30));
  if (out.empty()) throw UsageError("--tokens: expected a comma list of token counts, e.g. 1024,4096,8192");
  return out;
}

double parse_seconds(std::string_view what, const std::string& text) {
  double v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || !(v > 0))
    throw UsageError(fmt::format("{}: expected a positive number of seconds, got '{}'", what, text));
  return v;
}

std::string short_status(const kiln::tuner::CandidateResult& c) {
  std::string s = c.status;
  if (s.size() > 160) s = s.substr(0, 157) + "...";
  return s;
}

int cmd_tune(std::span<const std::string_view> argv) {
  const Args args("tune", argv,
                  {"--model", "--out", "--tokens", "--budget-s", "--spec-budget-s", "--families", "--repeats", "--jobs"},
                  {"--json", "--cold-code"});
  if (args.help()) return print_usage();
  args.no_positional();
  const kiln::ModelConfig model = kiln::load_model(args.required("--model"));
  const std::string out = args.required("--out");
  const std::vector<int64_t> tokens = parse_tokens(args.value("--tokens").value_or("1024,4096,8192"));
  kiln::tuner::TuneOptions opts;
  if (auto v = args.value("--budget-s")) opts.run_budget_s = parse_seconds("tune --budget-s", *v);
  if (auto v = args.value("--spec-budget-s")) opts.spec_budget_s = parse_seconds("tune --spec-budget-s", *v);
  opts.repeats = args.integer("--repeats", 20, 100000, opts.repeats);
  opts.compile_jobs = args.integer("--jobs", 0, 1024, 0);
  opts.cold_code = args.has("--cold-code");
  const std::vector<std::string> families = split_list(args.value("--families").value_or(""));
  for (const std::string& f : families)
    if (!kiln::detail::find_family(f)) throw UsageError(fmt::format("tune: unknown family '{}'", f));
  const bool json = args.has("--json");

  kiln::RuntimeOptions options;
  options.autotune = false;
  kiln::Runtime rt(options);
  const kiln::detail::Arch arch = rt.impl().target_arch();  // binds the GPU (DeviceError without one)
  std::vector<kiln::detail::Specialization> specs;
  for (const kiln::detail::FamilyDef* f : kiln::detail::families()) {
    if (!f->enumerate || (!families.empty() && std::find(families.begin(), families.end(), f->name) == families.end()))
      continue;
    std::vector<kiln::detail::Specialization> part;
    f->enumerate(model, arch, part);
    specs.insert(specs.end(), part.begin(), part.end());
  }
  specs = kiln::tuner::unique_tunable(specs);
  if (specs.empty()) throw kiln::Error(fmt::format("tune: {} has no tunable specialization", model.name));
  if (!json)
    fmt::print("tuning {} specializations of {} on {} ({} SMs, {}) at tokens {}{}\n", specs.size(), model.name,
               rt.impl().device().name, rt.impl().device().sm_count, arch.name(),
               join([&] {
                 std::vector<std::string> t;
                 for (int64_t m : tokens) t.push_back(std::to_string(m));
                 return t;
               }(), ","),
               opts.cold_code ? "; instruction caches evicted before every timed call (--cold-code)" : "");

  if (!json) {
    size_t candidates = 0;
    for (const auto& s : specs) {
      std::vector<kiln::detail::Specialization> space;
      s.family->search_space(s, space);
      candidates += space.size();
    }
    fmt::print("compiling {} candidate configs (cached ones load), then timing each at every token count\n",
               candidates);
    std::fflush(stdout);
  }
  const auto start = std::chrono::steady_clock::now();
  auto print_result = [&](const kiln::tuner::TuneResult& r) {
    if (json) return;
    const std::string shape = r.base.describe();  // "[kernel ]params | config"
    const std::string what = fmt::format("{} {}", r.base.family->name, shape.substr(0, shape.find(" |")));
    if (r.unused) {
      fmt::print("{} tokens={}: skipped: {}\n", what, r.tokens, r.note);
    } else if (!r.has_entry) {
      fmt::print("{} tokens={}: no entry: {}\n", what, r.tokens, r.note);
    } else {
      const auto& w = r.candidates[r.winner];
      fmt::print("{} tokens={}: default {:.2f} µs, best {:.2f} µs ({:+.1f} %) with {}{}; {} candidates, {} rejected "
                 "({:.1f} s)\n",
                 what, r.tokens, r.default_us, r.best_us, r.gain_percent(), w.label, r.winner == 0 ? " (default)" : "",
                 r.candidates.size(), r.rejected(), r.seconds);
      if (!r.note.empty()) fmt::print("    note: {}\n", r.note);
    }
    for (const auto& c : r.candidates)
      if (!c.ok() && c.status.rfind("skipped", 0) != 0)
        fmt::print("    rejected {}: {}{}\n", c.label, short_status(c),
                   c.us > 0 ? fmt::format(" (would have run {:.2f} µs)", c.us) : "");
    std::fflush(stdout);
  };
  // The file is rewritten after every measured specialization, so that a run cut short keeps what it measured.
  kiln::tuner::TuningDb db;
  auto on_result = [&](const kiln::tuner::TuneResult& r) {
    print_result(r);
    if (!r.has_entry) return;
    kiln::tuner::TuningDb one;
    one.entries.push_back(r.entry);
    db = kiln::tuner::merge(db, one).db;  // a key seen twice keeps the faster entry, never fails the run
    db.save(out);
  };
  const std::vector<kiln::tuner::TuneResult> results = kiln::tuner::tune(rt, specs, tokens, opts, on_result);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (db.entries.empty()) throw kiln::Error("tune: no specialization could be measured; nothing written");

  struct FamilyGain {
    size_t entries = 0, changed = 0, rejected = 0;
    double default_us = 0, best_us = 0, log_gain = 0;
  };
  std::map<std::string, FamilyGain> per_family;
  for (const auto& r : results) {
    if (!r.has_entry) continue;
    FamilyGain& g = per_family[r.base.family->name];
    ++g.entries;
    g.changed += r.winner != 0;
    g.rejected += r.rejected();
    g.default_us += r.default_us;
    g.best_us += r.best_us;
    g.log_gain += std::log(r.default_us / r.best_us);
  }
  if (json) {
    ordered_json j = {{"model", model.name},
                      {"out", out},
                      {"cold_code", opts.cold_code},
                      {"seconds", seconds},
                      {"results", ordered_json::array()},
                      {"families", ordered_json::object()}};
    for (const auto& r : results) {
      ordered_json c = ordered_json::array();
      for (const auto& cand : r.candidates)
        c.push_back({{"config", cand.label}, {"us", cand.us}, {"status", cand.status}, {"default", cand.is_default}});
      j["results"].push_back({{"family", r.base.family->name},
                              {"kernel", r.base.family->kernels.at(r.base.kernel)},
                              {"specialization", r.base.describe()},
                              {"tokens", r.tokens},
                              {"has_entry", r.has_entry},
                              {"unused", r.unused},
                              {"default_us", r.default_us},
                              {"best_us", r.best_us},
                              {"gain_percent", r.gain_percent()},
                              {"config", r.has_entry ? r.candidates[r.winner].label : ""},
                              {"rejected", r.rejected()},
                              {"note", r.note},
                              {"seconds", r.seconds},
                              {"candidates", c}});
    }
    for (const auto& [name, g] : per_family)
      j["families"][name] = {{"entries", g.entries},
                             {"changed", g.changed},
                             {"rejected", g.rejected},
                             {"default_us", g.default_us},
                             {"best_us", g.best_us},
                             {"geomean_gain_percent", (std::exp(g.log_gain / g.entries) - 1) * 100}};
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  fmt::print("\n");
  Table table({"family", "entries", "non-default", "rejected", "default µs", "tuned µs", "total gain %", "geomean gain %"},
              {false, true, true, true, true, true, true, true});
  for (const auto& [name, g] : per_family)
    table.add({name, std::to_string(g.entries), std::to_string(g.changed), std::to_string(g.rejected),
               fmt::format("{:.1f}", g.default_us), fmt::format("{:.1f}", g.best_us),
               fmt::format("{:+.1f}", (g.default_us / g.best_us - 1) * 100),
               fmt::format("{:+.1f}", (std::exp(g.log_gain / g.entries) - 1) * 100)});
  table.print(stdout);
  fmt::print("wrote {} entries to {} in {:.1f} s\n", db.entries.size(), out, seconds);
  return 0;
}

int cmd_resolve(std::span<const std::string_view> argv) {
  const Args args("resolve", argv, {"--model", "--arch", "--tokens", "--families", "--tuning", "--cache-dir"},
                  {"--json"});
  if (args.help()) return print_usage();
  args.no_positional();
  const kiln::ModelConfig model = kiln::load_model(args.required("--model"));
  const std::string arch = args.required("--arch");
  const std::vector<int64_t> tokens = parse_tokens(args.value("--tokens").value_or("1024,4096,8192"));
  const std::vector<std::string> families = split_list(args.value("--families").value_or(""));
  kiln::RuntimeOptions options;
  options.cache_dir = args.value("--cache-dir").value_or("");
  options.tuning_db = args.value("--tuning").value_or("");
  kiln::Runtime rt(options);
  const std::vector<kiln::ResolvedEntry> entries = rt.resolve(model, tokens, arch, families);
  const kiln::RuntimeStats st = rt.stats();
  const size_t tuned = static_cast<size_t>(std::count_if(entries.begin(), entries.end(), [](const auto& e) {
    return e.source.rfind("tuned", 0) == 0;
  }));
  if (args.has("--json")) {
    ordered_json j = {{"entries", ordered_json::array()}};
    for (const auto& e : entries)
      j["entries"].push_back({{"family", e.family}, {"kernel", e.kernel}, {"arch", e.arch}, {"params", e.params},
                              {"tokens", e.tokens}, {"config", e.config}, {"source", e.source}, {"key", e.key},
                              {"status", e.status}});
    j["summary"] = {{"model", model.name}, {"entries", entries.size()}, {"tuned", tuned},
                    {"heuristic", entries.size() - tuned}, {"compiles", st.compiles}, {"disk_hits", st.disk_hits},
                    {"tunes", st.tunes}, {"tuning_files", rt.impl().tuning_files}};
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  Table table({"family", "kernel", "params", "tokens", "config", "source", "cubin"},
              {false, false, false, true, false, false, false});
  for (const auto& e : entries)
    table.add({e.family, e.kernel, e.params, std::to_string(e.tokens), e.config, e.source, e.status});
  table.print(stdout);
  fmt::print("resolve {} on {}: {} (specialization, tokens) pairs, {} tuned, {} heuristic; {} compiles, {} cache "
             "hits, {} tunes\n",
             model.name, arch, entries.size(), tuned, entries.size() - tuned, st.compiles, st.disk_hits, st.tunes);
  return 0;
}

// ---- cache -------------------------------------------------------------------------------------------------------

std::string format_time(int64_t unix_seconds) {
  if (unix_seconds <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &tm);
  return buf;
}

// "<arch>/<family>" → {arch, family}.
std::pair<std::string, std::string> split_group(const std::string& group) {
  const size_t slash = group.find('/');
  if (slash == std::string::npos) return {group, ""};
  return {group.substr(0, slash), group.substr(slash + 1)};
}

// What an entry was compiled for: the runtime's "describe" line, else its "params" object as "name=value …".
std::string manifest_params(const nlohmann::json& manifest) {
  if (!manifest.is_object()) return "(manifest unreadable)";
  if (auto it = manifest.find("describe"); it != manifest.end() && it->is_string()) return it->get<std::string>();
  std::string out;
  if (auto it = manifest.find("params"); it != manifest.end() && it->is_object())
    for (const auto& [name, value] : it->items()) out += fmt::format("{}{}={}", out.empty() ? "" : " ", name, value.dump());
  return out;
}

uint64_t total_bytes(const std::vector<kiln::cache::EntryInfo>& entries) {
  uint64_t sum = 0;
  for (const auto& e : entries) sum += e.bytes;
  return sum;
}

int cache_ls(kiln::cache::CubinCache& cache, bool json) {
  std::vector<kiln::cache::EntryInfo> entries = cache.list();
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return std::tie(a.group, a.key) < std::tie(b.group, b.key); });
  if (json) {
    ordered_json out = ordered_json::array();
    for (const auto& e : entries)
      out.push_back({{"group", e.group}, {"key", e.key}, {"bytes", e.bytes}, {"last_used", e.last_used},
                     // ordered_json and json do not convert into each other; a round trip through text does.
                     {"manifest", ordered_json::parse(e.manifest.dump())}});
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  Table table({"group", "key", "KiB", "last used", "params"}, {false, false, true, false, false});
  for (const auto& e : entries)
    table.add({e.group, e.key, kib(e.bytes), format_time(e.last_used), manifest_params(e.manifest)});
  table.print(stdout);
  fmt::print("{} entries, {} MiB in {}\n", entries.size(), mib(total_bytes(entries)), cache.root());
  return 0;
}

int cache_stats(kiln::cache::CubinCache& cache, bool json) {
  const std::vector<kiln::cache::EntryInfo> entries = cache.list();
  struct Tally {
    size_t entries = 0;
    uint64_t bytes = 0;
  };
  std::map<std::string, Tally> by_arch, by_family;
  for (const auto& e : entries) {
    const auto [arch, family] = split_group(e.group);
    for (Tally* t : {&by_arch[arch], &by_family[family]}) {
      ++t->entries;
      t->bytes += e.bytes;
    }
  }
  if (json) {
    auto tallies = [](const std::map<std::string, Tally>& m) {
      ordered_json o = ordered_json::object();
      for (const auto& [name, t] : m) o[name] = {{"entries", t.entries}, {"bytes", t.bytes}};
      return o;
    };
    ordered_json out = {{"root", cache.root()},        {"entries", entries.size()},
                        {"bytes", total_bytes(entries)}, {"by_arch", tallies(by_arch)},
                        {"by_family", tallies(by_family)}};
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  fmt::print("cache {}: {} entries, {} MiB\n", cache.root(), entries.size(), mib(total_bytes(entries)));
  for (const auto& [title, tallies] : {std::pair{"arch", &by_arch}, std::pair{"family", &by_family}}) {
    if (tallies->empty()) continue;
    fmt::print("\n");
    Table table({title, "entries", "MiB"}, {false, true, true});
    for (const auto& [name, t] : *tallies) table.add({name, std::to_string(t.entries), mib(t.bytes)});
    table.print(stdout);
  }
  return 0;
}

int cache_verify(kiln::cache::CubinCache& cache, bool remove, bool json) {
  const kiln::cache::VerifyReport report = cache.verify(remove);
  if (json) {
    ordered_json out = {{"root", cache.root()}, {"ok", report.ok}, {"bad", report.bad}, {"removed", remove}};
    fmt::print("{}\n", out.dump(2));
  } else {
    for (const std::string& bad : report.bad) fmt::print("bad: {}\n", bad);
    fmt::print("verified {} entries in {}: {} ok, {} bad{}\n", report.ok + report.bad.size(), cache.root(), report.ok,
               report.bad.size(), report.bad.empty() ? "" : remove ? " (removed)" : " (run with --remove to delete)");
  }
  return report.bad.empty() ? 0 : 1;
}

int cache_prune(kiln::cache::CubinCache& cache, const Args& args, bool json) {
  std::optional<std::string> max_mb_text = args.value("--max-mb");
  std::string what = "cache prune --max-mb";
  if (!max_mb_text) {
    if (const char* env = std::getenv("KILN_CACHE_MAX_MB"); env && *env) {
      max_mb_text = env;
      what = "KILN_CACHE_MAX_MB";
    }
  }
  if (!max_mb_text) throw UsageError("cache prune: needs --max-mb N (or KILN_CACHE_MAX_MB)");
  const int max_mb = Args::parse_integer(what, *max_mb_text, 0, 1 << 30);
  const uint64_t max_bytes = static_cast<uint64_t>(max_mb) << 20;

  const uint64_t before = total_bytes(cache.list());
  const size_t removed = cache.prune(max_bytes);
  const uint64_t after = total_bytes(cache.list());
  if (json) {
    ordered_json out = {{"root", cache.root()},     {"removed", removed},          {"bytes_before", before},
                        {"bytes_after", after},     {"max_bytes", max_bytes}};
    fmt::print("{}\n", out.dump(2));
  } else {
    fmt::print("pruned {} entries from {}: {} MiB → {} MiB (limit {} MiB)\n", removed, cache.root(), mib(before),
               mib(after), max_mb);
  }
  return 0;
}

int cmd_cache(std::span<const std::string_view> argv) {
  const Args args("cache", argv, {"--cache-dir", "--max-mb"}, {"--json", "--remove"});
  if (args.help()) return print_usage();
  if (args.positional().size() != 1)
    throw UsageError(args.positional().empty() ? "cache: missing subcommand (ls|stats|verify|prune|clear)"
                                               : "cache: takes exactly one subcommand");
  const std::string sub = args.positional()[0];
  static constexpr std::string_view kSubcommands[] = {"ls", "stats", "verify", "prune", "clear"};
  if (std::find(std::begin(kSubcommands), std::end(kSubcommands), sub) == std::end(kSubcommands))
    throw UsageError(fmt::format("cache: unknown subcommand '{}' (ls|stats|verify|prune|clear)", sub));
  if (args.has("--max-mb") && sub != "prune") throw UsageError("cache: --max-mb belongs to 'cache prune'");
  if (args.has("--remove") && sub != "verify") throw UsageError("cache: --remove belongs to 'cache verify'");
  const bool json = args.has("--json");

  // Maintenance never creates the cache: a mistyped --cache-dir left directories behind. A cache that does not exist
  // holds no entries (every subcommand reports none, with a warning).
  const std::string root = args.value("--cache-dir").value_or(kiln::cache::default_cache_root());
  std::error_code ec;
  const bool missing = !root.empty() && !std::filesystem::exists(root, ec);
  kiln::cache::CubinCache cache(root, /*create=*/false);
  if (!cache.enabled()) {
    const std::string problem = fmt::format("cache {} is unusable: {}", cache.root(), cache.disabled_reason());
    const bool writes = sub == "prune" || sub == "clear" || (sub == "verify" && args.has("--remove"));
    if (writes && !missing) throw kiln::CacheError(problem);
    fmt::print(stderr, "kiln: warning: {}\n", problem);
  }

  if (sub == "ls") return cache_ls(cache, json);
  if (sub == "stats") return cache_stats(cache, json);
  if (sub == "verify") return cache_verify(cache, args.has("--remove"), json);
  if (sub == "prune") return cache_prune(cache, args, json);
  const size_t removed = cache.clear();
  if (json) {
    fmt::print("{}\n", ordered_json({{"root", cache.root()}, {"removed", removed}}).dump(2));
  } else {
    fmt::print("removed {} entries from {}\n", removed, cache.root());
  }
  return 0;
}

// ---- presets -----------------------------------------------------------------------------------------------------

int cmd_presets(std::span<const std::string_view> argv) {
  const Args args("presets", argv, {}, {"--json"});
  if (args.help()) return print_usage();
  args.no_positional();

  std::vector<kiln::ModelConfig> models;
  for (const std::string& name : kiln::preset_names()) models.push_back(kiln::load_model(name));
  if (args.has("--json")) {
    ordered_json out = ordered_json::array();
    for (const auto& m : models)
      out.push_back({{"name", m.name},
                     {"hidden_size", m.hidden_size},
                     {"num_attention_heads", m.num_attention_heads},
                     {"num_key_value_heads", m.num_key_value_heads},
                     {"head_dim", m.head_dim},
                     {"intermediate_size", m.intermediate_size},
                     {"moe_intermediate_size", m.moe_intermediate_size},
                     {"num_experts", m.num_experts},
                     {"num_experts_per_tok", m.num_experts_per_tok},
                     {"num_shared_experts", m.num_shared_experts},
                     {"vocab_size", m.vocab_size},
                     {"rms_norm_eps", m.rms_norm_eps}});
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  Table table({"preset", "hidden", "heads", "kv heads", "head dim", "ffn", "experts", "top-k", "shared", "expert ffn",
               "vocab"},
              {false, true, true, true, true, true, true, true, true, true, true});
  for (const auto& m : models)
    table.add({m.name, std::to_string(m.hidden_size), std::to_string(m.num_attention_heads),
               std::to_string(m.num_key_value_heads), std::to_string(m.head_dim), std::to_string(m.intermediate_size),
               std::to_string(m.num_experts), std::to_string(m.num_experts_per_tok),
               std::to_string(m.num_shared_experts), std::to_string(m.moe_intermediate_size),
               std::to_string(m.vocab_size)});
  table.print(stdout);
  return 0;
}

// ---- bench -------------------------------------------------------------------------------------------------------

int cmd_bench(std::span<const std::string_view> argv) {
  const Args args("bench", argv, {"--json", "--filter", "--repeats"}, {"--cold-code"});
  if (args.help()) return print_usage();
  args.no_positional();
  kiln::detail::BenchOptions options;
  options.filter = args.value("--filter").value_or("");
  options.repeats = args.integer("--repeats", 1, 100000, options.repeats);
  options.cold_code = args.has("--cold-code");
  const std::optional<std::string> json_path = args.value("--json");

  // Rows are printed as each case finishes (a full run takes minutes), so size the columns from every case up front.
  size_t op_width = 2, shape_width = 5;
  for (const auto& c : kiln::detail::bench_cases()) {
    op_width = std::max(op_width, c.op.size());
    shape_width = std::max(shape_width, c.shape.size());
  }
  bool header_printed = false;
  auto print_row = [&](const kiln::detail::BenchResult& r) {
    if (!header_printed) {
      fmt::print("{:<{}}  {:<{}}  {:>9}  {:>8}  {:>7}  {:>11}  {:>7}\n", "op", op_width, "shape", shape_width, "us",
                 "GB/s", "% copy", "baseline us", "speedup");
      header_printed = true;
    }
    const bool has_baseline = r.baseline_us > 0;
    fmt::print("{:<{}}  {:<{}}  {:>9.2f}  {:>8.1f}  {:>7.1f}  {:>11}  {:>7}\n", r.op, op_width, r.shape, shape_width,
               r.us, r.gbps, r.pct_copy_bw,
               has_baseline ? fmt::format("{:.2f}", r.baseline_us) : r.baseline.empty() ? "-" : "n/a",
               has_baseline ? fmt::format("{:.2f}x", r.baseline_us / r.us) : "-");
    std::fflush(stdout);
  };

  kiln::Runtime rt;
  const kiln::detail::BenchReport report = kiln::detail::run_benchmarks(rt, options, print_row);
  fmt::print("device: {}, driver {}, cuda {}; device-to-device copy {:.0f} GB/s; empty kernel {:.2f} us (every row "
             "includes it){}\n",
             report.device, report.driver, report.cuda, report.copy_gbps, report.empty_kernel_us,
             report.cold_code ? "; instruction caches evicted before every timed call (--cold-code)" : "");
  if (report.results.empty() && report.failures.empty())
    throw kiln::Error(options.filter.empty() ? "no bench cases are registered"
                                             : fmt::format("no bench case matches '{}'", options.filter));

  if (json_path) {
    ordered_json out = {{"device", report.device}, {"driver", report.driver}, {"cuda", report.cuda},
                        {"copy_gbps", report.copy_gbps}, {"empty_kernel_us", report.empty_kernel_us},
                        {"cold_code", report.cold_code}, {"cases", ordered_json::array()}};
    for (const auto& r : report.results)
      out["cases"].push_back({{"op", r.op}, {"shape", r.shape}, {"us", r.us}, {"bytes", r.bytes}, {"gbps", r.gbps},
                              {"pct_copy_bw", r.pct_copy_bw}, {"baseline_us", r.baseline_us},
                              {"baseline", r.baseline}});
    const std::filesystem::path path(*json_path);
    if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
    std::ofstream file(path);
    file << out.dump(2) << "\n";
    if (!file.flush()) throw kiln::Error(fmt::format("cannot write {}", path.string()));
    fmt::print("wrote {}\n", path.string());
  }
  if (!report.failures.empty()) {
    fmt::print(stderr, "kiln: {} bench case(s) failed:\n", report.failures.size());
    for (const auto& f : report.failures) fmt::print(stderr, "  {}\n", f);
    return 1;
  }
  return 0;
}

int dispatch(std::span<const std::string_view> args) {
  if (args.empty()) throw UsageError("missing command");
  const std::string_view command = args[0];
  const auto rest = args.subspan(1);
  if (command == "help" || command == "--help" || command == "-h") return print_usage();
  if (command == "--version" || command == "version") {
    fmt::print("kiln {}\n", kiln::kVersion);
    return 0;
  }
  if (command == "prewarm") return cmd_prewarm(rest);
  if (command == "cache") return cmd_cache(rest);
  if (command == "tuning") return cmd_tuning(rest);
  if (command == "tune") return cmd_tune(rest);
  if (command == "resolve") return cmd_resolve(rest);
  if (command == "presets") return cmd_presets(rest);
  if (command == "bench") return cmd_bench(rest);
  throw UsageError(fmt::format("unknown command '{}'", command));
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  try {
    return dispatch(args);
  } catch (const UsageError& e) {
    fmt::print(stderr, "kiln: error: {}\n\n{}", e.what(), kUsage);
    return 2;
  } catch (const kiln::CompileError& e) {
    fmt::print(stderr, "kiln: error: {}\n{}", e.what(), e.log());
    if (!e.source_path().empty()) fmt::print(stderr, "kiln: the rendered source is in {}\n", e.source_path());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "kiln: error: {}\n", e.what());
    return 1;
  }
}
