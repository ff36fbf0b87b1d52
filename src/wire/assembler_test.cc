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
std::string abandoning_frame(std::uint32_t length = 0, bool overtaking = false) {
  auto header = encode_frame_header({FrameType::kData, length, overtaking, /*abandons=*/true});
  return std::string(reinterpret_cast<const char*>(header.data()), header.size()) + std::string(length, 'z');
}

// What a streamed message's sink was told, in order: "1:abc" per part, "end", "abandon: why".
struct RecordingSink final : StreamSink {
  std::vector<std::string> events;
  std::vector<std::uint64_t> offered_sizes;
  std::string offered_first;
  void chunk(std::size_t segment, SharedBytes bytes) override {
    events.push_back(std::to_string(segment) + ":" + bytes.to_string());
  }
  void end() override { events.push_back("end"); }
  void abandon(const Status& why) override { events.push_back("abandon: " + why.message()); }
};

// Feeds a byte stream frame by frame, as a connection reads it: the messages it completes, in
// order, or the first error. An offer to stream is answered with `sink` (null: declined).
StatusOr<std::vector<Message>> feed(MessageAssembler& assembler, const std::string& stream,
                                    std::shared_ptr<RecordingSink> sink = nullptr) {
  std::vector<Message> out;
  std::size_t at = 0;
  while (at < stream.size()) {
    if (stream.size() - at < kFrameHeaderBytes) return data_loss("test stream ends inside a header");
    std::array<std::byte, kFrameHeaderBytes> header;
    std::memcpy(header.data(), stream.data() + at, header.size());
    at += header.size();
    TESTUDO_ASSIGN_OR_RETURN(std::span<std::byte> to, assembler.begin_frame(header));
    if (stream.size() - at < to.size()) return data_loss("test stream ends inside a payload");
    if (!to.empty()) std::memcpy(to.data(), stream.data() + at, to.size());
    at += to.size();
    TESTUDO_ASSIGN_OR_RETURN(std::optional<Message> done, assembler.end_frame());
    if (done) out.push_back(std::move(*done));
    if (const Message* first = assembler.offer()) {
      if (sink) {
        sink->offered_sizes = assembler.offer_sizes();
        sink->offered_first = first->segments.at(0).to_string();
      }
      assembler.answer_offer(sink);
    }
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
      {"abandoning outside a message", abandoning_frame(), "outside a message in progress"},
      {"abandoning with a payload", push_begun + abandoning_frame(3), "empty data frame"},
      {"abandoning an overtaker",
       push_begun + head(of(MessageKind::kQueueStatus), one, true) + abandoning_frame(), "outside a message in progress"},
      {"abandoning and overtaking", push_begun + abandoning_frame(0, true), "empty data frame"},
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

// A relay's reading side: the rest of a large message goes to its sink frame by frame.
TEST(AssemblerTest, ALargeMessageIsOfferedAfterItsFirstSegmentAndItsRestStreamsToTheSink) {
  MessageAssembler assembler{Limits{}};
  assembler.offer_streams(1000);
  const std::string big(2500, 'b');
  Envelope push = of(MessageKind::kPush);
  push.targets = {3};
  const std::vector<SharedBytes> segments{SharedBytes::copy_of(std::string_view("names")), SharedBytes::copy_of(big),
                                          SharedBytes(), SharedBytes::copy_of(std::string_view("tail"))};
  auto sink = std::make_shared<RecordingSink>();
  const std::string stream = head(push, segments) + data_frame("names") + data_frame(big.substr(0, 1000)) +
                             head(of(MessageKind::kHeartbeat), {}, true) + data_frame(big.substr(1000)) +
                             data_frame("ta") + data_frame("il") + head(of(MessageKind::kHeartbeat), {});
  auto got = feed(assembler, stream, sink);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  // The overtaking heartbeat and the one after: the push itself never arrives whole.
  ASSERT_EQ(got->size(), 2u);
  EXPECT_EQ((*got)[0].envelope.kind, MessageKind::kHeartbeat);
  EXPECT_EQ(sink->offered_first, "names");
  EXPECT_EQ(sink->offered_sizes, (std::vector<std::uint64_t>{5, 2500, 0, 4}));
  EXPECT_EQ(sink->events, (std::vector<std::string>{"1:" + big.substr(0, 1000), "1:" + big.substr(1000), "3:ta",
                                                    "3:il", "end"}));
  EXPECT_FALSE(assembler.in_message());
}

TEST(AssemblerTest, ADeclinedOfferOrASmallMessageIsAssembledWhole) {
  const std::string big(1500, 'b');
  const std::vector<SharedBytes> segments{SharedBytes::copy_of(std::string_view("f")), SharedBytes::copy_of(big)};
  const std::string stream = head(of(MessageKind::kApply), segments) + data_frame("f") + data_frame(big);
  for (std::uint64_t from : {std::uint64_t{1000}, std::uint64_t{1501}}) {
    MessageAssembler assembler{Limits{}};
    assembler.offer_streams(from);
    auto got = feed(assembler, stream, nullptr);
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    ASSERT_EQ(got->size(), 1u);
    EXPECT_EQ((*got)[0].segments.at(1).to_string(), big);
  }
  MessageAssembler offering{Limits{}};
  offering.offer_streams(1000);
  auto none = feed(offering, head(of(MessageKind::kApply), segments) + data_frame("f"), nullptr);
  ASSERT_TRUE(none.ok());
  std::array<std::byte, kFrameHeaderBytes> header{};
  MessageAssembler unanswered{Limits{}};
  unanswered.offer_streams(1000);
  ASSERT_TRUE(feed(unanswered, head(of(MessageKind::kApply), segments)).ok());
  // The head alone completes no first segment yet... then "f" does, and the offer stands.
  std::string f = data_frame("f");
  std::memcpy(header.data(), f.data(), header.size());
  ASSERT_TRUE(unanswered.begin_frame(header).ok());
  ASSERT_TRUE(unanswered.end_frame().ok());
  ASSERT_NE(unanswered.offer(), nullptr);
  EXPECT_EQ(unanswered.begin_frame(header).status().code(), StatusCode::kFailedPrecondition)
      << "no frame before the offer is answered";
}

TEST(AssemblerTest, AnAbandoningFrameDropsTheMessageInProgressOrTellsItsSink) {
  const std::string big(1500, 'b');
  const std::vector<SharedBytes> segments{SharedBytes::copy_of(std::string_view("f")), SharedBytes::copy_of(big)};
  const std::string cut = head(of(MessageKind::kApply), segments) + data_frame("f") + data_frame(big.substr(0, 700)) +
                          abandoning_frame() + head(of(MessageKind::kHeartbeat), {});
  MessageAssembler receiver{Limits{}};
  auto got = feed(receiver, cut);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  ASSERT_EQ(got->size(), 1u) << "only the heartbeat";
  EXPECT_EQ((*got)[0].envelope.kind, MessageKind::kHeartbeat);

  MessageAssembler relay{Limits{}};
  relay.offer_streams(1000);
  auto sink = std::make_shared<RecordingSink>();
  got = feed(relay, cut, sink);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  ASSERT_EQ(sink->events.size(), 2u);
  EXPECT_EQ(sink->events[1].rfind("abandon: ", 0), 0u) << sink->events[1];
}

TEST(AssemblerTest, AConnectionEndingMidStreamAbandonsItOnce) {
  MessageAssembler relay{Limits{}};
  relay.offer_streams(10);
  const std::vector<SharedBytes> segments{SharedBytes(), SharedBytes::copy_of(std::string(100, 'x'))};
  auto sink = std::make_shared<RecordingSink>();
  ASSERT_TRUE(feed(relay, head(of(MessageKind::kPush), segments) + data_frame(std::string(40, 'x')), sink).ok());
  ASSERT_NE(relay.stream(), nullptr);
  relay.abandon_stream(unavailable("connection closed"));
  relay.abandon_stream(unavailable("connection closed"));
  EXPECT_EQ(sink->events, (std::vector<std::string>{"1:" + std::string(40, 'x'), "abandon: connection closed"}));
  EXPECT_EQ(relay.stream(), nullptr);
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
