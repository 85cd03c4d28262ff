// runtime/log.hpp — leveled logging to stderr ("kiln: warn: …").
#pragma once
#include <fmt/format.h>

#include "kiln/runtime.hpp"

namespace kiln::detail {

LogLevel log_level();
void set_log_level(LogLevel level);
void log_line(LogLevel level, const std::string& msg);

template <typename... Args>
void log(LogLevel level, fmt::format_string<Args...> f, Args&&... args) {
  if (static_cast<int>(level) <= static_cast<int>(log_level())) log_line(level, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace kiln::detail
