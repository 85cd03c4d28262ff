// tests/fp4_moe_gemm_test.cpp — the FP4 MoE's grouped GEMM on the CPU (runs in CI without a GPU): the reference's
// number formats, the packed weight layout read back the way the kernel reads it (each thread's 16-byte code vector,
// the E2M1 → bf16 bit trick, its scale bytes, the wgmma A-fragment and the gated epilogue's row pairing), the token
// tile and ring-depth heuristics, the search space, NVRTC compiles for sm_90a of a handful of configs, and the
// argument checks of fp4_moe_gemm and fp4_moe_prepack.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kiln/fp4_moe_gemm_args.h"
#include "kiln/ops/fp4_moe.hpp"
#include "ops/fp4_moe_internal.hpp"
#include "reference/fp4_moe_gemm.hpp"
#include "runtime/family.hpp"
#include "compile_util.hpp"
#include "test_util.hpp"

namespace kiln::detail {
int fp4_moe_gemm_default_stages(int token_tile, bool gated);  // ops/fp4_moe_gemm.cpp
int fp4_moe_gemm_split(int64_t units, int64_t k_tiles, int64_t slots, int forced);
}  // namespace kiln::detail

namespace kiln::test {
namespace {

// Random canonical weights: every code, scales around 1 (nvfp4: E4M3 bytes 0x01 … 0x7E minus NaN, subnormals
// included; mxfp4: UE8M0 0, 110 … 140).
struct Canon {
  std::vector<uint8_t> codes, scales;
};
Canon random_canon(int64_t E, int64_t R, int64_t K, int format, uint64_t seed) {
  Canon c;
  c.codes.resize(E * R * K / 2);
  c.scales.resize(E * R * K / (format == 0 ? 16 : 32));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
  auto next = [&] { return (s = s * 6364136223846793005ull + 1442695040888963407ull) >> 33; };
  for (auto& b : c.codes) b = static_cast<uint8_t>(next());
  for (size_t i = 0; i < c.scales.size(); ++i) {
    if (format == 0) {
      uint8_t v = static_cast<uint8_t>(next() % 0x7E + 1);  // 0x01 … 0x7E
      if (next() % 2) v |= 0x80;                              // negative scales decode too
      c.scales[i] = v;
    } else {
      c.scales[i] = i % 97 == 0 ? 0 : static_cast<uint8_t>(110 + next() % 31);
    }
  }
  return c;
}

double bf16_bits_value(uint32_t b) { return bf16_to_float(static_cast<uint16_t>(b)); }

// ---- reference ------------------------------------------------------------------------------------------------

TEST(Fp4MoeGemmReference, E2m1AndScaleValues) {
  const double want[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
  for (int c = 0; c < 16; ++c) EXPECT_EQ(ref::e2m1_value(static_cast<uint8_t>(c)), want[c]) << c;
  EXPECT_EQ(ref::fp4_scale_value(0x38, 0), 1.0);
  EXPECT_EQ(ref::fp4_scale_value(0x7E, 0), 448.0);
  EXPECT_EQ(ref::fp4_scale_value(0x01, 0), std::ldexp(1.0, -9));
  EXPECT_EQ(ref::fp4_scale_value(127, 1), 1.0);
  EXPECT_EQ(ref::fp4_scale_value(0, 1), std::ldexp(1.0, -127));
  // One row of K = 32: codes 0x21 (elements 1, 2), scales 2 (nvfp4 0x40) and 0.5 (0x30).
  std::vector<uint8_t> codes(16, 0x21), sc = {0x40, 0x30};
  const auto w = ref::fp4_dequant(codes, sc, 1, 1, 32, 0);
  EXPECT_EQ(w[0], 1.0);   // 0.5 · 2
  EXPECT_EQ(w[1], 2.0);   // 1 · 2
  EXPECT_EQ(w[16], 0.25);
  EXPECT_EQ(w[17], 0.5);
}

TEST(Fp4MoeGemmReference, GemmEpiloguesByHand) {
  // E = 1, K = 32, gated R = 32 (I = 16): W rows j = 1 for linear j, gate rows all 2 (as 1 · 2 scales) → acc = Σx.
  ref::Fp4MoeGemmRef p;
  p.E = 1;
  p.R = 32;
  p.K = 32;
  p.gemm1 = p.gated = true;
  p.activation = 3;
  p.offsets = {0, 16};
  p.counts = {1};
  p.rows_cap = 16;
  std::vector<double> w(32 * 32, 0.0);
  for (int j = 0; j < 16; ++j) w[j * 32] = 1.0, w[(16 + j) * 32] = 2.0;  // k = 0 only
  std::vector<float> act(16 * 32, 0.0f);
  act[0] = 0.5f;  // row 0: x0 = 0.5, x1 = 1
  const auto out = ref::fp4_moe_gemm(p, w, act);
  const double silu1 = 1.0 / (1.0 + std::exp(-1.0));
  EXPECT_EQ(out[0], bf16_to_float(float_to_bf16(static_cast<float>(silu1 * 0.5))));
  EXPECT_TRUE(std::isnan(out[16]));  // row 1: past the count, not written
  p.alpha = {2.0f};
  p.beta = {1.0f};
  p.limit = {0.75f};
  p.scale_a = {2.0f};  // x0 = 1, x1 = 2 → g = 0.75, l = 0.75
  p.scale_b = {3.0f};
  const auto o2 = ref::fp4_moe_gemm(p, w, act);
  const double h = 0.75 / (1 + std::exp(-1.5)) * 1.75 * 3.0 / 2.0;
  EXPECT_EQ(o2[0], bf16_to_float(float_to_bf16(static_cast<float>(h))));
}

// The kernel's dequantization, bf16 arithmetic emulated (each product of two bf16 values is exact in double, then
// rounded once to bf16), exhaustively: the bit trick's pair is e2m1·2^−126 (code 1 a bf16 subnormal); NVFP4: sf·2^106
// is an exact bf16 for every E4M3 byte and t·(sf·2^106) = e2m1·sf·2^−20 exactly; MXFP4: t·2^(s−1) = e2m1·2^(s−127)
// for every byte 0 … 127 (the folded path), (t·2^126)·2^(s−127) for every byte 1 … 252 (253, 254 overflow bf16 at
// code 6 — no real checkpoint).
TEST(Fp4MoeGemmDequant, EveryCodeTimesEveryScaleIsExact) {
  auto bf16_mul = [](double a, double b) { return static_cast<double>(bf16_to_float(float_to_bf16(static_cast<float>(a * b)))); };
  for (uint32_t code = 0; code < 16; ++code) {
    const uint32_t q = code << 12, t = (q & 0x80008000u) | ((q >> 6) & 0x01C001C0u);
    const double tv = bf16_bits_value(t & 0xFFFF), e2m1 = ref::e2m1_value(static_cast<uint8_t>(code));
    ASSERT_EQ(tv, std::ldexp(e2m1, -126)) << code;
    for (int b = 0; b < 256; ++b) {
      if (e4m3_is_nan(static_cast<uint8_t>(b))) continue;
      const double sf = e4m3_to_float(static_cast<uint8_t>(b));
      const float up = static_cast<float>(sf) * 8.1129638414606682e31f;
      const double sup = bf16_to_float(float_to_bf16(up));
      ASSERT_EQ(sup, std::ldexp(sf, 106)) << "E4M3 byte " << b;
      ASSERT_EQ(bf16_mul(tv, sup), std::ldexp(e2m1 * sf, -20)) << "code " << code << " E4M3 byte " << b;
    }
    const double e = bf16_mul(tv, std::ldexp(1.0, 126));
    ASSERT_EQ(e, e2m1) << code;
    for (int s = 0; s <= 127; ++s) {  // the folded path: one multiply by 2^(s − 1) (bits (s + 126) << 7)
      const double f = bf16_bits_value(static_cast<uint32_t>(s + 126) << 7);
      ASSERT_EQ(f, std::ldexp(1.0, s - 1));
      ASSERT_EQ(bf16_mul(tv, f), std::ldexp(e2m1, s - 127)) << "folded: code " << code << " UE8M0 " << s;
    }
    for (int s = 1; s <= 252; ++s) {
      const double sc = bf16_bits_value(static_cast<uint32_t>(s) << 7);
      ASSERT_EQ(sc, std::ldexp(1.0, s - 127));
      ASSERT_EQ(bf16_mul(e, sc), std::ldexp(e2m1, s - 127)) << "code " << code << " UE8M0 " << s;
    }
  }
  EXPECT_EQ(bf16_bits_value(0x40), std::ldexp(1.0, -127));  // the kernel's pair for UE8M0 byte 0
}

// ---- the packed layout, read back as the kernel reads it ----------------------------------------------------------

// For every chunk, consumer thread, half tile, k16 step and A register: the word the thread's 16-byte load holds,
// the bf16 pair the bit trick makes of it (× 2^126, × the scale pair built from the thread's scale bytes), must be
// the canonical weights of the fragment's (row, k) pair — rows g = lane/4 (+8 for odd registers), k = 16·step +
// 2·(lane % 4) (+8 for registers 2, 3) — where the packed row maps to a canonical row the way the epilogue reads the
// accumulator (gated: row half 0 = the linear row j, half 1 = the gate row I + j, j = 64·rb + 32·wg + 8·warp + g % 8).
void expect_layout_reads_back(int64_t E, int64_t R, int64_t K, int format, bool gated) {
  SCOPED_TRACE(testing::Message() << "E " << E << " R " << R << " K " << K << " format " << format << " gated "
                                  << gated);
  const Canon c = random_canon(E, R, K, format, mix_seed({uint64_t(E), uint64_t(R), uint64_t(K), uint64_t(format)}));
  const std::vector<double> w = ref::fp4_dequant(c.codes, c.scales, E, R, K, format);
  const std::vector<uint8_t> pk = ref::fp4_moe_prepack(c.codes, c.scales, E, R, K, format, gated);
  const Fp4WeightFormat f = format == 0 ? Fp4WeightFormat::nvfp4 : Fp4WeightFormat::mxfp4;
  ASSERT_EQ(static_cast<int64_t>(pk.size()), fp4_moe_packed_bytes(E, R, K, f));
  const int64_t RB = (R + 127) / 128, KT = (K + 127) / 128;
  const int64_t chunk = format == 0 ? Fp4MoeChunk<0>::kBytes : Fp4MoeChunk<1>::kBytes;
  const int64_t I = R / 2;
  int64_t bad = 0, checked = 0, nonzero = 0;
  std::string first;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t rb = 0; rb < RB; ++rb)
      for (int64_t kt = 0; kt < KT; ++kt) {
        const uint8_t* ch = pk.data() + ((e * RB + rb) * KT + kt) * chunk;
        for (int wg = 0; wg < 2; ++wg)
          for (int warp = 0; warp < 4; ++warp)
            for (int lane = 0; lane < 32; ++lane)
              for (int h = 0; h < 2; ++h)
                for (int m = 0; m < 4; ++m) {
                  const int step = 4 * h + m;
                  uint32_t word;
                  std::memcpy(&word, ch + 16 * (256 * wg + 128 * h + 32 * warp + lane) + 4 * m, 4);
                  for (int j = 0; j < 4; ++j) {
                    const uint32_t s = word << (4 * j), t = (s & 0x80008000u) | ((s >> 6) & 0x01C001C0u);
                    const int hh = j & 1;
                    double scale;
                    if (format == 0) {
                      scale = e4m3_to_float(ch[8192 + 16 * (32 * wg + 8 * warp + lane / 4) + 2 * step + hh]);
                    } else {
                      const int sb = ch[8192 + 8 * (32 * wg + 8 * warp + lane / 4) + 2 * (step / 2) + hh];
                      scale = sb == 0 ? std::ldexp(1.0, -127) : std::ldexp(1.0, sb - 127);
                    }
                    const int g = lane / 4 + 8 * hh;
                    const int64_t j_out = rb * 64 + wg * 32 + 8 * warp + lane / 4;
                    const int64_t p = rb * 128 + wg * 64 + 16 * warp + g;
                    const int64_t row = gated ? (j_out < I ? (hh == 0 ? j_out : I + j_out) : -1) : (p < R ? p : -1);
                    for (int odd = 0; odd < 2; ++odd) {
                      const int64_t k = kt * 128 + 16 * step + 2 * (lane % 4) + 8 * (j / 2) + odd;
                      const double got =
                          bf16_bits_value(odd ? t >> 16 : t & 0xFFFF) * std::ldexp(1.0, 126) * scale;
                      const double want = row >= 0 && k < K ? w[(e * R + row) * K + k] : 0.0;
                      ++checked;
                      nonzero += want != 0;
                      if (got != want && !(got == 0 && want == 0)) {
                        if (bad++ < 5)
                          first += "\n  e " + std::to_string(e) + " row " + std::to_string(row) + " k " +
                                   std::to_string(k) + ": " + std::to_string(got) + " vs " + std::to_string(want);
                      }
                    }
                  }
                }
      }
  EXPECT_EQ(bad, 0) << bad << " of " << checked << " fragment values differ:" << first;
  EXPECT_GT(nonzero, checked / 4);
  EXPECT_EQ(checked, E * RB * KT * 128 * 128);
}

TEST(Fp4MoeGemmLayout, PackedNvfp4ReadsBackAsTheCanonicalWeights) {
  expect_layout_reads_back(2, 256, 256, 0, false);
  expect_layout_reads_back(2, 256, 256, 0, true);
  expect_layout_reads_back(1, 200, 160, 0, false);  // a partial row block and K tile
  expect_layout_reads_back(1, 80, 144, 0, true);    // I = 40: padded to 64; K = 144
}

TEST(Fp4MoeGemmLayout, PackedMxfp4ReadsBackAsTheCanonicalWeights) {
  expect_layout_reads_back(2, 256, 256, 1, false);
  expect_layout_reads_back(2, 384, 384, 1, true);
  expect_layout_reads_back(1, 136, 224, 1, false);
  expect_layout_reads_back(1, 176, 96, 1, true);  // I = 88, K = 96 (< one tile)
}

TEST(Fp4MoeGemmLayout, PackedBytes) {
  EXPECT_EQ(fp4_moe_packed_bytes(32, 4096, 7168, Fp4WeightFormat::nvfp4), 32LL * 32 * 56 * 9216);
  EXPECT_EQ(fp4_moe_packed_bytes(128, 5760, 2880, Fp4WeightFormat::mxfp4), 128LL * 45 * 23 * 8704);
  EXPECT_EQ(fp4_moe_packed_bytes(0, 128, 128, Fp4WeightFormat::mxfp4), 0);
  // Overhead over the canonical 4.5 / 4.25 bits: none when rows and K are multiples of 128.
  EXPECT_EQ(fp4_moe_packed_bytes(1, 128, 128, Fp4WeightFormat::nvfp4), 128 * 64 + 128 * 8);
  EXPECT_EQ(fp4_moe_packed_bytes(1, 128, 128, Fp4WeightFormat::mxfp4), 128 * 64 + 128 * 4);
}

// ---- heuristics, family ---------------------------------------------------------------------------------------------

TEST(Fp4MoeGemmFamily, TokenTileByRowsPerExpert) {
  Runtime rt{cpu_options()};
  EXPECT_EQ(detail::fp4_moe_gemm_token_tile(rt, 0, 32), 16);
  EXPECT_EQ(detail::fp4_moe_gemm_token_tile(rt, 4, 128), 16);
  EXPECT_EQ(detail::fp4_moe_gemm_token_tile(rt, 1024, 32), 32);
  EXPECT_EQ(detail::fp4_moe_gemm_token_tile(rt, 2048, 32), 64);
  EXPECT_EQ(detail::fp4_moe_gemm_token_tile(rt, 8192, 32), 128);
  EXPECT_THROW_NAMING(detail::fp4_moe_gemm_token_tile(rt, 16, 0), "experts", InvalidArgument);
}

const detail::FamilyDef& family() { return registered_family("fp4_moe_gemm"); }

detail::Specialization make(int N, int format, int act, int stages = 0) {
  detail::Specialization s;
  s.family = &family();
  s.arch = detail::Arch::parse("sm_90a");
  s.kernel = 0;
  s.params[0] = N;
  s.params[1] = format;
  s.params[2] = act;
  s.config[0] = stages > 0 ? stages : detail::fp4_moe_gemm_default_stages(N, act == 3 || act == 4);
  return s;
}

detail::Specialization make_prepack(int format, bool gated) {
  detail::Specialization s;
  s.family = &family();
  s.arch = detail::Arch::parse("sm_90a");
  s.kernel = 1;
  s.params[1] = format;
  s.params[2] = gated ? 1 : 0;
  return s;
}

TEST(Fp4MoeGemmFamily, DefaultStagesAndSearchSpaceFitSharedMemory) {
  EXPECT_EQ(detail::fp4_moe_gemm_default_stages(128, false), 4);
  EXPECT_EQ(detail::fp4_moe_gemm_default_stages(128, true), 5);  // smaller staging buffers (32 columns)
  EXPECT_EQ(detail::fp4_moe_gemm_default_stages(64, true), 8);
  EXPECT_EQ(detail::fp4_moe_gemm_default_stages(16, false), 5);  // three CTAs an SM
  EXPECT_EQ(detail::fp4_moe_gemm_default_stages(16, true), 5);
  EXPECT_EQ(detail::fp4_moe_gemm_default_stages(32, true), 6);  // two CTAs an SM
  for (int N : {16, 32, 64, 128})
    for (int act : {3, 7}) {
      const auto space = checked_search_space(make(N, 0, act));
      EXPECT_GE(space.size(), 2u);
    }
}

// Split-K by the grid: gpt-oss at one token (132 SMs × 3 CTAs of N = 16) splits GEMM1's 180 tiles in 2 and GEMM2's
// 92 in 4; a grid that fills the GPU, or too few K tiles, does not split; a forced split is clamped to the K tiles.
TEST(Fp4MoeGemmFamily, SplitKByTheGrid) {
  EXPECT_EQ(detail::fp4_moe_gemm_split(180, 23, 396, 0), 2);
  EXPECT_EQ(detail::fp4_moe_gemm_split(92, 23, 396, 0), 4);
  EXPECT_EQ(detail::fp4_moe_gemm_split(1216, 56, 396, 0), 1);
  EXPECT_EQ(detail::fp4_moe_gemm_split(4, 7, 396, 0), 1);   // 7 K tiles: no rank would get 4
  EXPECT_EQ(detail::fp4_moe_gemm_split(4, 8, 396, 0), 2);
  EXPECT_EQ(detail::fp4_moe_gemm_split(4, 64, 396, 0), 4);  // at most 4
  EXPECT_EQ(detail::fp4_moe_gemm_split(1216, 56, 396, 4), 4);
  EXPECT_EQ(detail::fp4_moe_gemm_split(10, 1, 396, 4), 1);
  EXPECT_EQ(detail::fp4_moe_gemm_split(10, 3, 396, 4), 2);
}

// A handful of configs (each ≈ 1 s of NVRTC): every token tile, both formats, every epilogue, both prepack kinds.
TEST(Fp4MoeGemmCompile, KernelConfigsCompileForSm90a) {
  expect_compiles({make(128, 0, 3), make(64, 1, 7), make(32, 0, 6), make(16, 1, 4), make(128, 1, 7, 3),
                   make_prepack(0, true), make_prepack(1, false)});
}

// ---- argument checks --------------------------------------------------------------------------------------------

class Fp4MoeGemmErrors : public ::testing::Test {
 protected:
  Fp4MoeGemmErrors() {
    c.w.data = fake(0);
    c.w.experts = 4;
    c.w.rows = 512;
    c.w.k = 256;
    c.w.format = Fp4WeightFormat::nvfp4;
    c.w.gated = true;
    c.act = fake(1);
    c.act_ld = 256;
    c.expert_offsets = static_cast<const int32_t*>(fake(2));
    c.expert_counts = static_cast<const int32_t*>(fake(3));
    c.rows_cap = 300;
    c.token_tile = 64;
    c.gemm1 = true;
    c.activation = Fp4MoeActivation::Swiglu;
    c.out = fake(4);
    c.out_ld = 256;
    base = c;
  }
  void call() { detail::fp4_moe_gemm(rt, c, nullptr); }
  Runtime rt{cpu_options()};
  detail::Fp4MoeGemmCall c, base;
};

TEST_F(Fp4MoeGemmErrors, ValidCallsReachTheDevice) {
  EXPECT_REACHES_DEVICE(call());
  c.alpha = c.beta = c.limit = static_cast<const float*>(fake(5));
  EXPECT_REACHES_DEVICE(call());
  c.alpha = c.beta = c.limit = nullptr;
  c.w.gated = false;
  c.activation = Fp4MoeActivation::Relu2;
  c.out_ld = 512;
  EXPECT_REACHES_DEVICE(call());
  c.gemm1 = false;  // GEMM2: the activation is ignored
  c.w.format = Fp4WeightFormat::mxfp4;
  c.w.k = 2880;
  c.act_ld = 2880;
  c.token_tile = 16;
  EXPECT_REACHES_DEVICE(call());
}

TEST_F(Fp4MoeGemmErrors, RowsCapZeroIsANoOp) {
  c.rows_cap = 0;
  c.act = nullptr;
  c.out = nullptr;
  EXPECT_NO_THROW(call());
}

TEST_F(Fp4MoeGemmErrors, EachFieldIsNamed) {
  c.token_tile = 48;
  EXPECT_THROW_NAMING(call(), "token_tile", InvalidArgument);
  c = base;
  c.act_ld = 250;
  EXPECT_THROW_NAMING(call(), "act_ld", InvalidArgument);
  c = base;
  c.out_ld = 255;
  EXPECT_THROW_NAMING(call(), "out_ld", InvalidArgument);
  c = base;
  c.w.k = 40;  // not a multiple of the nvfp4 block
  EXPECT_THROW_NAMING(call(), "w", ShapeMismatchError);
  c = base;
  c.w.rows = 520;  // I = 260: not a multiple of 8
  EXPECT_THROW_NAMING(call(), "w", ShapeMismatchError);
  c = base;
  c.w.format = static_cast<Fp4WeightFormat>(3);
  EXPECT_THROW_NAMING(call(), "w.format", InvalidArgument);
  c = base;
  c.activation = Fp4MoeActivation::Relu2;  // non-gated activation on gated weights
  EXPECT_THROW_NAMING(call(), "w", InvalidArgument);
  c = base;
  c.activation = static_cast<Fp4MoeActivation>(0);
  EXPECT_THROW_NAMING(call(), "activation", InvalidArgument);
  c = base;
  c.gemm1 = false;  // GEMM2 with gated weights
  EXPECT_THROW_NAMING(call(), "w", InvalidArgument);
  c = base;
  c.activation = Fp4MoeActivation::Geglu;
  c.alpha = static_cast<const float*>(fake(5));
  EXPECT_THROW_NAMING(call(), "alpha", InvalidArgument);
  c = base;
  c.activation = Fp4MoeActivation::Geglu;
  c.limit = static_cast<const float*>(fake(5));
  EXPECT_THROW_NAMING(call(), "limit", InvalidArgument);
  c = base;
  c.rows_cap = -1;
  EXPECT_THROW_NAMING(call(), "rows_cap", InvalidArgument);
  c = base;
  c.split = 3;
  EXPECT_THROW_NAMING(call(), "split", InvalidArgument);
  c = base;
  c.act = nullptr;
  EXPECT_THROW_NAMING(call(), "act", InvalidArgument);
  c = base;
  c.out = static_cast<char*>(fake(4)) + 8;
  EXPECT_THROW_NAMING(call(), "out", InvalidArgument);
  c = base;
  c.expert_offsets = nullptr;
  EXPECT_THROW_NAMING(call(), "expert_offsets", InvalidArgument);
  c = base;
  c.expert_counts = nullptr;
  EXPECT_THROW_NAMING(call(), "expert_counts", InvalidArgument);
  c = base;
  c.w.data = static_cast<char*>(fake(0)) + 16;
  EXPECT_THROW_NAMING(call(), "w", InvalidArgument);
}

TEST(Fp4MoePrepackErrors, EachTensorIsNamed) {
  Runtime rt{cpu_options()};
  const int64_t E = 2, R = 256, K = 512;
  const int64_t bytes = fp4_moe_packed_bytes(E, R, K, Fp4WeightFormat::nvfp4);
  TensorRef w = TensorRef::contiguous(fake(0), DType::u8, {E, R, K / 2});
  TensorRef s = TensorRef::contiguous(fake(1), DType::e4m3, {E, R, K / 16});
  TensorRef p = TensorRef::contiguous(fake(2), DType::u8, {bytes});
  auto call = [&](Fp4WeightFormat f, bool gated) { fp4_moe_prepack(rt, w, s, f, gated, p, nullptr); };
  EXPECT_REACHES_DEVICE(call(Fp4WeightFormat::nvfp4, true));
  EXPECT_THROW_NAMING(call(Fp4WeightFormat::mxfp4, true), "scales", ShapeMismatchError);  // K/32 scales expected
  EXPECT_THROW_NAMING(call(static_cast<Fp4WeightFormat>(2), true), "format", InvalidArgument);
  w = TensorRef::contiguous(fake(0), DType::bf16, {E, R, K / 2});
  EXPECT_THROW_NAMING(call(Fp4WeightFormat::nvfp4, true), "weights", UnsupportedDtypeError);
  w = TensorRef::contiguous(fake(0), DType::u8, {E, 24, K / 2});  // gated: 2I = 24, I = 12 not a multiple of 8
  s = TensorRef::contiguous(fake(1), DType::e4m3, {E, 24, K / 16});
  EXPECT_THROW_NAMING(call(Fp4WeightFormat::nvfp4, true), "weights", ShapeMismatchError);
  w = TensorRef::contiguous(fake(0), DType::u8, {E, R, K / 2});
  s = TensorRef::contiguous(fake(1), DType::e4m3, {E, R, K / 16});
  p = TensorRef::contiguous(fake(2), DType::u8, {bytes - 16});
  EXPECT_THROW_NAMING(call(Fp4WeightFormat::nvfp4, true), "packed", ShapeMismatchError);
  p = TensorRef::contiguous(static_cast<char*>(fake(2)) + 16, DType::u8, {bytes});
  EXPECT_THROW_NAMING(call(Fp4WeightFormat::nvfp4, true), "packed", InvalidArgument);
}

}  // namespace
}  // namespace kiln::test
