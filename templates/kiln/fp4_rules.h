// kiln/fp4_rules.h — E2M1 rounding without compares, and NVFP4's division-free code rule: host and device share this
// header so that tests/fp4_quant_test.cpp checks the very functions the kernel runs (exhaustively on [0, 8] for
// E2M1; at every threshold of every E4M3 scale for the NVFP4 rule).
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define KILN_F4_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#include <cstring>
#define KILN_F4_HD inline
#endif

namespace kiln {
namespace f4r {

KILN_F4_HD unsigned f2u(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

KILN_F4_HD float u2f(unsigned u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

KILN_F4_HD int rint_int(float v) {
#if defined(__CUDA_ARCH__)
  return __float2int_rn(v);
#else
  return static_cast<int>(std::nearbyint(v));  // the default rounding mode: to nearest even
#endif
}

// The E2M1 magnitude code of y (y ≥ 0, +inf or NaN): nearest of 0, .5, 1, 1.5, 2, 3, 4, 6 with ties to the even code,
// saturating; NaN → 0. Below 1 the grid is 0.5 apart: rint(2y), read from the low bits of 2y + 1.5·2^23 (one fp32
// rounding to nearest even of the exact 2y). From 1 up E2M1 keeps one mantissa bit: round the fp32 bits to nearest
// even at bit 22 (add 0x1FFFFF plus bit 22, carry into the exponent), then exponent·2 + bit is 254 + code − 2.
// Branch-free (both forms computed, one selected): a branch an element made the kernel's warps diverge.
KILN_F4_HD unsigned e2m1_mag_bits(float y) {
  const unsigned u = f2u(y);
  const unsigned lo = f2u(fmaf(y, 2.0f, 12582912.0f)) & 3u;
  const unsigned hi = ((u + 0x1fffffu + ((u >> 22) & 1u)) >> 22) - 252u;
  const unsigned c = u < 0x3f800000u ? lo : (hi > 7u ? 7u : hi);
  return u > 0x7f800000u ? 0u : c;
}

// Two E2M1 codes at once from a pair of finite bf16 values y2 (element 0 in the low half), integer operations only:
// for a non-negative float the bits order like the value, so "|y| ≥ th" is bit 15 of each half of |y2| + (0x8000 −
// th) (no carry crosses the halves: |y| < 0x7F80). The seven thresholds give a thermometer t1 ≥ … ≥ t7 (ties to the
// even code: > 0.25, ≥ 0.75, > 1.25, ≥ 1.75, > 2.5, ≥ 3.5, > 5, as the smallest bf16 bits that reach them) whose
// count is the code: bit 2 = t4, bit 1 = t2 & ¬t4 | t6, bit 0 = the parity; the three planes are shifted under the
// sign bit (bits 12–15 and 28–31) and merged with two bit selects, then the two nibbles leave as one byte (element 0
// in the low nibble). Equal to e2m1_mag_bits plus the sign for every finite bf16 (a CPU test, exhaustive).
KILN_F4_HD unsigned e2m1x2_bf16(unsigned y2) {
  const unsigned m = y2 & 0x7fff7fffu;
  const unsigned t1 = m + (0x8000u - 0x3e81u) * 0x10001u, t2 = m + (0x8000u - 0x3f40u) * 0x10001u;
  const unsigned t3 = m + (0x8000u - 0x3fa1u) * 0x10001u, t4 = m + (0x8000u - 0x3fe0u) * 0x10001u;
  const unsigned t5 = m + (0x8000u - 0x4021u) * 0x10001u, t6 = m + (0x8000u - 0x4060u) * 0x10001u;
  const unsigned t7 = m + (0x8000u - 0x40a1u) * 0x10001u;
  const unsigned b0 = (t1 ^ t2 ^ t3 ^ t4 ^ t5 ^ t6 ^ t7) >> 3, b1 = ((t2 & ~t4) | t6) >> 2, b2 = t4 >> 1;
  const unsigned r1 = (b0 & 0x10001000u) | (b1 & ~0x10001000u);
  const unsigned r2 = (r1 & 0x30003000u) | (b2 & ~0x30003000u);
  const unsigned r3 = (r2 & 0x70007000u) | (y2 & ~0x70007000u);
  return ((r3 >> 12) & 0xfu) | ((r3 >> 24) & 0xf0u);
}

// NVFP4 without the division: the code of fl(a / sf) (sf an E4M3 value > 0, a = fl(x·G)) is Σ_i [|a| > T_i] with
// T_i the boundaries below, one set a block. E2M1's grid midpoints th (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) all have
// an fp32 mantissa ending in 0, so fl(q) rounds a tie onto th: fl(q) > th ⟺ q > th + h (h half the fp32 spacing
// above th) and fl(q) ≥ th ⟺ q ≥ th − h' (h' half the spacing below). So with Y = (th ± h)·sf (exact in double; in
// fp32 the sum of the two exact products th·sf and h·sf): "> th" (0.25, 1.25, 2.5, 5: ties to the even code below)
// needs |a| > Y ⟺ |a| > RD(Y); "≥ th" (0.75, 1.75, 3.5) needs |a| ≥ Y ⟺ |a| > prev(RU(Y)).
struct Nvfp4Thresholds {
  float t[7];
};

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ Nvfp4Thresholds nvfp4_thresholds(float sf) {
  constexpr float th[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
  constexpr float h[7] = {0x1p-26f, 0x1p-25f, 0x1p-24f, 0x1p-24f, 0x1p-23f, 0x1p-23f, 0x1p-22f};
  Nvfp4Thresholds r;
#pragma unroll
  for (int i = 0; i < 7; ++i) {
    if (i == 1 || i == 3 || i == 5)
      r.t[i] = u2f(f2u(__fadd_ru(th[i] * sf, -(h[i] * sf))) - 1u);
    else
      r.t[i] = __fadd_rd(th[i] * sf, h[i] * sf);
  }
  return r;
}
#else
inline Nvfp4Thresholds nvfp4_thresholds(float sf) {
  const double th[7] = {0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0};
  const double h[7] = {0x1p-26, -0x1p-25, 0x1p-24, -0x1p-24, 0x1p-23, -0x1p-23, 0x1p-22};
  Nvfp4Thresholds r;
  for (int i = 0; i < 7; ++i) {
    const double y = (th[i] + h[i]) * static_cast<double>(sf);  // exact
    float f = static_cast<float>(y);
    if (h[i] > 0) {  // RD
      if (static_cast<double>(f) > y) f = std::nextafter(f, 0.0f);
    } else {  // prev(RU)
      if (static_cast<double>(f) < y) f = std::nextafter(f, INFINITY);
      f = std::nextafter(f, 0.0f);
    }
    r.t[i] = f;
  }
  return r;
}
#endif

// The E2M1 code (sign in bit 3; NaN → 0) of fl(a / sf) from the thresholds.
KILN_F4_HD unsigned nvfp4_code(float a, const Nvfp4Thresholds& t) {
  const float m = a < 0.0f ? -a : a;
  unsigned c = 0;
#pragma unroll
  for (int i = 0; i < 7; ++i) c += m > t.t[i] ? 1u : 0u;  // NaN: every compare false, c = 0
  return c | (a == a ? (f2u(a) >> 28) & 8u : 0u);
}

}  // namespace f4r
}  // namespace kiln
