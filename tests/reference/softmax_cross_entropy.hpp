// tests/reference/softmax_cross_entropy.hpp — CPU reference (double) of the softmax cross-entropy family.
//
// Semantics: shared/spec/linghe-kernels.md §8 and include/kiln/ops/softmax_cross_entropy.hpp:
//   lse = log Σ_j exp(z_j)   (max-subtracted, in double)
//   loss = lse − (1−ε)·z_y − (ε/V)·Σ_j z_j + λ·lse²;   dz_j = g·(softmax_j·(1 + 2λ·lse) − (1−ε)·[j = y] − ε/V)
// Ignored rows (label = ignore_index): loss 0, max 0, sumexp 0, zero gradient. Other labels outside [0, V): loss NaN,
// zero gradient.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace kiln::ref {

struct CeOptions {
  int64_t ignore_index = -100;
  double smoothing = 0;  // ε
  double z_loss = 0;     // λ
};

struct CeRow {
  double max = 0, sum_exp = 0, lse = 0, loss = 0;
  bool ignored = false, bad = false;
};

// One row of V logits (already in the kernel's input precision, as floats) with its label.
CeRow softmax_cross_entropy_row(std::span<const float> z, int64_t label, const CeOptions& o);

// Every row of logits [M, V] (row stride `stride` elements), in parallel.
std::vector<CeRow> softmax_cross_entropy(std::span<const float> logits, int64_t M, int64_t V, int64_t stride,
                                         std::span<const int64_t> labels, const CeOptions& o);

// The gradient of row `z` with upstream gradient g, given its statistics (from softmax_cross_entropy_row).
void softmax_cross_entropy_grad_row(std::span<const float> z, int64_t label, const CeRow& st, double g,
                                    const CeOptions& o, std::span<double> out);

}  // namespace kiln::ref
