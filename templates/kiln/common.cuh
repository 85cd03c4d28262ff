// kiln/common.cuh — device toolkit shared by every family: scalar types and conversions, 16-byte vector
// access, warp/cluster reductions, and the fp8 e4m3 1×128 block quantizer.
//
// Self-contained: no CUDA toolkit header is included, so a specialization compiles in a fraction of a second and
// its cache key covers every byte of source it was built from.
#pragma once

namespace kiln {

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// ---- element types: storage and conversion to/from fp32 -----------------------------------------------------------
struct bf16 { u16 bits; };
struct f16 { u16 bits; };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __uint_as_float(static_cast<u32>(v.bits) << 16); }
__device__ __forceinline__ float to_float(f16 v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
  return f;
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float v) {  // round to nearest even
  u16 r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v));
  return bf16{r};
}
template <> __device__ __forceinline__ f16 from_float<f16>(float v) {
  u16 r;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v));
  return f16{r};
}

// ---- compile-time values as arguments (one generic lambda instantiated per flag / count) -------------------------
template <bool B>
struct Flag {
  static constexpr bool value = B;
};
template <int V>
struct IntC {
  static constexpr int value = V;
};

// ---- 16-byte vectors ------------------------------------------------------------------------------------------------
struct alignas(16) Vec16 { u32 w[4]; };

template <typename T> struct VecTraits { static constexpr int kElems = 16 / sizeof(T); };

__device__ __forceinline__ Vec16 load16(const void* p) {
  Vec16 v;
  asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3]) : "l"(p));
  return v;
}
// Streaming load: read once, do not keep in L1.
__device__ __forceinline__ Vec16 load16_stream(const void* p) {
  Vec16 v;
  asm volatile("ld.global.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3]) : "l"(p));
  return v;
}
__device__ __forceinline__ void store16(void* p, const Vec16& v) {
  asm volatile("st.global.v4.u32 [%0], {%1,%2,%3,%4};" :: "l"(p), "r"(v.w[0]), "r"(v.w[1]), "r"(v.w[2]), "r"(v.w[3])
               : "memory");
}

// Element i (0 ≤ i < 16/sizeof(T)) of a vector, as float.
template <typename T> __device__ __forceinline__ float vec_get(const Vec16& v, int i);
template <> __device__ __forceinline__ float vec_get<float>(const Vec16& v, int i) { return __uint_as_float(v.w[i]); }
template <> __device__ __forceinline__ float vec_get<bf16>(const Vec16& v, int i) {
  return __uint_as_float((i & 1) ? (v.w[i >> 1] & 0xffff0000u) : (v.w[i >> 1] << 16));
}
template <> __device__ __forceinline__ float vec_get<f16>(const Vec16& v, int i) {
  return to_float(f16{static_cast<u16>((i & 1) ? (v.w[i >> 1] >> 16) : (v.w[i >> 1] & 0xffffu))});
}
template <typename T> __device__ __forceinline__ void vec_set(Vec16& v, int i, float f);
template <> __device__ __forceinline__ void vec_set<float>(Vec16& v, int i, float f) { v.w[i] = __float_as_uint(f); }
template <> __device__ __forceinline__ void vec_set<bf16>(Vec16& v, int i, float f) {
  u32 b = from_float<bf16>(f).bits;
  v.w[i >> 1] = (i & 1) ? ((v.w[i >> 1] & 0xffffu) | (b << 16)) : ((v.w[i >> 1] & 0xffff0000u) | b);
}
template <> __device__ __forceinline__ void vec_set<f16>(Vec16& v, int i, float f) {
  u32 b = from_float<f16>(f).bits;
  v.w[i >> 1] = (i & 1) ? ((v.w[i >> 1] & 0xffffu) | (b << 16)) : ((v.w[i >> 1] & 0xffff0000u) | b);
}

// V consecutive elements of type T starting at element k0 (k0·sizeof(T) a multiple of V·sizeof(T), the base
// 16-byte aligned), as floats, with the widest loads that fit: one 16-byte load covers 8 bf16 or 4 fp32.
template <typename T, int V>
__device__ __forceinline__ void load_floats(const void* base, int k0, float (&out)[V]) {
  constexpr int BYTES = V * static_cast<int>(sizeof(T));
  const char* p = static_cast<const char*>(base) + static_cast<long long>(k0) * sizeof(T);
  if constexpr (BYTES % 16 == 0) {
    constexpr int E = 16 / sizeof(T);
#pragma unroll
    for (int j = 0; j < BYTES / 16; ++j) {
      const Vec16 v = load16(p + j * 16);
#pragma unroll
      for (int i = 0; i < E; ++i) out[j * E + i] = vec_get<T>(v, i);
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = to_float(reinterpret_cast<const T*>(p)[i]);
  }
}

// ---- reductions -----------------------------------------------------------------------------------------------------
// Butterfly over `width` lanes (a power of two ≤ 32); every lane of the group gets the result, the order is fixed.
template <int width = 32>
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = width / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// fmaxf ignores NaN (returns the other operand), as the block-quant convention requires.
template <int width = 32>
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = width / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Inclusive prefix sum of one int per lane over the full warp (5 shuffles; every lane must call it).
__device__ __forceinline__ int warp_inclusive_scan(int v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += n;
  }
  return v;
}
// Exclusive block-wide scan of one int per thread (NTH threads); returns the prefix, `total` gets the sum. warp_tot:
// NTH / 32 ints of shared memory. NWU: the warps whose values may be nonzero (the first NWU; the others hold 0).
template <int NTH, int NWU = NTH / 32>
__device__ __forceinline__ int block_exclusive_scan(int v, int* warp_tot, int& total) {
  const int w = threadIdx.x >> 5;
  const int inc = warp_inclusive_scan(v);
  if ((threadIdx.x & 31) == 31) warp_tot[w] = inc;
  __syncthreads();
  int before = 0;
  total = 0;
#pragma unroll
  for (int k = 0; k < NWU; ++k) {
    const int x = warp_tot[k];
    if (k < w) before += x;
    total += x;
  }
  return before + inc - v;
}

// ---- thread-block clusters (sm_90+) ------------------------------------------------------------------------------
__device__ __forceinline__ void cluster_arrive() {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_sync() { cluster_arrive(); cluster_wait(); }
// Reads a float from the shared memory of CTA `rank` of this cluster (distributed shared memory).
__device__ __forceinline__ float cluster_load(const float* smem_ptr, u32 rank) {
#if __CUDA_ARCH__ >= 900
  u32 local = static_cast<u32>(__cvta_generic_to_shared(smem_ptr)), remote;
  float v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
  return v;
#else
  return *smem_ptr;
#endif
}

// ---- async copies (sm_80+) ---------------------------------------------------------------------------------------
// 16 bytes global → shared; `valid` false zero-fills the destination instead of reading.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, bool valid) {
  const u32 dst = static_cast<u32>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(gmem_src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most `PENDING` of this thread's committed cp.async groups are still in flight.
template <int PENDING>
__device__ __forceinline__ void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;" :: "n"(PENDING) : "memory");
}
// The same with a run-time count (0 … 7; larger counts wait for all).
__device__ __forceinline__ void cp_async_wait_group_dyn(int pending) {
  switch (pending) {
    case 0: cp_async_wait_group<0>(); break;
    case 1: cp_async_wait_group<1>(); break;
    case 2: cp_async_wait_group<2>(); break;
    case 3: cp_async_wait_group<3>(); break;
    case 4: cp_async_wait_group<4>(); break;
    case 5: cp_async_wait_group<5>(); break;
    case 6: cp_async_wait_group<6>(); break;
    case 7: cp_async_wait_group<7>(); break;
    default: cp_async_wait_group<0>();
  }
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_all;" ::: "memory");
}

}  // namespace kiln
