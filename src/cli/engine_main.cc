// The `testudo-engine` command: one engine process, the only executable that embeds CPython.
// `testudo engine ARGS` runs this program with ARGS (see main.cc), so the options below are
// the engine's only definition and both spellings print the same --help. Secrets never appear
// in argv: everything secret is read from the profile's owner-only files.
#include <CLI/CLI.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <csignal>
#include <memory>
#include <string>
#include <vector>

#include "base/log.h"
#include "base/profile.h"
#include "cli/common_options.h"
#include "cli/engine_supervisor.h"
#include "auth/connection_file.h"
#include "auth/identity.h"
#include "engine/engine.h"
#include "net/host_address.h"
#include "tls/tls.h"
#include "tunnel/ssh_forward.h"

namespace testudo::cli {
namespace {

int fail(const Status& st) { return report_failure("testudo-engine", st); }

// End-to-end sealing needs a root for client keys that the controller cannot forge. Given
// none (--trust-client, --client-cafile), the engine trusts the key of the user it runs as,
// read from that user's own identity, never from the controller: that user's clients seal by
// default, so an engine started by hand serves them sealed. No identity there: none trusted
// (sealed requests are refused, saying which option to give).
Status trust_own_client_key_by_default(engine::EngineOptions& options) {
  if (!options.trust_clients.empty() || !options.client_cafile.empty()) return ok_status();
  const std::string dir = testudo_home() + "/identity";
  struct stat st {};
  if (::stat(auth::identity_files(dir, "client").cert_path.c_str(), &st) != 0) return ok_status();
  TESTUDO_ASSIGN_OR_RETURN(std::string pem, auth::load_identity_certificate(dir, "client"));
  TESTUDO_ASSIGN_OR_RETURN(std::string fingerprint, tls::key_fingerprint_of_pem(pem));
  LOG_INFO("engine") << "opening sealed requests of this user's own client key " << fingerprint
                     << " (give --trust-client or --client-cafile for others)";
  options.trust_clients.push_back(std::move(fingerprint));
  return ok_status();
}

}  // namespace

int engine_main(int argc, char** argv) {
  CLI::App app{"Run an engine: connect to a controller and execute Python code for it.\n"
               "`testudo engine ...` runs this program with the same arguments.",
               "testudo-engine"};
  CommonOptions common;
  common.add_to(app);
  engine::EngineOptions eopts;
  std::string log_file;
  app.add_option("--file", eopts.connection_file, "Engine connection file (default: the profile's controller-engine.json)");
  app.add_option("--log-file", log_file, "Write the log here instead of stderr");
  app.add_option("--max-output-bytes", eopts.max_output_chars, "stdout/stderr kept per request; the rest is dropped")
      ->capture_default_str();
  app.add_option("--max-result-bytes", eopts.max_result_bytes, "Largest result one request may return")
      ->capture_default_str();
  double give_up_s = 120;
  app.add_option("--give-up", give_up_s,
                 "Seconds without a controller after which the engine exits (0: never; the engines a cluster "
                 "starts use 0 and end with the cluster)")
      ->capture_default_str()
      ->check(non_negative_seconds());
  double controller_timeout_s = 10;
  app.add_option("--controller-timeout", controller_timeout_s,
                 "Seconds without any sign of life from the controller (a heartbeat answer or bytes of a message) "
                 "before the engine drops the connection and redials")
      ->capture_default_str()
      ->check(positive_seconds());
  std::vector<std::string> tags;
  app.add_option("--tag", tags, "A label k=v for selecting engines (repeatable), e.g. --tag gpu=true");
  app.add_option("--identity-dir", eopts.identity_dir,
                 "Directory of the engine's key and certificate (default: the shared engine identity beside the "
                 "connection file, else $TESTUDO_HOME/identity)");
  app.add_option("--identity-name", eopts.identity_name, "File stem: <name>-key.pem, <name>-cert.pem")
      ->capture_default_str();
  app.add_option("--key-passphrase-from", eopts.key_passphrase_from,
                 "If the key is encrypted: prompt, file:PATH, env:NAME or command:CMD");
  app.add_option("--trust-client", eopts.trust_clients,
                 "End-to-end sealing: open sealed requests from this client key fingerprint (repeatable; "
                 "`testudo keys fingerprint` prints yours; `cluster start` passes its owner's). Default, with no "
                 "--client-cafile either: the key of the user running the engine ($TESTUDO_HOME/identity), if any");
  app.add_option("--client-cafile", eopts.client_cafile,
                 "End-to-end sealing: open sealed requests from clients whose certificates this CA issued")
      ->check(CLI::ExistingFile);

  bool restart = false;
  SupervisorOptions supervisor;
  int restart_window_s = 60;
  app.add_flag("--restart", restart, "Start the engine again when it dies (with backoff; see --restart-limit)");
  app.add_option("--restart-limit", supervisor.limit, "--restart: restarts allowed within --restart-window")
      ->capture_default_str();
  app.add_option("--restart-window", restart_window_s, "--restart: seconds over which --restart-limit counts")
      ->capture_default_str();

  std::string ssh_gateway;
  std::vector<std::string> ssh_args;
  app.add_option("--ssh", ssh_gateway,
                 "Reach the controller through an SSH tunnel via this gateway (user@host[:port]); the controller's "
                 "address is as the gateway sees it. Default: the connection file's \"ssh\" gateway, when the "
                 "controller is on another host");
  app.add_option("--ssh-option", ssh_args, "An ssh option for --ssh (repeatable; write --ssh-option=-F --ssh-option=FILE)");

  if (auto done = parse_command_line(app, argc, argv)) return *done;

  if (Status st = common.apply_log_level(); !st.ok()) return fail(st);
  for (const auto& tag : tags) {
    auto eq = tag.find('=');
    if (eq == std::string::npos || eq == 0) return fail(invalid_argument("--tag takes k=v, got '" + tag + "'"));
    eopts.tags.emplace_back(tag.substr(0, eq), tag.substr(eq + 1));
  }
  eopts.reconnect_give_up = seconds(give_up_s);
  eopts.controller_timeout = seconds(controller_timeout_s);
  // Heartbeats go out several times per timeout, at most once a second.
  eopts.heartbeat_interval = std::min(eopts.heartbeat_interval, eopts.controller_timeout / 4);
  if (eopts.connection_file.empty()) eopts.connection_file = profile_paths(common.profile).engine_connection_file;
  if (!log_file.empty() && !log::set_file(log_file)) return fail(unavailable("cannot open log file " + log_file));
  if (Status st = trust_own_client_key_by_default(eopts); !st.ok()) return fail(st);
  common.apply_log_rotation();
  // A closed pipe must not kill the engine mid-write; writes report EPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  if (restart) {
    // Before anything else starts: the supervisor forks the engine, which carries on below.
    supervisor.window = std::chrono::seconds(restart_window_s);
    const int code = supervise_engine(supervisor, [](const std::string& line) { LOG_WARN("engine") << line; });
    if (code >= 0) return code;
  }

  // Opened before the engine starts its threads (the tunnel forks ssh); kept for its lifetime.
  std::unique_ptr<tunnel::SshForward> forward;
  auto info = auth::load_connection_file(eopts.connection_file, wire::Role::kEngine);
  // --ssh, else the connection file's gateway when the controller is on another host. (An
  // unreadable file is the engine's own error to report, below.)
  if (ssh_gateway.empty() && info.ok() && !net::is_address_of_this_host(info->host)) ssh_gateway = info->ssh;
  if (!ssh_gateway.empty()) {
    if (!info.ok()) return fail(info.status());
    auto opened = tunnel::SshForward::open(ssh_gateway, info->host, info->port, ssh_args, std::chrono::seconds(30));
    if (!opened.ok()) return fail(opened.status());
    forward = std::move(opened).value();
    eopts.dial_host = "127.0.0.1";
    eopts.dial_port = forward->local_port();
    LOG_INFO("engine") << "reaching the controller at " << info->host << ":" << info->port << " through an SSH tunnel via "
                       << ssh_gateway;
  }

  auto e = engine::Engine::create(eopts);
  if (!e.ok()) return fail(e.status());
  Status st = (*e)->run();
  return st.ok() ? kExitOk : fail(st);
}

}  // namespace testudo::cli

int main(int argc, char** argv) { return testudo::cli::engine_main(argc, argv); }
