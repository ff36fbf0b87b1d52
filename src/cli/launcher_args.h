// The engine launcher options that `cluster start` and `engines start` share:
//   --engines local|mpi|ssh
//   mpi: --mpiexec PATH   --mpi-arg ARG (repeatable; e.g. --mpi-arg=--oversubscribe)
//   ssh: --hosts H[:N],...  --ssh-option ARG (repeatable; e.g. --ssh-option=-F --ssh-option=FILE)
//        --remote-testudo PATH   --remote-dir DIR
//   sealing: --trust-client FINGERPRINT (repeatable)
#pragma once

#include <CLI/CLI.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "e2e/roots.h"
#include "launch/launcher.h"

namespace testudo::cli {

struct LauncherArgs {
  std::string kind = "local";
  std::string mpiexec = "mpiexec";
  std::vector<std::string> mpi_args;
  std::string hosts;
  std::string hostfile;
  std::vector<std::string> ssh_args;
  std::string remote_testudo = "testudo";
  std::string remote_dir;
  bool restart = false;
  std::string batch_template;
  std::string queue;
  std::vector<std::string> batch_args;
  std::vector<std::string> trust_clients;

  void add_to(CLI::App* command) {
    command->add_option("--trust-client", trust_clients,
                        "End-to-end sealing: the engines also open sealed requests of this client key fingerprint "
                        "(repeatable; the launching user's own key is always trusted; `testudo keys fingerprint` "
                        "prints one's own)");
    command->add_option("--batch-template", batch_template,
                        "slurm/pbs: the batch script template ({n} {job_name} {queue} {queue_directive} {log} "
                        "{profile} {engine_command}); default: built in");
    command->add_option("--queue", queue, "slurm/pbs: the partition or queue");
    command->add_option("--batch-arg", batch_args, "slurm/pbs: an argument for sbatch/qsub (repeatable)");
    command->add_flag("--restart-engines", restart,
                      "Start an engine again when it dies (backoff; at most 5 times in 60 s; testudo-engine --restart)");
    command->add_option("--engines", kind,
                        "How engines start: local (one process each), mpi (one mpiexec), ssh (on --hosts), slurm or pbs (a batch job)")
        ->capture_default_str();
    command->add_option("--hosts", hosts, "ssh: hosts and engines per host, e.g. node1:4,node2:4,user@node3");
    command->add_option("--hostfile", hostfile, "ssh: a file of HOST[:N] lines (# starts a comment), instead of --hosts");
    command->add_option("--ssh-option", ssh_args,
                        "ssh: an argument for ssh before the host (repeatable; write --ssh-option=-F --ssh-option=FILE)");
    command->add_option("--remote-testudo", remote_testudo, "ssh: the testudo command on the hosts")
        ->capture_default_str();
    command->add_option("--remote-dir", remote_dir,
                        "ssh: where the engine's files go on the hosts (default .testudo/remote/<profile> in the "
                        "remote home)");
    command->add_option("--mpiexec", mpiexec, "mpi: the mpiexec to run")->capture_default_str();
    command->add_option("--mpi-arg", mpi_args,
                        "mpi: an argument for mpiexec before the engine (repeatable; write --mpi-arg=--oversubscribe)");
  }

  StatusOr<launch::EngineLauncherOptions> options() const {
    TESTUDO_RETURN_IF_ERROR(e2e::Roots::make(trust_clients, "").status());  // well-formed, before anything starts
    launch::EngineLauncherOptions out;
    TESTUDO_ASSIGN_OR_RETURN(out.kind, launch::engine_launcher_kind(kind));
    out.mpiexec = mpiexec;
    out.mpiexec_args = mpi_args;
    if (out.kind == launch::EngineLauncherOptions::Kind::kSsh) {
      if (!hosts.empty() && !hostfile.empty()) return invalid_argument("--hosts or --hostfile, not both");
      std::string list = hosts;
      if (!hostfile.empty()) {
        std::ifstream in(hostfile);
        if (!in) return invalid_argument("cannot read the host file " + hostfile);
        for (std::string line; std::getline(in, line);) {
          line = line.substr(0, line.find('#'));
          const auto first = line.find_first_not_of(" \t\r");
          if (first == std::string::npos) continue;
          line = line.substr(first, line.find_last_not_of(" \t\r") + 1 - first);
          list += (list.empty() ? "" : ",") + line;
        }
      }
      TESTUDO_ASSIGN_OR_RETURN(out.hosts, launch::parse_ssh_hosts(list));
    } else if (!hosts.empty() || !hostfile.empty()) {
      return invalid_argument("--hosts and --hostfile are for --engines ssh");
    }
    out.ssh.ssh_args = ssh_args;
    out.ssh.remote_testudo = remote_testudo;
    out.ssh.remote_dir = remote_dir;
    out.batch.template_file = batch_template.empty() ? "" : std::filesystem::absolute(batch_template).string();
    out.batch.queue = queue;
    out.batch.submit_args = batch_args;
    return out;
  }

  // Options for every engine that the launcher settings imply.
  std::vector<std::string> engine_args() const {
    std::vector<std::string> out;
    if (restart) out.push_back("--restart");
    for (const std::string& fingerprint : trust_clients) out.insert(out.end(), {"--trust-client", fingerprint});
    return out;
  }

  // The engines to start: -n when given, else (ssh) what --hosts holds, else `n`.
  static int engine_count(const launch::EngineLauncherOptions& launcher, const CLI::App* command, int n) {
    if (command->get_option("-n")->count() > 0 || launcher.kind != launch::EngineLauncherOptions::Kind::kSsh) return n;
    int total = 0;
    for (const auto& host : launcher.hosts) total += host.engines;
    return total;
  }
};

}  // namespace testudo::cli
