// kiln/router_gemm_bwd_tma.cuh — Hopper (sm_90a) router GEMM backward: TMA, mbarrier rings, warp specialization.
//
//   dx[t, k] = Σ_e g[t, e] · w[e, k]   (dx bf16)            dw[e, k] = Σ_t g[t, e] · x[t, k]   (dw fp32)
//
// g is fp32. It enters the MMAs as bf16 g_hi = bf16(g) alone (SPLIT = 0) or as g_hi and g_lo = bf16(g − g_hi), both
// multiplied (SPLIT = 1: |g − g_hi − g_lo| ≤ 2⁻¹⁷·|g|, fp32-grade). Which product uses which is the host's policy.
//
// dx (router_gemm_dx_tma_kernel): CTA = producer warpgroup + 2 consumer warpgroups, persistent over tiles of 64
// tokens. Per tile the consumers read the g rows once (plain 16-byte loads), convert them to bf16 (hi, and lo) into
// the K-major 128-byte-swizzled A tile (all of E) in shared memory. The producer streams w in chunks of 64 experts ×
// 256 hidden columns (4 N-major swizzled atoms of 64 × 64 by TMA; a cluster of CM CTAs of consecutive token tiles
// multicasts them, each CTA fetching 4/CM atoms) through one STAGES ring, in the order (column block, expert chunk);
// each consumer takes 128 of the 256 columns of every chunk, and writes its finished 64 × 128 block through a
// staging tile with TMA stores.
//
// dw (router_gemm_dw_tma_kernel): CTA tile = 128 experts (a warpgroup per 64) × 256 hidden columns over one T range
// (split); the producer streams, per chunk of BK = 64 (or 32) tokens, the g tile (4 fp32 boxes of 32 experts, 128-byte swizzled) and the
// x tile (4 N-major atoms) by TMA. Each consumer builds its A fragments (gᵀ, 64 experts × 16 tokens per k16 step) in
// registers from the fp32 g tile — conflict-free scalar loads thanks to the swizzle — converts them to bf16 (hi,
// lo) and issues register-A wgmmas; the next chunk's g values are loaded while the current MMAs run. The T ranges of
// one tile form clusters of up to 4 (1, C, 1) (clusters of 8 did not all fit on the GPU at once: run of 04:00): each
// CTA stages its fp32 partial tile in shared memory, and CTA r adds rows [r·R, r·R + R) of the cluster's C partials
// in cluster-rank order (deterministic) through distributed shared memory and writes them — to dw, or with more than
// one cluster per tile to that group's partial, which router_gemm_dw_reduce_kernel adds in group order. C = 1 writes
// straight from registers.
//
// One launch (router_gemm_bwd_tma_kernel, precision standard): both kernels' producer and consumer loops are device
// functions; every CTA of dw's grid runs its dw role and then its dx tile, and the groups' partials are summed in the
// kernel (tagged flags, group order) under the dx role's column blocks.
#pragma once
#include "kiln/router_gemm_bwd_sm90.cuh"
#include "kiln/router_gemm_tma.cuh"

namespace kiln {
namespace rgt {

// d[64 × 256] += A[64 × 16] (registers: the m16n8k16 A fragment of this warp's 16 rows) · B[256 × 16]ᵀ (shared
// memory, N-major when TB = 1).
template <int TB>
__device__ __forceinline__ void wgmma_rs_n256(float (&d)[128], const u32 (&a)[4], u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, p, 1, 1, %134;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1), "n"(TB));
}

// fp16 twins of the bf16 wgmmas (m64nNk16, fp32 accumulators): the scaled one-pass backward (SPLIT = 2).
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_f16_n128(float (&d)[64], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, %67, %68;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(1), "n"(TA), "n"(TB));
}
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_f16_n256(float (&d)[128], u64 a, u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, %131, %132;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(a), "l"(b), "r"(1), "n"(TA), "n"(TB));
}
template <int N, int TA, int TB>
__device__ __forceinline__ void wgmma_ss_f16(float (&d)[N / 2], u64 a, u64 b) {
  if constexpr (N == 256) wgmma_ss_f16_n256<TA, TB>(d, a, b);
  else wgmma_ss_f16_n128<TA, TB>(d, a, b);
}
// d[64 × 256] += A[64 × 16] (registers, fp16) · B[256 × 16]ᵀ (shared memory, fp16, N-major when TB = 1).
template <int TB>
__device__ __forceinline__ void wgmma_rs_f16_n256(float (&d)[128], const u32 (&a)[4], u64 b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, p, 1, 1, %134;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1), "n"(TB));
}

// ---- power-of-two scales of the fp16 pass (SPLIT = 2) -------------------------------------------------------------
// A group's scale exponent s = clamp(⌊log2 amax⌋ − 14, −100, 100): amax·2^−s lies in [2¹⁴, 2¹⁵) (below fp16's 65504),
// every value ≥ amax·2⁻²⁸ stays a normal fp16 number (11 significant bits), and 2^±s is a normal fp32 number.
// amax comes from the bits of |v| of the finite values (NaN / ±inf skipped: they stay NaN / ±inf when scaled).
__device__ __forceinline__ u32 finite_abs_bits(float v) {
  const u32 a = __float_as_uint(v) & 0x7fffffffu;
  return a < 0x7f800000u ? a : 0u;
}
__device__ __forceinline__ int f32_scale_exp(u32 amax_bits) {
  const int s = static_cast<int>(amax_bits >> 23) - 127 - 14;
  return s < -100 ? -100 : (s > 100 ? 100 : s);
}
// The same from the bits of a bf16 |value| (15 bits).
__device__ __forceinline__ int bf16_scale_exp(u32 amax_bits) {
  const int s = static_cast<int>(amax_bits >> 7) - 127 - 14;
  return s < -100 ? -100 : (s > 100 ? 100 : s);
}
// Max of the finite |bf16| halves of a 32-bit word (bits, 15 each; NaN / ±inf count as 0).
__device__ __forceinline__ u32 bf16x2_finite_abs_max(u32 w) {
  const u32 lo = w & 0x7fffu, hi = (w >> 16) & 0x7fffu;
  const u32 l = lo < 0x7f80u ? lo : 0u, h = hi < 0x7f80u ? hi : 0u;
  return l > h ? l : h;
}
// A bf16x2 word → fp16x2 of its two values times f (a power of two).
__device__ __forceinline__ u32 bf16x2_to_f16x2(u32 w, float f) {
  return cvt_f16x2(__uint_as_float(w << 16) * f, __uint_as_float(w & 0xffff0000u) * f);
}

__device__ __forceinline__ void bar_sync_consumers() { asm volatile("bar.sync 1, 256;" ::: "memory"); }
// Named barrier 2 + j over the 128 threads of consumer warpgroup j.
__device__ __forceinline__ void bar_sync_wg(int j) { asm volatile("bar.sync %0, 128;" ::"r"(2 + j) : "memory"); }
// Rows [r0, r1) of the dw tile: the sum of the S (2–4) staged partial tiles of this cluster, added in cluster-rank
// order (the same bits whichever CTA adds), written to dw rows e0 + r, columns n0 …; 256 threads, `t` = 0 … 255.
// PITCH < 0: the staged rows unpadded (BN·4 bytes), their 16-byte pieces XOR-swizzled with the row (piece p of row r
// at p ^ (r & 7)).
template <int BN, int PITCH, int E, int K>
__device__ __forceinline__ void dw_cluster_reduce(float* dw, u32 base, int t, int r0, int r1, int e0, int n0, int S) {
  constexpr int CPR = BN / 4;
  auto off = [&](int i) {
    const int r = r0 + i / CPR;
    return PITCH < 0 ? r * (BN * 4) + (((i % CPR) ^ (r & 7)) << 4) : r * PITCH + (i % CPR) * 16;
  };
  auto emit = [&](int i, const Vec16& o) {
    const int r = r0 + i / CPR, c4 = i % CPR;
    if (r < r1 && e0 + r < E && n0 + c4 * 4 < K) store16(dw + static_cast<i64>(e0 + r) * K + n0 + c4 * 4, o);
  };
  // ceil(128 / S) rows a CTA (the caller's r1 − r0, or fewer for the last rank: emit skips rows past r1).
  if (S == 2) cluster_sum_rows<2, 256, 64 * CPR>(base, t, off, emit);
  else if (S == 3) cluster_sum_rows<3, 256, 43 * CPR>(base, t, off, emit);
  else cluster_sum_rows<4, 256, 32 * CPR>(base, t, off, emit);
}

// The producer's trace slots (measurement; RouterGemmDxTmaArgs::trace): globaltimer ns and SM clock at the CTA's
// entry, its SM, its first TMA issue (clock) and now (its last one).
__device__ __forceinline__ void trace_producer(u64* trace, u64 t0_ns, u64 t0_clk, u64 first_clk) {
  u32 sm;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  trace[kRgTraceStartNs] = t0_ns;
  trace[kRgTraceStartClk] = t0_clk;
  trace[kRgTraceSm] = sm;
  trace[kRgTraceProducerFirst] = first_clk;
  trace[kRgTraceProducerLast] = clk();
}

// tma_load_2d with an L2 cache policy (createpolicy).
__device__ __forceinline__ void tma_load_2d_evict_first(u32 dst, const void* tmap, u32 bar, int c0, int c1, u64 policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%3, "
      "%4}], [%2], %5;" ::"r"(dst),
      "l"(reinterpret_cast<u64>(tmap)), "r"(bar), "r"(c0), "r"(c1), "l"(policy)
      : "memory");
}

template <int R>
__device__ __forceinline__ void fence_u32(u32 (&r)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

}  // namespace rgt

// ---- dx ---------------------------------------------------------------------------------------------------------
// Whether the dx kernel stages its output blocks (two 16 KiB tiles) — where they fit next to the A tile and the ring
// (the host's smem recipe mirrors this).
// SPLIT: 0 = bf16(g), 1 = g hi + lo (two A tiles), 2 = fp16 with power-of-two scales (w16 / colf from
// router_gemm_w16_kernel; the row scales 2^s_t sit in the 1 KiB after the mbarriers).
__host__ __device__ constexpr bool router_gemm_dx_staged(int E, int STAGES, int SPLIT, int TM = 64) {
  return 1024 + (SPLIT == 1 ? 2 : 1) * ((E + 63) / 64) * TM * 128 + STAGES * 32768 + 16 * STAGES + 1024 + TM * 512 <=
         227 * 1024;
}

namespace rgt {
// The dx roles' tiling, shared by the producer and the consumers: units of TM tokens × one of a.parts column parts
// (runs of ceil(NCH / parts) 256-column blocks; the host gives TM = 128 two parts, and more parts than that where the
// token tiles alone would leave CTAs idle), chunks of 64 experts × BN = 256 columns as 4 N-major atoms of 64 × 64
// (PER_CTA of them fetched by each CTA of a multicast cluster of CM), A tile(s) of ceil(E/64) K-major atoms of TM
// rows. Unit groups: group grp takes part grp % parts of the token tiles (grp / parts)·CM + rank, so the CTAs of a
// multicast cluster always share their columns.
template <int K, int E, int CM, int SPLIT, int TM>
struct DxTile {
  static_assert(TM == 64 || (TM == 128 && CM == 1), "64-token tiles, or 128-token half-width units (no multicast)");
  static_assert(CM == 1 || CM == 2 || CM == 4, "cluster of 1, 2 or 4 CTAs");
  static_assert(E % 8 == 0 && E <= 256, "E: a multiple of 8 up to 256");
  static constexpr int BM = TM, BN = 256, ATOM = 64 * 128;
  static constexpr int NW = TM == 128 ? 256 : 128;  // columns of a chunk each consumer multiplies
  static constexpr int EC = (E + 63) / 64, NCH = (K + BN - 1) / BN;
  static constexpr int A_ATOM = TM * 128, A_TILE = EC * A_ATOM, A_BYTES = (SPLIT == 1 ? 2 : 1) * A_TILE;
  static constexpr int STAGE = 4 * ATOM, PER_CTA = 4 / CM;
  static constexpr bool F16 = SPLIT == 2;
};
// Unit group grp of the dx role → its first token row m0 and its column blocks [nb0, nb1) (see DxTile).
struct DxUnit {
  int m0, nb0, nb1;
};
template <int NCH, int BM, int CM>
__device__ __forceinline__ DxUnit dx_unit(int grp, u32 rank, int parts) {
  const int part = grp % parts, per = (NCH + parts - 1) / parts;
  const int nb0 = part * per;
  return {((grp / parts) * CM + static_cast<int>(rank)) * BM, nb0, nb0 + per < NCH ? nb0 + per : NCH};
}
// A CTA's dx units in order (the producer and the consumers walk the same sequence). a.parts ≥ 1: the unit groups
// cluster, cluster + clusters, … (dx_unit). a.parts == 0 (balanced ranges, session 26): the NB = ceil(tiles/CM)·NCH
// (tile group, 256-column block) pairs in order, cluster c taking the run [c·NB/clusters, (c+1)·NB/clusters) — cut
// where a tile group ends, so every CTA gets the same number of blocks (±1) in at most a few units.
struct DxCursor {
  int pos, end;
};
template <int NCH, int CM>
__device__ __forceinline__ DxCursor dx_begin(int tiles, int parts, int cluster, int clusters) {
  if (parts > 0) return {cluster, (tiles + CM - 1) / CM * parts};
  const long long nb = static_cast<long long>((tiles + CM - 1) / CM) * NCH;
  return {static_cast<int>(cluster * nb / clusters), static_cast<int>((cluster + 1) * nb / clusters)};
}
template <int NCH, int BM, int CM>
__device__ __forceinline__ bool dx_next(DxCursor& c, int parts, int clusters, u32 rank, DxUnit& u) {
  if (c.pos >= c.end) return false;
  if (parts > 0) {
    u = dx_unit<NCH, BM, CM>(c.pos, rank, parts);
    c.pos += clusters;
  } else {
    const int tg = c.pos / NCH, nb0 = c.pos - tg * NCH;
    const int nb1 = c.end - c.pos < NCH - nb0 ? nb0 + (c.end - c.pos) : NCH;
    u = {(tg * CM + static_cast<int>(rank)) * BM, nb0, nb1};
    c.pos += nb1 - nb0;
  }
  return true;
}
// The dx consumers' g rows → A tile (bf16(g), hi + lo): 8-column units (16 bytes of bf16) u = it·256 + ct, converted
// in batches of up to 8 (16 float4 loads a thread in flight).
template <int E, int TM>
struct DxGBatch {
  static constexpr int EC = (E + 63) / 64, UNITS = TM * EC * 8, ITERS = (UNITS + 255) / 256;
  static constexpr int BATCH = ITERS < 8 ? ITERS : 8;
};
// The fp32 g values of batch it0 of the unit at token row m0 (zeros past T and E).
template <int E, int TM>
__device__ __forceinline__ void dx_load_g_batch(const RouterGemmDxTmaArgs& a, int m0, int ct, int it0,
                                                float4 (&v)[DxGBatch<E, TM>::BATCH][2]) {
  using B = DxGBatch<E, TM>;
  constexpr int EC = B::EC, UNITS = B::UNITS, ITERS = B::ITERS, BATCH = B::BATCH;
#pragma unroll
  for (int b = 0; b < BATCH; ++b) {
    const int u = (it0 + b) * 256 + ct;
    const int r = u / (EC * 8), rest = u - r * (EC * 8), e = (rest >> 3) * 64 + (rest & 7) * 8;
    v[b][0] = v[b][1] = make_float4(0.f, 0.f, 0.f, 0.f);
    if ((ITERS % BATCH == 0 || it0 + b < ITERS) && (UNITS % 256 == 0 || u < UNITS) && m0 + r < a.T && e < E) {
      const float4* src = reinterpret_cast<const float4*>(a.g + static_cast<i64>(m0 + r) * a.g_stride + e);
      v[b][0] = __ldg(src);
      v[b][1] = __ldg(src + 1);
    }
  }
}
// Batch it0 of a unit's fp32 g values → bf16 (hi, and lo) 16-byte pieces of the swizzled K-major A tile(s) at base.
template <int E, int TM, int SPLIT>
__device__ __forceinline__ void dx_store_a_batch(u32 base, int ct, int it0,
                                                 const float4 (&v)[DxGBatch<E, TM>::BATCH][2]) {
  using B = DxGBatch<E, TM>;
  constexpr int EC = B::EC, UNITS = B::UNITS, ITERS = B::ITERS, BATCH = B::BATCH;
  constexpr int A_ATOM = TM * 128, A_TILE = EC * A_ATOM;
#pragma unroll
  for (int b = 0; b < BATCH; ++b) {
    const int u = (it0 + b) * 256 + ct;
    if ((ITERS % BATCH != 0 && it0 + b >= ITERS) || (UNITS % 256 != 0 && u >= UNITS)) continue;
    const int r = u / (EC * 8), rest = u - r * (EC * 8), at = rest >> 3, jj = rest & 7;
    const float4 v0 = v[b][0], v1 = v[b][1];
    Vec16 hi, lo;
    if constexpr (SPLIT == 1) {  // (zeros split into zeros: rows past T, experts past E)
      rg::split_bf16x2(v0.x, v0.y, hi.w[0], lo.w[0]);
      rg::split_bf16x2(v0.z, v0.w, hi.w[1], lo.w[1]);
      rg::split_bf16x2(v1.x, v1.y, hi.w[2], lo.w[2]);
      rg::split_bf16x2(v1.z, v1.w, hi.w[3], lo.w[3]);
    } else {
      hi.w[0] = cvt_bf16x2(v0.x, v0.y);
      hi.w[1] = cvt_bf16x2(v0.z, v0.w);
      hi.w[2] = cvt_bf16x2(v1.x, v1.y);
      hi.w[3] = cvt_bf16x2(v1.z, v1.w);
    }
    const u32 off = at * A_ATOM + rg90::swz(r, jj);
    sts16(base + off, hi);
    if constexpr (SPLIT == 1) sts16(base + A_TILE + off, lo);
  }
}
}  // namespace rgt

// The dx kernel's two roles as functions (the one-launch backward, router_gemm_bwd_tma_kernel, runs them after its dw
// role). Shared-memory layout: the A tile(s) at `base`, the ring right after them (ring = base + A_BYTES), the
// ring's 2·STAGES mbarriers at `bars` (full[s] at bars + 8s, empty[s] after them; the fp16 pass's row scales after
// those), the staging tiles at `stg` (STAGED). Work: the units rgt::dx_next walks for this cluster (unit groups
// cluster, cluster + clusters, …, or a balanced range of blocks; rank: this CTA's rank in its multicast cluster of CM).
//
// Producer (one thread): streams every w chunk of the CTA's units through the ring; (s, phase) are the ring position
// (in: where to start, 0 / 0 for a fresh ring; out: the next slot after the last one filled).
template <int K, int E, int STAGES, int CM, int SPLIT, int TM>
__device__ __forceinline__ void router_gemm_dx_tma_produce(const RouterGemmDxTmaArgs& a, u32 ring, u32 bars, u32 rank,
                                                           int cluster, int clusters, u64* trace, u64 t0_ns,
                                                           u64 t0_clk, int& s, u32& phase) {
  using D = rgt::DxTile<K, E, CM, SPLIT, TM>;
  prefetch_tmap(&a.tmw);
  if constexpr (D::F16) pdl_wait();  // w16 comes from router_gemm_w16_kernel, launched just before (PDL)
  u64 first_clk = 0;
  rgt::DxCursor cur = rgt::dx_begin<D::NCH, CM>(a.tiles, a.parts, cluster, clusters);
  rgt::DxUnit u;
  while (rgt::dx_next<D::NCH, D::BM, CM>(cur, a.parts, clusters, rank, u)) {
    for (int c = u.nb0 * D::EC; c < u.nb1 * D::EC; ++c) {
      if (trace && first_clk == 0) first_clk = rgt::clk();
      const int n = c / D::EC, ec = c - n * D::EC;
      mbar_wait(bars + 8 * (STAGES + s), phase ^ 1);
      const u32 full = bars + 8 * s, st = ring + s * D::STAGE;
      // Atoms past K (a partial last column block) are not fetched: their columns are never stored.
      const int atoms = (K - n * D::BN + 63) / 64 < 4 ? (K - n * D::BN + 63) / 64 : 4;
      if (a.flags & kRgSkipLoad) {  // ablation: no bytes (the MMAs read stale shared memory)
        mbar_arrive_expect_tx(full, 0);
      } else {
      mbar_arrive_expect_tx(full, atoms * D::ATOM);
#pragma unroll
      for (int p = 0; p < D::PER_CTA; ++p) {
        const int at = static_cast<int>(rank) * D::PER_CTA + p;
        if (at >= atoms) continue;
        if constexpr (CM == 1)
          tma_load_2d(st + at * D::ATOM, &a.tmw, full, n * D::BN + at * 64, ec * 64);
        else
          tma_load_2d_multicast(st + at * D::ATOM, &a.tmw, full, n * D::BN + at * 64, ec * 64,
                                     static_cast<unsigned short>((1 << CM) - 1));
      }
      }
      if (++s == STAGES) {
        s = 0;
        phase ^= 1;
      }
    }
  }
  if (trace) rgt::trace_producer(trace, t0_ns, t0_clk, first_clk);
}

// Consumers (both consumer warpgroups, threads 128 … 383): per unit, g rows → A tile, then the MMAs over the ring and
// the output blocks. wait_stores: wait (thread 128 / 256) until this warpgroup's TMA stores have read the staging tile
// before returning (the CTA may exit after it); the one-launch kernel waits at its very end instead.
// hook.before() runs at the start of every 256-column block (before its MMAs), hook.after() once the block's MMAs
// have completed (before its epilogue): the one-launch kernel hides the groups' sum of dw in them.
// Hook::kPrefetchG: the next unit's g rows are loaded under the current unit's last block (PRE below; the dx kernel's
// hook: the one-launch kernel runs at most one dx unit a CTA where it is the default).
struct RgNoHook {
  static constexpr bool kPrefetchG = false;
  __device__ __forceinline__ void before() {}
  __device__ __forceinline__ void after() {}
};
struct RgDxKernelHook : RgNoHook {
  static constexpr bool kPrefetchG = true;
};

template <int K, int E, int STAGES, int CM, int SPLIT, int TM, bool STAGED, typename Hook = RgNoHook>
__device__ __forceinline__ void router_gemm_dx_tma_consume(const RouterGemmDxTmaArgs& a, u32 base, u32 bars, u32 stg,
                                                           u32 rank, int cluster, int clusters, u64* trace,
                                                           bool wait_stores, Hook& hook) {
  using D = rgt::DxTile<K, E, CM, SPLIT, TM>;
  const u32 ring = base + D::A_BYTES;
  const u32 rowf = bars + 16 * STAGES;  // F16: 2^s_t of the unit's TM rows (fp32)
  const int tid = threadIdx.x, wg = tid / 128;
  const int j = wg - 1, ct = tid - 128, lane = tid & 31, warp = (tid & 127) >> 5;
  u64* const tw = trace && tid == 128 ? trace + kRgTraceWg0 : nullptr;  // (measurement: warpgroup 0's lead)
  u64* const tb = tw && clusters * CM <= 512 ? trace + kRgTraceDxBlocks : nullptr;  // (measurement: per block)
  int s = 0;
  u32 phase = 0;
  // PRE (64-token units whose g rows are one batch, not the fp16 pass): a unit's g values are loaded into registers
  // at the start of the previous unit's last column block, so that its MMAs and epilogue hide the loads' latency and
  // only the conversion and shared stores separate two units (the first unit still loads its own). 64 registers,
  // live beside the 64 of the accumulators. (Session 26: 0.4 µs a unit at 64-token units; the first of the two
  // batches of 128-token units measured no gain and cost a spill.)
  constexpr int ITERS = rgt::DxGBatch<E, TM>::ITERS;  // 8-column units
  constexpr int GB = rgt::DxGBatch<E, TM>::BATCH;
  constexpr bool PRE = Hook::kPrefetchG && !D::F16 && TM == 64 && ITERS == GB;
  float4 gnext[PRE ? GB : 1][2];
  bool have_next = false;
  rgt::DxCursor cur = rgt::dx_begin<D::NCH, CM>(a.tiles, a.parts, cluster, clusters);
  rgt::DxUnit u;
  while (rgt::dx_next<D::NCH, D::BM, CM>(cur, a.parts, clusters, rank, u)) {
    const int m0 = u.m0, nb0 = u.nb0, nb1 = u.nb1;
    // g rows m0 … m0 + BM − 1 → the bf16 A tile(s). Both warpgroups are done with the previous unit's MMAs.
    rgt::bar_sync_consumers();
    if constexpr (PRE) {
      if (!have_next) rgt::dx_load_g_batch<E, TM>(a, m0, ct, 0, gnext);
      rgt::dx_store_a_batch<E, TM, SPLIT>(base, ct, 0, gnext);
      have_next = false;
    } else if constexpr (D::F16) {
      // A warp per row (8 consumer warps: rows cw, cw + 8, …); lane l converts experts 8l … 8l + 7 (lanes past
      // the A tile's EC·64 columns idle, those past E write zeros). The row's finite amax (redux) sets 2^−s_t.
      // All loads of a batch of 8 rows first (64 registers; the accumulators are not live here).
      const int cw = ct >> 5, e = lane * 8;
      constexpr int RPW = D::BM / 8, RB = RPW < 8 ? RPW : 8;
      for (int rb = 0; rb < RPW; rb += RB) {
        float4 v[RB][2];
#pragma unroll
        for (int q = 0; q < RB; ++q) {
          const int r = cw + 8 * (rb + q);
          v[q][0] = v[q][1] = make_float4(0.f, 0.f, 0.f, 0.f);
          if (m0 + r < a.T && e < E) {
            const float4* src = reinterpret_cast<const float4*>(a.g + static_cast<i64>(m0 + r) * a.g_stride + e);
            v[q][0] = __ldg(src);
            v[q][1] = __ldg(src + 1);
          }
        }
#pragma unroll
        for (int q = 0; q < RB; ++q) {
          const int r = cw + 8 * (rb + q);
          const float f[8] = {v[q][0].x, v[q][0].y, v[q][0].z, v[q][0].w, v[q][1].x, v[q][1].y, v[q][1].z, v[q][1].w};
          u32 m = 0;
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            const u32 bits = rgt::finite_abs_bits(f[i]);
            m = bits > m ? bits : m;
          }
          const int sexp = rgt::f32_scale_exp(redux_max(m));
          const float inv = pow2i(-sexp);
          Vec16 h;
#pragma unroll
          for (int i = 0; i < 4; ++i) h.w[i] = cvt_f16x2(f[2 * i] * inv, f[2 * i + 1] * inv);
          if (e < D::EC * 64) sts16(base + (e >> 6) * D::A_ATOM + rg90::swz(r, (e & 63) >> 3), h);
          if (lane == 0)
            asm volatile("st.shared.f32 [%0], %1;" ::"r"(rowf + r * 4), "f"(pow2i(sexp)) : "memory");
        }
      }
    } else {
    // All loads of a batch first (up to 8 units: 16 float4, 64 registers; the accumulators are not live here),
    // then the conversions and shared stores: each unit's store is an asm volatile with a memory clobber, so loads
    // interleaved with the stores would each wait a full round trip (8 in a row at TM = 64: ≈ 5 µs before the first
    // MMA in the measured kernel of session 5).
    constexpr int BATCH = rgt::DxGBatch<E, TM>::BATCH;
    for (int it0 = 0; it0 < ITERS; it0 += BATCH) {
      float4 v[BATCH][2];
      rgt::dx_load_g_batch<E, TM>(a, m0, ct, it0, v);
      rgt::dx_store_a_batch<E, TM, SPLIT>(base, ct, it0, v);
    }
    }
    fence_proxy_async();  // the A tile is read by the tensor cores (async proxy)
    rgt::bar_sync_consumers();
    if (tw && tw[kRgTraceFirstFull] == 0) tw[kRgTraceFirstFull] = rgt::clk();  // (A tile ready)
    if constexpr (D::F16) pdl_wait();  // colf (read in the epilogue) comes from router_gemm_w16_kernel

    // TM = 64: this warpgroup's 128 columns of each chunk, all 64 rows; TM = 128: all 256 columns, its 64 rows.
    const u32 a_rows = TM == 128 ? j * 64 * 128 : 0, b_cols = D::NW == 256 ? 0 : 2 * j * D::ATOM;
    const int row0 = TM == 128 ? j * 64 : 0;  // this warpgroup's first tile row
    const bool mma = !(a.flags & kRgSkipMma), store = !(a.flags & kRgSkipStore);  // (ablations)
    for (int n = nb0; n < nb1; ++n) {
      float acc[D::NW / 2];
#pragma unroll
      for (int i = 0; i < D::NW / 2; ++i) acc[i] = 0.f;
      hook.before();
      if constexpr (PRE) {  // the next unit's g values, under this block's MMAs (see PRE)
        rgt::DxCursor nx = cur;
        rgt::DxUnit un;
        if (n == nb1 - 1 && !(a.flags & kRgNoGPrefetch) &&
            rgt::dx_next<D::NCH, D::BM, CM>(nx, a.parts, clusters, rank, un)) {
          rgt::dx_load_g_batch<E, TM>(a, un.m0, ct, 0, gnext);
          have_next = true;
        }
      }
      int prev = -1;
      for (int ec = 0; ec < D::EC; ++ec) {
        mbar_wait(bars + 8 * s, phase);
        if (tw) tw[kRgTraceLastFull] = rgt::clk();
        if (tb && ec == 0 && n - nb0 < 8) tb[2 * (n - nb0)] = rgt::clk();
        const u32 st = ring + s * D::STAGE + b_cols;
        if (mma) {
        rg90::fence_regs(acc);
        rg90::wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
          const u64 b = rg90::desc_sw128_mn(st + ks * 2048, D::ATOM);
          if constexpr (D::F16) {
            rgt::wgmma_ss_f16<D::NW, 0, 1>(acc, rg90::desc_sw128(base + ec * D::A_ATOM + a_rows + ks * 32), b);
          } else {
            rg90::wgmma_ss<D::NW, 0, 1>(acc, rg90::desc_sw128(base + ec * D::A_ATOM + a_rows + ks * 32), b);
            if constexpr (SPLIT == 1)
              rg90::wgmma_ss<D::NW, 0, 1>(
                  acc, rg90::desc_sw128(base + D::A_TILE + ec * D::A_ATOM + a_rows + ks * 32), b);
          }
        }
        rg90::wgmma_commit();
        rg90::wgmma_wait<1>();
        rg90::fence_regs(acc);
        }
        if (prev >= 0 && (tid & 127) < CM) {
          if constexpr (CM == 1) mbar_arrive(bars + 8 * (STAGES + prev));
          else mbar_arrive_cluster(bars + 8 * (STAGES + prev), static_cast<u32>(tid & 127));
        }
        prev = s;
        if (++s == STAGES) {
          s = 0;
          phase ^= 1;
        }
      }
      rg90::wgmma_wait<0>();
      rg90::fence_regs(acc);
      if (tw) tw[kRgTraceMmaDone] = rgt::clk();
      if (tb && n - nb0 < 8) tb[2 * (n - nb0) + 1] = rgt::clk();
      if ((tid & 127) < CM) {
        if constexpr (CM == 1) mbar_arrive(bars + 8 * (STAGES + prev));
        else mbar_arrive_cluster(bars + 8 * (STAGES + prev), static_cast<u32>(tid & 127));
      }
      hook.after();
      const int c0 = n * D::BN + (D::NW == 256 ? 0 : j * 128);  // this warpgroup's first dx column of the block
      if constexpr (D::F16) {  // × 2^s_t (row) then × 2^c_k (column): exact unless the result leaves fp32's range
        const int rr = row0 + warp * 16 + (lane >> 2);
        float rf[2];
        asm volatile("ld.shared.f32 %0, [%1];" : "=f"(rf[0]) : "r"(rowf + rr * 4));
        asm volatile("ld.shared.f32 %0, [%1];" : "=f"(rf[1]) : "r"(rowf + (rr + 8) * 4));
#pragma unroll
        for (int i = 0; i < D::NW / 2; i += 4) {
          const int col = c0 + 8 * (i >> 2) + 2 * (lane & 3);
          const float2 cf = col < K ? __ldcg(reinterpret_cast<const float2*>(a.colf + col)) : make_float2(0.f, 0.f);
          acc[i] = acc[i] * rf[0] * cf.x;
          acc[i + 1] = acc[i + 1] * rf[0] * cf.y;
          acc[i + 2] = acc[i + 2] * rf[1] * cf.x;
          acc[i + 3] = acc[i + 3] * rf[1] * cf.y;
        }
      }
      if (!store) continue;
      if constexpr (STAGED) {
        const u32 buf = stg + j * (D::NW * 128);
        if ((tid & 127) == 0) bulk_wait_read();  // the previous block's stores have read the buffer
        rgt::bar_sync_wg(j);
        wgmma::stage_sw128<D::NW>(buf, lane, warp, [&](int i) { return cvt_bf16x2(acc[i], acc[i + 1]); });
        fence_proxy_async();  // stmatrix writes → the copy engine's reads
        rgt::bar_sync_wg(j);
        if ((tid & 127) == 0 && m0 + row0 < a.T) {
#pragma unroll
          for (int at = 0; at < D::NW / 64; ++at)
            if (c0 + at * 64 < K) tma_store_2d(&a.tmdx, buf + at * 8192, c0 + at * 64, m0 + row0);
          bulk_commit();
          if (tw) tw[kRgTraceStored] = rgt::clk();
        }
      } else {  // 64 × NW block → dx (bf16 pairs), rows past T and columns past K masked
        const int rows_valid = a.T - m0 - row0;
        char* out = static_cast<char*>(a.dx) + (static_cast<i64>(m0 + row0) * a.dx_stride + c0) * 2;
#pragma unroll
        for (int i = 0; i < D::NW / 2; i += 2) {
          const int r = warp * 16 + (lane >> 2) + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * (lane & 3);
          if (r < rows_valid && c0 + col < K)
            asm volatile("st.global.b32 [%0], %1;" ::"l"(out + (static_cast<i64>(r) * a.dx_stride + col) * 2),
                         "r"(cvt_bf16x2(acc[i], acc[i + 1]))
                         : "memory");
        }
      }
    }
  }
  if constexpr (STAGED)
    if (wait_stores && (tid & 127) == 0) bulk_wait_read();  // shared memory stays valid until the stores have read it
  if (tw) {
    tw[kRgTraceFenced] = rgt::clk();
    trace[kRgTraceEndNs] = globaltimer_ns();
  }
}

// Grid: CM·clusters CTAs (clusters (CM, 1, 1)), 384 threads. Shared memory: 1 KiB slack, the A tile ((1 + SPLIT) ×
// ceil(E/64) atoms of 64 rows × 128 B), a ring of STAGES × 32 KiB w chunks, 2·STAGES mbarriers, and where it fits
// (STAGED) a 16 KiB staging tile per consumer: its finished 64 × 128 block goes there by stmatrix (swizzled as the
// dx tensor map's 64 × 64 boxes) and out by 2 TMA stores (rows past T and columns past K are clipped by the copy
// engine); else 4-byte stores straight from the accumulators. Chunks stream in the order (column block n of 256,
// expert chunk); consumer j takes columns [128·j, 128·j + 128) of every block, so both read every stage.
// TM = 128 (no multicast): a work unit is 128 tokens × one part (of two or more) of the 256-column blocks; consumer
// j takes token rows [64·j, 64·j + 64) and all 256 columns of each chunk (m64n256), so each w chunk that lands serves
// 128 tokens: about 40 % fewer bytes into each SM than TM = 64 (the g rows are read by every part's unit).
template <int K, int E, int STAGES, int CM, int SPLIT, int TM = 64>
__global__ void __launch_bounds__(384, 1) router_gemm_dx_tma_kernel(const __grid_constant__ RouterGemmDxTmaArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using D = rgt::DxTile<K, E, CM, SPLIT, TM>;
  constexpr bool STAGED = router_gemm_dx_staged(E, STAGES, SPLIT, TM);
  pdl_launch_dependents();  // the dw kernel (independent data) may take SMs as this grid's CTAs finish
  u64* const trace = a.trace ? a.trace + static_cast<i64>(blockIdx.x) * kRgTraceSlots : nullptr;  // (measurement)
  const u64 t0_ns = trace ? globaltimer_ns() : 0, t0_clk = trace ? rgt::clk() : 0;

  extern __shared__ __align__(16) char smem_raw[];
  const u32 raw = static_cast<u32>(__cvta_generic_to_shared(smem_raw));
  const u32 base = (raw + 1023u) & ~1023u;
  const u32 ring = base + D::A_BYTES, bars = ring + STAGES * D::STAGE;  // full[s] at bars + 8s, empty[s] after them
  const u32 stg = (bars + 16 * STAGES + 1023u) & ~1023u;         // the staging tiles (STAGED)
  const int tid = threadIdx.x, wg = tid / 128;
  const u32 rank = CM > 1 ? blockIdx.x % CM : 0;
  const int cluster = blockIdx.x / CM, clusters = gridDim.x / CM;

  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(bars + 8 * s, 1);
      mbar_init(bars + 8 * (STAGES + s), 2 * CM);  // both consumer warpgroups of every CTA of the cluster
    }
    fence_mbar_init();
  }
  if constexpr (CM > 1) cluster_sync(); else __syncthreads();

  if (wg == 0) {  // producer
    setmaxnreg_dec<40>();
    if (tid == 0) {
      int s = 0;
      u32 phase = 0;
      router_gemm_dx_tma_produce<K, E, STAGES, CM, SPLIT, TM>(a, ring, bars, rank, cluster, clusters, trace, t0_ns,
                                                              t0_clk, s, phase);
    }
  } else {  // consumers: warpgroup j takes columns 128·j … of every 256-column block
    setmaxnreg_inc<232>();
    RgDxKernelHook nh;
    router_gemm_dx_tma_consume<K, E, STAGES, CM, SPLIT, TM, STAGED>(a, base, bars, stg, rank, cluster, clusters, trace,
                                                                    true, nh);
  }
  if constexpr (CM > 1) cluster_sync();
#else
  __trap();
#endif
}

// ---- the fp16 pass's w operand ------------------------------------------------------------------------------------
// Grid ceil(K/64) CTAs of 256 threads: thread (rg = tid / 8, p = tid % 8) holds the 8 columns k0 … k0 + 7 of rows
// rg, rg + 32, … of w (E ≤ 256: ≤ 8 rows). Column amax (finite |values|) over E: within the warp by shuffles, across
// warps by shared atomics; then w16 = fp16(w · 2^−c_k) (exact for |w| ≥ amax·2⁻²⁸) and colf[k] = 2^c_k.
template <int K, int E>
__global__ void __launch_bounds__(256) router_gemm_w16_kernel(const RouterGemmW16Args a) {
  pdl_launch_dependents();  // the dx kernel converts its g rows meanwhile; it waits (pdl_wait) before w16 / colf
  static_assert(E % 8 == 0 && E <= 256, "E: a multiple of 8 up to 256");
  constexpr int NR = (E + 31) / 32;
  __shared__ unsigned cmax[64];
  const int tid = threadIdx.x, p = tid & 7, rg = tid >> 3;
  const int k0 = blockIdx.x * 64 + p * 8;
  if (tid < 64) cmax[tid] = 0u;
  __syncthreads();
  Vec16 v[NR];
  u32 m[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    const int e = rg + 32 * r;
    v[r] = Vec16{};
    if (e < E && k0 < K) v[r] = load16(static_cast<const char*>(a.w) + (static_cast<i64>(e) * K + k0) * 2);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const u32 lo = v[r].w[q] & 0x7fffu, hi = (v[r].w[q] >> 16) & 0x7fffu;
      if (lo < 0x7f80u && lo > m[2 * q]) m[2 * q] = lo;
      if (hi < 0x7f80u && hi > m[2 * q + 1]) m[2 * q + 1] = hi;
    }
  }
#pragma unroll
  for (int c = 0; c < 8; ++c) {  // lanes l, l ^ 8, l ^ 16, l ^ 24 hold the same columns
    u32 o = __shfl_xor_sync(0xffffffffu, m[c], 8);
    m[c] = o > m[c] ? o : m[c];
    o = __shfl_xor_sync(0xffffffffu, m[c], 16);
    m[c] = o > m[c] ? o : m[c];
    if ((tid & 31) < 8) atomicMax(&cmax[p * 8 + c], m[c]);
  }
  __syncthreads();
  float inv[8], f[8];
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    const int ce = rgt::bf16_scale_exp(cmax[p * 8 + c]);
    inv[c] = pow2i(-ce);
    f[c] = pow2i(ce);
  }
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    const int e = rg + 32 * r;
    if (e < E && k0 < K) {
      Vec16 o;
#pragma unroll
      for (int q = 0; q < 4; ++q)
        o.w[q] = cvt_f16x2(__uint_as_float(v[r].w[q] << 16) * inv[2 * q],
                                __uint_as_float(v[r].w[q] & 0xffff0000u) * inv[2 * q + 1]);
      store16(static_cast<char*>(a.w16) + (static_cast<i64>(e) * K + k0) * 2, o);
    }
  }
  if (rg == 0 && k0 < K) {
    store16(a.colf + k0, Vec16{{__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3])}});
    store16(a.colf + k0 + 4, Vec16{{__float_as_uint(f[4]), __float_as_uint(f[5]), __float_as_uint(f[6]), __float_as_uint(f[7])}});
  }
}

// ---- dw ---------------------------------------------------------------------------------------------------------
// The dw kernel's two roles as functions (the one-launch backward runs them before or after its dx role). The
// ring (and, after the MMAs, the staging tile) at `base`, its 2·STAGES mbarriers at `bars` (the fp16 pass's x-amax
// slots after them). The CTA's tile, T range and output come from blockIdx / gridDim as in the dw kernel's grid.
//
// Producer (one thread): (s, phase) as the dx producer's (in: 0 / 0; out: the slot after the last one filled).
template <int K, int E, int STAGES, int SPLIT, int BK>
__device__ __forceinline__ void router_gemm_dw_tma_produce(const RouterGemmDwTmaArgs& a, u32 base, u32 bars,
                                                           u64* trace, u64 t0_ns, u64 t0_clk, int& s, u32& phase) {
  constexpr int BM = 128, BN = 256, ATOM = BK * 128, GBOX = BK * 128;
  static_assert(BK == 64 || BK == 32, "T chunks of 64 or 32 tokens");
  constexpr int TILES_N = (K + BN - 1) / BN;
  constexpr int STAGE = 4 * GBOX + 4 * ATOM;  // g: 4 boxes of 32 experts × BK tokens; x: 4 atoms of BK × 64
  static_assert(E % 8 == 0 && E <= 256, "E: a multiple of 8 up to 256");
  const int n0 = (blockIdx.x % TILES_N) * BN, e0 = (blockIdx.x / TILES_N) * BM;
  const int t0 = blockIdx.y * a.split_rows;
  const int rows = a.T - t0 < a.split_rows ? a.T - t0 : a.split_rows;
  const int chunks = (rows + BK - 1) / BK;
  const int gboxes = (E - e0 + 31) / 32 < 4 ? (E - e0 + 31) / 32 : 4, xatoms = (K - n0 + 63) / 64 < 4 ? (K - n0 + 63) / 64 : 4;

  prefetch_tmap(&a.tmg);
  prefetch_tmap(&a.tmx);
  u64 policy = 0;
  if (a.flags & kRgXEvictFirst) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  u64 first_clk = 0;
  for (int c = 0; c < chunks; ++c) {
    if (trace && c == 0) first_clk = rgt::clk();
    mbar_wait(bars + 8 * (STAGES + s), phase ^ 1);
    const u32 full = bars + 8 * s, st = base + s * STAGE;
    // Boxes entirely past E or K are not fetched: the accumulator rows / columns they feed are never stored.
    const int t = t0 + c * BK;
    if (a.flags & kRgSkipLoad) {  // ablation: no bytes (the MMAs read stale shared memory)
      mbar_arrive_expect_tx(full, 0);
    } else {
    mbar_arrive_expect_tx(full, gboxes * GBOX + xatoms * ATOM);
#pragma unroll
    for (int b = 0; b < 4; ++b)
      if (b < gboxes) tma_load_2d(st + b * GBOX, &a.tmg, full, e0 + b * 32, t);
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q < xatoms) {
        if (a.flags & kRgXEvictFirst)  // x is read once: its lines go first, dirty outputs and g stay in L2
          rgt::tma_load_2d_evict_first(st + 4 * GBOX + q * ATOM, &a.tmx, full, n0 + q * 64, t, policy);
        else
          tma_load_2d(st + 4 * GBOX + q * ATOM, &a.tmx, full, n0 + q * 64, t);
      }
    }
    if (++s == STAGES) {
      s = 0;
      phase ^= 1;
    }
  }
  if (trace) rgt::trace_producer(trace, t0_ns, t0_clk, first_clk);
}

// Consumers (threads 128 … 383): the main loop and the epilogue (with S > 1 the cluster barriers: the producer
// warpgroup takes part in them through router_gemm_dw_tma_producer_tail).
// REUSE (the one-launch kernel, dw first): the ring / staging bytes are refilled by TMA afterwards, so the staging
// tile's generic accesses are ordered before the async proxy's (a proxy fence before the last cluster barrier).
// STG ≥ 0 (the one launch): the staging tile unpadded (1 KiB rows, 16-byte pieces XOR-swizzled with the row) at
// base + STG instead of padded rows at base (the one launch's is above dx's A tile and ring stage 0; session 10).
template <int K, int E, int STAGES, int SPLIT, int BK, bool REUSE = false, int STG = -1>
__device__ __forceinline__ void router_gemm_dw_tma_consume(const RouterGemmDwTmaArgs& a, u32 base, u32 bars,
                                                           u64* trace) {
  constexpr int BM = 128, BN = 256, ATOM = BK * 128, GBOX = BK * 128, KS = BK / 16;
  static_assert(BK == 64 || BK == 32, "T chunks of 64 or 32 tokens");
  constexpr int TILES_N = (K + BN - 1) / BN;
  constexpr int STAGE = 4 * GBOX + 4 * ATOM;  // g: 4 boxes of 32 experts × BK tokens; x: 4 atoms of BK × 64
  constexpr int PITCH = (BN + 8) * 4, STAGING = BM * PITCH;
  static_assert(E % 8 == 0 && E <= 256, "E: a multiple of 8 up to 256");
  const int tid = threadIdx.x, wg = tid / 128;
  const int S = a.cluster;  // T ranges reduced in this CTA's cluster
  const int a_flags = a.flags;  // (ablations, bench only)
  float* const out = gridDim.y == static_cast<unsigned>(S) ? a.dw : a.partial + (blockIdx.y / S) * static_cast<i64>(E) * K;
  const int n0 = (blockIdx.x % TILES_N) * BN, e0 = (blockIdx.x / TILES_N) * BM;
  const int t0 = blockIdx.y * a.split_rows;
  const int rows = a.T - t0 < a.split_rows ? a.T - t0 : a.split_rows;
  const int chunks = (rows + BK - 1) / BK;
  const int gboxes = (E - e0 + 31) / 32 < 4 ? (E - e0 + 31) / 32 : 4, xatoms = (K - n0 + 63) / 64 < 4 ? (K - n0 + 63) / 64 : 4;

  const int j = wg - 1, lane = tid & 31, warp = (tid & 127) >> 5;
  u64* const tw = trace && tid == 128 ? trace + kRgTraceWg0 : nullptr;  // (measurement: warpgroup 0's lead)
  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.f;
  // A fragment of k16 step ks, register i (0..3): expert row 16·warp + lane/4 + 8·(i & 1) of this warpgroup's 64,
  // tokens ks·16 + 2·(lane & 3) + 8·(i >> 1) and the next one. Expert column el (0..127 in the tile) lives in g
  // box el / 32 at 16-byte unit (el % 32) / 4, swizzled with the token row.
  const int el = 64 * j + 16 * warp + (lane >> 2);
  auto issue = [&](u32 st, u32(&A)[2][KS][4]) {
    rg90::fence_regs(acc);
    rg90::wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const u64 b = rg90::desc_sw128_mn(st + 4 * GBOX + ks * 2048, ATOM);
      if constexpr (SPLIT == 2) {
        rgt::wgmma_rs_f16_n256<1>(acc, A[0][ks], b);
      } else {
        rgt::wgmma_rs_n256<1>(acc, A[0][ks], b);
        if constexpr (SPLIT == 1) rgt::wgmma_rs_n256<1>(acc, A[1][ks], b);
      }
    }
    rg90::wgmma_commit();
  };
  // After the MMAs of chunk c (stage s) have completed: the A registers they read stay allocated until here, and
  // the stage goes back to the producer.
  auto retire = [&](int s, u32(&A)[2][KS][4]) {
    rg90::wgmma_wait<0>();
    rg90::fence_regs(acc);
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      rgt::fence_u32(A[0][ks]);
      if constexpr (SPLIT == 1) rgt::fence_u32(A[1][ks]);
    }
    if ((tid & 127) == 0) mbar_arrive(bars + 8 * (STAGES + s));
  };
  auto stage_of = [&](int c) { return base + (c % STAGES) * STAGE; };
  auto wait_full = [&](int c) { mbar_wait(bars + 8 * (c % STAGES), static_cast<u32>(c / STAGES) & 1); };
  // One chunk of A fragments: the fp32 values of chunk c + 1 are loaded while chunk c's MMAs run and split after.
  float rawv[KS][4][2];
  auto load_raw = [&](u32 st) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int e = el + 8 * (i & 1), box = e >> 5, col = e & 31;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int t = ks * 16 + 2 * (lane & 3) + 8 * (i >> 1) + h;
          rawv[ks][i][h] = lds_f32(st + box * GBOX + t * 128 + ((((col >> 2) ^ (t & 7))) << 4) + (col & 3) * 4);
        }
      }
  };
  if constexpr (SPLIT == 2) {
    // Running power-of-two scales (exponents): Srow of this thread's two expert rows el, el + 8, sig of the x
    // tiles; the accumulator rows hold Σ g·x·2^−(Srow + sig), at Tc = Srow + sig.
    int Srow[2] = {-100, -100}, sig = -100;
    const u32 xslot = bars + 16 * STAGES;  // 2 × 8 × u32: the chunk's x amax of each consumer warp (2 rounds)
    const int ct = tid - 128, cw = ct >> 5;
    u32 an[2][KS][4];  // the next chunk's fp16 A fragments ([1] unused)
    int Tn[2] = {-200, -200}, Tc[2] = {-200, -200};
    // Chunk c: its g rows' amax → Srow, its fp16 A fragments; its x tile's amax (all consumers) → sig, and the x
    // tile converted in place to fp16 × 2^−sig (same layout); a consumer barrier before any MMA reads it.
    auto prep = [&](int c) {
      wait_full(c);
      const u32 st = stage_of(c);
      load_raw(st);
      // Row amax: the max of all |bits| (2 instructions a value); only where that is NaN / inf (≥ 0x7f800000) is
      // it recomputed over the finite values (a warp-uniform branch, taken for rows holding a non-finite g).
      u32 m[2] = {0u, 0u};
      auto quad_max = [&]() {  // the quad (lanes 4q … 4q + 3) holds the row's BK tokens
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          u32 o = __shfl_xor_sync(0xffffffffu, m[r], 1);
          m[r] = o > m[r] ? o : m[r];
          o = __shfl_xor_sync(0xffffffffu, m[r], 2);
          m[r] = o > m[r] ? o : m[r];
        }
      };
#pragma unroll
      for (int ks = 0; ks < KS; ++ks)
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const u32 b = __float_as_uint(rawv[ks][i][h]) & 0x7fffffffu;
            m[i & 1] = b > m[i & 1] ? b : m[i & 1];
          }
      quad_max();
      if (__any_sync(0xffffffffu, m[0] >= 0x7f800000u || m[1] >= 0x7f800000u)) {
        m[0] = m[1] = 0u;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks)
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const u32 b = rgt::finite_abs_bits(rawv[ks][i][h]);
              m[i & 1] = b > m[i & 1] ? b : m[i & 1];
            }
        quad_max();
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int se = rgt::f32_scale_exp(m[r]);
        Srow[r] = se > Srow[r] ? se : Srow[r];
      }
      const float gi[2] = {pow2i(-Srow[0]), pow2i(-Srow[1])};
#pragma unroll
      for (int ks = 0; ks < KS; ++ks)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          an[0][ks][i] = cvt_f16x2(rawv[ks][i][0] * gi[i & 1], rawv[ks][i][1] * gi[i & 1]);
      // x: BK·512 bytes = 4 atoms; thread ct takes 16-byte pieces ct + 256·p (p < BK/8: atom p·32/BK). Atoms
      // past K were not fetched (stale bytes): left out of the amax (their columns are never stored).
      constexpr int XP = BK / 8;
      // The tile's amax: packed max of all |bits| (2 instructions a word), then warp and CTA maxima; only when
      // that is NaN / inf (≥ 0x7f80: CTA-uniform) a second round over the finite values, through 8 more slots.
      Vec16 xv[XP];
      u32 xm2 = 0u;
#pragma unroll
      for (int p = 0; p < XP; ++p) {
        xv[p] = lds16(st + 4 * GBOX + p * 4096 + ct * 16);
        if (p * 32 / BK < xatoms)
#pragma unroll
          for (int q = 0; q < 4; ++q) xm2 = max_u16x2(xm2, xv[p].w[q] & 0x7fff7fffu);
      }
      auto cta_max = [&](u32 v, u32 slots) {
        v = redux_max(v);
        if (lane == 0) asm volatile("st.shared.u32 [%0], %1;" ::"r"(slots + cw * 4), "r"(v) : "memory");
        rgt::bar_sync_consumers();
        u32 mx = 0u;
#pragma unroll
        for (int w = 0; w < 8; ++w) {
          u32 o;
          asm volatile("ld.shared.u32 %0, [%1];" : "=r"(o) : "r"(slots + w * 4));
          mx = o > mx ? o : mx;
        }
        return mx;
      };
      u32 mm = cta_max((xm2 & 0xffffu) > (xm2 >> 16) ? (xm2 & 0xffffu) : (xm2 >> 16), xslot);
      if (mm >= 0x7f80u) {
        u32 xm = 0u;
#pragma unroll
        for (int p = 0; p < XP; ++p)
          if (p * 32 / BK < xatoms) {
            const Vec16 v = lds16(st + 4 * GBOX + p * 4096 + ct * 16);  // (not converted yet)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              const u32 b = rgt::bf16x2_finite_abs_max(v.w[q]);
              xm = b > xm ? b : xm;
            }
          }
        mm = cta_max(xm, xslot + 32);
      }
      const int se = rgt::bf16_scale_exp(mm);
      sig = se > sig ? se : sig;
      const float xi = pow2i(-sig);
#pragma unroll
      for (int p = 0; p < XP; ++p) {
        Vec16 o;
#pragma unroll
        for (int q = 0; q < 4; ++q) o.w[q] = rgt::bf16x2_to_f16x2(xv[p].w[q], xi);
        sts16(st + 4 * GBOX + p * 4096 + ct * 16, o);
      }
      fence_proxy_async();  // the converted x tile is read by the tensor cores
      Tn[0] = Srow[0] + sig;
      Tn[1] = Srow[1] + sig;
      rgt::bar_sync_consumers();  // every consumer's share converted (and the amax slots read)
    };
    if (chunks > 0) prep(0);
    for (int c = 0; c < chunks; ++c) {
      u32 a[2][KS][4];
#pragma unroll
      for (int ks = 0; ks < KS; ++ks)
#pragma unroll
        for (int i = 0; i < 4; ++i) a[0][ks][i] = an[0][ks][i];
      // The MMAs before chunk c have completed (retire): bring the accumulator rows to chunk c's scale (exact
      // powers of two; a warp-uniform branch, taken when a running maximum grew).
      const int d0 = Tc[0] - Tn[0], d1 = Tc[1] - Tn[1];
      if (__any_sync(0xffffffffu, (d0 | d1) != 0)) {
        const float f0 = pow2i(d0 < -126 ? -126 : d0), f1 = pow2i(d1 < -126 ? -126 : d1);
#pragma unroll
        for (int i = 0; i < 128; ++i) acc[i] *= ((i >> 1) & 1) ? f1 : f0;
      }
      Tc[0] = Tn[0];
      Tc[1] = Tn[1];
      issue(stage_of(c), a);
      if (c + 1 < chunks) prep(c + 1);
      retire(c % STAGES, a);
    }
    // Undo the scales: × 2^Srow then × 2^sig (each a normal fp32 number; exact unless the result leaves the range).
    const float f0 = pow2i(Srow[0]), f1 = pow2i(Srow[1]), fx = pow2i(sig);
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = acc[i] * (((i >> 1) & 1) ? f1 : f0) * fx;
  } else {
    if (chunks > 0) {
      wait_full(0);
      if (tw) tw[kRgTraceFirstFull] = tw[kRgTraceLastFull] = rgt::clk();
      load_raw(stage_of(0));
    }
    for (int c = 0; c < chunks; ++c) {
      u32 a[2][KS][4];
#pragma unroll
      for (int ks = 0; ks < KS; ++ks)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if constexpr (SPLIT == 1)
            rg::split_bf16x2(rawv[ks][i][0], rawv[ks][i][1], a[0][ks][i], a[1][ks][i]);
          else
            a[0][ks][i] = cvt_bf16x2(rawv[ks][i][0], rawv[ks][i][1]);
        }
      if (!(a_flags & kRgSkipMma)) issue(stage_of(c), a);
      if (c + 1 < chunks) {
        wait_full(c + 1);
        if (tw) tw[kRgTraceLastFull] = rgt::clk();
        load_raw(stage_of(c + 1));
      }
      retire(c % STAGES, a);
    }
    if (tw) tw[kRgTraceMmaDone] = rgt::clk();
  }
  if (a_flags & kRgSkipStore) {  // ablation: no epilogue
  } else if (S == 1) {  // straight from registers: row e0 + el + 8·((i/2) & 1), column n0 + 8·(i/4) + 2·(lane & 3)
#pragma unroll
    for (int i = 0; i < 128; i += 2) {
      const int e = e0 + el + 8 * ((i >> 1) & 1), col = n0 + 8 * (i >> 2) + 2 * (lane & 3);
      if (e < E && col < K)
        asm volatile("st.global.v2.f32 [%0], {%1, %2};" ::"l"(out + static_cast<i64>(e) * K + col), "f"(acc[i]),
                     "f"(acc[i + 1])
                     : "memory");
    }
  } else {
    rgt::bar_sync_consumers();  // every MMA of both warpgroups is done: the ring becomes the staging tile
#pragma unroll
    for (int i = 0; i < 128; i += 2) {
      const int r = el + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * (lane & 3);
      const u32 at = STG < 0 ? base + r * PITCH + col * 4
                             : base + STG + r * 1024 + ((((col >> 2) ^ (r & 7))) << 4) + (col & 3) * 4;
      asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(at), "f"(acc[i]), "f"(acc[i + 1]) : "memory");
    }
    cluster_sync();  // all partial tiles of the cluster are staged
    if (tw) tw[kRgTraceDwStaged] = rgt::clk();
    u32 rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    const int per = (BM + S - 1) / S, r0 = static_cast<int>(rank) * per;
    const int r1 = r0 + per < BM ? r0 + per : BM;
    if constexpr (STG < 0)
      rgt::dw_cluster_reduce<BN, PITCH, E, K>(out, base, tid - 128, r0, r1, e0, n0, S);
    else
      rgt::dw_cluster_reduce<BN, -1, E, K>(out, base + STG, tid - 128, r0, r1, e0, n0, S);
    if (tw) tw[kRgTraceStored] = rgt::clk();
    // Keep this CTA's tile alive until the others have read it. Relaxed: the remote loads have returned (their
    // sums were stored), and nothing written here is read by the peers — a release would first wait for this
    // thread's global stores of the sums to be performed (MEMBAR.GPU).
    if constexpr (REUSE) fence_proxy_async();
    cluster_arrive_relaxed();
    cluster_wait();
  }
  if (tw) {
    tw[kRgTraceFenced] = rgt::clk();
    trace[kRgTraceEndNs] = globaltimer_ns();
  }
}

// The producer warpgroup's part (all its 128 threads) in the epilogue's cluster barriers.
__device__ __forceinline__ void router_gemm_dw_tma_producer_tail(const RouterGemmDwTmaArgs& a) {
  if (a.cluster > 1 && !(a.flags & kRgSkipStore)) {
    cluster_sync();
    cluster_arrive_relaxed();
    cluster_wait();
  }
}

// Grid: (ceil(E/128)·ceil(K/256), S) CTAs of 384 threads, clusters (1, C = a.cluster, 1) when C > 1; S / C groups.
// Shared memory: 1 KiB slack + max(STAGES × BK KiB (g tile BK/2 KiB + x tile BK/2 KiB), the 128 × 264 fp32 staging
// tile) + mbarriers. A group's result goes to dw (one group) or to partial[group]. The fp32 g values of chunk c + 1
// are loaded while chunk c's MMAs run and split after them (splitting them then too, with two chunks of A fragments
// in registers, measured the same: 35.6 µs both, run of 06:30).
template <int K, int E, int STAGES, int SPLIT, int BK = 64>
__global__ void __launch_bounds__(384, 1) router_gemm_dw_tma_kernel(const __grid_constant__ RouterGemmDwTmaArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int STAGE = 8 * BK * 128, STAGING = 128 * (256 + 8) * 4;  // (as router_gemm_dw_tma_consume's)
  constexpr int RING = STAGES * STAGE > STAGING ? STAGES * STAGE : STAGING;
  // Launched with PDL after the op's dx kernel: it reads only g and x and writes only dw / the workspace, none of
  // which dx touches, so it need not wait for it; it lets the dw_reduce kernel launch early (that one waits).
  pdl_launch_dependents();

  extern __shared__ __align__(16) char smem_raw[];
  const u32 raw = static_cast<u32>(__cvta_generic_to_shared(smem_raw));
  const u32 base = (raw + 1023u) & ~1023u;
  const u32 bars = base + RING;
  const int tid = threadIdx.x, wg = tid / 128;
  u64* const trace = a.trace ? a.trace + static_cast<i64>(blockIdx.y * gridDim.x + blockIdx.x) * kRgTraceSlots
                             : nullptr;  // (measurement)
  const u64 t0_ns = trace ? globaltimer_ns() : 0, t0_clk = trace ? rgt::clk() : 0;

  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(bars + 8 * s, 1);
      mbar_init(bars + 8 * (STAGES + s), 2);  // both consumer warpgroups read every stage
    }
    fence_mbar_init();
  }
  __syncthreads();

  if (wg == 0) {  // producer
    setmaxnreg_dec<SPLIT == 2 ? 24 : 40>();  // fp16 pass: 24 + 2 × 240 (its x amax and convert)
    if (tid == 0) {
      int s = 0;
      u32 phase = 0;
      router_gemm_dw_tma_produce<K, E, STAGES, SPLIT, BK>(a, base, bars, trace, t0_ns, t0_clk, s, phase);
    }
    router_gemm_dw_tma_producer_tail(a);
  } else {  // consumers: warpgroup j = experts e0 + 64j …
    setmaxnreg_inc<SPLIT == 2 ? 240 : 232>();
    router_gemm_dw_tma_consume<K, E, STAGES, SPLIT, BK>(a, base, bars, trace);
  }
#else
  __trap();
#endif
}

// ---- one launch: the dw role, then the dx role (or the other order) -----------------------------------------------
// Shared memory of router_gemm_bwd_tma_kernel: the two roles' layouts overlaid at `base` — dx's A tile + 5-stage ring
// and dw's ring / staging tile — then 1 KiB of mbarriers (dx's ring at +0, dw's at +256), then dx's two 16 KiB
// staging tiles (its TMA-store epilogue), after 1 KiB of alignment slack.
// dw's staging tile (128 unpadded rows of 1 KiB) lies above dx's A tile and ring stage 0, i.e. within dx's layout.
__host__ __device__ constexpr int router_gemm_bwd_tma_main_bytes(int E, int DWST) {
  const int dx = ((E + 63) / 64) * 64 * 128 + 5 * 32768;
  const int dw = DWST * 65536 > 128 * 1024 ? DWST * 65536 : 128 * 1024;
  return ((dx > dw ? dx : dw) + 1023) / 1024 * 1024;
}
__host__ __device__ constexpr int router_gemm_bwd_tma_smem_bytes(int E, int DWST) {
  return 1024 + router_gemm_bwd_tma_main_bytes(E, DWST) + 1024 + 2 * 16384;
}

namespace rgt {
// Until every slot of a ring whose producer stands at (s, phase) has been released by its consumers (the waits the
// producer would make before its next STAGES fills): all MMAs that read the ring have completed.
template <int STAGES>
__device__ __forceinline__ void ring_wait_released(u32 bars, int s, u32 phase) {
  for (int i = 0; i < STAGES; ++i) {
    mbar_wait(bars + 8 * (STAGES + s), phase ^ 1);
    if (++s == STAGES) {
      s = 0;
      phase ^= 1;
    }
  }
}
// `bytes` (a multiple of 16) from global memory → L2 only.
__device__ __forceinline__ void bulk_prefetch_l2(const void* p, u32 bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}
// The box at (c0, c1) of a 2-D tensor map → L2 only.
__device__ __forceinline__ void tma_prefetch_l2_2d(const void* tmap, int c0, int c1) {
  asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global.tile [%0, {%1, %2}];" ::"l"(reinterpret_cast<u64>(tmap)),
               "r"(c0), "r"(c1)
               : "memory");
}
}  // namespace rgt

// The groups' partials of a dw tile added inside the one-launch kernel (RouterGemmBwdTmaArgs::flags), by the 256
// consumer threads (t = 0 … 255) of every CTA of the tile. Publish: once the CTA's rows of its group partial are
// stored (a named barrier, then one release store at GPU scope). Reduce: one thread waits until the tile's ranges all
// published this launch's tag (relaxed loads, then one fence), then the CTA adds rows [R·y, R·y + R) of the G group
// partials as router_gemm_dw_reduce_kernel does (0 + p0 + p1 + …: the same bits), 16-byte loads through L2.
// The consumers only arrive (named barrier 5, non-blocking); producer warp 1 waits there and publishes, so the
// fence's wait for the partial's stores to be performed stays off the consumers' path into the next role.
__device__ __forceinline__ void router_gemm_dw_groups_arrive() { asm volatile("bar.arrive 5, 288;" ::: "memory"); }
__device__ __forceinline__ void router_gemm_dw_groups_publish(const RouterGemmBwdTmaArgs& a, int lane) {
  asm volatile("bar.sync 5, 288;" ::: "memory");  // every consumer thread's stores of the partial are done
  if (lane == 0) {
    unsigned* f = a.flags + blockIdx.y * gridDim.x + blockIdx.x;
    asm volatile("fence.acq_rel.gpu;\nst.release.gpu.global.u32 [%0], %1;" ::"l"(f), "r"(a.tag) : "memory");
  }
}
template <int K, int E>
__device__ __noinline__ void router_gemm_dw_groups_reduce(const RouterGemmBwdTmaArgs& a, int t, int first = 0,
                                                          bool ready = false) {
  constexpr int TILES_N = (K + 255) / 256, CPR = 64;  // 16-byte pieces a tile row
  const int ranges = static_cast<int>(gridDim.y), G = ranges / a.dw.cluster;
  const int n0 = (blockIdx.x % TILES_N) * 256, e0 = (blockIdx.x / TILES_N) * 128;
  const int R = (128 + ranges - 1) / ranges, r0 = static_cast<int>(blockIdx.y) * R;
  if (t == 0 && !ready) {
    // All the tile's flags loaded at once (relaxed: up to 8 in flight, not 8 acquire round trips in a row), again
    // until every one holds the tag, then one fence (acquire for all of them).
    u64 t0 = 0;
    for (u32 n = 0;; ++n) {
      bool all = true;
      unsigned v[8];
#pragma unroll
      for (int y = 0; y < 8; ++y)
        if (y < ranges)
          asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];"
                       : "=r"(v[y])
                       : "l"(a.flags + y * gridDim.x + blockIdx.x)
                       : "memory");
#pragma unroll
      for (int y = 0; y < 8; ++y)
        if (y < ranges) all = all && v[y] == a.tag;
      if (all) break;
      if ((n & 255u) == 0) {  // a wait normally ends within microseconds; 2 s means a CTA that never arrives
        const u64 now = globaltimer_ns();
        if (t0 == 0) t0 = now;
        else if (now - t0 > 2000000000ull) __trap();
      }
    }
    asm volatile("fence.acq_rel.gpu;" ::: "memory");
  }
  rgt::bar_sync_consumers();
  const i64 n = static_cast<i64>(E) * K;
  constexpr int B = 4;  // pieces a thread per round (R = 16: all of them), their G loads issued group by group
  for (int i0 = t + 256 * first; i0 < R * CPR; i0 += 256 * B) {
    float sum[B][4];
    i64 off[B];
    bool ok[B];
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const int i = i0 + b * 256, r = r0 + i / CPR, c = n0 + (i % CPR) * 4;
      ok[b] = i < R * CPR && r < 128 && e0 + r < E && c < K;
      off[b] = static_cast<i64>(e0 + r) * K + c;
#pragma unroll
      for (int j = 0; j < 4; ++j) sum[b][j] = 0.f;
    }
#pragma unroll
    for (int g = 0; g < 8; ++g) {
      if (g >= G) break;
      float4 q[B];
#pragma unroll
      for (int b = 0; b < B; ++b)
        q[b] = ok[b] ? __ldcg(reinterpret_cast<const float4*>(a.dw.partial + g * n + off[b])) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int b = 0; b < B; ++b) {
        sum[b][0] += q[b].x;
        sum[b][1] += q[b].y;
        sum[b][2] += q[b].z;
        sum[b][3] += q[b].w;
      }
    }
#pragma unroll
    for (int b = 0; b < B; ++b)
      if (ok[b])
        store16(a.dw.dw + off[b], Vec16{{__float_as_uint(sum[b][0]), __float_as_uint(sum[b][1]),
                                         __float_as_uint(sum[b][2]), __float_as_uint(sum[b][3])}});
  }

}

// The groups' sum of the one-launch kernel (dw first) spread over its dx column blocks, so its L2 round trips hide
// under MMAs: each consumer thread owns pieces t, t + 256, … of the CTA's slice (router_gemm_dw_groups_reduce's
// partition and order: the same bits). Per block: before() issues the loads of its next piece (G partials) once
// the tile's flags were all seen (relaxed loads, then one acq_rel fence), else the flag loads; after() (the block's
// MMAs done) adds and stores the piece, or reads the flags. finish() does what is left after the last block (waiting
// for the flags if they were never all seen) — with one dx tile a CTA and R = 16, 4 of dx's 8 blocks suffice.
template <int K, int E>
struct RgGroupsSumHook {
  static constexpr bool kPrefetchG = false;
  const RouterGemmBwdTmaArgs* a;
  int t, done, np;
  bool ready, checking, pend;
  unsigned fl[8];
  float4 q[8];
  __device__ __forceinline__ RgGroupsSumHook(const RouterGemmBwdTmaArgs& args, int thread)
      : a(&args), t(thread), done(0), ready(false), checking(false), pend(false) {
    const int ranges = static_cast<int>(gridDim.y), R = (128 + ranges - 1) / ranges;
    np = (R * 64 - t + 255) / 256;  // pieces t, t + 256, … below R·64
  }
  __device__ __forceinline__ i64 offset(bool& ok) const {
    constexpr int TILES_N = (K + 255) / 256;
    const int ranges = static_cast<int>(gridDim.y), R = (128 + ranges - 1) / ranges;
    const int n0 = (blockIdx.x % TILES_N) * 256, e0 = (blockIdx.x / TILES_N) * 128;
    const int i = t + 256 * done, r = static_cast<int>(blockIdx.y) * R + i / 64, c = n0 + (i % 64) * 4;
    ok = r < 128 && e0 + r < E && c < K;
    return static_cast<i64>(e0 + r) * K + c;
  }
  __device__ __forceinline__ void before() {
    if (done >= np) return;
    const int ranges = static_cast<int>(gridDim.y), G = ranges / a->dw.cluster;
    if (ready) {
      bool ok;
      const i64 off = offset(ok);
#pragma unroll
      for (int g = 0; g < 8; ++g)
        if (g < G && ok) q[g] = __ldcg(reinterpret_cast<const float4*>(a->dw.partial + g * (static_cast<i64>(E) * K) + off));
      pend = true;
    } else if (!checking) {
#pragma unroll
      for (int y = 0; y < 8; ++y)
        if (y < ranges)
          asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];"
                       : "=r"(fl[y])
                       : "l"(a->flags + y * gridDim.x + blockIdx.x)
                       : "memory");
      checking = true;
    }
  }
  __device__ __forceinline__ void after() {
    const int ranges = static_cast<int>(gridDim.y), G = ranges / a->dw.cluster;
    if (checking) {
      bool all = true;
#pragma unroll
      for (int y = 0; y < 8; ++y)
        if (y < ranges) all = all && fl[y] == a->tag;
      checking = false;
      if (all) {
        asm volatile("fence.acq_rel.gpu;" ::: "memory");
        ready = true;
      }
    }
    if (pend) {
      bool ok;
      const i64 off = offset(ok);
      if (ok) {
        float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int g = 0; g < 8; ++g)
          if (g < G) {
            sum[0] += q[g].x;
            sum[1] += q[g].y;
            sum[2] += q[g].z;
            sum[3] += q[g].w;
          }
        store16(a->dw.dw + off, Vec16{{__float_as_uint(sum[0]), __float_as_uint(sum[1]), __float_as_uint(sum[2]),
                                        __float_as_uint(sum[3])}});
      }
      ++done;
      pend = false;
    }
  }
};

// The backward in one launch (precision standard: dx from bf16(g), dw from g hi + lo): the dw role, then the dx role,
// in every CTA. Grid = the dw kernel's: (ceil(E/128)·ceil(K/256), ranges) CTAs of 384 threads, clusters (1,
// a.dw.cluster, 1); each CTA is the dw kernel's CTA of the same (tile, T range) — same partition, same pair sums and
// group partials, so dw has the same bits — and then takes dx tiles cta, cta + ncta, … of the dx kernel's 64-token
// tiles (CTA id cta = blockIdx.y·gridDim.x + blockIdx.x; dx tiles are independent: the same bits as the dx kernel),
// with 5 stages and the TMA-store epilogue, no multicast. The dx producer refills the ring bytes once the pair's last
// cluster barrier has passed (with clusters of 1, once every dw stage is released), the consumers rewrite the A tile
// after theirs; dx's g rows are prefetched into L2 near dw's end (and with option kRgOneWPrefetch, the op's default
// since session 10, all of w: a 64 × 64 box a CTA), and the dw role's x tiles load L2 evict-first. With a.flags the
// groups of T ranges are summed in the kernel (above). (Session 9 measured the other orders — all of dx
// first: 62.7–64.3 µs; half of dx's column blocks, dw, the other half: 62.4 — against 56.3–56.9 for this one.)
template <int K, int E, int DWST>
__global__ void __launch_bounds__(384, 1) router_gemm_bwd_tma_kernel(const __grid_constant__ RouterGemmBwdTmaArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int DXST = 5, TM = 64, BK = 64, DXSPLIT = 0, DWSPLIT = 1;
  constexpr int MAIN = router_gemm_bwd_tma_main_bytes(E, DWST), A_BYTES = ((E + 63) / 64) * TM * 128;
  static_assert(router_gemm_bwd_tma_smem_bytes(E, DWST) <= 227 * 1024, "both roles' shared memory must fit");
  static_assert(16 * DXST + 64 <= 256 && 16 * DWST <= 768, "the mbarriers fit their KiB");
  pdl_launch_dependents();  // router_gemm_dw_reduce_kernel (PDL) may be placed early; it waits for this grid

  extern __shared__ __align__(16) char smem_raw[];
  const u32 raw = static_cast<u32>(__cvta_generic_to_shared(smem_raw));
  const u32 base = (raw + 1023u) & ~1023u;
  const u32 dxbars = base + MAIN, dwbars = dxbars + 256, stg = base + MAIN + 1024;
  const int tid = threadIdx.x, wg = tid / 128;
  const int cta = static_cast<int>(blockIdx.y * gridDim.x + blockIdx.x), ncta = static_cast<int>(gridDim.x * gridDim.y);
  u64* const dxtr = a.dx.trace ? a.dx.trace + static_cast<i64>(cta) * kRgTraceSlots : nullptr;  // (measurement)
  u64* const dwtr = a.dw.trace ? a.dw.trace + static_cast<i64>(cta) * kRgTraceSlots : nullptr;
  const u64 t0_ns = dxtr || dwtr ? globaltimer_ns() : 0, t0_clk = dxtr || dwtr ? rgt::clk() : 0;

  if (tid == 0) {
    for (int s = 0; s < DXST; ++s) {
      mbar_init(dxbars + 8 * s, 1);
      mbar_init(dxbars + 8 * (DXST + s), 2);
    }
    for (int s = 0; s < DWST; ++s) {
      mbar_init(dwbars + 8 * s, 1);
      mbar_init(dwbars + 8 * (DWST + s), 2);
    }
    fence_mbar_init();
  }
  __syncthreads();

  if (wg == 0) {  // producer
    setmaxnreg_dec<40>();
    int s = 0, xs = 0;  // the dw and dx rings' positions
    u32 phase = 0, xphase = 0;
    const bool reduce = a.flags != nullptr;  // (uniform)
    if (tid == 0) {
      router_gemm_dw_tma_produce<K, E, DWST, DWSPLIT, BK>(a.dw, base, dwbars, dwtr, t0_ns, t0_clk, s, phase);
      // dw's last chunk is requested: bring the g rows of the CTA's first dx tile back into L2 (dw streamed them
      // through it, but also all of x since) while dw's last MMAs and its epilogue run.
      if (a.prefetch_g && cta < a.dx.tiles) {
        const int r0 = cta * TM, rows = a.dx.T - r0 < TM ? a.dx.T - r0 : TM;
        if (a.dx.g_stride == E) {
          rgt::bulk_prefetch_l2(a.dx.g + static_cast<i64>(r0) * E, static_cast<u32>(rows) * E * 4);
        } else {
          for (int r = 0; r < rows; ++r) rgt::bulk_prefetch_l2(a.dx.g + static_cast<i64>(r0 + r) * a.dx.g_stride, E * 4);
        }
      }
      if (a.options & kRgOneWPrefetch) {  // (measurement) this CTA's share of w's 64 × 64 boxes → L2
        constexpr int COLS = (K + 63) / 64, ROWS = (E + 63) / 64;
        for (int i = cta; i < COLS * ROWS; i += ncta)
          rgt::tma_prefetch_l2_2d(&a.dx.tmw, (i % COLS) * 64, (i / COLS) * 64);
      }
    }
    router_gemm_dw_tma_producer_tail(a.dw);
    if (tid == 0) {
      rgt::ring_wait_released<DWST>(dwbars, s, phase);
      router_gemm_dx_tma_produce<K, E, DXST, 1, DXSPLIT, TM>(a.dx, base + A_BYTES, dxbars, 0, cta, ncta, dxtr, t0_ns,
                                                              t0_clk, xs, xphase);
    } else if (reduce && tid >= 32 && tid < 64) {
      router_gemm_dw_groups_publish(a, tid - 32);
    }
  } else {  // consumers
    setmaxnreg_inc<232>();
    const bool reduce = a.flags != nullptr;  // (uniform: the host sets it only with groups of ranges)
    int first = 0;  // pieces of the groups' sum already done (under dx's blocks)
    bool ready = false;
    router_gemm_dw_tma_consume<K, E, DWST, DWSPLIT, BK, true, A_BYTES + 32768>(a.dw, base, dwbars, dwtr);
    if (reduce) router_gemm_dw_groups_arrive();
    if (reduce && a.interleave) {
      RgGroupsSumHook<K, E> hook(a, tid - 128);
      router_gemm_dx_tma_consume<K, E, DXST, 1, DXSPLIT, TM, true>(a.dx, base, dxbars, stg, 0, cta, ncta, dxtr, true,
                                                                    hook);
      first = hook.done;
      ready = hook.ready;
    } else {
      RgNoHook nh;
      router_gemm_dx_tma_consume<K, E, DXST, 1, DXSPLIT, TM, true>(a.dx, base, dxbars, stg, 0, cta, ncta, dxtr, true,
                                                                    nh);
    }
    if (reduce) {
      // (the wait is thread 0's, for all: with `ready` it saw every flag and fenced already; its barrier orders the
      // other threads' loads after that)
      router_gemm_dw_groups_reduce<K, E>(a, tid - 128, first, ready);
      if (dwtr && tid == 128) dwtr[kRgTraceWg0 + kRgTraceWgSlots] = rgt::clk();  // (measurement: slice reduced)
    }
  }
#else
  __trap();
#endif
}

}  // namespace kiln
