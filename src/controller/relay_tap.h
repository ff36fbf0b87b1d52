// A test build's hand in the hub's data path (docs/e2e-design.md "Tests"): the hostile
// controller of tests/hostile_controller.cc installs one to record, alter, replay, re-target
// and swap what the real hub relays, as a compromised controller could, so the tests can show
// that clients and engines notice. The shipped binaries never install one: nothing in them
// calls install_relay_tap, and no flag or file reaches it.
#pragma once

#include <memory>
#include <vector>

#include "wire/message.h"

namespace testudo::controller {

class RelayTap {
 public:
  virtual ~RelayTap() = default;
  // A task on its way to the engine it was routed to: may be changed in place; the messages
  // returned are sent to the same engine after it (a replay).
  virtual std::vector<wire::Message> to_engine(wire::Message& task) {
    (void)task;
    return {};
  }
  // A task reply or live output chunk on its way to a client: may be changed in place.
  virtual void to_client(wire::Message& message) { (void)message; }
};

// Before the controller starts; the hub calls the tap on its loop thread only.
void install_relay_tap(std::unique_ptr<RelayTap> tap);
// The installed tap, or null (always, in the shipped binaries).
RelayTap* relay_tap();

}  // namespace testudo::controller
