// runtime/cubin_elf.hpp — what a cubin (an ELF64 object) says about its kernel, read without the driver or the
// toolkit's tools.
#pragma once
#include <cstdint>
#include <string_view>

namespace kiln::detail {

// Bytes of SASS of `kernel` (its lowered name) in `cubin`: the size of its section ".text.<kernel>". 0 when the cubin
// is not a well-formed little-endian ELF64 object or holds no such section. (Code size matters where a kernel runs
// after other kernels: its code is then in no SM's instruction cache — `kiln bench --cold-code`.)
uint64_t cubin_code_bytes(std::string_view cubin, std::string_view kernel);

}  // namespace kiln::detail
