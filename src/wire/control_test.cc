#include "wire/control.h"
#include "wire/message.h"

#include <gtest/gtest.h>

namespace testudo::wire {
namespace {

TEST(ControlTest, TaskOptionsRoundTripWithAndWithoutDependencyRules) {
  TaskOptions plain{.retries = 2, .timeout_ms = 500, .after = {1, 2}, .follow = {3}};
  std::string text = encode_task_options(plain);
  EXPECT_EQ(text.size(), 4u + 4u + (4u + 16u) + (4u + 8u));  // the rules travel only when not the default
  ASSERT_TRUE(decode_task_options(text).ok());
  EXPECT_EQ(*decode_task_options(text), plain);

  TaskOptions ruled = plain;
  ruled.after_rule = {.all = false};
  ruled.follow_rule = {.all = true, .success = false, .failure = true};
  text = encode_task_options(ruled);
  EXPECT_EQ(text.size(), encode_task_options(plain).size() + 2);
  ASSERT_TRUE(decode_task_options(text).ok());
  EXPECT_EQ(*decode_task_options(text), ruled);
}

TEST(ControlTest, MalformedDependencyRulesAreRejected) {
  std::string plain = encode_task_options(TaskOptions{.after = {1}});
  EXPECT_FALSE(decode_task_options(plain + std::string(1, '\x03')).ok());            // one rule only
  EXPECT_FALSE(decode_task_options(plain + std::string("\x01\x03", 2)).ok());        // counts no outcome
  EXPECT_FALSE(decode_task_options(plain + std::string("\x0b\x03", 2)).ok());        // unknown bit
  EXPECT_FALSE(decode_task_options(plain + std::string("\x03\x03\x00", 3)).ok());    // trailing byte
  EXPECT_FALSE(decode_task_options(plain + std::string("\x03\x03", 2)).ok());        // the default, spelled out
  EXPECT_TRUE(decode_task_options(plain + std::string("\x03\x06", 2)).ok());
}

}  // namespace
}  // namespace testudo::wire

namespace testudo::wire {
namespace {

// A welcome says the controller's largest message; an old controller's empty text means the
// protocol's default, and anything else malformed is refused (never a guess).
TEST(WelcomeTermsTest, RoundTripEmptyDefaultAndMalformed) {
  auto terms = decode_welcome_terms(encode_welcome_terms({.max_message_bytes = 123456}));
  ASSERT_TRUE(terms.ok()) << terms.status().to_string();
  EXPECT_EQ(terms->max_message_bytes, 123456u);
  auto empty = decode_welcome_terms("");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->max_message_bytes, Limits{}.max_message_bytes);
  std::string good = encode_welcome_terms({.max_message_bytes = 7});
  EXPECT_FALSE(decode_welcome_terms(good.substr(0, 5)).ok());                       // truncated
  EXPECT_FALSE(decode_welcome_terms(good + "x").ok());                              // trailing
  EXPECT_FALSE(decode_welcome_terms(std::string(1, '\2') + good.substr(1)).ok());  // unknown version
  EXPECT_FALSE(decode_welcome_terms(encode_welcome_terms({.max_message_bytes = 0})).ok());
}

}  // namespace
}  // namespace testudo::wire
