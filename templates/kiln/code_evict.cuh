// kiln/code_evict.cuh — a kernel whose point is its size (benchmarks only: `kiln bench --cold-code`). Launched with
// two CTAs of 4 warps for every SM, each warp running the whole straight-line body once, so that afterwards every
// SM's instruction caches hold this code and none of the kernel timed next: the state that kernel meets in a training
// step, where other kernels ran since its last call. (The bench's L2 read-flush does not do this: its own code is a
// few hundred bytes, so a kernel timed repeatedly finds its code where its previous call left it. Session 22's tuner
// read one 104 KB kernel ≈ 5 µs slower re-timed right after another kernel than repeated — code size the likely
// cause, not measured directly: bench/NOTES.md.)
// Body: kCodeEvictSteps steps of 4 multiply-adds on run-time operands and one add (no folding, no loop: ≈ 5 SASS
// instructions a step, 16 bytes each), ≈ 320 KB of code at 4096 steps — a few times an SM's instruction caches.
#pragma once
#include "kiln/common.cuh"

namespace kiln {

constexpr int kCodeEvictSteps = 4096;

struct CodeEvictArgs {
  u32 a, b;
  unsigned* sink;  // written only if the impossible happens, so the arithmetic stays
};

__global__ void __launch_bounds__(128) code_evict_kernel(const CodeEvictArgs a) {
  u32 r0 = threadIdx.x, r1 = threadIdx.x ^ a.a, r2 = threadIdx.x + a.b, r3 = threadIdx.x * 3u;
  u32 k = a.a;
#pragma unroll
  for (int i = 0; i < kCodeEvictSteps; ++i) {
    asm volatile(
        "mad.lo.u32 %0, %0, %4, %5;\n\t"
        "mad.lo.u32 %1, %1, %5, %4;\n\t"
        "mad.lo.u32 %2, %2, %4, %0;\n\t"
        "mad.lo.u32 %3, %3, %5, %1;\n\t"
        "add.u32 %4, %4, %6;"
        : "+r"(r0), "+r"(r1), "+r"(r2), "+r"(r3), "+r"(k)
        : "r"(a.b), "r"(0x9e3779b9u + 2u * static_cast<u32>(i)));
  }
  if ((r0 ^ r1 ^ r2 ^ r3) == 0x9e3779b9u && threadIdx.x == 0x7fff) *a.sink = r0;
}

}  // namespace kiln
