// Running a helper command to its end (ssh for a copy, sbatch, scancel): input on its stdin,
// its stdout and stderr collected (bounded), a deadline. posix_spawnp: the program is looked up
// on PATH. Thread-safe (no shared state).
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "testudo/status.h"

namespace testudo::launch {

struct CommandResult {
  int exit_code = -1;  // -1: killed (the deadline passed, or a signal)
  std::string out;     // at most 64 KiB of each
  std::string err;
};

// kUnavailable only when the command cannot be started; its failure is in the result.
StatusOr<CommandResult> run_command(const std::vector<std::string>& argv, const std::string& input,
                                    std::chrono::milliseconds timeout);

// The last non-empty line of a command's output, for an error message.
std::string last_line(const std::string& text);

}  // namespace testudo::launch
