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

}  // namespace
