// kiln/router_gemm_args.h — kernel argument blocks of the fp32 router GEMM, shared by template and host recipe.
#pragma once

namespace kiln {

// logits[T, E] fp32 = x[T, K] bf16 · w[E, K]ᵀ bf16.
struct RouterGemmFwdArgs {
  const void* x; long long x_stride;    // elements between rows of x
  const void* w;                        // [E, K] contiguous
  float* out; long long out_stride;     // elements between rows of logits
  int T;
  int flags;                            // sm_90a kernels, measurement only (0 in every op): see kRgSkip*
};

// A CUtensorMap (cuda.h), opaque: 128 bytes, 128-byte aligned (as cuda.h 13 declares it); the host encodes it (cuTensorMapEncodeTiled) and the
// kernel reads it from its __grid_constant__ parameter.
struct alignas(128) RgTensorMap {
  unsigned long long opaque[16];
};

// The TMA forward (router_gemm_tma.cuh): tmx = x [T, K] bf16 in boxes of 64 columns × BM rows, tmw = w [E, K] bf16
// in boxes of 64 columns × E/CM rows, both 128-byte swizzled.
struct RouterGemmFwdTmaArgs {
  RgTensorMap tmx;
  RgTensorMap tmw;
  float* out; long long out_stride;     // elements between rows of logits
  int T;
  int tiles;                            // ceil(T / BM)
  int flags;                            // measurement only (0 in the ops): kRgSkipStore
};

// The TMA backward (router_gemm_bwd_tma.cuh). dx: tmw = w [E, K] bf16 in boxes of 64 columns × 64 rows; g read with
// plain loads. dw: tmg = g [T, E] fp32 in boxes of 32 columns × 64 rows, tmx = x [T, K] bf16 in boxes of 64 × 64;
// the T axis cut into gridDim.y ranges of split_rows rows (a multiple of 64); each cluster of `cluster` consecutive
// ranges adds its partial tiles through distributed shared memory and writes dw (one group) or its group's partial
// (router_gemm_dw_reduce_kernel then adds the groups in order).
struct RouterGemmDxTmaArgs {
  RgTensorMap tmw;
  RgTensorMap tmdx;                     // dx [T, K] bf16 in boxes of 64 columns × 64 rows (the staged epilogue)
  const float* g; long long g_stride;
  void* dx; long long dx_stride;
  int T;
  int tiles;                            // ceil(T / 64)
  const float* colf;                    // fp16 pass (SPLIT = 2): 2^c_k of w16's columns [K]; else null
};
// The fp16 pass's operand prep (router_gemm_w16_kernel): w16[e, k] = fp16(w[e, k] · 2^−c_k) with c_k from column k's
// amax over E, and colf[k] = 2^c_k.
struct RouterGemmW16Args {
  const void* w;                        // [E, K] bf16 contiguous
  void* w16;                            // [E, K] fp16 contiguous
  float* colf;                          // [K]
};
struct RouterGemmDwTmaArgs {
  RgTensorMap tmg;
  RgTensorMap tmx;
  float* dw;                            // [E, K] contiguous
  float* partial;                       // [groups, E, K] when gridDim.y / cluster > 1 groups, else null
  int T;
  int split_rows;
  int cluster;                          // T ranges a cluster reduces (≤ 4: larger clusters do not all fit at once)
};

// Measurement switches of the sm_90a kernels (never set by the ops): skip the generic→async proxy fence after the
// cp.async data of a chunk has landed, or (unsafe) after the g hi/lo split. They show what the fences cost.
enum : int { kRgSkipCopyFence = 1, kRgSkipSplitFence = 2, kRgSkipStore = 8 };
// kRgSkipStore (TMA forward, bench only): the logits are not written (nor the K-split partials exchanged), so the
// bench can time the main loop alone; the output is garbage.

// dx[T, K] bf16 = g[T, E] fp32 · w[E, K] bf16.
struct RouterGemmDxArgs {
  const float* g; long long g_stride;
  const void* w;                        // [E, K] contiguous
  void* dx; long long dx_stride;
  int T;
  int flags;                            // see kRgSkip*
};

// dw[E, K] fp32 = g[T, E]ᵀ · x[T, K], the T axis cut into `splits` ranges of `split_rows` rows (a multiple of the
// kernel's T chunk). splits == 1: the kernel writes dw; otherwise split s writes partial[s] ([splits, E, K]) and
// router_gemm_dw_reduce_kernel adds the partials in split order.
struct RouterGemmDwArgs {
  const float* g; long long g_stride;
  const void* x; long long x_stride;
  float* dw;                            // [E, K] contiguous
  float* partial;                       // [splits, E, K] or null when splits == 1
  int T;
  int split_rows;
  int flags;                            // see kRgSkip*
};

struct RouterGemmDwReduceArgs {
  const float* partial;                 // [splits, n]
  float* dw;                            // [n]
  long long n;                          // E·K (a multiple of 4)
  int splits;                           // 0 writes zeros (T = 0)
};

}  // namespace kiln
