// kiln/ops/silu.hpp — SwiGLU activation fused with fp8 e4m3 1×128 block quantization: the shared/dense expert
// (silu_block_quant_*) and the batched, prob-weighted routed experts (batch_weighted_silu_block_quant_*).
//
// Semantics: ../shared/spec/linghe-kernels.md §2 (block quantization, scale layouts, per-expert segmented layout) and §7.
// x [M, 2n] bf16 holds gate = x[:, :n] and up = x[:, n:]; y = silu(gate)·up (batched: ·prob per row), all in fp32.
// kiln's sigmoid is deterministic (a fixed sequence of correctly rounded fp32 operations, ≈ 2 ulp; linghe's
// tl.sigmoid is an approximation of ≈ 1.8e-6 relative error), so a CPU reference reproduces every scale and code.
// Compile-time (specialization key): n, output_mode, round_scale. Run-time: M, E, counts, pointers, strides.
// n must be a positive multiple of 128 (≤ 32768); any M ≥ 0 (a partial last 128-token block is zero-padded for its
// transposed scales); x and g rows 16-byte aligned (row stride may exceed the width).
#pragma once
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

struct SiluBlockQuantOptions {
  bool round_scale = false;  // power-of-two scales: s = 2^ceil(log2(amax/448))
  int output_mode = 2;       // forward only: 0 row-wise, 1 transposed, 2 both
};

// Outputs the caller allocates (only those the mode produces; the others may be left empty). W = n (forward) or
// 2n (backward: dx₁ in columns [0, n), dx₂ in [n, 2n); their 128-column blocks are separate).
struct SiluBlockQuantOutputs {
  TensorRef q;         // [M, W] fp8_e4m3                 row-wise codes
  TensorRef q_scale;   // [W/128, M] fp32 (M-major)       row-wise scales
  TensorRef qT;        // [W, M] fp8_e4m3                 transposed codes (blocks of 128 tokens of a channel)
  TensorRef qT_scale;  // [ceil(M/128), W] fp32           transposed scales
};

// y = silu(x[:, :n]) · x[:, n:], quantized. x [M, 2n] bf16.
void silu_block_quant_fwd(Runtime& rt, const TensorRef& x, const SiluBlockQuantOutputs& out,
                          const SiluBlockQuantOptions& opts, Stream stream);

// dx₁ = g·up·σ·(1 + gate·(1 − σ)), dx₂ = g·silu(gate); dx = [dx₁ | dx₂] quantized in both layouts (all four outputs
// required, W = 2n). g [M, n] bf16, x [M, 2n] bf16. Any M (linghe requires M % 128 == 0).
void silu_block_quant_bwd(Runtime& rt, const TensorRef& g, const TensorRef& x, const SiluBlockQuantOutputs& dx,
                          bool round_scale, Stream stream);

// ---- batched, prob-weighted (routed experts) ---------------------------------------------------------------------
//
// x [M, 2n] holds E experts' rows back to back: expert e owns rows s_e … s_e + c_e − 1, s_e = Σ_{e'<e} c_e', with
// counts [E] int32 on the device (no host copy needed, no host synchronization, any E ≥ 1, zero counts allowed).
// prob [M] fp32 is the per-row weight. Outputs are flat buffers in the per-expert segmented layout (§2), W = n
// (forward) or 2n (backward), b_e = Σ_{e'<e} ceil(c_e'/128):
//   q         [M, W] e4m3 row-major (rows of expert e are rows s_e …)
//   q_scale   [M·W/128] fp32; expert e's segment at s_e·W/128, shaped [W/128, c_e]
//   qT        [M·W] e4m3;      expert e's segment at s_e·W, shaped [W, c_e]
//   qT_scale  [L] fp32, L a multiple of W; expert e's segment at b_e·W, shaped [ceil(c_e/128), W]. Σ ceil(c_e/128)
//             ≤ batch_weighted_silu_max_token_blocks(M, E): a buffer of that many rows always suffices; a smaller one
//             (e.g. sized from a host copy of the counts) is fine when the counts fit it.
// Counts contract: c_e ≥ 0, Σ c_e = M (with options.trailing_rows: Σ c_e ≤ M), Σ ceil(c_e/128)·W ≤ L. The op
// validates this on the device without stopping the stream: if violated, nothing is written (dprob is set to NaN)
// and `status` (if given) gets 1 (else 0). With options.check_counts the op also synchronizes the stream and throws
// InvalidArgument naming 'counts' (a debugging aid: it costs a host synchronization).
// options.trailing_rows: x may hold more rows than the experts own (e.g. a permute's num_out capacity, so the caller
// need not read Σ c_e = offsets[E] back to the host): rows Σ c_e … M−1 belong to no expert; they are not read, the
// outputs past the experts' segments are left untouched, and dprob is 0 there.
struct BatchSiluOptions {
  bool round_scale = false;
  int output_mode = 2;         // forward only
  bool check_counts = false;   // synchronize and throw on invalid counts
  bool trailing_rows = false;  // allow Σ counts < M (rows past Σ counts ignored; dprob 0 there)
};

int64_t batch_weighted_silu_max_token_blocks(int64_t M, int64_t E);

// y_r = silu(gate_r)·up_r·prob_r (in that order), quantized per expert. status: optional [1] int32 output.
void batch_weighted_silu_block_quant_fwd(Runtime& rt, const TensorRef& x, const TensorRef& prob,
                                         const TensorRef& counts, const SiluBlockQuantOutputs& out,
                                         const TensorRef& status, const BatchSiluOptions& opts, Stream stream);

// dx₁ = g·prob·up·σ·(1 + gate·(1 − σ)), dx₂ = g·prob·silu(gate) (all four dx outputs required, W = 2n), and
// dprob [M] fp32: dprob_r = Σ_k silu(gate_rk)·up_rk·g_rk, summed in fp32 in a fixed order (per 128 columns, then
// over the column blocks in order: deterministic).
void batch_weighted_silu_block_quant_bwd(Runtime& rt, const TensorRef& g, const TensorRef& x, const TensorRef& prob,
                                         const TensorRef& counts, const SiluBlockQuantOutputs& dx,
                                         const TensorRef& dprob, const TensorRef& status,
                                         const BatchSiluOptions& opts, Stream stream);

}  // namespace kiln
