// kiln/rms_norm_rope.cuh — fused RMSNorm over the whole hidden dim + rotate-half RoPE per head, forward/backward.
//
//   forward (row (b, s) of HD = heads·D channels; pair i < D/2 of a head: channels i and i + D/2):
//     r  = 1/sqrt(Σ_c x_c²/HD + eps),   n_c = x_c·r·w_c                    (fp32; n is not rounded)
//     y_i = n_i·cos_i − n_{i+D/2}·sin_i,   y_{i+D/2} = n_i·sin_i + n_{i+D/2}·cos_i   (cos/sin row s, columns < D/2)
//   backward (the rotation's adjoint, then RMSNorm's):
//     gn_i = dy_i·cos_i + dy_{i+D/2}·sin_i,   gn_{i+D/2} = dy_{i+D/2}·cos_i − dy_i·sin_i
//     P = Σ_c x_c·w_c·gn_c,   dx_c = r·w_c·gn_c − (r³/HD)·x_c·P,   dw_c = Σ_rows x_c·r·gn_c
//
// Work mapping. A row is cut into pair-chunks: E consecutive channels of a head's first half together with the E
// channels D/2 further on (E = 16 bytes of T when D/2 allows it), so a lane holds both members of every pair it
// rotates and no shuffles are needed. Lane l takes pair-chunks l, l + 32, …; the first halves a warp loads are
// contiguous runs of D/2 channels, the second halves likewise: every 32-byte sector is used in full.
// Forward: one warp per row, the row kept in registers between the Σx² reduction and the output pass (x read
// once). Backward: a persistent grid with balanced rows per CTA (kiln/row_pipe.cuh: CtaRows); each warp walks rows
// with a fixed lane → column map, so it accumulates dw for its columns in its own shared-memory slice (or registers)
// without races; at the end the CTA adds its warps' slices in warp order into partial[blockIdx.x], and
// dw_reduce_kernel adds the CTA slices in CTA order: deterministic, no atomics.
#pragma once
#include "kiln/common.cuh"
#include "kiln/rms_norm_rope_args.h"
#include "kiln/row_io.cuh"
#include "kiln/row_pipe.cuh"

namespace kiln {

template <int HD, int D, typename T>
struct RopeLayout {
  static_assert(D % 2 == 0 && HD % D == 0, "D even and dividing HD");
  static constexpr int H2 = D / 2;
  static constexpr int E = pow2_divisor(H2, 16 / static_cast<int>(sizeof(T)));  // channels per access
  static constexpr int BYTES = E * static_cast<int>(sizeof(T));
  static constexpr int PPH = H2 / E;         // pair-chunks per head
  static constexpr int NP = HD / (2 * E);    // pair-chunks per row
  static constexpr int STEPS = (NP + 31) / 32;
  // First-half channel of pair-chunk p (its partner chunk starts H2 later) and its cos/sin column.
  static __device__ __forceinline__ int chan(int p) {
    const int h = p / PPH;
    return h * D + (p - h * PPH) * E;
  }
  static __device__ __forceinline__ int col(int p) { return (p % PPH) * E; }
};

// cos/sin of one pair-chunk, kept as loaded (packed when 16-bit) and converted on use. When every step of a lane
// lands on the same column (32 % PPH == 0, e.g. D = 128 in bf16: PPH = 8), the row's values are loaded once and
// kept; otherwise per step.
template <typename L, typename C>
struct RopeTable {
  static constexpr bool ONCE = 32 % L::PPH == 0;
  static constexpr int E = L::E, CB = E * static_cast<int>(sizeof(C));
  static constexpr int PARTS = CB > 16 ? CB / 16 : 1, PB = CB > 16 ? 16 : CB, PE = E / PARTS;
  Raw<PB> c[PARTS], s[PARTS];
  __device__ __forceinline__ void load(const C* cr, const C* sr, int p) {
#pragma unroll
    for (int j = 0; j < PARTS; ++j) {
      c[j] = ld_raw<PB, false>(cr + L::col(p) + j * PE);
      s[j] = ld_raw<PB, false>(sr + L::col(p) + j * PE);
    }
  }
  __device__ __forceinline__ float cos_(int e) const { return raw_get<C>(c[e / PE], e % PE); }
  __device__ __forceinline__ float sin_(int e) const { return raw_get<C>(s[e / PE], e % PE); }
  // Element e's cos and sin: cf / sf, the row's values converted once, when ONCE; else this table's.
  __device__ __forceinline__ void cos_sin(int e, const float* cf, const float* sf, float& co, float& si) const {
    if constexpr (ONCE) co = cf[e], si = sf[e];
    else co = cos_(e), si = sin_(e);
  }
};

// The backwards' rotation of dy back by the row's angles (gn), element e of a pair-chunk (g1 / g2: dy's values in the
// first / second rotation half): n1 = g1·c + g2·s, n2 = g2·c − g1·s.
template <typename T, typename Tab, int B>
__device__ __forceinline__ void rope_unrotate(const Raw<B>& g1, const Raw<B>& g2, const Tab& tab, const float* cf,
                                              const float* sf, int e, float& n1, float& n2) {
  const float ga = raw_get<T>(g1, e), gb = raw_get<T>(g2, e);
  float c, sn;
  tab.cos_sin(e, cf, sf, c, sn);
  n1 = fmaf(gb, sn, ga * c);
  n2 = fmaf(-ga, sn, gb * c);
}
// The backwards' first pass over a pair-chunk (x1 / x2, g1 / g2: x's and dy's values in the two rotation halves, w1 /
// w2 their weights): Σx² into ss0 / ss1 and P = Σ x·w·gn into P0 / P1; KEEP: gn kept in k1 / k2 (KE = E, else 1).
template <typename T, int E, bool KEEP, typename Tab, int B, int KE>
__device__ __forceinline__ void rope_bwd_sums(const Raw<B>& x1, const Raw<B>& x2, const Raw<B>& g1, const Raw<B>& g2,
                                              const Tab& tab, const float* cf, const float* sf, const float (&w1)[E],
                                              const float (&w2)[E], float (&k1)[KE], float (&k2)[KE], float& ss0,
                                              float& ss1, float& P0, float& P1) {
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const float xa = raw_get<T>(x1, e), xb = raw_get<T>(x2, e);
    float na, nb;
    rope_unrotate<T>(g1, g2, tab, cf, sf, e, na, nb);
    if constexpr (KEEP) {
      k1[e] = na;
      k2[e] = nb;
    }
    ss0 = fmaf(xa, xa, ss0);
    ss1 = fmaf(xb, xb, ss1);
    P0 = fmaf(xa * w1[e], na, P0);
    P1 = fmaf(xb * w2[e], nb, P1);
  }
}

// T: x/y dtype, W: weight dtype, C: cos/sin dtype. One warp per row; WARPS rows per CTA.
template <int HD, int D, int WARPS, typename T, typename W, typename C>
__global__ void __launch_bounds__(WARPS * 32) rms_norm_rope_fwd_kernel(const RmsNormRopeFwdArgs a) {
  using L = RopeLayout<HD, D, T>;
  constexpr int E = L::E, B = L::BYTES, STEPS = L::STEPS, NP = L::NP, H2 = L::H2;
  constexpr bool KEEP = STEPS * 2 * B <= 512;  // ≤ 128 registers of row data per lane
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * WARPS + (threadIdx.x >> 5);
  if (row >= a.M) return;
  const int b = row / a.S, s = row - b * a.S;
  const T* xr = static_cast<const T*>(a.x) + b * a.x_sb + s * a.x_ss;
  T* yr = static_cast<T*>(a.y) + b * a.y_sb + s * a.y_ss;
  const C* cr = static_cast<const C*>(a.cos) + s * a.cos_ss;
  const C* sr = static_cast<const C*>(a.sin) + s * a.sin_ss;

  Raw<B> v1[KEEP ? STEPS : 1], v2[KEEP ? STEPS : 1];
  float ss = 0.f;
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {
    const int p = st * 32 + lane;
    if (p < NP) {
      const int o = L::chan(p);
      const Raw<B> r1 = ld_raw<B, KEEP>(xr + o), r2 = ld_raw<B, KEEP>(xr + o + H2);
      if constexpr (KEEP) {
        v1[st] = r1;
        v2[st] = r2;
      }
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float f1 = raw_get<T>(r1, e), f2 = raw_get<T>(r2, e);
        ss = fmaf(f1, f1, ss);
        ss = fmaf(f2, f2, ss);
      }
    }
  }
  RopeTable<L, C> tab;
  if constexpr (RopeTable<L, C>::ONCE) tab.load(cr, sr, lane);
  ss = warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(HD) + a.eps);

#pragma unroll
  for (int st = 0; st < STEPS; ++st) {
    const int p = st * 32 + lane;
    if (p < NP) {
      const int o = L::chan(p);
      Raw<B> r1, r2;
      if constexpr (KEEP) {
        r1 = v1[st];
        r2 = v2[st];
        launder(r1);
        launder(r2);
      } else {
        r1 = ld_raw<B, false>(xr + o);
        r2 = ld_raw<B, false>(xr + o + H2);
      }
      if constexpr (!RopeTable<L, C>::ONCE) tab.load(cr, sr, p);
      float w1[E], w2[E], y1[E], y2[E];
      load_f<W, E>(a.w, o, w1);
      load_f<W, E>(a.w, o + H2, w2);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float n1 = raw_get<T>(r1, e) * r * w1[e], n2 = raw_get<T>(r2, e) * r * w2[e];
        y1[e] = n1 * tab.cos_(e) - n2 * tab.sin_(e);
        y2[e] = n1 * tab.sin_(e) + n2 * tab.cos_(e);
      }
      Raw<B> o1, o2;
      raw_fill<T>(o1, y1);
      raw_fill<T>(o2, y2);
      st_raw(yr + o, o1);
      st_raw(yr + o + H2, o2);
    }
  }
}

// Index of channel c in the shared-memory weight table: with 8-channel chunks, elements 0–3 of every chunk in the
// first plane and 4–7 in the second, so a chunk is two float4 loads that 8 consecutive lanes make contiguous.
template <int HD, int E>
__device__ __forceinline__ int rope_wpos(int c) {
  if constexpr (E == 8) return ((c & 4) ? HD / 2 : 0) + (c >> 3) * 4 + (c & 3);
  else return c;
}
template <int HD, int E>
__device__ __forceinline__ void rope_wload(const float* wsm, int o, float (&w)[E]) {
  if constexpr (E == 8) {
    const float4 lo = *reinterpret_cast<const float4*>(wsm + (o >> 3) * 4);
    const float4 hi = *reinterpret_cast<const float4*>(wsm + HD / 2 + (o >> 3) * 4);
    w[0] = lo.x; w[1] = lo.y; w[2] = lo.z; w[3] = lo.w;
    w[4] = hi.x; w[5] = hi.y; w[6] = hi.z; w[7] = hi.w;
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) w[e] = wsm[o + e];
  }
}

// The row's Σx² (ss) and Σx·w·gn (P) over the SPLIT warps of a group that share it: each warp's lane 0 posts its
// sums to slot[warp], a named barrier per group, then every warp adds the group's slots in warp order (the same
// bits in each warp). slot = this row parity's [WARPS][2] exchange buffer. SPLIT = 1: the warp's sums as they are.
template <int SPLIT>
__device__ __forceinline__ void rope_group_sums(float (*slot)[2], int warp, int group, int lane, float& ss, float& P) {
  if constexpr (SPLIT > 1) {
    if (lane == 0) {
      slot[warp][0] = ss;
      slot[warp][1] = P;
    }
    named_barrier_sync(1 + group, SPLIT * 32);
    ss = slot[group * SPLIT][0];
    P = slot[group * SPLIT][1];
#pragma unroll
    for (int q = 1; q < SPLIT; ++q) {
      ss += slot[group * SPLIT + q][0];
      P += slot[group * SPLIT + q][1];
    }
  }
}

// Persistent grid; dynamic shared memory HD + WARPS·HD floats (the weights in fp32, then one dw slice per warp).
// Registers capped at 128 (16 warps per SM; unbounded, ptxas hoists every load of the row and takes ~250).
// KEEP_ROWS: the second pass takes x and the rotated dy (gn, fp32, computed once in the first pass) from registers
// (≤ 64 bytes of rows per lane) instead of re-reading and re-rotating (L1/L2 hits); with one warp per row it needs
// ~170 registers, so its cap is then 12 warps per SM. dx = r·(w·gn − k·x) with k = (P/HD)·r². Rows are walked with RowWalker (no division).
// SPLIT warps share a row: warp `sub` of a group takes pair-chunks (st·SPLIT + sub)·32 + lane, the group adds its
// partial Σx² and Σx·w·gn through shared memory in warp order (a named barrier per group): half or a quarter of the
// registers per row, and SPLIT× finer work items for the persistent grid's last round.
template <int HD, int D, int WARPS, bool KEEP_ROWS, int SPLIT, typename T, typename W, typename C>
__global__ void __launch_bounds__(WARPS * 32, (KEEP_ROWS && SPLIT == 1 ? 12 : 16) / WARPS > 0
                                                  ? (KEEP_ROWS && SPLIT == 1 ? 12 : 16) / WARPS : 1)
    rms_norm_rope_bwd_kernel(const RmsNormRopeBwdArgs a) {
  pdl_launch_dependents();  // dw_reduce_kernel (PDL) may be placed beside this grid now; it waits for it to end
  using L = RopeLayout<HD, D, T>;
  static_assert(WARPS % SPLIT == 0 && (SPLIT == 1 || WARPS / SPLIT <= 15), "SPLIT divides WARPS; ≤ 15 groups");
  constexpr int E = L::E, B = L::BYTES, NP = L::NP, H2 = L::H2;
  constexpr int STEPS = (NP + 32 * SPLIT - 1) / (32 * SPLIT);  // steps of this warp's share of the row
  constexpr bool KEEP = KEEP_ROWS && STEPS * 4 * B <= 256;
  constexpr int NG = WARPS / SPLIT;  // rows in flight per CTA
  extern __shared__ __align__(16) float smf[];  // [HD] weights (rope_wpos order), then [WARPS][HD] dw slices
  __shared__ float xch[2][WARPS][2];            // per-row partial sums of a group, double-buffered by row parity
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = warp / SPLIT, sub = warp - group * SPLIT;
  float* const wsm = smf;
  float* const dws = smf + HD;
  float* dw = dws + warp * HD;
  for (int i = lane; i < HD; i += 32) dw[i] = 0.f;
  for (int i = threadIdx.x; i < HD; i += WARPS * 32)
    wsm[rope_wpos<HD, E>(i)] = to_float(static_cast<const W*>(a.w)[i]);
  __syncthreads();

  // The CTA's rows c, c + G, … (counts differ by ≤ 1: every SM gets the same work; a grid-stride walk over groups
  // of NG rows gave the first CTAs a whole extra round), group g taking every NG-th of them.
  const CtaRows strip(a.M, group, NG);
  RowWalker walk(strip, 0, a.S);
  int parity = 0;
  for (int k = 0; k < strip.n; ++k, parity ^= 1, walk.next()) {
    const i64 b = walk.q, s = walk.m;
    const T* xr = static_cast<const T*>(a.x) + b * a.x_sb + s * a.x_ss;
    const T* gr = static_cast<const T*>(a.dy) + b * a.dy_sb + s * a.dy_ss;
    T* dxr = static_cast<T*>(a.dx) + b * a.dx_sb + s * a.dx_ss;
    const C* cr = static_cast<const C*>(a.cos) + s * a.cos_ss;
    const C* sr = static_cast<const C*>(a.sin) + s * a.sin_ss;

    Raw<B> x1v[KEEP ? STEPS : 1], x2v[KEEP ? STEPS : 1], g1v[KEEP ? STEPS : 1], g2v[KEEP ? STEPS : 1];
    if constexpr (KEEP) {
      // All loads of the row first: 4·STEPS independent loads in flight per lane.
#pragma unroll
      for (int st = 0; st < STEPS; ++st) {
        const int p = (st * SPLIT + sub) * 32 + lane;
        if (p < NP) {
          const int o = L::chan(p);
          x1v[st] = ld_raw<B, true>(xr + o);
          x2v[st] = ld_raw<B, true>(xr + o + H2);
          g1v[st] = ld_raw<B, true>(gr + o);
          g2v[st] = ld_raw<B, true>(gr + o + H2);
        }
      }
    }
    using Tab = RopeTable<L, C>;
    Tab tab;
    float cf[Tab::ONCE ? E : 1], sf[Tab::ONCE ? E : 1];  // the row's cos/sin, converted once
    if constexpr (Tab::ONCE) {
      tab.load(cr, sr, lane);
#pragma unroll
      for (int e = 0; e < E; ++e) cf[e] = tab.cos_(e), sf[e] = tab.sin_(e);
    }

    float gk1[KEEP ? STEPS : 1][KEEP ? E : 1], gk2[KEEP ? STEPS : 1][KEEP ? E : 1];  // gn kept for the second pass
    float ss0 = 0.f, ss1 = 0.f, P0 = 0.f, P1 = 0.f;
#pragma unroll
    for (int st = 0; st < STEPS; ++st) {
      const int p = (st * SPLIT + sub) * 32 + lane;
      if (p < NP) {
        const int o = L::chan(p);
        Raw<B> x1, x2, g1, g2;
        if constexpr (KEEP) {
          x1 = x1v[st]; x2 = x2v[st]; g1 = g1v[st]; g2 = g2v[st];
        } else {
          x1 = ld_raw<B, false>(xr + o); x2 = ld_raw<B, false>(xr + o + H2);
          g1 = ld_raw<B, false>(gr + o); g2 = ld_raw<B, false>(gr + o + H2);
        }
        if constexpr (!Tab::ONCE) tab.load(cr, sr, p);
        float w1[E], w2[E];
        rope_wload<HD, E>(wsm, o, w1);
        rope_wload<HD, E>(wsm, o + H2, w2);
        rope_bwd_sums<T, E, KEEP>(x1, x2, g1, g2, tab, cf, sf, w1, w2, gk1[KEEP ? st : 0], gk2[KEEP ? st : 0],
                                  ss0, ss1, P0, P1);
      }
    }
    float ss = warp_sum(ss0 + ss1), P = warp_sum(P0 + P1);
    rope_group_sums<SPLIT>(xch[parity], warp, group, lane, ss, P);
    const float r = rsqrtf(ss / static_cast<float>(HD) + a.eps);
    // dx = r·w·gn − (P/HD)·r³·x = r·(w·gn − k·x), k = (P/HD)·r·r (P/HD first: r³ alone under/overflows fp32 for
    // rows of rms ≳ 1e13 or, with eps = 0, ≲ 1e-13, while k·x stays of the order of gn).
    const float kx = (P / static_cast<float>(HD)) * r * r;

#pragma unroll
    for (int st = 0; st < STEPS; ++st) {
      const int p = (st * SPLIT + sub) * 32 + lane;
      if (p < NP) {
        const int o = L::chan(p);
        Raw<B> x1, x2;
        float n1[E], n2[E];  // gn
        if constexpr (KEEP) {
          x1 = x1v[st]; x2 = x2v[st];
          launder(x1); launder(x2);
#pragma unroll
          for (int e = 0; e < E; ++e) n1[e] = gk1[st][e], n2[e] = gk2[st][e];
        } else {
          x1 = ld_raw<B, false>(xr + o); x2 = ld_raw<B, false>(xr + o + H2);
          const Raw<B> g1 = ld_raw<B, false>(gr + o), g2 = ld_raw<B, false>(gr + o + H2);
          if constexpr (!Tab::ONCE) tab.load(cr, sr, p);
#pragma unroll
          for (int e = 0; e < E; ++e) rope_unrotate<T>(g1, g2, tab, cf, sf, e, n1[e], n2[e]);
        }
        float w1[E], w2[E], d1[E], d2[E], a1[E], a2[E];
        rope_wload<HD, E>(wsm, o, w1);
        rope_wload<HD, E>(wsm, o + H2, w2);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const float xa = raw_get<T>(x1, e), xb = raw_get<T>(x2, e);
          d1[e] = r * fmaf(-kx, xa, w1[e] * n1[e]);
          d2[e] = r * fmaf(-kx, xb, w2[e] * n2[e]);
          a1[e] = xa * n1[e];
          a2[e] = xb * n2[e];
        }
        Raw<B> o1, o2;
        raw_fill<T>(o1, d1);
        raw_fill<T>(o2, d2);
        st_raw(dxr + o, o1);
        st_raw(dxr + o + H2, o2);
        smem_fma<E>(dw + o, a1, r);  // dw += x·gn·r
        smem_fma<E>(dw + o + H2, a2, r);
      }
    }
  }

  __syncthreads();
  dw_cta_partial<WARPS, WARPS * 32, HD % 4 == 0>(dws, HD, HD, a.partial + static_cast<i64>(blockIdx.x) * HD,
                                                 threadIdx.x);
}

// ---- staged backward -----------------------------------------------------------------------------------------
// The same math with the loads decoupled from the compute (kiln/row_pipe.cuh) and the fewest instructions per
// element: a persistent grid sized to the GPU; the WARPS warps form GROUPS = WARPS/SPLIT groups; group g takes every
// GROUPS-th of the CTA's rows c, c + G, … (CtaRows), and warp `sub` of the group the contiguous slice of HD/SPLIT
// channels (whole heads) [sub·HD/SPLIT, …) of those rows. Each warp streams its slices of x and dy through its own
// ring of DEPTH shared-memory slots (TMA bulk copies on sm_90, cp.async before), so DEPTH − 1 rows per warp are in
// flight while it computes one; the SPLIT warps of a row add their Σx² and Σx·w·gn through shared memory (one named
// barrier per row). Per element (bf16, D = 128): the first pass unpacks x and dy, rotates dy once (gn, kept in fp32
// registers for the second pass when a lane holds ≤ 32 channels) and accumulates Σx² and Σx·w·gn; the second pass unpacks x again and computes
// dx = r·(w·gn − k·x) with k = (P/HD)·r² and dw += x·gn·r — about 14 instructions per element instead of 30 when the
// rotation and the unpacking of dy were repeated and dw went through shared memory. The weights live in shared
// memory as fp32 (no unpacking; the halves of 8-channel chunks in two planes, so 8 lanes read 128 contiguous bytes);
// the cos/sin values of the next row are loaded while the current one is computed and converted once per row; dw for
// the lane's columns lives in registers; rows are walked with RowWalker (no division per row). At the end the
// groups' dw go through the (then idle) rings and are added in group order. Needs 16-byte pair-chunks and SPLIT
// dividing the head count. Shared memory: HD·4 + WARPS·DEPTH·(2·HD/SPLIT·sizeof(T) + 8).
template <int HD, int D, int SPLIT, typename T>
struct RopeStaged {
  static_assert(HD % (D * SPLIT) == 0, "SPLIT divides the heads");
  static constexpr int HDS = HD / SPLIT;  // channels of a warp's slice
  using L = RopeLayout<HDS, D, T>;
  static constexpr int CH = L::STEPS * 2 * L::E;  // channels per lane: dw registers (and gn ones when CARRY)
  static constexpr bool OK = L::BYTES == 16 && CH <= 64;
  // gn kept in fp32 registers between the passes with ≤ 32 channels per lane; with more (one warp per row at
  // Hd = 2048) the second pass reads dy again and re-rotates it (64 more registers would spill).
  static constexpr bool CARRY = CH <= 32;
  static constexpr int PIECE = HDS * static_cast<int>(sizeof(T));
  static constexpr int SLOT = 2 * PIECE;
  // Resident warps per SM the register cap aims at: 24 (≤ 85 registers) with ≤ 16 channels per lane, 16 (≤ 128)
  // with ≤ 32, else 8. CTAs of more warps than that are capped by their own size.
  static constexpr int TARGET_WARPS = CH <= 16 ? 24 : CH <= 32 ? 16 : 8;
};

template <int HD, int D, int WARPS, int SPLIT, int DEPTH, bool BULK, typename T, typename W, typename C>
__global__ void __launch_bounds__(WARPS * 32, RopeStaged<HD, D, SPLIT, T>::TARGET_WARPS / WARPS > 0
                                                  ? RopeStaged<HD, D, SPLIT, T>::TARGET_WARPS / WARPS : 1)
    rms_norm_rope_bwd_staged_kernel(const RmsNormRopeBwdArgs a) {
  pdl_launch_dependents();  // dw_reduce_kernel (PDL) may be placed beside this grid now; it waits for it to end
  using St = RopeStaged<HD, D, SPLIT, T>;
  using L = typename St::L;  // the layout of a warp's slice
  using Tab = RopeTable<L, C>;
  static_assert(St::OK, "staged backward: 16-byte pair-chunks and ≤ 64 channels per lane");
  static_assert(DEPTH >= 2, "a ring of at least two slots");
  constexpr int GROUPS = WARPS / SPLIT;
  static_assert(WARPS % SPLIT == 0 && (SPLIT == 1 || GROUPS <= 15), "SPLIT divides WARPS; ≤ 15 groups");
#if __CUDA_ARCH__ < 900
  static_assert(!BULK, "TMA bulk copies need sm_90");
#endif
  constexpr int E = L::E, STEPS = L::STEPS, NP = L::NP, H2 = L::H2, HDS = St::HDS;
  constexpr int PIECE = St::PIECE, SLOT = St::SLOT;
  constexpr bool CARRY = St::CARRY;
  // [HD] fp32 weights (rope_wpos order), [WARPS][DEPTH][SLOT] rings, [WARPS][DEPTH] mbarriers.
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ float xch[2][WARPS][2];  // per-row partial sums of a group's warps, double-buffered by row parity
  float* wsm = reinterpret_cast<float*>(smem_raw);
  unsigned char* rings = smem_raw + HD * 4;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = warp / SPLIT, sub = warp - group * SPLIT;
  const int c0 = sub * HDS;  // first channel of the warp's slice
  WarpRing<DEPTH, SLOT, BULK> ring{rings + warp * DEPTH * SLOT,
                                   reinterpret_cast<u64*>(rings + WARPS * DEPTH * SLOT) + warp * DEPTH};
  ring.init(lane);

  const CtaRows strip(a.M, group, GROUPS);
  const int rows = strip.n;  // this warp's rows
  RowWalker iw(strip, 0, a.S);  // (b, s) of the next row to issue
  auto issue = [&](int k) {
    const void* const src[2] = {static_cast<const T*>(a.x) + iw.q * a.x_sb + iw.m * a.x_ss + c0,
                                static_cast<const T*>(a.dy) + iw.q * a.dy_sb + iw.m * a.dy_ss + c0};
    ring.template issue<PIECE, 2>(k, k < rows, src, lane);
    iw.next();
  };
#pragma unroll
  for (int k = 0; k < DEPTH; ++k) issue(k);

  for (int i = threadIdx.x; i < HD; i += WARPS * 32)
    wsm[rope_wpos<HD, E>(i)] = to_float(static_cast<const W*>(a.w)[i]);

  // cos/sin: with every step of a lane on one column (ONCE), the row's values as floats, the next row's in flight.
  const C* const cosb = static_cast<const C*>(a.cos);
  const C* const sinb = static_cast<const C*>(a.sin);
  float cf[Tab::ONCE ? E : 1], sf[Tab::ONCE ? E : 1];
  Tab tab;
  RowWalker cw(strip, 0, a.S);  // (b, s) of the row being computed
  RowWalker tw(strip, 1, a.S);  // (b, s) of the row after it
  if constexpr (Tab::ONCE) {
    if (rows > 0) {
      tab.load(cosb + cw.m * a.cos_ss, sinb + cw.m * a.sin_ss, lane);
#pragma unroll
      for (int e = 0; e < E; ++e) cf[e] = tab.cos_(e), sf[e] = tab.sin_(e);
    }
  }
  __syncthreads();  // the weight table is complete

  float dw1[STEPS][E], dw2[STEPS][E];
#pragma unroll
  for (int st = 0; st < STEPS; ++st)
#pragma unroll
    for (int e = 0; e < E; ++e) dw1[st][e] = dw2[st][e] = 0.f;

  for (int k = 0; k < rows; ++k) {
    if constexpr (Tab::ONCE) {
      if (k + 1 < rows) tab.load(cosb + tw.m * a.cos_ss, sinb + tw.m * a.sin_ss, lane);  // in flight meanwhile
      tw.next();
    }
    ring.wait(k);
    const T* xs = reinterpret_cast<const T*>(ring.slot(k));
    const T* gs = xs + HDS;
    const C* cr = cosb + cw.m * a.cos_ss;
    const C* sr = sinb + cw.m * a.sin_ss;

    float gn1[CARRY ? STEPS : 1][CARRY ? E : 1], gn2[CARRY ? STEPS : 1][CARRY ? E : 1];  // gn for the second pass
    float ss0 = 0.f, ss1 = 0.f, P0 = 0.f, P1 = 0.f;
#pragma unroll
    for (int st = 0; st < STEPS; ++st) {
      const int p = st * 32 + lane;
      if (NP % 32 == 0 || p < NP) {
        const int o = L::chan(p);
        const Raw<16> x1 = lds16(xs + o), x2 = lds16(xs + o + H2), g1 = lds16(gs + o), g2 = lds16(gs + o + H2);
        Tab t2;
        if constexpr (!Tab::ONCE) t2.load(cr, sr, p);
        float w1[E], w2[E];
        rope_wload<HD, E>(wsm, c0 + o, w1);
        rope_wload<HD, E>(wsm, c0 + o + H2, w2);
        rope_bwd_sums<T, E, CARRY>(x1, x2, g1, g2, t2, cf, sf, w1, w2, gn1[CARRY ? st : 0], gn2[CARRY ? st : 0],
                                   ss0, ss1, P0, P1);
      }
    }
    float ss = warp_sum(ss0 + ss1), P = warp_sum(P0 + P1);
    rope_group_sums<SPLIT>(xch[k & 1], warp, group, lane, ss, P);
    const float r = rsqrtf(ss / static_cast<float>(HD) + a.eps);
    // dx = r·w·gn − (P/HD)·r³·x = r·(w·gn − k·x), k = (P/HD)·r·r (P/HD first: r³ alone under/overflows fp32 for
    // rows of rms ≳ 1e13 or ≲ 1e-13 with eps = 0, while k·x stays of the order of gn).
    const float kx = (P / static_cast<float>(HD)) * r * r;

    T* dxr = static_cast<T*>(a.dx) + cw.q * a.dx_sb + cw.m * a.dx_ss + c0;
#pragma unroll
    for (int st = 0; st < STEPS; ++st) {
      const int p = st * 32 + lane;
      if (NP % 32 == 0 || p < NP) {
        const int o = L::chan(p);
        const Raw<16> x1 = lds16(xs + o), x2 = lds16(xs + o + H2);
        float n1[E], n2[E];
        if constexpr (CARRY) {
#pragma unroll
          for (int e = 0; e < E; ++e) n1[e] = gn1[st][e], n2[e] = gn2[st][e];
        } else {
          const Raw<16> g1 = lds16(gs + o), g2 = lds16(gs + o + H2);
          Tab t2;
          if constexpr (!Tab::ONCE) t2.load(cr, sr, p);
#pragma unroll
          for (int e = 0; e < E; ++e) rope_unrotate<T>(g1, g2, t2, cf, sf, e, n1[e], n2[e]);
        }
        float w1[E], w2[E], d1[E], d2[E];
        rope_wload<HD, E>(wsm, c0 + o, w1);
        rope_wload<HD, E>(wsm, c0 + o + H2, w2);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const float xa = raw_get<T>(x1, e), xb = raw_get<T>(x2, e);
          d1[e] = r * fmaf(-kx, xa, w1[e] * n1[e]);
          d2[e] = r * fmaf(-kx, xb, w2[e] * n2[e]);
          dw1[st][e] = fmaf(xa * n1[e], r, dw1[st][e]);
          dw2[st][e] = fmaf(xb * n2[e], r, dw2[st][e]);
        }
        Raw<16> o1, o2;
        raw_fill<T>(o1, d1);
        raw_fill<T>(o2, d2);
        st_raw(dxr + o, o1);
        st_raw(dxr + o + H2, o2);
      }
    }
    if constexpr (Tab::ONCE) {
#pragma unroll
      for (int e = 0; e < E; ++e) cf[e] = tab.cos_(e), sf[e] = tab.sin_(e);
    }
    cw.next();
    ring.release();
    issue(k + DEPTH);
  }
  ring.drain();

  // The groups' dw through the rings ([GROUPS][HD] fp32 ≤ their size), added in group order.
  __syncthreads();
  float* red = reinterpret_cast<float*>(rings);
  static_assert(GROUPS * HD * 4 <= WARPS * DEPTH * SLOT, "the dw slices fit the rings");
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {
    const int p = st * 32 + lane;
    if (NP % 32 == 0 || p < NP) {
      const int o = c0 + L::chan(p);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        red[group * HD + o + e] = dw1[st][e];
        red[group * HD + o + H2 + e] = dw2[st][e];
      }
    }
  }
  __syncthreads();
  dw_cta_partial<GROUPS, WARPS * 32, HD % 4 == 0>(red, HD, HD, a.partial + static_cast<i64>(blockIdx.x) * HD,
                                                  threadIdx.x);
}

}  // namespace kiln
