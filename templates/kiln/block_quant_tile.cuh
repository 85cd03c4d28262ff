// kiln/block_quant_tile.cuh — the 1×128 block-quantization stages of the 512-thread tile kernels whose thread holds
// 4 rows × 8 channels of a 128×128 block in registers: silu_block_quant / batch_weighted_silu_block_quant
// (silu_block_quant.cuh) and rms_norm_block_quant's stream and tile512 kernels (rms_norm_block_quant_stream.cuh).
//
// Layout: warp w holds rows 8w … 8w+7 of the block, its half-warp hw = 2w + half rows 4·hw … 4·hw+3, lane
// hl = lane & 15 channels c0 = 8·hl … c0+7: y[i][e] = row 4·hw + i, channel c0 + e.
// Row-wise blocks (1×128 along a row): a row's amax is a 16-lane reduction; transposed blocks (128 tokens of a
// channel): a channel's amax is a max over the thread's 4 rows, then over the 32 half-warps by shared atomicMax on
// the float bits (amax ≥ 0), into a column-max buffer of 132 slots (channel c at c + (c >> 5): the 8 channels of a
// lane have consecutive slots, and the two half-warps of a warp hit 2-way conflicts only).
// The quantizer is the caller's: make(amax) → TileQuantT<P> {scale s, the parameter p a lane applies: a float, or
// fp8.cuh's ScaleDiv for a division}, and apply(a, b, c, d, p) → the e4m3 codes of four values (of y·(1/s) with
// power-of-two scales, of y/s otherwise: fp8.cuh's e4m3x4_div).
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp8.cuh"
#include "kiln/ptx.cuh"

namespace kiln {
namespace bqt {

template <class P>
struct TileQuantT {
  float s;
  P p;
};
using TileQuant = TileQuantT<float>;
// The parameter P from lane src / lane ^ mask (one shuffle a float).
__device__ __forceinline__ float shfl_param(float p, int src) { return __shfl_sync(0xffffffffu, p, src); }
__device__ __forceinline__ ScaleDiv shfl_param(const ScaleDiv& p, int src) {
  return {shfl_param(p.s, src), shfl_param(p.lo, src), shfl_param(p.hi, src)};
}
__device__ __forceinline__ ScaleDivExact shfl_param(const ScaleDivExact& p, int src) {
  return {shfl_param(p.m, src), shfl_param(p.s1, src), shfl_param(p.inv, src)};
}
__device__ __forceinline__ float shfl_xor_param(float p, int mask) { return __shfl_xor_sync(0xffffffffu, p, mask); }
__device__ __forceinline__ ScaleDiv shfl_xor_param(const ScaleDiv& p, int mask) {
  return {shfl_xor_param(p.s, mask), shfl_xor_param(p.lo, mask), shfl_xor_param(p.hi, mask)};
}
__device__ __forceinline__ ScaleDivExact shfl_xor_param(const ScaleDivExact& p, int mask) {
  return {shfl_xor_param(p.m, mask), shfl_xor_param(p.s1, mask), shfl_xor_param(p.inv, mask)};
}
// The e4m3 codes of four values (the first in the lowest byte) from the parameter: of y·(1/s), or of y / s through
// fp8.cuh's e4m3x4_div (the `apply` of every family on these stages).
// Tag: DivFast or DivExact (fp8.cuh quantize_batch; the power-of-two form ignores it).
struct ApplyParam {
  template <class Tag>
  __device__ __forceinline__ u32 operator()(Tag, float a, float b, float c, float d, float p, u32&) const {
    return e4m3x4(__fmul_rn(a, p), __fmul_rn(b, p), __fmul_rn(c, p), __fmul_rn(d, p));
  }
  template <class Tag>
  __device__ __forceinline__ u32 operator()(Tag tag, float a, float b, float c, float d, const ScaleDiv& p,
                                            u32& miss) const {
    return e4m3x4_div(tag, a, b, c, d, p, miss);
  }
  template <class Tag>  // (div_exact a value: the batched SiLU backward's, silu_block_quant.cuh SiluMakeQuant)
  __device__ __forceinline__ u32 operator()(Tag, float a, float b, float c, float d, const ScaleDivExact& p,
                                            u32&) const {
    return e4m3x4_exact(a, b, c, d, p);
  }
};
// Whether the parameter P divides through fp8.cuh's bracket (ScaleDiv: then its exact redo in quantize_batch) or not
// (a float multiplies, a ScaleDivExact divides a value at a time: the code below takes its straight-line form). The
// two forms below repeat their few lines on purpose: one body lambda called directly for the other parameters moved
// the power-of-two kernels' SASS (the batched SiLU backward's stack 8 → 16 bytes, session 21); written out, it is
// the SASS measured before the bracket.
template <class P> struct Divides { static constexpr bool value = false; };
template <> struct Divides<ScaleDiv> { static constexpr bool value = true; };

// Slot of channel c in a column-max buffer.
__device__ __forceinline__ int colmax_slot(int c) { return c + (c >> 5); }

// A half-warp's reduction of four rows' per-lane values v[0..3] (sum, or max ignoring NaN) by a transposing
// butterfly: the first two rounds split the rows between lane halves (bit 3, then bit 2), so after four rounds lane
// hl holds row hl >> 2's total (the four lanes of a row bitwise alike: + and fmaxf commute). 5 shuffles, not 16.
// The tree is warp_sum<16>'s / warp_max<16>'s (xor 8, 4, 2, 1), so the result is bitwise theirs.
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

// A predicated global store of v at p (lanes with `pred`): one instruction, no divergent branch, so the compiler may
// schedule across it.
__device__ __forceinline__ void st_global_f32_if(float* p, float v, bool pred) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.u32 p, %2, 0;\n@p st.global.f32 [%0], %1;\n}\n" ::"l"(p), "f"(v),
               "r"(static_cast<u32>(pred))
               : "memory");
}

// Row-wise codes of the thread's 4 rows: lane 4R of each half-warp gets row R's amax (transposing butterfly), forms
// the quantizer once and stores its scale at `scale` (the caller's address for row 4·hw + (hl >> 2)) when that row
// is < `rows` (the rows of the block that exist, counted from 4·hw); the quantizer parameters come back by four
// broadcasts, and row i's 8 codes go to q + i·q_stride (this lane's 8 bytes of row 4·hw + i) for i < rows.
// PRED: the scale stored by a predicated instruction (st_global_f32_if) instead of a divergent branch.
// store(p, uint2): the codes' 8-byte store (PlainStore8: a plain st.global; the stream kernel's L2-hint variants
// pass their own).
struct PlainStore8 {
  __device__ __forceinline__ void operator()(void* p, uint2 v) const { *reinterpret_cast<uint2*>(p) = v; }
};
template <bool PRED = false, class Make, class Apply, class Store = PlainStore8>
__device__ __forceinline__ void row_codes(const float (&y)[4][8], int hl, int lane, int rows, u8* q, i64 q_stride,
                                          float* scale, Make make, Apply apply, Store store = {}) {
  float pm[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    pm[i] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) pm[i] = fmaxf(pm[i], fabsf(y[i][e]));
  }
  const auto quant = make(transpose_reduce4<true>(pm, hl));
  if constexpr (PRED) st_global_f32_if(scale, quant.s, (hl & 3) == 0 && (hl >> 2) < rows);
  else if ((hl & 3) == 0 && (hl >> 2) < rows) *scale = quant.s;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const auto qp = shfl_param(quant.p, (lane & 16) | (i << 2));
    if (i < rows) {
      if constexpr (Divides<decltype(quant.p)>::value) {
        quantize_batch<false>([&](auto tag, u32& miss) {
          uint2 out;
          out.x = apply(tag, y[i][0], y[i][1], y[i][2], y[i][3], qp, miss);
          out.y = apply(tag, y[i][4], y[i][5], y[i][6], y[i][7], qp, miss);
          store(q + i * q_stride, out);
        });
      } else {
        u32 miss = 0u;
        uint2 out;
        out.x = apply(DivFast{}, y[i][0], y[i][1], y[i][2], y[i][3], qp, miss);
        out.y = apply(DivFast{}, y[i][4], y[i][5], y[i][6], y[i][7], qp, miss);
        store(q + i * q_stride, out);
      }
    }
  }
}

// The thread's column maxima (its 4 rows) of channels c0 … c0+7 into a column-max buffer, the 8 slots at immediate
// offsets from one 32-bit shared address (slot = the address of the thread's slot cs0 = the slot of c0): both
// half-warps update the slot (no shuffle, no branch; a 2-way conflict instead). Each channel's maximum is
// max(0, |y0| … |y3|) ignoring NaN (fmaxf; the final max with 0 turns an all-NaN column to 0).
__device__ __forceinline__ void col_max_at(u32 slot, const float (&y)[4][8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float m =
        fmaxf(fmaxf(fmaxf(fabsf(y[0][e]), fabsf(y[1][e])), fmaxf(fabsf(y[2][e]), fabsf(y[3][e]))), 0.0f);
    asm volatile("red.shared.max.u32 [%0], %1;" ::"r"(slot + 4 * e), "r"(__float_as_uint(m)) : "memory");
  }
}
// The same into the column-max buffer cm (a pointer into shared memory).
__device__ __forceinline__ void col_max(u32* cm, const float (&y)[4][8], int cs0) { col_max_at(smem_u32(cm + cs0), y); }

// After the barrier that completed cm: the quantizer parameters qp of channels c0 … c0+7 (each half-warp forms four,
// the other four come by a shuffle) and, with `scales` (warp-uniform), their scales sc (for half-warp 0 to store).
template <class Make, class P>
__device__ __forceinline__ void col_quantizers(const u32* cm, int cs0, int half, bool scales, P (&qp)[8],
                                               float (&sc)[8], Make make) {
  float mine_s[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const TileQuantT<P> quant = make(__uint_as_float(cm[cs0 + 4 * half + e]));
    mine_s[e] = quant.s;
    const P other = shfl_xor_param(quant.p, 16);
    qp[e] = half ? other : quant.p;
    qp[4 + e] = half ? quant.p : other;
  }
  if (scales) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float other = __shfl_xor_sync(0xffffffffu, mine_s[e], 16);
      sc[e] = half ? other : mine_s[e];
      sc[4 + e] = half ? mine_s[e] : other;
    }
  }
}

// 8 scales to dst (two 16-byte stores when dst is 16-byte aligned).
__device__ __forceinline__ void store_scales8(float* dst, const float (&sc)[8], bool aligned) {
  if (aligned) {
    *reinterpret_cast<float4*>(dst) = make_float4(sc[0], sc[1], sc[2], sc[3]);
    *reinterpret_cast<float4*>(dst + 4) = make_float4(sc[4], sc[5], sc[6], sc[7]);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) dst[e] = sc[e];
  }
}

// The thread's transposed codes (4 tokens of each of its 8 channels) into ct, [128 channels][32 slots of 4 tokens]:
// slot s (tokens 4s … 4s+3) of channel n at s ^ (2·(n >> 3)), so the 32 lanes of a warp (channels c0 + e, slots
// 2w + half) write 32 different banks.
template <class Apply, class P>
__device__ __forceinline__ void stage_codes(u32* ct, const float (&y)[4][8], const P (&qp)[8], int c0, int hw,
                                            int hl, Apply apply) {
  if constexpr (Divides<P>::value) {
    quantize_batch<false>([&](auto tag, u32& miss) {
#pragma unroll
      for (int e = 0; e < 8; ++e)
        ct[(c0 + e) * 32 + (hw ^ (2 * hl))] = apply(tag, y[0][e], y[1][e], y[2][e], y[3][e], qp[e], miss);
    });
  } else {
    u32 miss = 0u;
#pragma unroll
    for (int e = 0; e < 8; ++e)
      ct[(c0 + e) * 32 + (hw ^ (2 * hl))] = apply(DivFast{}, y[0][e], y[1][e], y[2][e], y[3][e], qp[e], miss);
  }
}

// Without power-of-two scales (the stream kernel's and the SiLU tile kernels' round_scale 0), instead of
// col_quantizers + stage_codes: the transposed codes of channels c0 … c0+7 staged at the shared address st_at (the
// thread's word of stage_codes: channel c0 + e 128 bytes on), each thread forming its 8 brackets itself from the
// column maxima at cm_at (the address of its slot cs0; fp8.cuh scale_bracket_of_max: no scale, no shuffle, where
// col_quantizers formed 4 quantizers a thread and exchanged 3 floats each), the batch redone by div_exact from the
// block scales where a bracket missed. The same codes and scales as col_quantizers + stage_codes with a ScaleDiv.
// The block scale of channel c0 + e from its column maximum.
__device__ __forceinline__ float col_scale_at(u32 cm_at, int e) {
  return block_scale_fast<false>(__uint_as_float(lds_u32(cm_at + 4 * e)));
}
__device__ __forceinline__ u32 col_code4(DivFast, const float (&y)[4][8], int e, const ScaleBracket& b, u32, u32& miss) {
  return e4m3x4_div(DivFast{}, y[0][e], y[1][e], y[2][e], y[3][e], ScaleDiv{0.0f, b.lo, b.hi}, miss);
}
__device__ __forceinline__ u32 col_code4(DivExact, const float (&y)[4][8], int e, const ScaleBracket&, u32 cm_at,
                                         u32&) {
  return e4m3x4_exact(y[0][e], y[1][e], y[2][e], y[3][e], scale_div_exact(col_scale_at(cm_at, e)));
}
__device__ __forceinline__ void stage_col_codes_div_at(u32 cm_at, u32 st_at, const float (&y)[4][8]) {
  ScaleBracket br[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) br[e] = scale_bracket_of_max(__uint_as_float(lds_u32(cm_at + 4 * e)));
  quantize_batch<false>([&](auto tag, u32& miss) {
#pragma unroll
    for (int e = 0; e < 8; ++e) sts_u32(st_at + 128 * e, col_code4(tag, y, e, br[e], cm_at, miss));
  });
}
// Their block scales (for the half-warp that stores them).
__device__ __forceinline__ void col_scales_div(u32 cm_at, float (&sc)[8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e) sc[e] = col_scale_at(cm_at, e);
}
}  // namespace bqt
}  // namespace kiln
