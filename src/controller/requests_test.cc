// The controller's JSON control-request decoders and the gatekeeper's one authorization
// question.
#include <gtest/gtest.h>

#include <fstream>

#include "base/test_temp_dir.h"
#include "controller/gatekeeper.h"
#include "controller/requests.h"

namespace testudo::controller {
namespace {

TEST(ResultQueryTest, DecodesEveryFieldAndDefaults) {
  auto empty = decode_result_query("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->states.empty());
  EXPECT_EQ(empty->limit, 1000u);
  auto q = decode_result_query(
      R"({"states": ["succeeded", "lost", "succeeded"], "after_task_id": 7, "submitted_after": 1.5, "limit": 5})");
  ASSERT_TRUE(q.ok()) << q.status().to_string();
  EXPECT_EQ(q->states, (std::vector<TaskState>{TaskState::kSucceeded, TaskState::kLost}));
  EXPECT_EQ(q->after_task_id, 7u);
  EXPECT_EQ(q->submitted_after_us, 1'500'000);
  EXPECT_EQ(q->limit, 5u);
  EXPECT_EQ(decode_result_query(R"({"limit": 99999999})")->limit, kMaxQueryLimit);
}

TEST(ResultQueryTest, RefusesWhatWouldSilentlyWidenOrCrash) {
  // An unknown state must not turn into "any state".
  for (const char* bad : {R"({"states": ["bogus"]})", R"({"states": "succeeded"})", R"({"states": [1]})",
                          R"({"limit": "many"})", R"({"limit": -1})", R"({"after_task_id": 1.5})",
                          R"({"submitted_after": "yesterday"})", R"({"submitted_after": 1e300})", R"({"owner": "x"})",
                          "[]", "{", "null"}) {
    auto q = decode_result_query(bad);
    EXPECT_FALSE(q.ok()) << bad;
    EXPECT_EQ(q.status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(KeyAdminRequestTest, DecodesActionsAndRefusesTheRest) {
  auto list = decode_key_admin_request(R"({"action": "list"})");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->action, KeyAdminRequest::Action::kList);
  auto revoke = decode_key_admin_request(R"({"action": "revoke", "who": "ab12cd34"})");
  ASSERT_TRUE(revoke.ok());
  EXPECT_EQ(revoke->action, KeyAdminRequest::Action::kRevoke);
  EXPECT_EQ(revoke->who, "ab12cd34");
  for (const char* bad : {R"({})", R"({"action": "delete", "who": "x"})", R"({"action": "revoke"})",
                          R"({"action": 3})", R"({"action": "show", "who": 5})", R"({"action": "list", "extra": 1})",
                          "not json"}) {
    EXPECT_FALSE(decode_key_admin_request(bad).ok()) << bad;
  }
  EXPECT_FALSE(decode_key_admin_request(R"({"action": "show", "who": ")" + std::string(200, 'a') + "\"}").ok());
}

// A gatekeeper whose policy lets cn:bob execute on engines tagged gpu=yes, and cn:carol do
// everything on every engine; sha256:owner is the owner.
class AuthorizeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string policy = dir_.path() + "/policy.json";
    std::ofstream(policy) << R"({"version": 1, "rules": [
      {"identities": ["cn:bob"], "allow": ["execute"], "engines": {"tags": {"gpu": "yes"}}},
      {"identities": ["cn:carol"], "allow": ["*"]}]})";
    GatekeeperOptions o;
    o.trust_dir = dir_.path() + "/trust";
    o.policy_file = policy;
    o.owners = {"sha256:owner"};
    auto gate = Gatekeeper::create(o);
    ASSERT_TRUE(gate.ok()) << gate.status().to_string();
    gate_ = std::move(gate).value();
  }
  static PeerIdentity client(const std::string& name) {
    PeerIdentity p;
    p.fingerprint = "sha256:" + name;
    p.name = name;
    return p;
  }
  static auth::EngineFacts engine(std::uint32_t id, bool gpu) {
    auth::EngineFacts f{id, {}};
    if (gpu) f.tags["gpu"] = "yes";
    return f;
  }
  Decision ask(const std::string& who, auth::Operation op, AccessRequest::Scope scope,
               std::vector<auth::EngineFacts> engines = {}) {
    return gate_->authorize(client(who), "192.0.2.9:1", AccessRequest{op, scope, std::move(engines)});
  }

  testing::TempDir dir_{"authorize_test"};
  std::unique_ptr<Gatekeeper> gate_;
};

TEST_F(AuthorizeTest, EachOfNeedsEveryEngine) {
  using S = AccessRequest::Scope;
  EXPECT_TRUE(ask("bob", auth::Operation::kExecute, S::kEachOf, {engine(0, true), engine(1, true)}).allowed);
  Decision d = ask("bob", auth::Operation::kExecute, S::kEachOf, {engine(0, true), engine(1, false)});
  EXPECT_FALSE(d.allowed);
  EXPECT_NE(d.reason.find("engine 1"), std::string::npos) << d.reason;
  EXPECT_FALSE(ask("bob", auth::Operation::kPush, S::kEachOf, {engine(0, true)}).allowed);
}

TEST_F(AuthorizeTest, AnyOfNarrowsToTheAllowedEnginesAndNeverToNone) {
  using S = AccessRequest::Scope;
  Decision d = ask("bob", auth::Operation::kExecute, S::kAnyOf, {engine(0, false), engine(1, true), engine(2, true)});
  ASSERT_TRUE(d.allowed);
  ASSERT_TRUE(d.engines.has_value());
  EXPECT_EQ(*d.engines, (std::vector<std::uint32_t>{1, 2}));
  Decision none = ask("bob", auth::Operation::kExecute, S::kAnyOf, {engine(0, false)});
  EXPECT_FALSE(none.allowed);
  EXPECT_FALSE(none.engines.has_value());
  // An unrestricted grant: no narrowing at all (future engines included).
  Decision carol = ask("carol", auth::Operation::kExecute, S::kAnyOf, {engine(0, false)});
  EXPECT_TRUE(carol.allowed);
  EXPECT_FALSE(carol.engines.has_value());
}

TEST_F(AuthorizeTest, WholeClusterNeedsAGrantNotLimitedToSomeEngines) {
  using S = AccessRequest::Scope;
  EXPECT_TRUE(ask("carol", auth::Operation::kShutdown, S::kWholeCluster).allowed);
  EXPECT_TRUE(ask("owner", auth::Operation::kShutdown, S::kWholeCluster).allowed);
  Decision bob = ask("bob", auth::Operation::kShutdown, S::kWholeCluster);
  EXPECT_FALSE(bob.allowed);
  EXPECT_NE(bob.reason.find("whole-cluster"), std::string::npos) << bob.reason;
}

TEST_F(AuthorizeTest, OwnersMayEverythingStrangersNothing) {
  using S = AccessRequest::Scope;
  for (auto op : {auth::Operation::kStatus, auth::Operation::kKeyAdmin, auth::Operation::kReadOthersResults}) {
    EXPECT_TRUE(ask("owner", op, S::kNoEngine).allowed);
    EXPECT_FALSE(ask("mallory", op, S::kNoEngine).allowed);
  }
  EXPECT_TRUE(gate_->allows(client("owner"), auth::Operation::kReadOthersResults));
  EXPECT_FALSE(gate_->allows(client("bob"), auth::Operation::kReadOthersResults));
}

}  // namespace
}  // namespace testudo::controller
