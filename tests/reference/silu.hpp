// tests/reference/silu.hpp — CPU references for the SiLU + block-quant families (shared expert and batched
// prob-weighted experts), forward and backward.
//
// Semantics: shared/spec/linghe-kernels.md §2 (block quantization, per-expert segmented layout) and §7. The values
// (y, dx) are computed with exactly the fp32 operations the kernels perform, in the same order (kiln's deterministic
// sigmoid included), so the kernels' scales and codes must match the quantization of these values bit for bit.
// dprob, whose GPU summation order is the kernel's own, is accumulated in double and compared with a tolerance.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "reference/rms_norm.hpp"  // e4m3_from_float, block_scale, block_quant_rowwise / _transposed

namespace kiln::ref {

// exp(−|a|) and σ(a) exactly as templates/kiln/silu_block_quant.cuh computes them (fp32 fma/mul/add/rcp).
float silu_exp_neg_abs(float a);
float silu_sigmoid(float a);

// y [M, n]: y = (a·σ(a))·b, a = x[m, k], b = x[m, n + k]; with prob (size M): y = ((a·σ)·b)·prob[m].
// x is [M, 2n] dense.
std::vector<float> silu_fwd_values(std::span<const float> x, int64_t M, int64_t n, std::span<const float> prob = {});

struct SiluGrads {
  std::vector<float> dx;       // [M, 2n]: dx₁ (columns < n), dx₂
  std::vector<double> dprob;   // [M] (batched only): Σ_k ((a·σ)·b)·g in double over the fp32 products
};
// gw = g (batched: g·prob[m]); dx₂ = gw·(a·σ); dx₁ = ((gw·b)·σ)·(1 + a·(1 − σ)).
SiluGrads silu_bwd_values(std::span<const float> g, std::span<const float> x, int64_t M, int64_t n,
                          std::span<const float> prob = {});

// Quantized outputs. Plain layouts (§2): q [M, W], q_scale [W/128, M], qT [W, M], qT_scale [ceil(M/128), W].
// Segmented layouts (per expert e with c_e rows): q [M, W]; q_scale flat, segment at s_e·W/128 shaped [W/128, c_e];
// qT flat, segment at s_e·W shaped [W, c_e]; qT_scale flat, segment at b_e·W shaped [ceil(c_e/128), W].
struct QuantOutputs {
  std::vector<uint8_t> q, qT;
  std::vector<float> q_scale, qT_scale;
};
QuantOutputs quantize_plain(std::span<const float> y, int64_t M, int64_t W, bool round_scale, bool rowwise,
                            bool transposed);
QuantOutputs quantize_segmented(std::span<const float> y, std::span<const int> counts, int64_t W, bool round_scale,
                                bool rowwise, bool transposed);
// Σ_e ceil(c_e/128).
int64_t token_blocks(std::span<const int> counts);

}  // namespace kiln::ref
