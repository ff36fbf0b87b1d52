// Builders of the messages that answer a request: task replies, control replies, refusals and
// rejections. The controller, the engine and the tests build answers only through these, so
// the outcome and the body agree (message.h says which outcome may come with which kind).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "testudo/outcome.h"
#include "testudo/status.h"
#include "wire/message.h"

namespace testudo::wire {

// Where a task reply goes and what it answers.
struct ReplyAddress {
  std::uint64_t request_id = 0;  // the client's request
  std::uint64_t task_id = 0;     // the controller's task (0 while none was made)
  std::uint32_t engine_id = 0;   // where it ran or was meant to run (kAnyEngine: not placed)
  std::uint32_t client_id = 0;
};

// A kTaskReply. With kOk or kPythonError, `body` is the engine's [meta, stdout, stderr,
// value...] (body.h); with any other outcome the body is empty and `reason` says why.
Message task_reply(Outcome outcome, const ReplyAddress& to, std::string reason = {},
                   std::vector<SharedBytes> body = {});

// The answer of kind `reply_kind` to a control request that was carried out: segments [json].
Message control_reply(MessageKind reply_kind, const Envelope& request, std::uint32_t client_id, std::string json);

// The answer of kind `reply_kind` to a control request that was refused or failed: `outcome`
// (not kOk), the reason in text, no segments.
Message control_refusal(MessageKind reply_kind, const Envelope& request, std::uint32_t client_id, Outcome outcome,
                        std::string reason);

// kRejected: the connection is refused (kNotAllowed), not yet (kAwaitingTrust), or not now
// (kShuttingDown: the controller is on its way out); it closes.
Message rejection(Outcome outcome, std::string reason);

// The outcome under which the controller reports a control request it could not carry out,
// from its own error: the error's outcome if it has one; kInvalidArgument -> kInvalidRequest,
// kNotFound -> kNotFound, kPermissionDenied -> kNotAllowed; anything else (disk, I/O, store)
// -> kControllerFailed.
Outcome failure_outcome(const Status& failure);

}  // namespace testudo::wire
