// Starting and stopping a cluster: one controller (`testudo controller`) on this machine and N
// engines (`testudo-engine`, the sibling executable that embeds Python) here, as ranks of one
// mpiexec, or on other hosts over SSH (launch/ssh_launcher.h), as separate processes, each
// in its own session (so a terminal's Ctrl-C reaches only the foreground `testudo cluster
// start`), logging into the profile's log/ directory.
// Pid files: run/cluster.json (0600); engines can be added to and removed from a running
// cluster (add_engines, stop_engines). Secrets never travel in argv: processes read them from
// the profile's owner-only connection files.
// Thread-safety: functions are safe to call from one thread at a time.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "launch/batch_launcher.h"
#include "launch/remote_controller.h"
#include "launch/ssh_launcher.h"
#include "testudo/status.h"

namespace testudo::launch {

// The engine executable's file name. It is installed in the same directory as `testudo`,
// which runs it for `testudo engine` and for the engines of a cluster.
inline constexpr char kEngineProgramName[] = "testudo-engine";

// The running executable's path (/proc/self/exe); "testudo" if it cannot be read.
std::string self_executable();
// <directory of `program`>/testudo-engine: the engine executable that belongs to the
// `testudo` executable `program`.
std::string engine_program_beside(const std::string& program);

// Starts `argv` (argv[0] is the program) detached in a new session, stdin from /dev/null and
// stdout/stderr appended to `log_file` (0600). Returns its pid.
StatusOr<pid_t> spawn_detached(const std::vector<std::string>& argv, const std::string& log_file,
                               const std::vector<std::string>& extra_env = {});
// True while `pid` runs (reaps it first if it is our exited child).
bool process_alive(pid_t pid);
// SIGTERM, wait up to `grace`, then SIGKILL. Returns once the process is gone.
void terminate(pid_t pid, std::chrono::milliseconds grace);
// The last non-empty line of a log file (from its last 4 KiB), ssh's "Connection to X closed."
// skipped: what a process said last before it exited. Logs never hold secrets.
std::string last_log_line(const std::string& path);

// How a cluster's engines are started on this machine:
//  kLocal: one process per engine (testudo-engine), each tracked by its pid;
//  kMpi:   one `mpiexec -n N testudo-engine ...` (MPICH or Open MPI), tracked by the mpiexec
//          pid; the engines are its ranks (they report mpi_rank and mpi_size), so user code
//          on them can use mpi4py. Stopping the set signals mpiexec, which ends its ranks.
//  kSsh:   engines on other hosts, one SSH session per host running its engines (see
//          launch/ssh_launcher.h); the controller must listen where they can reach it.
//  kSlurm, kPbs: one batch job whose tasks are the engines (launch/batch_launcher.h), tracked
//          by its job id; stopping cancels the job.
struct EngineLauncherOptions {
  enum class Kind { kLocal, kMpi, kSsh, kSlurm, kPbs };
  Kind kind = Kind::kLocal;
  std::string mpiexec = "mpiexec";       // kMpi: the program (found on PATH unless a path)
  std::vector<std::string> mpiexec_args;  // kMpi: before the engine, e.g. --oversubscribe
  std::vector<SshHost> hosts;            // kSsh: where, and how many engines each
  SshSettings ssh;                       // kSsh: remote_dir empty: .testudo/remote/<profile>
  BatchSettings batch;                   // kSlurm, kPbs (its system follows kind)
};
// "local", "mpi", "ssh", "slurm" or "pbs"; anything else is kInvalidArgument naming the kinds.
StatusOr<EngineLauncherOptions::Kind> engine_launcher_kind(std::string_view name);

struct ClusterOptions {
  // The `testudo` executable, run as `program controller ...`; default: this executable.
  std::string program;
  // The engine executable, run as `engine_program --profile P ...` (directly, not through
  // `program engine`, which would cost one more exec per engine); default:
  // engine_program_beside(program).
  std::string engine_program;
  std::string profile = "default";
  int engines = 2;
  std::string ip = "127.0.0.1";
  bool reuse = false;
  std::chrono::milliseconds timeout{60'000};  // until every engine has registered
  // Extra arguments for the controller (e.g. --heartbeat-timeout 3) and for every engine.
  std::vector<std::string> controller_args;
  std::vector<std::string> engine_args;
  EngineLauncherOptions launcher;
  // Where the controller runs: empty, on this machine; else on this host over SSH
  // (launch/remote_controller.h), with launcher.ssh's ssh options and remote testudo, its files
  // under controller_dir there (empty: default_controller_dir), listening on `ip` there.
  std::string controller_host;
  std::string controller_dir;
};

// A batch job holding engines (the slurm and pbs launchers).
struct BatchJobId {
  BatchSettings::System system = BatchSettings::System::kSlurm;
  std::string id;
};

struct ClusterProcesses {
  pid_t controller = 0;
  std::vector<pid_t> engines;
  std::vector<BatchJobId> jobs;
  int next_engine_index = 0;  // the next engine's log is log/engine-<index>.log
};

// Starts the controller, waits for its connection files, starts the engines and waits until
// they have all registered, reporting progress through `progress` ("engines 2/4 ready").
// On failure stops whatever it started and says why (with the log file to read).
StatusOr<ClusterProcesses> start_cluster(const ClusterOptions& options,
                                         const std::function<void(const std::string&)>& progress);

// Asks the controller to shut everything down, waits for the recorded processes to exit
// (escalating to SIGTERM/SIGKILL after `grace`), and removes the pid file.
Status stop_cluster(const std::string& profile, std::chrono::milliseconds grace,
                    const std::function<void(const std::string&)>& progress);

StatusOr<ClusterProcesses> read_cluster_file(const std::string& profile);

// A profile that has a pid file: a cluster started on this machine, running or not.
struct ClusterEntry {
  std::string profile;
  ClusterProcesses processes;
  bool controller_alive = false;
  std::size_t engines_alive = 0;
};
// Every cluster of this machine's testudo home (one per profile with run/cluster.json), by
// profile name.
std::vector<ClusterEntry> list_clusters();
// Removes the pid files of clusters whose controller is gone (a crash, a reboot, a kill -9),
// after stopping any of their engines still running. Returns the profiles cleaned.
std::vector<std::string> clean_clusters();

struct AddEnginesOptions {
  std::string profile = "default";
  int engines = 1;
  std::string engine_program;  // default: engine_program_beside(self_executable())
  std::vector<std::string> engine_args;  // e.g. --tag k=v
  std::chrono::milliseconds timeout{60'000};  // until the new engines have registered
  EngineLauncherOptions launcher;
};

// Adds engines on this machine to the running cluster of `options.profile` (started by
// start_cluster): starts them, records them in the pid file and waits until the controller
// counts that many more engines, reporting progress. Returns what it started. On
// failure stops the engines it started. kFailedPrecondition when no cluster runs.
struct AddedEngines {
  std::vector<pid_t> pids;        // processes started here (engines, mpiexec, ssh sessions)
  std::vector<std::string> jobs;  // batch jobs submitted (slurm, pbs)
};
StatusOr<AddedEngines> add_engines(const AddEnginesOptions& options,
                                   const std::function<void(const std::string&)>& progress);

// Stops engines of the running cluster of `profile`: those with the given pids (each must be
// an engine of that cluster's pid file, else kInvalidArgument and nothing is stopped), or all
// of them when `pids` is empty. Each gets SIGTERM (the engine says goodbye to the controller
// and exits), then SIGKILL after `grace`. The pid file keeps the others. Returns the pids
// stopped.
StatusOr<std::vector<pid_t>> stop_engines(const std::string& profile, const std::vector<pid_t>& pids,
                                          std::chrono::milliseconds grace);
// Cancels batch jobs of the cluster of `profile`: those with the given ids (each must be one of
// its jobs, else kInvalidArgument), or all when `ids` is empty. Returns the jobs cancelled.
StatusOr<std::vector<std::string>> cancel_jobs(const std::string& profile, const std::vector<std::string>& ids);

}  // namespace testudo::launch
