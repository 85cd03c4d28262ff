// topk_cefill_probe.cu — session 17 (lead): can the −1 fill of row_id_map leave the SMs? (plain CUDA runtime + driver
// API; build: nvcc -O2 -arch=sm_90a -o topk_cefill_probe topk_cefill_probe.cu -lcuda). The bench's method (L2 flushed by
// reading 256 MB before each call, CUDA events, median of 25 after 5 warm-up calls).
//
// Why: session 16 found that every request a route CTA issues after its counts waits behind its own −1 fill (8.4 MB of
// row_id_map), and that the top-k op's data movement alone takes ≈ 12.65 µs of events (topk_bytes_probe). If the fill
// runs on a copy engine (a memset on a side stream, forked from and joined to the caller's stream) while the kernel
// reads, selects and writes the other outputs, the kernel's post-arrival requests have no fill in front of them; the
// kernel waits for a flag (written by the side stream after the memset) only before its puts. Questions: (1) does a
// memset run on a copy engine, concurrently with a kernel that holds every SM? (2) how long does 8.4 MB take there?
// (3) the top-k data-movement skeleton with the fill on the side stream against the fill in the kernel.
#include <cuda.h>
#include "probe_timing.cuh"

constexpr int T = 8192, E = 256, TPC = 32;
enum { kRead = 1, kWriteProbs = 2, kWriteMap = 4, kFill = 8, kBarrier = 16, kCountLoad = 32, kPuts = 64, kFlagWait = 128 };

#define CU(x) do { CUresult r = (x); if (r != CUDA_SUCCESS) { printf("%s: %d\n", #x, (int)r); exit(1);} } while (0)

// topk_bytes_probe's kernel with the fill and the puts separable, and a wait for the side stream's flag before the puts.
__global__ void __launch_bounds__(512) skel_kernel(const float* logits, float* probs, uint8_t* map, int* ids,
                                                   unsigned* arrive, const int* counts, const unsigned* flag,
                                                   unsigned epoch, int mode, int* sink) {
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

// Holds every SM: one CTA a SM with all of its shared memory, spinning for `ns`.
__global__ void hold_kernel(long long ns) {
  extern __shared__ int s[];
  const long long t0 = clock64();
  if (threadIdx.x == 0) s[0] = 0;
  while (clock64() - t0 < ns * 2) {}
}

int main() {
  float *logits, *probs; uint8_t* map; int *ids, *counts; unsigned *arrive, *flag;
  const size_t idsBytes = (size_t)T * E * 4;
  CK(cudaMalloc(&logits, (size_t)T * E * 4)); CK(cudaMemset(logits, 1, (size_t)T * E * 4));
  CK(cudaMalloc(&probs, (size_t)T * E * 4)); CK(cudaMalloc(&map, (size_t)T * E)); CK(cudaMalloc(&ids, idsBytes));
  CK(cudaMalloc(&counts, 4096)); CK(cudaMemset(counts, 0, 4096));
  CK(cudaMalloc(&arrive, 4)); CK(cudaMalloc(&flag, 4)); CK(cudaMemset(flag, 0, 4));
  cudaStream_t side; CK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  cudaEvent_t fork, join; CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming)); CK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  ProbeTimer timer;
  const int grid = T / TPC;
  unsigned epoch = 0;
  printf("empty kernel %.2f us\n", timer.empty_us());

  // (1) / (2): the memset alone, by the runtime (bytes) and the driver (32-bit words), on the timed stream.
  printf("%-64s %6.2f us\n", "cudaMemsetAsync 0xff, 8.4 MB", timer.median_us([&] { CK(cudaMemsetAsync(ids, 0xff, idsBytes)); }));
  printf("%-64s %6.2f us\n", "cuMemsetD32Async -1, 8.4 MB",
         timer.median_us([&] { CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, 0)); }));
  // Is it a copy engine? Every SM held for 40 µs on the timed stream, the memset on the side stream (forked after the
  // flush): the join's time ≈ 40 if they overlap, ≈ 40 + memset if the memset needs an SM.
  int dev; CK(cudaGetDevice(&dev)); int smem; CK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  int sms; CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CK(cudaFuncSetAttribute(hold_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  auto hold = [&] { hold_kernel<<<sms, 1024, smem>>>(40000); };
  printf("%-64s %6.2f us\n", "hold every SM 40 us", timer.median_us(hold));
  printf("%-64s %6.2f us\n", "hold 40 us ‖ side-stream memset 8.4 MB, joined", timer.median_us([&] {
    CK(cudaEventRecord(fork, 0)); CK(cudaStreamWaitEvent(side, fork));
    CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, side));
    hold();
    CK(cudaEventRecord(join, side)); CK(cudaStreamWaitEvent(0, join));
  }));
  printf("%-64s %6.2f us\n", "hold 40 us, then memset 8.4 MB (same stream)", timer.median_us([&] {
    hold(); CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, 0));
  }));

  // (3) The skeleton.
  auto zero = [&] { CK(cudaMemsetAsync(arrive, 0, 4)); };
  const int base = kRead | kWriteProbs | kWriteMap | kBarrier | kCountLoad | kPuts;
  auto skel = [&](int mode) {
    skel_kernel<<<grid, 512>>>(logits, probs, map, ids, arrive, counts, flag, epoch, mode, timer.sink());
  };
  for (int rep = 0; rep < 2; ++rep) {
    printf("%-64s %6.2f us\n", "in-kernel fill: read, probs + map, arrival, fill, spin, row, puts",
           timer.median_us([&] { skel(base | kFill); }, zero));
    printf("%-64s %6.2f us\n", "no fill at all (lower bound)", timer.median_us([&] { skel(base); }, zero));
    printf("%-64s %6.2f us\n", "side-stream memset + flag, kernel waits before its puts, joined", timer.median_us([&] {
      ++epoch;
      CK(cudaEventRecord(fork, 0)); CK(cudaStreamWaitEvent(side, fork));
      CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, side));
      CU(cuStreamWriteValue32(side, (CUdeviceptr)flag, epoch, CU_STREAM_WRITE_VALUE_DEFAULT));
      skel(base | kFlagWait);
      CK(cudaEventRecord(join, side)); CK(cudaStreamWaitEvent(0, join));
    }, zero));
    printf("%-64s %6.2f us\n", "  the same, memset issued after the kernel's launch", timer.median_us([&] {
      ++epoch;
      CK(cudaEventRecord(fork, 0)); CK(cudaStreamWaitEvent(side, fork));
      skel(base | kFlagWait);
      CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, side));
      CU(cuStreamWriteValue32(side, (CUdeviceptr)flag, epoch, CU_STREAM_WRITE_VALUE_DEFAULT));
      CK(cudaEventRecord(join, side)); CK(cudaStreamWaitEvent(0, join));
    }, zero));
    printf("%-64s %6.2f us\n", "  the same, no join (its cost)", timer.median_us([&] {
      ++epoch;
      CK(cudaEventRecord(fork, 0)); CK(cudaStreamWaitEvent(side, fork));
      CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, side));
      CU(cuStreamWriteValue32(side, (CUdeviceptr)flag, epoch, CU_STREAM_WRITE_VALUE_DEFAULT));
      skel(base | kFlagWait);
    }, [&] { zero(); CK(cudaStreamSynchronize(side)); }));
    printf("%-64s %6.2f us\n", "memset on the timed stream, then the kernel (no fill)", timer.median_us([&] {
      CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, 0)); skel(base);
    }, zero));
  }
  // Check: the map rows are −1 except the puts after the side-stream variant.
  std::vector<int> h((size_t)T * E);
  ++epoch;
  zero();
  CK(cudaMemset(ids, 0, idsBytes));
  CK(cudaEventRecord(fork, 0)); CK(cudaStreamWaitEvent(side, fork));
  CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, side));
  CU(cuStreamWriteValue32(side, (CUdeviceptr)flag, epoch, CU_STREAM_WRITE_VALUE_DEFAULT));
  skel(base | kFlagWait);
  CK(cudaEventRecord(join, side)); CK(cudaStreamWaitEvent(0, join));
  CK(cudaMemcpy(h.data(), ids, idsBytes, cudaMemcpyDeviceToHost));
  size_t neg = 0, put = 0, other = 0;
  for (int v : h) { if (v == -1) ++neg; else if (v >= 0 && v < 512) ++put; else ++other; }
  printf("check: %zu entries -1, %zu puts, %zu other (expect %d puts, 0 other)\n", neg, put, other, T * 8);
  CK(cudaDeviceSynchronize());
  return 0;
}
