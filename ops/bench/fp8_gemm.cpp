// Bench cases of fp8_gemm on uint8 codes (kiln bench, op "fp8_gemm"; spec triton-ops.md §5, anchors §7) and the
// tuner's instance. FLOPs 2·M·N·K (int8 tensor-core peak 1979 TOPS dense on H100 / H200 SXM); minimal bytes: the
// codes of a and b once and c once (the b prep pass, N·K bytes read and written, is part of every call and of the
// row's time). Shapes from the §7.2 table.
#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <tuple>
#include <vector>

#include "kiln/ops/fp8_gemm.hpp"
#include "runtime/bench.hpp"
#include "runtime/family.hpp"

namespace kiln::detail {
namespace {

BenchInstance gemm_instance(Runtime& rt, int64_t M, int64_t N, int64_t K, DType out) {
  auto b = std::make_shared<DeviceBuffers>();
  std::vector<uint8_t> h(static_cast<size_t>(std::max(M * K, K * N)));
  uint64_t s = bench_seed();
  for (auto& x : h) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<uint8_t>(1 + (s >> 33) % 255);
  }
  void* a = b->alloc(M * K);
  void* bw = b->alloc(K * N);
  copy_to_device(a, h.data(), M * K);
  copy_to_device(bw, h.data(), K * N);
  void* sc = b->alloc(16);
  const float ones[2] = {1.0f, 1.0f};
  copy_to_device(sc, ones, 8);
  auto scales = std::make_shared<std::pair<TensorRef, TensorRef>>(
      TensorRef::contiguous(sc, DType::f32, {1}), TensorRef::contiguous(static_cast<char*>(sc) + 4, DType::f32, {1}));
  const TensorRef ta = TensorRef::contiguous(a, DType::u8, {M, K}), tb = TensorRef::contiguous(bw, DType::u8, {K, N});
  const TensorRef c = TensorRef::contiguous(b->alloc(M * N * dtype_size(out)), out, {M, N});
  BenchInstance inst;
  inst.keepalive = std::make_shared<std::pair<std::shared_ptr<DeviceBuffers>, decltype(scales)>>(b, scales);
  inst.bytes = M * K + K * N + M * N * dtype_size(out);
  Runtime* r = &rt;
  inst.run = [=](Stream st) { fp8_gemm(*r, ta, tb, &scales->first, &scales->second, c, st); };
  inst.outputs = {c};
  inst.baseline_name = "none";
  return inst;
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  for (const auto& [M, N, K] : {std::tuple{int64_t{4096}, int64_t{4096}, int64_t{7168}},
                                std::tuple{int64_t{4096}, int64_t{7168}, int64_t{2048}},
                                std::tuple{int64_t{8192}, int64_t{8192}, int64_t{8192}},
                                std::tuple{int64_t{128}, int64_t{7168}, int64_t{16384}},
                                std::tuple{int64_t{1024}, int64_t{4096}, int64_t{7168}}})
    cases.push_back({"fp8_gemm", fmt::format("M={} N={} K={} codes bf16", M, N, K),
                     [=](Runtime& rt) { return gemm_instance(rt, M, N, K, DType::bf16); }});
});

}  // namespace

BenchInstance fp8_gemm_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  if (s.kernel != 0) return gemm_instance(rt, std::max<int64_t>(tokens, 1), 128, 128, DType::bf16);
  return gemm_instance(rt, std::max<int64_t>(tokens, 1), s.params[0], s.params[1], static_cast<DType>(s.params[2]));
}

}  // namespace kiln::detail
