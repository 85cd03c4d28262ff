// ops/bench/cublaslt.hpp — cuBLASLt as a same-run baseline for the router GEMM forward and the gated MLP's two
// projections (bench rows and GPU A/B tests only). libcublasLt.so.13 is opened with dlopen the first time a baseline is prepared: kiln neither links nor
// requires it, and where it is missing (or refuses the problem) the baseline reports why instead of a time.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "kiln/dtype.hpp"
#include "kiln/runtime.hpp"

namespace kiln::detail {

// The element types of a CublasLtGemm (the layouts are fixed: see below). The default is the router's problem.
struct CublasLtGemmOptions {
  DType ab = DType::bf16;  // x and w (A and B): bf16, f16, f32 or e4m3 (fp8 needs this "TN" layout: both K-major)
  DType d = DType::f32;    // the output (C and D): bf16, f16 or f32
  // Compute is fp32 accumulation with fp32 alpha / beta, always; with f32 A / B, tf32 picks
  // CUBLAS_COMPUTE_32F_FAST_TF32 (tensor cores on TF32-rounded inputs, what torch does with allow_tf32) instead of
  // CUBLAS_COMPUTE_32F (full fp32 math). Ignored for 16-bit inputs (their products are exact either way).
  bool tf32 = true;
};

// logits fp32 [T, E] = x bf16 [T, K] · w bf16 [E, K]ᵀ, all row-major and contiguous: the router GEMM forward's
// layouts. cuBLAS (column-major) sees it as D[E, T] = op(A) · B with A = w (K × E, transposed), B = x (K × T), D =
// logits (ld E): "TN" with bf16 A / B, fp32 C / D, fp32 compute and scale, alpha 1, beta 0 — what
// torch.mm(x, w.t(), out_dtype=torch.float32) asks of cuBLASLt. The algorithm is cuBLASLt's first heuristic choice
// with a 32 MiB workspace (allocated here).
// The second constructor keeps those layouts (y [T, E] = x [T, K] · w [E, K]ᵀ, row-major, contiguous) with other
// element types (CublasLtGemmOptions), e.g. the gated MLP's two projections as one GEMM: w = [W_g; W_u] [2I, H],
// y [M, 2I] in x's dtype. CublasLtGemm(T, K, E) is CublasLtGemm(T, K, E, {}) (bf16 × bf16ᵀ → fp32, CUBLAS_COMPUTE_32F).
class CublasLtGemm {
 public:
  CublasLtGemm(int64_t T, int64_t K, int64_t E);
  CublasLtGemm(int64_t T, int64_t K, int64_t E, const CublasLtGemmOptions& opts);
  ~CublasLtGemm();
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  // False where the library is missing or any step of the plan failed; why() then says which.
  bool available() const { return why_.empty(); }
  const std::string& why() const { return why_; }
  // "cuBLASLt 130100, algo 66" (the library version and the heuristic's algorithm id), once available.
  const std::string& description() const { return desc_; }

  // Enqueues the GEMM on `stream` (throws kiln::Error if cuBLASLt returns an error; requires available()). `logits`:
  // the output y [T, E] in the options' output type (fp32 for the router's constructor).
  void run(const void* x, const void* w, void* logits, Stream stream) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string why_, desc_;
};

// Relative L2 distance ||a − b|| / ||b|| of two fp32 device buffers of n elements (downloads both; synchronizes).
double relative_l2_device(const void* a, const void* b, int64_t n);

}  // namespace kiln::detail
