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

// y / s for a block scale s without a division a value (div.rn.f32 costs a MUFU.RCP, its refinement and a range check
// a value). For s > 0 normal or +inf — every
// max(amax / 448, 1e-30) — and |y| ≤ 448·s or y NaN — every value of the block s was formed from —
// div_exact(y, scale_div_exact(s)) is __fdiv_rn(y, s) bit for bit wherever |y / s| ≥ 2^-100, and has its e4m3 code (±0,
// sign kept) below that (e4m3's smallest step is 2^-9):
//   s = s1·2^k with s1 in [1, 2): a = y·2^-k (exact unless |y / s| < 2^-126), inv = RN(1/s1) (one __frcp_rn a
//   scale), q = RN(a·inv) (within 1.5 ulps), then twice q ← RN(q − RN(s1·q − a)·inv): the first step makes q faithful
//   (its error times |1 − s1·inv| ≤ 2^-24), so the second residual s1·q − a is exact (FMA; no underflow while |q| ≥
//   2^-100) and the second step correctly rounded (Markstein's theorem: inv within half an ulp of 1/s1 and q faithful
//   ⇒ RN(q + (a − s1·q)·inv) = RN(a / s1)). 2 FMUL + 4 FFMA a value, no branch.
//   Zeros keep their sign (the residual is formed as s1·q − a and subtracted: RN(−0 − (+0)) = −0). s = +inf: m = 0,
//   s1 = inv = 1, so a = y·0 = ±0 (finite y) or NaN (y infinite or NaN), as y / inf.
// tests/reference_test.cpp repeats the sequence on the host against IEEE division (every s1, random y, edge cases).
struct ScaleDivExact {
  float m, s1, inv;
};
__device__ __forceinline__ ScaleDivExact scale_div_exact(float s) {
  const u32 b = __float_as_uint(s);
  if (b >= 0x7f800000u) return {0.0f, 1.0f, 1.0f};
  const float s1 = __uint_as_float((b & 0x007fffffu) | 0x3f800000u);
  return {__uint_as_float(0x7f000000u - (b & 0x7f800000u)), s1, __frcp_rn(s1)};
}
__device__ __forceinline__ float div_exact(float y, const ScaleDivExact& d) {
  const float a = __fmul_rn(y, d.m);
  float q = __fmul_rn(a, d.inv);
  q = __fmaf_rn(-__fmaf_rn(d.s1, q, -a), d.inv, q);
  return __fmaf_rn(-__fmaf_rn(d.s1, q, -a), d.inv, q);
}

// block_scale<ROUND>(amax) for an amax ≥ 0 that is not NaN (a max from 0 ignoring NaN, as the quantizers' are),
// bit for bit, without a division:
// * ROUND: for amax = 1.m·2^E the correctly rounded amax/448 is ≤ 2^k exactly when amax ≤ 448·2^k (the next float
//   above 448·2^k divides to more than half an ulp above 2^k), so s = 2^(E − 8 + (1.m > 1.75)), at least 2^−99 (the
//   1e-30 floor rounded up), inf for inf. Checked for every non-negative float on the host (tests/silu_test.cpp checks
//   a sample). (The rms_norm_block_quant kernels build the same scale, and its reciprocal, by a carry into the
//   exponent: rms_norm_block_quant_args.h.)
// * else: amax / 448 by div_exact's sequence with 448 = 1.75·2^8 (correctly rounded wherever the quotient is ≥
//   2^-100, so everywhere above the 1e-30 floor; 1 FMUL + 4 FFMA instead of div.rn's MUFU, refinement and range
//   check), then the floor; inf for inf. tests/reference_test.cpp compares it with IEEE division for every
//   non-negative float of a stride-7 walk and around the floor.
template <bool ROUND>
__device__ __forceinline__ float block_scale_fast(float amax) {
  const u32 A = __float_as_uint(amax);
  if constexpr (!ROUND) {
    const float q = div_exact(amax, ScaleDivExact{0x1p-8f, 1.75f, 0x1.24924ap-1f});  // (RN(1 / 1.75))
    return A >= 0x7f800000u ? amax : fmaxf(q, 1e-30f);
  } else {
    const int e = max(static_cast<int>(A >> 23) - 8 + ((A & 0x7fffffu) > 0x600000u ? 1 : 0), 28);
    return A >= 0x7f800000u ? __uint_as_float(0x7f800000u) : __uint_as_float(static_cast<u32>(e) << 23);
  }
}

// The e4m3 codes of y / s (the correctly rounded fp32 quotient, then cvt.rn.satfinite) without div_exact's 6
// instructions a value: the quotient is bracketed by two products with reciprocals widened outwards, and where both
// products have the same code, so has every float between them — the quotient included (rounding to e4m3 is monotone
// in the magnitude). 4 FMUL + 2 F2FP a value pair and an xor-or, against div_exact's 4 FMUL + 8 FFMA + 1 F2FP.
//   r = rcp.approx(s) (one MUFU; within 2^-22 of 1/s, PTX guarantees 1 ulp), lo = RN(r·(1 − 2^-19)), hi = RN(r·(1 +
//   2^-19)) (normal: 1e-30 ≤ s ≤ FLT_MAX/448). |y·hi| ≥ |y/s|·(1 − 2^-22)(1 + 2^-19)(1 − 2^-24) > |y/s|·(1 + 2^-24)
//   ≥ |RN(y/s)|, and |y·lo| ≤ |y/s|·(1 + 2^-22)(1 − 2^-19)(1 + 2^-24) < |y/s|·(1 − 2^-24) ≤ |RN(y/s)| (for |y/s| ≥
//   2^-126; below, every one of them has code ±0 with y's sign), so |RN(y·lo)| ≤ |RN(y/s)| ≤ |RN(y·hi)|, all with
//   y's sign. s = +inf: r = lo = hi = 0, y·0 = ±0 or NaN, as y / inf; a NaN y gives NaN in both. The two codes
//   differ only where an e4m3 rounding boundary lies within ≈ 2^-19 (relative) of y/s — about one random fp32 value
//   in 2^14 —, and on every value of an e4m3 tie.
// Use: a batch of values is quantized with the bracket (DivFast: the codes of y·lo, each code's lo ^ hi or-ed into
// `miss`), and only where miss ≠ 0 the same batch again by div_exact (DivExact), which then rewrites every code of it:
// quantize_batch. A branch a batch, not a value: the batch stays one block of straight-line code.
// tests/reference_test.cpp repeats the rule on the host against IEEE division (random, near every boundary, edges).
struct ScaleDiv {
  float s, lo, hi;
};
__device__ __forceinline__ ScaleDiv scale_div(float s) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(s));
  return {s, __fmul_rn(r, 1.0f - 0x1p-19f), __fmul_rn(r, 1.0f + 0x1p-19f)};
}
// The same bracket straight from the block's amax, without forming s = block_scale_fast<false>(amax) (one FMNMX, one
// FMUL, one MUFU and two FMULs instead of s's 5 FMUL/FFMA, its floor and scale_div's 3): with a' = max(amax, A0), A0
// = RN(448·1e-30f), r = rcp.approx(a'·2^-8) (a'·2^-8 exact and normal, so is r: 2^-99 ≤ a'·2^-8 ≤ FLT_MAX·2^-8), lo,
// hi = RN(r·1.75·(1 ∓ 2^-19)) (both constants exact). 448 / a' is within 2^-22 of 1 / s: for a' = amax ≥ A0 either s
// = RN(amax / 448) (2^-24) or amax / 448 lies between A0 / 448 and the floor F = 1e-30f (2^-24 of F); for amax < A0,
// s is F or the float above it and 448 / A0 is within 2^-24 of 1 / F. With rcp.approx's 1 ulp (2^-23) and the
// product's rounding (2^-24): lo ≤ (1 / s)(1 + 2^-22)(1 + 2^-23)(1 − 2^-19)(1 + 2^-24) < (1 / s)(1 − 2^-19 + 2^-21),
// so |RN(y·lo)| ≤ |y·lo|(1 + 2^-24) < |y / s|(1 − 2^-24) ≤ |RN(y / s)|, and hi alike: the codes bracket the
// quotient's code as scale_div's do (its argument above needs r only within ≈ 2^-19.2 of 1 / s). amax = +inf: r = 0,
// lo = hi = 0, as scale_div(inf). tests/reference_test.cpp checks lo and hi against 1 / s for both extremes of a
// 1-ulp reciprocal, for every amax mantissa (each at a random exponent) and around A0 and FLT_MAX
// (ReferenceDivScale.BracketOfMax).
struct ScaleBracket {
  float lo, hi;
};
__device__ __forceinline__ ScaleBracket scale_bracket_of_max(float amax) {
  float r;
  const float a = __fmul_rn(fmaxf(amax, 448.0f * 1e-30f), 0x1p-8f);
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(a));
  return {__fmul_rn(r, 1.75f * (1.0f - 0x1p-19f)), __fmul_rn(r, 1.75f * (1.0f + 0x1p-19f))};
}
struct DivFast {};
struct DivExact {};
__device__ __forceinline__ u32 e4m3x4_div(DivFast, float a, float b, float c, float d, const ScaleDiv& q, u32& miss) {
  // (the two halves written out, not e4m3x4: the same code, but the SASS measured in session 21 came from this form)
  const u32 lo =
      e4m3x2(__fmul_rn(a, q.lo), __fmul_rn(b, q.lo)) | (e4m3x2(__fmul_rn(c, q.lo), __fmul_rn(d, q.lo)) << 16);
  const u32 hi =
      e4m3x2(__fmul_rn(a, q.hi), __fmul_rn(b, q.hi)) | (e4m3x2(__fmul_rn(c, q.hi), __fmul_rn(d, q.hi)) << 16);
  miss |= lo ^ hi;
  return lo;
}
__device__ __forceinline__ u32 e4m3x4_exact(float a, float b, float c, float d, const ScaleDivExact& e) {
  return e4m3x2(div_exact(a, e), div_exact(b, e)) | (e4m3x2(div_exact(c, e), div_exact(d, e)) << 16);
}
__device__ __forceinline__ u32 e4m3x4_div(DivExact, float a, float b, float c, float d, const ScaleDiv& q, u32&) {
  return e4m3x4_exact(a, b, c, d, scale_div_exact(q.s));
}
// body(DivFast{}, miss), then, where it left miss ≠ 0, body(DivExact{}, miss): body quantizes and stores a batch of
// values through e4m3x4_div (or a quantizer's x4) with the tag it is given, and must run the same way twice (no warp
// collective inside: the second run is this thread's alone). ROUND (power-of-two scales, no division): body once.
template <bool ROUND, class Body>
__device__ __forceinline__ void quantize_batch(Body&& body) {
  u32 miss = 0u;
  body(DivFast{}, miss);
  if constexpr (!ROUND)
    if (__builtin_expect(miss != 0u, 0)) body(DivExact{}, miss);
}

// Power-of-two scales on bf16 pairs (sm_90+): y = x · inv for both bf16 of x, inv = 1/s a power of two in both
// halves (`inv2`). The product is the bf16 of x·inv exactly: |x·inv| ≤ 448 (s ≥ the block's amax / 448), and a product
// that falls below bf16's normal range (|x / s| < 2^-126, rounded or flushed with its sign kept) has e4m3 code ±0 as
// the exact product has (e4m3's smallest step is 2^-9); NaN stays NaN, inf · 0 (s = inf) is NaN, finite · 0 ±0, as in
// fp32. So the e4m3 codes of the two halves are those of the fp32 products y·inv, one packed multiply a pair instead
// of two fp32 ones.
__device__ __forceinline__ u32 bf16x2_mul(u32 x, u32 inv2) {
#if __CUDA_ARCH__ >= 900
  u32 d;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(x), "r"(inv2));
  return d;
#else  // (the fp32 products, exact but below 2^-126, truncated: their low 16 bits are 0 there)
  const float l = __uint_as_float(x << 16) * __uint_as_float(inv2 << 16);
  const float h = __uint_as_float(x & 0xffff0000u) * __uint_as_float(inv2 & 0xffff0000u);
  return (__float_as_uint(l) >> 16) | (__float_as_uint(h) & 0xffff0000u);
#endif
}
// inv's bf16 bits (inv a power of two or 0: its low 16 bits are 0) in both halves / lo and hi halves.
__device__ __forceinline__ u32 bf16x2_pair(float lo, float hi) { return (__float_as_uint(lo) >> 16) | (__float_as_uint(hi) & 0xffff0000u); }
// Four e4m3 codes of two scaled bf16 pairs: (lo(y0), hi(y0), lo(y1), hi(y1)) in bytes 0 … 3.
__device__ __forceinline__ u32 e4m3x4_bf16x2(u32 y0, u32 y1) {
  return e4m3x4(__uint_as_float(y0 << 16), __uint_as_float(y0 & 0xffff0000u), __uint_as_float(y1 << 16),
                __uint_as_float(y1 & 0xffff0000u));
}

// What quantization multiplies or divides by: with ROUND the exact reciprocal, else s through div_exact a value.
// The block-quantized permute's: its values are bf16, and y / s, a quotient of two 8-bit mantissas times 448, falls
// within e4m3x4_div's bracket (2^-20 then) of an e4m3 tie for ≈ 0.5 % of them (randn blocks; ≈ 3e-5 for the fp32
// values of the norm and SiLU kernels), so ≈ 11 % of a thread's 32-value batches and almost every warp ran the redo:
// the bracket made this kernel slower at round_scale 0 (204 → 259 µs at the bench shape; 223 with a branch every 4
// values).
template <bool ROUND> struct Quantizer {
  float s, inv;
  ScaleDivExact d;
  __device__ __forceinline__ explicit Quantizer(float scale) : s(scale), inv(ROUND ? 1.0f / scale : scale) {
    if constexpr (!ROUND) d = scale_div_exact(scale);
  }
  __device__ __forceinline__ float operator()(float y) const { return ROUND ? y * inv : div_exact(y, d); }
};

}  // namespace kiln
