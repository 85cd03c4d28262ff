// ops/bench/cublaslt.hpp — cuBLASLt as a same-run baseline for the router GEMM forward (bench rows and GPU A/B tests
// only). libcublasLt.so.13 is opened with dlopen the first time a baseline is prepared: kiln neither links nor
// requires it, and where it is missing (or refuses the problem) the baseline reports why instead of a time.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "kiln/runtime.hpp"

namespace kiln::detail {

// logits fp32 [T, E] = x bf16 [T, K] · w bf16 [E, K]ᵀ, all row-major and contiguous: the router GEMM forward's
// layouts. cuBLAS (column-major) sees it as D[E, T] = op(A) · B with A = w (K × E, transposed), B = x (K × T), D =
// logits (ld E): "TN" with bf16 A / B, fp32 C / D, fp32 compute and scale, alpha 1, beta 0 — what
// torch.mm(x, w.t(), out_dtype=torch.float32) asks of cuBLASLt. The algorithm is cuBLASLt's first heuristic choice
// with a 32 MiB workspace (allocated here).
class CublasLtGemm {
 public:
  CublasLtGemm(int64_t T, int64_t K, int64_t E);
  ~CublasLtGemm();
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  // False where the library is missing or any step of the plan failed; why() then says which.
  bool available() const { return why_.empty(); }
  const std::string& why() const { return why_; }
  // "cuBLASLt 130100, algo 66" (the library version and the heuristic's algorithm id), once available.
  const std::string& description() const { return desc_; }

  // Enqueues the GEMM on `stream` (throws kiln::Error if cuBLASLt returns an error; requires available()).
  void run(const void* x, const void* w, void* logits, Stream stream) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string why_, desc_;
};

// Relative L2 distance ||a − b|| / ||b|| of two fp32 device buffers of n elements (downloads both; synchronizes).
double relative_l2_device(const void* a, const void* b, int64_t n);

}  // namespace kiln::detail
