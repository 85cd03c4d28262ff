// Bench cases of the list reductions (kiln bench): grad norm (Σx²) and zero count over the lists — 32 fp32
// tensors of 4096 × 8192 (4.29 GB, linghe's test) and an expert-parallel gradient list of 1423 fp32 tensors of mixed
// sizes (11.4 GB) — and the tuning instances. Bytes: every element read once.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "kiln/ops/batch_reduce.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"

namespace kiln::detail {
namespace {

// n fp32 values of N(0, 1e-3) (about 1 in 500 exactly zero, as fp8-rounded gradients have some); the host draws
// 16 Mi values and device copies repeat them.
void fill_grad_like(void* dst, size_t n, uint32_t seed) {
  const size_t block = std::min<size_t>(n, size_t{1} << 24);
  std::vector<float> h(block);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1e-3f);
  for (size_t i = 0; i < block; ++i) h[i] = (rng() % 500 == 0) ? 0.f : dist(rng);
  copy_to_device(dst, h.data(), block * 4);
  const auto base = reinterpret_cast<CUdeviceptr>(dst);
  for (size_t done = block; done < n;) {
    const size_t k = std::min(done, n - done);
    check(driver().cuMemcpyDtoDAsync(base + done * 4, base, k * 4, nullptr), "cuMemcpyDtoDAsync");
    done += k;
  }
  device_synchronize();
}

// Element counts of a list: views into one buffer (as a trainer's contiguous main-grad buffer), 256-byte aligned.
BenchInstance list_instance(Runtime& rt, const std::vector<int64_t>& sizes, bool count_zero) {
  auto b = std::make_shared<DeviceBuffers>();
  int64_t total = 0;
  std::vector<int64_t> offsets;
  for (int64_t n : sizes) {
    offsets.push_back(total);
    total += (n + 63) / 64 * 64;
  }
  auto* base = static_cast<float*>(b->alloc(static_cast<size_t>(total) * 4));
  fill_grad_like(base, static_cast<size_t>(total), std::random_device{}());
  auto xs = std::make_shared<std::vector<TensorRef>>();
  uint64_t bytes = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    xs->push_back(TensorRef::contiguous(base + offsets[i], DType::f32, {sizes[i]}));
    bytes += static_cast<uint64_t>(sizes[i]) * 4;
  }
  const TensorRef out = TensorRef::contiguous(b->alloc(8), count_zero ? DType::i64 : DType::f32, {1});
  BenchInstance inst;
  auto keep =
      std::make_shared<std::pair<std::shared_ptr<DeviceBuffers>, std::shared_ptr<std::vector<TensorRef>>>>(b, xs);
  inst.keepalive = keep;
  inst.bytes = bytes + (count_zero ? 8 : 4);
  Runtime* r = &rt;
  if (count_zero)
    inst.run = [=](Stream s) { batch_count_zero(*r, *xs, out, s); };
  else
    inst.run = [=](Stream s) { batch_sum_with_ord(*r, *xs, out, BatchNormOptions{}, s); };
  inst.outputs = {out};
  return inst;
}

std::vector<int64_t> uniform_list() { return std::vector<int64_t>(32, int64_t{4096} * 8192); }

// One rank's gradients of a Ling-mini-like MoE under expert parallelism: 20 layers of (2 norms, q/k norms, qkv,
// o_proj, router, shared expert fc1/fc2, 31 local experts' fc1/fc2), plus embedding, final norm and output layer.
std::vector<int64_t> expert_parallel_list() {
  std::vector<int64_t> v;
  for (int layer = 0; layer < 20; ++layer) {
    for (int64_t n : {2048, 2048, 128, 128}) v.push_back(n);
    v.push_back(int64_t{3072} * 2048);  // qkv
    v.push_back(int64_t{2048} * 2048);  // o_proj
    v.push_back(int64_t{256} * 2048);   // router
    v.push_back(int64_t{1024} * 2048);  // shared expert fc1 (gate|up)
    v.push_back(int64_t{2048} * 512);   // shared expert fc2
    for (int e = 0; e < 31; ++e) {
      v.push_back(int64_t{1024} * 2048);
      v.push_back(int64_t{2048} * 512);
    }
  }
  v.push_back(int64_t{157184} * 2048);  // embedding
  v.push_back(2048);                    // final norm
  v.push_back(int64_t{157184} * 2048);  // output layer
  return v;
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  cases.push_back({"batch_sum_with_ord", "32x4096x8192 fp32 ord=2",
                   [](Runtime& rt) { return list_instance(rt, uniform_list(), false); }});
  cases.push_back({"batch_count_zero", "32x4096x8192 fp32",
                   [](Runtime& rt) { return list_instance(rt, uniform_list(), true); }});
  cases.push_back({"batch_sum_with_ord", "ep-list 1423 fp32 11.4GB ord=2",
                   [](Runtime& rt) { return list_instance(rt, expert_parallel_list(), false); }});
  cases.push_back({"batch_count_zero", "ep-list 1423 fp32 11.4GB",
                   [](Runtime& rt) { return list_instance(rt, expert_parallel_list(), true); }});
});

}  // namespace

// The tuner's instance: 32 fp32 tensors of tokens × 8192 (linghe's test list at tokens = 4096).
BenchInstance batch_reduce_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  return list_instance(rt, std::vector<int64_t>(32, std::max<int64_t>(tokens, 1) * 8192), s.params[0] == 3);
}

}  // namespace kiln::detail
