// tests/reference/rms_norm.cpp — see rms_norm.hpp.
#include "reference/rms_norm.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "test_util.hpp"

namespace kiln::ref {

namespace {

// Magnitudes of the finite non-negative codes 0x00…0x7E, in increasing order (the code is the index).
const std::array<float, 127>& e4m3_magnitudes() {
  static const std::array<float, 127> table = [] {
    std::array<float, 127> t{};
    for (int c = 0; c < 127; ++c) t[c] = test::e4m3_to_float(static_cast<uint8_t>(c));
    return t;
  }();
  return table;
}

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

uint8_t e4m3_from_float(float v) {
  if (std::isnan(v)) return 0x7F;
  const uint8_t sign = std::signbit(v) ? 0x80 : 0x00;
  const float a = std::fabs(v);
  if (a >= kE4m3Max) return sign | 0x7E;  // saturate: 448 itself, everything beyond it, and inf
  const auto& t = e4m3_magnitudes();
  // t[lo] ≤ a < t[hi], hi in [1, 126].
  const int hi = static_cast<int>(std::upper_bound(t.begin(), t.end(), a) - t.begin());
  const int lo = hi - 1;
  // Neighbouring e4m3 values have at most 4 significant bits, so their midpoint is exact in fp32.
  const float mid = (t[lo] + t[hi]) * 0.5f;
  int code;
  if (a < mid) code = lo;
  else if (a > mid) code = hi;
  else code = (lo % 2 == 0) ? lo : hi;  // tie: the even code, i.e. the one whose mantissa LSB is 0
  return static_cast<uint8_t>(sign | code);
}

float block_scale(float amax, bool round_scale) {
  const float s = std::max(amax / kE4m3Max, 1e-30f);
  if (!round_scale || !std::isfinite(s)) return s;
  int e = 0;
  const float m = std::frexp(s, &e);  // s = m·2^e, m in [0.5, 1): s is a power of two iff m == 0.5
  return m == 0.5f ? s : std::ldexp(1.0f, e);
}

void block_quant_rowwise(std::span<const float> y, int64_t M, int64_t N, bool round_scale, std::span<uint8_t> q,
                         std::span<float> scale) {
  require(N % kQuantBlock == 0, "block_quant_rowwise: N must be a multiple of 128");
  require(static_cast<int64_t>(y.size()) == M * N && static_cast<int64_t>(q.size()) == M * N &&
              static_cast<int64_t>(scale.size()) == (N / kQuantBlock) * M,
          "block_quant_rowwise: buffer sizes");
  test::parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t j = 0; j < N / kQuantBlock; ++j) {
        const float* row = &y[m * N + j * kQuantBlock];
        float amax = 0.0f;
        for (int64_t k = 0; k < kQuantBlock; ++k) {
          if (std::fabs(row[k]) > amax) amax = std::fabs(row[k]);  // NaN compares false: ignored
        }
        const float s = block_scale(amax, round_scale);
        scale[j * M + m] = s;
        for (int64_t k = 0; k < kQuantBlock; ++k) q[m * N + j * kQuantBlock + k] = e4m3_from_float(row[k] / s);
      }
    }
  });
}

void block_quant_transposed(std::span<const float> y, int64_t M, int64_t N, bool round_scale, std::span<uint8_t> qT,
                            std::span<float> scale) {
  const int64_t blocks = (M + kQuantBlock - 1) / kQuantBlock;
  require(static_cast<int64_t>(y.size()) == M * N && static_cast<int64_t>(qT.size()) == M * N &&
              static_cast<int64_t>(scale.size()) == blocks * N,
          "block_quant_transposed: buffer sizes");
  test::parallel_for(blocks, [&](int64_t i0, int64_t i1) {
    std::vector<float> amax(static_cast<size_t>(N)), s(static_cast<size_t>(N));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t m0 = i * kQuantBlock, m1 = std::min(M, m0 + kQuantBlock);
      std::fill(amax.begin(), amax.end(), 0.0f);
      for (int64_t m = m0; m < m1; ++m) {
        for (int64_t n = 0; n < N; ++n) {
          if (std::fabs(y[m * N + n]) > amax[n]) amax[n] = std::fabs(y[m * N + n]);
        }
      }
      for (int64_t n = 0; n < N; ++n) {
        s[n] = block_scale(amax[n], round_scale);
        scale[i * N + n] = s[n];
      }
      for (int64_t m = m0; m < m1; ++m) {
        for (int64_t n = 0; n < N; ++n) qT[n * M + m] = e4m3_from_float(y[m * N + n] / s[n]);
      }
    }
  });
}

std::vector<float> rms_inv(std::span<const float> x, int64_t M, int64_t N, float eps) {
  require(static_cast<int64_t>(x.size()) == M * N && N > 0, "rms_inv: sizes");
  std::vector<float> r(static_cast<size_t>(M));
  test::parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      double sum = 0.0;
      for (int64_t k = 0; k < N; ++k) sum += static_cast<double>(x[m * N + k]) * x[m * N + k];
      r[m] = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(N) + static_cast<double>(eps)));
    }
  });
  return r;
}

std::vector<RmsInvExpect> rms_inv_expectations(std::span<const float> x, int64_t M, int64_t N) {
  require(static_cast<int64_t>(x.size()) == M * N, "rms_inv_expectations: sizes");
  constexpr double kFltMax = std::numeric_limits<float>::max();
  std::vector<RmsInvExpect> e(static_cast<size_t>(M));
  test::parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      bool nan = false, overflow = false;
      double sum = 0.0;
      for (int64_t k = 0; k < N; ++k) {
        const double v = x[m * N + k];
        nan |= std::isnan(v);
        overflow |= !(v * v <= kFltMax);  // inf, or a square fp32 cannot hold
        sum += v * v;
      }
      e[m] = nan ? RmsInvExpect::nan
             : overflow ? RmsInvExpect::zero
             : sum > kFltMax / 4 ? RmsInvExpect::unchecked
             : RmsInvExpect::close;
    }
  });
  return e;
}

bool rms_inv_agrees(RmsInvExpect e, float gpu, float reference) {
  switch (e) {
    case RmsInvExpect::nan: return std::isnan(gpu);
    case RmsInvExpect::zero: return gpu == 0.0f;
    case RmsInvExpect::unchecked: return true;
    case RmsInvExpect::close:
      if (std::isinf(reference)) return gpu == reference;  // eps = 0 and an all-zero row
      return std::fabs(static_cast<double>(gpu) - reference) <= kRmsInvRelTol * reference;
  }
  return false;
}

std::vector<float> rms_norm_apply(std::span<const float> x, std::span<const float> w, std::span<const float> r,
                                  int64_t M, int64_t N) {
  require(static_cast<int64_t>(x.size()) == M * N && static_cast<int64_t>(w.size()) == N &&
              static_cast<int64_t>(r.size()) == M,
          "rms_norm_apply: sizes");
  std::vector<float> y(x.size());
  test::parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t k = 0; k < N; ++k) {
        const float xr = x[m * N + k] * r[m];  // rounded to fp32 before the weight multiply, as the kernel does
        y[m * N + k] = xr * w[k];
      }
    }
  });
  return y;
}

BlockQuantOutputs rms_norm_block_quant(std::span<const float> x, std::span<const float> w, std::span<const float> r,
                                       int64_t M, int64_t N, bool round_scale, bool rowwise, bool transposed) {
  const std::vector<float> y = rms_norm_apply(x, w, r, M, N);
  BlockQuantOutputs out;
  if (rowwise) {
    out.q.resize(y.size());
    out.q_scale.resize(static_cast<size_t>((N / kQuantBlock) * M));
    block_quant_rowwise(y, M, N, round_scale, out.q, out.q_scale);
  }
  if (transposed) {
    out.qT.resize(y.size());
    out.qT_scale.resize(static_cast<size_t>((M + kQuantBlock - 1) / kQuantBlock * N));
    block_quant_transposed(y, M, N, round_scale, out.qT, out.qT_scale);
  }
  return out;
}

RmsNormGrads rms_norm_bwd(std::span<const float> dy, std::span<const float> x, std::span<const float> w, int64_t M,
                          int64_t N, float eps) {
  require(static_cast<int64_t>(x.size()) == M * N && dy.size() == x.size() && static_cast<int64_t>(w.size()) == N,
          "rms_norm_bwd: sizes");
  RmsNormGrads g;
  g.dx.resize(x.size());
  g.dweight.assign(static_cast<size_t>(N), 0.0);
  std::vector<double> r(static_cast<size_t>(M));
  test::parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* xm = &x[m * N];
      const float* gm = &dy[m * N];
      double sum_sq = 0.0, dot = 0.0;
      for (int64_t k = 0; k < N; ++k) {
        sum_sq += static_cast<double>(xm[k]) * xm[k];
        dot += static_cast<double>(xm[k]) * gm[k] * w[k];
      }
      const double rm = 1.0 / std::sqrt(sum_sq / static_cast<double>(N) + static_cast<double>(eps));
      r[m] = rm;
      const double c = rm * rm * rm * dot / static_cast<double>(N);
      for (int64_t k = 0; k < N; ++k) g.dx[m * N + k] = rm * gm[k] * w[k] - c * xm[k];
    }
  });
  // Split by columns so each dweight[k] is summed over m in order, whatever the thread count.
  test::parallel_for(N, [&](int64_t k0, int64_t k1) {
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t k = k0; k < k1; ++k) g.dweight[k] += static_cast<double>(x[m * N + k]) * dy[m * N + k] * r[m];
    }
  });
  return g;
}

}  // namespace kiln::ref
