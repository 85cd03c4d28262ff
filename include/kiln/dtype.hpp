// kiln/dtype.hpp — the element types kiln ops accept.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kiln {

enum class DType : uint8_t {
  bf16 = 0,
  f16 = 1,
  f32 = 2,
  e4m3 = 3,   // float8_e4m3fn: finite-only, max 448, NaN = 0x7F/0xFF
  e5m2 = 4,   // float8_e5m2
  i32 = 5,
  i64 = 6,
  i16 = 7,
  u8 = 8,     // raw bytes; packed fp4 (two e2m1 per byte, element 2i in the low nibble)
};

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::bf16: case DType::f16: case DType::i16: return 2;
    case DType::f32: case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::e4m3: case DType::e5m2: case DType::u8: return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::bf16: return "bf16";
    case DType::f16: return "fp16";
    case DType::f32: return "fp32";
    case DType::e4m3: return "fp8_e4m3";
    case DType::e5m2: return "fp8_e5m2";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::i16: return "int16";
    case DType::u8: return "uint8";
  }
  return "?";
}

}  // namespace kiln
