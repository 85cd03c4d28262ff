// tests/cache_test.cpp — the on-disk cubin cache (CPU only): round trips, corruption handling, races between
// processes, the disabled mode, the maintenance tools and the default root.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "cache/cubin_cache.hpp"

namespace {

namespace fs = std::filesystem;
using kiln::cache::CachedEntry;
using kiln::cache::CubinCache;
using Lookup = CubinCache::Lookup;

constexpr const char* kGroup = "sm_90a/rms_norm_block_quant";
constexpr const char* kKey = "0123456789abcdef0123456789abcdef";
constexpr const char* kKey2 = "fedcba9876543210fedcba9876543210";
constexpr const char* kKey3 = "00000000000000000000000000000003";

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

// A cubin-like blob with embedded NULs and every byte value.
std::string blob(size_t n, int salt = 0) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = char((i * 31 + size_t(salt)) & 0xff);
  return s;
}

int64_t mtime(const fs::path& p) {
  struct stat st;
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mtim.tv_sec;
}

void set_mtime(const fs::path& p, int64_t secs) {
  const struct timespec ts[2] = {{secs, 0}, {secs, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), ts, 0), 0) << p;
}

class CacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "kiln-cache-test-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    base_ = tmpl;
    root_ = base_ / "cache";
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(base_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(base_, ec);
  }

  fs::path entry_dir(const std::string& key = kKey, const std::string& group = kGroup) const {
    return root_ / group / key;
  }

  // Stores a small entry and checks that it worked.
  void put(CubinCache& c, const std::string& key, const std::string& cubin, const std::string& group = kGroup) {
    std::string err;
    ASSERT_TRUE(c.store(group, key, cubin, {{"family", "rms_norm"}}, {}, &err)) << err;
  }

  // Names in the group dir (entries, locks, temp and trash dirs).
  std::set<std::string> group_listing(const std::string& group = kGroup) const {
    std::set<std::string> names;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root_ / group, ec)) names.insert(e.path().filename().string());
    return names;
  }

  fs::path base_, root_;
};

TEST(CubinCacheHash, Xxh3Hex) {
  // XXH3_128bits of no bytes, high 64 bits first.
  EXPECT_EQ(kiln::cache::xxh3_128_hex("", 0), "99aa06d3014798d86001c324468d497f");
  const std::string h = kiln::cache::xxh3_128_hex("kiln", 4);
  EXPECT_EQ(h.size(), 32u);
  EXPECT_EQ(h.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(h, kiln::cache::xxh3_128_hex("kilm", 4));
}

TEST_F(CacheTest, StoreLoadRoundTrip) {
  CubinCache c(root_.string());
  ASSERT_TRUE(c.enabled()) << c.disabled_reason();
  const std::string cubin = blob(4099);
  std::string err;
  ASSERT_TRUE(c.store(kGroup, kKey, cubin, {{"family", "rms_norm"}, {"params", {{"block", 256}}}},
                      {{"source.cu", "__global__ void k() {}"}, {"kernel.ptx", ".version 8.0"}}, &err))
      << err;

  const fs::path dir = entry_dir();
  EXPECT_EQ(read_text(dir / "cubin"), cubin);
  EXPECT_EQ(read_text(dir / "source.cu"), "__global__ void k() {}");
  EXPECT_EQ(read_text(dir / "kernel.ptx"), ".version 8.0");
  EXPECT_TRUE(fs::exists(dir / "last_used"));
  // Nothing but the entry (no temp dir) is left in the group dir.
  EXPECT_EQ(group_listing(), std::set<std::string>{kKey});

  CachedEntry e;
  std::string reason;
  ASSERT_EQ(c.load(kGroup, kKey, e, &reason), Lookup::hit) << reason;
  EXPECT_EQ(e.cubin, cubin);
  EXPECT_EQ(e.manifest["family"], "rms_norm");
  EXPECT_EQ(e.manifest["params"]["block"], 256);

  // A second cache object (another process, say) sees the same entry.
  CubinCache other(root_.string());
  CachedEntry e2;
  EXPECT_EQ(other.load(kGroup, kKey, e2), Lookup::hit);
  EXPECT_EQ(e2.cubin, cubin);
}

TEST_F(CacheTest, EmptyCubinRoundTrips) {
  CubinCache c(root_.string());
  put(c, kKey, "");
  CachedEntry e;
  EXPECT_EQ(c.load(kGroup, kKey, e), Lookup::hit);
  EXPECT_EQ(e.cubin, "");
}

TEST_F(CacheTest, MissWhenAbsent) {
  CubinCache c(root_.string());
  CachedEntry e;
  std::string reason;
  EXPECT_EQ(c.load(kGroup, kKey, e, &reason), Lookup::miss);
  EXPECT_TRUE(reason.empty());
  put(c, kKey, blob(10));
  EXPECT_EQ(c.load(kGroup, kKey2, e), Lookup::miss);
  EXPECT_EQ(c.load("sm_80/rms_norm_block_quant", kKey, e), Lookup::miss);
}

TEST_F(CacheTest, ManifestGetsChecksumAndSize) {
  CubinCache c(root_.string());
  const std::string cubin = blob(777);
  put(c, kKey, cubin);
  const auto m = nlohmann::json::parse(read_text(entry_dir() / "manifest.json"));
  EXPECT_EQ(m["cubin_xxh3_128"], kiln::cache::xxh3_128_hex(cubin.data(), cubin.size()));
  EXPECT_EQ(m["cubin_bytes"], 777);
  EXPECT_EQ(m["family"], "rms_norm");
}

TEST_F(CacheTest, HitRefreshesLastUsedStamp) {
  CubinCache c(root_.string());
  put(c, kKey, blob(10));
  const fs::path stamp = entry_dir() / "last_used";
  set_mtime(stamp, 1000);
  CachedEntry e;
  ASSERT_EQ(c.load(kGroup, kKey, e), Lookup::hit);
  EXPECT_GT(mtime(stamp), 1000);

  // A missing stamp is recreated on the next hit.
  fs::remove(stamp);
  ASSERT_EQ(c.load(kGroup, kKey, e), Lookup::hit);
  EXPECT_TRUE(fs::exists(stamp));
}

// Each corruption must be reported once, remove the entry (no trash left behind) and turn the next load into a
// miss, after which a fresh store works.
class CorruptionTest : public CacheTest {
 protected:
  void expect_corrupt(CubinCache& c, const std::string& what_substring) {
    CachedEntry e;
    std::string reason;
    EXPECT_EQ(c.load(kGroup, kKey, e, &reason), Lookup::corrupt);
    EXPECT_NE(reason.find(what_substring), std::string::npos) << reason;
    EXPECT_FALSE(fs::exists(entry_dir()));
    EXPECT_TRUE(group_listing().empty());
    EXPECT_EQ(c.load(kGroup, kKey, e, &reason), Lookup::miss);
    put(c, kKey, blob(64));
    EXPECT_EQ(c.load(kGroup, kKey, e), Lookup::hit);
  }
};

TEST_F(CorruptionTest, TruncatedCubin) {
  CubinCache c(root_.string());
  put(c, kKey, blob(1000));
  fs::resize_file(entry_dir() / "cubin", 500);
  expect_corrupt(c, "500 bytes");
}

TEST_F(CorruptionTest, BitFlippedCubin) {
  CubinCache c(root_.string());
  put(c, kKey, blob(1000));
  std::string bytes = read_text(entry_dir() / "cubin");
  bytes[417] ^= 0x10;
  write_text(entry_dir() / "cubin", bytes);
  expect_corrupt(c, "checksum");
}

TEST_F(CorruptionTest, MissingCubin) {
  CubinCache c(root_.string());
  put(c, kKey, blob(1000));
  fs::remove(entry_dir() / "cubin");
  expect_corrupt(c, "cubin");
}

TEST_F(CorruptionTest, TruncatedManifest) {
  CubinCache c(root_.string());
  put(c, kKey, blob(1000));
  const std::string m = read_text(entry_dir() / "manifest.json");
  write_text(entry_dir() / "manifest.json", m.substr(0, m.size() / 2));
  expect_corrupt(c, "parse");
}

TEST_F(CorruptionTest, ManifestNotAnObject) {
  CubinCache c(root_.string());
  put(c, kKey, blob(1000));
  write_text(entry_dir() / "manifest.json", "[1, 2, 3]");
  expect_corrupt(c, "object");
}

TEST_F(CorruptionTest, ManifestWithoutChecksum) {
  CubinCache c(root_.string());
  put(c, kKey, blob(1000));
  auto m = nlohmann::json::parse(read_text(entry_dir() / "manifest.json"));
  m.erase("cubin_xxh3_128");
  write_text(entry_dir() / "manifest.json", m.dump());
  expect_corrupt(c, "cubin_xxh3_128");
}

TEST_F(CorruptionTest, HalfWrittenEntryWithoutManifest) {
  CubinCache c(root_.string());
  fs::create_directories(entry_dir());
  write_text(entry_dir() / "cubin", blob(100));
  expect_corrupt(c, "manifest.json");
}

TEST_F(CorruptionTest, StrayFileInPlaceOfEntry) {
  CubinCache c(root_.string());
  fs::create_directories(entry_dir().parent_path());
  write_text(entry_dir(), "junk");
  expect_corrupt(c, "not a directory");
}

TEST_F(CacheTest, LeftoverTempDirIsIgnored) {
  CubinCache c(root_.string());
  // What a writer killed halfway leaves behind.
  const fs::path tmp = root_ / kGroup / (std::string(".tmp-") + kKey + "-4242-abcdef012345");
  fs::create_directories(tmp);
  write_text(tmp / "cubin", blob(50));
  CachedEntry e;
  EXPECT_EQ(c.load(kGroup, kKey, e), Lookup::miss);
  EXPECT_TRUE(c.list().empty());
  EXPECT_EQ(c.verify(false).ok, 0u);
  EXPECT_TRUE(c.verify(false).bad.empty());
  put(c, kKey, blob(60));
  EXPECT_EQ(c.load(kGroup, kKey, e), Lookup::hit);
  EXPECT_EQ(c.list().size(), 1u);
}

TEST_F(CacheTest, SecondStoreOfSameKeyLoses) {
  CubinCache c(root_.string());
  put(c, kKey, blob(100, 1));
  std::string err;
  EXPECT_FALSE(c.store(kGroup, kKey, blob(200, 2), {{"family", "other"}}, {}, &err));
  EXPECT_TRUE(err.empty()) << err;  // a lost race is not an error
  CachedEntry e;
  ASSERT_EQ(c.load(kGroup, kKey, e), Lookup::hit);
  EXPECT_EQ(e.cubin, blob(100, 1));
  EXPECT_EQ(e.manifest["family"], "rms_norm");
  EXPECT_EQ(group_listing(), std::set<std::string>{kKey});  // the loser's temp dir is gone
}

TEST_F(CacheTest, RejectsBadNames) {
  CubinCache c(root_.string());
  std::string err;
  EXPECT_FALSE(c.store(kGroup, "../../escape", blob(10), {}, {}, &err));
  EXPECT_FALSE(err.empty());
  err.clear();
  EXPECT_FALSE(c.store("sm_90a", kKey, blob(10), {}, {}, &err));  // group needs two components
  EXPECT_FALSE(err.empty());
  err.clear();
  EXPECT_FALSE(c.store(kGroup, kKey, blob(10), {}, {{"../x", "y"}}, &err));
  EXPECT_FALSE(err.empty());
  err.clear();
  EXPECT_FALSE(c.store(kGroup, kKey, blob(10), {}, {{"cubin", "y"}}, &err));
  EXPECT_FALSE(err.empty());
  EXPECT_FALSE(c.store(kGroup, kKey, blob(10), nlohmann::json::array(), {}, &err));
  EXPECT_FALSE(fs::exists(root_ / "escape"));
  EXPECT_FALSE(fs::exists(entry_dir()));
}

// Runs `child` in `n` forked processes released together; returns their exit codes.
template <class F>
std::vector<int> run_processes(int n, F child) {
  int gate[2];
  EXPECT_EQ(::pipe(gate), 0);
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(gate[1]);
      char ch;
      while (::read(gate[0], &ch, 1) < 0 && errno == EINTR) {
      }
      ::_exit(child(i));
    }
    EXPECT_GT(pid, 0);
    if (pid > 0) pids.push_back(pid);
  }
  ::close(gate[0]);
  ::close(gate[1]);  // EOF on the pipe releases every child at once
  std::vector<int> codes;
  for (pid_t pid : pids) {
    int status = 0;
    EXPECT_EQ(::waitpid(pid, &status, 0), pid);
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  return codes;
}

// Appends one byte to `counter` (O_APPEND is atomic between processes); its size counts the calls.
void bump(const fs::path& counter) {
  const int fd = ::open(counter.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0666);
  if (fd >= 0) {
    [[maybe_unused]] ssize_t w = ::write(fd, "x", 1);
    ::close(fd);
  }
}

TEST_F(CacheTest, ConcurrentProcessesCompileOnce) {
  const fs::path counter = base_ / "stores";
  const std::string cubin = blob(100000);
  const std::vector<int> codes = run_processes(8, [&](int) {
    CubinCache c(root_.string());
    auto lock = c.lock(kGroup, kKey);
    if (!lock.acquired()) return 10;
    CachedEntry e;
    switch (c.load(kGroup, kKey, e)) {
      case Lookup::hit:
        return e.cubin == cubin ? 0 : 11;
      case Lookup::corrupt:
        return 12;
      case Lookup::miss:
        break;
    }
    // "Compile" slowly so that, without the lock, the others would miss too.
    bump(counter);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return c.store(kGroup, kKey, cubin, {{"family", "rms_norm"}}) ? 0 : 13;
  });
  for (int code : codes) EXPECT_EQ(code, 0);
  EXPECT_EQ(fs::file_size(counter), 1u);  // exactly one process compiled (and stored)

  CubinCache c(root_.string());
  ASSERT_EQ(c.list().size(), 1u);
  const auto report = c.verify(false);
  EXPECT_EQ(report.ok, 1u);
  EXPECT_TRUE(report.bad.empty());
  EXPECT_EQ(group_listing(), (std::set<std::string>{kKey, std::string(kKey) + ".lock"}));
}

TEST_F(CacheTest, ConcurrentUnlockedStoresPublishOneEntry) {
  // Where locks do not work every process compiles; the rename must still leave exactly one good entry.
  const fs::path counter = base_ / "stores";
  const std::vector<int> codes = run_processes(8, [&](int i) {
    CubinCache c(root_.string());
    std::string err;
    if (c.store(kGroup, kKey, blob(50000, i), {{"writer", i}}, {{"source.cu", blob(5000, i)}}, &err)) {
      bump(counter);
      return 0;
    }
    return err.empty() ? 0 : 20;
  });
  for (int code : codes) EXPECT_EQ(code, 0);
  EXPECT_EQ(fs::file_size(counter), 1u);

  CubinCache c(root_.string());
  CachedEntry e;
  ASSERT_EQ(c.load(kGroup, kKey, e), Lookup::hit);
  EXPECT_EQ(e.cubin, blob(50000, e.manifest["writer"].get<int>()));  // one writer's files, not a mix
  EXPECT_EQ(read_text(entry_dir() / "source.cu"), blob(5000, e.manifest["writer"].get<int>()));
  EXPECT_EQ(group_listing(), std::set<std::string>{kKey});
}

TEST_F(CacheTest, LockExcludesOtherProcesses) {
  // Fork before locking: a forked child shares its parent's open lock file, and with it the flock.
  int gate[2];
  ASSERT_EQ(::pipe(gate), 0);
  const fs::path marker = base_ / "child-locked";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(gate[1]);
    char ch;
    while (::read(gate[0], &ch, 1) < 0 && errno == EINTR) {
    }
    CubinCache c(root_.string());
    auto l = c.lock(kGroup, kKey);  // blocks until the parent lets go
    bump(marker);
    ::_exit(l.acquired() ? 0 : 1);
  }
  ASSERT_GT(pid, 0);
  ::close(gate[0]);
  CubinCache c(root_.string());
  auto held = c.lock(kGroup, kKey);
  EXPECT_TRUE(held.acquired());
  ::close(gate[1]);  // let the child try
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(fs::exists(marker));  // still blocked
  held = CubinCache::KeyLock();      // releases
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_TRUE(fs::exists(marker));
}

TEST_F(CacheTest, DisabledWhenRootIsBelowARegularFile) {
  write_text(base_ / "file", "not a directory");
  CubinCache c((base_ / "file" / "kiln-cache").string());
  EXPECT_FALSE(c.enabled());
  EXPECT_FALSE(c.disabled_reason().empty());
  CachedEntry e;
  EXPECT_EQ(c.load(kGroup, kKey, e), Lookup::miss);
  std::string err;
  EXPECT_FALSE(c.store(kGroup, kKey, blob(10), {}, {}, &err));
  EXPECT_FALSE(err.empty());
  EXPECT_FALSE(c.lock(kGroup, kKey).acquired());
  EXPECT_TRUE(c.list().empty());

  const std::string failed = c.failed_source_path(kGroup, kKey);
  EXPECT_EQ(failed.rfind("/tmp/kiln-failed-" + std::to_string(::getuid()) + "/", 0), 0u) << failed;
  EXPECT_TRUE(fs::is_directory(fs::path(failed).parent_path()));
  // Tidy up <family>, <arch> and kiln-failed-<uid> where empty: the dir may be shared with real runs.
  std::error_code ec;
  fs::path d = fs::path(failed).parent_path();
  for (int i = 0; i < 3; ++i, d = d.parent_path()) fs::remove(d, ec);
}

TEST_F(CacheTest, DisabledWhenRootIsReadOnly) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  fs::create_directories(root_);
  fs::permissions(root_, fs::perms::owner_read | fs::perms::owner_exec);
  CubinCache c(root_.string());
  EXPECT_FALSE(c.enabled());
  EXPECT_NE(c.disabled_reason().find(root_.string()), std::string::npos) << c.disabled_reason();
  CachedEntry e;
  EXPECT_EQ(c.load(kGroup, kKey, e), Lookup::miss);
  EXPECT_FALSE(c.store(kGroup, kKey, blob(10), {}));
}

TEST_F(CacheTest, DisabledWhenRootIsEmpty) {
  CubinCache c("");
  EXPECT_FALSE(c.enabled());
  EXPECT_FALSE(c.disabled_reason().empty());
}

TEST_F(CacheTest, FailedSourcePathIsUnderRoot) {
  CubinCache c(root_.string());
  const fs::path p = c.failed_source_path(kGroup, kKey);
  EXPECT_EQ(p, root_ / "failed" / kGroup / (std::string(kKey) + ".cu"));
  EXPECT_TRUE(fs::is_directory(p.parent_path()));
  write_text(p, "bad source");
  EXPECT_TRUE(c.list().empty());  // not an entry
}

TEST_F(CacheTest, ListReportsEntries) {
  CubinCache c(root_.string());
  ASSERT_TRUE(c.store(kGroup, kKey, blob(1000), {{"family", "rms_norm"}}, {{"source.cu", blob(300)}}));
  put(c, kKey2, blob(2000), "sm_80/softmax");
  set_mtime(entry_dir() / "last_used", 1'700'000'000);
  // Things that are not entries.
  c.lock(kGroup, kKey3);
  fs::create_directories(root_ / kGroup / ".trash-x-1-2");
  write_text(c.failed_source_path(kGroup, kKey3), "x");

  const auto entries = c.list();
  ASSERT_EQ(entries.size(), 2u);
  std::map<std::string, kiln::cache::EntryInfo> by_key;
  for (const auto& e : entries) by_key[e.key] = e;
  const auto& a = by_key.at(kKey);
  EXPECT_EQ(a.group, kGroup);
  EXPECT_EQ(a.last_used, 1'700'000'000);
  uint64_t files = 0;
  for (const auto& f : fs::directory_iterator(entry_dir())) files += f.file_size();
  EXPECT_EQ(a.bytes, files);
  EXPECT_GT(a.bytes, 1300u);
  EXPECT_EQ(a.manifest["family"], "rms_norm");
  const auto& b = by_key.at(kKey2);
  EXPECT_EQ(b.group, "sm_80/softmax");
  EXPECT_GT(b.bytes, 2000u);

  // Without a stamp the manifest's mtime is used; an unreadable manifest gives null.
  fs::remove(entry_dir() / "last_used");
  set_mtime(entry_dir() / "manifest.json", 1'600'000'000);
  write_text(entry_dir(kKey2, "sm_80/softmax") / "manifest.json", "{oops");
  for (const auto& e : c.list()) {
    if (e.key == kKey) {
      EXPECT_EQ(e.last_used, 1'600'000'000);
    } else {
      EXPECT_TRUE(e.manifest.is_null());
    }
  }
}

TEST_F(CacheTest, VerifyReportsAndOptionallyRemovesBadEntries) {
  CubinCache c(root_.string());
  put(c, kKey, blob(100));
  put(c, kKey2, blob(100));
  put(c, kKey3, blob(100));
  fs::resize_file(entry_dir(kKey2) / "cubin", 10);
  fs::remove(entry_dir(kKey3) / "manifest.json");
  set_mtime(entry_dir() / "last_used", 1000);

  auto report = c.verify(false);
  EXPECT_EQ(report.ok, 1u);
  ASSERT_EQ(report.bad.size(), 2u);
  for (const auto& line : report.bad) EXPECT_EQ(line.rfind(std::string(kGroup) + "/", 0), 0u) << line;
  EXPECT_TRUE(fs::exists(entry_dir(kKey2)));          // only reported
  EXPECT_EQ(mtime(entry_dir() / "last_used"), 1000);  // verifying is not using

  report = c.verify(true);
  EXPECT_EQ(report.bad.size(), 2u);
  EXPECT_FALSE(fs::exists(entry_dir(kKey2)));
  EXPECT_FALSE(fs::exists(entry_dir(kKey3)));
  EXPECT_EQ(group_listing(), std::set<std::string>{kKey});

  report = c.verify(false);
  EXPECT_EQ(report.ok, 1u);
  EXPECT_TRUE(report.bad.empty());
}

TEST_F(CacheTest, PruneRemovesLeastRecentlyUsedFirst) {
  CubinCache c(root_.string());
  const std::vector<std::string> keys = {"00000000000000000000000000000001", "00000000000000000000000000000002",
                                         "00000000000000000000000000000003", "00000000000000000000000000000004"};
  // Stamp ages deliberately not in key order: 2 is oldest, then 4, 1, 3.
  const std::vector<int64_t> stamps = {3000, 1000, 4000, 2000};
  for (size_t i = 0; i < keys.size(); ++i) {
    put(c, keys[i], blob(1000, int(i)));
    set_mtime(entry_dir(keys[i]) / "last_used", stamps[i]);
  }
  uint64_t total = 0, per_entry = 0;
  for (const auto& e : c.list()) total += e.bytes, per_entry = e.bytes;

  EXPECT_EQ(c.prune(total), 0u);  // already within budget
  EXPECT_EQ(c.list().size(), 4u);

  EXPECT_EQ(c.prune(total - 1), 1u);
  EXPECT_FALSE(fs::exists(entry_dir(keys[1])));

  EXPECT_EQ(c.prune(2 * per_entry), 1u);
  EXPECT_FALSE(fs::exists(entry_dir(keys[3])));
  EXPECT_TRUE(fs::exists(entry_dir(keys[0])));
  EXPECT_TRUE(fs::exists(entry_dir(keys[2])));

  // A hit makes an entry the most recently used one.
  CachedEntry e;
  ASSERT_EQ(c.load(kGroup, keys[0], e), Lookup::hit);
  EXPECT_EQ(c.prune(per_entry), 1u);
  EXPECT_TRUE(fs::exists(entry_dir(keys[0])));
  EXPECT_FALSE(fs::exists(entry_dir(keys[2])));

  EXPECT_EQ(c.prune(0), 1u);
  EXPECT_TRUE(c.list().empty());
  EXPECT_TRUE(group_listing().empty());  // no trash left
}

TEST_F(CacheTest, ClearRemovesEverything) {
  CubinCache c(root_.string());
  put(c, kKey, blob(100));
  put(c, kKey2, blob(100));
  put(c, kKey, blob(100), "sm_80/softmax");
  c.lock(kGroup, kKey3);
  fs::create_directories(root_ / kGroup / (std::string(".tmp-") + kKey3 + "-1-abc"));

  EXPECT_EQ(c.clear(), 3u);
  EXPECT_TRUE(c.list().empty());
  EXPECT_FALSE(fs::exists(root_ / kGroup));
  EXPECT_FALSE(fs::exists(root_ / "sm_80"));
  EXPECT_TRUE(fs::is_directory(root_));
  EXPECT_EQ(c.clear(), 0u);

  // Still usable afterwards.
  put(c, kKey, blob(100));
  CachedEntry e;
  EXPECT_EQ(c.load(kGroup, kKey, e), Lookup::hit);
}

// Sets or unsets environment variables for a scope, restoring the old values.
class EnvGuard {
 public:
  void set(const char* name, const char* value) {
    if (!saved_.count(name)) {
      const char* old = std::getenv(name);
      saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
    }
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~EnvGuard() {
    for (const auto& [name, old] : saved_) {
      if (old)
        ::setenv(name.c_str(), old->c_str(), 1);
      else
        ::unsetenv(name.c_str());
    }
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST(CubinCacheRoot, DefaultRootHonoursEnvironment) {
  EnvGuard env;
  env.set("KILN_CACHE_DIR", "/a/kiln-cache");
  env.set("XDG_CACHE_HOME", "/b/xdg");
  env.set("HOME", "/c/home");
  EXPECT_EQ(kiln::cache::default_cache_root(), "/a/kiln-cache");
  env.set("KILN_CACHE_DIR", nullptr);
  EXPECT_EQ(kiln::cache::default_cache_root(), "/b/xdg/kiln");
  env.set("XDG_CACHE_HOME", "");  // empty counts as unset
  EXPECT_EQ(kiln::cache::default_cache_root(), "/c/home/.cache/kiln");
  env.set("XDG_CACHE_HOME", nullptr);
  EXPECT_EQ(kiln::cache::default_cache_root(), "/c/home/.cache/kiln");
  env.set("HOME", nullptr);
  EXPECT_EQ(kiln::cache::default_cache_root(), "");
}

}  // namespace
