// tests/gpu/moe_layer_test.cpp — the end-to-end MoE layer (issue 7 item 3), forward and backward, at T=512,
// hidden 256, E=16, top-4, n=128, against a double-precision CPU reference of the whole layer
// (tests/reference/moe_layer.*, whose error budget is derived there from the fp8 and bf16 rounding steps).
//
// The chain, kiln ops on the GPU and the expert GEMMs on the host (a per-expert double loop reading the downloaded
// fp8 codes × scales in the layouts the neighbouring kernels produce — the point is that those layouts fit):
//   router_gemm_fp32_fwd → moe_topk_routing_fwd with the padded row-id map fused (multiple_of 16)
//   → moe_permute_block_quant(x): fp8 rows + segmented 1×128 scales (FC1's LHS) and the transposed segmented layout
//     (FC1's wgrad operand), probs_out → FC1 (host) → batch_weighted_silu_block_quant_fwd (padded counts, probs_out)
//   → FC2 (host) → moe_unpermute (unweighted: the probs were applied in the SiLU)
//   backward: moe_permute_block_quant(dy) (the combine's backward, quantized for dgrad and wgrad) → FC2ᵀ and dW2
//   (host) → batch_weighted_silu_block_quant_bwd (dx both layouts + dprob) → FC1ᵀ and dW1 (host) → moe_unpermute
//   (the permute's backward) → moe_unpermute's restore_probs (dprob → dprobs [T, E]) → moe_topk_routing_bwd →
//   router_gemm_fp32_bwd (dx_router, dwr).
// Why moe_permute_block_quant for x (and not "quantize x, then moe_permute the fp8 rows and scales"): FC1's wgrad
// needs x quantized in 128-token blocks *per expert segment* (the transposed layout), which only exists after the
// permute; quantizing x row-wise before the permute gives the forward operand only and a second pass would be needed
// for the transposed one. The fused op reads x once and writes both, padded, as a real fp8 layer (linghe HEAD's
// block-padded permute) does. The same holds for dy in the backward.
#include "reference/moe_layer.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kiln/ops/moe.hpp"
#include "kiln/ops/router_gemm.hpp"
#include "kiln/ops/silu.hpp"
#include "reference/moe.hpp"
#include "reference/rms_norm.hpp"
#include "reference/silu.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

using ref::MoeLayerRouting;

class MoeLayerTest : public GpuTest {
 protected:
  // Counts of differing elements with the first few described.
  template <typename T>
  static ::testing::AssertionResult same(const char* what, const std::vector<T>& got, const std::vector<T>& want,
                                         int64_t n) {
    if (static_cast<int64_t>(got.size()) < n || static_cast<int64_t>(want.size()) < n)
      return ::testing::AssertionFailure() << what << ": size";
    return all_equal(
        what, n, [&](int64_t i) { return std::memcmp(&got[i], &want[i], sizeof(T)) == 0; },
        [&](int64_t i) {
          return "[" + std::to_string(i) + "] got " + ::testing::PrintToString(+got[i]) + " want " +
                 ::testing::PrintToString(+want[i]);
        });
  }

  void run(size_t index) {
    Runtime& rt = GpuTest::rt();
    const std::vector<ref::MoeLayerCase> cases = ref::moe_layer_cases();
    ASSERT_LT(index, cases.size());
    const ref::MoeLayerCase& cs = cases[index];
    const ref::MoeLayerShape& s = cs.shape;
    const MoeLayerRouting routing = cs.routing;
    const uint64_t seed = cs.seed;
    const int64_t T = s.T, H = s.H, E = s.E, n = s.n, num_out = s.num_out();
    const ref::MoeLayerInputs in = ref::make_moe_layer_inputs(s, seed, routing);
    const bool has_bias = !in.bias.empty();
    SCOPED_TRACE(std::string(cs.name) + ": routing " + std::to_string(static_cast<int>(routing)) + ", k " +
                 std::to_string(s.k) + ", n " + std::to_string(n) + ", renormalize " + std::to_string(s.renormalize) +
                 ", num_out " + std::to_string(num_out));

    MoeRoutingOptions ro;
    ro.top_k = static_cast<int>(s.k);
    ro.score = MoeScore::softmax;
    ro.renormalize = s.renormalize;
    MoePermuteOptions po;
    po.top_k = static_cast<int>(s.k);
    po.multiple_of = s.multiple_of;

    // ---- router + routing + map ----
    DeviceBuffer xb(rt, T * H * 2), wrb(rt, E * H * 2), bb(rt, E * 4), lb(rt, T * E * 4), pb(rt, T * E * 4),
        mb(rt, T * E), cb(rt, E * 4), rb(rt, T * E * 4), ib(rt, num_out * 4), pcb(rt, E * 4), ob(rt, (E + 1) * 4);
    xb.upload(encode(DType::bf16, in.x));
    wrb.upload(encode(DType::bf16, in.wr));
    if (has_bias) bb.upload(in.bias);
    for (DeviceBuffer* b : {&lb, &pb, &mb, &cb, &rb, &ib, &pcb, &ob}) b->poison();
    const TensorRef x = xb.ref(DType::bf16, {T, H}), wr = wrb.ref(DType::bf16, {E, H});
    const TensorRef logits = lb.ref(DType::f32, {T, E}), probs = pb.ref(DType::f32, {T, E});
    const TensorRef rmap = mb.ref(DType::u8, {T, E});
    MoeRowIdMap map{rb.ref(DType::i32, {T, E}), ib.ref(DType::i32, {num_out}), cb.ref(DType::i32, {E}),
                    pcb.ref(DType::i32, {E}), ob.ref(DType::i32, {E + 1})};
    router_gemm_fp32_fwd(rt, x, wr, logits, nullptr);
    moe_topk_routing_fwd(rt, logits, has_bias ? bb.ref(DType::f32, {E}) : TensorRef{}, probs, rmap,
                         map.tokens_per_expert, ro, nullptr, &map, s.multiple_of);
    synchronize();
    struct {
      ref::MoeLayerGot got;
    } g;
    g.got.logits = lb.download<float>(T * E);
    g.got.probs = pb.download<float>(T * E);
    const std::vector<uint8_t> routing_map = mb.download<uint8_t>(T * E);
    const std::vector<int32_t> offsets = ob.download<int32_t>(E + 1);
    const std::vector<int32_t> padded = pcb.download<int32_t>(E);
    const std::vector<int> pc(padded.begin(), padded.end());
    const int64_t M = offsets[E];

    // Stage checks (exact rules; they localize a failure of the whole-layer comparison below).
    ref::TopkOptions to;
    to.top_k = ro.top_k;
    to.renormalize = s.renormalize;
    const ref::TopkResult tk = ref::topk_routing(g.got.logits, T, E, in.bias, to);
    ASSERT_TRUE(same("routing_map", routing_map, tk.routing_map, T * E));
    EXPECT_TRUE(same("probs (exact top-k of the device's logits)", g.got.probs, tk.probs, T * E));
    const ref::RowIdMapResult want_map = ref::row_id_map(routing_map, T, E, s.multiple_of, num_out);
    ASSERT_TRUE(same("offsets", offsets, want_map.offsets, E + 1));
    ASSERT_TRUE(same("padded_counts", padded, want_map.padded_counts, E));
    EXPECT_TRUE(same("tokens_per_expert", cb.download<int32_t>(E), want_map.counts, E));
    ASSERT_TRUE(same("row_id_map", rb.download<int32_t>(T * E), want_map.row_id_map, T * E));
    ASSERT_TRUE(M > 0 && M <= num_out) << "M = " << M;
    {
      std::string c;
      for (int64_t e = 0; e < E; ++e) c += " " + std::to_string(want_map.counts[e]) + "/" + std::to_string(pc[e]);
      std::printf("counts (real/padded):%s; M = %lld of num_out %lld\n", c.c_str(), static_cast<long long>(M),
                  static_cast<long long>(num_out));
    }

    // ---- permute + quantize x ----
    const int64_t nbq = moe_block_quant_scale_blocks(num_out, E);
    DeviceBuffer xq(rt, num_out * H), xqs(rt, num_out * H / 128 * 4), xqT(rt, num_out * H), xqTs(rt, nbq * H * 4),
        pob(rt, num_out * 4);
    for (DeviceBuffer* b : {&xq, &xqs, &xqT, &xqTs, &pob}) b->poison();
    moe_permute_block_quant(
        rt, x, probs, map,
        {xq.ref(DType::e4m3, {num_out, H}), xqs.ref(DType::f32, {num_out * H / 128}),
         xqT.ref(DType::e4m3, {num_out * H}), xqTs.ref(DType::f32, {nbq * H}), pob.ref(DType::f32, {num_out})},
        po, nullptr);
    synchronize();
    const std::vector<uint8_t> xq_h = xq.download<uint8_t>(num_out * H), xqT_h = xqT.download<uint8_t>(num_out * H);
    const std::vector<float> xqs_h = xqs.download<float>(num_out * H / 128), xqTs_h = xqTs.download<float>(nbq * H);
    const std::vector<float> probs_out = pob.download<float>(num_out);
    const std::vector<float> xd = ref::dequant_rowwise_segmented(xq_h, xqs_h, pc, H);
    const std::vector<float> xTd = ref::dequant_transposed_segmented(xqT_h, xqTs_h, pc, H);

    // Cross-check of the other permute path: x quantized first (1×128 row-wise, as kiln's quantizers do, M-major
    // scales [H/128, T]), then moe_permute of the fp8 rows + scales. A row's 1×128 quantization does not depend on
    // where the row goes, so the codes must equal the fused op's bit for bit; the scales are the same numbers in
    // another layout (one M-major [H/128, num_out] instead of per-expert segments) — which a consumer must know.
    {
      const int64_t ns = H / 128;
      std::vector<uint8_t> q8(T * H);
      std::vector<float> sc(ns * T);
      ref::block_quant_rowwise(in.x, T, H, false, q8, sc);
      DeviceBuffer q8b(rt, T * H), scb(rt, ns * T * 4), pq(rt, num_out * H), pqs(rt, ns * num_out * 4),
          ppo(rt, num_out * 4);
      q8b.upload(q8);
      scb.upload(sc);
      for (DeviceBuffer* b : {&pq, &pqs, &ppo}) b->poison();
      MoePermuteOptions o = po;
      o.scale_layout = MoeScaleLayout::m_major;
      moe_permute(rt, q8b.ref(DType::e4m3, {T, H}), scb.ref(DType::f32, {ns, T}), probs, map,
                  pq.ref(DType::e4m3, {num_out, H}), pqs.ref(DType::f32, {ns, num_out}), ppo.ref(DType::f32, {num_out}),
                  o, nullptr);
      synchronize();
      for (DeviceBuffer* b : {&pq, &pqs, &ppo}) EXPECT_TRUE(b->guards_intact()) << "moe_permute wrote out of bounds";
      EXPECT_TRUE(same("moe_permute(fp8) rows vs moe_permute_block_quant q", pq.download<uint8_t>(M * H), xq_h, M * H));
      const std::vector<float> want_sc = ref::segmented_scales_to_m_major(xqs_h, pc, H, num_out, 0.0f);
      const std::vector<float> got_sc = pqs.download<float>(ns * num_out);
      EXPECT_TRUE(all_equal(
          "moe_permute(fp8) scale_out [H/128, num_out] vs the fused op's segmented scales", ns * M,
          [&](int64_t i) {
            const int64_t j = i / M, r = i % M;
            return std::memcmp(&got_sc[j * num_out + r], &want_sc[j * num_out + r], 4) == 0;
          },
          [&](int64_t i) {
            const int64_t j = i / M, r = i % M;
            return "block " + std::to_string(j) + " row " + std::to_string(r) + ": " +
                   std::to_string(got_sc[j * num_out + r]) + " vs " + std::to_string(want_sc[j * num_out + r]);
          }));
      EXPECT_TRUE(same("moe_permute probs_out vs the fused op's", ppo.download<float>(M), probs_out, M));
    }

    // ---- FC1 (host) → SiLU + quant (GPU) ----
    const std::vector<float> z1 = ref::expert_gemm_nt(xd, pc, in.w1, 2 * n, H);
    DeviceBuffer z1b(rt, num_out * 2 * n * 2);
    z1b.poison();
    z1b.upload(encode(DType::bf16, z1));
    const int64_t L = batch_weighted_silu_max_token_blocks(M, E);
    DeviceBuffer hq(rt, M * n), hqs(rt, M * n / 128 * 4), hqT(rt, M * n), hqTs(rt, L * n * 4), st(rt, 4);
    for (DeviceBuffer* b : {&hq, &hqs, &hqT, &hqTs, &st}) b->poison();
    // The SiLU takes exactly M = Σ padded counts rows: views of the first M rows of the num_out-row buffers.
    const TensorRef z1v = z1b.ref(DType::bf16, {M, 2 * n}), pv = pob.ref(DType::f32, {M}),
                    counts = pcb.ref(DType::i32, {E}), status = st.ref(DType::i32, {1});
    BatchSiluOptions so;
    so.output_mode = 2;
    so.check_counts = true;
    batch_weighted_silu_block_quant_fwd(rt, z1v, pv, counts,
                                        {hq.ref(DType::e4m3, {M, n}), hqs.ref(DType::f32, {M * n / 128}),
                                         hqT.ref(DType::e4m3, {M * n}), hqTs.ref(DType::f32, {L * n})},
                                        status, so, nullptr);
    synchronize();
    EXPECT_EQ(st.download<int32_t>(1)[0], 0) << "SiLU forward status";
    const std::vector<uint8_t> hq_h = hq.download<uint8_t>(M * n), hqT_h = hqT.download<uint8_t>(M * n);
    const std::vector<float> hqs_h = hqs.download<float>(M * n / 128), hqTs_h = hqTs.download<float>(L * n);
    {  // stage check: the SiLU's quantized output is the quantization of silu(z1)·prob in the segmented layouts
      const ref::QuantOutputs w = ref::quantize_segmented(
          ref::silu_fwd_values(z1, M, n, std::span<const float>(probs_out.data(), M)), pc, n, false, true, true);
      EXPECT_TRUE(same("SiLU fwd q_scale (segmented)", hqs_h, w.q_scale, M * n / 128));
      EXPECT_TRUE(same("SiLU fwd qT_scale (segmented)", hqTs_h, w.qT_scale, static_cast<int64_t>(w.qT_scale.size())));
      EXPECT_TRUE(same("SiLU fwd q", hq_h, w.q, M * n));
      EXPECT_TRUE(same("SiLU fwd qT (segmented)", hqT_h, w.qT, M * n));
    }
    {  // The same SiLU without the host read of offsets[E]: x, prob and the outputs are the num_out-row buffers and
       // trailing_rows accepts Σ counts ≤ num_out; the experts' segments must hold exactly the bits above.
      const int64_t Lw = batch_weighted_silu_max_token_blocks(num_out, E);
      DeviceBuffer wq(rt, num_out * n), wqs(rt, num_out * n / 128 * 4), wqT(rt, num_out * n), wqTs(rt, Lw * n * 4);
      for (DeviceBuffer* b : {&wq, &wqs, &wqT, &wqTs, &st}) b->poison();
      BatchSiluOptions wo;
      wo.trailing_rows = true;
      batch_weighted_silu_block_quant_fwd(rt, z1b.ref(DType::bf16, {num_out, 2 * n}), pob.ref(DType::f32, {num_out}),
                                          counts,
                                          {wq.ref(DType::e4m3, {num_out, n}), wqs.ref(DType::f32, {num_out * n / 128}),
                                           wqT.ref(DType::e4m3, {num_out * n}), wqTs.ref(DType::f32, {Lw * n})},
                                          status, wo, nullptr);
      synchronize();
      EXPECT_EQ(st.download<int32_t>(1)[0], 0) << "SiLU forward (trailing rows) status";
      EXPECT_TRUE(same("SiLU fwd q (trailing rows)", wq.download<uint8_t>(num_out * n), hq_h, M * n));
      EXPECT_TRUE(same("SiLU fwd q_scale (trailing rows)", wqs.download<float>(num_out * n / 128), hqs_h, M * n / 128));
      EXPECT_TRUE(same("SiLU fwd qT (trailing rows)", wqT.download<uint8_t>(num_out * n), hqT_h, M * n));
      const int64_t nb = ref::token_blocks(pc);
      EXPECT_TRUE(same("SiLU fwd qT_scale (trailing rows)", wqTs.download<float>(Lw * n), hqTs_h, nb * n));
    }
    const std::vector<float> hd = ref::dequant_rowwise_segmented(hq_h, hqs_h, pc, n);
    const std::vector<float> hTd = ref::dequant_transposed_segmented(hqT_h, hqTs_h, pc, n);

    // ---- FC2 (host) → unpermute (GPU) ----
    std::vector<float> y2 = ref::expert_gemm_nt(hd, pc, in.w2, H, n);
    y2.resize(num_out * H, NAN);  // rows past M are never read (bf16 NaN would show if they were)
    DeviceBuffer y2b(rt, num_out * H * 2), yb(rt, T * H * 2);
    y2b.upload(encode(DType::bf16, y2));
    yb.poison();
    moe_unpermute(rt, y2b.ref(DType::bf16, {num_out, H}), map.row_id_map, {}, yb.ref(DType::bf16, {T, H}), {}, po,
                  nullptr);
    synchronize();
    g.got.y = decode(DType::bf16, yb.download<uint8_t>(T * H * 2));

    // ---- backward: dy permute + quantize (GPU) → FC2ᵀ, dW2 (host) ----
    DeviceBuffer dyb(rt, T * H * 2), dq(rt, num_out * H), dqs(rt, num_out * H / 128 * 4), dqT(rt, num_out * H),
        dqTs(rt, nbq * H * 4);
    dyb.upload(encode(DType::bf16, in.dy));
    for (DeviceBuffer* b : {&dq, &dqs, &dqT, &dqTs}) b->poison();
    moe_permute_block_quant(rt, dyb.ref(DType::bf16, {T, H}), {}, map,
                            {dq.ref(DType::e4m3, {num_out, H}),
                             dqs.ref(DType::f32, {num_out * H / 128}),
                             dqT.ref(DType::e4m3, {num_out * H}),
                             dqTs.ref(DType::f32, {nbq * H}),
                             {}},
                            po, nullptr);
    synchronize();
    const std::vector<float> dyd = ref::dequant_rowwise_segmented(dq.download<uint8_t>(num_out * H),
                                                                  dqs.download<float>(num_out * H / 128), pc, H);
    const std::vector<float> dyTd =
        ref::dequant_transposed_segmented(dqT.download<uint8_t>(num_out * H), dqTs.download<float>(nbq * H), pc, H);
    const std::vector<float> gh = ref::expert_gemm_nn(dyd, pc, in.w2, H, n);
    g.got.dw2 = ref::expert_wgrad(dyTd, hTd, pc, H, n);

    // ---- SiLU backward (GPU) → FC1ᵀ, dW1 (host) ----
    DeviceBuffer ghb(rt, M * n * 2), dz(rt, M * 2 * n), dzs(rt, M * 2 * n / 128 * 4), dzT(rt, M * 2 * n),
        dzTs(rt, L * 2 * n * 4), dpb(rt, num_out * 4);
    ghb.upload(encode(DType::bf16, gh));
    for (DeviceBuffer* b : {&dz, &dzs, &dzT, &dzTs, &dpb, &st}) b->poison();
    batch_weighted_silu_block_quant_bwd(rt, ghb.ref(DType::bf16, {M, n}), z1v, pv, counts,
                                        {dz.ref(DType::e4m3, {M, 2 * n}), dzs.ref(DType::f32, {M * 2 * n / 128}),
                                         dzT.ref(DType::e4m3, {M * 2 * n}), dzTs.ref(DType::f32, {L * 2 * n})},
                                        dpb.ref(DType::f32, {M}), status, so, nullptr);
    synchronize();
    EXPECT_EQ(st.download<int32_t>(1)[0], 0) << "SiLU backward status";
    const std::vector<uint8_t> dz_h = dz.download<uint8_t>(M * 2 * n), dzT_h = dzT.download<uint8_t>(M * 2 * n);
    const std::vector<float> dzs_h = dzs.download<float>(M * 2 * n / 128), dzTs_h = dzTs.download<float>(L * 2 * n);
    {  // stage check, as for the forward
      const ref::SiluGrads sg = ref::silu_bwd_values(gh, z1, M, n, std::span<const float>(probs_out.data(), M));
      const ref::QuantOutputs w = ref::quantize_segmented(sg.dx, pc, 2 * n, false, true, true);
      EXPECT_TRUE(same("SiLU bwd q_scale (segmented)", dzs_h, w.q_scale, M * 2 * n / 128));
      EXPECT_TRUE(same("SiLU bwd qT_scale (segmented)", dzTs_h, w.qT_scale, static_cast<int64_t>(w.qT_scale.size())));
      EXPECT_TRUE(same("SiLU bwd q", dz_h, w.q, M * 2 * n));
      EXPECT_TRUE(same("SiLU bwd qT (segmented)", dzT_h, w.qT, M * 2 * n));
    }
    std::vector<float> dxp =
        ref::expert_gemm_nn(ref::dequant_rowwise_segmented(dz_h, dzs_h, pc, 2 * n), pc, in.w1, 2 * n, H);
    g.got.dw1 = ref::expert_wgrad(ref::dequant_transposed_segmented(dzT_h, dzTs_h, pc, 2 * n), xTd, pc, 2 * n, H);

    // ---- permute backward (unpermute of the row gradients), probs restore, routing and router backward (GPU) ----
    dxp.resize(num_out * H, NAN);
    DeviceBuffer dxpb(rt, num_out * H * 2), dxe(rt, T * H * 2), dummy(rt, num_out * 8 * 2), dummy_out(rt, T * 8 * 2),
        dprobs(rt, T * E * 4), dlogits(rt, T * E * 4), dxr(rt, T * H * 2), dwr(rt, E * H * 4);
    dxpb.upload(encode(DType::bf16, dxp));
    dummy.fill(0);
    for (DeviceBuffer* b : {&dxe, &dprobs, &dlogits, &dxr, &dwr}) b->poison();
    moe_unpermute(rt, dxpb.ref(DType::bf16, {num_out, H}), map.row_id_map, {}, dxe.ref(DType::bf16, {T, H}), {}, po,
                  nullptr);
    // dprob [M] → dprobs [T, E]: restore_probs exists only as a by-product of a weighted combine, so a combine of
    // zero rows of width 8 (the narrowest accepted) carries it (see the report on this API).
    moe_unpermute(rt, dummy.ref(DType::bf16, {num_out, 8}), map.row_id_map, dpb.ref(DType::f32, {num_out}),
                  dummy_out.ref(DType::bf16, {T, 8}), dprobs.ref(DType::f32, {T, E}), po, nullptr);
    moe_topk_routing_bwd(rt, dprobs.ref(DType::f32, {T, E}), logits, rmap, dlogits.ref(DType::f32, {T, E}), ro,
                         nullptr);
    router_gemm_fp32_bwd(rt, dlogits.ref(DType::f32, {T, E}), x, wr, dxr.ref(DType::bf16, {T, H}),
                         dwr.ref(DType::f32, {E, H}), {}, nullptr);
    synchronize();
    for (DeviceBuffer* b : {&xq,  &xqs,  &xqT, &xqTs, &pob, &hq,   &hqs, &hqT,    &hqTs,    &dq,  &dqs,
                            &dqT, &dqTs, &dz,  &dzs,  &dzT, &dzTs, &dxe, &dprobs, &dlogits, &dxr, &dwr})
      EXPECT_TRUE(b->guards_intact()) << "a buffer was written out of bounds";
    g.got.dx_expert = decode(DType::bf16, dxe.download<uint8_t>(T * H * 2));
    g.got.dprobs = dprobs.download<float>(T * E);
    g.got.dlogits = dlogits.download<float>(T * E);
    g.got.dx_router = decode(DType::bf16, dxr.download<uint8_t>(T * H * 2));
    g.got.dwr = dwr.download<float>(E * H);

    // ---- the whole layer against the double reference ----
    const ref::MoeLayerRef want = ref::moe_layer_reference(in, s, routing_map);
    const auto checks = ref::compare_moe_layer(g.got, want, ref::moe_layer_tolerances());
    bool all = true;
    for (const auto& c : checks) all = all && c.ok();
    EXPECT_TRUE(all) << "MoE layer vs double reference:" << ref::describe(checks);
    std::printf("MoE layer, case %s (k %lld, n %lld, renormalize %d) vs double reference:%s\n", cs.name,
                static_cast<long long>(s.k), static_cast<long long>(n), static_cast<int>(s.renormalize),
                ref::describe(checks).c_str());
  }
};

// The cases are listed in tests/reference/moe_layer.cpp (moe_layer_cases), where the CPU test emulates them too.
TEST_F(MoeLayerTest, RandomRouting) { run(0); }
TEST_F(MoeLayerTest, ZeroCountExperts) { run(1); }
TEST_F(MoeLayerTest, AllTokensToFirstTopKExperts) { run(2); }
TEST_F(MoeLayerTest, AllTokensToOneExpertTop1) { run(3); }
TEST_F(MoeLayerTest, RandomRoutingN256) { run(4); }

}  // namespace
}  // namespace kiln::test
