// ops/router_gemm_internal.hpp — the router GEMM's internal entry points and measurement hooks (not public API),
// shared by the host recipe (ops/router_gemm.cpp), its bench cases (ops/bench/router_gemm.cpp) and the GPU tests.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"
#include "runtime/bench.hpp"
#include "runtime/specialization.hpp"

namespace kiln::detail {

// Internal entry points with a forced tile config (a search-space point; null = the tuned default). Tests use them to
// check every point the tuner may pick; the public ops call them with null.
using RouterGemmConfig = std::array<int32_t, kMaxConfig>;
// variant: -1 the default for the arch, 0 the mma.sync kernel, 1 the sm_90a wgmma kernel.
void router_gemm_fp32_fwd_config(Runtime& rt, const TensorRef& x, const TensorRef& w, const TensorRef& logits,
                                 int variant, const RouterGemmConfig* force, Stream stream);
// variant (backward): -1 the default, 0 the mma.sync kernels, 2 the TMA dx and dw kernels, 3 the one-launch TMA
// kernel, 4 the TMA dx and dw kernels side by side (router_gemm_side_by_side_plan).
// precision (the TMA backward; the other kernels always split g into hi + lo): 0 = tf32 (one fp16 pass with
// power-of-two scales), 1 = high (hi + lo), 2 = bf16(g) alone (measurement only: 8 significant bits of g), 4 = standard
// (dx from bf16(g), dw from hi + lo: the default).
void router_gemm_fp32_bwd_config(Runtime& rt, const TensorRef& g, const TensorRef& x, const TensorRef& w,
                                 const TensorRef& dx, const TensorRef& dw, const TensorRef& workspace,
                                 int variant, int precision, const RouterGemmConfig* force_dx,
                                 const RouterGemmConfig* force_dw, Stream stream);

// Measurement hook (bench sweep and GPU tests only): kRgSkip* flags handed to the sm_90a kernels. 0 in normal use.
extern std::atomic<int> router_gemm_measure_flags;

// Measurement hook (GPU tests only): a device buffer of kRgTraceFwdSlots u64 per CTA the expert-pair forward fills with
// timestamps (RouterGemmFwdTmaArgs::trace). Null in normal use.
extern std::atomic<unsigned long long*> router_gemm_trace;

// Measurement hook (GPU tests only): kRgOne* switches of the one-launch backward. 0 in normal use.
extern std::atomic<int> router_gemm_bwd_one_measure;

// Measurement hook (GPU tests only): the most CTAs the TMA backward's standalone dx kernel takes (its grid is
// persistent). The dw kernel, launched behind it with PDL, then starts at once on the SMs left over: dx and dw side by
// side (session 24). 0 in normal use: every SM.
extern std::atomic<int> router_gemm_dx_ctas;

// Measurement hook (GPU tests only): the column parts of the standalone dx kernel's token tiles, instead of
// router_gemm_dx_parts's choice (session 25: more parts than fit the CTAs once, to even out the CTAs' work beside dw);
// −1: balanced ranges of (tile, column block) pairs, every CTA the same number of blocks ± 1 (session 26). 0 in
// normal use.
extern std::atomic<int> router_gemm_dx_parts_force;

// The backward's two kernels side by side (variant 4): dw's CTAs (whole T ranges of its tiles) and the dx kernel's CTA
// cap, for K × E on `sms` SMs with dw in clusters of `dw_cluster`. dx_ctas 0: no split (dw's tiles fill the GPU).
struct RouterGemmSideBySide {
  int dw_sms = 0, dx_ctas = 0;
  // Session 27: where dw's ranges are exactly 4 (from clusters of 2), all 4 in one cluster (the DSMEM sum covers every
  // range: no partials, no dw_reduce) and dx's w by multicast to clusters of 2 (beside dx's CTAs in clusters of 1 the
  // clusters of 4 could not all be placed: +16 µs). 0: the kernels' own configs.
  int dw_cluster = 0, dx_cluster = 0;
};
RouterGemmSideBySide router_gemm_side_by_side_plan(int64_t K, int64_t E, int sms, int dw_cluster);
// Whether the backward's default at precision standard (dx and dw both wanted) runs side by side with plan `p`: T
// tokens, K columns, `sms` SMs, `dw_own_ctas` the dw kernel's grid on its own (ops/router_gemm.cpp: the measurements).
bool router_gemm_side_by_side_default(int64_t T, int64_t K, int sms, int dw_own_ctas, const RouterGemmSideBySide& p);

// The TMA backward's standalone dx kernel: how many column parts each of its `tiles` token tiles is cut into (at
// least `base`: 2 for 128-token units, else 1) so that its units fill `ctas` CTAs (clusters of cm) in one wave.
int router_gemm_dx_parts(int64_t tiles, int64_t K, int cm, int base, int ctas);

// A prepared router GEMM at T × K → E (bench cases and the family's tune instances): `part` is "fwd", "bwd" (dx + dw),
// "dx" or "dw", with the suffixes ops/router_gemm.cpp lists; `force` a tile config (null: the default).
BenchInstance router_gemm_instance(Runtime& rt, int64_t T, int64_t K, int64_t E, const std::string& part,
                                   const RouterGemmConfig* force = nullptr);

class CublasLtGemm;
// Measurement hook (bench measurement rows and GPU tests only): the buffers of a forward instance prepared with
// "…_cublas" — x, w, the op's logits y, cuBLASLt's logits yc (allocated after the op's, behind cuBLASLt's 32 MiB
// workspace, as `kiln bench` prepares the row) and cuBLASLt's plan; yc and lt null where the instance has no cuBLASLt
// baseline. The instance keeps them alive.
struct RouterGemmFwdBenchIo {
  TensorRef x, w, y;
  void* yc = nullptr;
  std::shared_ptr<CublasLtGemm> lt;
};
RouterGemmFwdBenchIo router_gemm_fwd_bench_io(const BenchInstance& inst);

}  // namespace kiln::detail
