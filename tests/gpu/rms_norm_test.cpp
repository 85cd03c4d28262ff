// tests/gpu/rms_norm_test.cpp — rms_norm_fwd / rms_norm_bwd on the GPU against the CPU reference.
//
// Forward: rms_inv within a few ulps of a double-accumulating reference; y bit-exact against RNE((x·r)·w) computed
// from the GPU's own rms_inv (deterministic given r). Backward: the kernel reduces in its own fixed order, so dx and
// dweight are compared by relative L2 error with a double reference (spec linghe-kernels.md §13), and two runs must be
// bitwise identical. Outputs and guard zones are poisoned before each run.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "kiln/ops/rms_norm.hpp"
#include "reference/rms_norm.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr float kEps = 1e-6f;

std::string dtype_str(DType d) { return std::string(dtype_name(d)); }

// Relative L2 tolerances. dx: rounding to bf16 alone costs ~1.7e-3 (fp16 ~2e-4), so 1e-2 (fp16: 2e-3) leaves room
// for the fp32 arithmetic but not for a wrong term; fp32 outputs are held to 1e-5. dweight: an fp32 sum over up to
// 8192 rows in fixed order stays well inside 1e-4 (an fp32 emulation of the kernel gives < 1e-6); a 16-bit dweight
// adds its own rounding (1e-2). The dx bounds hold per row as well.
double dx_tolerance(DType d) { return d == DType::f32 ? 1e-5 : d == DType::f16 ? 2e-3 : 1e-2; }
double dweight_tolerance(DType d) { return d == DType::f32 ? 1e-4 : 1e-2; }

DeviceBuffer upload(Runtime& rt, DType dtype, const std::vector<float>& v) {
  DeviceBuffer b(rt, v.size() * dtype_size(dtype));
  b.upload(encode(dtype, v));
  return b;
}

std::vector<float> download(const DeviceBuffer& b, DType dtype, int64_t n) {
  return decode(dtype, b.download<uint8_t>(static_cast<size_t>(n) * dtype_size(dtype)));
}

class RmsNormTest : public GpuTest {
 protected:
  struct Fwd {
    std::vector<float> y, rms_inv;
    bool guards_ok = false;
    uint64_t launches = 0;
  };

  static Fwd run_fwd(const std::vector<float>& x, const std::vector<float>& w, DType dtype, DType w_dtype, int64_t M,
                     int64_t N, float eps, bool with_rms_inv) {
    Runtime& r = rt();
    DeviceBuffer x_buf = upload(r, dtype, x), w_buf = upload(r, w_dtype, w);
    DeviceBuffer y_buf(r, M * N * dtype_size(dtype)), r_buf(r, with_rms_inv ? M * 4 : 0);
    y_buf.poison();
    r_buf.poison();
    const uint64_t before = r.stats().launches;
    rms_norm_fwd(r, x_buf.ref(dtype, {M, N}), w_buf.ref(w_dtype, {N}), y_buf.ref(dtype, {M, N}),
                 with_rms_inv ? r_buf.ref(DType::f32, {M}) : TensorRef{}, eps, nullptr);
    synchronize();
    Fwd f;
    f.launches = r.stats().launches - before;
    f.y = download(y_buf, dtype, M * N);
    if (with_rms_inv) f.rms_inv = r_buf.download<float>(M);
    f.guards_ok = y_buf.guards_intact() && r_buf.guards_intact();
    return f;
  }

  struct Bwd {
    std::vector<float> dx, dweight;
    bool guards_ok = false;
  };

  // workspace_elems < 0: pass no workspace (kiln allocates one); otherwise a poisoned fp32 buffer of that many.
  static Bwd run_bwd(const std::vector<float>& dy, const std::vector<float>& x, const std::vector<float>& w,
                     DType dtype, DType w_dtype, DType dw_dtype, int64_t M, int64_t N, float eps,
                     int64_t workspace_elems = -1) {
    Runtime& r = rt();
    DeviceBuffer dy_buf = upload(r, dtype, dy), x_buf = upload(r, dtype, x), w_buf = upload(r, w_dtype, w);
    DeviceBuffer dx_buf(r, M * N * dtype_size(dtype)), dw_buf(r, N * dtype_size(dw_dtype));
    DeviceBuffer ws_buf(r, workspace_elems > 0 ? workspace_elems * 4 : 0);
    for (DeviceBuffer* b : {&dx_buf, &dw_buf, &ws_buf}) b->poison();
    const TensorRef ws = workspace_elems >= 0 ? ws_buf.ref(DType::f32, {workspace_elems}) : TensorRef{};
    rms_norm_bwd(r, dy_buf.ref(dtype, {M, N}), x_buf.ref(dtype, {M, N}), w_buf.ref(w_dtype, {N}),
                 dx_buf.ref(dtype, {M, N}), dw_buf.ref(dw_dtype, {N}), eps, ws, nullptr);
    synchronize();
    Bwd b;
    b.dx = download(dx_buf, dtype, M * N);
    b.dweight = download(dw_buf, dw_dtype, N);
    b.guards_ok = dx_buf.guards_intact() && dw_buf.guards_intact() && ws_buf.guards_intact();
    return b;
  }
};

// ---- forward ---------------------------------------------------------------------------------------------------

struct FwdCase {
  DType dtype, w_dtype;
  int64_t N, M;
};

void PrintTo(const FwdCase& c, std::ostream* os) {
  *os << dtype_name(c.dtype) << " weight " << dtype_name(c.w_dtype) << " N=" << c.N << " M=" << c.M;
}

std::vector<FwdCase> fwd_cases() {
  std::vector<FwdCase> cases;
  for (int64_t N : {128, 1000, 2048, 7168}) {
    for (int64_t M : {0, 1, 7, 1000, 8192}) cases.push_back({DType::bf16, DType::bf16, N, M});
  }
  cases.push_back({DType::f32, DType::f32, 2048, 1000});
  cases.push_back({DType::f16, DType::f16, 2048, 1000});
  cases.push_back({DType::bf16, DType::f32, 4096, 1000});  // fp32 weight with bf16 activations
  return cases;
}

class RmsNormFwd : public RmsNormTest, public ::testing::WithParamInterface<FwdCase> {};

TEST_P(RmsNormFwd, MatchesReference) {
  const FwdCase c = GetParam();
  const uint64_t seed = mix_seed({0x70, static_cast<uint64_t>(c.dtype), static_cast<uint64_t>(c.w_dtype),
                                  static_cast<uint64_t>(c.N), static_cast<uint64_t>(c.M)});
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t M = c.M, N = c.N;
  const std::vector<float> x = random_values(M * N, mix_seed({seed, 1}), c.dtype);
  const std::vector<float> w = random_values(N, mix_seed({seed, 2}), c.w_dtype);
  const Fwd f = run_fwd(x, w, c.dtype, c.w_dtype, M, N, kEps, true);
  EXPECT_TRUE(f.guards_ok) << "written outside y or rms_inv";
  if (M == 0) {
    EXPECT_EQ(f.launches, 0u) << "M = 0 must launch nothing";
  }

  const std::vector<float> r_ref = ref::rms_inv(x, M, N, kEps);
  const std::vector<ref::RmsInvExpect> expect = ref::rms_inv_expectations(x, M, N);
  EXPECT_TRUE(all_equal(
      "rms_inv", M, [&](int64_t m) { return ref::rms_inv_agrees(expect[m], f.rms_inv[m], r_ref[m]); },
      [&](int64_t m) {
        return "rms_inv[" + std::to_string(m) + "]: got " + show(f.rms_inv[m]) + ", reference " + show(r_ref[m]);
      }));

  // Given the GPU's r, y is deterministic: RNE to the output dtype of (x·r)·w.
  std::vector<float> want = ref::rms_norm_apply(x, w, f.rms_inv, M, N);
  round_to(c.dtype, want);
  EXPECT_TRUE(all_equal(
      "y", M * N, [&](int64_t i) { return std::bit_cast<uint32_t>(f.y[i]) == std::bit_cast<uint32_t>(want[i]); },
      [&](int64_t i) {
        return "y[m=" + std::to_string(i / N) + ", n=" + std::to_string(i % N) + "]: got " + show(f.y[i]) +
               ", want " + show(want[i]);
      }));
}

INSTANTIATE_TEST_SUITE_P(Grid, RmsNormFwd, ::testing::ValuesIn(fwd_cases()),
                         [](const ::testing::TestParamInfo<FwdCase>& i) {
                           return dtype_str(i.param.dtype) + "_w" + dtype_str(i.param.w_dtype) + "_N" +
                                  std::to_string(i.param.N) + "_M" + std::to_string(i.param.M);
                         });

// rms_inv is optional; y does not depend on whether it is stored.
TEST_F(RmsNormTest, FwdRmsInvIsOptional) {
  for (const auto& [N, M] : {std::pair<int64_t, int64_t>{2048, 1000}, {7168, 7}}) {
    SCOPED_TRACE("N " + std::to_string(N) + " M " + std::to_string(M));
    const std::vector<float> x = random_values(M * N, mix_seed({0x71, static_cast<uint64_t>(N)}), DType::bf16);
    const std::vector<float> w = random_values(N, mix_seed({0x72, static_cast<uint64_t>(N)}), DType::bf16);
    const Fwd with = run_fwd(x, w, DType::bf16, DType::bf16, M, N, kEps, true);
    const Fwd without = run_fwd(x, w, DType::bf16, DType::bf16, M, N, kEps, false);
    EXPECT_TRUE(without.guards_ok);
    EXPECT_TRUE(bitwise_equal("y", without.y, with.y));
  }
}

// ---- backward --------------------------------------------------------------------------------------------------

struct BwdCase {
  DType dtype, w_dtype, dw_dtype;
  int64_t N, M;
};

void PrintTo(const BwdCase& c, std::ostream* os) {
  *os << dtype_name(c.dtype) << " weight " << dtype_name(c.w_dtype) << " dweight " << dtype_name(c.dw_dtype)
      << " N=" << c.N << " M=" << c.M;
}

std::vector<BwdCase> bwd_cases() {
  std::vector<BwdCase> cases;
  for (int64_t N : {128, 1000, 2048, 7168}) {
    for (int64_t M : {0, 1, 7, 1000, 8192}) cases.push_back({DType::bf16, DType::bf16, DType::f32, N, M});
  }
  cases.push_back({DType::f32, DType::f32, DType::f32, 2048, 1000});
  cases.push_back({DType::f16, DType::f16, DType::f32, 2048, 1000});
  cases.push_back({DType::bf16, DType::bf16, DType::bf16, 2048, 1000});  // dweight in the weight's dtype
  cases.push_back({DType::bf16, DType::f32, DType::f32, 4096, 1000});    // fp32 weight
  return cases;
}

class RmsNormBwd : public RmsNormTest, public ::testing::WithParamInterface<BwdCase> {};

TEST_P(RmsNormBwd, MatchesReference) {
  const BwdCase c = GetParam();
  const uint64_t seed = mix_seed({0x73, static_cast<uint64_t>(c.dtype), static_cast<uint64_t>(c.w_dtype),
                                  static_cast<uint64_t>(c.dw_dtype), static_cast<uint64_t>(c.N),
                                  static_cast<uint64_t>(c.M)});
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t M = c.M, N = c.N;
  const std::vector<float> x = random_values(M * N, mix_seed({seed, 1}), c.dtype);
  const std::vector<float> dy = random_values(M * N, mix_seed({seed, 2}), c.dtype);
  const std::vector<float> w = random_values(N, mix_seed({seed, 3}), c.w_dtype);
  const Bwd b = run_bwd(dy, x, w, c.dtype, c.w_dtype, c.dw_dtype, M, N, kEps);
  EXPECT_TRUE(b.guards_ok) << "written outside dx, dweight or the workspace";

  const ref::RmsNormGrads g = ref::rms_norm_bwd(dy, x, w, M, N, kEps);
  const double dx_tol = dx_tolerance(c.dtype), dw_tol = dweight_tolerance(c.dw_dtype);
  const double dx_err = relative_l2(b.dx, g.dx);
  EXPECT_LE(dx_err, dx_tol) << "dx relative L2 error";
  // Per row too: one wrong or unwritten row among 8192 barely moves the global error.
  EXPECT_TRUE(all_equal(
      "dx rows", M,
      [&](int64_t m) {
        const size_t off = static_cast<size_t>(m * N);
        return relative_l2(std::span(b.dx).subspan(off, N), std::span(g.dx).subspan(off, N)) <= dx_tol;
      },
      [&](int64_t m) {
        const size_t off = static_cast<size_t>(m * N);
        return "row " + std::to_string(m) + ": relative L2 " +
               std::to_string(relative_l2(std::span(b.dx).subspan(off, N), std::span(g.dx).subspan(off, N)));
      }));
  // M = 0: dweight is an empty sum and must come back as zeros (the reference is all zero, so any other value,
  // the poison included, gives an infinite relative error).
  const double dw_err = relative_l2(b.dweight, g.dweight);
  EXPECT_LE(dw_err, dw_tol) << "dweight relative L2 error";
  RecordProperty("dx_rel_l2", std::to_string(dx_err));
  RecordProperty("dweight_rel_l2", std::to_string(dw_err));
}

INSTANTIATE_TEST_SUITE_P(Grid, RmsNormBwd, ::testing::ValuesIn(bwd_cases()),
                         [](const ::testing::TestParamInfo<BwdCase>& i) {
                           return dtype_str(i.param.dtype) + "_w" + dtype_str(i.param.w_dtype) + "_dw" +
                                  dtype_str(i.param.dw_dtype) + "_N" + std::to_string(i.param.N) + "_M" +
                                  std::to_string(i.param.M);
                         });

// The two-stage reduction has a fixed order: repeated runs are bitwise identical.
TEST_F(RmsNormTest, BwdIsDeterministic) {
  const int64_t M = 8192, N = 2048;
  const std::vector<float> x = random_values(M * N, mix_seed({0x74, 1}), DType::bf16);
  const std::vector<float> dy = random_values(M * N, mix_seed({0x74, 2}), DType::bf16);
  const std::vector<float> w = random_values(N, mix_seed({0x74, 3}), DType::bf16);
  const Bwd a = run_bwd(dy, x, w, DType::bf16, DType::bf16, DType::f32, M, N, kEps);
  const Bwd b = run_bwd(dy, x, w, DType::bf16, DType::bf16, DType::f32, M, N, kEps);
  EXPECT_TRUE(bitwise_equal("dx", a.dx, b.dx));
  EXPECT_TRUE(bitwise_equal("dweight", a.dweight, b.dweight));
}

// A caller-provided workspace (poisoned: kiln must not rely on its contents) gives the same result as kiln's own.
TEST_F(RmsNormTest, BwdExplicitWorkspace) {
  for (const auto& [N, M] : {std::pair<int64_t, int64_t>{2048, 1000}, {7168, 8192}, {128, 7}}) {
    SCOPED_TRACE("N " + std::to_string(N) + " M " + std::to_string(M));
    const std::vector<float> x = random_values(M * N, mix_seed({0x75, static_cast<uint64_t>(N)}), DType::bf16);
    const std::vector<float> dy = random_values(M * N, mix_seed({0x76, static_cast<uint64_t>(N)}), DType::bf16);
    const std::vector<float> w = random_values(N, mix_seed({0x77, static_cast<uint64_t>(N)}), DType::bf16);
    const int64_t elems = rms_norm_bwd_workspace_elems(rt(), M, N);
    ASSERT_GE(elems, 0);
    const Bwd own = run_bwd(dy, x, w, DType::bf16, DType::bf16, DType::f32, M, N, kEps);
    const Bwd given = run_bwd(dy, x, w, DType::bf16, DType::bf16, DType::f32, M, N, kEps, elems);
    EXPECT_TRUE(given.guards_ok) << "written outside dx, dweight or the " << elems << "-element workspace";
    EXPECT_TRUE(bitwise_equal("dx", given.dx, own.dx));
    EXPECT_TRUE(bitwise_equal("dweight", given.dweight, own.dweight));
  }
}

// Every point of the backward's search space (what the tuner may pick: pipelined kernels with 1–16 warps per row,
// ring depths, the tile kernel) against the reference, forced through the tuner's hook, at the lengths where the
// spaces differ: N = 2048 (one warp per row fits), 7168 (rows split over warps), 1000 (ragged lanes), with M not a
// multiple of the CTA count. Each config must also be deterministic and write nothing outside its outputs.
TEST_F(RmsNormTest, BwdEverySearchSpacePointMatchesReference) {
  const detail::FamilyDef* f = detail::find_family("rms_norm");
  ASSERT_NE(f, nullptr);
  for (const auto& [N, M] : {std::pair<int64_t, int64_t>{2048, 1037}, {7168, 611}, {1000, 333}}) {
    detail::Specialization base;
    base.family = f;
    base.arch = rt().impl().target_arch();
    base.kernel = 1;  // bwd
    base.params = {N, static_cast<int64_t>(DType::bf16), static_cast<int64_t>(DType::bf16), 0};
    std::vector<detail::Specialization> space;
    f->search_space(base, space);
    ASSERT_GT(space.size(), 1u);
    const std::vector<float> x = random_values(M * N, mix_seed({0x78, static_cast<uint64_t>(N)}), DType::bf16);
    const std::vector<float> dy = random_values(M * N, mix_seed({0x79, static_cast<uint64_t>(N)}), DType::bf16);
    const std::vector<float> w = random_values(N, mix_seed({0x7a, static_cast<uint64_t>(N)}), DType::bf16);
    const ref::RmsNormGrads g = ref::rms_norm_bwd(dy, x, w, M, N, kEps);
    for (const detail::Specialization& c : space) {
      SCOPED_TRACE("N " + std::to_string(N) + " M " + std::to_string(M) + " config " + c.describe());
      detail::ForceConfigScope force(c);
      const Bwd a = run_bwd(dy, x, w, DType::bf16, DType::bf16, DType::f32, M, N, kEps);
      const Bwd b = run_bwd(dy, x, w, DType::bf16, DType::bf16, DType::f32, M, N, kEps);
      ASSERT_GT(force.applied(), 0u) << "the op did not run the forced config";
      EXPECT_TRUE(a.guards_ok) << "written outside dx, dweight or the workspace";
      EXPECT_LE(relative_l2(a.dx, g.dx), dx_tolerance(DType::bf16)) << "dx relative L2 error";
      EXPECT_LE(relative_l2(a.dweight, g.dweight), dweight_tolerance(DType::f32)) << "dweight relative L2 error";
      EXPECT_TRUE(bitwise_equal("dx", a.dx, b.dx));
      EXPECT_TRUE(bitwise_equal("dweight", a.dweight, b.dweight));
    }
  }
}

// Workspace validation needs the device (its size may depend on the SM count), so it is tested here.
TEST_F(RmsNormTest, BwdWorkspaceErrors) {
  const int64_t M = 1000, N = 2048;
  Runtime& r = rt();
  const int64_t elems = rms_norm_bwd_workspace_elems(r, M, N);
  DeviceBuffer dy(r, M * N * 2), x(r, M * N * 2), w(r, N * 2), dx(r, M * N * 2), dw(r, N * 4),
      ws(r, std::max<int64_t>(elems, 1) * 4);
  auto call = [&](const TensorRef& workspace) {
    rms_norm_bwd(r, dy.ref(DType::bf16, {M, N}), x.ref(DType::bf16, {M, N}), w.ref(DType::bf16, {N}),
                 dx.ref(DType::bf16, {M, N}), dw.ref(DType::f32, {N}), kEps, workspace, nullptr);
  };
  if (elems > 0) {
    EXPECT_THROW_NAMING(call(ws.ref(DType::f32, {elems - 1})), "workspace", ShapeMismatchError, InvalidArgument);
  }
  EXPECT_THROW_NAMING(call(ws.ref(DType::bf16, {std::max<int64_t>(elems, 1)})), "workspace", UnsupportedDtypeError);
}

}  // namespace
}  // namespace kiln::test
