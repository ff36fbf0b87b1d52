#include "auth/link.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>
#include <vector>

namespace testudo::auth {

using Clock = std::chrono::steady_clock;

RandomSource default_random_source() {
  auto engine = std::make_shared<std::mt19937_64>(std::random_device{}());
  return [engine] { return (*engine)(); };
}

Backoff::Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max, RandomSource random)
    : initial_(std::max(initial, std::chrono::milliseconds(1))),
      max_(std::max(max, initial_)),
      base_(initial_),
      random_(random ? std::move(random) : default_random_source()) {}

std::chrono::milliseconds Backoff::next() {
  const auto spread = static_cast<std::uint64_t>(base_.count() / 2 + 1);
  const auto delay = base_ + std::chrono::milliseconds(static_cast<std::int64_t>(random_() % spread));
  base_ = std::min(base_ * 2, max_);
  return delay;
}

void Backoff::reset() { base_ = initial_; }

// The link's state. Owned by ControllerLink; attempts in flight and the connection's handlers
// hold it weakly (the connection owns its handlers, and the core owns the connection), so
// neither keeps it alive nor reaches it after the link is gone. Timers are owned here and
// cancelled with it, so they capture `this`. Loop thread only, except `snapshot`.
struct ControllerLink::Core : std::enable_shared_from_this<Core> {
  Core(net::EventLoop& loop, LinkOptions options, LinkHooks hooks)
      : loop(loop),
        options(std::move(options)),
        hooks(std::move(hooks)),
        backoff(this->options.initial_backoff, this->options.max_backoff, this->options.random) {}

  net::EventLoop& loop;
  const LinkOptions options;
  LinkHooks hooks;
  Backoff backoff;

  std::shared_ptr<net::Connection> connection;  // welcomed and not yet reported closed
  std::uint32_t assigned_id = 0;
  std::atomic<std::uint64_t> max_message_bytes{wire::Limits{}.max_message_bytes};
  bool started = false;
  bool stopped = false;
  bool ever_connected = false;
  bool awaiting_trust = false;     // refused as not trusted yet: warned once, retried quietly
  std::uint64_t impostor_refusals = 0;                 // pin mismatches since the last warning
  std::optional<Clock::time_point> impostor_warned_at;  // see warn_impostor
  Clock::time_point last_seen;     // of the controller, for give_up
  Clock::time_point last_heard;    // any bytes on this connection, for the heartbeat timeout
  std::uint64_t bytes_heard = 0;   // the connection's bytes_received() when last_heard was set
  std::unique_ptr<net::Timer> retry;
  std::unique_ptr<net::Timer> heartbeat;
  // The login of the welcomed connection, renewed shortly before it expires (renew_login).
  std::shared_ptr<LoginClient> login;
  std::unique_ptr<net::Timer> renewal;
  bool renewal_pending = false;  // a fresh credential was sent; the controller has not answered
  std::vector<std::function<void()>> on_closed;  // from stop(), run once no connection is held

  mutable std::mutex snapshot_mutex;
  std::shared_ptr<net::Connection> snapshot;  // guarded by snapshot_mutex

  void publish(std::shared_ptr<net::Connection> c) {
    std::lock_guard lock(snapshot_mutex);
    snapshot = std::move(c);
  }

  void dial() {
    retry.reset();
    if (stopped) return;
    std::weak_ptr<Core> weak = weak_from_this();
    open_session(loop, options.session, [weak](StatusOr<Session> s) {
      if (auto core = weak.lock()) return core->on_session(std::move(s));
      if (s.ok()) s->connection->close(unavailable("controller link closed"));
    });
  }

  void on_session(StatusOr<Session> s) {
    if (stopped) {
      if (s.ok()) s->connection->close(unavailable("controller link stopped"));
      return;
    }
    if (!s.ok()) return on_failed_attempt(s.status());
    std::shared_ptr<net::Connection> c = std::move(s->connection);
    if (hooks.on_welcome) {
      // The session's own handlers are still installed and already finished: closing here
      // reports nothing, so the failure is handled once, below.
      Status welcomed = hooks.on_welcome(*c, s->assigned_id);
      if (stopped) return c->close(unavailable("controller link stopped"));
      if (!welcomed.ok()) {
        c->close(welcomed);
        return on_failed_attempt(welcomed);
      }
    }
    connection = c;
    assigned_id = s->assigned_id;
    max_message_bytes.store(s->max_message_bytes, std::memory_order_relaxed);
    ever_connected = true;
    awaiting_trust = false;
    backoff.reset();
    impostor_warned_at.reset();  // a later impostor is warned of at once again
    impostor_refusals = 0;
    last_heard = Clock::now();
    bytes_heard = c->bytes_received();
    std::weak_ptr<Core> weak = weak_from_this();
    // The connection's handlers hold the core weakly: it owns them, and the core owns it.
    connection->set_handlers({
        [weak, raw = c.get()](wire::Message&& m) {
          if (auto core = weak.lock()) core->on_message(raw, std::move(m));
        },
        [weak, raw = c.get()](const Status& why) {
          if (auto core = weak.lock()) core->on_closed_connection(raw, why);
        },
    });
    publish(connection);
    if (options.heartbeat_interval.count() > 0) {
      heartbeat = loop.every(options.heartbeat_interval, [this] { beat(); });
    }
    login = std::move(s->login);
    renewal_pending = false;
    arm_renewal();
    if (hooks.on_connected) hooks.on_connected(assigned_id);
  }

  // A login that expires (a token) is renewed on the same connection a little before: 30 s
  // before, or with a fifth of what is left for a short one, so the controller never closes a
  // session whose client can renew it. The new credential comes from the same provider (the
  // token source or callable is asked again).
  void arm_renewal() {
    renewal.reset();
    if (!login || login->expires_at() == 0) return;
    const std::int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count();
    const std::int64_t left_ms = std::max<std::int64_t>(0, login->expires_at() * 1000 - now_ms);
    const std::int64_t delay_ms = left_ms - std::min<std::int64_t>(30'000, left_ms / 5);
    renewal = loop.after(std::chrono::milliseconds(delay_ms), [this] { renew_login(); });
  }

  void renew_login() {
    if (!connection || !login || renewal_pending) return;
    const std::int64_t old_expiry = login->expires_at();
    auto fresh = login->renew();
    if (!fresh.ok()) {
      LOG_WARN(options.log_name) << "cannot renew the " << login_method_name(login->method())
                                 << " login: " << fresh.status().message() << "; the session ends when it expires";
      return;
    }
    if (login->expires_at() <= old_expiry) {
      // The provider handed back the same (or an older) credential: sending it gains nothing.
      LOG_WARN(options.log_name) << "the " << login_method_name(login->method())
                                 << " provider gave no credential that lasts longer; the session ends when it expires";
      return;
    }
    renewal_pending = true;
    wire::Message step;
    step.envelope.kind = wire::MessageKind::kLoginStep;
    step.envelope.text = std::move(fresh).value();
    connection->send(std::move(step));
  }

  void on_message(net::Connection* from, wire::Message&& m) {
    if (from != connection.get()) return;
    if (!wire::is_allowed_after_auth(wire::Role::kController, m.envelope.kind)) {
      connection->close(data_loss("controller sent '" + std::string(wire::kind_name(m.envelope.kind)) + "'"));
      return;
    }
    last_heard = Clock::now();
    if (m.envelope.kind == wire::MessageKind::kHeartbeatAck) return;
    if (m.envelope.kind == wire::MessageKind::kLoginStep) {
      // The controller's answer to a renewal: empty means accepted (a refusal closes instead).
      if (!renewal_pending || !m.envelope.text.empty()) {
        connection->close(data_loss("unexpected login step from the controller"));
        return;
      }
      renewal_pending = false;
      LOG_DEBUG(options.log_name) << "login renewed";
      arm_renewal();
      return;
    }
    if (hooks.on_message) hooks.on_message(std::move(m));
  }

  void beat() {
    if (!connection) return;
    // Bytes arriving are signs of life too: a message that takes longer than the timeout to
    // arrive (a large result on a slow link) keeps the controller alive while it moves.
    if (const std::uint64_t received = connection->bytes_received(); received != bytes_heard) {
      bytes_heard = received;
      last_heard = Clock::now();
    }
    if (Clock::now() - last_heard > options.controller_timeout) {
      connection->close(unavailable("the controller stopped answering heartbeats"));
      return;
    }
    wire::Message hb;
    hb.envelope.kind = wire::MessageKind::kHeartbeat;
    connection->send(std::move(hb));
  }

  void on_closed_connection(net::Connection* which, const Status& why) {
    if (which != connection.get()) return;
    publish(nullptr);
    connection.reset();
    heartbeat.reset();
    renewal.reset();
    login.reset();
    last_seen = Clock::now();
    if (hooks.on_lost) hooks.on_lost(why);
    if (stopped) return run_on_closed();
    schedule_redial(why);
  }

  void on_failed_attempt(const Status& why) {
    if (!ever_connected && !options.retry_first_attempt) return give_up_for_good(why);
    switch (why.code()) {
      case StatusCode::kPermissionDenied:
        return give_up_for_good(why);
      case StatusCode::kUnauthenticated:
        warn_impostor(why);
        return schedule_redial(why, /*quietly=*/true);
      case StatusCode::kFailedPrecondition:
        // Reachable, but not trusted (yet): wait for an administrator, retrying quietly.
        if (!awaiting_trust) LOG_WARN(options.log_name) << why.message() << "; retrying until it is";
        awaiting_trust = true;
        last_seen = Clock::now();
        return schedule_redial(why);
      default:
        return schedule_redial(why);
    }
  }

  // Loud but bounded: the first refusal at once, then at most one line a minute with the
  // number refused meanwhile (an impostor holding the port would otherwise fill the log).
  void warn_impostor(const Status& why) {
    const auto now = Clock::now();
    if (impostor_warned_at && now - *impostor_warned_at < std::chrono::minutes(1)) {
      ++impostor_refusals;
      return;
    }
    if (impostor_warned_at) {
      LOG_WARN(options.log_name) << why.message() << "; refused " << impostor_refusals + 1
                                 << " time(s) in the last minute, still retrying";
    } else {
      LOG_WARN(options.log_name) << why.message() << "; retrying until the real controller answers "
                                 << "(this warning repeats at most once a minute)";
    }
    impostor_refusals = 0;
    impostor_warned_at = now;
  }

  // quietly: the caller has said why already (no "reconnecting in" line per attempt).
  void schedule_redial(const Status& why, bool quietly = false) {
    if (options.give_up && Clock::now() - last_seen > *options.give_up) {
      return give_up_for_good(unavailable("no controller for " + std::to_string(options.give_up->count() / 1000) +
                                          " s; last error: " + why.message()));
    }
    const auto delay = backoff.next();
    if (!awaiting_trust && !quietly) {
      TESTUDO_LOG(options.retry_log_level, options.log_name)
          << "reconnecting in " << delay.count() << " ms (" << why.message() << ")";
    }
    retry = loop.after(delay, [this] { dial(); });
  }

  void give_up_for_good(const Status& why) {
    stopped = true;
    retry.reset();
    if (hooks.on_stopped) hooks.on_stopped(why);
  }

  void stop(const Status& why, std::chrono::milliseconds flush_grace, std::function<void()> closed) {
    stopped = true;
    retry.reset();
    heartbeat.reset();
    renewal.reset();
    publish(nullptr);
    if (closed) on_closed.push_back(std::move(closed));
    if (!connection) return run_on_closed();
    // Closing reports through on_closed_connection (at once, or after the flush).
    if (flush_grace.count() > 0) {
      connection->close_after_flush(why, flush_grace);
    } else {
      connection->close(why);
    }
  }

  void run_on_closed() {
    auto run = std::move(on_closed);
    on_closed.clear();
    for (auto& fn : run) fn();
  }

  // Closes without hooks: the link is going away.
  void abandon() {
    stopped = true;
    hooks = {};
    on_closed.clear();
    retry.reset();
    heartbeat.reset();
    renewal.reset();
    publish(nullptr);
    if (auto c = std::move(connection)) c->close(unavailable("controller link closed"));
  }
};

ControllerLink::ControllerLink(net::EventLoop& loop, LinkOptions options, LinkHooks hooks)
    : core_(std::make_shared<Core>(loop, std::move(options), std::move(hooks))) {}

ControllerLink::~ControllerLink() { core_->abandon(); }

void ControllerLink::start() {
  if (core_->started) return;
  core_->started = true;
  core_->last_seen = Clock::now();
  core_->dial();
}

void ControllerLink::stop(const Status& why, std::chrono::milliseconds flush_grace, std::function<void()> on_closed) {
  core_->stop(why, flush_grace, std::move(on_closed));
}

bool ControllerLink::send(wire::Message message) {
  if (!connected()) return false;
  core_->connection->send(std::move(message));
  return true;
}

bool ControllerLink::connected() const { return !core_->stopped && core_->connection && core_->connection->is_open(); }
bool ControllerLink::stopped() const { return core_->stopped; }
std::uint32_t ControllerLink::assigned_id() const { return core_->assigned_id; }
std::uint64_t ControllerLink::max_message_bytes() const {
  return core_->max_message_bytes.load(std::memory_order_relaxed);
}

std::shared_ptr<net::Connection> ControllerLink::current_connection() const {
  std::lock_guard lock(core_->snapshot_mutex);
  return core_->snapshot;
}

}  // namespace testudo::auth
