#include "controller/location.h"

#include <gtest/gtest.h>

namespace testudo::controller {
namespace {

TEST(LocationTest, WildcardsMeanEveryInterface) {
  for (const char* ip : {"0.0.0.0", "::", "*"}) EXPECT_TRUE(is_wildcard_address(ip)) << ip;
  for (const char* ip : {"127.0.0.1", "10.0.0.1", "::1", "", "0.0.0.1"}) EXPECT_FALSE(is_wildcard_address(ip)) << ip;
  EXPECT_EQ(bind_address("*"), "0.0.0.0");
  EXPECT_EQ(bind_address("::"), "::");
  EXPECT_EQ(bind_address("10.1.2.3"), "10.1.2.3");
}

TEST(LocationTest, ConnectionFilesNameAnAddressOthersCanDial) {
  // An explicit location wins, whatever the bind address.
  EXPECT_EQ(*connection_address("0.0.0.0", "gateway.example", "node1"), "gateway.example");
  EXPECT_EQ(*connection_address("127.0.0.1", "10.9.8.7", "node1"), "10.9.8.7");
  // A wildcard is no address to dial: this host's name instead (was "127.0.0.1", useless on
  // another host).
  EXPECT_EQ(*connection_address("0.0.0.0", "", "node1"), "node1");
  EXPECT_EQ(*connection_address("::", "", "node1"), "node1");
  EXPECT_EQ(*connection_address("*", "", "node1"), "node1");
  // One interface: its own address.
  EXPECT_EQ(*connection_address("127.0.0.1", "", "node1"), "127.0.0.1");
  EXPECT_EQ(*connection_address("10.0.0.5", "", "node1"), "10.0.0.5");
}

TEST(LocationTest, AWildcardWithoutAHostNameAsksForALocation) {
  auto address = connection_address("0.0.0.0", "", "");
  ASSERT_FALSE(address.ok());
  EXPECT_EQ(address.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(address.status().message().find("--location"), std::string::npos) << address.status().message();
}

TEST(LocationTest, ThisHostHasAName) { EXPECT_FALSE(this_host_name().empty()); }

}  // namespace
}  // namespace testudo::controller
