// kiln/batch_reduce.cuh — one reduction over a whole list of tensors in one launch: Σ|x|, Σx², max|x| (the grad
// norm's building blocks) or the count of zeros. Spec: shared/spec/linghe-kernels.md §9, §10.
//
// Deterministic by construction: the work is cut the same way whatever the launch shape. Every tensor is split into
// chunks of kBatchReduceChunk elements (the last partial), a chunk into 16 sub-chunks of 4096 elements; a sub-chunk is
// reduced by one warp in a fixed lane pattern (lane l takes its head element, 16-byte vectors l, l+32, … into four
// accumulators in rotation, its tail element; then a butterfly), a chunk's 16 sub-results by a fixed pairwise tree;
// groups of 64 consecutive chunk results by a fixed warp tree (by whichever CTA finishes a group's last chunk); and the
// group results by the last CTA to finish, in 1024 slots (result k to slot k mod 1024, in order) and a pairwise tree.
// CTAs take chunks dynamically (an atomic counter), which balances lists of very different sizes without touching the
// result: which CTA or warp reduces a piece never changes how it is reduced. So the bits are the same for any grid
// size, block size or SM count.
//
// Accumulation: each 16-byte vector's terms in fp32, then A (float or double) within a sub-chunk; every result above it
// is combined in double. max|x| and the
// zero count are exact; max propagates NaN (a NaN gradient must not vanish from the norm), the count ignores it.
#pragma once
#include "kiln/batch_reduce_args.h"
#include "kiln/common.cuh"

namespace kiln {
namespace br {

enum { kSumAbs = 0, kSumSq = 1, kMaxAbs = 2, kCountZero = 3 };
constexpr int kGroup = 64;  // chunk results per group
static_assert(kBatchReduceSubs == 16, "tree16 reduces the 16 sub-chunk results");

__device__ __forceinline__ float max_nan(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ double max_nan(double a, double b) {
  return (a != a || b != b) ? __longlong_as_double(0x7ff8000000000000ll) : fmax(a, b);
}

template <int OP, typename A>
struct Op {  // kSumAbs
  using V = A;
  static __device__ __forceinline__ V f(V acc, float x) { return acc + static_cast<A>(fabsf(x)); }
  static __device__ __forceinline__ V comb(V a, V b) { return a + b; }
};
template <typename A>
struct Op<kSumSq, A> {
  using V = A;
  static __device__ __forceinline__ V f(V acc, float x) {
    const A v = static_cast<A>(x);
    if constexpr (sizeof(A) == 8) return fma(v, v, acc);
    else return fmaf(v, v, acc);
  }
  static __device__ __forceinline__ V comb(V a, V b) { return a + b; }
};
template <typename A>
struct Op<kMaxAbs, A> {
  using V = float;
  static __device__ __forceinline__ V f(V acc, float x) { return max_nan(acc, fabsf(x)); }
  static __device__ __forceinline__ V comb(V a, V b) { return max_nan(a, b); }
};
template <typename A>
struct Op<kCountZero, A> {
  using V = unsigned;
  static __device__ __forceinline__ V f(V acc, float x) { return acc + (x == 0.f ? 1u : 0u); }
  static __device__ __forceinline__ V comb(V a, V b) { return a + b; }
};

// The double-precision combination every level above the sub-chunk uses.
template <int OP>
__device__ __forceinline__ double comb_d(double a, double b) {
  if constexpr (OP == kMaxAbs) return max_nan(a, b);
  else return a + b;
}

// Pairwise tree over 16 values: ((v0 v1)(v2 v3))((v4 v5)(v6 v7)) …
template <int OP>
__device__ __forceinline__ double tree16(const double* v) {
  double p[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) p[j] = comb_d<OP>(v[2 * j], v[2 * j + 1]);
  const double q0 = comb_d<OP>(p[0], p[1]), q1 = comb_d<OP>(p[2], p[3]), q2 = comb_d<OP>(p[4], p[5]),
               q3 = comb_d<OP>(p[6], p[7]);
  return comb_d<OP>(comb_d<OP>(q0, q1), comb_d<OP>(q2, q3));
}

template <typename V>
__device__ __forceinline__ V shfl_xor(V v, int o) {
  return __shfl_xor_sync(0xffffffffu, v, o);
}

// Streaming read-only 16-byte load (no L1 allocation; not volatile, so the compiler may batch it).
__device__ __forceinline__ Vec16 load16_nc(const void* p) {
  Vec16 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3])
      : "l"(p));
  return v;
}

// An L2 read (bypassing L1, which other SMs' writes do not update).
__device__ __forceinline__ double load_cg(const double* p) {
  double v;
  asm volatile("ld.global.cg.f64 %0, [%1];" : "=d"(v) : "l"(p) : "memory");
  return v;
}

// One warp reduces elements [s0, s1) (s1 − s0 ≤ kBatchReduceSub) of `base`; every lane returns the result.
template <int OP, typename A, typename T>
__device__ __forceinline__ typename Op<OP, A>::V reduce_sub(const T* base, long long s0, long long s1, int lane) {
  using P = Op<OP, A>;
  using V = typename P::V;
  constexpr int E = 16 / sizeof(T);
  constexpr int PER_LANE = kBatchReduceSub / E / 32;  // vectors per lane in a full sub-chunk
  constexpr int U = PER_LANE < 8 ? PER_LANE : 8;      // loads in flight per lane
  const T* p = base + s0;
  const int n = static_cast<int>(s1 - s0);
  int head = static_cast<int>(((16 - (reinterpret_cast<unsigned long long>(p) & 15)) & 15) / sizeof(T));
  if (head > n) head = n;
  const int nv = (n - head) / E;
  const int tail = n - head - nv * E;
  const T* body = p + head;

  V edge = V(0);
  if (lane < head) edge = P::f(edge, to_float(p[lane]));
  V acc[4] = {V(0), V(0), V(0), V(0)};
  static_assert(U % 4 == 0, "vector i of a lane goes to accumulator i % 4, fixed at compile time within a round");
#pragma unroll 1
  for (int i0 = 0; i0 < PER_LANE; i0 += U) {
    Vec16 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = lane + 32 * (i0 + u);
      if (k < nv) v[u] = load16_nc(body + static_cast<long long>(k) * E);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = lane + 32 * (i0 + u);
      if (k < nv) {
        if constexpr (OP == kSumAbs || OP == kSumSq) {
          // Sums: the vector's E terms in fp32 (a short chain of positive terms: ≤ E·2^-24 relative error), then one
          // addition in A. One fp64 conversion and add per 16 bytes instead of per element.
          float p = 0.f;
#pragma unroll
          for (int e = 0; e < E; ++e) {
            const float x = vec_get<T>(v[u], e);
            p = OP == kSumSq ? fmaf(x, x, p) : p + fabsf(x);
          }
          acc[u & 3] += static_cast<A>(p);
        } else {
#pragma unroll
          for (int e = 0; e < E; ++e) acc[u & 3] = P::f(acc[u & 3], vec_get<T>(v[u], e));
        }
      }
    }
  }
  V tl = V(0);
  if (lane < tail) tl = P::f(tl, to_float(body[nv * E + lane]));
  V r = P::comb(P::comb(edge, P::comb(P::comb(acc[0], acc[1]), P::comb(acc[2], acc[3]))), tl);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) r = P::comb(r, shfl_xor(r, o));
  return r;
}

}  // namespace br

// Grid: any number of CTAs of WARPS warps (a persistent grid; CTAs take chunks from counters[0]). Scratch (zeroed by
// the host): counters[0] next chunk, counters[1] finished CTAs, counters[2 + g] finished chunks of group g.
template <int OP, typename A, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) batch_reduce_kernel(const BatchReduceArgs a) {
  using namespace br;
  using P = Op<OP, A>;
  using V = typename P::V;
  constexpr int THREADS = WARPS * 32;
  __shared__ double sub[kBatchReduceSubs];
  __shared__ double slots[kBatchReduceSlots];
  __shared__ int s_chunk[2], s_tensor[2];
  __shared__ int s_flag;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int ngroups = (a.num_chunks + kGroup - 1) / kGroup;
  double* gpart = a.partials + a.num_chunks;
  unsigned* gcount = a.counters + 2;

  // Records chunk c and its tensor (the last one whose first chunk is ≤ c: empty tensors own no chunk) in `slot`.
  auto record = [&](int slot, int c) {
    int lo = 0;
    if (c < a.num_chunks) {
      int hi = a.num_tensors;
      while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (a.chunk_start[mid] <= c) lo = mid;
        else hi = mid;
      }
    }
    s_chunk[slot] = c;
    s_tensor[slot] = lo;
  };

  // Group g is reduced (fixed warp tree over its 64 chunk results) by the CTA that finished its last chunk. Thread 0
  // learns that from its group-counter atomic, whose result it reads one chunk later (latency hidden).
  int pend_g = -1;
  unsigned pend_old = 0, pend_size = 0;
  auto flag_pending = [&]() {
    s_flag = pend_g >= 0 && pend_old == pend_size - 1 ? pend_g : -1;
    pend_g = -1;
  };
  auto reduce_group = [&](int g) {
    __threadfence();
    const int k0 = g * kGroup + 2 * lane;
    double v = comb_d<OP>(k0 < a.num_chunks ? load_cg(&a.partials[k0]) : 0.0,
                          k0 + 1 < a.num_chunks ? load_cg(&a.partials[k0 + 1]) : 0.0);
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) v = comb_d<OP>(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) gpart[g] = v;
  };

  if (threadIdx.x == 0) record(0, static_cast<int>(atomicAdd(&a.counters[0], 1u)));
  __syncthreads();
  for (int buf = 0;; buf ^= 1) {
    const int c = s_chunk[buf];
    if (c >= a.num_chunks) break;
    const int t = s_tensor[buf];
    // The next chunk's id is taken now and used after this chunk's loads: the atomic's latency hides behind them.
    unsigned next = 0;
    if (threadIdx.x == 0) next = atomicAdd(&a.counters[0], 1u);
    const BatchReduceTensor tt = a.tensors[t];
    const long long c0 = (c - a.chunk_start[t]) * kBatchReduceChunk;
    const long long c1 = min(c0 + kBatchReduceChunk, tt.numel);
    for (int j = warp; j < kBatchReduceSubs; j += WARPS) {
      const long long s0 = c0 + static_cast<long long>(j) * kBatchReduceSub;
      V r = V(0);
      if (s0 < c1) {
        const long long s1 = min(s0 + kBatchReduceSub, c1);
        if (tt.dtype == 0) r = reduce_sub<OP, A, bf16>(static_cast<const bf16*>(tt.ptr), s0, s1, lane);
        else if (tt.dtype == 1) r = reduce_sub<OP, A, f16>(static_cast<const f16*>(tt.ptr), s0, s1, lane);
        else r = reduce_sub<OP, A, float>(static_cast<const float*>(tt.ptr), s0, s1, lane);
      }
      if (lane == 0) sub[j] = static_cast<double>(r);
    }
    if (threadIdx.x == 0) {
      record(buf ^ 1, static_cast<int>(next));
      flag_pending();
    }
    __syncthreads();  // sub[] complete, s_flag set
    if (threadIdx.x == 0) {
      a.partials[c] = tree16<OP>(sub);
      __threadfence();
      pend_g = c / kGroup;
      pend_size = static_cast<unsigned>(min(kGroup, a.num_chunks - pend_g * kGroup));
      pend_old = atomicAdd(&gcount[pend_g], 1u);
    }
    if (warp == 0 && s_flag >= 0) reduce_group(s_flag);
    __syncthreads();  // sub[] and s_flag are reused; the prefetched chunk id is visible
  }
  if (threadIdx.x == 0) flag_pending();
  __syncthreads();
  if (warp == 0 && s_flag >= 0) reduce_group(s_flag);

  // The last CTA to finish reduces the group results.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    s_flag = atomicAdd(&a.counters[1], 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!s_flag) return;
  __threadfence();
  for (int s = threadIdx.x; s < kBatchReduceSlots; s += THREADS) {
    double v = 0.0;
    for (int k = s; k < ngroups; k += kBatchReduceSlots) v = comb_d<OP>(v, load_cg(&gpart[k]));
    slots[s] = v;
  }
  __syncthreads();
#pragma unroll 1
  for (int w = kBatchReduceSlots / 2; w > 0; w >>= 1) {
    for (int s = threadIdx.x; s < w; s += THREADS) slots[s] = comb_d<OP>(slots[s], slots[s + w]);
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  if constexpr (OP == kCountZero) {
    *static_cast<long long*>(a.out) = static_cast<long long>(slots[0]);
  } else {
    const double r = (OP == kSumSq && a.root) ? sqrt(slots[0]) : slots[0];
    *static_cast<float*>(a.out) = static_cast<float>(r);
  }
}

}  // namespace kiln
