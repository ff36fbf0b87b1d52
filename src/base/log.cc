#include "base/log.h"

#include <fcntl.h>
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
int g_fd = STDERR_FILENO;  // guarded by g_mutex

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
  return true;
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
  // One write per line keeps lines whole when several processes share a log.
  [[maybe_unused]] auto written = ::write(g_fd, line.data(), line.size());
}

}  // namespace testudo::log
