// Sends a result kept in a file (a spooled reply, a big stored result) to a client a part at
// a time, so that the controller holds a bounded window of it, never all of it
// (docs/protocol.md "Relaying a large reply").
//
// The message's envelope and first segment go out at once (Connection::send_streamed); then
// parts of at most one frame, never across a segment's end, are read from the file while fewer
// than `window` bytes wait in the connection, and read again as the connection's writer
// encrypts them. Reads are pread()s on the loop's thread: the file was usually just written
// (page cache); a cold one costs the loop a disk read per part, between other work.
//
// A read that fails (damaged file) abandons the message (the client drops it) and runs
// `on_failed`, so the caller can answer the request with the reason instead. A connection
// that closes ends the sending (the stream is detached).
//
// Threading: the loop's thread only. Keeps itself alive while parts are out (they hold it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "controller/byte_window.h"
#include "controller/task_store.h"
#include "net/net.h"

namespace testudo::controller {

class ResultFileSender final : public std::enable_shared_from_this<ResultFileSender> {
 public:
  // Starts sending `envelope` with the segments of `file` on `to`. The first segment is read
  // here, whole. Errors (the first read): nothing was sent.
  static Status send(net::Connection& to, wire::Envelope envelope, std::shared_ptr<const ResultFile> file,
                     std::uint64_t window, std::function<void(const Status&)> on_failed);

  ResultFileSender(std::shared_ptr<const ResultFile> file, std::shared_ptr<net::OutgoingStream> out,
                   std::uint64_t window, std::function<void(const Status&)> on_failed);

 private:
  // Pushes parts while the window has room; arranges to be called again when it has.
  void pump();
  // A frame-sized buffer: one the connection gave back, or a new one. Reusing them spares a
  // page fault per 4 KiB of every part (as the relay's PartBuffers do).
  std::unique_ptr<std::byte[]> take_buffer();

  std::shared_ptr<const ResultFile> file_;
  std::shared_ptr<net::OutgoingStream> out_;
  std::shared_ptr<ByteWindow> window_;
  std::function<void(const Status&)> on_failed_;
  std::size_t segment_ = 1;      // the segment being read
  std::uint64_t in_segment_ = 0;  // bytes of it already pushed
  std::uint64_t offset_ = 0;     // into the file's segments, back to back
  std::vector<std::unique_ptr<std::byte[]>> free_;  // buffers back from the connection
};

}  // namespace testudo::controller
