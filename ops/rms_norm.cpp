// Host recipe: RMSNorm forward and backward (templates/kiln/rms_norm.cuh). Spec: linghe-kernels.md §13 (RMSNorm).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "kiln/ops/rms_norm.hpp"
#include "kiln/rms_norm_args.h"
#include "ops/bench/rms_norm.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace {
using namespace detail;

enum : uint32_t { kFwd = 0, kBwd = 1, kDwReduce = 2 };
enum { P_N, P_DTYPE, P_W_DTYPE, P_DW_DTYPE };
enum { C_WARPS, C_ROWS, C_STAGES };

const char* type_name(int64_t d) {
  switch (static_cast<DType>(d)) {
    case DType::bf16: return "kiln::bf16";
    case DType::f16: return "kiln::f16";
    default: return "float";
  }
}

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/rms_norm.cuh\"\n";
  const auto& p = s.params;
  switch (s.kernel) {
    case kFwd:
      name = fmt::format("kiln::rms_norm_fwd_kernel<{}, {}, {}, {}>", p[P_N], s.config[C_WARPS], type_name(p[P_DTYPE]),
                         type_name(p[P_W_DTYPE]));
      break;
    case kBwd:
      name = fmt::format("kiln::rms_norm_bwd_kernel<{}, {}, {}, {}, {}>", p[P_N], s.config[C_ROWS],
                         s.config[C_STAGES], type_name(p[P_DTYPE]), type_name(p[P_W_DTYPE]));
      break;
    default:
      name = fmt::format("kiln::rms_norm_dw_reduce_kernel<{}, {}>", p[P_N], type_name(p[P_DW_DTYPE]));
  }
}

// The backward stages tiles of R rows of x and dy in shared memory (`stages` tiles per CTA): ≤ 64 KiB lets three
// CTAs share an SM.
int bwd_rows(int64_t N, DType t, int stages) {
  return static_cast<int>(
      std::clamp<int64_t>(65536 / (2 * stages * N * static_cast<int64_t>(dtype_size(t))), 1, 16));
}

// Staged tiles per backward CTA: 1 (only the SM's other CTAs overlap a CTA's loads with its compute) unless
// KILN_RMS_BWD_STAGES=2 asks for double-buffered tiles (a measurement knob until the tuner picks per shape).
int bwd_stages() {
  static const int forced = [] {
    const char* v = std::getenv("KILN_RMS_BWD_STAGES");
    return v && std::atoi(v) == 2 ? 2 : 1;
  }();
  return forced;
}

int smem_bytes(const Specialization& s) {
  if (s.kernel != kBwd) return 0;
  const int64_t elem = static_cast<int64_t>(dtype_size(static_cast<DType>(s.params[P_DTYPE])));
  return static_cast<int>(2 * s.config[C_STAGES] * s.config[C_ROWS] * s.params[P_N] * elem + 2 * s.config[C_ROWS] * 4);
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);

FamilyDef g_family{"rms_norm",          {"fwd", "bwd", "dw_reduce"}, {"N", "dtype", "w_dtype", "dw_dtype"}, {"warps", "rows", "stages"},
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
    else {
      s.config[C_STAGES] = bwd_stages();
      s.config[C_ROWS] = bwd_rows(N, t, s.config[C_STAGES]);
    }
  } else {
    s.params[P_DW_DTYPE] = static_cast<int64_t>(dw);
  }
  return s;
}

// fwd: 2–16 warps per CTA (a warp per row). bwd: rows per staged tile, powers of two up to 16 and the heuristic's
// own choice, while the tile of x and dy fits shared memory. dw_reduce: nothing to tune.
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  Specialization s = base;
  s.config = {};
  if (base.kernel == kFwd) {
    for (int warps : {2, 4, 8, 16}) {
      s.config[C_WARPS] = warps;
      out.push_back(s);
    }
  } else if (base.kernel == kBwd) {
    const DType t = static_cast<DType>(base.params[P_DTYPE]);
    for (int stages : {1, 2}) {
      const int heuristic = bwd_rows(base.params[P_N], t, stages);
      for (int rows : {1, 2, 4, 8, 16, heuristic}) {
        s.config[C_ROWS] = rows;
        s.config[C_STAGES] = stages;
        if (smem_bytes(s) > 227 * 1024) continue;
        if (std::none_of(out.begin(), out.end(), [&](const Specialization& o) { return o.config == s.config; }))
          out.push_back(s);
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

void check_eps(const Check& ck, float eps) {
  if (!(eps >= 0.f) || !std::isfinite(eps)) ck.invalid("eps", fmt::format("expected a finite value ≥ 0, got {}", eps));
}

}  // namespace

KILN_REGISTER_FAMILY(rms_norm, g_family)

void rms_norm_fwd(Runtime& rt, const TensorRef& x, const TensorRef& weight, const TensorRef& y,
                  const TensorRef& rms_inv, float eps, Stream stream) {
  const Check ck{"rms_norm_fwd"};
  check_eps(ck, eps);
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
// Persistent grid of the backward: every CTA that fits on the GPU at once, never more than there are row groups.
int64_t bwd_grid(Runtime& rt, const Specialization& s, int64_t M) {
  auto& impl = rt.impl();
  const int rows = s.config[C_ROWS];
  const int per_sm = impl.resident_per_sm(impl.kernel(s), 256, smem_bytes(s));
  const int64_t full = static_cast<int64_t>(impl.device().sm_count) * per_sm;
  return std::max<int64_t>(1, std::min<int64_t>(full, (M + rows - 1) / rows));
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
  check_eps(ck, eps);
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
  CUdeviceptr owned = 0;
  float* partial = static_cast<float*>(workspace.data);
  if (M > 0) {
    if (workspace.defined() && workspace.numel() < G * N)
      ck.shape_error("workspace", fmt::format("expected ≥ {} fp32 elements (rms_norm_bwd_workspace_elems with x's "
                                              "dtype), got {}",
                                              G * N, workspace.numel()));
    if (!workspace.defined()) {
      owned = impl.alloc_async(static_cast<size_t>(G * N) * 4, stream);
      partial = reinterpret_cast<float*>(owned);
    }
    RmsNormBwdArgs a{dy.data, dy.strides[0], x.data, x.strides[0], weight.data, dx.data, dx.strides[0], partial,
                     static_cast<int>(M), eps};
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(G);
    d.block[0] = 256;
    d.smem = static_cast<unsigned>(smem_bytes(s));
    impl.launch(s, d, stream, a);
  }
  // dweight = Σ over CTAs (zero when M == 0: the reduce over G = 0 slices writes zeros).
  RmsNormDwArgs r{partial, dweight.data, static_cast<int>(G)};
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>((N + 255) / 256);
  d.block[0] = 256;
  impl.launch(reduce, d, stream, r);
  if (owned) impl.free_async(owned, stream);
}

}  // namespace kiln
