// Bench cases of qk-norm + half RoPE (kiln bench) at the target shape (S = 4096, B = 2, Ling-mini-2.0
// attention: H = 16, h = 4, D = 128). Bytes are the minimal traffic, each input read once and each output written once:
//   forward:  qkv read + q, k, v written (2·S·B·(H+2h)·D·2) + weights + freqs [S, D/2] fp32
//   backward: gq, gk, gv read + the q and k heads of qkv read (v is not needed) + dqkv written + weights + freqs
//             + dq_norm_weight, dk_norm_weight (fp32).
#include <fmt/format.h>

#include <cmath>
#include <memory>
#include <vector>

#include "kiln/ops/qk_norm_half_rope.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"

namespace kiln::detail {

// Megatron's half-rotary table: freqs[p] = concat(f, f), f_j = p·10000^(−2j/(D/2)), j < D/4.
std::vector<float> qk_half_rope_freqs(int64_t P, int64_t D) {
  std::vector<float> f(static_cast<size_t>(P * D / 2));
  const int64_t R = D / 2, Q = D / 4;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t j = 0; j < Q; ++j) {
      const float a = static_cast<float>(static_cast<double>(p) * std::pow(10000.0, -2.0 * j / R));
      f[p * R + j] = f[p * R + Q + j] = a;
    }
  return f;
}

BenchInstance qk_norm_half_rope_instance(Runtime& rt, bool bwd, int64_t S, int64_t B, int H, int h, int D,
                                         bool interleaved, DType dtype, DType w_dtype, bool weight_grads) {
  auto buf = std::make_shared<DeviceBuffers>();
  const int64_t Wd = static_cast<int64_t>(H + 2 * h) * D, rows = S * B, el = 2;
  const TensorRef qkv =
      TensorRef::contiguous(buf->random(dtype, rows * Wd, 1.0f, bench_seed(), 0.f), dtype, {S, B, Wd});
  const TensorRef wq = TensorRef::contiguous(buf->random(w_dtype, D, 0.1f, bench_seed(), 1.f), w_dtype, {D});
  const TensorRef wk = TensorRef::contiguous(buf->random(w_dtype, D, 0.1f, bench_seed(), 1.f), w_dtype, {D});
  const std::vector<float> fh = qk_half_rope_freqs(S, D);
  const TensorRef freqs = TensorRef::contiguous(buf->upload(fh.data(), fh.size() * 4), DType::f32, {S, D / 2});
  QkNormHalfRopeOptions o;
  o.num_heads = H;
  o.num_groups = h;
  o.interleaved = interleaved;
  const uint64_t side = static_cast<uint64_t>(2 * D * dtype_size(w_dtype) + S * D / 2 * 4);
  const uint64_t all = static_cast<uint64_t>(rows * Wd * el), qk = static_cast<uint64_t>(rows * (H + h) * D * el);

  BenchInstance inst;
  inst.keepalive = buf;
  Runtime* r = &rt;
  if (!bwd) {
    const TensorRef q = TensorRef::contiguous(buf->alloc(rows * H * D * el), dtype, {B, S, H, D});
    const TensorRef k = TensorRef::contiguous(buf->alloc(rows * h * D * el), dtype, {B, S, h, D});
    const TensorRef v = TensorRef::contiguous(buf->alloc(rows * h * D * el), dtype, {B, S, h, D});
    inst.bytes = 2 * all + side;
    inst.run = [=](Stream s) { qk_norm_half_rope_fwd(*r, qkv, wq, wk, freqs, q, k, v, o, s); };
    inst.outputs = {q, k, v};
  } else {
    const TensorRef gq = TensorRef::contiguous(buf->random(dtype, rows * H * D, 0.1f, bench_seed(), 0.f),
                                               dtype, {B, S, H, D});
    const TensorRef gk = TensorRef::contiguous(buf->random(dtype, rows * h * D, 0.1f, bench_seed(), 0.f),
                                               dtype, {B, S, h, D});
    const TensorRef gv = TensorRef::contiguous(buf->random(dtype, rows * h * D, 0.1f, bench_seed(), 0.f),
                                               dtype, {B, S, h, D});
    const TensorRef dqkv = TensorRef::contiguous(buf->alloc(rows * Wd * el), dtype, {S, B, Wd});
    const TensorRef dwq = TensorRef::contiguous(buf->alloc(D * 4), DType::f32, {D});
    const TensorRef dwk = TensorRef::contiguous(buf->alloc(D * 4), DType::f32, {D});
    const int64_t ws_elems = qk_norm_half_rope_bwd_workspace_elems(rt, D);
    const TensorRef ws = TensorRef::contiguous(buf->alloc(ws_elems * 4), DType::f32, {ws_elems});
    inst.bytes = 2 * all + qk + side + (weight_grads ? 2 * D * 4 : 0);
    if (weight_grads) {
      inst.run = [=](Stream s) { qk_norm_half_rope_bwd(*r, gq, gk, gv, qkv, wq, wk, freqs, dqkv, dwq, dwk, o, ws, s); };
      inst.outputs = {dqkv, dwq, dwk};
    } else {
      inst.run = [=](Stream s) { qk_norm_half_rope_bwd(*r, gq, gk, gv, qkv, wq, wk, freqs, dqkv, {}, {}, o, {}, s); };
      inst.outputs = {dqkv};
    }
  }
  inst.baseline_name = "device-to-device copy of qkv";
  const size_t copy_bytes = static_cast<size_t>(all);
  void* copy_dst = buf->alloc(copy_bytes);
  inst.baseline = [=](Stream s) {
    check(driver().cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(copy_dst), reinterpret_cast<CUdeviceptr>(qkv.data),
                                     copy_bytes, reinterpret_cast<CUstream>(s)),
          "cuMemcpyDtoDAsync");
  };
  return inst;
}

namespace {

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  struct Shape { int64_t S, B; int H, h, D; };
  for (const Shape& c : {Shape{4096, 2, 16, 4, 128}, Shape{4096, 2, 32, 8, 128}}) {
    const std::string shape = fmt::format("S={} B={} H={} h={} D={}", c.S, c.B, c.H, c.h, c.D);
    cases.push_back({"qk_norm_half_rope_fwd", shape, [c](Runtime& rt) {
                       return qk_norm_half_rope_instance(rt, false, c.S, c.B, c.H, c.h, c.D, true, DType::bf16,
                                                         DType::bf16, true);
                     }});
    cases.push_back({"qk_norm_half_rope_bwd", shape, [c](Runtime& rt) {
                       return qk_norm_half_rope_instance(rt, true, c.S, c.B, c.H, c.h, c.D, true, DType::bf16,
                                                         DType::bf16, true);
                     }});
  }
  // Without weight gradients (frozen norm weights): the main kernel alone, no partials and no reduction kernel.
  cases.push_back({"qk_norm_half_rope_bwd", "S=4096 B=2 H=16 h=4 D=128 no_weight_grads", [](Runtime& rt) {
                     return qk_norm_half_rope_instance(rt, true, 4096, 2, 16, 4, 128, true, DType::bf16, DType::bf16,
                                                       false);
                   }});
});

}  // namespace
}  // namespace kiln::detail
