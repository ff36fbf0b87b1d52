#include "controller/bulk_relay.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "base/log.h"
#include "crypto/crypto.h"

namespace testudo::controller {
namespace {

std::string digest_of(const net::Ticket& ticket) {
  const auto d = crypto::sha256(std::span<const std::byte>(ticket));
  return std::string(reinterpret_cast<const char*>(d.data()), d.size());
}

std::string progress(std::uint64_t moved, std::uint64_t bytes) {
  return "after " + std::to_string(moved) + " of " + std::to_string(bytes) + " bytes";
}

struct CopyResult {
  std::uint64_t moved = 0;
  Status status;
};

// Moves exactly `bytes` from `src` to `dst` through a pipe of about `pipe_bytes`, with
// splice(2): the bytes never enter this process's memory. A socket end is non-blocking and
// polled; a file end (its offset given, advanced here) is read or written in place.
CopyResult splice_copy(int src, std::uint64_t* src_offset, int dst, std::uint64_t* dst_offset, std::uint64_t bytes,
                       std::size_t pipe_bytes, std::chrono::milliseconds stall) {
  CopyResult r;
  int p[2];
  if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) {
    r.status = unavailable(std::string("pipe: ") + std::strerror(errno));
    return r;
  }
  UniqueFd pipe_out(p[0]), pipe_in(p[1]);
  const int size = ::fcntl(pipe_in.get(), F_SETPIPE_SZ, static_cast<int>(pipe_bytes));
  const std::uint64_t capacity = size > 0 ? static_cast<std::uint64_t>(size) : 65536;
  const char* from = src_offset ? "reading the result file" : "the sender";
  const char* to = dst_offset ? "writing the result file" : "the receiver";
  std::uint64_t read_in = 0;   // from src into the pipe
  std::uint64_t in_pipe = 0;
  for (;;) {
    if (r.moved == bytes) return r;
    bool progressed = false;
    if (read_in < bytes && in_pipe < capacity) {
      auto* off = reinterpret_cast<loff_t*>(src_offset);
      const ssize_t n = ::splice(src, off, pipe_in.get(), nullptr,
                                 static_cast<std::size_t>(std::min(bytes - read_in, capacity - in_pipe)),
                                 SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        read_in += static_cast<std::uint64_t>(n);
        in_pipe += static_cast<std::uint64_t>(n);
        progressed = true;
      } else if (n == 0) {
        r.status = src_offset ? data_loss("the result file ended " + progress(r.moved, bytes))
                              : unavailable("the sender closed its data connection " + progress(r.moved, bytes));
        return r;
      } else if (errno != EAGAIN && errno != EINTR) {
        r.status = unavailable(std::string(from) + ": " + std::strerror(errno) + " " + progress(r.moved, bytes));
        return r;
      }
    }
    if (in_pipe > 0) {
      auto* off = reinterpret_cast<loff_t*>(dst_offset);
      const ssize_t n = ::splice(pipe_out.get(), nullptr, dst, off, static_cast<std::size_t>(in_pipe),
                                 SPLICE_F_MOVE | SPLICE_F_NONBLOCK | SPLICE_F_MORE);
      if (n > 0) {
        r.moved += static_cast<std::uint64_t>(n);
        in_pipe -= static_cast<std::uint64_t>(n);
        progressed = true;
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        r.status = unavailable(std::string(to) + ": " + std::strerror(errno) + " " + progress(r.moved, bytes));
        return r;
      }
    }
    if (progressed) continue;
    // Nothing moved: wait for the socket that can move next. The other socket is watched too
    // (events 0 still reports a hang-up), so a closed receiver ends a stalled sender's wait.
    // A file is never waited for (negative descriptors are skipped).
    pollfd fds[2] = {{src_offset ? -1 : src, static_cast<short>(read_in < bytes && in_pipe < capacity ? POLLIN : 0), 0},
                     {dst_offset ? -1 : dst, static_cast<short>(in_pipe > 0 ? POLLOUT : 0), 0}};
    const int ready = ::poll(fds, 2, static_cast<int>(stall.count()));
    if (ready == 0) {
      r.status = unavailable("no byte moved for " + std::to_string(stall.count() / 1000) + " s: stalled " +
                             progress(r.moved, bytes));
      return r;
    }
    if (ready < 0 && errno != EINTR) {
      r.status = unavailable(std::string("poll: ") + std::strerror(errno));
      return r;
    }
    if (fds[1].revents & (POLLHUP | POLLERR)) {
      r.status = unavailable("the receiver closed its data connection " + progress(r.moved, bytes));
      return r;
    }
    if ((fds[0].revents & (POLLHUP | POLLERR)) && !(fds[0].revents & POLLIN)) {
      r.status = unavailable("the sender closed its data connection " + progress(r.moved, bytes));
      return r;
    }
  }
}

}  // namespace

// The first byte of a transfer, through this process's memory with its lowest bit flipped:
// what a compromised controller could do to a body it relays (flip_first_byte, for the
// hostile test controller only). Offsets are advanced as splice_copy would.
CopyResult move_one_byte_flipped(int src, std::uint64_t* src_offset, int dst, std::uint64_t* dst_offset,
                                 std::chrono::milliseconds stall) {
  CopyResult r;
  unsigned char byte = 0;
  pollfd in{src, POLLIN, 0};
  if (!src_offset && ::poll(&in, 1, static_cast<int>(stall.count())) <= 0) {
    r.status = unavailable("the sender sent nothing");
    return r;
  }
  const ssize_t n = src_offset ? ::pread(src, &byte, 1, static_cast<off_t>(*src_offset)) : ::read(src, &byte, 1);
  if (n != 1) {
    r.status = unavailable("the first byte did not come");
    return r;
  }
  byte ^= 0x01;
  pollfd out{dst, POLLOUT, 0};
  if (!dst_offset && ::poll(&out, 1, static_cast<int>(stall.count())) <= 0) {
    r.status = unavailable("the receiver took nothing");
    return r;
  }
  if ((dst_offset ? ::pwrite(dst, &byte, 1, static_cast<off_t>(*dst_offset)) : ::write(dst, &byte, 1)) != 1) {
    r.status = unavailable("the first byte could not be written");
    return r;
  }
  if (src_offset) ++*src_offset;
  if (dst_offset) ++*dst_offset;
  r.moved = 1;
  return r;
}

struct BulkRelay::Transfer {
  std::uint64_t id = 0;
  bool flip_first_byte = false;  // hostile test controller only
  std::uint64_t bytes = 0;
  std::string digest;
  Clock::TimePoint deadline;
  UniqueFd sender;
  UniqueFd receiver;
  std::optional<FileEnd> source_file;  // instead of a sender
  std::optional<FileEnd> sink_file;    // instead of a receiver
  bool seen_sender = false;
  bool seen_receiver = false;
  std::thread copier;  // runs once both ends are in
  std::string cancelled;  // why, once cancel() shut a copying transfer down
};

BulkRelay::BulkRelay(Clock& clock, BulkRelayOptions options, std::function<void(const Done&)> on_done,
                     std::function<void(const std::string&, const std::string&)> on_refused)
    : clock_(clock), options_(options), on_done_(std::move(on_done)), on_refused_(std::move(on_refused)) {
  sweeper_ = clock_.every(std::chrono::milliseconds(1000), [this] { sweep(); });
}

BulkRelay::~BulkRelay() {
  for (auto& [id, t] : transfers_) {
    if (t->sender.valid()) ::shutdown(t->sender.get(), SHUT_RDWR);
    if (t->receiver.valid()) ::shutdown(t->receiver.get(), SHUT_RDWR);
  }
  for (auto& [id, t] : transfers_) {
    if (t->copier.joinable()) t->copier.join();
  }
}

StatusOr<net::Ticket> BulkRelay::issue(std::uint64_t transfer, std::uint64_t bytes) {
  return open(transfer, bytes, std::nullopt, std::nullopt);
}

StatusOr<net::Ticket> BulkRelay::issue_to_file(std::uint64_t transfer, std::uint64_t bytes, FileEnd file) {
  return open(transfer, bytes, std::nullopt, std::move(file));
}

StatusOr<net::Ticket> BulkRelay::issue_from_file(std::uint64_t transfer, std::uint64_t bytes, FileEnd file) {
  return open(transfer, bytes, std::move(file), std::nullopt);
}

StatusOr<net::Ticket> BulkRelay::open(std::uint64_t transfer, std::uint64_t bytes, std::optional<FileEnd> source,
                                      std::optional<FileEnd> sink) {
  if (bytes == 0) return invalid_argument("a bulk transfer moves at least one byte");
  if (transfers_.size() >= options_.max_transfers) {
    return resource_exhausted(std::to_string(transfers_.size()) + " bulk transfers are open, the most at once");
  }
  if (transfers_.contains(transfer)) return already_exists("bulk transfer " + std::to_string(transfer) + " is open");
  net::Ticket ticket{};
  TESTUDO_RETURN_IF_ERROR(crypto::fill_random(ticket));
  auto t = std::make_unique<Transfer>();
  t->id = transfer;
  t->bytes = bytes;
  t->digest = digest_of(ticket);
  t->deadline = clock_.now() + options_.pair_timeout;
  t->source_file = std::move(source);
  t->sink_file = std::move(sink);
  by_digest_[t->digest] = transfer;
  transfers_[transfer] = std::move(t);
  return ticket;
}

void BulkRelay::refuse(const std::string& peer, const std::string& why) {
  ++counts_.refused_connections;
  if (on_refused_) return on_refused_(peer, why);
  // One line for the first and then every hundredth: a flood of bad tickets cannot flood the log.
  if (counts_.refused_connections % 100 == 1) {
    LOG_WARN("bulk") << "refused a data connection from " << peer << ": " << why << " ("
                     << counts_.refused_connections << " refused so far)";
  }
}

void BulkRelay::accept(UniqueFd socket, const net::DataHello& hello, const std::string& peer) {
  const std::string digest = digest_of(hello.ticket);
  auto found = by_digest_.find(digest);
  if (found == by_digest_.end()) {
    if (auto late = cancelled_.find(digest); late != cancelled_.end()) {
      // Closed as the socket goes out of scope; nothing wrong with the peer.
      cancelled_.erase(late);
      ++counts_.late_connections;
      return;
    }
    return refuse(peer, "unknown, used or expired ticket");
  }
  Transfer& t = *transfers_.at(found->second);
  const bool sender = hello.role == net::DataRole::kSender;
  if (sender ? t.source_file.has_value() : t.sink_file.has_value()) {
    return refuse(peer, "a ticket that takes no " + std::string(net::data_role_name(hello.role)));
  }
  bool& seen = sender ? t.seen_sender : t.seen_receiver;
  if (seen) return refuse(peer, "a ticket presented twice as " + std::string(net::data_role_name(hello.role)));
  seen = true;
  // The copier polls and splices without blocking (SPLICE_F_NONBLOCK covers only the pipe).
  if (const int fl = ::fcntl(socket.get(), F_GETFL); fl >= 0) ::fcntl(socket.get(), F_SETFL, fl | O_NONBLOCK);
  (sender ? t.sender : t.receiver) = std::move(socket);
  if ((t.seen_sender || t.source_file) && (t.seen_receiver || t.sink_file)) start_copy(t);
}

void BulkRelay::start_copy(Transfer& t) {
  by_digest_.erase(t.digest);  // both ends are in: the ticket is spent
  const int src = t.source_file ? t.source_file->fd : t.sender.get();
  const int dst = t.sink_file ? t.sink_file->fd : t.receiver.get();
  std::optional<std::uint64_t> src_offset = t.source_file ? std::optional(t.source_file->offset) : std::nullopt;
  std::optional<std::uint64_t> dst_offset = t.sink_file ? std::optional(t.sink_file->offset) : std::nullopt;
  const std::uint64_t id = t.id, bytes = t.bytes;
  const bool flip = t.flip_first_byte;
  std::weak_ptr<int> alive = alive_;
  t.copier = std::thread([this, alive, src, dst, src_offset, dst_offset, id, bytes, flip, pipe = options_.pipe_bytes,
                          stall = options_.stall_timeout]() mutable {
    std::uint64_t* from = src_offset ? &*src_offset : nullptr;
    std::uint64_t* to = dst_offset ? &*dst_offset : nullptr;
    CopyResult r = flip ? move_one_byte_flipped(src, from, dst, to, stall) : CopyResult{};
    if (r.status.ok()) {
      CopyResult rest = splice_copy(src, from, dst, to, bytes - r.moved, pipe, stall);
      rest.moved += r.moved;
      r = rest;
    }
    if (!dst_offset) ::shutdown(dst, SHUT_WR);  // the receiver sees the end of the transfer
    clock_.post([this, alive, id, r] {
      if (alive.lock()) finish(id, r.moved, r.status);
    });
  });
}

void BulkRelay::flip_first_byte(std::uint64_t transfer) {
  if (auto it = transfers_.find(transfer); it != transfers_.end()) it->second->flip_first_byte = true;
}

void BulkRelay::cancel(std::uint64_t transfer, const std::string& why) {
  auto it = transfers_.find(transfer);
  if (it == transfers_.end()) return;
  Transfer& t = *it->second;
  if (t.copier.joinable()) {
    // The copier ends on the shut-down sockets and reports; the report says this reason.
    t.cancelled = why;
    if (t.sender.valid()) ::shutdown(t.sender.get(), SHUT_RDWR);
    if (t.receiver.valid()) ::shutdown(t.receiver.get(), SHUT_RDWR);
    return;
  }
  // An end that still comes (its task ended first: the other end never will) is closed
  // without counting as a bad ticket, until the ticket would have expired anyway.
  if (!t.seen_sender || !t.seen_receiver) {
    if (cancelled_.size() < 4 * options_.max_transfers) cancelled_[t.digest] = t.deadline;
  }
  finish(transfer, 0, unavailable(why));
}

void BulkRelay::finish(std::uint64_t transfer, std::uint64_t moved, Status status) {
  auto it = transfers_.find(transfer);
  if (it == transfers_.end()) return;
  std::unique_ptr<Transfer> t = std::move(it->second);
  transfers_.erase(it);
  by_digest_.erase(t->digest);
  if (t->copier.joinable()) t->copier.join();
  if (!t->cancelled.empty() && moved < t->bytes) status = unavailable(t->cancelled);
  counts_.bytes_moved += moved;
  if (status.ok()) {
    ++counts_.completed;
  } else {
    ++counts_.failed;
  }
  Done done{transfer, t->bytes, moved, std::move(status)};
  t.reset();  // closes both connections before anyone hears of it
  if (on_done_) on_done_(done);
}

void BulkRelay::sweep() {
  const auto now = clock_.now();
  std::erase_if(cancelled_, [now](const auto& late) { return now >= late.second; });
  std::vector<std::uint64_t> expired;
  for (const auto& [id, t] : transfers_) {
    if (!t->copier.joinable() && now >= t->deadline) expired.push_back(id);
  }
  for (std::uint64_t id : expired) {
    const Transfer& t = *transfers_.at(id);
    const bool has_sender = t.seen_sender || t.source_file, has_receiver = t.seen_receiver || t.sink_file;
    const std::string missing = !has_sender && !has_receiver ? "neither end came"
                                : !has_sender                  ? "the sender never came"
                                                               : "the receiver never came";
    finish(id, 0, deadline_exceeded("its data connections did not both arrive within " +
                                    std::to_string(options_.pair_timeout.count() / 1000) + " s (" + missing + ")"));
  }
}

BulkRelay::Counts BulkRelay::counts() const {
  Counts c = counts_;
  c.open = transfers_.size();
  return c;
}

}  // namespace testudo::controller
