// Host recipe: MoE top-k routing (forward, backward) and the padded row-id map (templates/kiln/moe_routing.cuh).
// Spec: linghe-kernels.md §6.1, §13 (HEAD group_topk_score); fp4-moe.md §3.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kiln/moe_routing_args.h"
#include "kiln/ops/moe.hpp"
#include "ops/bench/moe_instances.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace {
using namespace detail;

enum : uint32_t {
  kTopkFwd = 0, kTopkBwd = 1, kMapCount = 2, kMapScan = 3, kMapWrite = 4, kRouteZero = 5, kRoute = 6, kRouteMap = 7
};
enum { P_E, P_K, P_SIGMOID, P_GROUPS, P_TOPK_GROUPS, P_RENORM, P_BIAS, P_MAP_I32, P_MAP, P_APPROX };
// warps: the top-k forward's lanes per token (recorded; fixed by E) or the backward's warps per CTA. pipeline (top-k
// forward): 0 = the classic one (topk_fwd → map_scan → map_write; default), 1 = the fused pipeline (route_zero →
// route → route_map, chained by programmatic dependent launch), 2 = the fused pipeline without route's approximate
// candidate search (exact σ for every expert), 3 = route's top-k with the classic scan and map kernels.
enum { C_WARPS, C_PIPE };

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/moe_routing.cuh\"\n";
  const auto& p = s.params;
  const char* map_t = p[P_MAP_I32] ? "int" : "unsigned char";
  switch (s.kernel) {
    case kTopkFwd:
      name = fmt::format("kiln::moe_topk_fwd_kernel<{}, {}, {}, {}, {}, {}, {}>", p[P_E], p[P_K], p[P_SIGMOID] != 0,
                         p[P_GROUPS], p[P_TOPK_GROUPS], p[P_RENORM] != 0, p[P_BIAS] != 0);
      break;
    case kTopkBwd:
      name = fmt::format("kiln::moe_topk_bwd_kernel<{}, {}, {}, {}>", p[P_E], p[P_SIGMOID] != 0, p[P_RENORM] != 0,
                         s.config[C_WARPS]);
      break;
    case kMapCount: name = fmt::format("kiln::moe_map_count_kernel<{}, {}>", p[P_E], map_t); break;
    case kMapScan: name = fmt::format("kiln::moe_map_scan_kernel<{}>", p[P_E]); break;
    case kRouteZero: name = "kiln::moe_route_zero_kernel"; break;
    case kRoute:
      name = fmt::format("kiln::moe_route_kernel<{}, {}, {}, {}, {}, {}, {}, {}, {}>", p[P_E], p[P_K],
                         p[P_SIGMOID] != 0, p[P_GROUPS], p[P_TOPK_GROUPS], p[P_RENORM] != 0, p[P_BIAS] != 0,
                         p[P_MAP] != 0, p[P_APPROX] != 0);
      break;
    case kRouteMap: name = fmt::format("kiln::moe_route_map_kernel<{}>", p[P_E]); break;
    default: name = fmt::format("kiln::moe_map_write_kernel<{}, {}>", p[P_E], map_t);
  }
}

int smem_bytes(const Specialization&) { return 0; }

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);

// The tuner's instance of `s` at `tokens` rows: the forward (with the map, padded to 16) for topk_fwd and the map
// kernels, the backward for topk_bwd; random logits, routed once on the device.
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  const int64_t E = s.params[P_E];
  MoeRoutingOptions o;
  o.top_k = s.params[P_K] > 0 ? static_cast<int>(s.params[P_K]) : static_cast<int>(std::min<int64_t>(8, E));
  o.score = s.params[P_SIGMOID] ? MoeScore::sigmoid : MoeScore::softmax;
  o.renormalize = s.params[P_RENORM] != 0;
  if (s.kernel == kTopkFwd || s.kernel == kRoute) {
    o.n_group = static_cast<int>(s.params[P_GROUPS]);
    o.topk_group = static_cast<int>(s.params[P_TOPK_GROUPS]);
    return moe_routing_fwd_instance(rt, tokens, E, o, s.params[P_BIAS] != 0, s.kernel == kTopkFwd || s.params[P_MAP],
                                    16);
  }
  if (s.kernel == kTopkBwd) return moe_routing_bwd_instance(rt, tokens, E, o);
  return moe_row_id_map_instance(rt, tokens, E, o.top_k, 16);
}

FamilyDef g_family{"moe_routing",
                   {"topk_fwd", "topk_bwd", "map_count", "map_scan", "map_write", "route_zero", "route", "route_map"},
                   {"E", "top_k", "sigmoid", "n_group", "topk_group", "renormalize", "bias", "map_i32", "map",
                    "approx"},
                   {"warps", "pipeline"},
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

// Lanes per token of the top-k forward (templates: MoeTopkLanes): a lane owns E/L contiguous experts.
int64_t topk_lanes(int64_t E) { return E % 64 == 0 ? 16 : E % 32 == 0 ? 8 : E % 16 == 0 ? 4 : E % 8 == 0 ? 2 : 1; }

// Top-k forward: a CTA per 32-token map block with L lanes per token (L warps): at T = 8192 and E = 256 that is
// 256 CTAs of 16 warps, two per SM. The launch shape follows from E, so the config only records it.
Specialization fwd_spec(Arch arch, int64_t E, const MoeRoutingOptions& o, bool bias) {
  Specialization s = base_spec(arch, kTopkFwd, E);
  s.params[P_K] = o.top_k;
  s.params[P_SIGMOID] = o.score == MoeScore::sigmoid;
  s.params[P_GROUPS] = o.n_group;
  s.params[P_TOPK_GROUPS] = o.topk_group;
  s.params[P_RENORM] = o.renormalize;
  s.params[P_BIAS] = bias;
  s.config[C_WARPS] = static_cast<int32_t>(topk_lanes(E));
  s.config[C_PIPE] = 0;
  return s;
}

// The fused pipeline's top-k kernel: the forward's params and whether the map is built.
Specialization route_spec(const Specialization& fwd, bool map) {
  Specialization s = fwd;
  s.kernel = kRoute;
  s.params[P_MAP] = map;
  s.params[P_APPROX] = fwd.config[C_PIPE] != 2;
  s.config = {};
  s.config[C_WARPS] = fwd.config[C_WARPS];
  return s;
}

Specialization bwd_spec(Arch arch, int64_t E, const MoeRoutingOptions& o) {
  Specialization s = base_spec(arch, kTopkBwd, E);
  s.params[P_SIGMOID] = o.score == MoeScore::sigmoid;
  s.params[P_RENORM] = o.renormalize;
  s.config[C_WARPS] = 8;
  return s;
}

Specialization map_spec(Arch arch, uint32_t kernel, int64_t E, bool map_i32) {
  Specialization s = base_spec(arch, kernel, E);
  if (kernel != kMapScan) s.params[P_MAP_I32] = map_i32;
  return s;
}

// topk_bwd: 4, 8 or 16 warps (a warp per token). topk_fwd (shape fixed by E): the fused pipeline (default) and the
// classic one. The map and route kernels: one config.
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  Specialization s = base;
  s.config = {};
  if (base.kernel == kTopkFwd) {
    s.config[C_WARPS] = static_cast<int32_t>(topk_lanes(base.params[P_E]));
    for (int pipe : {0, 1, 2, 3}) {
      s.config[C_PIPE] = pipe;
      out.push_back(s);
    }
  } else if (base.kernel == kRoute) {
    s.config[C_WARPS] = static_cast<int32_t>(topk_lanes(base.params[P_E]));
    out.push_back(s);
  } else if (base.kernel == kTopkBwd) {
    for (int w : {4, 8, 16}) {
      s.config[C_WARPS] = w;
      out.push_back(s);
    }
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
  if (E % o.n_group != 0 || o.n_group > 32 || o.topk_group > o.n_group) return;
  if (E > kMoeTopkMaxExperts || E / topk_lanes(E) > 64) return;
  const int64_t el = E / topk_lanes(E), gs = E / o.n_group;
  if (o.n_group > 1 && el % gs != 0 && gs % el != 0) return;
  const Specialization f = fwd_spec(arch, E, o, m.expert_bias);
  out.push_back(f);
  out.push_back(bwd_spec(arch, E, o));
  out.push_back(map_spec(arch, kMapCount, E, false));
  out.push_back(map_spec(arch, kMapScan, E, false));
  out.push_back(map_spec(arch, kMapWrite, E, false));
  out.push_back(route_spec(f, true));
  out.push_back(route_spec(f, false));
  out.push_back(base_spec(arch, kRouteZero, 0));
  out.push_back(map_spec(arch, kRouteMap, E, false));
}

int64_t nblocks(int64_t T) { return (T + kMoeMapBlockTokens - 1) / kMoeMapBlockTokens; }
// Superblock rows of the fused pipeline (kMoeSuperBlocks map blocks each).
int64_t nsuper(int64_t T) { return (nblocks(T) + kMoeSuperBlocks - 1) / kMoeSuperBlocks; }

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
  if (forward) {
    const int64_t L = topk_lanes(E), el = E / L;
    if (E > kMoeTopkMaxExperts || el > 64)
      ck.invalid("logits", fmt::format("top-k routing supports E ≤ {} with E/{} ≤ 64 experts per lane (E a multiple "
                                       "of 32 above 64), got E = {}",
                                       kMoeTopkMaxExperts, L, E));
    if (o.n_group > 1 && E % o.n_group == 0 && el % (E / o.n_group) != 0 && (E / o.n_group) % el != 0)
      ck.invalid("n_group", fmt::format("groups of {} experts must divide or be a multiple of the {} experts a lane "
                                        "owns (E = {}); n_group = {} does not fit",
                                        E / o.n_group, el, E, o.n_group));
  }
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
}

// Validates a caller's workspace for the per-block histograms of T tokens.
void check_workspace(const Check& ck, const TensorRef& ws, int64_t T, int64_t E) {
  if (!ws.defined()) return;
  ck.tensor("workspace", ws, {DType::i32}, {-1}, 4);
  const int64_t need = moe_routing_workspace_elems(T, E);
  if (ws.shape[0] < need)
    ck.shape_error("workspace",
                   fmt::format("expected ≥ {} int32 elements (moe_routing_workspace_elems), got {}", need, ws.shape[0]));
}

}  // namespace

KILN_REGISTER_FAMILY(moe_routing, g_family)

int64_t moe_routing_workspace_elems(int64_t T, int64_t E) { return (std::max<int64_t>(nblocks(T), 1) + nsuper(T)) * E; }

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
  check_workspace(ck, workspace, T, E);

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  const int64_t NB = nblocks(T);
  const CUdeviceptr ws = workspace.defined() ? 0 : impl.alloc_async(static_cast<size_t>(moe_routing_workspace_elems(T, E)) * 4, stream);
  int* hist = workspace.defined() ? static_cast<int*>(workspace.data) : reinterpret_cast<int*>(ws);
  const Specialization s = impl.tuned(fwd_spec(arch, E, opts, expert_bias.defined()), std::max<int64_t>(T, 1));
  int* counts = static_cast<int*>(tokens_per_expert.data);
  if (s.config[C_PIPE] == 3) {
    // The route kernel's top-k (block histograms only: no superblock rows, no map fill) → the classic scan and map.
    if (T > 0) {
      Specialization rs = route_spec(s, true);
      rs.params[P_APPROX] = 1;
      rs = impl.tuned(rs, T);
      MoeRouteArgs a{static_cast<const float*>(logits.data),
                     static_cast<const float*>(expert_bias.data),
                     static_cast<float*>(probs.data),
                     static_cast<unsigned char*>(routing_map.data),
                     hist,
                     nullptr,
                     counts,
                     hist,
                     nullptr,
                     static_cast<int>(T),
                     opts.scaling_factor};
      LaunchDims d;
      d.grid[0] = static_cast<unsigned>(NB);
      d.block[0] = static_cast<unsigned>(topk_lanes(E) * kMoeMapBlockTokens);
      impl.launch(rs, d, stream, a);
    }
    if (map) {
      launch_map(impl, arch, routing_map, *map, tokens_per_expert, hist, T, E, multiple_of, stream);
    } else {
      MoeMapScanArgs sa{hist, counts, static_cast<int>(NB)};
      LaunchDims ds;
      ds.grid[0] = static_cast<unsigned>((E + 31) / 32);
      ds.block[0] = 1024;
      ds.pdl = true;  // waits for the histograms first
      impl.launch(impl.tuned(map_spec(arch, kMapScan, E, false), T), ds, stream, sa);
    }
    if (ws) impl.free_async(ws, stream);
    return;
  }
  if (s.config[C_PIPE] >= 1) {
    // Fused pipeline: zero → route (PDL) → route_map (PDL).
    const int64_t NS = nsuper(T);
    int* super = hist + std::max<int64_t>(NB, 1) * E;
    // Without the map, the CTA counter of route's last-CTA step lives at the (unused) start of the block rows.
    const MoeZeroArgs za{super, static_cast<int>(NS * E), map ? nullptr : hist};
    if (!map && T == 0)
      check(driver().cuMemsetD32Async(reinterpret_cast<CUdeviceptr>(counts), 0, static_cast<size_t>(E),
                                      reinterpret_cast<CUstream>(stream)),
            "cuMemsetD32Async (tokens_per_expert)");
    if (T > 0) {
      LaunchDims dz;
      dz.grid[0] = static_cast<unsigned>(std::min<int64_t>((za.n + 255) / 256, 64));
      dz.block[0] = 256;
      impl.launch(impl.tuned(base_spec(arch, kRouteZero, 0), T), dz, stream, za);
    }
    if (T > 0) {
      const Specialization rs = impl.tuned(route_spec(s, map != nullptr), T);
      MoeRouteArgs a{static_cast<const float*>(logits.data),
                     static_cast<const float*>(expert_bias.data),
                     static_cast<float*>(probs.data),
                     static_cast<unsigned char*>(routing_map.data),
                     hist,
                     super,
                     counts,
                     hist,
                     map ? static_cast<int*>(map->row_id_map.data) : nullptr,
                     static_cast<int>(T),
                     opts.scaling_factor};
      LaunchDims d;
      d.grid[0] = static_cast<unsigned>(NB);
      d.block[0] = static_cast<unsigned>(topk_lanes(E) * kMoeMapBlockTokens);
      d.pdl = true;  // after route_zero (kiln's own); waits for it before its atomics
      impl.launch(rs, d, stream, a);
    }
    if (map) {
      const int64_t target = std::max<int64_t>(1, 2 * static_cast<int64_t>(impl.device().sm_count));
      const int64_t bpc = std::max<int64_t>(1, (NB + target - 1) / target);
      MoeRouteMapArgs ma{};
      ma.routing_map = static_cast<const unsigned char*>(routing_map.data);
      ma.hist = hist;
      ma.super = super;
      ma.counts = counts;
      ma.row_id_map = static_cast<int*>(map->row_id_map.data);
      ma.row_id_indices = static_cast<int*>(map->row_id_indices.data);
      ma.padded_counts = static_cast<int*>(map->padded_counts.data);
      ma.offsets = static_cast<int*>(map->offsets.data);
      ma.T = static_cast<int>(T);
      ma.nblocks = static_cast<int>(NB);
      ma.blocks_per_cta = static_cast<int>(bpc);
      ma.multiple_of = multiple_of;
      ma.num_out = map->row_id_indices.defined() ? static_cast<int>(map->row_id_indices.shape[0]) : 0;
      LaunchDims dm;
      dm.grid[0] = static_cast<unsigned>(std::max<int64_t>(1, (NB + bpc - 1) / bpc));
      dm.block[0] = 256;
      dm.pdl = true;  // waits for route first
      impl.launch(impl.tuned(map_spec(arch, kRouteMap, E, false), T), dm, stream, ma);
    }
    if (ws) impl.free_async(ws, stream);
    return;
  }
  if (T > 0) {
    MoeTopkFwdArgs a{static_cast<const float*>(logits.data), static_cast<const float*>(expert_bias.data),
                     static_cast<float*>(probs.data),        static_cast<unsigned char*>(routing_map.data),
                     hist,                                   static_cast<int>(T),
                     opts.scaling_factor};
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(NB);
    d.block[0] = static_cast<unsigned>(topk_lanes(E) * kMoeMapBlockTokens);
    impl.launch(s, d, stream, a);
  }
  if (map) {
    launch_map(impl, arch, routing_map, *map, tokens_per_expert, hist, T, E, multiple_of, stream);
  } else {
    MoeMapScanArgs sa{hist, counts, static_cast<int>(NB)};
    LaunchDims ds;
    ds.grid[0] = static_cast<unsigned>((E + 31) / 32);
    ds.block[0] = 1024;
    ds.pdl = true;  // waits for the histograms first
    impl.launch(impl.tuned(map_spec(arch, kMapScan, E, false), T), ds, stream, sa);
  }
  if (ws) impl.free_async(ws, stream);
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
  check_workspace(ck, workspace, T, E);

  auto& impl = rt.impl();
  const Arch arch = impl.target_arch();
  const bool i32 = routing_map.dtype == DType::i32;
  const int64_t NB = nblocks(T);
  const CUdeviceptr ws = workspace.defined() ? 0 : impl.alloc_async(static_cast<size_t>(moe_routing_workspace_elems(T, E)) * 4, stream);
  int* hist = workspace.defined() ? static_cast<int*>(workspace.data) : reinterpret_cast<int*>(ws);
  if (T > 0) {
    MoeMapCountArgs a{routing_map.data, hist, static_cast<int>(T)};
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>(NB);
    d.block[0] = 256;
    impl.launch(impl.tuned(map_spec(arch, kMapCount, E, i32), T), d, stream, a);
  }
  launch_map(impl, arch, routing_map, out, out.tokens_per_expert, hist, T, E, multiple_of, stream);
  if (ws) impl.free_async(ws, stream);
}

}  // namespace kiln
