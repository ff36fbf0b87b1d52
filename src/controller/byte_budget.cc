#include "controller/byte_budget.h"

namespace testudo::controller {

ByteBudget::ByteBudget(ByteLimits limits, std::function<void()> on_room) : counters_(std::make_shared<Counters>()) {
  counters_->on_room = std::move(on_room);
  counters_->limits = limits;
}

ByteBudget::~ByteBudget() { detach(); }

void ByteBudget::detach() { counters_->on_room = nullptr; }

void ByteBudget::Counters::release(std::uint32_t client, std::uint64_t bytes) {
  auto it = per_client.find(client);
  if (it == per_client.end()) return;  // cannot happen: every charge is counted first
  const bool client_was_over = it->second > limits.per_client;
  const bool total_was_over = total > limits.total;
  const std::uint64_t left = it->second -= bytes;
  total -= bytes;
  if (left == 0) per_client.erase(it);
  // Only a crossing back under a limit can let a paused client go on.
  const bool crossed = (client_was_over && left <= limits.per_client) || (total_was_over && total <= limits.total);
  if (crossed && on_room) on_room();
}

std::vector<SharedBytes> ByteBudget::charge(std::uint32_t client, std::vector<SharedBytes> segments) {
  std::vector<SharedBytes> charged;
  charged.reserve(segments.size());
  for (SharedBytes& segment : segments) {
    const std::uint64_t bytes = segment.size();
    if (bytes == 0) {
      charged.push_back(std::move(segment));
      continue;
    }
    counters_->per_client[client] += bytes;
    counters_->total += bytes;
    std::byte* data = segment.data();
    // The wrapper owns the original (and so its bytes) and the counters; both go, and the
    // charge is released, when the last copy of the wrapper does.
    charged.push_back(SharedBytes::adopt(data, bytes, [original = std::move(segment), counters = counters_, client,
                                                      bytes]() mutable {
      original = SharedBytes();
      counters->release(client, bytes);
    }));
  }
  return charged;
}

bool ByteBudget::over_limit(std::uint32_t client) const {
  return held(client) > counters_->limits.per_client || counters_->total > counters_->limits.total;
}

std::uint64_t ByteBudget::held(std::uint32_t client) const {
  auto it = counters_->per_client.find(client);
  return it == counters_->per_client.end() ? 0 : it->second;
}

std::uint64_t ByteBudget::held_total() const { return counters_->total; }

}  // namespace testudo::controller
