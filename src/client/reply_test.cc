// What the client makes of task and control replies: every outcome reaches EngineReply and
// the Status unchanged, the engine's metadata decides between ok and a Python error, and a
// malformed body is kMalformedReply, not a lost task.
#include "client/reply.h"

#include <gtest/gtest.h>

#include "wire/body.h"
#include "wire/reply.h"

namespace testudo::client {
namespace {

std::vector<SharedBytes> body(bool ok) {
  wire::ReplyMeta meta;
  meta.ok = ok;
  if (!ok) {
    meta.ename = "ZeroDivisionError";
    meta.evalue = "division by zero";
    meta.traceback = "Traceback...";
  }
  return {wire::encode_reply_meta(meta), SharedBytes::copy_of("out"), SharedBytes::copy_of("err"),
          SharedBytes::copy_of("value")};
}

// Through the codec, as the client's connection would hand it over.
wire::Message over_the_wire(wire::Message m) {
  auto head = wire::decode_head(wire::encode_head(m.envelope, m.segments), wire::Limits{});
  EXPECT_TRUE(head.ok()) << head.status().to_string();
  m.envelope = head->envelope;
  return m;
}

TEST(EngineReplyTest, EveryControllerOutcomeReachesTheReply) {
  for (Outcome o : kAllOutcomes) {
    if (o == Outcome::kOk || o == Outcome::kPythonError || is_local(o)) continue;
    EngineReply r = engine_reply(over_the_wire(wire::task_reply(o, {.request_id = 1, .task_id = 5, .engine_id = 2}, "why")));
    EXPECT_EQ(r.outcome, o) << outcome_name(o);
    EXPECT_EQ(r.status.outcome(), o);
    EXPECT_EQ(r.status.code(), status_code(o));
    EXPECT_EQ(r.status.message(), "why");
    EXPECT_EQ(r.engine_id, 2u);
    EXPECT_EQ(r.task_id, 5u);
    EXPECT_FALSE(r.remote_error);
  }
}

TEST(EngineReplyTest, TheEnginesMetadataDecidesOkOrPythonError) {
  EngineReply ok = engine_reply(over_the_wire(wire::task_reply(Outcome::kOk, {.engine_id = 1}, {}, body(true))));
  EXPECT_EQ(ok.outcome, Outcome::kOk);
  EXPECT_TRUE(ok.status.ok());
  EXPECT_EQ(ok.stdout_text, "out");
  EXPECT_EQ(ok.stderr_text, "err");
  ASSERT_EQ(ok.value.size(), 1u);

  for (Outcome said : {Outcome::kPythonError, Outcome::kOk}) {
    // A stored result may be forwarded as kOk; the engine's own metadata says it raised.
    EngineReply raised = engine_reply(over_the_wire(wire::task_reply(said, {.engine_id = 1}, {}, body(false))));
    EXPECT_EQ(raised.outcome, Outcome::kPythonError);
    EXPECT_EQ(raised.status.code(), StatusCode::kAborted);
    EXPECT_EQ(raised.status.outcome(), Outcome::kPythonError);
    ASSERT_TRUE(raised.remote_error);
    EXPECT_EQ(raised.remote_error->ename, "ZeroDivisionError");
    EXPECT_EQ(raised.stdout_text, "out");
  }
}

TEST(EngineReplyTest, AMalformedBodyIsAMalformedReply) {
  EngineReply missing = engine_reply(wire::task_reply(Outcome::kOk, {.engine_id = 3}, {}, {SharedBytes::copy_of("x")}));
  EXPECT_EQ(missing.outcome, Outcome::kMalformedReply);
  EXPECT_EQ(missing.status.code(), StatusCode::kDataLoss);
  auto garbage = body(true);
  garbage[0] = SharedBytes::copy_of("not metadata");
  EngineReply bad = engine_reply(wire::task_reply(Outcome::kPythonError, {.engine_id = 3}, {}, std::move(garbage)));
  EXPECT_EQ(bad.outcome, Outcome::kMalformedReply);
  EXPECT_NE(bad.status.message().find("engine 3"), std::string::npos) << bad.status.to_string();
}

TEST(EngineReplyTest, LocalOutcomes) {
  EngineReply lost = failed_reply(kAnyEngine, Outcome::kConnectionLost, "connection to the controller lost: eof");
  EXPECT_EQ(lost.outcome, Outcome::kConnectionLost);
  EXPECT_EQ(lost.status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(lost.engine_id, kAnyEngine);
}

TEST(ControlAnswerTest, FailuresCarryTheirOutcome) {
  wire::Envelope request;
  request.kind = wire::MessageKind::kDbQuery;
  request.request_id = 3;
  auto ok = control_answer(over_the_wire(wire::control_reply(wire::MessageKind::kDbQueryReply, request, 1, "{}")));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, "{}");
  for (Outcome o : {Outcome::kNotAllowed, Outcome::kInvalidRequest, Outcome::kNotFound, Outcome::kControllerFailed}) {
    auto failed = control_answer(
        over_the_wire(wire::control_refusal(wire::MessageKind::kDbQueryReply, request, 1, o, "the store failed")));
    ASSERT_FALSE(failed.ok());
    EXPECT_EQ(failed.status().outcome(), o);
    EXPECT_EQ(failed.status().code(), status_code(o));
    EXPECT_EQ(failed.status().message(), "the store failed");
  }
}

}  // namespace
}  // namespace testudo::client
