#include "controller/ack_batcher.h"

#include <algorithm>

namespace testudo::controller {

AckBatcher::AckBatcher(Clock& clock, Release release) : clock_(clock), release_(std::move(release)) {}

void AckBatcher::hold(std::uint32_t client_id, wire::Message ack) {
  Held& h = held_[client_id];
  if (h.acks.empty()) h.since = clock_.now();
  h.acks.push_back(std::move(ack));
  if (!armed_) arm(kAckDelay);
}

std::vector<wire::Message> AckBatcher::take(std::uint32_t client_id) {
  auto it = held_.find(client_id);
  if (it == held_.end()) return {};
  std::vector<wire::Message> acks = std::move(it->second.acks);
  held_.erase(it);
  return acks;
}

void AckBatcher::release_all() {
  auto all = std::move(held_);
  held_.clear();
  for (auto& [client, h] : all) release_(client, std::move(h.acks));
}

void AckBatcher::release_due() {
  // Clients are few (tens): looking at each is cheaper than keeping them in time order.
  const auto now = clock_.now();
  auto next_due = Clock::TimePoint::max();
  std::vector<std::uint32_t> due;
  for (const auto& [client, h] : held_) {
    // Acks still young wait on: the reply they wait for may come any moment.
    if (h.since + kAckDelay > now) {
      next_due = std::min(next_due, h.since + kAckDelay);
    } else {
      due.push_back(client);
    }
  }
  for (std::uint32_t client : due) release_(client, take(client));
  if (next_due != Clock::TimePoint::max() && !armed_) arm(next_due - now);
}

void AckBatcher::arm(Clock::Duration delay) {
  armed_ = true;
  // Whole milliseconds, at least one: an ack waits at most about twice kAckDelay.
  auto ms = std::max(std::chrono::ceil<std::chrono::milliseconds>(delay), std::chrono::milliseconds(1));
  timer_ = clock_.after(ms, [this] {
    armed_ = false;
    release_due();
  });
}

}  // namespace testudo::controller
