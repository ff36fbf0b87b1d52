// Holds each request's acknowledgement (kSubmitted: its task ids) for a moment, so that it
// travels with the next message to the same client: a quick request's reply then carries its
// ack in the same write, and the client wakes once instead of twice. An ack waits at most
// about twice kAckDelay, and always leaves before any later message to its client (the hub
// takes a client's held acks before it sends that client anything).
//
// Threading: the clock's thread, not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "base/clock.h"
#include "wire/message.h"

namespace testudo::controller {

class AckBatcher {
 public:
  // How long an ack may wait for company: short enough that a caller asking for task ids at
  // once barely notices, long enough for the reply of a quick task to come back first.
  static constexpr std::chrono::milliseconds kAckDelay{1};

  // Sends a client the acks whose time is up (in order).
  using Release = std::function<void(std::uint32_t client_id, std::vector<wire::Message> acks)>;
  // `clock` outlives this object.
  AckBatcher(Clock& clock, Release release);

  void hold(std::uint32_t client_id, wire::Message ack);
  // The acks held for this client, oldest first; they are the caller's to send now.
  std::vector<wire::Message> take(std::uint32_t client_id);
  bool holds(std::uint32_t client_id) const { return held_.count(client_id) != 0; }
  // Releases every held ack now (shutdown).
  void release_all();

 private:
  struct Held {
    std::vector<wire::Message> acks;
    Clock::TimePoint since;  // when the oldest was held
  };
  void release_due();
  void arm(Clock::Duration delay);

  Clock& clock_;
  Release release_;
  std::unordered_map<std::uint32_t, Held> held_;
  std::unique_ptr<Timer> timer_;
  bool armed_ = false;
};

}  // namespace testudo::controller
