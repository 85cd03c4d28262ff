// kiln/moe_permute_args.h — kernel argument blocks of the MoE permute family, shared by device and host.
#pragma once

namespace kiln {

struct MoePermuteArgs {
  const void* inp;         // [T, ROW_BYTES] rows (bf16 or fp8 bytes, copied verbatim)
  const float* scale;      // [T, NS] token-major or [NS, T] M-major, or null
  const float* probs;      // [T, E] or null
  const int* row_id_map;   // [T, E]
  const int* offsets;      // [E + 1] padded expert offsets, or null (no padding rows to fill)
  const int* counts;       // [E] real tokens per expert (with offsets)
  void* out;               // [num_out, ROW_BYTES]
  float* scale_out;        // [NS, num_out]
  float* probs_out;        // [num_out]
  const int* row_id_indices;  // [num_out] or null: with scales, the scale CTAs gather scale_out row by row
  int T;
  int num_out;
  float pad_scale;         // scale of padding rows: 1e-30, or 2^-99 under power-of-two scales
  int token_ctas;          // ceil(T / TPC)
  int pad_ctas;            // E (offsets given) or 0
  int tail_ctas;           // kMoePermuteTailCtas (fill_tail) or 0
};

struct MoeUnpermuteArgs {
  const void* x;           // [num_out, H]
  const float* weights;    // [num_out] or null
  const int* row_id_map;   // [T, E]
  void* out;               // [T, H]
  float* restore;          // [T, E] or null
  int T;
  int num_out;
};

struct MoePermuteBlockQuantArgs {
  const void* x;              // [T, HD] bf16
  const float* probs;         // [T, E] or null
  const int* row_id_indices;  // [num_out]: token of each row, −1 on padding rows
  const int* offsets;         // [E + 1] padded expert offsets
  unsigned char* q;           // [num_out, HD] e4m3
  float* q_scale;             // segmented: expert e at offsets[e]·HD/128, [HD/128, pc_e]
  unsigned char* qT;          // segmented: expert e at offsets[e]·HD, [HD, pc_e]
  float* qT_scale;            // segmented: expert e at b_e·HD, [ceil(pc_e/128), HD]
  float* probs_out;           // [num_out] or null
  int T;
  int num_out;
  int max_blocks;             // grid.x: an upper bound of Σ_e ceil(pc_e/128)
  int cpb;                    // 128-channel blocks a CTA (grid.y = HD / 128 / cpb)
};

// Dynamic shared memory of the block-quantized permute (E experts): the bf16 tile (32 KiB; each row's row-wise codes
// are later written over its first 128 bytes), the transposed code tile (128 rows of kMoeBlockQuantCodePitch bytes),
// the column partial maxima, the block's source tokens and the experts' block offsets: 54.8 KB at E = 256, 4 CTAs
// an SM.
constexpr int kMoeBlockQuantCodePitch = 144;  // bytes a row of the transposed code tile (128 codes, 16-byte rows)
constexpr int moe_block_quant_smem_bytes(int E) {
  return 128 * 128 * 2 + 128 * kMoeBlockQuantCodePitch + 4 * 128 * 4 + 128 * 4 + (E + 1 + 8) * 4;
}

// CTAs that fill the rows past offsets[E] (when num_out exceeds what the map used).
constexpr int kMoePermuteTailCtas = 32;

}  // namespace kiln
