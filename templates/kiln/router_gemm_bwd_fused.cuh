// kiln/router_gemm_bwd_fused.cuh — Hopper (sm_90a) router GEMM backward, dx and dw in one streaming pass (session 11).
//
//   dx[t, k] = Σ_e bf16(g)[t, e] · w[e, k]   (bf16)        dw[e, k] = Σ_t (g_hi + g_lo)[t, e] · x[t, k]   (fp32)
//
// router_gemm_g_split_kernel first writes hi = bf16(g) and lo = bf16(g − hi) ([T, E] bf16 each, in the workspace);
// router_gemm_bwd_fused_kernel (launched with PDL behind it) then does both products in one pass over T.
// CTA (kb, r): hidden columns n0 = 128·kb … n0 + 127 over T range r. The CTA keeps w[:, n0 : n0 + 128] in shared
// memory (TMA once: E/64 × 2 N-major atoms of 64 experts × 64 columns) and streams its range in tiles of 64 tokens
// through a 2-stage ring: hi / lo atoms ec (64 tokens × 64 experts, 128-byte swizzled: the layout of the dx kernel's
// K-major A tile and of an N-major operand at once; its producer waits for the split before the first one) and
// x[t0 : t0 + 64, n0 : n0 + 128] (2 atoms). Per tile, consumer warpgroup j:
//   * dx[t0 …, n0 + 64j …] = hi · w[:, n0 + 64j …] (group X: m64n64k16 over ec then k16 — the dx kernel's products in
//     its order: the same bits);
//   * dwᵀ[n0 + 64j …, e] += xᵀ · hi + xᵀ · lo (group Y: x atom j as the M-major A against all E experts as the N-major
//     B, m64nEk16, 4 k16 steps each; its E/2 accumulator registers a thread stay live over the whole range);
//   * once both groups are retired (no group crosses tiles: ptxas serializes every wgmma otherwise), the dx block goes
//     through x atom j (only this warpgroup's dw MMAs read it; stmatrix, swizzled as dx's 64 × 64 TMA box) and out by
//     one TMA store (rows past T clipped), read before the stage goes back to the producer.
// Epilogue: warpgroup j stages its dw block in the ring and TMA-stores it to dw (one range) or to partial[r]; then
// (flags) the column block's ranges add the partials in range order, CTA r rows [r·ceil(E/R), …) of the block.
// (Session 11 also measured g converted in place from fp32 tiles and split by the fused grid itself, and dx by
// alternate warpgroups: all slower, removed — bench/NOTES.md.)
#pragma once
#include "kiln/router_gemm_bwd_tma.cuh"

namespace kiln {

// Shared memory: 1 KiB alignment slack, w's slice (E/64 × 16 KiB), 2 stages × (g tile E/64 × 16 KiB + x tile 16 KiB),
// the mbarriers.
__host__ __device__ constexpr int router_gemm_bwd_fused_smem_bytes(int E) {
  return 1024 + 3 * ((E + 63) / 64) * 16384 + 2 * 16384 + 64;
}

template <int K, int E>
__global__ void __launch_bounds__(384, 1) router_gemm_bwd_fused_kernel(const __grid_constant__ RouterGemmBwdFusedArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(E == 64 || E == 128 || E == 256, "E: 64, 128 or 256 (one wgmma N)");
  static_assert(K % 128 == 0, "K: whole 128-column blocks");
  static_assert(router_gemm_bwd_fused_smem_bytes(E) <= 227 * 1024, "shared memory");
  constexpr int EC = E / 64, GB = EC * 16384, STAGE = GB + 16384, W_BYTES = EC * 16384, TM = 64;
  pdl_launch_dependents();  // router_gemm_dw_reduce_kernel (PDL, without flags) waits for this grid

  extern __shared__ __align__(16) char smem_raw[];
  const u32 raw = static_cast<u32>(__cvta_generic_to_shared(smem_raw));
  const u32 base = (raw + 1023u) & ~1023u;
  const u32 wsm = base, ring = base + W_BYTES, bars = ring + 2 * STAGE;
  const u32 wbar = bars, full0 = bars + 8, empty0 = bars + 24;  // full[s] / empty[s] 8 bytes apart
  const int tid = threadIdx.x, wg = tid / 128;
  const int kb = static_cast<int>(blockIdx.x), r = static_cast<int>(blockIdx.y), ranges = static_cast<int>(gridDim.y);
  const int n0 = kb * 128, t0 = r * a.split_rows;
  const int rows = a.T - t0 < a.split_rows ? a.T - t0 : a.split_rows;
  const int chunks = rows > 0 ? (rows + TM - 1) / TM : 0;

  if (tid == 0) {
    mbar_init(wbar, 1);
    for (int s = 0; s < 2; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, 2);  // both consumer warpgroups
    }
    fence_mbar_init();
  }
  __syncthreads();

  if (wg == 0) {  // producer: one thread
    setmaxnreg_dec<40>();
    if (tid == 0 && chunks > 0) {
      prefetch_tmap(&a.tmw);
      prefetch_tmap(&a.tmhi);
      prefetch_tmap(&a.tmlo);
      prefetch_tmap(&a.tmx);
      mbar_arrive_expect_tx(wbar, W_BYTES);
#pragma unroll
      for (int ec = 0; ec < EC; ++ec)
#pragma unroll
        for (int ca = 0; ca < 2; ++ca) tma_load_2d(wsm + ec * 16384 + ca * 8192, &a.tmw, wbar, n0 + ca * 64, ec * 64);
      u64 policy;  // x is read once: its lines go first (g is read by every column block, dx / partials stay)
      asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
      for (int c = 0; c < chunks; ++c) {
        const int s = c & 1;
        mbar_wait(empty0 + 8 * s, static_cast<u32>((c >> 1) & 1) ^ 1u);
        const u32 st = ring + s * STAGE, full = full0 + 8 * s;
        const int t = t0 + c * TM;  // rows past T arrive as zeros
        mbar_arrive_expect_tx(full, STAGE);
#pragma unroll
        for (int ca = 0; ca < 2; ++ca)
          rgt::tma_load_2d_evict_first(st + GB + ca * 8192, &a.tmx, full, n0 + ca * 64, t, policy);
        if (c == 0) pdl_wait();  // hi / lo from router_gemm_g_split_kernel (w and x tile 0 went before)
#pragma unroll
        for (int ec = 0; ec < EC; ++ec) {
          tma_load_2d(st + ec * 16384, &a.tmhi, full, ec * 64, t);
          tma_load_2d(st + ec * 16384 + 8192, &a.tmlo, full, ec * 64, t);
        }
      }
    }
  } else {  // consumers
    setmaxnreg_inc<232>();
    const int j = wg - 1, ct = tid - 128, lane = tid & 31, warp = (tid & 127) >> 5;
    const bool mma = !(a.measure & kRgSkipMma);
    // (measurement) consumer warpgroup 0's lead stamps the CTA's phases
    u64* const tr = a.trace && tid == 128 ? a.trace + static_cast<i64>(r * gridDim.x + kb) * kRgFusedTraceSlots : nullptr;
    if (tr) {
      u32 sm;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
      tr[kRgFusedTraceStartNs] = globaltimer_ns();
      tr[kRgFusedTraceStartClk] = rgt::clk();
      tr[kRgFusedTraceSm] = sm;
    }
    float accw[E / 2];  // dwᵀ: row n0 + 64j + 16·warp + lane/4 + 8·((i/2) & 1), expert 8·(i/4) + 2·(lane & 3) + (i & 1)
    // dx: token row 16·warp + lane/4 + 8·((i/2) & 1), column n0 + 64j + 8·(i/4) + 2·(lane & 3) + (i & 1)
    float accx[32];
#pragma unroll
    for (int i = 0; i < E / 2; ++i) accw[i] = 0.f;
#pragma unroll
    for (int i = 0; i < 32; ++i) accx[i] = 0.f;
    // This warpgroup's 64 × 64 dx block of tile c from accx → x atom j of its stage (free: this warpgroup's dw MMAs
    // of the tile are done) by stmatrix — register i of lane l holds row 16·warp + l/4 + 8·((i/2) & 1), columns
    // 8·(i/4) + 2·(l & 3) + {0, 1}: octets o, o + 1 of both row halves are one stmatrix.x4 (matrix m = l/8 takes its
    // row address from lanes 8m … 8m + 7) — then one TMA store (rows past T clipped); the stage goes back to the
    // producer once the store has read it, checked after the next tile's MMAs are issued (no stall on it here).
    auto store_dx = [&](int c) {
      const u32 buf = ring + (c & 1) * STAGE + GB + j * 8192;
      const bool out = !(a.measure & (kRgSkipStore | kRgFusedSkipDx));  // (measurement)
      if (out) {
        const int mi = lane >> 3, row = warp * 16 + (mi & 1) * 8 + (lane & 7);
#pragma unroll
        for (int o = 0; o < 8; o += 2) {
          const int jj = o + (mi >> 1);
          rgt::stmatrix_x4(buf + row * 128 + ((jj ^ (row & 7)) << 4), cvt_bf16x2(accx[4 * o], accx[4 * o + 1]),
                           cvt_bf16x2(accx[4 * o + 2], accx[4 * o + 3]), cvt_bf16x2(accx[4 * o + 4], accx[4 * o + 5]),
                           cvt_bf16x2(accx[4 * o + 6], accx[4 * o + 7]));
        }
        fence_proxy_async();  // stmatrix writes → the copy engine's reads
      }
      rgt::bar_sync_wg(j);
      if ((tid & 127) == 0 && out) {
        tma_store_2d(&a.tmdx, buf, n0 + 64 * j, t0 + c * TM);
        bulk_commit();
      }
    };
    if (chunks > 0) mbar_wait(wbar, 0);
    // Tile c: wait for its stage, group X = dx (hi · w, 64 columns; the first k16 step overwrites accx), group Y =
    // dwᵀ += xᵀ · hi + xᵀ · lo; release tile c − 1's stage (its dx store has read x atom j), wait for both groups, dx
    // out through x atom j.
    for (int c = 0; c < chunks; ++c) {
      const u32 st = ring + (c & 1) * STAGE;
      mbar_wait(full0 + 8 * (c & 1), static_cast<u32>(c >> 1) & 1u);
      if (tr && c == 0) tr[kRgFusedTraceReady] = rgt::clk();
      if (tr && c < 32) tr[kRgFusedTraceTile + c] = rgt::clk();
      if (mma) {
        rg90::fence_regs(accx);
        rg90::fence_regs(accw);
        rg90::wgmma_fence();
#pragma unroll
        for (int ec = 0; ec < EC; ++ec)
#pragma unroll
          for (int ks = 0; ks < 4; ++ks)
            rg90::wgmma_ss<64, 0, 1>(accx, rg90::desc_sw128(st + ec * 16384 + ks * 32),
                                     rg90::desc_sw128_mn(wsm + ec * 16384 + j * 8192 + ks * 2048, 8192),
                                     ec + ks > 0 ? 1 : 0);
        rg90::wgmma_commit();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
          const u64 ad = rg90::desc_sw128_mn(st + GB + j * 8192 + ks * 2048, 8192);  // xᵀ: M-major
          rg90::wgmma_ss<E, 1, 1>(accw, ad, rg90::desc_sw128_mn(st + ks * 2048, 16384));
          rg90::wgmma_ss<E, 1, 1>(accw, ad, rg90::desc_sw128_mn(st + 8192 + ks * 2048, 16384));
        }
        rg90::wgmma_commit();
      }
      if (c > 0 && (tid & 127) == 0) {
        bulk_wait_read();
        mbar_arrive(empty0 + 8 * ((c - 1) & 1));
      }
      rg90::wgmma_wait<0>();  // (unconditional: ptxas then sees every group retired)
      rg90::fence_regs(accx);
      rg90::fence_regs(accw);
      store_dx(c);
    }
    if (chunks > 0 && (tid & 127) == 0) bulk_wait_read();  // the last dx store has read its x atom

    if (tr) tr[kRgFusedTraceLoop] = rgt::clk();
    // dwᵀ → dw (one range) or partial[r] ([E, K]) by TMA stores: once both warpgroups are done with the ring (their
    // MMAs retired, dx stores read), warpgroup j stages its E × 64 block of dw (experts × columns n0 + 64j …) as two
    // boxes of E rows × 32 columns (128-byte rows, 16-byte pieces swizzled with the row: conflict-free 4-byte stores
    // — a warp store is 8 consecutive columns of 4 experts) at ring + j·E·256, then stores them (tmpart: rows r·E … of
    // the partials, or dw) and waits until they are written (the flags below publish them).
    if (!(a.measure & kRgSkipStore)) {
      rgt::bar_sync_consumers();
      const u32 stg = ring + j * E * 256;
#pragma unroll
      for (int i = 0; i < E / 2; ++i) {
        const int e = 8 * (i >> 2) + 2 * (lane & 3) + (i & 1), kl = 16 * warp + (lane >> 2) + 8 * ((i >> 1) & 1);
        const u32 at = stg + (kl >> 5) * (E * 128) + e * 128 + ((((kl & 31) >> 2) ^ (e & 7)) << 4) + (kl & 3) * 4;
        asm volatile("st.shared.f32 [%0], %1;" ::"r"(at), "f"(accw[i]) : "memory");
      }
      fence_proxy_async();  // the staged partial → the copy engine
      rgt::bar_sync_wg(j);
      if ((tid & 127) == 0) {
        const int row = ranges == 1 ? 0 : r * E;
        tma_store_2d(&a.tmpart, stg, n0 + 64 * j, row);
        tma_store_2d(&a.tmpart, stg + E * 128, n0 + 64 * j + 32, row);
        bulk_commit();
        asm volatile("cp.async.bulk.wait_group 0;\nfence.proxy.async.global;" ::: "memory");  // written
      }
      if (tr) tr[kRgFusedTraceStored] = rgt::clk();
      if (ranges > 1 && a.flags) {
        // Publish (every consumer thread's stores issued, then one release at GPU scope), wait for the column
        // block's ranges (relaxed loads, one fence), add rows [R·r, R·r + R) of their partials in range order.
        rgt::bar_sync_consumers();
        if (ct == 0) {
          unsigned* f = a.flags + r * gridDim.x + kb;
          asm volatile("fence.acq_rel.gpu;\nst.release.gpu.global.u32 [%0], %1;" ::"l"(f), "r"(a.tag) : "memory");
          u64 tw = 0;
          for (u32 n = 0;; ++n) {
            bool all = true;
            for (int y = 0; y < ranges; ++y) {
              unsigned v;
              asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(a.flags + y * gridDim.x + kb) : "memory");
              all = all && v == a.tag;
            }
            if (all) break;
            if ((n & 255u) == 0) {  // a wait normally ends within microseconds; 2 s means a CTA that never arrives
              const u64 now = globaltimer_ns();
              if (tw == 0) tw = now;
              else if (now - tw > 2000000000ull) __trap();
            }
          }
          asm volatile("fence.acq_rel.gpu;" ::: "memory");
        }
        rgt::bar_sync_consumers();
        if (tr) tr[kRgFusedTraceSeen] = rgt::clk();
        const int R = (E + ranges - 1) / ranges, e0 = r * R;
        const i64 n = static_cast<i64>(E) * K;
        for (int i = ct; i < R * 32; i += 256) {
          const int e = e0 + i / 32;
          if (e >= E) break;
          const i64 off = static_cast<i64>(e) * K + n0 + (i % 32) * 4;
          float sum[4] = {0.f, 0.f, 0.f, 0.f};
          for (int y0 = 0; y0 < ranges; y0 += 8) {
            float4 q[8];
#pragma unroll
            for (int y = 0; y < 8; ++y)
              if (y0 + y < ranges) q[y] = __ldcg(reinterpret_cast<const float4*>(a.partial + (y0 + y) * n + off));
#pragma unroll
            for (int y = 0; y < 8; ++y)
              if (y0 + y < ranges) {
                sum[0] += q[y].x;
                sum[1] += q[y].y;
                sum[2] += q[y].z;
                sum[3] += q[y].w;
              }
          }
          store16(a.dw + off, Vec16{{__float_as_uint(sum[0]), __float_as_uint(sum[1]), __float_as_uint(sum[2]),
                                     __float_as_uint(sum[3])}});
        }
      }
    }
    if (tr) {
      tr[kRgFusedTraceEnd] = rgt::clk();
      tr[kRgFusedTraceEndNs] = globaltimer_ns();
    }
  }
#else
  __trap();
#endif
}

// g → hi = bf16(g), lo = bf16(g − hi) ([T, E] bf16 each, contiguous), the fused backward's g operand: 8 experts a
// thread (two 16-byte loads, two 16-byte stores), 256 threads a CTA. Lets the fused kernel (PDL) launch at once.
template <int E>
__global__ void __launch_bounds__(256) router_gemm_g_split_kernel(const RouterGemmGSplitArgs a) {
  static_assert(E % 8 == 0, "E: whole 8-expert units");
  pdl_launch_dependents();
  const i64 u = static_cast<i64>(blockIdx.x) * 256 + threadIdx.x, row = u / (E / 8);
  if (row >= a.T) return;
  const int e = static_cast<int>(u % (E / 8)) * 8;
  const float* src = a.g + row * a.g_stride + e;
  const Vec16 v0 = load16_stream(src), v1 = load16_stream(src + 4);
  Vec16 hi, lo;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const Vec16& v = q < 2 ? v0 : v1;
    rg::split_bf16x2(__uint_as_float(v.w[2 * (q & 1)]), __uint_as_float(v.w[2 * (q & 1) + 1]), hi.w[q], lo.w[q]);
  }
  store16(static_cast<char*>(a.hi) + (row * E + e) * 2, hi);
  store16(static_cast<char*>(a.lo) + (row * E + e) * 2, lo);
}

}  // namespace kiln
