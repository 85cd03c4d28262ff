// kiln/fp4_moe.cuh — the FP4 MoE layer's steps around its grouped GEMM (spec ../shared/spec/fp4-moe.md §2, §12.2;
// host recipe ops/fp4_moe.cpp; references tests/reference/fp4_moe_layer.*):
//
// * Permutation metadata from topk_ids [T, K]: rows ordered by (local expert, token, k), every expert's segment padded
//   up to the GEMM's token tile. Deterministic with no atomics whose order matters: a CTA deals with a chunk of 256
//   tokens (a thread a token); the rank of slot (t, k) among its expert's rows of the chunk is the number of earlier
//   tokens of the chunk that chose the expert (one token never picks an expert twice), read off a per-expert bitmap of
//   the chunk's tokens (shared-memory atomicOr, order-free) by popcount. Counts are sums (shared atomicAdd,
//   order-free). Small T: one CTA does all (meta_small). Large T: meta_hist (per-chunk counts) → meta_scan (one CTA:
//   prefixes over chunks, padded offsets over experts) → meta_scatter (per-chunk ranks + prefixes).
// * gather: a warp a permuted row; bf16 copied, NVFP4 / MXFP8 / E4M3 decoded exactly to bf16 (block scales only).
// * finalize: a CTA a token; Σ_k w·y in fixed k order in fp32 (products of two bf16 are exact, so fma and mul+add
//   agree bit for bit); a token with no local slot gets 0.
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp4_moe_args.h"
#include "kiln/fp4_moe_decode.h"
#include "kiln/pdl.cuh"

namespace kiln {
namespace f4m {

constexpr int kChunk = 256;  // tokens a CTA of the metadata kernels (its threads)
constexpr int kWords = kChunk / 32;

// Exclusive scan over EL experts of cnt[e] rounded up to `tile`, by warp 0 (lane l takes a run of R experts):
// off[e] = the padded start of expert e, off[EL] = the total.
template <int EL>
__device__ __forceinline__ void scan_experts(const int* cnt, int* off, int tile) {
  constexpr int R = (EL + 31) / 32;
  const int lane = threadIdx.x & 31;
  int pad[R], s = 0;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int e = lane * R + i;
    const int c = e < EL ? cnt[e] : 0;
    pad[i] = (c + tile - 1) / tile * tile;
    s += pad[i];
  }
  const int inc = warp_inclusive_scan(s);
  int run = inc - s;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int e = lane * R + i;
    if (e < EL) off[e] = run;
    run += pad[i];
  }
  if (lane == 31) off[EL] = inc;
}

// Writes counts and offsets, and marks the padding rows of every segment (token and k −1). Threads stride over
// experts.
template <int EL>
__device__ __forceinline__ void write_offsets(const Fp4MoeMetaArgs& a, const int* cnt, const int* off) {
  for (int e = threadIdx.x; e <= EL; e += blockDim.x) {
    a.offsets[e] = off[e];
    if (e == EL) continue;
    a.counts[e] = cnt[e];
    for (int r = off[e] + cnt[e]; r < off[e + 1]; ++r) {
      a.perm_token[r] = -1;
      a.perm_k[r] = -1;
    }
  }
}

// Builds the chunk's bitmap (tokens [c0, c0 + kChunk)) and writes every slot's permuted row: base(e) + rank.
// `loc` holds the thread's token's local ids (−1: not local). bm: EL · kWords words, cleared by the caller.
template <int EL, int K, typename Base>
__device__ __forceinline__ void scatter_chunk(const Fp4MoeMetaArgs& a, long long t, const int (&loc)[K], u32* bm,
                                              Base base) {
  const int tl = threadIdx.x;
  const bool valid = t < a.T;
  if (valid) {
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (loc[k] >= 0) atomicOr(&bm[loc[k] * kWords + (tl >> 5)], 1u << (tl & 31));
  }
  __syncthreads();
  if (valid) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int e = loc[k];
      int pos = -1;
      if (e >= 0) {
        const u32* w = bm + e * kWords;
        int rank = __popc(w[tl >> 5] & ((1u << (tl & 31)) - 1u));
        for (int i = 0; i < (tl >> 5); ++i) rank += __popc(w[i]);
        pos = base(e) + rank;
        a.perm_token[pos] = static_cast<int>(t);
        a.perm_k[pos] = k;
      }
      a.expanded[t * K + k] = pos;
    }
  }
}

// The thread's token's local ids (−1 where not local, or past T), writing the replay row on the way.
template <int EL, int K>
__device__ __forceinline__ void load_ids(const Fp4MoeMetaArgs& a, long long t, int (&loc)[K], bool replay) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    loc[k] = -1;
    if (t < a.T) {
      const int id = a.topk_ids[t * K + k];
      if (replay && a.replay != nullptr) a.replay[t * K + k] = static_cast<short>(id);
      const int e = id - a.expert_offset;
      if (e >= 0 && e < EL) loc[k] = e;
    }
  }
}

__device__ __forceinline__ u32 bf16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

}  // namespace f4m

// One CTA (kChunk threads): counts, offsets, padding marks, then the chunks in order with a running base per expert.
template <int EL, int K>
__global__ void __launch_bounds__(f4m::kChunk) fp4_moe_meta_small_kernel(const __grid_constant__ Fp4MoeMetaArgs a) {
  using namespace f4m;
  __shared__ int cnt[EL], off[EL + 1], base[EL];
  __shared__ u32 bm[EL * kWords];
  pdl_wait();
  pdl_launch_dependents();
  for (int e = threadIdx.x; e < EL; e += kChunk) cnt[e] = 0;
  __syncthreads();
  for (long long t = threadIdx.x; t < a.T; t += kChunk) {
    int loc[K];
    load_ids<EL, K>(a, t, loc, true);
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (loc[k] >= 0) atomicAdd(&cnt[loc[k]], 1);
  }
  __syncthreads();
  if (threadIdx.x < 32) scan_experts<EL>(cnt, off, a.tile);
  __syncthreads();
  write_offsets<EL>(a, cnt, off);
  for (int e = threadIdx.x; e < EL; e += kChunk) base[e] = off[e];
  for (long long c0 = 0; c0 < a.T; c0 += kChunk) {
    for (int i = threadIdx.x; i < EL * kWords; i += kChunk) bm[i] = 0u;
    __syncthreads();  // also orders the previous chunk's base update before its use
    const long long t = c0 + threadIdx.x;
    int loc[K];
    load_ids<EL, K>(a, t, loc, false);
    scatter_chunk<EL, K>(a, t, loc, bm, [&](int e) { return base[e]; });
    __syncthreads();
    for (int e = threadIdx.x; e < EL; e += kChunk) {
      int n = 0;
#pragma unroll
      for (int i = 0; i < kWords; ++i) n += __popc(bm[e * kWords + i]);
      base[e] += n;
    }
    __syncthreads();
  }
}

// Grid: one CTA a chunk. chunk_counts[c, e] = rows of expert e among the chunk's slots; the replay rows.
template <int EL, int K>
__global__ void __launch_bounds__(f4m::kChunk) fp4_moe_meta_hist_kernel(const __grid_constant__ Fp4MoeMetaArgs a) {
  using namespace f4m;
  __shared__ int cnt[EL];
  pdl_wait();
  pdl_launch_dependents();
  for (int e = threadIdx.x; e < EL; e += kChunk) cnt[e] = 0;
  __syncthreads();
  const long long t = static_cast<long long>(blockIdx.x) * kChunk + threadIdx.x;
  int loc[K];
  load_ids<EL, K>(a, t, loc, true);
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (loc[k] >= 0) atomicAdd(&cnt[loc[k]], 1);
  __syncthreads();
  for (int e = threadIdx.x; e < EL; e += kChunk) a.chunk_counts[static_cast<long long>(blockIdx.x) * EL + e] = cnt[e];
}

// One CTA of 1024 threads: P = 1024 / EL parts a expert sum contiguous runs of chunks; prefixes over parts, counts,
// padded offsets; then chunk_counts[c, e] becomes offsets[e] + Σ_{c' < c} counts[c', e].
template <int EL>
__global__ void __launch_bounds__(1024) fp4_moe_meta_scan_kernel(const __grid_constant__ Fp4MoeMetaArgs a) {
  using namespace f4m;
  constexpr int P = 1024 / EL > 0 ? 1024 / EL : 1;
  __shared__ int psum[P * EL], cnt[EL], off[EL + 1];
  pdl_wait();
  pdl_launch_dependents();
  const long long chunks = (a.T + kChunk - 1) / kChunk;
  const long long per = (chunks + P - 1) / P;
  const int e = threadIdx.x % EL, p = threadIdx.x / EL;
  const bool active = p < P;
  long long c_begin = 0, c_end = 0;
  if (active) {
    c_begin = p * per;
    c_end = c_begin + per < chunks ? c_begin + per : chunks;
    int s = 0;
#pragma unroll 8
    for (long long c = c_begin; c < c_end; ++c) s += a.chunk_counts[c * EL + e];
    psum[p * EL + e] = s;
  }
  __syncthreads();
  if (threadIdx.x < EL) {
    int run = 0;
    for (int q = 0; q < P; ++q) {
      const int v = psum[q * EL + threadIdx.x];
      psum[q * EL + threadIdx.x] = run;
      run += v;
    }
    cnt[threadIdx.x] = run;
  }
  __syncthreads();
  if (threadIdx.x < 32) scan_experts<EL>(cnt, off, a.tile);
  __syncthreads();
  write_offsets<EL>(a, cnt, off);
  if (active) {
    int run = off[e] + psum[p * EL + e];
    for (long long c = c_begin; c < c_end; ++c) {
      const int v = a.chunk_counts[c * EL + e];
      a.chunk_counts[c * EL + e] = run;
      run += v;
    }
  }
}

// Grid: one CTA a chunk; rows base(c, e) + rank.
template <int EL, int K>
__global__ void __launch_bounds__(f4m::kChunk) fp4_moe_meta_scatter_kernel(const __grid_constant__ Fp4MoeMetaArgs a) {
  using namespace f4m;
  __shared__ u32 bm[EL * kWords];
  pdl_wait();
  pdl_launch_dependents();
  for (int i = threadIdx.x; i < EL * kWords; i += kChunk) bm[i] = 0u;
  __syncthreads();
  const long long t = static_cast<long long>(blockIdx.x) * kChunk + threadIdx.x;
  int loc[K];
  load_ids<EL, K>(a, t, loc, false);
  const int* cb = a.chunk_counts + static_cast<long long>(blockIdx.x) * EL;
  scatter_chunk<EL, K>(a, t, loc, bm, [&](int e) { return cb[e]; });
}

namespace f4m {

// One permuted row r < the total (a warp): FMT 0 bf16, 1 nvfp4, 2 mxfp8, 3 e4m3; H % 32 == 0. bf16: a lane step
// copies 8 elements (one 16-byte load and store); the quantized formats: a lane step converts 8 elements (4 or 8
// input bytes and their scale byte, loaded together) into one 16-byte store, so that a store instruction writes 512
// contiguous bytes of the row (16-byte input vectors made each store instruction write 16 of every 32 or 64 bytes)
// and no scale load waits behind a data load. U steps a lane issue their loads before their stores.
template <int FMT>
__device__ __forceinline__ void gather_row(const Fp4MoeGatherArgs& a, long long r, int tok, int lane) {
  const int H = a.H;
  char* out = static_cast<char*>(a.act) + r * H * 2;
  if (tok < 0) {  // padding row: zeros
    const Vec16 z{{0u, 0u, 0u, 0u}};
    for (int v = lane; v < H / 8; v += 32) store16(out + v * 16, z);
    if (lane == 0 && a.row_scale != nullptr) a.row_scale[r] = 0.0f;
    return;
  }
  if (lane == 0 && a.row_scale != nullptr) a.row_scale[r] = a.per_token_scale[tok];
  const int nv = H / 8;  // 8-element steps of the row
  if constexpr (FMT == 0) {
    constexpr int U = 4;
    const char* in = static_cast<const char*>(a.hidden) + static_cast<long long>(tok) * H * 2;
    for (int v0 = lane; v0 < nv; v0 += 32 * U) {
      Vec16 q[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (v0 + 32 * u < nv) q[u] = load16_stream(in + (v0 + 32 * u) * 16);
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (v0 + 32 * u < nv) store16(out + (v0 + 32 * u) * 16, q[u]);
    }
  } else {
    constexpr int U = 8;
    constexpr int IB = FMT == 1 ? 4 : 8;  // input bytes a step
    const char* in = static_cast<const char*>(a.hidden) + static_cast<long long>(tok) * H * IB / 8;
    const unsigned char* sc =
        FMT == 1 ? a.scale + static_cast<long long>(tok) * (H / 16) : FMT == 2 ? a.scale + static_cast<long long>(tok) * (H / 32) : nullptr;
    for (int v0 = lane; v0 < nv; v0 += 32 * U) {
      u32 q[U][IB / 4], sb[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = v0 + 32 * u;
        if (v >= nv) break;
        if constexpr (FMT == 1) {
          q[u][0] = __ldg(reinterpret_cast<const u32*>(in) + v);
          sb[u] = sc[v >> 1];  // a 16-element block: two steps
        } else {
          const uint2 w = __ldg(reinterpret_cast<const uint2*>(in) + v);
          q[u][0] = w.x;
          q[u][IB / 4 - 1] = w.y;
          if constexpr (FMT == 2) sb[u] = sc[v >> 2];  // a 32-element block: four steps
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = v0 + 32 * u;
        if (v >= nv) break;
        Vec16 o;
        if constexpr (FMT == 1) {
          const float sf = e4m3_float(sb[u]);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const u32 byte = (q[u][0] >> (8 * i)) & 0xffu;
            o.w[i] = bf16x2(e2m1_float(byte & 15u) * sf, e2m1_float(byte >> 4) * sf);
          }
        } else {
          const float sf = FMT == 2 ? ue8m0_float(sb[u]) : 1.0f;
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const u32 w = q[u][i / 2] >> (16 * (i & 1));
            o.w[i] = bf16x2(e4m3_float(w) * sf, e4m3_float(w >> 8) * sf);
          }
        }
        store16(out + v * 16, o);
      }
    }
  }
}

}  // namespace f4m

// A warp a permuted row, grid-stride over the rows below the total (offsets[E_l], read on the device): the grid is
// sized by the host for rows_cap but at most what fits on the GPU at once.
template <int FMT, int THREADS>
__global__ void __launch_bounds__(THREADS) fp4_moe_gather_kernel(const __grid_constant__ Fp4MoeGatherArgs a) {
  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31;
  long long rows = a.offsets[a.experts];
  rows = rows < a.rows_cap ? rows : a.rows_cap;
  const long long step = static_cast<long long>(gridDim.x) * (THREADS / 32);
  long long r = static_cast<long long>(blockIdx.x) * (THREADS / 32) + (threadIdx.x >> 5);
  int tok = r < rows ? a.perm_token[r] : -1;
  for (; r < rows; r += step) {  // the next row's token is read before this row's loads (not behind its stores)
    const int next = r + step < rows ? a.perm_token[r + step] : -1;
    f4m::gather_row<FMT>(a, r, tok, lane);
    tok = next;
  }
}

// A CTA a token (THREADS threads, 8 columns a thread a step); H_out % 8 == 0.
template <int K, int THREADS>
__global__ void __launch_bounds__(THREADS) fp4_moe_finalize_kernel(const __grid_constant__ Fp4MoeFinalizeArgs a) {
  pdl_wait();
  pdl_launch_dependents();
  const long long t = blockIdx.x;
  if (t >= a.T) return;
  int pos[K];
  float w[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    pos[k] = a.expanded[t * K + k];
    w[k] = __uint_as_float(static_cast<u32>(a.weights[t * K + k]) << 16);
  }
  char* out = static_cast<char*>(a.out) + t * a.out_ld * 2;
  for (int v = threadIdx.x; v < a.H_out / 8; v += THREADS) {
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (pos[k] < 0) continue;
      const Vec16 y = load16(static_cast<const char*>(a.y) + (static_cast<long long>(pos[k]) * a.y_ld + v * 8) * 2);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = fmaf(w[k], vec_get<bf16>(y, i), acc[i]);
    }
    Vec16 o;
#pragma unroll
    for (int i = 0; i < 4; ++i) o.w[i] = f4m::bf16x2(acc[2 * i], acc[2 * i + 1]);
    store16(out + v * 16, o);
  }
}

}  // namespace kiln
