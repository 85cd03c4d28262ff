// kiln/ops/gated_mlp.hpp — fused gated MLP expansion (triton_ops `fused_gated_mlp`): both projections and the gate in
// one kernel, no [M, I] intermediate in memory.
//
// Semantics: ../shared/spec/triton-ops.md §3. For every row m of x [M, H] and output column i < I:
//   g = Σ_h x[m, h]·W_g[i, h],  u = Σ_h x[m, h]·W_u[i, h]     (tensor-core products, fp32 accumulation)
//   out[m, i] = round_to(x.dtype, act(g)·u)                   (act and product in fp32)
//   silu(z) = z·σ(z);  gelu(z) = 0.5·z·(1 + erf(z/√2)) (exact erf GELU)
// bf16 / fp16 operands: exact products (16-bit MMA, fp32 accumulate). fp32 operands: TF32 MMA (10 explicit mantissa
// bits, as Triton's default `tl.dot` precision that triton_ops uses). Gated expansion only: no down projection.
// Compile-time (specialization key): H, I, activation, dtype. Run-time: M (rows), pointers, the row strides.
#pragma once
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

enum class GatedActivation : int { silu = 0, gelu = 1 };

// x [M, H] (any row stride keeping rows 16-byte aligned) or contiguous [B, S, H]; bf16, fp16 or fp32.
// gate_weight, up_weight [I, H] contiguous ("nn.Linear" orientation), x's dtype; H·sizeof(dtype) a multiple of 16
// (TMA rows), 1 ≤ I, H ≤ 65536. out: x's leading dims and last dim I, x's dtype (2-D: any row stride ≥ I);
// x and out 16-byte aligned pointers; out must not overlap the inputs.
// sm_90 (Hopper) only: TMA + wgmma; elsewhere a DeviceError. M = 0 is a no-op.
void fused_gated_mlp(Runtime& rt, const TensorRef& x, const TensorRef& gate_weight, const TensorRef& up_weight,
                     const TensorRef& out, GatedActivation activation = GatedActivation::silu,
                     Stream stream = nullptr);

}  // namespace kiln
