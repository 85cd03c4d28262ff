// tests/fp4_moe_import_test.cpp — the host importers of FP4 MoE weights (include/kiln/ops/fp4_moe_import.hpp; spec
// fp4-moe.md §6.3–§6.4): TRT-LLM-gen's row shuffle, gated interleave and 128×4 scale swizzle checked at positions
// worked out by hand from the spec's formulas, export∘import the identity over formats, row blocks, padded scale
// rows / columns and biases; the gpt-oss de-interleave and w1 / w3 stacking by hand; every argument error.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kiln/ops/fp4_moe_import.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

// A tensor set whose bytes name their place: code byte (e, r, b) = 3e + 5r + 7b, scale byte (e, r, c) = 11e + 13r + c,
// bias (e, r) = 1000e + r.
struct Set {
  Fp4HostShape s;
  std::vector<uint8_t> codes, scales;
  std::vector<float> bias;
  explicit Set(Fp4HostShape sh, bool with_bias = true) : s(sh) {
    const int64_t cb = s.k / 2, C = s.k / (s.format == Fp4WeightFormat::nvfp4 ? 16 : 32);
    codes.resize(s.experts * s.rows * cb);
    scales.resize(s.experts * s.rows * C);
    for (int64_t e = 0; e < s.experts; ++e)
      for (int64_t r = 0; r < s.rows; ++r) {
        for (int64_t b = 0; b < cb; ++b) codes[(e * s.rows + r) * cb + b] = static_cast<uint8_t>(3 * e + 5 * r + 7 * b);
        for (int64_t c = 0; c < C; ++c) scales[(e * s.rows + r) * C + c] = static_cast<uint8_t>(11 * e + 13 * r + c);
        if (with_bias) bias.push_back(static_cast<float>(1000 * e + r));
      }
  }
  Fp4HostWeights in() const { return {codes.data(), scales.data(), bias.empty() ? nullptr : bias.data()}; }
  int64_t cols() const { return s.k / (s.format == Fp4WeightFormat::nvfp4 ? 16 : 32); }
};

struct Out {
  std::vector<uint8_t> codes, scales;
  std::vector<float> bias;
  Out(int64_t code_bytes, int64_t scale_bytes, int64_t bias_n)
      : codes(code_bytes, 0xEE), scales(scale_bytes, 0xEE), bias(bias_n, -1.0f) {}
  Fp4HostWeightsOut out() { return {codes.data(), scales.data(), bias.data()}; }
};

// Rows of one 32-row block, not gated: exported row d is canonical row 4·(d mod 8) + ⌊d/8⌋ (spec §6.4 step 2).
TEST(Fp4MoeImport, TrtllmRowShuffleAtHandPositions) {
  const Set x(Fp4HostShape{1, 64, 64, Fp4WeightFormat::nvfp4, false});
  Out o(x.codes.size(), fp4_moe_trtllm_scale_bytes(x.s), 64);
  fp4_moe_export_trtllm(x.in(), x.s, o.out());
  const int64_t cb = 32;
  // (exported row, canonical row): d 1 ← 4, d 8 ← 1, d 9 ← 5, d 31 ← 31, d 7 ← 28; second block d 33 ← 36.
  for (auto [d, r] : std::vector<std::pair<int, int>>{{0, 0}, {1, 4}, {8, 1}, {9, 5}, {31, 31}, {7, 28}, {33, 36}}) {
    EXPECT_EQ(o.codes[d * cb + 3], x.codes[r * cb + 3]) << "row " << d;
    EXPECT_EQ(o.bias[d], static_cast<float>(r)) << "row " << d;
  }
  // Row block 16: d ← 2·(d mod 8) + ⌊d/8⌋: d 1 ← 2, d 8 ← 1, d 15 ← 15, d 17 ← 18.
  Out o16(x.codes.size(), fp4_moe_trtllm_scale_bytes(x.s), 64);
  fp4_moe_export_trtllm(x.in(), x.s, o16.out(), 16);
  for (auto [d, r] : std::vector<std::pair<int, int>>{{1, 2}, {8, 1}, {15, 15}, {17, 18}})
    EXPECT_EQ(o16.bias[d], static_cast<float>(r)) << "row " << d;
}

// Gated: step 1 interleaves (2j ← linear j, 2j + 1 ← gate I + j), then step 2 shuffles: exported row d of 64 (I = 32)
// is interleaved row i = 4·(d mod 8) + ⌊d/8⌋ (first block), canonical i/2 or 32 + i/2.
TEST(Fp4MoeImport, TrtllmGatedInterleaveAtHandPositions) {
  const Set x(Fp4HostShape{2, 64, 32, Fp4WeightFormat::mxfp4, true});
  Out o(x.codes.size(), fp4_moe_trtllm_scale_bytes(x.s), 128);
  fp4_moe_export_trtllm(x.in(), x.s, o.out());
  // d 0 ← i 0 ← linear 0; d 8 ← i 1 ← gate 32; d 1 ← i 4 ← linear 2; d 9 ← i 5 ← gate 34; d 40 (second block,
  // in-block 8) ← i 33 ← gate 48. Expert 1 adds 1000.
  for (auto [d, r] : std::vector<std::pair<int, int>>{{0, 0}, {8, 32}, {1, 2}, {9, 34}, {40, 48}}) {
    EXPECT_EQ(o.bias[d], static_cast<float>(r)) << "row " << d;
    EXPECT_EQ(o.bias[64 + d], static_cast<float>(1000 + r)) << "expert 1 row " << d;
  }
}

// The 128×4 swizzle (§6.4 step 4) at hand-computed bytes: R 64 (padded to 128), C = 96/16 = 6 (padded to 8), so an
// expert takes 1 · 2 · 512 bytes; byte (e, r, c) at e·1024 + (c/4)·512 + (r mod 32)·16 + ((r mod 128)/32)·4 + c mod 4.
TEST(Fp4MoeImport, TrtllmScaleSwizzleAtHandOffsets) {
  const Set x(Fp4HostShape{2, 64, 96, Fp4WeightFormat::nvfp4, false});
  ASSERT_EQ(fp4_moe_trtllm_scale_bytes(x.s), 2048);
  Out o(x.codes.size(), 2048, 128);
  fp4_moe_export_trtllm(x.in(), x.s, o.out());
  const int64_t C = 6;
  auto canon = [&](int e, int r, int c) { return x.scales[(e * 64 + r) * C + c]; };
  // Exported row 0 ← canonical 0; row 1 ← 4; row 32 (second block, in-block 0) ← 32; row 33 ← 36.
  EXPECT_EQ(o.scales[0], canon(0, 0, 0));
  EXPECT_EQ(o.scales[1], canon(0, 0, 1));
  EXPECT_EQ(o.scales[16], canon(0, 4, 0));         // r 1
  EXPECT_EQ(o.scales[4], canon(0, 32, 0));         // r 32: (32 mod 128)/32 = 1 → + 4
  EXPECT_EQ(o.scales[16 + 4 + 3], canon(0, 36, 3));  // r 33, c 3
  EXPECT_EQ(o.scales[512 + 1], canon(0, 0, 5));    // c 5: (5/4)·512 + 1
  EXPECT_EQ(o.scales[1024 + 512 + 16 + 1], canon(1, 4, 5));
  EXPECT_EQ(o.scales[2], canon(0, 0, 2));
  EXPECT_EQ(o.scales[512 + 2], 0) << "padding column 6";
  EXPECT_EQ(o.scales[8], 0) << "padding row 64 (rows 64 … 127: ((r mod 128)/32)·4 = 8)";
}

// Import inverts export: over both formats, both row blocks, gated or not, several experts, padded scales, with and
// without biases; and import of a hand-built TRT-LLM tensor puts bytes back where the formulas say.
TEST(Fp4MoeImport, ImportInvertsExport) {
  for (auto f : {Fp4WeightFormat::nvfp4, Fp4WeightFormat::mxfp4})
    for (int rb : {16, 32})
      for (bool gated : {false, true})
        for (bool with_bias : {false, true}) {
          const Fp4HostShape sh{3, 160, f == Fp4WeightFormat::nvfp4 ? 208 : 224, f, gated};
          SCOPED_TRACE(::testing::Message() << "format " << static_cast<int>(f) << " rb " << rb << " gated " << gated
                                            << " bias " << with_bias);
          const Set x(sh, with_bias);
          Out t(x.codes.size(), fp4_moe_trtllm_scale_bytes(sh), with_bias ? x.bias.size() : 0);
          Fp4HostWeightsOut to = t.out();
          if (!with_bias) to.bias = nullptr;
          fp4_moe_export_trtllm(x.in(), sh, to, rb);
          EXPECT_NE(t.codes, x.codes) << "export moved nothing";
          Out back(x.codes.size(), x.scales.size(), with_bias ? x.bias.size() : 0);
          Fp4HostWeightsOut bo = back.out();
          if (!with_bias) bo.bias = nullptr;
          fp4_moe_import_trtllm({t.codes.data(), t.scales.data(), with_bias ? t.bias.data() : nullptr}, sh, bo, rb);
          EXPECT_EQ(back.codes, x.codes);
          EXPECT_EQ(back.scales, x.scales);
          if (with_bias) EXPECT_EQ(back.bias, x.bias);
        }
}

// gpt-oss: checkpoint rows (gate 0, up 0, gate 1, up 1) → canonical (up 0, up 1, gate 0, gate 1).
TEST(Fp4MoeImport, GptOssDeinterleavesGateAndUp) {
  const Set x(Fp4HostShape{2, 4, 32, Fp4WeightFormat::mxfp4, true});
  Out o(x.codes.size(), x.scales.size(), 8);
  fp4_moe_import_gpt_oss(x.in(), x.s, o.out());
  const int from[4] = {1, 3, 0, 2};
  for (int e = 0; e < 2; ++e)
    for (int r = 0; r < 4; ++r) {
      EXPECT_EQ(o.bias[e * 4 + r], static_cast<float>(1000 * e + from[r])) << e << " " << r;
      for (int b = 0; b < 16; ++b) EXPECT_EQ(o.codes[(e * 4 + r) * 16 + b], x.codes[(e * 4 + from[r]) * 16 + b]);
      EXPECT_EQ(o.scales[e * 4 + r], x.scales[e * 4 + from[r]]);
    }
}

// w1 (gate) and w3 (up) → canonical [w3; w1].
TEST(Fp4MoeImport, W1W3StackUpThenGate) {
  const Set w1(Fp4HostShape{2, 3, 64, Fp4WeightFormat::nvfp4, false}), w3(Fp4HostShape{2, 3, 64, Fp4WeightFormat::nvfp4, false});
  std::vector<uint8_t> c3 = w3.codes;
  for (auto& b : c3) b ^= 0x5A;  // tell w3 from w1
  const Fp4HostShape sh{2, 6, 64, Fp4WeightFormat::nvfp4, true};
  Out o(2 * 6 * 32, 2 * 6 * 4, 12);
  fp4_moe_import_w1_w3(w1.in(), {c3.data(), w3.scales.data(), w3.bias.data()}, sh, o.out());
  for (int e = 0; e < 2; ++e)
    for (int r = 0; r < 6; ++r) {
      const bool up = r < 3;
      const int j = up ? r : r - 3;
      const uint8_t want = up ? c3[(e * 3 + j) * 32 + 5] : w1.codes[(e * 3 + j) * 32 + 5];
      EXPECT_EQ(o.codes[(e * 6 + r) * 32 + 5], want) << e << " " << r;
      EXPECT_EQ(o.bias[e * 6 + r], static_cast<float>(1000 * e + j));
    }
}

TEST(Fp4MoeImportErrors, EachArgumentIsNamed) {
  const Set x(Fp4HostShape{1, 64, 64, Fp4WeightFormat::nvfp4, false});
  Out o(x.codes.size(), 4096, 64);
  Fp4HostShape s = x.s;
  s.rows = 48;  // not a multiple of 32
  EXPECT_THROW_NAMING(fp4_moe_export_trtllm(x.in(), s, o.out()), "shape.rows", ShapeMismatchError);
  EXPECT_THROW_NAMING(fp4_moe_import_trtllm(x.in(), x.s, o.out(), 8), "row_block", InvalidArgument);
  s = x.s;
  s.k = 72;  // not a multiple of 16
  EXPECT_THROW_NAMING(fp4_moe_import_trtllm(x.in(), s, o.out()), "shape.k", ShapeMismatchError);
  s = x.s;
  s.experts = 0;
  EXPECT_THROW_NAMING(fp4_moe_trtllm_scale_bytes(s), "shape.experts", ShapeMismatchError);
  s = x.s;
  s.format = static_cast<Fp4WeightFormat>(5);
  EXPECT_THROW_NAMING(fp4_moe_trtllm_scale_bytes(s), "shape.format", InvalidArgument);
  EXPECT_THROW_NAMING(fp4_moe_import_trtllm({nullptr, x.scales.data(), nullptr}, x.s, o.out()), "in", InvalidArgument);
  Fp4HostWeightsOut no_bias = o.out();
  no_bias.bias = nullptr;
  EXPECT_THROW_NAMING(fp4_moe_import_trtllm(x.in(), x.s, no_bias), "out.bias", InvalidArgument);
  EXPECT_THROW_NAMING(fp4_moe_import_gpt_oss(x.in(), x.s, o.out()), "shape.gated", InvalidArgument);
  s = x.s;
  s.gated = true;
  s.rows = 63;
  EXPECT_THROW_NAMING(fp4_moe_import_gpt_oss(x.in(), s, o.out()), "shape.rows", ShapeMismatchError);
  s.rows = 64;
  EXPECT_THROW_NAMING(fp4_moe_import_w1_w3(x.in(), {x.codes.data(), x.scales.data(), nullptr}, s, o.out()), "w3.bias",
                      InvalidArgument);
  s.experts = int64_t{1} << 30;
  s.rows = int64_t{1} << 20;
  EXPECT_THROW_NAMING(fp4_moe_import_gpt_oss(x.in(), s, o.out()), "shape", ShapeMismatchError);
}

}  // namespace
}  // namespace kiln::test
