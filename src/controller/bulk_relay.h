// The controller's half of the bulk path (docs/protocol.md "The bulk path"): single-use
// tickets for transfers it has authorized, and the relay that joins the two data connections
// presenting a ticket and moves the transfer's bytes from one to the other with splice(2)
// through a pipe — never into user space, never decrypted (the bytes are sealed end to end).
// One end may instead be a file the controller holds (the task store's result file): an
// engine's sealed result is spliced into it, and a stored sealed result out of it to a client.
//
// What must hold:
//   - A ticket is 256 random bits, stored only as its SHA-256 (a memory dump of the
//     controller does not yield usable tickets), matched in a hash table by that digest, and
//     good for one connection of each role, once, before its deadline (pair_timeout after
//     issue). An unknown, reused or expired ticket closes the connection and is counted.
//   - The controller never holds more of a transfer than its pipe (1 MiB): a slow receiver
//     stalls the sender through TCP. A transfer moves exactly the bytes its ticket names.
//   - A transfer that stalls (no byte moves for stall_timeout) or whose either end closes
//     early fails alone, with "after X of Y bytes"; others go on.
//
// Threading: everything but the copying runs on the clock's thread. Each transfer whose two
// ends have arrived is copied by a thread of its own (at most max_transfers), which reports
// back with Clock::post; cancel() and the destructor shut its sockets down to end it early.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "base/clock.h"
#include "base/unique_fd.h"
#include "net/data_link.h"
#include "testudo/status.h"

namespace testudo::controller {

struct BulkRelayOptions {
  // A ticket's two connections must both have arrived this long after it was issued.
  std::chrono::milliseconds pair_timeout{30'000};
  // A transfer during which no byte moves for this long fails.
  std::chrono::milliseconds stall_timeout{60'000};
  // Tickets issued and not yet finished, at most (each holds up to two sockets, and a
  // thread while its bytes move).
  std::size_t max_transfers = 512;
  // The pipe between the two sockets (the most of a transfer the controller holds).
  std::size_t pipe_bytes = 1u << 20;
};

class BulkRelay {
 public:
  struct Done {
    std::uint64_t transfer = 0;  // the id given to issue()
    std::uint64_t bytes = 0;     // the transfer's size
    std::uint64_t moved = 0;     // bytes delivered to the receiver
    Status status;               // ok, or why it stopped
  };
  // `on_refused(peer, why)`: a data connection refused (bad ticket); unset: logged here.
  BulkRelay(Clock& clock, BulkRelayOptions options, std::function<void(const Done&)> on_done,
            std::function<void(const std::string&, const std::string&)> on_refused = {});
  ~BulkRelay();
  BulkRelay(const BulkRelay&) = delete;
  BulkRelay& operator=(const BulkRelay&) = delete;

  // A file as one end of a transfer: its bytes from `offset` on. `keep` holds the descriptor
  // open until the transfer has reported.
  struct FileEnd {
    int fd = -1;
    std::uint64_t offset = 0;
    std::shared_ptr<const void> keep;
  };
  // A ticket for transfer `transfer` of exactly `bytes` bytes (> 0), from a sender's data
  // connection to a receiver's. kResourceExhausted when max_transfers are open;
  // kAlreadyExists for an id already open.
  StatusOr<net::Ticket> issue(std::uint64_t transfer, std::uint64_t bytes);
  // The same from a sender's data connection into `file` (no receiver connects).
  StatusOr<net::Ticket> issue_to_file(std::uint64_t transfer, std::uint64_t bytes, FileEnd file);
  // The same from `file` to a receiver's data connection (no sender connects).
  StatusOr<net::Ticket> issue_from_file(std::uint64_t transfer, std::uint64_t bytes, FileEnd file);
  // A data connection's hello arrived (net::ListenOptions::on_data_connection).
  void accept(UniqueFd socket, const net::DataHello& hello, const std::string& peer);
  // The transfer is no longer wanted (its task ended another way): its connections close and
  // on_done reports it cancelled. Unknown ids are ignored.
  void cancel(std::uint64_t transfer, const std::string& why);
  // What a compromised controller could do to a body it relays, for the hostile test
  // controller only (tests/hostile_controller.cc, through RelayTap): the transfer's first
  // byte goes through this process with its lowest bit flipped. Never called otherwise.
  void flip_first_byte(std::uint64_t transfer);

  struct Counts {
    std::uint64_t completed = 0;   // transfers that moved all their bytes
    std::uint64_t failed = 0;      // stalled, closed early, expired or cancelled
    std::uint64_t bytes_moved = 0;
    std::uint64_t refused_connections = 0;  // unknown, reused or expired tickets
    std::uint64_t late_connections = 0;     // an end of a cancelled transfer, closed quietly
    std::size_t open = 0;          // tickets issued and not finished
  };
  Counts counts() const;

 private:
  struct Transfer;
  StatusOr<net::Ticket> open(std::uint64_t transfer, std::uint64_t bytes, std::optional<FileEnd> source,
                             std::optional<FileEnd> sink);
  void start_copy(Transfer& t);
  void finish(std::uint64_t transfer, std::uint64_t moved, Status status);
  void refuse(const std::string& peer, const std::string& why);
  void sweep();

  Clock& clock_;
  const BulkRelayOptions options_;
  std::function<void(const Done&)> on_done_;
  std::function<void(const std::string&, const std::string&)> on_refused_;
  std::map<std::uint64_t, std::unique_ptr<Transfer>> transfers_;
  std::unordered_map<std::string, std::uint64_t> by_digest_;  // SHA-256 of a ticket -> transfer
  // Tickets of transfers cancelled before both ends came -> when they would have expired:
  // the missing end may still come, in good faith (see cancel()).
  std::unordered_map<std::string, Clock::TimePoint> cancelled_;
  Counts counts_;
  std::unique_ptr<Timer> sweeper_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // posted reports run only while it lives
};

}  // namespace testudo::controller
