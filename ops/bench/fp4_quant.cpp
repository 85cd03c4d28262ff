// Bench cases of the FP4 MoE's block-scaled quantizers (kiln bench, ops "quantize_nvfp4" / "quantize_mxfp4" /
// "quantize_mxfp8"; spec fp4-moe.md §5) and the tuner's instance. Minimal bytes: x once, the codes and the scale bytes
// once (a streaming pass: the memory-bound bar is 90 % of copy bandwidth).
#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <tuple>

#include "kiln/ops/fp4.hpp"
#include "runtime/bench.hpp"
#include "runtime/family.hpp"

namespace kiln::detail {
namespace {

BenchInstance quant_instance(Runtime& rt, int64_t format, int64_t rows, int64_t cols, DType t) {
  auto b = std::make_shared<DeviceBuffers>();
  const int64_t n = rows * cols, B = format == 0 ? 16 : 32, qcols = format == 2 ? cols : cols / 2;
  const TensorRef x = TensorRef::contiguous(b->random(t, n, 1.0f, bench_seed()), t, {rows, cols});
  const TensorRef q = TensorRef::contiguous(b->alloc(rows * qcols), format == 2 ? DType::e4m3 : DType::u8,
                                            {rows, qcols});
  const TensorRef sf = TensorRef::contiguous(b->alloc(n / B), DType::u8, {rows, cols / B});
  void* g = b->alloc(16);
  const float gv = 448.0f * 6.0f / 5.0f;  // randn: |x| ≤ ≈ 5 at these sizes
  copy_to_device(g, &gv, 4);
  const TensorRef gs = TensorRef::contiguous(g, DType::f32, {1});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = n * dtype_size(t) + rows * qcols + n / B;
  Runtime* r = &rt;
  if (format == 0)
    inst.run = [=](Stream s) { quantize_nvfp4(*r, x, gs, q, sf, s); };
  else if (format == 1)
    inst.run = [=](Stream s) { quantize_mxfp4(*r, x, q, sf, s); };
  else
    inst.run = [=](Stream s) { quantize_mxfp8(*r, x, q, sf, s); };
  inst.outputs = {q, sf};
  inst.baseline_name = "none";
  return inst;
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  const char* names[] = {"quantize_nvfp4", "quantize_mxfp4", "quantize_mxfp8"};
  for (int64_t f : {0, 1, 2})
    for (const auto& [rows, cols] : {std::pair{int64_t{8192}, int64_t{7168}}, std::pair{int64_t{8192}, int64_t{2048}}})
      cases.push_back({names[f], fmt::format("{}x{} bf16", rows, cols),
                       [=](Runtime& rt) { return quant_instance(rt, f, rows, cols, DType::bf16); }});
});

}  // namespace

BenchInstance fp4_quant_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  return quant_instance(rt, s.params[1], std::max<int64_t>(tokens, 1), 7168, static_cast<DType>(s.params[0]));
}

}  // namespace kiln::detail
