// What both executables (`testudo` and `testudo-engine`) share: exit codes, how an error is
// printed, and the options every command takes (--profile, --log-level). They are defined
// once here so that `testudo engine ...`, which runs testudo-engine with its own arguments,
// means exactly what `testudo-engine ...` means.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <string_view>

#include "testudo/status.h"

namespace testudo::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;  // the operation failed (remote error, no cluster...)
inline constexpr int kExitUsage = 2;  // bad arguments

// Prints "<program>: <message>" to stderr; returns kExitUsage for kInvalidArgument, else kExitError.
int report_failure(std::string_view program, const Status& status);

struct CommonOptions {
  std::string profile = "default";  // files live in $TESTUDO_HOME/profile_<name>
  std::string log_level = "info";   // debug, info, warning or error

  // Adds --profile and --log-level to `app` (bound to this object, which must outlive parsing).
  void add_to(CLI::App& app);
  // Sets the process's log level from log_level; kInvalidArgument for an unknown name.
  [[nodiscard]] Status apply_log_level() const;
};

}  // namespace testudo::cli
