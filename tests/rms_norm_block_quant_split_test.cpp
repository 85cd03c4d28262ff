// tests/rms_norm_block_quant_split_test.cpp — the split-role mode-2 kernel (templates/kiln/rms_norm_block_quant_split.cuh)
// on the CPU: its slot swizzle makes every shared-memory instruction of the kernel conflict-free (each lane's address
// from the same host/device function the kernel uses), and its search-space points render and compile for sm_90a.
#include <gtest/gtest.h>

#include <array>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "kiln/kiln.hpp"
#include "kiln/rms_norm_block_quant_split_args.h"
#include "runtime/family.hpp"
#include "runtime/registry.hpp"
#include "test_util.hpp"

namespace kiln::detail {
namespace {

using Offset = std::function<int(int row, int chunk)>;

// Shared-memory wavefronts of one warp instruction beyond the minimum: lanes' byte addresses, `width` bytes each.
// 16-byte accesses go in four phases of 8 lanes, 8-byte ones in two of 16; within a phase two lanes conflict when
// they touch the same bank (4-byte word % 32) at different words.
int extra_wavefronts(const std::array<int, 32>& addr, int width) {
  const int per_phase = 128 / width;
  int extra = 0;
  for (int p = 0; p < 32; p += per_phase) {
    std::map<int, std::set<int>> words;  // bank → distinct words
    for (int l = p; l < p + per_phase; ++l)
      for (int k = 0; k < width / 4; ++k) {
        const int word = addr[l] / 4 + k;
        words[word % 32].insert(word);
      }
    int worst = 1;
    for (const auto& [bank, ws] : words) worst = std::max<int>(worst, static_cast<int>(ws.size()));
    extra += worst - 1;
  }
  return extra;
}

// Every shared-memory read of a ring slot in the kernel, as lanes' addresses: the copies and pass 1 (16 warps),
// the row role and the column role (8 warps each). Calls `check(what, addresses, width)` per instruction.
void for_each_slot_access(const Offset& off,
                          const std::function<void(const std::string&, const std::array<int, 32>&, int)>& check) {
  std::array<int, 32> addr{};
  for (int w = 0; w < 16; ++w)  // copies / pass 1: rows 4·hw + i, chunk hl
    for (int i = 0; i < 4; ++i) {
      for (int lane = 0; lane < 32; ++lane) addr[lane] = off(4 * (2 * w + (lane >> 4)) + i, lane & 15);
      check("pass 1 w" + std::to_string(w) + " i" + std::to_string(i), addr, 16);
    }
  for (int w = 0; w < 8; ++w) {
    for (int i = 0; i < 4; ++i)  // row role: lane 4c + g, rows 16w + 4g + i, chunks 2c + j
      for (int j = 0; j < 2; ++j) {
        for (int lane = 0; lane < 32; ++lane) addr[lane] = off(16 * w + 4 * (lane & 3) + i, 2 * (lane >> 2) + j);
        check("row w" + std::to_string(w) + " i" + std::to_string(i) + " j" + std::to_string(j), addr, 16);
      }
    for (int i = 0; i < 16; ++i) {  // column role: lane 8q + l, rows 16l + i, channels 16w + 4q … (8 bytes)
      for (int lane = 0; lane < 32; ++lane) {
        const int q = lane >> 3, l = lane & 7, ch0 = 16 * w + 4 * q;
        addr[lane] = off(16 * l + i, ch0 >> 3) + (q & 1) * 8;
      }
      check("col w" + std::to_string(w) + " i" + std::to_string(i), addr, 8);
    }
  }
}

TEST(RmsqSplitSwizzle, EverySlotAccessIsConflictFree) {
  int checked = 0;
  for_each_slot_access(rmsq_split_slot_offset, [&](const std::string& what, const std::array<int, 32>& a, int width) {
    EXPECT_EQ(extra_wavefronts(a, width), 0) << what;
    ++checked;
  });
  EXPECT_EQ(checked, 16 * 4 + 8 * (8 + 16));  // (pass 1, the roles)
}

// The check can fail: the plain row-major slot conflicts 8-way in the column role (8 rows on one bank group in each
// of two phases) and 4-way in the row role (4 rows on two bank groups in each of four phases).
TEST(RmsqSplitSwizzle, PlainLayoutConflicts) {
  std::map<std::string, int> extra;
  for_each_slot_access([](int row, int chunk) { return row * 256 + chunk * 16; },
                       [&](const std::string& what, const std::array<int, 32>& a, int width) {
                         extra[what.substr(0, 3)] += extra_wavefronts(a, width);
                       });
  EXPECT_EQ(extra["pas"], 0);
  EXPECT_EQ(extra["row"], 8 * 8 * 4 * 3);
  EXPECT_EQ(extra["col"], 8 * 16 * 2 * 7);
}

// The layout is a permutation of the slot's 16-byte chunks, and the kernel's per-thread shortcuts hold: the swizzle
// is constant over 4 rows from a multiple of 4 (offset(r + i, c) = offset(r, c) + 256 i).
TEST(RmsqSplitSwizzle, PermutationAndRowStride) {
  std::set<int> seen;
  for (int r = 0; r < 128; ++r)
    for (int c = 0; c < 16; ++c) {
      const int o = rmsq_split_slot_offset(r, c);
      ASSERT_EQ(o % 16, 0);
      ASSERT_GE(o, r * 256);
      ASSERT_LT(o, r * 256 + 256);
      ASSERT_TRUE(seen.insert(o).second) << r << " " << c;
      EXPECT_EQ(o, rmsq_split_slot_offset(r & ~3, c) + 256 * (r & 3)) << r << " " << c;
    }
  EXPECT_EQ(seen.size(), 128u * 16u);
}

Specialization split_point(int64_t N, int cb, bool round, bool w_f32) {
  Specialization s;
  s.family = find_family("rms_norm_block_quant");
  s.kernel = 1;  // tile
  s.params = {N, 2, round, w_f32};
  s.arch = Arch::parse("sm_90a");
  s.config = {16, cb, 1, 3 * cb, 1, 7};
  return s;
}

Specialization r7_point(int64_t N) {
  Specialization s = split_point(N, 2, true, false);
  s.config[3] = 7;
  s.config[4] = 193;  // R7 + EP
  return s;
}

// The points are in the mode-2 space where a row has two or more items, and not elsewhere.
TEST(RmsqSplitSpace, PointsWhereTwoItemsARow) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  for (int64_t N : {256, 2048, 7168})
    for (bool round : {false, true}) {
      EXPECT_TRUE(in_search_space(split_point(N, 1, round, false))) << N;
      EXPECT_EQ(in_search_space(split_point(N, 2, round, false)), N >= 512) << N;
    }
  EXPECT_FALSE(in_search_space(split_point(128, 1, true, false)));  // one item a row
  EXPECT_FALSE(in_search_space(split_point(2048, 3, true, false)));
  Specialization v = split_point(2048, 2, true, false);
  v.config[4] = 65;  // EP
  EXPECT_TRUE(in_search_space(v));
  v.config = {16, 2, 1, 6, 513, 7};  // FIRST
  EXPECT_TRUE(in_search_space(v));
  v.config = {16, 2, 1, 7, 705, 7};  // R7 + EP + FIRST
  EXPECT_TRUE(in_search_space(v));
  v.config = {16, 2, 1, 7, 1729, 7};  // R7 + EP + FIRST + START
  EXPECT_TRUE(in_search_space(v));
  v.config = {16, 1, 1, 3, 89, 7};
  for (int removed : {3, 5, 9, 13, 25, 17, 89}) {  // (measured slower in session 8 round 2 and removed; P1C needs YS)
    v.config[4] = removed;
    EXPECT_FALSE(in_search_space(v)) << removed;
  }
  v = split_point(2048, 2, true, false);
  v.config[3] = 7;  // R7: 7 slots
  v.config[4] = 129;
  EXPECT_TRUE(in_search_space(v));
  v.config[3] = 6;  // (R7 needs stages 7)
  EXPECT_FALSE(in_search_space(v));
  v.config[4] = 2;  // (bit 1 is always set)
  EXPECT_FALSE(in_search_space(v));
  Specialization s = split_point(2048, 1, true, false);
  s.params[1] = 1;  // mode 1: no
  EXPECT_FALSE(in_search_space(s));
  s = split_point(2048, 1, true, false);
  s.arch = Arch::parse("sm_80");
  EXPECT_FALSE(in_search_space(s));
}

// Render + NVRTC compile for sm_90a: N = 256 (fp32 weights, round_scale 0) and N = 7168 (both CB); N = 2048 is
// compiled by SearchSpace.EveryPointCompiles.
TEST(RmsqSplitSpace, Compiles) {
  Runtime rt(RuntimeOptions{.memory_only = true});
  Counters counters;
  for (const Specialization& s :
       {split_point(256, 1, false, true), split_point(7168, 1, true, false), split_point(7168, 2, true, false),
        r7_point(7168)}) {
    const EnsureResult r = ensure_cubin(s, nullptr, false, counters);
    EXPECT_GT(r.cubin.size(), 1000u) << s.describe();
    EXPECT_NE(r.lowered_name.find("rms_norm_block_quant_split_kernel"), std::string::npos) << r.lowered_name;
  }
}

}  // namespace
}  // namespace kiln::detail
