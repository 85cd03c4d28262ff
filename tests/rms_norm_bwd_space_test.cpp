// tests/rms_norm_bwd_space_test.cpp — the RMSNorm backward's configs (CPU): which kernel the heuristic picks per
// shape and dtype, that every pipelined point of the search space fits shared memory and keeps the rules the kernel
// relies on, and that the defaults of the dtype combinations the GPU tests run compile for sm_90a (TMA rings) and
// sm_80 (cp.async rings).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kiln/runtime.hpp"
#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "runtime/specialization.hpp"
#include "compile_util.hpp"

namespace kiln::detail {
namespace {

const FamilyDef& family() {
  static Runtime rt(RuntimeOptions{.memory_only = true});  // registers the families
  const FamilyDef* f = find_family("rms_norm");
  if (!f) throw std::runtime_error("rms_norm is not registered");
  return *f;
}

// The backward of [*, N] with the given dtypes on `arch`, at its heuristic default (the first point of its space).
Specialization bwd(int64_t N, DType t, DType w, const char* arch = "sm_90a") {
  Specialization s;
  s.family = &family();
  s.arch = Arch::parse(arch);
  s.kernel = 1;
  s.params = {N, static_cast<int64_t>(t), static_cast<int64_t>(w), 0};
  std::vector<Specialization> space;
  family().search_space(s, space);
  EXPECT_FALSE(space.empty());
  return space.empty() ? s : space.front();
}

// config: warps (0: tile kernel), rows (tile rows, or rows in flight per CTA), stages (tile stages, or ring slots).
TEST(RmsNormBwdSpace, HeuristicPicksThePipelinedKernelWhereItFits) {
  const Specialization a = bwd(2048, DType::bf16, DType::bf16);
  EXPECT_EQ(a.config[0], 8);  // 8 warps, a row each, 3 slots: 192 KiB of rings
  EXPECT_EQ(a.config[1], 8);
  EXPECT_EQ(a.config[2], 3);
  EXPECT_EQ(family().dynamic_smem_bytes(a), 8 * 3 * (2 * 2048 * 2 + 8));
  const Specialization b = bwd(7168, DType::bf16, DType::bf16);
  EXPECT_EQ(b.config[0], 8);  // 4 warps per row (a lane's dw in 56 registers), 2 rows in flight
  EXPECT_EQ(b.config[1], 2);
  const Specialization c = bwd(16384, DType::f32, DType::f32);
  EXPECT_EQ(c.config[0], 0) << "fp32 rows of 16384 fit no ring: the tile kernel";
  EXPECT_GT(c.config[1], 0);
}

TEST(RmsNormBwdSpace, PipelinedPointsKeepTheKernelsRules) {
  for (const auto& [N, t, w] : {std::tuple{2048, DType::bf16, DType::bf16}, {7168, DType::bf16, DType::bf16},
                                {1000, DType::bf16, DType::bf16}, {4096, DType::bf16, DType::f32},
                                {2048, DType::f32, DType::f32}, {128, DType::f16, DType::f16}}) {
    Specialization s = bwd(N, t, w);
    std::vector<Specialization> space;
    family().search_space(s, space);
    int pipelined = 0;
    for (const Specialization& c : space) {
      SCOPED_TRACE(c.describe());
      EXPECT_LE(family().dynamic_smem_bytes(c), 227 * 1024);
      if (c.config[0] == 0) continue;
      ++pipelined;
      const int warps = c.config[0], groups = c.config[1], split = warps / groups;
      const int64_t V = 16 / static_cast<int64_t>(dtype_size(t));
      EXPECT_EQ(groups * split, warps) << "rows in flight divide the warps";
      EXPECT_EQ(N % split, 0);
      EXPECT_EQ((N / split) % V, 0) << "16-byte slices";
      EXPECT_LE(((N / split / V + 31) / 32) * V, 64) << "a lane's dw in ≤ 64 registers";
      EXPECT_GE(c.config[2], 2) << "at least two ring slots";
      if (split > 1) EXPECT_LE(groups, 15) << "named barriers 1..15";
    }
    EXPECT_GT(pipelined, 0) << N;
  }
}

TEST(RmsNormBwdSpace, DefaultsCompileForSm90aAndSm80) {
  std::vector<Specialization> specs;
  for (const char* arch : {"sm_90a", "sm_80"})
    for (const auto& [N, t, w] : {std::tuple{2048, DType::bf16, DType::bf16}, {7168, DType::bf16, DType::bf16},
                                  {4096, DType::bf16, DType::f32}, {2048, DType::f32, DType::f32},
                                  {1000, DType::f16, DType::f16}})
      specs.push_back(bwd(N, t, w, arch));
  test::expect_compiles(specs);
}

}  // namespace
}  // namespace kiln::detail
