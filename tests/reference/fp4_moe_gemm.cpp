// tests/reference/fp4_moe_gemm.cpp — see fp4_moe_gemm.hpp.
#include "reference/fp4_moe_gemm.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>

#include "test_util.hpp"

namespace kiln::ref {

double fp4_scale_value(uint8_t byte, int format) {
  if (format == 0) return test::e4m3_to_float(byte);
  return byte == 255 ? std::numeric_limits<double>::quiet_NaN() : std::ldexp(1.0, static_cast<int>(byte) - 127);
}

std::vector<double> fp4_dequant(const std::vector<uint8_t>& codes, const std::vector<uint8_t>& scales, int64_t E,
                                int64_t R, int64_t K, int format) {
  const int64_t B = format == 0 ? 16 : 32;
  std::vector<double> w(static_cast<size_t>(E * R * K));
  for (int64_t row = 0; row < E * R; ++row)
    for (int64_t k = 0; k < K; ++k) {
      const uint8_t byte = codes[row * (K / 2) + k / 2];
      const uint8_t code = (k & 1) ? byte >> 4 : byte & 15;
      w[row * K + k] = e2m1_value(code) * fp4_scale_value(scales[row * (K / B) + k / B], format);
    }
  return w;
}

// Packed row p (of 128-row blocks) → canonical row, −1 for padding. Gated: inside each 16-row slab, rows 0–7 are the
// linear rows 8·slab …, rows 8–15 the gate rows I + 8·slab ….
static int64_t canonical_row(int64_t p, int64_t R, bool gated) {
  if (!gated) return p < R ? p : -1;
  const int64_t I = R / 2, j = (p / 16) * 8 + p % 8;
  if (j >= I) return -1;
  return p % 16 < 8 ? j : I + j;
}

std::vector<uint8_t> fp4_moe_prepack(const std::vector<uint8_t>& codes, const std::vector<uint8_t>& scales, int64_t E,
                                     int64_t R, int64_t K, int format, bool gated) {
  const int64_t RB = (R + 127) / 128, KT = (K + 127) / 128, SB = format == 0 ? 16 : 32, NB = 128 / SB;
  const int64_t chunk = 8192 + (format == 0 ? 1024 : 512);
  std::vector<uint8_t> out(static_cast<size_t>(E * RB * KT * chunk), 0);
  auto code = [&](int64_t e, int64_t row, int64_t k) -> uint8_t {
    if (row < 0 || k >= K) return 0;
    const uint8_t b = codes[(e * R + row) * (K / 2) + k / 2];
    return (k & 1) ? b >> 4 : b & 15;
  };
  for (int64_t e = 0; e < E; ++e)
    for (int64_t rb = 0; rb < RB; ++rb)
      for (int64_t kt = 0; kt < KT; ++kt) {
        uint8_t* c = out.data() + ((e * RB + rb) * KT + kt) * chunk;
        // Codes: thread (wg, warp, lane), half tile h, step s = 4h + m: the 32-bit word m of its 16 bytes. Fragment
        // register j holds rows g (j even) / g + 8 (j odd), k pairs 2c (j < 2) / 2c + 8 (j ≥ 2); even element in
        // nibble 3 − j, odd element in nibble 7 − j.
        for (int wg = 0; wg < 2; ++wg)
          for (int h = 0; h < 2; ++h)
            for (int warp = 0; warp < 4; ++warp)
              for (int lane = 0; lane < 32; ++lane)
                for (int m = 0; m < 4; ++m) {
                  uint32_t word = 0;
                  for (int j = 0; j < 4; ++j) {
                    const int64_t p = rb * 128 + wg * 64 + warp * 16 + lane / 4 + 8 * (j % 2);
                    const int64_t k = kt * 128 + 16 * (4 * h + m) + 2 * (lane % 4) + 8 * (j / 2);
                    const int64_t row = canonical_row(p, R, gated);
                    word |= static_cast<uint32_t>(code(e, row, k)) << (4 * (3 - j));
                    word |= static_cast<uint32_t>(code(e, row, k + 1)) << (4 * (7 - j));
                  }
                  const int64_t at = 16 * (256 * wg + 128 * h + 32 * warp + lane) + 4 * m;
                  for (int b = 0; b < 4; ++b) c[at + b] = static_cast<uint8_t>(word >> (8 * b));
                }
        // Scales: per (wg, warp, g = lane / 4), byte 2·blk + hh = block blk of row g + 8·hh.
        for (int wg = 0; wg < 2; ++wg)
          for (int warp = 0; warp < 4; ++warp)
            for (int g = 0; g < 8; ++g)
              for (int64_t blk = 0; blk < NB; ++blk)
                for (int hh = 0; hh < 2; ++hh) {
                  const int64_t p = rb * 128 + wg * 64 + warp * 16 + g + 8 * hh;
                  const int64_t row = canonical_row(p, R, gated), kb = kt * NB + blk;
                  const uint8_t v = row >= 0 && kb < K / SB ? scales[(e * R + row) * (K / SB) + kb]
                                                            : static_cast<uint8_t>(format == 0 ? 0 : 127);
                  c[8192 + (format == 0 ? 16 : 8) * (32 * wg + 8 * warp + g) + 2 * blk + hh] = v;
                }
      }
  return out;
}

static double bf16_round(double v) { return test::bf16_to_float(test::float_to_bf16(static_cast<float>(v))); }

std::vector<double> fp4_moe_gemm(const Fp4MoeGemmRef& p, const std::vector<double>& w, const std::vector<float>& act) {
  const int64_t E = p.E, R = p.R, K = p.K, cols = p.gated ? R / 2 : R;
  if (static_cast<int64_t>(w.size()) != E * R * K || static_cast<int64_t>(act.size()) < p.rows_cap * K)
    throw std::invalid_argument("fp4_moe_gemm reference: sizes");
  std::vector<double> out(static_cast<size_t>(p.rows_cap * cols), std::numeric_limits<double>::quiet_NaN());
  auto opt = [](const std::vector<float>& v, int64_t i, double dflt) { return v.empty() ? dflt : double(v[i]); };
  for (int64_t e = 0; e < E; ++e) {
    const double sa = opt(p.scale_a, e, 1), sb = opt(p.scale_b, e, 1);
    const double al = opt(p.alpha, e, 1), be = opt(p.beta, e, 0);
    const double L = opt(p.limit, e, std::numeric_limits<double>::infinity());
    const int64_t r0 = p.offsets[e], r1 = r0 + p.counts[e];
    test::parallel_for(r1 - r0, [&](int64_t b, int64_t end) {
      std::vector<double> acc(static_cast<size_t>(R));
      for (int64_t r = r0 + b; r < r0 + end; ++r) {
        const float* x = act.data() + r * K;
        for (int64_t j = 0; j < R; ++j) {
          const double* wr = w.data() + (e * R + j) * K;
          double s = 0;
          for (int64_t k = 0; k < K; ++k) s += wr[k] * x[k];
          acc[j] = s;
        }
        const double rs = opt(p.row_scale, r, 1);
        auto pre = [&](int64_t j) { return sa * (rs * acc[j] + opt(p.bias, e * R + j, 0)); };
        for (int64_t j = 0; j < cols; ++j) {
          double v;
          if (p.gated) {
            const double x0 = pre(j), x1 = pre(cols + j);
            double h;
            if (p.activation == 3) {
              const double g = std::min(x1, L), l = std::min(std::max(x0, -L), L);
              h = g / (1 + std::exp(-al * g)) * (l + be);
            } else {
              h = 0.5 * x1 * std::erfc(-x1 / std::sqrt(2.0)) * x0;
            }
            v = sa == 0 ? 0.0 : h * sb / sa;
          } else {
            double u = pre(j);
            if (p.gemm1 && p.activation == 6) u = std::max(u, 0.0) * std::max(u, 0.0);
            v = sb * u;
          }
          out[r * cols + j] = bf16_round(v);
        }
      }
    });
  }
  return out;
}

}  // namespace kiln::ref
