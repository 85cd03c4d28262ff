// kiln/version.hpp — kiln's version (part of every cache key: upgrading kiln never loads a stale cubin).
#pragma once
#define KILN_VERSION_MAJOR 0
#define KILN_VERSION_MINOR 1
#define KILN_VERSION_PATCH 0
#define KILN_VERSION_STRING "0.1.0"

namespace kiln {
inline constexpr const char* kVersion = KILN_VERSION_STRING;
}
