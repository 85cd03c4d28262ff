// Host recipe: qk-norm + half RoPE forward/backward (templates/kiln/qk_norm_half_rope.cuh). Spec: linghe-kernels.md §4.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <span>
#include <tuple>
#include <utility>

#include "kiln/ops/qk_norm_half_rope.hpp"
#include "kiln/qk_norm_half_rope_args.h"
#include "ops/dw_partials.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/qk_norm_half_rope.cpp: a prepared forward (bwd = false) or backward call on random data.
BenchInstance qk_norm_half_rope_instance(Runtime& rt, bool bwd, int64_t S, int64_t B, int H, int h, int D,
                                         bool interleaved, DType dtype, DType w_dtype, bool weight_grads);
}  // namespace detail

namespace {
using namespace detail;

enum : uint32_t { kFwd = 0, kBwd = 1, kDwReduce = 2 };
enum { P_H, P_HG, P_D, P_INTERLEAVED, P_DTYPE, P_W_DTYPE };
enum { C_WARPS, C_BATCH, C_ACC_SMEM };

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/qk_norm_half_rope.cuh\"\n";
  const auto& p = s.params;
  if (s.kernel == kDwReduce) {
    // partial rows hold [dq_w | dk_w] (2·D); one launch writes both (kiln/dw_reduce.cuh).
    name = fmt::format("kiln::dw_reduce_kernel<{}, 1, float, {}>", 2 * p[P_D], p[P_D]);
    return;
  }
  name = fmt::format("kiln::qk_norm_half_rope_{}_kernel<{}, {}, {}, {}, {}, {}, {}, {}{}>", s.kernel == kFwd ? "fwd" : "bwd",
                     p[P_H], p[P_HG], p[P_D], p[P_INTERLEAVED] != 0, cxx_type(p[P_DTYPE]), cxx_type(p[P_W_DTYPE]),
                     s.config[C_WARPS], s.config[C_BATCH],
                     s.kernel == kBwd ? (s.config[C_ACC_SMEM] ? ", true" : ", false") : "");
}

// The backward's shared memory is dynamic (weights, rotary tables, optionally the accumulators); the others' static.
int smem_bytes(const Specialization& s) {
  if (s.kernel != kBwd) return 0;
  return qk_norm_half_rope_bwd_smem_bytes(s.config[C_WARPS], static_cast<int>(s.params[P_D]),
                                          static_cast<int>(dtype_size(static_cast<DType>(s.params[P_W_DTYPE]))),
                                          s.config[C_ACC_SMEM] != 0);
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);

FamilyDef g_family{"qk_norm_half_rope",
                   {"fwd", "bwd", "dw_reduce"},
                   {"H", "h", "D", "interleaved", "dtype", "w_dtype"},
                   {"warps", "batch", "acc_smem"},
                   render,
                   smem_bytes,
                   enumerate,
                   search_space,
                   tune_instance};

// Tile configs (warps per CTA, head slots in the register ring, weight-gradient accumulators in shared memory); the
// first is the heuristic default. Forward: 4 warps (16 rows at D = 128) per CTA, a 4-slot ring (128 bytes a lane).
// Backward: 8 warps per CTA of a persistent grid, ≥ 16 warps/SM (≤ 128 registers); a 3-slot ring (gradient + input:
// 192 bytes a lane) fits without spills only with the accumulators in shared memory (4 slots spill 16 bytes). Static shared memory (the forward's 2 KiB
// rotary table per warp) keeps the forward's WARPS ≤ 8.
struct Point { int warps, batch, acc_smem; };
constexpr Point kFwdPoints[] = {{4, 4, 0}, {2, 4, 0}, {8, 4, 0}, {4, 8, 0}, {4, 2, 0}};
// Backward: with acc_smem the weight-gradient accumulators leave the registers, so a 4-slot ring fits.
constexpr Point kBwdPoints[] = {{8, 3, 1}, {8, 2, 0}, {4, 2, 0}, {8, 1, 0}, {8, 4, 1}};

bool in_space(bool fwd, const Point& p) {
  const std::span<const Point> points = fwd ? std::span<const Point>(kFwdPoints) : std::span<const Point>(kBwdPoints);
  for (const Point& q : points)
    if (q.warps == p.warps && q.batch == p.batch && q.acc_smem == p.acc_smem) return true;
  return false;
}

// A forced search-space point per kernel ({0, 0, 0}: the default), set by tests through
// qk_norm_half_rope_force_config.
struct Forced {
  Point fwd{0, 0, 0}, bwd{0, 0, 0};
};
Forced& forced() {
  static Forced f;
  return f;
}

Specialization spec(Arch arch, uint32_t kernel, int H, int h, int D, bool interleaved, DType t, DType w) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kernel;
  s.params[P_D] = D;
  if (kernel == kDwReduce) return s;
  s.params[P_H] = H;
  s.params[P_HG] = h;
  s.params[P_INTERLEAVED] = interleaved;
  s.params[P_DTYPE] = static_cast<int64_t>(t);
  s.params[P_W_DTYPE] = static_cast<int64_t>(w);
  Point c = kernel == kFwd ? kFwdPoints[0] : kBwdPoints[0];
  if (const Point f = kernel == kFwd ? forced().fwd : forced().bwd; f.warps > 0) c = f;
  s.config[C_WARPS] = c.warps;
  s.config[C_BATCH] = c.batch;
  s.config[C_ACC_SMEM] = c.acc_smem;
  return s;
}

// A handful of points around the default (every point is compiled in CI): CTA size and load depth.
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  if (dw_reduce_space(base, kDwReduce, out)) return;
  Specialization s = base;
  s.config = {};
  const std::span<const Point> points =
      base.kernel == kFwd ? std::span<const Point>(kFwdPoints) : std::span<const Point>(kBwdPoints);
  for (const Point& c : points) {
    s.config[C_WARPS] = c.warps;
    s.config[C_BATCH] = c.batch;
    s.config[C_ACC_SMEM] = c.acc_smem;
    out.push_back(s);
  }
}

bool supported_head_dim(int64_t D) { return D >= 32 && D <= 256 && (D & (D - 1)) == 0; }

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  const int H = m.num_attention_heads, h = m.num_key_value_heads, D = m.head_dim;
  if (H <= 0 || h <= 0 || H % h != 0 || !supported_head_dim(D)) return;
  out.push_back(spec(arch, kFwd, H, h, D, true, DType::bf16, DType::bf16));
  out.push_back(spec(arch, kBwd, H, h, D, true, DType::bf16, DType::bf16));
  out.push_back(spec(arch, kDwReduce, H, h, D, true, DType::bf16, DType::bf16));
}

BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  const auto& p = s.params;
  const int D = static_cast<int>(p[P_D]);
  if (s.kernel == kDwReduce)  // tuned through the backward that launches it (nothing to tune on its own)
    return qk_norm_half_rope_instance(rt, true, tokens, 1, 1, 1, D, true, DType::bf16, DType::bf16, true);
  return qk_norm_half_rope_instance(rt, s.kernel == kBwd, tokens, 1, static_cast<int>(p[P_H]),
                                    static_cast<int>(p[P_HG]), D, p[P_INTERLEAVED] != 0,
                                    static_cast<DType>(p[P_DTYPE]), static_cast<DType>(p[P_W_DTYPE]), true);
}

// ---- validation -----------------------------------------------------------------------------------------------

struct Geometry {
  int64_t S = 0, B = 0, D = 0;
  int H = 0, h = 0;
  int64_t width() const { return (H + 2 * h) * D; }
};

void check_options(const Check& ck, const QkNormHalfRopeOptions& o) {
  if (o.num_heads <= 0) ck.invalid("num_heads", fmt::format("expected H > 0, got {}", o.num_heads));
  if (o.num_groups <= 0) ck.invalid("num_groups", fmt::format("expected h > 0, got {}", o.num_groups));
  if (o.num_heads % o.num_groups != 0)
    ck.invalid("num_groups", fmt::format("expected a divisor of num_heads = {} (h query groups of H/h heads), got {}",
                                         o.num_heads, o.num_groups));
  ck.finite_nonnegative("eps", o.eps);
  if (o.position_offset < 0 || o.position_offset > INT32_MAX)
    ck.invalid("position_offset", fmt::format("expected a value in [0, {}], got {}", INT32_MAX, o.position_offset));
  if (o.cu_seqlens.defined()) {
    ck.dtype("cu_seqlens", o.cu_seqlens, {DType::i32});
    ck.shape("cu_seqlens", o.cu_seqlens, {-1});
    if (o.cu_seqlens.shape[0] < 2)
      ck.shape_error("cu_seqlens", fmt::format("expected [n + 1] with n ≥ 1 sequences, got {}", shape_str(o.cu_seqlens)));
    ck.contiguous("cu_seqlens", o.cu_seqlens);
    ck.fits_int32("cu_seqlens", o.cu_seqlens.shape[0], "the number of entries");
    ck.pointer("cu_seqlens", o.cu_seqlens, 4);
    if (o.max_seqlen < 0) ck.invalid("max_seqlen", fmt::format("expected ≥ 0 (0: S), got {}", o.max_seqlen));
  } else if (o.max_seqlen != 0) {
    ck.invalid("max_seqlen", fmt::format("expected 0 without cu_seqlens, got {}", o.max_seqlen));
  }
}

// A [S, B, (H+2h)·D] qkv-layout tensor: last dim contiguous, rows 16-byte aligned, rows of distinct (s, b) disjoint.
void check_qkv_layout(const Check& ck, const char* arg, const TensorRef& t, DType dtype, const Geometry* want) {
  ck.dtype(arg, t, {dtype});
  if (t.ndim != 3) ck.shape_error(arg, fmt::format("expected a 3-D tensor [S, B, (H+2h)·D], got {}", shape_str(t)));
  if (want && (t.shape[0] != want->S || t.shape[1] != want->B || t.shape[2] != want->width()))
    ck.shape_error(arg, fmt::format("expected shape [{}, {}, {}] (as qkv), got {}", want->S, want->B, want->width(),
                                    shape_str(t)));
  if (t.shape[0] < 0 || t.shape[1] < 0 || t.shape[2] < 0) ck.shape_error(arg, "negative dims");
  if (t.strides[2] != 1 && t.shape[2] > 1)
    ck.shape_error(arg, fmt::format("expected the last dim contiguous (stride 1), got stride {}", t.strides[2]));
  const int64_t S = t.shape[0], B = t.shape[1], Wd = t.shape[2];
  if (S * B == 0) return;
  const int64_t s0 = S > 1 ? t.strides[0] : 0, s1 = B > 1 ? t.strides[1] : 0;
  for (const int64_t st : {s0, s1}) {
    if (st < 0) ck.shape_error(arg, fmt::format("expected non-negative strides, got [{}, {}, 1]", t.strides[0], t.strides[1]));
    if ((st * static_cast<int64_t>(dtype_size(dtype))) % 16 != 0)
      ck.invalid(arg, fmt::format("expected strides that keep rows 16-byte aligned (multiples of {} elements), got "
                                  "[{}, {}, 1]", 16 / dtype_size(dtype), t.strides[0], t.strides[1]));
  }
  // Rows do not overlap: one of the two row axes steps over whole rows and the other over the whole first axis.
  // The stride of a dim of size 1 is never used, so it is not checked.
  const bool b_inner = (B == 1 || s1 >= Wd) && (S == 1 || s0 >= (B - 1) * s1 + Wd);
  const bool s_inner = (S == 1 || s0 >= Wd) && (B == 1 || s1 >= (S - 1) * s0 + Wd);
  if (!(b_inner || s_inner))
    ck.shape_error(arg, fmt::format("expected rows that do not overlap, got shape {} with strides [{}, {}, 1]",
                                    shape_str(t), t.strides[0], t.strides[1]));
  ck.pointer(arg, t, 16);
}

Geometry check_qkv(const Check& ck, const TensorRef& qkv, const QkNormHalfRopeOptions& o) {
  check_options(ck, o);
  ck.dtype("qkv", qkv, {DType::bf16, DType::f16});
  check_qkv_layout(ck, "qkv", qkv, qkv.dtype, nullptr);
  Geometry g;
  g.S = qkv.shape[0];
  g.B = qkv.shape[1];
  g.H = o.num_heads;
  g.h = o.num_groups;
  const int64_t heads = g.H + 2 * static_cast<int64_t>(g.h);
  if (qkv.shape[2] % heads != 0)
    ck.shape_error("qkv", fmt::format("expected the last dim to be (H + 2h)·D = {}·D, got {}", heads, qkv.shape[2]));
  g.D = qkv.shape[2] / heads;
  if (!supported_head_dim(g.D))
    ck.shape_error("qkv", fmt::format("expected a head dim D = last dim / (H + 2h) that is a power of two in [32, 256], "
                                      "got D = {} (last dim {}, H + 2h = {})", g.D, qkv.shape[2], heads));
  ck.fits_int32("qkv", g.S * g.B, "S·B (rows)");
  return g;
}

void check_weights(const Check& ck, const TensorRef& wq, const TensorRef& wk, const TensorRef& qkv, int64_t D) {
  ck.tensor("q_norm_weight", wq, {qkv.dtype, DType::f32}, {D}, 16);
  ck.tensor("k_norm_weight", wk, {wq.dtype}, {D}, 16);
}

void check_freqs(const Check& ck, const TensorRef& freqs, const Geometry& g, const QkNormHalfRopeOptions& o) {
  ck.dtype("freqs", freqs, {DType::f32});
  ck.shape("freqs", freqs, {-1, g.D / 2});
  ck.contiguous("freqs", freqs);
  const int64_t span = o.cu_seqlens.defined() && o.max_seqlen > 0 ? o.max_seqlen : g.S;
  const int64_t need = o.position_offset + span;
  if (freqs.shape[0] < need)
    ck.shape_error("freqs", fmt::format("expected at least {} rows (position_offset {} + {} {}) of D/2 = {} angles, got {}",
                                        need, o.position_offset, o.cu_seqlens.defined() && o.max_seqlen > 0
                                            ? "max_seqlen" : "S", span, g.D / 2, shape_str(freqs)));
  if (freqs.numel() > 0) ck.pointer("freqs", freqs, 16);
}

void check_heads(const Check& ck, const char* arg, const TensorRef& t, DType dtype, const Geometry& g, int heads) {
  ck.tensor(arg, t, {dtype}, {g.B, g.S, heads, g.D}, 16);
}

// What both directions check first: qkv and the options, the weights, freqs, and the per-head tensors (q, k, v, or
// their gradients: names[0..2]).
Geometry check_inputs(const Check& ck, const TensorRef& qkv, const TensorRef& wq, const TensorRef& wk,
                      const TensorRef& freqs, const QkNormHalfRopeOptions& opts, const char* const (&names)[3],
                      const TensorRef& q, const TensorRef& k, const TensorRef& v) {
  const Geometry g = check_qkv(ck, qkv, opts);
  check_weights(ck, wq, wk, qkv, g.D);
  check_freqs(ck, freqs, g, opts);
  check_heads(ck, names[0], q, qkv.dtype, g, g.H);
  check_heads(ck, names[1], k, qkv.dtype, g, g.h);
  check_heads(ck, names[2], v, qkv.dtype, g, g.h);
  return g;
}

QkRopePositions positions(const TensorRef& freqs, const QkNormHalfRopeOptions& o) {
  QkRopePositions p{};
  p.freqs = static_cast<const float*>(freqs.data);
  p.freqs_rows = freqs.shape[0];
  p.cu_seqlens = o.cu_seqlens.defined() ? static_cast<const int*>(o.cu_seqlens.data) : nullptr;
  p.num_seqs = o.cu_seqlens.defined() ? static_cast<int>(o.cu_seqlens.shape[0] - 1) : 0;
  p.pos_offset = o.position_offset;
  return p;
}

// The argument fields both directions share: qkv and its strides, the weights, the positions, S, B, eps.
template <typename Args>
void set_common_args(Args& a, const TensorRef& qkv, const TensorRef& wq, const TensorRef& wk, const TensorRef& freqs,
                     const QkNormHalfRopeOptions& opts, const Geometry& g) {
  a.qkv = qkv.data;
  a.qkv_s_stride = qkv.strides[0];
  a.qkv_b_stride = qkv.strides[1];
  a.wq = wq.data;
  a.wk = wk.data;
  a.pos = positions(freqs, opts);
  a.S = static_cast<int>(g.S);
  a.B = static_cast<int>(g.B);
  a.eps = opts.eps;
}

int rows_per_cta(const Specialization& s) {
  return s.config[C_WARPS] * (32 / static_cast<int>(s.params[P_D] / 16));
}

// Persistent grid of the backward: every CTA that fits on the GPU at once, never more than there are tiles.
int64_t bwd_grid(Runtime& rt, const Specialization& s, int64_t M) {
  auto& impl = rt.impl();
  const int64_t tiles = (M + rows_per_cta(s) - 1) / rows_per_cta(s);
  return impl.persistent_grid(impl.kernel(s), s.config[C_WARPS] * 32, smem_bytes(s), tiles);
}

constexpr int64_t kMaxCtasPerSm = 32;  // the hardware limit on every arch kiln targets

}  // namespace

namespace detail {
// Test and measurement hook: every later call of the forward (fwd) or backward uses this search-space point
// (warps 0 restores the heuristic default). Returns false, changing nothing, for a point outside the space.
// Not synchronized: call it while no op of this family runs.
bool qk_norm_half_rope_force_config(bool fwd, int warps, int batch, int acc_smem) {
  const Point p{warps, batch, acc_smem};
  if (warps != 0 && !in_space(fwd, p)) return false;
  (fwd ? forced().fwd : forced().bwd) = warps != 0 ? p : Point{0, 0, 0};
  return true;
}
}  // namespace detail

KILN_REGISTER_FAMILY(qk_norm_half_rope, g_family)

void qk_norm_half_rope_fwd(Runtime& rt, const TensorRef& qkv, const TensorRef& q_norm_weight,
                           const TensorRef& k_norm_weight, const TensorRef& freqs, const TensorRef& q,
                           const TensorRef& k, const TensorRef& v, const QkNormHalfRopeOptions& opts, Stream stream) {
  const Check ck{"qk_norm_half_rope_fwd"};
  const Geometry g = check_inputs(ck, qkv, q_norm_weight, k_norm_weight, freqs, opts, {"q", "k", "v"}, q, k, v);
  const int64_t M = g.S * g.B;
  if (M == 0) return;

  auto& impl = rt.impl();
  const Specialization s = impl.tuned(spec(impl.target_arch(), kFwd, g.H, g.h, static_cast<int>(g.D), opts.interleaved,
                                           qkv.dtype, q_norm_weight.dtype),
                                      M);
  QkNormRopeFwdArgs a{};
  set_common_args(a, qkv, q_norm_weight, k_norm_weight, freqs, opts, g);
  a.q = q.data;
  a.k = k.data;
  a.v = v.data;
  LaunchDims d;
  const int rows = rows_per_cta(s);
  d.grid[0] = static_cast<unsigned>((M + rows - 1) / rows);
  d.block[0] = static_cast<unsigned>(s.config[C_WARPS] * 32);
  impl.launch(s, d, stream, a);
}

int64_t qk_norm_half_rope_bwd_workspace_elems(Runtime& rt, int64_t head_dim) {
  if (!supported_head_dim(head_dim))
    throw InvalidArgument(fmt::format("qk_norm_half_rope_bwd_workspace_elems: argument 'head_dim': expected a power "
                                      "of two in [32, 256], got {}", head_dim));
  return static_cast<int64_t>(rt.impl().device().sm_count) * kMaxCtasPerSm * 2 * head_dim;
}

void qk_norm_half_rope_bwd(Runtime& rt, const TensorRef& gq, const TensorRef& gk, const TensorRef& gv,
                           const TensorRef& qkv, const TensorRef& q_norm_weight, const TensorRef& k_norm_weight,
                           const TensorRef& freqs, const TensorRef& dqkv, const TensorRef& dq_norm_weight,
                           const TensorRef& dk_norm_weight, const QkNormHalfRopeOptions& opts,
                           const TensorRef& workspace, Stream stream) {
  const Check ck{"qk_norm_half_rope_bwd"};
  const Geometry g =
      check_inputs(ck, qkv, q_norm_weight, k_norm_weight, freqs, opts, {"gq", "gk", "gv"}, gq, gk, gv);
  check_qkv_layout(ck, "dqkv", dqkv, qkv.dtype, &g);
  // Weight gradients are optional (frozen norm weights): with neither, no partials and no reduction.
  if (dq_norm_weight.defined()) ck.tensor("dq_norm_weight", dq_norm_weight, {DType::f32}, {g.D}, 4);
  if (dk_norm_weight.defined()) ck.tensor("dk_norm_weight", dk_norm_weight, {DType::f32}, {g.D}, 4);
  const bool want_dw = dq_norm_weight.defined() || dk_norm_weight.defined();
  if (workspace.defined()) ck.tensor("workspace", workspace, {DType::f32}, {-1}, 16);

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  const int D = static_cast<int>(g.D);
  const int64_t M = g.S * g.B;
  const Specialization reduce = spec(arch, kDwReduce, g.H, g.h, D, opts.interleaved, qkv.dtype, q_norm_weight.dtype);
  int64_t G = 0;
  DwPartials partial(impl, stream, workspace);
  if (M > 0) {
    const Specialization s =
        impl.tuned(spec(arch, kBwd, g.H, g.h, D, opts.interleaved, qkv.dtype, q_norm_weight.dtype), M);
    G = bwd_grid(rt, s, M);
    if (want_dw) partial.reserve(ck, "qk_norm_half_rope_bwd_workspace_elems", G * 2 * g.D);
    QkNormRopeBwdArgs a{};
    a.gq = gq.data;
    a.gk = gk.data;
    a.gv = gv.data;
    set_common_args(a, qkv, q_norm_weight, k_norm_weight, freqs, opts, g);
    a.dqkv = dqkv.data;
    a.dqkv_s_stride = dqkv.strides[0];
    a.dqkv_b_stride = dqkv.strides[1];
    a.partial = want_dw ? partial.data() : nullptr;
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(G);
    d.block[0] = static_cast<unsigned>(s.config[C_WARPS] * 32);
    d.smem = static_cast<unsigned>(smem_bytes(s));
    impl.launch(s, d, stream, a);
  }
  if (!want_dw) return;
  // Weight gradients = Σ over the CTAs' partials (zeros when there are no rows: a sum over G = 0 partials).
  partial.reduce(reduce, G, 2 * D, dq_norm_weight.data, dk_norm_weight.data);
}

}  // namespace kiln
