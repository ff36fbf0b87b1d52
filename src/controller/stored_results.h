// Stored results: the controller's record of every task (the TaskStore) and what clients ask of
// it — results by task id (also from another connection or process of the same identity, and
// after a controller restart: docs/threat-model.md F2, F3), record status, queries and purges —
// plus the clients waiting for a result that is not there yet.
//
// Ownership (T10): a task belongs to the identity that submitted it. Another identity is
// answered exactly as for a task that does not exist, unless the policy grants it
// read_others_results. Purges only ever touch the requester's own tasks.
//
// Writes are batched (TaskStore): flushed every 20 ms and at shutdown, results past their age
// or the size limit dropped every minute; a failing disk is reported once a minute with the
// number of failed flushes, not at the flush rate. While it fails, reads answer from the
// writes kept in memory, and new tasks are refused once the store could not remember them.
//
// Threading: the controller's loop thread (the clock's), not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "controller/gatekeeper.h"
#include "controller/requests.h"
#include "controller/task_store.h"
#include "testudo/status.h"
#include "wire/message.h"

namespace testudo::controller {

using TaskId = std::uint64_t;

// The client asking: its connection (replies go there) and its identity (it owns tasks).
struct Requester {
  std::uint32_t client_id = 0;
  const PeerIdentity& identity;
};

// One answer to kGetResult: the reply, and for a result kept in a file, that file (the reply
// then carries no segments: the hub sends them from the file a part at a time).
struct StoredAnswer {
  StoredAnswer(wire::Message reply_, std::shared_ptr<const ResultFile> file_ = nullptr)  // NOLINT: implicit
      : reply(std::move(reply_)), file(std::move(file_)) {}
  wire::Message reply;
  std::shared_ptr<const ResultFile> file;
};

// A client waiting for a task's result: answer request `request_id` of client `client_id`.
struct ResultWaiter {
  std::uint32_t client_id = 0;
  std::uint64_t request_id = 0;
};

class StoredResults {
 public:
  // `store`, `gate` and `clock` outlive this object.
  StoredResults(TaskStore& store, Gatekeeper& gate, Clock& clock);
  // Tasks the store marked lost when it opened (see TaskStore::lost_at_open).
  std::uint64_t lost_at_open() const { return store_.lost_at_open(); }
  ~StoredResults();  // commits what is pending (see sync())

  // --- what the hub records, in this order per task ---
  void submitted(TaskId id, const PeerIdentity& owner, std::uint64_t request_id, wire::MessageKind kind,
                 std::vector<std::uint32_t> targets);
  void started(TaskId id, std::uint32_t engine);
  // `result`: the engine's reply segments, kept by reference (see TaskStore::record_finished).
  void finished(TaskId id, TaskState state, std::vector<SharedBytes> result, std::string error);
  // A result too big to hold whole, written to its file as it arrives (TaskStore::spool_result)
  // and then, once written, recorded with finished_spooled.
  StatusOr<std::shared_ptr<ResultSpool>> spool(TaskId id, std::vector<std::uint64_t> sizes) {
    return store_.spool_result(id, std::move(sizes));
  }
  void finished_spooled(TaskId id, TaskState state, std::shared_ptr<ResultSpool> spool, std::string error);
  // Commits every pending write, waiting for result files being written (shutdown).
  void sync();
  // The first task id the controller may hand out (ids continue across restarts).
  TaskId next_task_id() const { return store_.next_task_id(); }
  // OK if ids [first, first + count) may be handed out now; otherwise why not (the store
  // cannot remember them: disk full). The hub refuses the request with this reason.
  Status room_for_tasks(TaskId first, std::size_t count) const { return store_.room_for_tasks(first, count); }

  // --- what clients ask ---
  // kGetResult: one kTaskReply per id, in order, for the tasks that are finished (the reply as
  // the engine sent it, or why there is none); a task still running is answered later, when
  // it ends (see take_waiters). Replies carry `request_id` and the task id.
  std::vector<StoredAnswer> get(const Requester& who, std::uint64_t request_id, const std::vector<TaskId>& ids);
  // kResultStatus: {"records": [...]} for these ids ("state": "unknown" for ids not the requester's).
  std::string status_json(const Requester& who, const std::vector<TaskId>& ids);
  // kDbQuery: {"records": [...]} matching the query, the requester's own unless the policy
  // grants read_others_results. Errors: the store failing.
  StatusOr<std::string> query_json(const Requester& who, const ResultQuery& query);
  // kPurgeResults: deletes the requester's finished results among `ids` (empty: all of them).
  StatusOr<std::size_t> purge(const Requester& who, const std::vector<TaskId>& ids);

  // The clients that asked for task `id` while it ran; forgets them. The hub sends each the
  // task's reply.
  std::vector<ResultWaiter> take_waiters(TaskId id);
  bool has_waiters(TaskId id) const { return waiters_.count(id) != 0; }

 private:
  bool may_read(const Requester& who, const TaskRecord& record) const;
  void flush();

  TaskStore& store_;
  Gatekeeper& gate_;
  Clock& clock_;
  std::unordered_map<TaskId, std::vector<ResultWaiter>> waiters_;
  Clock::TimePoint last_store_error_{};
  bool store_error_said_ = false;
  std::uint64_t failed_flushes_ = 0;  // since the last line about them
  std::unique_ptr<Timer> flush_timer_;
  std::unique_ptr<Timer> limits_timer_;
};

}  // namespace testudo::controller
