// kiln/ops/router_gemm.hpp — the MoE router GEMM with fp32 logits (linghe FusedFp32GEMM), forward and backward.
//
// Semantics: ../shared/spec/linghe-kernels.md §5. Every product is a bf16 × bf16 tensor-core MMA with fp32
// accumulation (exact products, fp32 sums); no fp32 copy of x or w is ever written. The fp32 gradient enters the
// MMAs as two bf16 terms, g = bf16(g) + bf16(g − bf16(g)) (relative residual ≤ 2⁻¹⁷), so dx and dw are as accurate as
// with an fp32 g up to fp32 accumulation (linghe rounds g to TF32, 2⁻¹¹).
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
// workspace: optional fp32 buffer of router_gemm_fp32_bwd_workspace_elems(rt, T, K, E) elements (0 when one range
// suffices); if empty and one is needed, kiln allocates it stream-ordered on `stream` and frees it after the launch.
void router_gemm_fp32_bwd(Runtime& rt, const TensorRef& g, const TensorRef& x, const TensorRef& w, const TensorRef& dx,
                          const TensorRef& dw, const TensorRef& workspace, Stream stream);
int64_t router_gemm_fp32_bwd_workspace_elems(Runtime& rt, int64_t T, int64_t K, int64_t E);

}  // namespace kiln
