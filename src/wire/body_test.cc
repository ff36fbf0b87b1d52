#include "wire/body.h"

#include <gtest/gtest.h>

namespace testudo::wire {
namespace {

TEST(BodyTest, NamesRoundTrip) {
  std::vector<std::string> names{"a", "bb", ""};
  auto decoded = decode_names(encode_names(names));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, names);
}

TEST(BodyTest, LiteralPairsRoundTrip) {
  LiteralPairs pairs{{"a", "5"}, {"b", "[1, 2]"}};
  auto decoded = decode_literal_pairs(encode_literal_pairs(pairs));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, pairs);
}

TEST(BodyTest, ReplyMetaRoundTripAndTruncation) {
  ReplyMeta m{false, "ZeroDivisionError", "division by zero", "Traceback...", 10, 20};
  SharedBytes enc = encode_reply_meta(m);
  auto decoded = decode_reply_meta(enc);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, m);
  for (std::size_t n = 0; n < enc.size(); ++n) {
    EXPECT_FALSE(decode_reply_meta(SharedBytes::copy_of(enc.span().first(n))).ok()) << n;
  }
}

TEST(BodyTest, NameCountLargerThanInputIsRejected) {
  SharedBytes b = SharedBytes::copy_of(std::string("\xff\xff\x00\x00", 4));
  EXPECT_FALSE(decode_names(b).ok());
}

}  // namespace
}  // namespace testudo::wire
