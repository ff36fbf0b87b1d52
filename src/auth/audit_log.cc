#include "auth/audit_log.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>

#include <nlohmann/json.hpp>

namespace testudo::auth {
namespace {

using ordered_json = nlohmann::ordered_json;

std::string mode_string(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// Creates `dir` and its missing parents with mode 0700; existing directories are left as
// they are (an administrator may have chosen /var/log/testudo 0750).
Status make_private_dirs(const std::filesystem::path& dir) {
  if (dir.empty()) return ok_status();
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return failed_precondition(dir.string() + " exists and is not a directory");
    return ok_status();
  }
  if (errno != ENOENT) return unavailable("cannot inspect directory " + dir.string() + ": " + std::strerror(errno));
  if (dir.has_parent_path() && dir.parent_path() != dir) TESTUDO_RETURN_IF_ERROR(make_private_dirs(dir.parent_path()));
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return unavailable("cannot create directory " + dir.string() + ": " + std::strerror(errno));
  }
  return ok_status();
}

// At most `max` bytes of `s`, cut on a UTF-8 character boundary and marked with "…".
std::string bounded(const std::string& s, std::size_t max) {
  if (s.size() <= max) return s;
  static constexpr std::string_view kEllipsis = "\u2026";
  std::size_t cut = max - kEllipsis.size();
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  std::string out = s.substr(0, cut);
  out += kEllipsis;
  return out;
}

// "2026-11-23T14:06:54.123456Z". std::chrono's calendar, not gmtime_r: no time zone files,
// no system calls (clock_gettime is served by the vDSO).
std::string utc_now() {
  using namespace std::chrono;
  const auto now = floor<microseconds>(system_clock::now());
  const auto day = floor<days>(now);
  const year_month_day ymd{day};
  const hh_mm_ss<microseconds> t{now - day};
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%06lldZ", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                static_cast<int>(t.hours().count()), static_cast<int>(t.minutes().count()),
                static_cast<int>(t.seconds().count()), static_cast<long long>(t.subseconds().count()));
  return buf;
}

std::string to_line(const ordered_json& j) {
  // Invalid UTF-8 from a peer becomes U+FFFD instead of an exception.
  std::string line = j.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
  line += '\n';
  return line;
}

}  // namespace

StatusOr<std::unique_ptr<AuditLog>> AuditLog::open(const std::string& path, std::size_t max_buffered_bytes) {
  const std::string what = "audit log " + path;
  TESTUDO_RETURN_IF_ERROR(make_private_dirs(std::filesystem::path(path).parent_path()).with_context(what));
  const int fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    const int err = errno;
    if (err == ELOOP) return permission_denied(what + " is a symbolic link; refusing to follow it");
    return unavailable(what + ": cannot open: " + std::strerror(err));
  }
  auto fail = [fd](Status st) {
    ::close(fd);
    return st;
  };
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(unavailable(what + ": fstat: " + std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) return fail(permission_denied(what + " is not a regular file"));
  if (st.st_uid != ::geteuid()) {
    return fail(permission_denied(what + " is owned by uid " + std::to_string(st.st_uid) + ", not by this user"));
  }
  if ((st.st_mode & 077) != 0) {
    return fail(permission_denied(what + " has mode " + mode_string(st.st_mode) +
                                  ", readable or writable by group/others; run: chmod 600 " + path));
  }
  // A previous writer that died mid-line left a fragment: end it, so our first line parses.
  if (st.st_size > 0) {
    char last = '\n';
    if (::pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n') {
      if (::write(fd, "\n", 1) != 1) return fail(unavailable(what + ": cannot write: " + std::strerror(errno)));
    }
  }
  auto log = std::unique_ptr<AuditLog>(new AuditLog(path, fd, max_buffered_bytes));
  log->file_bytes_ = static_cast<std::uint64_t>(st.st_size);
  return log;
}

void AuditLog::set_rotation(std::uint64_t max_file_bytes, int keep_files) {
  rotate_bytes_ = max_file_bytes;
  keep_files_ = std::max(1, keep_files);
}

Status AuditLog::rotate() {
  const auto numbered = [this](int i) { return path_ + "." + std::to_string(i); };
  for (int i = keep_files_ - 1; i >= 1; --i) {
    if (::rename(numbered(i).c_str(), numbered(i + 1).c_str()) != 0 && errno != ENOENT) {
      return unavailable("audit log " + path_ + ": cannot rotate " + numbered(i) + ": " + std::strerror(errno));
    }
  }
  // The new file exists before the old one moves away, so a reader never finds no log.
  const std::string fresh = path_ + ".new";
  const int fd = ::open(fresh.c_str(), O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return unavailable("audit log " + fresh + ": cannot create: " + std::strerror(errno));
  if (::rename(path_.c_str(), numbered(1).c_str()) != 0 || ::rename(fresh.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(fresh.c_str());
    return unavailable("audit log " + path_ + ": cannot rotate: " + std::strerror(err));
  }
  ::close(fd_);
  fd_ = fd;
  file_bytes_ = 0;
  return ok_status();
}

AuditLog::AuditLog(std::string path, int fd, std::size_t max_buffered_bytes)
    : path_(std::move(path)), fd_(fd), max_buffered_bytes_(max_buffered_bytes) {}

AuditLog::~AuditLog() {
  (void)flush();
  ::close(fd_);
}

void AuditLog::record(const AuditEvent& e) {
  ordered_json j;
  j["time"] = utc_now();
  auto put = [&j](const char* key, const std::string& value, std::size_t max = kAuditMaxFieldBytes) {
    if (!value.empty()) j[key] = bounded(value, max);
  };
  put("operation", e.operation);
  put("outcome", e.outcome);
  put("identity", e.identity);
  put("name", e.name);
  put("role", e.role);
  put("peer", e.peer);
  if (!e.targets.empty()) j["targets"] = e.targets;
  put("code_sha256", e.code_sha256);
  put("reason", e.reason, kAuditMaxReasonBytes);
  if (e.task_id != 0) j["task_id"] = e.task_id;
  buffer(Line{to_line(j), 0});
}

void AuditLog::buffer(Line line) {
  buffered_bytes_ += line.text.size();
  lines_.push_back(std::move(line));
  // Over the bound: drop the oldest lines, but never the one partly written (its rest must
  // follow what is already in the file) nor the one just added.
  while (buffered_bytes_ > max_buffered_bytes_ && lines_.size() > 1) {
    auto victim = lines_.begin();
    if (front_written_ > 0) ++victim;
    if (victim == std::prev(lines_.end())) break;
    buffered_bytes_ -= victim->text.size();
    dropped_ += victim->dropped != 0 ? victim->dropped : 1;
    lines_.erase(victim);
  }
}

Status AuditLog::flush() {
  // Say how many were lost, in their place: before the lines that survived them.
  if (dropped_ > 0 && front_written_ == 0) {
    ordered_json j;
    j["time"] = utc_now();
    j["operation"] = "audit.dropped";
    j["outcome"] = "error";
    j["count"] = dropped_;
    j["reason"] = "audit log buffer full while writing failed; the oldest events were lost";
    Line line{to_line(j), dropped_};
    buffered_bytes_ += line.text.size();
    lines_.push_front(std::move(line));
    dropped_ = 0;
  }
  while (!lines_.empty()) {
    std::vector<iovec> iov;
    iov.reserve(std::min<std::size_t>(lines_.size(), IOV_MAX));
    for (auto it = lines_.begin(); it != lines_.end() && iov.size() < IOV_MAX; ++it) {
      const std::size_t skip = it == lines_.begin() ? front_written_ : 0;
      iov.push_back({const_cast<char*>(it->text.data()) + skip, it->text.size() - skip});
    }
    const ssize_t n = ::writev(fd_, iov.data(), static_cast<int>(iov.size()));
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      const std::string kept = "; " + std::to_string(lines_.size()) + " lines kept for the next flush";
      if (err == ENOSPC || err == EDQUOT) {
        return resource_exhausted("audit log " + path_ + ": disk full (" + std::strerror(err) + ")" + kept);
      }
      return unavailable("audit log " + path_ + ": write failed: " + std::strerror(err) + kept);
    }
    if (n == 0) return unavailable("audit log " + path_ + ": write wrote nothing");
    auto left = static_cast<std::size_t>(n);
    buffered_bytes_ -= left;
    file_bytes_ += left;
    while (left > 0) {
      const std::size_t rest = lines_.front().text.size() - front_written_;
      if (left >= rest) {
        left -= rest;
        lines_.pop_front();
        front_written_ = 0;
      } else {
        front_written_ += left;
        left = 0;
      }
    }
  }
  // Here every buffered line is whole in the file: a safe point to start a new one.
  if (rotate_bytes_ > 0 && file_bytes_ >= rotate_bytes_) return rotate();
  return ok_status();
}

}  // namespace testudo::auth
