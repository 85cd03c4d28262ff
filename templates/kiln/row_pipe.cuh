// kiln/row_pipe.cuh — streaming rows through shared memory for the persistent row-wise backward kernels.
//
//   * CtaRows: the CTA's rows c, c + G, c + 2G, … (counts differ by ≤ 1: the grid is sized to the GPU, so every SM
//     streams the same number of bytes, where a grid-stride walk over groups of rows leaves some CTAs a whole extra
//     round; and at any moment all CTAs work on one compact band of rows, which DRAM serves better than contiguous
//     per-CTA strips: those measured 1–2 µs slower on the rope and gate backwards);
//   * a per-warp ring of DEPTH slots: the warp copies row k + DEPTH into the slot row k used while it computes the
//     rows in between, so DEPTH − 1 rows per warp are always in flight and no other warp has to be waited for.
//     On sm_90 one lane issues a TMA bulk copy per tensor (cp.async.bulk, completion counted on the slot's
//     mbarrier); before sm_90 every lane issues 16-byte cp.async copies and the warp waits on its commit groups.
#pragma once
#include "kiln/common.cuh"
#include "kiln/mbarrier.cuh"
#include "kiln/ptx.cuh"

namespace kiln {

// The rows of this CTA (blockIdx.x of gridDim.x) that its group `group` of `groups` takes: the CTA's rows are
// c, c + G, c + 2G, …; the group takes every groups-th of them, starting with its own index: row(k), k < n.
// The divisions are 32-bit where the values fit (always for M < 2³¹): a 64-bit division is a ~70-instruction
// subroutine, and these run before a warp's first copy is issued.
struct CtaRows {
  i64 c, G;
  int group, groups, n;
  __device__ __forceinline__ CtaRows(i64 M, int g, int ng)
      : c(blockIdx.x), G(gridDim.x), group(g), groups(ng), n(0) {
    if (M <= 0x7fffffff) {
      const u32 m32 = static_cast<u32>(M), c32 = blockIdx.x;
      const u32 mine = c32 < m32 ? (m32 - 1 - c32) / gridDim.x + 1 : 0;
      const u32 g32 = static_cast<u32>(g);
      n = g32 < mine ? static_cast<int>((mine - 1 - g32) / static_cast<u32>(ng) + 1) : 0;
    } else {
      const i64 mine = c < M ? (M - 1 - c) / G + 1 : 0;
      n = g < mine ? static_cast<int>((mine - 1 - g) / ng + 1) : 0;
    }
  }
  __device__ __forceinline__ i64 row(int k) const { return c + (group + static_cast<i64>(k) * groups) * G; }
};

// The coordinates (q, m) = (t / D, t mod D) of a walker's rows t = row(k0), row(k0 + 1), … of a CtaRows sequence:
// consecutive rows differ by the constant groups·G, so after one division at construction each step costs two adds
// and a compare instead of a division per row. (Rows of a [B, S] batch: D = S gives (b, s); D = B gives (s, b).)
struct RowWalker {
  int q, m, dq, dm, D;
  __device__ __forceinline__ RowWalker(const CtaRows& r, int k0, int D_) : D(D_) {
    const i64 t = r.row(k0), step = static_cast<i64>(r.groups) * r.G;
    if (t <= 0xffffffffll && step <= 0xffffffffll) {  // 32-bit divisions (see CtaRows)
      const u32 t32 = static_cast<u32>(t), s32 = static_cast<u32>(step), d32 = static_cast<u32>(D_);
      const u32 q32 = t32 / d32, dq32 = s32 / d32;
      q = static_cast<int>(q32);
      m = static_cast<int>(t32 - q32 * d32);
      dq = static_cast<int>(dq32);
      dm = static_cast<int>(s32 - dq32 * d32);
    } else {
      q = static_cast<int>(t / D_);
      m = static_cast<int>(t - static_cast<i64>(q) * D_);
      dq = static_cast<int>(step / D_);
      dm = static_cast<int>(step - static_cast<i64>(dq) * D_);
    }
  }
  __device__ __forceinline__ void next() {
    m += dm;
    q += dq;
    if (m >= D) {
      m -= D;
      ++q;
    }
  }
};

// A warp's ring of DEPTH slots of SLOT bytes each (16-byte aligned), holding NT tensors' pieces of PIECE bytes
// each at offsets 0, PIECE, 2·PIECE, …. BULK: TMA bulk copies on per-slot mbarriers (sm_90), else cp.async groups.
// Every warp calls issue(k, …) for k = 0 … DEPTH − 1, then for each row k: wait(k), compute from slot(k),
// release() (all lanes done reading), issue(k + DEPTH, …). issue() with valid = false copies nothing (but keeps the
// cp.async group count uniform). Rows are waited in order. EVICT_FIRST: the bulk copies read with an L2 evict-first
// policy (the default: streamed inputs should not displace anything), else with the default policy.
template <int DEPTH, int SLOT, bool BULK, bool EVICT_FIRST = true>
struct WarpRing {
  unsigned char* base;  // DEPTH · SLOT bytes
  u64* bars;            // DEPTH mbarriers (BULK)

  // Lane 0 initializes the barriers; the warp then synchronizes (call before the first issue).
  __device__ __forceinline__ void init(int lane) {
    if constexpr (BULK) {
      if (lane == 0) {
#pragma unroll
        for (int s = 0; s < DEPTH; ++s) mbar_init(bars + s, 1);
        fence_mbar_init();  // the barriers visible to the async proxy (the bulk copies complete on them)
        fence_proxy_async();
      }
    }
    __syncwarp();
  }
  __device__ __forceinline__ unsigned char* slot(int k) const { return base + (k % DEPTH) * SLOT; }

  // Copies `pieces` contiguous global ranges of PIECE bytes (src[i] → slot offset i·PIECE) for row k.
  template <int PIECE, int NP>
  __device__ __forceinline__ void issue(int k, bool valid, const void* const (&src)[NP], int lane) {
    static_assert(PIECE % 16 == 0 && NP * PIECE <= SLOT, "16-byte pieces that fit the slot");
    unsigned char* dst = slot(k);
    if constexpr (BULK) {
      if (valid && lane == 0) {
        u64* bar = bars + k % DEPTH;
        fence_proxy_async();  // the warp's reads of the slot (before release()'s __syncwarp) before the refill
        mbar_arrive_expect_tx(bar, NP * PIECE);
#pragma unroll
        for (int i = 0; i < NP; ++i) {
          if constexpr (EVICT_FIRST) bulk_load_evict_first(dst + i * PIECE, src[i], PIECE, bar);
          else bulk_load(dst + i * PIECE, src[i], PIECE, bar);
        }
      }
    } else {
      if (valid) {
#pragma unroll
        for (int i = 0; i < NP; ++i)
#pragma unroll 4
          for (int c = lane; c < PIECE / 16; c += 32)
            cp_async16(dst + i * PIECE + c * 16, static_cast<const unsigned char*>(src[i]) + c * 16, true);
      }
      cp_async_commit();
    }
  }
  // Row k's copies have landed and are visible to every lane of the warp.
  __device__ __forceinline__ void wait(int k) {
    if constexpr (BULK) {
      mbar_wait(bars + k % DEPTH, static_cast<u32>((k / DEPTH) & 1));
    } else {
      cp_async_wait_group<DEPTH - 1>();
      __syncwarp();
    }
  }
  // Every lane is done reading the slot of the row just computed (call before issuing into it).
  __device__ __forceinline__ void release() { __syncwarp(); }
  // No copy is left in flight (BULK: every issued row was waited).
  __device__ __forceinline__ void drain() {
    if constexpr (!BULK) cp_async_wait_group<0>();
  }
};

}  // namespace kiln
