// Host recipe: list reductions (templates/kiln/batch_reduce.cuh): grad-norm sums and zero count. Spec: linghe-kernels.md
// §9, §10.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "kiln/batch_reduce_args.h"
#include "kiln/ops/batch_reduce.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace detail {
// ops/bench/batch_reduce.cpp
BenchInstance batch_reduce_tune_instance(Runtime& rt, const Specialization& s, int64_t tokens);
}  // namespace detail

namespace {
using namespace detail;

enum { P_OP, P_ACC_BITS };
enum { C_WARPS };
enum { kSumAbs = 0, kSumSq = 1, kMaxAbs = 2, kCountZero = 3 };
constexpr int kGroup = 64;  // as br::kGroup in the template

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/batch_reduce.cuh\"\n";
  name = fmt::format("kiln::batch_reduce_kernel<{}, {}, {}>", s.params[P_OP], s.params[P_ACC_BITS] == 32 ? "float" : "double",
                     s.config[C_WARPS]);
}

int smem_bytes(const Specialization&) { return 0; }

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);

FamilyDef g_family{"batch_reduce", {"reduce"}, {"op", "acc_bits"}, {"warps"}, render, smem_bytes, enumerate,
                   search_space, batch_reduce_tune_instance};

Specialization make(Arch arch, int op, int acc_bits, int warps) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.params[P_OP] = op;
  // max|x| and the count do not accumulate in A: one specialization each.
  s.params[P_ACC_BITS] = op == kMaxAbs || op == kCountZero ? 64 : acc_bits;
  s.config[C_WARPS] = warps > 0 ? warps : 8;
  return s;
}

void search_space(const Specialization& base, std::vector<Specialization>& out) {
  for (int w : {8, 16}) {
    Specialization s = base;
    s.config[C_WARPS] = w;
    out.push_back(s);
  }
}

// Independent of the model's shapes: what a training step's grad-norm (Σx², fp64) and zero-count calls use. The other
// reductions (Σ|x|, max|x|, fp32 accumulation) compile on first use.
void enumerate(const ModelConfig&, Arch arch, std::vector<Specialization>& out) {
  out.push_back(make(arch, kSumSq, 64, 0));
  out.push_back(make(arch, kCountZero, 64, 0));
}

void run(Runtime& rt, const Check& ck, std::span<const TensorRef> xs, const TensorRef& out, int op, int acc_bits,
         bool root, const BatchReduceLaunch& launch, Stream stream) {
  ck.dtype("out", out, {op == kCountZero ? DType::i64 : DType::f32});
  if (out.ndim > 1 || out.numel() != 1)
    ck.shape_error("out", fmt::format("expected one element (shape [] or [1]), got shape {}", shape_str(out)));
  ck.pointer("out", out, op == kCountZero ? 8 : 4);
  if (launch.warps != 0 && launch.warps != 4 && launch.warps != 8 && launch.warps != 16)
    ck.invalid("warps", fmt::format("expected 0 (kiln's choice), 4, 8 or 16, got {}", launch.warps));
  if (launch.max_ctas < 0) ck.invalid("max_ctas", fmt::format("expected ≥ 0, got {}", launch.max_ctas));
  if (xs.size() > static_cast<size_t>(INT32_MAX)) ck.invalid("xs", "more than 2^31 − 1 tensors");

  std::vector<BatchReduceTensor> tensors;
  std::vector<long long> chunk_start;
  long long chunks = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const TensorRef& t = xs[i];
    const std::string name = fmt::format("xs[{}]", i);
    ck.dtype(name.c_str(), t, {DType::f32, DType::bf16, DType::f16});
    for (int k = 0; k < t.ndim; ++k)
      if (t.shape[k] < 0) ck.shape_error(name.c_str(), fmt::format("expected non-negative dims, got {}", shape_str(t)));
    ck.contiguous(name.c_str(), t);
    const int64_t n = t.numel();
    if (n == 0) continue;
    ck.pointer(name.c_str(), t, static_cast<int>(dtype_size(t.dtype)));
    tensors.push_back({t.data, static_cast<long long>(n), static_cast<int>(t.dtype), 0});
    chunk_start.push_back(chunks);
    chunks += (n + kBatchReduceChunk - 1) / kBatchReduceChunk;
    if (chunks > INT32_MAX / 2) ck.invalid("xs", fmt::format("more than {} elements in all", INT32_MAX / 2 * kBatchReduceChunk));
  }
  auto& impl = rt.impl();
  const Driver& d = driver();
  const auto cs = reinterpret_cast<CUstream>(stream);
  if (tensors.empty()) {  // nothing to reduce: 0
    check(d.cuMemsetD32Async(reinterpret_cast<CUdeviceptr>(out.data), 0, op == kCountZero ? 2 : 1, cs),
          "cuMemsetD32Async (empty list)");
    return;
  }
  chunk_start.push_back(chunks);
  const int T = static_cast<int>(tensors.size()), C = static_cast<int>(chunks);
  const int groups = (C + kGroup - 1) / kGroup;

  // Scratch: [counters (2 + groups) u32 | tensors | chunk_start | partials (C) | group results]; everything up to
  // the partials is uploaded in one copy (the counters as zeros).
  const size_t off_tensors = (static_cast<size_t>(2 + groups) * 4 + 15) / 16 * 16;
  const size_t off_starts = off_tensors + tensors.size() * sizeof(BatchReduceTensor);
  const size_t off_partials = (off_starts + chunk_start.size() * 8 + 15) / 16 * 16;
  const size_t total = off_partials + static_cast<size_t>(C + groups) * 8;
  std::vector<uint8_t> host(off_partials, 0);
  std::memcpy(host.data() + off_tensors, tensors.data(), tensors.size() * sizeof(BatchReduceTensor));
  std::memcpy(host.data() + off_starts, chunk_start.data(), chunk_start.size() * 8);

  Specialization s = make(impl.target_arch(), op, acc_bits, launch.warps);
  if (launch.warps == 0) s = impl.tuned(s, chunks * kBatchReduceChunk);
  const int threads = 32 * s.config[C_WARPS];
  const Kernel& k = impl.kernel(s);
  const int ctas = static_cast<int>(
      impl.persistent_grid(k, threads, 0, launch.max_ctas > 0 ? std::min(C, launch.max_ctas) : C));

  static const char owner = 0;  // (the header is uploaded by every call; partials are written before they are read)
  const ScratchBuffer scratch = impl.scratch(&owner, total, stream);
  const CUdeviceptr base = scratch.ptr;
  try {
    // From pageable memory: the driver stages the bytes before returning (no device synchronization), so `host` may
    // go out of scope.
    check(d.cuMemcpyHtoDAsync(base, host.data(), host.size(), cs), "cuMemcpyHtoDAsync (tensor table)");
    BatchReduceArgs a{reinterpret_cast<const BatchReduceTensor*>(base + off_tensors),
                      reinterpret_cast<const long long*>(base + off_starts),
                      T,
                      C,
                      reinterpret_cast<double*>(base + off_partials),
                      reinterpret_cast<unsigned*>(base),
                      out.data,
                      root ? 1 : 0};
    LaunchDims dims;
    dims.grid[0] = static_cast<unsigned>(ctas);
    dims.block[0] = static_cast<unsigned>(threads);
    impl.launch(k, dims, stream, a);
  } catch (...) {
    impl.release_scratch(scratch, stream);
    throw;
  }
  impl.release_scratch(scratch, stream);
}

}  // namespace

KILN_REGISTER_FAMILY(batch_reduce, g_family)

void batch_sum_with_ord(Runtime& rt, std::span<const TensorRef> xs, const TensorRef& out, const BatchNormOptions& opts,
                        Stream stream, const BatchReduceLaunch& launch) {
  const Check ck{"batch_sum_with_ord"};
  int op = kSumSq;
  switch (opts.ord) {
    case NormOrd::l1: op = kSumAbs; break;
    case NormOrd::l2: op = kSumSq; break;
    case NormOrd::inf: op = kMaxAbs; break;
    default: ck.invalid("ord", "expected NormOrd::l1, l2 or inf");
  }
  if (opts.accumulate != Accumulate::f32 && opts.accumulate != Accumulate::f64)
    ck.invalid("accumulate", "expected Accumulate::f32 or Accumulate::f64");
  run(rt, ck, xs, out, op, opts.accumulate == Accumulate::f32 ? 32 : 64, opts.root && op == kSumSq, launch, stream);
}

void batch_count_zero(Runtime& rt, std::span<const TensorRef> xs, const TensorRef& out, Stream stream,
                      const BatchReduceLaunch& launch) {
  run(rt, Check{"batch_count_zero"}, xs, out, kCountZero, 64, false, launch, stream);
}

}  // namespace kiln
