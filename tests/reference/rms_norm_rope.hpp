// tests/reference/rms_norm_rope.hpp — CPU reference of fused RMSNorm + rotate-half RoPE (forward and backward), in
// double. Semantics: shared/spec/triton-ops.md §2 (the backward is §2.4). The GPU keeps the normalized value n in
// fp32 without rounding it before the rotation; the reference keeps it in double.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace kiln::ref {

// x [B·S, Hd] rows in (b, s) order (row b·S + s), weight [Hd], cos/sin [S, D] (only columns < D/2 are read).
// y[row, h·D + i] = n_i·cos[s,i] − n_{i+D/2}·sin[s,i],  y[row, h·D + i + D/2] = n_i·sin[s,i] + n_{i+D/2}·cos[s,i],
// n = x·r·w, r = 1/sqrt(Σx²/Hd + eps).
std::vector<double> rms_norm_rope_fwd(std::span<const double> x, std::span<const double> w,
                                      std::span<const double> cos, std::span<const double> sin, int64_t B, int64_t S,
                                      int64_t Hd, int64_t D, double eps);
std::vector<double> rms_norm_rope_fwd(std::span<const float> x, std::span<const float> w, std::span<const float> cos,
                                      std::span<const float> sin, int64_t B, int64_t S, int64_t Hd, int64_t D,
                                      float eps);

struct RmsNormRopeGrads {
  std::vector<double> dx;       // [B·S, Hd]
  std::vector<double> dweight;  // [Hd]
};
// gn = the rotation's adjoint applied to dy; dx = r·w·gn − (r³/Hd)·x·Σ(x·w·gn); dweight = Σ_rows x·r·gn.
RmsNormRopeGrads rms_norm_rope_bwd(std::span<const double> dy, std::span<const double> x, std::span<const double> w,
                                   std::span<const double> cos, std::span<const double> sin, int64_t B, int64_t S,
                                   int64_t Hd, int64_t D, double eps);
RmsNormRopeGrads rms_norm_rope_bwd(std::span<const float> dy, std::span<const float> x, std::span<const float> w,
                                   std::span<const float> cos, std::span<const float> sin, int64_t B, int64_t S,
                                   int64_t Hd, int64_t D, float eps);

}  // namespace kiln::ref
