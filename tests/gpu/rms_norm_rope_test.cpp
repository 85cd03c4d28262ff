// tests/gpu/rms_norm_rope_test.cpp — rms_norm_rope_fwd / _bwd on the GPU against the double CPU reference.
//
// Tolerances (spec triton-ops.md §2.5). The GPU computes in fp32 and rounds once to the output dtype, so per element
//   |got − ref| ≤ K·ulp_T(|ref|) + A·rms(ref row)
// with K = 2, A = 1e-3 for bf16/fp16 outputs (rounding costs ≤ ½ ulp; the rest covers fp32 error in r and the rotation
// sums, whose terms can cancel), and K = 64, A = 1e-6 for fp32 outputs (fp32 sums over the row: a few ulp, with
// margin). Relative L2 over the tensor: bf16 2.5e-3 (rounding alone gives ≈1.6e-3), fp16 5e-4 (≈2e-4), fp32 2e-6.
// dweight is an fp32 sum over all rows in a fixed order: relative L2 ≤ 1e-4 (an fp32 sum of 8192 terms is good to
// ~1e-6; the rest is margin), and runs are bitwise reproducible. Outputs and guard zones are poisoned first.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "kiln/ops/rms_norm_rope.hpp"
#include "reference/rms_norm_rope.hpp"
#include "test_util.hpp"

namespace kiln::detail {
void rms_norm_rope_bwd_config(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& weight,
                              const TensorRef& cos, const TensorRef& sin, const TensorRef& dx, const TensorRef& dweight,
                              float eps, int num_heads, const TensorRef& workspace, Stream stream, int rows,
                              int warps, int split);
}  // namespace kiln::detail

namespace kiln::test {
namespace {

struct Case {
  int64_t B, S, Hd, D;
  DType dtype, w_dtype = DType::bf16, cs_dtype = DType::bf16;
  int64_t pad = 0;       // extra elements after every row of x/y/dy/dx (a strided slice); multiple of 8
  bool cos4d = false;    // cos/sin given as [1, S, 1, D]
  int64_t cs_pad = 0;    // extra elements after every cos/sin row
  float x_scale = 1.0f;  // stddev of x
};

std::string scale_name(float s) {
  const int e = static_cast<int>(std::lround(std::log10(s)));
  return std::string("_scaleE") + (e < 0 ? "m" : "") + std::to_string(std::abs(e));
}

std::string name(const Case& c) {
  return "B" + std::to_string(c.B) + "_S" + std::to_string(c.S) + "_Hd" + std::to_string(c.Hd) + "_D" +
         std::to_string(c.D) + "_" + std::string(dtype_name(c.dtype)) + "_w" + std::string(dtype_name(c.w_dtype)) +
         "_cs" + std::string(dtype_name(c.cs_dtype)) + (c.pad ? "_pad" + std::to_string(c.pad) : "") +
         (c.cos4d ? "_cos4d" : "") + (c.cs_pad ? "_cspad" : "") +
         (c.x_scale != 1.0f ? scale_name(c.x_scale) : "");
}
void PrintTo(const Case& c, std::ostream* os) { *os << name(c); }

// Host data of a case, dense ([B·S, Hd] rows and [S, D] tables), plus device copies in the case's layouts.
struct Data {
  Case c;
  std::vector<float> x, w, cos, sin, dy;
  int64_t M() const { return c.B * c.S; }
  int64_t rs() const { return c.Hd + c.pad; }     // row stride of x-like tensors
  int64_t cs() const { return c.D + c.cs_pad; }   // row stride of cos/sin

  // Dense [M, Hd] → padded device layout; padding holds 1e30 (would wreck Σx² if read).
  DeviceBuffer upload_rows(Runtime& rt, const std::vector<float>& v) const {
    std::vector<float> p(static_cast<size_t>(std::max<int64_t>(M() * rs(), 1)), 1e30f);
    for (int64_t m = 0; m < M(); ++m)
      for (int64_t k = 0; k < c.Hd; ++k) p[m * rs() + k] = v[m * c.Hd + k];
    round_to(c.dtype, p);
    DeviceBuffer b(rt, p.size() * dtype_size(c.dtype));
    b.poison();  // sets the guard zones (checked after in-place runs)
    b.upload(encode(c.dtype, p));
    return b;
  }
  DeviceBuffer upload_table(Runtime& rt, const std::vector<float>& v) const {
    std::vector<float> p(static_cast<size_t>(std::max<int64_t>(c.S * cs(), 1)), 1e30f);
    for (int64_t s = 0; s < c.S; ++s)
      for (int64_t k = 0; k < c.D; ++k) p[s * cs() + k] = v[s * c.D + k];
    DeviceBuffer b(rt, p.size() * dtype_size(c.cs_dtype));
    b.upload(encode(c.cs_dtype, p));
    return b;
  }
  TensorRef rows_ref(const DeviceBuffer& b) const {
    TensorRef t = b.ref(c.dtype, {c.B, c.S, c.Hd});
    t.strides = {c.S * rs(), rs(), 1};
    return t;
  }
  TensorRef table_ref(const DeviceBuffer& b) const {
    TensorRef t = c.cos4d ? b.ref(c.cs_dtype, {1, c.S, 1, c.D}) : b.ref(c.cs_dtype, {c.S, c.D});
    if (c.cos4d)
      t.strides = {c.S * cs(), cs(), c.D, 1};
    else
      t.strides = {cs(), 1};
    return t;
  }
  std::vector<float> download_rows(const DeviceBuffer& b) const {
    const std::vector<float> p =
        decode(c.dtype, b.download<uint8_t>(static_cast<size_t>(M() * rs()) * dtype_size(c.dtype)));
    std::vector<float> v(static_cast<size_t>(M() * c.Hd));
    for (int64_t m = 0; m < M(); ++m)
      for (int64_t k = 0; k < c.Hd; ++k) v[m * c.Hd + k] = p[m * rs() + k];
    return v;
  }
};

Data make_data(const Case& c, uint64_t seed) {
  Data d;
  d.c = c;
  d.x = random_values(c.B * c.S * c.Hd, mix_seed({seed, 1}), c.dtype, c.x_scale);
  d.w = random_values(c.Hd, mix_seed({seed, 2}), c.w_dtype, 0.5f);
  d.dy = random_values(c.B * c.S * c.Hd, mix_seed({seed, 3}), c.dtype);
  // A real RoPE table (cos/sin of position·frequency, both halves equal) for even cases, random values otherwise
  // (the kernel must not assume cos² + sin² = 1).
  d.cos.resize(c.S * c.D);
  d.sin.resize(c.S * c.D);
  const std::vector<float> rc = random_values(c.S * c.D, mix_seed({seed, 4}), c.cs_dtype);
  const std::vector<float> rs = random_values(c.S * c.D, mix_seed({seed, 5}), c.cs_dtype);
  for (int64_t s = 0; s < c.S; ++s)
    for (int64_t i = 0; i < c.D; ++i) {
      if (seed % 2 == 0) {
        const double th = s * std::pow(10000.0, -2.0 * (i % (c.D / 2)) / c.D);
        d.cos[s * c.D + i] = round_to(c.cs_dtype, static_cast<float>(std::cos(th)));
        d.sin[s * c.D + i] = round_to(c.cs_dtype, static_cast<float>(std::sin(th)));
      } else {
        d.cos[s * c.D + i] = rc[s * c.D + i];
        d.sin[s * c.D + i] = rs[s * c.D + i];
      }
    }
  return d;
}

DeviceBuffer upload_plain(Runtime& rt, DType dtype, const std::vector<float>& v) {
  DeviceBuffer b(rt, std::max<size_t>(v.size(), 1) * dtype_size(dtype));
  b.upload(encode(dtype, v));
  return b;
}

constexpr float kEps = 1e-6f;

class RmsNormRopeGpu : public GpuTest {
 protected:
  struct Fwd {
    std::vector<float> y;
    bool guards_ok = false;
    uint64_t launches = 0;
  };
  static Fwd run_fwd(const Data& d, bool in_place = false) {
    Runtime& r = rt();
    DeviceBuffer x = d.upload_rows(r, d.x), w = upload_plain(r, d.c.w_dtype, d.w);
    DeviceBuffer cos = d.upload_table(r, d.cos), sin = d.upload_table(r, d.sin);
    DeviceBuffer y(r, static_cast<size_t>(std::max<int64_t>(d.M() * d.rs(), 1)) * dtype_size(d.c.dtype));
    y.poison();
    const uint64_t before = r.stats().launches;
    rms_norm_rope_fwd(r, d.rows_ref(x), w.ref(d.c.w_dtype, {d.c.Hd}), d.table_ref(cos), d.table_ref(sin),
                      d.rows_ref(in_place ? x : y), kEps, 0, nullptr);
    synchronize();
    Fwd f;
    f.launches = r.stats().launches - before;
    f.y = d.download_rows(in_place ? x : y);
    f.guards_ok = y.guards_intact() && x.guards_intact();
    return f;
  }
  struct Bwd {
    std::vector<float> dx, dweight;
    bool guards_ok = false;
  };
  // rows ≥ 0 forces the backward's config (0 re-read, 1 kept in registers, 2 staged in shared memory; warps).
  static Bwd run_bwd(const Data& d, int rows = -1, int warps = 0, int split = 1) {
    Runtime& r = rt();
    DeviceBuffer x = d.upload_rows(r, d.x), dy = d.upload_rows(r, d.dy), w = upload_plain(r, d.c.w_dtype, d.w);
    DeviceBuffer cos = d.upload_table(r, d.cos), sin = d.upload_table(r, d.sin);
    DeviceBuffer dx(r, static_cast<size_t>(std::max<int64_t>(d.M() * d.rs(), 1)) * dtype_size(d.c.dtype));
    DeviceBuffer dw(r, d.c.Hd * 4);
    dx.poison();
    dw.poison();
    detail::rms_norm_rope_bwd_config(r, d.rows_ref(dy), d.rows_ref(x), w.ref(d.c.w_dtype, {d.c.Hd}),
                                     d.table_ref(cos), d.table_ref(sin), d.rows_ref(dx),
                                     dw.ref(DType::f32, {d.c.Hd}), kEps, 0, {}, nullptr, rows, warps, split);
    synchronize();
    Bwd b;
    b.dx = d.download_rows(dx);
    b.dweight = dw.download<float>(d.c.Hd);
    b.guards_ok = dx.guards_intact() && dw.guards_intact();
    return b;
  }
};

std::vector<Case> cases() {
  using enum DType;
  return {
      {2, 4096, 2048, 128, bf16},                 // the target shape (Ling-mini-2.0 hidden 2048, D 128)
      {1, 1, 2048, 128, bf16},                    // one row
      {3, 37, 2048, 128, bf16},                   // odd B and S
      {2, 100, 1024, 64, bf16},
      {5, 7, 2048, 256, bf16},
      {1, 33, 7168, 128, bf16},                   // DeepSeek-V3 hidden (non-kept rows in the backward)
      {2, 1031, 7168, 128, bf16},                 // the same over many strips (bwd default: 8 staged warps × 4 a row)
      {2, 50, 4096, 128, f16},
      {2, 50, 2048, 128, f32},
      {2, 9, 18, 6, f32, f16, f32},               // D/2 odd: scalar accesses
      {3, 5, 40, 10, bf16, bf16, bf16},           // D/2 = 5
      {2, 64, 2048, 128, bf16, f32, f32},         // fp32 weight and tables with bf16 activations
      {2, 64, 1024, 64, f16, bf16, bf16},
      {3, 31, 2048, 128, bf16, bf16, bf16, 64},   // x/y/dy/dx strided (row stride Hd + 64)
      {2, 17, 512, 128, bf16, bf16, bf16, 8, true, 8},  // [1, S, 1, D] tables with a row stride, strided rows
      {2, 16, 2048, 128, bf16, bf16, bf16, 0, false, 0, 1e17f},   // huge (Σx² near 2e37, still finite in fp32)
      {2, 16, 2048, 128, bf16, bf16, bf16, 0, false, 0, 1e-20f},  // tiny: eps dominates
      {2, 16, 1024, 64, f16, f16, f16, 0, false, 0, 1e4f},        // fp16 up to ~5e4
  };
}

// A case's own random stream (tag: which test draws it).
uint64_t case_seed(uint64_t tag, const Case& c) {
  return mix_seed({tag, static_cast<uint64_t>(c.B), static_cast<uint64_t>(c.S), static_cast<uint64_t>(c.Hd),
                   static_cast<uint64_t>(c.D), static_cast<uint64_t>(c.dtype), static_cast<uint64_t>(c.pad)});
}

class RmsNormRopeFwd : public RmsNormRopeGpu, public ::testing::WithParamInterface<Case> {};

TEST_P(RmsNormRopeFwd, MatchesReference) {
  const Case c = GetParam();
  const uint64_t seed = case_seed(0x61, c);
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Data d = make_data(c, seed);
  const Fwd f = run_fwd(d);
  EXPECT_TRUE(f.guards_ok) << "written outside y";
  const std::vector<double> want = ref::rms_norm_rope_fwd(d.x, d.w, d.cos, d.sin, c.B, c.S, c.Hd, c.D, kEps);
  EXPECT_TRUE(close_rows("y", f.y, want, d.M(), c.Hd, c.dtype));
  const double err = relative_l2(f.y, want);
  EXPECT_LE(err, rel_l2_tol(c.dtype)) << "y relative L2";
  RecordProperty("y_rel_l2", std::to_string(err));
}

class RmsNormRopeBwd : public RmsNormRopeGpu, public ::testing::WithParamInterface<Case> {};

TEST_P(RmsNormRopeBwd, MatchesReference) {
  const Case c = GetParam();
  const uint64_t seed = case_seed(0x62, c);
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Data d = make_data(c, seed);
  const Bwd b = run_bwd(d);
  EXPECT_TRUE(b.guards_ok) << "written outside dx or dweight";
  const ref::RmsNormRopeGrads g = ref::rms_norm_rope_bwd(d.dy, d.x, d.w, d.cos, d.sin, c.B, c.S, c.Hd, c.D, kEps);
  EXPECT_TRUE(close_rows("dx", b.dx, g.dx, d.M(), c.Hd, c.dtype));
  const double dx_err = relative_l2(b.dx, g.dx), dw_err = relative_l2(b.dweight, g.dweight);
  EXPECT_LE(dx_err, rel_l2_tol(c.dtype)) << "dx relative L2";
  EXPECT_LE(dw_err, 1e-4) << "dweight relative L2";
  RecordProperty("dx_rel_l2", std::to_string(dx_err));
  RecordProperty("dweight_rel_l2", std::to_string(dw_err));
}

INSTANTIATE_TEST_SUITE_P(Grid, RmsNormRopeFwd, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return name(i.param); });
INSTANTIATE_TEST_SUITE_P(Grid, RmsNormRopeBwd, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return name(i.param); });

// Zero rows: r = 1/sqrt(eps), y = 0; the backward still has dx = r·w·gn. NaN/inf propagate as in the reference:
// a NaN anywhere in a row makes the whole row NaN; an inf makes Σx² = inf, r = 0: y = 0 except inf·0 = NaN at the
// inf and its rotation partner.
TEST_F(RmsNormRopeGpu, ZeroNanAndInfRows) {
  const Case c{1, 8, 1024, 128, DType::bf16};
  Data d = make_data(c, 0x63);
  for (int64_t k = 0; k < c.Hd; ++k) d.x[0 * c.Hd + k] = 0.f;  // row 0 zero
  d.x[1 * c.Hd + 5] = std::numeric_limits<float>::quiet_NaN();  // row 1 NaN
  d.x[2 * c.Hd + 700] = std::numeric_limits<float>::infinity();  // row 2 inf
  d.x[3 * c.Hd + 3] = -std::numeric_limits<float>::infinity();
  const Fwd f = run_fwd(d);
  const std::vector<double> want = ref::rms_norm_rope_fwd(d.x, d.w, d.cos, d.sin, c.B, c.S, c.Hd, c.D, kEps);
  EXPECT_TRUE(close_rows("y", f.y, want, d.M(), c.Hd, c.dtype));
  for (int64_t k = 0; k < c.Hd; ++k) {
    EXPECT_EQ(f.y[k], 0.f) << k;
    EXPECT_TRUE(std::isnan(f.y[c.Hd + k])) << k;
  }
  // Backward of the zero row (finite data only).
  Data z = make_data(c, 0x64);
  for (int64_t k = 0; k < c.Hd; ++k) z.x[k] = 0.f;
  const Bwd b = run_bwd(z);
  const ref::RmsNormRopeGrads g = ref::rms_norm_rope_bwd(z.dy, z.x, z.w, z.cos, z.sin, c.B, c.S, c.Hd, c.D, kEps);
  EXPECT_TRUE(close_rows("dx", b.dx, g.dx, z.M(), c.Hd, c.dtype));
}

TEST_F(RmsNormRopeGpu, EmptyInputs) {
  for (const auto& [B, S] : {std::pair<int64_t, int64_t>{0, 16}, {2, 0}}) {
    const Case c{B, S, 256, 64, DType::bf16};
    const Data d = make_data(c, 0x65);
    const Fwd f = run_fwd(d);
    EXPECT_EQ(f.launches, 0u) << "no rows: nothing to launch";
    const Bwd b = run_bwd(d);  // dweight must come back as zeros (the empty sum)
    for (float v : b.dweight) EXPECT_EQ(v, 0.f);
  }
}

TEST_F(RmsNormRopeGpu, InPlaceForward) {
  const Case c{2, 40, 2048, 128, DType::bf16};
  const Data d = make_data(c, 0x66);
  const Fwd a = run_fwd(d), b = run_fwd(d, true);
  EXPECT_TRUE(bitwise_equal("y (in place vs out of place)", b.y, a.y));
}

// Every backward variant the tuner may pick (rows re-read, kept in registers, staged in shared memory; warps per CTA)
// against the reference, on shapes where each applies.
TEST_F(RmsNormRopeGpu, BackwardVariants) {
  for (const Case& c : {Case{2, 1000, 2048, 128, DType::bf16}, Case{3, 37, 1024, 64, DType::f16, DType::f32,
                                                                      DType::f32, 64}}) {
    SCOPED_TRACE(name(c));
    const Data d = make_data(c, 0x69);
    const ref::RmsNormRopeGrads g = ref::rms_norm_rope_bwd(d.dy, d.x, d.w, d.cos, d.sin, c.B, c.S, c.Hd, c.D, kEps);
    for (const auto& [rows, warps, split] : {std::tuple{0, 8, 1}, {0, 4, 1}, {1, 8, 1}, {1, 4, 1}, {1, 12, 1},
                                             {1, 8, 2}, {1, 16, 4}, {0, 16, 2}, {0, 8, 2}, {2, 8, 1}, {2, 4, 1},
                                             {2, 2, 1}, {2, 8, 2}, {2, 16, 4}, {2, 4, 4}, {2, 12, 2}, {2, 20, 4},
                                             {2, 24, 4}}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " warps " + std::to_string(warps) + " split " +
                   std::to_string(split));
      const Bwd b = run_bwd(d, rows, warps, split);
      EXPECT_TRUE(b.guards_ok);
      EXPECT_TRUE(close_rows("dx", b.dx, g.dx, d.M(), c.Hd, c.dtype));
      EXPECT_LE(relative_l2(b.dweight, g.dweight), 1e-4) << "dweight relative L2";
    }
  }
}

// The fixed-order reduction: repeated runs are bitwise identical.
TEST_F(RmsNormRopeGpu, BackwardIsDeterministic) {
  const Case c{2, 4096, 2048, 128, DType::bf16};
  const Data d = make_data(c, 0x67);
  const Bwd a = run_bwd(d), b = run_bwd(d);
  EXPECT_TRUE(bitwise_equal("dx", a.dx, b.dx));
  EXPECT_TRUE(bitwise_equal("dweight", a.dweight, b.dweight));
}

// A caller-provided workspace (poisoned) gives the result of kiln's own; a short one is rejected.
TEST_F(RmsNormRopeGpu, ExplicitWorkspace) {
  // rms_norm_rope_bwd_workspace_elems is an upper bound over the shape's specializations (it counts the CTAs the
  // thread limit allows, not the occupancy); it is exact where every CTA of the persistent grid is bound by the row
  // count: 120 rows are 30 CTAs of the default's 4 rows, fewer than the GPU holds, so elems − 1 is too short.
  const Case c{2, 60, 2048, 128, DType::bf16};
  const Data d = make_data(c, 0x68);
  Runtime& r = rt();
  const Bwd own = run_bwd(d);
  const int64_t elems = rms_norm_rope_bwd_workspace_elems(r, d.M(), c.Hd, c.D, c.dtype);
  ASSERT_GT(elems, 0);
  DeviceBuffer x = d.upload_rows(r, d.x), dy = d.upload_rows(r, d.dy), w = upload_plain(r, c.w_dtype, d.w);
  DeviceBuffer cos = d.upload_table(r, d.cos), sin = d.upload_table(r, d.sin);
  DeviceBuffer dx(r, d.M() * c.Hd * 2), dw(r, c.Hd * 4), ws(r, elems * 4);
  ws.poison();
  auto call = [&](const TensorRef& workspace) {
    rms_norm_rope_bwd(r, d.rows_ref(dy), d.rows_ref(x), w.ref(c.w_dtype, {c.Hd}), d.table_ref(cos),
                      d.table_ref(sin), d.rows_ref(dx), dw.ref(DType::f32, {c.Hd}), kEps, 0, workspace, nullptr);
  };
  call(ws.ref(DType::f32, {elems}));
  synchronize();
  EXPECT_TRUE(ws.guards_intact());
  EXPECT_TRUE(bitwise_equal("dweight", dw.download<float>(c.Hd), own.dweight));
  EXPECT_TRUE(bitwise_equal("dx", d.download_rows(dx), own.dx));
  EXPECT_THROW_NAMING(call(ws.ref(DType::f32, {elems - 1})), "workspace", ShapeMismatchError);
}

}  // namespace
}  // namespace kiln::test
