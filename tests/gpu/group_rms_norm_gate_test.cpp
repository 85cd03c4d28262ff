// tests/gpu/group_rms_norm_gate_test.cpp — group_rms_norm_gate_fwd / _bwd on the GPU against the double reference.
//
// Tolerances. The GPU computes in fp32 and rounds once to the output dtype, so per element
//   |got − ref| ≤ K·ulp_T(|ref|) + A·rms(ref row)
// with K = 2, A = 1e-3 for bf16/fp16 (≤ ½ ulp of rounding; fp32 error in r and the group sums, the fast exp's ~2e-6)
// and K = 64, A = 1e-6 for fp32 (the accurate exp; fp32 sums over a group). Relative L2: bf16 2.5e-3 (rounding alone
// ≈1.6e-3), fp16 5e-4, fp32 2e-6. dweight: an fp32 sum over all tokens in a fixed order, relative L2 ≤ 1e-4, and runs
// are bitwise reproducible. Outputs and guard zones are poisoned first.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kiln/group_rms_norm_gate_args.h"
#include "kiln/ops/group_rms_norm_gate.hpp"
#include "reference/group_rms_norm_gate.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "test_util.hpp"

namespace kiln::detail {
void group_rms_norm_gate_fwd_config(Runtime& rt, const TensorRef& x, const TensorRef& gate, const TensorRef& weight,
                                    const TensorRef& out, const GroupRmsNormGateOptions& opts, Stream stream,
                                    int warps, int seg, int rows);
void group_rms_norm_gate_bwd_config(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& gate,
                                    const TensorRef& weight, const TensorRef& dx, const TensorRef& dgate,
                                    const TensorRef& dweight, const GroupRmsNormGateOptions& opts,
                                    const TensorRef& workspace, Stream stream, int rows, int warps, int seg,
                                    int reduce, int hints);
extern std::atomic<unsigned long long*> group_rms_norm_gate_trace;
}  // namespace kiln::detail

namespace kiln::test {
namespace {

struct Case {
  int64_t B, S, dim, G;
  DType dtype = DType::bf16, w_dtype = DType::bf16;
  bool transpose = true, shared = false;
  int64_t pad = 0;            // extra elements after every row of every activation (strided views); multiple of 8
  float x_scale = 1.0f, gate_scale = 2.0f;
};

std::string scale_name(const char* what, float s) {
  if (s == 0) return std::string("_") + what + "0";
  const int e = static_cast<int>(std::lround(std::log10(s)));
  return std::string("_") + what + "E" + (e < 0 ? "m" : "") + std::to_string(std::abs(e));
}
std::string name(const Case& c) {
  return "B" + std::to_string(c.B) + "_S" + std::to_string(c.S) + "_dim" + std::to_string(c.dim) + "_G" +
         std::to_string(c.G) + "_" + std::string(dtype_name(c.dtype)) + "_w" + std::string(dtype_name(c.w_dtype)) +
         (c.transpose ? "_T" : "_N") + (c.shared ? "_shared" : "") + (c.pad ? "_pad" + std::to_string(c.pad) : "") +
         (c.x_scale != 1.0f ? scale_name("x", c.x_scale) : "") +
         (c.gate_scale != 2.0f ? scale_name("gate", c.gate_scale) : "");
}
void PrintTo(const Case& c, std::ostream* os) { *os << name(c); }

// Token-order host data ([M, dim], row m = b·S + s) and the device layouts of the case.
struct Data {
  Case c;
  std::vector<float> x, gate, w, dy;
  int64_t M() const { return c.B * c.S; }
  int64_t rs() const { return c.dim + c.pad; }
  int64_t wn() const { return c.shared ? c.dim / c.G : c.dim; }
  // Row of token m in a tensor of x's layout (seq_first false) or gate's layout.
  int64_t row(int64_t m, bool seq_first) const {
    const int64_t b = m / c.S, s = m % c.S;
    return seq_first ? s * c.B + b : b * c.S + s;
  }
  DeviceBuffer upload(Runtime& rt, const std::vector<float>& v, bool seq_first) const {
    std::vector<float> p(static_cast<size_t>(std::max<int64_t>(M() * rs(), 1)), 1e30f);  // padding: poison values
    for (int64_t m = 0; m < M(); ++m)
      for (int64_t k = 0; k < c.dim; ++k) p[row(m, seq_first) * rs() + k] = v[m * c.dim + k];
    round_to(c.dtype, p);
    DeviceBuffer b(rt, p.size() * dtype_size(c.dtype));
    b.poison();
    b.upload(encode(c.dtype, p));
    return b;
  }
  DeviceBuffer alloc(Runtime& rt) const {
    DeviceBuffer b(rt, static_cast<size_t>(std::max<int64_t>(M() * rs(), 1)) * dtype_size(c.dtype));
    b.poison();
    return b;
  }
  TensorRef ref(const DeviceBuffer& b, bool seq_first) const {
    TensorRef t = seq_first ? b.ref(c.dtype, {c.S, c.B, c.dim}) : b.ref(c.dtype, {c.B, c.S, c.dim});
    t.strides = {(seq_first ? c.B : c.S) * rs(), rs(), 1};
    return t;
  }
  std::vector<float> download(const DeviceBuffer& b, bool seq_first) const {
    const std::vector<float> p =
        decode(c.dtype, b.download<uint8_t>(static_cast<size_t>(M() * rs()) * dtype_size(c.dtype)));
    std::vector<float> v(static_cast<size_t>(M() * c.dim));
    for (int64_t m = 0; m < M(); ++m)
      for (int64_t k = 0; k < c.dim; ++k) v[m * c.dim + k] = p[row(m, seq_first) * rs() + k];
    return v;
  }
};

Data make_data(const Case& c, uint64_t seed) {
  Data d;
  d.c = c;
  d.x = random_values(c.B * c.S * c.dim, mix_seed({seed, 1}), c.dtype, c.x_scale);
  d.gate = random_values(c.B * c.S * c.dim, mix_seed({seed, 2}), c.dtype, c.gate_scale);
  d.w = random_values(d.wn(), mix_seed({seed, 3}), c.w_dtype, 0.5f);
  d.dy = random_values(c.B * c.S * c.dim, mix_seed({seed, 4}), c.dtype);
  return d;
}

constexpr float kEps = 1e-6f;

class GroupRmsNormGateGpu : public GpuTest {
 protected:
  static GroupRmsNormGateOptions options(const Case& c) { return {static_cast<int>(c.G), kEps, c.transpose}; }
  struct Fwd {
    std::vector<float> out;
    bool guards_ok = false;
    uint64_t launches = 0;
  };
  // warps > 0 forces the forward's config (rows mode 0 per item / 2 staged, warps, segment groups).
  static Fwd run_fwd(const Data& d, int rows = 0, int warps = 0, int seg = 0) {
    Runtime& r = rt();
    const bool T = d.c.transpose;
    DeviceBuffer x = d.upload(r, d.x, false), gate = d.upload(r, d.gate, T), out = d.alloc(r);
    DeviceBuffer w(r, std::max<int64_t>(d.wn(), 1) * dtype_size(d.c.w_dtype));
    w.upload(encode(d.c.w_dtype, d.w));
    const uint64_t before = r.stats().launches;
    detail::group_rms_norm_gate_fwd_config(r, d.ref(x, false), d.ref(gate, T), w.ref(d.c.w_dtype, {d.wn()}),
                                           d.ref(out, T), options(d.c), nullptr, warps, seg, rows);
    synchronize();
    Fwd f;
    f.launches = r.stats().launches - before;
    f.out = d.download(out, T);
    f.guards_ok = out.guards_intact();
    return f;
  }
  struct Bwd {
    std::vector<float> dx, dgate, dweight;
    bool guards_ok = false;
  };
  // rows ≥ 0 forces the backward's config (0 re-read, 1 registers, 2 staged in shared memory, 3 registers with the
  // sigmoids; warps; segment groups; reduce 0 second kernel, 1 in-kernel, −1 the heuristic's for those warps).
  static Bwd run_bwd(const Data& d, int64_t workspace_elems = -1, int rows = -1, int warps = 0, int seg = 0,
                     int reduce = -1, int hints = 0) {
    Runtime& r = rt();
    const bool T = d.c.transpose;
    DeviceBuffer x = d.upload(r, d.x, false), gate = d.upload(r, d.gate, T), dy = d.upload(r, d.dy, T);
    DeviceBuffer dx = d.alloc(r), dgate = d.alloc(r);
    DeviceBuffer w(r, std::max<int64_t>(d.wn(), 1) * dtype_size(d.c.w_dtype)), dw(r, d.wn() * 4);
    DeviceBuffer ws(r, std::max<int64_t>(workspace_elems, 1) * 4);
    w.upload(encode(d.c.w_dtype, d.w));
    dw.poison();
    ws.poison();
    detail::group_rms_norm_gate_bwd_config(
        r, d.ref(dy, T), d.ref(x, false), d.ref(gate, T), w.ref(d.c.w_dtype, {d.wn()}), d.ref(dx, false),
        d.ref(dgate, T), dw.ref(DType::f32, {d.wn()}), options(d.c),
        workspace_elems >= 0 ? ws.ref(DType::f32, {workspace_elems}) : TensorRef{}, nullptr, rows, warps, seg, reduce,
        hints);
    synchronize();
    Bwd b;
    b.dx = d.download(dx, false);
    b.dgate = d.download(dgate, T);
    b.dweight = dw.download<float>(d.wn());
    b.guards_ok = dx.guards_intact() && dgate.guards_intact() && dw.guards_intact() && ws.guards_intact();
    return b;
  }
  // Element-wise checks of the outputs against the reference (close_rows): out; dx and dgate.
  static void expect_close_fwd(const Fwd& f, const std::vector<double>& want, const Data& d, const Case& c) {
    EXPECT_TRUE(close_rows("out", f.out, want, d.M(), c.dim, c.dtype, "token", "channel"));
  }
  static void expect_close_bwd(const Bwd& b, const ref::GroupRmsNormGateGrads& g, const Data& d, const Case& c) {
    EXPECT_TRUE(close_rows("dx", b.dx, g.dx, d.M(), c.dim, c.dtype, "token", "channel"));
    EXPECT_TRUE(close_rows("dgate", b.dgate, g.dgate, d.M(), c.dim, c.dtype, "token", "channel"));
  }
};

std::vector<Case> cases() {
  using enum DType;
  return {
      {2, 4096, 2048, 4},                                      // the target (Ling-mini-2.0, linghe's bench)
      {2, 4096, 2048, 4, bf16, bf16, false},                   // non-transposed gate/out
      {2, 4096, 2048, 4, bf16, bf16, true, true},              // shared weight [dim/G]
      {1, 1, 2048, 4},                                         // one token
      {3, 37, 2048, 4},                                        // odd B and S (linghe's backward needs S % 8 == 0)
      {2, 4095, 2048, 4, bf16, bf16, true, true},
      {1, 4096, 4096, 4},                                      // linghe's second test shape (Qwen3-30B-A3B dims)
      {2, 33, 1536, 4, bf16, bf16, true, true},                // d = 384 (HEAD's non-power-of-two test dim)
      {2, 9, 16384, 128},                                      // DeepSeek-V3: 128 groups of 128, 8 segments
      {2, 50, 2048, 4, f16, f16},
      {2, 50, 2048, 4, f32, f32, false},
      {2, 50, 2048, 4, bf16, f32},                             // fp32 weight
      {3, 5, 40, 5, bf16, bf16, true, true},                   // d = 8
      {3, 7, 18, 3, f32, f16, false, false},                   // d = 6 fp32: 8-byte chunks
      {2, 31, 2048, 4, bf16, bf16, true, false, 64},           // strided rows everywhere
      {2, 64, 2048, 4, bf16, bf16, true, false, 0, 1.0f, 1e4f},  // saturated gates (linghe's coef 1e4)
      {2, 64, 2048, 4, bf16, bf16, true, false, 0, 1.0f, 0.0f},  // gate 0: σ = ½ (linghe's coef 0)
      {2, 16, 2048, 4, bf16, bf16, true, false, 0, 1e17f},     // huge x (group Σx² ~ 5e36, finite in fp32)
      {2, 16, 2048, 4, bf16, bf16, true, false, 0, 1e-20f},    // tiny x: eps dominates
  };
}

// A case's own random stream (tag: which test draws it).
uint64_t case_seed(uint64_t tag, const Case& c) {
  return mix_seed({tag, static_cast<uint64_t>(c.B), static_cast<uint64_t>(c.S), static_cast<uint64_t>(c.dim),
                   static_cast<uint64_t>(c.G), static_cast<uint64_t>(c.dtype), c.transpose, c.shared});
}

class GroupRmsNormGateFwd : public GroupRmsNormGateGpu, public ::testing::WithParamInterface<Case> {};

TEST_P(GroupRmsNormGateFwd, MatchesReference) {
  const Case c = GetParam();
  const uint64_t seed = case_seed(0x81, c);
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Data d = make_data(c, seed);
  const Fwd f = run_fwd(d);
  EXPECT_TRUE(f.guards_ok) << "written outside out";
  const std::vector<double> want = ref::group_rms_norm_gate_fwd(d.x, d.gate, d.w, d.M(), c.dim, c.G, kEps);
  expect_close_fwd(f, want, d, c);
  const double err = relative_l2(f.out, want);
  EXPECT_LE(err, rel_l2_tol(c.dtype)) << "out relative L2";
  RecordProperty("out_rel_l2", std::to_string(err));
}

class GroupRmsNormGateBwd : public GroupRmsNormGateGpu, public ::testing::WithParamInterface<Case> {};

TEST_P(GroupRmsNormGateBwd, MatchesReference) {
  const Case c = GetParam();
  const uint64_t seed = case_seed(0x82, c);
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Data d = make_data(c, seed);
  const Bwd b = run_bwd(d);
  EXPECT_TRUE(b.guards_ok) << "written outside dx, dgate or dweight";
  const ref::GroupRmsNormGateGrads g = ref::group_rms_norm_gate_bwd(d.dy, d.x, d.gate, d.w, d.M(), c.dim, c.G, kEps);
  expect_close_bwd(b, g, d, c);
  const double dx_err = relative_l2(b.dx, g.dx), dg_err = relative_l2(b.dgate, g.dgate);
  const double dw_err = relative_l2(b.dweight, g.dweight);
  EXPECT_LE(dx_err, rel_l2_tol(c.dtype)) << "dx relative L2";
  // dgate of saturated gates is ~0 where the reference is tiny but non-zero: the element-wise check above covers it.
  if (c.gate_scale < 100) EXPECT_LE(dg_err, rel_l2_tol(c.dtype)) << "dgate relative L2";
  EXPECT_LE(dw_err, 1e-4) << "dweight relative L2";
  RecordProperty("dx_rel_l2", std::to_string(dx_err));
  RecordProperty("dgate_rel_l2", std::to_string(dg_err));
  RecordProperty("dweight_rel_l2", std::to_string(dw_err));
}

INSTANTIATE_TEST_SUITE_P(Grid, GroupRmsNormGateFwd, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return name(i.param); });
INSTANTIATE_TEST_SUITE_P(Grid, GroupRmsNormGateBwd, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return name(i.param); });

// Zero groups give r = 1/sqrt(eps) and out = 0; NaN in one group poisons that group only; inf gives r = 0, out = 0
// except NaN (inf·0) at the inf.
TEST_F(GroupRmsNormGateGpu, ZeroNanAndInfGroups) {
  const Case c{1, 4, 2048, 4};
  Data d = make_data(c, 0x83);
  for (int64_t k = 0; k < 512; ++k) d.x[k] = 0.f;                 // token 0, group 0
  d.x[1 * 2048 + 512 + 7] = std::numeric_limits<float>::quiet_NaN();  // token 1, group 1
  d.x[2 * 2048 + 1500] = std::numeric_limits<float>::infinity();   // token 2, group 2
  const Fwd f = run_fwd(d);
  const std::vector<double> want = ref::group_rms_norm_gate_fwd(d.x, d.gate, d.w, d.M(), c.dim, c.G, kEps);
  expect_close_fwd(f, want, d, c);
  for (int64_t k = 0; k < 512; ++k) EXPECT_EQ(f.out[k], 0.f) << k;
  for (int64_t k = 0; k < 2048; ++k)  // only group 1 of token 1 is NaN
    EXPECT_EQ(std::isnan(f.out[2048 + k]), k >= 512 && k < 1024) << k;
  Data z = make_data(c, 0x84);
  for (int64_t k = 0; k < 512; ++k) z.x[k] = 0.f;
  const Bwd b = run_bwd(z);
  const auto g = ref::group_rms_norm_gate_bwd(z.dy, z.x, z.gate, z.w, z.M(), c.dim, c.G, kEps);
  expect_close_bwd(b, g, z, c);
}

TEST_F(GroupRmsNormGateGpu, EmptyInputs) {
  for (const auto& [B, S] : {std::pair<int64_t, int64_t>{0, 16}, {2, 0}}) {
    const Case c{B, S, 2048, 4};
    const Data d = make_data(c, 0x85);
    EXPECT_EQ(run_fwd(d).launches, 0u);
    const Bwd b = run_bwd(d);
    for (float v : b.dweight) EXPECT_EQ(v, 0.f);
  }
}

// Every forward variant the tuner may pick (one warp per item or staged; warps; segment groups).
TEST_F(GroupRmsNormGateGpu, ForwardVariants) {
  for (const Case& c : {Case{2, 777, 2048, 4}, Case{3, 37, 1536, 4, DType::f16, DType::f32, false, true, 64}}) {
    SCOPED_TRACE(name(c));
    const Data d = make_data(c, 0x89);
    const std::vector<double> want = ref::group_rms_norm_gate_fwd(d.x, d.gate, d.w, d.M(), c.dim, c.G, kEps);
    for (const auto& [rows, warps, seg] : {std::tuple{0, 4, 4}, {0, 16, 1}, {2, 8, 2}, {2, 4, 4}, {2, 2, 1}}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " warps " + std::to_string(warps) + " seg " + std::to_string(seg));
      const Fwd f = run_fwd(d, rows, warps, seg);
      EXPECT_TRUE(f.guards_ok);
      expect_close_fwd(f, want, d, c);
    }
  }
}

// Every backward variant the tuner may pick (rows re-read / in registers / staged in shared memory, warps, segment
// groups) against the reference.
TEST_F(GroupRmsNormGateGpu, BackwardVariants) {
  for (const Case& c : {Case{2, 777, 2048, 4}, Case{3, 37, 1536, 4, DType::f16, DType::f32, false, true, 64}}) {
    SCOPED_TRACE(name(c));
    const Data d = make_data(c, 0x88);
    const auto g = ref::group_rms_norm_gate_bwd(d.dy, d.x, d.gate, d.w, d.M(), c.dim, c.G, kEps);
    for (const auto& [rows, warps, seg, reduce] :
         {std::tuple{0, 8, 4, 0}, {0, 4, 1, 0}, {1, 8, 1, 0}, {1, 8, 2, 0}, {2, 8, 2, 0}, {2, 4, 4, 1}, {2, 8, 1, 1},
          {2, 1, 2, 0}, {3, 8, 1, 0}, {3, 8, 1, 1}, {3, 4, 1, 0}, {3, 16, 1, 1}, {3, 1, 1, 0}}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " warps " + std::to_string(warps) + " seg " + std::to_string(seg) +
                   " reduce " + std::to_string(reduce));
      const Bwd b = run_bwd(d, -1, rows, warps, seg, reduce);
      EXPECT_TRUE(b.guards_ok);
      expect_close_bwd(b, g, d, c);
      EXPECT_LE(relative_l2(b.dweight, g.dweight), 1e-4) << "dweight relative L2";
    }
  }
}

// The in-kernel dw reduction (grid barrier, cooperative launch) adds the same partial rows in the same order as
// dw_reduce_kernel: every output bit-identical to the two-kernel path, over repeated launches (the barrier word is
// reused), shapes whose grids are capped by the token count (fewer CTAs than column blocks), a shared weight (folded
// groups), the kept and the staged kernels.
TEST_F(GroupRmsNormGateGpu, FusedReduceMatchesTwoKernels) {
  for (const Case& c : {Case{2, 4096, 2048, 4}, Case{2, 4095, 2048, 4, DType::bf16, DType::bf16, true, true},
                        Case{1, 3, 2048, 4}, Case{3, 37, 1536, 4, DType::f16, DType::f32, false, true, 64},
                        Case{2, 9, 16384, 128}}) {
    SCOPED_TRACE(name(c));
    const Data d = make_data(c, 0x8a);
    for (const auto& [rows, warps, seg] : {std::tuple{3, 8, 1}, {2, 8, 1}, {3, 16, 1}, {2, 16, 1}}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " warps " + std::to_string(warps) + " seg " + std::to_string(seg));
      const Bwd two = run_bwd(d, -1, rows, warps, seg, 0);
      for (int rep = 0; rep < 3; ++rep) {
        const Bwd one = run_bwd(d, -1, rows, warps, seg, 1);
        EXPECT_TRUE(one.guards_ok);
        EXPECT_TRUE(bitwise_equal("dweight", one.dweight, two.dweight));
        EXPECT_TRUE(bitwise_equal("dx", one.dx, two.dx));
        EXPECT_TRUE(bitwise_equal("dgate", one.dgate, two.dgate));
      }
    }
  }
}

// Every backward kernel computes dx and dgate with the same formulas in the same order (kiln/group_rms_norm_gate.cuh:
// gate_bwd_item), so they agree bit for bit whatever the rows mode, warps, segment or reduction; dweight agrees to the
// reference (its partial rows depend on the grid).
TEST_F(GroupRmsNormGateGpu, BackwardKernelsAgreeBitwise) {
  for (const Case& c : {Case{2, 777, 2048, 4}, Case{3, 37, 1536, 4, DType::f16, DType::f32, false, true, 64},
                        Case{2, 50, 2048, 4, DType::bf16, DType::bf16, true, false, 0, 1.0f, 1e4f}}) {
    SCOPED_TRACE(name(c));
    const Data d = make_data(c, 0x8b);
    const Bwd base = run_bwd(d, -1, 3, 8, 1, 0);  // kept rows and sigmoids
    for (const auto& [rows, warps, seg, reduce] :
         {std::tuple{0, 8, 4, 0}, {1, 8, 1, 0}, {1, 4, 2, 0}, {2, 8, 1, 1}, {2, 8, 2, 0}, {2, 16, 1, 1},
          {3, 16, 1, 1}}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " warps " + std::to_string(warps) + " seg " + std::to_string(seg) +
                   " reduce " + std::to_string(reduce));
      const Bwd b = run_bwd(d, -1, rows, warps, seg, reduce);
      EXPECT_TRUE(b.guards_ok);
      EXPECT_TRUE(bitwise_equal("dx", b.dx, base.dx));
      EXPECT_TRUE(bitwise_equal("dgate", b.dgate, base.dgate));
    }
  }
}

// The staged kernel's L2 policy for its inputs (hints 4: evict-first, session 5's default) changes where lines live in
// L2, never a value: every output bit-identical to hints 0 (the same grid and the same dw order).
TEST_F(GroupRmsNormGateGpu, StagedHintsChangeNoBit) {
  for (const Case& c : {Case{2, 777, 2048, 4}, Case{2, 33, 1536, 4, DType::bf16, DType::f32, true, true},
                        Case{2, 4096, 2048, 4}, Case{1, 5, 2048, 4},
                        Case{3, 37, 1536, 4, DType::f16, DType::f32, false}}) {
    SCOPED_TRACE(name(c));
    const Data d = make_data(c, 0x8d);
    const Bwd base = run_bwd(d, -1, 2, 8, 1, 1, 0);
    const auto g = ref::group_rms_norm_gate_bwd(d.dy, d.x, d.gate, d.w, d.M(), c.dim, c.G, kEps);
    EXPECT_TRUE(close_rows("dx", base.dx, g.dx, d.M(), c.dim, c.dtype, "token", "channel"));
    const Bwd b = run_bwd(d, -1, 2, 8, 1, 1, 4);
    EXPECT_TRUE(b.guards_ok);
    EXPECT_TRUE(bitwise_equal("dx", b.dx, base.dx));
    EXPECT_TRUE(bitwise_equal("dgate", b.dgate, base.dgate));
    EXPECT_TRUE(bitwise_equal("dweight", b.dweight, base.dweight));
  }
}

// Measurement (prints; checks only that tracing changes no output bit and that each CTA's timestamps are ordered):
// where the staged backward's time goes at the shape (B 2, S 4096, dim 2048, G 4, bf16, transposed), L2
// flushed before each traced call, CUDA events around it. Per CTA (GroupNormGateBwdArgs::trace): start (globaltimer,
// µs after the first CTA's), then on the SM clock: first item landed (first warp), each warp's quarter / half / three
// quarters landed (median over the CTA's warps), first and last warp done, streams done (CTA barrier), partial row
// written, grid barrier passed and column blocks stored (reducing CTAs), end (globaltimer). Then the spread of warp
// finish times within a CTA, and the SMs that finish first and last (and whether the same ones do in every rep).
// The default (hints 0) and session 5's evict-first input copies (hints 4).
TEST_F(GroupRmsNormGateGpu, StagedBackwardTimeline) {
  for (const int hints : {0, 4}) {
    Runtime& r = rt();
    const Case c{2, 4096, 2048, 4};
    const Data d = make_data(c, 0x8c);
    const bool T = c.transpose;
    DeviceBuffer x = d.upload(r, d.x, false), gate = d.upload(r, d.gate, T), dy = d.upload(r, d.dy, T);
    DeviceBuffer dx = d.alloc(r), dgate = d.alloc(r), w(r, d.wn() * 2), dw(r, d.wn() * 4);
    w.upload(encode(c.w_dtype, d.w));
    const int max_ctas = 2048;
    DeviceBuffer tb(r, static_cast<size_t>(max_ctas) * kGateTraceSlots * 8);
    detail::L2Flusher l2(r, nullptr);
    CUevent ev0, ev1;
    detail::check(detail::driver().cuEventCreate(&ev0, CU_EVENT_DEFAULT), "cuEventCreate");
    detail::check(detail::driver().cuEventCreate(&ev1, CU_EVENT_DEFAULT), "cuEventCreate");
    auto call = [&] {
      detail::group_rms_norm_gate_bwd_config(r, d.ref(dy, T), d.ref(x, false), d.ref(gate, T),
                                             w.ref(c.w_dtype, {d.wn()}), d.ref(dx, false), d.ref(dgate, T),
                                             dw.ref(DType::f32, {d.wn()}), options(c), TensorRef{}, nullptr, 2, 8, 1, 1,
                                             hints);
    };
    call();  // compiles; the untraced result
    synchronize();
    const std::vector<uint8_t> dx0 = dx.download<uint8_t>(dx.bytes()), dg0 = dgate.download<uint8_t>(dgate.bytes());
    const std::vector<float> dw0 = dw.download<float>(d.wn());
    std::vector<std::vector<double>> sm_end_reps;  // per rep: SM → latest streams-done time (µs)
    for (int rep = 0; rep < 3; ++rep) {
      tb.fill(0);
      l2.flush(nullptr);
      detail::group_rms_norm_gate_trace.store(static_cast<unsigned long long*>(tb.data()));
      detail::check(detail::driver().cuEventRecord(ev0, nullptr), "cuEventRecord");
      call();
      detail::check(detail::driver().cuEventRecord(ev1, nullptr), "cuEventRecord");
      synchronize();
      detail::group_rms_norm_gate_trace.store(nullptr);
      float ms = 0;
      detail::check(detail::driver().cuEventElapsedTime(&ms, ev0, ev1), "cuEventElapsedTime");
      EXPECT_TRUE(dx.download<uint8_t>(dx.bytes()) == dx0) << "traced dx differs";
      EXPECT_TRUE(dgate.download<uint8_t>(dgate.bytes()) == dg0) << "traced dgate differs";
      EXPECT_TRUE(bitwise_equal("traced dweight", dw.download<float>(d.wn()), dw0));

      const std::vector<uint64_t> tr = tb.download<uint64_t>(static_cast<size_t>(max_ctas) * kGateTraceSlots);
      auto at = [&](int cta, int slot) { return tr[static_cast<size_t>(cta) * kGateTraceSlots + slot]; };
      int ctas = 0;
      while (ctas < max_ctas && at(ctas, kGateTraceStartNs) != 0) ++ctas;
      ASSERT_GT(ctas, 0);
      const int warps = 8;
      std::vector<double> rate;
      uint64_t t0 = ~0ull;
      for (int k = 0; k < ctas; ++k) {
        t0 = std::min<uint64_t>(t0, at(k, kGateTraceStartNs));
        const uint64_t cs = at(k, kGateTraceStartClk), ce = at(k, kGateTraceEndClk);
        const uint64_t gs = at(k, kGateTraceStartNs), ge = at(k, kGateTraceEndNs);
        EXPECT_LE(cs, at(k, kGateTraceStreamsDone)) << "CTA " << k;
        EXPECT_LE(at(k, kGateTraceStreamsDone), at(k, kGateTracePartial)) << "CTA " << k;
        EXPECT_LE(at(k, kGateTracePartial), ce) << "CTA " << k;
        for (int wi = 0; wi < warps; ++wi) {
          const uint64_t* tw =
              &tr[static_cast<size_t>(k) * kGateTraceSlots + kGateTraceWarp + wi * kGateTraceWarpSlots];
          EXPECT_LE(cs, tw[0]) << "CTA " << k << " warp " << wi;
          EXPECT_LE(tw[0], tw[4]) << "CTA " << k << " warp " << wi;
          EXPECT_LE(tw[5], tw[4]) << "CTA " << k << " warp " << wi;
          if (hints == 0) {
            EXPECT_LE(tw[0], tw[1]) << "CTA " << k << " warp " << wi;
            EXPECT_LE(tw[1], tw[2]) << "CTA " << k << " warp " << wi;
            EXPECT_LE(tw[2], tw[3]) << "CTA " << k << " warp " << wi;
            EXPECT_LE(tw[3], tw[4]) << "CTA " << k << " warp " << wi;
          }
          }
        if (ge > gs && ce > cs) rate.push_back(static_cast<double>(ce - cs) / static_cast<double>(ge - gs));
      }
      ASSERT_FALSE(rate.empty());
      std::sort(rate.begin(), rate.end());
      const double ghz = rate[rate.size() / 2];
      const char* names[] = {"start",           "first item",     "warps 1/4",    "warps 1/2", "warps 3/4",
                             "first warp done", "last warp done", "streams done", "partial",   "barrier passed",
                             "reduced",         "end (gt)",       "last landed"};
      constexpr int kCols = 13;
      std::vector<std::vector<double>> col(kCols);
      std::vector<double> spread, last_item;
      std::vector<std::pair<double, int>> ends;  // streams done, CTA
      double span = 0;
      for (int k = 0; k < ctas; ++k) {
        const double st = (at(k, kGateTraceStartNs) - t0) / 1000.0;
        auto rel = [&](uint64_t clk) {
          return st + (static_cast<double>(clk) - static_cast<double>(at(k, kGateTraceStartClk))) / ghz / 1000.0;
        };
        std::vector<double> wv[6];
        for (int wi = 0; wi < warps; ++wi)
          for (int j = 0; j < 6; ++j)
            wv[j].push_back(
                rel(tr[static_cast<size_t>(k) * kGateTraceSlots + kGateTraceWarp + wi * kGateTraceWarpSlots + j]));
        for (auto& v : wv) std::sort(v.begin(), v.end());
        col[0].push_back(st);
        col[1].push_back(wv[0].front());
        col[2].push_back(wv[1][warps / 2]);
        col[3].push_back(wv[2][warps / 2]);
        col[4].push_back(wv[3][warps / 2]);
        col[5].push_back(wv[4].front());
        col[6].push_back(wv[4].back());
        col[7].push_back(rel(at(k, kGateTraceStreamsDone)));
        col[8].push_back(rel(at(k, kGateTracePartial)));
        if (at(k, kGateTraceBarrier)) col[9].push_back(rel(at(k, kGateTraceBarrier)));
        if (at(k, kGateTraceReduced)) col[10].push_back(rel(at(k, kGateTraceReduced)));
        col[11].push_back((at(k, kGateTraceEndNs) - t0) / 1000.0);
        span = std::max(span, col[11].back());
        col[12].push_back(wv[5].back());
        spread.push_back(wv[4].back() - wv[4].front());
        for (int wi = 0; wi < warps; ++wi) {  // the warp's last item: landed → computed
          const uint64_t* t5 =
              &tr[static_cast<size_t>(k) * kGateTraceSlots + kGateTraceWarp + wi * kGateTraceWarpSlots];
          last_item.push_back((static_cast<double>(t5[4]) - static_cast<double>(t5[5])) / ghz / 1000.0);
        }
        ends.push_back({col[7].back(), k});
      }
      std::printf("[timeline] hints %d rep %d: %d CTAs, SM clock %.3f GHz; events %.2f µs, CTA span (globaltimer) %.2f "
                  "µs; µs after the first CTA start (min / p10 / p50 / p90 / max over CTAs)\n",
                  hints, rep, ctas, ghz, ms * 1000.0, span);
      auto row = [](const char* nm, std::vector<double> v) {
        if (v.empty()) return;
        std::sort(v.begin(), v.end());
        auto q = [&](double p) { return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5)]; };
        std::printf("  %-16s %7.2f %7.2f %7.2f %7.2f %7.2f\n", nm, v.front(), q(0.1), q(0.5), q(0.9), v.back());
      };
      for (int j = 0; j < kCols; ++j) row(names[j], col[j]);
      row("warp spread", spread);
      row("last item (µs)", last_item);
      std::sort(ends.begin(), ends.end());
      std::printf("  earliest streams done (CTA:SM @µs):");
      for (size_t i = 0; i < std::min<size_t>(6, ends.size()); ++i)
        std::printf(" %d:%llu@%.2f", ends[i].second, static_cast<unsigned long long>(at(ends[i].second, kGateTraceSm)),
                    ends[i].first);
      std::printf("\n  latest:");
      for (size_t i = ends.size() > 6 ? ends.size() - 6 : 0; i < ends.size(); ++i)
        std::printf(" %d:%llu@%.2f", ends[i].second, static_cast<unsigned long long>(at(ends[i].second, kGateTraceSm)),
                    ends[i].first);
      std::printf("\n");
      std::vector<double> sm_end(1024, -1.0);
      for (const auto& [t, k] : ends) {
        const uint64_t sm = at(k, kGateTraceSm);
        if (sm < sm_end.size()) sm_end[sm] = std::max(sm_end[sm], t);
      }
      sm_end_reps.push_back(sm_end);
    }
    // Are the late SMs the same ones in every rep (a systematic per-SM bandwidth difference) or not (noise)?
    for (size_t a = 0; a + 1 < sm_end_reps.size(); ++a) {
      std::vector<std::pair<double, double>> p;
      for (size_t sm = 0; sm < sm_end_reps[a].size(); ++sm)
        if (sm_end_reps[a][sm] >= 0 && sm_end_reps[a + 1][sm] >= 0)
          p.push_back({sm_end_reps[a][sm], sm_end_reps[a + 1][sm]});
      double ma = 0, mb = 0;
      for (auto [u, v] : p) ma += u, mb += v;
      ma /= static_cast<double>(p.size());
      mb /= static_cast<double>(p.size());
      double sab = 0, saa = 0, sbb = 0;
      for (auto [u, v] : p) sab += (u - ma) * (v - mb), saa += (u - ma) * (u - ma), sbb += (v - mb) * (v - mb);
      std::printf("[timeline] hints %d: SM streams-done correlation, rep %zu vs %zu: %.2f over %zu SMs\n", hints, a,
                  a + 1, saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : 0.0, p.size());
    }
    detail::driver().cuEventDestroy(ev0);
    detail::driver().cuEventDestroy(ev1);
  }
}

TEST_F(GroupRmsNormGateGpu, BackwardIsDeterministic) {
  const Case c{2, 4096, 2048, 4};
  const Data d = make_data(c, 0x86);
  const Bwd a = run_bwd(d), b = run_bwd(d);
  EXPECT_TRUE(bitwise_equal("dx", a.dx, b.dx));
  EXPECT_TRUE(bitwise_equal("dgate", a.dgate, b.dgate));
  EXPECT_TRUE(bitwise_equal("dweight", a.dweight, b.dweight));
}

TEST_F(GroupRmsNormGateGpu, ExplicitWorkspace) {
  for (const Case& c : {Case{2, 300, 2048, 4}, Case{2, 300, 2048, 4, DType::bf16, DType::f32, true, true}}) {
    SCOPED_TRACE(name(c));
    const Data d = make_data(c, 0x87);
    const int64_t elems = group_rms_norm_gate_bwd_workspace_elems(rt(), d.M(), c.dim, static_cast<int>(c.G));
    ASSERT_GT(elems, 0);
    const Bwd own = run_bwd(d), given = run_bwd(d, elems);
    EXPECT_TRUE(given.guards_ok);
    EXPECT_TRUE(bitwise_equal("dweight", given.dweight, own.dweight));
    EXPECT_TRUE(bitwise_equal("dx", given.dx, own.dx));
    EXPECT_TRUE(bitwise_equal("dgate", given.dgate, own.dgate));
  }
}

}  // namespace
}  // namespace kiln::test
