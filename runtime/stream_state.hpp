// runtime/stream_state.hpp — device memory a recipe keeps per stream from one call to the next (Runtime::Impl owns
// one table; Runtime::Impl::stream_state is the recipes' entry point).
#pragma once
#include <cuda.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "kiln/runtime.hpp"

namespace kiln::detail {

// A buffer per (owner, stream): `owner` names the recipe's state (the address of a static object of the recipe, never
// null), `stream` the stream whose calls use it one after another. A lookup that hits is lock-free: a hash of the two
// pointers into a fixed table of slots, acquire loads, no mutex and no driver call; a miss (first call on a stream, or
// a call that needs more bytes than the buffer has) takes the mutex, allocates through the caller's `alloc` and
// publishes the new buffer. A buffer that is outgrown stays allocated (a call on the stream may still be running on
// it) until release_all (the owning Runtime's destruction). Pairs beyond the table's slots go to a map under the
// mutex (correct, slower).
class StreamStateTable {
 public:
  static constexpr size_t kSlots = 64;
  struct Buffer {
    CUdeviceptr ptr = 0;
    size_t bytes = 0;
  };

  StreamStateTable() = default;
  StreamStateTable(const StreamStateTable&) = delete;
  StreamStateTable& operator=(const StreamStateTable&) = delete;

  // The buffer of (owner, stream) if it exists and holds at least `bytes`, else {0, 0}. Lock-free.
  Buffer find(const void* owner, Stream stream, size_t bytes) const noexcept {
    for (size_t i = 0, h = hash(owner, stream); i < kSlots; ++i) {
      const Slot& s = slots_[(h + i) % kSlots];
      const void* o = s.owner.load(std::memory_order_acquire);
      if (o == nullptr) return {};  // (slots fill in probe order and are never emptied: the pair is not in the table)
      if (o == owner && s.stream == stream) {
        const Buffer* b = s.buffer.load(std::memory_order_acquire);
        return b->bytes >= bytes ? *b : Buffer{};
      }
    }
    return {};  // (a full table: the overflow map, under the mutex)
  }

  // The buffer of (owner, stream) with at least `bytes`: find(), else under the mutex a new one from
  // `alloc(bytes)` (CUdeviceptr; it may throw: nothing is published then) that replaces a smaller one.
  template <typename Alloc>
  Buffer get(const void* owner, Stream stream, size_t bytes, Alloc&& alloc) {
    if (const Buffer b = find(owner, stream, bytes); b.ptr) return b;
    std::lock_guard g(mutex_);
    Slot* slot = nullptr;
    for (size_t i = 0, h = hash(owner, stream); i < kSlots; ++i) {
      Slot& s = slots_[(h + i) % kSlots];
      const void* o = s.owner.load(std::memory_order_relaxed);
      if (o == nullptr || (o == owner && s.stream == stream)) {
        slot = &s;
        break;
      }
    }
    const Buffer* old = nullptr;
    if (slot && slot->owner.load(std::memory_order_relaxed)) old = slot->buffer.load(std::memory_order_relaxed);
    if (!slot)
      if (auto it = overflow_.find({owner, stream}); it != overflow_.end()) old = it->second;
    if (old && old->bytes >= bytes) return *old;  // (another thread made it meanwhile)
    buffers_.reserve(buffers_.size() + 1);  // (so that the push below cannot throw after alloc succeeded)
    auto b = std::make_unique<Buffer>(Buffer{alloc(bytes), bytes});
    const Buffer* nb = b.get();
    buffers_.push_back(std::move(b));
    if (!slot) {
      overflow_[{owner, stream}] = nb;
    } else if (old) {
      slot->buffer.store(nb, std::memory_order_release);
    } else {
      slot->stream = stream;
      slot->buffer.store(nb, std::memory_order_relaxed);
      slot->owner.store(owner, std::memory_order_release);  // (publishes stream and buffer with it)
    }
    return *nb;
  }

  // Every buffer allocated so far, outgrown ones included (for tests and the owner's destructor).
  size_t allocations() const {
    std::lock_guard g(mutex_);
    return buffers_.size();
  }

  // Hands every buffer ever allocated to `release(ptr)` and empties the table. Only when no other thread uses the
  // table (the owner's destruction).
  template <typename Release>
  void release_all(Release&& release) {
    std::lock_guard g(mutex_);
    for (const auto& b : buffers_) release(b->ptr);
    buffers_.clear();
    overflow_.clear();
    for (Slot& s : slots_) {
      s.owner.store(nullptr, std::memory_order_relaxed);
      s.stream = nullptr;
      s.buffer.store(nullptr, std::memory_order_relaxed);
    }
  }

 private:
  struct Slot {
    std::atomic<const void*> owner{nullptr};  // null: empty (written last, with release)
    Stream stream = nullptr;                  // written before owner, never changed after
    std::atomic<const Buffer*> buffer{nullptr};
  };
  static size_t hash(const void* owner, Stream stream) noexcept {
    const uint64_t x = reinterpret_cast<uintptr_t>(owner) * 0x9e3779b97f4a7c15ull ^
                       reinterpret_cast<uintptr_t>(stream) * 0xc2b2ae3d27d4eb4full;
    return static_cast<size_t>(x >> 40);
  }

  std::array<Slot, kSlots> slots_;
  mutable std::mutex mutex_;                          // guards the slow path, buffers_ and overflow_
  std::vector<std::unique_ptr<Buffer>> buffers_;      // every buffer allocated (never moved: slots point at them)
  std::map<std::pair<const void*, Stream>, const Buffer*> overflow_;  // pairs beyond the slots
};

}  // namespace kiln::detail
