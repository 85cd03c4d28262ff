// tests/gpu/fp4_moe_route_test.cpp — the FP4 MoE routing kernel against tests/reference/fp4_moe.*: expert ids exactly,
// bf16 weights within one bf16 ulp (the spec's tolerance for fp32 exp / sigmoid against the reference's double), for
// every routing method, fp32 and bf16 logits, E 60 / 128 / 256 / 512, K 1 … 8, DeepSeek-V3 groups, bias, T 1 … 1000.
// Logits are a random permutation of distinct values plus small noise, so near-ties cannot flip a selection.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "kiln/ops/fp4_moe.hpp"
#include "reference/fp4_moe.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

std::vector<float> distinct_logits(int64_t T, int64_t E, uint64_t seed, DType t) {
  std::vector<float> z(T * E);
  std::vector<int> perm(E);
  uint64_t s = seed;
  for (int64_t r = 0; r < T; ++r) {
    std::iota(perm.begin(), perm.end(), 0);
    for (int64_t i = E - 1; i > 0; --i) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      std::swap(perm[i], perm[(s >> 33) % (i + 1)]);
    }
    for (int64_t e = 0; e < E; ++e) z[r * E + e] = -4.0f + 8.0f * static_cast<float>(perm[e]) / static_cast<float>(E);
  }
  round_to(t, z);
  return z;
}

struct Case {
  Fp4MoeRoutingMethod method;
  int64_t E;
  int K, n_group, topk_group;
  bool bias;
};

class Fp4MoeRouteGpu : public GpuTest {
 protected:
  void run_cases(const std::vector<Case>& cases, bool ties);
};

TEST_F(Fp4MoeRouteGpu, EveryMethodMatchesTheReference) {
  using M = Fp4MoeRoutingMethod;
  const std::vector<Case> cases = {
      {M::Default, 128, 4, 0, 0, false},     {M::Renormalize, 128, 4, 0, 0, false},
      {M::DeepSeekV3, 256, 8, 8, 4, true},   {M::DeepSeekV3, 384, 8, 0, 0, true},
      {M::Llama4, 128, 1, 0, 0, false},      {M::RenormalizeNaive, 60, 2, 0, 0, false},
      {M::TopK, 512, 8, 0, 0, false},        {M::SigmoidRenorm, 128, 6, 0, 0, false},
      {M::MiniMax2, 256, 8, 0, 0, true},     {M::Sigmoid, 64, 8, 0, 0, false},
      {M::DeepSeekV3, 64, 4, 4, 2, true},    {M::DeepSeekV3, 120, 6, 4, 2, true}};  // groups of 8 lanes; a lane's
                                                                                    // experts across two groups
  run_cases(cases, false);
}

// Logits from {−1, 0, 1} (and no bias): most experts tie with others, groups tie with groups; ids must follow the
// reference's rule (ties to the lower expert, the lower group) exactly.
TEST_F(Fp4MoeRouteGpu, TiesGoToTheLowerExpertAndGroup) {
  using M = Fp4MoeRoutingMethod;
  const std::vector<Case> cases = {
      {M::Default, 128, 4, 0, 0, false},   {M::Renormalize, 60, 3, 0, 0, false}, {M::DeepSeekV3, 256, 8, 8, 4, false},
      {M::DeepSeekV3, 120, 6, 4, 2, false}, {M::TopK, 512, 8, 0, 0, false},      {M::Sigmoid, 64, 8, 0, 0, false},
      {M::MiniMax2, 256, 8, 0, 0, false}};
  run_cases(cases, true);
}

void Fp4MoeRouteGpu::run_cases(const std::vector<Case>& cases, bool ties) {
  Runtime& r = rt();
  for (const Case& c : cases)
    for (DType t : {DType::f32, DType::bf16})
      for (int64_t T : {int64_t{1}, int64_t{17}, int64_t{1000}}) {
        SCOPED_TRACE("method " + std::to_string(static_cast<int>(c.method)) + " E " + std::to_string(c.E) + " K " +
                     std::to_string(c.K) + " " + std::string(dtype_name(t)) + " T " + std::to_string(T));
        std::vector<float> z = distinct_logits(T, c.E, 7 * T + c.E, t);
        if (ties)
          for (float& v : z) v = v < -1.5f ? -1.0f : v < 1.5f ? 0.0f : 1.0f;
        std::vector<float> bias;
        if (c.bias) {
          bias = randn(c.E, 99, 0.05f);
          round_to(t, bias);
        }
        DeviceBuffer zb(r, z.size() * dtype_size(t)), bb(r, std::max<size_t>(bias.size(), 1) * 4),
            ib(r, T * c.K * 4), wb(r, T * c.K * 2);
        zb.upload(encode(t, z));
        if (c.bias) bb.upload(encode(t, bias));
        ib.poison();
        wb.poison();
        Fp4MoeRouteOptions o;
        o.method = c.method;
        o.top_k = c.K;
        o.n_group = c.n_group;
        o.topk_group = c.topk_group;
        o.routed_scaling_factor = 2.5f;
        const TensorRef br = bb.ref(t, {c.E});
        fp4_moe_route(r, zb.ref(t, {T, c.E}), c.bias ? &br : nullptr, ib.ref(DType::i32, {T, c.K}),
                      wb.ref(DType::bf16, {T, c.K}), o, nullptr);
        synchronize();
        EXPECT_TRUE(ib.guards_intact() && wb.guards_intact());
        ref::Fp4MoeRouteOptions ro;
        ro.method = static_cast<ref::Fp4MoeRouting>(static_cast<int>(c.method));
        ro.top_k = c.K;
        ro.n_group = c.n_group;
        ro.topk_group = c.topk_group;
        ro.routed_scaling_factor = 2.5f;
        const ref::Fp4MoeRoute want = ref::fp4_moe_route(z, T, c.E, bias, ro);
        const auto ids = ib.download<int32_t>(T * c.K);
        const auto w = decode(DType::bf16, wb.download<uint8_t>(T * c.K * 2));
        ASSERT_EQ(ids, want.ids);
        for (size_t i = 0; i < w.size(); ++i) {
          const float ulp = std::ldexp(1.0f, std::ilogb(std::max(std::fabs(want.weights[i]), 1e-30f)) - 7);
          ASSERT_LE(std::fabs(w[i] - want.weights[i]), ulp) << "weight " << i << ": " << w[i] << " against "
                                                            << want.weights[i];
        }
      }
}

}  // namespace
}  // namespace kiln::test
