// Host recipe: the L2 flush the benchmark harness runs before every timed call (templates/kiln/l2_flush.cuh).
// Not part of any model, so prewarm does not list it.
#include "runtime/bench.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"

namespace kiln::detail {
namespace {

void render(const Specialization&, std::string& source, std::string& name) {
  source = "#include \"kiln/l2_flush.cuh\"\n";
  name = "kiln::l2_flush_kernel";
}

FamilyDef g_family{"l2_flush", {"read"}, {}, {}, render, nullptr, nullptr};

}  // namespace

FamilyDef& l2_flush_family() { return g_family; }

namespace {
void launch_l2_flush(Runtime& rt, const void* buf, size_t bytes, unsigned* sink, Stream stream, unsigned ctas,
                     unsigned threads) {
  auto& impl = rt.impl();
  Specialization s;
  s.family = &g_family;
  s.arch = impl.target_arch();
  struct {
    const void* buf;
    long long n16;
    unsigned* sink;
  } a{buf, static_cast<long long>(bytes / 16), sink};
  LaunchDims d;
  d.grid[0] = ctas;
  d.block[0] = threads;
  impl.launch(s, d, stream, a);
}
}  // namespace

void l2_flush(Runtime& rt, const void* buf, size_t bytes, unsigned* sink, Stream stream) {
  launch_l2_flush(rt, buf, bytes, sink, stream, static_cast<unsigned>(rt.impl().device().sm_count * 4), 512);
}

// The same kernel with nothing to read, one warp: what a launch costs between two events.
void empty_launch(Runtime& rt, unsigned* sink, Stream stream) { launch_l2_flush(rt, sink, 0, sink, stream, 1, 32); }

}  // namespace kiln::detail

KILN_REGISTER_FAMILY(l2_flush, kiln::detail::l2_flush_family())
