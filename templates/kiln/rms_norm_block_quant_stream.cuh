// kiln/rms_norm_block_quant_stream.cuh — the stream kernel of rms_norm_block_quant (mode 2): the SiLU block-quant
// tile structure (templates/kiln/silu_block_quant.cuh) on a balanced walk over (token tile, column chunk) items, with
// the RMSNorm's row sums exchanged through global memory.
//
// Why no clusters: at M = 8192 there are 64 token tiles, and a cluster must fit in one GPC: clusters of 8 one-CTA-an-SM
// CTAs fit 15 at once on an H100 (5 tiles on the busiest against 4.27 on average). Here a persistent grid of P CTAs
// (one 512-thread CTA an SM) takes the items u = b, b + P, … of all tiles × S items (tile u / S, chunk u % S;
// S = N / C, C = 128·CB columns): 1024 items over 132 CTAs at N = 2048, CB = 1.
// Thread layout (as the SiLU kernel): warp w owns rows 8w … 8w+7 of every 128×128 block, its half-warp
// hw = 2w + (lane >> 4) rows 4hw … 4hw+3, lane hl = lane & 15 channels 8hl … 8hl+7: 4 × 8 values a thread a block.
//
// Per item:
//  * pass 1: each thread waits for its own cp.async copies of the item's CB blocks (it copies exactly the 16-byte
//    pieces it reads, so no barrier guards the ring), sums squares of its 4 rows, and a transposing butterfly gives
//    lane 4R (of each half-warp) row R's partial sum. Lanes 0 … 7 of the warp store its 8 rows' partial sums in the
//    workspace as {fp32, tag} pairs (one 8-byte store: a reader sees a whole pair; the tag is unique to the launch).
//  * finish: the warp polls the S pairs of each of its rows (loads issued before pass 1 of the next item), adds them
//    in a fixed order (the same in every CTA: all get bitwise the same r), r = 1/sqrt(Σ/N + eps). A pair still stale
//    after kRmsqStreamSpinLimit polls is summed here from x with pass 1's operations in its order: no CTA depends on
//    another CTA being resident.
//  * pass 2, per block: the block is read again from its ring slot (it stayed there since pass 1), y = (x·r)·w (fp32,
//    this order) held in registers; row-wise codes straight from registers (transposing butterfly for the row amax:
//    one scale a lane); column maxima by shared atomicMax into one of three rotating buffers; ONE block barrier; every
//    thread forms the scales of its 8 channels, quantizes its 4 tokens of each and stages the codes in one of two
//    buffers (by block parity); they leave as 128-byte qT rows after the next block's barrier.
//  Pass 1 of item it+1 runs before pass 2 of item it (the ring holds two items: R ≥ 2·CB), so the exchange's latency
//  hides behind an item's quantization.
// The ring: visits k = 0, 1, … (a block copy each, item k / CB) in slot k % R; the first R are issued at the start,
// visit k + R when this thread releases visit k (after its pass-2 read).
#pragma once
#include "kiln/block_quant_tile.cuh"
#include "kiln/rms_norm_block_quant.cuh"
#include "kiln/rms_norm_block_quant_stream_args.h"
#include "kiln/mbarrier.cuh"

namespace kiln {
namespace rmsq {
// The quantizer of a block with this amax and its application, as block_quant_tile.cuh's stages take them (ROUND:
// the reciprocal from the scale's bits, else the scale and a division).
template <bool ROUND>
struct MakeQuant;
template <>
struct MakeQuant<true> {
  using Param = float;
  __device__ __forceinline__ bqt::TileQuant operator()(float amax) const {
    const Quant<true> q(scale_of_max<true>(amax));
    return {q.s, q.inv};
  }
};
template <>
struct MakeQuant<false> {
  using Param = ScaleDiv;
  __device__ __forceinline__ bqt::TileQuantT<ScaleDiv> operator()(float amax) const {
    const float s = scale_of_max<false>(amax);
    return {s, scale_div(s)};
  }
};
// MakeQuant<true> in fewer instructions (LEAN): the reciprocal straight from amax's bits
// (rms_norm_block_quant_pow2_inv_bits_of_max), the scale from the reciprocal's.
struct MakeQuantPow2 {
  using Param = float;
  __device__ __forceinline__ bqt::TileQuant operator()(float amax) const {
    const u32 inv = rms_norm_block_quant_pow2_inv_bits_of_max(__float_as_uint(amax));
    return {__uint_as_float(inv != 0u ? 0x7f000000u - inv : 0x7f800000u), __uint_as_float(inv)};
  }
};
template <bool ROUND, bool LQ>
struct QuantOf {
  using type = MakeQuant<ROUND>;
};
template <>
struct QuantOf<true, true> {
  using type = MakeQuantPow2;
};
template <bool ROUND>
using Apply = bqt::ApplyParam;
using bqt::transpose_reduce4;
// y = (x·r)·w (fp32, this order: the family's rule) of a thread's 4 rows × 8 channels.
__device__ __forceinline__ void norm_y(const Vec16 (&xv)[4], const float (&rv)[4], const float (&w8)[8],
                                       float (&y)[4][8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int e = 0; e < 8; ++e) y[i][e] = __fmul_rn(__fmul_rn(vec_get<bf16>(xv[i], e), rv[i]), w8[e]);
}
// The per-block code of the stream and tile512 kernels (block_quant_tile.cuh's layout: y of rows 4·hw …, channels
// c0 = 8·hl …, of the 128×128 block at tokens m0 …, columns col …): row-wise codes and scales, column maxima into cm,
// and after the barrier the column quantizers, the block's 128 column scales (half-warp 0 of warp 0) and the staged
// transposed codes.
// FULL: all 128 rows of the block exist (no row predicates); LQ: MakeQuantPow2 for power-of-two scales.
template <int N, bool ROUND, bool FULL = false, bool LQ = false>
__device__ __forceinline__ void block_row_codes(const RmsNormBlockQuantArgs& a, const float (&y)[4][8], int m0,
                                                int valid, int col, int hw, int hl, int lane) {
  bqt::row_codes(y, hl, lane, FULL ? 4 : valid - 4 * hw, a.q + static_cast<i64>(m0 + 4 * hw) * N + col + hl * 8, N,
                 a.q_scale + static_cast<i64>(col / 128) * a.M + m0 + 4 * hw + (hl >> 2),
                 typename QuantOf<ROUND, LQ>::type{}, Apply<ROUND>{});
}
__device__ __forceinline__ void block_col_max(u32* cm, const float (&y)[4][8], int cs0) { bqt::col_max(cm, y, cs0); }
template <int N, bool ROUND, bool LQ = false>
__device__ __forceinline__ void block_col_codes(const RmsNormBlockQuantArgs& a, const float (&y)[4][8], const u32* cm,
                                                u32* ct, i64 tile, int col, int warp, int half, int hw, int hl, int cs0,
                                                bool scale_aligned) {
  if constexpr (!ROUND) {
    const u32 cm_at = smem_u32(cm + cs0);
    if (warp == 0 && half == 0) {
      float sc[8];
      bqt::col_scales_div(cm_at, sc);
      bqt::store_scales8(a.qT_scale + tile * N + col + hl * 8, sc, scale_aligned);
    }
    bqt::stage_col_codes_div_at(cm_at, smem_u32(ct + hl * 8 * 32 + (hw ^ (2 * hl))), y);
  } else {
    using Make = typename QuantOf<ROUND, LQ>::type;
    typename Make::Param qp[8];
    float sc[8];
    bqt::col_quantizers(cm, cs0, half, warp == 0, qp, sc, Make{});
    if (warp == 0 && half == 0) bqt::store_scales8(a.qT_scale + tile * N + col + hl * 8, sc, scale_aligned);
    bqt::stage_codes(ct, y, qp, hl * 8, hw, hl, Apply<ROUND>{});
  }
}
// The staged transposed codes of a block (tokens m0 …, `valid` of them; channels col …) out to qT: warp w stores
// channels 8w … 8w+7, four per instruction, 8 lanes × 16 bytes a channel's 128 tokens (byte-wise past `valid` or
// when M % 16 != 0).
__device__ __forceinline__ void store_block_codes(const RmsNormBlockQuantArgs& a, const u32* ct, int m0, int valid,
                                                  int col, int warp, int lane, bool aligned16) {
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    const int n = warp * 8 + kk * 4 + (lane >> 3), jj = lane & 7;
    const int f = 2 * (n >> 3);
    Vec16 c = *reinterpret_cast<const Vec16*>(ct + n * 32 + 4 * (jj ^ (f >> 2)));
    if (f & 2) c = Vec16{{c.w[2], c.w[3], c.w[0], c.w[1]}};
    u8* dst = a.qT + static_cast<i64>(col + n) * a.M + m0 + jj * 16;
    const int t0 = jj * 16;
    if (aligned16 && t0 + 16 <= valid) {
      store16(dst, c);
    } else {
      const u64 lo = c.w[0] | (static_cast<u64>(c.w[1]) << 32), hi = c.w[2] | (static_cast<u64>(c.w[3]) << 32);
      for (int bb = 0; bb < 16 && t0 + bb < valid; ++bb) dst[bb] = static_cast<u8>((bb < 8 ? lo : hi) >> ((bb & 7) * 8));
    }
  }
}
// (Flag / IntC, kiln/common.cuh: pass 2's full-tile and partial-tile bodies share one generic lambda.)
// 16 bytes global → shared at a 32-bit shared address, always 16 bytes (no source-size operand).
__device__ __forceinline__ void cp_async16_full(u32 dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
// ---- L2 hints on the codes (session 14, config prefetch bits on the stream kernel's 1) ----
// kRmsqHintQel (16): the q / qT codes stored with an L2 evict-last cache policy, so that L2 keeps more dirty codes
// past the kernel's end (fewer DRAM writes inside it; ncu at N = 7168: 93.1 MB written against 100.7). Evict-last lines
// live in the context's persisting-L2 set-aside (cudaLimitPersistingL2CacheSize; 9.8 MB = 30 % of the maximum by
// default on the bench machine) and outlive the kernel: up to that much of the last codes stay in L2 afterwards (the
// next reader of q / qT finds them; a read-flush does not evict them). The policy is
// a compile-time constant (createpolicy with a constant fraction: a uniform-register descriptor, no per-thread
// register), but the cache-hint form moves the kernel's register allocation, so kRmsqHintQen (64) is its control: the
// same code with an evict-normal policy (the default behaviour). (Session 14 round B also measured, on the x copies,
// the 256-byte L2 prefetch size (4), an evict-first policy (8) with its evict-normal control (32), and an L2 prefetch
// of item it + 3 after pass 2 of the first items (128, 256; control 512): all lost; bench/NOTES.md. Values unused.)
// (Round D measured QELD — 1040: QEL whose CTAs, after a fence, demote their code lines to evict-normal at the end —
// and its control 1088 on QEN: the demotion cost +4.3 to +9.1 µs; deleted, values unused.)
constexpr int kRmsqHintQel = 16, kRmsqHintQen = 64;
// Session 15 (q2g), on QEL against the previous call's left-over evict-last lines (they outlive the kernel and the
// bench's read-flush, so each call otherwise writes them back inside its own window, during its start burst;
// bench/NOTES.md "Session 15 (helper q2g)"): DISC1 = kRmsqHintDisc | kRmsqHintDisc1 (2048 | 524288): at its start
// (while its first blocks arrive) each CTA discards from L2 (`discard.global.L2`, no write-back) the 128-byte code
// lines of its last item — one a thread —, the lines a previous call with the same walk and outputs left there. Only
// lines this kernel then writes whole (q, qT 128-byte aligned, M % 128 == 0: every tile full), so their old contents
// are dead. Control: kRmsqHintDiscZ | kRmsqHintDisc1 (262144 | 524288), DISC1's code discarding nothing. Measured at
// 7168 × 8192 in round C: −1.06 µs against QEL (28 of 30), −1.41 against its control — the whole "cold" gap (QEL with
// the persisting lines reset before each flush: −1.01); round D −0.70 (7168 × 16384 −0.61), 4096 +0.70: the default
// from N = 7168 only. (Measured and deleted in session 15: DISC over the last two /
// four items — two / four discards a thread — and DISCC (the first two items'): the discards' cost grew with their
// number a thread and ate the saving; 1048576 DEM / 4194304 DEM2 — the last one / two items' lines touched by
// prefetch.global.L2::evict_normal at the CTA's end, control 2097152 DEMZ — no gain; 8192 LATE2, 32768 / 65536 EF2 /
// EF4 and their control 16384 SELALL — per-item store policies — all slower. Values unused.)
constexpr int kRmsqHintDisc = 2048, kRmsqHintDiscZ = 262144, kRmsqHintDisc1 = 524288;
constexpr int kRmsqHintBits = kRmsqHintQel | kRmsqHintQen | kRmsqHintDisc | kRmsqHintDiscZ | kRmsqHintDisc1;
template <int PRIO>  // 1 evict_normal, 2 evict_last
__device__ __forceinline__ u64 l2_policy() {
  static_assert(PRIO == 1 || PRIO == 2, "evict_normal or evict_last");
  u64 pol;
  if constexpr (PRIO == 1) asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(pol));
  else asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}
// The codes' global stores with the hint bits H (kRmsqHintQel / kRmsqHintQen: an evict-last / evict-normal policy),
// 8 and 16 bytes.
template <int H>
struct CodeStore {
  static_assert(!((H & kRmsqHintQel) && (H & kRmsqHintQen)), "one policy for the codes");
  static constexpr bool POL = (H & (kRmsqHintQel | kRmsqHintQen)) != 0;
  static constexpr int PRIO = (H & kRmsqHintQel) ? 2 : 1;
  __device__ __forceinline__ void operator()(void* p, uint2 v) const {
    if constexpr (POL)
      asm volatile("st.global.L2::cache_hint.v2.u32 [%0], {%1,%2}, %3;" ::"l"(p), "r"(v.x), "r"(v.y),
                   "l"(l2_policy<PRIO>())
                   : "memory");
    else
      *reinterpret_cast<uint2*>(p) = v;
  }
  __device__ __forceinline__ void operator()(void* p, const Vec16& v) const {
    if constexpr (POL)
      asm volatile("st.global.L2::cache_hint.v4.u32 [%0], {%1,%2,%3,%4}, %5;" ::"l"(p), "r"(v.w[0]), "r"(v.w[1]),
                   "r"(v.w[2]), "r"(v.w[3]), "l"(l2_policy<PRIO>())
                   : "memory");
    else
      store16(p, v);
  }
};
using bqt::col_max_at;  // (block_col_max at a 32-bit shared address: block_quant_tile.cuh)
// store_block_codes of a full block (128 tokens, M % 16 == 0) from per-thread constants: the thread's two 16-byte
// pieces at ct and ct + 128 words (4 channels on; halves swapped in odd warps: the staging swizzle) go to dst and
// dst + step (4 channels of qT on).
__device__ __forceinline__ void store_block_codes_full(const u32* ct, u8* dst, i64 step, bool swap) {
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    Vec16 c = *reinterpret_cast<const Vec16*>(ct + kk * 128);
    if (swap) c = Vec16{{c.w[2], c.w[3], c.w[0], c.w[1]}};
    store16(dst + kk * step, c);
  }
}

// ---- TIGHT (variant bit 256, on LEAN): pass 2 of full tiles with addresses from per-item (warp-uniform) bases plus
// per-thread 32-bit offsets, shared memory at 32-bit addresses with immediate offsets, x contiguous (rows N apart) ----

// MakeQuantPow2 with the reciprocal in one instruction fewer: u = ~(amax + 0x1FFFFF) & 0x7F800000 is 0x7F800000 − t
// (t's bits lie inside the mask), so min(0x83000000 − t, 0x71000000) = min(u + 0x03800000, 0x71000000): the same bits.
__device__ __forceinline__ u32 pow2_inv_bits_tight(float amax) {
  const u32 a = __float_as_uint(amax);
  const u32 u = ~(a + 0x1fffffu) & 0x7f800000u;
  const u32 inv = min(u + 0x03800000u, 0x71000000u);
  return a >= 0x7f800000u ? 0u : inv;
}
struct MakeQuantPow2Tight {
  __device__ __forceinline__ bqt::TileQuant operator()(float amax) const {
    const u32 inv = pow2_inv_bits_tight(amax);
    return {__uint_as_float(inv != 0u ? 0x7f000000u - inv : 0x7f800000u), __uint_as_float(inv)};
  }
};
__device__ __forceinline__ void col_scales_of(const float (&qp)[8], float (&sc)[8]);
// bqt::col_quantizers with MakeQuantPow2Tight from a 32-bit shared address (cm_at = the address of the thread's first
// slot, cs0 + 4·half): the multipliers qp of channels c0 … c0+7 and, with `scales` (warp-uniform), their scales sc
// (0x7F000000 − the reciprocal's bits, inf for 0), formed only there.
__device__ __forceinline__ void col_quantizers_tight(u32 cm_at, int half, bool scales, float (&qp)[8], float (&sc)[8]) {
  u32 inv[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    inv[e] = pow2_inv_bits_tight(__uint_as_float(lds_u32(cm_at + 4 * e)));
    const float p = __uint_as_float(inv[e]);
    const float other = __shfl_xor_sync(0xffffffffu, p, 16);
    qp[e] = half ? other : p;
    qp[4 + e] = half ? p : other;
  }
  if (scales) col_scales_of(qp, sc);
}
// stage_codes at a 32-bit shared address (st_at = the address of word c0·32 + (hw ^ 2·hl); channel c0 + e 128 bytes
// on): the same words as bqt::stage_codes.
__device__ __forceinline__ void stage_codes_at(u32 st_at, const float (&y)[4][8], const float (&qp)[8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e)
    sts_u32(st_at + 128 * e, e4m3x4(__fmul_rn(y[0][e], qp[e]), __fmul_rn(y[1][e], qp[e]), __fmul_rn(y[2][e], qp[e]),
                                  __fmul_rn(y[3][e], qp[e])));
}
// The row quantizer of TIGHT's full tiles: MakeQuantPow2Tight, or MakeQuant<false> (scale and bracket) at round_scale 0.
template <bool ROUND>
struct TightMakeOf {
  using type = MakeQuantPow2Tight;
};
template <>
struct TightMakeOf<false> {
  using type = MakeQuant<false>;
};
// The column scales of channels c0 … c0+7 from their multipliers qp (0x7F000000 − the reciprocal's bits, inf for 0).
__device__ __forceinline__ void col_scales_of(const float (&qp)[8], float (&sc)[8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const u32 v = __float_as_uint(qp[e]);
    sc[e] = __uint_as_float(v != 0u ? 0x7f000000u - v : 0x7f800000u);
  }
}
// An mbarrier arrival by the lanes with `pred` (a predicated instruction, no branch).
__device__ __forceinline__ void mbar_arrive_if(u32 bar, bool pred) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.u32 p, %1, 0;\n@p mbarrier.arrive.shared::cta.b64 _, [%0];\n}\n" ::"r"(bar),
               "r"(static_cast<u32>(pred))
               : "memory");
}
// store_block_codes_full from a 32-bit shared address (ct_at = the thread's first 16-byte piece; piece 1 is 512 bytes
// on; halves swapped in odd warps: the staging swizzle) to dst and dst + step.
template <int H = 0>
__device__ __forceinline__ void store_block_codes_at(u32 ct_at, u8* dst, i64 step, bool swap) {
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    Vec16 c = lds16(ct_at + 512 * kk);
    if (swap) c = Vec16{{c.w[2], c.w[3], c.w[0], c.w[1]}};
    CodeStore<H>{}(dst + kk * step, c);
  }
}
}  // namespace rmsq

// LEAN (config overlap = 3; bit-exact with the default path): constant cp.async waits (every refill commits a group,
// empty past the last visit), the refill's source advanced item by item without divisions, a full-tile pass 2
// without row predicates, qT stores from per-thread constant offsets, column-max atomics at immediate offsets.
// FIRST (LEAN): item 0 quantized before item 1's pass 1. TRACE (LEAN): phase timestamps (kRmsqStreamTrace). START
// (LEAN): only item 0's blocks requested at first (with FIRST: the rest after item 0's exchange).
template <int N, int CB, bool ROUND, bool W_F32, int R, bool LEAN, bool FIRST = false, bool TRACE = false,
          bool START = false, bool TIGHT_BIT = false, bool SPLIT_BIT = false, bool FLAT_BIT = false,
          bool WLDG_BIT = false, int HINT_BITS = 0>
__device__ __forceinline__ void rms_norm_block_quant_stream_body(const RmsqStreamArgs& sa) {
  using namespace rmsq;
  static_assert((!FIRST && !START && !TRACE && !TIGHT_BIT) || LEAN, "FIRST, START, TRACE and TIGHT are LEAN variants");
  constexpr bool TIGHT = TIGHT_BIT;
  constexpr bool SPLIT = SPLIT_BIT && TIGHT;   // (TIGHT's full tiles only)
  constexpr bool FLAT = FLAT_BIT && TIGHT;     // (TIGHT's full tiles: no divergent branch between the phases)
  constexpr bool WSM = TIGHT && !WLDG_BIT;  // TIGHT's weights from shared memory (WLDG: LEAN's LDG a block ahead)
  constexpr int HINT = TIGHT ? HINT_BITS : 0;  // the codes' L2 hint (rmsq::kRmsqHint*): TIGHT's full tiles only
  // (Session 15, on QEL) DISC1: the CTA's last item's code lines discarded at its start (DISCZ1: none, DISC1's code).
  constexpr bool DISC = (HINT & kRmsqHintQel) && (HINT & (kRmsqHintDisc | kRmsqHintDiscZ)) != 0;
  constexpr bool DISC_NONE = (HINT & kRmsqHintDiscZ) != 0;
  static_assert(!DISC || ((HINT & kRmsqHintDisc1) && !((HINT & kRmsqHintDisc) && DISC_NONE)),
                "DISC1 or its control, one item");
  static_assert(!TIGHT || (R & (R - 1)) == 0, "TIGHT: a power-of-two ring");
  const RmsNormBlockQuantArgs& a = sa.a;
  constexpr int ROWS = 128, WARPS = kRmsqStreamThreads / 32, THREADS = kRmsqStreamThreads;
  constexpr int C = CB * 128;
  constexpr int S = N / C;           // column chunks (items) of a row
  constexpr bool GX = S > 1;         // partial sums exchanged through the workspace
  constexpr int BLOCK = ROWS * 128;  // elements of a slot
  static_assert(WARPS == 16, "the thread layout covers 128 rows with 16 warps");
  static_assert(N % C == 0, "the chunks must tile N");
  static_assert(R >= 2 * CB && R <= kRmsqStreamMaxRing, "the ring holds two items");

  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* ring = reinterpret_cast<bf16*>(smem_raw);
  u32* codes = reinterpret_cast<u32*>(smem_raw + R * BLOCK * 2);  // [2][128 channels][32 slots of 4 tokens]
  u32* colmax = codes + 2 * 128 * 32;                              // [3][132] float bits, padded slots
  // TIGHT: the N weights as fp32, each 128-channel block
  // as [2 halves][16 lanes][4] (channel c0 + 4j + i of lane hl at j·64 + hl·4 + i: a warp's 16-byte reads of one half
  // are 256 consecutive bytes, no bank conflict).
  float* wsm = reinterpret_cast<float*>(colmax + 3 * 132);
  const u32 split_bar = smem_u32(wsm + (TIGHT && !WLDG_BIT ? N : 0));  // SPLIT: the block barrier (16 arrivals)
  u32 sph = 0;                              // SPLIT: its phases completed (full-tile blocks quantized)

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int hl = lane & 15, half = lane >> 4;
  const int hw = warp * 2 + half;    // rows 4·hw … 4·hw+3
  const int c0 = hl * 8;             // channels c0 … c0+7 of a block
  const int cs0 = c0 + (c0 >> 5);    // column-max slot of channel c0 (c0 + e: cs0 + e)
  // TIGHT: the per-thread constants of the ring and pass 2, computed from tid at each use (the compiler does that
  // anyway under the register cap; a shared-memory table of them, one LDS a use, measured slower and was removed).
  // kRing: the thread's piece of ring slot 0; kStage: its staging word
  // c0·32 + (hw ^ 2·hl) (bqt::stage_codes); kCodes: its qT piece in the staged codes (store_block_codes: channel
  // n = 8·warp + (lane >> 3), 16 bytes at word n·32 + 4·((lane & 7) ^ (warp >> 1))); kQt: that piece's offset in qT,
  // (8·warp + (lane >> 3))·M + (lane & 7)·16 (< M·N < 2^31); kColMax: its column-max slot cs0; kQ: its row codes'
  // offset in a block; kQs: its row scale's row (lanes 4R); kW: its first weight in shared memory (fp32, wsm).
  enum { kRing = 0, kStage = 1, kCodes = 2, kQt = 3, kColMax = 4, kQ = 5, kQs = 6, kW = 7 };
  auto thr_value = [&](int j) -> u32 {
    switch (j) {
      case kRing: return smem_u32(ring + 4 * hw * 128 + c0);
      case kStage: return smem_u32(codes + c0 * 32 + (hw ^ (2 * hl)));
      case kCodes: return smem_u32(codes + (warp * 8 + (lane >> 3)) * 32 + 4 * ((lane & 7) ^ (warp >> 1)));
      case kQt: return static_cast<u32>(warp * 8 + (lane >> 3)) * static_cast<u32>(a.M) + (lane & 7) * 16;
      case kColMax: return smem_u32(colmax + cs0);
      case kQ: return static_cast<u32>(4 * hw * N + c0);
      case kQs: return static_cast<u32>(4 * hw + (hl >> 2));
      default: return smem_u32(wsm + hl * 4);
    }
  };
  auto thr_const = [&](int j) -> u32 { return thr_value(j); };
  const int P = static_cast<int>(gridDim.x), b0 = static_cast<int>(blockIdx.x);
  // TRACE: thread 0's phase records (slot 0 its start, 1 its SM; kRmsqStreamTrace).
  u64 tr_t0 = 0;
  int tr_n = 2;
  auto mark = [&](u64 kind, int item) {
    if constexpr (TRACE) {
      if (tid == 0 && tr_n < kRmsqStreamTraceSlots) {
        sa.trace[static_cast<i64>(b0) * kRmsqStreamTraceSlots + tr_n++] =
            (kind << 48) | (static_cast<u64>(item & 0xff) << 40) | (globaltimer_ns() - tr_t0);
      }
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
  // LEAN: item it's (tile, chunk) and item it+1's kept in registers, stepped by P = dT·S + dC items a round (the
  // callers only ask for items cur_it and cur_it + 1), instead of two divisions a call.
  const int dT = P / S, dC = P % S;
  auto step = [&](int& t, int& c) {
    t += dT;
    c += dC;
    if (c >= S) {
      c -= S;
      ++t;
    }
  };
  int cur_it = 0, cur_tile = b0 / S, cur_chunk = b0 % S, nxt_tile = cur_tile, nxt_chunk = cur_chunk;
  step(nxt_tile, nxt_chunk);
  auto item_tile = [&](int it) {
    if constexpr (LEAN) return it == cur_it ? cur_tile : nxt_tile;
    else return (b0 + it * P) / S;
  };
  auto item_col = [&](int it) {  // first column of the item's chunk
    if constexpr (LEAN) return (it == cur_it ? cur_chunk : nxt_chunk) * C;
    else return ((b0 + it * P) % S) * C;
  };
  auto tile_m0 = [&](int it) { return item_tile(it) * ROWS; };
  const int nvis = T * CB;
  const bf16* xg = static_cast<const bf16*>(a.x);

  // ---- the ring ----
  int issued = 0;  // visits issued (uniform)
  // Row 4·hw's piece from one 64-bit product, rows 4·hw + i at i strides from it (the stride is loop-invariant), and
  // no per-row predicate where the thread's 4 rows exist (all but the last tile): ≈ 40 fewer instructions a visit
  // than four 64-bit products and selects (SASS).
  const i64 xs = a.x_stride;
  auto issue = [&](int k) {
    const int it = k / CB, b = k - it * CB;
    const int m0 = tile_m0(it);
    const int rows = a.M - m0 - 4 * hw;  // this thread's rows of the tile that exist (≥ 4: all)
    bf16* dst = ring + (k % R) * BLOCK + 4 * hw * 128 + c0;
    const bf16* src = xg + static_cast<i64>(m0 + 4 * hw) * xs + item_col(it) + b * 128 + c0;
    if (rows >= 4) {
#pragma unroll
      for (int i = 0; i < 4; ++i) cp_async16(dst + i * 128, src + i * xs, true);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const bool ok = i < rows;  // rows past M: zero-filled, reading nothing (from row 4·hw's address or x)
        cp_async16(dst + i * 128, ok ? src + i * xs : xg, ok);
      }
    }
    cp_async_commit();
    ++issued;
  };
  // LEAN: the next visit's item as its chunk, the thread's rows of its tile that exist (M − m0 − 4·hw) and its
  // offset in x (m0·xs + chunk·C), advanced by the walk's step; the visit's block and slot are `issued` % CB and % R
  // (a real visit's index is `issued`).
  int iss_chunk = b0 % S, iss_rows = a.M - (b0 / S) * ROWS - 4 * hw;
  i64 iss_off = static_cast<i64>(b0 / S) * ROWS * xs + iss_chunk * C;
  const bf16* const xthr = xg + static_cast<i64>(4 * hw) * xs + c0;
  const u32 ring_thr = smem_u32(ring + 4 * hw * 128 + c0);
  // TIGHT (x contiguous: x_stride == N, checked by the host): the next visit's source as one pointer, its 4 rows at
  // immediate offsets N·2 bytes apart, advanced by 256 bytes within an item and by the walk's step between items.
  const char* t_src = reinterpret_cast<const char*>(xthr + iss_off);
  auto issue_lean = [&]() {  // visit `issued` (every call commits a group: empty past the last visit)
    if constexpr (TIGHT) {
      if (issued < nvis) {
        const u32 k = static_cast<u32>(issued);
        if (iss_rows >= 4) {
          const u32 dst = thr_const(kRing) + (k % static_cast<u32>(R)) * (BLOCK * 2);
#pragma unroll
          for (int i = 0; i < 4; ++i) cp_async16_full(dst + i * 256, t_src + i * (N * 2));
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const bool ok = i < iss_rows;
            cp_async16(ring + ((k % static_cast<u32>(R)) * BLOCK + 4 * hw * 128 + c0) + i * 128,
                       ok ? static_cast<const void*>(t_src + i * (N * 2)) : static_cast<const void*>(xg), ok);
          }
        }
        if (k % static_cast<u32>(CB) == static_cast<u32>(CB - 1)) {  // the next item
          iss_rows -= dT * ROWS;
          iss_chunk += dC;
          t_src += (static_cast<i64>(dT) * ROWS * N + dC * C) * 2 - (CB - 1) * 256;
          if (iss_chunk >= S) {
            iss_chunk -= S;
            iss_rows -= ROWS;
            t_src += static_cast<i64>(ROWS - 1) * N * 2;  // (ROWS·N − S·C elements)
          }
        } else {
          t_src += 256;
        }
      }
      cp_async_commit();
      ++issued;
      return;
    }
    if (issued < nvis) {
      const int b = issued % CB, slot = issued % R;
      const bf16* src = xthr + iss_off + b * 128;
      if (iss_rows >= 4) {
        const u32 dst = ring_thr + slot * (BLOCK * 2);
#pragma unroll
        for (int i = 0; i < 4; ++i) cp_async16_full(dst + i * 256, src + i * xs);
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const bool ok = i < iss_rows;
          cp_async16(ring + (slot * BLOCK + 4 * hw * 128 + c0) + i * 128, ok ? src + i * xs : xg, ok);
        }
      }
      if (b == CB - 1) {  // the next item
        iss_rows -= dT * ROWS;
        iss_chunk += dC;
        iss_off += static_cast<i64>(dT) * ROWS * xs + dC * C;
        if (iss_chunk >= S) {
          iss_chunk -= S;
          iss_rows -= ROWS;
          iss_off += static_cast<i64>(ROWS) * xs - S * C;
        }
      }
    }
    cp_async_commit();
    ++issued;
  };
  if constexpr (LEAN) {
#pragma unroll 1
    for (int k = 0; k < (START ? CB : R); ++k) issue_lean();
    if constexpr (DISC) {
      // The code lines of this CTA's last item (DISCZ1: none — the item index pushed past the last by the launch's tag,
      // never 0, a value the compiler cannot fold, so the loop keeps DISC1's code and skips every line), 128 bytes each:
      // q's 128 rows × CB lines and qT's 128·CB channel rows. Every one is written whole later by this CTA (full tiles,
      // aligned lines), after the setup barrier below (which orders these weak writes before those stores).
      if (((reinterpret_cast<unsigned long long>(a.q) | reinterpret_cast<unsigned long long>(a.qT)) & 127u) == 0u &&
          (a.M & 127) == 0) {
        constexpr int LINES = 2 * ROWS * CB;  // an item's lines
#pragma unroll 1
        for (int l = tid; l < LINES; l += THREADS) {
          const int j = T - 1 - l / LINES + (DISC_NONE && sa.tag != 0u ? 1 : 0);
          if (j < 0 || j >= T) continue;
          const int u = b0 + j * P, tile = u / S, col = (u % S) * C, idx = l % LINES;
          const unsigned char* line =
              idx < ROWS * CB ? a.q + (static_cast<i64>(tile) * ROWS + idx / CB) * N + col + (idx % CB) * 128
                              : a.qT + static_cast<i64>(col + idx - ROWS * CB) * a.M + tile * ROWS;
          asm volatile("discard.global.L2 [%0], 128;" ::"l"(line) : "memory");
        }
      }
    }
  } else {
#pragma unroll 1
    for (int k = 0; k < min(R, nvis); ++k) issue(k);
  }
  auto wait_visit = [&](int k) { cp_async_wait_group_dyn(issued - k - 1); };  // ≤ R − 1 newer groups pending
  auto release = [&](int k) {
    if constexpr (LEAN) issue_lean();
    else if (k + R < nvis) issue(k + R);
  };
  auto read_visit = [&](int k, Vec16 (&x)[4]) {
    const bf16* s = ring + (k % R) * BLOCK + 4 * hw * 128 + c0;
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = *reinterpret_cast<const Vec16*>(s + i * 128);
  };

  // ---- setup (overlaps the first copies) ----
  for (int i = tid; i < 3 * 132; i += THREADS) colmax[i] = 0u;
  if constexpr (SPLIT) {
    if (tid == 0) mbar_init(split_bar, WARPS);
  }
  if constexpr (WSM) {  // the weights as fp32 (the same values vec_get gives), 4 a thread and step
    static_assert(N % 4 == 0, "whole 4-weight pieces");
    for (int i = 4 * tid; i < N; i += 4 * THREADS) {
      float4 f;
      if constexpr (W_F32) {
        f = *reinterpret_cast<const float4*>(static_cast<const float*>(a.w) + i);
      } else {
        const uint2 v = *reinterpret_cast<const uint2*>(static_cast<const bf16*>(a.w) + i);
        f = make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u), __uint_as_float(v.y << 16),
                        __uint_as_float(v.y & 0xffff0000u));
      }
      *reinterpret_cast<float4*>(wsm + (i & ~127) + ((i & 7) >> 2) * 64 + ((i & 127) >> 3) * 4) = f;
    }
  }
  __syncthreads();

  float own = 0.f;  // S = 1: the butterfly's row sum of pass 1 (row 4·hw + (hl >> 2))

  // Pass 1 of item it: Σx² of the item's chunk per row, stored tagged in the workspace (S > 1).
  // pb (LEAN): visit it·CB + b has landed when at most pb − b newer cp.async groups are pending.
  auto pass1 = [&](int it, auto pb) {
    float ss[4] = {0.f, 0.f, 0.f, 0.f};
    auto block = [&](int k) {
      Vec16 xv[4];
      read_visit(k, xv);
#pragma unroll
      for (int i = 0; i < 4; ++i) sum_squares8(xv[i], ss[i]);
    };
    if constexpr (LEAN) {
      // In the loop, before pass 1 of item j ≥ 1, R + (j − 1)·CB groups were committed (the first R, then one a
      // released visit of items < j − 1), so visit j·CB + b has landed when at most R − CB − 1 − b newer ones are
      // pending; item 0 (R committed) and, with FIRST, item 1 (R + CB): R − 1 − b.
      constexpr int PB = decltype(pb)::value;
#pragma unroll
      for (int b = 0; b < CB; ++b) {
        const int k = it * CB + b;
        cp_async_wait_group_dyn(PB - b);
        if (b == 0) mark(1, it);
        block(k);
      }
    } else {
#pragma unroll 1
      for (int b = 0; b < CB; ++b) {
        const int k = it * CB + b;
        wait_visit(k);
        block(k);
      }
    }
    const float sum = transpose_reduce4<false>(ss, hl);  // row 4·hw + (hl >> 2), lanes 16·half + 4R
    if constexpr (GX) {
      // Lanes j < 8 store row 8w + j's partial sum (held by lane 16·(j >> 2) + 4·(j & 3)), tagged with this launch.
      const int j = lane & 7;
      const float v = __shfl_sync(0xffffffffu, sum, 16 * (j >> 2) + 4 * (j & 3));
      if (lane < 8)
        stream_st_relaxed(sa.ws + (static_cast<i64>(item_tile(it)) * S + item_col(it) / C) * ROWS + 8 * warp + j,
                          stream_tagged(v, sa.tag));
    } else {
      own = sum;
    }
    mark(2, it);
  };
  // The fallback: the partial sums of chunk q of item it's tile for rows 8w … 8w+7 computed here from x (the same
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
        sum_squares8(xv, ss[i]);
      }
    return transpose_reduce4<false>(ss, hl);
  };

  // The warp's S × 8 tagged partial sums of item it, pair (q, j) = idx = lane + 32k (chunk q = idx >> 3, row
  // 8w + (idx & 7)), loaded by poll_issue(it) and checked by finish(it).
  constexpr int KQ = GX ? (S * 8 + 31) / 32 : 1;
  // LEAN with ≤ 2 loads a lane: item it + 1's polls are issued at the start of item it's last pass-2 block (its
  // partial sums were stored by every CTA in pass 1 a whole round earlier), so they return during that block instead
  // of during the next pass 1.
  constexpr bool EARLY_POLL = LEAN && GX && KQ <= 2;
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

  // r of the thread's 4 rows of item it.
  auto finish = [&](int it, float (&rv)[4]) {
    const int m0 = tile_m0(it);
    const int valid = min(ROWS, a.M - m0);
    const int j = lane & 7;  // this lane computes row 8w + j (lanes ≥ 8 duplicate)
    float t;
    if constexpr (GX) {
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
      mark(6, it);  // (TRACE: every pair current — the timeline's "polled")
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
    const float rr = 1.0f / sqrtf(t / static_cast<float>(N) + a.eps);
    if (item_col(it) == 0 && a.rms_out && lane < 8 && 8 * warp + j < valid) a.rms_out[m0 + 8 * warp + j] = rr;
#pragma unroll
    for (int i = 0; i < 4; ++i) rv[i] = __shfl_sync(0xffffffffu, rr, 4 * half + i);
    mark(3, it);
  };

  // ---- pass 2 ----
  int nb = 0;        // blocks quantized so far (uniform): codes buffer nb & 1, column-max buffer nb % 3
  int cmi = 0;
  int prev_m0 = 0, prev_valid = 0, prev_col = -1;  // the block whose codes wait in buffer (nb − 1) & 1
  const bool aligned16 = (a.M % 16) == 0;
  const bool scale_aligned = (reinterpret_cast<unsigned long long>(a.qT_scale) & 15u) == 0u;
  auto store_codes = [&](const u32* ct, int pm0, int pvalid, int pcol) {
    store_block_codes(a, ct, pm0, pvalid, pcol, warp, lane, aligned16);
  };

  // LEAN: the qT pieces' per-thread constants (store_block_codes' n, jj and swizzle: piece 1 is 4 channels after
  // piece 0), the column-max slot address.
  const int ct_off0 = (warp * 8 + (lane >> 3)) * 32 + 4 * ((lane & 7) ^ (warp >> 1));
  const i64 qt_off0 = static_cast<i64>(warp * 8 + (lane >> 3)) * a.M + (lane & 7) * 16;
  const bool swap = (warp & 1) != 0;
  const u32 cm_thr = smem_u32(colmax + cs0);
  const u32 cm_base = smem_u32(colmax);  // TIGHT: the column-max buffers' base
  auto store_codes_any = [&](const u32* ct, int pm0, int pvalid, int pcol) {
    if (aligned16 && pvalid == ROWS)
      store_block_codes_full(ct + ct_off0, a.qT + static_cast<i64>(pcol) * a.M + pm0 + qt_off0,
                             static_cast<i64>(4) * a.M, swap);
    else
      store_codes(ct, pm0, pvalid, pcol);
  };
  // LEAN: the weights of the next block to quantize, loaded a block ahead (an item's last block loads the next item's
  // first: that L2 round trip hides behind pass 1 and the exchange instead of stalling the block's first multiply).
  // TIGHT: all N weights as fp32 in shared memory instead (written in the setup), two LDS.128 a block.
  constexpr int WV = W_F32 ? 2 : 1;  // 16-byte pieces of a thread's 8 weights
  Vec16 wpre[WV];
  auto load_w = [&](int col) {
    if constexpr (!WSM) {
      const char* p = static_cast<const char*>(a.w) + static_cast<i64>(col + c0) * (W_F32 ? 4 : 2);
#pragma unroll
      for (int j = 0; j < WV; ++j) wpre[j] = load16(p + 16 * j);
    }
  };
  auto weights = [&](int col, float (&w8)[8]) {  // the block at `col`'s (LEAN: loaded a block ahead into wpre)
    if constexpr (WSM) {
      const u32 at = thr_const(kW) + col * 4;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const Vec16 v = lds16(at + 256 * j);
#pragma unroll
        for (int i = 0; i < 4; ++i) w8[4 * j + i] = __uint_as_float(v.w[i]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < WV; ++j)
#pragma unroll
        for (int i = 0; i < 8 / WV; ++i)
          w8[j * (8 / WV) + i] = W_F32 ? vec_get<float>(wpre[j], i) : vec_get<bf16>(wpre[j], i);
    }
  };
  auto pass2_lean = [&](int it, const float (&rv)[4]) {
    const int m0 = tile_m0(it);
    const int valid = min(ROWS, a.M - m0);
    const i64 tb = item_tile(it);
    const int col0 = item_col(it);
    auto body = [&](auto full) {
      constexpr bool FULL = decltype(full)::value;
      constexpr bool TF = TIGHT && FULL;  // TIGHT's code (full tiles)
      constexpr int UNROLL = TF ? CB : 1;  // (TF: the item's blocks unrolled — no per-block bookkeeping)
      auto read_block = [&](int k, int col, Vec16 (&xv)[4], float (&w8)[8]) {
        const u32 at = thr_const(kRing) + (static_cast<u32>(k) % static_cast<u32>(R)) * (BLOCK * 2);
#pragma unroll
        for (int i = 0; i < 4; ++i) xv[i] = lds16(at + i * 256);
        weights(col, w8);
      };
#pragma unroll UNROLL
      for (int b = 0; b < CB; ++b) {
        const int col = col0 + b * 128;
        const int k = it * CB + b;
        if constexpr (EARLY_POLL) {
          if (b == CB - 1 && it + 1 < T) poll_issue(it + 1);
        }
        Vec16 xv[4];
        float w8[8];
        if constexpr (TF) {
          read_block(k, col, xv, w8);
        } else {
          read_visit(k, xv);
          weights(col, w8);
        }
        load_w(b + 1 < CB ? col + 128 : nxt_chunk * C);  // (item it + 1's first block: nxt_chunk)
        float y[4][8];
        norm_y(xv, rv, w8, y);
        release(k);  // y depends on the values: this thread's pieces of the slot are free

        auto store_prev = [&]() {  // the previous block's staged codes (buffer (nb − 1) & 1) out to qT
          if constexpr (TF) {
            if (aligned16 && prev_valid == ROWS)
              store_block_codes_at<HINT>(
                  thr_const(kCodes) + ((nb + 1) & 1) * 16384,
                  a.qT + (static_cast<u32>(prev_col) * static_cast<u32>(a.M) + prev_m0 + thr_const(kQt)),
                  static_cast<i64>(4) * a.M, (warp & 1) != 0);
            else
              store_codes(codes + ((nb + 1) & 1) * 4096, prev_m0, prev_valid, prev_col);
          } else {
            store_codes_any(codes + ((nb + 1) & 1) * 4096, prev_m0, prev_valid, prev_col);
          }
        };
        auto row_codes_now = [&]() {
          if constexpr (TF && FLAT) {
            // (FLAT: the row-scale store predicated, no divergent branch between the phases)
            bqt::row_codes<true>(y, hl, lane, 4, a.q + (static_cast<u32>(m0 * N + col) + thr_const(kQ)), N,
                                 a.q_scale + (static_cast<u32>(col >> 7) * static_cast<u32>(a.M) +
                                              static_cast<u32>(m0) + thr_const(kQs)),
                                 typename TightMakeOf<ROUND>::type{}, Apply<ROUND>{}, CodeStore<HINT>{});
          } else if constexpr (TF) {  // (offsets < M·N < 2^31)
            bqt::row_codes(y, hl, lane, 4, a.q + (static_cast<u32>(m0 * N + col) + thr_const(kQ)), N,
                           a.q_scale + (static_cast<u32>(col >> 7) * static_cast<u32>(a.M) + static_cast<u32>(m0) +
                                        thr_const(kQs)),
                           typename TightMakeOf<ROUND>::type{}, Apply<ROUND>{});
          } else {
            block_row_codes<N, ROUND, FULL, true>(a, y, m0, valid, col, hw, hl, lane);
          }
        };
        // (SPLIT and FLAT: the column maxima first, so their atomics are in flight during the row codes)
        if constexpr (!(TF && (SPLIT || FLAT))) row_codes_now();

        col_max_at((TF ? thr_const(kColMax) : cm_thr) + cmi * (132 * 4), y);
        if constexpr (TF) {
          if (tid < 132) sts_u32(cm_base + (cmi == 2 ? 0 : cmi + 1) * (132 * 4) + 4 * tid, 0u);
        } else {
          if (tid < 132) colmax[(cmi == 2 ? 0 : cmi + 1) * 132 + tid] = 0u;
        }
        if constexpr (TF && SPLIT) {
          // The block barrier split: each warp arrives once its column maxima (and the clear) are done, quantizes its
          // rows, then waits for the other warps' arrivals (phase sph of the barrier).
          __syncwarp();
          if constexpr (FLAT) mbar_arrive_if(split_bar, lane == 0);
          else if (lane == 0) mbar_arrive(split_bar);
          row_codes_now();
          mbar_wait(split_bar, sph & 1u);
          ++sph;
        } else {
          if constexpr (TF && FLAT) row_codes_now();
          __syncthreads();
        }
        if (prev_col >= 0) store_prev();

        if constexpr (TF && !ROUND) {  // (round_scale 0: the brackets from the column maxima, the scales last)
          const u32 cm_at = thr_const(kColMax) + cmi * (132 * 4);
          bqt::stage_col_codes_div_at(cm_at, thr_const(kStage) + (nb & 1) * 16384, y);
          if (warp == 0 && half == 0) {
            float sc[8];
            bqt::col_scales_div(cm_at, sc);
            bqt::store_scales8(a.qT_scale + tb * N + col + hl * 8, sc, scale_aligned);
          }
        } else if constexpr (TF && FLAT) {  // (the column scales formed and stored last: warp 0's branch ends the block)
          float qp[8], sc[8];
          col_quantizers_tight(thr_const(kColMax) + 16 * half + cmi * (132 * 4), half, false, qp, sc);
          stage_codes_at(thr_const(kStage) + (nb & 1) * 16384, y, qp);
          if (warp == 0 && half == 0) {
            col_scales_of(qp, sc);
            bqt::store_scales8(a.qT_scale + tb * N + col + hl * 8, sc, scale_aligned);
          }
        } else if constexpr (TF) {
          float qp[8], sc[8];
          col_quantizers_tight(thr_const(kColMax) + 16 * half + cmi * (132 * 4), half, warp == 0, qp, sc);
          if (warp == 0 && half == 0) bqt::store_scales8(a.qT_scale + tb * N + col + hl * 8, sc, scale_aligned);
          stage_codes_at(thr_const(kStage) + (nb & 1) * 16384, y, qp);
        } else {
          block_col_codes<N, ROUND, true>(a, y, colmax + cmi * 132, codes + (nb & 1) * 4096, tb, col, warp, half, hw,
                                          hl, cs0, scale_aligned);
        }
        prev_m0 = m0;
        prev_valid = valid;
        prev_col = col;
        ++nb;
        cmi = cmi == 2 ? 0 : cmi + 1;
      }
    };
    if (valid == ROWS) body(Flag<true>{});
    else body(Flag<false>{});
    mark(4, it);
  };

  auto pass2 = [&](int it, const float (&rv)[4]) {
    const int m0 = tile_m0(it);
    const int valid = min(ROWS, a.M - m0);
    const i64 tb = item_tile(it);
#pragma unroll 1
    for (int b = 0; b < CB; ++b) {
      const int col = item_col(it) + b * 128;
      const int k = it * CB + b;
      Vec16 xv[4];
      read_visit(k, xv);
      float w8[8];
      if (W_F32) load_floats<float, 8>(a.w, col + c0, w8);
      else load_floats<bf16, 8>(a.w, col + c0, w8);
      float y[4][8];
      norm_y(xv, rv, w8, y);
      release(k);  // y depends on the values: the slot is free

      block_row_codes<N, ROUND>(a, y, m0, valid, col, hw, hl, lane);

      // Column maxima into buffer cmi (the next one, last read two blocks ago, is cleared here), one barrier.
      u32* cm = colmax + cmi * 132;
      block_col_max(cm, y, cs0);
      if (tid < 132) colmax[(cmi == 2 ? 0 : cmi + 1) * 132 + tid] = 0u;
      __syncthreads();
      if (prev_col >= 0) store_codes(codes + ((nb + 1) & 1) * 4096, prev_m0, prev_valid, prev_col);

      block_col_codes<N, ROUND>(a, y, cm, codes + (nb & 1) * 4096, tb, col, warp, half, hw, hl, cs0, scale_aligned);
      prev_m0 = m0;
      prev_valid = valid;
      prev_col = col;
      ++nb;
      cmi = cmi == 2 ? 0 : cmi + 1;
    }
  };

  float rv[4];
  auto advance = [&]() {  // LEAN: item cur_it done
    ++cur_it;
    cur_tile = nxt_tile;
    cur_chunk = nxt_chunk;
    step(nxt_tile, nxt_chunk);
  };
  // START: only item 0's blocks were requested (CB groups), so that all CTAs' first items arrive before the rest;
  // the other R − CB follow once its blocks have landed (with FIRST: once item 0's exchange is complete, so no CTA's
  // first item competes with the others' second) — the commit count is then as without START.
  if constexpr (LEAN) load_w(item_col(0));
  if constexpr (START) {
    pass1(0, IntC<CB - 1>{});
    if constexpr (!FIRST) {
#pragma unroll 1
      for (int k = CB; k < R; ++k) issue_lean();
    }
  } else {
    pass1(0, IntC<R - 1>{});
  }
  int it0 = 0;
  if constexpr (FIRST) {
    // Item 0 through its quantization before item 1's pass 1 (its exchange waits in the open, but its pass 2 runs
    // while item 1's blocks are still arriving, and item 2's are requested that much earlier).
    if constexpr (GX) poll_issue(0);
    finish(0, rv);
    if constexpr (START) {
#pragma unroll 1
      for (int k = CB; k < R; ++k) issue_lean();
    }
    pass2_lean(0, rv);
    advance();
    if (T > 1) pass1(1, IntC<R - 1>{});
    it0 = 1;
  }
#pragma unroll 1
  for (int it = it0; it < T; ++it) {
    // The workspace is not reused, so the poll of item it flies during pass 1 of item it+1 (S = 1: finish first,
    // `own` is item it's).
    if constexpr (GX) {
      if (!EARLY_POLL || (!FIRST && it == 0)) poll_issue(it);  // (EARLY_POLL: by item it − 1's last block)
    }
    else finish(it, rv);
    if (it + 1 < T) pass1(it + 1, IntC<R - CB - 1>{});
    if constexpr (GX) finish(it, rv);
    if constexpr (LEAN) {
      pass2_lean(it, rv);
      advance();
    } else {
      pass2(it, rv);
    }
  }
  __syncthreads();  // the last block's codes are complete
  if constexpr (LEAN) store_codes_any(codes + ((nb + 1) & 1) * 4096, prev_m0, prev_valid, prev_col);
  else store_codes(codes + ((nb + 1) & 1) * 4096, prev_m0, prev_valid, prev_col);
  mark(5, T);
}

// The kernel. V = the config's overlap bits (ops/rms_norm_block_quant.cpp): 1 the base, 2 LEAN, 32 FIRST, 64 TRACE
// (measurement only), 128 START, 256 TIGHT (LEAN with power-of-two scales and x contiguous), 512 SPLIT (TIGHT with the
// full tiles' block barrier split into an mbarrier arrive before the row codes and a wait after them), 2048 FLAT
// (TIGHT without divergent branches between the phases of a full block: predicated row-scale stores, the column scales
// last; the column maxima before the row codes), 16384 WLDG (TIGHT with LEAN's weights, an LDG a block ahead, instead of the weights in shared memory).
// PF = the config's prefetch field (1; session 14: | the codes' L2 hint bits kRmsqHint*, TIGHT + FLAT full tiles only).
template <int N, int CB, bool ROUND, bool W_F32, int R, int V = 1, int PF = 1>
__global__ void __launch_bounds__(kRmsqStreamThreads, 1)
    rms_norm_block_quant_stream_kernel(const RmsqStreamArgs sa) {
  rms_norm_block_quant_stream_body<N, CB, ROUND, W_F32, R, (V & 2) != 0, (V & 32) != 0, (V & 64) != 0, (V & 128) != 0,
                                   (V & 256) != 0, (V & 512) != 0, (V & 2048) != 0, (V & 16384) != 0,
                                   PF & rmsq::kRmsqHintBits>(sa);
}

// ---------------------------------------------------------------------------------------------------------------------
// tile512 (mode 2, config exchange 6): the tile GX kernel's grid and exchange (a 128-token × C-column item a CTA,
// C = 128·CB, grid (S, tiles) tile-major, clusters of K CTAs, the clusters' row sums through the tagged global
// workspace: rmsq::gx_row_rinv) with the stream kernel's per-block code: 512 threads, 4 rows × 8 channels a thread
// and block, y held in registers for both quantizations (never recomputed), the row amax by the transposing
// butterfly (one scale a lane), column maxima by shared atomics, one block barrier between them and the transposed
// codes, qT stored as 128-byte rows. Two CTAs an SM (64 registers): 32 warps, each CTA at its own phase.
// CB = 2: the second block goes to shared memory by cp.async (each thread copies the pieces it reads) while the first
// is loaded into registers; both add to Σx² (block order, as the fallback does), and the first block's codes leave
// after the second block's barrier and codes (two code buffers). Clusters of K ≤ 16 CTAs (K = S: one cluster a row, no
// workspace).
template <int CB>
constexpr int rms_norm_block_quant_tile512_dynamic_smem() {
  return CB == 2 ? 128 * 128 * 2 : 0;
}
template <int N, int CB, bool ROUND, bool W_F32, int K>
__global__ void __launch_bounds__(512, 2) rms_norm_block_quant_tile512_kernel(const RmsqStreamArgs sa) {
  using namespace rmsq;
  const RmsNormBlockQuantArgs& a = sa.a;
  constexpr int ROWS = 128, C = 128 * CB, S = N / C;
  static_assert(CB == 1 || CB == 2, "one or two blocks a CTA");
  static_assert(N % C == 0 && K >= 2 && K <= 16 && S % K == 0, "clusters of K divide the row's chunks");
  __shared__ float partial[ROWS], rinv[ROWS], fb[ROWS];
  __shared__ u32 colmax[CB][132];
  __shared__ __align__(16) u32 codes[CB][128 * 32];
  extern __shared__ __align__(16) unsigned char slot_raw[];  // CB = 2: block 1, [128 rows][128 columns] bf16
  bf16* slot = reinterpret_cast<bf16*>(slot_raw);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int hl = lane & 15, half = lane >> 4;
  const int hw = warp * 2 + half;  // rows 4·hw … 4·hw+3
  const int c0 = hl * 8;           // channels c0 … c0+7 of a block
  const int cs0 = c0 + (c0 >> 5);  // column-max slot of channel c0
  const int rank = blockIdx.x;     // the C-column chunk
  const int col0 = rank * C;
  const int m0 = blockIdx.y * ROWS;
  const int valid = min(ROWS, a.M - m0);
  const bf16* xg = static_cast<const bf16*>(a.x);

  if constexpr (CB == 2) {  // block 1 into the slot (rows past M zero-filled)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = 4 * hw + i;
      const bool ok = r < valid;
      cp_async16(slot + r * 128 + c0, xg + static_cast<i64>(m0 + (ok ? r : 0)) * a.x_stride + col0 + 128 + c0, ok);
    }
    cp_async_commit();
  }
  Vec16 xv[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = 4 * hw + i;
    xv[i] = r < valid ? load16(xg + static_cast<i64>(m0 + r) * a.x_stride + col0 + c0) : Vec16{{0u, 0u, 0u, 0u}};
  }
  if (tid < CB * 132) (&colmax[0][0])[tid] = 0u;
  auto read_slot = [&](Vec16 (&x)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = *reinterpret_cast<const Vec16*>(slot + (4 * hw + i) * 128 + c0);
  };
  float ss[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < 4; ++i) sum_squares8(xv[i], ss[i]);
  if constexpr (CB == 2) {
    cp_async_wait_group<0>();  // this thread's pieces of block 1 have landed
    Vec16 x1[4];
    read_slot(x1);
#pragma unroll
    for (int i = 0; i < 4; ++i) sum_squares8(x1[i], ss[i]);
  }
  const float sum = transpose_reduce4<false>(ss, hl);  // row 4·hw + (hl >> 2): the 16-lane butterfly's bits
  if ((hl & 3) == 0) partial[4 * hw + (hl >> 2)] = sum;
  cluster_sync();
  gx_row_rinv<N, C, K, 512>(a, sa.ws, sa.tag, partial, rinv, fb, rank, blockIdx.y, m0, valid);
  __syncthreads();

  const bool scale_aligned = (reinterpret_cast<unsigned long long>(a.qT_scale) & 15u) == 0u;
  const bool aligned16 = (a.M % 16) == 0;
#pragma unroll
  for (int b = 0; b < CB; ++b) {
    const int col = col0 + b * 128;
    if (b > 0) read_slot(xv);
    float w8[8];
    if (W_F32) load_floats<float, 8>(a.w, col + c0, w8);
    else load_floats<bf16, 8>(a.w, col + c0, w8);
    float y[4][8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float rv = rinv[4 * hw + i];  // (read per block: fewer live registers)
#pragma unroll
      for (int e = 0; e < 8; ++e) y[i][e] = __fmul_rn(__fmul_rn(vec_get<bf16>(xv[i], e), rv), w8[e]);
    }
    block_row_codes<N, ROUND>(a, y, m0, valid, col, hw, hl, lane);
    block_col_max(colmax[b], y, cs0);
    __syncthreads();  // (also: every thread staged the previous block's codes)
    block_col_codes<N, ROUND>(a, y, colmax[b], codes[b], blockIdx.y, col, warp, half, hw, hl, cs0, scale_aligned);
    if (b > 0) store_block_codes(a, codes[b - 1], m0, valid, col - 128, warp, lane, aligned16);  // (y is dead here)
  }
  __syncthreads();
  store_block_codes(a, codes[CB - 1], m0, valid, col0 + (CB - 1) * 128, warp, lane, aligned16);
  cluster_wait();  // the peers' reads of partial[] (gx_row_rinv arrived)
}

}  // namespace kiln
