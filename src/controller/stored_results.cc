#include "controller/stored_results.h"

#include <nlohmann/json.hpp>

#include "base/log.h"
#include "wire/reply.h"

namespace testudo::controller {
namespace {

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

std::string records_json(const nlohmann::json& records) {
  return nlohmann::json{{"records", records}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

wire::Message stored_reply(std::uint64_t request_id, TaskId id, Outcome status, std::uint32_t engine,
                           std::string text, std::vector<SharedBytes> segments = {}) {
  return wire::task_reply(status, {.request_id = request_id, .task_id = id, .engine_id = engine}, std::move(text),
                          std::move(segments));
}

}  // namespace

StoredResults::StoredResults(TaskStore& store, Gatekeeper& gate, Clock& clock)
    : store_(store), gate_(gate), clock_(clock) {
  // One transaction every 20 ms, whatever the task rate.
  flush_timer_ = clock_.every(std::chrono::milliseconds(20), [this] { flush(); });
  limits_timer_ = clock_.every(std::chrono::seconds(60), [this] {
    auto purged = store_.enforce_limits(clock_.unix_micros());
    if (!purged.ok()) LOG_WARN("store") << "enforcing result limits: " << purged.status().message();
  });
}

StoredResults::~StoredResults() { sync(); }

void StoredResults::submitted(TaskId id, const PeerIdentity& owner, std::uint64_t request_id, wire::MessageKind kind,
                              std::vector<std::uint32_t> targets) {
  TaskRecord r;
  r.task_id = id;
  r.owner = owner.fingerprint;
  r.request_id = request_id;
  r.kind = std::string(wire::kind_name(kind));
  r.targets = std::move(targets);
  r.submitted_us = clock_.unix_micros();
  store_.record_submitted(std::move(r));
}

void StoredResults::started(TaskId id, std::uint32_t engine) { store_.record_started(id, engine, clock_.unix_micros()); }

void StoredResults::finished(TaskId id, TaskState state, std::vector<SharedBytes> result, std::string error) {
  store_.record_finished(id, state, clock_.unix_micros(), std::move(result), std::move(error));
}

void StoredResults::finished_spooled(TaskId id, TaskState state, std::shared_ptr<ResultSpool> spool,
                                     std::string error) {
  store_.record_spooled(id, state, clock_.unix_micros(), std::move(spool), std::move(error));
}

void StoredResults::flush() {
  if (store_.pending_writes() == 0) return;
  Status st = store_.flush();
  if (st.ok()) {
    if (failed_flushes_ > 0) {
      LOG_INFO("store") << "task records written again after " << failed_flushes_ << " failed tries";
    }
    failed_flushes_ = 0;
    store_error_said_ = false;
    return;
  }
  ++failed_flushes_;
  // A full disk fails every flush: say so once a minute, not fifty times a second.
  if (!store_error_said_ || clock_.now() - last_store_error_ > std::chrono::seconds(60)) {
    store_error_said_ = true;
    last_store_error_ = clock_.now();
    LOG_ERROR("store") << "cannot record tasks (" << store_.pending_writes() << " writes waiting, " << failed_flushes_
                       << " failed tries): " << st.message();
  }
}

void StoredResults::sync() {
  if (store_.pending_writes() == 0) return;
  Status st = store_.sync();
  if (!st.ok()) {
    LOG_ERROR("store") << "cannot record tasks (" << store_.pending_writes()
                       << " writes lost; their tasks will read as lost after a restart): " << st.message();
  }
}

bool StoredResults::may_read(const Requester& who, const TaskRecord& record) const {
  // An id whose record was never written (the controller stopped with the disk full) has no
  // known owner; it reads as lost to anyone. That tells a stranger nothing new: ids are one
  // sequence for everyone, so the gaps in a client's own ids already show others' tasks.
  if (record.owner.empty() && record.state == TaskState::kLost) return true;
  return record.owner == who.identity.fingerprint || gate_.allows(who.identity, auth::Operation::kReadOthersResults);
}

std::vector<StoredAnswer> StoredResults::get(const Requester& who, std::uint64_t request_id,
                                             const std::vector<TaskId>& ids) {
  std::vector<StoredAnswer> answers;
  for (TaskId id : ids) {
    auto record = store_.get(id);
    // T10: another identity's task is answered exactly like one that does not exist.
    if (!record.ok() || !*record || !may_read(who, **record)) {
      if (!record.ok()) {
        answers.push_back(stored_reply(request_id, id, Outcome::kControllerFailed, wire::kAnyEngine,
                                       "cannot read task " + std::to_string(id) + ": " + record.status().message()));
        continue;
      }
      answers.push_back(stored_reply(request_id, id, Outcome::kNoSuchTask, wire::kAnyEngine,
                                     "no task " + std::to_string(id) + " of yours"));
      continue;
    }
    const TaskRecord& r = **record;
    const std::uint32_t engine = r.engine.value_or(wire::kAnyEngine);
    if (!is_finished(r.state)) {
      waiters_[id].push_back({who.client_id, request_id});
      continue;
    }
    if (r.state == TaskState::kLost) {
      // A record never written (owner unknown) says so in its error text.
      answers.push_back(stored_reply(request_id, id, Outcome::kLost, engine,
                                     r.owner.empty() ? "lost: task " + std::to_string(id) + ": " + r.error
                                                     : "lost: the controller stopped before task " + std::to_string(id) +
                                                           " finished; it may or may not have run"));
      continue;
    }
    // A result kept in a file is sent from it a part at a time (the hub), never loaded whole.
    auto result = store_.result_body(id);
    if (result.ok() && (result->file || !result->segments.empty())) {
      answers.push_back({stored_reply(request_id, id, r.state == TaskState::kFailed ? Outcome::kPythonError : Outcome::kOk,
                                      engine, r.kind, std::move(result->segments)),
                         std::move(result->file)});
    } else if (r.state == TaskState::kAborted) {
      answers.push_back(stored_reply(request_id, id, Outcome::kAborted, engine, r.error));
    } else {
      answers.push_back(stored_reply(request_id, id, Outcome::kEngineDied, engine,
                                     r.error.empty() ? (result.ok() ? "no result" : result.status().message()) : r.error));
    }
  }
  return answers;
}

std::string StoredResults::status_json(const Requester& who, const std::vector<TaskId>& ids) {
  nlohmann::json records = nlohmann::json::array();
  for (TaskId id : ids) {
    auto record = store_.get(id);
    if (record.ok() && *record && may_read(who, **record)) {
      records.push_back(record_json(**record));
    } else {
      records.push_back({{"task_id", id}, {"state", "unknown"}});
    }
  }
  return records_json(records);
}

StatusOr<std::string> StoredResults::query_json(const Requester& who, const ResultQuery& query) {
  TaskStore::Query q;
  // T10: only one's own tasks, unless the policy lets this client read everyone's.
  if (!gate_.allows(who.identity, auth::Operation::kReadOthersResults)) q.owner = who.identity.fingerprint;
  q.states = query.states;
  q.after_task_id = query.after_task_id;
  q.submitted_after_us = query.submitted_after_us;
  q.limit = query.limit;
  TESTUDO_ASSIGN_OR_RETURN(auto found, store_.query(q));
  nlohmann::json records = nlohmann::json::array();
  for (const auto& r : found) records.push_back(record_json(r));
  return records_json(records);
}

StatusOr<std::size_t> StoredResults::purge(const Requester& who, const std::vector<TaskId>& ids) {
  return store_.purge(who.identity.fingerprint, ids);
}

std::vector<ResultWaiter> StoredResults::take_waiters(TaskId id) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return {};
  std::vector<ResultWaiter> out = std::move(it->second);
  waiters_.erase(it);
  return out;
}

}  // namespace testudo::controller
