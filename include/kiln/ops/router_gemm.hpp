// kiln/ops/router_gemm.hpp — the MoE router GEMM with fp32 logits (linghe FusedFp32GEMM), forward and backward.
//
// Semantics: ../shared/spec/linghe-kernels.md §5. The forward is a bf16 × bf16 tensor-core MMA with fp32
// accumulation (exact products, fp32 sums); no fp32 copy of x or w is ever written. The backward's fp32 gradient g
// enters the MMAs at the precision RouterGemmBwdOptions::precision asks for (below).
// Compile-time (specialization key): K (hidden size) and E (experts). Run-time: T (tokens, any value ≥ 0),
// pointers, row strides.
//
// Shapes: x is [T, K] (row stride may exceed K; rows 16-byte aligned) or [B, S, K] contiguous (T = B·S); g, logits
// and dx have x's leading dims. K and E are multiples of 8, 16 ≤ K ≤ 16384, 8 ≤ E ≤ 1024. Pointers 16-byte aligned.
#pragma once
#include <cstdint>

#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

// logits[t, e] = Σ_k x[t, k] · w[e, k].  x bf16, w [E, K] bf16 contiguous, logits fp32 (row stride a multiple of 4).
void router_gemm_fp32_fwd(Runtime& rt, const TensorRef& x, const TensorRef& w, const TensorRef& logits,
                          Stream stream);

// dx[t, k] = Σ_e g[t, e] · w[e, k]   (bf16, rounded once from fp32)
// dw[e, k] = Σ_t g[t, e] · x[t, k]   (fp32; T = 0 gives zeros)
// g fp32 [T, E] (row stride a multiple of 4), x as in the forward, w [E, K] bf16, dx bf16 like x (row stride a
// multiple of 8), dw [E, K] fp32 contiguous. dx or dw may be left empty (that product is skipped), not both.
// dw is deterministic: T is cut into a fixed number of ranges whose fp32 partials are added in range order.
// workspace: optional fp32 buffer of router_gemm_fp32_bwd_workspace_elems(rt, T, K, E[, options]) elements (0 when
// none is needed); if empty and one is needed, kiln uses the Runtime's scratch for `stream` (README: scratch memory).
//
// Precision of g in the backward (where kiln differs from linghe, which rounds g to TF32, 11 significant bits):
//  * standard (default, the fastest measured): dx from bf16(g) — 8 significant bits of g, the precision dx is stored
//    in — and dw from g = bf16(g) + bf16(g − bf16(g)), both multiplied (relative residual ≤ 2⁻¹⁷): fp32-grade dw.
//  * tf32 (linghe's class, for both): one fp16 tensor-core pass with power-of-two scales. dx: each g row scaled by
//    2^−s_t (its amax → [2¹⁴, 2¹⁵)), each w column by 2^−c_k (a small prep kernel writes w16 and 2^c_k into the
//    workspace); dw: running per-expert scales of g and a per-chunk scale of x (x converted to fp16 in shared memory),
//    the accumulator rescaled by exact powers of two when a running maximum grows. g keeps 11 significant bits
//    (relative error ≤ 2⁻¹¹, TF32's) for every value ≥ 2⁻²⁸ of its row's (dw: its expert's running) max; x and w are
//    exact above the same threshold (bf16 fits fp16's 11 bits). Products exact, fp32 accumulation. Slower than
//    standard today (H100, 8192 × 2048 → 256: 80.7 µs against ≈ 60; bench/NOTES.md).
//  * high: hi + lo for both products (fp32-grade dx and dw; 71.1 µs).
// The sm_80 (mma.sync) and older sm_90a kernels always use hi + lo.
enum class RouterGemmPrecision : int { tf32 = 0, high = 1, standard = 4 };
struct RouterGemmBwdOptions {
  RouterGemmPrecision precision = RouterGemmPrecision::standard;
};
void router_gemm_fp32_bwd(Runtime& rt, const TensorRef& g, const TensorRef& x, const TensorRef& w, const TensorRef& dx,
                          const TensorRef& dw, const TensorRef& workspace, const RouterGemmBwdOptions& options,
                          Stream stream);
void router_gemm_fp32_bwd(Runtime& rt, const TensorRef& g, const TensorRef& x, const TensorRef& w, const TensorRef& dx,
                          const TensorRef& dw, const TensorRef& workspace, Stream stream);
// Elements of the optional workspace for these options (dw's T-range partials and, for tf32 with dx, w16 + 2^c_k).
int64_t router_gemm_fp32_bwd_workspace_elems(Runtime& rt, int64_t T, int64_t K, int64_t E,
                                             const RouterGemmBwdOptions& options);
int64_t router_gemm_fp32_bwd_workspace_elems(Runtime& rt, int64_t T, int64_t K, int64_t E);

}  // namespace kiln
