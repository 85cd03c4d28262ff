// kiln/fp4_moe_decode.h — the FP4 MoE gather's exact decoders (E2M1 codes, E4M3 bytes, UE8M0 scales → fp32): host
// and device share this header so that tests/fp4_moe_test.cpp checks the very functions the kernel runs on every
// code against the reference's value tables.
#pragma once
#include "kiln/fp4_rules.h"

namespace kiln {
namespace f4m {

// E2M1 code c (bit 3 sign, bits 2–1 exponent with bias 1, bit 0 mantissa): 0, .5, 1, 1.5, 2, 3, 4, 6 and negatives.
KILN_F4_HD float e2m1_float(unsigned c) {
  const unsigned e = (c >> 1) & 3u, m = c & 1u;
  const unsigned b = e ? ((e + 126u) << 23) | (m << 22) : (m ? 0x3f000000u : 0u);
  return f4r::u2f(b | ((c & 8u) << 28));
}
// E4M3 (float8_e4m3fn) byte: its fields moved into fp32's give value · 2^−120 (subnormals included: exponent field
// 0 is an fp32 subnormal with the same mantissa), then an exact scaling; 0x7F / 0xFF are NaN.
KILN_F4_HD float e4m3_float(unsigned c) {
  c &= 0xffu;
  if ((c & 0x7fu) == 0x7fu) return f4r::u2f(0x7fc00000u);
  const float v = f4r::u2f(((c & 0x80u) << 24) | ((c & 0x7fu) << 20));
  return v * 1.329227995784915872903807060280344576e36f;  // 2^120
}
// UE8M0 byte s: 2^(s − 127); 255 is NaN.
KILN_F4_HD float ue8m0_float(unsigned s) {
  s &= 0xffu;
  if (s == 255u) return f4r::u2f(0x7fc00000u);
  return s == 0u ? f4r::u2f(0x00400000u) : f4r::u2f(s << 23);
}

}  // namespace f4m
}  // namespace kiln
