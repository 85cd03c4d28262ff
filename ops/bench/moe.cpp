// Bench cases of the MoE routing and permute families (kiln bench) at the target shape: 8192 tokens,
// hidden 2048, 256 experts, top-8 (Ling-mini-2.0 routing: sigmoid, 8 groups / 4 kept, bias, renormalized, ×2.5),
// padded to 16. Bytes are the minimal traffic: every input read once, every output written once (rows the map
// uses; routed rows counted after the routing, which the case runs once on the device while preparing).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "kiln/ops/moe.hpp"
#include "ops/bench/moe_instances.hpp"
#include "runtime/bench.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"

namespace kiln::detail {
namespace {

std::vector<float> normal(size_t n, float sigma) {
  std::mt19937 rng(bench_seed());
  std::normal_distribution<float> d(0.f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) {
    x = d(rng);
    if (x == 0.f) x = 1e-3f;
  }
  return v;
}

const MoeRoutingOptions kLing{8, MoeScore::sigmoid, 8, 4, true, 2.5f};
constexpr int64_t kT = 8192, kE = 256, kH = 2048, kK = 8, kP = 16;

// Routing state on the device: logits, bias, probs, routing map, and the padded map.
struct Routed {
  TensorRef logits, bias, probs, rmap, counts, row_id_map, indices, padded, offsets, workspace;
  MoeRowIdMap map() const { return {row_id_map, indices, counts, padded, offsets}; }
  int64_t num_out = 0, used_rows = 0;
};

// Random logits routed once on the device with `o` (with the map, padded to P); counts read back.
Routed route(Runtime& rt, DeviceBuffers& b, int64_t T, int64_t E, const MoeRoutingOptions& o, int P) {
  Routed r;
  const auto z = normal(T * E, 1.0f), bias = normal(E, 0.02f);
  r.logits = TensorRef::contiguous(b.upload(z.data(), z.size() * 4), DType::f32, {T, E});
  r.bias = TensorRef::contiguous(b.upload(bias.data(), E * 4), DType::f32, {E});
  r.probs = TensorRef::contiguous(b.alloc(T * E * 4), DType::f32, {T, E});
  r.rmap = TensorRef::contiguous(b.alloc(T * E), DType::u8, {T, E});
  r.counts = TensorRef::contiguous(b.alloc(E * 4), DType::i32, {E});
  r.row_id_map = TensorRef::contiguous(b.alloc(T * E * 4), DType::i32, {T, E});
  r.num_out = moe_max_out_rows(T, E, o.top_k, P);
  r.indices = TensorRef::contiguous(b.alloc(r.num_out * 4), DType::i32, {r.num_out});
  r.padded = TensorRef::contiguous(b.alloc(E * 4), DType::i32, {E});
  r.offsets = TensorRef::contiguous(b.alloc((E + 1) * 4), DType::i32, {E + 1});
  const int64_t ws = moe_routing_workspace_elems(T, E, o.top_k);
  r.workspace = TensorRef::contiguous(b.alloc(ws * 4), DType::i32, {ws});
  const MoeRowIdMap m = r.map();
  moe_topk_routing_fwd(rt, r.logits, r.bias, r.probs, r.rmap, r.counts, o, nullptr, &m, P);
  device_synchronize();
  int32_t used = 0;
  copy_to_host(&used, static_cast<int32_t*>(r.offsets.data) + E, 4);
  r.used_rows = used;
  return r;
}

// Plain softmax top-k (what the permute instances route with when only E is given).
MoeRoutingOptions plain(int64_t E) {
  MoeRoutingOptions o;
  o.top_k = static_cast<int>(std::min<int64_t>(8, E));
  return o;
}

std::vector<uint16_t> random_bf16(size_t n) {
  const auto f = normal(n, 1.0f);
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = bf16_bits(f[i]);
  return h;
}

}  // namespace

BenchInstance moe_routing_fwd_instance(Runtime& rt, int64_t T, int64_t E, const MoeRoutingOptions& o, bool bias,
                                       bool with_map, int P) {
  auto b = std::make_shared<DeviceBuffers>();
  Routed r = route(rt, *b, T, E, o, P);
  if (!bias) r.bias = {};
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = T * E * 4 + (bias ? E * 4 : 0) + T * E * 4 + T * E + E * 4;
  if (with_map) inst.bytes += T * E * 4 + r.num_out * 4 + 2 * E * 4 + 4;
  Runtime* p = &rt;
  inst.run = [=](Stream s) {
    const MoeRowIdMap m = r.map();
    moe_topk_routing_fwd(*p, r.logits, r.bias, r.probs, r.rmap, r.counts, o, s, with_map ? &m : nullptr, P,
                         r.workspace);
  };
  inst.outputs = {r.probs, r.rmap, r.counts};
  if (with_map) inst.outputs.insert(inst.outputs.end(), {r.row_id_map, r.indices, r.offsets});
  return inst;
}

BenchInstance moe_routing_bwd_instance(Runtime& rt, int64_t T, int64_t E, const MoeRoutingOptions& o) {
  auto b = std::make_shared<DeviceBuffers>();
  const Routed r = route(rt, *b, T, E, o, 1);
  const auto g = normal(T * E, 1.0f);
  const TensorRef dprobs = TensorRef::contiguous(b->upload(g.data(), g.size() * 4), DType::f32, {T, E});
  const TensorRef dz = TensorRef::contiguous(b->alloc(T * E * 4), DType::f32, {T, E});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = 3 * T * E * 4 + T * E;
  Runtime* p = &rt;
  inst.run = [=](Stream s) { moe_topk_routing_bwd(*p, dprobs, r.logits, r.rmap, dz, o, s); };
  inst.outputs = {dz};
  return inst;
}

BenchInstance moe_row_id_map_instance(Runtime& rt, int64_t T, int64_t E, int k, int P) {
  auto b = std::make_shared<DeviceBuffers>();
  MoeRoutingOptions o = plain(E);
  o.top_k = k;
  const Routed r = route(rt, *b, T, E, o, P);
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = T * E + T * E * 4 + r.num_out * 4 + 3 * E * 4 + 4;
  Runtime* p = &rt;
  inst.run = [=](Stream s) { moe_make_row_id_map(*p, r.rmap, r.map(), P, s, k, r.workspace); };
  inst.outputs = {r.row_id_map, r.indices, r.counts, r.offsets};
  return inst;
}

BenchInstance moe_permute_instance(Runtime& rt, int64_t T, int64_t E, int k, int P, int64_t Hd, bool fp8,
                                   bool m_major, bool probs) {
  auto b = std::make_shared<DeviceBuffers>();
  MoeRoutingOptions o = plain(E);
  o.top_k = k;
  const Routed r = route(rt, *b, T, E, o, P);
  const int64_t row_bytes = fp8 ? Hd : 2 * Hd, ns = Hd / 128;
  std::vector<uint8_t> h(T * row_bytes);
  std::mt19937 rng(bench_seed());
  for (auto& v : h) v = static_cast<uint8_t>(rng() % 120 + 1);  // finite, non-zero bytes in both formats
  const DType dt = fp8 ? DType::e4m3 : DType::bf16;
  const TensorRef inp = TensorRef::contiguous(b->upload(h.data(), h.size()), dt, {T, Hd});
  const TensorRef out = TensorRef::contiguous(b->alloc(r.num_out * row_bytes), dt, {r.num_out, Hd});
  TensorRef scale, scale_out, probs_out;
  if (fp8) {
    std::vector<float> sc = normal(ns * T, 1.0f);
    for (float& v : sc) v = std::abs(v);
    scale = m_major ? TensorRef::contiguous(b->upload(sc.data(), sc.size() * 4), DType::f32, {ns, T})
                    : TensorRef::contiguous(b->upload(sc.data(), sc.size() * 4), DType::f32, {T, ns});
    scale_out = TensorRef::contiguous(b->alloc(ns * r.num_out * 4), DType::f32, {ns, r.num_out});
  }
  if (probs) probs_out = TensorRef::contiguous(b->alloc(r.num_out * 4), DType::f32, {r.num_out});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = T * row_bytes + r.used_rows * row_bytes + T * E * 4 + 2 * E * 4 +
               (probs ? T * E * 4 + r.used_rows * 4 : 0) + (fp8 ? (T + r.used_rows) * ns * 4 : 0);
  Runtime* p = &rt;
  MoePermuteOptions po;
  po.top_k = k;
  po.multiple_of = P;
  po.scale_layout = m_major ? MoeScaleLayout::m_major : MoeScaleLayout::token_major;
  const TensorRef pr = probs ? r.probs : TensorRef{};
  inst.run = [=](Stream s) { moe_permute(*p, inp, scale, pr, r.map(), out, scale_out, probs_out, po, s); };
  inst.outputs = {out};
  if (probs) inst.outputs.push_back(probs_out);
  if (fp8) inst.outputs.push_back(scale_out);
  return inst;
}

BenchInstance moe_unpermute_instance(Runtime& rt, int64_t T, int64_t E, int k, int P, int64_t H, DType dt,
                                     bool weights, bool restore) {
  auto b = std::make_shared<DeviceBuffers>();
  MoeRoutingOptions o = plain(E);
  o.top_k = k;
  const Routed r = route(rt, *b, T, E, o, P);
  TensorRef xt;
  if (dt == DType::bf16) {
    const auto xb = random_bf16(r.num_out * H);
    xt = TensorRef::contiguous(b->upload(xb.data(), xb.size() * 2), dt, {r.num_out, H});
  } else {
    const auto xf = normal(r.num_out * H, 1.0f);
    xt = TensorRef::contiguous(b->upload(xf.data(), xf.size() * 4), dt, {r.num_out, H});
  }
  const auto w = normal(r.num_out, 0.3f);
  const TensorRef wt = weights ? TensorRef::contiguous(b->upload(w.data(), w.size() * 4), DType::f32, {r.num_out})
                               : TensorRef{};
  const int64_t es = static_cast<int64_t>(dtype_size(dt));
  const TensorRef out = TensorRef::contiguous(b->alloc(T * H * es), dt, {T, H});
  const TensorRef rs = restore ? TensorRef::contiguous(b->alloc(T * E * 4), DType::f32, {T, E}) : TensorRef{};
  BenchInstance inst;
  inst.keepalive = b;
  const int64_t routed = T * k;
  inst.bytes = routed * H * es + T * E * 4 + T * H * es + (weights ? routed * 4 : 0) + (restore ? T * E * 4 : 0);
  Runtime* p = &rt;
  MoePermuteOptions po;
  po.top_k = k;
  po.multiple_of = P;
  inst.run = [=](Stream s) { moe_unpermute(*p, xt, r.row_id_map, wt, out, rs, po, s); };
  inst.outputs = {out};
  if (restore) inst.outputs.push_back(rs);
  return inst;
}

BenchInstance moe_permute_block_quant_instance(Runtime& rt, int64_t T, int64_t E, int k, int P, int64_t Hd,
                                               bool round, bool probs) {
  auto b = std::make_shared<DeviceBuffers>();
  MoeRoutingOptions o = plain(E);
  o.top_k = k;
  const Routed r = route(rt, *b, T, E, o, P);
  const auto xb = random_bf16(T * Hd);
  const TensorRef x = TensorRef::contiguous(b->upload(xb.data(), xb.size() * 2), DType::bf16, {T, Hd});
  const int64_t n = r.num_out, nb = moe_block_quant_scale_blocks(n, E), ns = Hd / 128;
  MoeBlockQuantPermuteOutputs out{TensorRef::contiguous(b->alloc(n * Hd), DType::e4m3, {n, Hd}),
                                  TensorRef::contiguous(b->alloc(n * ns * 4), DType::f32, {n * ns}),
                                  TensorRef::contiguous(b->alloc(n * Hd), DType::e4m3, {n * Hd}),
                                  TensorRef::contiguous(b->alloc(nb * Hd * 4), DType::f32, {nb * Hd}),
                                  probs ? TensorRef::contiguous(b->alloc(n * 4), DType::f32, {n}) : TensorRef{}};
  // Token blocks actually used: Σ ceil(pc_e/128), from the padded counts.
  std::vector<int32_t> pc(E);
  copy_to_host(pc.data(), r.padded.data, E * 4);
  int64_t blocks = 0;
  for (int32_t c : pc) blocks += (c + 127) / 128;
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = T * Hd * 2 + r.used_rows * 4 + (E + 1) * 4 + 2 * r.used_rows * Hd + r.used_rows * ns * 4 +
               blocks * Hd * 4 + (probs ? T * E * 4 + r.used_rows * 4 : 0);
  Runtime* p = &rt;
  MoePermuteOptions po;
  po.top_k = k;
  po.multiple_of = P;
  po.round_scale = round;
  const TensorRef pr = probs ? r.probs : TensorRef{};
  inst.run = [=](Stream s) { moe_permute_block_quant(*p, x, pr, r.map(), out, po, s); };
  inst.outputs = {out.q, out.q_scale, out.qT, out.qT_scale};
  if (probs) inst.outputs.push_back(out.probs_out);
  return inst;
}

namespace {

const std::string kShape = fmt::format("T={} E={} k={}", kT, kE, kK);

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  const int k = static_cast<int>(kK), P = static_cast<int>(kP);
  cases.push_back({"moe_topk_routing_fwd", kShape + " sigmoid groups=8/4 bias map P=16",
                   [=](Runtime& rt) { return moe_routing_fwd_instance(rt, kT, kE, kLing, true, true, P); }});
  cases.push_back({"moe_topk_routing_fwd", kShape + " sigmoid groups=8/4 bias",
                   [=](Runtime& rt) { return moe_routing_fwd_instance(rt, kT, kE, kLing, true, false, P); }});
  // Plain softmax top-8 (no groups, no bias, no renormalization) with the map: the issue's ≤ 15 µs shape with the
  // simplest routing the op offers (the row above and its map row use the presets' Ling routing).
  cases.push_back({"moe_topk_routing_fwd", kShape + " softmax map P=16",
                   [=](Runtime& rt) { return moe_routing_fwd_instance(rt, kT, kE, MoeRoutingOptions{}, false, true, P); }});
  cases.push_back({"moe_topk_routing_bwd", kShape + " sigmoid renorm",
                   [=](Runtime& rt) { return moe_routing_bwd_instance(rt, kT, kE, kLing); }});
  cases.push_back({"moe_make_row_id_map", kShape + " P=16",
                   [=](Runtime& rt) { return moe_row_id_map_instance(rt, kT, kE, k, P); }});
  // Session 18 (op "moe_make_row_id_map_cfg", measurement): the map with its config forced — one launch with the −1
  // rows after (fill 4) or before (3) the CTA's arrival, and the three kernels (fill 0), beside the default row above.
  // load: 256 the stream's superblock rows (no route_zero), 0 behind route_zero; V: ablations of the one launch
  // (moe_routing.cuh moe_map_fused_kernel: 1 no −1 fill, 2 no wait, 4 no bases / puts, 16 no puts).
  struct MapCfg {
    int fill, load, V;
  };
  for (auto [fill, load, V] : {MapCfg{4, 0, 0}, {0, 0, 0}, {3, 256, 0}, {4, 256, 1}, {4, 256, 4}, {4, 256, 16}})
    cases.push_back({"moe_make_row_id_map_cfg",
                     kShape + fmt::format(" P=16 fill={} load={}{}", fill, load,
                                          V ? fmt::format(" V={}", V) : std::string()),
                     [=](Runtime& rt) {
                       Specialization cand;
                       cand.family = find_family("moe_routing");
                       cand.arch = rt.impl().target_arch();
                       cand.kernel = 7;  // map_fused (ops/moe_routing.cpp)
                       cand.params[0] = kE;
                       cand.config[2] = fill;
                       cand.config[3] = load;
                       cand.config[5] = V;
                       return with_forced_config(moe_row_id_map_instance(rt, kT, kE, k, P), cand, "map");
                     }});
  cases.push_back({"moe_permute", kShape + " H=2048 P=16 bf16 probs",
                   [=](Runtime& rt) { return moe_permute_instance(rt, kT, kE, k, P, kH, false, false, true); }});
  cases.push_back({"moe_permute", kShape + " H=2048 P=16 fp8 m_major_scales probs",
                   [=](Runtime& rt) { return moe_permute_instance(rt, kT, kE, k, P, kH, true, true, true); }});
  cases.push_back({"moe_permute_block_quant", kShape + " H=2048 P=16 round_scale=1 probs",
                   [=](Runtime& rt) { return moe_permute_block_quant_instance(rt, kT, kE, k, P, kH, true, true); }});
  cases.push_back({"moe_permute_block_quant", kShape + " H=2048 P=16 round_scale=0 probs",
                   [=](Runtime& rt) { return moe_permute_block_quant_instance(rt, kT, kE, k, P, kH, false, true); }});
  // Session 18 (op "moe_permute_block_quant_cfg", measurement): 1 or 4 channel blocks a CTA (config `tokens`) beside
  // the default row above (2).
  for (int cpb : {1, 4})
    cases.push_back({"moe_permute_block_quant_cfg", kShape + fmt::format(" H=2048 P=16 round_scale=1 probs cpb={}", cpb),
                     [=](Runtime& rt) {
                       Specialization cand;  // ops/moe_permute.cpp block_quant_spec
                       cand.family = find_family("moe_permute");
                       cand.arch = rt.impl().target_arch();
                       cand.kernel = 2;
                       cand.params[0] = kH;
                       cand.params[1] = kE;
                       cand.params[4] = 1;
                       cand.params[5] = static_cast<int64_t>(DType::bf16);
                       cand.params[8] = 1;
                       cand.config[0] = 256;
                       cand.config[1] = cpb;
                       return with_forced_config(
                           moe_permute_block_quant_instance(rt, kT, kE, k, P, kH, true, true), cand, "permute");
                     }});
  cases.push_back({"moe_unpermute", kShape + " H=2048 P=16 bf16 weighted restore",
                   [=](Runtime& rt) { return moe_unpermute_instance(rt, kT, kE, k, P, kH, DType::bf16, true, true); }});
});

}  // namespace
}  // namespace kiln::detail
