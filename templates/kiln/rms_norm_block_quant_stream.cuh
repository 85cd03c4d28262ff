// kiln/rms_norm_block_quant_stream.cuh — the stream kernel of rms_norm_block_quant (modes 1, 2): the SiLU block-quant
// tile structure (templates/kiln/silu_block_quant.cuh) with the RMSNorm's row dependency exchanged per warp.
//
// Grid (S, G), clusters of S CTAs along x in mode 2 (S = N / (128·CB)); cluster y takes the 128-token tiles
// y, y + G, …; CTA `rank` owns columns [C·rank, C·rank + C), C = 128·CB, of each of them. One 512-thread CTA an SM.
// Thread layout (as the SiLU kernel): warp w owns rows 8w … 8w+7 of every 128×128 block, its half-warp
// hw = 2w + (lane >> 4) rows 4hw … 4hw+3, lane hl = lane & 15 channels 8hl … 8hl+7: 4 × 8 values a thread a block.
//
// Per tile:
//  * pass 1: each thread waits for its own cp.async copies of the tile's CB blocks (it copies exactly the 16-byte
//    pieces it reads, so no barrier guards the ring), sums squares of its 4 rows, and a transposing butterfly gives
//    lane 4R (of each half-warp) row R's partial sum. The warp then pushes its 8 rows' partial sums (32 bytes) into
//    the same warp's receive slot of every CTA of the cluster with st.async (lane 2q + p sends piece p to CTA q),
//    completing on that warp's mbarrier there. No CTA barrier, no cluster barrier: the dependency is per warp.
//  * finish: the warp waits for its mbarrier (S·32 bytes), adds the S partial sums of each row in rank order (every
//    CTA gets bitwise the same r), r = 1/sqrt(Σ/N + eps).
//  * pass 2, per block: y = (x·r)·w (fp32, this order) held in registers; row-wise codes straight from registers
//    (transposing butterfly for the row amax: one scale per lane); column maxima by shared atomicMax into one of three
//    rotating buffers; ONE block barrier; every thread forms the scales of its 8 channels, quantizes its 4 tokens of
//    each and stages the codes in one of two buffers (by block parity); they leave as 128-byte qT rows after the next
//    block's barrier.
//  OVERLAP: pass 1 of tile it+1 (and its pushes) runs before pass 2 of tile it, so the exchange's latency hides behind
//  a tile's quantization.
// Where a tile's x lives between the passes (KEEP): 0 = registers (16·CB a thread; the slot is refilled right after
// pass 1 read it), 1 = its ring slot (refilled after pass 2), 2 = nowhere (RELOAD: pass 2 copies the block again,
// from L2, through the ring).
//
// The ring: visits k = 0, 1, … (a block copy each) in consumption order, visit k in slot k % R; the first R are issued
// at the start, visit k + R when this thread releases visit k. With RELOAD every block is visited twice; the order is
// P1(0), P2(0), P1(1), … or, with OVERLAP, P1(0), P1(1), P2(0), P1(2), P2(1), …, P2(T − 1).
//
// Reuse of the receive buffers (double-buffered by tile parity): a peer's warp pushes tile it+2 after it waited for
// this warp's push of tile it+1, which this warp makes after its reads of tile it's sums (the finish of tile it comes
// before pass 1 of tile it+1 in both orders); so the mbarrier phase of tile it has completed and been consumed when
// bytes of tile it+2 arrive (those arriving before the warp arms the phase leave its tx-count negative: the phase
// cannot complete before the arming arrival).
#pragma once
#include "kiln/rms_norm_block_quant.cuh"
#include "kiln/rms_norm_block_quant_stream_args.h"

namespace kiln {
namespace rmsq {
// What a lane needs to apply a quantizer (ROUND: the reciprocal, else the scale), and applying it.
template <bool ROUND>
__device__ __forceinline__ float qparam(const Quant<ROUND>& q) {
  return ROUND ? q.inv : q.s;
}
template <bool ROUND>
__device__ __forceinline__ float qapply(float y, float p) {
  return ROUND ? __fmul_rn(y, p) : __fdiv_rn(y, p);
}
// A half-warp's reduction of four rows' per-lane values v[0..3] (sum, or max ignoring NaN) by a transposing
// butterfly: the first two rounds split the rows between lane halves (bit 3, then bit 2), so after four rounds lane
// hl holds row hl >> 2's total (the four lanes of a row bitwise alike: + and fmaxf commute). 5 shuffles, not 16.
template <bool MAX>
__device__ __forceinline__ float transpose_reduce4(const float (&v)[4], int hl) {
  auto op = [](float a, float b) { return MAX ? fmaxf(a, b) : a + b; };
  const bool b3 = (hl & 8) != 0, b2 = (hl & 4) != 0;
  float k0 = b3 ? v[2] : v[0], k1 = b3 ? v[3] : v[1];
  k0 = op(k0, __shfl_xor_sync(0xffffffffu, b3 ? v[0] : v[2], 8));
  k1 = op(k1, __shfl_xor_sync(0xffffffffu, b3 ? v[1] : v[3], 8));
  float k = op(b2 ? k1 : k0, __shfl_xor_sync(0xffffffffu, b2 ? k0 : k1, 4));
  k = op(k, __shfl_xor_sync(0xffffffffu, k, 2));
  return op(k, __shfl_xor_sync(0xffffffffu, k, 1));
}
}  // namespace rmsq

template <int N, int CB, int MODE, bool ROUND, bool W_F32, int R, bool OVERLAP, int KEEP, bool GLOBAL = false>
__global__ void __launch_bounds__(kRmsqStreamThreads, 1)
    rms_norm_block_quant_stream_kernel(const RmsqStreamArgs sa) {
  using namespace rmsq;
  const RmsNormBlockQuantArgs& a = sa.a;
  constexpr int ROWS = 128, WARPS = kRmsqStreamThreads / 32, THREADS = kRmsqStreamThreads;
  constexpr int C = CB * 128;
  constexpr int S = N / C;  // column chunks of a row (the cluster size, without GLOBAL)
  constexpr bool CLUSTER = !GLOBAL && MODE == 2 && S > 1;
  constexpr bool GX = GLOBAL && MODE == 2 && S > 1;  // partial sums exchanged through global memory
  constexpr bool INREG = KEEP == 0, INSLOT = KEEP == 1, RELOAD = KEEP == 2;
  constexpr int BLOCK = ROWS * 128;  // elements of a slot
  static_assert(WARPS == 16, "the thread layout covers 128 rows with 16 warps");
  static_assert(N % C == 0 && (!CLUSTER || S <= 16), "the cluster must tile N, at most 16 CTAs");
  static_assert(MODE == 1 || MODE == 2, "the stream kernel writes the transposed output");
  static_assert(KEEP >= 0 && KEEP <= 2, "");
  static_assert(MODE == 2 || INREG, "mode 1 has no first pass to keep the block across");
  static_assert(!INREG || CB <= (OVERLAP ? 2 : 4), "a tile's x in registers (two tiles with OVERLAP)");
  static_assert(R >= 1 && R <= kRmsqStreamMaxRing, "");
  static_assert(!INSLOT || R >= (OVERLAP ? 2 * CB : CB), "slots hold a tile's blocks (two tiles with OVERLAP)");
  constexpr int V = RELOAD ? 2 * CB : CB;  // visits a tile

  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* ring = reinterpret_cast<bf16*>(smem_raw);
  u32* codes = reinterpret_cast<u32*>(smem_raw + R * BLOCK * 2);  // [2][128 channels][32 slots of 4 tokens]
  u32* colmax = codes + 2 * 128 * 32;                              // [3][132] float bits, padded slots
  float* recv = reinterpret_cast<float*>(colmax + 3 * 132);        // CLUSTER: [2][WARPS][S][8]
  u64* rbar = reinterpret_cast<u64*>(recv + (CLUSTER ? 2 * WARPS * S * 8 : 0));  // CLUSTER: [2][WARPS]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int hl = lane & 15, half = lane >> 4;
  const int hw = warp * 2 + half;    // rows 4·hw … 4·hw+3
  const int c0 = hl * 8;             // channels c0 … c0+7 of a block
  const int cs0 = c0 + (c0 >> 5);    // column-max slot of channel c0 (c0 + e: cs0 + e)
  const int rank = blockIdx.x;       // rank in the cluster (the cluster spans gridDim.x; GLOBAL: the CTA)
  const int tiles = (a.M + ROWS - 1) / ROWS;
  // The CTA's work items it = 0 … T − 1, each a 128-token tile × C columns. Clusters: tile y + it·G, columns of
  // `rank`. GLOBAL: item u = b + it·P of all tiles·S (tile u / S, chunk u % S; the host launches P ≤ tiles·S CTAs).
  const int T = GLOBAL ? (tiles * S - 1 - rank) / static_cast<int>(gridDim.x) + 1
                       : (tiles - 1 - static_cast<int>(blockIdx.y)) / static_cast<int>(gridDim.y) + 1;
  auto item_tile = [&](int it) {
    if constexpr (GLOBAL) return (rank + it * static_cast<int>(gridDim.x)) / S;
    else return static_cast<int>(blockIdx.y) + it * static_cast<int>(gridDim.y);
  };
  auto item_col = [&](int it) {  // first column of the item's chunk
    if constexpr (GLOBAL) return ((rank + it * static_cast<int>(gridDim.x)) % S) * C;
    else return rank * C;
  };
  auto tile_m0 = [&](int it) { return item_tile(it) * ROWS; };
  const int nvis = T * V;
  const bf16* xg = static_cast<const bf16*>(a.x);

  // ---- the ring ----
  auto visit_tile = [&](int k, int& b) {
    const int g = k / CB;
    b = k - g * CB;
    if constexpr (!RELOAD) return g;
    else if constexpr (!OVERLAP) return g >> 1;
    else return g == 0 ? 0 : (g & 1) ? min((g + 1) >> 1, T - 1) : (g >> 1) - 1;
  };
  int issued = 0;  // visits issued (uniform)
  auto issue = [&](int k) {
    int b;
    const int it = visit_tile(k, b);
    const int m0 = tile_m0(it);
    const int valid = min(ROWS, a.M - m0);
    bf16* dst = ring + (k % R) * BLOCK + 4 * hw * 128 + c0;
    const bf16* src = xg + static_cast<i64>(m0) * a.x_stride + item_col(it) + b * 128 + c0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = 4 * hw + i;
      const bool ok = r < valid;  // rows past M: zero-filled, reading nothing (from row 0)
      cp_async16(dst + i * 128, src + (ok ? static_cast<i64>(r) * a.x_stride : 0), ok);
    }
    cp_async_commit();
    ++issued;
  };
#pragma unroll 1
  for (int k = 0; k < min(R, nvis); ++k) issue(k);
  auto wait_visit = [&](int k) { cp_async_wait_group_dyn(issued - k - 1); };  // ≤ R − 1 newer groups pending
  auto release = [&](int k) {
    if (k + R < nvis) issue(k + R);
  };
  auto read_visit = [&](int k, Vec16 (&x)[4]) {
    const bf16* s = ring + (k % R) * BLOCK + 4 * hw * 128 + c0;
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = *reinterpret_cast<const Vec16*>(s + i * 128);
  };

  // ---- setup (overlaps the first copies) ----
  for (int i = tid; i < 3 * 132; i += THREADS) colmax[i] = 0u;
  if constexpr (CLUSTER) {
    if (tid == 0) {
      for (int i = 0; i < 2 * WARPS; ++i) pipe_mbar_init(rbar + i, 1);
      pipe_mbar_init_fence();
    }
    cluster_sync();  // every CTA's barriers exist before anyone pushes
  } else {
    __syncthreads();
  }

  int vis = 0;       // next visit to consume (uniform)
  float own = 0.f;   // S = 1: the butterfly's row sum of pass 1 (row 4·hw + (hl >> 2))

  // Pass 1 of tile it: Σx² of the CTA's slice per row, pushed to the cluster (mode 2); INREG: x into xk.
  auto pass1 = [&](int it, Vec16 (&xk)[INREG ? CB : 1][4]) {
    float ss[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll(INREG ? CB : 1)
    for (int b = 0; b < CB; ++b) {
      const int k = vis++;
      wait_visit(k);
      Vec16 xv[4];
      read_visit(k, xv);
      if constexpr (MODE == 2) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const float f = vec_get<bf16>(xv[i], e);
            ss[i] = fmaf(f, f, ss[i]);
          }
      }
      if constexpr (INREG) {
#pragma unroll
        for (int i = 0; i < 4; ++i) xk[b][i] = xv[i];
      }
      if constexpr (!INSLOT) release(k);  // the values are in registers (or consumed): the slot is free
    }
    if constexpr (MODE == 2) {
      const float sum = transpose_reduce4<false>(ss, hl);  // row 4·hw + (hl >> 2), lanes 16·half + 4R
      if constexpr (CLUSTER) {
        // Lane 2q + p sends rows 8w + 4p … 8w + 4p + 3 (held by lanes 16p + 4R) to CTA q.
        const int p = lane & 1, q = lane >> 1;
        float4 v;
        v.x = __shfl_sync(0xffffffffu, sum, 16 * p + 0);
        v.y = __shfl_sync(0xffffffffu, sum, 16 * p + 4);
        v.z = __shfl_sync(0xffffffffu, sum, 16 * p + 8);
        v.w = __shfl_sync(0xffffffffu, sum, 16 * p + 12);
        if (q < S)
          st_async16(recv + (((it & 1) * WARPS + warp) * S + rank) * 8 + 4 * p, v, rbar + (it & 1) * WARPS + warp,
                     static_cast<u32>(q));
      } else if constexpr (GX) {
        // Lanes j < 8 store row 8w + j's partial sum (held by lane 16·(j >> 2) + 4·(j & 3)), tagged with this launch.
        const int j = lane & 7;
        const float v = __shfl_sync(0xffffffffu, sum, 16 * (j >> 2) + 4 * (j & 3));
        if (lane < 8)
          stream_st_relaxed(sa.ws + (static_cast<i64>(item_tile(it)) * S + item_col(it) / C) * ROWS + 8 * warp + j,
                            stream_tagged(v, sa.tag));
      } else {
        own = sum;
      }
    }
  };
  // GX fallback: the partial sums of chunk q of tile it for rows 8w … 8w+7 computed here from x (the same
  // operations in the same order as the owner's pass 1, so the same bits); lane 16·(j >> 2) + 4·(j & 3) gets row j's.
  auto chunk_sum = [&](int it, int q) {
    const int m0 = tile_m0(it);
    const int valid = min(ROWS, a.M - m0);
    float ss[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
    for (int b = 0; b < CB; ++b)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = 4 * hw + i;
        const Vec16 xv = r < valid ? load16(xg + static_cast<i64>(m0 + r) * a.x_stride + q * C + b * 128 + c0)
                                   : Vec16{{0u, 0u, 0u, 0u}};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float f = vec_get<bf16>(xv, e);
          ss[i] = fmaf(f, f, ss[i]);
        }
      }
    return transpose_reduce4<false>(ss, hl);
  };

  // GX: the warp's S × 8 tagged partial sums of item it, pair (q, j) = idx = lane + 32k, loaded by poll_issue(it) and
  // checked by finish(it).
  constexpr int KQ = GX ? (S * 8 + 31) / 32 : 1;
  u64 got[KQ];
  auto poll_issue = [&](int it) {
    if constexpr (GX) {
      const u64* base = sa.ws + static_cast<i64>(item_tile(it)) * S * ROWS + 8 * warp;
#pragma unroll
      for (int k = 0; k < KQ; ++k) {
        const int idx = lane + 32 * k;
        got[k] = idx < S * 8 ? stream_ld_relaxed(base + (idx >> 3) * ROWS + (idx & 7)) : 0ull;
      }
    }
  };

  // r of the thread's 4 rows of tile it (mode 1: from rms_in).
  auto finish = [&](int it, float (&rv)[4]) {
    const int m0 = tile_m0(it);
    const int valid = min(ROWS, a.M - m0);
    const int j = lane & 7;  // this lane computes row 8w + j (lanes ≥ 8 duplicate)
    float rr;
    if constexpr (MODE == 2) {
      float t;
      if constexpr (CLUSTER) {
        u64* bar = rbar + (it & 1) * WARPS + warp;
        if (lane == 0) pipe_arrive_expect(bar, S * 32);
        pipe_mbar_wait(bar, static_cast<u32>(it >> 1) & 1u);
        const float* rc = recv + ((it & 1) * WARPS + warp) * S * 8 + j;
        t = 0.f;
#pragma unroll
        for (int q = 0; q < S; ++q) t += rc[q * 8];
      } else if constexpr (GX) {
        // The S × 8 tagged partial sums of the warp's rows, pair (q, j) = idx = lane + 32k; polled until every tag is
        // this launch's (a bounded wait: then the missing chunks are summed here, so no CTA depends on another CTA
        // being resident); then row j's in chunk order.
        // (The first loads were issued by poll_issue(it), before pass 1 of the next item.)
        const u64* base = sa.ws + static_cast<i64>(item_tile(it)) * S * ROWS + 8 * warp;
        bool ready[KQ];
#pragma unroll
        for (int k = 0; k < KQ; ++k) ready[k] = lane + 32 * k >= S * 8 || static_cast<u32>(got[k] >> 32) == sa.tag;
#pragma unroll 1
        for (int tries = 0;; ++tries) {
          bool mine = true;
#pragma unroll
          for (int k = 0; k < KQ; ++k) mine = mine && ready[k];
          if (__all_sync(0xffffffffu, mine)) break;
          if (tries == kRmsqStreamSpinLimit) {
#pragma unroll
            for (int k = 0; k < KQ; ++k) {
              const u32 ok = __ballot_sync(0xffffffffu, ready[k]);
#pragma unroll 1
              for (int q4 = 0; q4 < 4; ++q4) {
                const int q = 4 * k + q4;
                if (q >= S || ((ok >> (8 * q4)) & 0xffu) == 0xffu) continue;  // warp-uniform
                const float v = chunk_sum(it, q);
                const float w = __shfl_sync(0xffffffffu, v, 16 * (j >> 2) + 4 * (j & 3));
                if ((lane >> 3) == q4) got[k] = stream_tagged(w, sa.tag);
              }
            }
            break;
          }
          __nanosleep(64);
#pragma unroll
          for (int k = 0; k < KQ; ++k)
            if (!ready[k]) {
              const int idx = lane + 32 * k;
              got[k] = stream_ld_relaxed(base + (idx >> 3) * ROWS + (idx & 7));
              ready[k] = static_cast<u32>(got[k] >> 32) == sa.tag;
            }
        }
        // Row j's sum in a fixed order (the same in every CTA, so all get the same r): each lane adds its chunks
        // q = (lane >> 3) + 4k in k order, then the four lane groups pairwise (+ commutes: all lanes alike).
        t = 0.f;
#pragma unroll
        for (int k = 0; k < KQ; ++k)
          if (lane + 32 * k < S * 8) t += __uint_as_float(static_cast<u32>(got[k]));
        t += __shfl_xor_sync(0xffffffffu, t, 8);
        t += __shfl_xor_sync(0xffffffffu, t, 16);
      } else {
        t = __shfl_sync(0xffffffffu, own, 16 * (j >> 2) + 4 * (j & 3));
      }
      rr = 1.0f / sqrtf(t / static_cast<float>(N) + a.eps);
      if (item_col(it) == 0 && a.rms_out && lane < 8 && 8 * warp + j < valid) a.rms_out[m0 + 8 * warp + j] = rr;
      __syncwarp();  // the warp's reads of recv are done before its next push
    } else {
      rr = 8 * warp + j < valid ? a.rms_in[m0 + 8 * warp + j] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) rv[i] = __shfl_sync(0xffffffffu, rr, 4 * half + i);
  };

  // ---- pass 2 ----
  int nb = 0;        // blocks quantized so far (uniform): codes buffer nb & 1, column-max buffer nb % 3
  int cmi = 0;
  int prev_m0 = 0, prev_valid = 0, prev_col = -1;  // the block whose codes wait in buffer (nb − 1) & 1
  const bool aligned16 = (a.M % 16) == 0;
  const bool scale_aligned = (reinterpret_cast<unsigned long long>(a.qT_scale) & 15u) == 0u;
  // Warp w stores channels 8w … 8w+7 of the staged block, four per instruction: 8 lanes × 16 bytes a channel's 128
  // tokens (slot s of channel n was stored at s ^ (2·(n >> 3))).
  auto store_codes = [&](const u32* ct, int pm0, int pvalid, int pcol) {
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      const int n = warp * 8 + kk * 4 + (lane >> 3), jj = lane & 7;
      const int f = 2 * (n >> 3);
      Vec16 c = *reinterpret_cast<const Vec16*>(ct + n * 32 + 4 * (jj ^ (f >> 2)));
      if (f & 2) c = Vec16{{c.w[2], c.w[3], c.w[0], c.w[1]}};
      u8* dst = a.qT + static_cast<i64>(pcol + n) * a.M + pm0 + jj * 16;
      const int t0 = jj * 16;
      if (aligned16 && t0 + 16 <= pvalid) {
        store16(dst, c);
      } else {
        const u64 lo = c.w[0] | (static_cast<u64>(c.w[1]) << 32), hi = c.w[2] | (static_cast<u64>(c.w[3]) << 32);
        for (int bb = 0; bb < 16 && t0 + bb < pvalid; ++bb) dst[bb] = static_cast<u8>((bb < 8 ? lo : hi) >> ((bb & 7) * 8));
      }
    }
  };

  auto pass2 = [&](int it, Vec16 (&xk)[INREG ? CB : 1][4], const float (&rv)[4]) {
    const int m0 = tile_m0(it);
    const int valid = min(ROWS, a.M - m0);
    const i64 tb = item_tile(it);
#pragma unroll(INREG ? CB : 1)
    for (int b = 0; b < CB; ++b) {
      const int col = item_col(it) + b * 128;
      Vec16 xv[4];
      int k = 0;
      if constexpr (INREG) {
#pragma unroll
        for (int i = 0; i < 4; ++i) xv[i] = xk[b][i];
      } else if constexpr (INSLOT) {
        k = it * CB + b;
        read_visit(k, xv);
      } else {
        k = vis++;
        wait_visit(k);
        read_visit(k, xv);
      }
      float w8[8];
      if (W_F32) load_floats<float, 8>(a.w, col + c0, w8);
      else load_floats<bf16, 8>(a.w, col + c0, w8);
      float y[4][8];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 8; ++e) y[i][e] = __fmul_rn(__fmul_rn(vec_get<bf16>(xv[i], e), rv[i]), w8[e]);
      if constexpr (!INREG) release(k);  // y depends on the values: the slot is free

      // Row-wise blocks: lane 4R of each half-warp gets row R's amax, forms its scale, stores it; the quantizer
      // parameters come back by four broadcasts.
      if constexpr (MODE == 2) {
        float pm[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          pm[i] = 0.f;
#pragma unroll
          for (int e = 0; e < 8; ++e) pm[i] = fmaxf(pm[i], fabsf(y[i][e]));
        }
        const Quant<ROUND> rq(scale_of_max<ROUND>(transpose_reduce4<true>(pm, hl)));
        const int Rr = hl >> 2;
        {
          if ((hl & 3) == 0 && 4 * hw + Rr < valid)
            a.q_scale[static_cast<i64>(col / 128) * a.M + m0 + 4 * hw + Rr] = rq.s;
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float qp = __shfl_sync(0xffffffffu, qparam(rq), (lane & 16) | (i << 2));
            if (4 * hw + i < valid) {
              uint2 out;
              out.x = e4m3x4(qapply<ROUND>(y[i][0], qp), qapply<ROUND>(y[i][1], qp), qapply<ROUND>(y[i][2], qp),
                             qapply<ROUND>(y[i][3], qp));
              out.y = e4m3x4(qapply<ROUND>(y[i][4], qp), qapply<ROUND>(y[i][5], qp), qapply<ROUND>(y[i][6], qp),
                             qapply<ROUND>(y[i][7], qp));
              *reinterpret_cast<uint2*>(a.q + static_cast<i64>(m0 + 4 * hw + i) * N + col + c0) = out;
            }
          }
        }
      }

      // Column maxima into buffer cmi (the next one, last read two blocks ago, is cleared here), one barrier.
      u32* cm = colmax + cmi * 132;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        float m = 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i) m = fmaxf(m, fabsf(y[i][e]));
        atomicMax(&cm[cs0 + e], __float_as_uint(m));  // both half-warps: a 2-way conflict, no shuffle
      }
      if (tid < 132) colmax[(cmi == 2 ? 0 : cmi + 1) * 132 + tid] = 0u;
      __syncthreads();
      if (prev_col >= 0) store_codes(codes + ((nb + 1) & 1) * 4096, prev_m0, prev_valid, prev_col);

      // Column quantizers of channels c0 … c0+7: each half-warp forms four, the other four come by a shuffle.
      float qp[8], ms[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const Quant<ROUND> cq(scale_of_max<ROUND>(__uint_as_float(cm[cs0 + 4 * half + e])));
        ms[e] = cq.s;
        const float mine = qparam(cq), other = __shfl_xor_sync(0xffffffffu, mine, 16);
        qp[e] = half ? other : mine;
        qp[4 + e] = half ? mine : other;
      }
      if (warp == 0) {  // half-warp 0 writes the block's 128 column scales
        float sc[8];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float other = __shfl_xor_sync(0xffffffffu, ms[e], 16);
          sc[e] = half ? other : ms[e];
          sc[4 + e] = half ? ms[e] : other;
        }
        if (half == 0) {
          float* dst = a.qT_scale + tb * N + col + c0;
          if (scale_aligned) {
            *reinterpret_cast<float4*>(dst) = make_float4(sc[0], sc[1], sc[2], sc[3]);
            *reinterpret_cast<float4*>(dst + 4) = make_float4(sc[4], sc[5], sc[6], sc[7]);
          } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) dst[e] = sc[e];
          }
        }
      }
      u32* ct = codes + (nb & 1) * 4096;
#pragma unroll
      for (int e = 0; e < 8; ++e)
        ct[(c0 + e) * 32 + (hw ^ (2 * hl))] = e4m3x4(qapply<ROUND>(y[0][e], qp[e]), qapply<ROUND>(y[1][e], qp[e]),
                                                     qapply<ROUND>(y[2][e], qp[e]), qapply<ROUND>(y[3][e], qp[e]));
      prev_m0 = m0;
      prev_valid = valid;
      prev_col = col;
      ++nb;
      cmi = cmi == 2 ? 0 : cmi + 1;
    }
  };

  Vec16 xa[INREG ? CB : 1][4], xb[INREG && OVERLAP ? CB : 1][4];
  float rv[4];
  if constexpr (OVERLAP) {
    pass1(0, xa);
#pragma unroll 1
    for (int it = 0; it < T; ++it) {
      // Clusters: the finish of item it before the pushes of item it+1 (the receive buffers are double-buffered).
      // GX: the workspace is not reused, so the poll of item it flies during pass 1 of item it+1.
      if constexpr (GX) poll_issue(it);
      else finish(it, rv);
      if (it + 1 < T) {
        if constexpr (INREG) pass1(it + 1, xb);
        else pass1(it + 1, xa);
      }
      if constexpr (GX) finish(it, rv);
      pass2(it, xa, rv);
      if constexpr (INREG) {
#pragma unroll
        for (int b = 0; b < CB; ++b)
#pragma unroll
          for (int i = 0; i < 4; ++i) xa[b][i] = xb[b][i];
      }
    }
  } else {
#pragma unroll 1
    for (int it = 0; it < T; ++it) {
      pass1(it, xa);
      poll_issue(it);
      finish(it, rv);
      pass2(it, xa, rv);
    }
  }
  __syncthreads();  // the last block's codes are complete
  store_codes(codes + ((nb + 1) & 1) * 4096, prev_m0, prev_valid, prev_col);
  if constexpr (CLUSTER) cluster_sync();  // no CTA leaves while a peer may still push into it
}

}  // namespace kiln
