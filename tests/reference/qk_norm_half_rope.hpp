// tests/reference/qk_norm_half_rope.hpp — CPU reference (double) of qk-norm + half RoPE forward and backward.
//
// Semantics: shared/spec/linghe-kernels.md §4 with kiln's decisions (§14.8): fp32-accurate sum of squares (here:
// double), the angle of the output channel, the backward the exact adjoint of the forward (correct even when the two
// halves of a freqs row differ), positions from an offset and optional cu_seqlens (kiln/ops/qk_norm_half_rope.hpp).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace kiln::ref {

struct QkRopeProblem {
  int64_t S = 0, B = 0;
  int H = 0, h = 0, D = 0;
  bool interleaved = true;
  double eps = 1e-6;
  int64_t position_offset = 0;
  std::vector<int32_t> cu_seqlens;  // empty: no packed sequences
  int64_t freqs_rows = 0;           // rows of the [P, D/2] angle table

  int heads() const { return H + 2 * h; }
  int64_t width() const { return static_cast<int64_t>(heads()) * D; }
};

// Head slot j of a qkv row → kind (0 q, 1 k, 2 v) and head index within its kind.
void qkv_slot(const QkRopeProblem& p, int j, int& kind, int& idx);
// Rotary position of row s, or -1 when freqs has no row for it (q/k heads of that row are NaN).
int64_t rope_position(const QkRopeProblem& p, int64_t s);

struct QkRopeOutputs {
  std::vector<double> q;  // [B, S, H, D]
  std::vector<double> k;  // [B, S, h, D]
  std::vector<double> v;  // [B, S, h, D]
};

// qkv [S, B, (H+2h)·D] contiguous, wq/wk [D], freqs [freqs_rows, D/2] (angles).
QkRopeOutputs qk_norm_half_rope_fwd(const QkRopeProblem& p, std::span<const float> qkv, std::span<const float> wq,
                                    std::span<const float> wk, std::span<const float> freqs);
// The same in double inputs (for finite differences).
QkRopeOutputs qk_norm_half_rope_fwd(const QkRopeProblem& p, std::span<const double> qkv, std::span<const double> wq,
                                    std::span<const double> wk, std::span<const float> freqs);

struct QkRopeGrads {
  std::vector<double> dqkv;  // [S, B, (H+2h)·D]
  std::vector<double> dwq;   // [D]
  std::vector<double> dwk;   // [D]
};

QkRopeGrads qk_norm_half_rope_bwd(const QkRopeProblem& p, std::span<const float> gq, std::span<const float> gk,
                                  std::span<const float> gv, std::span<const float> qkv, std::span<const float> wq,
                                  std::span<const float> wk, std::span<const float> freqs);

// Megatron's half-rotary table (what linghe's tests build): freqs[p] = concat(f, f), f_j = p·θ^(−2j/(D/2)), j < D/4.
std::vector<float> half_rope_freqs(int64_t rows, int D, double theta = 10000.0);

}  // namespace kiln::ref
