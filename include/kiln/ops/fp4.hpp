// kiln/ops/fp4.hpp — the block-scaled formats of the FP4 MoE (../shared/spec/fp4-moe.md §5; kiln's decisions §13):
// NVFP4, MXFP4 and MXFP8 quantizers, bit-exact against tests/reference/fp4_quant.* (the first piece of the FP4 MoE;
// the MoE itself is not built yet).
//
// x: fp32 / bf16 / fp16, contiguous, any rank ≥ 1 with last dim K (rows = the product of the others), 16-byte
// aligned. Outputs keep x's leading dims: q's last dim K/2 (packed E2M1, element 2i in the low nibble) or K (E4M3 for
// MXFP8); sf's last dim K/B with one scale byte a block of B consecutive elements of a row (uint8 or float8_e4m3fn
// dtype, as FlashInfer exposes scale bytes; row-major, the canonical layout of §6.2). Non-finite inputs: not in a
// block's amax; NaN encodes as +0 (E2M1) or NaN 0x7F (E4M3), ±inf as ±6 / ±448.
#pragma once
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"

namespace kiln {

// NVFP4 (B = 16, K % 16 == 0): global_scale = one fp32 element on the device, the encode multiplier G (FlashInfer's
// convention: 448·6 / amax of the tensor, finite and > 0); SF = e4m3_rn_satfinite((G·amax) / 6), q =
// e2m1_rn_satfinite((x·G) / SF) with IEEE fp32 division (kiln's rule; FlashInfer's fast path uses approximate
// reciprocals and can differ in rare codes); a block whose SF is 0 gets codes 0. Decode: e2m1(q)·SF / G.
void quantize_nvfp4(Runtime& rt, const TensorRef& x, const TensorRef& global_scale, const TensorRef& q,
                    const TensorRef& sf, Stream stream);

// MXFP4 (B = 32, K % 32 == 0): UE8M0 scale 2^e, e the smallest integer with 6·2^e ≥ amax (TRT-LLM's ceil rule on the
// exact value: no finite element saturates), byte e + 127 clamped to [0, 254], byte 0 for an all-zero block;
// q = e2m1_rn_satfinite(x / 2^e). Decode: e2m1(q)·2^(byte − 127).
void quantize_mxfp4(Runtime& rt, const TensorRef& x, const TensorRef& q, const TensorRef& sf, Stream stream);

// MXFP8 (B = 32, K % 32 == 0): as MXFP4 with 448 for 6 and q = e4m3_rn_satfinite(x / 2^e) (q dtype float8_e4m3fn or
// uint8).
void quantize_mxfp8(Runtime& rt, const TensorRef& x, const TensorRef& q, const TensorRef& sf, Stream stream);

}  // namespace kiln
