// kiln/router_gemm_args.h — kernel argument blocks of the fp32 router GEMM, shared by template and host recipe.
#pragma once
#include "kiln/tensor_map.h"

namespace kiln {

// logits[T, E] fp32 = x[T, K] bf16 · w[E, K]ᵀ bf16.
struct RouterGemmFwdArgs {
  const void* x; long long x_stride;    // elements between rows of x
  const void* w;                        // [E, K] contiguous
  float* out; long long out_stride;     // elements between rows of logits
  int T;
  int flags;                            // sm_90a kernels, measurement only (0 in every op): see kRgSkip*
};

// The TMA forward (router_gemm_tma.cuh): tmx = x [T, K] bf16 in boxes of 64 columns × BM rows, tmw = w [E, K] bf16
// in boxes of 64 columns × E/CM rows, both 128-byte swizzled.
struct RouterGemmFwdTmaArgs {
  TensorMap tmx;
  TensorMap tmw;
  float* out; long long out_stride;     // elements between rows of logits
  int T;
  int tiles;                            // ceil(T / tile_rows)
  int flags;                            // kRgRotateK (expert-pair kernel), else measurement only: kRgSkip*
  int tile_rows;                        // expert-pair kernel: token rows a tile owns (≤ BM); the others use BM
  unsigned long long* trace;            // expert-pair kernel, measurement only (null in the ops): kRgTraceFwdSlots a CTA
  TensorMap tmo;                      // expert-pair kernel with kRgEpiTma: logits [T, E] fp32 in 128-byte-swizzled
                                        // boxes of 32 columns × 16 rows (TMA stores; rows past T clipped)
};

// Trace slots of the expert-pair forward (RouterGemmFwdTmaArgs::trace, kRgTraceSlots per CTA): globaltimer ns and
// SM clock at entry, SM id, the producer's first and last TMA issue (clock), then per consumer warpgroup w at
// kRgTraceWg0 + w·kRgTraceWgSlots (clock): first stage landed, last stage landed, MMAs done, stores issued, stores
// performed (after a fence); and globaltimer ns when warpgroup 0's stores were performed.
enum : int {
  kRgTraceStartNs = 0, kRgTraceStartClk = 1, kRgTraceSm = 2, kRgTraceProducerFirst = 3, kRgTraceProducerLast = 4,
  kRgTraceWg0 = 5, kRgTraceWgSlots = 5, kRgTraceEndNs = 15, kRgTraceSlots = 16,
  kRgTraceFirstFull = 0, kRgTraceLastFull = 1, kRgTraceMmaDone = 2, kRgTraceStored = 3, kRgTraceFenced = 4
};
// The expert-pair forward traces kRgTraceFwdSlots a CTA: the slots above, then the prologue (SM clock of thread 0):
// barriers initialized, cluster barrier passed, the producer just before its first ring fill (after setmaxnreg and the
// empty wait), and the globaltimer ns after the final cluster barrier (the CTA's exit).
enum : int {
  kRgTraceInitDone = 16, kRgTraceClusterDone = 17, kRgTraceProducerPre = 18, kRgTraceExitNs = 19,
  kRgTraceFwdSlots = 32
};
// Expert-pair forward option (session 7): kRgEpiTma — the cluster's last tile leaves by TMA stores, each warp staging
// its 16 rows in the x rows of the ring its warpgroup no longer reads (no barrier across warps). Same bits.
constexpr int kRgEpiTma = 1 << 24;
// Measurement (with kRgEpiTma): consumer warpgroup 1 stores its rows from the registers (8-byte stores) while warpgroup
// 0 uses TMA stores — do the copy engine and the LSU path write in parallel?
constexpr int kRgEpiMix = 1 << 27;
// Measurement (host only, with kRgNoop): launch the no-op grid with no dynamic shared memory — does the 213 KB carve-out
// cost launch time?
constexpr int kRgNoopNoSmem = 1 << 26;
// Measurement (host only): the expert-pair kernel without any of the options above, whatever the op's defaults.
constexpr int kRgXmcPlain = 1 << 28;
// Expert-pair forward option (session 9): kRgNoExitSync — no cluster barrier at the end; the producer thread waits
// until every fill of its ring has been released by every consumer of the cluster (CUTLASS's producer tail).
constexpr int kRgNoExitSync = 1 << 23;
// Expert-pair forward option (session 14), with kRgEpiTma at E/2 = 128: each TMA-storing warp stages and stores its four
// 16 × 32 boxes one at a time instead of staging all four first. Same bits.
constexpr int kRgEpiTmaPipe = 1 << 25;

// The TMA backward (router_gemm_bwd_tma.cuh). dx: tmw = w [E, K] bf16 in boxes of 64 columns × 64 rows; g read with
// plain loads. dw: tmg = g [T, E] fp32 in boxes of 32 columns × 64 rows, tmx = x [T, K] bf16 in boxes of 64 × 64;
// the T axis cut into gridDim.y ranges of split_rows rows (a multiple of 64); each cluster of `cluster` consecutive
// ranges adds its partial tiles through distributed shared memory and writes dw (one group) or its group's partial
// (router_gemm_dw_reduce_kernel then adds the groups in order).
struct RouterGemmDxTmaArgs {
  TensorMap tmw;
  TensorMap tmdx;                     // dx [T, K] bf16 in boxes of 64 columns × 64 rows (the staged epilogue)
  const float* g; long long g_stride;
  void* dx; long long dx_stride;
  int T;
  int tiles;                            // token tiles: ceil(T / TM)
  int parts;                            // column parts a token tile is cut into (≥ 1; see DxTile), or 0:
                                        // balanced ranges of (tile, column block) pairs (DxCursor)
  const float* colf;                    // fp16 pass (SPLIT = 2): 2^c_k of w16's columns [K]; else null
  int flags;                            // measurement only (0 in the ops): kRgSkipMma / kRgSkipLoad / kRgSkipStore /
                                        // kRgNoGPrefetch
  unsigned long long* trace;            // measurement only (null in the ops): kRgTraceSlots a CTA (kRgTraceBwd*)
};
// The fp16 pass's operand prep (router_gemm_w16_kernel): w16[e, k] = fp16(w[e, k] · 2^−c_k) with c_k from column k's
// amax over E, and colf[k] = 2^c_k.
struct RouterGemmW16Args {
  const void* w;                        // [E, K] bf16 contiguous
  void* w16;                            // [E, K] fp16 contiguous
  float* colf;                          // [K]
};
struct RouterGemmDwTmaArgs {
  TensorMap tmg;
  TensorMap tmx;
  float* dw;                            // [E, K] contiguous
  float* partial;                       // [groups, E, K] when gridDim.y / cluster > 1 groups, else null
  int T;
  int split_rows;
  int cluster;                          // T ranges a cluster reduces (≤ 4: larger clusters do not all fit at once)
  int flags;                            // measurement only (0 in the ops): kRgSkipMma / kRgSkipLoad / kRgSkipStore
  unsigned long long* trace;            // measurement only (null in the ops): kRgTraceSlots a CTA (kRgTraceBwd*)
};
// The one-launch backward (router_gemm_bwd_tma_kernel): the dw kernel's and the dx kernel's argument blocks (dx's
// tiles, trace and flags as for the dx kernel; its grid is dw's).
// With more than one group of T ranges a tile and `flags` set, the kernel adds the groups' partials itself (no
// router_gemm_dw_reduce_kernel): each CTA publishes flags[CTA] = tag once its rows of its group's partial are stored,
// and at its end sums tile rows [R·y, R·y + R) (y = blockIdx.y, R = ceil(128 / ranges)) of every group's partial in
// group order once the tile's flags all hold the tag (tags: never 0; a flag from another launch holds another tag).
struct RouterGemmBwdTmaArgs {
  RouterGemmDwTmaArgs dw;
  RouterGemmDxTmaArgs dx;
  unsigned* flags;                      // [gridDim.x · gridDim.y] or null (router_gemm_dw_reduce_kernel adds them)
  unsigned tag;
  int interleave;                       // dw then dx: the groups' sum spread over dx's column blocks (else at the end)
  int prefetch_g;                       // dw then dx: the first dx tile's g rows prefetched into L2 near dw's end
  int options;                          // kRgOneWPrefetch (the host's choice)
};
// Switches of the one-launch backward (router_gemm_bwd_one_measure: measurement, host): kRgOneExplicit: the kernel's
// options (RouterGemmBwdTmaArgs::options) exactly as named, not the op's defaults (kBwdOneOptions); kRgOneDxNoStore /
// kRgOneDxNoLoad: the dx role alone stores / loads nothing (kRgSkipStore / kRgSkipLoad in its args only);
// kRgOneDwSkeleton: the dw role loads, multiplies and stores nothing
// (the dx role then starts as at the launch's start); kRgOneDwNoStore: the dw role stores nothing (no staging, pair
// sum, partials or groups' sum; loads and MMAs as usual). Option (session 10): kRgOneWPrefetch (kernel): near dw's
// end each CTA prefetches its share of w (1/gridDim of the 64 × 64 boxes) into L2, so that no dx role waits for w
// from DRAM.
enum : int {
  kRgOneDxNoStore = 1, kRgOneDxNoLoad = 2, kRgOneDwSkeleton = 4, kRgOneDwNoStore = 32, kRgOneWPrefetch = 128,
  kRgOneExplicit = 512
};
// Trace of the TMA backward (measurement): the same slots as the forward's — globaltimer ns and SM clock at entry, SM
// id, the producer's first and last TMA issue — then, for consumer warpgroup 0 (clock): dx: its A tile ready (first
// unit), last stage landed, MMAs done, last store issued, stores read out; dw: first stage landed, last stage landed,
// MMAs done, epilogue done (before the final cluster barrier), after it; and globaltimer ns at the end. The op
// traces dx into the first kRgTraceBwdDwOffset slots of the buffer and dw after them.
enum : int { kRgTraceBwdDwOffset = 1024 * 16 };
// More stamps of the TMA backward (measurement, the timeline test): dx (grids of ≤ 512 CTAs), relative to a CTA's trace
// slots: at + kRgTraceDxBlocks + 2n / + 2n + 1 (n < 8): its column block n's first stage landed / MMAs done (clock; a
// persistent CTA's last unit); dw, relative to warpgroup 0's slots: the epilogue's staging cluster barrier passed.
enum : int { kRgTraceDxBlocks = 8192, kRgTraceDwStaged = kRgTraceWgSlots + 1 };

// Measurement switches of the sm_90a kernels (never set by the ops): skip the generic→async proxy fence after the
// cp.async data of a chunk has landed, or (unsafe) after the g hi/lo split. They show what the fences cost.
enum : int { kRgSkipCopyFence = 1, kRgSkipSplitFence = 2, kRgSkipStore = 8 };
// Measurement (host only): the one-launch backward leaves the groups' sums to router_gemm_dw_reduce_kernel.
constexpr int kRgSepReduce = 1 << 18;
// Measurement (host only): the one-launch backward (dw first) sums the groups after its dx role, not under it.
constexpr int kRgEndReduce = 1 << 19;
// Measurement: the one-launch backward (dw first) without the L2 prefetch of dx's g rows (host), and the dx kernel
// without its register prefetch of the next unit's g rows (RouterGemmDxTmaArgs::flags; session 26).
constexpr int kRgNoGPrefetch = 1 << 20;
// The dw role's x tiles loaded with an L2 evict-first policy (RouterGemmDwTmaArgs::flags; the one-launch backward
// sets it unless kRgNoXEvictFirst, measurement, host only).
constexpr int kRgXEvictFirst = 1 << 21, kRgNoXEvictFirst = 1 << 22;
// Measurement (host only; session 27): side by side keeps the dx and dw kernels' own clusters (dx without multicast,
// dw's ranges in clusters of 2 summed by dw_reduce) instead of router_gemm_side_by_side_plan's.
constexpr int kRgSbsOwnClusters = 1 << 29;
// Measurement (host only; session 27): side by side launches the dx kernel first and dw behind it (the order before
// session 27) where it would launch dw first.
constexpr int kRgSbsDxFirst = 1 << 30;
constexpr int kRgSkipW = 1 << 9, kRgRotateK = 1 << 10, kRgBalance = 1 << 11, kRgEpiStaged = 1 << 12,
              kRgHalfStore = 1 << 13, kRgEpiDirect = 1 << 14, kRgNoop = 1 << 15, kRgSkipMma = 1 << 16,
              kRgSkipLoad = 1 << 17;
// Expert-pair forward: kRgSkipW (bench only) loads no w (MMAs read stale shared memory: what w's traffic costs); kRgRotateK starts each
// tile's K walk at a different chunk (a kernel option: results stay deterministic); kRgBalance (host only) cuts T
// into one tile per CTA pair of the GPU (tile_rows < BM) instead of BM-row tiles; kRgEpiStaged: a cluster's last tile
// leaves through shared memory (the drained ring) with 16-byte stores of whole lines (the op's default since session
// 5; kRgEpiDirect, host only, measurement: the 8-byte stores from the registers instead); kRgHalfStore (bench only):
// consumer warpgroup 1 stores nothing (does the store phase scale with its bytes?); kRgNoop (bench only, expert-pair
// and 64-token TMA kernels): every CTA returns at once — what the grid's launch and completion cost alone.
// The TMA backward's ablations (bench only; the outputs are garbage): kRgSkipMma issues no wgmma (the consumers still
// wait for every stage and release it: the data movement alone), kRgSkipLoad fetches nothing (the producer arrives on
// the full barriers with no bytes: the MMAs read stale shared memory), kRgSkipStore writes no dx / no dw (dw: no
// staging, no cluster sum, no partials, and the host launches no dw_reduce).
// kRgSkipStore (TMA forward, bench only): the logits are not written (nor the K-split partials exchanged), so the
// bench can time the main loop alone; the output is garbage. The expert-pair forward takes kRgSkipMma and kRgSkipLoad
// too (bench only, as the backward's).

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
