// Host recipe: the L2 flush the benchmark harness runs before every timed call (templates/kiln/l2_flush.cuh).
// Not part of any model, so prewarm does not list it.
#include "runtime/bench.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"

namespace kiln::detail {
namespace {

// Kernel 0 ("read"): the L2 read-flush. Kernel 1 ("evict_code", `kiln bench --cold-code`): templates/kiln/code_evict.cuh,
// a kernel of ≈ 320 KB of straight-line code run once on every SM, so that the timed kernel finds none of its code in
// the SMs' instruction caches.
void render(const Specialization& s, std::string& source, std::string& name) {
  if (s.kernel == 1) {
    source = "#include \"kiln/code_evict.cuh\"\n";
    name = "kiln::code_evict_kernel";
  } else {
    source = "#include \"kiln/l2_flush.cuh\"\n";
    name = "kiln::l2_flush_kernel";
  }
}

FamilyDef g_family{"l2_flush", {"read", "evict_code"}, {}, {}, render, nullptr, nullptr};

}  // namespace

FamilyDef& l2_flush_family() { return g_family; }

namespace {
// Kernel `kernel` of this family, one grid dimension, launched with `args`.
template <class Args>
void launch_kernel(Runtime& rt, uint32_t kernel, unsigned ctas, unsigned threads, const Args& args, Stream stream) {
  auto& impl = rt.impl();
  Specialization s;
  s.family = &g_family;
  s.kernel = kernel;
  s.arch = impl.target_arch();
  LaunchDims d;
  d.grid[0] = ctas;
  d.block[0] = threads;
  impl.launch(s, d, stream, args);
}
void launch_l2_flush(Runtime& rt, const void* buf, size_t bytes, unsigned* sink, Stream stream, unsigned ctas,
                     unsigned threads) {
  struct {
    const void* buf;
    long long n16;
    unsigned* sink;
  } a{buf, static_cast<long long>(bytes / 16), sink};
  launch_kernel(rt, 0, ctas, threads, a, stream);
}
}  // namespace

void l2_flush(Runtime& rt, const void* buf, size_t bytes, unsigned* sink, Stream stream) {
  launch_l2_flush(rt, buf, bytes, sink, stream, static_cast<unsigned>(rt.impl().device().sm_count * 4), 512);
}

// The same kernel with nothing to read, one warp: what a launch costs between two events.
void empty_launch(Runtime& rt, unsigned* sink, Stream stream) { launch_l2_flush(rt, sink, 0, sink, stream, 1, 32); }

void evict_code(Runtime& rt, unsigned* sink, Stream stream) {
  struct {
    uint32_t a, b;
    unsigned* sink;
  } a{0x01234567u, 0x89abcdefu, sink};
  // Two CTAs an SM's worth (4 warps each: one a sub-partition): an idle GPU's CTA scheduler gives every SM one before
  // any gets a second, and the second only repeats the same fetches.
  launch_kernel(rt, 1, static_cast<unsigned>(2 * rt.impl().device().sm_count), 128, a, stream);
}

}  // namespace kiln::detail

KILN_REGISTER_FAMILY(l2_flush, kiln::detail::l2_flush_family())
