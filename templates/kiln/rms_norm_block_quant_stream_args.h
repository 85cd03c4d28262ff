// kiln/rms_norm_block_quant_stream_args.h — the argument block and shared-memory size of the stream kernel (mode 2;
// templates/kiln/rms_norm_block_quant_stream.cuh) and its GLOBAL walk's workspace protocol, shared by the device
// template and the host recipe.
#pragma once
#include "kiln/rms_norm_block_quant_args.h"

namespace kiln {

// The stream kernel's arguments: the family's, plus (GLOBAL exchange) the partial-sum workspace
// [tiles][N/C][128] of {fp32 bits, tag} and this launch's tag (unique per launch: stale pairs never match).
struct RmsqStreamArgs {
  RmsNormBlockQuantArgs a;
  unsigned long long* ws;
  unsigned tag;
  unsigned long long* trace;  // TRACE variant only (measurement): kRmsqStreamTraceSlots a CTA
};
// The stream kernel's TRACE variant (config overlap bit 64, measurement only, not a search-space point): thread 0 of
// each CTA writes slot 0 = its start (globaltimer ns), slot 1 = its SM id, then one record a phase end,
// (kind << 48) | (item << 40) | (ns since the start): kind 1 = item's first block landed (pass 1's first wait), 2 =
// pass 1 done (partial sums stored), 3 = r ready (the exchange), 4 = pass 2 done, 5 = the CTA's end, 6 = every partial
// sum of the item current (inside the exchange, S > 1).
constexpr int kRmsqStreamTrace = 64;
constexpr int kRmsqStreamTraceSlots = 96;
// Polls of a warp's partial sums before it sums the missing chunks itself (≈ 64 ns apart: ≈ 0.3 ms). Reached only
// when a CTA owning a chunk is not resident (another stream's kernels hold SMs): progress without co-residency.
constexpr int kRmsqStreamSpinLimit = 4096;

// The tile kernel's GX variants (mode 2, rms_norm_block_quant_tile_gx_kernel / _tile512_kernel): the S CTAs of a row
// form clusters of the largest divisor K ≤ max_k of S (1: none; the host offers them only for K ≥ 2), and the S / K
// clusters' row sums meet in a workspace [tiles][S / K][128] of tagged pairs (none when K = S).
constexpr int rms_norm_block_quant_gx_cluster(int S, int max_k = 8) {
  for (int k = max_k; k > 1; --k)
    if (S % k == 0) return k;
  return 1;
}

// The stream kernel's CTA: 16 warps (512 threads), one CTA an SM.
constexpr int kRmsqStreamThreads = 512;
// At most this many ring slots (128×128 bf16 blocks of 32 KiB).
constexpr int kRmsqStreamMaxRing = 5;

// Dynamic shared memory: R block slots, two buffers of transposed codes (128 channels × 128 tokens), three rotating
// column-maxima buffers (132 padded slots); TIGHT: the N weights as fp32 and (SPLIT) an mbarrier.
constexpr int rms_norm_block_quant_stream_smem_bytes(int R, bool tight = false, int N = 0) {
  return R * 128 * 128 * 2 + 2 * 128 * 128 + 3 * 132 * 4 + (tight ? N * 4 + 16 : 0);
}

}  // namespace kiln
