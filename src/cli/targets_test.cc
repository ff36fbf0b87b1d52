#include "cli/targets.h"

#include <gtest/gtest.h>

namespace testudo::cli {
namespace {

std::vector<EngineId> sel(const std::string& spec) {
  auto r = select_targets(spec, {3, 0, 2, 1});
  EXPECT_TRUE(r.ok()) << spec << ": " << r.status().to_string();
  return r.ok() ? *r : std::vector<EngineId>{};
}

TEST(TargetsTest, SlicesBehaveLikePython) {
  EXPECT_EQ(sel("all"), (std::vector<EngineId>{0, 1, 2, 3}));
  EXPECT_EQ(sel("::2"), (std::vector<EngineId>{0, 2}));
  EXPECT_EQ(sel("1::2"), (std::vector<EngineId>{1, 3}));
  EXPECT_EQ(sel("0:3"), (std::vector<EngineId>{0, 1, 2}));
  EXPECT_EQ(sel("::-1"), (std::vector<EngineId>{3, 2, 1, 0}));
  EXPECT_EQ(sel("-1"), (std::vector<EngineId>{3}));
  EXPECT_EQ(sel("10:"), (std::vector<EngineId>{}));
}

TEST(TargetsTest, IdListsAndErrors) {
  EXPECT_EQ(sel("2"), (std::vector<EngineId>{2}));
  EXPECT_EQ(sel("0,3"), (std::vector<EngineId>{0, 3}));
  EXPECT_FALSE(select_targets("a,b", {0}).ok());
  EXPECT_FALSE(select_targets("::0", {0}).ok());
  EXPECT_FALSE(select_targets("1:2:3:4", {0}).ok());
  EXPECT_FALSE(select_targets("-5", {0}).ok());
}

}  // namespace
}  // namespace testudo::cli
