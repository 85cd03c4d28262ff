// runtime/validate.hpp — argument checks shared by every host recipe. Each throws the typed error with a message
// "<op>: argument '<arg>': expected …, got …". They run before any GPU work and allocate only when they throw.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>

#include "kiln/errors.hpp"
#include "kiln/tensor.hpp"

namespace kiln::detail {

struct Check {
  const char* op;

  // Non-null pointer whose address is a multiple of `align` bytes.
  void pointer(const char* arg, const TensorRef& t, int align) const;
  void dtype(const char* arg, const TensorRef& t, std::initializer_list<DType> allowed) const;
  // Rank and dims; a dim of -1 accepts any size.
  void shape(const char* arg, const TensorRef& t, std::initializer_list<int64_t> dims) const;
  void contiguous(const char* arg, const TensorRef& t) const;
  // 2-D with non-negative dims, last dim contiguous; the row stride (elements) must keep rows `align`-byte aligned.
  void rows(const char* arg, const TensorRef& t, int align) const;
  // A 3-D tensor of token rows (dims 0 and 1 index tokens, dim 2 runs along a row): non-negative dims, the last dim
  // dense, strides of dims 0 and 1 (as stride_of gives them) non-negative multiples of `vec` elements, and unless
  // empty a pointer aligned to `vec` elements. The caller checks the dtype and the shape first.
  void token_rows(const char* arg, const TensorRef& t, int64_t vec) const;
  // A dim that indexes with 32-bit ints.
  void fits_int32(const char* arg, int64_t value, const char* what) const;
  // A scalar argument (eps, a loss weight) that must be finite and ≥ 0; NaN is rejected too.
  void finite_nonnegative(const char* arg, float value) const;
  // A 3-D output whose last dim is dense: its rows (dims 0 and 1, strides as stride_of gives them) must not overlap.
  void disjoint_rows(const char* arg, const TensorRef& t) const;
  [[noreturn]] void invalid(const char* arg, const std::string& msg) const;
  [[noreturn]] void shape_error(const char* arg, const std::string& msg) const;

  // The whole standard set for a tensor the op reads or writes: non-null, aligned, dtype, exact shape, contiguous.
  void tensor(const char* arg, const TensorRef& t, std::initializer_list<DType> dtypes,
              std::initializer_list<int64_t> dims, int align = 16) const {
    dtype(arg, t, dtypes);
    shape(arg, t, dims);
    contiguous(arg, t);
    if (t.numel() > 0) pointer(arg, t, align);  // an empty tensor may be null
  }
};

// A [rows, cols] view of token rows: a 2-D tensor (last dim contiguous, any row stride keeping rows `align`-byte
// aligned) or a contiguous 3-D [B, S, cols] one (rows = B·S). Unless empty, the pointer must be 16-byte aligned.
struct RowView {
  int64_t rows = 0, cols = 0, stride = 0;  // stride: elements between rows
  int64_t lead[2] = {0, -1};               // leading dims as given (rank 2: {rows, -1})
  int rank = 0;
};
RowView as_rows(const Check& ck, const char* arg, const TensorRef& t, int align);
// A tensor of dtype `dtype` with `like`'s leading dims and last dim `cols` (named `cols_name` in the message; `like`
// is x's view), as a RowView.
RowView as_rows_like(const Check& ck, const char* arg, const TensorRef& t, DType dtype, const RowView& like,
                     int64_t cols, const char* cols_name, int align);

std::string shape_str(const TensorRef& t);
// The stride of dim k as a kernel uses it: 0 where the dim has extent ≤ 1 (frameworks leave any value there).
inline int64_t stride_of(const TensorRef& t, int k) { return t.shape[k] <= 1 ? 0 : t.strides[k]; }

}  // namespace kiln::detail
