#include "controller/refusal_digest.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "base/fake_clock.h"

namespace testudo::controller {
namespace {

struct Said {
  std::string host;
  std::uint64_t more;
  std::string reasons;
};

TEST(RefusalDigestTest, AFloodIsOneLineAMinutePerHostWithItsReasonsCounted) {
  testudo::testing::FakeClock clock;
  std::vector<Said> said;
  RefusalDigest digest(clock, [&](const std::string& h, std::uint64_t n, const std::string& r) {
    said.push_back({h, n, r});
  });
  EXPECT_TRUE(digest.note("10.0.0.7:40001", "bad hello")) << "the first is logged in full";
  for (int port = 40002; port < 41002; ++port) {
    EXPECT_FALSE(digest.note("10.0.0.7:" + std::to_string(port), port % 2 ? "bad hello" : "timed out"));
  }
  EXPECT_TRUE(digest.note("[::1]:5", "bad hello")) << "another host has its own first";
  EXPECT_TRUE(said.empty());
  clock.advance(std::chrono::seconds(60));
  ASSERT_EQ(said.size(), 1u) << "[::1] had nothing beyond its first";
  EXPECT_EQ(said[0].host, "10.0.0.7");
  EXPECT_EQ(said[0].more, 1000u);
  EXPECT_EQ(said[0].reasons, "bad hello (500); timed out (500)");

  // A new window: the host's next refusal is logged in full again.
  EXPECT_TRUE(digest.note("10.0.0.7:50000", "bad hello"));
}

TEST(RefusalDigestTest, MemoryIsBoundedWhateverThePeersSend) {
  testudo::testing::FakeClock clock;
  std::vector<Said> said;
  RefusalDigest digest(clock, [&](const std::string& h, std::uint64_t n, const std::string& r) {
    said.push_back({h, n, r});
  });
  // Many hosts (spoofed sources) and many distinct reasons (attacker-chosen text).
  for (int i = 0; i < 100; ++i) (void)digest.note("10.9.9.9:1", "reason " + std::to_string(i) + std::string(500, 'y'));
  for (int i = 0; i < 5000; ++i) (void)digest.note("10.1." + std::to_string(i / 250) + "." + std::to_string(i % 250) + ":1", "x");
  digest.flush();
  std::uint64_t others = 0;
  for (const Said& s : said) {
    if (s.host == "other hosts") others = s.more;
    if (s.host == "10.9.9.9") {
      EXPECT_NE(s.reasons.find("other reasons ("), std::string::npos);
      EXPECT_LT(s.reasons.size(), (RefusalDigest::kMaxReasons + 1) * 140);
    }
  }
  EXPECT_EQ(others, 5000u - (RefusalDigest::kMaxHosts - 1)) << "hosts beyond the limit are summed together";
}

TEST(RefusalDigestTest, HostOfStripsThePortOnly) {
  EXPECT_EQ(RefusalDigest::host_of("10.0.0.7:40112"), "10.0.0.7");
  EXPECT_EQ(RefusalDigest::host_of("[::1]:5"), "[::1]");
  EXPECT_EQ(RefusalDigest::host_of("::1"), "::1");
  EXPECT_EQ(RefusalDigest::host_of("unknown"), "unknown");
}

}  // namespace
}  // namespace testudo::controller
