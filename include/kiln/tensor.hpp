// kiln/tensor.hpp — a non-owning view of device memory: pointer, dtype, shape, strides (in elements).
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>

#include "kiln/dtype.hpp"

namespace kiln {

struct TensorRef {
  static constexpr int kMaxDims = 6;

  void* data = nullptr;
  DType dtype = DType::f32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> strides{};  // in elements

  // A row-major (last dim contiguous) view.
  static TensorRef contiguous(void* data, DType dtype, std::initializer_list<int64_t> dims) {
    TensorRef t;
    t.data = data;
    t.dtype = dtype;
    t.ndim = static_cast<int>(dims.size());
    int i = 0;
    for (int64_t d : dims) t.shape[i++] = d;
    int64_t s = 1;
    for (int k = t.ndim - 1; k >= 0; --k) {
      t.strides[k] = s;
      s *= t.shape[k];
    }
    return t;
  }
  // A 2-D view with an explicit row stride (elements), e.g. a column slice of a wider tensor.
  static TensorRef strided_2d(void* data, DType dtype, int64_t rows, int64_t cols, int64_t row_stride) {
    TensorRef t = contiguous(data, dtype, {rows, cols});
    t.strides[0] = row_stride;
    return t;
  }

  bool defined() const { return ndim > 0 || data != nullptr; }
  int64_t numel() const {
    int64_t n = 1;
    for (int k = 0; k < ndim; ++k) n *= shape[k];
    return n;
  }
  bool is_contiguous() const {
    int64_t s = 1;
    for (int k = ndim - 1; k >= 0; --k) {
      if (shape[k] != 1 && strides[k] != s) return false;
      s *= shape[k];
    }
    return true;
  }
};

}  // namespace kiln
