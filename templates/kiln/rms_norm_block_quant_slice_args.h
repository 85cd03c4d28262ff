// kiln/rms_norm_block_quant_slice_args.h — the argument block and shared-memory layout of the resident-slice kernel
// (mode 2; templates/kiln/rms_norm_block_quant_slice.cuh), shared by the device template and the host recipe.
#pragma once
#include "kiln/rms_norm_block_quant_args.h"
#include "kiln/tensor_map.h"

namespace kiln {

// The slice kernel's arguments: x as a 2-D tensor map (bf16 [M, N] with x's row pitch; boxes of 128 columns × 128
// rows, no swizzle; rows past M read as zeros) and the family's argument block.
struct RmsqSliceArgs {
  TensorMap tmx;
  RmsNormBlockQuantArgs a;
};

// One CTA: 16 warps (a thread holds 4 rows × 8 channels of a 128×128 block, as block_quant_tile.cuh's stages take it).
constexpr int kRmsqSliceThreads = 512;
constexpr int kRmsqSliceBlockBytes = 128 * 128 * 2;

// Dynamic shared memory of a slice CTA (S CTAs a row, SB blocks a CTA, R ≥ SB + 1 ring slots), in this order: the R
// block slots (32 KiB each, at the 1024-aligned base: TMA destinations), two buffers of staged transposed codes
// (128 channels × 128 tokens), three rotating column-max buffers (132 slots), the received partial row sums
// [2][S][128] fp32, the slice's weights [SB·128] fp32, then R slot barriers and 2 exchange barriers.
constexpr int rms_norm_block_quant_slice_smem_bytes(int S, int SB, int R) {
  return R * kRmsqSliceBlockBytes + 2 * 128 * 128 + 3 * 132 * 4 + 2 * S * 128 * 4 + SB * 128 * 4 + (R + 2) * 8;
}
// CTAs an SM the kernel asks registers for (__launch_bounds__): two where shared memory lets two share an SM.
constexpr int rms_norm_block_quant_slice_min_blocks(int S, int SB, int R) {
  return rms_norm_block_quant_slice_smem_bytes(S, SB, R) <= kRmsNormBlockQuantTwoCtaSmem ? 2 : 1;
}

// The GLOBAL walk of the same per-block code (rms_norm_block_quant_slice_global_kernel, config exchange 8): no
// clusters, a persistent grid of one CTA an SM over (token tile, C-column chunk) items, the row sums through a tagged
// global workspace [tiles][N/C][128] of {fp32 bits, tag} (the stream kernel's protocol: RmsqStreamArgs, the same
// host code) — every SM busy and the items balanced, where a cluster a tile fits only 7 clusters of 14 (N = 7168)
// or 15 of 8 / 30 of 4 (N = 2048) on an H100's GPCs.
struct RmsqSliceGlobalArgs {
  TensorMap tmx;
  RmsNormBlockQuantArgs a;
  unsigned long long* ws;
  unsigned tag;
};
// Dynamic shared memory: R block slots, two code buffers, three column-max buffers, the weights [N] fp32 (`wsm`: one
// CTA an SM), R slot barriers.
constexpr int rms_norm_block_quant_slice_global_smem_bytes(int N, int R, bool wsm = true) {
  return R * kRmsqSliceBlockBytes + 2 * 128 * 128 + 3 * 132 * 4 + (wsm ? N * 4 : 0) + R * 8;
}

}  // namespace kiln
