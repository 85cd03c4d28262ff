// tests/reference/gated_mlp.hpp — CPU reference of the fused gated MLP expansion (triton-ops.md §3):
//   g = x · W_gᵀ,  u = x · W_uᵀ,  out = act(g) · u,  silu(z) = z / (1 + e^−z),  gelu(z) = ½·z·(1 + erf(z/√2)).
//
// Inputs are the values the GPU sees (bf16 / fp16 / fp32 already decoded to float). Every product and sum, the
// activation and the final product are in double, so the result is exact up to double rounding for 16-bit operands
// (their products are exact in fp32 and double, as on the tensor cores). For fp32 operands the kernel runs TF32 MMAs;
// with `tf32` set the reference first reduces every operand of x, W_g and W_u to TF32 (1 sign, 8 exponent and
// 10 explicit mantissa bits: the fp32 pattern with its low 13 bits cleared, Tf32::truncate — what the tensor cores
// read from an fp32 register or shared memory) or rounds it to nearest even at bit 13 (Tf32::round, cvt.rna-like),
// then multiplies exactly. The GPU tests compare against truncation; their fp32 tolerance (relative L2 ≤ 2e-3) also
// covers a device that rounds to nearest: the CPU test GatedMlpReference.Tf32TruncationAndRoundingAgree checks that
// the two references differ by well under that bound on the GPU tests' inputs.
// Non-finite values pass through as IEEE arithmetic gives them (a NaN operand in row m makes row m NaN).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "kiln/ops/gated_mlp.hpp"

namespace kiln::ref {

enum class Tf32 { none, truncate, round };

// v reduced to TF32 (NaN and ±inf unchanged; round: ties to even, may overflow to ±inf).
float to_tf32(float v, Tf32 mode);

// act(z) in double.
double gated_activation(double z, GatedActivation act);

struct GatedMlpRef {
  std::vector<double> out;  // [M, I]: act(g) · u
  std::vector<double> g, u; // [M, I]: the two projections
};

// x [M, H], gate_weight and up_weight [I, H], all row-major and dense.
GatedMlpRef gated_mlp(std::span<const float> x, std::span<const float> gate_weight, std::span<const float> up_weight,
                      int64_t M, int64_t H, int64_t I, GatedActivation act, Tf32 tf32 = Tf32::none);

}  // namespace kiln::ref
