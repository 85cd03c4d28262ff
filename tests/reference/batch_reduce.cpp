#include "reference/batch_reduce.hpp"

#include <cmath>
#include <limits>

namespace kiln::ref {
namespace {

// Pairwise sum of f(x) over v[b, e).
template <typename F>
double pairwise(std::span<const float> v, size_t b, size_t e, F f) {
  if (e - b <= 256) {
    double s = 0;
    for (size_t i = b; i < e; ++i) s += f(static_cast<double>(v[i]));
    return s;
  }
  const size_t m = b + (e - b) / 2;
  return pairwise(v, b, m, f) + pairwise(v, m, e, f);
}

}  // namespace

double list_reduce(const std::vector<std::span<const float>>& xs, ListReduce op) {
  double r = 0;
  for (const auto& x : xs) {
    switch (op) {
      case ListReduce::sum_abs: r += pairwise(x, 0, x.size(), [](double v) { return std::fabs(v); }); break;
      case ListReduce::sum_sq: r += pairwise(x, 0, x.size(), [](double v) { return v * v; }); break;
      case ListReduce::max_abs:
        for (float v : x) {
          if (std::isnan(v)) return std::numeric_limits<double>::quiet_NaN();
          r = std::max(r, static_cast<double>(std::fabs(v)));
        }
        break;
      case ListReduce::count_zero:
        for (float v : x) r += v == 0.f ? 1 : 0;
        break;
    }
  }
  return r;
}

}  // namespace kiln::ref
