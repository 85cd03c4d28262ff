// kiln/fp8_gemm.cuh — GEMM on the triton_ops uint8 "FP8 compatibility format" (spec: ../shared/spec/triton-ops.md §5):
// c = (448/127)² / (s_a·s_b) · Σ_k (q_a − 128)(q_b − 128), exact in integers, one fp32 multiply, one rounding.
//
// The codes of a go to the tensor cores as they are (unsigned 8-bit) and bᵀ as int8 t = q_b − 128 (the prep kernel:
// transpose, xor 0x80, and the column sums Σ_k t[n][k]): Σ q_a·t = Σ (q_a − 128)·t + 128·Σ_k t, so the epilogue
// subtracts 128·colsum[n] from the s32 accumulator — exact while 255·127·K < 2³¹ (K ≤ 66 311; the host checks).
// Kernel = the gated MLP's skeleton (templates/kiln/gated_mlp.cuh): producer warpgroup streaming K in 128-byte chunks
// of the a tile [128 rows] and the bᵀ tile [BN rows] by TMA through a STAGES-deep ring, two consumer warpgroups of 64
// rows each issuing wgmma.m64nBNk32.s32.u8.s8 (BN 64, 128 or 256; 4 a chunk), persistent grid, tiles rastered in groups of 8 row tiles;
// epilogue: v = fp32(acc − 128·colsum[n]) · α (+ bias[n] in fp32, where given), α = fp32((448²/127²) / (s_a·s_b))
// (fp64), rounded once to the output
// dtype — for 16-bit outputs with 16-byte-aligned rows and N % 8 == 0 staged by stmatrix and stored by TMA, otherwise
// from the registers.
#pragma once
#include "kiln/common.cuh"
#include "kiln/fp8_gemm_args.h"
#include "kiln/mbarrier.cuh"
#include "kiln/ptx.cuh"
#include "kiln/tile_pipeline.cuh"
#include "kiln/wgmma.cuh"

namespace kiln {

// Grid (ceil(N / 128), ceil(K / 256)), 256 threads: 128 columns of b × 256 rows, in 4 passes of 64 rows.
// Load: thread (ng = lane % 16, kq = 2·warp + lane / 16) reads rows 4kq … 4kq + 3, columns 8ng … 8ng + 7 (8 bytes a
// row; a half-warp reads 128 contiguous bytes of a row) and transposes each 4 × 4 byte block with byte permutes into
// 8 words, word i = the 4 k-bytes of column 8ng + i. Those go to shared memory as [n][16 words], the word index
// XOR-swizzled by ng (a store instruction touches 16 rows: 2-way bank conflicts at most). Store: thread (n = tid / 16
// + 16r, kq = tid % 16) reads one word (conflict-free) and writes it to bᵀ row n (a half-warp: 64 contiguous bytes),
// after xor 0x80 (codes → int8); its Σ over the 4 bytes (dp4a) accumulates over the passes and is reduced over the
// half-warp, then one atomicAdd per column and CTA (integers: the same sum in any order).
__device__ __forceinline__ void fp8_transpose4x4(u32 x0, u32 x1, u32 x2, u32 x3, u32 (&o)[4]) {
  const u32 t0 = __byte_perm(x0, x1, 0x5140), t1 = __byte_perm(x0, x1, 0x7362);
  const u32 t2 = __byte_perm(x2, x3, 0x5140), t3 = __byte_perm(x2, x3, 0x7362);
  o[0] = __byte_perm(t0, t2, 0x5410);
  o[1] = __byte_perm(t0, t2, 0x7632);
  o[2] = __byte_perm(t1, t3, 0x5410);
  o[3] = __byte_perm(t1, t3, 0x7632);
}

__global__ void __launch_bounds__(256) fp8_gemm_b_prep_kernel(const __grid_constant__ Fp8BPrepArgs a) {
  __shared__ u32 tile[128 * 16];
  const int t = threadIdx.x, lane = t & 31;
  const int ng = lane & 15, kq = 2 * (t >> 5) + (lane >> 4);
  const int n0 = blockIdx.x * 128, kb = blockIdx.y * 256;
  const bool vec = (a.N & 7) == 0;
  int sum[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int pass = 0; pass < 4; ++pass) {
    const int k0 = kb + 64 * pass;
    if (k0 >= a.K) break;
    u32 w[4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int k = k0 + 4 * kq + j, n = n0 + 8 * ng;
      const unsigned char* row = a.b + static_cast<i64>(k) * a.N;
      if (k < a.K && vec && n + 8 <= a.N) {
        const uint2 v = __ldg(reinterpret_cast<const uint2*>(row + n));
        w[j][0] = v.x;
        w[j][1] = v.y;
      } else {
        u32 b8[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) b8[i] = (k < a.K && n + i < a.N) ? static_cast<u32>(__ldg(row + n + i)) : 128u;
        w[j][0] = b8[0] | (b8[1] << 8) | (b8[2] << 16) | (b8[3] << 24);
        w[j][1] = b8[4] | (b8[5] << 8) | (b8[6] << 16) | (b8[7] << 24);
      }
    }
    if (pass > 0) __syncthreads();  // the previous pass's reads of the tile are done
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      u32 o[4];
      fp8_transpose4x4(w[0][h], w[1][h], w[2][h], w[3][h], o);
#pragma unroll
      for (int i = 0; i < 4; ++i) tile[(8 * ng + 4 * h + i) * 16 + (kq ^ ng)] = o[i];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      const int nl = (t >> 4) + 16 * r, q = t & 15, n = n0 + nl, k = k0 + 4 * q;
      const u32 v = tile[nl * 16 + (q ^ (nl >> 3))] ^ 0x80808080u;
      sum[r] = __dp4a(static_cast<int>(v), 0x01010101, sum[r]);  // rows past K hold 128: add 0
      if (n < a.N && k < a.K) *reinterpret_cast<u32*>(a.bt + static_cast<i64>(n) * a.K + k) = v;
    }
  }
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    int v = sum[r];
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int n = n0 + (t >> 4) + 16 * r;
    if ((t & 15) == 0 && n < a.N) atomicAdd(a.colsum + n, v);
  }
}

// Grid ceil(N / 8), 256 threads: a warp a row of w [N, K] (K-major codes), 16 bytes a lane a step.
__global__ void __launch_bounds__(256) fp8_gemm_b_prep_nk_kernel(const __grid_constant__ Fp8BPrepNkArgs a) {
  const int n = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (n >= a.N) return;
  const uint4* src = reinterpret_cast<const uint4*>(a.w + static_cast<i64>(n) * a.K);
  uint4* dst = reinterpret_cast<uint4*>(a.bt + static_cast<i64>(n) * a.K);
  int sum = 0;
  for (int i = lane; i < a.K / 16; i += 32) {
    uint4 v = __ldg(src + i);
    v.x ^= 0x80808080u;
    v.y ^= 0x80808080u;
    v.z ^= 0x80808080u;
    v.w ^= 0x80808080u;
    sum = __dp4a(static_cast<int>(v.x), 0x01010101, sum);
    sum = __dp4a(static_cast<int>(v.y), 0x01010101, sum);
    sum = __dp4a(static_cast<int>(v.z), 0x01010101, sum);
    sum = __dp4a(static_cast<int>(v.w), 0x01010101, sum);
    dst[i] = v;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) a.colsum[n] = sum;
}

__device__ __forceinline__ float fp8_gemm_bias(const Fp8GemmArgs& a, int col) {
  if (a.bias_dtype == 2) return __ldg(static_cast<const float*>(a.bias) + col);
  const u16 bits = __ldg(static_cast<const unsigned short*>(a.bias) + col);
  return a.bias_dtype == 0 ? to_float(bf16{bits}) : to_float(f16{bits});
}

// Grid: 1-D persistent (each CTA takes every gridDim.x-th tile), 384 threads, dynamic shared memory 1 KiB slack +
// STAGES × (16 KiB a tile + BN·128 B bᵀ tile) + (16-bit TO: two 64 × BN staging buffers) + 2·STAGES mbarriers.
template <int N, int K, typename TO, int BN, int STAGES>
__global__ void __launch_bounds__(384, 1) fp8_gemm_kernel(const __grid_constant__ Fp8GemmArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(BN == 64 || BN == 128 || BN == 256, "BN: 64, 128 or 256 columns a CTA");
  constexpr int BM = 128, KB = 128, CHUNKS = (K + KB - 1) / KB;
  constexpr int A_BYTES = BM * 128, B_BYTES = BN * 128, STAGE = A_BYTES + B_BYTES;
  constexpr int NT = (N + BN - 1) / BN, GM = 8;
  constexpr u32 TX = STAGE;
  constexpr int STG = sizeof(TO) == 2 ? 64 * BN * 2 : 0;

  extern __shared__ __align__(16) char smem_raw[];
  const u32 base = (smem_u32(smem_raw) + 1023u) & ~1023u, stg = base + STAGES * STAGE, bars = stg + 2 * STG;
  const int tid = threadIdx.x, wg = tid / 128;
  const int tiles = a.m_tiles * NT;
  auto origin = [&](int t, int& m0, int& n0) { tp::grouped_origin<GM, NT, BM, BN>(t, a.m_tiles, m0, n0); };

  if (tid == 0) tp::ring_init<STAGES>(bars, 2);  // both consumer warpgroups release every stage
  __syncthreads();

  if (wg == 0) {  // producer
    setmaxnreg_dec<40>();
    if (tid == 0) {
      prefetch_tmap(&a.tma);
      prefetch_tmap(&a.tmb);
      tp::RingPos<STAGES> rp;
      for (int t = static_cast<int>(blockIdx.x); t < tiles; t += static_cast<int>(gridDim.x)) {
        int m0, n0;
        origin(t, m0, n0);
        for (int kc = 0; kc < CHUNKS; ++kc) {
          mbar_wait(bars + 8 * (STAGES + rp.s), rp.phase ^ 1);
          const u32 full = bars + 8 * rp.s, sa = base + rp.s * STAGE;
          mbar_arrive_expect_tx(full, TX);
          tma_load_2d(sa, &a.tma, full, kc * KB, m0);
          tma_load_2d(sa + A_BYTES, &a.tmb, full, kc * KB, n0);
          rp.next();
        }
      }
    }
  } else {  // consumers
    setmaxnreg_inc<232>();
    const int wm = wg - 1, lane = tid & 31, warp = (tid & 127) >> 5;
    const float alpha = static_cast<float>((200704.0 / 16129.0) /
                                           (static_cast<double>(__ldg(a.a_scale)) * static_cast<double>(__ldg(a.b_scale))));
    TO* out = static_cast<TO*>(a.out);
    tp::RingPos<STAGES> rp;
    for (int t = static_cast<int>(blockIdx.x); t < tiles; t += static_cast<int>(gridDim.x)) {
      int m0, n0;
      origin(t, m0, n0);
      int acc[BN / 2];
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) acc[i] = 0;
      // The tile's column sums, loaded before its MMAs so that their latency hides under them (loaded in the
      // epilogue they stalled it: session 31, ncu); at BN = 256 the 64 more registers would not fit beside 128 sums.
      constexpr int CS = BN <= 128 ? BN / 4 : 1;
      int cs[CS];
      if constexpr (BN <= 128) {
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          const int col = n0 + 8 * j + 2 * (lane & 3);
          cs[2 * j] = col < N ? __ldg(a.colsum + col) : 0;
          cs[2 * j + 1] = col + 1 < N ? __ldg(a.colsum + col + 1) : 0;
        }
      }
      int prev = -1;
      for (int kc = 0; kc < CHUNKS; ++kc) {
        mbar_wait(bars + 8 * rp.s, rp.phase);
        const u32 sa = base + rp.s * STAGE + wm * 64 * 128, sb = base + rp.s * STAGE + A_BYTES;
        wgmma::fence_regs(acc);
        wgmma::wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
          if constexpr (BN == 64)
            wgmma::mma_u8s8_n64(acc, wgmma::desc_sw128(sa + ks * 32), wgmma::desc_sw128(sb + ks * 32));
          else if constexpr (BN == 128)
            wgmma::mma_u8s8_n128(acc, wgmma::desc_sw128(sa + ks * 32), wgmma::desc_sw128(sb + ks * 32));
          else
            wgmma::mma_u8s8_n256(acc, wgmma::desc_sw128(sa + ks * 32), wgmma::desc_sw128(sb + ks * 32));
        }
        wgmma::wgmma_commit();
        wgmma::wgmma_wait<1>();
        wgmma::fence_regs(acc);
        if (prev >= 0 && (tid & 127) == 0) mbar_arrive(bars + 8 * (STAGES + prev));
        prev = rp.s;
        rp.next();
      }
      wgmma::wgmma_wait<0>();
      wgmma::fence_regs(acc);
      if ((tid & 127) == 0) mbar_arrive(bars + 8 * (STAGES + prev));
      // Register i of lane l: row 16·warp + l/4 + 8·((i/2) & 1), columns 8·(i/4) + 2·(l & 3) + {0, 1}. The values
      // replace the sums in place (fp32 bits in acc): 128 more registers would not fit at BN = 256.
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        const int col = n0 + 8 * j + 2 * (lane & 3);
        int c0, c1;
        if constexpr (BN <= 128) {
          c0 = cs[2 * j];
          c1 = cs[2 * j + 1];
        } else {
          c0 = col < N ? __ldg(a.colsum + col) : 0;
          c1 = col + 1 < N ? __ldg(a.colsum + col + 1) : 0;
        }
        float b0 = 0.0f, b1 = 0.0f;
        const bool bias = a.bias != nullptr;
        if (bias) {
          b0 = col < N ? fp8_gemm_bias(a, col) : 0.0f;
          b1 = col + 1 < N ? fp8_gemm_bias(a, col + 1) : 0.0f;
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float v0 = __fmul_rn(static_cast<float>(acc[4 * j + 2 * h] - 128 * c0), alpha);
          float v1 = __fmul_rn(static_cast<float>(acc[4 * j + 2 * h + 1] - 128 * c1), alpha);
          if (bias) {
            v0 = __fadd_rn(v0, b0);
            v1 = __fadd_rn(v1, b1);
          }
          acc[4 * j + 2 * h] = __float_as_int(v0);
          acc[4 * j + 2 * h + 1] = __float_as_int(v1);
        }
      }
      auto v = [&](int i) { return __int_as_float(acc[i]); };
      if constexpr (STG > 0) {
        if (a.staged) {
          tp::store_block_tma<BN>(stg + wm * STG, &a.tmo, wm, tid, lane, warp, m0, n0, a.M, N,
                                  [&](int i) { return pack2<TO>(v(i), v(i + 1)); });
          continue;
        }
      }
      const int row0 = m0 + wm * 64 + warp * 16 + (lane >> 2);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + 8 * h;
        if (row >= a.M) continue;
        TO* dst = out + static_cast<i64>(row) * a.out_stride;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          const int col = n0 + 8 * j + 2 * (lane & 3);
          if (col < N) dst[col] = from_float<TO>(v(4 * j + 2 * h));
          if (col + 1 < N) dst[col + 1] = from_float<TO>(v(4 * j + 2 * h + 1));
        }
      }
    }
    if constexpr (STG > 0)
      if (a.staged && (tid & 127) == 0) bulk_wait_read();
  }
#else
  __trap();  // sm_90a only (the host recipe never launches it elsewhere)
#endif
}

}  // namespace kiln
