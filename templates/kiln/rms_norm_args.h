// kiln/rms_norm_args.h — kernel argument blocks of RMSNorm forward/backward, shared by template and host recipe.
#pragma once

namespace kiln {

struct RmsNormFwdArgs {
  const void* x; long long x_stride;
  const void* w;
  void* y; long long y_stride;
  float* rms_out;  // [M] or null
  int M;
  float eps;
};

struct RmsNormBwdArgs {
  const void* dy; long long dy_stride;
  const void* x; long long x_stride;
  const void* w;
  void* dx; long long dx_stride;
  float* partial;  // [gridDim.x, N] fp32 workspace
  int M;
  float eps;
};

}  // namespace kiln
