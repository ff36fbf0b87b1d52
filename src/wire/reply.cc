#include "wire/reply.h"

#include <cassert>
#include <utility>

namespace testudo::wire {

Message task_reply(Outcome outcome, const ReplyAddress& to, std::string reason, std::vector<SharedBytes> body) {
  assert(!is_local(outcome) && "a local outcome never travels");
  assert((body.empty() || outcome == Outcome::kOk || outcome == Outcome::kPythonError) &&
         "only a reply the engine wrote has a body");
  Message m;
  m.envelope.kind = MessageKind::kTaskReply;
  m.envelope.set_outcome(outcome);
  m.envelope.request_id = to.request_id;
  m.envelope.task_id = to.task_id;
  m.envelope.engine_id = to.engine_id;
  m.envelope.client_id = to.client_id;
  m.envelope.text = std::move(reason);
  m.segments = std::move(body);
  return m;
}

Message control_reply(MessageKind reply_kind, const Envelope& request, std::uint32_t client_id, std::string json) {
  Message m;
  m.envelope.kind = reply_kind;
  m.envelope.request_id = request.request_id;
  m.envelope.client_id = client_id;
  m.segments.push_back(SharedBytes::copy_of(json));
  return m;
}

Message control_refusal(MessageKind reply_kind, const Envelope& request, std::uint32_t client_id, Outcome outcome,
                        std::string reason) {
  assert(outcome != Outcome::kOk && !is_local(outcome));
  Message m;
  m.envelope.kind = reply_kind;
  m.envelope.set_outcome(outcome);
  m.envelope.request_id = request.request_id;
  m.envelope.client_id = client_id;
  m.envelope.text = std::move(reason);
  return m;
}

Message rejection(Outcome outcome, std::string reason) {
  assert(outcome == Outcome::kNotAllowed || outcome == Outcome::kAwaitingTrust || outcome == Outcome::kShuttingDown);
  Message m;
  m.envelope.kind = MessageKind::kRejected;
  m.envelope.set_outcome(outcome);
  m.envelope.text = std::move(reason);
  return m;
}

Outcome failure_outcome(const Status& failure) {
  if (failure.outcome()) return *failure.outcome();
  switch (failure.code()) {
    case StatusCode::kInvalidArgument: return Outcome::kInvalidRequest;
    case StatusCode::kNotFound: return Outcome::kNotFound;
    case StatusCode::kPermissionDenied: return Outcome::kNotAllowed;
    default: return Outcome::kControllerFailed;
  }
}

}  // namespace testudo::wire
