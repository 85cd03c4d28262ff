// kiln/qk_norm_half_rope_args.h — kernel argument blocks of qk-norm + half RoPE (forward, backward, dweight reduce),
// shared by the template and the host recipe. Strides and offsets are in elements.
#pragma once

namespace kiln {

// Where row s of qkv sits in the rotary table: pos = pos_offset + s, or with cu_seqlens (packed sequences)
// pos = pos_offset + s − cu_seqlens[i] for the last i ≤ num_seqs with cu_seqlens[i] ≤ s. A position outside
// [0, freqs_rows) makes the q and k heads of that row NaN (never an out-of-bounds read).
struct QkRopePositions {
  const float* freqs;     // [freqs_rows, D/2] fp32 angles, row-major
  long long freqs_rows;
  const int* cu_seqlens;  // [num_seqs + 1] or null
  int num_seqs;
  long long pos_offset;
};

struct QkNormRopeFwdArgs {
  const void* qkv; long long qkv_s_stride, qkv_b_stride;  // [S, B, (H+2h)·D], last dim contiguous
  const void* wq; const void* wk;                         // [D]
  QkRopePositions pos;
  void* q; void* k; void* v;                              // [B, S, H, D], [B, S, h, D] ×2, contiguous
  int S, B;
  float eps;
};

struct QkNormRopeBwdArgs {
  const void* gq; const void* gk; const void* gv;         // [B, S, H, D], [B, S, h, D] ×2, contiguous
  const void* qkv; long long qkv_s_stride, qkv_b_stride;
  const void* wq; const void* wk;
  QkRopePositions pos;
  void* dqkv; long long dqkv_s_stride, dqkv_b_stride;     // qkv's head layout, its own strides
  float* partial;  // [gridDim.x, 2, D] fp32: per-CTA dq_w, dk_w partials; null: no weight gradients
  int S, B;
  float eps;
};

// Dynamic shared memory of the backward kernel (bytes): the norm weights [2][D], a 2 KiB rotary table per warp (the
// warp's partial weight gradients reuse it at the end), and with acc_smem the weight-gradient accumulators
// (2 kinds × 16 floats per lane: 4 KiB per warp) instead of registers.
constexpr int qk_norm_half_rope_bwd_smem_bytes(int warps, int d, int w_bytes, bool acc_smem) {
  return (2 * d * w_bytes + 15) / 16 * 16 + warps * 2048 + (acc_smem ? warps * 4096 : 0);
}

}  // namespace kiln
