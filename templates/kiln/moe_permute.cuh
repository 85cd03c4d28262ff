// kiln/moe_permute.cuh — MoE permute (token rows → padded expert-major rows) and unpermute (combine back).
//
// permute, a CTA per TPC tokens (scatter: every input row is read from memory exactly once):
//   the rows are loaded into registers while warp q compacts token q's map row (E ints) into its destinations in
//   ascending expert order (ballot + popc); then each row is stored to every destination and probs_out[r] =
//   probs[t, e]. The CTAs after the token CTAs, in the same launch: expert e's padding rows offsets[e] + counts[e]
//   … offsets[e+1] − 1 (data 0, scale pad_scale, prob 0), optionally the tail offsets[E] … num_out − 1, and, given
//   the inverse indices, the scales by gather: THREADS consecutive rows per CTA, scale_out[j, r] = scale(row's
//   token, j) or pad_scale, so each store is coalesced (a scatter would leave partial sectors to merge in L2).
// unpermute, a CTA per token t (gather: out[t] = Σ_{e ascending, r = map[t,e] ≥ 0} w[r]·x[r]):
//   warp 0 compacts the map row into (row, weight) pairs and writes restore[t, e] = w[r] or 0; the sum runs in
//   fp32 in ascending expert order (fma with weights, plain adds without), four rows' loads in flight, and is
//   rounded once to the output dtype. No atomics: the same inputs give the same bits.
// permute_block_quant (linghe HEAD's block-padded permute), a CTA per (128-row block of one expert's padded segment,
//   128 channels): the block's source rows (row_id_indices; padding rows and rows past the segment read as 0) are
//   gathered into shared memory once, then quantized 1×128 both ways: row-wise (q rows, q_scale) and transposed
//   (128 tokens of one channel: qT, qT_scale), in §2's per-expert segmented layout with c_e = the padded count.
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp8.cuh"
#include "kiln/moe_permute_args.h"
#include "kiln/ptx.cuh"

namespace kiln {

// Warp 0 (lane `lane`) compacts row t of the map into rows[] (ascending e); returns the count on every lane.
// `visit(e, r, ok, pos)` is called for every expert (ok: r is a destination, stored at rows[pos]).
template <int E, typename Visit>
__device__ __forceinline__ int compact_map_row(const int* mr, int num_out, int lane, int* rows, Visit visit) {
  constexpr int NCH = (E + 31) / 32;
  int rr[NCH];
#pragma unroll
  for (int c = 0; c < NCH; ++c) rr[c] = 32 * c + lane < E ? mr[32 * c + lane] : -1;  // all loads in flight at once
  int n = 0;
#pragma unroll
  for (int c = 0; c < NCH; ++c) {
    const int e = 32 * c + lane, r = rr[c];
    const bool ok = r >= 0 && r < num_out;
    const u32 bal = __ballot_sync(0xffffffffu, ok);
    const int pos = n + __popc(bal & ((1u << lane) - 1u));
    if (ok) rows[pos] = r;
    if (e < E) visit(e, r, ok, pos);
    n += __popc(bal);
  }
  return n;
}

template <int ROW_BYTES, int E, int NS, bool M_MAJOR, bool PROBS, int THREADS, int TPC>
__global__ void __launch_bounds__(THREADS) moe_permute_kernel(const MoePermuteArgs a) {
  static_assert(ROW_BYTES % 16 == 0, "rows are copied in 16-byte vectors");
  static_assert(THREADS >= 32 * TPC, "a warp per token compacts the map rows");
  constexpr int NV = ROW_BYTES / 16;
  constexpr int VPT = (TPC * NV + THREADS - 1) / THREADS;
  __shared__ int dst[TPC][E];
  __shared__ int ndst[TPC];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int b = blockIdx.x;
  // Scales by gather (rows in order, coalesced stores) when the inverse indices are at hand.
  const bool gather_scales = NS > 0 && a.row_id_indices != nullptr;
  if (b < a.token_ctas) {
    const int t0 = b * TPC;
    Vec16 v[VPT];
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int f = tid + k * THREADS, q = f / NV, idx = f - q * NV;
      if (f < TPC * NV && t0 + q < a.T)
        v[k] = load16_stream(static_cast<const char*>(a.inp) + static_cast<i64>(t0 + q) * ROW_BYTES + idx * 16);
    }
    if (warp < TPC) {
      const int t = t0 + warp;
      int n = 0;
      if (t < a.T) {
        const float* pr = a.probs + static_cast<i64>(t) * E;
        n = compact_map_row<E>(a.row_id_map + static_cast<i64>(t) * E, a.num_out, lane, dst[warp],
                               [&](int e, int r, bool ok, int) {
                                 if (PROBS && ok) a.probs_out[r] = pr[e];
                               });
      }
      if (lane == 0) ndst[warp] = n;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int f = tid + k * THREADS, q = f / NV, idx = f - q * NV;
      if (f < TPC * NV && t0 + q < a.T) {
        const int n = ndst[q];
#pragma unroll 1
        for (int i = 0; i < n; ++i)
          store16(static_cast<char*>(a.out) + static_cast<i64>(dst[q][i]) * ROW_BYTES + idx * 16, v[k]);
      }
    }
    if constexpr (NS > 0) {
      if (!gather_scales) {
#pragma unroll 1
        for (int q = 0; q < TPC; ++q) {
          const int t = t0 + q, n = ndst[q];
          if (t >= a.T) break;
          for (int idx = tid; idx < NS * n; idx += THREADS) {
            const int j = idx / n, i = idx - j * n;
            const float s = M_MAJOR ? a.scale[static_cast<i64>(j) * a.T + t] : a.scale[static_cast<i64>(t) * NS + j];
            a.scale_out[static_cast<i64>(j) * a.num_out + dst[q][i]] = s;
          }
        }
      }
    }
    return;
  }
  const int used = a.offsets ? a.offsets[E] : a.num_out;
  const int pb = b - a.token_ctas;
  if (pb >= a.pad_ctas + a.tail_ctas) {
    // Scale CTAs: THREADS consecutive rows each, one per thread, every block j in turn.
    if constexpr (NS > 0) {
      const int r = (pb - a.pad_ctas - a.tail_ctas) * THREADS + tid;
      if (r < a.num_out && (r < used || a.tail_ctas > 0)) {
        const int t = r < used ? a.row_id_indices[r] : -1;
#pragma unroll 4
        for (int j = 0; j < NS; ++j) {
          const float s = t < 0 ? a.pad_scale
                                : (M_MAJOR ? a.scale[static_cast<i64>(j) * a.T + t] : a.scale[static_cast<i64>(t) * NS + j]);
          a.scale_out[static_cast<i64>(j) * a.num_out + r] = s;
        }
      }
    }
    return;
  }
  // Padding rows: expert pb's (pb < pad_ctas), or the tail past offsets[E].
  int r0, r1, step;
  if (pb < a.pad_ctas) {
    r0 = a.offsets[pb] + a.counts[pb];
    r1 = a.offsets[pb + 1];
    step = 1;
  } else {
    r0 = used + (pb - a.pad_ctas);
    r1 = a.num_out;
    step = kMoePermuteTailCtas;
  }
  r1 = min(r1, a.num_out);
  const Vec16 zero{{0u, 0u, 0u, 0u}};
#pragma unroll 1
  for (int r = r0; r < r1; r += step) {
    char* d = static_cast<char*>(a.out) + static_cast<i64>(r) * ROW_BYTES;
    for (int idx = tid; idx < NV; idx += THREADS) store16(d + idx * 16, zero);
    if constexpr (NS > 0)
      if (!gather_scales)
        for (int j = tid; j < NS; j += THREADS) a.scale_out[static_cast<i64>(j) * a.num_out + r] = a.pad_scale;
    if (PROBS && tid == 0) a.probs_out[r] = 0.0f;
  }
}

template <int H, typename T, int E, bool WEIGHTS, bool RESTORE, int THREADS>
__global__ void __launch_bounds__(THREADS) moe_unpermute_kernel(const MoeUnpermuteArgs a) {
  constexpr int V = VecTraits<T>::kElems;
  static_assert(H % V == 0, "rows are read in 16-byte vectors");
  constexpr int NV = H / V;
  constexpr int VPT = (NV + THREADS - 1) / THREADS;
  constexpr int ROW_BYTES = H * static_cast<int>(sizeof(T));
  __shared__ int rows[E];
  __shared__ float ws[E];
  __shared__ int nrows;
  const int tid = threadIdx.x, lane = tid & 31;
  const int t = blockIdx.x;
  if (tid < 32) {
    float* rr = RESTORE ? a.restore + static_cast<i64>(t) * E : nullptr;
    const int n = compact_map_row<E>(a.row_id_map + static_cast<i64>(t) * E, a.num_out, lane, rows,
                                     [&](int e, int r, bool ok, int pos) {
                                       const float w = (WEIGHTS && ok) ? a.weights[r] : 0.0f;
                                       if (ok) ws[pos] = w;
                                       if (RESTORE) rr[e] = w;
                                     });
    if (lane == 0) nrows = n;
  }
  __syncthreads();
  const int n = nrows;
  float acc[VPT][V];
#pragma unroll
  for (int k = 0; k < VPT; ++k)
#pragma unroll
    for (int u = 0; u < V; ++u) acc[k][u] = 0.0f;
#pragma unroll 1
  for (int i0 = 0; i0 < n; i0 += 4) {
    Vec16 x[4][VPT];
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (i0 + q < n) {
        const char* src = static_cast<const char*>(a.x) + static_cast<i64>(rows[i0 + q]) * ROW_BYTES;
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
          const int idx = tid + k * THREADS;
          if (idx < NV) x[q][k] = load16_stream(src + idx * 16);  // each permuted row is read once
        }
      }
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (i0 + q < n) {
        const float w = ws[i0 + q];
#pragma unroll
        for (int k = 0; k < VPT; ++k)
#pragma unroll
          for (int u = 0; u < V; ++u) {
            const float xv = vec_get<T>(x[q][k], u);
            acc[k][u] = WEIGHTS ? __fmaf_rn(xv, w, acc[k][u]) : __fadd_rn(acc[k][u], xv);
          }
      }
  }
  char* dst = static_cast<char*>(a.out) + static_cast<i64>(t) * ROW_BYTES;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int idx = tid + k * THREADS;
    if (idx < NV) {
      Vec16 o;
#pragma unroll
      for (int u = 0; u < V; ++u) vec_set<T>(o, u, acc[k][u]);
      store16(dst + idx * 16, o);
    }
  }
}

// Exclusive scan of ceil((offsets[e+1] − offsets[e]) / 128) over experts into b[0 … E] (256 threads).
template <int E>
__device__ __forceinline__ void expert_block_offsets(const int* offsets, int* b, int* warp_tot) {
  constexpr int EPT = (E + 255) / 256;
  int nb[EPT], local = 0;
#pragma unroll
  for (int k = 0; k < EPT; ++k) {
    const int e = threadIdx.x * EPT + k;
    nb[k] = e < E ? (offsets[e + 1] - offsets[e] + 127) / 128 : 0;
    local += nb[k];
  }
  int total;
  int run = block_exclusive_scan<256>(local, warp_tot, total);
#pragma unroll
  for (int k = 0; k < EPT; ++k) {
    const int e = threadIdx.x * EPT + k;
    if (e < E) b[e] = run;
    run += nb[k];
  }
  if (threadIdx.x == 0) b[E] = total;
  __syncthreads();
}

// Shared-memory tile of the block-quantized permute: 128 rows × 128 bf16 as 64 words per row, 16-byte chunk c of row
// r stored at chunk c ^ 2(r & 3). Row-wise reads (8 lanes on 4 rows × 2 chunk parities per quarter-warp), column
// reads (a warp on one row, 32 channel pairs) and the cp.async writes all hit distinct banks.
__device__ __forceinline__ int bq_word(int row, int chunk) { return row * 64 + ((chunk ^ ((row & 3) << 1)) << 2); }

// Lane-wise max of two pairs of non-negative bf16 (|x| by clearing the sign bits): max.bf16x2 returns the non-NaN
// operand where one is NaN, as fmaxf does, so the block amax is fmaxf's over the same values.
__device__ __forceinline__ u32 bf16x2_absmax(u32 m, u32 x) {
  u32 d;
  asm("max.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(m), "r"(x & 0x7fff7fffu));
  return d;
}
__device__ __forceinline__ float bf16x2_hmax(u32 m) {
  return fmaxf(__uint_as_float(m << 16), __uint_as_float(m & 0xffff0000u));
}

// Row r's row-wise codes overwrite the first 128 bytes of its own tile row once its warp has read it, 16-byte unit j
// at unit j ^ (r & 7): the row pass's 8-byte stores (16 rows × 2 threads a warp) take 2 wavefronts, the write-out's
// 16-byte reads (4 rows × 8 units) 4.
__device__ __forceinline__ u32 bq_code_byte(int row, int unit) { return row * 256 + ((unit ^ (row & 7)) << 4); }

template <int HD, int E, bool ROUND, bool PROBS>
__global__ void __launch_bounds__(256, 4) moe_permute_block_quant_kernel(const MoePermuteBlockQuantArgs a) {
  static_assert(HD % 128 == 0, "1x128 blocks");
  constexpr int NS = HD / 128;
  constexpr int CS = kMoeBlockQuantCodePitch;  // bytes per row of the code tiles (16-byte rows)
  extern __shared__ __align__(16) unsigned char smem[];
  u32* tile = reinterpret_cast<u32*>(smem);                          // [128][64] words, swizzled chunks; row codes
  unsigned char* const qs = smem;                                    // (row r's codes: bq_code_byte(r, ·))
  unsigned char* qts = smem + 128 * 128 * 2;                         // [128 channels][CS] transposed codes
  float* part = reinterpret_cast<float*>(qts + 128 * CS);            // [4][128]
  int* src = reinterpret_cast<int*>(part + 4 * 128);                 // [128]
  int* warp_tot = src + 128;                                         // [8]
  int* b = warp_tot + 8;                                             // [E + 1]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  expert_block_offsets<E>(a.offsets, b, warp_tot);
  const int gb = blockIdx.x;
  if (gb >= b[E]) return;
  // The expert whose blocks hold gb: the last e with b[e] ≤ gb (b[0] = 0, nondecreasing; experts with no rows have
  // b[e] = b[e+1]), i.e. the count of such e, less one.
  int ne = 0;
  for (int e0 = 0; e0 < E; e0 += 256) ne += __syncthreads_count(e0 + tid < E && b[e0 + tid] <= gb);
  const int e = ne - 1;
  const int off = a.offsets[e], pc = a.offsets[e + 1] - off;
  const int i0 = (gb - b[e]) * 128;            // first row of the block inside the segment
  const int rows = min(128, pc - i0);          // rows of the segment in this block
  if (tid < 128) {
    const int r = off + i0 + tid;
    const int t = tid < rows && r < a.num_out ? a.row_id_indices[r] : -1;
    src[tid] = t >= 0 && t < a.T ? t : -1;
    if (PROBS && blockIdx.y == 0 && tid < rows && r < a.num_out)
      a.probs_out[r] = t >= 0 && t < a.T ? a.probs[static_cast<i64>(t) * E + e] : 0.0f;
  }
  __syncthreads();
  // Gather of channel block cb: 128 rows × 16 chunks of 8 bf16 (rows past the segment and padding rows read as
  // zeros). Thread tid takes chunk tid & 15 of rows tid / 16 + 16k: the rows' swizzle (row & 3) is the same for all
  // eight, so a chunk's slot is the first one's + 16k rows, and only the source row changes.
  const int c16 = tid & 15, r16 = tid >> 4;
  const u32 s16 = smem_u32(&tile[bq_word(r16, c16)]);
  // Only rows below `live` (the block's rows rounded up to 32) are gathered and quantized: the row pass skips warps
  // whose 16 rows all lie past the segment, the transposed pass token quarters (32 rows) that do, so an expert's last,
  // partly filled block costs about in proportion to its rows (at 8192 × 256, top-8, P = 16, random routing: 632
  // blocks, 18 % of them with ≤ 32 rows, 83 % of the blocks' rows live). Rows from `rows` to `live` are zero-filled:
  // the live quarters' column amax reads them.
  const int live = (rows + 31) & ~31;
  auto gather = [&](int cb) {
    const char* const g0 = static_cast<const char*>(a.x) + (cb * 128 + c16 * 8) * 2;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int t = src[r16 + 16 * k];  // (re-read at each gather: 8 registers fewer live across the blocks)
      if (r16 + 16 * k < live)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s16 + k * 16 * 64 * 4),
                     "l"(g0 + static_cast<i64>(t < 0 ? 0 : t) * (HD * 2)), "r"(t >= 0 ? 16 : 0)
                     : "memory");
    }
  };
  // The CTA's channel blocks cb0 … cb0 + cpb − 1 in turn; the next block's gather is issued once both passes have
  // read the tile, under the current block's write-out.
  const int cpb = a.cpb, cb0 = blockIdx.y * cpb;
  gather(cb0);
  for (int cb = cb0; cb < cb0 + cpb; ++cb) {
  cp_async_wait_all();
  __syncthreads();

  // Transposed first: thread (channel pair p, token quarter qq) holds 32 tokens × 2 channels; column amax over the
  // four quarters through shared memory; codes to qts.
  {
    const int p = tid & 63, qq = tid >> 6;
    const bool qlive = 32 * qq < rows;  // (a dead quarter's partial amax is 0, that of its zero rows)
    // (The tile is read twice, for the amax and for the codes: fewer registers live across the barrier.)
    auto wat = [&](int i) { return tile[bq_word(qq * 32 + i, p >> 2) + (p & 3)]; };
    u32 m2 = 0u;
    if (qlive) {
#pragma unroll
      for (int i = 0; i < 32; ++i) m2 = bf16x2_absmax(m2, wat(i));
    }
    float m0 = __uint_as_float(m2 << 16), m1 = __uint_as_float(m2 & 0xffff0000u);
    part[qq * 128 + 2 * p] = m0;
    part[qq * 128 + 2 * p + 1] = m1;
    __syncthreads();
    m0 = fmaxf(fmaxf(part[2 * p], part[128 + 2 * p]), fmaxf(part[256 + 2 * p], part[384 + 2 * p]));
    m1 = fmaxf(fmaxf(part[2 * p + 1], part[129 + 2 * p]), fmaxf(part[257 + 2 * p], part[385 + 2 * p]));
    const float s0 = block_scale_fast<ROUND>(m0), s1 = block_scale_fast<ROUND>(m1);
    if (qq == 0) {
      float* ts = a.qT_scale + static_cast<i64>(gb) * HD + cb * 128 + 2 * p;  // b[e] + (gb − b[e]) = gb
      ts[0] = s0;
      ts[1] = s1;
    }
    const Quantizer<ROUND> q0(s0), q1(s1);
    const u32 c0 = smem_u32(qts + (2 * p) * CS + qq * 32), c1 = smem_u32(qts + (2 * p + 1) * CS + qq * 32);
    if (qlive) {
#pragma unroll
      for (int g = 0; g < 2; ++g) {
        Vec16 o0, o1;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          u32 w[4];
#pragma unroll
          for (int d = 0; d < 4; ++d) w[d] = wat(16 * g + 4 * u + d);
          if constexpr (ROUND) {  // (channel 2p's inverse scale in the low halves, 2p + 1's in the high ones)
            const u32 inv2 = bf16x2_pair(q0.inv, q1.inv);
#pragma unroll
            for (int d = 0; d < 4; ++d) w[d] = bf16x2_mul(w[d], inv2);
            o0.w[u] = e4m3x4(__uint_as_float(w[0] << 16), __uint_as_float(w[1] << 16), __uint_as_float(w[2] << 16),
                             __uint_as_float(w[3] << 16));
            o1.w[u] = e4m3x4(__uint_as_float(w[0] & 0xffff0000u), __uint_as_float(w[1] & 0xffff0000u),
                             __uint_as_float(w[2] & 0xffff0000u), __uint_as_float(w[3] & 0xffff0000u));
          } else {
            o0.w[u] = e4m3x4(q0(__uint_as_float(w[0] << 16)), q0(__uint_as_float(w[1] << 16)),
                             q0(__uint_as_float(w[2] << 16)), q0(__uint_as_float(w[3] << 16)));
            o1.w[u] = e4m3x4(q1(__uint_as_float(w[0] & 0xffff0000u)), q1(__uint_as_float(w[1] & 0xffff0000u)),
                             q1(__uint_as_float(w[2] & 0xffff0000u)), q1(__uint_as_float(w[3] & 0xffff0000u)));
          }
        }
        sts16(c0 + 16 * g, o0);
        sts16(c1 + 16 * g, o1);
      }
    }
  }
  __syncthreads();  // (every column read of the tile done: rows may be overwritten by their codes)

  // Row-wise: two threads per row (tid = 2·row + h); thread h takes chunks 2k + h, 64 values. A warp holds rows
  // 16·warp … + 15 and reads only them: once read (its __syncwarp), their codes go over them (bq_code_byte).
  if (16 * warp < rows) {
    const int row = tid >> 1, h = tid & 1;
    Vec16 v[8];
    u32 m2 = 0u;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      v[k] = *reinterpret_cast<const Vec16*>(&tile[bq_word(row, 2 * k + h)]);
#pragma unroll
      for (int u = 0; u < 4; ++u) m2 = bf16x2_absmax(m2, v[k].w[u]);
    }
    float m = bf16x2_hmax(m2);
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));  // (also orders the warp's reads before its stores below)
    const float sc = block_scale_fast<ROUND>(m);
    const Quantizer<ROUND> quant(sc);
    __syncwarp();
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const Vec16& x = v[k];
      u32 lo, hi;
      if constexpr (ROUND) {  // (power-of-two scales: one packed bf16 multiply a pair, fp8.cuh bf16x2_mul)
        const u32 inv2 = bf16x2_pair(quant.inv, quant.inv);
        lo = e4m3x4_bf16x2(bf16x2_mul(x.w[0], inv2), bf16x2_mul(x.w[1], inv2));
        hi = e4m3x4_bf16x2(bf16x2_mul(x.w[2], inv2), bf16x2_mul(x.w[3], inv2));
      } else {
        lo = e4m3x4(quant(vec_get<bf16>(x, 0)), quant(vec_get<bf16>(x, 1)), quant(vec_get<bf16>(x, 2)),
                    quant(vec_get<bf16>(x, 3)));
        hi = e4m3x4(quant(vec_get<bf16>(x, 4)), quant(vec_get<bf16>(x, 5)), quant(vec_get<bf16>(x, 6)),
                    quant(vec_get<bf16>(x, 7)));
      }
      // chunk 2k + h: codes 8·(2k + h) … + 7, the half h of 16-byte unit k
      asm volatile("st.shared.v2.u32 [%0], {%1, %2};" ::"r"(smem_u32(qs) + bq_code_byte(row, k) + 8 * h), "r"(lo),
                   "r"(hi)
                   : "memory");
    }
    if (h == 0 && row < rows) a.q_scale[static_cast<i64>(off) * NS + static_cast<i64>(cb) * pc + i0 + row] = sc;
  }
  __syncthreads();

  // Coalesced write-out, 16-byte units: 8 lanes a row of codes, 32 rows a pass; the row codes first, so that the
  // next block's gather (over the tile) is issued under the transposed rows' write-out. The transposed rows (pc bytes
  // apart) are 16-byte aligned where pc is a multiple of 16 (then rows is too); else 4 bytes a lane, a warp a row.
  {
    const int j = tid & 7;
    unsigned char* const qd = a.q + static_cast<i64>(off + i0) * HD + cb * 128 + 16 * j;
    for (int row = tid >> 3; row < rows; row += 32)
      store16(qd + static_cast<i64>(row) * HD, lds16(smem_u32(qs) + bq_code_byte(row, j)));
    __syncthreads();
    if (cb + 1 < cb0 + cpb) gather(cb + 1);
    unsigned char* const td = a.qT + static_cast<i64>(off) * HD + static_cast<i64>(cb * 128) * pc + i0;
    if ((pc & 15) == 0) {
      if (16 * j < rows)
        for (int n = tid >> 3; n < 128; n += 32)
          store16(td + static_cast<i64>(n) * pc + 16 * j, lds16(smem_u32(qts + n * CS + 16 * j)));
    } else {
      for (int n = warp; n < 128; n += 8) {
        const u32 v = reinterpret_cast<const u32*>(qts + n * CS)[lane];
        unsigned char* d = td + static_cast<i64>(n) * pc + lane * 4;
        if (lane * 4 + 4 <= rows) {
          *reinterpret_cast<u32*>(d) = v;
        } else {
          for (int k = 0; lane * 4 + k < rows; ++k) d[k] = static_cast<unsigned char>(v >> (8 * k));
        }
      }
    }
  }
  }  // (channel blocks)
}

}  // namespace kiln
