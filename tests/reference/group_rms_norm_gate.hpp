// tests/reference/group_rms_norm_gate.hpp — CPU reference of group RMSNorm × sigmoid gate (forward and backward), in
// double. Semantics: shared/spec/linghe-kernels.md §11. Layout-free: every tensor is given per token, in x's token
// order (row m = b·S + s); the tests move gate/out/dy/dgate between that order and the [S, B, dim] layout.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace kiln::ref {

// x, gate [M, dim]; weight [dim] or [dim/G] (shared by every group). out[m, c] = x·r_q·w·σ(gate), r_q over group q.
std::vector<double> group_rms_norm_gate_fwd(std::span<const double> x, std::span<const double> gate,
                                            std::span<const double> w, int64_t M, int64_t dim, int64_t G,
                                            double eps);
std::vector<double> group_rms_norm_gate_fwd(std::span<const float> x, std::span<const float> gate,
                                            std::span<const float> w, int64_t M, int64_t dim, int64_t G, float eps);

struct GroupRmsNormGateGrads {
  std::vector<double> dx, dgate;  // [M, dim]
  std::vector<double> dweight;    // weight's size
};
// t = dy·w·σ; dx = r·t − (r³/d)·x·Σ_q(x·t); dgate = x·r·t·(1 − σ); dweight = Σ_tokens x·r·dy·σ (and Σ over groups
// for a shared weight).
GroupRmsNormGateGrads group_rms_norm_gate_bwd(std::span<const double> dy, std::span<const double> x,
                                              std::span<const double> gate, std::span<const double> w, int64_t M,
                                              int64_t dim, int64_t G, double eps);
GroupRmsNormGateGrads group_rms_norm_gate_bwd(std::span<const float> dy, std::span<const float> x,
                                              std::span<const float> gate, std::span<const float> w, int64_t M,
                                              int64_t dim, int64_t G, float eps);

}  // namespace kiln::ref
