// kiln/router_gemm_tma.cuh — Hopper (sm_90a) router GEMM forward: TMA, an mbarrier pipeline, warp specialization.
//
//   logits[t, e] = Σ_k x[t, k] · w[e, k]      (bf16 × bf16 → fp32, exact products, fp32 accumulation)
//
// CTA = one producer warpgroup + WGM·WGN consumer warpgroups. The producer's first thread streams K chunks of 64
// columns through a STAGES-deep ring: the x tile [BM = 64·WGM rows][64] and the whole w chunk [E][64] land by TMA
// (cp.async.bulk.tensor, 128-byte swizzle = the K-major layout wgmma reads) and complete on the stage's `full`
// mbarrier. Rows past T and columns past K are zero-filled by the copy engine. With a cluster of CM CTAs (CTAs
// of consecutive token tiles), each CTA fetches E/CM rows of the w chunk and multicasts them to every CTA of the
// cluster, so w leaves L2 once per cluster instead of once per CTA. Consumer warpgroup (i, j) computes tile rows
// [64·i, 64·i + 64) × experts [j·E/WGN, (j+1)·E/WGN) with wgmma.m64nNk16 (operands from shared memory),
// keeps one chunk of MMAs in flight, and releases a stage (its `empty` mbarrier in every CTA of the cluster, which
// all wrote into it) once the MMAs reading it have completed. Persistent: a cluster walks token-tile groups
// cluster_id, cluster_id + clusters, …; the producer runs ahead into the next tile while the consumers write the
// last one: accumulators go straight to global memory (8-byte stores, each quad of lanes covering a 32-byte
// sector of a row), rows past T masked.
#pragma once
#include "kiln/mbarrier.cuh"
#include "kiln/ptx.cuh"
#include "kiln/router_gemm_sm90.cuh"

namespace kiln {
namespace rgt {

// Measurement timestamps: the SM's cycle counter (the global nanosecond timer is kiln/ptx.cuh's globaltimer_ns).
__device__ __forceinline__ u64 clk() { return static_cast<u64>(clock64()); }

// The sum over the Q CTAs of this cluster (in cluster-rank order: the same bits whichever CTA adds) of `pieces`
// 16-byte fp32 pieces at shared offsets off(i) from `base`, piece i handed to emit(i, sum); NT threads, t = 0 … NT−1.
// Loads are issued in batches of 4 pieces × Q CTAs before the first add, so distributed-shared-memory latency is
// paid once per batch, not once per load.
template <int Q, int NT, int PIECES, typename Off, typename Emit>
__device__ __forceinline__ void cluster_sum_rows(u32 base, int t, Off off, Emit emit) {
  constexpr int BATCH = 4;
  u32 rbase[Q];
#pragma unroll
  for (int q = 0; q < Q; ++q) asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(rbase[q]) : "r"(base), "r"(q));
  for (int i0 = t; i0 < PIECES; i0 += NT * BATCH) {
    float v[BATCH][Q][4];
#pragma unroll
    for (int b = 0; b < BATCH; ++b) {
      const int i = i0 + b * NT;
      if (i < PIECES) {
        const u32 o = static_cast<u32>(off(i));
#pragma unroll
        for (int q = 0; q < Q; ++q)
          asm volatile("ld.shared::cluster.v4.f32 {%0,%1,%2,%3}, [%4];"
                       : "=f"(v[b][q][0]), "=f"(v[b][q][1]), "=f"(v[b][q][2]), "=f"(v[b][q][3])
                       : "r"(rbase[q] + o)
                       : "memory");
      }
    }
#pragma unroll
    for (int b = 0; b < BATCH; ++b) {
      const int i = i0 + b * NT;
      if (i < PIECES) {
        float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int q = 0; q < Q; ++q)
#pragma unroll
          for (int k = 0; k < 4; ++k) sum[k] += v[b][q][k];
        Vec16 o;
#pragma unroll
        for (int k = 0; k < 4; ++k) o.w[k] = __float_as_uint(sum[k]);
        emit(i, o);
      }
    }
  }
}

// Writes a consumer's accumulators (WgmmaRow<N, C0> of one m64 block) to global memory: register i of lane `lane`
// holds row row0 + 8·((i/2) & 1) and column C0 + 8·(i/4) + 2·(lane & 3) + (i & 1); `out` points at column 0 of
// this warpgroup's columns in row 0 of the tile. Rows at or past `rows_valid` are skipped.
template <int N, int C0>
struct StoreRow {
  using Row = rg90::WgmmaRow<N, C0>;
  __device__ __forceinline__ static void store(const typename Row::Acc& a, float* out, i64 ld, int row0, int lane,
                                               int rows_valid) {
    constexpr int W = Row::N;
#pragma unroll
    for (int i = 0; i < W / 2; i += 2) {
      const int r = row0 + 8 * ((i >> 1) & 1), c = C0 + 8 * (i >> 2) + 2 * (lane & 3);
      if (r < rows_valid)
        asm volatile("st.global.v2.f32 [%0], {%1, %2};" ::"l"(out + r * ld + c), "f"(a.d[i]), "f"(a.d[i + 1])
                     : "memory");
    }
    StoreRow<N, C0 + W>::store(a.next, out, ld, row0, lane, rows_valid);
  }
};
template <int N>
struct StoreRow<N, N> {
  __device__ __forceinline__ static void store(const typename rg90::WgmmaRow<N, N>::Acc&, float*, i64, int, int, int) {}
};

// ---- the stage ring of the warp-specialized forward kernels ------------------------------------------------------
// STAGES stages of STAGE bytes from `base` (the dynamic shared memory rounded up to 1 KiB: the same offset in every CTA
// of a cluster, which multicast writes rely on), then 2·STAGES mbarriers: full[s] (the producer's arrival and the
// stage's transaction bytes) at bars + 8s, empty[s] (one arrival per consumer warpgroup of the cluster that reads
// stage s) at bars + 8·(STAGES + s).
// A walker's place in the ring is (s, phase): stage s, and the parity of the fill it waits for. Its next stage:
template <int STAGES>
__device__ __forceinline__ void next_stage(int& s, u32& phase) {
  if (++s == STAGES) {
    s = 0;
    phase ^= 1;
  }
}
template <int STAGES, int STAGE>
struct StageRing {
  u32 base, bars;
  __device__ __forceinline__ explicit StageRing(const char* smem) {
    base = (smem_u32(smem) + 1023u) & ~1023u;
    bars = base + STAGES * STAGE;
  }
  __device__ __forceinline__ u32 stage(int s) const { return base + s * STAGE; }
  __device__ __forceinline__ u32 full(int s) const { return bars + 8 * s; }
  __device__ __forceinline__ u32 empty(int s) const { return bars + 8 * (STAGES + s); }
  // Thread 0: every barrier initialized (empty[s] expecting `readers` arrivals) and the inits fenced for the cluster;
  // a CTA or cluster barrier must follow before any other thread uses them.
  __device__ __forceinline__ void init(u32 readers) const {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), readers);
    }
    fence_mbar_init();
  }
  // Producer: stage s is free (every reader released its previous fill). Consumer: its fill `phase` has landed.
  __device__ __forceinline__ void wait_empty(int s, u32 phase) const { mbar_wait(empty(s), phase ^ 1); }
  __device__ __forceinline__ void wait_full(int s, u32 phase) const { mbar_wait(full(s), phase); }
  // A consumer warpgroup releases stage s, if `when`, in all CL CTAs of the cluster that wrote into it: its thread r
  // (tid mod 128) arrives on the barrier at empty(s)'s offset in CTA r (CL = 1: a local arrival).
  template <int CL>
  __device__ __forceinline__ void release(int s, int tid, bool when = true) const {
    if (when && (tid & 127) < CL) {
      if constexpr (CL == 1) mbar_arrive(empty(s));
      else mbar_arrive_cluster(empty(s), static_cast<u32>(tid & 127));
    }
  }
};

// A consumer warpgroup's MMAs on one landed 64-column chunk: acc += A(sa) · B(sb)ᵀ in four k16 steps, then a wait until
// only this chunk's MMAs are in flight, so the previous chunk's stage may be released.
template <typename Row>
__device__ __forceinline__ void mma_chunk(typename Row::Acc& acc, u32 sa, u32 sb) {
  Row::fence(acc);
  rg90::wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) Row::mma(acc, rg90::desc_sw128(sa + ks * 32), sb + ks * 32);
  rg90::wgmma_commit();
  rg90::wgmma_wait<1>();
  Row::fence(acc);
}
// The same from the descriptors' low words (rg90::desc_lo of A's and B's first rows): a k16 step is 32 bytes, +2.
template <typename Row>
__device__ __forceinline__ void mma_chunk_lo(typename Row::Acc& acc, u32 a_lo, u32 b_lo) {
  Row::fence(acc);
  rg90::wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) Row::mma_lo(acc, rg90::desc_from_lo(a_lo + 2 * ks), b_lo + 2 * ks);
  rg90::wgmma_commit();
  rg90::wgmma_wait<1>();
  Row::fence(acc);
}
// One arrival on the barrier at shared::cluster address `remote` (mapa'd once by the caller).
__device__ __forceinline__ void mbar_arrive_remote(u32 remote) {
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" ::"r"(remote) : "memory");
}

// kRgEpiTmaPipe: box b (columns [32b, 32b + 32), registers [16b, 16b + 16)) of a warp's 16 rows of an m64n128
// accumulator, staged at slot + 2048·b in WgmmaRow::stage_sw128's layout; b is a compile-time value after unrolling.
__device__ __forceinline__ void stage_box_sw128(const float (&d)[64], u32 slot, int lane, int b) {
#pragma unroll
  for (int i = 16 * b; i < 16 * b + 16; i += 2) {
    const int r = (lane >> 2) + 8 * ((i >> 1) & 1), c = 8 * (i >> 2) + 2 * (lane & 3);
    const int cc = c & 31, j = cc >> 2;
    const u32 addr = slot + b * 2048 + r * 128 + ((j ^ (r & 7)) << 4) + (cc & 3) * 4;
    asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(addr), "f"(d[i]), "f"(d[i + 1]) : "memory");
  }
}

}  // namespace rgt

// Grid: CM·clusters CTAs (clusters of (CM, 1, 1) when CM > 1), (1 + WGM·WGN)·128 threads, dynamic shared memory:
// 1 KiB alignment slack + STAGES × (x tile BM·128 B + w chunk E·128 B rounded to 1 KiB) + 2·STAGES mbarriers.
template <int K, int E, int WGM, int WGN, int STAGES, int CM>
__global__ void __launch_bounds__((1 + WGM * WGN) * 128, 1)
    router_gemm_fwd_tma_kernel(const __grid_constant__ RouterGemmFwdTmaArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if (a.flags & kRgNoop) return;  // measurement: the grid's launch and completion alone
  constexpr int BM = 64 * WGM, EN = E / WGN, CONSUMERS = WGM * WGN;
  static_assert(E % 8 == 0 && E >= 8 && E <= 256, "E: a multiple of 8 up to 256");
  static_assert(EN * WGN == E && EN % 8 == 0, "E / WGN: a multiple of 8");
  static_assert(CM == 1 || CM == 2 || CM == 4, "cluster of 1, 2 or 4 CTAs");
  static_assert((E / CM) % 8 == 0 && (E / CM) * CM == E, "E / CM rows per multicast slice: a multiple of 8");
  constexpr int A_BYTES = BM * 128, B_BYTES = ((E * 128 + 1023) / 1024) * 1024, STAGE = A_BYTES + B_BYTES;
  constexpr int CHUNKS = (K + 63) / 64;
  constexpr u32 TX = BM * 128 + E * 128;  // bytes landing in each CTA's stage per chunk (x tile + all of w's chunk)
  using Row = rg90::WgmmaRow<EN, 0>;

  extern __shared__ __align__(16) char smem_raw[];
  const rgt::StageRing<STAGES, STAGE> ring(smem_raw);
  const int tid = threadIdx.x, wg = tid / 128;
  const u32 rank = CM > 1 ? blockIdx.x % CM : 0;
  const int cluster = blockIdx.x / CM, clusters = gridDim.x / CM;
  const int groups = (a.tiles + CM - 1) / CM;

  if (tid == 0) ring.init(CONSUMERS * CM);  // every stage is read by every consumer warpgroup of the cluster
  if constexpr (CM > 1) cluster_sync(); else __syncthreads();

  if (wg == 0) {  // producer
    if constexpr (CONSUMERS > 1) setmaxnreg_dec<40>();
    if (tid == 0) {
      prefetch_tmap(&a.tmx);
      prefetch_tmap(&a.tmw);
      int s = 0;
      u32 phase = 0;
      for (int grp = cluster; grp < groups; grp += clusters) {
        const int m0 = (grp * CM + static_cast<int>(rank)) * BM;
        for (int kc = 0; kc < CHUNKS; ++kc) {
          ring.wait_empty(s, phase);  // every consumer of the cluster released stage s
          const u32 full = ring.full(s), sa = ring.stage(s), sb = sa + A_BYTES;
          // A tile entirely past T (the cluster's padding tile): only w arrives, its MMAs are never stored.
          const bool rows = m0 < a.T;
          mbar_arrive_expect_tx(full, rows ? TX : TX - BM * 128);
          if (rows) tma_load_2d(sa, &a.tmx, full, kc * 64, m0);
          if constexpr (CM == 1)
            tma_load_2d(sb, &a.tmw, full, kc * 64, 0);
          else
            tma_load_2d_multicast(sb + rank * (E / CM) * 128, &a.tmw, full, kc * 64,
                                  static_cast<int>(rank) * (E / CM), static_cast<unsigned short>((1 << CM) - 1));
          rgt::next_stage<STAGES>(s, phase);
        }
      }
    }
  } else {  // consumers
    if constexpr (CONSUMERS > 1) setmaxnreg_inc<232>();
    const int c = wg - 1, wm = c / WGN, wn = c % WGN;
    const int lane = tid & 31, warp = (tid & 127) >> 5;
    int s = 0;
    u32 phase = 0;
    for (int grp = cluster; grp < groups; grp += clusters) {
      const int m0 = (grp * CM + static_cast<int>(rank)) * BM;
      typename Row::Acc acc;
      Row::zero(acc);
      int prev = -1;
      for (int kc = 0; kc < CHUNKS; ++kc) {
        ring.wait_full(s, phase);
        rgt::mma_chunk<Row>(acc, ring.stage(s) + wm * 64 * 128, ring.stage(s) + A_BYTES + wn * EN * 128);
        ring.template release<CM>(prev, tid, prev >= 0);  // the previous chunk's MMAs are done
        prev = s;
        rgt::next_stage<STAGES>(s, phase);
      }
      rg90::wgmma_wait<0>();
      Row::fence(acc);
      ring.template release<CM>(prev, tid);
      if (a.flags & kRgSkipStore) continue;
      float* out = a.out + static_cast<i64>(m0 + wm * 64) * a.out_stride + wn * EN;
      rgt::StoreRow<EN, 0>::store(acc, out, a.out_stride, warp * 16 + (lane >> 2), lane, a.T - m0 - wm * 64);
    }
  }
  // No CTA may leave while a peer can still multicast into its shared memory or arrive on its barriers.
  if constexpr (CM > 1) cluster_sync();
#else
  __trap();  // sm_90a only (the host recipe never launches it elsewhere)
#endif
}

// K split over a cluster of KS CTAs (blockIdx.y = split, clusters (1, KS, 1)): CTA (m, r) computes token tile m over
// K chunks [r·PER, (r + 1)·PER) with the same producer / consumer pipeline (no multicast, not persistent: grid.x =
// tiles), stages its fp32 partial tile [BM][E] in shared memory (the drained ring), and CTA r adds rows
// [r·BM/KS, (r + 1)·BM/KS) of all KS partials in cluster-rank order through distributed shared memory (deterministic)
// and writes them with 16-byte stores. Halving K per CTA doubles the tokens a w chunk serves at the same CTA count:
// 48 KiB of x + w per 128 × 256 × 64 chunk instead of 40 KiB per 64 × 256 × 64.
template <int K, int E, int WGM, int WGN, int STAGES, int KS>
__global__ void __launch_bounds__((1 + WGM * WGN) * 128, 1)
    router_gemm_fwd_tma_ksplit_kernel(const __grid_constant__ RouterGemmFwdTmaArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BM = 64 * WGM, EN = E / WGN, CONSUMERS = WGM * WGN;
  static_assert(E % 8 == 0 && E >= 8 && E <= 256, "E: a multiple of 8 up to 256");
  static_assert(EN * WGN == E && EN % 8 == 0, "E / WGN: a multiple of 8");
  static_assert(KS >= 2 && KS <= 4 && BM % KS == 0, "K split over 2–4 CTAs");
  constexpr int A_BYTES = BM * 128, B_BYTES = ((E * 128 + 1023) / 1024) * 1024, STAGE = A_BYTES + B_BYTES;
  constexpr int ALL = (K + 63) / 64, PER = (ALL + KS - 1) / KS;
  constexpr int PITCH = (E + 8) * 4;  // staging rows: 32-byte shift per row, conflict-free 8-byte stores
  static_assert(BM * PITCH <= STAGES * STAGE, "the partial tile is staged in the drained ring");
  using Row = rg90::WgmmaRow<EN, 0>;

  extern __shared__ __align__(16) char smem_raw[];
  const rgt::StageRing<STAGES, STAGE> ring(smem_raw);
  const u32 base = ring.base;
  const int tid = threadIdx.x, wg = tid / 128;
  const int m0 = blockIdx.x * BM, split = blockIdx.y;
  const int c0 = split * PER, chunks = ALL - c0 < PER ? ALL - c0 : PER;

  if (tid == 0) ring.init(CONSUMERS);
  __syncthreads();

  if (wg == 0) {  // producer
    if constexpr (CONSUMERS > 1) setmaxnreg_dec<40>();
    if (tid == 0) {
      prefetch_tmap(&a.tmx);
      prefetch_tmap(&a.tmw);
      int s = 0;
      u32 phase = 0;
      for (int kc = 0; kc < chunks; ++kc) {
        ring.wait_empty(s, phase);
        const u32 full = ring.full(s), sa = ring.stage(s), sb = sa + A_BYTES;
        mbar_arrive_expect_tx(full, BM * 128 + E * 128);
        tma_load_2d(sa, &a.tmx, full, (c0 + kc) * 64, m0);
        tma_load_2d(sb, &a.tmw, full, (c0 + kc) * 64, 0);
        rgt::next_stage<STAGES>(s, phase);
      }
    }
    cluster_sync();  // the producer warpgroup only joins the cluster barriers
    cluster_sync();
  } else {  // consumers
    if constexpr (CONSUMERS > 1) setmaxnreg_inc<232>();
    const int c = wg - 1, wm = c / WGN, wn = c % WGN;
    const int lane = tid & 31, warp = (tid & 127) >> 5;
    typename Row::Acc acc;
    Row::zero(acc);
    int s = 0, prev = -1;
    u32 phase = 0;
    for (int kc = 0; kc < chunks; ++kc) {
      ring.wait_full(s, phase);
      rgt::mma_chunk<Row>(acc, ring.stage(s) + wm * 64 * 128, ring.stage(s) + A_BYTES + wn * EN * 128);
      ring.template release<1>(prev, tid, prev >= 0);
      prev = s;
      rgt::next_stage<STAGES>(s, phase);
    }
    rg90::wgmma_wait<0>();
    Row::fence(acc);
    const u32 rank = cluster_ctarank();
    // Every consumer's MMAs are done and every loaded stage consumed: the ring becomes the staging tile.
    asm volatile("bar.sync 1, %0;" ::"n"(CONSUMERS * 128) : "memory");
    Row::stage(acc, base + wn * EN * 4, wm * 64 + warp * 16 + (lane >> 2), lane, PITCH);
    cluster_sync();  // every partial tile of the cluster is staged
    constexpr int ROWS = BM / KS, CPR = E / 4;  // rows this CTA finishes; 16-byte pieces a row
    if (!(a.flags & kRgSkipStore))
      rgt::cluster_sum_rows<KS, CONSUMERS * 128, ROWS * CPR>(
        base, tid - 128, [&](int i) { return (static_cast<int>(rank) * ROWS + i / CPR) * PITCH + (i % CPR) * 16; },
        [&](int i, const Vec16& o) {
          const int r = static_cast<int>(rank) * ROWS + i / CPR;
          if (m0 + r < a.T) store16(a.out + static_cast<i64>(m0 + r) * a.out_stride + (i % CPR) * 4, o);
        });
    cluster_sync();  // keep this CTA's tile alive until the others have read it
  }
#else
  __trap();
#endif
}


// x multicast over an expert pair: a cluster of 2 CTAs shares one token tile of BM = 64·WGM rows, CTA r computing
// experts [r·E/2, r·E/2 + E/2) (consumer warpgroup i: rows 64·i …, wgmma m64n(E/2)). Per 64-column chunk each CTA
// fetches BM/2 rows of x and multicasts them into both CTAs' stage, and its own E/2 rows of w: 16 + 16 KiB land
// per 128 × 128 × 64 chunk (BM = 128, E = 256) against 40 KiB per 64 × 256 × 64 without the pair. Persistent: cluster
// c walks token tiles c, c + clusters, …; a stage is refilled once the consumers of both CTAs released it (the
// multicast writes into both).
//  * a.tile_rows (≤ BM): the token rows a tile owns (tile t = rows [t·tile_rows, …)); below BM the x boxes overlap the
//    next tile's rows and only the owned rows are stored (so 66 tiles of 125 rows keep all 132 SMs busy at 8192).
//  * ISSUE (1, 2 or 4): stages the producer fills back to back; it waits for ISSUE free stages and requests ISSUE
//    consecutive K chunks at once (64·ISSUE contiguous columns of every x and w row in flight together).
//  * kRgRotateK: tile t walks its K chunks from chunk t mod CHUNKS on (wrapping), so the clusters in flight read
//    different w chunks instead of all hitting the same 32 KiB of w at once. The order of the fp32 sums depends on
//    the tile only: deterministic.
//  * PP = 1 (ping-pong, WGM = 2): tiles of BM = 64 rows; consumer warpgroup i takes the cluster's tiles i, i + 2, …
//    (every stage is read by one warpgroup of each CTA). The producer fills the ring in tile order, so warpgroup 1's
//    main loop starts as warpgroup 0's ends and warpgroup 0 stores its tile under it: only the last tile's store is
//    left after the last chunk, at the price of w landing once per 64 rows instead of per 128.
//  * CL = 4: clusters of 2 token tiles × 2 expert halves; CTA rank 2·i + j (token tile i, expert half j) fetches half
//    of its x tile (multicast to the two CTAs of tile i) and half of its w half (multicast to the two CTAs of half j):
//    x and w both leave L2 once per two CTAs (L2 → SM reads 67 MB instead of 100 at 8192 × 2048 → 256). A stage of
//    a CTA is written by three CTAs of the cluster, so every consumer releases it in all four.
//  * a.trace (measurement): per-CTA timestamps (kRgTrace* slots, kRgTraceFwdSlots a CTA).
//  * kRgEpiTma (not with PP; EH % 32 == 0, STAGES ≥ 4 and tile_rows == BM, else ignored): the cluster's last tile leaves
//    by TMA stores through a.tmo. Warp v of consumer warpgroup w stages its 16 rows (128-byte-swizzled boxes of 16 ×
//    32) in the 8 KiB of stage v that held warpgroup w's x rows — the other warpgroup never reads them and no fill
//    writes the ring after the last tile's, all of which this warpgroup saw land — fences them into the async proxy
//    and stores its EH/32 boxes from lane 0: no barrier across warps, no LSU stores; rows past T are clipped.
//  * kRgEpiTmaPipe (with kRgEpiTma, E/2 = 128): a TMA-storing warp stages and stores its four 16 × 32 boxes one at a
//    time (a fence and a store each), so its first box leaves after a quarter of the staging. Same bits.
//  * kRgSkipLoad / kRgSkipMma (bench only): the producer arrives on the full barriers without bytes / no wgmma.
template <int K, int E, int WGM, int STAGES, int ISSUE = 1, int PP = 0, int CL = 2>
__global__ void __launch_bounds__((1 + WGM) * 128, 1)
    router_gemm_fwd_tma_xmc_kernel(const __grid_constant__ RouterGemmFwdTmaArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int EH = E / 2, BM = PP ? 64 : 64 * WGM, XR = BM / 2;
  constexpr int TPG = CL / 2;  // token tiles a cluster works on at once
  static_assert(E % 16 == 0 && E >= 16 && E <= 256, "E: a multiple of 16 up to 256");
  static_assert((ISSUE == 1 || ISSUE == 2 || ISSUE == 4) && ISSUE <= STAGES, "ISSUE: 1, 2 or 4 stages at once");
  static_assert(PP == 0 || WGM == 2, "ping-pong: two consumer warpgroups");
  static_assert(CL == 2 || (CL == 4 && E % 32 == 0), "clusters of 2, or of 4 (E % 32 == 0)");
  constexpr int WR = EH / TPG;  // w rows a CTA fetches (its share of its expert half)
  constexpr int READERS = (PP ? 1 : WGM) * CL;  // consumer warpgroups (of the cluster) that release each stage
  constexpr int A_BYTES = BM * 128, B_BYTES = ((EH * 128 + 1023) / 1024) * 1024, STAGE = A_BYTES + B_BYTES;
  constexpr int CHUNKS = (K + 63) / 64;
  // The TMA-store epilogue: warp v's 16 × EH fp32 fit the 8 KiB of x rows its warpgroup owns in stage v.
  constexpr bool CAN_EPI_TMA = !PP && EH % 32 == 0 && STAGES >= 4 && 16 * EH * 4 <= 8192;
  using Row = rg90::WgmmaRow<EH, 0>;

  // The descriptors start loading first: the first fill waits for them, and the parameter reads below are a fetch of
  // their own.
  if (threadIdx.x == 0) {
    prefetch_tmap(&a.tmx);
    prefetch_tmap(&a.tmw);
  }
  if (a.flags & kRgNoop) return;  // measurement: the grid's launch and completion alone
  u64* const trace = a.trace ? a.trace + static_cast<i64>(blockIdx.x) * kRgTraceFwdSlots : nullptr;
  // The entry stamps stay in registers until the producer is done (a global store before the cluster barrier would
  // delay it).
  const u64 t0_ns = trace ? globaltimer_ns() : 0, t0_clk = trace ? rgt::clk() : 0;

  extern __shared__ __align__(16) char smem_raw[];
  const rgt::StageRing<STAGES, STAGE> ring(smem_raw);
  const int tid = threadIdx.x;
  const u32 rank = blockIdx.x % CL;
  const int ti = static_cast<int>(rank) / 2, ej = static_cast<int>(rank) % 2;  // token tile, expert half
  const int cluster = blockIdx.x / CL, clusters = gridDim.x / CL;
  const int groups = (a.tiles + TPG - 1) / TPG;
  const int rows = a.tile_rows;
  const int flags = a.flags;
  const bool load = !(flags & kRgSkipLoad), load_w = load && !(flags & kRgSkipW);
  if (tid == 128 && (flags & kRgEpiTma)) prefetch_tmap(&a.tmo);  // used at the end: fetched long before
  // Tile group t's j-th chunk (kRgRotateK: tile t starts at chunk t mod CHUNKS).
  auto kc_of = [&](int t, int j) {
    const int rot = (flags & kRgRotateK) ? t % CHUNKS : 0;
    return j + rot < CHUNKS ? j + rot : j + rot - CHUNKS;
  };
  // Tile group t's chunk j into stage s. Both CTAs of a token tile expect the same bytes: the halves of the x tile
  // inside T (a half entirely past T is fetched by neither: the accumulator rows it feeds are never stored) and the w
  // rows; this CTA fetches its share of x (multicast to the token tile's CTAs) and of w.
  auto fill = [&](int t, int j, int s) {
    const int m0 = (t * TPG + ti) * rows;
    const int kc = kc_of(t, j);
    const u32 full = ring.full(s), sa = ring.stage(s), sb = sa + A_BYTES;
    mbar_arrive_expect_tx(full, (load_w ? EH * 128 : 0) + (load && m0 < a.T ? XR * 128 : 0) +
                                    (load && m0 + XR < a.T ? XR * 128 : 0));
    if (!load) return;
    constexpr unsigned short XMASK = 3, WMASK = CL == 4 ? 5 : 1;  // shifted by 2·ti and by ej
    const int x0 = m0 + ej * XR;  // this CTA's x rows
    if (x0 < a.T)
      tma_load_2d_multicast(sa + ej * XR * 128, &a.tmx, full, kc * 64, x0,
                            static_cast<unsigned short>(XMASK << (2 * ti)));
    if (load_w) {
      if constexpr (CL == 2)
        tma_load_2d(sb, &a.tmw, full, kc * 64, ej * EH);
      else
        tma_load_2d_multicast(sb + ti * WR * 128, &a.tmw, full, kc * 64, ej * EH + ti * WR,
                              static_cast<unsigned short>(WMASK << ej));
    }
  };

  u64 t_init = 0, t_cluster = 0, t_pre = 0, t_first = 0;
  if (tid == 0) {
    // Every consumer warpgroup of the cluster that reads a stage releases it. The init fence releases the inits to the
    // cluster: the barrier below needs no release of its own.
    ring.init(READERS);
    if (trace) t_init = rgt::clk();
  }
  cluster_arrive_relaxed();
  cluster_wait();

  // The warpgroup index made warp-uniform by a shuffle (as CUTLASS does): the compiler then keeps the ring state, the
  // barrier addresses and the wgmma descriptors in uniform registers (session 10: no R2UR left in the chunk loop).
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  if (wg == 0) {  // producer
    if constexpr (WGM > 1) setmaxnreg_dec<40>();
    if (tid == 0) {
      if (trace) t_cluster = rgt::clk();
      int s = 0;
      u32 phase = 0;
      for (int t = cluster; t < groups; t += clusters) {
        for (int j = 0; j < CHUNKS; ++j) {
          if (j % ISSUE == 0) {  // both CTAs' consumers released stage s (and the next ISSUE − 1: they go out together)
            ring.wait_empty(s, phase);
#pragma unroll
            for (int i = 1; i < ISSUE; ++i)
              if (j + i < CHUNKS) {
                const bool wrap = s + i >= STAGES;
                mbar_wait(ring.empty(wrap ? s + i - STAGES : s + i), (wrap ? phase ^ 1 : phase) ^ 1);
              }
          }
          if (trace && !t_pre) t_pre = rgt::clk();
          fill(t, j, s);
          if (trace && !t_first) t_first = rgt::clk();
          if (++s == STAGES) {  // (not next_stage: through it, two instructions of this kernel's SASS move)
            s = 0;
            phase ^= 1;
          }
        }
      }
      if (trace) {
        trace[kRgTraceProducerLast] = rgt::clk();
        trace[kRgTraceProducerFirst] = t_first ? t_first : t_init;
        trace[kRgTraceProducerPre] = t_pre ? t_pre : t_init;
        trace[kRgTraceStartNs] = t0_ns;
        trace[kRgTraceStartClk] = t0_clk;
        trace[kRgTraceInitDone] = t_init;
        trace[kRgTraceClusterDone] = t_cluster;
        u32 sm;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
        trace[kRgTraceSm] = sm;
      }
      // kRgNoExitSync: instead of the final cluster barrier, the producer waits until every consumer warpgroup of the
      // cluster has released every fill of this CTA's ring (CUTLASS's producer tail). Then no arrival of the peer can
      // still target this CTA's barriers, and every multicast write into its stages has landed (its consumers waited
      // for each): the CTA may leave as soon as its own threads are done.
      if (flags & kRgNoExitSync)
        for (int i = 0; i < STAGES; ++i) {
          ring.wait_empty(s, phase);
          if (++s == STAGES) {
            s = 0;
            phase ^= 1;
          }
        }
    }
  } else {  // consumer warpgroup wm: tile rows 64·wm …, this CTA's E/2 experts
    if constexpr (WGM > 1) setmaxnreg_inc<232>();
    const int wm = wg - 1, lane = tid & 31, warp = (tid & 127) >> 5;
    const bool lead = trace && (tid & 127) == 0;
    const bool mma = !(flags & kRgSkipMma);
    u64* const tw = trace ? trace + kRgTraceWg0 + wm * kRgTraceWgSlots : nullptr;
    // The wgmma descriptors' low words of stage 0 (this warpgroup's A rows, B: warp-uniform); stage s adds
    // s · STAGE / 16 and a k16 step 2 (rg90::desc_lo). Threads 0 … CL − 1 of the warpgroup release a stage in CTA
    // (tid mod 128) of the cluster: the peer's empty(0), mapped once; empty(s) is 8·s bytes on.
    const u32 a_lo0 = rg90::desc_lo(ring.stage(0) + (PP ? 0 : wm * 64 * 128));
    const u32 b_lo0 = rg90::desc_lo(ring.stage(0) + A_BYTES);
    const bool releaser = (tid & 127) < CL;
    u32 rel0 = ring.empty(0);
    if constexpr (CL > 1)
      asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(rel0) : "r"(ring.empty(0)), "r"((tid & 127) % CL));
    int s = 0;
    u32 phase = 0;
    bool started = false;  // trace: this warpgroup's first tile is done
    bool tma_stored = false;  // lane 0: TMA stores in flight (read out of shared memory before the CTA leaves)
    for (int t = cluster, i = 0; t < groups; t += clusters, ++i) {
      if (PP && (i & 1) != wm) {  // the other warpgroup's tile: skip its CHUNKS stages
        const int adv = s + CHUNKS;
        phase ^= static_cast<u32>((adv / STAGES) & 1);
        s = adv % STAGES;
        continue;
      }
      // Ping-pong hand-off: a full barrier's parity tells phases apart only one phase ahead, so this warpgroup waits
      // on its tile's stages only once the other one has seen the last stage of the tile before land (named barrier
      // 3 + w is what warpgroup w waits on); from then on no stage can be more than one fill ahead of it.
      if (PP && i > 0) asm volatile("bar.sync %0, 256;" ::"r"(3 + wm) : "memory");
      const int m0 = (t * TPG + ti) * rows;
      typename Row::Acc acc;
      Row::zero(acc);
      int prev = -1;
      const bool last = t + clusters >= groups;
      for (int kc = 0; kc < CHUNKS; ++kc) {
        ring.wait_full(s, phase);
        if (PP && kc == CHUNKS - 1 && t + clusters < groups)  // the next tile is the other warpgroup's
          asm volatile("bar.arrive %0, 256;" ::"r"(3 + (wm ^ 1)) : "memory");
        if (lead) {
          if (kc == 0 && !started) tw[kRgTraceFirstFull] = rgt::clk();
          if (kc == CHUNKS - 1) tw[kRgTraceLastFull] = rgt::clk();
        }
        const u32 off = static_cast<u32>(s) * (STAGE / 16);
        if (mma) rgt::mma_chunk_lo<Row>(acc, a_lo0 + off, b_lo0 + off);
        // the previous chunk's MMAs are done: release its stage in every CTA that wrote into it
        if (releaser && prev >= 0) rgt::mbar_arrive_remote(rel0 + 8 * prev);
        prev = s;
        if (++s == STAGES) {
          s = 0;
          phase ^= 1;
        }
      }
      rg90::wgmma_wait<0>();
      Row::fence(acc);
      ring.template release<CL>(prev, tid, prev >= 0);
      started = true;
      if (lead) tw[kRgTraceMmaDone] = rgt::clk();
      if ((flags & kRgSkipStore) || m0 >= a.T) continue;  // (a cluster's second tile may lie past T)
      if ((flags & kRgHalfStore) && wm == 1 && !(flags & kRgEpiStaged)) continue;  // measurement: half the bytes
      const int owned = min(rows, a.T - m0);  // rows of this tile that are its own and inside T
      const int r0 = PP ? 0 : wm * 64;       // this warpgroup's first row in the tile
      if (CAN_EPI_TMA && (flags & kRgEpiTma) && last && rows == BM && !((flags & kRgEpiMix) && wm == 1)) {
        const u32 slot = ring.stage(warp) + wm * 64 * 128;  // this warpgroup's x rows in stage `warp`
        const int row = m0 + r0 + warp * 16;
        if constexpr (EH == 128) {
          if (flags & kRgEpiTmaPipe) {  // each 16 × 32 box leaves as soon as it is staged
#pragma unroll
            for (int b = 0; b < 4; ++b) {
              rgt::stage_box_sw128(acc.d, slot, lane, b);
              fence_proxy_async();
              __syncwarp();
              if (lane == 0 && row < a.T) {
                tma_store_2d(&a.tmo, slot + b * 2048, ej * EH + b * 32, row);
                bulk_commit();
              }
            }
            tma_stored = lane == 0 && row < a.T;
            if (lead) tw[kRgTraceStored] = rgt::clk();
            continue;
          }
        }
        Row::stage_sw128(acc, slot, lane);
        fence_proxy_async();
        __syncwarp();
        if (lane == 0 && row < a.T) {
#pragma unroll
          for (int b = 0; b < EH / 32; ++b) tma_store_2d(&a.tmo, slot + b * 2048, ej * EH + b * 32, row);
          bulk_commit();
          tma_stored = true;
        }
        if (lead) tw[kRgTraceStored] = rgt::clk();
        continue;
      }
      float* out = a.out + static_cast<i64>(m0 + r0) * a.out_stride + ej * EH;
      constexpr bool CAN_STAGE = !PP && WGM * 64 * (EH + 8) * 4 <= STAGES * STAGE;  // the staging fits the ring
      if (CAN_STAGE && (flags & kRgEpiStaged) && last && !(flags & kRgEpiMix)) {
        // The cluster's last tile: no load is pending any more, so once every consumer of this CTA is past its MMAs
        // the ring is free. Each warpgroup stages its 64 rows (pitch EH + 8 floats: two wavefronts per 8-byte store,
        // the minimum) and copies them out with 16-byte loads and stores, a warp writing 32 · 16 contiguous bytes of
        // one row at a time (whole 128-byte lines) instead of 8 rows × 32 bytes.
        constexpr int PITCH = (EH + 8) * 4, CPR = EH / 4;
        if constexpr (WGM > 1) asm volatile("bar.sync 5, %0;" ::"n"(WGM * 128) : "memory");
        const u32 tile = ring.base + wm * 64 * PITCH;
        Row::stage(acc, tile, warp * 16 + (lane >> 2), lane, PITCH);
        asm volatile("bar.sync %0, 128;" ::"r"(1 + wm) : "memory");
        const int valid = owned - r0;
        for (int i = tid & 127; i < 64 * CPR; i += 128) {
          const int r = i / CPR, c = i - r * CPR;
          if (r < valid) {
            store16(out + static_cast<i64>(r) * a.out_stride + c * 4, lds16(tile + r * PITCH + c * 16));
          }
        }
      } else {
        rgt::StoreRow<EH, 0>::store(acc, out, a.out_stride, warp * 16 + (lane >> 2), lane, owned - r0);
      }
      if (lead) tw[kRgTraceStored] = rgt::clk();
    }
    if (trace) {  // measurement only: when this warpgroup's stores have all been performed
      if (tma_stored) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
      __threadfence();
      asm volatile("bar.sync %0, 128;" ::"r"(1 + wm) : "memory");
      if (lead) {
        tw[kRgTraceFenced] = rgt::clk();
        if (wm == 0) trace[kRgTraceEndNs] = globaltimer_ns();
      }
    }
    // The TMA stores' shared-memory source stays untouched until it has been read (the CTA may not leave before).
    if (tma_stored) bulk_wait_read();
  }
  // No CTA may leave while its peer can still multicast into its shared memory or arrive on its barriers (with
  // kRgNoExitSync the producer's tail above ensures it; the exit stamp is then the producer's).
  if (!(flags & kRgNoExitSync)) cluster_sync();
  if (trace && tid == 0) trace[kRgTraceExitNs] = globaltimer_ns();
#else
  __trap();
#endif
}

}  // namespace kiln
