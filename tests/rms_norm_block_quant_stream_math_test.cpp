// tests/rms_norm_block_quant_stream_math_test.cpp — the arithmetic claim behind the stream kernel's FR bit
// (templates/kiln/rms_norm_block_quant_stream.cuh, rmsq::mean_eps_fast): for a row width N that is not a power of two,
// q = RN(t·y) with y = RN(1/N), then q + RN-residual·y as two FMAs, is t / N correctly rounded — the bits of the IEEE
// division the default path computes. Checked here for every float t in [1, 2) and every N = 128·k ≤ 8192 that is
// not a power of two; the kernel uses the form only for t in [2^-64, 2^62] (and t = 0), where every intermediate stays
// normal, so the claim scales from [1, 2) by powers of two exactly. (The reciprocal square root of the same bit needs
// no such check: it is CUDA's own fast-path instruction sequence, run where CUDA runs it.)
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>

namespace {

// q == RN(t / N) exactly: the residual t − q·N (exact in double: q·N has ≤ 24 + 13 significant bits, t and q·N within
// a factor 2) against half the distance to q's neighbours, ties to even.
bool correctly_rounded_quotient(float t, int N, float q) {
  const double r = static_cast<double>(t) - static_cast<double>(q) * N;
  const double up = (static_cast<double>(std::nextafter(q, INFINITY)) - q) / 2 * N;
  const double down = (static_cast<double>(q) - std::nextafter(q, 0.0f)) / 2 * N;
  const bool even = (std::bit_cast<uint32_t>(q) & 1u) == 0u;
  if (r > 0) return r < up || (r == up && even);
  if (r < 0) return -r < down || (-r == down && even);
  return true;
}

TEST(RmsNormBlockQuantStreamMath, QuotientByTwoFmasIsCorrectlyRounded) {
  for (int N = 128; N <= 8192; N += 128) {
    if ((N & (N - 1)) == 0) continue;  // (a power of two: the kernel multiplies by the exact 1/N)
    const float y = 1.0f / static_cast<float>(N);
    int64_t bad = 0;
    for (uint32_t b = std::bit_cast<uint32_t>(1.0f); b < std::bit_cast<uint32_t>(2.0f); ++b) {
      const float t = std::bit_cast<float>(b);
      const float q = t * y;
      const float q2 = std::fma(std::fma(-q, static_cast<float>(N), t), y, q);
      bad += !correctly_rounded_quotient(t, N, q2);
    }
    EXPECT_EQ(bad, 0) << "N = " << N;
  }
}

// The check itself: one ulp off is caught (so the test above can fail).
TEST(RmsNormBlockQuantStreamMath, QuotientCheckRejectsAnUlpOff) {
  const float t = 1.2345678f, q = t / 7168.0f;
  EXPECT_TRUE(correctly_rounded_quotient(t, 7168, q));
  EXPECT_FALSE(correctly_rounded_quotient(t, 7168, std::nextafter(q, 1.0f)));
  EXPECT_FALSE(correctly_rounded_quotient(t, 7168, std::nextafter(q, 0.0f)));
}

}  // namespace
