#include "controller/hub.h"

#include <nlohmann/json.hpp>

#include "base/log.h"
#include "auth/registration.h"
#include "crypto/crypto.h"
#include "wire/control.h"
#include "wire/reply.h"

namespace testudo::controller {
namespace {

using wire::MessageKind;

// How long a request's acknowledgement may wait for a message to its client to travel with.
// Short enough that a caller asking for task ids at once barely notices; long enough for the
// reply of a quick task to come back first.
constexpr std::chrono::milliseconds kAckDelay{1};

std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

TaskState stored_state(TaskFailure why) { return why == TaskFailure::kAborted ? TaskState::kAborted : TaskState::kFailed; }

nlohmann::json record_json(const TaskRecord& r) {
  return {{"task_id", r.task_id},
          {"state", std::string(task_state_name(r.state))},
          {"kind", r.kind},
          {"targets", r.targets},
          {"engine", r.engine ? nlohmann::json(*r.engine) : nlohmann::json(nullptr)},
          {"submitted", r.submitted_us / 1e6},
          {"started", r.started_us ? nlohmann::json(r.started_us / 1e6) : nlohmann::json(nullptr)},
          {"completed", r.completed_us ? nlohmann::json(r.completed_us / 1e6) : nlohmann::json(nullptr)},
          {"result_bytes", r.result_bytes},
          {"error", r.error}};
}

Outcome route_status(TaskFailure why) {
  switch (why) {
    case TaskFailure::kEngineDied: return Outcome::kEngineDied;
    case TaskFailure::kNoSuchEngine: return Outcome::kNoSuchEngine;
    case TaskFailure::kAborted: return Outcome::kAborted;
    case TaskFailure::kDependencyFailed: return Outcome::kDependencyFailed;
    case TaskFailure::kDependencyTimeout: return Outcome::kDependencyTimeout;
    case TaskFailure::kUnreachable: return Outcome::kUnreachable;
    case TaskFailure::kShuttingDown: return Outcome::kShuttingDown;
  }
  return Outcome::kEngineDied;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The policy operation of a request kind.
auth::Operation operation_of(MessageKind kind) {
  switch (kind) {
    case MessageKind::kExecute: return auth::Operation::kExecute;
    case MessageKind::kPush: return auth::Operation::kPush;
    case MessageKind::kPull: return auth::Operation::kPull;
    default: return auth::Operation::kApply;
  }
}

// What the audit log says about a request's code: the SHA-256 of the code (execute) or of the
// pickled (function, args, kwargs) head (apply); never the bytes themselves.
std::string code_digest(const wire::Message& m) {
  if ((m.envelope.kind != MessageKind::kExecute && m.envelope.kind != MessageKind::kApply) || m.segments.empty()) {
    return {};
  }
  return crypto::to_hex(crypto::sha256(m.segments[0].span()));
}

}  // namespace

Hub::Hub(net::EventLoop& loop, HubOptions options, std::function<void()> on_stopped)
    : loop_(loop),
      options_(std::move(options)),
      on_stopped_(std::move(on_stopped)),
      scheduler_(options_.scheduler, *this, std::random_device{}()) {
  auto period = std::max(std::chrono::milliseconds(100), options_.heartbeat_timeout / 4);
  heartbeat_sweep_ = loop_.every(period, [this] { sweep_heartbeats(); });
  audit_flush_ = loop_.every(std::chrono::milliseconds(20), [this] { options_.gate->flush(); });
  // A changed policy file, trust directory or CRL takes effect within a second; expiry of
  // connected peers' certificates is looked at every half minute.
  trust_watch_ = loop_.every(std::chrono::seconds(1), [this] {
    if (options_.gate->reload_if_changed() || ++trust_watch_ticks_ % 30 == 0) recheck_peers();
  });
  expiry_ = loop_.every(std::chrono::milliseconds(100), [this] { scheduler_.expire(Clock::now()); });
  if (options_.store) {
    scheduler_.set_next_id(options_.store->next_task_id());
    // Writes are batched: one transaction every 20 ms whatever the task rate.
    store_flush_ = loop_.every(std::chrono::milliseconds(20), [this] { flush_store(); });
    store_limits_ = loop_.every(std::chrono::seconds(60), [this] {
      auto purged = options_.store->enforce_limits(now_us());
      if (!purged.ok()) LOG_WARN("store") << "enforcing result limits: " << purged.status().message();
    });
  }
}

void Hub::flush_store(bool wait) {
  if (!options_.store || options_.store->pending_writes() == 0) return;
  Status st = wait ? options_.store->sync() : options_.store->flush();
  // A full disk fails every flush: say so once a minute, not fifty times a second.
  if (!st.ok() && Clock::now() - last_store_error_ > std::chrono::seconds(60)) {
    last_store_error_ = Clock::now();
    LOG_ERROR("store") << "cannot record tasks (" << options_.store->pending_writes()
                       << " writes waiting): " << st.message();
  }
}

Hub::~Hub() {
  flush_store(/*wait=*/true);
  for (auto& [serial, peer] : peers_) peer->connection->close(unavailable("controller exiting"));
}

void Hub::accept(std::shared_ptr<net::Connection> connection) {
  if (stopping_) {
    connection->close(unavailable("controller is shutting down"));
    return;
  }
  drop_oldest_unauthenticated_if_full();
  auto peer = std::make_unique<Peer>();
  std::uint64_t serial = next_serial_++;
  unauthenticated_.push_back(serial);
  ++unauthenticated_count_;
  peer->serial = serial;
  peer->connection = std::move(connection);
  peer->connected_at = peer->last_seen = Clock::now();
  // A peer that completes TLS but never proves a capability is cut off (slow-loris, T12).
  peer->hello_deadline = loop_.after(options_.hello_timeout, [this, serial] {
    auto it = peers_.find(serial);
    if (it != peers_.end() && !it->second->authenticated) reject(*it->second, "no valid hello in time");
  });
  Peer& p = *peer;
  peers_.emplace(serial, std::move(peer));
  p.connection->start({
      [this, serial](wire::Message&& m) { on_message(serial, std::move(m)); },
      [this, serial](const Status& reason) { on_close(serial, reason); },
  });
}

void Hub::drop_oldest_unauthenticated_if_full() {
  while (unauthenticated_count_ >= options_.max_unauthenticated && !unauthenticated_.empty()) {
    std::uint64_t oldest = unauthenticated_.front();
    unauthenticated_.pop_front();
    auto it = peers_.find(oldest);
    if (it == peers_.end() || it->second->authenticated || !it->second->connection->is_open()) continue;
    // on_close() lowers unauthenticated_count_.
    it->second->connection->close(resource_exhausted("too many unauthenticated connections; dropped the oldest"));
  }
  // Forget serials that authenticated or left, so the queue stays as short as the waiting set.
  while (!unauthenticated_.empty()) {
    auto it = peers_.find(unauthenticated_.front());
    if (it != peers_.end() && !it->second->authenticated) break;
    unauthenticated_.pop_front();
  }
}

void Hub::on_message(std::uint64_t serial, wire::Message&& m) {
  auto it = peers_.find(serial);
  if (it == peers_.end() || !it->second->connection->is_open()) return;
  Peer& peer = *it->second;
  if (!peer.authenticated) return on_hello(peer, m);
  const MessageKind kind = m.envelope.kind;
  if (!wire::is_allowed_after_auth(peer.role, kind)) {
    // T16/T17: e.g. an engine connection sending client requests. Nothing of it is acted on.
    return reject(peer, std::string("a ") + std::string(wire::role_name(peer.role)) + " may not send '" +
                            std::string(wire::kind_name(kind)) + "'");
  }
  peer.last_seen = Clock::now();
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
    case MessageKind::kApply:
      return route_request(peer, std::move(m));
    case MessageKind::kTaskReply:
      return route_reply(peer, std::move(m));
    case MessageKind::kTaskOutput: {
      // Live output of a task running on this engine goes to its client; anything else is dropped.
      const TaskSpec* task = scheduler_.running_spec(m.envelope.task_id, peer.id);
      auto client = task ? clients_.find(task->client_id) : clients_.end();
      if (client == clients_.end()) return;
      wire::Message chunk;
      chunk.envelope.kind = MessageKind::kTaskOutput;
      chunk.envelope.set_output_stream(m.envelope.output_stream());
      chunk.envelope.request_id = task->request_id;
      chunk.envelope.engine_id = peer.id;
      chunk.segments = std::move(m.segments);
      send_to_client(*client->second, std::move(chunk));
      return;
    }
    case MessageKind::kEngineList:
      if (!permit(peer, auth::Operation::kStatus, m.envelope, {}, {}, MessageKind::kEngineListReply)) return;
      return send_control_reply(peer, MessageKind::kEngineListReply, m.envelope, engine_list_json());
    case MessageKind::kEngineInfo:
      return record_engine_info(peer, m);
    case MessageKind::kClusterStatus:
      if (!permit(peer, auth::Operation::kStatus, m.envelope, {}, {}, MessageKind::kClusterStatusReply)) return;
      return send_control_reply(peer, MessageKind::kClusterStatusReply, m.envelope, status_json());
    case MessageKind::kQueueStatus:
      if (!permit(peer, auth::Operation::kStatus, m.envelope, {}, {}, MessageKind::kQueueStatusReply)) return;
      return send_control_reply(peer, MessageKind::kQueueStatusReply, m.envelope, queue_status_json());
    case MessageKind::kAbort:
      if (!permit(peer, auth::Operation::kAbort, m.envelope, {}, {}, MessageKind::kAbortReply)) return;
      return abort_requests(peer, m);
    case MessageKind::kGetResult:
      return get_results(peer, m);
    case MessageKind::kResultStatus:
      return result_status(peer, m);
    case MessageKind::kDbQuery:
      return db_query(peer, m);
    case MessageKind::kPurgeResults:
      return purge_results(peer, m);
    case MessageKind::kInterrupt:
      if (!permit(peer, auth::Operation::kInterrupt, m.envelope, m.envelope.targets, {m.envelope.targets},
                  MessageKind::kInterruptReply)) {
        return;
      }
      return interrupt_engines(peer, m);
    case MessageKind::kKeyAdmin:
      if (!permit(peer, auth::Operation::kKeyAdmin, m.envelope, {}, {}, MessageKind::kKeyAdminReply)) return;
      return key_admin(peer, m);
    case MessageKind::kClusterShutdown:
      if (!permit(peer, auth::Operation::kShutdown, m.envelope, m.envelope.targets, {m.envelope.targets},
                  MessageKind::kClusterShutdownReply)) {
        return;
      }
      if (!m.envelope.targets.empty()) return shutdown_engines(peer, m);
      LOG_INFO("hub") << "shutdown requested by client " << peer.id << " (" << peer.connection->peer_address() << ")";
      send_control_reply(peer, MessageKind::kClusterShutdownReply, m.envelope, "{}");
      return shutdown("requested by client " + std::to_string(peer.id));
    default:
      return reject(peer, "unexpected message '" + std::string(wire::kind_name(kind)) + "'");
  }
}

void Hub::on_hello(Peer& peer, const wire::Message& m) {
  if (m.envelope.kind != MessageKind::kHello) return reject(peer, "expected hello, got something else");
  auto hello = auth::decode_hello(m.envelope.text);
  if (!hello.ok()) return reject(peer, hello.status().message());
  auto exporter = peer.connection->export_keying_material(auth::kExporterLabel, wire::role_name(hello->role));
  if (!exporter.ok()) return reject(peer, exporter.status().message());
  const auth::Capability& capability =
      hello->role == wire::Role::kEngine ? options_.engine_capability : options_.client_capability;
  crypto::Digest expected = auth::capability_proof(capability, hello->role, *exporter);
  // T1/T2: no capability, the wrong one, or another role's; then who it is (trust mode,
  // revocation, expiry) and whether it has failed too often. Reasons name no secret.
  const bool proof_ok = crypto::constant_time_equal(expected, hello->proof);
  auto identity = options_.gate->admit(hello->role, proof_ok, *peer.connection);
  if (!identity.ok()) {
    const bool awaiting = identity.status().code() == StatusCode::kFailedPrecondition;
    return reject(peer, identity.status().message(), /*audited=*/true,
                  awaiting ? Outcome::kAwaitingTrust : Outcome::kNotAllowed);
  }
  admit(peer, std::move(identity).value(), hello->instance);
}

void Hub::admit(Peer& peer, PeerIdentity identity, const std::string& instance) {
  if (stopping_) return reject(peer, "controller is shutting down");
  const wire::Role role = identity.role;
  wire::Message welcome;
  welcome.envelope.kind = MessageKind::kWelcome;
  if (role == wire::Role::kEngine) {
    std::uint32_t id;
    auto known = engine_id_by_instance_.find(instance);
    if (known != engine_id_by_instance_.end()) {
      if (engines_.count(known->second)) return reject(peer, "an engine with this instance id is already connected");
      id = known->second;
    } else {
      id = next_engine_id_++;
      if (!instance.empty()) engine_id_by_instance_[instance] = id;
    }
    engines_[id] = &peer;
    welcome.envelope.engine_id = id;
    peer.id = id;
    peer.facts.id = id;
    scheduler_.add_engine(id);
  } else {
    peer.id = next_client_id_++;
    clients_[peer.id] = &peer;
    welcome.envelope.client_id = peer.id;
  }
  peer.authenticated = true;
  --unauthenticated_count_;
  peer.role = role;
  // The identity: its key (TLS proved the peer holds it). A client's results are its.
  peer.identity = std::move(identity);
  peer.instance = instance;
  peer.hello_deadline.reset();
  peer.connection->set_limits(options_.limits);
  peer.connection->send(std::move(welcome));
  LOG_INFO("hub") << wire::role_name(role) << " " << peer.id << " registered from " << peer.connection->peer_address()
                  << " as " << peer.identity.fingerprint.substr(0, 23) << "…"
                  << (peer.identity.name.empty() ? "" : " (" + peer.identity.name + ")");
}

void Hub::reject(Peer& peer, const std::string& reason, bool audited, Outcome status) {
  ++rejected_;
  if (!audited) {
    options_.gate->record(peer.authenticated ? &peer.identity : nullptr, peer.connection->peer_address(), "protocol",
                          "rejected", {}, reason);
    options_.gate->flush();
  }
  LOG_WARN("audit") << "rejected " << peer.connection->peer_address() << " ("
                    << (peer.authenticated ? std::string(wire::role_name(peer.role)) + " " + std::to_string(peer.id)
                                           : std::string("unauthenticated"))
                    << "): " << reason;
  peer.connection->send(wire::rejection(status, reason));
  peer.connection->close_after_flush(permission_denied(reason), std::chrono::milliseconds(500));
}

bool Hub::permit(Peer& client, auth::Operation op, const wire::Envelope& req, const std::vector<std::uint32_t>& engines,
                 const AuditDetails& details, MessageKind reply_kind) {
  Gatekeeper& gate = *options_.gate;
  std::string denial;
  if (engines.empty() && op == auth::Operation::kShutdown) {
    // The whole cluster: only a grant that is not limited to some engines covers it.
    if (!gate.may_everywhere(client.identity, op)) {
      denial = gate.explain_denial(client.identity, op, nullptr) + " on every engine (whole-cluster shutdown)";
    }
  } else if (engines.empty()) {
    if (!gate.may(client.identity, op)) denial = gate.explain_denial(client.identity, op, nullptr);
  } else if (!gate.may_everywhere(client.identity, op)) {
    for (std::uint32_t target : engines) {
      auto e = engines_.find(target);
      const auth::EngineFacts unknown{target, {}};
      const auth::EngineFacts& facts = e == engines_.end() ? unknown : e->second->facts;
      if (!gate.may(client.identity, op, facts)) {
        denial = gate.explain_denial(client.identity, op, &facts);
        break;
      }
    }
  }
  if (denial.empty()) {
    gate.record(&client.identity, client.connection->peer_address(), auth::operation_name(op), "allowed", details);
    return true;
  }
  deny(client, op, req, engines, details, reply_kind, denial);
  return false;
}

void Hub::deny(Peer& client, auth::Operation op, const wire::Envelope& req, const std::vector<std::uint32_t>& engines,
               const AuditDetails& details, MessageKind reply_kind, const std::string& denial) {
  Gatekeeper& gate = *options_.gate;
  const std::string& address = client.connection->peer_address();
  gate.record(&client.identity, address, auth::operation_name(op), "denied", details, denial);
  gate.flush();
  LOG_WARN("audit") << "denied " << auth::operation_name(op) << " to client " << client.id << " (" << address
                    << "): " << denial;
  const std::string text = "permission denied: " + denial;
  if (reply_kind == MessageKind::kTaskReply) {
    for (std::uint32_t target : engines.empty() ? std::vector<std::uint32_t>{wire::kAnyEngine} : engines) {
      reply_error(client.id, req.request_id, target, Outcome::kNotAllowed, text);
    }
  } else {
    send_to_client(client, wire::control_refusal(reply_kind, req, client.id, Outcome::kNotAllowed, text));
  }
}

bool Hub::may_read(const Peer& client, const TaskRecord& record) const {
  return record.owner == client.identity.fingerprint ||
         options_.gate->may(client.identity, auth::Operation::kReadOthersResults);
}

void Hub::reload() {
  (void)options_.gate->reload();
  recheck_peers();
}

void Hub::recheck_peers() {
  std::vector<std::pair<Peer*, std::string>> refused;
  for (auto& [serial, peer] : peers_) {
    if (!peer->authenticated || !peer->connection->is_open()) continue;
    Status st = options_.gate->still_admissible(peer->identity);
    if (!st.ok()) refused.emplace_back(peer.get(), st.message());
  }
  for (auto& [peer, why] : refused) {
    // T14/T15: a revoked, removed or expired identity loses its connection at once.
    options_.gate->record(&peer->identity, peer->connection->peer_address(), "disconnect", "rejected", {}, why);
    reject(*peer, why, /*audited=*/true);
  }
  if (!refused.empty()) options_.gate->flush();
}

void Hub::key_admin(Peer& client, const wire::Message& m) {
  auto reply = options_.gate->key_admin(client.identity, client.connection->peer_address(), m.envelope.text);
  if (!reply.ok()) {
    return send_to_client(client, wire::control_refusal(MessageKind::kKeyAdminReply, m.envelope, client.id,
                                                        wire::failure_outcome(reply.status()), reply.status().message()));
  }
  send_control_reply(client, MessageKind::kKeyAdminReply, m.envelope, std::move(reply).value());
  recheck_peers();  // a revoked key is cut off now, not at the next look
}

void Hub::route_request(Peer& client, wire::Message&& m) {
  const wire::Envelope& req = m.envelope;
  const bool balanced = req.load_balanced();
  if (stopping_) {
    for (std::uint32_t target : balanced ? std::vector<std::uint32_t>{wire::kAnyEngine} : req.targets) {
      reply_error(client.id, req.request_id, target, Outcome::kShuttingDown, "controller is shutting down");
    }
    return;
  }
  // Authorization (issue 5): direct requests need the operation on every target; a
  // load-balanced one runs only where the policy lets this client run it.
  const auth::Operation op = operation_of(req.kind);
  AuditDetails audit{req.targets, code_digest(m), scheduler_.next_id()};
  std::optional<std::vector<std::uint32_t>> policy_allowed;
  if (!balanced) {
    if (!permit(client, op, req, req.targets, audit, MessageKind::kTaskReply)) return;
  } else if (!options_.gate->may_everywhere(client.identity, op)) {
    std::vector<std::uint32_t> candidates = req.targets;
    if (candidates.empty()) {
      for (const auto& [id, engine] : engines_) candidates.push_back(id);
    }
    policy_allowed.emplace();
    for (std::uint32_t id : candidates) {
      auto e = engines_.find(id);
      if (e != engines_.end() && options_.gate->may(client.identity, op, e->second->facts)) policy_allowed->push_back(id);
    }
    if (policy_allowed->empty()) {
      // Never submit with an empty allowed set: to the scheduler that means "any engine".
      return deny(client, op, req, {}, audit, MessageKind::kTaskReply,
                  "no connected engine is one this identity may use for '" + std::string(auth::operation_name(op)) + "'");
    }
    options_.gate->record(&client.identity, client.connection->peer_address(), auth::operation_name(op), "allowed", audit,
                          "load-balanced over the " + std::to_string(policy_allowed->size()) +
                              " engine(s) the policy allows");
  } else {
    options_.gate->record(&client.identity, client.connection->peer_address(), auth::operation_name(op), "allowed", audit);
  }
  TaskSpec spec;
  spec.client_id = client.id;
  spec.request_id = req.request_id;
  spec.kind = req.kind;
  spec.flags = req.forwarded_flags();
  spec.body = std::move(m.segments);  // shared by every task of this request, not copied
  const auto now = Clock::now();
  if (!balanced) {
    // The ids go out before the tasks are submitted: submit() may already answer a task
    // (unknown engine), and the client should know its ids first. submit() numbers in order.
    std::vector<TaskId> planned;
    for (std::size_t i = 0; i < req.targets.size(); ++i) planned.push_back(scheduler_.next_id() + i);
    acknowledge(client, req.request_id, planned);
    if (options_.store) {
      for (std::size_t i = 0; i < planned.size(); ++i) {
        TaskRecord r;
        r.task_id = planned[i];
        r.owner = client.identity.fingerprint;
        r.request_id = req.request_id;
        r.kind = std::string(wire::kind_name(req.kind));
        r.targets = {req.targets[i]};
        r.submitted_us = now_us();
        options_.store->record_submitted(std::move(r));
      }
    }
    for (std::uint32_t target : req.targets) {
      TaskSpec one = spec;
      one.engine = target;
      scheduler_.submit(std::move(one), now);
    }
    return;
  }
  auto options = wire::decode_task_options(req.text);
  if (!options.ok()) return reject(client, options.status().message());
  spec.allowed = policy_allowed ? std::move(*policy_allowed) : req.targets;
  spec.retries = options->retries;
  if (options->timeout_ms > 0) spec.timeout = std::chrono::milliseconds(options->timeout_ms);
  spec.after = std::move(options->after);
  spec.follow = std::move(options->follow);
  acknowledge(client, req.request_id, {scheduler_.next_id()});
  if (options_.store) {
    TaskRecord r;
    r.task_id = scheduler_.next_id();
    r.owner = client.identity.fingerprint;
    r.request_id = req.request_id;
    r.kind = std::string(wire::kind_name(req.kind));
    r.targets = spec.allowed;
    r.submitted_us = now_us();
    options_.store->record_submitted(std::move(r));
  }
  scheduler_.submit(std::move(spec), now);
}

void Hub::acknowledge(Peer& client, std::uint64_t request_id, const std::vector<TaskId>& ids) {
  wire::Message ack;
  ack.envelope.kind = MessageKind::kSubmitted;
  ack.envelope.request_id = request_id;
  ack.envelope.client_id = client.id;
  ack.segments.push_back(wire::encode_ids(ids));
  if (client.pending_acks.empty()) client.acks_since = Clock::now();
  client.pending_acks.push_back(std::move(ack));
  if (!ack_flush_armed_) arm_ack_flush(kAckDelay);
}

void Hub::arm_ack_flush(Clock::duration delay) {
  ack_flush_armed_ = true;
  // Whole milliseconds, at least one: an ack waits at most about twice kAckDelay.
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(delay);
  ack_flush_ = loop_.after(std::max(ms, std::chrono::milliseconds(1)), [this] {
    ack_flush_armed_ = false;
    flush_due_acks();
  });
}

void Hub::flush_acks(Peer& client) {
  for (auto& ack : client.pending_acks) client.connection->send(std::move(ack));
  client.pending_acks.clear();
}

void Hub::flush_due_acks(bool everything) {
  // Clients are few (tens): looking at each is cheaper than keeping a list of those with acks.
  const auto now = Clock::now();
  auto next_due = Clock::time_point::max();
  for (auto& [id, client] : clients_) {
    if (client->pending_acks.empty()) continue;
    // Acks still young wait on: the reply they are waiting for may come any moment.
    if (!everything && client->acks_since + kAckDelay > now) {
      next_due = std::min(next_due, client->acks_since + kAckDelay);
      continue;
    }
    flush_acks(*client);
  }
  if (next_due != Clock::time_point::max() && !ack_flush_armed_) arm_ack_flush(next_due - now);
}

void Hub::send_to_client(Peer& client, wire::Message message) {
  if (!client.pending_acks.empty()) flush_acks(client);
  client.connection->send(std::move(message));
}

void Hub::dispatch(EngineId engine, TaskId id, const TaskSpec& task) {
  auto e = engines_.find(engine);
  if (e == engines_.end()) return;  // cannot happen: the scheduler only knows live engines
  wire::Message forward;
  forward.envelope.kind = task.kind;
  forward.envelope.set_forwarded_flags(task.flags);
  forward.envelope.task_id = id;
  forward.envelope.client_id = task.client_id;
  forward.envelope.engine_id = engine;
  forward.segments = task.body;  // shared, not copied
  e->second->connection->send(std::move(forward));
  if (options_.store) options_.store->record_started(id, engine, now_us());
}

void Hub::fail(TaskId id, const TaskSpec& task, TaskFailure why, const std::string& text) {
  std::uint32_t engine = task.engine.value_or(wire::kAnyEngine);
  reply_error(task.client_id, task.request_id, engine, route_status(why), text);
  if (options_.store) options_.store->record_finished(id, stored_state(why), now_us(), {}, text);
  if (waiters_.count(id)) {
    deliver_to_waiters(id, wire::task_reply(route_status(why), {.task_id = id, .engine_id = engine}, text));
  }
}

void Hub::deliver_to_waiters(TaskId id, const wire::Message& reply) {
  auto w = waiters_.find(id);
  if (w == waiters_.end()) return;
  for (const auto& [client_id, request_id] : w->second) {
    auto client = clients_.find(client_id);
    if (client == clients_.end()) continue;
    wire::Message copy = reply;  // segments are shared
    copy.envelope.request_id = request_id;
    copy.envelope.client_id = client_id;
    send_to_client(*client->second, std::move(copy));
  }
  waiters_.erase(w);
}

void Hub::route_reply(Peer& engine, wire::Message&& m) {
  const bool success = m.envelope.outcome() == Outcome::kOk;
  // T8: an engine may only answer tasks running on it; anything else is ignored.
  auto task = scheduler_.finished(m.envelope.task_id, engine.id, success, Clock::now());
  if (!task) {
    LOG_WARN("hub") << "engine " << engine.id << " replied to task " << m.envelope.task_id
                    << " it does not hold; ignored";
    return;
  }
  ++engine.tasks_done;
  ++tasks_completed_;
  const TaskId id = m.envelope.task_id;
  if (options_.store) {
    options_.store->record_finished(id, success ? TaskState::kSucceeded : TaskState::kFailed, now_us(), m.segments,
                                    success ? "" : "the task raised");
  }
  wire::Message reply = wire::task_reply(
      success ? Outcome::kOk : Outcome::kPythonError,
      {.request_id = task->request_id, .task_id = id, .engine_id = engine.id, .client_id = task->client_id}, {},
      std::move(m.segments));
  deliver_to_waiters(id, reply);
  auto client = clients_.find(task->client_id);
  if (client == clients_.end()) return;  // the client left: the store keeps the result (F3)
  send_to_client(*client->second, std::move(reply));
}

void Hub::get_results(Peer& client, const wire::Message& m) {
  auto ids = m.segments.size() == 1 ? wire::decode_ids(m.segments[0]) : StatusOr<std::vector<std::uint64_t>>(data_loss("no ids"));
  if (!ids.ok()) return reject(client, ids.status().message());
  const std::uint64_t request_id = m.envelope.request_id;
  auto answer = [&](TaskId id, Outcome status, std::uint32_t engine, std::string text,
                    std::vector<SharedBytes> segments) {
    send_to_client(client, wire::task_reply(status, {.request_id = request_id, .task_id = id, .engine_id = engine,
                                                     .client_id = client.id},
                                            std::move(text), std::move(segments)));
  };
  for (TaskId id : *ids) {
    auto record = options_.store ? options_.store->get(id) : StatusOr<std::optional<TaskRecord>>(std::nullopt);
    // T10: another client's task is answered exactly like one that does not exist.
    if (!record.ok() || !*record || !may_read(client, **record)) {
      answer(id, Outcome::kNoSuchTask, wire::kAnyEngine, "no task " + std::to_string(id) + " of yours", {});
      continue;
    }
    const TaskRecord& r = **record;
    const std::uint32_t engine = r.engine.value_or(wire::kAnyEngine);
    if (!is_finished(r.state)) {
      waiters_[id].emplace_back(client.id, request_id);
      continue;
    }
    if (r.state == TaskState::kLost) {
      answer(id, Outcome::kLost, engine, "lost: the controller stopped before task " + std::to_string(id) +
             " finished; it may or may not have run", {});
      continue;
    }
    auto result = options_.store->result(id);
    if (result.ok() && !result->empty()) {
      answer(id, r.state == TaskState::kFailed ? Outcome::kPythonError : Outcome::kOk, engine, r.kind,
             std::move(result).value());
    } else if (r.state == TaskState::kAborted) {
      answer(id, Outcome::kAborted, engine, r.error, {});
    } else {
      answer(id, Outcome::kEngineDied, engine,
             r.error.empty() ? (result.ok() ? "no result" : result.status().message()) : r.error, {});
    }
  }
}

void Hub::result_status(Peer& client, const wire::Message& m) {
  auto ids = m.segments.size() == 1 ? wire::decode_ids(m.segments[0]) : StatusOr<std::vector<std::uint64_t>>(data_loss("no ids"));
  if (!ids.ok()) return reject(client, ids.status().message());
  nlohmann::json records = nlohmann::json::array();
  for (TaskId id : *ids) {
    auto record = options_.store ? options_.store->get(id) : StatusOr<std::optional<TaskRecord>>(std::nullopt);
    if (record.ok() && *record && may_read(client, **record)) {
      records.push_back(record_json(**record));
    } else {
      records.push_back({{"task_id", id}, {"state", "unknown"}});
    }
  }
  send_control_reply(client, MessageKind::kResultStatusReply, m.envelope, nlohmann::json{{"records", records}}.dump());
}

void Hub::db_query(Peer& client, const wire::Message& m) {
  auto filter = nlohmann::json::parse(m.envelope.text.empty() ? "{}" : m.envelope.text, nullptr, false);
  if (filter.is_discarded() || !filter.is_object()) return reject(client, "db query filter must be a JSON object");
  TaskStore::Query q;
  // T10: only one's own tasks, unless the policy lets this client read everyone's.
  if (!options_.gate->may(client.identity, auth::Operation::kReadOthersResults)) q.owner = client.identity.fingerprint;
  q.limit = std::min<std::size_t>(filter.value("limit", 1000), 100'000);
  q.after_task_id = filter.value("after_task_id", std::uint64_t{0});
  if (filter.contains("submitted_after") && filter["submitted_after"].is_number()) {
    q.submitted_after_us = static_cast<std::int64_t>(filter["submitted_after"].get<double>() * 1e6);
  }
  if (filter.contains("states") && filter["states"].is_array()) {
    for (const auto& st : filter["states"]) {
      for (TaskState candidate : {TaskState::kQueued, TaskState::kRunning, TaskState::kSucceeded, TaskState::kFailed,
                                  TaskState::kAborted, TaskState::kLost}) {
        if (st.is_string() && st.get<std::string>() == task_state_name(candidate)) q.states.push_back(candidate);
      }
    }
  }
  nlohmann::json records = nlohmann::json::array();
  if (options_.store) {
    auto found = options_.store->query(q);
    if (!found.ok()) {
      return send_to_client(client, wire::control_refusal(MessageKind::kDbQueryReply, m.envelope, client.id,
                                                          wire::failure_outcome(found.status()), found.status().message()));
    }
    for (const auto& r : *found) records.push_back(record_json(r));
  }
  send_control_reply(client, MessageKind::kDbQueryReply, m.envelope, nlohmann::json{{"records", records}}.dump());
}

void Hub::purge_results(Peer& client, const wire::Message& m) {
  auto ids = m.segments.empty() ? StatusOr<std::vector<std::uint64_t>>(std::vector<std::uint64_t>{})
                                : wire::decode_ids(m.segments[0]);
  if (!ids.ok()) return reject(client, ids.status().message());
  std::size_t purged = 0;
  if (options_.store) {
    auto n = options_.store->purge(client.identity.fingerprint, *ids);
    if (!n.ok()) {
      return send_to_client(client, wire::control_refusal(MessageKind::kPurgeResultsReply, m.envelope, client.id,
                                                          wire::failure_outcome(n.status()), n.status().message()));
    }
    purged = *n;
  }
  send_control_reply(client, MessageKind::kPurgeResultsReply, m.envelope, nlohmann::json{{"purged", purged}}.dump());
}

std::string Hub::engine_list_json() const {
  nlohmann::json ids = nlohmann::json::array();
  nlohmann::json tags = nlohmann::json::object();
  for (const auto& [id, engine] : engines_) {
    ids.push_back(id);
    tags[std::to_string(id)] = nlohmann::json::parse(engine->tags_json, nullptr, false);
  }
  return nlohmann::json{{"engines", ids}, {"tags", tags}}.dump();
}

void Hub::record_engine_info(Peer& engine, const wire::Message& m) {
  // Signed by the engine's own key over this session (auth/registration.h), or refused.
  if (m.segments.size() != 1 || m.segments[0].size() > 1024) {
    return reject(engine, "engine registration data must carry one signature");
  }
  auto exporter =
      engine.connection->export_keying_material(auth::kRegistrationExporterLabel, auth::kRegistrationExporterContext);
  auto cert = engine.connection->peer_certificate();
  if (!exporter.ok() || !cert.ok()) return reject(engine, "cannot check the registration signature");
  Status signed_ok = tls::verify_signature_sha256(
      cert->cert_pem, auth::registration_signed_bytes(*exporter, m.envelope.text), m.segments[0].view());
  if (!signed_ok.ok()) return reject(engine, "engine registration data: " + signed_ok.message());
  // Bounded by the head limit; only a flat object of scalars is kept.
  auto info = nlohmann::json::parse(m.envelope.text, nullptr, /*allow_exceptions=*/false);
  if (info.is_discarded() || !info.is_object() || info.size() > 256) {
    return reject(engine, "engine info must be a JSON object of at most 256 tags");
  }
  for (const auto& [key, value] : info.items()) {
    if (key.size() > 64 || value.is_structured()) return reject(engine, "engine tags are flat: name -> scalar");
  }
  engine.tags_json = info.dump();
  options_.gate->record(&engine.identity, engine.connection->peer_address(), "engine.register", "allowed",
                        {{engine.id}, crypto::to_hex(crypto::sha256(crypto::as_bytes(m.envelope.text))), 0},
                        "signed by the engine's key");
  // The policy matches engines by these tags; they come only from this engine's own
  // authenticated connection, so no peer can set facts for another engine.
  engine.facts.tags.clear();
  for (const auto& [key, value] : info.items()) {
    engine.facts.tags[key] = value.is_string() ? value.get<std::string>() : value.dump();
  }
}

void Hub::shutdown_engines(Peer& client, const wire::Message& m) {
  std::size_t stopped = 0;
  for (std::uint32_t target : m.envelope.targets) {
    auto e = engines_.find(target);
    if (e == engines_.end()) continue;
    wire::Message bye;
    bye.envelope.kind = MessageKind::kEngineShutdown;
    e->second->connection->send(std::move(bye));
    ++stopped;
  }
  LOG_INFO("hub") << "client " << client.id << " shut down " << stopped << " engine(s)";
  send_control_reply(client, MessageKind::kClusterShutdownReply, m.envelope, nlohmann::json{{"stopped", stopped}}.dump());
}

void Hub::abort_requests(Peer& client, const wire::Message& m) {
  auto ids = m.segments.empty() ? StatusOr<std::vector<std::uint64_t>>(std::vector<std::uint64_t>{})
                                : wire::decode_ids(m.segments[0]);
  if (!ids.ok()) return reject(client, ids.status().message());
  std::size_t aborted = scheduler_.abort(client.id, *ids);
  send_control_reply(client, MessageKind::kAbortReply, m.envelope,
                     nlohmann::json{{"aborted", aborted}}.dump());
}

void Hub::interrupt_engines(Peer& client, const wire::Message& m) {
  std::size_t sent = 0;
  for (std::uint32_t target : m.envelope.targets) {
    auto e = engines_.find(target);
    auto task = scheduler_.oldest_running(target);
    if (e == engines_.end() || !task) continue;  // nothing runs there
    wire::Message interrupt;
    interrupt.envelope.kind = MessageKind::kEngineInterrupt;
    interrupt.envelope.engine_id = target;
    // Names the task, so one that was sent but has not started yet is interrupted too.
    interrupt.envelope.task_id = *task;
    e->second->connection->send(std::move(interrupt));
    ++sent;
  }
  LOG_INFO("hub") << "client " << client.id << " interrupted " << sent << " engine(s)";
  send_control_reply(client, MessageKind::kInterruptReply, m.envelope, nlohmann::json{{"interrupted", sent}}.dump());
}

std::string Hub::queue_status_json() const {
  nlohmann::json engines = nlohmann::json::object();
  for (const auto& [id, load] : scheduler_.queue_status()) {
    engines[std::to_string(id)] = {
        {"queue", load.queued}, {"tasks", load.running}, {"completed", load.completed}, {"window", load.window}};
  }
  return nlohmann::json{{"engines", engines},
                        {"unassigned", scheduler_.unassigned()},
                        {"waiting", scheduler_.waiting()},
                        {"scheme", std::string(scheme_name(scheduler_.options().scheme))},
                        {"hwm", scheduler_.options().hwm == kAdaptiveWindow
                                    ? nlohmann::json("auto")
                                    : nlohmann::json(scheduler_.options().hwm)}}
      .dump();
}

void Hub::reply_error(std::uint32_t client_id, std::uint64_t request_id, std::uint32_t engine_id,
                      Outcome status, const std::string& text) {
  auto client = clients_.find(client_id);
  if (client == clients_.end()) return;
  send_to_client(*client->second,
                 wire::task_reply(status, {.request_id = request_id, .engine_id = engine_id, .client_id = client_id}, text));
}

void Hub::send_control_reply(Peer& client, MessageKind kind, const wire::Envelope& request, std::string json) {
  send_to_client(client, wire::control_reply(kind, request, client.id, std::move(json)));
}

std::string Hub::status_json() const {
  nlohmann::json engines = nlohmann::json::array();
  auto loads = scheduler_.queue_status();
  for (const auto& [id, p] : engines_) {
    engines.push_back({{"id", id},
                       {"address", p->connection->peer_address()},
                       {"identity", p->identity.fingerprint},
                       {"in_flight", loads[id].running},
                       {"tasks_done", p->tasks_done},
                       {"connected_s", seconds_since(p->connected_at)},
                       {"last_heartbeat_s", seconds_since(p->last_seen)}});
  }
  return nlohmann::json{{"engines", engines},
                        {"clients", clients_.size()},
                        {"tasks_in_flight", scheduler_.tasks()},
                        {"tasks_completed", tasks_completed_},
                        {"connections_rejected", rejected_},
                        {"uptime_s", seconds_since(started_at_)}}
      .dump();
}

void Hub::on_close(std::uint64_t serial, const Status& reason) {
  auto it = peers_.find(serial);
  if (it == peers_.end()) return;
  Peer& peer = *it->second;
  if (peer.authenticated && peer.role == wire::Role::kEngine) {
    engines_.erase(peer.id);
    std::size_t affected = scheduler_.remove_engine(
        peer.id, "engine " + std::to_string(peer.id) + " died or disconnected while running this task (" +
                     reason.message() + ")");
    LOG_WARN("hub") << "engine " << peer.id << " disconnected (" << reason.message() << "); " << affected
                    << " task(s) failed or resubmitted";
  } else if (peer.authenticated) {
    clients_.erase(peer.id);
    LOG_INFO("hub") << "client " << peer.id << " disconnected (" << reason.message() << ")";
  } else {
    --unauthenticated_count_;
    // Decoding errors, timeouts and refusals of peers that never authenticated.
    LOG_INFO("hub") << "unauthenticated connection from " << peer.connection->peer_address()
                    << " closed: " << reason.message();
  }
  // Erase later: this may run inside one of the peer's own handlers.
  loop_.post([this, serial] {
    peers_.erase(serial);
    maybe_finish_shutdown();
  });
}

void Hub::sweep_heartbeats() {
  auto now = Clock::now();
  std::vector<Peer*> silent;
  for (const auto& [id, p] : engines_) {
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
  flush_store(/*wait=*/true);
  flush_due_acks(/*everything=*/true);
  for (auto& [serial, p] : peers_) {
    if (p->authenticated && p->role == wire::Role::kEngine) {
      wire::Message bye;
      bye.envelope.kind = MessageKind::kEngineShutdown;
      p->connection->send(std::move(bye));
    }
    p->connection->close_after_flush(unavailable("controller shut down"), std::chrono::milliseconds(1000));
  }
  stop_deadline_ = loop_.after(std::chrono::milliseconds(3000), [this] {
    if (on_stopped_) std::exchange(on_stopped_, nullptr)();
  });
  maybe_finish_shutdown();
}

void Hub::maybe_finish_shutdown() {
  if (stopping_ && peers_.empty() && on_stopped_) std::exchange(on_stopped_, nullptr)();
}

}  // namespace testudo::controller
