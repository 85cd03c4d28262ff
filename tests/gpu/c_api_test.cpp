// tests/gpu/c_api_test.cpp — the C ABI on the GPU: every C entry point, called on the same device buffers as its C++
// op, writes the same bytes (a C call is the C++ op behind a descriptor translation, so anything else is a bug in the
// translation: a swapped argument, a dropped option, a wrong dtype or stride). The chain is the MoE router's:
// router GEMM fwd → top-k routing with the fused padded map → permute (bf16 and fp8 + scales) → unpermute (weighted,
// restore) → routing bwd → router GEMM bwd, plus the RMSNorm ops. Shapes are small and odd (T = 333, E = 64, top-6,
// P = 16, K = 256) so a mix-up of T, E or K shows.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "kiln/c_api.h"
#include "kiln/ops/moe.hpp"
#include "kiln/ops/rms_norm.hpp"
#include "kiln/ops/router_gemm.hpp"
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

}  // namespace
}  // namespace kiln::test
