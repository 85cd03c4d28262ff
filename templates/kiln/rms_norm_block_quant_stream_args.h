// kiln/rms_norm_block_quant_stream_args.h — shared-memory sizes of the stream kernel (modes 1, 2;
// templates/kiln/rms_norm_block_quant_stream.cuh), shared by the device template and the host recipe.
#pragma once
#include "kiln/rms_norm_block_quant_args.h"

namespace kiln {

// The stream kernel's arguments: the family's, plus (GLOBAL exchange) the partial-sum workspace
// [tiles][N/C][128] of {fp32 bits, tag} and this launch's tag (unique per launch: stale pairs never match).
struct RmsqStreamArgs {
  RmsNormBlockQuantArgs a;
  unsigned long long* ws;
  unsigned tag;
};
// Polls of a warp's partial sums before it sums the missing chunks itself (≈ 64 ns apart: ≈ 0.3 ms). Reached only
// when a CTA owning a chunk is not resident (another stream's kernels hold SMs): progress without co-residency.
constexpr int kRmsqStreamSpinLimit = 4096;

// The stream kernel's CTA: 16 warps (512 threads), one CTA an SM.
constexpr int kRmsqStreamThreads = 512;
// At most this many ring slots (128×128 bf16 blocks of 32 KiB).
constexpr int kRmsqStreamMaxRing = 5;

// Dynamic shared memory: R block slots, two buffers of transposed codes (128 channels × 128 tokens), three rotating
// column-maxima buffers (132 padded slots), then with a cluster of S > 1 CTAs the received partial sums
// [2 tile parities][16 warps][S][8 rows] and their [2][16] mbarriers.
constexpr int rms_norm_block_quant_stream_smem_bytes(int R, int S) {
  return R * 128 * 128 * 2 + 2 * 128 * 128 + 3 * 132 * 4 + (S > 1 ? 2 * 16 * S * 8 * 4 : 0) + 2 * 16 * 8;
}

}  // namespace kiln
