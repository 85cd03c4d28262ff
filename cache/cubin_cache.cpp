// cache/cubin_cache.cpp — see cubin_cache.hpp for the layout and the contract.
//
// Concurrency model (many processes, no daemon):
//  * An entry only ever appears through rename(2) of a fully written and fsynced temp directory, so readers see
//    either nothing or a complete entry. rename onto an existing non-empty directory fails (EEXIST/ENOTEMPTY),
//    which makes the first publisher of a key win and every later one back off.
//  * An entry only ever disappears through rename(2) to a ".trash-…" name followed by a recursive delete, so no
//    reader sees a half-deleted entry under its real name.
//  * Names starting with '.' inside a group dir (temp, trash) and "*.lock" files are never entries.
#include "cache/cubin_cache.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <tuple>

#include <fmt/format.h>

namespace kiln::cache {
namespace {

namespace fs = std::filesystem;

constexpr const char* kCubinFile = "cubin";
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kStampFile = "last_used";
constexpr const char* kFailedDir = "failed";  // <root>/failed/… holds sources that failed to compile

std::string errno_text(int err) { return std::strerror(err); }

// Closes a file descriptor on scope exit.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// One path component of a group, or an extra file's name: no separators, no leading '.' (reserved for temp and
// trash names), nothing a shell or another filesystem would trip over.
bool valid_name(const std::string& s) {
  if (s.empty() || s[0] == '.') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '-' ||
           c == '.';
  });
}

// A key never contains '.', so "<key>.lock" can never be mistaken for another key.
bool valid_key(const std::string& s) { return valid_name(s) && s.find('.') == std::string::npos; }

// Exactly two components ("<arch>/<family>"): the tools walk the tree at that depth.
bool valid_group(const std::string& g) {
  const size_t slash = g.find('/');
  if (slash == std::string::npos) return false;
  const std::string a = g.substr(0, slash), b = g.substr(slash + 1);
  return valid_name(a) && valid_name(b) && a != kFailedDir;
}

// "<prefix><pid>-<12 random hex digits>": unique across processes (pid) and within one (random).
std::string unique_name(const std::string& prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}() ^ (uint64_t(::getpid()) << 32)};
  return fmt::format("{}{}-{:012x}", prefix, ::getpid(), rng() & 0xffffffffffffULL);
}

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= size_t(w);
  }
  return true;
}

// Creates `name` in `dirfd` with `data`, fsynced. Fills `err` on failure.
bool write_file_at(int dirfd, const std::string& name, const std::string& data, std::string& err) {
  const int fd = ::openat(dirfd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) {
    err = fmt::format("cannot create {}: {}", name, errno_text(errno));
    return false;
  }
  bool ok = write_all(fd, data.data(), data.size()) && ::fsync(fd) == 0;
  int saved = errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    saved = errno;
  }
  if (!ok) err = fmt::format("cannot write {}: {}", name, errno_text(saved));
  return ok;
}

// Reads `name` in `dirfd` whole. Fills `err` on failure.
bool read_file_at(int dirfd, const char* name, std::string& out, std::string& err) {
  Fd f(::openat(dirfd, name, O_RDONLY | O_CLOEXEC));
  struct stat st;
  if (f.fd < 0 || ::fstat(f.fd, &st) != 0) {
    err = fmt::format("{}: {}", name, errno_text(errno));
    return false;
  }
  out.resize(size_t(st.st_size));
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t r = ::read(f.fd, out.data() + got, out.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      err = fmt::format("{}: {}", name, errno_text(errno));
      return false;
    }
    if (r == 0) break;  // shrank while we read it; the size check downstream will catch it
    got += size_t(r);
  }
  out.resize(got);
  return true;
}

bool fsync_dir(const std::string& path) {
  Fd f(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  return f.fd >= 0 && ::fsync(f.fd) == 0;
}

// Parses and checks the manifest, reads the cubin and checks its size and checksum. Returns "" when the entry is
// good, else what is wrong with it.
std::string read_entry(int dirfd, CachedEntry& out) {
  std::string text, err;
  if (!read_file_at(dirfd, kManifestFile, text, err)) return err;
  nlohmann::json manifest = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (manifest.is_discarded()) return "manifest.json does not parse";
  if (!manifest.is_object()) return "manifest.json is not a JSON object";
  const auto hash = manifest.find("cubin_xxh3_128");
  const auto bytes = manifest.find("cubin_bytes");
  if (hash == manifest.end() || !hash->is_string()) return "manifest.json lacks cubin_xxh3_128";
  if (bytes == manifest.end() || !bytes->is_number_unsigned()) return "manifest.json lacks cubin_bytes";

  std::string cubin;
  if (!read_file_at(dirfd, kCubinFile, cubin, err)) return err;
  if (cubin.size() != bytes->get<uint64_t>())
    return fmt::format("cubin is {} bytes, manifest says {}", cubin.size(), bytes->get<uint64_t>());
  const std::string actual = xxh3_128_hex(cubin.data(), cubin.size());
  if (actual != hash->get<std::string>())
    return fmt::format("cubin checksum {} does not match manifest {}", actual, hash->get<std::string>());

  out.cubin = std::move(cubin);
  out.manifest = std::move(manifest);
  return "";
}

enum class Check { good, missing, bad };

// Looks at the entry directory `dir`. `id` receives the identity (dev/inode) of what was examined so that a bad
// entry can later be removed only if it is still the one that was examined.
Check check_entry(const std::string& dir, CachedEntry& out, std::string& reason, struct stat& id) {
  if (::lstat(dir.c_str(), &id) != 0) return Check::missing;
  if (!S_ISDIR(id.st_mode)) {
    reason = "not a directory";  // a stray file would block every future store of this key
    return Check::bad;
  }
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (d.fd < 0) {
    if (errno == ENOENT) return Check::missing;
    reason = errno_text(errno);
    return Check::bad;
  }
  // Read everything through the directory fd: manifest and cubin then come from the same entry even if the name
  // is republished meanwhile.
  ::fstat(d.fd, &id);
  reason = read_entry(d.fd, out);
  return reason.empty() ? Check::good : Check::bad;
}

// Moves `path` aside to a unique trash name beside it (atomic for readers), then deletes it. With `expected`, only
// while `path` still names that same file, so an entry republished since it was examined is left alone. Returns
// whether something was removed.
bool discard(const fs::path& path, const struct stat* expected) {
  if (expected) {
    struct stat now;
    if (::lstat(path.c_str(), &now) != 0 || now.st_dev != expected->st_dev || now.st_ino != expected->st_ino)
      return false;
  }
  const fs::path trash = path.parent_path() / unique_name(".trash-" + path.filename().string() + "-");
  if (::rename(path.c_str(), trash.c_str()) != 0) return false;
  std::error_code ec;
  fs::remove_all(trash, ec);  // a failure leaves a trash dir that list() ignores and clear() removes
  return true;
}

struct EntryRef {
  std::string group, key;
  fs::path dir;
};

bool is_dir_entry(const fs::directory_entry& e) {
  std::error_code ec;
  return e.symlink_status(ec).type() == fs::file_type::directory;
}

// Every "<root>/<a>/<b>" group directory as ("<a>/<b>", path). Entries may vanish while we walk: errors skip.
std::vector<std::pair<std::string, fs::path>> group_dirs(const std::string& root) {
  std::vector<std::pair<std::string, fs::path>> out;
  std::error_code ec;
  for (fs::directory_iterator a(root, ec), end; !ec && a != end; a.increment(ec)) {
    const std::string an = a->path().filename().string();
    if (!is_dir_entry(*a) || !valid_name(an) || an == kFailedDir) continue;
    std::error_code ec2;
    for (fs::directory_iterator b(a->path(), ec2); !ec2 && b != end; b.increment(ec2)) {
      const std::string bn = b->path().filename().string();
      if (is_dir_entry(*b) && valid_name(bn)) out.emplace_back(an + "/" + bn, b->path());
    }
  }
  return out;
}

std::vector<EntryRef> entry_dirs(const std::string& root) {
  std::vector<EntryRef> out;
  for (auto& [group, gdir] : group_dirs(root)) {
    std::error_code ec;
    for (fs::directory_iterator k(gdir, ec), end; !ec && k != end; k.increment(ec)) {
      const std::string kn = k->path().filename().string();
      if (is_dir_entry(*k) && valid_key(kn)) out.push_back({group, kn, k->path()});
    }
  }
  std::sort(out.begin(), out.end(),
            [](const EntryRef& x, const EntryRef& y) { return std::tie(x.group, x.key) < std::tie(y.group, y.key); });
  return out;
}

bool mtime_of(const fs::path& p, int64_t& out) {
  struct stat st;
  if (::stat(p.c_str(), &st) != 0) return false;
  out = st.st_mtim.tv_sec;
  return true;
}

}  // namespace

std::string xxh3_128_hex(const void* data, size_t size) {
  const XXH128_hash_t h = XXH3_128bits(data, size);
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

std::string default_cache_root() {
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? v : "";
  };
  if (std::string v = env("KILN_CACHE_DIR"); !v.empty()) return v;
  if (std::string v = env("XDG_CACHE_HOME"); !v.empty()) return v + "/kiln";
  if (std::string v = env("HOME"); !v.empty()) return v + "/.cache/kiln";
  return "";  // the constructor disables the cache and says why
}

CubinCache::CubinCache(std::string root, bool create) : root_(std::move(root)) {
  if (root_.empty()) {
    disabled_reason_ = "no cache directory ($KILN_CACHE_DIR, $XDG_CACHE_HOME and $HOME are unset)";
    return;
  }
  std::error_code ec;
  if (!create && !fs::exists(root_, ec)) {
    disabled_reason_ = fmt::format("{} does not exist", root_);
    return;
  }
  fs::create_directories(root_, ec);
  if (ec) {
    disabled_reason_ = fmt::format("cannot create {}: {}", root_, ec.message());
    return;
  }
  // Permission bits say nothing for root or on read-only mounts: try to actually create a file.
  const std::string probe = root_ + "/" + unique_name(".probe-");
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) {
    disabled_reason_ = fmt::format("cannot write to {}: {}", root_, errno_text(errno));
    return;
  }
  ::close(fd);
  ::unlink(probe.c_str());
  enabled_ = true;
}

CubinCache::Lookup CubinCache::load(const std::string& group, const std::string& key, CachedEntry& out,
                                    std::string* reason) {
  if (!enabled_ || !valid_group(group) || !valid_key(key)) return Lookup::miss;
  const std::string dir = root_ + "/" + group + "/" + key;
  std::string why;
  struct stat id;
  switch (check_entry(dir, out, why, id)) {
    case Check::missing:
      return Lookup::miss;
    case Check::bad:
      // If the name no longer refers to what we examined, someone else removed (or replaced) it meanwhile:
      // that is a plain miss, not corruption for this caller to report.
      if (!discard(dir, &id)) return Lookup::miss;
      if (reason) *reason = why;
      return Lookup::corrupt;
    case Check::good:
      break;
  }
  // Refresh the LRU stamp; recreate it if an older writer or a user removed it. Failure only affects pruning.
  const std::string stamp = dir + "/" + kStampFile;
  if (::utimensat(AT_FDCWD, stamp.c_str(), nullptr, 0) != 0 && errno == ENOENT) {
    const int fd = ::open(stamp.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
    if (fd >= 0) ::close(fd);
  }
  return Lookup::hit;
}

bool CubinCache::store(const std::string& group, const std::string& key, const std::string& cubin,
                       nlohmann::json manifest, const std::vector<std::pair<std::string, std::string>>& extra_files,
                       std::string* error) {
  auto fail = [&](std::string msg) {
    if (error) *error = std::move(msg);
    return false;
  };
  if (!enabled_) return fail("cache disabled: " + disabled_reason_);
  if (!valid_group(group) || !valid_key(key)) return fail(fmt::format("invalid cache entry name {}/{}", group, key));
  if (manifest.is_null()) manifest = nlohmann::json::object();
  if (!manifest.is_object()) return fail("manifest must be a JSON object");
  for (const auto& [name, _] : extra_files)
    if (!valid_name(name) || name == kCubinFile || name == kManifestFile || name == kStampFile)
      return fail(fmt::format("invalid extra file name '{}'", name));

  const std::string gdir = root_ + "/" + group;
  const std::string dir = gdir + "/" + key;
  std::error_code ec;
  fs::create_directories(gdir, ec);
  if (ec) return fail(fmt::format("cannot create {}: {}", gdir, ec.message()));
  // Cheap early exit; the rename below is what actually settles a race.
  if (struct stat st; ::lstat(dir.c_str(), &st) == 0) return false;

  const std::string tmp = gdir + "/" + unique_name(".tmp-" + key + "-");
  if (::mkdir(tmp.c_str(), 0777) != 0) return fail(fmt::format("cannot create {}: {}", tmp, errno_text(errno)));
  auto abandon = [&](std::string msg) {
    fs::remove_all(tmp, ec);
    return fail(std::move(msg));
  };

  manifest["cubin_xxh3_128"] = xxh3_128_hex(cubin.data(), cubin.size());
  manifest["cubin_bytes"] = uint64_t(cubin.size());
  // Invalid UTF-8 in a caller's field must not make dump() throw.
  const std::string manifest_text = manifest.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  {
    Fd d(::open(tmp.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (d.fd < 0) return abandon(fmt::format("cannot open {}: {}", tmp, errno_text(errno)));
    std::string err;
    bool ok = write_file_at(d.fd, kCubinFile, cubin, err) && write_file_at(d.fd, kManifestFile, manifest_text, err);
    for (const auto& [name, data] : extra_files) ok = ok && write_file_at(d.fd, name, data, err);
    ok = ok && write_file_at(d.fd, kStampFile, "", err);
    if (!ok) return abandon(fmt::format("{}: {}", tmp, err));
    if (::fsync(d.fd) != 0) return abandon(fmt::format("cannot fsync {}: {}", tmp, errno_text(errno)));
  }

  if (::rename(tmp.c_str(), dir.c_str()) != 0) {
    const int err = errno;
    if (err == EEXIST || err == ENOTEMPTY) {
      fs::remove_all(tmp, ec);
      return false;  // another writer won; `error` stays untouched since nothing went wrong
    }
    return abandon(fmt::format("cannot rename {} to {}: {}", tmp, dir, errno_text(err)));
  }
  // The entry is published either way; a failed parent fsync only weakens durability across a power loss, after
  // which a missing entry is just a miss.
  fsync_dir(gdir);
  return true;
}

CubinCache::KeyLock& CubinCache::KeyLock::operator=(KeyLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

CubinCache::KeyLock::~KeyLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the flock
}

CubinCache::KeyLock CubinCache::lock(const std::string& group, const std::string& key) {
  KeyLock l;
  if (!enabled_ || !valid_group(group) || !valid_key(key)) return l;
  const std::string gdir = root_ + "/" + group;
  std::error_code ec;
  fs::create_directories(gdir, ec);
  if (ec) return l;
  // Lock files are never deleted outside clear(): unlinking a lock file someone holds would let a second process
  // lock a fresh inode of the same name.
  const std::string path = gdir + "/" + key + ".lock";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) return l;
  int r;
  while ((r = ::flock(fd, LOCK_EX)) != 0 && errno == EINTR) {
  }
  if (r != 0) {
    ::close(fd);
    return l;
  }
  l.fd_ = fd;
  return l;
}

std::string CubinCache::failed_source_path(const std::string& group, const std::string& key) const {
  std::error_code ec;
  if (enabled_) {
    const std::string dir = root_ + "/" + kFailedDir + "/" + group;
    fs::create_directories(dir, ec);
    if (!ec) return dir + "/" + key + ".cu";
  }
  const std::string dir = fmt::format("/tmp/kiln-failed-{}/{}", ::getuid(), group);
  fs::create_directories(dir, ec);
  return dir + "/" + key + ".cu";
}

std::vector<EntryInfo> CubinCache::list() const {
  std::vector<EntryInfo> out;
  for (const EntryRef& e : entry_dirs(root_)) {
    EntryInfo info;
    info.group = e.group;
    info.key = e.key;
    std::error_code ec;
    for (fs::directory_iterator f(e.dir, ec), end; !ec && f != end; f.increment(ec)) {
      std::error_code ec2;
      if (f->symlink_status(ec2).type() != fs::file_type::regular) continue;
      const uintmax_t size = f->file_size(ec2);
      if (!ec2) info.bytes += size;
    }
    if (!mtime_of(e.dir / kStampFile, info.last_used)) mtime_of(e.dir / kManifestFile, info.last_used);
    std::string err;
    Fd d(::open(e.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    std::string text;
    if (d.fd >= 0 && read_file_at(d.fd, kManifestFile, text, err)) {
      info.manifest = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (info.manifest.is_discarded()) info.manifest = nullptr;
    }
    out.push_back(std::move(info));
  }
  return out;
}

VerifyReport CubinCache::verify(bool remove_bad) {
  VerifyReport report;
  for (const EntryRef& e : entry_dirs(root_)) {
    CachedEntry entry;
    std::string why;
    struct stat id;
    switch (check_entry(e.dir, entry, why, id)) {
      case Check::missing:
        break;  // removed while we walked
      case Check::good:
        ++report.ok;
        break;
      case Check::bad:
        report.bad.push_back(fmt::format("{}/{}: {}", e.group, e.key, why));
        if (remove_bad) discard(e.dir, &id);
        break;
    }
  }
  return report;
}

size_t CubinCache::prune(uint64_t max_bytes) {
  std::vector<EntryInfo> entries = list();
  uint64_t total = 0;
  for (const EntryInfo& e : entries) total += e.bytes;
  std::stable_sort(entries.begin(), entries.end(),
                   [](const EntryInfo& a, const EntryInfo& b) { return a.last_used < b.last_used; });
  size_t removed = 0;
  for (const EntryInfo& e : entries) {
    if (total <= max_bytes) break;
    if (discard(fs::path(root_) / e.group / e.key, nullptr)) ++removed;
    total -= e.bytes;  // gone either way: if discard failed, someone else removed it
  }
  return removed;
}

size_t CubinCache::clear() {
  size_t removed = 0;
  for (const EntryRef& e : entry_dirs(root_))
    if (discard(e.dir, nullptr)) ++removed;
  // Then the leftovers: lock files, temp dirs of crashed writers, trash that could not be deleted, and the
  // directories that are now empty.
  for (auto& [group, gdir] : group_dirs(root_)) {
    std::error_code ec;
    std::vector<fs::path> leftovers;
    for (fs::directory_iterator f(gdir, ec), end; !ec && f != end; f.increment(ec)) {
      const std::string n = f->path().filename().string();
      if (n.starts_with(".tmp-") || n.starts_with(".trash-") || n.ends_with(".lock")) leftovers.push_back(f->path());
    }
    for (const fs::path& p : leftovers) fs::remove_all(p, ec);
    fs::remove(gdir, ec);                // only if empty
    fs::remove(gdir.parent_path(), ec);  // likewise
  }
  return removed;
}

}  // namespace kiln::cache
