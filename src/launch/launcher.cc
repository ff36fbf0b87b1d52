#include "launch/launcher.h"

#include "launch/run_command.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "auth/identity.h"
#include "base/profile.h"
#include "crypto/crypto.h"
#include "crypto/private_file.h"
#include "testudo/client.h"

extern char** environ;

namespace testudo::launch {
namespace {

using Clock = std::chrono::steady_clock;

Status write_cluster_file(const std::string& profile, const ClusterProcesses& procs) {
  nlohmann::json jobs = nlohmann::json::array();
  for (const BatchJobId& job : procs.jobs) jobs.push_back({{"system", batch_system_name(job.system)}, {"id", job.id}});
  nlohmann::json j = {{"controller", procs.controller},
                      {"engines", procs.engines},
                      {"jobs", jobs},
                      {"next_engine_index", procs.next_engine_index}};
  ProfilePaths paths = profile_paths(profile);
  TESTUDO_RETURN_IF_ERROR(crypto::ensure_private_dir(paths.run_dir));
  return crypto::write_private_file(paths.run_dir + "/cluster.json", j.dump() + "\n");
}

// Cancels a batch job; a job that already ended is no error worth reporting.
void cancel_job(const BatchJobId& job) {
  (void)run_command(cancel_command(job.system, job.id), "", std::chrono::seconds(30));
}

void stop_all(const ClusterProcesses& procs) {
  for (const BatchJobId& job : procs.jobs) cancel_job(job);
  for (pid_t p : procs.engines) terminate(p, std::chrono::milliseconds(2000));
  if (procs.controller) terminate(procs.controller, std::chrono::milliseconds(3000));
}

std::string engine_log(const ProfilePaths& paths, int index) {
  return paths.log_dir + "/engine-" + std::to_string(index) + ".log";
}

// The engine executable to run, checked now rather than after something has been started.
StatusOr<std::string> usable_engine_program(const std::string& program, const std::string& given) {
  const std::string engine_program = given.empty() ? engine_program_beside(program) : given;
  if (::access(engine_program.c_str(), X_OK) != 0) {
    const int err = errno;
    return failed_precondition("cannot run the engine executable " + engine_program + ": " + std::strerror(err) +
                               " (install " + kEngineProgramName + " in the same directory as " + program + ")");
  }
  return engine_program;
}

// Starts `n` engines of `profile` the launcher's way, logging to engine-<index>.log from
// procs.next_engine_index on; appends the pids to track to procs.engines as they start (so a
// failure can stop them): one per engine, or the one mpiexec of all of them.
Status spawn_engines(const EngineLauncherOptions& launcher, const std::string& engine_program,
                     const std::string& profile, const std::vector<std::string>& given_engine_args, int n,
                     ClusterProcesses& procs) {
  const ProfilePaths paths = profile_paths(profile);
  // A cluster's engines wait for their controller however long it is away (a restart with
  // --reuse, a port held by an impostor meanwhile): they end with the cluster (cluster stop,
  // cluster clean, engines stop, a lost SSH session, a cancelled job), not on their own.
  std::vector<std::string> engine_args{"--give-up", "0"};
  // End-to-end sealing: the engines open sealed requests of the user who launches them, whose
  // key they learn here, from this user's own identity, never from the controller.
  TESTUDO_ASSIGN_OR_RETURN(std::string owner_cert,
                           auth::load_or_create_identity_certificate(testudo_home() + "/identity", "client"));
  TESTUDO_ASSIGN_OR_RETURN(std::string owner, tls::key_fingerprint_of_pem(owner_cert));
  engine_args.insert(engine_args.end(), {"--trust-client", owner});
  engine_args.insert(engine_args.end(), given_engine_args.begin(), given_engine_args.end());
  std::vector<std::string> engine{engine_program, "--profile", profile};
  engine.insert(engine.end(), engine_args.begin(), engine_args.end());
  if (launcher.kind == EngineLauncherOptions::Kind::kSlurm || launcher.kind == EngineLauncherOptions::Kind::kPbs) {
    BatchJob job;
    job.engines = n;
    job.job_name = "testudo-" + profile;
    job.log = engine_log(paths, procs.next_engine_index);
    job.profile = profile;
    for (const std::string& word : engine) job.engine_command += (job.engine_command.empty() ? "" : " ") + shell_quote(word);
    TESTUDO_ASSIGN_OR_RETURN(std::string script, batch_script(launcher.batch, job));
    const std::string script_path =
        paths.run_dir + "/engines-" + std::to_string(procs.next_engine_index) + "." + batch_system_name(launcher.batch.system);
    TESTUDO_RETURN_IF_ERROR(crypto::write_private_file(script_path, script));
    TESTUDO_ASSIGN_OR_RETURN(CommandResult submitted,
                             run_command(submit_command(launcher.batch, script_path), "", std::chrono::seconds(60)));
    const std::string submitter = submit_command(launcher.batch, script_path).front();
    if (submitted.exit_code != 0) {
      const std::string why = last_line(submitted.err);
      return unavailable(submitter + " " + script_path + " failed: " +
                         (why.empty() ? "exit status " + std::to_string(submitted.exit_code) : why));
    }
    TESTUDO_ASSIGN_OR_RETURN(std::string id, job_id_from_submit_output(launcher.batch.system, submitted.out));
    procs.jobs.push_back({launcher.batch.system, id});
    ++procs.next_engine_index;
    return ok_status();
  }
  if (launcher.kind == EngineLauncherOptions::Kind::kSsh) {
    // The files each host needs: the engine connection file and the shared engine identity
    // beside it (the engine finds it there). Read once, sent to every host over SSH.
    std::vector<std::pair<std::string, std::string>> files;
    for (const auto& [name, path] : {std::pair<std::string, std::string>{"controller-engine.json", paths.engine_connection_file},
                                     {"engine-key.pem", paths.security_dir + "/engine-key.pem"},
                                     {"engine-cert.pem", paths.security_dir + "/engine-cert.pem"}}) {
      TESTUDO_ASSIGN_OR_RETURN(std::string contents, crypto::read_private_file(path, name));
      files.emplace_back(name, std::move(contents));
    }
    // Which hosts run how many: in --hosts order until n are placed.
    std::vector<std::pair<const SshHost*, int>> placed;
    for (int wanted = n; const SshHost& host : launcher.hosts) {
      if (wanted <= 0) break;
      placed.emplace_back(&host, std::min(host.engines, wanted));
      wanted -= placed.back().second;
    }
    // Copies to every host at once (each is an SSH connection of its own), then the sessions.
    std::vector<std::future<Status>> copies;
    for (const auto& [host, count] : placed) {
      copies.push_back(std::async(std::launch::async, [&launcher, &files, host = host] {
        return copy_to_host(launcher.ssh, host->name, files, std::chrono::seconds(30));
      }));
    }
    Status copied = ok_status();
    for (auto& copy : copies) {
      if (Status st = copy.get(); !st.ok() && copied.ok()) copied = st;
    }
    for (auto& [name, contents] : files) crypto::wipe(contents);
    TESTUDO_RETURN_IF_ERROR(copied);
    for (const auto& [host, count] : placed) {
      TESTUDO_ASSIGN_OR_RETURN(pid_t pid, spawn_detached(ssh_engines_command(launcher.ssh, host->name, count, engine_args),
                                                        engine_log(paths, procs.next_engine_index)));
      procs.engines.push_back(pid);
      ++procs.next_engine_index;
    }
    return ok_status();
  }
  if (launcher.kind == EngineLauncherOptions::Kind::kMpi) {
    std::vector<std::string> argv{launcher.mpiexec, "-n", std::to_string(n)};
    argv.insert(argv.end(), launcher.mpiexec_args.begin(), launcher.mpiexec_args.end());
    argv.insert(argv.end(), engine.begin(), engine.end());
    TESTUDO_ASSIGN_OR_RETURN(pid_t pid, spawn_detached(argv, engine_log(paths, procs.next_engine_index)));
    procs.engines.push_back(pid);
    ++procs.next_engine_index;
    return ok_status();
  }
  for (int i = 0; i < n; ++i) {
    TESTUDO_ASSIGN_OR_RETURN(pid_t pid, spawn_detached(engine, engine_log(paths, procs.next_engine_index)));
    procs.engines.push_back(pid);
    ++procs.next_engine_index;
  }
  return ok_status();
}

// A program to run: a path as given, a bare name looked up on PATH (posix_spawn does not).
// `install_hint` ends the error: what provides it.
StatusOr<std::string> find_program(const std::string& name, const std::string& install_hint) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string_view dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  while (!dirs.empty()) {
    const auto colon = dirs.find(':');
    const std::string dir(dirs.substr(0, colon));
    dirs = colon == std::string_view::npos ? std::string_view() : dirs.substr(colon + 1);
    const std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return failed_precondition(name + " was not found on PATH (" + install_hint + ")");
}

// Resolves and checks what the launcher needs before anything starts: mpiexec on PATH; for
// ssh, hosts for `engines` engines and a controller address other hosts can reach.
Status prepare_launcher(EngineLauncherOptions& launcher, const std::string& profile, int engines) {
  if (launcher.kind == EngineLauncherOptions::Kind::kMpi) {
    TESTUDO_ASSIGN_OR_RETURN(launcher.mpiexec,
                             find_program(launcher.mpiexec, "install an MPI, e.g. Debian's openmpi-bin or mpich, "
                                                            "or name it with --mpiexec"));
  }
  if (launcher.kind == EngineLauncherOptions::Kind::kSlurm || launcher.kind == EngineLauncherOptions::Kind::kPbs) {
    launcher.batch.system = launcher.kind == EngineLauncherOptions::Kind::kSlurm ? BatchSettings::System::kSlurm
                                                                                 : BatchSettings::System::kPbs;
    const std::string submitter = launcher.batch.system == BatchSettings::System::kSlurm ? "sbatch" : "qsub";
    TESTUDO_RETURN_IF_ERROR(find_program(submitter, launcher.batch.system == BatchSettings::System::kSlurm
                                                        ? "install Slurm's client, Debian's slurm-client"
                                                        : "install a PBS client (qsub)")
                                .status());
  }
  if (launcher.kind == EngineLauncherOptions::Kind::kSsh) {
    if (launcher.hosts.empty()) return invalid_argument("--engines ssh needs --hosts (e.g. --hosts node1:4,node2:4)");
    int capacity = 0;
    for (const SshHost& host : launcher.hosts) capacity += host.engines;
    if (engines > capacity) {
      return invalid_argument(std::to_string(engines) + " engines asked for, but --hosts holds " +
                              std::to_string(capacity));
    }
    if (launcher.ssh.remote_dir.empty()) launcher.ssh.remote_dir = ".testudo/remote/" + profile;
    TESTUDO_ASSIGN_OR_RETURN(launcher.ssh.ssh, find_program(launcher.ssh.ssh, "install Debian's openssh-client"));
  }
  return ok_status();
}

// Engines on other hosts dial the address in the connection file: loopback cannot be it.
Status check_reachable_from_other_hosts(const EngineLauncherOptions& launcher, const std::string& profile) {
  if (launcher.kind != EngineLauncherOptions::Kind::kSsh) return ok_status();
  auto info = crypto::read_private_file(profile_paths(profile).engine_connection_file, "engine connection file");
  if (!info.ok()) return info.status();
  auto j = nlohmann::json::parse(*info, nullptr, false);
  const std::string host = j.is_object() ? j.value("host", std::string()) : std::string();
  if (host == "localhost" || host == "::1" || host.starts_with("127.")) {
    return failed_precondition("engines on other hosts cannot reach a controller at " + host +
                               ": start the cluster with --ip 0.0.0.0 (and --location NAME if this host's name "
                               "does not resolve there)");
  }
  return ok_status();
}

}  // namespace

std::string last_log_line(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff from = std::max<std::streamoff>(0, size - 4096);
  in.seekg(from);
  std::string tail(static_cast<std::size_t>(size - from), '\0');
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  // Lines from the last; ssh's own closing notice (--engines ssh) says nothing about why.
  std::size_t end = tail.size();
  while (end > 0) {
    const std::size_t start = tail.find_last_of('\n', end - 1);
    const std::size_t from = start == std::string::npos ? 0 : start + 1;
    std::string line = tail.substr(from, end - from);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    const bool ssh_notice = line.starts_with("Connection to ") && line.ends_with(" closed.");
    if (!line.empty() && !ssh_notice) return line;
    if (start == std::string::npos) break;
    end = start;
  }
  return "";
}

namespace {

// Waits until the controller counts `before` + `count` engines. `started` are the processes
// of those engines, with their log indexes: one that exits meanwhile ends the wait with its
// log. Progress counts the new engines only ("engines ready: 2/4").
Status wait_for_engines(Client& client, std::size_t before, std::size_t count,
                        const std::vector<std::pair<pid_t, int>>& started, const ProfilePaths& paths,
                        Clock::time_point deadline, std::chrono::milliseconds timeout,
                        const std::function<void(const std::string&)>& progress) {
  const std::size_t wanted = before + count;
  std::size_t ready = 0;
  std::string last_report;
  while (Clock::now() < deadline) {
    auto ids = client.engine_ids();
    if (!ids.ok()) return ids.status().with_context("asking the controller for engines");
    ready = ids->size();
    const std::size_t ready_new = std::min(ready, wanted) - std::min(ready, before);
    std::string report = "engines ready: " + std::to_string(ready_new) + "/" + std::to_string(count);
    if (report != last_report) progress(report);
    last_report = report;
    if (ready >= wanted) return ok_status();
    for (const auto& [pid, index] : started) {
      if (!process_alive(pid)) {
        const std::string last = last_log_line(engine_log(paths, index));
        return unavailable("engine process " + std::to_string(pid) + " exited during start-up" +
                           (last.empty() ? "" : ": " + last) + "; see " + engine_log(paths, index));
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return deadline_exceeded("only " + std::to_string(std::min(ready, wanted) - std::min(ready, before)) + " of " +
                           std::to_string(count) + " engines registered within " + std::to_string(timeout.count() / 1000) +
                           " s; see the logs in " + paths.log_dir);
}

std::vector<std::pair<pid_t, int>> with_indexes(const ClusterProcesses& procs, std::size_t first) {
  std::vector<std::pair<pid_t, int>> out;
  const int base = procs.next_engine_index - static_cast<int>(procs.engines.size() - first);
  for (std::size_t i = first; i < procs.engines.size(); ++i) {
    out.emplace_back(procs.engines[i], base + static_cast<int>(i - first));
  }
  return out;
}

}  // namespace

StatusOr<EngineLauncherOptions::Kind> engine_launcher_kind(std::string_view name) {
  if (name == "local") return EngineLauncherOptions::Kind::kLocal;
  if (name == "mpi") return EngineLauncherOptions::Kind::kMpi;
  if (name == "ssh") return EngineLauncherOptions::Kind::kSsh;
  if (name == "slurm") return EngineLauncherOptions::Kind::kSlurm;
  if (name == "pbs") return EngineLauncherOptions::Kind::kPbs;
  return invalid_argument("unknown engine launcher '" + std::string(name) +
                          "': engines start with local, mpi, ssh, slurm or pbs");
}

std::string self_executable() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("testudo") : p.string();
}

std::string engine_program_beside(const std::string& program) {
  return (std::filesystem::path(program).parent_path() / kEngineProgramName).string();
}

StatusOr<pid_t> spawn_detached(const std::vector<std::string>& argv, const std::string& log_file,
                               const std::vector<std::string>& extra_env) {
  int log_fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0) return unavailable("cannot open log file " + log_file + ": " + std::strerror(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, log_fd, 1);
  posix_spawn_file_actions_adddup2(&actions, log_fd, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // A new session: the child does not get the terminal's signals. Default signal mask.
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);

  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_storage;
  for (char** e = environ; *e; ++e) env_storage.emplace_back(*e);
  for (const auto& e : extra_env) env_storage.push_back(e);
  std::vector<char*> env;
  for (auto& e : env_storage) env.push_back(e.data());
  env.push_back(nullptr);

  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0].c_str(), &actions, &attr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(log_fd);
  if (rc != 0) return unavailable("cannot start " + argv[0] + ": " + std::strerror(rc));
  return pid;
}

bool process_alive(pid_t pid) {
  if (pid <= 0) return false;
  int status = 0;
  pid_t r = ::waitpid(pid, &status, WNOHANG);
  if (r == pid) return false;  // our child, now reaped
  if (::kill(pid, 0) != 0 && errno != EPERM) return false;
  // Someone else's exited child stays a zombie until its parent (often init) reaps it.
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  auto close_paren = line.rfind(')');
  return close_paren == std::string::npos || close_paren + 2 >= line.size() || line[close_paren + 2] != 'Z';
}

void terminate(pid_t pid, std::chrono::milliseconds grace) {
  if (!process_alive(pid)) return;
  ::kill(pid, SIGTERM);
  auto deadline = Clock::now() + grace;
  while (process_alive(pid) && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (process_alive(pid)) {
    ::kill(pid, SIGKILL);
    while (process_alive(pid)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

StatusOr<ClusterProcesses> start_cluster(const ClusterOptions& options,
                                         const std::function<void(const std::string&)>& progress) {
  if (options.engines < 0) return invalid_argument("the number of engines cannot be negative");
  const std::string program = options.program.empty() ? self_executable() : options.program;
  // Found out now rather than after the controller has started and must be stopped again.
  std::string engine_program = options.engine_program;
  EngineLauncherOptions launcher = options.launcher;
  if (options.engines > 0) {
    // The engine program runs elsewhere for ssh: only the remote command is checked (there).
    if (launcher.kind != EngineLauncherOptions::Kind::kSsh) {
      TESTUDO_ASSIGN_OR_RETURN(engine_program, usable_engine_program(program, options.engine_program));
    }
    TESTUDO_RETURN_IF_ERROR(prepare_launcher(launcher, options.profile, options.engines));
  }
  ProfilePaths paths = profile_paths(options.profile);
  TESTUDO_RETURN_IF_ERROR(crypto::ensure_private_dir(paths.root));
  TESTUDO_RETURN_IF_ERROR(crypto::ensure_private_dir(paths.log_dir));
  TESTUDO_RETURN_IF_ERROR(crypto::ensure_private_dir(paths.run_dir));

  if (auto running = read_cluster_file(options.profile); running.ok() && process_alive(running->controller)) {
    return failed_precondition("a cluster of profile '" + options.profile + "' is already running (controller pid " +
                               std::to_string(running->controller) + "); stop it with: testudo cluster stop --profile " +
                               options.profile);
  }
  if (!options.reuse) {
    // Old connection files would point engines at a controller that no longer exists.
    std::filesystem::remove(paths.client_connection_file);
    std::filesystem::remove(paths.engine_connection_file);
  }

  ClusterProcesses procs;
  const std::string controller_log = paths.log_dir + "/controller.log";
  auto deadline = Clock::now() + options.timeout;
  if (options.controller_host.empty()) {
    std::vector<std::string> controller_argv{program, "controller", "--profile", options.profile, "--ip", options.ip};
    if (options.reuse) controller_argv.push_back("--reuse");
    controller_argv.insert(controller_argv.end(), options.controller_args.begin(), options.controller_args.end());
    TESTUDO_ASSIGN_OR_RETURN(procs.controller, spawn_detached(controller_argv, controller_log));
    progress("controller started (pid " + std::to_string(procs.controller) + ", log " + controller_log + ")");
  } else {
    RemoteControllerOptions remote;
    remote.host = options.controller_host;
    remote.ssh = launcher.ssh;
    TESTUDO_ASSIGN_OR_RETURN(remote.ssh.ssh, find_program(remote.ssh.ssh, "install Debian's openssh-client"));
    remote.ssh.remote_dir = options.controller_dir;
    remote.profile = options.profile;
    remote.ip = options.ip;
    remote.reuse = options.reuse;
    remote.controller_args = options.controller_args;
    TESTUDO_ASSIGN_OR_RETURN(procs.controller, start_remote_controller(remote, controller_log, deadline, progress));
  }

  auto fail = [&](Status why) -> Status {
    stop_all(procs);
    return why;
  };

  // The controller is ready when its client connection file lets us in.
  std::unique_ptr<Client> client;
  Status last = unavailable("not tried");
  while (Clock::now() < deadline) {
    if (!process_alive(procs.controller)) {
      // Its last words usually say why (a loose keytab, a broken policy, a port in use).
      const std::string said = last_log_line(controller_log);
      return fail(unavailable("the controller exited during start-up" + (said.empty() ? "" : ": " + said) + "; see " +
                              controller_log));
    }
    if (std::filesystem::exists(paths.client_connection_file)) {
      ClientOptions co;
      co.profile = options.profile;
      co.connect_timeout = std::chrono::milliseconds(2000);
      auto c = Client::connect(co);
      if (c.ok()) {
        client = std::move(c).value();
        break;
      }
      last = c.status();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (!client) return fail(deadline_exceeded("the controller did not become ready: " + last.message()));

  if (options.engines > 0) {
    if (Status st = check_reachable_from_other_hosts(launcher, options.profile); !st.ok()) return fail(st);
    if (Status st = spawn_engines(launcher, engine_program, options.profile, options.engine_args, options.engines, procs);
        !st.ok()) {
      return fail(st);
    }
  }
  if (Status st = write_cluster_file(options.profile, procs); !st.ok()) return fail(st);
  if (Status st = wait_for_engines(*client, 0, static_cast<std::size_t>(options.engines), with_indexes(procs, 0), paths,
                                   deadline, options.timeout, progress);
      !st.ok()) {
    return fail(st);
  }
  return procs;
}

StatusOr<AddedEngines> add_engines(const AddEnginesOptions& options,
                                   const std::function<void(const std::string&)>& progress) {
  if (options.engines <= 0) return invalid_argument("the number of engines to add must be positive");
  auto running = read_cluster_file(options.profile);
  if (!running.ok() || !process_alive(running->controller)) {
    return failed_precondition("no cluster of profile '" + options.profile +
                               "' is running on this machine; start one with: testudo --profile " + options.profile +
                               " cluster start");
  }
  EngineLauncherOptions launcher = options.launcher;
  std::string engine_program = options.engine_program;
  if (launcher.kind != EngineLauncherOptions::Kind::kSsh) {
    TESTUDO_ASSIGN_OR_RETURN(engine_program, usable_engine_program(self_executable(), options.engine_program));
  }
  TESTUDO_RETURN_IF_ERROR(prepare_launcher(launcher, options.profile, options.engines));
  TESTUDO_RETURN_IF_ERROR(check_reachable_from_other_hosts(launcher, options.profile));
  const ProfilePaths paths = profile_paths(options.profile);
  ClientOptions co;
  co.profile = options.profile;
  co.connect_timeout = std::chrono::milliseconds(5000);
  TESTUDO_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::connect(co));
  TESTUDO_ASSIGN_OR_RETURN(std::vector<EngineId> before, client->engine_ids());

  ClusterProcesses procs = *running;
  const std::size_t first = procs.engines.size();
  const std::size_t first_job = procs.jobs.size();
  auto fail = [&](Status why) -> Status {
    for (std::size_t i = first; i < procs.engines.size(); ++i) terminate(procs.engines[i], std::chrono::seconds(2));
    for (std::size_t i = first_job; i < procs.jobs.size(); ++i) cancel_job(procs.jobs[i]);
    procs.engines.resize(first);
    procs.jobs.resize(first_job);
    (void)write_cluster_file(options.profile, procs);  // keeps next_engine_index: logs are not reused
    return why;
  };
  if (Status st = spawn_engines(launcher, engine_program, options.profile, options.engine_args, options.engines, procs);
      !st.ok()) {
    return fail(st);
  }
  std::vector<pid_t> added(procs.engines.begin() + static_cast<std::ptrdiff_t>(first), procs.engines.end());
  std::string pids;
  for (pid_t p : added) pids += (pids.empty() ? "" : " ") + std::to_string(p);
  if (!procs.jobs.empty() && added.empty()) {
    progress("submitted " + std::to_string(options.engines) + " engines as " +
             batch_system_name(procs.jobs.back().system) + " job " + procs.jobs.back().id);
  } else {
    progress("started " + std::to_string(options.engines) + " engines (" +
             (launcher.kind == EngineLauncherOptions::Kind::kMpi   ? "mpiexec pid "
              : launcher.kind == EngineLauncherOptions::Kind::kSsh ? "ssh pids "
                                                                   : "pids ") +
             pids + ")");
  }
  if (Status st = write_cluster_file(options.profile, procs); !st.ok()) return fail(st);
  // Counted against the engines registered before: the new ones are ready when that many more are.
  if (Status st = wait_for_engines(*client, before.size(), static_cast<std::size_t>(options.engines),
                                   with_indexes(procs, first), paths,
                                   Clock::now() + options.timeout, options.timeout, progress);
      !st.ok()) {
    return fail(st);
  }
  AddedEngines out;
  out.pids = std::move(added);
  for (std::size_t i = first_job; i < procs.jobs.size(); ++i) out.jobs.push_back(procs.jobs[i].id);
  return out;
}

StatusOr<std::vector<pid_t>> stop_engines(const std::string& profile, const std::vector<pid_t>& pids,
                                          std::chrono::milliseconds grace) {
  TESTUDO_ASSIGN_OR_RETURN(ClusterProcesses procs, read_cluster_file(profile));
  std::vector<pid_t> chosen = pids.empty() ? procs.engines : pids;
  if (pids.empty()) {
    for (const BatchJobId& job : procs.jobs) cancel_job(job);
    procs.jobs.clear();
  }
  for (pid_t p : chosen) {
    if (std::find(procs.engines.begin(), procs.engines.end(), p) == procs.engines.end()) {
      return invalid_argument("pid " + std::to_string(p) + " is not an engine of the cluster of profile '" + profile +
                              "' (its engines: testudo --profile " + profile + " engines list)");
    }
  }
  // All asked at once, then waited for: engines leave in parallel.
  for (pid_t p : chosen) {
    if (process_alive(p)) ::kill(p, SIGTERM);
  }
  for (pid_t p : chosen) terminate(p, grace);
  std::erase_if(procs.engines, [&](pid_t p) { return std::find(chosen.begin(), chosen.end(), p) != chosen.end(); });
  TESTUDO_RETURN_IF_ERROR(write_cluster_file(profile, procs));
  return chosen;
}

StatusOr<ClusterProcesses> read_cluster_file(const std::string& profile) {
  TESTUDO_ASSIGN_OR_RETURN(std::string text,
                           crypto::read_private_file(profile_paths(profile).run_dir + "/cluster.json", "pid file"));
  auto j = nlohmann::json::parse(text, nullptr, false);
  ClusterProcesses procs;
  if (j.is_discarded() || !j.is_object() || !j.contains("controller") || !j["controller"].is_number_integer() ||
      !j.contains("engines") || !j["engines"].is_array()) {
    return invalid_argument("malformed pid file");
  }
  procs.controller = j["controller"].get<pid_t>();
  for (const auto& e : j["engines"]) {
    if (e.is_number_integer()) procs.engines.push_back(e.get<pid_t>());
  }
  if (auto jobs = j.find("jobs"); jobs != j.end() && jobs->is_array()) {
    for (const auto& job : *jobs) {
      if (!job.is_object() || !job.contains("id") || !job["id"].is_string()) continue;
      const bool pbs = job.value("system", std::string()) == "pbs";
      procs.jobs.push_back({pbs ? BatchSettings::System::kPbs : BatchSettings::System::kSlurm, job["id"].get<std::string>()});
    }
  }
  // Absent in files written before engines could be added: their logs are 0..engines-1.
  procs.next_engine_index = static_cast<int>(procs.engines.size());
  if (auto next = j.find("next_engine_index"); next != j.end() && next->is_number_integer()) {
    procs.next_engine_index = std::max(procs.next_engine_index, next->get<int>());
  }
  return procs;
}

StatusOr<std::vector<std::string>> cancel_jobs(const std::string& profile, const std::vector<std::string>& ids) {
  TESTUDO_ASSIGN_OR_RETURN(ClusterProcesses procs, read_cluster_file(profile));
  std::vector<std::string> chosen;
  for (const std::string& id : ids) {
    if (std::none_of(procs.jobs.begin(), procs.jobs.end(), [&](const BatchJobId& j) { return j.id == id; })) {
      return invalid_argument("job " + id + " is not a job of the cluster of profile '" + profile + "'");
    }
  }
  std::vector<BatchJobId> kept;
  for (const BatchJobId& job : procs.jobs) {
    if (ids.empty() || std::find(ids.begin(), ids.end(), job.id) != ids.end()) {
      cancel_job(job);
      chosen.push_back(job.id);
    } else {
      kept.push_back(job);
    }
  }
  procs.jobs = std::move(kept);
  TESTUDO_RETURN_IF_ERROR(write_cluster_file(profile, procs));
  return chosen;
}

std::vector<ClusterEntry> list_clusters() {
  std::vector<ClusterEntry> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(testudo_home(), ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory(ec) || !name.starts_with("profile_")) continue;
    ClusterEntry cluster;
    cluster.profile = name.substr(std::string_view("profile_").size());
    auto procs = read_cluster_file(cluster.profile);
    if (!procs.ok()) continue;
    cluster.processes = std::move(procs).value();
    cluster.controller_alive = process_alive(cluster.processes.controller);
    for (pid_t p : cluster.processes.engines) cluster.engines_alive += process_alive(p) ? 1 : 0;
    out.push_back(std::move(cluster));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.profile < b.profile; });
  return out;
}

std::vector<std::string> clean_clusters() {
  std::vector<std::string> cleaned;
  for (const ClusterEntry& cluster : list_clusters()) {
    if (cluster.controller_alive) continue;
    // Engines of a cluster never give up on their controller (--give-up 0): ended here.
    for (pid_t p : cluster.processes.engines) terminate(p, std::chrono::seconds(2));
    std::filesystem::remove(profile_paths(cluster.profile).run_dir + "/cluster.json");
    cleaned.push_back(cluster.profile);
  }
  return cleaned;
}

Status stop_cluster(const std::string& profile, std::chrono::milliseconds grace,
                    const std::function<void(const std::string&)>& progress) {
  auto procs = read_cluster_file(profile);
  ClientOptions co;
  co.profile = profile;
  co.connect_timeout = std::chrono::milliseconds(3000);
  co.request_timeout = std::chrono::milliseconds(3000);
  bool asked = false;
  if (auto client = Client::connect(co); client.ok()) {
    asked = (*client)->shutdown_cluster().ok();
    if (asked) progress("asked the controller to shut down the cluster");
  }
  if (!procs.ok()) {
    if (asked) return ok_status();
    return not_found("no running cluster found for profile '" + profile + "'");
  }
  // Engines in batch jobs left when the controller asked them to; the job is cancelled in
  // case some never started (still queued) or did not listen.
  for (const BatchJobId& job : procs->jobs) cancel_job(job);
  std::vector<pid_t> all = procs->engines;
  all.push_back(procs->controller);
  auto deadline = Clock::now() + grace;
  auto any_alive = [&] {
    for (pid_t p : all) {
      if (process_alive(p)) return true;
    }
    return false;
  };
  while (any_alive() && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (any_alive()) {
    progress("some processes did not exit in time; terminating them");
    stop_all(*procs);
  }
  std::filesystem::remove(profile_paths(profile).run_dir + "/cluster.json");
  progress("cluster stopped");
  return ok_status();
}

}  // namespace testudo::launch
