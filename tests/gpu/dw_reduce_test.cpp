// tests/gpu/dw_reduce_test.cpp — the shared second stage of every norm family's weight gradient
// (templates/kiln/dw_reduce.cuh: dw_reduce_kernel), launched directly through each family's reduce specialization.
//
// The partials are small integers, so every sum is exact in fp32 whatever the order: the result must equal the
// integer sum bit for bit (fp32 out), or its round-to-nearest-even (bf16 out). Covered: G = 0 (zeros), 1, a ragged
// 33, 135 (one batch of 16 loads per slice and a remainder), 700 (several batches); column counts that are not
// multiples of 32; FOLD > 1 (a shared weight folding G groups onto one); the two-output split (qk-norm's dq_w | dk_w)
// with either output null; launched with and without PDL. Guard zones catch writes outside the outputs.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kiln/dw_reduce_args.h"
#include "kiln/model.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "test_util.hpp"

namespace kiln::test {
namespace {

using detail::Specialization;

struct Layout {
  int64_t nout, fold, nlo;  // outputs, partial rows hold fold·nout values, outputs ≥ nlo go to dw_hi
  DType dtype;              // of the outputs
};

class DwReduceGpu : public GpuTest {
 protected:
  static Specialization reduce_spec(const char* family, void (*edit)(Specialization&));
  static void check(const Specialization& s, const Layout& l, int G, bool lo, bool hi, bool pdl);
};

// The family's dw_reduce specialization for Ling-mini-2.0, with `edit` applied to its parameters.
Specialization DwReduceGpu::reduce_spec(const char* family, void (*edit)(Specialization&)) {
  const detail::FamilyDef* f = detail::find_family(family);
  EXPECT_NE(f, nullptr) << family;
  std::vector<Specialization> specs;
  f->enumerate(load_model("ling-mini-2.0"), rt().impl().target_arch(), specs);
  for (Specialization s : specs)
    if (std::string(f->kernels.at(s.kernel)) == "dw_reduce") {
      edit(s);
      return s;
    }
  ADD_FAILURE() << family << " has no dw_reduce specialization";
  return {};
}

// Runs the reduce over G partial rows; checks both outputs (null ones must stay untouched) and the guards.
void DwReduceGpu::check(const Specialization& s, const Layout& l, int G, bool lo, bool hi, bool pdl) {
  SCOPED_TRACE(s.describe() + " G " + std::to_string(G) + (lo ? " lo" : "") + (hi ? " hi" : "") +
               (pdl ? " pdl" : ""));
  Runtime& r = rt();
  const int64_t row = l.fold * l.nout;
  std::vector<float> partial(static_cast<size_t>(std::max<int64_t>(G * row, 1)));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t k = 0; k < row; ++k) partial[g * row + k] = static_cast<float>((g * 7 + k * 3) % 17 - 8);
  std::vector<double> want(static_cast<size_t>(l.nout), 0.0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t f = 0; f < l.fold; ++f)
      for (int64_t j = 0; j < l.nout; ++j) want[j] += partial[g * row + f * l.nout + j];

  const size_t es = dtype_size(l.dtype);
  DeviceBuffer p(r, partial.size() * 4), dw(r, l.nlo * es), dw_hi(r, std::max<int64_t>(l.nout - l.nlo, 1) * es);
  p.upload(partial.data(), partial.size() * 4);
  dw.poison();
  dw_hi.poison();
  DwReduceArgs a{static_cast<const float*>(p.data()), lo ? dw.data() : nullptr, G, hi ? dw_hi.data() : nullptr};
  detail::LaunchDims d;
  d.grid[0] = static_cast<unsigned>((l.nout + kDwReduceCols - 1) / kDwReduceCols);
  d.block[0] = kDwReduceThreads;
  d.pdl = pdl;
  r.impl().launch(s, d, nullptr, a);
  synchronize();
  EXPECT_TRUE(dw.guards_intact() && dw_hi.guards_intact()) << "written outside the outputs";

  auto expect_out = [&](const DeviceBuffer& b, bool wanted, int64_t j0, int64_t n, const char* what) {
    const std::vector<float> got = decode(l.dtype, b.download<uint8_t>(static_cast<size_t>(n) * es));
    const std::vector<uint8_t> raw = b.download<uint8_t>(static_cast<size_t>(n) * es);
    if (!wanted) {
      EXPECT_TRUE(all_equal(
          what, static_cast<int64_t>(raw.size()), [&](int64_t i) { return raw[i] == DeviceBuffer::kPoison; },
          [&](int64_t i) { return "byte " + std::to_string(i) + " written though the output is null"; }));
      return;
    }
    EXPECT_TRUE(all_equal(
        what, n,
        [&](int64_t i) { return got[i] == round_to(l.dtype, static_cast<float>(want[j0 + i])); },
        [&](int64_t i) {
          return "[" + std::to_string(j0 + i) + "]: " + std::to_string(got[i]) + " vs " +
                 std::to_string(round_to(l.dtype, static_cast<float>(want[j0 + i])));
        }));
  };
  expect_out(dw, lo, 0, l.nlo, "dw");
  if (l.nlo < l.nout) expect_out(dw_hi, hi, l.nlo, l.nout - l.nlo, "dw_hi");
}

TEST_F(DwReduceGpu, SumsExactlyInEveryLayout) {
  // rms_norm: N = 1000 columns (not a multiple of 32), fp32 and bf16 outputs.
  const Specialization f32 = reduce_spec("rms_norm", [](Specialization& s) { s.params[0] = 1000; });
  const Specialization b16 = reduce_spec("rms_norm", [](Specialization& s) {
    s.params[0] = 1000;
    s.params[3] = static_cast<int64_t>(DType::bf16);  // dw_dtype
  });
  // group_rms_norm_gate with a shared weight: dim 96, 4 groups of 24 folded onto 24 outputs.
  const Specialization fold = reduce_spec("group_rms_norm_gate", [](Specialization& s) {
    s.params[0] = 96;
    s.params[1] = 4;
    s.params[2] = 1;  // shared_w
  });
  // qk_norm_half_rope: D = 128, partial rows [dq_w | dk_w].
  const Specialization split = reduce_spec("qk_norm_half_rope", [](Specialization&) {});
  for (int G : {0, 1, 33, 135, 700}) {
    for (bool pdl : {false, true}) {
      check(f32, {1000, 1, 1000, DType::f32}, G, true, false, pdl);
      check(b16, {1000, 1, 1000, DType::bf16}, G, true, false, pdl);
      check(fold, {24, 4, 24, DType::f32}, G, true, false, pdl);
    }
    check(split, {256, 1, 128, DType::f32}, G, true, true, G == 33);
    check(split, {256, 1, 128, DType::f32}, G, false, true, false);
    check(split, {256, 1, 128, DType::f32}, G, true, false, false);
  }
}

}  // namespace
}  // namespace kiln::test
