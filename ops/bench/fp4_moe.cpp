// Bench cases of the FP4 MoE layer (kiln bench, ops "fp4_moe" and "fp4_moe_steps"; spec fp4-moe.md §11.4–§12.4).
//
// fp4_moe: the whole layer (route → metadata → gather → GEMM1 → GEMM2 → finalize; needs the grouped GEMM) at the
// DeepSeek-V3 EP slice (H 7168, I 2048, 256 experts of which 32 local, K 8, NVFP4 weights and hidden states,
// DeepSeekV3 routing 8 groups / 4 kept) and gpt-oss-120b-like (H = I = 2880, 128 experts, K 4, MXFP4, Renormalize, bf16
// hidden, Swiglu α 1.702 β 1 L 7). Bytes are the weight bytes the routing touches in expectation (E_l·(1 − (1 −
// K/E)^T) experts × packed bytes an expert), so GB/s is weight-byte bandwidth; the shape names the routed FLOPs
// (2·3·H·I a local routed row, GFLOP=…): TFLOP/s = GFLOP / µs · 1e-3.
// fp4_moe_steps: the metadata, gather and finalize kernels alone at T = 8192 (no GEMM needed), minimal bytes.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "kiln/ops/fp4_moe.hpp"
#include "ops/fp4_moe_internal.hpp"
#include "runtime/bench.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"

namespace kiln::detail {
namespace {

std::vector<uint8_t> random_bytes(size_t n, uint8_t lo, uint8_t span) {
  uint64_t s = bench_seed() | 1ull;
  std::vector<uint8_t> v(n);
  for (auto& b : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    b = span == 0 ? static_cast<uint8_t>(s >> 40) : static_cast<uint8_t>(lo + (s >> 40) % span);
  }
  return v;
}

struct LayerShape {
  int64_t H, I, E, El, K;
  Fp4WeightFormat wf;
  Fp4MoeHiddenFormat hf;
  Fp4MoeRouteOptions route;
  DType logits;
  bool swiglu_params;
};

LayerShape deepseek() {
  LayerShape s{7168, 2048, 256, 32, 8, Fp4WeightFormat::nvfp4, Fp4MoeHiddenFormat::nvfp4, {}, DType::f32, false};
  s.route.method = Fp4MoeRoutingMethod::DeepSeekV3;
  s.route.top_k = 8;
  s.route.n_group = 8;
  s.route.topk_group = 4;
  s.route.routed_scaling_factor = 2.5f;
  return s;
}
LayerShape gpt_oss() {
  LayerShape s{2880, 2880, 128, 128, 4, Fp4WeightFormat::mxfp4, Fp4MoeHiddenFormat::bf16, {}, DType::bf16, true};
  s.route.method = Fp4MoeRoutingMethod::Renormalize;
  s.route.top_k = 4;
  return s;
}

// Canonical random codes and scales (NVFP4: E4M3 bytes 0x30 … 0x3F ≈ 0.5 … 1.9; MXFP4: UE8M0 120 … 127), prepacked.
Fp4MoeWeights packed_weights(Runtime& rt, DeviceBuffers& b, int64_t El, int64_t R, int64_t C, Fp4WeightFormat f,
                             bool gated) {
  const int64_t B = f == Fp4WeightFormat::mxfp4 ? 32 : 16;
  const auto q = random_bytes(El * R * C / 2, 0, 0);
  const auto sf = f == Fp4WeightFormat::mxfp4 ? random_bytes(El * R * C / B, 120, 8)
                                              : random_bytes(El * R * C / B, 0x30, 16);
  const TensorRef qt = TensorRef::contiguous(b.upload(q.data(), q.size()), DType::u8, {El, R, C / 2});
  const TensorRef st = TensorRef::contiguous(b.upload(sf.data(), sf.size()), DType::u8, {El, R, C / B});
  const int64_t n = fp4_moe_packed_bytes(El, R, C, f);
  const TensorRef pt = TensorRef::contiguous(b.alloc(n), DType::u8, {n});
  const Fp4MoeWeights w = fp4_moe_prepack(rt, qt, st, f, gated, pt, nullptr);
  device_synchronize();
  return w;
}

TensorRef f32_fill(DeviceBuffers& b, int64_t n, float v) {
  const std::vector<float> h(n, v);
  return TensorRef::contiguous(b.upload(h.data(), n * 4), DType::f32, {n});
}

BenchInstance layer_instance(Runtime& rt, const LayerShape& s, int64_t T) {
  auto b = std::make_shared<DeviceBuffers>();
  struct Held {
    TensorRef z, bias, x, xs, out, alpha, beta, limit, sc, sg, s2;
    Fp4MoeInputs in;
    Fp4MoeOutputs outs;
    Fp4MoeOptions opt;
  };
  auto h = std::make_shared<Held>();
  const int64_t H = s.H, I = s.I, E = s.E, El = s.El, K = s.K;
  h->z = TensorRef::contiguous(b->random(s.logits, T * E, 1.0f, bench_seed()), s.logits, {T, E});
  h->in.routing_logits = h->z;
  if (s.route.method == Fp4MoeRoutingMethod::DeepSeekV3) {
    h->bias = TensorRef::contiguous(b->random(s.logits, E, 0.05f, bench_seed()), s.logits, {E});
    h->in.routing_bias = &h->bias;
  }
  if (s.hf == Fp4MoeHiddenFormat::nvfp4) {
    const auto q = random_bytes(T * H / 2, 0, 0), sf = random_bytes(T * H / 16, 0x30, 16);
    h->x = TensorRef::contiguous(b->upload(q.data(), q.size()), DType::u8, {T, H / 2});
    h->xs = TensorRef::contiguous(b->upload(sf.data(), sf.size()), DType::u8, {T, H / 16});
    h->in.hidden_states_scale = &h->xs;
  } else {
    h->x = TensorRef::contiguous(b->random(DType::bf16, T * H, 1.0f, bench_seed()), DType::bf16, {T, H});
  }
  h->in.hidden_states = h->x;
  h->in.w1 = packed_weights(rt, *b, El, 2 * I, H, s.wf, true);
  h->in.w2 = packed_weights(rt, *b, El, H, I, s.wf, false);
  if (s.swiglu_params) {
    h->alpha = f32_fill(*b, El, 1.702f);
    h->beta = f32_fill(*b, El, 1.0f);
    h->limit = f32_fill(*b, El, 7.0f);
    h->in.gemm1_alpha = &h->alpha;
    h->in.gemm1_beta = &h->beta;
    h->in.gemm1_clamp_limit = &h->limit;
  }
  if (s.wf == Fp4WeightFormat::nvfp4) {  // §7 scalars (values near what a checkpoint gives; finite results)
    h->sc = f32_fill(*b, El, 1.0f / 64);
    h->sg = f32_fill(*b, El, 1.0f / 64);
    h->s2 = f32_fill(*b, El, 1.0f / 64);
    h->in.output1_scale_scalar = &h->sc;
    h->in.output1_scale_gate_scalar = &h->sg;
    h->in.output2_scale_scalar = &h->s2;
  }
  h->out = TensorRef::contiguous(b->alloc(T * H * 2), DType::bf16, {T, H});
  h->outs.output = &h->out;
  h->opt.routing = s.route;
  h->opt.activation = Fp4MoeActivation::Swiglu;
  h->opt.hidden_format = s.hf;
  h->opt.num_experts = E;
  h->opt.local_expert_offset = 0;
  BenchInstance inst;
  inst.keepalive = std::make_shared<std::pair<std::shared_ptr<DeviceBuffers>, std::shared_ptr<Held>>>(b, h);
  const double active = El * (1.0 - std::pow(1.0 - static_cast<double>(K) / E, static_cast<double>(T)));
  const int64_t per_expert = fp4_moe_packed_bytes(1, 2 * I, H, s.wf) + fp4_moe_packed_bytes(1, H, I, s.wf);
  inst.bytes = static_cast<uint64_t>(active * per_expert);
  Runtime* r = &rt;
  inst.run = [r, h](Stream st) { fp4_block_scale_moe(*r, h->in, h->outs, h->opt, st); };
  inst.outputs = {h->out};
  inst.baseline_name = "none (FlashInfer's op has no Hopper build; spec §11.4 has bf16/fp8 grouped-GEMM anchors)";
  return inst;
}

double layer_gflop(const LayerShape& s, int64_t T) {
  return 2.0 * 3.0 * s.H * s.I * (static_cast<double>(T) * s.K * s.El / s.E) * 1e-9;
}

// ---- the steps alone at T = 8192 ---------------------------------------------------------------------------------

struct Steps {
  int64_t T, K, E, El, H, rows_cap;
  int tile;
  TensorRef ids, counts, offsets, expanded, perm_token, perm_k, chunks, act, weights, y, out, x, xs;
};

// DeepSeek-V3-like ids (K distinct experts of 256 a token, uniform), the metadata built once on the device.
std::shared_ptr<Steps> steps(Runtime& rt, DeviceBuffers& b, int64_t H, Fp4MoeHiddenFormat hf) {
  auto s = std::make_shared<Steps>();
  s->T = 8192;
  s->K = 8;
  s->E = 256;
  s->El = 32;
  s->H = H;
  s->tile = fp4_moe_layer_token_tile(rt, s->T, s->K, s->El);
  s->rows_cap = s->T * s->K + s->El * (s->tile - 1);
  std::vector<int32_t> ids(s->T * s->K);
  std::mt19937 rng(bench_seed());
  for (int64_t t = 0; t < s->T; ++t)
    for (int64_t k = 0; k < s->K; ++k) {
      int32_t e;
      do e = static_cast<int32_t>(rng() % s->E);
      while (std::find(ids.begin() + t * s->K, ids.begin() + t * s->K + k, e) != ids.begin() + t * s->K + k);
      ids[t * s->K + k] = e;
    }
  s->ids = TensorRef::contiguous(b.upload(ids.data(), ids.size() * 4), DType::i32, {s->T, s->K});
  s->counts = TensorRef::contiguous(b.alloc(s->El * 4), DType::i32, {s->El});
  s->offsets = TensorRef::contiguous(b.alloc((s->El + 1) * 4), DType::i32, {s->El + 1});
  s->expanded = TensorRef::contiguous(b.alloc(s->T * s->K * 4), DType::i32, {s->T * s->K});
  s->perm_token = TensorRef::contiguous(b.alloc(s->rows_cap * 4), DType::i32, {s->rows_cap});
  s->perm_k = TensorRef::contiguous(b.alloc(s->rows_cap * 4), DType::i32, {s->rows_cap});
  const int64_t cw = fp4_moe_permute_chunk_words(s->T, s->El);
  s->chunks = TensorRef::contiguous(b.alloc(cw * 4), DType::i32, {cw});
  s->act = TensorRef::contiguous(b.alloc(s->rows_cap * H * 2), DType::bf16, {s->rows_cap, H});
  s->y = TensorRef::contiguous(b.random(DType::bf16, s->rows_cap * H, 1.0f, bench_seed()), DType::bf16,
                               {s->rows_cap, H});
  s->weights = TensorRef::contiguous(b.random(DType::bf16, s->T * s->K, 0.2f, bench_seed(), 0.3f), DType::bf16,
                                     {s->T, s->K});
  s->out = TensorRef::contiguous(b.alloc(s->T * H * 2), DType::bf16, {s->T, H});
  if (hf == Fp4MoeHiddenFormat::nvfp4) {
    const auto q = random_bytes(s->T * H / 2, 0, 0), sf = random_bytes(s->T * H / 16, 0x30, 16);
    s->x = TensorRef::contiguous(b.upload(q.data(), q.size()), DType::u8, {s->T, H / 2});
    s->xs = TensorRef::contiguous(b.upload(sf.data(), sf.size()), DType::u8, {s->T, H / 16});
  } else {
    s->x = TensorRef::contiguous(b.random(DType::bf16, s->T * H, 1.0f, bench_seed()), DType::bf16, {s->T, H});
  }
  return s;
}

Fp4MoePermuteCall permute_call(const Steps& s) {
  Fp4MoePermuteCall c;
  c.topk_ids = static_cast<const int32_t*>(s.ids.data);
  c.tokens = s.T;
  c.top_k = static_cast<int>(s.K);
  c.experts = s.El;
  c.expert_offset = 0;
  c.token_tile = s.tile;
  c.expert_counts = static_cast<int32_t*>(s.counts.data);
  c.expert_offsets = static_cast<int32_t*>(s.offsets.data);
  c.expanded_idx_to_permuted_idx = static_cast<int32_t*>(s.expanded.data);
  c.permuted_idx_to_token = static_cast<int32_t*>(s.perm_token.data);
  c.permuted_idx_to_k = static_cast<int32_t*>(s.perm_k.data);
  c.chunk_counts = static_cast<int32_t*>(s.chunks.data);
  return c;
}

Fp4MoeGatherCall gather_call(const Steps& s, Fp4MoeHiddenFormat hf) {
  Fp4MoeGatherCall c;
  c.hidden = s.x.data;
  c.hidden_scale = hf == Fp4MoeHiddenFormat::nvfp4 ? s.xs.data : nullptr;
  c.format = hf;
  c.hidden_size = s.H;
  c.permuted_idx_to_token = static_cast<const int32_t*>(s.perm_token.data);
  c.expert_offsets = static_cast<const int32_t*>(s.offsets.data);
  c.experts = s.El;
  c.rows_cap = s.rows_cap;
  c.act = s.act.data;
  return c;
}

// Local routed rows in expectation: T·K·E_l / E.
double local_rows(const Steps& s) { return static_cast<double>(s.T) * s.K * s.El / s.E; }

BenchInstance meta_instance(Runtime& rt) {
  auto b = std::make_shared<DeviceBuffers>();
  auto s = steps(rt, *b, 128, Fp4MoeHiddenFormat::bf16);
  BenchInstance inst;
  inst.keepalive = std::make_shared<std::pair<std::shared_ptr<DeviceBuffers>, std::shared_ptr<Steps>>>(b, s);
  inst.bytes = static_cast<uint64_t>(s->T * s->K * 8 + local_rows(*s) * 8);  // ids in, map out, rows' token + k
  Runtime* r = &rt;
  const Fp4MoePermuteCall c = permute_call(*s);
  inst.run = [r, c](Stream st) { fp4_moe_permute(*r, c, st); };
  inst.outputs = {s->expanded};
  inst.baseline_name = "none";
  return inst;
}

BenchInstance gather_instance(Runtime& rt, int64_t H, Fp4MoeHiddenFormat hf) {
  auto b = std::make_shared<DeviceBuffers>();
  auto s = steps(rt, *b, H, hf);
  fp4_moe_permute(rt, permute_call(*s), nullptr);
  device_synchronize();
  BenchInstance inst;
  inst.keepalive = std::make_shared<std::pair<std::shared_ptr<DeviceBuffers>, std::shared_ptr<Steps>>>(b, s);
  const double in_row = hf == Fp4MoeHiddenFormat::nvfp4 ? H / 2.0 + H / 16.0 : H * 2.0;
  inst.bytes = static_cast<uint64_t>(local_rows(*s) * (in_row + H * 2.0));
  Runtime* r = &rt;
  const Fp4MoeGatherCall c = gather_call(*s, hf);
  inst.run = [r, c](Stream st) { fp4_moe_gather(*r, c, st); };
  inst.outputs = {s->act};
  inst.baseline_name = "none";
  return inst;
}

BenchInstance finalize_instance(Runtime& rt, int64_t H) {
  auto b = std::make_shared<DeviceBuffers>();
  auto s = steps(rt, *b, H, Fp4MoeHiddenFormat::bf16);
  fp4_moe_permute(rt, permute_call(*s), nullptr);
  device_synchronize();
  BenchInstance inst;
  inst.keepalive = std::make_shared<std::pair<std::shared_ptr<DeviceBuffers>, std::shared_ptr<Steps>>>(b, s);
  inst.bytes = static_cast<uint64_t>(local_rows(*s) * H * 2.0 + s->T * H * 2.0 + s->T * s->K * 6.0);
  Runtime* r = &rt;
  Fp4MoeFinalizeCall c;
  c.y = s->y.data;
  c.y_ld = H;
  c.expanded_idx_to_permuted_idx = static_cast<const int32_t*>(s->expanded.data);
  c.weights = s->weights.data;
  c.tokens = s->T;
  c.top_k = static_cast<int>(s->K);
  c.hidden_out = H;
  c.out = s->out.data;
  c.out_ld = H;
  inst.run = [r, c](Stream st) { fp4_moe_finalize(*r, c, st); };
  inst.outputs = {s->out};
  inst.baseline_name = "none";
  return inst;
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  for (int64_t T : {int64_t{16}, int64_t{1024}, int64_t{8192}}) {
    const LayerShape s = deepseek();
    cases.push_back({"fp4_moe",
                     fmt::format("DeepSeek-V3 EP slice T={} H=7168 I=2048 E=256 E_l=32 K=8 nvfp4 GFLOP={:.1f}", T,
                                 layer_gflop(s, T)),
                     [=](Runtime& rt) { return layer_instance(rt, s, T); }});
  }
  for (int64_t T : {int64_t{1}, int64_t{1024}, int64_t{8192}}) {
    const LayerShape s = gpt_oss();
    cases.push_back({"fp4_moe",
                     fmt::format("gpt-oss-120b T={} H=I=2880 E=128 K=4 mxfp4 bf16-x swiglu GFLOP={:.1f}", T,
                                 layer_gflop(s, T)),
                     [=](Runtime& rt) { return layer_instance(rt, s, T); }});
  }
  cases.push_back({"fp4_moe_steps", "metadata T=8192 K=8 E=256 E_l=32",
                   [](Runtime& rt) { return meta_instance(rt); }});
  cases.push_back({"fp4_moe_steps", "gather nvfp4 T=8192 K=8 E_l=32/256 H=7168",
                   [](Runtime& rt) { return gather_instance(rt, 7168, Fp4MoeHiddenFormat::nvfp4); }});
  cases.push_back({"fp4_moe_steps", "gather bf16 T=8192 K=8 E_l=32/256 H=7168",
                   [](Runtime& rt) { return gather_instance(rt, 7168, Fp4MoeHiddenFormat::bf16); }});
  cases.push_back({"fp4_moe_steps", "finalize T=8192 K=8 E_l=32/256 H=7168",
                   [](Runtime& rt) { return finalize_instance(rt, 7168); }});
});

}  // namespace
}  // namespace kiln::detail
