// What both executables (`testudo` and `testudo-engine`) share: exit codes, how an error is
// printed, and the options every command takes (--profile, --log-level). They are defined
// once here so that `testudo engine ...`, which runs testudo-engine with its own arguments,
// means exactly what `testudo-engine ...` means.
#pragma once

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "testudo/status.h"

namespace testudo::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;  // the operation failed (remote error, no cluster...)
inline constexpr int kExitUsage = 2;  // bad arguments

// Prints "<program>: <message>" to stderr; returns kExitUsage for kInvalidArgument, else kExitError.
int report_failure(std::string_view program, const Status& status);

// Parses the command line as CLI11_PARSE does, printing help or the error as CLI11 words it,
// but a bad command line exits with kExitUsage (CLI11's own codes, 105 or 109, mean nothing to
// a script). Returns the exit code to end with, or nullopt to go on.
std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv);

// Checks for options in seconds, worded for users ("--timeout: must be a number of seconds
// above 0, not '-5'"): zero and negative durations are mistakes, not "no limit" or "at once".
CLI::Validator positive_seconds();
CLI::Validator non_negative_seconds();
// A duration option's seconds as milliseconds.
std::chrono::milliseconds seconds(double s);

struct CommonOptions {
  std::string profile = "default";  // files live in $TESTUDO_HOME/profile_<name>
  std::string log_level = "info";   // debug, info, warning or error
  // A log file (--log-file, or stderr when a launcher made it a file) rotates beyond this,
  // keeping kLogFilesKept old ones: a flood cannot fill the disk with logs. 0: never.
  std::uint64_t log_max_bytes = 64ull << 20;
  static constexpr int kLogFilesKept = 4;

  // Adds --profile and --log-level to `app` (bound to this object, which must outlive parsing).
  void add_to(CLI::App& app);
  // Sets the process's log level from log_level; kInvalidArgument for an unknown name.
  [[nodiscard]] Status apply_log_level() const;
  // Starts rotating the log file, if the log is one (call after log::set_file, if any).
  void apply_log_rotation() const;
};

}  // namespace testudo::cli
