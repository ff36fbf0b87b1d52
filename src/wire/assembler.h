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
//
// Streaming (a relay's reading side, offer_streams): a message whose segments after the first
// hold at least `min_rest_bytes` is offered once its head and first segment are in —
// offer() shows it (envelope, segment 0, the sizes of all) — and the caller answers before the
// next frame: with a StreamSink, the rest goes there frame by frame as it arrives and is never
// held whole here; with none, the message is put together whole as usual. An abandoning frame
// (message.h) ends a message in progress unfinished: dropped, or, if streamed, its sink told.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "testudo/status.h"
#include "wire/message.h"

namespace testudo::wire {

// Where a streamed message's segments after the first go while they arrive (see above).
class StreamSink {
 public:
  virtual ~StreamSink() = default;
  // The next bytes of segment `segment` (>= 1): segments in order, each in one or more parts.
  virtual void chunk(std::size_t segment, SharedBytes bytes) = 0;
  // Every segment has arrived whole.
  virtual void end() = 0;
  // The message will never be complete: its sender abandoned it or its connection closed.
  virtual void abandon(const Status& why) = 0;
  // For the reading connection (not the assembler): while true, read no further frame; call
  // `fn` once when that changes.
  virtual bool backlogged() const { return false; }
  virtual void when_room(std::function<void()> fn) { (void)fn; }
};

// A message being put together (MessageAssembler's; outside it so that std::optional of it is
// complete where the class declares its members).
struct PartialMessage {
  bool overtaking = false;
  std::vector<std::byte> head;  // the head payload, until decoded
  Message message;
  std::vector<std::uint64_t> sizes;
  std::size_t segment = 0;  // the segment being filled
  std::uint64_t filled = 0;
  bool offered = false;               // offered for streaming (then answered)
  std::shared_ptr<StreamSink> sink;   // streamed: where the segments after the first go
  SharedBytes chunk;                  // streamed: the part the current data frame fills
};

class PartBuffers;  // assembler.cc: buffers for streamed parts, reused

class MessageAssembler {
 public:
  explicit MessageAssembler(const Limits& limits) : limits_(limits) {}

  // For frames from now on (a connection raises them after authentication, between messages).
  void set_limits(const Limits& limits) { limits_ = limits; }
  // Whether a message has begun and is not complete (a pause waits for the end of it).
  bool in_message() const { return main_.has_value(); }

  // Streaming: offer messages with at least this many bytes after their first segment
  // (0: never, the default).
  void offer_streams(std::uint64_t min_rest_bytes) { stream_min_rest_ = min_rest_bytes; }
  // The message on offer (its envelope and first segment; the others not yet there), from the
  // end_frame that completed its first segment until answer_offer; else null.
  const Message* offer() const { return offering_ ? &main_->message : nullptr; }
  // The sizes of the offered message's segments, all of them.
  const std::vector<std::uint64_t>& offer_sizes() const { return main_->sizes; }
  // Answers the offer: `sink` takes the rest; null: assemble it whole.
  void answer_offer(std::shared_ptr<StreamSink> sink);
  // The sink of the message being streamed, or null.
  StreamSink* stream() const { return main_ && main_->sink ? main_->sink.get() : nullptr; }
  // The connection ends: a streamed message in progress is abandoned (its sink told, once).
  void abandon_stream(const Status& why);

  // The header of the next frame. On success: where its payload goes (exactly its length).
  StatusOr<std::span<std::byte>> begin_frame(std::span<const std::byte, kFrameHeaderBytes> header);
  // The payload is in place. A message this frame completed (an overtaking one is complete
  // before the message it overtook), or none yet.
  StatusOr<std::optional<Message>> end_frame();

 private:
  using Assembly = PartialMessage;
  // After a head or a data frame: allocates the next segment to fill, skipping empty ones;
  // returns the message once every segment is full. Stops at a streaming offer.
  std::optional<Message> advance(Assembly& a);
  bool offers(const Assembly& a) const;

  Limits limits_;
  std::optional<Assembly> main_;       // a message in progress
  std::optional<Assembly> overtaker_;  // an overtaking message in progress, inside main_
  Assembly* current_ = nullptr;        // the one the frame between begin and end belongs to
  bool current_is_head_ = false;
  bool current_abandons_ = false;
  std::uint32_t current_length_ = 0;
  std::uint64_t stream_min_rest_ = 0;
  bool offering_ = false;
  std::shared_ptr<PartBuffers> part_buffers_;  // made on the first streamed part
};

}  // namespace testudo::wire
