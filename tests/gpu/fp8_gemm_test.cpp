// tests/gpu/fp8_gemm_test.cpp — fp8_gemm on the GPU against tests/reference/fp8_gemm.* (exact integer sums, the
// kernel's fp32 multiply): bit for bit after the output's rounding, for uint8 codes at M ∈ {1, 7, 127, 128, 129, 1000},
// (N, K) with partial column tiles and K not a multiple of the 128-byte chunk, every output dtype, a row stride on a
// and c, every search-space point; floating-point inputs against quantize_fp8's codes and scale; reruns identical.
#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "kiln/ops/fp8.hpp"
#include "kiln/ops/fp8_gemm.hpp"
#include "kiln/ops/fp8_linear.hpp"
#include "reference/fp8_codes.hpp"
#include "reference/fp8_gemm.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

struct Case {
  int64_t M, N, K;
  DType out;
  int64_t a_ld = 0, c_ld = 0;  // row strides (0: dense)
};

std::string name(const Case& c) {
  return "M" + std::to_string(c.M) + "_N" + std::to_string(c.N) + "_K" + std::to_string(c.K) + "_" +
         std::string(dtype_name(c.out)) + (c.a_ld ? "_ald" + std::to_string(c.a_ld) : "") +
         (c.c_ld ? "_cld" + std::to_string(c.c_ld) : "");
}

std::vector<uint8_t> codes(int64_t n, uint64_t seed) {
  std::vector<uint8_t> v(static_cast<size_t>(n));
  uint64_t s = seed;
  for (auto& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<uint8_t>(1 + (s >> 33) % 255);  // quantize_fp8's range [1, 255]
  }
  return v;
}

class Fp8GemmGpu : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    if (rt().impl().device().arch.sm != 90) GTEST_SKIP() << "not an sm_90 device (fp8_gemm needs wgmma)";
  }

  // c from codes (qa [M, K] dense host values, stored with a's row stride), bytes of c's [M, N] part; `forced`: a
  // config through the tuner's hook.
  static std::vector<float> run(const Case& c, const std::vector<uint8_t>& qa, const std::vector<uint8_t>& qb, float sa,
                                float sb, const detail::Specialization* forced = nullptr, bool* guards = nullptr) {
    Runtime& r = rt();
    const int64_t ald = c.a_ld ? c.a_ld : c.K, cld = c.c_ld ? c.c_ld : c.N;
    std::vector<uint8_t> ap(static_cast<size_t>(c.M * ald), 77);
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t k = 0; k < c.K; ++k) ap[m * ald + k] = qa[m * c.K + k];
    const size_t es = dtype_size(c.out);
    DeviceBuffer ab(r, ap.size()), bb(r, qb.size()), sab(r, 16), sbb(r, 16), cb(r, c.M * cld * es);
    cb.poison();
    ab.upload(ap);
    bb.upload(qb);
    sab.upload(std::vector<float>{sa});
    sbb.upload(std::vector<float>{sb});
    const TensorRef as = sab.ref(DType::f32, {1}), bs = sbb.ref(DType::f32, {1});
    {
      std::optional<detail::ForceConfigScope> scope;
      if (forced) scope.emplace(*forced);
      fp8_gemm(r, TensorRef::strided_2d(ab.data(), DType::u8, c.M, c.K, ald), bb.ref(DType::u8, {c.K, c.N}), &as,
               &bs, TensorRef::strided_2d(cb.data(), c.out, c.M, c.N, cld), nullptr);
    }
    synchronize();
    const std::vector<uint8_t> raw = cb.download<uint8_t>(c.M * cld * es);
    std::vector<uint8_t> dense(static_cast<size_t>(c.M * c.N) * es);
    bool pad_ok = true;
    for (int64_t m = 0; m < c.M; ++m) {
      std::memcpy(dense.data() + m * c.N * es, raw.data() + m * cld * es, c.N * es);
      for (size_t b = (m * cld + c.N) * es; b < static_cast<size_t>((m + 1) * cld) * es; ++b)
        pad_ok &= raw[b] == DeviceBuffer::kPoison;
    }
    if (guards) *guards = pad_ok && cb.guards_intact();  // a and b are only read (uploaded, not filled)
    return decode(c.out, dense);
  }

  static ::testing::AssertionResult bit_equal(const std::vector<float>& got, const std::vector<float>& want, DType t,
                                              int64_t N) {
    for (size_t i = 0; i < want.size(); ++i) {
      const float w = round_to(t, want[i]);
      if (std::bit_cast<uint32_t>(got[i]) != std::bit_cast<uint32_t>(w))
        return ::testing::AssertionFailure() << "c[" << i / N << "][" << i % N << "] = " << show(got[i])
                                             << ", reference " << show(w);
    }
    return ::testing::AssertionSuccess();
  }
};

class Fp8GemmGrid : public Fp8GemmGpu, public ::testing::WithParamInterface<Case> {};

TEST_P(Fp8GemmGrid, MatchesTheReferenceBitForBit) {
  const Case c = GetParam();
  const auto qa = codes(c.M * c.K, mix_seed({1, static_cast<uint64_t>(c.M), static_cast<uint64_t>(c.K)}));
  const auto qb = codes(c.K * c.N, mix_seed({2, static_cast<uint64_t>(c.N), static_cast<uint64_t>(c.K)}));
  const float sa = 12.75f, sb = 3.0e-2f;
  bool guards = false;
  const std::vector<float> got = run(c, qa, qb, sa, sb, nullptr, &guards);
  EXPECT_TRUE(bit_equal(got, ref::fp8_gemm(qa, qb, c.M, c.N, c.K, sa, sb), c.out, c.N));
  EXPECT_TRUE(guards) << "wrote outside c's [M, N] part";
  EXPECT_EQ(run(c, qa, qb, sa, sb), got) << "a rerun differs";
}

std::vector<Case> grid() {
  std::vector<Case> v;
  for (int64_t M : {int64_t{1}, int64_t{7}, int64_t{127}, int64_t{128}, int64_t{129}, int64_t{1000}})
    for (DType t : {DType::bf16, DType::f16, DType::f32}) {
      v.push_back({M, 256, 512, t});
      v.push_back({M, 200, 144, t});  // partial column tile, K = one chunk + 16 bytes
    }
  v.push_back({300, 384, 16, DType::bf16});                // one 16-byte column of K
  v.push_back({129, 264, 2048, DType::bf16, 2064, 272});   // row strides on a and c (staged, padding kept)
  v.push_back({129, 260, 256, DType::bf16, 0, 264});       // N % 8 != 0: register stores beside padding
  v.push_back({512, 1024, 7168, DType::bf16});             // a large K (the CPU reference: 3.8 G products)
  return v;
}
INSTANTIATE_TEST_SUITE_P(Grid, Fp8GemmGrid, ::testing::ValuesIn(grid()),
                         [](const auto& info) { return name(info.param); });

// Every search-space point gives the same bits (BN 64, 128 and 256; staged bf16 stores, and fp32 register stores on a
// partial column tile).
TEST_F(Fp8GemmGpu, EverySearchSpacePointAgrees) {
  for (const Case c : {Case{1000, 256, 1024, DType::bf16}, Case{129, 300, 144, DType::f32}, Case{77, 520, 272, DType::f16}}) {
    SCOPED_TRACE(name(c));
    const auto qa = codes(c.M * c.K, 5), qb = codes(c.K * c.N, 6);
    const std::vector<float> want = ref::fp8_gemm(qa, qb, c.M, c.N, c.K, 1.0f, 1.0f);
    detail::Specialization s;
    s.family = detail::find_family("fp8_gemm");
    s.arch = rt().impl().target_arch();
    s.kernel = 0;
    s.params = {c.N, c.K, static_cast<int64_t>(c.out)};
    s.config = {128, 6};
    std::vector<detail::Specialization> space;
    s.family->search_space(s, space);
    ASSERT_EQ(space.size(), 6u);
    for (const auto& p : space) {
      SCOPED_TRACE(p.describe());
      bool guards = false;
      EXPECT_TRUE(bit_equal(run(c, qa, qb, 1.0f, 1.0f, &p, &guards), want, c.out, c.N));
      EXPECT_TRUE(guards);
    }
  }
}

// Floating-point a and b: the same as quantize_fp8's codes and scales through the codes path.
TEST_F(Fp8GemmGpu, FloatInputsAreQuantizedPerTensor) {
  Runtime& r = rt();
  const int64_t M = 333, N = 192, K = 640;
  for (DType t : {DType::bf16, DType::f32}) {
    SCOPED_TRACE(dtype_name(t));
    std::vector<float> a = randn(M * K, 11, 2.0f), b = randn(K * N, 12, 0.05f);
    round_to(t, a);
    round_to(t, b);
    DeviceBuffer ab(r, a.size() * dtype_size(t)), bb(r, b.size() * dtype_size(t)), cb(r, M * N * 2);
    ab.upload(encode(t, a));
    bb.upload(encode(t, b));
    fp8_gemm(r, ab.ref(t, {M, K}), bb.ref(t, {K, N}), nullptr, nullptr, cb.ref(DType::bf16, {M, N}), nullptr);
    synchronize();
    const std::vector<float> got = decode(DType::bf16, cb.download<uint8_t>(M * N * 2));
    const float sa = ref::fp8_scale(a), sb = ref::fp8_scale(b);
    std::vector<uint8_t> qa(a.size()), qb(b.size());
    for (size_t i = 0; i < a.size(); ++i) qa[i] = ref::fp8_encode(a[i], sa);
    for (size_t i = 0; i < b.size(); ++i) qb[i] = ref::fp8_encode(b[i], sb);
    EXPECT_TRUE(bit_equal(got, ref::fp8_gemm(qa, qb, M, N, K, sa, sb), DType::bf16, N));
  }
}

// A prepared weight (from b [K, N] codes, from its transpose [N, K], and from a float [N, K] weight) gives the per-call
// path's bits; a bias (fp32 / bf16 / fp16) is added in fp32 before the one rounding.
TEST_F(Fp8GemmGpu, PreparedWeightsAndBias) {
  Runtime& r = rt();
  for (const Case& c : {Case{1, 200, 144, DType::bf16}, Case{129, 256, 512, DType::f16}, Case{1000, 264, 2048, DType::f32},
                        Case{300, 7, 16, DType::bf16}}) {
    SCOPED_TRACE(name(c));
    const auto qa = codes(c.M * c.K, 21), qb = codes(c.K * c.N, 22);
    std::vector<uint8_t> qt(qb.size());
    for (int64_t k = 0; k < c.K; ++k)
      for (int64_t n = 0; n < c.N; ++n) qt[n * c.K + k] = qb[k * c.N + n];
    const float sa = 0.75f, sb = 41.0f;
    const std::vector<float> want = ref::fp8_gemm(qa, qb, c.M, c.N, c.K, sa, sb);
    const size_t es = dtype_size(c.out);
    DeviceBuffer ab(r, qa.size()), bb(r, qb.size()), tb(r, qt.size()), sab(r, 16), sbb(r, 16), cb(r, c.M * c.N * es),
        wb(r, fp8_gemm_weight_bytes(c.N, c.K)), biasb(r, c.N * 4);
    ab.upload(qa);
    bb.upload(qb);
    tb.upload(qt);
    sab.upload(std::vector<float>{sa});
    sbb.upload(std::vector<float>{sb});
    const TensorRef as = sab.ref(DType::f32, {1}), bs = sbb.ref(DType::f32, {1});
    const Fp8GemmWeight w{wb.data(), c.N, c.K};
    auto gemm = [&](const TensorRef* bias) {
      cb.poison();
      fp8_gemm(r, ab.ref(DType::u8, {c.M, c.K}), &as, w, bias, cb.ref(c.out, {c.M, c.N}), nullptr);
      synchronize();
      EXPECT_TRUE(cb.guards_intact());
      return decode(c.out, cb.download<uint8_t>(c.M * c.N * es));
    };
    fp8_gemm_prepare_weight(r, bb.ref(DType::u8, {c.K, c.N}), &bs, Fp8WeightLayout::kn, w, nullptr);
    EXPECT_TRUE(bit_equal(gemm(nullptr), want, c.out, c.N)) << "prepared from b [K, N]";
    wb.poison();
    fp8_gemm_prepare_weight(r, tb.ref(DType::u8, {c.N, c.K}), &bs, Fp8WeightLayout::nk, w, nullptr);
    EXPECT_TRUE(bit_equal(gemm(nullptr), want, c.out, c.N)) << "prepared from bᵀ [N, K]";
    for (DType bt : {DType::f32, DType::bf16, DType::f16}) {
      SCOPED_TRACE(dtype_name(bt));
      std::vector<float> bias = randn(c.N, 23, 5.0f);
      round_to(bt, bias);
      biasb.upload(encode(bt, bias));
      const TensorRef bref = biasb.ref(bt, {c.N});
      std::vector<float> wb_ = want;
      for (int64_t i = 0; i < c.M * c.N; ++i) wb_[i] = want[i] + bias[i % c.N];  // one fp32 addition
      EXPECT_TRUE(bit_equal(gemm(&bref), wb_, c.out, c.N));
    }
  }
  // A float weight [N, K] (a Linear's), quantized per tensor by the prep.
  const int64_t M = 77, N = 96, K = 320;
  std::vector<float> wt = randn(N * K, 24, 0.02f), a = randn(M * K, 25, 1.0f);
  round_to(DType::bf16, wt);
  const auto qa = codes(M * K, 26);
  const float sa = 3.0f, sw = ref::fp8_scale(wt);
  std::vector<uint8_t> qb(K * N);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) qb[k * N + n] = ref::fp8_encode(wt[n * K + k], sw);
  DeviceBuffer ab(r, qa.size()), wtb(r, wt.size() * 2), sab(r, 16), cb(r, M * N * 2), wb(r, fp8_gemm_weight_bytes(N, K));
  ab.upload(qa);
  wtb.upload(encode(DType::bf16, wt));
  sab.upload(std::vector<float>{sa});
  const TensorRef as = sab.ref(DType::f32, {1});
  const Fp8GemmWeight w{wb.data(), N, K};
  fp8_gemm_prepare_weight(r, wtb.ref(DType::bf16, {N, K}), nullptr, Fp8WeightLayout::nk, w, nullptr);
  fp8_gemm(r, ab.ref(DType::u8, {M, K}), &as, w, nullptr, cb.ref(DType::bf16, {M, N}), nullptr);
  synchronize();
  EXPECT_TRUE(bit_equal(decode(DType::bf16, cb.download<uint8_t>(M * N * 2)), ref::fp8_gemm(qa, qb, M, N, K, sa, sw),
                        DType::bf16, N))
      << "float [N, K] weight";
}

// FP8Linear: y = x · Wᵀ + bias bit for bit against the reference on quantize_fp8's codes; the weight is prepared once
// per (address, dtype, version); a new version (or invalidate()) picks up changed values, the same version keeps the
// prepared ones (the documented contract).
TEST_F(Fp8GemmGpu, Fp8LinearForward) {
  Runtime& r = rt();
  const int64_t M = 150, in = 384, out = 136;
  FP8Linear lin(r, in, out);
  std::vector<float> x = randn(M * in, 31, 1.5f), w1 = randn(out * in, 32, 0.02f), w2 = randn(out * in, 33, 0.03f),
                     bias = randn(out, 34, 0.5f);
  round_to(DType::bf16, x);
  DeviceBuffer xb(r, x.size() * 2), wb(r, w1.size() * 4), bb(r, out * 4), yb(r, M * out * 2);
  xb.upload(encode(DType::bf16, x));
  wb.upload(encode(DType::f32, w1));
  bb.upload(encode(DType::f32, bias));
  const TensorRef xr = xb.ref(DType::bf16, {M, in}), wr = wb.ref(DType::f32, {out, in}), br = bb.ref(DType::f32, {out}),
                  yr = yb.ref(DType::bf16, {M, out});
  auto expect = [&](const std::vector<float>& w) {
    const float sx = ref::fp8_scale(x), sw = ref::fp8_scale(w);
    std::vector<uint8_t> qx(x.size()), qb(in * out);
    for (size_t i = 0; i < x.size(); ++i) qx[i] = ref::fp8_encode(x[i], sx);
    for (int64_t n = 0; n < out; ++n)
      for (int64_t k = 0; k < in; ++k) qb[k * out + n] = ref::fp8_encode(w[n * in + k], sw);
    std::vector<float> c = ref::fp8_gemm(qx, qb, M, out, in, sx, sw);
    for (int64_t i = 0; i < M * out; ++i) c[i] = c[i] + bias[i % out];
    return c;
  };
  auto forward = [&](uint64_t version) {
    yb.poison();
    lin.forward(xr, wr, version, &br, yr, nullptr);
    synchronize();
    return decode(DType::bf16, yb.download<uint8_t>(M * out * 2));
  };
  EXPECT_TRUE(bit_equal(forward(1), expect(w1), DType::bf16, out));
  EXPECT_TRUE(bit_equal(forward(1), expect(w1), DType::bf16, out));
  EXPECT_EQ(lin.prepare_count(), 1);
  wb.upload(encode(DType::f32, w2));  // new values at the same address
  EXPECT_TRUE(bit_equal(forward(1), expect(w1), DType::bf16, out)) << "same version: the prepared weight is kept";
  EXPECT_TRUE(bit_equal(forward(2), expect(w2), DType::bf16, out)) << "a new version prepares again";
  EXPECT_EQ(lin.prepare_count(), 2);
  wb.upload(encode(DType::f32, w1));
  lin.invalidate();
  EXPECT_FALSE(lin.has_prepared_weight());
  EXPECT_TRUE(bit_equal(forward(2), expect(w1), DType::bf16, out)) << "after invalidate()";
  EXPECT_EQ(lin.prepare_count(), 3);
  // [B, S, in] in, [B, S, out] out: the same bits (x.view(−1, in)).
  {
    const auto flat = forward(2);
    yb.poison();
    lin.forward(xb.ref(DType::bf16, {2, M / 2, in}), wr, 2, &br, yb.ref(DType::bf16, {2, M / 2, out}), nullptr);
    synchronize();
    EXPECT_EQ(decode(DType::bf16, yb.download<uint8_t>(M * out * 2)), flat) << "3-D x";
  }
  lin.forward(xb.ref(DType::bf16, {0, in}), wr, 2, &br, yb.ref(DType::bf16, {0, out}), nullptr);  // M = 0: nothing
  synchronize();
}

}  // namespace
}  // namespace kiln::test
