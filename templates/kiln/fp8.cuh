// kiln/fp8.cuh — fp32 → float8_e4m3fn conversion and the linghe 1×128 block-scale rule.
//
// Conversion: round to nearest even, saturating to ±448, NaN stays NaN (PTX cvt.rn.satfinite.e4m3x2.f32 on
// sm_89+; an exact software path elsewhere). Scale: s = max(amax/448, 1e-30), or with ROUND the smallest power of
// two ≥ that; q = e4m3(y / s). With ROUND the division is a multiplication by the exact power-of-two reciprocal.
#pragma once
#include "kiln/common.cuh"

namespace kiln {

__device__ __forceinline__ u32 e4m3_soft(float f) {
  const u32 u = __float_as_uint(f);
  const u32 sign = (u >> 24) & 0x80u;
  if ((u & 0x7fffffffu) > 0x7f800000u) return sign | 0x7fu;  // NaN
  const float a = fabsf(f);
  if (a >= 464.0f) return sign | 0x7eu;                        // saturate (incl. inf)
  if (a < 0.015625f) return sign | static_cast<u32>(rintf(a * 512.0f));  // subnormal step 2^-9; 8 = min normal
  const int e = static_cast<int>((__float_as_uint(a) >> 23) & 0xff) - 127;  // a in [2^e, 2^(e+1))
  const float m = a * __uint_as_float(static_cast<u32>(127 - e) << 23);       // exact: a / 2^e in [1, 2)
  u32 q = static_cast<u32>(rintf((m - 1.0f) * 8.0f));
  u32 code = (static_cast<u32>(e + 7) << 3) + q;  // q == 8 carries into the exponent
  return sign | (code > 0x7eu ? 0x7eu : code);
}

// Two floats → two e4m3 codes in the low 16 bits (lo in bits 0..7).
__device__ __forceinline__ u32 e4m3x2(float lo, float hi) {
#if __CUDA_ARCH__ >= 890
  u16 r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return e4m3_soft(lo) | (e4m3_soft(hi) << 8);
#endif
}
__device__ __forceinline__ u32 e4m3x4(float a, float b, float c, float d) { return e4m3x2(a, b) | (e4m3x2(c, d) << 16); }

// The block scale from the block's amax (NaN already ignored by fmaxf).
template <bool ROUND>
__device__ __forceinline__ float block_scale(float amax) {
  float s = fmaxf(__fdiv_rn(amax, 448.0f), 1e-30f);
  if (ROUND) {
    const u32 b = __float_as_uint(s);
    if ((b & 0x007fffffu) != 0u && b < 0x7f800000u) s = __uint_as_float((b & 0x7f800000u) + 0x00800000u);
  }
  return s;
}

// What quantization multiplies or divides by: with ROUND the exact reciprocal, else s itself.
template <bool ROUND> struct Quantizer {
  float s, inv;
  __device__ __forceinline__ explicit Quantizer(float scale) : s(scale), inv(ROUND ? 1.0f / scale : scale) {}
  __device__ __forceinline__ float operator()(float y) const { return ROUND ? y * inv : __fdiv_rn(y, s); }
};

}  // namespace kiln
