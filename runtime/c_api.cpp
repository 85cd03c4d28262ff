// The C ABI (include/kiln/c_api.h): translate exceptions into status codes + thread-local text.
#include "kiln/c_api.h"

#include <string>

#include "kiln/kiln.hpp"

struct kiln_runtime {
  kiln::Runtime rt;
  explicit kiln_runtime(kiln::RuntimeOptions o) : rt(std::move(o)) {}
};

namespace {
thread_local std::string g_last_error;

template <typename F>
kiln_status guarded(F&& f) {
  try {
    f();
    g_last_error.clear();
    return KILN_OK;
  } catch (const kiln::ShapeMismatchError& e) {
    g_last_error = e.what();
    return KILN_ERROR_SHAPE_MISMATCH;
  } catch (const kiln::UnsupportedDtypeError& e) {
    g_last_error = e.what();
    return KILN_ERROR_UNSUPPORTED_DTYPE;
  } catch (const kiln::InvalidArgument& e) {
    g_last_error = e.what();
    return KILN_ERROR_INVALID_ARGUMENT;
  } catch (const kiln::DeviceError& e) {
    g_last_error = e.what();
    return KILN_ERROR_DEVICE;
  } catch (const kiln::CompileError& e) {
    g_last_error = e.what();
    return KILN_ERROR_COMPILE;
  } catch (const kiln::CacheError& e) {
    g_last_error = e.what();
    return KILN_ERROR_CACHE;
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return KILN_ERROR_UNKNOWN;
  }
}

static_assert(KILN_BF16 == int(kiln::DType::bf16) && KILN_F16 == int(kiln::DType::f16) &&
              KILN_F32 == int(kiln::DType::f32) && KILN_E4M3 == int(kiln::DType::e4m3) &&
              KILN_E5M2 == int(kiln::DType::e5m2) && KILN_I32 == int(kiln::DType::i32) &&
              KILN_I64 == int(kiln::DType::i64) && KILN_I16 == int(kiln::DType::i16) && KILN_U8 == int(kiln::DType::u8),
              "kiln_dtype numbers kiln::DType");

// A dtype argument of a C call: a value outside the enum (kiln::DType is one byte: 258 would have become fp32)
// is rejected naming the argument.
kiln::DType dt(kiln_dtype d, const char* op, const char* arg) {
  const int v = static_cast<int>(d);
  if (v < KILN_BF16 || v > KILN_U8)
    throw kiln::UnsupportedDtypeError(std::string(op) + ": argument '" + arg + "': expected a kiln_dtype (" +
                                      std::to_string(KILN_BF16) + " … " + std::to_string(KILN_U8) + "), got " +
                                      std::to_string(v));
  return static_cast<kiln::DType>(v);
}
kiln::Stream st(void* s) { return static_cast<kiln::Stream>(s); }
kiln::TensorRef t2(const void* p, kiln::DType d, int64_t r, int64_t c) {
  return kiln::TensorRef::contiguous(const_cast<void*>(p), d, {r, c});
}
kiln::TensorRef t1(const void* p, kiln::DType d, int64_t n) {
  return p ? kiln::TensorRef::contiguous(const_cast<void*>(p), d, {n}) : kiln::TensorRef{};
}
kiln::Runtime& rt_of(kiln_runtime* rt) {
  if (!rt) throw kiln::InvalidArgument("kiln C API: argument 'rt': expected a runtime from kiln_runtime_create, got null");
  return rt->rt;
}
}  // namespace

extern "C" {

const char* kiln_last_error(void) { return g_last_error.c_str(); }
const char* kiln_version(void) { return kiln::kVersion; }

kiln_status kiln_runtime_create(const char* cache_dir, const char* arch, kiln_runtime** out) {
  return guarded([&] {
    if (!out) throw kiln::InvalidArgument("kiln_runtime_create: argument 'out': expected a pointer, got null");
    kiln::RuntimeOptions o;
    if (cache_dir) o.cache_dir = cache_dir;
    if (arch) o.arch = arch;
    *out = new kiln_runtime(std::move(o));
  });
}

void kiln_runtime_destroy(kiln_runtime* rt) { delete rt; }

kiln_status kiln_rms_norm_block_quant_fwd(kiln_runtime* rt, const void* x, int64_t M, int64_t N, int64_t x_stride,
                                          const void* weight, kiln_dtype weight_dtype, const float* rms_inv_in,
                                          void* q, float* q_scale, float* rms_inv, void* qT, float* qT_scale,
                                          float eps, int round_scale, int output_mode, void* stream) {
  return guarded([&] {
    const kiln::DType w = dt(weight_dtype, "kiln_rms_norm_block_quant_fwd", "weight_dtype");
    kiln::RmsNormBlockQuantOutputs out;
    if (output_mode != 1) {
      out.q = t2(q, kiln::DType::e4m3, M, N);
      out.q_scale = t2(q_scale, kiln::DType::f32, N / 128, M);
      out.rms_inv = t1(rms_inv, kiln::DType::f32, M);
    }
    if (output_mode != 0) {
      out.qT = t2(qT, kiln::DType::e4m3, N, M);
      out.qT_scale = t2(qT_scale, kiln::DType::f32, (M + 127) / 128, N);
    }
    kiln::rms_norm_block_quant_fwd(
        rt_of(rt), kiln::TensorRef::strided_2d(const_cast<void*>(x), kiln::DType::bf16, M, N, x_stride),
        kiln::TensorRef::contiguous(const_cast<void*>(weight), w, {N}), t1(rms_inv_in, kiln::DType::f32, M), out,
        {eps, round_scale != 0, output_mode}, st(stream));
  });
}

kiln_status kiln_rms_norm_fwd(kiln_runtime* rt, const void* x, void* y, int64_t M, int64_t N, kiln_dtype dtype,
                              const void* weight, kiln_dtype weight_dtype, float* rms_inv, float eps, void* stream) {
  return guarded([&] {
    const kiln::DType t = dt(dtype, "kiln_rms_norm_fwd", "dtype");
    const kiln::DType w = dt(weight_dtype, "kiln_rms_norm_fwd", "weight_dtype");
    kiln::rms_norm_fwd(rt_of(rt), t2(x, t, M, N), kiln::TensorRef::contiguous(const_cast<void*>(weight), w, {N}),
                       t2(y, t, M, N), t1(rms_inv, kiln::DType::f32, M), eps, st(stream));
  });
}

kiln_status kiln_rms_norm_bwd(kiln_runtime* rt, const void* dy, const void* x, void* dx, int64_t M, int64_t N,
                              kiln_dtype dtype, const void* weight, kiln_dtype weight_dtype, void* dweight,
                              kiln_dtype dweight_dtype, float eps, void* stream) {
  return guarded([&] {
    const kiln::DType t = dt(dtype, "kiln_rms_norm_bwd", "dtype");
    const kiln::DType w = dt(weight_dtype, "kiln_rms_norm_bwd", "weight_dtype");
    const kiln::DType dw = dt(dweight_dtype, "kiln_rms_norm_bwd", "dweight_dtype");
    kiln::rms_norm_bwd(rt_of(rt), t2(dy, t, M, N), t2(x, t, M, N),
                       kiln::TensorRef::contiguous(const_cast<void*>(weight), w, {N}), t2(dx, t, M, N),
                       kiln::TensorRef::contiguous(dweight, dw, {N}), eps, kiln::TensorRef{}, st(stream));
  });
}

}  // extern "C"
