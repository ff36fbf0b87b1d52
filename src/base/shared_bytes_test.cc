#include "testudo/shared_bytes.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <string>

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

TEST(SharedBytes, LargeAllocationIsUnmappedWithItsLastReference) {
  const std::uint64_t before = mapped_kib();
  {
    SharedBytes b = SharedBytes::allocate(256u << 20);
    EXPECT_GE(mapped_kib(), before + (256u << 10));
  }
  EXPECT_LT(mapped_kib(), before + (64u << 10)) << "the 256 MiB mapping outlived its SharedBytes";
}

TEST(SharedBytes, ZeroSizeIsEmpty) {
  SharedBytes b = SharedBytes::allocate(0);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.span().size(), 0u);
}

}  // namespace
}  // namespace testudo
