// The C ABI (include/kiln/c_api.h): translate exceptions into status codes + thread-local text.
#include "kiln/c_api.h"

#include <string>
#include <vector>

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

// A required struct argument of a C call (a NULL pointer is rejected naming it).
template <typename T>
const T& need(const T* p, const char* op, const char* arg, const char* what) {
  if (!p) throw kiln::InvalidArgument(std::string(op) + ": argument '" + arg + "': expected " + what + ", got null");
  return *p;
}
// The *_workspace_elems calls: out checked, then written.
template <typename F>
void put(int64_t* out, const char* op, F&& value) {
  need(out, op, "out", "a pointer");
  *out = value();
}

static_assert(int(kiln::NormOrd::l1) == 0 && int(kiln::NormOrd::l2) == 1 && int(kiln::NormOrd::inf) == 2 &&
                  int(kiln::Accumulate::f32) == 0 && int(kiln::Accumulate::f64) == 1 &&
                  int(kiln::LossReduction::sum) == 0 && int(kiln::LossReduction::mean) == 1,
              "the C option numbers name the C++ enums");

// out / dx of the SiLU ops; `arg` names the struct ("out" or "dx") in messages.
kiln::SiluBlockQuantOutputs silu_out_of(const kiln_silu_block_quant_outputs* o, const char* op,
                                        const std::string& arg) {
  const auto& r = need(o, op, arg.c_str(), "a kiln_silu_block_quant_outputs");
  return {tr(r.q, op, (arg + ".q").c_str()), tr(r.q_scale, op, (arg + ".q_scale").c_str()),
          tr(r.qT, op, (arg + ".qT").c_str()), tr(r.qT_scale, op, (arg + ".qT_scale").c_str())};
}

kiln::BatchSiluOptions silu_of(const kiln_silu_options* o) {
  kiln::BatchSiluOptions r;
  if (!o) return r;
  r.round_scale = o->round_scale != 0;
  r.output_mode = o->output_mode;
  r.check_counts = o->check_counts != 0;
  r.trailing_rows = o->trailing_rows != 0;
  return r;
}

kiln::QkNormHalfRopeOptions qk_of(const kiln_qk_norm_half_rope_options* o, const char* op) {
  kiln::QkNormHalfRopeOptions r;
  if (!o) return r;
  r.num_heads = o->num_heads;
  r.num_groups = o->num_groups;
  r.eps = o->eps;
  r.interleaved = o->interleaved != 0;
  r.position_offset = o->position_offset;
  r.cu_seqlens = tr(o->cu_seqlens, op, "opts.cu_seqlens");
  r.max_seqlen = o->max_seqlen;
  return r;
}

kiln::GroupRmsNormGateOptions gate_of(const kiln_group_rms_norm_gate_options* o) {
  kiln::GroupRmsNormGateOptions r;
  if (!o) return r;
  r.groups = o->groups;
  r.eps = o->eps;
  r.transpose = o->transpose != 0;
  return r;
}

kiln::CrossEntropyOptions ce_of(const kiln_cross_entropy_options* o, const char* op) {
  kiln::CrossEntropyOptions r;
  if (!o) return r;
  r.ignore_index = o->ignore_index;
  r.label_smoothing = o->label_smoothing;
  r.z_loss = o->z_loss;
  r.vocab_start = o->vocab_start;
  r.vocab_total = o->vocab_total;
  r.bad_label_row = tr(o->bad_label_row, op, "opts.bad_label_row");
  return r;
}

kiln::FusedCrossEntropyOptions fused_of(const kiln_fused_cross_entropy_options* o, const char* op) {
  kiln::FusedCrossEntropyOptions r;
  if (!o) return r;
  r.reduction = static_cast<kiln::LossReduction>(o->reduction);
  r.scale = o->scale;
  r.loss_total = tr(o->loss_total, op, "fused.loss_total");
  r.row_max = tr(o->row_max, op, "fused.row_max");
  r.sum_exp = tr(o->sum_exp, op, "fused.sum_exp");
  return r;
}

kiln::BatchNormOptions norm_of(const kiln_batch_norm_options* o) {
  kiln::BatchNormOptions r;
  if (!o) return r;
  r.ord = static_cast<kiln::NormOrd>(o->ord);
  r.root = o->root != 0;
  r.accumulate = static_cast<kiln::Accumulate>(o->accumulate);
  return r;
}

static_assert(int(kiln::GatedActivation::silu) == 0 && int(kiln::GatedActivation::gelu) == 1,
              "the C option numbers name the C++ enums");

kiln::GatedActivation activation_of(int activation, const char* op) {
  if (activation != int(kiln::GatedActivation::silu) && activation != int(kiln::GatedActivation::gelu))
    throw kiln::InvalidArgument(std::string(op) + ": argument 'activation': expected 0 (silu) or 1 (gelu), got " +
                                std::to_string(activation));
  return static_cast<kiln::GatedActivation>(activation);
}

// The list of a batch reduction: count descriptors, xs[i] named in messages.
std::vector<kiln::TensorRef> list_of(const kiln_tensor* xs, int64_t count, const char* op) {
  if (count < 0)
    throw kiln::InvalidArgument(std::string(op) + ": argument 'count': expected ≥ 0, got " + std::to_string(count));
  if (count > 0) need(xs, op, "xs", "an array of count tensors");
  std::vector<kiln::TensorRef> r;
  r.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) r.push_back(tr(&xs[i], op, ("xs[" + std::to_string(i) + "]").c_str()));
  return r;
}
}  // namespace

// ---- FP4 MoE ----------------------------------------------------------------------------------------------------
namespace {
// The FP4 MoE's C structs as the C++ ones. Enum values pass through unchecked (the ops reject out-of-range ones,
// naming the argument); a NULL struct pointer is rejected here.
kiln::Fp4WeightFormat fp4_format_of(int f) { return static_cast<kiln::Fp4WeightFormat>(f); }
kiln::Fp4MoeRouteOptions fp4_route_of(const kiln_fp4_moe_route_options& o) {
  kiln::Fp4MoeRouteOptions r;
  r.method = static_cast<kiln::Fp4MoeRoutingMethod>(o.method);
  r.top_k = o.top_k;
  r.n_group = o.n_group;
  r.topk_group = o.topk_group;
  r.routed_scaling_factor = o.routed_scaling_factor;
  r.norm_topk_prob = o.norm_topk_prob != 0;
  return r;
}
kiln::Fp4MoeOptions fp4_options_of(const kiln_fp4_moe_options& o) {
  kiln::Fp4MoeOptions r;
  r.routing = fp4_route_of(o.routing);
  r.activation = static_cast<kiln::Fp4MoeActivation>(o.activation);
  r.hidden_format = static_cast<kiln::Fp4MoeHiddenFormat>(o.hidden_format);
  r.num_experts = o.num_experts;
  r.local_expert_offset = o.local_expert_offset;
  r.do_finalize = o.do_finalize != 0;
  return r;
}
kiln::Fp4MoeWeights fp4_weights_of(const kiln_fp4_moe_weights& w) {
  kiln::Fp4MoeWeights r;
  r.data = w.data;
  r.experts = w.experts;
  r.rows = w.rows;
  r.k = w.k;
  r.format = fp4_format_of(w.format);
  r.gated = w.gated != 0;
  return r;
}
kiln::Fp4HostShape fp4_host_shape_of(const kiln_fp4_host_shape* s, const char* op) {
  const kiln_fp4_host_shape& h = need(s, op, "shape", "a kiln_fp4_host_shape");
  return {h.experts, h.rows, h.k, fp4_format_of(h.format), h.gated != 0};
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
    put(out, op,
        [&] { return kiln::router_gemm_fp32_bwd_workspace_elems(rt_of(rt), T, K, E, precision_of(precision, op)); });
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
    kiln::moe_make_row_id_map(rt_of(rt), tr(routing_map, op, "routing_map"),
                              map_of(need(out, op, "out", "a row-id map"), op), multiple_of,
                              st(stream), max_per_token, tr(workspace, op, "workspace"));
  });
}

kiln_status kiln_moe_permute(kiln_runtime* rt, const kiln_tensor* inp, const kiln_tensor* scale,
                             const kiln_tensor* probs, const kiln_moe_row_id_map* map, const kiln_tensor* out,
                             const kiln_tensor* scale_out, const kiln_tensor* probs_out,
                             const kiln_moe_permute_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_moe_permute";
    kiln::moe_permute(rt_of(rt), tr(inp, op, "inp"), tr(scale, op, "scale"), tr(probs, op, "probs"),
                      map_of(need(map, op, "map", "a row-id map"), op),
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

int64_t kiln_moe_block_quant_scale_blocks(int64_t num_out, int64_t E) {
  return kiln::moe_block_quant_scale_blocks(num_out, E);
}

kiln_status kiln_moe_permute_block_quant(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* probs,
                                         const kiln_moe_row_id_map* map,
                                         const kiln_moe_block_quant_permute_outputs* out,
                                         const kiln_moe_permute_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_moe_permute_block_quant";
    const auto& o = need(out, op, "out", "a kiln_moe_block_quant_permute_outputs");
    kiln::moe_permute_block_quant(rt_of(rt), tr(x, op, "x"), tr(probs, op, "probs"),
                                  map_of(need(map, op, "map", "a row-id map"), op),
                                  {tr(o.q, op, "out.q"), tr(o.q_scale, op, "out.q_scale"), tr(o.qT, op, "out.qT"),
                                   tr(o.qT_scale, op, "out.qT_scale"), tr(o.probs_out, op, "out.probs_out")},
                                  permute_of(opts), st(stream));
  });
}

kiln_status kiln_silu_block_quant_fwd(kiln_runtime* rt, const kiln_tensor* x, const kiln_silu_block_quant_outputs* out,
                                      const kiln_silu_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_silu_block_quant_fwd";
    const kiln::BatchSiluOptions o = silu_of(opts);
    kiln::silu_block_quant_fwd(rt_of(rt), tr(x, op, "x"), silu_out_of(out, op, "out"), {o.round_scale, o.output_mode},
                               st(stream));
  });
}

kiln_status kiln_silu_block_quant_bwd(kiln_runtime* rt, const kiln_tensor* g, const kiln_tensor* x,
                                      const kiln_silu_block_quant_outputs* dx, const kiln_silu_options* opts,
                                      void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_silu_block_quant_bwd";
    kiln::silu_block_quant_bwd(rt_of(rt), tr(g, op, "g"), tr(x, op, "x"), silu_out_of(dx, op, "dx"),
                               silu_of(opts).round_scale, st(stream));
  });
}

int64_t kiln_batch_weighted_silu_max_token_blocks(int64_t M, int64_t E) {
  return kiln::batch_weighted_silu_max_token_blocks(M, E);
}

kiln_status kiln_batch_weighted_silu_block_quant_fwd(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* prob,
                                                     const kiln_tensor* counts,
                                                     const kiln_silu_block_quant_outputs* out,
                                                     const kiln_tensor* status, const kiln_silu_options* opts,
                                                     void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_batch_weighted_silu_block_quant_fwd";
    kiln::batch_weighted_silu_block_quant_fwd(rt_of(rt), tr(x, op, "x"), tr(prob, op, "prob"),
                                              tr(counts, op, "counts"), silu_out_of(out, op, "out"),
                                              tr(status, op, "status"), silu_of(opts), st(stream));
  });
}

kiln_status kiln_batch_weighted_silu_block_quant_bwd(kiln_runtime* rt, const kiln_tensor* g, const kiln_tensor* x,
                                                     const kiln_tensor* prob, const kiln_tensor* counts,
                                                     const kiln_silu_block_quant_outputs* dx, const kiln_tensor* dprob,
                                                     const kiln_tensor* status, const kiln_silu_options* opts,
                                                     void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_batch_weighted_silu_block_quant_bwd";
    kiln::batch_weighted_silu_block_quant_bwd(rt_of(rt), tr(g, op, "g"), tr(x, op, "x"), tr(prob, op, "prob"),
                                              tr(counts, op, "counts"), silu_out_of(dx, op, "dx"),
                                              tr(dprob, op, "dprob"), tr(status, op, "status"), silu_of(opts),
                                              st(stream));
  });
}

kiln_status kiln_qk_norm_half_rope_fwd(kiln_runtime* rt, const kiln_tensor* qkv, const kiln_tensor* q_norm_weight,
                                       const kiln_tensor* k_norm_weight, const kiln_tensor* freqs,
                                       const kiln_tensor* q, const kiln_tensor* k, const kiln_tensor* v,
                                       const kiln_qk_norm_half_rope_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_qk_norm_half_rope_fwd";
    kiln::qk_norm_half_rope_fwd(rt_of(rt), tr(qkv, op, "qkv"), tr(q_norm_weight, op, "q_norm_weight"),
                                tr(k_norm_weight, op, "k_norm_weight"), tr(freqs, op, "freqs"), tr(q, op, "q"),
                                tr(k, op, "k"), tr(v, op, "v"), qk_of(opts, op), st(stream));
  });
}

kiln_status kiln_qk_norm_half_rope_bwd(kiln_runtime* rt, const kiln_tensor* gq, const kiln_tensor* gk,
                                       const kiln_tensor* gv, const kiln_tensor* qkv, const kiln_tensor* q_norm_weight,
                                       const kiln_tensor* k_norm_weight, const kiln_tensor* freqs,
                                       const kiln_tensor* dqkv, const kiln_tensor* dq_norm_weight,
                                       const kiln_tensor* dk_norm_weight, const kiln_qk_norm_half_rope_options* opts,
                                       const kiln_tensor* workspace, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_qk_norm_half_rope_bwd";
    kiln::qk_norm_half_rope_bwd(rt_of(rt), tr(gq, op, "gq"), tr(gk, op, "gk"), tr(gv, op, "gv"), tr(qkv, op, "qkv"),
                                tr(q_norm_weight, op, "q_norm_weight"), tr(k_norm_weight, op, "k_norm_weight"),
                                tr(freqs, op, "freqs"), tr(dqkv, op, "dqkv"), tr(dq_norm_weight, op, "dq_norm_weight"),
                                tr(dk_norm_weight, op, "dk_norm_weight"), qk_of(opts, op),
                                tr(workspace, op, "workspace"), st(stream));
  });
}

kiln_status kiln_qk_norm_half_rope_bwd_workspace_elems(kiln_runtime* rt, int64_t head_dim, int64_t* out) {
  return guarded([&] {
    put(out, "kiln_qk_norm_half_rope_bwd_workspace_elems",
        [&] { return kiln::qk_norm_half_rope_bwd_workspace_elems(rt_of(rt), head_dim); });
  });
}

kiln_status kiln_rms_norm_rope_fwd(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* weight,
                                   const kiln_tensor* cos, const kiln_tensor* sin, const kiln_tensor* y, float eps,
                                   int num_heads, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_rms_norm_rope_fwd";
    kiln::rms_norm_rope_fwd(rt_of(rt), tr(x, op, "x"), tr(weight, op, "weight"), tr(cos, op, "cos"),
                            tr(sin, op, "sin"), tr(y, op, "y"), eps, num_heads, st(stream));
  });
}

kiln_status kiln_rms_norm_rope_bwd(kiln_runtime* rt, const kiln_tensor* dy, const kiln_tensor* x,
                                   const kiln_tensor* weight, const kiln_tensor* cos, const kiln_tensor* sin,
                                   const kiln_tensor* dx, const kiln_tensor* dweight, float eps, int num_heads,
                                   const kiln_tensor* workspace, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_rms_norm_rope_bwd";
    kiln::rms_norm_rope_bwd(rt_of(rt), tr(dy, op, "dy"), tr(x, op, "x"), tr(weight, op, "weight"), tr(cos, op, "cos"),
                            tr(sin, op, "sin"), tr(dx, op, "dx"), tr(dweight, op, "dweight"), eps, num_heads,
                            tr(workspace, op, "workspace"), st(stream));
  });
}

kiln_status kiln_rms_norm_rope_bwd_workspace_elems(kiln_runtime* rt, int64_t rows, int64_t hidden, int64_t head_dim,
                                                   kiln_dtype dtype, int64_t* out) {
  return guarded([&] {
    constexpr const char* op = "kiln_rms_norm_rope_bwd_workspace_elems";
    put(out, op, [&] {
      return kiln::rms_norm_rope_bwd_workspace_elems(rt_of(rt), rows, hidden, head_dim, dt(dtype, op, "dtype"));
    });
  });
}

kiln_status kiln_group_rms_norm_gate_fwd(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* gate,
                                         const kiln_tensor* weight, const kiln_tensor* out,
                                         const kiln_group_rms_norm_gate_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_group_rms_norm_gate_fwd";
    kiln::group_rms_norm_gate_fwd(rt_of(rt), tr(x, op, "x"), tr(gate, op, "gate"), tr(weight, op, "weight"),
                                  tr(out, op, "out"), gate_of(opts), st(stream));
  });
}

kiln_status kiln_group_rms_norm_gate_bwd(kiln_runtime* rt, const kiln_tensor* dy, const kiln_tensor* x,
                                         const kiln_tensor* gate, const kiln_tensor* weight, const kiln_tensor* dx,
                                         const kiln_tensor* dgate, const kiln_tensor* dweight,
                                         const kiln_group_rms_norm_gate_options* opts, const kiln_tensor* workspace,
                                         void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_group_rms_norm_gate_bwd";
    kiln::group_rms_norm_gate_bwd(rt_of(rt), tr(dy, op, "dy"), tr(x, op, "x"), tr(gate, op, "gate"),
                                  tr(weight, op, "weight"), tr(dx, op, "dx"), tr(dgate, op, "dgate"),
                                  tr(dweight, op, "dweight"), gate_of(opts), tr(workspace, op, "workspace"),
                                  st(stream));
  });
}

kiln_status kiln_group_rms_norm_gate_bwd_workspace_elems(kiln_runtime* rt, int64_t tokens, int64_t dim, int groups,
                                                         kiln_dtype dtype, int64_t* out) {
  return guarded([&] {
    constexpr const char* op = "kiln_group_rms_norm_gate_bwd_workspace_elems";
    put(out, op, [&] {
      return kiln::group_rms_norm_gate_bwd_workspace_elems(rt_of(rt), tokens, dim, groups, dt(dtype, op, "dtype"));
    });
  });
}

kiln_status kiln_softmax_cross_entropy_fwd(kiln_runtime* rt, const kiln_tensor* logits, const kiln_tensor* labels,
                                           const kiln_tensor* loss, const kiln_tensor* row_max,
                                           const kiln_tensor* sum_exp, const kiln_cross_entropy_options* opts,
                                           void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_softmax_cross_entropy_fwd";
    kiln::softmax_cross_entropy_fwd(rt_of(rt), tr(logits, op, "logits"), tr(labels, op, "labels"),
                                    tr(loss, op, "loss"), tr(row_max, op, "row_max"), tr(sum_exp, op, "sum_exp"),
                                    ce_of(opts, op), st(stream));
  });
}

kiln_status kiln_softmax_cross_entropy_bwd(kiln_runtime* rt, const kiln_tensor* logits, const kiln_tensor* labels,
                                           const kiln_tensor* row_max, const kiln_tensor* sum_exp,
                                           const kiln_tensor* grad_loss, const kiln_tensor* dlogits,
                                           const kiln_cross_entropy_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_softmax_cross_entropy_bwd";
    kiln::softmax_cross_entropy_bwd(rt_of(rt), tr(logits, op, "logits"), tr(labels, op, "labels"),
                                    tr(row_max, op, "row_max"), tr(sum_exp, op, "sum_exp"),
                                    tr(grad_loss, op, "grad_loss"), tr(dlogits, op, "dlogits"), ce_of(opts, op),
                                    st(stream));
  });
}

kiln_status kiln_softmax_cross_entropy_fused(kiln_runtime* rt, const kiln_tensor* logits, const kiln_tensor* labels,
                                             const kiln_tensor* loss, const kiln_tensor* dlogits,
                                             const kiln_fused_cross_entropy_options* fused,
                                             const kiln_cross_entropy_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_softmax_cross_entropy_fused";
    kiln::softmax_cross_entropy_fused(rt_of(rt), tr(logits, op, "logits"), tr(labels, op, "labels"),
                                      tr(loss, op, "loss"), tr(dlogits, op, "dlogits"), fused_of(fused, op),
                                      ce_of(opts, op), st(stream));
  });
}

kiln_status kiln_softmax_cross_entropy_partial_fwd(kiln_runtime* rt, const kiln_tensor* logits,
                                                   const kiln_tensor* labels, const kiln_tensor* partial,
                                                   const kiln_cross_entropy_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_softmax_cross_entropy_partial_fwd";
    kiln::softmax_cross_entropy_partial_fwd(rt_of(rt), tr(logits, op, "logits"), tr(labels, op, "labels"),
                                            tr(partial, op, "partial"), ce_of(opts, op), st(stream));
  });
}

kiln_status kiln_softmax_cross_entropy_merge(kiln_runtime* rt, const kiln_tensor* partials, const kiln_tensor* labels,
                                             const kiln_tensor* loss, const kiln_tensor* row_max,
                                             const kiln_tensor* sum_exp, const kiln_cross_entropy_options* opts,
                                             void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_softmax_cross_entropy_merge";
    kiln::softmax_cross_entropy_merge(rt_of(rt), tr(partials, op, "partials"), tr(labels, op, "labels"),
                                      tr(loss, op, "loss"), tr(row_max, op, "row_max"), tr(sum_exp, op, "sum_exp"),
                                      ce_of(opts, op), st(stream));
  });
}

kiln_status kiln_batch_sum_with_ord(kiln_runtime* rt, const kiln_tensor* xs, int64_t count, const kiln_tensor* out,
                                    const kiln_batch_norm_options* opts, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_batch_sum_with_ord";
    kiln::batch_sum_with_ord(rt_of(rt), list_of(xs, count, op), tr(out, op, "out"), norm_of(opts), st(stream));
  });
}

kiln_status kiln_batch_count_zero(kiln_runtime* rt, const kiln_tensor* xs, int64_t count, const kiln_tensor* out,
                                  void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_batch_count_zero";
    kiln::batch_count_zero(rt_of(rt), list_of(xs, count, op), tr(out, op, "out"), st(stream));
  });
}

kiln_status kiln_fused_gated_mlp(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* gate_weight,
                                 const kiln_tensor* up_weight, const kiln_tensor* out, int activation, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_fused_gated_mlp";
    const kiln::GatedActivation act = activation_of(activation, op);
    kiln::fused_gated_mlp(rt_of(rt), tr(x, op, "x"), tr(gate_weight, op, "gate_weight"),
                          tr(up_weight, op, "up_weight"), tr(out, op, "out"), act, st(stream));
  });
}

kiln_status kiln_quantize_fp8(kiln_runtime* rt, const kiln_tensor* x, const kiln_tensor* q, const kiln_tensor* scale,
                              void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_quantize_fp8";
    kiln::quantize_fp8(rt_of(rt), tr(x, op, "x"), tr(q, op, "q"), tr(scale, op, "scale"), st(stream));
  });
}

kiln_status kiln_dequantize_fp8(kiln_runtime* rt, const kiln_tensor* q, const kiln_tensor* scale,
                                const kiln_tensor* out, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_dequantize_fp8";
    kiln::dequantize_fp8(rt_of(rt), tr(q, op, "q"), tr(scale, op, "scale"), tr(out, op, "out"), st(stream));
  });
}

kiln_status kiln_fp8_gemm(kiln_runtime* rt, const kiln_tensor* a, const kiln_tensor* b, const kiln_tensor* a_scale,
                          const kiln_tensor* b_scale, const kiln_tensor* c, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_fp8_gemm";
    const kiln::TensorRef as = tr(a_scale, op, "a_scale"), bs = tr(b_scale, op, "b_scale");
    kiln::fp8_gemm(rt_of(rt), tr(a, op, "a"), tr(b, op, "b"), a_scale ? &as : nullptr, b_scale ? &bs : nullptr,
                   tr(c, op, "c"), st(stream));
  });
}

int64_t kiln_fp8_gemm_weight_bytes(int64_t n, int64_t k) { return kiln::fp8_gemm_weight_bytes(n, k); }

kiln_status kiln_fp8_gemm_prepare_weight(kiln_runtime* rt, const kiln_tensor* b, const kiln_tensor* b_scale,
                                         int layout, void* weight, int64_t n, int64_t k, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_fp8_gemm_prepare_weight";
    if (layout != 0 && layout != 1)
      throw kiln::InvalidArgument(std::string(op) + ": argument 'layout': expected 0 (b [K, N]) or 1 ([N, K]), got " +
                                  std::to_string(layout));
    const kiln::TensorRef bs = tr(b_scale, op, "b_scale");
    kiln::fp8_gemm_prepare_weight(rt_of(rt), tr(b, op, "b"), b_scale ? &bs : nullptr,
                                  layout == 0 ? kiln::Fp8WeightLayout::kn : kiln::Fp8WeightLayout::nk,
                                  kiln::Fp8GemmWeight{weight, n, k}, st(stream));
  });
}

kiln_status kiln_fp8_gemm_prepared(kiln_runtime* rt, const kiln_tensor* a, const kiln_tensor* a_scale,
                                   const void* weight, int64_t n, int64_t k, const kiln_tensor* bias,
                                   const kiln_tensor* c, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_fp8_gemm_prepared";
    const kiln::TensorRef as = tr(a_scale, op, "a_scale"), bb = tr(bias, op, "bias");
    kiln::fp8_gemm(rt_of(rt), tr(a, op, "a"), a_scale ? &as : nullptr,
                   kiln::Fp8GemmWeight{const_cast<void*>(weight), n, k}, bias ? &bb : nullptr, tr(c, op, "c"),
                   st(stream));
  });
}


kiln_status kiln_fp4_moe_route(kiln_runtime* rt, const kiln_tensor* logits, const kiln_tensor* bias,
                               const kiln_tensor* topk_ids, const kiln_tensor* topk_weights,
                               const kiln_fp4_moe_route_options* options, void* stream) {
  return guarded([&] {
    constexpr const char* op = "kiln_fp4_moe_route";
    const kiln::Fp4MoeRouteOptions o = fp4_route_of(need(options, op, "options", "a kiln_fp4_moe_route_options"));
    const kiln::TensorRef b = tr(bias, op, "bias");
    kiln::fp4_moe_route(rt_of(rt), tr(logits, op, "logits"), bias ? &b : nullptr, tr(topk_ids, op, "topk_ids"),
                        tr(topk_weights, op, "topk_weights"), o, st(stream));
  });
}

kiln_status kiln_fp4_moe_packed_bytes(int64_t experts, int64_t rows, int64_t k, int format, int64_t* out) {
  return guarded([&] {
    put(out, "kiln_fp4_moe_packed_bytes", [&] { return kiln::fp4_moe_packed_bytes(experts, rows, k, fp4_format_of(format)); });
  });
}

kiln_status kiln_fp4_moe_prepack(kiln_runtime* rt, const kiln_tensor* weights, const kiln_tensor* scales, int format,
                                 int gated, const kiln_tensor* packed, void* stream, kiln_fp4_moe_weights* out) {
  return guarded([&] {
    constexpr const char* op = "kiln_fp4_moe_prepack";
    need(out, op, "out", "a pointer");
    const kiln::Fp4MoeWeights w =
        kiln::fp4_moe_prepack(rt_of(rt), tr(weights, op, "weights"), tr(scales, op, "scales"), fp4_format_of(format),
                              gated != 0, tr(packed, op, "packed"), st(stream));
    *out = kiln_fp4_moe_weights{w.data, w.experts, w.rows, w.k, static_cast<int>(w.format), w.gated ? 1 : 0};
  });
}

kiln_status kiln_fp4_moe_max_padded_rows(kiln_runtime* rt, int64_t T, int64_t top_k, int64_t local_experts,
                                         int64_t* out) {
  return guarded([&] {
    put(out, "kiln_fp4_moe_max_padded_rows", [&] { return kiln::fp4_moe_max_padded_rows(rt_of(rt), T, top_k, local_experts); });
  });
}

kiln_status kiln_fp4_moe_workspace_bytes(kiln_runtime* rt, int64_t T, int64_t H, int64_t I,
                                         const kiln_fp4_moe_options* options, int64_t local_experts, int64_t* out) {
  return guarded([&] {
    constexpr const char* op = "kiln_fp4_moe_workspace_bytes";
    const kiln::Fp4MoeOptions o = fp4_options_of(need(options, op, "options", "a kiln_fp4_moe_options"));
    put(out, op, [&] { return kiln::fp4_moe_workspace_bytes(rt_of(rt), T, H, I, o, local_experts); });
  });
}

kiln_status kiln_fp4_block_scale_moe(kiln_runtime* rt, const kiln_fp4_moe_inputs* inputs,
                                     const kiln_fp4_moe_outputs* outputs, const kiln_fp4_moe_options* options,
                                     void* stream, const kiln_tensor* workspace) {
  return guarded([&] {
    constexpr const char* op = "kiln_fp4_block_scale_moe";
    need(inputs, op, "inputs", "a kiln_fp4_moe_inputs");
    need(outputs, op, "outputs", "a kiln_fp4_moe_outputs");
    const kiln::Fp4MoeOptions o = fp4_options_of(need(options, op, "options", "a kiln_fp4_moe_options"));
    // Optional tensors: a TensorRef each, kept alive here, passed by pointer when given.
    struct Opt {
      kiln::TensorRef t;
      bool on = false;
      const kiln::TensorRef* p() const { return on ? &t : nullptr; }
    };
    auto opt = [&](const kiln_tensor* c, const char* arg) { return Opt{tr(c, op, arg), c != nullptr}; };
    const Opt rb = opt(inputs->routing_bias, "inputs.routing_bias"),
              hs = opt(inputs->hidden_states_scale, "inputs.hidden_states_scale"),
              pts = opt(inputs->per_token_scale, "inputs.per_token_scale"),
              b1 = opt(inputs->gemm1_bias, "inputs.gemm1_bias"), al = opt(inputs->gemm1_alpha, "inputs.gemm1_alpha"),
              be = opt(inputs->gemm1_beta, "inputs.gemm1_beta"),
              cl = opt(inputs->gemm1_clamp_limit, "inputs.gemm1_clamp_limit"),
              b2 = opt(inputs->gemm2_bias, "inputs.gemm2_bias"),
              s1 = opt(inputs->output1_scale_scalar, "inputs.output1_scale_scalar"),
              s1g = opt(inputs->output1_scale_gate_scalar, "inputs.output1_scale_gate_scalar"),
              s2 = opt(inputs->output2_scale_scalar, "inputs.output2_scale_scalar"),
              rp = opt(inputs->routing_replay_out, "inputs.routing_replay_out"),
              out = opt(outputs->output, "outputs.output"), g2 = opt(outputs->gemm2_output, "outputs.gemm2_output"),
              ew = opt(outputs->expert_weights, "outputs.expert_weights"),
              ex = opt(outputs->expanded_idx_to_permuted_idx, "outputs.expanded_idx_to_permuted_idx"),
              ws = opt(workspace, "workspace");
    kiln::Fp4MoeInputs in;
    in.routing_logits = tr(inputs->routing_logits, op, "inputs.routing_logits");
    in.routing_bias = rb.p();
    in.hidden_states = tr(inputs->hidden_states, op, "inputs.hidden_states");
    in.hidden_states_scale = hs.p();
    in.per_token_scale = pts.p();
    in.w1 = fp4_weights_of(inputs->w1);
    in.w2 = fp4_weights_of(inputs->w2);
    in.gemm1_bias = b1.p();
    in.gemm1_alpha = al.p();
    in.gemm1_beta = be.p();
    in.gemm1_clamp_limit = cl.p();
    in.gemm2_bias = b2.p();
    in.output1_scale_scalar = s1.p();
    in.output1_scale_gate_scalar = s1g.p();
    in.output2_scale_scalar = s2.p();
    in.routing_replay_out = rp.p();
    kiln::Fp4MoeOutputs o2;
    o2.output = out.p();
    o2.gemm2_output = g2.p();
    o2.expert_weights = ew.p();
    o2.expanded_idx_to_permuted_idx = ex.p();
    kiln::fp4_block_scale_moe(rt_of(rt), in, o2, o, st(stream), ws.p());
  });
}

kiln_status kiln_fp4_moe_trtllm_scale_bytes(const kiln_fp4_host_shape* shape, int64_t* out) {
  return guarded([&] {
    constexpr const char* op = "kiln_fp4_moe_trtllm_scale_bytes";
    const kiln::Fp4HostShape sh = fp4_host_shape_of(shape, op);
    put(out, op, [&] { return kiln::fp4_moe_trtllm_scale_bytes(sh); });
  });
}

kiln_status kiln_fp4_moe_import_trtllm(const uint8_t* codes, const uint8_t* scales, const float* bias,
                                       const kiln_fp4_host_shape* shape, uint8_t* out_codes, uint8_t* out_scales,
                                       float* out_bias, int row_block) {
  return guarded([&] {
    kiln::fp4_moe_import_trtllm({codes, scales, bias}, fp4_host_shape_of(shape, "kiln_fp4_moe_import_trtllm"),
                                {out_codes, out_scales, out_bias}, row_block);
  });
}

kiln_status kiln_fp4_moe_export_trtllm(const uint8_t* codes, const uint8_t* scales, const float* bias,
                                       const kiln_fp4_host_shape* shape, uint8_t* out_codes, uint8_t* out_scales,
                                       float* out_bias, int row_block) {
  return guarded([&] {
    kiln::fp4_moe_export_trtllm({codes, scales, bias}, fp4_host_shape_of(shape, "kiln_fp4_moe_export_trtllm"),
                                {out_codes, out_scales, out_bias}, row_block);
  });
}

kiln_status kiln_fp4_moe_import_gpt_oss(const uint8_t* codes, const uint8_t* scales, const float* bias,
                                        const kiln_fp4_host_shape* shape, uint8_t* out_codes, uint8_t* out_scales,
                                        float* out_bias) {
  return guarded([&] {
    kiln::fp4_moe_import_gpt_oss({codes, scales, bias}, fp4_host_shape_of(shape, "kiln_fp4_moe_import_gpt_oss"),
                                 {out_codes, out_scales, out_bias});
  });
}

}  // extern "C"
