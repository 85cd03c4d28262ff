// kiln/fp4_moe_gemm_args.h — argument blocks of templates/kiln/fp4_moe_gemm.cuh (host and device share them), and the
// packed weight layout's sizes (host recipe, CPU reference and kernel agree on them through these constants).
//
// Packed layout (fp4_moe_prepack): per expert, per block of 128 packed rows (rb), per K tile of 128 (kt), one
// contiguous chunk of kFp4MoeCodeBytes codes followed by the tile's scale bytes (nvfp4 1024, mxfp4 512); chunks in
// (expert, rb, kt) order. Packed rows: gated GEMM1 interleaves inside every 16-row slab 8 linear rows j … j+7 and the
// matching gate rows (I + j …); I is padded to a multiple of 64, non-gated rows to a multiple of 128, K to 128 (zero
// codes, scale 0 / UE8M0 127). Inside a chunk, thread t = 128·wg + 32·warp + lane of consumer warpgroup wg reads
// its codes for k16 steps 4h … 4h+3 as one 16-byte vector at 16·(256·wg + 128·h + 32·warp + lane), and its scales
// (rows 16·warp + lane/4 and +8 of the warpgroup's 64) at 8192 + 16·(32·wg + 8·warp + lane/4) (nvfp4: byte 2s + hh
// = block s of row half hh) or 8192 + 8·(…) (mxfp4: byte 2b + hh). In the 32-bit word of step s the A register j
// (0: row r, k 2c, 2c+1; 1: row r+8; 2: row r, k 2c+8, 2c+9; 3: row r+8, k 2c+8, 2c+9; c = lane % 4) takes its even
// element from nibble 3 − j and its odd element from nibble 7 − j.
#pragma once
#include "kiln/tensor_map.h"

namespace kiln {

constexpr int kFp4MoeBlockRows = 128;  // packed rows a CTA (two consumer warpgroups of 64)

// The GEMM kernel's threads for token tile N: two consumer warpgroups, then the producer — one warp for N ≤ 32, a
// warpgroup for larger N (setmaxnreg moves registers between whole warpgroups) — and its CTAs an SM (launch bounds;
// the host sizes the ring and the split-K grid by it): N = 16 three, N = 32 two, else one.
constexpr int fp4_moe_gemm_threads(int N) { return N <= 32 ? 288 : 384; }
constexpr int fp4_moe_gemm_ctas_per_sm(int N) { return N == 16 ? 3 : N == 32 ? 2 : 1; }
constexpr int kFp4MoeKTile = 128;      // K a chunk
constexpr int kFp4MoeCodeBytes = kFp4MoeBlockRows * kFp4MoeKTile / 2;

// Bytes of a chunk: codes + scales, nvfp4 (format 0) 128 rows × 8 E4M3 bytes, mxfp4 (1) 128 rows × 4 UE8M0 bytes.
template <int FORMAT>
struct Fp4MoeChunk {
  static constexpr int kScaleBytes = FORMAT == 0 ? 1024 : 512;
  static constexpr int kBytes = kFp4MoeCodeBytes + kScaleBytes;
};

struct Fp4MoeGemmArgs {
  TensorMap tma;              // act [rows_cap, K] bf16: boxes of 64 columns × N rows, 128-byte swizzle
  const unsigned char* w;     // packed weights
  long long expert_bytes;     // packed bytes an expert (row_blocks · k_tiles chunks)
  int k_tiles;                // ceil(K / 128)
  int row_blocks;             // packed rows / 128: CTA b takes row block b % row_blocks of token tile b / row_blocks
  int experts;                // E_l
  const int* offsets;         // [E_l + 1]
  const int* counts;          // [E_l]
  const float* row_scale;     // [rows_cap] or null
  const float* bias;          // [E_l, bias_ld] or null
  const float* scale_a;       // [E_l] or null
  const float* scale_b;
  const float* alpha;
  const float* beta;
  const float* limit;
  void* out;                  // bf16 [rows, out_cols], row stride out_ld elements (a multiple of 8)
  long long out_ld;
  int out_cols;               // I (gated) or rows
  int bias_ld;                // canonical rows (2I or rows)
  int half_rows;              // gated: I (the gate rows' offset in bias)
};

struct Fp4MoePrepackArgs {
  const unsigned char* codes;   // [E_l, rows, K/2]
  const unsigned char* scales;  // [E_l, rows, K/16 | K/32]
  unsigned char* packed;
  long long units;              // chunks · 576 (512 code vectors, 64 scale vectors)
  int rows;                     // canonical rows (2I gated)
  int k;
  int row_blocks;               // packed rows / 128
  int k_tiles;
};

}  // namespace kiln
