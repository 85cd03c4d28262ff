// tests/compile_util.hpp — the NVRTC compile and search-space checks the CPU family tests share (no GPU, no cache).
#pragma once
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "runtime/specialization.hpp"

namespace kiln::test {

inline std::string describe_with_arch(const detail::Specialization& s) {
  return std::string(s.family->name) + " " + s.arch.name() + " " + s.describe();
}

// Compiles each specialization for its arch (NVRTC, no cache): a cubin of more than 1000 bytes and a lowered kernel
// name. A failure names the specialization.
inline void expect_compiles(const std::vector<detail::Specialization>& specs) {
  detail::Counters counters;
  for (const detail::Specialization& s : specs) {
    SCOPED_TRACE(describe_with_arch(s));
    const detail::EnsureResult r = detail::ensure_cubin(s, nullptr, false, counters);
    EXPECT_GT(r.cubin.size(), 1000u);
    EXPECT_FALSE(r.lowered_name.empty());
  }
}

// The family's search space of `s` (s's config being its heuristic default): not empty, holding the default, every
// point within the 227 KiB of opt-in dynamic shared memory. Returns the space for the caller's own checks.
inline std::vector<detail::Specialization> checked_search_space(const detail::Specialization& s) {
  std::vector<detail::Specialization> space;
  s.family->search_space(s, space);
  EXPECT_FALSE(space.empty()) << describe_with_arch(s);
  bool has_default = false;
  for (const detail::Specialization& c : space) {
    has_default |= c.config == s.config;
    EXPECT_LE(s.family->dynamic_smem_bytes(c), 227 * 1024) << describe_with_arch(c);
  }
  EXPECT_TRUE(has_default) << "the default is not in its space: " << describe_with_arch(s);
  return space;
}

}  // namespace kiln::test
