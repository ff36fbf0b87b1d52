// The transport: TLS 1.3 connections carrying wire::Message values, an event loop, timers,
// a listener and a dialer. asio and OpenSSL stay inside net/*.cc: users of this header see
// only testudo types, which keeps the heavy headers out of the controller, engine and
// client translation units (one with asio, OpenSSL and pybind11 takes ~23 s and ~750 MB to
// compile) and lets tests hand in fakes.
//
// Threading: an EventLoop runs on exactly one thread (the one that calls run()). Every
// Connection, Listener and Timer belongs to one loop and must be used only from that
// loop's thread; other threads hand work over with EventLoop::post(). The one exception is
// Connection::send_now, which any thread may call (see there).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/clock.h"
#include "net/data_link.h"
#include "testudo/status.h"
#include "tls/tls.h"
#include "wire/assembler.h"
#include "wire/message.h"

namespace testudo::net {

using Timer = testudo::Timer;

// The real Clock (base/clock.h): steady and system time, and timers on the loop's thread.
class EventLoop final : public Clock {
 public:
  EventLoop();
  ~EventLoop() override;
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Runs handlers until stop() is called. Call from one thread only.
  void run();
  // Thread-safe. run() returns after the handler now running, if any.
  void stop();
  bool stopped() const;
  // Thread-safe: runs `fn` on the loop's thread.
  void post(std::function<void()> fn) override;

  // Clock: calls `fn` once after `delay` / every `period`, on the loop's thread, until the
  // returned timer is cancelled or destroyed.
  TimePoint now() const override { return std::chrono::steady_clock::now(); }
  std::int64_t unix_micros() const override;
  std::unique_ptr<Timer> after(std::chrono::milliseconds delay, std::function<void()> fn) override;
  std::unique_ptr<Timer> every(std::chrono::milliseconds period, std::function<void()> fn) override;
  // Calls `fn(signal)` on the loop's thread when one of `signals` arrives (SIGINT, SIGTERM...).
  void on_signals(std::vector<int> signals, std::function<void(int)> fn);

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// The segments after the first of a message that a relay sends while they still arrive
// (Connection::send_streamed), in parts, as its reading side hands them on. The producer
// pushes parts and then finishes or abandons; the sending connection takes them in order.
// Loop thread only.
class OutgoingStream {
 public:
  // `sizes`: of every segment of the message, the first included (its head announces them).
  explicit OutgoingStream(std::vector<std::uint64_t> sizes) : sizes_(std::move(sizes)) {}
  const std::vector<std::uint64_t>& sizes() const { return sizes_; }

  // --- the producer's side
  // The next part (the bytes of the segments after the first, in order). Dropped at once if
  // the sending connection has closed.
  void push(SharedBytes part);
  void finish();   // every part has been pushed
  void abandon();  // the message will never be complete: the receiver is told to drop it
  // The sending connection closed: nothing pushed goes anywhere any more.
  bool detached() const { return detached_; }

  // --- the sending connection's side
  enum class State { kOpen, kFinished, kAbandoned };
  State state() const { return state_; }
  std::deque<SharedBytes>& parts() { return parts_; }
  // Called on push, finish and abandon (the connection wakes its writer).
  void set_wake(std::function<void()> wake) { wake_ = std::move(wake); }
  void detach();

 private:
  std::vector<std::uint64_t> sizes_;
  std::deque<SharedBytes> parts_;
  State state_ = State::kOpen;
  bool detached_ = false;
  std::function<void()> wake_;
};

// One authenticated-or-not TLS session with a peer. Handlers are called on the loop's
// thread. After on_close has run once, no handler is called again and the connection drops
// its handlers (so they may safely capture their owner).
class Connection {
 public:
  struct Handlers {
    std::function<void(wire::Message&&)> on_message;
    std::function<void(const Status& reason)> on_close;
    // Relaying (offer_streams): a large message whose head and first segment are in (`first`;
    // `sizes`: of all its segments). Return where the rest goes as it arrives, or null to have
    // it delivered whole through on_message. While the sink is backlogged(), nothing more is
    // read from this connection.
    std::function<std::shared_ptr<wire::StreamSink>(const wire::Message& first,
                                                    std::span<const std::uint64_t> sizes)>
        on_stream_offer;
  };

  virtual ~Connection() = default;
  // Starts reading. Messages are decoded under the current limits (see set_limits).
  virtual void start(Handlers handlers) = 0;
  // Replaces the handlers of a started connection (e.g. after its handshake phase).
  virtual void set_handlers(Handlers handlers) = 0;
  // Queues `message` for sending; messages go out in order, one write in flight. Sending on
  // a closed connection is a no-op.
  virtual void send(wire::Message message) = 0;
  // Queues a message whose segments after the first are still arriving: `first` (envelope and
  // first segment) goes out with a head announcing rest->sizes(), then rest's parts as they
  // are pushed; messages queued later wait behind it, overtakers go between its frames. An
  // abandoned rest ends it with an abandoning frame (wire/message.h). On a closed connection,
  // or when it closes, rest is detached.
  virtual void send_streamed(wire::Message first, std::shared_ptr<OutgoingStream> rest) = 0;
  // Whether a streamed message is queued or being sent here.
  virtual bool sending_stream() const = 0;
  // Bytes of the messages queued here and not yet being written (a streamed message counts
  // its first part): what a peer that does not read makes this side hold.
  virtual std::uint64_t queued_bytes() const = 0;
  // Thread-safe: the one member any thread may call, also while the loop's thread sends,
  // reads or closes the connection. If the connection is open and idle (no queued message, no
  // write in progress, no unsent bytes) and `message` is small (<= 256 KiB framed), encrypts
  // it and writes it to the socket on the calling thread, sparing the loop a wake-up; bytes
  // the socket does not take at once are sent by the loop, before anything queued later.
  // Returns true when `message` is on its way (its bytes are copied: the caller may drop it
  // at once), false when nothing was done and the caller should post send() to the loop's
  // thread instead (busy, large or closed).
  // Order: a message is written before anything send() queues after this returns, but a
  // send() the caller posted earlier and the loop has not run yet is not queued: a caller
  // mixing both must use send_now only while none of its posted sends is pending.
  // Lifetime: the caller holds a shared_ptr for the call; if it turns out to be the last
  // reference, the connection is destroyed on the caller's thread (asio allows that, and
  // nothing of the connection runs on the loop then).
  virtual bool send_now(const wire::Message& message) = 0;
  // Closes now (queued messages are dropped) and calls on_close(reason) once.
  virtual void close(const Status& reason) = 0;
  // Closes after every queued message has been written (or after `grace`).
  virtual void close_after_flush(const Status& reason, std::chrono::milliseconds grace) = 0;
  virtual bool is_open() const = 0;
  // Flow control: while paused, nothing more is read once the message being read is complete
  // (the peer's further sends wait in TCP's buffers and then in its own queue); resuming reads
  // on. Sending is not affected.
  virtual void pause_reading(bool paused) = 0;
  // Relaying: offer messages with at least this many bytes after their first segment to
  // Handlers::on_stream_offer (0: never, the default).
  virtual void offer_streams(std::uint64_t min_rest_bytes) = 0;

  virtual void set_limits(const wire::Limits& limits) = 0;
  virtual const std::string& peer_address() const = 0;  // "127.0.0.1:40112"
  // Exporter value of this TLS session (see tls::export_keying_material).
  virtual StatusOr<std::array<std::byte, 32>> export_keying_material(std::string_view label,
                                                                     std::string_view context) = 0;
  virtual StatusOr<std::string> peer_fingerprint() = 0;
  // Facts of the peer's leaf certificate (key fingerprint, CN, serial, validity...), see
  // tls::peer_certificate_facts; kFailedPrecondition if the peer presented none.
  virtual StatusOr<tls::CertificateFacts> peer_certificate() = 0;
  // PEM of the certificates the peer sent, leaf first (for tls::ChainVerifier in CA mode).
  virtual StatusOr<std::vector<std::string>> peer_certificate_chain() = 0;
  // Bytes received / sent on this connection so far (application data).
  virtual std::uint64_t bytes_received() const = 0;
};

struct ListenOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;  // 0: the kernel picks
  tls::ServerOptions tls;
  // A TCP connection must finish its TLS handshake within this time.
  std::chrono::milliseconds handshake_timeout{10'000};
  // Connections in their TLS handshake at once. A new connection beyond this aborts the
  // oldest pending handshake (not the new one): a flood of idle connections then only delays
  // real peers by its own churn and cannot lock them out (T12).
  std::size_t max_pending_handshakes = 256;
  // Told of every failed TLS handshake (peer "host:port", why), on the loop's thread, instead
  // of a log line each: e.g. to sum a flood per host. Unset: logged at info level.
  std::function<void(const std::string& peer, const std::string& reason)> on_handshake_failed;
  // Data connections (net/data_link.h): a connection whose first byte may start a data hello
  // is read up to its hello (within handshake_timeout, counted among the pending handshakes)
  // and handed here with its socket (blocking mode off), on the loop's thread. A malformed
  // hello counts as a failed handshake. Unset: every connection is TLS.
  std::function<void(UniqueFd socket, const DataHello& hello, const std::string& peer)> on_data_connection;
};

// Accepts TCP connections, runs the server side of the TLS handshake and hands each
// established connection (limits: wire::Limits::pre_auth(), not yet started) to on_accept.
// create() fails with kAlreadyExists when another socket holds the address.
class Listener {
 public:
  using AcceptHandler = std::function<void(std::shared_ptr<Connection>)>;
  static StatusOr<std::unique_ptr<Listener>> create(EventLoop& loop, const ListenOptions& options,
                                                    AcceptHandler on_accept);
  virtual ~Listener() = default;
  virtual std::uint16_t port() const = 0;
  virtual std::string address() const = 0;
  virtual void close() = 0;
};

struct DialOptions {
  std::string host;
  std::uint16_t port = 0;
  tls::ClientOptions tls;  // carries the pinned controller fingerprint
  std::chrono::milliseconds timeout{10'000};  // TCP connect + TLS handshake
};

// Connects and runs the client side of the TLS handshake, verifying the server by its pinned
// fingerprint before anything is written. Calls `done` once on the loop's thread with a
// connection (limits: wire::Limits{}, not yet started) or the reason it failed:
// kUnauthenticated for a server whose certificate does not match the pin.
void dial(EventLoop& loop, const DialOptions& options,
          std::function<void(StatusOr<std::shared_ptr<Connection>>)> done);

}  // namespace testudo::net
