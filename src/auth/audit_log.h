// The audit log: an append-only file of JSON lines, one per admission, rejection
// and request the controller decides on, e.g.
//   {"time":"2026-11-23T14:06:54.123456Z","operation":"execute","outcome":"denied",
//    "identity":"sha256:ab12...","name":"alice","role":"client","peer":"10.0.0.7:51234",
//    "targets":[3],"reason":"no rule allows 'execute' for ... on engine 3","task_id":17}
// Empty fields and task_id 0 are left out. Strings from peers are bounded (reason 512 bytes,
// others 256, cut on a UTF-8 character boundary) and invalid UTF-8 is replaced by U+FFFD, so
// every line is valid JSON whatever a peer sends.
//
// record() only formats into memory (no system calls); flush() writes everything buffered
// with few writev() calls. The controller calls flush() every 20 ms and right after any
// denied or rejected event. A failed flush (disk full, I/O error) keeps the lines for the
// next flush; a line written only in part is completed first, so the file never holds a
// broken line of ours. While writing fails the buffer is bounded: beyond max_buffered_bytes
// the oldest lines are dropped and counted, and once writing works again a line
//   {"time":...,"operation":"audit.dropped","outcome":"error","count":n,"reason":...}
// says how many were lost. Lines are not fsync-ed: a machine crash may lose the last 20 ms.
//
// Thread-safety: none; use one AuditLog from one thread (the controller's event loop thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "testudo/status.h"

namespace testudo::auth {

struct AuditEvent {
  std::string operation;    // "login", "execute", "keys.accept", "policy.reload", ...
  std::string outcome;      // "allowed", "denied", "rejected", "accepted", "error"
  std::string identity;     // key fingerprint, or ""
  std::string name;         // certificate CN, or ""
  std::string role;         // "client", "engine" or ""
  std::string peer;         // "ip:port"
  std::vector<std::uint32_t> targets;
  std::string code_sha256;  // hex, or ""
  std::string reason;
  std::uint64_t task_id = 0;  // 0 = none
};

inline constexpr std::size_t kAuditMaxReasonBytes = 512;
inline constexpr std::size_t kAuditMaxFieldBytes = 256;  // every other string field
inline constexpr std::size_t kAuditMaxBufferedBytes = 16 << 20;

class AuditLog {
 public:
  // Opens `path` for appending (O_APPEND | O_CLOEXEC | O_NOFOLLOW), creating it 0600 and its
  // missing parent directories 0700. Never truncates. Refuses (kPermissionDenied, naming the
  // path) a symbolic link, something other than a regular file, a file owned by another user,
  // and an existing file readable or writable by group/others. `max_buffered_bytes` bounds
  // the memory held while writing fails (tests make it small).
  static StatusOr<std::unique_ptr<AuditLog>> open(const std::string& path,
                                                  std::size_t max_buffered_bytes = kAuditMaxBufferedBytes);

  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;
  ~AuditLog();  // flushes; a failure there is lost (nowhere left to report it)

  // Buffers one line stamped with the current UTC time. No system calls.
  void record(const AuditEvent& event);

  // Writes all buffered lines. On failure (kResourceExhausted for a full disk, kUnavailable
  // otherwise) the unwritten lines stay buffered for the next call.
  Status flush();

  // Size-based rotation (as logrotate or auditd's max_log_file): once the file reaches
  // `max_file_bytes` after a flush, it becomes <path>.1 (.1 becomes .2 ... up to
  // .<keep_files>; the oldest goes) and a fresh file is started. 0 (the default): never.
  // Rotation happens only between whole lines, so no line is split across files.
  void set_rotation(std::uint64_t max_file_bytes, int keep_files);

  // Lines recorded but not yet completely written.
  std::size_t buffered() const { return lines_.size(); }
  // Lines dropped since the last audit.dropped line was buffered.
  std::uint64_t dropped() const { return dropped_; }
  const std::string& path() const { return path_; }

 private:
  struct Line {
    std::string text;          // ends with '\n'
    std::uint64_t dropped = 0;  // an audit.dropped line: how many it stands for
  };

  AuditLog(std::string path, int fd, std::size_t max_buffered_bytes);
  void buffer(Line line);

  std::string path_;
  int fd_;
  std::size_t max_buffered_bytes_;
  std::deque<Line> lines_;
  std::size_t front_written_ = 0;  // bytes of lines_.front() already in the file
  std::uint64_t file_bytes_ = 0;   // size of the current file
  std::uint64_t rotate_bytes_ = 0;
  int keep_files_ = 4;
  Status rotate();
  std::size_t buffered_bytes_ = 0;  // unwritten bytes in lines_
  std::uint64_t dropped_ = 0;
};

}  // namespace testudo::auth
