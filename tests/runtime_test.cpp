// Runtime behaviour that needs no GPU: KILN_REQUIRE_PREWARMED, an unusable cache directory, the log of slow compiles.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "kiln/kiln.hpp"
#include "runtime/log.hpp"
#include "test_util.hpp"

namespace kiln {
namespace {

namespace fs = std::filesystem;


TEST(Runtime, RequirePrewarmedTurnsAMissIntoACacheErrorNamingTheSpecialization) {
  const test::TempDir dir;
  RuntimeOptions o;
  o.cache_dir = dir.str();
  o.require_prewarmed = true;
  Runtime rt(o);
  try {
    rt.prewarm(load_model("ling-mini-2.0"), {"sm_90a"}, 1);
    FAIL() << "expected CacheError";
  } catch (const CacheError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("KILN_REQUIRE_PREWARMED"), std::string::npos) << what;
    EXPECT_NE(what.find("sm_90a"), std::string::npos) << what;
    // The specialization's parameters ("N=2048 …" or "H=16 h=4 …": whichever family's entry misses first).
    EXPECT_TRUE(std::regex_search(what, std::regex("[A-Za-z_]+=[0-9]+ [A-Za-z_]+=[0-9]+"))) << what;
    // The specialization's parameters ("name=value"; which family misses first depends on registration order).
    EXPECT_TRUE(std::regex_search(what, std::regex(R"(\b\w+=\d+)"))) << what;
    EXPECT_NE(what.find(" | "), std::string::npos) << what;  // the specialization's parameters | config
    // The specialization's parameters and config ("<family> [<params> | <config>]"); which specialization is
    // missed first depends on the registration order of the families, so any is accepted.
    EXPECT_TRUE(std::regex_search(what, std::regex(R"(\[[^\]]*=[^\]]*\|[^\]]*\])"))) << what;
  }
  EXPECT_EQ(rt.stats().compiles, 0u);

  // Once prewarmed (by another runtime), the same runtime finds everything and compiles nothing.
  RuntimeOptions warm_opts = o;
  warm_opts.require_prewarmed = false;
  Runtime warm(warm_opts);
  warm.prewarm(load_model("ling-mini-2.0"), {"sm_90a"}, 1);
  const auto entries = rt.prewarm(load_model("ling-mini-2.0"), {"sm_90a"}, 1);
  for (const auto& e : entries) EXPECT_EQ(e.status, "hit") << e.family << " " << e.params;
  EXPECT_EQ(rt.stats().compiles, 0u);
}

TEST(Runtime, RequirePrewarmedFromTheEnvironment) {
  const test::TempDir dir;
  setenv("KILN_REQUIRE_PREWARMED", "1", 1);
  RuntimeOptions o;
  o.cache_dir = dir.str();
  Runtime rt(o);
  unsetenv("KILN_REQUIRE_PREWARMED");
  EXPECT_TRUE(rt.options().require_prewarmed);
  EXPECT_THROW(rt.prewarm(load_model("ling-mini-2.0"), {"sm_90a"}, 1), CacheError);
}

TEST(Runtime, UnwritableCacheDirDegradesToMemoryOnlyWithOneWarning) {
  const test::TempDir dir;
  const fs::path file = dir.path() / "not-a-dir";
  std::ofstream(file) << "x";
  RuntimeOptions o;
  o.cache_dir = (file / "kiln").string();  // below a regular file: cannot be created, even by root
  testing::internal::CaptureStderr();
  Runtime rt(o);
  const auto entries = rt.prewarm(load_model("ling-mini-2.0"), {"sm_90a"}, 2);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(rt.cache_dir(), "");
  ASSERT_FALSE(entries.empty());
  for (const auto& e : entries) EXPECT_EQ(e.status, "compiled");
  size_t warnings = 0;  // slow-compile notes ("taking more than 1 s") depend on the machine's load: not counted
  for (size_t at = 0; (at = err.find("kiln: warn:", at)) != std::string::npos; ++at)
    if (err.substr(at, err.find('\n', at) - at).find("taking more than") == std::string::npos) ++warnings;
  EXPECT_EQ(warnings, 1u) << err;
  EXPECT_NE(err.find("memory only"), std::string::npos) << err;
}

TEST(Runtime, BadArchAndLogLevelAreTypedErrors) {
  RuntimeOptions o;
  o.memory_only = true;
  o.arch = "sm90";
  EXPECT_THROW(Runtime{o}, InvalidArgument);
  setenv("KILN_LOG_LEVEL", "loud", 1);
  EXPECT_THROW(Runtime{RuntimeOptions{.memory_only = true}}, InvalidArgument);
  unsetenv("KILN_LOG_LEVEL");
}

// KILN_LOG_LEVEL fills in the default level only: a level the options set wins (as arch and tuning_db do).
TEST(Runtime, ExplicitLogLevelWinsOverTheEnvironment) {
  setenv("KILN_LOG_LEVEL", "debug", 1);
  {
    Runtime quiet(RuntimeOptions{.memory_only = true, .log_level = LogLevel::error});
    EXPECT_EQ(detail::log_level(), LogLevel::error);
    Runtime by_env(RuntimeOptions{.memory_only = true});
    EXPECT_EQ(detail::log_level(), LogLevel::debug);
  }
  unsetenv("KILN_LOG_LEVEL");
  detail::set_log_level(LogLevel::warn);
}

TEST(Runtime, GpuOpWithoutDriverIsADeviceError) {
  if (detail::driver_available()) GTEST_SKIP() << "a driver is present";
  Runtime rt(RuntimeOptions{.memory_only = true});
  auto fake = reinterpret_cast<void*>(0x10000);
  try {
    rms_norm_fwd(rt, TensorRef::contiguous(fake, DType::bf16, {4, 128}), TensorRef::contiguous(fake, DType::bf16, {128}),
                 TensorRef::contiguous(fake, DType::bf16, {4, 128}), {}, 1e-6f, nullptr);
    FAIL() << "expected DeviceError";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("driver"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln
