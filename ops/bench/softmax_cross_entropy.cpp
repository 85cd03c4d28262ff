// Bench cases of the softmax cross-entropy family (kiln bench) and its tuning instances. Bytes are the minimal
// traffic: the logits read once, dlogits written once (in place: the same buffer), labels and per-row outputs once.
// Shapes: the targets (M = 8192 tokens, Ling-mini-2.0's vocabulary 157184, bf16) and the other presets'
// vocabularies for the forward. Labels are checked through a caller flag (no host synchronization), as a training
// step would call the ops.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "kiln/ops/softmax_cross_entropy.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"

namespace kiln::detail {
// ops/softmax_cross_entropy.cpp: forces kernel 0 (fwd), 1 (fused) or 2 (bwd) to a launch shape (split 0: heuristic).
void softmax_cross_entropy_force_config(int kernel, int split, int threads, int unroll);

namespace {

// n values of N(0, sigma) (never 0) in `dtype`. The host draws at most 16 Mi values; larger buffers repeat that block
// (device-to-device copies), which is as good as fresh data for a streaming kernel and keeps setup to seconds.
void fill_random(void* dst, DType dtype, size_t n, float sigma, uint32_t seed) {
  const size_t eb = dtype_size(dtype);
  const size_t block = std::min<size_t>(n, size_t{1} << 24);
  std::vector<uint8_t> h(block * eb);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, sigma);
  for (size_t i = 0; i < block; ++i) {
    float f = dist(rng);
    if (f == 0.f) f = 1e-3f;
    if (dtype == DType::bf16) {
      const uint16_t b = bf16_bits(f);
      std::memcpy(&h[i * 2], &b, 2);
    } else if (dtype == DType::f16) {
      const uint16_t b = f16_bits(f);
      std::memcpy(&h[i * 2], &b, 2);
    } else {
      std::memcpy(&h[i * 4], &f, 4);
    }
  }
  copy_to_device(dst, h.data(), h.size());
  auto base = reinterpret_cast<CUdeviceptr>(dst);
  for (size_t done = block; done < n;) {
    const size_t k = std::min(done, n - done);
    check(driver().cuMemcpyDtoDAsync(base + done * eb, base, k * eb, nullptr), "cuMemcpyDtoDAsync");
    done += k;
  }
  device_synchronize();
}

void* random_labels(DeviceBuffers& b, DType dtype, int64_t M, int64_t V, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, V - 1);
  void* d = b.alloc(M * dtype_size(dtype));
  if (dtype == DType::i32) {
    std::vector<int32_t> h(M);
    for (auto& v : h) v = static_cast<int32_t>(dist(rng));
    copy_to_device(d, h.data(), h.size() * 4);
  } else {
    std::vector<int64_t> h(M);
    for (auto& v : h) v = dist(rng);
    copy_to_device(d, h.data(), h.size() * 8);
  }
  return d;
}

enum class Kind { fwd, bwd, fused };

BenchInstance ce_instance(Runtime& rt, Kind kind, int64_t M, int64_t V, DType dtype, DType label_dtype, bool smooth,
                          DType grad_dtype) {
  auto b = std::make_shared<DeviceBuffers>();
  const int64_t eb = static_cast<int64_t>(dtype_size(dtype)), lb = static_cast<int64_t>(dtype_size(label_dtype));
  void* x = b->alloc(M * V * eb);
  fill_random(x, dtype, M * V, 2.0f, bench_seed());
  const TensorRef logits = TensorRef::contiguous(x, dtype, {M, V});
  const TensorRef labels = TensorRef::contiguous(random_labels(*b, label_dtype, M, V, bench_seed()), label_dtype, {M});
  const TensorRef loss = TensorRef::contiguous(b->alloc(M * 4), DType::f32, {M});
  const TensorRef row_max = TensorRef::contiguous(b->alloc(M * 4), DType::f32, {M});
  const TensorRef sum_exp = TensorRef::contiguous(b->alloc(M * 4), DType::f32, {M});
  CrossEntropyOptions bopts;  // the backward's (it does not check labels: no flag)
  if (smooth) bopts.label_smoothing = 0.1f;
  CrossEntropyOptions opts = bopts;
  opts.bad_label_row = TensorRef::contiguous(b->alloc(4), DType::i32, {1});
  BenchInstance inst;
  inst.keepalive = b;
  Runtime* r = &rt;
  const uint64_t logits_bytes = static_cast<uint64_t>(M * V * eb);
  // The in-place kinds overwrite the logits: the tuner restores them from a copy before each checked run.
  auto keep_logits = [&] {
    if (logits_bytes == 0) return;
    void* x0 = b->alloc(logits_bytes);
    check(driver().cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(x0), reinterpret_cast<CUdeviceptr>(x),
                                     logits_bytes, nullptr),
          "cuMemcpyDtoDAsync");
    inst.restore = [=](Stream s) {
      check(driver().cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(x), reinterpret_cast<CUdeviceptr>(x0),
                                       logits_bytes, s),
            "cuMemcpyDtoDAsync (restore the logits)");
    };
  };
  switch (kind) {
    case Kind::fwd:
      inst.bytes = logits_bytes + M * lb + 3 * M * 4;
      inst.run = [=](Stream s) { softmax_cross_entropy_fwd(*r, logits, labels, loss, row_max, sum_exp, opts, s); };
      inst.outputs = {loss, row_max, sum_exp};
      break;
    case Kind::bwd: {
      softmax_cross_entropy_fwd(rt, logits, labels, loss, row_max, sum_exp, opts, nullptr);
      void* g = b->alloc(M * dtype_size(grad_dtype));
      fill_random(g, grad_dtype, M, 1e-4f, bench_seed());
      const TensorRef grad_loss = TensorRef::contiguous(g, grad_dtype, {M});
      inst.bytes = 2 * logits_bytes + M * lb + 2 * M * 4 + M * dtype_size(grad_dtype);
      // In place, as a training step runs it (the logits are not needed after the backward).
      inst.run = [=](Stream s) {
        softmax_cross_entropy_bwd(*r, logits, labels, row_max, sum_exp, grad_loss, logits, bopts, s);
      };
      inst.outputs = {logits};
      keep_logits();
      break;
    }
    case Kind::fused: {
      FusedCrossEntropyOptions f;
      f.reduction = LossReduction::mean;
      f.loss_total = TensorRef::contiguous(b->alloc(4), DType::f32, {1});
      inst.bytes = 2 * logits_bytes + M * lb + M * 4 + 4;
      inst.run = [=](Stream s) { softmax_cross_entropy_fused(*r, logits, labels, loss, logits, f, opts, s); };
      inst.outputs = {loss, logits};
      keep_logits();
      inst.baseline_name = "forward then backward (two passes over the logits)";
      inst.baseline = [=](Stream s) {
        softmax_cross_entropy_fwd(*r, logits, labels, loss, row_max, sum_exp, opts, s);
        softmax_cross_entropy_bwd(*r, logits, labels, row_max, sum_exp, loss, logits, bopts, s);
      };
      break;
    }
  }
  return inst;
}

// A case with a forced launch shape {split, threads, unroll} of `kernel` (a sweep point; the op's result is unchanged).
BenchInstance forced(BenchInstance inst, int kernel, std::array<int, 3> cfg) {
  auto run = inst.run;
  inst.run = [run, kernel, cfg](Stream s) {
    softmax_cross_entropy_force_config(kernel, cfg[0], cfg[1], cfg[2]);
    run(s);
    softmax_cross_entropy_force_config(kernel, 0, 0, 0);
  };
  inst.baseline = {};
  return inst;
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  constexpr int64_t M = 8192;
  for (int64_t V : {157184, 151936, 129280})
    cases.push_back({"softmax_cross_entropy_fwd", fmt::format("M={} V={} bf16", M, V), [V](Runtime& rt) {
                       return ce_instance(rt, Kind::fwd, M, V, DType::bf16, DType::i64, false, DType::f32);
                     }});
  cases.push_back({"softmax_cross_entropy_bwd", fmt::format("M={} V=157184 bf16 inplace", M), [](Runtime& rt) {
                     return ce_instance(rt, Kind::bwd, M, 157184, DType::bf16, DType::i64, false, DType::f32);
                   }});
  cases.push_back({"softmax_cross_entropy_fused", fmt::format("M={} V=157184 bf16 inplace mean", M), [](Runtime& rt) {
                     return ce_instance(rt, Kind::fused, M, 157184, DType::bf16, DType::i64, false, DType::f32);
                   }});
  // Launch-shape sweep points at the target shape (split x threads x loads in flight), until the tuner lands.
  const std::vector<std::pair<Kind, std::array<int, 3>>> sweep = {
      {Kind::fwd, {4, 512, 4}},  {Kind::fwd, {4, 256, 8}},  {Kind::bwd, {5, 512, 4}}, {Kind::bwd, {2, 512, 8}},
      {Kind::bwd, {1, 512, 8}},  {Kind::bwd, {1, 1024, 4}}, {Kind::fused, {8, 128, 0}}};
  for (const auto& [kind, cfg] : sweep) {
    const char* op = kind == Kind::fwd ? "softmax_cross_entropy_fwd" : kind == Kind::bwd ? "softmax_cross_entropy_bwd"
                                                                                         : "softmax_cross_entropy_fused";
    const std::string shape = fmt::format("M={} V=157184 bf16{} cfg={}x{}{}", M, kind == Kind::fwd ? "" : kind == Kind::bwd ? " inplace" : " inplace mean",
                                          cfg[0], cfg[1], cfg[2] ? fmt::format("x{}", cfg[2]) : std::string());
    const int kernel = kind == Kind::fwd ? 0 : kind == Kind::fused ? 1 : 2;
    cases.push_back({op, shape, [kind, kernel, cfg](Runtime& rt) {
                       return forced(ce_instance(rt, kind, M, 157184, DType::bf16, DType::i64, false, DType::f32),
                                     kernel, cfg);
                     }});
  }
});

}  // namespace

// The tuner's instance of a specialization: its kernel's op at `tokens` rows with the specialization's V and dtypes.
BenchInstance softmax_cross_entropy_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  const auto& p = s.params;
  const int64_t V = p[0] > 0 ? p[0] : 157184;
  const DType dtype = p[0] > 0 ? static_cast<DType>(p[1]) : DType::bf16;
  const DType label = static_cast<DType>(p[2]);
  const bool smooth = p[3] != 0;
  const DType grad = s.kernel == 2 ? static_cast<DType>(p[4]) : DType::f32;
  const Kind kind = s.kernel == 0 ? Kind::fwd : s.kernel == 2 ? Kind::bwd : Kind::fused;  // merge/batch: in fused
  return ce_instance(rt, kind, tokens, V, dtype, label, smooth, grad);
}

}  // namespace kiln::detail
