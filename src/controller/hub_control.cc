// The hub's control requests: reports, stored results, abort, interrupt, key administration,
// shutdown, and engines' registration facts. Each is authorized by one question to the
// gatekeeper where the policy has an operation for it; stored results are the requester's own
// (StoredResults checks).
#include "auth/registration.h"
#include "base/log.h"
#include "controller/hub.h"
#include "controller/reports.h"
#include "controller/requests.h"
#include "wire/control.h"
#include "wire/reply.h"

#include <nlohmann/json.hpp>

namespace testudo::controller {
namespace {

using wire::MessageKind;
using Scope = AccessRequest::Scope;

// The ids in a request's one segment, or none when it carries no segment and `none_ok`.
StatusOr<std::vector<std::uint64_t>> ids_of(const wire::Message& m, bool none_ok) {
  if (m.segments.empty() && none_ok) return std::vector<std::uint64_t>{};
  if (m.segments.size() != 1) return data_loss("expected one segment of task ids");
  return wire::decode_ids(m.segments[0]);
}

double seconds_between(Clock::TimePoint from, Clock::TimePoint to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

void Hub::on_control(Peer& client, wire::Message&& m) {
  const wire::Envelope& req = m.envelope;
  switch (req.kind) {
    case MessageKind::kEngineList:
      if (!authorize(client, req, {auth::Operation::kStatus}, {}, MessageKind::kEngineListReply)) return;
      return send_control_reply(client, MessageKind::kEngineListReply, req,
                                engine_list_json(engine_reports(), engine_ids_.next_id()));
    case MessageKind::kClusterStatus:
      if (!authorize(client, req, {auth::Operation::kStatus}, {}, MessageKind::kClusterStatusReply)) return;
      return send_control_reply(client, MessageKind::kClusterStatusReply, req,
                                cluster_status_json(cluster_report(), scheduler_));
    case MessageKind::kQueueStatus:
      if (!authorize(client, req, {auth::Operation::kStatus}, {}, MessageKind::kQueueStatusReply)) return;
      return send_control_reply(client, MessageKind::kQueueStatusReply, req, queue_status_json(scheduler_));
    case MessageKind::kAbort:
      if (!authorize(client, req, {auth::Operation::kAbort}, {}, MessageKind::kAbortReply)) return;
      return abort_tasks(client, m);
    case MessageKind::kInterrupt: {
      AccessRequest access{auth::Operation::kInterrupt, req.targets.empty() ? Scope::kNoEngine : Scope::kEachOf,
                           facts_of(req.targets)};
      if (!authorize(client, req, access, {req.targets}, MessageKind::kInterruptReply)) return;
      return interrupt_engines(client, m);
    }
    case MessageKind::kKeyAdmin:
      if (!authorize(client, req, {auth::Operation::kKeyAdmin}, {}, MessageKind::kKeyAdminReply)) return;
      return key_admin(client, m);
    case MessageKind::kClusterShutdown: {
      AccessRequest access{auth::Operation::kShutdown, req.targets.empty() ? Scope::kWholeCluster : Scope::kEachOf,
                           facts_of(req.targets)};
      if (!authorize(client, req, access, {req.targets}, MessageKind::kClusterShutdownReply)) return;
      if (!req.targets.empty()) return shutdown_engines(client, m);
      LOG_INFO("hub") << "shutdown requested by client " << client.id << " (" << client.connection->peer_address()
                      << ")";
      send_control_reply(client, MessageKind::kClusterShutdownReply, req, "{}");
      return shutdown("requested by client " + std::to_string(client.id));
    }
    case MessageKind::kGetResult:
      return get_results(client, m);
    case MessageKind::kResultStatus: {
      auto ids = ids_of(m, /*none_ok=*/false);
      if (!ids.ok()) return reject(client, ids.status().message());
      return send_control_reply(client, MessageKind::kResultStatusReply, req,
                                results_.status_json({client.id, client.identity}, *ids));
    }
    case MessageKind::kDbQuery: {
      auto query = decode_result_query(req.text);
      if (!query.ok()) {
        return send_control_error(client, MessageKind::kDbQueryReply, req, wire::failure_outcome(query.status()),
                                  query.status().message());
      }
      auto records = results_.query_json({client.id, client.identity}, *query);
      if (!records.ok()) {
        return send_control_error(client, MessageKind::kDbQueryReply, req, wire::failure_outcome(records.status()),
                                  records.status().message());
      }
      return send_control_reply(client, MessageKind::kDbQueryReply, req, std::move(records).value());
    }
    case MessageKind::kPurgeResults: {
      auto ids = ids_of(m, /*none_ok=*/true);
      if (!ids.ok()) return reject(client, ids.status().message());
      auto purged = results_.purge({client.id, client.identity}, *ids);
      if (!purged.ok()) {
        return send_control_error(client, MessageKind::kPurgeResultsReply, req,
                                  wire::failure_outcome(purged.status()), purged.status().message());
      }
      return send_control_reply(client, MessageKind::kPurgeResultsReply, req,
                                nlohmann::json{{"purged", *purged}}.dump());
    }
    default:
      return reject(client, "unexpected message '" + std::string(wire::kind_name(req.kind)) + "'");
  }
}

bool Hub::authorize(Peer& client, const wire::Envelope& request, const AccessRequest& access,
                    const AuditDetails& details, MessageKind reply_kind) {
  const Decision decision = gate_.authorize(client.identity, client.connection->peer_address(), access, details);
  if (decision.allowed) return true;
  LOG_WARN("audit") << "denied " << auth::operation_name(access.op) << " to client " << client.id << " ("
                    << client.connection->peer_address() << "): " << decision.reason;
  send_control_error(client, reply_kind, request, Outcome::kNotAllowed, "permission denied: " + decision.reason);
  return false;
}

void Hub::register_engine_info(Peer& engine, const wire::Message& m) {
  // Signed by the engine's own key over this session, or refused; filed only under this
  // connection's engine id, so no peer can set facts for another engine (T8).
  auto registration = auth::verify_engine_registration(*engine.connection, m);
  if (!registration.ok()) return reject(engine, registration.status().message());
  engine.info_json = std::move(registration->info_json);
  engine.seal_statement = std::move(registration->seal_statement);
  // The policy matches engines by these tags.
  engine.facts.tags = std::move(registration->tags);
  gate_.record(&engine.identity, engine.connection->peer_address(), "engine.register", "allowed",
               {{engine.id}, registration->info_sha256, 0}, "signed by the engine's key");
}

void Hub::get_results(Peer& client, const wire::Message& m) {
  auto ids = ids_of(m, /*none_ok=*/false);
  if (!ids.ok()) return reject(client, ids.status().message());
  for (auto& answer : results_.get({client.id, client.identity}, m.envelope.request_id, *ids)) {
    answer.reply.envelope.client_id = client.id;
    if (answer.file) {
      send_file_to_client(client, std::move(answer.reply.envelope), std::move(answer.file));
    } else {
      send_to_client(client, std::move(answer.reply));
    }
  }
}

void Hub::abort_tasks(Peer& client, const wire::Message& m) {
  auto ids = ids_of(m, /*none_ok=*/true);
  if (!ids.ok()) return reject(client, ids.status().message());
  std::vector<std::pair<TaskId, EngineId>> sent;
  const std::size_t aborted = scheduler_.abort(client.id, *ids, &sent);
  // Sent ahead but perhaps not started: the engine drops it if so and answers it as aborted.
  for (const auto& [id, engine_id] : sent) {
    Peer* e = peers_.engine(engine_id);
    if (!e) continue;
    wire::Message abort;
    abort.envelope.kind = MessageKind::kEngineAbort;
    abort.envelope.engine_id = engine_id;
    abort.envelope.task_id = id;
    e->connection->send(std::move(abort));
  }
  send_control_reply(client, MessageKind::kAbortReply, m.envelope, nlohmann::json{{"aborted", aborted}}.dump());
}

void Hub::interrupt_engines(Peer& client, const wire::Message& m) {
  std::size_t sent = 0;
  for (std::uint32_t target : m.envelope.targets) {
    Peer* e = peers_.engine(target);
    auto task = scheduler_.oldest_running(target);
    if (!e || !task) continue;  // nothing runs there
    wire::Message interrupt;
    interrupt.envelope.kind = MessageKind::kEngineInterrupt;
    interrupt.envelope.engine_id = target;
    // Names the task, so one that was sent but has not started yet is interrupted too.
    interrupt.envelope.task_id = *task;
    e->connection->send(std::move(interrupt));
    ++sent;
  }
  LOG_INFO("hub") << "client " << client.id << " interrupted " << sent << " engine(s)";
  send_control_reply(client, MessageKind::kInterruptReply, m.envelope, nlohmann::json{{"interrupted", sent}}.dump());
}

void Hub::shutdown_engines(Peer& client, const wire::Message& m) {
  std::size_t stopped = 0;
  for (std::uint32_t target : m.envelope.targets) {
    Peer* e = peers_.engine(target);
    if (!e) continue;
    wire::Message bye;
    bye.envelope.kind = MessageKind::kEngineShutdown;
    e->connection->send(std::move(bye));
    ++stopped;
  }
  LOG_INFO("hub") << "client " << client.id << " shut down " << stopped << " engine(s)";
  send_control_reply(client, MessageKind::kClusterShutdownReply, m.envelope,
                     nlohmann::json{{"stopped", stopped}}.dump());
}

void Hub::key_admin(Peer& client, const wire::Message& m) {
  auto request = decode_key_admin_request(m.envelope.text);
  if (!request.ok()) {
    return send_control_error(client, MessageKind::kKeyAdminReply, m.envelope, wire::failure_outcome(request.status()),
                              request.status().message());
  }
  auto reply = gate_.key_admin(client.identity, client.connection->peer_address(), *request);
  if (!reply.ok()) {
    return send_control_error(client, MessageKind::kKeyAdminReply, m.envelope, wire::failure_outcome(reply.status()),
                              reply.status().message());
  }
  send_control_reply(client, MessageKind::kKeyAdminReply, m.envelope, std::move(reply).value());
  recheck_peers();  // a revoked key is cut off now, not at the next look
}

void Hub::send_control_reply(Peer& client, MessageKind kind, const wire::Envelope& request, std::string json) {
  send_to_client(client, wire::control_reply(kind, request, client.id, std::move(json)));
}

void Hub::send_control_error(Peer& client, MessageKind kind, const wire::Envelope& request, Outcome status,
                             const std::string& text) {
  send_to_client(client, wire::control_refusal(kind, request, client.id, status, text));
}

std::vector<EngineReport> Hub::engine_reports() {
  const auto now = clock_.now();
  std::vector<EngineReport> out;
  out.reserve(peers_.engines().size());
  for (const auto& [id, p] : peers_.engines()) {
    out.push_back({.id = id,
                   .address = p->connection->peer_address(),
                   .identity = p->identity.fingerprint,
                   .info_json = p->info_json,
                   .seal_statement = p->seal_statement,
                   .tasks_done = p->tasks_done,
                   .connected_s = seconds_between(p->connected_at, now),
                   .silent_s = seconds_between(p->last_seen, now)});
  }
  return out;
}

ClusterReport Hub::cluster_report() {
  ClusterReport r;
  r.engines = engine_reports();
  r.clients = peers_.clients().size();
  r.tasks_in_flight = scheduler_.tasks();
  r.tasks_completed = tasks_completed_;
  r.connections_rejected = rejected_;
  r.uptime_s = seconds_between(started_at_, clock_.now());
  r.started_unix_us = started_unix_us_;
  r.resumed = engine_ids_.resumed();
  r.engines_back.assign(engines_back_.begin(), engines_back_.end());
  for (std::uint32_t id : engine_ids_.from_previous_run()) {  // a std::set: lowest first
    if (engines_back_.count(id)) continue;
    if (r.engines_not_back.size() < ClusterReport::kMaxListed) r.engines_not_back.push_back(id);
    ++r.engines_not_back_count;
  }
  r.tasks_lost_at_start = results_.lost_at_open();
  r.trust_mode = std::string(trust_mode_name(gate_.mode()));
  if (logins_ != nullptr) r.logins = logins_->accepted();
  r.queued_bytes = budget_.held_total();
  r.client_queue_limit = budget_.limits().per_client;
  r.queue_limit = budget_.limits().total;
  r.clients_paused = paused_clients_.size();
  r.client_pauses = pauses_;
  r.requests_relayed = relayed_;
  r.replies_spooled = replies_spooled_;
  r.replies_deferred = replies_deferred_;
  const BulkRelay::Counts bulk = bulk_.counts();
  r.bulk_completed = bulk.completed;
  r.bulk_failed = bulk.failed;
  r.bulk_bytes = bulk.bytes_moved;
  r.bulk_refused = bulk.refused_connections;
  r.bulk_late = bulk.late_connections;
  return r;
}

}  // namespace testudo::controller
