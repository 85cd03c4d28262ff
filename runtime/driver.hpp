// runtime/driver.hpp — the CUDA Driver API, loaded with dlopen("libcuda.so.1") on first GPU use and resolved
// through cuGetProcAddress. Compile-only work never touches it, so kiln runs on machines without a driver.
#pragma once
#include <cuda.h>

#include <string>

namespace kiln::detail {

struct Driver {
#define KILN_DRIVER_FN(name) decltype(&::name) name = nullptr;
#define KILN_DRIVER_FN_AT(name, version) KILN_DRIVER_FN(name)
#include "runtime/driver_fns.inc"
#undef KILN_DRIVER_FN_AT
#undef KILN_DRIVER_FN
  int version = 0;  // cuDriverGetVersion
};

// Loads the driver once (thread-safe) and returns it; throws DeviceError if libcuda.so.1 is missing or cuInit fails.
const Driver& driver();
// True if a driver can be loaded and at least one device exists (never throws). Tests use it to skip.
bool driver_available();
// Throws DeviceError naming `what` if `r` is not CUDA_SUCCESS.
void check(CUresult r, const char* what);

}  // namespace kiln::detail
