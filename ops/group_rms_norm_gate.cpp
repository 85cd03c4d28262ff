// Host recipe: group RMSNorm × sigmoid gate, forward and backward (templates/kiln/group_rms_norm_gate.cuh).
// Spec: ../shared/spec/linghe-kernels.md §11.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "kiln/group_rms_norm_gate_args.h"
#include "kiln/ops/group_rms_norm_gate.hpp"
#include "ops/dw_partials.hpp"
#include "runtime/family.hpp"
#include "runtime/log.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// Measurement only (tests/gpu/group_rms_norm_gate_test.cpp, the timeline): when set, the staged backward writes
// kGateTraceSlots timestamps per CTA there (kiln/group_rms_norm_gate_args.h). Null in normal use.
std::atomic<unsigned long long*> group_rms_norm_gate_trace{nullptr};
// ops/bench/group_rms_norm_gate.cpp: a runnable forward/backward (also the tuner's instance).
BenchInstance group_rms_norm_gate_instance(Runtime& rt, bool backward, int64_t B, int64_t S, int64_t dim, int groups,
                                           bool shared_weight, bool transpose, DType dtype, int rows, int warps,
                                           int seg, bool workspace, int reduce, int hints);
}  // namespace detail

namespace {
using namespace detail;

enum : uint32_t { kFwd = 0, kBwd = 1, kDwReduce = 2 };
enum { P_DIM, P_G, P_SHARED, P_DTYPE, P_W_DTYPE };
enum { C_WARPS, C_SEG, C_ROWS, C_REDUCE, C_HINTS };
// C_ROWS (bwd): where the second pass finds x, gate and dy: 0 re-read (L1/L2), 1 kept in registers, 2 staged in
// shared memory (group_rms_norm_gate_bwd_staged_kernel: balanced token strips, a ring of gate_depth() items per warp
// streamed by TMA bulk copies on sm_90, cp.async before), 3 kept in registers together with the first pass's
// sigmoids (≤ 16 channels per lane). (Session 5's split items — 2 or 4 warps an item, rows 4/5/6 — lost to the staged
// kernel in every round and were removed in session 6; bench/NOTES.md keeps their rows.)
enum { kRowsReread = 0, kRowsKept = 1, kRowsStaged = 2, kRowsKeptSigmoid = 3 };
// C_REDUCE (bwd): where the CTAs' dweight partial rows are added: 0 by dw_reduce_kernel, launched with PDL behind the
// backward; 1 by the backward itself after a grid barrier (a cooperative launch; dw_reduce_fused in kiln/dw_reduce.cuh:
// the same addition order, the same bits), so no second kernel runs after it. Needs CTAs of a multiple of 4 warps.
// C_HINTS (bwd, staged kernel): 0 in the search space (the tuned and heuristic configs); other values are measurement
// points of the forced-config path only (bench rows, tests): bit 2 the TMA input copies with an L2 evict-first policy
// (session 5's default: 59.6–60.2 µs against 58.5–59.1 without it in session 6's rounds 1–3: the same-run reference;
// the same bits), and ablations with wrong results: bits 0–1 = 3 no dx/dgate stores, bit 3 x streamed to dx and gate
// to dgate with no math, bit 6 CTAs that return at once. Session 6 also measured and removed: dx/dgate stores streaming
// / evict-first (+0.3 / ±0), a 4-slot ring (±0), token strips rotated per segment (±0), the CTA's tokens dealt to its
// warps at run time (+10: the in-order dw chain ties each warp to the others' data) and stealing between CTAs built on
// that (+15); see bench/NOTES.md.
bool hint_measurement(int hints) { return hints == 4 || (hints & 3) == 3 || (hints & (8 | 64)) != 0; }

constexpr int64_t kMaxDim = 65536;
constexpr int64_t kMaxGroupDim = 16384;  // one group's channels: a warp's dw slice in shared memory (64 KiB)

int gate_depth(const Specialization& s);

// The staged backward's dynamic shared memory with `depth` ring slots a warp (kiln/group_rms_norm_gate.cuh): the rings
// (x, gate, dy of an item a slot) and one mbarrier a slot.
int64_t staged_smem(const Specialization& s, int depth) {
  const int64_t es = static_cast<int64_t>(dtype_size(static_cast<DType>(s.params[P_DTYPE])));
  const int64_t seg_channels = s.config[C_SEG] * (s.params[P_DIM] / s.params[P_G]);
  return s.config[C_WARPS] * depth * (3 * seg_channels * es + 8);
}

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/group_rms_norm_gate.cuh\"\n";
  const auto& p = s.params;
  const int64_t d = p[P_DIM] / p[P_G];
  switch (s.kernel) {
    case kFwd:
      name = fmt::format("kiln::group_rms_norm_gate_fwd{}_kernel<{}, {}, {}, {}, {}, {}, {}>",
                         s.config[C_ROWS] == kRowsStaged ? "_staged" : "", p[P_DIM], p[P_G], s.config[C_SEG],
                         p[P_SHARED] != 0, s.config[C_WARPS], cxx_type(p[P_DTYPE]), cxx_type(p[P_W_DTYPE]));
      break;
    case kBwd:
      if (s.config[C_ROWS] == kRowsStaged)
        name = fmt::format("kiln::group_rms_norm_gate_bwd_staged_kernel<{}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}>",
                           p[P_DIM], p[P_G], s.config[C_SEG], p[P_SHARED] != 0, s.config[C_WARPS], gate_depth(s),
                           s.arch.sm >= 90, s.config[C_REDUCE] != 0, s.config[C_HINTS], cxx_type(p[P_DTYPE]),
                           cxx_type(p[P_W_DTYPE]));
      else
        name = fmt::format("kiln::group_rms_norm_gate_bwd_kernel<{}, {}, {}, {}, {}, {}, {}, {}, {}, {}>", p[P_DIM],
                           p[P_G], s.config[C_SEG], p[P_SHARED] != 0, s.config[C_WARPS],
                           s.config[C_ROWS] == kRowsKept || s.config[C_ROWS] == kRowsKeptSigmoid,
                           s.config[C_ROWS] == kRowsKeptSigmoid, s.config[C_REDUCE] != 0, cxx_type(p[P_DTYPE]),
                           cxx_type(p[P_W_DTYPE]));
      break;
    default:
      // partial rows hold dim channels; a shared weight folds the G groups onto d outputs.
      name = p[P_SHARED] ? fmt::format("kiln::dw_reduce_kernel<{}, {}, float>", d, p[P_G])
                         : fmt::format("kiln::dw_reduce_kernel<{}, 1, float>", p[P_DIM]);
  }
}

int64_t group_dim(const Specialization& s) { return s.params[P_DIM] / s.params[P_G]; }

int smem_bytes(const Specialization& s) {
  const int64_t es = static_cast<int64_t>(dtype_size(static_cast<DType>(s.params[P_DTYPE])));
  const int64_t seg_channels = s.config[C_SEG] * group_dim(s);
  if (s.kernel == kFwd)  // the staged forward: two stages of x and gate per warp
    return s.config[C_ROWS] == kRowsStaged ? static_cast<int>(s.config[C_WARPS] * seg_channels * 4 * es) : 0;
  if (s.kernel != kBwd) return 0;
  if (s.config[C_ROWS] == kRowsStaged)  // the staged backward's rings: x, gate, dy per slot, one mbarrier each
    return static_cast<int>(staged_smem(s, gate_depth(s)));
  return static_cast<int>(s.config[C_WARPS] * seg_channels * 4);
}

// Ring slots per warp of the staged backward: 3 where they fit shared memory, else 2 (0: the warps do not fit).
int gate_depth(const Specialization& s) {
  for (int depth : {3, 2})
    if (staged_smem(s, depth) <= 227 * 1024 - 512) return depth;
  return 0;
}

// Kept sigmoids: the rows are kept (x, gate, dy in ≤ 48 registers per lane) and a lane holds ≤ 16 channels.
bool kept_sigmoid_ok(const Specialization& s, int seg) {
  const int64_t d = group_dim(s);
  const int64_t es = static_cast<int64_t>(dtype_size(static_cast<DType>(s.params[P_DTYPE])));
  int64_t e = 1;
  while (e < 16 / es && d % (2 * e) == 0) e *= 2;
  const int64_t steps = (seg * d / e + 31) / 32;
  return steps * 3 * e * es <= 192 && steps * e <= 16;
}

// The staged backward needs 16-byte chunks (d a multiple of 16 bytes) and dw for a lane's columns in ≤ 64 registers.
bool staged_ok(const Specialization& s, int seg) {
  const int64_t d = group_dim(s);
  const int64_t es = static_cast<int64_t>(dtype_size(static_cast<DType>(s.params[P_DTYPE])));
  const int64_t e = 16 / es, nc = seg * d / e;
  if ((d * es) % 16 != 0) return false;
  return s.kernel == kFwd || (nc + 31) / 32 * e <= 64;  // the backward keeps dw in registers
}

// The in-kernel dw reduction works on whole 128-thread groups of a CTA; the search space has it for the kernels
// that can be the default (staged, kept sigmoids).
bool fused_reduce_ok(int warps, int rows) { return warps % 4 == 0 && rows >= kRowsStaged; }

// Groups per warp item: the most that keep a segment within `max_bytes` of x's dtype (at least one group).
int seg_groups(int64_t dim, int64_t G, DType t, int64_t max_bytes) {
  const int64_t d = dim / G, es = static_cast<int64_t>(dtype_size(t));
  int best = 1;
  for (int64_t k = 1; k <= G && k <= 16; ++k)
    if (G % k == 0 && k * d * es <= max_bytes) best = static_cast<int>(k);
  return best;
}

// Backward warps per CTA: each owns an fp32 dw slice of SEG·d floats; at most 64 KiB of them per CTA.
int bwd_warps(int64_t seg_channels) {
  int w = 8;
  while (w > 1 && w * seg_channels * 4 > 65536) w /= 2;
  return w;
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);

FamilyDef g_family{"group_rms_norm_gate",
                   {"fwd", "bwd", "dw_reduce"},
                   {"dim", "G", "shared_w", "dtype", "w_dtype"},
                   {"warps", "seg_groups", "rows", "reduce", "hints"},
                   render,
                   smem_bytes,
                   enumerate,
                   search_space,
                   tune_instance};

Specialization spec(Arch arch, uint32_t kernel, int64_t dim, int64_t G, bool shared, DType t, DType w) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kernel;
  s.params[P_DIM] = dim;
  s.params[P_G] = G;
  s.params[P_SHARED] = shared;
  if (kernel == kDwReduce) return s;
  s.params[P_DTYPE] = static_cast<int64_t>(t);
  s.params[P_W_DTYPE] = static_cast<int64_t>(w);
  // Segments of ≤ 1 KiB per tensor (Ling-mini-2.0: one group of 512 channels per warp), rows in registers: small warp
  // items and many resident warps. Measured on H100 at B·S = 8192, dim 2048, G 4 (µs; target fwd ≤ 33, bwd ≤ 60):
  //   fwd, one warp per item: seg 1 × 4 warps 31.5; seg 2 × 8 32.5; seg 4 × 4 33.9, × 8 34.2, × 16 36.9;
  //        staged (persistent, cp.async double buffer): seg 1 × 8 32.7, seg 2 × 8 35.4, seg 4 × 4 40.0.
  //   bwd: kept rows seg 1 × 8 62.5, seg 2 × 8 64.5; staged (grid-stride tokens, per-warp cp.async double buffer)
  //        seg 1 × 8 63.3, seg 2 × 8 66.5, seg 4 × 4 91.2; re-read seg 4 × 8 87.4. The staged kernel now streams
  //        balanced token strips through 3-slot TMA rings with the sigmoids kept between passes: × 8 warps 62.7
  //        (per-item weight loads: L1 long-scoreboard stalls; now kept in registers); kept rows and sigmoids (rows 3)
  //        × 8 warps 60.7 (tuner 62.5, the best point; staged × 8 with weights in registers 63.9), the default
  //        where it applies.
  s.config[C_SEG] = seg_groups(dim, G, t, 1024);
  if (kernel == kFwd) {
    s.config[C_WARPS] = 4;
  } else {
    if (kept_sigmoid_ok(s, s.config[C_SEG]) && arch.sm >= 90 && dtype_size(t) == 2 && staged_ok(s, s.config[C_SEG])) {
      // The staged kernel (TMA rings of 3 items a warp) with the in-kernel dw reduction: session 5 rounds 1 / 2
      // 59.81 / 59.55 µs against 59.78 / 60.03 for kept rows + sigmoids (reduce 1) and 59.87 / 59.95 (reduce 0).
      // 16-bit activations (the measured and GPU-tested ones); fp32 keeps kept rows + sigmoids.
      s.config[C_WARPS] = 8;
      s.config[C_ROWS] = kRowsStaged;
      if (gate_depth(s) == 0) s.config[C_ROWS] = kRowsKeptSigmoid;
    } else if (kept_sigmoid_ok(s, s.config[C_SEG])) {
      s.config[C_WARPS] = 8;
      s.config[C_ROWS] = kRowsKeptSigmoid;
    } else {
      s.config[C_WARPS] = bwd_warps(s.config[C_SEG] * (dim / G));
      s.config[C_ROWS] = kRowsKept;
    }
    s.config[C_REDUCE] = fused_reduce_ok(s.config[C_WARPS], s.config[C_ROWS]) ? 1 : 0;
  }
  return s;
}

// fwd: 2–16 warps × segments (divisors of G, ≤ 8 KiB). bwd: 1–16 warps × segments × where the second pass finds the
// rows (re-read, registers, staged, registers with the sigmoids) × where dw is reduced (second kernel, or in-kernel
// for 4, 8, 16 warps of the kernels that can be the default: staged, kept sigmoids), while the shared memory fits
// 227 KiB. dw_reduce: nothing to tune.
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  if (dw_reduce_space(base, kDwReduce, out)) return;
  Specialization s = base;
  s.config = {};
  const int64_t dim = base.params[P_DIM], G = base.params[P_G];
  const DType t = static_cast<DType>(base.params[P_DTYPE]);
  const int64_t es = static_cast<int64_t>(dtype_size(t)), d = dim / G;
  const Specialization def = spec(base.arch, base.kernel, dim, G, base.params[P_SHARED] != 0, t,
                                  static_cast<DType>(base.params[P_W_DTYPE]));
  for (int64_t seg = 1; seg <= G && seg <= 16; ++seg) {
    if (G % seg != 0) continue;
    if (seg > 1 && seg * d * es > 8192 && seg != def.config[C_SEG]) continue;
    for (int w : {1, 2, 4, 8, 16}) {
      for (int rows : {kRowsReread, kRowsKept, kRowsStaged, kRowsKeptSigmoid}) {
        if (base.kernel == kFwd && (rows == kRowsKept || rows == kRowsKeptSigmoid || w < 2)) continue;
        if (rows == kRowsStaged && !staged_ok(base, static_cast<int>(seg))) continue;
        if (rows == kRowsKeptSigmoid && !kept_sigmoid_ok(base, static_cast<int>(seg))) continue;
        for (int reduce : {0, 1}) {
          if (reduce && (base.kernel != kBwd || !fused_reduce_ok(w, rows))) continue;
          s.config[C_WARPS] = w;
          s.config[C_SEG] = static_cast<int>(seg);
          s.config[C_ROWS] = rows;
          s.config[C_REDUCE] = reduce;
          s.config[C_HINTS] = 0;
          if (base.kernel == kBwd && rows == kRowsStaged && gate_depth(s) == 0) continue;
          if (smem_bytes(s) > 227 * 1024) continue;
          out.push_back(s);
        }
      }
    }
  }
}

// What `kiln prewarm` compiles: dim = num_attention_heads·head_dim (the attention output the gate multiplies) and
// G = num_key_value_heads: one group per query group (GQA), i.e. the heads that share a key/value head are normalized
// together. Ling-mini-2.0: dim 2048, G 4 — linghe's own bench configuration (4 groups of 512 = 4 heads each).
// Per-channel bf16 weight and the transposed layout (the layout is run-time, so it needs no extra specialization).
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  const int64_t dim = static_cast<int64_t>(m.num_attention_heads) * m.head_dim, G = m.num_key_value_heads;
  if (dim <= 0 || G <= 0 || dim % G != 0 || dim > kMaxDim || dim / G > kMaxGroupDim) return;
  out.push_back(spec(arch, kFwd, dim, G, false, DType::bf16, DType::bf16));
  out.push_back(spec(arch, kBwd, dim, G, false, DType::bf16, DType::bf16));
  out.push_back(spec(arch, kDwReduce, dim, G, false, DType::bf16, DType::bf16));
}

BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  return group_rms_norm_gate_instance(rt, s.kernel != kFwd, 1, std::max<int64_t>(tokens, 1), s.params[P_DIM],
                                      static_cast<int>(s.params[P_G]), s.params[P_SHARED] != 0, true,
                                      static_cast<DType>(s.params[P_DTYPE]), -1, 0, 0, false, -1, 0);
}

// ---- validation --------------------------------------------------------------------------------------------------

// A 3-D activation whose token (b, s) row is at b·stride[bdim] + s·stride[sdim]: shape [B, S, dim] (bdim 0) or
// [S, B, dim] (bdim 1), dense last dim, non-negative dims and strides keeping every row `vec`-element aligned.
void check_tokens(const Check& ck, const char* arg, const TensorRef& t, DType dtype, int64_t B, int64_t S,
                  int64_t dim, bool seq_first, int64_t vec, const char* layout_note) {
  ck.dtype(arg, t, {dtype});
  const int64_t d0 = seq_first ? S : B, d1 = seq_first ? B : S;
  if (t.ndim != 3 || t.shape[0] != d0 || t.shape[1] != d1 || t.shape[2] != dim)
    ck.shape_error(arg, fmt::format("expected shape [{}, {}, {}] ({}), got {}", d0, d1, dim, layout_note,
                                    shape_str(t)));
  ck.token_rows(arg, t, vec);
}

struct Geometry {
  int64_t B = 0, S = 0, dim = 0, G = 0, d = 0, M = 0, vec = 1;
  bool shared = false;
};

Geometry check_common(const Check& ck, const TensorRef& x, const TensorRef& gate, const TensorRef& weight,
                      const GroupRmsNormGateOptions& o) {
  ck.finite_nonnegative("eps", o.eps);
  Geometry g;
  ck.dtype("x", x, {DType::bf16, DType::f16, DType::f32});
  if (x.ndim != 3) ck.shape_error("x", fmt::format("expected a 3-D tensor [B, S, dim], got shape {}", shape_str(x)));
  g.B = x.shape[0];
  g.S = x.shape[1];
  g.dim = x.shape[2];
  if (g.dim <= 0 || g.dim > kMaxDim)
    ck.shape_error("x", fmt::format("expected a last dim (dim) in [1, {}], got {}", kMaxDim, g.dim));
  if (o.groups <= 0 || g.dim % o.groups != 0)
    ck.invalid("groups", fmt::format("expected a positive divisor of dim = {} (the number of groups), got {}", g.dim,
                                     o.groups));
  g.G = o.groups;
  g.d = g.dim / g.G;
  if (g.d > kMaxGroupDim)
    ck.invalid("groups", fmt::format("expected groups of at most {} channels (groups ≥ {}), got dim/groups = {}",
                                     kMaxGroupDim, (g.dim + kMaxGroupDim - 1) / kMaxGroupDim, g.d));
  int64_t e = 1;
  while (e < 16 / static_cast<int64_t>(dtype_size(x.dtype)) && g.d % (2 * e) == 0) e *= 2;
  g.vec = e;
  check_tokens(ck, "x", x, x.dtype, g.B, g.S, g.dim, false, g.vec, "[B, S, dim]");
  check_tokens(ck, "gate", gate, x.dtype, g.B, g.S, g.dim, o.transpose, g.vec,
               o.transpose ? "[S, B, dim]: transpose=true takes the sequence-first layout"
                           : "[B, S, dim]: transpose=false takes x's layout");
  ck.fits_int32("x", g.B, "B");
  ck.fits_int32("x", g.S, "S");
  g.M = g.B * g.S;
  ck.fits_int32("x", g.M * g.G, "B·S·groups (warp items)");

  ck.dtype("weight", weight, {DType::bf16, DType::f16, DType::f32});
  if (weight.ndim != 1 || (weight.shape[0] != g.dim && weight.shape[0] != g.d))
    ck.shape_error("weight", fmt::format("expected shape [{}] (per channel) or [{}] (shared by the {} groups), got {}",
                                         g.dim, g.d, g.G, shape_str(weight)));
  g.shared = weight.shape[0] != g.dim;
  ck.tensor("weight", weight, {DType::bf16, DType::f16, DType::f32}, {weight.shape[0]},
            static_cast<int>(std::min<int64_t>(16, g.vec * static_cast<int64_t>(dtype_size(weight.dtype)))));
  return g;
}

const char* out_layout(bool transpose) {
  return transpose ? "[S, B, dim]: transpose=true" : "[B, S, dim]: transpose=false";
}

// Strides of token (b, s) in a tensor of x's layout or of gate's layout.
std::pair<long long, long long> bs_strides(const TensorRef& t, bool seq_first) {
  return seq_first ? std::pair<long long, long long>{stride_of(t, 1), stride_of(t, 0)}
                   : std::pair<long long, long long>{stride_of(t, 0), stride_of(t, 1)};
}

// Persistent grid (the backward, and the staged forward): the x dimension (token slots) holds every CTA that fits on
// the GPU at once, split over the segments (grid y), never more than there are token groups. The workspace bound uses
// the thread limit instead of the occupancy (which depends on the weight dtype), so it covers every specialization of
// the shape.
int64_t grid_x(Runtime& rt, const Specialization& s, int64_t M) {
  auto& impl = rt.impl();
  const int warps = s.config[C_WARPS];
  return impl.persistent_grid(impl.kernel(s), warps * 32, smem_bytes(s), (M + warps - 1) / warps,
                              s.params[P_G] / s.config[C_SEG]);
}
int64_t bwd_grid_x_bound(Runtime& rt, const Specialization& s, int64_t M) {
  const int warps = s.config[C_WARPS];
  const int64_t full = static_cast<int64_t>(rt.impl().device().sm_count) * std::max(1, 64 / warps);
  return std::max<int64_t>(1, std::min<int64_t>(full, (M + warps - 1) / warps));
}

}  // namespace

KILN_REGISTER_FAMILY(group_rms_norm_gate, g_family)

namespace detail {
// group_rms_norm_gate_fwd with the config forced (warps, segment groups, rows mode 0 per item / 2 staged; warps ≤ 0:
// the tuned/heuristic config).
void group_rms_norm_gate_fwd_config(Runtime& rt, const TensorRef& x, const TensorRef& gate, const TensorRef& weight,
                                    const TensorRef& out, const GroupRmsNormGateOptions& opts, Stream stream,
                                    int warps, int seg, int rows);
}  // namespace detail

void group_rms_norm_gate_fwd(Runtime& rt, const TensorRef& x, const TensorRef& gate, const TensorRef& weight,
                             const TensorRef& out, const GroupRmsNormGateOptions& opts, Stream stream) {
  detail::group_rms_norm_gate_fwd_config(rt, x, gate, weight, out, opts, stream, 0, 0, 0);
}

void detail::group_rms_norm_gate_fwd_config(Runtime& rt, const TensorRef& x, const TensorRef& gate,
                                            const TensorRef& weight, const TensorRef& out,
                                            const GroupRmsNormGateOptions& opts, Stream stream, int warps, int seg,
                                            int rows) {
  const Check ck{"group_rms_norm_gate_fwd"};
  const Geometry g = check_common(ck, x, gate, weight, opts);
  check_tokens(ck, "out", out, x.dtype, g.B, g.S, g.dim, opts.transpose, g.vec, out_layout(opts.transpose));
  ck.disjoint_rows("out", out);
  if (g.M == 0) return;

  auto& impl = rt.impl();
  Specialization s = impl.tuned(spec(impl.target_arch(), kFwd, g.dim, g.G, g.shared, x.dtype, weight.dtype), g.M);
  if (warps > 0) {
    s.config[C_WARPS] = warps;
    s.config[C_SEG] = seg;
    s.config[C_ROWS] = rows;
    if (!in_search_space(s)) ck.invalid("config", fmt::format("{} is not in the search space", s.describe()));
  }
  const auto [x_sb, x_ss] = bs_strides(x, false);
  const auto [g_sb, g_ss] = bs_strides(gate, opts.transpose);
  const auto [o_sb, o_ss] = bs_strides(out, opts.transpose);
  GroupNormGateFwdArgs a{x.data,  x_sb,  x_ss,  gate.data, g_sb, g_ss, weight.data, out.data, o_sb, o_ss,
                         static_cast<int>(g.M), static_cast<int>(g.B), static_cast<int>(g.S), opts.transpose,
                         opts.eps};
  const int64_t nseg = g.G / s.config[C_SEG];
  const int64_t cta_warps = s.config[C_WARPS];
  LaunchDims d;
  d.block[0] = static_cast<unsigned>(cta_warps * 32);
  if (s.config[C_ROWS] == kRowsStaged) {  // persistent: the CTAs that fit at once, split over the segments
    d.grid[0] = static_cast<unsigned>(grid_x(rt, s, g.M));
    d.grid[1] = static_cast<unsigned>(nseg);
    d.smem = static_cast<unsigned>(smem_bytes(s));
  } else {  // one warp per (token, segment)
    d.grid[0] = static_cast<unsigned>((g.M * nseg + cta_warps - 1) / cta_warps);
  }
  impl.launch(s, d, stream, a);
}

int64_t group_rms_norm_gate_bwd_workspace_elems(Runtime& rt, int64_t tokens, int64_t dim, int groups, DType dtype) {
  if (tokens <= 0 || groups <= 0 || dim % groups != 0) return 0;
  auto& impl = rt.impl();
  const Specialization s =
      impl.tuned(spec(impl.target_arch(), kBwd, dim, groups, false, dtype, dtype), tokens);
  return bwd_grid_x_bound(rt, s, tokens) * dim;
}

namespace detail {
// group_rms_norm_gate_bwd with the backward's config forced (rows mode, warps, segment groups, reduce, hints; the
// bench's measurement hook). rows < 0: the tuned/heuristic config; reduce < 0 with rows ≥ 0: the heuristic's choice
// for those warps.
void group_rms_norm_gate_bwd_config(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& gate,
                                    const TensorRef& weight, const TensorRef& dx, const TensorRef& dgate,
                                    const TensorRef& dweight, const GroupRmsNormGateOptions& opts,
                                    const TensorRef& workspace, Stream stream, int rows, int warps, int seg,
                                    int reduce, int hints);
}  // namespace detail

void group_rms_norm_gate_bwd(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& gate,
                             const TensorRef& weight, const TensorRef& dx, const TensorRef& dgate,
                             const TensorRef& dweight, const GroupRmsNormGateOptions& opts,
                             const TensorRef& workspace, Stream stream) {
  detail::group_rms_norm_gate_bwd_config(rt, dy, x, gate, weight, dx, dgate, dweight, opts, workspace, stream, -1, 0,
                                         0, -1, 0);
}

void detail::group_rms_norm_gate_bwd_config(Runtime& rt, const TensorRef& dy, const TensorRef& x,
                                            const TensorRef& gate, const TensorRef& weight, const TensorRef& dx,
                                            const TensorRef& dgate, const TensorRef& dweight,
                                            const GroupRmsNormGateOptions& opts, const TensorRef& workspace,
                                            Stream stream, int rows, int warps, int seg, int reduce, int hints) {
  const Check ck{"group_rms_norm_gate_bwd"};
  const Geometry g = check_common(ck, x, gate, weight, opts);
  check_tokens(ck, "dy", dy, x.dtype, g.B, g.S, g.dim, opts.transpose, g.vec, out_layout(opts.transpose));
  check_tokens(ck, "dx", dx, x.dtype, g.B, g.S, g.dim, false, g.vec, "[B, S, dim]: x's layout");
  ck.disjoint_rows("dx", dx);
  check_tokens(ck, "dgate", dgate, x.dtype, g.B, g.S, g.dim, opts.transpose, g.vec, "gate's layout");
  ck.disjoint_rows("dgate", dgate);
  ck.tensor("dweight", dweight, {DType::f32}, {weight.shape[0]}, 4);
  if (workspace.defined()) ck.tensor("workspace", workspace, {DType::f32}, {-1}, 16);

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  const Specialization reducer = spec(arch, kDwReduce, g.dim, g.G, g.shared, x.dtype, weight.dtype);
  int64_t X = 0;
  bool fused = false;  // the backward adds the partial rows itself (C_REDUCE 1)
  DwPartials partial(impl, stream, workspace);
  if (g.M > 0) {
    Specialization s = impl.tuned(spec(arch, kBwd, g.dim, g.G, g.shared, x.dtype, weight.dtype), g.M);
    if (rows >= 0) {
      s.config[C_ROWS] = rows;
      s.config[C_WARPS] = warps;
      s.config[C_SEG] = seg;
      s.config[C_REDUCE] = reduce >= 0 ? reduce : (fused_reduce_ok(warps, rows) ? 1 : 0);
      s.config[C_HINTS] = hints;
      // measurement points (see C_HINTS) are checked against the search space without their hints
      Specialization plain = s;
      plain.config[C_HINTS] = 0;
      if (hints && (rows != kRowsStaged || !hint_measurement(hints) || ((hints & 4) && arch.sm < 90)))
        ck.invalid("config", fmt::format("{}: hints {} is not a measurement point of the staged backward",
                                         s.describe(), hints));
      if (!in_search_space(plain))
        ck.invalid("config", fmt::format("{} is not in the search space", s.describe()));
    }
    X = grid_x(rt, s, g.M);
    partial.reserve(ck, "group_rms_norm_gate_bwd_workspace_elems", X * g.dim);
    const auto [dy_sb, dy_ss] = bs_strides(dy, opts.transpose);
    const auto [x_sb, x_ss] = bs_strides(x, false);
    const auto [g_sb, g_ss] = bs_strides(gate, opts.transpose);
    const auto [dx_sb, dx_ss] = bs_strides(dx, false);
    const auto [dg_sb, dg_ss] = bs_strides(dgate, opts.transpose);
    GroupNormGateBwdArgs a{dy.data,  dy_sb,    dy_ss,     x.data,  x_sb,  x_ss,    gate.data, g_sb,
                           g_ss,     weight.data, dx.data, dx_sb,   dx_ss, dgate.data, dg_sb, dg_ss,
                           partial.data(), static_cast<float*>(dweight.data), static_cast<int>(g.M),
                           static_cast<int>(g.B), static_cast<int>(g.S), opts.transpose, opts.eps,
                           detail::group_rms_norm_gate_trace.load(std::memory_order_relaxed)};
    fused = s.config[C_REDUCE] != 0;
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(X);
    d.grid[1] = static_cast<unsigned>(g.G / s.config[C_SEG]);
    d.block[0] = static_cast<unsigned>(s.config[C_WARPS] * 32);
    d.smem = static_cast<unsigned>(smem_bytes(s));
    // The fused reduction waits for every CTA: all must be resident at once. The grid is occupancy-sized (grid_x),
    // and the cooperative attribute makes the driver guarantee it, or refuse the launch where fewer SMs are available
    // than the device has (MPS, green contexts): then the two-kernel path runs instead (any grid size works there).
    d.cooperative = fused;
    try {
      impl.launch(s, d, stream, a);
    } catch (const DeviceError& e) {
      if (!fused) throw;
      log(LogLevel::warn, "group_rms_norm_gate_bwd: cooperative launch refused ({}); reducing dweight in a second kernel",
          e.what());
      fused = false;
      s.config[C_REDUCE] = 0;
      d.cooperative = false;
      impl.launch(s, d, stream, a);
    }
  }
  if (fused) {
    partial.release();
    return;
  }
  partial.reduce(reducer, X, g.shared ? g.d : g.dim, dweight.data);
}

}  // namespace kiln
