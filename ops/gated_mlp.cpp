// Host recipe: fused gated MLP expansion out = act(x · W_gᵀ) ⊙ (x · W_uᵀ) (templates/kiln/gated_mlp.cuh).
// Spec: ../shared/spec/triton-ops.md §3 (fused_gated_mlp). sm_90a only (TMA + wgmma).
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <tuple>
#include <utility>

#include "kiln/gated_mlp_args.h"
#include "kiln/ops/gated_mlp.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/tensor_map.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/gated_mlp.cpp: a runnable op at x [M, H] (also the tuner's instance).
BenchInstance gated_mlp_instance(Runtime& rt, int64_t M, int64_t H, int64_t I, DType dtype, GatedActivation act);
// Measurement only (bench rows `… grid=tiles`): launch one CTA a tile instead of the persistent grid.
std::atomic<bool> gated_mlp_tile_grid_force{false};
// Measurement only (bench rows `… store=direct`): the epilogue stores from the registers even where it could stage.
std::atomic<bool> gated_mlp_direct_store_force{false};
// The op's default (bn, stages) for I output columns and M rows on `sms` SMs (below; tested on the CPU).
std::pair<int, int> gated_mlp_default_config(int64_t I, int64_t M, int sms);
}  // namespace detail

namespace {
using namespace detail;

enum : uint32_t { kFwd = 0 };
enum { P_H, P_I, P_ACT, P_DTYPE };
enum { C_BN, C_STAGES };

constexpr int64_t kMaxDim = 65536;
constexpr int kBM = 128;


void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/gated_mlp.cuh\"\n";
  const auto& p = s.params;
  name = fmt::format("kiln::gated_mlp_kernel<{}, {}, {}, {}, {}, {}>", p[P_H], p[P_I], p[P_ACT], cxx_type(p[P_DTYPE]),
                     s.config[C_BN], s.config[C_STAGES]);
}

// 1 KiB alignment slack + the ring (x tile 16 KiB + two weight tiles of BN rows × 128 bytes a stage) + for 16-bit
// dtypes the two warpgroups' 64 × BN staging buffers of the TMA-store epilogue + the ring's mbarriers.
int smem_bytes(const Specialization& s) {
  const int staging = dtype_size(static_cast<DType>(s.params[P_DTYPE])) == 2 ? 2 * 64 * s.config[C_BN] * 2 : 0;
  return 1024 + s.config[C_STAGES] * (kBM * 128 + 2 * s.config[C_BN] * 128) + staging + 16 * s.config[C_STAGES];
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);

FamilyDef g_family{"gated_mlp", {"fwd"}, {"H", "I", "act", "dtype"}, {"bn", "stages"}, render, smem_bytes,
                   enumerate,   search_space, tune_instance};

}  // namespace

// The heuristic default for M rows on `sms` SMs: the 128-column tile (a 128 × (128 + 128) MMA tile, 4 stages, 225
// KiB of shared memory with the staging buffers) or the 64-column one (6 stages), whichever a wave model gives less
// time: a wave of 64-column tiles takes 0.53 of a wave of 128-column ones (H200, session 29, persistent grid and TMA
// stores, H 2048, I 5120: 11.8–12.2 against 22.2–23.2 µs a wave at M = 1024 … 8192), and each takes ceil(tiles /
// sms) waves. So at I = 5120 M ≤ 1024 takes 64 columns (M = 1024: 61.0 against 69.5 µs; M = 128: 16.6 against
// 25.9) and M ≥ 2048 128 (116.1 against 121.6; 8192: 443.9 against 459.5). I ≤ 64: 64 columns. M < 0 (no token
// count: the search space's first point, prewarm) or sms ≤ 0: 128 columns where I > 64.
std::pair<int, int> detail::gated_mlp_default_config(int64_t I, int64_t M, int sms) {
  bool narrow = I <= 64;
  if (!narrow && M > 0 && sms > 0) {
    const int64_t m_tiles = (M + kBM - 1) / kBM;
    const int64_t w128 = (m_tiles * ((I + 127) / 128) + sms - 1) / sms;
    const int64_t w64 = (m_tiles * ((I + 63) / 64) + sms - 1) / sms;
    narrow = 0.53 * static_cast<double>(w64) < static_cast<double>(w128);
  }
  return narrow ? std::pair{64, 6} : std::pair{128, 4};
}

namespace {

Specialization spec(Arch arch, int64_t H, int64_t I, GatedActivation act, DType t, int64_t M = -1, int sms = 0) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kFwd;
  s.params[P_H] = H;
  s.params[P_I] = I;
  s.params[P_ACT] = static_cast<int64_t>(act);
  s.params[P_DTYPE] = static_cast<int64_t>(t);
  std::tie(s.config[C_BN], s.config[C_STAGES]) = gated_mlp_default_config(I, M, sms);
  return s;
}

// bn 128 × 3–4 stages, bn 64 × 4–6 stages (all within 227 KiB).
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  const Specialization def = spec(base.arch, base.params[P_H], base.params[P_I],
                                  static_cast<GatedActivation>(base.params[P_ACT]),
                                  static_cast<DType>(base.params[P_DTYPE]));
  out.push_back(def);
  if (!has_wgmma(base.arch)) return;
  Specialization s = def;
  for (const auto& [bn, stages] : {std::pair{128, 4}, {128, 3}, {64, 6}, {64, 5}, {64, 4}}) {
    s.config[C_BN] = bn;
    s.config[C_STAGES] = stages;
    if (s.config != def.config && smem_bytes(s) <= 227 * 1024) out.push_back(s);
  }
}

// What `kiln prewarm` compiles (sm_90a only): the dense MLP (hidden_size → intermediate_size) and the shared experts'
// (hidden_size → moe_intermediate_size · num_shared_experts), bf16, SiLU, each with both defaults the op chooses from
// by M (128 and 64 columns; 64 alone where I ≤ 64).
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  if (!has_wgmma(arch) || m.hidden_size <= 0 || m.hidden_size > kMaxDim || m.hidden_size % 8 != 0) return;
  auto add = [&](int64_t I) {
    if (I <= 0 || I > kMaxDim) return;
    for (const auto& s : out)
      if (s.family == &g_family && s.params[P_I] == I) return;
    out.push_back(spec(arch, m.hidden_size, I, GatedActivation::silu, DType::bf16));
    if (I > 64) {  // the small-M default too (the op picks by M at run time)
      Specialization n = out.back();
      n.config[C_BN] = 64;
      n.config[C_STAGES] = 6;
      out.push_back(n);
    }
  };
  add(m.intermediate_size);
  add(static_cast<int64_t>(m.moe_intermediate_size) * m.num_shared_experts);
}

BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  return gated_mlp_instance(rt, std::max<int64_t>(tokens, 1), s.params[P_H], s.params[P_I],
                            static_cast<DType>(s.params[P_DTYPE]), static_cast<GatedActivation>(s.params[P_ACT]));
}

}  // namespace

KILN_REGISTER_FAMILY(gated_mlp, g_family)

void fused_gated_mlp(Runtime& rt, const TensorRef& x, const TensorRef& gate_weight, const TensorRef& up_weight,
                     const TensorRef& out, GatedActivation activation, Stream stream) {
  const Check ck{"fused_gated_mlp"};
  if (activation != GatedActivation::silu && activation != GatedActivation::gelu)
    ck.invalid("activation", fmt::format("expected silu (0) or gelu (1), got {}", static_cast<int>(activation)));
  ck.dtype("x", x, {DType::bf16, DType::f16, DType::f32});
  const DType t = x.dtype;
  const int64_t es = static_cast<int64_t>(dtype_size(t));
  if (x.ndim != 2 && x.ndim != 3)
    ck.shape_error("x", fmt::format("expected a 2-D [M, H] or 3-D [B, S, H] tensor, got shape {}", shape_str(x)));
  const int64_t H = x.shape[x.ndim - 1];  // checked before the rows: its message says more than their alignment
  if (H < 1 || H > kMaxDim || (H * es) % 16 != 0)
    ck.shape_error("x", fmt::format("expected the hidden size H (last dim) in [1, {}] with H·{} bytes a multiple of 16 "
                                    "(a multiple of {} {} elements), got {}",
                                    kMaxDim, es, 16 / es, dtype_name(t), H));
  const RowView xr = as_rows(ck, "x", x, 16);  // TMA: rows 16-byte aligned
  ck.fits_int32("x", xr.rows, "M (rows)");

  ck.dtype("gate_weight", gate_weight, {t});
  if (gate_weight.ndim != 2 || gate_weight.shape[1] != H)
    ck.shape_error("gate_weight", fmt::format("expected shape [I, {}] (H from x), got {}", H, shape_str(gate_weight)));
  const int64_t I = gate_weight.shape[0];
  if (I < 1 || I > kMaxDim)
    ck.shape_error("gate_weight", fmt::format("expected the intermediate size I (first dim) in [1, {}], got {}",
                                              kMaxDim, I));
  ck.tensor("gate_weight", gate_weight, {t}, {I, H}, 16);
  ck.tensor("up_weight", up_weight, {t}, {I, H}, 16);  // gate_weight's shape

  // out: any row stride ≥ I (the epilogue stores element by element where pairs would be misaligned).
  const RowView orr = as_rows_like(ck, "out", out, t, xr, I, "I (from the weights)", static_cast<int>(es));
  const int64_t M = xr.rows;
  if (M == 0) return;
  const int64_t m_tiles = (M + kBM - 1) / kBM;

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  if (!has_wgmma(arch))
    throw DeviceError(fmt::format("fused_gated_mlp: needs an sm_90 (Hopper) device for its TMA + wgmma kernel; the "
                                  "target is {}",
                                  arch.name()));
  const int sms = impl.device().sm_count;
  const Specialization s = impl.tuned(spec(arch, H, I, activation, t, M, sms), M);
  const int64_t n_tiles = (I + s.config[C_BN] - 1) / s.config[C_BN], tiles = m_tiles * n_tiles;
  // The persistent loop's last step (t + grid) stays in int32 too.
  ck.fits_int32("x", tiles + sms, "the tile count ceil(M/128)·ceil(I/BN) + the SM count");

  GatedMlpArgs a{};
  encode_tma_2d(a.tmx, x.data, t, H, M, xr.stride * es, kBM);
  encode_tma_2d(a.tmg, gate_weight.data, t, H, I, H * es, s.config[C_BN]);
  encode_tma_2d(a.tmu, up_weight.data, t, H, I, H * es, s.config[C_BN]);
  a.out = out.data;
  a.out_stride = orr.stride;
  // The TMA-store epilogue: 16-bit out with 16-byte-aligned rows (TMA's global address and pitch rule) and I a
  // multiple of 8: the copy engine clips a box at the tensor's last column only to a 16-byte boundary (measured:
  // with I = 777 and a row stride of 784 it wrote columns 777 … 783 of the row padding), so a partial last 16 bytes
  // takes the register stores.
  a.staged = es == 2 && (I * es) % 16 == 0 && (orr.stride * es) % 16 == 0 &&
             reinterpret_cast<uintptr_t>(out.data) % 16 == 0 &&
             !gated_mlp_direct_store_force.load(std::memory_order_relaxed);
  if (a.staged) encode_tma_2d(a.tmo, out.data, t, I, M, orr.stride * es, 64);
  a.M = static_cast<int>(M);
  a.m_tiles = static_cast<int>(m_tiles);
  LaunchDims d;
  // Persistent: one CTA an SM (every config takes over half of the 227 KiB: one fits), each taking every grid-th
  // tile, so its ring runs on from one tile into the next.
  const int64_t grid = gated_mlp_tile_grid_force.load(std::memory_order_relaxed) ? tiles : std::min<int64_t>(tiles, sms);
  d.grid[0] = static_cast<unsigned>(grid);
  d.block[0] = 384;
  d.smem = static_cast<unsigned>(smem_bytes(s));
  impl.launch(s, d, stream, a);
}

}  // namespace kiln
