// The SQLite task store. See task_store.h for the contract; here, the storage layout:
//
//   <path>               SQLite database, 0600 (its -wal file inherits the mode)
//   table lost_ids       id ranges [first_id, end_id) that a run may have handed out without
//                        committing their records (it stopped with writes pending): every
//                        id in one without a row in `tasks` reads as lost (task_store.h)
//   meta id_reserved_until / ids_recorded_until: below the first, ids may have been handed
//                        out; below the second, every handed-out id has its row, was purged,
//                        or lies in a lost range. open() turns the span between them into a
//                        lost range; a clean close makes them equal.
//   <path>.results/      0700: results bigger than inline_limit, "<task id>.res", 0600,
//                        written by the writer thread as "<id>-<n>.res.tmp" and renamed by
//                        the flush that commits the record (a crash leaves a .tmp that the
//                        next open() deletes, never a half file under the final name, and
//                        never a final name whose record was not committed: open() deletes
//                        .res files no finished record refers to)
//
// Result framing (the same inline in the database and in a file), little-endian:
//   "TSR1" | u32 segment count | u64 length of each segment | the segments' bytes
// The decoder checks the count and every length against the size it was given before it
// allocates anything, so damaged bytes are a kDataLoss, never an over-read.
//
// Durability: synchronous=NORMAL and no fsync of result files. A SIGKILL loses nothing
// flushed (the OS has it); a power failure may lose the last commits (the database stays
// intact) or leave a result file short, which result() reports as kDataLoss.
#include "controller/task_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>

#include "base/log.h"
#include "controller/store_format.h"

namespace testudo::controller {

std::string_view task_state_name(TaskState state) {
  switch (state) {
    case TaskState::kQueued: return "queued";
    case TaskState::kRunning: return "running";
    case TaskState::kSucceeded: return "succeeded";
    case TaskState::kFailed: return "failed";
    case TaskState::kAborted: return "aborted";
    case TaskState::kLost: return "lost";
  }
  return "unknown";
}

ResultFile::ResultFile(int fd, std::uint64_t data_offset, std::vector<std::uint64_t> sizes)
    : fd_(fd), data_offset_(data_offset), sizes_(std::move(sizes)) {
  for (std::uint64_t size : sizes_) total_ += size;
}

ResultFile::~ResultFile() {
  if (fd_ >= 0) ::close(fd_);
}

StatusOr<SharedBytes> ResultFile::read(std::uint64_t offset, std::size_t length) const {
  SharedBytes out = SharedBytes::allocate(length);
  TESTUDO_RETURN_IF_ERROR(read_into(offset, out.mutable_span()));
  return out;
}

StatusOr<std::vector<SharedBytes>> ResultFile::read_all() const {
  TESTUDO_ASSIGN_OR_RETURN(SharedBytes whole, read(0, total_));
  std::vector<SharedBytes> segments;
  std::uint64_t offset = 0;
  for (std::uint64_t size : sizes_) {
    segments.push_back(size == 0 ? SharedBytes() : SharedBytes::adopt(whole.data() + offset, size, [whole] {}));
    offset += size;
  }
  return segments;
}

StatusOr<std::vector<SharedBytes>> TaskStore::result(std::uint64_t id) {
  TESTUDO_ASSIGN_OR_RETURN(ResultBody body, result_body(id));
  if (body.file) return body.file->read_all();
  return std::move(body.segments);
}

Status ResultFile::read_into(std::uint64_t offset, std::span<std::byte> into) const {
  const std::size_t length = into.size();
  if (offset > total_ || length > total_ - offset) {
    return invalid_argument("result file: " + std::to_string(length) + " bytes at " + std::to_string(offset) +
                            " are past its " + std::to_string(total_));
  }
  std::size_t done = 0;
  while (done < length) {
    const ssize_t n = ::pread(fd_, into.data() + done, length - done, static_cast<off_t>(data_offset_ + offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return data_loss(std::string("cannot read result file: ") + std::strerror(errno));
    if (n == 0) return data_loss("result file is shorter than its record says");
    done += static_cast<std::size_t>(n);
  }
  return ok_status();
}

namespace {

constexpr std::string_view kLog = "store";
constexpr int kFormatVersion = 1;  // PRAGMA user_version; see task_store_format()
// Ids reserved ahead of the highest id recorded (see TaskStore::id_reserved_until()).
constexpr std::uint64_t kIdBlock = 1ull << 20;
// Rows deleted per transaction by enforce_limits(), so the WAL stays small.
constexpr int kDeleteChunk = 10'000;
constexpr std::uint64_t kMaxInlineLimit = 256ull << 20;
constexpr char kMagic[4] = {'T', 'S', 'R', '1'};
constexpr std::string_view kLostError = "controller stopped before the task finished";
constexpr std::string_view kUnrecordedError =
    "controller stopped before it could record the task (disk full?); it may or may not have run";

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// Closes a file descriptor on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Resets a cached statement on scope exit, so none keeps a read open or a binding alive.
class ResetOnExit {
 public:
  explicit ResetOnExit(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ~ResetOnExit() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  ResetOnExit(const ResetOnExit&) = delete;
  ResetOnExit& operator=(const ResetOnExit&) = delete;

 private:
  sqlite3_stmt* stmt_;
};

std::int64_t to_sql(std::uint64_t v) { return static_cast<std::int64_t>(v); }
std::uint64_t from_sql(std::int64_t v) { return static_cast<std::uint64_t>(v); }

Status errno_status(int err, const std::string& path, std::string_view what) {
  std::string m = "task store: " + std::string(what) + " " + path + ": ";
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      return resource_exhausted(m + "disk full (" + std::strerror(err) + ")");
    case EROFS:
    case EACCES:
    case EPERM:
      return failed_precondition(m + "read-only or not permitted (" + std::strerror(err) + ")");
    default:
      return unavailable(m + std::strerror(err));
  }
}

// Converts an SQLite result code once, where it enters (STYLE habit 1).
Status sqlite_status(sqlite3* db, int rc, const std::string& path, std::string_view what) {
  std::string detail = sqlite3_errstr(rc);
  if (db != nullptr) {
    const char* msg = sqlite3_errmsg(db);
    if (msg != nullptr && detail != msg) detail += std::string(" (") + msg + ")";
  }
  std::string m = "task store " + path + ": " + std::string(what) + ": ";
  switch (rc & 0xff) {
    case SQLITE_FULL: return resource_exhausted(m + "disk full: " + detail);
    case SQLITE_NOMEM: return resource_exhausted(m + "out of memory: " + detail);
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
    case SQLITE_CANTOPEN:
      return failed_precondition(m + "read-only or not accessible: " + detail);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return failed_precondition(m + "in use by another process (another controller on this profile?): " +
                                 detail);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return data_loss(m + "not a task store or damaged: " + detail);
    case SQLITE_IOERR: return unavailable(m + "I/O error: " + detail);
    default: return internal_error(m + detail);
  }
}

// The current layout (format version kFormatVersion; docs/formats.md lists every version).
// Indexes: by owner for queries (F3); unfinished tasks (small) for marking them lost;
// finished tasks by completion time, covering result_bytes, for the age and size limits.
constexpr const char* kCreateLayout =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS tasks("
    "  task_id INTEGER PRIMARY KEY,"
    "  owner TEXT NOT NULL,"
    "  request_id INTEGER NOT NULL,"
    "  kind TEXT NOT NULL,"
    "  targets BLOB NOT NULL,"          // little-endian u32 engine ids
    "  engine INTEGER,"                 // NULL: not started
    "  state INTEGER NOT NULL,"         // TaskState
    "  submitted_us INTEGER NOT NULL,"
    "  started_us INTEGER NOT NULL DEFAULT 0,"
    "  completed_us INTEGER NOT NULL DEFAULT 0,"
    "  result_bytes INTEGER NOT NULL DEFAULT 0,"
    "  result_segments INTEGER NOT NULL DEFAULT 0,"
    "  result_inline BLOB,"             // framed segments; NULL when none or in a file
    "  result_file INTEGER NOT NULL DEFAULT 0,"  // 1: <path>.results/<task_id>.res
    "  error TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX IF NOT EXISTS tasks_owner ON tasks(owner, task_id);"
    "CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks(task_id) WHERE state IN (0, 1);"
    "CREATE INDEX IF NOT EXISTS tasks_done ON tasks(completed_us, result_bytes) WHERE state >= 2;";
constexpr const char* kMetaColumns[] = {"key", "value"};
constexpr const char* kTaskColumns[] = {"task_id",         "owner",         "request_id",   "kind",
                                        "targets",         "engine",        "state",        "submitted_us",
                                        "started_us",      "completed_us",  "result_bytes", "result_segments",
                                        "result_inline",   "result_file",   "error"};

// Whether the tables are those of format version 1 (the layout since the first task store).
StatusOr<bool> has_layout_v1(sqlite3* db, const std::function<Status(int, std::string_view)>& sqlite_error) {
  TESTUDO_ASSIGN_OR_RETURN(const std::vector<std::string> meta, table_columns(db, "meta", sqlite_error));
  TESTUDO_ASSIGN_OR_RETURN(const std::vector<std::string> tasks, table_columns(db, "tasks", sqlite_error));
  return std::equal(meta.begin(), meta.end(), std::begin(kMetaColumns), std::end(kMetaColumns)) &&
         std::equal(tasks.begin(), tasks.end(), std::begin(kTaskColumns), std::end(kTaskColumns));
}

// The task store's formats. Version 1 is every store written so far (user_version 1 from the
// start; an unversioned database with version 1's tables is taken as version 1). An upgrade
// to version N adds a FormatStep{N - 1, ...} here, a fixture tests/fixtures/store-v<N-1>/ and
// a line in docs/formats.md.
StoreFormat task_store_format(const std::string& path, sqlite3* db) {
  StoreFormat f;
  f.name = "task store " + path;
  f.current = kFormatVersion;
  f.create = kCreateLayout;
  f.sqlite_error = [db, path](int rc, std::string_view what) { return sqlite_status(db, rc, path, what); };
  f.unversioned = [err = f.sqlite_error](sqlite3* d) -> StatusOr<int> {
    TESTUDO_ASSIGN_OR_RETURN(const bool v1, has_layout_v1(d, err));
    return v1 ? 1 : 0;
  };
  f.check = [err = f.sqlite_error, name = f.name](sqlite3* d) -> Status {
    TESTUDO_ASSIGN_OR_RETURN(const bool v1, has_layout_v1(d, err));
    if (!v1) return data_loss(name + ": not a task store of format version 1 (its tables differ)");
    return ok_status();
  };
  return f;
}

// A write that can never succeed however often it is retried (vs. an I/O failure).
bool is_bad_write(int rc) {
  switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
      return true;
    default:
      return false;
  }
}

void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_u64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
std::uint64_t get_le(const std::byte* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= std::uint64_t(std::to_integer<std::uint8_t>(p[i])) << (8 * i);
  return v;
}

std::uint64_t framed_size(std::uint64_t segments, std::uint64_t bytes) { return 8 + 8 * segments + bytes; }

// The framing header (magic, count, lengths); the segments' bytes follow it.
std::string frame_header(const std::vector<SharedBytes>& segments) {
  std::string out(kMagic, sizeof kMagic);
  put_u32(out, static_cast<std::uint32_t>(segments.size()));
  for (const SharedBytes& s : segments) put_u64(out, s.size());
  return out;
}

// Splits a framed buffer into segments that share `whole` (no copy). Checks before use.
StatusOr<std::vector<SharedBytes>> unframe(const SharedBytes& whole, std::uint64_t want_segments,
                                           std::uint64_t want_bytes) {
  const std::byte* p = whole.data();
  const std::uint64_t size = whole.size();
  if (size < 8 || std::memcmp(p, kMagic, sizeof kMagic) != 0) return data_loss("result framing: bad magic");
  const std::uint64_t count = get_le(p + 4, 4);
  if (count != want_segments || count > (size - 8) / 8) return data_loss("result framing: bad segment count");
  std::uint64_t offset = 8 + 8 * count;
  std::uint64_t total = 0;
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t len = get_le(p + 8 + 8 * i, 8);
    if (len > size - offset - total) return data_loss("result framing: segment longer than the data");
    total += len;
  }
  if (offset + total != size || total != want_bytes) return data_loss("result framing: size mismatch");
  std::vector<SharedBytes> segments;
  segments.reserve(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t len = get_le(p + 8 + 8 * i, 8);
    if (len == 0) {
      segments.emplace_back();
    } else {
      segments.push_back(SharedBytes::adopt(const_cast<std::byte*>(p + offset), len, [whole] {}));
    }
    offset += len;
  }
  return segments;
}

// mkdir -p with mode 0700 for the directories it creates.
Status make_dirs(const std::string& dir) {
  if (dir.empty()) return ok_status();
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    return S_ISDIR(st.st_mode) ? ok_status() : failed_precondition("task store: " + dir + " is not a directory");
  }
  const auto slash = dir.find_last_of('/');
  if (slash != std::string::npos && slash > 0) TESTUDO_RETURN_IF_ERROR(make_dirs(dir.substr(0, slash)));
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return errno_status(errno, dir, "cannot create directory");
  return ok_status();
}

// One big result on its way to "<id>-<n>.res.tmp". The loop thread creates it and reads
// `state`; the writer thread writes the file, sets `error` and then `state` (release), and
// does not touch the job again until the loop thread resubmits it. A spooled one (written
// by a FileSpool as it arrived) is kWritten before it is queued and never written again.
struct FileJob {
  enum State : int { kQueued, kWritten, kFailed };
  std::uint64_t id = 0;
  std::vector<SharedBytes> segments;  // kept until the record is committed (a retry needs them)
  std::string tmp_path;
  std::atomic<int> state{kQueued};
  Status error;  // set by the writer before state = kFailed
  bool spooled = false;
  std::shared_ptr<const ResultFile> readable;  // spooled: its file, open
};

// Writes a framed result file; on failure nothing is left at `path`. `stop` is looked at
// between 8 MiB pieces (a closing store abandons a long write).
Status write_framed_file(const std::string& path, const std::vector<SharedBytes>& segments,
                         const std::atomic<bool>* stop) {
  ::unlink(path.c_str());
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (fd.get() < 0) return errno_status(errno, path, "cannot create result file");
  constexpr std::size_t kPiece = 8u << 20;
  auto write_all = [&](const void* data, std::size_t size) -> Status {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      if (stop != nullptr && stop->load(std::memory_order_relaxed)) {
        ::unlink(path.c_str());
        return unavailable("task store: store closed while writing " + path);
      }
      const ssize_t n = ::write(fd.get(), p, std::min(size, kPiece));
      if (n < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        ::unlink(path.c_str());
        return errno_status(err, path, "cannot write result file");
      }
      p += n;
      size -= static_cast<std::size_t>(n);
    }
    return ok_status();
  };
  const std::string header = frame_header(segments);
  TESTUDO_RETURN_IF_ERROR(write_all(header.data(), header.size()));
  for (const SharedBytes& s : segments) TESTUDO_RETURN_IF_ERROR(write_all(s.data(), s.size()));
  if (::close(fd.release()) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return errno_status(err, path, "cannot write result file");
  }
  return ok_status();
}

// A thread that writes result files, one job at a time in submission order. Thread-safe.
// The destructor abandons queued jobs (a whole file's record stays pending, so it is lost like
// any uncommitted write; a spool's close never reports) and joins.
class ResultWriter {
 public:
  // `nice`: the thread's priority (setpriority), 0 as the loop, 10 well below it.
  explicit ResultWriter(int nice) : nice_(nice), thread_([this] { run(); }) {}
  ~ResultWriter() {
    std::deque<std::function<void()>> dropped;
    {
      std::lock_guard lock(mu_);
      stop_.store(true);
      dropped.swap(queue_);
    }
    cv_.notify_all();
    thread_.join();
  }
  ResultWriter(const ResultWriter&) = delete;
  ResultWriter& operator=(const ResultWriter&) = delete;

  // Writes `job`'s whole file.
  void submit(std::shared_ptr<FileJob> job) {
    job->state.store(FileJob::kQueued, std::memory_order_relaxed);
    run_later([this, job = std::move(job)] {
      Status st = write_framed_file(job->tmp_path, job->segments, &stop_);
      if (st.ok()) {
        job->state.store(FileJob::kWritten, std::memory_order_release);
      } else {
        job->error = std::move(st);
        job->state.store(FileJob::kFailed, std::memory_order_release);
      }
    });
  }
  // Runs `fn` on the thread after the jobs before it; `fn` is destroyed there right after.
  void run_later(std::function<void()> fn) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(fn));
    }
    cv_.notify_all();
  }
  // Blocks until every job submitted so far has been written or has failed.
  void wait_idle() {
    std::unique_lock lock(mu_);
    idle_cv_.wait(lock, [this] { return queue_.empty() && !busy_; });
  }

 private:
  void run() {
    // The whole-result writer runs at nice +10 (~1/10 of a contended core): forwarding a
    // message goes first; the file is written while the CPU would otherwise idle, never
    // starved outright. The spool writer runs at the loop's priority: its sender waits for it.
    if (nice_ != 0) ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), nice_);
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_.load() || !queue_.empty(); });
      if (stop_.load()) return;
      std::function<void()> job = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      job();
      job = nullptr;  // what it held (a spooled part) is released here, on this thread
      lock.lock();
      busy_ = false;
      if (queue_.empty()) idle_cv_.notify_all();
    }
  }

  const int nice_;
  std::mutex mu_;
  std::condition_variable cv_;       // work or stop
  std::condition_variable idle_cv_;  // queue drained
  std::deque<std::function<void()>> queue_;
  bool busy_ = false;
  std::atomic<bool> stop_{false};
  std::thread thread_;  // last: starts after the members it uses exist
};

// The segment sizes of a framing header (magic, count, lengths), checked against what the
// record says before anything is allocated.
StatusOr<std::vector<std::uint64_t>> parse_frame_header(std::span<const std::byte> header, std::uint64_t want_segments,
                                                        std::uint64_t want_bytes) {
  if (header.size() < 8 || std::memcmp(header.data(), kMagic, sizeof kMagic) != 0) {
    return data_loss("result framing: bad magic");
  }
  const std::uint64_t count = get_le(header.data() + 4, 4);
  if (count != want_segments || header.size() != 8 + 8 * count) return data_loss("result framing: bad segment count");
  std::vector<std::uint64_t> sizes;
  sizes.reserve(count);
  std::uint64_t total = 0;
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t len = get_le(header.data() + 8 + 8 * i, 8);
    if (len > want_bytes - total) return data_loss("result framing: size mismatch");
    total += len;
    sizes.push_back(len);
  }
  if (total != want_bytes) return data_loss("result framing: size mismatch");
  return sizes;
}

std::string frame_header_of_sizes(const std::vector<std::uint64_t>& sizes) {
  std::string out(kMagic, sizeof kMagic);
  put_u32(out, static_cast<std::uint32_t>(sizes.size()));
  for (std::uint64_t size : sizes) put_u64(out, size);
  return out;
}

// A result written to "<id>-<n>.res.tmp" as it arrives (ResultSpool). The loop thread
// appends; each write runs on the spool writer's thread, in order. `error_` and `written_`
// are touched on that thread only; the job's state is published with release like a whole
// file's.
class FileSpool final : public ResultSpool, public std::enable_shared_from_this<FileSpool> {
 public:
  FileSpool(std::shared_ptr<FileJob> job, std::shared_ptr<const ResultFile> file, std::weak_ptr<ResultWriter> writer)
      : job_(std::move(job)), file_(std::move(file)), writer_(std::move(writer)) {}
  ~FileSpool() override {
    if (!recorded_) ::unlink(job_->tmp_path.c_str());
  }

  void write_header() {
    later([](FileSpool& self) {
      const std::string header = frame_header_of_sizes(self.file_->sizes());
      self.write_at(0, std::as_bytes(std::span(header)));
    });
  }
  void append(SharedBytes part) override {
    later([part = std::move(part)](FileSpool& self) mutable {
      self.write_at(self.file_->data_offset() + self.written_, part.span());
      self.written_ += part.size();
      part = {};  // released now, on this thread: the sender's window opens
    });
  }
  void appended_elsewhere(std::uint64_t bytes) override {
    later([bytes](FileSpool& self) { self.written_ += bytes; });
  }
  void close(std::function<void(const Status&)> on_written) override {
    later([on_written = std::move(on_written)](FileSpool& self) {
      if (self.error_.ok() && self.written_ != self.file_->total_bytes()) {
        self.error_ = internal_error("result closed after " + std::to_string(self.written_) + " of " +
                               std::to_string(self.file_->total_bytes()) + " bytes");
      }
      self.job_->state.store(self.error_.ok() ? FileJob::kWritten : FileJob::kFailed, std::memory_order_release);
      on_written(self.error_);
    });
  }
  void abandon() override { fail(unavailable("abandoned")); }
  void fail(Status why) override {
    later([why = std::move(why)](FileSpool& self) {
      if (self.error_.ok()) self.error_ = why;
      self.discard();
    });
  }
  std::shared_ptr<const ResultFile> file() const override { return file_; }

  // record_spooled: the store owns the file now (written: the job says so).
  std::shared_ptr<FileJob> take_for_record() {
    if (job_->state.load(std::memory_order_acquire) != FileJob::kWritten) return nullptr;
    recorded_ = true;
    return job_;
  }

 private:
  void later(std::function<void(FileSpool&)> fn) {
    auto writer = writer_.lock();
    if (!writer) return;  // the store closed: nothing more is written (the file goes with us)
    writer->run_later([self = shared_from_this(), fn = std::move(fn)]() mutable { fn(*self); });
  }
  // The name goes and, since readers may still hold the descriptor, the blocks too.
  void discard() {
    ::unlink(job_->tmp_path.c_str());
    if (::ftruncate(file_->fd(), 0) != 0) {
      LOG_WARN(kLog) << "cannot truncate " << job_->tmp_path << ": " << std::strerror(errno);
    }
  }
  void write_at(std::uint64_t offset, std::span<const std::byte> bytes) {
    while (error_.ok() && !bytes.empty()) {
      const ssize_t n = ::pwrite(file_->fd(), bytes.data(), bytes.size(), static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        error_ = errno_status(errno, job_->tmp_path, "cannot write result file");
        discard();  // space back at once; the sender is told at close
        return;
      }
      offset += static_cast<std::uint64_t>(n);
      bytes = bytes.subspan(static_cast<std::size_t>(n));
    }
  }

  std::shared_ptr<FileJob> job_;
  std::shared_ptr<const ResultFile> file_;
  std::weak_ptr<ResultWriter> writer_;
  Status error_;             // spool thread
  std::uint64_t written_ = 0;  // spool thread
  bool recorded_ = false;    // loop thread
};

struct Submitted {
  TaskRecord record;
};
struct Started {
  std::uint64_t id;
  std::uint32_t engine;
  std::int64_t at_us;
};
struct Finished {
  std::uint64_t id;
  TaskState state;
  std::int64_t at_us;
  std::vector<SharedBytes> result;  // inline results; empty when `file` holds them
  std::uint64_t result_bytes;
  std::uint64_t segment_count;
  std::string error;
  std::shared_ptr<FileJob> file;    // a result bigger than inline_limit
};
using PendingWrite = std::variant<Submitted, Started, Finished>;

std::uint64_t write_task_id(const PendingWrite& w) {
  if (const auto* s = std::get_if<Submitted>(&w)) return s->record.task_id;
  if (const auto* s = std::get_if<Started>(&w)) return s->id;
  return std::get<Finished>(w).id;
}

constexpr const char* kRecordColumns =
    "task_id, owner, request_id, kind, targets, engine, state, submitted_us, started_us, completed_us, "
    "result_bytes, error";

class SqliteTaskStore final : public TaskStore {
 public:
  static StatusOr<std::unique_ptr<TaskStore>> open(const TaskStoreOptions& options, std::int64_t now_us);

  ~SqliteTaskStore() override {
    writer_.reset();  // joins; a write in progress stops and deletes its file
    spool_writer_.reset();  // joins; spools still held write nothing more
    if (opened_ && pending_.empty()) release_unused_ids();
    if (!pending_.empty()) {
      LOG_WARN(kLog) << "closing " << options_.path << " with " << pending_.size()
                     << " unflushed writes; they are dropped (their tasks read as lost after a restart)";
      for (const PendingWrite& w : pending_) {
        const auto* f = std::get_if<Finished>(&w);
        if (f != nullptr && f->file) ::unlink(f->file->tmp_path.c_str());
      }
    }
  }

  std::uint64_t next_task_id() const override { return std::max(first_id_, max_recorded_id_ + 1); }
  std::uint64_t id_reserved_until() const override { return reserved_until_; }
  std::uint64_t lost_at_open() const override { return lost_at_open_; }
  std::size_t pending_writes() const override { return pending_.size(); }
  Status room_for_tasks(std::uint64_t first_id, std::size_t count) const override;
  std::uint64_t dropped_writes() const override { return dropped_; }
  std::uint64_t stored_result_bytes() const override { return stored_result_bytes_; }

  void record_submitted(TaskRecord record) override {
    // Before admit(): a dropped record's id must still never be handed out again.
    max_recorded_id_ = std::max(max_recorded_id_, record.task_id);
    if (!admit(0)) return;
    queue(Submitted{std::move(record)});
  }
  void record_started(std::uint64_t id, std::uint32_t engine, std::int64_t at_us) override {
    queue(Started{id, engine, at_us});
  }
  void record_finished(std::uint64_t id, TaskState state, std::int64_t at_us, std::vector<SharedBytes> result,
                       std::string error) override {
    if (!is_finished(state)) {
      LOG_ERROR(kLog) << "task " << id << ": record_finished with unfinished state " << task_state_name(state)
                      << " ignored";
      ++dropped_;
      return;
    }
    std::uint64_t bytes = 0;
    for (const SharedBytes& s : result) bytes += s.size();
    if (bytes > 0 && !admit(bytes)) {
      // No room for the result: the finish is kept without it, so the task still ends and a
      // later get_result says why there is no result (the submitter had it already).
      error = "result of " + std::to_string(bytes) + " bytes not stored: the task store could not keep up (" +
              (failing_ ? failure_ : std::string("too many result bytes waiting")) + ")";
      state = TaskState::kFailed;
      result.clear();
      bytes = 0;
    }
    pending_result_bytes_ += bytes;
    const std::uint64_t count = result.size();
    std::shared_ptr<FileJob> file;
    if (framed_size(count, bytes) > options_.inline_limit) {
      file = std::make_shared<FileJob>();
      file->id = id;
      file->segments = std::move(result);
      file->tmp_path = results_dir_ + "/" + std::to_string(id) + "-" + std::to_string(++file_serial_) + ".res.tmp";
      if (!writer_) writer_ = std::make_unique<ResultWriter>(10);
      writer_->submit(file);
      result.clear();
    }
    queue(Finished{id, state, at_us, std::move(result), bytes, count, std::move(error), std::move(file)});
  }

  StatusOr<std::shared_ptr<ResultSpool>> spool_result(std::uint64_t id, std::vector<std::uint64_t> sizes) override;
  void record_spooled(std::uint64_t id, TaskState state, std::int64_t at_us, std::shared_ptr<ResultSpool> spool,
                      std::string error) override;

  Status flush() override;
  Status flush_pending();
  Status sync() override;
  StatusOr<std::optional<TaskRecord>> get(std::uint64_t id) override;
  StatusOr<ResultBody> result_body(std::uint64_t id) override;
  StatusOr<std::vector<TaskRecord>> query(const Query& query) override;
  StatusOr<std::size_t> purge(const std::optional<std::string>& owner,
                              const std::vector<std::uint64_t>& ids) override;
  StatusOr<std::size_t> enforce_limits(std::int64_t now_us) override;

 private:
  explicit SqliteTaskStore(TaskStoreOptions options) : options_(std::move(options)) {
    results_dir_ = options_.path + ".results";
  }

  Status init(std::int64_t now_us);
  Status exec(const char* sql, std::string_view what);
  Status prepare(StmtPtr& stmt, const char* sql);
  Status error(int rc, std::string_view what) const { return sqlite_status(db_.get(), rc, options_.path, what); }
  // Runs `body` in one transaction; rolls back if it or the commit fails.
  template <typename Body>
  Status transaction(Body&& body);
  void rollback();

  bool admit(std::uint64_t result_bytes);
  void queue(PendingWrite write);
  void reindex_pending();
  // The committed record of `id` (no flush, no pending writes).
  StatusOr<std::optional<TaskRecord>> read_committed(std::uint64_t id);
  // `committed` with the pending writes of its task applied as flush() would apply them; when
  // a pending finish applies, *finish points to it. No record at all: a lost id's record, or
  // nullopt.
  StatusOr<std::optional<TaskRecord>> with_pending(std::uint64_t id, std::optional<TaskRecord> committed,
                                                   const Finished** finish);
  // A flush() before a read, unless flushes are failing (the read answers from memory then).
  void flush_before_read();
  // At a clean close: the ids reserved but never handed out are not lost ids.
  void release_unused_ids();
  Status set_meta(const char* key, std::uint64_t value);
  // One pending write inside flush()'s transaction. A bad write is counted in *bad and
  // skipped; an I/O failure is returned.
  // `files`: result files renamed into place in this transaction.
  Status apply(const PendingWrite& write, std::int64_t& bytes_delta, std::vector<const Finished*>& files,
               std::uint64_t& bad);
  Status apply_finished(const Finished& f, std::int64_t& bytes_delta, std::vector<const Finished*>& files,
                        std::uint64_t& bad);
  // Submits every failed result file again; returns the first failure's error (OK if none).
  Status retry_failed_files();
  // The committed result file of task `id`, its size and framing checked against the record.
  StatusOr<std::shared_ptr<const ResultFile>> open_result_file(std::uint64_t id, std::uint64_t segments,
                                                               std::uint64_t bytes);
  std::string result_file(std::uint64_t id) const { return results_dir_ + "/" + std::to_string(id) + ".res"; }
  void remove_files(const std::vector<std::uint64_t>& ids);
  void flush_for_read();
  StatusOr<TaskRecord> read_record(sqlite3_stmt* stmt);
  // Steps a "DELETE ... RETURNING task_id, result_file, result_bytes" statement to its end.
  Status step_deletes(sqlite3_stmt* stmt, std::size_t& deleted, std::vector<std::uint64_t>& files,
                      std::uint64_t& bytes);
  Status sweep_results_dir();

  TaskStoreOptions options_;
  std::string results_dir_;
  DbPtr db_;  // declared before the statements: they are finalized first
  struct Statements {
    StmtPtr begin, commit, rollback, set_meta, get_meta;
    StmtPtr insert, start, state_of, finish;
    StmtPtr get, get_result, query_owner, query_all;
    StmtPtr purge_one, purge_owner, purge_all, purge_aged, oldest_results;
    StmtPtr lost_range, purge_lost_aged;
  } stmt_;

  std::vector<PendingWrite> pending_;
  // Positions in pending_ of each task's writes, for reads while flushes fail.
  std::unordered_map<std::uint64_t, std::vector<std::size_t>> pending_by_id_;
  bool opened_ = false;
  bool failing_ = false;         // the last flush() failed
  std::string failure_;          // ... and why
  std::uint64_t pending_result_bytes_ = 0;
  std::unique_ptr<ResultWriter> writer_;  // started on the first big result
  std::shared_ptr<ResultWriter> spool_writer_;  // started on the first spool; spools hold it weakly
  std::uint64_t file_serial_ = 0;
  std::vector<std::string> ignored_files_;  // written for a task finished already (flush())
  bool overflow_logged_ = false;
  std::uint64_t dropped_ = 0;
  std::uint64_t first_id_ = 1;
  std::uint64_t max_recorded_id_ = 0;
  std::uint64_t reserved_until_ = 0;
  std::uint64_t recorded_until_ = 0;  // meta ids_recorded_until as committed
  std::uint64_t lost_at_open_ = 0;
  std::uint64_t stored_result_bytes_ = 0;
};

StatusOr<std::unique_ptr<TaskStore>> SqliteTaskStore::open(const TaskStoreOptions& options, std::int64_t now_us) {
  if (options.path.empty()) return invalid_argument("task store: empty path");
  if (options.inline_limit > kMaxInlineLimit) return invalid_argument("task store: inline_limit above 256 MiB");
  std::unique_ptr<SqliteTaskStore> store(new SqliteTaskStore(options));
  TESTUDO_RETURN_IF_ERROR(store->init(now_us));
  return std::unique_ptr<TaskStore>(std::move(store));
}

Status SqliteTaskStore::init(std::int64_t now_us) {
  const std::string& path = options_.path;
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  TESTUDO_RETURN_IF_ERROR(make_dirs(dir));
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return errno_status(errno, dir, "cannot stat");
  if ((st.st_mode & 022) != 0 && (st.st_mode & S_ISVTX) == 0) {
    return permission_denied("task store: directory " + dir + " is writable by group or others");
  }
  if (::mkdir(results_dir_.c_str(), 0700) != 0 && errno != EEXIST) {
    return errno_status(errno, results_dir_, "cannot create directory");
  }
  if (::lstat(results_dir_.c_str(), &st) != 0) return errno_status(errno, results_dir_, "cannot stat");
  if (!S_ISDIR(st.st_mode)) return failed_precondition("task store: " + results_dir_ + " is not a directory");
  if ((st.st_mode & 077) != 0 && ::chmod(results_dir_.c_str(), 0700) != 0) {
    return errno_status(errno, results_dir_, "cannot chmod");
  }

  // Create the file ourselves so it is 0600 from the start (SQLite's -wal file copies its mode).
  {
    Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (fd.get() < 0) return errno_status(errno, path, "cannot open");
    if (::fstat(fd.get(), &st) != 0) return errno_status(errno, path, "cannot stat");
    if (!S_ISREG(st.st_mode)) return failed_precondition("task store: " + path + " is not a regular file");
    if ((st.st_mode & 077) != 0 && ::fchmod(fd.get(), 0600) != 0) return errno_status(errno, path, "cannot chmod");
  }

  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
  db_.reset(raw);
  if (rc != SQLITE_OK) return error(rc, "open");
  sqlite3_extended_result_codes(db_.get(), 1);
  sqlite3_busy_timeout(db_.get(), 500);
  if (sqlite3_db_readonly(db_.get(), "main") == 1) {
    return failed_precondition("task store " + path + ": opened read-only (read-only file or directory)");
  }

  // Exclusive locking before the first access: no shared-memory file, and a second
  // controller on the same profile is refused while this one lives.
  TESTUDO_RETURN_IF_ERROR(exec("PRAGMA locking_mode=EXCLUSIVE", "set locking mode"));
  {
    sqlite3_stmt* s = nullptr;
    rc = sqlite3_prepare_v2(db_.get(), "PRAGMA journal_mode=WAL", -1, &s, nullptr);
    StmtPtr mode(s);
    if (rc != SQLITE_OK) return error(rc, "set WAL mode");
    rc = sqlite3_step(mode.get());
    if (rc != SQLITE_ROW) return error(rc, "set WAL mode");
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(mode.get(), 0));
    if (text == nullptr || std::string_view(text) != "wal") {
      return failed_precondition("task store " + path + ": cannot enable WAL mode");
    }
  }
  TESTUDO_RETURN_IF_ERROR(exec("PRAGMA synchronous=NORMAL", "set synchronous mode"));

  // Every earlier format is upgraded in place, a newer one refused (docs/formats.md).
  TESTUDO_ASSIGN_OR_RETURN(const int found, upgrade_format(db_.get(), task_store_format(path, db_.get())));
  if (found != 0 && found != kFormatVersion) {
    LOG_INFO(kLog) << path << ": upgraded from format version " << found << " to " << kFormatVersion;
  }
  // Added within format version 1 (docs/formats.md): the ranges of ids handed out but never
  // recorded (a stop on a full disk), answered as lost. Additive: an older testudo ignores it
  // (it answers such ids as unknown, as it always did), so the version stays 1.
  TESTUDO_RETURN_IF_ERROR(exec("CREATE TABLE IF NOT EXISTS lost_ids(first_id INTEGER PRIMARY KEY, "
                               "end_id INTEGER NOT NULL, at_us INTEGER NOT NULL)",
                               "create the lost ids table"));

  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.begin, "BEGIN IMMEDIATE"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.commit, "COMMIT"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.rollback, "ROLLBACK"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.set_meta,
                                  "INSERT INTO meta(key, value) VALUES(?1, ?2) "
                                  "ON CONFLICT(key) DO UPDATE SET value = excluded.value"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.get_meta, "SELECT value FROM meta WHERE key = ?1"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.insert,
                                  "INSERT INTO tasks(task_id, owner, request_id, kind, targets, engine, state, "
                                  "submitted_us, started_us, completed_us, result_bytes, error) "
                                  "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.start,
                                  "UPDATE tasks SET state = 1, engine = ?2, started_us = ?3 "
                                  "WHERE task_id = ?1 AND state IN (0, 1)"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.state_of, "SELECT state FROM tasks WHERE task_id = ?1"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.finish,
                                  "UPDATE tasks SET state = ?2, completed_us = ?3, result_bytes = ?4, "
                                  "result_segments = ?5, result_inline = ?6, result_file = ?7, error = ?8 "
                                  "WHERE task_id = ?1 AND state IN (0, 1)"));
  const std::string columns = kRecordColumns;
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.get, ("SELECT " + columns + " FROM tasks WHERE task_id = ?1").c_str()));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.get_result,
                                  "SELECT state, result_bytes, result_segments, result_inline, result_file "
                                  "FROM tasks WHERE task_id = ?1"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.query_owner,
                                  ("SELECT " + columns +
                                   " FROM tasks WHERE owner = ?1 AND ((?2 >> state) & 1) AND submitted_us > ?3 "
                                   "AND task_id > ?4 ORDER BY task_id LIMIT ?5")
                                      .c_str()));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.query_all,
                                  ("SELECT " + columns +
                                   " FROM tasks WHERE ((?2 >> state) & 1) AND submitted_us > ?3 "
                                   "AND task_id > ?4 ORDER BY task_id LIMIT ?5")
                                      .c_str()));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.purge_one,
                                  "DELETE FROM tasks WHERE task_id = ?1 AND state >= 2 "
                                  "AND (?2 IS NULL OR owner = ?2) RETURNING task_id, result_file, result_bytes"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.purge_owner,
                                  "DELETE FROM tasks WHERE owner = ?1 AND state >= 2 "
                                  "RETURNING task_id, result_file, result_bytes"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.purge_all,
                                  "DELETE FROM tasks WHERE state >= 2 RETURNING task_id, result_file, result_bytes"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.purge_aged,
                                  "DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM tasks WHERE state >= 2 "
                                  "AND completed_us < ?1 ORDER BY completed_us LIMIT ?2) "
                                  "RETURNING task_id, result_file, result_bytes"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.oldest_results,
                                  "SELECT task_id, result_bytes FROM tasks WHERE state >= 2 AND result_bytes > 0 "
                                  "ORDER BY completed_us, task_id LIMIT ?1"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.lost_range,
                                  "SELECT at_us FROM lost_ids WHERE first_id <= ?1 AND end_id > ?1 "
                                  "ORDER BY first_id DESC LIMIT 1"));
  TESTUDO_RETURN_IF_ERROR(prepare(stmt_.purge_lost_aged, "DELETE FROM lost_ids WHERE at_us < ?1"));

  // Where ids continue, and how many result bytes are kept.
  const auto meta = [&](const char* key) -> StatusOr<std::uint64_t> {
    sqlite3_stmt* s = stmt_.get_meta.get();
    ResetOnExit reset(s);
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    const int rc2 = sqlite3_step(s);
    if (rc2 == SQLITE_ROW) return from_sql(sqlite3_column_int64(s, 0));
    if (rc2 != SQLITE_DONE) return error(rc2, "read id reservation");
    return std::uint64_t{0};
  };
  TESTUDO_ASSIGN_OR_RETURN(const std::uint64_t reserved, meta("id_reserved_until"));
  TESTUDO_ASSIGN_OR_RETURN(const std::uint64_t recorded, meta("ids_recorded_until"));
  const auto scalar = [&](const char* sql) -> StatusOr<std::int64_t> {
    sqlite3_stmt* s = nullptr;
    int rc2 = sqlite3_prepare_v2(db_.get(), sql, -1, &s, nullptr);
    StmtPtr once(s);
    if (rc2 != SQLITE_OK) return error(rc2, "read totals");
    rc2 = sqlite3_step(once.get());
    if (rc2 != SQLITE_ROW) return error(rc2, "read totals");
    return sqlite3_column_int64(once.get(), 0);
  };
  TESTUDO_ASSIGN_OR_RETURN(const std::int64_t max_id, scalar("SELECT MAX(task_id) FROM tasks"));
  TESTUDO_ASSIGN_OR_RETURN(const std::int64_t kept, scalar("SELECT SUM(result_bytes) FROM tasks WHERE state >= 2"));
  first_id_ = std::max<std::uint64_t>({1, reserved, from_sql(max_id) + 1});
  stored_result_bytes_ = from_sql(kept);
  // Ids the previous run may have handed out without committing their records (it stopped
  // with writes pending, e.g. on a full disk): kept as lost, never "unknown".
  const std::uint64_t unrecorded_from = std::max(recorded, from_sql(max_id) + 1);
  const bool unrecorded = reserved > unrecorded_from;

  // The previous run's unfinished tasks are lost (F2), and a new id block is reserved.
  const std::uint64_t new_reserved = first_id_ + kIdBlock;
  std::size_t lost = 0;
  TESTUDO_RETURN_IF_ERROR(transaction([&]() -> Status {
    if (unrecorded) {
      sqlite3_stmt* s = nullptr;
      int rc2 = sqlite3_prepare_v2(db_.get(),
                                   "INSERT OR REPLACE INTO lost_ids(first_id, end_id, at_us) VALUES(?1, ?2, ?3)", -1,
                                   &s, nullptr);
      StmtPtr keep(s);
      if (rc2 != SQLITE_OK) return error(rc2, "keep lost ids");
      sqlite3_bind_int64(keep.get(), 1, to_sql(unrecorded_from));
      sqlite3_bind_int64(keep.get(), 2, to_sql(reserved));
      sqlite3_bind_int64(keep.get(), 3, now_us);
      rc2 = sqlite3_step(keep.get());
      if (rc2 != SQLITE_DONE) return error(rc2, "keep lost ids");
    }
    TESTUDO_RETURN_IF_ERROR(set_meta("ids_recorded_until", first_id_));
    sqlite3_stmt* s = nullptr;
    int rc2 = sqlite3_prepare_v2(db_.get(),
                                 "UPDATE tasks SET state = 5, completed_us = ?1, error = ?2 WHERE state IN (0, 1)",
                                 -1, &s, nullptr);
    StmtPtr mark(s);
    if (rc2 != SQLITE_OK) return error(rc2, "mark lost tasks");
    sqlite3_bind_int64(mark.get(), 1, now_us);
    sqlite3_bind_text(mark.get(), 2, kLostError.data(), static_cast<int>(kLostError.size()), SQLITE_STATIC);
    rc2 = sqlite3_step(mark.get());
    if (rc2 != SQLITE_DONE) return error(rc2, "mark lost tasks");
    lost = static_cast<std::size_t>(sqlite3_changes64(db_.get()));
    return set_meta("id_reserved_until", new_reserved);
  }));
  reserved_until_ = new_reserved;
  recorded_until_ = first_id_;
  lost_at_open_ = lost;
  TESTUDO_RETURN_IF_ERROR(sweep_results_dir());
  opened_ = true;
  if (lost > 0) {
    LOG_WARN(kLog) << path << ": " << lost << " tasks of the previous run had not finished; marked lost";
  }
  if (unrecorded) {
    LOG_WARN(kLog) << path << ": the previous run stopped with task records not written; task ids " << unrecorded_from
                   << " to " << reserved - 1 << " read as lost";
  }
  LOG_INFO(kLog) << "opened " << path << ": next task id " << first_id_ << ", " << stored_result_bytes_
                 << " result bytes kept";
  return ok_status();
}

Status SqliteTaskStore::set_meta(const char* key, std::uint64_t value) {
  sqlite3_stmt* m = stmt_.set_meta.get();
  ResetOnExit reset(m);
  sqlite3_bind_text(m, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_int64(m, 2, to_sql(value));
  const int rc = sqlite3_step(m);
  if (rc != SQLITE_DONE) return error(rc, "reserve task ids");
  return ok_status();
}

void SqliteTaskStore::release_unused_ids() {
  const std::uint64_t next = next_task_id();
  if (reserved_until_ <= next && recorded_until_ >= next) return;
  Status st = transaction([&]() -> Status {
    TESTUDO_RETURN_IF_ERROR(set_meta("ids_recorded_until", next));
    return set_meta("id_reserved_until", next);
  });
  // Not fatal: the next open() then reads the unused ids as lost, which nobody holds.
  if (!st.ok()) LOG_WARN(kLog) << "cannot give back unused task ids: " << st.to_string();
}

Status SqliteTaskStore::room_for_tasks(std::uint64_t first_id, std::size_t count) const {
  const std::string why = failing_ ? " (" + failure_ + ")" : std::string();
  if (first_id + count > reserved_until_) {
    return resource_exhausted("task store: cannot reserve task ids" + why + "; new tasks are refused until it can");
  }
  if (failing_ && pending_.size() + count > options_.max_pending_writes / 2) {
    return resource_exhausted("task store: " + std::to_string(pending_.size()) + " task records wait to be written" +
                              why + "; new tasks are refused until they are");
  }
  if (failing_ && pending_result_bytes_ > options_.max_pending_result_bytes / 2) {
    return resource_exhausted("task store: " + std::to_string(pending_result_bytes_) +
                              " result bytes wait to be written" + why + "; new tasks are refused until they are");
  }
  return ok_status();
}

void SqliteTaskStore::queue(PendingWrite write) {
  pending_by_id_[write_task_id(write)].push_back(pending_.size());
  pending_.push_back(std::move(write));
}

void SqliteTaskStore::reindex_pending() {
  pending_by_id_.clear();
  for (std::size_t i = 0; i < pending_.size(); ++i) pending_by_id_[write_task_id(pending_[i])].push_back(i);
}

Status SqliteTaskStore::exec(const char* sql, std::string_view what) {
  char* msg = nullptr;
  const int rc = sqlite3_exec(db_.get(), sql, nullptr, nullptr, &msg);
  sqlite3_free(msg);  // sqlite3_errmsg() still has it
  if (rc != SQLITE_OK) {
    Status st = error(rc, what);
    rollback();
    return st;
  }
  return ok_status();
}

Status SqliteTaskStore::prepare(StmtPtr& stmt, const char* sql) {
  sqlite3_stmt* s = nullptr;
  const int rc = sqlite3_prepare_v3(db_.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr);
  stmt.reset(s);
  if (rc != SQLITE_OK) return error(rc, "prepare statement");
  return ok_status();
}

void SqliteTaskStore::rollback() {
  // SQLite may already have rolled back by itself (e.g. after SQLITE_FULL in a commit).
  if (db_ == nullptr || sqlite3_get_autocommit(db_.get())) return;
  if (stmt_.rollback != nullptr) {
    ResetOnExit reset(stmt_.rollback.get());
    sqlite3_step(stmt_.rollback.get());
  } else {
    sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
}

template <typename Body>
Status SqliteTaskStore::transaction(Body&& body) {
  {
    ResetOnExit reset(stmt_.begin.get());
    const int rc = sqlite3_step(stmt_.begin.get());
    if (rc != SQLITE_DONE) return error(rc, "begin transaction");
  }
  Status st = body();
  if (!st.ok()) {
    rollback();
    return st;
  }
  ResetOnExit reset(stmt_.commit.get());
  const int rc = sqlite3_step(stmt_.commit.get());
  if (rc != SQLITE_DONE) {
    st = error(rc, "commit");
    rollback();
    return st;
  }
  return ok_status();
}

bool SqliteTaskStore::admit(std::uint64_t result_bytes) {
  // Only new tasks count against max_pending_writes: a started or finished write of a task
  // already recorded is always kept (dropping it would leave the task running forever in
  // memory); room_for_tasks() keeps their number bounded.
  const auto full = [&] {
    return (result_bytes == 0 && pending_.size() >= options_.max_pending_writes) ||
           (pending_result_bytes_ > 0 && pending_result_bytes_ + result_bytes > options_.max_pending_result_bytes);
  };
  if (!full()) return true;
  // Results recorded faster than the writer writes them: wait for it rather than drop any
  // (a failing disk still ends in drops below).
  if (writer_ && pending_result_bytes_ > 0 && sync().ok() && !full()) return true;
  ++dropped_;
  if (!overflow_logged_) {
    LOG_ERROR(kLog) << options_.path << ": " << pending_.size() << " writes wait for a flush that keeps failing; "
                    << "new task records and results are dropped and counted (the hub asks room_for_tasks() first)";
    overflow_logged_ = true;
  }
  return false;
}

Status SqliteTaskStore::retry_failed_files() {
  Status first;
  for (const PendingWrite& w : pending_) {
    const auto* f = std::get_if<Finished>(&w);
    if (f == nullptr || !f->file || f->file->state.load(std::memory_order_acquire) != FileJob::kFailed) continue;
    if (first.ok()) first = f->file->error;
    writer_->submit(f->file);
  }
  return first;
}

StatusOr<std::shared_ptr<ResultSpool>> SqliteTaskStore::spool_result(std::uint64_t id,
                                                                      std::vector<std::uint64_t> sizes) {
  if (failing_) return unavailable("the task store cannot write now: " + failure_);
  std::uint64_t bytes = 0;
  for (std::uint64_t size : sizes) bytes += size;
  if (framed_size(sizes.size(), bytes) <= options_.inline_limit) {
    return failed_precondition("a result of " + std::to_string(bytes) + " bytes is kept whole, not spooled");
  }
  auto job = std::make_shared<FileJob>();
  job->id = id;
  job->spooled = true;
  job->tmp_path = results_dir_ + "/" + std::to_string(id) + "-" + std::to_string(++file_serial_) + ".res.tmp";
  ::unlink(job->tmp_path.c_str());
  const int fd = ::open(job->tmp_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return errno_status(errno, job->tmp_path, "cannot create result file");
  const std::uint64_t data_offset = framed_size(sizes.size(), 0);
  auto file = std::make_shared<ResultFile>(fd, data_offset, std::move(sizes));
  job->readable = file;
  if (!spool_writer_) spool_writer_ = std::make_shared<ResultWriter>(0);
  auto spool = std::make_shared<FileSpool>(std::move(job), std::move(file), spool_writer_);
  spool->write_header();
  return std::shared_ptr<ResultSpool>(std::move(spool));
}

void SqliteTaskStore::record_spooled(std::uint64_t id, TaskState state, std::int64_t at_us,
                                     std::shared_ptr<ResultSpool> spool, std::string error) {
  auto* mine = dynamic_cast<FileSpool*>(spool.get());
  std::shared_ptr<FileJob> job = mine != nullptr ? mine->take_for_record() : nullptr;
  if (!job) {
    LOG_ERROR(kLog) << "task " << id << ": a spooled result that was not written whole; recorded as failed";
    record_finished(id, TaskState::kFailed, at_us, {}, "the result was not stored whole");
    return;
  }
  if (!is_finished(state)) state = TaskState::kFailed;  // as record_finished would refuse it
  const std::uint64_t count = job->readable->sizes().size();
  // Not counted in pending_result_bytes_: the bytes are on disk, not in memory.
  queue(Finished{id, state, at_us, {}, job->readable->total_bytes(), count, std::move(error), std::move(job)});
}

StatusOr<std::shared_ptr<const ResultFile>> SqliteTaskStore::open_result_file(std::uint64_t id,
                                                                              std::uint64_t segments,
                                                                              std::uint64_t bytes) {
  const std::string path = result_file(id);
  Fd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return data_loss("task store: result file " + path + " is missing");
    return errno_status(errno, path, "cannot open result file");
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return errno_status(errno, path, "cannot stat result file");
  if (!S_ISREG(st.st_mode) || segments > (1u << 24) ||
      static_cast<std::uint64_t>(st.st_size) != framed_size(segments, bytes)) {
    return data_loss("task store: result file " + path + " has the wrong size");
  }
  std::vector<std::byte> header(framed_size(segments, 0));
  std::uint64_t done = 0;
  while (done < header.size()) {
    const ssize_t n = ::pread(fd.get(), header.data() + done, header.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_status(errno, path, "cannot read result file");
    if (n == 0) return data_loss("task store: result file " + path + " is short");
    done += static_cast<std::uint64_t>(n);
  }
  auto sizes = parse_frame_header(header, segments, bytes);
  if (!sizes.ok()) return sizes.status().with_context("task store: task " + std::to_string(id));
  return std::shared_ptr<const ResultFile>(
      std::make_shared<ResultFile>(fd.release(), header.size(), std::move(sizes).value()));
}

Status SqliteTaskStore::flush() {
  Status st = flush_pending();
  failing_ = !st.ok();
  failure_ = st.ok() ? std::string() : st.message();
  return st;
}

// The caller reports a failure (StoredResults: once a minute, with counts), not every try:
// a full disk fails every flush, fifty times a second.
Status SqliteTaskStore::flush_pending() {
  if (pending_.empty()) return ok_status();
  // A result file that could not be written fails the whole flush, as a failed commit does:
  // nothing is committed and every write is kept; the file is tried again meanwhile.
  if (Status failed = retry_failed_files(); !failed.ok()) return failed;
  // Backpressure: when the writer falls behind by half the pending-bytes bound, wait for it
  // (as the old synchronous writes did) rather than let new results be dropped.
  if (writer_) {
    std::uint64_t unwritten = 0;
    for (const PendingWrite& w : pending_) {
      const auto* f = std::get_if<Finished>(&w);
      if (f != nullptr && f->file && f->file->state.load(std::memory_order_acquire) == FileJob::kQueued) {
        unwritten += f->result_bytes;
      }
    }
    if (unwritten > options_.max_pending_result_bytes / 2) {
      writer_->wait_idle();
      if (Status failed = retry_failed_files(); !failed.ok()) return failed;
    }
  }
  // Which writes go in now: all but finishes whose file is still being written, and any
  // later write of the same task (so a second finish cannot overtake the first).
  std::vector<char> ready(pending_.size(), 1);
  std::unordered_set<std::uint64_t> waiting;
  std::size_t n_ready = 0;
  std::uint64_t recorded = recorded_until_;  // every submission before it committed
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    const auto* f = std::get_if<Finished>(&pending_[i]);
    const bool unwritten = f != nullptr && f->file && f->file->state.load(std::memory_order_acquire) != FileJob::kWritten;
    if (unwritten || (!waiting.empty() && waiting.contains(write_task_id(pending_[i])))) {
      ready[i] = 0;
      waiting.insert(write_task_id(pending_[i]));
    } else {
      ++n_ready;
      if (const auto* s = std::get_if<Submitted>(&pending_[i])) recorded = std::max(recorded, s->record.task_id + 1);
    }
  }
  if (n_ready == 0) return ok_status();
  std::int64_t bytes_delta = 0;
  std::vector<const Finished*> files;  // renamed into place in this flush
  ignored_files_.clear();
  std::uint64_t bad = 0;
  std::uint64_t reserve = reserved_until_;
  if (max_recorded_id_ + kIdBlock / 2 >= reserved_until_) reserve = max_recorded_id_ + 1 + kIdBlock;
  Status st = transaction([&]() -> Status {
    for (std::size_t i = 0; i < pending_.size(); ++i) {
      if (ready[i]) TESTUDO_RETURN_IF_ERROR(apply(pending_[i], bytes_delta, files, bad));
    }
    // Submissions commit in id order (a submission is never held back), so every id below
    // `recorded` that was handed out has its row now.
    if (recorded != recorded_until_) TESTUDO_RETURN_IF_ERROR(set_meta("ids_recorded_until", recorded));
    if (reserve != reserved_until_) TESTUDO_RETURN_IF_ERROR(set_meta("id_reserved_until", reserve));
    return ok_status();
  });
  if (!st.ok()) {
    // No committed row refers to the renamed files: back to their temporary names for the
    // retry (or written again if even that fails).
    for (const Finished* f : files) {
      const std::string final_path = result_file(f->id);
      if (::rename(final_path.c_str(), f->file->tmp_path.c_str()) != 0) {
        if (f->file->spooled) {
          // Its bytes are nowhere else: it stays under the final name, which the retry's
          // rename then keeps.
          f->file->tmp_path = final_path;
          continue;
        }
        ::unlink(final_path.c_str());
        writer_->submit(f->file);
      }
    }
    ignored_files_.clear();
    return st;
  }
  for (const std::string& path : ignored_files_) ::unlink(path.c_str());
  ignored_files_.clear();
  if (bad > 0) {
    dropped_ += bad;
    LOG_ERROR(kLog) << options_.path << ": " << bad << " writes could not be stored (duplicate task id?); dropped";
  }
  stored_result_bytes_ = static_cast<std::uint64_t>(static_cast<std::int64_t>(stored_result_bytes_) + bytes_delta);
  reserved_until_ = reserve;
  recorded_until_ = recorded;
  if (n_ready == pending_.size()) {
    pending_.clear();
    pending_by_id_.clear();
    if (pending_.capacity() > 65536) pending_.shrink_to_fit();
    pending_result_bytes_ = 0;
  } else {
    std::vector<PendingWrite> kept;
    kept.reserve(pending_.size() - n_ready);
    pending_result_bytes_ = 0;
    for (std::size_t i = 0; i < pending_.size(); ++i) {
      if (ready[i]) continue;
      if (const auto* f = std::get_if<Finished>(&pending_[i]); f != nullptr && !(f->file && f->file->spooled)) {
        pending_result_bytes_ += f->result_bytes;
      }
      kept.push_back(std::move(pending_[i]));
    }
    pending_ = std::move(kept);
    reindex_pending();
  }
  overflow_logged_ = false;
  return ok_status();
}

Status SqliteTaskStore::sync() {
  // Spooled writes queued so far end first (a few MiB at most: their senders' windows), so
  // nothing of theirs runs after a shutdown's sync.
  if (spool_writer_) spool_writer_->wait_idle();
  if (writer_) {
    // A write begun before now ends first: it may fail on a disk that was full when it began
    // (a failed flush hands failed files back to the writer at once). Then every failed one
    // is tried once more, now, and waited for.
    writer_->wait_idle();
    (void)retry_failed_files();
    writer_->wait_idle();
  }
  return flush();
}

Status SqliteTaskStore::apply(const PendingWrite& write, std::int64_t& bytes_delta,
                              std::vector<const Finished*>& files, std::uint64_t& bad) {
  if (const auto* f = std::get_if<Finished>(&write)) return apply_finished(*f, bytes_delta, files, bad);
  int rc;
  if (const auto* s = std::get_if<Submitted>(&write)) {
    const TaskRecord& r = s->record;
    std::string targets;
    targets.reserve(4 * r.targets.size());
    for (std::uint32_t t : r.targets) put_u32(targets, t);
    sqlite3_stmt* st = stmt_.insert.get();
    ResetOnExit reset(st);
    sqlite3_bind_int64(st, 1, to_sql(r.task_id));
    sqlite3_bind_text(st, 2, r.owner.data(), static_cast<int>(r.owner.size()), SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, to_sql(r.request_id));
    sqlite3_bind_text(st, 4, r.kind.data(), static_cast<int>(r.kind.size()), SQLITE_STATIC);
    sqlite3_bind_blob(st, 5, targets.data(), static_cast<int>(targets.size()), SQLITE_STATIC);
    if (r.engine) {
      sqlite3_bind_int64(st, 6, *r.engine);
    } else {
      sqlite3_bind_null(st, 6);
    }
    sqlite3_bind_int(st, 7, static_cast<int>(r.state));
    sqlite3_bind_int64(st, 8, r.submitted_us);
    sqlite3_bind_int64(st, 9, r.started_us);
    sqlite3_bind_int64(st, 10, r.completed_us);
    sqlite3_bind_int64(st, 11, 0);  // results come with record_finished
    sqlite3_bind_text(st, 12, r.error.data(), static_cast<int>(r.error.size()), SQLITE_STATIC);
    rc = sqlite3_step(st);
  } else {
    const auto& s2 = std::get<Started>(write);
    sqlite3_stmt* st = stmt_.start.get();
    ResetOnExit reset(st);
    sqlite3_bind_int64(st, 1, to_sql(s2.id));
    sqlite3_bind_int64(st, 2, s2.engine);
    sqlite3_bind_int64(st, 3, s2.at_us);
    rc = sqlite3_step(st);
  }
  if (rc == SQLITE_DONE) return ok_status();
  if (is_bad_write(rc)) {
    ++bad;
    return ok_status();
  }
  return error(rc, "write task");
}

Status SqliteTaskStore::apply_finished(const Finished& f, std::int64_t& bytes_delta,
                                       std::vector<const Finished*>& files, std::uint64_t& bad) {
  const bool to_file = f.file != nullptr;
  if (to_file) {
    // Only an unfinished task gets a file: never overwrite the result of a finished one.
    // (An ignored file is deleted only after the commit: a failed commit retries it.)
    sqlite3_stmt* q = stmt_.state_of.get();
    ResetOnExit reset(q);
    sqlite3_bind_int64(q, 1, to_sql(f.id));
    const int rc = sqlite3_step(q);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return error(rc, "read task state");
    if (rc == SQLITE_DONE || sqlite3_column_int(q, 0) > 1) {  // unknown or finished: ignored
      ignored_files_.push_back(f.file->tmp_path);
      return ok_status();
    }
    const std::string final_path = result_file(f.id);
    if (::rename(f.file->tmp_path.c_str(), final_path.c_str()) != 0) {
      return errno_status(errno, final_path, "cannot rename result file");
    }
    files.push_back(&f);
  }
  std::string framed;
  if (!to_file && !f.result.empty()) {
    framed = frame_header(f.result);
    framed.reserve(framed.size() + f.result_bytes);
    for (const SharedBytes& s : f.result) framed.append(s.view());
  }
  sqlite3_stmt* st = stmt_.finish.get();
  ResetOnExit reset(st);
  sqlite3_bind_int64(st, 1, to_sql(f.id));
  sqlite3_bind_int(st, 2, static_cast<int>(f.state));
  sqlite3_bind_int64(st, 3, f.at_us);
  sqlite3_bind_int64(st, 4, to_sql(f.result_bytes));
  sqlite3_bind_int64(st, 5, static_cast<std::int64_t>(f.segment_count));
  if (to_file || f.result.empty()) {
    sqlite3_bind_null(st, 6);
  } else {
    sqlite3_bind_blob64(st, 6, framed.data(), framed.size(), SQLITE_STATIC);
  }
  sqlite3_bind_int(st, 7, to_file ? 1 : 0);
  sqlite3_bind_text(st, 8, f.error.data(), static_cast<int>(f.error.size()), SQLITE_STATIC);
  const int rc = sqlite3_step(st);
  if (rc != SQLITE_DONE) {
    if (is_bad_write(rc)) {
      ++bad;
      return ok_status();
    }
    return error(rc, "write task result");
  }
  if (sqlite3_changes64(db_.get()) > 0) bytes_delta += static_cast<std::int64_t>(f.result_bytes);
  return ok_status();
}

void SqliteTaskStore::remove_files(const std::vector<std::uint64_t>& ids) {
  for (std::uint64_t id : ids) {
    const std::string path = result_file(id);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      // Left behind; the next open() removes files no record refers to.
      LOG_WARN(kLog) << "cannot delete " << path << ": " << std::strerror(errno);
    }
  }
}

Status SqliteTaskStore::sweep_results_dir() {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(results_dir_.c_str()), &::closedir);
  if (dir == nullptr) return errno_status(errno, results_dir_, "cannot list");
  std::vector<std::string> doomed;
  while (const dirent* e = ::readdir(dir.get())) {
    const std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    if (name.ends_with(".res.tmp")) {
      doomed.emplace_back(name);
      continue;
    }
    if (!name.ends_with(".res")) continue;
    const std::string_view digits = name.substr(0, name.size() - 4);
    if (digits.empty() || digits.size() > 20 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    const std::uint64_t id = std::stoull(std::string(digits));
    sqlite3_stmt* s = stmt_.get_result.get();
    ResetOnExit reset(s);
    sqlite3_bind_int64(s, 1, to_sql(id));
    const int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && sqlite3_column_int(s, 4) == 1) continue;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return error(rc, "check result files");
    doomed.emplace_back(name);
  }
  for (const std::string& name : doomed) {
    const std::string path = results_dir_ + "/" + name;
    if (::unlink(path.c_str()) != 0) {
      LOG_WARN(kLog) << "cannot delete " << path << ": " << std::strerror(errno);
    }
  }
  if (!doomed.empty()) {
    LOG_INFO(kLog) << "removed " << doomed.size() << " stale result files";
  }
  return ok_status();
}

void SqliteTaskStore::flush_before_read() {
  if (pending_.empty() || failing_) return;
  (void)flush();  // a failure is reported by the next flush's caller; the read uses memory
}

void SqliteTaskStore::flush_for_read() {
  if (pending_.empty()) return;
  // While flushes fail, a read does not try again (the 20 ms flush does): it reads what is
  // committed rather than wait for the disk.
  if (failing_) return;
  Status st = sync();
  if (!st.ok()) {
    LOG_WARN(kLog) << "reading committed records only: " << st.to_string();
  }
}

StatusOr<TaskRecord> SqliteTaskStore::read_record(sqlite3_stmt* s) {
  TaskRecord r;
  r.task_id = from_sql(sqlite3_column_int64(s, 0));
  const auto text = [&](int col) {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, col));
    return p == nullptr ? std::string() : std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s, col)));
  };
  r.owner = text(1);
  r.request_id = from_sql(sqlite3_column_int64(s, 2));
  r.kind = text(3);
  const auto* targets = static_cast<const std::byte*>(sqlite3_column_blob(s, 4));
  const int targets_size = sqlite3_column_bytes(s, 4);
  if (targets_size % 4 != 0) return data_loss("task store: task " + std::to_string(r.task_id) + ": bad targets");
  r.targets.reserve(static_cast<std::size_t>(targets_size / 4));
  for (int i = 0; i < targets_size; i += 4) r.targets.push_back(static_cast<std::uint32_t>(get_le(targets + i, 4)));
  if (sqlite3_column_type(s, 5) != SQLITE_NULL) r.engine = static_cast<std::uint32_t>(sqlite3_column_int64(s, 5));
  const int state = sqlite3_column_int(s, 6);
  if (state < 0 || state > static_cast<int>(TaskState::kLost)) {
    return data_loss("task store: task " + std::to_string(r.task_id) + ": bad state");
  }
  r.state = static_cast<TaskState>(state);
  r.submitted_us = sqlite3_column_int64(s, 7);
  r.started_us = sqlite3_column_int64(s, 8);
  r.completed_us = sqlite3_column_int64(s, 9);
  r.result_bytes = from_sql(sqlite3_column_int64(s, 10));
  r.error = text(11);
  return r;
}

StatusOr<std::optional<TaskRecord>> SqliteTaskStore::get(std::uint64_t id) {
  flush_before_read();
  TESTUDO_ASSIGN_OR_RETURN(auto committed, read_committed(id));
  return with_pending(id, std::move(committed), nullptr);
}

StatusOr<std::optional<TaskRecord>> SqliteTaskStore::with_pending(std::uint64_t id, std::optional<TaskRecord> r,
                                                                  const Finished** finish) {
  if (auto it = pending_by_id_.find(id); it != pending_by_id_.end()) {
    for (std::size_t i : it->second) {
      const PendingWrite& w = pending_[i];
      if (const auto* sub = std::get_if<Submitted>(&w)) {
        if (!r) r = sub->record;  // a second one is a duplicate: flush() drops it
      } else if (const auto* st = std::get_if<Started>(&w)) {
        if (r && !is_finished(r->state)) {
          r->state = TaskState::kRunning;
          r->engine = st->engine;
          r->started_us = st->at_us;
        }
      } else {
        const auto& f = std::get<Finished>(w);
        if (r && !is_finished(r->state)) {
          r->state = f.state;
          r->completed_us = f.at_us;
          r->result_bytes = f.result_bytes;
          r->error = f.error;
          if (finish != nullptr) *finish = &f;
        }
      }
    }
  }
  if (r) return r;
  sqlite3_stmt* s = stmt_.lost_range.get();
  ResetOnExit reset(s);
  sqlite3_bind_int64(s, 1, to_sql(id));
  const int rc = sqlite3_step(s);
  if (rc == SQLITE_DONE) return std::optional<TaskRecord>();
  if (rc != SQLITE_ROW) return error(rc, "read lost ids");
  TaskRecord lost;
  lost.task_id = id;
  lost.state = TaskState::kLost;
  lost.completed_us = sqlite3_column_int64(s, 0);
  lost.error = kUnrecordedError;
  return std::optional<TaskRecord>(std::move(lost));
}

StatusOr<std::optional<TaskRecord>> SqliteTaskStore::read_committed(std::uint64_t id) {
  sqlite3_stmt* s = stmt_.get.get();
  ResetOnExit reset(s);
  sqlite3_bind_int64(s, 1, to_sql(id));
  const int rc = sqlite3_step(s);
  if (rc == SQLITE_DONE) return std::optional<TaskRecord>();
  if (rc != SQLITE_ROW) return error(rc, "read task");
  TESTUDO_ASSIGN_OR_RETURN(TaskRecord r, read_record(s));
  return std::optional<TaskRecord>(std::move(r));
}

StatusOr<ResultBody> SqliteTaskStore::result_body(std::uint64_t id) {
  flush_before_read();
  if (pending_by_id_.contains(id)) {
    // Recorded but not committed: the result is still in memory (a big one too, kept for
    // its file's retries) or, spooled, in its written file; answer from there.
    TESTUDO_ASSIGN_OR_RETURN(auto committed, read_committed(id));
    const bool was_finished = committed && is_finished(committed->state);
    const Finished* finish = nullptr;
    TESTUDO_ASSIGN_OR_RETURN(auto r, with_pending(id, std::move(committed), &finish));
    if (finish != nullptr) {
      if (finish->file && finish->file->spooled) return ResultBody{{}, finish->file->readable};
      return ResultBody{finish->file ? finish->file->segments : finish->result, nullptr};
    }
    if (r && !was_finished) return failed_precondition("task " + std::to_string(id) + " has not finished");
  }
  sqlite3_stmt* s = stmt_.get_result.get();
  ResetOnExit reset(s);
  sqlite3_bind_int64(s, 1, to_sql(id));
  const int rc = sqlite3_step(s);
  if (rc == SQLITE_DONE) return not_found("task " + std::to_string(id) + " is not in the task store");
  if (rc != SQLITE_ROW) return error(rc, "read result");
  if (sqlite3_column_int(s, 0) < static_cast<int>(TaskState::kSucceeded)) {
    return failed_precondition("task " + std::to_string(id) + " has not finished");
  }
  const std::uint64_t bytes = from_sql(sqlite3_column_int64(s, 1));
  const std::uint64_t segments = from_sql(sqlite3_column_int64(s, 2));
  if (sqlite3_column_int(s, 4) == 1) {
    TESTUDO_ASSIGN_OR_RETURN(auto file, open_result_file(id, segments, bytes));
    return ResultBody{{}, std::move(file)};
  }
  if (sqlite3_column_type(s, 3) == SQLITE_NULL) {
    if (segments != 0) return data_loss("task store: task " + std::to_string(id) + ": result missing");
    return ResultBody{};
  }
  const auto* blob = static_cast<const std::byte*>(sqlite3_column_blob(s, 3));
  const auto blob_size = static_cast<std::uint64_t>(sqlite3_column_bytes(s, 3));
  if (blob_size != framed_size(segments, bytes)) {
    return data_loss("task store: task " + std::to_string(id) + ": result has the wrong size");
  }
  auto out = unframe(SharedBytes::copy_of(std::span<const std::byte>(blob, blob_size)), segments, bytes);
  if (!out.ok()) return out.status().with_context("task store: task " + std::to_string(id));
  return ResultBody{std::move(out).value(), nullptr};
}

StatusOr<std::vector<TaskRecord>> SqliteTaskStore::query(const Query& q) {
  flush_for_read();
  std::int64_t mask = 0;
  for (TaskState state : q.states) mask |= std::int64_t{1} << static_cast<int>(state);
  if (q.states.empty()) mask = 0x3f;
  sqlite3_stmt* s = q.owner ? stmt_.query_owner.get() : stmt_.query_all.get();
  ResetOnExit reset(s);
  if (q.owner) sqlite3_bind_text(s, 1, q.owner->data(), static_cast<int>(q.owner->size()), SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, mask);
  sqlite3_bind_int64(s, 3, q.submitted_after_us.value_or(std::numeric_limits<std::int64_t>::min()));
  sqlite3_bind_int64(s, 4, to_sql(q.after_task_id));
  sqlite3_bind_int64(s, 5, static_cast<std::int64_t>(std::min<std::size_t>(q.limit, INT64_MAX)));
  std::vector<TaskRecord> out;
  for (;;) {
    const int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return error(rc, "query tasks");
    TESTUDO_ASSIGN_OR_RETURN(TaskRecord r, read_record(s));
    out.push_back(std::move(r));
  }
  return out;
}

Status SqliteTaskStore::step_deletes(sqlite3_stmt* s, std::size_t& deleted, std::vector<std::uint64_t>& files,
                                     std::uint64_t& bytes) {
  for (;;) {
    const int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) return ok_status();
    if (rc != SQLITE_ROW) return error(rc, "delete tasks");
    ++deleted;
    if (sqlite3_column_int(s, 1) == 1) files.push_back(from_sql(sqlite3_column_int64(s, 0)));
    bytes += from_sql(sqlite3_column_int64(s, 2));
  }
}

StatusOr<std::size_t> SqliteTaskStore::purge(const std::optional<std::string>& owner,
                                             const std::vector<std::uint64_t>& ids) {
  TESTUDO_RETURN_IF_ERROR(sync());
  std::size_t deleted = 0;
  std::vector<std::uint64_t> files;
  std::uint64_t bytes = 0;
  Status st = transaction([&]() -> Status {
    if (ids.empty()) {
      sqlite3_stmt* s = owner ? stmt_.purge_owner.get() : stmt_.purge_all.get();
      ResetOnExit reset(s);
      if (owner) sqlite3_bind_text(s, 1, owner->data(), static_cast<int>(owner->size()), SQLITE_STATIC);
      return step_deletes(s, deleted, files, bytes);
    }
    for (std::uint64_t id : ids) {
      sqlite3_stmt* s = stmt_.purge_one.get();
      ResetOnExit reset(s);
      sqlite3_bind_int64(s, 1, to_sql(id));
      if (owner) sqlite3_bind_text(s, 2, owner->data(), static_cast<int>(owner->size()), SQLITE_STATIC);
      TESTUDO_RETURN_IF_ERROR(step_deletes(s, deleted, files, bytes));
    }
    return ok_status();
  });
  if (!st.ok()) return st;
  stored_result_bytes_ -= std::min(bytes, stored_result_bytes_);
  remove_files(files);
  return deleted;
}

StatusOr<std::size_t> SqliteTaskStore::enforce_limits(std::int64_t now_us) {
  TESTUDO_RETURN_IF_ERROR(flush());
  std::size_t deleted = 0;
  // Age: chunks of the oldest finished records.
  const std::int64_t max_age_us =
      std::min<std::int64_t>(options_.max_age.count(), std::numeric_limits<std::int64_t>::max() / 2'000'000) *
      1'000'000;
  const std::int64_t cutoff = now_us - max_age_us;
  for (;;) {
    std::size_t chunk = 0;
    std::vector<std::uint64_t> files;
    std::uint64_t bytes = 0;
    TESTUDO_RETURN_IF_ERROR(transaction([&]() -> Status {
      sqlite3_stmt* s = stmt_.purge_aged.get();
      ResetOnExit reset(s);
      sqlite3_bind_int64(s, 1, cutoff);
      sqlite3_bind_int(s, 2, kDeleteChunk);
      return step_deletes(s, chunk, files, bytes);
    }));
    stored_result_bytes_ -= std::min(bytes, stored_result_bytes_);
    remove_files(files);
    deleted += chunk;
    if (chunk < static_cast<std::size_t>(kDeleteChunk)) break;
  }
  // Lost id ranges age like the records they stand for.
  TESTUDO_RETURN_IF_ERROR(transaction([&]() -> Status {
    sqlite3_stmt* s = stmt_.purge_lost_aged.get();
    ResetOnExit reset(s);
    sqlite3_bind_int64(s, 1, cutoff);
    const int rc = sqlite3_step(s);
    return rc == SQLITE_DONE ? ok_status() : error(rc, "delete lost ids");
  }));
  // Size: the oldest finished records with results until the rest fits.
  while (stored_result_bytes_ > options_.max_result_bytes) {
    std::vector<std::uint64_t> victims;
    {
      std::uint64_t excess = stored_result_bytes_ - options_.max_result_bytes;
      sqlite3_stmt* s = stmt_.oldest_results.get();
      ResetOnExit reset(s);
      sqlite3_bind_int(s, 1, kDeleteChunk);
      for (;;) {
        const int rc = sqlite3_step(s);
        if (rc == SQLITE_DONE) break;
        if (rc != SQLITE_ROW) return error(rc, "find oldest results");
        victims.push_back(from_sql(sqlite3_column_int64(s, 0)));
        const std::uint64_t b = from_sql(sqlite3_column_int64(s, 1));
        if (b >= excess) break;
        excess -= b;
      }
    }
    if (victims.empty()) {
      LOG_WARN(kLog) << options_.path << ": result byte count " << stored_result_bytes_
                     << " has no stored results behind it; reset";
      stored_result_bytes_ = 0;
      break;
    }
    std::size_t chunk = 0;
    std::vector<std::uint64_t> files;
    std::uint64_t bytes = 0;
    TESTUDO_RETURN_IF_ERROR(transaction([&]() -> Status {
      for (std::uint64_t id : victims) {
        sqlite3_stmt* s = stmt_.purge_one.get();
        ResetOnExit reset(s);
        sqlite3_bind_int64(s, 1, to_sql(id));
        TESTUDO_RETURN_IF_ERROR(step_deletes(s, chunk, files, bytes));
      }
      return ok_status();
    }));
    stored_result_bytes_ -= std::min(bytes, stored_result_bytes_);
    remove_files(files);
    deleted += chunk;
  }
  if (deleted > 0) {
    LOG_INFO(kLog) << options_.path << ": purged " << deleted << " old task records";
  }
  return deleted;
}

}  // namespace

StatusOr<std::unique_ptr<TaskStore>> TaskStore::open(const TaskStoreOptions& options, std::int64_t now_us) {
  return SqliteTaskStore::open(options, now_us);
}

}  // namespace testudo::controller
