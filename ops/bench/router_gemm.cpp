// Bench cases of the fp32 router GEMM (kiln bench): forward and backward (dx + dw) at the target shape
// (8192 tokens × hidden 2048 → 256 experts, Ling-mini-2.0) and at DeepSeek-V3's (hidden 7168 → 256), plus dx and dw
// alone. Bytes are the minimal traffic (every input read once, every output written once); the 2·T·K·E
// multiply-adds per product (doubled for the backward's hi/lo g) are in the case's shape string's notes below.
//   fwd 8192×2048→256:  42.9 MB → 14.2 µs at 3025 GB/s;  8.6 GFLOP
//   bwd 8192×2048→256:  77.6 MB → 25.7 µs;  2 × 8.6 GFLOP of products, run as 4 × 8.6 GFLOP of bf16 MMAs
#include <fmt/format.h>

#include "runtime/bench.hpp"

namespace kiln::detail {
BenchInstance router_gemm_instance(Runtime& rt, int64_t T, int64_t K, int64_t E, const std::string& part);

namespace {

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  for (int64_t K : {2048, 7168}) {
    const std::string shape = fmt::format("T=8192 K={} E=256", K);
    for (const char* part : {"fwd", "bwd"})
      cases.push_back({fmt::format("router_gemm_fp32_{}", part), shape,
                       [K, part](Runtime& rt) { return router_gemm_instance(rt, 8192, K, 256, part); }});
  }
  for (const char* part : {"dx", "dw"})
    cases.push_back({fmt::format("router_gemm_fp32_bwd_{}", part), "T=8192 K=2048 E=256",
                     [part](Runtime& rt) { return router_gemm_instance(rt, 8192, 2048, 256, part); }});
});

}  // namespace
}  // namespace kiln::detail
