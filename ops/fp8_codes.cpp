// Host recipe: the uint8 "FP8 compatibility format" (templates/kiln/fp8_codes.cuh). Spec: triton-ops.md §4.
#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kiln/fp8_codes_args.h"
#include "kiln/ops/fp8.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/fp8_codes.cpp: a runnable op (also the tuner's instance).
BenchInstance fp8_codes_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);
}  // namespace detail

namespace {
using namespace detail;

enum : uint32_t { kQuantize = 0, kDequantize = 1 };
enum { P_DTYPE };
enum { C_WARPS };

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/fp8_codes.cuh\"\n";
  name = fmt::format("kiln::{}<{}, {}>", s.kernel == kQuantize ? "fp8_quantize_kernel" : "fp8_dequantize_kernel",
                     cxx_type(s.params[P_DTYPE]), s.config[C_WARPS]);
}

int smem_bytes(const Specialization&) { return 0; }

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);

FamilyDef g_family{"fp8_codes", {"quantize", "dequantize"}, {"dtype"}, {"warps"}, render, smem_bytes, enumerate,
                   search_space, fp8_codes_tune_instance};

Specialization spec(Arch arch, uint32_t kernel, DType t) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kernel;
  s.params[P_DTYPE] = static_cast<int64_t>(t);
  s.config[C_WARPS] = 8;
  return s;
}

void search_space(const Specialization& base, std::vector<Specialization>& out) {
  out.push_back(spec(base.arch, base.kernel, static_cast<DType>(base.params[P_DTYPE])));
  for (int w : {4, 16}) {
    Specialization s = out.front();
    s.config[C_WARPS] = w;
    out.push_back(s);
  }
}

// Shape-independent: the 16-bit activations' quantize (bf16, fp16) and the decode back to them; fp32 compiles on
// first use.
void enumerate(const ModelConfig&, Arch arch, std::vector<Specialization>& out) {
  for (DType t : {DType::bf16, DType::f16})
    for (uint32_t k : {kQuantize, kDequantize}) out.push_back(spec(arch, k, t));
}

void check_scale(const Check& ck, const TensorRef& scale) {
  ck.dtype("scale", scale, {DType::f32});
  if (scale.ndim > 1 || scale.numel() != 1)
    ck.shape_error("scale", fmt::format("expected one element (shape [] or [1]), got shape {}", shape_str(scale)));
  ck.pointer("scale", scale, 4);
}

void check_flat(const Check& ck, const char* arg, const TensorRef& t, std::initializer_list<DType> dtypes) {
  ck.dtype(arg, t, dtypes);
  for (int k = 0; k < t.ndim; ++k)
    if (t.shape[k] < 0) ck.shape_error(arg, fmt::format("expected non-negative dims, got {}", shape_str(t)));
  ck.contiguous(arg, t);
  if (t.numel() > 0) ck.pointer(arg, t, 16);
}

}  // namespace

KILN_REGISTER_FAMILY(fp8_codes, g_family)

void quantize_fp8(Runtime& rt, const TensorRef& x, const TensorRef& q, const TensorRef& scale, Stream stream) {
  const Check ck{"quantize_fp8"};
  check_flat(ck, "x", x, {DType::f32, DType::bf16, DType::f16});
  check_flat(ck, "q", q, {DType::u8});
  if (q.numel() != x.numel())
    ck.shape_error("q", fmt::format("expected {} elements (x's), got shape {}", x.numel(), shape_str(q)));
  check_scale(ck, scale);
  auto& impl = rt.impl();
  const int64_t n = x.numel();
  if (n == 0) {  // triton_ops: an empty tensor and scale 1.0
    const float one = 1.0f;
    check(driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(scale.data), &one, 4,
                                     reinterpret_cast<CUstream>(stream)),
          "cuMemcpyHtoDAsync (scale of an empty tensor)");
    return;
  }
  const Specialization s = impl.tuned(spec(impl.target_arch(), kQuantize, x.dtype), n);
  const int threads = 32 * s.config[C_WARPS];
  const Kernel& k = impl.kernel(s);
  const int64_t per_vec = 16 / static_cast<int64_t>(dtype_size(x.dtype));
  const int64_t work = (n / per_vec + n % per_vec + threads - 1) / threads;
  const int ctas = static_cast<int>(impl.persistent_grid(k, threads, 0, std::max<int64_t>(work, 1)));
  static const char owner = 0;
  impl.with_scratch(&owner, static_cast<size_t>(ctas) * 4, stream, [&](CUdeviceptr scratch) {
    Fp8QuantizeArgs a{x.data, static_cast<unsigned char*>(q.data), static_cast<float*>(scale.data),
                      reinterpret_cast<float*>(scratch), static_cast<long long>(n)};
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(ctas);
    d.block[0] = static_cast<unsigned>(threads);
    d.cooperative = true;  // the grid barrier between max|x| and the codes
    impl.launch(k, d, stream, a);
  });
}

void dequantize_fp8(Runtime& rt, const TensorRef& q, const TensorRef& scale, const TensorRef& out, Stream stream) {
  const Check ck{"dequantize_fp8"};
  check_flat(ck, "q", q, {DType::u8});
  check_scale(ck, scale);
  check_flat(ck, "out", out, {DType::f32, DType::bf16, DType::f16});
  if (out.numel() != q.numel())
    ck.shape_error("out", fmt::format("expected {} elements (q's), got shape {}", q.numel(), shape_str(out)));
  const int64_t n = q.numel();
  if (n == 0) return;
  auto& impl = rt.impl();
  const Specialization s = impl.tuned(spec(impl.target_arch(), kDequantize, out.dtype), n);
  const int threads = 32 * s.config[C_WARPS];
  const Kernel& k = impl.kernel(s);
  const int64_t per_vec = 16 / static_cast<int64_t>(dtype_size(out.dtype));
  const int64_t work = (n / per_vec + n % per_vec + threads - 1) / threads;
  Fp8DequantizeArgs a{static_cast<const unsigned char*>(q.data), static_cast<const float*>(scale.data), out.data,
                      static_cast<long long>(n)};
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>(impl.persistent_grid(k, threads, 0, std::max<int64_t>(work, 1)));
  d.block[0] = static_cast<unsigned>(threads);
  impl.launch(k, d, stream, a);
}

}  // namespace kiln
