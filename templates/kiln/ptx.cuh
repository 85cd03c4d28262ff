// kiln/ptx.cuh — small PTX wrappers shared by the families: shared-memory addresses and loads, packed 16-bit
// conversions, power-of-two scales, fast exp2 / reciprocal, warp max, cluster rank, register reallocation.
//
// Every wrapper is one instruction (or a fixed pair) with the constraints its callers had when each family defined
// its own copy, so replacing a copy with it changes no generated instruction (checked by SASS comparison of every
// specialization the presets enumerate and of their search spaces). asm without `volatile` stays without it: those
// are pure functions the compiler may move or merge; loads from shared memory are volatile (a second read must
// re-read).
#pragma once
#include "kiln/common.cuh"

namespace kiln {

// ---- shared memory --------------------------------------------------------------------------------------------------
// The 32-bit shared-window address of a generic pointer into this CTA's shared memory.
__device__ __forceinline__ u32 smem_u32(const void* p) { return static_cast<u32>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ float lds_f32(u32 addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr));
  return v;
}
__device__ __forceinline__ u32 lds_u32(u32 addr) {
  u32 v;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(addr));
  return v;
}
__device__ __forceinline__ void sts_u32(u32 addr, u32 v) {
  asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ Vec16 lds16(u32 addr) {
  Vec16 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3]) : "r"(addr));
  return v;
}
__device__ __forceinline__ void sts16(u32 addr, const Vec16& v) {
  asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};" ::"r"(addr), "r"(v.w[0]), "r"(v.w[1]), "r"(v.w[2]), "r"(v.w[3])
               : "memory");
}

// ---- packed 16-bit conversions (round to nearest even) ---------------------------------------------------------------
// One 32-bit word of two values, `lo` in the lower half (element 2i), `hi` in the upper half (cvt's first source).
__device__ __forceinline__ u32 cvt_bf16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ u32 cvt_f16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
// The same for a 16-bit element type T (bf16 or f16).
template <typename T> __device__ __forceinline__ u32 pack2(float lo, float hi);
template <> __device__ __forceinline__ u32 pack2<bf16>(float lo, float hi) { return cvt_bf16x2(lo, hi); }
template <> __device__ __forceinline__ u32 pack2<f16>(float lo, float hi) { return cvt_f16x2(lo, hi); }

// ---- scales and fast math -------------------------------------------------------------------------------------------
// 2^n for n in [−126, 127], exact (built from the exponent bits).
__device__ __forceinline__ float pow2i(int n) { return __uint_as_float(static_cast<u32>(n + 127) << 23); }

// MUFU ex2 / rcp, approximate, with flush to zero (two instructions each where the non-ftz forms need more).
__device__ __forceinline__ float ex2_ftz(float v) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
__device__ __forceinline__ float rcp_ftz(float v) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}

// ---- warp -----------------------------------------------------------------------------------------------------------
// Max of v over the full warp (sm_80+; every lane must call it).
__device__ __forceinline__ u32 redux_max(u32 v) {
  u32 r;
  asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(v));
  return r;
}
// Per-halfword unsigned max (sm_90).
__device__ __forceinline__ u32 max_u16x2(u32 a, u32 b) {
  u32 r;
  asm("max.u16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
// a·b on two bf16 lanes, each rounded to nearest even.
__device__ __forceinline__ u32 mul_bf16x2(u32 a, u32 b) {
  u32 r;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// ---- named barriers -------------------------------------------------------------------------------------------------
// Waits until `threads` threads (a multiple of 32, whole warps) of the CTA have arrived at barrier `id` (1–15: 0 is
// __syncthreads'); orders their shared-memory accesses around it.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// ---- clusters and warp specialization (sm_90) -------------------------------------------------------------------------
// This CTA's rank in its cluster (0 before sm_90).
__device__ __forceinline__ u32 cluster_ctarank() {
#if __CUDA_ARCH__ >= 900
  u32 r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
#else
  return 0;
#endif
}
// Raises / lowers this warpgroup's register budget to N per thread (every warp of the warpgroup calls it).
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
}

// ---- timers ---------------------------------------------------------------------------------------------------------
// The global nanosecond timer (comparable across SMs).
__device__ __forceinline__ u64 globaltimer_ns() {
  u64 t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

}  // namespace kiln
