#include "launch/launcher.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "base/profile.h"
#include "crypto/private_file.h"
#include "testudo/client.h"

extern char** environ;

namespace testudo::launch {
namespace {

using Clock = std::chrono::steady_clock;

Status write_cluster_file(const std::string& profile, const ClusterProcesses& procs) {
  nlohmann::json j = {{"controller", procs.controller}, {"engines", procs.engines}};
  ProfilePaths paths = profile_paths(profile);
  TESTUDO_RETURN_IF_ERROR(crypto::ensure_private_dir(paths.run_dir));
  return crypto::write_private_file(paths.run_dir + "/cluster.json", j.dump() + "\n");
}

void stop_all(const ClusterProcesses& procs) {
  for (pid_t p : procs.engines) terminate(p, std::chrono::milliseconds(2000));
  if (procs.controller) terminate(procs.controller, std::chrono::milliseconds(3000));
}

}  // namespace

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
  const std::string engine_program =
      options.engine_program.empty() ? engine_program_beside(program) : options.engine_program;
  // Found out now rather than after the controller has started and must be stopped again.
  if (options.engines > 0 && ::access(engine_program.c_str(), X_OK) != 0) {
    const int err = errno;
    return failed_precondition("cannot run the engine executable " + engine_program + ": " + std::strerror(err) +
                               " (install " + kEngineProgramName + " in the same directory as " + program + ")");
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
  std::vector<std::string> controller_argv{program, "controller", "--profile", options.profile, "--ip", options.ip};
  if (options.reuse) controller_argv.push_back("--reuse");
  controller_argv.insert(controller_argv.end(), options.controller_args.begin(), options.controller_args.end());
  const std::string controller_log = paths.log_dir + "/controller.log";
  TESTUDO_ASSIGN_OR_RETURN(procs.controller, spawn_detached(controller_argv, controller_log));
  progress("controller started (pid " + std::to_string(procs.controller) + ", log " + controller_log + ")");

  auto fail = [&](Status why) -> Status {
    stop_all(procs);
    return why;
  };
  auto deadline = Clock::now() + options.timeout;

  // The controller is ready when its client connection file lets us in.
  std::unique_ptr<Client> client;
  Status last = unavailable("not tried");
  while (Clock::now() < deadline) {
    if (!process_alive(procs.controller)) {
      return fail(unavailable("the controller exited during start-up; see " + controller_log));
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

  for (int i = 0; i < options.engines; ++i) {
    std::vector<std::string> argv{engine_program, "--profile", options.profile};
    argv.insert(argv.end(), options.engine_args.begin(), options.engine_args.end());
    auto pid = spawn_detached(argv, paths.log_dir + "/engine-" + std::to_string(i) + ".log");
    if (!pid.ok()) return fail(pid.status());
    procs.engines.push_back(*pid);
  }
  if (Status st = write_cluster_file(options.profile, procs); !st.ok()) return fail(st);

  std::size_t ready = 0;
  std::string last_report;
  while (Clock::now() < deadline) {
    auto ids = client->engine_ids();
    if (!ids.ok()) return fail(ids.status().with_context("asking the controller for engines"));
    ready = ids->size();
    std::string report = "engines ready: " + std::to_string(ready) + "/" + std::to_string(options.engines);
    if (report != last_report) progress(report);
    last_report = report;
    if (ready >= static_cast<std::size_t>(options.engines)) return procs;
    for (std::size_t i = 0; i < procs.engines.size(); ++i) {
      if (!process_alive(procs.engines[i])) {
        return fail(unavailable("engine " + std::to_string(i) + " exited during start-up; see " + paths.log_dir +
                                "/engine-" + std::to_string(i) + ".log"));
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return fail(deadline_exceeded("only " + std::to_string(ready) + " of " + std::to_string(options.engines) +
                                " engines registered within " + std::to_string(options.timeout.count() / 1000) +
                                " s; see the logs in " + paths.log_dir));
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
  return procs;
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
