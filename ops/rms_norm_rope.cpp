// Host recipe: fused RMSNorm + rotate-half RoPE, forward and backward (templates/kiln/rms_norm_rope.cuh).
// Spec: ../shared/spec/triton-ops.md §2 (fused_rmsnorm_rope; the backward is §2.4).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kiln/ops/rms_norm_rope.hpp"
#include "kiln/rms_norm_rope_args.h"
#include "ops/dw_partials.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/rms_norm_rope.cpp: a runnable forward/backward at x [B, S, Hd] (also the tuner's instance).
BenchInstance rms_norm_rope_instance(Runtime& rt, bool backward, int64_t B, int64_t S, int64_t Hd, int64_t D,
                                     DType dtype, int rows, int warps, bool workspace, int split);
}  // namespace detail

namespace {
using namespace detail;

enum : uint32_t { kFwd = 0, kBwd = 1, kDwReduce = 2 };
enum { P_HD, P_D, P_DTYPE, P_W_DTYPE, P_CS_DTYPE };
enum { C_WARPS, C_ROWS, C_SPLIT };
// C_ROWS (bwd): where the second pass finds x and dy: 0 re-read (L1/L2), 1 kept in registers, 2 staged in shared
// memory (rms_norm_rope_bwd_staged_kernel: balanced row strips, a ring of rope_depth() rows per warp streamed by TMA
// bulk copies on sm_90, cp.async before).
enum { kRowsReread = 0, kRowsKept = 1, kRowsStaged = 2 };
bool staged(const Specialization& s) { return s.config[C_ROWS] == kRowsStaged; }

constexpr int64_t kMaxHidden = 32768;

// Warps sharing a row in the backward (config "split"; 0 in a hand-made config means 1).
int split_of(const Specialization& s) { return std::max(1, static_cast<int>(s.config[C_SPLIT])); }

int rope_depth(const Specialization& s);

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/rms_norm_rope.cuh\"\n";
  const auto& p = s.params;
  if (s.kernel == kDwReduce) {
    name = fmt::format("kiln::dw_reduce_kernel<{}, 1, float>", p[P_HD]);
    return;
  }
  if (s.kernel == kFwd)
    name = fmt::format("kiln::rms_norm_rope_fwd_kernel<{}, {}, {}, {}, {}, {}>", p[P_HD], p[P_D], s.config[C_WARPS],
                       cxx_type(p[P_DTYPE]), cxx_type(p[P_W_DTYPE]), cxx_type(p[P_CS_DTYPE]));
  else if (staged(s))
    name = fmt::format("kiln::rms_norm_rope_bwd_staged_kernel<{}, {}, {}, {}, {}, {}, {}, {}, {}>", p[P_HD], p[P_D],
                       s.config[C_WARPS], split_of(s), rope_depth(s), s.arch.sm >= 90, cxx_type(p[P_DTYPE]),
                       cxx_type(p[P_W_DTYPE]), cxx_type(p[P_CS_DTYPE]));
  else
    name = fmt::format("kiln::rms_norm_rope_bwd_kernel<{}, {}, {}, {}, {}, {}, {}, {}>", p[P_HD], p[P_D],
                       s.config[C_WARPS], s.config[C_ROWS] == kRowsKept, split_of(s), cxx_type(p[P_DTYPE]),
                       cxx_type(p[P_W_DTYPE]), cxx_type(p[P_CS_DTYPE]));
}

// Shared memory of the staged backward at `depth` ring slots per warp: the fp32 weights, then per warp and slot its
// slices (Hd/split channels) of x and dy and one mbarrier.
int64_t staged_smem(const Specialization& s, int depth) {
  const int64_t es = static_cast<int64_t>(dtype_size(static_cast<DType>(s.params[P_DTYPE])));
  return 4 * s.params[P_HD] +
         static_cast<int64_t>(s.config[C_WARPS]) * depth * (2 * s.params[P_HD] / split_of(s) * es + 8);
}
// Ring slots per warp of the staged backward: 3 where they fit shared memory, else 2 (0: the warps do not fit).
int rope_depth(const Specialization& s) {
  for (int depth : {3, 2})
    if (staged_smem(s, depth) <= 227 * 1024 - 512) return depth;
  return 0;
}

int smem_bytes(const Specialization& s) {
  if (s.kernel != kBwd) return 0;
  if (staged(s)) return static_cast<int>(staged_smem(s, rope_depth(s)));
  return static_cast<int>((s.config[C_WARPS] + 1) * s.params[P_HD] * 4);  // fp32 weights, a dw slice per warp
}

// The channels one access moves: the largest power of two dividing D/2, at most 16 bytes of x's dtype.
int64_t vec_elems(int64_t D, DType t) {
  const int64_t cap = 16 / static_cast<int64_t>(dtype_size(t));
  int64_t e = 1;
  while (e < cap && (D / 2) % (2 * e) == 0) e *= 2;
  return e;
}

// The staged backward with `split` warps per row needs 16-byte pair-chunks, split dividing the head count and dw
// for a lane's columns of its slice in ≤ 64 registers (RopeStaged::OK).
// Eight warps per row only where each still keeps all 32 lanes busy (≥ 32 pair-chunks in its slice).
bool staged_ok(const Specialization& s, int split = 1) {
  const int64_t Hd = s.params[P_HD], D = s.params[P_D];
  const DType t = static_cast<DType>(s.params[P_DTYPE]);
  if ((Hd / D) % split != 0) return false;
  const int64_t e = vec_elems(D, t), chunks = Hd / split / (2 * e), steps = (chunks + 31) / 32;
  if (split == 8 && chunks < 32) return false;
  return e * static_cast<int64_t>(dtype_size(t)) == 16 && steps * 2 * e <= 64;
}

// The staged backward at `warps` per CTA and `split` warps per row has room for a ring of ≥ 2 slots per warp.
bool staged_fits(const Specialization& base, int warps, int split) {
  Specialization s = base;
  s.config[C_WARPS] = warps;
  s.config[C_ROWS] = kRowsStaged;
  s.config[C_SPLIT] = split;
  return rope_depth(s) > 0;
}

// Rows kept in registers between the backward's passes: x and dy of a lane in ≤ 64 registers (the kernel's KEEP).
bool kept_ok(const Specialization& s) {
  const int64_t Hd = s.params[P_HD], D = s.params[P_D];
  const DType t = static_cast<DType>(s.params[P_DTYPE]);
  const int64_t e = vec_elems(D, t), steps = (Hd / (2 * e) + 31) / 32;
  return steps * 4 * e * static_cast<int64_t>(dtype_size(t)) <= 256;
}

// Backward warps per CTA: each warp owns an fp32 dw slice of Hd floats in shared memory; at most 64 KiB of them per
// CTA so that two or more CTAs share an SM (8 warps at Hd = 2048).
int bwd_warps(int64_t Hd) {
  int w = 8;
  while (w > 1 && w * Hd * 4 > 65536) w /= 2;
  return w;
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);

FamilyDef g_family{"rms_norm_rope",
                   {"fwd", "bwd", "dw_reduce"},
                   {"Hd", "D", "dtype", "w_dtype", "cs_dtype"},
                   {"warps", "rows", "split"},
                   render,
                   smem_bytes,
                   enumerate,
                   search_space,
                   tune_instance};

Specialization spec(Arch arch, uint32_t kernel, int64_t Hd, int64_t D, DType t, DType w, DType cs) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kernel;
  s.params[P_HD] = Hd;
  if (kernel == kDwReduce) return s;
  s.params[P_D] = D;
  s.params[P_DTYPE] = static_cast<int64_t>(t);
  s.params[P_W_DTYPE] = static_cast<int64_t>(w);
  s.params[P_CS_DTYPE] = static_cast<int64_t>(cs);
  // Measured on H100 at x [2, 4096, 2048], D 128 bf16 (µs; floors 22.5 / 33.6):
  //   fwd: 4 warps per CTA 22.5, 8 22.8, 16 24.2.
  //   bwd: rows kept in registers × 4 warps (3 CTAs, 12 warps per SM) 40.9, × 8 warps 42.5; re-read × 8 45.7,
  //        × 4 47.6; staged (grid-stride rows, per-warp cp.async double buffer, dw in registers) × 2/4/8 warps
  //        44.8/44.8/45.0. Staged rebuilt on row_pipe (balanced strips, 3-slot TMA rings, a row per warp):
  //        × 8 warps 44.8 (255 registers: 2 warps per scheduler, issue-latency bound), × 4 46.7, × 12 45.3; with
  //        2–4 warps per row (117–206 registers) 45.1–50.9. Kept rows with balanced rows per CTA (CtaRows): 8 warps,
  //        2 per row 40.2 (tuner 42.4; 12 warps × 1 per row 42.1, a tie), × 4 warps 43.3 (tuner).
  //   v5 (session 4): the staged kernel rewritten for fewer instructions per element (dy rotated once and kept in
  //        fp32 registers between the passes, dx = r·(w·gn − k·x), fp32 weights in shared memory, dw in registers, no
  //        division per row: ≈ 740 instead of ≈ 970 instructions per warp and row of 1024 channels). Bench (round 1):
  //        staged 16 warps × 4 per row (96 registers, one CTA per SM) 36.75; × 2 per row 39.26; 8 warps × 2 per row
  //        39.78, × 1 per row 50.98; 4 warps × 2 per row 39.66; kept rows × 8 warps 2 per row 40.78, 12 × 1 40.69.
  //   session 17 (kiln tune, deepseek-v3's Hd = 7168 at 8192 tokens, where 16 staged warps × 4 per row do not fit):
  //        the default then fell to kept rows (8 warps × 2 per row, registers spilled) at 310.7 µs against 133.4 for
  //        8 staged warps × 4 per row, the best of the 9 points; that is now the next choice.
  const int staged_warps = kernel == kFwd || !staged_ok(s, 4) ? 0
                           : staged_fits(s, 16, 4)           ? 16
                           : staged_fits(s, 8, 4)            ? 8
                                                             : 0;
  if (kernel == kFwd) {
    s.config[C_WARPS] = 4;
  } else if (staged_warps > 0) {
    s.config[C_WARPS] = staged_warps;
    s.config[C_ROWS] = kRowsStaged;
    s.config[C_SPLIT] = 4;
  } else if (kept_ok(s)) {
    s.config[C_WARPS] = 8;
    s.config[C_ROWS] = kRowsKept;
    s.config[C_SPLIT] = 2;
  } else {
    s.config[C_WARPS] = bwd_warps(Hd);
    s.config[C_SPLIT] = 1;
  }
  return s;
}

// fwd: 2–16 warps per CTA. bwd: 1–16 warps × where the second pass finds the rows (re-read, registers, staged),
// while the shared memory fits 227 KiB. dw_reduce: nothing to tune.
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  if (dw_reduce_space(base, kDwReduce, out)) return;
  Specialization s = base;
  s.config = {};
  // The heuristic default first (tests and tools read it there), then the other points.
  const Specialization def = spec(base.arch, base.kernel, base.params[P_HD], base.params[P_D],
                                  static_cast<DType>(base.params[P_DTYPE]), static_cast<DType>(base.params[P_W_DTYPE]),
                                  static_cast<DType>(base.params[P_CS_DTYPE]));
  out.push_back(def);
  auto add = [&](const Specialization& c) {
    if (c.config != def.config) out.push_back(c);
  };
  for (int w : {1, 2, 4, 8, 12, 16, 20, 24}) {
    if (base.kernel == kFwd && (w < 2 || w == 12 || w > 16)) {
      continue;
    } else if (base.kernel == kFwd) {
      s.config[C_WARPS] = w;
      add(s);
      continue;
    }
    for (int rows : {kRowsReread, kRowsKept, kRowsStaged}) {
      if (rows == kRowsKept && !kept_ok(base)) continue;
      // Measured at Hd = 2048 (bench/NOTES.md): one warp per CTA, and re-read rows with < 4 warps or 4 per row, are
      // far behind (≥ 47 µs against 41–43): not offered.
      if (w == 1 || (rows == kRowsReread && w < 4)) continue;
      // More than 16 warps per CTA, and 8 warps per row: the staged kernel only (≤ 96 registers; the others need more).
      if (w > 16 && rows != kRowsStaged) continue;
      for (int split : {1, 2, 4, 8}) {
        // Warps sharing a row: they divide the CTA's warps, ≤ 15 groups (named barriers); staged: whole heads each.
        if (split > 1 && (w % split != 0 || w / split > 15)) continue;
        if (split == 8 && rows != kRowsStaged) continue;
        // Measured (round 1): the staged kernel is fastest with 4 warps per row; CTAs of more than 16 warps are
        // offered with ≥ 4 per row only (CI compiles every point).
        if (w > 16 && split < 4) continue;
        if (rows == kRowsReread && split == 4) continue;
        if (rows == kRowsStaged && !staged_ok(base, split)) continue;
        s.config[C_WARPS] = w;
        s.config[C_ROWS] = rows;
        s.config[C_SPLIT] = split;
        if (rows == kRowsStaged ? rope_depth(s) == 0 : smem_bytes(s) > 227 * 1024) continue;
        add(s);
      }
    }
  }
}

// What `kiln prewarm` compiles: the model's hidden_size with its head_dim, bf16 activations, weight and cos/sin.
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  const int64_t Hd = m.hidden_size, D = m.head_dim;
  if (Hd <= 0 || D <= 0 || D % 2 != 0 || Hd % D != 0 || Hd > kMaxHidden) return;
  out.push_back(spec(arch, kFwd, Hd, D, DType::bf16, DType::bf16, DType::bf16));
  out.push_back(spec(arch, kBwd, Hd, D, DType::bf16, DType::bf16, DType::bf16));
  out.push_back(spec(arch, kDwReduce, Hd, D, DType::bf16, DType::bf16, DType::bf16));
}

BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  return rms_norm_rope_instance(rt, s.kernel != kFwd, 1, std::max<int64_t>(tokens, 1), s.params[P_HD],
                                s.params[P_D], static_cast<DType>(s.params[P_DTYPE]), -1, 0, false, 1);
}

// ---- validation --------------------------------------------------------------------------------------------------

// A [B, S, Hd] activation: rank 3, dense last dim, non-negative dims and strides that keep every row `vec`-element
// aligned.
void check_bsh(const Check& ck, const char* arg, const TensorRef& t, std::initializer_list<DType> dtypes, int64_t B,
               int64_t S, int64_t Hd, int64_t vec) {
  ck.dtype(arg, t, dtypes);
  if (t.ndim != 3) ck.shape_error(arg, fmt::format("expected a 3-D tensor [B, S, Hd], got shape {}", shape_str(t)));
  if (B >= 0 && (t.shape[0] != B || t.shape[1] != S || t.shape[2] != Hd))
    ck.shape_error(arg, fmt::format("expected shape [{}, {}, {}] (as x), got {}", B, S, Hd, shape_str(t)));
  ck.token_rows(arg, t, vec);
}

struct Geometry {
  int64_t B = 0, S = 0, Hd = 0, D = 0, M = 0, vec = 1;
  int64_t cos_ss = 0, sin_ss = 0;
  DType cs_dtype = DType::bf16;
};

// The checks both directions share: x, weight, cos/sin, num_heads, eps.
Geometry check_common(const Check& ck, const TensorRef& x, const TensorRef& weight, const TensorRef& cos,
                      const TensorRef& sin, float eps, int num_heads) {
  ck.finite_nonnegative("eps", eps);
  Geometry g;
  ck.dtype("x", x, {DType::bf16, DType::f16, DType::f32});
  if (x.ndim != 3) ck.shape_error("x", fmt::format("expected a 3-D tensor [B, S, Hd], got shape {}", shape_str(x)));
  g.B = x.shape[0];
  g.S = x.shape[1];
  g.Hd = x.shape[2];

  // cos/sin: [S, D] or [1, S, 1, D].
  ck.dtype("cos", cos, {DType::bf16, DType::f16, DType::f32});
  int64_t cs_rows = 0, cos_row_stride = 0;
  if (cos.ndim == 2) {
    cs_rows = cos.shape[0];
    g.D = cos.shape[1];
    cos_row_stride = cos.strides[0];
  } else if (cos.ndim == 4 && cos.shape[0] == 1 && cos.shape[2] == 1) {
    cs_rows = cos.shape[1];
    g.D = cos.shape[3];
    cos_row_stride = cos.strides[1];
  } else {
    ck.shape_error("cos", fmt::format("expected shape [S, D] or [1, S, 1, D], got {}", shape_str(cos)));
  }
  if (cs_rows != g.S)
    ck.shape_error("cos", fmt::format("expected {} rows (x's sequence length S), got shape {}", g.S, shape_str(cos)));
  if (g.D <= 0 || g.D % 2 != 0)
    ck.shape_error("cos", fmt::format("expected an even head dim D > 0 as the last dim, got shape {}", shape_str(cos)));
  if (cos.strides[cos.ndim - 1] != 1 && g.D > 1)
    ck.shape_error("cos", fmt::format("expected the last dim dense (inner stride 1), got stride {}",
                                      cos.strides[cos.ndim - 1]));
  ck.dtype("sin", sin, {cos.dtype});
  bool same = sin.ndim == cos.ndim;
  for (int k = 0; same && k < cos.ndim; ++k) same = sin.shape[k] == cos.shape[k];
  if (!same) ck.shape_error("sin", fmt::format("expected cos's shape {}, got {}", shape_str(cos), shape_str(sin)));
  if (sin.strides[sin.ndim - 1] != 1 && g.D > 1)
    ck.shape_error("sin", fmt::format("expected the last dim dense (inner stride 1), got stride {}",
                                      sin.strides[sin.ndim - 1]));
  const int64_t sin_row_stride = sin.ndim == 2 ? sin.strides[0] : sin.strides[1];
  g.cs_dtype = cos.dtype;

  // Heads.
  if (num_heads < 0) ck.invalid("num_heads", fmt::format("expected 0 (Hd/D) or a positive count, got {}", num_heads));
  if (num_heads == 0 && (g.Hd <= 0 || g.Hd % g.D != 0))
    ck.shape_error("x", fmt::format("expected a hidden dim Hd that is a positive multiple of the head dim D = {} "
                                    "(cos's last dim), got Hd = {}",
                                    g.D, g.Hd));
  if (num_heads > 0 && static_cast<int64_t>(num_heads) * g.D != g.Hd)
    ck.shape_error("num_heads", fmt::format("expected num_heads·D == Hd, i.e. num_heads = {} for Hd = {}, D = {}; got "
                                            "{}",
                                            g.Hd % g.D == 0 ? fmt::format("{}", g.Hd / g.D) : std::string("none"),
                                            g.Hd, g.D, num_heads));
  if (g.Hd > kMaxHidden)
    ck.shape_error("x", fmt::format("expected a hidden dim Hd ≤ {}, got {}", kMaxHidden, g.Hd));

  g.vec = vec_elems(g.D, x.dtype);
  check_bsh(ck, "x", x, {DType::bf16, DType::f16, DType::f32}, -1, 0, 0, g.vec);
  ck.fits_int32("x", g.B, "B");
  ck.fits_int32("x", g.S, "S");
  g.M = g.B * g.S;
  ck.fits_int32("x", g.M, "B·S (rows)");

  const int64_t cs_align = std::min<int64_t>(16, g.vec * static_cast<int64_t>(dtype_size(cos.dtype)));
  const int64_t cs_vec = cs_align / static_cast<int64_t>(dtype_size(cos.dtype));
  auto check_table = [&](const char* arg, const TensorRef& t, int64_t stride) {
    if (g.S > 1 && (stride < 0 || stride % cs_vec != 0))
      ck.invalid(arg, fmt::format("expected a non-negative row stride that is a multiple of {} elements, got {}",
                                  cs_vec, stride));
    if (g.S > 0) ck.pointer(arg, t, static_cast<int>(cs_align));
  };
  check_table("cos", cos, cos_row_stride);
  check_table("sin", sin, sin_row_stride);
  g.cos_ss = cos_row_stride;
  g.sin_ss = sin_row_stride;

  ck.tensor("weight", weight, {DType::bf16, DType::f16, DType::f32}, {g.Hd},
            static_cast<int>(std::min<int64_t>(16, g.vec * static_cast<int64_t>(dtype_size(weight.dtype)))));
  return g;
}

}  // namespace

KILN_REGISTER_FAMILY(rms_norm_rope, g_family)

namespace detail {
// rms_norm_rope_fwd with the warps per CTA forced (≤ 0: the tuned/heuristic config).
void rms_norm_rope_fwd_config(Runtime& rt, const TensorRef& x, const TensorRef& weight, const TensorRef& cos,
                              const TensorRef& sin, const TensorRef& y, float eps, int num_heads, Stream stream,
                              int warps);
}  // namespace detail

void rms_norm_rope_fwd(Runtime& rt, const TensorRef& x, const TensorRef& weight, const TensorRef& cos,
                       const TensorRef& sin, const TensorRef& y, float eps, int num_heads, Stream stream) {
  detail::rms_norm_rope_fwd_config(rt, x, weight, cos, sin, y, eps, num_heads, stream, 0);
}

void detail::rms_norm_rope_fwd_config(Runtime& rt, const TensorRef& x, const TensorRef& weight, const TensorRef& cos,
                                      const TensorRef& sin, const TensorRef& y, float eps, int num_heads,
                                      Stream stream, int warps) {
  const Check ck{"rms_norm_rope_fwd"};
  const Geometry g = check_common(ck, x, weight, cos, sin, eps, num_heads);
  check_bsh(ck, "y", y, {x.dtype}, g.B, g.S, g.Hd, g.vec);
  ck.disjoint_rows("y", y);
  if (g.M == 0) return;

  auto& impl = rt.impl();
  Specialization s = impl.tuned(spec(impl.target_arch(), kFwd, g.Hd, g.D, x.dtype, weight.dtype, g.cs_dtype), g.M);
  if (warps > 0) {
    s.config[C_WARPS] = warps;
    if (!in_search_space(s)) ck.invalid("config", fmt::format("{} is not in the search space", s.describe()));
  }
  RmsNormRopeFwdArgs a{x.data,  stride_of(x, 0), stride_of(x, 1), weight.data,     cos.data,
                       g.cos_ss, sin.data,        g.sin_ss,        y.data,          stride_of(y, 0),
                       stride_of(y, 1), static_cast<int>(g.M), static_cast<int>(g.S), eps};
  LaunchDims d;
  const unsigned cta_warps = static_cast<unsigned>(s.config[C_WARPS]);
  d.grid[0] = static_cast<unsigned>((g.M + cta_warps - 1) / cta_warps);
  d.block[0] = cta_warps * 32;
  impl.launch(s, d, stream, a);
}

namespace {
// Persistent grid of the backward: every CTA that fits on the GPU at once, never more than there are row groups.
int64_t bwd_grid(Runtime& rt, const Specialization& s, int64_t M) {
  auto& impl = rt.impl();
  const int warps = s.config[C_WARPS];
  const int rows_per_cta = warps / split_of(s);
  return impl.persistent_grid(impl.kernel(s), warps * 32, smem_bytes(s), (M + rows_per_cta - 1) / rows_per_cta);
}
}  // namespace

// The workspace bound uses the thread limit (64 warps per SM) instead of the occupancy, which depends on the weight
// and table dtypes: it covers every specialization of the shape.
int64_t rms_norm_rope_bwd_workspace_elems(Runtime& rt, int64_t rows, int64_t hidden, int64_t head_dim, DType dtype) {
  if (rows <= 0 || hidden <= 0) return 0;
  auto& impl = rt.impl();
  const Specialization s =
      impl.tuned(spec(impl.target_arch(), kBwd, hidden, head_dim, dtype, dtype, dtype), rows);
  const int warps = s.config[C_WARPS], rows_per_cta = std::max(1, warps / split_of(s));
  const int64_t full = static_cast<int64_t>(impl.device().sm_count) * std::max(1, 64 / warps);
  return std::max<int64_t>(1, std::min<int64_t>(full, (rows + rows_per_cta - 1) / rows_per_cta)) * hidden;
}

namespace detail {
// rms_norm_rope_bwd with the backward's config forced (rows mode and warps; the bench's measurement hook until the
// tuner can pick configs per shape). rows < 0: the tuned/heuristic config.
void rms_norm_rope_bwd_config(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& weight,
                              const TensorRef& cos, const TensorRef& sin, const TensorRef& dx, const TensorRef& dweight,
                              float eps, int num_heads, const TensorRef& workspace, Stream stream, int rows,
                              int warps, int split);
}  // namespace detail

void rms_norm_rope_bwd(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& weight,
                       const TensorRef& cos, const TensorRef& sin, const TensorRef& dx, const TensorRef& dweight,
                       float eps, int num_heads, const TensorRef& workspace, Stream stream) {
  detail::rms_norm_rope_bwd_config(rt, dy, x, weight, cos, sin, dx, dweight, eps, num_heads, workspace, stream, -1, 0,
                                   1);
}

void detail::rms_norm_rope_bwd_config(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& weight,
                                      const TensorRef& cos, const TensorRef& sin, const TensorRef& dx,
                                      const TensorRef& dweight, float eps, int num_heads, const TensorRef& workspace,
                                      Stream stream, int rows, int warps, int split) {
  const Check ck{"rms_norm_rope_bwd"};
  const Geometry g = check_common(ck, x, weight, cos, sin, eps, num_heads);
  check_bsh(ck, "dy", dy, {x.dtype}, g.B, g.S, g.Hd, g.vec);
  check_bsh(ck, "dx", dx, {x.dtype}, g.B, g.S, g.Hd, g.vec);
  ck.disjoint_rows("dx", dx);
  ck.tensor("dweight", dweight, {DType::f32}, {g.Hd}, 4);
  if (workspace.defined()) ck.tensor("workspace", workspace, {DType::f32}, {-1}, 16);

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  const Specialization reduce = spec(arch, kDwReduce, g.Hd, g.D, x.dtype, weight.dtype, g.cs_dtype);
  int64_t G = 0;
  DwPartials partial(impl, stream, workspace);
  if (g.M > 0) {
    Specialization s = impl.tuned(spec(arch, kBwd, g.Hd, g.D, x.dtype, weight.dtype, g.cs_dtype), g.M);
    if (rows >= 0) {
      s.config[C_ROWS] = rows;
      s.config[C_WARPS] = warps;
      s.config[C_SPLIT] = split;
      if (!in_search_space(s))
        ck.invalid("config", fmt::format("{} is not in the search space", s.describe()));
    }
    G = bwd_grid(rt, s, g.M);
    partial.reserve(ck, "rms_norm_rope_bwd_workspace_elems", G * g.Hd);
    RmsNormRopeBwdArgs a{dy.data,         stride_of(dy, 0), stride_of(dy, 1), x.data,
                         stride_of(x, 0), stride_of(x, 1),  weight.data,      cos.data,
                         g.cos_ss,        sin.data,         g.sin_ss,         dx.data,
                         stride_of(dx, 0), stride_of(dx, 1), partial.data(),  static_cast<int>(g.M),
                         static_cast<int>(g.S), eps};
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(G);
    d.block[0] = static_cast<unsigned>(s.config[C_WARPS] * 32);
    d.smem = static_cast<unsigned>(smem_bytes(s));
    impl.launch(s, d, stream, a);
  }
  // dweight = Σ over CTA slices (zeros when there are no rows: the sum over G = 0 slices).
  partial.reduce(reduce, G, g.Hd, dweight.data);
}

}  // namespace kiln
