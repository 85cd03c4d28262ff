// Host recipe: SwiGLU + fp8 1×128 block quantization for the shared/dense expert, forward and backward
// (templates/kiln/silu_block_quant.cuh). Spec: ../shared/spec/linghe-kernels.md §2, §7.1–7.2.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <vector>

#include "kiln/ops/silu.hpp"
#include "kiln/silu_block_quant_args.h"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/silu.cpp: a prepared instance at the bench's shapes (also what the tuner runs).
BenchInstance silu_bench_instance(Runtime& rt, int64_t M, int64_t n, bool bwd, int mode, bool round);
// The tile kernel's search space (both SiLU families): {stages, sigma_table, code_buffers} points, the heuristic
// default first. stages: 2 = two buffers (the next tile streams in while this one is computed), 1 = one buffer
// refilled per warp right after it is read (the one-stage forward runs two CTAs an SM), 3 = two buffers refilled two
// tiles ahead, 4 = as 2 with both buffers issued before the σ table's fill. sigma_table: 1 the variant's table,
// 2 the complete table (the one-stage backward has the shared memory for it: no fallback branch), 3 (forward) the
// silu(a) table (one multiply and the gate's unpacking less per value), 4 (backward) the {σ, derivative factor}
// table (three operations less per value, 8-byte lookups). code_buffers: 2 = the transposed codes staged by tile
// parity and stored after the next tile's barrier (one block barrier a tile instead of two; the forward's and the
// one-stage backward's points only, as it needs every output half staged at once). Points measured far slower were
// dropped (σ computed without a table: +30–50 %; bench/NOTES.md). Both families have the same points; only the
// batched forward's default differs (one code buffer: 276.5 vs 278.7 µs at the shape, session 4 round 2).
std::vector<std::array<int, 3>> silu_tile_configs(bool bwd, bool batched) {
  if (bwd) return {{1, 2, 2}, {1, 2, 1}, {1, 4, 1}, {1, 1, 1}, {2, 1, 1}, {3, 1, 1}};
  if (batched) return {{2, 1, 1}, {2, 1, 2}, {4, 1, 2}, {2, 3, 2}, {4, 1, 1}, {2, 3, 1}, {1, 1, 1}, {3, 1, 1}};
  return {{2, 1, 2}, {4, 1, 2}, {2, 3, 2}, {2, 1, 1}, {4, 1, 1}, {2, 3, 1}, {1, 1, 1}, {3, 1, 1}};
}
}  // namespace detail

namespace {
using namespace detail;

enum : uint32_t { kFwd = 0, kBwd = 1 };
enum { P_N, P_MODE, P_ROUND };
enum { C_STAGES, C_TABLE, C_CODEBUF };
// kDefaultNote — measured on H100 (bench/NOTES.md): the forward runs fastest with two buffers (batched 277 vs 298 µs
// one buffer), the backward with one buffer refilled per warp and the complete σ table (shared 32.5 vs 34.6 two
// buffers, batched 479 vs 527); two code buffers everywhere but in the batched forward (session 4 rounds 1–2: shared
// forward 18.8 vs 18.9 µs, backward 28.9 vs 29.8, batched backward 479 vs 510; batched forward 278.7 vs 276.5).
// silu_tile_configs lists the default first.

}  // namespace

namespace detail {
// Both families' tile kernel, as they lay it out in a Specialization (params n, mode, round_scale; config stages,
// sigma_table, code_buffers): its params and heuristic default config (bwd: kernel 1, mode 2) …
void silu_tile_spec(Specialization& s, bool batched, int64_t n, int mode, bool round) {
  const bool bwd = s.kernel == kBwd;
  s.params[P_N] = n;
  s.params[P_MODE] = bwd ? 2 : mode;
  s.params[P_ROUND] = round;
  const std::array<int, 3> d = silu_tile_configs(bwd, batched)[0];  // see kDefaultNote
  s.config[C_STAGES] = d[0];
  s.config[C_TABLE] = d[1];
  s.config[C_CODEBUF] = d[2];
}
// … the points of its search space (the default first) …
void silu_tile_space(const Specialization& base, bool batched, std::vector<Specialization>& out) {
  Specialization s = base;
  s.config = {};
  for (const auto& [stages, table, code_buffers] : silu_tile_configs(base.kernel == kBwd, batched)) {
    s.config[C_STAGES] = stages;
    s.config[C_TABLE] = table;
    s.config[C_CODEBUF] = code_buffers;
    out.push_back(s);
  }
}
// … its pointers: x (and g, the backward's), the outputs, and the row count …
SiluBlockQuantArgs silu_tile_args(const TensorRef& x, const TensorRef* g, const SiluBlockQuantOutputs& out, int64_t M) {
  SiluBlockQuantArgs a{};
  a.x = x.data;
  a.x_stride = x.strides[0];
  if (g) {
    a.g = g->data;
    a.g_stride = g->strides[0];
  }
  a.q = static_cast<unsigned char*>(out.q.data);
  a.q_scale = static_cast<float*>(out.q_scale.data);
  a.qT = static_cast<unsigned char*>(out.qT.data);
  a.qT_scale = static_cast<float*>(out.qT_scale.data);
  a.M = static_cast<int>(M);
  return a;
}
// … its input x: [M, 2n] bf16 with 16-byte aligned rows (returns n) …
int64_t check_silu_x(const Check& ck, const TensorRef& x) {
  ck.dtype("x", x, {DType::bf16});
  ck.rows("x", x, 16);
  const int64_t two_n = x.shape[1];
  if (two_n <= 0 || two_n % 256 != 0 || two_n / 2 > kSiluMaxN)
    ck.shape_error("x", fmt::format("expected [M, 2n] with n a positive multiple of 128 (≤ {}), got {}", kSiluMaxN,
                                    shape_str(x)));
  ck.fits_int32("x", x.shape[0], "M (rows)");
  if (x.shape[0] > 0) ck.pointer("x", x, 16);
  return two_n / 2;
}
// … the tile kernel's launch for either family: `s`'s tuned config at M rows, a persistent grid over `tiles` tiles
// (with PDL behind the batched family's schedule kernel) …
void launch_silu_tiles(Runtime::Impl& impl, Specialization s, int64_t M, int64_t tiles, const SiluBlockQuantArgs& a,
                       bool pdl, Stream stream) {
  s = impl.tuned(s, M);
  const int smem = s.family->dynamic_smem_bytes(s);
  const Kernel& k = impl.kernel(s);
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>(impl.persistent_grid(k, kSiluTileThreads, smem, tiles));
  d.block[0] = kSiluTileThreads;
  d.smem = static_cast<unsigned>(smem);
  d.pdl = pdl;
  impl.launch(k, d, stream, a);
}
// … and the backward's g: bf16 [M, n], rows 16-byte aligned (x is [M, 2n]).
void check_silu_g(const Check& ck, const TensorRef& g, int64_t M, int64_t n) {
  ck.dtype("g", g, {DType::bf16});
  ck.rows("g", g, 16);
  if (g.shape[0] != M || g.shape[1] != n)
    ck.shape_error("g", fmt::format("expected [{}, {}] (x is [M, 2n]), got {}", M, n, shape_str(g)));
  if (M > 0) ck.pointer("g", g, 16);
}
}  // namespace detail

namespace {

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/silu_block_quant.cuh\"\n";
  const auto& p = s.params;
  name = fmt::format("kiln::silu_tile_kernel<{}, {}, false, {}, {}, {}, {}, {}>", p[P_N], s.kernel == kBwd,
                     p[P_MODE], p[P_ROUND] != 0, s.config[C_STAGES], s.config[C_TABLE], s.config[C_CODEBUF]);
}

int smem_bytes(const Specialization& s) {
  return silu_tile_smem_bytes(s.kernel == kBwd, false, s.config[C_STAGES], s.config[C_TABLE], s.config[C_CODEBUF]);
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);

FamilyDef g_family{"silu_block_quant", {"fwd", "bwd"}, {"n", "mode", "round_scale"},
                   {"stages", "sigma_table", "code_buffers"}, render, smem_bytes, enumerate, search_space, tune_instance};

Specialization make_spec(Arch arch, uint32_t kernel, int64_t n, int mode, bool round) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kernel;
  silu_tile_spec(s, false, n, mode, round);
  return s;
}

void search_space(const Specialization& base, std::vector<Specialization>& out) { silu_tile_space(base, false, out); }

bool valid_n(int64_t n) { return n > 0 && n % 128 == 0 && n <= kSiluMaxN; }

// The shared expert (moe_intermediate_size × num_shared_experts) and the dense MLP (intermediate_size).
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  std::vector<int64_t> ns;
  if (m.num_shared_experts > 0) ns.push_back(static_cast<int64_t>(m.moe_intermediate_size) * m.num_shared_experts);
  ns.push_back(m.intermediate_size);
  std::sort(ns.begin(), ns.end());
  ns.erase(std::unique(ns.begin(), ns.end()), ns.end());
  for (int64_t n : ns) {
    if (!valid_n(n)) continue;
    // Output mode 2 (both layouts, what a training step uses) with power-of-two scales (the fp8 blockwise recipes'
    // default); the other modes and scale rule compile on first use (prewarm stays cheap: these kernels are large).
    out.push_back(make_spec(arch, kFwd, n, 2, true));
    out.push_back(make_spec(arch, kBwd, n, 2, true));
  }
}

BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  return silu_bench_instance(rt, tokens, s.params[P_N], s.kernel == kBwd, static_cast<int>(s.params[P_MODE]),
                             s.params[P_ROUND] != 0);
}


void check_outputs(const Check& ck, const SiluBlockQuantOutputs& o, int64_t M, int64_t W, bool row, bool col) {
  if (row) {
    ck.tensor("q", o.q, {DType::e4m3}, {M, W}, 16);
    ck.tensor("q_scale", o.q_scale, {DType::f32}, {W / 128, M}, 4);
  }
  if (col) {
    ck.tensor("qT", o.qT, {DType::e4m3}, {W, M}, 16);
    ck.tensor("qT_scale", o.qT_scale, {DType::f32}, {(M + 127) / 128, W}, 4);
  }
}

void launch(Runtime& rt, Specialization s, int64_t M, SiluBlockQuantArgs a, Stream stream) {
  const int64_t tiles = (M + 127) / 128 * (s.params[P_N] / 128);
  a.tiles = static_cast<int>(tiles);
  launch_silu_tiles(rt.impl(), s, M, tiles, a, false, stream);
}

}  // namespace

KILN_REGISTER_FAMILY(silu_block_quant, g_family)

void silu_block_quant_fwd(Runtime& rt, const TensorRef& x, const SiluBlockQuantOutputs& out,
                          const SiluBlockQuantOptions& opts, Stream stream) {
  const Check ck{"silu_block_quant_fwd"};
  const int mode = opts.output_mode;
  if (mode < 0 || mode > 2) ck.invalid("output_mode", fmt::format("expected 0, 1 or 2, got {}", mode));
  const int64_t n = check_silu_x(ck, x);
  const int64_t M = x.shape[0];
  if ((M + 127) / 128 * (n / 128) > INT32_MAX / 2) ck.invalid("x", fmt::format("M = {} with n = {}: too many tiles", M, n));
  check_outputs(ck, out, M, n, mode != 1, mode != 0);
  if (M == 0) return;

  launch(rt, make_spec(rt.impl().target_arch(), kFwd, n, mode, opts.round_scale), M, silu_tile_args(x, nullptr, out, M),
         stream);
}

void silu_block_quant_bwd(Runtime& rt, const TensorRef& g, const TensorRef& x, const SiluBlockQuantOutputs& dx,
                          bool round_scale, Stream stream) {
  const Check ck{"silu_block_quant_bwd"};
  const int64_t n = check_silu_x(ck, x);
  const int64_t M = x.shape[0];
  check_silu_g(ck, g, M, n);
  if ((M + 127) / 128 * (n / 128) > INT32_MAX / 2) ck.invalid("x", fmt::format("M = {} with n = {}: too many tiles", M, n));
  check_outputs(ck, dx, M, 2 * n, true, true);
  if (M == 0) return;

  launch(rt, make_spec(rt.impl().target_arch(), kBwd, n, 2, round_scale), M, silu_tile_args(x, &g, dx, M), stream);
}

}  // namespace kiln
