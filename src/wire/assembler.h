// MessageAssembler: the frames one connection receives, put together into messages by the
// rules of message.h — a head frame, then its segments in data frames, and between those an
// overtaking message (its frames flagged) that is complete before the message it overtook.
// Pure: no I/O. A connection reads each frame's 12 header bytes, asks begin_frame() where the
// payload goes (a buffer of exactly its length, inside the segment being filled, so large
// values are read in place), reads the payload there and calls end_frame(), which returns a
// message when that frame completed one. Every rule is checked before the payload is read or
// anything allocated; a broken rule is an error the connection closes on (the assembler is
// not usable after one). Fuzzed
// (fuzz/frame_stream_fuzz.cc). Not thread-safe: one per connection, on its reading thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "testudo/status.h"
#include "wire/message.h"

namespace testudo::wire {

// A message being put together (MessageAssembler's; outside it so that std::optional of it is
// complete where the class declares its members).
struct PartialMessage {
  bool overtaking = false;
  std::vector<std::byte> head;  // the head payload, until decoded
  Message message;
  std::vector<std::uint64_t> sizes;
  std::size_t segment = 0;  // the segment being filled
  std::uint64_t filled = 0;
};

class MessageAssembler {
 public:
  explicit MessageAssembler(const Limits& limits) : limits_(limits) {}

  // For frames from now on (a connection raises them after authentication, between messages).
  void set_limits(const Limits& limits) { limits_ = limits; }
  // Whether a message has begun and is not complete (a pause waits for the end of it).
  bool in_message() const { return main_.has_value(); }

  // The header of the next frame. On success: where its payload goes (exactly its length).
  StatusOr<std::span<std::byte>> begin_frame(std::span<const std::byte, kFrameHeaderBytes> header);
  // The payload is in place. A message this frame completed (an overtaking one is complete
  // before the message it overtook), or none yet.
  StatusOr<std::optional<Message>> end_frame();

 private:
  using Assembly = PartialMessage;
  // After a head or a data frame: allocates the next segment to fill, skipping empty ones;
  // returns the message once every segment is full.
  std::optional<Message> advance(Assembly& a);

  Limits limits_;
  std::optional<Assembly> main_;       // a message in progress
  std::optional<Assembly> overtaker_;  // an overtaking message in progress, inside main_
  Assembly* current_ = nullptr;        // the one the frame between begin and end belongs to
  bool current_is_head_ = false;
  std::uint32_t current_length_ = 0;
};

}  // namespace testudo::wire
