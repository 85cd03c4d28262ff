// tests/gpu/rms_norm_block_quant_test.cpp — rms_norm_block_quant_fwd on the GPU against the CPU reference.
//
// Procedure (spec linghe-kernels.md §2, §3, §14.2): rms_inv is compared with a double-accumulating reference within a
// few ulps (the GPU sums in its own order). The fp8 codes and scales are then required to match BIT-EXACTLY a
// reference computed from the GPU's own rms_inv (mode 1: from the rms_inv_in we pass), because given r every later
// step is deterministic: y = (x·r)·w in fp32, amax, the scale rule, a correctly rounded division and a
// round-to-nearest-even saturating e4m3 conversion. Outputs and guard zones around them are poisoned before each run,
// so unwritten elements and out-of-bounds writes are caught.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "kiln/ops/rms_norm.hpp"
#include "reference/rms_norm.hpp"
#include "runtime/driver.hpp"
#include "test_util.hpp"

namespace kiln::detail {
// ops/rms_norm_block_quant.cpp: forces a search-space point for (N, mode); false outside the space.
bool rms_norm_block_quant_force_config(int64_t N, int mode, int warps, int col_blocks, int prefetch, int stages,
                                       int overlap, int exchange);
// ops/rms_norm_block_quant.cpp: while > 0, the stream kernel runs on this many CTAs (capped at one wave and the items).
extern std::atomic<int> rms_norm_block_quant_stream_grid;
}  // namespace kiln::detail

namespace kiln::test {
namespace {

constexpr float kDefaultEps = 1e-6f;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Host side of one call's inputs. x is kept dense [M, N]; on the device its rows are row_stride elements apart,
// the gap filled with NaN so a kernel that reads past N poisons its row.
struct Input {
  int64_t M = 0, N = 0, row_stride = 0;
  std::vector<float> x;  // [M, N], bf16 values
  std::vector<float> w;  // [N], w_dtype values
  DType w_dtype = DType::bf16;
};

Input random_input(int64_t M, int64_t N, uint64_t seed, DType w_dtype = DType::bf16, int64_t row_stride = 0) {
  Input in;
  in.M = M;
  in.N = N;
  in.row_stride = row_stride ? row_stride : N;
  in.w_dtype = w_dtype;
  in.x = randn(M * N, mix_seed({seed, 1}));
  round_to(DType::bf16, in.x);
  in.w = randn(N, mix_seed({seed, 2}));
  round_to(w_dtype, in.w);
  return in;
}

struct RunSpec {
  int mode = 2;
  bool round_scale = false;
  float eps = kDefaultEps;
  bool with_rms_inv = true;                          // modes 0, 2: ask for rms_inv
  const std::vector<float>* rms_inv_in = nullptr;    // mode 1
  uint8_t poison = DeviceBuffer::kPoison;
  int calls = 1;  // calls of the op on the same buffers before the outputs are read (the last one's are checked)
};

struct Result {
  std::vector<uint8_t> q, qT;
  std::vector<float> q_scale, qT_scale, rms_inv;
  std::vector<std::string> written_outside;  // outputs whose guard zones were overwritten
  uint64_t launches = 0;
};

bool rowwise(int mode) { return mode != 1; }
bool transposed(int mode) { return mode != 0; }

class RmsNormBlockQuantTest : public GpuTest {
 public:  // (check_points below runs them too)
  static Result run(const Input& in, const RunSpec& spec) {
    Runtime& r = rt();
    const int64_t M = in.M, N = in.N, tblocks = (M + 127) / 128;

    std::vector<float> x_padded(static_cast<size_t>(M * in.row_stride), kNaN);
    for (int64_t m = 0; m < M; ++m) std::copy_n(&in.x[m * N], N, &x_padded[m * in.row_stride]);
    DeviceBuffer x_buf(r, x_padded.size() * 2), w_buf(r, static_cast<size_t>(N) * dtype_size(in.w_dtype));
    x_buf.upload(encode(DType::bf16, x_padded));
    w_buf.upload(encode(in.w_dtype, in.w));

    const bool row = rowwise(spec.mode), tr = transposed(spec.mode);
    DeviceBuffer q(r, row ? M * N : 0), q_scale(r, row ? (N / 128) * M * 4 : 0),
        rms_inv(r, row && spec.with_rms_inv ? M * 4 : 0), qT(r, tr ? N * M : 0), qT_scale(r, tr ? tblocks * N * 4 : 0);
    for (DeviceBuffer* b : {&q, &q_scale, &rms_inv, &qT, &qT_scale}) b->poison(spec.poison);

    RmsNormBlockQuantOutputs out;
    if (row) {
      out.q = q.ref(DType::e4m3, {M, N});
      out.q_scale = q_scale.ref(DType::f32, {N / 128, M});
      if (spec.with_rms_inv) out.rms_inv = rms_inv.ref(DType::f32, {M});
    }
    if (tr) {
      out.qT = qT.ref(DType::e4m3, {N, M});
      out.qT_scale = qT_scale.ref(DType::f32, {tblocks, N});
    }
    DeviceBuffer rin_buf;
    TensorRef rin;
    if (spec.mode == 1) {
      rin_buf = DeviceBuffer(r, M * 4);
      rin_buf.upload(*spec.rms_inv_in);
      rin = rin_buf.ref(DType::f32, {M});
    }
    RmsNormBlockQuantOptions opts;
    opts.eps = spec.eps;
    opts.round_scale = spec.round_scale;
    opts.output_mode = spec.mode;

    uint64_t launches_before = r.stats().launches;
    for (int c = 0; c < spec.calls; ++c) {
      launches_before = r.stats().launches;
      rms_norm_block_quant_fwd(r, TensorRef::strided_2d(x_buf.data(), DType::bf16, M, N, in.row_stride),
                               w_buf.ref(in.w_dtype, {N}), rin, out, opts, nullptr);
    }
    synchronize();

    Result res;
    res.launches = r.stats().launches - launches_before;
    if (row) {
      res.q = q.download<uint8_t>(M * N);
      res.q_scale = q_scale.download<float>((N / 128) * M);
      if (spec.with_rms_inv) res.rms_inv = rms_inv.download<float>(M);
    }
    if (tr) {
      res.qT = qT.download<uint8_t>(N * M);
      res.qT_scale = qT_scale.download<float>(tblocks * N);
    }
    const std::pair<const char*, const DeviceBuffer*> named[] = {
        {"q", &q}, {"q_scale", &q_scale}, {"rms_inv", &rms_inv}, {"qT", &qT}, {"qT_scale", &qT_scale}};
    for (const auto& [name, buf] : named) {
      if (!buf->guards_intact()) res.written_outside.push_back(name);
    }
    return res;
  }

  // Full check of one run: guards, rms_inv against the double reference, then codes and scales bit-exact against
  // the reference computed from the r the kernel used.
  static void check(const Input& in, const RunSpec& spec, const Result& res) {
    const int64_t M = in.M, N = in.N;
    EXPECT_TRUE(res.written_outside.empty()) << "written outside their bounds: "
                                             << ::testing::PrintToString(res.written_outside);
    if (rowwise(spec.mode) && spec.with_rms_inv) {
      const std::vector<float> r_ref = ref::rms_inv(in.x, M, N, spec.eps);
      const std::vector<ref::RmsInvExpect> expect = ref::rms_inv_expectations(in.x, M, N);
      EXPECT_TRUE(all_equal(
          "rms_inv", M, [&](int64_t m) { return ref::rms_inv_agrees(expect[m], res.rms_inv[m], r_ref[m]); },
          [&](int64_t m) {
            return "rms_inv[" + std::to_string(m) + "]: got " + show(res.rms_inv[m]) + ", reference " + show(r_ref[m]);
          }));
    }
    const std::vector<float>& r = spec.mode == 1 ? *spec.rms_inv_in : res.rms_inv;
    ASSERT_EQ(static_cast<int64_t>(r.size()), M) << "no r to build the quantization reference from";
    const ref::BlockQuantOutputs want =
        ref::rms_norm_block_quant(in.x, in.w, r, M, N, spec.round_scale, rowwise(spec.mode), transposed(spec.mode));
    auto y = [&](int64_t m, int64_t n) { return (in.x[m * N + n] * r[m]) * in.w[n]; };

    // Scales, bit-exact: element i is name[a = i / inner, b = i % inner].
    auto scales_equal = [](const char* what, const char* name, const char* a, const char* b, int64_t count,
                           int64_t inner, const std::vector<float>& got, const std::vector<float>& exp) {
      return all_equal(
          what, count, [&](int64_t i) { return std::bit_cast<uint32_t>(got[i]) == std::bit_cast<uint32_t>(exp[i]); },
          [&](int64_t i) {
            return std::string(name) + "[" + a + "=" + std::to_string(i / inner) + ", " + b + "=" +
                   std::to_string(i % inner) + "]: got " + show(got[i]) + ", want " + show(exp[i]);
          });
    };
    // Codes of the [M, N] layout (tr false: q) or the [N, M] one (tr: qT), reported with y and their block's scale.
    auto codes_match = [&](const char* what, const char* name, bool tr, const std::vector<uint8_t>& got,
                           const std::vector<uint8_t>& exp, const std::vector<float>& scale) {
      const int64_t inner = tr ? M : N;
      return all_equal(
          what, M * N, [&](int64_t i) { return codes_equal(got[i], exp[i]); },
          [&](int64_t i) {
            const int64_t o = i / inner, c = i % inner, m = tr ? c : o, n = tr ? o : c;
            return std::string(name) + (tr ? "[n=" : "[m=") + std::to_string(o) + (tr ? ", m=" : ", n=") +
                   std::to_string(c) + "]: got " + show_code(got[i]) + ", want " + show_code(exp[i]) + "; y " +
                   show(y(m, n)) + ", scale " + show(scale[tr ? (m / 128) * N + n : (n / 128) * M + m]);
          });
    };
    if (rowwise(spec.mode)) {
      EXPECT_TRUE(scales_equal("q_scale [N/128, M]", "q_scale", "j", "m", (N / 128) * M, M, res.q_scale, want.q_scale));
      EXPECT_TRUE(codes_match("q [M, N]", "q", false, res.q, want.q, want.q_scale));
    }
    if (transposed(spec.mode)) {
      EXPECT_TRUE(scales_equal("qT_scale [ceil(M/128), N]", "qT_scale", "i", "n",
                               static_cast<int64_t>(want.qT_scale.size()), N, res.qT_scale, want.qT_scale));
      EXPECT_TRUE(codes_match("qT [N, M]", "qT", true, res.qT, want.qT, want.qT_scale));
    }
  }

  // Runs and checks; mode 1 gets the reference r as rms_inv_in.
  static Result run_and_check(const Input& in, RunSpec spec) {
    std::vector<float> r_in;
    if (spec.mode == 1) {
      r_in = ref::rms_inv(in.x, in.M, in.N, spec.eps);
      spec.rms_inv_in = &r_in;
    }
    Result res = run(in, spec);
    check(in, spec, res);
    return res;
  }

  // e4m3 codes match when equal, or when both are NaN (0x7F and 0xFF are both NaN).
  static bool codes_equal(uint8_t a, uint8_t b) { return a == b || (e4m3_is_nan(a) && e4m3_is_nan(b)); }
};

// ---- every shape -----------------------------------------------------------------------------------------------

struct QuantCase {
  int64_t N, M;
  int mode;
  bool round_scale;
};

void PrintTo(const QuantCase& c, std::ostream* os) {
  *os << "N=" << c.N << " M=" << c.M << " mode=" << c.mode << " round_scale=" << c.round_scale;
}

std::vector<QuantCase> shape_cases() {
  std::vector<QuantCase> cases;
  // Mode 2 with power-of-two scales over the full grid of hidden sizes and token counts.
  for (int64_t N : {128, 2048, 4096, 7168}) {
    for (int64_t M : {0, 1, 7, 128, 1000, 8192}) cases.push_back({N, M, 2, true});
  }
  // The other mode / scale combinations on a subset that keeps the smallest and largest N, M = 0, a single row,
  // partial token blocks, a whole block and one large shape.
  const std::pair<int64_t, int64_t> subset[] = {{128, 0},   {128, 1000}, {2048, 7},   {2048, 8192},
                                                {4096, 128}, {7168, 1},   {7168, 1000}};
  const std::pair<int, bool> combos[] = {{2, false}, {0, false}, {0, true}, {1, false}, {1, true}};
  for (const auto& [mode, rs] : combos) {
    for (const auto& [N, M] : subset) cases.push_back({N, M, mode, rs});
  }
  return cases;
}

class RmsNormBlockQuantShapes : public RmsNormBlockQuantTest, public ::testing::WithParamInterface<QuantCase> {};

TEST_P(RmsNormBlockQuantShapes, MatchesReference) {
  const QuantCase c = GetParam();
  const uint64_t seed = mix_seed({0x5a, static_cast<uint64_t>(c.N), static_cast<uint64_t>(c.M),
                                  static_cast<uint64_t>(c.mode), c.round_scale});
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Input in = random_input(c.M, c.N, seed);
  RunSpec spec;
  spec.mode = c.mode;
  spec.round_scale = c.round_scale;
  const Result res = run_and_check(in, spec);
  if (c.M == 0) {
    EXPECT_EQ(res.launches, 0u) << "M = 0 must launch nothing";
  }
}

INSTANTIATE_TEST_SUITE_P(Grid, RmsNormBlockQuantShapes, ::testing::ValuesIn(shape_cases()),
                         [](const ::testing::TestParamInfo<QuantCase>& i) {
                           return "N" + std::to_string(i.param.N) + "_M" + std::to_string(i.param.M) + "_mode" +
                                  std::to_string(i.param.mode) + "_rs" + std::to_string(i.param.round_scale);
                         });

// ---- special values ----------------------------------------------------------------------------------------------

// N = 2048, M = 700 (five whole token blocks and a partial one). Single special rows in the first block; whole
// token blocks of one kind after it, so the transposed scales see zero, tiny and huge blocks too.
Input special_input(uint64_t seed) {
  const int64_t M = 700, N = 2048;
  Input in = random_input(M, N, seed);
  const std::vector<float> g = randn(M * N, mix_seed({seed, 3}));
  auto fill_row = [&](int64_t m, float scale) {
    for (int64_t k = 0; k < N; ++k) in.x[m * N + k] = scale * g[m * N + k];
  };
  auto fill_rows = [&](int64_t m0, int64_t m1, float scale) {
    for (int64_t m = m0; m < m1; ++m) fill_row(m, scale);
  };
  const float bf16_max = bf16_to_float(0x7F7F);  // ≈ 3.39e38
  fill_row(3, 0.0f);
  fill_row(5, 1e30f);     // x² overflows fp32: r = 0
  fill_row(6, 1e17f);     // large, but Σx² stays finite in fp32
  fill_row(7, 1e-30f);    // x² underflows: r = 1/sqrt(eps)
  fill_row(8, 1e-36f);    // y below the 1e-30 scale floor: subnormal fp8 codes
  in.x[9 * N + 17] = kNaN;
  in.x[10 * N + 200] = kInf;
  in.x[11 * N + 1000] = -kInf;
  in.x[11 * N + 1001] = kNaN;
  fill_row(12, kNaN);
  in.x[13 * N + 64] = 1e30f;  // one overflowing square in an ordinary row
  fill_row(14, 0.0f);
  in.x[14 * N + 5] = 1.0f;  // a single non-zero element
  for (int64_t k = 0; k < N; ++k) in.x[15 * N + k] = 0.5f;
  for (int64_t k = 0; k < N; ++k) in.x[16 * N + k] = (k % 2) ? bf16_max : -bf16_max;
  fill_rows(128, 256, 0.0f);
  fill_rows(256, 384, 1e-30f);
  fill_rows(384, 512, 1e-36f);
  fill_rows(512, 640, 1e30f);
  fill_rows(640, 700, 1e17f);
  round_to(DType::bf16, in.x);
  return in;
}

class RmsNormBlockQuantSpecialValues : public RmsNormBlockQuantTest,
                                       public ::testing::WithParamInterface<std::pair<int, bool>> {};

TEST_P(RmsNormBlockQuantSpecialValues, MatchesReference) {
  const auto [mode, rs] = GetParam();
  const uint64_t seed = mix_seed({0x5b, static_cast<uint64_t>(mode), rs});
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Input in = special_input(seed);
  RunSpec spec;
  spec.mode = mode;
  spec.round_scale = rs;
  spec.eps = 1e-5f;
  run_and_check(in, spec);
}

INSTANTIATE_TEST_SUITE_P(Modes, RmsNormBlockQuantSpecialValues,
                         ::testing::Values(std::pair{0, false}, std::pair{0, true}, std::pair{1, false},
                                           std::pair{1, true}, std::pair{2, false}, std::pair{2, true}),
                         [](const ::testing::TestParamInfo<std::pair<int, bool>>& i) {
                           return "mode" + std::to_string(i.param.first) + "_rs" + std::to_string(i.param.second);
                         });

// ---- forced search-space points -----------------------------------------------------------------------------

// A search-space point the tuner may pick: (N, mode) and the config {warps, col_blocks, prefetch, stages, overlap,
// exchange}, run at M tokens (unused where a test brings its own input).
struct SpacePoint {
  int64_t N;
  int mode, warps, col_blocks, prefetch, stages, overlap, exchange;
  int64_t M;
};

std::string describe(const SpacePoint& p) {
  return "N " + std::to_string(p.N) + " M " + std::to_string(p.M) + " mode " + std::to_string(p.mode) + " warps " +
         std::to_string(p.warps) + " col_blocks " + std::to_string(p.col_blocks) + " prefetch " +
         std::to_string(p.prefetch) + " stages " + std::to_string(p.stages) + " overlap " + std::to_string(p.overlap) +
         " exchange " + std::to_string(p.exchange);
}

// The forced-config loop of the tests below: forces each point in turn (a point outside the search space fails the
// test and ends the loop), runs body(point, index) under it, and restores the heuristic.
template <class Body>
void for_each_point(const std::vector<SpacePoint>& points, Body&& body) {
  for (size_t i = 0; i < points.size(); ++i) {
    const SpacePoint& p = points[i];
    SCOPED_TRACE(describe(p));
    if (!detail::rms_norm_block_quant_force_config(p.N, p.mode, p.warps, p.col_blocks, p.prefetch, p.stages,
                                                   p.overlap, p.exchange)) {
      ADD_FAILURE() << "not a search-space point: " << describe(p);
      break;
    }
    try {
      body(p, i);
    } catch (const std::exception& e) {  // (a device fault ends the context: name the point, stop)
      ADD_FAILURE() << describe(p) << ": " << e.what();
      break;
    }
  }
  EXPECT_TRUE(detail::rms_norm_block_quant_force_config(0, 0, 0, 0, 0, 0, 0, 0));
}

// The special values (N = 2048) through each forced point in its mode, in both scale modes.
void check_special_values(const std::vector<SpacePoint>& points, uint64_t seed) {
  for_each_point(points, [&](const SpacePoint& p, size_t i) {
    for (bool rs : {false, true}) {
      SCOPED_TRACE("special values, round_scale " + std::to_string(rs));
      const Input in = special_input(mix_seed({seed, static_cast<uint64_t>(i), rs}));
      RunSpec spec;
      spec.mode = p.mode;
      spec.round_scale = rs;
      spec.eps = 1e-5f;
      RmsNormBlockQuantTest::run_and_check(in, spec);
    }
  });
}

// The same special values through every mode-0 kernel (the default one above; here the row8 kernel and the pipe
// kernel with weights loaded and in registers, one or two warps a row): all-NaN, inf, overflowing and tiny rows
// reach the scale rule.
TEST_F(RmsNormBlockQuantTest, SpecialValuesEveryMode0Kernel) {
  check_special_values({{2048, 0, 8, 4, 1, 0, 0, 0, 700},
                        {2048, 0, 8, 4, 0, 3, 0, 0, 700},
                        {2048, 0, 16, 4, 1, 2, 0, 0, 700},
                        {2048, 0, 4, 4, 1, 4, 0, 0, 700},
                        {2048, 0, 8, 4, 1, 2, 0, 1, 700},
                        {2048, 0, 16, 4, 0, 3, 0, 1, 700}},
                       0x64);
}

// ---- layouts, options and contracts ----------------------------------------------------------------------------

// Rows 16-byte aligned but N + 64 elements apart; the gap holds NaN, so reading it would poison the row.
TEST_F(RmsNormBlockQuantTest, StridedX) {
  for (const auto& [mode, rs] : {std::pair{2, false}, std::pair{1, true}, std::pair{0, true}}) {
    SCOPED_TRACE("mode " + std::to_string(mode) + " round_scale " + std::to_string(rs));
    const Input in = random_input(1000, 2048, mix_seed({0x5c, static_cast<uint64_t>(mode)}), DType::bf16, 2048 + 64);
    RunSpec spec;
    spec.mode = mode;
    spec.round_scale = rs;
    run_and_check(in, spec);
  }
}

// The stream kernel's LEAN variant (overlap 3; 163: with FIRST and START) on the special-value rows (NaN / inf / overflowing / tiny rows and
// whole blocks: its column maxima take a tree of fmaxf, not a chain), on strided rows (N + 64 apart, NaN in the gap)
// and with fp32 weights, both round_scale values; one and two blocks an item.
TEST_F(RmsNormBlockQuantTest, StreamLeanSpecialStridedFp32) {
  const std::vector<SpacePoint> lean = {{2048, 2, 16, 2, 1, 4, 3, 3, 700}, {2048, 2, 16, 1, 1, 2, 3, 3, 700},
                                        {2048, 2, 16, 2, 1, 4, 163, 3, 700}};
  check_special_values(lean, 0x64);
  for_each_point(lean, [](const SpacePoint& p, size_t i) {
    for (bool rs : {false, true}) {
      SCOPED_TRACE("strided, round_scale " + std::to_string(rs));
      const Input in = random_input(1000, p.N, mix_seed({0x65, i, rs}), DType::bf16, p.N + 64);
      RunSpec spec;
      spec.mode = 2;
      spec.round_scale = rs;
      RmsNormBlockQuantTest::run_and_check(in, spec);
      SCOPED_TRACE("fp32 weight");
      const Input inw = random_input(1000, p.N, mix_seed({0x66, i, rs}), DType::f32);
      RmsNormBlockQuantTest::run_and_check(inw, spec);
    }
  });
}

// An fp32 weight is read as is (its values are not bf16-representable here).
TEST_F(RmsNormBlockQuantTest, Fp32Weight) {
  for (int mode : {0, 1, 2}) {
    SCOPED_TRACE("mode " + std::to_string(mode));
    const Input in = random_input(300, 4096, mix_seed({0x5d, static_cast<uint64_t>(mode)}), DType::f32);
    RunSpec spec;
    spec.mode = mode;
    run_and_check(in, spec);
  }
}

// fp32 weights through the mode-0 pipe kernel, loaded every row and held in registers.
TEST_F(RmsNormBlockQuantTest, Fp32WeightPipe) {
  for_each_point({{2048, 0, 8, 4, 0, 3, 0, 0, 3001}, {2048, 0, 8, 4, 1, 3, 0, 0, 3001}}, [](const SpacePoint& p, size_t) {
    const Input in = random_input(p.M, p.N, mix_seed({0x63, static_cast<uint64_t>(p.prefetch)}), DType::f32);
    RunSpec spec;
    spec.mode = 0;
    spec.round_scale = p.prefetch == 1;
    run_and_check(in, spec);
  });
}

// rms_inv is an optional output: leaving it out changes nothing else.
TEST_F(RmsNormBlockQuantTest, RmsInvIsOptional) {
  for (int mode : {0, 2}) {
    SCOPED_TRACE("mode " + std::to_string(mode));
    const Input in = random_input(1000, 2048, mix_seed({0x5e, static_cast<uint64_t>(mode)}));
    RunSpec spec;
    spec.mode = mode;
    spec.round_scale = true;
    const Result with = run_and_check(in, spec);
    spec.with_rms_inv = false;
    const Result without = run(in, spec);
    EXPECT_TRUE(without.written_outside.empty());
    EXPECT_TRUE(bitwise_equal("q", without.q, with.q));
    EXPECT_TRUE(bitwise_equal("q_scale", without.q_scale, with.q_scale));
    EXPECT_TRUE(bitwise_equal("qT", without.qT, with.qT));
    EXPECT_TRUE(bitwise_equal("qT_scale", without.qT_scale, with.qT_scale));
  }
}

// Two runs with different poison bytes must give identical outputs: an element the kernel never writes would keep
// its poison and differ (a single run cannot tell an unwritten 0x55 from a computed 0x55 code).
TEST_F(RmsNormBlockQuantTest, EveryOutputElementIsWritten) {
  for (const auto& [N, M] : {std::pair<int64_t, int64_t>{2048, 1000}, {128, 7}, {7168, 130}}) {
    for (int mode : {0, 1, 2}) {
      SCOPED_TRACE("N " + std::to_string(N) + " M " + std::to_string(M) + " mode " + std::to_string(mode));
      const Input in = random_input(M, N, mix_seed({0x5f, static_cast<uint64_t>(N), static_cast<uint64_t>(mode)}));
      const std::vector<float> r_in = ref::rms_inv(in.x, M, N, kDefaultEps);
      RunSpec spec;
      spec.mode = mode;
      spec.round_scale = mode == 1;
      spec.rms_inv_in = &r_in;
      spec.poison = 0x55;
      const Result a = run(in, spec);
      spec.poison = 0xAA;
      const Result b = run(in, spec);
      EXPECT_TRUE(bitwise_equal("q", a.q, b.q));
      EXPECT_TRUE(bitwise_equal("q_scale", a.q_scale, b.q_scale));
      EXPECT_TRUE(bitwise_equal("qT", a.qT, b.qT));
      EXPECT_TRUE(bitwise_equal("qT_scale", a.qT_scale, b.qT_scale));
      EXPECT_TRUE(bitwise_equal("rms_inv", a.rms_inv, b.rms_inv));
      EXPECT_TRUE(a.written_outside.empty() && b.written_outside.empty());
    }
  }
}

// The recomputation flow: the forward's row-wise pass (mode 0) stores rms_inv; the backward rebuilds only the
// transposed copy from it (mode 1), with no recomputed RMS.
TEST_F(RmsNormBlockQuantTest, Mode1FromMode0RmsInv) {
  const Input in = random_input(1000, 7168, mix_seed({0x60}));
  RunSpec fwd;
  fwd.mode = 0;
  fwd.round_scale = true;
  const Result row = run_and_check(in, fwd);
  RunSpec recompute;
  recompute.mode = 1;
  recompute.round_scale = true;
  recompute.rms_inv_in = &row.rms_inv;
  check(in, recompute, run(in, recompute));
}

// Forces every point in turn and checks it bit-exactly on random input (round_scale on for two points in three).
void check_points(const std::vector<SpacePoint>& points, uint64_t seed) {
  for_each_point(points, [&](const SpacePoint& p, size_t i) {
    const Input in = random_input(p.M, p.N, mix_seed({seed, static_cast<uint64_t>(i)}));
    RunSpec spec;
    spec.mode = p.mode;
    spec.round_scale = i % 3 != 2;
    RmsNormBlockQuantTest::run_and_check(in, spec);
  });
}

// Search-space points of modes 1 and 2, forced: every structural variant of the persistent ring kernel (one slot,
// two and more, overlap, 8 / 16 warps, cluster barrier / pushes, no cluster at N = 128, multi-block slices, RELOAD)
// and the tile kernel, at token counts where every cluster loops over several tiles and the last tile is partial
// (M % 16 != 0 too: the byte-wise qT tail). One or two points a variant (each point is an NVRTC compile).
TEST_F(RmsNormBlockQuantTest, EverySearchSpacePoint) {
  const std::vector<SpacePoint> points = {
      {2048, 2, 8, 2, 0, 2, 0, 1, 8000},   // (the N = 2048 round_scale 1 default before session 6)
      {2048, 2, 16, 1, 0, 1, 0, 1, 8000},  // one slot (round_scale 0's default before the stream kernel)
      {2048, 2, 8, 1, 0, 1, 0, 0, 8000},
      {2048, 2, 8, 1, 0, 2, 0, 1, 8000},
      {2048, 2, 8, 1, 0, 2, 1, 0, 8000},   // overlap
      {2048, 2, 16, 1, 0, 4, 1, 1, 8000},
      {128, 2, 8, 1, 0, 2, 0, 0, 50001},   // no cluster
      {128, 2, 16, 1, 0, 4, 1, 0, 50001},
      {2048, 2, 16, 2, 0, 4, 1, 1, 8000},
      {2048, 2, 8, 4, 0, 5, 0, 0, 8000},
      {2048, 2, 16, 4, 0, 6, 0, 1, 8000},
      {7168, 2, 16, 4, 0, 4, 0, 1, 4003},
      {7168, 2, 8, 4, 0, 6, 0, 0, 4003},
      {2048, 2, 8, 2, 1, 2, 0, 1, 8000},   // RELOAD: every block through the ring twice
      {2048, 2, 8, 8, 1, 3, 0, 1, 8000},
      {7168, 2, 8, 4, 1, 2, 0, 1, 4003},   // (N = 7168, round_scale 1's default before the stream kernel)
      {7168, 2, 8, 8, 1, 2, 0, 1, 4003},   // (round_scale 0's, before the stream kernel)
      {7168, 2, 8, 7, 1, 3, 0, 1, 4003},
      {7168, 2, 8, 28, 1, 3, 0, 1, 4003},
      {2048, 1, 8, 1, 0, 1, 0, 0, 8000},   // mode 1 ring
      {2048, 1, 8, 1, 0, 4, 0, 0, 8000},
      {2048, 2, 0, 1, 0, 0, 0, 0, 8000},   // the non-persistent tile kernel
      {7168, 2, 0, 4, 0, 0, 0, 0, 4003},
  };
  check_points(points, 0x62);
  // Not points: overlap with 4 blocks a CTA needs 8 slots; shared memory; RELOAD needs a cluster.
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 2, 8, 4, 0, 4, 1, 0));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(7168, 2, 8, 4, 0, 6, 0, 1));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(7168, 2, 8, 56, 1, 2, 0, 0));
}

// The stream kernel (exchange 3, 16 warps; rms_norm_block_quant_stream.cuh: no clusters, one wave of CTAs over the
// (tile, chunk) items, row sums through a tagged global workspace), forced: every point of its space (1 or 2 blocks
// an item kept in their ring slots, slots for two items or one more) at N = 2048 (16 / 8 chunks a row), 7168 (56 /
// 28), 4096 (32 / 16) and 128 (one chunk: no exchange), at token counts where CTAs loop over several items, the last
// tile partial, M % 16 != 0 (1000, 4003, 50001: the byte-wise qT tail).
TEST_F(RmsNormBlockQuantTest, StreamKernelGlobalPoints) {
  const std::vector<SpacePoint> points = {
      {2048, 2, 16, 1, 1, 2, 1, 3, 8000},  {2048, 2, 16, 1, 1, 3, 1, 3, 1000},  {2048, 2, 16, 2, 1, 4, 1, 3, 8000},
      {2048, 2, 16, 2, 1, 5, 1, 3, 4003},  {7168, 2, 16, 1, 1, 2, 1, 3, 4003},  {7168, 2, 16, 2, 1, 4, 1, 3, 4003},
      {7168, 2, 16, 2, 1, 5, 1, 3, 1000},  {4096, 2, 16, 2, 1, 4, 1, 3, 3001},  {128, 2, 16, 1, 1, 2, 1, 3, 50001},
      {128, 2, 16, 1, 1, 3, 1, 3, 50001},
      // LEAN (overlap 3): the full-tile pass 2, constant cp.async waits, the refill advanced item by item
      {2048, 2, 16, 2, 1, 4, 3, 3, 8000},  {2048, 2, 16, 1, 1, 2, 3, 3, 1000},  {2048, 2, 16, 2, 1, 4, 3, 3, 4003},
      {7168, 2, 16, 2, 1, 4, 3, 3, 4003},  {7168, 2, 16, 1, 1, 2, 3, 3, 1000},  {4096, 2, 16, 2, 1, 4, 3, 3, 3001},
      {128, 2, 16, 1, 1, 2, 3, 3, 50001},  {2048, 2, 16, 2, 1, 4, 3, 3, 8192},  {7168, 2, 16, 2, 1, 4, 3, 3, 300},
      // FIRST + START (bits 32 + 128): only item 0's blocks requested, item 0 quantized before item 1's pass 1, the
      // other blocks requested after item 0's exchange; M = 300 at N = 7168: one item a CTA, M = 1: one row
      {2048, 2, 16, 2, 1, 4, 163, 3, 4003}, {7168, 2, 16, 2, 1, 4, 163, 3, 300}, {2048, 2, 16, 2, 1, 4, 163, 3, 8000},
      {7168, 2, 16, 2, 1, 4, 163, 3, 1000}, {2048, 2, 16, 2, 1, 4, 163, 3, 1},
  };
  check_points(points, 0x6c);
  // Not points: more than 2 blocks an item; the block in registers or reloaded; no overlap; mode 1; slots for fewer
  // than two items.
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(7168, 2, 16, 4, 1, 5, 1, 3));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 2, 16, 1, 0, 4, 1, 3));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 2, 16, 4, 2, 3, 0, 3));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 2, 16, 1, 1, 2, 0, 3));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 1, 16, 1, 1, 2, 1, 3));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 2, 16, 2, 1, 3, 1, 3));
}

// The stream kernel's TIGHT family of variants (config overlap bits 256 TIGHT, 512 SPLIT, 2048 FLAT, 16384 WLDG on
// LEAN; rms_norm_block_quant_stream.cuh), forced, at the same kinds of token counts (a test of its own: ctest
// runs it beside StreamKernelGlobalPoints). Without power-of-two scales (index % 3 == 2) the bits change nothing.
TEST_F(RmsNormBlockQuantTest, StreamKernelTightPoints) {
  const std::vector<SpacePoint> points = {
      // TIGHT (LEAN + bit 256): the refill from one pointer, pass 2 of full tiles from per-item bases and 32-bit
      // offsets; partial last tiles and M % 16 != 0 take the LEAN code inside it (index % 3 == 2: round_scale 0, which
      // runs TIGHT too from session 22: the column brackets from the column maxima, rows through MakeQuant<false>)
      {2048, 2, 16, 2, 1, 4, 259, 3, 8000}, {2048, 2, 16, 2, 1, 4, 259, 3, 4003}, {128, 2, 16, 1, 1, 2, 259, 3, 50001},
      {7168, 2, 16, 2, 1, 4, 259, 3, 4003}, {2048, 2, 16, 1, 1, 2, 259, 3, 1000}, {4096, 2, 16, 2, 1, 4, 259, 3, 3001},
      {7168, 2, 16, 1, 1, 2, 259, 3, 8192}, {2048, 2, 16, 2, 1, 4, 259, 3, 8192}, {2048, 2, 16, 2, 1, 4, 259, 3, 1},
      {7168, 2, 16, 2, 1, 4, 259, 3, 300},  {4096, 2, 16, 2, 1, 4, 259, 3, 8192},
      // TIGHT + SPLIT (bit 512): the full tiles' block barrier as an mbarrier arrive / wait around the row codes
      {128, 2, 16, 1, 1, 2, 771, 3, 50001}, {2048, 2, 16, 2, 1, 4, 771, 3, 8000}, {2048, 2, 16, 2, 1, 4, 771, 3, 4003},
      {2048, 2, 16, 2, 1, 4, 771, 3, 1},    {7168, 2, 16, 2, 1, 4, 771, 3, 4003}, {2048, 2, 16, 1, 1, 2, 771, 3, 8192},
      {128, 2, 16, 1, 1, 2, 771, 3, 1000},  {7168, 2, 16, 1, 1, 2, 771, 3, 300},
      // TIGHT + FLAT (bit 2048) and FLAT + SPLIT: predicated row-scale stores, the column maxima first
      {2048, 2, 16, 2, 1, 4, 2307, 3, 8000}, {128, 2, 16, 1, 1, 2, 2307, 3, 9},  {7168, 2, 16, 2, 1, 4, 2307, 3, 4003},
      {2048, 2, 16, 2, 1, 4, 2819, 3, 4003}, {128, 2, 16, 1, 1, 2, 2819, 3, 9},  {7168, 2, 16, 1, 1, 2, 2819, 3, 8192},
      // TIGHT + (FLAT +) SPLIT + WLDG (bit 16384): LEAN's weights, an LDG a block ahead
      {2048, 2, 16, 2, 1, 4, 17155, 3, 8000}, {7168, 2, 16, 2, 1, 4, 19203, 3, 4003}, {128, 2, 16, 1, 1, 2, 19203, 3, 3},
      {2048, 2, 16, 2, 1, 4, 19203, 3, 8192}, {7168, 2, 16, 1, 1, 2, 17155, 3, 1000}, {2048, 2, 16, 1, 1, 2, 19203, 3, 5},
      {4096, 2, 16, 2, 1, 4, 19203, 3, 3001}, {5120, 2, 16, 2, 1, 4, 19203, 3, 2048}, {4096, 2, 16, 2, 1, 4, 19203, 3, 7},
  };
  check_points(points, 0x7d);
}

// Session 14's codes' L2 hint on the stream default (config prefetch 1 | 16 QEL — the q / qT codes stored with an L2
// evict-last policy, the default from N = 4096 where M·N ≥ 2^25 —, 64 QEN — evict-normal, its control), forced on
// 19203 against the CPU reference: only cache hints, so the same bits. QEL runs where M·N ≥ 2^25 (7168 × 8000 / 5003
// / 8192, 4096 × 8200), else the same config without it (launch_stream drops it: 2048 × 4096); full tiles take the
// hinted code, partial last tiles and M % 16 != 0 the LEAN code (index % 3 == 2: round_scale 0, which from session 22
// runs the hinted TIGHT code too).
TEST_F(RmsNormBlockQuantTest, StreamKernelL2HintPoints) {
  const std::vector<SpacePoint> points = {
      {7168, 2, 16, 2, 17, 4, 19203, 3, 8000}, {7168, 2, 16, 2, 17, 4, 19203, 3, 5003},
      {2048, 2, 16, 2, 17, 4, 19203, 3, 8000}, {4096, 2, 16, 2, 17, 4, 19203, 3, 8200},
      {7168, 2, 16, 2, 65, 4, 19203, 3, 1000}, {2048, 2, 16, 2, 65, 4, 19203, 3, 1},
      {7168, 2, 16, 2, 17, 4, 19203, 3, 8192}, {2048, 2, 16, 2, 17, 4, 19203, 3, 4096},
  };
  check_points(points, 0x8e);
  // Not points: a hint on LEAN or on one block an item; round B's deleted hints.
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 2, 16, 2, 17, 4, 3, 3));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 2, 16, 1, 17, 2, 19203, 3));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 2, 16, 2, 5, 4, 19203, 3));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(7168, 2, 16, 2, 129, 4, 19203, 3));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(7168, 2, 16, 2, 1041, 4, 19203, 3));
  EXPECT_TRUE(detail::rms_norm_block_quant_force_config(0, 0, 0, 0, 0, 0, 0, 0));
}

// Session 15 (q2g): DISC1 (config prefetch 526353 = 1 | QEL 16 | 2048 | 524288: each CTA discards its last item's
// code lines from L2 at its start; the default with QEL from N = 7168) and its control DISCZ1 (786449: the same code,
// no line), forced on 19203 against the CPU reference: the discards drop only lines the call then writes whole (so
// the same bits). Each point runs the op three times on the same buffers and checks the last call, so the discards
// meet the previous calls' left-over (dirty, evict-last) lines at those addresses: a line discarded but not rewritten
// would read back stale (the poison) or break a guard zone. M % 128 == 0 discards (7168 × 8192, 4096 × 8192, 7168 ×
// 5120); 7168 × 8000 (M % 128 != 0) discards nothing; 2048 × 8192 (M·N < 2^25, here at round_scale 0: the LEAN code)
// runs without QEL and its bits; the host's default at 7168 × 8192 (DISC1) once more without a forced config.
TEST_F(RmsNormBlockQuantTest, StreamKernelDiscardPoints) {
  const std::vector<SpacePoint> points = {
      {7168, 2, 16, 2, 526353, 4, 19203, 3, 8192}, {4096, 2, 16, 2, 526353, 4, 19203, 3, 8192},
      {7168, 2, 16, 2, 526353, 4, 19203, 3, 8000}, {7168, 2, 16, 2, 786449, 4, 19203, 3, 8192},
      {7168, 2, 16, 2, 526353, 4, 19203, 3, 5120}, {2048, 2, 16, 2, 526353, 4, 19203, 3, 8192},
  };
  for_each_point(points, [&](const SpacePoint& p, size_t i) {
    const Input in = random_input(p.M, p.N, mix_seed({0x9d, static_cast<uint64_t>(i)}));
    RunSpec spec;
    spec.mode = p.mode;
    spec.round_scale = i != 5;
    spec.calls = 3;
    RmsNormBlockQuantTest::run_and_check(in, spec);
  });
  {
    SCOPED_TRACE("host default, 7168 x 8192");
    const Input in = random_input(8192, 7168, mix_seed({0x9d, 99}));
    RunSpec spec;
    spec.round_scale = true;
    spec.calls = 3;
    RmsNormBlockQuantTest::run_and_check(in, spec);
  }
  // Not points: the bits without QEL or without DISC1's one-item bit; session 15's deleted variants.
  for (int pf : {2049, 524305, 2065, 4113, 262161, 133137, 8209, 16401, 32785, 65553, 1048593, 3145745, 5242897})
    EXPECT_FALSE(detail::rms_norm_block_quant_force_config(7168, 2, 16, 2, pf, 4, 19203, 3)) << pf;
  EXPECT_TRUE(detail::rms_norm_block_quant_force_config(0, 0, 0, 0, 0, 0, 0, 0));
}

// The stream kernel on fewer CTAs than one wave writes the same bits as on the wave (forced through
// detail::rms_norm_block_quant_stream_grid), rms_inv included: an item's partial sums depend only on its (tile,
// chunk), and the exchange sums a tile's chunks in chunk order whatever CTA ran them. Both the host's grid
// (global_grid: where a CTA runs ≤ 4 items, the wave's most items a CTA on the fewest CTAs — at N = 2048 128 CTAs for
// M = 8192 and 4003, 126 for 8000 —, else the wave) and forced P = 128, 124, 120, 100 and 29 (many items a CTA, P ≥
// the chunks), for the default (19203) and LEAN (round_scale 0) at M % 16 != 0 and partial tiles; the first case's
// host grid also against the reference.
TEST_F(RmsNormBlockQuantTest, StreamGridSameBits) {
  struct GridReset {
    ~GridReset() { detail::rms_norm_block_quant_stream_grid.store(0); }
  } reset;
  struct Case {
    SpacePoint p;
    bool round_scale;
    int grid;
  };
  const std::vector<Case> cases = {
      {{2048, 2, 16, 2, 1, 4, 19203, 3, 8192}, true, 128}, {{2048, 2, 16, 2, 1, 4, 19203, 3, 4003}, true, 128},
      {{2048, 2, 16, 2, 1, 4, 19203, 3, 8000}, true, 120}, {{2048, 2, 16, 2, 1, 4, 3, 3, 1001}, false, 29},
      {{7168, 2, 16, 2, 1, 4, 19203, 3, 4003}, true, 128}, {{7168, 2, 16, 2, 1, 4, 19203, 3, 8192}, true, 124},
      {{7168, 2, 16, 2, 1, 4, 19203, 3, 999}, true, 29},   {{7168, 2, 16, 2, 1, 4, 3, 3, 300}, false, 128},
      {{4096, 2, 16, 2, 1, 4, 19203, 3, 3001}, true, 100},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE(describe(c.p) + " round_scale " + std::to_string(c.round_scale) + " grid " + std::to_string(c.grid));
    ASSERT_TRUE(detail::rms_norm_block_quant_force_config(c.p.N, 2, c.p.warps, c.p.col_blocks, c.p.prefetch,
                                                          c.p.stages, c.p.overlap, c.p.exchange));
    const Input in = random_input(c.p.M, c.p.N, mix_seed({0x7e, i}));
    RunSpec spec;
    spec.round_scale = c.round_scale;
    detail::rms_norm_block_quant_stream_grid.store(1 << 30);  // (capped: one wave)
    const Result wave = run(in, spec);
    detail::rms_norm_block_quant_stream_grid.store(0);  // the host's grid
    const Result host = i == 0 ? run_and_check(in, spec) : run(in, spec);
    detail::rms_norm_block_quant_stream_grid.store(c.grid);
    const Result forced = run(in, spec);
    detail::rms_norm_block_quant_stream_grid.store(0);
    auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
      return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](float x, float y) {
               return std::bit_cast<uint32_t>(x) == std::bit_cast<uint32_t>(y);
             });
    };
    using Named = std::pair<const char*, const Result*>;
    for (const auto& [what, got] : {Named{"host grid", &host}, Named{"forced grid", &forced}}) {
      SCOPED_TRACE(what);
      EXPECT_TRUE(got->written_outside.empty());
      EXPECT_TRUE(got->qT == wave.qT) << "qT differs";
      EXPECT_TRUE(got->q == wave.q) << "q differs";
      EXPECT_TRUE(same(got->qT_scale, wave.qT_scale)) << "qT_scale differs";
      EXPECT_TRUE(same(got->q_scale, wave.q_scale)) << "q_scale differs";
      EXPECT_TRUE(same(got->rms_inv, wave.rms_inv)) << "rms_inv differs";
    }
  }
  EXPECT_TRUE(detail::rms_norm_block_quant_force_config(0, 0, 0, 0, 0, 0, 0, 0));
}

// The tile kernel's GX points (exchange 5: clusters of K = 8 CTAs, the clusters' row sums through a tagged global
// workspace; rms_norm_block_quant_tile_gx_kernel) and the tile512 kernel (exchange 6: the same grid and exchange,
// the stream kernel's per-block code), forced: one and two blocks a CTA, S / K = 2 (N = 2048), 4 (4096), 7 (7168:
// the clusters of 8) and 3 clusters of 3 (N = 1152: S = 9); tile512 with clusters of up to 16 (one a row at N =
// 2048, 14 at 7168) and with two blocks a CTA (the second staged by cp.async); at token counts with a partial last
// tile and M % 16 != 0.
TEST_F(RmsNormBlockQuantTest, TileGlobalPoints) {
  check_points({{2048, 2, 0, 1, 0, 0, 0, 5, 8000},
                {7168, 2, 0, 1, 0, 0, 0, 5, 4003},
                {7168, 2, 0, 2, 0, 0, 0, 5, 1000},
                {4096, 2, 0, 1, 0, 0, 0, 5, 3001},
                {1152, 2, 0, 1, 0, 0, 0, 5, 1000},
                {2048, 2, 0, 1, 0, 0, 0, 6, 8000},
                {7168, 2, 0, 1, 0, 0, 0, 6, 4003},
                {4096, 2, 0, 1, 0, 0, 0, 6, 3001},
                {1152, 2, 0, 1, 0, 0, 0, 6, 1000},
                {2048, 2, 0, 1, 0, 0, 1, 6, 8000},   // clusters of 16: one a row, no workspace
                {7168, 2, 0, 1, 0, 0, 1, 6, 4003},   // clusters of 14
                {2048, 2, 0, 2, 0, 0, 0, 6, 8000},   // two blocks a CTA: one cluster of 8 a row
                {7168, 2, 0, 2, 0, 0, 0, 6, 4003},   // 4 clusters of 7
                {7168, 2, 0, 2, 0, 0, 1, 6, 1000}},  // 2 clusters of 14
               0x6e);
  // Not points: 8 chunks or fewer (exchange 5: one cluster holds the row), 4 blocks a CTA, two that do not divide
  // the row, a persistent config, mode 1.
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(1024, 2, 0, 1, 0, 0, 0, 5));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(128, 2, 0, 1, 0, 0, 0, 6));  // one chunk: no cluster
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(7168, 2, 0, 4, 0, 0, 0, 5));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(7168, 2, 0, 4, 0, 0, 0, 6));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(1152, 2, 0, 2, 0, 0, 0, 6));  // 9 blocks: not by 2
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 2, 8, 1, 0, 2, 0, 5));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 1, 0, 1, 0, 0, 0, 5));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 2, 0, 1, 0, 0, 1, 5));  // clusters of 16: tile512 only
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2688, 2, 0, 1, 0, 0, 1, 6));  // S = 21: 7 either way
}

// The GLOBAL exchanges captured in a CUDA graph (the stream kernel, the tile kernel's GX, tile512): a replay reuses the
// launch's tag, so under capture the row-sum workspace is cleared first (a memset node). Two replays with different
// x in the same buffers must each match the reference for their own x (stale partial sums of the first replay
// would give the second the first's r).
TEST_F(RmsNormBlockQuantTest, StreamGlobalInCudaGraph) {
  const std::vector<SpacePoint> points = {
      {2048, 2, 16, 1, 1, 2, 1, 3, 1000}, {2048, 2, 0, 1, 0, 0, 0, 5, 1000}, {2048, 2, 0, 1, 0, 0, 0, 6, 1000}};
  for_each_point(points, [](const SpacePoint& p, size_t) {
    const auto& d = detail::driver();
    const int64_t M = p.M, N = p.N;
    const Input a = random_input(M, N, mix_seed({0x6d, 1})), b = random_input(M, N, mix_seed({0x6d, 2}));
    Input b_with_a_weight = b;
    b_with_a_weight.w = a.w;
    Runtime& r = rt();
    DeviceBuffer x(r, M * N * 2), w(r, N * 2), q(r, M * N), q_scale(r, (N / 128) * M * 4), rms_inv(r, M * 4),
        qT(r, N * M), qT_scale(r, ((M + 127) / 128) * N * 4);
    w.upload(encode(DType::bf16, a.w));
    RmsNormBlockQuantOutputs out;
    out.q = q.ref(DType::e4m3, {M, N});
    out.q_scale = q_scale.ref(DType::f32, {N / 128, M});
    out.rms_inv = rms_inv.ref(DType::f32, {M});
    out.qT = qT.ref(DType::e4m3, {N, M});
    out.qT_scale = qT_scale.ref(DType::f32, {(M + 127) / 128, N});
    RmsNormBlockQuantOptions opts;
    opts.round_scale = true;
    opts.output_mode = 2;
    const TensorRef xt = x.ref(DType::bf16, {M, N}), wt = w.ref(DType::bf16, {N});
    x.upload(encode(DType::bf16, a.x));
    rms_norm_block_quant_fwd(r, xt, wt, {}, out, opts, nullptr);  // compiled and loaded before the capture
    synchronize();

    CUstream s = nullptr;
    ASSERT_EQ(d.cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    ASSERT_EQ(d.cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), CUDA_SUCCESS);
    rms_norm_block_quant_fwd(r, xt, wt, {}, out, opts, reinterpret_cast<Stream>(s));
    CUgraph graph = nullptr;
    ASSERT_EQ(d.cuStreamEndCapture(s, &graph), CUDA_SUCCESS);
    CUgraphExec exec = nullptr;
    ASSERT_EQ(d.cuGraphInstantiateWithFlags(&exec, graph, 0), CUDA_SUCCESS);
    RunSpec spec;
    spec.round_scale = true;
    for (const Input* in : {&a, static_cast<const Input*>(&b_with_a_weight), &a}) {
      SCOPED_TRACE(in == &a ? "replay with x = a" : "replay with x = b");
      x.upload(encode(DType::bf16, in->x));
      for (DeviceBuffer* buf : {&q, &q_scale, &rms_inv, &qT, &qT_scale}) buf->poison();
      ASSERT_EQ(d.cuGraphLaunch(exec, s), CUDA_SUCCESS);
      synchronize();
      Result res;
      res.q = q.download<uint8_t>(M * N);
      res.q_scale = q_scale.download<float>((N / 128) * M);
      res.rms_inv = rms_inv.download<float>(M);
      res.qT = qT.download<uint8_t>(N * M);
      res.qT_scale = qT_scale.download<float>(((M + 127) / 128) * N);
      check(*in, spec, res);
    }
    d.cuGraphExecDestroy(exec);
    d.cuGraphDestroy(graph);
    d.cuStreamDestroy(s);
  });
}

// The GLOBAL exchanges (the stream kernel, exchange 3; the tile kernel's GX, exchange 5; tile512, 6) at the edges: M = 1, 7, 129
// (a whole tile and one row), 1000 at every hidden size of the issue, and the special values (NaN, ±inf,
// overflowing / underflowing squares, all-zero and tiny rows and token blocks) in both scale modes.
TEST_F(RmsNormBlockQuantTest, StreamKernelEdges) {
  const SpacePoint cfgs[] = {{128, 2, 16, 1, 1, 2, 1, 3, 0},  {2048, 2, 16, 1, 1, 2, 1, 3, 0},
                             {2048, 2, 16, 2, 1, 4, 1, 3, 0}, {4096, 2, 16, 2, 1, 5, 1, 3, 0},
                             {7168, 2, 16, 2, 1, 4, 1, 3, 0}, {7168, 2, 16, 1, 1, 3, 1, 3, 0},
                             {2048, 2, 0, 1, 0, 0, 0, 5, 0},  {7168, 2, 0, 1, 0, 0, 0, 5, 0},
                             {2048, 2, 0, 1, 0, 0, 0, 6, 0},  {7168, 2, 0, 1, 0, 0, 0, 6, 0},
                             {2048, 2, 0, 1, 0, 0, 1, 6, 0},  {7168, 2, 0, 2, 0, 0, 0, 6, 0}};
  std::vector<SpacePoint> points;
  for (const SpacePoint& c : cfgs)
    for (int64_t M : {1, 7, 129, 1000}) {
      SpacePoint p = c;
      p.M = M;
      points.push_back(p);
    }
  for_each_point(points, [](const SpacePoint& p, size_t) {
    const Input in = random_input(p.M, p.N, mix_seed({0x68, static_cast<uint64_t>(p.N), static_cast<uint64_t>(p.M)}));
    RunSpec spec;
    spec.mode = 2;
    spec.round_scale = true;
    run_and_check(in, spec);
  });
  check_special_values({{2048, 2, 16, 2, 1, 4, 1, 3, 700},
                        {2048, 2, 16, 1, 1, 3, 1, 3, 700},
                        {2048, 2, 0, 1, 0, 0, 0, 5, 700},
                        {2048, 2, 0, 1, 0, 0, 0, 6, 700},
                        {2048, 2, 0, 2, 0, 0, 0, 6, 700}},
                       0x69);
}

// Search-space points of mode 0, forced: the pipe kernel (warps × row slots a warp × weights in registers or
// reloaded × one or two warps a row (exchange 1); partial steps; fewer rows than warps) with enough rows that every
// ring slot is refilled several times, and the row8 and row kernels.
TEST_F(RmsNormBlockQuantTest, EverySearchSpacePointMode0) {
  const std::vector<SpacePoint> points = {
      {2048, 0, 8, 4, 1, 2, 0, 0, 20011},  // (the round_scale 1 default before session 5)
      {2048, 0, 16, 4, 1, 2, 0, 0, 20011}, // (round_scale 0)
      {2048, 0, 4, 4, 1, 2, 0, 0, 20011},
      {2048, 0, 8, 4, 0, 2, 0, 0, 20011},
      {2048, 0, 16, 4, 1, 3, 0, 0, 20011},
      {2048, 0, 4, 4, 0, 4, 0, 0, 20011},
      {2048, 0, 8, 4, 1, 4, 0, 0, 20011},
      {2048, 0, 8, 4, 1, 2, 0, 1, 20011},  // two warps a row (the round_scale 1 default before session 6)
      {2048, 0, 16, 4, 0, 3, 0, 1, 20011},
      {2048, 0, 4, 4, 1, 2, 0, 1, 20011},
      {7168, 0, 8, 4, 0, 2, 0, 1, 5003},   // (the N = 7168 default before session 6)
      {1024, 0, 8, 4, 1, 2, 0, 1, 40009},  // one step a warp
      {4096, 0, 8, 4, 0, 2, 0, 1, 9001},
      {2048, 0, 8, 4, 1, 3, 0, 1, 131},
      {7168, 0, 4, 4, 0, 2, 0, 0, 5003},
      {4096, 0, 8, 4, 0, 3, 0, 0, 9001},
      {128, 0, 4, 4, 1, 4, 0, 0, 100003},  // a partial step: one block of four
      {640, 0, 8, 4, 1, 2, 0, 0, 20011},   // five blocks: a full step and a partial one
      {640, 0, 16, 4, 0, 3, 0, 0, 20011},
      {2048, 0, 8, 4, 1, 3, 0, 0, 131},    // fewer rows than warps of the grid
      {2048, 0, 16, 4, 0, 2, 0, 0, 1},
      {2048, 0, 8, 4, 1, 0, 0, 0, 20011},  // the row8 kernel (8 lanes a block)
      {2048, 0, 4, 4, 0, 0, 0, 0, 20011},
      {7168, 0, 4, 4, 0, 0, 0, 0, 5003},   // (the N = 7168 round_scale 1 default before session 5)
      {7168, 0, 16, 4, 0, 0, 0, 0, 5003},
      {128, 0, 4, 4, 1, 0, 0, 0, 100003},
      {640, 0, 8, 4, 1, 0, 0, 0, 20011},
      {2048, 0, 8, 0, 1, 0, 0, 0, 20011},  // the register row kernel
      {7168, 0, 16, 0, 0, 0, 0, 0, 5003},  // (the N = 7168 round_scale 0 default before session 5)
      // Pipe variant bits (overlap: 1 START1, 4 LEAN, 8 NOFENCE; rms_norm_block_quant_args.h).
      {2048, 0, 8, 4, 1, 2, 13, 1, 20011},  // START1 + LEAN + NOFENCE: the N = 2048 round_scale 1 default
      {2048, 0, 8, 4, 1, 2, 4, 1, 1},
      {2048, 0, 8, 4, 1, 2, 12, 1, 131},
      {2048, 0, 8, 4, 1, 3, 1, 1, 131},
      {2048, 0, 8, 4, 1, 3, 13, 1, 20011},
      {2048, 0, 8, 4, 1, 2, 13, 0, 20011},  // one warp a row
      {128, 0, 8, 4, 1, 2, 13, 0, 100003},  // a partial step
      {640, 0, 8, 4, 1, 2, 1, 0, 20011},
      {7168, 0, 8, 4, 0, 2, 13, 1, 5003},   // (the N = 7168 default)
      {7168, 0, 8, 4, 0, 3, 1, 1, 5003},
  };
  check_points(points, 0x66);
  // Not points: 16 warps × 4 row slots exceed shared memory; weights in registers only up to N = 2048.
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 0, 16, 4, 0, 4, 0, 0));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(4096, 0, 8, 4, 1, 2, 0, 0));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 0, 8, 4, 1, 2, 16, 1));  // TRACE: measurement only
  // The BAND (2) and TAIL (32) bits, measured slower and deleted (session 8), are no variants any more.
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 0, 8, 4, 1, 2, 2, 1));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 0, 8, 4, 1, 2, 45, 1));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(2048, 0, 8, 4, 1, 2, 47, 1));
  EXPECT_FALSE(detail::rms_norm_block_quant_force_config(640, 0, 8, 4, 1, 2, 0, 1));   // a split row: N % 1024
}

// eps is a run-time argument: one specialization, several values (an all-zero row has r = 1/sqrt(eps) exactly).
TEST_F(RmsNormBlockQuantTest, EpsIsARuntimeArgument) {
  Input in = random_input(7, 128, mix_seed({0x61}));
  std::fill_n(&in.x[2 * 128], 128, 0.0f);
  for (float eps : {1e-6f, 0.25f, 3.0f}) {
    SCOPED_TRACE("eps " + std::to_string(eps));
    RunSpec spec;
    spec.eps = eps;
    const Result res = run_and_check(in, spec);
    ASSERT_EQ(res.rms_inv.size(), 7u);
    EXPECT_NEAR(res.rms_inv[2], 1.0 / std::sqrt(static_cast<double>(eps)), 4e-7 / std::sqrt(eps));
  }
}

}  // namespace
}  // namespace kiln::test
