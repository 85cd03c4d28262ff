// tests/gpu/fp4_moe_test.cpp — the FP4 MoE layer's kernels (templates/kiln/fp4_moe.cuh) against
// tests/reference/fp4_moe_layer.*: the permutation metadata bit for bit (both paths; T 0 … 65536, K 1 / 2 / 8, expert-
// parallel splits including a rank with no hits, all rows to one expert; the replay rows), the gather for every hidden
// format bit for bit, the finalize bit for bit, and the whole layer fp4_block_scale_moe (needs the grouped GEMM of
// branch fp4-gemm: Fp4MoeLayerGpu.*) against the reference within spec §10.4.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "kiln/ops/fp4_moe.hpp"
#include "ops/fp4_moe_internal.hpp"
#include "reference/fp4_moe.hpp"
#include "reference/fp4_moe_layer.hpp"
#include "reference/fp4_quant.hpp"
#include "runtime/driver.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

uint64_t lcg(uint64_t& s) {
  s = s * 6364136223846793005ull + 1442695040888963407ull;
  return s >> 33;
}

// Distinct logits a row (a random permutation of an even grid plus small noise): no near-ties.
std::vector<float> distinct_logits(int64_t T, int64_t E, uint64_t seed, DType t) {
  std::vector<float> z(T * E);
  std::vector<int> perm(E);
  uint64_t s = seed | 1;
  for (int64_t r = 0; r < T; ++r) {
    std::iota(perm.begin(), perm.end(), 0);
    for (int64_t i = E - 1; i > 0; --i) std::swap(perm[i], perm[lcg(s) % (i + 1)]);
    for (int64_t e = 0; e < E; ++e)
      z[r * E + e] = -4.0f + 8.0f * static_cast<float>(perm[e]) / static_cast<float>(E) +
                     1e-3f * static_cast<float>(lcg(s) % 100) / 100.0f;
  }
  round_to(t, z);
  return z;
}

// K distinct experts a token out of [0, E) (or all `one` when one ≥ 0 and K == 1).
std::vector<int32_t> random_ids(int64_t T, int K, int64_t E, uint64_t seed, int one = -1) {
  std::vector<int32_t> ids(T * K);
  uint64_t s = seed | 1;
  for (int64_t t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) {
      int32_t e;
      do e = one >= 0 ? (one + k) % static_cast<int32_t>(E) : static_cast<int32_t>(lcg(s) % E);
      while (std::find(ids.begin() + t * K, ids.begin() + t * K + k, e) != ids.begin() + t * K + k);
      ids[t * K + k] = e;
    }
  return ids;
}

class Fp4MoeKernelsGpu : public GpuTest {};

// ---- permutation metadata -----------------------------------------------------------------------------------------

struct PermCase {
  int64_t T;
  int K;
  int64_t E, El, off;
  int tile;
  int one;  // ≥ 0: every token's slots go to experts one, one + 1, …
};

TEST_F(Fp4MoeKernelsGpu, PermutationMatchesTheReferenceBitForBit) {
  Runtime& r = rt();
  std::vector<PermCase> cases;
  for (int64_t T : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{65536}})
    for (int K : {1, 2, 8}) {
      cases.push_back({T, K, 32, 32, 0, 64, -1});     // all experts local
      cases.push_back({T, K, 256, 32, 64, 8, -1});    // an EP slice
    }
  cases.push_back({1000, 8, 256, 32, 224, 16, 0});  // rank with no hits: every slot to experts 0 … 7
  cases.push_back({1000, 1, 64, 16, 16, 64, 20});   // all rows to one (local) expert
  cases.push_back({65536, 1, 8, 8, 0, 128, 3});     // all 65536 rows to one expert
  cases.push_back({4097, 4, 512, 512, 0, 8, -1});   // E_l 512
  for (const PermCase& c : cases)
    for (int path : {-1, 0, 1}) {
      if (path == 0 && c.T > 4096) continue;  // the one-CTA path at 65536 tokens is correct but slow
      SCOPED_TRACE(::testing::Message() << "T " << c.T << " K " << c.K << " E " << c.E << " E_l " << c.El << " off "
                                        << c.off << " tile " << c.tile << " one " << c.one << " path " << path);
      const auto ids = random_ids(c.T, c.K, c.E, mix_seed({uint64_t(c.T), uint64_t(c.K), uint64_t(c.E)}), c.one);
      const auto want = ref::fp4_moe_permute(ids, c.T, c.K, c.El, c.off, c.tile);
      const int64_t rows_cap = c.T * c.K + c.El * (c.tile - 1);
      const int64_t N = c.T + 3;
      DeviceBuffer ib(r, ids.size() * 4), cb(r, c.El * 4), ob(r, (c.El + 1) * 4), eb(r, c.T * c.K * 4),
          tb(r, rows_cap * 4), kb(r, rows_cap * 4), chb(r, detail::fp4_moe_permute_chunk_words(c.T, c.El) * 4),
          rb(r, N * c.K * 2);
      if (!ids.empty()) ib.upload(ids);
      for (DeviceBuffer* b : {&cb, &ob, &eb, &tb, &kb, &chb, &rb}) b->poison();
      detail::Fp4MoePermuteCall pc;
      pc.topk_ids = static_cast<const int32_t*>(ib.data());
      pc.tokens = c.T;
      pc.top_k = c.K;
      pc.experts = c.El;
      pc.expert_offset = c.off;
      pc.token_tile = c.tile;
      pc.expert_counts = static_cast<int32_t*>(cb.data());
      pc.expert_offsets = static_cast<int32_t*>(ob.data());
      pc.expanded_idx_to_permuted_idx = static_cast<int32_t*>(eb.data());
      pc.permuted_idx_to_token = static_cast<int32_t*>(tb.data());
      pc.permuted_idx_to_k = static_cast<int32_t*>(kb.data());
      pc.chunk_counts = static_cast<int32_t*>(chb.data());
      pc.replay = static_cast<int16_t*>(rb.data());
      pc.path = path;
      detail::fp4_moe_permute(r, pc, nullptr);
      synchronize();
      for (DeviceBuffer* b : {&cb, &ob, &eb, &tb, &kb, &chb, &rb}) EXPECT_TRUE(b->guards_intact());
      if (c.T == 0) continue;  // nothing launched
      EXPECT_TRUE(bitwise_equal("counts", cb.download<int32_t>(c.El), want.counts));
      EXPECT_TRUE(bitwise_equal("offsets", ob.download<int32_t>(c.El + 1), want.offsets));
      EXPECT_TRUE(bitwise_equal("expanded", eb.download<int32_t>(c.T * c.K), want.expanded));
      const size_t total = want.perm_token.size();
      EXPECT_TRUE(bitwise_equal("perm_token", tb.download<int32_t>(total), want.perm_token));
      EXPECT_TRUE(bitwise_equal("perm_k", kb.download<int32_t>(total), want.perm_k));
      const auto rp = rb.download<int16_t>(N * c.K);
      std::vector<int16_t> rwant(N * c.K, static_cast<int16_t>(0x5555));
      for (int64_t i = 0; i < c.T * c.K; ++i) rwant[i] = static_cast<int16_t>(ids[i]);
      EXPECT_TRUE(bitwise_equal("replay (rows ≥ T untouched)", rp, rwant));
    }
}

// ---- gather -------------------------------------------------------------------------------------------------------

TEST_F(Fp4MoeKernelsGpu, GatherDequantizesEveryHiddenFormatBitForBit) {
  using F = Fp4MoeHiddenFormat;
  Runtime& r = rt();
  for (F f : {F::bf16, F::nvfp4, F::mxfp8, F::e4m3})
    for (int64_t H : {int64_t{128}, int64_t{640}, int64_t{7168}})
      for (bool pts : {false, true}) {
        const int64_t T = 37, El = 6, E = 8, off = 1;
        const int K = 2, tile = 16;
        SCOPED_TRACE(::testing::Message() << "format " << static_cast<int>(f) << " H " << H << " pts " << pts);
        const uint64_t seed = mix_seed({uint64_t(f), uint64_t(H)});
        uint64_t s = seed | 1;
        std::vector<float> xb;
        std::vector<uint8_t> codes, scales;
        if (f == F::bf16) {
          xb = random_values(T * H, seed, DType::bf16);
        } else if (f == F::nvfp4) {
          codes.resize(T * H / 2);
          scales.resize(T * H / 16);
          for (auto& c : codes) c = static_cast<uint8_t>(lcg(s));
          for (auto& c : scales) c = static_cast<uint8_t>(0x10 + lcg(s) % 0x60);  // E4M3, no NaN
        } else {
          codes.resize(T * H);
          for (auto& c : codes) {
            c = static_cast<uint8_t>(lcg(s));
            if ((c & 0x7F) == 0x7F) c ^= 1;  // no NaN codes
          }
          if (f == F::mxfp8) {
            scales.resize(T * H / 32);
            for (auto& c : scales) c = static_cast<uint8_t>(110 + lcg(s) % 30);
          }
        }
        const auto x = ref::fp4_moe_dequant_hidden(static_cast<ref::Fp4MoeHidden>(f), T, H, xb, codes, scales);
        const auto ids = random_ids(T, K, E, seed);
        const auto p = ref::fp4_moe_permute(ids, T, K, El, off, tile);
        const int64_t rows_cap = T * K + El * (tile - 1), total = p.offsets[El];
        std::vector<float> ts(T);
        for (auto& v : ts) v = 0.5f + static_cast<float>(lcg(s) % 1000) / 1000.0f;
        DeviceBuffer hb(r, f == F::bf16 ? T * H * 2 : codes.size()), sb(r, std::max<size_t>(scales.size(), 1)),
            pb(r, T * 4), ob(r, (El + 1) * 4), tb(r, rows_cap * 4), ab(r, rows_cap * H * 2), rsb(r, rows_cap * 4);
        if (f == F::bf16) hb.upload(encode(DType::bf16, xb));
        else hb.upload(codes);
        if (!scales.empty()) sb.upload(scales);
        pb.upload(ts);
        ob.upload(p.offsets);
        tb.upload(p.perm_token);
        ab.poison();
        rsb.poison();
        detail::Fp4MoeGatherCall gc;
        gc.hidden = hb.data();
        gc.hidden_scale = scales.empty() ? nullptr : sb.data();
        gc.format = f;
        gc.hidden_size = H;
        gc.per_token_scale = pts ? static_cast<const float*>(pb.data()) : nullptr;
        gc.permuted_idx_to_token = static_cast<const int32_t*>(tb.data());
        gc.expert_offsets = static_cast<const int32_t*>(ob.data());
        gc.experts = El;
        gc.rows_cap = rows_cap;
        gc.act = ab.data();
        gc.row_scale = pts ? static_cast<float*>(rsb.data()) : nullptr;
        detail::fp4_moe_gather(r, gc, nullptr);
        synchronize();
        EXPECT_TRUE(ab.guards_intact() && rsb.guards_intact());
        const auto act = ab.download<uint16_t>(rows_cap * H);
        std::vector<uint16_t> want(rows_cap * H, 0x5555);
        for (int64_t row = 0; row < total; ++row)
          for (int64_t h = 0; h < H; ++h)
            want[row * H + h] = p.perm_token[row] < 0 ? 0 : float_to_bf16(x[p.perm_token[row] * H + h]);
        EXPECT_TRUE(bitwise_equal("act (rows past the total untouched)", act, want));
        if (pts) {
          const auto rs = rsb.download<float>(rows_cap);
          for (int64_t row = 0; row < total; ++row)
            ASSERT_EQ(rs[row], p.perm_token[row] < 0 ? 0.0f : ts[p.perm_token[row]]) << "row " << row;
        }
      }
}

// ---- finalize -----------------------------------------------------------------------------------------------------

TEST_F(Fp4MoeKernelsGpu, FinalizeMatchesTheReferenceBitForBit) {
  Runtime& r = rt();
  struct C {
    int64_t T;
    int K;
    int64_t H, H_out, E, El, off;
  };
  for (const C& c : {C{1, 1, 128, 128, 8, 8, 0}, C{257, 4, 640, 640, 32, 8, 8}, C{1000, 8, 7168, 7168, 256, 32, 32},
                     C{17, 2, 3072, 2880, 16, 4, 12}, C{64, 2, 256, 256, 64, 8, 56}}) {
    SCOPED_TRACE(::testing::Message() << "T " << c.T << " K " << c.K << " H " << c.H << " H_out " << c.H_out);
    const uint64_t seed = mix_seed({uint64_t(c.T), uint64_t(c.H)});
    const auto ids = random_ids(c.T, c.K, c.E, seed);
    const int tile = 64;
    const auto p = ref::fp4_moe_permute(ids, c.T, c.K, c.El, c.off, tile);
    const int64_t rows = std::max<int32_t>(p.offsets[c.El], 1);
    const auto y = random_values(rows * c.H, seed + 1, DType::bf16);
    const auto w = random_values(c.T * c.K, seed + 2, DType::bf16, 0.3f, 0.2f);
    const auto want = ref::fp4_moe_finalize(y, c.H, p.expanded, w, c.T, c.K, c.H_out);
    DeviceBuffer yb(r, y.size() * 2), eb(r, c.T * c.K * 4), wb(r, c.T * c.K * 2), outb(r, c.T * c.H_out * 2);
    yb.upload(encode(DType::bf16, y));
    eb.upload(p.expanded);
    wb.upload(encode(DType::bf16, w));
    outb.poison();
    detail::Fp4MoeFinalizeCall fc;
    fc.y = yb.data();
    fc.y_ld = c.H;
    fc.expanded_idx_to_permuted_idx = static_cast<const int32_t*>(eb.data());
    fc.weights = wb.data();
    fc.tokens = c.T;
    fc.top_k = c.K;
    fc.hidden_out = c.H_out;
    fc.out = outb.data();
    fc.out_ld = c.H_out;
    detail::fp4_moe_finalize(r, fc, nullptr);
    synchronize();
    EXPECT_TRUE(outb.guards_intact());
    const auto got = decode(DType::bf16, outb.download<uint8_t>(c.T * c.H_out * 2));
    EXPECT_TRUE(bitwise_equal("out", got, want));
  }
}

// ---- the three steps chained as the op chains them (PDL), directly and replayed from a CUDA graph ----------------

// permute (three-kernel path) → gather (bf16) → finalize with y = the gathered rows (a GEMM that is the identity):
// out[t] = bf16(Σ_k w[t,k]·x[t]) over the local slots, bit for bit against the references, on the direct call and
// on two replays of a captured graph (the second on another stream, after the buffers were poisoned).
TEST_F(Fp4MoeKernelsGpu, ChainedStepsMatchDirectlyAndFromACudaGraph) {
  const auto& d = detail::driver();
  Runtime& r = rt();
  const int64_t T = 1000, E = 256, El = 32, off = 32, H = 256;
  const int K = 8, tile = 16;
  const auto ids = random_ids(T, K, E, 4242);
  const auto p = ref::fp4_moe_permute(ids, T, K, El, off, tile);
  const auto x = random_values(T * H, 4243, DType::bf16);
  const auto w = random_values(T * K, 4244, DType::bf16, 0.3f, 0.2f);
  std::vector<float> act(std::max<int32_t>(p.offsets[El], 1) * H, 0.0f);
  for (int64_t row = 0; row < p.offsets[El]; ++row)
    if (p.perm_token[row] >= 0) std::copy_n(x.begin() + p.perm_token[row] * H, H, act.begin() + row * H);
  const auto want = ref::fp4_moe_finalize(act, H, p.expanded, w, T, K, H);
  const int64_t rows_cap = T * K + El * (tile - 1);
  DeviceBuffer ib(r, T * K * 4), cb(r, El * 4), ob(r, (El + 1) * 4), eb(r, T * K * 4), tb(r, rows_cap * 4),
      kb(r, rows_cap * 4), chb(r, detail::fp4_moe_permute_chunk_words(T, El) * 4), xb(r, T * H * 2),
      ab(r, rows_cap * H * 2), wb(r, T * K * 2), outb(r, T * H * 2);
  ib.upload(ids);
  xb.upload(encode(DType::bf16, x));
  wb.upload(encode(DType::bf16, w));
  auto poison = [&] {
    for (DeviceBuffer* b : {&cb, &ob, &eb, &tb, &kb, &chb, &ab, &outb}) b->poison();
  };
  auto chain = [&](Stream st) {
    detail::Fp4MoePermuteCall pc;
    pc.topk_ids = static_cast<const int32_t*>(ib.data());
    pc.tokens = T;
    pc.top_k = K;
    pc.experts = El;
    pc.expert_offset = off;
    pc.token_tile = tile;
    pc.expert_counts = static_cast<int32_t*>(cb.data());
    pc.expert_offsets = static_cast<int32_t*>(ob.data());
    pc.expanded_idx_to_permuted_idx = static_cast<int32_t*>(eb.data());
    pc.permuted_idx_to_token = static_cast<int32_t*>(tb.data());
    pc.permuted_idx_to_k = static_cast<int32_t*>(kb.data());
    pc.chunk_counts = static_cast<int32_t*>(chb.data());
    detail::fp4_moe_permute(r, pc, st);
    detail::Fp4MoeGatherCall gc;
    gc.hidden = xb.data();
    gc.format = Fp4MoeHiddenFormat::bf16;
    gc.hidden_size = H;
    gc.permuted_idx_to_token = pc.permuted_idx_to_token;
    gc.expert_offsets = pc.expert_offsets;
    gc.experts = El;
    gc.rows_cap = rows_cap;
    gc.act = ab.data();
    gc.pdl = true;
    detail::fp4_moe_gather(r, gc, st);
    detail::Fp4MoeFinalizeCall fc;
    fc.y = ab.data();
    fc.y_ld = H;
    fc.expanded_idx_to_permuted_idx = pc.expanded_idx_to_permuted_idx;
    fc.weights = wb.data();
    fc.tokens = T;
    fc.top_k = K;
    fc.hidden_out = H;
    fc.out = outb.data();
    fc.out_ld = H;
    fc.pdl = true;
    detail::fp4_moe_finalize(r, fc, st);
  };
  auto verify = [&](const char* what) {
    SCOPED_TRACE(what);
    EXPECT_TRUE(bitwise_equal("expanded", eb.download<int32_t>(T * K), p.expanded));
    EXPECT_TRUE(bitwise_equal("out", decode(DType::bf16, outb.download<uint8_t>(T * H * 2)), want));
  };
  poison();
  chain(nullptr);
  synchronize();
  verify("direct call");
  CUstream s1 = nullptr, s2 = nullptr;
  ASSERT_EQ(d.cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(d.cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(d.cuStreamBeginCapture(s1, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), CUDA_SUCCESS);
  chain(reinterpret_cast<Stream>(s1));
  CUgraph graph = nullptr;
  ASSERT_EQ(d.cuStreamEndCapture(s1, &graph), CUDA_SUCCESS);
  CUgraphExec exec = nullptr;
  ASSERT_EQ(d.cuGraphInstantiateWithFlags(&exec, graph, 0), CUDA_SUCCESS);
  poison();
  ASSERT_EQ(d.cuGraphLaunch(exec, s1), CUDA_SUCCESS);
  ASSERT_EQ(d.cuStreamSynchronize(s1), CUDA_SUCCESS);
  verify("replay 1");
  poison();
  ASSERT_EQ(d.cuGraphLaunch(exec, s2), CUDA_SUCCESS);
  ASSERT_EQ(d.cuStreamSynchronize(s2), CUDA_SUCCESS);
  verify("replay 2 on another stream");
  d.cuGraphExecDestroy(exec);
  d.cuGraphDestroy(graph);
  d.cuStreamDestroy(s1);
  d.cuStreamDestroy(s2);
}

// ---- the whole layer (needs the grouped GEMM) ------------------------------------------------------------------

struct LayerCase {
  int64_t T, H, I, E, El, off;
  int K;
  Fp4MoeRoutingMethod method;
  Fp4MoeActivation act;
  Fp4WeightFormat wf;
  Fp4MoeHiddenFormat hf;
  bool finalize = true;
  int64_t H_out = 0;  // 0: H
  bool bias = false, scalars = false, pts = false, replay = false;
  DType logits = DType::f32;
  bool graph = false;  // also: a second direct call and a CUDA-graph replay give the same bytes (do_finalize only)
};

std::string describe(const LayerCase& c) {
  return fmt::format("T {} H {} I {} E {} E_l {} off {} K {} method {} act {} w {} x {} finalize {} H_out {} bias {} "
                     "scalars {} pts {} replay {}",
                     c.T, c.H, c.I, c.E, c.El, c.off, c.K, static_cast<int>(c.method), static_cast<int>(c.act),
                     static_cast<int>(c.wf), static_cast<int>(c.hf), c.finalize, c.H_out, c.bias, c.scalars, c.pts,
                     c.replay);
}

// rel-L2 ≤ 4e-3 and |d| ≤ 2^−7·|ref| + 2^−8·rms(ref) + slack[i] element-wise (spec §10.4, W4A16 vs the bf16-h
// reference). slack: for the finalized output 2^−8·Σ_k |w_k·y_k| — one bf16 ulp of each summand, because GEMM2's
// rows y are rounded to bf16 (gemm2_output, spec §8) in the kernel and in the reference alike, and where their fp32
// sums sit on a rounding boundary the two round one ulp apart; in a cancelling sum that ulp exceeds the spec's
// terms (session 32: 2 elements of 2.3 M, by 6 %).
::testing::AssertionResult close_to(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                                    const std::vector<double>& slack = {}) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  double ss = 0, dd = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    ss += static_cast<double>(want[i]) * want[i];
    dd += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
  }
  const double rms = want.empty() ? 0.0 : std::sqrt(ss / want.size());
  if (ss == 0.0) {
    for (size_t i = 0; i < got.size(); ++i)
      if (got[i] != 0.0f) return ::testing::AssertionFailure() << what << ": [" << i << "] = " << got[i] << ", want 0";
    return ::testing::AssertionSuccess();
  }
  const double rel = std::sqrt(dd / ss);
  if (!(rel <= 4e-3)) return ::testing::AssertionFailure() << what << ": rel-L2 " << rel << " > 4e-3";
  return all_equal(
      what, static_cast<int64_t>(want.size()),
      [&](int64_t i) {
        return std::fabs(static_cast<double>(got[i]) - want[i]) <=
               std::ldexp(std::fabs(want[i]), -7) + rms / 256 + (slack.empty() ? 0.0 : slack[i]);
      },
      [&](int64_t i) { return fmt::format("[{}]: {} vs {} (rms {})", i, got[i], want[i], rms); });
}

class Fp4MoeLayerGpu : public GpuTest {
 protected:
  void run(const LayerCase& c);
};

void Fp4MoeLayerGpu::run(const LayerCase& c) {
  using A = Fp4MoeActivation;
  using F = Fp4MoeHiddenFormat;
  Runtime& r = rt();
  SCOPED_TRACE(describe(c));
  const uint64_t seed = mix_seed({uint64_t(c.T), uint64_t(c.H), uint64_t(c.I), uint64_t(c.E), uint64_t(c.K),
                                  uint64_t(c.method), uint64_t(c.act), uint64_t(c.wf), uint64_t(c.hf)});
  const bool gated = c.act == A::Swiglu || c.act == A::Geglu;
  const bool mx = c.wf == Fp4WeightFormat::mxfp4;
  const int64_t T = c.T, H = c.H, I = c.I, El = c.El, R1 = gated ? 2 * I : I, H_out = c.H_out ? c.H_out : H;
  const int K = c.K;

  ref::Fp4MoeLayerProblem p;
  p.T = T;
  p.H = H;
  p.I = I;
  p.E = c.E;
  p.E_l = El;
  p.expert_offset = c.off;
  p.H_out = H_out;
  p.route.method = static_cast<ref::Fp4MoeRouting>(static_cast<int>(c.method));
  p.route.top_k = K;
  if (c.method == Fp4MoeRoutingMethod::DeepSeekV3 && c.E >= 64) {
    p.route.n_group = 8;
    p.route.topk_group = 4;
  }
  p.route.routed_scaling_factor = 2.5f;
  p.activation = static_cast<ref::Fp4MoeAct>(static_cast<int>(c.act));
  p.logits = distinct_logits(T, c.E, seed, c.logits);
  const bool rbias = c.method == Fp4MoeRoutingMethod::DeepSeekV3 || c.method == Fp4MoeRoutingMethod::MiniMax2;
  if (rbias) {
    p.routing_bias = randn(c.E, seed + 1, 0.05f);
    round_to(c.logits, p.routing_bias);
  }

  // Weights: fp32 → the reference quantizers (NVFP4 with a per-expert global scale G_w) → dequantized from the codes.
  auto quant_w = [&](int64_t R, int64_t C, uint64_t sd, std::vector<uint8_t>& q, std::vector<uint8_t>& sf,
                     std::vector<float>& g) {
    const auto w = randn(El * R * C, sd, 1.0f / std::sqrt(static_cast<float>(C)));
    for (int64_t e = 0; e < El; ++e) {
      std::span<const float> we(w.data() + e * R * C, R * C);
      float amax = 0;
      for (float v : we) amax = std::max(amax, std::fabs(v));
      const float G = mx ? 1.0f : 448.0f * 6.0f / amax;
      const ref::BlockQuant b = mx ? ref::quantize_mxfp4(we, C) : ref::quantize_nvfp4(we, C, G);
      q.insert(q.end(), b.q.begin(), b.q.end());
      sf.insert(sf.end(), b.sf.begin(), b.sf.end());
      g.push_back(G);
    }
  };
  std::vector<uint8_t> q1, sf1, q2, sf2;
  std::vector<float> g1, g2;
  quant_w(R1, H, seed + 2, q1, sf1, g1);
  quant_w(H, I, seed + 3, q2, sf2, g2);
  p.w1 = ref::fp4_moe_dequant_weights(mx, El, R1, H, q1, sf1);
  p.w2 = ref::fp4_moe_dequant_weights(mx, El, H, I, q2, sf2);

  // Hidden states.
  const auto xr = randn(T * H, seed + 4, 1.0f);
  std::vector<float> xb;
  ref::BlockQuant xq;
  float Gx = 1.0f;
  if (c.hf == F::bf16) {
    xb = xr;
    round_to(DType::bf16, xb);
  } else if (c.hf == F::nvfp4) {
    float amax = 1e-30f;
    for (float v : xr) amax = std::max(amax, std::fabs(v));
    Gx = 448.0f * 6.0f / amax;
    xq = ref::quantize_nvfp4(xr, H, Gx);
  } else if (c.hf == F::mxfp8) {
    xq = ref::quantize_mxfp8(xr, H);
  } else {
    xq.q.resize(T * H);  // per-tensor E4M3 codes of magnitude 2^−3 … 2^3, either sign
    uint64_t s = seed | 1;
    for (auto& q : xq.q) q = static_cast<uint8_t>((lcg(s) & 0x80) | (0x20 + lcg(s) % 0x30));
  }
  p.x = ref::fp4_moe_dequant_hidden(static_cast<ref::Fp4MoeHidden>(static_cast<int>(c.hf)), T, H, xb, xq.q, xq.sf);
  if (c.pts) {
    p.per_token_scale.resize(T);
    uint64_t s = seed | 1;
    for (auto& v : p.per_token_scale) v = (0.5f + static_cast<float>(lcg(s) % 1000) / 1000.0f) / Gx;
  }
  // §7 scalars: s_gate = 1/(G_x·G_w1), s_c = G_c/(G_x·G_w1) (gated) or G_c, s_2 = 1/(G_c·G_w2); G_c = 4.
  if (c.scalars || !mx || c.hf == F::nvfp4) {
    const float Gc = 4.0f;
    for (int64_t e = 0; e < El; ++e) {
      const float gx = c.pts ? 1.0f : Gx;
      p.s_gate.push_back(1.0f / (gx * g1[e]));
      p.s_c.push_back(gated ? Gc / (gx * g1[e]) : Gc);
      p.s_2.push_back(1.0f / (Gc * g2[e]));
    }
  }
  if (c.bias) {
    p.b1 = randn(El * R1, seed + 5, 0.1f);
    p.b2 = randn(El * H, seed + 6, 0.1f);
    for (int64_t e = 0; e < El; ++e) {  // accumulator units: b' = b_real / s_gate, b2' = b2_real / s_2
      for (int64_t j = 0; j < R1; ++j) p.b1[e * R1 + j] /= p.s_gate.empty() ? 1.0f : p.s_gate[e];
      for (int64_t j = 0; j < H; ++j) p.b2[e * H + j] /= p.s_2.empty() ? 1.0f : p.s_2[e];
    }
    if (c.act == A::Swiglu) {
      for (int64_t e = 0; e < El; ++e) {
        p.alpha.push_back(1.702f);
        p.beta.push_back(1.0f);
        p.limit.push_back(7.0f);
      }
    }
  }
  const ref::Fp4MoeLayerResult want = ref::fp4_moe_layer(p);

  // Device side.
  auto up = [&](auto& buf, const auto& v) {
    buf = DeviceBuffer(r, std::max<size_t>(v.size() * sizeof(v[0]), 1));
    if (!v.empty()) buf.upload(v);
  };
  DeviceBuffer zb(r, std::max<int64_t>(T * c.E, 1) * dtype_size(c.logits)), rbb, xb_d, xsb, ptsb, q1b, sf1b, q2b,
      sf2b, b1b, b2b, ab, bb, lb, scb, sgb, s2b;
  if (T > 0) zb.upload(encode(c.logits, p.logits));
  if (rbias) {
    rbb = DeviceBuffer(r, c.E * dtype_size(c.logits));
    rbb.upload(encode(c.logits, p.routing_bias));
  }
  if (c.hf == F::bf16) {
    xb_d = DeviceBuffer(r, std::max<int64_t>(T * H * 2, 1));
    if (T > 0) xb_d.upload(encode(DType::bf16, xb));
  } else {
    up(xb_d, xq.q);
    up(xsb, xq.sf);
  }
  up(ptsb, p.per_token_scale);
  up(q1b, q1);
  up(sf1b, sf1);
  up(q2b, q2);
  up(sf2b, sf2);
  up(b1b, p.b1);
  up(b2b, p.b2);
  up(ab, p.alpha);
  up(bb, p.beta);
  up(lb, p.limit);
  up(scb, p.s_c);
  up(sgb, p.s_gate);
  up(s2b, p.s_2);
  const int64_t B = mx ? 32 : 16;
  const Fp4WeightFormat wf = c.wf;
  const int64_t n1 = fp4_moe_packed_bytes(El, R1, H, wf), n2 = fp4_moe_packed_bytes(El, H, I, wf);
  DeviceBuffer p1(r, n1), p2(r, n2);
  const Fp4MoeWeights w1 = fp4_moe_prepack(r, q1b.ref(DType::u8, {El, R1, H / 2}), sf1b.ref(DType::u8, {El, R1, H / B}),
                                           wf, gated, p1.ref(DType::u8, {n1}), nullptr);
  const Fp4MoeWeights w2 = fp4_moe_prepack(r, q2b.ref(DType::u8, {El, H, I / 2}), sf2b.ref(DType::u8, {El, H, I / B}),
                                           wf, false, p2.ref(DType::u8, {n2}), nullptr);

  Fp4MoeInputs in;
  in.routing_logits = zb.ref(c.logits, {T, c.E});
  const TensorRef rb_t = rbb.ref(c.logits, {c.E});
  if (rbias) in.routing_bias = &rb_t;
  TensorRef xs_t;
  if (c.hf == F::bf16) in.hidden_states = xb_d.ref(DType::bf16, {T, H});
  else if (c.hf == F::nvfp4) in.hidden_states = xb_d.ref(DType::u8, {T, H / 2});
  else in.hidden_states = xb_d.ref(DType::e4m3, {T, H});
  if (c.hf == F::nvfp4 || c.hf == F::mxfp8) {
    xs_t = xsb.ref(DType::e4m3, {T, H / (c.hf == F::nvfp4 ? 16 : 32)});
    in.hidden_states_scale = &xs_t;
  }
  const TensorRef pts_t = ptsb.ref(DType::f32, {T});
  if (c.pts) in.per_token_scale = &pts_t;
  in.w1 = w1;
  in.w2 = w2;
  const TensorRef b1_t = b1b.ref(DType::f32, {El, R1}), b2_t = b2b.ref(DType::f32, {El, H});
  const TensorRef a_t = ab.ref(DType::f32, {El}), be_t = bb.ref(DType::f32, {El}), l_t = lb.ref(DType::f32, {El});
  const TensorRef sc_t = scb.ref(DType::f32, {El}), sg_t = sgb.ref(DType::f32, {El}), s2_t = s2b.ref(DType::f32, {El});
  if (c.bias) {
    in.gemm1_bias = &b1_t;
    in.gemm2_bias = &b2_t;
  }
  if (!p.alpha.empty()) {
    in.gemm1_alpha = &a_t;
    in.gemm1_beta = &be_t;
    in.gemm1_clamp_limit = &l_t;
  }
  if (!p.s_c.empty()) {
    in.output1_scale_scalar = &sc_t;
    in.output1_scale_gate_scalar = &sg_t;
    in.output2_scale_scalar = &s2_t;
  }
  const int64_t N = T + 5;
  DeviceBuffer replay(r, N * K * 2);
  replay.poison();
  const TensorRef replay_t = replay.ref(DType::i16, {N, K});
  if (c.replay) in.routing_replay_out = &replay_t;

  Fp4MoeOptions opt;
  opt.routing.method = c.method;
  opt.routing.top_k = K;
  opt.routing.n_group = p.route.n_group;
  opt.routing.topk_group = p.route.topk_group;
  opt.routing.routed_scaling_factor = 2.5f;
  opt.activation = c.act;
  opt.hidden_format = c.hf;
  opt.num_experts = c.E;
  opt.local_expert_offset = c.off;
  opt.do_finalize = c.finalize;

  const int64_t rows_cap = fp4_moe_max_padded_rows(r, T, K, El);
  DeviceBuffer outb(r, std::max<int64_t>(T * H_out * 2, 1)), g2b(r, std::max<int64_t>(rows_cap * H * 2, 1)),
      ewb(r, std::max<int64_t>(T * K * 2, 1)), exb(r, std::max<int64_t>(T * K * 4, 1));
  for (DeviceBuffer* b : {&outb, &g2b, &ewb, &exb}) b->poison();
  const TensorRef out_t = outb.ref(DType::bf16, {T, H_out}), g2_t = g2b.ref(DType::bf16, {rows_cap, H}),
                  ew_t = ewb.ref(DType::bf16, {T, K}), ex_t = exb.ref(DType::i32, {T * K});
  Fp4MoeOutputs out;
  if (c.finalize) {
    out.output = &out_t;
  } else {
    out.gemm2_output = &g2_t;
    out.expert_weights = &ew_t;
    out.expanded_idx_to_permuted_idx = &ex_t;
  }
  fp4_block_scale_moe(r, in, out, opt, nullptr);
  synchronize();
  for (DeviceBuffer* b : {&outb, &g2b, &ewb, &exb, &replay}) EXPECT_TRUE(b->guards_intact());
  if (T == 0) return;

  if (c.replay) {
    const auto rp = replay.download<int16_t>(N * K);
    for (int64_t i = 0; i < N * K; ++i)
      ASSERT_EQ(rp[i], i < T * K ? static_cast<int16_t>(want.route.ids[i]) : static_cast<int16_t>(0x5555)) << i;
  }
  if (c.finalize) {
    const auto bytes = outb.download<uint8_t>(T * H_out * 2);
    std::vector<double> slack(T * H_out, 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int k = 0; k < K; ++k) {
        const double wk = std::fabs(static_cast<double>(want.route.weights[t * K + k]));
        for (int64_t h = 0; h < H_out; ++h)
          slack[t * H_out + h] += std::ldexp(wk * std::fabs(want.y[(t * K + k) * H + h]), -8);
      }
    EXPECT_TRUE(close_to("output", decode(DType::bf16, bytes), want.out, slack));
    if (!c.graph) return;
    outb.poison();
    fp4_block_scale_moe(r, in, out, opt, nullptr);
    synchronize();
    EXPECT_TRUE(bitwise_equal("second call", outb.download<uint8_t>(T * H_out * 2), bytes));
    const auto& d = detail::driver();
    CUstream st = nullptr;
    ASSERT_EQ(d.cuStreamCreate(&st, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    ASSERT_EQ(d.cuStreamBeginCapture(st, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), CUDA_SUCCESS);
    fp4_block_scale_moe(r, in, out, opt, reinterpret_cast<Stream>(st));
    CUgraph graph = nullptr;
    ASSERT_EQ(d.cuStreamEndCapture(st, &graph), CUDA_SUCCESS);
    CUgraphExec exec = nullptr;
    ASSERT_EQ(d.cuGraphInstantiateWithFlags(&exec, graph, 0), CUDA_SUCCESS);
    outb.poison();
    ASSERT_EQ(d.cuGraphLaunch(exec, st), CUDA_SUCCESS);
    ASSERT_EQ(d.cuStreamSynchronize(st), CUDA_SUCCESS);
    EXPECT_TRUE(bitwise_equal("graph replay", outb.download<uint8_t>(T * H_out * 2), bytes));
    d.cuGraphExecDestroy(exec);
    d.cuGraphDestroy(graph);
    d.cuStreamDestroy(st);
    return;
  }
  // do_finalize false: the index map exactly, the weights within one bf16 ulp, the rows of gemm2_output.
  const int tile = detail::fp4_moe_layer_token_tile(r, T, K, El);
  const auto perm = ref::fp4_moe_permute(want.route.ids, T, K, El, c.off, tile);
  EXPECT_TRUE(bitwise_equal("expanded_idx_to_permuted_idx", exb.download<int32_t>(T * K), perm.expanded));
  const auto w = decode(DType::bf16, ewb.download<uint8_t>(T * K * 2));
  for (int64_t i = 0; i < T * K; ++i) {
    const float ulp = std::ldexp(1.0f, std::ilogb(std::max(std::fabs(want.route.weights[i]), 1e-30f)) - 7);
    ASSERT_LE(std::fabs(w[i] - want.route.weights[i]), ulp) << "expert weight " << i;
  }
  const auto g2out = decode(DType::bf16, g2b.download<uint8_t>(rows_cap * H * 2));
  std::vector<float> got_rows, want_rows;
  for (int64_t i = 0; i < T * K; ++i) {
    if (perm.expanded[i] < 0) continue;
    got_rows.insert(got_rows.end(), g2out.begin() + perm.expanded[i] * H, g2out.begin() + (perm.expanded[i] + 1) * H);
    want_rows.insert(want_rows.end(), want.y.begin() + i * H, want.y.begin() + (i + 1) * H);
  }
  EXPECT_TRUE(close_to("gemm2_output rows", got_rows, want_rows));
}

using M = Fp4MoeRoutingMethod;
using A = Fp4MoeActivation;
using WF = Fp4WeightFormat;
using HF = Fp4MoeHiddenFormat;

// The spec §10.3 subset: T {0, 1, 3, 17, 257, 1000}, H {128, 256, 640}, I {128, 384}, E {8, 32}, K {1, 2, 4}, every
// routing method (0 … 8) and activation, both weight formats, bf16 / nvfp4 / mxfp8 (and e4m3) hidden states.
TEST_F(Fp4MoeLayerGpu, MatrixMatchesTheReference) {
  const std::vector<LayerCase> cases = {
      {0, 128, 128, 8, 8, 0, 2, M::Renormalize, A::Swiglu, WF::mxfp4, HF::bf16},
      {1, 128, 128, 8, 8, 0, 1, M::Default, A::Swiglu, WF::nvfp4, HF::bf16},
      {3, 256, 128, 8, 8, 0, 2, M::Renormalize, A::Geglu, WF::mxfp4, HF::mxfp8},
      {17, 256, 384, 32, 32, 0, 4, M::DeepSeekV3, A::Swiglu, WF::nvfp4, HF::nvfp4},
      {17, 640, 128, 8, 8, 0, 1, M::Llama4, A::Relu2, WF::nvfp4, HF::bf16},
      {257, 128, 384, 32, 32, 0, 4, M::RenormalizeNaive, A::Identity, WF::mxfp4, HF::bf16},
      {257, 256, 128, 32, 32, 0, 2, M::TopK, A::Swiglu, WF::mxfp4, HF::mxfp8},
      {1000, 640, 384, 32, 32, 0, 4, M::SigmoidRenorm, A::Geglu, WF::nvfp4, HF::nvfp4},
      {1000, 256, 128, 32, 32, 0, 2, M::MiniMax2, A::Relu2, WF::mxfp4, HF::bf16},
      {257, 128, 128, 8, 8, 0, 2, M::Sigmoid, A::Identity, WF::nvfp4, HF::e4m3},
  };
  for (const LayerCase& c : cases) run(c);
}

TEST_F(Fp4MoeLayerGpu, BiasesScalarsAlphaBetaLimitAndPerTokenScale) {
  LayerCase c{257, 256, 384, 32, 32, 0, 4, M::Renormalize, A::Swiglu, WF::mxfp4, HF::bf16};
  c.bias = true;
  c.scalars = true;
  run(c);
  LayerCase d{100, 256, 128, 8, 8, 0, 2, M::Default, A::Swiglu, WF::nvfp4, HF::nvfp4};
  d.bias = true;
  d.pts = true;
  run(d);
  LayerCase g{17, 128, 128, 32, 32, 0, 2, M::DeepSeekV3, A::Geglu, WF::nvfp4, HF::bf16};
  g.bias = true;
  g.logits = DType::bf16;
  run(g);
}

// Expert parallelism (a slice, a rank with no local hits: all zeros), H_out < H, replay with N > T.
TEST_F(Fp4MoeLayerGpu, ExpertParallelismHOutAndReplay) {
  LayerCase a{257, 256, 128, 32, 8, 16, 4, M::Renormalize, A::Swiglu, WF::mxfp4, HF::bf16};
  a.replay = true;
  run(a);
  LayerCase b{17, 640, 384, 32, 8, 24, 2, M::DeepSeekV3, A::Swiglu, WF::nvfp4, HF::nvfp4};
  b.H_out = 512;
  b.replay = true;
  run(b);
  LayerCase none{3, 128, 128, 32, 4, 28, 1, M::Default, A::Identity, WF::nvfp4, HF::bf16};
  run(none);  // the reference's out is all zeros unless a token picks experts 28 … 31
}

// Deterministic (two calls, the same bytes) and CUDA-graph safe (a captured call replays to the same bytes).
TEST_F(Fp4MoeLayerGpu, DeterministicAndCudaGraphSafe) {
  LayerCase a{1000, 256, 128, 256, 32, 64, 8, M::DeepSeekV3, A::Swiglu, WF::nvfp4, HF::nvfp4};
  a.graph = true;
  a.replay = true;
  run(a);
}

TEST_F(Fp4MoeLayerGpu, WithoutFinalizeReturnsTheThreeTensors) {
  LayerCase a{257, 256, 384, 32, 32, 0, 4, M::Renormalize, A::Swiglu, WF::mxfp4, HF::bf16};
  a.finalize = false;
  run(a);
  LayerCase b{17, 128, 128, 32, 8, 8, 2, M::Sigmoid, A::Relu2, WF::nvfp4, HF::mxfp8};
  b.finalize = false;
  b.replay = true;
  run(b);
}

}  // namespace
}  // namespace kiln::test
