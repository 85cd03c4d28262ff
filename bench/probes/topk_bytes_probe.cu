// topk_bytes_probe.cu — session 16 (lead): the data movement of the top-k + map op alone, measured outside kiln (plain
// CUDA runtime; build: nvcc -O2 -arch=sm_90a -o topk_bytes_probe topk_bytes_probe.cu). The bench's method: L2 flushed by
// reading 256 MB before each call, CUDA events, median of 25 after 5 warm-up calls.
//
// Why: issue 6 asks ≤ 15 µs for top-k routing + the padded map at T = 8192, E = 256 (logits fp32 [T, E] in; probs fp32
// [T, E], routing map bool [T, E], row_id_map int32 [T, E] out). How long do those bytes alone take, shaped the way the
// route kernel moves them (256 CTAs of 32 tokens, 2 a SM; each CTA reads its 32 logits rows, then writes its rows of the
// three outputs), with no selection, no grid-wide barrier and no tail? Cases: reads only; writes only; reads then
// writes (each CTA writes after its own reads); and the same with a grid-wide barrier (an arrival counter and a spin,
// as the route kernel's) between the reads and the row_id_map writes, plus one 1 KB count-row load per CTA after it.
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include "probe_timing.cuh"

constexpr int T = 8192, E = 256, TPC = 32;  // tokens a CTA
enum { kRead = 1, kWriteProbs = 2, kWriteMap = 4, kWriteIds = 8, kBarrier = 16, kCountLoad = 32 };

// 512 threads; a CTA's rows are contiguous: logits / probs / ids rows of E·4 = 1 KB, map rows of E bytes.
__global__ void __launch_bounds__(512) topk_bytes_kernel(const float* logits, float* probs, uint8_t* map, int* ids,
                                                         unsigned* arrive, const int* counts, int mode, int* sink) {
  const int t0 = blockIdx.x * TPC;
  const int tid = threadIdx.x;
  int acc = 0;
  if (mode & kRead) {  // 32 rows × 1 KB = 2048 16-byte pieces: 4 a thread, all issued before any is used
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
  if (mode & kWriteMap) {  // 32 rows × 256 B = 512 pieces: one a thread
    reinterpret_cast<int4*>(map + static_cast<size_t>(t0) * E)[tid] = make_int4(acc & 1, 0, 0, 0);
  }
  // The route kernel's order with the map: counts, a CTA barrier, thread 0's release arrival; the −1 rows of row_id_map
  // while it waits; its acquire spin; the bases' count rows; the routed entries written over the −1 rows.
  auto fill = [&] {
    int4* dst = reinterpret_cast<int4*>(ids + static_cast<size_t>(t0) * E);
#pragma unroll
    for (int i = 0; i < 4; ++i) dst[tid + 512 * i] = make_int4(-1, -1, -1, acc | -1);
  };
  if (mode & kBarrier) {
    __syncthreads();
    if (tid == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(arrive) : "memory");
    if (mode & kWriteIds) fill();
    if (tid == 0) {
      unsigned n;
      do asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(n) : "l"(arrive) : "memory");
      while (n < gridDim.x);
    }
    __syncthreads();
    if (mode & kCountLoad) {  // one 1 KB row a CTA (an L2 round trip), as the bases' count rows
      if (tid < 64) acc ^= reinterpret_cast<const int4*>(counts)[tid].x;
      __syncthreads();
    }
    if ((mode & kWriteIds) && tid < TPC * 8)  // the puts: 8 routed entries a token
      ids[static_cast<size_t>(t0 + tid / 8) * E + (tid % 8) * 32 + (acc & 7)] = tid;
  } else if (mode & kWriteIds) {
    fill();
  }
  if (acc == 0x7fffffff) sink[0] = acc;
}


int main() {
  float *logits, *probs; uint8_t* map; int *ids, *counts; unsigned* arrive;
  CK(cudaMalloc(&logits, (size_t)T * E * 4)); CK(cudaMemset(logits, 1, (size_t)T * E * 4));
  CK(cudaMalloc(&probs, (size_t)T * E * 4)); CK(cudaMalloc(&map, (size_t)T * E)); CK(cudaMalloc(&ids, (size_t)T * E * 4));
  CK(cudaMalloc(&counts, 4096)); CK(cudaMemset(counts, 0, 4096));
  CK(cudaMalloc(&arrive, 4));
  ProbeTimer timer;
  const int grid = T / TPC;  // 256 CTAs of 512 threads: 2 a SM, as the route kernel
  printf("empty kernel %.2f us\n", timer.empty_us());
  const int W = kWriteProbs | kWriteMap | kWriteIds;
  struct Case { const char* name; int mode; } cases[] = {
      {"read logits (8.4 MB)", kRead},
      {"write probs + map + ids (18.9 MB)", W},
      {"write probs + map (10.5 MB)", kWriteProbs | kWriteMap},
      {"read, then write probs + map + ids", kRead | W},
      {"read, then write probs + map (no map output)", kRead | kWriteProbs | kWriteMap},
      {"read, probs + map, arrival, -1 fill, spin, puts", kRead | W | kBarrier},
      {"  + one count-row load before the puts", kRead | W | kBarrier | kCountLoad},
      {"read, probs + map, arrival, spin, count row (no ids)", kRead | kWriteProbs | kWriteMap | kBarrier | kCountLoad},
      {"read, arrival, spin only", kRead | kBarrier},
  };
  for (const Case& c : cases) {
    const float t = timer.median_us([&] { topk_bytes_kernel<<<grid, 512>>>(logits, probs, map, ids, arrive, counts, c.mode, timer.sink()); },
                                    [&] { CK(cudaMemsetAsync(arrive, 0, 4)); });
    printf("%-52s %6.2f us\n", c.name, t);
  }
  CK(cudaDeviceSynchronize());
  return 0;
}
