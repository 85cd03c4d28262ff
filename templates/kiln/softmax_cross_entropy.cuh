// kiln/softmax_cross_entropy.cuh — token-wise softmax cross-entropy: forward, backward, fused forward+backward,
// vocab-parallel partials and their merge. Spec: shared/spec/linghe-kernels.md §8 (HEAD numerics).
//
//   lse  = m + log Σ_j exp(z_j − m)                      (m = max_j z_j: always max-subtracted)
//   loss = lse − (1−ε)·z_y − (ε/V)·Σ_j z_j + λ·lse²       (ε: label smoothing, λ: z-loss; 0 and 0 by default)
//   dz_j = g·(softmax_j·(1 + 2λ·lse) − (1−ε)·[j = y] − ε/V)
// A row whose label is ignore_index has loss 0, max 0, sumexp 0 and a zero gradient row (only the fused kernel reads
// its logits: it loads its slice before it knows the label).
// A label outside [0, V) (and not ignore_index) is never used as an index: the row is treated as ignored except that
// its loss is NaN, and the smallest such row is recorded with atomicMin in bad_row for the host to report.
//
// Work split. A row of V = 157184 bf16 logits is 307 KB, more than one CTA's shared memory, so a row is split over a
// thread-block cluster of CL CTAs (Hopper): each CTA takes a contiguous slice of 16-byte chunks, computes its local
// (max, Σexp, Σz) online, and the CTAs exchange those through distributed shared memory (each CTA pushes its
// statistics into every CTA's slot array, one cluster barrier, then every CTA merges the CL slots in rank order, so
// every CTA holds the same global numbers). Rows need not be 16-byte aligned: the elements before the first 16-byte
// boundary (head, rank 0) and after the last full chunk (tail, rank CL−1) are handled one per thread.
//  * forward: streaming 16-byte loads into registers, U chunks in flight per thread.
//  * fused:   the CTA's slice is staged in shared memory with TMA bulk copies (pieces on their own mbarriers, so the
//             statistics start on the first piece while the rest is in flight); after the exchange the gradient is
//             computed from shared memory and written out, so the logits are read from HBM exactly once and may be
//             overwritten in place.
//  * backward: elementwise from the saved (max, sumexp); a row split over PARTS independent CTAs.
// Every reduction has a fixed order for a given configuration (warp butterflies, warps in order, ranks in order).
#pragma once
#include "kiln/common.cuh"
#include "kiln/mbarrier.cuh"
#include "kiln/pdl.cuh"
#include "kiln/ptx.cuh"
#include "kiln/softmax_cross_entropy_args.h"

namespace kiln {
namespace ce {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLowest = -3.402823466e38f;  // running-max identity: finite, so an all −inf row never gives inf − inf
constexpr int kUnroll = 4;                   // 16-byte chunks per thread per step of the shared-memory passes

__device__ __forceinline__ float ninf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float qnan() { return __int_as_float(0x7fffffff); }

// exp(x) as 2^(x·log2 e) (MUFU ex2, ~2 ulp); exp(−inf) = 0, exp(NaN) = NaN.
__device__ __forceinline__ float exp_approx(float x) { return ex2_ftz(x * kLog2e); }

// Running statistics of a set of logits: max m, s = Σ exp(z − m), and for label smoothing zs = Σ (z − m) over the c
// elements seen (kept relative to the running max, so rows of large-magnitude logits lose nothing to cancellation).
struct Stat {
  float m, s, zs, c;
};
__device__ __forceinline__ Stat stat_identity() { return Stat{kLowest, 0.f, 0.f, 0.f}; }

// Σ(z − m_old) → Σ(z − m_new) over c elements.
__device__ __forceinline__ float shift(float zs, float c, float m_old, float m_new) {
  return c != 0.f ? zs + c * (m_old - m_new) : zs;
}

// Commutative merge (a ⊕ b == b ⊕ a bit for bit), so butterflies leave every lane with the same value.
__device__ __forceinline__ Stat merge(const Stat& a, const Stat& b) {
  const float m = fmaxf(a.m, b.m);
  return Stat{m, a.s * exp_approx(a.m - m) + b.s * exp_approx(b.m - m),
              shift(a.zs, a.c, a.m, m) + shift(b.zs, b.c, b.m, m), a.c + b.c};
}

// Absorbs n ≤ U chunks (the first n of v) of element type T: one max over the group, one rescale, then the terms.
template <typename T, int U, bool SMOOTH>
__device__ __forceinline__ void absorb(Stat& st, const Vec16 (&v)[U], int n) {
  constexpr int E = VecTraits<T>::kElems;
  float gm = kLowest;
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (u < n)
#pragma unroll
      for (int e = 0; e < E; ++e) gm = fmaxf(gm, vec_get<T>(v[u], e));
  const float m = fmaxf(st.m, gm);
  float s = st.s * exp_approx(st.m - m), zs = 0.f;
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (u < n)
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float d = vec_get<T>(v[u], e) - m;
        s += exp_approx(d);
        if constexpr (SMOOTH) zs += d;
      }
  if constexpr (SMOOTH) {
    st = Stat{m, s, shift(st.zs, st.c, st.m, m) + zs, st.c + static_cast<float>(n * E)};
  } else {
    st.m = m;
    st.s = s;
  }
}
__device__ __forceinline__ void absorb1(Stat& st, float x, bool smooth) {
  const float m = fmaxf(st.m, x);
  st.s = st.s * exp_approx(st.m - m) + exp_approx(x - m);
  if (smooth) {
    st.zs = shift(st.zs, st.c, st.m, m) + (x - m);
    st.c += 1.f;
  }
  st.m = m;
}

__device__ __forceinline__ Stat shfl_stat(const Stat& st, int o) {
  return Stat{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o),
              __shfl_xor_sync(0xffffffffu, st.zs, o), __shfl_xor_sync(0xffffffffu, st.c, o)};
}

// Block-wide merge (fixed order: butterfly within warps, then warps 0..W−1 by warp 0). Every thread of warp 0 returns
// the result; `red` holds THREADS/32 entries.
template <int THREADS>
__device__ __forceinline__ Stat block_merge(Stat st, Stat* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) st = merge(st, shfl_stat(st, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < THREADS / 32 ? red[lane] : stat_identity();
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) st = merge(st, shfl_stat(st, o));
  }
  return st;
}

// One CTA's statistics as pushed to the cluster, and the target logit (rank 0's; −inf elsewhere).
struct alignas(16) Slot {
  Stat st;
  float t, pad[3];
};

// Writes `v` into `slot` (a shared-memory address of this CTA) in the shared memory of CTA `rank` of the cluster.
__device__ __forceinline__ void cluster_store_slot(Slot* slot, u32 rank, const Slot& v) {
#if __CUDA_ARCH__ >= 900
  u32 remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_u32(slot)), "r"(rank));
  asm volatile("st.shared::cluster.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(remote), "f"(v.st.m), "f"(v.st.s),
               "f"(v.st.zs), "f"(v.st.c)
               : "memory");
  asm volatile("st.shared::cluster.f32 [%0+16], %1;" ::"r"(remote), "f"(v.t) : "memory");
#else
  *slot = v;
#endif
}

// Publishes this CTA's statistics (held by every thread of warp 0; `t` by thread 0) to all CL CTAs and returns, in
// every thread, the merge of the CL slots in rank order (global max, Σexp, Σ(z − max), count) and rank 0's target
// logit. The caller has done cluster_arrive_relaxed() at its start (CL > 1).
template <int CL>
__device__ __forceinline__ Slot exchange(const Stat& st, float t, Slot* slots, u32 rank) {
  t = __shfl_sync(0xffffffffu, t, 0);
  Slot mine;
  mine.st = st;
  mine.t = t;
  if constexpr (CL > 1) {
    cluster_wait();  // every CTA of the cluster is running: its shared memory may be written
    if (threadIdx.x < CL) cluster_store_slot(&slots[rank], threadIdx.x, mine);
    cluster_arrive();
    cluster_wait();
  } else {
    if (threadIdx.x == 0) slots[0] = mine;
    __syncthreads();
  }
  Slot g;
  g.st = slots[0].st;
#pragma unroll
  for (int r = 1; r < CL; ++r) g.st = merge(g.st, slots[r].st);
  g.t = slots[0].t;
  return g;
}

// Per-token loss lse − (1−ε)·t − (ε/V)·Σz + λ·lse² written without cancellation between lse and t:
// (1−ε)·(m − t) + log s − ε·zmean + λ·lse², zmean = mean(z) − m.
__device__ __forceinline__ float token_loss(float m, float s, float t, float zmean, float eps, float lambda,
                                            bool smooth) {
  float loss = (m - t) + logf(s);
  if (smooth && eps != 0.f) loss = (1.f - eps) * (m - t) + logf(s) - eps * zmean;
  if (lambda != 0.f) {
    const float lse = m + logf(s);
    loss += lambda * lse * lse;
  }
  return loss;
}

// Where the row's first 16-byte boundary is: `head` elements before it, `nb` whole chunks, `tail` elements after.
template <int V, typename T>
struct RowSplit {
  int head, nb, tail;
  __device__ __forceinline__ explicit RowSplit(const void* row) {
    constexpr int E = VecTraits<T>::kElems;
    const int mis = static_cast<int>(reinterpret_cast<unsigned long long>(row) & 15);
    head = ((16 - mis) & 15) / static_cast<int>(sizeof(T));
    if (head > V) head = V;
    nb = (V - head) / E;
    tail = V - head - nb * E;
  }
};

// Head elements (< 8) go to threads 0..head−1, tail elements (< 8) to threads 8..8+tail−1, so one thread never holds
// both when a single CTA takes the whole row.
__device__ __forceinline__ bool is_tail_thread(int tail) {
  return threadIdx.x >= 8 && static_cast<int>(threadIdx.x) < 8 + tail;
}

template <typename L>
__device__ __forceinline__ long long load_label(const void* labels, long long row) {
  return static_cast<long long>(static_cast<const L*>(labels)[row]);
}

// Packs 16/sizeof(T) floats into a 16-byte vector of T, rounding to nearest even (two elements per cvt for 16-bit T).
template <typename T>
__device__ __forceinline__ Vec16 pack(const float (&d)[VecTraits<T>::kElems]) {
  Vec16 v;
  if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int i = 0; i < 4; ++i) v.w[i] = __float_as_uint(d[i]);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v.w[i] = pack2<T>(d[2 * i], d[2 * i + 1]);
  }
  return v;
}

}  // namespace ce

// ---- forward (full or vocab-parallel partial) ---------------------------------------------------------------------
// Grid: M·CL CTAs in clusters of CL (row = blockIdx.x / CL). L: label type (long long or int).
// U: 16-byte loads in flight per thread.
template <int V, typename T, typename L, int CL, int THREADS, bool SMOOTH, int U>
__global__ void __launch_bounds__(THREADS) softmax_cross_entropy_fwd_kernel(const CeFwdArgs a) {
  using namespace ce;
  constexpr int E = VecTraits<T>::kElems;
  constexpr int PER = ce_slice_chunks(V, sizeof(T), CL);
  __shared__ Stat red[THREADS / 32];
  __shared__ Slot slots[CL];
  if constexpr (CL > 1) cluster_arrive_relaxed();
  const u32 rank = CL > 1 ? cluster_ctarank() : 0;
  const long long row = blockIdx.x / CL;
  const long long label = load_label<L>(a.labels, row);
  const bool ignored = label == a.ignore_index;
  const bool bad = !ignored && (label < 0 || label >= a.vocab_total);
  const bool active = !ignored && !bad;
  const long long local = label - a.vocab_start;
  const T* rowp = static_cast<const T*>(a.logits) + row * a.stride;
  const RowSplit<V, T> sp(rowp);
  const T* body = rowp + sp.head;
  const int c0 = static_cast<int>(rank) * PER, c1 = min(c0 + PER, sp.nb);

  Stat st = stat_identity();
  float target = ninf();
  if (active) {
    if (rank == 0 && threadIdx.x == 0 && local >= 0 && local < V) target = to_float(rowp[local]);
    for (int c = c0 + static_cast<int>(threadIdx.x); c < c1; c += THREADS * U) {
      Vec16 v[U];
      int n = 0;
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (c + u * THREADS < c1) {
          v[u] = load16_stream(body + static_cast<long long>(c + u * THREADS) * E);
          n = u + 1;
        }
      absorb<T, U, SMOOTH>(st, v, n);
    }
    if (rank == 0 && static_cast<int>(threadIdx.x) < sp.head) absorb1(st, to_float(rowp[threadIdx.x]), SMOOTH);
    if (rank == CL - 1 && is_tail_thread(sp.tail)) absorb1(st, to_float(body[sp.nb * E + threadIdx.x - 8]), SMOOTH);
  }
  st = block_merge<THREADS>(st, red);
  const Slot g = exchange<CL>(st, target, slots, rank);
  if (rank != 0 || threadIdx.x != 0) return;

  if (bad && a.bad_row) atomicMin(a.bad_row, static_cast<int>(row));
  if (a.partial) {
    const long long M = a.M;
    a.partial[row] = active ? g.st.m : 0.f;
    a.partial[M + row] = active ? g.st.s : 0.f;
    a.partial[2 * M + row] = active ? g.t : ninf();
    // Σz for the merge (plain, in fp32: rounded once from double).
    a.partial[3 * M + row] =
        active ? static_cast<float>(static_cast<double>(g.st.zs) + static_cast<double>(g.st.c) * g.st.m) : 0.f;
    return;
  }
  a.loss[row] = active ? token_loss(g.st.m, g.st.s, g.t, g.st.zs / static_cast<float>(V), a.smoothing, a.z_loss,
                                    SMOOTH)
                       : (bad ? qnan() : 0.f);
  if (a.row_max) a.row_max[row] = active ? g.st.m : 0.f;
  if (a.sum_exp) a.sum_exp[row] = active ? g.st.s : 0.f;
}

// ---- fused forward + backward ---------------------------------------------------------------------------------------
// Grid: M·CL CTAs in clusters of CL. Dynamic shared memory: ce_fused_smem_bytes(V, sizeof(T), CL, THREADS).
// Requires sm_90 (TMA bulk copies, clusters). The slice's bulk loads are issued first thing (before the label is
// known: an ignored row's slice is loaded and not used), so a CTA's HBM reads start at once.
// STORE 0: the gradient goes out as 16-byte stores from registers. STORE 1: it is written over the slice in shared
// memory and stored by TMA bulk copies, one per piece as soon as the piece is done.
// Launched with LaunchDims::pdl after the mean reduction's count kernel: scale_dev and bad_row are touched after
// pdl_wait().
template <int V, typename T, typename L, int CL, int THREADS, bool SMOOTH, int STORE>
__global__ void __launch_bounds__(THREADS) softmax_cross_entropy_fused_kernel(const CeFusedArgs a) {
  using namespace ce;
  constexpr int E = VecTraits<T>::kElems;
  constexpr int PER = ce_slice_chunks(V, sizeof(T), CL);
  constexpr int PIECES = ce_fused_pieces(PER, THREADS);
  constexpr int PIECE = (PER + PIECES - 1) / PIECES;
  constexpr int U = kUnroll;
  static_assert(STORE == 0 || STORE == 1, "STORE: 0 (registers) or 1 (bulk copies from shared memory)");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Vec16* buf = reinterpret_cast<Vec16*>(smem_raw);          // [PER] the slice
  u64* bars = reinterpret_cast<u64*>(smem_raw + PER * 16);  // [PIECES]
  __shared__ Stat red[THREADS / 32];
  __shared__ Slot slots[CL];
  if constexpr (CL > 1) cluster_arrive_relaxed();
  const u32 rank = CL > 1 ? cluster_ctarank() : 0;
  const long long row = blockIdx.x / CL;
  const T* rowp = static_cast<const T*>(a.logits) + row * a.stride;
  T* growp = static_cast<T*>(a.grad) + row * a.grad_stride;  // same 16-byte phase as rowp (checked by the host)
  const RowSplit<V, T> sp(rowp);
  const T* body = rowp + sp.head;
  T* gbody = growp + sp.head;
  const int c0 = static_cast<int>(rank) * PER;
  const int count = max(0, min(c0 + PER, sp.nb) - c0);

  if (count > 0 && threadIdx.x == 0) {
#pragma unroll
    for (int p = 0; p < PIECES; ++p) mbar_init(&bars[p], 1);
    fence_mbar_init();
    fence_proxy_async();
#pragma unroll
    for (int p = 0; p < PIECES; ++p) {
      const int n = min(PIECE, count - p * PIECE);
      if (n > 0) {
        void* const dst = buf + p * PIECE;
        const void* const src = body + static_cast<long long>(c0 + p * PIECE) * E;
        const u32 bytes = static_cast<u32>(n) * 16;
        mbar_arrive_expect_tx(&bars[p], bytes);
        bulk_load(dst, src, bytes, &bars[p]);
      }
    }
  }
  const long long label = load_label<L>(a.labels, row);
  const bool ignored = label == a.ignore_index;
  const bool bad = !ignored && (label < 0 || label >= V);
  const bool active = !ignored && !bad;
  // The target logit, head and tail elements are read before the exchange: no CTA of the cluster writes gradients
  // before every CTA has passed it, so in-place writes cannot overtake these reads.
  float target = ninf(), edge = 0.f;
  const bool head_thread = rank == 0 && static_cast<int>(threadIdx.x) < sp.head;
  const bool tail_thread = rank == CL - 1 && is_tail_thread(sp.tail);
  const int edge_col = head_thread ? static_cast<int>(threadIdx.x) : sp.head + sp.nb * E + static_cast<int>(threadIdx.x) - 8;
  Stat st = stat_identity();
  if (active) {
    if (rank == 0 && threadIdx.x == 0) target = to_float(rowp[label]);
    if (head_thread || tail_thread) {
      edge = to_float(rowp[edge_col]);
      absorb1(st, edge, SMOOTH);
    }
  }
  __syncthreads();  // the barriers are initialized before anyone waits on them
  if (count > 0) {
#pragma unroll 1
    for (int p = 0; p < PIECES; ++p) {
      const int base = p * PIECE, n = min(PIECE, count - base);
      if (n <= 0) break;
      mbar_wait(&bars[p], 0);  // also for an inactive row: no bulk copy may still be writing when the CTA exits
      if (!active) continue;
      for (int i = static_cast<int>(threadIdx.x); i < n; i += THREADS * U) {
        Vec16 v[U];
        int k = 0;
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (i + u * THREADS < n) {
            v[u] = buf[base + i + u * THREADS];
            k = u + 1;
          }
        absorb<T, U, SMOOTH>(st, v, k);
      }
    }
  }
  st = block_merge<THREADS>(st, red);
  const Slot g = exchange<CL>(st, target, slots, rank);
  pdl_wait();  // the count kernel's scale and bad-row flag

  if (active) {
    const float lse = g.st.m + logf(g.st.s);
    const float scale = a.scale_dev ? *a.scale_dev : a.scale;
    float coef = scale / g.st.s;
    if (a.z_loss != 0.f) coef *= 1.f + 2.f * a.z_loss * lse;
    const float sub_all = SMOOTH ? scale * a.smoothing / static_cast<float>(V) : 0.f;
    const float sub_target = SMOOTH ? scale * (1.f - a.smoothing) : scale;
    const long long lb = label - sp.head;  // the label's index in the body (may be outside it)
    const int lc = lb >= 0 && lb < static_cast<long long>(sp.nb) * E ? static_cast<int>(lb / E) : -1;
    const int le = lc >= 0 ? static_cast<int>(lb - static_cast<long long>(lc) * E) : -1;
    auto grad_chunk = [&](int i) {
      const Vec16 v = buf[i];
      float d[E];
#pragma unroll
      for (int e = 0; e < E; ++e) {
        d[e] = coef * exp_approx(vec_get<T>(v, e) - g.st.m);
        if constexpr (SMOOTH) d[e] -= sub_all;
      }
      if (c0 + i == lc) {
#pragma unroll
        for (int e = 0; e < E; ++e)
          if (e == le) d[e] -= sub_target;
      }
      return pack<T>(d);
    };
    if constexpr (STORE == 0) {
      for (int i = static_cast<int>(threadIdx.x); i < count; i += THREADS)
        store16(gbody + static_cast<long long>(c0 + i) * E, grad_chunk(i));
    } else {
#pragma unroll 1
      for (int p = 0; p < PIECES; ++p) {
        const int base = p * PIECE, n = min(PIECE, count - base);
        if (n <= 0) break;
        for (int i = base + static_cast<int>(threadIdx.x); i < base + n; i += THREADS) buf[i] = grad_chunk(i);
        fence_proxy_async();
        __syncthreads();
        if (threadIdx.x == 0) {
          bulk_store(gbody + static_cast<long long>(c0 + base) * E, buf + base, static_cast<u32>(n) * 16);
          bulk_commit();
        }
      }
    }
    if (head_thread || tail_thread) {
      float d = coef * exp_approx(edge - g.st.m);
      if constexpr (SMOOTH) d -= sub_all;
      if (edge_col == label) d -= sub_target;
      growp[edge_col] = from_float<T>(d);
    }
  } else {
    const Vec16 zero{{0u, 0u, 0u, 0u}};
    for (int i = static_cast<int>(threadIdx.x); i < count; i += THREADS)
      store16(gbody + static_cast<long long>(c0 + i) * E, zero);
    if (head_thread || tail_thread) growp[edge_col] = from_float<T>(0.f);
  }
  pdl_launch_dependents();
  if constexpr (STORE == 1) {
    if (threadIdx.x == 0) bulk_wait_read();  // the shared memory stays valid until the copies have read it
  }
  if (rank != 0 || threadIdx.x != 0) return;
  if (bad && a.bad_row) atomicMin(a.bad_row, static_cast<int>(row));
  a.loss[row] = active ? token_loss(g.st.m, g.st.s, g.t, g.st.zs / static_cast<float>(V), a.smoothing, a.z_loss,
                                    SMOOTH)
                       : (bad ? qnan() : 0.f);
  if (a.row_max) a.row_max[row] = active ? g.st.m : 0.f;
  if (a.sum_exp) a.sum_exp[row] = active ? g.st.s : 0.f;
}

// ---- backward from saved statistics ----------------------------------------------------------------------------------
// Grid: M·PARTS CTAs; CTA (row, part) takes part `part` of the row's chunks. G: upstream-gradient type. In place when
// grad == logits (each element is read and written by the same thread).
// U: 16-byte loads in flight per thread.
template <int V, typename T, typename L, typename G, int PARTS, int THREADS, bool SMOOTH, int U>
__global__ void __launch_bounds__(THREADS) softmax_cross_entropy_bwd_kernel(const CeBwdArgs a) {
  using namespace ce;
  constexpr int E = VecTraits<T>::kElems;
  constexpr int PER = ce_slice_chunks(V, sizeof(T), PARTS);
  const long long row = blockIdx.x / PARTS;
  const int part = static_cast<int>(blockIdx.x % PARTS);
  // The row's label, upstream gradient and statistics are loaded together (one latency, not two).
  const long long label = load_label<L>(a.labels, row);
  const float gl_row = a.grad_loss ? to_float(static_cast<const G*>(a.grad_loss)[row]) : 0.f;
  const float m = a.row_max[row], s = a.sum_exp[row];
  const bool active = label != a.ignore_index && label >= 0 && label < a.vocab_total;
  const T* rowp = static_cast<const T*>(a.logits) + row * a.stride;
  T* growp = static_cast<T*>(a.grad) + row * a.grad_stride;
  const RowSplit<V, T> sp(rowp);
  const T* body = rowp + sp.head;
  T* gbody = growp + sp.head;
  const int c0 = part * PER, c1 = min(c0 + PER, sp.nb);
  const bool head_thread = part == 0 && static_cast<int>(threadIdx.x) < sp.head;
  const bool tail_thread = part == PARTS - 1 && is_tail_thread(sp.tail);
  const int edge_col = head_thread ? static_cast<int>(threadIdx.x) : sp.head + sp.nb * E + static_cast<int>(threadIdx.x) - 8;

  if (!active) {
    const Vec16 zero{{0u, 0u, 0u, 0u}};
    for (int c = c0 + static_cast<int>(threadIdx.x); c < c1; c += THREADS)
      store16(gbody + static_cast<long long>(c) * E, zero);
    if (head_thread || tail_thread) growp[edge_col] = from_float<T>(0.f);
    return;
  }
  const float gl = a.grad_loss ? gl_row : a.scale_dev ? *a.scale_dev : a.scale;
  float coef = gl / s;
  if (a.z_loss != 0.f) coef *= 1.f + 2.f * a.z_loss * (m + logf(s));
  const float sub_all = SMOOTH ? gl * a.smoothing / static_cast<float>(a.vocab_total) : 0.f;
  const float sub_target = SMOOTH ? gl * (1.f - a.smoothing) : gl;
  const long long local = label - a.vocab_start;  // the label's column in this shard (may be outside it)
  const long long lb = local - sp.head;
  const int lc = lb >= 0 && lb < static_cast<long long>(sp.nb) * E ? static_cast<int>(lb / E) : -1;
  const int le = lc >= 0 ? static_cast<int>(lb - static_cast<long long>(lc) * E) : -1;

  for (int c = c0 + static_cast<int>(threadIdx.x); c < c1; c += THREADS * U) {
    Vec16 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (c + u * THREADS < c1) v[u] = load16_stream(body + static_cast<long long>(c + u * THREADS) * E);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int cc = c + u * THREADS;
      if (cc < c1) {
        float d[E];
#pragma unroll
        for (int e = 0; e < E; ++e) {
          d[e] = coef * exp_approx(vec_get<T>(v[u], e) - m);
          if constexpr (SMOOTH) d[e] -= sub_all;
          if (cc == lc && e == le) d[e] -= sub_target;
        }
        store16(gbody + static_cast<long long>(cc) * E, pack<T>(d));
      }
    }
  }
  if (head_thread || tail_thread) {
    float d = coef * exp_approx(to_float(rowp[edge_col]) - m);
    if constexpr (SMOOTH) d -= sub_all;
    if (edge_col == local) d -= sub_target;
    growp[edge_col] = from_float<T>(d);
  }
}

// ---- merge of vocab-parallel partials ------------------------------------------------------------------------------
// One thread per row; ranks merged in order 0..tp−1; the target is the first rank's that is not −inf (the owner's).
template <typename L, bool SMOOTH>
__global__ void __launch_bounds__(256) softmax_cross_entropy_merge_kernel(const CeMergeArgs a) {
  using namespace ce;
  const long long row = static_cast<long long>(blockIdx.x) * 256 + threadIdx.x;
  if (row >= a.M) return;
  const long long label = load_label<L>(a.labels, row);
  const bool ignored = label == a.ignore_index;
  const bool active = !ignored && label >= 0 && label < a.vocab_total;
  const long long M = a.M;
  float m = kLowest, s = 0.f, t = ninf();
  double z = 0;
  for (int r = 0; r < a.tp; ++r) {
    const float* p = a.partials + static_cast<long long>(r) * 4 * M;
    const float mr = p[row], mn = fmaxf(m, mr);
    s = s * exp_approx(m - mn) + p[M + row] * exp_approx(mr - mn);
    m = mn;
    if (t == ninf()) t = p[2 * M + row];
    z += p[3 * M + row];
  }
  const float zmean = static_cast<float>(z / static_cast<double>(a.vocab_total) - m);
  a.loss[row] = active ? token_loss(m, s, t, zmean, a.smoothing, a.z_loss, SMOOTH) : (ignored ? 0.f : qnan());
  if (a.row_max) a.row_max[row] = active ? m : 0.f;
  if (a.sum_exp) a.sum_exp[row] = active ? s : 0.f;
}

// ---- whole-batch helpers (one CTA of 1024 threads) -------------------------------------------------------------------
// MODE 0: count the valid labels, report bad ones, scale_out = factor / max(valid, 1) (the mean reduction's g).
// MODE 1: total_out = factor · Σ_rows loss, summed in double in a fixed order (thread t takes rows t, t + 1024, …,
//         then a pairwise tree), so the result does not depend on anything but the data. Loads: 8 rows in flight.
template <typename L, int MODE>
__global__ void __launch_bounds__(1024) softmax_cross_entropy_batch_kernel(const CeBatchArgs a) {
  constexpr int UN = 8;  // rows in flight per thread
  __shared__ double part[1024];
  // MODE 0 runs before the fused kernel, which may start at once (it waits for this kernel before it reads the
  // scale); MODE 1 runs after the kernel that writes the losses and may have been launched before it completed.
  if constexpr (MODE == 0) pdl_launch_dependents();
  else pdl_wait();
  if (MODE == 0 && a.init_flag && threadIdx.x == 0) *a.bad_row = 0x7fffffff;
  double acc = 0;
  int first_bad = 0x7fffffff;
  for (long long base = threadIdx.x; base < a.M; base += 1024 * UN) {
    if constexpr (MODE == 0) {
      long long lab[UN];
#pragma unroll
      for (int u = 0; u < UN; ++u) {
        const long long row = base + u * 1024;
        lab[u] = row < a.M ? ce::load_label<L>(a.labels, row) : a.ignore_index;
      }
#pragma unroll
      for (int u = 0; u < UN; ++u) {
        if (lab[u] == a.ignore_index) continue;
        if (lab[u] < 0 || lab[u] >= a.vocab_total) first_bad = min(first_bad, static_cast<int>(base + u * 1024));
        else acc += 1;
      }
    } else {
      float l[UN];
#pragma unroll
      for (int u = 0; u < UN; ++u) {
        const long long row = base + u * 1024;
        l[u] = row < a.M ? a.loss[row] : 0.f;
      }
#pragma unroll
      for (int u = 0; u < UN; ++u) acc += static_cast<double>(l[u]);
    }
  }
  part[threadIdx.x] = acc;
  __syncthreads();  // also orders the flag's initialization before every atomicMin
  if (MODE == 0 && first_bad != 0x7fffffff && a.bad_row) atomicMin(a.bad_row, first_bad);
#pragma unroll 1
  for (int s = 512; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  if constexpr (MODE == 0) {
    a.scale_out[0] = a.factor / static_cast<float>(part[0] > 1 ? part[0] : 1.0);
  } else {
    const double f = a.factor_dev ? static_cast<double>(*a.factor_dev) : static_cast<double>(a.factor);
    a.total_out[0] = static_cast<float>(part[0] * f);
  }
}

}  // namespace kiln
