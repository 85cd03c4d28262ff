// kiln/tile_pipeline.cuh — what the warp-specialized persistent GEMMs (gated_mlp.cuh, fp8_gemm.cuh) share: the
// position in their STAGES-deep TMA ring, the ring's barriers, the grouped tile order, and a consumer warpgroup's
// TMA-store epilogue (stmatrix staging, then one thread's tensor stores).
#pragma once
#include "kiln/common.cuh"
#include "kiln/mbarrier.cuh"
#include "kiln/wgmma.cuh"

namespace kiln {
namespace tp {

// A position in a STAGES-deep ring: stage s and the parity of the current lap.
template <int STAGES>
struct RingPos {
  int s = 0;
  u32 phase = 0;
  __device__ __forceinline__ void next() {
    if (++s == STAGES) {
      s = 0;
      phase ^= 1;
    }
  }
};

// Stage s's "full" barrier at bars + 8·s (count 1: the producer's expect-tx arrival) and its "empty" barrier at
// bars + 8·(STAGES + s) (count `consumers`: every consumer warpgroup releases every stage). Called by one thread.
template <int STAGES>
__device__ __forceinline__ void ring_init(u32 bars, u32 consumers) {
  for (int s = 0; s < STAGES; ++s) {
    mbar_init(bars + 8 * s, 1);
    mbar_init(bars + 8 * (STAGES + s), consumers);
  }
  fence_mbar_init();
}

// Tile t's origin among m_tiles × NT tiles of BM × BN: groups of GM row tiles, the row tile fastest inside a group
// (a wave of CTAs shares few column tiles of the weight and few row tiles of the activation).
template <int GM, int NT, int BM, int BN>
__device__ __forceinline__ void grouped_origin(int t, int m_tiles, int& m0, int& n0) {
  const int group = t / (GM * NT), first = group * GM;
  const int gm = m_tiles - first < GM ? m_tiles - first : GM, r = t - group * GM * NT;
  m0 = (first + r % gm) * BM;
  n0 = (r / gm) * BN;
}

// Consumer warpgroup wm's 64 × BN output block (rows m0 + 64·wm …, columns n0 …) through its staging buffer `buf`:
// wait until the previous block's stores have read the buffer, stmatrix the values (pk(i) packs accumulator
// registers i, i + 1; wgmma::stage_sw128), fence for the copy engine, then one thread stores the 64-column boxes
// below `ncols` by TMA (tensor map `tmo`) unless the block starts at or past row M. Named barrier 1 + wm joins the
// warpgroup's 128 threads.
template <int BN, typename Pack>
__device__ __forceinline__ void store_block_tma(u32 buf, const void* tmo, int wm, int tid, int lane, int warp, int m0,
                                                int n0, int M, int ncols, Pack pk) {
  if ((tid & 127) == 0) bulk_wait_read();
  asm volatile("bar.sync %0, 128;" ::"r"(1 + wm) : "memory");
  wgmma::stage_sw128<BN>(buf, lane, warp, pk);
  fence_proxy_async();  // stmatrix writes → the copy engine's reads
  asm volatile("bar.sync %0, 128;" ::"r"(1 + wm) : "memory");
  if ((tid & 127) == 0 && m0 + wm * 64 < M) {
#pragma unroll
    for (int at = 0; at < BN / 64; ++at)
      if (n0 + at * 64 < ncols) tma_store_2d(tmo, buf + at * 8192, n0 + at * 64, m0 + wm * 64);
    bulk_commit();
  }
}

}  // namespace tp
}  // namespace kiln
