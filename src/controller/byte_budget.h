// Bytes of clients' requests the controller holds — queued for an engine, or on their way to
// one — counted per client and in all, against two limits. A client over either limit is
// paused by the hub (its connection is not read; TCP makes the sender wait) until enough of
// its bytes have left: nothing is dropped, and one client cannot park gigabytes here
// (docs/threat-model.md T20).
//
// Counting follows the bytes themselves: charge() wraps each segment so that its bytes are
// released when the last reference to them goes (written to every engine's socket, or the
// task failed or was aborted), wherever that happens. A single message may exceed the limits
// (it is then the only one in flight for that client); the largest message is bounded apart,
// by wire::Limits::max_message_bytes.
//
// Threading: the loop's thread only. Segments may outlive the budget's owner: they hold the
// counters, and on_room is cleared by detach().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "base/shared_bytes.h"

namespace testudo::controller {

struct ByteLimits {
  std::uint64_t per_client = 1ull << 30;  // 1 GiB
  std::uint64_t total = 4ull << 30;       // 4 GiB
};

class ByteBudget {
 public:
  // `on_room` is called (on the thread that released bytes) whenever released bytes may have
  // brought a paused client back under the limits; the owner asks over_limit() to see which.
  ByteBudget(ByteLimits limits, std::function<void()> on_room);
  ~ByteBudget();
  ByteBudget(const ByteBudget&) = delete;
  ByteBudget& operator=(const ByteBudget&) = delete;

  // Charges `segments` to `client` and returns them wrapped (same bytes, no copy): the charge
  // of each is released when no SharedBytes refers to it any more.
  std::vector<SharedBytes> charge(std::uint32_t client, std::vector<SharedBytes> segments);
  // Whether `client` (or everyone together) holds more than the limits allow.
  bool over_limit(std::uint32_t client) const;
  std::uint64_t held(std::uint32_t client) const;
  std::uint64_t held_total() const;
  const ByteLimits& limits() const { return counters_->limits; }
  // No more on_room calls (the owner is going away; charged bytes may still be released).
  void detach();

 private:
  struct Counters {
    std::unordered_map<std::uint32_t, std::uint64_t> per_client;
    std::uint64_t total = 0;
    std::function<void()> on_room;
    ByteLimits limits;
    void release(std::uint32_t client, std::uint64_t bytes);
  };
  std::shared_ptr<Counters> counters_;
};

}  // namespace testudo::controller
