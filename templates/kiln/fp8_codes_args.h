// kiln/fp8_codes_args.h — argument blocks of templates/kiln/fp8_codes.cuh (host and device share them).
#pragma once

namespace kiln {

struct Fp8QuantizeArgs {
  const void* x;       // [n] fp32 / bf16 / fp16, 16-byte aligned
  unsigned char* q;    // [n] uint8 codes
  float* scale;        // [1] the encode multiplier 448 / amax (1 where amax = 0)
  float* partials;     // [gridDim.x] each CTA's max |x| over its finite elements (scratch)
  long long n;         // elements
};

struct Fp8DequantizeArgs {
  const unsigned char* q;  // [n] uint8 codes
  const float* scale;      // [1]
  void* out;               // [n] bf16 / fp16 / fp32, 16-byte aligned
  long long n;
};

}  // namespace kiln
