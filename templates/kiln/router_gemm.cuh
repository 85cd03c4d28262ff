// kiln/router_gemm.cuh — the MoE router GEMM with fp32 logits, and its backward (spec linghe-kernels.md §5).
//
//   forward:   logits[t, e] = Σ_k x[t, k] · w[e, k]                      x, w bf16; logits fp32
//   backward:  dx[t, k]     = Σ_e g[t, e] · w[e, k]                      g fp32;   dx bf16
//              dw[e, k]     = Σ_t g[t, e] · x[t, k]                      dw fp32
//
// Numerics. Every product runs on the tensor cores as a bf16 × bf16 MMA with fp32 accumulators
// (mma.sync.m16n8k16): products of bf16 values are exact, sums are fp32. The fp32 gradient g is not rounded to bf16
// (that would cost 8 of its 24 bits); each g value is split in registers into g_hi = bf16(g) and
// g_lo = bf16(g − g_hi), and both parts are multiplied: |g − g_hi − g_lo| ≤ 2⁻¹⁷·|g|, so the backward behaves
// like fp32-accurate g (better than TF32's 2⁻¹¹, which linghe uses) at twice the MMA count of a bf16 GEMM.
//
// Structure: one tiled mainloop serves the three products. A CTA of WM × WN warps computes a BM × BN tile of C;
// operand tiles of BK along the reduction axis stream global → shared through a STAGES-deep cp.async ring, and
// warps read MMA fragments from shared memory with ldmatrix (bf16 operands, .trans where the reduction axis is the
// slow one) or with plain 64/32-bit loads followed by the hi/lo split (fp32 g). Rows are padded in shared memory so
// every fragment load is free of bank conflicts. The epilogue stages the tile through shared memory and writes it
// with 16-byte stores. Rows past T (and columns past E) are zero-filled on load and masked on store, so T is any
// run-time value. dw cuts T into splits with fp32 partials, added by a second kernel in split order
// (deterministic: no atomics).
#pragma once
#include "kiln/common.cuh"
#include "kiln/pdl.cuh"
#include "kiln/ptx.cuh"
#include "kiln/router_gemm_args.h"

namespace kiln {
namespace rg {

// Operand layouts in shared memory (and in global memory, which they mirror).
enum : int {
  kBf16RowsK = 0,  // bf16 [rows = M or N][reduction], reduction contiguous          (x, w in the forward)
  kBf16RowsR = 1,  // bf16 [rows = reduction][N], N contiguous; ldmatrix.trans           (w in dx, x in dw)
  kF32RowsK = 2,   // fp32 [rows = M][reduction], split into bf16 hi + lo                (g in dx)
  kF32RowsR = 3,   // fp32 [rows = reduction][M], split into bf16 hi + lo                (g in dw)
};

__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void lds_f32x2(float& a, float& b, u32 addr) {
  asm volatile("ld.shared.v2.f32 {%0,%1}, [%2];" : "=f"(a), "=f"(b) : "r"(addr));
}

// c += a · b: a 16×16 bf16 (row-major fragment), b 16×8 bf16 (column fragment), c 16×8 fp32.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// (lo16 = p, hi16 = q) → bf16 hi parts and bf16 residuals: p = hi(p) + lo(p) + O(2⁻¹⁷·|p|). A non-finite hi part
// (inf, NaN, or an overflow of a value near FLT_MAX) gets a zero residual, so inf stays inf and NaN stays NaN.
__device__ __forceinline__ void split_bf16x2(float p, float q, u32& hi, u32& lo) {
  hi = cvt_bf16x2(p, q);
  const float hp = __uint_as_float(hi << 16), hq = __uint_as_float(hi & 0xffff0000u);
  const float rp = fabsf(hp) <= 3.4028234663852886e38f ? p - hp : 0.f;
  const float rq = fabsf(hq) <= 3.4028234663852886e38f ? q - hq : 0.f;
  lo = cvt_bf16x2(rp, rq);
}

// Where the tiles of one operand come from. The tile for reduction chunk kc starts at p + kc·step; rows at or past
// rows − kc·rows_step and bytes of a row at or past cols − kc·cols_step are zero-filled instead of read.
struct TileSrc {
  const char* base;  // a valid address inside the tensor (masked copies point here)
  const char* p;     // chunk 0's tile origin
  i64 ld;            // bytes between rows
  i64 step;          // bytes between the origins of consecutive chunks
  int rows, rows_step;
  int cols, cols_step;  // in bytes
};

// Copies a tile of R rows × CB bytes to shared memory (row pitch SP bytes), 16 bytes per cp.async.
template <int R, int CB, int SP, int THREADS>
__device__ __forceinline__ void load_tile(char* dst, const TileSrc& t, int kc) {
  constexpr int CPR = CB / 16, N = R * CPR, ITERS = (N + THREADS - 1) / THREADS;
  const char* o = t.p + static_cast<i64>(kc) * t.step;
  const int rv = t.rows - kc * t.rows_step, cv = t.cols - kc * t.cols_step;
#pragma unroll
  for (int j = 0; j < ITERS; ++j) {
    const int i = j * THREADS + static_cast<int>(threadIdx.x);
    if (N % THREADS == 0 || i < N) {
      const int r = i / CPR, c = i - r * CPR;
      const bool ok = r < rv && c * 16 < cv;
      cp_async16(dst + r * SP + c * 16, ok ? o + r * t.ld + c * 16 : t.base, ok);
    }
  }
}

// Shared-memory geometry of one operand tile: `rows` × `cols` elements, padded rows.
template <int KIND, int ROWS_MN, int BK>
struct OperandTile {
  static constexpr bool kF32 = KIND == kF32RowsK || KIND == kF32RowsR;
  static constexpr bool kRowsAreK = KIND == kBf16RowsR || KIND == kF32RowsR;
  static constexpr int kElem = kF32 ? 4 : 2;
  static constexpr int kRows = kRowsAreK ? BK : ROWS_MN;
  static constexpr int kCols = kRowsAreK ? ROWS_MN : BK;
  // Padding: bf16 rows +16 bytes (ldmatrix rows land in distinct bank groups when kCols % 16 == 0); fp32 K-contiguous
  // rows +8 floats (64-bit fragment loads); fp32 reduction-major rows +4 floats (32-bit transposed fragment loads).
  static constexpr int kPad = !kF32 ? 8 : (KIND == kF32RowsK ? 8 : 4);
  static constexpr int kPitch = (kCols + kPad) * kElem;  // bytes
  static constexpr int kBytes = kRows * kPitch;
};

template <int BM_, int BN_, int BK_, int WM_, int WN_, int STAGES_, int AKIND_, int BKIND_>
struct Tiling {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, STAGES = STAGES_;
  static constexpr int AKIND = AKIND_, BKIND = BKIND_;
  static constexpr int THREADS = WM * WN * 32;
  static constexpr int WTM = BM / WM, WTN = BN / WN, MT = WTM / 16, NT = WTN / 8;
  static constexpr bool kSplitA = AKIND == kF32RowsK || AKIND == kF32RowsR;
  using A = OperandTile<AKIND, BM, BK>;
  using B = OperandTile<BKIND, BN, BK>;
  static constexpr int kStageBytes = A::kBytes + B::kBytes;
  static constexpr int kPipeBytes = STAGES * kStageBytes;
  static_assert(BM % (WM * 16) == 0 && BN % (WN * 16) == 0 && BK % 16 == 0, "tile not a multiple of the warp tile");
  static_assert(BKIND == kBf16RowsK || BKIND == kBf16RowsR, "B is a bf16 operand");
  static_assert(STAGES >= 2, "at least double buffering");
};

// acc += A · B over `chunks` reduction chunks of BK.
template <class G>
__device__ __forceinline__ void mainloop(float (&acc)[G::MT][G::NT][4], char* smem, const TileSrc& as,
                                         const TileSrc& bs, int chunks) {
  using TA = typename G::A;
  using TB = typename G::B;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp / G::WN, wn = warp % G::WN;
  const int gid = lane >> 2, tig = lane & 3;

#pragma unroll
  for (int s = 0; s < G::STAGES - 1; ++s) {
    if (s < chunks) {
      char* st = smem + s * G::kStageBytes;
      load_tile<TA::kRows, TA::kCols * TA::kElem, TA::kPitch, G::THREADS>(st, as, s);
      load_tile<TB::kRows, TB::kCols * TB::kElem, TB::kPitch, G::THREADS>(st + TA::kBytes, bs, s);
    }
    cp_async_commit();
  }

  for (int kc = 0; kc < chunks; ++kc) {
    cp_async_wait_group<G::STAGES - 2>();
    __syncthreads();
    {
      const int next = kc + G::STAGES - 1;
      if (next < chunks) {
        char* st = smem + (next % G::STAGES) * G::kStageBytes;
        load_tile<TA::kRows, TA::kCols * TA::kElem, TA::kPitch, G::THREADS>(st, as, next);
        load_tile<TB::kRows, TB::kCols * TB::kElem, TB::kPitch, G::THREADS>(st + TA::kBytes, bs, next);
      }
      cp_async_commit();
    }
    const char* st = smem + (kc % G::STAGES) * G::kStageBytes;
    const u32 sa = smem_u32(st), sb = smem_u32(st + TA::kBytes);

#pragma unroll
    for (int ks = 0; ks < G::BK / 16; ++ks) {
      u32 ah[G::MT][4], al[G::kSplitA ? G::MT : 1][4];
#pragma unroll
      for (int mt = 0; mt < G::MT; ++mt) {
        const int m = wm * G::WTM + mt * 16;
        if constexpr (G::AKIND == kBf16RowsK) {
          ldsm_x4(ah[mt], sa + (m + (lane & 15)) * TA::kPitch + (ks * 16 + (lane >> 4) * 8) * 2);
        } else if constexpr (G::AKIND == kF32RowsK) {
          // a0a1: (row gid, k 2·tig..+1), a2a3: (row gid+8), a4a5: (row gid, k+8), a6a7: (row gid+8, k+8)
          const u32 base = sa + (m + gid) * TA::kPitch + (ks * 16 + 2 * tig) * 4;
          float v[8];
          lds_f32x2(v[0], v[1], base);
          lds_f32x2(v[2], v[3], base + 8 * TA::kPitch);
          lds_f32x2(v[4], v[5], base + 32);
          lds_f32x2(v[6], v[7], base + 8 * TA::kPitch + 32);
#pragma unroll
          for (int r = 0; r < 4; ++r) split_bf16x2(v[2 * r], v[2 * r + 1], ah[mt][r], al[mt][r]);
        } else {  // kF32RowsR: shared tile [k][m]
          const u32 base = sa + (ks * 16 + 2 * tig) * TA::kPitch + (m + gid) * 4;
          float v[8];
          v[0] = lds_f32(base);                              // (m gid,   k 2tig)
          v[1] = lds_f32(base + TA::kPitch);                 // (m gid,   k 2tig+1)
          v[2] = lds_f32(base + 32);                         // (m gid+8, k 2tig)
          v[3] = lds_f32(base + TA::kPitch + 32);            // (m gid+8, k 2tig+1)
          v[4] = lds_f32(base + 8 * TA::kPitch);             // (m gid,   k 2tig+8)
          v[5] = lds_f32(base + 9 * TA::kPitch);             // (m gid,   k 2tig+9)
          v[6] = lds_f32(base + 8 * TA::kPitch + 32);        // (m gid+8, k 2tig+8)
          v[7] = lds_f32(base + 9 * TA::kPitch + 32);        // (m gid+8, k 2tig+9)
#pragma unroll
          for (int r = 0; r < 4; ++r) split_bf16x2(v[2 * r], v[2 * r + 1], ah[mt][r], al[mt][r]);
        }
      }
#pragma unroll
      for (int np = 0; np < G::NT / 2; ++np) {
        const int n = wn * G::WTN + np * 16;
        u32 b[4];
        if constexpr (G::BKIND == kBf16RowsK) {
          ldsm_x4(b, sb + (n + (lane & 7) + (lane >> 4) * 8) * TB::kPitch + (ks * 16 + ((lane >> 3) & 1) * 8) * 2);
        } else {
          ldsm_x4_trans(b, sb + (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * TB::kPitch + (n + (lane >> 4) * 8) * 2);
        }
#pragma unroll
        for (int mt = 0; mt < G::MT; ++mt) {
          mma_bf16(acc[mt][2 * np], ah[mt], b[0], b[1]);
          mma_bf16(acc[mt][2 * np + 1], ah[mt], b[2], b[3]);
          if constexpr (G::kSplitA) {
            mma_bf16(acc[mt][2 * np], al[mt], b[0], b[1]);
            mma_bf16(acc[mt][2 * np + 1], al[mt], b[2], b[3]);
          }
        }
      }
    }
  }
  cp_async_wait_group<0>();
  __syncthreads();  // the ring is reused by the epilogue
}

// Writes the accumulators (C rows m0.., columns n0..) as OutT through shared memory: rows < rows_valid and
// columns < cols_valid (a multiple of 16 bytes' worth of OutT) are stored with 16-byte stores.
template <class G, typename OutT>
__device__ __forceinline__ void store_tile(const float (&acc)[G::MT][G::NT][4], char* smem, char* out, i64 ld_bytes,
                                           int rows_valid, int cols_valid) {
  constexpr int ES = sizeof(OutT);
  constexpr int PITCH = (G::BN + 8) * ES;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp / G::WN, wn = warp % G::WN;
  const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int mt = 0; mt < G::MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < G::NT; ++nt) {
      const int r = wm * G::WTM + mt * 16 + gid, c = wn * G::WTN + nt * 8 + 2 * tig;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        char* d = smem + (r + 8 * h) * PITCH + c * ES;
        if constexpr (ES == 4) {
          asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(smem_u32(d)), "f"(acc[mt][nt][2 * h]),
                       "f"(acc[mt][nt][2 * h + 1]) : "memory");
        } else {
          const u32 packed = cvt_bf16x2(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
          asm volatile("st.shared.u32 [%0], %1;" ::"r"(smem_u32(d)), "r"(packed) : "memory");
        }
      }
    }
  __syncthreads();
  constexpr int CPR = G::BN * ES / 16;  // 16-byte chunks per tile row
  const int cv = cols_valid * ES;
  for (int i = threadIdx.x; i < G::BM * CPR; i += G::THREADS) {
    const int r = i / CPR, c = i - r * CPR;
    if (r < rows_valid && c * 16 < cv)
      store16(out + r * ld_bytes + c * 16, *reinterpret_cast<const Vec16*>(smem + r * PITCH + c * 16));
  }
}

template <class G, typename OutT>
constexpr int smem_bytes() {
  constexpr int epi = G::BM * (G::BN + 8) * static_cast<int>(sizeof(OutT));
  return G::kPipeBytes > epi ? G::kPipeBytes : epi;
}

}  // namespace rg

// ---- forward: CTA tile BM tokens × BN experts; grid (ceil(T/BM), ceil(E/BN)) ---------------------------------------
template <int K, int E, int BM, int BN, int BK, int WM, int WN, int STAGES>
__global__ void __launch_bounds__(WM * WN * 32, 1) router_gemm_fwd_kernel(const RouterGemmFwdArgs a) {
  using G = rg::Tiling<BM, BN, BK, WM, WN, STAGES, rg::kBf16RowsK, rg::kBf16RowsK>;
  extern __shared__ __align__(128) char smem[];
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const char* x = static_cast<const char*>(a.x);
  const char* w = static_cast<const char*>(a.w);
  const i64 xld = a.x_stride * 2;
  const rg::TileSrc as{x, x + m0 * xld, xld, BK * 2, a.T - m0, 0, K * 2, BK * 2};
  const rg::TileSrc bs{w, w + static_cast<i64>(n0) * K * 2, K * 2, BK * 2, E - n0, 0, K * 2, BK * 2};
  float acc[G::MT][G::NT][4] = {};
  rg::mainloop<G>(acc, smem, as, bs, (K + BK - 1) / BK);
  rg::store_tile<G, float>(acc, smem, reinterpret_cast<char*>(a.out + m0 * a.out_stride + n0), a.out_stride * 4,
                           a.T - m0, E - n0);
}

// ---- dx: CTA tile BM tokens × BN hidden columns, reduction over E; grid (ceil(T/BM), ceil(K/BN)) -------------------
// Two CTAs an SM when the accumulators are small (a CTA's reduction over E is only E/BK chunks long, so a second CTA
// hides the pipeline's fill and drain).
template <int K, int E, int BM, int BN, int BK, int WM, int WN, int STAGES>
__global__ void __launch_bounds__(WM * WN * 32, (BM / WM / 16) * (BN / WN / 8) * 4 <= 64 ? 2 : 1)
    router_gemm_dx_kernel(const RouterGemmDxArgs a) {
  using G = rg::Tiling<BM, BN, BK, WM, WN, STAGES, rg::kF32RowsK, rg::kBf16RowsR>;
  extern __shared__ __align__(128) char smem[];
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const char* g = reinterpret_cast<const char*>(a.g);
  const char* w = static_cast<const char*>(a.w);
  const i64 gld = a.g_stride * 4;
  const rg::TileSrc as{g, g + m0 * gld, gld, BK * 4, a.T - m0, 0, E * 4, BK * 4};
  const rg::TileSrc bs{w, w + n0 * 2, K * 2, static_cast<i64>(BK) * K * 2, E, BK, (K - n0) * 2, 0};
  float acc[G::MT][G::NT][4] = {};
  rg::mainloop<G>(acc, smem, as, bs, (E + BK - 1) / BK);
  rg::store_tile<G, bf16>(acc, smem, static_cast<char*>(a.dx) + (m0 * a.dx_stride + n0) * 2, a.dx_stride * 2,
                          a.T - m0, K - n0);
}

// ---- dw: CTA tile BM experts × BN hidden columns over one split of T; grid (ceil(K/BN)·ceil(E/BM), splits) ---------
template <int K, int E, int BM, int BN, int BK, int WM, int WN, int STAGES>
__global__ void __launch_bounds__(WM * WN * 32, 1) router_gemm_dw_kernel(const RouterGemmDwArgs a) {
  using G = rg::Tiling<BM, BN, BK, WM, WN, STAGES, rg::kF32RowsR, rg::kBf16RowsR>;
  extern __shared__ __align__(128) char smem[];
  constexpr int TILES_N = (K + BN - 1) / BN;
  const int n0 = (blockIdx.x % TILES_N) * BN, m0 = (blockIdx.x / TILES_N) * BM;
  const int t0 = blockIdx.y * a.split_rows;
  const int rows = a.T - t0 < a.split_rows ? a.T - t0 : a.split_rows;
  const char* g = reinterpret_cast<const char*>(a.g);
  const char* x = static_cast<const char*>(a.x);
  const i64 gld = a.g_stride * 4, xld = a.x_stride * 2;
  const rg::TileSrc as{g, g + t0 * gld + m0 * 4, gld, BK * gld, rows, BK, (E - m0) * 4, 0};
  const rg::TileSrc bs{x, x + t0 * xld + n0 * 2, xld, BK * xld, rows, BK, (K - n0) * 2, 0};
  float acc[G::MT][G::NT][4] = {};
  rg::mainloop<G>(acc, smem, as, bs, (rows + BK - 1) / BK);
  float* out = gridDim.y == 1 ? a.dw : a.partial + static_cast<i64>(blockIdx.y) * E * K;
  rg::store_tile<G, float>(acc, smem, reinterpret_cast<char*>(out + static_cast<i64>(m0) * K + n0), K * 4, E - m0,
                           K - n0);
}

// dw = Σ_s partial[s] in split order (splits = 0: zeros). VEC = 4 floats (one 16-byte access) per thread. After the
// TMA dw it is launched with PDL: it waits here for that kernel's partials.
template <int VEC>
__global__ void __launch_bounds__(256) router_gemm_dw_reduce_kernel(const RouterGemmDwReduceArgs a) {
  static_assert(VEC == 4, "one 16-byte vector per thread");
  pdl_wait();
  const i64 i = (static_cast<i64>(blockIdx.x) * 256 + threadIdx.x) * VEC;
  if (i >= a.n) return;
  float s[4] = {0.f, 0.f, 0.f, 0.f};
  // Up to 8 partials loaded before any is added (one round trip instead of one per partial), added in split order.
  for (int p0 = 0; p0 < a.splits; p0 += 8) {
    Vec16 v[8];
#pragma unroll
    for (int p = 0; p < 8; ++p)
      if (p0 + p < a.splits) v[p] = load16(a.partial + (p0 + p) * a.n + i);
#pragma unroll
    for (int p = 0; p < 8; ++p)
      if (p0 + p < a.splits)
#pragma unroll
        for (int j = 0; j < 4; ++j) s[j] += __uint_as_float(v[p].w[j]);
  }
  Vec16 o;
#pragma unroll
  for (int j = 0; j < 4; ++j) o.w[j] = __float_as_uint(s[j]);
  store16(a.dw + i, o);
}

}  // namespace kiln
