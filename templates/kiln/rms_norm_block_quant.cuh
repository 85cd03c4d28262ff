// kiln/rms_norm_block_quant.cuh — RMSNorm fused with fp8 e4m3 1×128 block quantization.
//
//   r[m]   = 1 / sqrt(Σ_k x[m,k]² / N + eps)                    (fp32; mode 1 reads r from rms_in)
//   y[m,k] = (x[m,k] · r[m]) · w[k]                             (fp32, this order, no FMA)
//   row-wise   q[m, :], q_scale[N/128, M]   : blocks of 128 columns of a row          (modes 0, 2)
//   transposed qT[n, :], qT_scale[M/128, N] : blocks of 128 consecutive tokens of a channel (modes 1, 2)
//
// Two kernels:
//  * row_kernel (mode 0): one warp per row. The row stays in registers between the sum of squares and the
//    quantization, so x is read once. Lanes 0–15 own one 128-column block of each 256-column step, lanes 16–31 the
//    next: a block's amax is a 16-lane butterfly.
//  * tile_kernel (modes 1, 2): the transposed output needs a whole 128-token block per channel, and the norm needs a
//    whole row, so a cluster of S CTAs splits a 128-token × N tile by columns. Each CTA copies its 128 × C slice of
//    x into shared memory once (cp.async), sums squares per row, and the cluster exchanges the 128 partial sums
//    through distributed shared memory (every CTA adds them in rank order, so all see the same r). Then it writes
//    the row-wise blocks (a warp per row) and the transposed blocks (a thread per column) from shared memory.
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp8.cuh"
#include "kiln/rms_norm_block_quant_args.h"

namespace kiln {

template <bool W_F32>
__device__ __forceinline__ float load_weight(const void* w, int k) {
  if (W_F32) return static_cast<const float*>(w)[k];
  return to_float(static_cast<const bf16*>(w)[k]);
}

// ---------------------------------------------------------------------------------------------------------------------
// Mode 0. N % 128 == 0. Each lane holds STEPS 16-byte chunks (8 bf16) of its row.
// A persistent grid: warp w of CTA b takes rows w', w' + W, … (w' = b·WARPS + w, W = all warps), and loads its next
// row while it reduces and quantizes the current one, so every warp keeps a row's worth of loads in flight.
template <int N, int WARPS, bool ROUND, bool W_F32>
__global__ void __launch_bounds__(WARPS * 32) rms_norm_block_quant_row_kernel(const RmsNormBlockQuantArgs a) {
  constexpr int CHUNKS = N / 8;               // 16-byte chunks per row
  constexpr int STEPS = (CHUNKS + 31) / 32;   // 256-column steps
  const int lane = threadIdx.x & 31;
  const int stride = gridDim.x * WARPS;
  int row = blockIdx.x * WARPS + (threadIdx.x >> 5);
  if (row >= a.M) return;

  auto load_row = [&](int r, Vec16 (&v)[STEPS]) {
    const bf16* xr = static_cast<const bf16*>(a.x) + static_cast<i64>(r) * a.x_stride;
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
      const int c = s * 32 + lane;
      if (c < CHUNKS) v[s] = load16_stream(xr + c * 8);
    }
  };
  // Two rows in registers up to 16 steps (4096 columns); longer rows are loaded one at a time.
  constexpr bool PREFETCH = STEPS <= 16;
  Vec16 cur[STEPS], nxt[PREFETCH ? STEPS : 1];
  if (PREFETCH) load_row(row, cur);
  for (; row < a.M; row += stride) {
    if constexpr (PREFETCH) {
      if (row + stride < a.M) load_row(row + stride, nxt);  // warp-uniform
    } else {
      load_row(row, cur);
    }

    float ss = 0.f;
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
      const int c = s * 32 + lane;
      if (c < CHUNKS) {
#pragma unroll
        for (int i = 0; i < 8; ++i) { const float f = vec_get<bf16>(cur[s], i); ss += f * f; }
      }
    }
    ss = warp_sum(ss);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(N) + a.eps);
    if (a.rms_out && lane == 0) a.rms_out[row] = r;

#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
      const int c = s * 32 + lane;
      const bool active = c < CHUNKS;  // half-warp uniform: CHUNKS is a multiple of 16
      float w8[8], y[8];
      if (active) {
        if (W_F32) load_floats<float, 8>(a.w, c * 8, w8);
        else load_floats<bf16, 8>(a.w, c * 8, w8);
      }
      float amax = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        y[i] = active ? __fmul_rn(__fmul_rn(vec_get<bf16>(cur[s], i), r), w8[i]) : 0.f;
        amax = fmaxf(amax, fabsf(y[i]));
      }
      amax = warp_max<16>(amax);
      if (!active) continue;
      const Quantizer<ROUND> quant(block_scale<ROUND>(amax));
      uint2 out;
      out.x = e4m3x4(quant(y[0]), quant(y[1]), quant(y[2]), quant(y[3]));
      out.y = e4m3x4(quant(y[4]), quant(y[5]), quant(y[6]), quant(y[7]));
      *reinterpret_cast<uint2*>(a.q + static_cast<i64>(row) * N + c * 8) = out;
      if ((lane & 15) == 0) a.q_scale[static_cast<i64>(c / 16) * a.M + row] = quant.s;
    }
    if constexpr (PREFETCH) {
#pragma unroll
      for (int s = 0; s < STEPS; ++s) cur[s] = nxt[s];
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Modes 1 and 2. CTA (rank, tb) covers tokens [128·tb, 128·tb + 128) × columns [C·rank, C·rank + C), C = 128·CB,
// with 256 threads (8 warps).
//  1. (mode 2) Σx² of its 128 rows over its C columns, straight from global memory (loads marked L2 evict_last: the
//     same bytes are read again in step 2); the cluster of S = N/C CTAs adds the partial sums in rank order.
//  2. For each 128-column block (double-buffered cp.async into shared memory, 32 KiB a block):
//       row pass — a warp per row, 4 columns per lane: y, the row block's amax, codes, its scale (mode 2); every lane
//                  also keeps the max |y| of its 4 columns over its 16 rows, for the column scales;
//       column pass — a thread per (column pair, 16-token chunk): codes of 16 tokens of 2 channels, two 16-byte stores.
template <int N, int CB, int MODE, bool ROUND, bool W_F32>
__global__ void __launch_bounds__(256) rms_norm_block_quant_tile_kernel(const RmsNormBlockQuantArgs a) {
  constexpr int THREADS = 256, WARPS = 8, ROWS = 128;
  constexpr int C = CB * 128;
  constexpr int S = N / C;
  static_assert(N % C == 0, "the cluster must tile N");
  static_assert(N <= kRmsNormBlockQuantMaxN, "");

  constexpr int BUFS = rms_norm_block_quant_tile_buffers(CB);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* tiles = reinterpret_cast<bf16*>(smem_raw);                        // [BUFS][ROWS][128]
  float* partial = reinterpret_cast<float*>(smem_raw + BUFS * ROWS * 128 * 2);  // [ROWS]
  float* rinv = partial + ROWS;                                           // [ROWS]
  float* wblk = rinv + ROWS;                                              // [BUFS][128] weights of the block
  float* colmax = wblk + BUFS * 128;                                      // [WARPS][128]
  float* colscale = colmax + WARPS * 128;                                 // [128]
  float* rscale = colscale + 128;                                         // [CB][ROWS]

  const int rank = blockIdx.x;
  const int col0 = rank * C;
  const int m0 = blockIdx.y * ROWS;
  const int valid = min(ROWS, a.M - m0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bf16* xg = static_cast<const bf16*>(a.x);

  // Stages block b (128 columns) of x and w into buffer b % BUFS.
  auto stage = [&](int b) {
    bf16* t = tiles + (b % BUFS) * ROWS * 128;
    for (int i = threadIdx.x; i < ROWS * 16; i += THREADS) {
      const int r = i >> 4, c = i & 15;
      const bool ok = r < valid;
      cp_async16(t + r * 128 + c * 8, xg + static_cast<i64>(m0 + (ok ? r : 0)) * a.x_stride + col0 + b * 128 + c * 8, ok);
    }
    if (threadIdx.x < 128) wblk[(b % BUFS) * 128 + threadIdx.x] = load_weight<W_F32>(a.w, col0 + b * 128 + threadIdx.x);
    asm volatile("cp.async.commit_group;" ::: "memory");
  };

  // 1. r per row. With CB ≤ 2 the whole slice stays resident in shared memory (x is read exactly once, all of it in
  // flight at once); wider slices stream Σx² from global memory and restage each block from L2 in step 2.
  constexpr bool RESIDENT = CB <= 2;
  if (RESIDENT) {
    stage(0);
    if (CB == 2) stage(1);
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    __syncthreads();
  }
  if (MODE == 2) {
    if (RESIDENT) {
      for (int r = warp * 16; r < warp * 16 + 16; ++r) {
        float ss = 0.f;
#pragma unroll
        for (int c = lane; c < CB * 16; c += 32) {
          const Vec16 v = *reinterpret_cast<const Vec16*>(tiles + (c >> 4) * ROWS * 128 + r * 128 + (c & 15) * 8);
#pragma unroll
          for (int i = 0; i < 8; ++i) { const float f = vec_get<bf16>(v, i); ss += f * f; }
        }
        ss = warp_sum(ss);
        if (lane == 0) partial[r] = ss;
      }
    } else {
    constexpr int CHUNKS = C / 8;
    u64 keep;  // L2 policy: keep these lines, step 2 reads them again
    asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(keep));
    for (int r0 = warp * 16; r0 < warp * 16 + 16; r0 += 4) {
      float ss[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = r0 + j;
        if (r < valid) {
          const bf16* row = xg + static_cast<i64>(m0 + r) * a.x_stride + col0;
#pragma unroll
          for (int c = lane; c < CHUNKS; c += 32) {
            Vec16 v;
            asm volatile("ld.global.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                         : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3]) : "l"(row + c * 8), "l"(keep));
#pragma unroll
            for (int i = 0; i < 8; ++i) { const float f = vec_get<bf16>(v, i); ss[j] += f * f; }
          }
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float t = warp_sum(ss[j]);
        if (lane == 0) partial[r0 + j] = t;
      }
    }
    stage(0);  // overlap the first block's copy with the cluster exchange
    }
    if (S > 1) cluster_sync(); else __syncthreads();
    for (int r = threadIdx.x; r < ROWS; r += THREADS) {
      float ss = 0.f;
      for (int k = 0; k < S; ++k) ss += (S > 1) ? cluster_load(partial + r, k) : partial[r];
      const float rv = 1.0f / sqrtf(ss / static_cast<float>(N) + a.eps);
      rinv[r] = rv;
      if (rank == 0 && a.rms_out && r < valid) a.rms_out[m0 + r] = rv;
    }
    if (S > 1) cluster_arrive();  // partial[] stays readable until every CTA passes the wait at the end
  } else {
    if (!RESIDENT) stage(0);
    for (int r = threadIdx.x; r < ROWS; r += THREADS) rinv[r] = r < valid ? a.rms_in[m0 + r] : 0.f;
  }

  const i64 tb = blockIdx.y;
  const bool aligned16 = (a.M % 16) == 0;
#pragma unroll 1
  for (int b = 0; b < CB; ++b) {
    if (!RESIDENT) {
      if (b + 1 < CB) {
        stage(b + 1);
        asm volatile("cp.async.wait_group 1;" ::: "memory");
      } else {
        asm volatile("cp.async.wait_group 0;" ::: "memory");
      }
    }
    __syncthreads();
    const bf16* t = tiles + (b % BUFS) * ROWS * 128;
    const float* wb = wblk + (b % BUFS) * 128;

    // Row pass: warp w owns rows 16w … 16w+15; half-warp h takes rows 16w + 2i + h, its lane l owns columns
    // 8l … 8l+7 (one 16-byte read), so a row block's amax is a 16-lane butterfly.
    const int hl = lane & 15, half = lane >> 4;
    float w8[8];
    {
      const float4 wa = *reinterpret_cast<const float4*>(wb + hl * 8);
      const float4 wc = *reinterpret_cast<const float4*>(wb + hl * 8 + 4);
      w8[0] = wa.x; w8[1] = wa.y; w8[2] = wa.z; w8[3] = wa.w; w8[4] = wc.x; w8[5] = wc.y; w8[6] = wc.z; w8[7] = wc.w;
    }
    float cm[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 2
    for (int i = 0; i < 8; ++i) {
      const int r = warp * 16 + 2 * i + half;
      const float rv = rinv[r];
      const Vec16 raw = *reinterpret_cast<const Vec16*>(t + r * 128 + hl * 8);
      float y[8];
      float amax = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        y[e] = __fmul_rn(__fmul_rn(vec_get<bf16>(raw, e), rv), w8[e]);
        cm[e] = fmaxf(cm[e], fabsf(y[e]));
        amax = fmaxf(amax, fabsf(y[e]));
      }
      if (MODE == 2) {
        amax = warp_max<16>(amax);
        if (r < valid) {
          const Quantizer<ROUND> quant(block_scale<ROUND>(amax));
          uint2 out;
          out.x = e4m3x4(quant(y[0]), quant(y[1]), quant(y[2]), quant(y[3]));
          out.y = e4m3x4(quant(y[4]), quant(y[5]), quant(y[6]), quant(y[7]));
          *reinterpret_cast<uint2*>(a.q + static_cast<i64>(m0 + r) * N + col0 + b * 128 + hl * 8) = out;
          if (hl == 0) rscale[b * ROWS + r] = quant.s;
        }
      }
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) cm[e] = fmaxf(cm[e], __shfl_xor_sync(0xffffffffu, cm[e], 16));  // both half-warps
    if (half == 0) {
      float* dst = colmax + warp * 128 + hl * 8;
      *reinterpret_cast<float4*>(dst) = make_float4(cm[0], cm[1], cm[2], cm[3]);
      *reinterpret_cast<float4*>(dst + 4) = make_float4(cm[4], cm[5], cm[6], cm[7]);
    }
    __syncthreads();
    if (threadIdx.x < 128) {
      float m = 0.f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) m = fmaxf(m, colmax[w * 128 + threadIdx.x]);
      const float sc = block_scale<ROUND>(m);
      colscale[threadIdx.x] = sc;
      a.qT_scale[tb * N + col0 + b * 128 + threadIdx.x] = sc;
    }
    __syncthreads();

    // Column pass: 64 column pairs × 8 chunks of 16 tokens; lanes take consecutive pairs (conflict-free 4-byte reads).
    for (int item = threadIdx.x; item < 64 * 8; item += THREADS) {
      const int p = item & 63, k = item >> 6;
      const int r0 = k * 16;
      if (r0 >= valid) continue;
      const Quantizer<ROUND> q0(colscale[2 * p]), q1(colscale[2 * p + 1]);
      const float w0 = wb[2 * p], w1 = wb[2 * p + 1];
      u32 c0[4], c1[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float4 rv = *reinterpret_cast<const float4*>(rinv + r0 + j * 4);
        const float rr[4] = {rv.x, rv.y, rv.z, rv.w};
        float y0[4], y1[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const u32 raw = *reinterpret_cast<const u32*>(t + (r0 + j * 4 + i) * 128 + 2 * p);
          y0[i] = q0(__fmul_rn(__fmul_rn(__uint_as_float(raw << 16), rr[i]), w0));
          y1[i] = q1(__fmul_rn(__fmul_rn(__uint_as_float(raw & 0xffff0000u), rr[i]), w1));
        }
        c0[j] = e4m3x4(y0[0], y0[1], y0[2], y0[3]);
        c1[j] = e4m3x4(y1[0], y1[1], y1[2], y1[3]);
      }
      const int n = col0 + b * 128 + 2 * p;
      u8* d0 = a.qT + static_cast<i64>(n) * a.M + m0 + r0;
      u8* d1 = d0 + a.M;
      if (aligned16 && r0 + 16 <= valid) {
        store16(d0, Vec16{{c0[0], c0[1], c0[2], c0[3]}});
        store16(d1, Vec16{{c1[0], c1[1], c1[2], c1[3]}});
      } else {
        for (int i = 0; i < 16 && r0 + i < valid; ++i) {
          d0[i] = static_cast<u8>(c0[i >> 2] >> ((i & 3) * 8));
          d1[i] = static_cast<u8>(c1[i >> 2] >> ((i & 3) * 8));
        }
      }
    }
    __syncthreads();  // the buffer is restaged two blocks later
  }

  // Row-wise scales, M-major: for block b the 128 rows are contiguous.
  if (MODE == 2) {
    for (int i = threadIdx.x; i < CB * ROWS; i += THREADS) {
      const int b = i / ROWS, r = i % ROWS;
      if (r < valid) a.q_scale[static_cast<i64>(col0 / 128 + b) * a.M + m0 + r] = rscale[i];
    }
    if (S > 1) cluster_wait();
  }
}

}  // namespace kiln
