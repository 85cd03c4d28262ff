// Host recipe: softmax cross-entropy (templates/kiln/softmax_cross_entropy.cuh). Spec: linghe-kernels.md §8.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "kiln/ops/softmax_cross_entropy.hpp"
#include "kiln/softmax_cross_entropy_args.h"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/softmax_cross_entropy.cpp (shares the bench cases' preparation).
BenchInstance softmax_cross_entropy_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);
}  // namespace detail

namespace {
using namespace detail;

enum : uint32_t { kFwd = 0, kFused = 1, kBwd = 2, kMerge = 3, kBatch = 4 };
enum { P_V, P_DTYPE, P_LABEL, P_SMOOTH, P_GRAD, P_MODE };
// split: CTAs per row (the cluster size of fwd/fused, independent parts in bwd); unroll: 16-byte loads in flight per
// thread (fwd, bwd); store: how the fused kernel writes the gradient (0: 16-byte stores from registers, 1: TMA bulk
// copies from shared memory).
enum { C_SPLIT, C_THREADS, C_UNROLL, C_STORE };

constexpr int kSmemBudget = 227 * 1024 - 1024;  // opt-in shared memory per CTA on sm_90, less the static arrays
constexpr int64_t kMaxV = 1 << 26;               // keeps every in-row index in int32

const char* label_name(int64_t d) { return static_cast<DType>(d) == DType::i32 ? "int" : "long long"; }

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/softmax_cross_entropy.cuh\"\n";
  const auto& p = s.params;
  const char* smooth = p[P_SMOOTH] ? "true" : "false";
  switch (s.kernel) {
    case kFwd:
    case kFused:
      name = fmt::format("kiln::softmax_cross_entropy_{}_kernel<{}, {}, {}, {}, {}, {}, {}>",
                         s.kernel == kFwd ? "fwd" : "fused", p[P_V], cxx_type(p[P_DTYPE]), label_name(p[P_LABEL]),
                         s.config[C_SPLIT], s.config[C_THREADS], smooth,
                         s.kernel == kFwd ? s.config[C_UNROLL] : s.config[C_STORE]);
      break;
    case kBwd:
      name = fmt::format("kiln::softmax_cross_entropy_bwd_kernel<{}, {}, {}, {}, {}, {}, {}, {}>", p[P_V],
                         cxx_type(p[P_DTYPE]), label_name(p[P_LABEL]), cxx_type(p[P_GRAD]), s.config[C_SPLIT],
                         s.config[C_THREADS], smooth, s.config[C_UNROLL]);
      break;
    case kMerge:
      name = fmt::format("kiln::softmax_cross_entropy_merge_kernel<{}, {}>", label_name(p[P_LABEL]), smooth);
      break;
    default:
      name = fmt::format("kiln::softmax_cross_entropy_batch_kernel<{}, {}>", label_name(p[P_LABEL]), p[P_MODE]);
  }
}

int elem_bytes(const Specialization& s) { return static_cast<int>(dtype_size(static_cast<DType>(s.params[P_DTYPE]))); }

int smem_bytes(const Specialization& s) {
  if (s.kernel != kFused) return 0;
  return ce_fused_smem_bytes(static_cast<int>(s.params[P_V]), elem_bytes(s), s.config[C_SPLIT], s.config[C_THREADS]);
}

int64_t chunks_of(int64_t V, DType t) { return V / static_cast<int64_t>(16 / dtype_size(t)); }
int max_cluster(Arch arch) { return arch.sm >= 90 ? 16 : 1; }

// Forward: the fewest CTAs per row that keep a CTA's slice ≤ 12288 chunks (192 KiB), at most a portable cluster of 8;
// 512 threads where the slice is long enough to give each ≥ 4 chunks. Measured on H100 at M = 8192, V = 157184 bf16
// (CTAs per row × threads × loads in flight): 2×512×4 819.9 µs, 4×256×8 822.0, 8×256×4 824.5, 1×1024×4 828.0,
// 4×512×4 839.7, 4×512×8 994.7.
void fwd_default(Arch arch, int64_t V, DType t, int& cl, int& threads) {
  const int64_t chunks = chunks_of(V, t);
  cl = 1;
  while (cl < std::min(8, max_cluster(arch)) && (chunks + cl - 1) / cl > 12288) cl *= 2;
  const int64_t per = (chunks + cl - 1) / cl;
  threads = per >= 2048 ? 512 : per >= 512 ? 256 : 128;
}

// Fused: the fewest CTAs per row whose slice fits 48 KiB of shared memory (four or more CTAs per SM keep loads and
// stores of different rows overlapping), else the fewest that fit at all; 0 when no cluster size ≤ 16 fits (or
// before sm_90): the op then runs the forward and the backward. A smaller cluster wins where its resident CTAs hold
// ≥ 10 % more of a row's slices in an SM's shared memory (228 KiB, 1 KiB a CTA for the driver; ≤ 2048 threads):
// session 18's tune at M = 8192, bf16: V = 151936 (qwen3) 4 CTAs a row × 3 an SM (228 KB of slices) 1737 µs against
// 8 × 5 (190 KB) 1825; V = 157184 (Ling) 4 × 2 (157 KB) 2018 against the 48 KiB rule's 8 × 5 (196 KB) 1845.
int fused_resident_bytes(int64_t V, int eb, int c, int threads) {
  const int smem = ce_fused_smem_bytes(static_cast<int>(V), eb, c, threads);
  const int ctas = std::min((228 * 1024) / (smem + 1024), 2048 / threads);
  return ctas * ce_slice_chunks(static_cast<int>(V), eb, c) * 16;
}
void fused_default(Arch arch, int64_t V, DType t, int& cl, int& threads) {
  cl = 0;
  threads = 256;
  if (arch.sm < 90 || V > kMaxV) return;
  const int eb = static_cast<int>(dtype_size(t));
  for (int budget : {48 * 1024, kSmemBudget}) {
    for (int c = 1; c <= 16 && cl == 0; c *= 2)
      if (ce_fused_smem_bytes(static_cast<int>(V), eb, c, 256) <= budget) cl = c;
    if (cl) break;
  }
  if (cl > 1) {
    const int64_t here = fused_resident_bytes(V, eb, cl, 256);
    int best = cl;
    int64_t best_bytes = here;
    for (int c = cl / 2; c >= 1; c /= 2)
      if (ce_fused_smem_bytes(static_cast<int>(V), eb, c, 256) <= kSmemBudget) {
        const int64_t b = fused_resident_bytes(V, eb, c, 256);
        if (10 * b >= 11 * here && b > best_bytes) {
          best = c;
          best_bytes = b;
        }
      }
    cl = best;
  }
  // 128 threads for short slices; 512 for slices of ≥ 4096 chunks (≥ 64 KB: at most 3 CTAs an SM, so 1536 threads;
  // V = 151936 bf16 in clusters of 4: 1679 µs against 1739 with 256 threads, session 18's tune).
  if (cl && ce_slice_chunks(static_cast<int>(V), eb, cl) < 1024) threads = 128;
  if (cl && ce_slice_chunks(static_cast<int>(V), eb, cl) >= 4096) threads = 512;
}

// Backward: parts of ≤ 4096 chunks (64 KiB) per CTA, 8 loads in flight per thread. Measured on H100 at M = 8192,
// V = 157184 bf16, in place (parts × threads × loads in flight): 5×512×8 about 1763 µs (the tuner: 7.9 % ahead of
// 5×512×4), 1×1024×4 1780.8, 2×512×4 1788.7, 5×256×8 1896.4, 5×512×4 1902.8, 10×256×4 1977.6, 5×256×4 2021.3.
void bwd_default(int64_t V, DType t, int& parts, int& threads) {
  const int64_t chunks = chunks_of(V, t);
  parts = static_cast<int>(std::max<int64_t>(1, (chunks + 4095) / 4096));
  const int64_t per = (chunks + parts - 1) / parts;
  threads = per >= 2048 ? 512 : per >= 512 ? 256 : 128;
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);

FamilyDef g_family{"softmax_cross_entropy",
                   {"fwd", "fused", "bwd", "merge", "batch"},
                   {"V", "dtype", "label_dtype", "smoothing", "grad_dtype", "mode"},
                   {"split", "threads", "unroll", "store"},
                   render,
                   smem_bytes,
                   enumerate,
                   search_space,
                   softmax_cross_entropy_tune_instance};

Specialization make(Arch arch, uint32_t kernel, int64_t V, DType t, DType label, bool smooth) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kernel;
  if (kernel == kFwd || kernel == kFused || kernel == kBwd) {
    s.params[P_V] = V;
    s.params[P_DTYPE] = static_cast<int64_t>(t);
  }
  s.params[P_LABEL] = static_cast<int64_t>(label);
  if (kernel != kBatch) s.params[P_SMOOTH] = smooth;
  return s;
}

// A launch shape forced by the bench's sweep cases (softmax_cross_entropy_force_config), per kernel fwd/fused/bwd.
std::array<std::array<std::atomic<int>, 3>, 3> g_forced{};

// A launch shape forced by the bench ({split, threads, unroll}; for the fused kernel the third number is the store
// mode, 0 or 1) replaces the heuristic where valid; none forced (split 0): the heuristic stays.
void forced_override(Specialization& s) {
  const auto& f = g_forced[s.kernel];
  const int split = f[0].load(std::memory_order_relaxed);
  if (split <= 0) return;
  const int threads = f[1].load(std::memory_order_relaxed);
  int unroll = s.kernel == kFused ? s.config[C_STORE] : s.config[C_UNROLL];
  if (f[2].load(std::memory_order_relaxed) > 0) unroll = f[2].load(std::memory_order_relaxed);
  if (s.kernel != kFused && unroll != 2 && unroll != 4 && unroll != 8) return;
  if (s.kernel == kFused && unroll != 0 && unroll != 1) return;
  if (split < 1 || split > 16 || (threads != 128 && threads != 256 && threads != 512 && threads != 1024)) return;
  if (s.kernel != kBwd && split > max_cluster(s.arch)) return;
  Specialization o = s;
  o.config[C_SPLIT] = split;
  o.config[C_THREADS] = threads;
  o.config[s.kernel == kFused ? C_STORE : C_UNROLL] = unroll;
  if (s.kernel == kFused && (s.config[C_SPLIT] == 0 || smem_bytes(o) > kSmemBudget)) return;
  s = o;
}

Specialization fwd_spec(Arch arch, int64_t V, DType t, DType label, bool smooth) {
  Specialization s = make(arch, kFwd, V, t, label, smooth);
  fwd_default(arch, V, t, s.config[C_SPLIT], s.config[C_THREADS]);
  s.config[C_UNROLL] = 4;
  forced_override(s);
  return s;
}
Specialization fused_spec(Arch arch, int64_t V, DType t, DType label, bool smooth) {
  Specialization s = make(arch, kFused, V, t, label, smooth);
  fused_default(arch, V, t, s.config[C_SPLIT], s.config[C_THREADS]);
  forced_override(s);
  return s;
}
Specialization bwd_spec(Arch arch, int64_t V, DType t, DType label, DType grad, bool smooth) {
  Specialization s = make(arch, kBwd, V, t, label, smooth);
  s.params[P_GRAD] = static_cast<int64_t>(grad);
  bwd_default(V, t, s.config[C_SPLIT], s.config[C_THREADS]);
  s.config[C_UNROLL] = 8;
  forced_override(s);
  return s;
}
Specialization merge_spec(Arch arch, DType label, bool smooth) { return make(arch, kMerge, 0, DType::f32, label, smooth); }
Specialization batch_spec(Arch arch, DType label, int mode) {
  Specialization s = make(arch, kBatch, 0, DType::f32, label, false);
  s.params[P_MODE] = mode;
  return s;
}

void add_unique(std::vector<Specialization>& out, const Specialization& s) {
  if (std::none_of(out.begin(), out.end(), [&](const Specialization& o) { return o.config == s.config; }))
    out.push_back(s);
}

// A handful of points around the defaults (CI compiles every point): cluster sizes and block sizes of the forward and
// the fused pass (pruned to fit shared memory, no clusters before sm_90), parts per row of the backward.
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  Specialization s = base;
  const int64_t V = base.params[P_V];
  const DType t = static_cast<DType>(base.params[P_DTYPE]);
  switch (base.kernel) {
    case kFwd: {
      s.config = {};
      fwd_default(base.arch, V, t, s.config[C_SPLIT], s.config[C_THREADS]);
      s.config[C_UNROLL] = 4;
      add_unique(out, s);
      const Specialization d = s;
      s.config[C_UNROLL] = 8;
      add_unique(out, s);
      for (int cl : {1, 2, 4, 8})
        for (int th : {256, 512}) {
          if (cl > max_cluster(base.arch)) continue;
          s = d;
          s.config[C_SPLIT] = cl;
          s.config[C_THREADS] = th;
          add_unique(out, s);
        }
      break;
    }
    case kFused: {
      s.config = {};
      fused_default(base.arch, V, t, s.config[C_SPLIT], s.config[C_THREADS]);
      if (s.config[C_SPLIT] == 0) {  // not viable: the op never launches it; the default stands alone
        out.push_back(s);
        break;
      }
      add_unique(out, s);
      Specialization b = s;  // the gradient stored by bulk copies
      b.config[C_STORE] = 1;
      add_unique(out, b);
      for (int cl : {4, 8, 16})
        for (int th : {128, 256, 512}) {
          if (cl > max_cluster(base.arch) || (th != 256 && cl != s.config[C_SPLIT])) continue;
          Specialization c = s;
          c.config[C_SPLIT] = cl;
          c.config[C_THREADS] = th;
          if (smem_bytes(c) <= kSmemBudget) add_unique(out, c);
        }
      break;
    }
    case kBwd: {
      s.config = {};
      bwd_default(V, t, s.config[C_SPLIT], s.config[C_THREADS]);
      s.config[C_UNROLL] = 8;
      add_unique(out, s);
      const int d = s.config[C_SPLIT];
      s.config[C_UNROLL] = 4;
      add_unique(out, s);
      for (int parts : {std::max(1, d / 2), d, d * 2})
        for (int th : {256, 512, 1024}) {
          if (parts != d && th != 512) continue;
          s.config[C_SPLIT] = parts;
          s.config[C_THREADS] = th;
          add_unique(out, s);
        }
      break;
    }
    default:
      s.config = {};
      out.push_back(s);
  }
}

// What a model's training step needs: bf16 logits over its vocabulary, int64 labels, no smoothing (the default).
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  if (m.vocab_size <= 0 || m.vocab_size > kMaxV) return;
  const int64_t V = m.vocab_size;
  out.push_back(fwd_spec(arch, V, DType::bf16, DType::i64, false));
  const Specialization f = fused_spec(arch, V, DType::bf16, DType::i64, false);
  if (f.config[C_SPLIT] > 0) out.push_back(f);
  out.push_back(bwd_spec(arch, V, DType::bf16, DType::i64, DType::f32, false));
  out.push_back(merge_spec(arch, DType::i64, false));
  out.push_back(batch_spec(arch, DType::i64, 0));
  out.push_back(batch_spec(arch, DType::i64, 1));
}

// ---- validation ----------------------------------------------------------------------------------------------------

struct Rows {
  void* data = nullptr;
  DType dtype = DType::bf16;
  int64_t M = 0, V = 0, stride = 0;
};

// logits-like: [M, V] or [B, S, V] (dims 0 and 1 collapsible), last dim contiguous, rows not overlapping.
Rows check_rows(const Check& ck, const char* arg, const TensorRef& t) {
  ck.dtype(arg, t, {DType::bf16, DType::f16, DType::f32});
  if (t.ndim != 2 && t.ndim != 3)
    ck.shape_error(arg, fmt::format("expected [M, V] or [B, S, V], got shape {}", shape_str(t)));
  for (int k = 0; k < t.ndim; ++k)
    if (t.shape[k] < 0) ck.shape_error(arg, fmt::format("expected non-negative dims, got {}", shape_str(t)));
  Rows r;
  r.data = t.data;
  r.dtype = t.dtype;
  r.V = t.shape[t.ndim - 1];
  if (r.V <= 0 || r.V > kMaxV)
    ck.shape_error(arg, fmt::format("expected a vocabulary dim V in [1, {}], got V = {}", kMaxV, r.V));
  if (t.strides[t.ndim - 1] != 1 && r.V > 1)
    ck.shape_error(arg, fmt::format("expected the last dim contiguous (stride 1), got stride {}", t.strides[t.ndim - 1]));
  if (t.ndim == 3) {
    if (t.shape[0] > 1 && t.shape[1] > 0 && t.strides[0] != t.shape[1] * t.strides[1])
      ck.shape_error(arg, fmt::format("expected dims 0 and 1 of {} to be collapsible (stride[0] = S·stride[1] = {}), "
                                      "got stride[0] = {}",
                                      shape_str(t), t.shape[1] * t.strides[1], t.strides[0]));
    r.M = t.shape[0] * t.shape[1];
    r.stride = t.strides[1];
  } else {
    r.M = t.shape[0];
    r.stride = t.strides[0];
  }
  if (r.M <= 1) r.stride = r.V;
  if (r.stride < r.V)
    ck.shape_error(arg, fmt::format("expected a row stride ≥ V = {} elements (rows must not overlap), got {}", r.V,
                                    r.stride));
  ck.fits_int32(arg, r.M, "M (rows)");
  if (r.M > 0) ck.pointer(arg, t, static_cast<int>(dtype_size(t.dtype)));
  return r;
}

// A per-row tensor: M elements (any shape, e.g. [M] or [B, S]), contiguous, of one of `dtypes`.
void check_per_row(const Check& ck, const char* arg, const TensorRef& t, std::initializer_list<DType> dtypes,
                   int64_t M, const char* what = "the logits' rows") {
  ck.dtype(arg, t, dtypes);
  if (t.ndim < 1 || t.numel() != M)
    ck.shape_error(arg, fmt::format("expected {} elements ({}), got shape {}", M, what, shape_str(t)));
  ck.contiguous(arg, t);
  if (M > 0) ck.pointer(arg, t, static_cast<int>(dtype_size(t.dtype)));
}

struct Vocab {
  int64_t start = 0, total = 0;
};

Vocab check_options(const Check& ck, const CrossEntropyOptions& o, int64_t V, bool sharded) {
  if (!std::isfinite(o.label_smoothing) || o.label_smoothing < 0.f || o.label_smoothing >= 1.f)
    ck.invalid("label_smoothing", fmt::format("expected a value in [0, 1), got {}", o.label_smoothing));
  if (!std::isfinite(o.z_loss) || o.z_loss < 0.f)
    ck.invalid("z_loss", fmt::format("expected a finite value ≥ 0, got {}", o.z_loss));
  Vocab v{o.vocab_start, o.vocab_total == 0 ? V : o.vocab_total};
  if (!sharded && o.vocab_start != 0)
    ck.invalid("vocab_start", fmt::format("expected 0 (this op needs the whole vocabulary; use the partial forward "
                                          "and merge for a shard), got {}",
                                          o.vocab_start));
  if (!sharded && o.vocab_total != 0 && o.vocab_total != V)
    ck.invalid("vocab_total", fmt::format("expected 0 or V = {} (the whole vocabulary), got {}", V, o.vocab_total));
  if (v.start < 0) ck.invalid("vocab_start", fmt::format("expected a value ≥ 0, got {}", v.start));
  if (v.total < v.start + V)
    ck.invalid("vocab_total", fmt::format("expected ≥ vocab_start + V = {} (the shard must lie inside the vocabulary), "
                                          "got {}",
                                          v.start + V, v.total));
  if (o.bad_label_row.defined()) ck.tensor("bad_label_row", o.bad_label_row, {DType::i32}, {1}, 4);
  return v;
}

// dlogits: the logits' dtype and shape, last dim contiguous; the same tensor (in place) or disjoint with rows at the
// same 16-byte phase as the logits rows (the kernels split rows at the logits' 16-byte boundaries).
Rows check_dlogits(const Check& ck, const TensorRef& d, const TensorRef& logits, const Rows& x) {
  ck.dtype("dlogits", d, {x.dtype});
  if (d.ndim != logits.ndim || !std::equal(d.shape.begin(), d.shape.begin() + d.ndim, logits.shape.begin()))
    ck.shape_error("dlogits", fmt::format("expected the logits' shape {}, got {}", shape_str(logits), shape_str(d)));
  const Rows g = check_rows(ck, "dlogits", d);
  if (x.M == 0) return g;
  const int64_t eb = static_cast<int64_t>(dtype_size(x.dtype));
  const auto a0 = reinterpret_cast<uintptr_t>(x.data), b0 = reinterpret_cast<uintptr_t>(g.data);
  if (a0 == b0) {
    if (g.stride != x.stride)
      ck.invalid("dlogits", fmt::format("in place (dlogits = logits) needs the logits' row stride {}, got {}", x.stride,
                                        g.stride));
    return g;
  }
  const uintptr_t a1 = a0 + static_cast<uintptr_t>(((x.M - 1) * x.stride + x.V) * eb);
  const uintptr_t b1 = b0 + static_cast<uintptr_t>(((g.M - 1) * g.stride + g.V) * eb);
  if (a0 < b1 && b0 < a1)
    ck.invalid("dlogits", "expected either the logits tensor itself (in place) or memory disjoint from it, got a "
                          "partial overlap");
  if ((b0 - a0) % 16 != 0 || ((g.stride - x.stride) * eb) % 16 != 0)
    ck.invalid("dlogits", fmt::format("expected rows at the same offset from a 16-byte boundary as the logits rows "
                                      "(pointer difference and row-stride difference multiples of 16 bytes), got "
                                      "pointers {:#x} / {:#x}, strides {} / {}",
                                      a0, b0, x.stride, g.stride));
  return g;
}

void check_stats(const Check& ck, const TensorRef& row_max, const TensorRef& sum_exp, int64_t M, bool required) {
  if (required || row_max.defined() || sum_exp.defined()) {
    if (!row_max.defined()) ck.invalid("row_max", "expected a tensor (row_max and sum_exp are given together)");
    if (!sum_exp.defined()) ck.invalid("sum_exp", "expected a tensor (row_max and sum_exp are given together)");
    check_per_row(ck, "row_max", row_max, {DType::f32}, M);
    check_per_row(ck, "sum_exp", sum_exp, {DType::f32}, M);
  }
}

int64_t check_grid(const Check& ck, int64_t M, int split) {
  if (M * split > INT32_MAX)
    ck.invalid("logits", fmt::format("M = {} rows × {} CTAs per row exceeds the grid limit", M, split));
  return M * split;
}

float* f32(const TensorRef& t) { return static_cast<float*>(t.data); }

// Scratch for one call (Runtime::Impl::scratch): the bad-label flag kiln owns when the caller gives none, the mean
// reduction's per-row gradient, and the fallback's statistics. The label check happens in finish().
class CallScratch {
 public:
  // kernel_inits_flag: the first kernel of the call stores INT32_MAX itself (the mean reduction's count kernel).
  CallScratch(Runtime::Impl& impl, const Check& ck, Stream stream, const CrossEntropyOptions& o, int64_t stat_rows,
              bool need_scale = false, bool kernel_inits_flag = false)
      : impl_(impl), ck_(ck), stream_(stream) {
    own_flag_ = !o.bad_label_row.defined();
    if (own_flag_ || need_scale || stat_rows > 0)
      scratch_ = impl.scratch(&kOwner, 16 + static_cast<size_t>(stat_rows) * 8, stream);
    base_ = scratch_.ptr;
    flag_ = own_flag_ ? reinterpret_cast<int*>(base_) : static_cast<int*>(o.bad_label_row.data);
    if (!kernel_inits_flag)
      check(driver().cuMemsetD32Async(reinterpret_cast<CUdeviceptr>(flag_), 0x7fffffffu, 1,
                                      reinterpret_cast<CUstream>(stream)),
            "cuMemsetD32Async (label flag)");
    stat_rows_ = stat_rows;
  }
  ~CallScratch() {
    try {
      impl_.release_scratch(scratch_, stream_);
    } catch (...) {
    }
  }
  int* flag() const { return flag_; }
  float* scale() const { return base_ ? reinterpret_cast<float*>(base_ + 4) : nullptr; }
  float* row_max() const { return reinterpret_cast<float*>(base_ + 16); }
  float* sum_exp() const { return row_max() + stat_rows_; }

  // Frees the scratch; with kiln's own flag, waits for the stream and throws InvalidArgument for a bad label.
  void finish(const TensorRef& labels, int64_t M, int64_t vocab_total, int64_t ignore_index) {
    const CUdeviceptr base = base_;
    int bad = 0x7fffffff;
    if (own_flag_) {
      const Driver& d = driver();
      const auto s = reinterpret_cast<CUstream>(stream_);
      check(d.cuMemcpyDtoHAsync(&bad, base, 4, s), "cuMemcpyDtoHAsync (label flag)");
      check(d.cuStreamSynchronize(s), "cuStreamSynchronize (label check)");
    }
    base_ = 0;
    const ScratchBuffer scratch = scratch_;
    scratch_ = {};
    impl_.release_scratch(scratch, stream_);
    if (bad >= M) return;
    int64_t value = 0;
    const size_t eb = dtype_size(labels.dtype);
    const auto src = reinterpret_cast<CUdeviceptr>(static_cast<const char*>(labels.data) + static_cast<size_t>(bad) * eb);
    if (labels.dtype == DType::i32) {
      int32_t v = 0;
      check(driver().cuMemcpyDtoHAsync(&v, src, 4, reinterpret_cast<CUstream>(stream_)), "cuMemcpyDtoHAsync (label)");
      value = v;
    } else {
      check(driver().cuMemcpyDtoHAsync(&value, src, 8, reinterpret_cast<CUstream>(stream_)), "cuMemcpyDtoHAsync (label)");
    }
    check(driver().cuStreamSynchronize(reinterpret_cast<CUstream>(stream_)), "cuStreamSynchronize (label check)");
    ck_.invalid("labels", fmt::format("expected class ids in [0, {}) or ignore_index ({}), got labels[{}] = {} (the "
                                      "first row out of range)",
                                      vocab_total, ignore_index, bad, value));
  }

 private:
  Runtime::Impl& impl_;
  const Check& ck_;
  Stream stream_;
  static constexpr char kOwner = 0;  // (the runtime's scratch: the flag is set by every call, the rest written first)
  ScratchBuffer scratch_;
  CUdeviceptr base_ = 0;
  int* flag_ = nullptr;
  bool own_flag_ = true;
  int64_t stat_rows_ = 0;
};

LaunchDims row_dims(int64_t M, int split, int threads, int smem, bool cluster) {
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>(M * split);
  d.block[0] = static_cast<unsigned>(threads);
  d.smem = static_cast<unsigned>(smem);
  if (cluster && split > 1) d.cluster[0] = static_cast<unsigned>(split);
  return d;
}

// The forward kernel in either mode (partial != null: vocab-parallel partials).
void launch_fwd(Runtime::Impl& impl, const Rows& x, const TensorRef& labels, const Vocab& v,
                const CrossEntropyOptions& o, float* loss, float* row_max, float* sum_exp, float* partial, int* flag,
                Stream stream, const Check& ck) {
  const bool smooth = o.label_smoothing != 0.f;
  const Specialization s = impl.tuned(fwd_spec(impl.target_arch(), x.V, x.dtype, labels.dtype, smooth), x.M);
  const int cl = s.config[C_SPLIT];
  check_grid(ck, x.M, cl);
  CeFwdArgs a{x.data, x.stride, labels.data, loss, row_max, sum_exp, partial, flag, o.ignore_index, v.start, v.total,
              o.label_smoothing, o.z_loss, static_cast<int>(x.M)};
  impl.launch(s, row_dims(x.M, cl, s.config[C_THREADS], 0, true), stream, a);
}

void launch_bwd(Runtime::Impl& impl, const Rows& x, const Rows& g, const TensorRef& labels, const Vocab& v,
                const CrossEntropyOptions& o, const float* row_max, const float* sum_exp, const void* grad_loss,
                DType grad_dtype, const float* scale_dev, float scale, Stream stream, const Check& ck) {
  const bool smooth = o.label_smoothing != 0.f;
  const Specialization s =
      impl.tuned(bwd_spec(impl.target_arch(), x.V, x.dtype, labels.dtype, grad_dtype, smooth), x.M);
  const int parts = s.config[C_SPLIT];
  check_grid(ck, x.M, parts);
  CeBwdArgs a{x.data,         x.stride, g.data,  g.stride,         labels.data, row_max,   sum_exp,
              grad_loss,      scale_dev, scale,  o.ignore_index,   v.start,     v.total,   o.label_smoothing,
              o.z_loss,       static_cast<int>(x.M)};
  impl.launch(s, row_dims(x.M, parts, s.config[C_THREADS], 0, false), stream, a);
}

// Mode 1 (the total) may start before the kernel that writes the losses completes (it waits for it first).
void launch_batch(Runtime::Impl& impl, const TensorRef& labels, int mode, const CeBatchArgs& a, Stream stream) {
  LaunchDims d;
  d.block[0] = 1024;
  d.pdl = mode == 1;
  impl.launch(batch_spec(impl.target_arch(), labels.dtype, mode), d, stream, a);
}

}  // namespace

KILN_REGISTER_FAMILY(softmax_cross_entropy, g_family)

namespace detail {
void softmax_cross_entropy_force_config(int kernel, int split, int threads, int unroll) {
  if (kernel < 0 || kernel > 2) return;
  g_forced[kernel][1].store(threads, std::memory_order_relaxed);
  g_forced[kernel][2].store(unroll, std::memory_order_relaxed);
  g_forced[kernel][0].store(split, std::memory_order_relaxed);
}
}  // namespace detail

void softmax_cross_entropy_fwd(Runtime& rt, const TensorRef& logits, const TensorRef& labels, const TensorRef& loss,
                               const TensorRef& row_max, const TensorRef& sum_exp, const CrossEntropyOptions& opts,
                               Stream stream) {
  const Check ck{"softmax_cross_entropy_fwd"};
  const Rows x = check_rows(ck, "logits", logits);
  check_per_row(ck, "labels", labels, {DType::i64, DType::i32}, x.M);
  check_per_row(ck, "loss", loss, {DType::f32}, x.M);
  check_stats(ck, row_max, sum_exp, x.M, false);
  const Vocab v = check_options(ck, opts, x.V, false);
  if (x.M == 0) return;
  auto& impl = rt.impl();
  CallScratch scratch(impl, ck, stream, opts, 0);
  launch_fwd(impl, x, labels, v, opts, f32(loss), f32(row_max), f32(sum_exp), nullptr, scratch.flag(), stream, ck);
  scratch.finish(labels, x.M, v.total, opts.ignore_index);
}

void softmax_cross_entropy_partial_fwd(Runtime& rt, const TensorRef& logits, const TensorRef& labels,
                                       const TensorRef& partial, const CrossEntropyOptions& opts, Stream stream) {
  const Check ck{"softmax_cross_entropy_partial_fwd"};
  const Rows x = check_rows(ck, "logits", logits);
  check_per_row(ck, "labels", labels, {DType::i64, DType::i32}, x.M);
  ck.tensor("partial", partial, {DType::f32}, {4, x.M}, 4);
  const Vocab v = check_options(ck, opts, x.V, true);
  if (x.M == 0) return;
  auto& impl = rt.impl();
  CallScratch scratch(impl, ck, stream, opts, 0);
  launch_fwd(impl, x, labels, v, opts, nullptr, nullptr, nullptr, f32(partial), scratch.flag(), stream, ck);
  scratch.finish(labels, x.M, v.total, opts.ignore_index);
}

void softmax_cross_entropy_merge(Runtime& rt, const TensorRef& partials, const TensorRef& labels,
                                 const TensorRef& loss, const TensorRef& row_max, const TensorRef& sum_exp,
                                 const CrossEntropyOptions& opts, Stream stream) {
  const Check ck{"softmax_cross_entropy_merge"};
  ck.dtype("partials", partials, {DType::f32});
  if (partials.ndim != 3 || partials.shape[1] != 4 || partials.shape[0] < 1 || partials.shape[2] < 0)
    ck.shape_error("partials", fmt::format("expected [tp, 4, M] (tp ≥ 1), got {}", shape_str(partials)));
  ck.contiguous("partials", partials);
  const int64_t tp = partials.shape[0], M = partials.shape[2];
  ck.fits_int32("partials", M, "M (rows)");
  ck.fits_int32("partials", tp, "tp");
  if (M > 0) ck.pointer("partials", partials, 4);
  check_per_row(ck, "labels", labels, {DType::i64, DType::i32}, M, "the partials' rows");
  check_per_row(ck, "loss", loss, {DType::f32}, M, "the partials' rows");
  check_stats(ck, row_max, sum_exp, M, false);
  if (opts.vocab_total <= 0)
    ck.invalid("vocab_total", fmt::format("expected the full vocabulary size (> 0), got {}", opts.vocab_total));
  check_options(ck, opts, opts.vocab_total, false);
  if (M == 0) return;
  auto& impl = rt.impl();
  const bool smooth = opts.label_smoothing != 0.f;
  CeMergeArgs a{f32(partials), static_cast<int>(tp), labels.data, f32(loss), f32(row_max), f32(sum_exp),
                opts.ignore_index, opts.vocab_total, opts.label_smoothing, opts.z_loss, static_cast<int>(M)};
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>((M + 255) / 256);
  d.block[0] = 256;
  impl.launch(merge_spec(impl.target_arch(), labels.dtype, smooth), d, stream, a);
}

void softmax_cross_entropy_bwd(Runtime& rt, const TensorRef& logits, const TensorRef& labels,
                               const TensorRef& row_max, const TensorRef& sum_exp, const TensorRef& grad_loss,
                               const TensorRef& dlogits, const CrossEntropyOptions& opts, Stream stream) {
  const Check ck{"softmax_cross_entropy_bwd"};
  const Rows x = check_rows(ck, "logits", logits);
  check_per_row(ck, "labels", labels, {DType::i64, DType::i32}, x.M);
  check_stats(ck, row_max, sum_exp, x.M, true);
  check_per_row(ck, "grad_loss", grad_loss, {DType::f32, DType::bf16, DType::f16}, x.M);
  const Rows g = check_dlogits(ck, dlogits, logits, x);
  if (opts.bad_label_row.defined())
    ck.invalid("bad_label_row", "the backward does not check labels (the forward reports them); expected empty");
  const Vocab v = check_options(ck, opts, x.V, true);
  if (x.M == 0) return;
  launch_bwd(rt.impl(), x, g, labels, v, opts, f32(row_max), f32(sum_exp), grad_loss.data, grad_loss.dtype, nullptr,
             0.f, stream, ck);
}

void softmax_cross_entropy_fused(Runtime& rt, const TensorRef& logits, const TensorRef& labels, const TensorRef& loss,
                                 const TensorRef& dlogits, const FusedCrossEntropyOptions& fused,
                                 const CrossEntropyOptions& opts, Stream stream) {
  const Check ck{"softmax_cross_entropy_fused"};
  const Rows x = check_rows(ck, "logits", logits);
  check_per_row(ck, "labels", labels, {DType::i64, DType::i32}, x.M);
  check_per_row(ck, "loss", loss, {DType::f32}, x.M);
  const Rows g = check_dlogits(ck, dlogits, logits, x);
  check_stats(ck, fused.row_max, fused.sum_exp, x.M, false);
  if (fused.loss_total.defined()) ck.tensor("loss_total", fused.loss_total, {DType::f32}, {1}, 4);
  if (!std::isfinite(fused.scale)) ck.invalid("scale", fmt::format("expected a finite value, got {}", fused.scale));
  if (fused.reduction != LossReduction::sum && fused.reduction != LossReduction::mean)
    ck.invalid("reduction", "expected LossReduction::sum or LossReduction::mean");
  const Vocab v = check_options(ck, opts, x.V, false);
  auto& impl = rt.impl();
  if (x.M == 0) {
    if (fused.loss_total.defined())
      check(driver().cuMemsetD32Async(reinterpret_cast<CUdeviceptr>(fused.loss_total.data), 0, 1,
                                      reinterpret_cast<CUstream>(stream)),
            "cuMemsetD32Async (loss_total)");
    return;
  }
  const bool smooth = opts.label_smoothing != 0.f;
  const Specialization s = impl.tuned(fused_spec(impl.target_arch(), x.V, x.dtype, labels.dtype, smooth), x.M);
  const bool single_pass = s.config[C_SPLIT] > 0;
  const bool keep_stats = fused.row_max.defined();
  const bool mean = fused.reduction == LossReduction::mean;
  CallScratch scratch(impl, ck, stream, opts, single_pass || keep_stats ? 0 : x.M, mean, mean);
  CeBatchArgs b{labels.data,       f32(loss), scratch.flag(),        scratch.scale(), f32(fused.loss_total), nullptr,
                fused.scale,       opts.ignore_index, v.total, static_cast<int>(x.M), mean ? 1 : 0};
  if (mean) launch_batch(impl, labels, 0, b, stream);  // scale() = scale / N_valid
  const float* scale_dev = mean ? scratch.scale() : nullptr;
  if (single_pass) {
    const int cl = s.config[C_SPLIT];
    check_grid(ck, x.M, cl);
    CeFusedArgs a{x.data,          x.stride,       g.data,           g.stride,         labels.data,
                  f32(loss),       f32(fused.row_max), f32(fused.sum_exp), scale_dev,  fused.scale,
                  scratch.flag(),  opts.ignore_index, opts.label_smoothing, opts.z_loss, static_cast<int>(x.M)};
    LaunchDims d = row_dims(x.M, cl, s.config[C_THREADS], smem_bytes(s), true);
    d.pdl = mean;  // after the count kernel (kiln's own): the fused kernel waits for it before it reads the scale
    impl.launch(s, d, stream, a);
  } else {
    float* rm = keep_stats ? f32(fused.row_max) : scratch.row_max();
    float* se = keep_stats ? f32(fused.sum_exp) : scratch.sum_exp();
    launch_fwd(impl, x, labels, v, opts, f32(loss), rm, se, nullptr, scratch.flag(), stream, ck);
    launch_bwd(impl, x, g, labels, v, opts, rm, se, nullptr, DType::f32, scale_dev, fused.scale, stream, ck);
  }
  if (fused.loss_total.defined()) {
    b.factor_dev = scale_dev;
    b.init_flag = 0;
    launch_batch(impl, labels, 1, b, stream);
  }
  scratch.finish(labels, x.M, v.total, opts.ignore_index);
}

}  // namespace kiln
