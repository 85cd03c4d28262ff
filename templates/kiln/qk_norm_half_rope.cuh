// kiln/qk_norm_half_rope.cuh — split qkv, per-head RMSNorm of q and k, rotate-half RoPE on the first D/2 channels,
// transpose to [B, S, heads, D] (forward), and its exact adjoint (backward). Spec: linghe-kernels.md §4, §14.8.
//
//   per (s, b, q/k head):  r = 1/sqrt(Σ_{c<D} t_c²/D + eps)  (fp32),  n_c = t_c·r·w_c
//     for j < Q = D/4:  out_j   = n_j·cos f_j     − n_{j+Q}·sin f_j
//                       out_j+Q = n_{j+Q}·cos f_{j+Q} + n_j·sin f_{j+Q}       (f = freqs[pos], angle of the output channel)
//     for D/2 ≤ c < D:  out_c = n_c;            v heads: copied
//   backward (g = gradient of out):  g'_j = g_j·cos f_j + g_{j+Q}·sin f_{j+Q},  g'_{j+Q} = g_{j+Q}·cos f_{j+Q} − g_j·sin f_j
//     P = Σ_c t_c·g'_c·w_c,  dt_c = r·g'_c·w_c − (r³/D)·t_c·P,  dw_c = Σ_{rows, heads} t_c·r·g'_c,  dv = gv
//
// Work mapping. A head of D 16-bit values is D/8 16-byte chunks; LH = D/16 lanes own one head, two chunks each:
// lane l takes chunk l of the rotated half [0, D/2) and chunk l + LH of the unrotated half. So each of a warp's
// 16-byte loads and stores covers whole 128-byte lines (D ≥ 128) or whole heads, the head's sums need log2(LH)
// shuffles, and the rotation pairs lane l with lane l ^ LH/2 (channel j < D/4 with j + D/4): 8 shuffles per head.
// A warp owns 32/LH rows (s, b) and walks the H + 2h head slots of its rows in qkv order through a register ring of
// BATCH slots (a slot's entry is refilled as soon as it is processed, so loads stay in flight); each slot is written
// to its [B, S, heads, D] place (contiguous heads, so the transposed writes stay coalesced). cos and ±sin of a lane's
// 8 rotated channels are computed once per row (sincosf, accurate for large angles) into the lane's private slots of
// a shared-memory table (no register arrays indexed in a loop) and read back per q/k head; the norm weights are
// staged once per CTA in shared memory.
// Backward: a persistent grid; each CTA accumulates dq_w/dk_w for its rows in registers (fixed order), reduces its
// warps through shared memory in warp order, and writes one partial per CTA; a second kernel sums the partials in CTA
// order. The result is deterministic (no float atomics) and costs no second pass over the data.
#pragma once
#include "kiln/common.cuh"
#include "kiln/dw_reduce.cuh"
#include "kiln/ptx.cuh"
#include "kiln/qk_norm_half_rope_args.h"

namespace kiln {

// Head slot j of a qkv row → kind (0 q, 1 k, 2 v) and head index. Interleaved (Megatron linear_qkv): h groups of
// [H/h query heads, key, value]; otherwise [H q | h k | h v].
template <int H, int HG, bool IL>
__device__ __forceinline__ void qkv_slot(int j, int& kind, int& idx) {
  if constexpr (IL) {
    constexpr int W = H / HG;
    const int g = j / (W + 2), p = j - g * (W + 2);
    kind = p < W ? 0 : (p == W ? 1 : 2);
    idx = p < W ? g * W + p : g;
  } else {
    kind = j < H ? 0 : (j < H + HG ? 1 : 2);
    idx = j < H ? j : (j < H + HG ? j - H : j - H - HG);
  }
}

template <bool V> struct QkBool { static constexpr bool value = V; };

// 1/sqrt(x) for the norm: the approximate reciprocal square root (≤ 2 ulp; the outputs are 16-bit), as linghe HEAD
// (tl.rsqrt). IEEE sqrt + division would cost ~20 more instructions per head.
__device__ __forceinline__ float qk_rms_inv(float x) { return rsqrtf(x); }

__device__ __forceinline__ Vec16 zero16() {
  Vec16 v;
  v.w[0] = v.w[1] = v.w[2] = v.w[3] = 0u;
  return v;
}

// The rotary position of row s (see QkRopePositions); -1 when it has no row in the table.
__device__ __forceinline__ long long qk_rope_position(const QkRopePositions& p, int s) {
  long long start = 0;
  if (p.cu_seqlens) {
    int lo = 0, hi = p.num_seqs;  // the last i in [0, num_seqs] with cu_seqlens[i] ≤ s
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (__ldg(p.cu_seqlens + mid) <= s) lo = mid;
      else hi = mid - 1;
    }
    start = __ldg(p.cu_seqlens + lo);
  }
  const long long pos = p.pos_offset + s - start;
  return pos >= 0 && pos < p.freqs_rows ? pos : -1;
}

// A lane's rotary coefficients for its current row, in shared memory private to the lane: entries [0], [1] hold cos of
// its 8 rotated channels, [2], [3] the signed sin (−sin for channels j < D/4, whose partner is subtracted; +sin for
// j ≥ D/4). Layout [4][32 lanes] of 16-byte vectors: a warp's accesses are conflict-free.
struct QkRopeLane {
  Vec16 v[4][32];
};

// Two steps, so a ring of loads can be issued in between: qk_rope_stage loads the lane's 8 angles of row `pos`
// (channels 8·l … 8·l + 7; pos < 0: zeros, an identity rotation — the caller makes such rows NaN) into the cos
// entries, qk_rope_finish turns them into cos and signed sin.
template <int D>
__device__ __forceinline__ void qk_rope_stage(QkRopeLane& t, int lane, const float* freqs, long long pos, int l) {
  Vec16 a = zero16(), b = zero16();
  if (pos >= 0) {
    const float* f = freqs + pos * (D / 2) + l * 8;
    a = load16(f);
    b = load16(f + 4);
  }
  t.v[0][lane] = a;
  t.v[1][lane] = b;
}
__device__ __forceinline__ void qk_rope_finish(QkRopeLane& t, int lane, bool first_quarter) {
  float* cs = reinterpret_cast<float*>(&t.v[0][0]);
  float* sn = reinterpret_cast<float*>(&t.v[2][0]);
  // Not unrolled: sincosf carries a large slow path (Payne–Hanek, |x| > 105615); one copy keeps the code small.
#pragma unroll 1
  for (int i = 0; i < 8; ++i) {
    const int at = (i >> 2) * 128 + lane * 4 + (i & 3);  // float index of element i in entries [i/4][lane]
    float sv, cv;
    sincosf(cs[at], &sv, &cv);
    cs[at] = cv;
    sn[at] = first_quarter ? -sv : sv;
  }
}

template <typename T>
__device__ __forceinline__ void unpack16(const Vec16& a, const Vec16& b, float (&t)[16]) {
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    t[i] = vec_get<T>(a, i);
    t[8 + i] = vec_get<T>(b, i);
  }
}

template <typename T>
__device__ __forceinline__ void pack16(const float (&t)[16], Vec16& a, Vec16& b) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    a.w[i] = pack2<T>(t[2 * i], t[2 * i + 1]);
    b.w[i] = pack2<T>(t[8 + 2 * i], t[8 + 2 * i + 1]);
  }
}

// The CTA's copy of the two norm weight vectors (q: [0], k: [1]) in shared memory. Call before a __syncthreads().
template <int D, typename W>
__device__ __forceinline__ void qk_stage_weights(W (&ws)[2][D], const void* wq, const void* wk) {
  constexpr int NVEC = D * static_cast<int>(sizeof(W)) / 16;  // 16-byte vectors per weight vector
  for (int i = threadIdx.x; i < 2 * NVEC; i += blockDim.x) {
    const char* src = static_cast<const char*>(i < NVEC ? wq : wk) + (i % NVEC) * 16;
    reinterpret_cast<Vec16*>(&ws[0][0])[i] = load16(src);
  }
}

// Per-lane constants of a row group: the lane's chunks (c0 = l in the rotated half, c1 = l + LH in the other) and
// its rotation partner. The norm weights of its 16 channels are read from the CTA's shared copy per head (2 or 4
// 16-byte loads), not held in registers: the backward needs those for its weight-gradient accumulators.
template <int D, typename W>
struct QkLane {
  static constexpr int LH = D / 16, E = 16 / static_cast<int>(sizeof(W)), NV = 16 / E;
  int lane, l, c0, c1;
  __device__ __forceinline__ explicit QkLane(int lane_) {
    lane = lane_;
    l = lane & (LH - 1);
    c0 = l;
    c1 = l + LH;
  }
  __device__ __forceinline__ bool first_quarter() const { return l < LH / 2; }
  // Elements 0..7: the weights of chunk c0's channels, 8..15: chunk c1's.
  __device__ __forceinline__ void weights(const W (&ws)[2][D], bool isq, Vec16 (&w)[NV]) const {
    const W* row = ws[isq ? 0 : 1];
#pragma unroll
    for (int v = 0; v < NV / 2; ++v) {
      w[v] = *reinterpret_cast<const Vec16*>(row + c0 * 8 + v * E);
      w[NV / 2 + v] = *reinterpret_cast<const Vec16*>(row + c1 * 8 + v * E);
    }
  }
  static __device__ __forceinline__ float w(const Vec16 (&wv)[NV], int i) { return vec_get<W>(wv[i / E], i % E); }
  // Elements 0..7 of v (the rotated chunk): forward v·cos + partner(v)·(±sin); transposed (the backward's
  // un-rotation) v·cos + partner(v·(±sin)). Every lane of the warp must call it (shuffles within the row's group).
  template <bool TRANSPOSED>
  __device__ __forceinline__ void rotate(const QkRopeLane& t, float (&v)[16]) const {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const Vec16 c = t.v[h][lane], sg = t.v[2 + h][lane];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float x = v[4 * h + i], cv = __uint_as_float(c.w[i]), sv = __uint_as_float(sg.w[i]);
        if constexpr (TRANSPOSED) {
          v[4 * h + i] = fmaf(x, cv, __shfl_xor_sync(0xffffffffu, x * sv, LH / 2));
        } else {
          v[4 * h + i] = fmaf(__shfl_xor_sync(0xffffffffu, x, LH / 2), sv, x * cv);
        }
      }
    }
  }
};

// T: qkv/q/k/v dtype (16-bit), W: norm weight dtype. WARPS warps per CTA, BATCH head slots loaded per step.
template <int H, int HG, int D, bool IL, typename T, typename W, int WARPS, int BATCH>
__global__ void __launch_bounds__(WARPS * 32) qk_norm_half_rope_fwd_kernel(const QkNormRopeFwdArgs a) {
  static_assert(sizeof(T) == 2, "16-bit activations");
  static_assert(D >= 32 && D <= 256 && (D & (D - 1)) == 0, "D: a power of two in [32, 256]");
  static_assert(H % HG == 0, "H must be a multiple of h");
  constexpr int LH = D / 16, RPW = 32 / LH, NH = H + 2 * HG;
  __shared__ QkRopeLane rope[WARPS];
  __shared__ __align__(16) W wsm[2][D];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const QkLane<D, W> L(lane);
  qk_stage_weights<D, W>(wsm, a.wq, a.wk);
  const int M = a.S * a.B;
  const int m = (blockIdx.x * WARPS + warp) * RPW + lane / LH;
  const bool active = m < M;
  const int s = active ? m / a.B : 0, b = active ? m - s * a.B : 0;
  QkRopeLane& lane_rope = rope[warp];
  const T* xrow = static_cast<const T*>(a.qkv) + static_cast<i64>(s) * a.qkv_s_stride +
                  static_cast<i64>(b) * a.qkv_b_stride;
  const i64 bs = static_cast<i64>(b) * a.S + s;  // row of the [B, S] outputs

  // A ring of BATCH slots in registers: slot j lives in entry j % BATCH; as soon as it is processed, the entry is
  // refilled with slot j + BATCH, so every warp keeps BATCH slots of loads in flight all the time.
  Vec16 x0[BATCH], x1[BATCH];
  auto load_slot = [&](int u, int j) {
    if (active && j < NH) {
      x0[u] = load16_stream(xrow + j * D + L.c0 * 8);
      x1[u] = load16_stream(xrow + j * D + L.c1 * 8);
    } else {
      x0[u] = x1[u] = zero16();
    }
  };
  const long long pos = active ? qk_rope_position(a.pos, s) : 0;
  const bool pos_ok = !active || pos >= 0;
  qk_rope_stage<D>(lane_rope, lane, a.pos.freqs, pos_ok ? pos : -1, L.l);

  // Round j0 = −BATCH only fills the ring (those loads are in flight while the rotary table is computed).
#pragma unroll 1
  for (int j0 = -BATCH; j0 < NH; j0 += BATCH) {
#pragma unroll
    for (int u = 0; u < BATCH; ++u) {
      const int j = j0 + u;
      if (j >= 0 && j < NH) {  // warp-uniform
        int kind, idx;
        qkv_slot<H, HG, IL>(j, kind, idx);
        if (kind == 2) {
          if (active) {
            T* dst = static_cast<T*>(a.v) + (bs * HG + idx) * D;
            store16(dst + L.c0 * 8, x0[u]);
            store16(dst + L.c1 * 8, x1[u]);
          }
        } else {
          const bool isq = kind == 0;
          float t[16];
          unpack16<T>(x0[u], x1[u], t);
          float ss = 0.f;
#pragma unroll
          for (int i = 0; i < 16; ++i) ss = fmaf(t[i], t[i], ss);
          ss = warp_sum<LH>(ss);
          float r = qk_rms_inv(ss * (1.0f / D) + a.eps);
          if (!pos_ok) r = __int_as_float(0x7fc00000);  // no rotary row for this position: NaN, not garbage
          Vec16 wv[QkLane<D, W>::NV];
          L.weights(wsm, isq, wv);
          float o[16];
#pragma unroll
          for (int i = 0; i < 16; ++i) o[i] = t[i] * r * L.w(wv, i);
          L.template rotate<false>(lane_rope, o);
          if (active) {
            T* dst = isq ? static_cast<T*>(a.q) + (bs * H + idx) * D : static_cast<T*>(a.k) + (bs * HG + idx) * D;
            Vec16 y0, y1;
            pack16<T>(o, y0, y1);
            store16(dst + L.c0 * 8, y0);
            store16(dst + L.c1 * 8, y1);
          }
        }
      }
      load_slot(u, j + BATCH);
    }
    if (j0 < 0) {
      qk_rope_finish(lane_rope, lane, L.first_quarter());
      __syncthreads();  // the weights
    }
  }
}

// Backward: persistent grid over tiles of WARPS·32/LH rows (tile t, t + gridDim.x, …, a fixed assignment).
// ≥ 16 resident warps per SM (≤ 128 registers): 131 unconstrained would leave one 8-warp CTA per SM.
// ACC_SMEM: the weight-gradient accumulators live in shared memory (private to each lane, read-modify-write per
// head) instead of 32 registers, which buys a deeper ring (BATCH) at the same 16 warps per SM.
template <int H, int HG, int D, bool IL, typename T, typename W, int WARPS, int BATCH, bool ACC_SMEM>
__global__ void __launch_bounds__(WARPS * 32, 16 / WARPS) qk_norm_half_rope_bwd_kernel(const QkNormRopeBwdArgs a) {
  pdl_launch_dependents();  // dw_reduce_kernel (PDL) may be placed beside this grid now; it waits for it to end
  static_assert(sizeof(T) == 2, "16-bit activations");
  static_assert(D >= 32 && D <= 256 && (D & (D - 1)) == 0, "D: a power of two in [32, 256]");
  static_assert(H % HG == 0, "H must be a multiple of h");
  static_assert(sizeof(QkRopeLane) == 2048 && 2 * D * 4 <= 2048, "a warp's partials fit its rotary table");
  constexpr int LH = D / 16, RPW = 32 / LH, NH = H + 2 * HG, TILE = WARPS * RPW;
  constexpr int OFF_ROPE = (2 * D * static_cast<int>(sizeof(W)) + 15) / 16 * 16, OFF_ACC = OFF_ROPE + WARPS * 2048;
  extern __shared__ __align__(16) unsigned char qk_smem[];  // qk_norm_half_rope_bwd_smem_bytes
  W(&wsm)[2][D] = *reinterpret_cast<W(*)[2][D]>(qk_smem);
  QkRopeLane* rope = reinterpret_cast<QkRopeLane*>(qk_smem + OFF_ROPE);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // This lane's accumulators (ACC_SMEM): entry k (elements 4k … 4k+3) of kind q (0) / k (1) at acc_at(kind)[32·k].
  Vec16* acc_base = reinterpret_cast<Vec16*>(qk_smem + OFF_ACC) + warp * 256 + lane;
  const QkLane<D, W> L(lane);
  qk_stage_weights<D, W>(wsm, a.wq, a.wk);
  if constexpr (ACC_SMEM) {
#pragma unroll
    for (int k = 0; k < 8; ++k) acc_base[32 * k] = zero16();
  }
  __syncthreads();
  QkRopeLane& lane_rope = rope[warp];
  const int M = a.S * a.B;
  const int tiles = (M + TILE - 1) / TILE;

  float dq[16], dk[16];  // register accumulators (unused with ACC_SMEM until the end)
#pragma unroll
  for (int i = 0; i < 16; ++i) dq[i] = dk[i] = 0.f;
  bool active = false, pos_ok = true;  // of the current tile's row

  // One q or k head of the current row: dt into dst, t·r·g' into that kind's weight-gradient accumulator.
  auto qk_grad = [&](auto isq_c, const Vec16 x0v, const Vec16 x1v, const Vec16 g0v, const Vec16 g1v, T* dst) {
    constexpr bool ISQ = decltype(isq_c)::value;
    float(&acc)[16] = ISQ ? dq : dk;
    float t[16], gp[16];
    unpack16<T>(x0v, x1v, t);
    unpack16<T>(g0v, g1v, gp);
    L.template rotate<true>(lane_rope, gp);
    Vec16 wv[QkLane<D, W>::NV];
    L.weights(wsm, ISQ, wv);
    float ss = 0.f, dot = 0.f;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      ss = fmaf(t[i], t[i], ss);
      dot = fmaf(t[i] * gp[i], L.w(wv, i), dot);
    }
    ss = warp_sum<LH>(ss);
    dot = warp_sum<LH>(dot);
    float r = qk_rms_inv(ss * (1.0f / D) + a.eps);
    if (!pos_ok) r = __int_as_float(0x7fc00000);
    // r·(r·(r·P)): r·P stays O(|g|·√D) for any scale of t, where r³ alone underflows fp32 once |t| ≳ 1e13.
    const float coef = r * (r * (r * dot)) * (1.0f / D);
    float d[16];
    Vec16* at = acc_base + (ISQ ? 0 : 128);  // ACC_SMEM: entries k = 0 … 3 at at[32·k]
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      Vec16 v;
      if constexpr (ACC_SMEM) v = at[32 * k];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = 4 * k + e;
        const float rg = r * gp[i];
        d[i] = rg * L.w(wv, i) - coef * t[i];
        if constexpr (ACC_SMEM) v.w[e] = __float_as_uint(fmaf(t[i], rg, __uint_as_float(v.w[e])));
        else acc[i] = fmaf(t[i], rg, acc[i]);
      }
      if constexpr (ACC_SMEM) at[32 * k] = v;
    }
    if (active) {
      Vec16 y0, y1;
      pack16<T>(d, y0, y1);
      store16(dst + L.c0 * 8, y0);
      store16(dst + L.c1 * 8, y1);
    }
  };

#pragma unroll 1
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int m = tile * TILE + warp * RPW + lane / LH;
    active = m < M;
    const int s = active ? m / a.B : 0, b = active ? m - s * a.B : 0;
    const T* xrow = static_cast<const T*>(a.qkv) + static_cast<i64>(s) * a.qkv_s_stride +
                    static_cast<i64>(b) * a.qkv_b_stride;
    T* drow = static_cast<T*>(a.dqkv) + static_cast<i64>(s) * a.dqkv_s_stride + static_cast<i64>(b) * a.dqkv_b_stride;
    const i64 bs = static_cast<i64>(b) * a.S + s;

    // The ring of BATCH slots, as in the forward: gradient (and, for q/k heads, input) of slot j in entry j % BATCH.
    Vec16 g0[BATCH], g1[BATCH], x0[BATCH], x1[BATCH];
    auto load_slot = [&](int u, int j) {
      g0[u] = g1[u] = x0[u] = x1[u] = zero16();
      if (active && j < NH) {
        int kind, idx;
        qkv_slot<H, HG, IL>(j, kind, idx);
        const T* g = kind == 0 ? static_cast<const T*>(a.gq) + (bs * H + idx) * D
                               : static_cast<const T*>(kind == 1 ? a.gk : a.gv) + (bs * HG + idx) * D;
        g0[u] = load16_stream(g + L.c0 * 8);
        g1[u] = load16_stream(g + L.c1 * 8);
        if (kind != 2) {
          x0[u] = load16_stream(xrow + j * D + L.c0 * 8);
          x1[u] = load16_stream(xrow + j * D + L.c1 * 8);
        }
      }
    };
    const long long pos = active ? qk_rope_position(a.pos, s) : 0;
    pos_ok = !active || pos >= 0;
    qk_rope_stage<D>(lane_rope, lane, a.pos.freqs, pos_ok ? pos : -1, L.l);

#pragma unroll 1
    for (int j0 = -BATCH; j0 < NH; j0 += BATCH) {  // round −BATCH only fills the ring
#pragma unroll
      for (int u = 0; u < BATCH; ++u) {
        const int j = j0 + u;
        if (j >= 0 && j < NH) {  // warp-uniform
          int kind, idx;
          qkv_slot<H, HG, IL>(j, kind, idx);
          T* dst = drow + j * D;
          if (kind == 2) {
            if (active) {
              store16(dst + L.c0 * 8, g0[u]);
              store16(dst + L.c1 * 8, g1[u]);
            }
          } else {
            // Separate q and k code paths: no per-element selects between the two weight-gradient accumulators.
            if (kind == 0) qk_grad(QkBool<true>{}, x0[u], x1[u], g0[u], g1[u], dst);
            else qk_grad(QkBool<false>{}, x0[u], x1[u], g0[u], g1[u], dst);
          }
        }
        load_slot(u, j + BATCH);
      }
      if (j0 < 0) {
        qk_rope_finish(lane_rope, lane, L.first_quarter());
      }
    }
  }

  if (a.partial == nullptr) return;  // no weight gradients wanted (uniform: the whole grid)
  if constexpr (ACC_SMEM) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const Vec16 q = acc_base[32 * k], kk = acc_base[128 + 32 * k];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        dq[4 * k + e] = __uint_as_float(q.w[e]);
        dk[4 * k + e] = __uint_as_float(kk.w[e]);
      }
    }
  }
  // The warp's row groups own the same channels: add them (fixed butterfly order), then the warps in warp order.
  // The warp's partials go to its own rotary table, which it no longer reads (the shuffles order its lanes).
  float* red_w = reinterpret_cast<float*>(rope + warp);
#pragma unroll
  for (int o = LH; o < 32; o <<= 1) {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      dq[i] += __shfl_xor_sync(0xffffffffu, dq[i], o);
      dk[i] += __shfl_xor_sync(0xffffffffu, dk[i], o);
    }
  }
  __syncwarp();
  if (lane < LH) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      red_w[L.c0 * 8 + i] = dq[i];
      red_w[L.c1 * 8 + i] = dq[8 + i];
      red_w[D + L.c0 * 8 + i] = dk[i];
      red_w[D + L.c1 * 8 + i] = dk[8 + i];
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < 2 * D; c += WARPS * 32) {
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) acc += reinterpret_cast<const float*>(rope + w)[c];
    a.partial[static_cast<i64>(blockIdx.x) * 2 * D + c] = acc;
  }
}

}  // namespace kiln
