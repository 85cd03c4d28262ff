// tests/rms_norm_errors_test.cpp — argument validation of the RMSNorm ops (CPU; runs in CI without a driver).
//
// kiln validates every argument before it touches the GPU, so these calls pass fake, aligned, non-null pointers
// that are never dereferenced. Each case changes one thing in a valid call and expects the documented error type
// with the offending argument named in the message.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

#include "kiln/ops/rms_norm.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

void* misaligned(int i, int by) { return static_cast<char*>(fake(i)) + by; }

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- rms_norm_block_quant_fwd -----------------------------------------------------------------------------------

class RmsNormBlockQuantErrors : public ::testing::Test {
 protected:
  static constexpr int64_t M = 256, N = 2048;

  // Outputs of a mode-2 call with x [m, n].
  static RmsNormBlockQuantOutputs outputs(int64_t m, int64_t n) {
    RmsNormBlockQuantOutputs o;
    o.q = TensorRef::contiguous(fake(2), DType::e4m3, {m, n});
    o.q_scale = TensorRef::contiguous(fake(3), DType::f32, {n / 128, m});
    o.rms_inv = TensorRef::contiguous(fake(4), DType::f32, {m});
    o.qT = TensorRef::contiguous(fake(5), DType::e4m3, {n, m});
    o.qT_scale = TensorRef::contiguous(fake(6), DType::f32, {(m + 127) / 128, n});
    return o;
  }

  void use_mode0() {
    opts.output_mode = 0;
    out.qT = {};
    out.qT_scale = {};
  }
  void use_mode1() {
    opts.output_mode = 1;
    out.q = {};
    out.q_scale = {};
    out.rms_inv = {};
    rms_inv_in = TensorRef::contiguous(fake(7), DType::f32, {M});
  }
  void call() { rms_norm_block_quant_fwd(rt, x, weight, rms_inv_in, out, opts, nullptr); }

  Runtime rt{cpu_options()};
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {M, N});
  TensorRef weight = TensorRef::contiguous(fake(1), DType::bf16, {N});
  TensorRef rms_inv_in;  // modes 0 and 2 take none
  RmsNormBlockQuantOutputs out = outputs(M, N);
  RmsNormBlockQuantOptions opts;  // mode 2, eps 1e-6
};

TEST_F(RmsNormBlockQuantErrors, ValidMode2CallReachesTheDevice) { EXPECT_REACHES_DEVICE(call()); }
TEST_F(RmsNormBlockQuantErrors, ValidMode0CallReachesTheDevice) {
  use_mode0();
  EXPECT_REACHES_DEVICE(call());
}
TEST_F(RmsNormBlockQuantErrors, ValidMode1CallReachesTheDevice) {
  use_mode1();
  EXPECT_REACHES_DEVICE(call());
}
TEST_F(RmsNormBlockQuantErrors, ValidStridedXReachesTheDevice) {
  x = TensorRef::strided_2d(fake(0), DType::bf16, M, N, N + 64);
  EXPECT_REACHES_DEVICE(call());
}

TEST_F(RmsNormBlockQuantErrors, XMustBeBf16) {
  for (DType d : {DType::f32, DType::f16, DType::e4m3}) {
    x.dtype = d;
    EXPECT_THROW_NAMING(call(), "x", UnsupportedDtypeError);
  }
}

TEST_F(RmsNormBlockQuantErrors, WeightOfWrongLength) {
  weight = TensorRef::contiguous(fake(1), DType::bf16, {N - 128});
  EXPECT_THROW_NAMING(call(), "weight", ShapeMismatchError);
  weight = TensorRef::contiguous(fake(1), DType::bf16, {1, N});
  EXPECT_THROW_NAMING(call(), "weight", ShapeMismatchError);
}

TEST_F(RmsNormBlockQuantErrors, WeightOfWrongDtype) {
  weight.dtype = DType::f16;  // bf16 or fp32 only
  EXPECT_THROW_NAMING(call(), "weight", UnsupportedDtypeError);
}

TEST_F(RmsNormBlockQuantErrors, NNotAMultipleOf128) {
  // Every tensor is shaped consistently for N = 2000 (16-byte rows), so only the block constraint is violated.
  // The message may name x or an output, so only the type is checked.
  const int64_t n = 2000;
  x = TensorRef::contiguous(fake(0), DType::bf16, {M, n});
  weight = TensorRef::contiguous(fake(1), DType::bf16, {n});
  out = outputs(M, n);
  out.q_scale = TensorRef::contiguous(fake(3), DType::f32, {(n + 127) / 128, M});
  EXPECT_THROW_NAMING(call(), "", ShapeMismatchError);
}

TEST_F(RmsNormBlockQuantErrors, XOfWrongRank) {
  x = TensorRef::contiguous(fake(0), DType::bf16, {2, M / 2, N});
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
  x = TensorRef::contiguous(fake(0), DType::bf16, {M * N});
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
}

TEST_F(RmsNormBlockQuantErrors, XNotContiguousAlongRows) {
  x.strides = {2 * N, 2};
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError, InvalidArgument);
}

TEST_F(RmsNormBlockQuantErrors, XRowStrideBreaksAlignment) {
  x = TensorRef::strided_2d(fake(0), DType::bf16, M, N, N + 1);  // rows no longer 16-byte aligned
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError, InvalidArgument);
}

TEST_F(RmsNormBlockQuantErrors, QOfWrongShape) {
  out.q = TensorRef::contiguous(fake(2), DType::e4m3, {M, N + 128});
  EXPECT_THROW_NAMING(call(), "q", ShapeMismatchError);
  out.q = TensorRef::contiguous(fake(2), DType::e4m3, {N, M});
  EXPECT_THROW_NAMING(call(), "q", ShapeMismatchError);
}

TEST_F(RmsNormBlockQuantErrors, QScaleOfWrongShape) {
  out.q_scale = TensorRef::contiguous(fake(3), DType::f32, {M, N / 128});  // token-major: not kiln's layout
  EXPECT_THROW_NAMING(call(), "q_scale", ShapeMismatchError);
  out.q_scale = TensorRef::contiguous(fake(3), DType::f32, {N / 128, M + 1});
  EXPECT_THROW_NAMING(call(), "q_scale", ShapeMismatchError);
}

TEST_F(RmsNormBlockQuantErrors, QTOfWrongShape) {
  out.qT = TensorRef::contiguous(fake(5), DType::e4m3, {M, N});
  EXPECT_THROW_NAMING(call(), "qT", ShapeMismatchError);
}

TEST_F(RmsNormBlockQuantErrors, QTScaleOfWrongShape) {
  out.qT_scale = TensorRef::contiguous(fake(6), DType::f32, {N, M / 128});
  EXPECT_THROW_NAMING(call(), "qT_scale", ShapeMismatchError);
  out.qT_scale = TensorRef::contiguous(fake(6), DType::f32, {M / 128 + 1, N});
  EXPECT_THROW_NAMING(call(), "qT_scale", ShapeMismatchError);
}

TEST_F(RmsNormBlockQuantErrors, RmsInvOfWrongShapeOrDtype) {
  out.rms_inv = TensorRef::contiguous(fake(4), DType::f32, {M + 1});
  EXPECT_THROW_NAMING(call(), "rms_inv", ShapeMismatchError);
  out.rms_inv = TensorRef::contiguous(fake(4), DType::bf16, {M});
  EXPECT_THROW_NAMING(call(), "rms_inv", UnsupportedDtypeError);
}

TEST_F(RmsNormBlockQuantErrors, OutputsOfWrongDtype) {
  out.q.dtype = DType::bf16;
  EXPECT_THROW_NAMING(call(), "q", UnsupportedDtypeError);
  out.q.dtype = DType::e5m2;
  EXPECT_THROW_NAMING(call(), "q", UnsupportedDtypeError);
  out = outputs(M, N);
  out.q_scale.dtype = DType::bf16;
  EXPECT_THROW_NAMING(call(), "q_scale", UnsupportedDtypeError);
  out = outputs(M, N);
  out.qT.dtype = DType::u8;
  EXPECT_THROW_NAMING(call(), "qT", UnsupportedDtypeError);
  out = outputs(M, N);
  out.qT_scale.dtype = DType::f16;
  EXPECT_THROW_NAMING(call(), "qT_scale", UnsupportedDtypeError);
}

TEST_F(RmsNormBlockQuantErrors, NonContiguousOutputs) {
  out.q = TensorRef::strided_2d(fake(2), DType::e4m3, M, N, N + 128);
  EXPECT_THROW_NAMING(call(), "q", ShapeMismatchError, InvalidArgument);
  out = outputs(M, N);
  out.q_scale = TensorRef::strided_2d(fake(3), DType::f32, N / 128, M, M + 4);
  EXPECT_THROW_NAMING(call(), "q_scale", ShapeMismatchError, InvalidArgument);
  out = outputs(M, N);
  out.qT = TensorRef::strided_2d(fake(5), DType::e4m3, N, M, M + 16);
  EXPECT_THROW_NAMING(call(), "qT", ShapeMismatchError, InvalidArgument);
  out = outputs(M, N);
  out.qT_scale = TensorRef::strided_2d(fake(6), DType::f32, M / 128, N, N + 4);
  EXPECT_THROW_NAMING(call(), "qT_scale", ShapeMismatchError, InvalidArgument);
}

// An output the mode produces, left empty. Any typed error naming it is accepted: an empty TensorRef also has the
// wrong (default) dtype and rank, and which check fires first is the recipe's choice.
TEST_F(RmsNormBlockQuantErrors, MissingOutputOfTheMode) {
  out.q = {};
  EXPECT_THROW_NAMING(call(), "q", InvalidArgument, ShapeMismatchError, UnsupportedDtypeError);
  out = outputs(M, N);
  out.qT_scale = {};
  EXPECT_THROW_NAMING(call(), "qT_scale", InvalidArgument, ShapeMismatchError, UnsupportedDtypeError);
  out = outputs(M, N);
  use_mode0();
  out.q_scale = {};
  EXPECT_THROW_NAMING(call(), "q_scale", InvalidArgument, ShapeMismatchError, UnsupportedDtypeError);
  out = outputs(M, N);
  use_mode1();
  out.qT = {};
  EXPECT_THROW_NAMING(call(), "qT", InvalidArgument, ShapeMismatchError, UnsupportedDtypeError);
}

TEST_F(RmsNormBlockQuantErrors, NullPointers) {
  x.data = nullptr;
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
  x.data = fake(0);
  weight.data = nullptr;
  EXPECT_THROW_NAMING(call(), "weight", InvalidArgument);
  weight.data = fake(1);
  out.q.data = nullptr;  // shaped but null: a required output without memory
  EXPECT_THROW_NAMING(call(), "q", InvalidArgument);
}

TEST_F(RmsNormBlockQuantErrors, MisalignedX) {
  x.data = misaligned(0, 2);  // bf16-aligned, not 16-byte aligned
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
}

TEST_F(RmsNormBlockQuantErrors, OutputModeOutOfRange) {
  for (int mode : {3, -1}) {
    opts.output_mode = mode;
    EXPECT_THROW_NAMING(call(), "output_mode", InvalidArgument);
  }
}

TEST_F(RmsNormBlockQuantErrors, Mode1NeedsRmsInvIn) {
  use_mode1();
  rms_inv_in = {};
  EXPECT_THROW_NAMING(call(), "rms_inv_in", InvalidArgument);
}

TEST_F(RmsNormBlockQuantErrors, Mode1RmsInvInOfWrongShapeOrDtype) {
  use_mode1();
  rms_inv_in = TensorRef::contiguous(fake(7), DType::f32, {M + 1});
  EXPECT_THROW_NAMING(call(), "rms_inv_in", ShapeMismatchError);
  rms_inv_in = TensorRef::contiguous(fake(7), DType::bf16, {M});
  EXPECT_THROW_NAMING(call(), "rms_inv_in", UnsupportedDtypeError);
}

TEST_F(RmsNormBlockQuantErrors, RmsInvInOnlyInMode1) {
  rms_inv_in = TensorRef::contiguous(fake(7), DType::f32, {M});
  EXPECT_THROW_NAMING(call(), "rms_inv_in", InvalidArgument);  // mode 2
  use_mode0();
  EXPECT_THROW_NAMING(call(), "rms_inv_in", InvalidArgument);
}

TEST_F(RmsNormBlockQuantErrors, TooManyRows) {
  // Shapes are consistent for M = 2^31; only the row count exceeds what kiln accepts.
  const int64_t m = int64_t{1} << 31;
  x = TensorRef::contiguous(fake(0), DType::bf16, {m, 128});
  weight = TensorRef::contiguous(fake(1), DType::bf16, {128});
  out = outputs(m, 128);
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
}

TEST_F(RmsNormBlockQuantErrors, RowsBeyondTheGridLimit) {  // 65535 tiles of 128 tokens (README: M ≤ 8 388 480)
  const int64_t m = int64_t{65535} * 128 + 1;
  x = TensorRef::contiguous(fake(0), DType::bf16, {m, 128});
  weight = TensorRef::contiguous(fake(1), DType::bf16, {128});
  out = outputs(m, 128);
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
  x = TensorRef::contiguous(fake(0), DType::bf16, {m - 1, 128});
  out = outputs(m - 1, 128);
  EXPECT_REACHES_DEVICE(call());
}

TEST_F(RmsNormBlockQuantErrors, NegativeRows) {  // a negative row count once reached the launch as a huge grid
  x.shape[0] = -M;
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
}

TEST_F(RmsNormBlockQuantErrors, EpsNegativeOrNaN) {
  for (float eps : {-1e-6f, kNaN}) {
    opts.eps = eps;
    EXPECT_THROW_NAMING(call(), "eps", InvalidArgument);
  }
}

// ---- rms_norm_fwd ----------------------------------------------------------------------------------------------

class RmsNormFwdErrors : public ::testing::Test {
 protected:
  static constexpr int64_t M = 256, N = 2048;
  void call() { rms_norm_fwd(rt, x, weight, y, rms_inv, eps, nullptr); }

  Runtime rt{cpu_options()};
  TensorRef x = TensorRef::contiguous(fake(0), DType::bf16, {M, N});
  TensorRef weight = TensorRef::contiguous(fake(1), DType::bf16, {N});
  TensorRef y = TensorRef::contiguous(fake(2), DType::bf16, {M, N});
  TensorRef rms_inv = TensorRef::contiguous(fake(3), DType::f32, {M});
  float eps = 1e-6f;
};

TEST_F(RmsNormFwdErrors, ValidCallReachesTheDevice) { EXPECT_REACHES_DEVICE(call()); }

TEST_F(RmsNormFwdErrors, YDtypeDiffersFromX) {
  for (DType d : {DType::f16, DType::f32}) {
    y.dtype = d;
    EXPECT_THROW_NAMING(call(), "y", UnsupportedDtypeError);
  }
}

TEST_F(RmsNormFwdErrors, YOfWrongShape) {
  y = TensorRef::contiguous(fake(2), DType::bf16, {M, N + 8});
  EXPECT_THROW_NAMING(call(), "y", ShapeMismatchError);
  y = TensorRef::contiguous(fake(2), DType::bf16, {M + 1, N});
  EXPECT_THROW_NAMING(call(), "y", ShapeMismatchError);
}

TEST_F(RmsNormFwdErrors, XOfUnsupportedDtype) {
  for (DType d : {DType::e4m3, DType::i32}) {
    x.dtype = y.dtype = d;
    EXPECT_THROW_NAMING(call(), "x", UnsupportedDtypeError);
  }
}

TEST_F(RmsNormFwdErrors, XOfWrongRank) {
  x = TensorRef::contiguous(fake(0), DType::bf16, {2, M / 2, N});
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
}

TEST_F(RmsNormFwdErrors, WeightOfWrongLengthOrDtype) {
  weight = TensorRef::contiguous(fake(1), DType::bf16, {N + 8});
  EXPECT_THROW_NAMING(call(), "weight", ShapeMismatchError);
  weight = TensorRef::contiguous(fake(1), DType::f16, {N});  // x's dtype or fp32 only
  EXPECT_THROW_NAMING(call(), "weight", UnsupportedDtypeError);
}

TEST_F(RmsNormFwdErrors, NNotAMultipleOf8) {
  // 16-byte vectors of bf16 need N % 8 == 0; 1004 keeps even 4-byte alignment.
  const int64_t n = 1004;
  x = TensorRef::contiguous(fake(0), DType::bf16, {M, n});
  weight = TensorRef::contiguous(fake(1), DType::bf16, {n});
  y = TensorRef::contiguous(fake(2), DType::bf16, {M, n});
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError, InvalidArgument);
}

TEST_F(RmsNormFwdErrors, RmsInvOfWrongShapeOrDtype) {
  rms_inv = TensorRef::contiguous(fake(3), DType::f32, {M - 1});
  EXPECT_THROW_NAMING(call(), "rms_inv", ShapeMismatchError);
  rms_inv = TensorRef::contiguous(fake(3), DType::bf16, {M});
  EXPECT_THROW_NAMING(call(), "rms_inv", UnsupportedDtypeError);
}

TEST_F(RmsNormFwdErrors, NullOrMisalignedPointers) {
  x.data = nullptr;
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
  x.data = misaligned(0, 2);
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
  x.data = fake(0);
  y.data = nullptr;
  EXPECT_THROW_NAMING(call(), "y", InvalidArgument);
  y.data = misaligned(2, 2);
  EXPECT_THROW_NAMING(call(), "y", InvalidArgument);
}

TEST_F(RmsNormFwdErrors, TooManyRows) {
  const int64_t m = int64_t{1} << 31;
  x = TensorRef::contiguous(fake(0), DType::bf16, {m, 128});
  weight = TensorRef::contiguous(fake(1), DType::bf16, {128});
  y = TensorRef::contiguous(fake(2), DType::bf16, {m, 128});
  rms_inv = TensorRef::contiguous(fake(3), DType::f32, {m});
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
}

TEST_F(RmsNormFwdErrors, NegativeRows) {  // a negative row count once reached the launch as a huge grid
  x.shape[0] = -M;
  y.shape[0] = -M;
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
}

TEST_F(RmsNormFwdErrors, EpsNegativeOrNaN) {
  for (float e : {-1.0f, kNaN}) {
    eps = e;
    EXPECT_THROW_NAMING(call(), "eps", InvalidArgument);
  }
}

// ---- rms_norm_bwd ----------------------------------------------------------------------------------------------

class RmsNormBwdErrors : public ::testing::Test {
 protected:
  static constexpr int64_t M = 256, N = 2048;
  void call() { rms_norm_bwd(rt, dy, x, weight, dx, dweight, eps, workspace, nullptr); }

  Runtime rt{cpu_options()};
  TensorRef dy = TensorRef::contiguous(fake(0), DType::bf16, {M, N});
  TensorRef x = TensorRef::contiguous(fake(1), DType::bf16, {M, N});
  TensorRef weight = TensorRef::contiguous(fake(2), DType::bf16, {N});
  TensorRef dx = TensorRef::contiguous(fake(3), DType::bf16, {M, N});
  TensorRef dweight = TensorRef::contiguous(fake(4), DType::f32, {N});
  TensorRef workspace;  // kiln allocates one (workspace errors are GPU tests: sizing may query the device)
  float eps = 1e-6f;
};

TEST_F(RmsNormBwdErrors, ValidCallReachesTheDevice) { EXPECT_REACHES_DEVICE(call()); }

TEST_F(RmsNormBwdErrors, DyShapeDiffersFromX) {
  dy = TensorRef::contiguous(fake(0), DType::bf16, {M, N + 8});
  EXPECT_THROW_NAMING(call(), "dy", ShapeMismatchError);
  dy = TensorRef::contiguous(fake(0), DType::bf16, {M + 1, N});
  EXPECT_THROW_NAMING(call(), "dy", ShapeMismatchError);
}

TEST_F(RmsNormBwdErrors, DxShapeDiffersFromX) {
  dx = TensorRef::contiguous(fake(3), DType::bf16, {M - 1, N});
  EXPECT_THROW_NAMING(call(), "dx", ShapeMismatchError);
}

TEST_F(RmsNormBwdErrors, DtypeMismatchWithX) {
  dy.dtype = DType::f16;
  EXPECT_THROW_NAMING(call(), "dy", UnsupportedDtypeError);
  dy.dtype = DType::bf16;
  dx.dtype = DType::f32;
  EXPECT_THROW_NAMING(call(), "dx", UnsupportedDtypeError);
}

TEST_F(RmsNormBwdErrors, XOfUnsupportedDtype) {
  x.dtype = dy.dtype = dx.dtype = DType::e4m3;
  EXPECT_THROW_NAMING(call(), "x", UnsupportedDtypeError);
}

TEST_F(RmsNormBwdErrors, DweightOfWrongDtypeOrLength) {
  dweight.dtype = DType::f16;  // fp32 or weight's dtype (bf16) only
  EXPECT_THROW_NAMING(call(), "dweight", UnsupportedDtypeError);
  dweight = TensorRef::contiguous(fake(4), DType::f32, {N - 8});
  EXPECT_THROW_NAMING(call(), "dweight", ShapeMismatchError);
}

TEST_F(RmsNormBwdErrors, WeightOfWrongLengthOrDtype) {
  weight = TensorRef::contiguous(fake(2), DType::bf16, {N / 2});
  EXPECT_THROW_NAMING(call(), "weight", ShapeMismatchError);
  weight = TensorRef::contiguous(fake(2), DType::f16, {N});
  EXPECT_THROW_NAMING(call(), "weight", UnsupportedDtypeError);
}

TEST_F(RmsNormBwdErrors, NNotAMultipleOf8) {
  const int64_t n = 1004;
  dy = TensorRef::contiguous(fake(0), DType::bf16, {M, n});
  x = TensorRef::contiguous(fake(1), DType::bf16, {M, n});
  weight = TensorRef::contiguous(fake(2), DType::bf16, {n});
  dx = TensorRef::contiguous(fake(3), DType::bf16, {M, n});
  dweight = TensorRef::contiguous(fake(4), DType::f32, {n});
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError, InvalidArgument);
}

TEST_F(RmsNormBwdErrors, NullPointers) {
  dy.data = nullptr;
  EXPECT_THROW_NAMING(call(), "dy", InvalidArgument);
  dy.data = fake(0);
  dweight.data = nullptr;
  EXPECT_THROW_NAMING(call(), "dweight", InvalidArgument);
}

TEST_F(RmsNormBwdErrors, MisalignedPointers) {  // rows and the weight are read as 16-byte vectors
  for (const auto& [t, arg, offset] : {std::tuple{&x, "x", 8}, {&dx, "dx", 2}, {&weight, "weight", 4}}) {
    void* const aligned = t->data;
    t->data = static_cast<char*>(aligned) + offset;
    EXPECT_THROW_NAMING(call(), arg, InvalidArgument);
    t->data = aligned;
  }
}

TEST_F(RmsNormBwdErrors, RowStrides) {
  dy = TensorRef::strided_2d(fake(0), DType::bf16, M, N, N + 4);  // rows 8 bytes off 16-byte alignment
  EXPECT_THROW_NAMING(call(), "dy", InvalidArgument);
  dy = TensorRef::strided_2d(fake(0), DType::bf16, M, N, N / 2);  // overlapping rows
  EXPECT_THROW_NAMING(call(), "dy", ShapeMismatchError);
}

TEST_F(RmsNormBwdErrors, NegativeRows) {
  for (TensorRef* t : {&dy, &x, &dx}) t->shape[0] = -M;
  EXPECT_THROW_NAMING(call(), "x", ShapeMismatchError);
}

TEST_F(RmsNormBwdErrors, TooManyRows) {
  const int64_t m = int64_t{1} << 31;
  for (TensorRef* t : {&dy, &x, &dx}) *t = TensorRef::contiguous(t->data, DType::bf16, {m, N});
  EXPECT_THROW_NAMING(call(), "x", InvalidArgument);
}

TEST_F(RmsNormBwdErrors, WorkspaceDtypeAndAlignment) {
  workspace = TensorRef::contiguous(fake(5), DType::bf16, {1 << 20});
  EXPECT_THROW_NAMING(call(), "workspace", UnsupportedDtypeError);
  workspace = TensorRef::contiguous(static_cast<char*>(fake(5)) + 4, DType::f32, {1 << 20});
  EXPECT_THROW_NAMING(call(), "workspace", InvalidArgument);
}

TEST_F(RmsNormBwdErrors, EpsNegativeOrNaN) {
  for (float e : {-1e-6f, kNaN}) {
    eps = e;
    EXPECT_THROW_NAMING(call(), "eps", InvalidArgument);
  }
}

}  // namespace
}  // namespace kiln::test
