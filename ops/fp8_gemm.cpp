// Host recipe: GEMM on the uint8 "FP8 compatibility format" (templates/kiln/fp8_gemm.cuh), its prepared weights, and
// FP8Linear on them. Spec: triton-ops.md §5, §6, §8.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kiln/fp8_gemm_args.h"
#include "kiln/ops/fp8.hpp"
#include "kiln/ops/fp8_gemm.hpp"
#include "kiln/ops/fp8_linear.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/tensor_map.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
std::pair<int, int> fp8_gemm_default_config(int64_t N, int64_t M, int sms);
// ops/bench/fp8_gemm.cpp: a runnable op (also the tuner's instance).
BenchInstance fp8_gemm_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);
}  // namespace detail

namespace {
using namespace detail;

enum : uint32_t { kGemm = 0, kBPrep = 1, kBPrepNk = 2 };
enum { P_N, P_K, P_OUT };
enum { C_BN, C_STAGES };
constexpr int kBM = 128;
constexpr int64_t kMaxK = 66304;  // 255 · 127 · K < 2^31, a multiple of 128
constexpr int64_t kMaxN = 65536;

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/fp8_gemm.cuh\"\n";
  if (s.kernel != kGemm) {
    name = s.kernel == kBPrep ? "kiln::fp8_gemm_b_prep_kernel" : "kiln::fp8_gemm_b_prep_nk_kernel";
    return;
  }
  name = fmt::format("kiln::fp8_gemm_kernel<{}, {}, {}, {}, {}>", s.params[P_N], s.params[P_K],
                     cxx_type(s.params[P_OUT]), s.config[C_BN], s.config[C_STAGES]);
}

// 1 KiB alignment slack + the ring (a tile 16 KiB + bᵀ tile BN·128 B a stage) + for 16-bit outputs two 64 × BN
// staging buffers + the ring's mbarriers.
int smem_bytes(const Specialization& s) {
  if (s.kernel != kGemm) return 0;
  const int staging = dtype_size(static_cast<DType>(s.params[P_OUT])) == 2 ? 2 * 64 * s.config[C_BN] * 2 : 0;
  return 1024 + s.config[C_STAGES] * (kBM * 128 + s.config[C_BN] * 128) + staging + 16 * s.config[C_STAGES];
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);

FamilyDef g_family{"fp8_gemm", {"gemm", "b_prep", "b_prep_nk"}, {"N", "K", "out"}, {"bn", "stages"}, render, smem_bytes,
                   enumerate, search_space, fp8_gemm_tune_instance};

}  // namespace

// The heuristic default for M rows on `sms` SMs: 128 × 128 tiles, 6 stages, unless they leave SMs idle (fewer tiles
// than SMs: small M, weight-read bound), then 128 × 64 tiles with 8 stages — twice the CTAs streaming the weight
// (H200, session 31: 128 × 7168 × 16384 on a prepared weight 48.9 µs at 128 columns, 56 CTAs). M < 0 (no token
// count: the search space's first point, prewarm) or sms ≤ 0: 128 columns.
std::pair<int, int> detail::fp8_gemm_default_config(int64_t N, int64_t M, int sms) {
  if (M > 0 && sms > 0 && ((M + kBM - 1) / kBM) * ((N + 127) / 128) < sms) return {64, 8};
  return {128, 6};
}

namespace {

Specialization spec(Arch arch, int64_t N, int64_t K, DType out, int64_t M = -1, int sms = 0) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kGemm;
  s.params[P_N] = N;
  s.params[P_K] = K;
  s.params[P_OUT] = static_cast<int64_t>(out);
  std::tie(s.config[C_BN], s.config[C_STAGES]) = fp8_gemm_default_config(N, M, sms);
  return s;
}

Specialization prep_spec(Arch arch, uint32_t kind) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kind;
  return s;
}

void search_space(const Specialization& base, std::vector<Specialization>& out) {
  if (base.kernel != kGemm) {
    out.push_back(prep_spec(base.arch, base.kernel));
    return;
  }
  const Specialization def = spec(base.arch, base.params[P_N], base.params[P_K], static_cast<DType>(base.params[P_OUT]));
  out.push_back(def);
  for (int stages : {5, 4}) {
    Specialization s = def;
    s.config[C_STAGES] = stages;
    out.push_back(s);
  }
  for (int stages : {8, 6}) {  // 128 × 64 tiles: 24 KiB a stage
    Specialization s = def;
    s.config[C_BN] = 64;
    s.config[C_STAGES] = stages;
    out.push_back(s);
  }
  // 128 × 256 tiles: 48 KiB a stage (3 fit beside the two 32 KiB staging buffers of a 16-bit output, 4 with fp32's
  // register stores) for a quarter less shared-memory fill per MMA.
  Specialization w = def;
  w.config[C_BN] = 256;
  w.config[C_STAGES] = dtype_size(static_cast<DType>(def.params[P_OUT])) == 2 ? 3 : 4;
  out.push_back(w);
}

// The preset's projections as FP8Linear would run them (bf16 out): attention output (heads·head_dim → hidden) and
// the dense MLP's down projection (intermediate → hidden), where K fits; and the two b prep kernels.
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  if (!has_wgmma(arch)) return;
  out.push_back(prep_spec(arch, kBPrep));
  out.push_back(prep_spec(arch, kBPrepNk));
  auto add = [&](int64_t N, int64_t K) {
    if (N <= 0 || N > kMaxN || K <= 0 || K > kMaxK || K % 16 != 0) return;
    for (const auto& s : out)
      if (s.kernel == kGemm && s.params[P_N] == N && s.params[P_K] == K) return;
    out.push_back(spec(arch, N, K, DType::bf16));
    Specialization narrow = out.back();  // the small-M default too (the op picks by M at run time)
    std::tie(narrow.config[C_BN], narrow.config[C_STAGES]) = fp8_gemm_default_config(N, 1, 1 << 30);
    out.push_back(narrow);
  };
  add(m.hidden_size, m.intermediate_size);
  add(m.hidden_size, static_cast<int64_t>(m.num_attention_heads) * m.head_dim);
}

void check_scale(const Check& ck, const char* arg, const TensorRef* s, bool want, const char* operand) {
  if (!want) {
    if (s != nullptr)
      ck.invalid(arg, fmt::format("{} is floating point (quantized internally, its scale computed): expected no {}",
                                  operand, arg));
    return;
  }
  if (s == nullptr)
    ck.invalid(arg, fmt::format("{} holds uint8 codes: expected its encode multiplier (one fp32 element)", operand));
  ck.dtype(arg, *s, {DType::f32});
  if (s->ndim > 1 || s->numel() != 1)
    ck.shape_error(arg, fmt::format("expected one element (shape [] or [1]), got shape {}", shape_str(*s)));
  ck.pointer(arg, *s, 4);
}

}  // namespace

namespace {

size_t up16(size_t v) { return (v + 15) / 16 * 16; }

// A prepared weight's bytes: bᵀ [N, K] int8 | colsum [N] int32 | the encode multiplier [1] fp32 (16-byte pieces).
struct WeightLayout {
  size_t col = 0, scale = 0, total = 0;
};
WeightLayout weight_layout(int64_t N, int64_t K) {
  WeightLayout l;
  l.col = up16(static_cast<size_t>(N) * static_cast<size_t>(K));
  l.scale = up16(l.col + 4 * static_cast<size_t>(N));
  l.total = l.scale + 16;
  return l;
}

void check_k(const Check& ck, const char* arg, int64_t K, const char* what) {
  if (K < 16 || K > kMaxK || K % 16 != 0)
    ck.shape_error(arg, fmt::format("expected K ({}) a multiple of 16 in [16, {}] (TMA rows of 16-byte multiples; the "
                                    "exact int32 sum), got {}",
                                    what, kMaxK, K));
}

void check_n(const Check& ck, const char* arg, int64_t N, const char* what) {
  if (N < 1 || N > kMaxN) ck.shape_error(arg, fmt::format("expected N ({}) in [1, {}], got {}", what, kMaxN, N));
}

// a [M, K]: codes (with a_scale) or float (without); rows 16-byte aligned. Returns its rows.
RowView check_a(const Check& ck, const TensorRef& a, const TensorRef* a_scale) {
  ck.dtype("a", a, {DType::u8, DType::f32, DType::bf16, DType::f16});
  if (a.ndim != 2) ck.shape_error("a", fmt::format("expected a 2-D [M, K] tensor, got shape {}", shape_str(a)));
  check_k(ck, "a", a.shape[1], "a's columns");
  const bool codes = a.dtype == DType::u8;
  const RowView ar = as_rows(ck, "a", a, 16);
  if (!codes) ck.contiguous("a", a);  // quantize_fp8 reads it as one flat tensor
  ck.fits_int32("a", ar.rows, "M (rows)");
  check_scale(ck, "a_scale", a_scale, codes, "a");
  return ar;
}

RowView check_c(const Check& ck, const TensorRef& c, int64_t M, int64_t N) {
  ck.dtype("c", c, {DType::f16, DType::bf16, DType::f32});
  if (c.ndim != 2 || c.shape[0] != M || c.shape[1] != N)
    ck.shape_error("c", fmt::format("expected shape [{}, {}] (M from a, N from the weight), got {}", M, N,
                                    shape_str(c)));
  return as_rows(ck, "c", c, static_cast<int>(dtype_size(c.dtype)));
}

void check_bias(const Check& ck, const TensorRef* bias, int64_t N) {
  if (bias == nullptr) return;
  ck.tensor("bias", *bias, {DType::f32, DType::bf16, DType::f16}, {N}, static_cast<int>(dtype_size(bias->dtype)));
}

// b (or w) into a prepared weight at `wbase`: its codes (given, or quantize_fp8 into `codes_scratch`), the scale into
// the weight's scale slot, then the prep kernel of its layout.
void prepare_into(Runtime& rt, Arch arch, const TensorRef& b, const TensorRef* b_scale, bool nk, int64_t N, int64_t K,
                  CUdeviceptr wbase, CUdeviceptr codes_scratch, Stream stream) {
  auto& impl = rt.impl();
  const WeightLayout l = weight_layout(N, K);
  const unsigned char* codes = static_cast<const unsigned char*>(b.data);
  const CUstream cs = reinterpret_cast<CUstream>(stream);
  if (b.dtype != DType::u8) {
    quantize_fp8(rt, b, TensorRef::contiguous(reinterpret_cast<void*>(codes_scratch), DType::u8, {b.shape[0], b.shape[1]}),
                 TensorRef::contiguous(reinterpret_cast<void*>(wbase + l.scale), DType::f32, {1}), stream);
    codes = reinterpret_cast<const unsigned char*>(codes_scratch);
  } else {
    check(driver().cuMemcpyDtoDAsync(wbase + l.scale, reinterpret_cast<CUdeviceptr>(b_scale->data), 4, cs),
          "cuMemcpyDtoDAsync (b_scale)");
  }
  LaunchDims pd;
  pd.block[0] = 256;
  if (nk) {
    Fp8BPrepNkArgs p{codes, reinterpret_cast<signed char*>(wbase), reinterpret_cast<int*>(wbase + l.col),
                     static_cast<int>(K), static_cast<int>(N)};
    pd.grid[0] = static_cast<unsigned>((N + 7) / 8);
    impl.launch(prep_spec(arch, kBPrepNk), pd, stream, p);
    return;
  }
  check(driver().cuMemsetD32Async(wbase + l.col, 0, static_cast<size_t>(N), cs), "cuMemsetD32Async (colsum)");
  Fp8BPrepArgs p{codes, reinterpret_cast<signed char*>(wbase), reinterpret_cast<int*>(wbase + l.col),
                 static_cast<int>(K), static_cast<int>(N)};
  pd.grid[0] = static_cast<unsigned>((N + 127) / 128);
  pd.grid[1] = static_cast<unsigned>((K + 255) / 256);
  impl.launch(prep_spec(arch, kBPrep), pd, stream, p);
}

Arch hopper_target(Runtime& rt, const char* op) {
  const Arch arch = rt.impl().target_arch();
  if (!has_wgmma(arch))
    throw DeviceError(fmt::format("{}: needs an sm_90 (Hopper) device for its TMA + wgmma kernel; the target is {}", op,
                                  arch.name()));
  return arch;
}

// The GEMM on a prepared weight at `wbase`. a's codes: as given, or quantized into `a_scratch` (M·K bytes + 16).
void gemm_on_weight(Runtime& rt, const Check& ck, Arch arch, const TensorRef& a, const TensorRef* a_scale,
                    const RowView& ar, int64_t N, int64_t K, CUdeviceptr wbase, const TensorRef* bias,
                    const TensorRef& c, const RowView& cr, CUdeviceptr a_scratch, Stream stream) {
  auto& impl = rt.impl();
  const int64_t M = ar.rows;
  const int sms = impl.device().sm_count;
  const Specialization s = impl.tuned(spec(arch, N, K, c.dtype, M, sms), M);
  const int64_t bn = s.config[C_BN], m_tiles = (M + kBM - 1) / kBM, tiles = m_tiles * ((N + bn - 1) / bn);
  ck.fits_int32("a", tiles + sms, "the tile count ceil(M/128)·ceil(N/BN) + the SM count");
  const WeightLayout l = weight_layout(N, K);
  const void* a_data = a.data;
  const float* a_s = nullptr;
  int64_t a_pitch = ar.stride;
  if (a.dtype == DType::u8) {
    a_s = static_cast<const float*>(a_scale->data);
  } else {
    const CUdeviceptr as = a_scratch + up16(static_cast<size_t>(M * K));
    quantize_fp8(rt, a, TensorRef::contiguous(reinterpret_cast<void*>(a_scratch), DType::u8, {M, K}),
                 TensorRef::contiguous(reinterpret_cast<void*>(as), DType::f32, {1}), stream);
    a_data = reinterpret_cast<const void*>(a_scratch);
    a_s = reinterpret_cast<const float*>(as);
    a_pitch = K;
  }
  Fp8GemmArgs g{};
  encode_tma_2d(g.tma, a_data, DType::u8, K, M, a_pitch, kBM);
  encode_tma_2d(g.tmb, reinterpret_cast<const void*>(wbase), DType::u8, K, N, K, s.config[C_BN]);
  const int64_t es = static_cast<int64_t>(dtype_size(c.dtype));
  g.staged = es == 2 && N % 8 == 0 && (cr.stride * es) % 16 == 0 && reinterpret_cast<uintptr_t>(c.data) % 16 == 0;
  if (g.staged) encode_tma_2d(g.tmo, c.data, c.dtype, N, M, cr.stride * es, 64);
  g.colsum = reinterpret_cast<const int*>(wbase + l.col);
  g.a_scale = a_s;
  g.b_scale = reinterpret_cast<const float*>(wbase + l.scale);
  g.out = c.data;
  g.out_stride = cr.stride;
  g.M = static_cast<int>(M);
  g.m_tiles = static_cast<int>(m_tiles);
  g.bias = bias != nullptr ? bias->data : nullptr;
  g.bias_dtype = bias != nullptr ? static_cast<int>(bias->dtype) : 0;
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>(std::min<int64_t>(tiles, sms));
  d.block[0] = 384;
  d.smem = static_cast<unsigned>(smem_bytes(s));
  impl.launch(s, d, stream, g);
}

// Runs `body` with a scratch buffer of `bytes` (released on the stream after it, also when it throws); with 0 bytes
// (codes in, nothing to quantize) none is taken and body gets 0.

size_t a_scratch_bytes(const TensorRef& a, int64_t M, int64_t K) {
  return a.dtype == DType::u8 ? 0 : up16(static_cast<size_t>(M * K)) + 16;
}

}  // namespace

KILN_REGISTER_FAMILY(fp8_gemm, g_family)

int64_t fp8_gemm_weight_bytes(int64_t N, int64_t K) {
  if (N < 0 || K < 0) return 0;
  return static_cast<int64_t>(weight_layout(N, K).total);
}

void fp8_gemm_prepare_weight(Runtime& rt, const TensorRef& b, const TensorRef* b_scale, Fp8WeightLayout layout,
                             const Fp8GemmWeight& weight, Stream stream) {
  const Check ck{"fp8_gemm_prepare_weight"};
  ck.dtype("b", b, {DType::u8, DType::f32, DType::bf16, DType::f16});
  const bool nk = layout == Fp8WeightLayout::nk;
  if (b.ndim != 2)
    ck.shape_error("b", fmt::format("expected a 2-D {} tensor, got shape {}", nk ? "[N, K]" : "[K, N]", shape_str(b)));
  const int64_t N = nk ? b.shape[0] : b.shape[1], K = nk ? b.shape[1] : b.shape[0];
  if (weight.N != N || weight.K != K)
    ck.shape_error("weight", fmt::format("expected N = {} and K = {} (b's {} shape {}), got N = {}, K = {}", N, K,
                                         nk ? "[N, K]" : "[K, N]", shape_str(b), weight.N, weight.K));
  check_k(ck, "b", K, nk ? "b's columns" : "b's rows");
  check_n(ck, "b", N, nk ? "b's rows" : "b's columns");
  ck.contiguous("b", b);
  ck.pointer("b", b, 16);
  check_scale(ck, "b_scale", b_scale, b.dtype == DType::u8, "b");
  if (weight.data == nullptr || reinterpret_cast<uintptr_t>(weight.data) % 16 != 0)
    ck.invalid("weight", fmt::format("expected a 16-byte aligned device buffer of fp8_gemm_weight_bytes({}, {}) = {} "
                                     "bytes, got address {}",
                                     N, K, fp8_gemm_weight_bytes(N, K), weight.data));
  const Arch arch = hopper_target(rt, ck.op);
  static const char owner = 0;
  const size_t codes = b.dtype == DType::u8 ? 0 : up16(static_cast<size_t>(N * K));
  rt.impl().with_scratch(&owner, codes, stream, [&](CUdeviceptr scratch) {
    prepare_into(rt, arch, b, b_scale, nk, N, K, reinterpret_cast<CUdeviceptr>(weight.data), scratch, stream);
  });
}

void fp8_gemm(Runtime& rt, const TensorRef& a, const TensorRef* a_scale, const Fp8GemmWeight& weight,
              const TensorRef* bias, const TensorRef& c, Stream stream) {
  const Check ck{"fp8_gemm"};
  const RowView ar = check_a(ck, a, a_scale);
  const int64_t K = a.shape[1], N = weight.N;
  if (weight.K != K)
    ck.shape_error("weight", fmt::format("expected K = {} (a's columns), got a weight prepared for K = {}", K, weight.K));
  check_n(ck, "weight", N, "the weight's N");
  if (weight.data == nullptr || reinterpret_cast<uintptr_t>(weight.data) % 16 != 0)
    ck.invalid("weight", fmt::format("expected a 16-byte aligned prepared weight (fp8_gemm_prepare_weight), got address "
                                     "{}",
                                     weight.data));
  check_bias(ck, bias, N);
  const RowView cr = check_c(ck, c, ar.rows, N);
  const int64_t M = ar.rows;
  if (M == 0) return;
  const Arch arch = hopper_target(rt, ck.op);
  static const char owner = 0;
  rt.impl().with_scratch(&owner, a_scratch_bytes(a, M, K), stream, [&](CUdeviceptr scratch) {
    gemm_on_weight(rt, ck, arch, a, a_scale, ar, N, K, reinterpret_cast<CUdeviceptr>(weight.data), bias, c, cr,
                   scratch, stream);
  });
}

void fp8_gemm(Runtime& rt, const TensorRef& a, const TensorRef& b, const TensorRef* a_scale, const TensorRef* b_scale,
              const TensorRef& c, Stream stream) {
  const Check ck{"fp8_gemm"};
  const RowView ar = check_a(ck, a, a_scale);
  ck.dtype("b", b, {DType::u8, DType::f32, DType::bf16, DType::f16});
  if (b.ndim != 2) ck.shape_error("b", fmt::format("expected a 2-D [K, N] tensor, got shape {}", shape_str(b)));
  const int64_t K = a.shape[1], N = b.shape[1];
  if (b.shape[0] != K)
    ck.shape_error("b", fmt::format("expected [K, N] with K = {} (a's columns), got shape {}", K, shape_str(b)));
  check_n(ck, "b", N, "b's columns");
  ck.contiguous("b", b);
  if (b.numel() > 0) ck.pointer("b", b, 16);
  check_scale(ck, "b_scale", b_scale, b.dtype == DType::u8, "b");
  const RowView cr = check_c(ck, c, ar.rows, N);
  const int64_t M = ar.rows;
  if (M == 0) return;
  const Arch arch = hopper_target(rt, ck.op);
  // Scratch: the prepared weight | (b float) b's codes [K, N] | (a float) a's codes [M, K] + scale.
  const size_t w = weight_layout(N, K).total, bq = b.dtype == DType::u8 ? 0 : up16(static_cast<size_t>(K * N));
  static const char owner = 0;
  rt.impl().with_scratch(&owner, w + bq + a_scratch_bytes(a, M, K), stream, [&](CUdeviceptr base) {
    prepare_into(rt, arch, b, b_scale, false, N, K, base, base + w, stream);
    gemm_on_weight(rt, ck, arch, a, a_scale, ar, N, K, base, nullptr, c, cr, base + w + bq, stream);
  });
}


// ---- FP8Linear (include/kiln/ops/fp8_linear.hpp): fp8_gemm on a weight prepared once per (address, dtype, version),
// the activation quantized per call. Spec: triton-ops.md §6, §8.5.

struct FP8Linear::Impl {
  Runtime& rt;
  int64_t in = 0, out = 0;
  CUdeviceptr buffer = 0;  // fp8_gemm_weight_bytes(out, in), allocated at the first forward
  bool held = false;
  const void* key_data = nullptr;
  DType key_dtype = DType::f32;
  uint64_t key_version = 0;
  int64_t prepared = 0;

  Impl(Runtime& r, int64_t i, int64_t o) : rt(r), in(i), out(o) {}
  ~Impl() {
    if (buffer) detail::driver().cuMemFree(buffer);  // a destructor: nothing to do on failure
  }
};

FP8Linear::FP8Linear(Runtime& rt, int64_t in_features, int64_t out_features)
    : impl_(std::make_unique<Impl>(rt, in_features, out_features)) {
  const Check ck{"FP8Linear"};
  if (in_features < 16 || in_features > 66304 || in_features % 16 != 0)
    ck.shape_error("in_features", fmt::format("expected a multiple of 16 in [16, 66304] (fp8_gemm's K), got {}",
                                              in_features));
  if (out_features < 1 || out_features > 65536)
    ck.shape_error("out_features", fmt::format("expected a value in [1, 65536] (fp8_gemm's N), got {}", out_features));
}

FP8Linear::~FP8Linear() = default;

int64_t FP8Linear::in_features() const { return impl_->in; }
int64_t FP8Linear::out_features() const { return impl_->out; }
bool FP8Linear::has_prepared_weight() const { return impl_->held; }
int64_t FP8Linear::prepare_count() const { return impl_->prepared; }
void FP8Linear::invalidate() { impl_->held = false; }

void FP8Linear::forward(const TensorRef& x, const TensorRef& weight, uint64_t weight_version, const TensorRef* bias,
                        const TensorRef& y, Stream stream) {
  Impl& m = *impl_;
  const Check ck{"FP8Linear.forward"};
  ck.dtype("x", x, {DType::f32, DType::bf16, DType::f16});
  if (x.ndim < 2 || x.shape[x.ndim - 1] != m.in)
    ck.shape_error("x", fmt::format("expected [..., {}] of rank ≥ 2 (in_features = {}), got shape {}", m.in, m.in,
                                    detail::shape_str(x)));
  ck.contiguous("x", x);
  int64_t M = 1;
  for (int k = 0; k + 1 < x.ndim; ++k) M *= x.shape[k];
  ck.tensor("weight", weight, {DType::f32, DType::bf16, DType::f16}, {m.out, m.in});
  if (bias != nullptr)
    ck.tensor("bias", *bias, {DType::f32, DType::bf16, DType::f16}, {m.out}, static_cast<int>(dtype_size(bias->dtype)));
  ck.dtype("y", y, {DType::f16, DType::bf16, DType::f32});
  bool y_ok = y.ndim == x.ndim && y.shape[y.ndim - 1] == m.out;
  for (int k = 0; y_ok && k + 1 < x.ndim; ++k) y_ok = y.shape[k] == x.shape[k];
  if (!y_ok) {
    std::string want = "[";
    for (int k = 0; k + 1 < x.ndim; ++k) want += fmt::format("{}, ", x.shape[k]);
    ck.shape_error("y", fmt::format("expected shape {}{}] (x's leading dims, out_features), got {}", want, m.out,
                                    detail::shape_str(y)));
  }
  if (y.ndim > 2) ck.contiguous("y", y);  // rank 2: any row stride
  if (x.numel() > 0) ck.pointer("x", x, 16);
  if (!m.held || m.key_data != weight.data || m.key_dtype != weight.dtype || m.key_version != weight_version) {
    if (!m.buffer) {
      m.rt.impl().bind_device();
      detail::check(detail::driver().cuMemAlloc(&m.buffer, static_cast<size_t>(fp8_gemm_weight_bytes(m.out, m.in))),
                    "cuMemAlloc (FP8Linear's prepared weight)");
    }
    m.held = false;
    fp8_gemm_prepare_weight(m.rt, weight, nullptr, Fp8WeightLayout::nk,
                            Fp8GemmWeight{reinterpret_cast<void*>(m.buffer), m.out, m.in}, stream);
    m.held = true;
    m.key_data = weight.data;
    m.key_dtype = weight.dtype;
    m.key_version = weight_version;
    ++m.prepared;
  }
  // [..., in] → [M, in] and [..., out] → [M, out] (views; rank 2 as given).
  const TensorRef xv = x.ndim == 2 ? x : TensorRef::contiguous(x.data, x.dtype, {M, m.in});
  const TensorRef yv = y.ndim == 2 ? y : TensorRef::contiguous(y.data, y.dtype, {M, m.out});
  fp8_gemm(m.rt, xv, nullptr, Fp8GemmWeight{reinterpret_cast<void*>(m.buffer), m.out, m.in}, bias, yv, stream);
}

}  // namespace kiln
