// Host recipe: MoE top-k routing (forward, backward) and the padded row-id map (templates/kiln/moe_routing.cuh).
// Spec: linghe-kernels.md §6.1, §13 (HEAD group_topk_score); fp4-moe.md §3.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <utility>

#include "kiln/moe_routing_args.h"
#include "kiln/ops/moe.hpp"
#include "ops/bench/moe_instances.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/log.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace {
using namespace detail;

enum : uint32_t {
  kRoute = 0, kTopkBwd = 1, kMapCount = 2, kMapScan = 3, kMapWrite = 4, kRouteZero = 5, kRouteMap = 6, kMapFused = 7
};
enum { P_E, P_K, P_SIGMOID, P_GROUPS, P_TOPK_GROUPS, P_RENORM, P_BIAS, P_MAP_I32, P_MAP, P_FILL };
// route: warps per CTA, tokens per warp (a chunk of warps·tokens_per_warp ≥ 32 tokens per CTA), how the map is
// written (0: route fills row_id_map with −1 beside its other stores per token, route_map writes the routed entries;
// 1: route_map writes whole rows; 3 and 4: no route_map — after a grid-wide arrival route writes the routed entries
// itself, with the −1 fill of the warp's rows after its tokens, before the arrival (3), or after the CTA's arrival,
// while it waits for the other CTAs (4: the arrival's fence then waits for no fill stores); used where the whole grid
// is resident at once, else 1), `load` (0 only: the next token's row into registers while the current one is
// routed), and threads per token (tpt 0: the warp kernel above, a warp per token; 16: moe_route_run_kernel, a CTA per
// contiguous run of ≤ 2·warps tokens, 16 threads per token, rows by bulk copies — sigmoid routing of the shapes run_ok
// accepts, fused map only, fill 3 / 4 = the −1 rows at kernel start / after the arrival, 5 = the −1 rows and the prob
// / map rows after the arrival; tokens_per_warp is 2 there; `load` 1 with a bias: the selection on approximate keys,
// exact σ for the candidates only, moe_routing.cuh APPROX). topk_bwd: warps per CTA. map_fused (moe_make_row_id_map):
// `fill` 3 = one launch with the −1 rows before the CTA's arrival, 4 = after it, 0 = the three-kernel path
// (map_count → map_scan → map_write, also where the fused grid does not fit at once); `tokens_per_warp` the least
// chunk length (0: 32; the op takes the least power of two from there whose grid fits at once).
// (Removed after measuring: two tokens per warp interleaved, `nt`, slower everywhere in session 5; choosing experts on
// approximate keys, `select` 1 / 2, no faster in session 6 rounds 1–3; every row of a warp by cp.async at kernel
// start, `load` 1, and the fused map with the −1 rows per token, `fill` 2, slower at every point in sessions 5–7;
// the CTA-run kernel with 4 or 8 threads per token, slower in every round of session 7.)
enum { C_WARPS, C_TPW, C_FILL, C_LOAD, C_TPT, C_VARIANT };
// C_VARIANT (config field 5, unnamed: never in the search space, a tuning file or the tuner's tables) selects a
// measurement variant of moe_route_run_kernel (kMoeRunTrace, kMoeRunNo*: moe_routing_args.h) through a forced
// config (tests/gpu/moe_route_measure_test.cpp); 0 everywhere else.
enum { kFillInRoute = 0, kFillInMap = 1, kFusedFillAfter = 3, kFusedFillLate = 4, kRunDeferAll = 5 };
bool fill_outside_loop(int64_t fill) { return fill == kFillInMap || fill == kFusedFillAfter || fill == kFusedFillLate; }
bool fused_fill(int64_t fill) { return fill == kFusedFillAfter || fill == kFusedFillLate; }

// Experts per lane of the route kernel (32 lanes per token): the least multiple of 4 with 32·EL ≥ E such that groups
// either span whole lanes or a lane holds whole groups; 0 if none ≤ 64 exists. (tests/reference/moe.cpp replays the
// softmax sum in this lane order.)
int64_t lane_experts(int64_t E, int64_t G) {
  const int64_t GS = E / std::max<int64_t>(G, 1);
  for (int64_t el = 4 * ((E + 127) / 128); el <= 64; el += 4)
    if (G <= 1 || el % GS == 0 || GS % el == 0) return el;
  return 0;
}

// moe_route_run_kernel's shapes with tpt threads per token: sigmoid, E a multiple of 4·tpt up to 256 (E/tpt experts
// per thread), groups of at least 2 experts either whole inside a thread or spanning a power of two of threads, and
// K ≤ 2·topk_group (grouped) or K ≤ 2·tpt (plain): the two best keys of the kept groups (or of the tpt threads) bound
// the K-th key from below.
bool run_ok(int64_t E, int64_t K, bool sigmoid, int64_t G, int64_t TG, int64_t tpt) {
  if (!sigmoid || E % 16 != 0 || E % (4 * tpt) != 0 || E > 256 || K < 1) return false;
  if (G <= 1) return K <= 2 * tpt;
  const int64_t GS = E / G, EPT = E / tpt;
  const bool layout = EPT % GS == 0 || (GS % EPT == 0 && std::has_single_bit(static_cast<uint64_t>(GS / EPT)));
  return layout && GS >= 2 && K <= 2 * TG;
}
// The LEAN selection's layout (moe_routing.cuh): 16 threads per token, a group spans two of them (8 groups).
bool lean_ok(int64_t E, int64_t G, int64_t TG) { return G == 8 && TG < G && E % 16 == 0; }
bool is_run(const Specialization& s) { return s.kernel == kRoute && s.config[C_TPT] == 16; }
// The run kernel's options (its template argument V, moe_routing_args.h kMoeRun*): the config's `load` field as a
// bit set — 1 the approximate-key selection (kMoeRunApprox), 2 the copies issued by the last warp before the first
// CTA barrier (kMoeRunIssueLast), 4 one cooperative launch without route_zero (kMoeRunCoop; only with 2), and session
// 9's options 8 WARPPAD, 16 FILLTMA (fill 3 with 2, or fill 4), 32 BULKST, 64 BIASPRE, 256 PERSIST (not with 4), and
// session 10's 128 LEAN (with 1, on 8 groups: lean_ok), 512 LEAN3 (with LEAN and 32), 1024 WAITLEAN, 2048 FASTDIV,
// session 12's 16777216 REGLATE12 (the last W/4 warps' rows by register loads) and 4096 LEAN4 (with LEAN3: the
// selection in fewer instructions; in the default since session 13), session 13's 16384 GRP5 (with LEAN4: the group
// ranks by sign bits) and 524288 DRANK (with GRP5: the candidates' ranks by DADD signs; both in the default since
// session 13 round D) and session 15's 8192 EARLYPUT (the tail's puts right after the bases' scan barrier; in the
// default since session 15 round D) — and the measurement variant bits of
// the unnamed config field 5.
constexpr int kRunApprox = 1, kRunIssueLast = 2, kRunCoop = 4, kRunWarpPad = 8, kRunFillTma = 16, kRunBulkSt = 32,
              kRunBiasPre = 64, kRunLean = 128, kRunPersist = 256, kRunLean3 = 512, kRunWaitLean = 1024,
              kRunFastDiv = 2048, kRunLean4 = 4096, kRunGrp5 = 16384, kRunDRank = 524288,
              kRunRegLate12 = 16777216, kRunEarlyPut = 8192;
int run_bits(const Specialization& s) {
  const int load = s.config[C_LOAD];
  constexpr std::pair<int, int> kBits[] = {{kRunApprox, kMoeRunApprox},   {kRunIssueLast, kMoeRunIssueLast},
                                           {kRunCoop, kMoeRunCoop},       {kRunWarpPad, kMoeRunWarpPad},
                                           {kRunFillTma, kMoeRunFillTma}, {kRunBulkSt, kMoeRunBulkStore},
                                           {kRunBiasPre, kMoeRunBiasPre}, {kRunPersist, kMoeRunPersist},
                                           {kRunLean, kMoeRunLean}, {kRunLean3, kMoeRunLean3},
                                           {kRunWaitLean, kMoeRunWaitLean}, {kRunFastDiv, kMoeRunFastDiv},
                                           {kRunRegLate12, kMoeRunRegLate12}, {kRunLean4, kMoeRunLean4},
                                           {kRunGrp5, kMoeRunGrp5},       {kRunDRank, kMoeRunDRank},
                                           {kRunEarlyPut, kMoeRunEarlyPut}};
  int v = s.config[C_VARIANT];
  for (auto [cfg, bit] : kBits)
    if (load & cfg) v |= bit;
  return v;
}
// V rendered only where nonzero (", V").
std::string run_variant(const Specialization& s) {
  const int v = run_bits(s);
  return v ? fmt::format(", {}", v) : std::string();
}

// map_fused's `load` bit PERSIST (the route kernel's number: the stream's arrival word and superblock rows, no
// route_zero), as the kernel's OPT bit 1.
int map_fused_opt(const Specialization& s) { return (s.config[C_LOAD] & kRunPersist) ? 1 : 0; }

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/moe_routing.cuh\"\n";
  const auto& p = s.params;
  const char* map_t = p[P_MAP_I32] ? "int" : "unsigned char";
  switch (s.kernel) {
    case kRoute:
      if (is_run(s)) {
        name = fmt::format("kiln::moe_route_run_kernel<{}, {}, {}, {}, {}, {}, {}, {}, {}, {}{}>", p[P_E], p[P_K],
                           p[P_GROUPS], p[P_TOPK_GROUPS], p[P_RENORM] != 0, p[P_BIAS] != 0, p[P_MAP] != 0,
                           s.config[C_WARPS], s.config[C_FILL], s.config[C_TPT], run_variant(s));
        break;
      }
      name = fmt::format("kiln::moe_route_kernel<{}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}{}>", p[P_E],
                         p[P_K], p[P_SIGMOID] != 0, p[P_GROUPS], p[P_TOPK_GROUPS], p[P_RENORM] != 0, p[P_BIAS] != 0,
                         p[P_MAP] != 0, fill_outside_loop(s.config[C_FILL]), lane_experts(p[P_E], p[P_GROUPS]),
                         s.config[C_WARPS], p[P_MAP] != 0 && fused_fill(s.config[C_FILL]),
                         s.config[C_FILL] == kFusedFillLate,
                         p[P_MAP] != 0 && fused_fill(s.config[C_FILL]) && (s.config[C_LOAD] & kRunPersist)
                             ? ", true"
                             : "");
      break;
    case kTopkBwd:
      name = fmt::format("kiln::moe_topk_bwd_kernel<{}, {}, {}, {}>", p[P_E], p[P_SIGMOID] != 0, p[P_RENORM] != 0,
                         s.config[C_WARPS]);
      break;
    case kMapCount: name = fmt::format("kiln::moe_map_count_kernel<{}, {}>", p[P_E], map_t); break;
    case kMapScan: name = fmt::format("kiln::moe_map_scan_kernel<{}>", p[P_E]); break;
    case kRouteZero: name = "kiln::moe_route_zero_kernel"; break;
    case kRouteMap: name = fmt::format("kiln::moe_route_map_kernel<{}, {}, {}>", p[P_E], p[P_K], p[P_FILL] != 0); break;
    case kMapFused:
      name = fmt::format("kiln::moe_map_fused_kernel<{}, {}, {}, {}{}>", p[P_E], map_t,
                         s.config[C_FILL] == kFusedFillLate, map_fused_opt(s),
                         s.config[C_VARIANT] ? fmt::format(", {}", s.config[C_VARIANT]) : std::string());
      break;
    default: name = fmt::format("kiln::moe_map_write_kernel<{}, {}>", p[P_E], map_t);
  }
}

// route: cnt [W][E], scores [W][tpw][32·EL], picks [W][tpw][K] × 2, records [W·tpw][K] (map), softmax sums [W][tpw].
int64_t route_smem(int64_t E, int64_t G, int64_t K, bool map, int64_t W, int64_t tpw) {
  return 4 * (W * E + W * tpw * 32 * lane_experts(E, G) + 2 * W * tpw * K + (map ? W * tpw * K : 0) + W * tpw);
}

// map_fused: mask [E][kMoeMapFusedMaxChunk/32], lane flags [kMoeMapFusedMaxChunk][32], base [E], warp totals [8],
// parity [8] (the same for every chunk length and option, so that the kernel's residency is one number).
int64_t map_fused_smem(int64_t E) { return 4 * (E * (kMoeMapFusedMaxChunk / 32) + kMoeMapFusedMaxChunk * 32 + E + 16); }

int smem_bytes(const Specialization& s) {
  if (s.kernel == kMapFused) return static_cast<int>(map_fused_smem(s.params[P_E]));
  if (s.kernel != kRoute) return 0;
  if (is_run(s))
    return moe_run_smem(static_cast<int>(s.params[P_E]), static_cast<int>(s.params[P_K]), s.config[C_WARPS],
                        s.config[C_TPT], (run_bits(s) & kMoeRunLean3) != 0).total;
  return static_cast<int>(route_smem(s.params[P_E], s.params[P_GROUPS], s.params[P_K], s.params[P_MAP] != 0,
                                     s.config[C_WARPS], s.config[C_TPW]));
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);

// The tuner's instance of `s` at `tokens` rows: the forward (with the map if `s` builds it, padded to 16) for route
// and the map kernels, the backward for topk_bwd; random logits, routed once on the device.
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  const int64_t E = s.params[P_E];
  MoeRoutingOptions o;
  o.top_k = s.params[P_K] > 0 ? static_cast<int>(s.params[P_K]) : static_cast<int>(std::min<int64_t>(8, E));
  o.score = s.params[P_SIGMOID] ? MoeScore::sigmoid : MoeScore::softmax;
  o.renormalize = s.params[P_RENORM] != 0;
  if (s.kernel == kRoute) {
    o.n_group = static_cast<int>(s.params[P_GROUPS]);
    o.topk_group = static_cast<int>(s.params[P_TOPK_GROUPS]);
    return moe_routing_fwd_instance(rt, tokens, E, o, s.params[P_BIAS] != 0, s.params[P_MAP] != 0, 16);
  }
  if (s.kernel == kTopkBwd) return moe_routing_bwd_instance(rt, tokens, E, o);
  return moe_row_id_map_instance(rt, tokens, E, o.top_k, 16);
}

FamilyDef g_family{"moe_routing",
                   {"route", "topk_bwd", "map_count", "map_scan", "map_write", "route_zero", "route_map", "map_fused"},
                   {"E", "top_k", "sigmoid", "n_group", "topk_group", "renormalize", "bias", "map_i32", "map",
                    "map_fill"},
                   {"warps", "tokens_per_warp", "fill", "load", "tpt"},
                   render,
                   smem_bytes,
                   enumerate,
                   search_space,
                   tune_instance};

Specialization base_spec(Arch arch, uint32_t kernel, int64_t E) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kernel;
  s.params[P_E] = E;
  return s;
}

// The warp kernel's default (H100, T = 8192, E = 256, bench/NOTES.md): with the map 16 warps of 2 tokens and the
// fused map with the −1 rows after each warp's tokens (fill 3; session 6 rounds 2 and 3: 20.42 / 20.22 µs against
// 20.51 / 20.62 for the former 8 × 4 fill 3; the fused grid of 256 CTAs needs 2 per SM, 48 registers × 512 threads
// fit 2), without it 16 warps of 2 tokens (13.95 µs; 8 × 4 14.1). 32-token chunks either way: 256 CTAs at T = 8192,
// all resident at once. Where the grid does not fit at once, fill 3 runs as fill 1.
// Session 19: with the map, the fused map on the stream's arrival word and superblock rows (PERSIST, `load` 256: no
// route_zero launch; plain softmax top-8 + map at 8192 × 256, alternating processes: 18.43–18.72 µs against
// 20.02–20.13) and then the −1 rows after the CTA's arrival (fill 4: 17.95–18.21 against 18.46–18.67 at fill 3; kiln
// tune on that shape: every (warps, tokens per warp) faster at fill 4 with PERSIST, 16 × 4 18.11, 16 × 2 18.27).
void set_warp_default(Specialization& s, bool map) {
  s.config = {};
  s.config[C_WARPS] = 16;
  s.config[C_TPW] = 2;
  s.config[C_FILL] = map ? kFusedFillLate : kFillInRoute;  // (fill 4 runs as fill 1 where the grid does not fit)
  if (map) s.config[C_LOAD] = kRunPersist;  // (the fused map's arrival on the stream's state; dropped where unfused)
}
// The route default: with the map, where the CTA-run kernel serves the shape, that kernel at 16 threads per token in
// CTAs of 16 warps (32 tokens, 2 per SM) with the −1 rows after the arrival (fill 4) — session 7 rounds 3 and 5 at
// T = 8192: 19.15 / 18.94 µs against 20.40 / 19.81 for the warp kernel (round 4: 20.70 against 19.97); 4096: 15.06
// (fill 3 14.86) vs 15.22; 1024: 13.97 vs 13.87 — with the row copies issued by its last warp before the first CTA
// barrier and one cooperative launch without route_zero (`load` 2 | 4; session 8 round 3, same process: 18.45 µs
// against 19.23 for load 0 and 19.78 for the warp kernel), and with a bias the selection on approximate keys
// (`load` | 1; round 4, same process: 18.30 against 18.48). Session 9: no cooperative launch and no route_zero but a
// per-stream arrival word and superblock rows (PERSIST, `load` 256; COOP measured at ≈ 1.1 µs over a plain launch),
// the prob / map rows by bulk async copies (`load` 32): round 2, same process, 17.78 against 18.35 for load 7 (the
// cooperative launch stays the fallback while a stream captures a graph); round 3: + the bias prepared once a CTA
// (64), the bases' padding rows a lane a row (8), the −1 rows by bulk copies (16): `load` 379, 17.78 against 18.18
// for 291 and 18.40 for 7 (314 without a bias); round 4: with the −1 rows queued behind the row copies (fill 3)
// 17.44 against 17.65 at fill 4 (after the arrival), 18.21 for 7; bench 17.55 at fill 4 — but in the final run's
// tune (median of ≥ 20, one process with the other families) fill 3 read 19.22 against 17.47 at fill 4, and its bench
// row 19.12: the default stays at fill 4 (fill 3 is a search-space point). Where its grid does not fit at once
// (T = 65536) the op
// runs the warp kernel's default instead; before sm_90 (no bulk copies or mbarrier waits) the warp kernel. Without
// the map the warp kernel (8192: 13.92–14.00 vs 14.05–14.10; 4096: 11.33 vs 10.43; the tuning file picks the run
// kernel with load 2 at 8192: 13.46 against 14.05 in session 8 round 3).
// Session 17: the CTA-run default only with a bias. Without one the keys are the logits and the warp kernel is
// faster: plain sigmoid top-8 with the map at 8192 × 256 (kiln tune, H100) took 28.29 µs on the CTA-run default
// against 19.22 for the best warp config (warps 8, tokens_per_warp 4, fill 3). The run kernel stays a search-space
// point there.
void set_route_default(Specialization& s) {
  const bool map = s.params[P_MAP] != 0;
  if (map && s.arch.sm >= 90 && s.params[P_BIAS] != 0 &&
      run_ok(s.params[P_E], s.params[P_K], s.params[P_SIGMOID] != 0, s.params[P_GROUPS], s.params[P_TOPK_GROUPS],
             16)) {
    s.config = {};
    s.config[C_WARPS] = 16;
    s.config[C_TPW] = 2;
    s.config[C_FILL] = kFusedFillLate;  // (the −1 rows by bulk copies after the arrival; fill 3: see above)
    s.config[C_LOAD] = kRunIssueLast | kRunPersist | kRunBulkSt | kRunWarpPad | kRunFillTma |
                       (s.params[P_BIAS] ? kRunApprox | kRunBiasPre : 0);
    // Session 10: with a bias on 8 groups also LEAN + LEAN3 + WAITLEAN + FASTDIV (load 4091): round 4, same process,
    // 15 rounds: 17.25 µs against 17.55 for 379 (lowest in 13 of 15 round medians), 17.39 for 379 + WAITLEAN + FASTDIV,
    // 17.50 for 379 + LEAN + LEAN3; round 3: 17.14 against 17.39 / 17.26 / 17.41.
    // Session 12 (helper topk4): there also REGLATE12 (the CTA's last 4 warps' rows by register loads, load 16781307):
    // rounds B and C, same process, lower than 4091 in 52 of 52 paired rounds (mean −0.22 / −0.23 µs; by ≥ 0.2 in 33).
    // Session 13 (round A, helper topk5's LEAN4 from session 12: the selection's common path in 360 instead of 475
    // SASS a thread): + LEAN4 (load 16785403), same process, Ablation 21 rounds: 16.05 µs against 17.12 (bits equal).
    // Session 13 rounds B and C (helper topk6's GRP5: the group ranks and margin by sign bits, the tie test by one
    // popcount): + GRP5 (load 16801787), same process, −0.19 / −0.26 µs against 16785403, lower in 52 of 52 rounds
    // (round D: +0.03, lower in 7 of 31); round D: + DRANK (the list's entries as doubles, the rank by DADD signs; load
    // 17326075), −0.13 against 16801787 (lower in 29 of 31), −0.10 against 16785403 (26 of 31).
    // Session 15 rounds B, C and D (helper topk9's EARLYPUT: the tail's puts right after the bases' one scan barrier;
    // load 17334267): −0.05 / −0.13 / −0.21 µs against 17326075, lower in 25 / 31 / 58 of 41 / 41 / 61 rounds (round E:
    // +0.08, lower in 13 of 61: an instance-dependent gain; bench/NOTES.md).
    if (s.params[P_BIAS] && lean_ok(s.params[P_E], s.params[P_GROUPS], s.params[P_TOPK_GROUPS]))
      s.config[C_LOAD] |= kRunLean | kRunLean3 | kRunWaitLean | kRunFastDiv | kRunRegLate12 | kRunLean4 | kRunGrp5 |
                          kRunDRank | kRunEarlyPut;
    s.config[C_TPT] = 16;
  } else {
    set_warp_default(s, map);
  }
}

// The route kernel (the forward's tunable launch) with its default config.
Specialization route_spec(Arch arch, int64_t E, const MoeRoutingOptions& o, bool bias, bool map) {
  Specialization s = base_spec(arch, kRoute, E);
  s.params[P_K] = o.top_k;
  s.params[P_SIGMOID] = o.score == MoeScore::sigmoid;
  s.params[P_GROUPS] = o.n_group;
  s.params[P_TOPK_GROUPS] = o.topk_group;
  s.params[P_RENORM] = o.renormalize;
  s.params[P_BIAS] = bias;
  s.params[P_MAP] = map;
  set_route_default(s);
  return s;
}

Specialization route_map_spec(Arch arch, int64_t E, int64_t K, bool fill) {
  Specialization s = base_spec(arch, kRouteMap, E);
  s.params[P_K] = K;
  s.params[P_FILL] = fill;
  return s;
}

Specialization bwd_spec(Arch arch, int64_t E, const MoeRoutingOptions& o) {
  Specialization s = base_spec(arch, kTopkBwd, E);
  s.params[P_SIGMOID] = o.score == MoeScore::sigmoid;
  s.params[P_RENORM] = o.renormalize;
  s.config[C_WARPS] = 8;
  return s;
}

// map_fused's default: one launch, the −1 rows after the CTA's arrival, the stream's superblock rows (H100, T = 8192,
// E = 256, top-8, P = 16, bench/NOTES.md session 18: 12.9–13.2 µs; behind route_zero 13.7–14.7, the −1 rows before
// the arrival 15.6–15.9, the three kernels 14.5–15.3).
void set_map_fused_default(Specialization& s) {
  s.config = {};
  s.config[C_FILL] = kFusedFillLate;
  s.config[C_LOAD] = kRunPersist;
}

Specialization map_spec(Arch arch, uint32_t kernel, int64_t E, bool map_i32) {
  Specialization s = base_spec(arch, kernel, E);
  if (kernel != kMapScan) s.params[P_MAP_I32] = map_i32;
  if (kernel == kMapFused) set_map_fused_default(s);
  return s;
}

// route: the warp kernel, (warps, tokens per warp) ∈ {(8, 4), (16, 2), (16, 4)} (chunks of 32 or 64 tokens) × how the
// map is written (fill 0, 1, 3, 4; without the map 0 only), within 160 KB of shared memory; then the CTA-run kernel
// where run_ok accepts the shape (tpt 16 × two CTA sizes × fill 3 / 4 / 5, or fill 0 without the map).
// topk_bwd: 4, 8 or 16 warps (a warp per token). The other kernels: one config.
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  Specialization s = base;
  s.config = {};
  if (base.kernel == kRoute) {
    const int64_t E = base.params[P_E], G = base.params[P_GROUPS], K = base.params[P_K];
    const bool map = base.params[P_MAP] != 0;
    // The default first, then the other points.
    set_route_default(s);
    out.push_back(s);
    const auto dflt = s.config;
    s.config = {};
    for (int fill : {kFillInRoute, kFillInMap, kFusedFillAfter, kFusedFillLate}) {
      if (fill != kFillInRoute && !map) continue;
      for (auto [w, tpw] : {std::pair{8, 4}, {16, 2}, {16, 4}}) {
        s.config[C_WARPS] = w;
        s.config[C_TPW] = tpw;
        s.config[C_FILL] = fill;
        if (route_smem(E, G, K, map, w, tpw) > 160 * 1024) continue;
        // (the fused map with and without the stream's arrival word and superblock rows: `load` 256, session 19)
        for (int load : {0, kRunPersist}) {
          if (load && !fused_fill(fill)) continue;
          s.config[C_LOAD] = load;
          if (s.config != dflt) out.push_back(s);
        }
        s.config[C_LOAD] = 0;
      }
    }
    // The CTA-run kernel: 16 threads per token in CTAs of 64 or 32 tokens (32 or 16 warps), the −1 rows at kernel
    // start, after the arrival, or with the prob / map rows after the arrival (fill 3 / 4 / 5 with the map; without
    // it fill 0). (4 and 8 threads per token measured slower in every round of session 7 and were removed.)
    for (int tpt : {16}) {
      if (base.arch.sm < 90) break;  // (cp.async.bulk and mbarrier try_wait: sm_90 and later)
      if (!run_ok(E, K, base.params[P_SIGMOID] != 0, G, base.params[P_TOPK_GROUPS], tpt)) continue;
      for (int fill : {kFusedFillAfter, kFusedFillLate, kRunDeferAll}) {
        if (!map && fill != kFusedFillAfter) continue;
        for (int w : {2 * tpt, tpt}) {  // 64 or 32 tokens per CTA
          s.config[C_WARPS] = w;
          s.config[C_TPW] = 32 / tpt;
          s.config[C_FILL] = map ? fill : kFillInRoute;
          s.config[C_LOAD] = 0;
          s.config[C_TPT] = tpt;
          if (s.config != dflt) out.push_back(s);
        }
      }
      // 16 warps with options (`load` bits, run_bits): the copies issued by the last warp before the first CTA
      // barrier, with the map in one cooperative launch without route_zero (2 | 4; 2 without the map); with a bias
      // also the selection on approximate keys (1). The −1 rows at the start or after the arrival (fill 3 / 4) with
      // the map, fill 0 without.
      for (int load : {kRunIssueLast | kRunCoop | kRunApprox, kRunIssueLast | kRunCoop, kRunApprox}) {
        if ((load & kRunApprox) && base.params[P_BIAS] == 0) continue;
        for (int fill : {kFusedFillAfter, kFusedFillLate}) {
          if (!map && fill != kFusedFillAfter) continue;
          s.config[C_WARPS] = tpt;
          s.config[C_TPW] = 32 / tpt;
          s.config[C_FILL] = map ? fill : kFillInRoute;
          s.config[C_LOAD] = map ? load : load & ~kRunCoop;
          s.config[C_TPT] = tpt;
          if (s.config != dflt) out.push_back(s);
        }
      }
    }
    // Session 9's options on the CTA-run kernel at 16 warps (with the map): the default (379 with a bias, 314
    // without: PERSIST + BULKST + BIASPRE + WARPPAD + FILLTMA) at fill 4 and 3 (−1 rows queued behind the row
    // copies), round 2's 291 (PERSIST + BULKST; 290), round 3's 355 (+ BIASPRE), and session 8's 7 (6) at fill 4.
    if (map && base.arch.sm >= 90 && run_ok(E, K, base.params[P_SIGMOID] != 0, G, base.params[P_TOPK_GROUPS], 16)) {
      const int ap = base.params[P_BIAS] ? kRunApprox : 0, bp = base.params[P_BIAS] ? kRunBiasPre : 0;
      const int s9 = kRunIssueLast | kRunPersist | kRunBulkSt | kRunWarpPad | kRunFillTma | ap | bp;
      // Session 10: WAITLEAN | FASTDIV on session 9's default (3451 with a bias) and, on 8 groups with a bias, with
      // LEAN + LEAN3 (4091: the default there). (LEAN and LEAN3 without them, 507 / 1019, gained nothing in rounds 2–4
      // and WAITSLEEP, 8187, nothing in round 4: out of the space.)
      const int wf = kRunWaitLean | kRunFastDiv;
      const int lean = ap && lean_ok(E, G, base.params[P_TOPK_GROUPS]) ? s9 | kRunLean | kRunLean3 | wf : s9 | wf;
      for (auto [load, fill] : {std::pair{s9, kFusedFillLate}, {s9, kFusedFillAfter}, {s9 | wf, kFusedFillLate},
                                {lean, kFusedFillLate},
                                {lean | kRunRegLate12, kFusedFillLate},  // (session 12: + REGLATE12)
                                {lean == (s9 | wf) ? lean : lean | kRunRegLate12 | kRunLean4,
                                 kFusedFillLate},  // (session 13 round A: + LEAN4)
                                {lean == (s9 | wf) ? lean : lean | kRunRegLate12 | kRunLean4 | kRunGrp5,
                                 kFusedFillLate},  // (session 13 round C: + GRP5)
                                {lean == (s9 | wf) ? lean : lean | kRunRegLate12 | kRunLean4 | kRunGrp5 | kRunDRank,
                                 kFusedFillLate},  // (session 13 round D: + DRANK)
                                {lean == (s9 | wf) ? lean
                                                   : lean | kRunRegLate12 | kRunLean4 | kRunGrp5 | kRunDRank | kRunEarlyPut,
                                 kFusedFillLate},  // (session 15 round D: + EARLYPUT, the default)
                                {kRunIssueLast | kRunPersist | kRunBulkSt | ap, kFusedFillLate},
                                {kRunIssueLast | kRunPersist | kRunBulkSt | ap | kRunBiasPre, kFusedFillLate},
                                {kRunIssueLast | kRunCoop | ap, kFusedFillLate}}) {
        if ((load & kRunBiasPre) && !ap) continue;
        s.config[C_WARPS] = 16;
        s.config[C_TPW] = 2;
        s.config[C_FILL] = fill;
        s.config[C_LOAD] = load;
        s.config[C_TPT] = 16;
        if (s.config != dflt && std::find_if(out.begin(), out.end(), [&](const Specialization& o) {
                                  return o.config == s.config;
                                }) == out.end())
          out.push_back(s);
      }
    }
    // (8 threads per token came back in session 9 round 2 — 18.88 µs at 8 warps, 20.19 at 16 against 18.35 for the
    // default: slower again, with 96 registers and 16 warps an SM — and went out of the space again.)
  } else if (base.kernel == kTopkBwd) {
    for (int w : {4, 8, 16}) {
      s.config[C_WARPS] = w;
      out.push_back(s);
    }
  } else if (base.kernel == kMapFused) {
    // The default first, then the −1 rows after / before the arrival × with or without the stream's rows (PERSIST),
    // then the three kernels.
    Specialization d = base;
    set_map_fused_default(d);
    out.push_back(d);
    for (int fill : {kFusedFillLate, kFusedFillAfter})
      for (int load : {kRunPersist, 0}) {
        s.config[C_FILL] = fill;
        s.config[C_LOAD] = load;
        if (s.config != d.config) out.push_back(s);
      }
    s.config = {};
    s.config[C_FILL] = kFillInRoute;
    out.push_back(s);
  } else {
    out.push_back(s);
  }
}

MoeRoutingOptions model_routing(const ModelConfig& m) {
  MoeRoutingOptions o;
  o.top_k = m.num_experts_per_tok;
  o.score = m.scoring_func == "sigmoid" ? MoeScore::sigmoid : MoeScore::softmax;
  o.n_group = std::max(1, m.n_group);
  o.topk_group = std::max(1, m.topk_group);
  o.renormalize = m.norm_topk_prob;
  o.scaling_factor = static_cast<float>(m.routed_scaling_factor);
  return o;
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  const int64_t E = m.num_experts;
  if (E <= 0 || E % 4 != 0 || E > kMoeMaxExperts || m.num_experts_per_tok <= 0) return;
  const MoeRoutingOptions o = model_routing(m);
  if (E % o.n_group != 0 || o.n_group > 32 || o.topk_group > o.n_group || o.top_k > E) return;
  if (E > kMoeTopkMaxExperts || lane_experts(E, o.n_group) == 0) return;
  out.push_back(route_spec(arch, E, o, m.expert_bias, true));
  out.push_back(bwd_spec(arch, E, o));
  out.push_back(map_spec(arch, kMapCount, E, false));
  out.push_back(map_spec(arch, kMapScan, E, false));
  out.push_back(map_spec(arch, kMapWrite, E, false));
  out.push_back(route_spec(arch, E, o, m.expert_bias, false));
  out.push_back(base_spec(arch, kRouteZero, 0));
  out.push_back(route_map_spec(arch, E, o.top_k, false));
  out.push_back(route_map_spec(arch, E, o.top_k, true));
  // Where the default with the map is the CTA-run kernel, also the warp kernel's default: the op's fallback where the
  // run's grid does not fit at once (T = 65536), so that a prewarmed cache has it too.
  if (Specialization r = route_spec(arch, E, o, m.expert_bias, true); is_run(r)) {
    set_warp_default(r, true);
    out.push_back(r);
  }
  // The row-id map of a given routing map in one launch (moe_make_row_id_map; uint8 maps).
  out.push_back(map_spec(arch, kMapFused, E, false));
}

int64_t nblocks(int64_t T) { return (T + kMoeMapBlockTokens - 1) / kMoeMapBlockTokens; }
int64_t nsuper(int64_t T) { return (nblocks(T) + 15) / 16; }
// Chunks per superblock of the route kernel's counts: ≥ 16 (so its rows fit the workspace's ceil(T/512) superblock
// rows), about √chunks so that route_map reads about as many superblock rows as chunk rows.
int64_t super_chunks(int64_t nchunks) {
  int64_t sc = 16;
  while (sc * sc < nchunks) ++sc;
  return sc;
}

void check_multiple_of(const Check& ck, int P) {
  if (P < 1 || P > 128) ck.invalid("multiple_of", fmt::format("expected 1 … 128, got {}", P));
}

// Validates the map outputs for a [T, E] routing with at most k experts per token.
void check_map(const Check& ck, const MoeRowIdMap& m, int64_t T, int64_t E, int64_t k, int P, bool need_counts) {
  ck.tensor("row_id_map", m.row_id_map, {DType::i32}, {T, E}, 16);
  if (need_counts) ck.tensor("tokens_per_expert", m.tokens_per_expert, {DType::i32}, {E}, 4);
  if (m.padded_counts.defined()) ck.tensor("padded_counts", m.padded_counts, {DType::i32}, {E}, 4);
  if (m.offsets.defined()) ck.tensor("offsets", m.offsets, {DType::i32}, {E + 1}, 4);
  const int64_t need = moe_max_out_rows(T, E, k, P);
  if (need > INT32_MAX)
    ck.invalid("row_id_map", fmt::format("the map may need {} rows (T·k plus padding), which exceeds the int32 row "
                                         "index limit {}",
                                         need, INT32_MAX));
  if (m.row_id_indices.defined()) {
    ck.tensor("row_id_indices", m.row_id_indices, {DType::i32}, {-1}, 4);
    const int64_t n = m.row_id_indices.shape[0];
    if (n < need)
      ck.shape_error("row_id_indices", fmt::format("num_out_tokens = {} is smaller than the map may need: {} rows "
                                                   "(T = {}, {} experts per token, multiple_of = {})",
                                                   n, need, T, k, P));
    ck.fits_int32("row_id_indices", n, "num_out_tokens");
  }
}

// map_scan + map_write over the block histograms in `hist`.
void launch_map(Runtime::Impl& impl, Arch arch, const TensorRef& routing_map, const MoeRowIdMap& m,
                const TensorRef& counts, int* hist, int64_t T, int64_t E, int P, Stream stream) {
  const int64_t NB = nblocks(T);
  MoeMapScanArgs sa{hist, static_cast<int*>(counts.data), static_cast<int>(NB)};
  LaunchDims ds;
  ds.grid[0] = static_cast<unsigned>((E + 31) / 32);
  ds.block[0] = 1024;
  ds.pdl = true;  // waits for the histograms first
  impl.launch(impl.tuned(map_spec(arch, kMapScan, E, false), T), ds, stream, sa);

  MoeMapWriteArgs wa{};
  wa.routing_map = routing_map.data;
  wa.prefix = hist;
  wa.counts = static_cast<const int*>(counts.data);
  wa.row_id_map = static_cast<int*>(m.row_id_map.data);
  wa.row_id_indices = static_cast<int*>(m.row_id_indices.data);
  wa.padded_counts = static_cast<int*>(m.padded_counts.data);
  wa.offsets = static_cast<int*>(m.offsets.data);
  wa.T = static_cast<int>(T);
  wa.multiple_of = P;
  wa.num_out = m.row_id_indices.defined() ? static_cast<int>(m.row_id_indices.shape[0]) : 0;
  LaunchDims dw;
  dw.grid[0] = static_cast<unsigned>(std::max<int64_t>(NB, 1));
  dw.block[0] = 256;
  dw.pdl = true;  // waits for the scan first
  impl.launch(impl.tuned(map_spec(arch, kMapWrite, E, routing_map.dtype == DType::i32), T), dw, stream, wa);
}

int64_t check_logits(const Check& ck, const char* arg, const TensorRef& t) {
  ck.dtype(arg, t, {DType::f32});
  ck.shape(arg, t, {-1, -1});
  ck.contiguous(arg, t);
  const int64_t T = t.shape[0], E = t.shape[1];
  if (E <= 0 || E % 4 != 0 || E > kMoeMaxExperts)
    ck.shape_error(arg, fmt::format("expected the expert count E (last dim) to be a multiple of 4 in [4, {}], got {}",
                                    kMoeMaxExperts, E));
  ck.fits_int32(arg, T, "T (tokens)");
  if (T > 0) ck.pointer(arg, t, 16);
  return E;
}

void check_options(const Check& ck, const MoeRoutingOptions& o, int64_t E, bool forward) {
  if (forward && E > kMoeTopkMaxExperts)
    ck.invalid("logits", fmt::format("top-k routing supports E ≤ {}, got E = {}", kMoeTopkMaxExperts, E));
  if (o.top_k < 1 || o.top_k > E) ck.invalid("top_k", fmt::format("expected 1 ≤ top_k ≤ E = {}, got {}", E, o.top_k));
  if (o.score != MoeScore::softmax && o.score != MoeScore::sigmoid)
    ck.invalid("score", fmt::format("expected softmax or sigmoid, got {}", static_cast<int>(o.score)));
  if (o.n_group < 1 || o.n_group > 32 || E % o.n_group != 0)
    ck.invalid("n_group", fmt::format("expected a divisor of E = {} in [1, 32], got {}", E, o.n_group));
  if (o.topk_group < 1 || o.topk_group > o.n_group)
    ck.invalid("topk_group", fmt::format("expected 1 ≤ topk_group ≤ n_group = {}, got {}", o.n_group, o.topk_group));
  if (o.top_k > o.topk_group * (E / o.n_group))
    ck.invalid("top_k", fmt::format("top_k = {} exceeds the experts of the kept groups (topk_group {} × {} per group)",
                                    o.top_k, o.topk_group, E / o.n_group));
  if (!std::isfinite(o.scaling_factor))
    ck.invalid("scaling_factor", fmt::format("expected a finite value, got {}", o.scaling_factor));
  if (forward && lane_experts(E, o.n_group) == 0)
    ck.invalid("n_group", fmt::format("groups of {} experts (E = {}, n_group = {}) fit no lane layout: a lane owns a "
                                      "multiple of 4 experts (≥ E/32, ≤ 64) that must divide or be a multiple of the "
                                      "group size",
                                      E / o.n_group, E, o.n_group));
}

// Validates a caller's workspace of at least `need` int32 elements.
void check_workspace(const Check& ck, const TensorRef& ws, int64_t need) {
  if (!ws.defined()) return;
  ck.tensor("workspace", ws, {DType::i32}, {-1}, 4);
  if (ws.shape[0] < need)
    ck.shape_error("workspace", fmt::format("expected ≥ {} int32 elements (moe_routing_workspace_elems), got {}", need,
                                            ws.shape[0]));
}

// The map half of the route kernels' arguments (both route kernels and route_map): the workspace's chunk and
// superblock counts and the map's outputs; all null without a map.
MoeChunkMap chunk_map(const MoeRowIdMap* map, int* chunk_counts, int* super, int* counts, int64_t NC, int64_t SC,
                      int multiple_of) {
  MoeChunkMap cm{};
  if (!map) return cm;
  cm.chunk_counts = chunk_counts;
  cm.super = super;
  cm.counts = counts;
  cm.row_id_map = static_cast<int*>(map->row_id_map.data);
  cm.row_id_indices = static_cast<int*>(map->row_id_indices.data);
  cm.padded_counts = static_cast<int*>(map->padded_counts.data);
  cm.offsets = static_cast<int*>(map->offsets.data);
  cm.nchunks = static_cast<int>(NC);
  cm.super_chunks = static_cast<int>(SC);
  cm.multiple_of = multiple_of;
  cm.num_out = map->row_id_indices.defined() ? static_cast<int>(map->row_id_indices.shape[0]) : 0;
  return cm;
}

// PERSIST's per-stream state (moe_routing_args.h kMoeRunPersist), owned by the Runtime (Runtime::Impl::stream_state):
// one arrival word (int 0 of a 128-byte header) and two halves of `half` superblock-row ints after it, zero when
// allocated; every call leaves the word's low 31 bits at 0 and the half the next call uses zeroed. The halves' size
// follows from the buffer's (a call with fewer rows uses the halves of the buffer it finds: the kernel zeroes a whole
// half). Calls on one stream never overlap; under stream capture the op launches without it (a graph's replays may
// run on other streams, concurrently with the calls on this one).
struct RouteState {
  int* arrive;
  int* rows;  // [2][half]
  int64_t half;
};
RouteState route_state(Runtime::Impl& impl, Stream stream, int64_t half) {
  static const char owner = 0;  // (the state's name in the runtime's table)
  const int64_t h = (half + 3) / 4 * 4;  // (16-byte units: the kernel zeroes by 16 B)
  const auto buf = impl.stream_state(&owner, stream, 128 + static_cast<size_t>(2 * h) * 4);
  int* base = reinterpret_cast<int*>(buf.ptr);
  return {base, base + 32, static_cast<int64_t>((buf.bytes - 128) / 8) / 4 * 4};
}

// PERSIST: a route launch's arrival word and superblock rows (`rows` ints a half) are the stream's; the kernel picks
// the call's half.
void persist_on_stream(Runtime::Impl& impl, Stream stream, int64_t rows, MoeRouteArgs& a) {
  const RouteState rs = route_state(impl, stream, rows);
  a.arrive = reinterpret_cast<unsigned*>(rs.arrive);
  a.super = rs.rows;
  a.map.super = rs.rows;
  a.persist_half = static_cast<int>(rs.half);
}

// Whether `stream` is capturing a CUDA graph: the per-stream state must then not be used (a graph's replays may run
// on other streams, concurrently with the calls on this one).
bool stream_capturing(Stream stream) {
  CUstreamCaptureStatus cs = CU_STREAM_CAPTURE_STATUS_NONE;
  check(driver().cuStreamIsCapturing(reinterpret_cast<CUstream>(stream), &cs), "cuStreamIsCapturing");
  return cs != CU_STREAM_CAPTURE_STATUS_NONE;
}

// route_zero over the n ints at p (≤ 64 CTAs of 256 threads). It lets the next launch start at once (PDL); that
// kernel waits for it before it adds into the ints.
void launch_route_zero(Runtime::Impl& impl, Arch arch, int64_t T, int* p, int64_t n, Stream stream) {
  const MoeZeroArgs za{p, static_cast<int>(n)};
  LaunchDims dz;
  dz.grid[0] = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 64));
  dz.block[0] = 256;
  impl.launch(impl.tuned(base_spec(arch, kRouteZero, 0), T), dz, stream, za);
}

}  // namespace

namespace detail {
// Measurement hook (tests/gpu/moe_route_measure_test.cpp): the array a forced TRACE variant of moe_route_run_kernel
// (config field 5 with kMoeRunTrace) writes its kMoeRunTraceSlots u64 a CTA to; null = no trace (the variant then
// writes nothing).
std::atomic<unsigned long long*> moe_route_run_trace{nullptr};
// The same for moe_map_fused_kernel's TRACE variant (config field 5 with 64; tests/gpu/moe_map_measure_test.cpp).
std::atomic<unsigned long long*> moe_map_trace{nullptr};
}  // namespace detail

KILN_REGISTER_FAMILY(moe_routing, g_family)

int64_t moe_routing_workspace_elems(int64_t T, int64_t E, int64_t top_k) {
  const int64_t k = top_k > 0 ? std::min(top_k, E) : E;
  return (std::max<int64_t>(nblocks(T), 1) + nsuper(T)) * E + T * k;
}

namespace {
// The routing launch's workspace where the caller passed none and the map is built: the runtime's per-stream scratch
// of `owner` (the route zeroes what it counts in, so stale contents are harmless); none otherwise.
ScratchBuffer routing_scratch(Runtime::Impl& impl, const void* owner, const TensorRef& workspace, bool map, int64_t T,
                              int64_t E, int64_t K, Stream stream) {
  if (workspace.defined() || !map) return {};
  return impl.scratch(owner, static_cast<size_t>(moe_routing_workspace_elems(T, E, K)) * 4, stream);
}
}  // namespace

int64_t moe_max_out_rows(int64_t T, int64_t E, int64_t k, int64_t multiple_of) {
  const int64_t routed = T * std::min(k, E);
  return routed + std::min(E, routed) * (multiple_of - 1);
}

void moe_topk_routing_fwd(Runtime& rt, const TensorRef& logits, const TensorRef& expert_bias, const TensorRef& probs,
                          const TensorRef& routing_map, const TensorRef& tokens_per_expert,
                          const MoeRoutingOptions& opts, Stream stream, const MoeRowIdMap* map, int multiple_of,
                          const TensorRef& workspace) {
  const Check ck{"moe_topk_routing_fwd"};
  const int64_t E = check_logits(ck, "logits", logits);
  const int64_t T = logits.shape[0];
  check_options(ck, opts, E, true);
  if (expert_bias.defined()) ck.tensor("expert_bias", expert_bias, {DType::f32}, {E}, 16);
  ck.tensor("probs", probs, {DType::f32}, {T, E}, 16);
  ck.tensor("routing_map", routing_map, {DType::u8}, {T, E}, 4);
  ck.tensor("tokens_per_expert", tokens_per_expert, {DType::i32}, {E}, 4);
  if (map) {
    check_multiple_of(ck, multiple_of);
    check_map(ck, *map, T, E, opts.top_k, multiple_of, false);
  }
  const int64_t K = opts.top_k;
  check_workspace(ck, workspace, moe_routing_workspace_elems(T, E, K));

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  int* counts = static_cast<int*>(tokens_per_expert.data);
  Specialization s = impl.tuned(route_spec(arch, E, opts, expert_bias.defined(), map != nullptr),
                                std::max<int64_t>(T, 1));
  if (is_run(s)) {
    // The CTA-run kernel: runs of clamp(ceil(T / SMs), 32, (32/tpt)·W) tokens (≥ 32: the workspace holds ceil(T/32) chunk
    // rows). With the map its whole grid must be resident at once (grid-wide arrival); its bulk stores need a 16-byte
    // aligned routing map. Otherwise the warp kernel's default config.
    const int64_t W = s.config[C_WARPS];
    const int64_t n = std::clamp<int64_t>((T + impl.device().sm_count - 1) / impl.device().sm_count, 32,
                                          32 / s.config[C_TPT] * W);
    const int64_t NC = (T + n - 1) / n;
    bool ok = T > 0 && reinterpret_cast<uintptr_t>(routing_map.data) % 16 == 0;
    if (ok && map)
      ok = NC <= static_cast<int64_t>(impl.device().sm_count) *
                     impl.resident_per_sm(impl.kernel(s), static_cast<int>(W * 32), smem_bytes(s));
    if (ok) {
      const int64_t SC = super_chunks(NC), NS = (NC + SC - 1) / SC;
      static const char owner = 0;
      const ScratchBuffer wsb = routing_scratch(impl, &owner, workspace, map, T, E, K, stream);
      const CUdeviceptr wsp = wsb.ptr;
      int* chunk_counts = !map ? nullptr : workspace.defined() ? static_cast<int*>(workspace.data) : reinterpret_cast<int*>(wsp);
      int* super = map ? chunk_counts + NC * E : nullptr;
      unsigned* arrive = map ? reinterpret_cast<unsigned*>(super + NS * E) : nullptr;
      const MoeChunkMap cm = chunk_map(map, chunk_counts, super, counts, NC, SC, multiple_of);
      int* const zp = map ? super : counts;
      const int64_t zn = map ? NS * E + 1 : E;
      // A driver that refused the cooperative launch once (MPS, green contexts) is not asked again: the refusal would
      // cost every call an exception and a log line.
      static std::atomic<bool> coop_refused{false};
      if (coop_refused.load(std::memory_order_relaxed)) s.config[C_LOAD] &= ~kRunCoop;
      if (map && (run_bits(s) & kMoeRunPersist)) {
        // PERSIST's per-stream state must not be baked into a graph (a replay on another stream would share it with
        // the calls on this one): while the stream captures, the cooperative launch instead.
        // (Session 9's cooperative variant: session 10's options were not measured with the cooperative launch.)
        if (stream_capturing(stream)) {
          s.config[C_VARIANT] &= ~kMoeRunPersist;
          s.config[C_LOAD] = (s.config[C_LOAD] & ~(kRunPersist | kRunLean | kRunLean3 | kRunWaitLean | kRunFastDiv |
                                                    kRunRegLate12 | kRunLean4 | kRunGrp5 | kRunDRank |
                                                    kRunEarlyPut)) |
                             kRunCoop | kRunIssueLast;
        }
      }
      const bool coop = map && (run_bits(s) & kMoeRunCoop);  // (the kernel zeroes them itself)
      const bool persist = map && !coop && (run_bits(s) & kMoeRunPersist);  // (per-stream rows, zeroed by the calls)
      const bool zero = !coop && !persist && !(run_bits(s) & kMoeRunNoZero);  // (a measurement variant leaves it out)
      if (zero) launch_route_zero(impl, arch, T, zp, zn, stream);
      MoeRouteArgs a{};
      a.logits = static_cast<const float*>(logits.data);
      a.bias = static_cast<const float*>(expert_bias.data);
      a.probs = static_cast<float*>(probs.data);
      a.routing_map = static_cast<unsigned char*>(routing_map.data);
      a.chunk_counts = chunk_counts;
      a.super = super;
      a.counts = counts;
      a.row_id_map = map ? static_cast<int*>(map->row_id_map.data) : nullptr;
      a.T = static_cast<int>(T);
      a.super_chunks = static_cast<int>(SC);
      a.scale = opts.scaling_factor;
      a.map = cm;
      a.arrive = arrive;
      if (persist) persist_on_stream(impl, stream, NS * E, a);
      a.run_tokens = static_cast<int>(n);
      if (s.config[C_VARIANT] & kMoeRunTrace) {
        a.trace = detail::moe_route_run_trace.load(std::memory_order_relaxed);
        if (!a.trace) s.config[C_VARIANT] &= ~kMoeRunTrace;
      }
      LaunchDims d;
      d.grid[0] = static_cast<unsigned>(NC);
      d.block[0] = static_cast<unsigned>(W * 32);
      d.smem = static_cast<unsigned>(smem_bytes(s));
      d.pdl = zero;  // after route_zero; waits for it before its atomics
      d.cooperative = coop;
      try {
        impl.launch(s, d, stream, a);
      } catch (const DeviceError& e) {
        if (!coop) throw;
        // The driver refused the cooperative launch (fewer SMs available than the device has: MPS, green contexts):
        // the same kernel without it, behind route_zero (its grid was sized for the whole device, as the warp
        // kernel's fused map is).
        coop_refused.store(true, std::memory_order_relaxed);
        log(LogLevel::warn, "moe_topk_routing_fwd: cooperative launch refused ({}); route_zero + PDL instead", e.what());
        s.config[C_LOAD] &= ~kRunCoop;
        launch_route_zero(impl, arch, T, zp, zn, stream);
        d.cooperative = false;
        d.pdl = true;
        impl.launch(s, d, stream, a);
      }
      impl.release_scratch(wsb, stream);
      return;
    }
    set_warp_default(s, map != nullptr);
  }
  const int64_t W = s.config[C_WARPS], tpw = s.config[C_TPW], CT = W * tpw;
  const int64_t NC = (T + CT - 1) / CT, SC = super_chunks(NC), NS = (NC + SC - 1) / SC;
  // The fused map waits for every CTA of the grid: only where all NC CTAs are resident at once (else fill mode 0,
  // the same kernel with route_map after it).
  if (map && fused_fill(s.config[C_FILL]) && T > 0 &&
      NC > static_cast<int64_t>(impl.device().sm_count) *
               impl.resident_per_sm(impl.kernel(s), static_cast<int>(W * 32), smem_bytes(s)))
    s.config[C_FILL] = kFillInMap;  // fill 3 / 4 → 1
  const bool fill_in_map = map && s.config[C_FILL] == kFillInMap;
  const bool fused = map && fused_fill(s.config[C_FILL]) && T > 0;
  // PERSIST (`load` 256, fused map only): the stream's arrival word and superblock rows, no route_zero — not while
  // the stream captures a graph (a replay on another stream would share them with this one's calls).
  if (!fused || stream_capturing(stream)) s.config[C_LOAD] &= ~kRunPersist;
  const bool persist = (s.config[C_LOAD] & kRunPersist) != 0;
  if (!map && T == 0) {
    check(driver().cuMemsetD32Async(reinterpret_cast<CUdeviceptr>(counts), 0, static_cast<size_t>(E),
                                    reinterpret_cast<CUstream>(stream)),
          "cuMemsetD32Async (tokens_per_expert)");
    return;
  }
  static const char owner = 0;
  const ScratchBuffer wsb = routing_scratch(impl, &owner, workspace, map, T, E, K, stream);
  const CUdeviceptr wsp = wsb.ptr;
  int* chunk_counts = workspace.defined() ? static_cast<int*>(workspace.data) : reinterpret_cast<int*>(wsp);
  int* super = map ? chunk_counts + NC * E : nullptr;
  // Records (unfused) or the grid arrival counter (fused) after the superblock rows.
  unsigned* records = map ? reinterpret_cast<unsigned*>(super + NS * E) : nullptr;
  const MoeChunkMap cm = chunk_map(map, chunk_counts, super, counts, NC, SC, multiple_of);
  if (T > 0) {
    if (!persist) launch_route_zero(impl, arch, T, map ? super : counts, map ? NS * E + (fused ? 1 : 0) : E, stream);

    MoeRouteArgs a{static_cast<const float*>(logits.data),
                   static_cast<const float*>(expert_bias.data),
                   static_cast<float*>(probs.data),
                   static_cast<unsigned char*>(routing_map.data),
                   chunk_counts,
                   super,
                   counts,
                   records,
                   map && !fill_in_map ? static_cast<int*>(map->row_id_map.data) : nullptr,
                   static_cast<int>(T),
                   static_cast<int>(tpw),
                   static_cast<int>(SC),
                   opts.scaling_factor,
                   cm,
                   fused ? records : nullptr,
                   0,
                   nullptr,
                   0};
    if (persist) persist_on_stream(impl, stream, NS * E, a);
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(NC);
    d.block[0] = static_cast<unsigned>(W * 32);
    d.smem = static_cast<unsigned>(smem_bytes(s));
    d.pdl = !persist;  // after route_zero (kiln's own); waits for it before its atomics
    impl.launch(s, d, stream, a);
  }
  if (map && !fused) {
    MoeRouteMapArgs ma{};
    ma.records = records;
    ma.map = cm;
    ma.T = static_cast<int>(T);
    ma.chunk_tokens = static_cast<int>(CT);
    LaunchDims dm;
    dm.grid[0] = static_cast<unsigned>(std::max<int64_t>(1, NC));
    dm.block[0] = 256;
    dm.pdl = T > 0;  // waits for route first (with T = 0 it is the recipe's first launch)
    impl.launch(impl.tuned(route_map_spec(arch, E, K, fill_in_map), std::max<int64_t>(T, 1)), dm, stream, ma);
  }
  impl.release_scratch(wsb, stream);
}

void moe_topk_routing_bwd(Runtime& rt, const TensorRef& dprobs, const TensorRef& logits,
                          const TensorRef& routing_map, const TensorRef& dlogits, const MoeRoutingOptions& opts,
                          Stream stream) {
  const Check ck{"moe_topk_routing_bwd"};
  const int64_t E = check_logits(ck, "logits", logits);
  const int64_t T = logits.shape[0];
  check_options(ck, opts, E, false);
  ck.tensor("dprobs", dprobs, {DType::f32}, {T, E}, 16);
  ck.tensor("routing_map", routing_map, {DType::u8}, {T, E}, 4);
  ck.tensor("dlogits", dlogits, {DType::f32}, {T, E}, 16);
  if (T == 0) return;
  auto& impl = rt.impl();
  const Specialization s = impl.tuned(bwd_spec(impl.target_arch(), E, opts), T);
  const int warps = s.config[C_WARPS];
  MoeTopkBwdArgs a{static_cast<const float*>(dprobs.data), static_cast<const float*>(logits.data),
                   static_cast<const unsigned char*>(routing_map.data), static_cast<float*>(dlogits.data),
                   static_cast<int>(T), opts.scaling_factor};
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>((T + warps - 1) / warps);
  d.block[0] = static_cast<unsigned>(warps * 32);
  impl.launch(s, d, stream, a);
}

void moe_make_row_id_map(Runtime& rt, const TensorRef& routing_map, const MoeRowIdMap& out, int multiple_of,
                         Stream stream, int max_per_token, const TensorRef& workspace) {
  const Check ck{"moe_make_row_id_map"};
  ck.dtype("routing_map", routing_map, {DType::u8, DType::i32});
  ck.shape("routing_map", routing_map, {-1, -1});
  ck.contiguous("routing_map", routing_map);
  const int64_t T = routing_map.shape[0], E = routing_map.shape[1];
  if (E <= 0 || E % 4 != 0 || E > kMoeMaxExperts)
    ck.shape_error("routing_map", fmt::format("expected the expert count E (last dim) to be a multiple of 4 in "
                                              "[4, {}], got {}",
                                              kMoeMaxExperts, E));
  ck.fits_int32("routing_map", T, "T (tokens)");
  if (T > 0) ck.pointer("routing_map", routing_map, 16);
  check_multiple_of(ck, multiple_of);
  if (max_per_token < 0 || max_per_token > E)
    ck.invalid("max_per_token", fmt::format("expected 0 (= E) … E = {}, got {}", E, max_per_token));
  const int64_t k = max_per_token == 0 ? E : max_per_token;
  check_map(ck, out, T, E, k, multiple_of, true);
  // (either path: the block histograms, or the fused launch's chunk rows, superblock rows and arrival word)
  check_workspace(ck, workspace, T > 0 ? (nblocks(T) + nsuper(T)) * E + 1 : E);

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  const bool i32 = routing_map.dtype == DType::i32;
  const int64_t NB = nblocks(T);
  // One launch (map_fused) where its grid of CT-token chunks is resident at once: the least CT
  // (32 … kMoeMapFusedMaxChunk) that fits; else, or with the config's fill 0, map_count → map_scan → map_write.
  Specialization f = impl.tuned(map_spec(arch, kMapFused, E, i32), std::max<int64_t>(T, 1));
  int64_t CT = 0;
  if (T > 0 && f.config[C_FILL] != kFillInRoute) {
    const int64_t cap = static_cast<int64_t>(impl.device().sm_count) *
                        impl.resident_per_sm(impl.kernel(f), 256, smem_bytes(f));
    for (int64_t ct = std::max<int64_t>(32, f.config[C_TPW]); ct <= kMoeMapFusedMaxChunk && !CT; ct *= 2)
      if ((T + ct - 1) / ct <= cap) CT = ct;
  }
  static const char owner = 0;  // (the runtime's scratch: every row is written or zeroed before it is read)
  const ScratchBuffer ws =
      workspace.defined()
          ? ScratchBuffer{}
          : impl.scratch(&owner, static_cast<size_t>((std::max<int64_t>(NB, 1) + nsuper(T)) * E + 1) * 4, stream);
  int* hist = workspace.defined() ? static_cast<int*>(workspace.data) : reinterpret_cast<int*>(ws.ptr);
  if (CT > 0) {
    const int64_t NC = (T + CT - 1) / CT, SC = super_chunks(NC), NS = (NC + SC - 1) / SC;
    // The stream's superblock rows and arrival word (PERSIST), except while the stream captures a graph: then
    // route_zero + PDL.
    if ((f.config[C_LOAD] & kRunPersist) && stream_capturing(stream)) f.config[C_LOAD] &= ~kRunPersist;
    const bool persist = (f.config[C_LOAD] & kRunPersist) != 0;
    MoeMapFusedArgs fa{};
    int* super = hist + NC * E;
    unsigned* arrive = reinterpret_cast<unsigned*>(super + NS * E);
    if (persist) {
      const RouteState rs = route_state(impl, stream, NS * E);
      arrive = reinterpret_cast<unsigned*>(rs.arrive);
      super = rs.rows;
      fa.persist_half = static_cast<int>(rs.half);
    } else {
      launch_route_zero(impl, arch, T, super, NS * E + 1, stream);
    }
    fa.routing_map = routing_map.data;
    fa.map = chunk_map(&out, hist, super, static_cast<int*>(out.tokens_per_expert.data), NC, SC, multiple_of);
    fa.chunk_counts = hist;
    fa.super = super;
    fa.arrive = arrive;
    fa.T = static_cast<int>(T);
    fa.chunk_tokens = static_cast<int>(CT);
    if (f.config[C_VARIANT] & 64) fa.trace = detail::moe_map_trace.load(std::memory_order_relaxed);
    if (!fa.trace) f.config[C_VARIANT] &= ~64;
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(NC);
    d.block[0] = 256;
    d.smem = static_cast<unsigned>(smem_bytes(f));
    d.pdl = !persist;  // after route_zero; waits for it before its atomics
    impl.launch(f, d, stream, fa);
    impl.release_scratch(ws, stream);
    return;
  }
  if (T > 0) {
    MoeMapCountArgs a{routing_map.data, hist, static_cast<int>(T)};
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(NB);
    d.block[0] = 256;
    impl.launch(impl.tuned(map_spec(arch, kMapCount, E, i32), T), d, stream, a);
  }
  launch_map(impl, arch, routing_map, out, out.tokens_per_expert, hist, T, E, multiple_of, stream);
  impl.release_scratch(ws, stream);
}

}  // namespace kiln
