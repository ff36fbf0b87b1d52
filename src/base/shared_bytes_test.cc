#include "testudo/shared_bytes.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace testudo {
namespace {

TEST(SharedBytes, SmallAllocationIsWritableAndSized) {
  SharedBytes b = SharedBytes::allocate(100);
  ASSERT_EQ(b.size(), 100u);
  std::memset(b.data(), 0x5a, b.size());
  EXPECT_EQ(b.view(), std::string(100, 'Z'));
}

TEST(SharedBytes, LargeAllocationIsHugePageAlignedAndShared) {
  constexpr std::size_t kSize = (64u << 20) + 123;  // not a multiple of anything
  SharedBytes b = SharedBytes::allocate(kSize);
  ASSERT_EQ(b.size(), kSize);
  ASSERT_NE(b.data(), nullptr);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % (2u << 20), 0u) << "not on a 2 MiB boundary";
  // Every byte, including the last, belongs to the mapping.
  std::memset(b.data(), 0xab, kSize);
  EXPECT_EQ(static_cast<unsigned char>(b.data()[kSize - 1]), 0xab);
  SharedBytes copy = b;  // shares, does not copy
  EXPECT_EQ(copy.data(), b.data());
  b = SharedBytes();
  EXPECT_EQ(static_cast<unsigned char>(copy.data()[0]), 0xab);
}

std::uint64_t mapped_kib() {
  std::ifstream status("/proc/self/status");
  std::string key;
  std::uint64_t value = 0;
  while (status >> key) {
    if (key == "VmSize:") {
      status >> value;
      return value;
    }
    status.ignore(1 << 10, '\n');
  }
  return 0;
}

TEST(SharedBytes, LargeAllocationIsCachedBrieflyThenUnmapped) {
  SharedBytes::trim_cache(std::chrono::milliseconds(0));
  const std::uint64_t before = mapped_kib();
  const std::byte* first = nullptr;
  {
    SharedBytes b = SharedBytes::allocate(256u << 20);
    first = b.data();
    EXPECT_GE(mapped_kib(), before + (256u << 10));
  }
  // Released: kept for reuse, and handed out again for a buffer of about the same size.
  EXPECT_GE(SharedBytes::cached_bytes(), 256u << 20);
  {
    SharedBytes again = SharedBytes::allocate((256u << 20) - 1000);
    EXPECT_EQ(again.data(), first) << "a cached mapping of the right size was not reused";
    EXPECT_EQ(SharedBytes::cached_bytes(), 0u);
  }
  // A much smaller buffer does not take a mapping twice its size or more.
  {
    SharedBytes small = SharedBytes::allocate(8u << 20);
    EXPECT_NE(small.data(), first);
  }
  // Trimming returns everything idle to the kernel.
  EXPECT_GE(SharedBytes::trim_cache(std::chrono::milliseconds(0)), 256u << 20);
  EXPECT_EQ(SharedBytes::cached_bytes(), 0u);
  EXPECT_LT(mapped_kib(), before + (64u << 10)) << "the 256 MiB mapping outlived trim_cache";
}

TEST(SharedBytes, TrimKeepsRecentlyReleasedBuffers) {
  SharedBytes::trim_cache(std::chrono::milliseconds(0));
  { SharedBytes b = SharedBytes::allocate(16u << 20); }
  EXPECT_EQ(SharedBytes::trim_cache(std::chrono::milliseconds(200)), 0u);
  EXPECT_GE(SharedBytes::cached_bytes(), 16u << 20);
  SharedBytes::trim_cache(std::chrono::milliseconds(0));
  EXPECT_EQ(SharedBytes::cached_bytes(), 0u);
}

TEST(SharedBytes, CacheIsBoundedInBytes) {
  SharedBytes::trim_cache(std::chrono::milliseconds(0));
  { SharedBytes b = SharedBytes::allocate(1u << 30); }  // more than the cache holds
  EXPECT_EQ(SharedBytes::cached_bytes(), 0u);
  {
    std::vector<SharedBytes> many;
    for (int i = 0; i < 6; ++i) many.push_back(SharedBytes::allocate(200u << 20));
  }
  EXPECT_LE(SharedBytes::cached_bytes(), 512u << 20);
  SharedBytes::trim_cache(std::chrono::milliseconds(0));
}

TEST(SharedBytes, ZeroSizeIsEmpty) {
  SharedBytes b = SharedBytes::allocate(0);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.span().size(), 0u);
}

}  // namespace
}  // namespace testudo
