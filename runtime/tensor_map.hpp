// runtime/tensor_map.hpp — encoding the 2-D TMA tensor maps the sm_90 kernels take as __grid_constant__ arguments
// (kiln/tensor_map.h), through the dlopen'ed driver.
#pragma once
#include <cstdint>

#include "kiln/dtype.hpp"
#include "kiln/tensor_map.h"

namespace kiln::detail {

// A 2-D tensor map over `rows` × `cols` elements of dtype `t` at `data` (row pitch `pitch` bytes, a multiple of 16):
// boxes of 128 bytes (64 16-bit or 32 fp32 elements) × `box_rows` rows with the 128-byte swizzle — the K-major layout
// wgmma reads; reads outside the tensor fill zeros. bf16, f16, f32 and 8-bit types (as bytes: 128 elements a box; a
// 16-bit buffer of another 16-bit type may be described as bf16: the copies do not convert). Throws DeviceError if
// the driver refuses.
void encode_tma_2d(TensorMap& out, const void* data, DType t, int64_t cols, int64_t rows, int64_t pitch, int box_rows);

}  // namespace kiln::detail
