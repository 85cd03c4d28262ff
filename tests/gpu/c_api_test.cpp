// tests/gpu/c_api_test.cpp — the C ABI on the GPU: every C entry point, called on the same device buffers as its C++
// op, writes the same bytes (a C call is the C++ op behind a descriptor translation, so anything else is a bug in the
// translation: a swapped argument, a dropped option, a wrong dtype or stride). The chain is the MoE router's:
// router GEMM fwd → top-k routing with the fused padded map → permute (bf16 and fp8 + scales) → unpermute (weighted,
// restore) → routing bwd → router GEMM bwd, plus the RMSNorm ops and the other families (the fused gated MLP on sm_90
// only). Shapes are small and odd (T = 333, E = 64, top-6, P = 16, K = 256) so a mix-up of T, E or K shows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kiln/c_api.h"
#include "kiln/ops/batch_reduce.hpp"
#include "kiln/ops/fp4_moe.hpp"
#include "kiln/ops/fp8.hpp"
#include "kiln/ops/fp8_gemm.hpp"
#include "kiln/ops/gated_mlp.hpp"
#include "kiln/ops/group_rms_norm_gate.hpp"
#include "kiln/ops/moe.hpp"
#include "kiln/ops/qk_norm_half_rope.hpp"
#include "kiln/ops/rms_norm.hpp"
#include "kiln/ops/rms_norm_rope.hpp"
#include "kiln/ops/router_gemm.hpp"
#include "kiln/ops/silu.hpp"
#include "kiln/ops/softmax_cross_entropy.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

class CApiGpu : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    ASSERT_EQ(kiln_runtime_create(test_runtime_options().cache_dir.c_str(), nullptr, &crt_), KILN_OK)
        << kiln_last_error();
  }
  void TearDown() override { kiln_runtime_destroy(crt_); }

  // A C descriptor of a buffer, contiguous.
  static kiln_tensor ct(const DeviceBuffer& b, kiln_dtype d, std::initializer_list<int64_t> dims) {
    std::vector<int64_t> s(dims);
    return kiln_tensor_contiguous(b.data(), d, static_cast<int32_t>(s.size()), s.data());
  }
  // Two buffers of the same size, both poisoned: one for the C++ op, one for the C call.
  struct Pair {
    DeviceBuffer cpp, c;
    Pair(Runtime& rt, size_t bytes) : cpp(rt, bytes), c(rt, bytes) {
      cpp.poison();
      c.poison();
    }
    ::testing::AssertionResult same(const char* what) const {
      const auto a = cpp.download<uint8_t>(cpp.bytes()), b = c.download<uint8_t>(c.bytes());
      if (a == b && cpp.guards_intact() && c.guards_intact()) return ::testing::AssertionSuccess();
      size_t i = 0;
      while (i < a.size() && a[i] == b[i]) ++i;
      return ::testing::AssertionFailure() << what << ": C and C++ outputs differ at byte " << i << " of " << a.size()
                                           << " (guards " << cpp.guards_intact() << c.guards_intact() << ")";
    }
  };
  // A device buffer of n random values in dtype (seeded), uploaded.
  DeviceBuffer random_buffer(int64_t n, uint64_t seed, DType d, float stddev = 1.0f, float mean = 0.0f) {
    DeviceBuffer b(rt(), static_cast<size_t>(n) * dtype_size(d));
    b.upload(encode(d, random_values(n, seed, d, stddev, mean)));
    return b;
  }
  kiln_runtime* crt_ = nullptr;
};

TEST_F(CApiGpu, MoeRouterChainEqualsTheCppOps) {
  Runtime& r = rt();
  constexpr int64_t T = 333, K = 256, E = 64, k = 6, P = 16;
  const int64_t num_out = moe_max_out_rows(T, E, k, P);
  ASSERT_EQ(kiln_moe_max_out_rows(T, E, k, P), num_out);
  ASSERT_EQ(kiln_moe_routing_workspace_elems(T, E, k), moe_routing_workspace_elems(T, E, k));

  DeviceBuffer x(r, T * K * 2), w(r, E * K * 2), bias(r, E * 4);
  x.upload(encode(DType::bf16, random_values(T * K, 1, DType::bf16)));
  w.upload(encode(DType::bf16, random_values(E * K, 2, DType::bf16, 0.05f)));
  bias.upload(random_values(E, 3, DType::f32, 0.1f));
  const kiln_tensor cx = ct(x, KILN_BF16, {T, K}), cw = ct(w, KILN_BF16, {E, K}), cbias = ct(bias, KILN_F32, {E});

  // Router GEMM forward.
  Pair logits(r, T * E * 4);
  router_gemm_fp32_fwd(r, x.ref(DType::bf16, {T, K}), w.ref(DType::bf16, {E, K}), logits.cpp.ref(DType::f32, {T, E}),
                       nullptr);
  const kiln_tensor clog = ct(logits.c, KILN_F32, {T, E});
  ASSERT_EQ(kiln_router_gemm_fp32_fwd(crt_, &cx, &cw, &clog, nullptr), KILN_OK) << kiln_last_error();
  synchronize();
  ASSERT_TRUE(logits.same("logits"));

  // Top-k routing (sigmoid, bias, grouped 8 / 4, renormalized, scaled) with the padded map fused.
  MoeRoutingOptions o;
  o.top_k = k;
  o.score = MoeScore::sigmoid;
  o.n_group = 8;
  o.topk_group = 4;
  o.renormalize = true;
  o.scaling_factor = 2.5f;
  const kiln_moe_routing_options co{k, 1, 8, 4, 1, 2.5f};
  Pair probs(r, T * E * 4), rmap(r, T * E), tpe(r, E * 4), row_id(r, T * E * 4), idx(r, num_out * 4), pc(r, E * 4),
      off(r, (E + 1) * 4);
  const TensorRef z = logits.cpp.ref(DType::f32, {T, E});
  MoeRowIdMap m{row_id.cpp.ref(DType::i32, {T, E}), idx.cpp.ref(DType::i32, {num_out}), {},
                pc.cpp.ref(DType::i32, {E}), off.cpp.ref(DType::i32, {E + 1})};
  moe_topk_routing_fwd(r, z, bias.ref(DType::f32, {E}), probs.cpp.ref(DType::f32, {T, E}), rmap.cpp.ref(DType::u8, {T, E}),
                       tpe.cpp.ref(DType::i32, {E}), o, nullptr, &m, P);
  const kiln_tensor cprobs = ct(probs.c, KILN_F32, {T, E}), crmap = ct(rmap.c, KILN_U8, {T, E}),
                    ctpe = ct(tpe.c, KILN_I32, {E}), crow = ct(row_id.c, KILN_I32, {T, E}),
                    cidx = ct(idx.c, KILN_I32, {num_out}), cpc = ct(pc.c, KILN_I32, {E}),
                    coff = ct(off.c, KILN_I32, {E + 1});
  const kiln_moe_row_id_map cm{&crow, &cidx, nullptr, &cpc, &coff};
  ASSERT_EQ(kiln_moe_topk_routing_fwd(crt_, &clog, &cbias, &cprobs, &crmap, &ctpe, &co, &cm, P, nullptr, nullptr),
            KILN_OK)
      << kiln_last_error();
  synchronize();
  for (const auto* p : {&probs, &rmap, &tpe, &row_id, &idx, &pc, &off}) ASSERT_TRUE(p->same("routing output"));

  // The map alone (moe_make_row_id_map) from the routing map, unpadded rows' indices.
  Pair row_id2(r, T * E * 4), tpe2(r, E * 4), off2(r, (E + 1) * 4);
  moe_make_row_id_map(r, rmap.cpp.ref(DType::u8, {T, E}),
                      MoeRowIdMap{row_id2.cpp.ref(DType::i32, {T, E}), {}, tpe2.cpp.ref(DType::i32, {E}), {},
                                  off2.cpp.ref(DType::i32, {E + 1})},
                      P, nullptr, k);
  const kiln_tensor crow2 = ct(row_id2.c, KILN_I32, {T, E}), ctpe2 = ct(tpe2.c, KILN_I32, {E}),
                    coff2 = ct(off2.c, KILN_I32, {E + 1});
  const kiln_moe_row_id_map cm2{&crow2, nullptr, &ctpe2, nullptr, &coff2};
  ASSERT_EQ(kiln_moe_make_row_id_map(crt_, &crmap, &cm2, P, k, nullptr, nullptr), KILN_OK) << kiln_last_error();
  synchronize();
  for (const auto* p : {&row_id2, &tpe2, &off2}) ASSERT_TRUE(p->same("row-id map output"));

  // Permute bf16 rows + probs, and fp8 rows + token-major scales (→ M-major permuted scales), with round_scale.
  MoePermuteOptions po;
  po.top_k = k;
  po.multiple_of = P;
  po.round_scale = true;
  const kiln_moe_permute_options cpo{k, P, 0, 1, 0};
  const MoeRowIdMap full{row_id.cpp.ref(DType::i32, {T, E}), idx.cpp.ref(DType::i32, {num_out}),
                         tpe.cpp.ref(DType::i32, {E}), pc.cpp.ref(DType::i32, {E}), off.cpp.ref(DType::i32, {E + 1})};
  const kiln_moe_row_id_map cfull{&crow, &cidx, &ctpe, &cpc, &coff};
  Pair pout(r, num_out * K * 2), pprobs(r, num_out * 4);
  moe_permute(r, x.ref(DType::bf16, {T, K}), {}, probs.cpp.ref(DType::f32, {T, E}), full,
              pout.cpp.ref(DType::bf16, {num_out, K}), {}, pprobs.cpp.ref(DType::f32, {num_out}), po, nullptr);
  const kiln_tensor cpout = ct(pout.c, KILN_BF16, {num_out, K}), cpprobs = ct(pprobs.c, KILN_F32, {num_out});
  ASSERT_EQ(kiln_moe_permute(crt_, &cx, nullptr, &cprobs, &cfull, &cpout, nullptr, &cpprobs, &cpo, nullptr), KILN_OK)
      << kiln_last_error();
  DeviceBuffer q(r, T * K), qs(r, T * (K / 128) * 4);
  std::vector<uint8_t> codes(T * K);  // any bytes: the permute copies fp8 rows verbatim
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint8_t>(mix_seed({4, i}));
  q.upload(codes);
  qs.upload(random_values(T * (K / 128), 5, DType::f32, 0.01f, 1.0f));
  Pair qout(r, num_out * K), qsout(r, num_out * (K / 128) * 4);
  moe_permute(r, q.ref(DType::e4m3, {T, K}), qs.ref(DType::f32, {T, K / 128}), {}, full,
              qout.cpp.ref(DType::e4m3, {num_out, K}), qsout.cpp.ref(DType::f32, {K / 128, num_out}), {}, po, nullptr);
  const kiln_tensor cq = ct(q, KILN_E4M3, {T, K}), cqs = ct(qs, KILN_F32, {T, K / 128}),
                    cqout = ct(qout.c, KILN_E4M3, {num_out, K}), cqsout = ct(qsout.c, KILN_F32, {K / 128, num_out});
  ASSERT_EQ(kiln_moe_permute(crt_, &cq, &cqs, nullptr, &cfull, &cqout, &cqsout, nullptr, &cpo, nullptr), KILN_OK)
      << kiln_last_error();
  synchronize();
  for (const auto* p : {&pout, &pprobs, &qout, &qsout}) ASSERT_TRUE(p->same("permute output"));

  // Unpermute, prob-weighted, with the probs restored.
  Pair uout(r, T * K * 2), restore(r, T * E * 4);
  moe_unpermute(r, pout.cpp.ref(DType::bf16, {num_out, K}), row_id.cpp.ref(DType::i32, {T, E}),
                pprobs.cpp.ref(DType::f32, {num_out}), uout.cpp.ref(DType::bf16, {T, K}),
                restore.cpp.ref(DType::f32, {T, E}), po, nullptr);
  const kiln_tensor cuout = ct(uout.c, KILN_BF16, {T, K}), crestore = ct(restore.c, KILN_F32, {T, E});
  ASSERT_EQ(kiln_moe_unpermute(crt_, &cpout, &crow, &cpprobs, &cuout, &crestore, &cpo, nullptr), KILN_OK)
      << kiln_last_error();
  synchronize();
  ASSERT_TRUE(uout.same("unpermute out"));
  ASSERT_TRUE(restore.same("restore_probs"));

  // Routing backward, then the router GEMM backward from its dlogits (standard precision and tf32).
  DeviceBuffer dprobs(r, T * E * 4);
  dprobs.upload(random_values(T * E, 6, DType::f32));
  const kiln_tensor cdprobs = ct(dprobs, KILN_F32, {T, E});
  Pair dlogits(r, T * E * 4);
  moe_topk_routing_bwd(r, dprobs.ref(DType::f32, {T, E}), z, rmap.cpp.ref(DType::u8, {T, E}),
                       dlogits.cpp.ref(DType::f32, {T, E}), o, nullptr);
  const kiln_tensor cdlogits = ct(dlogits.c, KILN_F32, {T, E});
  ASSERT_EQ(kiln_moe_topk_routing_bwd(crt_, &cdprobs, &clog, &crmap, &cdlogits, &co, nullptr), KILN_OK)
      << kiln_last_error();
  synchronize();
  ASSERT_TRUE(dlogits.same("dlogits"));
  for (const RouterGemmPrecision p : {RouterGemmPrecision::standard, RouterGemmPrecision::tf32}) {
    SCOPED_TRACE(static_cast<int>(p));
    RouterGemmBwdOptions bo;
    bo.precision = p;
    int64_t ws_elems = -1;
    ASSERT_EQ(kiln_router_gemm_fp32_bwd_workspace_elems(crt_, T, K, E, static_cast<int>(p), &ws_elems), KILN_OK)
        << kiln_last_error();
    ASSERT_EQ(ws_elems, router_gemm_fp32_bwd_workspace_elems(r, T, K, E, bo));
    Pair dx(r, T * K * 2), dw(r, E * K * 4);
    router_gemm_fp32_bwd(r, dlogits.cpp.ref(DType::f32, {T, E}), x.ref(DType::bf16, {T, K}),
                         w.ref(DType::bf16, {E, K}), dx.cpp.ref(DType::bf16, {T, K}), dw.cpp.ref(DType::f32, {E, K}),
                         {}, bo, nullptr);
    const kiln_tensor cdx = ct(dx.c, KILN_BF16, {T, K}), cdw = ct(dw.c, KILN_F32, {E, K});
    ASSERT_EQ(kiln_router_gemm_fp32_bwd(crt_, &cdlogits, &cx, &cw, &cdx, &cdw, nullptr, static_cast<int>(p), nullptr),
              KILN_OK)
        << kiln_last_error();
    synchronize();
    ASSERT_TRUE(dx.same("dx"));
    ASSERT_TRUE(dw.same("dw"));
  }
}

TEST_F(CApiGpu, RmsNormOpsEqualTheCppOps) {
  Runtime& r = rt();
  constexpr int64_t M = 257, N = 384;
  DeviceBuffer x(r, M * N * 2), wt(r, N * 2), dy(r, M * N * 2);
  x.upload(encode(DType::bf16, random_values(M * N, 7, DType::bf16)));
  wt.upload(encode(DType::bf16, random_values(N, 8, DType::bf16, 0.2f, 1.0f)));
  dy.upload(encode(DType::bf16, random_values(M * N, 9, DType::bf16)));
  const TensorRef tx = x.ref(DType::bf16, {M, N}), tw = wt.ref(DType::bf16, {N});

  Pair q(r, M * N), qs(r, (N / 128) * M * 4), rinv(r, M * 4), qT(r, N * M), qTs(r, ((M + 127) / 128) * N * 4);
  const RmsNormBlockQuantOutputs out{q.cpp.ref(DType::e4m3, {M, N}), qs.cpp.ref(DType::f32, {N / 128, M}),
                                     rinv.cpp.ref(DType::f32, {M}), qT.cpp.ref(DType::e4m3, {N, M}),
                                     qTs.cpp.ref(DType::f32, {(M + 127) / 128, N})};
  rms_norm_block_quant_fwd(r, tx, tw, {}, out, {1e-6f, true, 2}, nullptr);
  ASSERT_EQ(kiln_rms_norm_block_quant_fwd(crt_, x.data(), M, N, N, wt.data(), KILN_BF16, nullptr, q.c.data(),
                                          static_cast<float*>(qs.c.data()), static_cast<float*>(rinv.c.data()),
                                          qT.c.data(), static_cast<float*>(qTs.c.data()), 1e-6f, 1, 2, nullptr),
            KILN_OK)
      << kiln_last_error();
  synchronize();
  for (const auto* p : {&q, &qs, &rinv, &qT, &qTs}) ASSERT_TRUE(p->same("rms_norm_block_quant output"));

  Pair y(r, M * N * 2), rinv2(r, M * 4), dx(r, M * N * 2), dw(r, N * 4);
  rms_norm_fwd(r, tx, tw, y.cpp.ref(DType::bf16, {M, N}), rinv2.cpp.ref(DType::f32, {M}), 1e-6f, nullptr);
  ASSERT_EQ(kiln_rms_norm_fwd(crt_, x.data(), y.c.data(), M, N, KILN_BF16, wt.data(), KILN_BF16,
                              static_cast<float*>(rinv2.c.data()), 1e-6f, nullptr),
            KILN_OK)
      << kiln_last_error();
  rms_norm_bwd(r, dy.ref(DType::bf16, {M, N}), tx, tw, dx.cpp.ref(DType::bf16, {M, N}), dw.cpp.ref(DType::f32, {N}),
               1e-6f, TensorRef{}, nullptr);
  ASSERT_EQ(kiln_rms_norm_bwd(crt_, dy.data(), x.data(), dx.c.data(), M, N, KILN_BF16, wt.data(), KILN_BF16,
                              dw.c.data(), KILN_F32, 1e-6f, nullptr),
            KILN_OK)
      << kiln_last_error();
  synchronize();
  for (const auto* p : {&y, &rinv2, &dx, &dw}) ASSERT_TRUE(p->same("rms_norm output"));
}

// SwiGLU + block quantization, plain (M = 200: a partial 128-token block) and batched over E = 3 experts (one empty),
// forward and backward, round_scale on.
TEST_F(CApiGpu, SiluOpsEqualTheCppOps) {
  Runtime& r = rt();
  constexpr int64_t M = 200, n = 256, E = 3;
  const DeviceBuffer x = random_buffer(M * 2 * n, 11, DType::bf16), g = random_buffer(M * n, 12, DType::bf16),
                     prob = random_buffer(M, 13, DType::f32, 0.2f, 0.5f);
  DeviceBuffer counts(r, E * 4);
  counts.upload(std::vector<int32_t>{70, 0, 130});
  const kiln_tensor cx = ct(x, KILN_BF16, {M, 2 * n}), cg = ct(g, KILN_BF16, {M, n}), cprob = ct(prob, KILN_F32, {M}),
                    ccounts = ct(counts, KILN_I32, {E});
  const int64_t tb = kiln_batch_weighted_silu_max_token_blocks(M, E);
  ASSERT_EQ(tb, batch_weighted_silu_max_token_blocks(M, E));
  for (const int64_t W : {n, 2 * n}) {
    SCOPED_TRACE(W);
    const bool fwd = W == n;
    // Plain: q [M, W], q_scale [W/128, M], qT [W, M], qT_scale [ceil(M/128), W].
    Pair q(r, M * W), qs(r, W / 128 * M * 4), qT(r, W * M), qTs(r, (M + 127) / 128 * W * 4);
    const SiluBlockQuantOutputs out{q.cpp.ref(DType::e4m3, {M, W}), qs.cpp.ref(DType::f32, {W / 128, M}),
                                    qT.cpp.ref(DType::e4m3, {W, M}), qTs.cpp.ref(DType::f32, {(M + 127) / 128, W})};
    const kiln_tensor cq = ct(q.c, KILN_E4M3, {M, W}), cqs = ct(qs.c, KILN_F32, {W / 128, M}),
                      cqT = ct(qT.c, KILN_E4M3, {W, M}), cqTs = ct(qTs.c, KILN_F32, {(M + 127) / 128, W});
    const kiln_silu_block_quant_outputs cout{&cq, &cqs, &cqT, &cqTs};
    const kiln_silu_options co{1, 2, 0, 0};
    if (fwd) {
      silu_block_quant_fwd(r, x.ref(DType::bf16, {M, 2 * n}), out, {true, 2}, nullptr);
      ASSERT_EQ(kiln_silu_block_quant_fwd(crt_, &cx, &cout, &co, nullptr), KILN_OK) << kiln_last_error();
    } else {
      silu_block_quant_bwd(r, g.ref(DType::bf16, {M, n}), x.ref(DType::bf16, {M, 2 * n}), out, true, nullptr);
      ASSERT_EQ(kiln_silu_block_quant_bwd(crt_, &cg, &cx, &cout, &co, nullptr), KILN_OK) << kiln_last_error();
    }
    synchronize();
    for (const auto* p : {&q, &qs, &qT, &qTs}) ASSERT_TRUE(p->same("silu_block_quant output"));

    // Batched: flat per-expert segments; status and dprob too.
    Pair bq(r, M * W), bqs(r, M * W / 128 * 4), bqT(r, M * W), bqTs(r, tb * W * 4), status(r, 4), dprob(r, M * 4);
    const SiluBlockQuantOutputs bout{bq.cpp.ref(DType::e4m3, {M, W}), bqs.cpp.ref(DType::f32, {M * W / 128}),
                                     bqT.cpp.ref(DType::e4m3, {M * W}), bqTs.cpp.ref(DType::f32, {tb * W})};
    const kiln_tensor cbq = ct(bq.c, KILN_E4M3, {M, W}), cbqs = ct(bqs.c, KILN_F32, {M * W / 128}),
                      cbqT = ct(bqT.c, KILN_E4M3, {M * W}), cbqTs = ct(bqTs.c, KILN_F32, {tb * W}),
                      cstatus = ct(status.c, KILN_I32, {1}), cdprob = ct(dprob.c, KILN_F32, {M});
    const kiln_silu_block_quant_outputs cbout{&cbq, &cbqs, &cbqT, &cbqTs};
    BatchSiluOptions bo;
    bo.round_scale = true;
    if (fwd) {
      batch_weighted_silu_block_quant_fwd(r, x.ref(DType::bf16, {M, 2 * n}), prob.ref(DType::f32, {M}),
                                          counts.ref(DType::i32, {E}), bout, status.cpp.ref(DType::i32, {1}), bo,
                                          nullptr);
      ASSERT_EQ(kiln_batch_weighted_silu_block_quant_fwd(crt_, &cx, &cprob, &ccounts, &cbout, &cstatus, &co, nullptr),
                KILN_OK)
          << kiln_last_error();
    } else {
      batch_weighted_silu_block_quant_bwd(r, g.ref(DType::bf16, {M, n}), x.ref(DType::bf16, {M, 2 * n}),
                                          prob.ref(DType::f32, {M}), counts.ref(DType::i32, {E}), bout,
                                          dprob.cpp.ref(DType::f32, {M}), status.cpp.ref(DType::i32, {1}), bo, nullptr);
      ASSERT_EQ(kiln_batch_weighted_silu_block_quant_bwd(crt_, &cg, &cx, &cprob, &ccounts, &cbout, &cdprob, &cstatus,
                                                         &co, nullptr),
                KILN_OK)
          << kiln_last_error();
    }
    synchronize();
    for (const auto* p : {&bq, &bqs, &bqT, &bqTs, &status, &dprob})
      ASSERT_TRUE(p->same("batch_weighted_silu_block_quant output"));
    ASSERT_EQ(status.c.download<int32_t>(1)[0], 0);
  }
}

// qk-norm + half RoPE (interleaved heads, a position offset), RMSNorm + RoPE and group RMSNorm × gate: forward,
// backward through the runtime's scratch, and the workspace sizes.
TEST_F(CApiGpu, NormRopeOpsEqualTheCppOps) {
  Runtime& r = rt();
  constexpr int64_t S = 5, B = 3, H = 4, hk = 2, D = 64, W = (H + 2 * hk) * D, off = 2;
  const DeviceBuffer qkv = random_buffer(S * B * W, 21, DType::bf16), wq = random_buffer(D, 22, DType::bf16, 0.2f, 1),
                     wk = random_buffer(D, 23, DType::bf16, 0.2f, 1),
                     freqs = random_buffer((S + off) * D / 2, 24, DType::f32, 2.0f),
                     gq = random_buffer(B * S * H * D, 25, DType::bf16),
                     gk = random_buffer(B * S * hk * D, 26, DType::bf16),
                     gv = random_buffer(B * S * hk * D, 27, DType::bf16);
  QkNormHalfRopeOptions qo;
  qo.num_heads = H;
  qo.num_groups = hk;
  qo.eps = 1e-5f;
  qo.position_offset = off;
  const kiln_qk_norm_half_rope_options cqo{H, hk, 1e-5f, 1, off, nullptr, 0};
  const kiln_tensor cqkv = ct(qkv, KILN_BF16, {S, B, W}), cwq = ct(wq, KILN_BF16, {D}), cwk = ct(wk, KILN_BF16, {D}),
                    cfreqs = ct(freqs, KILN_F32, {S + off, D / 2}), cgq = ct(gq, KILN_BF16, {B, S, H, D}),
                    cgk = ct(gk, KILN_BF16, {B, S, hk, D}), cgv = ct(gv, KILN_BF16, {B, S, hk, D});
  Pair q(r, B * S * H * D * 2), k(r, B * S * hk * D * 2), v(r, B * S * hk * D * 2), dqkv(r, S * B * W * 2),
      dwq(r, D * 4), dwk(r, D * 4);
  qk_norm_half_rope_fwd(r, qkv.ref(DType::bf16, {S, B, W}), wq.ref(DType::bf16, {D}), wk.ref(DType::bf16, {D}),
                        freqs.ref(DType::f32, {S + off, D / 2}), q.cpp.ref(DType::bf16, {B, S, H, D}),
                        k.cpp.ref(DType::bf16, {B, S, hk, D}), v.cpp.ref(DType::bf16, {B, S, hk, D}), qo, nullptr);
  const kiln_tensor cq = ct(q.c, KILN_BF16, {B, S, H, D}), ck = ct(k.c, KILN_BF16, {B, S, hk, D}),
                    cv = ct(v.c, KILN_BF16, {B, S, hk, D});
  ASSERT_EQ(kiln_qk_norm_half_rope_fwd(crt_, &cqkv, &cwq, &cwk, &cfreqs, &cq, &ck, &cv, &cqo, nullptr), KILN_OK)
      << kiln_last_error();
  qk_norm_half_rope_bwd(r, gq.ref(DType::bf16, {B, S, H, D}), gk.ref(DType::bf16, {B, S, hk, D}),
                        gv.ref(DType::bf16, {B, S, hk, D}), qkv.ref(DType::bf16, {S, B, W}), wq.ref(DType::bf16, {D}),
                        wk.ref(DType::bf16, {D}), freqs.ref(DType::f32, {S + off, D / 2}),
                        dqkv.cpp.ref(DType::bf16, {S, B, W}), dwq.cpp.ref(DType::f32, {D}),
                        dwk.cpp.ref(DType::f32, {D}), qo, {}, nullptr);
  const kiln_tensor cdqkv = ct(dqkv.c, KILN_BF16, {S, B, W}), cdwq = ct(dwq.c, KILN_F32, {D}),
                    cdwk = ct(dwk.c, KILN_F32, {D});
  ASSERT_EQ(kiln_qk_norm_half_rope_bwd(crt_, &cgq, &cgk, &cgv, &cqkv, &cwq, &cwk, &cfreqs, &cdqkv, &cdwq, &cdwk, &cqo,
                                       nullptr, nullptr),
            KILN_OK)
      << kiln_last_error();
  synchronize();
  for (const auto* p : {&q, &k, &v, &dqkv, &dwq, &dwk}) ASSERT_TRUE(p->same("qk_norm_half_rope output"));
  int64_t elems = -1;
  ASSERT_EQ(kiln_qk_norm_half_rope_bwd_workspace_elems(crt_, D, &elems), KILN_OK) << kiln_last_error();
  ASSERT_EQ(elems, qk_norm_half_rope_bwd_workspace_elems(r, D));

  // RMSNorm + RoPE: x [2, 7, 256], D 64, cos/sin [7, 64] fp32.
  constexpr int64_t Bn = 2, Sn = 7, Hd = 256;
  const DeviceBuffer x = random_buffer(Bn * Sn * Hd, 31, DType::bf16), w = random_buffer(Hd, 32, DType::bf16, 0.2f, 1),
                     cs = random_buffer(Sn * D, 33, DType::f32, 0.5f), sn = random_buffer(Sn * D, 34, DType::f32, 0.5f),
                     dy = random_buffer(Bn * Sn * Hd, 35, DType::bf16);
  const TensorRef tx = x.ref(DType::bf16, {Bn, Sn, Hd}), tw = w.ref(DType::bf16, {Hd}),
                  tcs = cs.ref(DType::f32, {Sn, D}), tsn = sn.ref(DType::f32, {Sn, D}),
                  tdy = dy.ref(DType::bf16, {Bn, Sn, Hd});
  const kiln_tensor cx = ct(x, KILN_BF16, {Bn, Sn, Hd}), cw = ct(w, KILN_BF16, {Hd}), ccs = ct(cs, KILN_F32, {Sn, D}),
                    csn = ct(sn, KILN_F32, {Sn, D}), cdy = ct(dy, KILN_BF16, {Bn, Sn, Hd});
  Pair y(r, Bn * Sn * Hd * 2), dx(r, Bn * Sn * Hd * 2), dw(r, Hd * 4);
  rms_norm_rope_fwd(r, tx, tw, tcs, tsn, y.cpp.ref(DType::bf16, {Bn, Sn, Hd}), 1e-5f, 4, nullptr);
  const kiln_tensor cy = ct(y.c, KILN_BF16, {Bn, Sn, Hd}), cdx = ct(dx.c, KILN_BF16, {Bn, Sn, Hd}),
                    cdw = ct(dw.c, KILN_F32, {Hd});
  ASSERT_EQ(kiln_rms_norm_rope_fwd(crt_, &cx, &cw, &ccs, &csn, &cy, 1e-5f, 4, nullptr), KILN_OK) << kiln_last_error();
  rms_norm_rope_bwd(r, tdy, tx, tw, tcs, tsn, dx.cpp.ref(DType::bf16, {Bn, Sn, Hd}), dw.cpp.ref(DType::f32, {Hd}),
                    1e-5f, 0, {}, nullptr);
  ASSERT_EQ(kiln_rms_norm_rope_bwd(crt_, &cdy, &cx, &cw, &ccs, &csn, &cdx, &cdw, 1e-5f, 0, nullptr, nullptr), KILN_OK)
      << kiln_last_error();
  synchronize();
  for (const auto* p : {&y, &dx, &dw}) ASSERT_TRUE(p->same("rms_norm_rope output"));
  ASSERT_EQ(kiln_rms_norm_rope_bwd_workspace_elems(crt_, Bn * Sn, Hd, D, KILN_BF16, &elems), KILN_OK)
      << kiln_last_error();
  ASSERT_EQ(elems, rms_norm_rope_bwd_workspace_elems(r, Bn * Sn, Hd, D, DType::bf16));

  // Group RMSNorm × gate, sequence-first gate/out (transpose), 4 groups of 64, eps 1e-5.
  const DeviceBuffer gate = random_buffer(Sn * Bn * Hd, 41, DType::bf16),
                     gdy = random_buffer(Sn * Bn * Hd, 42, DType::bf16);
  GroupRmsNormGateOptions go;
  go.eps = 1e-5f;
  const kiln_group_rms_norm_gate_options cgo{4, 1e-5f, 1};
  const kiln_tensor cgate = ct(gate, KILN_BF16, {Sn, Bn, Hd}), cgdy = ct(gdy, KILN_BF16, {Sn, Bn, Hd});
  Pair out(r, Sn * Bn * Hd * 2), gdx(r, Bn * Sn * Hd * 2), dgate(r, Sn * Bn * Hd * 2), gdw(r, Hd * 4);
  group_rms_norm_gate_fwd(r, tx, gate.ref(DType::bf16, {Sn, Bn, Hd}), tw, out.cpp.ref(DType::bf16, {Sn, Bn, Hd}), go,
                          nullptr);
  const kiln_tensor cout = ct(out.c, KILN_BF16, {Sn, Bn, Hd}), cgdx = ct(gdx.c, KILN_BF16, {Bn, Sn, Hd}),
                    cdgate = ct(dgate.c, KILN_BF16, {Sn, Bn, Hd}), cgdw = ct(gdw.c, KILN_F32, {Hd});
  ASSERT_EQ(kiln_group_rms_norm_gate_fwd(crt_, &cx, &cgate, &cw, &cout, &cgo, nullptr), KILN_OK) << kiln_last_error();
  group_rms_norm_gate_bwd(r, gdy.ref(DType::bf16, {Sn, Bn, Hd}), tx, gate.ref(DType::bf16, {Sn, Bn, Hd}), tw,
                          gdx.cpp.ref(DType::bf16, {Bn, Sn, Hd}), dgate.cpp.ref(DType::bf16, {Sn, Bn, Hd}),
                          gdw.cpp.ref(DType::f32, {Hd}), go, {}, nullptr);
  ASSERT_EQ(kiln_group_rms_norm_gate_bwd(crt_, &cgdy, &cx, &cgate, &cw, &cgdx, &cdgate, &cgdw, &cgo, nullptr, nullptr),
            KILN_OK)
      << kiln_last_error();
  synchronize();
  for (const auto* p : {&out, &gdx, &dgate, &gdw}) ASSERT_TRUE(p->same("group_rms_norm_gate output"));
  ASSERT_EQ(kiln_group_rms_norm_gate_bwd_workspace_elems(crt_, Bn * Sn, Hd, 4, KILN_BF16, &elems), KILN_OK)
      << kiln_last_error();
  ASSERT_EQ(elems, group_rms_norm_gate_bwd_workspace_elems(r, Bn * Sn, Hd, 4, DType::bf16));
}

// Cross-entropy with label smoothing and z-loss over V = 1024 (one ignored row): forward, backward, the fused op
// (mean, with the total and the statistics), and the vocab-parallel pair over two shards of 512 columns.
TEST_F(CApiGpu, CrossEntropyOpsEqualTheCppOps) {
  Runtime& r = rt();
  constexpr int64_t M = 37, V = 1024, Vs = V / 2;
  const DeviceBuffer z = random_buffer(M * V, 51, DType::bf16, 3.0f), gl = random_buffer(M, 52, DType::f32, 0.5f, 1);
  std::vector<int64_t> lab(M);
  for (int64_t m = 0; m < M; ++m) lab[m] = static_cast<int64_t>(mix_seed({53, static_cast<uint64_t>(m)}) % V);
  lab[5] = -100;
  DeviceBuffer labels(r, M * 8);
  labels.upload(lab);
  CrossEntropyOptions o;
  o.label_smoothing = 0.1f;
  o.z_loss = 1e-3f;
  const kiln_cross_entropy_options co{-100, 0.1f, 1e-3f, 0, 0, nullptr};
  const TensorRef tz = z.ref(DType::bf16, {M, V}), tl = labels.ref(DType::i64, {M});
  const kiln_tensor cz = ct(z, KILN_BF16, {M, V}), cl = ct(labels, KILN_I64, {M}), cgl = ct(gl, KILN_F32, {M});
  Pair loss(r, M * 4), rmax(r, M * 4), sexp(r, M * 4), dz(r, M * V * 2);
  softmax_cross_entropy_fwd(r, tz, tl, loss.cpp.ref(DType::f32, {M}), rmax.cpp.ref(DType::f32, {M}),
                            sexp.cpp.ref(DType::f32, {M}), o, nullptr);
  const kiln_tensor closs = ct(loss.c, KILN_F32, {M}), crmax = ct(rmax.c, KILN_F32, {M}),
                    csexp = ct(sexp.c, KILN_F32, {M}), cdz = ct(dz.c, KILN_BF16, {M, V});
  ASSERT_EQ(kiln_softmax_cross_entropy_fwd(crt_, &cz, &cl, &closs, &crmax, &csexp, &co, nullptr), KILN_OK)
      << kiln_last_error();
  softmax_cross_entropy_bwd(r, tz, tl, rmax.cpp.ref(DType::f32, {M}), sexp.cpp.ref(DType::f32, {M}),
                            gl.ref(DType::f32, {M}), dz.cpp.ref(DType::bf16, {M, V}), o, nullptr);
  ASSERT_EQ(kiln_softmax_cross_entropy_bwd(crt_, &cz, &cl, &crmax, &csexp, &cgl, &cdz, &co, nullptr), KILN_OK)
      << kiln_last_error();
  synchronize();
  for (const auto* p : {&loss, &rmax, &sexp, &dz}) ASSERT_TRUE(p->same("softmax_cross_entropy fwd/bwd output"));

  Pair floss(r, M * 4), fdz(r, M * V * 2), total(r, 4), frmax(r, M * 4), fsexp(r, M * 4);
  FusedCrossEntropyOptions fo;
  fo.scale = 0.5f;
  fo.loss_total = total.cpp.ref(DType::f32, {1});
  fo.row_max = frmax.cpp.ref(DType::f32, {M});
  fo.sum_exp = fsexp.cpp.ref(DType::f32, {M});
  softmax_cross_entropy_fused(r, tz, tl, floss.cpp.ref(DType::f32, {M}), fdz.cpp.ref(DType::bf16, {M, V}), fo, o,
                              nullptr);
  const kiln_tensor cfloss = ct(floss.c, KILN_F32, {M}), cfdz = ct(fdz.c, KILN_BF16, {M, V}),
                    ctotal = ct(total.c, KILN_F32, {1}), cfrmax = ct(frmax.c, KILN_F32, {M}),
                    cfsexp = ct(fsexp.c, KILN_F32, {M});
  const kiln_fused_cross_entropy_options cfo{1, 0.5f, &ctotal, &cfrmax, &cfsexp};
  ASSERT_EQ(kiln_softmax_cross_entropy_fused(crt_, &cz, &cl, &cfloss, &cfdz, &cfo, &co, nullptr), KILN_OK)
      << kiln_last_error();
  synchronize();
  for (const auto* p : {&floss, &fdz, &total, &frmax, &fsexp}) ASSERT_TRUE(p->same("softmax_cross_entropy_fused"));

  // Vocab-parallel: shard s is the column view [s·512, s·512 + 512) (row stride V); partials [2, 4, M].
  Pair parts(r, 2 * 4 * M * 4), mloss(r, M * 4), mrmax(r, M * 4), msexp(r, M * 4);
  CrossEntropyOptions po = o;
  po.vocab_total = V;
  kiln_cross_entropy_options cpo = co;
  cpo.vocab_total = V;
  for (int64_t s = 0; s < 2; ++s) {
    po.vocab_start = cpo.vocab_start = s * Vs;
    char* shard = static_cast<char*>(z.data()) + s * Vs * 2;
    softmax_cross_entropy_partial_fwd(r, TensorRef::strided_2d(shard, DType::bf16, M, Vs, V), tl,
                                      TensorRef::contiguous(static_cast<char*>(parts.cpp.data()) + s * 4 * M * 4,
                                                            DType::f32, {4, M}),
                                      po, nullptr);
    kiln_tensor cshard = ct(z, KILN_BF16, {M, Vs});
    cshard.data = shard;
    cshard.strides[0] = V;
    kiln_tensor cpart = ct(parts.c, KILN_F32, {4, M});
    cpart.data = static_cast<char*>(parts.c.data()) + s * 4 * M * 4;
    ASSERT_EQ(kiln_softmax_cross_entropy_partial_fwd(crt_, &cshard, &cl, &cpart, &cpo, nullptr), KILN_OK)
        << kiln_last_error();
  }
  po.vocab_start = cpo.vocab_start = 0;  // the merge covers the whole vocabulary
  softmax_cross_entropy_merge(r, parts.cpp.ref(DType::f32, {2, 4, M}), tl, mloss.cpp.ref(DType::f32, {M}),
                              mrmax.cpp.ref(DType::f32, {M}), msexp.cpp.ref(DType::f32, {M}), po, nullptr);
  const kiln_tensor cparts = ct(parts.c, KILN_F32, {2, 4, M}), cmloss = ct(mloss.c, KILN_F32, {M}),
                    cmrmax = ct(mrmax.c, KILN_F32, {M}), cmsexp = ct(msexp.c, KILN_F32, {M});
  ASSERT_EQ(kiln_softmax_cross_entropy_merge(crt_, &cparts, &cl, &cmloss, &cmrmax, &cmsexp, &cpo, nullptr), KILN_OK)
      << kiln_last_error();
  synchronize();
  for (const auto* p : {&parts, &mloss, &mrmax, &msexp}) ASSERT_TRUE(p->same("softmax_cross_entropy partial/merge"));
}

// The batch reductions over a mixed list (fp32, bf16 with zeros, fp16), and the fused block-quantized permute over a
// map from moe_make_row_id_map (T = 40, E = 8, top-2, P = 16, Hd = 256).
TEST_F(CApiGpu, BatchReduceAndBlockQuantPermuteEqualTheCppOps) {
  Runtime& r = rt();
  const DeviceBuffer a = random_buffer(1000, 61, DType::f32), c = random_buffer(4101, 63, DType::f16);
  std::vector<float> bv = random_values(33 * 7, 62, DType::bf16);
  for (size_t i = 0; i < bv.size(); i += 5) bv[i] = 0.f;
  DeviceBuffer b(r, bv.size() * 2);
  b.upload(encode(DType::bf16, bv));
  const std::vector<TensorRef> xs{a.ref(DType::f32, {1000}), b.ref(DType::bf16, {33, 7}), c.ref(DType::f16, {4101})};
  const kiln_tensor cxs[3] = {ct(a, KILN_F32, {1000}), ct(b, KILN_BF16, {33, 7}), ct(c, KILN_F16, {4101})};
  for (const int ord : {0, 1, 2}) {
    SCOPED_TRACE(ord);
    Pair out(r, 4);
    BatchNormOptions bo;
    bo.ord = static_cast<NormOrd>(ord);
    bo.root = true;
    bo.accumulate = Accumulate::f32;
    batch_sum_with_ord(r, xs, out.cpp.ref(DType::f32, {1}), bo, nullptr);
    const kiln_tensor cout = ct(out.c, KILN_F32, {1});
    const kiln_batch_norm_options cbo{ord, 1, 0};
    ASSERT_EQ(kiln_batch_sum_with_ord(crt_, cxs, 3, &cout, &cbo, nullptr), KILN_OK) << kiln_last_error();
    synchronize();
    ASSERT_TRUE(out.same("batch_sum_with_ord"));
  }
  Pair zeros(r, 8);
  batch_count_zero(r, xs, zeros.cpp.ref(DType::i64, {1}), nullptr);
  const kiln_tensor czeros = ct(zeros.c, KILN_I64, {1});
  ASSERT_EQ(kiln_batch_count_zero(crt_, cxs, 3, &czeros, nullptr), KILN_OK) << kiln_last_error();
  synchronize();
  ASSERT_TRUE(zeros.same("batch_count_zero"));
  ASSERT_GE(zeros.c.download<int64_t>(1)[0], static_cast<int64_t>(bv.size() / 5));

  constexpr int64_t T = 40, E = 8, k = 2, P = 16, Hd = 256;
  const int64_t num_out = kiln_moe_max_out_rows(T, E, k, P), nb = kiln_moe_block_quant_scale_blocks(num_out, E);
  ASSERT_EQ(nb, moe_block_quant_scale_blocks(num_out, E));
  std::vector<uint8_t> routing(T * E, 0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t e0 = static_cast<int64_t>(mix_seed({71, static_cast<uint64_t>(t)}) % E);
    routing[t * E + e0] = routing[t * E + (e0 + 1 + t % (E - 1)) % E] = 1;
  }
  DeviceBuffer rmap(r, T * E), rid(r, T * E * 4), idx(r, num_out * 4), tpe(r, E * 4), off(r, (E + 1) * 4);
  rmap.upload(routing);
  moe_make_row_id_map(r, rmap.ref(DType::u8, {T, E}),
                      MoeRowIdMap{rid.ref(DType::i32, {T, E}), idx.ref(DType::i32, {num_out}),
                                  tpe.ref(DType::i32, {E}), {}, off.ref(DType::i32, {E + 1})},
                      P, nullptr, k);
  const DeviceBuffer x = random_buffer(T * Hd, 72, DType::bf16, 2.0f), probs = random_buffer(T * E, 73, DType::f32);
  Pair q(r, num_out * Hd), qs(r, num_out * Hd / 128 * 4), qT(r, num_out * Hd), qTs(r, nb * Hd * 4),
      pout(r, num_out * 4);
  const MoeRowIdMap map{rid.ref(DType::i32, {T, E}), idx.ref(DType::i32, {num_out}), {}, {},
                        off.ref(DType::i32, {E + 1})};
  MoePermuteOptions po;
  po.top_k = k;
  po.multiple_of = P;
  po.round_scale = true;
  moe_permute_block_quant(r, x.ref(DType::bf16, {T, Hd}), probs.ref(DType::f32, {T, E}), map,
                          {q.cpp.ref(DType::e4m3, {num_out, Hd}), qs.cpp.ref(DType::f32, {num_out * Hd / 128}),
                           qT.cpp.ref(DType::e4m3, {num_out * Hd}), qTs.cpp.ref(DType::f32, {nb * Hd}),
                           pout.cpp.ref(DType::f32, {num_out})},
                          po, nullptr);
  const kiln_tensor cx = ct(x, KILN_BF16, {T, Hd}), cprobs = ct(probs, KILN_F32, {T, E}),
                    crid = ct(rid, KILN_I32, {T, E}), cidx = ct(idx, KILN_I32, {num_out}),
                    coff = ct(off, KILN_I32, {E + 1}), cq = ct(q.c, KILN_E4M3, {num_out, Hd}),
                    cqs = ct(qs.c, KILN_F32, {num_out * Hd / 128}), cqT = ct(qT.c, KILN_E4M3, {num_out * Hd}),
                    cqTs = ct(qTs.c, KILN_F32, {nb * Hd}), cpout = ct(pout.c, KILN_F32, {num_out});
  const kiln_moe_row_id_map cmap{&crid, &cidx, nullptr, nullptr, &coff};
  const kiln_moe_block_quant_permute_outputs cout{&cq, &cqs, &cqT, &cqTs, &cpout};
  const kiln_moe_permute_options cpo{k, P, 0, 1, 0};
  ASSERT_EQ(kiln_moe_permute_block_quant(crt_, &cx, &cprobs, &cmap, &cout, &cpo, nullptr), KILN_OK)
      << kiln_last_error();
  synchronize();
  for (const auto* p : {&q, &qs, &qT, &qTs, &pout}) ASSERT_TRUE(p->same("moe_permute_block_quant output"));
}

// The fused gated MLP (sm_90 only: TMA + wgmma) at M = 100 (a partial 128-row tile), H = 256, I = 384, bf16, SiLU
// and GELU (GELU is not the default: a dropped activation shows).
TEST_F(CApiGpu, FusedGatedMlpEqualsTheCppOp) {
  Runtime& r = rt();
  if (r.impl().device().arch.sm != 90) GTEST_SKIP() << "not an sm_90 device (fused_gated_mlp needs wgmma)";
  constexpr int64_t M = 100, H = 256, I = 384;
  const DeviceBuffer x = random_buffer(M * H, 81, DType::bf16), wg = random_buffer(I * H, 82, DType::bf16, 0.0625f),
                     wu = random_buffer(I * H, 83, DType::bf16, 0.0625f);
  const kiln_tensor cx = ct(x, KILN_BF16, {M, H}), cwg = ct(wg, KILN_BF16, {I, H}), cwu = ct(wu, KILN_BF16, {I, H});
  std::vector<uint8_t> first;
  for (const GatedActivation act : {GatedActivation::silu, GatedActivation::gelu}) {
    SCOPED_TRACE(static_cast<int>(act));
    Pair out(r, M * I * 2);
    fused_gated_mlp(r, x.ref(DType::bf16, {M, H}), wg.ref(DType::bf16, {I, H}), wu.ref(DType::bf16, {I, H}),
                    out.cpp.ref(DType::bf16, {M, I}), act, nullptr);
    const kiln_tensor cout = ct(out.c, KILN_BF16, {M, I});
    ASSERT_EQ(kiln_fused_gated_mlp(crt_, &cx, &cwg, &cwu, &cout, static_cast<int>(act), nullptr), KILN_OK)
        << kiln_last_error();
    synchronize();
    ASSERT_TRUE(out.same("fused_gated_mlp output"));
    // The op wrote (poison in both would compare equal), and the two activations differ.
    const auto bytes = out.c.download<uint8_t>(out.c.bytes());
    ASSERT_NE(std::count(bytes.begin(), bytes.end(), DeviceBuffer::kPoison), static_cast<std::ptrdiff_t>(bytes.size()));
    if (first.empty())
      first = bytes;
    else
      ASSERT_NE(first, bytes) << "silu and gelu wrote the same bytes";
  }
}

// The FP4 MoE: prepack, routing and the whole layer through the C entry points write the C++ ops' bytes (session 33;
// written without a GPU run in that session).
TEST_F(CApiGpu, Fp4MoeEqualsTheCppOps) {
  Runtime& r = rt();
  if (r.impl().device().arch.sm != 90) GTEST_SKIP() << "not an sm_90 device (the FP4 MoE GEMM needs wgmma)";
  constexpr int64_t T = 37, E = 32, K = 4, H = 256, I = 128;
  // Weights: random codes, UE8M0 scales 120 … 127 (mxfp4), canonical layout.
  auto bytes = [](int64_t n, uint64_t seed, int lo, int span) {
    std::vector<uint8_t> v(static_cast<size_t>(n));
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (auto& b : v) b = static_cast<uint8_t>(lo + ((x = x * 6364136223846793005ull + 1442695040888963407ull) >> 33) % span);
    return v;
  };
  DeviceBuffer c1(r, E * 2 * I * H / 2), s1(r, E * 2 * I * H / 32), c2(r, E * H * I / 2), s2(r, E * H * I / 32);
  c1.upload(bytes(E * 2 * I * H / 2, 1, 0, 256));
  s1.upload(bytes(E * 2 * I * H / 32, 2, 120, 8));
  c2.upload(bytes(E * H * I / 2, 3, 0, 256));
  s2.upload(bytes(E * H * I / 32, 4, 120, 8));
  const int64_t p1 = fp4_moe_packed_bytes(E, 2 * I, H, Fp4WeightFormat::mxfp4),
                p2 = fp4_moe_packed_bytes(E, H, I, Fp4WeightFormat::mxfp4);
  Pair pk1(r, p1), pk2(r, p2);
  const Fp4MoeWeights w1 = fp4_moe_prepack(r, c1.ref(DType::u8, {E, 2 * I, H / 2}), s1.ref(DType::u8, {E, 2 * I, H / 32}),
                                           Fp4WeightFormat::mxfp4, true, pk1.cpp.ref(DType::u8, {p1}), nullptr);
  const Fp4MoeWeights w2 = fp4_moe_prepack(r, c2.ref(DType::u8, {E, H, I / 2}), s2.ref(DType::u8, {E, H, I / 32}),
                                           Fp4WeightFormat::mxfp4, false, pk2.cpp.ref(DType::u8, {p2}), nullptr);
  kiln_fp4_moe_weights cw1{}, cw2{};
  {
    const kiln_tensor cc1 = ct(c1, KILN_U8, {E, 2 * I, H / 2}), cs1 = ct(s1, KILN_U8, {E, 2 * I, H / 32}),
                      cc2 = ct(c2, KILN_U8, {E, H, I / 2}), cs2 = ct(s2, KILN_U8, {E, H, I / 32}),
                      cp1 = ct(pk1.c, KILN_U8, {p1}), cp2 = ct(pk2.c, KILN_U8, {p2});
    ASSERT_EQ(kiln_fp4_moe_prepack(crt_, &cc1, &cs1, 1, 1, &cp1, nullptr, &cw1), KILN_OK) << kiln_last_error();
    ASSERT_EQ(kiln_fp4_moe_prepack(crt_, &cc2, &cs2, 1, 0, &cp2, nullptr, &cw2), KILN_OK) << kiln_last_error();
  }
  synchronize();
  ASSERT_TRUE(pk1.same("prepacked w1"));
  ASSERT_TRUE(pk2.same("prepacked w2"));
  EXPECT_EQ(cw1.rows, 2 * I);
  EXPECT_EQ(cw1.gated, 1);
  EXPECT_EQ(cw2.k, I);

  const DeviceBuffer logits = random_buffer(T * E, 91, DType::f32), hidden = random_buffer(T * H, 92, DType::bf16);
  const kiln_tensor cl = ct(logits, KILN_F32, {T, E}), ch = ct(hidden, KILN_BF16, {T, H});
  // Routing alone.
  Fp4MoeRouteOptions ro;
  ro.method = Fp4MoeRoutingMethod::Renormalize;
  ro.top_k = static_cast<int>(K);
  Pair ids(r, T * K * 4), wts(r, T * K * 2);
  fp4_moe_route(r, logits.ref(DType::f32, {T, E}), nullptr, ids.cpp.ref(DType::i32, {T, K}),
                wts.cpp.ref(DType::bf16, {T, K}), ro, nullptr);
  const kiln_fp4_moe_route_options cro{1, static_cast<int>(K), 0, 0, 1.0f, 1};
  const kiln_tensor cids = ct(ids.c, KILN_I32, {T, K}), cwts = ct(wts.c, KILN_BF16, {T, K});
  ASSERT_EQ(kiln_fp4_moe_route(crt_, &cl, nullptr, &cids, &cwts, &cro, nullptr), KILN_OK) << kiln_last_error();
  synchronize();
  ASSERT_TRUE(ids.same("topk_ids"));
  ASSERT_TRUE(wts.same("topk_weights"));

  // The layer, each side on its own prepacked weights (equal bytes).
  Pair out(r, T * H * 2);
  Fp4MoeInputs in;
  in.routing_logits = logits.ref(DType::f32, {T, E});
  in.hidden_states = hidden.ref(DType::bf16, {T, H});
  in.w1 = w1;
  in.w2 = w2;
  Fp4MoeOptions o;
  o.routing = ro;
  o.num_experts = E;
  const TensorRef oref = out.cpp.ref(DType::bf16, {T, H});
  Fp4MoeOutputs outs;
  outs.output = &oref;
  fp4_block_scale_moe(r, in, outs, o, nullptr);
  kiln_fp4_moe_inputs cin{};
  cin.routing_logits = &cl;
  cin.hidden_states = &ch;
  cin.w1 = cw1;
  cin.w2 = cw2;
  const kiln_fp4_moe_options co{cro, 3, 0, E, 0, 1};
  const kiln_tensor cout = ct(out.c, KILN_BF16, {T, H});
  const kiln_fp4_moe_outputs couts{&cout, nullptr, nullptr, nullptr};
  ASSERT_EQ(kiln_fp4_block_scale_moe(crt_, &cin, &couts, &co, nullptr, nullptr), KILN_OK) << kiln_last_error();
  synchronize();
  ASSERT_TRUE(out.same("fp4_block_scale_moe output"));
  const auto ob = out.c.download<uint8_t>(out.c.bytes());
  ASSERT_NE(std::count(ob.begin(), ob.end(), DeviceBuffer::kPoison), static_cast<std::ptrdiff_t>(ob.size()));
}

// quantize_fp8, dequantize_fp8, fp8_gemm (float inputs: quantized inside) and a prepared weight with a bias: the C
// entry points write the C++ ops' bytes.
TEST_F(CApiGpu, Fp8CodesAndGemmEqualTheCppOps) {
  Runtime& r = rt();
  if (r.impl().device().arch.sm != 90) GTEST_SKIP() << "not an sm_90 device (fp8_gemm needs wgmma)";
  constexpr int64_t M = 130, N = 72, K = 320;
  const DeviceBuffer a = random_buffer(M * K, 91, DType::bf16), b = random_buffer(K * N, 92, DType::bf16, 0.05f),
                     bias = random_buffer(N, 93, DType::f32);
  const kiln_tensor ca = ct(a, KILN_BF16, {M, K}), cb = ct(b, KILN_BF16, {K, N}), cbias = ct(bias, KILN_F32, {N});
  Pair q(r, M * K), sc(r, 4), deq(r, M * K * 2), c(r, M * N * 2), cp(r, M * N * 2);
  quantize_fp8(r, a.ref(DType::bf16, {M, K}), q.cpp.ref(DType::u8, {M, K}), sc.cpp.ref(DType::f32, {1}), nullptr);
  const kiln_tensor cq = ct(q.c, KILN_U8, {M, K}), cs = ct(sc.c, KILN_F32, {1});
  ASSERT_EQ(kiln_quantize_fp8(crt_, &ca, &cq, &cs, nullptr), KILN_OK) << kiln_last_error();
  dequantize_fp8(r, q.cpp.ref(DType::u8, {M, K}), sc.cpp.ref(DType::f32, {1}), deq.cpp.ref(DType::bf16, {M, K}),
                 nullptr);
  const kiln_tensor cd = ct(deq.c, KILN_BF16, {M, K});
  ASSERT_EQ(kiln_dequantize_fp8(crt_, &cq, &cs, &cd, nullptr), KILN_OK) << kiln_last_error();
  fp8_gemm(r, a.ref(DType::bf16, {M, K}), b.ref(DType::bf16, {K, N}), nullptr, nullptr,
           c.cpp.ref(DType::bf16, {M, N}), nullptr);
  const kiln_tensor cc = ct(c.c, KILN_BF16, {M, N});
  ASSERT_EQ(kiln_fp8_gemm(crt_, &ca, &cb, nullptr, nullptr, &cc, nullptr), KILN_OK) << kiln_last_error();
  // A prepared weight from b, then a GEMM on a's codes with a bias.
  DeviceBuffer w1(r, kiln_fp8_gemm_weight_bytes(N, K)), w2(r, kiln_fp8_gemm_weight_bytes(N, K));
  fp8_gemm_prepare_weight(r, b.ref(DType::bf16, {K, N}), nullptr, Fp8WeightLayout::kn, Fp8GemmWeight{w1.data(), N, K},
                          nullptr);
  ASSERT_EQ(kiln_fp8_gemm_prepare_weight(crt_, &cb, nullptr, 0, w2.data(), N, K, nullptr), KILN_OK)
      << kiln_last_error();
  const TensorRef qs = sc.cpp.ref(DType::f32, {1}), br = bias.ref(DType::f32, {N});
  fp8_gemm(r, q.cpp.ref(DType::u8, {M, K}), &qs, Fp8GemmWeight{w1.data(), N, K}, &br, cp.cpp.ref(DType::bf16, {M, N}),
           nullptr);
  const kiln_tensor ccp = ct(cp.c, KILN_BF16, {M, N});
  ASSERT_EQ(kiln_fp8_gemm_prepared(crt_, &cq, &cs, w2.data(), N, K, &cbias, &ccp, nullptr), KILN_OK)
      << kiln_last_error();
  synchronize();
  EXPECT_TRUE(q.same("quantize_fp8 codes"));
  EXPECT_TRUE(sc.same("quantize_fp8 scale"));
  EXPECT_TRUE(deq.same("dequantize_fp8"));
  EXPECT_TRUE(c.same("fp8_gemm"));
  EXPECT_TRUE(cp.same("fp8_gemm on a prepared weight with a bias"));
}

}  // namespace
}  // namespace kiln::test
