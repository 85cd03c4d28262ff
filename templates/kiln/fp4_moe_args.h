// kiln/fp4_moe_args.h — argument blocks of templates/kiln/fp4_moe.cuh (the FP4 MoE layer's permutation metadata,
// activation gather and finalize; host and device share them).
#pragma once

namespace kiln {

// Permutation metadata (kernels meta_small, meta_hist, meta_scan, meta_scatter). Tokens are dealt out in chunks of
// kFp4MoeChunk (= the CTA's threads: a thread a token).
struct Fp4MoeMetaArgs {
  const int* topk_ids;        // [T, K] global expert ids
  short* replay;              // [≥ T, K] int16 global ids, or null
  int* counts;                // [E_l] rows of each local expert
  int* offsets;               // [E_l + 1] padded segment starts; [E_l] = total padded rows
  int* expanded;              // [T·K] permuted row of slot (t, k); −1 for a non-local expert
  int* perm_token;            // [rows_cap] token of a permuted row; −1 for padding rows
  int* perm_k;                // [rows_cap] slot k of a permuted row; −1 for padding rows
  int* chunk_counts;          // [chunks, E_l] (three-kernel path): counts, then exclusive prefixes over chunks
  long long T;
  int expert_offset;          // local expert e = global id − expert_offset
  int tile;                   // token tile: every segment starts at a multiple of it
};

// Gather + dequantize of the hidden states into the permuted bf16 buffer (kernel gather).
struct Fp4MoeGatherArgs {
  const void* hidden;         // bf16 [T, H] | nvfp4 u8 [T, H/2] | mxfp8 / e4m3 [T, H]
  const unsigned char* scale; // nvfp4 [T, H/16] E4M3 | mxfp8 [T, H/32] UE8M0 | null
  const float* per_token_scale;  // [T] or null
  const int* perm_token;      // [rows_cap]
  const int* offsets;         // [E_l + 1]: rows ≥ offsets[E_l] are not touched
  void* act;                  // bf16 [rows_cap, H], row stride H
  float* row_scale;           // [rows_cap] or null (with per_token_scale)
  long long rows_cap;
  int H;
  int experts;                // E_l
};

// Finalize (kernel finalize): out[t, :H_out] = bf16(Σ_k w[t,k]·y[expanded[t·K+k]]), fixed k order, fp32.
struct Fp4MoeFinalizeArgs {
  const void* y;              // bf16 [rows, y_ld]
  const int* expanded;        // [T·K]
  const unsigned short* weights;  // bf16 [T, K]
  void* out;                  // bf16 [T, out_ld]
  long long T;
  long long y_ld, out_ld;
  int H_out;
};

}  // namespace kiln
