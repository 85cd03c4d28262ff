// kiln/row_io.cuh — pieces shared by the row-wise norm families whose vector width depends on a feature dim
// (rms_norm_rope, group_rms_norm_gate):
//   * Raw<BYTES>: 2/4/8/16 bytes of a row held as loaded (packed 16-bit values stay packed: half the registers);
//     ld_raw / st_raw move them with one instruction of exactly that width;
//   * load_f<T, E>: E consecutive elements of type T as floats, with the widest loads that fit (16 bytes at most);
//   (the deterministic weight-gradient reduction these families share is kiln/dw_reduce.cuh, included here).
#pragma once
#include "kiln/common.cuh"
#include "kiln/dw_reduce.cuh"
#include "kiln/ptx.cuh"

namespace kiln {

template <typename A, typename B> struct IsSame { static constexpr bool value = false; };
template <typename A> struct IsSame<A, A> { static constexpr bool value = true; };

template <int BYTES>
struct Raw {
  static_assert(BYTES == 2 || BYTES == 4 || BYTES == 8 || BYTES == 16, "2, 4, 8 or 16 bytes");
  u32 w[BYTES >= 4 ? BYTES / 4 : 1];
};

// STREAM: the bytes are read once (do not allocate in L1).
template <int BYTES, bool STREAM>
__device__ __forceinline__ Raw<BYTES> ld_raw(const void* p) {
  Raw<BYTES> r;
  if constexpr (BYTES == 16) {
    if constexpr (STREAM)
      asm volatile("ld.global.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                   : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3]) : "l"(p));
    else
      asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];"
                   : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3]) : "l"(p));
  } else if constexpr (BYTES == 8) {
    if constexpr (STREAM)
      asm volatile("ld.global.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(r.w[0]), "=r"(r.w[1]) : "l"(p));
    else
      asm volatile("ld.global.v2.u32 {%0,%1}, [%2];" : "=r"(r.w[0]), "=r"(r.w[1]) : "l"(p));
  } else if constexpr (BYTES == 4) {
    asm volatile("ld.global.u32 %0, [%1];" : "=r"(r.w[0]) : "l"(p));
  } else {
    u16 h;
    asm volatile("ld.global.u16 %0, [%1];" : "=h"(h) : "l"(p));
    r.w[0] = h;
  }
  return r;
}

template <int BYTES>
__device__ __forceinline__ void st_raw(void* p, const Raw<BYTES>& r) {
  if constexpr (BYTES == 16)
    asm volatile("st.global.v4.u32 [%0], {%1,%2,%3,%4};" :: "l"(p), "r"(r.w[0]), "r"(r.w[1]), "r"(r.w[2]),
                 "r"(r.w[3]) : "memory");
  else if constexpr (BYTES == 8)
    asm volatile("st.global.v2.u32 [%0], {%1,%2};" :: "l"(p), "r"(r.w[0]), "r"(r.w[1]) : "memory");
  else if constexpr (BYTES == 4)
    asm volatile("st.global.u32 [%0], %1;" :: "l"(p), "r"(r.w[0]) : "memory");
  else
    asm volatile("st.global.u16 [%0], %1;" :: "l"(p), "h"(static_cast<u16>(r.w[0])) : "memory");
}

// st_raw, or no store at all (MODE 3: measurement ablations only). (Session 6 measured streaming .cs stores and an L2
// evict-first policy on the gate backward's outputs: +0.3 and ± 0 µs; removed.)
template <int MODE, int BYTES>
__device__ __forceinline__ void st_raw_hint(void* p, const Raw<BYTES>& r) {
  static_assert(MODE == 0 || MODE == 3, "0 store, 3 none");
  if constexpr (MODE == 0) st_raw(p, r);
}

// Makes the compiler forget what a Raw holds (no instruction is emitted). A row kept in registers between two passes
// is laundered before the second, so the fp32 values the first pass unpacked are not kept alive instead (common
// subexpression elimination would otherwise double the registers the row occupies).
template <int BYTES>
__device__ __forceinline__ void launder(Raw<BYTES>& r) {
#pragma unroll
  for (int i = 0; i < (BYTES >= 4 ? BYTES / 4 : 1); ++i) asm volatile("" : "+r"(r.w[i]));
}

// Element i of a Raw holding values of type T, as float; and the reverse.
template <typename T, int BYTES>
__device__ __forceinline__ float raw_get(const Raw<BYTES>& r, int i) {
  if constexpr (sizeof(T) == 4) {
    return __uint_as_float(r.w[i]);
  } else {
    const u32 word = r.w[i >> 1];
    const u16 h = static_cast<u16>((i & 1) ? (word >> 16) : (word & 0xffffu));
    return to_float(T{h});
  }
}
template <typename T, int BYTES>
__device__ __forceinline__ void raw_set(Raw<BYTES>& r, int i, float f) {
  if constexpr (sizeof(T) == 4) {
    r.w[i] = __float_as_uint(f);
  } else {
    const u32 b = from_float<T>(f).bits;
    u32& word = r.w[i >> 1];
    word = (i & 1) ? ((word & 0xffffu) | (b << 16)) : ((word & 0xffff0000u) | b);
  }
}

// Elements i and i + 1 (i even) of a Raw holding 16-bit values, from two floats with one conversion.
template <typename T, int BYTES>
__device__ __forceinline__ void raw_set2(Raw<BYTES>& r, int i, float lo, float hi) {
  if constexpr (sizeof(T) == 4) {
    r.w[i] = __float_as_uint(lo);
    r.w[i + 1] = __float_as_uint(hi);
  } else {
    r.w[i >> 1] = pack2<T>(lo, hi);
  }
}

// E consecutive elements of type T at element offset k of `base` (the address aligned to min(16, E·sizeof(T))).
template <typename T, int E>
__device__ __forceinline__ void load_f(const void* base, i64 k, float (&out)[E]) {
  constexpr int BYTES = E * static_cast<int>(sizeof(T));
  const char* p = static_cast<const char*>(base) + k * static_cast<i64>(sizeof(T));
  if constexpr (BYTES > 16) {
    constexpr int PER = 16 / static_cast<int>(sizeof(T));
#pragma unroll
    for (int j = 0; j < BYTES / 16; ++j) {
      const Raw<16> r = ld_raw<16, false>(p + j * 16);
#pragma unroll
      for (int i = 0; i < PER; ++i) out[j * PER + i] = raw_get<T>(r, i);
    }
  } else {
    const Raw<BYTES> r = ld_raw<BYTES, false>(p);
#pragma unroll
    for (int i = 0; i < E; ++i) out[i] = raw_get<T>(r, i);
  }
}

// Stores out[e] for e < E into a Raw of T (pairs converted together when E is even).
template <typename T, int E, int B>
__device__ __forceinline__ void raw_fill(Raw<B>& r, const float (&out)[E]) {
  if constexpr (E % 2 == 0) {
#pragma unroll
    for (int e = 0; e < E; e += 2) raw_set2<T>(r, e, out[e], out[e + 1]);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) raw_set<T>(r, e, out[e]);
  }
}

// E fp32 values added to shared memory at p (p 4·E-byte aligned when E ≥ 4), with the widest accesses that fit.
// With E = 8, lanes whose bit 2 is set take their second float4 first: when consecutive lanes own consecutive 32-byte
// runs, the 8 lanes of a quarter-warp then hit 8 different 16-byte bank groups instead of 4 (no 2-way conflict).
template <int E>
__device__ __forceinline__ void smem_add(float* p, const float (&v)[E]) {
  if constexpr (E == 8) {
    const int first = (threadIdx.x >> 2) & 1;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int j = 4 * (k ^ first);
      float4 t = *reinterpret_cast<float4*>(p + j);
      // v[j..j+3] with j runtime: select between the two halves without dynamic register indexing.
      t.x += first ^ k ? v[4] : v[0];
      t.y += first ^ k ? v[5] : v[1];
      t.z += first ^ k ? v[6] : v[2];
      t.w += first ^ k ? v[7] : v[3];
      *reinterpret_cast<float4*>(p + j) = t;
    }
  } else if constexpr (E % 4 == 0) {
#pragma unroll
    for (int j = 0; j < E; j += 4) {
      float4 t = *reinterpret_cast<float4*>(p + j);
      t.x += v[j]; t.y += v[j + 1]; t.z += v[j + 2]; t.w += v[j + 3];
      *reinterpret_cast<float4*>(p + j) = t;
    }
  } else if constexpr (E % 2 == 0) {
#pragma unroll
    for (int j = 0; j < E; j += 2) {
      float2 t = *reinterpret_cast<float2*>(p + j);
      t.x += v[j]; t.y += v[j + 1];
      *reinterpret_cast<float2*>(p + j) = t;
    }
  } else {
#pragma unroll
    for (int j = 0; j < E; ++j) p[j] += v[j];
  }
}

// p[j] += v[j]·scale for j < E (fp32 in shared memory; one FFMA per value instead of a multiply and an add), with the
// accesses of smem_add.
template <int E>
__device__ __forceinline__ void smem_fma(float* p, const float (&v)[E], float scale) {
  if constexpr (E == 8) {
    const int first = (threadIdx.x >> 2) & 1;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int j = 4 * (k ^ first);
      float4 t = *reinterpret_cast<float4*>(p + j);
      t.x = fmaf(first ^ k ? v[4] : v[0], scale, t.x);
      t.y = fmaf(first ^ k ? v[5] : v[1], scale, t.y);
      t.z = fmaf(first ^ k ? v[6] : v[2], scale, t.z);
      t.w = fmaf(first ^ k ? v[7] : v[3], scale, t.w);
      *reinterpret_cast<float4*>(p + j) = t;
    }
  } else if constexpr (E % 4 == 0) {
#pragma unroll
    for (int j = 0; j < E; j += 4) {
      float4 t = *reinterpret_cast<float4*>(p + j);
      t.x = fmaf(v[j], scale, t.x); t.y = fmaf(v[j + 1], scale, t.y);
      t.z = fmaf(v[j + 2], scale, t.z); t.w = fmaf(v[j + 3], scale, t.w);
      *reinterpret_cast<float4*>(p + j) = t;
    }
  } else if constexpr (E % 2 == 0) {
#pragma unroll
    for (int j = 0; j < E; j += 2) {
      float2 t = *reinterpret_cast<float2*>(p + j);
      t.x = fmaf(v[j], scale, t.x); t.y = fmaf(v[j + 1], scale, t.y);
      *reinterpret_cast<float2*>(p + j) = t;
    }
  } else {
#pragma unroll
    for (int j = 0; j < E; ++j) p[j] = fmaf(v[j], scale, p[j]);
  }
}

// ---- staging rows in shared memory (cp.async, sm_80+: common.cuh's cp_async16 / cp_async_commit / wait_group) ------
// 16 bytes from shared memory as a Raw<16> (ptx.cuh's lds16). volatile: the second pass re-reads the row instead of
// the compiler keeping the first pass's values alive in registers (which is what staging avoids).
__device__ __forceinline__ Raw<16> lds16(const void* p) {
  const Vec16 v = lds16(smem_u32(p));
  return Raw<16>{{v.w[0], v.w[1], v.w[2], v.w[3]}};
}

// The largest power of two dividing n, capped at `cap` (a power of two).
__host__ __device__ constexpr int pow2_divisor(int n, int cap) {
  int e = 1;
  while (e < cap && n % (2 * e) == 0) e *= 2;
  return e;
}

}  // namespace kiln
