// The large-buffer side of SharedBytes: 2 MiB-aligned anonymous mappings with transparent
// huge pages, and a short-lived cache of released ones.
#include "testudo/shared_bytes.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

namespace testudo {
namespace {

constexpr std::size_t kHuge = 2u << 20;
// Released mappings kept for reuse: at most this many, this many bytes in all, this long.
constexpr std::size_t kMaxCached = 4;
constexpr std::size_t kMaxCachedBytes = 512u << 20;
constexpr auto kMaxIdle = std::chrono::milliseconds(200);

struct Mapping {
  void* raw;
  std::size_t length;
  std::chrono::steady_clock::time_point released;
};

struct Cache {
  std::mutex mutex;
  std::vector<Mapping> mappings;  // guarded by mutex
  std::size_t bytes = 0;          // guarded by mutex
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: buffers may be released during exit
  return *c;
}

std::byte* aligned_start(void* raw) {
  const auto base = reinterpret_cast<std::uintptr_t>(raw);
  return reinterpret_cast<std::byte*>((base + kHuge - 1) / kHuge * kHuge);
}

// The cached mapping that fits `length` with the least waste (at most twice as long), or none.
bool take_cached(std::size_t length, Mapping& out) {
  Cache& c = cache();
  std::lock_guard lock(c.mutex);
  auto best = c.mappings.end();
  for (auto it = c.mappings.begin(); it != c.mappings.end(); ++it) {
    if (it->length >= length && it->length <= 2 * length && (best == c.mappings.end() || it->length < best->length)) {
      best = it;
    }
  }
  if (best == c.mappings.end()) return false;
  out = *best;
  c.bytes -= best->length;
  c.mappings.erase(best);
  return true;
}

void release(void* raw, std::size_t length) {
  std::vector<Mapping> unmap;
  {
    Cache& c = cache();
    std::lock_guard lock(c.mutex);
    if (length <= kMaxCachedBytes) {
      c.mappings.push_back({raw, length, std::chrono::steady_clock::now()});
      c.bytes += length;
      raw = nullptr;
      // Over a bound: the oldest go.
      while (c.mappings.size() > kMaxCached || c.bytes > kMaxCachedBytes) {
        c.bytes -= c.mappings.front().length;
        unmap.push_back(c.mappings.front());
        c.mappings.erase(c.mappings.begin());
      }
    }
  }
  if (raw != nullptr) ::munmap(raw, length);
  for (const Mapping& m : unmap) ::munmap(m.raw, m.length);
}

}  // namespace

std::shared_ptr<std::byte[]> SharedBytes::map_huge(std::size_t size) {
  // Rounded up to whole huge pages, plus one for the alignment.
  const std::size_t length = (size + kHuge - 1) / kHuge * kHuge + kHuge;
  Mapping m{};
  if (!take_cached(length, m)) {
    void* raw = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    std::byte* start = aligned_start(raw);
    // Advice only: without THP this is an ordinary mapping.
    ::madvise(start, length - static_cast<std::size_t>(start - static_cast<std::byte*>(raw)), MADV_HUGEPAGE);
    m = {raw, length, {}};
  }
  return std::shared_ptr<std::byte[]>(aligned_start(m.raw),
                                      [raw = m.raw, len = m.length](std::byte*) { release(raw, len); });
}

std::size_t SharedBytes::trim_cache(std::chrono::milliseconds idle) {
  std::vector<Mapping> unmap;
  {
    Cache& c = cache();
    std::lock_guard lock(c.mutex);
    const auto cutoff = std::chrono::steady_clock::now() - std::min<std::chrono::milliseconds>(idle, kMaxIdle);
    auto keep = std::stable_partition(c.mappings.begin(), c.mappings.end(),
                                      [&](const Mapping& m) { return m.released <= cutoff; });
    unmap.assign(c.mappings.begin(), keep);
    c.mappings.erase(c.mappings.begin(), keep);
    for (const Mapping& m : unmap) c.bytes -= m.length;
  }
  std::size_t bytes = 0;
  for (const Mapping& m : unmap) {
    ::munmap(m.raw, m.length);
    bytes += m.length;
  }
  return bytes;
}

std::size_t SharedBytes::cached_bytes() {
  Cache& c = cache();
  std::lock_guard lock(c.mutex);
  return c.bytes;
}

}  // namespace testudo
