// kiln/grid_sync.cuh — a grid-wide barrier for kernels launched cooperatively (LaunchDims::cooperative: the driver
// guarantees that every CTA is resident at once, or fails the launch).
//
// The barrier word is the one the driver provides to a cooperative launch (the grid workspace whose address it
// passes in %envreg1:%envreg2, {u32 size; u32 barrier}), used with the algorithm of the toolkit's
// cooperative_groups grid_group::barrier_arrive/barrier_wait (cooperative_groups/details/{driver_abi,sync}.h): CTA 0
// adds 2^31 − (nCTA − 1), every other CTA adds 1, so the top bit flips exactly when all have arrived and the low
// bits return to their value (the word needs no reset between launches). Written out here instead of including
// <cooperative_groups.h>: kiln's templates include no toolkit header (kiln/common.cuh). Not valid in a kernel
// launched without the cooperative attribute (the workspace address is then null).
#pragma once
#include "kiln/common.cuh"

namespace kiln {

// The same self-resetting count on any zero-initialized word that outlives the launch (one thread a CTA, after the
// CTA barrier that orders the CTA's writes before it): grid_count_arrive adds with release semantics at GPU scope and
// returns the token; grid_count_wait spins (acquire, GPU scope) until the word's top bit differs from the token's,
// i.e. every CTA of the 1-D grid has arrived, and traps after 2^26 polls instead of hanging.
__device__ __forceinline__ u32 grid_count_arrive(u32* word) {
  u32 old;
  const u32 nb = blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1) : 1u;
  asm volatile("atom.add.release.gpu.u32 %0, [%1], %2;" : "=r"(old) : "l"(word), "r"(nb) : "memory");
  return old;
}
__device__ __forceinline__ void grid_count_wait(const u32* word, u32 token) {
  for (u32 it = 0;; ++it) {
    u32 cur;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(cur) : "l"(word) : "memory");
    if ((token ^ cur) & 0x80000000u) break;
    if (it == (1u << 26)) __trap();
  }
}

__device__ __forceinline__ u32* grid_barrier_word() {
  u32 hi, lo;
  asm("mov.u32 %0, %%envreg1;" : "=r"(hi));
  asm("mov.u32 %0, %%envreg2;" : "=r"(lo));
  return reinterpret_cast<u32*>((static_cast<u64>(hi) << 32 | lo) + 4);
}

// Every thread of the CTA calls it once its writes that other CTAs will read are done: a CTA barrier, then thread 0
// arrives with release semantics at GPU scope (covering the CTA's writes ordered before the CTA barrier). Returns
// the token barrier_wait needs (meaningful in thread 0 only).
__device__ __forceinline__ u32 grid_barrier_arrive() {
  __syncthreads();
  u32 old = 0;
  if (threadIdx.x + threadIdx.y + threadIdx.z == 0) {
    const u32 expected = gridDim.x * gridDim.y * gridDim.z;
    const u32 nb = blockIdx.x + blockIdx.y + blockIdx.z == 0 ? 0x80000000u - (expected - 1) : 1u;
    asm volatile("atom.add.release.gpu.u32 %0, [%1], %2;" : "=r"(old) : "l"(grid_barrier_word()), "r"(nb) : "memory");
  }
  return old;
}

// Every thread of the CTA calls it: thread 0 waits (acquire, GPU scope) until every CTA of the grid has arrived,
// then a CTA barrier; afterwards the CTA sees every write the other CTAs made before their arrival. A CTA may arrive
// and never wait (it must not exit before arriving). A wait longer than 2 s (a CTA that can never arrive: a launch
// without the cooperative guarantee on a busy GPU, or a bug) traps, failing the launch, instead of hanging.
__device__ __forceinline__ void grid_barrier_wait(u32 token) {
  if (threadIdx.x + threadIdx.y + threadIdx.z == 0) {
    const u32* word = grid_barrier_word();
    u64 t0 = 0;
    for (u32 n = 0;; ++n) {
      u32 cur;
      asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(cur) : "l"(word) : "memory");
      if ((token ^ cur) & 0x80000000u) break;
      if ((n & 1023u) == 0) {  // the clock now and then: a wait normally ends within microseconds
        u64 t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (n == 0) t0 = t;
        else if (t - t0 > 2000000000ull) __trap();
      }
    }
  }
  __syncthreads();
}

}  // namespace kiln
