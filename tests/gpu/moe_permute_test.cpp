// tests/gpu/moe_permute_test.cpp — moe_permute / moe_unpermute on the GPU against the CPU reference, bit-exactly.
//
// The row-id map comes from the CPU reference (so these tests do not depend on the map kernels). Permute: rows,
// permuted scales and probs are compared byte for byte, padding rows included (data 0, scale 1e-30 or 2^-99,
// prob 0); every output is poisoned first and its guard zones checked. Unpermute: the padding rows of x and of the
// weights are filled with NaN, so reading one shows up; the fp32 sum in ascending expert order, rounded once, is
// deterministic and compared bitwise, as is restore_probs.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "kiln/ops/moe.hpp"
#include "reference/moe.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::string hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

template <typename T>
::testing::AssertionResult same_bits(const char* what, const std::vector<T>& got, const std::vector<T>& want,
                                     int64_t row_len) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": size mismatch";
  return all_equal(
      what, static_cast<int64_t>(got.size()), [&](int64_t i) { return std::memcmp(&got[i], &want[i], sizeof(T)) == 0; },
      [&](int64_t i) {
        uint32_t g = 0, w = 0;
        std::memcpy(&g, &got[i], sizeof(T));
        std::memcpy(&w, &want[i], sizeof(T));
        return "[" + std::to_string(i / row_len) + ", " + std::to_string(i % row_len) + "]: got " + hex32(g) +
               ", want " + hex32(w);
      });
}

struct Routing {
  int64_t T, E;
  int k, P;
  int64_t num_out;
  std::vector<uint8_t> flags;
  std::vector<float> probs;
  ref::RowIdMapResult map;
};

// Top-k routing of random logits (reference), or every token to expert `one` when one ≥ 0.
Routing make_routing(int64_t T, int64_t E, int k, int P, uint64_t seed, int one = -1, int64_t extra_rows = 3) {
  Routing r{T, E, k, P, moe_max_out_rows(T, E, k, P) + extra_rows, {}, {}, {}};
  if (one >= 0) {
    r.flags.assign(T * E, 0);
    r.probs.assign(T * E, 0.0f);
    for (int64_t t = 0; t < T; ++t) {
      r.flags[t * E + one] = 1;
      r.probs[t * E + one] = 1.0f / static_cast<float>(t + 1);
    }
  } else {
    const std::vector<float> z = randn(T * E, mix_seed({seed, 3}));
    auto res = ref::topk_routing(z, T, E, {}, {k, false, 1, 1, true, 1.0f});
    r.flags = std::move(res.routing_map);
    r.probs = std::move(res.probs);
  }
  r.map = ref::row_id_map(r.flags, T, E, P, r.num_out);
  return r;
}

struct MapBuffers {
  DeviceBuffer map, offsets, counts, indices;
  MoeRowIdMap ref;
  MapBuffers(Runtime& rt, const Routing& r)
      : map(rt, r.T * r.E * 4), offsets(rt, (r.E + 1) * 4), counts(rt, r.E * 4), indices(rt, r.num_out * 4) {
    map.upload(r.map.row_id_map);
    offsets.upload(r.map.offsets);
    counts.upload(r.map.counts);
    indices.upload(r.map.row_id_indices);
    ref.row_id_map = map.ref(DType::i32, {r.T, r.E});
    ref.offsets = offsets.ref(DType::i32, {r.E + 1});
    ref.tokens_per_expert = counts.ref(DType::i32, {r.E});
    ref.row_id_indices = indices.ref(DType::i32, {r.num_out});
  }
};

class MoePermuteTest : public GpuTest {
 protected:
  // bf16 (scale_kind 0) or fp8 rows with token-major (1) or M-major (2) scales.
  // indices: pass the map's inverse indices (the scales are then gathered row by row) or not (scattered per token).
  static void permute_case(const Routing& r, int64_t Hd, int scale_kind, bool round_scale, bool padded = true,
                           bool fill_tail = false, bool indices = true) {
    SCOPED_TRACE("T=" + std::to_string(r.T) + " E=" + std::to_string(r.E) + " k=" + std::to_string(r.k) +
                 " P=" + std::to_string(r.P) + " Hd=" + std::to_string(Hd) + " scales=" + std::to_string(scale_kind) +
                 " padded=" + std::to_string(padded) + " fill_tail=" + std::to_string(fill_tail) +
                 " indices=" + std::to_string(indices));
    Runtime& rt = GpuTest::rt();
    const int64_t T = r.T, E = r.E, num_out = r.num_out;
    const bool fp8 = scale_kind > 0;
    const int64_t row_bytes = Hd * (fp8 ? 1 : 2), ns = Hd / 128;
    std::vector<uint8_t> inp(T * row_bytes);
    uint64_t s = mix_seed({static_cast<uint64_t>(T), static_cast<uint64_t>(Hd), 5});
    for (auto& b : inp) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      b = static_cast<uint8_t>(s >> 56);
    }
    std::vector<float> scale;
    if (fp8) {
      scale = randn(T * ns, mix_seed({s, 6}));
      for (float& v : scale) v = std::abs(v) + 1e-3f;
    }
    const float pad = round_scale ? std::ldexp(1.0f, -99) : 1e-30f;
    auto want =
        ref::permute(inp, row_bytes, scale, fp8 ? ns : 0, scale_kind == 2, r.probs, true, r.map, T, E, num_out, pad);
    ASSERT_EQ(static_cast<int64_t>(want.out.size()), num_out * row_bytes);
    ASSERT_EQ(static_cast<int64_t>(want.probs_out.size()), num_out);
    ASSERT_EQ(static_cast<int64_t>(want.scale_out.size()), fp8 ? ns * num_out : 0);
    if (!fill_tail) {
      // Rows past offsets[E] must stay untouched (still the poison).
      const int64_t used = r.map.offsets[E];
      std::fill(want.out.begin() + used * row_bytes, want.out.end(), DeviceBuffer::kPoison);
      const float poison = std::bit_cast<float>(0x55555555u);
      for (int64_t row = used; row < num_out; ++row) {
        for (int64_t j = 0; j < ns && fp8; ++j) want.scale_out[j * num_out + row] = poison;
        want.probs_out[row] = poison;
      }
    }

    MapBuffers mb(rt, r);
    MoeRowIdMap map = mb.ref;
    if (!padded) map.offsets = map.tokens_per_expert = {};
    if (!indices) map.row_id_indices = {};
    DeviceBuffer ib(rt, inp.size()), sb(rt, scale.size() * 4), pb(rt, r.probs.size() * 4), ob(rt, num_out * row_bytes),
        sob(rt, fp8 ? ns * num_out * 4 : 0), pob(rt, num_out * 4);
    ib.upload(inp);
    if (fp8) sb.upload(scale);
    pb.upload(r.probs);
    for (DeviceBuffer* x : {&ob, &sob, &pob}) x->poison();
    MoePermuteOptions o;
    o.top_k = r.k;
    o.multiple_of = r.P;
    o.round_scale = round_scale;
    o.fill_tail = fill_tail;
    o.scale_layout = scale_kind == 2 ? MoeScaleLayout::m_major : MoeScaleLayout::token_major;
    const DType dt = fp8 ? DType::e4m3 : DType::bf16;
    moe_permute(rt, ib.ref(dt, {T, Hd}),
                fp8 ? (scale_kind == 2 ? sb.ref(DType::f32, {ns, T}) : sb.ref(DType::f32, {T, ns})) : TensorRef{},
                pb.ref(DType::f32, {T, E}), map, ob.ref(dt, {num_out, Hd}),
                fp8 ? sob.ref(DType::f32, {ns, num_out}) : TensorRef{}, pob.ref(DType::f32, {num_out}), o, nullptr);
    synchronize();
    for (DeviceBuffer* x : {&ob, &sob, &pob}) EXPECT_TRUE(x->guards_intact()) << "an output written out of bounds";
    if (padded) {
      EXPECT_TRUE(same_bits("out", ob.download<uint8_t>(num_out * row_bytes), want.out, row_bytes));
      if (fp8) EXPECT_TRUE(same_bits("scale_out [ns, num_out]", sob.download<float>(ns * num_out), want.scale_out, num_out));
      EXPECT_TRUE(same_bits("probs_out", pob.download<float>(num_out), want.probs_out, num_out));
    } else {
      // Only the routed rows are defined without padding information.
      const auto got = ob.download<uint8_t>(num_out * row_bytes);
      const auto gp = pob.download<float>(num_out);
      int64_t bad = 0;
      for (int64_t i = 0; i < T * E; ++i) {
        const int32_t row = r.map.row_id_map[i];
        if (row < 0) continue;
        bad += std::memcmp(&got[row * row_bytes], &want.out[row * row_bytes], row_bytes) != 0;
        bad += std::bit_cast<uint32_t>(gp[row]) != std::bit_cast<uint32_t>(want.probs_out[row]);
      }
      EXPECT_EQ(bad, 0) << "routed rows differ";
    }
  }

  static void unpermute_case(const Routing& r, int64_t H, DType dt, bool weighted) {
    SCOPED_TRACE("T=" + std::to_string(r.T) + " E=" + std::to_string(r.E) + " H=" + std::to_string(H) +
                 (dt == DType::f32 ? " fp32" : " bf16") + (weighted ? " weighted" : ""));
    Runtime& rt = GpuTest::rt();
    const int64_t T = r.T, E = r.E, num_out = r.num_out;
    std::vector<float> x = randn(num_out * H, mix_seed({static_cast<uint64_t>(T), static_cast<uint64_t>(H), 8}));
    round_to(dt, x);
    std::vector<float> w(num_out, kNaN);
    std::vector<char> used(num_out, 0);
    for (int64_t i = 0; i < T * E; ++i)
      if (r.map.row_id_map[i] >= 0) used[r.map.row_id_map[i]] = 1;
    for (int64_t row = 0; row < num_out; ++row) {
      if (used[row]) w[row] = r.probs.empty() ? 0.5f : 0.0f;
      else std::fill_n(&x[row * H], H, kNaN);  // padding: never read
    }
    for (int64_t i = 0; i < T * E; ++i)
      if (r.map.row_id_map[i] >= 0) w[r.map.row_id_map[i]] = r.probs[i];
    std::vector<float> want, want_restore;
    ref::unpermute(x, H, weighted ? std::span<const float>(w) : std::span<const float>(), r.map.row_id_map, T, E,
                   want, want_restore);
    round_to(dt, want);

    MapBuffers mb(rt, r);
    DeviceBuffer xb(rt, x.size() * dtype_size(dt)), wb(rt, num_out * 4), ob(rt, T * H * dtype_size(dt)),
        rb(rt, T * E * 4);
    xb.upload(encode(dt, x));
    wb.upload(w);
    ob.poison();
    rb.poison();
    MoePermuteOptions o;
    o.top_k = r.k;
    o.multiple_of = r.P;
    moe_unpermute(rt, xb.ref(dt, {num_out, H}), mb.ref.row_id_map, weighted ? wb.ref(DType::f32, {num_out}) : TensorRef{},
                  ob.ref(dt, {T, H}), weighted ? rb.ref(DType::f32, {T, E}) : TensorRef{}, o, nullptr);
    synchronize();
    EXPECT_TRUE(ob.guards_intact());
    EXPECT_TRUE(rb.guards_intact());
    const std::vector<float> got = decode(dt, ob.download<uint8_t>(T * H * dtype_size(dt)));
    EXPECT_TRUE(same_bits("out [T, H]", got, want, H));
    if (weighted) EXPECT_TRUE(same_bits("restore_probs [T, E]", rb.download<float>(T * E), want_restore, E));
  }
};

TEST_F(MoePermuteTest, Bf16PaddedTo16AtTargetShape) {
  const Routing r = make_routing(8192, 256, 8, 16, 1);
  permute_case(r, 2048, 0, false);
}
TEST_F(MoePermuteTest, Fp8RowsWithBothScaleLayouts) {
  const Routing r = make_routing(4096, 256, 8, 16, 2);
  permute_case(r, 2048, 1, false);
  permute_case(r, 2048, 2, true, true, true);
  permute_case(r, 2048, 1, false, true, false, false);  // scales scattered per token
  permute_case(r, 2048, 2, true, true, true, false);
}
TEST_F(MoePermuteTest, OddShapes) {
  permute_case(make_routing(7, 64, 2, 128, 3), 7168, 0, false);
  permute_case(make_routing(7, 64, 2, 128, 3), 7168, 2, false);
  permute_case(make_routing(7, 64, 2, 128, 3), 7168, 2, false, true, true, false);
  permute_case(make_routing(1, 160, 8, 16, 4), 1536, 1, false);
  permute_case(make_routing(1000, 8, 1, 32, 5), 1536, 0, false, true, true);
  permute_case(make_routing(4096, 64, 1, 16, 6, 17), 2048, 0, false);  // all tokens to expert 17
  permute_case(make_routing(65536, 256, 8, 16, 7, -1, 0), 256, 2, false);
  permute_case(make_routing(333, 64, 2, 1, 8, -1, 0), 1024, 0, false, false);  // unpadded, no padding info
}
TEST_F(MoePermuteTest, ZeroTokensStillFillTheRows) {
  const Routing r = make_routing(0, 64, 2, 16, 9, -1, 40);
  permute_case(r, 2048, 2, false, true, true);
  permute_case(r, 2048, 0, false, true, false);
}

TEST_F(MoePermuteTest, UnpermuteCombine) {
  const Routing r = make_routing(8192, 256, 8, 16, 11);
  unpermute_case(r, 2048, DType::bf16, true);
  unpermute_case(r, 2048, DType::bf16, false);
}
TEST_F(MoePermuteTest, UnpermuteOddShapes) {
  unpermute_case(make_routing(7, 64, 2, 128, 12), 7168, DType::bf16, true);
  unpermute_case(make_routing(1, 160, 8, 16, 13), 1536, DType::f32, true);
  unpermute_case(make_routing(1000, 8, 1, 32, 14), 1536, DType::bf16, false);
  unpermute_case(make_routing(4096, 64, 1, 16, 15, 3), 2048, DType::bf16, true);
  unpermute_case(make_routing(65536, 256, 8, 16, 16, -1, 0), 256, DType::bf16, true);
}

// The fused permute + pad + 1×128 quantize, both layouts, per-expert segmented; regions outside the segments must
// keep the poison.
class MoePermuteBlockQuantTest : public GpuTest {
 protected:
  // cpb ≥ 0: the config forced to that many 128-channel blocks a CTA (ops/moe_permute.cpp config `tokens`; 0 = the
  // default); −1: the op's own choice.
  // special: 1 NaN / ±inf / ±0 / extremes in some blocks, 2 values on e4m3 ties (below).
  static void run(const Routing& r, int64_t Hd, bool round_scale, int special = 0, int cpb = -1) {
    SCOPED_TRACE("T=" + std::to_string(r.T) + " E=" + std::to_string(r.E) + " k=" + std::to_string(r.k) +
                 " P=" + std::to_string(r.P) + " Hd=" + std::to_string(Hd) + " round=" + std::to_string(round_scale) +
                 " cpb=" + std::to_string(cpb));
    Runtime& rt = GpuTest::rt();
    std::unique_ptr<detail::ForceConfigScope> force;
    if (cpb >= 0) {
      detail::Specialization s;  // ops/moe_permute.cpp block_quant_spec
      s.family = detail::find_family("moe_permute");
      s.arch = rt.impl().target_arch();
      s.kernel = 2;
      s.params[0] = Hd;
      s.params[1] = r.E;
      s.params[4] = 1;  // probs
      s.params[5] = static_cast<int64_t>(DType::bf16);
      s.params[8] = round_scale;
      s.config[0] = 256;
      s.config[1] = cpb;
      force = std::make_unique<detail::ForceConfigScope>(s);
    }
    const int64_t T = r.T, E = r.E, num_out = r.num_out, ns = Hd / 128;
    const int64_t nb = moe_block_quant_scale_blocks(num_out, E);
    std::vector<float> x = randn(T * Hd, mix_seed({static_cast<uint64_t>(T), static_cast<uint64_t>(Hd), 21}), 3.0f);
    for (int64_t i = 0; i < T * Hd; i += 977) x[i] *= 1e4f;  // a few large values set their blocks' scales
    if (special == 1) {  // NaN, ±inf, ±0 and bf16's extremes in some blocks (an inf makes its blocks' scale inf)
      const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
      const float vals[] = {nan, inf, -inf, -0.0f, 0.0f, 3.3895314e38f, -3.3895314e38f, 9.2e-41f, 1e-30f};
      for (int64_t i = 5, k = 0; i < T * Hd; i += 4099, ++k) x[i] = vals[k % 9];
    } else if (special == 2) {
      // e4m3 ties: ±672 wherever (c − t) % 8 == 0, so every row block, and almost every transposed block, has the
      // scale 672 / 448 = 1.5, and elsewhere ±1.5·(a midpoint between two e4m3 codes), normal and subnormal, exact in
      // bf16: y / s is the midpoint itself, rounded to even (through fp8.cuh's div_exact, which the permute runs a
      // value at a time: such ties are why it does not take e4m3x4_div's bracket, whose codes would differ there).
      std::vector<float> mids;
      for (int e = -6; e <= 8; ++e)
        for (int m = 0; m < 8; ++m)
          if (const float v = std::ldexp(static_cast<float>(16 + 2 * m + 1), e - 5); v < 448.0f) mids.push_back(v);
      for (int i = 0; i < 8; ++i) mids.push_back(std::ldexp(static_cast<float>(2 * i + 1), -10));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < Hd; ++c) {
          const uint64_t h = mix_seed({static_cast<uint64_t>(t), static_cast<uint64_t>(c), 77});
          const float v = (c - t) % 8 == 0 ? 672.0f : 1.5f * mids[h % mids.size()];
          x[t * Hd + c] = (h >> 40) & 1 ? -v : v;
        }
    }
    round_to(DType::bf16, x);
    const float poison = std::bit_cast<float>(0x55555555u);
    ref::BlockQuantPermuteResult want;
    want.q.assign(num_out * Hd, DeviceBuffer::kPoison);
    want.qT.assign(num_out * Hd, DeviceBuffer::kPoison);
    want.q_scale.assign(num_out * ns, poison);
    want.qT_scale.assign(nb * Hd, poison);
    want.probs_out.assign(num_out, poison);
    ref::permute_block_quant(x, T, Hd, r.probs, r.map, E, num_out, round_scale, want);
    ASSERT_LE(want.scale_blocks_used, nb);

    DeviceBuffer xb(rt, T * Hd * 2), pb(rt, T * E * 4), ib(rt, num_out * 4), ob(rt, (E + 1) * 4), q(rt, num_out * Hd),
        qs(rt, num_out * ns * 4), qT(rt, num_out * Hd), qTs(rt, nb * Hd * 4), po(rt, num_out * 4);
    xb.upload(encode(DType::bf16, x));
    pb.upload(r.probs);
    ib.upload(r.map.row_id_indices);
    ob.upload(r.map.offsets);
    for (DeviceBuffer* b : {&q, &qs, &qT, &qTs, &po}) b->poison();
    MoeRowIdMap map;
    map.row_id_indices = ib.ref(DType::i32, {num_out});
    map.offsets = ob.ref(DType::i32, {E + 1});
    MoeBlockQuantPermuteOutputs out{q.ref(DType::e4m3, {num_out, Hd}), qs.ref(DType::f32, {num_out * ns}),
                                    qT.ref(DType::e4m3, {num_out * Hd}), qTs.ref(DType::f32, {nb * Hd}),
                                    po.ref(DType::f32, {num_out})};
    MoePermuteOptions o;
    o.top_k = r.k;
    o.multiple_of = r.P;
    o.round_scale = round_scale;
    moe_permute_block_quant(rt, xb.ref(DType::bf16, {T, Hd}), pb.ref(DType::f32, {T, E}), map, out, o, nullptr);
    synchronize();
    for (DeviceBuffer* b : {&q, &qs, &qT, &qTs, &po}) EXPECT_TRUE(b->guards_intact()) << "written out of bounds";
    EXPECT_TRUE(same_bits("q [num_out, Hd]", q.download<uint8_t>(num_out * Hd), want.q, Hd));
    EXPECT_TRUE(same_bits("q_scale (segmented)", qs.download<float>(num_out * ns), want.q_scale, ns));
    EXPECT_TRUE(same_bits("qT (segmented)", qT.download<uint8_t>(num_out * Hd), want.qT, Hd));
    EXPECT_TRUE(same_bits("qT_scale (segmented)", qTs.download<float>(nb * Hd), want.qT_scale, Hd));
    EXPECT_TRUE(same_bits("probs_out", po.download<float>(num_out), want.probs_out, num_out));
    if (force && T > 0) EXPECT_GT(force->applied(), 0u);
  }
};

TEST_F(MoePermuteBlockQuantTest, TargetShape) { run(make_routing(8192, 256, 8, 16, 31), 2048, true); }
TEST_F(MoePermuteBlockQuantTest, OddShapes) {
  run(make_routing(7, 64, 2, 128, 32), 7168, false);
  run(make_routing(1000, 8, 1, 16, 33), 1536, false);
  run(make_routing(4096, 64, 1, 16, 34, 17), 2048, true);  // one expert: 32 full token blocks
  run(make_routing(300, 160, 8, 32, 35), 1536, true);
  run(make_routing(0, 64, 2, 16, 36, -1, 40), 2048, false);
  run(make_routing(600, 64, 4, 16, 37), 2048, false, 1);  // NaN / ±inf / extremes, both scale rules
  run(make_routing(600, 64, 4, 16, 38), 2048, true, 1);
}
// Every value a tie of the e4m3 rounding under round_scale 0 (div_exact's quotient exactly on a midpoint), and the
// same values under power-of-two scales.
TEST_F(MoePermuteBlockQuantTest, E4m3Ties) {
  run(make_routing(600, 64, 4, 16, 44), 2048, false, 2);
  run(make_routing(257, 8, 2, 16, 45), 1536, false, 2, 4);
  run(make_routing(600, 64, 4, 16, 46), 2048, true, 2);
}
// 1, 2 and 4 channel blocks a CTA (the next block's gather under the current one's write-out), and segments padded to
// 4 or 8 (transposed rows not 16-byte aligned: 4-byte stores).
TEST_F(MoePermuteBlockQuantTest, ChannelBlocksAndNarrowPadding) {
  for (int cpb : {1, 2, 4}) {
    run(make_routing(1000, 64, 4, 16, 39), 1536, true, 0, cpb);
    run(make_routing(333, 8, 2, 16, 40), 7168, false, 1, cpb);
  }
  run(make_routing(777, 64, 4, 4, 41), 2048, true);
  run(make_routing(500, 160, 8, 8, 42), 1536, false, 1);
  run(make_routing(500, 160, 8, 8, 43), 1536, true, 0, 4);
}

// Permute then unpermute without weights gives k·x for a token routed to k experts (bf16 exact for small k).
TEST_F(MoePermuteTest, DeterministicAcrossRuns) {
  Runtime& rt = GpuTest::rt();
  const Routing r = make_routing(4096, 256, 8, 16, 17);
  const int64_t H = 2048, num_out = r.num_out;
  std::vector<float> x = randn(num_out * H, 18);
  round_to(DType::bf16, x);
  MapBuffers mb(rt, r);
  DeviceBuffer xb(rt, x.size() * 2), wb(rt, num_out * 4), o1(rt, r.T * H * 2), o2(rt, r.T * H * 2);
  xb.upload(encode(DType::bf16, x));
  std::vector<float> w = randn(num_out, 19);
  wb.upload(w);
  MoePermuteOptions o;
  o.top_k = 8;
  o.multiple_of = 16;
  for (DeviceBuffer* ob : {&o1, &o2})
    moe_unpermute(rt, xb.ref(DType::bf16, {num_out, H}), mb.ref.row_id_map, wb.ref(DType::f32, {num_out}),
                  ob->ref(DType::bf16, {r.T, H}), {}, o, nullptr);
  synchronize();
  EXPECT_TRUE(o1.download<uint16_t>(r.T * H) == o2.download<uint16_t>(r.T * H));
}

}  // namespace
}  // namespace kiln::test
