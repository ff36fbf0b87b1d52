#include "controller/byte_budget.h"

#include <gtest/gtest.h>

namespace testudo::controller {
namespace {

std::vector<SharedBytes> bytes_of(std::vector<std::size_t> sizes) {
  std::vector<SharedBytes> out;
  for (std::size_t n : sizes) {
    SharedBytes b = SharedBytes::allocate(n);
    for (std::size_t i = 0; i < n; ++i) b.data()[i] = static_cast<std::byte>(i);
    out.push_back(std::move(b));
  }
  return out;
}

TEST(ByteBudgetTest, ChargesPerClientAndInAllUntilTheLastCopyGoes) {
  int rooms = 0;
  ByteBudget budget({.per_client = 100, .total = 1000}, [&] { ++rooms; });
  auto a = budget.charge(1, bytes_of({60, 50}));
  EXPECT_EQ(budget.held(1), 110u);
  EXPECT_EQ(budget.held_total(), 110u);
  EXPECT_TRUE(budget.over_limit(1));
  EXPECT_FALSE(budget.over_limit(2));
  // Same bytes, not a copy.
  EXPECT_EQ(a[0].size(), 60u);
  EXPECT_EQ(a[0].data()[59], std::byte{59});

  auto copy = a[0];  // e.g. the same segment on its way to a second engine
  a[0] = SharedBytes();
  EXPECT_EQ(budget.held(1), 110u) << "released while a copy still refers to the bytes";
  copy = SharedBytes();
  EXPECT_EQ(budget.held(1), 50u);
  EXPECT_EQ(rooms, 1) << "crossing back under the per-client limit tells the owner";
  a.clear();
  EXPECT_EQ(budget.held(1), 0u);
  EXPECT_EQ(budget.held_total(), 0u);
  EXPECT_EQ(rooms, 1) << "no crossing, no call";
}

TEST(ByteBudgetTest, TheTotalLimitHoldsEveryClient) {
  int rooms = 0;
  ByteBudget budget({.per_client = 100, .total = 150}, [&] { ++rooms; });
  auto a = budget.charge(1, bytes_of({90}));
  auto b = budget.charge(2, bytes_of({90}));
  EXPECT_TRUE(budget.over_limit(3)) << "a client holding nothing still waits while the total is over";
  EXPECT_TRUE(budget.over_limit(1));
  b.clear();
  EXPECT_EQ(rooms, 1);
  EXPECT_FALSE(budget.over_limit(3));
  EXPECT_FALSE(budget.over_limit(1));
}

TEST(ByteBudgetTest, BytesOutlivingTheBudgetAreReleasedSafely) {
  std::vector<SharedBytes> kept;
  int rooms = 0;
  {
    ByteBudget budget({.per_client = 10, .total = 10}, [&] { ++rooms; });
    kept = budget.charge(1, bytes_of({20, 0}));
    EXPECT_EQ(kept[1].size(), 0u);
  }
  kept.clear();  // after the budget (and its owner) are gone: no call, no crash
  EXPECT_EQ(rooms, 0);
}

}  // namespace
}  // namespace testudo::controller
