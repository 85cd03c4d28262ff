#include "runtime/log.hpp"

#include <atomic>
#include <cstdio>

namespace kiln::detail {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::warn)};
const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::error: return "error";
    case LogLevel::warn: return "warn";
    case LogLevel::info: return "info";
    case LogLevel::debug: return "debug";
  }
  return "?";
}
}  // namespace

LogLevel log_level() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }
void set_log_level(LogLevel level) { g_level.store(static_cast<int>(level), std::memory_order_relaxed); }
void log_line(LogLevel level, const std::string& msg) {
  std::fprintf(stderr, "kiln: %s: %s\n", level_name(level), msg.c_str());
}

}  // namespace kiln::detail
