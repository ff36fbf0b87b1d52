// SharedBytes: an immutable-size, reference-counted byte buffer.
// Message bodies travel as SharedBytes so the controller can fan one request out to
// many engines without copying, and so a received segment can be handed to Python
// (as a buffer object) without a copy. Thread-safe to copy; the bytes themselves are
// not synchronized: only the owner that filled a buffer writes to it, before sharing it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>


namespace testudo {

class SharedBytes {
 public:
  SharedBytes() = default;

  // Uninitialized storage of `size` bytes (no memset: a 1 GB segment is written once, by the
  // reader); it may hold earlier bytes of this process, like any heap allocation. Large
  // buffers are mapped on 2 MiB boundaries and offered to transparent huge pages, so filling
  // 100 MB costs 50 page faults rather than 25,000 (see map_huge).
  static SharedBytes allocate(std::size_t size) {
    SharedBytes b;
    b.size_ = size;
    if (size >= kHugeThreshold) {
      if (auto huge = map_huge(size)) {
        b.data_ = std::move(huge);
        return b;
      }
    }
    if (size > 0) b.data_ = std::make_shared_for_overwrite<std::byte[]>(size);
    return b;
  }
  static SharedBytes copy_of(std::span<const std::byte> bytes) {
    SharedBytes b = allocate(bytes.size());
    if (!bytes.empty()) std::memcpy(b.data_.get(), bytes.data(), bytes.size());
    return b;
  }
  static SharedBytes copy_of(std::string_view text) {
    return copy_of(std::as_bytes(std::span(text.data(), text.size())));
  }

  // Refers to `size` bytes owned by someone else, without copying. The owner must keep them
  // valid and unchanged until every SharedBytes referring to them is gone (for a request:
  // until its result is ready). Used to send Python buffers (numpy arrays) without a copy.
  static SharedBytes borrow(const void* data, std::size_t size) {
    SharedBytes b;
    // Aliasing constructor with an empty owner: a non-owning pointer.
    b.data_ = std::shared_ptr<std::byte[]>(std::shared_ptr<std::byte[]>(),
                                           static_cast<std::byte*>(const_cast<void*>(data)));
    b.size_ = size;
    return b;
  }

  // Takes `size` bytes at `data` that someone else allocated; `release` runs (on whichever
  // thread drops the last reference) when no SharedBytes refers to them any more.
  static SharedBytes adopt(void* data, std::size_t size, std::function<void()> release) {
    SharedBytes b;
    b.data_ = std::shared_ptr<std::byte[]>(static_cast<std::byte*>(data),
                                           [release = std::move(release)](std::byte*) { release(); });
    b.size_ = size;
    return b;
  }

  std::byte* data() { return data_.get(); }
  const std::byte* data() const { return data_.get(); }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<const std::byte> span() const { return {data_.get(), size_}; }
  std::span<std::byte> mutable_span() { return {data_.get(), size_}; }
  std::string_view view() const { return {reinterpret_cast<const char*>(data_.get()), size_}; }
  std::string to_string() const { return std::string(view()); }
  // True when this object holds the only reference to bytes it owns (not borrowed): nobody
  // else can read them, so they may be rewritten in place (e.g. decrypted where they lie).
  bool sole_owner() const { return data_ != nullptr && data_.use_count() == 1; }

  // Unmaps large buffers released more than `idle` ago and kept for reuse. Event loops call
  // it every 100 ms (net::EventLoop); thread-safe. Returns the bytes unmapped.
  static std::size_t trim_cache(std::chrono::milliseconds idle);
  // Bytes of released large buffers kept for reuse right now.
  static std::size_t cached_bytes();

 private:
  static constexpr std::size_t kHugeThreshold = 4u << 20;

  // At least `size` bytes on a 2 MiB boundary, offered to transparent huge pages, or null.
  // Mappings released in the last ~200 ms are reused (see trim_cache): refilling a
  // mapping costs nothing, while a fresh one is zeroed by the kernel page by page.
  static std::shared_ptr<std::byte[]> map_huge(std::size_t size);

  std::shared_ptr<std::byte[]> data_;
  std::size_t size_ = 0;
};

}  // namespace testudo
