// tests/reference/moe_layer.cpp — see moe_layer.hpp.
#include "reference/moe_layer.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>

#include "kiln/ops/moe.hpp"
#include "reference/moe.hpp"
#include "reference/rms_norm.hpp"
#include "reference/router_gemm.hpp"
#include "reference/silu.hpp"
#include "test_util.hpp"

namespace kiln::ref {
namespace {

void require(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(what);
}

float bf16(double v) { return test::round_to(DType::bf16, static_cast<float>(v)); }

double silu_d(double a) { return a / (1.0 + std::exp(-a)); }
double sigmoid_d(double a) { return 1.0 / (1.0 + std::exp(-a)); }

// Segment starts s_e and token-block starts b_e of the per-expert segmented layouts.
struct Segments {
  std::vector<int64_t> s, b;
  int64_t M = 0;
  explicit Segments(std::span<const int> counts) {
    int64_t rs = 0, bs = 0;
    for (int c : counts) {
      require(c >= 0, "negative count");
      s.push_back(rs);
      b.push_back(bs);
      rs += c;
      bs += (c + 127) / 128;
    }
    M = rs;
  }
};

// Which layout variant the dequantizers read (the broken ones exist to prove the comparison catches them).
enum class RowScale { segmented, token_major_broken };
enum class TokenBlocks { per_expert, unblocked_broken };

std::vector<float> dequant_rowwise(std::span<const uint8_t> q, std::span<const float> q_scale,
                                   std::span<const int> counts, int64_t W, RowScale how) {
  const Segments seg(counts);
  const int64_t nb = W / 128;
  require(static_cast<int64_t>(q.size()) >= seg.M * W && static_cast<int64_t>(q_scale.size()) >= seg.M * nb,
          "dequant_rowwise: buffer sizes");
  std::vector<float> out(static_cast<size_t>(seg.M * W));
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t c = counts[e], s = seg.s[e];
    for (int64_t i = 0; i < c; ++i)
      for (int64_t j = 0; j < W; ++j) {
        const int64_t blk = j / 128;
        const int64_t si = how == RowScale::segmented ? s * nb + blk * c + i : s * nb + i * nb + blk;
        out[(s + i) * W + j] = test::e4m3_to_float(q[(s + i) * W + j]) * q_scale[si];
      }
  }
  return out;
}

std::vector<float> dequant_transposed(std::span<const uint8_t> qT, std::span<const float> qT_scale,
                                      std::span<const int> counts, int64_t W, TokenBlocks how) {
  const Segments seg(counts);
  require(static_cast<int64_t>(qT.size()) >= seg.M * W, "dequant_transposed: qT size");
  std::vector<float> out(static_cast<size_t>(seg.M * W));
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t c = counts[e], s = seg.s[e];
    const int64_t b = how == TokenBlocks::per_expert ? seg.b[e] : s / 128;
    for (int64_t i = 0; i < c; ++i)
      for (int64_t j = 0; j < W; ++j) {
        const int64_t si = (b + i / 128) * W + j;
        require(si < static_cast<int64_t>(qT_scale.size()), "dequant_transposed: qT_scale too small for the counts");
        out[(s + i) * W + j] = test::e4m3_to_float(qT[s * W + j * c + i]) * qT_scale[si];
      }
  }
  return out;
}

double rel_l2(std::span<const float> got, std::span<const double> want) {
  if (got.size() != want.size()) return std::nan("");
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  if (std::isnan(num)) return num;
  if (den == 0) return num == 0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}
double rel_l2(std::span<const double> got, std::span<const double> want) {
  if (got.size() != want.size()) return std::nan("");
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = got[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  if (std::isnan(num)) return num;
  if (den == 0) return num == 0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}
double norm2(std::span<const double> v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

}  // namespace

int64_t MoeLayerShape::num_out() const { return moe_max_out_rows(T, E, k, multiple_of); }

MoeLayerInputs make_moe_layer_inputs(const MoeLayerShape& s, uint64_t seed, MoeLayerRouting routing) {
  const int64_t T = s.T, H = s.H, E = s.E, n = s.n;
  std::mt19937_64 rng(test::mix_seed({seed, 0x4d6f45ull}));
  auto pow2 = [&](int lo, int hi) { return std::ldexp(1.0f, std::uniform_int_distribution<int>(lo, hi)(rng)); };
  MoeLayerInputs in;
  // Activations: per-token factor × per-(token, 128-column block) factor.
  auto activations = [&](uint64_t sub, int lo, int hi) {
    std::vector<float> v = test::randn(T * H, test::mix_seed({seed, sub}));
    for (int64_t t = 0; t < T; ++t) {
      const float ft = pow2(lo, hi);
      for (int64_t b = 0; b < H / 128; ++b) {
        const float f = ft * pow2(lo, hi);
        for (int64_t j = 0; j < 128; ++j) v[t * H + b * 128 + j] *= f;
      }
    }
    test::round_to(DType::bf16, v);
    return v;
  };
  in.x = activations(1, -1, 1);
  in.dy = activations(2, -1, 1);
  // Router: logits of order 1 for activations of rms ≈ 4.
  in.wr = test::randn(E * H, test::mix_seed({seed, 3}), 0.25f / std::sqrt(static_cast<float>(H)));
  test::round_to(DType::bf16, in.wr);
  // Experts: per-expert × per-output-channel factors.
  auto experts = [&](uint64_t sub, int64_t N, int64_t K, int lo, int hi) {
    std::vector<float> w = test::randn(E * N * K, test::mix_seed({seed, sub}), 1.0f / std::sqrt(static_cast<float>(K)));
    for (int64_t e = 0; e < E; ++e) {
      const float fe = pow2(lo, hi);
      for (int64_t i = 0; i < N; ++i) {
        const float f = fe * pow2(lo, hi);
        for (int64_t k = 0; k < K; ++k) w[(e * N + i) * K + k] *= f;
      }
    }
    test::round_to(DType::bf16, w);
    return w;
  };
  in.w1 = experts(4, 2 * n, H, -1, 0);
  in.w2 = experts(5, H, n, -1, 1);
  // Selection bias (keys = softmax score + bias, scores in [0, 1]): −4 never selects an expert while ≥ k others are
  // unbiased; +4 on k experts selects exactly those for every token.
  if (routing == MoeLayerRouting::zero_count_experts) {
    in.bias.assign(E, 0.0f);
    for (int64_t e = 1; e < E; e += 3) in.bias[e] = -4.0f;  // E = 16: experts 1, 4, 7, 10, 13 get no token
    require(E - (E + 1) / 3 >= s.k, "zero_count_experts: too few unbiased experts");
  } else if (routing == MoeLayerRouting::all_to_first_k) {
    in.bias.assign(E, 0.0f);
    for (int64_t e = 0; e < s.k; ++e) in.bias[e] = 4.0f;
  } else if (routing == MoeLayerRouting::all_to_one) {
    require(s.k == 1 && E > 5, "all_to_one: top-1 and E > 5");
    in.bias.assign(E, 0.0f);
    in.bias[5] = 4.0f;
  }
  return in;
}

std::vector<MoeLayerCase> moe_layer_cases() {
  std::vector<MoeLayerCase> c;
  // The shape: T=512, H=256, E=16, top-4, n=128, padding 16, renormalized softmax.
  c.push_back({"random", MoeLayerRouting::random, 1, MoeLayerShape{}});
  // Five experts never selected (empty segments in the map, the permute, the SiLU schedule, the wgrads).
  c.push_back({"zero_count_experts", MoeLayerRouting::zero_count_experts, 2, MoeLayerShape{}});
  // Every token on experts 0…3: four segments of exactly four full 128-token blocks, twelve empty ones.
  c.push_back({"all_to_first_k", MoeLayerRouting::all_to_first_k, 3, MoeLayerShape{}});
  // Top-1 without renormalization, every token on expert 5 (one segment of 512 rows, fifteen empty; the router
  // gradient reaches the unselected logits).
  MoeLayerShape one;
  one.k = 1;
  one.renormalize = false;
  c.push_back({"all_to_one", MoeLayerRouting::all_to_one, 4, one});
  // n = 256: the SiLU output's row-wise scales have two 128-column blocks per row (at n = 128 the segmented
  // [n/128, c_e] and a global [n/128, M] layout coincide, so only this case tells them apart for h).
  MoeLayerShape wide;
  wide.n = 256;
  c.push_back({"n256", MoeLayerRouting::random, 5, wide});
  return c;
}

MoeLayerRef moe_layer_reference(const MoeLayerInputs& in, const MoeLayerShape& s,
                                std::span<const uint8_t> routing_map) {
  const int64_t T = s.T, H = s.H, E = s.E, n = s.n;
  require(static_cast<int64_t>(routing_map.size()) == T * E, "routing_map size");
  MoeLayerRef r;
  r.logits = router_gemm_fwd(in.x, in.wr, T, H, E).value;
  r.probs.assign(T * E, 0.0);
  r.dprobs.assign(T * E, 0.0);
  r.dlogits.assign(T * E, 0.0);
  r.y.assign(T * H, 0.0);
  r.dx_expert.assign(T * H, 0.0);
  r.dw1.assign(E * 2 * n * H, 0.0);
  r.dw2.assign(E * H * n, 0.0);
  // Probs: renormalized = softmax over the selected logits; else the full softmax's scores of the selected.
  std::vector<double> score(T * E);
  for (int64_t t = 0; t < T; ++t) {
    double mx = -INFINITY, sum = 0;
    for (int64_t e = 0; e < E; ++e)
      if (routing_map[t * E + e] || !s.renormalize) mx = std::max(mx, r.logits[t * E + e]);
    for (int64_t e = 0; e < E; ++e)
      if (routing_map[t * E + e] || !s.renormalize) sum += std::exp(r.logits[t * E + e] - mx);
    for (int64_t e = 0; e < E; ++e) {
      score[t * E + e] = std::exp(r.logits[t * E + e] - mx) / sum;
      if (routing_map[t * E + e]) r.probs[t * E + e] = score[t * E + e];
    }
  }
  // Experts, per token (parallel over tokens; the weight gradients per expert in a second pass).
  std::vector<double> h_all(T * E * n, 0.0), dz_all(T * E * 2 * n, 0.0);
  test::parallel_for(T, [&](int64_t t0, int64_t t1) {
    std::vector<double> a(n), b(n), h(n), dh(n);
    for (int64_t t = t0; t < t1; ++t) {
      const float* x = &in.x[t * H];
      const float* dy = &in.dy[t * H];
      for (int64_t e = 0; e < E; ++e) {
        if (!routing_map[t * E + e]) continue;
        const double p = r.probs[t * E + e];
        const float* w1 = &in.w1[e * 2 * n * H];
        const float* w2 = &in.w2[e * H * n];
        for (int64_t j = 0; j < n; ++j) {
          double sa = 0, sb = 0;
          for (int64_t k = 0; k < H; ++k) {
            sa += static_cast<double>(w1[j * H + k]) * x[k];
            sb += static_cast<double>(w1[(n + j) * H + k]) * x[k];
          }
          a[j] = sa;
          b[j] = sb;
          h[j] = silu_d(sa) * sb * p;
        }
        for (int64_t i = 0; i < H; ++i) {
          double acc = 0;
          for (int64_t j = 0; j < n; ++j) acc += static_cast<double>(w2[i * n + j]) * h[j];
          r.y[t * H + i] += acc;
        }
        // Backward.
        for (int64_t j = 0; j < n; ++j) {
          double acc = 0;
          for (int64_t i = 0; i < H; ++i) acc += static_cast<double>(w2[i * n + j]) * dy[i];
          dh[j] = acc;
        }
        double dp = 0;
        double* dz = &dz_all[(t * E + e) * 2 * n];
        for (int64_t j = 0; j < n; ++j) {
          dp += silu_d(a[j]) * b[j] * dh[j];
          const double g = dh[j] * p, sg = sigmoid_d(a[j]);
          dz[j] = g * b[j] * sg * (1.0 + a[j] * (1.0 - sg));
          dz[n + j] = g * silu_d(a[j]);
        }
        r.dprobs[t * E + e] = dp;
        std::copy(h.begin(), h.end(), &h_all[(t * E + e) * n]);
        for (int64_t k = 0; k < H; ++k) {
          double acc = 0;
          for (int64_t j = 0; j < 2 * n; ++j) acc += static_cast<double>(w1[j * H + k]) * dz[j];
          r.dx_expert[t * H + k] += acc;
        }
      }
      // Router. Renormalized: p = softmax of the selected logits, dz_e = p_e (dp_e − Σ_{selected} p·dp) on the
      // selected experts, 0 elsewhere. Not renormalized: p_e = s_e (full softmax) on the selected, so
      // dz_i = s_i (dp_i·[i selected] − Σ_{selected} s·dp) for every expert i.
      double c = 0;
      for (int64_t e = 0; e < E; ++e) c += r.probs[t * E + e] * r.dprobs[t * E + e];
      for (int64_t e = 0; e < E; ++e) {
        if (routing_map[t * E + e])
          r.dlogits[t * E + e] = r.probs[t * E + e] * (r.dprobs[t * E + e] - c);
        else if (!s.renormalize)
          r.dlogits[t * E + e] = -score[t * E + e] * c;
      }
    }
  });
  test::parallel_for(E, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e)
      for (int64_t t = 0; t < T; ++t) {
        if (!routing_map[t * E + e]) continue;
        const double* h = &h_all[(t * E + e) * n];
        const double* dz = &dz_all[(t * E + e) * 2 * n];
        for (int64_t i = 0; i < H; ++i)
          for (int64_t j = 0; j < n; ++j) r.dw2[(e * H + i) * n + j] += in.dy[t * H + i] * h[j];
        for (int64_t j = 0; j < 2 * n; ++j)
          for (int64_t k = 0; k < H; ++k) r.dw1[(e * 2 * n + j) * H + k] += dz[j] * in.x[t * H + k];
      }
  });
  r.dx_router.assign(T * H, 0.0);
  r.dwr.assign(E * H, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) {
      const double g = r.dlogits[t * E + e];
      if (g == 0) continue;
      for (int64_t k = 0; k < H; ++k) {
        r.dx_router[t * H + k] += g * in.wr[e * H + k];
        r.dwr[e * H + k] += g * in.x[t * H + k];
      }
    }
  r.dx.resize(T * H);
  for (int64_t i = 0; i < T * H; ++i) r.dx[i] = r.dx_expert[i] + r.dx_router[i];
  return r;
}

std::vector<float> dequant_rowwise_segmented(std::span<const uint8_t> q, std::span<const float> q_scale,
                                             std::span<const int> counts, int64_t W) {
  return dequant_rowwise(q, q_scale, counts, W, RowScale::segmented);
}
std::vector<float> dequant_transposed_segmented(std::span<const uint8_t> qT, std::span<const float> qT_scale,
                                                std::span<const int> counts, int64_t W) {
  return dequant_transposed(qT, qT_scale, counts, W, TokenBlocks::per_expert);
}

std::vector<float> segmented_scales_to_m_major(std::span<const float> q_scale, std::span<const int> counts, int64_t W,
                                               int64_t num_out, float fill) {
  const Segments seg(counts);
  const int64_t nb = W / 128;
  require(seg.M <= num_out && static_cast<int64_t>(q_scale.size()) >= seg.M * nb, "segmented_scales_to_m_major: sizes");
  std::vector<float> out(static_cast<size_t>(nb * num_out), fill);
  for (size_t e = 0; e < counts.size(); ++e)
    for (int64_t j = 0; j < nb; ++j)
      for (int64_t i = 0; i < counts[e]; ++i)
        out[j * num_out + seg.s[e] + i] = q_scale[seg.s[e] * nb + j * counts[e] + i];
  return out;
}

std::vector<float> expert_gemm_nt(std::span<const float> a, std::span<const int> counts, std::span<const float> w,
                                  int64_t N, int64_t K) {
  const Segments seg(counts);
  require(static_cast<int64_t>(a.size()) >= seg.M * K, "expert_gemm_nt: a size");
  require(static_cast<int64_t>(w.size()) == static_cast<int64_t>(counts.size()) * N * K, "expert_gemm_nt: w size");
  std::vector<float> out(static_cast<size_t>(seg.M * N));
  std::vector<int> owner(static_cast<size_t>(seg.M));
  for (size_t e = 0; e < counts.size(); ++e) std::fill_n(owner.begin() + seg.s[e], counts[e], static_cast<int>(e));
  test::parallel_for(seg.M, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* we = &w[owner[r] * N * K];
      for (int64_t i = 0; i < N; ++i) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(a[r * K + k]) * we[i * K + k];
        out[r * N + i] = bf16(acc);
      }
    }
  });
  return out;
}

std::vector<float> expert_gemm_nn(std::span<const float> a, std::span<const int> counts, std::span<const float> w,
                                  int64_t N, int64_t K) {
  const Segments seg(counts);
  require(static_cast<int64_t>(a.size()) >= seg.M * N, "expert_gemm_nn: a size");
  require(static_cast<int64_t>(w.size()) == static_cast<int64_t>(counts.size()) * N * K, "expert_gemm_nn: w size");
  std::vector<float> out(static_cast<size_t>(seg.M * K));
  std::vector<int> owner(static_cast<size_t>(seg.M));
  for (size_t e = 0; e < counts.size(); ++e) std::fill_n(owner.begin() + seg.s[e], counts[e], static_cast<int>(e));
  test::parallel_for(seg.M, [&](int64_t r0, int64_t r1) {
    std::vector<double> acc(K);
    for (int64_t r = r0; r < r1; ++r) {
      const float* we = &w[owner[r] * N * K];
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = 0; i < N; ++i) {
        const double v = a[r * N + i];
        if (v == 0) continue;
        for (int64_t k = 0; k < K; ++k) acc[k] += v * we[i * K + k];
      }
      for (int64_t k = 0; k < K; ++k) out[r * K + k] = bf16(acc[k]);
    }
  });
  return out;
}

std::vector<double> expert_wgrad(std::span<const float> a, std::span<const float> b, std::span<const int> counts,
                                 int64_t N, int64_t K) {
  const Segments seg(counts);
  require(static_cast<int64_t>(a.size()) >= seg.M * N && static_cast<int64_t>(b.size()) >= seg.M * K,
          "expert_wgrad: sizes");
  const int64_t E = static_cast<int64_t>(counts.size());
  std::vector<double> dw(static_cast<size_t>(E * N * K), 0.0);
  test::parallel_for(E * N, [&](int64_t i0, int64_t i1) {
    for (int64_t ei = i0; ei < i1; ++ei) {
      const int64_t e = ei / N, i = ei % N;
      double* d = &dw[ei * K];
      for (int64_t r = seg.s[e]; r < seg.s[e] + counts[e]; ++r) {
        const double v = a[r * N + i];
        if (v == 0) continue;
        for (int64_t k = 0; k < K; ++k) d[k] += v * b[r * K + k];
      }
    }
  });
  return dw;
}

// ---- the error budget ----------------------------------------------------------------------------------------
//
// Every tolerance is a first-order bound on the relative L2 error ‖got − ref‖₂/‖ref‖₂, summed over the rounding
// steps on the output's path:
//  • fp8 e4m3 with a 1×128 (or 128×1) block scale s = amax/448: a value of the block maps to |v|/s ≤ 448, which is in
//    e4m3's normal range [2^-6, 448] unless |v| < 2^-6·s = amax·2^-6/448 ≈ 3.5e-5·amax; a normal value rounds to
//    nearest with 3 mantissa bits, relative error ≤ 2^-4 = ε8; smaller values err by ≤ 2^-10·s (half the
//    subnormal step), below 2^-4·|v| for |v| ≥ 2^-6·s, and negligible (≤ 2.2e-6·amax) in L2 below it. So a quantized
//    vector has ‖Δ‖₂ ≤ ε8·‖v‖₂ (+ a negligible term) — whatever the data, as long as the scales are the right ones.
//  • bf16 rounding (the expert GEMM outputs, the combine, dx): relative error ≤ 2^-9 = ε16 per element.
//  • fp32 arithmetic elsewhere (router GEMM, softmax, SiLU in fp32, fp32 sums): ≤ 1e-5, folded into the ε16 terms.
//  • A relative perturbation δ of a linear map's input (weights independent of the perturbation, as here: random
//    weights, rounding errors of the data) gives ≈ δ at the output: gain 1.
//  • The SiLU h = silu(a)·b·p: δh/h = (a·silu'(a)/silu(a))·δa/a + δb/b. The log-derivative a·silu'/silu is ≤ 1.28
//    in magnitude for a ≥ −2 (beyond, h is < 0.24·|b| and its share of ‖h‖ small), so a relative error δ of the FC1
//    output becomes ≤ G·δ with G = 2.3 (1.3 from the gate, 1 from up). The backward's dz = (g·b·silu'(a),
//    g·silu(a))·p has the same structure (|silu''| ≤ 0.5 against silu' ≈ 0.5 … 1.1 in the bulk) and gets the same
//    G on the FC1 output's error, 1 on g's. This needs a = O(1): an absolute error ε·|a| of a large a would move
//    silu'(a) by up to 0.5·ε·|a|; the inputs keep rms(a) ≤ 4 per token (make_moe_layer_inputs), and the CPU test
//    emulates exactly the GPU test's cases with the family references and finds every error ≤ 0.5 of its budget.
//  • The top-k softmax backward dz = p ∘ (dp − ⟨p, dp⟩) is an orthogonal-projection-like centering: gain 1.
// Paths (x and dy exact bf16 inputs; every fp8 step quantizes a value that already carries its upstream error):
//   y         x→fp8 ─FC1→ z1 bf16 ─SiLU (G)→ h→fp8 ─FC2→ y2 bf16 ─combine→ y bf16
//             = G·(ε8 + ε16) + ε8 + 2·ε16 (y2, y) … written out below
//   dprobs    (G on z1's error) + (1 on g = FC2ᵀ(fp8 dy) bf16)
//   dlogits   = dprobs' budget (gain 1), dwr the same + fp32, dx_router the same + ε16 (output) + ε16 (the
//             router GEMM's dx multiplies bf16(dlogits) on sm_90a: README, router_gemm)
//   dx_expert (G on z1) + (1 on g) + ε8 (dz quantized) + ε16 (FC1ᵀ output) + ε16 (combine)
//   dw2       ε8 (dyᵀ quantized) + G·(ε8 + ε16) (h's value) + ε8 (hᵀ quantized)
//   dw1       dz's value (G on z1, 1 on g) + ε8 (dzᵀ quantized) + ε8 (xᵀ quantized)
//   dx        from the components' budgets by the triangle inequality, in compare_moe_layer.
// The budgets are bounds (errors added linearly, each at its maximum); the measured errors of random data are about
// a quarter of them (the rms of an e4m3 rounding error is ≈ 0.4·ε8, and independent errors add in quadrature). A
// layout error reads a scale of another block, token, channel or expert — with the inputs' 2^±4 magnitude spread
// that is an error of order 1 (the CPU test shows ≥ 3× the budget for each deliberately broken variant).
MoeLayerTolerances moe_layer_tolerances() {
  constexpr double G = 2.3, e8 = kFp8Step, e16 = kBf16Step;
  const double z1 = G * (e8 + e16);  // FC1 output's error, as seen through the SiLU (forward or backward)
  const double g = e8 + e16;         // FC2ᵀ output: fp8 dy, bf16 rounding
  MoeLayerTolerances t{};
  t.logits = 2e-5;
  t.probs = 2e-5;
  t.y = z1 + e8 + 2 * e16;
  t.dprobs = z1 + g;
  t.dlogits = t.dprobs;
  t.dwr = t.dlogits + 1e-5;
  t.dx_router = t.dlogits + 2 * e16;
  t.dx_expert = z1 + g + e8 + 2 * e16;
  t.dx = 0;  // from the components (compare_moe_layer)
  t.dw2 = e8 + z1 + e8;
  t.dw1 = z1 + g + e8 + e8;
  return t;
}

std::vector<MoeLayerCheck> compare_moe_layer(const MoeLayerGot& got, const MoeLayerRef& want,
                                             const MoeLayerTolerances& tol) {
  std::vector<MoeLayerCheck> c;
  c.push_back({"logits", rel_l2(got.logits, want.logits), tol.logits});
  c.push_back({"probs", rel_l2(got.probs, want.probs), tol.probs});
  c.push_back({"y", rel_l2(got.y, want.y), tol.y});
  c.push_back({"dprobs", rel_l2(got.dprobs, want.dprobs), tol.dprobs});
  c.push_back({"dlogits", rel_l2(got.dlogits, want.dlogits), tol.dlogits});
  c.push_back({"dwr", rel_l2(got.dwr, want.dwr), tol.dwr});
  c.push_back({"dx_router", rel_l2(got.dx_router, want.dx_router), tol.dx_router});
  c.push_back({"dx_expert", rel_l2(got.dx_expert, want.dx_expert), tol.dx_expert});
  c.push_back({"dw1", rel_l2(got.dw1, want.dw1), tol.dw1});
  c.push_back({"dw2", rel_l2(got.dw2, want.dw2), tol.dw2});
  // dx = dx_expert + dx_router (the host adds the two bf16 tensors in double): ‖Δ₁ + Δ₂‖ ≤ t₁‖r₁‖ + t₂‖r₂‖.
  std::vector<double> dx(got.dx_expert.size(), std::nan(""));
  if (got.dx_expert.size() == got.dx_router.size())
    for (size_t i = 0; i < dx.size(); ++i) dx[i] = static_cast<double>(got.dx_expert[i]) + got.dx_router[i];
  const double nd = norm2(want.dx);
  const double tdx =
      nd > 0 ? (tol.dx_expert * norm2(want.dx_expert) + tol.dx_router * norm2(want.dx_router)) / nd : 0.0;
  c.push_back({"dx", rel_l2(dx, want.dx), tdx});
  return c;
}

std::string describe(const std::vector<MoeLayerCheck>& checks) {
  std::string s;
  char buf[160];
  for (const MoeLayerCheck& c : checks) {
    std::snprintf(buf, sizeof buf, "\n    %-10s rel L2 %.4e  tol %.4e  %s", c.name.c_str(), c.err, c.tol,
                  c.ok() ? "ok" : "FAIL");
    s += buf;
  }
  return s;
}

MoeLayerEmulation emulate_moe_layer(const MoeLayerInputs& in, const MoeLayerShape& s, MoeLayerBreak brk) {
  const int64_t T = s.T, H = s.H, E = s.E, n = s.n, num_out = s.num_out();
  MoeLayerEmulation em;
  MoeLayerGot& g = em.got;
  // Router GEMM (fp32 sums of exact products: the double sum rounded once is within the GPU's error).
  const std::vector<double> lg = router_gemm_fwd(in.x, in.wr, T, H, E).value;
  g.logits.assign(lg.begin(), lg.end());
  TopkOptions o;
  o.top_k = static_cast<int>(s.k);
  o.renormalize = s.renormalize;
  const TopkResult tk = topk_routing(g.logits, T, E, in.bias, o);
  g.probs = tk.probs;
  em.routing_map = tk.routing_map;
  const RowIdMapResult map = row_id_map(tk.routing_map, T, E, s.multiple_of, num_out);
  const std::vector<int> pc(map.padded_counts.begin(), map.padded_counts.end());
  const int64_t M = map.offsets[E];
  // Fused permute + quant of x.
  BlockQuantPermuteResult xp;
  const int64_t nb = moe_block_quant_scale_blocks(num_out, E);
  xp.q.assign(num_out * H, 0);
  xp.qT.assign(num_out * H, 0);
  xp.q_scale.assign(num_out * H / 128, 0.0f);
  xp.qT_scale.assign(nb * H, 0.0f);
  xp.probs_out.assign(num_out, 0.0f);
  permute_block_quant(in.x, T, H, tk.probs, map, E, num_out, false, xp);
  const std::vector<float> xq =
      dequant_rowwise(xp.q, xp.q_scale, pc, H,
                      brk == MoeLayerBreak::x_scale_token_major ? RowScale::token_major_broken : RowScale::segmented);
  const std::vector<float> xTq = dequant_transposed(xp.qT, xp.qT_scale, pc, H, TokenBlocks::per_expert);
  // FC1, SiLU + quant, FC2, combine.
  const std::vector<float> z1 = expert_gemm_nt(xq, pc, in.w1, 2 * n, H);
  const std::span<const float> prob(xp.probs_out.data(), static_cast<size_t>(M));
  const QuantOutputs hq = quantize_segmented(silu_fwd_values(z1, M, n, prob), pc, n, false, true, true);
  const std::vector<float> h = dequant_rowwise_segmented(hq.q, hq.q_scale, pc, n);
  const std::vector<float> hT = dequant_transposed(
      hq.qT, hq.qT_scale, pc, n,
      brk == MoeLayerBreak::h_qT_scale_unblocked ? TokenBlocks::unblocked_broken : TokenBlocks::per_expert);
  std::vector<float> y2 = expert_gemm_nt(h, pc, in.w2, H, n);
  y2.resize(num_out * H, 0.0f);
  std::vector<float> restore;
  unpermute(y2, H, {}, map.row_id_map, T, E, g.y, restore);
  test::round_to(DType::bf16, g.y);
  // Backward: dy permuted + quantized, FC2ᵀ and dW2, SiLU backward + quant, FC1ᵀ and dW1, combine, probs restore.
  BlockQuantPermuteResult dp;
  dp.q.assign(num_out * H, 0);
  dp.qT.assign(num_out * H, 0);
  dp.q_scale.assign(num_out * H / 128, 0.0f);
  dp.qT_scale.assign(nb * H, 0.0f);
  permute_block_quant(in.dy, T, H, {}, map, E, num_out, false, dp);
  const std::vector<float> dyq = dequant_rowwise_segmented(dp.q, dp.q_scale, pc, H);
  const std::vector<float> dyTq = dequant_transposed_segmented(dp.qT, dp.qT_scale, pc, H);
  const std::vector<float> gh = expert_gemm_nn(dyq, pc, in.w2, H, n);
  g.dw2 = expert_wgrad(dyTq, hT, pc, H, n);
  const SiluGrads sg = silu_bwd_values(gh, z1, M, n, prob);
  const QuantOutputs dzq = quantize_segmented(sg.dx, pc, 2 * n, false, true, true);
  const std::vector<float> dz = dequant_rowwise_segmented(dzq.q, dzq.q_scale, pc, 2 * n);
  const std::vector<float> dzT = dequant_transposed_segmented(dzq.qT, dzq.qT_scale, pc, 2 * n);
  std::vector<float> dxp = expert_gemm_nn(dz, pc, in.w1, 2 * n, H);
  g.dw1 = expert_wgrad(dzT, xTq, pc, 2 * n, H);
  dxp.resize(num_out * H, 0.0f);
  unpermute(dxp, H, {}, map.row_id_map, T, E, g.dx_expert, restore);
  test::round_to(DType::bf16, g.dx_expert);
  std::vector<float> dprob(num_out, 0.0f), unused_x(num_out, 0.0f), unused_out;
  for (int64_t r = 0; r < M; ++r) dprob[r] = static_cast<float>(sg.dprob[r]);
  unpermute(unused_x, 1, dprob, map.row_id_map, T, E, unused_out, g.dprobs);
  const std::vector<double> dl = topk_routing_bwd(g.dprobs, g.logits, tk.routing_map, T, E, o);
  g.dlogits.assign(dl.begin(), dl.end());
  const std::vector<double> dwr = router_gemm_dw(g.dlogits, in.x, T, H, E).value;
  g.dwr.assign(dwr.begin(), dwr.end());
  const std::vector<double> dxr = router_gemm_dx(g.dlogits, in.wr, T, H, E).value;
  g.dx_router.assign(dxr.begin(), dxr.end());
  test::round_to(DType::bf16, g.dx_router);
  return em;
}

}  // namespace kiln::ref
