// asio + OpenSSL implementation of net.h. Everything here runs on one io_context thread per
// EventLoop (see net.h); no member needs a lock except what post()/stop() touch, which asio
// makes thread-safe.
#include "net/net.h"

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ssl.hpp>
#include <openssl/ssl.h>

#include <deque>
#include <list>

#include "base/log.h"

namespace testudo::net {
namespace {

using asio::ip::tcp;
using Stream = asio::ssl::stream<tcp::socket>;
constexpr auto kAsTuple = asio::experimental::as_tuple(asio::use_awaitable);

// Segments at most this big are copied into the write staging buffer so a small message
// leaves as one TLS record and one syscall; bigger ones are written from where they lie.
constexpr std::size_t kCopyThreshold = 16 * 1024;
// A write batch takes queued messages until it holds this many bytes.
constexpr std::size_t kBatchBytes = 4u << 20;

std::string describe(const asio::error_code& ec) {
  if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated) return "connection closed by peer";
  if (ec.category() == asio::error::get_ssl_category()) {
    char buf[256];
    ERR_error_string_n(static_cast<unsigned long>(ec.value()), buf, sizeof buf);
    return std::string("TLS: ") + buf;
  }
  return ec.message();
}

std::string endpoint_text(const tcp::socket& s) {
  asio::error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return "unknown";
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

std::shared_ptr<asio::ssl::context> adopt_context(tls::SslCtxPtr ctx) {
  // asio::ssl::context takes ownership of the native handle and frees it.
  return std::make_shared<asio::ssl::context>(ctx.release());
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
  TlsConnection(std::shared_ptr<asio::ssl::context> ctx, Stream stream, wire::Limits limits)
      : ctx_(std::move(ctx)), stream_(std::move(stream)), limits_(limits), peer_(endpoint_text(stream_.next_layer())),
        grace_timer_(stream_.get_executor()) {}

  void start(Handlers handlers) override {
    handlers_ = std::move(handlers);
    asio::co_spawn(stream_.get_executor(), read_loop(shared_from_this()), asio::detached);
  }

  void set_handlers(Handlers handlers) override {
    if (open_) handlers_ = std::move(handlers);
  }

  void send(wire::Message message) override {
    if (!open_ || closing_) return;
    queue_.push_back(std::move(message));
    write_next();
  }

  void close(const Status& reason) override {
    if (!open_) return;
    open_ = false;
    asio::error_code ignored;
    stream_.next_layer().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.next_layer().close(ignored);
    grace_timer_.cancel();
    queue_.clear();
    // close() may run inside on_message: keep that handler alive until it returns and drop
    // the handlers (and whatever they captured) afterwards.
    auto on_close = handlers_.on_close;
    asio::post(stream_.get_executor(), [self = shared_from_this()] { self->handlers_ = {}; });
    if (on_close) on_close(reason);
  }

  void close_after_flush(const Status& reason, std::chrono::milliseconds grace) override {
    if (!open_ || closing_) return;
    closing_ = true;
    close_reason_ = reason;
    if (!writing_ && queue_.empty()) return close(reason);
    grace_timer_.expires_after(grace);
    grace_timer_.async_wait([self = shared_from_this()](const asio::error_code& ec) {
      if (!ec) self->close(self->close_reason_);
    });
  }

  bool is_open() const override { return open_; }
  void set_limits(const wire::Limits& limits) override { limits_ = limits; }
  const std::string& peer_address() const override { return peer_; }
  std::uint64_t bytes_received() const override { return bytes_received_; }

  StatusOr<std::array<std::byte, 32>> export_keying_material(std::string_view label,
                                                             std::string_view context) override {
    return tls::export_keying_material(stream_.native_handle(), label, context);
  }
  StatusOr<std::string> peer_fingerprint() override { return tls::peer_fingerprint(stream_.native_handle()); }
  // Read off the session on each call: the peer's certificate cannot change after the
  // handshake (no renegotiation), and callers ask once, at admission.
  StatusOr<tls::CertificateFacts> peer_certificate() override {
    return tls::peer_certificate_facts(stream_.native_handle());
  }
  StatusOr<std::vector<std::string>> peer_certificate_chain() override {
    return tls::peer_certificate_chain_pem(stream_.native_handle());
  }

 private:
  asio::awaitable<Status> read_exact(void* data, std::size_t size) {
    auto [ec, n] = co_await asio::async_read(stream_, asio::buffer(data, size), kAsTuple);
    bytes_received_ += n;
    if (ec) co_return unavailable(describe(ec));
    co_return ok_status();
  }

  asio::awaitable<StatusOr<wire::FrameHeader>> read_frame_header() {
    std::array<std::byte, wire::kFrameHeaderBytes> bytes;
    Status st = co_await read_exact(bytes.data(), bytes.size());
    if (!st.ok()) co_return st;
    co_return wire::decode_frame_header(bytes, limits_);
  }

  asio::awaitable<StatusOr<wire::Message>> read_message() {
    auto fh = co_await read_frame_header();
    if (!fh.ok()) co_return fh.status();
    if (fh->type != wire::FrameType::kHead) co_return data_loss("data frame where a message head was expected");
    std::vector<std::byte> head(fh->length);
    Status st = co_await read_exact(head.data(), head.size());
    if (!st.ok()) co_return st;
    auto decoded = wire::decode_head(head, limits_);
    if (!decoded.ok()) co_return decoded.status();
    wire::Message m;
    m.envelope = std::move(decoded->envelope);
    m.segments.reserve(decoded->segment_sizes.size());
    for (std::uint64_t size : decoded->segment_sizes) {
      // The size passed decode_head's limit. Pages are committed only as frames fill them.
      SharedBytes segment = SharedBytes::allocate(size);
      std::uint64_t filled = 0;
      while (filled < size) {
        auto dh = co_await read_frame_header();
        if (!dh.ok()) co_return dh.status();
        if (dh->type != wire::FrameType::kData || dh->length > size - filled) {
          co_return data_loss("data frame does not match the announced segment size");
        }
        st = co_await read_exact(segment.data() + filled, dh->length);
        if (!st.ok()) co_return st;
        filled += dh->length;
      }
      m.segments.push_back(std::move(segment));
    }
    co_return m;
  }

  static asio::awaitable<void> read_loop(std::shared_ptr<TlsConnection> self) {
    while (self->open_) {
      auto m = co_await self->read_message();
      if (!self->open_) break;
      if (!m.ok()) {
        self->close(m.status());
        break;
      }
      if (self->handlers_.on_message) self->handlers_.on_message(std::move(m).value());
    }
  }

  // --- writing: one batch in flight, the queue behind it ---

  void stage(std::span<const std::byte> bytes) {
    if (pieces_.empty() || !pieces_.back().staged) pieces_.push_back({true, staging_.size(), 0});
    staging_.insert(staging_.end(), bytes.begin(), bytes.end());
    pieces_.back().size += bytes.size();
  }
  void reference(std::span<const std::byte> bytes) {
    pieces_.push_back({false, reinterpret_cast<std::size_t>(bytes.data()), bytes.size()});
  }

  std::size_t append_to_batch(const wire::Message& m) {
    std::vector<std::byte> head = wire::encode_head(m.envelope, m.segments);
    stage(wire::encode_frame_header({wire::FrameType::kHead, static_cast<std::uint32_t>(head.size())}));
    stage(head);
    std::size_t total = head.size() + wire::kFrameHeaderBytes;
    const std::size_t frame = wire::Limits{}.max_frame_bytes;
    for (const SharedBytes& seg : m.segments) {
      for (std::size_t off = 0; off < seg.size(); off += frame) {
        std::size_t len = std::min(frame, seg.size() - off);
        stage(wire::encode_frame_header({wire::FrameType::kData, static_cast<std::uint32_t>(len)}));
        auto part = seg.span().subspan(off, len);
        if (len <= kCopyThreshold) stage(part); else reference(part);
        total += len + wire::kFrameHeaderBytes;
      }
    }
    return total;
  }

  void write_next() {
    if (writing_ || !open_) return;
    if (queue_.empty()) {
      if (closing_) close(close_reason_);
      return;
    }
    writing_ = true;
    batch_.clear();
    staging_.clear();
    pieces_.clear();
    std::size_t bytes = 0;
    while (!queue_.empty() && bytes < kBatchBytes) {
      bytes += append_to_batch(queue_.front());
      batch_.push_back(std::move(queue_.front()));  // keeps referenced segments alive
      queue_.pop_front();
    }
    buffers_.clear();
    for (const Piece& p : pieces_) {
      const std::byte* base = p.staged ? staging_.data() + p.offset : reinterpret_cast<const std::byte*>(p.offset);
      buffers_.emplace_back(base, p.size);
    }
    asio::async_write(stream_, buffers_, [self = shared_from_this()](const asio::error_code& ec, std::size_t) {
      self->writing_ = false;
      self->batch_.clear();
      if (!self->open_) return;
      if (ec) return self->close(unavailable("write failed: " + describe(ec)));
      self->write_next();
    });
  }

  struct Piece {
    bool staged;
    std::size_t offset;  // into staging_ when staged, else the address of referenced bytes
    std::size_t size;
  };

  std::shared_ptr<asio::ssl::context> ctx_;  // outlives stream_ (declared first)
  Stream stream_;
  wire::Limits limits_;
  std::string peer_;
  Handlers handlers_;
  bool open_ = true;
  bool closing_ = false;
  Status close_reason_;
  asio::steady_timer grace_timer_;
  std::uint64_t bytes_received_ = 0;

  std::deque<wire::Message> queue_;
  bool writing_ = false;
  std::vector<wire::Message> batch_;
  std::vector<std::byte> staging_;
  std::vector<Piece> pieces_;
  std::vector<asio::const_buffer> buffers_;
};

// Closes `stream`'s socket unless `finished` is set first: the deadline of a connect or
// handshake. Both are shared with the timer's handler, which may run after the coroutine ends.
void arm_deadline(asio::steady_timer& timer, std::chrono::milliseconds timeout, std::shared_ptr<Stream> stream,
                  std::shared_ptr<bool> finished) {
  timer.expires_after(timeout);
  timer.async_wait([stream, finished](const asio::error_code& ec) {
    if (ec || *finished) return;
    asio::error_code ignored;
    stream->next_layer().close(ignored);
  });
}

}  // namespace

// ---------------- EventLoop ----------------

struct EventLoop::Impl {
  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  std::vector<std::unique_ptr<asio::signal_set>> signal_sets;
};

EventLoop::EventLoop() : impl_(std::make_unique<Impl>()) {}
EventLoop::~EventLoop() = default;
void EventLoop::run() { impl_->io.run(); }
void EventLoop::stop() { impl_->io.stop(); }
bool EventLoop::stopped() const { return impl_->io.stopped(); }
void EventLoop::post(std::function<void()> fn) { asio::post(impl_->io, std::move(fn)); }

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
    // Handshakes in progress, oldest first. When a new connection would exceed max_pending,
    // the oldest is aborted: a flood of idle connections then only ever delays real peers
    // by its own churn, it cannot lock them out (T12). A real handshake takes milliseconds.
    std::list<std::shared_ptr<Stream>> pending;
    std::size_t max_pending = 0;
    std::chrono::steady_clock::time_point last_eviction_warning{};
    std::size_t evictions_since_warning = 0;
    std::chrono::milliseconds handshake_timeout{};
    bool closed = false;
  };

  TlsListener(asio::io_context& io, std::shared_ptr<asio::ssl::context> ctx, tcp::acceptor acceptor,
              std::shared_ptr<State> state)
      : io_(io), ctx_(std::move(ctx)), acceptor_(std::make_shared<tcp::acceptor>(std::move(acceptor))),
        state_(std::move(state)) {
    asio::co_spawn(io_, accept_loop(acceptor_, ctx_, state_), asio::detached);
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
                                           std::shared_ptr<asio::ssl::context> ctx, std::shared_ptr<State> state) {
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
                          << state->evictions_since_warning << " (latest from " << endpoint_text(oldest->next_layer())
                          << ")";
          state->last_eviction_warning = now;
          state->evictions_since_warning = 0;
        }
        asio::error_code ignored;
        oldest->next_layer().close(ignored);
        state->pending.pop_front();
      }
      asio::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      asio::co_spawn(acceptor->get_executor(), handshake(std::move(socket), ctx, state), asio::detached);
    }
  }

  static asio::awaitable<void> handshake(tcp::socket socket, std::shared_ptr<asio::ssl::context> ctx,
                                         std::shared_ptr<State> state) {
    std::string peer = endpoint_text(socket);
    auto stream = std::make_shared<Stream>(std::move(socket), *ctx);
    state->pending.push_back(stream);
    auto finished = std::make_shared<bool>(false);
    asio::steady_timer deadline(stream->get_executor());
    arm_deadline(deadline, state->handshake_timeout, stream, finished);
    auto [ec] = co_await stream->async_handshake(asio::ssl::stream_base::server, kAsTuple);
    *finished = true;
    deadline.cancel();
    state->pending.remove(stream);
    if (ec) {
      LOG_INFO("net") << "TLS handshake with " << peer << " failed: " << describe(ec);
      co_return;
    }
    if (state->closed) co_return;
    auto conn = std::make_shared<TlsConnection>(ctx, std::move(*stream), wire::Limits::pre_auth());
    state->on_accept(std::move(conn));
  }

  asio::io_context& io_;
  std::shared_ptr<asio::ssl::context> ctx_;
  std::shared_ptr<tcp::acceptor> acceptor_;
  std::shared_ptr<State> state_;
};

}  // namespace

StatusOr<std::unique_ptr<Listener>> Listener::create(EventLoop& loop, const ListenOptions& options,
                                                     AcceptHandler on_accept) {
  TESTUDO_ASSIGN_OR_RETURN(tls::SslCtxPtr native, tls::make_server_context(options.tls));
  auto ctx = adopt_context(std::move(native));
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
  if (ec) {
    return unavailable("cannot listen on " + options.host + ":" + std::to_string(options.port) + ": " + ec.message());
  }
  auto state = std::make_shared<TlsListener::State>();
  state->on_accept = std::move(on_accept);
  state->max_pending = options.max_pending_handshakes;
  state->handshake_timeout = options.handshake_timeout;
  return std::unique_ptr<Listener>(new TlsListener(io, std::move(ctx), std::move(acceptor), std::move(state)));
}

// ---------------- dial ----------------

namespace {

asio::awaitable<void> dial_coro(asio::io_context& io, std::shared_ptr<asio::ssl::context> ctx, DialOptions options,
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
  auto stream = std::make_shared<Stream>(tcp::socket(io), *ctx);
  auto finished = std::make_shared<bool>(false);
  asio::steady_timer deadline(io);
  arm_deadline(deadline, options.timeout, stream, finished);
  auto [cec] = co_await stream->next_layer().async_connect(ep, kAsTuple);
  if (cec) {
    *finished = true;
    deadline.cancel();
    done(unavailable("cannot connect to " + where + ": " +
                     (cec == asio::error::bad_descriptor || cec == asio::error::operation_aborted ? "timed out"
                                                                                                : describe(cec))));
    co_return;
  }
  asio::error_code ignored;
  stream->next_layer().set_option(tcp::no_delay(true), ignored);
  auto [hec] = co_await stream->async_handshake(asio::ssl::stream_base::client, kAsTuple);
  *finished = true;
  deadline.cancel();
  if (hec) {
    // Only a failed pin is a verdict on the server (kPermissionDenied: retrying cannot help);
    // anything else (reset, timeout, a busy server) is kUnavailable and worth retrying.
    if (SSL_get_verify_result(stream->native_handle()) == X509_V_ERR_CERT_REJECTED) {
      done(permission_denied("TLS handshake with " + where +
                             " failed: the controller's certificate does not match the pinned fingerprint in the "
                             "connection file (wrong or hostile controller?)"));
    } else {
      done(unavailable("TLS handshake with " + where + " failed: " + describe(hec)));
    }
    co_return;
  }
  done(std::shared_ptr<Connection>(std::make_shared<TlsConnection>(ctx, std::move(*stream), wire::Limits{})));
}

}  // namespace

void dial(EventLoop& loop, const DialOptions& options, std::function<void(StatusOr<std::shared_ptr<Connection>>)> done) {
  auto native = tls::make_client_context(options.tls);
  if (!native.ok()) {
    loop.post([done = std::move(done), st = native.status()] { done(st); });
    return;
  }
  asio::io_context& io = loop.impl().io;
  asio::co_spawn(io, dial_coro(io, adopt_context(std::move(native).value()), options, std::move(done)), asio::detached);
}

}  // namespace testudo::net
