// TaskStore: the controller's persistent record of every task (docs/threat-model.md F2, F3,
// F6, F7).
//
// One SQLite database in the profile's state directory (WAL, synchronous=NORMAL, exclusive
// locking: a second controller on the same profile is refused instead of stealing its tasks).
// It keeps, per task: id, submitting identity (owner), request id, kind, targets, state,
// engine, timestamps, error text and the reply segments (result). Results up to
// `inline_limit` bytes live in the database; bigger ones in files next to it. Records are
// kept until purged or until enforce_limits() drops them (age, total result size).
//
// Never stored: sealed request payloads. A result is the reply as the engine sealed it.
//
// Writes are cheap: record_*() only queue in memory; flush() commits the queue in one
// transaction (the hub calls it from a ~20 ms timer and at shutdown), so 20,000 tasks/s cost
// ~50 small transactions a second. Memory holds the pending queue only, never all tasks.
//
// Big results (files) are written off the caller's thread: record_finished() hands them to
// the store's writer thread at once, which writes "<id>.res.tmp"; the flush() after the
// write has completed renames it into place and commits the task's record in its
// transaction. Until then the task's finish stays pending (pending_writes() counts it) and
// later writes of other tasks are committed without waiting for it. So flush() never writes
// a result file itself: a 100 MB result costs the caller's thread a rename, not ~70 ms.
// The writer runs at nice +10 (forwarding goes first); if it falls behind by more than half
// of max_pending_result_bytes, flush() waits for it instead of letting results be dropped.
// A result too big to hold whole can instead be spooled (spool_result): written to its
// "<id>-<n>.res.tmp" by a second thread, at normal priority (the sender waits for it), while
// it arrives; record_spooled() then queues its finish like any written file.
//
// Crash semantics (F2): after SIGKILL, every committed write is there and the database is
// intact; writes not yet committed are gone. A write is committed when a flush() that
// returned OK took it (a big result: a flush() after its file was written; sync() waits for
// that). On the next open(), tasks still queued or running are marked kLost ("controller
// stopped before the task finished"), so a client asking about them is told, never left
// waiting: this includes a task whose big result was still being written or waiting for its
// flush; its half-written .tmp file is deleted.
//
// No handed-out id is ever unknown (a full disk, a crash): ids are reserved durably in
// blocks before the hub hands them out (room_for_tasks() refuses new tasks past the
// reservation). A run that ends with writes uncommitted leaves ids in
// [ids recorded until, ids reserved until) that may have gone to clients with no record; the
// next open() keeps that range as "lost ids", and get() answers each of them as a kLost
// record of unknown owner (owner ""). A clean close (the destructor with nothing pending)
// gives the unused part of the reservation back, so a normal restart loses no ids. Ids that
// were reserved but never handed out read as lost too: harmless, nobody holds them.
//
// While flush() fails (disk full), reads answer from the pending writes in memory: get() and
// result() of a task recorded but not committed see its record and its result; they never
// wait for the disk.
//
// Owners (F3): get()/result()/query() do not check who asks. The hub must compare
// TaskRecord::owner with the requester's identity before returning a record or a result,
// and pass the requester as Query::owner / purge()'s owner.
//
// Threading: not thread-safe; the hub's loop thread only (the writer thread is internal).
// flush(), get() and result() do not wait for result files; sync(), query() and purge() do
// (they may block for the rest of a big write: ~0.5 s for 1 GB).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/shared_bytes.h"
#include "testudo/status.h"

namespace testudo::controller {

// Stored as integers: never renumber.
enum class TaskState : std::uint8_t {
  kQueued = 0,
  kRunning = 1,
  kSucceeded = 2,
  kFailed = 3,
  kAborted = 4,
  kLost = 5,  // the controller stopped (crash, kill) before the task finished
};
// "queued", "running", "succeeded", "failed", "aborted", "lost".
std::string_view task_state_name(TaskState state);
inline bool is_finished(TaskState state) { return state >= TaskState::kSucceeded; }

struct TaskRecord {
  std::uint64_t task_id = 0;
  std::string owner;                    // submitting identity (opaque text, e.g. key fingerprint)
  std::uint64_t request_id = 0;         // the client's id for the request
  std::string kind;                     // "execute", "apply", ... (opaque text)
  std::vector<std::uint32_t> targets;   // engines asked for (empty: load-balanced, any)
  std::optional<std::uint32_t> engine;  // where it ran (set by record_started)
  TaskState state = TaskState::kQueued;
  std::int64_t submitted_us = 0;        // microseconds since the Unix epoch
  std::int64_t started_us = 0;          // 0: not started
  std::int64_t completed_us = 0;        // 0: not finished
  std::uint64_t result_bytes = 0;       // sum of the result's segment sizes
  std::string error;                    // short text for failures (never a payload)

  bool operator==(const TaskRecord&) const = default;
};

// Every default in one place (STYLE habit 11).
struct TaskStoreOptions {
  // The database file, e.g. <profile>/state/tasks.sqlite. Missing directories are created
  // 0700; a directory writable by group or others is refused. Big results go to
  // "<path>.results/" (0700, files 0600).
  std::string path;
  // Finished records older than this (by completion time) are purged by enforce_limits().
  std::chrono::seconds max_age{7 * 24 * 3600};
  // Total result bytes kept; enforce_limits() purges the oldest finished records beyond it.
  std::uint64_t max_result_bytes = 4ull << 30;
  // Results bigger than this go to a file instead of the database (at most 256 MiB).
  std::uint64_t inline_limit = 16u << 20;
  // Bounds on the pending queue while flush() fails (disk full), with an ERROR line and
  // counted in dropped_writes() when hit: beyond the first, a new task's record is dropped
  // (the hub asks room_for_tasks() first, which refuses at half of it); beyond the second, a
  // result is dropped and its task recorded kFailed with the reason. Started and finished
  // writes themselves are never dropped.
  std::size_t max_pending_writes = 1u << 20;
  std::uint64_t max_pending_result_bytes = 1ull << 30;
};

// A big result's file, open for reading back a part at a time (TaskStore::result_body,
// ResultSpool::file), so that sending it never holds it whole. Reads go through the open
// descriptor: a rename (the commit) or a purge meanwhile does not disturb them.
// Thread-safe (pread).
class ResultFile {
 public:
  // Takes `fd`; the segments of `sizes` lie back to back from `data_offset` on.
  ResultFile(int fd, std::uint64_t data_offset, std::vector<std::uint64_t> sizes);
  ~ResultFile();
  ResultFile(const ResultFile&) = delete;
  ResultFile& operator=(const ResultFile&) = delete;

  const std::vector<std::uint64_t>& sizes() const { return sizes_; }
  std::uint64_t total_bytes() const { return total_; }
  // `length` bytes from `offset` bytes into the segments (counted back to back).
  // kDataLoss if the file ends first (damaged), kInvalidArgument past total_bytes().
  StatusOr<SharedBytes> read(std::uint64_t offset, std::size_t length) const;
  // The same into `into` (all of it), e.g. a buffer the caller reuses.
  Status read_into(std::uint64_t offset, std::span<std::byte> into) const;
  // Every segment, read in one piece (what TaskStore::result() answers for a file).
  StatusOr<std::vector<SharedBytes>> read_all() const;
  int fd() const { return fd_; }
  std::uint64_t data_offset() const { return data_offset_; }

 private:
  int fd_;
  std::uint64_t data_offset_;
  std::vector<std::uint64_t> sizes_;
  std::uint64_t total_ = 0;
};

// A big result written to its file while it still arrives (TaskStore::spool_result), so the
// controller holds a bounded part of it, never all of it (docs/protocol.md "Relaying a large
// reply"). The loop thread appends; the store's spool thread writes, in order.
class ResultSpool {
 public:
  virtual ~ResultSpool() = default;  // a spool never recorded deletes its file
  // The next bytes of the segments, in order. `part` is released on the spool thread once it
  // is written (its owner may count on that to pace the sender).
  virtual void append(SharedBytes part) = 0;
  // The next `bytes` were written straight into file() at their place by someone else (the
  // bulk relay splices an engine's result into it): counted as appended, in order.
  virtual void appended_elsewhere(std::uint64_t bytes) = 0;
  // Every byte has been appended: `on_written` runs once, ON THE SPOOL THREAD, with OK when
  // the whole file is written (then record_spooled may take it), or why not (disk full...).
  virtual void close(std::function<void(const Status&)> on_written) = 0;
  // The result will never be complete (its sender went away): the file is deleted.
  virtual void abandon() = 0;
  // The bytes will not all come, because of `why` (a data connection that failed, a full
  // disk): the file is deleted, and a close() after it reports `why`, once the file is gone.
  virtual void fail(Status why) = 0;
  // The file, for reading back once written.
  virtual std::shared_ptr<const ResultFile> file() const = 0;
};

// A finished task's result where the store keeps it: its segments in memory (inline ones, or
// pending ones not yet written), or the file they lie in, to be read a part at a time.
struct ResultBody {
  std::vector<SharedBytes> segments;       // when `file` is null
  std::shared_ptr<const ResultFile> file;  // bigger than inline_limit, committed or spooled
};

// The interface the hub holds (a fake can stand in for it in hub tests); open() makes the
// SQLite implementation.
class TaskStore {
 public:
  virtual ~TaskStore() = default;  // does NOT flush: call sync() first (pending writes are
                                   // dropped with a WARN line, as a crash would, and their ids
                                   // read as lost after the next open(); a result file being
                                   // written is abandoned and its .tmp deleted). With nothing
                                   // pending, it gives the unused id reservation back.

  // Opens or creates the store at options.path, upgrading a store of an earlier format version
  // in place (one transaction: a crash leaves the old format or the new, docs/formats.md), then
  // marks tasks of a previous run that were still queued or running as kLost (completed_us =
  // now_us; see lost_at_open()).
  // Errors: kFailedPrecondition (read-only or locked by another controller, a newer format
  // version: the message names it and the versions this code reads),
  // kPermissionDenied (unsafe directory), kDataLoss (not a task store / corrupt),
  // kResourceExhausted (disk full), kInvalidArgument (options).
  static StatusOr<std::unique_ptr<TaskStore>> open(const TaskStoreOptions& options,
                                                   std::int64_t now_us);

  // The first id the hub may give a new task (Scheduler::set_next_id). Ids below
  // id_reserved_until() are never handed out again after a crash: the store persists a
  // reservation ~1M ids ahead and extends it on flush. Only if flush() keeps failing can the
  // hub run past it; it should refuse new submissions while flush() fails.
  virtual std::uint64_t next_task_id() const = 0;
  virtual std::uint64_t id_reserved_until() const = 0;
  // Tasks marked kLost by open() (recorded ones; not the ids of unrecorded ones, see above).
  virtual std::uint64_t lost_at_open() const = 0;
  // Whether the hub may hand out ids [first_id, first_id + count) now: OK, or
  // kResourceExhausted with the reason (the ids are past the durable reservation, or flush()
  // keeps failing and half of max_pending_writes is used: the other half is kept for the
  // started/finished writes of tasks already accepted). The hub refuses the request then,
  // rather than hand out an id it might not remember.
  virtual Status room_for_tasks(std::uint64_t first_id, std::size_t count) const = 0;

  // Queue writes for the next flush(). Order matters: a task's started/finished must come
  // after its submitted. started/finished of a task that is not queued/running are ignored
  // (a second finish does not overwrite the first). `result` is kept by reference (no copy)
  // until committed (a big one is written to its file from the writer thread meanwhile: the
  // caller must not change the bytes). `state` of record_finished must be a finished state.
  virtual void record_submitted(TaskRecord record) = 0;
  virtual void record_started(std::uint64_t id, std::uint32_t engine, std::int64_t at_us) = 0;
  virtual void record_finished(std::uint64_t id, TaskState state, std::int64_t at_us,
                               std::vector<SharedBytes> result, std::string error) = 0;

  // Spooling, for a result too big to hold whole: a file for task `id`'s result, whose
  // segments have `sizes`, written while it arrives (ResultSpool). Errors: kUnavailable while
  // flushes fail (the caller receives the result whole then), kFailedPrecondition for a result
  // that fits inline_limit, or the file's creation failing.
  virtual StatusOr<std::shared_ptr<ResultSpool>> spool_result(std::uint64_t id,
                                                               std::vector<std::uint64_t> sizes) = 0;
  // record_finished for a spooled result whose file is written (its close() said OK): the
  // file becomes the task's result at the next flush. A spool not written (or not this
  // store's) records the task kFailed with the reason instead.
  virtual void record_spooled(std::uint64_t id, TaskState state, std::int64_t at_us,
                              std::shared_ptr<ResultSpool> spool, std::string error) = 0;

  // Commits every pending write in one transaction, except finishes whose result file is
  // still being written (and later writes of the same task): they stay pending for a later
  // flush. On an I/O error (disk full, read-only,
  // I/O failure) the transaction is rolled back, the store stays as it was before the call,
  // the pending writes are KEPT for the next flush (a transient full disk loses nothing), and
  // the error says what happened (kResourceExhausted for a full disk). A write that can never
  // succeed (duplicate task id) is dropped alone, logged and counted in dropped_writes().
  virtual Status flush() = 0;
  // flush() after waiting for every result file queued so far to be written, spooled writes
  // included (a file whose write failed is tried once more first): when it returns OK, every
  // write recorded before the call is committed. The hub calls it at shutdown.
  virtual Status sync() = 0;
  // Writes not committed yet, including finishes whose result file is still being written.
  virtual std::size_t pending_writes() const = 0;
  virtual std::uint64_t dropped_writes() const = 0;

  // Reads see every write recorded before them. get() and result() try a flush() first
  // (not while flushes fail) and answer writes still pending from memory; query() and purge()
  // sync() first (if that fails they log it and read what is committed). A result or record
  // of another owner is returned too: the caller checks TaskRecord::owner. An id kept as lost
  // (see above) reads as a kLost record with owner "" (unknown): anyone may be told.
  virtual StatusOr<std::optional<TaskRecord>> get(std::uint64_t id) = 0;
  // The result as recorded, a file left unread (what a sender streams: never loaded whole).
  // kNotFound: no such task (or purged); kFailedPrecondition: not finished yet; kDataLoss: the
  // stored bytes are damaged (e.g. a result file lost in a power failure).
  virtual StatusOr<ResultBody> result_body(std::uint64_t id) = 0;
  // The segments as recorded (zero-length ones included), a file read whole. Errors as
  // result_body().
  StatusOr<std::vector<SharedBytes>> result(std::uint64_t id);

  struct Query {
    std::optional<std::string> owner;           // only this owner's tasks
    std::vector<TaskState> states;              // any of these (empty: all)
    std::optional<std::int64_t> submitted_after_us;
    std::uint64_t after_task_id = 0;            // paging: ids > this
    std::size_t limit = 1000;
  };
  // Records in increasing task id order, at most `limit`.
  virtual StatusOr<std::vector<TaskRecord>> query(const Query& query) = 0;

  // Syncs, then deletes finished records (and their results) among `ids`, or all finished records when
  // `ids` is empty; only those of `owner` when given (nullopt: any owner, an admin purge).
  // Queued and running tasks are never touched. Returns how many were deleted.
  virtual StatusOr<std::size_t> purge(const std::optional<std::string>& owner,
                                      const std::vector<std::uint64_t>& ids) = 0;
  // Deletes finished records (and lost id ranges) completed before now_us - max_age, then the oldest finished
  // records (by completion time) until the kept result bytes fit max_result_bytes.
  // Returns how many were deleted. The hub calls it every minute or so; deletion is chunked.
  virtual StatusOr<std::size_t> enforce_limits(std::int64_t now_us) = 0;
  // Sum of result_bytes over the stored records.
  virtual std::uint64_t stored_result_bytes() const = 0;
};

}  // namespace testudo::controller
