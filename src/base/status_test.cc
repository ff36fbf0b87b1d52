#include "testudo/status.h"

#include <gtest/gtest.h>

#include <memory>

namespace testudo {
namespace {

StatusOr<int> parse_positive(int v) {
  if (v <= 0) return invalid_argument("not positive");
  return v;
}

Status twice(int v, int* out) {
  TESTUDO_ASSIGN_OR_RETURN(int x, parse_positive(v));
  *out = 2 * x;
  return ok_status();
}

TEST(StatusTest, OkAndErrorRender) {
  EXPECT_TRUE(ok_status().ok());
  EXPECT_EQ(ok_status().to_string(), "OK");
  Status s = permission_denied("mode 0644");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.to_string(), "PERMISSION_DENIED: mode 0644");
  EXPECT_EQ(s.with_context("loading f").message(), "loading f: mode 0644");
}

TEST(StatusTest, AssignOrReturnPropagates) {
  int out = 0;
  EXPECT_TRUE(twice(4, &out).ok());
  EXPECT_EQ(out, 8);
  Status s = twice(-1, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(out, 8);
}

TEST(StatusTest, StatusOrHoldsMoveOnly) {
  StatusOr<std::unique_ptr<int>> v = std::make_unique<int>(7);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(**v, 7);
  StatusOr<std::unique_ptr<int>> e = not_found("x");
  EXPECT_EQ(e.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace testudo
