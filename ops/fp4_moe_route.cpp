// Host recipe: the FP4 MoE's routing (templates/kiln/fp4_moe_route.cuh). Spec: fp4-moe.md §3, §12.2.
#include <fmt/format.h>

#include <optional>
#include <string>
#include <vector>

#include "kiln/fp4_moe_route_args.h"
#include "kiln/ops/fp4_moe.hpp"
#include "ops/fp4_moe_internal.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/fp4_moe_route.cpp: a runnable op (also the tuner's instance).
BenchInstance fp4_moe_route_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);
}  // namespace detail

namespace {
using namespace detail;

enum { P_DTYPE, P_METHOD, P_E, P_K, P_G, P_TG, P_BIAS };
enum { C_WARPS };

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/fp4_moe_route.cuh\"\n";
  // Zeros (a default Specialization: the compile test of families no model enumerates) stand for E 128, K 4, 4 warps.
  name = fmt::format("kiln::fp4_moe_route_kernel<{}, {}, {}, {}, {}, {}, {}, {}>", cxx_type(s.params[P_DTYPE]),
                     s.params[P_METHOD], s.params[P_E] > 0 ? s.params[P_E] : 128, s.params[P_K] > 0 ? s.params[P_K] : 4,
                     s.params[P_G], s.params[P_TG], s.params[P_BIAS] ? "true" : "false",
                     s.config[C_WARPS] > 0 ? s.config[C_WARPS] : 4);
}

int smem_bytes(const Specialization&) { return 0; }

void search_space(const Specialization& s, std::vector<Specialization>& out);
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);

FamilyDef g_family{"fp4_moe_route", {"route"}, {"dtype", "method", "E", "K", "n_group", "topk_group", "bias"},
                   {"warps"}, render, smem_bytes, enumerate, search_space, fp4_moe_route_tune_instance};

Specialization route_spec(Arch arch, DType logits, int method, int64_t E, int K, int groups, int topk_groups,
                          bool bias) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = 0;
  s.params = {static_cast<int64_t>(logits), method, E, K, groups, topk_groups, bias ? 1 : 0};
  s.config = {4};
  return s;
}

// A model's FP4 MoE (ModelConfig::fp4_moe): its routing for fp32 and bf16 logits (both occur: DeepSeek-V3's router
// writes fp32, gpt-oss's bf16).
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  const std::optional<Fp4MoeModel> f = fp4_moe_of(m);
  if (!f) return;
  const Fp4MoeRouteOptions& o = f->routing;
  const bool grouped = o.method == Fp4MoeRoutingMethod::DeepSeekV3 && o.n_group > 1;
  for (DType t : {DType::f32, DType::bf16})
    out.push_back(route_spec(arch, t, static_cast<int>(o.method), f->experts, o.top_k, grouped ? o.n_group : 0,
                             grouped ? o.topk_group : 0, f->routing_bias));
}

void search_space(const Specialization& base, std::vector<Specialization>& out) {
  out.push_back(base);
  Specialization s = base;
  s.config[C_WARPS] = base.config[C_WARPS] == 4 ? 8 : 4;
  out.push_back(s);
}

}  // namespace

KILN_REGISTER_FAMILY(fp4_moe_route, g_family)

void fp4_moe_route(Runtime& rt, const TensorRef& logits, const TensorRef* bias, const TensorRef& topk_ids,
                   const TensorRef& topk_weights, const Fp4MoeRouteOptions& o, Stream stream) {
  using M = Fp4MoeRoutingMethod;
  const Check ck{"fp4_moe_route"};
  const int m = static_cast<int>(o.method);
  if (m < 0 || m > 8) ck.invalid("method", fmt::format("expected a routing method 0 … 8, got {}", m));
  ck.dtype("logits", logits, {DType::f32, DType::bf16});
  if (logits.ndim != 2) ck.shape_error("logits", fmt::format("expected [T, E], got shape {}", shape_str(logits)));
  ck.contiguous("logits", logits);
  const int64_t T = logits.shape[0], E = logits.shape[1];
  const int K = o.top_k;
  if (E % 4 != 0 || E > 512 || E < 4)
    ck.shape_error("logits", fmt::format("expected E (num_experts) a multiple of 4 in [4, 512], got {}", E));
  if (K < 1 || K > 32 || K >= E)
    ck.invalid("top_k", fmt::format("expected 1 ≤ top_k ≤ 32 and top_k < num_experts ({}), got {}", E, K));
  if (o.method == M::Llama4 && K != 1) ck.invalid("top_k", fmt::format("expected 1 for Llama4 routing, got {}", K));
  const bool grouped = o.method == M::DeepSeekV3 && o.n_group > 1;
  if (o.method == M::DeepSeekV3 && K > 22) ck.invalid("top_k", fmt::format("expected ≤ 22 for DeepSeekV3, got {}", K));
  if (grouped) {
    if (o.n_group > 8 || E % o.n_group != 0 || E / o.n_group > 32)
      ck.invalid("n_group", fmt::format("expected n_group ≤ 8 dividing E = {} into groups of ≤ 32, got {}", E,
                                        o.n_group));
    if (o.topk_group < 1 || o.topk_group > 4 || o.topk_group > o.n_group)
      ck.invalid("topk_group",
                 fmt::format("expected 1 ≤ topk_group ≤ min(4, n_group = {}), got {}", o.n_group, o.topk_group));
  }
  const bool may_bias = o.method == M::DeepSeekV3 || o.method == M::MiniMax2;
  if (bias != nullptr) {
    if (!may_bias) ck.invalid("bias", "expected none: only DeepSeekV3 and MiniMax2 routing take a bias");
    ck.tensor("bias", *bias, {logits.dtype}, {E}, static_cast<int>(dtype_size(logits.dtype)));
  }
  ck.tensor("topk_ids", topk_ids, {DType::i32}, {T, K}, 4);
  ck.tensor("topk_weights", topk_weights, {DType::bf16}, {T, K}, 2);
  if (T > 0) ck.pointer("logits", logits, static_cast<int>(dtype_size(logits.dtype)));
  if (T == 0) return;
  auto& impl = rt.impl();
  const Specialization t = impl.tuned(route_spec(impl.target_arch(), logits.dtype, m, E, K, grouped ? o.n_group : 0,
                                                 grouped ? o.topk_group : 0, bias != nullptr),
                                      T);
  const int warps = t.config[C_WARPS];
  Fp4MoeRouteArgs a{logits.data, bias != nullptr ? bias->data : nullptr, static_cast<int*>(topk_ids.data),
                    static_cast<unsigned short*>(topk_weights.data), static_cast<long long>(T),
                    o.routed_scaling_factor, o.norm_topk_prob ? 1 : 0};
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>((T + warps - 1) / warps);
  d.block[0] = static_cast<unsigned>(32 * warps);
  impl.launch(impl.kernel(t), d, stream, a);
}

}  // namespace kiln
