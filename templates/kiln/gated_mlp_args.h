// kiln/gated_mlp_args.h — the kernel argument block of templates/kiln/gated_mlp.cuh (host and device share it).
#pragma once
#include "kiln/tensor_map.h"

namespace kiln {

struct GatedMlpArgs {
  TensorMap tmx;    // x [M, H]: boxes of 128 bytes × 128 rows, 128-byte swizzle
  TensorMap tmg;    // W_g [I, H]: boxes of 128 bytes × BN rows
  TensorMap tmu;    // W_u [I, H]
  TensorMap tmo;    // out [M, I] (16-bit dtypes, staged): boxes of 128 bytes × 64 rows, 128-byte swizzle
  void* out;        // [M, I] (row stride out_stride elements)
  long long out_stride;
  int M;
  int m_tiles;      // ceil(M / 128)
  int staged;       // 1: the epilogue stages out tiles in shared memory and stores them by TMA (tmo); 0: from registers
};

}  // namespace kiln
