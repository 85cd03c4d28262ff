// Bench cases of the FP4 MoE routing (kiln bench, op "fp4_moe_route"; spec fp4-moe.md §3) and the tuner's instance.
// Minimal bytes: the logits once, ids and weights once (a streaming op: one warp a token).
#include <fmt/format.h>

#include <algorithm>
#include <memory>

#include "kiln/ops/fp4_moe.hpp"
#include "runtime/bench.hpp"
#include "runtime/family.hpp"

namespace kiln::detail {
namespace {

BenchInstance route_instance(Runtime& rt, int64_t T, int64_t E, const Fp4MoeRouteOptions& o, DType t, bool bias) {
  auto b = std::make_shared<DeviceBuffers>();
  const TensorRef z = TensorRef::contiguous(b->random(t, T * E, 1.0f, bench_seed()), t, {T, E});
  const TensorRef bz = TensorRef::contiguous(b->random(t, E, 0.05f, bench_seed()), t, {E});
  const TensorRef ids = TensorRef::contiguous(b->alloc(T * o.top_k * 4), DType::i32, {T, o.top_k});
  const TensorRef w = TensorRef::contiguous(b->alloc(T * o.top_k * 2), DType::bf16, {T, o.top_k});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = T * E * dtype_size(t) + T * o.top_k * 6 + (bias ? E * dtype_size(t) : 0);
  Runtime* r = &rt;
  inst.run = [=](Stream s) { fp4_moe_route(*r, z, bias ? &bz : nullptr, ids, w, o, s); };
  inst.outputs = {ids, w};
  inst.baseline_name = "none";
  return inst;
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  Fp4MoeRouteOptions ds;  // DeepSeek-V3 / R1: E 256, 8 groups, 4 kept, K 8, rsf 2.5, fp32 logits
  ds.method = Fp4MoeRoutingMethod::DeepSeekV3;
  ds.top_k = 8;
  ds.n_group = 8;
  ds.topk_group = 4;
  ds.routed_scaling_factor = 2.5f;
  Fp4MoeRouteOptions oss;  // gpt-oss: E 128, K 4, renormalize, bf16 logits
  oss.method = Fp4MoeRoutingMethod::Renormalize;
  oss.top_k = 4;
  for (int64_t T : {int64_t{1}, int64_t{8192}}) {
    cases.push_back({"fp4_moe_route", fmt::format("T={} E=256 K=8 DeepSeekV3 groups 8/4 fp32", T),
                     [=](Runtime& rt) { return route_instance(rt, T, 256, ds, DType::f32, true); }});
    cases.push_back({"fp4_moe_route", fmt::format("T={} E=128 K=4 Renormalize bf16", T),
                     [=](Runtime& rt) { return route_instance(rt, T, 128, oss, DType::bf16, false); }});
  }
});

}  // namespace

// The tuner's instance: the specialization's own method, E, K and groups at `tokens` tokens.
BenchInstance fp4_moe_route_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  Fp4MoeRouteOptions o;
  o.method = static_cast<Fp4MoeRoutingMethod>(s.params[1]);
  o.top_k = static_cast<int>(s.params[3]);
  o.n_group = static_cast<int>(s.params[4]);
  o.topk_group = static_cast<int>(s.params[5]);
  return route_instance(rt, std::max<int64_t>(tokens, 1), s.params[2], o, static_cast<DType>(s.params[0]),
                        s.params[6] != 0);
}

}  // namespace kiln::detail
