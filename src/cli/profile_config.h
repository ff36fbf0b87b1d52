// Settings of a command kept in the profile, so a cluster's shape need not be retyped: for
// `testudo cluster start`, <profile>/cluster.json, a JSON object whose keys are the command's
// long option names without the dashes, e.g.
//   {"n": 8, "ip": "0.0.0.0", "location": "node1.example", "tag": ["site=lab"], "trust": "learn"}
// An option given on the command line wins over the file. The file holds no secrets (options
// never carry them), so it needs no special mode.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "testudo/status.h"

namespace testudo::cli {

// Applies `path` to the options of `command` that the command line left unset, as if they
// had been typed. A missing file is no error. kInvalidArgument, naming the file and the key,
// for a file that is not a JSON object, an unknown key, or a value the option refuses.
Status apply_profile_config(CLI::App& command, const std::string& path);

}  // namespace testudo::cli
