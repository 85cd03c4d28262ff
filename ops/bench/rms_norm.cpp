// Bench cases of the RMSNorm families (kiln bench). Bytes are the minimal traffic: every input read once, every
// output written once. Shapes are the targets (M = 8192 tokens; Ling-mini-2.0 and DeepSeek-V3 hidden sizes).
#include <fmt/format.h>

#include <memory>
#include <vector>

#include "ops/bench/rms_norm.hpp"

#include "kiln/ops/rms_norm.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"

namespace kiln::detail {
BenchInstance rms_norm_block_quant_instance(Runtime& rt, int64_t M, int64_t N, int mode, bool round, bool w_f32) {
  auto b = std::make_shared<DeviceBuffers>();
  const int64_t mb = (M + 127) / 128;
  void* x = b->random(DType::bf16, M * N, 1.0f, bench_seed());
  void* w = b->random(w_f32 ? DType::f32 : DType::bf16, N, 0.5f, bench_seed());
  RmsNormBlockQuantOutputs out;
  out.q = TensorRef::contiguous(b->alloc(M * N), DType::e4m3, {M, N});
  out.q_scale = TensorRef::contiguous(b->alloc(N / 128 * M * 4), DType::f32, {N / 128, M});
  out.rms_inv = TensorRef::contiguous(b->alloc(M * 4), DType::f32, {M});
  out.qT = TensorRef::contiguous(b->alloc(M * N), DType::e4m3, {N, M});
  out.qT_scale = TensorRef::contiguous(b->alloc(mb * N * 4), DType::f32, {mb, N});
  const TensorRef xt = TensorRef::contiguous(x, DType::bf16, {M, N});
  const TensorRef wt = TensorRef::contiguous(w, w_f32 ? DType::f32 : DType::bf16, {N});
  const uint64_t row_bytes = M * N + N / 128 * M * 4 + M * 4, col_bytes = M * N + mb * N * 4;

  BenchInstance inst;
  inst.keepalive = b;
  Runtime* r = &rt;
  if (mode == 1) {
    // The rms a mode-0/2 forward stored.
    rms_norm_block_quant_fwd(rt, xt, wt, {}, out, {1e-6f, round, 0}, nullptr);
    const TensorRef rms = out.rms_inv;
    inst.bytes = M * N * 2 + N * 2 + M * 4 + col_bytes;
    inst.run = [=](Stream s) { rms_norm_block_quant_fwd(*r, xt, wt, rms, out, {1e-6f, round, 1}, s); };
    inst.outputs = {out.qT, out.qT_scale};
    return inst;
  }
  inst.bytes = M * N * 2 + N * 2 + row_bytes + (mode == 2 ? col_bytes : 0);
  inst.outputs = {out.q, out.q_scale, out.rms_inv};
  if (mode == 2) inst.outputs.insert(inst.outputs.end(), {out.qT, out.qT_scale});
  inst.run = [=](Stream s) { rms_norm_block_quant_fwd(*r, xt, wt, {}, out, {1e-6f, round, mode}, s); };
  if (mode == 2) {
    // linghe HEAD's strategy for mode 2: a row-wise kernel, then a transposed kernel that re-reads x.
    inst.baseline_name = "mode 0 then mode 1 (two kernels)";
    inst.baseline = [=](Stream s) {
      rms_norm_block_quant_fwd(*r, xt, wt, {}, out, {1e-6f, round, 0}, s);
      rms_norm_block_quant_fwd(*r, xt, wt, out.rms_inv, out, {1e-6f, round, 1}, s);
    };
  }
  return inst;
}

BenchInstance rms_norm_fwd_instance(Runtime& rt, int64_t M, int64_t N, DType dtype, DType w_dtype) {
  auto b = std::make_shared<DeviceBuffers>();
  const int64_t e = static_cast<int64_t>(dtype_size(dtype)), we = static_cast<int64_t>(dtype_size(w_dtype));
  const TensorRef x = TensorRef::contiguous(b->random(dtype, M * N, 1.0f, bench_seed()), dtype, {M, N});
  const TensorRef w = TensorRef::contiguous(b->random(w_dtype, N, 0.5f, bench_seed()), w_dtype, {N});
  const TensorRef y = TensorRef::contiguous(b->alloc(M * N * e), dtype, {M, N});
  const TensorRef rms = TensorRef::contiguous(b->alloc(M * 4), DType::f32, {M});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = 2 * M * N * e + N * we + M * 4;
  Runtime* r = &rt;
  inst.run = [=](Stream s) { rms_norm_fwd(*r, x, w, y, rms, 1e-6f, s); };
  inst.outputs = {y, rms};
  inst.baseline_name = "device-to-device copy of x";
  inst.baseline = [=](Stream s) {
    check(driver().cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(y.data), reinterpret_cast<CUdeviceptr>(x.data),
                                     M * N * e, reinterpret_cast<CUstream>(s)),
          "cuMemcpyDtoDAsync");
  };
  return inst;
}

BenchInstance rms_norm_bwd_instance(Runtime& rt, int64_t M, int64_t N, DType dtype, DType w_dtype, DType dw_dtype,
                                    int64_t workspace_elems) {
  auto b = std::make_shared<DeviceBuffers>();
  const int64_t e = static_cast<int64_t>(dtype_size(dtype));
  const TensorRef x = TensorRef::contiguous(b->random(dtype, M * N, 1.0f, bench_seed()), dtype, {M, N});
  const TensorRef g = TensorRef::contiguous(b->random(dtype, M * N, 1.0f, bench_seed()), dtype, {M, N});
  const TensorRef w = TensorRef::contiguous(b->random(w_dtype, N, 0.5f, bench_seed()), w_dtype, {N});
  const TensorRef dx = TensorRef::contiguous(b->alloc(M * N * e), dtype, {M, N});
  const TensorRef dw = TensorRef::contiguous(b->alloc(N * dtype_size(dw_dtype)), dw_dtype, {N});
  const int64_t ws_elems = workspace_elems > 0 ? workspace_elems : rms_norm_bwd_workspace_elems(rt, M, N, dtype);
  const TensorRef ws = TensorRef::contiguous(b->alloc(ws_elems * 4), DType::f32, {ws_elems});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = 3 * M * N * e + N * dtype_size(w_dtype) + N * dtype_size(dw_dtype);
  Runtime* r = &rt;
  inst.run = [=](Stream s) { rms_norm_bwd(*r, g, x, w, dx, dw, 1e-6f, ws, s); };
  inst.outputs = {dx, dw};
  return inst;
}

namespace {
BenchInstance block_quant(Runtime& rt, int64_t M, int64_t N, int mode, bool round) {
  return rms_norm_block_quant_instance(rt, M, N, mode, round, false);
}
BenchInstance norm_fwd(Runtime& rt, int64_t M, int64_t N) {
  return rms_norm_fwd_instance(rt, M, N, DType::bf16, DType::bf16);
}
BenchInstance norm_bwd(Runtime& rt, int64_t M, int64_t N) {
  return rms_norm_bwd_instance(rt, M, N, DType::bf16, DType::bf16, DType::f32, 0);
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  for (int64_t N : {2048, 7168}) {
    cases.push_back({"rms_norm_block_quant_fwd", fmt::format("M=8192 N={} mode=2 round_scale=1", N),
                     [N](Runtime& rt) { return block_quant(rt, 8192, N, 2, true); }});
  }
  cases.push_back({"rms_norm_block_quant_fwd", "M=8192 N=2048 mode=2 round_scale=0",
                   [](Runtime& rt) { return block_quant(rt, 8192, 2048, 2, false); }});
  cases.push_back({"rms_norm_block_quant_fwd", "M=8192 N=7168 mode=2 round_scale=0",
                   [](Runtime& rt) { return block_quant(rt, 8192, 7168, 2, false); }});
  cases.push_back({"rms_norm_block_quant_fwd", "M=8192 N=2048 mode=0 round_scale=1",
                   [](Runtime& rt) { return block_quant(rt, 8192, 2048, 0, true); }});
  cases.push_back({"rms_norm_block_quant_fwd", "M=8192 N=2048 mode=0 round_scale=0",
                   [](Runtime& rt) { return block_quant(rt, 8192, 2048, 0, false); }});
  cases.push_back({"rms_norm_block_quant_fwd", "M=8192 N=2048 mode=1 round_scale=1",
                   [](Runtime& rt) { return block_quant(rt, 8192, 2048, 1, true); }});
  cases.push_back({"rms_norm_block_quant_fwd", "M=8192 N=2048 mode=1 round_scale=0",
                   [](Runtime& rt) { return block_quant(rt, 8192, 2048, 1, false); }});
  cases.push_back({"rms_norm_block_quant_fwd", "M=8192 N=7168 mode=0 round_scale=1",
                   [](Runtime& rt) { return block_quant(rt, 8192, 7168, 0, true); }});
  cases.push_back({"rms_norm_fwd", "M=8192 N=2048 bf16", [](Runtime& rt) { return norm_fwd(rt, 8192, 2048); }});
  cases.push_back({"rms_norm_bwd", "M=8192 N=2048 bf16", [](Runtime& rt) { return norm_bwd(rt, 8192, 2048); }});
  cases.push_back({"rms_norm_fwd", "M=8192 N=7168 bf16", [](Runtime& rt) { return norm_fwd(rt, 8192, 7168); }});
  cases.push_back({"rms_norm_bwd", "M=8192 N=7168 bf16", [](Runtime& rt) { return norm_bwd(rt, 8192, 7168); }});
});

}  // namespace
}  // namespace kiln::detail
