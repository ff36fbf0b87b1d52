// asio implementation of net.h over tls::Session. Everything here runs on one io_context
// thread per EventLoop (see net.h), with one exception: Connection::send_now, which any thread
// may call. So each TlsConnection has a mutex (`mutex_`) that guards its TLS session (every
// call into it, its output buffer included), the socket's descriptor while it is written or
// closed, and the flags send_now reads (open_, closing_, writing_, queue_). The loop thread
// writes those flags only under the lock, and may read them without it (it is their only
// writer). The lock is never held across a co_await, nor while a handler runs.
//
// TLS is driven directly on the socket (tls/session.h says why): the session reads ciphertext
// from the non-blocking socket itself and collects its records in an output buffer, which the
// connection's writer sends in large chunks. asio is used only for readiness (async_wait),
// timers and the acceptor. No OpenSSL header is included here: OpenSSL is private to tls/.
#include "net/net.h"

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>

#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <list>
#include <optional>
#include <mutex>

#include "base/log.h"
#include "tls/session.h"
#include "wire/assembler.h"

namespace testudo::net {
namespace {

using asio::ip::tcp;
constexpr auto kAsTuple = asio::experimental::as_tuple(asio::use_awaitable);

// Segments at most this big are copied into the write staging buffer so a small message
// leaves as one TLS record and one syscall; bigger ones are encrypted from where they lie.
constexpr std::size_t kCopyThreshold = 16 * 1024;
// A write batch takes queued messages until it holds this many bytes.
constexpr std::size_t kBatchBytes = 4u << 20;
// Plaintext handed to one SSL_write, and ciphertext gathered before it is sent: bounds the
// sink buffer of a connection moving a large message.
constexpr std::size_t kWriteChunk = 256 * 1024;
// OpenSSL's read-ahead buffer (ciphertext read per recv). The controller holds one per peer,
// so its accepted connections get a smaller one than clients' and engines' single connection.
constexpr std::size_t kServerReadBuffer = 64 * 1024;
constexpr std::size_t kClientReadBuffer = 256 * 1024;
// An idle connection keeps at most this much sink capacity.
constexpr std::size_t kIdleOutCapacity = 64 * 1024;
// send_now takes messages up to this size (frames included); bigger ones go through the
// writer, which encrypts from the segments in place and interleaves sending with encrypting.
constexpr std::size_t kSendNowMaxBytes = 256 * 1024;
// Messages of kinds that may overtake (wire::may_overtake) up to this size are sent between
// the frames of a large message being written, instead of after all of it: a heartbeat ack
// then never waits behind a gigabyte on a slow link.
constexpr std::size_t kOvertakerMaxBytes = 64 * 1024;

std::string describe(const asio::error_code& ec) {
  if (ec == asio::error::eof) return "connection closed by peer";
  return ec.message();
}

std::string endpoint_text(const tcp::socket& s) {
  asio::error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return "unknown";
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

// A TCP socket and the TLS session on it.
struct TlsSocket {
  explicit TlsSocket(tcp::socket s) : socket(std::move(s)) {}
  ~TlsSocket() { close(); }

  tcp::socket socket;
  std::unique_ptr<tls::Session> session;

  bool has_output() const { return session->has_output(); }

  // Closes the socket after detaching the session from it (see tls::Session::detach_socket).
  void close() {
    if (session) session->detach_socket();
    asio::error_code ignored;
    if (socket.is_open()) socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
  }
};

StatusOr<std::shared_ptr<TlsSocket>> make_tls_socket(tcp::socket socket, const tls::Context& context,
                                                     std::size_t read_buffer) {
  auto ts = std::make_shared<TlsSocket>(std::move(socket));
  asio::error_code ec;
  ts->socket.non_blocking(true, ec);
  if (!ec) ts->socket.set_option(tcp::no_delay(true), ec);
  if (ec) return unavailable("socket setup: " + ec.message());
  TESTUDO_ASSIGN_OR_RETURN(ts->session,
                           tls::Session::over_socket(context, static_cast<int>(ts->socket.native_handle()), read_buffer));
  return ts;
}

// Sends the session's output. The only writer of a socket's bytes is whoever calls this (or
// TlsConnection::send_now, which writes only when the output is empty). `mutex`, if given, is
// held around every touch of the session and the socket, and never across the wait.
// Writes what the socket takes of the output; false with `ec` set when it stopped short (on
// would_block too), true when all is sent. (Not a coroutine: gcc 12 crashed compiling locked
// sections inside this file's coroutines, so every locked section lives in a plain function.)
bool write_out(TlsSocket& ts, std::mutex* mutex, asio::error_code& ec) {
  std::unique_lock<std::mutex> lock;
  if (mutex != nullptr) lock = std::unique_lock(*mutex);
  while (ts.has_output()) {
    const std::span<const std::byte> out = ts.session->output();
    std::size_t n = ts.socket.write_some(asio::buffer(out.data(), out.size()), ec);
    if (ec) return false;
    ts.session->consume_output(n);
  }
  return true;
}

asio::awaitable<Status> flush_out(TlsSocket& ts, std::mutex* mutex = nullptr) {
  for (;;) {
    asio::error_code ec;
    if (write_out(ts, mutex, ec)) co_return ok_status();
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      auto [wec] = co_await ts.socket.async_wait(tcp::socket::wait_write, kAsTuple);
      if (wec) co_return unavailable(describe(wec));
      continue;
    }
    co_return unavailable(describe(ec));
  }
}

// Runs the TLS handshake of `ts` (in accept or connect state) to its end.
asio::awaitable<Status> run_handshake(TlsSocket& ts) {
  for (;;) {
    if (!ts.socket.is_open()) co_return unavailable("timed out");
    tls::Session::Step step = ts.session->handshake();
    Status sent = co_await flush_out(ts);  // our flight, or the alert that tells the peer why
    if (step.failed()) co_return unavailable(step.failure);
    if (!sent.ok()) co_return sent;
    if (!step.want_read) co_return ok_status();
    auto [ec] = co_await ts.socket.async_wait(tcp::socket::wait_read, kAsTuple);
    if (ec) co_return unavailable(ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor
                                      ? "timed out"
                                      : describe(ec));
  }
}

// Bytes `m` takes on the wire, near enough to size a write batch.
std::size_t approximate_bytes(const wire::Message& m) {
  std::size_t bytes = 2 * wire::kFrameHeaderBytes + 64 + m.envelope.text.size() + 4 * m.envelope.targets.size();
  for (const SharedBytes& seg : m.segments) bytes += seg.size() + wire::kFrameHeaderBytes + 8;
  return bytes;
}

// Appends a head frame with payload `head`, then the data frames of `segments`, to `out`;
// `overtaking` marks every frame as part of a message sent inside another (wire/message.h).
void append_frames(std::span<const std::byte> head, std::span<const SharedBytes> segments, std::vector<std::byte>& out,
                   bool overtaking = false) {
  auto append = [&out](std::span<const std::byte> bytes) { out.insert(out.end(), bytes.begin(), bytes.end()); };
  append(wire::encode_frame_header({wire::FrameType::kHead, static_cast<std::uint32_t>(head.size()), overtaking}));
  append(head);
  const std::size_t frame = wire::Limits{}.max_frame_bytes;
  for (const SharedBytes& seg : segments) {
    for (std::size_t off = 0; off < seg.size(); off += frame) {
      const std::size_t len = std::min(frame, seg.size() - off);
      append(wire::encode_frame_header({wire::FrameType::kData, static_cast<std::uint32_t>(len), overtaking}));
      append(seg.span().subspan(off, len));
    }
  }
}

// Appends the frames of `m` (head, then each segment's data frames) to `out`.
void encode_copy(const wire::Message& m, std::vector<std::byte>& out, bool overtaking = false) {
  append_frames(wire::encode_head(m.envelope, m.segments), m.segments, out, overtaking);
}

// Whether `m` may be sent inside a large message already on its way (wire::may_overtake, and
// small: an overtaker is copied and encrypted in one go).
bool overtakes(const wire::Message& m) {
  return wire::may_overtake(m.envelope.kind) && approximate_bytes(m) <= kOvertakerMaxBytes;
}

class TimerImpl final : public Timer {
 public:
  TimerImpl(asio::io_context& io, std::chrono::milliseconds period, bool repeat, std::function<void()> fn)
      : state_(std::make_shared<State>(io, period, repeat, std::move(fn))) {
    arm(state_);
  }
  ~TimerImpl() override { cancel(); }
  void cancel() override {
    state_->cancelled = true;
    state_->timer.cancel();
  }

 private:
  struct State {
    State(asio::io_context& io, std::chrono::milliseconds p, bool r, std::function<void()> f)
        : timer(io), period(p), repeat(r), fn(std::move(f)) {}
    asio::steady_timer timer;
    std::chrono::milliseconds period;
    bool repeat;
    bool cancelled = false;
    std::function<void()> fn;
  };
  static void arm(const std::shared_ptr<State>& s) {
    s->timer.expires_after(s->period);
    s->timer.async_wait([s](const asio::error_code& ec) {
      if (ec || s->cancelled) return;
      if (s->repeat) arm(s);
      s->fn();
    });
  }
  std::shared_ptr<State> state_;
};

class TlsConnection final : public Connection, public std::enable_shared_from_this<TlsConnection> {
 public:
  TlsConnection(std::shared_ptr<TlsSocket> ts, wire::Limits limits)
      : ts_(std::move(ts)), executor_(ts_->socket.get_executor()), assembler_(limits),
        peer_(endpoint_text(ts_->socket)), grace_timer_(executor_), wake_(executor_), resume_(executor_) {
    wake_.expires_at(asio::steady_timer::time_point::max());
    resume_.expires_at(asio::steady_timer::time_point::max());
  }

  void start(Handlers handlers) override {
    handlers_ = std::move(handlers);
    asio::co_spawn(executor_, read_loop(shared_from_this()), asio::detached);
    start_writer();
  }

  void set_handlers(Handlers handlers) override {
    if (open_) handlers_ = std::move(handlers);
  }

  void send(wire::Message message) override {
    if (!open_ || closing_) return;
    {
      std::lock_guard lock(mutex_);
      if (overtakes(message)) ++overtakers_queued_;
      queued_bytes_ += approximate_bytes(message);
      queue_.push_back({std::move(message), nullptr});
    }
    start_writer();
    wake_writer();
  }

  void send_streamed(wire::Message first, std::shared_ptr<OutgoingStream> rest) override {
    if (!open_ || closing_) return rest->detach();
    rest->set_wake([weak = weak_from_this()] {
      if (auto self = weak.lock()) {
        self->start_writer();
        self->wake_writer();
      }
    });
    {
      std::lock_guard lock(mutex_);
      queued_bytes_ += approximate_bytes(first);
      queue_.push_back({std::move(first), std::move(rest)});
    }
    ++streams_queued_;
    start_writer();
    wake_writer();
  }
  bool sending_stream() const override { return streams_queued_ > 0; }
  std::uint64_t queued_bytes() const override { return queued_bytes_.load(std::memory_order_relaxed); }

  // Any thread. Encrypts and writes at once when nothing else is on its way out: no queued
  // message, no batch being written, no unsent ciphertext (so order with send() holds).
  bool send_now(const wire::Message& message) override {
    std::size_t payload = 0;
    for (const SharedBytes& seg : message.segments) payload += seg.size();
    if (payload > kSendNowMaxBytes) return false;
    std::vector<std::byte> plain;
    plain.reserve(payload + message.envelope.text.size() + 256);
    encode_copy(message, plain);
    if (plain.size() > kSendNowMaxBytes) return false;

    std::unique_lock lock(mutex_);
    if (!open_ || closing_ || writing_ || !queue_.empty() || ts_->has_output()) return false;
    tls::Session& session = *ts_->session;
    if (Status written = session.write(plain); !written.ok()) {
      // The session is broken: the loop closes the connection (as the writer would).
      lock.unlock();
      asio::post(executor_, [self = shared_from_this(), failure = written.message()] {
        self->close(unavailable("write failed: " + failure));
      });
      return true;
    }
    const std::span<const std::byte> out = session.output();
    const ssize_t n = ::send(ts_->socket.native_handle(), out.data(), out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) session.consume_output(static_cast<std::size_t>(n));
    if (!session.has_output()) {
      session.trim_output(kIdleOutCapacity);
      return true;
    }
    // A full socket buffer (or an error, which the writer then meets and reports): the
    // writer sends the rest, before anything else.
    lock.unlock();
    asio::post(executor_, [self = shared_from_this()] {
      self->start_writer();
      self->wake_writer();
    });
    return true;
  }

  void close(const Status& reason) override {
    if (!open_) return;
    std::deque<Outgoing> dropped;
    {
      std::lock_guard lock(mutex_);
      open_ = false;
      ts_->close();
      dropped.swap(queue_);
      overtakers_queued_ = 0;
      queued_bytes_ = 0;
    }
    grace_timer_.cancel();
    wake_.cancel();
    resume_.cancel();
    // Relayed messages: what their producers push from now on goes nowhere; a message being
    // read for a relay is abandoned (its receivers drop it).
    for (Outgoing& entry : dropped) {
      if (entry.rest) entry.rest->detach();
    }
    if (stream_being_sent_) stream_being_sent_->detach();
    streams_queued_ = 0;
    assembler_.abandon_stream(reason);
    dropped.clear();
    // close() may run inside on_message: keep that handler alive until it returns and drop
    // the handlers (and whatever they captured) afterwards.
    auto on_close = handlers_.on_close;
    asio::post(executor_, [self = shared_from_this()] { self->handlers_ = {}; });
    if (on_close) on_close(reason);
  }

  void close_after_flush(const Status& reason, std::chrono::milliseconds grace) override {
    if (!open_ || closing_) return;
    bool idle;
    {
      std::lock_guard lock(mutex_);
      closing_ = true;
      idle = !writing_ && queue_.empty() && !ts_->has_output();
    }
    close_reason_ = reason;
    if (idle) return close(reason);
    start_writer();
    wake_writer();
    grace_timer_.expires_after(grace);
    grace_timer_.async_wait([self = shared_from_this()](const asio::error_code& ec) {
      if (!ec) self->close(self->close_reason_);
    });
  }

  bool is_open() const override { return open_; }
  void pause_reading(bool paused) override {
    paused_ = paused;
    if (!paused) resume_.cancel();  // wakes the reader if it waits
  }
  void offer_streams(std::uint64_t min_rest_bytes) override { assembler_.offer_streams(min_rest_bytes); }
  void set_limits(const wire::Limits& limits) override { assembler_.set_limits(limits); }
  const std::string& peer_address() const override { return peer_; }
  std::uint64_t bytes_received() const override { return bytes_received_; }

  StatusOr<std::array<std::byte, 32>> export_keying_material(std::string_view label,
                                                             std::string_view context) override {
    std::lock_guard lock(mutex_);
    return ts_->session->export_keying_material(label, context);
  }
  StatusOr<std::string> peer_fingerprint() override {
    std::lock_guard lock(mutex_);
    return ts_->session->peer_fingerprint();
  }
  // Read off the session on each call: the peer's certificate cannot change after the
  // handshake (no renegotiation), and callers ask once, at admission.
  StatusOr<tls::CertificateFacts> peer_certificate() override {
    std::lock_guard lock(mutex_);
    return ts_->session->peer_certificate();
  }
  StatusOr<std::vector<std::string>> peer_certificate_chain() override {
    std::lock_guard lock(mutex_);
    return ts_->session->peer_certificate_chain();
  }

 private:
  // --- reading ---

  struct ReadStep {
    std::size_t n = 0;       // bytes read (0: none, see want_read and failure)
    bool want_read = false;  // wait for the socket, then try again
    bool output = false;     // the session has bytes to send (e.g. an alert)
    std::string failure;
  };
  ReadStep read_some(std::byte* p, std::size_t size) {
    std::lock_guard lock(mutex_);
    tls::Session::Step read = ts_->session->read(p, size);
    return ReadStep{read.bytes, read.want_read, ts_->has_output(), std::move(read.failure)};
  }

  asio::awaitable<Status> read_exact(void* data, std::size_t size) {
    auto* p = static_cast<std::byte*>(data);
    while (size > 0) {
      if (!open_) co_return unavailable("connection closed");
      ReadStep step = read_some(p, size);
      if (step.output) wake_writer();  // e.g. an alert: the writer sends it
      if (step.n > 0) {
        p += step.n;
        size -= step.n;
        bytes_received_ += step.n;
        continue;
      }
      if (!step.want_read) co_return unavailable(step.failure);
      auto [ec] = co_await ts_->socket.async_wait(tcp::socket::wait_read, kAsTuple);
      if (ec) co_return unavailable(describe(ec));
    }
    co_return ok_status();
  }

  // Reads one frame into place (wire::MessageAssembler says where): a message it completed,
  // or none yet. Rules and limits are checked before the payload is read.
  asio::awaitable<StatusOr<std::optional<wire::Message>>> read_frame() {
    std::array<std::byte, wire::kFrameHeaderBytes> header;
    Status st = co_await read_exact(header.data(), header.size());
    if (!st.ok()) co_return st;
    auto payload = assembler_.begin_frame(header);
    if (!payload.ok()) co_return payload.status();
    st = co_await read_exact(payload->data(), payload->size());
    if (!st.ok()) co_return st;
    co_return assembler_.end_frame();
  }

  // Messages are handed over as their last frame arrives; an overtaking one arrives in the
  // middle of the message it overtook. A pause takes effect between messages; a relayed
  // message's backlog (its sink's) holds the reader between frames.
  static asio::awaitable<void> read_loop(std::shared_ptr<TlsConnection> self) {
    while (self->open_) {
      if (self->paused_ && !self->assembler_.in_message()) {
        co_await self->resume_.async_wait(kAsTuple);  // cancelled by pause_reading(false) or close()
        continue;
      }
      if (wire::StreamSink* sink = self->assembler_.stream(); sink && sink->backlogged()) {
        self->room_ = false;
        sink->when_room([weak = std::weak_ptr<TlsConnection>(self)] {
          if (auto c = weak.lock()) {
            c->room_ = true;
            c->resume_.cancel();
          }
        });
        if (!self->room_) co_await self->resume_.async_wait(kAsTuple);  // or close()
        continue;
      }
      auto m = co_await self->read_frame();
      if (!self->open_) break;
      if (!m.ok()) {
        self->close(m.status());
        break;
      }
      if (*m && self->handlers_.on_message) self->handlers_.on_message(std::move(**m));
      if (const wire::Message* first = self->assembler_.offer()) {
        std::shared_ptr<wire::StreamSink> sink;
        if (self->handlers_.on_stream_offer) sink = self->handlers_.on_stream_offer(*first, self->assembler_.offer_sizes());
        self->assembler_.answer_offer(std::move(sink));
        // Closed by the handler: nothing more arrives for the sink.
        if (!self->open_) self->assembler_.abandon_stream(unavailable("connection closed"));
      }
    }
  }

  // --- writing: one writer coroutine per connection sends the queue in batches ---

  void start_writer() {
    if (writer_started_ || !open_) return;
    writer_started_ = true;
    asio::co_spawn(executor_, write_loop(shared_from_this()), asio::detached);
  }
  void wake_writer() {
    if (writer_waiting_) wake_.cancel();
  }

  enum class WriteStep { kFlush, kBatch, kStream, kClose, kWait };
  WriteStep next_write_step() {
    std::lock_guard lock(mutex_);
    if (ts_->has_output()) return WriteStep::kFlush;  // first: e.g. what a partial send_now left
    if (!queue_.empty()) return queue_.front().rest ? WriteStep::kStream : WriteStep::kBatch;
    if (closing_) return WriteStep::kClose;
    ts_->session->trim_output(kIdleOutCapacity);
    return WriteStep::kWait;
  }

  static asio::awaitable<void> write_loop(std::shared_ptr<TlsConnection> self) {
    TlsConnection& c = *self;
    while (c.open_) {
      const WriteStep next = c.next_write_step();
      Status st = ok_status();
      if (next == WriteStep::kFlush) {
        st = co_await flush_out(*c.ts_, &c.mutex_);
      } else if (next == WriteStep::kBatch) {
        st = co_await c.write_batch();
      } else if (next == WriteStep::kStream) {
        st = co_await c.write_stream();
      } else if (next == WriteStep::kClose) {
        c.close(c.close_reason_);
        break;
      } else {
        c.writer_waiting_ = true;
        co_await c.wake_.async_wait(kAsTuple);  // cancelled by wake_writer(): there is work
        c.writer_waiting_ = false;
        continue;
      }
      if (!c.open_) break;
      if (!st.ok()) {
        c.close(unavailable("write failed: " + st.message()));
        break;
      }
    }
  }

  void stage(std::span<const std::byte> bytes) {
    if (pieces_.empty() || !pieces_.back().staged) pieces_.push_back({true, staging_.size(), 0, false});
    staging_.insert(staging_.end(), bytes.begin(), bytes.end());
    pieces_.back().size += bytes.size();
  }
  // `mid_message`: more frames of the same message follow these bytes (an overtaker may go
  // between them, see encrypt_overtakers).
  void reference(std::span<const std::byte> bytes, bool mid_message) {
    pieces_.push_back({false, reinterpret_cast<std::size_t>(bytes.data()), bytes.size(), mid_message});
  }

  std::size_t append_to_batch(const wire::Message& m) {
    std::vector<std::byte> head = wire::encode_head(m.envelope, m.segments);
    stage(wire::encode_frame_header({wire::FrameType::kHead, static_cast<std::uint32_t>(head.size())}));
    stage(head);
    std::size_t total = head.size() + wire::kFrameHeaderBytes;
    const std::size_t frame = wire::Limits{}.max_frame_bytes;
    for (std::size_t i = 0; i < m.segments.size(); ++i) {
      const SharedBytes& seg = m.segments[i];
      for (std::size_t off = 0; off < seg.size(); off += frame) {
        std::size_t len = std::min(frame, seg.size() - off);
        stage(wire::encode_frame_header({wire::FrameType::kData, static_cast<std::uint32_t>(len)}));
        auto part = seg.span().subspan(off, len);
        const bool last = off + len == seg.size() && i + 1 == m.segments.size();
        if (len <= kCopyThreshold) stage(part); else reference(part, !last);
        total += len + wire::kFrameHeaderBytes;
      }
    }
    return total;
  }

  // Moves queued messages (up to about kBatchBytes, up to a streamed one) into batch_ and marks
  // a write in progress.
  void take_batch() {
    std::lock_guard lock(mutex_);
    writing_ = true;
    std::size_t bytes = 0;
    while (!queue_.empty() && !queue_.front().rest && bytes < kBatchBytes) {
      const wire::Message& m = queue_.front().message;
      const std::size_t size = approximate_bytes(m);
      bytes += size;
      queued_bytes_ -= size;
      if (overtakers_queued_ > 0 && overtakes(m)) --overtakers_queued_;
      batch_.push_back(std::move(queue_.front().message));  // keeps referenced segments alive
      queue_.pop_front();
    }
  }
  void set_writing(bool writing) {
    std::lock_guard lock(mutex_);
    writing_ = writing;
  }
  // Encrypts n bytes into the session's output; `full`: a chunk's worth of ciphertext waits.
  Status encrypt(const std::byte* p, std::size_t n, bool& full) {
    std::lock_guard lock(mutex_);
    TESTUDO_RETURN_IF_ERROR(ts_->session->write({p, n}));
    full = ts_->session->output().size() >= kWriteChunk;
    return ok_status();
  }

  // Between two frames of a large message: encrypts every queued message that may overtake it
  // (overtakes()), in their order, with the overtaking flag on each frame, so they leave
  // before the rest of the large one. They leave the queue; everything else keeps its place.
  Status encrypt_overtakers(bool& full) {
    std::lock_guard lock(mutex_);
    if (overtakers_queued_ == 0) return ok_status();
    std::vector<std::byte> plain;
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->rest || !overtakes(it->message)) {
        ++it;
        continue;
      }
      encode_copy(it->message, plain, /*overtaking=*/true);
      queued_bytes_ -= approximate_bytes(it->message);
      it = queue_.erase(it);
    }
    overtakers_queued_ = 0;
    if (plain.empty()) return ok_status();
    TESTUDO_RETURN_IF_ERROR(ts_->session->write(plain));
    full = ts_->session->output().size() >= kWriteChunk;
    return ok_status();
  }

  // Encrypts and sends queued messages (up to kBatchBytes of them), kWriteChunk at a time.
  asio::awaitable<Status> write_batch() {
    batch_.clear();
    staging_.clear();
    pieces_.clear();
    take_batch();
    for (const wire::Message& m : batch_) append_to_batch(m);
    // Copied: staging_ and pieces_ are reused by the next batch only after this one ends.
    Status st = ok_status();
    for (std::size_t i = 0; i < pieces_.size() && st.ok(); ++i) {
      const Piece& piece = pieces_[i];
      const std::byte* p =
          piece.staged ? staging_.data() + piece.offset : reinterpret_cast<const std::byte*>(piece.offset);
      std::size_t left = piece.size;
      while (left > 0) {
        if (!open_) {
          st = unavailable("connection closed");
          break;
        }
        const std::size_t n = std::min(left, kWriteChunk);
        bool full = false;
        st = encrypt(p, n, full);
        if (!st.ok()) break;
        p += n;
        left -= n;
        if (full) {
          st = co_await flush_out(*ts_, &mutex_);
          if (!st.ok()) break;
        }
      }
      if (st.ok() && piece.mid_message) {
        bool full = false;
        st = encrypt_overtakers(full);
        if (st.ok() && full) st = co_await flush_out(*ts_, &mutex_);
      }
    }
    if (st.ok()) st = co_await flush_out(*ts_, &mutex_);
    batch_.clear();
    set_writing(false);
    co_return st;
  }

  // Encrypts `bytes` kWriteChunk at a time, sending the ciphertext whenever a chunk's worth waits.
  asio::awaitable<Status> encrypt_and_send(std::span<const std::byte> bytes) {
    while (!bytes.empty()) {
      if (!open_) co_return unavailable("connection closed");
      const std::size_t n = std::min(bytes.size(), kWriteChunk);
      bool full = false;
      Status st = encrypt(bytes.data(), n, full);
      if (!st.ok()) co_return st;
      bytes = bytes.subspan(n);
      if (full) {
        st = co_await flush_out(*ts_, &mutex_);
        if (!st.ok()) co_return st;
      }
    }
    co_return ok_status();
  }
  // Encrypts the queued overtakers and sends what is encrypted.
  asio::awaitable<Status> send_overtakers() {
    bool full = false;
    Status st = encrypt_overtakers(full);
    if (!st.ok()) co_return st;
    co_return co_await flush_out(*ts_, &mutex_);
  }

  // The message at the front of the queue, whose segments after the first still arrive
  // (send_streamed): its head and first segment, then each part as it is pushed, one data frame
  // per part, with overtakers between frames. While no part is there, what is encrypted is
  // sent, overtakers go out, and the writer waits for the producer. Everything queued behind
  // it waits (a streamed message keeps its place in the order).
  asio::awaitable<Status> write_stream() {
    Outgoing entry;
    {
      std::lock_guard lock(mutex_);
      writing_ = true;
      entry = std::move(queue_.front());
      queue_.pop_front();
      queued_bytes_ -= approximate_bytes(entry.message);
    }
    stream_being_sent_ = entry.rest;
    OutgoingStream& rest = *entry.rest;
    std::vector<std::byte> first;
    append_frames(wire::encode_head_sized(entry.message.envelope, rest.sizes()), entry.message.segments, first);
    Status st = co_await encrypt_and_send(first);
    first = {};
    while (st.ok() && open_) {
      if (!rest.parts().empty()) {
        SharedBytes part = std::move(rest.parts().front());
        rest.parts().pop_front();
        const auto header = wire::encode_frame_header({wire::FrameType::kData, static_cast<std::uint32_t>(part.size())});
        st = co_await encrypt_and_send(header);
        if (st.ok()) st = co_await encrypt_and_send(part.span());
        part = {};  // its bytes are ciphertext now: the producer's window has room again
        if (st.ok()) st = co_await send_overtakers();
        continue;
      }
      if (rest.state() == OutgoingStream::State::kFinished) break;
      if (rest.state() == OutgoingStream::State::kAbandoned) {
        const auto header = wire::encode_frame_header({wire::FrameType::kData, 0, false, /*abandons=*/true});
        st = co_await encrypt_and_send(header);
        break;
      }
      st = co_await flush_out(*ts_, &mutex_);
      if (st.ok()) st = co_await send_overtakers();
      if (!st.ok() || !open_ || !rest.parts().empty() || rest.state() != OutgoingStream::State::kOpen) continue;
      writer_waiting_ = true;
      co_await wake_.async_wait(kAsTuple);  // cancelled by a push, finish, abandon, send() or close()
      writer_waiting_ = false;
    }
    if (st.ok()) st = co_await flush_out(*ts_, &mutex_);
    stream_being_sent_.reset();
    if (streams_queued_ > 0) --streams_queued_;
    set_writing(false);
    co_return st;
  }

  struct Outgoing {
    wire::Message message;
    std::shared_ptr<OutgoingStream> rest;  // send_streamed: the segments after the first, arriving
  };

  struct Piece {
    bool staged;
    std::size_t offset;  // into staging_ when staged, else the address of referenced bytes
    std::size_t size;
    bool mid_message;  // a frame boundary inside a message follows (referenced pieces only)
  };

  std::shared_ptr<TlsSocket> ts_;
  const asio::any_io_executor executor_;
  // Guards the TLS session (its output included) and the socket while written or closed, and the
  // writes of open_, closing_, writing_ and queue_ (see the top of this file).
  std::mutex mutex_;
  // Bytes of the messages in queue_ (approximate_bytes; a streamed one: its first part).
  std::atomic<std::uint64_t> queued_bytes_{0};
  wire::MessageAssembler assembler_;  // the reader's: frames into messages, under the current limits
  std::string peer_;
  Handlers handlers_;
  bool open_ = true;
  bool closing_ = false;
  Status close_reason_;
  asio::steady_timer grace_timer_;
  std::uint64_t bytes_received_ = 0;

  std::deque<Outgoing> queue_;  // guarded by mutex_
  std::size_t overtakers_queued_ = 0;  // messages in queue_ that overtakes(); guarded by mutex_
  bool writer_started_ = false;
  bool writer_waiting_ = false;
  bool writing_ = false;
  asio::steady_timer wake_;  // never expires; cancelled to wake the writer
  bool paused_ = false;        // pause_reading
  asio::steady_timer resume_;  // never expires; cancelled to wake a paused reader
  bool room_ = false;          // a relayed message's sink said it has room again (read_loop)
  std::size_t streams_queued_ = 0;  // send_streamed entries queued or being written
  std::shared_ptr<OutgoingStream> stream_being_sent_;
  std::vector<wire::Message> batch_;
  std::vector<std::byte> staging_;
  std::vector<Piece> pieces_;
};

// Closes `ts`'s socket unless `finished` is set first: the deadline of a connect or
// handshake. Both are shared with the timer's handler, which may run after the coroutine ends.
void arm_deadline(asio::steady_timer& timer, std::chrono::milliseconds timeout, std::shared_ptr<TlsSocket> ts,
                  std::shared_ptr<bool> finished) {
  timer.expires_after(timeout);
  timer.async_wait([ts, finished](const asio::error_code& ec) {
    if (ec || *finished) return;
    ts->close();
  });
}

}  // namespace

// ---------------- EventLoop ----------------

struct EventLoop::Impl {
  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  std::vector<std::unique_ptr<asio::signal_set>> signal_sets;
  std::unique_ptr<Timer> trim;  // declared after io: destroyed before it

  // Work other threads hand over (post). Not asio::post: asio wakes the loop thread while it
  // still holds its scheduler mutex, so the woken thread preempts the poster, blocks on that
  // mutex and sleeps again — two extra context switches per hand-off. Here the eventfd is
  // written after the inbox lock is released, and only when no wake-up is on its way yet.
  std::mutex inbox_mutex;
  std::vector<std::function<void()>> inbox;  // guarded by inbox_mutex
  bool wake_pending = false;                 // guarded by inbox_mutex
  asio::posix::stream_descriptor wake{io};   // an eventfd; declared after io

  void await_wake() {
    wake.async_wait(asio::posix::stream_descriptor::wait_read, [this](const asio::error_code& ec) {
      if (ec) return;  // the loop is going away
      std::uint64_t count = 0;
      [[maybe_unused]] auto n = ::read(wake.native_handle(), &count, sizeof count);
      std::vector<std::function<void()>> work;
      {
        std::lock_guard lock(inbox_mutex);
        work.swap(inbox);
        wake_pending = false;
      }
      for (auto& fn : work) fn();
      await_wake();
    });
  }
};

EventLoop::EventLoop() : impl_(std::make_unique<Impl>()) {
  const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) {
    // Without an eventfd (descriptor limit at start-up) there is nothing sensible to run.
    LOG_ERROR("net") << "eventfd: " << std::strerror(errno);
    std::abort();
  }
  impl_->wake.assign(fd);
  impl_->await_wake();
  // Large receive buffers released a moment ago are reused rather than zeroed afresh; the
  // ones nobody took within 200 ms go back to the kernel.
  impl_->trim = every(std::chrono::milliseconds(100), [] { SharedBytes::trim_cache(std::chrono::milliseconds(200)); });
}
EventLoop::~EventLoop() = default;

void OutgoingStream::push(SharedBytes part) {
  if (detached_ || state_ != State::kOpen) return;
  parts_.push_back(std::move(part));
  if (wake_) wake_();
}
void OutgoingStream::finish() {
  if (state_ != State::kOpen) return;
  state_ = State::kFinished;
  if (wake_) wake_();
}
void OutgoingStream::abandon() {
  if (state_ != State::kOpen) return;
  state_ = State::kAbandoned;
  if (wake_) wake_();
}
void OutgoingStream::detach() {
  detached_ = true;
  parts_.clear();
  wake_ = nullptr;
}
void EventLoop::run() { impl_->io.run(); }
void EventLoop::stop() { impl_->io.stop(); }
bool EventLoop::stopped() const { return impl_->io.stopped(); }

void EventLoop::post(std::function<void()> fn) {
  Impl& impl = *impl_;
  if (impl.io.get_executor().running_in_this_thread()) {
    asio::post(impl.io, std::move(fn));  // the loop's own queue: no lock, no wake-up
    return;
  }
  bool wake;
  {
    std::lock_guard lock(impl.inbox_mutex);
    impl.inbox.push_back(std::move(fn));
    wake = !impl.wake_pending;
    impl.wake_pending = true;
  }
  if (wake) {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(impl.wake.native_handle(), &one, sizeof one);
  }
}

std::int64_t EventLoop::unix_micros() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::unique_ptr<Timer> EventLoop::after(std::chrono::milliseconds delay, std::function<void()> fn) {
  return std::make_unique<TimerImpl>(impl_->io, delay, false, std::move(fn));
}
std::unique_ptr<Timer> EventLoop::every(std::chrono::milliseconds period, std::function<void()> fn) {
  return std::make_unique<TimerImpl>(impl_->io, period, true, std::move(fn));
}

void EventLoop::on_signals(std::vector<int> signals, std::function<void(int)> fn) {
  auto set = std::make_unique<asio::signal_set>(impl_->io);
  for (int s : signals) set->add(s);
  auto* raw = set.get();
  auto handler = std::make_shared<std::function<void(const asio::error_code&, int)>>();
  *handler = [raw, fn = std::move(fn), handler](const asio::error_code& ec, int sig) {
    if (ec) return;
    fn(sig);
    raw->async_wait(*handler);
  };
  raw->async_wait(*handler);
  impl_->signal_sets.push_back(std::move(set));
}

// ---------------- Listener ----------------

namespace {

class TlsListener final : public Listener {
 public:
  struct State {
    AcceptHandler on_accept;
    std::function<void(const std::string&, const std::string&)> on_handshake_failed;  // optional
    std::function<void(UniqueFd, const DataHello&, const std::string&)> on_data_connection;  // optional
    // Handshakes in progress, oldest first. When a new connection would exceed max_pending,
    // the oldest is aborted: a flood of idle connections then only ever delays real peers
    // by its own churn, it cannot lock them out (T12). A real handshake takes milliseconds.
    std::list<std::shared_ptr<TlsSocket>> pending;
    std::size_t max_pending = 0;
    std::chrono::steady_clock::time_point last_eviction_warning{};
    std::size_t evictions_since_warning = 0;
    std::chrono::milliseconds handshake_timeout{};
    bool closed = false;
  };

  TlsListener(asio::io_context& io, tls::Context context, tcp::acceptor acceptor,
              std::shared_ptr<State> state)
      : io_(io), context_(std::move(context)), acceptor_(std::make_shared<tcp::acceptor>(std::move(acceptor))),
        state_(std::move(state)) {
    asio::co_spawn(io_, accept_loop(acceptor_, context_, state_), asio::detached);
  }
  ~TlsListener() override { close(); }

  std::uint16_t port() const override { return port_cached(); }
  std::string address() const override {
    asio::error_code ec;
    return acceptor_->local_endpoint(ec).address().to_string();
  }
  void close() override {
    state_->closed = true;
    asio::error_code ignored;
    acceptor_->close(ignored);
  }

 private:
  std::uint16_t port_cached() const {
    asio::error_code ec;
    return acceptor_->local_endpoint(ec).port();
  }

  static asio::awaitable<void> accept_loop(std::shared_ptr<tcp::acceptor> acceptor,
                                           tls::Context context, std::shared_ptr<State> state) {
    for (;;) {
      auto [ec, socket] = co_await acceptor->async_accept(kAsTuple);
      if (state->closed || ec == asio::error::operation_aborted) co_return;
      if (ec) {
        // EMFILE and friends: log, breathe, go on serving the connections we have.
        LOG_WARN("net") << "accept failed: " << ec.message();
        asio::steady_timer pause(acceptor->get_executor(), std::chrono::milliseconds(50));
        co_await pause.async_wait(kAsTuple);
        continue;
      }
      if (state->pending.size() >= state->max_pending) {
        auto& oldest = state->pending.front();
        ++state->evictions_since_warning;
        auto now = std::chrono::steady_clock::now();
        if (now - state->last_eviction_warning > std::chrono::seconds(1)) {  // one line a second in a flood
          LOG_WARN("net") << state->pending.size() << " TLS handshakes pending: aborted the oldest "
                          << state->evictions_since_warning << " (latest from " << endpoint_text(oldest->socket)
                          << ")";
          state->last_eviction_warning = now;
          state->evictions_since_warning = 0;
        }
        oldest->close();
        state->pending.pop_front();
      }
      asio::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      asio::co_spawn(acceptor->get_executor(), handshake(std::move(socket), context, state), asio::detached);
    }
  }

  static asio::awaitable<void> handshake(tcp::socket socket, tls::Context context, std::shared_ptr<State> state) {
    std::string peer = endpoint_text(socket);
    auto made = make_tls_socket(std::move(socket), context, kServerReadBuffer);
    if (!made.ok()) {
      LOG_WARN("net") << "TLS setup for " << peer << " failed: " << made.status().message();
      co_return;
    }
    std::shared_ptr<TlsSocket> ts = std::move(made).value();
    state->pending.push_back(ts);
    auto finished = std::make_shared<bool>(false);
    asio::steady_timer deadline(ts->socket.get_executor());
    arm_deadline(deadline, state->handshake_timeout, ts, finished);
    std::optional<DataHello> data_hello;
    Status st = ok_status();
    if (state->on_data_connection) {
      auto hello = co_await read_data_hello(*ts);
      if (!hello.ok()) {
        st = hello.status();
      } else if (*hello) {
        data_hello = **hello;
      }
    }
    if (st.ok() && !data_hello) st = co_await run_handshake(*ts);
    *finished = true;
    deadline.cancel();
    state->pending.remove(ts);
    if (st.ok() && data_hello) {
      if (state->closed) co_return;
      ts->session->detach_socket();
      asio::error_code ignored;
      ts->socket.non_blocking(true, ignored);
      UniqueFd fd(ts->socket.release(ignored));
      state->on_data_connection(std::move(fd), *data_hello, peer);
      co_return;
    }
    if (!st.ok()) {
      if (state->on_handshake_failed) {
        state->on_handshake_failed(peer, st.message());
      } else {
        LOG_INFO("net") << "TLS handshake with " << peer << " failed: " << st.message();
      }
      co_return;
    }
    if (state->closed) co_return;
    auto conn = std::make_shared<TlsConnection>(std::move(ts), wire::Limits::pre_auth());
    state->on_accept(std::move(conn));
  }

  // A data hello if the connection starts like one (nullopt: a TLS ClientHello follows, its
  // bytes untouched), or why it is neither. Reads only the hello's bytes.
  static asio::awaitable<StatusOr<std::optional<DataHello>>> read_data_hello(TlsSocket& ts) {
    std::array<std::byte, kDataHelloBytes> bytes{};
    std::size_t have = 0;
    const int fd = ts.socket.native_handle();
    for (;;) {
      auto [ec] = co_await ts.socket.async_wait(tcp::socket::wait_read, kAsTuple);
      if (ec) co_return unavailable("timed out or closed before its first bytes");
      if (have == 0) {
        std::byte first{};
        const ssize_t peeked = ::recv(fd, &first, 1, MSG_PEEK);
        if (peeked == 0) co_return unavailable("closed before its first bytes");
        if (peeked < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
          co_return unavailable(std::strerror(errno));
        }
        if (!may_start_data_hello(first)) co_return std::optional<DataHello>{};
      }
      const ssize_t got = ::recv(fd, bytes.data() + have, bytes.size() - have, 0);
      if (got == 0) co_return unavailable("data connection closed within its hello");
      if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
        co_return unavailable(std::strerror(errno));
      }
      have += static_cast<std::size_t>(got);
      if (have < bytes.size()) continue;
      auto hello = decode_data_hello(bytes);
      if (!hello.ok()) co_return hello.status();
      co_return std::optional<DataHello>(*hello);
    }
  }

  asio::io_context& io_;
  tls::Context context_;
  std::shared_ptr<tcp::acceptor> acceptor_;
  std::shared_ptr<State> state_;
};

}  // namespace

StatusOr<std::unique_ptr<Listener>> Listener::create(EventLoop& loop, const ListenOptions& options,
                                                     AcceptHandler on_accept) {
  TESTUDO_ASSIGN_OR_RETURN(tls::Context context, tls::Context::server(options.tls));
  asio::io_context& io = loop.impl().io;
  asio::error_code ec;
  auto address = asio::ip::make_address(options.host, ec);
  if (ec) return invalid_argument("bad listen address '" + options.host + "': " + ec.message());
  tcp::acceptor acceptor(io);
  tcp::endpoint ep(address, options.port);
  acceptor.open(ep.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(ep, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec == asio::error::address_in_use) {
    return already_exists("cannot listen on " + options.host + ":" + std::to_string(options.port) +
                          ": another process holds that address");
  }
  if (ec) {
    return unavailable("cannot listen on " + options.host + ":" + std::to_string(options.port) + ": " + ec.message());
  }
  auto state = std::make_shared<TlsListener::State>();
  state->on_accept = std::move(on_accept);
  state->max_pending = options.max_pending_handshakes;
  state->on_handshake_failed = options.on_handshake_failed;
  state->handshake_timeout = options.handshake_timeout;
  state->on_data_connection = options.on_data_connection;
  return std::unique_ptr<Listener>(new TlsListener(io, std::move(context), std::move(acceptor), std::move(state)));
}

// ---------------- dial ----------------

namespace {

asio::awaitable<void> dial_coro(asio::io_context& io, tls::Context context, DialOptions options,
                                std::function<void(StatusOr<std::shared_ptr<Connection>>)> done) {
  std::string where = options.host + ":" + std::to_string(options.port);
  asio::error_code ec;
  auto address = asio::ip::make_address(options.host, ec);
  tcp::endpoint ep;
  if (ec) {
    tcp::resolver resolver(io);
    auto [rec, results] = co_await resolver.async_resolve(options.host, std::to_string(options.port), kAsTuple);
    if (rec || results.empty()) {
      done(unavailable("cannot resolve " + options.host + ": " + rec.message()));
      co_return;
    }
    ep = results.begin()->endpoint();
  } else {
    ep = tcp::endpoint(address, options.port);
  }
  tcp::socket socket(io);
  socket.open(ep.protocol(), ec);
  if (ec) {
    done(unavailable("cannot connect to " + where + ": " + ec.message()));
    co_return;
  }
  auto made = make_tls_socket(std::move(socket), context, kClientReadBuffer);
  if (!made.ok()) {
    done(made.status());
    co_return;
  }
  std::shared_ptr<TlsSocket> ts = std::move(made).value();
  auto finished = std::make_shared<bool>(false);
  asio::steady_timer deadline(io);
  arm_deadline(deadline, options.timeout, ts, finished);
  auto [cec] = co_await ts->socket.async_connect(ep, kAsTuple);
  if (cec) {
    *finished = true;
    deadline.cancel();
    done(unavailable("cannot connect to " + where + ": " +
                     (cec == asio::error::bad_descriptor || cec == asio::error::operation_aborted ? "timed out"
                                                                                                : describe(cec))));
    co_return;
  }
  asio::error_code ignored;
  ts->socket.set_option(tcp::no_delay(true), ignored);
  Status hs = co_await run_handshake(*ts);
  *finished = true;
  deadline.cancel();
  if (!hs.ok()) {
    // A failed pin is a verdict on this server, not on the controller (kUnauthenticated: a
    // local user may have taken the port while the real one restarts); anything else (reset,
    // timeout, a busy server) is kUnavailable.
    if (ts->session->server_not_pinned()) {
      done(unauthenticated("TLS handshake with " + where +
                             " failed: the controller's certificate does not match the pinned fingerprint in the "
                             "connection file (wrong or hostile controller?)"));
    } else {
      done(unavailable("TLS handshake with " + where + " failed: " + hs.message()));
    }
    co_return;
  }
  done(std::shared_ptr<Connection>(std::make_shared<TlsConnection>(std::move(ts), wire::Limits{})));
}

}  // namespace

void dial(EventLoop& loop, const DialOptions& options, std::function<void(StatusOr<std::shared_ptr<Connection>>)> done) {
  auto context = tls::Context::client(options.tls);
  if (!context.ok()) {
    loop.post([done = std::move(done), st = context.status()] { done(st); });
    return;
  }
  asio::io_context& io = loop.impl().io;
  asio::co_spawn(io, dial_coro(io, std::move(context).value(), options, std::move(done)), asio::detached);
}

}  // namespace testudo::net
