// runtime/stream_state.hpp: the per-(owner, stream) buffer table behind Runtime::Impl::stream_state (no GPU: the
// allocations are counted fake pointers).
#include "runtime/stream_state.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

namespace kiln::detail {
namespace {

Stream stream_no(uintptr_t i) { return reinterpret_cast<Stream>(0x1000 + 0x40 * i); }

struct FakeAlloc {
  std::atomic<CUdeviceptr> next{0x10000};
  std::atomic<int> calls{0};
  CUdeviceptr operator()(size_t bytes) {
    calls.fetch_add(1);
    return next.fetch_add((bytes + 255) / 256 * 256 + 256);
  }
};

TEST(StreamStateTable, OneBufferPerOwnerAndStreamFoundWithoutAllocating) {
  StreamStateTable t;
  FakeAlloc alloc;
  static const char a = 0, b = 0;
  EXPECT_EQ(t.find(&a, stream_no(0), 1).ptr, 0u);
  const auto x = t.get(&a, stream_no(0), 4224, std::ref(alloc));
  EXPECT_NE(x.ptr, 0u);
  EXPECT_EQ(x.bytes, 4224u);
  EXPECT_EQ(alloc.calls, 1);
  // The same pair: the same buffer, lock-free and through get, at this size or smaller.
  EXPECT_EQ(t.find(&a, stream_no(0), 4224).ptr, x.ptr);
  EXPECT_EQ(t.find(&a, stream_no(0), 128).ptr, x.ptr);
  EXPECT_EQ(t.get(&a, stream_no(0), 100, std::ref(alloc)).ptr, x.ptr);
  EXPECT_EQ(alloc.calls, 1);
  // Another stream, another owner, the null (legacy) stream: buffers of their own.
  const auto y = t.get(&a, stream_no(1), 4224, std::ref(alloc));
  const auto z = t.get(&b, stream_no(0), 4224, std::ref(alloc));
  const auto n = t.get(&a, nullptr, 64, std::ref(alloc));
  EXPECT_EQ(std::set<CUdeviceptr>({x.ptr, y.ptr, z.ptr, n.ptr}).size(), 4u);
  EXPECT_EQ(alloc.calls, 4);
  EXPECT_EQ(t.find(&a, nullptr, 64).ptr, n.ptr);
  EXPECT_EQ(t.find(&b, stream_no(1), 1).ptr, 0u);
}

TEST(StreamStateTable, ALargerRequestReplacesTheBufferAndKeepsTheOldAllocated) {
  StreamStateTable t;
  FakeAlloc alloc;
  static const char a = 0;
  const auto small = t.get(&a, stream_no(3), 1000, std::ref(alloc));
  EXPECT_EQ(t.find(&a, stream_no(3), 1001).ptr, 0u);  // too small: the caller must go through get
  const auto big = t.get(&a, stream_no(3), 5000, std::ref(alloc));
  EXPECT_NE(big.ptr, small.ptr);
  EXPECT_EQ(big.bytes, 5000u);
  EXPECT_EQ(t.find(&a, stream_no(3), 10).ptr, big.ptr);  // a smaller call afterwards finds the big one
  EXPECT_EQ(t.allocations(), 2u);                        // the outgrown one is still there (a call may use it)
  std::vector<CUdeviceptr> released;
  t.release_all([&](CUdeviceptr p) { released.push_back(p); });
  EXPECT_EQ(std::set<CUdeviceptr>(released.begin(), released.end()), std::set<CUdeviceptr>({small.ptr, big.ptr}));
  EXPECT_EQ(t.allocations(), 0u);
  EXPECT_EQ(t.find(&a, stream_no(3), 10).ptr, 0u);
}

TEST(StreamStateTable, AFailedAllocationPublishesNothing) {
  StreamStateTable t;
  static const char a = 0;
  EXPECT_THROW(t.get(&a, stream_no(5), 64, [](size_t) -> CUdeviceptr { throw std::runtime_error("out of memory"); }),
               std::runtime_error);
  EXPECT_EQ(t.find(&a, stream_no(5), 1).ptr, 0u);
  EXPECT_EQ(t.allocations(), 0u);
  FakeAlloc alloc;
  EXPECT_NE(t.get(&a, stream_no(5), 64, std::ref(alloc)).ptr, 0u);
  EXPECT_EQ(alloc.calls, 1);
}

// More pairs than the table has slots: the rest live in the overflow map and are still found (through get), each
// allocated once.
TEST(StreamStateTable, MorePairsThanSlots) {
  StreamStateTable t;
  FakeAlloc alloc;
  static const char a = 0;
  const size_t n = 3 * StreamStateTable::kSlots;
  std::vector<CUdeviceptr> first(n);
  for (size_t i = 0; i < n; ++i) first[i] = t.get(&a, stream_no(i), 256, std::ref(alloc)).ptr;
  EXPECT_EQ(alloc.calls, static_cast<int>(n));
  size_t lock_free = 0;
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(t.get(&a, stream_no(i), 256, std::ref(alloc)).ptr, first[i]) << i;
    lock_free += t.find(&a, stream_no(i), 256).ptr == first[i];
  }
  EXPECT_EQ(alloc.calls, static_cast<int>(n));
  EXPECT_EQ(lock_free, StreamStateTable::kSlots);
  EXPECT_EQ(std::set<CUdeviceptr>(first.begin(), first.end()).size(), n);
}

// Threads asking for the same pairs at once: every pair is allocated once and every thread sees its one buffer.
TEST(StreamStateTable, ConcurrentCallersAgree) {
  StreamStateTable t;
  FakeAlloc alloc;
  static const char a = 0;
  constexpr int kThreads = 8, kPairs = 40, kReps = 2000;
  std::vector<std::vector<CUdeviceptr>> seen(kThreads, std::vector<CUdeviceptr>(kPairs));
  std::atomic<bool> mismatch{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < kThreads; ++w)
    threads.emplace_back([&, w] {
      for (int r = 0; r < kReps; ++r)
        for (int i = 0; i < kPairs; ++i) {
          const int p = (i + w * 7) % kPairs;
          const CUdeviceptr got = t.get(&a, stream_no(p), 512, std::ref(alloc)).ptr;
          if (r == 0) seen[w][p] = got;
          else if (got != seen[w][p]) mismatch = true;
        }
    });
  for (auto& th : threads) th.join();
  EXPECT_FALSE(mismatch);
  EXPECT_EQ(alloc.calls, kPairs);
  for (int w = 1; w < kThreads; ++w) EXPECT_EQ(seen[w], seen[0]);
}

}  // namespace
}  // namespace kiln::detail
