// runtime/tensor_map.cpp — see tensor_map.hpp.
#include "runtime/tensor_map.hpp"

#include "runtime/driver.hpp"

namespace kiln::detail {

void encode_tma_2d(TensorMap& out, const void* data, DType t, int64_t cols, int64_t rows, int64_t pitch,
                   int box_rows) {
  static_assert(sizeof(TensorMap) == sizeof(CUtensorMap) && alignof(TensorMap) >= alignof(CUtensorMap));
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(pitch)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(128 / dtype_size(t)), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  const CUtensorMapDataType dt = t == DType::f32                      ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
                                 : t == DType::f16                    ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                 : dtype_size(t) == 1                 ? CU_TENSOR_MAP_DATA_TYPE_UINT8  // bytes
                                                                      : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  check(driver().cuTensorMapEncodeTiled(reinterpret_cast<CUtensorMap*>(&out), dt, 2, const_cast<void*>(data), dims,
                                        strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
        "cuTensorMapEncodeTiled");
}

}  // namespace kiln::detail
