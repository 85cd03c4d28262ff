#include "reference/fp8_gemm.hpp"

#include <algorithm>

namespace kiln::ref {

float fp8_gemm_alpha(float a_scale, float b_scale) {
  return static_cast<float>((200704.0 / 16129.0) / (static_cast<double>(a_scale) * static_cast<double>(b_scale)));
}

std::vector<float> fp8_gemm(const std::vector<uint8_t>& qa, const std::vector<uint8_t>& qb, int64_t M, int64_t N,
                            int64_t K, float a_scale, float b_scale) {
  const float alpha = fp8_gemm_alpha(a_scale, b_scale);
  std::vector<float> c(static_cast<size_t>(M * N));
  std::vector<int64_t> row(static_cast<size_t>(N));
  for (int64_t m = 0; m < M; ++m) {
    std::fill(row.begin(), row.end(), 0);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t x = static_cast<int64_t>(qa[m * K + k]) - 128;
      if (x == 0) continue;
      const uint8_t* b = qb.data() + k * N;
      for (int64_t n = 0; n < N; ++n) row[n] += x * (static_cast<int64_t>(b[n]) - 128);
    }
    for (int64_t n = 0; n < N; ++n) {
      volatile float v = static_cast<float>(row[n]);  // exact below 2^24, else one rounding, as the device's cvt
      c[m * N + n] = v * alpha;
    }
  }
  return c;
}

}  // namespace kiln::ref
