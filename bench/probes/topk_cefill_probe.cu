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
#include "topk_skeleton.cuh"

#define CU(x) do { CUresult r = (x); if (r != CUDA_SUCCESS) { printf("%s: %d\n", #x, (int)r); exit(1);} } while (0)

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
  auto fork_side = [&] { CK(cudaEventRecord(fork, 0)); CK(cudaStreamWaitEvent(side, fork)); };  // side after timed
  auto join_side = [&] { CK(cudaEventRecord(join, side)); CK(cudaStreamWaitEvent(0, join)); };  // timed after side
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
    fork_side();
    CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, side));
    hold();
    join_side();
  }));
  printf("%-64s %6.2f us\n", "hold 40 us, then memset 8.4 MB (same stream)", timer.median_us([&] {
    hold(); CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, 0));
  }));

  // (3) The skeleton.
  auto zero = [&] { CK(cudaMemsetAsync(arrive, 0, 4)); };
  const int base = kRead | kWriteProbs | kWriteMap | kBarrier | kCountLoad | kPuts;
  auto skel = [&](int mode) {
    topk_skeleton_kernel<<<grid, 512>>>(logits, probs, map, ids, arrive, counts, flag, epoch, mode, timer.sink());
  };
  // The side-stream variant: fork after what the timed stream ran, the memset and then the flag on the side stream, the
  // kernel waiting for the flag before its puts (launched before or after the memset is queued), and the join.
  auto side_fill = [&] {
    CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, side));
    CU(cuStreamWriteValue32(side, (CUdeviceptr)flag, epoch, CU_STREAM_WRITE_VALUE_DEFAULT));
  };
  auto side_variant = [&](bool kernel_first, bool joined) {
    ++epoch;
    fork_side();
    if (kernel_first) skel(base | kFlagWait);
    side_fill();
    if (!kernel_first) skel(base | kFlagWait);
    if (joined) join_side();
  };
  for (int rep = 0; rep < 2; ++rep) {
    printf("%-64s %6.2f us\n", "in-kernel fill: read, probs + map, arrival, fill, spin, row, puts",
           timer.median_us([&] { skel(base | kFill); }, zero));
    printf("%-64s %6.2f us\n", "no fill at all (lower bound)", timer.median_us([&] { skel(base); }, zero));
    printf("%-64s %6.2f us\n", "side-stream memset + flag, kernel waits before its puts, joined",
           timer.median_us([&] { side_variant(false, true); }, zero));
    printf("%-64s %6.2f us\n", "  the same, memset issued after the kernel's launch",
           timer.median_us([&] { side_variant(true, true); }, zero));
    printf("%-64s %6.2f us\n", "  the same, no join (its cost)",
           timer.median_us([&] { side_variant(false, false); }, [&] { zero(); CK(cudaStreamSynchronize(side)); }));
    printf("%-64s %6.2f us\n", "memset on the timed stream, then the kernel (no fill)", timer.median_us([&] {
      CU(cuMemsetD32Async((CUdeviceptr)ids, 0xffffffffu, idsBytes / 4, 0)); skel(base);
    }, zero));
  }
  // Check: the map rows are −1 except the puts after the side-stream variant.
  std::vector<int> h((size_t)T * E);
  zero();
  CK(cudaMemset(ids, 0, idsBytes));
  side_variant(false, true);
  CK(cudaMemcpy(h.data(), ids, idsBytes, cudaMemcpyDeviceToHost));
  size_t neg = 0, put = 0, other = 0;
  for (int v : h) { if (v == -1) ++neg; else if (v >= 0 && v < 512) ++put; else ++other; }
  printf("check: %zu entries -1, %zu puts, %zu other (expect %d puts, 0 other)\n", neg, put, other, T * 8);
  CK(cudaDeviceSynchronize());
  return 0;
}
