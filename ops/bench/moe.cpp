// Bench cases of the MoE routing and permute families (kiln bench) at the target shape: 8192 tokens,
// hidden 2048, 256 experts, top-8 (Ling-mini-2.0 routing: sigmoid, 8 groups / 4 kept, bias, renormalized, ×2.5),
// padded to 16. Bytes are the minimal traffic: every input read once, every output written once (rows the map
// uses; routed rows counted after the routing, which the case runs once on the device while preparing).
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "kiln/ops/moe.hpp"
#include "runtime/bench.hpp"

namespace kiln::detail {
namespace {

struct Buffers {
  std::vector<void*> ptrs;
  ~Buffers() {
    for (void* p : ptrs) device_free(p);
  }
  void* alloc(size_t bytes) {
    ptrs.push_back(device_alloc(bytes < 16 ? 16 : bytes));
    return ptrs.back();
  }
  void* upload(const void* src, size_t bytes) {
    void* d = alloc(bytes);
    copy_to_device(d, src, bytes);
    return d;
  }
};

uint32_t fresh_seed() {
  static std::random_device rd;
  return rd();
}

std::vector<float> normal(size_t n, float sigma) {
  std::mt19937 rng(fresh_seed());
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
  TensorRef logits, bias, probs, rmap, counts, row_id_map, indices, padded, offsets;
  MoeRowIdMap map() const { return {row_id_map, indices, counts, padded, offsets}; }
  int64_t num_out = 0, used_rows = 0;
};

Routed route(Runtime& rt, Buffers& b, int64_t T, int64_t E, int k, int P, bool run) {
  Routed r;
  const auto z = normal(T * E, 1.0f), bias = normal(E, 0.02f);
  r.logits = TensorRef::contiguous(b.upload(z.data(), z.size() * 4), DType::f32, {T, E});
  r.bias = TensorRef::contiguous(b.upload(bias.data(), E * 4), DType::f32, {E});
  r.probs = TensorRef::contiguous(b.alloc(T * E * 4), DType::f32, {T, E});
  r.rmap = TensorRef::contiguous(b.alloc(T * E), DType::u8, {T, E});
  r.counts = TensorRef::contiguous(b.alloc(E * 4), DType::i32, {E});
  r.row_id_map = TensorRef::contiguous(b.alloc(T * E * 4), DType::i32, {T, E});
  r.num_out = moe_max_out_rows(T, E, k, P);
  r.indices = TensorRef::contiguous(b.alloc(r.num_out * 4), DType::i32, {r.num_out});
  r.padded = TensorRef::contiguous(b.alloc(E * 4), DType::i32, {E});
  r.offsets = TensorRef::contiguous(b.alloc((E + 1) * 4), DType::i32, {E + 1});
  if (run) {
    MoeRoutingOptions o = kLing;
    o.top_k = k;
    const MoeRowIdMap m = r.map();
    moe_topk_routing_fwd(rt, r.logits, r.bias, r.probs, r.rmap, r.counts, o, nullptr, &m, P);
    device_synchronize();
    int32_t used = 0;
    copy_to_host(&used, static_cast<int32_t*>(r.offsets.data) + E, 4);
    r.used_rows = used;
  }
  return r;
}

BenchInstance routing_fwd(Runtime& rt, bool with_map) {
  auto b = std::make_shared<Buffers>();
  const Routed r = route(rt, *b, kT, kE, kK, kP, true);
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = kT * kE * 4 + kE * 4 + kT * kE * 4 + kT * kE + kE * 4;
  if (with_map) inst.bytes += kT * kE * 4 + r.num_out * 4 + 2 * kE * 4 + 4;
  Runtime* p = &rt;
  inst.run = [=](Stream s) {
    const MoeRowIdMap m = r.map();
    moe_topk_routing_fwd(*p, r.logits, r.bias, r.probs, r.rmap, r.counts, kLing, s, with_map ? &m : nullptr, kP);
  };
  inst.outputs = {r.probs, r.rmap, r.counts};
  if (with_map) inst.outputs.insert(inst.outputs.end(), {r.row_id_map, r.indices, r.offsets});
  return inst;
}

BenchInstance routing_bwd(Runtime& rt) {
  auto b = std::make_shared<Buffers>();
  const Routed r = route(rt, *b, kT, kE, kK, kP, true);
  const auto g = normal(kT * kE, 1.0f);
  const TensorRef dprobs = TensorRef::contiguous(b->upload(g.data(), g.size() * 4), DType::f32, {kT, kE});
  const TensorRef dz = TensorRef::contiguous(b->alloc(kT * kE * 4), DType::f32, {kT, kE});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = 3 * kT * kE * 4 + kT * kE;
  Runtime* p = &rt;
  inst.run = [=](Stream s) { moe_topk_routing_bwd(*p, dprobs, r.logits, r.rmap, dz, kLing, s); };
  inst.outputs = {dz};
  return inst;
}

BenchInstance row_id_map(Runtime& rt) {
  auto b = std::make_shared<Buffers>();
  const Routed r = route(rt, *b, kT, kE, kK, kP, true);
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = kT * kE + kT * kE * 4 + r.num_out * 4 + 3 * kE * 4 + 4;
  Runtime* p = &rt;
  inst.run = [=](Stream s) { moe_make_row_id_map(*p, r.rmap, r.map(), kP, s, kK); };
  inst.outputs = {r.row_id_map, r.indices, r.counts, r.offsets};
  return inst;
}

// Permute of bf16 rows, or fp8 rows with M-major 1×128 scales; probs permuted alongside.
BenchInstance permute(Runtime& rt, bool fp8) {
  auto b = std::make_shared<Buffers>();
  const Routed r = route(rt, *b, kT, kE, kK, kP, true);
  const int64_t row_bytes = fp8 ? kH : 2 * kH, ns = kH / 128;
  std::vector<uint8_t> h(kT * row_bytes);
  std::mt19937 rng(fresh_seed());
  for (auto& v : h) v = static_cast<uint8_t>(rng() % 120 + 1);  // finite, non-zero bytes in both formats
  const DType dt = fp8 ? DType::e4m3 : DType::bf16;
  const TensorRef inp = TensorRef::contiguous(b->upload(h.data(), h.size()), dt, {kT, kH});
  const TensorRef out = TensorRef::contiguous(b->alloc(r.num_out * row_bytes), dt, {r.num_out, kH});
  TensorRef scale, scale_out;
  if (fp8) {
    std::vector<float> sc = normal(ns * kT, 1.0f);
    for (float& v : sc) v = std::abs(v);
    scale = TensorRef::contiguous(b->upload(sc.data(), sc.size() * 4), DType::f32, {ns, kT});
    scale_out = TensorRef::contiguous(b->alloc(ns * r.num_out * 4), DType::f32, {ns, r.num_out});
  }
  const TensorRef probs_out = TensorRef::contiguous(b->alloc(r.num_out * 4), DType::f32, {r.num_out});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = kT * row_bytes + r.used_rows * row_bytes + 2 * kT * kE * 4 + r.used_rows * 4 + 2 * kE * 4 +
               (fp8 ? (kT + r.used_rows) * ns * 4 : 0);
  Runtime* p = &rt;
  MoePermuteOptions o;
  o.top_k = kK;
  o.multiple_of = kP;
  inst.run = [=](Stream s) { moe_permute(*p, inp, scale, r.probs, r.map(), out, scale_out, probs_out, o, s); };
  inst.outputs = {out, probs_out};
  if (fp8) inst.outputs.push_back(scale_out);
  return inst;
}

// The prob-weighted combine of the expert outputs (bf16), restoring the probs [T, E] for the backward.
BenchInstance unpermute(Runtime& rt) {
  auto b = std::make_shared<Buffers>();
  const Routed r = route(rt, *b, kT, kE, kK, kP, true);
  const auto x = normal(r.num_out * kH, 1.0f);
  std::vector<uint16_t> xb(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &x[i], 4);
    xb[i] = static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
  }
  const TensorRef xt = TensorRef::contiguous(b->upload(xb.data(), xb.size() * 2), DType::bf16, {r.num_out, kH});
  const auto w = normal(r.num_out, 0.3f);
  const TensorRef wt = TensorRef::contiguous(b->upload(w.data(), w.size() * 4), DType::f32, {r.num_out});
  const TensorRef out = TensorRef::contiguous(b->alloc(kT * kH * 2), DType::bf16, {kT, kH});
  const TensorRef restore = TensorRef::contiguous(b->alloc(kT * kE * 4), DType::f32, {kT, kE});
  BenchInstance inst;
  inst.keepalive = b;
  const int64_t routed = kT * kK;
  inst.bytes = routed * kH * 2 + routed * 4 + kT * kE * 4 + kT * kH * 2 + kT * kE * 4;
  Runtime* p = &rt;
  MoePermuteOptions o;
  o.top_k = kK;
  o.multiple_of = kP;
  inst.run = [=](Stream s) { moe_unpermute(*p, xt, r.row_id_map, wt, out, restore, o, s); };
  inst.outputs = {out, restore};
  return inst;
}

// The fused permute + pad + 1×128 quantize of bf16 rows into both fp8 layouts (power-of-two scales), probs along.
BenchInstance permute_block_quant(Runtime& rt) {
  auto b = std::make_shared<Buffers>();
  const Routed r = route(rt, *b, kT, kE, kK, kP, true);
  const auto xf = normal(kT * kH, 1.0f);
  std::vector<uint16_t> xb(xf.size());
  for (size_t i = 0; i < xf.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &xf[i], 4);
    xb[i] = static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
  }
  const TensorRef x = TensorRef::contiguous(b->upload(xb.data(), xb.size() * 2), DType::bf16, {kT, kH});
  const int64_t n = r.num_out, nb = moe_block_quant_scale_blocks(n, kE), ns = kH / 128;
  MoeBlockQuantPermuteOutputs out{TensorRef::contiguous(b->alloc(n * kH), DType::e4m3, {n, kH}),
                                  TensorRef::contiguous(b->alloc(n * ns * 4), DType::f32, {n * ns}),
                                  TensorRef::contiguous(b->alloc(n * kH), DType::e4m3, {n * kH}),
                                  TensorRef::contiguous(b->alloc(nb * kH * 4), DType::f32, {nb * kH}),
                                  TensorRef::contiguous(b->alloc(n * 4), DType::f32, {n})};
  // Token blocks actually used: Σ ceil(pc_e/128), read back from the padded counts.
  std::vector<int32_t> pc(kE);
  copy_to_host(pc.data(), r.padded.data, kE * 4);
  int64_t blocks = 0;
  for (int32_t c : pc) blocks += (c + 127) / 128;
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = kT * kH * 2 + kT * kE * 4 + r.used_rows * 4 + (kE + 1) * 4 + 2 * r.used_rows * kH +
               r.used_rows * ns * 4 + blocks * kH * 4 + r.used_rows * 4;
  Runtime* p = &rt;
  MoePermuteOptions o;
  o.top_k = kK;
  o.multiple_of = kP;
  o.round_scale = true;
  inst.run = [=](Stream s) { moe_permute_block_quant(*p, x, r.probs, r.map(), out, o, s); };
  inst.outputs = {out.q, out.q_scale, out.qT, out.qT_scale, out.probs_out};
  return inst;
}

const std::string kShape = fmt::format("T={} E={} k={}", kT, kE, kK);

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  cases.push_back({"moe_topk_routing_fwd", kShape + " sigmoid groups=8/4 bias map P=16",
                   [](Runtime& rt) { return routing_fwd(rt, true); }});
  cases.push_back({"moe_topk_routing_fwd", kShape + " sigmoid groups=8/4 bias",
                   [](Runtime& rt) { return routing_fwd(rt, false); }});
  cases.push_back({"moe_topk_routing_bwd", kShape + " sigmoid renorm", [](Runtime& rt) { return routing_bwd(rt); }});
  cases.push_back({"moe_make_row_id_map", kShape + " P=16", [](Runtime& rt) { return row_id_map(rt); }});
  cases.push_back({"moe_permute", kShape + " H=2048 P=16 bf16 probs", [](Runtime& rt) { return permute(rt, false); }});
  cases.push_back({"moe_permute", kShape + " H=2048 P=16 fp8 m_major_scales probs",
                   [](Runtime& rt) { return permute(rt, true); }});
  cases.push_back({"moe_permute_block_quant", kShape + " H=2048 P=16 round_scale=1 probs",
                   [](Runtime& rt) { return permute_block_quant(rt); }});
  cases.push_back({"moe_unpermute", kShape + " H=2048 P=16 bf16 weighted restore",
                   [](Runtime& rt) { return unpermute(rt); }});
});

}  // namespace
}  // namespace kiln::detail
