// Host recipe: the FP4 MoE's block-scaled quantizers (templates/kiln/fp4_quant.cuh). Spec: fp4-moe.md §5, §13.
#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kiln/fp4_quant_args.h"
#include "kiln/ops/fp4.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/fp4_quant.cpp: a runnable op (also the tuner's instance).
BenchInstance fp4_quant_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);
}  // namespace detail

namespace {
using namespace detail;

enum Format : int64_t { kNvfp4 = 0, kMxfp4 = 1, kMxfp8 = 2 };
enum { P_DTYPE, P_FORMAT };
enum { C_WARPS };

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/fp4_quant.cuh\"\n";
  name = fmt::format("kiln::fp4_quantize_kernel<{}, {}, {}>", cxx_type(s.params[P_DTYPE]), s.params[P_FORMAT],
                     s.config[C_WARPS]);
}

int smem_bytes(const Specialization&) { return 0; }

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);

FamilyDef g_family{"fp4_quant", {"quantize"}, {"dtype", "format"}, {"warps"}, render, smem_bytes, enumerate,
                   search_space, fp4_quant_tune_instance};

Specialization spec(Arch arch, DType t, int64_t format) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = 0;
  s.params[P_DTYPE] = static_cast<int64_t>(t);
  s.params[P_FORMAT] = format;
  s.config[C_WARPS] = 4;
  return s;
}

void search_space(const Specialization& base, std::vector<Specialization>& out) {
  out.push_back(spec(base.arch, static_cast<DType>(base.params[P_DTYPE]), base.params[P_FORMAT]));
  for (int w : {8, 2}) {
    Specialization s = out.front();
    s.config[C_WARPS] = w;
    out.push_back(s);
  }
}

// Shape-independent: bf16 activations into each format (the MoE's hidden states and the FC1 output).
void enumerate(const ModelConfig&, Arch arch, std::vector<Specialization>& out) {
  for (int64_t f : {kNvfp4, kMxfp4, kMxfp8}) out.push_back(spec(arch, DType::bf16, f));
}

int64_t block_of(int64_t format) { return format == kNvfp4 ? 16 : 32; }

void quantize(Runtime& rt, const char* op, int64_t format, const TensorRef& x, const TensorRef* global_scale,
              const TensorRef& q, const TensorRef& sf, Stream stream) {
  const Check ck{op};
  ck.dtype("x", x, {DType::f32, DType::bf16, DType::f16});
  if (x.ndim < 1) ck.shape_error("x", fmt::format("expected rank ≥ 1 (rows of K), got shape {}", shape_str(x)));
  for (int k = 0; k < x.ndim; ++k)
    if (x.shape[k] < 0) ck.shape_error("x", fmt::format("expected non-negative dims, got {}", shape_str(x)));
  const int64_t B = block_of(format), K = x.shape[x.ndim - 1];
  if (K % B != 0)
    ck.shape_error("x", fmt::format("expected the last dim (K) a multiple of {} (the block), got {}", B, K));
  ck.contiguous("x", x);
  if (x.numel() > 0) ck.pointer("x", x, 16);
  auto like = [&](const char* arg, const TensorRef& t, int64_t last, std::initializer_list<DType> dtypes) {
    ck.dtype(arg, t, dtypes);
    bool ok = t.ndim == x.ndim;
    for (int k = 0; ok && k + 1 < x.ndim; ++k) ok = t.shape[k] == x.shape[k];
    if (!ok || t.shape[t.ndim - 1] != last) {
      std::string want = "[";
      for (int k = 0; k + 1 < x.ndim; ++k) want += fmt::format("{}, ", x.shape[k]);
      ck.shape_error(arg, fmt::format("expected shape {}{}] (x's leading dims), got {}", want, last, shape_str(t)));
    }
    ck.contiguous(arg, t);
  };
  if (format == kMxfp8)
    like("q", q, K, {DType::e4m3, DType::u8});
  else
    like("q", q, K / 2, {DType::u8});
  like("sf", sf, K / B, {DType::u8, DType::e4m3});
  if (q.numel() > 0) ck.pointer("q", q, 16);
  if (sf.numel() > 0) ck.pointer("sf", sf, 1);
  if (global_scale != nullptr) {
    ck.dtype("global_scale", *global_scale, {DType::f32});
    if (global_scale->ndim > 1 || global_scale->numel() != 1)
      ck.shape_error("global_scale",
                     fmt::format("expected one element (shape [] or [1]), got shape {}", shape_str(*global_scale)));
    ck.pointer("global_scale", *global_scale, 4);
  }
  const int64_t blocks = x.numel() / B;
  if (blocks == 0) return;
  auto& impl = rt.impl();
  const Specialization s = impl.tuned(spec(impl.target_arch(), x.dtype, format), blocks * B / K);
  const int threads = 32 * s.config[C_WARPS];
  const Kernel& k = impl.kernel(s);
  Fp4QuantArgs a{x.data, global_scale != nullptr ? static_cast<const float*>(global_scale->data) : nullptr,
                 static_cast<unsigned char*>(q.data), static_cast<unsigned char*>(sf.data),
                 static_cast<long long>(blocks)};
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>(impl.persistent_grid(k, threads, 0, (blocks + threads - 1) / threads));
  d.block[0] = static_cast<unsigned>(threads);
  impl.launch(k, d, stream, a);
}

}  // namespace

KILN_REGISTER_FAMILY(fp4_quant, g_family)

void quantize_nvfp4(Runtime& rt, const TensorRef& x, const TensorRef& global_scale, const TensorRef& q,
                    const TensorRef& sf, Stream stream) {
  quantize(rt, "quantize_nvfp4", kNvfp4, x, &global_scale, q, sf, stream);
}

void quantize_mxfp4(Runtime& rt, const TensorRef& x, const TensorRef& q, const TensorRef& sf, Stream stream) {
  quantize(rt, "quantize_mxfp4", kMxfp4, x, nullptr, q, sf, stream);
}

void quantize_mxfp8(Runtime& rt, const TensorRef& x, const TensorRef& q, const TensorRef& sf, Stream stream) {
  quantize(rt, "quantize_mxfp8", kMxfp8, x, nullptr, q, sf, stream);
}

}  // namespace kiln
