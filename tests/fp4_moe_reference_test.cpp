// tests/fp4_moe_reference_test.cpp — the FP4 MoE routing reference (tests/reference/fp4_moe.*, spec fp4-moe.md §3) on
// hand-worked tokens for every routing method, ties, the DeepSeek-V3 groups, and the launcher's constraints.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "compile_util.hpp"
#include "kiln/kiln.hpp"
#include "reference/fp4_moe.hpp"
#include "runtime/family.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

using ref::Fp4MoeRouting;
using ref::Fp4MoeRouteOptions;

float bf(double v) { return bf16_to_float(float_to_bf16(static_cast<float>(v))); }
double sig(double z) { return 1.0 / (1.0 + std::exp(-z)); }

const std::vector<float> kZ = {0.5f, -1.0f, 2.0f, 0.25f, 1.5f, -0.5f, 3.0f, 0.0f};  // one token, E = 8

ref::Fp4MoeRoute route(Fp4MoeRouting m, int K, const std::vector<float>& z = kZ, const std::vector<float>& bias = {},
                       Fp4MoeRouteOptions o = {}) {
  o.method = m;
  o.top_k = K;
  return ref::fp4_moe_route(z, 1, static_cast<int64_t>(z.size()), bias, o);
}

TEST(Fp4MoeRouting, DefaultIsTopKOfTheSoftmaxNotRenormalized) {
  const auto r = route(Fp4MoeRouting::Default, 2);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{6, 2}));
  double sum = 0;
  for (float z : kZ) sum += std::exp(z - 3.0);
  EXPECT_EQ(r.weights[0], bf(1.0 / sum));
  EXPECT_EQ(r.weights[1], bf(std::exp(-1.0) / sum));
}

TEST(Fp4MoeRouting, RenormalizeIsTheSoftmaxOfTheSelectedLogits) {
  for (auto m : {Fp4MoeRouting::Renormalize, Fp4MoeRouting::RenormalizeNaive}) {
    const auto r = route(m, 3);
    EXPECT_EQ(r.ids, (std::vector<int32_t>{6, 2, 4}));
    const double den = 1 + std::exp(-1.0) + std::exp(-1.5);
    EXPECT_EQ(r.weights[0], bf(1 / den));
    EXPECT_EQ(r.weights[2], bf(std::exp(-1.5) / den));
  }
}

TEST(Fp4MoeRouting, Llama4TopKAndSigmoidForms) {
  const auto l4 = route(Fp4MoeRouting::Llama4, 1);
  EXPECT_EQ(l4.ids, (std::vector<int32_t>{6}));
  EXPECT_EQ(l4.weights[0], bf(static_cast<float>(sig(3.0))));
  const auto tk = route(Fp4MoeRouting::TopK, 2, {-5.f, -1.f, -3.f, -2.f, -4.f, -6.f, -7.f, -8.f});
  EXPECT_EQ(tk.ids, (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(tk.weights[0], -1.0f);  // raw logits, negative allowed
  const auto sg = route(Fp4MoeRouting::Sigmoid, 2);
  EXPECT_EQ(sg.ids, (std::vector<int32_t>{6, 2}));
  EXPECT_EQ(sg.weights[1], bf(static_cast<float>(sig(2.0))));
  Fp4MoeRouteOptions o;
  o.norm_topk_prob = true;
  const auto sr = route(Fp4MoeRouting::SigmoidRenorm, 2, kZ, {}, o);
  const double a = static_cast<float>(sig(3.0)), b = static_cast<float>(sig(2.0));
  EXPECT_EQ(sr.weights[0], bf(a / (a + b)));
  o.norm_topk_prob = false;
  EXPECT_EQ(route(Fp4MoeRouting::SigmoidRenorm, 2, kZ, {}, o).weights[0], bf(a));
}

TEST(Fp4MoeRouting, BiasSelectsButDoesNotWeigh) {
  std::vector<float> bias(8, 0.0f);
  bias[0] = 1.0f;  // σ(0.5) + 1 beats σ(3)
  Fp4MoeRouteOptions o;
  o.routed_scaling_factor = 2.5f;
  const auto ds = route(Fp4MoeRouting::DeepSeekV3, 2, kZ, bias, o);
  EXPECT_EQ(ds.ids, (std::vector<int32_t>{0, 6}));
  const double s0 = static_cast<float>(sig(0.5)), s6 = static_cast<float>(sig(3.0));
  EXPECT_EQ(ds.weights[0], bf(2.5 * (s0 / (s0 + s6 + 1e-20))));
  const auto mm = route(Fp4MoeRouting::MiniMax2, 2, kZ, bias, o);  // rsf ignored (seed era)
  EXPECT_EQ(mm.ids, ds.ids);
  EXPECT_EQ(mm.weights[0], bf(s0 / (s0 + s6 + 1e-20)));
}

// E = 16 in 4 groups of 4, 2 groups kept: a group's score is its two largest keys' sum.
TEST(Fp4MoeRouting, DeepSeekV3GroupsMaskTheOthers) {
  std::vector<float> z(16, -4.0f);
  z[0] = 4.0f;             // group 0: one strong expert (sum ≈ 0.98 + 0.018)
  z[5] = 1.0f, z[6] = 1.0f;  // group 1: two medium ones (sum ≈ 1.46)
  z[9] = 0.5f, z[10] = 0.4f;  // group 2: sum ≈ 1.22
  z[13] = 3.0f;             // group 3: sum ≈ 0.97
  Fp4MoeRouteOptions o;
  o.n_group = 4;
  o.topk_group = 2;
  const auto r = route(Fp4MoeRouting::DeepSeekV3, 4, z, {}, o);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{5, 6, 9, 10}));  // groups 1 and 2; expert 0 (group 0) masked
  o.n_group = 0;  // no groups: plain top-K
  EXPECT_EQ(route(Fp4MoeRouting::DeepSeekV3, 4, z, {}, o).ids, (std::vector<int32_t>{0, 13, 5, 6}));
}

TEST(Fp4MoeRouting, TiesGoToTheLowerExpert) {
  const std::vector<float> z = {1, 2, 2, 0, 2, 1, 0, 0};
  EXPECT_EQ(route(Fp4MoeRouting::TopK, 3, z).ids, (std::vector<int32_t>{1, 2, 4}));
  EXPECT_EQ(route(Fp4MoeRouting::Renormalize, 2, z).ids, (std::vector<int32_t>{1, 2}));
}

TEST(Fp4MoeRouting, LauncherConstraints) {
  EXPECT_THROW(route(Fp4MoeRouting::TopK, 2, std::vector<float>(6, 0.f)), std::invalid_argument);  // E % 4
  EXPECT_THROW(route(Fp4MoeRouting::TopK, 8), std::invalid_argument);                              // E > K
  EXPECT_THROW(route(Fp4MoeRouting::Llama4, 2), std::invalid_argument);                            // K == 1
  EXPECT_THROW(route(Fp4MoeRouting::TopK, 2, kZ, std::vector<float>(8, 0.f)), std::invalid_argument);  // no bias
  Fp4MoeRouteOptions o;
  o.n_group = 3;  // 8 % 3
  o.topk_group = 1;
  EXPECT_THROW(route(Fp4MoeRouting::DeepSeekV3, 2, kZ, {}, o), std::invalid_argument);
  o.n_group = 2;
  o.topk_group = 3;  // n_group < topk_group
  EXPECT_THROW(route(Fp4MoeRouting::DeepSeekV3, 2, kZ, {}, o), std::invalid_argument);
  std::vector<float> big(1024, 0.f);
  EXPECT_THROW(route(Fp4MoeRouting::DeepSeekV3, 2, big), std::invalid_argument);  // E ≤ 512
}

}  // namespace
}  // namespace kiln::test

namespace kiln::test {
namespace {

// The routing kernel: NVRTC compiles each method (with and without groups / bias, fp32 and bf16 logits, E not a
// multiple of 32), and every argument error is typed and named.
TEST(Fp4MoeRouteKernel, CompilesForEveryMethod) {
  std::vector<detail::Specialization> specs;
  const detail::FamilyDef& f = registered_family("fp4_moe_route");
  for (int m = 0; m <= 8; ++m) {
    detail::Specialization s;
    s.family = &f;
    s.arch = detail::Arch::parse("sm_90a");
    s.kernel = 0;
    const int64_t K = m == 3 ? 1 : 8, G = m == 2 ? 8 : 0, TG = m == 2 ? 4 : 0, bias = (m == 2 || m == 7) ? 1 : 0;
    s.params = {static_cast<int64_t>(m % 2 ? DType::bf16 : DType::f32), m, m == 5 ? 60 : 256, K, G, TG, bias};
    s.config = {4};
    specs.push_back(s);
  }
  expect_compiles(specs);
}

TEST(Fp4MoeRouteKernel, ArgumentErrorsNameTheArgument) {
  Runtime rt{RuntimeOptions{.arch = "sm_90a", .memory_only = true}};
  TensorRef z = TensorRef::contiguous(fake(0), DType::f32, {64, 256});
  TensorRef ids = TensorRef::contiguous(fake(1), DType::i32, {64, 8});
  TensorRef w = TensorRef::contiguous(fake(2), DType::bf16, {64, 8});
  TensorRef b = TensorRef::contiguous(fake(3), DType::f32, {256});
  kiln::Fp4MoeRouteOptions o;
  o.method = Fp4MoeRoutingMethod::DeepSeekV3;
  o.top_k = 8;
  o.n_group = 8;
  o.topk_group = 4;
  EXPECT_REACHES_DEVICE(kiln::fp4_moe_route(rt, z, &b, ids, w, o, nullptr));
  o.topk_group = 5;
  EXPECT_THROW_NAMING(kiln::fp4_moe_route(rt, z, &b, ids, w, o, nullptr), "topk_group", InvalidArgument);
  o.topk_group = 4;
  o.n_group = 3;
  EXPECT_THROW_NAMING(kiln::fp4_moe_route(rt, z, &b, ids, w, o, nullptr), "n_group", InvalidArgument);
  o.n_group = 8;
  o.method = Fp4MoeRoutingMethod::Renormalize;
  EXPECT_THROW_NAMING(kiln::fp4_moe_route(rt, z, &b, ids, w, o, nullptr), "bias", InvalidArgument);
  o.method = Fp4MoeRoutingMethod::Llama4;
  EXPECT_THROW_NAMING(kiln::fp4_moe_route(rt, z, nullptr, ids, w, o, nullptr), "top_k", InvalidArgument);
  o.method = Fp4MoeRoutingMethod::TopK;
  const TensorRef z6 = TensorRef::contiguous(fake(0), DType::f32, {64, 6});
  EXPECT_THROW_NAMING(kiln::fp4_moe_route(rt, z6, nullptr, ids, w, o, nullptr), "logits", ShapeMismatchError);
  const TensorRef w32 = TensorRef::contiguous(fake(2), DType::f32, {64, 8});
  EXPECT_THROW_NAMING(kiln::fp4_moe_route(rt, z, nullptr, ids, w32, o, nullptr), "topk_weights", UnsupportedDtypeError);
  const TensorRef ids4 = TensorRef::contiguous(fake(1), DType::i32, {64, 4});
  EXPECT_THROW_NAMING(kiln::fp4_moe_route(rt, z, nullptr, ids4, w, o, nullptr), "topk_ids", ShapeMismatchError);
  o.method = static_cast<Fp4MoeRoutingMethod>(9);
  EXPECT_THROW_NAMING(kiln::fp4_moe_route(rt, z, nullptr, ids, w, o, nullptr), "method", InvalidArgument);
}

}  // namespace
}  // namespace kiln::test
