// Bench cases of the FP4 MoE's grouped GEMM alone (kiln bench, op "fp4_moe_gemm"; spec fp4-moe.md §11.5, §12.3) and
// the tuner's instance. Routed rows are spread uniformly over the local experts (segments padded to the token tile).
// Minimal bytes: the packed weights of every expert that has rows, once (scales included), the activation rows and
// the output rows once: at decode the weight bytes dominate (the row's GB/s is the weight-byte bandwidth). The shape
// names the useful FLOPs (2 · routed rows · weight rows · K) so TFLOP/s = flop / µs / 1e6.
#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "kiln/ops/fp4_moe.hpp"
#include "ops/fp4_moe_internal.hpp"
#include "runtime/bench.hpp"
#include "runtime/family.hpp"

namespace kiln::detail {
namespace {

// E experts of `rows` weight rows × K, `routed` rows spread uniformly; act: the GEMM1 activation (gated: rows = 2I),
// or gemm2 (plain, no activation).
BenchInstance gemm_instance(Runtime& rt, int64_t E, int64_t rows, int64_t K, Fp4WeightFormat f, bool gemm1,
                            Fp4MoeActivation act, int64_t routed, int tile_override = 0, int split = 0,
                            bool random_counts = false) {
  auto b = std::make_shared<DeviceBuffers>();
  const bool gated = gemm1 && (act == Fp4MoeActivation::Swiglu || act == Fp4MoeActivation::Geglu);
  const int64_t blk = f == Fp4WeightFormat::nvfp4 ? 16 : 32;
  const int tile = tile_override > 0 ? tile_override : fp4_moe_gemm_token_tile(rt, routed, E);
  std::vector<int32_t> counts(E, 0), offsets(E + 1, 0);
  if (random_counts) {  // each row to a uniformly random expert (a layer's binomial spread; fixed seed)
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (int64_t r = 0; r < routed; ++r) {
      h = h * 6364136223846793005ull + 1442695040888963407ull;
      ++counts[static_cast<size_t>((h >> 33) % static_cast<uint64_t>(E))];
    }
  } else {
    for (int64_t e = 0; e < E; ++e) counts[e] = static_cast<int32_t>(routed / E + (e < routed % E ? 1 : 0));
  }
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + (counts[e] + tile - 1) / tile * tile;
  const int64_t rows_cap = std::max<int64_t>(offsets[E], 1), out_cols = gated ? rows / 2 : rows;
  // Codes: random bytes (any nibble is a valid E2M1 code); scales: E4M3 1.0 / 2^−1 or UE8M0 2^0 / 2^−1.
  std::vector<uint8_t> codes(static_cast<size_t>(E * rows * K / 2)), sc(static_cast<size_t>(E * rows * K / blk));
  uint32_t x = bench_seed() | 1u;
  for (auto& c : codes) c = static_cast<uint8_t>((x = x * 1664525u + 1013904223u) >> 24);
  for (size_t i = 0; i < sc.size(); ++i)
    sc[i] = f == Fp4WeightFormat::nvfp4 ? (i % 3 == 0 ? 0x30 : 0x38) : (i % 3 == 0 ? 126 : 127);
  const TensorRef wq = TensorRef::contiguous(b->upload(codes.data(), codes.size()), DType::u8, {E, rows, K / 2});
  const TensorRef ws = TensorRef::contiguous(b->upload(sc.data(), sc.size()), DType::u8, {E, rows, K / blk});
  const int64_t pbytes = fp4_moe_packed_bytes(E, rows, K, f);
  const TensorRef pk = TensorRef::contiguous(b->alloc(pbytes), DType::u8, {pbytes});
  Fp4MoeGemmCall c;
  c.w = fp4_moe_prepack(rt, wq, ws, f, gated, pk, nullptr);
  c.act = b->random(DType::bf16, static_cast<size_t>(rows_cap * K), 1.0f, bench_seed());
  c.act_ld = K;
  c.expert_offsets = static_cast<const int32_t*>(b->upload(offsets.data(), offsets.size() * 4));
  c.expert_counts = static_cast<const int32_t*>(b->upload(counts.data(), counts.size() * 4));
  c.rows_cap = rows_cap;
  c.tiles_cap = routed;
  c.token_tile = tile;
  c.split = split;
  c.gemm1 = gemm1;
  c.activation = act;
  c.out = b->alloc(static_cast<size_t>(rows_cap * out_cols * 2));
  c.out_ld = out_cols;
  int64_t active = 0;
  for (int32_t n : counts) active += n > 0;
  BenchInstance inst;
  inst.keepalive = b;
  inst.bytes = static_cast<uint64_t>(pbytes / E * active + routed * K * 2 + routed * out_cols * 2);
  Runtime* r = &rt;
  inst.run = [=](Stream s) { fp4_moe_gemm(*r, c, s); };
  inst.outputs = {TensorRef::contiguous(c.out, DType::bf16, {rows_cap, out_cols})};
  inst.baseline_name = "none (cuBLASLt has no FP4 × bf16 grouped GEMM on sm_90)";
  return inst;
}

struct Case {
  const char* name;
  int64_t E, rows, K;
  Fp4WeightFormat f;
  bool gemm1;
  Fp4MoeActivation act;
  int64_t routed;
  int split = 0;  // forced split-K ranks (a measurement row), 0: the op's choice
  int tile = 0;   // forced token tile (a measurement row), 0: fp4_moe_gemm_token_tile's
  bool random_counts = false;  // rows to uniformly random experts instead of evenly spread
};

const BenchRegistrar registrar([](std::vector<BenchCase>& cases) {
  const Case all[] = {
      // DeepSeek-V3, EP slice of 32 local experts: GEMM1 H = 7168 → 2I = 4096, nvfp4, Swiglu.
      {"dsv3-ep32-gemm1", 32, 4096, 7168, Fp4WeightFormat::nvfp4, true, Fp4MoeActivation::Swiglu, 1024},
      {"dsv3-ep32-gemm1", 32, 4096, 7168, Fp4WeightFormat::nvfp4, true, Fp4MoeActivation::Swiglu, 8192},
      // gpt-oss-like decode: H = I = 2880, mxfp4, 128 experts, 4 routed rows (GEMM1 Swiglu 2I = 5760, GEMM2 H rows).
      {"gptoss-decode-gemm1", 128, 5760, 2880, Fp4WeightFormat::mxfp4, true, Fp4MoeActivation::Swiglu, 4},
      {"gptoss-decode-gemm2", 128, 2880, 2880, Fp4WeightFormat::mxfp4, false, Fp4MoeActivation::Identity, 4},
      // The same with split-K forced (the default picks 2 for GEMM1, 4 for GEMM2 on 132 SMs).
      {"gptoss-decode-gemm1", 128, 5760, 2880, Fp4WeightFormat::mxfp4, true, Fp4MoeActivation::Swiglu, 4, 1},
      {"gptoss-decode-gemm1", 128, 5760, 2880, Fp4WeightFormat::mxfp4, true, Fp4MoeActivation::Swiglu, 4, 4},
      {"gptoss-decode-gemm2", 128, 2880, 2880, Fp4WeightFormat::mxfp4, false, Fp4MoeActivation::Identity, 4, 1},
      {"gptoss-decode-gemm2", 128, 2880, 2880, Fp4WeightFormat::mxfp4, false, Fp4MoeActivation::Identity, 4, 2},
      // Prefill GEMM2s: DeepSeek-V3's EP slice (W2 7168 × 2048) and gpt-oss (2880 × 2880, 8192 tokens × top-4).
      {"dsv3-ep32-gemm2", 32, 7168, 2048, Fp4WeightFormat::nvfp4, false, Fp4MoeActivation::Identity, 8192},
      {"gptoss-gemm1", 128, 5760, 2880, Fp4WeightFormat::mxfp4, true, Fp4MoeActivation::Swiglu, 32768},
      {"gptoss-gemm2", 128, 2880, 2880, Fp4WeightFormat::mxfp4, false, Fp4MoeActivation::Identity, 32768},
      // Rows to random experts (what a layer sees: segments not multiples of the tile), token tile 128 and 64.
      {"dsv3-ep32-gemm1", 32, 4096, 7168, Fp4WeightFormat::nvfp4, true, Fp4MoeActivation::Swiglu, 8192, 0, 128, true},
      {"dsv3-ep32-gemm1", 32, 4096, 7168, Fp4WeightFormat::nvfp4, true, Fp4MoeActivation::Swiglu, 8192, 0, 64, true},
      {"dsv3-ep32-gemm2", 32, 7168, 2048, Fp4WeightFormat::nvfp4, false, Fp4MoeActivation::Identity, 8192, 0, 128, true},
      {"dsv3-ep32-gemm2", 32, 7168, 2048, Fp4WeightFormat::nvfp4, false, Fp4MoeActivation::Identity, 8192, 0, 64, true},
  };
  for (const Case& k : all)
    cases.push_back({"fp4_moe_gemm",
                     fmt::format("{} E={} rows={} K={} {} routed={} flop={}{}{}{}", k.name, k.E, k.rows, k.K,
                                 k.f == Fp4WeightFormat::nvfp4 ? "nvfp4" : "mxfp4", k.routed,
                                 2 * k.routed * k.rows * k.K, k.split > 0 ? fmt::format(" split={}", k.split) : "",
                                 k.tile > 0 ? fmt::format(" tile={}", k.tile) : "",
                                 k.random_counts ? " random-experts" : ""),
                     [=](Runtime& rt) {
                       return gemm_instance(rt, k.E, k.rows, k.K, k.f, k.gemm1, k.act, k.routed, k.tile, k.split,
                                            k.random_counts);
                     }});
});

}  // namespace

// The tuner's instance: `tokens` routed rows over 32 experts of 4096 × 7168 (DeepSeek-V3's EP slice shape) in the
// specialization's format and activation, at the specialization's token tile (the layer passes it to the GEMM, so
// the op does not pick it from the count).
BenchInstance fp4_moe_gemm_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  const auto act = static_cast<Fp4MoeActivation>(s.params[2]);
  const bool gated = act == Fp4MoeActivation::Swiglu || act == Fp4MoeActivation::Geglu;
  return gemm_instance(rt, 32, gated ? 4096 : 2048, 7168, static_cast<Fp4WeightFormat>(s.params[1]), true, act,
                       std::max<int64_t>(tokens, 1), static_cast<int>(s.params[0]));
}

}  // namespace kiln::detail
