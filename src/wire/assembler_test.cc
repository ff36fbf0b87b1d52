#include "wire/assembler.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace testudo::wire {
namespace {

std::string frame(FrameType type, std::span<const std::byte> payload, bool overtaking = false) {
  auto header = encode_frame_header({type, static_cast<std::uint32_t>(payload.size()), overtaking});
  std::string out(reinterpret_cast<const char*>(header.data()), header.size());
  out.append(reinterpret_cast<const char*>(payload.data()), payload.size());
  return out;
}
std::string head(const Envelope& e, const std::vector<SharedBytes>& segments, bool overtaking = false) {
  return frame(FrameType::kHead, encode_head(e, segments), overtaking);
}
std::string data_frame(std::string_view bytes, bool overtaking = false) {
  return frame(FrameType::kData, std::as_bytes(std::span(bytes.data(), bytes.size())), overtaking);
}

// Feeds a byte stream frame by frame, as a connection reads it: the messages it completes, in
// order, or the first error.
StatusOr<std::vector<Message>> feed(MessageAssembler& assembler, const std::string& stream) {
  std::vector<Message> out;
  std::size_t at = 0;
  while (at < stream.size()) {
    if (stream.size() - at < kFrameHeaderBytes) return data_loss("test stream ends inside a header");
    std::array<std::byte, kFrameHeaderBytes> header;
    std::memcpy(header.data(), stream.data() + at, header.size());
    at += header.size();
    TESTUDO_ASSIGN_OR_RETURN(std::span<std::byte> to, assembler.begin_frame(header));
    if (stream.size() - at < to.size()) return data_loss("test stream ends inside a payload");
    std::memcpy(to.data(), stream.data() + at, to.size());
    at += to.size();
    TESTUDO_ASSIGN_OR_RETURN(std::optional<Message> done, assembler.end_frame());
    if (done) out.push_back(std::move(*done));
  }
  return out;
}

Envelope of(MessageKind kind) {
  Envelope e;
  e.kind = kind;
  return e;
}

TEST(AssemblerTest, SegmentsOfAnySizeIncludingNoneAndEmpty) {
  MessageAssembler assembler{Limits{}};
  const std::string big(1500, 'b');
  std::vector<SharedBytes> segments{SharedBytes::copy_of(std::string_view("x = 1")), SharedBytes(),
                                    SharedBytes::copy_of(big)};
  Envelope push = of(MessageKind::kPush);
  push.request_id = 9;
  const std::string stream = head(of(MessageKind::kHeartbeat), {}) + head(push, segments) + data_frame("x = 1") +
                             data_frame(big.substr(0, 1000)) + data_frame(big.substr(1000));
  auto got = feed(assembler, stream);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  ASSERT_EQ(got->size(), 2u);
  EXPECT_EQ((*got)[0].envelope.kind, MessageKind::kHeartbeat);
  EXPECT_TRUE((*got)[0].segments.empty());
  EXPECT_EQ((*got)[1].envelope, push);
  ASSERT_EQ((*got)[1].segments.size(), 3u);
  EXPECT_EQ((*got)[1].segments[0].to_string(), "x = 1");
  EXPECT_TRUE((*got)[1].segments[1].empty());
  EXPECT_EQ((*got)[1].segments[2].to_string(), big);
  EXPECT_FALSE(assembler.in_message());
}

TEST(AssemblerTest, AnOvertakingMessageArrivesBeforeTheOneItOvertook) {
  MessageAssembler assembler{Limits{}};
  const std::vector<SharedBytes> two{SharedBytes::copy_of(std::string_view("abcdef"))};
  Envelope status = of(MessageKind::kQueueStatus);
  status.request_id = 4;
  const std::vector<SharedBytes> one{SharedBytes::copy_of(std::string_view("q"))};
  const std::string stream = head(of(MessageKind::kPush), two) + data_frame("abc") + head(of(MessageKind::kHeartbeat), {}, true) +
                             head(status, one, true) + data_frame("q", true) + data_frame("def");
  auto got = feed(assembler, stream);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  ASSERT_EQ(got->size(), 3u);
  EXPECT_EQ((*got)[0].envelope.kind, MessageKind::kHeartbeat);
  EXPECT_EQ((*got)[1].envelope, status);
  EXPECT_EQ((*got)[1].segments.at(0).to_string(), "q");
  EXPECT_EQ((*got)[2].envelope.kind, MessageKind::kPush);
  EXPECT_EQ((*got)[2].segments.at(0).to_string(), "abcdef");
}

TEST(AssemblerTest, FramesOutOfPlaceAreRefused) {
  const std::vector<SharedBytes> two{SharedBytes::copy_of(std::string_view("abcdef"))};
  const std::vector<SharedBytes> one{SharedBytes::copy_of(std::string_view("q"))};
  const std::string push_begun = head(of(MessageKind::kPush), two) + data_frame("abc");
  struct Case {
    const char* what;
    std::string stream;
    const char* says;
  };
  const std::vector<Case> cases = {
      {"overtaking outside a message", head(of(MessageKind::kHeartbeat), {}, true), "outside a message"},
      {"data first", data_frame("abc"), "head was expected"},
      {"a head inside a message", push_begun + head(of(MessageKind::kHeartbeat), {}), "data frame was expected"},
      {"an execute overtaking", push_begun + head(of(MessageKind::kExecute), one, true), "may not overtake"},
      {"an overtaking message cut", push_begun + head(of(MessageKind::kQueueStatus), one, true) + data_frame("q"),
       "was cut"},
      {"a head inside an overtaking message",
       push_begun + head(of(MessageKind::kQueueStatus), one, true) + head(of(MessageKind::kHeartbeat), {}, true),
       "inside an overtaking"},
      {"overtaking data alone", push_begun + data_frame("q", true), "no overtaking head"},
      {"more data than announced", push_begun + data_frame("defg"), "announced segment size"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    MessageAssembler assembler{Limits{}};
    auto got = feed(assembler, c.stream);
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().code(), StatusCode::kDataLoss) << got.status().to_string();
    EXPECT_NE(got.status().message().find(c.says), std::string::npos) << got.status().to_string();
  }
}

TEST(AssemblerTest, LimitsApplyFromTheNextFrame) {
  MessageAssembler assembler{Limits::pre_auth()};
  const std::vector<SharedBytes> one{SharedBytes::copy_of(std::string_view("q"))};
  EXPECT_FALSE(feed(assembler, head(of(MessageKind::kPush), one)).ok()) << "no body before authentication";
  MessageAssembler later{Limits::pre_auth()};
  ASSERT_TRUE(feed(later, head(of(MessageKind::kHello), {})).ok());
  later.set_limits(Limits{});
  auto got = feed(later, head(of(MessageKind::kPush), one) + data_frame("q"));
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_EQ(got->size(), 1u);
}

}  // namespace
}  // namespace testudo::wire
