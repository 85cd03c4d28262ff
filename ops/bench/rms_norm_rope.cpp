// Bench cases of fused RMSNorm + RoPE (kiln bench) at the target shape, x [2, 4096, 2048], D = 128, bf16.
// Minimal bytes: every input read once, every output written once; cos/sin count only the D/2 columns the kernel
// reads (the other half is never touched):
//   fwd: x + y (2·B·S·Hd·2) + weight (Hd·2) + cos, sin (2·S·D/2·2)        = 68,161,536 bytes at the target shape
//   bwd: dy + x + dx (3·B·S·Hd·2) + weight + cos, sin + dweight (Hd·4)    = 101,724,160 bytes
#include <fmt/format.h>

#include <memory>
#include <vector>

#include "kiln/ops/rms_norm_rope.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"

namespace kiln::detail {
void rms_norm_rope_bwd_config(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& weight,
                              const TensorRef& cos, const TensorRef& sin, const TensorRef& dx, const TensorRef& dweight,
                              float eps, int num_heads, const TensorRef& workspace, Stream stream, int rows,
                              int warps, int split);
void rms_norm_rope_fwd_config(Runtime& rt, const TensorRef& x, const TensorRef& weight, const TensorRef& cos,
                              const TensorRef& sin, const TensorRef& y, float eps, int num_heads, Stream stream,
                              int warps);
// rows ≥ 0 forces the backward's config (rows mode, warps), warps > 0 alone the forward's; see ops/rms_norm_rope.cpp.
// workspace false: the backward allocates its own (the tuner's instances: a forced config may need a larger grid than
// the default's workspace holds).
BenchInstance rms_norm_rope_instance(Runtime& rt, bool backward, int64_t B, int64_t S, int64_t Hd, int64_t D,
                                     DType dtype, int rows = -1, int warps = 0, bool workspace = true, int split = 1) {
  auto b = std::make_shared<DeviceBuffers>();
  const int64_t M = B * S;
  const size_t es = dtype_size(dtype);
  const TensorRef x = TensorRef::contiguous(b->random(dtype, M * Hd, 1.0f, bench_seed()), dtype, {B, S, Hd});
  const TensorRef w = TensorRef::contiguous(b->random(dtype, Hd, 0.5f, bench_seed()), dtype, {Hd});
  const TensorRef cos = TensorRef::contiguous(b->random(dtype, S * D, 0.7f, bench_seed()), dtype, {S, D});
  const TensorRef sin = TensorRef::contiguous(b->random(dtype, S * D, 0.7f, bench_seed()), dtype, {S, D});
  const uint64_t table_bytes = 2 * S * (D / 2) * es;
  BenchInstance inst;
  inst.keepalive = b;
  Runtime* r = &rt;
  if (!backward) {
    const TensorRef y = TensorRef::contiguous(b->alloc(M * Hd * es), dtype, {B, S, Hd});
    inst.bytes = 2 * M * Hd * es + Hd * es + table_bytes;
    inst.run = [=](Stream s) { rms_norm_rope_fwd_config(*r, x, w, cos, sin, y, 1e-6f, 0, s, warps); };
    inst.outputs = {y};
    inst.baseline_name = "device-to-device copy of x";
    inst.baseline = [=](Stream s) {
      check(driver().cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(y.data), reinterpret_cast<CUdeviceptr>(x.data),
                                       M * Hd * es, reinterpret_cast<CUstream>(s)),
            "cuMemcpyDtoDAsync");
    };
    return inst;
  }
  const TensorRef dy = TensorRef::contiguous(b->random(dtype, M * Hd, 1.0f, bench_seed()), dtype, {B, S, Hd});
  const TensorRef dx = TensorRef::contiguous(b->alloc(M * Hd * es), dtype, {B, S, Hd});
  const TensorRef dw = TensorRef::contiguous(b->alloc(Hd * 4), DType::f32, {Hd});
  const int64_t ws_elems = workspace ? rms_norm_rope_bwd_workspace_elems(rt, M, Hd, D, dtype) : 0;
  const TensorRef ws =
      workspace ? TensorRef::contiguous(b->alloc(ws_elems * 4), DType::f32, {ws_elems}) : TensorRef{};
  inst.bytes = 3 * M * Hd * es + Hd * es + table_bytes + Hd * 4;
  inst.run = [=](Stream s) {
    rms_norm_rope_bwd_config(*r, dy, x, w, cos, sin, dx, dw, 1e-6f, 0, ws, s, rows, warps, split);
  };
  inst.outputs = {dx, dw};
  return inst;
}

namespace {
const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  cases.push_back({"rms_norm_rope_fwd", "B=2 S=4096 Hd=2048 D=128 bf16",
                   [](Runtime& rt) { return rms_norm_rope_instance(rt, false, 2, 4096, 2048, 128, DType::bf16); }});
  cases.push_back({"rms_norm_rope_bwd", "B=2 S=4096 Hd=2048 D=128 bf16",
                   [](Runtime& rt) { return rms_norm_rope_instance(rt, true, 2, 4096, 2048, 128, DType::bf16); }});
  for (int warps : {4, 16}) {
    cases.push_back({"rms_norm_rope_fwd", fmt::format("B=2 S=4096 Hd=2048 D=128 bf16 warps={}", warps),
                     [warps](Runtime& rt) {
                       return rms_norm_rope_instance(rt, false, 2, 4096, 2048, 128, DType::bf16, -1, warps);
                     }});
  }
  // Backward variants (config forced) until the tuner picks per shape: rows re-read / kept / staged × warps.
  for (const auto& [rows, warps, split] : {std::tuple{1, 8, 2}, {2, 16, 2}, {2, 8, 4}, {2, 20, 4}, {2, 24, 4}}) {
    cases.push_back({"rms_norm_rope_bwd",
                     fmt::format("B=2 S=4096 Hd=2048 D=128 bf16 rows={} warps={} split={}", rows, warps, split),
                     [rows, warps, split](Runtime& rt) {
                       return rms_norm_rope_instance(rt, true, 2, 4096, 2048, 128, DType::bf16, rows, warps, true,
                                                     split);
                     }});
  }
});
}  // namespace

}  // namespace kiln::detail
