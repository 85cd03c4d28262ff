// Bench cases of the fused gated MLP expansion (kiln bench, op "fused_gated_mlp"): out [M, I] = act(x · W_gᵀ) ⊙
// (x · W_uᵀ), x [M, H] contiguous, W_g / W_u [I, H] (spec: ../shared/spec/triton-ops.md §3).
//
// What a row measures: one fused_gated_mlp call (both projections, the activation and the product; no [M, I]
// intermediate in memory) on a cold L2. Its baseline, timed in the same run on the same x: cuBLASLt doing the two
// projections as ONE GEMM, y [M, 2I] = x · [W_g; W_u]ᵀ (a concatenated copy of the weights made at prepare time), the
// output in x's dtype, fp32 accumulation (fp32 inputs: CUBLAS_COMPUTE_32F_FAST_TF32, the TF32 products kiln forms) —
// the GEMM work alone, without the activation and the product, and writing twice the output bytes: what "just call
// cuBLAS" costs before any epilogue.
//
// FLOPs: 2·M·H·(2I) = 4·M·H·I (the activation and product, ~M·I·20, are negligible). Minimal bytes: x, both weights and
// out, each once: (M·H + 2·I·H + M·I)·sizeof(dtype). Floors: dense tensor-core peak 989 TFLOP/s for bf16 / fp16 and
// 495 for TF32 (H100 / H200 SXM), 3025 GB/s copy bandwidth (the H100's, ../shared/guide/h100.md):
//   M=8192 H=2048 I=5120 bf16 silu  (Ling-mini-2.0 dense MLP)    343.6 GFLOP → 347 µs;  159.4 MB → 52.7 µs
//   M=8192 H=7168 I=2048 bf16 silu  (DeepSeek-V3 shared expert)  481.0 GFLOP → 486 µs;  209.7 MB → 69.3 µs
//   M=8192 H=2048 I=5120 f16 gelu                                343.6 GFLOP → 347 µs;  159.4 MB → 52.7 µs
//   M=8192 H=2048 I=5120 f32 silu   (TF32 MMAs)                  343.6 GFLOP → 695 µs;  318.8 MB → 105.4 µs
//   M=128  H=2048 I=5120 bf16 silu  (small M: weight-read bound)   5.4 GFLOP → 5.4 µs;   43.8 MB → 14.5 µs
// The M = 8192 rows are compute bound (≈ 2200 FLOP a byte at 16 bits); the M = 128 row is bound by reading the
// weights once.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kiln/ops/gated_mlp.hpp"
#include "ops/bench/cublaslt.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"

namespace kiln::detail {
namespace {

// The buffers of an instance and, for the bench rows, the cuBLASLt plan its baseline runs (freed before the
// buffers: members go before bases).
struct GatedMlpBuffers : DeviceBuffers {
  std::shared_ptr<CublasLtGemm> lt;
};

const char* act_name(GatedActivation a) { return a == GatedActivation::gelu ? "gelu" : "silu"; }

// Host value of element i of a bf16 / fp16 / fp32 array.
double host_value(const std::vector<uint8_t>& h, DType t, size_t i) {
  if (t == DType::f32) {
    float f;
    std::memcpy(&f, &h[i * 4], 4);
    return f;
  }
  uint16_t v;
  std::memcpy(&v, &h[i * 2], 2);
  if (t == DType::bf16) {
    const uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  const int e = (v >> 10) & 0x1f, m = v & 0x3ff;
  const double mag = e == 0 ? std::ldexp(m, -24) : e == 31 ? INFINITY : std::ldexp(1024 + m, e - 25);
  return (v & 0x8000) ? -mag : mag;
}

std::vector<uint8_t> download_row(const void* base, int64_t row, int64_t cols, size_t es) {
  std::vector<uint8_t> h(cols * es);
  copy_to_host(h.data(), static_cast<const uint8_t*>(base) + row * cols * es, h.size());
  return h;
}

void copy_dtod(void* dst, const void* src, size_t bytes) {
  check(driver().cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(dst), reinterpret_cast<CUdeviceptr>(src), bytes,
                                   nullptr),
        "cuMemcpyDtoDAsync");
}

// The cuBLASLt baseline: y [M, 2I] = x · wcat [2I, H]ᵀ in x's dtype. Run once here and checked at 16 sampled entries
// against a host dot product of the same (dtype-rounded) inputs (a layout or type mix-up is off by O(1); the
// tolerance allows the output's rounding and TF32's); where cuBLASLt cannot run or disagrees, the instance has no
// baseline and its name says why.
void add_cublas_baseline(BenchInstance& inst, GatedMlpBuffers& b, const TensorRef& x, const TensorRef& wg,
                         const TensorRef& wu) {
  const DType t = x.dtype;
  const size_t es = dtype_size(t);
  const int64_t M = x.shape[0], H = x.shape[1], I = wg.shape[0];
  CublasLtGemmOptions o;
  o.ab = t;
  o.d = t;
  o.tf32 = true;
  b.lt = std::make_shared<CublasLtGemm>(M, H, 2 * I, o);
  if (!b.lt->available()) {
    inst.baseline_name = "cuBLASLt unavailable: " + b.lt->why();
    return;
  }
  void* wcat = b.alloc(2 * I * H * es);
  copy_dtod(wcat, wg.data, I * H * es);
  copy_dtod(static_cast<uint8_t*>(wcat) + I * H * es, wu.data, I * H * es);
  void* y = b.alloc(M * 2 * I * es);
  const std::shared_ptr<CublasLtGemm> lt = b.lt;
  const void* xp = x.data;
  lt->run(xp, wcat, y, nullptr);
  device_synchronize();
  double worst = 0;
  for (int k = 0; k < 16; ++k) {
    const int64_t m = (k % 4) * (M - 1) / 3, n = (k * 7 + k / 4) % 16 * (2 * I - 1) / 15;
    const auto xr = download_row(xp, m, H, es), wr = download_row(wcat, n, H, es);
    std::vector<uint8_t> got(es);
    copy_to_host(got.data(), static_cast<const uint8_t*>(y) + (m * 2 * I + n) * es, es);
    double ref = 0;
    for (int64_t h = 0; h < H; ++h) ref += host_value(xr, t, h) * host_value(wr, t, h);
    const double g = host_value(got, t, 0), err = std::abs(g - ref) / (1 + std::abs(ref));
    worst = std::isnan(err) ? INFINITY : std::max(worst, err);
  }
  if (!(worst <= 1e-2)) {
    inst.baseline_name = fmt::format("cuBLASLt unavailable: its output differs from a host dot product (worst "
                                     "|error| / (1 + |ref|) {:.3g} at 16 sampled entries)",
                                     worst);
    return;
  }
  inst.baseline = [lt, xp, wcat, y](Stream s) { lt->run(xp, wcat, y, s); };
  inst.baseline_name = fmt::format("cuBLASLt x·[W_g;W_u]ᵀ as one GEMM (no activation), {} → {} fp32 accumulate, {}",
                                   dtype_name(t), dtype_name(t), lt->description());
}

BenchInstance make_instance(Runtime& rt, int64_t M, int64_t H, int64_t I, DType dtype, GatedActivation act,
                            bool with_baseline) {
  auto b = std::make_shared<GatedMlpBuffers>();
  const size_t es = dtype_size(dtype);
  // x ~ N(0, 1) and weights ~ N(0, 1/H): both projections ~ N(0, 1), so act(g)·u is O(1) in every dtype.
  const float ws = 1.0f / std::sqrt(static_cast<float>(H));
  const TensorRef x = TensorRef::contiguous(b->random(dtype, M * H, 1.0f, bench_seed()), dtype, {M, H});
  const TensorRef wg = TensorRef::contiguous(b->random(dtype, I * H, ws, bench_seed()), dtype, {I, H});
  const TensorRef wu = TensorRef::contiguous(b->random(dtype, I * H, ws, bench_seed()), dtype, {I, H});
  const TensorRef out = TensorRef::contiguous(b->alloc(M * I * es), dtype, {M, I});
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = (M * H + 2 * I * H + M * I) * es;
  Runtime* r = &rt;
  inst.run = [=](Stream s) { fused_gated_mlp(*r, x, wg, wu, out, act, s); };
  inst.outputs = {out};
  if (with_baseline)
    add_cublas_baseline(inst, *b, x, wg, wu);
  else
    inst.baseline_name = "none (the tuner's instance)";
  return inst;
}

}  // namespace

extern std::atomic<bool> gated_mlp_tile_grid_force;     // ops/gated_mlp.cpp (measurement)
extern std::atomic<bool> gated_mlp_direct_store_force;  // ops/gated_mlp.cpp (measurement)

// The tuner's instance (ops/gated_mlp.cpp): the op alone, no cuBLASLt plan nor concatenated weights.
BenchInstance gated_mlp_instance(Runtime& rt, int64_t M, int64_t H, int64_t I, DType dtype, GatedActivation act) {
  return make_instance(rt, M, H, I, dtype, act, false);
}

namespace {
const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  struct Shape {
    int64_t M, H, I;
    DType t;
    GatedActivation act;
  };
  for (const Shape& s : {Shape{8192, 2048, 5120, DType::bf16, GatedActivation::silu},   // Ling-mini-2.0 dense MLP
                         Shape{8192, 7168, 2048, DType::bf16, GatedActivation::silu},   // DeepSeek-V3 shared expert
                         Shape{8192, 2048, 5120, DType::f16, GatedActivation::gelu},
                         Shape{8192, 2048, 5120, DType::f32, GatedActivation::silu},
                         Shape{128, 2048, 5120, DType::bf16, GatedActivation::silu}}) {
    const char* tn = s.t == DType::bf16 ? "bf16" : s.t == DType::f16 ? "f16" : "f32";
    cases.push_back({"fused_gated_mlp", fmt::format("M={} H={} I={} {} {}", s.M, s.H, s.I, tn, act_name(s.act)),
                     [s](Runtime& rt) { return make_instance(rt, s.M, s.H, s.I, s.t, s.act, true); }});
  }
  // Every search-space point forced (sm_90a) at the Ling-mini-2.0 shape, M = 8192, 2048, 1024 and 128, against the
  // same cuBLASLt baseline (`fused_gated_mlp_cfg … bn=… stages=…`), and the two defaults with one CTA a tile instead
  // of the persistent grid (`grid=tiles`) or with the epilogue storing from the registers instead of staging for TMA
  // stores (`store=direct`; measurement hooks).
  struct Cfg {
    int bn, stages;
    bool tile_grid, direct;
  };
  for (int64_t M : {int64_t{8192}, int64_t{2048}, int64_t{1024}, int64_t{128}})
    for (const Cfg c : {Cfg{128, 4, false, false}, {128, 3, false, false}, {64, 6, false, false},
                        {64, 5, false, false}, {64, 4, false, false}, {128, 4, true, false}, {64, 6, true, false},
                        {128, 4, false, true}, {64, 6, false, true}})
      cases.push_back({"fused_gated_mlp_cfg",
                       fmt::format("M={} H=2048 I=5120 bf16 silu bn={} stages={}{}{}", M, c.bn, c.stages,
                                   c.tile_grid ? " grid=tiles" : "", c.direct ? " store=direct" : ""),
                       [M, c](Runtime& rt) {
                         Specialization cand;
                         cand.family = find_family("gated_mlp");
                         cand.arch = rt.impl().target_arch();
                         cand.kernel = 0;
                         cand.params = {2048, 5120, static_cast<int64_t>(GatedActivation::silu),
                                        static_cast<int64_t>(DType::bf16)};
                         cand.config = {c.bn, c.stages};
                         BenchInstance inst = with_forced_config(
                             make_instance(rt, M, 2048, 5120, DType::bf16, GatedActivation::silu, true), cand,
                             "gated MLP");
                         if (c.tile_grid || c.direct)
                           inst.run = [run = inst.run, c](Stream s) {
                             gated_mlp_tile_grid_force.store(c.tile_grid);
                             gated_mlp_direct_store_force.store(c.direct);
                             run(s);
                             gated_mlp_tile_grid_force.store(false);
                             gated_mlp_direct_store_force.store(false);
                           };
                         return inst;
                       }});
});
}  // namespace

}  // namespace kiln::detail
