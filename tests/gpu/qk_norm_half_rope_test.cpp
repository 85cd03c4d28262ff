// tests/gpu/qk_norm_half_rope_test.cpp — qk_norm_half_rope_fwd / _bwd on the GPU against the double CPU reference.
//
// Tolerances (bf16/fp16 outputs of fp32 math):
//  * q, k, dqkv (q/k heads): element-wise |got − ref| ≤ 2^-8·|ref| (the output's round-to-nearest half-ulp; 2^-11 for
//    fp16) + 1e-4·max|ref| of the head (fp32 arithmetic: the sum of squares, r, the rotation and the two-term dt can
//    lose a few fp32 ulps of the head's magnitude), and a relative L2 error ≤ 3e-3 (1e-3 fp16) per tensor (RNE to 8
//    bits gives ~1e-3 on random data). NaN exactly where the reference has NaN.
//  * v and the v heads of dqkv are copies: bit-exact.
//  * dq_norm_weight, dk_norm_weight (fp32 sums over up to 131k terms in a fixed order): relative L2 ≤ 2e-4 and every
//    channel within 2e-3·max|ref|; two runs are bitwise identical.
// Outputs, gaps of strided outputs and guard zones are poisoned before each run and checked afterwards.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "kiln/ops/qk_norm_half_rope.hpp"
#include "reference/qk_norm_half_rope.hpp"
#include "test_util.hpp"

namespace kiln::detail {
bool qk_norm_half_rope_force_config(bool fwd, int warps, int batch, int acc_smem);  // ops/qk_norm_half_rope.cpp
}

namespace kiln::test {
namespace {

using ref::QkRopeProblem;

// Row layout of a [S, B, W] qkv-layout tensor in a buffer of `elems` elements.
struct RowLayout {
  int64_t s_stride = 0, b_stride = 0, elems = 0;
  static RowLayout make(int64_t S, int64_t B, int64_t W, int mode) {
    RowLayout l;
    const int64_t pitch = mode == 0 ? W : W + 64;  // mode 1, 2: rows padded (a slice of a wider tensor)
    if (mode == 2) {  // [B, S] row order
      l.b_stride = S * pitch;
      l.s_stride = pitch;
    } else {
      l.b_stride = pitch;
      l.s_stride = B * pitch;
    }
    l.elems = std::max<int64_t>(S * B * pitch, 1);
    return l;
  }
  int64_t row(int64_t s, int64_t b) const { return s * s_stride + b * b_stride; }
};

struct Case {
  int64_t S, B;
  int H, h, D;
  bool interleaved = true;
  DType dtype = DType::bf16, w_dtype = DType::bf16;
  int qkv_mode = 0, dqkv_mode = 0;  // RowLayout modes
  int64_t offset = 0;
  std::vector<int32_t> cu;
  int64_t max_seqlen = 0;
  float scale = 1.f;  // qkv magnitude
  const char* special = "";  // "zero", "nonfinite", "overflow", "badpos"
};

std::string name_of(const Case& c) {
  std::string n = "S" + std::to_string(c.S) + "_B" + std::to_string(c.B) + "_H" + std::to_string(c.H) + "_h" +
                  std::to_string(c.h) + "_D" + std::to_string(c.D) + (c.interleaved ? "" : "_plain");
  if (c.dtype != DType::bf16) n += "_fp16";
  if (c.w_dtype == DType::f32) n += "_wf32";
  if (c.qkv_mode) n += "_qkvL" + std::to_string(c.qkv_mode);
  if (c.dqkv_mode) n += "_dqkvL" + std::to_string(c.dqkv_mode);
  if (c.offset) n += "_off" + std::to_string(c.offset);
  if (!c.cu.empty()) n += "_packed" + std::to_string(c.cu.size() - 1);
  if (c.scale != 1.f) n += c.scale > 1.f ? "_huge" : "_tiny";
  if (*c.special) n += std::string("_") + c.special;
  return n;
}

void PrintTo(const Case& c, std::ostream* os) { *os << name_of(c); }

TensorRef view3(void* data, DType t, int64_t S, int64_t B, int64_t W, const RowLayout& l) {
  TensorRef r = TensorRef::contiguous(data, t, {S, B, W});
  r.strides[0] = l.s_stride;
  r.strides[1] = l.b_stride;
  return r;
}

// Element-wise and L2 comparison of one output tensor; heads of D values.
::testing::AssertionResult compare(const char* what, const std::vector<float>& got, const std::vector<double>& want,
                                   int64_t D, double rel_elem, double rel_l2) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": size " << got.size();
  int64_t bad = 0;
  std::string first;
  std::vector<float> gf;
  std::vector<double> wf;
  for (size_t h0 = 0; h0 < want.size(); h0 += D) {
    double hmax = 0;
    for (int64_t c = 0; c < D; ++c)
      if (std::isfinite(want[h0 + c])) hmax = std::max(hmax, std::fabs(want[h0 + c]));
    for (int64_t c = 0; c < D; ++c) {
      const size_t i = h0 + c;
      bool ok;
      if (std::isnan(want[i])) ok = std::isnan(got[i]);
      else ok = std::fabs(got[i] - want[i]) <= rel_elem * std::fabs(want[i]) + 1e-4 * hmax;
      if (!std::isnan(want[i]) && std::isfinite(want[i])) {
        gf.push_back(got[i]);
        wf.push_back(want[i]);
      }
      if (!ok && bad++ < 8)
        first += "\n    [" + std::to_string(i) + "] (head " + std::to_string(i / D) + ", channel " + std::to_string(c) +
                 "): got " + show(got[i]) + ", want " + show(want[i]);
    }
  }
  const double l2 = relative_l2(gf, wf);
  if (bad == 0 && (wf.empty() || l2 <= rel_l2)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << want.size()
                                       << " elements outside tolerance; relative L2 " << l2 << " (limit " << rel_l2
                                       << ")" << first;
}

::testing::AssertionResult exact(const char* what, const std::vector<float>& got, const std::vector<double>& want) {
  return all_equal(
      what, static_cast<int64_t>(want.size()),
      [&](int64_t i) { return std::bit_cast<uint32_t>(got[i]) == std::bit_cast<uint32_t>(static_cast<float>(want[i])); },
      [&](int64_t i) { return "[" + std::to_string(i) + "]: got " + show(got[i]) + ", want " + show(want[i]); });
}

class QkNormRopeGpu : public GpuTest, public ::testing::WithParamInterface<Case> {};

struct Inputs {
  QkRopeProblem p;
  std::vector<float> qkv, wq, wk, freqs, gq, gk, gv;
};

Inputs make_inputs(const Case& c) {
  Inputs in;
  in.p = QkRopeProblem{.S = c.S, .B = c.B, .H = c.H, .h = c.h, .D = c.D, .interleaved = c.interleaved, .eps = 1e-6,
      .position_offset = c.offset, .cu_seqlens = c.cu};
  QkRopeProblem& p = in.p;
  const int64_t span = !c.cu.empty() && c.max_seqlen > 0 ? c.max_seqlen : c.S;
  p.freqs_rows = c.offset + span;
  const uint64_t seed = mix_seed({0x9e, static_cast<uint64_t>(c.S), static_cast<uint64_t>(c.B),
                                  static_cast<uint64_t>(c.H), static_cast<uint64_t>(c.h), static_cast<uint64_t>(c.D),
                                  c.interleaved, static_cast<uint64_t>(c.dtype), static_cast<uint64_t>(c.qkv_mode)});
  const int64_t M = c.S * c.B;
  const std::string sp = c.special;
  in.qkv = random_values(M * p.width(), mix_seed({seed, 1}), c.dtype, c.scale);
  if (sp == "zero") std::fill(in.qkv.begin(), in.qkv.end(), 0.f);
  if (sp == "overflow")  // |t| ~ 1e20: Σt² overflows fp32 in every head (documented: those heads normalize to 0)
    for (auto& v : in.qkv) v = round_to(c.dtype, v * 1e20f);
  if (sp == "nonfinite" && M > 2) {
    in.qkv[5] = std::numeric_limits<float>::quiet_NaN();                      // row 0, slot 0 (a q head)
    in.qkv[p.width() + 2 * p.D + 7] = std::numeric_limits<float>::infinity();  // row 1, slot 2
    in.qkv[2 * p.width() + 3] = -std::numeric_limits<float>::infinity();       // row 2, rotated channel
  }
  in.wq = random_values(c.D, mix_seed({seed, 2}), c.w_dtype, 0.2f, 1.f);
  in.wk = random_values(c.D, mix_seed({seed, 3}), c.w_dtype, 0.2f, 1.f);
  in.freqs = ref::half_rope_freqs(p.freqs_rows, c.D);
  in.gq = random_values(M * c.H * c.D, mix_seed({seed, 4}), c.dtype, 0.1f);
  in.gk = random_values(M * c.h * c.D, mix_seed({seed, 5}), c.dtype, 0.1f);
  in.gv = random_values(M * c.h * c.D, mix_seed({seed, 6}), c.dtype, 0.1f);
  return in;
}

QkNormHalfRopeOptions options(const Case& c, const TensorRef& cu) {
  QkNormHalfRopeOptions o;
  o.num_heads = c.H;
  o.num_groups = c.h;
  o.interleaved = c.interleaved;
  o.position_offset = c.offset;
  o.cu_seqlens = cu;
  o.max_seqlen = c.cu.empty() ? 0 : c.max_seqlen;
  return o;
}

void check_case(Runtime& r, const Case& c);

TEST_P(QkNormRopeGpu, ForwardAndBackwardMatchReference) { check_case(rt(), GetParam()); }

// Every search-space point (the configs a tuner may pick) on a few shapes: odd rows, D = 64 and 256, the plain layout,
// strided qkv/dqkv, packed sequences.
TEST_F(QkNormRopeGpu, EverySearchSpacePointMatchesReference) {
  const int fwd_points[][3] = {{4, 4, 0}, {2, 4, 0}, {8, 4, 0}, {4, 8, 0}, {4, 2, 0}};
  const int bwd_points[][3] = {{8, 3, 1}, {8, 2, 0}, {4, 2, 0}, {8, 1, 0}, {8, 4, 1}};
  std::vector<Case> shapes;
  shapes.push_back({129, 3, 16, 4, 128});
  shapes.push_back({57, 2, 32, 8, 64, false});
  {
    Case c{40, 3, 8, 2, 256};
    c.qkv_mode = 2;
    c.dqkv_mode = 1;
    shapes.push_back(c);
    Case d{64, 1, 16, 4, 128};
    d.cu = {0, 10, 41, 60};
    d.max_seqlen = 31;
    shapes.push_back(d);
  }
  for (size_t p = 0; p < 5; ++p) {
    const int* f = fwd_points[p];
    const int* b = bwd_points[p];
    ASSERT_TRUE(detail::qk_norm_half_rope_force_config(true, f[0], f[1], f[2]));
    ASSERT_TRUE(detail::qk_norm_half_rope_force_config(false, b[0], b[1], b[2]));
    for (const Case& c : shapes) {
      SCOPED_TRACE("fwd config " + std::to_string(f[0]) + "," + std::to_string(f[1]) + "; bwd config " +
                   std::to_string(b[0]) + "," + std::to_string(b[1]) + "," + std::to_string(b[2]) + "; " + name_of(c));
      check_case(rt(), c);
    }
  }
  detail::qk_norm_half_rope_force_config(true, 0, 0, 0);
  detail::qk_norm_half_rope_force_config(false, 0, 0, 0);
  EXPECT_FALSE(detail::qk_norm_half_rope_force_config(false, 8, 4, 0));  // not a point of the space
}

void check_case(Runtime& r, const Case& c) {
  const Inputs in = make_inputs(c);
  const QkRopeProblem& p = in.p;
  const int64_t S = c.S, B = c.B, D = c.D, W = p.width(), M = S * B;
  const size_t el = dtype_size(c.dtype);
  const std::string sp = c.special;

  // qkv in its (possibly strided) layout; gaps hold NaN, which must never reach an output.
  const RowLayout ql = RowLayout::make(S, B, W, c.qkv_mode), dl = RowLayout::make(S, B, W, c.dqkv_mode);
  std::vector<float> qkv_buf(static_cast<size_t>(ql.elems), std::numeric_limits<float>::quiet_NaN());
  for (int64_t s = 0; s < S; ++s)
    for (int64_t b = 0; b < B; ++b)
      std::copy_n(in.qkv.begin() + (s * B + b) * W, W, qkv_buf.begin() + ql.row(s, b));
  DeviceBuffer qkv_d(r, ql.elems * el), wq_d(r, D * dtype_size(c.w_dtype)), wk_d(r, D * dtype_size(c.w_dtype));
  qkv_d.upload(encode(c.dtype, qkv_buf));
  wq_d.upload(encode(c.w_dtype, in.wq));
  wk_d.upload(encode(c.w_dtype, in.wk));
  DeviceBuffer fr_d(r, in.freqs.size() * 4), cu_d(r, c.cu.size() * 4);
  fr_d.upload(in.freqs);
  if (!c.cu.empty()) cu_d.upload(c.cu);
  const TensorRef qkv = view3(qkv_d.data(), c.dtype, S, B, W, ql);
  const TensorRef wq = wq_d.ref(c.w_dtype, {D}), wk = wk_d.ref(c.w_dtype, {D});
  const TensorRef freqs = fr_d.ref(DType::f32, {p.freqs_rows, D / 2});
  const TensorRef cu = c.cu.empty() ? TensorRef{} : cu_d.ref(DType::i32, {static_cast<int64_t>(c.cu.size())});
  const QkNormHalfRopeOptions o = options(c, cu);

  // ---- forward
  DeviceBuffer q_d(r, M * c.H * D * el), k_d(r, M * c.h * D * el), v_d(r, M * c.h * D * el);
  for (DeviceBuffer* b : {&q_d, &k_d, &v_d}) b->poison();
  const uint64_t before = r.stats().launches;
  qk_norm_half_rope_fwd(r, qkv, wq, wk, freqs, q_d.ref(c.dtype, {B, S, c.H, D}), k_d.ref(c.dtype, {B, S, c.h, D}),
                        v_d.ref(c.dtype, {B, S, c.h, D}), o, nullptr);
  synchronize();
  if (M == 0) EXPECT_EQ(r.stats().launches - before, 0u) << "no rows: the forward launches nothing";
  EXPECT_TRUE(q_d.guards_intact() && k_d.guards_intact() && v_d.guards_intact()) << "written outside q, k or v";
  auto dl_out = [&](const DeviceBuffer& b, int64_t n) { return decode(c.dtype, b.download<uint8_t>(n * el)); };
  const std::vector<float> q = dl_out(q_d, M * c.H * D), k = dl_out(k_d, M * c.h * D), v = dl_out(v_d, M * c.h * D);
  const ref::QkRopeOutputs want = ref::qk_norm_half_rope_fwd(p, in.qkv, in.wq, in.wk, in.freqs);
  const double rel_elem = c.dtype == DType::f16 ? 1.0 / 2048 : 1.0 / 256, rel_l2 = c.dtype == DType::f16 ? 1e-3 : 3e-3;
  if (sp == "overflow") {
    EXPECT_TRUE(all_equal("q (overflowed heads)", static_cast<int64_t>(q.size()), [&](int64_t i) { return q[i] == 0.f; },
                          [&](int64_t i) { return "[" + std::to_string(i) + "]: " + show(q[i]); }));
    EXPECT_TRUE(all_equal("k (overflowed heads)", static_cast<int64_t>(k.size()), [&](int64_t i) { return k[i] == 0.f; },
                          [&](int64_t i) { return "[" + std::to_string(i) + "]: " + show(k[i]); }));
  } else {
    EXPECT_TRUE(compare("q", q, want.q, D, rel_elem, rel_l2));
    EXPECT_TRUE(compare("k", k, want.k, D, rel_elem, rel_l2));
  }
  EXPECT_TRUE(exact("v", v, want.v));

  // ---- backward (twice: bitwise identical)
  DeviceBuffer gq_d(r, M * c.H * D * el), gk_d(r, M * c.h * D * el), gv_d(r, M * c.h * D * el);
  gq_d.upload(encode(c.dtype, in.gq));
  gk_d.upload(encode(c.dtype, in.gk));
  gv_d.upload(encode(c.dtype, in.gv));
  struct Bwd {
    std::vector<uint8_t> raw;
    std::vector<float> dwq, dwk;
    bool guards = false;
  };
  auto run_bwd = [&] {
    DeviceBuffer dqkv_d(r, dl.elems * el), dwq_d(r, D * 4), dwk_d(r, D * 4);
    for (DeviceBuffer* b : {&dqkv_d, &dwq_d, &dwk_d}) b->poison();
    qk_norm_half_rope_bwd(r, gq_d.ref(c.dtype, {B, S, c.H, D}), gk_d.ref(c.dtype, {B, S, c.h, D}),
                          gv_d.ref(c.dtype, {B, S, c.h, D}), qkv, wq, wk, freqs,
                          view3(dqkv_d.data(), c.dtype, S, B, W, dl), dwq_d.ref(DType::f32, {D}),
                          dwk_d.ref(DType::f32, {D}), o, {}, nullptr);
    synchronize();
    Bwd out;
    out.raw = dqkv_d.download<uint8_t>(dl.elems * el);
    out.dwq = dwq_d.download<float>(D);
    out.dwk = dwk_d.download<float>(D);
    out.guards = dqkv_d.guards_intact() && dwq_d.guards_intact() && dwk_d.guards_intact();
    return out;
  };
  const Bwd b1 = run_bwd(), b2 = run_bwd();
  EXPECT_TRUE(b1.guards) << "written outside dqkv or the weight gradients";
  EXPECT_TRUE(b1.raw == b2.raw) << "dqkv differs between two runs";
  EXPECT_TRUE(bitwise_equal("dq_norm_weight (run 2 vs 1)", b2.dwq, b1.dwq));
  EXPECT_TRUE(bitwise_equal("dk_norm_weight (run 2 vs 1)", b2.dwk, b1.dwk));

  // Gaps between strided rows keep the poison bytes.
  std::vector<bool> covered(static_cast<size_t>(dl.elems), false);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t b = 0; b < B; ++b) std::fill_n(covered.begin() + dl.row(s, b), W, true);
  int64_t gap_writes = 0;
  for (int64_t i = 0; i < dl.elems; ++i)
    if (!covered[i] && (b1.raw[i * el] != DeviceBuffer::kPoison || b1.raw[i * el + 1] != DeviceBuffer::kPoison))
      ++gap_writes;
  EXPECT_EQ(gap_writes, 0) << "elements written between dqkv's rows";

  const std::vector<float> all = decode(c.dtype, b1.raw);
  const ref::QkRopeGrads g = ref::qk_norm_half_rope_bwd(p, in.gq, in.gk, in.gv, in.qkv, in.wq, in.wk, in.freqs);
  // Split dqkv by head kind, in qkv order.
  std::vector<float> got_qk, got_v;
  std::vector<double> want_qk, want_v;
  for (int64_t s = 0; s < S; ++s)
    for (int64_t b = 0; b < B; ++b)
      for (int j = 0; j < p.heads(); ++j) {
        int kind, idx;
        ref::qkv_slot(p, j, kind, idx);
        const float* gr = all.data() + dl.row(s, b) + j * D;
        const double* wr = g.dqkv.data() + (s * B + b) * W + j * D;
        (kind == 2 ? got_v : got_qk).insert((kind == 2 ? got_v : got_qk).end(), gr, gr + D);
        (kind == 2 ? want_v : want_qk).insert((kind == 2 ? want_v : want_qk).end(), wr, wr + D);
      }
  if (sp == "overflow") {
    EXPECT_TRUE(all_equal("dqkv q/k heads (overflowed)", static_cast<int64_t>(got_qk.size()),
                          [&](int64_t i) { return got_qk[i] == 0.f; },
                          [&](int64_t i) { return "[" + std::to_string(i) + "]: " + show(got_qk[i]); }));
  } else {
    EXPECT_TRUE(compare("dqkv q/k heads", got_qk, want_qk, D, rel_elem, rel_l2));
  }
  EXPECT_TRUE(exact("dqkv v heads", got_v, want_v));

  auto check_dw = [&](const char* what, const std::vector<float>& got, const std::vector<double>& want) {
    if (sp == "overflow") {
      EXPECT_TRUE(all_equal(what, D, [&](int64_t i) { return got[i] == 0.f; },
                            [&](int64_t i) { return "[" + std::to_string(i) + "]: " + show(got[i]); }));
      return;
    }
    if (sp == "nonfinite" || sp == "badpos") {  // NaN rows reach every channel's sum
      EXPECT_TRUE(all_equal(what, D, [&](int64_t i) { return std::isnan(want[i]) == std::isnan(got[i]); },
                            [&](int64_t i) { return "[" + std::to_string(i) + "]: " + show(got[i]); }));
      return;
    }
    double mx = 0;
    for (double v : want) mx = std::max(mx, std::fabs(v));
    EXPECT_TRUE(all_equal(what, D, [&](int64_t i) { return std::fabs(got[i] - want[i]) <= 2e-3 * mx; },
                          [&](int64_t i) {
                            return "[" + std::to_string(i) + "]: got " + show(got[i]) + ", want " + show(want[i]);
                          }));
    if (mx > 0) EXPECT_LE(relative_l2(got, want), 2e-4) << what;
  };
  check_dw("dq_norm_weight", b1.dwq, g.dwq);
  check_dw("dk_norm_weight", b1.dwk, g.dwk);
}

std::vector<Case> cases() {
  std::vector<Case> v;
  v.push_back({4096, 2, 16, 4, 128});  // Ling-mini-2.0 at the bench shape
  for (int D : {64, 128})
    for (auto [H, h] : {std::pair{16, 16}, {32, 8}, {64, 8}}) v.push_back({257, 3, H, h, D});  // odd S and B
  v.push_back({255, 1, 16, 4, 128, false});                                                    // plain layout
  v.push_back({33, 5, 32, 8, 64, false});
  v.push_back({1, 1, 16, 4, 128});  // one row
  v.push_back({0, 2, 16, 4, 128});  // no rows: nothing written, weight gradients zero
  {
    Case c{100, 3, 16, 4, 128};
    c.qkv_mode = 1;  // padded rows (a slice of a wider tensor)
    c.dqkv_mode = 2; // [B, S] row order with padded rows
    v.push_back(c);
    c.qkv_mode = 2;
    c.dqkv_mode = 1;
    c.interleaved = false;
    v.push_back(c);
  }
  {
    Case c{77, 2, 8, 2, 256};
    c.dtype = DType::f16;
    c.w_dtype = DType::f32;
    v.push_back(c);
    Case d{129, 2, 4, 4, 32};
    d.w_dtype = DType::f32;
    v.push_back(d);
  }
  {
    Case c{50, 2, 16, 4, 128};
    c.offset = 1000;  // positions 1000..1049
    v.push_back(c);
    Case d{64, 1, 16, 4, 128};
    d.cu = {0, 10, 10, 41, 60};  // 4 sequences (one empty), rows 60..63 padding
    d.max_seqlen = 31;
    v.push_back(d);
    d.offset = 7;
    d.B = 2;
    v.push_back(d);
    Case e{40, 2, 16, 4, 128};
    e.cu = {0, 5, 50};  // max_seqlen understated: rows s ≥ 17 (position ≥ 12) have no freqs row and get NaN heads
    e.max_seqlen = 12;
    e.special = "badpos";
    v.push_back(e);
  }
  {
    Case c{31, 2, 16, 4, 128};
    c.special = "zero";
    v.push_back(c);
    c.special = "nonfinite";
    v.push_back(c);
    c.special = "overflow";
    v.push_back(c);
    c.special = "";
    c.scale = 1e15f;  // large but Σt² < fp32 max
    v.push_back(c);
    c.scale = 1e-15f;  // tiny: eps dominates
    v.push_back(c);
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Grid, QkNormRopeGpu, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return name_of(i.param); });

// A caller-provided workspace (poisoned) gives the same result as kiln's own; one too small is rejected.
TEST_F(QkNormRopeGpu, BackwardWorkspace) {
  Runtime& r = rt();
  const Case c{300, 2, 16, 4, 128};
  const Inputs in = make_inputs(c);
  const int64_t S = c.S, B = c.B, D = c.D, W = in.p.width(), M = S * B;
  DeviceBuffer qkv_d(r, M * W * 2), wq_d(r, D * 2), wk_d(r, D * 2), fr_d(r, in.freqs.size() * 4);
  qkv_d.upload(encode(DType::bf16, in.qkv));
  wq_d.upload(encode(DType::bf16, in.wq));
  wk_d.upload(encode(DType::bf16, in.wk));
  fr_d.upload(in.freqs);
  DeviceBuffer gq_d(r, M * 16 * D * 2), gk_d(r, M * 4 * D * 2), gv_d(r, M * 4 * D * 2);
  gq_d.upload(encode(DType::bf16, in.gq));
  gk_d.upload(encode(DType::bf16, in.gk));
  gv_d.upload(encode(DType::bf16, in.gv));
  const int64_t elems = qk_norm_half_rope_bwd_workspace_elems(r, D);
  ASSERT_GT(elems, 0);
  DeviceBuffer ws_d(r, elems * 4);
  const QkNormHalfRopeOptions o = options(c, {});
  // want: 0 none, 1 dq only, 2 dk only, 3 both weight gradients. Returns dq (D), dk (D), then dqkv's raw words;
  // gradients not asked for come back as the poison pattern, which must be left untouched.
  auto run = [&](const TensorRef& ws, int want = 3) {
    DeviceBuffer dqkv_d(r, M * W * 2), dwq_d(r, D * 4), dwk_d(r, D * 4);
    for (DeviceBuffer* b : {&ws_d, &dqkv_d, &dwq_d, &dwk_d}) b->poison();
    qk_norm_half_rope_bwd(r, gq_d.ref(DType::bf16, {B, S, 16, D}), gk_d.ref(DType::bf16, {B, S, 4, D}),
                          gv_d.ref(DType::bf16, {B, S, 4, D}), qkv_d.ref(DType::bf16, {S, B, W}),
                          wq_d.ref(DType::bf16, {D}), wk_d.ref(DType::bf16, {D}), fr_d.ref(DType::f32, {S, D / 2}),
                          dqkv_d.ref(DType::bf16, {S, B, W}), (want & 1) ? dwq_d.ref(DType::f32, {D}) : TensorRef{},
                          (want & 2) ? dwk_d.ref(DType::f32, {D}) : TensorRef{}, o, ws, nullptr);
    synchronize();
    std::vector<float> out = dwq_d.download<float>(D), k = dwk_d.download<float>(D);
    out.insert(out.end(), k.begin(), k.end());
    const std::vector<uint16_t> d = dqkv_d.download<uint16_t>(M * W);
    for (uint16_t x : d) out.push_back(static_cast<float>(x));
    return out;
  };
  const std::vector<float> own = run({}), given = run(ws_d.ref(DType::f32, {elems}));
  EXPECT_TRUE(ws_d.guards_intact()) << "written outside the workspace";
  EXPECT_TRUE(bitwise_equal("dqkv + weight gradients", given, own));
  // One element: far fewer than the partials of 600 rows.
  EXPECT_THROW_NAMING(run(ws_d.ref(DType::f32, {1})), "workspace", ShapeMismatchError);

  // Optional weight gradients: dqkv is the same without them, an asked-for one is the same bits, the other untouched.
  float poison;
  std::memset(&poison, DeviceBuffer::kPoison, 4);
  for (int want : {0, 1, 2}) {
    SCOPED_TRACE("weight gradients asked for: " + std::to_string(want));
    const std::vector<float> part = run({}, want);
    std::vector<float> expect = own;
    for (int c = 0; c < D; ++c) {
      if (!(want & 1)) expect[c] = poison;
      if (!(want & 2)) expect[D + c] = poison;
    }
    EXPECT_TRUE(bitwise_equal("dq, dk, dqkv", part, expect));
  }
}

}  // namespace
}  // namespace kiln::test
