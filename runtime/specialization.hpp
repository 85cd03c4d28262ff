// runtime/specialization.hpp — what one compiled kernel is: family, compile-time parameters, tile config, arch.
//
// A Specialization is a fixed-size POD, so the hot path hashes it without allocating or formatting anything.
#pragma once
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace kiln::detail {

struct FamilyDef;

// A GPU target: sm_<major><minor><suffix>, suffix 'a' (arch-specific, needed for wgmma/setmaxnreg) or 0.
struct Arch {
  int32_t sm = 0;       // 90 for sm_90a
  char suffix = 0;      // 'a', 'f' or 0
  char pad_[3] = {};

  static Arch parse(std::string_view name);  // throws InvalidArgument
  std::string name() const;                  // "sm_90a"
  std::string virtual_name() const;          // "compute_90a"
  bool operator==(const Arch& o) const { return sm == o.sm && suffix == o.suffix; }
};

// Warpgroup MMAs (wgmma) and the kernels built on them: sm_90a only.
inline bool has_wgmma(const Arch& a) { return a.sm == 90 && a.suffix == 'a'; }

struct Key128 {
  uint64_t lo = 0, hi = 0;
  bool operator==(const Key128& o) const { return lo == o.lo && hi == o.hi; }
  std::string hex() const;
};

struct Key128Hash {
  size_t operator()(const Key128& k) const noexcept { return static_cast<size_t>(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull)); }
};

constexpr int kMaxParams = 12;
constexpr int kMaxConfig = 6;

struct Specialization {
  const FamilyDef* family = nullptr;
  uint32_t kernel = 0;                     // index into family->kernels
  Arch arch{};
  std::array<int64_t, kMaxParams> params{};  // values, in family->param_names order
  std::array<int32_t, kMaxConfig> config{};  // tile config, in family->config_names order

  // The in-memory key: XXH3-128 over the family's id and the fields above (no strings, no allocation).
  Key128 key() const;
  // "N=2048 mode=2 round_scale=1 | rows=128 cols=256 cluster=8" (slow path only).
  std::string describe() const;
};

}  // namespace kiln::detail
