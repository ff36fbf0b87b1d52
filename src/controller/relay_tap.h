// A test build's hand in the hub's data path (docs/e2e-design.md "Tests"): the hostile
// controller of tests/hostile_controller.cc installs one to record, alter, replay, re-target
// and swap what the real hub relays, as a compromised controller could, so the tests can show
// that clients and engines notice. The shipped binaries never install one: nothing in them
// calls install_relay_tap, and no flag or file reaches it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "wire/message.h"

namespace testudo::controller {

class RelayTap {
 public:
  // What the hub knows of a task it dispatches, beyond the message.
  struct Dispatch {
    std::uint64_t request_id = 0;
    std::vector<std::uint32_t> engines;  // connected now
  };
  // A message the tap sends to an engine of its choice.
  struct ToEngine {
    std::uint32_t engine = 0;
    wire::Message message;
  };

  virtual ~RelayTap() = default;
  // A task on its way to the engine it was routed to: may be changed in place; the messages
  // returned are sent after it, each to the engine it names (a replay, or a copy elsewhere).
  virtual std::vector<ToEngine> to_engine(wire::Message& task, const Dispatch& dispatch) {
    (void)task;
    (void)dispatch;
    return {};
  }
  // A task reply or live output chunk on its way to a client: may be changed in place.
  virtual void to_client(wire::Message& message) { (void)message; }
  // An engine's reply to a task it was not given (the honest hub ignores it): the tap may
  // send a message to a client instead (client id, message).
  virtual std::optional<std::pair<std::uint32_t, wire::Message>> stray_reply(wire::Message& reply) {
    (void)reply;
    return std::nullopt;
  }
  // A bulk transfer was just issued: true flips a bit of the bytes it moves
  // (BulkRelay::flip_first_byte).
  enum class BulkTransfer { kRequestBody, kResultIntoStore, kResultToClient };
  virtual bool tamper_bulk(BulkTransfer what) {
    (void)what;
    return false;
  }
};

// Before the controller starts; the hub calls the tap on its loop thread only.
void install_relay_tap(std::unique_ptr<RelayTap> tap);
// The installed tap, or null (always, in the shipped binaries).
RelayTap* relay_tap();

}  // namespace testudo::controller
