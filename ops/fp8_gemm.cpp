// Host recipe: GEMM on the uint8 "FP8 compatibility format" (templates/kiln/fp8_gemm.cuh). Spec: triton-ops.md §5, §8.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "kiln/fp8_gemm_args.h"
#include "kiln/ops/fp8.hpp"
#include "kiln/ops/fp8_gemm.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/tensor_map.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/fp8_gemm.cpp: a runnable op (also the tuner's instance).
BenchInstance fp8_gemm_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);
}  // namespace detail

namespace {
using namespace detail;

enum : uint32_t { kGemm = 0, kBPrep = 1 };
enum { P_N, P_K, P_OUT };
enum { C_BN, C_STAGES };
constexpr int kBM = 128;
constexpr int64_t kMaxK = 66304;  // 255 · 127 · K < 2^31, a multiple of 128
constexpr int64_t kMaxN = 65536;

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/fp8_gemm.cuh\"\n";
  if (s.kernel == kBPrep) {
    name = "kiln::fp8_gemm_b_prep_kernel";
    return;
  }
  name = fmt::format("kiln::fp8_gemm_kernel<{}, {}, {}, {}, {}>", s.params[P_N], s.params[P_K],
                     cxx_type(s.params[P_OUT]), s.config[C_BN], s.config[C_STAGES]);
}

// 1 KiB alignment slack + the ring (a tile 16 KiB + bᵀ tile BN·128 B a stage) + for 16-bit outputs two 64 × BN
// staging buffers + the ring's mbarriers.
int smem_bytes(const Specialization& s) {
  if (s.kernel == kBPrep) return 0;
  const int staging = dtype_size(static_cast<DType>(s.params[P_OUT])) == 2 ? 2 * 64 * s.config[C_BN] * 2 : 0;
  return 1024 + s.config[C_STAGES] * (kBM * 128 + s.config[C_BN] * 128) + staging + 16 * s.config[C_STAGES];
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);

FamilyDef g_family{"fp8_gemm", {"gemm", "b_prep"}, {"N", "K", "out"}, {"bn", "stages"}, render, smem_bytes,
                   enumerate, search_space, fp8_gemm_tune_instance};

Specialization spec(Arch arch, int64_t N, int64_t K, DType out) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kGemm;
  s.params[P_N] = N;
  s.params[P_K] = K;
  s.params[P_OUT] = static_cast<int64_t>(out);
  s.config[C_BN] = 128;
  s.config[C_STAGES] = 6;  // 6 × 32 KiB + 32 KiB of staging: 225 KiB
  return s;
}

Specialization prep_spec(Arch arch) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kBPrep;
  return s;
}

void search_space(const Specialization& base, std::vector<Specialization>& out) {
  if (base.kernel == kBPrep) {
    out.push_back(prep_spec(base.arch));
    return;
  }
  const Specialization def = spec(base.arch, base.params[P_N], base.params[P_K], static_cast<DType>(base.params[P_OUT]));
  out.push_back(def);
  for (int stages : {5, 4}) {
    Specialization s = def;
    s.config[C_STAGES] = stages;
    out.push_back(s);
  }
}

// The preset's projections as FP8Linear would run them (bf16 out): attention output (heads·head_dim → hidden) and
// the dense MLP's down projection (intermediate → hidden), where K fits; and the b prep kernel.
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  if (!has_wgmma(arch)) return;
  out.push_back(prep_spec(arch));
  auto add = [&](int64_t N, int64_t K) {
    if (N <= 0 || N > kMaxN || K <= 0 || K > kMaxK || K % 16 != 0) return;
    for (const auto& s : out)
      if (s.kernel == kGemm && s.params[P_N] == N && s.params[P_K] == K) return;
    out.push_back(spec(arch, N, K, DType::bf16));
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

KILN_REGISTER_FAMILY(fp8_gemm, g_family)

void fp8_gemm(Runtime& rt, const TensorRef& a, const TensorRef& b, const TensorRef* a_scale, const TensorRef* b_scale,
              const TensorRef& c, Stream stream) {
  const Check ck{"fp8_gemm"};
  ck.dtype("a", a, {DType::u8, DType::f32, DType::bf16, DType::f16});
  ck.dtype("b", b, {DType::u8, DType::f32, DType::bf16, DType::f16});
  if (a.ndim != 2) ck.shape_error("a", fmt::format("expected a 2-D [M, K] tensor, got shape {}", shape_str(a)));
  if (b.ndim != 2) ck.shape_error("b", fmt::format("expected a 2-D [K, N] tensor, got shape {}", shape_str(b)));
  const int64_t K = a.shape[1], N = b.shape[1];
  if (b.shape[0] != K)
    ck.shape_error("b", fmt::format("expected [K, N] with K = {} (a's columns), got shape {}", K, shape_str(b)));
  if (K < 16 || K > kMaxK || K % 16 != 0)
    ck.shape_error("a", fmt::format("expected K (a's columns) a multiple of 16 in [16, {}] (TMA rows of 16-byte "
                                    "multiples; the exact int32 sum), got {}",
                                    kMaxK, K));
  if (N < 1 || N > kMaxN) ck.shape_error("b", fmt::format("expected N (b's columns) in [1, {}], got {}", kMaxN, N));
  const bool a_codes = a.dtype == DType::u8, b_codes = b.dtype == DType::u8;
  const RowView ar = as_rows(ck, "a", a, 16);
  if (!a_codes) ck.contiguous("a", a);  // quantize_fp8 reads it as one flat tensor
  ck.fits_int32("a", ar.rows, "M (rows)");
  ck.contiguous("b", b);
  if (b.numel() > 0) ck.pointer("b", b, 16);
  check_scale(ck, "a_scale", a_scale, a_codes, "a");
  check_scale(ck, "b_scale", b_scale, b_codes, "b");
  ck.dtype("c", c, {DType::f16, DType::bf16, DType::f32});
  if (c.ndim != 2 || c.shape[0] != ar.rows || c.shape[1] != N)
    ck.shape_error("c", fmt::format("expected shape [{}, {}] (M from a, N from b), got {}", ar.rows, N, shape_str(c)));
  const RowView cr = as_rows(ck, "c", c, static_cast<int>(dtype_size(c.dtype)));
  const int64_t M = ar.rows;
  if (M == 0) return;

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  if (!has_wgmma(arch))
    throw DeviceError(fmt::format("fp8_gemm: needs an sm_90 (Hopper) device for its TMA + wgmma kernel; the target is "
                                  "{}",
                                  arch.name()));
  const int sms = impl.device().sm_count;
  const Specialization s = impl.tuned(spec(arch, N, K, c.dtype), M);
  const int64_t m_tiles = (M + kBM - 1) / kBM, tiles = m_tiles * ((N + 127) / 128);
  ck.fits_int32("a", tiles + sms, "the tile count ceil(M/128)·ceil(N/128) + the SM count");

  // Scratch: bᵀ [N, K] int8 | colsum [N] int32 | (a float) a codes [M, K] + scale | (b float) b codes [K, N] + scale.
  auto up16 = [](size_t v) { return (v + 15) / 16 * 16; };
  const size_t off_col = up16(static_cast<size_t>(N * K)), off_a = up16(off_col + 4 * N);
  const size_t off_as = up16(off_a + (a_codes ? 0 : static_cast<size_t>(M * K)));
  const size_t off_b = off_as + 16, off_bs = up16(off_b + (b_codes ? 0 : static_cast<size_t>(K * N)));
  const size_t total = off_bs + 16;
  static const char owner = 0;
  const ScratchBuffer scratch = impl.scratch(&owner, total, stream);
  const CUdeviceptr base = scratch.ptr;
  try {
    const void* a_data = a.data;
    const float* a_s = a_codes ? static_cast<const float*>(a_scale->data) : reinterpret_cast<const float*>(base + off_as);
    int64_t a_pitch = ar.stride;
    if (!a_codes) {
      quantize_fp8(rt, a, TensorRef::contiguous(reinterpret_cast<void*>(base + off_a), DType::u8, {M, K}),
                   TensorRef::contiguous(reinterpret_cast<void*>(base + off_as), DType::f32, {1}), stream);
      a_data = reinterpret_cast<const void*>(base + off_a);
      a_pitch = K;
    }
    const unsigned char* b_data = static_cast<const unsigned char*>(b.data);
    const float* b_s = b_codes ? static_cast<const float*>(b_scale->data) : reinterpret_cast<const float*>(base + off_bs);
    if (!b_codes) {
      quantize_fp8(rt, b, TensorRef::contiguous(reinterpret_cast<void*>(base + off_b), DType::u8, {K, N}),
                   TensorRef::contiguous(reinterpret_cast<void*>(base + off_bs), DType::f32, {1}), stream);
      b_data = reinterpret_cast<const unsigned char*>(base + off_b);
    }
    // bᵀ as int8 and its column sums.
    check(driver().cuMemsetD32Async(base + off_col, 0, static_cast<size_t>(N), reinterpret_cast<CUstream>(stream)),
          "cuMemsetD32Async (colsum)");
    Fp8BPrepArgs p{b_data, reinterpret_cast<signed char*>(base), reinterpret_cast<int*>(base + off_col),
                   static_cast<int>(K), static_cast<int>(N)};
    LaunchDims pd;
    pd.grid[0] = static_cast<unsigned>((N + 63) / 64);
    pd.grid[1] = static_cast<unsigned>((K + 63) / 64);
    pd.block[0] = 256;
    impl.launch(prep_spec(arch), pd, stream, p);

    Fp8GemmArgs g{};
    encode_tma_2d(g.tma, a_data, DType::u8, K, M, a_pitch, kBM);
    encode_tma_2d(g.tmb, reinterpret_cast<const void*>(base), DType::u8, K, N, K, s.config[C_BN]);
    const int64_t es = static_cast<int64_t>(dtype_size(c.dtype));
    g.staged = es == 2 && N % 8 == 0 && (cr.stride * es) % 16 == 0 && reinterpret_cast<uintptr_t>(c.data) % 16 == 0;
    if (g.staged) encode_tma_2d(g.tmo, c.data, c.dtype, N, M, cr.stride * es, 64);
    g.colsum = reinterpret_cast<const int*>(base + off_col);
    g.a_scale = a_s;
    g.b_scale = b_s;
    g.out = c.data;
    g.out_stride = cr.stride;
    g.M = static_cast<int>(M);
    g.m_tiles = static_cast<int>(m_tiles);
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(std::min<int64_t>(tiles, sms));
    d.block[0] = 384;
    d.smem = static_cast<unsigned>(smem_bytes(s));
    impl.launch(s, d, stream, g);
  } catch (...) {
    impl.release_scratch(scratch, stream);
    throw;
  }
  impl.release_scratch(scratch, stream);
}

}  // namespace kiln
