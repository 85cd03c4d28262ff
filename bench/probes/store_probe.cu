// store_probe.cu — session 16 (lead): how fast an H100 absorbs a burst of stores, measured outside kiln (plain CUDA
// runtime; build: nvcc -O2 -arch=sm_90a -o store_probe store_probe.cu -lcuda). Every time is the bench's method: L2
// flushed by reading 256 MB before each call, CUDA events, median of 25 after 5 warm-up calls.
//
// Why: three open targets end in a store burst the notes price at ≈ 2.6 TB/s "into L2" — the router forward's 8.4 MB
// of logits after its last chunk (≈ 3.2 µs, session 7: LSU and TMA stores alike), the top-k's 8 MB −1 fill of
// row_id_map, the router backward's 33.5 MB of dx. Is that rate a property of the memory system, or of how those
// kernels store (128 CTAs, one burst, the accumulator layout's 8-byte pieces)? Cases: store flavour (16-byte stores,
// streaming / no-allocate / evict-first / evict-last hints, the wgmma accumulator pattern, TMA bulk stores), number of
// CTAs, bytes (slope and intercept), destination lines already in L2, and a read-then-store kernel shaped like the
// router forward (x read by 128 CTAs, then the logits stored) against the same stores spread over the reads.
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include "probe_timing.cuh"

__device__ __forceinline__ uint32_t sa(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

enum { kSt16 = 0, kStCs = 1, kStAcc8 = 2, kStTma = 3, kStNoAlloc = 4, kStEvictLast = 5, kStEvictFirst = 6, kStAcc16 = 7 };

__device__ __forceinline__ void st16(char* p, int4 v, int mode, uint64_t pol) {
  switch (mode) {
    case kStCs: __stcs(reinterpret_cast<int4*>(p), v); break;
    case kStNoAlloc:
      asm volatile("st.global.L1::no_allocate.v4.b32 [%0], {%1,%2,%3,%4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
      break;
    case kStEvictLast: case kStEvictFirst:
      asm volatile("st.global.L2::cache_hint.v4.b32 [%0], {%1,%2,%3,%4}, %5;" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "l"(pol) : "memory");
      break;
    default: *reinterpret_cast<int4*>(p) = v;
  }
}

// Each CTA stores `per_cta` bytes (a multiple of 16 KB) at dst + blockIdx.x * per_cta.
//  * 16-byte flavours: warp-contiguous 512-byte pieces, the CTA's 256 threads sweep the block in order.
//  * kStAcc8: the wgmma m64nNk16 fp32 accumulator pattern of a 128-row × 128-column tile (rows of 512 B, the tile's
//    rows at a 1 KB stride as in logits [T, 256]): per warp instruction 8 rows × 32 B, 8-byte pieces.
//  * kStAcc16: the same tile, 16-byte pieces after a quad shuffle (rfwd2's epilogue): per instruction 8 rows × 64 B.
//  * kStTma: 16 KB of zeros in shared memory, bulk copies to global by thread 0, then wait for completion.
__global__ void __launch_bounds__(256) store_kernel(char* dst, size_t per_cta, int mode) {
  extern __shared__ __align__(128) char smem[];
  char* base = dst + (size_t)blockIdx.x * per_cta;  // (the accumulator patterns: a pair of CTAs shares 1 KB rows)
  const int4 v = make_int4(threadIdx.x, blockIdx.x, 1, 2);
  uint64_t pol = 0;
  if (mode == kStEvictLast) asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
  if (mode == kStEvictFirst) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  if (mode == kStTma) {
    for (int i = threadIdx.x; i < 16384 / 16; i += blockDim.x) reinterpret_cast<int4*>(smem)[i] = make_int4(0, 0, 0, 0);
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    if (threadIdx.x == 0) {
      for (size_t off = 0; off < per_cta; off += 16384)
        asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], 16384;" ::"l"(base + off), "r"(sa(smem)) : "memory");
      asm volatile("cp.async.bulk.commit_group;" ::: "memory");
      asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
    }
    return;
  }
  if (mode == kStAcc8 || mode == kStAcc16) {
    // per_cta / 64 KB tiles of 128 rows × 128 fp32 columns; tile r-th row at base + tile*128 KB + row * 1 KB.
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const size_t tiles = per_cta / 65536;
    for (size_t t = 0; t < tiles; ++t) {
      char* tb = dst + (size_t)(blockIdx.x / 2) * 2 * per_cta + t * 131072 + (size_t)(blockIdx.x & 1) * 512;  // the CTA's expert half of a 1 KB row
      // 8 warps: warp w holds rows 16w .. 16w + 15 (two 8-row groups), all 128 columns.
      for (int g = 0; g < 2; ++g) {
        const int row = 16 * warp + 8 * g + lane / 4;
        if (mode == kStAcc8) {
#pragma unroll 4
          for (int j = 0; j < 16; ++j) {  // 16 column blocks of 8 fp32: lane's 2 values at 2 * (lane % 4)
            float2 f = make_float2(float(j), float(row));
            *reinterpret_cast<float2*>(tb + (size_t)row * 1024 + j * 32 + (lane % 4) * 8) = f;
          }
        } else {
#pragma unroll 4
          for (int j = 0; j < 8; ++j) {  // 8 blocks of 16 fp32: lane's 4 values at 4 * (lane % 4)
            float4 f = make_float4(float(j), float(row), 0.f, 1.f);
            *reinterpret_cast<float4*>(tb + (size_t)row * 1024 + j * 64 + (lane % 4) * 16) = f;
          }
        }
      }
    }
    return;
  }
  for (size_t off = threadIdx.x * 16; off < per_cta; off += 256 * 16) st16(base + off, v, mode, pol);
}

// Read `rbytes` per CTA (16-byte loads, 4 in flight a thread), then store `sbytes` per CTA (16-byte stores).
// spread = 1: the stores are issued in 8 slices between the read slices instead of after them.
__global__ void __launch_bounds__(256) read_store_kernel(const char* src, size_t rbytes, char* dst, size_t sbytes, int spread, int* sink) {
  const char* rb = src + (size_t)blockIdx.x * rbytes;
  char* sb = dst + (size_t)blockIdx.x * sbytes;
  int acc = 0;
  const int slices = spread ? 8 : 1;
  for (int s = 0; s < slices; ++s) {
    const size_t r0 = rbytes * s / slices, r1 = rbytes * (s + 1) / slices;
#pragma unroll 4
    for (size_t off = r0 + threadIdx.x * 16; off < r1; off += 256 * 16) { int4 v = __ldcs(reinterpret_cast<const int4*>(rb + off)); acc ^= v.x ^ v.w; }
    if (spread) {
      const size_t s0 = sbytes * s / slices, s1 = sbytes * (s + 1) / slices;
      for (size_t off = s0 + threadIdx.x * 16; off < s1; off += 256 * 16) *reinterpret_cast<int4*>(sb + off) = make_int4(acc, s, 1, 2);
    }
  }
  if (!spread)
    for (size_t off = threadIdx.x * 16; off < sbytes; off += 256 * 16) *reinterpret_cast<int4*>(sb + off) = make_int4(acc, 0, 1, 2);
  if (acc == 0x7fffffff) sink[0] = acc;
}


int main() {
  const size_t MB = 1u << 20;
  char* dst; const size_t dst_bytes = 272 * MB; CK(cudaMalloc(&dst, dst_bytes)); CK(cudaMemset(dst, 1, dst_bytes));
  char* x; const size_t xb = 8192ull * 4096; CK(cudaMalloc(&x, xb)); CK(cudaMemset(x, 3, xb));
  ProbeTimer timer;
  CK(cudaFuncSetAttribute(store_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 16384));
  const float te = timer.empty_us();
  printf("empty kernel %.2f us (the method's fixed cost)\n", te);
  const char* names[] = {"st16", "st.cs", "acc8", "tma", "no_alloc", "evict_last", "evict_first", "acc16"};
  auto row = [&](const char* what, int grid, size_t bytes, int mode, size_t resident = 0) {
    const size_t q = mode == kStAcc8 || mode == kStAcc16 ? 65536 : mode == kStTma ? 16384 : 4096;
    const size_t per = bytes / grid / q * q;
    const float t = timer.median_us([&] { store_kernel<<<grid, 256, mode == kStTma ? 16384 : 0>>>(dst, per, mode); }, [] {}, dst,
                                     resident);  // (resident: bytes of dst clean in L2 at the call)
    const double b = (double)per * grid;
    printf("%-34s %-11s grid %4d %6.1f MB: %6.2f us  (-empty %5.2f: %5.0f GB/s)\n", what, names[mode], grid, b / MB, t, t - te,
           b / (t - te) / 1e3);
  };
  // 1. flavour, 8.4 MB (the logits) from 128 CTAs: 64 KB a CTA.
  for (int mode : {kSt16, kStCs, kStNoAlloc, kStEvictFirst, kStEvictLast, kStAcc8, kStAcc16, kStTma}) row("flavour, logits bytes", 128, 8 * MB, mode);
  // 2. CTAs, same bytes.
  for (int grid : {32, 64, 132, 256, 528, 1056}) row("CTAs", grid, 8 * MB, kSt16);
  // 3. bytes (slope / intercept), 128 and 512 CTAs.
  for (size_t mb : {2, 4, 16, 32, 64, 256}) { row("bytes", 128, mb * MB, kSt16); row("bytes", 512, mb * MB, kSt16); }
  // 4. destination lines already in L2 (read after the flush: clean lines).
  row("dst resident in L2 (clean)", 128, 8 * MB, kSt16, 8 * MB);
  row("dst resident in L2 (clean)", 128, 8 * MB, kStAcc8, 8 * MB);
  row("dst resident in L2 (clean)", 128, 32 * MB, kSt16, 32 * MB);
  // 5. read-then-store shaped like the router forward: 128 CTAs read 256 KB each (x, 32 MB), store 64 KB each (8 MB).
  for (int grid : {128, 512}) for (int spread : {0, 1}) for (size_t smb : {0, 8}) {
    const size_t rper = 32 * MB / grid, sper = smb * MB / grid;
    const float t = timer.median_us([&] { read_store_kernel<<<grid, 256>>>(x, rper, dst, sper, spread, timer.sink()); });
    printf("read 32 MB then store %zu MB %-7s grid %4d: %6.2f us\n", smb, spread ? "spread" : "after", grid, t);
  }
  CK(cudaDeviceSynchronize());
  return 0;
}
