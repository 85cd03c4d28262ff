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

void l2_flush(Runtime& rt, const void* buf, size_t bytes, unsigned* sink, Stream stream) {
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
  d.grid[0] = static_cast<unsigned>(impl.device().sm_count * 4);
  d.block[0] = 512;
  impl.launch(s, d, stream, a);
}

}  // namespace kiln::detail

KILN_REGISTER_FAMILY(l2_flush, kiln::detail::l2_flush_family())
