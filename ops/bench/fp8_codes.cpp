// Bench cases of the uint8 "FP8 compatibility format" (kiln bench, ops "quantize_fp8" / "dequantize_fp8"; spec
// triton-ops.md §4) and the tuner's instances.
//
// Minimal bytes: quantize reads x once and writes the codes and the scale (x·sizeof + n + 4; its second pass over x
// reads L2 where x fits it, else DRAM again: at 8192 × 7168 bf16, 117 MB, it is read twice from DRAM, so the row's
// "% copy" understates the traffic by 2/3); dequantize reads the codes and writes out (n + out·sizeof).
#include <fmt/format.h>

#include <algorithm>
#include <memory>

#include "kiln/ops/fp8.hpp"
#include "runtime/bench.hpp"
#include "runtime/family.hpp"

namespace kiln::detail {
namespace {

BenchInstance quantize_instance(Runtime& rt, int64_t rows, int64_t cols, DType t) {
  auto b = std::make_shared<DeviceBuffers>();
  const int64_t n = rows * cols;
  const TensorRef x = TensorRef::contiguous(b->random(t, n, 1.0f, bench_seed()), t, {rows, cols});
  const TensorRef q = TensorRef::contiguous(b->alloc(n), DType::u8, {rows, cols});
  const TensorRef scale = TensorRef::contiguous(b->alloc(4), DType::f32, {1});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = n * dtype_size(t) + n + 4;
  Runtime* r = &rt;
  inst.run = [=](Stream s) { quantize_fp8(*r, x, q, scale, s); };
  inst.outputs = {q, scale};
  inst.baseline_name = "none";
  return inst;
}

BenchInstance dequantize_instance(Runtime& rt, int64_t rows, int64_t cols, DType t) {
  auto b = std::make_shared<DeviceBuffers>();
  const int64_t n = rows * cols;
  // Codes from a quantize of random data (so every byte is a code the op would meet).
  const TensorRef x = TensorRef::contiguous(b->random(DType::f32, n, 1.0f, bench_seed()), DType::f32, {rows, cols});
  const TensorRef q = TensorRef::contiguous(b->alloc(n), DType::u8, {rows, cols});
  const TensorRef scale = TensorRef::contiguous(b->alloc(4), DType::f32, {1});
  quantize_fp8(rt, x, q, scale, nullptr);
  device_synchronize();
  const TensorRef out = TensorRef::contiguous(b->alloc(n * dtype_size(t)), t, {rows, cols});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = n + n * dtype_size(t) + 4;
  Runtime* r = &rt;
  inst.run = [=](Stream s) { dequantize_fp8(*r, q, scale, out, s); };
  inst.outputs = {out};
  inst.baseline_name = "none";
  return inst;
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  for (const auto& [rows, cols, t] : {std::tuple{int64_t{8192}, int64_t{7168}, DType::bf16},
                                      std::tuple{int64_t{8192}, int64_t{2048}, DType::bf16},
                                      std::tuple{int64_t{4096}, int64_t{4096}, DType::f32}}) {
    const std::string shape = fmt::format("{}x{} {}", rows, cols, dtype_name(t));
    cases.push_back({"quantize_fp8", shape, [=](Runtime& rt) { return quantize_instance(rt, rows, cols, t); }});
    cases.push_back({"dequantize_fp8", shape, [=](Runtime& rt) { return dequantize_instance(rt, rows, cols, t); }});
  }
});

}  // namespace

// The tuner's instance: tokens × 7168 of the specialization's dtype.
BenchInstance fp8_codes_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  const DType t = static_cast<DType>(s.params[0]);
  const int64_t rows = std::max<int64_t>(tokens, 1);
  return s.kernel == 0 ? quantize_instance(rt, rows, 7168, t) : dequantize_instance(rt, rows, 7168, t);
}

}  // namespace kiln::detail
