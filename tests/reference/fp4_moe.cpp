// tests/reference/fp4_moe.cpp — see fp4_moe.hpp.
#include "reference/fp4_moe.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "test_util.hpp"  // float_to_bf16, bf16_to_float

namespace kiln::ref {
namespace {

void require(bool ok, const std::string& rule) {
  if (!ok) throw std::invalid_argument("fp4_moe_route: " + rule);
}

float sigmoid32(float z) { return static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(z)))); }
float bf16(double v) { return test::bf16_to_float(test::float_to_bf16(static_cast<float>(v))); }

// The K largest keys among the allowed experts, descending, ties to the lower index.
std::vector<int> top_k(const std::vector<float>& key, const std::vector<bool>& allowed, int K) {
  std::vector<int> idx;
  for (int e = 0; e < static_cast<int>(key.size()); ++e)
    if (allowed[e]) idx.push_back(e);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return key[a] > key[b]; });  // stable: lower first
  idx.resize(std::min<size_t>(idx.size(), static_cast<size_t>(K)));
  return idx;
}

}  // namespace

Fp4MoeRoute fp4_moe_route(std::span<const float> logits, int64_t T, int64_t E, std::span<const float> bias,
                          const Fp4MoeRouteOptions& o) {
  using M = Fp4MoeRouting;
  const int K = o.top_k;
  require(static_cast<int64_t>(logits.size()) == T * E, "logits size");
  require(E % 4 == 0, "num_experts % 4 == 0");
  require(E > K, "num_experts > top_k");
  require(K >= 1 && K <= 32, "1 <= top_k <= 32");
  if (o.method == M::Llama4) require(K == 1, "Llama4: top_k == 1");
  const bool grouped = o.method == M::DeepSeekV3 && o.n_group > 1;
  if (o.method == M::DeepSeekV3) {
    require(K <= 22 && E <= 512, "DeepSeekV3: top_k <= 22, num_experts <= 512");
    if (grouped)
      require(o.topk_group >= 1 && o.topk_group <= 4 && o.n_group <= 8 && E % o.n_group == 0 &&
                  E / o.n_group <= 32 && o.n_group >= o.topk_group,
              "DeepSeekV3 groups: topk_group <= 4, n_group <= 8, E % n_group == 0, E / n_group <= 32, "
              "n_group >= topk_group");
  }
  const bool biased = o.method == M::DeepSeekV3 || o.method == M::MiniMax2;
  require(bias.empty() || (biased && static_cast<int64_t>(bias.size()) == E),
          "routing_bias: [E] for DeepSeekV3 / MiniMax2 only");

  Fp4MoeRoute out{std::vector<int32_t>(T * K), std::vector<float>(T * K)};
  std::vector<float> key(E), s(E);
  std::vector<bool> allowed(E);
  for (int64_t t = 0; t < T; ++t) {
    const float* z = logits.data() + t * E;
    std::fill(allowed.begin(), allowed.end(), true);
    switch (o.method) {
      case M::Default: {  // softmax over all E, in double, rounded to fp32
        double mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; ++e) mx = std::max(mx, static_cast<double>(z[e]));
        for (int e = 0; e < E; ++e) sum += std::exp(static_cast<double>(z[e]) - mx);
        for (int e = 0; e < E; ++e) key[e] = s[e] = static_cast<float>(std::exp(static_cast<double>(z[e]) - mx) / sum);
        break;
      }
      case M::Renormalize: case M::RenormalizeNaive: case M::Llama4: case M::TopK:
        for (int e = 0; e < E; ++e) key[e] = s[e] = z[e];
        break;
      case M::DeepSeekV3: case M::MiniMax2:
        for (int e = 0; e < E; ++e) {
          s[e] = sigmoid32(z[e]);
          key[e] = bias.empty() ? s[e] : static_cast<float>(static_cast<double>(s[e]) + bias[e]);
        }
        break;
      case M::SigmoidRenorm: case M::Sigmoid:
        for (int e = 0; e < E; ++e) key[e] = s[e] = sigmoid32(z[e]);
        break;
    }
    if (grouped) {  // group score: the sum of the group's two largest keys; keep the topk_group best groups
      const int G = o.n_group, per = static_cast<int>(E / G);
      std::vector<float> gscore(G);
      for (int g = 0; g < G; ++g) {
        std::vector<float> k(key.begin() + g * per, key.begin() + (g + 1) * per);
        std::sort(k.begin(), k.end(), std::greater<float>());
        gscore[g] = static_cast<float>(static_cast<double>(k[0]) + (per > 1 ? k[1] : 0.0f));
      }
      const std::vector<int> keep = top_k(gscore, std::vector<bool>(G, true), o.topk_group);
      for (int e = 0; e < E; ++e) allowed[e] = std::find(keep.begin(), keep.end(), e / per) != keep.end();
    }
    const std::vector<int> sel = top_k(key, allowed, K);
    double sum = 0;
    for (int j : sel) sum += s[j];
    for (int k = 0; k < K; ++k) {
      const int j = sel[k];
      double w = 0;
      switch (o.method) {
        case M::Default: case M::Sigmoid: w = s[j]; break;
        case M::Renormalize: case M::RenormalizeNaive: {
          double mx = -INFINITY, den = 0;
          for (int i : sel) mx = std::max(mx, static_cast<double>(z[i]));
          for (int i : sel) den += std::exp(static_cast<double>(z[i]) - mx);
          w = std::exp(static_cast<double>(z[j]) - mx) / den;
          break;
        }
        case M::Llama4: w = sigmoid32(z[j]); break;
        case M::TopK: w = z[j]; break;
        case M::DeepSeekV3: w = o.routed_scaling_factor * (s[j] / (sum + 1e-20)); break;
        case M::SigmoidRenorm: w = o.norm_topk_prob ? s[j] / std::max(sum, 1e-20) : s[j]; break;
        case M::MiniMax2: w = s[j] / (sum + 1e-20); break;
      }
      out.ids[t * K + k] = j;
      out.weights[t * K + k] = bf16(w);
    }
  }
  return out;
}

}  // namespace kiln::ref
