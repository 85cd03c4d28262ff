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

// Staged 128×128 bf16 blocks of the tile kernel: CB = 1 keeps its one block, CB = 2 keeps both (resident: x read
// once), wider slices double-buffer.
constexpr int rms_norm_block_quant_tile_buffers(int CB) { return CB == 1 ? 1 : 2; }

// Dynamic shared memory of the tile kernel: the staged blocks and their weights, per-row partial sums and 1/rms,
// per-warp column maxima, column scales, and the row-block scales.
constexpr int rms_norm_block_quant_tile_smem_bytes(int CB) {
  return rms_norm_block_quant_tile_buffers(CB) * (128 * 128 * 2 + 128 * 4) + (128 + 128 + 8 * 128 + 128 + CB * 128) * 4;
}

}  // namespace kiln
