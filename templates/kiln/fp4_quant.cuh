// kiln/fp4_quant.cuh — the block-scaled formats of the FP4 MoE (spec: ../shared/spec/fp4-moe.md §5, kiln's decisions
// §13): one thread a block of B elements along the rows (B = 16 for NVFP4, 32 for MXFP4 / MXFP8).
//
// NVFP4 (FMT 0): SF = e4m3_rn_satfinite((G·amax) / 6), q = e2m1_rn_satfinite((x·G) / float(SF)), every operation one
//   fp32 rounding in that order, IEEE division (kiln's rule for §13.4's open choice: exact division, not
//   FlashInfer's approximate reciprocals). A block whose SF byte is 0 (all zeros, or too small for E4M3) gets codes 0.
// MXFP4 (FMT 1) / MXFP8 (FMT 2): scale 2^e with e the smallest integer such that MAX·2^e ≥ amax (MAX = 6 / 448:
//   TRT-LLM's ceil rule on the exact value, so no finite element saturates), UE8M0 byte e + 127 clamped to [0, 254]
//   (amax = 0: byte 0); q = e2m1 / e4m3 (RNE, satfinite) of x·2^−e, exact scaling.
// amax is over the block's finite elements. NaN encodes as +0 (E2M1, which has no NaN) or 0x7F (E4M3); ±inf as ±6 /
// ±448. E2M1: codes 0–7 = 0, 0.5, 1, 1.5, 2, 3, 4, 6, bit 3 the sign (−0 kept for negative values rounding to 0).
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp4_quant_args.h"
#include "kiln/fp4_rules.h"
#include "kiln/fp8.cuh"
#include "kiln/ptx.cuh"

namespace kiln {
namespace f4q {

// E2M1 code of v (sign in bit 3, NaN → 0): the magnitude from the fp32 bits (kiln/fp4_rules.h).
__device__ __forceinline__ u32 e2m1(float v) {
  return f4r::e2m1_mag_bits(fabsf(v)) | (v == v ? (__float_as_uint(v) >> 28) & 8u : 0u);
}

template <typename T> constexpr bool kIsF16 = false;
template <> constexpr bool kIsF16<f16> = true;

// The value of an E4M3 byte ≤ 0x7E (non-negative).
__device__ __forceinline__ float e4m3_value(u32 c) {
  const u32 e = c >> 3, m = c & 7u;
  return e == 0 ? static_cast<float>(m) * 0.001953125f : __uint_as_float(((e + 120u) << 23) | (m << 20));
}

// UE8M0 byte of the power-of-two scale for amax (finite, ≥ 0) under MAX = 1.5·2^2 (6) or 1.75·2^8 (448).
template <int FMT>
__device__ __forceinline__ u32 mx_scale_byte(float amax) {
  constexpr int kLog = FMT == 1 ? 2 : 8;
  constexpr u32 kMant = FMT == 1 ? 0x400000u : 0x600000u;
  const u32 b = __float_as_uint(amax);
  if (b == 0u) return 0u;
  const int k = static_cast<int>(b >> 23) - 127;  // amax in [2^k, 2^(k+1)) where normal
  if (k == -127) return 0u;                        // subnormal amax: e far below −127
  const int e = k - kLog + ((b & 0x7fffffu) > kMant ? 1 : 0);
  const int byte = e + 127;
  return byte < 0 ? 0u : (byte > 254 ? 254u : static_cast<u32>(byte));
}

}  // namespace f4q

// Grid: any (grid-stride over the blocks); WARPS·32 threads.
template <typename T, int FMT, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) fp4_quantize_kernel(const __grid_constant__ Fp4QuantArgs a) {
  constexpr int B = FMT == 0 ? 16 : 32;                      // elements a block
  constexpr int V = 16 / static_cast<int>(sizeof(T));        // elements a 16-byte vector
  constexpr int NV = B / V;
  const float G = FMT == 0 ? __ldg(a.global_scale) : 1.0f;
  const i64 stride = static_cast<i64>(gridDim.x) * (WARPS * 32);
  for (i64 blk = static_cast<i64>(blockIdx.x) * (WARPS * 32) + threadIdx.x; blk < a.blocks; blk += stride) {
    float v[B];
    u32 raw[B * sizeof(T) / 4];  // the block's words (the bf16 MXFP4 path reads pairs from them)
    const char* src = static_cast<const char*>(a.x) + blk * B * static_cast<i64>(sizeof(T));
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const Vec16 w = load16(src + j * 16);
#pragma unroll
      for (int i = 0; i < 4; ++i) raw[j * 4 + i] = w.w[i];
#pragma unroll
      for (int i = 0; i < V; ++i) v[j * V + i] = vec_get<T>(w, i);
    }
    if constexpr (FMT == 1 && sizeof(T) == 2 && !f4q::kIsF16<T>) {
      // bf16 MXFP4, a block with no inf / NaN (the max of the 15-bit magnitudes, two lanes an operation, is below
      // 0x7F80): the scale from that max, x · 2^(127 − byte) in bf16 (exact: a power of two, |product| ≤ 6), and
      // two codes an operation (f4r::e2m1x2_bf16). Blocks with inf / NaN take the general path below.
      u32 amax2 = 0u;
#pragma unroll
      for (int i = 0; i < 16; ++i) amax2 = max_u16x2(amax2, raw[i] & 0x7fff7fffu);
      const u32 abits = umax(amax2 & 0xffffu, amax2 >> 16);
      if (abits < 0x7f80u) {
        const u32 sb = f4q::mx_scale_byte<1>(__uint_as_float(abits << 16));
        const u32 f2 = ((254u - sb) << 7) * 0x10001u;
        u32 w[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
          w[j] = f4r::e2m1x2_bf16(mul_bf16x2(raw[4 * j], f2)) |
                 (f4r::e2m1x2_bf16(mul_bf16x2(raw[4 * j + 1], f2)) << 8) |
                 (f4r::e2m1x2_bf16(mul_bf16x2(raw[4 * j + 2], f2)) << 16) |
                 (f4r::e2m1x2_bf16(mul_bf16x2(raw[4 * j + 3], f2)) << 24);
        *reinterpret_cast<uint4*>(a.q + blk * 16) = make_uint4(w[0], w[1], w[2], w[3]);
        a.sf[blk] = static_cast<unsigned char>(sb);
        continue;
      }
    }
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < B; ++i) amax = fmaxf(amax, fabsf(v[i]) <= 3.402823466e38f ? fabsf(v[i]) : 0.0f);
    if constexpr (FMT == 0) {
      const float t = __fdiv_rn(__fmul_rn(G, amax), 6.0f);
      const u32 sfb = e4m3x2(t, 0.0f) & 0x7fu;  // t ≥ 0 (or NaN from a NaN G: 0x7F)
      const float sf = f4q::e4m3_value(sfb > 0x7eu ? 0x7eu : sfb);
      u32 w[2] = {0u, 0u};
      if (sfb != 0u) {  // the code of the IEEE quotient (x·G) / SF from 7 per-block thresholds, no division
        const f4r::Nvfp4Thresholds th = f4r::nvfp4_thresholds(sf);
#pragma unroll
        for (int i = 0; i < 16; ++i) w[i / 8] |= f4r::nvfp4_code(__fmul_rn(v[i], G), th) << (4 * (i % 8));
      }
      *reinterpret_cast<uint2*>(a.q + blk * 8) = make_uint2(w[0], w[1]);
      a.sf[blk] = static_cast<unsigned char>(sfb);
    } else {
      const u32 sb = f4q::mx_scale_byte<FMT>(amax);
      const float f = __uint_as_float((254u - sb) << 23);  // 2^(127 − byte): exact, normal for byte ∈ [0, 253]
      if constexpr (FMT == 1) {
        u32 w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int i = 0; i < 32; ++i) w[i / 8] |= f4q::e2m1(v[i] * f) << (4 * (i % 8));
        *reinterpret_cast<uint4*>(a.q + blk * 16) = make_uint4(w[0], w[1], w[2], w[3]);
      } else {
        u32 w[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) w[i] = e4m3x4(v[4 * i] * f, v[4 * i + 1] * f, v[4 * i + 2] * f, v[4 * i + 3] * f);
        *reinterpret_cast<uint4*>(a.q + blk * 32) = make_uint4(w[0], w[1], w[2], w[3]);
        *reinterpret_cast<uint4*>(a.q + blk * 32 + 16) = make_uint4(w[4], w[5], w[6], w[7]);
      }
      a.sf[blk] = static_cast<unsigned char>(sb);
    }
  }
}

}  // namespace kiln
