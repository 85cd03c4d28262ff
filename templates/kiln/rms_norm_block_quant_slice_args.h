// kiln/rms_norm_block_quant_slice_args.h — the argument block and shared-memory layout of the slice kernel (mode 2;
// templates/kiln/rms_norm_block_quant_slice.cuh), shared by the device template and the host recipe.
#pragma once
#include "kiln/rms_norm_block_quant_args.h"
#include "kiln/tensor_map.h"

namespace kiln {

// The slice kernel's CTA: 16 warps (a thread holds 4 rows × 8 channels of a 128×128 block, as block_quant_tile.cuh's
// stages take it); one ring slot is a 128 × 128 bf16 block.
constexpr int kRmsqSliceThreads = 512;
constexpr int kRmsqSliceBlockBytes = 128 * 128 * 2;

// The kernel's arguments (rms_norm_block_quant_slice_global_kernel, config exchange 8): x as a 2-D tensor map (bf16
// [M, N] with x's row pitch; boxes of 128 columns × 128 rows, no swizzle; rows past M read as zeros), the family's
// argument block, and the row-sum workspace [tiles][N/C][128] of {fp32 bits, tag} with this launch's tag (the stream
// kernel's protocol and host code: no clusters, a persistent grid of one CTA an SM over (token tile, C-column chunk)
// items — every SM busy and the items balanced, where a cluster a tile fits only 7 clusters of 14 (N = 7168) or 15
// of 8 / 30 of 4 (N = 2048) on an H100's GPCs).
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
