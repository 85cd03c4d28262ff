// Bench cases of the fp32 router GEMM (kiln bench): forward and backward (dx + dw) at the target shape
// (8192 tokens × hidden 2048 → 256 experts, Ling-mini-2.0) and at DeepSeek-V3's (hidden 7168 → 256), dx and dw alone,
// and a sweep of every search-space tile config at the target shape (op "router_gemm_sweep_*", config in the shape
// string), so one GPU run also tunes. Bytes are the minimal traffic (every input read once, every output written
// once); floors at 3025 GB/s and FLOPs (2·T·K·E per product):
//   fwd 8192×2048→256: 42.9 MB → 14.2 µs;  8.59 GFLOP        fwd 8192×7168→256: 149 MB → 49.3 µs;  30.1 GFLOP
//   bwd 8192×2048→256: 77.6 MB → 25.7 µs;  17.2 GFLOP of products; the TMA backward at precision standard (default:
//   dx from bf16(g), dw from hi + lo) 25.8 GFLOP of MMAs; tf32 (one fp16 pass each) 17.2 (+ the 2 MB w16 prep); high
//   (hi + lo) 34.4 (the older kernels too); *_bf16g rows: bf16(g) alone, 17.2 (measurement only)
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <string>
#include <utility>

#include "ops/router_gemm_internal.hpp"
#include "runtime/bench.hpp"

namespace kiln::detail {
namespace {

// Tile configs swept at the target shape (bm, bn, bk, wm, wn, stages): the search spaces of K = 2048, E = 256 plus
// points outside them worth a measurement.
constexpr std::array<std::array<int32_t, 6>, 6> kFwdSweep = {{{64, 256, 64, 2, 4, 4},
                                                              {64, 256, 64, 2, 4, 3},
                                                              {32, 256, 64, 1, 8, 4},
                                                              {128, 256, 32, 4, 2, 4},
                                                              {64, 128, 64, 2, 4, 4},
                                                              {64, 256, 32, 2, 4, 6}}};
// The sm_90a wgmma forward: wm warpgroups of 64 tokens, K split over a cluster of wn CTAs, stages.
constexpr std::array<std::array<int32_t, 6>, 7> kFwd90Sweep = {{{64, 256, 64, 1, 1, 4},
                                                                {64, 256, 64, 1, 1, 3},
                                                                {64, 256, 64, 1, 1, 5},
                                                                {128, 256, 64, 2, 1, 4},
                                                                {128, 256, 64, 2, 2, 4},
                                                                {128, 256, 64, 2, 2, 3},
                                                                {64, 256, 64, 1, 2, 4}}};
// The sm_90a TMA forward: bm = 64·wm tokens, bn experts per consumer warpgroup, wn = cluster CTAs sharing w by
// multicast (fwd_tma) or splitting K (fwd_tmaks), stages. Run of 03:40 (H100): 64/128/1/1/5 22.82 µs; multicast
// 64/128/1/2/5 39.15, 64/128/1/4/5 67.14; 128/256/2/1/4 27.10, 128/256/2/2/4 40.61.
// Runs of 06:30 / 07:10 (µs): 64/256/64/1/1/5 22.2; 64/128/64/1/1/5 22.9–23.2; 64/128/64/1/2/5 22.9–23.2;
// 128/256/64/2/1/4 27.5; 64/256/64/1/1/4 24.9. K split: 128/256/64/2/2/4 23.0; stages 3 25.4; wn 4 42.3; 64/128/1/2/5 26.1.
constexpr std::array<std::array<int32_t, 6>, 5> kFwdTmaSweep = {{{64, 256, 64, 1, 1, 5},
                                                                 {64, 128, 64, 1, 1, 5},
                                                                 {64, 128, 64, 1, 2, 5},
                                                                 {128, 256, 64, 2, 1, 4},
                                                                 {64, 256, 64, 1, 1, 4}}};
constexpr std::array<std::array<int32_t, 6>, 4> kFwdTmaKsSweep = {{{128, 256, 64, 2, 2, 4},
                                                                   {128, 256, 64, 2, 2, 3},
                                                                   {128, 256, 64, 2, 4, 4},
                                                                   {64, 128, 64, 1, 2, 5}}};
// The forward over expert pairs (x multicast in clusters of 2; cuBLAS's tile): bm = 64·wm tokens × bn = E/2 experts a
// CTA, stages. Run of 07:10 (µs): 128/128/64/2/2/6 20.5–20.7, stages 7 20.6, 4 (with a TMA-store epilogue) 22.5,
// 64/128/64/1/2/8 21.8 (those three stay in the search space, not in this list).
// Session 5: bk = 128 / 256 = the producer requests 2 / 4 consecutive 64-column chunks together (round 1: bk = 128
// 22.5 vs 20.9). The ping-pong form (bm = 64, wm = 2: 23.4–24.0) and clusters of 4 (wn = 4: 32.7–39.0, one cluster in
// a second wave) stay in the search space, not in this list (bench/NOTES.md).
constexpr std::array<std::array<int32_t, 6>, 3> kFwdTmaXmcSweep = {{{128, 128, 64, 2, 2, 6},
                                                                    {128, 128, 64, 2, 2, 7},
                                                                    {128, 128, 256, 2, 2, 6}}};
// The sm_90a TMA backward: dx (wn = cluster CTAs sharing w by multicast, stages; run of 04:17: wn 1 stages 5
// 23.2 µs, wn 2 26.2, wn 4 43.7; stages 6 (no room for the staged TMA-store epilogue) 52.3).
constexpr std::array<std::array<int32_t, 6>, 8> kDxTmaSweep = {{{64, 256, 64, 2, 2, 5},
                                                                {64, 256, 64, 2, 1, 5},
                                                                {64, 256, 64, 2, 4, 5},
                                                                {64, 256, 64, 2, 2, 4},
                                                                {64, 256, 64, 2, 1, 6},
                                                                {64, 256, 64, 2, 2, 6},
                                                                {128, 256, 64, 2, 1, 3},
                                                                {128, 256, 64, 2, 1, 2}}};
// dw: wm = T ranges a cluster reduces (the rest go through the workspace in groups), wn = T ranges. Run of 04:17
// (clusters of 4): wn 8 stages 3 61.4 µs (with workspace), wn 4 stages 3 48.7.
constexpr std::array<std::array<int32_t, 6>, 5> kDwTmaSweep = {{{128, 256, 64, 2, 8, 3},
                                                                {128, 256, 64, 1, 8, 3},
                                                                {128, 256, 64, 4, 8, 3},
                                                                {128, 256, 64, 2, 8, 2},
                                                                {128, 256, 64, 4, 4, 3}}};
constexpr std::array<std::array<int32_t, 6>, 6> kDxSweep = {{{128, 128, 32, 8, 1, 3},
                                                             {128, 128, 32, 8, 1, 4},
                                                             {64, 128, 32, 4, 1, 4},
                                                             {128, 256, 32, 8, 1, 3},
                                                             {128, 64, 32, 8, 1, 4},
                                                             {64, 256, 32, 4, 1, 3}}};
constexpr std::array<std::array<int32_t, 6>, 5> kDwSweep = {{{256, 128, 32, 8, 1, 4},
                                                             {256, 128, 32, 8, 1, 3},
                                                             {256, 64, 32, 8, 1, 4},
                                                             {256, 128, 64, 8, 1, 2},
                                                             {128, 128, 32, 8, 1, 4}}};

template <size_t N>
void add_sweep(std::vector<BenchCase>& cases, const char* part, const std::array<std::array<int32_t, 6>, N>& list) {
  for (const auto& c : list) {
    RouterGemmConfig cfg{};
    std::copy(c.begin(), c.end(), cfg.begin());
    cases.push_back({fmt::format("router_gemm_sweep_{}", part),
                     fmt::format("T=8192 K=2048 E=256 bm={} bn={} bk={} wm={} wn={} stages={}", c[0], c[1], c[2], c[3],
                                 c[4], c[5]),
                     [part, cfg](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part, &cfg); }});
  }
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  for (int64_t K : {2048, 7168}) {
    const std::string shape = fmt::format("T=8192 K={} E=256", K);
    for (const char* part :
         {"fwd_tma", "fwd_tmaks", "fwd_tmaxmc", "fwd_sm90", "bwd_tma", "bwd_tma_high"})
      cases.push_back({fmt::format("router_gemm_sweep_{}", part), shape + " default",
                       [K, part](Runtime& rt) { return router_gemm_instance(rt, 8192, K, 256, part); }});
    // The op rows; the forward's baseline is cuBLASLt doing the same GEMM in the same run ("fwd_cublas").
    for (const char* part : {"fwd", "bwd"})
      cases.push_back({fmt::format("router_gemm_fp32_{}", part), shape, [K, part](Runtime& rt) {
                         return router_gemm_instance(rt, 8192, K, 256, part == std::string("fwd") ? "fwd_cublas" : part);
                       }});
  }
  for (const char* part : {"dx", "dw", "dx_tma_tf32", "dw_tma_tf32", "dx_tma_high", "dw_tma_high", "dx_tma_bf16g",
                           "dw_tma_bf16g"})
    cases.push_back({fmt::format("router_gemm_fp32_bwd_{}", part), "T=8192 K=2048 E=256",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part); }});
  // The TMA backward's fp16 pass (tf32, the default): dw with 32-token chunks (6 / 5 stages: a deeper ring of the
  // same bytes) and clusters of 1 against the default (64-token chunks, 3 stages, clusters of 2); dx with 128-token
  // units against the default 64-token tiles.
  add_sweep(cases, "dw_tma_tf32", std::array<std::array<int32_t, 6>, 4>{{{128, 256, 64, 2, 8, 3},
                                                                     {128, 256, 32, 2, 8, 6},
                                                                     {128, 256, 32, 2, 8, 7},
                                                                     {128, 256, 64, 1, 8, 3}}});
  add_sweep(cases, "dx_tma_tf32", std::array<std::array<int32_t, 6>, 2>{{{64, 256, 64, 2, 1, 5}, {128, 256, 64, 2, 1, 3}}});
  // The same points as plain rows of the bwd ops (op names the bwd filter selects), precision tf32 and high.
  struct Pt {
    const char* part;
    std::array<int32_t, 6> c;
  };
  for (const Pt& pt : {Pt{"dw_tma_tf32", {128, 256, 32, 2, 8, 6}}, Pt{"dw_tma_tf32", {128, 256, 32, 2, 8, 7}},
                       Pt{"dw_tma_tf32", {128, 256, 32, 2, 8, 5}}, Pt{"dw_tma_tf32", {128, 256, 64, 1, 8, 3}},
                       Pt{"dw_tma_high", {128, 256, 32, 2, 8, 6}}, Pt{"dw_tma_high", {128, 256, 32, 2, 8, 7}},
                       Pt{"dx_tma_tf32", {128, 256, 64, 2, 1, 3}}, Pt{"dx_tma_tf32", {64, 256, 64, 2, 2, 5}}}) {
    RouterGemmConfig cfg{};
    std::copy(pt.c.begin(), pt.c.end(), cfg.begin());
    const std::string part = pt.part;
    cases.push_back({fmt::format("router_gemm_fp32_bwd_{}_cfg", part.substr(0, 2)),
                     fmt::format("T=8192 K=2048 E=256 {} bm={} bk={} wm={} wn={} stages={}",
                                 part.ends_with("_high") ? "high" : "tf32", pt.c[0],
                                 pt.c[2], pt.c[3], pt.c[4], pt.c[5]),
                     [part, cfg](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part, &cfg); }});
  }
  // Session 18 (op "router_gemm_s18_dx", measurement): the dx kernels of precisions high and tf32 at K = 2048, 4096,
  // 7168, default against session 17's tuner picks at K = 7168 (high: w multicast to clusters of 2, 4 stages; tf32:
  // 128-token units, 3 stages).
  for (int64_t K : {2048, 4096, 7168})
    for (const Pt& pt : {Pt{"dx_tma_high", {}}, Pt{"dx_tma_high", {64, 256, 64, 2, 2, 4}}, Pt{"dx_tma_tf32", {}},
                         Pt{"dx_tma_tf32", {128, 256, 64, 2, 1, 3}}}) {
      RouterGemmConfig cfg{};
      std::copy(pt.c.begin(), pt.c.end(), cfg.begin());
      const std::string part = pt.part;
      const bool dflt = pt.c[0] == 0;
      cases.push_back({"router_gemm_s18_dx",
                       dflt ? fmt::format("T=8192 K={} E=256 {} default", K, part)
                            : fmt::format("T=8192 K={} E=256 {} bm={} wn={} stages={}", K, part, pt.c[0], pt.c[4],
                                          pt.c[5]),
                       [part, cfg, dflt, K](Runtime& rt) {
                         return router_gemm_instance(rt, 8192, K, 256, part, dflt ? nullptr : &cfg);
                       }});
    }
  // The TMA backward's ablations at precision standard (session 6): each kernel alone, without its MMAs (the data
  // movement and the ring protocol), without its loads (MMAs on stale shared memory), without its stores (dw: no
  // cluster sum, no partials, no dw_reduce), and the skeleton (launch, barriers).
  for (const char* part : {"dx_tma", "dx_tma_nomma", "dx_tma_noload", "dx_tma_nostore", "dx_tma_noload_nomma_nostore",
                           "dw_tma", "dw_tma_nomma", "dw_tma_noload", "dw_tma_nostore", "dw_tma_noload_nomma_nostore"})
    cases.push_back({fmt::format("router_gemm_sweep_bwd_{}", part), "T=8192 K=2048 E=256 default",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part); }});
  // dx with 128-token units (half the w bytes into each SM) and its ablations.
  for (const char* part : {"dx_tma", "dx_tma_nomma", "dx_tma_noload", "dx_tma_nostore"})
    add_sweep(cases, part, std::array<std::array<int32_t, 6>, 1>{{{128, 256, 64, 2, 1, 3}}});
  // dx with w multicast to clusters of 2 (half the L2 reads of w).
  add_sweep(cases, "dx_tma", std::array<std::array<int32_t, 6>, 2>{{{64, 256, 64, 2, 2, 5}, {64, 256, 64, 2, 2, 4}}});
  // Session 9: the backward in one launch (precision standard; the op's default where it fits): the dw role then the
  // dx role in each CTA (_one), against the two kernels (router_gemm_sweep_bwd_tma); _sepred: the groups' partials added by
  // router_gemm_dw_reduce_kernel instead of inside the kernel; _endred: summed after the dx role instead of under
  // its column blocks; _nogpf: without the L2 prefetch of the dx tile's g rows near the dw role's end; _noef: x
  // loaded without the L2 evict-first policy.
  for (int64_t K : {2048, 7168})
    for (const char* part : {"bwd_one", "bwd_one_sepred", "bwd_one_endred", "bwd_one_nogpf", "bwd_one_noef"})
      cases.push_back({fmt::format("router_gemm_sweep_{}", part), fmt::format("T=8192 K={} E=256 default", K),
                       [K, part](Runtime& rt) { return router_gemm_instance(rt, 8192, K, 256, part); }});
  // Session 24: the two kernels side by side (variant 4, the op's default at K = 2048 since session 25: dx on fewer
  // CTAs, dw beside it on whole T ranges; router_gemm_side_by_side_plan), against the one launch above and the two
  // kernels (router_gemm_sweep_bwd_tma).
  for (int64_t K : {2048, 7168})
    cases.push_back({"router_gemm_sweep_bwd_sbs", fmt::format("T=8192 K={} E=256 default", K),
                     [K](Runtime& rt) { return router_gemm_instance(rt, 8192, K, 256, "bwd_sbs"); }});
  // ... with the dw role's 8 T ranges in clusters of 1 (each CTA's partial stored from its registers, no DSMEM pair
  // sum; 8 partials a tile summed in the kernel) and with 2 dw stages.
  add_sweep(cases, "bwd_one", std::array<std::array<int32_t, 6>, 2>{{{64, 256, 64, 1, 8, 3}, {64, 256, 64, 2, 8, 2}}});
  for (const char* part : {"bwd_tma_bf16g", "bwd_tma_tf32"})
    cases.push_back({fmt::format("router_gemm_sweep_{}", part), "T=8192 K=2048 E=256 default",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part); }});
  add_sweep(cases, "fwd_mma", kFwdSweep);
  add_sweep(cases, "fwd_tma", kFwdTmaSweep);
  add_sweep(cases, "fwd_tmaks", kFwdTmaKsSweep);
  add_sweep(cases, "fwd_tmaxmc", kFwdTmaXmcSweep);
  // The TMA forwards' main loops alone (no logits written, no K-split exchange): what the epilogue costs.
  for (const char* part : {"fwd_tma_nostore", "fwd_tmaks_nostore", "fwd_tmaxmc_nostore"})
    cases.push_back({fmt::format("router_gemm_sweep_{}", part), "T=8192 K=2048 E=256 default",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part); }});
  // The expert-pair forward's options and ablations (session 5): one tile per CTA pair of the GPU (_bal: 66 tiles of
  // 125 rows at 132 SMs), the 8-byte stores from the registers instead of the staged epilogue (_direct; round 2: 21.5
  // vs 20.0), half of them (_direct_halfstore: 19.2), without w loads (_now: the MMAs read stale w), without stores
  // (_nostore). (_rot, K walk rotated per tile: 21.9 vs 21.6 in round 1.)
  for (const char* part :
       {"fwd_tmaxmc_bal", "fwd_tmaxmc_now_nostore", "fwd_tmaxmc_direct", "fwd_tmaxmc_direct_halfstore"})
    cases.push_back({fmt::format("router_gemm_sweep_{}", part), "T=8192 K=2048 E=256 default",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part); }});
  // Below 8192 tokens (session 5): the op's default (now the expert pairs with 64-token tiles where K < 4096) against
  // the persistent 64-token kernel it took before.
  for (int64_t T : {1024, 4096})
    for (const char* part : {"fwd", "fwd_tma"})
      cases.push_back({fmt::format("router_gemm_sweep_{}", part), fmt::format("T={} K=2048 E=256 default", T),
                       [T, part](Runtime& rt) { return router_gemm_instance(rt, T, 2048, 256, part); }});
  // Grids that return at once (the same launch shapes: 2-CTA clusters of 213 KB CTAs; 128 single 205 KB CTAs): what
  // the 3.7–4.1 µs between the events and the CTAs' span (round 2's timeline) are made of.
  for (const char* part : {"fwd_tmaxmc_noop", "fwd_tma_noop"})
    cases.push_back({fmt::format("router_gemm_sweep_{}", part), "T=8192 K=2048 E=256 default",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part); }});
  // Session 7: the expert-pair forward's TMA-store epilogue (_epitma: per-warp 16 × 32 boxes staged in the x rows the
  // warpgroup no longer reads, no barrier across warps; _mix: warpgroup 1 stores from its registers meanwhile), the
  // options off whatever the op's defaults (_plain); ablations: no loads (_noload: MMAs on stale shared memory), no
  // MMAs (_nomma: the data movement), neither (a pure store phase after the ring protocol).
  for (const char* part : {"fwd_tmaxmc_epitma", "fwd_tmaxmc_mix_epitma", "fwd_tmaxmc_plain", "fwd_tmaxmc_noload",
                           "fwd_tmaxmc_nomma", "fwd_tmaxmc_noload_nomma", "fwd_tmaxmc_noload_nomma_epitma",
                           "fwd_tmaxmc_noload_nomma_mix_epitma", "fwd_tmaxmc_noload_epitma", "fwd_tmaxmc_nomma_nostore",
                           "fwd_tmaxmc_noload_nomma_nostore"})
    cases.push_back({fmt::format("router_gemm_sweep_{}", part), "T=8192 K=2048 E=256 default",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part); }});
  for (const char* part : {"fwd_tmaxmc_epitma", "fwd_tmaxmc_plain", "fwd_tmaxmc_mix_epitma"})
    add_sweep(cases, part, std::array<std::array<int32_t, 6>, 1>{{{128, 128, 64, 2, 2, 7}}});
  // A/B rows (round 5): the same kernels under second names (_staged = _plain: the staged epilogue; _epitma_mix =
  // _mix_epitma), so one run gives two samples of each.
  for (const char* part : {"fwd_tmaxmc_staged", "fwd_tmaxmc_epitma_mix"}) {
    cases.push_back({fmt::format("router_gemm_sweep_{}", part), "T=8192 K=2048 E=256 default",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part); }});
    add_sweep(cases, part, std::array<std::array<int32_t, 6>, 1>{{{128, 128, 64, 2, 2, 7}}});
  }
  cases.push_back({"router_gemm_sweep_fwd_tmaxmc_staged", "T=8192 K=7168 E=256 default",
                   [](Runtime& rt) { return router_gemm_instance(rt, 8192, 7168, 256, "fwd_tmaxmc_staged"); }});
  cases.push_back({"router_gemm_sweep_fwd_tmaxmc_epitma", "T=8192 K=7168 E=256 default",
                   [](Runtime& rt) { return router_gemm_instance(rt, 8192, 7168, 256, "fwd_tmaxmc_epitma"); }});
  for (int64_t T : {1024, 4096})  // the op's 64-token expert pairs (one consumer warpgroup, 8 stages)
    cases.push_back({"router_gemm_sweep_fwd_tmaxmc_epitma", fmt::format("T={} K=2048 E=256 default", T),
                     [T](Runtime& rt) { return router_gemm_instance(rt, T, 2048, 256, "fwd_tmaxmc_epitma"); }});
  for (int64_t T : {1024, 4096})
    cases.push_back({"router_gemm_sweep_fwd_tmaxmc", fmt::format("T={} K=2048 E=256 default", T),
                     [T](Runtime& rt) { return router_gemm_instance(rt, T, 2048, 256, "fwd_tmaxmc"); }});
  // Launch and completion alone with little shared memory: clustered 2-stage grids (65 / 49 KB CTAs, 384 / 256
  // threads) and a non-clustered 2-stage one, against the default rows above (213 KB clustered, 205 KB single).
  add_sweep(cases, "fwd_tmaxmc_noop", std::array<std::array<int32_t, 6>, 2>{{{128, 128, 64, 2, 2, 2}, {64, 128, 64, 1, 2, 2}}});
  add_sweep(cases, "fwd_tma_noop", std::array<std::array<int32_t, 6>, 1>{{{64, 128, 64, 1, 1, 2}}});
  // ... and with no dynamic shared memory at all (the previous kernel, the L2 flush, uses none: a carve-out change?).
  for (const char* part : {"fwd_tmaxmc_noop0", "fwd_tma_noop0"})
    cases.push_back({fmt::format("router_gemm_sweep_{}", part), "T=8192 K=2048 E=256 default",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part); }});
  for (const char* part : {"fwd_tmaxmc_nostore", "fwd_tmaxmc_direct"})
    cases.push_back({fmt::format("router_gemm_sweep_{}", part), "T=8192 K=7168 E=256 default",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 7168, 256, part); }});
  // Session 9 (op "router_gemm_s9_fwd", the part in the shape string): the op row's twin ("fwd", the public op's path)
  // and the sweep default's twin ("fwd_tmaxmc") at the start and again at the end of the block (is the op row's gap to
  // the sweep row an order effect?), the main loop alone (_nostore), the data movement alone (_nomma) and the producer
  // tail (_noexit), at the target shape, K = 7168 and the 64-token tiles of T = 1024 / 4096. (The session-9 options
  // _eld / _eldall / _hint / _xp128 / _xp0 measured slower or equal and were deleted in session 10.)
  {
    auto s9 = [&cases](int64_t T, int64_t K, const char* part, const char* tag = "") {
      cases.push_back({"router_gemm_s9_fwd", fmt::format("T={} K={} E=256 {}{}", T, K, part, tag),
                       [T, K, part](Runtime& rt) { return router_gemm_instance(rt, T, K, 256, part); }});
    };
    for (const char* part : {"fwd", "fwd_tmaxmc", "fwd_tmaxmc_nomma", "fwd_tmaxmc_nostore", "fwd_tmaxmc_noexit"})
      s9(8192, 2048, part);
    for (const char* part : {"fwd_tmaxmc", "fwd_tmaxmc_mix_epitma"}) s9(8192, 7168, part);
    for (int64_t T : {1024, 4096})
      for (const char* part : {"fwd_tmaxmc", "fwd_tmaxmc_plain"}) s9(T, 2048, part);
    s9(8192, 2048, "fwd_tmaxmc_mix_epitma");  // the default before kRgNoExitSync (the same epilogue)
    for (const char* part : {"fwd", "fwd_tmaxmc"}) s9(8192, 2048, part, " again");
  }
  // Session 15 (op "router_gemm_s15_fwd", measurement only): the router_gemm_fp32_fwd row with the op and cuBLASLt
  // exchanged (the row's us is cuBLASLt's, its baseline the op's). With the parity-balanced method the two read the
  // same whichever is timed first (round D: cuBLASLt first 18.98, op 19.04; op first 18.98, cuBLASLt 18.94); before
  // it the block timed first sat on the other launch parity than the second (bench/NOTES.md, session 15).
  cases.push_back({"router_gemm_s15_fwd", "T=8192 K=2048 E=256 cuBLASLt first", [](Runtime& rt) {
                     BenchInstance inst = router_gemm_instance(rt, 8192, 2048, 256, "fwd_cublas");
                     if (inst.baseline) std::swap(inst.run, inst.baseline);  // else the row says why there is none
                     return inst;
                   }});
  // What the sm_90a proxy fence costs (measurement only).
  for (const char* part : {"fwd_sm90_nofence"})
    cases.push_back({fmt::format("router_gemm_sweep_{}", part), "T=8192 K=2048 E=256 default",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part); }});
  // 2 CTAs an SM with K split; 128 K columns a stage (fewer barriers per MMA).
  add_sweep(cases, "fwd_sm90", std::array<std::array<int32_t, 6>, 4>{{{64, 256, 64, 1, 2, 2},
                                                                       {64, 256, 128, 1, 1, 2},
                                                                       {128, 256, 128, 2, 2, 2},
                                                                       {64, 256, 128, 1, 2, 2}}});
});

}  // namespace
}  // namespace kiln::detail
