// The request outcome: names, wire numbers, the head codec's checks of the kind-dependent
// fields, the reply builders, and the Status that reports an outcome.
#include "testudo/outcome.h"

#include <gtest/gtest.h>

#include <set>

#include "wire/message.h"
#include "wire/reply.h"

namespace testudo::wire {
namespace {

// Offsets in the head payload: u16 kind | u16 flags | u16 outcome | ...
constexpr std::size_t kFlagsOffset = 2;
constexpr std::size_t kOutcomeOffset = 4;

void put_u16(std::vector<std::byte>& payload, std::size_t at, std::uint16_t v) {
  payload[at] = static_cast<std::byte>(v & 0xFF);
  payload[at + 1] = static_cast<std::byte>(v >> 8);
}

TEST(OutcomeTest, EveryValueHasOneNameAndItsNumber) {
  std::set<std::string_view> names;
  std::uint16_t expected = 0;
  for (Outcome o : kAllOutcomes) {
    EXPECT_EQ(static_cast<std::uint16_t>(o), expected++) << "kAllOutcomes is in numeric order, without gaps";
    std::string_view name = outcome_name(o);
    EXPECT_NE(name, "unknown");
    EXPECT_TRUE(names.insert(name).second) << name;
    EXPECT_EQ(outcome_from_number(static_cast<std::uint16_t>(o)), o);
  }
  EXPECT_EQ(outcome_from_number(expected), std::nullopt);
  EXPECT_EQ(outcome_from_number(0xFFFF), std::nullopt);
  EXPECT_EQ(outcome_name(static_cast<Outcome>(0x7777)), "unknown");
}

TEST(OutcomeTest, WireNumbersAreStable) {
  // Peers of other builds read these numbers: they never change.
  EXPECT_EQ(static_cast<int>(Outcome::kOk), 0);
  EXPECT_EQ(static_cast<int>(Outcome::kNoSuchEngine), 1);
  EXPECT_EQ(static_cast<int>(Outcome::kEngineDied), 2);
  EXPECT_EQ(static_cast<int>(Outcome::kNotAllowed), 3);
  EXPECT_EQ(static_cast<int>(Outcome::kShuttingDown), 4);
  EXPECT_EQ(static_cast<int>(Outcome::kAborted), 5);
  EXPECT_EQ(static_cast<int>(Outcome::kDependencyFailed), 6);
  EXPECT_EQ(static_cast<int>(Outcome::kDependencyTimeout), 7);
  EXPECT_EQ(static_cast<int>(Outcome::kUnreachable), 8);
  EXPECT_EQ(static_cast<int>(Outcome::kNoSuchTask), 9);
  EXPECT_EQ(static_cast<int>(Outcome::kLost), 10);
  EXPECT_EQ(static_cast<int>(Outcome::kAwaitingTrust), 11);
  EXPECT_EQ(static_cast<int>(Outcome::kPythonError), 12);
  EXPECT_EQ(static_cast<int>(Outcome::kTooLarge), 13);
  EXPECT_EQ(static_cast<int>(Outcome::kInvalidRequest), 14);
  EXPECT_EQ(static_cast<int>(Outcome::kNotFound), 15);
  EXPECT_EQ(static_cast<int>(Outcome::kControllerFailed), 16);
  EXPECT_EQ(static_cast<int>(Outcome::kConnectionLost), 17);
  EXPECT_EQ(static_cast<int>(Outcome::kMalformedReply), 18);
  EXPECT_EQ(static_cast<int>(Outcome::kSealBroken), 19);
}

TEST(OutcomeTest, EveryTravellingValueRoundTripsThroughTheHead) {
  for (Outcome o : kAllOutcomes) {
    if (is_local(o)) continue;
    Message m = task_reply(o, {.request_id = 7, .task_id = 8, .engine_id = 2, .client_id = 3}, "why");
    auto payload = encode_head(m.envelope, m.segments);
    auto head = decode_head(payload, Limits{});
    ASSERT_TRUE(head.ok()) << outcome_name(o) << ": " << head.status().to_string();
    EXPECT_EQ(head->envelope.outcome(), o);
    EXPECT_EQ(head->envelope, m.envelope);
  }
}

TEST(OutcomeTest, UnknownAndLocalOutcomesFromTheNetworkAreMalformed) {
  Message m = task_reply(Outcome::kOk, {.request_id = 1});
  auto payload = encode_head(m.envelope, m.segments);
  for (std::uint32_t number : {20u, 200u, 0x8000u, 0xFFFFu}) {
    auto bad = payload;
    put_u16(bad, kOutcomeOffset, static_cast<std::uint16_t>(number));
    auto head = decode_head(bad, Limits{});
    EXPECT_EQ(head.status().code(), StatusCode::kDataLoss) << number;
    EXPECT_NE(head.status().message().find("unknown outcome"), std::string::npos) << head.status().to_string();
  }
  for (Outcome local : kAllOutcomes) {
    if (!is_local(local)) continue;
    auto bad = payload;
    put_u16(bad, kOutcomeOffset, static_cast<std::uint16_t>(local));
    EXPECT_EQ(decode_head(bad, Limits{}).status().code(), StatusCode::kDataLoss) << outcome_name(local);
  }
}

TEST(OutcomeTest, OnlyAnswersCarryAnOutcome) {
  Envelope request;
  request.kind = MessageKind::kExecute;
  auto payload = encode_head(request, {});
  put_u16(payload, kOutcomeOffset, static_cast<std::uint16_t>(Outcome::kEngineDied));
  EXPECT_EQ(decode_head(payload, Limits{}).status().code(), StatusCode::kDataLoss);

  for (MessageKind kind : {MessageKind::kRejected, MessageKind::kKeyAdminReply, MessageKind::kDbQueryReply,
                           MessageKind::kPurgeResultsReply, MessageKind::kEngineListReply}) {
    EXPECT_TRUE(carries_outcome(kind)) << kind_name(kind);
  }
  EXPECT_FALSE(carries_outcome(MessageKind::kTaskOutput));
  EXPECT_FALSE(carries_outcome(MessageKind::kSubmitted));
}

TEST(EnvelopeFlagsTest, TypedAccessorsRoundTrip) {
  Envelope e;
  e.kind = MessageKind::kExecute;
  e.set_display_result(true);
  e.set_load_balanced(true);
  EXPECT_TRUE(e.display_result());
  EXPECT_TRUE(e.load_balanced());
  EXPECT_EQ(e.forwarded_flags() & 0x8000, 0);
  Envelope forwarded;
  forwarded.kind = MessageKind::kExecute;
  forwarded.set_forwarded_flags(e.forwarded_flags());
  EXPECT_TRUE(forwarded.display_result());
  EXPECT_FALSE(forwarded.load_balanced());
  e.set_display_result(false);
  EXPECT_FALSE(e.display_result());
  EXPECT_TRUE(e.load_balanced());

  Envelope push;
  push.kind = MessageKind::kPull;
  push.set_load_balanced(true);
  push.set_value_format(ValueFormat::kLiteral);
  EXPECT_EQ(push.value_format(), ValueFormat::kLiteral);
  EXPECT_TRUE(push.load_balanced());
  auto head = decode_head(encode_head(push, {}), Limits{});
  ASSERT_TRUE(head.ok()) << head.status().to_string();
  EXPECT_EQ(head->envelope.value_format(), ValueFormat::kLiteral);

  Envelope chunk;
  chunk.kind = MessageKind::kTaskOutput;
  chunk.set_output_stream(OutputStream::kStderr);
  head = decode_head(encode_head(chunk, {}), Limits{});
  ASSERT_TRUE(head.ok()) << head.status().to_string();
  EXPECT_EQ(head->envelope.output_stream(), OutputStream::kStderr);
}

TEST(EnvelopeFlagsTest, FlagsAKindDoesNotHaveAreMalformed) {
  struct Case {
    MessageKind kind;
    std::uint16_t flags;
    bool valid;
  };
  for (const Case& c : {Case{MessageKind::kExecute, 0x8001, true}, Case{MessageKind::kExecute, 2, false},
                        Case{MessageKind::kPush, 1, true}, Case{MessageKind::kPush, 2, false},
                        Case{MessageKind::kPull, 0x8001, true}, Case{MessageKind::kApply, 0x8000, true},
                        Case{MessageKind::kApply, 1, false}, Case{MessageKind::kTaskOutput, 1, true},
                        Case{MessageKind::kTaskOutput, 2, true}, Case{MessageKind::kTaskOutput, 0, false},
                        Case{MessageKind::kTaskOutput, 3, false}, Case{MessageKind::kTaskReply, 0x8000, false},
                        Case{MessageKind::kHeartbeat, 1, false}}) {
    Envelope e;
    e.kind = c.kind;
    auto payload = encode_head(e, {});
    put_u16(payload, kFlagsOffset, c.flags);
    EXPECT_EQ(decode_head(payload, Limits{}).ok(), c.valid) << kind_name(c.kind) << " flags " << c.flags;
  }
}

TEST(ReplyBuilderTest, BuildsConsistentAnswers) {
  Envelope request;
  request.kind = MessageKind::kKeyAdmin;
  request.request_id = 41;

  Message ok = control_reply(MessageKind::kKeyAdminReply, request, 5, R"({"entries":[]})");
  EXPECT_EQ(ok.envelope.outcome(), Outcome::kOk);
  EXPECT_EQ(ok.envelope.request_id, 41u);
  EXPECT_EQ(ok.envelope.client_id, 5u);
  ASSERT_EQ(ok.segments.size(), 1u);
  EXPECT_EQ(ok.segments[0].to_string(), R"({"entries":[]})");

  Message refused = control_refusal(MessageKind::kKeyAdminReply, request, 5, Outcome::kNotFound, "no such key");
  EXPECT_EQ(refused.envelope.kind, MessageKind::kKeyAdminReply);
  EXPECT_EQ(refused.envelope.outcome(), Outcome::kNotFound);
  EXPECT_EQ(refused.envelope.text, "no such key");
  EXPECT_TRUE(refused.segments.empty());

  Message reply = task_reply(Outcome::kPythonError, {.request_id = 1, .task_id = 2, .engine_id = 3, .client_id = 4},
                             {}, {SharedBytes::copy_of("meta"), SharedBytes::copy_of(""), SharedBytes::copy_of("")});
  EXPECT_EQ(reply.envelope.kind, MessageKind::kTaskReply);
  EXPECT_EQ(reply.envelope.outcome(), Outcome::kPythonError);
  EXPECT_EQ(reply.envelope.task_id, 2u);
  EXPECT_EQ(reply.segments.size(), 3u);

  Message rejected = rejection(Outcome::kAwaitingTrust, "not trusted yet");
  EXPECT_EQ(rejected.envelope.kind, MessageKind::kRejected);
  EXPECT_EQ(rejected.envelope.outcome(), Outcome::kAwaitingTrust);
}

TEST(ReplyBuilderTest, ControllerFailuresMapToOutcomes) {
  EXPECT_EQ(failure_outcome(invalid_argument("unknown key action")), Outcome::kInvalidRequest);
  EXPECT_EQ(failure_outcome(not_found("no key matches")), Outcome::kNotFound);
  EXPECT_EQ(failure_outcome(permission_denied("revoked")), Outcome::kNotAllowed);
  EXPECT_EQ(failure_outcome(resource_exhausted("disk full")), Outcome::kControllerFailed);
  EXPECT_EQ(failure_outcome(unavailable("cannot write")), Outcome::kControllerFailed);
  EXPECT_EQ(failure_outcome(outcome_status(Outcome::kNoSuchTask, "gone")), Outcome::kNoSuchTask);
}

TEST(OutcomeStatusTest, StatusCarriesTheOutcomeAndItsCode) {
  EXPECT_TRUE(outcome_status(Outcome::kOk, "ignored").ok());
  for (Outcome o : kAllOutcomes) {
    if (o == Outcome::kOk) continue;
    Status st = outcome_status(o, "reason");
    EXPECT_FALSE(st.ok()) << outcome_name(o);
    EXPECT_EQ(st.code(), status_code(o)) << outcome_name(o);
    EXPECT_EQ(st.outcome(), o);
    EXPECT_EQ(st.with_context("context").outcome(), o) << "context keeps the outcome";
    EXPECT_EQ(outcome_status(o, "").message(), outcome_name(o)) << "an empty reason names the outcome";
  }
  EXPECT_EQ(status_code(Outcome::kDependencyTimeout), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(status_code(Outcome::kPythonError), StatusCode::kAborted);
  EXPECT_EQ(status_code(Outcome::kConnectionLost), StatusCode::kUnavailable);
  EXPECT_EQ(deadline_exceeded("a local timeout").outcome(), std::nullopt) << "a local timeout is no outcome";
}

}  // namespace
}  // namespace testudo::wire
