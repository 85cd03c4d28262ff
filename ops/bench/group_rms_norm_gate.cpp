// Bench cases of group RMSNorm × sigmoid gate (kiln bench) at the target shape: B = 2, S = 4096, dim = 2048,
// G = 4, bf16. Minimal bytes (every input read once, every output written once):
//   fwd: x + gate + out (3·B·S·dim·2) + weight                     = 100,667,392 bytes (per-channel weight)
//   bwd: dy + x + gate + dx + dgate (5·B·S·dim·2) + weight + dw (fp32) = 167,784,448 bytes
#include <fmt/format.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "kiln/ops/group_rms_norm_gate.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"

namespace kiln::detail {
void group_rms_norm_gate_bwd_config(Runtime& rt, const TensorRef& dy, const TensorRef& x, const TensorRef& gate,
                                    const TensorRef& weight, const TensorRef& dx, const TensorRef& dgate,
                                    const TensorRef& dweight, const GroupRmsNormGateOptions& opts,
                                    const TensorRef& workspace, Stream stream, int rows, int warps, int seg,
                                    int reduce, int hints);
void group_rms_norm_gate_fwd_config(Runtime& rt, const TensorRef& x, const TensorRef& gate, const TensorRef& weight,
                                    const TensorRef& out, const GroupRmsNormGateOptions& opts, Stream stream,
                                    int warps, int seg, int rows);
namespace {

struct Buffers {
  std::vector<void*> ptrs;
  ~Buffers() {
    for (void* p : ptrs) device_free(p);
  }
  void* alloc(size_t bytes) {
    ptrs.push_back(device_alloc(bytes == 0 ? 16 : bytes));
    return ptrs.back();
  }
  // N(0, sigma) values in `dtype` (never exactly zero: zeros hide unwritten outputs).
  void* random(DType dtype, size_t n, float sigma, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.f, sigma);
    const size_t es = dtype_size(dtype);
    std::vector<uint8_t> h(n * es);
    for (size_t i = 0; i < n; ++i) {
      float f = dist(rng);
      if (f == 0.f) f = 1e-3f;
      if (dtype == DType::f32) {
        std::memcpy(&h[i * 4], &f, 4);
      } else if (dtype == DType::bf16) {
        uint32_t b;
        std::memcpy(&b, &f, 4);
        const uint16_t v = static_cast<uint16_t>((b + 0x7fff + ((b >> 16) & 1)) >> 16);
        std::memcpy(&h[i * 2], &v, 2);
      } else {
        const _Float16 v = static_cast<_Float16>(f);
        std::memcpy(&h[i * 2], &v, 2);
      }
    }
    void* d = alloc(h.size());
    copy_to_device(d, h.data(), h.size());
    return d;
  }
};

uint32_t fresh_seed() {
  static std::random_device rd;
  return rd();
}

}  // namespace

// warps > 0 forces the config (rows mode, warps, segment groups) of the forward or backward; see
// ops/group_rms_norm_gate.cpp. workspace false: the backward allocates its own (the tuner's instances: a forced config
// may need a larger grid than the default's workspace holds).
BenchInstance group_rms_norm_gate_instance(Runtime& rt, bool backward, int64_t B, int64_t S, int64_t dim, int groups,
                                           bool shared_weight, bool transpose, DType dtype, int rows = -1,
                                           int warps = 0, int seg = 0, bool workspace = true, int reduce = -1,
                                           int hints = 0) {
  auto b = std::make_shared<Buffers>();
  const int64_t M = B * S, wn = shared_weight ? dim / groups : dim;
  const size_t es = dtype_size(dtype);
  auto gate_like = [&](void* p) {
    return transpose ? TensorRef::contiguous(p, dtype, {S, B, dim}) : TensorRef::contiguous(p, dtype, {B, S, dim});
  };
  const TensorRef x = TensorRef::contiguous(b->random(dtype, M * dim, 1.0f, fresh_seed()), dtype, {B, S, dim});
  const TensorRef gate = gate_like(b->random(dtype, M * dim, 2.0f, fresh_seed()));
  const TensorRef w = TensorRef::contiguous(b->random(dtype, wn, 0.5f, fresh_seed()), dtype, {wn});
  const GroupRmsNormGateOptions opts{groups, 1e-6f, transpose};
  BenchInstance inst;
  inst.keepalive = b;
  Runtime* r = &rt;
  if (!backward) {
    const TensorRef out = gate_like(b->alloc(M * dim * es));
    inst.bytes = 3 * M * dim * es + wn * es;
    inst.run = [=](Stream s) {
      group_rms_norm_gate_fwd_config(*r, x, gate, w, out, opts, s, warps, seg, rows < 0 ? 0 : rows);
    };
    inst.outputs = {out};
    return inst;
  }
  const TensorRef dy = gate_like(b->random(dtype, M * dim, 1.0f, fresh_seed()));
  const TensorRef dx = TensorRef::contiguous(b->alloc(M * dim * es), dtype, {B, S, dim});
  const TensorRef dgate = gate_like(b->alloc(M * dim * es));
  const TensorRef dw = TensorRef::contiguous(b->alloc(wn * 4), DType::f32, {wn});
  const int64_t ws_elems = workspace ? group_rms_norm_gate_bwd_workspace_elems(rt, M, dim, groups, dtype) : 0;
  const TensorRef ws =
      workspace ? TensorRef::contiguous(b->alloc(ws_elems * 4), DType::f32, {ws_elems}) : TensorRef{};
  inst.bytes = 5 * M * dim * es + wn * es + wn * 4;
  inst.run = [=](Stream s) {
    group_rms_norm_gate_bwd_config(*r, dy, x, gate, w, dx, dgate, dw, opts, ws, s, rows, warps, seg, reduce, hints);
  };
  inst.outputs = {dx, dgate, dw};
  return inst;
}

namespace {
const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  for (bool bwd : {false, true}) {
    const char* op = bwd ? "group_rms_norm_gate_bwd" : "group_rms_norm_gate_fwd";
    cases.push_back({op, "B=2 S=4096 dim=2048 G=4 bf16 transpose=1", [bwd](Runtime& rt) {
                       return group_rms_norm_gate_instance(rt, bwd, 2, 4096, 2048, 4, false, true, DType::bf16);
                     }});
    cases.push_back({op, "B=2 S=4096 dim=2048 G=4 bf16 transpose=0 shared_w=1", [bwd](Runtime& rt) {
                       return group_rms_norm_gate_instance(rt, bwd, 2, 4096, 2048, 4, true, false, DType::bf16);
                     }});
  }
  // Forward variants (config forced): (rows mode 0 per item / 2 staged, warps, segment groups).
  for (const auto& [rows, warps, seg] : {std::tuple{0, 2, 1}, {0, 8, 1}, {0, 8, 2}, {2, 8, 1}}) {
    cases.push_back({"group_rms_norm_gate_fwd",
                     fmt::format("B=2 S=4096 dim=2048 G=4 bf16 transpose=1 rows={} warps={} seg={}", rows, warps, seg),
                     [rows, warps, seg](Runtime& rt) {
                       return group_rms_norm_gate_instance(rt, false, 2, 4096, 2048, 4, false, true, DType::bf16,
                                                           rows, warps, seg);
                     }});
  }
  // Backward variants (config forced): (rows mode, warps, segment groups, reduce: 0 dw_reduce_kernel behind the
  // backward, 1 in-kernel after a grid barrier). The default is rows 2 × 8 warps, reduce 1.
  for (const auto& [rows, warps, seg, reduce] :
       {std::tuple{3, 8, 1, 0}, {3, 8, 1, 1}, {3, 16, 1, 1}, {2, 8, 1, 0}, {2, 8, 1, 1}, {2, 16, 1, 1}, {2, 4, 1, 1}}) {
    cases.push_back({"group_rms_norm_gate_bwd",
                     fmt::format("B=2 S=4096 dim=2048 G=4 bf16 transpose=1 rows={} warps={} seg={} reduce={}", rows,
                                 warps, seg, reduce),
                     [rows, warps, seg, reduce](Runtime& rt) {
                       return group_rms_norm_gate_instance(rt, true, 2, 4096, 2048, 4, false, true, DType::bf16, rows,
                                                           warps, seg, true, reduce);
                     }});
  }
  // The staged default's reference point (hints 4: the inputs copied with an L2 evict-first policy, session 5's
  // default, 0.9 µs slower in session 6) and measurement ablations with wrong results (3: no dx/dgate stores, the reads
  // and dw only; 8: x and gate streamed to dx and dgate, no math: this pipeline's memory floor; 64: CTAs that return at
  // once, the fixed cost of this cooperative launch, and of the two launches of reduce 0 below).
  for (int hints : {4, 3, 8, 64}) {
    cases.push_back({"group_rms_norm_gate_bwd",
                     fmt::format("B=2 S=4096 dim=2048 G=4 bf16 transpose=1 rows=2 warps=8 seg=1 reduce=1 hints={}",
                                 hints),
                     [hints](Runtime& rt) {
                       return group_rms_norm_gate_instance(rt, true, 2, 4096, 2048, 4, false, true, DType::bf16, 2, 8,
                                                           1, true, 1, hints);
                     }});
  }
  cases.push_back({"group_rms_norm_gate_bwd",
                   "B=2 S=4096 dim=2048 G=4 bf16 transpose=1 rows=2 warps=8 seg=1 reduce=0 hints=64", [](Runtime& rt) {
                     return group_rms_norm_gate_instance(rt, true, 2, 4096, 2048, 4, false, true, DType::bf16, 2, 8, 1,
                                                         true, 0, 64);
                   }});
});
}  // namespace

}  // namespace kiln::detail
