// What the client makes of the controller's answers: a task reply becomes an EngineReply whose
// outcome is read from the envelope (and, for replies the engine wrote, from the engine's own
// metadata); a control reply becomes its JSON text or an error that carries its outcome.
// Pure functions over messages: the client's network thread calls them, and so do tests.
#pragma once

#include <string>

#include "testudo/client.h"
#include "testudo/outcome.h"
#include "wire/message.h"

namespace testudo::client {

// A kTaskReply. kOk/kPythonError replies must carry the engine's body (wire/body.h); one that
// does not, or whose metadata does not decode, is kMalformedReply. The engine's metadata
// decides between kOk and kPythonError (the envelope is the controller's copy of it).
EngineReply engine_reply(wire::Message&& reply);

// The reply of a request that ended without an answer from the controller (a local outcome,
// or kTooLarge): `outcome`, and `reason` in its status.
EngineReply failed_reply(EngineId engine, Outcome outcome, std::string reason);

// A control reply (engine list, key administration, db query...): its JSON text when the
// outcome is kOk, else outcome_status(outcome, reason).
StatusOr<std::string> control_answer(wire::Message&& reply);

}  // namespace testudo::client
