// A large reply written to the task store's file while it still arrives from its engine, so
// the controller holds a bounded window of it rather than all of it (docs/protocol.md
// "Relaying a large reply"). Sent on to its client from that file once it is whole and
// recorded (ResultFileSender).
//
// The engine's connection offers the reply once its head and first segment are in
// (net::Connection::offer_streams); the hub checks that the task runs on that engine and that
// the store can take a file, then hands this sink the rest. Each part goes to the store's
// spool thread; the engine's connection is not read while more than `window` bytes are
// appended and not yet written (the disk sets the pace, never the client). The part's release
// happens on the spool thread and is posted back to the loop's.
//
// Why a file first rather than straight on to the client: a client that does not read (or
// reads slowly) must not stop an engine's connection, which carries the replies of every
// other client too; and the store needs the whole result anyway (get_result later, F3).
//
// Threading: the loop's thread only (`clock` posts releases back to it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "base/clock.h"
#include "controller/byte_window.h"
#include "controller/task_store.h"
#include "wire/assembler.h"

namespace testudo::controller {

class SpooledReply final : public wire::StreamSink {
 public:
  // `first`: the reply's envelope and first segment (already appended to `spool`). `on_end`
  // runs once every segment has arrived; `on_abandon` if the engine's connection ends first.
  SpooledReply(wire::Message first, std::shared_ptr<ResultSpool> spool, std::uint64_t window, Clock& clock,
               std::function<void(SpooledReply&)> on_end, std::function<void(SpooledReply&)> on_abandon);

  const wire::Message& first() const { return first_; }
  const std::shared_ptr<ResultSpool>& spool() const { return spool_; }
  // Bytes appended and not yet written.
  std::uint64_t in_flight() const { return window_->in_flight; }

  // wire::StreamSink: the engine's connection hands over what arrives.
  void chunk(std::size_t segment, SharedBytes bytes) override;
  void end() override;
  void abandon(const Status& why) override;
  bool backlogged() const override { return window_->full(); }
  void when_room(std::function<void()> fn) override { window_->when_room(std::move(fn)); }

 private:
  wire::Message first_;
  std::shared_ptr<ResultSpool> spool_;
  std::shared_ptr<ByteWindow> window_;
  Clock& clock_;
  std::function<void(SpooledReply&)> on_end_;
  std::function<void(SpooledReply&)> on_abandon_;
  bool over_ = false;
};

}  // namespace testudo::controller
