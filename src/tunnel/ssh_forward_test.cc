#include "tunnel/ssh_forward.h"

#include <gtest/gtest.h>

namespace testudo::tunnel {
namespace {

// The successful path needs an sshd: tests/python/test_ssh_launcher.py runs real ones.
TEST(SshForwardTest, AGatewayThatDoesNotAnswerIsAnErrorNamingIt) {
  auto forward = SshForward::open("nobody@127.0.0.1:1", "127.0.0.1", 5555, {"-oConnectTimeout=3"},
                                  std::chrono::seconds(20));
  ASSERT_FALSE(forward.ok());
  EXPECT_EQ(forward.status().code(), StatusCode::kUnavailable) << forward.status().to_string();
  EXPECT_NE(forward.status().message().find("SSH tunnel through nobody@127.0.0.1:1 failed"), std::string::npos)
      << forward.status().message();
  EXPECT_NE(forward.status().message().find("port 1"), std::string::npos) << forward.status().message();
}

TEST(SshForwardTest, AnOptionIsNoGateway) {
  auto forward = SshForward::open("-oProxyCommand=touch /tmp/pwned", "127.0.0.1", 5555, {}, std::chrono::seconds(5));
  ASSERT_FALSE(forward.ok());
  EXPECT_EQ(forward.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace testudo::tunnel
