// The hub's connections: accept, admission, refusal, close, heartbeats and shutdown. Requests
// and replies are in hub_routing.cc, control requests in hub_control.cc.
#include "controller/hub.h"

#include "base/log.h"
#include "wire/control.h"
#include "wire/reply.h"

namespace testudo::controller {

using wire::MessageKind;

Hub::Hub(HubServices services, HubOptions options, std::function<void()> on_stopped)
    : clock_(services.clock),
      admission_(services.admission),
      gate_(services.gate),
      results_(services.results),
      engine_ids_(services.engine_ids),
      logins_(services.logins),
      options_(std::move(options)),
      on_stopped_(std::move(on_stopped)),
      started_at_(clock_.now()),
      started_unix_us_(clock_.unix_micros()),
      scheduler_(options_.scheduler, *this, options_.random_seed),
      acks_(clock_, [this](std::uint32_t client_id, std::vector<wire::Message> acks) {
        Peer* client = peers_.client(client_id);
        if (!client) return;
        for (auto& ack : acks) client->connection->send(std::move(ack));
      }),
      refusals_(clock_, [this](const std::string& host, std::uint64_t more, const std::string& reasons) {
        const std::string summary = std::to_string(more) + " more connection(s) from " + host +
                                    " refused in the last minute: " + reasons;
        LOG_WARN("audit") << summary;
        gate_.record(nullptr, host, "connection", "refused", {}, summary);
        gate_.flush();
      }),
      bulk_(clock_, options_.bulk, [this](const BulkRelay::Done& done) { bulk_transfer_done(done); },
            [this](const std::string& peer, const std::string& why) {
              // Summed per host and audited like failed handshakes (T12).
              if (refusals_.note(peer, "data connection: " + why)) {
                LOG_INFO("net") << "data connection from " << peer << " refused: " << why
                                << " (more from this host this minute are summed)";
              }
            }),
      budget_(options_.queue_limits, [this] { resume_clients(); }) {
  scheduler_.set_next_id(results_.next_task_id());
  auto period = std::max(std::chrono::milliseconds(100), options_.heartbeat_timeout / 4);
  heartbeat_sweep_ = clock_.every(period, [this] { sweep_heartbeats(); });
  expiry_ = clock_.every(std::chrono::milliseconds(100), [this] { scheduler_.expire(clock_.now()); });
}

void Hub::connection_refused(const std::string& peer, const std::string& reason) {
  if (refusals_.note(peer, reason)) {
    LOG_INFO("net") << "TLS handshake with " << peer << " failed: " << reason
                    << " (more from this host this minute are summed)";
  }
}

void Hub::accept_data(UniqueFd socket, const net::DataHello& hello, const std::string& peer) {
  if (stopping_) return;  // closed with `socket`
  bulk_.accept(std::move(socket), hello, peer);
}

Hub::~Hub() {
  refusals_.flush();
  for (auto& [serial, peer] : peers_.all()) peer->connection->close(unavailable("controller exiting"));
}

void Hub::accept(std::shared_ptr<net::Connection> connection) {
  if (stopping_) {
    connection->close(unavailable("controller is shutting down"));
    return;
  }
  drop_oldest_unadmitted_if_full();
  Peer& peer = peers_.add(std::move(connection), clock_.now());
  const std::uint64_t serial = peer.serial;
  peer.admission = admission_.begin(*peer.connection);
  // A peer that completes TLS but never proves who it is is cut off (slow-loris, T12).
  peer.admission_deadline = clock_.after(options_.hello_timeout, [this, serial] {
    Peer* p = peers_.find(serial);
    if (p && !p->admitted) reject(*p, "no valid hello in time");
  });
  peer.connection->start({
      [this, serial](wire::Message&& m) { on_message(serial, std::move(m)); },
      [this, serial](const Status& reason) { on_close(serial, reason); },
      [this, serial](const wire::Message& first, std::span<const std::uint64_t> sizes) -> std::shared_ptr<wire::StreamSink> {
        Peer* p = peers_.find(serial);
        if (p && p->admitted && p->role == wire::Role::kEngine) return offer_reply_stream(*p, first, sizes);
        return offer_stream(serial, first, sizes);
      },
  });
}

void Hub::drop_oldest_unadmitted_if_full() {
  while (peers_.unadmitted() >= options_.max_unauthenticated) {
    Peer* oldest = peers_.oldest_unadmitted();
    if (!oldest) break;
    // on_close() lowers the count.
    oldest->connection->close(resource_exhausted("too many unauthenticated connections; dropped the oldest"));
  }
}

void Hub::on_message(std::uint64_t serial, wire::Message&& m) {
  Peer* found = peers_.find(serial);
  if (!found || !found->connection->is_open()) return;
  Peer& peer = *found;
  if (!peer.admitted) return on_admission_message(peer, m);
  const MessageKind kind = m.envelope.kind;
  if (!wire::is_allowed_after_auth(peer.role, kind)) {
    // T16/T17: e.g. an engine connection sending client requests. Nothing of it is acted on.
    return reject(peer, std::string("a ") + std::string(wire::role_name(peer.role)) + " may not send '" +
                            std::string(wire::kind_name(kind)) + "'");
  }
  peer.last_seen = clock_.now();
  switch (kind) {
    case MessageKind::kHeartbeat: {
      wire::Message ack;
      ack.envelope.kind = MessageKind::kHeartbeatAck;
      peer.connection->send(std::move(ack));
      return;
    }
    case MessageKind::kExecute:
    case MessageKind::kPush:
    case MessageKind::kPull:
    case MessageKind::kApply: {
      // Only clients send requests (is_allowed_after_auth). Their bytes count against the
      // client's budget for as long as the controller holds them.
      m.segments = budget_.charge(peer.id, std::move(m.segments));
      route_request(peer, std::move(m));
      if (over_limits(peer.id) && peer.connection->is_open()) pause_client(peer);
      return;
    }
    case MessageKind::kTaskReply:
      return route_reply(peer, std::move(m));
    case MessageKind::kTaskOutput:
      return route_output(peer, std::move(m));
    case MessageKind::kEngineInfo:
      return register_engine_info(peer, m);
    case MessageKind::kLoginStep:
      return renew_login(peer, m);
    default:
      return on_control(peer, std::move(m));
  }
}

void Hub::on_admission_message(Peer& peer, const wire::Message& m) {
  auto verdict = peer.admission->on_message(m);
  if (!verdict) return;  // the exchange goes on
  if (!verdict->ok()) {
    // Not trusted yet is said as such: an engine then waits for an administrator.
    const bool awaiting = verdict->status().code() == StatusCode::kFailedPrecondition;
    return reject(peer, verdict->status().message(), /*audited=*/true,
                  awaiting ? Outcome::kAwaitingTrust : Outcome::kNotAllowed);
  }
  welcome(peer, std::move(*verdict).value());
}

void Hub::welcome(Peer& peer, auth::Admitted admitted) {
  // Said as such: the peer may try again later, against the next controller.
  if (stopping_) return reject(peer, "controller is shutting down", false, Outcome::kShuttingDown);
  wire::Message welcome;
  welcome.envelope.kind = MessageKind::kWelcome;
  if (admitted.identity.role == wire::Role::kEngine) {
    auto assigned = engine_ids_.assign(admitted.identity.fingerprint, admitted.instance);
    if (!assigned.ok()) {
      // Worth another try: the engine redials (a full disk may clear).
      return reject(peer, "cannot record an engine id: " + assigned.status().message(), false,
                    Outcome::kControllerFailed);
    }
    const std::uint32_t id = assigned->id;
    if (Peer* stale = peers_.engine(id)) {
      // The same process (same key, same secret instance id) on a new connection: it stopped
      // hearing from us and redialed while its old connection still looks open here. The new
      // one wins, or the engine would be refused until our heartbeat timeout noticed.
      stale->connection->close(unavailable("engine " + std::to_string(id) + " reconnected on a new connection"));
    }
    peers_.admit_engine(peer, id);
    welcome.envelope.engine_id = id;
    peer.connection->offer_streams(options_.relay_from_bytes);  // large replies: spooled
    if (assigned->returning && engine_ids_.from_previous_run().count(id)) engines_back_.insert(id);
  } else {
    peers_.admit_client(peer);
    welcome.envelope.client_id = peer.id;
    peer.connection->offer_streams(options_.relay_from_bytes);
  }
  // The identity is its key (TLS proved the peer holds it): a client's results are its.
  peer.identity = std::move(admitted.identity);
  peer.instance = std::move(admitted.instance);
  peer.admission.reset();
  peer.admission_deadline.reset();
  peer.connection->set_limits(options_.limits);
  welcome.envelope.text = wire::encode_welcome_terms({.max_message_bytes = options_.limits.max_message_bytes});
  peer.connection->send(std::move(welcome));
  // Only now may the scheduler hand it tasks: it sends waiting ones at once, and a task
  // before the welcome is a protocol error to the engine, which redials (with a backlog of
  // load-balanced tasks, forever).
  if (peer.role == wire::Role::kEngine) scheduler_.add_engine(peer.id);
  arm_login_expiry(peer);
  LOG_INFO("hub") << wire::role_name(peer.role) << " " << peer.id << " registered from "
                  << peer.connection->peer_address() << " as " << peer.identity.fingerprint.substr(0, 23) << "…"
                  << (peer.identity.name.empty() ? "" : " (" + peer.identity.name + ")");
}

void Hub::reject(Peer& peer, const std::string& reason, bool audited, Outcome status) {
  ++rejected_;
  if (!audited) {
    gate_.record(peer.admitted ? &peer.identity : nullptr, peer.connection->peer_address(), "protocol", "rejected", {},
                 reason);
    gate_.flush();
  }
  // Each refusal after a handshake is audited and logged (a full TLS handshake each bounds
  // their rate; the log rotates). Connections that fail earlier are summed: connection_refused.
  LOG_WARN("audit") << "rejected " << peer.connection->peer_address() << " ("
                    << (peer.admitted ? std::string(wire::role_name(peer.role)) + " " + std::to_string(peer.id)
                                      : std::string("unauthenticated"))
                    << "): " << reason;
  peer.connection->send(wire::rejection(status, reason));
  peer.connection->close_after_flush(permission_denied(reason), std::chrono::milliseconds(500));
}

void Hub::reload() {
  (void)gate_.reload();
  recheck_peers();
}

void Hub::recheck_peers() {
  std::vector<std::pair<Peer*, std::string>> refused;
  for (const auto& [serial, peer] : peers_.all()) {
    if (!peer->admitted || !peer->connection->is_open()) continue;
    Status st = gate_.still_admissible(peer->identity);
    if (!st.ok()) refused.emplace_back(peer.get(), st.message());
  }
  for (auto& [peer, why] : refused) {
    // T14/T15: a revoked, removed or expired identity loses its connection at once.
    gate_.record(&peer->identity, peer->connection->peer_address(), "disconnect", "rejected", {}, why);
    reject(*peer, why, /*audited=*/true);
  }
  if (!refused.empty()) gate_.flush();
}

void Hub::on_close(std::uint64_t serial, const Status& reason) {
  Peer* found = peers_.find(serial);
  if (!found) return;
  Peer& peer = *found;
  const bool indexed = peers_.closed(peer);
  if (peer.admitted && peer.role == wire::Role::kEngine && !indexed) {
    LOG_INFO("hub") << "engine " << peer.id << ": replaced connection closed (" << reason.message() << ")";
  } else if (peer.admitted && peer.role == wire::Role::kEngine) {
    std::size_t affected = scheduler_.remove_engine(
        peer.id, "engine " + std::to_string(peer.id) + " died or disconnected while running this task (" +
                     reason.message() + ")");
    LOG_WARN("hub") << "engine " << peer.id << " disconnected (" << reason.message() << "); " << affected
                    << " task(s) failed or resubmitted";
    cancel_bulk_results_of(serial, "engine " + std::to_string(peer.id) + " disconnected");
  } else if (peer.admitted) {
    (void)acks_.take(peer.id);  // nobody to tell any more
    paused_clients_.erase(peer.id);
    LOG_INFO("hub") << "client " << peer.id << " disconnected (" << reason.message() << ")";
  } else {
    // Decoding errors, timeouts and refusals of peers that were never admitted: their
    // refusal was logged (or summed) already; the close itself only at debug level.
    LOG_DEBUG("hub") << "unauthenticated connection from " << peer.connection->peer_address()
                     << " closed: " << reason.message();
  }
  // Forgotten later: this may run inside one of the peer's own handlers.
  closed_.push_back(serial);
  if (erase_armed_) return;
  erase_armed_ = true;
  erase_closed_ = clock_.after(std::chrono::milliseconds(0), [this] {
    erase_armed_ = false;
    for (std::uint64_t s : std::exchange(closed_, {})) peers_.erase(s);
    maybe_finish_shutdown();
  });
}

void Hub::pause_client(Peer& client) {
  if (!paused_clients_.insert(client.id).second) return;
  ++pauses_;
  client.connection->pause_reading(true);
  LOG_DEBUG("hub") << "client " << client.id << " holds " << budget_.held(client.id) << " bytes of requests here ("
                   << budget_.held_total() << " in all) and " << scheduler_.tasks_of(client.id)
                   << " unfinished tasks: not read until they drain";
}

bool Hub::over_limits(std::uint32_t client_id) const {
  return budget_.over_limit(client_id) ||
         (options_.client_max_tasks > 0 && scheduler_.tasks_of(client_id) > options_.client_max_tasks) ||
         (options_.max_tasks > 0 && scheduler_.tasks() > options_.max_tasks);
}

void Hub::resume_clients() {
  for (auto it = paused_clients_.begin(); it != paused_clients_.end();) {
    if (over_limits(*it)) {
      ++it;
      continue;
    }
    if (Peer* client = peers_.client(*it)) client->connection->pause_reading(false);
    it = paused_clients_.erase(it);
  }
}

void Hub::sweep_heartbeats() {
  const auto now = clock_.now();
  // A paused client's heartbeats wait unread behind its requests: answer for them, so its
  // link does not take the wait for a dead controller.
  for (std::uint32_t id : paused_clients_) {
    if (Peer* client = peers_.client(id)) {
      wire::Message ack;
      ack.envelope.kind = MessageKind::kHeartbeatAck;
      client->connection->send(std::move(ack));
    }
  }
  std::vector<Peer*> silent;
  for (const auto& [id, p] : peers_.engines()) {
    // An engine whose large reply waits for the disk is not read meanwhile: its heartbeats
    // wait unread behind the reply. It is alive (we stopped it), and told so, like a paused
    // client.
    if (auto reply = p->reply_stream.lock(); reply && reply->backlogged()) {
      p->last_seen = now;
      wire::Message ack;
      ack.envelope.kind = MessageKind::kHeartbeatAck;
      p->connection->send(std::move(ack));
    }
    // An engine whose bytes are arriving is alive, even while one message takes longer than
    // the timeout to move (its heartbeats may wait behind it on a slow link).
    if (const std::uint64_t received = p->connection->bytes_received(); received != p->bytes_seen) {
      p->bytes_seen = received;
      p->last_seen = now;
    }
    if (now - p->last_seen > options_.heartbeat_timeout) silent.push_back(p);
  }
  for (Peer* p : silent) {
    p->connection->close(unavailable("no heartbeat for " +
                                     std::to_string(options_.heartbeat_timeout.count() / 1000.0).substr(0, 4) + " s"));
  }
}

void Hub::shutdown(const std::string& why) {
  if (stopping_) return;
  stopping_ = true;
  LOG_INFO("hub") << "shutting down: " << why;
  scheduler_.fail_all("controller shutting down: " + why);
  results_.sync();
  acks_.release_all();
  for (const auto& [serial, p] : peers_.all()) {
    if (p->admitted && p->role == wire::Role::kEngine) {
      wire::Message bye;
      bye.envelope.kind = MessageKind::kEngineShutdown;
      p->connection->send(std::move(bye));
    }
    p->connection->close_after_flush(unavailable("controller shut down"), std::chrono::milliseconds(1000));
  }
  stop_deadline_ = clock_.after(std::chrono::milliseconds(3000), [this] {
    if (on_stopped_) std::exchange(on_stopped_, nullptr)();
  });
  maybe_finish_shutdown();
}

void Hub::maybe_finish_shutdown() {
  if (stopping_ && peers_.empty() && on_stopped_) std::exchange(on_stopped_, nullptr)();
}

}  // namespace testudo::controller
