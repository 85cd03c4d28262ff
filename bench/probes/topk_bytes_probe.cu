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
#include "topk_skeleton.cuh"

int main() {
  float *logits, *probs; uint8_t* map; int *ids, *counts; unsigned* arrive;
  CK(cudaMalloc(&logits, (size_t)T * E * 4)); CK(cudaMemset(logits, 1, (size_t)T * E * 4));
  CK(cudaMalloc(&probs, (size_t)T * E * 4)); CK(cudaMalloc(&map, (size_t)T * E)); CK(cudaMalloc(&ids, (size_t)T * E * 4));
  CK(cudaMalloc(&counts, 4096)); CK(cudaMemset(counts, 0, 4096));
  CK(cudaMalloc(&arrive, 4));
  ProbeTimer timer;
  const int grid = T / TPC;  // 256 CTAs of 512 threads: 2 a SM, as the route kernel
  printf("empty kernel %.2f us\n", timer.empty_us());
  // row_id_map: the −1 fill, and after the grid-wide arrival (kBarrier) also the puts over it.
  const int W = kWriteProbs | kWriteMap | kFill, P = kPuts;
  struct Case { const char* name; int mode; } cases[] = {
      {"read logits (8.4 MB)", kRead},
      {"write probs + map + ids (18.9 MB)", W},
      {"write probs + map (10.5 MB)", kWriteProbs | kWriteMap},
      {"read, then write probs + map + ids", kRead | W},
      {"read, then write probs + map (no map output)", kRead | kWriteProbs | kWriteMap},
      {"read, probs + map, arrival, -1 fill, spin, puts", kRead | W | P | kBarrier},
      {"  + one count-row load before the puts", kRead | W | P | kBarrier | kCountLoad},
      {"read, probs + map, arrival, spin, count row (no ids)", kRead | kWriteProbs | kWriteMap | kBarrier | kCountLoad},
      {"read, arrival, spin only", kRead | kBarrier},
  };
  for (const Case& c : cases) {
    const float t = timer.median_us([&] { topk_skeleton_kernel<<<grid, 512>>>(logits, probs, map, ids, arrive, counts, nullptr, 0, c.mode, timer.sink()); },
                                    [&] { CK(cudaMemsetAsync(arrive, 0, 4)); });
    printf("%-52s %6.2f us\n", c.name, t);
  }
  CK(cudaDeviceSynchronize());
  return 0;
}
