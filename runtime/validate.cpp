#include "runtime/validate.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <utility>

namespace kiln::detail {

std::string shape_str(const TensorRef& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += fmt::format("{}{}", i ? ", " : "", t.shape[i]);
  return s + "]";
}

void Check::invalid(const char* arg, const std::string& msg) const {
  throw InvalidArgument(fmt::format("{}: argument '{}': {}", op, arg, msg));
}
void Check::shape_error(const char* arg, const std::string& msg) const {
  throw ShapeMismatchError(fmt::format("{}: argument '{}': {}", op, arg, msg));
}

void Check::pointer(const char* arg, const TensorRef& t, int align) const {
  if (t.data == nullptr) invalid(arg, "expected a device pointer, got null");
  const auto addr = reinterpret_cast<uintptr_t>(t.data);
  if (addr % static_cast<uintptr_t>(align) != 0)
    invalid(arg, fmt::format("expected a {}-byte aligned pointer, got {:#x}", align, addr));
}

void Check::dtype(const char* arg, const TensorRef& t, std::initializer_list<DType> allowed) const {
  for (DType d : allowed)
    if (t.dtype == d) return;
  std::string names;
  for (DType d : allowed) names += fmt::format("{}{}", names.empty() ? "" : " or ", dtype_name(d));
  throw UnsupportedDtypeError(fmt::format("{}: argument '{}': expected dtype {}, got {}", op, arg, names, dtype_name(t.dtype)));
}

void Check::shape(const char* arg, const TensorRef& t, std::initializer_list<int64_t> dims) const {
  bool ok = t.ndim == static_cast<int>(dims.size());
  int i = 0;
  for (int64_t d : dims) {
    if (ok && d >= 0 && t.shape[i] != d) ok = false;
    ++i;
  }
  if (ok) {
    for (int k = 0; k < t.ndim; ++k)
      if (t.shape[k] < 0) ok = false;
  }
  if (ok) return;
  std::string want = "[";
  i = 0;
  for (int64_t d : dims) want += fmt::format("{}{}", i++ ? ", " : "", d < 0 ? std::string("*") : std::to_string(d));
  shape_error(arg, fmt::format("expected shape {}, got {}", want + "]", shape_str(t)));
}

void Check::contiguous(const char* arg, const TensorRef& t) const {
  if (!t.is_contiguous()) shape_error(arg, fmt::format("expected a contiguous (row-major) tensor, got shape {} with "
                                                       "strides [{}]", shape_str(t), fmt::join(t.strides.begin(),
                                                       t.strides.begin() + t.ndim, ", ")));
}

void Check::rows(const char* arg, const TensorRef& t, int align) const {
  if (t.ndim != 2) shape_error(arg, fmt::format("expected a 2-D tensor, got shape {}", shape_str(t)));
  if (t.shape[0] < 0 || t.shape[1] < 0)
    shape_error(arg, fmt::format("expected non-negative dims, got shape {}", shape_str(t)));
  if (t.strides[1] != 1 && t.shape[1] != 1)
    shape_error(arg, fmt::format("expected the last dim contiguous (stride 1), got stride {}", t.strides[1]));
  if (t.shape[0] > 1 && t.strides[0] < t.shape[1])
    shape_error(arg, fmt::format("expected a row stride ≥ {} elements, got {}", t.shape[1], t.strides[0]));
  const int64_t row_bytes = t.strides[0] * static_cast<int64_t>(dtype_size(t.dtype));
  if (t.shape[0] > 1 && row_bytes % align != 0)
    invalid(arg, fmt::format("expected a row stride that keeps rows {}-byte aligned, got {} elements ({} bytes)", align,
                             t.strides[0], row_bytes));
}

void Check::token_rows(const char* arg, const TensorRef& t, int64_t vec) const {
  if (t.shape[0] < 0 || t.shape[1] < 0 || t.shape[2] < 0)
    shape_error(arg, fmt::format("expected non-negative dims, got shape {}", shape_str(t)));
  if (t.strides[2] != 1 && t.shape[2] > 1)
    shape_error(arg, fmt::format("expected the last dim dense (inner stride 1), got stride {}", t.strides[2]));
  const int64_t s0 = stride_of(t, 0), s1 = stride_of(t, 1);
  if (s0 < 0 || s1 < 0)
    shape_error(arg, fmt::format("expected non-negative strides, got [{}, {}, 1]", t.strides[0], t.strides[1]));
  const int64_t vec_bytes = vec * static_cast<int64_t>(dtype_size(t.dtype));
  if (s0 % vec != 0 || s1 % vec != 0)
    invalid(arg, fmt::format("expected token strides (dims 0 and 1) that are multiples of {} elements (rows aligned to "
                             "the {}-byte vector width), got [{}, {}, 1]",
                             vec, vec_bytes, t.strides[0], t.strides[1]));
  if (t.numel() > 0) pointer(arg, t, static_cast<int>(vec_bytes));
}

void Check::fits_int32(const char* arg, int64_t value, const char* what) const {
  if (value > INT32_MAX) invalid(arg, fmt::format("{} = {} exceeds the int32 limit {}", what, value, INT32_MAX));
}

void Check::finite_nonnegative(const char* arg, float value) const {
  if (!(value >= 0.f) || !std::isfinite(value)) invalid(arg, fmt::format("expected a finite value ≥ 0, got {}", value));
}

// A sufficient test: the dims, ordered by stride, nest (the smaller stride spans a row, the larger the smaller dim).
void Check::disjoint_rows(const char* arg, const TensorRef& t) const {
  if (t.shape[0] == 0 || t.shape[1] == 0) return;  // no rows
  int64_t n1 = t.shape[0], s1 = stride_of(t, 0), n2 = t.shape[1], s2 = stride_of(t, 1);
  if (n1 <= 1) std::swap(n1, n2), std::swap(s1, s2);  // the dim of extent > 1 first (if any)
  if (n2 > 1 && s2 < s1) std::swap(n1, n2), std::swap(s1, s2);
  const bool ok = n1 <= 1 || (s1 >= t.shape[2] && (n2 <= 1 || s2 >= s1 * n1));
  if (!ok)
    invalid(arg, fmt::format("expected an output whose rows do not overlap, got shape {} with strides [{}, {}, 1]",
                             shape_str(t), t.strides[0], t.strides[1]));
}

RowView as_rows(const Check& ck, const char* arg, const TensorRef& t, int align) {
  RowView r;
  r.rank = t.ndim;
  if (t.ndim == 2) {
    ck.rows(arg, t, align);
    r.rows = t.shape[0];
    r.cols = t.shape[1];
    r.stride = t.shape[0] > 1 ? t.strides[0] : t.shape[1];
    r.lead[0] = t.shape[0];
  } else if (t.ndim == 3) {
    if (t.shape[0] < 0 || t.shape[1] < 0 || t.shape[2] < 0)
      ck.shape_error(arg, fmt::format("expected non-negative dims, got shape {}", shape_str(t)));
    ck.contiguous(arg, t);
    r.rows = t.shape[0] * t.shape[1];
    r.cols = t.shape[2];
    r.stride = t.shape[2];
    r.lead[0] = t.shape[0];
    r.lead[1] = t.shape[1];
  } else {
    ck.shape_error(arg, fmt::format("expected a 2-D [rows, *] or 3-D [B, S, *] tensor, got shape {}", shape_str(t)));
  }
  if (r.rows > 0 && r.cols > 0) ck.pointer(arg, t, 16);
  return r;
}

RowView as_rows_like(const Check& ck, const char* arg, const TensorRef& t, DType dtype, const RowView& like,
                     int64_t cols, const char* cols_name, int align) {
  ck.dtype(arg, t, {dtype});
  const RowView r = as_rows(ck, arg, t, align);
  const bool lead_ok = r.rank == like.rank && r.lead[0] == like.lead[0] && r.lead[1] == like.lead[1];
  if (!lead_ok || r.cols != cols) {
    const std::string want = like.rank == 2 ? fmt::format("[{}, {}]", like.rows, cols)
                                            : fmt::format("[{}, {}, {}]", like.lead[0], like.lead[1], cols);
    ck.shape_error(arg, fmt::format("expected shape {} (x's leading dims, last dim {}), got {}", want, cols_name,
                                    shape_str(t)));
  }
  return r;
}

}  // namespace kiln::detail
