// tests/gpu/scratch_test.cpp — the runtime's per-call scratch (Runtime::Impl::scratch): the per-stream buffer that
// rms_norm_block_quant's mode-2 workspace and router_gemm_fp32_bwd's (without a caller workspace) use, against the
// stream-ordered pool allocation per call they used before (detail::scratch_per_call selects it).
//
//  * ScratchTest.*: what the buffer is (one per recipe and stream, grown, per call under capture), and that the ops
//    write the bits of the per-call path — itself checked against the CPU references by the ops' own tests — on two
//    calls on one stream, on a second stream, at a larger then a smaller shape, and in a captured graph whose replays
//    alternate with uncaptured calls on the same stream.
//  * ScratchMeasure.Launch (not in any ctest regex's way: run it by filter): the bench's method (L2 flushed before each
//    call, CUDA events around it) call by call in one process, every row once a round in a rotating order: an empty
//    kernel alone, with a pool allocation around it, with mode 2's launch shape; mode 2 at N = 2048 / 7168 and the
//    router backward with either scratch path. Prints per row the median, p10 and p90 of its calls and, per pair, the
//    median of the per-round differences and the share of rounds the second row won.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kiln/ops/rms_norm.hpp"
#include "kiln/ops/router_gemm.hpp"
#include "kiln/rms_norm_block_quant_stream_args.h"
#include "ops/bench/rms_norm.hpp"
#include "runtime/bench.hpp"
#include "runtime/driver.hpp"
#include "runtime/nvrtc_compiler.hpp"
#include "runtime/runtime_impl.hpp"
#include "measure_util.hpp"
#include "test_util.hpp"

namespace kiln::detail {
BenchInstance batch_silu_bench_instance(Runtime& rt, int64_t tokens, int64_t E, int64_t n, bool bwd, int mode,
                                        bool round);
}  // namespace kiln::detail

namespace kiln::test {
namespace {

const detail::Driver& drv() { return detail::driver(); }

// Sets detail::scratch_per_call for the scope (and restores it).
struct PerCallScope {
  explicit PerCallScope(bool on) : prev(detail::scratch_per_call.exchange(on)) {}
  ~PerCallScope() { detail::scratch_per_call.store(prev); }
  bool prev;
};

CUstream new_stream() {
  CUstream s = nullptr;
  detail::check(drv().cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  return s;
}

// Fills every output of `inst` with 0x55 bytes, in order on `s` (a non-blocking stream: no implicit order with the
// legacy stream's memsets).
void poison_outputs(detail::BenchInstance& inst, CUstream s) {
  for (const TensorRef& t : inst.outputs)
    detail::check(drv().cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(t.data), 0x55,
                                        static_cast<size_t>(t.numel()) * dtype_size(t.dtype), s),
                  "cuMemsetD8Async");
}

// Every output of `inst` after one call on `s` (the outputs poisoned first: a call must write them all).
std::vector<uint8_t> run_outputs(detail::BenchInstance& inst, CUstream s) {
  poison_outputs(inst, s);
  inst.run(reinterpret_cast<Stream>(s));
  detail::check(drv().cuStreamSynchronize(s), "cuStreamSynchronize");
  return download_outputs(inst);
}

// `inst` captured on `s` (thread-local mode) into an instantiated graph; the capture is ended whatever happens (a
// capture left open would fail every later allocation on this thread).
CUgraphExec capture(detail::BenchInstance& inst, CUstream s) {
  EXPECT_EQ(drv().cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), CUDA_SUCCESS);
  EXPECT_NO_THROW(inst.run(reinterpret_cast<Stream>(s)));
  CUgraph graph = nullptr;
  const CUresult end = drv().cuStreamEndCapture(s, &graph);
  EXPECT_EQ(end, CUDA_SUCCESS);
  CUgraphExec exec = nullptr;
  if (end == CUDA_SUCCESS && graph) {
    EXPECT_EQ(drv().cuGraphInstantiateWithFlags(&exec, graph, 0), CUDA_SUCCESS);
    drv().cuGraphDestroy(graph);
  }
  return exec;
}

// router_gemm_fp32_bwd at T × K → E without a caller workspace (the op's own scratch), as a bench instance.
detail::BenchInstance router_bwd_instance(Runtime& r, int64_t T, int64_t K, int64_t E, bool caller_workspace) {
  auto b = std::make_shared<detail::DeviceBuffers>();
  const uint32_t seed = detail::bench_seed();
  const TensorRef x = TensorRef::contiguous(b->random(DType::bf16, T * K, 1.0f, seed), DType::bf16, {T, K});
  const TensorRef w = TensorRef::contiguous(b->random(DType::bf16, E * K, 0.02f, seed + 1), DType::bf16, {E, K});
  const TensorRef g = TensorRef::contiguous(b->random(DType::f32, T * E, 1e-3f, seed + 2), DType::f32, {T, E});
  const TensorRef dx = TensorRef::contiguous(b->alloc(T * K * 2), DType::bf16, {T, K});
  const TensorRef dw = TensorRef::contiguous(b->alloc(E * K * 4), DType::f32, {E, K});
  const int64_t n = caller_workspace ? router_gemm_fp32_bwd_workspace_elems(r, T, K, E) : 0;
  const TensorRef ws = n > 0 ? TensorRef::contiguous(b->alloc(n * 4), DType::f32, {n}) : TensorRef{};
  detail::BenchInstance inst;
  inst.keepalive = b;
  Runtime* rp = &r;
  inst.run = [=](Stream s) { router_gemm_fp32_bwd(*rp, g, x, w, dx, dw, ws, s); };
  inst.outputs = {dx, dw};
  return inst;
}

class ScratchTest : public GpuTest {
 protected:
  void TearDown() override { detail::scratch_per_call.store(false); }
};

// The buffer itself: one per (recipe, stream), the same on the next call, grown to a power of two for a larger call
// and then serving smaller ones; per call (from the pool, freed by release_scratch) under capture or when forced.
TEST_F(ScratchTest, OneBufferPerRecipeAndStream) {
  Runtime& r = rt();
  bind_device(r);
  auto& impl = r.impl();
  static const char owner_a = 0, owner_b = 0;
  CUstream s1 = new_stream(), s2 = new_stream();
  const Stream t1 = reinterpret_cast<Stream>(s1), t2 = reinterpret_cast<Stream>(s2);
  const ScratchBuffer a1 = impl.scratch(&owner_a, 5000, t1);
  EXPECT_FALSE(a1.per_call);
  EXPECT_NE(a1.ptr, 0u);
  EXPECT_EQ(a1.ptr % 16, 0u);
  EXPECT_EQ(impl.scratch(&owner_a, 8192, t1).ptr, a1.ptr);  // (5000 → 8192 bytes)
  const ScratchBuffer a2 = impl.scratch(&owner_a, 5000, t2);
  const ScratchBuffer b1 = impl.scratch(&owner_b, 5000, t1);
  EXPECT_NE(a2.ptr, a1.ptr);
  EXPECT_NE(b1.ptr, a1.ptr);
  EXPECT_NE(b1.ptr, a2.ptr);
  const ScratchBuffer big = impl.scratch(&owner_a, 8193, t1);
  EXPECT_NE(big.ptr, a1.ptr);
  EXPECT_EQ(impl.scratch(&owner_a, 100, t1).ptr, big.ptr);
  EXPECT_EQ(impl.scratch(&owner_a, 16384, t1).ptr, big.ptr);
  {
    PerCallScope per_call(true);
    const ScratchBuffer p = impl.scratch(&owner_a, 5000, t1);
    EXPECT_TRUE(p.per_call);
    impl.release_scratch(p, t1);
  }
  ASSERT_EQ(drv().cuStreamBeginCapture(s1, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), CUDA_SUCCESS);
  EXPECT_NO_THROW({
    const ScratchBuffer c = impl.scratch(&owner_a, 5000, t1);
    EXPECT_TRUE(c.per_call);
    EXPECT_NE(c.ptr, big.ptr);
    impl.release_scratch(c, t1);
  });
  CUgraph graph = nullptr;
  EXPECT_EQ(drv().cuStreamEndCapture(s1, &graph), CUDA_SUCCESS);
  if (graph) drv().cuGraphDestroy(graph);
  synchronize();
  drv().cuStreamDestroy(s1);
  drv().cuStreamDestroy(s2);
}

// One op's instances (their outputs compared with the per-call path's bits) through the scratch: twice on one
// stream, on a second stream, the larger shape (the buffer grows) and the smaller again, then a captured graph of
// the first instance replayed between uncaptured calls of both on the capture stream.
void check_streams_and_graph(std::vector<detail::BenchInstance>& inst) {
  std::vector<std::vector<uint8_t>> want;
  CUstream s1 = new_stream(), s2 = new_stream();
  {
    PerCallScope per_call(true);
    for (auto& in : inst) want.push_back(run_outputs(in, s1));
    for (size_t i = 0; i < inst.size(); ++i) expect_same_bits(run_outputs(inst[i], s1), want[i], "per call, again");
  }
  for (int k = 0; k < 2; ++k)
    for (size_t i = 0; i < inst.size(); ++i) {
      SCOPED_TRACE("instance " + std::to_string(i) + ", call " + std::to_string(k));
      expect_same_bits(run_outputs(inst[i], s1), want[i], "per call (stream 1)");
      expect_same_bits(run_outputs(inst[i], s2), want[i], "per call (stream 2)");
    }
  expect_same_bits(run_outputs(inst[0], s1), want[0], "per call (stream 1, after the larger shapes)");
  // Captured on s1: the graph's workspace is its own (allocated in the graph); the replays alternate with uncaptured
  // calls on s1 that use the stream's buffer.
  CUgraphExec exec = capture(inst[0], s1);
  ASSERT_NE(exec, nullptr);
  for (int k = 0; k < 3; ++k) {
    SCOPED_TRACE("replay " + std::to_string(k));
    poison_outputs(inst[0], s1);
    ASSERT_EQ(drv().cuGraphLaunch(exec, s1), CUDA_SUCCESS);
    ASSERT_EQ(drv().cuStreamSynchronize(s1), CUDA_SUCCESS);
    expect_same_bits(download_outputs(inst[0]), want[0], "per call (graph replay)");
    for (size_t i = 0; i < inst.size(); ++i) expect_same_bits(run_outputs(inst[i], s1), want[i], "per call (between replays)");
  }
  drv().cuGraphExecDestroy(exec);
  synchronize();
  drv().cuStreamDestroy(s1);
  drv().cuStreamDestroy(s2);
}

// A fresh Runtime whose first pool allocation comes under capture (its uncaptured calls use the per-stream buffer):
// the pool exists from the device's start, so the capture stays valid (round 1 of session 11: a pool created on the
// first allocation, under capture, invalidated it — RmsNormBlockQuantTest.StreamGlobalInCudaGraph failed).
TEST_F(ScratchTest, FirstPoolAllocationUnderCapture) {
  Runtime fresh(test_runtime_options());
  bind_device(fresh);
  detail::BenchInstance inst = detail::rms_norm_block_quant_instance(fresh, 1000, 2048, 2, true, false);
  CUstream s = new_stream();
  const std::vector<uint8_t> want = run_outputs(inst, s);
  CUgraphExec exec = capture(inst, s);
  ASSERT_NE(exec, nullptr);
  for (int k = 0; k < 2; ++k) {
    poison_outputs(inst, s);
    ASSERT_EQ(drv().cuGraphLaunch(exec, s), CUDA_SUCCESS);
    ASSERT_EQ(drv().cuStreamSynchronize(s), CUDA_SUCCESS);
    expect_same_bits(download_outputs(inst), want, "the uncaptured call (graph replay)");
    expect_same_bits(run_outputs(inst, s), want, "the first uncaptured call");
  }
  drv().cuGraphExecDestroy(exec);
  drv().cuStreamDestroy(s);
}

// Mode 2 (round_scale 1: the stream kernel's default at both sizes; M = 1000 and 8192): N = 2048, then 7168 (a larger
// workspace), and a smaller M.
TEST_F(ScratchTest, Mode2SameBitsOnStreamsAndInGraph) {
  Runtime& r = rt();
  bind_device(r);
  std::vector<detail::BenchInstance> inst;
  inst.push_back(detail::rms_norm_block_quant_instance(r, 8192, 2048, 2, true, false));
  inst.push_back(detail::rms_norm_block_quant_instance(r, 8192, 7168, 2, true, false));
  inst.push_back(detail::rms_norm_block_quant_instance(r, 1000, 2048, 2, true, false));
  check_streams_and_graph(inst);
}

// router_gemm_fp32_bwd without a caller workspace (the default one-launch backward with its fused, tagged reduction)
// at 8192 × 2048 → 256, 8192 × 7168 → 256 and 1000 × 2048 → 256; the caller-workspace path gives the same bits.
TEST_F(ScratchTest, RouterBwdSameBitsOnStreamsAndInGraph) {
  Runtime& r = rt();
  bind_device(r);
  std::vector<detail::BenchInstance> inst;
  inst.push_back(router_bwd_instance(r, 8192, 2048, 256, false));
  inst.push_back(router_bwd_instance(r, 8192, 7168, 256, false));
  inst.push_back(router_bwd_instance(r, 1000, 2048, 256, false));
  check_streams_and_graph(inst);
}

// ---- measurement ----------------------------------------------------------------------------------------------------

// An empty kernel (NVRTC), loaded as the registry loads a kernel: room for `max_smem` bytes of dynamic shared memory,
// non-portable cluster sizes allowed.
detail::Kernel& empty_kernel(Runtime& r, int max_smem) {
  static detail::Kernel k;
  if (!k.fn) {
    detail::CompileRequest req{"__global__ void kiln_scratch_empty(int* p) { if (p) *p = 1; }\n", "kiln_scratch_empty",
                               r.impl().target_arch()};
    const detail::CompileOutput out = detail::nvrtc_compile(req, "/tmp/kiln-scratch-empty.cu");
    CUmodule mod = nullptr;
    detail::check(drv().cuModuleLoadData(&mod, out.cubin.data()), "cuModuleLoadData");
    detail::check(drv().cuModuleGetFunction(&k.fn, mod, out.lowered_name.c_str()), "cuModuleGetFunction");
    detail::check(drv().cuFuncSetAttribute(k.fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, max_smem),
                  "cuFuncSetAttribute");
    // (as the registry sets on every sm_90 kernel, mode 2's included)
    detail::check(drv().cuFuncSetAttribute(k.fn, CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
                  "cuFuncSetAttribute");
  }
  return k;
}

struct Row {
  std::string name;
  std::function<void()> select;  // before each call (not timed)
  std::function<void(Stream)> run;
  std::function<void(Stream)> pre = {};  // after the L2 flush, before the start event (not timed)
};

double q(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[static_cast<size_t>(p * (v.size() - 1) + 0.5)];
}

class ScratchMeasure : public ScratchTest {};  // (the same reset of the per-call switch)

TEST_F(ScratchMeasure, Launch) {
  Runtime& r = rt();
  bind_device(r);
  auto& impl = r.impl();
  const int rounds = 300;
  // Mode 2's default launch at N = 2048 (the stream kernel: 512 threads, R = 4 slots, TIGHT: the weights as fp32).
  const int smem2048 = rms_norm_block_quant_stream_smem_bytes(4, true, 2048);
  detail::Kernel& ek = empty_kernel(r, smem2048);
  int per_sm = 0;
  detail::check(drv().cuOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, ek.fn, kRmsqStreamThreads, smem2048),
                "cuOccupancyMaxActiveBlocksPerMultiprocessor");
  const unsigned wave = static_cast<unsigned>(impl.device().sm_count * per_sm);
  const size_t ws2048 = 64 * 8 * 128 * 2 * 4;  // mode 2's workspace at M = 8192, N = 2048 (512 KiB)
  auto empty = [&](unsigned grid, unsigned threads, unsigned smem) {
    return [&ek, &impl, grid, threads, smem](Stream s) {
      detail::LaunchDims d;
      d.grid[0] = grid;
      d.block[0] = threads;
      d.smem = smem;
      int* p = nullptr;
      void* params[] = {&p};
      impl.launch_raw(ek, d, s, params);
    };
  };
  static const char owner = 0;
  auto with_pool = [&impl](std::function<void(Stream)> f, size_t bytes) {
    return [&impl, f, bytes](Stream s) {
      const CUdeviceptr p = impl.alloc_async(bytes, s);
      f(s);
      impl.free_async(p, s);
    };
  };
  auto with_scratch = [&impl](std::function<void(Stream)> f, size_t bytes) {
    return [&impl, f, bytes](Stream s) {
      const ScratchBuffer b = impl.scratch(&owner, bytes, s);
      f(s);
      impl.release_scratch(b, s);
    };
  };
  auto per_call = [](bool on) { return [on] { detail::scratch_per_call.store(on); }; };
  auto nothing = [] { detail::scratch_per_call.store(false); };
  detail::BenchInstance m2048 = detail::rms_norm_block_quant_instance(r, 8192, 2048, 2, true, false);
  detail::BenchInstance m7168 = detail::rms_norm_block_quant_instance(r, 8192, 7168, 2, true, false);
  detail::BenchInstance rb_ws = router_bwd_instance(r, 8192, 2048, 256, true);
  detail::BenchInstance rb = router_bwd_instance(r, 8192, 2048, 256, false);
  detail::BenchInstance bs = detail::batch_silu_bench_instance(r, 8192, 32, 1024, false, 2, true);
  const std::vector<Row> rows = {
      {"empty 1x32", nothing, empty(1, 32, 0)},
      {"empty 1x32 + pool alloc/free 512K", nothing, with_pool(empty(1, 32, 0), ws2048)},
      {"empty 1x32 + scratch 512K", nothing, with_scratch(empty(1, 32, 0), ws2048)},
      {"empty 1x512, mode-2 smem", nothing, empty(1, kRmsqStreamThreads, smem2048)},
      {"empty wave x512, no smem", nothing, empty(wave, kRmsqStreamThreads, 0)},
      {"empty wave x512, mode-2 smem", nothing, empty(wave, kRmsqStreamThreads, smem2048)},
      {"empty wave x512 smem + pool 512K", nothing, with_pool(empty(wave, kRmsqStreamThreads, smem2048), ws2048)},
      {"mode2 N=2048 per-call pool", per_call(true), m2048.run},
      {"mode2 N=2048 scratch", per_call(false), m2048.run},
      {"mode2 N=7168 per-call pool", per_call(true), m7168.run},
      {"mode2 N=7168 scratch", per_call(false), m7168.run},
      {"router bwd 2048 caller ws", per_call(false), rb_ws.run},
      {"router bwd 2048 per-call pool", per_call(true), rb.run},
      {"router bwd 2048 scratch", per_call(false), rb.run},
      // Primed: an empty wave with mode 2's shared memory between the flush and the start event, so that the SMs'
      // shared-memory carve-out is already the one mode 2 needs (the flush kernel uses none).
      {"empty wave x512 smem, primed", nothing, empty(wave, kRmsqStreamThreads, smem2048),
       empty(wave, kRmsqStreamThreads, smem2048)},
      {"mode2 N=2048 scratch, primed", per_call(false), m2048.run, empty(wave, kRmsqStreamThreads, smem2048)},
      {"mode2 N=7168 scratch, primed", per_call(false), m7168.run, empty(wave, kRmsqStreamThreads, smem2048)},
      {"batch silu fwd 8192x1024 pool", per_call(true), bs.run},
      {"batch silu fwd 8192x1024 scratch", per_call(false), bs.run},
  };
  // (second row − first row, per round)
  struct Pair {
    int a, b;
    const char* tag;
  };
  const std::vector<Pair> pairs = {{0, 1, "pool@empty"},     {0, 2, "scratch@empty"},    {0, 3, "smem@1cta"},
                                   {4, 5, "smem@wave"},      {0, 5, "m2shape-empty"},    {5, 6, "pool@m2shape"},
                                   {7, 8, "m2048 scr-pool"}, {9, 10, "m7168 scr-pool"},  {12, 13, "rbwd scr-pool"},
                                   {11, 13, "rbwd scr-ws"},  {11, 12, "rbwd pool-ws"},   {5, 14, "primed@m2shape"},
                                   {8, 15, "primed m2048"},  {10, 16, "primed m7168"},   {17, 18, "bsilu scr-pool"}};
  std::printf("[scratch] empty kernel wave: %u CTAs (%d an SM) x %d threads, %d B dynamic shared memory\n", wave,
              per_sm, kRmsqStreamThreads, smem2048);
  detail::L2Flusher l2(r, nullptr);
  for (const Row& row : rows) {  // warm-up: compile, load, first touch, the scratch buffers
    row.select();
    for (int i = 0; i < 3; ++i) row.run(nullptr);
  }
  synchronize();
  CUevent e0, e1;
  detail::check(drv().cuEventCreate(&e0, CU_EVENT_DEFAULT), "cuEventCreate");
  detail::check(drv().cuEventCreate(&e1, CU_EVENT_DEFAULT), "cuEventCreate");
  std::vector<std::vector<double>> us(rows.size());
  for (int round = 0; round < rounds; ++round)
    for (size_t k = 0; k < rows.size(); ++k) {
      // (a rotating start and alternating direction: no row always follows the same one)
      const size_t j = (k + static_cast<size_t>(round)) % rows.size();
      const size_t i = round % 2 == 0 ? j : rows.size() - 1 - j;
      rows[i].select();
      l2.flush(nullptr);
      if (rows[i].pre) rows[i].pre(nullptr);
      detail::check(drv().cuEventRecord(e0, nullptr), "cuEventRecord");
      rows[i].run(nullptr);
      detail::check(drv().cuEventRecord(e1, nullptr), "cuEventRecord");
      detail::check(drv().cuEventSynchronize(e1), "cuEventSynchronize");
      float ms = 0;
      detail::check(drv().cuEventElapsedTime(&ms, e0, e1), "cuEventElapsedTime");
      us[i].push_back(ms * 1e3);
    }
  detail::scratch_per_call.store(false);
  drv().cuEventDestroy(e0);
  drv().cuEventDestroy(e1);
  std::printf("[scratch] %d rounds, one call of each row a round (L2 flushed, CUDA events), µs: median (p10 .. p90)\n",
              rounds);
  for (size_t i = 0; i < rows.size(); ++i)
    std::printf("  %-38s %7.2f  (%6.2f .. %6.2f)\n", rows[i].name.c_str(), q(us[i], 0.5), q(us[i], 0.1),
                q(us[i], 0.9));
  std::printf("[scratch] paired (same round): B - A median (p10 .. p90), share of rounds B < A\n");
  for (const auto& [a, b, tag] : pairs) {
    const PairedDiff pd = paired_diff(us[a], us[b]);
    std::printf("  [pair] %-15s %+6.2f (%+6.2f .. %+6.2f) %3.0f %%  :: %s - %s\n", tag, pd.at(0.5), pd.at(0.1),
                pd.at(0.9), 100.0 * pd.wins / rounds, rows[b].name.c_str(), rows[a].name.c_str());
  }
  // Host time per call (enqueue only; host_us_per_call: median of 31 rounds of 256 calls), each path twice, alternated.
  std::printf("[scratch] host µs per call (enqueue), pool / scratch, twice alternated\n");
  for (const auto& [name, inst] : {std::pair<const char*, detail::BenchInstance*>{"mode2 N=2048", &m2048},
                                   std::pair<const char*, detail::BenchInstance*>{"router bwd 2048 no ws", &rb}}) {
    double h[4];
    for (int k = 0; k < 4; ++k) {
      detail::scratch_per_call.store(k % 2 == 0);
      h[k] = host_us_per_call([&] { inst->run(nullptr); });
    }
    detail::scratch_per_call.store(false);
    std::printf("  %-24s pool %.2f %.2f  scratch %.2f %.2f\n", name, h[0], h[2], h[1], h[3]);
  }
}

}  // namespace
}  // namespace kiln::test
