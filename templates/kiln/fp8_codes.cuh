// kiln/fp8_codes.cuh — the triton_ops uint8 "FP8 compatibility format" (spec: ../shared/spec/triton-ops.md §4): a
// symmetric linear grid of 255 levels, q = rint(clamp(x·s, −448, 448) / 448 · 127) + 128 with the per-tensor encode
// multiplier s = 448 / max|x|, and its decode (q − 128) · (448/127) / s.
//
// quantize: ONE cooperative launch (every CTA resident; the driver's grid barrier word). Pass 1: each CTA's max |x|
// over the finite elements (16-byte vectors, grid-stride) into partials[blockIdx.x]; grid barrier; every CTA reads all
// partials (max is exact and order-free, so any grid gives the same bits), s = amax = 0 ? 1 : min(448 / amax in fp64,
// FLT_MAX) rounded to fp32; CTA 0 stores s. Pass 2: the codes, with the fp32 operations in the spec's order (×s, clamp,
// ÷448 IEEE, ×127, rint half-to-even, +128); the second read of x comes from L2 where x fits it.
// Non-finite inputs (kiln's rule; triton_ops raises for a non-positive scale or propagates NaN into undefined codes):
// NaN encodes as 128 (zero), ±inf clamp to 255 / 1; neither enters amax.
//
// dequantize: elementwise, ((q − 128) · fp32(448/127)) ÷ s (IEEE), rounded once to the output dtype — through a
// per-CTA table of the 256 codes' values.
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp8_codes_args.h"
#include "kiln/grid_sync.cuh"

namespace kiln {
namespace f8c {

// The code of x at encode multiplier s (bit-exact with tests/reference/fp8_codes.cpp).
__device__ __forceinline__ u32 encode(float x, float s) {
  if (x != x) return 128u;
  const float t = fminf(fmaxf(__fmul_rn(x, s), -448.0f), 448.0f);  // ±inf (or x·s overflowing) clamp
  // t / 448 without a division: the reciprocal product and one FMA correction. Not always the correctly rounded
  // quotient, but its code is the spec's for every fp32 t in [−448, 448] (checked exhaustively:
  // tests/fp8_codes_test.cpp, Fp8Codes.DivisionFreeQuotientGivesTheSpecsCodes).
  constexpr float inv = 1.0f / 448.0f;
  const float q0 = __fmul_rn(t, inv);
  const float v = __fmul_rn(__fmaf_rn(__fmaf_rn(-q0, 448.0f, t), inv, q0), 127.0f);
  return static_cast<u32>(static_cast<int>(rintf(v)) + 128);
}

template <int BYTES>
struct Bits {
  using type = float;
};
template <>
struct Bits<2> {
  using type = unsigned short;
};

__device__ __forceinline__ float finite_abs(float x) { return fabsf(x) <= 3.402823466e38f ? fabsf(x) : 0.0f; }

}  // namespace f8c

// Grid: cooperative, ≤ the CTAs resident at once; WARPS·32 threads; no dynamic shared memory.
template <typename T, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) fp8_quantize_kernel(const __grid_constant__ Fp8QuantizeArgs a) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));  // elements a 16-byte vector
  __shared__ float red[WARPS];
  __shared__ float s_scale;
  const i64 vecs = a.n / V, tid = static_cast<i64>(blockIdx.x) * (WARPS * 32) + threadIdx.x;
  const i64 stride = static_cast<i64>(gridDim.x) * (WARPS * 32);
  // Pass 1: max |x| over the finite elements.
  float m = 0.0f;
  for (i64 v = tid; v < vecs; v += stride) {
    const Vec16 w = load16(static_cast<const char*>(a.x) + v * 16);
#pragma unroll
    for (int i = 0; i < V; ++i) m = fmaxf(m, f8c::finite_abs(vec_get<T>(w, i)));
  }
  for (i64 e = vecs * V + tid; e < a.n; e += stride) m = fmaxf(m, f8c::finite_abs(to_float(static_cast<const T*>(a.x)[e])));
  m = warp_max(m);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float b = 0.0f;
    for (int w = 0; w < WARPS; ++w) b = fmaxf(b, red[w]);
    a.partials[blockIdx.x] = b;
    __threadfence();
    const u32* word = grid_barrier_word();
    grid_count_wait(word, grid_count_arrive(const_cast<u32*>(word)));
  }
  __syncthreads();
  // Every CTA: amax over the partials (read through L2: they were written by other SMs), then s.
  float g = 0.0f;
  for (int i = threadIdx.x; i < static_cast<int>(gridDim.x); i += WARPS * 32) g = fmaxf(g, __ldcg(a.partials + i));
  g = warp_max(g);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = g;
  __syncthreads();
  if (threadIdx.x == 0) {
    float amax = 0.0f;
    for (int w = 0; w < WARPS; ++w) amax = fmaxf(amax, red[w]);
    const float s = amax == 0.0f ? 1.0f : static_cast<float>(fmin(448.0 / static_cast<double>(amax), 3.4028234663852886e38));
    s_scale = s;
    if (blockIdx.x == 0) *a.scale = s;
  }
  __syncthreads();
  const float s = s_scale;
  // Pass 2: the codes (a 16-byte vector of x gives V bytes of q: 4, 8 or 16 bytes stored at once).
  for (i64 v = tid; v < vecs; v += stride) {
    const Vec16 w = load16(static_cast<const char*>(a.x) + v * 16);
    u32 c[4] = {0, 0, 0, 0};
#pragma unroll
    for (int i = 0; i < V; ++i) c[i / 4] |= f8c::encode(vec_get<T>(w, i), s) << (8 * (i % 4));
    unsigned char* dst = a.q + v * V;
    if constexpr (V == 4) {
      *reinterpret_cast<u32*>(dst) = c[0];
    } else if constexpr (V == 8) {
      *reinterpret_cast<uint2*>(dst) = make_uint2(c[0], c[1]);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(c[0], c[1], c[2], c[3]);
    }
  }
  for (i64 e = vecs * V + tid; e < a.n; e += stride)
    a.q[e] = static_cast<unsigned char>(f8c::encode(to_float(static_cast<const T*>(a.x)[e]), s));
}

// Grid: any (grid-stride); WARPS·32 threads. A code has 256 values, so each CTA first computes the decoded value of
// every code once (the spec's fp32 operations, IEEE division included, rounded to T) into a shared table; the stream
// is then one table read an element.
template <typename T, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) fp8_dequantize_kernel(const __grid_constant__ Fp8DequantizeArgs a) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));  // output elements a 16-byte vector
  using E = typename f8c::Bits<sizeof(T)>::type;  // T's bits (unsigned short) or fp32 itself
  __shared__ E table[256];
  {
    const float s = __ldg(a.scale), step = 448.0f / 127.0f;
    for (int c = threadIdx.x; c < 256; c += WARPS * 32) {
      const T v = from_float<T>(__fdiv_rn(__fmul_rn(static_cast<float>(c - 128), step), s));
      table[c] = *reinterpret_cast<const E*>(&v);
    }
  }
  __syncthreads();
  const i64 vecs = a.n / V, tid = static_cast<i64>(blockIdx.x) * (WARPS * 32) + threadIdx.x;
  const i64 stride = static_cast<i64>(gridDim.x) * (WARPS * 32);
  for (i64 v = tid; v < vecs; v += stride) {
    u32 c[4];
    const unsigned char* src = a.q + v * V;
    if constexpr (V == 4) {
      c[0] = __ldg(reinterpret_cast<const u32*>(src));
    } else if constexpr (V == 8) {
      const uint2 t = __ldg(reinterpret_cast<const uint2*>(src));
      c[0] = t.x;
      c[1] = t.y;
    } else {
      const uint4 t = __ldg(reinterpret_cast<const uint4*>(src));
      c[0] = t.x;
      c[1] = t.y;
      c[2] = t.z;
      c[3] = t.w;
    }
    uint4 w;
    u32* o = reinterpret_cast<u32*>(&w);
    if constexpr (sizeof(T) == 2) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const u32 b = c[i / 2] >> (16 * (i % 2));
        o[i] = static_cast<u32>(table[b & 0xffu]) | (static_cast<u32>(table[(b >> 8) & 0xffu]) << 16);
      }
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) o[i] = __float_as_uint(table[(c[0] >> (8 * i)) & 0xffu]);
    }
    *reinterpret_cast<uint4*>(static_cast<char*>(a.out) + v * 16) = w;
  }
  for (i64 e = vecs * V + tid; e < a.n; e += stride) reinterpret_cast<E*>(a.out)[e] = table[a.q[e]];
}

}  // namespace kiln
