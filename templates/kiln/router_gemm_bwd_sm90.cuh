// kiln/router_gemm_bwd_sm90.cuh — Hopper (sm_90a) backward of the fp32 router GEMM on warpgroup MMAs (wgmma).
//
//   dx[t, k] = Σ_e g[t, e] · w[e, k]      (dx bf16)          dw[e, k] = Σ_t g[t, e] · x[t, k]      (dw fp32)
//
// g is fp32; each of its values enters the MMAs as bf16 hi + lo (router_gemm.cuh explains the split). Per reduction
// chunk: cp.async copies the fp32 g tile (plain rows) and the bf16 operand tile (w for dx, x for dw: N contiguous, so
// stored N-major in 128-byte-swizzled atoms of 64 columns) into a STAGES-deep ring; all threads then split the g tile
// into bf16 hi and lo tiles in the swizzled layout wgmma reads (dx: K-major, g's reduction axis e contiguous; dw:
// M-major, gᵀ's M axis e contiguous) in a double buffer, and each warpgroup issues its hi and lo wgmmas for the chunk
// (both operands from shared memory, fully asynchronous) while the next chunk streams in; one chunk of MMAs stays in
// flight. Epilogue as in the forward: accumulators → shared memory → 16-byte stores, masked.
#pragma once
#include "kiln/router_gemm_sm90.cuh"

namespace kiln {
namespace rg90 {

// N-major (or M-major) operand, 128-byte swizzle: atoms of 64 N-columns × `rows` reduction rows (rows·128 bytes,
// LBO apart), 8-row groups 1024 bytes apart (SBO).
__device__ __forceinline__ u64 desc_sw128_mn(u32 smem_byte_addr, u32 atom_bytes) {
  u64 d = 0;
  d |= static_cast<u64>((smem_byte_addr & 0x3FFFF) >> 4);
  d |= static_cast<u64>((atom_bytes >> 4) & 0x3FFF) << 16;  // LBO: next 64-column atom
  d |= static_cast<u64>(1024 >> 4) << 32;                   // SBO: next 8 reduction rows
  d |= static_cast<u64>(1) << 62;
  return d;
}

// d[64 × 64] += A · B, both from shared memory; TA/TB: 1 = M-/N-major.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(1), "n"(TA), "n"(TB));
}

// d[64 × 128] += A · B, both from shared memory; TA/TB: 1 = M-/N-major.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, %67, %68;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(1), "n"(TA), "n"(TB));
}

// d[64 × 256] += A · B, both from shared memory; TA/TB: 1 = M-/N-major.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_n256(float (&d)[128], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, %131, %132;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(a), "l"(b), "r"(1), "n"(TA), "n"(TB));
}

template <int N, int TA, int TB>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], u64 a, u64 b) {
  if constexpr (N == 256) wgmma_ss_n256<TA, TB>(d, a, b);
  else if constexpr (N == 128) wgmma_ss_n128<TA, TB>(d, a, b);
  else wgmma_ss_n64<TA, TB>(d, a, b);
}

// 8 fp32 → 8 bf16 hi parts and 8 bf16 residuals (16 bytes each).
__device__ __forceinline__ void split8(const Vec16& v0, const Vec16& v1, Vec16& hi, Vec16& lo) {
  rg::split_bf16x2(__uint_as_float(v0.w[0]), __uint_as_float(v0.w[1]), hi.w[0], lo.w[0]);
  rg::split_bf16x2(__uint_as_float(v0.w[2]), __uint_as_float(v0.w[3]), hi.w[1], lo.w[1]);
  rg::split_bf16x2(__uint_as_float(v1.w[0]), __uint_as_float(v1.w[1]), hi.w[2], lo.w[2]);
  rg::split_bf16x2(__uint_as_float(v1.w[2]), __uint_as_float(v1.w[3]), hi.w[3], lo.w[3]);
}
// kiln/ptx.cuh's, under the names router_gemm_bwd_tma.cuh's kernels call (rg90::…).
using kiln::lds16;
using kiln::sts16;

// Byte offset of 16-byte piece j (0..7) of row r in a 128-byte-swizzled tile whose rows are 128 bytes.
__device__ __forceinline__ int swz(int r, int j) { return r * 128 + ((j ^ (r & 7)) << 4); }

// Stages the accumulators of warpgroup wg's m64 blocks (MT of them, block mb = wg·MT + mt covering tile rows
// 64·mb…) as OutT into a row-major tile at `tile` (pitch bytes a row): register i of a thread (lane l of warp v of
// its warpgroup) holds row 16v + l/4 + 8·((i/2) & 1) and column 8·(i/4) + 2·(l & 3) + (i & 1).
template <int MT, int N, typename OutT>
__device__ __forceinline__ void stage_acc(const float (&acc)[MT][N / 2], u32 tile, int pitch, int wg) {
  const int tid = threadIdx.x & 127, warp = tid >> 5, lane = tid & 31;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < N / 2; i += 2) {
      const int r = (wg * MT + mt) * 64 + warp * 16 + (lane >> 2) + 8 * ((i >> 1) & 1);
      const int c = 8 * (i >> 2) + 2 * (lane & 3);
      if constexpr (sizeof(OutT) == 4) {
        asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(tile + r * pitch + c * 4), "f"(acc[mt][i]),
                     "f"(acc[mt][i + 1]) : "memory");
      } else {
        const u32 packed = cvt_bf16x2(acc[mt][i], acc[mt][i + 1]);
        asm volatile("st.shared.u32 [%0], %1;" ::"r"(tile + r * pitch + c * 2), "r"(packed) : "memory");
      }
    }
}

template <int MT, int R>
__device__ __forceinline__ void fence_acc(float (&acc)[MT][R]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) fence_regs(acc[mt]);
}

}  // namespace rg90

// ---- dx: CTA = NWG warpgroups × 64 tokens, BN hidden columns; reduction over E in chunks of 64 ------------------
// Grid (ceil(T/BM), ceil(K/BN)), NWG·128 threads. Shared memory (host recipe): 1 KiB alignment slack, the ring
// (g tile [BM][64] fp32, w tile 64 × BN N-major), then the hi/lo tiles ([BM][64] bf16 K-major each, two buffers).
template <int K, int E, int BN, int NWG, int STAGES>
__global__ void __launch_bounds__(NWG * 128, 1) router_gemm_dx_sm90_kernel(const RouterGemmDxArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BM = 64 * NWG, BK = 64, THREADS = NWG * 128;
  constexpr int A_RAW = BM * BK * 4, B_BYTES = BK * BN * 2, STAGE = A_RAW + B_BYTES, CVT = BM * 128;
  constexpr int ATOM_B = BK * 128;  // one 64-column atom of the w tile
  constexpr int CHUNKS = (E + BK - 1) / BK;
  static_assert(BN % 64 == 0 && BN <= 256, "BN: 64, 128 or 256");

  extern __shared__ __align__(16) char smem_raw[];
  const u32 raw = static_cast<u32>(__cvta_generic_to_shared(smem_raw));
  const u32 base = (raw + 1023u) & ~1023u;
  const u32 cvt_base = base + STAGES * STAGE;
  const int tid = threadIdx.x, wg = tid / 128;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int rows_valid = a.T - m0;
  const char* g = reinterpret_cast<const char*>(a.g);
  const char* w = static_cast<const char*>(a.w);
  const i64 gld = a.g_stride * 4;
  char* smem = smem_raw + (base - raw);

  auto load = [&](int s, int kc) {
    char* sa = smem + s * STAGE;
    char* sb = sa + A_RAW;
    const int e0 = kc * BK;
#pragma unroll
    for (int it = 0; it < BM * 16 / THREADS; ++it) {  // g rows: 16 pieces of 4 fp32
      const int i = it * THREADS + tid, r = i >> 4, c = i & 15;
      const bool ok = r < rows_valid && e0 + c * 4 < E;
      cp_async16(sa + r * 256 + c * 16, ok ? g + (m0 + r) * gld + (e0 + c * 4) * 4 : g, ok);
    }
#pragma unroll
    for (int it = 0; it < BK * (BN / 8) / THREADS; ++it) {  // w rows e0.., N-major swizzled atoms
      const int i = it * THREADS + tid, kk = i / (BN / 8), cidx = i % (BN / 8);
      const bool ok = e0 + kk < E && n0 + cidx * 8 < K;
      cp_async16(sb + (cidx >> 3) * ATOM_B + rg90::swz(kk, cidx & 7),
                 ok ? w + static_cast<i64>(e0 + kk) * K * 2 + (n0 + cidx * 8) * 2 : w, ok);
    }
  };

  float acc[1][BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[0][i] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < CHUNKS) load(s, s);
    cp_async_commit();
  }
  for (int kc = 0; kc < CHUNKS; ++kc) {
    cp_async_wait_group<STAGES - 2>();
    if (!(a.flags & kRgSkipCopyFence)) fence_proxy_async();
    __syncthreads();
    const u32 sa = base + (kc % STAGES) * STAGE, sb = sa + A_RAW;
    const u32 hi = cvt_base + (kc & 1) * 2 * CVT, lo = hi + CVT;
#pragma unroll
    for (int it = 0; it < BM * 8 / THREADS; ++it) {  // split 8 fp32 at a time into the K-major swizzled tiles
      const int i = it * THREADS + tid, r = i >> 3, j = i & 7;
      Vec16 h, l;
      rg90::split8(rg90::lds16(sa + r * 256 + j * 32), rg90::lds16(sa + r * 256 + j * 32 + 16), h, l);
      rg90::sts16(hi + rg90::swz(r, j), h);
      rg90::sts16(lo + rg90::swz(r, j), l);
    }
    if (!(a.flags & kRgSkipSplitFence)) fence_proxy_async();
    __syncthreads();
    rg90::fence_acc(acc);
    rg90::wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      const u64 b = rg90::desc_sw128_mn(sb + ks * 2048, ATOM_B);
      rg90::wgmma_ss<BN, 0, 1>(acc[0], rg90::desc_sw128(hi + wg * 64 * 128 + ks * 32), b);
      rg90::wgmma_ss<BN, 0, 1>(acc[0], rg90::desc_sw128(lo + wg * 64 * 128 + ks * 32), b);
    }
    rg90::wgmma_commit();
    rg90::wgmma_wait<1>();
    rg90::fence_acc(acc);
    __syncthreads();
    const int next = kc + STAGES - 1;
    if (next < CHUNKS) load(next % STAGES, next);
    cp_async_commit();
  }
  rg90::wgmma_wait<0>();
  rg90::fence_acc(acc);
  cp_async_wait_group<0>();
  __syncthreads();

  constexpr int PITCH = (BN + 8) * 2;
  rg90::stage_acc<1, BN, bf16>(acc, base, PITCH, wg);
  __syncthreads();
  constexpr int CPR = BN * 2 / 16;
  const int cv = (K - n0) * 2;
  char* out = static_cast<char*>(a.dx) + (static_cast<i64>(m0) * a.dx_stride + n0) * 2;
  for (int i = tid; i < BM * CPR; i += THREADS) {
    const int r = i / CPR, c = i - r * CPR;
    if (r < rows_valid && c * 16 < cv)
      store16(out + r * a.dx_stride * 2 + c * 16, *reinterpret_cast<const Vec16*>(smem + r * PITCH + c * 16));
  }
#else
  __trap();
#endif
}

// ---- dw: CTA = NWG warpgroups × MT × 64 experts, BN hidden columns, over one T range in chunks of 32 ---------------
// Grid (ceil(K/BN)·ceil(E/BM), splits), NWG·128 threads. Shared memory: slack, the ring (g tile [32][BM] fp32,
// x tile 32 × BN N-major), the hi/lo tiles (32 × BM M-major each, two buffers).
template <int K, int E, int BN, int NWG, int MT, int STAGES>
__global__ void __launch_bounds__(NWG * 128, 1) router_gemm_dw_sm90_kernel(const RouterGemmDwArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BM = 64 * NWG * MT, BK = 32, THREADS = NWG * 128;
  constexpr int ATOM = BK * 128;  // a 64-column atom of any tile of this kernel (32 rows × 128 bytes)
  constexpr int A_RAW = BK * BM * 4, B_BYTES = (BN / 64) * ATOM, STAGE = A_RAW + B_BYTES, CVT = (BM / 64) * ATOM;
  constexpr int TILES_N = (K + BN - 1) / BN;
  static_assert(BN % 64 == 0 && BN <= 256, "BN: 64, 128 or 256");

  extern __shared__ __align__(16) char smem_raw[];
  const u32 raw = static_cast<u32>(__cvta_generic_to_shared(smem_raw));
  const u32 base = (raw + 1023u) & ~1023u;
  const u32 cvt_base = base + STAGES * STAGE;
  const int tid = threadIdx.x, wg = tid / 128;
  const int n0 = (blockIdx.x % TILES_N) * BN, m0 = (blockIdx.x / TILES_N) * BM;
  const int t0 = blockIdx.y * a.split_rows;
  const int rows = a.T - t0 < a.split_rows ? a.T - t0 : a.split_rows;
  const int chunks = (rows + BK - 1) / BK;
  const char* g = reinterpret_cast<const char*>(a.g);
  const char* x = static_cast<const char*>(a.x);
  const i64 gld = a.g_stride * 4, xld = a.x_stride * 2;
  char* smem = smem_raw + (base - raw);

  auto load = [&](int s, int kc) {
    char* sa = smem + s * STAGE;
    char* sb = sa + A_RAW;
    const int r0 = kc * BK;  // rows of this chunk, relative to t0
#pragma unroll
    for (int it = 0; it < BK * (BM / 4) / THREADS; ++it) {  // g rows t: BM/4 pieces of 4 fp32
      const int i = it * THREADS + tid, tt = i / (BM / 4), c = i % (BM / 4);
      const bool ok = r0 + tt < rows && m0 + c * 4 < E;
      cp_async16(sa + tt * (BM * 4) + c * 16, ok ? g + (t0 + r0 + tt) * gld + (m0 + c * 4) * 4 : g, ok);
    }
#pragma unroll
    for (int it = 0; it < (BK * (BN / 8) + THREADS - 1) / THREADS; ++it) {  // x rows t, N-major swizzled atoms
      const int i = it * THREADS + tid, tt = i / (BN / 8), cidx = i % (BN / 8);
      if ((BK * (BN / 8)) % THREADS != 0 && i >= BK * (BN / 8)) break;
      const bool ok = r0 + tt < rows && n0 + cidx * 8 < K;
      cp_async16(sb + (cidx >> 3) * ATOM + rg90::swz(tt, cidx & 7), ok ? x + (t0 + r0 + tt) * xld + (n0 + cidx * 8) * 2 : x,
                 ok);
    }
  };

  float acc[MT][BN / 2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[mt][i] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < chunks) load(s, s);
    cp_async_commit();
  }
  for (int kc = 0; kc < chunks; ++kc) {
    cp_async_wait_group<STAGES - 2>();
    if (!(a.flags & kRgSkipCopyFence)) fence_proxy_async();
    __syncthreads();
    const u32 sa = base + (kc % STAGES) * STAGE, sb = sa + A_RAW;
    const u32 hi = cvt_base + (kc & 1) * 2 * CVT, lo = hi + CVT;
#pragma unroll
    for (int it = 0; it < (BK * (BM / 8) + THREADS - 1) / THREADS; ++it) {  // split into the M-major tiles
      const int i = it * THREADS + tid, tt = i / (BM / 8), cidx = i % (BM / 8);
      if ((BK * (BM / 8)) % THREADS != 0 && i >= BK * (BM / 8)) break;
      Vec16 h, l;
      rg90::split8(rg90::lds16(sa + tt * (BM * 4) + cidx * 32), rg90::lds16(sa + tt * (BM * 4) + cidx * 32 + 16), h, l);
      const int off = (cidx >> 3) * ATOM + rg90::swz(tt, cidx & 7);
      rg90::sts16(hi + off, h);
      rg90::sts16(lo + off, l);
    }
    if (!(a.flags & kRgSkipSplitFence)) fence_proxy_async();
    __syncthreads();
    rg90::fence_acc(acc);
    rg90::wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      const u64 b = rg90::desc_sw128_mn(sb + ks * 2048, ATOM);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int mb = wg * MT + mt;  // 64-expert block: one M-major atom
        rg90::wgmma_ss<BN, 1, 1>(acc[mt], rg90::desc_sw128_mn(hi + mb * ATOM + ks * 2048, ATOM), b);
        rg90::wgmma_ss<BN, 1, 1>(acc[mt], rg90::desc_sw128_mn(lo + mb * ATOM + ks * 2048, ATOM), b);
      }
    }
    rg90::wgmma_commit();
    rg90::wgmma_wait<1>();
    rg90::fence_acc(acc);
    __syncthreads();
    const int next = kc + STAGES - 1;
    if (next < chunks) load(next % STAGES, next);
    cp_async_commit();
  }
  rg90::wgmma_wait<0>();
  rg90::fence_acc(acc);
  cp_async_wait_group<0>();
  __syncthreads();

  constexpr int PITCH = (BN + 8) * 4;
  rg90::stage_acc<MT, BN, float>(acc, base, PITCH, wg);
  __syncthreads();
  constexpr int CPR = BN * 4 / 16;
  const int cv = (K - n0) * 4;
  float* outp = gridDim.y == 1 ? a.dw : a.partial + static_cast<i64>(blockIdx.y) * E * K;
  char* out = reinterpret_cast<char*>(outp + static_cast<i64>(m0) * K + n0);
  for (int i = tid; i < BM * CPR; i += THREADS) {
    const int r = i / CPR, c = i - r * CPR;
    if (r < E - m0 && c * 16 < cv)
      store16(out + static_cast<i64>(r) * K * 4 + c * 16, *reinterpret_cast<const Vec16*>(smem + r * PITCH + c * 16));
  }
#else
  __trap();
#endif
}

}  // namespace kiln
