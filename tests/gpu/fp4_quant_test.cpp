// tests/gpu/fp4_quant_test.cpp — the FP4 MoE's block-scaled quantizers on the GPU against tests/reference/fp4_quant.*:
// codes and scale bytes bit for bit, for NVFP4 / MXFP4 / MXFP8, inputs fp32 / bf16 / fp16, rows 1 … 300, K from one
// block to 7168, per-block magnitudes from 2^-60 to 2^60 (so scales cover the E4M3 / UE8M0 ranges and their
// clamps), zero blocks, −0, NaN and ±inf, several global scales, every search-space point; no write outside q and sf.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "kiln/ops/fp4.hpp"
#include "reference/fp4_quant.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// rows × K values in dtype t: normal values with a per-block magnitude 2^u, u uniform in [-60, 60] (fp32) or within
// the dtype's range, some all-zero blocks, and (special) NaN, ±inf and −0 sprinkled in.
std::vector<float> inputs(int64_t rows, int64_t K, DType t, uint64_t seed, bool special) {
  std::vector<float> x = randn(rows * K, seed, 1.0f);
  const int span = t == DType::f16 ? 12 : 60;
  uint64_t s = seed * 2654435761u + 1;
  for (int64_t b = 0; b < rows * K / 16; ++b) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    const int u = static_cast<int>((s >> 33) % (2 * span + 1)) - span;
    const bool zero = (s >> 20) % 11 == 0;
    for (int i = 0; i < 16; ++i) x[b * 16 + i] = zero ? 0.0f : std::ldexp(x[b * 16 + i], u);
  }
  if (special)
    for (int64_t i = 0; i < rows * K; i += 97) x[i] = (i / 97) % 4 == 0 ? kNaN : (i / 97) % 4 == 1 ? kInf : (i / 97) % 4 == 2 ? -kInf : -0.0f;
  round_to(t, x);
  return x;
}

class Fp4QuantGpu : public GpuTest {
 protected:
  // format 0/1/2; returns {q, sf} from the GPU and checks the guards.
  static ref::BlockQuant run(int format, const std::vector<float>& x, int64_t rows, int64_t K, DType t, float G,
                             int warps = 0) {
    Runtime& r = rt();
    const int64_t B = format == 0 ? 16 : 32, qc = format == 2 ? K : K / 2;
    DeviceBuffer xb(r, std::max<size_t>(x.size() * dtype_size(t), 16)), qb(r, std::max<int64_t>(rows * qc, 16)),
        sb(r, std::max<int64_t>(rows * K / B, 16)), gb(r, 16);
    qb.poison();
    sb.poison();
    if (!x.empty()) xb.upload(encode(t, x));
    gb.upload(std::vector<float>{G});
    const TensorRef xr = xb.ref(t, {rows, K}), qr = qb.ref(format == 2 ? DType::e4m3 : DType::u8, {rows, qc}),
                    sr = sb.ref(DType::u8, {rows, K / B}), gr = gb.ref(DType::f32, {1});
    {
      std::optional<detail::ForceConfigScope> scope;
      detail::Specialization s;
      if (warps > 0) {
        s.family = detail::find_family("fp4_quant");
        s.arch = r.impl().target_arch();
        s.kernel = 0;
        s.params = {static_cast<int64_t>(t), format};
        s.config = {warps};
        scope.emplace(s);
      }
      if (format == 0) quantize_nvfp4(r, xr, gr, qr, sr, nullptr);
      if (format == 1) quantize_mxfp4(r, xr, qr, sr, nullptr);
      if (format == 2) quantize_mxfp8(r, xr, qr, sr, nullptr);
    }
    synchronize();
    EXPECT_TRUE(qb.guards_intact() && sb.guards_intact()) << "wrote outside q / sf";
    return {qb.download<uint8_t>(rows * qc), sb.download<uint8_t>(rows * K / B)};
  }

  static ref::BlockQuant want(int format, const std::vector<float>& x, int64_t K, float G) {
    return format == 0 ? ref::quantize_nvfp4(x, K, G) : format == 1 ? ref::quantize_mxfp4(x, K) : ref::quantize_mxfp8(x, K);
  }

  static ::testing::AssertionResult same(const ref::BlockQuant& got, const ref::BlockQuant& w) {
    for (size_t i = 0; i < w.sf.size(); ++i)
      if (got.sf[i] != w.sf[i])
        return ::testing::AssertionFailure() << "sf[" << i << "] = " << int(got.sf[i]) << ", reference " << int(w.sf[i]);
    for (size_t i = 0; i < w.q.size(); ++i)
      if (got.q[i] != w.q[i])
        return ::testing::AssertionFailure() << "q[" << i << "] = 0x" << std::hex << int(got.q[i]) << ", reference 0x"
                                             << int(w.q[i]);
    return ::testing::AssertionSuccess();
  }
};

TEST_F(Fp4QuantGpu, EveryFormatDtypeAndShapeBitForBit) {
  for (int format : {0, 1, 2})
    for (DType t : {DType::bf16, DType::f16, DType::f32})
      for (const auto& [rows, K] : {std::pair<int64_t, int64_t>{1, 32}, {7, 64}, {300, 2048}, {33, 7168}})
        for (bool special : {false, true}) {
          SCOPED_TRACE("format " + std::to_string(format) + " " + std::string(dtype_name(t)) + " " +
                       std::to_string(rows) + "x" + std::to_string(K) + (special ? " special" : ""));
          const auto x = inputs(rows, K, t, static_cast<uint64_t>(rows * 131 + K + format), special);
          for (float G : {1.0f, 448.0f * 6.0f / 3.0f, 1e-20f, 3e15f}) {
            if (format != 0 && G != 1.0f) continue;
            SCOPED_TRACE(G);
            EXPECT_TRUE(same(run(format, x, rows, K, t, G), want(format, x, K, G)));
          }
        }
}

TEST_F(Fp4QuantGpu, EverySearchSpacePointAgreesAndEmptyIsANoOp) {
  const int64_t rows = 129, K = 1024;
  for (int format : {0, 1, 2}) {
    const auto x = inputs(rows, K, DType::bf16, 77 + format, true);
    const auto w = want(format, x, K, 100.0f);
    for (int warps : {4, 8, 2}) EXPECT_TRUE(same(run(format, x, rows, K, DType::bf16, 100.0f, warps), w)) << warps;
    const ref::BlockQuant e = run(format, {}, 0, K, DType::bf16, 1.0f);  // M = 0: nothing written
    EXPECT_TRUE(e.q.empty() && e.sf.empty());
  }
}

}  // namespace
}  // namespace kiln::test
