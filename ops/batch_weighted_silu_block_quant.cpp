// Host recipe: batched prob-weighted SwiGLU + fp8 1×128 block quantization for routed experts, forward and backward
// (templates/kiln/batch_weighted_silu_block_quant.cuh). Spec: ../shared/spec/linghe-kernels.md §2, §7.3–7.4.
//
// Per call: a one-CTA schedule kernel reads counts [E] on the device and writes the token-block schedule into a
// stream-ordered workspace; the persistent tile kernel walks it (grid sized from the bound Σ ceil(c_e/128) ≤
// (M + 127·E)/128, so the host never reads the counts); the backward adds a dprob reduction over column blocks.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <vector>

#include "kiln/ops/silu.hpp"
#include "kiln/silu_block_quant_args.h"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/silu.cpp: a prepared batched instance (32-expert style counts summing to `tokens`).
BenchInstance batch_silu_bench_instance(Runtime& rt, int64_t tokens, int64_t E, int64_t n, bool bwd, int mode,
                                        bool round);
// ops/silu_block_quant.cpp: the tile kernel both families run (params, default config, search space, args, launch)
// and the backward's g check.
void silu_tile_spec(Specialization& s, bool batched, int64_t n, int mode, bool round);
void silu_tile_space(const Specialization& base, bool batched, std::vector<Specialization>& out);
SiluBlockQuantArgs silu_tile_args(const TensorRef& x, const TensorRef* g, const SiluBlockQuantOutputs& out, int64_t M);
void check_silu_g(const Check& ck, const TensorRef& g, int64_t M, int64_t n);
int64_t check_silu_x(const Check& ck, const TensorRef& x);
void launch_silu_tiles(Runtime::Impl& impl, Specialization s, int64_t M, int64_t tiles, const SiluBlockQuantArgs& a,
                       bool pdl, Stream stream);
}  // namespace detail

namespace {
using namespace detail;

enum : uint32_t { kFwd = 0, kBwd = 1, kSchedule = 2, kDwReduce = 3 };
enum { P_N, P_MODE, P_ROUND };
enum { C_STAGES, C_TABLE, C_CODEBUF };
// kDefaultNote — see ops/silu_block_quant.cpp (both families share the tile kernel and its search space).

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/batch_weighted_silu_block_quant.cuh\"\n";
  const auto& p = s.params;
  switch (s.kernel) {
    case kSchedule: name = "kiln::silu_schedule_kernel"; break;
    case kDwReduce: name = fmt::format("kiln::silu_dw_reduce_kernel<{}>", p[P_N] / 128); break;
    default:
      name = fmt::format("kiln::silu_tile_kernel<{}, {}, true, {}, {}, {}, {}, {}>", p[P_N], s.kernel == kBwd,
                         p[P_MODE], p[P_ROUND] != 0, s.config[C_STAGES], s.config[C_TABLE], s.config[C_CODEBUF]);
  }
}

int smem_bytes(const Specialization& s) {
  if (s.kernel != kFwd && s.kernel != kBwd) return 0;
  return silu_tile_smem_bytes(s.kernel == kBwd, true, s.config[C_STAGES], s.config[C_TABLE], s.config[C_CODEBUF]);
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);

FamilyDef g_family{"batch_weighted_silu_block_quant", {"fwd", "bwd", "schedule", "dw_reduce"},
                   {"n", "mode", "round_scale"}, {"stages", "sigma_table", "code_buffers"}, render, smem_bytes, enumerate,
                   search_space, tune_instance};

Specialization make_spec(Arch arch, uint32_t kernel, int64_t n, int mode, bool round) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kernel;
  if (kernel == kFwd || kernel == kBwd) {
    silu_tile_spec(s, true, n, mode, round);
  } else if (kernel == kDwReduce) {
    s.params[P_N] = n;
  }
  return s;
}

void search_space(const Specialization& base, std::vector<Specialization>& out) {
  Specialization s = base;
  s.config = {};
  if (base.kernel != kFwd && base.kernel != kBwd) {
    out.push_back(s);
    return;
  }
  silu_tile_space(base, true, out);
}

// Routed experts: n = moe_intermediate_size.
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  const int64_t n = m.moe_intermediate_size;
  if (m.num_experts <= 0 || n <= 0 || n % 128 != 0 || n > kSiluMaxN) return;
  // Output mode 2 (both layouts, what a training step uses) with power-of-two scales (the fp8 blockwise recipes'
  // default); the other modes and scale rule compile on first use (prewarm stays cheap: these kernels are large).
  out.push_back(make_spec(arch, kFwd, n, 2, true));
  out.push_back(make_spec(arch, kBwd, n, 2, true));
  out.push_back(make_spec(arch, kSchedule, 0, 0, false));
  out.push_back(make_spec(arch, kDwReduce, n, 0, false));
}

BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  return batch_silu_bench_instance(rt, tokens, 32, s.params[P_N], s.kernel == kBwd,
                                   static_cast<int>(s.params[P_MODE]), s.params[P_ROUND] != 0);
}

struct Common {
  int64_t M = 0, n = 0, E = 0;
};

Common check_inputs(const Check& ck, const TensorRef& x, const TensorRef& prob, const TensorRef& counts) {
  Common c;
  c.n = check_silu_x(ck, x);
  c.M = x.shape[0];
  ck.dtype("prob", prob, {DType::f32});
  if (!((prob.ndim == 1 && prob.shape[0] == c.M) || (prob.ndim == 2 && prob.shape[0] == c.M && prob.shape[1] == 1)))
    ck.shape_error("prob", fmt::format("expected [{}] or [{}, 1] (one weight per row of x), got {}", c.M, c.M,
                                       shape_str(prob)));
  ck.contiguous("prob", prob);
  if (c.M > 0) ck.pointer("prob", prob, 4);
  ck.dtype("counts", counts, {DType::i32});
  if (counts.ndim != 1 || counts.shape[0] < 1)
    ck.shape_error("counts", fmt::format("expected [E] with E ≥ 1 experts, got {}", shape_str(counts)));
  ck.contiguous("counts", counts);
  ck.pointer("counts", counts, 4);
  c.E = counts.shape[0];
  ck.fits_int32("counts", c.E, "E (experts)");
  return c;
}

// Flat per-expert segmented outputs (§2). Returns the transposed-scale capacity in token blocks.
int64_t check_outputs(const Check& ck, const SiluBlockQuantOutputs& o, const Common& c, int64_t W, bool row,
                      bool col) {
  if (row) {
    ck.tensor("q", o.q, {DType::e4m3}, {c.M, W}, 16);
    ck.tensor("q_scale", o.q_scale, {DType::f32}, {c.M * (W / 128)}, 4);
  }
  int64_t cap = batch_weighted_silu_max_token_blocks(c.M, c.E);
  if (col) {
    ck.tensor("qT", o.qT, {DType::e4m3}, {c.M * W}, 16);
    ck.dtype("qT_scale", o.qT_scale, {DType::f32});
    if (o.qT_scale.ndim != 1 || o.qT_scale.shape[0] % W != 0)
      ck.shape_error("qT_scale", fmt::format("expected a flat [L] buffer with L a multiple of {} (Σ_e ceil(c_e/128) "
                                             "rows of {}), got {}", W, W, shape_str(o.qT_scale)));
    ck.contiguous("qT_scale", o.qT_scale);
    if (o.qT_scale.numel() > 0) ck.pointer("qT_scale", o.qT_scale, 4);
    cap = std::min(cap, o.qT_scale.shape[0] / W);
  }
  return cap;
}

void check_status(const Check& ck, const TensorRef& status) {
  if (status.defined()) ck.tensor("status", status, {DType::i32}, {1}, 4);
}

// Workspace: the schedule (4 + 4·capacity ints), then (backward) the dprob partials [n/128, M] fp32.
struct Workspace {
  ScratchBuffer scratch;
  CUdeviceptr base = 0;
  int* ws = nullptr;
  float* partial = nullptr;
};

Workspace alloc_workspace(Runtime::Impl& impl, int64_t capacity, int64_t partial_floats, Stream stream) {
  const size_t sched_bytes = (static_cast<size_t>(4 + 4 * capacity) * 4 + 255) / 256 * 256;
  Workspace w;
  static const char owner = 0;  // (the schedule kernel writes the schedule, the tiles their partials, every call)
  w.scratch = impl.scratch(&owner, sched_bytes + static_cast<size_t>(partial_floats) * 4, stream);
  w.base = w.scratch.ptr;
  w.ws = reinterpret_cast<int*>(w.base);
  if (partial_floats > 0) w.partial = reinterpret_cast<float*>(w.base + sched_bytes);
  return w;
}

void launch_schedule(Runtime::Impl& impl, const Common& c, const TensorRef& counts, int64_t capacity, bool trailing,
                     int* ws, const TensorRef& status, Stream stream) {
  SiluScheduleArgs s{static_cast<const int*>(counts.data), static_cast<int>(c.E), static_cast<int>(c.M),
                     trailing ? 1 : 0, static_cast<int>(capacity), ws, static_cast<int*>(status.data)};
  LaunchDims d;
  d.block[0] = kSiluScheduleThreads;
  impl.launch(make_spec(impl.target_arch(), kSchedule, 0, 0, false), d, stream, s);
}

void launch_tiles(Runtime::Impl& impl, Specialization s, const Common& c, int64_t capacity,
                  const SiluBlockQuantArgs& a, Stream stream) {
  // PDL: the prologue overlaps the schedule kernel; the kernel waits for it (griddepcontrol.wait).
  launch_silu_tiles(impl, s, c.M, capacity * (c.n / 128), a, true, stream);
}

// options.check_counts: wait for the schedule and throw if the counts were invalid.
void finish(Runtime::Impl& impl, const Check& ck, const Common& c, const Workspace& w, bool sync_check, bool trailing,
            Stream stream) {
  int head[4] = {0, 0, 0, 0};
  if (sync_check) {
    check(driver().cuStreamSynchronize(reinterpret_cast<CUstream>(stream)), "cuStreamSynchronize");
    check(driver().cuMemcpyDtoH(head, w.base, sizeof head), "cuMemcpyDtoH");
  }
  impl.release_scratch(w.scratch, stream);
  if (!sync_check) return;
  if (head[1] == 0) return;
  if (head[3] >= 0) ck.invalid("counts", fmt::format("expected counts ≥ 0, got a negative count at expert {}", head[3]));
  if (trailing ? head[2] > c.M : head[2] != c.M)
    ck.invalid("counts", fmt::format("expected counts summing to {}M = {} (the rows of x), got Σ = {}{}",
                                     trailing ? "at most " : "", c.M, head[2], head[2] == INT32_MAX ? " or more" : ""));
  ck.invalid("counts", "expected Σ_e ceil(c_e/128) token blocks to fit qT_scale; they do not");
}

}  // namespace

KILN_REGISTER_FAMILY(batch_weighted_silu_block_quant, g_family)

int64_t batch_weighted_silu_max_token_blocks(int64_t M, int64_t E) { return (M + 127 * E) / 128; }

void batch_weighted_silu_block_quant_fwd(Runtime& rt, const TensorRef& x, const TensorRef& prob,
                                         const TensorRef& counts, const SiluBlockQuantOutputs& out,
                                         const TensorRef& status, const BatchSiluOptions& opts, Stream stream) {
  const Check ck{"batch_weighted_silu_block_quant_fwd"};
  const int mode = opts.output_mode;
  if (mode < 0 || mode > 2) ck.invalid("output_mode", fmt::format("expected 0, 1 or 2, got {}", mode));
  const Common c = check_inputs(ck, x, prob, counts);
  const int64_t capacity = check_outputs(ck, out, c, c.n, mode != 1, mode != 0);
  check_status(ck, status);
  if (capacity * (c.n / 128) > INT32_MAX / 2) ck.invalid("x", "too many tiles for int32 tile indices");
  if (c.M == 0 && !status.defined()) return;

  auto& impl = rt.impl();
  const Workspace w = alloc_workspace(impl, capacity, 0, stream);
  launch_schedule(impl, c, counts, capacity, opts.trailing_rows, w.ws, status, stream);
  if (c.M > 0) {
    SiluBlockQuantArgs a = silu_tile_args(x, nullptr, out, c.M);
    a.w = static_cast<const float*>(prob.data);
    a.schedule = w.ws;
    launch_tiles(impl, make_spec(impl.target_arch(), kFwd, c.n, mode, opts.round_scale), c, capacity, a, stream);
  }
  finish(impl, ck, c, w, opts.check_counts, opts.trailing_rows, stream);
}

void batch_weighted_silu_block_quant_bwd(Runtime& rt, const TensorRef& g, const TensorRef& x, const TensorRef& prob,
                                         const TensorRef& counts, const SiluBlockQuantOutputs& dx,
                                         const TensorRef& dprob, const TensorRef& status,
                                         const BatchSiluOptions& opts, Stream stream) {
  const Check ck{"batch_weighted_silu_block_quant_bwd"};
  const Common c = check_inputs(ck, x, prob, counts);
  check_silu_g(ck, g, c.M, c.n);
  const int64_t capacity = check_outputs(ck, dx, c, 2 * c.n, true, true);
  ck.dtype("dprob", dprob, {DType::f32});
  if (!((dprob.ndim == 1 && dprob.shape[0] == c.M) ||
        (dprob.ndim == 2 && dprob.shape[0] == c.M && dprob.shape[1] == 1)))
    ck.shape_error("dprob", fmt::format("expected [{}] or [{}, 1] (as prob), got {}", c.M, c.M, shape_str(dprob)));
  ck.contiguous("dprob", dprob);
  if (c.M > 0) ck.pointer("dprob", dprob, 4);
  check_status(ck, status);
  if (capacity * (c.n / 128) > INT32_MAX / 2) ck.invalid("x", "too many tiles for int32 tile indices");
  if (c.M == 0 && !status.defined()) return;

  auto& impl = rt.impl();
  const Workspace w = alloc_workspace(impl, capacity, (c.n / 128) * c.M, stream);
  launch_schedule(impl, c, counts, capacity, opts.trailing_rows, w.ws, status, stream);
  if (c.M > 0) {
    SiluBlockQuantArgs a = silu_tile_args(x, &g, dx, c.M);
    a.w = static_cast<const float*>(prob.data);
    a.dw_partial = w.partial;
    a.schedule = w.ws;
    launch_tiles(impl, make_spec(impl.target_arch(), kBwd, c.n, 2, opts.round_scale), c, capacity, a, stream);

    SiluDwReduceArgs r{w.partial, w.ws, static_cast<float*>(dprob.data), static_cast<int>(c.M)};
    LaunchDims d;
    d.grid[0] = static_cast<unsigned>((c.M + 255) / 256);
    d.block[0] = 256;
    d.pdl = true;  // launches while the tile kernel drains; waits for it
    impl.launch(make_spec(impl.target_arch(), kDwReduce, c.n, 0, false), d, stream, r);
  }
  finish(impl, ck, c, w, opts.check_counts, opts.trailing_rows, stream);
}

}  // namespace kiln
