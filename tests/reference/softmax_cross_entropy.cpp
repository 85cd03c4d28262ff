#include "reference/softmax_cross_entropy.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "test_util.hpp"

namespace kiln::ref {

CeRow softmax_cross_entropy_row(std::span<const float> z, int64_t label, const CeOptions& o) {
  CeRow r;
  const auto V = static_cast<int64_t>(z.size());
  if (label == o.ignore_index) {
    r.ignored = true;
    return r;
  }
  if (label < 0 || label >= V) {
    r.bad = true;
    r.loss = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  double m = -std::numeric_limits<double>::infinity();
  bool nan = false;
  for (float v : z) {
    if (std::isnan(v)) nan = true;
    m = std::max(m, static_cast<double>(v));
  }
  double s = 0, sz = 0;
  for (float v : z) {
    s += std::exp(static_cast<double>(v) - m);
    sz += v;
  }
  if (nan) s = std::numeric_limits<double>::quiet_NaN();
  r.max = m;
  r.sum_exp = s;
  r.lse = m + std::log(s);
  const double eps = o.smoothing, zy = z[static_cast<size_t>(label)];
  r.loss = r.lse - (1 - eps) * zy - (eps != 0 ? eps / static_cast<double>(V) * sz : 0.0);
  if (o.z_loss != 0) r.loss += o.z_loss * r.lse * r.lse;
  return r;
}

std::vector<CeRow> softmax_cross_entropy(std::span<const float> logits, int64_t M, int64_t V, int64_t stride,
                                         std::span<const int64_t> labels, const CeOptions& o) {
  std::vector<CeRow> out(static_cast<size_t>(M));
  test::parallel_for(M, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m)
      out[m] = softmax_cross_entropy_row(logits.subspan(static_cast<size_t>(m * stride), static_cast<size_t>(V)),
                                         labels[m], o);
  });
  return out;
}

void softmax_cross_entropy_grad_row(std::span<const float> z, int64_t label, const CeRow& st, double g,
                                    const CeOptions& o, std::span<double> out) {
  const auto V = static_cast<int64_t>(z.size());
  if (st.ignored || st.bad) {
    std::fill(out.begin(), out.end(), 0.0);
    return;
  }
  const double eps = o.smoothing, k = 1 + 2 * o.z_loss * st.lse;
  for (int64_t j = 0; j < V; ++j) {
    double d = std::exp(static_cast<double>(z[j]) - st.lse) * k - eps / static_cast<double>(V);
    if (j == label) d -= 1 - eps;
    out[j] = g * d;
  }
}

}  // namespace kiln::ref
