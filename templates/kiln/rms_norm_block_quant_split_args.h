// kiln/rms_norm_block_quant_split_args.h — the split-role mode-2 kernel's shared-memory layout
// (templates/kiln/rms_norm_block_quant_split.cuh), shared by the device template, the host recipe and the CPU tests.
#pragma once
#include "kiln/rms_norm_block_quant_args.h"

namespace kiln {

// A ring slot holds one 128 × 128 bf16 block: row r (256 bytes = 16 chunks of 16 bytes) at r · 256, its chunk c
// (columns 8c … 8c+7) at physical chunk c ^ swizzle(r), swizzle(r) = ((r >> 4) & 7) ^ h((r >> 2) & 3) with
// h(g) = (g & 1) | ((g & 2) << 1) ∈ {0, 1, 4, 5}. Every shared access of the kernel is conflict-free with it
// (tests/rms_norm_block_quant_split_test.cpp checks every lane of every instruction):
//  * the copies and pass 1 (4 rows × 8 channels a thread, 16 lanes a row): 8 lanes of a quarter-warp read one row's
//    chunks 0 … 7 or 8 … 15: distinct for any XOR;
//  * the row role (lane 4c + g: rows 16w + 4g + i, chunks 2c, 2c + 1): a quarter-warp reads chunks {j, 2 + j} (+4, …)
//    of four rows 4 apart whose swizzles differ in bits 0 and 2 (h(g)): eight distinct bank groups;
//  * the column role (lane 8q + l: rows 16l + i, 4 channels of chunk 2w + (q >> 1)): a half-warp's 8-byte reads hit
//    one chunk of 8 rows 16 apart whose swizzles differ in bits 0 … 2 (l): eight distinct bank groups.
// Within 4 consecutive rows from a multiple of 4 the swizzle is constant, so offset(r + i, c) = offset(r, c) + 256 i.
constexpr KILN_RMSQ_HD int rmsq_split_swizzle(int row) {
  return ((row >> 4) & 7) ^ (((row >> 2) & 1) | (((row >> 3) & 1) << 2));
}
// Byte offset of (row, chunk) in a slot.
constexpr KILN_RMSQ_HD int rmsq_split_slot_offset(int row, int chunk) {
  return row * 256 + ((chunk ^ rmsq_split_swizzle(row)) << 4);
}

// 16 warps: warps 0 … 7 the row role, 8 … 15 the column role (pass 1 and the exchange: all 16).
constexpr int kRmsqSplitThreads = 512;
// `slots` block slots of 32 KiB (3·CB: three items, the refill of item it + 2 going out right after item it's
// barrier; R7: 7 at CB = 2), then r of the current item, double-buffered: [2][128] fp32.
constexpr int rms_norm_block_quant_split_smem_bytes(int slots) { return slots * 128 * 128 * 2 + 2 * 128 * 4; }

}  // namespace kiln
