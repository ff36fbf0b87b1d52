#include "testudo/outcome.h"

namespace testudo {

std::string_view outcome_name(Outcome outcome) {
  switch (outcome) {
    case Outcome::kOk: return "ok";
    case Outcome::kNoSuchEngine: return "no_such_engine";
    case Outcome::kEngineDied: return "engine_died";
    case Outcome::kNotAllowed: return "not_allowed";
    case Outcome::kShuttingDown: return "shutting_down";
    case Outcome::kAborted: return "aborted";
    case Outcome::kDependencyFailed: return "dependency_failed";
    case Outcome::kDependencyTimeout: return "dependency_timeout";
    case Outcome::kUnreachable: return "unreachable";
    case Outcome::kNoSuchTask: return "no_such_task";
    case Outcome::kLost: return "lost";
    case Outcome::kAwaitingTrust: return "awaiting_trust";
    case Outcome::kPythonError: return "python_error";
    case Outcome::kTooLarge: return "too_large";
    case Outcome::kInvalidRequest: return "invalid_request";
    case Outcome::kNotFound: return "not_found";
    case Outcome::kControllerFailed: return "controller_failed";
    case Outcome::kConnectionLost: return "connection_lost";
    case Outcome::kMalformedReply: return "malformed_reply";
    case Outcome::kSealBroken: return "seal_broken";
  }
  return "unknown";
}

std::optional<Outcome> outcome_from_number(std::uint16_t number) {
  // kAllOutcomes lists every value in numeric order, from 0 without gaps.
  constexpr std::size_t kCount = sizeof(kAllOutcomes) / sizeof(kAllOutcomes[0]);
  static_assert(static_cast<std::uint16_t>(kAllOutcomes[kCount - 1]) == kCount - 1);
  if (number >= kCount) return std::nullopt;
  return kAllOutcomes[number];
}

bool is_local(Outcome outcome) {
  return outcome == Outcome::kConnectionLost || outcome == Outcome::kMalformedReply || outcome == Outcome::kSealBroken;
}

StatusCode status_code(Outcome outcome) {
  switch (outcome) {
    case Outcome::kOk: return StatusCode::kOk;
    case Outcome::kPythonError: return StatusCode::kAborted;
    case Outcome::kAborted: return StatusCode::kCancelled;
    case Outcome::kNoSuchEngine:
    case Outcome::kNoSuchTask:
    case Outcome::kNotFound: return StatusCode::kNotFound;
    case Outcome::kNotAllowed:
    case Outcome::kSealBroken: return StatusCode::kPermissionDenied;
    case Outcome::kEngineDied:
    case Outcome::kShuttingDown:
    case Outcome::kConnectionLost: return StatusCode::kUnavailable;
    case Outcome::kDependencyFailed:
    case Outcome::kUnreachable:
    case Outcome::kAwaitingTrust: return StatusCode::kFailedPrecondition;
    case Outcome::kDependencyTimeout: return StatusCode::kDeadlineExceeded;
    case Outcome::kLost:
    case Outcome::kMalformedReply: return StatusCode::kDataLoss;
    case Outcome::kTooLarge: return StatusCode::kResourceExhausted;
    case Outcome::kInvalidRequest: return StatusCode::kInvalidArgument;
    case Outcome::kControllerFailed: return StatusCode::kInternal;
  }
  return StatusCode::kInternal;
}

Status outcome_status(Outcome outcome, std::string message) {
  if (outcome == Outcome::kOk) return ok_status();
  if (message.empty()) message = std::string(outcome_name(outcome));
  return Status(status_code(outcome), std::move(message), outcome);
}

}  // namespace testudo
