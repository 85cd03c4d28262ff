// kiln/rms_norm_block_quant_slice.cuh — the slice kernel of rms_norm_block_quant (mode 2: row-major and transposed
// e4m3 codes, 1×128 scales both ways), config exchange 8 (session 7).
//
// x crosses DRAM → SM once and stays in shared memory between the Σx² pass and the quantization: each 128 × 128
// block of an item lands in a ring slot by one 2-D TMA copy on its own mbarrier (rows past M zero-filled by the
// tensor map), and the quantization reads it from there. Per block (all 512 threads; warp w owns rows 8w … 8w+7,
// half-warp hw = 2w + half rows 4·hw … 4·hw+3, lane hl = lane & 15 channels 8·hl … 8·hl+7: block_quant_tile.cuh's
// layout): y = (x·r)·w (fp32, this order) held in 32 registers for both quantizations; column maxima by shared
// atomics into one of three rotating buffers, the row-wise codes by the transposing butterfly, ONE block barrier
// (after which every thread has read the slot: thread 0 refills it at once), the column quantizers, the codes staged
// in one of two buffers and stored as 128-byte qT rows after the next block's barrier; a full-tile path (all 128
// rows, M % 16 = 0) without per-row predicates.
// History (bench/NOTES.md, session 7): the first version (exchange 7) kept a whole 128-token tile resident in a
// persistent cluster of S CTAs a tile (the row sums pushed through DSMEM): 25 % fewer instructions than the stream
// kernel, but a cluster sits in one GPC and an H100 holds only 7 clusters of 14 (98 of 132 SMs) or 15 of 8 / 30 of 4
// (120): 102 µs at N = 7168 against the stream kernel's 96, 30.6 at 2048 against 29.9. Removed, with its tensor-core
// Σx² (slower) and evict-first loads (slower). This walk drops the cluster.
#pragma once
#include "kiln/block_quant_tile.cuh"
#include "kiln/mbarrier.cuh"
#include "kiln/rms_norm_block_quant.cuh"
#include "kiln/rms_norm_block_quant_slice_args.h"

namespace kiln {
namespace rmsq_slice {
// The quantizer of a block with this amax and its application, as block_quant_tile.cuh's stages take them (ROUND:
// the reciprocal from the scale's bits, else the scale and a division) — the stream kernel's rule.
template <bool ROUND>
struct MakeQuant {
  __device__ __forceinline__ bqt::TileQuant operator()(float amax) const {
    const rmsq::Quant<ROUND> q(rmsq::scale_of_max<ROUND>(amax));
    return {q.s, ROUND ? q.inv : q.s};
  }
};
template <bool ROUND>
struct Apply {
  __device__ __forceinline__ float operator()(float y, float p) const {
    return ROUND ? __fmul_rn(y, p) : __fdiv_rn(y, p);
  }
};
// The staged transposed codes of a block (tokens m0 …, `valid` of them; channels col …; bqt::stage_codes' swizzled
// layout) out to qT: warp w stores channels 8w … 8w+7, four per instruction, 8 lanes × 16 bytes a channel's 128
// tokens (byte-wise past `valid` or when M % 16 != 0; `full`: 128 tokens and M % 16 == 0, no check).
__device__ __forceinline__ void store_codes(const RmsNormBlockQuantArgs& a, const u32* ct, int m0, int valid, int col,
                                            int warp, int lane, bool aligned16, bool full = false) {
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    const int n = warp * 8 + kk * 4 + (lane >> 3), jj = lane & 7;
    const int f = 2 * (n >> 3);
    Vec16 c = *reinterpret_cast<const Vec16*>(ct + n * 32 + 4 * (jj ^ (f >> 2)));
    if (f & 2) c = Vec16{{c.w[2], c.w[3], c.w[0], c.w[1]}};
    u8* dst = a.qT + static_cast<i64>(col + n) * a.M + m0 + jj * 16;
    const int t0 = jj * 16;
    if (full || (aligned16 && t0 + 16 <= valid)) {
      store16(dst, c);
    } else {
      const u64 lo = c.w[0] | (static_cast<u64>(c.w[1]) << 32), hi = c.w[2] | (static_cast<u64>(c.w[3]) << 32);
      for (int bb = 0; bb < 16 && t0 + bb < valid; ++bb) dst[bb] = static_cast<u8>((bb < 8 ? lo : hi) >> ((bb & 7) * 8));
    }
  }
}
// A compile-time flag as a value (generic lambdas' variants).
template <bool B>
struct Flag {
  static constexpr bool value = B;
};
}  // namespace rmsq_slice

// ---------------------------------------------------------------------------------------------------------------------
// The kernel (config exchange 8): no clusters. A persistent grid of P CTAs (one an SM) takes the items u = b, b + P,
// … of tiles × S items (tile u / S, C = 128·SB columns at (u % S)·C);
// each item's SB blocks land in a ring of R ≥ 2·SB slots (two items), so item it + 1's Σx² pass runs before item
// it's quantization (from item 1 on) and hides the exchange: each warp stores its 8 rows' partial sums as {fp32, tag}
// pairs in the workspace (one 8-byte store), loads the S × 8 pairs of item it's rows before that pass and checks
// them after it (the stream kernel's protocol, rms_norm_block_quant_stream.cuh: the tag is unique to the launch; a
// pair still stale after kRmsqStreamSpinLimit polls is summed here from x with the pass's operations in its order,
// so nothing depends on another CTA being resident). The weights [N] are staged once as fp32 — except with MINB = 2
// (two CTAs an SM, 64 registers: the shared memory of two rings), where each block's 8 weights a thread come from
// global memory (L1).
// EARLY: the next item's pairs are loaded after the first block barrier of this item's quantization (the other CTAs
// stored them before their own quantization of this round), so their L2 round trip hides behind this item's blocks
// instead of one Σx² pass; a pair not yet tagged is polled again in finish.
template <int N, int SB, int R, bool ROUND, bool W_F32, int MINB = 1, bool EARLY = false>
__global__ void __launch_bounds__(kRmsqSliceThreads, MINB)
    rms_norm_block_quant_slice_global_kernel(const __grid_constant__ RmsqSliceGlobalArgs sa) {
  using namespace rmsq_slice;
  const RmsNormBlockQuantArgs& a = sa.a;
  constexpr int ROWS = 128, C = SB * 128, S = N / C, BLOCK = 128 * 128;
  static_assert(N % C == 0 && S >= 2, "at least two chunks a row");
  static_assert(R >= 2 * SB, "the ring holds two items");
  constexpr bool WSM = MINB == 1;  // weights staged in shared memory
  static_assert(rms_norm_block_quant_slice_global_smem_bytes(N, R, WSM) <= 227 * 1024 / MINB, "shared memory");

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  bf16* ring = reinterpret_cast<bf16*>(smem_raw);
  u32* codes = reinterpret_cast<u32*>(smem_raw + R * kRmsqSliceBlockBytes);  // [2][128 channels][32 slots]
  u32* colmax = codes + 2 * 128 * 32;                                       // [3][132]
  float* wsm = reinterpret_cast<float*>(colmax + 3 * 132);                  // [N] (WSM)
  u64* full = reinterpret_cast<u64*>(wsm + (WSM ? N : 0));                  // [R]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int hl = lane & 15, half = lane >> 4;
  const int hw = warp * 2 + half;  // rows 4·hw … 4·hw+3
  const int c0 = hl * 8;           // channels c0 … c0+7 of a block
  const int cs0 = c0 + (c0 >> 5);  // column-max slot of channel c0
  const int P = static_cast<int>(gridDim.x), b0 = static_cast<int>(blockIdx.x);
  const int tiles = (a.M + ROWS - 1) / ROWS;
  const int T = b0 < tiles * S ? (tiles * S - 1 - b0) / P + 1 : 0;  // this CTA's items
  const int nvis = T * SB;
  const bf16* xg = static_cast<const bf16*>(a.x);
  auto item_tile = [&](int it) { return (b0 + it * P) / S; };
  auto item_chunk = [&](int it) { return (b0 + it * P) % S; };

  auto issue = [&](int k) {  // visit k into slot k % R (thread 0)
    const int it = k / SB, b = k - it * SB, slot = k % R;
    const u32 bar = smem_u32(full + slot);
    mbar_arrive_expect_tx(bar, kRmsqSliceBlockBytes);
    const u32 dst = smem_u32(ring + slot * BLOCK);
    const int col = item_chunk(it) * C + b * 128, row = item_tile(it) * ROWS;
    tma_load_2d(dst, &sa.tmx, bar, col, row);
  };
  if (tid == 0) {
    for (int s = 0; s < R; ++s) mbar_init(full + s, 1);
    fence_mbar_init();
    prefetch_tmap(&sa.tmx);
    for (int k = 0; k < min(R, nvis); ++k) issue(k);
  }
  if constexpr (WSM)
    for (int i = tid; i < N; i += kRmsqSliceThreads) {
      float wv[1];
      if (W_F32) load_floats<float, 1>(a.w, i, wv);
      else load_floats<bf16, 1>(a.w, i, wv);
      wsm[i] = wv[0];
    }
  for (int i = tid; i < 3 * 132; i += kRmsqSliceThreads) colmax[i] = 0u;
  __syncthreads();  // barriers initialized; weights and column maxima visible

  int s_slot = 0, q_slot = 0;
  u32 s_par = 0;
  auto slot_rows = [&](int slot) -> const bf16* { return ring + slot * BLOCK + 4 * hw * 128 + c0; };

  // Pass 1 of item it: Σx² of the item's chunk per row (fma in column order, blocks in order, the transposing
  // butterfly), stored tagged: lanes j < 8 store row 8w + j's (held by lane 16·(j >> 2) + 4·(j & 3)).
  auto pass1 = [&](int it) {
    float ss[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
    for (int b = 0; b < SB; ++b) {
      mbar_wait(smem_u32(full + s_slot), s_par);
      const bf16* s = slot_rows(s_slot);
      if (++s_slot == R) {
        s_slot = 0;
        s_par ^= 1u;
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) rmsq::sum_squares8(*reinterpret_cast<const Vec16*>(s + i * 128), ss[i]);
    }
    const float sum = bqt::transpose_reduce4<false>(ss, hl);
    const int j = lane & 7;
    const float v = __shfl_sync(0xffffffffu, sum, 16 * (j >> 2) + 4 * (j & 3));
    if (lane < 8)
      rmsq::stream_st_relaxed(sa.ws + (static_cast<i64>(item_tile(it)) * S + item_chunk(it)) * ROWS + 8 * warp + j,
                              rmsq::stream_tagged(v, sa.tag));
  };
  // The fallback: chunk q of item it's tile, rows 8w … 8w+7, from x with pass 1's operations in its order (the same
  // bits); lane 16·(j >> 2) + 4·(j & 3) gets row j's.
  auto chunk_sum = [&](int it, int q) {
    const int m0 = item_tile(it) * ROWS, valid = min(ROWS, a.M - m0);
    float ss[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
    for (int b = 0; b < SB; ++b)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = 4 * hw + i;
        const Vec16 xv = r < valid ? load16(xg + static_cast<i64>(m0 + r) * a.x_stride + q * C + b * 128 + c0)
                                   : Vec16{{0u, 0u, 0u, 0u}};
        rmsq::sum_squares8(xv, ss[i]);
      }
    return bqt::transpose_reduce4<false>(ss, hl);
  };
  // The warp's S × 8 pairs of item it: pair idx = lane + 32k (chunk idx >> 3, row 8w + (idx & 7)).
  constexpr int KQ = (S * 8 + 31) / 32;
  u64 got[KQ];
  auto poll_issue = [&](int it) {
    const u64* base = sa.ws + static_cast<i64>(item_tile(it)) * S * ROWS + 8 * warp;
#pragma unroll
    for (int k = 0; k < KQ; ++k) {
      const int idx = lane + 32 * k;
      got[k] = idx < S * 8 ? rmsq::stream_ld_relaxed(base + (idx >> 3) * ROWS + (idx & 7)) : 0ull;
    }
  };
  auto finish = [&](int it, int m0, int valid, float (&rv)[4]) {
    const int j = lane & 7;
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
            if ((lane >> 3) == q4) got[k] = rmsq::stream_tagged(w, sa.tag);
          }
        }
        break;
      }
      __nanosleep(64);
#pragma unroll
      for (int k = 0; k < KQ; ++k)
        if (!ready[k]) {
          const int idx = lane + 32 * k;
          got[k] = rmsq::stream_ld_relaxed(base + (idx >> 3) * ROWS + (idx & 7));
          ready[k] = static_cast<u32>(got[k] >> 32) == sa.tag;
        }
    }
    // Row j's sum in a fixed order (every CTA alike): chunks (lane >> 3) + 4k in k order, then the lane groups.
    float t = 0.f;
#pragma unroll
    for (int k = 0; k < KQ; ++k)
      if (lane + 32 * k < S * 8) t += __uint_as_float(static_cast<u32>(got[k]));
    t += __shfl_xor_sync(0xffffffffu, t, 8);
    t += __shfl_xor_sync(0xffffffffu, t, 16);
    const float rr = 1.0f / sqrtf(t / static_cast<float>(N) + a.eps);
    if (item_chunk(it) == 0 && a.rms_out && lane < 8 && 8 * warp + j < valid) a.rms_out[m0 + 8 * warp + j] = rr;
#pragma unroll
    for (int i = 0; i < 4; ++i) rv[i] = __shfl_sync(0xffffffffu, rr, 4 * half + i);
  };

  int nb = 0, cmi = 0;
  int prev_m0 = 0, prev_valid = 0, prev_col = -1;
  const bool aligned16 = (a.M % 16) == 0;
  const bool scale_aligned = (reinterpret_cast<unsigned long long>(a.qT_scale) & 15u) == 0u;

  if (T > 0) pass1(0);
#pragma unroll 1
  for (int it = 0; it < T; ++it) {
    const int tile = item_tile(it), col_base = item_chunk(it) * C;
    const int m0 = tile * ROWS, valid = min(ROWS, a.M - m0);
    if (!EARLY || it == 0) poll_issue(it);
    // The next item's Σx² before this item's exchange is checked — except for the first item, whose exchange waits
    // only for the other CTAs' first blocks, while item 1's blocks land behind the whole start burst: its pass 1
    // follows item 0's quantization instead.
    if (it > 0 && it + 1 < T) pass1(it + 1);
    float rv[4];
    finish(it, m0, valid, rv);
    auto quant_item = [&](auto full_tag) {
      constexpr bool FULL = decltype(full_tag)::value;
#pragma unroll 1
      for (int b = 0; b < SB; ++b) {
        const int k = it * SB + b, col = col_base + b * 128;
        const bf16* s = slot_rows(q_slot);
        Vec16 xv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) xv[i] = *reinterpret_cast<const Vec16*>(s + i * 128);
        float w8[8];
        if constexpr (WSM) {
          const float4 w0 = *reinterpret_cast<const float4*>(wsm + col + c0);
          const float4 w1 = *reinterpret_cast<const float4*>(wsm + col + c0 + 4);
          w8[0] = w0.x, w8[1] = w0.y, w8[2] = w0.z, w8[3] = w0.w, w8[4] = w1.x, w8[5] = w1.y, w8[6] = w1.z,
          w8[7] = w1.w;
        } else if constexpr (W_F32) {
          load_floats<float, 8>(a.w, col + c0, w8);
        } else {
          load_floats<bf16, 8>(a.w, col + c0, w8);
        }
        float y[4][8];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int e = 0; e < 8; ++e) y[i][e] = __fmul_rn(__fmul_rn(vec_get<bf16>(xv[i], e), rv[i]), w8[e]);
        u32* cm = colmax + cmi * 132;
        bqt::col_max(cm, y, cs0);
        if (tid < 132) colmax[(cmi == 2 ? 0 : cmi + 1) * 132 + tid] = 0u;
        bqt::row_codes(y, hl, lane, FULL ? 4 : valid - 4 * hw,
                       a.q + static_cast<i64>(m0 + 4 * hw) * N + col + c0, N,
                       a.q_scale + static_cast<i64>(col / 128) * a.M + m0 + 4 * hw + (hl >> 2), MakeQuant<ROUND>{},
                       Apply<ROUND>{});
        __syncthreads();
        if (tid == 0 && k + R < nvis) issue(k + R);  // (slot q_slot: every thread has read it)
        if (EARLY && b == 0 && it + 1 < T) poll_issue(it + 1);
        if (++q_slot == R) q_slot = 0;
        if (prev_col >= 0)
          store_codes(a, codes + ((nb + 1) & 1) * 4096, prev_m0, prev_valid, prev_col, warp, lane, aligned16, FULL);
        float qp[8], sc[8];
        bqt::col_quantizers(cm, cs0, half, warp == 0, qp, sc, MakeQuant<ROUND>{});
        if (warp == 0 && half == 0)
          bqt::store_scales8(a.qT_scale + static_cast<i64>(tile) * N + col + c0, sc, scale_aligned);
        bqt::stage_codes(codes + (nb & 1) * 4096, y, qp, c0, hw, hl, Apply<ROUND>{});
        prev_m0 = m0;
        prev_valid = valid;
        prev_col = col;
        ++nb;
        cmi = cmi == 2 ? 0 : cmi + 1;
      }
    };
    if (valid == ROWS && aligned16) quant_item(Flag<true>{});
    else quant_item(Flag<false>{});
    if (it == 0 && T > 1) pass1(1);
  }
  __syncthreads();
  if (prev_col >= 0) store_codes(a, codes + ((nb + 1) & 1) * 4096, prev_m0, prev_valid, prev_col, warp, lane, aligned16);
}

}  // namespace kiln
