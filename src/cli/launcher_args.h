// The engine launcher options that `cluster start` and `engines start` share:
//   --engines local|mpi   --mpiexec PATH   --mpi-arg ARG (repeatable; e.g. --mpi-arg=--oversubscribe)
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "launch/launcher.h"

namespace testudo::cli {

struct LauncherArgs {
  std::string kind = "local";
  std::string mpiexec = "mpiexec";
  std::vector<std::string> mpi_args;

  void add_to(CLI::App* command) {
    command->add_option("--engines", kind, "How engines start: local (one process each) or mpi (one mpiexec)")
        ->capture_default_str();
    command->add_option("--mpiexec", mpiexec, "mpi: the mpiexec to run")->capture_default_str();
    command->add_option("--mpi-arg", mpi_args,
                        "mpi: an argument for mpiexec before the engine (repeatable; write --mpi-arg=--oversubscribe)");
  }

  StatusOr<launch::EngineLauncherOptions> options() const {
    launch::EngineLauncherOptions out;
    TESTUDO_ASSIGN_OR_RETURN(out.kind, launch::engine_launcher_kind(kind));
    out.mpiexec = mpiexec;
    out.mpiexec_args = mpi_args;
    return out;
  }
};

}  // namespace testudo::cli
