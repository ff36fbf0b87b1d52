// The hub's data path: requests from clients to the scheduler and on to engines, replies and
// live output from engines back to the client that asked (and to clients waiting for the
// stored result), and each request's acknowledgement.
#include "base/log.h"
#include "controller/hub.h"
#include "controller/relay_tap.h"
#include "crypto/crypto.h"
#include "e2e/sealed_body.h"
#include "wire/control.h"
#include "wire/reply.h"

namespace testudo::controller {

namespace {
std::unique_ptr<RelayTap>& installed_tap() {
  static std::unique_ptr<RelayTap> tap;
  return tap;
}
}  // namespace

void install_relay_tap(std::unique_ptr<RelayTap> tap) { installed_tap() = std::move(tap); }
RelayTap* relay_tap() { return installed_tap().get(); }

namespace {

using wire::MessageKind;

TaskState stored_state(TaskFailure why) { return why == TaskFailure::kAborted ? TaskState::kAborted : TaskState::kFailed; }

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
// pickled (function, args, kwargs) head (apply); never the bytes themselves. Of a sealed
// request, the digest its seal header states: the controller cannot check it, the engine
// does (it refuses a body whose code has another digest), so the log names what ran.
std::string code_digest(const wire::Message& m) {
  if ((m.envelope.kind != MessageKind::kExecute && m.envelope.kind != MessageKind::kApply) || m.segments.empty()) {
    return {};
  }
  if (m.envelope.sealed()) {
    auto header = e2e::decode_seal_header(m.segments[0].span());
    return header.ok() ? "sealed:" + crypto::to_hex(header->code_digest) : "sealed:unreadable";
  }
  return crypto::to_hex(crypto::sha256(m.segments[0].span()));
}

// A sealed direct request's segments are one equal part per target (wire/message.h): the
// part of target `index`, or empty if they do not split that way.
std::vector<SharedBytes> sealed_part(const std::vector<SharedBytes>& segments, std::size_t targets, std::size_t index) {
  const std::size_t per_target = segments.size() / targets;
  return {segments.begin() + static_cast<std::ptrdiff_t>(index * per_target),
          segments.begin() + static_cast<std::ptrdiff_t>((index + 1) * per_target)};
}

}  // namespace

std::shared_ptr<wire::StreamSink> Hub::offer_stream(std::uint64_t serial, const wire::Message& first,
                                                    std::span<const std::uint64_t> sizes) {
  Peer* found = peers_.find(serial);
  if (!found || !found->admitted || !found->connection->is_open() || stopping_ || relay_tap()) return nullptr;
  Peer& client = *found;
  const wire::Envelope& req = first.envelope;
  const bool request = req.kind == MessageKind::kExecute || req.kind == MessageKind::kPush ||
                       req.kind == MessageKind::kApply;
  // Anything else is received whole and judged by on_message as usual. A sealed request to
  // several engines holds one part per engine, each part its own segments: not relayed.
  if (!request || !wire::is_allowed_after_auth(client.role, req.kind) || req.load_balanced() ||
      req.targets.empty() || (req.sealed() && req.targets.size() != 1)) {
    return nullptr;
  }
  // Every target takes it now, and none is already relaying another (streamed_request.h).
  std::set<std::uint32_t> distinct;
  for (std::uint32_t target : req.targets) {
    Peer* engine = peers_.engine(target);
    if (!distinct.insert(target).second || !engine || engine->connection->sending_stream() ||
        !scheduler_.sends_direct_now(target)) {
      return nullptr;
    }
  }
  auto streamed = std::make_shared<StreamedRequest>(
      std::vector<std::uint64_t>(sizes.begin(), sizes.end()), options_.relay_window_bytes,
      [this](const Status& why, const StreamedRequest::Tasks& tasks) { relay_abandoned(why, tasks); });
  client.last_seen = clock_.now();
  wire::Message m;
  m.envelope = req;
  m.segments = budget_.charge(client.id, first.segments);  // the first segment; the rest is windowed
  route_request(client, std::move(m), streamed);
  if (streamed->engines() > 0) ++relayed_;
  if (over_limits(client.id) && client.connection->is_open()) pause_client(client);
  // Also when nothing was dispatched (refused): the rest is read and dropped as it arrives.
  return streamed;
}

void Hub::relay_abandoned(const Status& why, const StreamedRequest::Tasks& tasks) {
  const std::string text = "the request never arrived whole (" + why.message() + "); it never ran";
  for (const auto& [id, engine] : tasks) {
    // Its engine drops the message unread and will not answer: the task ends here.
    if (auto task = scheduler_.finished(id, engine, false, clock_.now())) fail(id, *task, TaskFailure::kAborted, text);
  }
}

void Hub::route_request(Peer& client, wire::Message&& m, std::shared_ptr<StreamedRequest> streamed) {
  const wire::Envelope& req = m.envelope;
  const bool balanced = req.load_balanced();
  if (stopping_) {
    for (std::uint32_t target : balanced ? std::vector<std::uint32_t>{wire::kAnyEngine} : req.targets) {
      reply_error(client.id, req.request_id, target, Outcome::kShuttingDown, "controller is shutting down");
    }
    return;
  }
  // Never hand out an id the task store might not remember (disk full): refuse instead.
  if (Status room = results_.room_for_tasks(scheduler_.next_id(), balanced ? 1 : req.targets.size()); !room.ok()) {
    for (std::uint32_t target : balanced || req.targets.empty() ? std::vector<std::uint32_t>{wire::kAnyEngine} : req.targets) {
      reply_error(client.id, req.request_id, target, Outcome::kControllerFailed, room.message());
    }
    return;
  }
  // A sealed direct request carries one part per target; a sealed load-balanced one a single
  // part that any engine holding the client's balanced key opens.
  if (req.sealed() && !balanced &&
      (req.targets.empty() || m.segments.size() < req.targets.size() || m.segments.size() % req.targets.size() != 0)) {
    return reject(client, "a sealed request's segments must split evenly among its targets");
  }
  // A bulk request's part per target (its one part, load balanced) is [seal header, transfer
  // sizes]: the ciphertext comes on data connections, sized here so the tickets can name
  // exactly what each moves.
  std::vector<std::uint64_t> bulk_bytes;
  if (req.bulk()) {
    const std::size_t parts = balanced ? 1 : req.targets.size();
    if (!req.sealed() || parts == 0 || m.segments.size() != 2 * parts) {
      return reject(client, "a bulk request carries a seal header and transfer sizes per target");
    }
    for (std::size_t i = 0; i < parts; ++i) {
      auto sizes = net::decode_transfer_sizes(m.segments[2 * i + 1].span(), options_.limits.max_segments,
                                              options_.limits.max_message_bytes);
      if (!sizes.ok()) return reject(client, "bulk request: " + sizes.status().message());
      std::uint64_t total = 0;
      for (std::uint64_t size : *sizes) total += size;
      if (total == 0) return reject(client, "bulk request: an empty transfer");
      bulk_bytes.push_back(total);
    }
  }
  std::optional<wire::TaskOptions> options;
  if (balanced) {
    auto decoded = wire::decode_task_options(req.text);
    if (!decoded.ok()) return reject(client, decoded.status().message());
    options = std::move(decoded).value();
  }
  // Direct requests need the operation on every target; a load-balanced one runs only where
  // the policy lets this client run it (among the engines it named, or all connected ones).
  AccessRequest access;
  access.op = operation_of(req.kind);
  if (!balanced) {
    access.scope = req.targets.empty() ? AccessRequest::Scope::kNoEngine : AccessRequest::Scope::kEachOf;
    access.engines = facts_of(req.targets);
  } else {
    access.scope = AccessRequest::Scope::kAnyOf;
    std::vector<std::uint32_t> candidates = req.targets;
    if (candidates.empty()) {
      for (const auto& [id, engine] : peers_.engines()) candidates.push_back(id);
    }
    for (std::uint32_t id : candidates) {
      // Only connected engines: an unknown id can run nothing.
      if (Peer* e = peers_.engine(id)) access.engines.push_back(e->facts);
    }
  }
  const Decision decision = gate_.authorize(client.identity, client.connection->peer_address(), access,
                                            {req.targets, code_digest(m), scheduler_.next_id()});
  if (!decision.allowed) {
    const std::string text = "permission denied: " + decision.reason;
    LOG_WARN("audit") << "denied " << auth::operation_name(access.op) << " to client " << client.id << " ("
                      << client.connection->peer_address() << "): " << decision.reason;
    for (std::uint32_t target : balanced || req.targets.empty() ? std::vector<std::uint32_t>{wire::kAnyEngine} : req.targets) {
      reply_error(client.id, req.request_id, target, Outcome::kNotAllowed, text);
    }
    return;
  }
  TaskSpec spec;
  spec.client_id = client.id;
  spec.request_id = req.request_id;
  spec.kind = req.kind;
  spec.flags = req.forwarded_flags();
  spec.body = std::move(m.segments);  // shared by every task of this request, not copied
  spec.streamed = std::move(streamed);
  const auto now = clock_.now();
  if (!balanced) {
    // The ids go out before the tasks are submitted: submit() may already answer a task
    // (unknown engine), and the client should know its ids first. submit() numbers in order.
    std::vector<TaskId> planned;
    for (std::size_t i = 0; i < req.targets.size(); ++i) planned.push_back(scheduler_.next_id() + i);
    acknowledge(client, req.request_id, planned);
    for (std::size_t i = 0; i < planned.size(); ++i) {
      results_.submitted(planned[i], client.identity, req.request_id, req.kind, {req.targets[i]});
    }
    for (std::size_t i = 0; i < req.targets.size(); ++i) {
      TaskSpec one = spec;
      one.engine = req.targets[i];
      // Each engine gets only the part sealed for it; the others would not open there anyway.
      if (req.sealed()) one.body = sealed_part(spec.body, req.targets.size(), i);
      if (req.bulk()) one.bulk_bytes = bulk_bytes[i];  // its ticket is issued when it leaves
      scheduler_.submit(std::move(one), now);
    }
    return;
  }
  spec.allowed = decision.engines ? *decision.engines : req.targets;
  spec.retries = options->retries;
  if (options->timeout_ms > 0) spec.timeout = std::chrono::milliseconds(options->timeout_ms);
  spec.after = std::move(options->after);
  spec.follow = std::move(options->follow);
  spec.after_rule = options->after_rule;
  spec.follow_rule = options->follow_rule;
  if (req.bulk()) spec.bulk_bytes = bulk_bytes[0];  // a ticket each time it leaves (retries too)
  const TaskId id = scheduler_.next_id();
  acknowledge(client, req.request_id, {id});
  results_.submitted(id, client.identity, req.request_id, req.kind, spec.allowed);
  scheduler_.submit(std::move(spec), now);
}

StatusOr<net::Ticket> Hub::issue_bulk_ticket(TaskId id, EngineId engine, const TaskSpec& task) {
  // Issued as the task leaves, not when it was submitted: a task may wait here behind others
  // for long, and both ends should dial at once, within the ticket's deadline. A retried
  // load-balanced task leaves again: its earlier transfer (to the engine that failed it) is
  // over, whatever state it is in.
  if (auto earlier = request_transfers_.find(id); earlier != request_transfers_.end()) {
    const std::uint64_t old_transfer = earlier->second;
    request_transfers_.erase(earlier);  // before cancel: it may report (and look here) at once
    bulk_.cancel(old_transfer, "task " + std::to_string(id) + " left again for another engine");
  }
  if (auto open = bulk_by_client_.find(task.client_id);
      open != bulk_by_client_.end() && open->second >= options_.bulk_per_client) {
    return resource_exhausted("its client has " + std::to_string(open->second) +
                              " bulk transfers open, the most one client may at once");
  }
  const std::uint64_t transfer = next_transfer_++;
  TESTUDO_ASSIGN_OR_RETURN(net::Ticket ticket, bulk_.issue(transfer, task.bulk_bytes));
  offer_to_tap(transfer, RelayTap::BulkTransfer::kRequestBody);
  bulk_jobs_[transfer] = BulkRequestBody{id, task.client_id};
  ++bulk_by_client_[task.client_id];
  request_transfers_[id] = transfer;
  if (Peer* client = peers_.client(task.client_id)) {
    wire::Message t;
    t.envelope.kind = MessageKind::kBulkTicket;
    t.envelope.request_id = task.request_id;
    t.envelope.task_id = id;
    t.envelope.engine_id = engine;
    t.envelope.client_id = task.client_id;
    t.segments.push_back(SharedBytes::copy_of(std::span<const std::byte>(ticket)));
    send_to_client(*client, std::move(t));  // after its held kSubmitted (send_to_client sends that first)
  }
  return ticket;
}

void Hub::route_bulk_reply(Peer& engine, wire::Message&& m) {
  const TaskId id = m.envelope.task_id;
  wire::Message answer;  // the engine's ticket, or none: "send it whole"
  answer.envelope.kind = MessageKind::kBulkTicket;
  answer.envelope.task_id = id;
  // T8: only a task running there; anything else is ignored, as any stray reply.
  if (!scheduler_.running_spec(id, engine.id)) {
    LOG_WARN("hub") << "engine " << engine.id << " offered the result of task " << id
                    << " it does not hold; ignored";
    return;
  }
  auto sizes = m.segments.size() == 2 ? net::decode_transfer_sizes(m.segments[1].span(), options_.limits.max_segments,
                                                                   options_.limits.max_message_bytes)
                                      : StatusOr<std::vector<std::uint64_t>>(data_loss("not [seal header, sizes]"));
  if (!sizes.ok()) {
    LOG_WARN("hub") << "engine " << engine.id << ": a malformed bulk reply to task " << id << " ("
                    << sizes.status().message() << "); asked for it whole";
    return engine.connection->send(std::move(answer));
  }
  std::uint64_t bytes = 0;
  std::vector<std::uint64_t> all{m.segments[0].size()};
  for (std::uint64_t size : *sizes) {
    bytes += size;
    all.push_back(size);
  }
  auto spool = stopping_ ? StatusOr<std::shared_ptr<ResultSpool>>(unavailable("shutting down")) : results_.spool(id, all);
  StatusOr<net::Ticket> ticket = spool.ok() ? StatusOr<net::Ticket>(internal_error("no ticket yet")) : spool.status();
  const std::uint64_t transfer = next_transfer_++;
  if (spool.ok()) {
    (*spool)->append(m.segments[0]);
    auto file = (*spool)->file();
    ticket = bulk_.issue_to_file(transfer, bytes, {file->fd(), file->data_offset() + m.segments[0].size(), file});
    if (!ticket.ok()) (*spool)->abandon();
    if (ticket.ok()) offer_to_tap(transfer, RelayTap::BulkTransfer::kResultIntoStore);
  }
  if (!ticket.ok()) {
    LOG_INFO("hub") << "the result of task " << id << " is sent whole: " << ticket.status().message();
    return engine.connection->send(std::move(answer));
  }
  bulk_jobs_[transfer] = BulkReplyIntoStore{engine.serial, m.envelope, std::move(spool).value(), bytes};
  answer.segments.push_back(SharedBytes::copy_of(std::span<const std::byte>(*ticket)));
  engine.connection->send(std::move(answer));
}

bool Hub::send_file_in_bulk(Peer& client, const wire::Envelope& envelope,
                            const std::shared_ptr<const ResultFile>& file) {
  // Only a sealed body leaves without TLS: the data connection adds no protection of its own.
  const std::vector<std::uint64_t>& sizes = file->sizes();
  if (sizes.size() < 2 || sizes[0] > options_.limits.max_head_bytes || stopping_) return false;
  auto head = file->read(0, static_cast<std::size_t>(sizes[0]));
  if (!head.ok() || !e2e::decode_seal_header(head->span()).ok()) return false;
  const std::uint64_t bytes = file->total_bytes() - sizes[0];
  if (bytes == 0) return false;
  if (auto open = bulk_by_client_.find(client.id); open != bulk_by_client_.end() && open->second >= options_.bulk_per_client) {
    return false;  // on the control connection instead
  }
  const std::uint64_t transfer = next_transfer_++;
  auto ticket = bulk_.issue_from_file(transfer, bytes, {file->fd(), file->data_offset() + sizes[0], file});
  if (!ticket.ok()) return false;
  offer_to_tap(transfer, RelayTap::BulkTransfer::kResultToClient);
  bulk_jobs_[transfer] = BulkReplyToClient{envelope.task_id, client.id};
  ++bulk_by_client_[client.id];
  wire::Message reply;
  reply.envelope = envelope;
  reply.envelope.set_bulk(true);
  reply.segments.push_back(std::move(head).value());
  reply.segments.push_back(net::encode_transfer_sizes(std::span(sizes).subspan(1)));
  reply.segments.push_back(SharedBytes::copy_of(std::span<const std::byte>(*ticket)));
  send_to_client(client, std::move(reply));
  return true;
}

void Hub::offer_to_tap(std::uint64_t transfer, RelayTap::BulkTransfer what) {
  if (RelayTap* tap = relay_tap(); tap != nullptr && tap->tamper_bulk(what)) bulk_.flip_first_byte(transfer);
}

void Hub::bulk_transfer_done(const BulkRelay::Done& done) {
  auto job = bulk_jobs_.find(done.transfer);
  if (job == bulk_jobs_.end()) return;
  auto what = std::move(job->second);
  bulk_jobs_.erase(job);
  // The client's share of the relay (bulk_per_client) is one transfer freer.
  auto release_share = [this](std::uint32_t client) {
    if (auto open = bulk_by_client_.find(client); open != bulk_by_client_.end() && --open->second == 0) {
      bulk_by_client_.erase(open);
    }
  };
  if (auto* body = std::get_if<BulkRequestBody>(&what)) {
    release_share(body->client);
    // Unless the task has left again since, with a transfer of its own.
    if (auto open = request_transfers_.find(body->task); open != request_transfers_.end() && open->second == done.transfer) {
      request_transfers_.erase(open);
    }
    // Its engine reports a failed transfer in the task's reply (the body never arrived).
    if (!done.status.ok()) LOG_WARN("bulk") << "the body of task " << body->task << ": " << done.status.message();
    return;
  }
  if (auto* to_client = std::get_if<BulkReplyToClient>(&what)) {
    release_share(to_client->client);
    // The client says so to its caller (and may fetch the result again: it is stored).
    if (!done.status.ok()) {
      LOG_WARN("bulk") << "the result of task " << to_client->task << " to its client: " << done.status.message();
    }
    return;
  }
  auto& into = std::get<BulkReplyIntoStore>(what);
  Peer* engine = peers_.find(into.engine_serial);
  if (!engine) {
    into.spool->abandon();  // the engine is gone: its tasks failed with it
    return;
  }
  wire::Envelope envelope = into.envelope;
  if (!done.status.ok()) envelope.set_outcome(Outcome::kPythonError);  // settled as failed, not succeeded
  auto settled = settle_reply(*engine, envelope);
  if (!settled) {
    into.spool->abandon();
    return;
  }
  ++replies_spooled_;
  if (!done.status.ok()) {
    // Said to the client once the half-written file is gone (fail, then close: in order).
    into.spool->fail(unavailable("it did not arrive on its data connection: " + done.status.message()));
    close_spool(*settled, into.spool);
    return;
  }
  into.spool->appended_elsewhere(into.bytes);
  close_spool(*settled, into.spool);
}

std::vector<auth::EngineFacts> Hub::facts_of(const std::vector<std::uint32_t>& engines) {
  std::vector<auth::EngineFacts> facts;
  facts.reserve(engines.size());
  for (std::uint32_t id : engines) {
    Peer* e = peers_.engine(id);
    facts.push_back(e ? e->facts : auth::EngineFacts{id, {}});
  }
  return facts;
}

void Hub::acknowledge(Peer& client, std::uint64_t request_id, std::vector<TaskId> ids) {
  wire::Message ack;
  ack.envelope.kind = MessageKind::kSubmitted;
  ack.envelope.request_id = request_id;
  ack.envelope.client_id = client.id;
  ack.segments.push_back(wire::encode_ids(ids));
  acks_.hold(client.id, std::move(ack));
}

void Hub::send_to_client(Peer& client, wire::Message message) {
  if (RelayTap* tap = relay_tap();
      tap && (message.envelope.kind == MessageKind::kTaskReply || message.envelope.kind == MessageKind::kTaskOutput)) {
    tap->to_client(message);
  }
  send_held_acks(client);
  client.connection->send(std::move(message));
}

void Hub::send_held_acks(Peer& client) {
  if (acks_.holds(client.id)) {
    for (auto& ack : acks_.take(client.id)) client.connection->send(std::move(ack));
  }
}

void Hub::reply_error(std::uint32_t client_id, std::uint64_t request_id, std::uint32_t engine_id,
                      Outcome status, const std::string& text) {
  Peer* client = peers_.client(client_id);
  if (!client) return;
  send_to_client(*client,
                 wire::task_reply(status, {.request_id = request_id, .engine_id = engine_id, .client_id = client_id}, text));
}

void Hub::dispatch(EngineId engine, TaskId id, const TaskSpec& task) {
  Peer* e = peers_.engine(engine);
  if (!e) return;  // cannot happen: the scheduler only knows live engines
  wire::Message forward;
  forward.envelope.kind = task.kind;
  forward.envelope.set_forwarded_flags(task.flags);
  forward.envelope.task_id = id;
  forward.envelope.client_id = task.client_id;
  forward.envelope.engine_id = engine;
  forward.segments = task.body;  // shared, not copied
  if (task.bulk_bytes > 0) {
    // The engine's data-connection ticket for its part rides after it.
    auto ticket = issue_bulk_ticket(id, engine, task);
    if (!ticket.ok()) {
      // Not sent. It ends as if its engine had failed it, once the scheduler is done with
      // this dispatch (never from inside it).
      const std::string text = "its sealed body could not be sent: " + ticket.status().message();
      clock_.post([this, alive = std::weak_ptr<int>(alive_), id, engine, text] {
        if (!alive.lock()) return;
        if (auto failed = scheduler_.finished(id, engine, false, clock_.now())) {
          fail(id, *failed, TaskFailure::kAborted, text);
        }
      });
      return;
    }
    forward.segments.push_back(SharedBytes::copy_of(std::span<const std::byte>(*ticket)));
  }
  std::vector<RelayTap::ToEngine> extras;
  if (RelayTap* tap = relay_tap()) {
    RelayTap::Dispatch facts{task.request_id, {}};
    for (const auto& [engine_id, peer] : peers_.engines()) facts.engines.push_back(engine_id);
    extras = tap->to_engine(forward, facts);
  }
  if (task.streamed) {
    // offer_stream made sure this runs within submit(), before any later part arrived.
    if (!task.streamed->forward_to(*e->connection, std::move(forward), id, engine)) {
      LOG_ERROR("hub") << "task " << id << ": a relayed request was dispatched after its parts began to pass";
    }
  } else {
    e->connection->send(std::move(forward));
  }
  for (auto& extra : extras) {
    if (Peer* to = peers_.engine(extra.engine)) to->connection->send(std::move(extra.message));
  }
  results_.started(id, engine);
}

std::string Hub::no_engine_text(std::uint32_t id) const { return wire::no_engine_text(id, engine_ids_.next_id()); }

void Hub::fail(TaskId id, const TaskSpec& task, TaskFailure why, const std::string& scheduler_text) {
  if (!paused_clients_.empty()) resume_clients();  // one task fewer: maybe back under a limit
  if (auto transfer = request_transfers_.find(id); transfer != request_transfers_.end()) {
    bulk_.cancel(transfer->second, "task " + std::to_string(id) + " ended before its body arrived");
  }
  const std::uint32_t engine = task.engine.value_or(wire::kAnyEngine);
  const std::string text =
      why == TaskFailure::kNoSuchEngine && task.engine ? no_engine_text(*task.engine) : scheduler_text;
  reply_error(task.client_id, task.request_id, engine, route_status(why), text);
  results_.finished(id, stored_state(why), {}, text);
  for (const ResultWaiter& w : results_.take_waiters(id)) {
    if (Peer* c = peers_.client(w.client_id)) {
      send_to_client(*c, wire::task_reply(route_status(why), {.request_id = w.request_id, .task_id = id,
                                                              .engine_id = engine, .client_id = w.client_id},
                                          text));
    }
  }
}

std::optional<Hub::SettledReply> Hub::settle_reply(Peer& engine, const wire::Envelope& envelope) {
  const bool success = envelope.outcome() == Outcome::kOk;
  // An engine drops a task it had not started when asked to abort it (kEngineAbort).
  const bool aborted = envelope.outcome() == Outcome::kAborted;
  // T8: an engine may only answer tasks running on it; anything else is ignored.
  auto task = scheduler_.finished(envelope.task_id, engine.id, success, clock_.now());
  if (!task) {
    LOG_WARN("hub") << "engine " << engine.id << " replied to task " << envelope.task_id
                    << " it does not hold; ignored";
    return std::nullopt;
  }
  ++engine.tasks_done;
  ++tasks_completed_;
  if (!paused_clients_.empty()) resume_clients();  // one task fewer: maybe back under a limit
  SettledReply settled;
  settled.id = envelope.task_id;
  settled.request_id = task->request_id;
  settled.client_id = task->client_id;
  settled.engine_id = engine.id;
  settled.outcome = success ? Outcome::kOk : aborted ? Outcome::kAborted : Outcome::kPythonError;
  settled.state = success ? TaskState::kSucceeded : aborted ? TaskState::kAborted : TaskState::kFailed;
  if (aborted) settled.text = "aborted before it started on engine " + std::to_string(engine.id);
  return settled;
}

void Hub::route_reply(Peer& engine, wire::Message&& m) {
  if (m.envelope.bulk()) return route_bulk_reply(engine, std::move(m));
  auto settled = settle_reply(engine, m.envelope);
  if (!settled) {
    if (RelayTap* tap = relay_tap()) {
      if (auto passed = tap->stray_reply(m)) {
        if (Peer* client = peers_.client(passed->first)) client->connection->send(std::move(passed->second));
      }
    }
    return;
  }
  if (settled->outcome == Outcome::kAborted) m.segments.clear();
  results_.finished(settled->id, settled->state, m.segments,
                    settled->state == TaskState::kFailed ? "the task raised" : settled->text);
  wire::Message reply = wire::task_reply(settled->outcome,
                                         {.request_id = settled->request_id, .task_id = settled->id,
                                          .engine_id = settled->engine_id, .client_id = settled->client_id},
                                         settled->text, std::move(m.segments));
  for (const ResultWaiter& w : results_.take_waiters(settled->id)) {
    Peer* waiting = peers_.client(w.client_id);
    if (!waiting) continue;
    wire::Message copy = reply;  // segments are shared
    copy.envelope.request_id = w.request_id;
    copy.envelope.client_id = w.client_id;
    send_task_reply(*waiting, std::move(copy));
  }
  Peer* client = peers_.client(settled->client_id);
  if (!client) return;  // the client left: the store keeps the result (F3)
  send_task_reply(*client, std::move(reply));
}

void Hub::send_task_reply(Peer& client, wire::Message reply) {
  const std::uint64_t limit = options_.client_reply_queue_bytes;
  if (limit == 0 || (client.deferred_replies.empty() && client.connection->queued_bytes() <= limit)) {
    return send_to_client(client, std::move(reply));
  }
  // Not read fast enough: the reply is in the task store already (results_.finished came
  // first); it goes from there later instead of waiting here in memory.
  if (client.deferred_replies.empty()) {
    LOG_INFO("hub") << "client " << client.id << " has " << (client.connection->queued_bytes() >> 20)
                    << " MiB of replies unread: further replies are sent from the task store as it reads";
  }
  send_held_acks(client);  // its task ids still go at once
  client.deferred_replies.emplace_back(reply.envelope.task_id, reply.envelope.request_id);
  ++replies_deferred_;
  deferring_clients_.insert(client.id);
  if (!deferred_timer_) {
    deferred_timer_ = clock_.every(std::chrono::milliseconds(20), [this] { resend_deferred_replies(); });
  }
}

void Hub::resend_deferred_replies() {
  const std::uint64_t limit = options_.client_reply_queue_bytes;
  for (auto it = deferring_clients_.begin(); it != deferring_clients_.end();) {
    Peer* client = peers_.client(*it);
    if (!client) {
      it = deferring_clients_.erase(it);  // gone: its results stay in the store (F3)
      continue;
    }
    // Refill up to half the limit, so a reading client gets a steady stream, not a trickle.
    while (!client->deferred_replies.empty() && client->connection->queued_bytes() <= limit / 2) {
      const auto [task, request] = client->deferred_replies.front();
      client->deferred_replies.pop_front();
      for (auto& answer : results_.get({client->id, client->identity}, request, {task})) {
        answer.reply.envelope.client_id = client->id;
        if (answer.file) {
          send_file_to_client(*client, std::move(answer.reply.envelope), std::move(answer.file));
        } else {
          send_to_client(*client, std::move(answer.reply));
        }
      }
    }
    it = client->deferred_replies.empty() ? deferring_clients_.erase(it) : std::next(it);
  }
  if (deferring_clients_.empty()) deferred_timer_.reset();
}

std::shared_ptr<wire::StreamSink> Hub::offer_reply_stream(Peer& engine, const wire::Message& first,
                                                          std::span<const std::uint64_t> sizes) {
  const wire::Envelope& reply = first.envelope;
  // Anything else (and a reply to a task not running there: ignored by route_reply) is
  // received whole. Not while a hostile-test tap may rewrite replies.
  if (reply.kind != MessageKind::kTaskReply || stopping_ || relay_tap() ||
      !scheduler_.running_spec(reply.task_id, engine.id)) {
    return nullptr;
  }
  auto spool = results_.spool(reply.task_id, std::vector<std::uint64_t>(sizes.begin(), sizes.end()));
  if (!spool.ok()) {
    LOG_INFO("hub") << "the reply of task " << reply.task_id << " is received whole: " << spool.status().message();
    return nullptr;
  }
  if (!first.segments.empty()) (*spool)->append(first.segments[0]);
  const std::uint64_t serial = engine.serial;
  auto sink = std::make_shared<SpooledReply>(
      first, std::move(spool).value(), options_.relay_window_bytes, clock_,
      [this, serial](SpooledReply& r) { reply_spooled(serial, r); },
      [this](SpooledReply& r) {
        // The engine's connection ended halfway: its tasks fail as for any engine that dies.
        LOG_WARN("hub") << "the reply of task " << r.first().envelope.task_id << " ended halfway; dropped";
      });
  engine.reply_stream = sink;
  return sink;
}

void Hub::reply_spooled(std::uint64_t engine_serial, SpooledReply& r) {
  Peer* engine = peers_.find(engine_serial);
  auto settled = engine ? settle_reply(*engine, r.first().envelope) : std::nullopt;
  if (!settled) {
    r.spool()->abandon();
    return;
  }
  ++replies_spooled_;
  close_spool(*settled, r.spool());
}

void Hub::cancel_bulk_results_of(std::uint64_t engine_serial, const std::string& why) {
  std::vector<std::uint64_t> transfers;  // cancelling may end a job, which edits bulk_jobs_
  for (const auto& [transfer, job] : bulk_jobs_) {
    const auto* into = std::get_if<BulkReplyIntoStore>(&job);
    if (into != nullptr && into->engine_serial == engine_serial) transfers.push_back(transfer);
  }
  for (std::uint64_t transfer : transfers) bulk_.cancel(transfer, why);
}

void Hub::close_spool(const SettledReply& settled, std::shared_ptr<ResultSpool> spool) {
  // The spool thread reports; the rest happens on the loop's, unless the hub is gone by then.
  spool->close([&clock = clock_, alive = std::weak_ptr<int>(alive_), this, settled, spool](const Status& written) {
    clock.post([alive, this, settled, spool, written] {
      if (alive.lock()) spooled_reply_written(settled, spool, written);
    });
  });
}

void Hub::spooled_reply_written(const SettledReply& settled, const std::shared_ptr<ResultSpool>& spool,
                                const Status& written) {
  if (!written.ok()) {
    // The result could not be kept (disk full...): nothing holds it any more. Said to the
    // client and recorded, never silently lost.
    const std::string text = "the result of task " + std::to_string(settled.id) + " (" +
                             std::to_string(spool->file()->total_bytes()) +
                             " bytes) could not be stored by the controller: " + written.message();
    LOG_ERROR("hub") << text;
    results_.finished(settled.id, TaskState::kFailed, {}, text);
    reply_error(settled.client_id, settled.request_id, settled.engine_id, Outcome::kControllerFailed, text);
    for (const ResultWaiter& w : results_.take_waiters(settled.id)) {
      reply_error(w.client_id, w.request_id, settled.engine_id, Outcome::kControllerFailed, text);
    }
    return;
  }
  results_.finished_spooled(settled.id, settled.state, spool,
                            settled.state == TaskState::kFailed ? "the task raised" : settled.text);
  wire::Envelope envelope = wire::task_reply(settled.outcome,
                                             {.request_id = settled.request_id, .task_id = settled.id,
                                              .engine_id = settled.engine_id, .client_id = settled.client_id},
                                             settled.text)
                                .envelope;
  std::vector<std::pair<std::uint32_t, std::uint64_t>> to;  // (client, request)
  for (const ResultWaiter& w : results_.take_waiters(settled.id)) to.emplace_back(w.client_id, w.request_id);
  to.emplace_back(settled.client_id, settled.request_id);
  for (const auto& [client_id, request_id] : to) {
    Peer* client = peers_.client(client_id);
    if (!client) continue;  // the client left: the store keeps the result (F3)
    wire::Envelope e = envelope;
    e.client_id = client_id;
    e.request_id = request_id;
    send_file_to_client(*client, std::move(e), spool->file());
  }
}

void Hub::send_file_to_client(Peer& client, wire::Envelope envelope, std::shared_ptr<const ResultFile> file) {
  send_held_acks(client);
  if (send_file_in_bulk(client, envelope, file)) return;
  const std::uint32_t client_id = client.id;
  const std::uint64_t request_id = envelope.request_id;
  const std::uint32_t engine_id = envelope.engine_id;
  const std::uint64_t task_id = envelope.task_id;
  auto failed = [this, alive = std::weak_ptr<int>(alive_), client_id, request_id, engine_id, task_id](const Status& why) {
    if (!alive.lock()) return;
    reply_error(client_id, request_id, engine_id, Outcome::kControllerFailed,
                "cannot read the stored result of task " + std::to_string(task_id) + ": " + why.message());
  };
  if (Status st = ResultFileSender::send(*client.connection, std::move(envelope), std::move(file),
                                         options_.relay_window_bytes, failed);
      !st.ok()) {
    failed(st);
  }
}

void Hub::route_output(Peer& engine, wire::Message&& m) {
  // Live output of a task running on this engine goes to its client; anything else is dropped.
  const TaskSpec* task = scheduler_.running_spec(m.envelope.task_id, engine.id);
  Peer* client = task ? peers_.client(task->client_id) : nullptr;
  if (!client) return;
  wire::Message chunk;
  chunk.envelope.kind = MessageKind::kTaskOutput;
  chunk.envelope.set_output_stream(m.envelope.output_stream());
  chunk.envelope.request_id = task->request_id;
  chunk.envelope.engine_id = engine.id;
  chunk.segments = std::move(m.segments);
  send_to_client(*client, std::move(chunk));
}

}  // namespace testudo::controller
