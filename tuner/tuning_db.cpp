#include "tuner/tuning_db.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "kiln/errors.hpp"
#include "runtime/family.hpp"

namespace kiln::tuner {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

constexpr const char* kTopFields[] = {"schema", "version", "entries"};
constexpr const char* kEntryFields[] = {"family", "kernel",     "arch",       "params",    "tokens",
                                        "config", "median_us",  "default_us", "provenance"};
constexpr const char* kProvenanceFields[] = {"gpu", "sm_count", "driver", "cuda", "nvrtc", "kiln_version", "date", "host"};
constexpr const char* kProvenanceOptional[] = {"timing"};

// Where things start in the text: nlohmann's DOM keeps no positions, so messages about a well-formed but wrong file
// get their line numbers from this pass over the (already successfully parsed) text. It also rejects duplicate
// object keys, which nlohmann would silently collapse to the last one.
struct Layout {
  std::vector<int> entry_lines;            // line where each element of the top-level "entries" array starts
  std::map<std::string, int> top_key_lines;  // line of each top-level key
};

[[noreturn]] void fail(const std::string& source, int line, std::string_view path, std::string_view what) {
  throw InvalidArgument(fmt::format("{}:{}: {}{}{}", source, line, path, path.empty() ? "" : ": ", what));
}

Layout scan_layout(std::string_view text, const std::string& source) {
  struct Frame {
    bool array = false;
    std::string path;
    size_t index = 0;            // arrays: current element
    std::string key;             // objects: current key
    std::set<std::string> keys;  // objects: keys seen so far
  };
  Layout layout;
  std::vector<Frame> stack;
  int line = 1;
  bool expect_key = false, in_scalar = false;

  auto value_path = [&]() -> std::string {
    if (stack.empty()) return "";
    const Frame& f = stack.back();
    if (f.array) return fmt::format("{}[{}]", f.path, f.index);
    return f.path.empty() ? f.key : f.path + "." + f.key;
  };
  auto value_starts = [&] {
    if (stack.size() == 2 && stack.back().array && stack.back().path == "entries") layout.entry_lines.push_back(line);
  };

  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"') {
      in_scalar = false;
      const size_t begin = ++i;
      while (i < text.size() && text[i] != '"') i += text[i] == '\\' ? 2 : 1;
      const std::string str(text.substr(begin, std::min(i, text.size()) - begin));
      if (!stack.empty() && !stack.back().array && expect_key) {
        Frame& f = stack.back();
        if (!f.keys.insert(str).second)
          fail(source, line, f.path.empty() ? str : f.path + "." + str, "duplicate field");
        f.key = str;
        if (stack.size() == 1) layout.top_key_lines.emplace(str, line);
        expect_key = false;
      } else {
        value_starts();
      }
      continue;
    }
    switch (c) {
      case '\n':
        ++line;
        [[fallthrough]];
      case ' ':
      case '\t':
      case '\r':
      case ':':
        in_scalar = false;
        break;
      case '{':
      case '[': {
        value_starts();
        Frame f;
        f.array = c == '[';
        f.path = value_path();
        stack.push_back(std::move(f));
        expect_key = c == '{';
        in_scalar = false;
        break;
      }
      case '}':
      case ']':
        if (!stack.empty()) stack.pop_back();
        in_scalar = false;
        break;
      case ',':
        if (!stack.empty()) {
          if (stack.back().array)
            ++stack.back().index;
          else
            expect_key = true;
        }
        in_scalar = false;
        break;
      default:  // first character of a number or literal
        if (!in_scalar) value_starts();
        in_scalar = true;
    }
  }
  return layout;
}

// A short rendering of a value for "got …" in messages.
std::string shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

std::string join_names(const std::vector<const char*>& names) {
  std::string out;
  for (const char* n : names) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

// Validates one parsed document against the schema and the families this build has.
class Validator {
 public:
  Validator(const std::string& source, Layout layout) : source_(source), layout_(std::move(layout)) {}

  TuningDb run(const json& doc) {
    if (!doc.is_object()) fail(source_, 1, "", "expected a JSON object with \"schema\", \"version\" and \"entries\"");
    for (const auto& [name, value] : doc.items())
      if (std::find_if(std::begin(kTopFields), std::end(kTopFields), [&](const char* f) { return name == f; }) ==
          std::end(kTopFields))
        fail(source_, top_line(name), name, "unknown field (expected schema, version, entries)");
    for (const char* f : kTopFields)
      if (!doc.contains(f)) fail(source_, 1, "", fmt::format("missing field \"{}\"", f));

    const json& schema = doc["schema"];
    if (!schema.is_string() || schema.get<std::string>() != kTuningSchema)
      fail(source_, top_line("schema"), "schema", fmt::format("expected \"{}\", got {}", kTuningSchema, shown(schema)));
    const json& version = doc["version"];
    if (!version.is_number_integer() || version.get<int64_t>() != kTuningVersion)
      fail(source_, top_line("version"), "version",
           fmt::format("unsupported version {} (this kiln reads version {})", shown(version), kTuningVersion));
    const json& entries = doc["entries"];
    if (!entries.is_array())
      fail(source_, top_line("entries"), "entries", fmt::format("expected an array, got {}", shown(entries)));

    TuningDb db;
    std::map<TuningKey, size_t> first_index;
    for (size_t i = 0; i < entries.size(); ++i) {
      line_ = i < layout_.entry_lines.size() ? layout_.entry_lines[i] : 1;
      const std::string path = fmt::format("entries[{}]", i);
      TuningEntry e = entry(entries[i], path);
      auto [it, inserted] = first_index.emplace(e.key, i);
      if (!inserted)
        fail(source_, line_, path,
             fmt::format("duplicate key: same family, kernel, arch, params and tokens as entries[{}] (line {})",
                         it->second, layout_.entry_lines.at(it->second)));
      db.entries.push_back(std::move(e));
    }
    db.sort_entries();
    return db;
  }

 private:
  int top_line(const std::string& key) const {
    auto it = layout_.top_key_lines.find(key);
    return it == layout_.top_key_lines.end() ? 1 : it->second;
  }
  [[noreturn]] void bad(const std::string& path, std::string_view what) const { fail(source_, line_, path, what); }

  // `obj` has exactly the fields `names` (none unknown, none missing), and may have any of `optional`.
  void exact_fields(const json& obj, const std::string& path, const std::vector<const char*>& names,
                    std::string_view noun, const std::vector<const char*>& optional = {}) const {
    if (!obj.is_object()) bad(path, fmt::format("expected an object, got {}", shown(obj)));
    auto named = [](const std::vector<const char*>& v, const std::string& name) {
      return std::find_if(v.begin(), v.end(), [&](const char* n) { return name == n; }) != v.end();
    };
    for (const auto& [name, value] : obj.items())
      if (!named(names, name) && !named(optional, name)) {
        std::vector<const char*> all = names;
        all.insert(all.end(), optional.begin(), optional.end());
        bad(path + "." + name, fmt::format("unknown {} (expected {})", noun, join_names(all)));
      }
    for (const char* n : names)
      if (!obj.contains(n)) bad(path, fmt::format("missing {} \"{}\"", noun, n));
  }

  std::string string(const json& v, const std::string& path) const {
    if (!v.is_string()) bad(path, fmt::format("expected a string, got {}", shown(v)));
    return v.get<std::string>();
  }

  int64_t integer(const json& v, const std::string& path, int64_t lo, int64_t hi) const {
    if (!v.is_number_integer()) bad(path, fmt::format("expected an integer, got {}", shown(v)));
    const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(hi)
                                                 : v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
    if (!in_range) bad(path, fmt::format("expected an integer in [{}, {}], got {}", lo, hi, shown(v)));
    return v.get<int64_t>();
  }

  double microseconds(const json& v, const std::string& path) const {
    if (!v.is_number()) bad(path, fmt::format("expected a time in µs, got {}", shown(v)));
    const double us = v.get<double>();
    if (!std::isfinite(us) || !(us > 0)) bad(path, fmt::format("expected a positive time in µs, got {}", shown(v)));
    return us;
  }

  NamedValues named_values(const json& obj, const std::string& path, const std::vector<const char*>& names,
                           std::string_view noun, int64_t lo, int64_t hi) const {
    exact_fields(obj, path, names, noun);
    NamedValues out;
    for (const char* n : names) out.emplace_back(n, integer(obj[n], path + "." + n, lo, hi));
    return out;
  }

  TuningEntry entry(const json& j, const std::string& path) const {
    exact_fields(j, path, {std::begin(kEntryFields), std::end(kEntryFields)}, "field");
    TuningEntry e;
    TuningKey& k = e.key;

    k.family = string(j["family"], path + ".family");
    const detail::FamilyDef* family = detail::find_family(k.family);
    if (!family) {
      std::vector<const char*> known;
      for (const detail::FamilyDef* f : detail::families()) known.push_back(f->name);
      bad(path + ".family", fmt::format("unknown family \"{}\" (this kiln has {})", k.family, join_names(known)));
    }
    k.kernel = string(j["kernel"], path + ".kernel");
    if (std::find_if(family->kernels.begin(), family->kernels.end(), [&](const char* n) { return k.kernel == n; }) ==
        family->kernels.end())
      bad(path + ".kernel",
          fmt::format("unknown kernel \"{}\" of {} (expected {})", k.kernel, k.family, join_names(family->kernels)));
    const std::string arch = string(j["arch"], path + ".arch");
    try {
      k.arch = detail::Arch::parse(arch).name();
    } catch (const InvalidArgument&) {
      bad(path + ".arch", fmt::format("expected an arch like sm_90a or sm_80, got \"{}\"", arch));
    }
    // One spelling per arch, so that keys compare equal exactly when they mean the same target.
    if (k.arch != arch) bad(path + ".arch", fmt::format("expected \"{}\", got \"{}\"", k.arch, arch));
    k.params = named_values(j["params"], path + ".params", family->param_names, "parameter",
                            std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
    const json& tokens = j["tokens"];
    if (!tokens.is_number_unsigned() || !std::has_single_bit(tokens.get<uint64_t>()))
      bad(path + ".tokens", fmt::format("expected a power of two ≥ 1 (a token bucket), got {}", shown(tokens)));
    k.tokens = tokens.get<uint64_t>();

    e.config = named_values(j["config"], path + ".config", family->config_names, "config field", 0,
                            std::numeric_limits<int32_t>::max());
    // The config must be one the family's search space allows for this shape and arch (else it fails only at
    // compile or launch time, far from the file that named it).
    if (detail::Specialization spec; to_specialization(e, spec) && !detail::in_search_space(spec)) {
      std::vector<detail::Specialization> space;
      family->search_space(spec, space);
      std::vector<std::string> valid;
      for (const auto& c : space) {
        std::string v;
        for (size_t i = 0; i < family->config_names.size(); ++i)
          v += fmt::format("{}{}={}", i ? " " : "", family->config_names[i], c.config[i]);
        valid.push_back(v);
      }
      bad(path + ".config", fmt::format("not a valid config of {} {} on {} (valid: {})", k.family, k.kernel, k.arch,
                                        fmt::join(valid, "; ")));
    }
    e.median_us = microseconds(j["median_us"], path + ".median_us");
    e.default_us = microseconds(j["default_us"], path + ".default_us");

    const std::string ppath = path + ".provenance";
    const json& p = j["provenance"];
    exact_fields(p, ppath, {std::begin(kProvenanceFields), std::end(kProvenanceFields)}, "field",
                 {std::begin(kProvenanceOptional), std::end(kProvenanceOptional)});
    Provenance& pv = e.provenance;
    pv.gpu = string(p["gpu"], ppath + ".gpu");
    pv.sm_count = integer(p["sm_count"], ppath + ".sm_count", 0, std::numeric_limits<int32_t>::max());
    pv.driver = string(p["driver"], ppath + ".driver");
    pv.cuda = string(p["cuda"], ppath + ".cuda");
    pv.nvrtc = string(p["nvrtc"], ppath + ".nvrtc");
    pv.kiln_version = string(p["kiln_version"], ppath + ".kiln_version");
    pv.date = string(p["date"], ppath + ".date");
    pv.host = string(p["host"], ppath + ".host");
    if (p.contains("timing")) {
      pv.timing = string(p["timing"], ppath + ".timing");
      if (pv.timing != kTimingColdCode)
        bad(ppath + ".timing", fmt::format("expected \"{}\" (warm timing has no field), got \"{}\"", kTimingColdCode,
                                           pv.timing));
    }
    return e;
  }

  const std::string& source_;
  Layout layout_;
  int line_ = 1;
};

// Builds the DOM exactly as json::parse does, but keeps where an error happened: json::parse reports a position
// for syntax errors only, not for a number that overflows a double (1e999).
class PositionedDomBuilder : public nlohmann::detail::json_sax_dom_parser<json> {
 public:
  explicit PositionedDomBuilder(json& doc) : json_sax_dom_parser(doc, /*allow_exceptions=*/false) {}
  template <class Exception>
  bool parse_error(std::size_t position, const std::string& /*last_token*/, const Exception& e) {
    error_byte = position;
    error = e.what();
    return false;
  }
  size_t error_byte = 0;
  std::string error;
};

ordered_json named_object(const NamedValues& values) {
  ordered_json o = ordered_json::object();
  for (const auto& [name, value] : values) o[name] = value;
  return o;
}

std::string describe_values(const NamedValues& values) {
  std::string out;
  for (const auto& [name, value] : values) out += fmt::format("{}{}={}", out.empty() ? "" : " ", name, value);
  return out;
}

}  // namespace

uint64_t token_bucket(int64_t M) { return M <= 0 ? 1 : std::bit_ceil(static_cast<uint64_t>(M)); }

std::string TuningKey::describe() const {
  return fmt::format("{} {} {} {} tokens={}", family, kernel, arch, describe_values(params), tokens);
}

TuningDb TuningDb::parse(std::string_view text, const std::string& source) {
  json doc;
  PositionedDomBuilder builder(doc);
  if (!json::sax_parse(text, &builder) || !builder.error.empty()) {
    // error_byte counts the characters read, so the offending one is at error_byte - 1.
    const size_t end = std::min(builder.error_byte == 0 ? 0 : builder.error_byte - 1, text.size());
    const int line = 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<ptrdiff_t>(end), '\n'));
    std::string what = builder.error;
    if (const size_t at = what.find("syntax error"); at != std::string::npos) what = what.substr(at);
    if (const size_t at = what.find("number overflow"); at != std::string::npos) what = what.substr(at);
    fail(source, line, "", "invalid JSON: " + what);
  }
  return Validator(source, scan_layout(text, source)).run(doc);
}

TuningDb TuningDb::load(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))  // opens and reads as empty: "invalid JSON" would mislead
    throw InvalidArgument(fmt::format("{}: cannot read tuning file: it is a directory", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InvalidArgument(fmt::format("{}: cannot read tuning file: {}", path, std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  return parse(text.str(), path);
}

std::string TuningDb::to_json() const {
  ordered_json doc = ordered_json::object();
  doc["schema"] = kTuningSchema;
  doc["version"] = kTuningVersion;
  doc["entries"] = ordered_json::array();
  std::vector<const TuningEntry*> sorted;
  for (const TuningEntry& e : entries) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) { return a->key < b->key; });
  for (const TuningEntry* e : sorted) {
    ordered_json j = ordered_json::object();
    j["family"] = e->key.family;
    j["kernel"] = e->key.kernel;
    j["arch"] = e->key.arch;
    j["params"] = named_object(e->key.params);
    j["tokens"] = e->key.tokens;
    j["config"] = named_object(e->config);
    j["median_us"] = e->median_us;
    j["default_us"] = e->default_us;
    const Provenance& p = e->provenance;
    ordered_json pj = ordered_json::object();
    pj["gpu"] = p.gpu;
    pj["sm_count"] = p.sm_count;
    pj["driver"] = p.driver;
    pj["cuda"] = p.cuda;
    pj["nvrtc"] = p.nvrtc;
    pj["kiln_version"] = p.kiln_version;
    pj["date"] = p.date;
    pj["host"] = p.host;
    if (!p.timing.empty()) pj["timing"] = p.timing;
    j["provenance"] = std::move(pj);
    doc["entries"].push_back(std::move(j));
  }
  return doc.dump(2, ' ', false, ordered_json::error_handler_t::replace) + "\n";
}

void TuningDb::save(const std::string& path) const {
  namespace fs = std::filesystem;
  const std::string text = to_json();
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string tmp = (dir / fmt::format(".{}.tmp.XXXXXX", target.filename().string())).string();
  const int fd = mkstemp(tmp.data());
  if (fd < 0) throw Error(fmt::format("cannot write {}: {}", path, std::strerror(errno)));
  auto give_up = [&](const char* step) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(fmt::format("cannot write {} ({}): {}", path, step, std::strerror(err)));
  };
  for (size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) give_up("write");
    done += static_cast<size_t>(n);
  }
  // mkstemp creates 0600; a tuning file is meant to be shared.
  if (::fchmod(fd, 0644) != 0) give_up("chmod");
  if (::fsync(fd) != 0) give_up("fsync");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(fmt::format("cannot write {} (close): {}", path, std::strerror(err)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(fmt::format("cannot write {} (rename): {}", path, std::strerror(err)));
  }
  // Make the rename itself durable; failing to sync the directory loses nothing already visible.
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void TuningDb::sort_entries() {
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
  for (size_t i = 1; i < entries.size(); ++i)
    if (entries[i].key == entries[i - 1].key)
      throw InvalidArgument(fmt::format("tuning database: two entries for {}", entries[i].key.describe()));
}

const TuningEntry* TuningDb::find(const TuningKey& key) const {
  auto it = std::lower_bound(entries.begin(), entries.end(), key,
                             [](const TuningEntry& e, const TuningKey& k) { return e.key < k; });
  return it != entries.end() && it->key == key ? &*it : nullptr;
}

std::string MergeDecision::why() const {
  if (first_timing != second_timing) {
    auto name = [](const std::string& t) { return t.empty() ? std::string("warm") : t; };
    return fmt::format("timed differently (first {}, second {}): took the second", name(first_timing),
                       name(second_timing));
  }
  if (first_us == second_us) return fmt::format("tie at {:.2f} µs: kept the first", first_us);
  return fmt::format("{} is faster ({:.2f} µs vs {:.2f} µs)", kept_first ? "first" : "second",
                     kept_first ? first_us : second_us, kept_first ? second_us : first_us);
}

MergeResult merge(const TuningDb& first, const TuningDb& second) {
  std::map<TuningKey, const TuningEntry*> only_second;
  for (const TuningEntry& e : second.entries) only_second.emplace(e.key, &e);
  MergeResult r;
  for (const TuningEntry& a : first.entries) {
    auto it = only_second.find(a.key);
    if (it == only_second.end()) {
      r.db.entries.push_back(a);
      continue;
    }
    const TuningEntry& b = *it->second;
    const bool same_timing = a.provenance.timing == b.provenance.timing;
    MergeDecision d{a.key, same_timing && a.median_us <= b.median_us, a.median_us, b.median_us, a.provenance.timing,
                    b.provenance.timing};
    r.db.entries.push_back(d.kept_first ? a : b);
    r.decisions.push_back(std::move(d));
    only_second.erase(it);
  }
  for (const auto& [key, e] : only_second) r.db.entries.push_back(*e);
  r.db.sort_entries();
  std::sort(r.decisions.begin(), r.decisions.end(), [](const auto& x, const auto& y) { return x.key < y.key; });
  return r;
}

TuningDiff diff(const TuningDb& before, const TuningDb& after) {
  std::map<TuningKey, const TuningEntry*> old_entries;
  for (const TuningEntry& e : before.entries) old_entries.emplace(e.key, &e);
  TuningDiff d;
  for (const TuningEntry& now : after.entries) {
    auto it = old_entries.find(now.key);
    if (it == old_entries.end()) {
      d.added.push_back(now);
      continue;
    }
    const TuningEntry& old = *it->second;
    TuningChange c{old, now, old.config != now.config, (now.median_us - old.median_us) / old.median_us * 100.0};
    if (c.config_changed || std::abs(c.time_change_percent) > kNoiseBand * 100.0) d.changed.push_back(std::move(c));
    old_entries.erase(it);
  }
  for (const auto& [key, e] : old_entries) d.removed.push_back(*e);
  return d;
}

TuningDb store_entries(const std::string& path, const std::vector<TuningEntry>& entries) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  if (target.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(target.parent_path(), ec);
  }
  // The lock lives in its own file: the data file is replaced by rename, so a lock on it would guard a stale inode.
  const std::string lock_path = path + ".lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(fmt::format("cannot open {}: {}", lock_path, std::strerror(errno)));
  struct Unlock {
    int fd;
    ~Unlock() { ::close(fd); }  // closing releases the flock
  } unlock{fd};
  while (::flock(fd, LOCK_EX) != 0)
    if (errno != EINTR) throw Error(fmt::format("cannot lock {}: {}", lock_path, std::strerror(errno)));

  TuningDb current;
  if (fs::exists(target)) current = TuningDb::load(path);
  TuningDb incoming;
  incoming.entries = entries;
  incoming.sort_entries();
  MergeResult merged = merge(current, incoming);
  merged.db.save(path);
  return std::move(merged.db);
}

TuningEntry to_entry(const detail::Specialization& s, uint64_t tokens) {
  const detail::FamilyDef& f = *s.family;
  TuningEntry e;
  e.key.family = f.name;
  e.key.kernel = f.kernels.at(s.kernel);
  e.key.arch = s.arch.name();
  for (size_t i = 0; i < f.param_names.size(); ++i) e.key.params.emplace_back(f.param_names[i], s.params[i]);
  e.key.tokens = tokens;
  for (size_t i = 0; i < f.config_names.size(); ++i) e.config.emplace_back(f.config_names[i], s.config[i]);
  return e;
}

bool to_specialization(const TuningEntry& entry, detail::Specialization& out) {
  const detail::FamilyDef* family = detail::find_family(entry.key.family);
  if (!family) return false;
  const auto kernel = std::find_if(family->kernels.begin(), family->kernels.end(),
                                   [&](const char* n) { return entry.key.kernel == n; });
  if (kernel == family->kernels.end()) return false;
  const NamedValues& params = entry.key.params;
  const NamedValues& config = entry.config;
  if (params.size() != family->param_names.size() || params.size() > static_cast<size_t>(detail::kMaxParams) ||
      config.size() != family->config_names.size() || config.size() > static_cast<size_t>(detail::kMaxConfig))
    return false;
  detail::Specialization s;
  try {
    s.arch = detail::Arch::parse(entry.key.arch);
  } catch (const InvalidArgument&) {
    return false;
  }
  s.family = family;
  s.kernel = static_cast<uint32_t>(kernel - family->kernels.begin());
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].first != family->param_names[i]) return false;
    s.params[i] = params[i].second;
  }
  for (size_t i = 0; i < config.size(); ++i) {
    if (config[i].first != family->config_names[i] || config[i].second < 0 ||
        config[i].second > std::numeric_limits<int32_t>::max())
      return false;
    s.config[i] = static_cast<int32_t>(config[i].second);
  }
  out = s;
  return true;
}

}  // namespace kiln::tuner
