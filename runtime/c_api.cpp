// The C ABI (include/kiln/c_api.h): translate exceptions into status codes + thread-local text.
#include "kiln/c_api.h"

#include <string>

#include "kiln/kiln.hpp"

struct kiln_runtime {
  kiln::Runtime rt;
  explicit kiln_runtime(kiln::RuntimeOptions o) : rt(std::move(o)) {}
};

namespace {
thread_local std::string g_last_error;

template <typename F>
kiln_status guarded(F&& f) {
  try {
    f();
    g_last_error.clear();
    return KILN_OK;
  } catch (const kiln::ShapeMismatchError& e) {
    g_last_error = e.what();
    return KILN_ERROR_SHAPE_MISMATCH;
  } catch (const kiln::UnsupportedDtypeError& e) {
    g_last_error = e.what();
    return KILN_ERROR_UNSUPPORTED_DTYPE;
  } catch (const kiln::InvalidArgument& e) {
    g_last_error = e.what();
    return KILN_ERROR_INVALID_ARGUMENT;
  } catch (const kiln::DeviceError& e) {
    g_last_error = e.what();
    return KILN_ERROR_DEVICE;
  } catch (const kiln::CompileError& e) {
    g_last_error = e.what();
    return KILN_ERROR_COMPILE;
  } catch (const kiln::CacheError& e) {
    g_last_error = e.what();
    return KILN_ERROR_CACHE;
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return KILN_ERROR_UNKNOWN;
  }
}

static_assert(KILN_BF16 == int(kiln::DType::bf16) && KILN_F16 == int(kiln::DType::f16) &&
              KILN_F32 == int(kiln::DType::f32) && KILN_E4M3 == int(kiln::DType::e4m3) &&
              KILN_E5M2 == int(kiln::DType::e5m2) && KILN_I32 == int(kiln::DType::i32) &&
              KILN_I64 == int(kiln::DType::i64) && KILN_I16 == int(kiln::DType::i16) && KILN_U8 == int(kiln::DType::u8),
              "kiln_dtype numbers kiln::DType");
static_assert(KILN_MAX_DIMS == kiln::TensorRef::kMaxDims, "kiln_tensor holds what a TensorRef holds");
static_assert(int(kiln::MoeScore::softmax) == 0 && int(kiln::MoeScore::sigmoid) == 1 &&
                  int(kiln::MoeScaleLayout::token_major) == 1 && int(kiln::MoeScaleLayout::m_major) == 2,
              "the C option numbers name the C++ enums");

// A dtype argument of a C call: a value outside the enum (kiln::DType is one byte: 258 would have become fp32)
// is rejected naming the argument.
kiln::DType dt(kiln_dtype d, const char* op, const char* arg) {
  const int v = static_cast<int>(d);
  if (v < KILN_BF16 || v > KILN_U8)
    throw kiln::UnsupportedDtypeError(std::string(op) + ": argument '" + arg + "': expected a kiln_dtype (" +
                                      std::to_string(KILN_BF16) + " … " + std::to_string(KILN_U8) + "), got " +
                                      std::to_string(v));
  return static_cast<kiln::DType>(v);
}
kiln::Stream st(void* s) { return static_cast<kiln::Stream>(s); }
kiln::TensorRef t2(const void* p, kiln::DType d, int64_t r, int64_t c) {
  return kiln::TensorRef::contiguous(const_cast<void*>(p), d, {r, c});
}
kiln::TensorRef t1(const void* p, kiln::DType d, int64_t n) {
  return p ? kiln::TensorRef::contiguous(const_cast<void*>(p), d, {n}) : kiln::TensorRef{};
}
kiln::Runtime& rt_of(kiln_runtime* rt) {
  if (!rt) throw kiln::InvalidArgument("kiln C API: argument 'rt': expected a runtime from kiln_runtime_create, got null");
  return rt->rt;
}

// A kiln_tensor argument as a TensorRef (NULL: the empty, absent tensor). Only the descriptor itself is checked here
// (ndim, dtype); shapes, strides and pointers are the op's to validate, as for a C++ caller.
kiln::TensorRef tr(const kiln_tensor* t, const char* op, const char* arg) {
  if (!t) return {};
  if (t->ndim < 1 || t->ndim > KILN_MAX_DIMS)
    throw kiln::InvalidArgument(std::string(op) + ": argument '" + arg + "': expected ndim 1 … " +
                                std::to_string(KILN_MAX_DIMS) + ", got " + std::to_string(t->ndim));
  kiln::TensorRef r;
  r.data = t->data;
  r.dtype = dt(t->dtype, op, arg);
  r.ndim = t->ndim;
  for (int k = 0; k < t->ndim; ++k) {
    r.shape[k] = t->shape[k];
    r.strides[k] = t->strides[k];
  }
  return r;
}

kiln::MoeRowIdMap map_of(const kiln_moe_row_id_map& m, const char* op) {
  return {tr(m.row_id_map, op, "map.row_id_map"), tr(m.row_id_indices, op, "map.row_id_indices"),
          tr(m.tokens_per_expert, op, "map.tokens_per_expert"), tr(m.padded_counts, op, "map.padded_counts"),
          tr(m.offsets, op, "map.offsets")};
}

kiln::MoeRoutingOptions routing_of(const kiln_moe_routing_options* o) {
  kiln::MoeRoutingOptions r;
  if (!o) return r;
  r.top_k = o->top_k;
  r.score = static_cast<kiln::MoeScore>(o->score);
  r.n_group = o->n_group;
  r.topk_group = o->topk_group;
  r.renormalize = o->renormalize != 0;
  r.scaling_factor = o->scaling_factor;
  return r;
}

kiln::MoePermuteOptions permute_of(const kiln_moe_permute_options* o) {
  kiln::MoePermuteOptions r;
  if (!o) return r;
  r.top_k = o->top_k;
  r.multiple_of = o->multiple_of;
  r.scale_layout = static_cast<kiln::MoeScaleLayout>(o->scale_layout);
  r.round_scale = o->round_scale != 0;
  r.fill_tail = o->fill_tail != 0;
  return r;
}

kiln::RouterGemmBwdOptions precision_of(int precision, const char* op) {
  if (precision != int(kiln::RouterGemmPrecision::standard) && precision != int(kiln::RouterGemmPrecision::tf32) &&
      precision != int(kiln::RouterGemmPrecision::high))
    throw kiln::InvalidArgument(std::string(op) + ": argument 'precision': expected 4 (standard), 0 (tf32) or 1 " +
                                "(high), got " + std::to_string(precision));
  kiln::RouterGemmBwdOptions r;
  r.precision = static_cast<kiln::RouterGemmPrecision>(precision);
  return r;
}
}  // namespace

extern "C" {

const char* kiln_last_error(void) { return g_last_error.c_str(); }
const char* kiln_version(void) { return kiln::kVersion; }

kiln_status kiln_runtime_create(const char* cache_dir, const char* arch, kiln_runtime** out) {
  return guarded([&] {
    if (!out) throw kiln::InvalidArgument("kiln_runtime_create: argument 'out': expected a pointer, got null");
    kiln::RuntimeOptions o;
    if (cache_dir) o.cache_dir = cache_dir;
    if (arch) o.arch = arch;
    *out = new kiln_runtime(std::move(o));
  });
}

void kiln_runtime_destroy(kiln_runtime* rt) { delete rt; }

kiln_status kiln_rms_norm_block_quant_fwd(kiln_runtime* rt, const void* x, int64_t M, int64_t N, int64_t x_stride,
                                          const void* weight, kiln_dtype weight_dtype, const float* rms_inv_in,
                                          void* q, float* q_scale, float* rms_inv, void* qT, float* qT_scale,
                                          float eps, int round_scale, int output_mode, void* stream) {
  return guarded([&] {
    const kiln::DType w = dt(weight_dtype, "kiln_rms_norm_block_quant_fwd", "weight_dtype");
    kiln::RmsNormBlockQuantOutputs out;
    if (output_mode != 1) {
      out.q = t2(q, kiln::DType::e4m3, M, N);
      out.q_scale = t2(q_scale, kiln::DType::f32, N / 128, M);
      out.rms_inv = t1(rms_inv, kiln::DType::f32, M);
    }
    if (output_mode != 0) {
      out.qT = t2(qT, kiln::DType::e4m3, N, M);
      out.qT_scale = t2(qT_scale, kiln::DType::f32, (M + 127) / 128, N);
    }
    kiln::rms_norm_block_quant_fwd(
        rt_of(rt), kiln::TensorRef::strided_2d(const_cast<void*>(x), kiln::DType::bf16, M, N, x_stride),
        kiln::TensorRef::contiguous(const_cast<void*>(weight), w, {N}), t1(rms_inv_in, kiln::DType::f32, M), out,
        {eps, round_scale != 0, output_mode}, st(stream));
  });
}

kiln_status kiln_rms_norm_fwd(kiln_runtime* rt, const void* x, void* y, int64_t M, int64_t N, kiln_dtype dtype,
                              const void* weight, kiln_dtype weight_dtype, float* rms_inv, float eps, void* stream) {
  return guarded([&] {
    const kiln::DType t = dt(dtype, "kiln_rms_norm_fwd", "dtype");
    const kiln::DType w = dt(weight_dtype, "kiln_rms_norm_fwd", "weight_dtype");
    kiln::rms_norm_fwd(rt_of(rt), t2(x, t, M, N), kiln::TensorRef::contiguous(const_cast<void*>(weight), w, {N}),
                       t2(y, t, M, N), t1(rms_inv, kiln::DType::f32, M), eps, st(stream));
  });
}

kiln_status kiln_rms_norm_bwd(kiln_runtime* rt, const void* dy, const void* x, void* dx, int64_t M, int64_t N,
                              kiln_dtype dtype, const void* weight, kiln_dtype weight_dtype, void* dweight,
                              kiln_dtype dweight_dtype, float eps, void* stream) {
  return guarded([&] {
    const kiln::DType t = dt(dtype, "kiln_rms_norm_bwd", "dtype");
    const kiln::DType w = dt(weight_dtype, "kiln_rms_norm_bwd", "weight_dtype");
    const kiln::DType dw = dt(dweight_dtype, "kiln_rms_norm_bwd", "dweight_dtype");
    kiln::rms_norm_bwd(rt_of(rt), t2(dy, t, M, N), t2(x, t, M, N),
                       kiln::TensorRef::contiguous(const_cast<void*>(weight), w, {N}), t2(dx, t, M, N),
                       kiln::TensorRef::contiguous(dweight, dw, {N}), eps, kiln::TensorRef{}, st(stream));
  });
}

kiln_tensor kiln_tensor_contiguous(void* data, kiln_dtype dtype, int32_t ndim, const int64_t* shape) {
  kiln_tensor t{};
  t.data = data;
  t.dtype = dtype;
  if (ndim < 1 || ndim > KILN_MAX_DIMS || !shape) return t;  // ndim 0: every op rejects it naming the argument
  t.ndim = ndim;
  int64_t s = 1;
  for (int k = ndim - 1; k >= 0; --k) {
    t.shape[k] = shape[k];
    t.strides[k] = s;
    s *= shape[k];
  }
  return t;
}

kiln_status kiln_router_gemm_fp32_fwd(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* w,
                                      const kiln_tensor* logits, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_router_gemm_fp32_fwd";
    kiln::router_gemm_fp32_fwd(rt_of(rt), tr(x, op, "x"), tr(w, op, "w"), tr(logits, op, "logits"), st(stream));
  });
}

kiln_status kiln_router_gemm_fp32_bwd(kiln_runtime* rt, const kiln_tensor* g, const kiln_tensor* x,
                                      const kiln_tensor* w, const kiln_tensor* dx, const kiln_tensor* dw,
                                      const kiln_tensor* workspace, int precision, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_router_gemm_fp32_bwd";
    kiln::router_gemm_fp32_bwd(rt_of(rt), tr(g, op, "g"), tr(x, op, "x"), tr(w, op, "w"), tr(dx, op, "dx"),
                               tr(dw, op, "dw"), tr(workspace, op, "workspace"), precision_of(precision, op),
                               st(stream));
  });
}

kiln_status kiln_router_gemm_fp32_bwd_workspace_elems(kiln_runtime* rt, int64_t T, int64_t K, int64_t E,
                                                      int precision, int64_t* out) {
  return guarded([&] {
    constexpr const char* op = "kiln_router_gemm_fp32_bwd_workspace_elems";
    if (!out) throw kiln::InvalidArgument(std::string(op) + ": argument 'out': expected a pointer, got null");
    *out = kiln::router_gemm_fp32_bwd_workspace_elems(rt_of(rt), T, K, E, precision_of(precision, op));
  });
}

int64_t kiln_moe_max_out_rows(int64_t T, int64_t E, int64_t k, int64_t multiple_of) {
  return kiln::moe_max_out_rows(T, E, k, multiple_of);
}
int64_t kiln_moe_routing_workspace_elems(int64_t T, int64_t E, int64_t top_k) {
  return kiln::moe_routing_workspace_elems(T, E, top_k);
}

kiln_status kiln_moe_topk_routing_fwd(kiln_runtime* rt, const kiln_tensor* logits, const kiln_tensor* expert_bias,
                                      const kiln_tensor* probs, const kiln_tensor* routing_map,
                                      const kiln_tensor* tokens_per_expert, const kiln_moe_routing_options* opts,
                                      const kiln_moe_row_id_map* map, int multiple_of, const kiln_tensor* workspace,
                                      void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_moe_topk_routing_fwd";
    kiln::MoeRowIdMap m;
    if (map) m = map_of(*map, op);
    kiln::moe_topk_routing_fwd(rt_of(rt), tr(logits, op, "logits"), tr(expert_bias, op, "expert_bias"),
                               tr(probs, op, "probs"), tr(routing_map, op, "routing_map"),
                               tr(tokens_per_expert, op, "tokens_per_expert"), routing_of(opts), st(stream),
                               map ? &m : nullptr, multiple_of, tr(workspace, op, "workspace"));
  });
}

kiln_status kiln_moe_topk_routing_bwd(kiln_runtime* rt, const kiln_tensor* dprobs, const kiln_tensor* logits,
                                      const kiln_tensor* routing_map, const kiln_tensor* dlogits,
                                      const kiln_moe_routing_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_moe_topk_routing_bwd";
    kiln::moe_topk_routing_bwd(rt_of(rt), tr(dprobs, op, "dprobs"), tr(logits, op, "logits"),
                               tr(routing_map, op, "routing_map"), tr(dlogits, op, "dlogits"), routing_of(opts),
                               st(stream));
  });
}

kiln_status kiln_moe_make_row_id_map(kiln_runtime* rt, const kiln_tensor* routing_map, const kiln_moe_row_id_map* out,
                                     int multiple_of, int max_per_token, const kiln_tensor* workspace, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_moe_make_row_id_map";
    if (!out) throw kiln::InvalidArgument(std::string(op) + ": argument 'out': expected a row-id map, got null");
    kiln::moe_make_row_id_map(rt_of(rt), tr(routing_map, op, "routing_map"), map_of(*out, op), multiple_of,
                              st(stream), max_per_token, tr(workspace, op, "workspace"));
  });
}

kiln_status kiln_moe_permute(kiln_runtime* rt, const kiln_tensor* inp, const kiln_tensor* scale,
                             const kiln_tensor* probs, const kiln_moe_row_id_map* map, const kiln_tensor* out,
                             const kiln_tensor* scale_out, const kiln_tensor* probs_out,
                             const kiln_moe_permute_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_moe_permute";
    if (!map) throw kiln::InvalidArgument(std::string(op) + ": argument 'map': expected a row-id map, got null");
    kiln::moe_permute(rt_of(rt), tr(inp, op, "inp"), tr(scale, op, "scale"), tr(probs, op, "probs"), map_of(*map, op),
                      tr(out, op, "out"), tr(scale_out, op, "scale_out"), tr(probs_out, op, "probs_out"),
                      permute_of(opts), st(stream));
  });
}

kiln_status kiln_moe_unpermute(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* row_id_map,
                               const kiln_tensor* weights, const kiln_tensor* out, const kiln_tensor* restore_probs,
                               const kiln_moe_permute_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_moe_unpermute";
    kiln::moe_unpermute(rt_of(rt), tr(x, op, "x"), tr(row_id_map, op, "row_id_map"), tr(weights, op, "weights"),
                        tr(out, op, "out"), tr(restore_probs, op, "restore_probs"), permute_of(opts), st(stream));
  });
}

}  // extern "C"
