// tests/gpu/softmax_cross_entropy_test.cpp — the softmax cross-entropy ops on the GPU against the fp64 CPU reference.
//
// Tolerances: loss |got − ref| ≤ 1e-4 + 1e-5·|ref| (the issue's); row_max exact (a max of representable values);
// sum_exp relative 1e-5. Gradients element by element: |got − ref| ≤ rel·|ref| + abs, with rel one rounding of the
// output dtype (bf16 2^-8, fp16 2^-10, fp32 1e-5) and abs = 4e-6·|g| (fp32 cancellation in softmax − 1 at the target,
// ex2.approx) plus, for fp16, its subnormal quantum. Ignored rows must be exactly 0 (loss, statistics, gradient).
// Every problem has label 0 and V−1, a row of −1e4 logits, a row whose first 8192 logits are −1e4, ignored rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "kiln/ops/softmax_cross_entropy.hpp"
#include "reference/softmax_cross_entropy.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

constexpr int64_t kIgnore = -100;

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct Problem {
  int64_t M = 0, V = 0;
  DType dtype = DType::bf16, label_dtype = DType::i64;
  std::vector<float> logits;  // [M, V], representable in dtype
  std::vector<int64_t> labels;
};

// Random N(0, 2) logits with the special rows described at the top; `ignore_every` rows ignored.
Problem make_problem(int64_t M, int64_t V, DType dtype, DType label_dtype, uint64_t seed, int ignore_every = 13) {
  Problem p;
  p.M = M;
  p.V = V;
  p.dtype = dtype;
  p.label_dtype = label_dtype;
  p.logits = randn(M * V, seed, 2.0f);
  uint64_t s = seed ^ 0xabcdef;
  p.labels.resize(static_cast<size_t>(M));
  for (auto& l : p.labels) l = static_cast<int64_t>(splitmix(s) % static_cast<uint64_t>(V));
  for (int64_t m = 5; m < M; m += ignore_every) p.labels[m] = kIgnore;
  if (M > 0) p.labels[0] = 0;
  if (M > 1) p.labels[1] = V - 1;
  if (M > 2) std::fill_n(p.logits.begin() + 2 * V, V, -1e4f);
  if (M > 3) std::fill_n(p.logits.begin() + 3 * V, std::min<int64_t>(8192, V - 1), -1e4f);
  if (M > 4) p.logits[4 * V + p.labels[4]] = 30.f;  // a confident row: softmax − 1 cancels at the target
  parallel_for((M * V + 65535) / 65536, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c)
      for (int64_t i = c * 65536; i < std::min(M * V, (c + 1) * 65536); ++i) p.logits[i] = round_to(dtype, p.logits[i]);
  });
  return p;
}

std::vector<uint8_t> encode_parallel(DType dtype, const std::vector<float>& v) {
  const size_t eb = dtype_size(dtype);
  std::vector<uint8_t> out(v.size() * eb);
  parallel_for((static_cast<int64_t>(v.size()) + 65535) / 65536, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const size_t i0 = static_cast<size_t>(c) * 65536, n = std::min<size_t>(65536, v.size() - i0);
      const std::vector<uint8_t> part = encode(dtype, std::span(v).subspan(i0, n));
      std::memcpy(out.data() + i0 * eb, part.data(), part.size());
    }
  });
  return out;
}

float element(DType dtype, const uint8_t* base, int64_t i) {
  if (dtype == DType::bf16) {
    uint16_t b;
    std::memcpy(&b, base + i * 2, 2);
    return bf16_to_float(b);
  }
  if (dtype == DType::f16) {
    uint16_t h;
    std::memcpy(&h, base + i * 2, 2);
    return f16_to_float(h);
  }
  float f;
  std::memcpy(&f, base + i * 4, 4);
  return f;
}

DeviceBuffer upload_labels(Runtime& rt, const Problem& p) {
  DeviceBuffer b(rt, std::max<size_t>(p.labels.size() * dtype_size(p.label_dtype), 16));
  if (p.label_dtype == DType::i32) {
    std::vector<int32_t> v(p.labels.begin(), p.labels.end());
    b.upload(v);
  } else {
    b.upload(p.labels);
  }
  return b;
}

std::string fmt_num(double v) {
  char b[40];
  std::snprintf(b, sizeof b, "%.9g", v);
  return b;
}

// Per-row loss (and statistics) against the reference.
::testing::AssertionResult loss_agrees(const std::vector<ref::CeRow>& want, const std::vector<float>& loss,
                                       const std::vector<float>* row_max, const std::vector<float>* sum_exp) {
  return all_equal(
      "loss", static_cast<int64_t>(want.size()),
      [&](int64_t m) {
        const ref::CeRow& r = want[m];
        if (r.ignored)
          return loss[m] == 0.f && (!row_max || ((*row_max)[m] == 0.f && (*sum_exp)[m] == 0.f));
        if (std::isnan(r.loss)) return std::isnan(loss[m]);
        if (!(std::fabs(loss[m] - r.loss) <= 1e-4 + 1e-5 * std::fabs(r.loss))) return false;
        if (row_max && (*row_max)[m] != static_cast<float>(r.max)) return false;
        if (sum_exp && !(std::fabs((*sum_exp)[m] - r.sum_exp) <= 1e-5 * r.sum_exp)) return false;
        return true;
      },
      [&](int64_t m) {
        std::string s = "row " + std::to_string(m) + ": loss " + fmt_num(loss[m]) + " want " + fmt_num(want[m].loss);
        if (row_max)
          s += ", max " + fmt_num((*row_max)[m]) + " want " + fmt_num(want[m].max) + ", sumexp " +
               fmt_num((*sum_exp)[m]) + " want " + fmt_num(want[m].sum_exp);
        return s + (want[m].ignored ? " (ignored)" : "");
      });
}

// dlogits [M, V] (bytes in `dtype`, row stride `stride`) against g[m]·∂loss_m/∂z from the reference.
::testing::AssertionResult grad_agrees(const Problem& p, const std::vector<ref::CeRow>& st, const ref::CeOptions& o,
                                       const std::vector<double>& g, const std::vector<uint8_t>& got, int64_t stride) {
  const double rel = p.dtype == DType::bf16 ? 0x1p-8 : p.dtype == DType::f16 ? 0x1p-10 : 1e-5;
  const double abs_extra = p.dtype == DType::f16 ? 6e-8 : 1e-30;
  std::atomic<int64_t> bad{0};
  std::mutex mu;
  std::vector<std::string> first;
  parallel_for(p.M, [&](int64_t b, int64_t e) {
    std::vector<double> want(static_cast<size_t>(p.V));
    for (int64_t m = b; m < e; ++m) {
      const std::span<const float> z(p.logits.data() + m * p.V, static_cast<size_t>(p.V));
      ref::softmax_cross_entropy_grad_row(z, p.labels[m], st[m], g[m], o, want);
      for (int64_t j = 0; j < p.V; ++j) {
        const double v = element(p.dtype, got.data(), m * stride + j);
        const double tol = rel * std::fabs(want[j]) + 4e-6 * std::fabs(g[m]) + abs_extra;
        const bool ok = (st[m].ignored || st[m].bad) ? v == 0.0 : std::fabs(v - want[j]) <= tol;
        if (ok) continue;
        if (bad.fetch_add(1) < 8) {
          std::lock_guard<std::mutex> l(mu);
          first.push_back("[" + std::to_string(m) + ", " + std::to_string(j) + "]: got " + fmt_num(v) + " want " +
                          fmt_num(want[j]) + " (label " + std::to_string(p.labels[m]) + ", g " + fmt_num(g[m]) + ")");
        }
      }
    }
  });
  if (bad == 0) return ::testing::AssertionSuccess();
  auto r = ::testing::AssertionFailure() << "dlogits: " << bad.load() << " of " << p.M * p.V << " elements differ:";
  for (const auto& s : first) r << "\n    " << s;
  return r;
}

// Byte equality of two large buffers (one memcmp; the first differing byte reported).
::testing::AssertionResult same_bytes(const char* what, const std::vector<uint8_t>& got, const std::vector<uint8_t>& want) {
  if (got.size() == want.size() && std::memcmp(got.data(), want.data(), got.size()) == 0)
    return ::testing::AssertionSuccess();
  if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  const auto it = std::mismatch(got.begin(), got.end(), want.begin());
  return ::testing::AssertionFailure() << what << ": first difference at byte " << (it.first - got.begin());
}

class SoftmaxCrossEntropyTest : public GpuTest {};

struct Case {
  int64_t M, V;
  DType dtype, label_dtype;
  float smoothing, z_loss;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "M=" << c.M << " V=" << c.V << " " << dtype_name(c.dtype) << " labels " << dtype_name(c.label_dtype)
      << " eps=" << c.smoothing << " z=" << c.z_loss;
}

class SoftmaxCrossEntropyOps : public SoftmaxCrossEntropyTest, public ::testing::WithParamInterface<Case> {};

// Forward, backward (out of place and in place), fused (sum and mean, in place) on one problem.
TEST_P(SoftmaxCrossEntropyOps, MatchReference) {
  const Case c = GetParam();
  Runtime& rt = SoftmaxCrossEntropyTest::rt();
  const uint64_t seed = mix_seed({0xce, static_cast<uint64_t>(c.M), static_cast<uint64_t>(c.V),
                                  static_cast<uint64_t>(c.dtype), static_cast<uint64_t>(c.label_dtype)});
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Problem p = make_problem(c.M, c.V, c.dtype, c.label_dtype, seed);
  const int64_t M = p.M, V = p.V;
  const size_t eb = dtype_size(p.dtype), bytes = static_cast<size_t>(M * V) * eb;
  ref::CeOptions ro;
  ro.smoothing = c.smoothing;
  ro.z_loss = c.z_loss;
  CrossEntropyOptions opts;
  opts.label_smoothing = c.smoothing;
  opts.z_loss = c.z_loss;
  const std::vector<ref::CeRow> want = ref::softmax_cross_entropy(p.logits, M, V, V, p.labels, ro);

  const std::vector<uint8_t> host_logits = encode_parallel(p.dtype, p.logits);
  DeviceBuffer x(rt, std::max<size_t>(bytes, 16)), dx(rt, std::max<size_t>(bytes, 16));
  x.poison();  // guard zones armed (the in-place runs write into x)
  x.upload(host_logits.data(), bytes);
  DeviceBuffer lab = upload_labels(rt, p);
  DeviceBuffer loss(rt, M * 4 + 16), rmax(rt, M * 4 + 16), sexp(rt, M * 4 + 16), gl(rt, M * 4 + 16);
  for (DeviceBuffer* b : {&loss, &rmax, &sexp, &dx}) b->poison();
  const TensorRef xt = x.ref(p.dtype, {M, V}), dxt = dx.ref(p.dtype, {M, V}), lt = lab.ref(p.label_dtype, {M});
  const TensorRef losst = loss.ref(DType::f32, {M}), rmt = rmax.ref(DType::f32, {M}), set = sexp.ref(DType::f32, {M});

  // Forward.
  const uint64_t launches = rt.stats().launches;
  softmax_cross_entropy_fwd(rt, xt, lt, losst, rmt, set, opts, nullptr);
  synchronize();
  if (M == 0) {
    EXPECT_EQ(rt.stats().launches, launches) << "M = 0 must launch nothing";
    return;
  }
  const std::vector<float> f_loss = loss.download<float>(M), f_max = rmax.download<float>(M),
                           f_sum = sexp.download<float>(M);
  EXPECT_TRUE(loss_agrees(want, f_loss, &f_max, &f_sum));
  EXPECT_TRUE(loss.guards_intact() && rmax.guards_intact() && sexp.guards_intact());

  // Backward, out of place, upstream gradients N(0, 1).
  std::vector<float> g = randn(M, mix_seed({seed, 2}));
  gl.upload(g);
  softmax_cross_entropy_bwd(rt, xt, lt, rmt, set, gl.ref(DType::f32, {M}), dxt, opts, nullptr);
  synchronize();
  const std::vector<uint8_t> d_out = dx.download<uint8_t>(bytes);
  EXPECT_TRUE(dx.guards_intact()) << "written outside dlogits";
  EXPECT_TRUE(grad_agrees(p, want, ro, std::vector<double>(g.begin(), g.end()), d_out, V));

  // Backward in place: the same bits.
  softmax_cross_entropy_bwd(rt, xt, lt, rmt, set, gl.ref(DType::f32, {M}), xt, opts, nullptr);
  synchronize();
  EXPECT_TRUE(same_bytes("in-place dlogits", x.download<uint8_t>(bytes), d_out));
  EXPECT_TRUE(x.guards_intact());

  // Fused, sum reduction with a scale, in place; then mean (g = scale / valid rows) out of place, with loss_total.
  int64_t valid = 0;
  double total = 0;
  for (const auto& r : want)
    if (!r.ignored) {
      ++valid;
      total += r.loss;
    }
  for (LossReduction red : {LossReduction::sum, LossReduction::mean}) {
    SCOPED_TRACE(red == LossReduction::sum ? "fused, sum, in place" : "fused, mean, out of place");
    x.upload(host_logits.data(), bytes);
    dx.poison();
    loss.poison();
    DeviceBuffer tot(rt, 4);
    FusedCrossEntropyOptions f;
    f.reduction = red;
    f.scale = 0.75f;
    f.loss_total = tot.ref(DType::f32, {1});
    const bool inplace = red == LossReduction::sum;
    softmax_cross_entropy_fused(rt, xt, lt, losst, inplace ? xt : dxt, f, opts, nullptr);
    synchronize();
    EXPECT_TRUE(loss_agrees(want, loss.download<float>(M), nullptr, nullptr));
    const double gs = red == LossReduction::sum ? 0.75 : 0.75 / static_cast<double>(std::max<int64_t>(valid, 1));
    EXPECT_TRUE(grad_agrees(p, want, ro, std::vector<double>(static_cast<size_t>(M), gs),
                            (inplace ? x : dx).download<uint8_t>(bytes), V));
    const double want_total = total * gs;
    const float got_total = tot.download<float>(1)[0];
    EXPECT_NEAR(got_total, want_total, 1e-5 * std::fabs(want_total) + 1e-4 * gs * static_cast<double>(valid))
        << "loss_total";
    EXPECT_TRUE(x.guards_intact() && dx.guards_intact() && loss.guards_intact());
  }
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (int64_t V : {157184, 157168, 151936, 129280})
    for (int64_t M : {1, 4097}) v.push_back({M, V, DType::bf16, DType::i64, 0.f, 0.f});
  v.push_back({8192, 157184, DType::bf16, DType::i64, 0.f, 0.f});
  v.push_back({0, 157184, DType::bf16, DType::i64, 0.f, 0.f});
  v.push_back({300, 32000, DType::f16, DType::i32, 0.1f, 1e-3f});   // fp16, int32 labels, smoothing, z-loss
  v.push_back({257, 50257, DType::f32, DType::i64, 0.05f, 0.f});    // fp32, odd V: rows cross 16-byte boundaries
  v.push_back({129, 50257, DType::bf16, DType::i32, 0.f, 1e-4f});   // odd V in bf16
  v.push_back({33, 1 << 20, DType::f32, DType::i64, 0.f, 0.f});     // fused falls back to forward + backward
  v.push_back({64, 77, DType::bf16, DType::i64, 0.2f, 0.f});        // a tiny vocabulary
  return v;
}

INSTANTIATE_TEST_SUITE_P(Grid, SoftmaxCrossEntropyOps, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return std::string(dtype_name(i.param.dtype)) + "_V" + std::to_string(i.param.V) + "_M" +
                                  std::to_string(i.param.M) + "_" + std::string(dtype_name(i.param.label_dtype)) +
                                  (i.param.smoothing != 0 ? "_smooth" : "") + (i.param.z_loss != 0 ? "_zloss" : "");
                         });

// Vocab-parallel on one GPU: tp column shards of one logits tensor (row stride V, so shards of 39292 bf16 start off
// 16-byte boundaries), partial forward per shard, merge, backward per shard into the matching columns of dlogits.
// The loss equals the unsharded forward's (and the reference); the gradient matches the reference.
TEST_F(SoftmaxCrossEntropyTest, VocabParallelEqualsUnsharded) {
  Runtime& r = rt();
  for (const auto& [V, tp, eps] : {std::tuple<int64_t, int64_t, float>{157168, 4, 0.f}, {157184, 3, 0.1f}}) {
    SCOPED_TRACE("V " + std::to_string(V) + " tp " + std::to_string(tp));
    const int64_t M = 1031;
    const Problem p = make_problem(M, V, DType::bf16, DType::i64, mix_seed({0xd1, static_cast<uint64_t>(V)}));
    ref::CeOptions ro;
    ro.smoothing = eps;
    const std::vector<ref::CeRow> want = ref::softmax_cross_entropy(p.logits, M, V, V, p.labels, ro);
    const size_t bytes = static_cast<size_t>(M * V) * 2;
    DeviceBuffer x(r, bytes), dx(r, bytes), part(r, tp * 4 * M * 4), loss(r, M * 4), rmax(r, M * 4), sexp(r, M * 4),
        uloss(r, M * 4), gl(r, M * 4);
    x.upload(encode_parallel(DType::bf16, p.logits));
    DeviceBuffer lab = upload_labels(r, p);
    dx.poison();
    const TensorRef lt = lab.ref(DType::i64, {M});
    CrossEntropyOptions opts;
    opts.label_smoothing = eps;
    softmax_cross_entropy_fwd(r, x.ref(DType::bf16, {M, V}), lt, uloss.ref(DType::f32, {M}), {}, {}, opts, nullptr);
    // Uneven shards: the last takes the remainder.
    const int64_t base = V / tp;
    std::vector<int64_t> start(tp + 1);
    for (int64_t k = 0; k < tp; ++k) start[k] = k * base;
    start[tp] = V;
    auto shard = [&](const DeviceBuffer& b, int64_t k) {
      return TensorRef::strided_2d(static_cast<char*>(b.data()) + start[k] * 2, DType::bf16, M,
                                   start[k + 1] - start[k], V);
    };
    for (int64_t k = 0; k < tp; ++k) {
      CrossEntropyOptions o = opts;
      o.vocab_start = start[k];
      o.vocab_total = V;
      const TensorRef pk = TensorRef::contiguous(static_cast<char*>(part.data()) + k * 4 * M * 4, DType::f32, {4, M});
      softmax_cross_entropy_partial_fwd(r, shard(x, k), lt, pk, o, nullptr);
    }
    CrossEntropyOptions mo = opts;
    mo.vocab_total = V;
    softmax_cross_entropy_merge(r, part.ref(DType::f32, {tp, 4, M}), lt, loss.ref(DType::f32, {M}),
                                rmax.ref(DType::f32, {M}), sexp.ref(DType::f32, {M}), mo, nullptr);
    std::vector<float> g = randn(M, 0xd2);
    gl.upload(g);
    for (int64_t k = 0; k < tp; ++k) {
      CrossEntropyOptions o = opts;
      o.vocab_start = start[k];
      o.vocab_total = V;
      softmax_cross_entropy_bwd(r, shard(x, k), lt, rmax.ref(DType::f32, {M}), sexp.ref(DType::f32, {M}),
                                gl.ref(DType::f32, {M}), shard(dx, k), o, nullptr);
    }
    synchronize();
    const std::vector<float> sharded = loss.download<float>(M), unsharded = uloss.download<float>(M);
    EXPECT_TRUE(loss_agrees(want, sharded, nullptr, nullptr)) << "sharded";
    EXPECT_TRUE(all_equal(
        "sharded vs unsharded loss", M,
        [&](int64_t m) { return std::fabs(sharded[m] - unsharded[m]) <= 2e-5 * std::fabs(unsharded[m]) + 2e-5; },
        [&](int64_t m) { return "row " + std::to_string(m) + ": " + fmt_num(sharded[m]) + " vs " + fmt_num(unsharded[m]); }));
    EXPECT_TRUE(grad_agrees(p, want, ro, std::vector<double>(g.begin(), g.end()), dx.download<uint8_t>(bytes), V));
    EXPECT_TRUE(dx.guards_intact());
  }
}

// Labels out of [0, V) other than ignore_index: reported with the first bad row, never read out of bounds.
TEST_F(SoftmaxCrossEntropyTest, BadLabelsAreReported) {
  Runtime& r = rt();
  const int64_t M = 300, V = 1000;
  Problem p = make_problem(M, V, DType::bf16, DType::i64, 0xd3);
  p.labels[17] = V;
  p.labels[40] = -1;
  p.labels[299] = int64_t{1} << 40;
  DeviceBuffer x(r, M * V * 2), loss(r, M * 4), flag(r, 4), dx(r, M * V * 2);
  x.upload(encode_parallel(DType::bf16, p.logits));
  DeviceBuffer lab = upload_labels(r, p);
  const TensorRef xt = x.ref(DType::bf16, {M, V}), lt = lab.ref(DType::i64, {M}), losst = loss.ref(DType::f32, {M});
  CrossEntropyOptions opts;
  try {
    softmax_cross_entropy_fwd(r, xt, lt, losst, {}, {}, opts, nullptr);
    ADD_FAILURE() << "no error for labels[17] = V";
  } catch (const InvalidArgument& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(message_names(msg, "labels")) << msg;
    EXPECT_NE(msg.find("labels[17] = 1000"), std::string::npos) << msg;
  }
  FusedCrossEntropyOptions f;
  EXPECT_THROW_NAMING(softmax_cross_entropy_fused(r, xt, lt, losst, dx.ref(DType::bf16, {M, V}), f, opts, nullptr),
                      "labels", InvalidArgument);
  // With a caller flag: no synchronization, no exception; the flag holds the first bad row; bad rows give NaN.
  opts.bad_label_row = flag.ref(DType::i32, {1});
  softmax_cross_entropy_fwd(r, xt, lt, losst, {}, {}, opts, nullptr);
  synchronize();
  EXPECT_EQ(flag.download<int32_t>(1)[0], 17);
  const std::vector<float> l = loss.download<float>(M);
  EXPECT_TRUE(std::isnan(l[17]) && std::isnan(l[40]) && std::isnan(l[299]));
  EXPECT_FALSE(std::isnan(l[16]));
  // Valid labels: the flag reads INT32_MAX.
  p.labels[17] = 3;
  p.labels[40] = 4;
  p.labels[299] = 5;
  DeviceBuffer lab2 = upload_labels(r, p);
  softmax_cross_entropy_fwd(r, xt, lab2.ref(DType::i64, {M}), losst, {}, {}, opts, nullptr);
  synchronize();
  EXPECT_EQ(flag.download<int32_t>(1)[0], 2147483647);
}

// Every row ignored: mean reduction gives total 0 and a zero gradient (not NaN).
TEST_F(SoftmaxCrossEntropyTest, AllRowsIgnored) {
  Runtime& r = rt();
  const int64_t M = 100, V = 4096;
  Problem p = make_problem(M, V, DType::bf16, DType::i64, 0xd4);
  std::fill(p.labels.begin(), p.labels.end(), kIgnore);
  DeviceBuffer x(r, M * V * 2), loss(r, M * 4), tot(r, 4);
  x.upload(encode_parallel(DType::bf16, p.logits));
  DeviceBuffer lab = upload_labels(r, p);
  FusedCrossEntropyOptions f;
  f.loss_total = tot.ref(DType::f32, {1});
  softmax_cross_entropy_fused(r, x.ref(DType::bf16, {M, V}), lab.ref(DType::i64, {M}), loss.ref(DType::f32, {M}),
                              x.ref(DType::bf16, {M, V}), f, {}, nullptr);
  synchronize();
  EXPECT_EQ(tot.download<float>(1)[0], 0.f);
  const std::vector<uint16_t> d = x.download<uint16_t>(M * V);
  EXPECT_TRUE(std::all_of(d.begin(), d.end(), [](uint16_t v) { return v == 0; }));
  const std::vector<float> l = loss.download<float>(M);
  EXPECT_TRUE(std::all_of(l.begin(), l.end(), [](float v) { return v == 0.f; }));
}

// A NaN logit makes its row's loss NaN and leaves the other rows alone; a strided logits tensor works.
TEST_F(SoftmaxCrossEntropyTest, NanRowAndStridedRows) {
  Runtime& r = rt();
  const int64_t M = 64, V = 3000, stride = 3072;
  Problem p = make_problem(M, V, DType::bf16, DType::i64, 0xd5);
  p.logits[7 * V + 100] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> padded(static_cast<size_t>(M * stride), 0.f);
  for (int64_t m = 0; m < M; ++m) std::copy_n(p.logits.begin() + m * V, V, padded.begin() + m * stride);
  DeviceBuffer x(r, M * stride * 2), loss(r, M * 4);
  x.upload(encode_parallel(DType::bf16, padded));
  DeviceBuffer lab = upload_labels(r, p);
  softmax_cross_entropy_fwd(r, TensorRef::strided_2d(x.data(), DType::bf16, M, V, stride), lab.ref(DType::i64, {M}),
                            loss.ref(DType::f32, {M}), {}, {}, {}, nullptr);
  synchronize();
  const std::vector<float> l = loss.download<float>(M);
  EXPECT_TRUE(std::isnan(l[7]));
  const std::vector<ref::CeRow> want = ref::softmax_cross_entropy(p.logits, M, V, V, p.labels, {});
  ASSERT_TRUE(std::isnan(want[7].loss));
  EXPECT_TRUE(loss_agrees(want, l, nullptr, nullptr));
}

// ignore_index 0 (HEAD's tests use −100 and 0); the fused op's optional statistics, single-pass and fallback.
TEST_F(SoftmaxCrossEntropyTest, IgnoreIndexZeroAndFusedStatistics) {
  Runtime& r = rt();
  for (const auto& [M, V, dtype] : {std::tuple<int64_t, int64_t, DType>{257, 32768, DType::bf16},
                                    {5, int64_t{1} << 20, DType::f32}}) {
    SCOPED_TRACE("V " + std::to_string(V));
    Problem p = make_problem(M, V, dtype, DType::i64, mix_seed({0xd6, static_cast<uint64_t>(V)}));
    for (auto& l : p.labels)
      if (l == kIgnore) l = 1;                             // −100 is an ordinary (bad) label here
    for (int64_t m = 0; m < M; m += 3) p.labels[m] = 0;  // ignored
    ref::CeOptions ro;
    ro.ignore_index = 0;
    const std::vector<ref::CeRow> want = ref::softmax_cross_entropy(p.logits, M, V, V, p.labels, ro);
    const size_t bytes = static_cast<size_t>(M * V) * dtype_size(dtype);
    DeviceBuffer x(r, bytes), loss(r, M * 4), rmax(r, M * 4), sexp(r, M * 4);
    for (DeviceBuffer* b : {&x, &loss, &rmax, &sexp}) b->poison();
    x.upload(encode_parallel(dtype, p.logits));
    DeviceBuffer lab = upload_labels(r, p);
    CrossEntropyOptions opts;
    opts.ignore_index = 0;
    FusedCrossEntropyOptions f;
    f.reduction = LossReduction::sum;
    f.row_max = rmax.ref(DType::f32, {M});
    f.sum_exp = sexp.ref(DType::f32, {M});
    softmax_cross_entropy_fused(r, x.ref(dtype, {M, V}), lab.ref(DType::i64, {M}), loss.ref(DType::f32, {M}),
                                x.ref(dtype, {M, V}), f, opts, nullptr);
    synchronize();
    const std::vector<float> l = loss.download<float>(M), mx = rmax.download<float>(M), se = sexp.download<float>(M);
    EXPECT_TRUE(loss_agrees(want, l, &mx, &se));
    EXPECT_TRUE(grad_agrees(p, want, ro, std::vector<double>(static_cast<size_t>(M), 1.0), x.download<uint8_t>(bytes), V));
    EXPECT_TRUE(x.guards_intact() && loss.guards_intact() && rmax.guards_intact() && sexp.guards_intact());
  }
}

}  // namespace
}  // namespace kiln::test
