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
#include "kiln/row_io.cuh"
#include "kiln/row_pipe.cuh"

namespace kiln {

template <int DIM, int G, int SEG, typename T>
struct GateLayout {
  static_assert(DIM % G == 0 && G % SEG == 0, "G divides DIM, SEG divides G");
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
__device__ __forceinline__ float ex2_ftz(float v) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
__device__ __forceinline__ float rcp_ftz(float v) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
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
      float part = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float f = raw_get<T>(xraw, e);
        part = fmaf(f, f, part);
      }
      add_at(ss, L::group(st, lane), part);
    }
  }
  float r[SEG];
#pragma unroll
  for (int k = 0; k < SEG; ++k) r[k] = 1.0f / sqrtf(warp_sum(ss[k]) / static_cast<float>(d) + a.eps);

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
      const int ch = c0 + c * E;  // channel of the chunk in the row
      float w[E], o[E];
      load_f<W, E>(a.w, SHARED_W ? ch % d : ch, w);
#pragma unroll
      for (int e = 0; e < E; ++e) o[e] = raw_get<T>(xraw, e) * rq * w[e] * sigmoid<T>(raw_get<T>(graw, e));
      Raw<B> out;
      raw_fill<T>(out, o);
      st_raw(orow + c * E, out);
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
    stage_commit();
  };

  issue(first, 0);
  int stage = 0;
  for (i64 token = first; token < a.M; token += stride, stage ^= 1) {
    issue(token + stride, stage ^ 1);
    cp_async_wait<1>();
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
        const Raw<16> xraw = lds16(xs + c * E);
        float part = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const float f = raw_get<T>(xraw, e);
          part = fmaf(f, f, part);
        }
        add_at(ss, L::group(st, lane), part);
      }
    }
    float r[SEG];
#pragma unroll
    for (int k = 0; k < SEG; ++k) r[k] = 1.0f / sqrtf(warp_sum(ss[k]) / static_cast<float>(d) + a.eps);
#pragma unroll
    for (int st = 0; st < STEPS; ++st) {
      const int c = st * 32 + lane;
      if (c < NC) {
        const Raw<16> xraw = lds16(xs + c * E), graw = lds16(gs + c * E);
        const float rq = pick(r, L::group(st, lane));
        const int ch = c0 + c * E;
        float w[E], o[E];
        load_f<W, E>(a.w, SHARED_W ? ch % d : ch, w);
#pragma unroll
        for (int e = 0; e < E; ++e) o[e] = raw_get<T>(xraw, e) * rq * w[e] * sigmoid<T>(raw_get<T>(graw, e));
        Raw<16> out;
        raw_fill<T>(out, o);
        st_raw(orow + c * E, out);
      }
    }
    __syncwarp();
  }
  cp_async_wait<0>();
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
// 1 added into the shared-memory slice dws (SEG·d floats; dws += x·r·y·σ), 2 the register path's fma on the slice
// dws instead (dws = fma(x·r, y·σ, dws): the same bits as 0 when a slice sees the same tokens in the same order),
// 3 the products x·r·y·σ stored to the global row dws (SEG·d floats; a stolen token's contribution, added by its
// owner: ops with stealing accumulate with mode 1 so that both paths round alike).
// before_pass2() runs between the group sums and pass 2 (the dynamic deal waits there for its slice). STH: 0 store dx
// and dgate, 3 do not (a measurement ablation).
struct GateNoWait {
  __device__ __forceinline__ void operator()() const {}
};
template <int DIM, int G, int SEG, bool KSIG, int DWM, int STH, typename T, typename Src, typename Wgt, int DS, int DE,
          typename Before2 = GateNoWait>
__device__ __forceinline__ void gate_bwd_item(const Src& src, const Wgt& wgt, float eps, int lane, T* dxr, T* dgr,
                                              float (&dwr)[DS][DE], float* dws, const Before2& before_pass2 = {}) {
  using L = GateLayout<DIM, G, SEG, T>;
  constexpr int E = L::E, B = L::BYTES, STEPS = L::STEPS, NC = L::NC, d = L::d;
  constexpr bool DWREG = DWM == 0;
  static_assert(!DWREG || (DS == STEPS && DE == E), "dw registers: one per channel of the lane");
  static_assert(DWM != 2 || E % 4 == 0, "the slice fma works on float4s");
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
  before_pass2();
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {
    const int c = st * 32 + lane;
    if (NC % 32 == 0 || c < NC) {
      const Raw<B> xraw = src.x(st, true);
      Raw<B> graw, yraw;
      if constexpr (!KSIG) graw = src.g(st, true), yraw = src.y(st, true);
      const int q = L::group(st, lane);
      const float rq = pick(r, q), cq = pick(coef, q);
      float w[E], dxo[E], dgo[E], acc[E], nv[E], ysv2[E];
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
        else if constexpr (DWM == 1 || DWM == 3) acc[e] = n * ys;
        else nv[e] = n, ysv2[e] = ys;
      }
      Raw<B> o1, o2;
      raw_fill<T>(o1, dxo);
      raw_fill<T>(o2, dgo);
      st_raw_hint<STH>(dxr + c * E, o1);
      st_raw_hint<STH>(dgr + c * E, o2);
      if constexpr (DWM == 1) smem_add<E>(dws + c * E, acc);
      if constexpr (DWM == 2) smem_fma2<E>(dws + c * E, nv, ysv2);
      if constexpr (DWM == 3) {
        static_assert(E % 4 == 0, "float4 stores");
#pragma unroll
        for (int q = 0; q < E; q += 4)
          *reinterpret_cast<float4*>(dws + c * E + q) = make_float4(acc[q], acc[q + 1], acc[q + 2], acc[q + 3]);
      }
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
// every WARPS-th of them; each warp streams its items' x, gate and dy
// rows through its own ring of DEPTH shared-memory slots (TMA bulk copies on sm_90, cp.async before), so DEPTH − 1
// items per warp are in flight while it computes one. y·σ and 1 − σ of the first pass, and the lane's weights, stay in
// registers when a lane holds ≤ 16 channels (no second exp and reciprocal, no per-item weight loads); dw for the
// lane's columns lives in registers (STEPS·E ≤ 64). Tokens are walked with RowWalker. Needs 16-byte chunks. Shared
// memory: WARPS·DEPTH·(3·SEG·d·sizeof(T) + 8), then (16-byte aligned) WARPS·(SEG·d + 1)·4 + 16 with the dynamic
// deal. HINTS (measured
// variants; 0 the default): bits 0–1 = 3 a measurement ablation without dx/dgate stores, bit 2 the
// input copies with an L2 evict-first policy (session 5's default; 0.9 µs slower in session 6's round 1: the copies
// use the default policy), bit 4 (host side) a ring of 4 slots, bit 5 the dynamic deal below,
// bit 7 rotated strips (below), bit 3 a measurement ablation that streams x to dx and gate to dgate with no math, bit
// 6 one whose CTAs return at
// once (the launch's fixed cost) (wrong results: never in the search space; ops/group_rms_norm_gate.cpp's
// forced-config path only).
//
// Dynamic deal (bit 5): the CTA's tokens j = 0 … n − 1 (token x + j·gridDim.x) go to its warps at run time — each
// warp's first DEPTH items are j = w, w + WARPS, … as in the static deal, every later one is claimed from a
// shared-memory counter when the warp refills the ring slot it just computed — so the warps of a CTA finish within
// about one item of each other instead of one warp in two doing a last round alone. dw stays bit-identical to the
// static deal: token j's contribution goes to the shared-memory slice j mod WARPS (the slice warp j mod WARPS of the
// static deal accumulates in registers) with the same fma, in increasing j — a warp waits, before its second pass,
// until its slice holds every earlier token of the slice (seq[v]; the smallest pending token's predecessor is always
// done, so this cannot deadlock) — and the slices are added in slice order as before.
//
// Stealing (bit 8, with the dynamic deal and the in-kernel reduction): SMs are served at systematically different
// rates (session 6's timeline: CTAs done between 28 and 55 µs), so a CTA whose own tokens run out takes the last ones
// of the strip of its segment with the most left. A strip's claim word holds the owner's next token f (low half) and
// the steals tried s (high half): the owner takes f while f < n − min(s, KS), a thief n − 1 − s while s < KS and
// f + s < n, each with one atomic add on the word, so own and stolen tokens partition the strip ([0, n − S) and
// [n − S, n)). The words and flags are set by their owner before a start barrier (arrive only; a thief waits for it
// before its first steal, long after). dw stays deterministic: every token's contribution is the rounded product
// x·r·y·σ added to its slice (mode 1; not the fma of the static deal: other bits than hints 0, the same in every
// run), a thief stores a stolen token's products to the owner's row (KS rows of SEG·d floats a strip) and sets its
// flag, and the owner adds them after its own, in token order.
//
// Rotated strips (bit 7): CTA (x, seg) takes token strip (x + seg·(M mod X)) mod X (X = gridDim.x) and writes its dw
// row there, so the strips with one token more (the first M mod X) fall on different x for different segments: with
// the CTAs x and x + NCTA/2 on one SM (the block scheduler's first wave), no SM gets two of them (Ling-mini: 250
// items on 16 SMs → at most 249). The same partial rows, the same bits.
template <int DIM, int G, int SEG, typename T>
struct GateStaged {
  using L = GateLayout<DIM, G, SEG, T>;
  static constexpr bool OK = L::BYTES == 16 && L::STEPS * L::E <= 64;
  static constexpr int PIECE = L::SEGC * static_cast<int>(sizeof(T));
  static constexpr int SLOT = 3 * PIECE;
};

template <int V>
struct GateInt {
  static constexpr int value = V;
};

// (b, s) of walking-order token t < 2³¹ (one 32-bit division).
template <typename Args>
__device__ __forceinline__ void token_bs32(const Args& a, u32 t, i64& b, i64& s) {
  const u32 D = static_cast<u32>(a.seq_major ? a.B : a.S), q = t / D, m = t - q * D;
  if (a.seq_major) s = q, b = m;
  else b = q, s = m;
}

__device__ __forceinline__ int ld_acquire_cta(const int* p) {
  int v;
  asm volatile("ld.acquire.cta.shared.b32 %0, [%1];" : "=r"(v) : "r"(pipe_smem_u32(p)) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_cta(int* p, int v) {
  asm volatile("st.release.cta.shared.b32 [%0], %1;" ::"r"(pipe_smem_u32(p)), "r"(v) : "memory");
}
// A spin-wait's guard: traps (failing the launch) once a wait has lasted 2 s instead of hanging the GPU (a wait here
// normally ends within microseconds; never, only through a bug). Call once per iteration with zero-initialized state.
struct GateSpinGuard {
  u64 t0 = 0;
  u32 n = 0;
  __device__ __forceinline__ void tick() {
    if ((n++ & 1023u) == 0) {
      u64 t;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
      if (t0 == 0) t0 = t;
      else if (t - t0 > 2000000000ull) __trap();
    }
  }
};
__device__ __forceinline__ u32 ld_acquire_gpu(const u32* p) {
  u32 v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ u64 ld_relaxed_gpu(const u64* p) {
  u64 v;
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_gpu(u32* p, u32 v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ float4 ld_cg_f4(const float* p) {
  float4 v;
  asm volatile("ld.global.cg.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
  return v;
}

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
  constexpr bool DYN = (HINTS & 32) != 0;
  constexpr bool STEAL = (HINTS & 256) != 0;
  static_assert(!STEAL || (!DYN && FUSE && BULK), "stealing: the static deal, the cooperative launch, TMA rings");
  constexpr int KS = kGateStealMax;
  static_assert(WARPS <= 16, "trace slots for 16 warps");
  // [WARPS][DEPTH][SLOT], then [WARPS][DEPTH] mbarriers; DYN: then [WARPS][SEGC] fp32 dw slices, seq[WARPS], next.
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int seg = blockIdx.y, c0 = seg * SEGC;
  u64* const trace =
      a.trace ? a.trace + static_cast<i64>(blockIdx.y * gridDim.x + blockIdx.x) * kGateTraceSlots : nullptr;
  u64 t0_ns = 0, t0_clk = 0;
  if (trace) t0_ns = gate_gtimer(), t0_clk = gate_clock();
  WarpRing<DEPTH, SLOT, BULK, (HINTS & 4) != 0> ring{
      smem_raw + warp * DEPTH * SLOT, reinterpret_cast<u64*>(smem_raw + WARPS * DEPTH * SLOT) + warp * DEPTH};
  ring.init(lane);
  float* const slices = reinterpret_cast<float*>(smem_raw + (WARPS * DEPTH * (SLOT + 8) + 15) / 16 * 16);  // DYN
  int* const seq = reinterpret_cast<int*>(slices + (STEAL ? KS : WARPS) * SEGC);  // STEAL: slices = pool rows
  int* const next = seq + WARPS;
  int* const own = next + 1;                               // STEAL: own tokens computed
  u32* const start_token = reinterpret_cast<u32*>(own + 1);  // STEAL: the start barrier's arrival token

  // The item's x, gate, dy rows of walking-order token (b, s) into ring slot k (nothing when !valid).
  auto issue_bs = [&](int k, bool valid, i64 b, i64 s) {
    const void* const src[3] = {static_cast<const T*>(a.x) + b * a.x_sb + s * a.x_ss + c0,
                                static_cast<const T*>(a.gate) + b * a.g_sb + s * a.g_ss + c0,
                                static_cast<const T*>(a.dy) + b * a.dy_sb + s * a.dy_ss + c0};
    ring.template issue<PIECE, 3>(k, valid, src, lane);
  };
  const u32 gx = gridDim.x;
  u32 cx = blockIdx.x;  // the CTA's token strip (rotated: see above)
  if constexpr ((HINTS & 128) != 0) cx = (cx + blockIdx.y * (static_cast<u32>(a.M) % gx)) % gx;
  const CtaRows strip(a.M, DYN ? 0 : warp, DYN ? 1 : WARPS, cx);  // DYN: all of the CTA's tokens
  const int items = strip.n;  // this warp's tokens (DYN: the CTA's)
  RowWalker iw(strip, 0, a.seq_major ? a.B : a.S), cw = iw;  // static deal: the tokens being issued / computed
  auto issue_t = [&](int k, int j, u32 strip_of) {  // DYN: token j (< 0: none) of strip `strip_of`
    i64 b = 0, s = 0;
    if (j >= 0) token_bs32(a, strip_of + static_cast<u32>(j) * gx, b, s);
    issue_bs(k, j >= 0, b, s);
  };
  // STEAL: [gridDim.y][gridDim.x] claim words {low 32: the owner's next token f, high 32: steals tried s}, then
  // [gridDim.y][gridDim.x][KS] flags, then (16-byte aligned) [gridDim.y][gridDim.x][KS][SEGC] products.
  const u32 nstrips = gridDim.y * gx;
  u64* const words = static_cast<u64*>(a.steal);
  u32* const flags = reinterpret_cast<u32*>(words + nstrips);
  float* const pbuf = reinterpret_cast<float*>(
      reinterpret_cast<unsigned char*>(a.steal) + (static_cast<u64>(nstrips) * (8 + 4 * KS) + 15) / 16 * 16);
  const u32 row0 = blockIdx.y * gx;  // this segment's strips
  auto strip_tokens = [&](u32 v) -> int {
    const u32 m = static_cast<u32>(a.M);
    return v < m ? static_cast<int>((m - 1 - v) / gx + 1) : 0;
  };
  const int ncta = strip_tokens(cx), nstat = ncta > KS ? ncta - KS : 0;  // STEAL: this strip; its static part
  const int mine = warp < nstat ? (nstat - 1 - warp) / WARPS + 1 : 0;   // STEAL: this warp's static tokens
  int tok[DEPTH];  // DYN: the token index (in strip tvic) of the item in ring position u (< 0: none)
  int tsid[DEPTH];  // STEAL: −1 for this CTA's token, else the steal index at the victim tvic
  u32 tvic[DEPTH];
  if constexpr (DYN) {
#pragma unroll
    for (int u = 0; u < DEPTH; ++u) {
      tok[u] = warp + u * WARPS < items ? warp + u * WARPS : -1;
      tsid[u] = -1;
      tvic[u] = cx;
      issue_t(u, tok[u], cx);
    }
  } else {
#pragma unroll
    for (int k = 0; k < DEPTH; ++k) {
      i64 b, s;
      walker_bs(a, iw, b, s);
      iw.next();
      issue_bs(k, k < (STEAL ? mine : items), b, s);
    }
  }
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
  if constexpr (DYN || STEAL) {
    if constexpr (DYN) {
      for (int i = threadIdx.x; i < WARPS * SEGC; i += WARPS * 32) slices[i] = 0.f;
      if (threadIdx.x < WARPS) seq[threadIdx.x] = 0;
      if (threadIdx.x == 0) *next = WARPS * DEPTH;
    }
    if constexpr (STEAL) {
      // This CTA's claim word and flags, published by the start barrier before any other CTA may steal here.
      if (threadIdx.x == 0) {
        words[row0 + cx] = static_cast<u64>(nstat);
        *own = 0;
      }
      if (threadIdx.x < KS) flags[(row0 + cx) * KS + threadIdx.x] = 0u;
      const u32 t = grid_barrier_arrive();  // CTA barrier, then thread 0's release arrival
      if (threadIdx.x == 0) *start_token = t;
    }
    __syncthreads();
  }

  // One item: ring slot k holds token (b, s); DWM (a GateInt) 0 registers, 1 / 2 slice dws (after before_pass2()),
  // 3 products to the global row dws.
  auto compute = [&](auto dwm, int k, i64 b, i64 s, float* dws, const auto& before_pass2) {
    T* dxr = static_cast<T*>(a.dx) + b * a.dx_sb + s * a.dx_ss + c0;
    T* dgr = static_cast<T*>(a.dgate) + b * a.dg_sb + s * a.dg_ss + c0;
    const T* xs = reinterpret_cast<const T*>(ring.slot(k)) + lane * E;
    const GateSmemRows<E, T> rows{xs, xs + SEGC, xs + 2 * SEGC};
    constexpr int DWM = decltype(dwm)::value;
    if constexpr ((HINTS & 8) != 0) {  // ablation: the same bytes in and out, no math
      before_pass2();
#pragma unroll
      for (int st = 0; st < STEPS; ++st) {
        const int c = st * 32 + lane;
        if (NC % 32 == 0 || c < NC) {
          st_raw_hint<STH>(dxr + c * E, rows.x(st, false));
          st_raw_hint<STH>(dgr + c * E, rows.g(st, false));
        }
      }
    } else if constexpr (WREG) {
      gate_bwd_item<DIM, G, SEG, KSIG, DWM, STH, T>(rows, GateRegW<STEPS, E>{wk}, a.eps, lane, dxr, dgr, dwr, dws,
                                                    before_pass2);
    } else {
      gate_bwd_item<DIM, G, SEG, KSIG, DWM, STH, T>(rows, GateGlobalW<E, d, SHARED_W, W>{a.w, c0}, a.eps, lane, dxr,
                                                    dgr, dwr, dws, before_pass2);
    }
  };

  if constexpr (!DYN && !STEAL) {
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
      compute(GateInt<0>{}, k, b, s, nullptr, GateNoWait{});
      ring.release();
      i64 nb, ns;
      walker_bs(a, iw, nb, ns);
      iw.next();
      issue_bs(k + DEPTH, k + DEPTH < items, nb, ns);
    }
  } else if constexpr (STEAL) {
    // Positions k < mine: the warp's static tokens (registers, as without stealing); then claims: this strip's pool
    // (front) while it lasts, then stolen tokens of other strips (back). pj < 0: no token (claims fail for good).
    int pj[DEPTH], psid[DEPTH];
    u32 pvic[DEPTH];
    bool thief = false, started = false;
    auto steal = [&](int& sj, int& ssid, u32& svic) -> bool {
      if (!started) {  // the start barrier: every claim word of this launch is set
        if (lane == 0) {
          const u32 t0 = *reinterpret_cast<volatile u32*>(start_token);
          const u32* word = grid_barrier_word();
          u32 cur;
          GateSpinGuard guard;
          do {
            guard.tick();
            asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(cur) : "l"(word) : "memory");
          } while (((t0 ^ cur) & 0x80000000u) == 0);
        }
        __syncwarp();
        started = true;
      }
      for (;;) {
        int best = 0;
        u32 bv = 0;
        for (u32 v = lane; v < gx; v += 32) {
          const u64 w = ld_relaxed_gpu(words + row0 + v);
          const u32 f = static_cast<u32>(w), sc = static_cast<u32>(w >> 32);
          const int n = strip_tokens(v);
          const int avail = sc < static_cast<u32>(KS) && static_cast<i64>(f) + sc < n
                                ? min(KS - static_cast<int>(sc), n - static_cast<int>(f + sc))
                                : 0;
          if (avail > best) best = avail, bv = v;
        }
#pragma unroll
        for (int o = 16; o; o >>= 1) {
          const int ob = __shfl_xor_sync(0xffffffffu, best, o);
          const u32 ov = __shfl_xor_sync(0xffffffffu, bv, o);
          if (ob > best || (ob == best && ov < bv)) best = ob, bv = ov;
        }
        if (best == 0) return false;
        unsigned long long old = 0;
        if (lane == 0) old = atomicAdd(reinterpret_cast<unsigned long long*>(words + row0 + bv), 1ull << 32);
        old = __shfl_sync(0xffffffffu, old, 0);
        const u32 f = static_cast<u32>(old), sc = static_cast<u32>(old >> 32);
        const int n = strip_tokens(bv);
        if (sc < static_cast<u32>(KS) && static_cast<i64>(f) + sc < n) {
          sj = n - 1 - static_cast<int>(sc);
          ssid = static_cast<int>(sc);
          svic = bv;
          return true;
        }
      }
    };
    // The claim for a position past the static ones: own pool token (from `pend`, an atomic on this strip's word
    // issued earlier, or now), else a stolen one.
    auto claim = [&](unsigned long long pend, bool have, int& cj, int& csid, u32& cvic) {
      cj = -1, csid = -1, cvic = cx;
      if (!thief) {
        if (!have && lane == 0) pend = atomicAdd(reinterpret_cast<unsigned long long*>(words + row0 + cx), 1ull);
        pend = __shfl_sync(0xffffffffu, pend, 0);
        const u32 f = static_cast<u32>(pend), sc = static_cast<u32>(pend >> 32);
        if (static_cast<i64>(f) < ncta - static_cast<i64>(min(sc, static_cast<u32>(KS)))) cj = static_cast<int>(f);
        else thief = true;
      }
      if (thief) {
        int sj = -1, ss = -1;
        u32 sv = 0;
        if (steal(sj, ss, sv)) cj = sj, csid = ss, cvic = sv;
      }
    };
    // Ring positions issued before the claim word was set (a warp with fewer static tokens than DEPTH).
    for (int k = 0; k < DEPTH; ++k) {
      if (k < mine) {
        pj[k] = 0, psid[k] = -1, pvic[k] = cx;
      } else {
        claim(0ull, false, pj[k], psid[k], pvic[k]);
        issue_t(k, pj[k], pvic[k]);
      }
    }
    for (int k = 0;; ++k) {
      const int u = k % DEPTH;
      if (pj[u] < 0) break;
      const bool next_claimed = k + DEPTH >= mine;
      unsigned long long pend = 0;  // the next own claim, in flight under this item's compute
      if (next_claimed && !thief && lane == 0)
        pend = atomicAdd(reinterpret_cast<unsigned long long*>(words + row0 + cx), 1ull);
      ring.wait(k);
      if (tw && lane == 0) {
        const u64 t = gate_clock();
        if (k == 0) tw[0] = t;
        if (k == mine / 4) tw[1] = t;
        if (k == mine / 2) tw[2] = t;
        if (k == 3 * mine / 4) tw[3] = t;
        tw[5] = t;
      }
      i64 b, s;
      if (k < mine) {
        walker_bs(a, cw, b, s);
        cw.next();
        compute(GateInt<0>{}, k, b, s, nullptr, GateNoWait{});
      } else {
        token_bs32(a, pvic[u] + static_cast<u32>(pj[u]) * gx, b, s);
        if (psid[u] < 0) {  // this strip's pool: the products to its shared-memory row
          compute(GateInt<3>{}, k, b, s, slices + (pj[u] - nstat) * SEGC, GateNoWait{});
          if (lane == 0) atomicAdd(own, 1);
        } else {  // stolen: the products to the victim's row, then its flag
          compute(GateInt<3>{}, k, b, s, pbuf + (static_cast<u64>(row0 + pvic[u]) * KS + psid[u]) * SEGC,
                  GateNoWait{});
          __syncwarp();
          if (lane == 0) {
            __threadfence();
            st_release_gpu(flags + (row0 + pvic[u]) * KS + psid[u], 1u);
          }
        }
      }
      ring.release();
      if (!next_claimed) {
        i64 nb, ns;
        walker_bs(a, iw, nb, ns);
        iw.next();
        pj[u] = 0;
        issue_bs(k + DEPTH, true, nb, ns);
      } else {
        claim(pend, !thief, pj[u], psid[u], pvic[u]);
        issue_t(k + DEPTH, pj[u], pvic[u]);
      }
    }
  } else {
    int marks = 0;  // trace: which progress marks this warp has written
    bool more = true;
    bool thief = false, started = false;  // STEAL: this warp's own claims ran out; it has seen the start barrier
    // STEAL: one token stolen from the strip of this segment with the most stealable tokens left (false: none left
    // anywhere — stealable tokens only ever decrease). Waits once for the start barrier (every claim word set).
    auto steal = [&](int& sj, int& ssid, u32& svic) -> bool {
      if (!started) {
        if (lane == 0) {
          const u32 t0 = *reinterpret_cast<volatile u32*>(start_token);
          const u32* word = grid_barrier_word();
          u32 cur;
          GateSpinGuard guard;
          do {
            guard.tick();
            asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(cur) : "l"(word) : "memory");
          } while (((t0 ^ cur) & 0x80000000u) == 0);
        }
        __syncwarp();
        started = true;
      }
      for (;;) {
        int best = 0;
        u32 bv = 0;
        for (u32 v = lane; v < gx; v += 32) {
          const u64 w = ld_relaxed_gpu(words + row0 + v);
          const u32 f = static_cast<u32>(w), sc = static_cast<u32>(w >> 32);
          const int n = strip_tokens(v);
          const int avail = sc < static_cast<u32>(KS) && static_cast<i64>(f) + sc < n
                                ? min(KS - static_cast<int>(sc), n - static_cast<int>(f + sc))
                                : 0;
          if (avail > best) best = avail, bv = v;
        }
#pragma unroll
        for (int o = 16; o; o >>= 1) {
          const int ob = __shfl_xor_sync(0xffffffffu, best, o);
          const u32 ov = __shfl_xor_sync(0xffffffffu, bv, o);
          if (ob > best || (ob == best && ov < bv)) best = ob, bv = ov;
        }
        if (best == 0) return false;
        unsigned long long old = 0;
        if (lane == 0) old = atomicAdd(reinterpret_cast<unsigned long long*>(words + row0 + bv), 1ull << 32);
        old = __shfl_sync(0xffffffffu, old, 0);
        const u32 f = static_cast<u32>(old), sc = static_cast<u32>(old >> 32);
        const int n = strip_tokens(bv);
        if (sc < static_cast<u32>(KS) && static_cast<i64>(f) + sc < n) {
          sj = n - 1 - static_cast<int>(sc);
          ssid = static_cast<int>(sc);
          svic = bv;
          return true;
        }
      }
    };
    for (int k0 = 0; more; k0 += DEPTH) {
#pragma unroll
      for (int u = 0; u < DEPTH; ++u) {
        const int j = tok[u];
        if (more && j < 0) more = false;  // claims fail for good once they fail: none valid after this one
        if (more) {
          const int k = k0 + u;
          const int sid = tsid[u];
          const u32 vic = tvic[u];
          unsigned long long pend = 0;  // STEAL: the next own claim, in flight under this item's compute
          if constexpr (STEAL)
            if (!thief && lane == 0) pend = atomicAdd(reinterpret_cast<unsigned long long*>(words + row0 + cx), 1ull);
          ring.wait(k);
          if (tw && lane == 0) {
            const u64 t = gate_clock();
#pragma unroll
            for (int q = 0; q < 4; ++q)
              if (!(marks >> q & 1) && j >= q * items / 4) tw[q] = t, marks |= 1 << q;
            tw[5] = t;  // the last write: the warp's last item
          }
          i64 b, s;
          token_bs32(a, vic + static_cast<u32>(j) * gx, b, s);
          if (STEAL && sid >= 0) {  // a stolen token: its products to the victim's row, then the row's flag
            compute(GateInt<3>{}, k, b, s, pbuf + (static_cast<u64>(row0 + vic) * KS + sid) * SEGC, GateNoWait{});
            __syncwarp();
            if (lane == 0) {
              __threadfence();
              st_release_gpu(flags + (row0 + vic) * KS + sid, 1u);
            }
          } else {
            const int v = j % WARPS, round = j / WARPS;
            compute(GateInt<STEAL ? 1 : 2>{}, k, b, s, slices + v * SEGC, [&] {  // slice v: tokens v, v + WARPS, … < j
              if (lane == 0) {
                GateSpinGuard guard;
                while (ld_acquire_cta(seq + v) != round) guard.tick();
              }
              __syncwarp();
            });
            __syncwarp();
            if (lane == 0) {
              st_release_cta(seq + v, round + 1);
              if constexpr (STEAL) atomicAdd(own, 1);
            }
          }
          ring.release();
          int nj = -1, nsid = -1;
          u32 nvic = cx;
          if constexpr (STEAL) {
            if (!thief) {
              pend = __shfl_sync(0xffffffffu, pend, 0);
              const u32 f = static_cast<u32>(pend), sc = static_cast<u32>(pend >> 32);
              if (static_cast<i64>(f) < items - static_cast<i64>(min(sc, static_cast<u32>(KS)))) nj = static_cast<int>(f);
              else thief = true;
            }
            if (thief) {
              int sj = -1, ss = -1;
              u32 sv = 0;
              if (steal(sj, ss, sv)) nj = sj, nsid = ss, nvic = sv;
            }
          } else {
            int c = 0;
            if (lane == 0) c = atomicAdd(next, 1);
            c = __shfl_sync(0xffffffffu, c, 0);
            nj = c < items ? c : -1;
          }
          tok[u] = nj;
          tsid[u] = nsid;
          tvic[u] = nvic;
          issue_t(k + DEPTH, nj, nvic);
        }
      }
    }
  }
  ring.drain();
  if (tw && lane == 0) tw[4] = gate_clock();

  // CTA sum of the warps' (DYN: the slices') dw in order, through the rings ([WARPS][SEGC] fp32 ≤ their size).
  __syncthreads();
  if (trace && threadIdx.x == 0) trace[kGateTraceStreamsDone] = gate_clock();
  if constexpr (STEAL) {
    // The pool tokens (the strip's last KS) join the register sums after the static ones, in token order — the
    // products the owner's warps stored in shared memory, or those a thief stored (published by its flag) for the
    // last S that were stolen: warp w takes the tokens ≡ w (mod WARPS), as its static deal did.
    const int S = ncta - nstat - *reinterpret_cast<volatile int*>(own);
    for (int j = nstat + (warp - nstat % WARPS + WARPS) % WARPS; j < ncta; j += WARPS) {
      const bool stolen = j >= ncta - S;
      const int sid = ncta - 1 - j;
      if (stolen && lane == 0) {
        GateSpinGuard guard;
        while (ld_acquire_gpu(flags + (row0 + cx) * KS + sid) == 0u) guard.tick();
      }
      __syncwarp();
      const float* p = stolen ? pbuf + (static_cast<u64>(row0 + cx) * KS + sid) * SEGC : slices + (j - nstat) * SEGC;
#pragma unroll
      for (int st = 0; st < STEPS; ++st) {
        const int c = st * 32 + lane;
        if (NC % 32 == 0 || c < NC) {
#pragma unroll
          for (int q = 0; q < E; q += 4) {
            const float4 t = stolen ? ld_cg_f4(p + c * E + q) : *reinterpret_cast<const float4*>(p + c * E + q);
            dwr[st][q] += t.x, dwr[st][q + 1] += t.y, dwr[st][q + 2] += t.z, dwr[st][q + 3] += t.w;
          }
        }
      }
    }
  }
  float* red = DYN ? slices : reinterpret_cast<float*>(smem_raw);
  static_assert(WARPS * SEGC * 4 <= WARPS * DEPTH * SLOT, "the dw slices fit the rings");
  if constexpr (!DYN) {
#pragma unroll
    for (int st = 0; st < STEPS; ++st) {
      const int c = st * 32 + lane;
      if (NC % 32 == 0 || c < NC)
#pragma unroll
        for (int e = 0; e < E; ++e) red[warp * SEGC + c * E + e] = dwr[st][e];
    }
    __syncthreads();
  }
  dw_cta_partial<WARPS, WARPS * 32, SEGC % 4 == 0>(red, SEGC, SEGC, a.partial + static_cast<i64>(cx) * DIM + c0,
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
