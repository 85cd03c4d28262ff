// stream_probe.cu — session 11 (lead): what the bench's event method and the H100's memory system allow, measured
// outside kiln (plain CUDA runtime; build: nvcc -O2 -arch=sm_90a -o stream_probe stream_probe.cu).
// Every time is the bench's method: L2 flushed by reading 256 MB before each call, CUDA events, median of 25.
//  * an empty kernel (the fixed cost of the method), a copy, plain vectorized reads of 8 / 16 / 32 MB;
//  * TMA (2-D tensor map) streaming of x [8192 × 2048] bf16 by 128 CTAs, each a band of rows in column chunks, the
//    way the router forward reads x: chunk width, ring depth, and the extra shared-memory landing of the forward
//    (the partner's rows of a multicast pair, and a w box from an L2-resident 1 MB buffer).
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include "probe_timing.cuh"

__device__ __forceinline__ uint32_t sa(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// rows_per_cta rows, row stride 4096 B, K bytes a row; chunk CW bytes; S stages.
__global__ void stream_kernel(const __grid_constant__ CUtensorMap tm, const __grid_constant__ CUtensorMap tw, int mode, const char* x, int rows_per_cta, int row_bytes, int CW, int S, int stagger, unsigned long long* sink) {
  extern __shared__ __align__(128) char smem[];
  __shared__ __align__(8) uint64_t full[16], empty[16];
  const int nchunks = row_bytes / CW;
  const char* base = x + (size_t)blockIdx.x * rows_per_cta * row_bytes;
  const int stage_bytes = rows_per_cta * CW;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      asm volatile("mbarrier.init.shared.b64 [%0], 1;" :: "r"(sa(&full[s])));
      asm volatile("mbarrier.init.shared.b64 [%0], 1;" :: "r"(sa(&empty[s])));
    }
    asm volatile("fence.mbarrier_init.release.cluster;");
  }
  __syncthreads();
  const int start = stagger ? (int)((blockIdx.x * 7u) % nchunks) : 0;
  if (threadIdx.x < 32) {  // producer warp
    for (int i = 0; i < nchunks; ++i) {
      const int s = i % S, ph = (i / S) & 1;
      if (i >= S) {
        if (threadIdx.x == 0) {
          uint32_t done = 0;
          while (!done) asm volatile("{.reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0,1,0,p;}" : "=r"(done) : "r"(sa(&empty[s])), "r"(ph ^ 1));
        }
        __syncwarp();
      }
      const int c = (i + start) % nchunks;
      if (threadIdx.x == 0)
        asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" :: "r"(sa(&full[s])), "r"(stage_bytes * (1 + (mode & 1)) + ((mode & 2) ? 16384 : 0)));
      __syncwarp();
      if (threadIdx.x == 0) {
        char* dst = smem + (size_t)s * stage_bytes * 5;
        const int cx = c * (CW / 2), cy = blockIdx.x * rows_per_cta;
        asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
                     :: "r"(sa(dst)), "l"(&tm), "r"(cx), "r"(cy), "r"(sa(&full[s])) : "memory");
        if (mode & 1) {  // the partner's rows too (multicast landing)
          const int py = (blockIdx.x ^ 1) * rows_per_cta;
          asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
                       :: "r"(sa(dst + stage_bytes * 2)), "l"(&tm), "r"(cx), "r"(py), "r"(sa(&full[s])) : "memory");
        }
        if (mode & 2) {  // a w box: 128 rows x 128 B of the CTA's expert half
          asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
                       :: "r"(sa(dst + stage_bytes * 3)), "l"(&tw), "r"(cx), "r"((int)(blockIdx.x & 1) * 128), "r"(sa(&full[s])) : "memory");
        }
      }
    }
  } else if (threadIdx.x < 64) {  // consumer warp
    unsigned long long acc = 0;
    for (int i = 0; i < nchunks; ++i) {
      const int s = i % S, ph = (i / S) & 1;
      uint32_t done = 0;
      while (!done) asm volatile("{.reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0,1,0,p;}" : "=r"(done) : "r"(sa(&full[s])), "r"(ph));
      acc += *(const unsigned*)(smem + (size_t)s * stage_bytes * 5 + (threadIdx.x - 32) * 4);
      __syncwarp();
      if (threadIdx.x == 32) asm volatile("mbarrier.arrive.shared.b64 _, [%0];" :: "r"(sa(&empty[s])));
    }
    if (acc == 0x12345) sink[0] = acc;
  }
}

__global__ void read_kernel(const int4* a, size_t n, int* sink) {
  int acc = 0;
  #pragma unroll 4
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) { int4 v = __ldcs(a + i); acc ^= v.x ^ v.w; }
  if (acc == 0x7fffffff) sink[0] = acc;
}
__global__ void copy_kernel(const int4* a, int4* b, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) b[i] = a[i];
}

int main() {
  const int T = 8192, K = 2048, row_bytes = K * 2;
  char* x; CK(cudaMalloc(&x, (size_t)T * row_bytes)); CK(cudaMemset(x, 1, (size_t)T * row_bytes));
  int4* cb; CK(cudaMalloc(&cb, (size_t)T * row_bytes));
  unsigned long long* sink; CK(cudaMalloc(&sink, 64));
  ProbeTimer timer;
  CK(cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
  const double bytes = (double)T * row_bytes;
  PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr; cudaDriverEntryPointQueryResult q;
  CK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", (void**)&encode, cudaEnableDefault, &q));
  float tc = timer.median_us([&] { copy_kernel<<<132 * 4, 512>>>((const int4*)x, cb, (size_t)T * row_bytes / 16); });
  printf("copy %.2f us  %.0f GB/s (read+write)\n", tc, 2 * bytes / tc / 1e3);
  for (int grid : {132 * 2, 132 * 4, 132 * 8}) for (size_t mb : {8, 16, 33}) {
    size_t n = std::min((size_t)T * row_bytes, mb << 20) / 16;
    float t = timer.median_us([&] { read_kernel<<<grid, 512>>>((const int4*)x, n, timer.sink()); });
    printf("read grid %d %zu MB: %.2f us %.0f GB/s\n", grid, n * 16 >> 20, t, n * 16.0 / t / 1e3);
  }
  printf("empty %.2f us\n", timer.empty_us());
  char* wbuf; CK(cudaMalloc(&wbuf, 256 * row_bytes)); CK(cudaMemset(wbuf, 3, 256 * row_bytes));
  CUtensorMap tw; { cuuint64_t dims[2] = {(cuuint64_t)K, 256}; cuuint64_t strides[1] = {(cuuint64_t)row_bytes};
    cuuint32_t box[2] = {64, 128}; cuuint32_t es[2] = {1, 1};
    encode(&tw, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, wbuf, dims, strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
           CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE); }
  for (int mode : {0, 1, 2, 3}) for (int S : {3, 5}) {
    const int ctas = 128, rpc = 64, CW = 128;
    CUtensorMap tm; cuuint64_t dims[2] = {(cuuint64_t)K, (cuuint64_t)T}; cuuint64_t strides[1] = {(cuuint64_t)row_bytes};
    cuuint32_t box[2] = {64, (cuuint32_t)rpc}; cuuint32_t es[2] = {1, 1};
    encode(&tm, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, x, dims, strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
           CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    size_t sm = (size_t)S * rpc * CW * 5;
    float t = timer.median_us([&] { stream_kernel<<<ctas, 64, sm>>>(tm, tw, mode, x, rpc, row_bytes, CW, S, 0, sink); });
    CK(cudaGetLastError());
    printf("mode %d (%s%s) S %d: %.2f us  landing/SM %.0f KB\n", mode, mode & 1 ? "+partner x " : "", mode & 2 ? "+w" : "", S, t,
           (rpc * 4096.0 * (1 + (mode & 1)) + ((mode & 2) ? 128 * 4096.0 : 0)) / 1024);
  }
  CK(cudaDeviceSynchronize());
  return 0;
}
