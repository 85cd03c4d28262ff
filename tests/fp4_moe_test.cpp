// tests/fp4_moe_test.cpp — CPU tests of the FP4 MoE layer (ops/fp4_moe.cpp, templates/kiln/fp4_moe.cuh): every kernel
// of the family compiles for sm_90a (NVRTC, a few configs), the metadata / finalize / dequant references' properties
// on hand-worked and random cases, and every argument error of fp4_block_scale_moe (validation precedes any launch,
// so these run without a GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "compile_util.hpp"
#include "kiln/fp4_moe_decode.h"
#include "kiln/kiln.hpp"
#include "kiln/ops/fp4_moe.hpp"
#include "reference/fp4_moe_layer.hpp"
#include "reference/fp4_quant.hpp"
#include "runtime/family.hpp"
#include "test_util.hpp"

// `stmt` passes validation: without a GPU it fails only on reaching the device; with one it is not run (fake
// pointers), and the test goes on (unlike EXPECT_REACHES_DEVICE, which skips the rest of the test).
#define EXPECT_VALID(stmt)                                                                        \
  do {                                                                                            \
    if (!::kiln::detail::driver_available()) EXPECT_THROW_NAMING(stmt, "", DeviceError);          \
  } while (0)

namespace kiln::test {
namespace {

// ---- the family -------------------------------------------------------------------------------------------------

detail::Specialization fspec(uint32_t kernel, int64_t el, int64_t k, int64_t fmt, int threads) {
  detail::Specialization s;
  s.family = &registered_family("fp4_moe");
  s.arch = detail::Arch::parse("sm_90a");
  s.kernel = kernel;
  s.params[0] = el;
  s.params[1] = k;
  s.params[2] = fmt;
  s.config[0] = threads;
  return s;
}

TEST(Fp4MoeFamily, EveryKernelCompilesForSm90a) {
  const auto& f = registered_family("fp4_moe");
  ASSERT_EQ(f.kernels.size(), 6u);
  std::vector<detail::Specialization> specs = {
      fspec(0, 32, 8, 0, 0),  fspec(0, 512, 1, 0, 0), fspec(1, 32, 8, 0, 0), fspec(2, 32, 0, 0, 0),
      fspec(2, 512, 0, 0, 0), fspec(3, 32, 8, 0, 0),  fspec(4, 0, 0, 0, 256), fspec(4, 0, 0, 1, 256),
      fspec(4, 0, 0, 2, 256), fspec(4, 0, 0, 3, 128), fspec(5, 0, 8, 0, 128), fspec(5, 0, 4, 0, 32)};
  expect_compiles(specs);
}

// ---- the gather's decoders (kiln/fp4_moe_decode.h, the kernel's own functions) on every code --------------------

TEST(Fp4MoeDecode, EveryCodeEqualsTheReferenceValue) {
  auto same = [](float a, float b) { return std::memcmp(&a, &b, 4) == 0 || (std::isnan(a) && std::isnan(b)); };
  for (unsigned c = 0; c < 16; ++c)
    EXPECT_TRUE(same(f4m::e2m1_float(c), ref::e2m1_value(static_cast<uint8_t>(c)))) << c;
  for (unsigned c = 0; c < 256; ++c) {
    EXPECT_TRUE(same(f4m::e4m3_float(c), e4m3_to_float(static_cast<uint8_t>(c)))) << c;
    const float want = c == 255 ? std::nanf("") : std::ldexp(1.0f, static_cast<int>(c) - 127);
    EXPECT_TRUE(same(f4m::ue8m0_float(c), want)) << c;
  }
  // Every E2M1 × E4M3 product is exact in bf16 (spec §12.3): the NVFP4 gather rounds nothing.
  for (unsigned a = 0; a < 16; ++a)
    for (unsigned b = 0; b < 256; ++b) {
      if ((b & 0x7f) == 0x7f) continue;
      const float p = f4m::e2m1_float(a) * f4m::e4m3_float(b);
      EXPECT_EQ(bf16_to_float(float_to_bf16(p)), p) << a << " " << b;
    }
}

// ---- references -------------------------------------------------------------------------------------------------

std::vector<int32_t> random_ids(int64_t T, int K, int64_t E, uint64_t seed) {
  std::vector<int32_t> ids(T * K);
  uint64_t s = seed | 1;
  for (int64_t t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) {
      int32_t e;
      bool dup;
      do {  // distinct experts within a token, as the routing emits them
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        e = static_cast<int32_t>((s >> 33) % E);
        dup = std::find(ids.begin() + t * K, ids.begin() + t * K + k, e) != ids.begin() + t * K + k;
      } while (dup);
      ids[t * K + k] = e;
    }
  return ids;
}

// The properties the GEMM and finalize rely on, checked on the reference itself.
void expect_consistent(const ref::Fp4MoePermutation& p, const std::vector<int32_t>& ids, int64_t T, int K, int64_t El,
                       int64_t off, int tile) {
  ASSERT_EQ(p.offsets.size(), static_cast<size_t>(El + 1));
  EXPECT_EQ(p.offsets[0], 0);
  int64_t local = 0;
  for (int64_t i = 0; i < T * K; ++i) local += ids[i] - off >= 0 && ids[i] - off < El;
  int64_t sum = 0;
  for (int64_t e = 0; e < El; ++e) {
    sum += p.counts[e];
    EXPECT_EQ(p.offsets[e] % tile, 0);
    EXPECT_GE(p.offsets[e + 1] - p.offsets[e], p.counts[e]);
    EXPECT_LT(p.offsets[e + 1] - p.offsets[e], p.counts[e] + tile);
    int32_t prev = -1;
    for (int32_t r = p.offsets[e]; r < p.offsets[e + 1]; ++r) {
      if (r < p.offsets[e] + p.counts[e]) {
        const int32_t slot = p.perm_token[r] * K + p.perm_k[r];
        EXPECT_EQ(ids[slot] - off, e);
        EXPECT_EQ(p.expanded[slot], r);
        EXPECT_GT(slot, prev);  // token order kept within a segment
        prev = slot;
      } else {
        EXPECT_EQ(p.perm_token[r], -1);
        EXPECT_EQ(p.perm_k[r], -1);
      }
    }
  }
  EXPECT_EQ(sum, local);
  EXPECT_LE(p.offsets[El], T * K + El * (tile - 1));
  for (int64_t i = 0; i < T * K; ++i)
    if (ids[i] - off < 0 || ids[i] - off >= El) EXPECT_EQ(p.expanded[i], -1);
}

TEST(Fp4MoeReference, PermutationHandWorked) {
  // T 3, K 2, E_l 3 at offset 1, tile 4: ids (global) {1, 3}, {0, 1}, {3, 2}; local {0, 2}, {−, 0}, {2, 1}.
  const std::vector<int32_t> ids = {1, 3, 0, 1, 3, 2};
  const auto p = ref::fp4_moe_permute(ids, 3, 2, 3, 1, 4);
  EXPECT_EQ(p.counts, (std::vector<int32_t>{2, 1, 2}));
  EXPECT_EQ(p.offsets, (std::vector<int32_t>{0, 4, 8, 12}));
  EXPECT_EQ(p.expanded, (std::vector<int32_t>{0, 8, -1, 1, 9, 4}));
  EXPECT_EQ(p.perm_token, (std::vector<int32_t>{0, 1, -1, -1, 2, -1, -1, -1, 0, 2, -1, -1}));
  EXPECT_EQ(p.perm_k, (std::vector<int32_t>{0, 1, -1, -1, 1, -1, -1, -1, 1, 0, -1, -1}));
}

TEST(Fp4MoeReference, PermutationProperties) {
  struct C {
    int64_t T;
    int K;
    int64_t E, El, off;
    int tile;
  };
  for (const C& c : {C{0, 2, 8, 8, 0, 8}, C{1, 1, 8, 8, 0, 64}, C{7, 2, 32, 8, 8, 16}, C{1000, 8, 256, 32, 64, 64},
                     C{1000, 4, 128, 32, 96, 128}, C{257, 8, 32, 32, 0, 8}}) {
    SCOPED_TRACE(::testing::Message() << "T " << c.T << " K " << c.K << " E_l " << c.El << " off " << c.off);
    const auto ids = random_ids(c.T, c.K, c.E, mix_seed({uint64_t(c.T), uint64_t(c.K)}));
    expect_consistent(ref::fp4_moe_permute(ids, c.T, c.K, c.El, c.off, c.tile), ids, c.T, c.K, c.El, c.off, c.tile);
  }
  // All rows to one expert; a rank with no hits.
  std::vector<int32_t> one(100, 5);
  const auto p = ref::fp4_moe_permute(one, 100, 1, 8, 0, 64);
  EXPECT_EQ(p.counts[5], 100);
  EXPECT_EQ(p.offsets[8], 128);
  expect_consistent(p, one, 100, 1, 8, 0, 64);
  const auto none = ref::fp4_moe_permute(one, 100, 1, 4, 8, 64);
  EXPECT_EQ(none.offsets, (std::vector<int32_t>(5, 0)));
  EXPECT_EQ(none.expanded, (std::vector<int32_t>(100, -1)));
}

TEST(Fp4MoeReference, FinalizeAndDequant) {
  // y rows 0 … 2 of H 8; token 0: slots {row 2, w .5}, {−1}; token 1: {row 0, w 2}, {row 1, w −1}; token 2: none.
  std::vector<float> y(3 * 8);
  for (int i = 0; i < 24; ++i) y[i] = static_cast<float>(i);
  const auto out = ref::fp4_moe_finalize(y, 8, std::vector<int32_t>{2, -1, 0, 1, -1, -1},
                                         std::vector<float>{0.5f, 3.0f, 2.0f, -1.0f, 1.0f, 1.0f}, 3, 2, 8);
  for (int h = 0; h < 8; ++h) {
    EXPECT_EQ(out[h], 0.5f * (16 + h));
    EXPECT_EQ(out[8 + h], 2.0f * h - (8 + h));
    EXPECT_EQ(out[16 + h], 0.0f);
  }
  // NVFP4: code 0x7 (6) · E4M3 0x38 (1) = 6; the high nibble 0xA (−1) · 1; block 2 scale 0x40 (2): code 1 (0.5) → 1.
  std::vector<uint8_t> codes(16, 0), sf = {0x38, 0x40};
  codes[0] = 0xA7;
  codes[8] = 0x01;
  const auto x = ref::fp4_moe_dequant_hidden(ref::Fp4MoeHidden::nvfp4, 1, 32, {}, codes, sf);
  EXPECT_EQ(x[0], 6.0f);
  EXPECT_EQ(x[1], -1.0f);
  EXPECT_EQ(x[16], 1.0f);
  // MXFP8: e4m3 0x38 (1) · 2^(130 − 127).
  std::vector<uint8_t> c8(32, 0x38), s8 = {130};
  EXPECT_EQ(ref::fp4_moe_dequant_hidden(ref::Fp4MoeHidden::mxfp8, 1, 32, {}, c8, s8)[31], 8.0f);
}

// The whole-layer reference on a hand-worked case: MXFP4 weights all 1.0 (code 2, scale byte 127), x all 1, H 32,
// I 8, Identity: u = 32 a row, h = s_c·u, y = s_2·(8·h + b2); Swiglu on the same weights with α = 1, β = 0:
// h = silu(32)·32; out = w·y (TopK routing: the weight is the winning logit itself).
TEST(Fp4MoeReference, LayerHandWorked) {
  ref::Fp4MoeLayerProblem p;
  p.T = 1;
  p.H = p.H_out = 32;
  p.I = 8;
  p.E = p.E_l = 4;
  p.route.method = ref::Fp4MoeRouting::TopK;
  p.route.top_k = 1;
  p.logits = {0.5f, 2.0f, 1.0f, -1.0f};  // expert 1, weight 2
  p.x.assign(32, 1.0f);
  const std::vector<uint8_t> codes(4 * 16 * 16, 0x22), sc(4 * 16, 127);
  p.activation = ref::Fp4MoeAct::Identity;
  p.w1 = ref::fp4_moe_dequant_weights(true, 4, 8, 32, codes, sc);
  p.w2 = ref::fp4_moe_dequant_weights(true, 4, 32, 8, codes, sc);
  ASSERT_EQ(p.w1.size(), 4u * 8 * 32);
  EXPECT_EQ(p.w1[100], 1.0f);
  p.s_c.assign(4, 0.5f);
  p.s_2.assign(4, 0.25f);
  p.b2.assign(4 * 32, 1.0f);
  auto r = ref::fp4_moe_layer(p);
  EXPECT_EQ(r.route.ids, (std::vector<int32_t>{1}));
  for (float v : r.out) EXPECT_EQ(v, 2.0f * 0.25f * (8 * 16 + 1));  // h = 16, y = 32.25, out = 64.5
  // Swiglu: W1 rows 2I = 16; x0 = x1 = 32, h = 32·σ(32)·32 (in bf16), y = 8·h.
  p.activation = ref::Fp4MoeAct::Swiglu;
  p.w1 = ref::fp4_moe_dequant_weights(true, 4, 16, 32, codes, sc);
  p.s_c.clear();
  p.s_2.clear();
  p.b2.clear();
  r = ref::fp4_moe_layer(p);
  const float h = bf16_to_float(float_to_bf16(static_cast<float>(32.0 * 32.0 / (1.0 + std::exp(-32.0)))));
  for (float v : r.out) EXPECT_EQ(v, bf16_to_float(float_to_bf16(2.0f * bf16_to_float(float_to_bf16(8 * h)))));
}

// ---- argument errors ----------------------------------------------------------------------------------------------

class Fp4MoeErrors : public ::testing::Test {
 protected:
  static constexpr int64_t T = 16, E = 32, El = 8, H = 256, I = 128;
  static constexpr int K = 2;
  Runtime rt{RuntimeOptions{.arch = "sm_90a", .memory_only = true}};
  Fp4MoeInputs in;
  Fp4MoeOutputs out;
  Fp4MoeOptions opt;
  TensorRef output = TensorRef::contiguous(fake(20), DType::bf16, {T, H});
  TensorRef f32_el = TensorRef::contiguous(fake(21), DType::f32, {El});

  void SetUp() override {
    in = Fp4MoeInputs{};
    out = Fp4MoeOutputs{};
    opt = Fp4MoeOptions{};
    output = TensorRef::contiguous(fake(20), DType::bf16, {T, H});
    in.routing_logits = TensorRef::contiguous(fake(0), DType::f32, {T, E});
    in.hidden_states = TensorRef::contiguous(fake(1), DType::bf16, {T, H});
    in.w1 = {fake(2), El, 2 * I, H, Fp4WeightFormat::nvfp4, true};
    in.w2 = {fake(3), El, H, I, Fp4WeightFormat::nvfp4, false};
    opt.routing.top_k = K;
    opt.routing.method = Fp4MoeRoutingMethod::Renormalize;
    opt.num_experts = E;
    opt.local_expert_offset = 8;
    out.output = &output;
  }
  void call() { fp4_block_scale_moe(rt, in, out, opt, nullptr); }
};

TEST_F(Fp4MoeErrors, AValidCallReachesTheDevice) { EXPECT_VALID(call()); }

TEST_F(Fp4MoeErrors, TZeroLaunchesNothing) {
  in.routing_logits = TensorRef::contiguous(nullptr, DType::f32, {0, E});
  in.hidden_states = TensorRef::contiguous(nullptr, DType::bf16, {0, H});
  output = TensorRef::contiguous(nullptr, DType::bf16, {0, H});
  EXPECT_NO_THROW(call());
  EXPECT_EQ(fp4_moe_workspace_bytes(rt, 0, H, I, opt, El), 0);
  EXPECT_EQ(fp4_moe_max_padded_rows(rt, 0, K, El), 0);
  EXPECT_GT(fp4_moe_workspace_bytes(rt, T, H, I, opt, El), 0);
  EXPECT_GE(fp4_moe_max_padded_rows(rt, T, K, El), T * K);
}

TEST_F(Fp4MoeErrors, Routing) {
  TensorRef z = in.routing_logits;
  z.dtype = DType::i32;
  in.routing_logits = z;
  EXPECT_THROW_NAMING(call(), "routing_logits", UnsupportedDtypeError);
  SetUp();
  opt.num_experts = 64;
  EXPECT_THROW_NAMING(call(), "routing_logits", ShapeMismatchError);
  SetUp();
  in.routing_logits = TensorRef::contiguous(fake(0), DType::f32, {T, 30});
  opt.num_experts = 30;
  EXPECT_THROW_NAMING(call(), "num_experts", InvalidArgument);
  SetUp();
  opt.routing.top_k = 0;
  EXPECT_THROW_NAMING(call(), "top_k", InvalidArgument);
  SetUp();
  opt.routing.method = static_cast<Fp4MoeRoutingMethod>(9);
  EXPECT_THROW_NAMING(call(), "routing_method", InvalidArgument);
  SetUp();
  opt.routing.method = Fp4MoeRoutingMethod::Llama4;
  EXPECT_THROW_NAMING(call(), "top_k", InvalidArgument);
  SetUp();
  opt.routing.method = Fp4MoeRoutingMethod::DeepSeekV3;
  opt.routing.n_group = 4;
  opt.routing.topk_group = 5;
  EXPECT_THROW_NAMING(call(), "topk_group", InvalidArgument);
  SetUp();
  const TensorRef bias = TensorRef::contiguous(fake(4), DType::f32, {E});
  in.routing_bias = &bias;
  EXPECT_THROW_NAMING(call(), "routing_bias", InvalidArgument);  // Renormalize takes none
  opt.routing.method = Fp4MoeRoutingMethod::MiniMax2;
  const TensorRef bias_bf = TensorRef::contiguous(fake(4), DType::bf16, {E});
  in.routing_bias = &bias_bf;
  EXPECT_THROW_NAMING(call(), "routing_bias", UnsupportedDtypeError);
}

TEST_F(Fp4MoeErrors, WeightsActivationAndExpertParallelism) {
  opt.local_expert_offset = 25;  // 25 + 8 > 32
  EXPECT_THROW_NAMING(call(), "local_expert_offset", InvalidArgument);
  SetUp();
  opt.local_expert_offset = -1;
  EXPECT_THROW_NAMING(call(), "local_expert_offset", InvalidArgument);
  SetUp();
  opt.activation = Fp4MoeActivation::Relu2;  // w1 still gated [2I]
  EXPECT_THROW_NAMING(call(), "w1", InvalidArgument);
  in.w1.gated = false;
  in.w1.rows = 2 * I;  // non-gated: I rows, so I = 256 ≠ w2.k
  EXPECT_THROW_NAMING(call(), "w2", ShapeMismatchError);
  SetUp();
  opt.activation = static_cast<Fp4MoeActivation>(5);
  EXPECT_THROW_NAMING(call(), "activation", InvalidArgument);
  SetUp();
  in.w2.rows = 512;
  EXPECT_THROW_NAMING(call(), "w2", ShapeMismatchError);
  SetUp();
  in.w2.experts = 4;
  EXPECT_THROW_NAMING(call(), "w2", ShapeMismatchError);
  SetUp();
  in.w1.format = static_cast<Fp4WeightFormat>(2);
  EXPECT_THROW_NAMING(call(), "w1", InvalidArgument);
  SetUp();
  in.w2.data = static_cast<char*>(fake(3)) + 16;
  EXPECT_THROW_NAMING(call(), "w2", InvalidArgument);
  SetUp();
  in.w1.k = 240;  // not a multiple of 32
  EXPECT_THROW_NAMING(call(), "w1", ShapeMismatchError);
  SetUp();
  // α / β / L only with Swiglu.
  in.gemm1_alpha = &f32_el;
  EXPECT_VALID(call());
  opt.activation = Fp4MoeActivation::Geglu;
  EXPECT_THROW_NAMING(call(), "gemm1_alpha", InvalidArgument);
  in.gemm1_alpha = nullptr;
  in.gemm1_clamp_limit = &f32_el;
  EXPECT_THROW_NAMING(call(), "gemm1_clamp_limit", InvalidArgument);
  SetUp();
  const TensorRef beta9 = TensorRef::contiguous(fake(21), DType::f32, {9});
  in.gemm1_beta = &beta9;
  EXPECT_THROW_NAMING(call(), "gemm1_beta", ShapeMismatchError);
  SetUp();
  const TensorRef b1 = TensorRef::contiguous(fake(22), DType::f32, {El, I});  // gated: [E_l, 2I]
  in.gemm1_bias = &b1;
  EXPECT_THROW_NAMING(call(), "gemm1_bias", ShapeMismatchError);
  SetUp();
  const TensorRef b2 = TensorRef::contiguous(fake(22), DType::bf16, {El, H});
  in.gemm2_bias = &b2;
  EXPECT_THROW_NAMING(call(), "gemm2_bias", UnsupportedDtypeError);
  SetUp();
  const TensorRef sc = TensorRef::contiguous(fake(23), DType::f32, {E});  // global count, not local
  in.output2_scale_scalar = &sc;
  EXPECT_THROW_NAMING(call(), "output2_scale_scalar", ShapeMismatchError);
}

TEST_F(Fp4MoeErrors, HiddenStatesAndFormats) {
  opt.hidden_format = Fp4MoeHiddenFormat::nvfp4;  // bf16 [T, H] given, no scales
  EXPECT_THROW_NAMING(call(), "hidden_states", UnsupportedDtypeError);
  in.hidden_states = TensorRef::contiguous(fake(1), DType::u8, {T, H / 2});
  EXPECT_THROW_NAMING(call(), "hidden_states_scale", InvalidArgument);
  const TensorRef s32 = TensorRef::contiguous(fake(5), DType::u8, {T, H / 32});
  in.hidden_states_scale = &s32;
  EXPECT_THROW_NAMING(call(), "hidden_states_scale", ShapeMismatchError);  // nvfp4: H/16
  const TensorRef s16 = TensorRef::contiguous(fake(5), DType::e4m3, {T, H / 16});
  in.hidden_states_scale = &s16;
  EXPECT_VALID(call());
  SetUp();
  opt.hidden_format = Fp4MoeHiddenFormat::mxfp8;
  in.hidden_states = TensorRef::contiguous(fake(1), DType::e4m3, {T, H});
  in.hidden_states_scale = &s16;
  EXPECT_THROW_NAMING(call(), "hidden_states_scale", ShapeMismatchError);  // mxfp8: H/32
  SetUp();
  opt.hidden_format = Fp4MoeHiddenFormat::e4m3;
  in.hidden_states = TensorRef::contiguous(fake(1), DType::e4m3, {T, H});
  in.hidden_states_scale = &s32;
  EXPECT_THROW_NAMING(call(), "hidden_states_scale", InvalidArgument);  // per tensor: none
  SetUp();
  in.hidden_states = TensorRef::contiguous(fake(1), DType::bf16, {T + 1, H});
  EXPECT_THROW_NAMING(call(), "hidden_states", ShapeMismatchError);
  SetUp();
  opt.hidden_format = static_cast<Fp4MoeHiddenFormat>(4);
  EXPECT_THROW_NAMING(call(), "hidden_format", InvalidArgument);
  SetUp();
  const TensorRef pts = TensorRef::contiguous(fake(6), DType::f32, {T - 1});
  in.per_token_scale = &pts;
  EXPECT_THROW_NAMING(call(), "per_token_scale", ShapeMismatchError);
}

TEST_F(Fp4MoeErrors, OutputsReplayAndWorkspace) {
  output = TensorRef::contiguous(fake(20), DType::bf16, {T, H + 8});  // H_out > H
  EXPECT_THROW_NAMING(call(), "output", ShapeMismatchError);
  output = TensorRef::contiguous(fake(20), DType::bf16, {T, 100});  // not a multiple of 8
  EXPECT_THROW_NAMING(call(), "output", ShapeMismatchError);
  output = TensorRef::contiguous(fake(20), DType::f32, {T, H});
  EXPECT_THROW_NAMING(call(), "output", UnsupportedDtypeError);
  output = TensorRef::contiguous(fake(20), DType::bf16, {T, 128});  // H_out < H is fine
  EXPECT_VALID(call());
  out.output = nullptr;
  EXPECT_THROW_NAMING(call(), "output", InvalidArgument);
  // do_finalize false: the three outputs.
  SetUp();
  opt.do_finalize = false;
  EXPECT_THROW_NAMING(call(), "output", InvalidArgument);
  out.output = nullptr;
  EXPECT_THROW_NAMING(call(), "gemm2_output", InvalidArgument);
  const int64_t rows = fp4_moe_max_padded_rows(rt, T, K, El);
  const TensorRef g2 = TensorRef::contiguous(fake(7), DType::bf16, {rows, H});
  const TensorRef g2small = TensorRef::contiguous(fake(7), DType::bf16, {rows - 1, H});
  const TensorRef ew = TensorRef::contiguous(fake(8), DType::bf16, {T, K});
  const TensorRef ew32 = TensorRef::contiguous(fake(8), DType::f32, {T, K});
  const TensorRef ex = TensorRef::contiguous(fake(9), DType::i32, {T * K});
  const TensorRef ex2 = TensorRef::contiguous(fake(9), DType::i32, {T, K});
  out.gemm2_output = &g2;
  EXPECT_THROW_NAMING(call(), "expert_weights", InvalidArgument);
  out.expert_weights = &ew;
  EXPECT_THROW_NAMING(call(), "expanded_idx_to_permuted_idx", InvalidArgument);
  out.expanded_idx_to_permuted_idx = &ex2;
  EXPECT_THROW_NAMING(call(), "expanded_idx_to_permuted_idx", ShapeMismatchError);
  out.expanded_idx_to_permuted_idx = &ex;
  EXPECT_VALID(call());
  out.expert_weights = &ew32;
  EXPECT_THROW_NAMING(call(), "expert_weights", UnsupportedDtypeError);
  out.expert_weights = &ew;
  out.gemm2_output = &g2small;
  EXPECT_THROW_NAMING(call(), "gemm2_output", ShapeMismatchError);
  // Replay buffer.
  SetUp();
  const TensorRef rp = TensorRef::contiguous(fake(10), DType::i16, {T + 5, K});
  const TensorRef rp_short = TensorRef::contiguous(fake(10), DType::i16, {T - 1, K});
  const TensorRef rp_i32 = TensorRef::contiguous(fake(10), DType::i32, {T, K});
  const TensorRef rp_k = TensorRef::contiguous(fake(10), DType::i16, {T, K + 1});
  in.routing_replay_out = &rp_short;
  EXPECT_THROW_NAMING(call(), "routing_replay_out", ShapeMismatchError);
  in.routing_replay_out = &rp_i32;
  EXPECT_THROW_NAMING(call(), "routing_replay_out", UnsupportedDtypeError);
  in.routing_replay_out = &rp_k;
  EXPECT_THROW_NAMING(call(), "routing_replay_out", ShapeMismatchError);
  TensorRef rp_strided = rp;
  rp_strided.strides[0] = 4;
  in.routing_replay_out = &rp_strided;
  EXPECT_THROW_NAMING(call(), "routing_replay_out", ShapeMismatchError);
  in.routing_replay_out = &rp;
  EXPECT_VALID(call());
  // Workspace.
  SetUp();
  const int64_t need = fp4_moe_workspace_bytes(rt, T, H, I, opt, El);
  const TensorRef ws = TensorRef::contiguous(fake(11), DType::u8, {need});
  const TensorRef ws_small = TensorRef::contiguous(fake(11), DType::u8, {need - 1});
  EXPECT_THROW_NAMING(fp4_block_scale_moe(rt, in, out, opt, nullptr, &ws_small), "workspace", ShapeMismatchError);
  EXPECT_VALID(fp4_block_scale_moe(rt, in, out, opt, nullptr, &ws));
}

}  // namespace
// A model config with an FP4 MoE: the three families enumerate the kernels the op launches (prewarm), specialized to
// its shapes; derived routing for DeepSeek-V3-style configs; nothing without fp4_moe.
TEST(Fp4MoeFamily, ModelConfigsEnumerateTheLayersKernels) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  const detail::Arch arch = detail::Arch::parse("sm_90a");
  auto specs = [&](const ModelConfig& m, const char* family) {
    std::vector<detail::Specialization> out;
    registered_family(family).enumerate(m, arch, out);
    return out;
  };
  ModelConfig g = load_model("gpt-oss-120b");
  const auto route = specs(g, "fp4_moe_route");
  ASSERT_EQ(route.size(), 2u);  // fp32 and bf16 logits
  EXPECT_EQ(route[0].params[1], 1);    // Renormalize
  EXPECT_EQ(route[0].params[2], 128);  // E
  EXPECT_EQ(route[0].params[3], 4);    // K
  const auto layer = specs(g, "fp4_moe");
  ASSERT_EQ(layer.size(), 6u);
  EXPECT_EQ(layer[0].params[0], 128);  // E_l
  const auto gemm = specs(g, "fp4_moe_gemm");
  EXPECT_EQ(gemm.size(), 10u);  // 4 token tiles × (GEMM1, GEMM2) + 2 prepacks
  EXPECT_EQ(gemm[0].params[1], 1);  // mxfp4

  ModelConfig d = load_model("deepseek-v3");
  EXPECT_TRUE(specs(d, "fp4_moe_route").empty());
  d.fp4_moe = "nvfp4";
  d.fp4_moe_local_experts = 32;
  const auto droute = specs(d, "fp4_moe_route");
  ASSERT_EQ(droute.size(), 2u);
  EXPECT_EQ(droute[0].params[1], 2);  // sigmoid + groups + expert bias → DeepSeekV3
  EXPECT_EQ(droute[0].params[4], 8);
  EXPECT_EQ(droute[0].params[5], 4);
  EXPECT_EQ(droute[0].params[6], 1);  // the selection bias
  EXPECT_EQ(specs(d, "fp4_moe")[0].params[0], 32);  // E_l from fp4_moe_local_experts
  d.hidden_size = 7000;                              // not a multiple of 32: the op would refuse it
  EXPECT_TRUE(specs(d, "fp4_moe_gemm").empty());
}

}  // namespace kiln::test
