// topk_skeleton.cuh — the top-k + map op's data movement without its selection, shaped the way the route kernel moves
// it (256 CTAs of 32 tokens and 512 threads, 2 a SM; logits fp32 [T, E] in; probs fp32, routing map u8 and row_id_map
// int32 [T, E] out), for topk_bytes_probe.cu (session 16) and topk_cefill_probe.cu (session 17). `mode` is a set of
// the steps below; with kBarrier the route kernel's order: counts, a CTA barrier, thread 0's release arrival, the −1
// rows of row_id_map (kFill) while it waits, its acquire spin, one count row (kCountLoad), the wait for a side
// stream's flag (kFlagWait: flag == epoch), the routed entries written over the −1 rows (kPuts).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

constexpr int T = 8192, E = 256, TPC = 32;  // tokens, experts, tokens a CTA
enum { kRead = 1, kWriteProbs = 2, kWriteMap = 4, kFill = 8, kBarrier = 16, kCountLoad = 32, kPuts = 64, kFlagWait = 128 };

// A CTA's rows are contiguous: logits / probs / ids rows of E·4 = 1 KB, map rows of E bytes; the 32 logits rows are
// 2048 16-byte pieces, 4 a thread, all issued before any is used.
__global__ void __launch_bounds__(512) topk_skeleton_kernel(const float* logits, float* probs, uint8_t* map,
                                                            int* ids, unsigned* arrive, const int* counts,
                                                            const unsigned* flag, unsigned epoch, int mode,
                                                            int* sink) {
  const int t0 = blockIdx.x * TPC;
  const int tid = threadIdx.x;
  int acc = 0;
  if (mode & kRead) {
    const int4* src = reinterpret_cast<const int4*>(logits + static_cast<size_t>(t0) * E);
    int4 v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = __ldcs(src + tid + 512 * i);
#pragma unroll
    for (int i = 0; i < 4; ++i) acc ^= v[i].x ^ v[i].w;
  }
  __syncthreads();
  if (mode & kWriteProbs) {
    int4* dst = reinterpret_cast<int4*>(probs + static_cast<size_t>(t0) * E);
#pragma unroll
    for (int i = 0; i < 4; ++i) dst[tid + 512 * i] = make_int4(acc, 0, 0, 0);
  }
  if (mode & kWriteMap) reinterpret_cast<int4*>(map + static_cast<size_t>(t0) * E)[tid] = make_int4(acc & 1, 0, 0, 0);
  if (mode & kBarrier) {
    __syncthreads();
    if (tid == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(arrive) : "memory");
  }
  if (mode & kFill) {
    int4* dst = reinterpret_cast<int4*>(ids + static_cast<size_t>(t0) * E);
#pragma unroll
    for (int i = 0; i < 4; ++i) dst[tid + 512 * i] = make_int4(-1, -1, -1, acc | -1);
  }
  if (mode & kBarrier) {
    if (tid == 0) {
      unsigned n;
      do asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(n) : "l"(arrive) : "memory");
      while (n < gridDim.x);
    }
    __syncthreads();
    if (mode & kCountLoad) {
      if (tid < 64) acc ^= reinterpret_cast<const int4*>(counts)[tid].x;
      __syncthreads();
    }
  }
  if (mode & kFlagWait) {  // the side stream's memset is complete (its flag written after it, in stream order)
    if (tid == 0) {
      unsigned f;
      do asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(f) : "l"(flag) : "memory");
      while (f != epoch);
    }
    __syncthreads();
  }
  if ((mode & kPuts) && tid < TPC * 8) ids[static_cast<size_t>(t0 + tid / 8) * E + (tid % 8) * 32 + (acc & 7)] = tid;
  if (acc == 0x7fffffff) sink[0] = acc;
}
