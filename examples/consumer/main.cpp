// examples/consumer/main.cpp — kiln from C++: prewarm a model's kernels, call an op, handle kiln's errors.
//
//   app [CACHE_DIR] [--gpu]
//
// Without --gpu nothing here needs a GPU. With --gpu it also runs the op on device 0.
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include <kiln/kiln.hpp>

// A trainer's "RMSNorm, then fp8-quantize for the next GEMM" step. The trainer's framework owns the tensors;
// kiln takes their device pointers (PyTorch: t.data_ptr()) and the stream to launch on
// (torch.cuda.current_stream().cuda_stream). x [M, N] bf16, weight [N] bf16.
void rms_norm_fp8(kiln::Runtime& rt, void* x, void* weight, void* q, void* q_scale, void* qT, void* qT_scale,
                  int64_t M, int64_t N, kiln::Stream stream) {
  using kiln::DType, kiln::TensorRef;
  kiln::RmsNormBlockQuantOutputs out;
  out.q = TensorRef::contiguous(q, DType::e4m3, {M, N});                // row-wise fp8 codes
  out.q_scale = TensorRef::contiguous(q_scale, DType::f32, {N / 128, M});  // one scale per 1×128 block
  out.qT = TensorRef::contiguous(qT, DType::e4m3, {N, M});              // transposed codes
  out.qT_scale = TensorRef::contiguous(qT_scale, DType::f32, {(M + 127) / 128, N});
  kiln::RmsNormBlockQuantOptions opts;  // output_mode 2: both layouts; eps 1e-6
  kiln::rms_norm_block_quant_fwd(rt, TensorRef::contiguous(x, DType::bf16, {M, N}),
                                 TensorRef::contiguous(weight, DType::bf16, {N}), /*rms_inv_in=*/{}, out, opts, stream);
}

// --gpu only. Not part of using kiln (a trainer's tensors already live on the GPU): device memory from the CUDA
// driver, loaded at run time so that this program links no CUDA library and starts on machines without one.
class CudaDriver {
 public:
  CudaDriver() : lib_(dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
    if (!lib_) throw kiln::DeviceError(dlerror());
    int device = 0;
    void* context = nullptr;
    check(fn<int (*)(unsigned)>("cuInit")(0), "cuInit");
    check(fn<int (*)(int*, int)>("cuDeviceGet")(&device, 0), "cuDeviceGet");
    check(fn<int (*)(void**, int)>("cuDevicePrimaryCtxRetain")(&context, device), "cuDevicePrimaryCtxRetain");
    check(fn<int (*)(void*)>("cuCtxSetCurrent")(context), "cuCtxSetCurrent");  // the context kiln uses too
  }
  void* alloc(size_t bytes) {
    uint64_t p = 0;
    check(fn<int (*)(uint64_t*, size_t)>("cuMemAlloc_v2")(&p, bytes), "cuMemAlloc");
    return reinterpret_cast<void*>(p);
  }
  void fill_u16(void* p, uint16_t value, size_t count) {
    check(fn<int (*)(uint64_t, uint16_t, size_t)>("cuMemsetD16_v2")(addr(p), value, count), "cuMemsetD16");
  }
  void to_host(void* dst, void* src, size_t bytes) {  // waits for work queued on the default stream
    check(fn<int (*)(void*, uint64_t, size_t)>("cuMemcpyDtoH_v2")(dst, addr(src), bytes), "cuMemcpyDtoH");
  }

 private:
  template <class F> F fn(const char* name) {
    if (void* f = dlsym(lib_, name)) return reinterpret_cast<F>(f);
    throw kiln::DeviceError(std::string("libcuda.so.1 lacks ") + name);
  }
  static uint64_t addr(void* p) { return reinterpret_cast<uint64_t>(p); }
  static void check(int result, const char* what) {
    if (result != 0) throw kiln::DeviceError(std::string(what) + " failed: CUresult " + std::to_string(result));
  }
  void* lib_;
};

int run_on_gpu(kiln::Runtime& rt, int64_t N) {
  const int64_t M = 4096;  // tokens in the batch: a run-time argument, so every M uses the same kernel
  std::unique_ptr<CudaDriver> cuda;
  try {
    cuda = std::make_unique<CudaDriver>();
  } catch (const kiln::DeviceError& e) {
    std::printf("no GPU: %s\n", e.what());
    return 0;
  }
  void* x = cuda->alloc(M * N * 2);
  void* weight = cuda->alloc(N * 2);
  void* q_scale = cuda->alloc(N / 128 * M * 4);
  cuda->fill_u16(x, 0x3F80, M * N);  // bf16 1.0 everywhere
  cuda->fill_u16(weight, 0x3F80, N);
  const uint64_t compiles = rt.stats().compiles;
  rms_norm_fp8(rt, x, weight, cuda->alloc(M * N), q_scale, cuda->alloc(N * M), cuda->alloc((M + 127) / 128 * N * 4),
               M, N, /*stream=*/nullptr);  // (the example leaves freeing device memory to process exit)
  float scale = 0;
  cuda->to_host(&scale, q_scale, sizeof scale);
  std::printf("q_scale[0] = %.6f (expected 1/448 = %.6f); kernels compiled by the call: %llu\n", scale, 1 / 448.0,
              static_cast<unsigned long long>(rt.stats().compiles - compiles));
  return 0;
}

int main(int argc, char** argv) {
  kiln::RuntimeOptions options;  // cache_dir "": $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln
  bool gpu = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--gpu") gpu = true;
    else options.cache_dir = argv[i];
  }
  try {
    kiln::Runtime rt(options);

    // Compile every kernel the model needs for H100 before training starts: NVRTC only, no GPU needed
    // (`kiln prewarm --model ling-mini-2.0 --arch sm_90a` does the same). The trainer then finds them on disk.
    const kiln::ModelConfig model = kiln::load_model("ling-mini-2.0");
    const auto entries = rt.prewarm(model, {"sm_90a"});
    std::printf("prewarmed %zu kernels for %s in %s\n", entries.size(), model.name.c_str(), rt.cache_dir().c_str());

    // kiln checks every argument before it touches the GPU and throws a typed error naming the argument. Here x is
    // fp32 where the op takes bf16 (the call fails validation, so no memory is needed to show it).
    try {
      const int64_t M = 16, N = model.hidden_size;
      kiln::RmsNormBlockQuantOutputs out;
      kiln::rms_norm_block_quant_fwd(rt, kiln::TensorRef::contiguous(nullptr, kiln::DType::f32, {M, N}),
                                     kiln::TensorRef::contiguous(nullptr, kiln::DType::bf16, {N}), {}, out, {}, nullptr);
    } catch (const kiln::UnsupportedDtypeError& e) {
      std::printf("rejected: %s\n", e.what());
    }

    if (gpu) return run_on_gpu(rt, model.hidden_size);
    return 0;
  } catch (const kiln::Error& e) {  // DeviceError, CompileError, CacheError, ShapeMismatchError, …
    std::fprintf(stderr, "kiln: %s\n", e.what());
    return 1;
  }
}
