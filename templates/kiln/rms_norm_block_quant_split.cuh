// kiln/rms_norm_block_quant_split.cuh — the split-role kernel of rms_norm_block_quant (mode 2): the stream kernel's
// GLOBAL walk and Σx² exchange (rms_norm_block_quant_stream.cuh) with pass 2 done by two warp groups at once, each
// reading the same ring slot in the layout that suits its quantization and computing y = (x·r)·w itself (fp32, this
// order):
//  * ROW role (warps 0 … 7): lane 4c + g holds rows 16w + 4g + i (i < 4) × channels 16c … 16c+15 of the block (64
//    values). A row's amax: 15 maxima in-thread + 3 shuffles (xor 4, 8, 16: the 8 lanes of the row); each lane forms
//    its rows' quantizers, a row's 16 codes leave as one 16-byte store (8 lanes: 128 contiguous bytes), lanes c < 4
//    store the scale of row 4g + c (16 consecutive floats a warp).
//  * COLUMN role (warps 8 … 15): lane 8q + l holds rows 16l … 16l+15 × channels 16w' + 4q … +3 (w' = w − 8). A
//    column's amax: 15 maxima in-thread + 3 shuffles (xor 1, 2, 4: the 8 lanes of the columns); a column's 16 codes
//    leave as one 16-byte store into qT's row (8 lanes: 128 contiguous bytes), lane l = 0 stores the 4 scales.
//  No shared atomics, no staging of codes, no barrier between the two quantizations.
// Per item (128 tokens × C = 128·CB columns; item u = b, b + P, … of the tiles × S items, S = N / C ≥ 2):
//  * the ring: slots for THREE items (3·CB blocks of 32 KiB, swizzled: rmsq_split_slot_offset). Each thread copies the
//    16-byte pieces of rows 4·hw … 4·hw+3, chunk hl (the stream kernel's 4 × 8 layout) with cp.async, one group a
//    block (every refill commits CB groups, empty past the last item: constant waits);
//  * pass 1 (all 16 warps, the stream kernel's layout and order: Σx² of the thread's 4 rows × 8 channels, the
//    transposing butterfly, 8 tagged partial sums a warp into the workspace) of item it + 1 runs before item it's
//    quantization, and item it's polls fly during it;
//  * finish: the stream kernel's fixed-order sum of the S partial sums (bounded poll, local fallback from x), r of
//    the item's 128 rows into shared memory (double-buffered by item parity); ONE block barrier an item: after it
//    every thread's copies of item it are visible to all, r is published, and every thread has finished pass 2 of
//    item it − 1, so each thread refills item it − 1's slots with item it + 2 (an item and a half of lead);
//  * pass 2 of item it: both roles, each for the CB blocks.
#pragma once
#include "kiln/rms_norm_block_quant_split_args.h"
#include "kiln/rms_norm_block_quant_stream.cuh"

namespace kiln {
namespace rmsq {
// 16 bytes global → shared (32-bit shared address); `valid` false zero-fills without reading.
__device__ __forceinline__ void split_cp16(u32 dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
// The maximum of |v(0)| … |v(15)| from 0, ignoring NaN — the value of the chain fmaxf(…fmaxf(0, |v(0)|)…, |v(15)|)
// (max is exact; a NaN pair stays NaN only until it meets a number, and the final max with 0 turns an all-NaN set
// into the chain's 0) — as a tree of depth 5 instead of a chain of 16 (latency).
template <class F>
__device__ __forceinline__ float split_amax16(F v) {
  float t[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) t[k] = fmaxf(fabsf(v(2 * k)), fabsf(v(2 * k + 1)));
#pragma unroll
  for (int k = 0; k < 4; ++k) t[k] = fmaxf(t[k], t[k + 4]);
  t[0] = fmaxf(t[0], t[2]);
  t[1] = fmaxf(t[1], t[3]);
  return fmaxf(fmaxf(t[0], t[1]), 0.0f);
}
// Low / high bf16 of a 32-bit word as fp32.
__device__ __forceinline__ float bf16_lo(u32 w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(u32 w) { return __uint_as_float(w & 0xffff0000u); }
}  // namespace rmsq

// V: the config's overlap field as variant bits: 1 the base (always set); 64 EP (the next item's partial-sum polls issued at the start of
// the item's last pass-2 block instead of after it, so they return during the block: the stream kernel's early poll);
// 128 R7 (CB = 2: a ring of 7 block slots instead of 6 — visit v in slot v % 7 — and after each item's barrier every
// free slot is refilled, so 3 blocks are in flight instead of 2); 256 TRACE (measurement only, not a search-space
// point: thread 0 writes the stream kernel's phase records, kRmsqStreamTrace: 1 item's first block landed, 2 its pass
// 1 done, 3 its r ready (after the barrier), 4 its pass 2 done (thread 0: the row role), 5 the CTA's end); 512 FIRST
// (item 0 quantized before item 1's pass 1: the SMs start quantizing once item 0 — not items 0 and 1 — has landed
// everywhere; item 1's exchange then waits in the open); 1024 START (only item 0's blocks requested at first, item 1's
// once item 0's pass 1 is done: 8.4 MB instead of 17 MB in the first burst).
// (Session 8 also measured, and removed: all three items requested at the start, the tensor-core Σx² — the diagonal
// of X·Xᵀ by ldmatrix + mma — and y computed once by the row role and handed to the column role through an fp32
// buffer (one block an item only; with the column role doing the copies and pass 1 too): bench/NOTES.md.)
template <int N, int CB, bool ROUND, bool W_F32, int V = 1>
__global__ void __launch_bounds__(kRmsqSplitThreads, 1) rms_norm_block_quant_split_kernel(const RmsqStreamArgs sa) {
  constexpr bool EP = (V & 64) != 0, TRACE = (V & 256) != 0, FIRST = (V & 512) != 0, START = (V & 1024) != 0;
  using namespace rmsq;
  const RmsNormBlockQuantArgs& a = sa.a;
  constexpr bool RING7 = (V & 128) != 0;
  static_assert(!RING7 || CB == 2, "R7: two blocks an item");
  constexpr int ROWS = 128, C = CB * 128, S = N / C, R = RING7 ? 7 : 3 * CB;  // R: block slots
  constexpr int BLOCK_BYTES = ROWS * 128 * 2;
  static_assert(N % C == 0 && S > 1, "two or more chunks a row (the exchange goes through the workspace)");
  static_assert(kRmsqSplitThreads == 512, "16 warps: 8 a role");
  using Make = typename QuantOf<ROUND, true>::type;
  const Apply<ROUND> apply{};

  extern __shared__ __align__(128) unsigned char smem_raw[];
  const u32 ring_s = smem_u32(smem_raw);
  float* rsh = reinterpret_cast<float*>(smem_raw + R * BLOCK_BYTES);  // [2][128]

  // (warp from a shuffle: provably warp-uniform, so the role branches need no divergence handling around shuffles)
  const int tid = threadIdx.x, warp = __shfl_sync(0xffffffffu, tid >> 5, 0), lane = tid & 31;
  const int hl = lane & 15, half = lane >> 4;
  const int hw = warp * 2 + half;  // pass 1 / copies: rows 4·hw … 4·hw+3, chunk hl
  const int c0 = hl * 8;
  const int P = static_cast<int>(gridDim.x), b0 = static_cast<int>(blockIdx.x);
  u64 tr_t0 = 0;
  int tr_n = 2;
  auto mark = [&](u64 kind, int item) {
    if constexpr (TRACE) {
      if (tid == 0 && tr_n < kRmsqStreamTraceSlots)
        sa.trace[static_cast<i64>(b0) * kRmsqStreamTraceSlots + tr_n++] =
            (kind << 48) | (static_cast<u64>(item & 0xff) << 40) | (globaltimer_ns() - tr_t0);
    }
  };
  if constexpr (TRACE) {
    if (tid == 0) {
      tr_t0 = globaltimer_ns();
      u32 smid;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
      sa.trace[static_cast<i64>(b0) * kRmsqStreamTraceSlots] = tr_t0;
      sa.trace[static_cast<i64>(b0) * kRmsqStreamTraceSlots + 1] = smid;
    }
  }
  const int tiles = (a.M + ROWS - 1) / ROWS;
  const int T = (tiles * S - 1 - b0) / P + 1;  // this CTA's items (the host launches P ≤ tiles·S CTAs)
  const int dT = P / S, dC = P % S;
  auto step = [&](int& t, int& c) {
    t += dT;
    c += dC;
    if (c >= S) {
      c -= S;
      ++t;
    }
  };
  // Item it's (tile, chunk) and item it + 1's.
  int cur_tile = b0 / S, cur_chunk = b0 % S, nxt_tile = cur_tile, nxt_chunk = cur_chunk;
  step(nxt_tile, nxt_chunk);
  const bf16* xg = static_cast<const bf16*>(a.x);
  const i64 xs = a.x_stride;

  // ---- the ring: visit v (block v % CB of item v / CB) in slot v % R; this thread's pieces at cp_off (+ 256 a row) ----
  const int cp_row = 4 * hw;
  const u32 cp_off = static_cast<u32>(rmsq_split_slot_offset(cp_row, hl));
  const bf16* const xthr = xg + static_cast<i64>(cp_row) * xs + c0;
  // The next visit: block iss_b of item iss_item into slot iss_slot (visit v = item·CB + b in slot v % R).
  int iss_vis = 0, iss_b = 0, iss_slot = 0;
  int iss_item = 0, iss_chunk = b0 % S, iss_rows = a.M - (b0 / S) * ROWS - cp_row;
  i64 iss_off = static_cast<i64>(b0 / S) * ROWS * xs + iss_chunk * C;
  auto issue_visit = [&]() {  // one block, one group (an empty group past the last item)
    if (iss_item < T) {
      const bf16* src = xthr + iss_off + iss_b * 128;
      const u32 dst = ring_s + iss_slot * BLOCK_BYTES + cp_off;
      if (iss_rows >= 4) {
#pragma unroll
        for (int i = 0; i < 4; ++i) split_cp16(dst + i * 256, src + i * xs, true);
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const bool ok = i < iss_rows;  // rows past M: zero-filled, nothing read
          split_cp16(dst + i * 256, ok ? src + i * xs : static_cast<const void*>(xg), ok);
        }
      }
    }
    cp_async_commit();
    ++iss_vis;
    iss_slot = iss_slot == R - 1 ? 0 : iss_slot + 1;
    if (++iss_b < CB) return;
    iss_b = 0;
    ++iss_item;
    iss_rows -= dT * ROWS;
    iss_chunk += dC;
    iss_off += static_cast<i64>(dT) * ROWS * xs + dC * C;
    if (iss_chunk >= S) {
      iss_chunk -= S;
      iss_rows -= ROWS;
      iss_off += static_cast<i64>(ROWS) * xs - S * C;
    }
  };
  constexpr int I0 = 2;  // items requested at the start
#pragma unroll 1
  for (int k = 0; k < (START ? 1 : I0) * CB; ++k) issue_visit();  // (START: item 1 after item 0's pass 1)
  // Slot of block b of the item whose block 0 is in slot s0.
  auto slot_of = [](int s0, int b) { return s0 + b < R ? s0 + b : s0 + b - R; };

  // ---- pass 1: Σx² of item (tile, chunk) whose block 0 is in slot s0, tagged into the workspace. PB: after block
  // b's wait at most PB − b newer groups may be pending. ----
  auto pass1 = [&](int tile, int chunk, int s0, auto pb, int item) {
    constexpr int PB = decltype(pb)::value;
    float ss[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int b = 0; b < CB; ++b) {
      cp_async_wait_group_dyn(PB - b);
      if (b == 0) mark(1, item);
      const unsigned char* s = smem_raw + slot_of(s0, b) * BLOCK_BYTES + cp_off;
#pragma unroll
      for (int i = 0; i < 4; ++i) sum_squares8(*reinterpret_cast<const Vec16*>(s + i * 256), ss[i]);
    }
    const float sum = transpose_reduce4<false>(ss, hl);  // row 4·hw + (hl >> 2), lanes 16·half + 4R
    const int j = lane & 7;
    const float v = __shfl_sync(0xffffffffu, sum, 16 * (j >> 2) + 4 * (j & 3));
    if (lane < 8)
      stream_st_relaxed(sa.ws + (static_cast<i64>(tile) * S + chunk) * ROWS + 8 * warp + j, stream_tagged(v, sa.tag));
    mark(2, item);
  };
  // The fallback: chunk q's partial sums of rows 8w … 8w+7 of `tile` from x (pass 1's operations in its order);
  // lane 16·(j >> 2) + 4·(j & 3) gets row j's.
  auto chunk_sum = [&](int tile, int q) {
    const int m0 = tile * ROWS;
    const int valid = min(ROWS, a.M - m0);
    float ss[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
    for (int b = 0; b < CB; ++b)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = 4 * hw + i;
        const Vec16 xv = r < valid ? load16(xg + static_cast<i64>(m0 + r) * xs + q * C + b * 128 + c0)
                                   : Vec16{{0u, 0u, 0u, 0u}};
        sum_squares8(xv, ss[i]);
      }
    return transpose_reduce4<false>(ss, hl);
  };
  constexpr int KQ = (S * 8 + 31) / 32;
  u64 got[KQ];
  auto poll_issue = [&](int tile) {
    const u64* base = sa.ws + static_cast<i64>(tile) * S * ROWS + 8 * warp;
#pragma unroll
    for (int k = 0; k < KQ; ++k) {
      const int idx = lane + 32 * k;
      got[k] = idx < S * 8 ? stream_ld_relaxed(base + (idx >> 3) * ROWS + (idx & 7)) : 0ull;
    }
  };
  // r of rows 8w … 8w+7 of item (tile, chunk) into rsh[buf] (and rms_out by chunk 0).
  auto finish = [&](int tile, int chunk, float* rbuf) {
    const int m0 = tile * ROWS;
    const int valid = min(ROWS, a.M - m0);
    const int j = lane & 7;
    const u64* base = sa.ws + static_cast<i64>(tile) * S * ROWS + 8 * warp;
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
            const float v = chunk_sum(tile, q);
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
    // Row j's sum in the stream kernel's fixed order (the same in every CTA).
    float t = 0.f;
#pragma unroll
    for (int k = 0; k < KQ; ++k)
      if (lane + 32 * k < S * 8) t += __uint_as_float(static_cast<u32>(got[k]));
    t += __shfl_xor_sync(0xffffffffu, t, 8);
    t += __shfl_xor_sync(0xffffffffu, t, 16);
    const float rr = 1.0f / sqrtf(t / static_cast<float>(N) + a.eps);
    if (lane < 8) {
      rbuf[8 * warp + j] = rr;
      if (chunk == 0 && a.rms_out && 8 * warp + j < valid) a.rms_out[m0 + 8 * warp + j] = rr;
    }
  };

  // ---- pass 2 ----
  const bool row_role = warp < 8;
  const int wr = warp & 7;
  // ROW role: c = lane >> 2 (channels 16c …), g = lane & 3 (rows 16·wr + 4g + i).
  const int rc = lane >> 2, rg = lane & 3;
  const int rrow0 = 16 * wr + 4 * rg;
  // COLUMN role: q = lane >> 3 (channels 16·wr + 4q …), l = lane & 7 (rows 16l …).
  const int cq = lane >> 3, cl = lane & 7;
  const int ch0 = 16 * wr + 4 * cq;
  // Per-thread slot offsets: the row role's two chunks (rows + 256 i), the column role's four row groups of 4.
  u32 xo[4];
  if (row_role) {
    xo[0] = static_cast<u32>(rmsq_split_slot_offset(rrow0, 2 * rc));
    xo[1] = static_cast<u32>(rmsq_split_slot_offset(rrow0, 2 * rc + 1));
    xo[2] = xo[3] = 0u;
  } else {
#pragma unroll
    for (int G = 0; G < 4; ++G)
      xo[G] = static_cast<u32>(rmsq_split_slot_offset(16 * cl + 4 * G, ch0 >> 3) + (cq & 1) * 8);
  }
  // Weights, a block ahead: the row role's 16 channels (bf16: 2 pieces, fp32: 4), the column role's 4 (1 piece).
  constexpr int WV = W_F32 ? 4 : 2;
  Vec16 wpre[WV];
  auto load_w = [&](int col) {
    const char* base = static_cast<const char*>(a.w);
    if (row_role) {
      const char* p = base + static_cast<i64>(col + 16 * rc) * (W_F32 ? 4 : 2);
#pragma unroll
      for (int j = 0; j < WV; ++j) wpre[j] = load16(p + 16 * j);
    } else {
      const char* p = base + static_cast<i64>(col + ch0) * (W_F32 ? 4 : 2);
      if constexpr (W_F32) {
        wpre[0] = load16(p);
      } else {
        const uint2 v = *reinterpret_cast<const uint2*>(p);
        wpre[0] = Vec16{{v.x, v.y, 0u, 0u}};
      }
    }
  };
  const bool q16 = (reinterpret_cast<unsigned long long>(a.q) & 15u) == 0u;
  const bool aligned16 = (a.M % 16) == 0 && (reinterpret_cast<unsigned long long>(a.qT) & 15u) == 0u;
  const bool scale_aligned = (reinterpret_cast<unsigned long long>(a.qT_scale) & 15u) == 0u;
  const bool fast = q16 && aligned16 && scale_aligned;

  // pass 2 of item (tile, chunk) whose block 0 is in slot s0, with r in rbuf.
  auto pass2 = [&](int tile, int chunk, int s0, const float* rbuf, bool poll_next) {
    const int m0 = tile * ROWS;
    const int valid = min(ROWS, a.M - m0);
    auto body = [&](auto full) {
      constexpr bool FULL = decltype(full)::value;
#pragma unroll 1
      for (int b = 0; b < CB; ++b) {
        if constexpr (EP) {
          if (b == CB - 1 && poll_next) poll_issue(nxt_tile);  // (item it + 1's partial sums)
        }
        const int col = chunk * C + b * 128;
        const unsigned char* slot = smem_raw + slot_of(s0, b) * BLOCK_BYTES;
        if (row_role) {
          float w16[16];
#pragma unroll
          for (int j = 0; j < WV; ++j)
#pragma unroll
            for (int i = 0; i < 16 / WV; ++i)
              w16[j * (16 / WV) + i] = W_F32 ? vec_get<float>(wpre[j], i) : vec_get<bf16>(wpre[j], i);
          load_w(b + 1 < CB ? col + 128 : nxt_chunk * C);
          const float4 r4 = *reinterpret_cast<const float4*>(rbuf + rrow0);
          const float rv[4] = {r4.x, r4.y, r4.z, r4.w};
          float sc[4];
          // Row by row: 16 values live (the rows are independent; the compiler interleaves them as registers allow).
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            float y[16];
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              const Vec16 xv = *reinterpret_cast<const Vec16*>(slot + xo[j] + i * 256);
#pragma unroll
              for (int e = 0; e < 8; ++e) y[8 * j + e] = __fmul_rn(__fmul_rn(vec_get<bf16>(xv, e), rv[i]), w16[8 * j + e]);
            }
            float am = split_amax16([&](int k) { return y[k]; });
            am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, 4));
            am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, 8));
            am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, 16));
            const bqt::TileQuant qt = Make{}(am);
            sc[i] = qt.s;
            Vec16 codes;
#pragma unroll
            for (int k = 0; k < 4; ++k)
              codes.w[k] = e4m3x4(apply(y[4 * k], qt.p), apply(y[4 * k + 1], qt.p), apply(y[4 * k + 2], qt.p),
                                  apply(y[4 * k + 3], qt.p));
            if (FULL || rrow0 + i < valid) {
              u8* dst = a.q + static_cast<i64>(m0 + rrow0 + i) * N + col + 16 * rc;
              if (FULL || q16) {
                store16(dst, codes);
              } else {
#pragma unroll
                for (int k = 0; k < 4; ++k) reinterpret_cast<u32*>(dst)[k] = codes.w[k];
              }
            }
          }
          // Lanes c < 4 store row 4g + c's scale (16 consecutive rows a warp).
          const float s = rc == 0 ? sc[0] : rc == 1 ? sc[1] : rc == 2 ? sc[2] : sc[3];
          if (rc < 4 && (FULL || rrow0 + rc < valid))
            a.q_scale[static_cast<i64>(col / 128) * a.M + m0 + rrow0 + rc] = s;
        } else {
          float w4[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) w4[e] = W_F32 ? vec_get<float>(wpre[0], e) : vec_get<bf16>(wpre[0], e);
          load_w(b + 1 < CB ? col + 128 : nxt_chunk * C);
          float y[16][4];
#pragma unroll
          for (int G = 0; G < 4; ++G) {
            const float4 r4 = *reinterpret_cast<const float4*>(rbuf + 16 * cl + 4 * G);
            const float rv[4] = {r4.x, r4.y, r4.z, r4.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const uint2 xv = *reinterpret_cast<const uint2*>(slot + xo[G] + i * 256);
              const float xf[4] = {bf16_lo(xv.x), bf16_hi(xv.x), bf16_lo(xv.y), bf16_hi(xv.y)};
#pragma unroll
              for (int e = 0; e < 4; ++e) y[4 * G + i][e] = __fmul_rn(__fmul_rn(xf[e], rv[i]), w4[e]);
            }
          }
          float am[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) am[e] = split_amax16([&](int k) { return y[k][e]; });
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            am[e] = fmaxf(am[e], __shfl_xor_sync(0xffffffffu, am[e], 1));
            am[e] = fmaxf(am[e], __shfl_xor_sync(0xffffffffu, am[e], 2));
            am[e] = fmaxf(am[e], __shfl_xor_sync(0xffffffffu, am[e], 4));
          }
          float sc[4];
          const int t0 = 16 * cl;
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const bqt::TileQuant qt = Make{}(am[e]);
            sc[e] = qt.s;
            Vec16 codes;
#pragma unroll
            for (int k = 0; k < 4; ++k)
              codes.w[k] = e4m3x4(apply(y[4 * k][e], qt.p), apply(y[4 * k + 1][e], qt.p), apply(y[4 * k + 2][e], qt.p),
                                  apply(y[4 * k + 3][e], qt.p));
            u8* dst = a.qT + static_cast<i64>(col + ch0 + e) * a.M + m0 + t0;
            if (FULL || (aligned16 && t0 + 16 <= valid)) {
              store16(dst, codes);
            } else {
              // (unrolled: a run-time index into codes would put it in local memory on every path)
#pragma unroll
              for (int bb = 0; bb < 16; ++bb)
                if (t0 + bb < valid) dst[bb] = static_cast<u8>(codes.w[bb >> 2] >> ((bb & 3) * 8));
            }
          }
          if (cl == 0) {
            float* dst = a.qT_scale + static_cast<i64>(tile) * N + col + ch0;
            if (FULL || scale_aligned) {
              *reinterpret_cast<float4*>(dst) = make_float4(sc[0], sc[1], sc[2], sc[3]);
            } else {
#pragma unroll
              for (int e = 0; e < 4; ++e) dst[e] = sc[e];
            }
          }
        }
      }
    };
    // FULL: all 128 rows exist and every output is 16-byte aligned (no predicates, no byte-wise fallbacks issued)
    if (valid == ROWS && fast) body(Flag<true>{});
    else body(Flag<false>{});
  };

  // ---- the walk ----
  load_w(cur_chunk * C);
  int s0 = 0;  // the slot of item it's block 0
  pass1(cur_tile, cur_chunk, 0, IntC<(START ? 1 : I0) * CB - 1>{}, 0);
  if constexpr (START) {
#pragma unroll 1
    for (int k = 0; k < CB; ++k) issue_visit();
  }
#pragma unroll 1
  for (int it = 0; it < T; ++it) {
    // (EP: issued during item it − 1's last block; FIRST: item 1's pass 1 runs after item 0's pass 2)
    if (!EP || it == 0 || (FIRST && it == 1)) poll_issue(cur_tile);
    const int ns0 = slot_of(s0, CB);
    // Before this pass 1, visits up to I0·CB − 1 (iteration 0) or (it − 1)·CB + R − 1 were issued, and item it + 1's
    // block b is visit (it + 1)·CB + b.
    if (it + 1 < T && !(FIRST && it == 0)) {
      if (it == 0) pass1(nxt_tile, nxt_chunk, ns0, IntC<I0 * CB - CB - 1>{}, it + 1);
      else pass1(nxt_tile, nxt_chunk, ns0, IntC<R - 2 * CB - 1>{}, it + 1);
    }
    float* rbuf = rsh + (it & 1) * ROWS;
    finish(cur_tile, cur_chunk, rbuf);
    // Every thread: its copies of item it (and it + 1) landed, pass 2 of item it − 1 done, r of item it written.
    __syncthreads();
    mark(3, it);
    // Items < it are done: refill every free slot (visits up to it·CB + R − 1; the base: item it + 2 into item
    // it − 1's slots).
#pragma unroll 1
    while (iss_vis < it * CB + R) issue_visit();
    pass2(cur_tile, cur_chunk, s0, rbuf, it + 1 < T && !(FIRST && it == 0));
    mark(4, it);
    // FIRST: item 1's pass 1 now (after barrier 0, visits up to R − 1 were issued: R − CB − 1 − b newer groups)
    if (FIRST && it == 0 && T > 1) pass1(nxt_tile, nxt_chunk, ns0, IntC<R - CB - 1>{}, 1);
    s0 = ns0;
    cur_tile = nxt_tile;
    cur_chunk = nxt_chunk;
    step(nxt_tile, nxt_chunk);
  }
  cp_async_wait_group<0>();  // (only empty groups can be pending)
  mark(5, T);
}

}  // namespace kiln
