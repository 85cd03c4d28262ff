// The C ABI: status codes per error type, the thread's last-error text, and a runtime handle (no GPU needed).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kiln/c_api.h"
#include "kiln/version.hpp"
#include "runtime/driver.hpp"

namespace {

void* const kFake = reinterpret_cast<void*>(0x10000);  // aligned, non-null; validation runs before any GPU use

struct Handle {
  kiln_runtime* rt = nullptr;
  Handle() { EXPECT_EQ(kiln_runtime_create(nullptr, "sm_90a", &rt), KILN_OK) << kiln_last_error(); }
  ~Handle() { kiln_runtime_destroy(rt); }
};

TEST(CApi, VersionAndCreate) {
  EXPECT_STREQ(kiln_version(), kiln::kVersion);
  Handle h;
  EXPECT_NE(h.rt, nullptr);
  EXPECT_STREQ(kiln_last_error(), "");
  EXPECT_EQ(kiln_runtime_create(nullptr, nullptr, nullptr), KILN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kiln_last_error()).find("'out'"), std::string::npos) << kiln_last_error();
  kiln_runtime* bad = nullptr;
  EXPECT_EQ(kiln_runtime_create(nullptr, "sm90", &bad), KILN_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(bad, nullptr);
}

TEST(CApi, ErrorsMapToStatusCodesAndNameTheArgument) {
  Handle h;
  float* f = static_cast<float*>(kFake);
  // N not a multiple of 128 → shape mismatch on x.
  EXPECT_EQ(kiln_rms_norm_block_quant_fwd(h.rt, kFake, 8, 100, 128, kFake, KILN_BF16, nullptr, kFake, f, nullptr, kFake,
                                          f, 1e-6f, 1, 2, nullptr),
            KILN_ERROR_SHAPE_MISMATCH);
  EXPECT_NE(std::string(kiln_last_error()).find("'x'"), std::string::npos) << kiln_last_error();
  // fp16 weight is not accepted by the block-quant op.
  EXPECT_EQ(kiln_rms_norm_block_quant_fwd(h.rt, kFake, 8, 128, 128, kFake, KILN_F16, nullptr, kFake, f, nullptr, kFake,
                                          f, 1e-6f, 1, 2, nullptr),
            KILN_ERROR_UNSUPPORTED_DTYPE);
  EXPECT_NE(std::string(kiln_last_error()).find("'weight'"), std::string::npos) << kiln_last_error();
  // Null x.
  EXPECT_EQ(kiln_rms_norm_fwd(h.rt, nullptr, kFake, 8, 128, KILN_BF16, kFake, KILN_BF16, nullptr, 1e-6f, nullptr),
            KILN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kiln_last_error()).find("'x'"), std::string::npos) << kiln_last_error();
  // Mode 1 without rms_inv_in.
  EXPECT_EQ(kiln_rms_norm_block_quant_fwd(h.rt, kFake, 8, 128, 128, kFake, KILN_BF16, nullptr, nullptr, nullptr, nullptr,
                                          kFake, f, 1e-6f, 0, 1, nullptr),
            KILN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kiln_last_error()).find("'rms_inv_in'"), std::string::npos) << kiln_last_error();
  // Null runtime.
  EXPECT_EQ(kiln_rms_norm_bwd(nullptr, kFake, kFake, kFake, 8, 128, KILN_BF16, kFake, KILN_BF16, kFake, KILN_F32, 1e-6f,
                              nullptr),
            KILN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kiln_last_error()).find("'rt'"), std::string::npos) << kiln_last_error();
}

// A dtype outside the enum is rejected naming the argument (kiln::DType is one byte: 258 used to pass as fp32).
TEST(CApi, DtypeOutsideTheEnum) {
  Handle h;
  for (int bad : {-1, 9, 258}) {
    const auto d = static_cast<kiln_dtype>(bad);
    EXPECT_EQ(kiln_rms_norm_fwd(h.rt, kFake, kFake, 8, 128, d, kFake, KILN_BF16, nullptr, 1e-6f, nullptr),
              KILN_ERROR_UNSUPPORTED_DTYPE) << bad;
    EXPECT_NE(std::string(kiln_last_error()).find("'dtype'"), std::string::npos) << kiln_last_error();
    EXPECT_EQ(kiln_rms_norm_bwd(h.rt, kFake, kFake, kFake, 8, 128, KILN_BF16, kFake, KILN_BF16, kFake, d, 1e-6f,
                                nullptr),
              KILN_ERROR_UNSUPPORTED_DTYPE) << bad;
    EXPECT_NE(std::string(kiln_last_error()).find("'dweight_dtype'"), std::string::npos) << kiln_last_error();
    EXPECT_EQ(kiln_rms_norm_block_quant_fwd(h.rt, kFake, 8, 128, 128, kFake, d, nullptr, kFake,
                                            static_cast<float*>(kFake), nullptr, kFake, static_cast<float*>(kFake),
                                            1e-6f, 1, 2, nullptr),
              KILN_ERROR_UNSUPPORTED_DTYPE) << bad;
    EXPECT_NE(std::string(kiln_last_error()).find("'weight_dtype'"), std::string::npos) << kiln_last_error();
  }
}

// The tensor-descriptor calls (router GEMM, MoE ops): the descriptor is translated as a TensorRef and the op
// validates it; every failure names the argument.
kiln_tensor desc(kiln_dtype d, std::initializer_list<int64_t> dims) {
  std::vector<int64_t> s(dims);
  return kiln_tensor_contiguous(kFake, d, static_cast<int32_t>(s.size()), s.data());
}

TEST(CApi, TensorContiguousIsRowMajor) {
  const int64_t shape[3] = {5, 7, 9};
  const kiln_tensor t = kiln_tensor_contiguous(kFake, KILN_F32, 3, shape);
  EXPECT_EQ(t.ndim, 3);
  EXPECT_EQ(t.data, kFake);
  EXPECT_EQ(t.dtype, KILN_F32);
  EXPECT_EQ(t.strides[0], 63);
  EXPECT_EQ(t.strides[1], 9);
  EXPECT_EQ(t.strides[2], 1);
  EXPECT_EQ(kiln_tensor_contiguous(kFake, KILN_F32, 7, shape).ndim, 0);
  EXPECT_EQ(kiln_tensor_contiguous(kFake, KILN_F32, 0, shape).ndim, 0);
  EXPECT_EQ(kiln_tensor_contiguous(kFake, KILN_F32, 2, nullptr).ndim, 0);
}

TEST(CApi, RouterGemmErrorsNameTheArgument) {
  Handle h;
  const kiln_tensor x = desc(KILN_BF16, {64, 2048}), w = desc(KILN_BF16, {256, 2048}), z = desc(KILN_F32, {64, 256});
  // logits as bf16.
  const kiln_tensor zb = desc(KILN_BF16, {64, 256});
  EXPECT_EQ(kiln_router_gemm_fp32_fwd(h.rt, &x, &w, &zb, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE);
  EXPECT_NE(std::string(kiln_last_error()).find("'logits'"), std::string::npos) << kiln_last_error();
  // w with the wrong K.
  const kiln_tensor w2 = desc(KILN_BF16, {256, 1024});
  EXPECT_EQ(kiln_router_gemm_fp32_fwd(h.rt, &x, &w2, &z, nullptr), KILN_ERROR_SHAPE_MISMATCH);
  EXPECT_NE(std::string(kiln_last_error()).find("'w'"), std::string::npos) << kiln_last_error();
  // A descriptor with ndim 0 (what kiln_tensor_contiguous returns for a bad ndim) and one with a dtype outside the enum.
  kiln_tensor bad = x;
  bad.ndim = 0;
  EXPECT_EQ(kiln_router_gemm_fp32_fwd(h.rt, &bad, &w, &z, nullptr), KILN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kiln_last_error()).find("'x'"), std::string::npos) << kiln_last_error();
  bad = x;
  bad.dtype = static_cast<kiln_dtype>(42);
  EXPECT_EQ(kiln_router_gemm_fp32_fwd(h.rt, &bad, &w, &z, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE);
  EXPECT_NE(std::string(kiln_last_error()).find("'x'"), std::string::npos) << kiln_last_error();
  // A missing required tensor (NULL descriptor).
  EXPECT_NE(kiln_router_gemm_fp32_fwd(h.rt, nullptr, &w, &z, nullptr), KILN_OK);
  EXPECT_NE(std::string(kiln_last_error()).find("'x'"), std::string::npos) << kiln_last_error();
  // Backward: an unknown precision, and neither dx nor dw.
  const kiln_tensor dx = desc(KILN_BF16, {64, 2048}), dw = desc(KILN_F32, {256, 2048});
  EXPECT_EQ(kiln_router_gemm_fp32_bwd(h.rt, &z, &x, &w, &dx, &dw, nullptr, 3, nullptr), KILN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kiln_last_error()).find("'precision'"), std::string::npos) << kiln_last_error();
  EXPECT_NE(kiln_router_gemm_fp32_bwd(h.rt, &z, &x, &w, nullptr, nullptr, nullptr, 4, nullptr), KILN_OK);
  int64_t elems = -1;
  EXPECT_EQ(kiln_router_gemm_fp32_bwd_workspace_elems(h.rt, 64, 2048, 256, 4, nullptr), KILN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kiln_last_error()).find("'out'"), std::string::npos) << kiln_last_error();
  // The size depends on the device's SM count: without a driver it is a device error, like any GPU query.
  const kiln_status ws = kiln_router_gemm_fp32_bwd_workspace_elems(h.rt, 64, 2048, 256, 4, &elems);
  if (kiln::detail::driver_available()) {
    EXPECT_EQ(ws, KILN_OK) << kiln_last_error();
    EXPECT_GE(elems, 0);
  } else {
    EXPECT_EQ(ws, KILN_ERROR_DEVICE) << kiln_last_error();
  }
}

TEST(CApi, MoeErrorsNameTheArgument) {
  Handle h;
  constexpr int64_t T = 32, E = 64;
  const kiln_tensor z = desc(KILN_F32, {T, E}), p = desc(KILN_F32, {T, E}), m = desc(KILN_U8, {T, E}),
                    c = desc(KILN_I32, {E});
  kiln_moe_routing_options o{8, 1, 8, 4, 0, 1.0f};
  // top_k > E.
  o.top_k = 65;
  EXPECT_NE(kiln_moe_topk_routing_fwd(h.rt, &z, nullptr, &p, &m, &c, &o, nullptr, 1, nullptr, nullptr), KILN_OK);
  EXPECT_NE(std::string(kiln_last_error()).find("top_k"), std::string::npos) << kiln_last_error();
  // n_group not dividing E.
  o.top_k = 8;
  o.n_group = 7;
  EXPECT_NE(kiln_moe_topk_routing_fwd(h.rt, &z, nullptr, &p, &m, &c, &o, nullptr, 1, nullptr, nullptr), KILN_OK);
  EXPECT_NE(std::string(kiln_last_error()).find("n_group"), std::string::npos) << kiln_last_error();
  // An unknown score function.
  o.n_group = 8;
  o.score = 5;
  EXPECT_EQ(kiln_moe_topk_routing_fwd(h.rt, &z, nullptr, &p, &m, &c, &o, nullptr, 1, nullptr, nullptr),
            KILN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kiln_last_error()).find("score"), std::string::npos) << kiln_last_error();
  // probs of the wrong shape.
  o.score = 1;
  const kiln_tensor p2 = desc(KILN_F32, {T, E / 2});
  EXPECT_EQ(kiln_moe_topk_routing_fwd(h.rt, &z, nullptr, &p2, &m, &c, &o, nullptr, 1, nullptr, nullptr),
            KILN_ERROR_SHAPE_MISMATCH);
  EXPECT_NE(std::string(kiln_last_error()).find("'probs'"), std::string::npos) << kiln_last_error();
  // A null map where one is required.
  const kiln_tensor x = desc(KILN_BF16, {T, 256}), out = desc(KILN_BF16, {T * 8, 256});
  const kiln_moe_permute_options po{8, 1, 0, 0, 0};
  EXPECT_EQ(kiln_moe_permute(h.rt, &x, nullptr, nullptr, nullptr, &out, nullptr, nullptr, &po, nullptr),
            KILN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kiln_last_error()).find("'map'"), std::string::npos) << kiln_last_error();
  EXPECT_EQ(kiln_moe_make_row_id_map(h.rt, &m, nullptr, 16, 8, nullptr, nullptr), KILN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kiln_last_error()).find("'out'"), std::string::npos) << kiln_last_error();
  // A map descriptor whose row_id_map has a dtype outside the enum.
  kiln_tensor rid = desc(KILN_I32, {T, E});
  rid.dtype = static_cast<kiln_dtype>(-3);
  const kiln_moe_row_id_map map{&rid, nullptr, nullptr, nullptr, nullptr};
  EXPECT_EQ(kiln_moe_permute(h.rt, &x, nullptr, nullptr, &map, &out, nullptr, nullptr, &po, nullptr),
            KILN_ERROR_UNSUPPORTED_DTYPE);
  EXPECT_NE(std::string(kiln_last_error()).find("'map.row_id_map'"), std::string::npos) << kiln_last_error();
  // num_out smaller than the map needs.
  const kiln_tensor rid_ok = desc(KILN_I32, {T, E}), small = desc(KILN_BF16, {T, 256});
  const kiln_moe_row_id_map map_ok{&rid_ok, nullptr, nullptr, nullptr, nullptr};
  EXPECT_NE(kiln_moe_permute(h.rt, &x, nullptr, nullptr, &map_ok, &small, nullptr, nullptr, &po, nullptr), KILN_OK);
  EXPECT_NE(std::string(kiln_last_error()).find("'out'"), std::string::npos) << kiln_last_error();
  // Unpermute with a bad scale-layout number is not consulted (no scales); a bad dtype of x is.
  const kiln_tensor xi = desc(KILN_I32, {T * 8, 256}), uo = desc(KILN_I32, {T, 256});
  EXPECT_EQ(kiln_moe_unpermute(h.rt, &xi, &rid_ok, nullptr, &uo, nullptr, &po, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE);
  EXPECT_NE(std::string(kiln_last_error()).find("'x'"), std::string::npos) << kiln_last_error();
  EXPECT_EQ(kiln_moe_max_out_rows(8192, 256, 8, 16), 8192 * 8 + 256 * 15);
}

// The families added after the MoE ops. `fails` checks the status and that the message names the argument.
::testing::AssertionResult fails(kiln_status got, kiln_status want, const char* arg) {
  const std::string msg = kiln_last_error();
  if (got == want && msg.find(std::string("'") + arg + "'") != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "status " << got << " (want " << want << "), message: " << msg
                                       << " (want it to name '" << arg << "')";
}

TEST(CApi, SiluErrorsNameTheArgument) {
  Handle h;
  constexpr int64_t M = 16, n = 128;
  const kiln_tensor x = desc(KILN_BF16, {M, 2 * n}), g = desc(KILN_BF16, {M, n});
  const kiln_tensor q = desc(KILN_E4M3, {M, n}), qs = desc(KILN_F32, {n / 128, M}), qT = desc(KILN_E4M3, {n, M}),
                    qTs = desc(KILN_F32, {1, n});
  const kiln_silu_block_quant_outputs out{&q, &qs, &qT, &qTs};
  kiln_silu_options o{0, 5, 0, 0};
  EXPECT_TRUE(fails(kiln_silu_block_quant_fwd(h.rt, &x, &out, &o, nullptr), KILN_ERROR_INVALID_ARGUMENT,
                    "output_mode"));
  EXPECT_TRUE(fails(kiln_silu_block_quant_fwd(h.rt, &x, nullptr, nullptr, nullptr), KILN_ERROR_INVALID_ARGUMENT,
                    "out"));
  const kiln_tensor x_odd = desc(KILN_BF16, {M, 200});
  EXPECT_TRUE(fails(kiln_silu_block_quant_fwd(h.rt, &x_odd, &out, nullptr, nullptr), KILN_ERROR_SHAPE_MISMATCH, "x"));
  // Backward: g in fp32; a dx output of the forward's width (W must be 2n).
  const kiln_tensor g32 = desc(KILN_F32, {M, n});
  const kiln_tensor dq = desc(KILN_E4M3, {M, 2 * n}), dqs = desc(KILN_F32, {2 * n / 128, M}),
                    dqT = desc(KILN_E4M3, {2 * n, M}), dqTs = desc(KILN_F32, {1, 2 * n});
  const kiln_silu_block_quant_outputs dx{&dq, &dqs, &dqT, &dqTs};
  EXPECT_TRUE(fails(kiln_silu_block_quant_bwd(h.rt, &g32, &x, &dx, nullptr, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE,
                    "g"));
  EXPECT_TRUE(fails(kiln_silu_block_quant_bwd(h.rt, &g, &x, &out, nullptr, nullptr), KILN_ERROR_SHAPE_MISMATCH, "q"));
  // Batched: prob in bf16, dprob of the wrong length, counts missing, a bad output mode.
  const kiln_tensor prob = desc(KILN_F32, {M}), prob16 = desc(KILN_BF16, {M}), counts = desc(KILN_I32, {4}),
                    dprob_short = desc(KILN_F32, {M - 1});
  const kiln_tensor bq_s = desc(KILN_F32, {M * (n / 128)}), bqT = desc(KILN_E4M3, {M * n}),
                    bqT_s = desc(KILN_F32, {kiln_batch_weighted_silu_max_token_blocks(M, 4) * n});
  const kiln_silu_block_quant_outputs bout{&q, &bq_s, &bqT, &bqT_s};
  EXPECT_TRUE(fails(kiln_batch_weighted_silu_block_quant_fwd(h.rt, &x, &prob16, &counts, &bout, nullptr, nullptr,
                                                             nullptr),
                    KILN_ERROR_UNSUPPORTED_DTYPE, "prob"));
  EXPECT_TRUE(fails(kiln_batch_weighted_silu_block_quant_fwd(h.rt, &x, &prob, nullptr, &bout, nullptr, nullptr,
                                                             nullptr),
                    KILN_ERROR_UNSUPPORTED_DTYPE, "counts"));
  EXPECT_TRUE(fails(kiln_batch_weighted_silu_block_quant_fwd(h.rt, &x, &prob, &counts, &bout, nullptr, &o, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "output_mode"));
  const kiln_tensor bdq_s = desc(KILN_F32, {M * (2 * n / 128)}), bdqT = desc(KILN_E4M3, {M * 2 * n}),
                    bdqT_s = desc(KILN_F32, {kiln_batch_weighted_silu_max_token_blocks(M, 4) * 2 * n});
  const kiln_silu_block_quant_outputs bdx{&dq, &bdq_s, &bdqT, &bdqT_s};
  EXPECT_TRUE(fails(kiln_batch_weighted_silu_block_quant_bwd(h.rt, &g, &x, &prob, &counts, &bdx, &dprob_short, nullptr,
                                                             nullptr, nullptr),
                    KILN_ERROR_SHAPE_MISMATCH, "dprob"));
  EXPECT_TRUE(fails(kiln_batch_weighted_silu_block_quant_bwd(h.rt, &g, &x, &prob, &counts, nullptr, &dprob_short,
                                                             nullptr, nullptr, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "dx"));
}

TEST(CApi, NormRopeErrorsNameTheArgument) {
  Handle h;
  // qk-norm + half RoPE: S 4, B 2, H 4, h 2, D 64.
  constexpr int64_t S = 4, B = 2, H = 4, hk = 2, D = 64;
  const kiln_tensor qkv = desc(KILN_BF16, {S, B, (H + 2 * hk) * D}), w = desc(KILN_BF16, {D}),
                    fr = desc(KILN_F32, {S, D / 2}), q = desc(KILN_BF16, {B, S, H, D}),
                    k = desc(KILN_BF16, {B, S, hk, D}),
                    dw = desc(KILN_F32, {D});
  EXPECT_TRUE(fails(kiln_qk_norm_half_rope_fwd(h.rt, &qkv, &w, &w, &fr, &q, &k, &k, nullptr, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "num_heads"));
  kiln_qk_norm_half_rope_options qo{H, hk, 1e-6f, 1, 0, nullptr, 0};
  const kiln_tensor cu = desc(KILN_I64, {3});
  qo.cu_seqlens = &cu;
  EXPECT_TRUE(fails(kiln_qk_norm_half_rope_fwd(h.rt, &qkv, &w, &w, &fr, &q, &k, &k, &qo, nullptr),
                    KILN_ERROR_UNSUPPORTED_DTYPE, "cu_seqlens"));
  qo.cu_seqlens = nullptr;
  const kiln_tensor dqkv16 = desc(KILN_F16, {S, B, (H + 2 * hk) * D});
  EXPECT_TRUE(fails(kiln_qk_norm_half_rope_bwd(h.rt, &q, &k, &k, &qkv, &w, &w, &fr, &dqkv16, &dw, &dw, &qo, nullptr,
                                               nullptr),
                    KILN_ERROR_UNSUPPORTED_DTYPE, "dqkv"));
  EXPECT_TRUE(fails(kiln_qk_norm_half_rope_bwd_workspace_elems(h.rt, D, nullptr), KILN_ERROR_INVALID_ARGUMENT, "out"));

  // RMSNorm + RoPE: x [B, S, 256], D 64.
  const kiln_tensor x = desc(KILN_BF16, {B, S, 256}), rw = desc(KILN_BF16, {256}), cs = desc(KILN_F32, {S, D}),
                    y32 = desc(KILN_F32, {B, S, 256}), drw16 = desc(KILN_BF16, {256});
  EXPECT_TRUE(fails(kiln_rms_norm_rope_fwd(h.rt, &x, &rw, &cs, &cs, &y32, 1e-6f, 0, nullptr),
                    KILN_ERROR_UNSUPPORTED_DTYPE, "y"));
  EXPECT_TRUE(fails(kiln_rms_norm_rope_fwd(h.rt, &x, &rw, &cs, &cs, &x, 1e-6f, -1, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "num_heads"));
  EXPECT_TRUE(fails(kiln_rms_norm_rope_bwd(h.rt, &x, &x, &rw, &cs, &cs, &x, &drw16, 1e-6f, 0, nullptr, nullptr),
                    KILN_ERROR_UNSUPPORTED_DTYPE, "dweight"));
  int64_t elems = -1;
  EXPECT_TRUE(fails(kiln_rms_norm_rope_bwd_workspace_elems(h.rt, B * S, 256, D, static_cast<kiln_dtype>(99), &elems),
                    KILN_ERROR_UNSUPPORTED_DTYPE, "dtype"));

  // Group RMSNorm × gate: x [B, S, 256], 3 groups do not divide 256; dgate in the wrong layout.
  const kiln_tensor gate = desc(KILN_BF16, {S, B, 256}), gw = desc(KILN_BF16, {256}), gdw = desc(KILN_F32, {256});
  kiln_group_rms_norm_gate_options go{3, 1e-6f, 1};
  EXPECT_TRUE(fails(kiln_group_rms_norm_gate_fwd(h.rt, &x, &gate, &gw, &gate, &go, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "groups"));
  EXPECT_TRUE(fails(kiln_group_rms_norm_gate_bwd(h.rt, &gate, &x, &gate, &gw, &x, &x, &gdw, nullptr, nullptr, nullptr),
                    KILN_ERROR_SHAPE_MISMATCH, "dgate"));
  EXPECT_TRUE(fails(kiln_group_rms_norm_gate_bwd_workspace_elems(h.rt, B * S, 256, 4, KILN_BF16, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "out"));
}

TEST(CApi, CrossEntropyErrorsNameTheArgument) {
  Handle h;
  constexpr int64_t M = 8, V = 1000;
  const kiln_tensor z = desc(KILN_BF16, {M, V}), y = desc(KILN_I64, {M}), yf = desc(KILN_F32, {M}),
                    loss = desc(KILN_F32, {M}), stat = desc(KILN_F32, {M}), g_short = desc(KILN_F32, {M - 1});
  EXPECT_TRUE(fails(kiln_softmax_cross_entropy_fwd(h.rt, &z, &yf, &loss, &stat, &stat, nullptr, nullptr),
                    KILN_ERROR_UNSUPPORTED_DTYPE, "labels"));
  kiln_cross_entropy_options o{-100, 1.5f, 0.f, 0, 0, nullptr};
  EXPECT_TRUE(fails(kiln_softmax_cross_entropy_fwd(h.rt, &z, &y, &loss, &stat, &stat, &o, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "label_smoothing"));
  EXPECT_TRUE(fails(kiln_softmax_cross_entropy_bwd(h.rt, &z, &y, &stat, &stat, &g_short, &z, nullptr, nullptr),
                    KILN_ERROR_SHAPE_MISMATCH, "grad_loss"));
  const kiln_fused_cross_entropy_options f{7, 1.f, nullptr, nullptr, nullptr};
  EXPECT_TRUE(fails(kiln_softmax_cross_entropy_fused(h.rt, &z, &y, &loss, &z, &f, nullptr, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "reduction"));
  const kiln_tensor part_bad = desc(KILN_F32, {3, M});
  EXPECT_TRUE(fails(kiln_softmax_cross_entropy_partial_fwd(h.rt, &z, &y, &part_bad, nullptr, nullptr),
                    KILN_ERROR_SHAPE_MISMATCH, "partial"));
  const kiln_tensor parts = desc(KILN_F32, {2, 4, M});
  EXPECT_TRUE(fails(kiln_softmax_cross_entropy_merge(h.rt, &parts, &y, &loss, nullptr, nullptr, nullptr, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "vocab_total"));
}

TEST(CApi, BatchReduceAndBlockQuantPermuteErrorsNameTheArgument) {
  Handle h;
  const kiln_tensor xs[2] = {desc(KILN_F32, {100}), desc(KILN_I32, {7, 3})};
  const kiln_tensor out = desc(KILN_F32, {1}), out64 = desc(KILN_I64, {1});
  EXPECT_TRUE(fails(kiln_batch_sum_with_ord(h.rt, xs, 2, &out, nullptr, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE,
                    "xs[1]"));
  EXPECT_TRUE(fails(kiln_batch_sum_with_ord(h.rt, nullptr, 2, &out, nullptr, nullptr), KILN_ERROR_INVALID_ARGUMENT,
                    "xs"));
  EXPECT_TRUE(fails(kiln_batch_sum_with_ord(h.rt, xs, -1, &out, nullptr, nullptr), KILN_ERROR_INVALID_ARGUMENT,
                    "count"));
  const kiln_batch_norm_options bad_ord{9, 0, 1};
  EXPECT_TRUE(fails(kiln_batch_sum_with_ord(h.rt, xs, 1, &out, &bad_ord, nullptr), KILN_ERROR_INVALID_ARGUMENT, "ord"));
  EXPECT_TRUE(fails(kiln_batch_count_zero(h.rt, xs, 1, &out, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE, "out"));
  EXPECT_TRUE(fails(kiln_batch_count_zero(h.rt, xs, 2, &out64, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE, "xs[1]"));

  // Block-quantized permute: T 32, E 8, Hd 256, top-2, P 16.
  constexpr int64_t T = 32, E = 8, Hd = 256, P = 16;
  const int64_t num_out = kiln_moe_max_out_rows(T, E, 2, P), nb = kiln_moe_block_quant_scale_blocks(num_out, E);
  EXPECT_EQ(nb, (num_out + 127) / 128 + E);
  const kiln_tensor x = desc(KILN_BF16, {T, Hd}), rid = desc(KILN_I32, {T, E}), idx = desc(KILN_I32, {num_out}),
                    off = desc(KILN_I32, {E + 1});
  const kiln_tensor q = desc(KILN_E4M3, {num_out, Hd}), qs = desc(KILN_F32, {num_out * Hd / 128}),
                    qT = desc(KILN_E4M3, {num_out * Hd}), qTs = desc(KILN_F32, {nb * Hd}),
                    q16 = desc(KILN_BF16, {num_out, Hd});
  const kiln_moe_row_id_map map{&rid, &idx, nullptr, nullptr, &off}, no_off{&rid, &idx, nullptr, nullptr, nullptr};
  const kiln_moe_permute_options po{2, P, 0, 0, 0};
  const kiln_moe_block_quant_permute_outputs o{&q, &qs, &qT, &qTs, nullptr}, o16{&q16, &qs, &qT, &qTs, nullptr};
  EXPECT_TRUE(fails(kiln_moe_permute_block_quant(h.rt, &x, nullptr, &map, nullptr, &po, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "out"));
  EXPECT_TRUE(fails(kiln_moe_permute_block_quant(h.rt, &x, nullptr, nullptr, &o, &po, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "map"));
  EXPECT_TRUE(fails(kiln_moe_permute_block_quant(h.rt, &x, nullptr, &no_off, &o, &po, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "offsets"));
  EXPECT_TRUE(fails(kiln_moe_permute_block_quant(h.rt, &x, nullptr, &map, &o16, &po, nullptr),
                    KILN_ERROR_UNSUPPORTED_DTYPE, "q"));
}

// The fused gated MLP: an activation outside the enum (checked by the C layer), null arguments, and the op's own
// shape / dtype checks through the descriptors.
TEST(CApi, GatedMlpErrorsNameTheArgument) {
  Handle h;
  constexpr int64_t M = 100, H = 256, I = 384;
  const kiln_tensor x = desc(KILN_BF16, {M, H}), w = desc(KILN_BF16, {I, H}), out = desc(KILN_BF16, {M, I});
  for (int bad : {-1, 2, 99})
    EXPECT_TRUE(fails(kiln_fused_gated_mlp(h.rt, &x, &w, &w, &out, bad, nullptr), KILN_ERROR_INVALID_ARGUMENT,
                      "activation"))
        << bad;
  EXPECT_TRUE(fails(kiln_fused_gated_mlp(nullptr, &x, &w, &w, &out, 0, nullptr), KILN_ERROR_INVALID_ARGUMENT, "rt"));
  // A missing required tensor (NULL descriptor) fails naming it.
  EXPECT_NE(kiln_fused_gated_mlp(h.rt, nullptr, &w, &w, &out, 0, nullptr), KILN_OK);
  EXPECT_NE(std::string(kiln_last_error()).find("'x'"), std::string::npos) << kiln_last_error();
  EXPECT_NE(kiln_fused_gated_mlp(h.rt, &x, nullptr, &w, &out, 0, nullptr), KILN_OK);
  EXPECT_NE(std::string(kiln_last_error()).find("'gate_weight'"), std::string::npos) << kiln_last_error();
  EXPECT_NE(kiln_fused_gated_mlp(h.rt, &x, &w, nullptr, &out, 1, nullptr), KILN_OK);
  EXPECT_NE(std::string(kiln_last_error()).find("'up_weight'"), std::string::npos) << kiln_last_error();
  EXPECT_NE(kiln_fused_gated_mlp(h.rt, &x, &w, &w, nullptr, 1, nullptr), KILN_OK);
  EXPECT_NE(std::string(kiln_last_error()).find("'out'"), std::string::npos) << kiln_last_error();
  // The op's checks: up_weight of another shape, out in another dtype, weights in another dtype.
  const kiln_tensor w2 = desc(KILN_BF16, {I / 2, H}), out32 = desc(KILN_F32, {M, I}), w16 = desc(KILN_F16, {I, H});
  EXPECT_TRUE(fails(kiln_fused_gated_mlp(h.rt, &x, &w, &w2, &out, 0, nullptr), KILN_ERROR_SHAPE_MISMATCH,
                    "up_weight"));
  EXPECT_TRUE(fails(kiln_fused_gated_mlp(h.rt, &x, &w, &w, &out32, 0, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE, "out"));
  EXPECT_TRUE(fails(kiln_fused_gated_mlp(h.rt, &x, &w16, &w, &out, 0, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE,
                    "gate_weight"));
}

// The fp8 codes and the fp8 GEMM: the C layer's own checks (rt, the layout enum) and the ops' checks through the
// descriptors, naming the argument.
TEST(CApi, Fp8ErrorsNameTheArgument) {
  Handle h;
  constexpr int64_t M = 100, N = 64, K = 256;
  const kiln_tensor x = desc(KILN_BF16, {M, K}), q = desc(KILN_U8, {M, K}), s = desc(KILN_F32, {1}),
                    b = desc(KILN_U8, {K, N}), c = desc(KILN_BF16, {M, N}), x8 = desc(KILN_E4M3, {M, K});
  EXPECT_TRUE(fails(kiln_quantize_fp8(nullptr, &x, &q, &s, nullptr), KILN_ERROR_INVALID_ARGUMENT, "rt"));
  EXPECT_TRUE(fails(kiln_quantize_fp8(h.rt, &x8, &q, &s, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE, "x"));
  EXPECT_TRUE(fails(kiln_dequantize_fp8(h.rt, &q, &s, &x8, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE, "out"));
  EXPECT_TRUE(fails(kiln_fp8_gemm(h.rt, &q, &b, nullptr, &s, &c, nullptr), KILN_ERROR_INVALID_ARGUMENT, "a_scale"));
  EXPECT_TRUE(fails(kiln_fp8_gemm(h.rt, &q, &b, &s, &s, &x8, nullptr), KILN_ERROR_UNSUPPORTED_DTYPE, "c"));
  EXPECT_EQ(kiln_fp8_gemm_weight_bytes(N, K), N * K + N * 4 + 16);
  for (int bad : {-1, 2})
    EXPECT_TRUE(fails(kiln_fp8_gemm_prepare_weight(h.rt, &b, &s, bad, reinterpret_cast<void*>(0x1000), N, K, nullptr),
                      KILN_ERROR_INVALID_ARGUMENT, "layout"))
        << bad;
  EXPECT_TRUE(fails(kiln_fp8_gemm_prepare_weight(h.rt, &b, &s, 0, reinterpret_cast<void*>(0x1000), N + 1, K, nullptr),
                    KILN_ERROR_SHAPE_MISMATCH, "weight"));
  const kiln_tensor bias = desc(KILN_F32, {N + 1});
  EXPECT_TRUE(fails(kiln_fp8_gemm_prepared(h.rt, &q, &s, reinterpret_cast<void*>(0x1000), N, K, &bias, &c, nullptr),
                    KILN_ERROR_SHAPE_MISMATCH, "bias"));
  EXPECT_TRUE(fails(kiln_fp8_gemm_prepared(h.rt, &q, &s, nullptr, N, K, nullptr, &c, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "weight"));
}

// The FP4 MoE through the C layer: its pointer checks and the ops' enum checks name the argument; a valid layer call (fake device
// pointers) passes every check and, without a driver, fails only at the device; the importers round-trip host bytes.
TEST(CApi, Fp4MoeErrorsNameTheArgumentAndImportersRoundTrip) {
  Handle h;
  constexpr int64_t T = 8, E = 32, H = 256, I = 128;
  const kiln_tensor logits = desc(KILN_F32, {T, E}), ids = desc(KILN_I32, {T, 2}), wts = desc(KILN_BF16, {T, 2}),
                    hidden = desc(KILN_BF16, {T, H}), out = desc(KILN_BF16, {T, H});
  kiln_fp4_moe_route_options ro{1, 2, 0, 0, 1.0f, 1};
  kiln_fp4_moe_route_options bad_ro = ro;
  bad_ro.method = 9;
  EXPECT_TRUE(fails(kiln_fp4_moe_route(h.rt, &logits, nullptr, &ids, &wts, &bad_ro, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "method"));
  EXPECT_TRUE(fails(kiln_fp4_moe_route(h.rt, &logits, nullptr, &ids, &wts, nullptr, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "options"));
  const kiln_tensor ids3 = desc(KILN_I32, {T, 3});
  EXPECT_TRUE(fails(kiln_fp4_moe_route(h.rt, &logits, nullptr, &ids3, &wts, &ro, nullptr), KILN_ERROR_SHAPE_MISMATCH,
                    "topk_ids"));
  int64_t n = 0;
  EXPECT_EQ(kiln_fp4_moe_packed_bytes(2, 256, 256, 1, &n), KILN_OK) << kiln_last_error();
  EXPECT_EQ(n, 2 * 2 * 2 * (8192 + 512));  // 2 experts × 2 row blocks × 2 K tiles × an mxfp4 chunk
  EXPECT_TRUE(fails(kiln_fp4_moe_packed_bytes(2, 256, 256, 2, &n), KILN_ERROR_INVALID_ARGUMENT, "format"));
  EXPECT_TRUE(fails(kiln_fp4_moe_packed_bytes(2, 256, 256, 0, nullptr), KILN_ERROR_INVALID_ARGUMENT, "out"));
  const kiln_tensor codes = desc(KILN_U8, {E, 2 * I, H / 2}), scales = desc(KILN_U8, {E, 2 * I, H / 32}),
                    packed = desc(KILN_U8, {int64_t{1} << 24});
  kiln_fp4_moe_weights w1{};
  EXPECT_TRUE(fails(kiln_fp4_moe_prepack(h.rt, &codes, &scales, 1, 1, &packed, nullptr, nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "out"));
  EXPECT_TRUE(fails(kiln_fp4_moe_prepack(h.rt, &codes, &scales, 7, 1, &packed, nullptr, &w1),
                    KILN_ERROR_INVALID_ARGUMENT, "format"));
  const kiln_tensor scales16 = desc(KILN_U8, {E, 2 * I, H / 16});
  EXPECT_TRUE(fails(kiln_fp4_moe_prepack(h.rt, &codes, &scales16, 1, 1, &packed, nullptr, &w1),
                    KILN_ERROR_SHAPE_MISMATCH, "scales"));

  kiln_fp4_moe_options o{ro, 3, 0, E, 0, 1};
  kiln_fp4_moe_inputs in{};
  in.routing_logits = &logits;
  in.hidden_states = &hidden;
  in.w1 = kiln_fp4_moe_weights{kFake, E, 2 * I, H, 1, 1};
  in.w2 = kiln_fp4_moe_weights{kFake, E, H, I, 1, 0};
  const kiln_fp4_moe_outputs outs{&out, nullptr, nullptr, nullptr};
  EXPECT_EQ(kiln_fp4_moe_max_padded_rows(h.rt, T, 2, E, &n), KILN_OK) << kiln_last_error();
  EXPECT_GE(n, T * 2);
  EXPECT_EQ(kiln_fp4_moe_workspace_bytes(h.rt, T, H, I, &o, E, &n), KILN_OK) << kiln_last_error();
  EXPECT_GT(n, 0);
  for (int bad : {0, 5, 8}) {
    kiln_fp4_moe_options b = o;
    b.activation = bad;
    EXPECT_TRUE(fails(kiln_fp4_block_scale_moe(h.rt, &in, &outs, &b, nullptr, nullptr), KILN_ERROR_INVALID_ARGUMENT,
                      "activation"))
        << bad;
  }
  kiln_fp4_moe_options bh = o;
  bh.hidden_format = 4;
  EXPECT_TRUE(fails(kiln_fp4_block_scale_moe(h.rt, &in, &outs, &bh, nullptr, nullptr), KILN_ERROR_INVALID_ARGUMENT,
                    "hidden_format"));
  EXPECT_TRUE(fails(kiln_fp4_block_scale_moe(h.rt, nullptr, &outs, &o, nullptr, nullptr), KILN_ERROR_INVALID_ARGUMENT,
                    "inputs"));
  kiln_fp4_moe_inputs bad_in = in;
  bad_in.w2.format = 3;
  EXPECT_TRUE(fails(kiln_fp4_block_scale_moe(h.rt, &bad_in, &outs, &o, nullptr, nullptr), KILN_ERROR_INVALID_ARGUMENT,
                    "w2"));
  const kiln_tensor hidden_bad = desc(KILN_BF16, {T + 1, H});
  bad_in = in;
  bad_in.hidden_states = &hidden_bad;
  EXPECT_NE(kiln_fp4_block_scale_moe(h.rt, &bad_in, &outs, &o, nullptr, nullptr), KILN_OK);
  EXPECT_NE(std::string(kiln_last_error()).find("hidden_states"), std::string::npos) << kiln_last_error();
  if (!kiln::detail::driver_available()) {
    EXPECT_EQ(kiln_fp4_block_scale_moe(h.rt, &in, &outs, &o, nullptr, nullptr), KILN_ERROR_DEVICE) << kiln_last_error();
    EXPECT_EQ(kiln_fp4_moe_route(h.rt, &logits, nullptr, &ids, &wts, &ro, nullptr), KILN_ERROR_DEVICE)
        << kiln_last_error();
  }

  // Importers: export then import through the C layer gives the bytes back; bad row_block named.
  const kiln_fp4_host_shape sh{2, 64, 64, 0, 1};
  int64_t sb = 0;
  ASSERT_EQ(kiln_fp4_moe_trtllm_scale_bytes(&sh, &sb), KILN_OK) << kiln_last_error();
  EXPECT_EQ(sb, 2 * 512 * 1);  // 2 experts × ⌈64/128⌉ × ⌈4/4⌉ × 512
  std::vector<uint8_t> c(2 * 64 * 32), sc(2 * 64 * 4), c2(c.size()), s2(sb), c3(c.size()), s3(sc.size());
  std::vector<float> bias(2 * 64), b2(bias.size()), b3(bias.size());
  for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<uint8_t>(i * 7 + 1);
  for (size_t i = 0; i < sc.size(); ++i) sc[i] = static_cast<uint8_t>(i * 3 + 2);
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = static_cast<float>(i);
  ASSERT_EQ(kiln_fp4_moe_export_trtllm(c.data(), sc.data(), bias.data(), &sh, c2.data(), s2.data(), b2.data(), 32),
            KILN_OK)
      << kiln_last_error();
  ASSERT_EQ(kiln_fp4_moe_import_trtllm(c2.data(), s2.data(), b2.data(), &sh, c3.data(), s3.data(), b3.data(), 32),
            KILN_OK)
      << kiln_last_error();
  EXPECT_EQ(c3, c);
  EXPECT_EQ(s3, sc);
  EXPECT_EQ(b3, bias);
  EXPECT_NE(c2, c);
  EXPECT_TRUE(fails(kiln_fp4_moe_import_trtllm(c2.data(), s2.data(), nullptr, &sh, c3.data(), s3.data(), nullptr, 24),
                    KILN_ERROR_INVALID_ARGUMENT, "row_block"));
  EXPECT_TRUE(fails(kiln_fp4_moe_import_gpt_oss(c.data(), sc.data(), nullptr, nullptr, c3.data(), s3.data(), nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "shape"));
  const kiln_fp4_host_shape plain{2, 64, 64, 0, 0};
  EXPECT_TRUE(fails(kiln_fp4_moe_import_gpt_oss(c.data(), sc.data(), nullptr, &plain, c3.data(), s3.data(), nullptr),
                    KILN_ERROR_INVALID_ARGUMENT, "shape.gated"));
}

TEST(CApi, ValidCallWithoutADriverIsADeviceError) {
  if (kiln::detail::driver_available()) GTEST_SKIP() << "a driver is present";
  Handle h;
  EXPECT_EQ(kiln_rms_norm_fwd(h.rt, kFake, kFake, 8, 128, KILN_BF16, kFake, KILN_BF16, nullptr, 1e-6f, nullptr),
            KILN_ERROR_DEVICE);
  EXPECT_NE(std::string(kiln_last_error()).find("driver"), std::string::npos) << kiln_last_error();
  const kiln_tensor x = desc(KILN_BF16, {64, 2048}), w = desc(KILN_BF16, {256, 2048}), z = desc(KILN_F32, {64, 256});
  EXPECT_EQ(kiln_router_gemm_fp32_fwd(h.rt, &x, &w, &z, nullptr), KILN_ERROR_DEVICE);
  EXPECT_NE(std::string(kiln_last_error()).find("driver"), std::string::npos) << kiln_last_error();
}


// Valid calls of the families above (the shapes and options of tests/gpu/c_api_test.cpp) pass every check and
// fail only at the first driver call: the translation keeps arguments in place (a swap would fail validation).
TEST(CApi, ValidCallsOfEveryFamilyReachTheDevice) {
  if (kiln::detail::driver_available()) GTEST_SKIP() << "a driver is present (the pointers are fake)";
  Handle h;
  auto dev = [](kiln_status st, const char* what) {
    EXPECT_EQ(st, KILN_ERROR_DEVICE) << what << ": " << kiln_last_error();
    EXPECT_NE(std::string(kiln_last_error()).find("driver"), std::string::npos) << kiln_last_error();
  };
  {
    constexpr int64_t M = 200, n = 256, E = 3;
    const kiln_tensor x = desc(KILN_BF16, {M, 2 * n}), g = desc(KILN_BF16, {M, n}), prob = desc(KILN_F32, {M}),
                      counts = desc(KILN_I32, {E});
    const int64_t tb = kiln_batch_weighted_silu_max_token_blocks(M, E);
    for (const int64_t W : {n, 2 * n}) {
      const kiln_tensor q = desc(KILN_E4M3, {M, W}), qs = desc(KILN_F32, {W / 128, M}), qT = desc(KILN_E4M3, {W, M}),
                        qTs = desc(KILN_F32, {(M + 127) / 128, W});
      const kiln_silu_block_quant_outputs o{&q, &qs, &qT, &qTs};
      const kiln_silu_options co{1, 2, 0, 0};
      const kiln_tensor bqs = desc(KILN_F32, {M * W / 128}), bqT = desc(KILN_E4M3, {M * W}),
                        bqTs = desc(KILN_F32, {tb * W}), status = desc(KILN_I32, {1}), dprob = desc(KILN_F32, {M});
      const kiln_silu_block_quant_outputs bo{&q, &bqs, &bqT, &bqTs};
      if (W == n) {
        dev(kiln_silu_block_quant_fwd(h.rt, &x, &o, &co, nullptr), "silu fwd");
        dev(kiln_batch_weighted_silu_block_quant_fwd(h.rt, &x, &prob, &counts, &bo, &status, &co, nullptr),
            "bsilu fwd");
      } else {
        dev(kiln_silu_block_quant_bwd(h.rt, &g, &x, &o, &co, nullptr), "silu bwd");
        dev(kiln_batch_weighted_silu_block_quant_bwd(h.rt, &g, &x, &prob, &counts, &bo, &dprob, &status, &co, nullptr),
            "bsilu bwd");
      }
    }
  }
  {
    constexpr int64_t S = 5, B = 3, H = 4, hk = 2, D = 64, W = (H + 2 * hk) * D, off = 2;
    const kiln_qk_norm_half_rope_options cqo{H, hk, 1e-5f, 1, off, nullptr, 0};
    const kiln_tensor qkv = desc(KILN_BF16, {S, B, W}), w = desc(KILN_BF16, {D}), fr = desc(KILN_F32, {S + off, D / 2}),
                      q = desc(KILN_BF16, {B, S, H, D}), k = desc(KILN_BF16, {B, S, hk, D}), dw = desc(KILN_F32, {D});
    dev(kiln_qk_norm_half_rope_fwd(h.rt, &qkv, &w, &w, &fr, &q, &k, &k, &cqo, nullptr), "qk fwd");
    dev(kiln_qk_norm_half_rope_bwd(h.rt, &q, &k, &k, &qkv, &w, &w, &fr, &qkv, &dw, &dw, &cqo, nullptr, nullptr),
        "qk bwd");
    constexpr int64_t Bn = 2, Sn = 7, Hd = 256;
    const kiln_tensor x = desc(KILN_BF16, {Bn, Sn, Hd}), rw = desc(KILN_BF16, {Hd}), cs = desc(KILN_F32, {Sn, D}),
                      rdw = desc(KILN_F32, {Hd}), gate = desc(KILN_BF16, {Sn, Bn, Hd});
    dev(kiln_rms_norm_rope_fwd(h.rt, &x, &rw, &cs, &cs, &x, 1e-5f, 4, nullptr), "rope fwd");
    dev(kiln_rms_norm_rope_bwd(h.rt, &x, &x, &rw, &cs, &cs, &x, &rdw, 1e-5f, 0, nullptr, nullptr), "rope bwd");
    const kiln_group_rms_norm_gate_options cgo{4, 1e-5f, 1};
    dev(kiln_group_rms_norm_gate_fwd(h.rt, &x, &gate, &rw, &gate, &cgo, nullptr), "gate fwd");
    dev(kiln_group_rms_norm_gate_bwd(h.rt, &gate, &x, &gate, &rw, &x, &gate, &rdw, &cgo, nullptr, nullptr), "gate bwd");
  }
  {
    constexpr int64_t M = 37, V = 1024, Vs = 512;
    const kiln_tensor z = desc(KILN_BF16, {M, V}), l = desc(KILN_I64, {M}), f = desc(KILN_F32, {M}),
                      one = desc(KILN_F32, {1});
    kiln_tensor dz = z;
    dz.data = reinterpret_cast<void*>(0x100000000ll);
    kiln_cross_entropy_options co{-100, 0.1f, 1e-3f, 0, 0, nullptr};
    dev(kiln_softmax_cross_entropy_fwd(h.rt, &z, &l, &f, &f, &f, &co, nullptr), "ce fwd");
    dev(kiln_softmax_cross_entropy_bwd(h.rt, &z, &l, &f, &f, &f, &dz, &co, nullptr), "ce bwd");
    const kiln_fused_cross_entropy_options cfo{1, 0.5f, &one, &f, &f};
    dev(kiln_softmax_cross_entropy_fused(h.rt, &z, &l, &f, &dz, &cfo, &co, nullptr), "ce fused");
    co.vocab_total = V;
    kiln_tensor shard = desc(KILN_BF16, {M, Vs});
    shard.strides[0] = V;
    co.vocab_start = Vs;
    const kiln_tensor part = desc(KILN_F32, {4, M}), parts = desc(KILN_F32, {2, 4, M});
    dev(kiln_softmax_cross_entropy_partial_fwd(h.rt, &shard, &l, &part, &co, nullptr), "ce partial");
    co.vocab_start = 0;
    dev(kiln_softmax_cross_entropy_merge(h.rt, &parts, &l, &f, &f, &f, &co, nullptr), "ce merge");
  }
  {
    const kiln_tensor xs[3] = {desc(KILN_F32, {1000}), desc(KILN_BF16, {33, 7}), desc(KILN_F16, {4101})};
    const kiln_tensor out = desc(KILN_F32, {1}), out64 = desc(KILN_I64, {1});
    for (int ord : {0, 1, 2}) {
      const kiln_batch_norm_options bo{ord, 1, 0};
      dev(kiln_batch_sum_with_ord(h.rt, xs, 3, &out, &bo, nullptr), "sum");
    }
    dev(kiln_batch_count_zero(h.rt, xs, 3, &out64, nullptr), "zeros");
    constexpr int64_t T = 40, E = 8, k = 2, P = 16, Hd = 256;
    const int64_t num_out = kiln_moe_max_out_rows(T, E, k, P), nb = kiln_moe_block_quant_scale_blocks(num_out, E);
    const kiln_tensor rm = desc(KILN_U8, {T, E}), rid = desc(KILN_I32, {T, E}), idx = desc(KILN_I32, {num_out}),
                      tpe = desc(KILN_I32, {E}), off = desc(KILN_I32, {E + 1});
    const kiln_moe_row_id_map mk{&rid, &idx, &tpe, nullptr, &off};
    dev(kiln_moe_make_row_id_map(h.rt, &rm, &mk, P, k, nullptr, nullptr), "make map");
    const kiln_tensor x = desc(KILN_BF16, {T, Hd}), probs = desc(KILN_F32, {T, E}), q = desc(KILN_E4M3, {num_out, Hd}),
                      qs = desc(KILN_F32, {num_out * Hd / 128}), qT = desc(KILN_E4M3, {num_out * Hd}),
                      qTs = desc(KILN_F32, {nb * Hd}), po = desc(KILN_F32, {num_out});
    const kiln_moe_row_id_map map{&rid, &idx, nullptr, nullptr, &off};
    const kiln_moe_block_quant_permute_outputs o{&q, &qs, &qT, &qTs, &po};
    const kiln_moe_permute_options cpo{k, P, 0, 1, 0};
    dev(kiln_moe_permute_block_quant(h.rt, &x, &probs, &map, &o, &cpo, nullptr), "bq permute");
  }
  {
    constexpr int64_t M = 100, H = 256, I = 384;
    const kiln_tensor x = desc(KILN_BF16, {M, H}), w = desc(KILN_BF16, {I, H}), out = desc(KILN_BF16, {M, I});
    dev(kiln_fused_gated_mlp(h.rt, &x, &w, &w, &out, 0, nullptr), "gated mlp silu");
    dev(kiln_fused_gated_mlp(h.rt, &x, &w, &w, &out, 1, nullptr), "gated mlp gelu");
  }
}
}  // namespace
