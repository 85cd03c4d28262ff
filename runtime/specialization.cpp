#include "runtime/specialization.hpp"

#include <fmt/format.h>
#include <xxhash.h>

#include "kiln/errors.hpp"
#include "runtime/family.hpp"

namespace kiln::detail {

Arch Arch::parse(std::string_view name) {
  Arch a;
  std::string_view s = name;
  if (s.substr(0, 3) != "sm_" || s.size() < 5)
    throw InvalidArgument(fmt::format("arch: expected a name like sm_90a or sm_80, got '{}'", name));
  s.remove_prefix(3);
  int v = 0;
  size_t i = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) v = v * 10 + (s[i] - '0');
  if (i < 2 || v < 50 || v > 200)
    throw InvalidArgument(fmt::format("arch: expected a name like sm_90a or sm_80, got '{}'", name));
  a.sm = v;
  if (i < s.size()) {
    if (i + 1 != s.size() || (s[i] != 'a' && s[i] != 'f'))
      throw InvalidArgument(fmt::format("arch: unknown suffix in '{}' (expected 'a', 'f' or none)", name));
    a.suffix = s[i];
  }
  return a;
}

std::string Arch::name() const { return suffix ? fmt::format("sm_{}{}", sm, suffix) : fmt::format("sm_{}", sm); }
std::string Arch::virtual_name() const {
  return suffix ? fmt::format("compute_{}{}", sm, suffix) : fmt::format("compute_{}", sm);
}

std::string Key128::hex() const { return fmt::format("{:016x}{:016x}", hi, lo); }

Key128 Specialization::key() const {
  // Fixed-size POD image of everything that selects the binary; no padding bytes left uninitialized.
  struct Image {
    uint64_t family_id;
    uint32_t kernel;
    int32_t sm;
    int32_t suffix;
    int32_t pad;
    int64_t params[kMaxParams];
    int32_t config[kMaxConfig];
  } img{};
  img.family_id = family ? family->id : 0;
  img.kernel = kernel;
  img.sm = arch.sm;
  img.suffix = arch.suffix;
  for (int i = 0; i < kMaxParams; ++i) img.params[i] = params[i];
  for (int i = 0; i < kMaxConfig; ++i) img.config[i] = config[i];
  XXH128_hash_t h = XXH3_128bits(&img, sizeof(img));
  return Key128{h.low64, h.high64};
}

std::string Specialization::describe() const {
  std::string out;
  if (family && family->kernels.size() > 1) out += fmt::format("{} ", family->kernels.at(kernel));
  for (size_t i = 0; family && i < family->param_names.size(); ++i)
    out += fmt::format("{}{}={}", i ? " " : "", family->param_names[i], params[i]);
  if (family && !family->config_names.empty()) {
    out += " |";
    for (size_t i = 0; i < family->config_names.size(); ++i)
      out += fmt::format(" {}={}", family->config_names[i], config[i]);
  }
  return out;
}

}  // namespace kiln::detail
