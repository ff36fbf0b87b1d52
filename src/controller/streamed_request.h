// A large direct request forwarded to its engines while it still arrives from its client, so
// the controller holds a bounded window of it rather than all of it (docs/protocol.md
// "Relaying a large request").
//
// The client's connection offers the request once its head and first segment are in
// (net::Connection::offer_streams); the hub routes that first part as usual (authorization and
// the audit's code digest read the first segment; task ids are handed out) and, for each task it
// dispatches, starts the message on that engine's connection (forward_to). From then on each
// part that arrives is pushed to every engine's connection; the client's connection is not read
// while more than `window` bytes of it are pushed and not yet written to every engine (the
// slowest engine sets the pace). Parts for an engine whose connection closed are dropped. If the
// client abandons the request before its end (its connection closes), every engine is told to
// drop it (an abandoning frame) and on_abandon gets the tasks, which never ran.
//
// What must hold: forward_to only before the first part arrived (a later start would miss
// parts); each engine connection carries at most one streamed message at a time (two, fed by
// different clients at different paces, could each wait for the other's window to drain).
// Hub::offer_stream checks both before it accepts.
//
// Threading: the loop's thread only. Parts may outlive this object: they hold the window.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "controller/byte_window.h"
#include "net/net.h"
#include "wire/assembler.h"

namespace testudo::controller {

class StreamedRequest final : public wire::StreamSink {
 public:
  // (task id, engine id) of each task started by forward_to.
  using Tasks = std::vector<std::pair<std::uint64_t, std::uint32_t>>;

  // `sizes`: of every segment, the first included. `on_abandon` runs once if the client
  // abandons the request.
  StreamedRequest(std::vector<std::uint64_t> sizes, std::uint64_t window,
                  std::function<void(const Status& why, const Tasks& tasks)> on_abandon);

  // Starts task `task` on engine `engine`: `first` (its envelope and first segment) goes out on
  // `to` now, the rest as it arrives. False (nothing sent) once a part has passed.
  bool forward_to(net::Connection& to, wire::Message first, std::uint64_t task, std::uint32_t engine);

  // wire::StreamSink: the client's connection hands over what arrives.
  void chunk(std::size_t segment, SharedBytes bytes) override;
  void end() override;
  void abandon(const Status& why) override;
  bool backlogged() const override;
  void when_room(std::function<void()> fn) override;

  // Engines it was started on (forward_to).
  std::size_t engines() const { return outs_.size(); }
  // Bytes pushed to engines' connections and not yet written by all of them.
  std::uint64_t in_flight() const { return window_->in_flight; }

 private:
  std::vector<std::uint64_t> sizes_;
  std::shared_ptr<ByteWindow> window_;
  std::function<void(const Status&, const Tasks&)> on_abandon_;
  std::vector<std::shared_ptr<net::OutgoingStream>> outs_;
  Tasks tasks_;
  bool parts_passed_ = false;
  bool over_ = false;  // ended or abandoned
};

}  // namespace testudo::controller
