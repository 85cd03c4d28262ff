// kiln/pdl.cuh — programmatic dependent launch (sm_90+): the device half of LaunchDims::pdl (runtime_impl.hpp).
//
// A kernel launched with pdl = true may start while the previous kernel on its stream still runs. It must call
// pdl_wait() in every CTA before it reads anything the previous kernel writes, or writes anything that kernel reads
// or writes; pdl_wait returns once the previous kernel has completed and its memory operations are visible. A kernel
// calls pdl_launch_dependents() to let the next (pdl) kernel start before it completes: once every CTA has called it
// or exited. Both are no-ops before sm_90 and for kernels launched without the attribute.
#pragma once

namespace kiln {

__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace kiln
