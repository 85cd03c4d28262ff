#include "reference/fp8_codes.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace kiln::ref {

float fp8_scale(std::span<const float> x) {
  float amax = 0.0f;
  for (float v : x)
    if (std::isfinite(v)) amax = std::max(amax, std::fabs(v));
  if (amax == 0.0f) return 1.0f;
  return static_cast<float>(std::min(448.0 / static_cast<double>(amax), static_cast<double>(FLT_MAX)));
}

uint8_t fp8_encode(float x, float s) {
  if (std::isnan(x)) return 128;
  volatile float t = x * s;  // volatile: each operation rounded to fp32 on its own, as on the device
  t = std::min(std::max(static_cast<float>(t), -448.0f), 448.0f);
  volatile float u = t / 448.0f;
  volatile float v = u * 127.0f;
  return static_cast<uint8_t>(static_cast<int>(std::nearbyint(static_cast<float>(v))) + 128);
}

float fp8_decode(uint8_t q, float s) {
  const float step = 448.0f / 127.0f;
  volatile float p = static_cast<float>(static_cast<int>(q) - 128) * step;
  return p / s;
}

}  // namespace kiln::ref
