// probe_timing.cuh — the bench's timing method for the standalone probes in this folder (plain CUDA runtime): L2
// flushed by reading 256 MB before each call, CUDA events around the call, the median of 25 after 5 warm-up calls.
// `kiln bench` does the same through runtime/bench.cpp; the probes measure things outside kiln, so they carry their own.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); exit(1);} } while (0)

// Reads the flush buffer, then `nq` 16-byte pieces at q (0: none), so that those lines sit clean in L2 at the call.
__global__ void probe_flush_kernel(const int4* p, size_t n, const int4* q, size_t nq, int* sink) {
  int4 a = make_int4(0, 0, 0, 0);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) { int4 v = p[i]; a.x ^= v.x; }
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < nq; i += (size_t)gridDim.x * blockDim.x) { int4 v = q[i]; a.x ^= v.x; }
  if (a.x == 0x7fffffff) sink[0] = a.x;
}
__global__ void probe_empty_kernel() {}

class ProbeTimer {
 public:
  ProbeTimer() {
    CK(cudaMalloc(&flush_, kFlushBytes)); CK(cudaMemset(flush_, 2, kFlushBytes));
    CK(cudaMalloc(&sink_, 64));
    CK(cudaEventCreate(&e0_)); CK(cudaEventCreate(&e1_));
  }
  // Median µs of launch(); before() (untimed) runs ahead of each call's flush; resident: bytes at `warm` read after
  // the flush (clean lines in L2 at the call).
  template <class Launch, class Before>
  float median_us(Launch launch, Before before, const void* warm = nullptr, size_t resident = 0) {
    std::vector<float> v;
    for (int it = 0; it < 30; ++it) {
      before();
      probe_flush_kernel<<<264, 1024>>>(flush_, kFlushBytes / 16, static_cast<const int4*>(warm), resident / 16, sink_);
      CK(cudaEventRecord(e0_)); launch(); CK(cudaEventRecord(e1_)); CK(cudaEventSynchronize(e1_));
      float ms; CK(cudaEventElapsedTime(&ms, e0_, e1_)); if (it >= 5) v.push_back(ms * 1000);
    }
    CK(cudaGetLastError());
    std::sort(v.begin(), v.end()); return v[v.size() / 2];
  }
  template <class Launch>
  float median_us(Launch launch) { return median_us(launch, [] {}); }
  float empty_us() { return median_us([] { probe_empty_kernel<<<1, 32>>>(); }); }
  int* sink() const { return sink_; }

 private:
  static constexpr size_t kFlushBytes = 256u << 20;
  int4* flush_ = nullptr;
  int* sink_ = nullptr;
  cudaEvent_t e0_, e1_;
};
