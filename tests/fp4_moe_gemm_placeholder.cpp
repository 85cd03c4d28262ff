// TEMPORARY — branch fp4-layer only; DELETE WHEN MERGING fp4-gemm (and the lines naming this file in
// tests/CMakeLists.txt). Stand-ins for the grouped GEMM and prepack (ops/fp4_moe_gemm.cpp, written on branch fp4-gemm)
// so that the test executables link before that branch is merged. Linked into the test executables only, never into
// the library. Every entry point but the token tile throws.
#include "kiln/errors.hpp"
#include "kiln/ops/fp4_moe.hpp"
#include "ops/fp4_moe_internal.hpp"

namespace kiln {

int64_t fp4_moe_packed_bytes(int64_t, int64_t, int64_t, Fp4WeightFormat) { throw Error("placeholder"); }

Fp4MoeWeights fp4_moe_prepack(Runtime&, const TensorRef&, const TensorRef&, Fp4WeightFormat, bool, const TensorRef&,
                              Stream) {
  throw Error("placeholder");
}

namespace detail {

int fp4_moe_gemm_token_tile(Runtime&, int64_t, int64_t) { return 64; }

void fp4_moe_gemm(Runtime&, const Fp4MoeGemmCall&, Stream) { throw Error("placeholder"); }

}  // namespace detail
}  // namespace kiln
