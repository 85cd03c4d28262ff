// kiln/router_gemm_bwd_fused.cuh — Hopper (sm_90a) router GEMM backward, dx and dw in one cooperative launch.
//
//   dx[t, k] = Σ_e bf16(g)[t, e] · w[e, k]   (dx bf16)      dw[e, k] = Σ_t (g_hi + g_lo)[t, e] · x[t, k]   (dw fp32)
//
// Precision `standard` (the same products as the two-kernel TMA backward: dx from g_hi = bf16(g), dw from g_hi and
// g_lo = bf16(g − g_hi), rg::split_bf16x2), fp32 accumulation.
//
// CTA (n, r) of the (ceil(K/128), R) grid owns hidden columns [128n, 128n + 128) and token range r (split_rows
// tokens, a multiple of 64). It computes dx of its tokens × its columns and dw's partial over its tokens for all E ×
// its columns, from the same landed tiles ("co-tiled"): per 64-token chunk the producer lands g_hi and g_lo
// [64 tokens × 256 experts] (bf16, 4 + 4 swizzled atoms of 64 × 64) and x [64 tokens × 128 columns] (2 atoms) into a
// 2-stage ring; w's [256 experts × 128 columns] block stays resident (loaded once).
//  * dwᵀ [128 columns × 256 experts] += xᵀ · g_hi + xᵀ · g_lo: warpgroup 1 + j owns columns 64j … 64j + 63
//    (A = its x atom read M-major, B = the g tile N-major), 2 × m64n128k16 (expert halves) from shared memory, 128
//    accumulators.
//  * dx [64 tokens × 128 columns] = g_hi · w: warpgroup 3 (A = the g_hi tile read K-major, B = the resident w block
//    N-major), m64n128k16 over the E/16 k-steps, 64 accumulators, stored as bf16 straight from the registers. (One
//    warpgroup holding both dx's 64 and dw's 128 accumulators ran out of registers: ptxas spilled and serialized.)
// Chunk 0's g_hi / g_lo are split by each CTA's consumers straight into stage 0 (no wait for other CTAs); the other
// chunks' come from the workspace, written by this same launch: the dx warpgroup splits g (fp32, read once) in three
// phases — chunks 1–3 before its first MMAs, 4–7 under dx(0), the rest under dx(1) — each CTA a contiguous share of
// its range's rows (the next phase's rows pulled into L2 by a bulk prefetch meanwhile), each phase closed by a grid
// barrier (the driver's cooperative barrier word); the TMA thread waits for a barrier only before the first chunk
// that needs it (x's tiles are requested before that wait). At the end each CTA writes its fp32 dwᵀ partial to the
// workspace ([R][K][256]), a last grid barrier, and CTA (n, r) adds expert rows [r·slice, r·slice + slice) of its
// column block's R partials in range order (deterministic) and writes them to dw.
#pragma once
#include "kiln/grid_sync.cuh"
#include "kiln/router_gemm_bwd_tma.cuh"

namespace kiln {
namespace rgf {

// One arrival on the grid barrier (the driver's cooperative barrier word, grid_sync.cuh's algorithm), made by one
// thread on behalf of threads that synchronized with it before: a GPU-scope fence, then the release add. Returns the
// token for wait(). Every CTA must have waited for barrier k before it arrives at barrier k + 1.
__device__ __forceinline__ u32 gbar_arrive() {
  const u32 expected = gridDim.x * gridDim.y * gridDim.z;
  const u32 nb = blockIdx.x + blockIdx.y + blockIdx.z == 0 ? 0x80000000u - (expected - 1) : 1u;
  u32 old;
  asm volatile("fence.acq_rel.gpu;" ::: "memory");
  asm volatile("atom.add.release.gpu.u32 %0, [%1], %2;" : "=r"(old) : "l"(grid_barrier_word()), "r"(nb) : "memory");
  return old;
}
// Spins (acquire, GPU scope) until every CTA has arrived; traps after 2 s (a CTA that can never arrive).
__device__ __forceinline__ void gbar_wait(u32 token) {
  const u32* word = grid_barrier_word();
  u64 t0 = 0;
  for (u32 n = 0;; ++n) {
    u32 cur;
    asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(cur) : "l"(word) : "memory");
    if ((token ^ cur) & 0x80000000u) break;
    if ((n & 1023u) == 0) {
      u64 t;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
      if (n == 0) t0 = t;
      else if (t - t0 > 2000000000ull) __trap();
    }
  }
}
// Barriers 1, 2, 3 of a launch: counters in the workspace (a.sync[g]), zeroed by CTA (0, 0) before it arrives at
// barrier 0 (the driver's word), so every counter is zero before any CTA can reach it. Unlike the driver word's top
// bit (which flips back at the next barrier), a count can be checked at any later time by any thread.
__device__ __forceinline__ void cnt_arrive(unsigned* c) {
  asm volatile("fence.acq_rel.gpu;" ::: "memory");
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(c) : "memory");
}
__device__ __forceinline__ void cnt_wait(const unsigned* c) {
  const u32 n = gridDim.x * gridDim.y * gridDim.z;
  u64 t0 = 0;
  for (u32 it = 0;; ++it) {
    u32 cur;
    asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(cur) : "l"(c) : "memory");
    if (cur >= n) break;
    if ((it & 1023u) == 0) {
      u64 t;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
      if (it == 0) t0 = t;
      else if (t - t0 > 2000000000ull) __trap();
    }
  }
}
// Orders this thread's generic-proxy global accesses with its later async-proxy (TMA) ones.
__device__ __forceinline__ void fence_proxy_async_global() { asm volatile("fence.proxy.async.global;" ::: "memory"); }
// Pulls a tensor-map box into L2 (no shared memory, no barrier).
__device__ __forceinline__ void tma_prefetch_2d(const void* tmap, int c0, int c1) {
  asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global [%0, {%1, %2}];" ::"l"(reinterpret_cast<u64>(tmap)),
               "r"(c0), "r"(c1)
               : "memory");
}
// d[64 × 128] = A[64 × 16] · B[128 × 16]ᵀ (+ d when acc ≠ 0), both from shared memory: A K-major, B N-major (dx).
__device__ __forceinline__ void wgmma_ss_n128_acc(float (&d)[64], u64 a, u64 b, int acc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(acc));
}
// Named barrier 6 over the three consumer warpgroups (384 threads).
__device__ __forceinline__ void bar_sync_consumers3() { asm volatile("bar.sync 6, 384;" ::: "memory"); }
// Named barrier 5 over the dx warpgroup (128 threads: the g splitter of phases 1–3).
__device__ __forceinline__ void bar_sync_dxwg() { asm volatile("bar.sync 5, 128;" ::: "memory"); }
// The split of a range of `chunks` 64-token chunks: chunk 0 by each CTA into its stage 0; then phase p = 1, 2, 3
// through the workspace: chunks [first(p), first(p + 1)) = 1–3, 4–7, the rest, each closed by grid barrier p − 1,
// so each phase is split well before the consumers reach it.
constexpr int kPhases = 3;
__device__ __forceinline__ int phase_first(int p, int chunks) {
  const int f = p <= 1 ? 1 : p == 2 ? 4 : p == 3 ? 8 : chunks;
  return f < chunks ? f : chunks;
}
// The grid barrier (0, 1, 2) a chunk's g_hi / g_lo wait for; −1: chunk 0 (split locally).
__device__ __forceinline__ int barrier_of(int c) { return c < 1 ? -1 : c < 4 ? 0 : c < 8 ? 1 : 2; }
// Pulls [p, p + bytes) into L2 (no registers, no shared memory); bytes a multiple of 16.
__device__ __forceinline__ void bulk_prefetch_l2(const void* p, u32 bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(reinterpret_cast<u64>(p)), "r"(bytes) : "memory");
}

}  // namespace rgf

// Grid (ceil(K/128), R) CTAs of 512 threads (TMA warp, 2 dw warpgroups, 1 dx + split warpgroup), cooperative
// (every CTA resident: the grid barriers). Shared memory: 1 KiB slack, the w block (ceil(E/64) × 2 atoms of 64
// experts × 64 columns), 2 stages of 80 KiB (g_hi 4 atoms, g_lo 4 atoms, x 2 atoms), 10 mbarriers (128 bytes
// reserved). PF: x chunks requested into L2 ahead of the ring (0 = none).
template <int K, int E, int PF>
__global__ void __launch_bounds__(512, 1)
    router_gemm_bwd_fused_kernel(const __grid_constant__ RouterGemmBwdFusedArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int ATOM = 8192, EC = (E + 63) / 64, KS_DX = EC * 4;
  constexpr int W_BYTES = EC * 2 * ATOM;
  constexpr int HI = 0, LO = 4 * ATOM, XO = 8 * ATOM, STAGE = 10 * ATOM;
  static_assert(E % 8 == 0 && E <= 256, "E: a multiple of 8 up to 256");
  static_assert(K % 8 == 0, "K: a multiple of 8");

  extern __shared__ __align__(16) char smem_raw[];
  const u32 raw = smem_u32(smem_raw);
  const u32 base = (raw + 1023u) & ~1023u;
  const u32 wsm = base, ring = base + W_BYTES, bars = ring + 2 * STAGE;
  // full[s] at bars + 8s, empty[s] at bars + 16 + 8s, the w block's at bars + 32, "arrived at grid barrier 0" at
  // bars + 40, "dw MMAs done" at bars + 48, barrier 0's token (u32) at bars + 56: 60 bytes
  const u32 wbar = bars + 32, arrived = bars + 40, dwdone = bars + 48, token0 = bars + 56;
  const int tid = threadIdx.x, wg = tid / 128;
  const int nblk = blockIdx.x, r = blockIdx.y, NB = gridDim.x;
  const int n0 = nblk * 128;
  const int t0 = r * a.split_rows;
  const int rows = a.T - t0 < a.split_rows ? a.T - t0 : a.split_rows;  // ≥ 1 (the host makes no empty range)
  const int chunks = (rows + 63) / 64;
  const int xatoms = K - n0 > 64 ? 2 : 1;  // 64-column atoms of this column block inside K
  u64* const trace = a.trace ? a.trace + static_cast<i64>(r * NB + nblk) * kRgTraceSlots : nullptr;  // (measurement)
  const u64 t0_ns = trace ? rgt::gtimer() : 0, t0_clk = trace ? rgt::clk() : 0;

  if (tid == 0) {
    for (int s = 0; s < 2; ++s) {
      rgt::mbar_init(bars + 8 * s, 1);
      rgt::mbar_init(bars + 16 + 8 * s, 3);  // the dx and both dw warpgroups read every stage
    }
    rgt::mbar_init(wbar, 1);
    rgt::mbar_init(arrived, 1);
    if (blockIdx.x + blockIdx.y == 0)  // barriers 1–3's counters, before this CTA arrives at barrier 0 (a release)
      for (int g = 1; g <= rgf::kPhases; ++g) a.sync[g] = 0u;
    rgt::mbar_init(dwdone, 256);
    rgt::fence_mbar_init();
  }
  __syncthreads();

  if (wg == 0) {
    rgt::setmaxnreg_dec<32>();  // 32 + 3 × 160 = 4 × 128 registers a thread: the whole file
    if (tid == 0) {  // TMA
      rgt::prefetch_tmap(&a.tmh);
      rgt::prefetch_tmap(&a.tml);
      rgt::prefetch_tmap(&a.tmx);
      rgt::prefetch_tmap(&a.tmw);
      const u64 first_clk = trace ? rgt::clk() : 0;
      rgt::mbar_expect_tx(wbar, EC * xatoms * ATOM);
      for (int ec = 0; ec < EC; ++ec)
        for (int q = 0; q < xatoms; ++q)
          rgt::tma_load_2d(wsm + ec * 2 * ATOM + q * ATOM, &a.tmw, wbar, n0 + 64 * q, 64 * ec);
      if constexpr (PF > 0)
        for (int c = 0; c < PF && c < chunks; ++c)
          for (int q = 0; q < xatoms; ++q) rgf::tma_prefetch_2d(&a.tmx, n0 + 64 * q, t0 + 64 * c);
      int passed = 0;  // grid barriers this thread has seen pass
      for (int c = 0; c < chunks; ++c) {
        const int s = c & 1;
        rgt::mbar_wait(bars + 16 + 8 * s, ((c >> 1) & 1) ^ 1);
        if constexpr (PF > 0)
          if (c + PF < chunks)
            for (int q = 0; q < xatoms; ++q) rgf::tma_prefetch_2d(&a.tmx, n0 + 64 * q, t0 + 64 * (c + PF));
        const u32 full = bars + 8 * s, st = ring + s * STAGE;
        const int t = t0 + 64 * c;
        const bool load = !(a.flags & kRgSkipLoad);  // (ablation: no bytes, the MMAs read stale shared memory)
        // The whole stage's bytes are expected at once; x (no dependence on the split) is requested before the wait
        // for the chunk's split phase, g_hi / g_lo after it.
        const bool hilo = load && c > 0;  // chunk 0 is split into the stage by the consumers
        rgt::mbar_expect_tx(full, load ? (hilo ? 2 * EC + xatoms : xatoms) * ATOM : 0);
        if (load)
          for (int q = 0; q < xatoms; ++q) rgt::tma_load_2d(st + XO + q * ATOM, &a.tmx, full, n0 + 64 * q, t);
        if (passed <= rgf::barrier_of(c)) {
          for (; passed <= rgf::barrier_of(c); ++passed) {  // wait for every CTA (this one's dx warpgroup too)
            if (passed == 0) {  // the driver's word: its token from this CTA's arrival
              rgt::mbar_wait(arrived, 0);
              u32 tok;
              asm volatile("ld.shared.u32 %0, [%1];" : "=r"(tok) : "r"(token0));
              rgf::gbar_wait(tok);
            } else {
              rgf::cnt_wait(a.sync + passed);
            }
          }
          rgf::fence_proxy_async_global();  // g_hi / g_lo were written by generic stores (other CTAs, acquired)
        }
        if (hilo)
          for (int ec = 0; ec < EC; ++ec) {
            rgt::tma_load_2d(st + HI + ec * ATOM, &a.tmh, full, 64 * ec, t);
            rgt::tma_load_2d(st + LO + ec * ATOM, &a.tml, full, 64 * ec, t);
          }
      }
      if (trace) rgt::trace_producer(trace, t0_ns, t0_clk, first_clk);
    }  // (warps 1–3 have nothing to do)
  } else {
    // One setmaxnreg for all three consumer warpgroups (ptxas honours the raised budget only where a single
    // producer / consumer split dominates the code: a separate dec for the dx warpgroup left the dw region at 128).
    rgt::setmaxnreg_inc<160>();
    {
      // Chunk 0 (rows t0 … t0 + 63; past T: zeros, as the tensor map fills them) → stage 0's g_hi / g_lo atoms in the
      // 128-byte-swizzled layout TMA writes (row t, experts 8j … 8j + 7 at t·128 + ((j ^ (t & 7)) << 4)); experts past
      // E within the ceil(E/64) atoms: zeros. 384 threads, 8 float4 loads in flight each.
      const int ct3 = tid - 128;
      constexpr int QR = EC * 16;  // float4 pieces of a row of the atoms
      const u32 st0 = ring;
      for (int i0 = 0; i0 < 64 * QR; i0 += 8 * 384) {
        float4 v[8];
#pragma unroll
        for (int b = 0; b < 8; ++b) {
          const int i = i0 + b * 384 + ct3, row = i / QR, q = i % QR;
          v[b] = make_float4(0.f, 0.f, 0.f, 0.f);
          if (i < 64 * QR && t0 + row < a.T && 4 * q < E)
            v[b] = __ldg(reinterpret_cast<const float4*>(a.g + static_cast<i64>(t0 + row) * a.g_stride) + q);
        }
#pragma unroll
        for (int b = 0; b < 8; ++b) {
          const int i = i0 + b * 384 + ct3, row = i / QR, q = i % QR;
          if (i < 64 * QR) {
            u32 h0, l0, h1, l1;
            rg::split_bf16x2(v[b].x, v[b].y, h0, l0);
            rg::split_bf16x2(v[b].z, v[b].w, h1, l1);
            const int e = 4 * q;
            const u32 off = (e >> 6) * ATOM + row * 128 + ((((e & 63) >> 3) ^ (row & 7)) << 4) + (e & 7) * 2;
            asm volatile("st.shared.v2.b32 [%0], {%1, %2};" ::"r"(st0 + HI + off), "r"(h0), "r"(h1) : "memory");
            asm volatile("st.shared.v2.b32 [%0], {%1, %2};" ::"r"(st0 + LO + off), "r"(l0), "r"(l1) : "memory");
          }
        }
      }
      rg90::fence_async_shared();  // these writes are read by wgmma (async proxy)
      rgf::bar_sync_consumers3();
    }
   if (wg == 3) {  // dx: 64 tokens × 128 columns a chunk, bf16 straight from the registers; and the g split
    const int lane = tid & 31, warp = (tid >> 5) & 3, dt = tid - 384;
    const bool mma = !(a.flags & kRgSkipMma);  // (ablation)
    // Split phase p (1–3): this CTA's contiguous share of the phase's rows of the range → g_hi, g_lo (workspace);
    // 128 threads, SB float4 loads in flight each (between two dx chunks: no accumulators in flight). Then the
    // warpgroup's lead arrives at grid barrier p − 1 (0: the driver's word, its token handed to the waiters through
    // shared memory; 1, 2: counters) — the TMA thread waits for it before the phase's first chunk; the next phase's
    // rows are bulk-prefetched into L2 meanwhile.
    constexpr int EQ = E / 4, SB = 8;  // float4 pieces of a g row; loads in flight a thread
    auto share = [&](int p, int& my0, int& my1) {
      const int lo_row = t0 + 64 * rgf::phase_first(p, chunks);
      int hi_row = t0 + 64 * rgf::phase_first(p + 1, chunks);
      hi_row = hi_row < t0 + rows ? hi_row : t0 + rows;
      const int n = hi_row - lo_row, per = (n + NB - 1) / NB;
      my0 = lo_row + nblk * per;
      my1 = my0 + per < hi_row ? my0 + per : hi_row;
    };
    auto prefetch = [&](int p) {
      int my0, my1;
      share(p, my0, my1);
      if (my1 <= my0) return;
      if (a.g_stride == E) {
        rgf::bulk_prefetch_l2(a.g + static_cast<i64>(my0) * E, static_cast<u32>((my1 - my0) * E * 4));
      } else {
        for (int row = my0; row < my1; ++row) rgf::bulk_prefetch_l2(a.g + static_cast<i64>(row) * a.g_stride, E * 4);
      }
    };
    int next_phase = 1;
    auto split_phase = [&]() {
      const int p = next_phase++;
      if (dt == 0 && p < rgf::kPhases) prefetch(p + 1);
      int my0, my1;
      share(p, my0, my1);
      const int items = my1 > my0 ? (my1 - my0) * EQ : 0;
      for (int i0 = 0; i0 < items; i0 += SB * 128) {
        float4 v[SB];
#pragma unroll
        for (int b = 0; b < SB; ++b) {
          const int i = i0 + b * 128 + dt;
          if (i < items)
            v[b] = __ldg(reinterpret_cast<const float4*>(a.g + static_cast<i64>(my0 + i / EQ) * a.g_stride) + i % EQ);
        }
#pragma unroll
        for (int b = 0; b < SB; ++b) {
          const int i = i0 + b * 128 + dt;
          if (i < items) {
            u32 h0, l0, h1, l1;
            rg::split_bf16x2(v[b].x, v[b].y, h0, l0);
            rg::split_bf16x2(v[b].z, v[b].w, h1, l1);
            const i64 off = (static_cast<i64>(my0 + i / EQ) * E + 4 * (i % EQ)) * 2;
            asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(static_cast<char*>(a.hi) + off), "r"(h0), "r"(h1)
                         : "memory");
            asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(static_cast<char*>(a.lo) + off), "r"(l0), "r"(l1)
                         : "memory");
          }
        }
      }
      rgf::fence_proxy_async_global();  // these generic writes are read by TMA (async proxy) in other CTAs
      rgf::bar_sync_dxwg();
      if (dt == 0) {
        if (p == 1) {  // barrier 0: the driver's word (its token for the waiters)
          const u32 tok = rgf::gbar_arrive();
          asm volatile("st.shared.u32 [%0], %1;" ::"r"(token0), "r"(tok) : "memory");
          rgt::mbar_arrive_local(arrived);
        } else {  // barriers 1, 2: counters — touched only once barrier 0 has passed (it zeroed them)
          if (p == 2) {
            u32 tok;
            asm volatile("ld.shared.u32 %0, [%1];" : "=r"(tok) : "r"(token0));
            rgf::gbar_wait(tok);
          }
          rgf::cnt_arrive(a.sync + (p - 1));
        }
      }
    };
    if (dt == 0) prefetch(1);
    float dxa[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) dxa[i] = 0.f;
    // The last two chunks' dx (their stages are never refilled) wait until the dw MMAs are done: the dw main loop
    // ends sooner, and these MMAs and stores overlap the dw tail (partials, grid barrier, reduction). Every split
    // phase is done before that wait (other CTAs wait for this one's arrivals).
    const int deferred = a.flags & kRgNoDefer ? chunks : (chunks > 2 ? chunks - 2 : 0);
    // Iteration c first splits phase c + 1 (1 before dx(0), 2 before dx(1), 3 before dx(2); all that are left at
    // the deferral point or the last chunk), then issues dx(c), waits for it and stores it. (One call site and no
    // branch around the wgmmas: each inlined copy of the split cost the dw warpgroups registers, a branch serialized
    // the wgmmas.)
    for (int c = 0; c < chunks; ++c) {
      const int s = c & 1;
      const u32 st = ring + s * STAGE;
      while (next_phase <= rgf::kPhases && (c + 1 >= next_phase || c >= deferred || c + 1 >= chunks))
        split_phase();
      if (c == deferred) rgt::mbar_wait(dwdone, 0);
      if (c == 0) rgt::mbar_wait(wbar, 0);
      rgt::mbar_wait(bars + 8 * s, (c >> 1) & 1);
      if (mma) {
        rg90::wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < KS_DX; ++ks)  // the first k-step overwrites the accumulators (scale-d = 0)
          rgf::wgmma_ss_n128_acc(dxa, rg90::desc_sw128(st + HI + (ks >> 2) * ATOM + (ks & 3) * 32),
                                 rg90::desc_sw128_mn(wsm + (ks >> 2) * 2 * ATOM + (ks & 3) * 2048, ATOM), ks);
        rg90::wgmma_commit();
      }
      rg90::wgmma_wait<0>();
      rg90::fence_regs(dxa);
      if ((tid & 127) == 0) rgt::mbar_arrive_local(bars + 16 + 8 * s);  // done with the stage
      if (!(a.flags & kRgSkipStore)) {
        // Register i of lane l holds row 16·warp + l/4 + 8·((i/2) & 1), columns 8·(i/4) + 2·(l & 3) + {0, 1}. For
        // each row half h and each 4 column groups 4m … 4m + 3, a 4 × 4 transpose of bf16 pairs inside the quad gives
        // lane l the 8 columns 8·(4m + l % 4) … (16 bytes): every warp store writes 8 rows × 64 contiguous bytes,
        // whole 32-byte sectors (4-byte stores left partial sectors for L2 to merge).
        const int tig = lane & 3, m0 = t0 + 64 * c + warp * 16 + (lane >> 2);
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int m = 0; m < 4; ++m) {
            u32 in[4], out[4] = {0u, 0u, 0u, 0u};
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              const int i = 4 * (4 * m + q) + 2 * h;
              in[q] = rgt::cvt_bf16x2(dxa[i], dxa[i + 1]);
            }
#pragma unroll
            for (int rr = 0; rr < 4; ++rr) {
              const int si = (tig - rr) & 3, slot = (tig + rr) & 3;
              const u32 send = si == 0 ? in[0] : si == 1 ? in[1] : si == 2 ? in[2] : in[3];
              const u32 got = __shfl_sync(0xffffffffu, send, (lane & ~3) | slot);
#pragma unroll
              for (int q = 0; q < 4; ++q) out[q] = slot == q ? got : out[q];
            }
            const int row = m0 + 8 * h, col = n0 + 8 * (4 * m + tig);
            if (row < a.T && col < K)
              asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(
                               static_cast<char*>(a.dx) + (static_cast<i64>(row) * a.dx_stride + col) * 2),
                           "r"(out[0]), "r"(out[1]), "r"(out[2]), "r"(out[3])
                           : "memory");
          }
      }
    }
  } else {  // dw: warpgroup j = columns 64j … 64j + 63 of dwᵀ, all (up to 256) experts
    const int j = wg - 1, ct = tid - 128, lane = tid & 31, warp = (tid >> 5) & 3;
    u64* const tw = trace && tid == 128 ? trace + kRgTraceWg0 : nullptr;  // (measurement: warpgroup 1's lead)
    const bool mma = !(a.flags & kRgSkipMma);  // (ablation)
    // Two m64n128 accumulator halves (experts 0–127, 128–255): with 512 threads ptxas admits no instruction
    // needing more than 128 registers, and an m64n256 wgmma needs ≈ 154.
    float acc[2][64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[0][i] = acc[1][i] = 0.f;
    for (int c = 0; c < chunks; ++c) {
      const int s = c & 1;
      rgt::mbar_wait(bars + 8 * s, (c >> 1) & 1);
      if (tw) tw[c == 0 ? kRgTraceFirstFull : kRgTraceLastFull] = rgt::clk();
      const u32 st = ring + s * STAGE;
      if (mma) {
        rg90::fence_regs(acc[0]);
        rg90::fence_regs(acc[1]);
        rg90::wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
          const u64 ax = rg90::desc_sw128_mn(st + XO + j * ATOM + ks * 2048, ATOM);
#pragma unroll
          for (int h = 0; h < (EC > 2 ? 2 : 1); ++h) {
            rg90::wgmma_ss<128, 1, 1>(acc[h], ax, rg90::desc_sw128_mn(st + HI + 2 * h * ATOM + ks * 2048, ATOM));
            rg90::wgmma_ss<128, 1, 1>(acc[h], ax, rg90::desc_sw128_mn(st + LO + 2 * h * ATOM + ks * 2048, ATOM));
          }
        }
        rg90::wgmma_commit();
      }
      // The previous chunk's MMAs have completed: its stage goes back to the producer.
      rg90::wgmma_wait<1>();
      if (c > 0 && (tid & 127) == 0) rgt::mbar_arrive_local(bars + 16 + 8 * ((c - 1) & 1));
    }
    rg90::wgmma_wait<0>();
    rg90::fence_regs(acc[0]);
    rg90::fence_regs(acc[1]);
    rgt::mbar_arrive_local(dwdone);  // the deferred dx chunks may go (every thread: no branch near the wgmmas)
    if (tw) tw[kRgTraceMmaDone] = rgt::clk();
    if (!(a.flags & kRgSkipStore)) {
      // This range's partial dwᵀ: register i of lane l (warp v) holds column n0 + 64j + 16v + l/4 + 8·((i/2) & 1),
      // experts 8·(i/4) + 2·(l & 3) + {0, 1} → partial[r][column][expert] (8-byte stores, whole 32-byte sectors).
      float* const part = a.partial + static_cast<i64>(r) * K * 256;
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < 64; i += 2) {
          const int col = n0 + 64 * j + warp * 16 + (lane >> 2) + 8 * ((i >> 1) & 1);
          const int e = 128 * h + 8 * (i >> 2) + 2 * (lane & 3);
          if (col < K && e < E)
            asm volatile("st.global.v2.f32 [%0], {%1, %2};" ::"l"(part + static_cast<i64>(col) * 256 + e),
                         "f"(acc[h][i]), "f"(acc[h][i + 1])
                         : "memory");
        }
      rgt::bar_sync_consumers();
      if (ct == 0) {
        rgt::mbar_wait(arrived, 0);  // barrier 0 passed first (it zeroed the counters)
        u32 tok;
        asm volatile("ld.shared.u32 %0, [%1];" : "=r"(tok) : "r"(token0));
        rgf::gbar_wait(tok);
        rgf::cnt_arrive(a.sync + rgf::kPhases);  // barrier 3: every partial written
        rgf::cnt_wait(a.sync + rgf::kPhases);
      }
      rgt::bar_sync_consumers();
      if (tw) tw[kRgTraceStored] = rgt::clk();
      // dw rows [e_lo, e_hi) × columns n0 … n0 + 127: the R partials added in range order. Item (e4, c4): 4 experts ×
      // 4 columns; 4 × R 16-byte loads (experts contiguous), transposed in registers into 4 16-byte stores of dw.
      const int R = gridDim.y, e_lo = r * a.slice, e_hi = e_lo + a.slice < E ? e_lo + a.slice : E;
      const int items = (a.slice / 4) * 32;
      for (int it = ct; it < items; it += 256) {
        const int e = e_lo + 4 * (it >> 5), col = n0 + 4 * (it & 31);
        if (e >= e_hi || col >= K) continue;
        float4 sum[4];
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // ranges 4h … 4h + 3: 16 loads in flight
          float4 v[4][4];
#pragma unroll
          for (int rr = 0; rr < 4; ++rr)
#pragma unroll
            for (int q = 0; q < 4; ++q)
              if (4 * h + rr < R)
                v[rr][q] = __ldcg(reinterpret_cast<const float4*>(
                    a.partial + (static_cast<i64>(4 * h + rr) * K + col + q) * 256 + e));
#pragma unroll
          for (int rr = 0; rr < 4; ++rr)
#pragma unroll
            for (int q = 0; q < 4; ++q)
              if (4 * h + rr < R) {
                if (h == 0 && rr == 0) {
                  sum[q] = v[rr][q];
                } else {
                  sum[q].x += v[rr][q].x;
                  sum[q].y += v[rr][q].y;
                  sum[q].z += v[rr][q].z;
                  sum[q].w += v[rr][q].w;
                }
              }
        }
        float* const d = a.dw + static_cast<i64>(e) * K + col;
        __stcg(reinterpret_cast<float4*>(d), make_float4(sum[0].x, sum[1].x, sum[2].x, sum[3].x));
        __stcg(reinterpret_cast<float4*>(d + K), make_float4(sum[0].y, sum[1].y, sum[2].y, sum[3].y));
        __stcg(reinterpret_cast<float4*>(d + 2 * K), make_float4(sum[0].z, sum[1].z, sum[2].z, sum[3].z));
        __stcg(reinterpret_cast<float4*>(d + 3 * K), make_float4(sum[0].w, sum[1].w, sum[2].w, sum[3].w));
      }
    }
    if (tw) {
      tw[kRgTraceFenced] = rgt::clk();
      trace[kRgTraceEndNs] = rgt::gtimer();
    }
  }
  }
#else
  __trap();
#endif
}

}  // namespace kiln
