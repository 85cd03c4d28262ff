// runtime/cubin_elf.cpp — the section headers of an ELF64 cubin, bounds-checked (a cubin from the cache has been
// checksummed, but nothing here trusts its offsets).
#include "runtime/cubin_elf.hpp"

#include <cstring>

namespace kiln::detail {
namespace {

template <class T>
bool read_at(std::string_view b, uint64_t off, T& v) {
  if (off > b.size() || b.size() - off < sizeof(T)) return false;
  std::memcpy(&v, b.data() + off, sizeof(T));
  return true;
}

}  // namespace

uint64_t cubin_code_bytes(std::string_view cubin, std::string_view kernel) {
  // e_ident: 0x7f 'E' 'L' 'F', class 2 (64-bit), data 1 (little-endian).
  if (cubin.size() < 64 || std::memcmp(cubin.data(), "\x7f" "ELF", 4) != 0 || cubin[4] != 2 || cubin[5] != 1) return 0;
  uint64_t shoff = 0;
  uint16_t shentsize = 0, shnum = 0, shstrndx = 0;
  if (!read_at(cubin, 0x28, shoff) || !read_at(cubin, 0x3a, shentsize) || !read_at(cubin, 0x3c, shnum) ||
      !read_at(cubin, 0x3e, shstrndx) || shentsize < 64 || shstrndx >= shnum)
    return 0;
  auto field = [&](uint16_t i, uint64_t at, auto& v) { return read_at(cubin, shoff + uint64_t{i} * shentsize + at, v); };
  uint64_t str_off = 0, str_size = 0;
  if (!field(shstrndx, 24, str_off) || !field(shstrndx, 32, str_size) || str_off > cubin.size() ||
      cubin.size() - str_off < str_size)
    return 0;
  const std::string_view names = cubin.substr(str_off, str_size);
  for (uint16_t i = 0; i < shnum; ++i) {
    uint32_t name = 0;
    uint64_t size = 0;
    if (!field(i, 0, name) || !field(i, 32, size) || name >= names.size()) continue;
    const std::string_view rest = names.substr(name);
    const std::string_view n = rest.substr(0, rest.find('\0'));
    if (n.size() == 6 + kernel.size() && n.substr(0, 6) == ".text." && n.substr(6) == kernel) return size;
  }
  return 0;
}

}  // namespace kiln::detail
