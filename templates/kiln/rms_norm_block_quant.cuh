// kiln/rms_norm_block_quant.cuh — RMSNorm fused with fp8 e4m3 1×128 block quantization.
//
//   r[m]   = 1 / sqrt(Σ_k x[m,k]² / N + eps)                    (fp32; mode 1 reads r from rms_in)
//   y[m,k] = (x[m,k] · r[m]) · w[k]                             (fp32, this order, no FMA)
//   row-wise   q[m, :], q_scale[N/128, M]   : blocks of 128 columns of a row          (modes 0, 2)
//   transposed qT[n, :], qT_scale[M/128, N] : blocks of 128 consecutive tokens of a channel (modes 1, 2)
//
// Kernels:
//  * row_kernel (mode 0): one warp per row. The row stays in registers between the sum of squares and the
//    quantization, so x is read once. Lanes 0–15 own one 128-column block of each 256-column step, lanes 16–31 the
//    next: a block's amax is a 16-lane butterfly.
//  * row8_kernel (mode 0, the default): the same with 8 lanes a block (16 values a lane, 512-column steps): half the
//    scale computations and fewer shuffles per element.
//  * tile_kernel (modes 1, 2): the transposed output needs a whole 128-token block per channel, and the norm needs a
//    whole row, so a cluster of S CTAs splits a 128-token × N tile by columns. Each CTA holds a 128×128 block of x in
//    registers (8×8 a thread), sums squares per row, and the cluster exchanges the 128 partial sums through
//    distributed shared memory (every CTA adds them in rank order, so all see the same r). Both quantizations are
//    computed from the same registers; the transposed codes go through shared memory so qT is written in whole
//    128-byte rows.
//  * ring_kernel (modes 1, 2; the tile kernel made persistent; mode 2's default on sm_90): the same cluster split
//    and the same per-block math, but each cluster loops over 128-token tiles, and x reaches shared memory through
//    a ring of 128×128 block slots filled by cp.async, so the loads of later tiles are in flight while the current
//    tile is reduced, exchanged and quantized. See the comment above the kernel for the pipeline.
//  * pipe_kernel (mode 0): the row8 math on kiln/row_pipe.cuh (balanced rows per CTA, per-warp rings of row slots
//    filled by TMA bulk copies), weights in registers, the power-of-two scale from the bits of amax.
// Every power-of-two scale is built from the bits of amax without a division (rmsq::scale_of_max), and every quantizer
// multiplies by its exact reciprocal, also built from bits (rmsq::Quant).
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp8.cuh"
#include "kiln/rms_norm_block_quant_args.h"
#include "kiln/rms_norm_block_quant_stream_args.h"
#include "kiln/row_pipe.cuh"

namespace kiln {

// ---- helpers of this family (st.async pushes, the quantizer with an exact power-of-two reciprocal); the mbarrier
// primitives are row_pipe.cuh's ----
namespace rmsq {
// 16 bytes into the shared memory of CTA `rank` of the cluster (at the address `local_dst` has here), completing
// `bytes` on that CTA's barrier at the address `local_bar` has here.
__device__ __forceinline__ void st_async16(float* local_dst, float4 v, u64* local_bar, u32 rank) {
#if __CUDA_ARCH__ >= 900
  u32 d, b;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(d) : "r"(smem_u32(local_dst)), "r"(rank));
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(b) : "r"(smem_u32(local_bar)), "r"(rank));
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];" ::"r"(d),
               "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(b)
               : "memory");
#endif
}
// Quantizer with the reciprocal of a power-of-two scale (ROUND) built from its bits instead of a division:
// s = 2^e (normal, e ≥ −99) → 1/s = 2^−e, exactly Quantizer's 1.0f / s; s = inf → 0, as 1.0f / inf.
// Without ROUND: y / s through fp8.cuh's div_exact (d), a value at a time. (fp8.cuh's bracket, e4m3x4_div, serves
// the stream kernel through block_quant_tile.cuh; in the row, tile and pipe kernels here it measured slower or no
// faster: mode 1 20.8 → 21.0 µs, mode 0 20.2 → 20.85 µs at N = 2048, session 21.)
template <bool ROUND>
struct Quant {
  float s, inv;
  ScaleDivExact d;
  __device__ __forceinline__ explicit Quant(float scale) : s(scale) {
    if constexpr (ROUND) {
      const u32 b = __float_as_uint(scale);
      inv = b >= 0x7f800000u ? 0.f : __uint_as_float(0x7f000000u - b);
    } else {
      inv = scale;
      d = scale_div_exact(scale);
    }
  }
  __device__ __forceinline__ float operator()(float y) const { return ROUND ? y * inv : div_exact(y, d); }
};
// block_scale<ROUND>(amax) for an amax that is a max from 0 ignoring NaN (≥ 0, never NaN), as every amax here is;
// with ROUND from the bits of amax, branch-free and without the division (rms_norm_block_quant_pow2_scale_bits_of_max);
// else fp8.cuh's block_scale_fast<false> (amax / 448 without div.rn, the same bits).
template <bool ROUND>
__device__ __forceinline__ float scale_of_max(float amax) {
  if constexpr (ROUND) return __uint_as_float(rms_norm_block_quant_pow2_scale_bits_of_max(__float_as_uint(amax)));
  else return block_scale_fast<false>(amax);
}
// 8 values' e4m3 codes as one 8-byte word (value 0 in the lowest byte).
template <bool ROUND>
__device__ __forceinline__ uint2 codes8(const Quant<ROUND>& quant, const float* y) {
  uint2 out;
  out.x = e4m3x4(quant(y[0]), quant(y[1]), quant(y[2]), quant(y[3]));
  out.y = e4m3x4(quant(y[4]), quant(y[5]), quant(y[6]), quant(y[7]));
  return out;
}
// One row's 8 values of a 128-column block (16 lanes of a half-warp share the block): the block's scale from the
// half-warp's amax, 8 e4m3 codes stored at `q` when `store`, and the scale (by the half-warp's lane 0, hl == 0) at
// `scale`. The tile and ring kernels' row-wise output.
template <bool ROUND>
__device__ __forceinline__ void row_block_codes(const float (&y)[8], float amax, bool store, u8* q, int hl,
                                                float* scale) {
  amax = warp_max<16>(amax);
  const Quant<ROUND> quant(scale_of_max<ROUND>(amax));
  if (store) *reinterpret_cast<uint2*>(q) = codes8(quant, y);
  if (hl == 0) *scale = quant.s;
}
// The GLOBAL exchanges (the stream kernel, the tile kernel's clusters through global memory): a partial sum tagged
// with the launch ({float bits, tag}: one 8-byte access, so a reader sees a whole pair), stored and polled at GPU
// scope (L2).
__device__ __forceinline__ u64 stream_tagged(float v, u32 tag) {
  return static_cast<u64>(__float_as_uint(v)) | (static_cast<u64>(tag) << 32);
}
__device__ __forceinline__ void stream_st_relaxed(u64* p, u64 v) {
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ u64 stream_ld_relaxed(const u64* p) {
  u64 v;
  asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
// Σx² of one row's 8 values (a lane's 16 bytes) accumulated into s, in the order every mode-2 kernel here uses: the
// lanes of a half-warp hold 8 consecutive columns each, summed in column order, then a 16-lane butterfly (xor 8, 4,
// 2, 1: warp_sum<16>, or transpose_reduce4 / the tile kernel's per-row butterflies, bitwise the same tree).
__device__ __forceinline__ void sum_squares8(const Vec16& x, float& s) {
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float f = vec_get<bf16>(x, e);
    s = fmaf(f, f, s);
  }
}
// GX exchange (mode 2, clusters of K CTAs a row's S = N / C chunks, G = S / K clusters; tile and tile512 kernels):
// called by all THREADS threads after a cluster barrier that made every CTA's partial[128] (its Σx² per row of
// the tile, C columns) visible. Thread r < 128 adds row r's K partial sums of the cluster in rank order, the CTA of
// rank r % K stores that cluster sum tagged in ws[tile][G][128], then thread r polls the G − 1 other clusters' sums
// of row r and adds the G in cluster order (every CTA of the tile gets bitwise the same r): rinv[r], and rms_out by
// chunk 0. Arrives (relaxed) on the cluster barrier once the peers' partial[] are read: the caller waits on it before
// exiting. A sum still missing after kRmsqStreamSpinLimit polls (its cluster is not resident) is computed here from
// x with the same operations (one half-warp a row, sum_squares8 and the 16-lane butterfly) into fb[128]. Ends with
// rinv[] written by threads < 128 (the caller synchronizes before reading it).
template <int N, int C, int K, int THREADS>
__device__ __forceinline__ void gx_row_rinv(const RmsNormBlockQuantArgs& a, u64* ws, u32 tag, const float* partial,
                                            float* rinv, float* fb, int rank, i64 tile, int m0, int valid) {
  constexpr int S = N / C, G = S / K, ROWS = 128;
  static_assert(K >= 2 && K <= 16 && S % K == 0 && G <= 8 && THREADS >= ROWS && THREADS % 16 == 0, "");
  const int kr = rank % K, grp = rank / K;
  const int r = threadIdx.x;
  float t = 0.f;
  u64 got[G];
  bool ready = true;
  if (r < ROWS) {
#pragma unroll
    for (int k = 0; k < K; ++k) t += cluster_load(partial + r, k);
    if (G > 1 && r % K == kr) stream_st_relaxed(ws + (tile * G + grp) * ROWS + r, stream_tagged(t, tag));
  }
  cluster_arrive_relaxed();  // this CTA's reads of the peers' partial[] are done
  if (G > 1 && r < ROWS) {
    const u64* base = ws + tile * G * ROWS + r;
#pragma unroll
    for (int q = 0; q < G; ++q) got[q] = q == grp ? stream_tagged(t, tag) : stream_ld_relaxed(base + q * ROWS);
#pragma unroll 1
    for (int tries = 0;; ++tries) {
      ready = true;
#pragma unroll
      for (int q = 0; q < G; ++q) ready = ready && static_cast<u32>(got[q] >> 32) == tag;
      if (ready || tries == kRmsqStreamSpinLimit) break;
      __nanosleep(32);
#pragma unroll
      for (int q = 0; q < G; ++q)
        if (static_cast<u32>(got[q] >> 32) != tag) got[q] = stream_ld_relaxed(base + q * ROWS);
    }
  }
  if (G == 1 && r < ROWS) got[0] = stream_tagged(t, tag);  // one cluster holds the row: no workspace
  if (G > 1 && __syncthreads_or(!ready)) {
    const int hw = threadIdx.x >> 4, hl = threadIdx.x & 15;
    const bf16* xg = static_cast<const bf16*>(a.x);
#pragma unroll  // (got[] stays in registers)
    for (int q = 0; q < G; ++q) {
      const bool need = r < ROWS && static_cast<u32>(got[q] >> 32) != tag;
      if (!__syncthreads_or(need)) continue;
#pragma unroll 1
      for (int rr = hw; rr < ROWS; rr += THREADS / 16) {
        float c = 0.f;  // the cluster's sum of row rr: its K chunks' partial sums in rank order
#pragma unroll 1
        for (int k = 0; k < K; ++k) {
          float ps = 0.f;
#pragma unroll 1
          for (int b = 0; b < C / 128; ++b)
            sum_squares8(rr < valid ? load16(xg + static_cast<i64>(m0 + rr) * a.x_stride + (q * K + k) * C + b * 128 +
                                             hl * 8)
                                    : Vec16{{0u, 0u, 0u, 0u}},
                         ps);
          c += warp_sum<16>(ps);
        }
        if (hl == 0) fb[rr] = c;
      }
      __syncthreads();
      if (need) got[q] = stream_tagged(fb[r], tag);
      __syncthreads();
    }
  }
  if (r < ROWS) {
    float tt = 0.f;
#pragma unroll
    for (int q = 0; q < G; ++q) tt += __uint_as_float(static_cast<u32>(got[q]));
    const float rv = 1.0f / sqrtf(tt / static_cast<float>(N) + a.eps);
    rinv[r] = rv;
    if (rank == 0 && a.rms_out && r < valid) a.rms_out[m0 + r] = rv;
  }
}
}  // namespace rmsq

// ---------------------------------------------------------------------------------------------------------------------
// Mode 0. N % 128 == 0. Each lane holds STEPS 16-byte chunks (8 bf16) of its row.
// A grid-stride loop: warp w of CTA b takes rows w', w' + W, … (w' = b·WARPS + w, W = all warps), and loads its next
// row while it reduces and quantizes the current one, so every warp keeps a row's worth of loads in flight (with
// PREFETCH the host launches a persistent grid, else one row per warp).
template <int N, int WARPS, bool PREFETCH, bool ROUND, bool W_F32>
__global__ void __launch_bounds__(WARPS * 32) rms_norm_block_quant_row_kernel(const RmsNormBlockQuantArgs a) {
  constexpr int CHUNKS = N / 8;               // 16-byte chunks per row
  constexpr int STEPS = (CHUNKS + 31) / 32;   // 256-column steps
  const int lane = threadIdx.x & 31;
  const int stride = gridDim.x * WARPS;
  int row = blockIdx.x * WARPS + (threadIdx.x >> 5);
  if (row >= a.M) return;

  auto load_row = [&](int r, Vec16 (&v)[STEPS]) {
    const bf16* xr = static_cast<const bf16*>(a.x) + static_cast<i64>(r) * a.x_stride;
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
      const int c = s * 32 + lane;
      if (c < CHUNKS) v[s] = load16_stream(xr + c * 8);
    }
  };
  // PREFETCH: two rows in registers (the host picks it for rows up to 4096 columns); else one row at a time.
  Vec16 cur[STEPS], nxt[PREFETCH ? STEPS : 1];
  if (PREFETCH) load_row(row, cur);
  for (; row < a.M; row += stride) {
    if constexpr (PREFETCH) {
      if (row + stride < a.M) load_row(row + stride, nxt);  // warp-uniform
    } else {
      load_row(row, cur);
    }

    float ss = 0.f;
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
      const int c = s * 32 + lane;
      if (c < CHUNKS) {
#pragma unroll
        for (int i = 0; i < 8; ++i) { const float f = vec_get<bf16>(cur[s], i); ss += f * f; }
      }
    }
    ss = warp_sum(ss);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(N) + a.eps);
    if (a.rms_out && lane == 0) a.rms_out[row] = r;

#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
      const int c = s * 32 + lane;
      const bool active = c < CHUNKS;  // half-warp uniform: CHUNKS is a multiple of 16
      float w8[8], y[8];
      if (active) {
        if (W_F32) load_floats<float, 8>(a.w, c * 8, w8);
        else load_floats<bf16, 8>(a.w, c * 8, w8);
      }
      float amax = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        y[i] = active ? __fmul_rn(__fmul_rn(vec_get<bf16>(cur[s], i), r), w8[i]) : 0.f;
        amax = fmaxf(amax, fabsf(y[i]));
      }
      amax = warp_max<16>(amax);
      if (!active) continue;
      const rmsq::Quant<ROUND> quant(rmsq::scale_of_max<ROUND>(amax));
      uint2 out;
      out.x = e4m3x4(quant(y[0]), quant(y[1]), quant(y[2]), quant(y[3]));
      out.y = e4m3x4(quant(y[4]), quant(y[5]), quant(y[6]), quant(y[7]));
      *reinterpret_cast<uint2*>(a.q + static_cast<i64>(row) * N + c * 8) = out;
      if ((lane & 15) == 0) a.q_scale[static_cast<i64>(c / 16) * a.M + row] = quant.s;
    }
    if constexpr (PREFETCH) {
#pragma unroll
      for (int s = 0; s < STEPS; ++s) cur[s] = nxt[s];
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Mode 0 with 8 lanes per 128-column block (row8_kernel; the row kernel's config col_blocks = 4: four blocks a warp
// step). A step covers 512 columns: lanes 8j … 8j+7 own block j of the step, lane l its 16-byte chunks (l & 7) and
// (l & 7) + 8 of the block, so a warp's load instruction still reads whole 128-byte segments (8 lanes × 16
// contiguous bytes) and a block's amax is an 8-lane butterfly over 16 values a lane: half the scale computations
// and fewer shuffles per element than 16 lanes × 8 values. Otherwise as the row kernel (grid-stride, PREFETCH).
template <int N, int WARPS, bool PREFETCH, bool ROUND, bool W_F32>
__global__ void __launch_bounds__(WARPS * 32) rms_norm_block_quant_row8_kernel(const RmsNormBlockQuantArgs a) {
  constexpr int NB = N / 128;             // column blocks per row
  constexpr int STEPS = (NB + 3) / 4;     // 512-column steps
  const int lane = threadIdx.x & 31;
  const int blk = lane >> 3, c = lane & 7;  // block of the step, chunk pair in the block
  const int stride = gridDim.x * WARPS;
  int row = blockIdx.x * WARPS + (threadIdx.x >> 5);
  if (row >= a.M) return;

  auto active = [&](int s) { return s * 4 + blk < NB; };  // 8-lane-group uniform
  auto col_of = [&](int s, int h) { return (s * 4 + blk) * 128 + (c + 8 * h) * 8; };  // first column of chunk h
  auto load_row = [&](int r, Vec16 (&v)[STEPS][2]) {
    const bf16* xr = static_cast<const bf16*>(a.x) + static_cast<i64>(r) * a.x_stride;
#pragma unroll
    for (int s = 0; s < STEPS; ++s)
      if (active(s)) {
        v[s][0] = load16_stream(xr + col_of(s, 0));
        v[s][1] = load16_stream(xr + col_of(s, 1));
      }
  };
  Vec16 cur[STEPS][2], nxt[PREFETCH ? STEPS : 1][2];
  if (PREFETCH) load_row(row, cur);
  for (; row < a.M; row += stride) {
    if constexpr (PREFETCH) {
      if (row + stride < a.M) load_row(row + stride, nxt);  // warp-uniform
    } else {
      load_row(row, cur);
    }

    float ss = 0.f;
#pragma unroll
    for (int s = 0; s < STEPS; ++s)
      if (active(s))
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int i = 0; i < 8; ++i) { const float f = vec_get<bf16>(cur[s][h], i); ss += f * f; }
    ss = warp_sum(ss);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(N) + a.eps);
    if (a.rms_out && lane == 0) a.rms_out[row] = r;

#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
      const bool on = active(s);
      float y[2][8];
      float amax = 0.f;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float w8[8];
        if (on) {
          if (W_F32) load_floats<float, 8>(a.w, col_of(s, h), w8);
          else load_floats<bf16, 8>(a.w, col_of(s, h), w8);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          y[h][i] = on ? __fmul_rn(__fmul_rn(vec_get<bf16>(cur[s][h], i), r), w8[i]) : 0.f;
          amax = fmaxf(amax, fabsf(y[h][i]));
        }
      }
      amax = warp_max<8>(amax);
      if (!on) continue;
      const rmsq::Quant<ROUND> quant(rmsq::scale_of_max<ROUND>(amax));
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<uint2*>(a.q + static_cast<i64>(row) * N + col_of(s, h)) = rmsq::codes8(quant, y[h]);
      if (c == 0) a.q_scale[static_cast<i64>(s * 4 + blk) * a.M + row] = quant.s;
    }
    if constexpr (PREFETCH) {
#pragma unroll
      for (int s = 0; s < STEPS; ++s) {
        cur[s][0] = nxt[s][0];
        cur[s][1] = nxt[s][1];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Modes 1 and 2. CTA (rank, tb) covers tokens [128·tb, 128·tb + 128) × columns [C·rank, C·rank + C), C = 128·CB,
// 256 threads. Every 128×128 block of x is held in registers, 8 rows × 8 columns a thread: half-warp g (0…15) owns
// rows 8g … 8g+7 and its lane l columns 8l … 8l+7, so
//   a row block's amax is a 16-lane butterfly, a column's amax is a max over the thread's 8 rows, then over the 16
//   half-warps (a shuffle and shared memory), and both quantizations compute y from the same registers.
// Mode 2 first needs r: Σx² of the CTA's slice, exchanged across the cluster of S = N/C CTAs through distributed
// shared memory (every CTA adds the partial sums in rank order, so all see the same r). With CB = 1 the block loaded
// for Σx² stays in registers and x is read exactly once; with CB > 1 each block but the last is loaded again in the
// second pass, newest first (L2 hits), with the next block's loads in flight during each block's compute.
//
// STAGE (CB ≥ 2): the CTA first issues cp.async copies of its whole slice (CB blocks, one group each) into shared
// memory, so the whole slice is in flight at once; the first pass consumes block b as soon as its group lands, and
// the second pass reads the blocks from shared memory (x leaves HBM once, and nothing is re-read from L2).
template <int CB, bool STAGE>
constexpr int rms_norm_block_quant_tile_min_blocks() {
  return STAGE ? (CB >= 3 ? 1 : 2) : (CB == 1 ? 3 : (CB >= 8 ? 1 : 2));
}
//
// GX (K > 0, mode 2, rms_norm_block_quant_tile_gx_kernel): the S CTAs of a row form S / K clusters of K CTAs
// instead of one cluster of S (which must fit a GPC: S ≤ 16 forced CB ≥ 4 at N = 7168). Each cluster adds its CTAs'
// partial sums through distributed shared memory (rank order), the CTAs of the cluster store its 128 sums in the
// workspace ws[tile][S / K][128] as {fp32, tag} pairs (tag unique to the launch, rms_norm_block_quant_stream_args.h),
// and every CTA polls the S / K pairs of each row and adds them in cluster order (all CTAs get bitwise the same r).
// The grid is tile-major (blockIdx.x = chunk), so a tile's clusters are dispatched together; a pair still missing
// after kRmsqStreamSpinLimit polls is summed here from x with the same operations (no CTA depends on another being
// resident).
template <int N, int CB, int MODE, bool ROUND, bool W_F32, bool STAGE, int K>
__device__ __forceinline__ void rms_norm_block_quant_tile_body(const RmsNormBlockQuantArgs& a, u64* ws, u32 tag) {
  static_assert(!STAGE || (CB >= 2 && CB <= 6), "a staged slice is 2 … 6 blocks (shared memory)");
  constexpr int ROWS = 128, WARPS = 8;
  constexpr int C = CB * 128;
  constexpr int S = N / C;
  static_assert(N % C == 0, "the cluster must tile N");
  static_assert(N <= kRmsNormBlockQuantMaxN, "");
  static_assert(K == 0 || (MODE == 2 && !STAGE && K >= 2 && S % K == 0 && S / K <= 8), "GX: clusters of K | S");
  constexpr int KC = K > 0 ? K : S;  // CTAs of a cluster
  constexpr int G = K > 0 ? S / K : 1;  // GX: clusters of a row

  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* partial = reinterpret_cast<float*>(smem_raw);  // [ROWS] this CTA's Σx² per row
  float* rinv = partial + ROWS;                        // [ROWS]
  float* colmax = rinv + ROWS;                         // [WARPS][128]
  float* colscale = colmax + WARPS * 128;              // [128]
  // Transposed codes of the block, [128 channels][16 slots of 8 tokens], slot s of channel n stored at s ^ (n >> 3)
  // so that the 16 lanes of a half-warp writing 8-byte slots of 16 different channels hit 32 different banks.
  u64* codesT = reinterpret_cast<u64*>(colscale + 128);
  float* rscale = reinterpret_cast<float*>(codesT + 128 * 16);  // [128] row-block scales, written out M-major at once
  // STAGE: the slice, [CB][128 rows][128 columns] bf16.
  bf16* slice = reinterpret_cast<bf16*>(smem_raw + kRmsNormBlockQuantTileBaseSmem);

  const int rank = blockIdx.x;
  const int col0 = rank * C;
  const int m0 = blockIdx.y * ROWS;
  const int valid = min(ROWS, a.M - m0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int hl = lane & 15, half = lane >> 4;
  const int g = warp * 2 + half;  // row group: rows 8g … 8g+7
  const bf16* xg = static_cast<const bf16*>(a.x);

  // Rows 8g … 8g+7 of block b, columns 8·hl … 8·hl+7 (rows past M read as zero).
  // With CB > 1 both passes keep the next block's loads in flight (xn) while the current one (xv) is computed.
  constexpr bool PREFETCH = CB > 1 && !STAGE;
  Vec16 xv[8], xn[PREFETCH ? 8 : 1];
  auto load_block = [&](int b, Vec16* dst) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int r = g * 8 + i;
      if constexpr (STAGE) {
        dst[i] = *reinterpret_cast<const Vec16*>(slice + (b * 128 + r) * 128 + hl * 8);  // rows past M were zero-filled
      } else if (r < valid) {
        dst[i] = load16(xg + static_cast<i64>(m0 + r) * a.x_stride + col0 + b * 128 + hl * 8);
      } else {
        dst[i] = Vec16{{0u, 0u, 0u, 0u}};
      }
    }
  };
  if constexpr (STAGE) {
#pragma unroll 1
    for (int b = 0; b < CB; ++b) {
      for (int i = threadIdx.x; i < 128 * 16; i += 256) {
        const int r = i >> 4, c = i & 15;
        const bool ok = r < valid;
        cp_async16(slice + (b * 128 + r) * 128 + c * 8,
                   xg + static_cast<i64>(m0 + (ok ? r : 0)) * a.x_stride + col0 + b * 128 + c * 8, ok);
      }
      cp_async_commit();
    }
  }
  auto advance = [&]() {
    if constexpr (PREFETCH) {
#pragma unroll
      for (int i = 0; i < 8; ++i) xv[i] = xn[i];
    }
  };

  // Σx² of one block's rows 8g … 8g+7 (this thread's 8 columns), accumulated into ss (the GX fallback repeats it).
  auto sum_squares = [&](const Vec16 (&x)[8], float (&ss)[8]) {
#pragma unroll
    for (int i = 0; i < 8; ++i) rmsq::sum_squares8(x[i], ss[i]);
  };

  // 1. r per row. Blocks 0 … CB-1; the last one stays in registers for the second pass, which runs backwards (the
  // blocks it reloads were read most recently: L2 hits).
  if (MODE == 2) {
    float ss[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if constexpr (!STAGE) load_block(0, xv);
#pragma unroll 1
    for (int b = 0; b < CB; ++b) {
      if constexpr (STAGE) {
        cp_async_wait_group_dyn(CB - 1 - b);  // this thread's copies of block b have landed
        __syncthreads();                      // and everyone else's
        load_block(b, xv);
      }
      if (PREFETCH && b + 1 < CB) load_block(b + 1, xn);
      sum_squares(xv, ss);
      if (PREFETCH && b + 1 < CB) advance();
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      ss[i] = warp_sum<16>(ss[i]);
    }
    if (hl == 0)
#pragma unroll
      for (int i = 0; i < 8; ++i) partial[g * 8 + i] = ss[i];
    if (KC > 1) cluster_sync(); else __syncthreads();
    if constexpr (K > 0) {
      rmsq::gx_row_rinv<N, C, K, 256>(a, ws, tag, partial, rinv, colmax, rank, blockIdx.y, m0, valid);
    } else {
    if (threadIdx.x < ROWS) {
      const int r = threadIdx.x;
      float t = 0.f;
      for (int k = 0; k < S; ++k) t += (S > 1) ? cluster_load(partial + r, k) : partial[r];
      const float rv = 1.0f / sqrtf(t / static_cast<float>(N) + a.eps);
      rinv[r] = rv;
      if (rank == 0 && a.rms_out && r < valid) a.rms_out[m0 + r] = rv;
    }
    // partial[] stays readable until every CTA passes the wait at the end. Relaxed: the remote reads above have
    // completed (their values are consumed), and nothing else needs ordering for the other CTAs.
    if (S > 1) cluster_arrive_relaxed();
    }
  } else {
    if (threadIdx.x < ROWS) rinv[threadIdx.x] = static_cast<int>(threadIdx.x) < valid ? a.rms_in[m0 + threadIdx.x] : 0.f;
  }
  __syncthreads();
  float rv[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) rv[i] = rinv[g * 8 + i];

  const i64 tb = blockIdx.y;
  const bool aligned16 = (a.M % 16) == 0;
  if (MODE != 2) {
    if constexpr (STAGE) {
      cp_async_wait_group<0>();
      __syncthreads();
    }
    load_block(CB - 1, xv);
  }
#pragma unroll 1
  for (int b = CB - 1; b >= 0; --b) {
    if (STAGE && b < CB - 1) load_block(b, xv);
    if (PREFETCH && b > 0) load_block(b - 1, xn);
    const int cb0 = col0 + b * 128 + hl * 8;  // this thread's first column
    float w8[8];
    if (W_F32) load_floats<float, 8>(a.w, cb0, w8);
    else load_floats<bf16, 8>(a.w, cb0, w8);

    // y is recomputed from x (32 registers) for the transposed codes instead of held (64): three single-block
    // CTAs fit an SM (measured N = 2048: 41.4 → 38.5 µs). Multi-block CTAs keep two per SM (at three they spill).
    auto y_at = [&](int i, int e) { return __fmul_rn(__fmul_rn(vec_get<bf16>(xv[i], e), rv[i]), w8[e]); };
    float cm[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      float amax = 0.f;
      float y[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        y[e] = y_at(i, e);
        amax = fmaxf(amax, fabsf(y[e]));
        cm[e] = fmaxf(cm[e], fabsf(y[e]));
      }
      // Row-wise block: 16 lanes share the row.
      if (MODE == 2) {
        const int r = g * 8 + i;
        rmsq::row_block_codes<ROUND>(y, amax, r < valid, a.q + static_cast<i64>(m0 + r) * N + cb0, hl, rscale + r);
      }
    }
    // Column maxima: both half-warps of a warp hold the same columns; then across warps in shared memory.
#pragma unroll
    for (int e = 0; e < 8; ++e) cm[e] = fmaxf(cm[e], __shfl_xor_sync(0xffffffffu, cm[e], 16));
    if (half == 0) {
      *reinterpret_cast<float4*>(colmax + warp * 128 + hl * 8) = make_float4(cm[0], cm[1], cm[2], cm[3]);
      *reinterpret_cast<float4*>(colmax + warp * 128 + hl * 8 + 4) = make_float4(cm[4], cm[5], cm[6], cm[7]);
    }
    __syncthreads();
    if (MODE == 2 && threadIdx.x >= 128 && static_cast<int>(threadIdx.x) - 128 < valid)
      a.q_scale[static_cast<i64>(col0 / 128 + b) * a.M + m0 + threadIdx.x - 128] = rscale[threadIdx.x - 128];
    if (threadIdx.x < 128) {
      float m = 0.f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) m = fmaxf(m, colmax[w * 128 + threadIdx.x]);
      const float sc = rmsq::scale_of_max<ROUND>(m);
      colscale[threadIdx.x] = sc;
      a.qT_scale[tb * N + col0 + b * 128 + threadIdx.x] = sc;
    }
    __syncthreads();

    // Transposed block: channel 8·hl + e gets the 8 codes of tokens 8g … 8g+7, staged in shared memory so that the
    // stores to qT go out as whole 128-byte rows (16 bytes a lane).
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const rmsq::Quant<ROUND> quant(colscale[hl * 8 + e]);
      const u32 lo = e4m3x4(quant(y_at(0, e)), quant(y_at(1, e)), quant(y_at(2, e)), quant(y_at(3, e)));
      const u32 hi = e4m3x4(quant(y_at(4, e)), quant(y_at(5, e)), quant(y_at(6, e)), quant(y_at(7, e)));
      codesT[(hl * 8 + e) * 16 + (g ^ hl)] = static_cast<u64>(lo) | (static_cast<u64>(hi) << 32);
    }
    __syncthreads();
    // Warp w writes channels 16w … 16w+15; 8 lanes cover a channel's 128 tokens, 4 channels per instruction.
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int n = warp * 16 + k * 4 + (lane >> 3), j = lane & 7;  // channel in the block, 16-byte piece
      const int sw = n >> 3;
      const u64 a0 = codesT[n * 16 + ((2 * j) ^ sw)], a1 = codesT[n * 16 + ((2 * j + 1) ^ sw)];
      u8* dst = a.qT + static_cast<i64>(col0 + b * 128 + n) * a.M + m0 + j * 16;
      const int t0 = j * 16;  // first token of the piece
      if (aligned16 && t0 + 16 <= valid) {
        store16(dst, Vec16{{static_cast<u32>(a0), static_cast<u32>(a0 >> 32), static_cast<u32>(a1),
                            static_cast<u32>(a1 >> 32)}});
      } else {
        for (int i = 0; i < 16 && t0 + i < valid; ++i) dst[i] = static_cast<u8>((i < 8 ? a0 : a1) >> ((i & 7) * 8));
      }
    }
    if (CB > 1) {
      __syncthreads();  // colmax / colscale are reused by the next block
      advance();
    }
  }
  if (MODE == 2 && KC > 1) cluster_wait();
}
template <int N, int CB, int MODE, bool ROUND, bool W_F32, bool STAGE = false>
__global__ void __launch_bounds__(256, (rms_norm_block_quant_tile_min_blocks<CB, STAGE>()))
    rms_norm_block_quant_tile_kernel(const RmsNormBlockQuantArgs a) {
  rms_norm_block_quant_tile_body<N, CB, MODE, ROUND, W_F32, STAGE, 0>(a, nullptr, 0u);
}
// Mode 2 with clusters of K CTAs and the clusters' row sums through the global workspace (GX above). Grid (S,
// tiles), clusters (K, 1, 1).
template <int N, int CB, bool ROUND, bool W_F32, int K>
__global__ void __launch_bounds__(256, (rms_norm_block_quant_tile_min_blocks<CB, false>()))
    rms_norm_block_quant_tile_gx_kernel(const RmsqStreamArgs sa) {
  static_assert(K == rms_norm_block_quant_gx_cluster(N / (128 * CB)), "the host's cluster size");
  rms_norm_block_quant_tile_body<N, CB, 2, ROUND, W_F32, false, K>(sa.a, sa.ws, sa.tag);
}

// ---------------------------------------------------------------------------------------------------------------------
// Persistent ring kernel (modes 1, 2). Grid (S, G): cluster y = blockIdx.y (S CTAs along x, clusters of S in mode 2)
// takes the 128-token tiles y, y + G, y + 2G, …; CTA `rank` of it owns columns [C·rank, C·rank + C), C = 128·CB,
// of every one of those tiles. The host makes G at most the number of clusters that can be resident at once.
// WARPS = 8 or 16 (256 or 512 threads): half-warp g holds RPT = 2048 / threads rows (8 or 4) × 8 columns of a block,
// so 512-thread CTAs put twice the warps on an SM at the same shared memory (the kernel is latency-bound).
//
// Shared memory (ring_smem_bytes):
//   ring      [R][128 rows][128 columns] bf16   block slots, 256 bytes a row, unswizzled: a half-warp reads one
//                                              row's 256 bytes, so a warp's 16-byte reads are 4 wavefronts, no conflict
//   partial   [2][128] f32    this CTA's Σx² per row, double-buffered by tile parity (read by the cluster via DSMEM)
//   rinv      [2][128] f32    1/rms per row, double-buffered by tile parity
//   colmax, colscale, codesT, rscale   as in the tile kernel (one block at a time)
//   recv      [2][S][128] f32 (PUSH) the cluster's partial sums, pushed here; rbar [2] mbarriers (after 2·R words)
//
// The visit sequence. Every tile's blocks pass through the ring once (RELOAD: twice, pass 1 and pass 2 each
// copying the block, the second copy from L2). The CTA's visits are numbered k = it·V + v (V = CB, or 2·CB with
// RELOAD); visit k lives in slot k % R. Each thread copies exactly the 16-byte pieces it will read (rows RPT·g + j,
// columns 8·hl …; a half-warp copies one row's 256 contiguous bytes) with cp.async, one commit group per visit (rows
// past M zero-filled), so it waits only for its own copies (cp.async.wait_group: groups complete in order) and
// refills a slot with visit k + R right after its own last read of visit k, with no barrier: the ring's producers
// and consumers are the same threads. The first R visits are issued at the start, so R − CB visits (R − 2·CB with
// OVERLAP, R − 1 with RELOAD) of later tiles are always in flight. (The first version had warp 0 issue one 256-byte
// cp.async.bulk per row on an mbarrier: 128 tiny bulk copies a block ran 2.5× slower than the old tile kernel.)
//
// Per tile: pass 1 (mode 2) waits for the tile's CB blocks and sums squares per row from shared memory; the cluster
// exchanges the partial sums, every CTA adding the S partial sums of a row in rank order, so all CTAs get bitwise
// the same r. Exchange by cluster barrier: arrive.release after writing `partial`, wait.acquire, then
// ld.shared::cluster from every CTA. PUSH: each CTA pushes its 512 bytes into every CTA's recv[it & 1][rank] with
// st.async, completing on that CTA's rbar[it & 1] (armed with S·512 bytes by its thread 0), so no CTA ever waits
// for the whole cluster, and nothing orders the CTA's global stores (a release arrive waits for them). Pass 2 reads
// each block again from its slot (RPT rows × 8 columns a thread, as in the tile kernel), quantizes rows and columns
// and stores them.
// OVERLAP (needs R ≥ 2·CB: two tiles resident): pass 1 of tile it+1 and its cluster arrive are done before pass 2 of
// tile it, and the wait comes after it, so the cluster barrier's latency is hidden behind a tile's quantization.
//
// Reuse of the double buffers: partial[p] of tile it is rewritten at tile it+2, after this CTA passed the cluster
// barrier of tile it+1, which every CTA arrives at only after reading tile it's partial sums. PUSH: a CTA pushes
// tile it+2 into a peer's recv[p] only after it received the peer's tile it+1, which the peer pushed after a
// __syncthreads that follows its reads of recv[p] for tile it; so rbar[p]'s phase of tile it has completed and been
// consumed before any byte of tile it+2 arrives (bytes that arrive before the owner arms the phase leave the
// tx-count negative, never complete it). rinv[p] is rewritten two tiles later, after the __syncthreads of pass 2. A
// final cluster barrier keeps every CTA's shared memory alive until the other CTAs are done with it.

// CTAs per SM the ring kernel is compiled for (the register cap follows): as many as shared memory allows (228 KiB
// an SM, 1 KiB reserved per CTA), at most three 256-thread CTAs (85 registers) or two 512-thread ones (64). The
// kernel is latency-bound: warps per SM matter more than slots per CTA (measured).
template <int N, int CB, int R, int WARPS, bool PUSH>
struct RmsNormBlockQuantRingMinBlocks {
  static constexpr int by_smem =
      228 * 1024 / (rms_norm_block_quant_ring_smem_bytes(R, WARPS, PUSH ? N / (CB * 128) : 0) + 1024);
  static constexpr int cap = WARPS == 8 ? 3 : 2;
  static constexpr int value = by_smem < 1 ? 1 : by_smem > cap ? cap : by_smem;
};
template <int N, int CB, int MODE, bool ROUND, bool W_F32, int R, bool OVERLAP, int WARPS = 8, bool RELOAD = false,
          bool PUSH = false>
__global__ void __launch_bounds__(WARPS * 32, (RmsNormBlockQuantRingMinBlocks<N, CB, R, WARPS, PUSH>::value))
    rms_norm_block_quant_ring_kernel(const RmsNormBlockQuantArgs a) {
  using namespace rmsq;
  constexpr int ROWS = 128;
  static_assert(WARPS == 8 || WARPS == 16, "256 or 512 threads");
  constexpr int THREADS = WARPS * 32;
  constexpr int RPT = 2048 / THREADS;  // rows a thread holds of a block (8 or 4), 8 columns each
  // With the register budget of one 256-thread CTA per SM, pass 2 keeps y (64 floats) for the transposed codes;
  // otherwise it recomputes y from x (the same operations, so the same bits) to stay within 128 registers.
  constexpr bool HOLD_Y = WARPS == 8 && RmsNormBlockQuantRingMinBlocks<N, CB, R, WARPS, PUSH>::value == 1;
  constexpr int C = CB * 128;
  constexpr int S = N / C;
  static_assert(N % C == 0, "the cluster must tile N");
  static_assert(MODE == 1 || MODE == 2, "the ring kernel writes the transposed output");
  static_assert(R >= (RELOAD ? 1 : OVERLAP ? 2 * CB : CB) && R <= kRmsNormBlockQuantMaxRing,
                "a tile's blocks (two tiles' with OVERLAP) must fit the ring");
  static_assert(!OVERLAP || MODE == 2, "OVERLAP pipelines the mode-2 reduction");
  static_assert(!RELOAD || (MODE == 2 && !OVERLAP), "RELOAD visits each block twice in the plain mode-2 order");
  constexpr bool CLUSTER = MODE == 2 && S > 1;
  static_assert(!PUSH || CLUSTER, "PUSH exchanges partial sums within a cluster");
  constexpr int BLOCK = ROWS * 128;  // elements of a slot

  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* ring = reinterpret_cast<bf16*>(smem_raw);
  float* partial = reinterpret_cast<float*>(smem_raw + R * BLOCK * 2);  // [2][ROWS]
  float* rinv = partial + 2 * ROWS;                                     // [2][ROWS]
  float* colmax = rinv + 2 * ROWS;                                      // [WARPS][128]
  float* colscale = colmax + WARPS * 128;                               // [128]
  // Transposed codes of the block: channel n's 128 tokens as 128/RPT slots of RPT bytes (the RPT tokens of one
  // thread). RPT = 8: slot s at s ^ (n >> 3), as in the tile kernel. RPT = 4: 32 four-byte slots, slot s at
  // s ^ (2·(n >> 3)): the 32 lanes of a warp (same warp index, 16 channel groups × 2 half-warps) hit 32 banks.
  u64* codesT = reinterpret_cast<u64*>(colscale + 128);
  u32* codesT32 = reinterpret_cast<u32*>(codesT);
  float* rscale = reinterpret_cast<float*>(codesT + 128 * 16);          // [128]
  float* recv = rscale + 128;                                           // PUSH: [2][S][ROWS] partial sums received
  u64* rbar = reinterpret_cast<u64*>(recv + (PUSH ? 2 * S * ROWS : 0) + 2 * R);  // PUSH: [2] recv[p] has landed

  const int rank = blockIdx.x;
  const int col0 = rank * C;
  const int group = blockIdx.y, groups = gridDim.y;
  const int tiles = (a.M + ROWS - 1) / ROWS;
  const int my_tiles = (tiles - 1 - group) / groups + 1;  // the host launches G ≤ tiles: at least one
  constexpr int V = RELOAD ? 2 * CB : CB;  // block visits (ring fills) per tile
  const int nblk = my_tiles * V;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int hl = lane & 15, half = lane >> 4;
  const int g = warp * 2 + half;  // row group: rows RPT·g … RPT·g + RPT-1
  const bf16* xg = static_cast<const bf16*>(a.x);
  auto tile_m0 = [&](int it) { return (group + it * groups) * ROWS; };

  if constexpr (PUSH) {
    if (threadIdx.x == 0) {
      mbar_init(rbar, 1);
      mbar_init(rbar + 1, 1);
      fence_mbar_init();
      fence_proxy_async();
    }
    cluster_sync();  // every CTA's barriers exist before anyone pushes into them
  }

  // Producer: visit k of the sequence into slot k % R. Every thread copies exactly the 16-byte pieces it reads
  // (rows RPT·g + j, columns 8·hl …; a half-warp copies one row's 256 contiguous bytes), one cp.async group a visit,
  // rows past M zero-filled. So a thread waits only for its own groups (cp.async.wait_group), and refills a slot
  // right after its own last read of it, with no barrier.
  int issued = 0;  // visits issued so far (the same in every thread)
  auto issue = [&](int k) {
    const int it = k / V, b = (k - it * V) % CB;
    const int m0 = tile_m0(it);
    const int valid = min(ROWS, a.M - m0);
    bf16* dst = ring + (k % R) * BLOCK;
    const bf16* src = xg + static_cast<i64>(m0) * a.x_stride + col0 + b * 128 + hl * 8;
#pragma unroll
    for (int j = 0; j < RPT; ++j) {
      const int r = g * RPT + j;
      const bool ok = r < valid;
      cp_async16(dst + r * 128 + hl * 8, src + static_cast<i64>(ok ? r : 0) * a.x_stride, ok);
    }
    cp_async_commit();
    ++issued;
  };
#pragma unroll 1
  for (int k = 0; k < min(R, nblk); ++k) issue(k);
  // This thread's pieces of visit k have landed (groups complete in order; at most R − 1 newer ones are pending).
  auto wait_block = [&](int k) { cp_async_wait_group_dyn(issued - k - 1); };
  // After this thread's last read of visit k: the slot takes visit k + R.
  auto release = [&](int k) {
    if (k + R < nblk) issue(k + R);
  };
  // Rows RPT·g …, columns 8·hl … 8·hl+7 of visit k (rows past M were zero-filled).
  auto read_block = [&](int k, Vec16 (&dst)[RPT]) {
    const bf16* blk = ring + (k % R) * BLOCK;
#pragma unroll
    for (int i = 0; i < RPT; ++i) dst[i] = *reinterpret_cast<const Vec16*>(blk + (g * RPT + i) * 128 + hl * 8);
  };

  // Pass 1 of tile it (mode 2): Σx² of the CTA's slice per row into partial[it & 1], then the cluster arrive (or a
  // CTA barrier when the CTA has the whole row).
  auto pass1 = [&](int it) {
    float ss[RPT];
#pragma unroll
    for (int i = 0; i < RPT; ++i) ss[i] = 0.f;
#pragma unroll 1
    for (int b = 0; b < CB; ++b) {
      const int k = it * V + b;
      wait_block(k);
      Vec16 xv[RPT];
      read_block(k, xv);
#pragma unroll
      for (int i = 0; i < RPT; ++i)
#pragma unroll
        for (int e = 0; e < 8; ++e) { const float f = vec_get<bf16>(xv[i], e); ss[i] += f * f; }
      if constexpr (RELOAD) release(k);  // the values are consumed (ss depends on them): the slot is free
    }
#pragma unroll
    for (int i = 0; i < RPT; ++i) ss[i] = warp_sum<16>(ss[i]);
    if (hl == 0)
#pragma unroll
      for (int i = 0; i < RPT; ++i) partial[(it & 1) * ROWS + g * RPT + i] = ss[i];
    if constexpr (PUSH) {
      // partial[] complete, and this CTA's reads of recv[it & 1] two tiles ago are done: a peer pushes tile it+2 into
      // them only after it has received what this CTA pushes below.
      __syncthreads();
#pragma unroll 1
      for (int u = threadIdx.x; u < S * 32; u += THREADS) {  // 32 pieces of 16 bytes to each of the S CTAs
        const int q = u >> 5, c = u & 31;
        const float4 v = *reinterpret_cast<const float4*>(partial + (it & 1) * ROWS + c * 4);
        st_async16(recv + ((it & 1) * S + rank) * ROWS + c * 4, v, rbar + (it & 1), static_cast<u32>(q));
      }
    } else if constexpr (CLUSTER) {
      cluster_arrive();
    } else {
      __syncthreads();
    }
  };
  // r of tile it into rinv[it & 1] (after pass 1; mode 1 reads rms_in).
  auto finish_r = [&](int it) {
    const int m0 = tile_m0(it);
    const int valid = min(ROWS, a.M - m0);
    if constexpr (MODE == 2) {
      if constexpr (CLUSTER && !PUSH) cluster_wait();
      if (threadIdx.x < ROWS) {
        const int r = threadIdx.x;
        const float* p = partial + (it & 1) * ROWS + r;
        float t = 0.f;
        if constexpr (PUSH) {  // the S partial sums of every row land in recv[it & 1] (S·512 bytes on rbar)
          if (r == 0) mbar_arrive_expect_tx(rbar + (it & 1), S * ROWS * 4);
          mbar_wait(rbar + (it & 1), static_cast<u32>(it >> 1) & 1u);
#pragma unroll 1
          for (int q = 0; q < S; ++q) t += recv[((it & 1) * S + q) * ROWS + r];
        } else {
#pragma unroll 1
          for (int q = 0; q < S; ++q) t += CLUSTER ? cluster_load(p, q) : *p;
        }
        const float rv = 1.0f / sqrtf(t / static_cast<float>(N) + a.eps);
        rinv[(it & 1) * ROWS + r] = rv;
        if (rank == 0 && a.rms_out && r < valid) a.rms_out[m0 + r] = rv;
      }
    } else {
      if (threadIdx.x < ROWS)
        rinv[(it & 1) * ROWS + threadIdx.x] = static_cast<int>(threadIdx.x) < valid ? a.rms_in[m0 + threadIdx.x] : 0.f;
    }
  };

  const bool aligned16 = (a.M % 16) == 0;
  // Pass 2 of tile it: both quantizations, block by block; each block's slot is refilled once it is in registers.
  // `synced`: a CTA barrier since finish_r(it) already made rinv[it & 1] visible (pass 1 of the next tile ends with
  // one when the exchange is by pushes or there is no cluster).
  auto pass2 = [&](int it, bool synced) {
    const int m0 = tile_m0(it);
    const int valid = min(ROWS, a.M - m0);
    const i64 tb = group + static_cast<i64>(it) * groups;
    if (!synced) __syncthreads();  // rinv[it & 1] is complete
    float rv[RPT];
#pragma unroll
    for (int i = 0; i < RPT; ++i) rv[i] = rinv[(it & 1) * ROWS + g * RPT + i];
#pragma unroll 1
    for (int b = 0; b < CB; ++b) {
      const int k = it * V + (RELOAD ? CB : 0) + b;
      if constexpr (MODE != 2 || RELOAD) wait_block(k);
      Vec16 xv[RPT];
      read_block(k, xv);
      const int cb0 = col0 + b * 128 + hl * 8;  // this thread's first column
      float w8[8];
      if (W_F32) load_floats<float, 8>(a.w, cb0, w8);
      else load_floats<bf16, 8>(a.w, cb0, w8);
      auto y_of = [&](int i, int e) { return __fmul_rn(__fmul_rn(vec_get<bf16>(xv[i], e), rv[i]), w8[e]); };
      float yh[HOLD_Y ? RPT : 1][8] = {};
      auto y_at = [&](int i, int e) {
        if constexpr (HOLD_Y) return yh[i][e];
        else return y_of(i, e);
      };
      float cm[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int i = 0; i < RPT; ++i) {
        float amax = 0.f;
        float y[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          y[e] = y_of(i, e);
          if constexpr (HOLD_Y) yh[i][e] = y[e];
          amax = fmaxf(amax, fabsf(y[e]));
          cm[e] = fmaxf(cm[e], fabsf(y[e]));
        }
        if (MODE == 2) {  // row-wise block: the 16 lanes of a half-warp share the row
          const int r = g * RPT + i;
          rmsq::row_block_codes<ROUND>(y, amax, r < valid, a.q + static_cast<i64>(m0 + r) * N + cb0, hl, rscale + r);
        }
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) cm[e] = fmaxf(cm[e], __shfl_xor_sync(0xffffffffu, cm[e], 16));
      if (half == 0) {
        *reinterpret_cast<float4*>(colmax + warp * 128 + hl * 8) = make_float4(cm[0], cm[1], cm[2], cm[3]);
        *reinterpret_cast<float4*>(colmax + warp * 128 + hl * 8 + 4) = make_float4(cm[4], cm[5], cm[6], cm[7]);
      }
      release(k);       // this thread's values of visit k are consumed (cm depends on them)
      __syncthreads();  // (A) colmax, rscale complete
      if (MODE == 2 && threadIdx.x >= 128 && static_cast<int>(threadIdx.x) - 128 < valid)
        a.q_scale[static_cast<i64>(col0 / 128 + b) * a.M + m0 + threadIdx.x - 128] = rscale[threadIdx.x - 128];
      if (threadIdx.x < 128) {
        float m = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) m = fmaxf(m, colmax[w * 128 + threadIdx.x]);
        const float sc = rmsq::scale_of_max<ROUND>(m);
        colscale[threadIdx.x] = sc;
        a.qT_scale[tb * N + col0 + b * 128 + threadIdx.x] = sc;
      }
      __syncthreads();  // (B) colscale complete
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const rmsq::Quant<ROUND> quant(colscale[hl * 8 + e]);
        const u32 lo = e4m3x4(quant(y_at(0, e)), quant(y_at(1, e)), quant(y_at(2, e)), quant(y_at(3, e)));
        if constexpr (RPT == 8) {
          const u32 hi = e4m3x4(quant(y_at(4, e)), quant(y_at(5, e)), quant(y_at(6, e)), quant(y_at(7, e)));
          codesT[(hl * 8 + e) * 16 + (g ^ hl)] = static_cast<u64>(lo) | (static_cast<u64>(hi) << 32);
        } else {
          codesT32[(hl * 8 + e) * 32 + (g ^ (2 * hl))] = lo;
        }
      }
      __syncthreads();  // (C) codesT complete
      // Warp w writes channels (128/WARPS)·w …; 8 lanes cover a channel's 128 tokens, 4 channels per instruction.
#pragma unroll
      for (int kk = 0; kk < 128 / WARPS / 4; ++kk) {
        const int n = warp * (128 / WARPS) + kk * 4 + (lane >> 3), j = lane & 7;  // channel in the block, piece
        const int sw = n >> 3;
        u64 a0, a1;
        if constexpr (RPT == 8) {
          a0 = codesT[n * 16 + ((2 * j) ^ sw)];
          a1 = codesT[n * 16 + ((2 * j + 1) ^ sw)];
        } else {
          const u32* c = codesT32 + n * 32;
          a0 = static_cast<u64>(c[(4 * j) ^ (2 * sw)]) | (static_cast<u64>(c[(4 * j + 1) ^ (2 * sw)]) << 32);
          a1 = static_cast<u64>(c[(4 * j + 2) ^ (2 * sw)]) | (static_cast<u64>(c[(4 * j + 3) ^ (2 * sw)]) << 32);
        }
        u8* dst = a.qT + static_cast<i64>(col0 + b * 128 + n) * a.M + m0 + j * 16;
        const int t0 = j * 16;
        if (aligned16 && t0 + 16 <= valid) {
          store16(dst, Vec16{{static_cast<u32>(a0), static_cast<u32>(a0 >> 32), static_cast<u32>(a1),
                              static_cast<u32>(a1 >> 32)}});
        } else {
          for (int i = 0; i < 16 && t0 + i < valid; ++i) dst[i] = static_cast<u8>((i < 8 ? a0 : a1) >> ((i & 7) * 8));
        }
      }
      // No barrier here: the next block writes rscale and colmax before its (A), colscale after it and codesT after
      // its (B); a thread there has passed this block's (C), so every thread has finished reading them.
    }
  };

  if constexpr (OVERLAP) {
    pass1(0);
#pragma unroll 1
    for (int it = 0; it < my_tiles; ++it) {
      finish_r(it);                           // cluster wait of tile it
      if (it + 1 < my_tiles) pass1(it + 1);   // cluster arrive of tile it+1 …
      pass2(it, (PUSH || !CLUSTER) && it + 1 < my_tiles);  // … whose wait comes after this tile's quantization
    }
  } else {
#pragma unroll 1
    for (int it = 0; it < my_tiles; ++it) {
      if constexpr (MODE == 2) pass1(it);
      finish_r(it);
      pass2(it, false);
    }
  }
  if constexpr (CLUSTER) cluster_sync();  // keep `partial` alive until every CTA has read it
}

// ---------------------------------------------------------------------------------------------------------------------
// Mode 0's math for one row held in shared memory (the pipe kernel): the row8 layout (lane = 8·blk + c:
// block blk of each 512-column step, its 16-byte chunks c and c + 8), Σx² in four interleaved accumulators, the
// block amax as a tree, the scale from amax's bits (ROUND). Writes q, q_scale and rms_out (if any) of the row.
// lds(s, h): the Vec16 of chunk h of the warp's step s; weights(s, h, w8): its 8 weights (an active step), as floats.
// SPLIT > 1: the row is shared by the SPLIT warps of a group; this one (sub) holds steps [sub·STEPS/SPLIT, …) of it
// (its part of the row only), and the group adds its warps' Σx² in sub order through `xslot` (this row's [WARPS]
// exchange floats; named barrier 1 + group of SPLIT warps), so every warp of the group gets the same r.
namespace rmsq {

// The row's r = 1/rms from the Σx² of the warp's steps (and of its group's other warps when SPLIT > 1).
template <int N, int SPLIT, typename Lds>
__device__ __forceinline__ float row8_rinv(Lds&& lds, float eps, int lane, int sub, int group, float* xslot) {
  constexpr int NB = N / 128;                  // column blocks per row
  constexpr int STEPS = (NB + 3) / 4 / SPLIT;  // this warp's 512-column steps
  static_assert(SPLIT == 1 || NB % (4 * SPLIT) == 0, "a split row: whole steps for every warp");
  const int blk = lane >> 3;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int s = 0; s < STEPS; ++s)
    if (SPLIT > 1 || s * 4 + blk < NB)  // an active step (8-lane-group uniform)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const Vec16 v = lds(s, h);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float f = vec_get<bf16>(v, i);
          acc[i & 3] = fmaf(f, f, acc[i & 3]);
        }
      }
  float ss = warp_sum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  if constexpr (SPLIT > 1) {
    const int warp = group * SPLIT + sub;
    if (lane == 0) xslot[warp] = ss;
    named_barrier_sync(1 + group, SPLIT * 32);
    ss = xslot[group * SPLIT];
#pragma unroll
    for (int u = 1; u < SPLIT; ++u) ss += xslot[group * SPLIT + u];
  }
  return 1.0f / sqrtf(ss / static_cast<float>(N) + eps);
}

// The warp's 512-column steps of the row scaled by r: y = x·r·w, each 128-column block's amax over its 8 lanes, the
// codes (qrow + 512·s + 64·h: this lane's chunk h of step s) and the block's scale (qs, + qs_step a step).
template <int N, bool ROUND, int SPLIT, typename Lds, typename WeightsFn>
__device__ __forceinline__ void row8_quantize(Lds&& lds, WeightsFn&& weights, float r, u8* qrow, float* qs,
                                              i64 qs_step, int lane) {
  constexpr int NB = N / 128;
  constexpr int STEPS = (NB + 3) / 4 / SPLIT;
#pragma unroll
  for (int s = 0; s < STEPS; ++s) {
    const bool on = SPLIT > 1 || s * 4 + (lane >> 3) < NB;  // an active step (8-lane-group uniform)
    float y[16];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (on) {
        const Vec16 v = lds(s, h);
        float w8[8];
        weights(s, h, w8);
#pragma unroll
        for (int i = 0; i < 8; ++i) y[8 * h + i] = __fmul_rn(__fmul_rn(vec_get<bf16>(v, i), r), w8[i]);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) y[8 * h + i] = 0.f;
      }
    }
    // Tree of fmaxf (NaN ignored); the final max with 0 turns an all-NaN lane into 0, as a running max from 0.
    float m[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) m[j] = fmaxf(fabsf(y[2 * j]), fabsf(y[2 * j + 1]));
#pragma unroll
    for (int j = 0; j < 4; ++j) m[j] = fmaxf(m[j], m[j + 4]);
    const float amax = warp_max<8>(fmaxf(fmaxf(fmaxf(m[0], m[2]), fmaxf(m[1], m[3])), 0.f));
    if (on) {
      // (round_scale 0: block_scale's div.rn here — scale_of_max's division-free form measured slower in this kernel,
      // 20.3 → 21.05 µs at N = 2048, session 21: 128 registers instead of 122)
      const Quant<ROUND> quant(ROUND ? scale_of_max<ROUND>(amax) : block_scale<false>(amax));
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint2 out;
        out.x = e4m3x4(quant(y[8 * h + 0]), quant(y[8 * h + 1]), quant(y[8 * h + 2]), quant(y[8 * h + 3]));
        out.y = e4m3x4(quant(y[8 * h + 4]), quant(y[8 * h + 5]), quant(y[8 * h + 6]), quant(y[8 * h + 7]));
        *reinterpret_cast<uint2*>(qrow + 512 * s + 64 * h) = out;
      }
      if ((lane & 7) == 0) *qs = quant.s;
    }
    qs += qs_step;
  }
}

// The row (this warp's part of it) at xs, a generic pointer to its slot; returns r.
template <int N, bool ROUND, int SPLIT = 1, typename WeightsFn>
__device__ __forceinline__ float row8_smem(const RmsNormBlockQuantArgs& a, const unsigned char* xs, i64 row, int lane,
                                           WeightsFn&& weights, int sub = 0, int group = 0, float* xslot = nullptr) {
  constexpr int STEPS = (N / 128 + 3) / 4 / SPLIT;
  const int blk = lane >> 3, c = lane & 7;
  const int s0 = sub * STEPS;  // the row's step of this warp's step 0
  auto col_of = [&](int s, int h) { return (s * 4 + blk) * 128 + (c + 8 * h) * 8; };  // chunk h's column in xs
  auto lds = [&](int s, int h) { return lds16(smem_u32(xs + col_of(s, h) * 2)); };
  // Output pointers of step 0, advanced by constants (no 64-bit index arithmetic per step).
  u8* const qrow = a.q + row * N + (s0 * 4 + blk) * 128 + c * 8;       // + 512·s + 64·h
  float* qs = a.q_scale + static_cast<i64>(s0 * 4 + blk) * a.M + row;  // + qs_step a step
  const i64 qs_step = 4 * static_cast<i64>(a.M);
  // Σx² as row8_rinv computes it, written out here: with row8_rinv the N = 7168 kernels schedule differently (same
  // instructions, other order and registers), and this path's SASS is kept identical to the measured one.
  constexpr int NB = N / 128;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int s = 0; s < STEPS; ++s)
    if (SPLIT > 1 || s * 4 + blk < NB)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const Vec16 v = lds(s, h);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float f = vec_get<bf16>(v, i);
          acc[i & 3] = fmaf(f, f, acc[i & 3]);
        }
      }
  float ss = warp_sum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  if constexpr (SPLIT > 1) {
    const int warp = group * SPLIT + sub;
    if (lane == 0) xslot[warp] = ss;
    named_barrier_sync(1 + group, SPLIT * 32);
    ss = xslot[group * SPLIT];
#pragma unroll
    for (int u = 1; u < SPLIT; ++u) ss += xslot[group * SPLIT + u];
  }
  const float r = 1.0f / sqrtf(ss / static_cast<float>(N) + a.eps);
  if (a.rms_out && lane == 0 && sub == 0) a.rms_out[row] = r;
  row8_quantize<N, ROUND, SPLIT>(lds, weights, r, qrow, qs, qs_step, lane);
  return r;
}

// The same math with the pipe kernel's LEAN addressing: xs = the 32-bit shared-memory address of this lane's first
// chunk in the row's slot (slot + (blk·128 + c·8)·2), qrow = this lane's first code of the warp's part of the row,
// qs = the scale of its first block (+ qs_step a step), rms = the row's rms_out entry where this lane writes it
// (else null). Same operations in the same order as row8_smem, so the same bits.
template <int N, bool ROUND, int SPLIT, typename WeightsFn>
__device__ __forceinline__ void row8_lean(u32 xs, u8* qrow, float* qs, i64 qs_step, float* rms, float eps, int lane,
                                          WeightsFn&& weights, int sub, int group, float* xslot) {
  auto lds = [&](int s, int h) { return lds16(xs + static_cast<u32>(s * 1024 + h * 128)); };  // chunk h of step s
  const float r = row8_rinv<N, SPLIT>(lds, eps, lane, sub, group, xslot);
  if (rms) *rms = r;
  row8_quantize<N, ROUND, SPLIT>(lds, weights, r, qrow, qs, qs_step, lane);
}
}  // namespace rmsq

// ---------------------------------------------------------------------------------------------------------------------
// Mode 0 on kiln/row_pipe.cuh (pipe_kernel: the row kernel's config with stages > 0). A persistent grid sized to the
// GPU; CTA c of G takes rows c, c + G, … (CtaRows: counts differ by ≤ 1), its warp w every WARPS-th of them, and
// streams them through its own ring of DEPTH row slots in shared memory (one TMA bulk copy a row, L2 evict-first,
// one mbarrier a slot), so DEPTH − 1 rows per warp are in flight while it computes one and no warp waits for
// another. The row is read from its slot twice (Σx², then the quantization): no row is held in registers. The math
// is the row8 kernel's layout (8 lanes a 128-column block, 16 values a lane) with fewer instructions an element:
//  * WREG (N ≤ 2048): the lane's weights held in registers as fp32 for the whole kernel, instead of loaded (L1
//    hits) for every row;
//  * Σx² in four interleaved accumulators, the block amax as a tree;
//  * ROUND: the power-of-two scale from the bits of amax (rmsq::scale_of_max: no division) and its reciprocal
//    from its bits (rmsq::Quant), as in every kernel here.
// SPLIT = 2: two warps a row (half each, through their own rings; Σx² exchanged: rmsq::row8_smem).
// Registers are capped for 16 warps an SM where shared memory allows it (uncapped, weights in registers took 167).
// Shared memory: [WARPS][DEPTH][N / SPLIT] bf16 rows, then [WARPS][DEPTH] mbarriers, then (SPLIT > 1) [2][WARPS]
// floats (rms_norm_block_quant_pipe_smem_bytes).
// FLAGS: the variants kRmsqPipe* (rms_norm_block_quant_args.h): START1, LEAN, NOFENCE, TRACE. TRACE writes, per
// warp (kRmsqPipeTraceSlots u64 at (blockIdx.x·WARPS + warp)·slots of the array in a.qT): [0] globaltimer at entry,
// [1] clock64 at entry, [2] clock64 once the first copies are issued, [3] rows | smid << 32, [4] clock64 at the end,
// [5] globaltimer at the end, [6 + 2k] clock64 once row k has landed, [7 + 2k] once it is computed (k <
// kRmsqPipeTraceRows).
template <int N, int WARPS, int DEPTH, bool WREG, bool ROUND, bool W_F32, int SPLIT = 1, int FLAGS = 0>
__global__ void __launch_bounds__(WARPS * 32, (rms_norm_block_quant_pipe_min_blocks(N, WARPS, DEPTH, SPLIT, WREG)))
    rms_norm_block_quant_pipe_kernel(const RmsNormBlockQuantArgs a) {
  constexpr int NB = N / 128;                  // column blocks per row
  constexpr int STEPS = (NB + 3) / 4 / SPLIT;  // a warp's 512-column steps
  constexpr int SLOT = N * 2 / SPLIT;          // a warp's part of a bf16 row
  constexpr bool START1 = (FLAGS & kRmsqPipeStart1) != 0, LEAN = (FLAGS & kRmsqPipeLean) != 0;
  constexpr bool NOFENCE = (FLAGS & kRmsqPipeNoFence) != 0, TRACE = (FLAGS & kRmsqPipeTrace) != 0;
  static_assert(N % 128 == 0 && SLOT < (1 << 20), "one bulk copy a row");
  static_assert(DEPTH >= 2, "a ring of at least two slots");
  static_assert(WARPS == 4 || WARPS == 8 || WARPS == 16, "");
  static_assert(!WREG || N <= 2048, "at most 64 registers of weights");
  static_assert(SPLIT == 1 || (SPLIT == 2 && NB % 8 == 0), "two warps a row: whole steps each");
  static_assert((FLAGS & ~(kRmsqPipeStart1 | kRmsqPipeLean | kRmsqPipeNoFence | kRmsqPipeTrace)) == 0,
                "unknown variant bits");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int group = warp / SPLIT, sub = warp % SPLIT;  // the SPLIT warps of a group share their rows
  const int blk = lane >> 3, c = lane & 7;             // block of the step, chunk pair in the block
  u64* const trace = TRACE ? reinterpret_cast<u64*>(a.qT) + (static_cast<i64>(blockIdx.x) * WARPS + warp) *
                                                               kRmsqPipeTraceSlots
                           : nullptr;
  auto stamp = [&](int slot, u64 v) {
    if constexpr (TRACE)
      if (lane == 0) trace[slot] = v;
  };
  auto gtimer = [] {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
    return t;
  };
  auto clk = [] { return static_cast<u64>(clock64()); };
  if constexpr (TRACE) {
    stamp(0, gtimer());
    stamp(1, clk());
  }
  WarpRing<DEPTH, SLOT, true> ring{smem_raw + warp * DEPTH * SLOT,
                                   reinterpret_cast<u64*>(smem_raw + WARPS * DEPTH * SLOT) + warp * DEPTH};
  float* xch = reinterpret_cast<float*>(smem_raw + WARPS * DEPTH * (SLOT + 8));  // [2][WARPS] Σx² (SPLIT > 1)
  ring.init(lane);

  const int s0 = sub * STEPS;  // the row's step of this warp's step 0
  auto active = [&](int s) { return (s0 + s) * 4 + blk < NB; };                          // 8-lane-group uniform
  auto col_of = [&](int s, int h) { return ((s0 + s) * 4 + blk) * 128 + (c + 8 * h) * 8; };  // chunk h's column
  // The warp's rows: row(k) = first + k·step, k < rows (CtaRows).
  constexpr int GROUPS = WARPS / SPLIT;
  const CtaRows strip(a.M, group, GROUPS);
  const i64 first = strip.row(0), step = static_cast<i64>(GROUPS) * strip.G;
  const int rows = strip.n;
  // LEAN: the source of the next row to issue, advanced by a constant (rows are issued in order).
  const unsigned char* xnext = reinterpret_cast<const unsigned char*>(static_cast<const bf16*>(a.x) + first * a.x_stride +
                                                                      sub * (N / SPLIT));
  const i64 xstep = step * a.x_stride * 2;
  // Row k of the warp (its part of it).
  auto issue_row = [&](int k, bool valid) {
    const void* src;
    if constexpr (LEAN) {
      src = xnext;
      xnext += xstep;
    } else {
      src = static_cast<const bf16*>(a.x) + (valid ? strip.row(k) : 0) * a.x_stride + sub * (N / SPLIT);
    }
    if constexpr (NOFENCE) {
      if (valid && lane == 0) {
        u64* bar = ring.bars + k % DEPTH;
        mbar_arrive_expect_tx(bar, SLOT);
        bulk_load_evict_first(ring.slot(k), src, SLOT, bar);
      }
    } else {
      const void* const srcs[1] = {src};
      ring.template issue<SLOT, 1>(k, valid, srcs, lane);
    }
  };
#pragma unroll 1
  for (int k = 0; k < (START1 ? 1 : DEPTH); ++k) issue_row(k, k < rows);
  if constexpr (TRACE) {
    stamp(2, clk());
    u32 sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    stamp(3, static_cast<u64>(rows) | (static_cast<u64>(sm) << 32));
  }

  float wr[WREG ? STEPS : 1][2][WREG ? 8 : 1];
  if constexpr (WREG) {
#pragma unroll
    for (int s = 0; s < STEPS; ++s)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (!active(s)) {
#pragma unroll
          for (int j = 0; j < 8; ++j) wr[s][h][j] = 0.f;
        } else if (W_F32) {
          load_floats<float, 8>(a.w, col_of(s, h), wr[s][h]);
        } else {
          load_floats<bf16, 8>(a.w, col_of(s, h), wr[s][h]);
        }
      }
  }
  // The 8 weights of chunk h of step s (an active step), as floats.
  auto weights = [&](int s, int h, float (&w8)[8]) {
    if constexpr (WREG) {
#pragma unroll
      for (int i = 0; i < 8; ++i) w8[i] = wr[s][h][i];
    } else {
      if (W_F32) load_floats<float, 8>(a.w, col_of(s, h), w8);
      else load_floats<bf16, 8>(a.w, col_of(s, h), w8);
    }
  };

  // LEAN: this lane's outputs of row k, advanced by constants.
  const u32 xs0 = smem_u32(ring.base) + static_cast<u32>((blk * 128 + c * 8) * 2);
  u8* qrow = a.q + first * N + (s0 * 4 + blk) * 128 + c * 8;
  float* qs = a.q_scale + static_cast<i64>(s0 * 4 + blk) * a.M + first;
  const bool rms_lane = a.rms_out && lane == 0 && sub == 0;
  i64 row = first;
#pragma unroll 1
  for (int k = 0; k < rows; ++k) {
    ring.wait(k);
    if constexpr (TRACE)
      if (k < kRmsqPipeTraceRows) stamp(6 + 2 * k, clk());
    if constexpr (START1)
      if (k == 0)
#pragma unroll 1
        for (int j = 1; j < DEPTH; ++j) issue_row(j, j < rows);
    if constexpr (LEAN) {
      rmsq::row8_lean<N, ROUND, SPLIT>(xs0 + static_cast<u32>((k % DEPTH) * SLOT), qrow, qs, 4 * static_cast<i64>(a.M),
                                       rms_lane ? a.rms_out + row : nullptr, a.eps, lane, weights, sub, group,
                                       xch + (k & 1) * WARPS);
      qrow += step * N;
      qs += step;
      row += step;
    } else {
      rmsq::row8_smem<N, ROUND, SPLIT>(a, ring.slot(k), strip.row(k), lane, weights, sub, group, xch + (k & 1) * WARPS);
    }
    ring.release();  // every lane has read the slot
    if constexpr (TRACE)
      if (k < kRmsqPipeTraceRows) stamp(7 + 2 * k, clk());
    issue_row(k + DEPTH, k + DEPTH < rows);
  }
  ring.drain();
  if constexpr (TRACE) {
    stamp(4, clk());
    stamp(5, gtimer());
  }
}

}  // namespace kiln
