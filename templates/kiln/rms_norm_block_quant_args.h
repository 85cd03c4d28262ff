// kiln/rms_norm_block_quant_args.h — the kernel argument block, shared by the device template and the host recipe.
#pragma once

namespace kiln {

struct RmsNormBlockQuantArgs {
  const void* x;             // [M, N] bf16
  long long x_stride;        // elements between rows
  const void* w;             // [N] bf16 or fp32
  unsigned char* q;          // [M, N] e4m3
  float* q_scale;            // [N/128, M]
  float* rms_out;            // [M] or null
  const float* rms_in;       // [M] (mode 1)
  unsigned char* qT;         // [N, M] e4m3
  float* qT_scale;           // [ceil(M/128), N]
  int M;
  float eps;
};

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define KILN_RMSQ_HD __host__ __device__
#else
#define KILN_RMSQ_HD
#endif

// The power-of-two block scale s = 2^ceil(log2(max(fl(amax / 448), 1e-30))) (spec §2, round_scale) as fp32 bits,
// from the bits of an amax that is a max from 0 ignoring NaN (so ≥ 0 and never NaN: bits ≤ 0x7f800000), with no
// division and no branch. fl(amax/448) ≤ 2^k exactly when amax ≤ 448·2^k: a quotient within half an ulp above 2^k
// rounds down to it (ties to even), and the float after 448·2^k = 1.75·2^(k+8) lies 2^-23/1.75 > 2^-24 (relative)
// above it. With amax = m·2^e (m in [1, 2)) the smallest such k is e − 8 for m ≤ 1.75 (mantissa field ≤ 0x600000)
// and e − 7 above: adding 0x1FFFFF carries into the exponent field exactly then. Floored at 2^-99 (the power of two
// above 1e-30; zero and subnormal amax land there); amax = inf gives inf.
constexpr KILN_RMSQ_HD unsigned rms_norm_block_quant_pow2_scale_bits_of_max(unsigned amax_bits) {
  const int k = static_cast<int>((amax_bits + 0x1fffffu) & 0x7f800000u) - (8 << 23);
  const unsigned floored = static_cast<unsigned>(k > (28 << 23) ? k : (28 << 23));  // 2^-99 = (127 − 99) << 23
  return amax_bits >= 0x7f800000u ? 0x7f800000u : floored;
}
// The exact reciprocal of that scale (what the quantizers multiply by) as bits, straight from amax's: a power of two
// 2^j has bits (127 + j) << 23, its reciprocal (127 − j) << 23, so with t = (amax + 0x1FFFFF) & 0x7F800000 the
// reciprocal of max(t − 2^26, 2^-99) is min(0x83000000 − t, 0x71000000) (t ≤ 0x7F800000: no wrap); amax = inf gives 0
// (scale inf). The scale is then 0x7F000000 − the reciprocal's bits (inf for 0): fewer instructions than the scale first.
constexpr KILN_RMSQ_HD unsigned rms_norm_block_quant_pow2_inv_bits_of_max(unsigned amax_bits) {
  const unsigned t = (amax_bits + 0x1fffffu) & 0x7f800000u, inv = 0x83000000u - t;
  return amax_bits >= 0x7f800000u ? 0u : (inv < 0x71000000u ? inv : 0x71000000u);
}

// Largest N: the row kernel keeps N/32 values per lane in registers; the tile kernel's cluster is ≤ 16 CTAs of
// ≤ 4 column blocks.
constexpr int kRmsNormBlockQuantMaxN = 8192;

// Dynamic shared memory of the tile kernel: per-row partial sums and 1/rms, per-warp column maxima, column scales,
// the block's transposed codes (128 × 128 bytes) and its row scales; with STAGE, then the CTA's whole slice of x
// (CB blocks of 128 × 128 bf16). Without STAGE the tile lives in registers, so CB does not change it.
constexpr int kRmsNormBlockQuantTileBaseSmem = (128 + 128 + 8 * 128 + 128) * 4 + 128 * 128 + 128 * 4;
constexpr int rms_norm_block_quant_tile_smem_bytes(int CB, bool stage = false) {
  return kRmsNormBlockQuantTileBaseSmem + (stage ? CB * 128 * 128 * 2 : 0);
}

// Ring kernel: R slots of one 128×128 bf16 block each, then double-buffered partial sums and 1/rms, the tile kernel's
// per-block staging (column maxima and scales, transposed codes, row scales) and R mbarriers.
constexpr int kRmsNormBlockQuantMaxRing = 6;
// `warps` (8 or 16) sizes the per-warp column maxima; `push_cluster` > 0 (the cluster size S, exchange by pushes)
// adds the received partial sums [2][S][128] and their two barriers.
constexpr int rms_norm_block_quant_ring_smem_bytes(int R, int warps = 8, int push_cluster = 0) {
  return R * 128 * 128 * 2 + (2 * 128 + 2 * 128 + warps * 128 + 128) * 4 + 128 * 128 + 128 * 4 + 8 * R +
         (push_cluster > 0 ? 2 * push_cluster * 128 * 4 + 16 : 0);
}
// Mode-0 pipe kernel: STAGES row slots per warp (of 1/split of a row each), then one mbarrier per slot; split > 1
// adds the warps' Σx² exchange [2][warps] floats.
constexpr int rms_norm_block_quant_pipe_smem_bytes(int N, int warps, int stages, int split = 1) {
  return warps * stages * (N * 2 / split + 8) + (split > 1 ? 2 * warps * 4 : 0);
}
// CTAs an SM the pipe kernel asks registers for (__launch_bounds__): 16 warps an SM where shared memory allows
// (split rows: 32, ≤ 64 registers; 24 with the weights in registers, which spilled at 64).
constexpr int rms_norm_block_quant_pipe_min_blocks(int N, int warps, int stages, int split = 1, bool wreg = false) {
  const int by_smem = 228 * 1024 / (rms_norm_block_quant_pipe_smem_bytes(N, warps, stages, split) + 1024);
  const int want = (split > 1 ? (wreg ? 24 : 32) : 16) / warps < 1 ? 1 : (split > 1 ? (wreg ? 24 : 32) : 16) / warps;
  return by_smem < 1 ? 1 : by_smem < want ? by_smem : want;
}
// Pipe-kernel variants: bits of the config's `overlap` field (unused by the pipe kernel otherwise); every one but
// TRACE is a search-space point.
//  * START1: one row a warp requested at the start, the rest of its ring once that row has landed (a start burst of
//    half the bytes, so the first rows land sooner);
//  * LEAN: the row's global pointers advanced by constants and its shared-memory addresses as 32-bit offsets from
//    the warp's ring (fewer instructions a row);
//  * NOFENCE: no generic→async proxy fence before a slot is refilled (CUTLASS's consumer release: the warp's reads of
//    the slot have all returned, their values consumed, before the refill is issued);
//  * TRACE (measurement only): per-warp timestamps to the u64 array passed in `qT` (mode 0 has no transposed
//    output): kRmsqPipeTraceSlots a warp, see rms_norm_block_quant_pipe_kernel;
// Bits 2 (BAND: contiguous rows a CTA) and 32 (TAIL: a CTA's leftover rows quartered) were variants measured slower
// in session 6 (bench/NOTES.md) and deleted in session 8: their values stay unused.
constexpr int kRmsqPipeStart1 = 1, kRmsqPipeLean = 4, kRmsqPipeNoFence = 8, kRmsqPipeTrace = 16;
constexpr int kRmsqPipeTraceSlots = 32;
constexpr int kRmsqPipeTraceRows = 12;  // rows a warp whose wait / done times are kept

// At most this much dynamic shared memory lets two CTAs share an SM (228 KiB, 1 KiB reserved per CTA).
constexpr int kRmsNormBlockQuantTwoCtaSmem = 228 * 1024 / 2 - 1024;

}  // namespace kiln
