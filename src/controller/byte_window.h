// A window of bytes in flight between a producer that reads and consumers that write them on
// (a relayed request's engines, a spooled reply's file, a stored result's client): the reader
// stops while more than `limit` bytes are out, and goes on once half of them are gone — not at
// every part, for fewer wake-ups. Shared (shared_ptr) by the parts that hold its bytes, since
// they may outlive their producer.
//
// Threading: the loop's thread only (a part released elsewhere posts its release there).
#pragma once

#include <cstdint>
#include <functional>
#include <utility>

namespace testudo::controller {

struct ByteWindow {
  std::uint64_t limit = 0;
  std::uint64_t in_flight = 0;
  std::function<void()> on_room;  // the reader waiting for in_flight to fall

  bool full() const { return in_flight > limit; }
  // Calls `fn` now if there is room, else once there is.
  void when_room(std::function<void()> fn) {
    if (!full()) return fn();
    on_room = std::move(fn);
  }
  void release(std::uint64_t bytes) {
    in_flight -= bytes;
    if (on_room && in_flight <= limit / 2) std::exchange(on_room, nullptr)();
  }
};

}  // namespace testudo::controller
