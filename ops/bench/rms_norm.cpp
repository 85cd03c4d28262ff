// Bench cases of the RMSNorm families (kiln bench). Bytes are the minimal traffic: every input read once, every
// output written once. Shapes are the targets (M = 8192 tokens; Ling-mini-2.0 and DeepSeek-V3 hidden sizes).
#include <fmt/format.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "kiln/ops/rms_norm.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"

namespace kiln::detail {
namespace {

struct Buffers {
  std::vector<void*> ptrs;
  ~Buffers() {
    for (void* p : ptrs) device_free(p);
  }
  void* alloc(size_t bytes) {
    ptrs.push_back(device_alloc(bytes));
    return ptrs.back();
  }
  // N(0, sigma) bf16 values (fresh seed per call), as 16-bit words.
  void* random_bf16(size_t n, float sigma, uint32_t seed) {
    std::vector<uint16_t> h(n);
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.f, sigma);
    for (auto& v : h) {
      float f = dist(rng);
      if (f == 0.f) f = 1e-3f;  // never zeros: they hide unwritten outputs and can run faster
      uint32_t b;
      std::memcpy(&b, &f, 4);
      v = static_cast<uint16_t>((b + 0x7fff + ((b >> 16) & 1)) >> 16);
    }
    void* d = alloc(n * 2);
    copy_to_device(d, h.data(), n * 2);
    return d;
  }
};

uint32_t fresh_seed() {
  static std::random_device rd;
  return rd();
}

BenchInstance block_quant(Runtime& rt, int64_t M, int64_t N, int mode, bool round) {
  auto b = std::make_shared<Buffers>();
  const int64_t mb = (M + 127) / 128;
  void* x = b->random_bf16(M * N, 1.0f, fresh_seed());
  void* w = b->random_bf16(N, 0.5f, fresh_seed());
  RmsNormBlockQuantOutputs out;
  out.q = TensorRef::contiguous(b->alloc(M * N), DType::e4m3, {M, N});
  out.q_scale = TensorRef::contiguous(b->alloc(N / 128 * M * 4), DType::f32, {N / 128, M});
  out.rms_inv = TensorRef::contiguous(b->alloc(M * 4), DType::f32, {M});
  out.qT = TensorRef::contiguous(b->alloc(M * N), DType::e4m3, {N, M});
  out.qT_scale = TensorRef::contiguous(b->alloc(mb * N * 4), DType::f32, {mb, N});
  const TensorRef xt = TensorRef::contiguous(x, DType::bf16, {M, N});
  const TensorRef wt = TensorRef::contiguous(w, DType::bf16, {N});
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
    return inst;
  }
  inst.bytes = M * N * 2 + N * 2 + row_bytes + (mode == 2 ? col_bytes : 0);
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

BenchInstance norm_fwd(Runtime& rt, int64_t M, int64_t N) {
  auto b = std::make_shared<Buffers>();
  const TensorRef x = TensorRef::contiguous(b->random_bf16(M * N, 1.0f, fresh_seed()), DType::bf16, {M, N});
  const TensorRef w = TensorRef::contiguous(b->random_bf16(N, 0.5f, fresh_seed()), DType::bf16, {N});
  const TensorRef y = TensorRef::contiguous(b->alloc(M * N * 2), DType::bf16, {M, N});
  const TensorRef rms = TensorRef::contiguous(b->alloc(M * 4), DType::f32, {M});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = 2 * M * N * 2 + N * 2 + M * 4;
  Runtime* r = &rt;
  inst.run = [=](Stream s) { rms_norm_fwd(*r, x, w, y, rms, 1e-6f, s); };
  inst.baseline_name = "device-to-device copy of x";
  inst.baseline = [=](Stream s) {
    check(driver().cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(y.data), reinterpret_cast<CUdeviceptr>(x.data),
                                     M * N * 2, reinterpret_cast<CUstream>(s)),
          "cuMemcpyDtoDAsync");
  };
  return inst;
}

BenchInstance norm_bwd(Runtime& rt, int64_t M, int64_t N) {
  auto b = std::make_shared<Buffers>();
  const TensorRef x = TensorRef::contiguous(b->random_bf16(M * N, 1.0f, fresh_seed()), DType::bf16, {M, N});
  const TensorRef g = TensorRef::contiguous(b->random_bf16(M * N, 1.0f, fresh_seed()), DType::bf16, {M, N});
  const TensorRef w = TensorRef::contiguous(b->random_bf16(N, 0.5f, fresh_seed()), DType::bf16, {N});
  const TensorRef dx = TensorRef::contiguous(b->alloc(M * N * 2), DType::bf16, {M, N});
  const TensorRef dw = TensorRef::contiguous(b->alloc(N * 4), DType::f32, {N});
  const int64_t ws_elems = rms_norm_bwd_workspace_elems(rt, M, N);
  const TensorRef ws = TensorRef::contiguous(b->alloc(ws_elems * 4), DType::f32, {ws_elems});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = 3 * M * N * 2 + N * 2 + N * 4;
  Runtime* r = &rt;
  inst.run = [=](Stream s) { rms_norm_bwd(*r, g, x, w, dx, dw, 1e-6f, ws, s); };
  return inst;
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  for (int64_t N : {2048, 7168}) {
    cases.push_back({"rms_norm_block_quant_fwd", fmt::format("M=8192 N={} mode=2 round_scale=1", N),
                     [N](Runtime& rt) { return block_quant(rt, 8192, N, 2, true); }});
  }
  cases.push_back({"rms_norm_block_quant_fwd", "M=8192 N=2048 mode=2 round_scale=0",
                   [](Runtime& rt) { return block_quant(rt, 8192, 2048, 2, false); }});
  cases.push_back({"rms_norm_block_quant_fwd", "M=8192 N=2048 mode=0 round_scale=1",
                   [](Runtime& rt) { return block_quant(rt, 8192, 2048, 0, true); }});
  cases.push_back({"rms_norm_block_quant_fwd", "M=8192 N=2048 mode=1 round_scale=1",
                   [](Runtime& rt) { return block_quant(rt, 8192, 2048, 1, true); }});
  cases.push_back({"rms_norm_block_quant_fwd", "M=8192 N=7168 mode=0 round_scale=1",
                   [](Runtime& rt) { return block_quant(rt, 8192, 7168, 0, true); }});
  cases.push_back({"rms_norm_fwd", "M=8192 N=2048 bf16", [](Runtime& rt) { return norm_fwd(rt, 8192, 2048); }});
  cases.push_back({"rms_norm_bwd", "M=8192 N=2048 bf16", [](Runtime& rt) { return norm_bwd(rt, 8192, 2048); }});
  cases.push_back({"rms_norm_fwd", "M=8192 N=7168 bf16", [](Runtime& rt) { return norm_fwd(rt, 8192, 7168); }});
  cases.push_back({"rms_norm_bwd", "M=8192 N=7168 bf16", [](Runtime& rt) { return norm_bwd(rt, 8192, 7168); }});
});

}  // namespace
}  // namespace kiln::detail
