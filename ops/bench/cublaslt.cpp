// ops/bench/cublaslt.cpp — the cuBLASLt baseline (see cublaslt.hpp). Only the few entry points and constants it uses
// are declared here; where the toolkit's cublasLt.h is found at build time it is included only to check those
// declarations against it (constants and struct sizes), so kiln builds without it and never links it.
#include "ops/bench/cublaslt.hpp"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cmath>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "kiln/errors.hpp"
#include "runtime/bench.hpp"

#if __has_include(<cublasLt.h>)
#include <cublasLt.h>
#define KILN_HAVE_CUBLASLT_H 1
#endif

namespace kiln::detail {
namespace {

// The subset of cublasLt.h this file uses (values from CUDA 13's headers; checked against them below when present).
using LtStatus = int;                           // cublasStatus_t
using LtHandle = void*;                         // cublasLtHandle_t
using LtDesc = void*;                           // cublasLtMatmulDesc_t
using LtLayout = void*;                         // cublasLtMatrixLayout_t
using LtPref = void*;                           // cublasLtMatmulPreference_t
struct LtAlgo {                                 // cublasLtMatmulAlgo_t
  uint64_t data[8];
};
struct LtHeuristic {                            // cublasLtMatmulHeuristicResult_t
  LtAlgo algo;
  size_t workspaceSize;
  LtStatus state;
  float wavesCount;
  int reserved[4];
};
constexpr int kLtSuccess = 0;                   // CUBLAS_STATUS_SUCCESS
constexpr int kLtCompute32F = 68;               // CUBLAS_COMPUTE_32F
constexpr int kLtCompute32FFastTf32 = 77;       // CUBLAS_COMPUTE_32F_FAST_TF32
constexpr int kLtR32F = 0;                      // CUDA_R_32F
constexpr int kLtR16F = 2;                      // CUDA_R_16F
constexpr int kLtR16BF = 14;                    // CUDA_R_16BF
constexpr int kLtR8F_E4M3 = 28;                 // CUDA_R_8F_E4M3
constexpr int32_t kLtOpN = 0, kLtOpT = 1;       // CUBLAS_OP_N / _T
constexpr int kLtDescTransA = 3, kLtDescTransB = 4;  // CUBLASLT_MATMUL_DESC_TRANSA / _TRANSB
constexpr int kLtPrefMaxWorkspace = 1;          // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
constexpr int kLtAlgoConfigId = 0;              // CUBLASLT_ALGO_CONFIG_ID
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

#ifdef KILN_HAVE_CUBLASLT_H
static_assert(kLtSuccess == CUBLAS_STATUS_SUCCESS && kLtCompute32F == CUBLAS_COMPUTE_32F &&
              kLtCompute32FFastTf32 == CUBLAS_COMPUTE_32F_FAST_TF32 && kLtR32F == CUDA_R_32F &&
              kLtR16F == CUDA_R_16F && kLtR16BF == CUDA_R_16BF && kLtR8F_E4M3 == CUDA_R_8F_E4M3 && kLtOpN == CUBLAS_OP_N && kLtOpT == CUBLAS_OP_T &&
              kLtDescTransA == CUBLASLT_MATMUL_DESC_TRANSA && kLtDescTransB == CUBLASLT_MATMUL_DESC_TRANSB &&
              kLtPrefMaxWorkspace == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES &&
              kLtAlgoConfigId == CUBLASLT_ALGO_CONFIG_ID);
static_assert(sizeof(LtAlgo) == sizeof(cublasLtMatmulAlgo_t) &&
              sizeof(LtHeuristic) == sizeof(cublasLtMatmulHeuristicResult_t) &&
              offsetof(LtHeuristic, state) == offsetof(cublasLtMatmulHeuristicResult_t, state) &&
              sizeof(LtStatus) == sizeof(cublasStatus_t));
#endif

struct LtApi {
  LtStatus (*create)(LtHandle*);
  LtStatus (*destroy)(LtHandle);
  size_t (*get_version)();
  LtStatus (*desc_create)(LtDesc*, int, int);
  LtStatus (*desc_destroy)(LtDesc);
  LtStatus (*desc_set)(LtDesc, int, const void*, size_t);
  LtStatus (*layout_create)(LtLayout*, int, uint64_t, uint64_t, int64_t);
  LtStatus (*layout_destroy)(LtLayout);
  LtStatus (*pref_create)(LtPref*);
  LtStatus (*pref_destroy)(LtPref);
  LtStatus (*pref_set)(LtPref, int, const void*, size_t);
  LtStatus (*heuristic)(LtHandle, LtDesc, LtLayout, LtLayout, LtLayout, LtLayout, LtPref, int, LtHeuristic*, int*);
  LtStatus (*matmul)(LtHandle, LtDesc, const void*, const void*, LtLayout, const void*, LtLayout, const void*,
                     const void*, LtLayout, void*, LtLayout, const LtAlgo*, void*, size_t, Stream);
  LtStatus (*algo_config_get)(const LtAlgo*, int, void*, size_t, size_t*);
};

struct LoadedLt {
  LtApi api{};
  std::string error;  // non-empty: not usable, the reason
};

// Opened once and never closed (cuBLAS keeps per-process state).
const LoadedLt& loaded_lt() {
  static const LoadedLt l = [] {
    LoadedLt out;
    void* lib = nullptr;
    std::string tried;
    for (const char* name : {"libcublasLt.so.13", "/usr/local/cuda/lib64/libcublasLt.so.13"}) {
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib) break;
      const char* e = dlerror();
      tried += fmt::format("{}{}", tried.empty() ? "" : "; ", e ? e : name);
    }
    if (!lib) {
      out.error = fmt::format("libcublasLt.so.13 not found ({})", tried);
      return out;
    }
    std::string missing;
    auto sym = [&](auto& slot, const char* name) {
      slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(dlsym(lib, name));
      if (!slot) missing += fmt::format(" {}", name);
    };
    LtApi& a = out.api;
    sym(a.create, "cublasLtCreate");
    sym(a.destroy, "cublasLtDestroy");
    sym(a.get_version, "cublasLtGetVersion");
    sym(a.desc_create, "cublasLtMatmulDescCreate");
    sym(a.desc_destroy, "cublasLtMatmulDescDestroy");
    sym(a.desc_set, "cublasLtMatmulDescSetAttribute");
    sym(a.layout_create, "cublasLtMatrixLayoutCreate");
    sym(a.layout_destroy, "cublasLtMatrixLayoutDestroy");
    sym(a.pref_create, "cublasLtMatmulPreferenceCreate");
    sym(a.pref_destroy, "cublasLtMatmulPreferenceDestroy");
    sym(a.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    sym(a.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    sym(a.matmul, "cublasLtMatmul");
    sym(a.algo_config_get, "cublasLtMatmulAlgoConfigGetAttribute");
    if (!missing.empty()) out.error = fmt::format("libcublasLt.so.13 lacks{}", missing);
    return out;
  }();
  return l;
}

// cudaDataType_t of an element type (-1: not one a CublasLtGemm takes).
int lt_type(DType t) {
  switch (t) {
    case DType::bf16: return kLtR16BF;
    case DType::f16: return kLtR16F;
    case DType::f32: return kLtR32F;
    case DType::e4m3: return kLtR8F_E4M3;
    default: return -1;
  }
}

}  // namespace

struct CublasLtGemm::Impl {
  const LtApi* api = nullptr;
  LtHandle handle = nullptr;
  LtDesc desc = nullptr;
  LtLayout a = nullptr, b = nullptr, d = nullptr;
  LtPref pref = nullptr;
  LtAlgo algo{};
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  ~Impl() {
    if (api) {
      if (pref) api->pref_destroy(pref);
      for (LtLayout l : {a, b, d})
        if (l) api->layout_destroy(l);
      if (desc) api->desc_destroy(desc);
      if (handle) api->destroy(handle);
    }
    if (workspace) device_free(workspace);
  }
};

CublasLtGemm::CublasLtGemm(int64_t T, int64_t K, int64_t E) : CublasLtGemm(T, K, E, CublasLtGemmOptions{}) {}

CublasLtGemm::CublasLtGemm(int64_t T, int64_t K, int64_t E, const CublasLtGemmOptions& opts)
    : impl_(std::make_unique<Impl>()) {
  const int ab_type = lt_type(opts.ab), d_type = lt_type(opts.d);
  if (ab_type < 0 || d_type < 0 || opts.d == DType::e4m3) {
    why_ = fmt::format("CublasLtGemm: unsupported element types ({} inputs, {} output)", dtype_name(opts.ab),
                       dtype_name(opts.d));
    return;
  }
  const bool fast_tf32 = opts.ab == DType::f32 && opts.tf32;
  const LoadedLt& lt = loaded_lt();
  if (!lt.error.empty()) {
    why_ = lt.error;
    return;
  }
  Impl& m = *impl_;
  const LtApi& api = lt.api;
  m.api = &api;
  auto ok = [&](LtStatus s, const char* what) {
    if (s != kLtSuccess && why_.empty()) why_ = fmt::format("{} returned status {}", what, s);
    return why_.empty();
  };
  if (!ok(api.create(&m.handle), "cublasLtCreate")) return;
  if (!ok(api.desc_create(&m.desc, fast_tf32 ? kLtCompute32FFastTf32 : kLtCompute32F, kLtR32F),
          "cublasLtMatmulDescCreate"))
    return;
  if (!ok(api.desc_set(m.desc, kLtDescTransA, &kLtOpT, sizeof(kLtOpT)), "set TRANSA") ||
      !ok(api.desc_set(m.desc, kLtDescTransB, &kLtOpN, sizeof(kLtOpN)), "set TRANSB"))
    return;
  // Column-major views: A = w as K × E (ld K, transposed to E × K), B = x as K × T (ld K), D = logits as E × T (ld E).
  if (!ok(api.layout_create(&m.a, ab_type, K, E, K), "layout A") ||
      !ok(api.layout_create(&m.b, ab_type, K, T, K), "layout B") ||
      !ok(api.layout_create(&m.d, d_type, E, T, E), "layout D"))
    return;
  m.workspace_bytes = kWorkspaceBytes;
  m.workspace = device_alloc(m.workspace_bytes);
  if (!ok(api.pref_create(&m.pref), "cublasLtMatmulPreferenceCreate") ||
      !ok(api.pref_set(m.pref, kLtPrefMaxWorkspace, &m.workspace_bytes, sizeof(m.workspace_bytes)),
          "set MAX_WORKSPACE_BYTES"))
    return;
  LtHeuristic h{};
  int found = 0;
  if (!ok(api.heuristic(m.handle, m.desc, m.a, m.b, m.d, m.d, m.pref, 1, &h, &found),
          "cublasLtMatmulAlgoGetHeuristic"))
    return;
  if (found < 1 || h.state != kLtSuccess) {
    why_ = fmt::format("cuBLASLt has no algorithm for {} x {} x {} (found {}, state {})", T, K, E, found, h.state);
    return;
  }
  m.algo = h.algo;
  int32_t id = -1;
  size_t written = 0;
  api.algo_config_get(&m.algo, kLtAlgoConfigId, &id, sizeof(id), &written);
  desc_ = fmt::format("cuBLASLt {}, algo {}{}", api.get_version(), id, fast_tf32 ? ", COMPUTE_32F_FAST_TF32" : "");
}

CublasLtGemm::~CublasLtGemm() = default;

void CublasLtGemm::run(const void* x, const void* w, void* logits, Stream stream) const {
  if (!available()) throw Error("cuBLASLt baseline unavailable: " + why_);
  const Impl& m = *impl_;
  const float alpha = 1.f, beta = 0.f;
  const LtStatus s = m.api->matmul(m.handle, m.desc, &alpha, w, m.a, x, m.b, &beta, logits, m.d, logits, m.d, &m.algo,
                                   m.workspace, m.workspace_bytes, stream);
  if (s != kLtSuccess) throw Error(fmt::format("cublasLtMatmul returned status {}", s));
}

double relative_l2_device(const void* a, const void* b, int64_t n) {
  device_synchronize();
  std::vector<float> ha(n), hb(n);
  copy_to_host(ha.data(), a, n * 4);
  copy_to_host(hb.data(), b, n * 4);
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(ha[i]) - hb[i];
    num += d * d;
    den += static_cast<double>(hb[i]) * hb[i];
  }
  return den > 0 ? std::sqrt(num / den) : (num > 0 ? INFINITY : 0.0);
}

}  // namespace kiln::detail
