#include "base/log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace testudo::log {
namespace {

std::atomic<int> g_min_level{static_cast<int>(Level::kInfo)};
std::mutex g_mutex;
// Guarded by g_mutex.
int g_fd = STDERR_FILENO;
std::string g_path;             // the file behind g_fd, when known (set_file, or stderr's)
std::uint64_t g_max_bytes = 0;  // rotate beyond this; 0: never
int g_keep = 0;
std::uint64_t g_bytes = 0;      // g_path's size as this process last knew it
unsigned g_lines = 0;           // since g_bytes was last read from the file

std::uint64_t size_of(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
}

bool same_file(int a, int b) {
  struct stat sa {}, sb {};
  return ::fstat(a, &sa) == 0 && ::fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// Shifts <path>.N up by one, drops the oldest and starts a new <path> (0600). Called with
// g_mutex held. Another process sharing the file (an engine's supervisor) keeps writing to
// the old one, now <path>.1: nothing is lost, only split.
void rotate_locked() {
  std::string from;
  for (int i = g_keep; i >= 1; --i) {
    const std::string to = g_path + "." + std::to_string(i);
    from = i == 1 ? g_path : g_path + "." + std::to_string(i - 1);
    if (i == g_keep) ::unlink(to.c_str());
    ::rename(from.c_str(), to.c_str());
  }
  if (g_keep == 0) ::unlink(g_path.c_str());
  const int fd = ::open(g_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return;  // keep writing where we were: better a large log than a lost one
  if (g_fd == STDERR_FILENO) {
    if (same_file(STDOUT_FILENO, STDERR_FILENO)) ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    ::close(fd);
  } else {
    ::close(g_fd);
    g_fd = fd;
  }
  g_bytes = 0;
}

const char* level_name(Level level) {
  switch (level) {
    case Level::kDebug: return "DEBUG";
    case Level::kInfo: return "INFO ";
    case Level::kWarning: return "WARN ";
    case Level::kError: return "ERROR";
  }
  return "?????";
}

}  // namespace

bool set_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return false;
  std::lock_guard lock(g_mutex);
  if (g_fd != STDERR_FILENO) ::close(g_fd);
  g_fd = fd;
  g_path = path;
  g_bytes = size_of(fd);
  return true;
}

std::string set_rotation(std::uint64_t max_bytes, int keep) {
  std::lock_guard lock(g_mutex);
  g_max_bytes = 0;
  if (max_bytes == 0) return "";
  if (g_fd == STDERR_FILENO) {
    // stderr's file, if it is a regular one: its path from /proc (a launcher opened it).
    struct stat st {};
    if (::fstat(STDERR_FILENO, &st) != 0 || !S_ISREG(st.st_mode)) return "";
    char target[4096];
    const ssize_t n = ::readlink("/proc/self/fd/2", target, sizeof target - 1);
    if (n <= 0) return "";
    g_path.assign(target, static_cast<std::size_t>(n));
    if (g_path.empty() || g_path.front() != '/' || g_path.ends_with(" (deleted)")) {
      g_path.clear();
      return "";
    }
    g_bytes = static_cast<std::uint64_t>(st.st_size);
  }
  if (g_path.empty()) return "";
  g_max_bytes = max_bytes;
  g_keep = keep < 0 ? 0 : keep;
  return g_path;
}

void set_min_level(Level level) { g_min_level = static_cast<int>(level); }
bool enabled(Level level) { return static_cast<int>(level) >= g_min_level.load(std::memory_order_relaxed); }

void write(Level level, std::string_view subsystem, std::string_view message) {
  using namespace std::chrono;
  auto now = system_clock::now();
  std::time_t secs = system_clock::to_time_t(now);
  int millis = static_cast<int>(duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[64];
  std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
  std::string line;
  line.reserve(64 + message.size());
  line += stamp;
  line += ' ';
  line += level_name(level);
  line += ' ';
  line += subsystem;
  line += ": ";
  line += message;
  line += '\n';
  std::lock_guard lock(g_mutex);
  if (g_max_bytes > 0) {
    // Others write to the file too (stdout, a supervisor): look at its real size now and then.
    if (++g_lines % 256 == 0) g_bytes = size_of(g_fd);
    if (g_bytes > 0 && g_bytes + line.size() > g_max_bytes) rotate_locked();
  }
  // One write per line keeps lines whole when several processes share a log.
  const auto written = ::write(g_fd, line.data(), line.size());
  if (written > 0) g_bytes += static_cast<std::uint64_t>(written);
}

}  // namespace testudo::log
