// kiln/fp8_gemm_args.h — argument blocks of templates/kiln/fp8_gemm.cuh (host and device share them).
#pragma once
#include "kiln/tensor_map.h"

namespace kiln {

struct Fp8GemmArgs {
  TensorMap tma;           // a codes [M, K] uint8: boxes of 128 bytes × 128 rows, 128-byte swizzle
  TensorMap tmb;           // bᵀ [N, K] int8 (code − 128): boxes of 128 bytes × BN rows
  TensorMap tmo;           // c [M, N] (16-bit, staged): boxes of 128 bytes × 64 rows
  const int* colsum;       // [N] Σ_k bᵀ[n][k]
  const float* a_scale;    // [1] encode multipliers (448 / max|·|)
  const float* b_scale;    // [1]
  void* out;               // c [M, N], row stride out_stride elements
  long long out_stride;
  int M;
  int m_tiles;             // ceil(M / 128)
  int staged;              // 1: TMA-store epilogue (tmo); 0: stores from the registers
  const void* bias;        // [N] added in fp32 before the one rounding, or null
  int bias_dtype;          // bias's kiln::DType code: 0 bf16, 1 f16, 2 f32
};

struct Fp8BPrepArgs {
  const unsigned char* b;  // [K, N] uint8 codes, row stride N
  signed char* bt;         // [N, K] int8: b[k][n] ^ 0x80
  int* colsum;             // [N] zeroed before the launch: Σ_k (b[k][n] − 128)
  int K;
  int N;
};

// The same from b already K-major: w [N, K] codes (a Linear's weight [out, in]): bᵀ = w ^ 0x80 and colsum[n] =
// Σ_k (w[n][k] − 128), written (not accumulated). K a multiple of 16, rows 16-byte aligned.
struct Fp8BPrepNkArgs {
  const unsigned char* w;  // [N, K] uint8 codes, row stride K
  signed char* bt;         // [N, K] int8
  int* colsum;             // [N]
  int K;
  int N;
};

}  // namespace kiln
