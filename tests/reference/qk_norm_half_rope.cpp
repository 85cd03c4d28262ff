// tests/reference/qk_norm_half_rope.cpp — see qk_norm_half_rope.hpp.
#include "reference/qk_norm_half_rope.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>

#include "test_util.hpp"

namespace kiln::ref {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

void check_problem(const QkRopeProblem& p) {
  require(p.H > 0 && p.h > 0 && p.H % p.h == 0, "qk_norm_half_rope reference: H, h");
  require(p.D >= 4 && p.D % 4 == 0, "qk_norm_half_rope reference: D must be a multiple of 4");
}

// Output offset of head (kind, idx) of row (s, b) in q [B,S,H,D] or k/v [B,S,h,D].
int64_t out_offset(const QkRopeProblem& p, int kind, int idx, int64_t s, int64_t b) {
  const int64_t heads = kind == 0 ? p.H : p.h;
  return ((b * p.S + s) * heads + idx) * p.D;
}

// cos / sin of row s's R = D/2 angles (0 where freqs has no row for its position).
void row_angles(const QkRopeProblem& p, std::span<const float> freqs, int64_t s, std::vector<double>& cs,
                std::vector<double>& sn) {
  const int64_t pos = rope_position(p, s), R = p.D / 2;
  for (int64_t c = 0; c < R; ++c) {
    const double f = pos >= 0 ? static_cast<double>(freqs[pos * R + c]) : 0.0;
    cs[c] = std::cos(f);
    sn[c] = std::sin(f);
  }
}

template <typename In>
QkRopeOutputs forward(const QkRopeProblem& p, std::span<const In> qkv, std::span<const In> wq,
                      std::span<const In> wk, std::span<const float> freqs) {
  check_problem(p);
  const int64_t D = p.D, Q = D / 4, R = D / 2, Wd = p.width();
  require(static_cast<int64_t>(qkv.size()) == p.S * p.B * Wd, "qkv size");
  require(static_cast<int64_t>(wq.size()) == D && static_cast<int64_t>(wk.size()) == D, "weight size");
  require(static_cast<int64_t>(freqs.size()) == p.freqs_rows * R, "freqs size");
  QkRopeOutputs o;
  o.q.assign(static_cast<size_t>(p.B * p.S * p.H * D), 0.0);
  o.k.assign(static_cast<size_t>(p.B * p.S * p.h * D), 0.0);
  o.v.assign(o.k.size(), 0.0);
  test::parallel_for(p.S, [&](int64_t s0, int64_t s1) {
    std::vector<double> n(D), cs(R), sn(R);
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t pos = rope_position(p, s);
      row_angles(p, freqs, s, cs, sn);
      for (int64_t b = 0; b < p.B; ++b) {
        const In* row = qkv.data() + (s * p.B + b) * Wd;
        for (int j = 0; j < p.heads(); ++j) {
          int kind, idx;
          qkv_slot(p, j, kind, idx);
          const In* t = row + j * D;
          const int64_t off = out_offset(p, kind, idx, s, b);
          if (kind == 2) {
            for (int64_t c = 0; c < D; ++c) o.v[off + c] = static_cast<double>(t[c]);
            continue;
          }
          const In* w = kind == 0 ? wq.data() : wk.data();
          double ss = 0.0;
          for (int64_t c = 0; c < D; ++c) ss += static_cast<double>(t[c]) * static_cast<double>(t[c]);
          const double r = pos >= 0 ? 1.0 / std::sqrt(ss / static_cast<double>(D) + p.eps) : kNaN;
          for (int64_t c = 0; c < D; ++c) n[c] = static_cast<double>(t[c]) * r * static_cast<double>(w[c]);
          double* out = (kind == 0 ? o.q.data() : o.k.data()) + off;
          for (int64_t j2 = 0; j2 < Q; ++j2) {
            out[j2] = n[j2] * cs[j2] - n[j2 + Q] * sn[j2];
            out[j2 + Q] = n[j2 + Q] * cs[j2 + Q] + n[j2] * sn[j2 + Q];
          }
          for (int64_t c = R; c < D; ++c) out[c] = n[c];
        }
      }
    }
  });
  return o;
}

}  // namespace

void qkv_slot(const QkRopeProblem& p, int j, int& kind, int& idx) {
  if (p.interleaved) {
    const int w = p.H / p.h, g = j / (w + 2), q = j % (w + 2);
    kind = q < w ? 0 : (q == w ? 1 : 2);
    idx = q < w ? g * w + q : g;
  } else {
    kind = j < p.H ? 0 : (j < p.H + p.h ? 1 : 2);
    idx = j < p.H ? j : (j < p.H + p.h ? j - p.H : j - p.H - p.h);
  }
}

int64_t rope_position(const QkRopeProblem& p, int64_t s) {
  int64_t start = 0;
  if (!p.cu_seqlens.empty()) {
    // The last i with cu_seqlens[i] ≤ s (rows past the last boundary continue from it).
    int64_t i = -1;
    for (int64_t k = 0; k < static_cast<int64_t>(p.cu_seqlens.size()); ++k)
      if (p.cu_seqlens[k] <= s) i = k;
    // Non-decreasing tables only here (the GPU's binary search agrees on those).
    start = i >= 0 ? p.cu_seqlens[i] : p.cu_seqlens[0];
  }
  const int64_t pos = p.position_offset + s - start;
  return pos >= 0 && pos < p.freqs_rows ? pos : -1;
}

QkRopeOutputs qk_norm_half_rope_fwd(const QkRopeProblem& p, std::span<const float> qkv, std::span<const float> wq,
                                    std::span<const float> wk, std::span<const float> freqs) {
  return forward<float>(p, qkv, wq, wk, freqs);
}

QkRopeOutputs qk_norm_half_rope_fwd(const QkRopeProblem& p, std::span<const double> qkv, std::span<const double> wq,
                                    std::span<const double> wk, std::span<const float> freqs) {
  return forward<double>(p, qkv, wq, wk, freqs);
}

QkRopeGrads qk_norm_half_rope_bwd(const QkRopeProblem& p, std::span<const float> gq, std::span<const float> gk,
                                  std::span<const float> gv, std::span<const float> qkv, std::span<const float> wq,
                                  std::span<const float> wk, std::span<const float> freqs) {
  check_problem(p);
  const int64_t D = p.D, Q = D / 4, R = D / 2, Wd = p.width();
  require(static_cast<int64_t>(qkv.size()) == p.S * p.B * Wd, "qkv size");
  require(static_cast<int64_t>(gq.size()) == p.B * p.S * p.H * D, "gq size");
  require(static_cast<int64_t>(gk.size()) == p.B * p.S * p.h * D && gv.size() == gk.size(), "gk/gv size");
  require(static_cast<int64_t>(freqs.size()) == p.freqs_rows * R, "freqs size");
  QkRopeGrads g;
  g.dqkv.assign(qkv.size(), 0.0);
  // Weight-gradient partials per position, summed in position order at the end (deterministic, thread-count free).
  std::vector<double> part(static_cast<size_t>(p.S * 2 * D), 0.0);
  test::parallel_for(p.S, [&](int64_t s0, int64_t s1) {
    std::vector<double> gp(D), cs(R), sn(R);
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t pos = rope_position(p, s);
      row_angles(p, freqs, s, cs, sn);
      double* dw = part.data() + s * 2 * D;
      for (int64_t b = 0; b < p.B; ++b) {
        const float* row = qkv.data() + (s * p.B + b) * Wd;
        double* drow = g.dqkv.data() + (s * p.B + b) * Wd;
        for (int j = 0; j < p.heads(); ++j) {
          int kind, idx;
          qkv_slot(p, j, kind, idx);
          const int64_t off = out_offset(p, kind, idx, s, b);
          double* dt = drow + j * D;
          if (kind == 2) {
            for (int64_t c = 0; c < D; ++c) dt[c] = gv[off + c];
            continue;
          }
          const float* t = row + j * D;
          const float* gr = (kind == 0 ? gq.data() : gk.data()) + off;
          const float* w = kind == 0 ? wq.data() : wk.data();
          for (int64_t j2 = 0; j2 < Q; ++j2) {  // adjoint of the rotation
            const double ga = gr[j2], gb = gr[j2 + Q];
            gp[j2] = ga * cs[j2] + gb * sn[j2 + Q];
            gp[j2 + Q] = gb * cs[j2 + Q] - ga * sn[j2];
          }
          for (int64_t c = R; c < D; ++c) gp[c] = gr[c];
          double ss = 0.0, dot = 0.0;
          for (int64_t c = 0; c < D; ++c) {
            ss += static_cast<double>(t[c]) * t[c];
            dot += static_cast<double>(t[c]) * gp[c] * w[c];
          }
          const double r = pos >= 0 ? 1.0 / std::sqrt(ss / static_cast<double>(D) + p.eps) : kNaN;
          const double coef = r * r * r * dot / static_cast<double>(D);
          double* acc = dw + (kind == 0 ? 0 : D);
          for (int64_t c = 0; c < D; ++c) {
            dt[c] = r * gp[c] * w[c] - coef * t[c];
            acc[c] += t[c] * r * gp[c];
          }
        }
      }
    }
  });
  g.dwq.assign(static_cast<size_t>(D), 0.0);
  g.dwk.assign(static_cast<size_t>(D), 0.0);
  for (int64_t s = 0; s < p.S; ++s)
    for (int64_t c = 0; c < D; ++c) {
      g.dwq[c] += part[s * 2 * D + c];
      g.dwk[c] += part[s * 2 * D + D + c];
    }
  return g;
}

std::vector<float> half_rope_freqs(int64_t rows, int D, double theta) {
  const int64_t R = D / 2, Q = D / 4;
  std::vector<float> f(static_cast<size_t>(rows * R));
  for (int64_t p = 0; p < rows; ++p)
    for (int64_t j = 0; j < Q; ++j) {
      const float a = static_cast<float>(static_cast<double>(p) * std::pow(theta, -2.0 * static_cast<double>(j) / R));
      f[p * R + j] = f[p * R + Q + j] = a;
    }
  return f;
}

}  // namespace kiln::ref
