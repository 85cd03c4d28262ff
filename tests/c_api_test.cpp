// The C ABI: status codes per error type, the thread's last-error text, and a runtime handle (no GPU needed).
#include <gtest/gtest.h>

#include <string>

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

TEST(CApi, ValidCallWithoutADriverIsADeviceError) {
  if (kiln::detail::driver_available()) GTEST_SKIP() << "a driver is present";
  Handle h;
  EXPECT_EQ(kiln_rms_norm_fwd(h.rt, kFake, kFake, 8, 128, KILN_BF16, kFake, KILN_BF16, nullptr, 1e-6f, nullptr),
            KILN_ERROR_DEVICE);
  EXPECT_NE(std::string(kiln_last_error()).find("driver"), std::string::npos) << kiln_last_error();
}

}  // namespace
