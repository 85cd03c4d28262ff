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
#include "kiln/ops/fp8_linear.hpp"
#include "ops/bench/cublaslt.hpp"
#include "runtime/bench.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"

namespace kiln::detail {
namespace {

// The same-run baseline: cuBLASLt's fp8 GEMM on e4m3 operands with per-tensor scales 1 (what torch._scaled_mm runs),
// c bf16 [M, N] = a [M, K] · bᵀ where cuBLASLt's fp8 path takes b K-major: a transposed copy of b's bytes [N, K],
// made once here. The bytes are the row's codes (no 0x7F / 0xFF: e4m3's NaN), so both GEMMs read the same amount.
void add_cublas_fp8_baseline(BenchInstance& inst, DeviceBuffers& b, const void* a, const std::vector<uint8_t>& h,
                             int64_t M, int64_t N, int64_t K, DType out, std::shared_ptr<CublasLtGemm>& keep) {
  CublasLtGemmOptions o;
  o.ab = DType::e4m3;
  o.d = out;
  keep = std::make_shared<CublasLtGemm>(M, K, N, o);
  if (!keep->available()) {
    inst.baseline_name = "cuBLASLt fp8 unavailable: " + keep->why();
    return;
  }
  std::vector<uint8_t> t(static_cast<size_t>(N * K));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) t[n * K + k] = h[k * N + n];
  void* bt = b.alloc(N * K);
  copy_to_device(bt, t.data(), N * K);
  void* y = b.alloc(M * N * dtype_size(out));
  const std::shared_ptr<CublasLtGemm> lt = keep;
  inst.baseline = [lt, a, bt, y](Stream s) { lt->run(a, bt, y, s); };
  inst.baseline_name = fmt::format("cuBLASLt fp8 e4m3 × e4m3 → {}, per-tensor scales, fp32 accumulate, {}",
                                   dtype_name(out), lt->description());
}

BenchInstance gemm_instance(Runtime& rt, int64_t M, int64_t N, int64_t K, DType out, bool with_baseline,
                            bool prepared = false) {
  auto b = std::make_shared<DeviceBuffers>();
  std::vector<uint8_t> h(static_cast<size_t>(std::max(M * K, K * N)));
  uint64_t s = bench_seed();
  for (auto& x : h) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<uint8_t>(1 + (s >> 33) % 255);
    if ((x & 0x7F) == 0x7F) x ^= 1;  // no e4m3 NaN (the cuBLASLt baseline reads the same bytes)
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
  inst.bytes = M * K + K * N + M * N * dtype_size(out);
  Runtime* r = &rt;
  if (prepared) {  // the weight prepared once, outside the timed calls: a call reads a and the prepared weight
    const Fp8GemmWeight w{b->alloc(fp8_gemm_weight_bytes(N, K)), N, K};
    fp8_gemm_prepare_weight(rt, tb, &scales->second, Fp8WeightLayout::kn, w, nullptr);
    inst.run = [=](Stream st) { fp8_gemm(*r, ta, &scales->first, w, nullptr, c, st); };
  } else {
    inst.run = [=](Stream st) { fp8_gemm(*r, ta, tb, &scales->first, &scales->second, c, st); };
  }
  inst.outputs = {c};
  auto lt = std::make_shared<std::shared_ptr<CublasLtGemm>>();
  inst.keepalive = std::make_shared<std::tuple<std::shared_ptr<DeviceBuffers>, decltype(scales), decltype(lt)>>(
      b, scales, lt);
  if (with_baseline)
    add_cublas_fp8_baseline(inst, *b, a, h, M, N, K, out, *lt);
  else
    inst.baseline_name = "none (the tuner's instance)";
  return inst;
}

// FP8Linear on a bf16 activation x [M, in] and an fp32 weight [out, in] (prepared at the first call, before the timed
// ones): per call, quantize_fp8 of x (two reads of x and its codes) and the GEMM. Minimal bytes: x (bf16) once, the
// prepared weight's codes once, y (bf16) once. Baseline: cuBLASLt's bf16 GEMM y = x · W_bf16ᵀ (a bf16 Linear).
BenchInstance linear_instance(Runtime& rt, int64_t M, int64_t in, int64_t out) {
  struct Bufs {
    DeviceBuffers d;
    std::unique_ptr<FP8Linear> lin;
    std::shared_ptr<CublasLtGemm> lt;
  };
  auto b = std::make_shared<Bufs>();
  const TensorRef x = TensorRef::contiguous(b->d.random(DType::bf16, M * in, 1.0f, bench_seed()), DType::bf16, {M, in});
  const TensorRef w = TensorRef::contiguous(b->d.random(DType::f32, out * in, 0.02f, bench_seed()), DType::f32, {out, in});
  const TensorRef y = TensorRef::contiguous(b->d.alloc(M * out * 2), DType::bf16, {M, out});
  b->lin = std::make_unique<FP8Linear>(rt, in, out);
  b->lin->forward(x, w, 0, nullptr, y, nullptr);  // prepares the weight
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = M * in * 2 + out * in + M * out * 2;
  FP8Linear* lin = b->lin.get();
  inst.run = [=](Stream st) { lin->forward(x, w, 0, nullptr, y, st); };
  inst.outputs = {y};
  CublasLtGemmOptions o;
  o.ab = DType::bf16;
  o.d = DType::bf16;
  b->lt = std::make_shared<CublasLtGemm>(M, in, out, o);
  if (!b->lt->available()) {
    inst.baseline_name = "cuBLASLt unavailable: " + b->lt->why();
    return inst;
  }
  const void* wbf = b->d.random(DType::bf16, out * in, 0.02f, bench_seed());
  void* yb = b->d.alloc(M * out * 2);
  const std::shared_ptr<CublasLtGemm> lt = b->lt;
  const void* xp = x.data;
  inst.baseline = [lt, xp, wbf, yb](Stream st) { lt->run(xp, wbf, yb, st); };
  inst.baseline_name = fmt::format("cuBLASLt bf16 x·Wᵀ → bf16 (a bf16 Linear), {}", lt->description());
  return inst;
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  for (const auto& [M, N, K] : {std::tuple{int64_t{4096}, int64_t{4096}, int64_t{7168}},
                                std::tuple{int64_t{4096}, int64_t{7168}, int64_t{2048}},
                                std::tuple{int64_t{8192}, int64_t{8192}, int64_t{8192}},
                                std::tuple{int64_t{128}, int64_t{7168}, int64_t{16384}},
                                std::tuple{int64_t{1024}, int64_t{4096}, int64_t{7168}}})
  {
    cases.push_back({"fp8_gemm", fmt::format("M={} N={} K={} codes bf16", M, N, K),
                     [=](Runtime& rt) { return gemm_instance(rt, M, N, K, DType::bf16, true); }});
    cases.push_back({"fp8_gemm_prepared", fmt::format("M={} N={} K={} codes bf16", M, N, K),
                     [=](Runtime& rt) { return gemm_instance(rt, M, N, K, DType::bf16, true, true); }});
  }
  // Every search-space point forced, on a prepared weight (`fp8_gemm_prepared_cfg … bn=… stages=…`).
  for (const auto& [M, N, K] : {std::tuple{int64_t{4096}, int64_t{7168}, int64_t{2048}},
                                std::tuple{int64_t{4096}, int64_t{4096}, int64_t{7168}},
                                std::tuple{int64_t{128}, int64_t{7168}, int64_t{16384}}})
    for (const auto& [bn, stages] : {std::pair{128, 6}, std::pair{128, 5}, std::pair{128, 4}, std::pair{64, 8},
                                         std::pair{64, 6}, std::pair{256, 3}})
      cases.push_back({"fp8_gemm_prepared_cfg", fmt::format("M={} N={} K={} codes bf16 bn={} stages={}", M, N, K, bn,
                                                            stages),
                       [=](Runtime& rt) {
                         Specialization cand;
                         cand.family = find_family("fp8_gemm");
                         cand.arch = rt.impl().target_arch();
                         cand.kernel = 0;
                         cand.params = {N, K, static_cast<int64_t>(DType::bf16)};
                         cand.config = {bn, stages};
                         return with_forced_config(gemm_instance(rt, M, N, K, DType::bf16, true, true), cand,
                                                   "fp8_gemm");
                       }});
  for (const auto& [M, in, out] : {std::tuple{int64_t{4096}, int64_t{7168}, int64_t{4096}},
                                   std::tuple{int64_t{128}, int64_t{16384}, int64_t{7168}},
                                   std::tuple{int64_t{8192}, int64_t{2048}, int64_t{2048}}})
    cases.push_back({"fp8_linear", fmt::format("M={} in={} out={} bf16 x, fp32 W", M, in, out),
                     [=](Runtime& rt) { return linear_instance(rt, M, in, out); }});
});

}  // namespace

BenchInstance fp8_gemm_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  if (s.kernel != 0) return gemm_instance(rt, std::max<int64_t>(tokens, 1), 128, 128, DType::bf16, false);
  return gemm_instance(rt, std::max<int64_t>(tokens, 1), s.params[0], s.params[1], static_cast<DType>(s.params[2]), false);
}

}  // namespace kiln::detail
