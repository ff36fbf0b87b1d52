// Outcome: what became of one request, the same enum from the wire (Envelope of a task reply,
// a control reply or a rejection) through the C++ client (EngineReply::outcome, Status::outcome)
// to the Python exceptions (docs/tasks.md, "Outcomes and errors", has the table).
//
// The numbers are the wire encoding: never renumber a value, add new ones at the end. The
// values marked "local" are decided by the client itself and never travel; a peer that sends
// one, or a number this build does not know, sends a malformed message (wire/message.h).
//
// A local timeout of the waiting side (AsyncResult::get/wait, Python's get(timeout=...)) is not
// an outcome: the request goes on, and the caller gets kDeadlineExceeded / TimeoutError.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "testudo/status.h"

namespace testudo {

enum class Outcome : std::uint16_t {
  // The engine ran the request and it succeeded; the reply carries its value and output.
  kOk = 0,
  // The request named an engine that is not registered (a direct request to engine 9 of 4).
  kNoSuchEngine = 1,
  // The engine holding the task died or disconnected before it answered (the task may or may
  // not have run, partly or fully), and no retry was left or possible.
  kEngineDied = 2,
  // The controller's policy does not let this identity do this operation (on these engines).
  kNotAllowed = 3,
  // The controller is shutting down: the task was refused or could not finish (on a
  // rejected connection: try again later, another controller may be up by then).
  kShuttingDown = 4,
  // The task was aborted (Client::abort) while queued or waiting; it never ran.
  kAborted = 5,
  // A dependency (`after`/`follow`) failed, is unknown, or the followed tasks ran on different
  // engines: the task can never run, and never ran (ipyparallel's ImpossibleDependency).
  kDependencyFailed = 6,
  // The task's `timeout` passed before its dependencies were met; it never ran.
  kDependencyTimeout = 7,
  // No registered engine may run the task (its allowed engines are gone, or the engines it must
  // follow are outside them); it never ran.
  kUnreachable = 8,
  // get_result of a task id that is unknown, purged, or another identity's (the three look the same).
  kNoSuchTask = 9,
  // The controller stopped before the task finished; found so after its restart. It may or
  // may not have run.
  kLost = 10,
  // Rejected connections only: this identity is not trusted yet; an administrator may accept
  // it, so an engine waits and retries.
  kAwaitingTrust = 11,
  // The engine ran the user's code and it raised; the reply carries the exception's name,
  // text and traceback (ReplyMeta) and the output.
  kPythonError = 12,
  // The request is larger than the protocol allows (segments or bytes, wire::Limits); it was
  // not sent.
  kTooLarge = 13,
  // A control request the controller could not make sense of: a malformed key-administration
  // request, an unknown action, something that is not a fingerprint.
  kInvalidRequest = 14,
  // A control request named something that does not exist (a key no trust entry matches).
  // Tasks and engines have their own values (kNoSuchTask, kNoSuchEngine).
  kNotFound = 15,
  // The controller failed while doing a control request: its task store or trust directory
  // could not be read or written (disk full, I/O error). The reason says which.
  kControllerFailed = 16,
  // Local. The connection to the controller dropped (or the client was closed) with the
  // request in flight, or there was no connection to send it on. The task may still run:
  // its result can be fetched by task id once connected again.
  kConnectionLost = 17,
  // Local. The reply arrived but could not be decoded (a truncated or malformed body).
  kMalformedReply = 18,
  // Local. End-to-end sealing did not hold (docs/security.md, "End-to-end sealing"): a
  // sealed request could not be sealed for its engine (one this client cannot verify), or
  // its reply was not sealed, did not open, or was sealed for another request or engine —
  // the controller or a relay altered, replayed or forged it. The reason says which.
  kSealBroken = 19,
};

// Every value, in numeric order: for tables, tests and bindings.
inline constexpr Outcome kAllOutcomes[] = {
    Outcome::kOk,           Outcome::kNoSuchEngine,      Outcome::kEngineDied,      Outcome::kNotAllowed,
    Outcome::kShuttingDown, Outcome::kAborted,           Outcome::kDependencyFailed, Outcome::kDependencyTimeout,
    Outcome::kUnreachable,  Outcome::kNoSuchTask,        Outcome::kLost,            Outcome::kAwaitingTrust,
    Outcome::kPythonError,  Outcome::kTooLarge,          Outcome::kInvalidRequest,  Outcome::kNotFound,
    Outcome::kControllerFailed, Outcome::kConnectionLost, Outcome::kMalformedReply, Outcome::kSealBroken,
};

// "ok", "python_error", "engine_died", ...: stable, lower case, for logs and messages.
std::string_view outcome_name(Outcome outcome);

// The value with this wire number, or nothing for a number this build does not know.
std::optional<Outcome> outcome_from_number(std::uint16_t number);

// Decided by the client itself; never on the wire.
bool is_local(Outcome outcome);

// The canonical code under which a Status reports `outcome`, for callers that only look at
// codes (several outcomes share one; Status::outcome() tells them apart):
//   kOk -> kOk; kPythonError -> kAborted; kAborted -> kCancelled;
//   kNoSuchEngine, kNoSuchTask, kNotFound -> kNotFound; kNotAllowed -> kPermissionDenied;
//   kEngineDied, kShuttingDown, kConnectionLost -> kUnavailable;
//   kDependencyFailed, kUnreachable, kAwaitingTrust -> kFailedPrecondition;
//   kDependencyTimeout -> kDeadlineExceeded; kLost, kMalformedReply -> kDataLoss;
//   kSealBroken -> kPermissionDenied;
//   kTooLarge -> kResourceExhausted; kInvalidRequest -> kInvalidArgument; kControllerFailed -> kInternal.
StatusCode status_code(Outcome outcome);

// The Status that reports `outcome` (OK for kOk): status_code(outcome), `message`, and the
// outcome itself (Status::outcome()).
Status outcome_status(Outcome outcome, std::string message);

}  // namespace testudo
