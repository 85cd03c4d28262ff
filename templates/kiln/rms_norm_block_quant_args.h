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
// Mode-0 ring kernel: STAGES row slots per warp, then one mbarrier per slot.
constexpr int rms_norm_block_quant_row_ring_smem_bytes(int N, int warps, int stages) {
  return warps * stages * (N * 2 + 8);
}
// At most this much dynamic shared memory lets two CTAs share an SM (228 KiB, 1 KiB reserved per CTA).
constexpr int kRmsNormBlockQuantTwoCtaSmem = 228 * 1024 / 2 - 1024;

}  // namespace kiln
