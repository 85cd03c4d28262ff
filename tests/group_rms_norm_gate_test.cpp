// tests/group_rms_norm_gate_test.cpp — group RMSNorm × sigmoid gate on the CPU (runs in CI without a GPU): the
// reference against independent facts (a saturated gate leaves a per-group RMSNorm, a shared weight equals the tiled
// per-channel weight, the backward = finite differences of the forward), NVRTC compiles of a handful of
// specializations for sm_90a, the search space, and every argument error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kiln/ops/group_rms_norm_gate.hpp"
#include "reference/group_rms_norm_gate.hpp"
#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "compile_util.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

// ---- reference sanity ---------------------------------------------------------------------------------------------

TEST(GroupRmsNormGateReference, SaturatedGateIsGroupRmsNorm) {
  const int64_t M = 5, dim = 24, G = 3, d = 8;
  const auto x = randd(M * dim, 1), w = randd(dim, 2);
  const std::vector<double> open(M * dim, 1e3), shut(M * dim, -1e3);  // σ = 1 and σ = 0 (to double precision)
  const auto y = ref::group_rms_norm_gate_fwd(x, open, w, M, dim, G, 1e-6);
  const auto z = ref::group_rms_norm_gate_fwd(x, shut, w, M, dim, G, 1e-6);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t q = 0; q < G; ++q) {
      double ss = 0;
      for (int64_t j = 0; j < d; ++j) ss += x[m * dim + q * d + j] * x[m * dim + q * d + j];
      const double r = 1.0 / std::sqrt(ss / d + 1e-6);
      for (int64_t j = 0; j < d; ++j) {
        const int64_t i = m * dim + q * d + j;
        EXPECT_NEAR(y[i], x[i] * r * w[q * d + j], 1e-12) << i;
        EXPECT_EQ(z[i], 0.0) << i;
      }
    }
}

TEST(GroupRmsNormGateReference, GroupsAreIndependentAndSharedWeightTiles) {
  const int64_t M = 4, dim = 32, G = 4, d = 8;
  const auto x = randd(M * dim, 3), gate = randd(M * dim, 4), ws = randd(d, 5);
  std::vector<double> tiled(dim);
  for (int64_t c = 0; c < dim; ++c) tiled[c] = ws[c % d];
  const auto a = ref::group_rms_norm_gate_fwd(x, gate, ws, M, dim, G, 1e-6);
  const auto b = ref::group_rms_norm_gate_fwd(x, gate, tiled, M, dim, G, 1e-6);
  EXPECT_EQ(a, b);
  // Scaling one group's x does not change the output (RMSNorm is scale-free up to eps), nor other groups.
  auto x2 = x;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < d; ++j) x2[m * dim + d + j] *= 7.0;
  const auto c = ref::group_rms_norm_gate_fwd(x2, gate, ws, M, dim, G, 0.0);
  const auto a0 = ref::group_rms_norm_gate_fwd(x, gate, ws, M, dim, G, 0.0);
  for (size_t i = 0; i < c.size(); ++i) EXPECT_NEAR(c[i], a0[i], 1e-12) << i;
  // The shared weight's gradient is the per-channel gradient folded over the groups.
  const auto dy = randd(M * dim, 6);
  const auto gs = ref::group_rms_norm_gate_bwd(dy, x, gate, ws, M, dim, G, 1e-6);
  const auto gt = ref::group_rms_norm_gate_bwd(dy, x, gate, tiled, M, dim, G, 1e-6);
  ASSERT_EQ(gs.dweight.size(), static_cast<size_t>(d));
  for (int64_t j = 0; j < d; ++j) {
    double folded = 0;
    for (int64_t q = 0; q < G; ++q) folded += gt.dweight[q * d + j];
    EXPECT_NEAR(gs.dweight[j], folded, 1e-12);
  }
  EXPECT_EQ(gs.dx, gt.dx);
}

// Central differences of L = Σ out·g (h = 1e-6; truncation ~1e-12, rounding ~1e-10: 1e-7 relative is a real check).
TEST(GroupRmsNormGateReference, BackwardMatchesFiniteDifferences) {
  for (const auto& [M, dim, G, shared] : {std::tuple<int64_t, int64_t, int64_t, bool>{3, 12, 3, false},
                                          {5, 16, 4, true}, {2, 10, 1, false}, {7, 6, 2, true}}) {
    SCOPED_TRACE("M " + std::to_string(M) + " dim " + std::to_string(dim) + " G " + std::to_string(G) +
                 (shared ? " shared" : ""));
    const uint64_t seed = mix_seed({0x71, static_cast<uint64_t>(M), static_cast<uint64_t>(dim)});
    auto x = randd(M * dim, seed + 1), gate = randd(M * dim, seed + 2, 2.0);
    auto w = randd(shared ? dim / G : dim, seed + 3, 0.7);
    const auto g = randd(M * dim, seed + 4);
    const double eps = 1e-3;
    auto loss = [&]() {
      const auto y = ref::group_rms_norm_gate_fwd(x, gate, w, M, dim, G, eps);
      double l = 0;
      for (size_t i = 0; i < y.size(); ++i) l += y[i] * g[i];
      return l;
    };
    const auto grads = ref::group_rms_norm_gate_bwd(g, x, gate, w, M, dim, G, eps);
    EXPECT_TRUE(matches_finite_differences(x, grads.dx, loss)) << "dx";
    EXPECT_TRUE(matches_finite_differences(gate, grads.dgate, loss)) << "dgate";
    EXPECT_TRUE(matches_finite_differences(w, grads.dweight, loss)) << "dweight";
  }
}

// ---- specializations compile ----------------------------------------------------------------------------------

const detail::FamilyDef& family() { return registered_family("group_rms_norm_gate"); }

// kernel 0 fwd, 1 bwd, 2 dw_reduce; params dim, G, shared_w, dtype, w_dtype; config warps, seg_groups, rows (0
// re-read, 1 kept in registers, 2 staged in shared memory, 3 kept with the sigmoids), reduce (bwd: 1 in-kernel),
// hints (staged bwd: L2 policies).
detail::Specialization make(uint32_t kernel, int64_t dim, int64_t G, bool shared, DType t, DType w, int warps, int seg,
                            int rows, int reduce = 0, int hints = 0) {
  detail::Specialization s;
  s.family = &family();
  s.arch = detail::Arch::parse("sm_90a");
  s.kernel = kernel;
  s.params = {dim, G, shared, static_cast<int64_t>(t), static_cast<int64_t>(w)};
  if (kernel == 2) {
    s.params[3] = s.params[4] = 0;
  } else {
    s.config[0] = warps;
    s.config[1] = seg;
    s.config[2] = rows;
    s.config[3] = reduce;
    s.config[4] = hints;
  }
  return s;
}

TEST(GroupRmsNormGateCompile, SpecializationsCompileForSm90a) {
  ASSERT_EQ(family().param_names.size(), 5u);
  ASSERT_EQ(family().config_names.size(), 5u);
  expect_compiles({
      make(0, 1536, 4, true, DType::f16, DType::f32, 4, 2, 0),     // d = 384: groups span steps unevenly
      make(0, 40, 5, false, DType::f32, DType::bf16, 8, 5, 0),      // d = 8 fp32, five groups in one segment
      make(1, 2048, 4, false, DType::bf16, DType::bf16, 8, 2, 0),   // the default's segment, rows re-read
      make(1, 1536, 4, true, DType::f32, DType::f32, 4, 1, 1),
      make(1, 18, 3, true, DType::bf16, DType::bf16, 2, 3, 1),      // d = 6: 4-byte chunks
      make(2, 1536, 4, true, DType::bf16, DType::bf16, 0, 0, 0),    // shared-weight reduce (folds 4 groups)
      make(1, 2048, 4, false, DType::bf16, DType::f32, 8, 2, 2),    // the staged backward
      make(0, 2048, 4, false, DType::bf16, DType::bf16, 8, 2, 2),   // the staged forward
      make(1, 2048, 4, false, DType::bf16, DType::bf16, 8, 1, 3),   // kept rows and sigmoids
      make(1, 1536, 4, true, DType::f32, DType::f32, 4, 1, 3),
      make(1, 1536, 4, true, DType::f16, DType::bf16, 4, 4, 2),
      make(1, 2048, 4, false, DType::bf16, DType::bf16, 8, 1, 3, 1),  // kept rows and sigmoids, in-kernel dw reduction
      make(1, 2048, 4, false, DType::bf16, DType::bf16, 8, 1, 2, 1),  // the default: staged, in-kernel dw reduction
      make(1, 2048, 4, false, DType::bf16, DType::bf16, 8, 1, 2, 1, 4),  // inputs evict-first (session 5's policy)
      make(1, 2048, 4, false, DType::bf16, DType::bf16, 8, 1, 2, 1, 3),  // ablation: no stores
      make(1, 2048, 4, false, DType::bf16, DType::bf16, 8, 1, 2, 1, 8),  // ablation: streamed, no math
      make(1, 2048, 4, false, DType::bf16, DType::bf16, 8, 1, 2, 1, 64),  // ablation: the launch alone
      make(1, 1536, 4, true, DType::bf16, DType::f32, 16, 2, 2, 1),   // staged, fused, shared weight (folds 4)
  });
}

TEST(GroupRmsNormGateCompile, PresetsAndSearchSpace) {
  for (const char* preset : {"ling-mini-2.0", "qwen3-30b-a3b", "deepseek-v3"}) {
    SCOPED_TRACE(preset);
    const ModelConfig m = load_model(preset);
    std::vector<detail::Specialization> specs;
    family().enumerate(m, detail::Arch::parse("sm_90a"), specs);
    ASSERT_EQ(specs.size(), 3u);
    EXPECT_EQ(specs[0].params[0], static_cast<int64_t>(m.num_attention_heads) * m.head_dim);
    EXPECT_EQ(specs[0].params[1], m.num_key_value_heads);
    for (const auto& s : specs)
      for (const auto& c : checked_search_space(s)) {
        if (c.kernel != 2) EXPECT_EQ(c.params[1] % c.config[1], 0) << "segments must divide G: " << c.describe();
        EXPECT_EQ(c.config[4], 0) << "hints are measurement points, not search-space points: " << c.describe();
      }
  }
  // Ling-mini-2.0 (dim 2048, G 4, bf16): one group (1 KiB) per warp item both ways; 4-warp CTAs forward, 8-warp CTAs
  // streaming items through TMA rings backward with dw reduced in the kernel (the fastest measured; see
  // ops/group_rms_norm_gate.cpp).
  std::vector<detail::Specialization> specs;
  family().enumerate(load_model("ling-mini-2.0"), detail::Arch::parse("sm_90a"), specs);
  EXPECT_EQ(specs[0].config[0], 4);
  EXPECT_EQ(specs[0].config[1], 1);
  EXPECT_EQ(specs[1].config[1], 1);
  EXPECT_EQ(specs[1].config[0], 8);
  EXPECT_EQ(specs[1].config[2], 2);
  EXPECT_EQ(specs[1].config[3], 1);  // dw reduced in the backward kernel (cooperative launch)
  EXPECT_EQ(specs[1].config[4], 0);  // default L2 policies (inputs evict-first, plain stores)
  EXPECT_EQ(family().dynamic_smem_bytes(specs[1]), 8 * 3 * (3 * 512 * 2 + 8));  // 3 slots of x, gate, dy a warp
}

// ---- argument errors --------------------------------------------------------------------------------------------

class GroupRmsNormGateErrors : public ::testing::Test {
 protected:
  static constexpr int64_t B = 2, S = 24, dim = 512;
  void fwd() { group_rms_norm_gate_fwd(rt, x, gate, weight, out, opts, nullptr); }
  void bwd() { group_rms_norm_gate_bwd(rt, dy, x, gate, weight, dx, dgate, dweight, opts, workspace, nullptr); }
  void use_plain_layout() {
    opts.transpose = false;
    for (TensorRef* t : {&gate, &out, &dy, &dgate}) *t = TensorRef::contiguous(t->data, DType::bf16, {B, S, dim});
  }

  Runtime rt{RuntimeOptions{.memory_only = true}};
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {B, S, dim});
  TensorRef gate = TensorRef::contiguous(fake(1), DType::bf16, {S, B, dim});
  TensorRef weight = TensorRef::contiguous(fake(2), DType::bf16, {dim});
  TensorRef out = TensorRef::contiguous(fake(3), DType::bf16, {S, B, dim});
  TensorRef dy = TensorRef::contiguous(fake(4), DType::bf16, {S, B, dim});
  TensorRef dx = TensorRef::contiguous(fake(5), DType::bf16, {B, S, dim});
  TensorRef dgate = TensorRef::contiguous(fake(6), DType::bf16, {S, B, dim});
  TensorRef dweight = TensorRef::contiguous(fake(7), DType::f32, {dim});
  TensorRef workspace;
  GroupRmsNormGateOptions opts;  // G = 4, transpose
};

TEST_F(GroupRmsNormGateErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(fwd());
  EXPECT_REACHES_DEVICE(bwd());
}
TEST_F(GroupRmsNormGateErrors, ValidVariantsReachTheDevice) {
  use_plain_layout();
  weight = TensorRef::contiguous(fake(2), DType::f32, {dim / 4});  // shared weight, fp32
  dweight = TensorRef::contiguous(fake(7), DType::f32, {dim / 4});
  x.strides = {S * 2 * dim, 2 * dim, 1};  // a slice of a wider buffer
  EXPECT_REACHES_DEVICE(fwd());
  EXPECT_REACHES_DEVICE(bwd());
}
TEST_F(GroupRmsNormGateErrors, OddSequenceLengthIsAccepted) {  // linghe's backward needs S % 8 == 0; kiln does not
  const int64_t s = 37;
  x = TensorRef::contiguous(fake(0), DType::bf16, {3, s, dim});
  gate = out = TensorRef::contiguous(fake(1), DType::bf16, {s, 3, dim});
  out.data = fake(3);
  EXPECT_REACHES_DEVICE(fwd());
}
TEST_F(GroupRmsNormGateErrors, StridesOfUnitDimsAreIgnored) {  // frameworks leave any stride on a dim of extent 1
  x = TensorRef::contiguous(fake(0), DType::bf16, {1, S, dim});
  x.strides[0] = 5;
  gate = TensorRef::contiguous(fake(1), DType::bf16, {S, 1, dim});
  gate.strides[1] = 1;
  out = TensorRef::contiguous(fake(3), DType::bf16, {S, 1, dim});
  EXPECT_REACHES_DEVICE(fwd());
}
TEST_F(GroupRmsNormGateErrors, EmptyInputLaunchesNothing) {
  x = TensorRef::contiguous(fake(0), DType::bf16, {0, S, dim});
  gate = TensorRef::contiguous(fake(1), DType::bf16, {S, 0, dim});
  out = TensorRef::contiguous(fake(3), DType::bf16, {S, 0, dim});
  EXPECT_NO_THROW(fwd());
}

TEST_F(GroupRmsNormGateErrors, GroupsThatDoNotDivide) {
  for (int g : {0, -2, 3, 5, 1024}) {
    opts.groups = g;
    EXPECT_THROW_NAMING(fwd(), "groups", InvalidArgument);
    EXPECT_THROW_NAMING(bwd(), "groups", InvalidArgument);
  }
}
TEST_F(GroupRmsNormGateErrors, GroupTooLarge) {
  const int64_t big = 32768;
  x = TensorRef::contiguous(fake(0), DType::bf16, {1, 1, big});
  gate = out = TensorRef::contiguous(fake(1), DType::bf16, {1, 1, big});
  weight = TensorRef::contiguous(fake(2), DType::bf16, {big});
  opts.groups = 1;
  EXPECT_THROW_NAMING(fwd(), "groups", InvalidArgument);
}
TEST_F(GroupRmsNormGateErrors, WrongGateLayout) {
  gate = TensorRef::contiguous(fake(1), DType::bf16, {B, S, dim});  // [B, S, dim] with transpose = true
  EXPECT_THROW_NAMING(fwd(), "gate", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "gate", ShapeMismatchError);
  use_plain_layout();
  gate = TensorRef::contiguous(fake(1), DType::bf16, {S, B, dim});  // [S, B, dim] with transpose = false
  EXPECT_THROW_NAMING(fwd(), "gate", ShapeMismatchError);
  gate = TensorRef::contiguous(fake(1), DType::bf16, {B, S, dim / 2});
  EXPECT_THROW_NAMING(fwd(), "gate", ShapeMismatchError);
  gate = TensorRef::contiguous(fake(1), DType::bf16, {B * S, dim});
  EXPECT_THROW_NAMING(fwd(), "gate", ShapeMismatchError);
}
TEST_F(GroupRmsNormGateErrors, WrongOutputLayouts) {
  out = TensorRef::contiguous(fake(3), DType::bf16, {B, S, dim});
  EXPECT_THROW_NAMING(fwd(), "out", ShapeMismatchError);
  dy = TensorRef::contiguous(fake(4), DType::bf16, {B, S, dim});
  EXPECT_THROW_NAMING(bwd(), "dy", ShapeMismatchError);
  dy = TensorRef::contiguous(fake(4), DType::bf16, {S, B, dim});
  dx = TensorRef::contiguous(fake(5), DType::bf16, {S, B, dim});  // dx takes x's layout
  EXPECT_THROW_NAMING(bwd(), "dx", ShapeMismatchError);
  dx = TensorRef::contiguous(fake(5), DType::bf16, {B, S, dim});
  dgate = TensorRef::contiguous(fake(6), DType::bf16, {B, S, dim});
  EXPECT_THROW_NAMING(bwd(), "dgate", ShapeMismatchError);
}
TEST_F(GroupRmsNormGateErrors, WeightShape) {
  for (int64_t n : {dim / 2, dim / 8, dim + 1}) {  // neither dim nor dim/G = 128
    weight = TensorRef::contiguous(fake(2), DType::bf16, {n});
    EXPECT_THROW_NAMING(fwd(), "weight", ShapeMismatchError);
  }
  weight = TensorRef::contiguous(fake(2), DType::bf16, {4, dim / 4});
  EXPECT_THROW_NAMING(fwd(), "weight", ShapeMismatchError);
  weight = TensorRef::contiguous(fake(2), DType::bf16, {dim});
  dweight = TensorRef::contiguous(fake(7), DType::f32, {dim / 4});  // must match weight
  EXPECT_THROW_NAMING(bwd(), "dweight", ShapeMismatchError);
}
TEST_F(GroupRmsNormGateErrors, NonUnitInnerStride) {
  x.strides = {S * dim * 2, dim * 2, 2};
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {B, S, dim});
  gate.strides = {B * dim * 2, dim * 2, 2};
  EXPECT_THROW_NAMING(fwd(), "gate", ShapeMismatchError);
  gate = TensorRef::contiguous(fake(1), DType::bf16, {S, B, dim});
  out.strides = {B * dim * 2, dim * 2, 2};
  EXPECT_THROW_NAMING(fwd(), "out", ShapeMismatchError);
  dgate.strides = {B * dim * 2, dim * 2, 2};
  EXPECT_THROW_NAMING(bwd(), "dgate", ShapeMismatchError);
  dgate = TensorRef::contiguous(fake(6), DType::bf16, {S, B, dim});
  dx.strides = {S * dim * 2, dim * 2, 2};
  EXPECT_THROW_NAMING(bwd(), "dx", ShapeMismatchError);
  dx = TensorRef::contiguous(fake(5), DType::bf16, {B, S, dim});
  weight.strides = {2};
  EXPECT_THROW_NAMING(bwd(), "weight", ShapeMismatchError);
}
TEST_F(GroupRmsNormGateErrors, MisalignedRowsAndPointers) {
  x.strides = {S * (dim + 4), dim + 4, 1};
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
  x = TensorRef::contiguous(fake(0), DType::bf16, {B, S, dim});
  gate.data = static_cast<char*>(fake(1)) + 4;
  EXPECT_THROW_NAMING(fwd(), "gate", InvalidArgument);
  gate.data = fake(1);
  out.data = nullptr;
  EXPECT_THROW_NAMING(fwd(), "out", InvalidArgument);
  out.data = fake(3);
  weight.data = static_cast<char*>(fake(2)) + 2;
  EXPECT_THROW_NAMING(fwd(), "weight", InvalidArgument);
}
TEST_F(GroupRmsNormGateErrors, UnsupportedDtypes) {
  for (DType d : {DType::e4m3, DType::i32, DType::u8}) {
    x.dtype = d;
    EXPECT_THROW_NAMING(fwd(), "x", UnsupportedDtypeError);
    x.dtype = DType::bf16;
    weight.dtype = d;
    EXPECT_THROW_NAMING(fwd(), "weight", UnsupportedDtypeError);
    weight.dtype = DType::bf16;
  }
  gate.dtype = DType::f16;  // gate and outputs take x's dtype
  EXPECT_THROW_NAMING(fwd(), "gate", UnsupportedDtypeError);
  gate.dtype = DType::bf16;
  out.dtype = DType::f32;
  EXPECT_THROW_NAMING(fwd(), "out", UnsupportedDtypeError);
  dgate.dtype = DType::f32;
  EXPECT_THROW_NAMING(bwd(), "dgate", UnsupportedDtypeError);
  dgate.dtype = DType::bf16;
  dweight.dtype = DType::bf16;  // fp32 only
  EXPECT_THROW_NAMING(bwd(), "dweight", UnsupportedDtypeError);
  dweight.dtype = DType::f32;
  workspace = TensorRef::contiguous(fake(8), DType::bf16, {1024});
  EXPECT_THROW_NAMING(bwd(), "workspace", UnsupportedDtypeError);
}
TEST_F(GroupRmsNormGateErrors, OverlappingOutputRows) {
  out.strides = {0, dim, 1};  // every position writes the same B rows
  EXPECT_THROW_NAMING(fwd(), "out", InvalidArgument);
  out = TensorRef::contiguous(fake(3), DType::bf16, {S, B, dim});
  dgate.strides = {B * dim, dim / 2, 1};
  EXPECT_THROW_NAMING(bwd(), "dgate", InvalidArgument);
  dgate = TensorRef::contiguous(fake(6), DType::bf16, {S, B, dim});
  dx.strides = {dim, dim, 1};
  EXPECT_THROW_NAMING(bwd(), "dx", InvalidArgument);
}
TEST_F(GroupRmsNormGateErrors, Eps) {
  for (float e : {-1.0f, std::nanf(""), INFINITY}) {
    opts.eps = e;
    EXPECT_THROW_NAMING(fwd(), "eps", InvalidArgument);
    EXPECT_THROW_NAMING(bwd(), "eps", InvalidArgument);
  }
}
TEST_F(GroupRmsNormGateErrors, NegativeDims) {  // a negative batch count once reached the launch as a huge grid
  x = TensorRef::contiguous(fake(0), DType::bf16, {-B, S, dim});
  for (TensorRef* t : {&gate, &out, &dy, &dgate}) t->shape[1] = -B;
  dx.shape[0] = -B;
  EXPECT_THROW_NAMING(fwd(), "x", ShapeMismatchError);
  EXPECT_THROW_NAMING(bwd(), "x", ShapeMismatchError);
}
TEST_F(GroupRmsNormGateErrors, WarpItemsBeyondInt32) {  // B·S·groups warp items index with 32-bit ints
  const int64_t b = int64_t{1} << 14, s = int64_t{1} << 15;  // 2^29 tokens × 4 groups = 2^31
  x = TensorRef::contiguous(fake(0), DType::bf16, {b, s, dim});
  dx = TensorRef::contiguous(fake(5), DType::bf16, {b, s, dim});
  for (TensorRef* t : {&gate, &out, &dy, &dgate}) *t = TensorRef::contiguous(t->data, DType::bf16, {s, b, dim});
  EXPECT_THROW_NAMING(fwd(), "x", InvalidArgument);
  EXPECT_THROW_NAMING(bwd(), "x", InvalidArgument);
}

}  // namespace
}  // namespace kiln::test
