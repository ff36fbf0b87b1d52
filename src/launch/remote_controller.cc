#include "launch/remote_controller.h"

#include <thread>

#include "auth/connection_file.h"
#include "auth/identity.h"
#include "base/profile.h"
#include "crypto/crypto.h"
#include "crypto/private_file.h"
#include "launch/launcher.h"
#include "launch/run_command.h"

namespace testudo::launch {
namespace {

using Clock = std::chrono::steady_clock;

// The public halves of the two identities the remote controller must trust: this user's
// client identity (its owner) and the profile's shared engine identity (made here if missing,
// as a local controller would make it, so that engines started from here can use it).
StatusOr<std::vector<std::pair<std::string, std::string>>> certificates_to_send(const std::string& profile) {
  TESTUDO_ASSIGN_OR_RETURN(std::string owner,
                           auth::load_or_create_identity_certificate(testudo_home() + "/identity", "client"));
  const ProfilePaths paths = profile_paths(profile);
  TESTUDO_RETURN_IF_ERROR(crypto::ensure_private_dir(paths.security_dir));
  TESTUDO_ASSIGN_OR_RETURN(std::string engine,
                           auth::load_or_create_identity_certificate(paths.security_dir, "engine", {"testudo-engine"}));
  return std::vector<std::pair<std::string, std::string>>{{"owner-cert.pem", owner}, {"engine-cert.pem", engine}};
}

// Where the remote controller's connection files appear, relative to remote_dir (its
// TESTUDO_HOME is remote_dir/home; the layout is base/profile.h's).
std::string remote_security_dir(const std::string& profile) { return "home/profile_" + profile + "/security"; }

// Separates the two files in the fetch's output (a byte no JSON text holds).
constexpr char kFileSeparator = '\x1e';
// The fetch's exit status while the controller has not written its files yet.
constexpr int kNotYet = 3;

// One try at reading the two connection files on the host; the remote side waits up to ~3 s
// for them. kNotYet in exit_code when they are not there yet.
StatusOr<CommandResult> fetch_connection_files(const RemoteControllerOptions& options, std::chrono::milliseconds timeout) {
  const std::string dir = shell_quote(options.ssh.remote_dir + "/" + remote_security_dir(options.profile));
  const std::string script = "cd " + dir + " 2>/dev/null || exit " + std::to_string(kNotYet) +
                             "; i=0; while [ ! -s controller-client.json ] || [ ! -s controller-engine.json ]; do "
                             "i=$((i+1)); [ $i -gt 30 ] && exit " + std::to_string(kNotYet) +
                             "; sleep 0.1; done; cat controller-client.json; printf '\\036'; cat controller-engine.json";
  return run_command(ssh_argv(options.ssh, options.host, false, script), "", timeout);
}

// Checks the fetched files and writes them into the local profile (owner-only).
Status save_fetched_files(const RemoteControllerOptions& options, std::string& fetched) {
  const auto separator = fetched.find(kFileSeparator);
  if (separator == std::string::npos) {
    crypto::wipe(fetched);
    return data_loss("the controller's connection files from " + options.host + " are incomplete");
  }
  const std::string_view client_text = std::string_view(fetched).substr(0, separator);
  const std::string_view engine_text = std::string_view(fetched).substr(separator + 1);
  auto client = auth::parse_connection_info(client_text);
  auto engine = auth::parse_connection_info(engine_text);
  Status st = ok_status();
  if (!client.ok() || client->role != wire::Role::kClient || !engine.ok() || engine->role != wire::Role::kEngine) {
    st = data_loss("the controller's connection files from " + options.host + " are malformed");
  } else {
    const ProfilePaths paths = profile_paths(options.profile);
    st = crypto::ensure_private_dir(paths.security_dir);
    if (st.ok()) st = crypto::write_private_file(paths.client_connection_file, std::string(client_text));
    if (st.ok()) st = crypto::write_private_file(paths.engine_connection_file, std::string(engine_text));
  }
  if (client.ok()) crypto::wipe(std::as_writable_bytes(std::span(client->capability)));
  if (engine.ok()) crypto::wipe(std::as_writable_bytes(std::span(engine->capability)));
  crypto::wipe(fetched);
  return st;
}

}  // namespace

std::string default_controller_dir(const std::string& profile) { return ".testudo/remote/" + profile + "/controller"; }

std::string controller_location(const std::string& host) {
  const auto at = host.rfind('@');
  return at == std::string::npos ? host : host.substr(at + 1);
}

std::string remote_controller_command(const RemoteControllerOptions& options) {
  bool has_location = false;
  for (const auto& a : options.controller_args) has_location = has_location || a == "--location" || a.starts_with("--location=");
  // exec: the controller itself holds the terminal, so the hang-up of a lost session reaches it.
  std::string command = "cd " + shell_quote(options.ssh.remote_dir) + " && TESTUDO_HOME=\"$PWD/home\" exec " +
                        shell_quote(options.ssh.remote_testudo) + " controller --profile " +
                        shell_quote(options.profile) + " --ip " + shell_quote(options.ip) +
                        " --owner-cert owner-cert.pem --engine-cert engine-cert.pem";
  if (!has_location) command += " --location " + shell_quote(controller_location(options.host));
  if (options.reuse) command += " --reuse";
  for (const auto& a : options.controller_args) command += " " + shell_quote(a);
  return command;
}

StatusOr<pid_t> start_remote_controller(const RemoteControllerOptions& given, const std::string& log_file,
                                        Clock::time_point deadline,
                                        const std::function<void(const std::string&)>& progress) {
  RemoteControllerOptions options = given;
  if (options.ssh.remote_dir.empty()) options.ssh.remote_dir = default_controller_dir(options.profile);
  const std::chrono::milliseconds setup_timeout(30'000);

  // 1. The certificates go to the host; stale connection files there are removed, so the
  //    fetch below cannot mistake a previous run's files for this one's (kept with --reuse,
  //    where they stay valid). One SSH connection; a host without testudo says so here.
  TESTUDO_ASSIGN_OR_RETURN(auto certificates, certificates_to_send(options.profile));
  TESTUDO_ASSIGN_OR_RETURN(std::string script, write_files_script(options.ssh.remote_dir, certificates));
  script += "cd " + shell_quote(options.ssh.remote_dir) + "\ncommand -v " + shell_quote(options.ssh.remote_testudo) +
            " >/dev/null || { echo " + shell_quote("testudo: " + options.ssh.remote_testudo + " not found on " + options.host) +
            " >&2; exit 127; }\n";
  if (!options.reuse) {
    const std::string security = remote_security_dir(options.profile);
    script += "rm -f " + shell_quote(security + "/controller-client.json") + " " +
              shell_quote(security + "/controller-engine.json") + "\n";
  }
  TESTUDO_ASSIGN_OR_RETURN(CommandResult set_up,
                           run_command(ssh_argv(options.ssh, options.host, false, "sh -s"), script, setup_timeout));
  if (set_up.exit_code != 0) {
    return ssh_failure("prepare the controller on", options.host, set_up.exit_code, set_up.err, setup_timeout);
  }

  // 2. The controller, in the foreground of its own SSH session; its output is our log.
  TESTUDO_ASSIGN_OR_RETURN(pid_t ssh_pid, spawn_detached(ssh_argv(options.ssh, options.host, true,
                                                                  remote_controller_command(options)),
                                                         log_file));
  progress("controller starting on " + options.host + " (ssh pid " + std::to_string(ssh_pid) + ", log " + log_file + ")");

  // 3. Its connection files, once it has written them.
  auto fail = [&](Status why) -> StatusOr<pid_t> {
    terminate(ssh_pid, std::chrono::seconds(3));
    return why;
  };
  while (Clock::now() < deadline) {
    if (!process_alive(ssh_pid)) {
      const std::string said = last_log_line(log_file);
      return fail(unavailable("the controller on " + options.host + " exited during start-up" +
                              (said.empty() ? "" : ": " + said) + " (log " + log_file + ")"));
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    const auto timeout = std::min(left, std::chrono::milliseconds(15'000));
    auto fetched = fetch_connection_files(options, timeout);
    if (!fetched.ok()) return fail(fetched.status());
    if (fetched->exit_code == 0) {
      if (Status st = save_fetched_files(options, fetched->out); !st.ok()) return fail(st);
      return ssh_pid;
    }
    if (fetched->exit_code != kNotYet) {
      crypto::wipe(fetched->out);
      return fail(ssh_failure("read the controller's connection files from", options.host, fetched->exit_code,
                              fetched->err, timeout));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return fail(deadline_exceeded("the controller on " + options.host + " did not write its connection files in time; see " +
                                log_file));
}

}  // namespace testudo::launch
