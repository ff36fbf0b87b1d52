// `testudo engines start|stop|list`: engines on this machine added to, removed from and listed
// for the running cluster of a profile (one started by `testudo cluster start`). Engines of a
// cluster are processes of this machine recorded in the profile's pid file (run/cluster.json).
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

namespace testudo::cli {

class EnginesCommand {
 public:
  // Adds `engines` and its subcommands to `app`.
  explicit EnginesCommand(CLI::App& app);
  ~EnginesCommand();
  bool chosen() const;
  int run(const std::string& profile);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace testudo::cli
