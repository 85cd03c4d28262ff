// Host recipe: the fp32 router GEMM, forward and backward (templates/kiln/router_gemm.cuh). Spec: linghe-kernels.md §5.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/ops/router_gemm.hpp"
#include "kiln/router_gemm_args.h"
#include "ops/bench/cublaslt.hpp"
#include "ops/router_gemm_internal.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/tensor_map.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
std::atomic<int> router_gemm_measure_flags{0};
std::atomic<unsigned long long*> router_gemm_trace{nullptr};
std::atomic<int> router_gemm_bwd_one_measure{0};
std::atomic<int> router_gemm_dx_ctas{0};
std::atomic<int> router_gemm_dx_parts_force{0};
}  // namespace detail

namespace {
using namespace detail;

// Kernel ids index g_family's kernel names (the tuning database keys on the names). Session 7 removed the cp.async
// wgmma backward (dx_sm90 / dw_sm90, ids 5 and 6 then) and renumbered the rest.
enum : uint32_t {
  kFwd = 0, kDx = 1, kDw = 2, kDwReduce = 3, kFwd90 = 4, kFwdTma = 5,
  // The TMA backward: dx from bf16(g) and dw from g hi + lo (the policy), and the other precision of each (bench).
  kDxTma = 6, kDwTma = 7, kDxTmaSplit = 8, kDwTmaBf16 = 9,
  kFwdTmaKs = 10,  // the TMA forward with K split over a cluster (wn = split count)
  kFwdTmaXmc = 11,  // the TMA forward over expert pairs: clusters of 2 CTAs (E/2 each) sharing x by multicast
  // The TMA backward's fp16 pass with power-of-two scales (precision tf32, the default) and its w16 operand prep.
  kDxTmaF16 = 12, kDwTmaF16 = 13, kW16 = 14,
  // The backward in one launch (precision standard), the dw role then the dx role in each CTA (session 9; the other
  // orders measured slower and were removed): config = the dw kernel's (bm 64 = dx's tiles, bn 256, bk 64, wm =
  // cluster, wn = most T ranges, stages = dw's).
  kBwdTma = 15
};
bool is_bwd_one(uint32_t k) { return k == kBwdTma; }
bool is_dx_tma(uint32_t k) { return k == kDxTma || k == kDxTmaSplit || k == kDxTmaF16; }

bool is_dw_tma(uint32_t k) { return k == kDwTma || k == kDwTmaBf16 || k == kDwTmaF16; }
// How a TMA backward kernel takes g (its SPLIT template argument): 0 bf16(g), 1 hi + lo, 2 fp16 with scales.
int g_mode(uint32_t k) {
  if (k == kDwTma || k == kDxTmaSplit) return 1;
  return k == kDxTmaF16 || k == kDwTmaF16 ? 2 : 0;
}
enum { P_K, P_E };
enum { C_BM, C_BN, C_BK, C_WM, C_WN, C_STAGES };

constexpr int64_t kMinK = 16, kMaxK = 16384, kMinE = 8, kMaxE = 1024;

// Opt-in shared memory a CTA may use: 227 KiB on sm_90 and sm_100, 163 KiB on sm_80/87, 99 KiB on sm_86/89/120.
int smem_limit(Arch a) {
  if (a.sm == 90 || a.sm == 100 || a.sm == 103) return 227 * 1024;
  if (a.sm == 80 || a.sm == 87) return 163 * 1024;
  return 99 * 1024;
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// wgmma (warpgroup MMA) exists on sm_90a only.

// The expert-pair kernel's options in the op, for its 128-token tiles (two consumer warpgroups): the cluster's last tile
// leaves by TMA stores from warpgroup 0 and by 8-byte stores from warpgroup 1's registers at once (session 7, round 4:
// 20.88 µs vs 21.04–21.79 for the staged epilogue in the same run; TMA stores alone tie the staged epilogue).
// 64-token tiles keep the staged epilogue (TMA stores measured 14.1–15.8 vs 14.7 µs there).
// Session 14: both warpgroups store by TMA, each warp storing its 16 × 32 boxes one at a time as it stages them
// (kRgEpiTmaPipe; the TMA path had lost only by starting late). Call by call, 300 random-order rounds (round F), with
// 7 stages: −0.42 / −0.22 / −0.18 µs against the mixed epilogue (6 / 7 / 7 stages) at 8192 × 2048 / 4096 / 7168 → 256,
// +0.03 / +0.03 / −0.05 for the mixed epilogue with the same pipelining (a tie: the simpler one stays).
constexpr int kXmcDefaultOptions = kRgEpiTma | kRgEpiTmaPipe;
// Every tile shape of the expert-pair kernel: no cluster barrier at the end; the producer's tail (kRgNoExitSync) keeps
// each CTA alive until no peer can still reach its shared memory (session 9, round 3, 8192 × 2048 → 256, options timed
// call by call: 20.13–20.16 µs vs 20.93–21.86 for the default; the timeline's CTAs left ≈ 0.7 µs after their stores had
// been performed, waiting at that barrier).
constexpr int kXmcDefaultAllTiles = kRgNoExitSync;

// The expert-pair forward's ping-pong form: 64-row tiles, two consumer warpgroups taking alternate tiles.
bool xmc_pingpong(const Specialization& s) { return s.config[C_BM] == 64 && s.config[C_WM] == 2; }

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/router_gemm.cuh\"\n";
  if (s.kernel == kFwdTma || s.kernel == kFwdTmaKs) {  // bm = 64·wm, bn = E / (consumers along E), wn = cluster
    source = "#include \"kiln/router_gemm_tma.cuh\"\n";
    const int e = static_cast<int>(s.params[P_E]);
    name = fmt::format("kiln::router_gemm_fwd_tma{}_kernel<{}, {}, {}, {}, {}, {}>", s.kernel == kFwdTmaKs ? "_ksplit" : "",
                       s.params[P_K], e, s.config[C_WM], e / s.config[C_BN], s.config[C_STAGES], s.config[C_WN]);
    return;
  }
  if (s.kernel == kFwdTmaXmc) {  // bm = 64·wm tokens, bn = E/2 experts a CTA, wn = 2 (the pair)
    source = "#include \"kiln/router_gemm_tma.cuh\"\n";
    name = fmt::format("kiln::router_gemm_fwd_tma_xmc_kernel<{}, {}, {}, {}, {}, {}, {}>", s.params[P_K],
                       s.params[P_E], s.config[C_WM], s.config[C_STAGES], s.config[C_BK] / 64,
                       xmc_pingpong(s) ? 1 : 0, s.config[C_WN]);
    return;
  }
  if (is_dx_tma(s.kernel) || is_dw_tma(s.kernel)) {  // dx: wn = cluster (w multicast); dw: wn = most T splits
    source = "#include \"kiln/router_gemm_bwd_tma.cuh\"\n";
    if (is_dx_tma(s.kernel))
      name = fmt::format("kiln::router_gemm_dx_tma_kernel<{}, {}, {}, {}, {}, {}>", s.params[P_K], s.params[P_E],
                         s.config[C_STAGES], s.config[C_WN], g_mode(s.kernel), s.config[C_BM]);
    else
      name = fmt::format("kiln::router_gemm_dw_tma_kernel<{}, {}, {}, {}, {}>", s.params[P_K], s.params[P_E],
                         s.config[C_STAGES], g_mode(s.kernel), s.config[C_BK]);
    return;
  }
  if (is_bwd_one(s.kernel)) {
    source = "#include \"kiln/router_gemm_bwd_tma.cuh\"\n";
    name = fmt::format("kiln::router_gemm_bwd_tma_kernel<{}, {}, {}>", s.params[P_K], s.params[P_E],
                       s.config[C_STAGES]);
    return;
  }
  if (s.kernel == kW16) {
    source = "#include \"kiln/router_gemm_bwd_tma.cuh\"\n";
    name = fmt::format("kiln::router_gemm_w16_kernel<{}, {}>", s.params[P_K], s.params[P_E]);
    return;
  }
  if (s.kernel == kFwd90) {
    source = "#include \"kiln/router_gemm_sm90.cuh\"\n";
    name = fmt::format("kiln::router_gemm_fwd_sm90_kernel<{}, {}, {}, {}, {}, {}>", s.params[P_K], s.params[P_E],
                       s.config[C_WM], s.config[C_STAGES], s.config[C_WN], s.config[C_BK]);
    return;
  }
  if (s.kernel == kDwReduce) {
    name = "kiln::router_gemm_dw_reduce_kernel<4>";
    return;
  }
  static const char* const kNames[] = {"router_gemm_fwd_kernel", "router_gemm_dx_kernel", "router_gemm_dw_kernel"};
  const auto& c = s.config;
  name = fmt::format("kiln::{}<{}, {}, {}, {}, {}, {}, {}, {}>", kNames[s.kernel], s.params[P_K], s.params[P_E],
                     c[C_BM], c[C_BN], c[C_BK], c[C_WM], c[C_WN], c[C_STAGES]);
}

// Mirrors rg::OperandTile / rg::smem_bytes in the template: padded operand rows, STAGES ring, epilogue staging.
int smem_bytes(const Specialization& s) {
  if (s.kernel == kDwReduce || s.kernel == kW16) return 0;
  if (s.kernel == kFwdTmaXmc)  // slack + the ring (x tile BM·128 B + half of w's chunk, rounded to 1 KiB) + mbarriers
                               // (full, empty)
    return 1024 + s.config[C_STAGES] * (s.config[C_BM] * 128 + static_cast<int>(round_up(s.params[P_E] / 2 * 128, 1024)) + 16);
  if (s.kernel == kFwdTma || s.kernel == kFwdTmaKs) {  // 1 KiB alignment slack + the ring (x tile, w chunk rounded to 1 KiB) + its mbarriers
    const int e = static_cast<int>(s.params[P_E]);
    const int stage = s.config[C_BM] * 128 + static_cast<int>(round_up(e * 128, 1024));
    return 1024 + s.config[C_STAGES] * (stage + 16);
  }
  if (is_dx_tma(s.kernel)) {  // slack + A tile(s) (64 rows × E, bf16) + a ring of 32 KiB stages + mbarriers
                              // (+ 1 KiB alignment and two 16 KiB output staging tiles where they fit: the kernel's
                              // router_gemm_dx_staged; the fp16 pass keeps its row scales after the mbarriers)
    const int ec = static_cast<int>((s.params[P_E] + 63) / 64), stages = s.config[C_STAGES], tm = s.config[C_BM];
    const int core = 1024 + (g_mode(s.kernel) == 1 ? 2 : 1) * ec * tm * 128 + stages * (32768 + 16);
    return core + 1024 + tm * 512 <= 227 * 1024 ? core + 1024 + tm * 512
                                                : core + (g_mode(s.kernel) == 2 ? tm * 4 : 0);
  }
  if (is_bwd_one(s.kernel)) {  // slack + both roles' layouts overlaid + 1 KiB of mbarriers + dx's two staging tiles
                               // (the template's router_gemm_bwd_tma_smem_bytes; dw's staging tile: 128 rows of 1 KiB)
    const int ec = static_cast<int>((s.params[P_E] + 63) / 64);
    const int main = static_cast<int>(
        round_up(std::max(ec * 64 * 128 + 5 * 32768, std::max(s.config[C_STAGES] * 65536, 128 * 1024)), 1024));
    return 1024 + main + 1024 + 2 * 16384;
  }
  if (is_dw_tma(s.kernel)) {  // slack + max(ring of bk KiB stages, 128 × 264 fp32 staging tile) + mbarriers (+ the
                              // fp16 pass's 8 x-amax slots)
    const int stages = s.config[C_STAGES];
    return 1024 + std::max(stages * 8 * s.config[C_BK] * 128, 128 * 264 * 4) + 16 * stages +
           (g_mode(s.kernel) == 2 ? 64 : 0);
  }
  if (s.kernel == kFwd90) {  // 1 KiB alignment slack + max(ring of swizzled x and w tiles, fp32 epilogue tile)
    const int bm = s.config[C_BM], atoms = s.config[C_BK] / 64;
    const int e = static_cast<int>(s.params[P_E]);
    const int stage = atoms * (bm * 128 + static_cast<int>(round_up(e * 128, 1024)));
    return 1024 + std::max(s.config[C_STAGES] * stage, bm * (e + 8) * 4);
  }
  const int bm = s.config[C_BM], bn = s.config[C_BN], bk = s.config[C_BK], stages = s.config[C_STAGES];
  int a = 0, b = 0, out_elem = 4;
  switch (s.kernel) {
    case kFwd:  // x [BM][BK+8] bf16, w [BN][BK+8] bf16
      a = bm * (bk + 8) * 2;
      b = bn * (bk + 8) * 2;
      break;
    case kDx:  // g [BM][BK+8] fp32, w [BK][BN+8] bf16; dx staged as bf16
      a = bm * (bk + 8) * 4;
      b = bk * (bn + 8) * 2;
      out_elem = 2;
      break;
    default:  // dw: g [BK][BM+4] fp32, x [BK][BN+8] bf16
      a = bk * (bm + 4) * 4;
      b = bk * (bn + 8) * 2;
  }
  return std::max(stages * (a + b), bm * (bn + 8) * out_elem);
}

// CTA size: warps wm × wn for the mma.sync kernels, wm warpgroups for the wgmma ones.
int threads(const Specialization& s) {
  if (is_dx_tma(s.kernel) || is_dw_tma(s.kernel) || is_bwd_one(s.kernel)) return 384;  // producer + 2 consumers
  if (s.kernel == kW16) return 256;
  if (s.kernel == kFwdTmaXmc) return (1 + s.config[C_WM]) * 128;
  if (s.kernel == kFwdTma || s.kernel == kFwdTmaKs)  // producer + wm × (E / bn) consumer warpgroups
    return (1 + s.config[C_WM] * static_cast<int>(s.params[P_E] / s.config[C_BN])) * 128;
  return s.kernel == kFwd90 ? s.config[C_WM] * 128 : s.config[C_WM] * s.config[C_WN] * 32;
}

// A config is valid when the warp grid tiles the CTA tile with m16 × (2 × n8) MMA fragments, the accumulators fit
// (≤ 128 fp32 registers a thread), the CTA has 2–16 warps, shared memory fits, and no CTA column/row block is
// entirely padding (BN ≤ the N extent rounded to the warp-column granule).
bool valid(const Specialization& s) {
  if (s.kernel == kDwReduce) return true;
  if (s.kernel == kW16) return has_wgmma(s.arch) && s.params[P_E] <= 256;
  const auto& c = s.config;
  const int64_t K = s.params[P_K], E = s.params[P_E];
  if (s.kernel == kFwdTmaXmc)  // expert pairs: E/2 experts a CTA, clusters of 2; bm = 64·wm tokens (1–2 consumers
                               // of 64), or bm = 64 with wm = 2 (ping-pong: the consumers take alternate 64-row
                               // tiles); bk = K columns the producer requests at once (64: a stage, 128 / 256: two
                               // / four stages)
    return has_wgmma(s.arch) && E <= 256 && E % 16 == 0 && c[C_BN] == E / 2 && (c[C_WM] == 1 || c[C_WM] == 2) &&
           (c[C_BM] == 64 * c[C_WM] || xmc_pingpong(s)) &&
           (c[C_WN] == 2 || (c[C_WN] == 4 && E % 32 == 0)) &&
           (c[C_BK] == 64 || c[C_BK] == 128 || c[C_BK] == 256) && c[C_BK] / 64 <= c[C_STAGES] && c[C_STAGES] >= 2 &&
           c[C_STAGES] <= 12 && smem_bytes(s) <= smem_limit(s.arch);
  if (is_dx_tma(s.kernel))  // 64 tokens (cluster of 1/2/4) or 128 tokens × half the columns (no cluster) a unit,
                            // 256-column blocks, 2 consumers, 2–6 stages
    return has_wgmma(s.arch) && E <= 256 && (c[C_BM] == 64 || (c[C_BM] == 128 && c[C_WN] == 1)) &&
           c[C_BN] == 256 && c[C_BK] == 64 && c[C_WM] == 2 && (c[C_WN] == 1 || c[C_WN] == 2 || c[C_WN] == 4) &&
           c[C_STAGES] >= 2 && c[C_STAGES] <= 6 && smem_bytes(s) <= smem_limit(s.arch);
  if (is_bwd_one(s.kernel))  // dx: 64-token tiles; dw: 128 × 256 tiles, 64-token chunks, wn ≤ 8 ranges in clusters of
                             // wm, 2–3 stages
    return has_wgmma(s.arch) && E <= 256 && c[C_BM] == 64 && c[C_BN] == 256 && c[C_BK] == 64 &&
           (c[C_WM] == 1 || c[C_WM] == 2 || c[C_WM] == 4) && c[C_WN] >= 1 && c[C_WN] <= 8 && c[C_STAGES] >= 2 &&
           c[C_STAGES] <= 3 && smem_bytes(s) <= smem_limit(s.arch);
  if (is_dw_tma(s.kernel))  // 128 experts × 256 columns, up to wn (≤ 8) T ranges, wm (1, 2, 4) of them a cluster,
                            // T chunks of bk = 64 (2–3 stages) or 32 tokens (2–6 stages)
    return has_wgmma(s.arch) && E <= 256 && c[C_BM] == 128 && c[C_BN] == 256 && (c[C_BK] == 64 || c[C_BK] == 32) &&
           (c[C_WM] == 1 || c[C_WM] == 2 || c[C_WM] == 4) && c[C_WN] >= 1 && c[C_WN] <= 8 && c[C_STAGES] >= 2 &&
           c[C_STAGES] <= (c[C_BK] == 32 ? 7 : 3) && smem_bytes(s) <= smem_limit(s.arch);
  if (s.kernel == kFwdTma || s.kernel == kFwdTmaKs) {  // TMA + wgmma: sm_90a, E ≤ 256, 1–2 consumer warpgroups
    if (!has_wgmma(s.arch) || E > 256 || c[C_BN] <= 0 || E % c[C_BN] != 0) return false;
    const int wgn = static_cast<int>(E / c[C_BN]), cm = c[C_WN];
    const bool shape = (c[C_WM] == 1 || c[C_WM] == 2) && c[C_BM] == 64 * c[C_WM] && (wgn == 1 || wgn == 2) &&
                       c[C_WM] * wgn <= 2 && c[C_BN] % 8 == 0 && c[C_BK] == 64 && c[C_STAGES] >= 2 &&
                       c[C_STAGES] <= 8 && smem_bytes(s) <= smem_limit(s.arch);
    if (s.kernel == kFwdTmaKs)  // K split over wn = 2 or 4 CTAs; the fp32 partial tile is staged in the ring
      return shape && (cm == 2 || cm == 4) &&
             c[C_BM] * (E + 8) * 4 <= c[C_STAGES] * (c[C_BM] * 128 + round_up(E * 128, 1024));
    return shape && (cm == 1 || cm == 2 || cm == 4) && (E / cm) % 8 == 0;  // wn: CTAs sharing w by multicast
  }
  if (s.kernel == kFwd90) {  // wgmma: sm_90a, E ≤ 256, 1–2 warpgroups of 64 tokens, K chunks of 64, wn = K split
    return has_wgmma(s.arch) && E <= 256 && (c[C_WM] == 1 || c[C_WM] == 2) && c[C_BM] == 64 * c[C_WM] &&
           c[C_BN] == E && (c[C_BK] == 64 || c[C_BK] == 128) && (c[C_WN] == 1 || c[C_WN] == 2) && c[C_STAGES] >= 2 &&
           c[C_STAGES] <= 8 && smem_bytes(s) <= smem_limit(s.arch);
  }
  const int bm = c[C_BM], bn = c[C_BN], bk = c[C_BK], wm = c[C_WM], wn = c[C_WN], stages = c[C_STAGES];
  if (bm <= 0 || bn <= 0 || bk <= 0 || wm <= 0 || wn <= 0 || stages < 2 || stages > 8) return false;
  if (bm % (wm * 16) != 0 || bn % (wn * 16) != 0 || bk % 16 != 0) return false;
  const int warps = wm * wn;
  if (warps < 2 || warps > 16) return false;
  if ((bm / wm / 16) * (bn / wn / 8) * 4 > 128) return false;
  if (smem_bytes(s) > smem_limit(s.arch)) return false;
  switch (s.kernel) {
    case kFwd: return bn <= round_up(E, wn * 16) && bk <= round_up(K, 16);
    case kDx: return bn <= round_up(K, wn * 16) && bk % 32 == 0 && bk <= round_up(E, 32);
    case kDw: return bm <= round_up(E, wm * 16) && bn <= round_up(K, wn * 16);
    default: return true;
  }
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);

FamilyDef g_family{"router_gemm",
                   {"fwd", "dx", "dw", "dw_reduce", "fwd_sm90", "fwd_tma", "dx_tma", "dw_tma",
                    "dx_tma_split", "dw_tma_bf16", "fwd_tma_ksplit", "fwd_tma_xmc",
                    "dx_tma_f16", "dw_tma_f16", "w16", "bwd_tma"},
                   {"K", "E"},
                   {"bm", "bn", "bk", "wm", "wn", "stages"},
                   render,
                   smem_bytes,
                   enumerate,
                   search_space,
                   tune_instance};

void set_config(Specialization& s, int bm, int bn, int bk, int wm, int wn, int stages) {
  s.config = {};
  s.config[C_BM] = bm;
  s.config[C_BN] = bn;
  s.config[C_BK] = bk;
  s.config[C_WM] = wm;
  s.config[C_WN] = wn;
  s.config[C_STAGES] = stages;
}

// The heuristic defaults (H100: 132 SMs, 227 KiB of shared memory a CTA).
//  fwd: 64 tokens × all experts (up to 256) a CTA, so x is read exactly once and w comes from L2; 8 warps, 2 × 4.
//  dx:  128 tokens × 128 hidden columns, 8 warps stacked along tokens (each warp splits its own g rows once).
//  dw:  all experts (up to 256) × 128 hidden columns, warps stacked along experts (each warp splits its own g
//       columns once); T cut into ranges so the grid fills the GPU (see dw_splits).
Specialization spec(Arch arch, uint32_t kernel, int64_t K, int64_t E) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kernel;
  if (kernel == kDwReduce) return s;  // shape-independent
  s.params[P_K] = K;
  s.params[P_E] = E;
  switch (kernel) {
    case kW16:  // no tile config
      break;
    case kDxTma:  // no multicast (run of 04:00, the first dx: clusters of 1 / 2 / 4: 30.0 / 30.7 / 56.3 µs), 5 stages
      set_config(s, 64, 256, 64, 2, 1, 5);
      break;
    case kDxTmaSplit:  // (precision high) E > 128: w multicast to clusters of 2, 4 stages (next to the hi/lo tiles and
                       // the staging tiles): session 18, 8192 tokens, E = 256, against no multicast: K = 2048 / 4096 /
                       // 7168 32.1 / 53.3 / 89.3 µs vs 33.8 / 58.4 / 99.7 (session 17's tuner pick at 7168); E ≤ 128:
                       // 128-token units, 3 stages (session 18's tune at K = 2048, E = 128: 19.1 µs vs 22.1 for the
                       // multicast pairs and 20.5 for 64-token tiles without)
      if (E <= 128)
        set_config(s, 128, 256, 64, 2, 1, 3);
      else
        set_config(s, 64, 256, 64, 2, 2, 4);
      break;
    case kDxTmaF16:  // (precision tf32) 128-token units × half the columns, 3 stages: session 18, 8192 tokens, against
                     // 64-token tiles × 5 stages: K = 2048 / 4096 / 7168 32.4 / 55.4 / 78.9 µs vs 36.1 / 56.3 / 88.3
      set_config(s, 128, 256, 64, 2, 1, 3);
      break;
    case kBwdTma:  // the dw kernel's default (its grid is the launch's)
      set_config(s, 64, 256, 64, E <= 128 ? 1 : 2, 8, 3);
      break;
    case kDwTma:
    case kDwTmaF16:
    case kDwTmaBf16:  // up to 8 T ranges (16 tiles × 8 = 128 CTAs at E = 256, K = 2048) in clusters of 2 (run of
                      // 04:17: clusters of 4 on 128 CTAs 61.4 µs, on 64 CTAs 48.7 — not every cluster of 4 fits at
                      // once), 3 stages; at E ≤ 128 (one expert tile: 64 CTAs) clusters of 1 (session 18's tune at
                      // K = 2048, E = 128: dw 32.4 / 33.5, from bf16(g) 26.2 / 28.7, fp16 pass 39.8 / 41.7, the one
                      // launch 58.9 / 61.3 µs against clusters of 2)
      set_config(s, 128, 256, 64, E <= 128 ? 1 : 2, 8, 3);
      break;
    case kFwdTma:  // 64 tokens a CTA (128 CTAs at 8192 tokens), one consumer warpgroup over all of E, 5 stages, no
                   // multicast (run of 04:00: 21.8 µs; two consumers splitting E 22.3, clusters of 2 / 4 sharing w
                   // 22.7 / 34.9)
      set_config(s, 64, static_cast<int>(E), 64, 1, 1, 5);
      break;
    case kFwdTmaXmc: {  // 128 tokens × E/2 experts a CTA (cuBLAS's nvjet 128x128 2x1 tile at E = 256), 7 stages
                        // where they fit (run of 07:10: 6 stages 20.5–20.7 µs, 7 stages 20.6, 4 stages 22.5, 64 tokens
                        // × E/2 21.8; session 10 round 3, with the lean chunk loop, call by call, 2 × 150 rounds:
                        // 8192 × 7168 → 256 −0.83 / −0.91 µs for 7, faster in 115 / 114 of 150; at K = 2048 sessions 10
                        // and 14 read −0.10, −0.10, −0.26, −0.16, +0.03 and, with session 14's pipelined TMA epilogue,
                        // −0.22: session 14 round F, 300 rounds; the tuner keeps 7 there too)
      set_config(s, 128, static_cast<int>(std::max<int64_t>(E / 2, 8)), 64, 2, 2, 7);
      if (s.config[C_STAGES] == 7 && smem_bytes(s) > smem_limit(arch)) s.config[C_STAGES] = 6;
      break;
    }
    case kFwdTmaKs:  // 128 tokens (two consumers, all of E each), K split over 2 CTAs: 128 CTAs at 8192 tokens
      set_config(s, 128, static_cast<int>(E), 64, 2, 2, 4);
      break;
    case kFwd90:  // the choice at 8192 tokens on 132 SMs; fwd90_for_tokens picks by T
      set_config(s, 128, static_cast<int>(E), 64, 2, 2, 4);
      break;
    case kFwd: {
      const int wn = E > 128 ? 4 : 2, wm = 8 / wn;
      const int bn = static_cast<int>(std::min<int64_t>(round_up(E, wn * 16), 256));
      set_config(s, 64, bn, 64, wm, wn, 4);
      break;
    }
    case kDx:
      set_config(s, 128, 128, 32, 8, 1, 3);
      break;
    default: {
      if (E <= 128) {
        const int bm = static_cast<int>(round_up(E, 16));
        const int wm = std::max(2, bm / 16);
        set_config(s, static_cast<int>(round_up(bm, wm * 16)), 128, 32, wm, 1, 4);
      } else {
        const int bm = static_cast<int>(std::min<int64_t>(round_up(E, 32), 256));
        set_config(s, bm, 128, 32, bm / 32, 1, 4);
      }
      break;
    }
  }
  // Smaller GPUs: fewer stages first, then narrower tiles.
  const int limit = smem_limit(arch);
  while (smem_bytes(s) > limit && s.config[C_STAGES] > 2) --s.config[C_STAGES];
  while (smem_bytes(s) > limit && s.config[C_BN] % (2 * 16 * s.config[C_WN]) == 0) s.config[C_BN] /= 2;
  while (smem_bytes(s) > limit && s.config[C_BM] % (2 * 16 * s.config[C_WM]) == 0) s.config[C_BM] /= 2;
  return s;
}

// The wgmma forward's config for T tokens on `sms` SMs: 128 tokens (two warpgroups) a CTA where that fills the GPU,
// else 128 tokens with K split over a 2-CTA cluster, else 64 tokens with K split — the fastest points `kiln tune`
// found on the H100 (K = 2048, E = 256: T = 8192 bm=128 split 26.9 µs; T = 1024 / 4096 bm=64 split 20.1 / 21.1 µs).
// A CTA's time is dominated by its chain of K chunks (each waits on memory), so more, shorter CTAs win at small T.
Specialization fwd90_for_tokens(Specialization s, int64_t T, int sms) {
  const int64_t blocks128 = (T + 127) / 128;
  const int e = static_cast<int>(s.params[P_E]);
  if (blocks128 >= sms)
    set_config(s, 128, e, 64, 2, 1, 4);
  else if (2 * blocks128 * 10 >= 9 * static_cast<int64_t>(sms))
    set_config(s, 128, e, 64, 2, 2, 4);
  else
    set_config(s, 64, e, 64, 1, 2, 4);
  return s;
}

void search_space(const Specialization& base, std::vector<Specialization>& out) {
  const Specialization def = spec(base.arch, base.kernel, base.params[P_K], base.params[P_E]);
  auto add = [&](const Specialization& s) {
    if (!valid(s)) return;
    for (const auto& o : out)
      if (o.config == s.config) return;
    out.push_back(s);
  };
  add(def);
  if (base.kernel == kDwReduce || base.kernel == kW16) return;
  const int64_t E = base.params[P_E];
  Specialization s = def;
  switch (base.kernel) {
    case kBwdTma:  // the dw role's T ranges in clusters of 2 or 1 (range partials from the registers), 2 dw stages
      set_config(s, 64, 256, 64, 2, 8, 3);
      add(s);
      set_config(s, 64, 256, 64, 1, 8, 3);
      add(s);
      set_config(s, 64, 256, 64, 2, 8, 2);
      add(s);
      break;
    case kDxTma:
    case kDxTmaF16:
    case kDxTmaSplit:
      for (int cm : {1, 2, 4})
        for (int stages : {5, 4, 6}) {
          // fp16 pass: multicast only at 5 stages (clusters were slower for the bf16 kernels: runs of 04:17, 06:30)
          if (base.kernel == kDxTmaF16 && (cm == 4 || (cm == 2 && stages != 5))) continue;
          set_config(s, 64, 256, 64, 2, cm, stages);
          add(s);
        }
      for (int stages : {3, 2}) {  // 128 tokens × half the columns a unit
        set_config(s, 128, 256, 64, 2, 1, stages);
        add(s);
      }
      break;
    case kFwdTmaXmc: {
      const int eh = static_cast<int>(E / 2);
      for (int stages : {6, 7, 4}) {
        set_config(s, 128, eh, 64, 2, 2, stages);
        add(s);
      }
      for (int stages : {6, 4}) {  // two chunks requested together
        set_config(s, 128, eh, 128, 2, 2, stages);
        add(s);
      }
      set_config(s, 128, eh, 256, 2, 2, 6);  // four
      add(s);
      set_config(s, 64, eh, 64, 1, 2, 8);  // 64 tokens × E/2
      add(s);
      for (int stages : {9, 6}) {  // ping-pong over 64-row tiles
        set_config(s, 64, eh, 64, 2, 2, stages);
        add(s);
      }
      set_config(s, 64, eh, 128, 2, 2, 8);
      add(s);
      set_config(s, 64, eh, 256, 2, 2, 8);
      add(s);
      for (int stages : {6, 7}) {  // clusters of 2 token tiles × 2 expert halves: w multicast too
        set_config(s, 128, eh, 64, 2, 4, stages);
        add(s);
      }
      set_config(s, 64, eh, 64, 2, 4, 9);  // the same with ping-pong
      add(s);
      break;
    }
    case kDwTma:
    case kDwTmaF16:
    case kDwTmaBf16:
      for (int cluster : {2, 1, 4})
        for (int stages : {3, 2}) {
          if (base.kernel == kDwTmaF16 && cluster != 2 && stages == 2) continue;  // (fewer compiles in CI)
          set_config(s, 128, 256, 64, cluster, 8, stages);
          add(s);
        }
      set_config(s, 128, 256, 64, 4, 4, 3);  // one cluster of 4 a tile (64 CTAs at 8192 tokens)
      add(s);
      if (base.kernel != kDwTmaBf16)  // 32-token chunks: a deeper ring of the same bytes (stages are freed sooner)
        for (int stages : {6, 7}) {
          set_config(s, 128, 256, 32, 2, 8, stages);
          add(s);
        }
      break;
    case kFwdTma: {
      const int e = static_cast<int>(E);
      for (int cm : {1, 2, 4})  // 64 tokens, two consumers splitting E
        for (int stages : {4, 5, 6}) {
          set_config(s, 64, e / 2, 64, 1, cm, stages);
          add(s);
        }
      for (int cm : {1, 2}) {
        set_config(s, 128, e, 64, 2, cm, 4);  // 128 tokens, each consumer all of E
        add(s);
        for (int stages : {5, 4}) {
          set_config(s, 64, e, 64, 1, cm, stages);  // 64 tokens, one consumer
          add(s);
        }
      }
      break;
    }
    case kFwdTmaKs: {
      const int e = static_cast<int>(E);
      for (int stages : {4, 3}) {
        set_config(s, 128, e, 64, 2, 2, stages);  // 128 tokens, K halves
        add(s);
      }
      set_config(s, 128, e, 64, 2, 4, 4);  // K quarters (small T)
      add(s);
      set_config(s, 64, e / 2, 64, 1, 2, 5);  // 64 tokens, consumers split E, K halves
      add(s);
      break;
    }
    case kFwd90:
      for (int ksplit : {1, 2})
        for (int nwg : {1, 2}) {
          for (int stages : {3, 4}) {
            set_config(s, 64 * nwg, static_cast<int>(E), 64, nwg, ksplit, stages);
            add(s);
          }
          set_config(s, 64 * nwg, static_cast<int>(E), 128, nwg, ksplit, 2);  // 128 K columns a stage
          add(s);
        }
      break;
    case kFwd: {
      const int bn_full = def.config[C_BN];
      set_config(s, 64, bn_full, 64, 2, 4, 3);
      add(s);
      set_config(s, 32, static_cast<int>(std::min<int64_t>(round_up(E, 128), 256)), 64, 1, 8, 4);  // 256 CTAs at 8192
      add(s);
      set_config(s, 128, static_cast<int>(std::min<int64_t>(round_up(E, 32), 256)), 32, 4, 2, 4);  // big T
      add(s);
      set_config(s, 64, 128, 64, 2, 4, 4);  // experts split over two CTAs
      add(s);
      break;
    }
    case kDx:
      set_config(s, 128, 128, 32, 8, 1, 4);
      add(s);
      set_config(s, 64, 128, 32, 4, 1, 4);
      add(s);
      set_config(s, 128, 256, 32, 8, 1, 3);
      add(s);
      set_config(s, 128, 64, 32, 8, 1, 4);
      add(s);
      break;
    default:
      set_config(s, def.config[C_BM], 128, 32, def.config[C_WM], 1, 3);
      add(s);
      set_config(s, def.config[C_BM], 64, 32, def.config[C_WM], 1, 4);
      add(s);
      set_config(s, def.config[C_BM], 128, 64, def.config[C_WM], 1, 2);
      add(s);
      break;
  }
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  const int64_t K = m.hidden_size, E = m.num_experts;
  if (E <= 0 || K < kMinK || K > kMaxK || K % 8 != 0 || E < kMinE || E > kMaxE || E % 8 != 0) return;
  for (uint32_t k : {kFwd, kDx, kDw, kDwReduce}) out.push_back(spec(arch, k, K, E));
  // One entry per kernel and shape (the tuning database keys on them); the forward's other token-count tiles
  // (fwd90_for_tokens) compile on first use.
  if (has_wgmma(arch) && E <= 256)
    for (uint32_t k :
         {kFwd90, kFwdTma, kDxTma, kDwTma, kFwdTmaKs, kDxTmaSplit, kDwTmaBf16, kFwdTmaXmc, kDxTmaF16,
          kDwTmaF16, kW16, kBwdTma})
      if (k != kFwdTmaXmc || E % 16 == 0) out.push_back(spec(arch, k, K, E));
  // The side-by-side backward's dx kernel with w by multicast to clusters of 2 (router_gemm_side_by_side_plan, where
  // dw runs in clusters of 2 by default: E > 128): the one kernel listed twice, so that prewarm compiles both forms
  // (the tuner times one entry per kernel and shape).
  if (has_wgmma(arch) && E > 128 && E <= 256) {
    Specialization s = spec(arch, kDxTma, K, E);
    s.config[C_WN] = 2;
    out.push_back(s);
  }
}

// ---- validation -----------------------------------------------------------------------------------------------

// x: bf16 [T, K] / [B, S, K]; returns its view (K and T checked).
RowView check_x(const Check& ck, const TensorRef& x) {
  ck.dtype("x", x, {DType::bf16});
  if (x.ndim == 2 || x.ndim == 3) {  // K first: its message says more than the row alignment it implies
    const int64_t K = x.shape[x.ndim - 1];
    if (K < kMinK || K > kMaxK || K % 8 != 0)
      ck.shape_error("x", fmt::format("expected the hidden size K (last dim) to be a multiple of 8 in [{}, {}], got {}",
                                      kMinK, kMaxK, K));
  }
  const RowView r = as_rows(ck, "x", x, 16);
  ck.fits_int32("x", r.rows, "T (tokens)");
  return r;
}

int64_t check_w(const Check& ck, const TensorRef& w, int64_t K) {
  ck.dtype("w", w, {DType::bf16});
  if (w.ndim != 2 || w.shape[1] != K)
    ck.shape_error("w", fmt::format("expected shape [E, {}] (K from x), got {}", K, shape_str(w)));
  ck.contiguous("w", w);
  const int64_t E = w.shape[0];
  if (E < kMinE || E > kMaxE || E % 8 != 0)
    ck.shape_error("w", fmt::format("expected the expert count E (first dim) to be a multiple of 8 in [{}, {}], got {}",
                                    kMinE, kMaxE, E));
  ck.pointer("w", w, 16);
  return E;
}

// A tensor with x's leading dims and last dim `cols` (rows 16-byte aligned).
RowView check_like_x(const Check& ck, const char* arg, const TensorRef& t, DType dtype, const RowView& x, int64_t cols,
                     const char* cols_name) {
  return as_rows_like(ck, arg, t, dtype, x, cols, cols_name, 16);
}

// ---- the split of T for dw -------------------------------------------------------------------------------------

struct DwPlan {
  int splits = 0;      // 0 when T = 0
  int split_rows = 0;  // rows per split (a multiple of the T chunk)
  int64_t workspace_elems = 0;
};

// Enough T ranges that tiles × splits fills the GPU once (each CTA takes a whole SM), each range at least 4 chunks.
DwPlan dw_plan(const Specialization& s, int64_t T, int sm_count) {
  DwPlan p;
  if (T <= 0) return p;
  const int64_t K = s.params[P_K], E = s.params[P_E];
  const int bm = s.config[C_BM], bn = s.config[C_BN], bk = s.config[C_BK];
  const int64_t tiles = ((E + bm - 1) / bm) * ((K + bn - 1) / bn);
  const int64_t chunks = (T + bk - 1) / bk;
  int64_t splits = std::max<int64_t>(1, sm_count / tiles);
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, chunks / 4));
  const int64_t chunks_per = (chunks + splits - 1) / splits;
  p.split_rows = static_cast<int>(chunks_per * bk);
  p.splits = static_cast<int>((T + p.split_rows - 1) / p.split_rows);
  p.workspace_elems = p.splits > 1 ? p.splits * E * K : 0;
  return p;
}

int sm_count(Runtime& rt) { return rt.impl().device().sm_count; }


}  // namespace

KILN_REGISTER_FAMILY(router_gemm, g_family)

namespace {
// The config to launch: the tuned default, or a caller's override (tests run every search-space point this way).
Specialization pick(Runtime& rt, const Check& ck, Specialization s, int64_t T, const detail::RouterGemmConfig* force) {
  s = rt.impl().tuned(s, T);
  if (force) {
    std::copy(force->begin(), force->end(), s.config.begin());
    if (!valid(s)) ck.invalid("config", fmt::format("not a valid tile config: {}", s.describe()));
  }
  return s;
}

// The TMA forwards' argument block as far as they share it: x [T, K] in boxes of x_rows tokens, w [E, K] in boxes of
// w_rows experts (both 64 columns wide), logits; the tiles, tile_rows and flags are each kernel's own.
RouterGemmFwdTmaArgs fwd_tma_args(const TensorRef& x, const RowView& xr, const TensorRef& w, const TensorRef& logits,
                                  const RowView& lr, int64_t E, int x_rows, int w_rows) {
  RouterGemmFwdTmaArgs a{};
  encode_tma_2d(a.tmx, x.data, DType::bf16, xr.cols, xr.rows, xr.stride * 2, x_rows);
  encode_tma_2d(a.tmw, w.data, DType::bf16, xr.cols, E, xr.cols * 2, w_rows);
  a.out = static_cast<float*>(logits.data);
  a.out_stride = lr.stride;
  a.T = static_cast<int>(xr.rows);
  return a;
}

// A persistent grid of clusters of `cl` CTAs: one cluster per cl SMs at most, and no more than the `groups` of token
// tiles there are; a kRgNoop measurement with kRgNoopNoSmem launches without dynamic shared memory.
LaunchDims persistent_clusters(const Specialization& s, int64_t groups, int cl, int sms, int measure) {
  const int64_t clusters = std::min<int64_t>(groups, std::max(1, sms / cl));
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>(clusters * cl);
  d.cluster[0] = static_cast<unsigned>(cl);
  d.block[0] = static_cast<unsigned>(threads(s));
  d.smem = (measure & kRgNoop) && (measure & kRgNoopNoSmem) ? 0u : static_cast<unsigned>(smem_bytes(s));
  return d;
}
}  // namespace

void detail::router_gemm_fp32_fwd_config(Runtime& rt, const TensorRef& x, const TensorRef& w, const TensorRef& logits,
                                         int variant, const RouterGemmConfig* force, Stream stream) {
  const Check ck{"router_gemm_fp32_fwd"};
  const RowView xr = check_x(ck, x);
  const int64_t K = xr.cols, T = xr.rows;
  const int64_t E = check_w(ck, w, K);
  const RowView lr = check_like_x(ck, "logits", logits, DType::f32, xr, E, "E");
  if (T == 0) return;

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  // sm_90a: the TMA wgmma kernels — the expert-pair kernel (cuBLAS's tiling) where E % 16 == 0 and its pairs of
  // CTAs fill ≥ 90 % of the SMs (run of 07:10, 8192 tokens: K = 2048 20.5 µs vs 22.4 for 64-token tiles and 23.0
  // for the K split; K = 7168 51.5 vs 52.9 K split); below that (measured only at 8192 tokens) the earlier choice:
  // K split over a 2-CTA cluster for long K (≥ 4096) while 128-token tiles × 2 fill the GPU at most once, else the
  // persistent kernel over 64-token tiles; elsewhere (or E > 256) mma.sync.
  // Session 5: where the expert pairs' 64-token tiles fit the GPU once (T ≤ 64 · SMs / 2) and K < 4096 they are the
  // default too — `kiln tune` (session 4, ling-mini-2.0, H100) measured them at 12.1 / 13.8 µs at 1024 / 4096 tokens
  // against 16.0 / 18.1 for the persistent 64-token kernel the op took there; between that and the 128-token
  // threshold (not measured) the earlier choice stays.
  const int sms = impl.device().sm_count;
  const int64_t pair_ctas = (T + 127) / 128 * 2;
  const bool pairs_fill = pair_ctas * 10 >= static_cast<int64_t>(sms) * 9;
  const bool small_pairs = (T + 63) / 64 <= sms / 2;
  if (variant < 0) {
    if (!(has_wgmma(arch) && E <= 256)) variant = 0;
    else if (E % 16 == 0 && (pairs_fill || (small_pairs && K < 4096))) variant = 5;
    else variant = K >= 4096 && pair_ctas <= sms + sms / 10 ? 3 : 2;
  }
  if (variant >= 1 && !(has_wgmma(arch) && E <= 256))
    ck.invalid("variant", fmt::format("the wgmma forward needs sm_90a and E ≤ 256 (arch {}, E = {})", arch.name(), E));
  if (variant == 5) {
    if (E % 16 != 0) ck.invalid("variant", fmt::format("the expert-pair forward needs E % 16 == 0, got E = {}", E));
    Specialization base = spec(arch, kFwdTmaXmc, K, E);
    if (!pairs_fill) set_config(base, 64, static_cast<int>(E / 2), 64, 1, 2, 8);  // more, smaller tiles
    if (!valid(base)) base = spec(arch, kFwdTmaXmc, K, E);
    const Specialization s = pick(rt, ck, base, T, force);
    const int bm = s.config[C_BM];
    const int measure = router_gemm_measure_flags.load(std::memory_order_relaxed);
    const int cl = s.config[C_WN];  // cluster CTAs: 2 (an expert pair) or 4 (2 token tiles × the pair)
    RouterGemmFwdTmaArgs a = fwd_tma_args(x, xr, w, logits, lr, E, bm / 2, static_cast<int>(E / cl));
    // Tiles of bm rows; with kRgBalance, one tile per CTA pair of the GPU where that needs fewer rows than bm.
    const int64_t pairs = std::max(1, sms / 2);
    a.tile_rows = bm;
    if (measure & kRgBalance) {  // ping-pong: two tiles a pair
      const int64_t per = xmc_pingpong(s) ? 2 : 1;
      a.tile_rows = static_cast<int>(std::min<int64_t>(bm, (T + pairs * per - 1) / (pairs * per)));
    }
    a.tiles = static_cast<int>((T + a.tile_rows - 1) / a.tile_rows);
    // The kernel's options: the op's defaults (kXmcDefaultOptions for 128-token tiles, kXmcDefaultAllTiles), or exactly
    // the ones a measurement asks for (any of kRgEpiTma / kRgEpiDirect, or kRgXmcPlain for none of them).
    const bool asked = measure & (kRgEpiTma | kRgEpiDirect | kRgXmcPlain);
    const int opts =
        asked ? measure : (s.config[C_WM] == 2 && !xmc_pingpong(s) ? kXmcDefaultOptions : 0) | kXmcDefaultAllTiles;
    // Without kRgEpiTma the last tile of each cluster leaves through shared memory with 16-byte stores (round 2 of
    // session 5: 20.0 µs vs 21.5 with 8-byte stores from the registers at 8192 × 2048 → 256; the timeline's store
    // phase 3.3 vs 3.9 µs).
    a.flags = (measure & (kRgSkipStore | kRgSkipW | kRgRotateK | kRgHalfStore | kRgNoop | kRgSkipMma | kRgSkipLoad |
                          kRgNoExitSync)) |
              (opts & (kRgNoExitSync | kRgEpiTmaPipe)) | ((opts & kRgEpiDirect) ? 0 : kRgEpiStaged);
    // The TMA-store epilogue (kRgEpiTma): whole 16-row boxes of 32 fp32 columns, so tiles that own all their BM rows,
    // E/2 a multiple of 32, rows 16-byte aligned; the 8 KiB of x rows a warp stages into come from 4 stages.
    const bool epi_tma = (opts & kRgEpiTma) && !(opts & kRgEpiDirect) && !xmc_pingpong(s) &&
                         (E / 2) % 32 == 0 && s.config[C_STAGES] >= 4 && a.tile_rows == bm &&
                         (lr.stride * 4) % 16 == 0 && reinterpret_cast<uintptr_t>(logits.data) % 16 == 0;
    if (epi_tma) {
      encode_tma_2d(a.tmo, logits.data, DType::f32, E, T, lr.stride * 4, 16);
      a.flags |= kRgEpiTma | (opts & kRgEpiMix);
    }
    a.trace = router_gemm_trace.load(std::memory_order_relaxed);
    const int64_t groups = (a.tiles + cl / 2 - 1) / (cl / 2);  // token tiles a cluster takes at once: cl / 2
    impl.launch(s, persistent_clusters(s, groups, cl, sms, measure), stream, a);
    return;
  }
  if (variant == 3) {
    Specialization base = spec(arch, kFwdTmaKs, K, E);
    if ((T + 127) / 128 * 4 <= sms) base.config[C_WN] = 4;  // few tiles: K quarters keep more SMs busy
    const Specialization s = pick(rt, ck, base, T, force);
    const int bm = s.config[C_BM], ks = s.config[C_WN];
    RouterGemmFwdTmaArgs a = fwd_tma_args(x, xr, w, logits, lr, E, bm, static_cast<int>(E));
    a.tiles = static_cast<int>((T + bm - 1) / bm);
    a.flags = router_gemm_measure_flags.load(std::memory_order_relaxed) & kRgSkipStore;
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(a.tiles);
    d.grid[1] = static_cast<unsigned>(ks);
    d.cluster[1] = static_cast<unsigned>(ks);
    d.block[0] = static_cast<unsigned>(threads(s));
    d.smem = static_cast<unsigned>(smem_bytes(s));
    impl.launch(s, d, stream, a);
    return;
  }
  if (variant == 2) {
    const Specialization s = pick(rt, ck, spec(arch, kFwdTma, K, E), T, force);
    const int bm = s.config[C_BM], cm = s.config[C_WN];
    RouterGemmFwdTmaArgs a = fwd_tma_args(x, xr, w, logits, lr, E, bm, static_cast<int>(E / cm));
    a.tiles = static_cast<int>((T + bm - 1) / bm);
    const int measure = router_gemm_measure_flags.load(std::memory_order_relaxed);
    a.flags = measure & (kRgSkipStore | kRgNoop);
    const int64_t groups = (a.tiles + cm - 1) / cm;  // token tiles a cluster takes at once: cm
    impl.launch(s, persistent_clusters(s, groups, cm, sms, measure), stream, a);
    return;
  }
  Specialization base = spec(arch, variant == 1 ? kFwd90 : kFwd, K, E);
  if (variant == 1) base = fwd90_for_tokens(base, T, impl.device().sm_count);
  const Specialization s = pick(rt, ck, base, T, force);
  const RouterGemmFwdArgs a{x.data, xr.stride, w.data, static_cast<float*>(logits.data), lr.stride,
                            static_cast<int>(T), router_gemm_measure_flags.load(std::memory_order_relaxed)};
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>((T + s.config[C_BM] - 1) / s.config[C_BM]);
  if (s.kernel == kFwd90) {  // K split over a cluster of (1, wn, 1)
    d.grid[1] = static_cast<unsigned>(s.config[C_WN]);
    d.cluster[1] = static_cast<unsigned>(s.config[C_WN]);
  } else {
    d.grid[1] = static_cast<unsigned>((E + s.config[C_BN] - 1) / s.config[C_BN]);
  }
  d.block[0] = static_cast<unsigned>(threads(s));
  d.smem = static_cast<unsigned>(smem_bytes(s));
  impl.launch(s, d, stream, a);
}

void router_gemm_fp32_fwd(Runtime& rt, const TensorRef& x, const TensorRef& w, const TensorRef& logits,
                          Stream stream) {
  detail::router_gemm_fp32_fwd_config(rt, x, w, logits, -1, nullptr, stream);
}

namespace {
// The backward's kernels by default: 2, the TMA kernels (sm_90a, E ≤ 256); 0, mma.sync (every other arch, E > 256).
// (1, the cp.async wgmma kernels — never the default since the TMA ones, 128.0 vs 136.0 µs for mma.sync in run 78
// — were removed in session 7, as was session 7's co-tiled one-launch kernel: bench/NOTES.md.)
int default_bwd_variant(Arch arch, int64_t E) { return has_wgmma(arch) && E <= 256 ? 2 : 0; }

// The TMA dw's T ranges: enough that tiles × ranges fills the GPU, at most wn (≤ 8), each a multiple of 64 rows, in
// clusters of up to wm (1, 2 or 4; run of 04:00: clusters of 8 did not all fit at once — 59.6 µs vs 48.5 with 4 on
// half the SMs); more ranges than a cluster make groups whose sums go through the workspace.
struct DwTmaPlan {
  int ranges = 0, rows = 0, cluster = 1, groups = 1;
  int64_t workspace_elems = 0;
};
// The TMA dw's tiles of 128 experts × 256 columns (its grid's x; × the T ranges in y).
int64_t dw_tma_tiles(int64_t K, int64_t E) { return ((E + 127) / 128) * ((K + 255) / 256); }
DwTmaPlan dw_tma_plan(const Specialization& s, int64_t T, int sms, int cluster = 0) {
  DwTmaPlan p;
  if (T <= 0) return p;
  const int64_t K = s.params[P_K], E = s.params[P_E];
  const int64_t tiles = dw_tma_tiles(K, E), chunks = (T + 63) / 64;
  int64_t ranges = std::clamp<int64_t>(sms / tiles, 1, s.config[C_WN]);
  ranges = std::min(ranges, chunks);
  // (cluster > 0: the side-by-side plan's, in place of the config's wm; the kernel takes its cluster at run time)
  p.cluster = static_cast<int>(std::min<int64_t>(ranges, cluster > 0 ? cluster : s.config[C_WM]));
  p.groups = static_cast<int>((ranges + p.cluster - 1) / p.cluster);
  p.ranges = p.groups * p.cluster;  // the last ranges may be empty (rows past T): they add zeros
  p.rows = static_cast<int>((chunks + p.ranges - 1) / p.ranges * 64);
  // (+ one flag word per CTA: the one-launch kernel's in-kernel group sum)
  p.workspace_elems = p.groups > 1 ? p.groups * E * K + round_up(tiles * p.ranges, 4) : 0;
  return p;
}

// Clusters of `cy` CTAs (threads, smem) of kernel k resident at once on the device (0: cannot be co-scheduled): the
// one-launch backward sums its groups in the kernel only where its whole grid is resident at once.
int resident_clusters(Runtime::Impl& impl, const Kernel& k, unsigned cy, unsigned threads, unsigned smem) {
  if (cy > 1) return impl.resident_clusters(k, cy, threads, smem);
  return impl.device().sm_count * impl.resident_per_sm(k, static_cast<int>(threads), static_cast<int>(smem));
}

// The TMA backward's kernels by precision (0 tf32, 1 high, 2 bf16(g)).
// 4 (standard, the default): dx
// from bf16(g), dw from hi + lo — the fastest measured (≈ 60 µs: dx 23.9 + dw 35.3 in session 5's round 2, against
// tf32 80.7 and high 71.1).
uint32_t dx_tma_kernel(int precision) {
  return precision == 0 ? kDxTmaF16 : precision == 1 ? kDxTmaSplit : kDxTma;
}
uint32_t dw_tma_kernel(int precision) {
  return precision == 0 ? kDwTmaF16 : precision == 1 || precision == 4 ? kDwTma : kDwTmaBf16;
}
// The fp16 pass's w operand in the workspace, after dw's partials: w16 [E, K] fp16 (E·K/2 fp32 slots) and 2^c_k [K].
int64_t w16_elems(int64_t K, int64_t E) { return E * K / 2 + K; }

}  // namespace

// Whether the op's default at precision standard with dx and dw both wanted (sm_90a, E ≤ 256) is the one-launch
// kernel (dw role first; session 9, round 2: 56.94 vs 58.58 µs for the two kernels in the same run at 8192 × 2048 →
// 256) — where none of its CTAs takes more than one dx tile (its grid is dw's: at K = 7168 it has 112 CTAs for 128
// dx tiles, and ran 210 vs 159 µs).
constexpr bool kBwdOneLaunchDefault = true;
// Its options by default (kRgOne*): w prefetched into L2 near dw's end. Session 10, paired call by call against
// session 9's path (no options) in the same runs: round 2 57.34 µs (p10–p90 56.9–58.0) against 59.9–61.5 (bimodal,
// p10 56.7); round 3 +0.14 µs (faster in 45 % of 60 rounds: a tie); round 4 −0.78 (faster in 71 % of 80 rounds).
constexpr int kBwdOneOptions = kRgOneWPrefetch;
// The one launch as the default (past side by side's line, below): where none of its CTAs takes more than one dx tile
// and dx's 64-token tiles fill ≥ 70 % of its grid — each CTA runs at most one dx tile after its dw role, so with fewer
// tiles the other CTAs idle through the dx role. Session 25 (H100, one
// process, 12–24 rounds call by call, `RouterGemmTest.BwdSideBySideShapesAB`), one launch against the two kernels by
// the tiles' share of the grid: 29 % (2048 × 7168 → 256) 85.1 vs 49.7 µs, 50 % (4096 × 4096) 73.1 vs 65.6, 57 %
// (4096 × 7168) 110.0 vs 109.8, 71 % (5120 × 7168) 122.1 vs 126.3, 75 % (6144 × 4096) 85.4 vs 85.4, 86 % (6144 ×
// 7168) 131.3 vs 137.5, 88 % (7168 × 4096) 91.6 vs 91.6, 100 % (7168 × 7168) 144.6 vs 149.0, (8192 × 4096) 97.3 vs
// 97.1.
bool one_launch_default(int64_t T, int64_t K, int64_t E, const DwTmaPlan& p) {
  const int64_t grid = dw_tma_tiles(K, E) * p.ranges, tiles = (T + 63) / 64;
  return tiles <= grid && 10 * tiles >= 7 * grid;
}
// The default at precision standard with dx and dw both wanted (sm_90a, E ≤ 256): the two kernels side by side
// (variant 4, where its plan splits the SMs) up to T + K/2 = 9216 tokens on 132 SMs (in proportion to the SMs
// elsewhere) — a line through session 25's crossovers at K = 2048 … 7168 (one process, 12–24 rounds call by call,
// `RouterGemmTest.BwdSideBySideShapesAB`; side by side against the best other arrangement, µs):
//   wins:   8192 × 2048 → 256 55.3 vs 56.8 (one launch); 6144 × 2048 44.5 vs 50.0; 4096 × 2048 34.2 vs 36.2;
//           1024 × 2048 19.3 vs 23.0; 4096 × 2048 → 128 23.5 vs 30.1; 4096 × 4096 52.8 vs 65.6; 6144 × 4096 75.2 vs
//           85.4; 7168 × 4096 87.1 vs 91.6; 2048 × 7168 49.2 vs 49.7; 4096 × 7168 95.5 vs 109.8; 5120 × 7168 116.5 vs
//           122.1;
//   losses: 8192 × 4096 99.1 vs 97.1; 6144 × 7168 134.7 vs 131.3; 7168 × 7168 155.5 vs 144.6; 16384 × 2048 102.5
//           vs 101.9; 8192 × 7168 177 vs 161 (bench processes).
// Where every SM has a dx tile, the other arrangements lose no SM, and side by side is bound by dw on half of them.
// Past the line too where dw's own grid is no larger than its side-by-side share (E ≤ 128: 8 tiles × 8 ranges = 64
// CTAs at K = 2048): there side by side costs dw nothing. Session 25, K = 2048, E = 128, 12 rounds: 8192 tokens 36.7 µs
// against 49.1 (two kernels) and 61.9 (one launch); 16384 tokens 64.3 against 86.1 and 103.7.
bool detail::router_gemm_side_by_side_default(int64_t T, int64_t K, int sms, int dw_own_ctas,
                                              const RouterGemmSideBySide& p) {
  if (p.dx_ctas <= 0) return false;
  return dw_own_ctas <= p.dw_sms || (T + K / 2) * 132 <= int64_t{9216} * sms;
}

// The two kernels side by side (variant 4, session 24; the default at precision standard where it was measured faster:
// above): dw on about half the SMs, in whole T ranges of its tiles (an even count where dw runs in clusters of 2, at
// most 8), the dx kernel persistent on the rest. The dx kernel
// starts the dw kernel (PDL) at its entry, so dw takes the SMs dx leaves free at once. Session 24, 8192 × 2048 → 256,
// one process, 24 rounds call by call: dx on 64 CTAs (the plan gives it 68) beside dw's 4 ranges (64 CTAs)
// 55.3–55.7 µs against the one launch's 57.3 (faster in 96–100 % of the rounds); dx on 36–52 CTAs 57.6–77.8 (dx
// alone on 52 CTAs takes 54.9 µs: its rate is per SM). Where one range of dw's tiles takes more than half the SMs, no
// split (dx_ctas 0: every SM, the plain two kernels).
detail::RouterGemmSideBySide detail::router_gemm_side_by_side_plan(int64_t K, int64_t E, int sms, int dw_cluster) {
  RouterGemmSideBySide p;
  const int64_t tiles = dw_tma_tiles(K, E);
  int64_t r = std::clamp<int64_t>(sms / 2 / tiles, 1, 8);
  if (dw_cluster > 1 && r > 1) r -= r % dw_cluster;  // whole clusters
  if (2 * tiles * r > sms) return p;  // one range of dw's tiles takes more than half the SMs: no split
  p.dw_sms = static_cast<int>(tiles * r);
  p.dx_ctas = sms - p.dw_sms;
  if (r == 4 && dw_cluster == 2) {  // (session 27, 8192 × 2048 → 256: 53.7 against 55.4 µs; H200 52.1 against 53.9)
    p.dw_cluster = 4;
    p.dx_cluster = 2;
  }
  return p;
}

// The dx kernel's column parts (session 25): a token tile's 256-column blocks are cut into parts, each a work unit,
// where the tiles alone leave CTAs idle — the most parts (from `base`, at most one block each, no empty part) whose
// units still fit the CTAs once. A dx unit's time is set by its w chunks on one SM (session 24: the dx kernel's rate
// is per SM), so at T = 1024 sixteen 64-token tiles on 16 SMs took as long as 128 tiles on 128.
int detail::router_gemm_dx_parts(int64_t tiles, int64_t K, int cm, int base, int ctas) {
  const int64_t nch = (K + 255) / 256, groups = (tiles + cm - 1) / cm;
  int best = base;
  for (int64_t p = base + 1; p <= nch && groups * p <= ctas / cm; ++p) {
    const int64_t per = (nch + p - 1) / p;
    if (per * (p - 1) < nch) best = static_cast<int>(p);  // (else the last part would be empty)
  }
  return best;
}

int64_t router_gemm_fp32_bwd_workspace_elems(Runtime& rt, int64_t T, int64_t K, int64_t E,
                                             const RouterGemmBwdOptions& options) {
  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  const int precision = static_cast<int>(options.precision);
  if (default_bwd_variant(arch, E) >= 2) {
    int64_t n = dw_tma_plan(impl.tuned(spec(arch, dw_tma_kernel(precision), K, E), T), T, sm_count(rt)).workspace_elems;
    if (kBwdOneLaunchDefault && precision == 4)  // (either path may run: the larger of the two plans)
      n = std::max(n, dw_tma_plan(impl.tuned(spec(arch, kBwdTma, K, E), T), T, sm_count(rt)).workspace_elems);
    return n + (precision == 0 && T > 0 ? w16_elems(K, E) : 0);
  }
  const Specialization s = impl.tuned(spec(arch, kDw, K, E), T);
  return dw_plan(s, T, sm_count(rt)).workspace_elems;
}
int64_t router_gemm_fp32_bwd_workspace_elems(Runtime& rt, int64_t T, int64_t K, int64_t E) {
  return router_gemm_fp32_bwd_workspace_elems(rt, T, K, E, RouterGemmBwdOptions{});
}

void detail::router_gemm_fp32_bwd_config(Runtime& rt, const TensorRef& g, const TensorRef& x, const TensorRef& w,
                                         const TensorRef& dx, const TensorRef& dw, const TensorRef& workspace,
                                         int variant, int precision, const RouterGemmConfig* force_dx,
                                         const RouterGemmConfig* force_dw, Stream stream) {
  const Check ck{"router_gemm_fp32_bwd"};
  const RowView xr = check_x(ck, x);
  const int64_t K = xr.cols, T = xr.rows;
  const int64_t E = check_w(ck, w, K);
  const RowView gr = check_like_x(ck, "g", g, DType::f32, xr, E, "E");
  if (!dx.defined() && !dw.defined()) ck.invalid("dx", "expected dx or dw (or both) to be given, got neither");
  RowView dxr;
  if (dx.defined()) dxr = check_like_x(ck, "dx", dx, DType::bf16, xr, K, "K");
  if (dw.defined()) ck.tensor("dw", dw, {DType::f32}, {E, K}, 16);
  if (workspace.defined()) ck.tensor("workspace", workspace, {DType::f32}, {-1}, 16);

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  const bool by_default = variant < 0;
  if (variant < 0) variant = default_bwd_variant(arch, E);
  if (variant != 0 && (variant < 2 || variant > 4))  // (1: the cp.async wgmma kernels, removed in session 7)
    ck.invalid("variant", fmt::format("expected 0 (mma.sync), 2 (TMA), 3 (TMA, one launch) or 4 (TMA, side by side), "
                                      "got {}",
                                      variant));
  if (variant >= 2 && !(has_wgmma(arch) && E <= 256))
    ck.invalid("variant", fmt::format("the wgmma backward needs sm_90a and E ≤ 256 (arch {}, E = {})", arch.name(), E));
  if (precision < 0 || precision > 4)
    ck.invalid("precision", fmt::format("expected RouterGemmPrecision::tf32 or ::high, got {}", precision));
  if (variant == 3 && precision != 4)
    ck.invalid("variant", fmt::format("the one-launch backward (variant {}) computes precision standard only, got {}",
                                      variant, precision));
  if (variant >= 2) {
    if (T == 0) {  // dx has no rows; dw is an empty sum: zeros
      if (!dw.defined()) return;
      const RouterGemmDwReduceArgs r{nullptr, static_cast<float*>(dw.data), E * K, 0};
      LaunchDims d;
      d.grid[0] = static_cast<unsigned>((E * K / 4 + 255) / 256);
      d.block[0] = 256;
      impl.launch(spec(arch, kDwReduce, K, E), d, stream, r);
      return;
    }
    const bool f16_dx = dx.defined() && precision == 0;
    // The workspace: dw's group partials, then (fp16 dx) w16 and its column scales.
    // One launch for both (variant 3, or the default where it fits) when both are wanted; else the dx and dw kernels.
    bool one = false;
    Specialization sdw, sone, sdx;  // (sdx: the dx kernel's, picked once)
    DwTmaPlan plan;
    bool one_default = by_default && kBwdOneLaunchDefault && precision == 4 && !force_dx && !force_dw;
    if (one_default && dx.defined() && dw.defined()) {  // side by side where it was measured faster (above)
      sdw = pick(rt, ck, spec(arch, dw_tma_kernel(precision), K, E), T, nullptr);  // (kept for the dw launch)
      const RouterGemmSideBySide p = router_gemm_side_by_side_plan(K, E, sm_count(rt), sdw.config[C_WM]);
      const int own = static_cast<int>(dw_tma_tiles(K, E) * dw_tma_plan(sdw, T, sm_count(rt)).ranges);
      if (router_gemm_side_by_side_default(T, K, sm_count(rt), own, p)) {
        variant = 4;
        one_default = false;
      }
    }
    if (dx.defined() && dw.defined() && (variant == 3 || one_default)) {
      sone = pick(rt, ck, spec(arch, kBwdTma, K, E), T, force_dx ? force_dx : force_dw);
      plan = dw_tma_plan(sone, T, sm_count(rt));
      one = variant == 3 || one_launch_default(T, K, E, plan);
    }
    RouterGemmSideBySide sbs;  // (variant 4 with dx and dw: dx's CTAs capped, dw's ranges from the SMs left)
    if (!one && dw.defined()) {
      if (!sdw.family) sdw = pick(rt, ck, spec(arch, dw_tma_kernel(precision), K, E), T, force_dw);
      if (variant == 4 && dx.defined()) {
        sbs = router_gemm_side_by_side_plan(K, E, sm_count(rt), sdw.config[C_WM]);
        // (both or neither: dw's clusters of 4 need dx in pairs; not where dx's config cannot take pairs — the fp16
        // pass's 128-token units — nor where a config is forced, nor under the measurement switch)
        sdx = pick(rt, ck, spec(arch, dx_tma_kernel(precision), K, E), T, force_dx);  // (variant 4: never `one`)
        Specialization pair = sdx;
        pair.config[C_WN] = 2;
        if (force_dw || force_dx || !valid(pair) ||
            (router_gemm_measure_flags.load(std::memory_order_relaxed) & kRgSbsOwnClusters))
          sbs.dw_cluster = sbs.dx_cluster = 0;
      }
      plan = dw_tma_plan(sdw, T, sbs.dx_ctas > 0 ? sbs.dw_sms : sm_count(rt), sbs.dw_cluster);
    }
    const int64_t part_elems = dw.defined() ? plan.workspace_elems : 0;
    const int64_t need = part_elems + (f16_dx ? w16_elems(K, E) : 0);
    if (need > 0 && workspace.defined() && workspace.numel() < need)
      ck.shape_error("workspace", fmt::format("expected ≥ {} fp32 elements (router_gemm_fp32_bwd_workspace_elems), got {}",
                                              need, workspace.numel()));
    ScratchBuffer owned;  // (the runtime's scratch: partials written before read, flags tagged per launch)
    float* ws = nullptr;
    if (need > 0) {
      if (workspace.defined()) {
        ws = static_cast<float*>(workspace.data);
      } else {
        static const char owner = 0;
        owned = impl.scratch(&owner, static_cast<size_t>(need) * 4, stream);
        ws = reinterpret_cast<float*>(owned.ptr);
      }
    }
    RouterGemmDxTmaArgs ax{};  // (also the one-launch kernel's dx part)
    if (dx.defined()) {
      if (!sdx.family) sdx = one ? sone : pick(rt, ck, spec(arch, dx_tma_kernel(precision), K, E), T, force_dx);
      if (sbs.dx_cluster > 0) sdx.config[C_WN] = sbs.dx_cluster;  // side by side: w by multicast (checked above)
      RouterGemmDxTmaArgs& a = ax;
      if (f16_dx) {  // w → w16 (fp16, column scales 2^−c_k) and 2^c_k; the dx kernel waits for it (PDL)
        void* w16 = ws + part_elems;
        float* colf = ws + part_elems + E * K / 2;
        const RouterGemmW16Args wa{w.data, w16, colf};
        LaunchDims wd;
        wd.grid[0] = static_cast<unsigned>((K + 63) / 64);
        wd.block[0] = 256;
        impl.launch(spec(arch, kW16, K, E), wd, stream, wa);
        encode_tma_2d(a.tmw, w16, DType::bf16, K, E, K * 2, 64);  // fp16 bits: the copies do not convert
        a.colf = colf;
      } else {
        encode_tma_2d(a.tmw, w.data, DType::bf16, K, E, K * 2, 64);
      }
      encode_tma_2d(a.tmdx, dx.data, DType::bf16, K, T, dxr.stride * 2, 64);
      a.g = static_cast<const float*>(g.data);
      a.g_stride = gr.stride;
      a.dx = dx.data;
      a.dx_stride = dxr.stride;
      a.T = static_cast<int>(T);
      const int tm = sdx.config[C_BM];
      a.tiles = static_cast<int>((T + tm - 1) / tm);  // token tiles
      a.parts = tm == 128 ? 2 : 1;                    // column parts of each (more below, where CTAs would idle)
      a.trace = router_gemm_trace.load(std::memory_order_relaxed);
      a.flags = router_gemm_measure_flags.load(std::memory_order_relaxed) &
                (kRgSkipMma | kRgSkipLoad | kRgSkipStore | kRgNoGPrefetch);
    }
    // Side by side with one dw group (no dw_reduce behind it; not the fp16 pass, whose dx waits for w16): the dw
    // kernel — the critical path there — is launched first and the dx kernel behind it with PDL (it never waits;
    // the dw kernel lets it start at its entry), so dw's CTAs take their SMs and the DRAM first (session 27).
    const bool dw_first = dx.defined() && dw.defined() && !one && sbs.dx_ctas > 0 && plan.groups == 1 && !f16_dx &&
                          !(router_gemm_measure_flags.load(std::memory_order_relaxed) & kRgSbsDxFirst);
    auto launch_dx = [&] {
      const Specialization& s = sdx;
      const int cm = s.config[C_WN];
      RouterGemmDxTmaArgs& a = ax;
      const int hook = router_gemm_dx_ctas.load(std::memory_order_relaxed);  // (measurement; 0: every SM)
      const int cap = hook > 0 ? hook : sbs.dx_ctas;
      const int sms = cap > 0 ? std::min(cap, sm_count(rt)) : sm_count(rt);
      // Column parts fill the CTAs dx may take: with the dw kernel behind it and no cap, only the SMs dw's grid
      // leaves (more parts would hold dw's CTAs back: session 25, 4096 × 2048 → 128, 30.1 µs against 24.3 without).
      const int dw_ctas = dw.defined() ? static_cast<int>(dw_tma_tiles(K, E) * plan.ranges) : 0;
      const int budget = cap > 0 || !dw.defined() ? sms : std::max(1, sm_count(rt) - dw_ctas);
      a.parts = router_gemm_dx_parts(a.tiles, K, cm, a.parts, budget);
      if (const int fp = router_gemm_dx_parts_force.load(std::memory_order_relaxed); fp < 0) {  // (measurement)
        a.parts = 0;  // balanced ranges of (tile, block) pairs (DxCursor)
      } else if (fp > 0) {  // (measurement)
        const int64_t nch = (K + 255) / 256, per = (nch + fp - 1) / fp;
        if (fp > nch || per * (fp - 1) >= nch)
          ck.invalid("parts", fmt::format("a forced dx column split must give every part a block: {} parts of {} "
                                          "blocks",
                                          fp, nch));
        a.parts = fp;
      }
      // (balanced ranges: a cluster for each of at most NB = ceil(tiles / cm)·ceil(K / 256) blocks)
      const int64_t groups = (a.tiles + cm - 1) / cm * (a.parts > 0 ? a.parts : (K + 255) / 256);
      const int64_t clusters = std::min<int64_t>(groups, std::max(1, sms / cm));
      LaunchDims d;
      d.grid[0] = static_cast<unsigned>(clusters * cm);
      d.cluster[0] = static_cast<unsigned>(cm);
      d.block[0] = static_cast<unsigned>(threads(s));
      d.smem = static_cast<unsigned>(smem_bytes(s));
      d.pdl = f16_dx || dw_first;  // (f16: converts its g rows while the w16 kernel runs; waits for it before w16 /
                                   // colf; behind dw: never waits)
      impl.launch(s, d, stream, a);
    };
    if (dx.defined() && !one && !dw_first) launch_dx();
    if (dw.defined()) {
      float* partial = plan.workspace_elems > 0 ? ws : nullptr;
      RouterGemmDwTmaArgs a{};
      const bool after_dx = dx.defined();  // T > 0 here: the dx kernel was launched just before (unless dw_first)
      const Specialization& sk = one ? sone : sdw;
      encode_tma_2d(a.tmg, g.data, DType::f32, E, T, gr.stride * 4, sk.config[C_BK]);
      encode_tma_2d(a.tmx, x.data, DType::bf16, K, T, xr.stride * 2, sk.config[C_BK]);
      a.dw = static_cast<float*>(dw.data);
      a.partial = partial;
      a.T = static_cast<int>(T);
      a.split_rows = plan.rows;
      a.cluster = plan.cluster;
      a.trace = router_gemm_trace.load(std::memory_order_relaxed);
      if (a.trace) a.trace += kRgTraceBwdDwOffset;
      a.flags = router_gemm_measure_flags.load(std::memory_order_relaxed) & (kRgSkipMma | kRgSkipLoad | kRgSkipStore);
      LaunchDims d;
      d.grid[0] = static_cast<unsigned>(dw_tma_tiles(K, E));
      d.grid[1] = static_cast<unsigned>(plan.ranges);
      d.cluster[1] = static_cast<unsigned>(plan.cluster);
      d.block[0] = static_cast<unsigned>(threads(sk));
      d.smem = static_cast<unsigned>(smem_bytes(sk));
      bool fused = false;  // the one-launch kernel adds the groups itself (no dw_reduce)
      if (one) {  // dx's tiles and trace ride along; the dx slots of the trace are per CTA of this grid
        if (!(router_gemm_measure_flags.load(std::memory_order_relaxed) & kRgNoXEvictFirst)) a.flags |= kRgXEvictFirst;
        const int om = router_gemm_bwd_one_measure.load(std::memory_order_relaxed);  // (measurement, kRgOne*)
        // The kernel's options: the defaults, or (measurement, kRgOneExplicit) exactly those named.
        const int opts = om & kRgOneExplicit ? om & kRgOneWPrefetch : kBwdOneOptions;
        if (om & kRgOneDwSkeleton) a.flags |= kRgSkipLoad | kRgSkipMma | kRgSkipStore;
        if (om & kRgOneDwNoStore) a.flags |= kRgSkipStore;
        RouterGemmBwdTmaArgs b{a, ax, nullptr, 0, 0, 0, 0};
        if (om & kRgOneDxNoStore) b.dx.flags |= kRgSkipStore;
        if (om & kRgOneDxNoLoad) b.dx.flags |= kRgSkipLoad;
        b.prefetch_g = !(router_gemm_measure_flags.load(std::memory_order_relaxed) & kRgNoGPrefetch);
        const int64_t ctas = static_cast<int64_t>(d.grid[0]) * d.grid[1];
        fused = plan.groups > 1 && !(router_gemm_measure_flags.load(std::memory_order_relaxed) & kRgSepReduce) &&
                !(a.flags & kRgSkipStore) &&
                resident_clusters(impl, impl.kernel(sone), d.cluster[1], d.block[0], d.smem) * int64_t{plan.cluster} >=
                    ctas;
        if (fused) {
          b.flags = reinterpret_cast<unsigned*>(partial + plan.groups * E * K);
          b.tag = impl.workspace_tag(reinterpret_cast<CUdeviceptr>(b.flags), static_cast<size_t>(ctas), stream,
                                     "cuMemsetD32Async (router_gemm backward flags)");
          b.interleave = !(router_gemm_measure_flags.load(std::memory_order_relaxed) & kRgEndReduce);
        }
        b.options = opts;
        impl.launch(sone, d, stream, b);
      } else {
        d.pdl = after_dx && !dw_first;  // overlaps the dx kernel's last CTAs (no data in common: dw never waits)
        impl.launch(sdw, d, stream, a);
        if (dw_first) launch_dx();
      }
      if (plan.groups > 1 && !(a.flags & kRgSkipStore) && !fused) {  // the groups' sums, added in group order
        const RouterGemmDwReduceArgs r{partial, static_cast<float*>(dw.data), E * K, plan.groups};
        LaunchDims rd;
        rd.grid[0] = static_cast<unsigned>((E * K / 4 + 255) / 256);
        rd.block[0] = 256;
        rd.pdl = true;  // starts while the dw kernel drains; waits for it (griddepcontrol.wait)
        impl.launch(spec(arch, kDwReduce, K, E), rd, stream, r);
      }
    }
    impl.release_scratch(owned, stream);
    return;
  }
  if (dx.defined() && T > 0) {
    const Specialization s = pick(rt, ck, spec(arch, kDx, K, E), T, force_dx);
    const RouterGemmDxArgs a{static_cast<const float*>(g.data), gr.stride, w.data, dx.data, dxr.stride,
                             static_cast<int>(T), router_gemm_measure_flags.load(std::memory_order_relaxed)};
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>((T + s.config[C_BM] - 1) / s.config[C_BM]);
    d.grid[1] = static_cast<unsigned>((K + s.config[C_BN] - 1) / s.config[C_BN]);
    d.block[0] = static_cast<unsigned>(threads(s));
    d.smem = static_cast<unsigned>(smem_bytes(s));
    impl.launch(s, d, stream, a);
  }
  if (!dw.defined()) return;

  const Specialization s = pick(rt, ck, spec(arch, kDw, K, E), T, force_dw);
  const DwPlan plan = T > 0 ? dw_plan(s, T, sm_count(rt)) : DwPlan{};
  if (plan.workspace_elems > 0 && workspace.defined() && workspace.numel() < plan.workspace_elems)
    ck.shape_error("workspace", fmt::format("expected ≥ {} fp32 elements (router_gemm_fp32_bwd_workspace_elems), got {}",
                                            plan.workspace_elems, workspace.numel()));
  ScratchBuffer owned;  // (the runtime's scratch: every partial written before it is read)
  float* partial = nullptr;
  if (plan.workspace_elems > 0) {
    if (workspace.defined()) {
      partial = static_cast<float*>(workspace.data);
    } else {
      static const char owner = 0;
      owned = impl.scratch(&owner, static_cast<size_t>(plan.workspace_elems) * 4, stream);
      partial = reinterpret_cast<float*>(owned.ptr);
    }
  }
  if (plan.splits > 0) {
    const RouterGemmDwArgs a{static_cast<const float*>(g.data), gr.stride, x.data, xr.stride,
                             static_cast<float*>(dw.data), partial, static_cast<int>(T), plan.split_rows,
                             router_gemm_measure_flags.load(std::memory_order_relaxed)};
    const int64_t tiles = ((E + s.config[C_BM] - 1) / s.config[C_BM]) * ((K + s.config[C_BN] - 1) / s.config[C_BN]);
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(tiles);
    d.grid[1] = static_cast<unsigned>(plan.splits);
    d.block[0] = static_cast<unsigned>(threads(s));
    d.smem = static_cast<unsigned>(smem_bytes(s));
    impl.launch(s, d, stream, a);
  }
  if (plan.splits != 1) {  // several partials to add, or T = 0 (zeros)
    const RouterGemmDwReduceArgs r{partial, static_cast<float*>(dw.data), E * K, plan.splits};
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>((E * K / 4 + 255) / 256);
    d.block[0] = 256;
    impl.launch(spec(arch, kDwReduce, K, E), d, stream, r);
  }
  impl.release_scratch(owned, stream);
}

void router_gemm_fp32_bwd(Runtime& rt, const TensorRef& g, const TensorRef& x, const TensorRef& w, const TensorRef& dx,
                          const TensorRef& dw, const TensorRef& workspace, const RouterGemmBwdOptions& options,
                          Stream stream) {
  const int precision = static_cast<int>(options.precision);
  if (precision != 0 && precision != 1 && precision != 4)
    Check{"router_gemm_fp32_bwd"}.invalid(
        "precision",
        fmt::format("expected RouterGemmPrecision::standard (4), ::tf32 (0) or ::high (1), got {}", precision));
  detail::router_gemm_fp32_bwd_config(rt, g, x, w, dx, dw, workspace, -1, precision, nullptr, nullptr, stream);
}
void router_gemm_fp32_bwd(Runtime& rt, const TensorRef& g, const TensorRef& x, const TensorRef& w, const TensorRef& dx,
                          const TensorRef& dw, const TensorRef& workspace, Stream stream) {
  router_gemm_fp32_bwd(rt, g, x, w, dx, dw, workspace, RouterGemmBwdOptions{}, stream);
}

// ---- tuner and bench instances -------------------------------------------------------------------------------

namespace detail {

struct RouterGemmBuffers {
  std::vector<void*> ptrs;
  std::shared_ptr<CublasLtGemm> cublas;  // the bench baseline ("_cublas" instances)
  RouterGemmFwdBenchIo fwd_io;           // a forward instance's buffers (router_gemm_fwd_bench_io)
  ~RouterGemmBuffers() {
    for (void* p : ptrs) device_free(p);
  }
  void* alloc(size_t bytes) {
    ptrs.push_back(device_alloc(std::max<size_t>(bytes, 16)));
    return ptrs.back();
  }
  // N(0, sigma) values (never zero) in bf16 or fp32.
  void* random(size_t n, float sigma, bool bf16, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.f, sigma);
    std::vector<uint32_t> f(n);
    for (auto& v : f) {
      float x = dist(rng);
      if (x == 0.f) x = sigma * 1e-3f;
      std::memcpy(&v, &x, 4);
    }
    if (!bf16) {
      void* d = alloc(n * 4);
      copy_to_device(d, f.data(), n * 4);
      return d;
    }
    std::vector<uint16_t> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = static_cast<uint16_t>((f[i] + 0x7fff + ((f[i] >> 16) & 1)) >> 16);
    void* d = alloc(n * 2);
    copy_to_device(d, h.data(), n * 2);
    return d;
  }
};

namespace {
// Strips `sfx` from the end of `part` (true), or leaves part as it is (false).
bool strip_suffix(std::string& part, std::string_view sfx) {
  if (!part.ends_with(sfx)) return false;
  part.resize(part.size() - sfx.size());
  return true;
}
// Strips the table's suffixes from the end of `part` in any order and combination, OR-ing their bits into `flags`.
template <size_t N>
void strip_switches(std::string& part, int& flags, const std::pair<const char*, int> (&table)[N]) {
  for (bool more = true; more;) {
    more = false;
    for (const auto& [suffix, bit] : table)
      if (strip_suffix(part, suffix)) {
        flags |= bit;
        more = true;
      }
  }
}

// The cuBLASLt baseline of a forward instance (logits y = x · wᵀ): timed by the bench like the op, on its own output
// buffer; run once here beside the op and compared (relative L2 ≤ 1e-4: both sum the same bf16 products in fp32, in
// different orders). Where cuBLASLt cannot run or disagrees, the instance has no baseline and its name says why.
void add_cublas_baseline(BenchInstance& inst, RouterGemmBuffers& b, const TensorRef& x, const TensorRef& w,
                         const TensorRef& y) {
  const int64_t T = x.shape[0], K = x.shape[1], E = w.shape[0];
  b.cublas = std::make_shared<CublasLtGemm>(T, K, E);
  if (!b.cublas->available()) {
    inst.baseline_name = "cuBLASLt unavailable: " + b.cublas->why();
    return;
  }
  void* yc = b.alloc(static_cast<size_t>(T * E * 4));
  const std::shared_ptr<CublasLtGemm> lt = b.cublas;
  const void *xp = x.data, *wp = w.data;
  inst.run(nullptr);
  lt->run(xp, wp, yc, nullptr);
  const double rel = relative_l2_device(yc, y.data, T * E);
  if (!(rel <= 1e-4)) {
    inst.baseline_name = fmt::format("cuBLASLt unavailable: its output differs from kiln's (relative L2 {:.3g})", rel);
    return;
  }
  inst.baseline = [lt, xp, wp, yc](Stream s) { lt->run(xp, wp, yc, s); };
  b.fwd_io.yc = yc;
  b.fwd_io.lt = lt;
  inst.baseline_name = fmt::format("{} (bf16 x bf16ᵀ → fp32, relative L2 to kiln {:.2g})", lt->description(), rel);
}
}  // namespace

BenchInstance router_gemm_instance(Runtime& rt, int64_t T, int64_t K, int64_t E, const std::string& part_in,
                                   const RouterGemmConfig* force) {
  // part: fwd | bwd | dx | dw, then optionally _sm90 (the wgmma forward) or _mma (mma.sync kernels), then optionally
  // _nofence (measurement: skip the wgmma forward's proxy fence; see kRgSkip*), _tf32 / _high / _bf16g
  // (the TMA backward's precision: the fp16 pass, hi + lo, bf16(g) alone; default: standard = dx from bf16(g), dw
  // from hi + lo).
  std::string part = part_in;
  int flags = 0, precision = 4;  // standard (the default)
  // "fwd_cublas": the op's forward with cuBLASLt doing the same GEMM as the instance's baseline (ops/bench/cublaslt.hpp:
  // dlopen'ed here, reported unavailable with the reason where it cannot run; its output checked against the op's once).
  const bool cublas = strip_suffix(part, "_cublas");
  // The expert-pair forward's session-7 switches (after the others below): _epitma (kRgEpiTma), _mix (kRgEpiMix),
  // _plain / _staged (kRgXmcPlain: none of the op's options, i.e. the staged epilogue), _noop0 (kRgNoop launched
  // without dynamic shared memory: kRgNoopNoSmem); session 9: _noexit (kRgNoExitSync: the producer's tail instead of
  // the final cluster barrier).
  const std::pair<const char*, int> xmc_switches[] = {{"_epitma", kRgEpiTma}, {"_plain", kRgXmcPlain},
                                                      {"_noop0", kRgNoop | kRgNoopNoSmem}, {"_mix", kRgEpiMix},
                                                      {"_staged", kRgXmcPlain}, {"_noexit", kRgNoExitSync}};
  strip_switches(part, flags, xmc_switches);
  // Switches (any combination, after the kernel suffix): _nostore (kRgSkipStore); the expert-pair forward's _rot
  // (kRgRotateK), _bal (kRgBalance), _now (kRgSkipW), _direct (kRgEpiDirect), _halfstore (kRgHalfStore); _noop
  // (kRgNoop, also the 64-token TMA kernel); the TMA backward's ablations _nomma (kRgSkipMma), _noload (kRgSkipLoad)
  // and _nostore (its dx / dw kernels).
  const std::pair<const char*, int> switches[] = {{"_rot", kRgRotateK},   {"_bal", kRgBalance},
                                                  {"_now", kRgSkipW},      {"_nostore", kRgSkipStore},
                                                  {"_direct", kRgEpiDirect}, {"_halfstore", kRgHalfStore},
                                                  {"_noop", kRgNoop},      {"_nomma", kRgSkipMma},
                                                  {"_noload", kRgSkipLoad}, {"_sepred", kRgSepReduce},
                                                  {"_endred", kRgEndReduce}, {"_nogpf", kRgNoGPrefetch},
                                                  {"_noef", kRgNoXEvictFirst}};
  strip_switches(part, flags, switches);
  if (strip_suffix(part, "_nostore")) flags |= kRgSkipStore;  // the TMA forward without its output stores
  else if (strip_suffix(part, "_high")) precision = 1;
  else if (strip_suffix(part, "_bf16g")) precision = 2;
  else if (strip_suffix(part, "_tf32")) precision = 0;
  else if (strip_suffix(part, "_nofence")) flags |= kRgSkipCopyFence;
  int variant = -1;
  if (strip_suffix(part, "_one")) variant = 3;  // the backward in one launch (dw role, then dx role)
  else if (strip_suffix(part, "_sbs")) variant = 4;  // the backward's two kernels side by side (session 24)
  else if (strip_suffix(part, "_tmaxmc")) variant = 5;     // the TMA forward over expert pairs (x multicast)
  else if (strip_suffix(part, "_tmaks")) variant = 3;  // the TMA forward with K split over a cluster
  else if (strip_suffix(part, "_tma")) variant = 2;
  else if (strip_suffix(part, "_sm90")) variant = 1;
  else if (strip_suffix(part, "_mma")) variant = 0;
  static std::random_device rd;
  auto b = std::make_shared<RouterGemmBuffers>();
  const TensorRef x = TensorRef::contiguous(b->random(T * K, 1.0f, true, rd()), DType::bf16, {T, K});
  const TensorRef w = TensorRef::contiguous(b->random(E * K, 0.02f, true, rd()), DType::bf16, {E, K});
  BenchInstance inst;
  inst.keepalive = b;
  Runtime* r = &rt;
  const std::optional<RouterGemmConfig> cfg = force ? std::optional(*force) : std::nullopt;
  auto with_flags = [flags](auto&& fn) {
    router_gemm_measure_flags.store(flags);
    fn();
    router_gemm_measure_flags.store(0);
  };
  if (part == "fwd") {
    const TensorRef y = TensorRef::contiguous(b->alloc(T * E * 4), DType::f32, {T, E});
    inst.bytes = static_cast<uint64_t>(T * K * 2 + E * K * 2 + T * E * 4);
    inst.run = [=](Stream s) {
      with_flags([&] { router_gemm_fp32_fwd_config(*r, x, w, y, variant, cfg ? &*cfg : nullptr, s); });
    };
    inst.outputs = {y};
    b->fwd_io.x = x;
    b->fwd_io.w = w;
    b->fwd_io.y = y;
    if (cublas) add_cublas_baseline(inst, *b, x, w, y);
    return inst;
  }
  const TensorRef g = TensorRef::contiguous(b->random(T * E, 1e-3f, false, rd()), DType::f32, {T, E});
  const bool want_dx = part != "dw", want_dw = part != "dx";
  const TensorRef dx = want_dx ? TensorRef::contiguous(b->alloc(T * K * 2), DType::bf16, {T, K}) : TensorRef{};
  const TensorRef dw = want_dw ? TensorRef::contiguous(b->alloc(E * K * 4), DType::f32, {E, K}) : TensorRef{};
  // A workspace for every dw variant (a forced config or kernel brings its own split plan; without one the op would
  // allocate stream-ordered in every timed call): the advertised size, at least 16 partials.
  const int64_t ws_elems = std::max<int64_t>(router_gemm_fp32_bwd_workspace_elems(rt, T, K, E), 16 * E * K) + E * K / 2 + K;
  const TensorRef ws =
      ws_elems > 0 ? TensorRef::contiguous(b->alloc(ws_elems * 4), DType::f32, {ws_elems}) : TensorRef{};
  // Minimal traffic: g and w read once, x read once for dw, dx and dw written once.
  inst.bytes = static_cast<uint64_t>(T * E * 4 + E * K * 2 + (want_dx ? T * K * 2 : 0) +
                                     (want_dw ? T * K * 2 + E * K * 4 : 0));
  inst.run = [=](Stream s) {
    const RouterGemmConfig* c = cfg ? &*cfg : nullptr;
    with_flags([&] {
      router_gemm_fp32_bwd_config(*r, g, x, w, dx, dw, ws, variant, precision, want_dx ? c : nullptr,
                                  want_dx ? nullptr : c, s);
    });
  };
  if (want_dx) inst.outputs.push_back(dx);
  if (want_dw) inst.outputs.push_back(dw);
  return inst;
}

RouterGemmFwdBenchIo router_gemm_fwd_bench_io(const BenchInstance& inst) {
  // Every router_gemm instance's keepalive is its RouterGemmBuffers.
  return std::static_pointer_cast<RouterGemmBuffers>(inst.keepalive)->fwd_io;
}

}  // namespace detail

namespace {
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  static const char* const kParts[] = {"fwd",        "dx",          "dw",          "dw",         "fwd_sm90",
                                       "fwd_tma",     "dx_tma_bf16g", "dw_tma_high",
                                       "dx_tma_high", "dw_tma_bf16g", "fwd_tmaks",  "fwd_tmaxmc", "dx_tma_tf32",
                                       "dw_tma_tf32", "dx_tma_tf32", "bwd_one"};
  return detail::router_gemm_instance(rt, tokens, s.params[P_K] > 0 ? s.params[P_K] : 2048,
                                      s.params[P_E] > 0 ? s.params[P_E] : 256, kParts[s.kernel]);
}
}  // namespace

}  // namespace kiln
