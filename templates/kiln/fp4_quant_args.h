// kiln/fp4_quant_args.h — argument block of templates/kiln/fp4_quant.cuh (host and device share it).
#pragma once

namespace kiln {

struct Fp4QuantArgs {
  const void* x;              // [rows, K] fp32 / bf16 / fp16, contiguous, 16-byte aligned
  const float* global_scale;  // NVFP4 only: [1] the encode multiplier G (448·6 / amax of the tensor, the caller's)
  unsigned char* q;           // [rows, K/2] packed E2M1 (element 2i in the low nibble) or [rows, K] E4M3 (MXFP8)
  unsigned char* sf;          // [rows, K/B] one scale byte a block: E4M3 (NVFP4) or UE8M0 (MXFP4, MXFP8)
  long long blocks;           // rows · K / B
};

}  // namespace kiln
