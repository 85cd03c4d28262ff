// Bench cases of the SiLU + block-quant families (kiln bench), at the target shapes: the shared expert
// (Ling-mini-2.0: x [16384, 1024], n = 512) and 32 routed experts with counts in [2048, 6144] (multiples of 16,
// ≈ 131k rows; x [rows, 2048], n = 1024); power-of-two scales, output_mode 2. Bytes are the minimal traffic: every
// input read once, every output written once. The op/shape strings match bench/torch/silu.py.
#include <fmt/format.h>

#include <array>
#include <memory>
#include <random>
#include <vector>

#include "kiln/errors.hpp"
#include "kiln/ops/silu.hpp"
#include "runtime/bench.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"

namespace kiln::detail {
std::vector<std::array<int, 3>> silu_tile_configs(bool bwd, bool batched);  // ops/silu_block_quant.cpp

// The batched shape: 32 experts, c_e = 2048 + 16·((97·e + 31) mod 257) ∈ [2048, 6144] (bench/torch/silu.py
// computes the same list).
std::vector<int> silu_bench_counts() {
  std::vector<int> c(32);
  for (int e = 0; e < 32; ++e) c[e] = 2048 + 16 * ((97 * e + 31) % 257);
  return c;
}

BenchInstance silu_bench_instance(Runtime& rt, int64_t M, int64_t n, bool bwd, int mode, bool round) {
  auto b = std::make_shared<DeviceBuffers>();
  const int64_t W = bwd ? 2 * n : n, mb = (M + 127) / 128;
  const TensorRef x =
      TensorRef::contiguous(b->random(DType::bf16, M * 2 * n, 1.0f, bench_seed()), DType::bf16, {M, 2 * n});
  SiluBlockQuantOutputs out;
  const bool row = bwd || mode != 1, col = bwd || mode != 0;
  if (row) {
    out.q = TensorRef::contiguous(b->alloc(M * W), DType::e4m3, {M, W});
    out.q_scale = TensorRef::contiguous(b->alloc(W / 128 * M * 4), DType::f32, {W / 128, M});
  }
  if (col) {
    out.qT = TensorRef::contiguous(b->alloc(M * W), DType::e4m3, {W, M});
    out.qT_scale = TensorRef::contiguous(b->alloc(mb * W * 4), DType::f32, {mb, W});
  }
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = M * 2 * n * 2 + (row ? M * W + W / 128 * M * 4 : 0) + (col ? M * W + mb * W * 4 : 0);
  for (const TensorRef* t : {&out.q, &out.q_scale, &out.qT, &out.qT_scale})
    if (t->defined()) inst.outputs.push_back(*t);
  Runtime* r = &rt;
  if (bwd) {
    const TensorRef g = TensorRef::contiguous(b->random(DType::bf16, M * n, 1.0f, bench_seed()), DType::bf16, {M, n});
    inst.bytes += M * n * 2;
    inst.run = [=](Stream s) { silu_block_quant_bwd(*r, g, x, out, round, s); };
  } else {
    inst.run = [=](Stream s) { silu_block_quant_fwd(*r, x, out, {round, mode}, s); };
  }
  return inst;
}

BenchInstance batch_silu_instance(Runtime& rt, const std::vector<int>& counts, int64_t n, bool bwd, int mode,
                                  bool round) {
  auto b = std::make_shared<DeviceBuffers>();
  int64_t M = 0, blocks = 0;
  for (int c : counts) {
    M += c;
    blocks += (c + 127) / 128;
  }
  const int64_t E = static_cast<int64_t>(counts.size());
  const int64_t W = bwd ? 2 * n : n;
  const TensorRef x =
      TensorRef::contiguous(b->random(DType::bf16, M * 2 * n, 1.0f, bench_seed()), DType::bf16, {M, 2 * n});
  std::vector<float> p(static_cast<size_t>(M));
  std::mt19937 rng(bench_seed());
  std::uniform_real_distribution<float> u(0.05f, 1.0f);
  for (auto& v : p) v = u(rng);
  const TensorRef prob = TensorRef::contiguous(b->upload(p.data(), M * 4), DType::f32, {M});
  const TensorRef cnt = TensorRef::contiguous(b->upload(counts.data(), E * 4), DType::i32, {E});
  SiluBlockQuantOutputs out;
  const bool row = bwd || mode != 1, col = bwd || mode != 0;
  if (row) {
    out.q = TensorRef::contiguous(b->alloc(M * W), DType::e4m3, {M, W});
    out.q_scale = TensorRef::contiguous(b->alloc(W / 128 * M * 4), DType::f32, {W / 128 * M});
  }
  if (col) {
    out.qT = TensorRef::contiguous(b->alloc(M * W), DType::e4m3, {M * W});
    out.qT_scale = TensorRef::contiguous(b->alloc(blocks * W * 4), DType::f32, {blocks * W});
  }
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = M * 2 * n * 2 + M * 4 + E * 4 + (row ? M * W + W / 128 * M * 4 : 0) + (col ? M * W + blocks * W * 4 : 0);
  for (const TensorRef* t : {&out.q, &out.q_scale, &out.qT, &out.qT_scale})
    if (t->defined()) inst.outputs.push_back(*t);
  Runtime* r = &rt;
  if (bwd) {
    const TensorRef g = TensorRef::contiguous(b->random(DType::bf16, M * n, 1.0f, bench_seed()), DType::bf16, {M, n});
    const TensorRef dprob = TensorRef::contiguous(b->alloc(M * 4), DType::f32, {M});
    inst.bytes += M * n * 2 + M * 4;
    inst.outputs.push_back(dprob);
    inst.run = [=](Stream s) {
      batch_weighted_silu_block_quant_bwd(*r, g, x, prob, cnt, out, dprob, {}, {round, 2, false}, s);
    };
  } else {
    inst.run = [=](Stream s) {
      batch_weighted_silu_block_quant_fwd(*r, x, prob, cnt, out, {}, {round, mode, false}, s);
    };
  }
  return inst;
}

// The tuner's instance: `tokens` rows split as evenly as possible over E experts.
BenchInstance batch_silu_bench_instance(Runtime& rt, int64_t tokens, int64_t E, int64_t n, bool bwd, int mode,
                                        bool round) {
  std::vector<int> counts(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) counts[e] = static_cast<int>(tokens / E + (e < tokens % E ? 1 : 0));
  return batch_silu_instance(rt, counts, n, bwd, mode, round);
}

namespace {

// The same instance with the tile kernel's config forced to another search-space point (the tuner's forced-config
// hook), so that one bench run measures every variant.
BenchCase with_config(BenchCase c, const char* family, bool bwd, int64_t n, int mode, int stages, int table,
                      int code_buffers) {
  c.shape += fmt::format(" stages={} sigma_table={} code_buffers={}", stages, table, code_buffers);
  auto prep = c.prepare;
  c.prepare = [prep, family, bwd, n, mode, stages, table, code_buffers](Runtime& rt) {
    Specialization cand;
    cand.family = find_family(family);
    if (!cand.family) throw kiln::Error(fmt::format("bench: no family {}", family));
    cand.arch = rt.impl().target_arch();
    cand.kernel = bwd ? 1 : 0;
    cand.params[0] = n;
    cand.params[1] = bwd ? 2 : mode;
    cand.params[2] = 1;
    cand.config[0] = stages;
    cand.config[1] = table;
    cand.config[2] = code_buffers;
    return with_forced_config(prep(rt), cand, "SiLU");
  };
  return c;
}

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  const std::vector<int> counts = silu_bench_counts();
  int64_t M = 0;
  for (int c : counts) M += c;
  const BenchCase main[] = {
      {"silu_block_quant_fwd", "M=16384 n=512 mode=2 round_scale=1",
       [](Runtime& rt) { return silu_bench_instance(rt, 16384, 512, false, 2, true); }},
      {"silu_block_quant_bwd", "M=16384 n=512 round_scale=1",
       [](Runtime& rt) { return silu_bench_instance(rt, 16384, 512, true, 2, true); }},
      {"batch_weighted_silu_block_quant_fwd", fmt::format("E=32 M={} n=1024 mode=2 round_scale=1", M),
       [counts](Runtime& rt) { return batch_silu_instance(rt, counts, 1024, false, 2, true); }},
      {"batch_weighted_silu_block_quant_bwd", fmt::format("E=32 M={} n=1024 round_scale=1", M),
       [counts](Runtime& rt) { return batch_silu_instance(rt, counts, 1024, true, 2, true); }},
  };
  for (const BenchCase& c : main) cases.push_back(c);
  // Every other search-space point of each case (the first point is the heuristic default).
  for (int i = 0; i < 4; ++i) {
    const bool bwd = i % 2 == 1;
    const char* family = i < 2 ? "silu_block_quant" : "batch_weighted_silu_block_quant";
    const std::vector<std::array<int, 3>> configs = silu_tile_configs(bwd, i >= 2);
    for (size_t k = 1; k < configs.size(); ++k)
      cases.push_back(
          with_config(main[i], family, bwd, i < 2 ? 512 : 1024, 2, configs[k][0], configs[k][1], configs[k][2]));
  }
  // Row-wise only (the forward's recomputation-free path), default config.
  cases.push_back({"silu_block_quant_fwd", "M=16384 n=512 mode=0 round_scale=1",
                   [](Runtime& rt) { return silu_bench_instance(rt, 16384, 512, false, 0, true); }});
  // round_scale = false (linghe's default): scales amax/448, values divided by them (fp8.cuh's e4m3x4_div).
  cases.push_back({"silu_block_quant_fwd", "M=16384 n=512 mode=2 round_scale=0",
                   [](Runtime& rt) { return silu_bench_instance(rt, 16384, 512, false, 2, false); }});
  cases.push_back({"silu_block_quant_bwd", "M=16384 n=512 round_scale=0",
                   [](Runtime& rt) { return silu_bench_instance(rt, 16384, 512, true, 2, false); }});
  cases.push_back({"batch_weighted_silu_block_quant_fwd", fmt::format("E=32 M={} n=1024 mode=2 round_scale=0", M),
                   [counts](Runtime& rt) { return batch_silu_instance(rt, counts, 1024, false, 2, false); }});
  cases.push_back({"batch_weighted_silu_block_quant_bwd", fmt::format("E=32 M={} n=1024 round_scale=0", M),
                   [counts](Runtime& rt) { return batch_silu_instance(rt, counts, 1024, true, 2, false); }});
});

}  // namespace
}  // namespace kiln::detail
