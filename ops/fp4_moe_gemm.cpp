// Host recipe: the FP4 MoE's grouped GEMM, W4A16 (templates/kiln/fp4_moe_gemm.cuh; contract ops/fp4_moe_internal.hpp)
// and the weights' prepack into its layout (kiln/fp4_moe_gemm_args.h). Spec: fp4-moe.md §5, §6.2, §7, §12.3.
// sm_90a only (TMA, bulk copies, register-A wgmma).
#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "kiln/fp4_moe_gemm_args.h"
#include "kiln/ops/fp4_moe.hpp"
#include "ops/fp4_moe_internal.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/tensor_map.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/fp4_moe_gemm.cpp: a runnable grouped GEMM (also the tuner's instance).
BenchInstance fp4_moe_gemm_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);
// The default ring depth of a token tile (below; tested on the CPU).
int fp4_moe_gemm_default_stages(int token_tile, bool gated);
// The split-K ranks of a launch (below; tested on the CPU).
int fp4_moe_gemm_split(int64_t units, int64_t k_tiles, int64_t slots, int forced);
}  // namespace detail

namespace {
using namespace detail;

enum : uint32_t { kGemm = 0, kPrepack = 1 };
enum { P_N, P_FMT, P_ACT };  // prepack: P_FMT, P_ACT = gated (0 / 1)
enum { C_STAGES, C_SPLIT };  // split: split-K ranks (cluster size) 1, 2 or 4; 0 = by the grid (fp4_moe_gemm_split)

constexpr int kMaxStages = 8;
constexpr int kSmemLimit = 227 * 1024;
// The shared memory a CTA may take so that the kernel's CTAs an SM (fp4_moe_gemm_ctas_per_sm) fit in an SM's 228 KiB
// less the 1 KiB the driver reserves a CTA.
int smem_limit(int N) {
  const int per_sm = fp4_moe_gemm_ctas_per_sm(N);
  return per_sm == 1 ? kSmemLimit : 228 * 1024 / per_sm - 1024;
}

// A GEMM specialization with no token tile (the all-zero parameters of a family-level compile, compile_test's
// FamiliesOutsideModelsCompile: no model config names an FP4 MoE, so the family enumerates nothing) stands for the
// 64-token nvfp4 Identity kernel at its default ring.
Specialization normalized(const Specialization& in) {
  Specialization s = in;
  if (s.kernel == kGemm && s.params[P_N] == 0) {
    s.params[P_N] = 64;
    s.params[P_ACT] = static_cast<int64_t>(Fp4MoeActivation::Identity);
    s.config[C_STAGES] = fp4_moe_gemm_default_stages(64, false);
  }
  return s;
}

void render(const Specialization& in, std::string& source, std::string& name) {
  source = "#include \"kiln/fp4_moe_gemm.cuh\"\n";
  const Specialization s = normalized(in);
  const auto& p = s.params;
  if (s.kernel == kPrepack)
    name = fmt::format("kiln::fp4_moe_prepack_kernel<{}, {}>", p[P_FMT], p[P_ACT]);
  else
    name = fmt::format("kiln::fp4_moe_gemm_kernel<{}, {}, {}, {}>", p[P_N], p[P_FMT], p[P_ACT], s.config[C_STAGES]);
}

bool gated_act(int64_t act) { return act == 3 || act == 4; }

// The kernel's layout: 1 KiB alignment slack + STAGES × (two activation boxes of N rows × 128 bytes + the packed chunk
// rounded up to 1 KiB) + two staging buffers of N × (2·OC + 16) bytes (OC 32 gated, 64 otherwise) + the mbarriers.
int gemm_smem(int N, bool gated, int stages) {
  const int chunk = kFp4MoeCodeBytes + 1024;  // nvfp4's 9216; mxfp4's 8704 rounds up to it
  const int oc = gated ? 32 : 64;
  return 1024 + stages * (2 * N * 128 + chunk) + 2 * N * (2 * oc + 16) + 16 * stages;
}

int smem_bytes(const Specialization& in) {
  if (in.kernel == kPrepack) return 0;
  const Specialization s = normalized(in);
  return gemm_smem(static_cast<int>(s.params[P_N]), gated_act(s.params[P_ACT]), s.config[C_STAGES]);
}

void search_space(const Specialization& s, std::vector<Specialization>& out);

// No enumerate: a model config does not say that its MoE runs FP4 weights (nor their format or activation), so
// `kiln prewarm --model` compiles none of this family.
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);

FamilyDef g_family{"fp4_moe_gemm", {"gemm", "prepack"}, {"N", "format", "act"}, {"stages", "split"}, render, smem_bytes,
                   enumerate,      search_space,        fp4_moe_gemm_tune_instance};

}  // namespace

// The deepest ring (≤ 8 stages) that fits: N = 128: 4 stages (5 gated), N = 64: 8; N = 32 (two CTAs an SM): 6;
// N = 16 (three CTAs an SM): 5.
int detail::fp4_moe_gemm_default_stages(int token_tile, bool gated) {
  const int limit = smem_limit(token_tile);
  int st = kMaxStages;
  while (st > 2 && gemm_smem(token_tile, gated, st) > limit) --st;
  return st;
}

// Split-K ranks for `units` (token tiles × row blocks) CTAs of K tiles `k_tiles`: `forced` (1, 2 or 4) if given,
// else the largest of 1, 2, 4 whose grid still fits the GPU in one wave (`slots` = SMs × CTAs an SM) with ≥ 4 K
// tiles a rank — decode's few tiles (gpt-oss, one token: GEMM1 180, GEMM2 92 CTAs on 132 SMs) spread over every SM.
// Never more ranks than K tiles (each rank needs one).
int detail::fp4_moe_gemm_split(int64_t units, int64_t k_tiles, int64_t slots, int forced) {
  int S = 1;
  if (forced > 0) {
    S = forced;
  } else {
    while (S < 4 && units * 2 * S <= slots && k_tiles / (2 * S) >= 4) S *= 2;
  }
  while (S > 1 && S > k_tiles) S /= 2;
  return S;
}

namespace {

Specialization gemm_spec(Arch arch, int N, Fp4WeightFormat f, int64_t act) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kGemm;
  s.params[P_N] = N;
  s.params[P_FMT] = static_cast<int64_t>(f);
  s.params[P_ACT] = act;
  s.config[C_STAGES] = fp4_moe_gemm_default_stages(N, gated_act(act));
  return s;
}

Specialization prepack_spec(Arch arch, Fp4WeightFormat f, bool gated) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kPrepack;
  s.params[P_FMT] = static_cast<int64_t>(f);
  s.params[P_ACT] = gated ? 1 : 0;
  return s;
}

// A model's FP4 MoE: both GEMMs at every token tile the layer may pick (it picks by T·K / E_l at run time) and the
// two prepacks (W1 gated or not, W2 plain).
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  const std::optional<Fp4MoeModel> f = fp4_moe_of(m);
  if (!f) return;
  const int64_t act = static_cast<int64_t>(f->activation);
  for (int N : {16, 32, 64, 128}) {
    out.push_back(gemm_spec(arch, N, f->weights, act));
    out.push_back(gemm_spec(arch, N, f->weights, static_cast<int64_t>(Fp4MoeActivation::Identity)));
  }
  out.push_back(prepack_spec(arch, f->weights, gated_act(act)));
  out.push_back(prepack_spec(arch, f->weights, false));
}

// The default plus shallower rings (4 … the default, and 3), all within 227 KiB.
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  if (base.kernel == kPrepack) {
    out.push_back(base);
    return;
  }
  const Specialization def = gemm_spec(base.arch, static_cast<int>(base.params[P_N]),
                                       static_cast<Fp4WeightFormat>(base.params[P_FMT]), base.params[P_ACT]);
  out.push_back(def);
  for (int st : {6, 4, 3}) {
    Specialization s = def;
    s.config[C_STAGES] = st;
    if (st < def.config[C_STAGES] && smem_bytes(s) <= kSmemLimit) out.push_back(s);
  }
  for (int split : {1, 2, 4}) {  // the default picks by the grid; fixed splits for the token counts it misjudges
    Specialization s = def;
    s.config[C_SPLIT] = split;
    out.push_back(s);
  }
}

const char* format_name(Fp4WeightFormat f) { return f == Fp4WeightFormat::nvfp4 ? "nvfp4" : "mxfp4"; }

void check_format(const Check& ck, Fp4WeightFormat f, const char* arg) {
  if (f != Fp4WeightFormat::nvfp4 && f != Fp4WeightFormat::mxfp4)
    ck.invalid(arg, fmt::format("expected nvfp4 (0) or mxfp4 (1), got {}", static_cast<int>(f)));
}

// rows / k of a weight tensor the GEMM can take: K a multiple of the scale block (16 nvfp4, 32 mxfp4); gated rows =
// 2I with I a multiple of 8, else rows a multiple of 8 (the epilogue's 16-byte stores).
void check_dims(const Check& ck, const char* arg, int64_t experts, int64_t rows, int64_t k, Fp4WeightFormat f,
                bool gated) {
  const int64_t blk = f == Fp4WeightFormat::nvfp4 ? 16 : 32;
  if (experts < 1 || experts > 4096)
    ck.shape_error(arg, fmt::format("expected 1 … 4096 local experts, got {}", experts));
  if (k < blk || k % blk != 0 || k > (int64_t{1} << 20))
    ck.shape_error(arg, fmt::format("expected K a positive multiple of {} (the {} block) up to 2^20, got {}", blk,
                                    format_name(f), k));
  const int64_t mult = gated ? 16 : 8;
  if (rows < mult || rows % mult != 0 || rows > 65536 * 64)
    ck.shape_error(arg, fmt::format("expected {} a positive multiple of {}{}, got {}", gated ? "rows (2I)" : "rows",
                                    mult, gated ? " (I a multiple of 8)" : "", rows));
}

int64_t k_tiles_of(int64_t k) { return (k + kFp4MoeKTile - 1) / kFp4MoeKTile; }
int64_t row_blocks_of(int64_t rows) { return (rows + kFp4MoeBlockRows - 1) / kFp4MoeBlockRows; }
int64_t chunk_bytes(Fp4WeightFormat f) {
  return f == Fp4WeightFormat::nvfp4 ? Fp4MoeChunk<0>::kBytes : Fp4MoeChunk<1>::kBytes;
}

}  // namespace

KILN_REGISTER_FAMILY(fp4_moe_gemm, g_family)

int64_t fp4_moe_packed_bytes(int64_t experts, int64_t rows, int64_t k, Fp4WeightFormat format) {
  const Check ck{"fp4_moe_packed_bytes"};
  check_format(ck, format, "format");
  if (experts < 0 || rows < 0 || k < 0)
    ck.shape_error("rows", fmt::format("expected non-negative experts, rows and k, got {}, {}, {}", experts, rows, k));
  return experts * row_blocks_of(rows) * k_tiles_of(k) * chunk_bytes(format);
}

Fp4MoeWeights fp4_moe_prepack(Runtime& rt, const TensorRef& weights, const TensorRef& scales, Fp4WeightFormat format,
                              bool gated, const TensorRef& packed, Stream stream) {
  const Check ck{"fp4_moe_prepack"};
  check_format(ck, format, "format");
  ck.dtype("weights", weights, {DType::u8});
  if (weights.ndim != 3)
    ck.shape_error("weights", fmt::format("expected a 3-D [E_l, rows, K/2] uint8 tensor, got shape {}",
                                          shape_str(weights)));
  const int64_t E = weights.shape[0], R = weights.shape[1], K = 2 * weights.shape[2];
  check_dims(ck, "weights", E, R, K, format, gated);
  ck.tensor("weights", weights, {DType::u8}, {E, R, K / 2}, 16);
  const int64_t blk = format == Fp4WeightFormat::nvfp4 ? 16 : 32;
  ck.tensor("scales", scales, {DType::u8, DType::e4m3}, {E, R, K / blk}, 1);
  const int64_t bytes = fp4_moe_packed_bytes(E, R, K, format);
  ck.dtype("packed", packed, {DType::u8});
  if (packed.numel() < bytes)
    ck.shape_error("packed", fmt::format("expected at least fp4_moe_packed_bytes = {} bytes, got shape {}", bytes,
                                         shape_str(packed)));
  ck.contiguous("packed", packed);
  ck.pointer("packed", packed, 256);

  Fp4MoeWeights w;
  w.data = packed.data;
  w.experts = E;
  w.rows = R;
  w.k = K;
  w.format = format;
  w.gated = gated;

  auto& impl = rt.impl();
  const Specialization s = prepack_spec(impl.target_arch(), format, gated);
  const Kernel& k = impl.kernel(s);
  Fp4MoePrepackArgs a{};
  a.codes = static_cast<const unsigned char*>(weights.data);
  a.scales = static_cast<const unsigned char*>(scales.data);
  a.packed = static_cast<unsigned char*>(packed.data);
  a.rows = static_cast<int>(R);
  a.k = static_cast<int>(K);
  a.row_blocks = static_cast<int>(row_blocks_of(R));
  a.k_tiles = static_cast<int>(k_tiles_of(K));
  a.units = static_cast<long long>(E * a.row_blocks * a.k_tiles * 576);
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>(impl.persistent_grid(k, 256, 0, (a.units + 255) / 256));
  d.block[0] = 256;
  impl.launch(k, d, stream, a);
  return w;
}

namespace detail {

// Average rows an expert ≤ 16: 16; ≤ 32: 32; ≤ 128: 64; else 128 (a smaller tile wastes less padding and MMA work on
// short segments; a larger one dequantizes each weight tile for more tokens).
int fp4_moe_gemm_token_tile(Runtime&, int64_t rows_cap, int64_t experts) {
  const Check ck{"fp4_moe_gemm_token_tile"};
  if (experts < 1) ck.invalid("experts", fmt::format("expected ≥ 1 local experts, got {}", experts));
  if (rows_cap < 0) ck.invalid("rows_cap", fmt::format("expected ≥ 0, got {}", rows_cap));
  const int64_t avg = (rows_cap + experts - 1) / experts;
  return avg <= 16 ? 16 : avg <= 32 ? 32 : avg <= 128 ? 64 : 128;
}

void fp4_moe_gemm(Runtime& rt, const Fp4MoeGemmCall& c, Stream stream) {
  const Check ck{"fp4_moe_gemm"};
  const Fp4MoeWeights& w = c.w;
  check_format(ck, w.format, "w.format");
  check_dims(ck, "w", w.experts, w.rows, w.k, w.format, w.gated);
  if (w.data == nullptr || reinterpret_cast<uintptr_t>(w.data) % 256 != 0)
    ck.invalid("w", fmt::format("expected w.data a non-null 256-byte-aligned device pointer (fp4_moe_prepack's), got "
                                "{}",
                                w.data));
  int64_t act_code = static_cast<int64_t>(Fp4MoeActivation::Identity);  // GEMM2: the plain epilogue
  if (c.gemm1) {
    const Fp4MoeActivation a = c.activation;
    if (a != Fp4MoeActivation::Swiglu && a != Fp4MoeActivation::Geglu && a != Fp4MoeActivation::Relu2 &&
        a != Fp4MoeActivation::Identity)
      ck.invalid("activation", fmt::format("expected Swiglu (3), Geglu (4), Relu2 (6) or Identity (7), got {}",
                                           static_cast<int>(a)));
    const bool gated = a == Fp4MoeActivation::Swiglu || a == Fp4MoeActivation::Geglu;
    if (gated != w.gated)
      ck.invalid("w", fmt::format("expected w.gated = {} for activation {} (gated activations take prepacked 2I-row "
                                  "weights), got {}",
                                  gated, static_cast<int>(a), w.gated));
    act_code = static_cast<int64_t>(a);
  } else if (w.gated) {
    ck.invalid("w", "expected w.gated = false for GEMM2 (gemm1 = false), got true");
  }
  if (act_code != static_cast<int64_t>(Fp4MoeActivation::Swiglu)) {
    if (c.alpha != nullptr) ck.invalid("alpha", "expected null: alpha / beta / limit are Swiglu's (GEMM1) only");
    if (c.beta != nullptr) ck.invalid("beta", "expected null: alpha / beta / limit are Swiglu's (GEMM1) only");
    if (c.limit != nullptr) ck.invalid("limit", "expected null: alpha / beta / limit are Swiglu's (GEMM1) only");
  }
  const int N = c.token_tile;
  if (N != 16 && N != 32 && N != 64 && N != 128)
    ck.invalid("token_tile", fmt::format("expected 16, 32, 64 or 128 (fp4_moe_gemm_token_tile's), got {}", N));
  if (c.split != 0 && c.split != 1 && c.split != 2 && c.split != 4)
    ck.invalid("split", fmt::format("expected 0 (the tuned or default choice), 1, 2 or 4, got {}", c.split));
  if (c.rows_cap < 0 || c.rows_cap > (int64_t{1} << 30))
    ck.invalid("rows_cap", fmt::format("expected 0 … 2^30, got {}", c.rows_cap));
  const int64_t out_cols = w.gated ? w.rows / 2 : w.rows;
  if (c.act_ld < w.k || c.act_ld % 8 != 0)
    ck.invalid("act_ld", fmt::format("expected a multiple of 8 elements ≥ w.k = {}, got {}", w.k, c.act_ld));
  if (c.out_ld < out_cols || c.out_ld % 8 != 0)
    ck.invalid("out_ld", fmt::format("expected a multiple of 8 elements ≥ {} (the output columns), got {}", out_cols,
                                     c.out_ld));
  if (c.rows_cap == 0) return;
  if (c.act == nullptr || reinterpret_cast<uintptr_t>(c.act) % 16 != 0)
    ck.invalid("act", fmt::format("expected a non-null 16-byte-aligned device pointer, got {}", c.act));
  if (c.out == nullptr || reinterpret_cast<uintptr_t>(c.out) % 16 != 0)
    ck.invalid("out", fmt::format("expected a non-null 16-byte-aligned device pointer, got {}", c.out));
  if (c.expert_offsets == nullptr) ck.invalid("expert_offsets", "expected a device pointer to E_l + 1 int32, got null");
  if (c.expert_counts == nullptr) ck.invalid("expert_counts", "expected a device pointer to E_l int32, got null");

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  if (!has_wgmma(arch))
    throw DeviceError(fmt::format("fp4_moe_gemm: needs an sm_90a (Hopper) device for its TMA + wgmma kernel; the "
                                  "target is {}",
                                  arch.name()));
  const Specialization s = impl.tuned(gemm_spec(arch, N, w.format, act_code), c.rows_cap);
  const int64_t kt = k_tiles_of(w.k), rbs = row_blocks_of(w.rows);

  Fp4MoeGemmArgs a{};
  encode_tma_2d(a.tma, c.act, DType::bf16, w.k, c.rows_cap, c.act_ld * 2, N);
  a.w = static_cast<const unsigned char*>(w.data);
  a.expert_bytes = static_cast<long long>(rbs * kt * chunk_bytes(w.format));
  a.k_tiles = static_cast<int>(kt);
  a.row_blocks = static_cast<int>(rbs);
  a.experts = static_cast<int>(w.experts);
  a.offsets = c.expert_offsets;
  a.counts = c.expert_counts;
  a.row_scale = c.row_scale;
  a.bias = c.bias;
  a.scale_a = c.scale_a;
  a.scale_b = c.scale_b;
  a.alpha = c.alpha;
  a.beta = c.beta;
  a.limit = c.limit;
  a.out = c.out;
  a.out_ld = static_cast<long long>(c.out_ld);
  a.out_cols = static_cast<int>(out_cols);
  a.bias_ld = static_cast<int>(w.rows);
  a.half_rows = static_cast<int>(w.rows / 2);
  LaunchDims d;
  const int64_t tiles = c.tiles_cap > 0 ? std::min((c.rows_cap + N - 1) / N, c.tiles_cap) : (c.rows_cap + N - 1) / N;
  const int forced = c.split > 0 ? c.split : s.config[C_SPLIT];
  const int S =
      fp4_moe_gemm_split(tiles * rbs, kt, int64_t{impl.device().sm_count} * fp4_moe_gemm_ctas_per_sm(N), forced);
  if (tiles * rbs * S > int64_t{0x7fffffff})
    ck.invalid("rows_cap", fmt::format("expected token tiles × row blocks × split ≤ 2^31 − 1 (one grid dimension), got "
                                       "{} × {} × {}",
                                       tiles, rbs, S));
  d.grid[0] = static_cast<unsigned>(tiles * rbs * S);
  d.cluster[0] = static_cast<unsigned>(S);
  d.pdl = c.pdl;
  d.block[0] = static_cast<unsigned>(fp4_moe_gemm_threads(N));
  d.smem = static_cast<unsigned>(smem_bytes(s));
  impl.launch(s, d, stream, a);
}

}  // namespace detail
}  // namespace kiln
