#include "wire/message.h"

#include <gtest/gtest.h>

#include "wire/byte_io.h"

namespace testudo::wire {
namespace {

std::array<std::byte, kFrameHeaderBytes> header_bytes(FrameType type, std::uint32_t length) {
  return encode_frame_header({type, length});
}

TEST(FrameHeaderTest, RoundTrips) {
  auto bytes = header_bytes(FrameType::kData, 4096);
  auto h = decode_frame_header(bytes, Limits{});
  ASSERT_TRUE(h.ok()) << h.status().to_string();
  EXPECT_EQ(h->type, FrameType::kData);
  EXPECT_EQ(h->length, 4096u);
}

TEST(FrameHeaderTest, RejectsBadMagicVersionTypeFlags) {
  auto bytes = header_bytes(FrameType::kHead, 10);
  auto bad = bytes;
  bad[0] = std::byte{'X'};
  EXPECT_EQ(decode_frame_header(bad, Limits{}).status().code(), StatusCode::kDataLoss);
  bad = bytes;
  bad[4] = std::byte{2};
  EXPECT_NE(decode_frame_header(bad, Limits{}).status().message().find("version"), std::string::npos);
  bad = bytes;
  bad[5] = std::byte{9};
  EXPECT_FALSE(decode_frame_header(bad, Limits{}).ok());
  bad = bytes;
  bad[6] = std::byte{4};  // bits 0 and 1 are the overtaking and abandoning flags
  EXPECT_FALSE(decode_frame_header(bad, Limits{}).ok());
  bad = bytes;
  bad[7] = std::byte{1};
  EXPECT_FALSE(decode_frame_header(bad, Limits{}).ok());
}

TEST(FrameHeaderTest, AbandoningFlagRoundTripsAsBitOne) {
  auto bytes = encode_frame_header({FrameType::kData, 0, /*overtaking=*/false, /*abandons=*/true});
  EXPECT_EQ(bytes[6], std::byte{2});
  EXPECT_EQ(bytes[7], std::byte{0});
  auto h = decode_frame_header(bytes, Limits{});
  ASSERT_TRUE(h.ok()) << h.status().to_string();
  EXPECT_TRUE(h->abandons);
  EXPECT_FALSE(h->overtaking);
  EXPECT_FALSE(decode_frame_header(encode_frame_header({FrameType::kData, 5}), Limits{})->abandons);
}

TEST(FrameHeaderTest, OvertakingFlagRoundTripsAsBitZero) {
  auto bytes = encode_frame_header({FrameType::kData, 77, /*overtaking=*/true});
  EXPECT_EQ(bytes[6], std::byte{1});
  EXPECT_EQ(bytes[7], std::byte{0});
  auto h = decode_frame_header(bytes, Limits{});
  ASSERT_TRUE(h.ok()) << h.status().to_string();
  EXPECT_TRUE(h->overtaking);
  EXPECT_EQ(h->type, FrameType::kData);
  EXPECT_EQ(h->length, 77u);
  EXPECT_FALSE(decode_frame_header(encode_frame_header({FrameType::kHead, 5}), Limits{})->overtaking);
}

// Only kinds whose effect does not depend on what came before them may overtake: never a task
// request, reply, output chunk, abort or shutdown (their order on a connection is their meaning).
TEST(MessageKindTest, OnlyOrderFreeKindsMayOvertake) {
  for (MessageKind k : {MessageKind::kHeartbeat, MessageKind::kHeartbeatAck, MessageKind::kInterrupt,
                        MessageKind::kEngineInterrupt, MessageKind::kQueueStatus, MessageKind::kClusterStatus,
                        MessageKind::kEngineList}) {
    EXPECT_TRUE(may_overtake(k)) << kind_name(k);
  }
  for (MessageKind k : {MessageKind::kExecute, MessageKind::kPush, MessageKind::kPull, MessageKind::kApply,
                        MessageKind::kTaskReply, MessageKind::kTaskOutput, MessageKind::kSubmitted,
                        MessageKind::kAbort, MessageKind::kEngineAbort, MessageKind::kEngineShutdown,
                        MessageKind::kClusterShutdown, MessageKind::kHello, MessageKind::kWelcome,
                        MessageKind::kRejected, MessageKind::kLoginStep, MessageKind::kEngineInfo,
                        MessageKind::kGetResult, MessageKind::kPurgeResults, MessageKind::kKeyAdmin}) {
    EXPECT_FALSE(may_overtake(k)) << kind_name(k);
  }
}

TEST(FrameHeaderTest, HugeLengthRejectedBeforeAllocation) {
  auto bytes = header_bytes(FrameType::kHead, 0xFFFFFFFFu);
  EXPECT_EQ(decode_frame_header(bytes, Limits{}).status().code(), StatusCode::kResourceExhausted);
  // Before authentication even a modest head is too large.
  bytes = header_bytes(FrameType::kHead, (16u << 10) + 1);
  EXPECT_EQ(decode_frame_header(bytes, Limits::pre_auth()).status().code(), StatusCode::kResourceExhausted);
}

TEST(HeadTest, RoundTripsEveryField) {
  Envelope e;
  e.kind = MessageKind::kPush;
  e.set_value_format(ValueFormat::kLiteral);
  e.set_load_balanced(true);
  e.request_id = 0x1122334455667788ull;
  e.task_id = 42;
  e.client_id = 7;
  e.engine_id = 9;
  e.targets = {0, 2, 4};
  e.text = "hello";
  std::vector<SharedBytes> segs{SharedBytes::copy_of("abc"), SharedBytes::allocate(0)};
  auto payload = encode_head(e, segs);
  auto h = decode_head(payload, Limits{});
  ASSERT_TRUE(h.ok()) << h.status().to_string();
  EXPECT_EQ(h->envelope, e);
  EXPECT_EQ(h->segment_sizes, (std::vector<std::uint64_t>{3, 0}));
}

TEST(HeadTest, TheSealedBitIsForTaskRequestsOnly) {
  Envelope e;
  e.kind = MessageKind::kPull;
  e.set_sealed(true);
  e.set_value_format(ValueFormat::kLiteral);
  e.set_load_balanced(true);
  EXPECT_TRUE(e.sealed());
  EXPECT_EQ(e.value_format(), ValueFormat::kLiteral);  // the bits do not mix
  EXPECT_EQ(e.kind_flags(), static_cast<std::uint16_t>(ValueFormat::kLiteral));
  auto h = decode_head(encode_head(e, {}), Limits{});
  ASSERT_TRUE(h.ok()) << h.status().to_string();
  EXPECT_TRUE(h->envelope.sealed());
  EXPECT_EQ(h->envelope.value_format(), ValueFormat::kLiteral);
  // On any other kind the bit is a malformed head, not a guess.
  Envelope heartbeat;
  heartbeat.kind = MessageKind::kHeartbeat;
  auto plain = encode_head(heartbeat, {});
  // The flags are the u16 after kind (u16): set bit 14 in a heartbeat's head.
  plain[3] = static_cast<std::byte>(0x40);
  EXPECT_FALSE(decode_head(plain, Limits{}).ok());
}

// Decodes a head of `kind` with `flags` set (and nothing else but what the kind needs).
bool decodes_with_flags(MessageKind kind, std::uint16_t flags) {
  Envelope e;
  e.kind = kind;
  auto payload = encode_head(e, {});
  // The flags are the u16 after kind (u16), little-endian.
  payload[2] = static_cast<std::byte>(flags & 0xff);
  payload[3] = static_cast<std::byte>(flags >> 8);
  return decode_head(payload, Limits{}).ok();
}

TEST(HeadTest, TheBulkBitIsForSealedRequestsAndTaskRepliesOnly) {
  constexpr std::uint16_t kBalanced = 0x8000, kSealed = 0x4000, kBulk = 0x2000;
  Envelope e;
  e.kind = MessageKind::kApply;
  e.set_sealed(true);
  e.set_bulk(true);
  e.set_load_balanced(true);
  auto h = decode_head(encode_head(e, {}), Limits{});
  ASSERT_TRUE(h.ok()) << h.status().to_string();
  EXPECT_TRUE(h->envelope.bulk());
  EXPECT_TRUE(h->envelope.load_balanced());
  for (MessageKind kind : {MessageKind::kExecute, MessageKind::kPush, MessageKind::kApply}) {
    EXPECT_TRUE(decodes_with_flags(kind, kSealed | kBulk)) << static_cast<int>(kind);
    EXPECT_TRUE(decodes_with_flags(kind, kBalanced | kSealed | kBulk)) << static_cast<int>(kind);
    EXPECT_FALSE(decodes_with_flags(kind, kBulk)) << "bulk bodies are sealed ones";
    EXPECT_FALSE(decodes_with_flags(kind, kBalanced | kBulk));
  }
  EXPECT_FALSE(decodes_with_flags(MessageKind::kPull, kSealed | kBulk)) << "a pull sends no body";
  EXPECT_TRUE(decodes_with_flags(MessageKind::kTaskReply, kBulk));
  EXPECT_FALSE(decodes_with_flags(MessageKind::kTaskReply, kSealed | kBulk));
  EXPECT_FALSE(decodes_with_flags(MessageKind::kHeartbeat, kBulk));
  EXPECT_FALSE(decodes_with_flags(MessageKind::kBulkTicket, kBulk));
}

TEST(HeadTest, EveryTruncationIsAnError) {
  Envelope e;
  e.kind = MessageKind::kExecute;
  e.targets = {1, 2};
  e.text = "xyz";
  std::vector<SharedBytes> segs{SharedBytes::copy_of("code")};
  auto payload = encode_head(e, segs);
  for (std::size_t n = 0; n < payload.size(); ++n) {
    EXPECT_FALSE(decode_head(std::span(payload).first(n), Limits{}).ok()) << "prefix " << n;
  }
  payload.push_back(std::byte{0});
  EXPECT_FALSE(decode_head(payload, Limits{}).ok());
}

TEST(HeadTest, RejectsUnknownKindAndOversizedBody) {
  Envelope e;
  e.kind = MessageKind::kApply;
  auto payload = encode_head(e, {});
  payload[0] = std::byte{0xEE};
  EXPECT_FALSE(decode_head(payload, Limits{}).ok());

  std::vector<SharedBytes> segs{SharedBytes::allocate(10)};
  payload = encode_head(e, segs);
  Limits small;
  small.max_message_bytes = 9;
  EXPECT_EQ(decode_head(payload, small).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(decode_head(payload, Limits::pre_auth()).status().code(), StatusCode::kResourceExhausted);
}

TEST(HeadTest, HugeCountsDoNotAllocate) {
  ByteWriter w;
  w.u16(static_cast<std::uint16_t>(MessageKind::kExecute));
  w.u16(0);
  w.u16(0);
  w.u64(1);
  w.u64(0);
  w.u32(0);
  w.u32(0);
  w.u32(0xFFFFFFFFu);  // claims four billion targets in a 40-byte head
  auto st = decode_head(w.buffer(), Limits{});
  EXPECT_EQ(st.status().code(), StatusCode::kDataLoss);
}

TEST(HeadTest, CheckOutgoingAgreesWithTheReceiver) {
  Envelope e;
  e.kind = MessageKind::kApply;
  e.set_load_balanced(true);
  e.targets = {1, 2, 3};
  e.text = std::string(100, 'o');
  std::vector<SharedBytes> segs{SharedBytes::allocate(10), SharedBytes::allocate(5)};
  const std::size_t head_bytes = encode_head(e, segs).size();
  for (std::uint32_t max_head : {std::uint32_t(head_bytes), std::uint32_t(head_bytes - 1)}) {
    for (std::uint64_t max_body : {std::uint64_t{15}, std::uint64_t{14}}) {
      for (std::uint32_t max_segments : {2u, 1u}) {
        Limits limits;
        limits.max_head_bytes = max_head;
        limits.max_message_bytes = max_body;
        limits.max_segments = max_segments;
        const bool received = decode_head(encode_head(e, segs), limits).ok();
        Status sent = check_outgoing(e, segs, limits);
        EXPECT_EQ(sent.ok(), received) << max_head << " " << max_body << " " << max_segments << " " << sent.to_string();
        if (!sent.ok()) {
          EXPECT_EQ(sent.code(), StatusCode::kResourceExhausted);
        }
      }
    }
  }
}

TEST(AllowlistTest, RolesAreKeptApart) {
  EXPECT_TRUE(is_allowed_after_auth(Role::kClient, MessageKind::kExecute));
  EXPECT_FALSE(is_allowed_after_auth(Role::kClient, MessageKind::kTaskReply));
  EXPECT_FALSE(is_allowed_after_auth(Role::kClient, MessageKind::kHello));
  EXPECT_FALSE(is_allowed_after_auth(Role::kEngine, MessageKind::kExecute));
  EXPECT_FALSE(is_allowed_after_auth(Role::kEngine, MessageKind::kClusterShutdown));
  EXPECT_TRUE(is_allowed_after_auth(Role::kEngine, MessageKind::kTaskReply));
  EXPECT_FALSE(is_allowed_after_auth(Role::kController, MessageKind::kHello));
}

}  // namespace
}  // namespace testudo::wire
