#include "runtime/driver.hpp"

#include <dlfcn.h>

#include <fmt/format.h>

#include <mutex>

#include "kiln/errors.hpp"

namespace kiln::detail {
namespace {

struct Loaded {
  Driver drv;
  std::string error;  // non-empty: loading failed, the reason
};

Loaded load_driver() {
  Loaded out;
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    out.error = fmt::format("no CUDA driver found (dlopen libcuda.so.1: {})", dlerror());
    return out;
  }
  using GetProc = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
  auto get_proc = reinterpret_cast<GetProc>(dlsym(lib, "cuGetProcAddress_v2"));
  if (!get_proc) {
    out.error = "CUDA driver too old: libcuda.so.1 has no cuGetProcAddress_v2 (need a CUDA 12+ driver)";
    return out;
  }
  Driver& d = out.drv;
  std::string missing;
  auto resolve = [&](const char* name, void** slot, int version) {
    CUdriverProcAddressQueryResult status{};
    if (get_proc(name, slot, version, CU_GET_PROC_ADDRESS_DEFAULT, &status) != CUDA_SUCCESS || !*slot)
      missing += fmt::format(" {}", name);
  };
#define KILN_DRIVER_FN_AT(name, version) resolve(#name, reinterpret_cast<void**>(&d.name), version);
#define KILN_DRIVER_FN(name) resolve(#name, reinterpret_cast<void**>(&d.name), CUDA_VERSION);  // # before expansion: base names
#include "runtime/driver_fns.inc"
#undef KILN_DRIVER_FN
#undef KILN_DRIVER_FN_AT
  if (!missing.empty()) {
    out.error = fmt::format("CUDA driver lacks entry points:{}", missing);
    return out;
  }
  CUresult r = d.cuInit(0);
  if (r != CUDA_SUCCESS) {
    const char* s = nullptr;
    d.cuGetErrorString(r, &s);
    out.error = fmt::format("cuInit failed: {} ({})", s ? s : "?", static_cast<int>(r));
    return out;
  }
  d.cuDriverGetVersion(&d.version);
  return out;
}

const Loaded& loaded() {
  static const Loaded l = load_driver();
  return l;
}

}  // namespace

const Driver& driver() {
  const Loaded& l = loaded();
  if (!l.error.empty()) throw DeviceError(l.error);
  return l.drv;
}

bool driver_available() {
  const Loaded& l = loaded();
  if (!l.error.empty()) return false;
  int n = 0;
  return l.drv.cuDeviceGetCount(&n) == CUDA_SUCCESS && n > 0;
}

void check(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return;
  const char* name = nullptr;
  const char* desc = nullptr;
  const Driver& d = driver();
  d.cuGetErrorName(r, &name);
  d.cuGetErrorString(r, &desc);
  throw DeviceError(fmt::format("{} failed: {} ({})", what, name ? name : "?", desc ? desc : "?"));
}

}  // namespace kiln::detail
