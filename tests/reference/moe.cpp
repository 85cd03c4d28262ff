// tests/reference/moe.cpp — see moe.hpp.
#include "reference/moe.hpp"

#include "reference/rms_norm.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace kiln::ref {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

float from_bits(uint32_t u) { return std::bit_cast<float>(u); }

uint32_t ordered_bits(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

uint32_t to_ordered_inverse(uint32_t o) { return (o & 0x80000000u) ? (o ^ 0x80000000u) : ~o; }
float ordered_float(uint32_t o) { return from_bits(to_ordered_inverse(o)); }

float sigmoid(float z) { return 1.0f / (1.0f + kiln_exp(-z)); }

// Experts per lane of kiln's routing kernel (ops/moe_routing.cpp lane_experts).
int64_t lane_experts(int64_t E, int64_t G) {
  const int64_t GS = E / std::max<int64_t>(G, 1);
  for (int64_t el = 4 * ((E + 127) / 128); el <= 64; el += 4)
    if (G <= 1 || el % GS == 0 || GS % el == 0) return el;
  return 64;
}

}  // namespace

float kiln_exp(float x) {
  x = std::fmin(std::fmax(x, -104.0f), 88.75f);  // NaN → −104 (fmax ignores NaN), as fmaxf/fminf on the GPU
  const float n = std::nearbyint(x * 1.44269504f);
  float r = std::fma(n, -0.693145751953125f, x);
  r = std::fma(n, -1.42860677e-06f, r);
  float p = 1.98412701e-04f;
  p = std::fma(p, r, 1.38888892e-03f);
  p = std::fma(p, r, 8.33333377e-03f);
  p = std::fma(p, r, 4.16666679e-02f);
  p = std::fma(p, r, 1.66666672e-01f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  const int ni = static_cast<int>(n);
  const int n1 = ni >> 1, n2 = ni - n1;
  const float s1 = from_bits(static_cast<uint32_t>(n1 + 127) << 23), s2 = from_bits(static_cast<uint32_t>(n2 + 127) << 23);
  const float a = p * s1;
  return a * s2;
}

TopkResult topk_routing(std::span<const float> logits, int64_t T, int64_t E, std::span<const float> bias,
                        const TopkOptions& o) {
  TopkResult res;
  res.probs.assign(T * E, 0.0f);
  res.routing_map.assign(T * E, 0);
  res.counts.assign(E, 0);
  res.scores.assign(T * E, 0.0f);
  res.keys.assign(T * E, 0.0f);
  res.picks.assign(T * o.top_k, -1);
  const int64_t GS = E / o.n_group;
  std::vector<float> s(E), key(E);
  std::vector<char> live(E);
  for (int64_t t = 0; t < T; ++t) {
    const float* z = &logits[t * E];
    if (o.sigmoid) {
      for (int64_t e = 0; e < E; ++e) s[e] = sigmoid(z[e]);
    } else {
      float m = -kInf;
      for (int64_t e = 0; e < E; ++e) m = std::fmax(m, z[e]);
      // Lane sums in the GPU's order (32 lanes per token, lane l sums its EL contiguous experts in order; EL as
      // ops/moe_routing.cpp lane_experts picks it), then the xor butterfly over the 32 lanes (offsets 16 … 1).
      const int64_t EL = lane_experts(E, o.n_group);
      float lanes[32];
      for (int64_t l = 0; l < 32; ++l) {
        float sum = 0.0f;
        for (int64_t e = l * EL; e < std::min(E, (l + 1) * EL); ++e) {
          s[e] = kiln_exp(z[e] - m);
          sum = sum + s[e];
        }
        lanes[l] = sum;
      }
      for (int64_t off = 16; off > 0; off >>= 1) {
        float next[32];
        for (int64_t l = 0; l < 32; ++l) next[l] = lanes[l] + lanes[l ^ off];
        std::memcpy(lanes, next, sizeof next);
      }
      for (int64_t e = 0; e < E; ++e) s[e] = s[e] / lanes[0];
    }
    for (int64_t e = 0; e < E; ++e) {
      const float k = bias.empty() ? z[e] : s[e] + bias[e];
      key[e] = std::isnan(k) ? -kInf : k;
      live[e] = 1;
      res.scores[t * E + e] = s[e];
      res.keys[t * E + e] = key[e];
    }
    if (o.n_group > 1) {
      std::vector<float> gscore(o.n_group);
      for (int g = 0; g < o.n_group; ++g) {
        // The two largest keys by ordered bits (−0 < +0), so the sum does not depend on the scan order.
        uint32_t a1 = 0, a2 = 0;
        for (int64_t e = g * GS; e < (g + 1) * GS; ++e) {
          const uint32_t v = ordered_bits(key[e]);
          a2 = std::max(a2, std::min(a1, v));
          a1 = std::max(a1, v);
        }
        float sc = GS >= 2 ? ordered_float(a1) + ordered_float(a2) : ordered_float(a1);
        gscore[g] = std::isnan(sc) ? -kInf : sc;
      }
      std::vector<char> kept(o.n_group, 0);
      for (int r = 0; r < o.topk_group; ++r) {
        int best = -1;
        for (int g = 0; g < o.n_group; ++g)
          if (!kept[g] && (best < 0 || ordered_bits(gscore[g]) > ordered_bits(gscore[best]))) best = g;
        kept[best] = 1;
      }
      for (int64_t e = 0; e < E; ++e)
        if (!kept[e / GS]) live[e] = 0;
    }
    float denom = 0.0f;
    std::vector<int64_t> picked;
    for (int r = 0; r < o.top_k; ++r) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e)
        if (live[e] && (best < 0 || ordered_bits(key[e]) > ordered_bits(key[best]))) best = e;
      live[best] = 0;
      picked.push_back(best);
      res.picks[t * o.top_k + r] = static_cast<int32_t>(best);
      denom = denom + s[best];
    }
    const float d = denom + 1e-20f;
    for (int64_t e : picked) {
      float p = o.renormalize ? s[e] / d : s[e];
      p = p * o.scale;
      res.probs[t * E + e] = p;
      res.routing_map[t * E + e] = 1;
      ++res.counts[e];
    }
  }
  return res;
}

std::vector<double> topk_routing_bwd(std::span<const float> dprobs, std::span<const float> logits,
                                     std::span<const uint8_t> routing_map, int64_t T, int64_t E,
                                     const TopkOptions& o) {
  std::vector<double> dz(T * E, 0.0);
  std::vector<double> s(E), ds(E);
  for (int64_t t = 0; t < T; ++t) {
    const float* z = &logits[t * E];
    const float* g = &dprobs[t * E];
    const uint8_t* sel = &routing_map[t * E];
    if (o.sigmoid) {
      for (int64_t e = 0; e < E; ++e) s[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(z[e])));
    } else {
      double m = -INFINITY, sum = 0;
      for (int64_t e = 0; e < E; ++e) m = std::max(m, static_cast<double>(z[e]));
      for (int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(z[e] - m));
      for (int64_t e = 0; e < E; ++e) s[e] /= sum;
    }
    double D = 1e-20, c = 0;
    for (int64_t e = 0; e < E; ++e)
      if (sel[e]) { D += s[e]; c += static_cast<double>(g[e]) * s[e]; }
    for (int64_t e = 0; e < E; ++e) {
      if (!sel[e]) { ds[e] = 0; continue; }
      ds[e] = o.renormalize ? o.scale / D * (g[e] - c / D) : o.scale * static_cast<double>(g[e]);
    }
    double dot = 0;
    for (int64_t e = 0; e < E; ++e) dot += ds[e] * s[e];
    for (int64_t e = 0; e < E; ++e)
      dz[t * E + e] = o.sigmoid ? ds[e] * s[e] * (1 - s[e]) : s[e] * (ds[e] - dot);
  }
  return dz;
}

RowIdMapResult row_id_map(std::span<const uint8_t> flags, int64_t T, int64_t E, int multiple_of, int64_t num_out) {
  RowIdMapResult r;
  r.counts.assign(E, 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) r.counts[e] += flags[t * E + e] != 0;
  r.padded_counts.resize(E);
  r.offsets.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) {
    r.padded_counts[e] = (r.counts[e] + multiple_of - 1) / multiple_of * multiple_of;
    r.offsets[e + 1] = r.offsets[e] + r.padded_counts[e];
  }
  r.row_id_map.assign(T * E, -1);
  r.row_id_indices.assign(num_out, -1);
  std::vector<int32_t> next(r.offsets.begin(), r.offsets.end() - 1);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e)
      if (flags[t * E + e]) {
        const int32_t row = next[e]++;
        r.row_id_map[t * E + e] = row;
        if (row < num_out) r.row_id_indices[row] = static_cast<int32_t>(t);
      }
  return r;
}

PermuteResult permute(std::span<const uint8_t> inp, int64_t row_bytes, std::span<const float> scale, int64_t ns,
                      bool scale_m_major, std::span<const float> probs, bool has_probs, const RowIdMapResult& map,
                      int64_t T, int64_t E, int64_t num_out, float pad_scale) {
  PermuteResult p;
  p.out.assign(num_out * row_bytes, 0);
  if (ns > 0) p.scale_out.assign(ns * num_out, pad_scale);
  if (has_probs) p.probs_out.assign(num_out, 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) {
      const int32_t r = map.row_id_map[t * E + e];
      if (r < 0 || r >= num_out) continue;
      std::memcpy(&p.out[r * row_bytes], &inp[t * row_bytes], row_bytes);
      for (int64_t j = 0; j < ns; ++j)
        p.scale_out[j * num_out + r] = scale_m_major ? scale[j * T + t] : scale[t * ns + j];
      if (has_probs) p.probs_out[r] = probs[t * E + e];
    }
  return p;
}

void unpermute(std::span<const float> x, int64_t H, std::span<const float> weights, std::span<const int32_t> map,
               int64_t T, int64_t E, std::vector<float>& out, std::vector<float>& restore) {
  out.assign(T * H, 0.0f);
  restore.assign(T * E, 0.0f);
  for (int64_t t = 0; t < T; ++t) {
    float* o = &out[t * H];
    for (int64_t e = 0; e < E; ++e) {
      const int32_t r = map[t * E + e];
      if (r < 0) continue;
      const float* xr = &x[r * H];
      if (weights.empty()) {
        for (int64_t h = 0; h < H; ++h) o[h] = o[h] + xr[h];
      } else {
        const float w = weights[r];
        restore[t * E + e] = w;
        for (int64_t h = 0; h < H; ++h) o[h] = std::fma(xr[h], w, o[h]);
      }
    }
  }
}

void permute_block_quant(std::span<const float> x, int64_t T, int64_t Hd, std::span<const float> probs,
                         const RowIdMapResult& map, int64_t E, int64_t num_out, bool round_scale,
                         BlockQuantPermuteResult& out) {
  const int64_t ns = Hd / 128;
  int64_t b = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t off = map.offsets[e], pc = map.offsets[e + 1] - off;
    if (pc == 0) continue;
    std::vector<float> y(pc * Hd, 0.0f);
    for (int64_t i = 0; i < pc; ++i) {
      const int32_t t = map.row_id_indices[off + i];
      if (t >= 0) std::copy_n(&x[t * Hd], Hd, &y[i * Hd]);
      if (!probs.empty()) out.probs_out[off + i] = t >= 0 ? probs[t * E + e] : 0.0f;
    }
    block_quant_rowwise(y, pc, Hd, round_scale, std::span<uint8_t>(&out.q[off * Hd], pc * Hd),
                        std::span<float>(&out.q_scale[off * ns], pc * ns));
    const int64_t nb = (pc + 127) / 128;
    block_quant_transposed(y, pc, Hd, round_scale, std::span<uint8_t>(&out.qT[off * Hd], pc * Hd),
                           std::span<float>(&out.qT_scale[b * Hd], nb * Hd));
    b += nb;
  }
  out.scale_blocks_used = b;
  (void)T;
  (void)num_out;
}

}  // namespace kiln::ref
