#include "auth/login_limiter.h"

#include <gtest/gtest.h>

#include <string>

namespace testudo::auth {
namespace {

using std::chrono::seconds;
using Clock = LoginLimiter::Clock;

const std::string kAlice = "sha256:" + std::string(64, 'a');
const std::string kBob = "sha256:" + std::string(64, 'b');

TEST(LoginLimiterTest, IdentityLockedOutAfterMaxFailuresOtherIdentityStillPasses) {
  LoginLimiter limiter;  // 5 per identity, 20 per address
  const Clock::time_point t0{};
  for (int i = 0; i < 4; ++i) {
    EXPECT_FALSE(limiter.locked_out("10.0.0.1", kAlice, t0 + seconds(i)));
    limiter.record_failure("10.0.0.1", kAlice, t0 + seconds(i));
  }
  EXPECT_FALSE(limiter.locked_out("10.0.0.1", kAlice, t0 + seconds(4)));
  limiter.record_failure("10.0.0.1", kAlice, t0 + seconds(4));  // the 5th
  auto left = limiter.locked_out("10.0.0.1", kAlice, t0 + seconds(5));
  ASSERT_TRUE(left);
  EXPECT_EQ(*left, seconds(29));  // 30 s from the last failure, 1 s later
  // The same identity from another address is locked too: the key is what is guessed at.
  EXPECT_TRUE(limiter.locked_out("10.0.0.2", kAlice, t0 + seconds(5)));
  // Another identity from the same address still passes: 5 failures < 20 for the address.
  EXPECT_FALSE(limiter.locked_out("10.0.0.1", kBob, t0 + seconds(5)));
  // A peer without a certificate is judged by its address only.
  EXPECT_FALSE(limiter.locked_out("10.0.0.1", "", t0 + seconds(5)));
}

TEST(LoginLimiterTest, AddressLockedOutAfterTwentyFailuresAcrossIdentities) {
  LoginLimiter limiter;
  const Clock::time_point t0{};
  for (int i = 0; i < 19; ++i) {
    const std::string id = "sha256:" + std::to_string(i);  // a new identity every time
    ASSERT_FALSE(limiter.locked_out("192.0.2.7", id, t0)) << i;
    limiter.record_failure("192.0.2.7", id, t0);
  }
  EXPECT_FALSE(limiter.locked_out("192.0.2.7", "sha256:fresh", t0));
  limiter.record_failure("192.0.2.7", "sha256:19", t0);  // the 20th
  auto left = limiter.locked_out("192.0.2.7", "sha256:fresh", t0);
  ASSERT_TRUE(left);
  EXPECT_EQ(*left, seconds(30));
  EXPECT_TRUE(limiter.locked_out("192.0.2.7", "", t0));  // no certificate: still the address
  EXPECT_FALSE(limiter.locked_out("192.0.2.8", "sha256:fresh", t0));  // other addresses are fine
}

// A trusted identity is judged by its own failures only: others failing from its (shared)
// address cannot lock it out, but its own failures still do.
TEST(LoginLimiterTest, IdentityLockoutIgnoresTheAddress) {
  LoginLimiter limiter;
  const Clock::time_point t0{};
  for (int i = 0; i < 25; ++i) limiter.record_failure("192.0.2.7", "sha256:guess" + std::to_string(i), t0);
  EXPECT_TRUE(limiter.locked_out("192.0.2.7", "sha256:owner", t0));
  EXPECT_FALSE(limiter.identity_locked_out("sha256:owner", t0));
  for (int i = 0; i < 5; ++i) limiter.record_failure("192.0.2.9", "sha256:owner", t0);
  EXPECT_TRUE(limiter.identity_locked_out("sha256:owner", t0));
  EXPECT_FALSE(limiter.identity_locked_out("", t0));
}

TEST(LoginLimiterTest, LockoutExpiresWithAFreshAllowance) {
  LoginLimiter limiter;
  const Clock::time_point t0{};
  for (int i = 0; i < 5; ++i) limiter.record_failure("10.0.0.1", kAlice, t0);
  EXPECT_TRUE(limiter.locked_out("10.0.0.1", kAlice, t0 + seconds(29)));
  auto left = limiter.locked_out("10.0.0.1", kAlice, t0 + std::chrono::milliseconds(29'500));
  ASSERT_TRUE(left);
  EXPECT_EQ(*left, seconds(1));  // rounded up, never 0
  EXPECT_FALSE(limiter.locked_out("10.0.0.1", kAlice, t0 + seconds(30)));
  // After the lockout the count starts from zero: one more failure does not lock again.
  limiter.record_failure("10.0.0.1", kAlice, t0 + seconds(31));
  EXPECT_FALSE(limiter.locked_out("10.0.0.1", kAlice, t0 + seconds(31)));
}

TEST(LoginLimiterTest, FailureWhileLockedOutExtendsTheLock) {
  LoginLimiter limiter;
  const Clock::time_point t0{};
  for (int i = 0; i < 5; ++i) limiter.record_failure("10.0.0.1", kAlice, t0);
  limiter.record_failure("10.0.0.1", kAlice, t0 + seconds(20));
  auto left = limiter.locked_out("10.0.0.1", kAlice, t0 + seconds(40));
  ASSERT_TRUE(left);
  EXPECT_EQ(*left, seconds(10));
  EXPECT_FALSE(limiter.locked_out("10.0.0.1", kAlice, t0 + seconds(50)));
}

TEST(LoginLimiterTest, FailuresOlderThanTheWindowAreForgotten) {
  LoginLimiter limiter;  // window 60 s
  const Clock::time_point t0{};
  for (int i = 0; i < 4; ++i) limiter.record_failure("10.0.0.1", kAlice, t0 + seconds(i));
  // 61 s after the first four, a fifth failure is alone in its window.
  limiter.record_failure("10.0.0.1", kAlice, t0 + seconds(64));
  EXPECT_FALSE(limiter.locked_out("10.0.0.1", kAlice, t0 + seconds(64)));
  // Three more inside the window of the 64 s one: 4 in the window, still not locked...
  for (int i = 65; i < 68; ++i) limiter.record_failure("10.0.0.1", kAlice, t0 + seconds(i));
  EXPECT_FALSE(limiter.locked_out("10.0.0.1", kAlice, t0 + seconds(68)));
  // ...and the 5th within 60 s locks.
  limiter.record_failure("10.0.0.1", kAlice, t0 + seconds(68));
  EXPECT_TRUE(limiter.locked_out("10.0.0.1", kAlice, t0 + seconds(68)));
}

TEST(LoginLimiterTest, SuccessClearsTheIdentityButNotTheAddress) {
  LoginLimiterOptions options;
  options.max_failures_per_address = 6;
  LoginLimiter limiter(options);
  const Clock::time_point t0{};
  for (int i = 0; i < 4; ++i) limiter.record_failure("10.0.0.1", kAlice, t0);
  limiter.record_success("10.0.0.1", kAlice);
  // Alice's count is back to zero: four more failures do not lock her...
  limiter.record_failure("10.0.0.2", kAlice, t0);
  for (int i = 0; i < 3; ++i) limiter.record_failure("10.0.0.3", kAlice, t0);
  EXPECT_FALSE(limiter.locked_out("10.0.0.9", kAlice, t0));
  // ...but the address kept its 4 + 1 failures: two more (the 6th) locks 10.0.0.1.
  limiter.record_failure("10.0.0.1", kBob, t0);
  EXPECT_FALSE(limiter.locked_out("10.0.0.1", "", t0));
  limiter.record_failure("10.0.0.1", kBob, t0);
  EXPECT_TRUE(limiter.locked_out("10.0.0.1", "", t0));
}

// T18: a flood of spoofed addresses and fresh keys cannot grow the table past max_tracked,
// and the most recent failures are the ones remembered.
TEST(LoginLimiterTest, TableStaysBoundedUnderAFloodOfDistinctKeys) {
  LoginLimiterOptions options;
  options.max_tracked = 1'000;
  LoginLimiter limiter(options);
  const Clock::time_point t0{};
  for (int i = 0; i < 100'000; ++i) {
    limiter.record_failure("198.51." + std::to_string(i), "sha256:flood" + std::to_string(i),
                           t0 + std::chrono::milliseconds(i));
    ASSERT_LE(limiter.tracked(), 1'000u);
  }
  EXPECT_EQ(limiter.tracked(), 1'000u);
  // Eviction goes by last failure: a locked key is forgotten once max_tracked newer keys have
  // failed (the memory bound wins), and kept while fewer have.
  LoginLimiter small(options);
  for (int i = 0; i < 5; ++i) small.record_failure("10.0.0.1", kAlice, t0);
  for (int i = 0; i < 100'000; ++i) {
    small.record_failure("198.51." + std::to_string(i), "", t0);
    ASSERT_LE(small.tracked(), 1'000u);
  }
  EXPECT_FALSE(small.locked_out("10.0.0.1", kAlice, t0));  // evicted: least recently failed
  for (int i = 0; i < 5; ++i) small.record_failure("10.0.0.1", kAlice, t0);
  for (int i = 0; i < 900; ++i) small.record_failure("203.0.113." + std::to_string(i), "", t0);
  EXPECT_TRUE(small.locked_out("10.0.0.1", kAlice, t0));  // recent enough to be kept

  LoginLimiter defaults;  // default bound 10,000
  for (int i = 0; i < 100'000; ++i) defaults.record_failure(std::to_string(i), std::to_string(i), t0);
  EXPECT_EQ(defaults.tracked(), 10'000u);
}

}  // namespace
}  // namespace testudo::auth
