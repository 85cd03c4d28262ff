// tests/gpu/fp4_moe_gemm_test.cpp — the FP4 MoE's grouped GEMM (W4A16) and the weights' prepack on the GPU against
// tests/reference/fp4_moe_gemm.*: the GPU prepack bit for bit against the CPU layout, then the GEMM against the double
// reference rounded to bf16 (spec §10.4: rel-L2 ≤ 4e-3, per element |d| ≤ 2^−7·|ref| + 2^−8·rms(ref)) for nvfp4 and
// mxfp4 (scale bytes ≤ 127: one multiply, and larger: two); gated Swiglu (plain and with α/β/limit), Geglu, Relu2 and Identity GEMM1 epilogues, GEMM2 with bias and
// scale_a; row_scale, bias, scale_a, scale_b; experts with 0 rows, 1 row, counts not a multiple of the tile, all rows
// in one expert; every token tile; K and rows from 128 to 2048 and unaligned to the 128 tiles; rows_cap = 0. Padding
// rows of the activations hold NaN (never read into a written value) and out's rows outside the segments keep their
// poison (never written); nothing is written outside out.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kiln/ops/fp4_moe.hpp"
#include "ops/fp4_moe_internal.hpp"
#include "reference/fp4_moe_gemm.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

struct GemmCase {
  int format = 0;  // 0 nvfp4, 1 mxfp4
  int64_t rows = 256, K = 256;  // weight rows (gated: 2I)
  bool gemm1 = true;
  Fp4MoeActivation act = Fp4MoeActivation::Swiglu;
  std::vector<int32_t> counts = {3, 0, 1, 70};
  int tile = 0;  // 0: fp4_moe_gemm_token_tile's choice
  int split = 0;  // split-K ranks; 0: the default's choice by the grid
  bool row_scale = false, bias = false, scale_a = false, scale_b = false, swiglu_params = false;
  bool mx_big_scales = false;  // MXFP4 scale bytes up to 131 (the kernel's two-multiply path) instead of ≤ 127
  bool one_hot = false;        // act row r = e_(r mod K): out[r, j] is the weight W[e][j, r mod K] itself
  uint64_t seed = 1;
};

std::string describe(const GemmCase& c) {
  std::string s = std::string(c.format == 0 ? "nvfp4" : "mxfp4") + " rows " + std::to_string(c.rows) + " K " +
                  std::to_string(c.K) + (c.gemm1 ? " gemm1 act " + std::to_string(static_cast<int>(c.act)) : " gemm2") +
                  " tile " + std::to_string(c.tile) + " split " + std::to_string(c.split) + " counts";
  for (int32_t n : c.counts) s += " " + std::to_string(n);
  if (c.row_scale) s += " row_scale";
  if (c.bias) s += " bias";
  if (c.scale_a) s += " scale_a";
  if (c.scale_b) s += " scale_b";
  if (c.swiglu_params) s += " alpha/beta/limit";
  if (c.mx_big_scales) s += " mx_big_scales";
  if (c.one_hot) s += " one_hot";
  return s;
}

class Fp4MoeGemmGpu : public GpuTest {
 protected:
  static void run(GemmCase c) {
    SCOPED_TRACE(describe(c));
    Runtime& r = rt();
    const int64_t E = static_cast<int64_t>(c.counts.size()), R = c.rows, K = c.K;
    const bool gated = c.gemm1 && (c.act == Fp4MoeActivation::Swiglu || c.act == Fp4MoeActivation::Geglu);
    const int64_t B = c.format == 0 ? 16 : 32, cols = gated ? R / 2 : R;
    const Fp4WeightFormat f = c.format == 0 ? Fp4WeightFormat::nvfp4 : Fp4WeightFormat::mxfp4;
    int64_t routed = 0;
    for (int32_t n : c.counts) routed += n;
    const int tile = c.tile > 0 ? c.tile : detail::fp4_moe_gemm_token_tile(r, routed, E);

    // Weights: every code; scales around 1 (nvfp4 E4M3 0.125 … 2 with some subnormal bytes; mxfp4 2^−8 … 2^0, or
    // 2^−3 … 2^4 with mx_big_scales).
    const uint64_t seed = mix_seed({c.seed, uint64_t(R), uint64_t(K), uint64_t(c.format), uint64_t(E)});
    std::vector<uint8_t> codes(E * R * K / 2), sc(E * R * K / B);
    uint64_t s = seed | 1;
    auto next = [&] { return (s = s * 6364136223846793005ull + 1442695040888963407ull) >> 33; };
    for (auto& b : codes) b = static_cast<uint8_t>(next());
    for (size_t i = 0; i < sc.size(); ++i)
      sc[i] = c.format == 0 ? static_cast<uint8_t>(i % 61 == 0 ? 1 + next() % 7 : 0x20 + next() % 33)
                            : static_cast<uint8_t>(c.mx_big_scales ? 124 + next() % 8 : 119 + next() % 9);
    const std::vector<double> w = ref::fp4_dequant(codes, sc, E, R, K, c.format);

    // Prepack on the GPU, bit for bit against the CPU layout.
    DeviceBuffer cb(r, codes.size()), sb(r, sc.size());
    cb.upload(codes);
    sb.upload(sc);
    const int64_t pbytes = fp4_moe_packed_bytes(E, R, K, f);
    DeviceBuffer pb(r, pbytes);
    pb.poison();
    const Fp4MoeWeights wt = fp4_moe_prepack(r, cb.ref(DType::u8, {E, R, K / 2}), sb.ref(DType::e4m3, {E, R, K / B}),
                                             f, gated, pb.ref(DType::u8, {pbytes}), nullptr);
    synchronize();
    EXPECT_TRUE(pb.guards_intact()) << "prepack wrote outside packed";
    EXPECT_TRUE(bitwise_equal("packed", pb.download<uint8_t>(pbytes),
                              ref::fp4_moe_prepack(codes, sc, E, R, K, c.format, gated)));

    // Segments padded to the tile; padding rows of the activations are NaN.
    ref::Fp4MoeGemmRef p;
    p.E = E;
    p.R = R;
    p.K = K;
    p.gemm1 = c.gemm1;
    p.gated = gated;
    p.activation = static_cast<int>(c.gemm1 ? c.act : Fp4MoeActivation::Identity);
    p.counts = c.counts;
    p.offsets.assign(E + 1, 0);
    for (int64_t e = 0; e < E; ++e) p.offsets[e + 1] = p.offsets[e] + (c.counts[e] + tile - 1) / tile * tile;
    p.rows_cap = p.offsets[E] + tile;  // one spare tile past the last segment (its CTAs exit)
    std::vector<float> act = random_values(p.rows_cap * K, seed + 1, DType::bf16, static_cast<float>(1.0 / std::sqrt(K)));
    if (c.one_hot)
      for (int64_t rr = 0; rr < p.rows_cap; ++rr)
        for (int64_t k = 0; k < K; ++k) act[rr * K + k] = k == rr % K ? 1.0f : 0.0f;
    std::vector<bool> in_seg(p.rows_cap, false);
    for (int64_t e = 0; e < E; ++e)
      for (int32_t i = 0; i < c.counts[e]; ++i) in_seg[p.offsets[e] + i] = true;
    for (int64_t rr = 0; rr < p.rows_cap; ++rr)
      if (!in_seg[rr])
        for (int64_t k = 0; k < K; ++k) act[rr * K + k] = std::numeric_limits<float>::quiet_NaN();
    auto vec = [&](bool on, int64_t n, uint64_t sd, float lo, float hi) {
      std::vector<float> v;
      if (!on) return v;
      v = randn(n, sd);
      for (float& x : v) x = lo + (hi - lo) * 0.5f * (1.0f + std::erf(x));
      return v;
    };
    if (c.row_scale) p.row_scale = vec(true, p.rows_cap, seed + 2, 0.5f, 2.0f);
    if (c.bias) p.bias = vec(true, E * R, seed + 3, -2.0f, 2.0f);
    if (c.scale_a) p.scale_a = vec(true, E, seed + 4, 0.25f, 4.0f);
    if (c.scale_b) p.scale_b = vec(true, E, seed + 5, 0.25f, 4.0f);
    if (c.scale_a && E > 1 && gated) p.scale_a[1] = 0.0f;  // the gated output is 0 there
    if (c.swiglu_params) {
      p.alpha = vec(true, E, seed + 6, 1.0f, 2.0f);
      p.beta = vec(true, E, seed + 7, 0.0f, 1.0f);
      p.limit = vec(true, E, seed + 8, 0.5f, 7.0f);
    }
    const std::vector<double> want = ref::fp4_moe_gemm(p, w, act);

    DeviceBuffer ab(r, act.size() * 2), ob(r, p.rows_cap * cols * 2), offb(r, (E + 1) * 4), cntb(r, E * 4);
    ab.upload(encode(DType::bf16, act));
    offb.upload(p.offsets);
    cntb.upload(p.counts);
    ob.poison();
    std::vector<DeviceBuffer> extra;
    auto dev = [&](const std::vector<float>& v) -> const float* {
      if (v.empty()) return nullptr;
      extra.emplace_back(r, v.size() * 4);
      extra.back().upload(v);
      return static_cast<const float*>(extra.back().data());
    };
    detail::Fp4MoeGemmCall call;
    call.w = wt;
    call.act = ab.data();
    call.act_ld = K;
    call.expert_offsets = static_cast<const int32_t*>(offb.data());
    call.expert_counts = static_cast<const int32_t*>(cntb.data());
    call.rows_cap = p.rows_cap;
    call.token_tile = tile;
    call.split = c.split;
    // The routed rows bound the tiles holding rows (the layer passes T·K): the grid stops there.
    for (int32_t n : p.counts) call.tiles_cap += n;
    call.row_scale = dev(p.row_scale);
    call.bias = dev(p.bias);
    call.scale_a = dev(p.scale_a);
    call.scale_b = dev(p.scale_b);
    call.alpha = dev(p.alpha);
    call.beta = dev(p.beta);
    call.limit = dev(p.limit);
    call.gemm1 = c.gemm1;
    call.activation = c.act;
    call.out = ob.data();
    call.out_ld = cols;
    detail::fp4_moe_gemm(r, call, nullptr);
    synchronize();
    EXPECT_TRUE(ob.guards_intact()) << "wrote outside out";
    const std::vector<uint16_t> got = ob.download<uint16_t>(p.rows_cap * cols);

    // Written rows against the reference; the others keep the poison.
    double num = 0, den = 0, sq = 0;
    int64_t n = 0, untouched_bad = 0;
    for (int64_t i = 0; i < p.rows_cap * cols; ++i)
      if (!std::isnan(want[i])) sq += want[i] * want[i], ++n;
    const double rms = n > 0 ? std::sqrt(sq / n) : 0.0;
    int64_t bad = 0;
    std::string first;
    for (int64_t rr = 0; rr < p.rows_cap; ++rr)
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t i = rr * cols + j;
        if (!in_seg[rr]) {
          untouched_bad += got[i] != 0x5555;
          continue;
        }
        const double g = bf16_to_float(got[i]), d = g - want[i];
        num += d * d;
        den += want[i] * want[i];
        if (!(std::fabs(d) <= std::ldexp(std::fabs(want[i]), -7) + std::ldexp(rms, -8))) {
          if (bad++ < 8)
            first += "\n  [row " + std::to_string(rr) + ", col " + std::to_string(j) + "]: " + show(static_cast<float>(g)) +
                     " vs " + show(want[i]);
        }
      }
    EXPECT_EQ(untouched_bad, 0) << "rows outside the segments were written";
    EXPECT_EQ(bad, 0) << bad << " elements outside the per-element bound (rms " << rms << "):" << first;
    if (den > 0) EXPECT_LE(std::sqrt(num / den), 4e-3) << "rel-L2";
  }
};

// The smallest case (one expert, one 128 × 128 tile, the plain epilogue): where to look first if anything fails.
TEST_F(Fp4MoeGemmGpu, SmallestPlainTile) {
  for (int format : {0, 1}) {
    GemmCase c;
    c.format = format;
    c.gemm1 = false;
    c.rows = 128;
    c.K = 128;
    c.counts = {16};
    c.tile = 16;
    run(c);
  }
}

// One-hot activations: every output is one dequantized weight, bit for bit (a layout or fragment error shows as a
// permutation: the failure names the row r, so the expected weight is W[e][col, r mod K]).
TEST_F(Fp4MoeGemmGpu, OneHotActivationsReadBackTheWeights) {
  for (int format : {0, 1}) {
    GemmCase c;
    c.format = format;
    c.gemm1 = false;
    c.rows = 256;
    c.K = 256;
    c.counts = {256, 0, 100};
    c.tile = 64;
    c.one_hot = true;
    run(c);
  }
}

TEST_F(Fp4MoeGemmGpu, Nvfp4SwigluGemm1) {
  run({});
  GemmCase c;
  c.rows = 512;  // I = 256
  c.K = 384;
  c.counts = {0, 1, 129, 64, 17};
  run(c);
}

TEST_F(Fp4MoeGemmGpu, Nvfp4SwigluWithAlphaBetaLimitAndScales) {
  GemmCase c;
  c.rows = 512;
  c.K = 640;
  c.counts = {5, 40, 0, 77};
  c.swiglu_params = c.row_scale = c.bias = c.scale_a = c.scale_b = true;
  run(c);
}

TEST_F(Fp4MoeGemmGpu, Mxfp4SwigluAndGeglu) {
  GemmCase c;
  c.format = 1;
  c.rows = 256;
  c.K = 2048;
  c.counts = {33, 2, 0};
  c.swiglu_params = true;
  run(c);
  c.swiglu_params = false;
  c.act = Fp4MoeActivation::Geglu;
  c.bias = c.scale_a = c.scale_b = c.row_scale = true;
  run(c);
  c.mx_big_scales = true;
  run(c);
}

TEST_F(Fp4MoeGemmGpu, NonGatedRelu2AndIdentity) {
  for (int format : {0, 1}) {
    GemmCase c;
    c.format = format;
    c.rows = 384;
    c.K = 256;
    c.act = Fp4MoeActivation::Relu2;
    c.counts = {9, 0, 130};
    c.bias = c.scale_a = c.scale_b = true;
    run(c);
    c.act = Fp4MoeActivation::Identity;
    c.row_scale = true;
    c.mx_big_scales = format == 1;
    run(c);
  }
}

TEST_F(Fp4MoeGemmGpu, Gemm2PlainWithBiasAndScaleA) {
  for (int format : {0, 1}) {
    GemmCase c;
    c.format = format;
    c.gemm1 = false;
    c.rows = 2048;
    c.K = 384;
    c.counts = {1, 0, 65, 12};
    c.bias = c.scale_a = true;
    run(c);
    if (format == 1) {
      c.mx_big_scales = true;
      run(c);
    }
  }
}

TEST_F(Fp4MoeGemmGpu, EveryTokenTile) {
  for (int tile : {16, 32, 64, 128}) {
    GemmCase c;
    c.tile = tile;
    c.rows = 256;
    c.K = 256;
    c.counts = {0, 1, 31, 100, 16};
    c.row_scale = true;
    run(c);
    c.gemm1 = false;
    c.format = 1;
    c.rows = 128;
    run(c);
  }
}

TEST_F(Fp4MoeGemmGpu, AllRowsInOneExpert) {
  GemmCase c;
  c.counts = {0, 0, 300, 0};
  c.tile = 128;
  c.rows = 256;
  c.K = 128;
  run(c);
  c.tile = 64;
  c.format = 1;
  c.act = Fp4MoeActivation::Geglu;
  run(c);
}

// Rows and K not multiples of the 128-row block / 128-wide K tile (prepack pads with zero codes), I = 40 and 2880.
TEST_F(Fp4MoeGemmGpu, UnalignedRowsAndK) {
  GemmCase c;
  c.rows = 80;  // I = 40
  c.K = 144;
  c.counts = {3, 20};
  run(c);
  c.gemm1 = false;
  c.rows = 200;
  c.K = 288;  // 2·128 + 32
  c.format = 1;
  run(c);
  c.gemm1 = true;
  c.act = Fp4MoeActivation::Swiglu;
  c.rows = 5760;  // gpt-oss I = 2880
  c.K = 2880;
  c.counts = {1, 0, 2, 1};
  c.swiglu_params = true;
  run(c);
}

// Split-K (a cluster of 2 or 4 CTAs a tile, rank 0 adding the others' partials): decode-like segments (one or two
// rows an expert) and a prefill tile (N = 128, the producer warpgroup's path), K ranges of 1 … 8 tiles, K unaligned,
// both formats, gated and plain epilogues with every scale; a split larger than the K tiles is clamped.
TEST_F(Fp4MoeGemmGpu, SplitKRanksAddInRankOrder) {
  for (int split : {1, 2, 4})
    for (int format : {0, 1}) {
      GemmCase c;
      c.format = format;
      c.rows = 384;
      c.K = 1024;
      c.counts = {1, 0, 2, 1};
      c.tile = 16;
      c.split = split;
      c.row_scale = c.bias = c.scale_a = c.scale_b = true;
      c.swiglu_params = true;
      run(c);
      c.gemm1 = false;
      c.rows = 256;
      c.K = 416;  // 4 K tiles, the last one partial
      c.swiglu_params = false;
      c.tile = 32;
      c.counts = {20, 3};
      run(c);
    }
  GemmCase c;
  c.format = 1;
  c.rows = 256;
  c.K = 512;
  c.counts = {130, 5};
  c.tile = 128;
  c.split = 2;
  run(c);
  c.K = 128;  // one K tile: split 4 runs unsplit
  c.split = 4;
  c.act = Fp4MoeActivation::Geglu;
  run(c);
}

// Many experts, most of them empty (the CTA's segment search takes two or three rounds of 32 offsets; runs of
// equal offsets): 300 experts with 0 … 3 rows, and 1025 with rows only in the first, a middle and the last one.
TEST_F(Fp4MoeGemmGpu, ManyExpertsFindTheirSegments) {
  GemmCase c;
  c.format = 1;
  c.gemm1 = false;
  c.rows = 128;
  c.K = 128;
  c.tile = 16;
  c.counts.assign(300, 0);
  for (size_t e = 0; e < c.counts.size(); ++e) c.counts[e] = static_cast<int32_t>((e * 7 + 3) % 11 < 4 ? (e * 7 + 3) % 11 : 0);
  run(c);
  c.counts.assign(1025, 0);
  c.counts[0] = 5;
  c.counts[517] = 17;
  c.counts[1024] = 1;
  run(c);
}

// A 128-token tile with ≤ 64 rows multiplies only its first 64 tokens: segments of 64 (half), 65 (full), 192 (a
// full tile, then a half one), 1; both formats, gated and plain; one-hot (every output one weight) and random.
TEST_F(Fp4MoeGemmGpu, PartialTilesOf128TokensTakeTheHalfWidthPath) {
  for (int format : {0, 1})
    for (bool gemm1 : {true, false}) {
      GemmCase c;
      c.format = format;
      c.gemm1 = gemm1;
      c.act = gemm1 ? Fp4MoeActivation::Swiglu : Fp4MoeActivation::Identity;
      c.rows = 256;
      c.K = 384;
      c.counts = {64, 65, 192, 1};
      c.tile = 128;
      c.row_scale = true;
      run(c);
      c.one_hot = true;
      c.gemm1 = false;
      c.act = Fp4MoeActivation::Identity;
      run(c);
    }
}

TEST_F(Fp4MoeGemmGpu, RowsCapZeroIsANoOp) {
  Runtime& r = rt();
  DeviceBuffer ob(r, 64);
  ob.poison();
  detail::Fp4MoeGemmCall call;
  call.w.data = ob.data();
  call.w.experts = 2;
  call.w.rows = 256;
  call.w.k = 256;
  call.act_ld = 256;
  call.out_ld = 256;
  call.token_tile = 16;
  call.rows_cap = 0;
  call.gemm1 = false;
  EXPECT_NO_THROW(detail::fp4_moe_gemm(r, call, nullptr));
  synchronize();
  EXPECT_TRUE(ob.guards_intact());
}

}  // namespace
}  // namespace kiln::test
