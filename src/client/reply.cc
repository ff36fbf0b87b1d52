#include "client/reply.h"

#include <iterator>
#include <utility>

#include "wire/body.h"

namespace testudo::client {

EngineReply failed_reply(EngineId engine, Outcome outcome, std::string reason) {
  EngineReply r;
  r.engine_id = engine;
  r.outcome = outcome;
  r.status = outcome_status(outcome, std::move(reason));
  return r;
}

EngineReply engine_reply(wire::Message&& m) {
  const Outcome said = m.envelope.outcome();
  if (said != Outcome::kOk && said != Outcome::kPythonError) {
    EngineReply r = failed_reply(m.envelope.engine_id, said, std::move(m.envelope.text));
    r.task_id = m.envelope.task_id;
    return r;
  }
  if (m.segments.size() < wire::kReplyFixedSegments) {
    EngineReply r = failed_reply(m.envelope.engine_id, Outcome::kMalformedReply,
                                 "malformed reply from engine " + std::to_string(m.envelope.engine_id) +
                                     ": no result metadata");
    r.task_id = m.envelope.task_id;
    return r;
  }
  auto meta = wire::decode_reply_meta(m.segments[0]);
  if (!meta.ok()) {
    EngineReply r = failed_reply(m.envelope.engine_id, Outcome::kMalformedReply,
                                 "malformed reply from engine " + std::to_string(m.envelope.engine_id) + ": " +
                                     meta.status().message());
    r.task_id = m.envelope.task_id;
    return r;
  }
  EngineReply r;
  r.engine_id = m.envelope.engine_id;
  r.task_id = m.envelope.task_id;
  r.stdout_text = m.segments[1].to_string();
  r.stderr_text = m.segments[2].to_string();
  r.started_us = meta->started_us;
  r.completed_us = meta->completed_us;
  r.value.assign(std::make_move_iterator(m.segments.begin() + wire::kReplyFixedSegments),
                 std::make_move_iterator(m.segments.end()));
  if (!meta->ok) {
    r.outcome = Outcome::kPythonError;
    r.status = outcome_status(Outcome::kPythonError, meta->ename + ": " + meta->evalue);
    r.remote_error = RemoteError{meta->ename, meta->evalue, meta->traceback};
  }
  return r;
}

StatusOr<std::string> control_answer(wire::Message&& m) {
  if (m.envelope.outcome() != Outcome::kOk) return outcome_status(m.envelope.outcome(), std::move(m.envelope.text));
  return m.segments.empty() ? std::string() : m.segments[0].to_string();
}

}  // namespace testudo::client
