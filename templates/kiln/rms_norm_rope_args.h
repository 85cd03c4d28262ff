// kiln/rms_norm_rope_args.h — kernel argument blocks of fused RMSNorm + RoPE forward/backward (template and host).
// Strides are in elements; rows of x-like tensors are addressed as base + b·stride_b + s·stride_s (last dim dense).
#pragma once

namespace kiln {

struct RmsNormRopeFwdArgs {
  const void* x; long long x_sb, x_ss;
  const void* w;
  const void* cos; long long cos_ss;  // row s at cos + s·cos_ss
  const void* sin; long long sin_ss;
  void* y; long long y_sb, y_ss;
  int M;  // B·S rows
  int S;
  float eps;
};

struct RmsNormRopeBwdArgs {
  const void* dy; long long dy_sb, dy_ss;
  const void* x; long long x_sb, x_ss;
  const void* w;
  const void* cos; long long cos_ss;
  const void* sin; long long sin_ss;
  void* dx; long long dx_sb, dx_ss;
  float* partial;  // [gridDim.x, Hd] fp32: one dweight slice per CTA
  int M;
  int S;
  float eps;
};

}  // namespace kiln
