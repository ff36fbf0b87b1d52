// Logging: one named logger per subsystem ("net", "hub", "engine", ...), lines of
//   2026-11-23T11:40:00.123Z INFO  hub: engine 3 registered from 127.0.0.1:40112
// written to stderr or to a log file chosen at start. Thread-safe.
// Never log a secret, a capability, a proof or a payload: log names, sizes and ids.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>

namespace testudo::log {

enum class Level { kDebug = 0, kInfo, kWarning, kError };

// Sends every line to `path` (appended, created 0600) instead of stderr. Returns false if
// the file cannot be opened; logging then stays on stderr.
bool set_file(const std::string& path);

// Keeps the log file below `max_bytes`: once a line would cross it, <path> becomes <path>.1
// (.1 becomes .2, ... up to <path>.<keep>; older ones are removed) and a new <path> is
// started, so no flood (of connections, of user output) can fill a disk with logs. The file
// is set_file's, or stderr itself when it is a regular file (a launcher's log, e.g.
// log/controller.log): then stderr, and stdout if it was the same file, move to the new file
// too, so that whatever else the process writes there follows. 0 turns rotation off; stderr
// on a terminal or pipe is never rotated. Returns the path rotated, or "" when none.
std::string set_rotation(std::uint64_t max_bytes, int keep);
void set_min_level(Level level);
bool enabled(Level level);
void write(Level level, std::string_view subsystem, std::string_view message);

// Collects one line and writes it when destroyed: LOG_INFO("hub") << "engine " << id;
class Line {
 public:
  Line(Level level, std::string_view subsystem) : level_(level), subsystem_(subsystem) {}
  ~Line() { write(level_, subsystem_, stream_.str()); }
  template <typename T>
  Line& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }

 private:
  Level level_;
  std::string_view subsystem_;
  std::ostringstream stream_;
};

}  // namespace testudo::log

// A loop that runs at most once: safe inside an unbraced if/else, and the line's arguments
// are not evaluated when the level is off.
#define TESTUDO_LOG(level, subsystem)                                                        \
  for (bool testudo_log_once_ = ::testudo::log::enabled(level); testudo_log_once_; testudo_log_once_ = false) \
  ::testudo::log::Line(level, subsystem)
#define LOG_DEBUG(subsystem) TESTUDO_LOG(::testudo::log::Level::kDebug, subsystem)
#define LOG_INFO(subsystem) TESTUDO_LOG(::testudo::log::Level::kInfo, subsystem)
#define LOG_WARN(subsystem) TESTUDO_LOG(::testudo::log::Level::kWarning, subsystem)
#define LOG_ERROR(subsystem) TESTUDO_LOG(::testudo::log::Level::kError, subsystem)
