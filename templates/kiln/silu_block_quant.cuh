// kiln/silu_block_quant.cuh — SwiGLU (SiLU(gate)·up) fused with fp8 e4m3 1×128 block quantization, forward and
// backward, for the shared expert and (BATCHED) for E routed experts whose rows lie back to back in x.
//
//   x [M, 2n] bf16: gate a = x[:, :n], up b = x[:, n:];  σ = sigmoid(a) (kiln's deterministic sigmoid below)
//   forward   y  = (a·σ)·b                      batched: y = ((a·σ)·b)·w[m]
//   backward  gw = g                            batched: gw = g·w[m]
//             dx₂ = gw·(a·σ)
//             dx₁ = ((gw·b)·σ)·(1 + a·(1 − σ))
//             batched: dw[m] = Σ_k ((a·σ)·b)·g   (fp32; per 128-column partial, then summed in column order)
// every operation one correctly rounded fp32 op in exactly this order (explicit intrinsics: no FMA contraction), so a
// CPU reference that performs the same operations reproduces y and dx bit for bit, and with them every scale and code.
// Quantization (linghe §2): 1×128 blocks along the last axis of each output; the forward's y [M, n] row-wise and yᵀ
// [n, M]; the backward's dx [M, 2n] (dx₁ columns, then dx₂) row-wise and dxᵀ [2n, M]. Batched outputs use the
// per-expert segmented layout (each expert's pieces laid out like a standalone M = c_e tensor).
//
// One tile kernel: a persistent grid of 512-thread CTAs walks 128-token × 128-channel tiles (tile t: token block
// t / (n/128), channel block t % (n/128)). Inputs are staged in shared memory with cp.async, one or two buffers
// (STAGES): with two stages the next tile streams in while this one is computed. Thread (half-warp h = 0…31, lane
// l = 0…15) computes rows 4h … 4h+3 × channels 8l … 8l+7 of the tile: a row block's amax is a 16-lane butterfly, a
// column's amax a max over 4 rows and a shared-memory atomicMax; both quantizations come from the same registers.
// The transposed codes are staged in shared memory (swizzled: conflict-free 4-byte writes) and leave as 128-byte
// rows (16 bytes a lane).
#pragma once
#include "kiln/block_quant_tile.cuh"
#include "kiln/common.cuh"
#include "kiln/fp8.cuh"
#include "kiln/pdl.cuh"
#include "kiln/ptx.cuh"
#include "kiln/silu_block_quant_args.h"

namespace kiln {

// ---- deterministic sigmoid ------------------------------------------------------------------------------------------
// e = exp(−|a|) by Cody–Waite reduction and a degree-7 polynomial (Cephes expf coefficients), then
// σ = 1/(1+e) for a ≥ 0 and e·(1/(1+e)) for a < 0. Every step is one IEEE fp32 operation (fma where written), so the
// CPU reference (tests/reference/silu.cpp) computes the same bits. |a| > 87 gives e = 0 (σ = 1 or 0 exactly); NaN
// gives e = 0, σ = 0, and the NaN propagates through a·σ. Accuracy ≈ 2 ulp.
__device__ __forceinline__ float silu_exp_neg_abs(float a) {
  const float t = -fabsf(a);
  if (!(t >= -87.0f)) return 0.0f;
  const float k = rintf(__fmul_rn(t, 1.44269504088896341f));
  float r = __fmaf_rn(-k, 0.693359375f, t);
  r = __fmaf_rn(-k, -2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = __fmaf_rn(p, r, 1.3981999507e-3f);
  p = __fmaf_rn(p, r, 8.3334519073e-3f);
  p = __fmaf_rn(p, r, 4.1665795894e-2f);
  p = __fmaf_rn(p, r, 1.6666665459e-1f);
  p = __fmaf_rn(p, r, 5.0000001201e-1f);
  p = __fmaf_rn(p, __fmul_rn(r, r), r);
  p = __fadd_rn(p, 1.0f);
  // k in [-126, 0]: 2^k is a normal float.
  return __fmul_rn(p, __uint_as_float(static_cast<u32>(static_cast<int>(k) + 127) << 23));
}
__device__ __forceinline__ float silu_sigmoid(float a) {
  const float e = silu_exp_neg_abs(a);
  const float r = __frcp_rn(__fadd_rn(1.0f, e));
  return a >= 0.0f ? r : __fmul_rn(e, r);
}

// Byte offsets into the σ table of the two bf16 gates packed in w (low half first). The table is laid out
// [row][mantissa][sign] (see the fill in silu_tile_kernel). The magnitudes (bits & 0x7fff) are clamped into the
// table's rows with 16-bit SIMD min/max (a constant row absorbs every magnitude beyond it, so any position in it will
// do); then, in both 16-bit halves at once, (clamped − L)·8 | sign·4 (every half stays below 2^16: no carry).
// Returns whether either gate lies outside the table where it has no constant row (the caller computes σ for such
// gates; their offsets are clamped into the table, so loading them is harmless).
template <bool BWD, int STAGES, int TABLE>
__device__ __forceinline__ bool silu_table_offset2(u32 w, u32& o0, u32& o1) {
  constexpr SiluTableShape T = silu_table_shape(BWD, STAGES, TABLE);
  constexpr u32 R128 = static_cast<u32>(T.rows()) * 128u;
  constexpr u32 L = static_cast<u32>(T.lo - (T.low_const ? 1 : 0)) << 7;  // magnitude of row 0, mantissa 0
  constexpr u32 U = L + R128 - 1;                                          // magnitude of the last position
  constexpr int SH = T.entry == 8 ? 4 : 3;  // offset = (clamped − L)·2·entry | sign·entry
  static_assert(((R128 - 1) << SH) + T.entry < 0x10000u, "");
  const u32 m = w & 0x7fff7fffu;
  const u32 lo = __vmaxu2(m, L * 0x10001u);
  const u32 c = __vminu2(lo, U * 0x10001u);
  bool fallback = false;
  if constexpr (!T.low_const) fallback = lo != m;
  if constexpr (!T.high_const) fallback = fallback || c != lo;
  const u32 off = ((c - L * 0x10001u) << SH) | ((w >> (15 - (SH - 1))) & (0x00010001u << (SH - 1)));
  o0 = off & 0xffffu;
  o1 = off >> 16;
  return fallback;
}
// Whether the σ table holds σ for the bf16 bits b (the single-value form of the test above).
template <bool BWD, int STAGES, int TABLE>
__device__ __forceinline__ bool silu_table_has(u32 b) {
  constexpr SiluTableShape T = silu_table_shape(BWD, STAGES, TABLE);
  const int E = static_cast<int>((b >> 7) & 0xffu);
  return !((!T.low_const && E < T.lo) || (!T.high_const && E >= T.hi));
}

// ---- quantizer ------------------------------------------------------------------------------------------------------
// Quantizer<ROUND> of fp8.cuh with the power-of-two reciprocal formed from the exponent bits instead of a division
// (same bits: for s = 2^e, e in [-99, 120], 1/s = 2^-e exactly; s = inf gives 0 = 1/inf).
// Without ROUND the division is fp8.cuh's e4m3x4_div.
template <bool ROUND> struct SiluParam { using type = ScaleDiv; };
template <> struct SiluParam<true> { using type = float; };
template <bool ROUND> struct SiluQuant {
  float s, inv;
  __device__ __forceinline__ explicit SiluQuant(float scale) : s(scale) {
    if (ROUND) inv = scale == __int_as_float(0x7f800000) ? 0.0f : __uint_as_float(0x7f000000u - __float_as_uint(scale));
    else inv = scale;
  }
  // What operator() applies (inv with ROUND, else the ScaleDiv of s): what a lane needs to quantize with this scale.
  using Param = typename SiluParam<ROUND>::type;
  __device__ __forceinline__ Param param() const {
    if constexpr (ROUND) return inv;
    else return scale_div(s);
  }
};

// The quantizer of a block with this amax and its application, as block_quant_tile.cuh's stages take them.
template <bool ROUND>
struct SiluMakeQuant {
  using Param = typename SiluQuant<ROUND>::Param;
  __device__ __forceinline__ bqt::TileQuantT<Param> operator()(float amax) const {
    const SiluQuant<ROUND> q(block_scale_fast<ROUND>(amax));
    return {q.s, q.param()};
  }
};
template <bool ROUND>
using SiluApply = bqt::ApplyParam;

// ---- async copies ---------------------------------------------------------------------------------------------------
// (commit / wait: common.cuh's cp_async_commit / cp_async_wait_group.)
__device__ __forceinline__ void silu_cp_async4(void* smem_dst, const void* gmem_src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" :: "r"(smem_u32(smem_dst)), "l"(gmem_src),
               "r"(valid ? 4 : 0)
               : "memory");
}

__device__ __forceinline__ Vec16 lds16(const void* p) { return *static_cast<const Vec16*>(p); }

// Programmatic dependent launch (the batched kernels are launched with LaunchDims::pdl): kiln/pdl.cuh's pdl_wait and
// pdl_launch_dependents.

// What a tile is: rows [row0, row0 + valid) of x, inside a segment (expert) of seg_rows rows starting at seg_start
// (the shared expert: one segment of M rows); local0 = row0 − seg_start; gtb = the token block's index in the
// transposed-scale buffer; cb = the channel block.
struct SiluTile {
  int row0, valid, seg_start, seg_rows, local0, gtb, cb;
};

// The schedule entry of tile t (batched; loaded ahead of use so its latency hides behind a tile's compute).
template <int N, bool BATCHED>
__device__ __forceinline__ int4 silu_tile_entry(const SiluBlockQuantArgs& a, int t) {
  if constexpr (BATCHED) return reinterpret_cast<const int4*>(a.schedule + 4)[t / (N / 128)];
  else return make_int4(0, 0, 0, 0);
}

template <int N, bool BATCHED>
__device__ __forceinline__ SiluTile silu_tile_info(const SiluBlockQuantArgs& a, int t, int4 e) {
  constexpr int NB = N / 128;
  SiluTile ti;
  const int tb = t / NB;
  ti.cb = t - tb * NB;
  ti.gtb = tb;
  if constexpr (BATCHED) {
    ti.seg_start = e.x;
    ti.seg_rows = e.y;
    ti.local0 = e.z * 128;
  } else {
    ti.seg_start = 0;
    ti.seg_rows = a.M;
    ti.local0 = tb * 128;
  }
  ti.row0 = ti.seg_start + ti.local0;
  ti.valid = min(128, ti.seg_rows - ti.local0);
  return ti;
}

// Stage layout: gate tile [128][128] bf16 (256 bytes a row), up tile, (backward) grad tile, (batched) 128 fp32
// weights. Rows past the tile's valid rows are zero-filled, so they act as zero padding for the column maxima.
// Warp w copies exactly the rows it computes (8w … 8w+7), so a warp needs only its own copies to have landed
// (cp.async.wait_group + __syncwarp) and may refill its rows as soon as it has read them: no block barrier guards
// the stages.
template <int N, bool BWD, bool BATCHED>
__device__ __forceinline__ void silu_issue_tile(const SiluBlockQuantArgs& a, const SiluTile& ti, u8* stage) {
  constexpr int ARRAYS = BWD ? 3 : 2;
  // Lane l copies 16-byte chunk l & 15 of the warp's rows 8w + (l >> 4) + 2k, k = 0…3: one 64-bit base pointer per
  // array, then constant steps of two rows. Rows past the valid ones read nothing (src-size 0) from the tile's
  // first row (always valid memory).
  const int lane = threadIdx.x & 31, row0 = (threadIdx.x >> 5) * 8;
  const int r = row0 + (lane >> 4), ch = lane & 15;
  const i64 col = ti.cb * 128 + ch * 8;
  const bf16* xt = static_cast<const bf16*>(a.x) + static_cast<i64>(ti.row0) * a.x_stride + col;
  const bf16* xr = xt + static_cast<i64>(r) * a.x_stride;
  const bf16* gt = BWD ? static_cast<const bf16*>(a.g) + static_cast<i64>(ti.row0) * a.g_stride + col : nullptr;
  const bf16* gr = BWD ? gt + static_cast<i64>(r) * a.g_stride : nullptr;
  u8* dst = stage + r * 256 + ch * 16;
  if (ti.valid == 128) {  // a full tile (uniform): no masks
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const bf16* src = xr + 2 * k * a.x_stride;
      cp_async16(dst + k * 512, src, true);
      cp_async16(dst + 32768 + k * 512, src + N, true);
      if (BWD) cp_async16(dst + 65536 + k * 512, gr + 2 * k * a.g_stride, true);
    }
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const bool ok = r + 2 * k < ti.valid;
      const bf16* src = ok ? xr + 2 * k * a.x_stride : xt;
      cp_async16(dst + k * 512, src, ok);
      cp_async16(dst + 32768 + k * 512, src + N, ok);
      if (BWD) cp_async16(dst + 65536 + k * 512, ok ? gr + 2 * k * a.g_stride : gt, ok);
    }
  }
  if (BATCHED && lane < 8) {
    const int row = row0 + lane;
    const bool ok = row < ti.valid;
    silu_cp_async4(stage + ARRAYS * 32768 + row * 4, ok ? static_cast<const void*>(a.w + ti.row0 + row) : a.w, ok);
  }
}


// Stores the staged transposed codes of tile ti's output halves h0 … h0 + CT − 1 (codes: CT staged halves of
// [128 channels][32 swizzled slots of 4 tokens], see the staging in silu_tile_kernel) as 128-byte channel rows.
// Warp w writes channels 8w … 8w+7, four per instruction: 8 lanes × 16 bytes cover a channel's 128 tokens.
template <int N, int W, int CT>
__device__ __forceinline__ void silu_store_codes(const SiluBlockQuantArgs& a, const SiluTile& ti, const u32* codes,
                                                 int h0, int warp, int lane) {
  const bool aligned = ti.seg_rows % 16 == 0;  // qT's base, s_e·W and local0 are 16-byte aligned
#pragma unroll
  for (int h = h0; h < h0 + CT; ++h) {
    const u32* ct = codes + (h - h0) * (128 * 32);
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int n = warp * 8 + k * 4 + (lane >> 3), j = lane & 7;
      const int f = 2 * (n >> 3);
      Vec16 c = lds16(ct + n * 32 + 4 * (j ^ (f >> 2)));
      if (f & 2) c = Vec16{{c.w[2], c.w[3], c.w[0], c.w[1]}};
      u8* dst = a.qT + static_cast<i64>(ti.seg_start) * W + static_cast<i64>(h * N + ti.cb * 128 + n) * ti.seg_rows +
                ti.local0 + j * 16;
      const int t0 = j * 16;
      if (aligned && t0 + 16 <= ti.valid) {
        store16(dst, c);
      } else {
        const u64 lo = c.w[0] | (static_cast<u64>(c.w[1]) << 32), hi = c.w[2] | (static_cast<u64>(c.w[3]) << 32);
        for (int b = 0; b < 16 && t0 + b < ti.valid; ++b) dst[b] = static_cast<u8>((b < 8 ? lo : hi) >> ((b & 7) * 8));
      }
    }
  }
}

// CODEBUF = 2: the transposed codes are staged in two buffers by tile parity, and a tile's codes are stored after the
// next tile's barrier (one barrier a tile instead of two); needs every output half staged at once (CT = HALVES).
template <int N, bool BWD, bool BATCHED, int MODE, bool ROUND, int STAGES, int TABLE, int CODEBUF>
// The one-stage forward is meant to run two CTAs an SM (its table is sized for that): at most 64 registers.
__global__ void __launch_bounds__(kSiluTileThreads, (STAGES == 1 && !BWD) ? 2 : 1)
    silu_tile_kernel(const SiluBlockQuantArgs a) {
  static_assert(CODEBUF == 1 || (CODEBUF == 2 && silu_codes_halves(BWD, STAGES) == (BWD ? 2 : 1)), "");
  constexpr int NCM = CODEBUF == 2 ? 3 : 2;  // column-maxima buffers (rotating by tile)
  constexpr int NB = N / 128;
  constexpr int HALVES = BWD ? 2 : 1;  // output channel blocks per tile: dx₁ and dx₂ in the backward
  constexpr int W = HALVES * N;        // output row width
  constexpr int ARRAYS = BWD ? 3 : 2;
  constexpr int STAGE = silu_stage_bytes(BWD, BATCHED);
  constexpr bool ROWWISE = BWD || MODE != 1;
  constexpr bool COLWISE = BWD || MODE != 0;
  static_assert(N % 128 == 0 && N <= kSiluMaxN, "n must be a multiple of 128, at most kSiluMaxN");
  static_assert(STAGES >= 1 && STAGES <= 4, "");
  static_assert(TABLE >= 0 && TABLE <= 4 && !(BWD && TABLE == 3) && !(!BWD && TABLE == 4),
                "the silu(a) table serves the forward, the {σ, derivative factor} table the backward");
  constexpr int BUFS = STAGES == 1 ? 1 : 2;  // input buffers

  extern __shared__ __align__(128) u8 smem[];
  // [CODEBUF][CT halves][128 channels][32 slots of 4 tokens] transposed codes, swizzled; then [NCM tiles][HALVES][132]
  // column maxima (float bits, padded slots); then the σ table.
  u32* codesT = reinterpret_cast<u32*>(smem + BUFS * STAGE);
  u32* colmax = codesT + CODEBUF * silu_codes_halves(BWD, STAGES) * 128 * 32;
  float* table = reinterpret_cast<float*>(colmax + NCM * HALVES * 132);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int hl = lane & 15, half = lane >> 4;
  const int hw = warp * 2 + half;  // rows 4·hw … 4·hw+3
  const int c0 = hl * 8;           // channels c0 … c0+7 of the block
  // Column-max slot of channel c0 + e, e < 8: cs0 + e (c0 + e and c0 share c >> 5), so the slots are immediate
  // offsets from one address.
  const int cs0 = bqt::colmax_slot(c0);

  // Pipeline. STAGES = 2: two buffers, the next tile is issued into the other one at the top of each iteration (one
  // tile in flight while this one is computed). STAGES = 1: one buffer; each warp refills its rows with the next
  // tile's as soon as it has read them, so the load overlaps the quantization and the stores (the forward runs two
  // such CTAs an SM). STAGES = 3: two buffers refilled like the one-stage kernel's, two tiles ahead (tile t + 2G
  // streams into this buffer while t + G is already in flight in the other). STAGES = 4: as 2, but the prologue
  // issues both buffers' tiles (the second tile's load is not held up by the σ table's fill).
  // Prologue: column maxima zeroed, σ table filled. The shared expert issues its first tile before it, so the
  // table's computation overlaps the first loads' latency. The batched kernel is launched programmatically after
  // the schedule kernel: its prologue overlaps that kernel, then it waits for the schedule.
  const int G = gridDim.x;
  int t = blockIdx.x;
  int total = 0;
  SiluTile cur, pend;  // pend (STAGES = 3; 4 before the loop): tile t + G, already issued into the other buffer
  int4 ahead;          // the schedule entry of the next tile to issue (t + G; STAGES = 3, 4: t + 2G)
  auto first_tile = [&]() {
    cur = silu_tile_info<N, BATCHED>(a, t, silu_tile_entry<N, BATCHED>(a, t));
    silu_issue_tile<N, BWD, BATCHED>(a, cur, smem);
    cp_async_commit();
    if constexpr (STAGES == 3 || STAGES == 4) {
      if (t + G < total) {
        pend = silu_tile_info<N, BATCHED>(a, t + G, silu_tile_entry<N, BATCHED>(a, t + G));
        silu_issue_tile<N, BWD, BATCHED>(a, pend, smem + STAGE);
      }
      cp_async_commit();
      ahead = t + 2 * G < total ? silu_tile_entry<N, BATCHED>(a, t + 2 * G) : make_int4(0, 0, 0, 0);
    } else {
      ahead = t + G < total ? silu_tile_entry<N, BATCHED>(a, t + G) : make_int4(0, 0, 0, 0);
    }
  };
  if constexpr (!BATCHED) {
    total = a.tiles;
    if (t >= total) return;  // uniform per CTA (before any barrier)
    first_tile();
  }

  for (int i = tid; i < NCM * HALVES * 132; i += kSiluTileThreads) colmax[i] = 0u;
  if constexpr (TABLE) {  // first read after the barrier below
    constexpr SiluTableShape T = silu_table_shape(BWD, STAGES, TABLE);
    constexpr int R = T.rows();
    // Layout [row][mantissa][sign]: one thread fills both signs of a position from one evaluation of e = exp(−|a|)
    // and r = 1/(1 + e) (silu_sigmoid's own steps: σ = r for a ≥ 0, e·r for a < 0).
    for (int p = tid; p < R * 128; p += kSiluTileThreads) {
      const int row = p / 128, m = p % 128;
      float v[2], d[2] = {0.0f, 0.0f};
      if (T.low_const && row == 0) {  // exponents < 102
        v[0] = v[1] = 0.5f;
      } else if (T.high_const && row == R - 1) {  // exponents ≥ 134
        v[0] = 1.0f;
        v[1] = 0.0f;
      } else {
        const u32 E = static_cast<u32>(T.lo + row - (T.low_const ? 1 : 0));
        const float gp = __uint_as_float(((E << 7) | static_cast<u32>(m)) << 16);
        const float e = silu_exp_neg_abs(gp);
        const float r = __frcp_rn(__fadd_rn(1.0f, e));
#pragma unroll
        for (int sign = 0; sign < 2; ++sign) {
          const float g = sign ? -gp : gp, sg = sign ? __fmul_rn(e, r) : r;
          v[sign] = TABLE == 3 ? __fmul_rn(g, sg) : sg;
          d[sign] = __fadd_rn(1.0f, __fmul_rn(g, __fadd_rn(1.0f, -sg)));
        }
      }
      if constexpr (T.entry == 8) reinterpret_cast<float4*>(table)[p] = make_float4(v[0], d[0], v[1], d[1]);
      else reinterpret_cast<float2*>(table)[p] = make_float2(v[0], v[1]);
    }
  }
  if constexpr (BATCHED) {
    pdl_wait();  // the schedule (and everything before it) is complete
    total = a.schedule[0] * NB;
    if (t >= total) return;  // uniform per CTA (before any barrier)
    first_tile();
  }
  __syncthreads();  // colmax zeroed, σ table filled
  SiluTile prev;  // CODEBUF = 2: the previous tile (its codes are stored after this tile's barrier)
  int it = 0;
  int cmi = 0;  // this tile's column-maxima buffer: it % NCM
#pragma unroll 1
  for (; t < total; t += G, ++it, cmi = cmi == NCM - 1 ? 0 : cmi + 1) {
    u8* stage = smem + (BUFS == 2 ? (it & 1) * STAGE : 0);
    const bool has_next = t + G < total;
    if (BATCHED && !has_next) pdl_launch_dependents();  // the backward's dw reduction may start launching
    const bool issued = STAGES == 3 || (STAGES == 4 && it == 0);  // tile t + G is in flight already
    const SiluTile nxt = issued ? pend : has_next ? silu_tile_info<N, BATCHED>(a, t + G, ahead) : cur;
    if (STAGES == 2 || STAGES == 4) {
      if (!issued) {
        // The other stage holds this warp's rows of the previous tile (a warp copies exactly the rows it computes),
        // which its lanes have read: only the warp's own lanes need to be past those reads.
        __syncwarp();
        if (has_next) silu_issue_tile<N, BWD, BATCHED>(a, nxt, smem + ((it + 1) & 1) * STAGE);
        cp_async_commit();
        ahead = t + 2 * G < total ? silu_tile_entry<N, BATCHED>(a, t + 2 * G) : make_int4(0, 0, 0, 0);
      }
      cp_async_wait_group<1>();
    } else if (STAGES == 3) {
      cp_async_wait_group<1>();  // all but the newest group (tile t + G, or empty) have landed
    } else {
      cp_async_wait_group<0>();
    }
    __syncwarp();  // this warp's rows (copied by its own lanes) are in shared memory

    // ---- values: v[h][i][e] = output half h, row 4·hw + i, channel c0 + e -------------------------------------
    float v[HALVES][4][8];
    float dwp[4];
    const u8* gate_s = stage;
    const u8* up_s = stage + 32768;
    const u8* grad_s = stage + 65536;
    const float* w_s = reinterpret_cast<const float*>(stage + ARRAYS * 32768);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = hw * 4 + i;
      const Vec16 av = lds16(gate_s + r * 256 + hl * 16);
      const Vec16 bv = lds16(up_s + r * 256 + hl * 16);
      Vec16 gv;
      if (BWD) gv = lds16(grad_s + r * 256 + hl * 16);
      const float wr = BATCHED ? w_s[r] : 1.0f;
      float sig[8];  // σ(a), or (TABLE = 3) silu(a) = a·σ(a)
      float dfac[8];  // TABLE = 4: 1 + a·(1 − σ(a))
      if constexpr (TABLE) {
        constexpr SiluTableShape T = silu_table_shape(BWD, STAGES, TABLE);
        bool any = false;
#pragma unroll
        for (int p = 0; p < 4; ++p) {
          u32 o0, o1;
          any |= silu_table_offset2<BWD, STAGES, TABLE>(av.w[p], o0, o1);
          if constexpr (T.entry == 8) {
            const float2 e0 = *reinterpret_cast<const float2*>(reinterpret_cast<const u8*>(table) + o0);
            const float2 e1 = *reinterpret_cast<const float2*>(reinterpret_cast<const u8*>(table) + o1);
            sig[2 * p] = e0.x;
            dfac[2 * p] = e0.y;
            sig[2 * p + 1] = e1.x;
            dfac[2 * p + 1] = e1.y;
          } else {
            sig[2 * p] = *reinterpret_cast<const float*>(reinterpret_cast<const u8*>(table) + o0);
            sig[2 * p + 1] = *reinterpret_cast<const float*>(reinterpret_cast<const u8*>(table) + o1);
          }
        }
        if constexpr (!T.complete()) {
          if (__any_sync(0xffffffffu, any)) {  // rare: a gate outside the table somewhere in this warp's row
#pragma unroll
            for (int e = 0; e < 8; ++e)
              if (!silu_table_has<BWD, STAGES, TABLE>((av.w[e >> 1] >> ((e & 1) * 16)) & 0xffffu)) {
                const float g = vec_get<bf16>(av, e), sg = silu_sigmoid(g);
                sig[e] = TABLE == 3 ? __fmul_rn(g, sg) : sg;
                if (TABLE == 4) dfac[e] = __fadd_rn(1.0f, __fmul_rn(g, __fadd_rn(1.0f, -sg)));
              }
          }
        }
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) sig[e] = silu_sigmoid(vec_get<bf16>(av, e));
      }
      float dsum = 0.0f;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float ga = vec_get<bf16>(av, e), ub = vec_get<bf16>(bv, e);
        const float s = TABLE == 3 ? sig[e] : __fmul_rn(ga, sig[e]);  // silu(a)
        if constexpr (!BWD) {
          const float y = __fmul_rn(s, ub);
          v[0][i][e] = BATCHED ? __fmul_rn(y, wr) : y;
        } else {
          const float gg = vec_get<bf16>(gv, e);
          const float gw = BATCHED ? __fmul_rn(gg, wr) : gg;
          v[1][i][e] = __fmul_rn(gw, s);
          const float deriv = TABLE == 4 ? dfac[e] : __fadd_rn(1.0f, __fmul_rn(ga, __fadd_rn(1.0f, -sig[e])));
          v[0][i][e] = __fmul_rn(__fmul_rn(__fmul_rn(gw, ub), sig[e]), deriv);
          if (BATCHED) dsum = __fadd_rn(dsum, __fmul_rn(__fmul_rn(s, ub), gg));
        }
      }
      dwp[i] = dsum;
    }
    if (STAGES == 1) {  // this warp has read its rows: refill them with the next tile's
      __syncwarp();
      if (has_next) silu_issue_tile<N, BWD, BATCHED>(a, nxt, stage);
      cp_async_commit();
      ahead = t + 2 * G < total ? silu_tile_entry<N, BATCHED>(a, t + 2 * G) : make_int4(0, 0, 0, 0);
    }
    if (STAGES == 3) {  // this warp has read its rows: refill them with tile t + 2G's
      __syncwarp();
      if (t + 2 * G < total) {
        pend = silu_tile_info<N, BATCHED>(a, t + 2 * G, ahead);
        silu_issue_tile<N, BWD, BATCHED>(a, pend, stage);
      }
      cp_async_commit();
      ahead = t + 3 * G < total ? silu_tile_entry<N, BATCHED>(a, t + 3 * G) : make_int4(0, 0, 0, 0);
    }

    // ---- row-wise blocks: 16 lanes share a row's 128 channels --------------------------------------------------
    // Each lane's partial maxima of its 4 rows are reduced over the half-warp by a transposing butterfly: the first
    // two exchanges split the rows between the lane halves (bit 3, then bit 2), so that after four shuffle rounds
    // lane l holds the complete amax of row R = l >> 2. It forms that row's scale (once, not in every lane), lane 4R
    // stores it, and the quantizers' parameters come back by 4 broadcasts. Max is order-independent (fmaxf ignores
    // NaN; every chain starts at 0), so the scale is bitwise the one a plain per-row butterfly gives. Codes straight
    // from registers (16 lanes × 8 bytes: a row's 128 codes).
    if constexpr (ROWWISE) {
#pragma unroll
      for (int h = 0; h < HALVES; ++h)
        bqt::row_codes(v[h], hl, lane, cur.valid - hw * 4,
                       a.q + static_cast<i64>(cur.row0 + hw * 4) * W + h * N + cur.cb * 128 + c0, W,
                       a.q_scale + static_cast<i64>(cur.seg_start) * (W / 128) +
                           static_cast<i64>(h * NB + cur.cb) * cur.seg_rows + cur.local0 + hw * 4 + (hl >> 2),
                       SiluMakeQuant<ROUND>{}, SiluApply<ROUND>{});
    }
    if constexpr (BWD && BATCHED) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float s = warp_sum<16>(dwp[i]);
        const int r = hw * 4 + i;
        if (hl == 0 && r < cur.valid) a.dw_partial[static_cast<i64>(cur.cb) * a.M + cur.row0 + r] = s;
      }
    }

    // ---- transposed blocks -------------------------------------------------------------------------------------
    // Column maxima into this tile's colmax buffer (NCM buffers rotating by tile: the next tile's, last read before
    // the previous tile's barrier, is cleared here); one barrier; every thread forms the scales of its 8 channels,
    // quantizes its 4 tokens of each and stages the codes (codesT holds CT halves); CODEBUF = 1: a second barrier,
    // then the codes leave as 128-byte channel rows (the next tile writes codesT only after its first barrier, which
    // every thread reaches after this tile's stores). CODEBUF = 2: the codes go to this tile's buffer (parity) and
    // leave after the next tile's barrier (or the one after the loop); three column-maxima buffers, since a tile's
    // buffer must be cleared before the barrier preceding its atomics, after the reads of the tile NCM before it.
    if constexpr (COLWISE) {
      constexpr int CT = silu_codes_halves(BWD, STAGES);
      u32* cm = colmax + cmi * (HALVES * 132);
#pragma unroll
      for (int h = 0; h < HALVES; ++h) bqt::col_max(cm + h * 132, v[h], cs0);
      static_assert(HALVES * 132 <= kSiluTileThreads, "");
      if (tid < HALVES * 132) colmax[(cmi == NCM - 1 ? 0 : cmi + 1) * (HALVES * 132) + tid] = 0u;
      // Slot s (tokens 4s … 4s+3) of channel n is stored at s ^ (2·(n >> 3)): the 32 lanes of a warp (channels
      // 8l + e, slots 2w + half) write 32 different banks.
      const bool scale_aligned = (reinterpret_cast<unsigned long long>(a.qT_scale) & 15u) == 0u;
      u32* codes = codesT + (CODEBUF == 2 ? (it & 1) * (CT * 128 * 32) : 0);
#pragma unroll
      for (int h0 = 0; h0 < HALVES; h0 += CT) {
        __syncthreads();  // h0 = 0: the column maxima are complete; h0 > 0: codesT is free again
        if constexpr (CODEBUF == 2) {  // the previous tile's codes are complete: store them
          if (it > 0) silu_store_codes<N, W, CT>(a, prev, codesT + ((it + 1) & 1) * (CT * 128 * 32), 0, warp, lane);
        }
#pragma unroll
        for (int h = h0; h < h0 + CT; ++h) {
          if constexpr (!ROUND && !(BATCHED && !BWD)) {
            // round_scale 0 (session 22): each thread forms its 8 channels' brackets from the column maxima
            // (block_quant_tile.cuh stage_col_codes_div_at), half-warp 0 of warp 0 their scales. H100, three
            // alternating processes each against col_quantizers: backward 30.86 / 31.02 / 30.94 µs against 32.10 /
            // 32.27 / 32.40, forward 19.97 / 19.89 / 20.00 against 20.00 / 19.90 / 20.03 (a tie; 552 SASS
            // instructions fewer); the batched forward measured slower with it (283.2–284.1 against 281.3–282.5)
            // and keeps col_quantizers. The batched backward (session 23) takes this stage and the division-free
            // rows together: E = 32, n = 1024, four alternating processes each (H100) 482.7–487.3 µs against
            // 560.6–567.1 for the exact division it had (which spilled: 24 bytes of stack, 19 call sites).
            const u32 cm_at = smem_u32(cm + h * 132 + cs0);
            if (warp == 0 && half == 0) {
              float sc[8];
              bqt::col_scales_div(cm_at, sc);
              bqt::store_scales8(a.qT_scale + static_cast<i64>(cur.gtb) * W + h * N + cur.cb * 128 + c0, sc,
                                 scale_aligned);
            }
            bqt::stage_col_codes_div_at(cm_at, smem_u32(codes + (h - h0) * (128 * 32) + c0 * 32 + (hw ^ (2 * hl))),
                                        v[h]);
          } else {
            // The quantizers of channels c0 … c0+7: each half-warp forms four (scale and parameter), the other
            // half's parameters come by a shuffle (the scales too in warp 0, whose half-warp 0 stores them).
            typename SiluMakeQuant<ROUND>::Param qp[8];
            float sc[8];
            bqt::col_quantizers(cm + h * 132, cs0, half, warp == 0, qp, sc, SiluMakeQuant<ROUND>{});
            // half-warp 0 of warp 0 (channels 8l … 8l+7 of this half) writes the tile's 128 column scales
            if (warp == 0 && half == 0)
              bqt::store_scales8(a.qT_scale + static_cast<i64>(cur.gtb) * W + h * N + cur.cb * 128 + c0, sc,
                                 scale_aligned);
            bqt::stage_codes(codes + (h - h0) * (128 * 32), v[h], qp, c0, hw, hl, SiluApply<ROUND>{});
          }
        }
        if constexpr (CODEBUF == 1) {
          __syncthreads();  // codesT complete
          silu_store_codes<N, W, CT>(a, cur, codesT, h0, warp, lane);
        }
      }
      if constexpr (CODEBUF == 2) prev = cur;
    }
    // Output mode 0 needs no barrier at all: a warp reads and refills only its own rows, and nothing else is shared.
    cur = nxt;
  }
  if constexpr (COLWISE && CODEBUF == 2) {  // the last tile's codes (this CTA had at least one tile)
    __syncthreads();
    silu_store_codes<N, W, silu_codes_halves(BWD, STAGES)>(
        a, prev, codesT + ((it + 1) & 1) * (silu_codes_halves(BWD, STAGES) * 128 * 32), 0, warp, lane);
  }
  cp_async_wait_group<0>();
}

}  // namespace kiln
