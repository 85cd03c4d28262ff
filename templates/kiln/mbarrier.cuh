// kiln/mbarrier.cuh — Hopper (sm_90) asynchronous-copy plumbing shared by the families: mbarriers (init, arrive,
// arrive with expected transaction bytes, parity wait), the proxy fences, TMA bulk copies (1-D cp.async.bulk, both
// directions) and tensor-map copies (2-D cp.async.bulk.tensor, multicast over a cluster), tensor-map prefetch.
//
// Barriers and shared-memory operands are addressed either by their 32-bit shared-window address (ring code keeps
// its offsets in integers) or by a pointer into this CTA's shared memory. Every function compiles to nothing before
// sm_90 (the callers' sm_90 paths are the only ones that reach them).
#pragma once
#include "kiln/common.cuh"
#include "kiln/ptx.cuh"

namespace kiln {

// ---- mbarriers ----------------------------------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
#if __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
#endif
}
// Makes the initialized mbarriers visible to the other threads of the cluster (and to peers' arrivals): issue after
// the inits, before the CTA (cluster) barrier that publishes them.
__device__ __forceinline__ void fence_mbar_init() {
#if __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
// Orders this thread's earlier generic-proxy shared-memory accesses before its later async-proxy ones (TMA, bulk
// copies, wgmma operands): a buffer just written (or read) by threads may then be read (or refilled) by the copy
// engine once a barrier has joined the threads.
__device__ __forceinline__ void fence_proxy_async() {
#if __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
// One arrival on `bar` that also expects `bytes` of transactions (the copies that complete on it count them down).
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
#if __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
#if __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
#endif
}
// Arrives on the barrier at the same shared offset in CTA `rank` of this cluster. Default semantics (release at CTA
// scope), as CUTLASS's ClusterBarrier: what it orders is this warpgroup's completed wgmma reads of the stage against
// the peer's next TMA write into it. (.release.cluster is a cluster-scope fence per arrive: the run of 03:40 measured
// router GEMM clusters of 2 / 4 at 1.7× / 2.9× the time of no multicast with it.)
__device__ __forceinline__ void mbar_arrive_cluster(u32 bar, u32 rank) {
#if __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n.reg .b32 remote;\nmapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n" ::"r"(bar),
      "r"(rank)
      : "memory");
#endif
}
// Blocks until the phase of parity `parity` of the barrier has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
#if __CUDA_ARCH__ >= 900
  u32 done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
#endif
}

// The same on pointers into this CTA's shared memory.
__device__ __forceinline__ void mbar_init(u64* bar, u32 count) { mbar_init(smem_u32(bar), count); }
__device__ __forceinline__ void mbar_arrive_expect_tx(u64* bar, u32 bytes) { mbar_arrive_expect_tx(smem_u32(bar), bytes); }
__device__ __forceinline__ void mbar_arrive(u64* bar) { mbar_arrive(smem_u32(bar)); }
__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) { mbar_wait(smem_u32(bar), parity); }

// ---- 1-D bulk copies ------------------------------------------------------------------------------------------------
// `bytes` (a multiple of 16; both addresses 16-byte aligned) global → shared, completing on `bar` (armed by an
// mbar_arrive_expect_tx that counts them).
__device__ __forceinline__ void bulk_load(void* dst, const void* src, u32 bytes, u64* bar) {
#if __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
#endif
}
// The same for a source read once: it is evicted from L2 first.
__device__ __forceinline__ void bulk_load_evict_first(void* dst, const void* src, u32 bytes, u64* bar) {
#if __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n .reg .b64 pol;\n createpolicy.fractional.L2::evict_first.b64 pol, 1.0;\n"
      " cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], pol;\n}"
      ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
#endif
}
// `bytes` shared → global (16-byte aligned, a multiple of 16) in this thread's bulk async-group (bulk_commit closes
// the group; the shared source must have been fenced with fence_proxy_async and a barrier).
__device__ __forceinline__ void bulk_store(void* dst, const void* src, u32 bytes) {
#if __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst), "r"(smem_u32(src)), "r"(bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void bulk_commit() {
#if __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
#endif
}
// Until this thread's committed bulk stores have finished reading shared memory.
__device__ __forceinline__ void bulk_wait_read() {
#if __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
#endif
}

// ---- tensor-map (2-D) copies ----------------------------------------------------------------------------------------
// The tensor map is a __grid_constant__ kernel parameter (CUtensorMap); c0 is the inner (contiguous) coordinate.
__device__ __forceinline__ void prefetch_tmap(const void* tmap) {
#if __CUDA_ARCH__ >= 900
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<u64>(tmap)) : "memory");
#endif
}
// Tile global → this CTA's shared memory at `dst`, completing on `bar`; rows / columns outside the tensor are
// zero-filled.
__device__ __forceinline__ void tma_load_2d(u32 dst, const void* tmap, u32 bar, int c0, int c1) {
#if __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
          dst),
      "l"(reinterpret_cast<u64>(tmap)), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
#endif
}
// The same, written to the same shared offset of every CTA in `mask` (cluster ranks), each completing on its own
// barrier at `bar`'s offset.
__device__ __forceinline__ void tma_load_2d_multicast(u32 dst, const void* tmap, u32 bar, int c0, int c1,
                                                      unsigned short mask) {
#if __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%4, %5}], [%2], %3;" ::"r"(dst),
      "l"(reinterpret_cast<u64>(tmap)), "r"(bar), "h"(mask), "r"(c0), "r"(c1)
      : "memory");
#endif
}
// Tile shared → global (rows / columns outside the tensor are not written), in this thread's bulk async-group.
__device__ __forceinline__ void tma_store_2d(const void* tmap, u32 src, int c0, int c1) {
#if __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"(
                   reinterpret_cast<u64>(tmap)),
               "r"(src), "r"(c0), "r"(c1)
               : "memory");
#endif
}

}  // namespace kiln
