// Host recipe: RMSNorm forward and backward (templates/kiln/rms_norm.cuh). Spec: linghe-kernels.md §13 (RMSNorm).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kiln/ops/rms_norm.hpp"
#include "kiln/rms_norm_args.h"
#include "ops/bench/rms_norm.hpp"
#include "ops/dw_partials.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace {
using namespace detail;

enum : uint32_t { kFwd = 0, kBwd = 1, kDwReduce = 2 };
enum { P_N, P_DTYPE, P_W_DTYPE, P_DW_DTYPE };
// Backward configs: warps = 0 is the tile kernel (`rows` per staged tile, `stages` tiles per CTA); warps > 0 is the
// pipelined kernel (`warps` per CTA, `rows` processed at once per CTA, i.e. warps/rows warps share a row, `stages`
// ring slots per warp).
enum { C_WARPS, C_ROWS, C_STAGES };

bool is_pipe(const Specialization& s) { return s.config[C_WARPS] > 0; }
int split_of(const Specialization& s) { return s.config[C_WARPS] / std::max(1, s.config[C_ROWS]); }

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/rms_norm.cuh\"\n";
  const auto& p = s.params;
  switch (s.kernel) {
    case kFwd:
      name = fmt::format("kiln::rms_norm_fwd_kernel<{}, {}, {}, {}>", p[P_N], s.config[C_WARPS], cxx_type(p[P_DTYPE]),
                         cxx_type(p[P_W_DTYPE]));
      break;
    case kBwd:
      if (!is_pipe(s))
        name = fmt::format("kiln::rms_norm_bwd_kernel<{}, {}, {}, {}, {}>", p[P_N], s.config[C_ROWS],
                           s.config[C_STAGES], cxx_type(p[P_DTYPE]), cxx_type(p[P_W_DTYPE]));
      else
        name = fmt::format("kiln::rms_norm_bwd_pipe_kernel<{}, {}, {}, {}, {}, {}, {}>", p[P_N], s.config[C_WARPS],
                           split_of(s), s.config[C_STAGES], s.arch.sm >= 90, cxx_type(p[P_DTYPE]),
                           cxx_type(p[P_W_DTYPE]));
      break;
    default:
      name = fmt::format("kiln::dw_reduce_kernel<{}, 1, {}>", p[P_N], cxx_type(p[P_DW_DTYPE]));
  }
}

// The backward stages tiles of R rows of x and dy in shared memory (`stages` tiles per CTA): ≤ 64 KiB lets three
// CTAs share an SM.
int bwd_rows(int64_t N, DType t, int stages) {
  return static_cast<int>(
      std::clamp<int64_t>(65536 / (2 * stages * N * static_cast<int64_t>(dtype_size(t))), 1, 16));
}

// The pipelined backward (rms_norm_bwd_pipe_kernel): `warps` warps per CTA in groups of `split` sharing a row, a
// ring of `depth` slots of x and dy per warp. Shared memory: the rings and one mbarrier per slot.
int64_t pipe_smem(int64_t N, DType t, int warps, int split, int depth) {
  return static_cast<int64_t>(warps) * depth * (2 * (N / split) * static_cast<int64_t>(dtype_size(t)) + 8);
}

// Whether a pipelined config is valid: 16-byte slices of ≥ 32 chunks (every lane busy) unless a warp takes the whole
// row, ≤ 15 groups when warps share rows (named barriers), dw of a lane in ≤ 64 fp32 registers, the registers the
// kernel then takes (measured with ptxas at N = 2048 and 7168 bf16: ≈ 3.3 per dw value + 16, as ptxas hoists both
// passes' shared-memory loads; fp32 weights with 16-bit rows add half a register per value) within the register file
// at one CTA per SM, and the rings in shared memory next to the kernel's static exchange buffer.
bool pipe_ok(int64_t N, DType t, DType w, int warps, int split, int depth) {
  const int64_t es = static_cast<int64_t>(dtype_size(t)), V = 16 / es;
  if (split < 1 || warps % split != 0 || N % split != 0 || (N / split) % V != 0) return false;
  if (split > 1 && (warps / split > 15 || N / split / V < 32)) return false;
  const int64_t cpl = (N / split / V + 31) / 32, dw_regs = cpl * V;
  const int64_t regs = (33 * dw_regs) / 10 + 16 + (dtype_size(w) > dtype_size(t) ? dw_regs / 2 : 0);
  if (dw_regs > 64 || regs > 255 || regs * warps * 32 > 65536) return false;
  return depth >= 2 && pipe_smem(N, t, warps, split, depth) <= 227 * 1024 - 512;
}

int smem_bytes(const Specialization& s) {
  if (s.kernel != kBwd) return 0;
  const DType t = static_cast<DType>(s.params[P_DTYPE]);
  if (is_pipe(s))
    return static_cast<int>(pipe_smem(s.params[P_N], t, s.config[C_WARPS], split_of(s), s.config[C_STAGES]));
  const int64_t elem = static_cast<int64_t>(dtype_size(t));
  return static_cast<int>(2 * s.config[C_STAGES] * s.config[C_ROWS] * s.params[P_N] * elem + 2 * s.config[C_ROWS] * 4);
}

// The backward's default: the pipelined kernel with 8 warps, the fewest warps per row that keep a lane's dw in
// registers, and 3 ring slots per warp where they fit 200 KiB (else 2); the tile kernel (one stage) where no
// pipelined config fits (fp32 rows of 16384). Measured on H100 at M = 8192 bf16 (µs, median of ≥ 20, L2 flushed):
// N = 2048: this default (8 warps, a row each, 3 slots) 35.4, the best of 24 points (the top nine within 0.5 µs;
// the tile kernel 47.8–59.1); N = 7168 (8 warps, 4 per row, 3 slots) 124.0, within 0.2 µs of the best of 13.
void bwd_default(Specialization& s) {
  const int64_t N = s.params[P_N];
  const DType t = static_cast<DType>(s.params[P_DTYPE]), w = static_cast<DType>(s.params[P_W_DTYPE]);
  for (int warps : {8, 16})
    for (int split : {1, 2, 4, 8, 16})
      for (int depth : {3, 2}) {
        if (!pipe_ok(N, t, w, warps, split, depth) || (depth == 3 && pipe_smem(N, t, warps, split, 3) > 200 * 1024))
          continue;
        s.config[C_WARPS] = warps;
        s.config[C_ROWS] = warps / split;
        s.config[C_STAGES] = depth;
        return;
      }
  s.config[C_WARPS] = 0;
  s.config[C_STAGES] = 1;
  s.config[C_ROWS] = bwd_rows(N, t, 1);
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);

FamilyDef g_family{"rms_norm",          {"fwd", "bwd", "dw_reduce"}, {"N", "dtype", "w_dtype", "dw_dtype"},
                   {"warps", "rows", "stages"},
                   render,              smem_bytes,                  enumerate,
                   search_space,        tune_instance};

Specialization spec(Arch arch, uint32_t kernel, int64_t N, DType t, DType w, DType dw) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kernel;
  s.params[P_N] = N;
  if (kernel != kDwReduce) {
    s.params[P_DTYPE] = static_cast<int64_t>(t);
    s.params[P_W_DTYPE] = static_cast<int64_t>(w);
    if (kernel == kFwd)
      s.config[C_WARPS] = N <= 4096 ? 8 : 4;
    else
      bwd_default(s);
  } else {
    s.params[P_DW_DTYPE] = static_cast<int64_t>(dw);
  }
  return s;
}

// fwd: 2–16 warps per CTA (a warp per row). bwd: the pipelined kernel's warps per CTA × warps per row × ring slots
// (the valid points; pipe_ok), and the tile kernel (rows per tile, powers of two up to 16 and the heuristic's, one
// stage; two stages at the heuristic rows) while its tile of x and dy fits shared memory. dw_reduce: nothing to tune.
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  Specialization s = base;
  s.config = {};
  if (base.kernel == kFwd) {
    for (int warps : {2, 4, 8, 16}) {
      s.config[C_WARPS] = warps;
      out.push_back(s);
    }
  } else if (base.kernel == kBwd) {
    const int64_t N = base.params[P_N];
    const DType t = static_cast<DType>(base.params[P_DTYPE]), w = static_cast<DType>(base.params[P_W_DTYPE]);
    Specialization def = base;
    bwd_default(def);
    auto add = [&](const Specialization& c) {
      if (std::none_of(out.begin(), out.end(), [&](const Specialization& o) { return o.config == c.config; }))
        out.push_back(c);
    };
    add(def);
    for (int warps : {4, 8, 16})
      for (int split : {1, 2, 4, 8, 16})
        for (int depth : {2, 3}) {
          if (!pipe_ok(N, t, w, warps, split, depth) || (warps == 4 && split > 2)) continue;
          s.config = {warps, warps / split, depth};
          add(s);
        }
    for (int stages : {1, 2}) {
      const int heuristic = bwd_rows(N, t, stages);
      for (int rows : {1, 2, 4, 8, 16, heuristic}) {
        if (stages == 2 && rows != heuristic) continue;
        s.config = {0, rows, stages};
        if (smem_bytes(s) <= 227 * 1024) add(s);
      }
    }
  } else {
    out.push_back(s);
  }
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  if (m.hidden_size <= 0 || m.hidden_size % 8 != 0) return;
  const int64_t N = m.hidden_size;
  out.push_back(spec(arch, kFwd, N, DType::bf16, DType::bf16, DType::f32));
  out.push_back(spec(arch, kBwd, N, DType::bf16, DType::bf16, DType::f32));
  out.push_back(spec(arch, kDwReduce, N, DType::bf16, DType::bf16, DType::f32));
}

constexpr int64_t kMaxN = 16384;

// Common checks of a [M, N] activation in x's dtype.
void check_rows(const Check& ck, const char* arg, const TensorRef& t, DType dtype, int64_t M, int64_t N) {
  ck.dtype(arg, t, {dtype});
  ck.rows(arg, t, 16);
  if (t.shape[0] != M || t.shape[1] != N)
    ck.shape_error(arg, fmt::format("expected shape [{}, {}] (as x), got {}", M, N, shape_str(t)));
  if (M > 0) ck.pointer(arg, t, 16);
}

int64_t check_x(const Check& ck, const TensorRef& x) {
  ck.dtype("x", x, {DType::bf16, DType::f16, DType::f32});
  ck.rows("x", x, 16);
  const int64_t N = x.shape[1];
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(x.dtype));
  if (N <= 0 || N % vec != 0 || N > kMaxN)
    ck.shape_error("x", fmt::format("expected the last dim N to be a multiple of {} (16 bytes) in [{}, {}], got N = {}",
                                    vec, vec, kMaxN, N));
  ck.fits_int32("x", x.shape[0], "M (rows)");
  if (x.shape[0] > 0) ck.pointer("x", x, 16);
  return N;
}

}  // namespace

KILN_REGISTER_FAMILY(rms_norm, g_family)

void rms_norm_fwd(Runtime& rt, const TensorRef& x, const TensorRef& weight, const TensorRef& y,
                  const TensorRef& rms_inv, float eps, Stream stream) {
  const Check ck{"rms_norm_fwd"};
  ck.finite_nonnegative("eps", eps);
  const int64_t N = check_x(ck, x);
  const int64_t M = x.shape[0];
  ck.tensor("weight", weight, {x.dtype, DType::f32}, {N}, 16);
  check_rows(ck, "y", y, x.dtype, M, N);
  if (rms_inv.defined()) ck.tensor("rms_inv", rms_inv, {DType::f32}, {M}, 4);
  if (M == 0) return;

  auto& impl = rt.impl();
  const Specialization s = impl.tuned(spec(impl.target_arch(), kFwd, N, x.dtype, weight.dtype, DType::f32), M);
  RmsNormFwdArgs a{x.data, x.strides[0], weight.data, y.data, y.strides[0], static_cast<float*>(rms_inv.data),
                   static_cast<int>(M), eps};
  LaunchDims d;
  const unsigned warps = static_cast<unsigned>(s.config[C_WARPS]);
  d.grid[0] = static_cast<unsigned>((M + warps - 1) / warps);
  d.block[0] = warps * 32;
  impl.launch(s, d, stream, a);
}

namespace {
// Persistent grid of the backward: every CTA that fits on the GPU at once, never more than there are row groups
// (a tile of `rows` rows; the pipelined kernel's warp groups each take a row at a time).
int64_t bwd_threads(const Specialization& s) { return is_pipe(s) ? s.config[C_WARPS] * 32 : 256; }
int64_t bwd_grid(Runtime& rt, const Specialization& s, int64_t M) {
  auto& impl = rt.impl();
  const int rows = s.config[C_ROWS];
  return impl.persistent_grid(impl.kernel(s), static_cast<int>(bwd_threads(s)), smem_bytes(s), (M + rows - 1) / rows);
}
}  // namespace

int64_t rms_norm_bwd_workspace_elems(Runtime& rt, int64_t M, int64_t N, DType dtype) {
  auto& impl = rt.impl();
  const Specialization s = impl.tuned(spec(impl.target_arch(), kBwd, N, dtype, dtype, DType::f32), M);
  return bwd_grid(rt, s, M) * N;
}

namespace {
// The op at `tokens` rows with random inputs of the specialization's dtypes. The backward's workspace fits every
// config of the search space (its grid depends on the config); dweight is fp32.
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  const auto& p = s.params;
  const DType t = static_cast<DType>(p[P_DTYPE]), w = static_cast<DType>(p[P_W_DTYPE]);
  if (s.kernel == kFwd) return rms_norm_fwd_instance(rt, tokens, p[P_N], t, w);
  if (s.kernel == kBwd) {
    std::vector<Specialization> space;
    search_space(s, space);
    int64_t ws = 0;
    for (const Specialization& c : space) ws = std::max(ws, bwd_grid(rt, c, tokens) * p[P_N]);
    return rms_norm_bwd_instance(rt, tokens, p[P_N], t, w, DType::f32, ws);
  }
  // dw_reduce has one config; its instance is the backward that launches it.
  return rms_norm_bwd_instance(rt, tokens, p[P_N], DType::bf16, DType::bf16, static_cast<DType>(p[P_DW_DTYPE]), 0);
}
}  // namespace

void rms_norm_bwd(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& weight, const TensorRef& dx,
                  const TensorRef& dweight, float eps, const TensorRef& workspace, Stream stream) {
  const Check ck{"rms_norm_bwd"};
  ck.finite_nonnegative("eps", eps);
  const int64_t N = check_x(ck, x);
  const int64_t M = x.shape[0];
  check_rows(ck, "dy", dy, x.dtype, M, N);
  check_rows(ck, "dx", dx, x.dtype, M, N);
  ck.tensor("weight", weight, {x.dtype, DType::f32}, {N}, 16);
  ck.tensor("dweight", dweight, {DType::f32, weight.dtype}, {N}, 4);
  if (workspace.defined()) ck.tensor("workspace", workspace, {DType::f32}, {-1}, 16);

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  const Specialization reduce = impl.tuned(spec(arch, kDwReduce, N, x.dtype, weight.dtype, dweight.dtype), M);
  const Specialization s = impl.tuned(spec(arch, kBwd, N, x.dtype, weight.dtype, dweight.dtype), M);
  const int64_t G = M == 0 ? 0 : bwd_grid(rt, s, M);
  DwPartials partial(impl, stream, workspace);
  if (M > 0) {
    partial.reserve(ck, "rms_norm_bwd_workspace_elems with x's dtype", G * N);
    RmsNormBwdArgs a{dy.data, dy.strides[0],  x.data, x.strides[0], weight.data, dx.data, dx.strides[0],
                     partial.data(), static_cast<int>(M), eps};
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(G);
    d.block[0] = static_cast<unsigned>(bwd_threads(s));
    d.smem = static_cast<unsigned>(smem_bytes(s));
    impl.launch(s, d, stream, a);
  }
  // dweight = Σ over CTAs (zero when M == 0: the reduce over G = 0 slices writes zeros).
  partial.reduce(reduce, G, N, dweight.data);
}

}  // namespace kiln
