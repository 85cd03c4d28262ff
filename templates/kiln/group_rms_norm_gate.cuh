// kiln/group_rms_norm_gate.cuh — group RMSNorm × sigmoid gate (linghe GroupNormGateFunction), forward/backward.
//
//   token (b, s), channel c in group q (G groups of d = DIM/G contiguous channels), σ = sigmoid(gate):
//     forward:  r_q = 1/sqrt(Σ_{c∈q} x_c²/d + eps),   out_c = x_c·r_q·w_c·σ_c                 (fp32 math)
//     backward: t_c = dy_c·w_c·σ_c,   Q_q = Σ_{c∈q} x_c·t_c
//               dx_c = r_q·t_c − (r_q³/d)·x_c·Q_q,   dgate_c = x_c·r_q·t_c·(1 − σ_c),   dw_c += x_c·r_q·dy_c·σ_c
//   SHARED_W: one weight of d channels serves every group (w index c mod d); dw then sums over groups too.
//
// Work mapping. A warp takes one (token, segment): SEG consecutive groups (SEG·d channels), in 16-byte chunks
// (E channels each; E divides d, so no chunk straddles two groups), lane l taking chunks l, l + 32, …. Every row of
// every tensor is contiguous, so the transposed layouts cost nothing: a warp reads and writes whole rows.
// Group sums: each lane adds its chunk's partial to the accumulator of the chunk's group (SEG accumulators; the
// group is a compile-time constant when a group spans whole warp steps), then one butterfly per group.
// Backward: a persistent grid (x: token slots, y: segment); each warp walks tokens with a fixed lane → column map
// and accumulates dw for its columns in its own shared-memory slice; the CTA adds its warps' slices in warp order
// into partial[blockIdx.x][seg's channels], and dw_reduce_kernel adds the CTA rows in order: deterministic. FUSE:
// the backward is launched cooperatively and adds the CTA rows itself after a grid barrier (dw_reduce_fused: the
// same order, the same bits), so no second kernel waits behind it.
#pragma once
#include "kiln/common.cuh"
#include "kiln/group_rms_norm_gate_args.h"
#include "kiln/ptx.cuh"
#include "kiln/row_io.cuh"
#include "kiln/row_pipe.cuh"

namespace kiln {

template <int DIM, int G, int SEG, typename T>
struct GateLayout {
  static_assert(DIM % G == 0 && G % SEG == 0, "G divides DIM, SEG divides G");
  using Type = T;
  static constexpr int d = DIM / G;                                               // channels per group
  static constexpr int E = pow2_divisor(d, 16 / static_cast<int>(sizeof(T)));    // channels per chunk
  static constexpr int BYTES = E * static_cast<int>(sizeof(T));
  static constexpr int CPG = d / E;            // chunks per group
  static constexpr int SEGC = SEG * d;         // channels per segment
  static constexpr int NC = SEGC / E;          // chunks per segment
  static constexpr int NSEG = G / SEG;
  static constexpr int STEPS = (NC + 31) / 32;
  // The segment-local group of the chunk lane `lane` takes at step `st`.
  static __device__ __forceinline__ int group(int st, int lane) {
    if constexpr (CPG % 32 == 0) return (st * 32) / CPG;  // a group spans whole steps: compile-time
    else return (st * 32 + lane) / CPG;
  }
};

// σ(g) = 1/(1 + e^−g), and 1 − σ(g) = e^−g·σ(g) (accurate where σ rounds to 1; e^−g = inf gives σ = 0, 1 − σ = 1).
// 16-bit outputs use the fast exp and reciprocal (ex2/rcp.approx.ftz, a few 1e-7 relative: far below their
// rounding; two instructions each — the non-ftz ex2 needs three more to scale denormal results; flushing them only
// turns 1 − σ < 1.2e-38 (g > 87) into 0); fp32 outputs the accurate exp and a correctly rounded reciprocal.
// (ex2_ftz, rcp_ftz: kiln/ptx.cuh.)
template <typename T>
__device__ __forceinline__ float sigmoid_of_exp(float e) {
  return sizeof(T) == 4 ? __frcp_rn(1.0f + e) : rcp_ftz(1.0f + e);  // e = inf: 0 either way
}
template <typename T>
__device__ __forceinline__ float exp_neg(float g) {
  return sizeof(T) == 4 ? expf(-g) : ex2_ftz(g * -1.4426950408889634f);
}
template <typename T>
struct Sigmoid {
  float s, one_minus;
  __device__ __forceinline__ explicit Sigmoid(float g) {
    const float e = exp_neg<T>(g);
    s = sigmoid_of_exp<T>(e);
    one_minus = fminf(e * s, 1.0f);  // inf·0 = NaN → 1
  }
};
template <typename T>
__device__ __forceinline__ float sigmoid(float g) {
  return sigmoid_of_exp<T>(exp_neg<T>(g));
}

// (b, s) of the t-th token in walking order (see GroupNormGateFwdArgs).
template <typename Args, typename I>
__device__ __forceinline__ void token_bs(const Args& a, I t, I& b, I& s) {
  if (a.seq_major) {
    s = t / a.B;
    b = t - s * a.B;
  } else {
    b = t / a.S;
    s = t - b * a.S;
  }
}

// v[k] for the runtime index q < N, without dynamic register indexing.
template <int N>
__device__ __forceinline__ float pick(const float (&v)[N], int q) {
  float r = v[0];
#pragma unroll
  for (int k = 1; k < N; ++k) r = q == k ? v[k] : r;
  return r;
}
template <int N>
__device__ __forceinline__ void add_at(float (&v)[N], int q, float a) {
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] += q == k ? a : 0.f;
}

// The forwards' per-chunk math (a lane's chunk c = st·32 + lane of the segment that starts at channel c0, E = L::E
// values): its Σx² added to the accumulator of its segment-local group; the SEG groups' r = 1/rms over the warp; its outputs
// x·r·w·σ(gate) stored at orow + c·E (orow: the segment's outputs; the weights at channel c0 + c·E, or that mod d when
// the groups share them).
template <typename L, int SEG, int B>
__device__ __forceinline__ void add_chunk_sumsq(float (&ss)[SEG], int st, int lane, const Raw<B>& xraw) {
  float part = 0.f;
#pragma unroll
  for (int e = 0; e < L::E; ++e) {
    const float f = raw_get<typename L::Type>(xraw, e);
    part = fmaf(f, f, part);
  }
  add_at(ss, L::group(st, lane), part);
}
template <typename L, int SEG>
__device__ __forceinline__ void group_rinv(const float (&ss)[SEG], float (&r)[SEG], float eps) {
#pragma unroll
  for (int k = 0; k < SEG; ++k) r[k] = 1.0f / sqrtf(warp_sum(ss[k]) / static_cast<float>(L::d) + eps);
}
template <typename L, typename W, bool SHARED_W, int B>
__device__ __forceinline__ void gate_chunk_out(const Raw<B>& xraw, const Raw<B>& graw, float rq, const void* w_ptr,
                                               int c0, int c, typename L::Type* orow) {
  using T = typename L::Type;
  constexpr int E = L::E;
  const int ch = c0 + c * E;  // channel of the chunk in the row
  float w[E], o[E];
  load_f<W, E>(w_ptr, SHARED_W ? ch % L::d : ch, w);
#pragma unroll
  for (int e = 0; e < E; ++e) o[e] = raw_get<T>(xraw, e) * rq * w[e] * sigmoid<T>(raw_get<T>(graw, e));
  Raw<B> out;
  raw_fill<T>(out, o);
  st_raw(orow + c * E, out);
}

// One warp per (token, segment); WARPS per CTA. T: x/gate/out dtype, W: weight dtype.
template <int DIM, int G, int SEG, bool SHARED_W, int WARPS, typename T, typename W>
__global__ void __launch_bounds__(WARPS * 32) group_rms_norm_gate_fwd_kernel(const GroupNormGateFwdArgs a) {
  using L = GateLayout<DIM, G, SEG, T>;
  constexpr int E = L::E, B = L::BYTES, STEPS = L::STEPS, NC = L::NC, d = L::d;
  constexpr bool KEEP = STEPS * 2 * B <= 512;  // x and gate in registers: ≤ 128 per lane
  const int lane = threadIdx.x & 31;
  const int item = blockIdx.x * WARPS + (threadIdx.x >> 5);
  const int token = item / L::NSEG, seg = item - token * L::NSEG;
  if (token >= a.M) return;
  int b, s;
  token_bs(a, token, b, s);
  const int c0 = seg * L::SEGC;  // first channel of the segment
  const T* xr = static_cast<const T*>(a.x) + b * a.x_sb + s * a.x_ss + c0;
  const T* gr = static_cast<const T*>(a.gate) + b * a.g_sb + s * a.g_ss + c0;
  T* orow = static_cast<T*>(a.out) + b * a.o_sb + s * a.o_ss + c0;

  Raw<B> xv[KEEP ? STEPS : 1], gv[KEEP ? STEPS : 1];
  float ss[SEG];
#pragma unroll
  for (int k = 0; k < SEG; ++k) ss[k] = 0.f;
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {
    const int c = st * 32 + lane;
    if (c < NC) {
      const Raw<B> xraw = ld_raw<B, KEEP>(xr + c * E);
      if constexpr (KEEP) {
        xv[st] = xraw;
        gv[st] = ld_raw<B, true>(gr + c * E);
      }
      add_chunk_sumsq<L>(ss, st, lane, xraw);
    }
  }
  float r[SEG];
  group_rinv<L>(ss, r, a.eps);

#pragma unroll
  for (int st = 0; st < STEPS; ++st) {
    const int c = st * 32 + lane;
    if (c < NC) {
      Raw<B> xraw, graw;
      if constexpr (KEEP) {
        xraw = xv[st];
        graw = gv[st];
        launder(xraw);
      } else {
        xraw = ld_raw<B, false>(xr + c * E);
        graw = ld_raw<B, true>(gr + c * E);
      }
      const float rq = pick(r, L::group(st, lane));
      gate_chunk_out<L, W, SHARED_W>(xraw, graw, rq, a.w, c0, c, orow);
    }
  }
}

// Staged forward: a persistent grid (gridDim.y = segments) whose warps double-buffer their items' x and gate rows in
// shared memory (cp.async), copying item i+1 while computing item i, so each warp always has an item in flight and
// the next one's loads never wait behind this one's math. Needs 16-byte chunks. Shared memory WARPS·4·SEG·d·sizeof(T).
template <int DIM, int G, int SEG, bool SHARED_W, int WARPS, typename T, typename W>
__global__ void __launch_bounds__(WARPS * 32) group_rms_norm_gate_fwd_staged_kernel(const GroupNormGateFwdArgs a) {
  using L = GateLayout<DIM, G, SEG, T>;
  static_assert(L::BYTES == 16, "staged forward: 16-byte chunks");
  constexpr int E = L::E, STEPS = L::STEPS, NC = L::NC, d = L::d, SEGC = L::SEGC;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int seg = blockIdx.y, c0 = seg * SEGC;
  T* buf = reinterpret_cast<T*>(smem_raw) + static_cast<i64>(warp) * 4 * SEGC;  // [stage][x | gate][SEGC]

  const i64 first = static_cast<i64>(blockIdx.x) * WARPS + warp, stride = static_cast<i64>(gridDim.x) * WARPS;
  auto issue = [&](i64 token, int st) {
    if (token < a.M) {
      i64 b, s;
      token_bs(a, token, b, s);
      const T* xr = static_cast<const T*>(a.x) + b * a.x_sb + s * a.x_ss + c0;
      const T* gr = static_cast<const T*>(a.gate) + b * a.g_sb + s * a.g_ss + c0;
      T* xs = buf + st * 2 * SEGC;
#pragma unroll 4
      for (int c = lane; c < NC; c += 32) {
        cp_async16(xs + c * E, xr + c * E, true);
        cp_async16(xs + SEGC + c * E, gr + c * E, true);
      }
    }
    cp_async_commit();
  };

  issue(first, 0);
  int stage = 0;
  for (i64 token = first; token < a.M; token += stride, stage ^= 1) {
    issue(token + stride, stage ^ 1);
    cp_async_wait_group<1>();
    __syncwarp();
    i64 b, s;
    token_bs(a, token, b, s);
    T* orow = static_cast<T*>(a.out) + b * a.o_sb + s * a.o_ss + c0;
    const T* xs = buf + stage * 2 * SEGC;
    const T* gs = xs + SEGC;

    float ss[SEG];
#pragma unroll
    for (int k = 0; k < SEG; ++k) ss[k] = 0.f;
#pragma unroll
    for (int st = 0; st < STEPS; ++st) {
      const int c = st * 32 + lane;
      if (c < NC) {
        add_chunk_sumsq<L>(ss, st, lane, lds16(xs + c * E));
      }
    }
    float r[SEG];
    group_rinv<L>(ss, r, a.eps);
#pragma unroll
    for (int st = 0; st < STEPS; ++st) {
      const int c = st * 32 + lane;
      if (c < NC) {
        const Raw<16> xraw = lds16(xs + c * E), graw = lds16(gs + c * E);
        const float rq = pick(r, L::group(st, lane));
        gate_chunk_out<L, W, SHARED_W>(xraw, graw, rq, a.w, c0, c, orow);
      }
    }
    __syncwarp();
  }
  cp_async_wait_group<0>();
}

// The backward's in-kernel dw reduction (FUSE; a cooperative launch): the partial rows [gridDim.x][DIM] the CTAs
// wrote are added by dw_reduce_fused exactly as dw_reduce_kernel<NOUT, FOLD> would add them (a shared weight folds
// the G groups onto d outputs).
template <int DIM, int G, bool SHARED_W, int NT>
__device__ __forceinline__ void gate_dw_reduce_fused(const GroupNormGateBwdArgs& a, u64* trace = nullptr) {
  const DwReduceArgs r{a.partial, a.dw, static_cast<int>(gridDim.x)};
  if constexpr (SHARED_W) dw_reduce_fused<DIM / G, G, float, NT>(r, trace);
  else dw_reduce_fused<DIM, 1, float, NT>(r, trace);
}

// Measurement helpers (GroupNormGateBwdArgs::trace).
__device__ __forceinline__ u64 gate_gtimer() {
  u64 t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
// clock64 that stays between the memory operations and barriers around it (the intrinsic may be moved across a
// __syncthreads: round 1's stamps after a CTA barrier read earlier than ones before it).
__device__ __forceinline__ u64 gate_clock() {
  u64 t;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(t)::"memory");
  return t;
}
__device__ __forceinline__ u32 gate_smid() {
  u32 sm;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  return sm;
}

// (b, s) of the token a RowWalker over walking order stands on (its divisor is B when seq_major, else S).
template <typename Args>
__device__ __forceinline__ void walker_bs(const Args& a, const RowWalker& w, i64& b, i64& s) {
  if (a.seq_major) {
    s = w.q;
    b = w.m;
  } else {
    b = w.q;
    s = w.m;
  }
}

// ---- backward: one warp item ---------------------------------------------------------------------------------
// The per-item step every backward kernel shares, so that they all compute dx and dgate with the same operations in
// the same order (the same bits; GPU test BackwardKernelsAgreeBitwise): for one (token, segment), lane l taking
// chunks st·32 + l,
//   pass 1: y·σ, Σx² and Σx·(y·σ·w) per group (the lane's partials added per group, then one butterfly per group);
//   r = 1/sqrt(Σx²/d + eps) and coef = (Q/d)·r³ per group ((Q/d)·r first: r³ alone underflows fp32 for groups of
//   rms ≳ 1e13);
//   pass 2: dx = r·t − coef·x, dgate = x·r·t·(1 − σ) stored to the item's rows, dw += x·r·y·σ for the lane's columns.
// Src gives a lane's chunk st of x, gate, dy (x/g/y(st, pass2)): registers, shared memory or global memory. Wgt fills
// the chunk's weights (wgt(st, chunk, w)). KSIG: y·σ and 1 − σ of pass 1 are kept for pass 2 (no second exp and
// reciprocal, gate and dy not read again). DWM, where dw accumulates: 0 in dwr[st][e] (dwr = fma(x·r, y·σ, dwr)),
// 1 added into the warp's shared-memory slice dws (SEG·d floats; dws += x·r·y·σ). STH: 0 store dx and dgate, 3 do
// not (a measurement ablation).
template <int DIM, int G, int SEG, bool KSIG, int DWM, int STH, typename T, typename Src, typename Wgt, int DS, int DE>
__device__ __forceinline__ void gate_bwd_item(const Src& src, const Wgt& wgt, float eps, int lane, T* dxr, T* dgr,
                                              float (&dwr)[DS][DE], float* dws) {
  using L = GateLayout<DIM, G, SEG, T>;
  constexpr int E = L::E, B = L::BYTES, STEPS = L::STEPS, NC = L::NC, d = L::d;
  constexpr bool DWREG = DWM == 0;
  static_assert(!DWREG || (DS == STEPS && DE == E), "dw registers: one per channel of the lane");
  static_assert(DWM == 0 || DWM == 1, "dw in registers or a shared-memory slice");
  float ss[SEG], Q[SEG];
  float ysv[KSIG ? STEPS : 1][KSIG ? E : 1], omv[KSIG ? STEPS : 1][KSIG ? E : 1];
#pragma unroll
  for (int q = 0; q < SEG; ++q) ss[q] = Q[q] = 0.f;
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {
    const int c = st * 32 + lane;
    if (NC % 32 == 0 || c < NC) {
      const Raw<B> xraw = src.x(st, false), graw = src.g(st, false), yraw = src.y(st, false);
      float w[E];
      wgt(st, c, w);
      float p_ss = 0.f, p_q = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float xf = raw_get<T>(xraw, e);
        float ys;
        if constexpr (KSIG) {
          const Sigmoid<T> sg(raw_get<T>(graw, e));
          ysv[st][e] = ys = raw_get<T>(yraw, e) * sg.s;
          omv[st][e] = sg.one_minus;
        } else {
          ys = raw_get<T>(yraw, e) * sigmoid<T>(raw_get<T>(graw, e));
        }
        p_ss = fmaf(xf, xf, p_ss);
        p_q = fmaf(xf, ys * w[e], p_q);
      }
      const int q = L::group(st, lane);
      add_at(ss, q, p_ss);
      add_at(Q, q, p_q);
    }
  }
  float r[SEG], coef[SEG];
#pragma unroll
  for (int q = 0; q < SEG; ++q) {
    r[q] = 1.0f / sqrtf(warp_sum(ss[q]) / static_cast<float>(d) + eps);
    coef[q] = (warp_sum(Q[q]) / static_cast<float>(d)) * r[q] * r[q] * r[q];
  }
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {
    const int c = st * 32 + lane;
    if (NC % 32 == 0 || c < NC) {
      const Raw<B> xraw = src.x(st, true);
      Raw<B> graw, yraw;
      if constexpr (!KSIG) graw = src.g(st, true), yraw = src.y(st, true);
      const int q = L::group(st, lane);
      const float rq = pick(r, q), cq = pick(coef, q);
      float w[E], dxo[E], dgo[E], acc[E];
      wgt(st, c, w);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float xf = raw_get<T>(xraw, e);
        float ys, om;
        if constexpr (KSIG) {
          ys = ysv[st][e];
          om = omv[st][e];
        } else {
          const Sigmoid<T> sg(raw_get<T>(graw, e));
          ys = raw_get<T>(yraw, e) * sg.s;
          om = sg.one_minus;
        }
        const float t = ys * w[e];
        const float n = xf * rq;
        dxo[e] = fmaf(rq, t, -cq * xf);
        dgo[e] = n * t * om;
        if constexpr (DWM == 0) dwr[st][e] = fmaf(n, ys, dwr[st][e]);
        else acc[e] = n * ys;
      }
      Raw<B> o1, o2;
      raw_fill<T>(o1, dxo);
      raw_fill<T>(o2, dgo);
      st_raw_hint<STH>(dxr + c * E, o1);
      st_raw_hint<STH>(dgr + c * E, o2);
      if constexpr (DWM == 1) smem_add<E>(dws + c * E, acc);
    }
  }
}

// Row sources of gate_bwd_item (a lane's chunk st; the pointers already point at the lane's first chunk).
// Registers (loaded before pass 1); pass 2 launders them so that the compiler re-unpacks the raw values instead of
// keeping pass 1's fp32 values alive.
template <int B, int STEPS>
struct GateRegRows {
  Raw<B> xv[STEPS], gv[STEPS], yv[STEPS];
  static __device__ __forceinline__ Raw<B> get(const Raw<B>& v, bool pass2) {
    Raw<B> r = v;
    if (pass2) launder(r);
    return r;
  }
  __device__ __forceinline__ Raw<B> x(int st, bool pass2) const { return get(xv[st], pass2); }
  __device__ __forceinline__ Raw<B> g(int st, bool pass2) const { return get(gv[st], pass2); }
  __device__ __forceinline__ Raw<B> y(int st, bool pass2) const { return get(yv[st], pass2); }
};
// Global memory, read in each pass (the second pass hits L1/L2).
template <int B, int E, typename T>
struct GateGlobalRows {
  const T *xr, *gr, *yr;
  __device__ __forceinline__ Raw<B> x(int st, bool) const { return ld_raw<B, false>(xr + st * 32 * E); }
  __device__ __forceinline__ Raw<B> g(int st, bool) const { return ld_raw<B, false>(gr + st * 32 * E); }
  __device__ __forceinline__ Raw<B> y(int st, bool) const { return ld_raw<B, false>(yr + st * 32 * E); }
};
// A ring slot in shared memory (16-byte chunks; volatile loads: the second pass re-reads).
template <int E, typename T>
struct GateSmemRows {
  const T *xs, *gs, *ys;
  __device__ __forceinline__ Raw<16> x(int st, bool) const { return lds16(xs + st * 32 * E); }
  __device__ __forceinline__ Raw<16> g(int st, bool) const { return lds16(gs + st * 32 * E); }
  __device__ __forceinline__ Raw<16> y(int st, bool) const { return lds16(ys + st * 32 * E); }
};
// Weights of gate_bwd_item: loaded per use (L1 hits), or kept in registers.
template <int E, int d, bool SHARED_W, typename W>
struct GateGlobalW {
  const void* w;
  int c0;  // the segment's first channel
  __device__ __forceinline__ void operator()(int, int c, float (&o)[E]) const {
    const int ch = c0 + c * E;
    load_f<W, E>(w, SHARED_W ? ch % d : ch, o);
  }
};
template <int STEPS, int E>
struct GateRegW {
  const float (*wk)[E];  // [STEPS][E]
  __device__ __forceinline__ void operator()(int st, int, float (&o)[E]) const {
#pragma unroll
    for (int e = 0; e < E; ++e) o[e] = wk[st][e];
  }
};

// ---- kept-rows backward --------------------------------------------------------------------------------------
// Persistent grid (gridDim.y = segments); dynamic shared memory WARPS·SEG·d floats. Registers capped at 128 (16 warps
// per SM). KEEP_ROWS: x, gate and dy stay in registers between the passes when they fit 48 registers per lane;
// otherwise (or when off) the second pass re-reads them (L1/L2 hits). KEEP_SIG (with kept rows of ≤ 16 channels per
// lane): y·σ and 1 − σ of the first pass are kept instead of gate and dy, so the second pass needs no exp and
// reciprocal (the SFU does 16 of each per clock per SM: 4 per element would be a third of the kernel's time) and no
// unpacking of dy. dw for the lane's columns accumulates in registers when a lane holds ≤ 32 channels (else in the
// warp's shared-memory slice); the warps' slices are added in warp order at the end. Tokens are walked with
// RowWalker (no division per token). Works for every chunk width and dtype: the fallback of the staged kernel.
template <int DIM, int G, int SEG, bool SHARED_W, int WARPS, bool KEEP_ROWS, bool KEEP_SIG, bool FUSE, typename T,
          typename W>
__global__ void __launch_bounds__(WARPS * 32, WARPS >= 16 ? 1 : 16 / WARPS) group_rms_norm_gate_bwd_kernel(
    const GroupNormGateBwdArgs a) {
  if constexpr (!FUSE) pdl_launch_dependents();  // dw_reduce_kernel (PDL) may be placed beside this grid; it waits
  using L = GateLayout<DIM, G, SEG, T>;
  constexpr int E = L::E, B = L::BYTES, STEPS = L::STEPS, NC = L::NC, d = L::d, SEGC = L::SEGC;
  constexpr bool KEEP = KEEP_ROWS && STEPS * 3 * B <= 192;
  constexpr bool KSIG = KEEP && KEEP_SIG && STEPS * E <= 16;
  constexpr bool DWREG = STEPS * E <= 32;
  extern __shared__ __align__(16) float dws[];  // [WARPS][SEGC]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int seg = blockIdx.y, c0 = seg * SEGC;
  float* dw = dws + warp * SEGC;
  if constexpr (!DWREG) {
    for (int i = lane; i < SEGC; i += 32) dw[i] = 0.f;
    __syncwarp();
  }
  float dwr[DWREG ? STEPS : 1][DWREG ? E : 1];
#pragma unroll
  for (int st = 0; st < (DWREG ? STEPS : 1); ++st)
#pragma unroll
    for (int e = 0; e < (DWREG ? E : 1); ++e) dwr[st][e] = 0.f;
  const GateGlobalW<E, d, SHARED_W, W> wgt{a.w, c0};

  // The CTA's tokens c, c + gridDim.x, … (counts differ by ≤ 1), warp w taking every WARPS-th of them.
  const CtaRows strip(a.M, warp, WARPS);
  RowWalker walk(strip, 0, a.seq_major ? a.B : a.S);
  for (int k = 0; k < strip.n; ++k, walk.next()) {
    i64 b, s;
    walker_bs(a, walk, b, s);
    const int l0 = lane * E;  // the lane's first chunk
    const T* xr = static_cast<const T*>(a.x) + b * a.x_sb + s * a.x_ss + c0 + l0;
    const T* gr = static_cast<const T*>(a.gate) + b * a.g_sb + s * a.g_ss + c0 + l0;
    const T* yr = static_cast<const T*>(a.dy) + b * a.dy_sb + s * a.dy_ss + c0 + l0;
    T* dxr = static_cast<T*>(a.dx) + b * a.dx_sb + s * a.dx_ss + c0;
    T* dgr = static_cast<T*>(a.dgate) + b * a.dg_sb + s * a.dg_ss + c0;
    if constexpr (KEEP) {
      GateRegRows<B, STEPS> rows;
#pragma unroll
      for (int st = 0; st < STEPS; ++st) {
        const int c = st * 32 + lane;
        if (c < NC) {
          rows.xv[st] = ld_raw<B, true>(xr + st * 32 * E);
          rows.gv[st] = ld_raw<B, true>(gr + st * 32 * E);
          rows.yv[st] = ld_raw<B, true>(yr + st * 32 * E);
        }
      }
      gate_bwd_item<DIM, G, SEG, KSIG, DWREG ? 0 : 1, 0, T>(rows, wgt, a.eps, lane, dxr, dgr, dwr, dw);
    } else {
      const GateGlobalRows<B, E, T> rows{xr, gr, yr};
      gate_bwd_item<DIM, G, SEG, false, DWREG ? 0 : 1, 0, T>(rows, wgt, a.eps, lane, dxr, dgr, dwr, dw);
    }
  }

  if constexpr (DWREG) {  // the warp's slice from its registers (every channel of the segment is some lane's)
#pragma unroll
    for (int st = 0; st < STEPS; ++st) {
      const int c = st * 32 + lane;
      if (c < NC)
#pragma unroll
        for (int e = 0; e < E; ++e) dw[c * E + e] = dwr[st][e];
    }
  }
  __syncthreads();
  dw_cta_partial<WARPS, WARPS * 32, SEGC % 4 == 0>(dws, SEGC, SEGC, a.partial + static_cast<i64>(blockIdx.x) * DIM + c0,
                                                   threadIdx.x);
  if constexpr (FUSE) gate_dw_reduce_fused<DIM, G, SHARED_W, WARPS * 32>(a);
}

// ---- staged backward -----------------------------------------------------------------------------------------
// The same math with the loads decoupled from the compute (kiln/row_pipe.cuh): a persistent grid (gridDim.y =
// segments) sized to the GPU; CTA (x, seg) takes tokens x, x + gridDim.x, … (CtaRows: counts differ by ≤ 1), warp w
// every WARPS-th of them; each warp streams its items' x, gate and dy rows through its own ring of DEPTH shared-memory
// slots (TMA bulk copies on sm_90, cp.async before), so DEPTH − 1 items per warp are in flight while it computes one.
// The copies use the default L2 policy (an evict-first policy measured 0.9 µs slower on the Ling shape in session 6).
// y·σ and 1 − σ of the first pass, and the lane's weights, stay in registers when a lane holds ≤ 16 channels (no
// second exp and reciprocal, no per-item weight loads); dw for the lane's columns lives in registers (STEPS·E ≤ 64).
// Tokens are walked with RowWalker. Needs 16-byte chunks. Shared memory: WARPS·DEPTH·(3·SEG·d·sizeof(T) + 8).
// HINTS (0 the default): bit 2 the input copies with an L2 evict-first policy (session 5's default, kept as a
// measured reference); measurement ablations with wrong results, never in the search space (ops/group_rms_norm_gate.cpp's
// forced-config path only): bits 0–1 = 3 no dx/dgate stores, bit 3 x streamed to dx and gate to dgate with no math,
// bit 6 CTAs that return at once (the launch's fixed cost).
template <int DIM, int G, int SEG, typename T>
struct GateStaged {
  using L = GateLayout<DIM, G, SEG, T>;
  static constexpr bool OK = L::BYTES == 16 && L::STEPS * L::E <= 64;
  static constexpr int PIECE = L::SEGC * static_cast<int>(sizeof(T));
  static constexpr int SLOT = 3 * PIECE;
};

template <int DIM, int G, int SEG, bool SHARED_W, int WARPS, int DEPTH, bool BULK, bool FUSE, int HINTS, typename T,
          typename W>
__global__ void __launch_bounds__(WARPS * 32, WARPS >= 16 ? 1 : 16 / WARPS)  // 16 warps per SM: ≤ 128 registers
    group_rms_norm_gate_bwd_staged_kernel(const GroupNormGateBwdArgs a) {
  if constexpr (!FUSE) pdl_launch_dependents();  // dw_reduce_kernel (PDL) may be placed beside this grid; it waits
  if constexpr ((HINTS & 64) != 0) return;        // measurement ablation: the launch alone
  using L = GateLayout<DIM, G, SEG, T>;
  static_assert(GateStaged<DIM, G, SEG, T>::OK, "staged backward: 16-byte chunks and dw in ≤ 64 registers");
  static_assert(DEPTH >= 2, "a ring of at least two slots");
#if __CUDA_ARCH__ < 900
  static_assert(!BULK, "TMA bulk copies need sm_90");
#endif
  constexpr int E = L::E, STEPS = L::STEPS, NC = L::NC, d = L::d, SEGC = L::SEGC;
  constexpr int PIECE = GateStaged<DIM, G, SEG, T>::PIECE, SLOT = GateStaged<DIM, G, SEG, T>::SLOT;
  constexpr bool KSIG = STEPS * E <= 16;  // y·σ and 1 − σ kept between the passes
  constexpr bool WREG = STEPS * E <= 16;  // the lane's weights kept in registers (else re-read per item, L1 hits)
  constexpr int STH = HINTS & 3;
  static_assert(STH == 0 || STH == 3, "stores: 0, or 3 (ablation: none)");
  static_assert(WARPS <= 16, "trace slots for 16 warps");
  extern __shared__ __align__(128) unsigned char smem_raw[];  // [WARPS][DEPTH][SLOT], then [WARPS][DEPTH] mbarriers
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int seg = blockIdx.y, c0 = seg * SEGC;
  u64* const trace =
      a.trace ? a.trace + static_cast<i64>(blockIdx.y * gridDim.x + blockIdx.x) * kGateTraceSlots : nullptr;
  u64 t0_ns = 0, t0_clk = 0;
  if (trace) t0_ns = gate_gtimer(), t0_clk = gate_clock();
  WarpRing<DEPTH, SLOT, BULK, (HINTS & 4) != 0> ring{
      smem_raw + warp * DEPTH * SLOT, reinterpret_cast<u64*>(smem_raw + WARPS * DEPTH * SLOT) + warp * DEPTH};
  ring.init(lane);

  const CtaRows strip(a.M, warp, WARPS);
  const int items = strip.n;  // this warp's tokens
  RowWalker iw(strip, 0, a.seq_major ? a.B : a.S), cw = iw;  // the tokens being issued / computed
  auto issue = [&](int k) {
    i64 b, s;
    walker_bs(a, iw, b, s);
    iw.next();
    const void* const src[3] = {static_cast<const T*>(a.x) + b * a.x_sb + s * a.x_ss + c0,
                                static_cast<const T*>(a.gate) + b * a.g_sb + s * a.g_ss + c0,
                                static_cast<const T*>(a.dy) + b * a.dy_sb + s * a.dy_ss + c0};
    ring.template issue<PIECE, 3>(k, k < items, src, lane);
  };
#pragma unroll
  for (int k = 0; k < DEPTH; ++k) issue(k);
  if (trace && threadIdx.x == 0) {
    trace[kGateTraceStartNs] = t0_ns;
    trace[kGateTraceStartClk] = t0_clk;
    trace[kGateTraceSm] = gate_smid();
    trace[kGateTraceItems] = static_cast<u64>(items);
  }
  u64* const tw = trace ? trace + kGateTraceWarp + warp * kGateTraceWarpSlots : nullptr;

  float dwr[STEPS][E];
#pragma unroll
  for (int st = 0; st < STEPS; ++st)
#pragma unroll
    for (int e = 0; e < E; ++e) dwr[st][e] = 0.f;
  float wk[WREG ? STEPS : 1][WREG ? E : 1];
  if constexpr (WREG) {
#pragma unroll
    for (int st = 0; st < STEPS; ++st) {
      const int c = st * 32 + lane;
      const int ch = c0 + c * E;
      if (NC % 32 == 0 || c < NC) load_f<W, E>(a.w, SHARED_W ? ch % d : ch, wk[st]);
    }
  }

  for (int k = 0; k < items; ++k) {
    ring.wait(k);
    if (tw && lane == 0) {  // measurement: the warp's progress
      const u64 t = gate_clock();
      if (k == 0) tw[0] = t;
      if (k == items / 4) tw[1] = t;
      if (k == items / 2) tw[2] = t;
      if (k == 3 * items / 4) tw[3] = t;
      if (k == items - 1) tw[5] = t;
    }
    i64 b, s;
    walker_bs(a, cw, b, s);
    cw.next();
    T* dxr = static_cast<T*>(a.dx) + b * a.dx_sb + s * a.dx_ss + c0;
    T* dgr = static_cast<T*>(a.dgate) + b * a.dg_sb + s * a.dg_ss + c0;
    const T* xs = reinterpret_cast<const T*>(ring.slot(k)) + lane * E;
    const GateSmemRows<E, T> rows{xs, xs + SEGC, xs + 2 * SEGC};
    if constexpr ((HINTS & 8) != 0) {  // ablation: the same bytes in and out, no math
#pragma unroll
      for (int st = 0; st < STEPS; ++st) {
        const int c = st * 32 + lane;
        if (NC % 32 == 0 || c < NC) {
          st_raw_hint<STH>(dxr + c * E, rows.x(st, false));
          st_raw_hint<STH>(dgr + c * E, rows.g(st, false));
        }
      }
    } else if constexpr (WREG) {
      gate_bwd_item<DIM, G, SEG, KSIG, 0, STH, T>(rows, GateRegW<STEPS, E>{wk}, a.eps, lane, dxr, dgr, dwr, nullptr);
    } else {
      gate_bwd_item<DIM, G, SEG, KSIG, 0, STH, T>(rows, GateGlobalW<E, d, SHARED_W, W>{a.w, c0}, a.eps, lane, dxr, dgr,
                                                  dwr, nullptr);
    }
    ring.release();
    issue(k + DEPTH);
  }
  ring.drain();
  if (tw && lane == 0) tw[4] = gate_clock();

  // CTA sum of the warps' dw in warp order, through the rings ([WARPS][SEGC] fp32 ≤ their size).
  __syncthreads();
  if (trace && threadIdx.x == 0) trace[kGateTraceStreamsDone] = gate_clock();
  float* red = reinterpret_cast<float*>(smem_raw);
  static_assert(WARPS * SEGC * 4 <= WARPS * DEPTH * SLOT, "the dw slices fit the rings");
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {
    const int c = st * 32 + lane;
    if (NC % 32 == 0 || c < NC)
#pragma unroll
      for (int e = 0; e < E; ++e) red[warp * SEGC + c * E + e] = dwr[st][e];
  }
  __syncthreads();
  dw_cta_partial<WARPS, WARPS * 32, SEGC % 4 == 0>(red, SEGC, SEGC, a.partial + static_cast<i64>(blockIdx.x) * DIM + c0,
                                                   threadIdx.x);
  if (trace && threadIdx.x == 0) trace[kGateTracePartial] = gate_clock();
  if constexpr (FUSE)
    gate_dw_reduce_fused<DIM, G, SHARED_W, WARPS * 32>(a, trace ? trace + kGateTraceBarrier : nullptr);
  if (trace && threadIdx.x == 0) {
    trace[kGateTraceEndClk] = gate_clock();
    trace[kGateTraceEndNs] = gate_gtimer();
  }
}

}  // namespace kiln
