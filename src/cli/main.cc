// The `testudo` command: a thin shell over the controller, client and launch libraries.
// Every subcommand has --help. Secrets never appear in argv: everything secret is read from
// the profile's owner-only files.
//
// `testudo engine ...` is the one subcommand this executable does not run itself: it execs
// testudo-engine from the same directory (engine_main.cc), the only executable that embeds
// CPython, so the controller and the client commands never map an interpreter.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <functional>
#include <cstdio>
#include <iostream>
#include <thread>

#include "base/log.h"
#include "base/profile.h"
#include "cli/common_options.h"
#include "cli/login_options.h"
#include "cli/engines.h"
#include "cli/keys.h"
#include "cli/launcher_args.h"
#include "cli/profile_config.h"
#include "cli/targets.h"
#include "cli/users.h"
#include "controller/controller.h"
#include "launch/launcher.h"
#include "testudo/client.h"
#include "tunnel/ssh_forward.h"

namespace testudo::cli {
namespace {

int fail(const Status& st) { return report_failure("testudo", st); }

struct ClientArgs {
  std::string file;
  std::string targets = "all";
  double timeout = 0;  // seconds to wait for results; 0: no limit
  std::string key_passphrase_from;
  std::string ssh_gateway;
  std::vector<std::string> ssh_args;
  LoginArgs login;
  bool e2e = false;     // --e2e: sealing required
  bool no_e2e = false;  // --no-e2e: sealing off
  std::vector<std::string> engine_keys;
  std::string engine_cafile;
  std::unique_ptr<tunnel::SshForward> forward;  // open while the command runs

  void add_to(CLI::App* app, bool with_targets) {
    app->add_option("--file", file, "Client connection file (default: the profile's controller-client.json)");
    if (with_targets) {
      app->add_option("-t,--targets", targets, "Engines: all, an id list like 0,2, or a slice like ::2 or 1::2")
          ->capture_default_str();
    }
    app->add_option("--timeout", timeout, "Seconds to wait for results (0: no limit)")
        ->capture_default_str()
        ->check(non_negative_seconds());
    app->add_option("--key-passphrase-from", key_passphrase_from,
                    "If your key is encrypted: prompt, file:PATH, env:NAME or command:CMD");
    app->add_option("--ssh", ssh_gateway,
                    "Reach the controller through an SSH tunnel via this gateway (user@host[:port]); default: the "
                    "connection file's \"ssh\" gateway, when the controller is on another host");
    app->add_option("--ssh-option", ssh_args,
                    "An ssh option for --ssh (repeatable; write --ssh-option=-F --ssh-option=FILE)");
    login.add_to(app);
    auto* required = app->add_flag(
        "--e2e", e2e,
        "Require end-to-end sealing: fail rather than run unsealed (the default seals whenever this client can: "
        "its own key, not a login, and a root for engine keys; docs/security.md)");
    app->add_flag("--no-e2e", no_e2e,
                  "Do not seal end to end: the controller can then read and alter requests and results")
        ->excludes(required);
    app->add_option("--engine-key", engine_keys,
                    "Sealing: an engine key fingerprint to trust (repeatable; default: the profile's shared engine "
                    "certificate)");
    app->add_option("--engine-cafile", engine_cafile, "Sealing: trust engines whose certificates this CA issued")
        ->check(CLI::ExistingFile);
  }
  std::chrono::milliseconds wait() const { return timeout > 0 ? seconds(timeout) : std::chrono::hours(24 * 365); }
};

StatusOr<std::unique_ptr<Client>> connect_client(const std::string& profile, ClientArgs& args) {
  ClientOptions o;
  o.profile = profile;
  o.connection_file = args.file;
  o.key_passphrase_from = args.key_passphrase_from;
  TESTUDO_ASSIGN_OR_RETURN(o.login, args.login.to_login());
  o.e2e = args.e2e ? ClientOptions::E2e::kRequired : args.no_e2e ? ClientOptions::E2e::kOff : ClientOptions::E2e::kWhenPossible;
  o.engine_keys = args.engine_keys;
  o.engine_cafile = args.engine_cafile;
  if (args.no_e2e && (!o.engine_keys.empty() || !o.engine_cafile.empty())) {
    return invalid_argument("--engine-key and --engine-cafile are for sealing, which --no-e2e turns off");
  }
  // --ssh, else the connection file's gateway when this is not the controller's host.
  auto at = controller_address(o);
  const std::string gateway = !args.ssh_gateway.empty() ? args.ssh_gateway : at.ok() ? at->ssh : std::string();
  if (!gateway.empty()) {
    if (!at.ok()) return at.status();
    TESTUDO_ASSIGN_OR_RETURN(args.forward,
                             tunnel::SshForward::open(gateway, at->host, at->port, args.ssh_args, std::chrono::seconds(30)));
    o.dial_host = "127.0.0.1";
    o.dial_port = args.forward->local_port();
  }
  auto c = Client::connect(o);
  if (!c.ok() && c.status().code() == StatusCode::kNotFound) {
    return not_found(c.status().message() + "\n  is a cluster running? start one with: testudo cluster start -n 4" +
                     (profile == "default" ? std::string() : " --profile " + profile));
  }
  return c;
}

StatusOr<std::vector<EngineId>> resolve_targets(Client& client, const std::string& spec) {
  TESTUDO_ASSIGN_OR_RETURN(auto ids, client.engine_ids());
  TESTUDO_ASSIGN_OR_RETURN(auto targets, select_targets(spec, ids));
  if (targets.empty()) return failed_precondition("no engines selected (the cluster has " + std::to_string(ids.size()) + ")");
  return targets;
}

// Prints output and errors as ipyparallel's %px does; returns false if any engine failed.
bool print_replies(const std::vector<EngineReply>& replies, const char* what) {
  bool all_ok = true;
  for (const auto& r : replies) {
    if (!r.stdout_text.empty()) {
      std::cout << "[stdout:" << r.engine_id << "] " << r.stdout_text;
      if (r.stdout_text.back() != '\n') std::cout << "\n";
    }
    if (!r.stderr_text.empty()) {
      std::cerr << "[stderr:" << r.engine_id << "] " << r.stderr_text;
      if (r.stderr_text.back() != '\n') std::cerr << "\n";
    }
    if (!r.status.ok()) {
      all_ok = false;
      std::cerr << "[" << r.engine_id << ":" << what << "] ";
      if (r.remote_error) {
        std::cerr << r.remote_error->traceback;
        if (!r.remote_error->traceback.empty() && r.remote_error->traceback.back() != '\n') std::cerr << "\n";
        if (r.remote_error->traceback.empty()) std::cerr << r.remote_error->ename << ": " << r.remote_error->evalue << "\n";
      } else {
        std::cerr << r.status.message() << "\n";
      }
    }
  }
  std::cout.flush();
  return all_ok;
}

int run_controller(const std::string& profile, controller::ControllerOptions o, const std::string& log_file,
                   const CommonOptions& common) {
  o.profile = profile;
  if (!log_file.empty() && !log::set_file(log_file)) return fail(unavailable("cannot open log file " + log_file));
  common.apply_log_rotation();
  auto c = controller::Controller::create(o);
  if (!c.ok()) return fail(c.status());
  Status st = (*c)->run();
  return st.ok() ? kExitOk : fail(st);
}

// If argv is `testudo [--profile P] [--log-level L] engine ARGS...` (options of `app` that take
// a value, in any order), returns the index of "engine"; otherwise 0. Decided before CLI11
// parses anything, so that ARGS reach the engine untouched (its --help included).
int engine_subcommand_index(const CLI::App& app, int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "engine") return i;
    if (!arg.starts_with("--")) return 0;
    const auto eq = arg.find('=');
    const CLI::Option* option = app.get_option_no_throw(std::string(arg.substr(0, eq)));
    // A flag (--help) or an unknown option: the whole command line is CLI11's to parse.
    if (option == nullptr || option->get_items_expected_min() == 0) return 0;
    if (eq == std::string_view::npos) ++i;  // the option's value
  }
  return 0;
}

// Replaces this process with testudo-engine from this executable's directory, handing on
// every argument but the word "engine" (so --profile and --log-level before or after it mean
// what they mean to testudo-engine). The pid stays the same: whoever started `testudo engine`
// can signal and wait for the engine. Returns only if the exec failed.
int exec_engine(int argc, char** argv, int engine_index) {
  const std::string self = launch::self_executable();
  const std::string engine = launch::engine_program_beside(self);
  std::vector<char*> args{const_cast<char*>(engine.c_str())};
  for (int i = 1; i < argc; ++i) {
    if (i != engine_index) args.push_back(argv[i]);
  }
  args.push_back(nullptr);
  ::execv(engine.c_str(), args.data());
  const int err = errno;
  if (err == ENOENT) {
    return fail(not_found("`testudo engine` runs " + engine + ", which is missing: install " +
                          launch::kEngineProgramName + " in the same directory as " + self));
  }
  return fail(unavailable("cannot run " + engine + ": " + std::strerror(err)));
}

void say(const std::string& line) { std::cerr << "testudo: " << line << "\n"; }

int cluster_start(const std::string& profile, launch::ClusterOptions o, bool daemonize, double heartbeat_timeout) {
  o.profile = profile;
  if (heartbeat_timeout > 0) {
    o.controller_args.insert(o.controller_args.end(), {"--heartbeat-timeout", std::to_string(heartbeat_timeout)});
  }
  // Block SIGINT/SIGTERM now so a Ctrl-C during start-up is seen by sigwait below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (!daemonize) pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  auto started = launch::start_cluster(o, say);
  if (!started.ok()) return fail(started.status());
  std::string where = profile_paths(profile).client_connection_file;
  if (daemonize) {
    say("cluster running in the background: controller pid " + std::to_string(started->controller) + ", " +
        std::to_string(o.engines) + " engines; client connection file " + where);
    say("stop it with: testudo cluster stop" + (profile == "default" ? std::string() : " --profile " + profile));
    return kExitOk;
  }
  say("cluster running: " + std::to_string(o.engines) + " engines; client connection file " + where);
  say("press Ctrl-C to stop it");
  int sig = 0;
  sigwait(&stop_signals, &sig);
  say("stopping the cluster");
  Status st = launch::stop_cluster(profile, std::chrono::seconds(5), say);
  return st.ok() ? kExitOk : fail(st);
}

int cmd_list_clusters() {
  std::printf("%-20s %-8s %-10s %s\n", "PROFILE", "STATE", "CONTROLLER", "ENGINES");
  for (const launch::ClusterEntry& c : launch::list_clusters()) {
    std::printf("%-20s %-8s %-10d %zu/%zu\n", c.profile.c_str(), c.controller_alive ? "running" : "stale",
                static_cast<int>(c.processes.controller), c.engines_alive, c.processes.engines.size());
  }
  return kExitOk;
}

// Connects, resolves --targets, sends one request with `send` and waits for the replies.
StatusOr<std::vector<EngineReply>> run_on_targets(
    const std::string& profile, ClientArgs& args,
    const std::function<AsyncResult(Client&, const std::vector<EngineId>&)>& send) {
  TESTUDO_ASSIGN_OR_RETURN(auto client, connect_client(profile, args));
  TESTUDO_ASSIGN_OR_RETURN(auto targets, resolve_targets(*client, args.targets));
  return send(*client, targets).get(args.wait());
}

int cmd_exec(const std::string& profile, ClientArgs& args, std::string code) {
  if (code == "-") code.assign(std::istreambuf_iterator<char>(std::cin), {});
  auto replies = run_on_targets(profile, args, [&](Client& c, const auto& targets) { return c.execute(targets, code); });
  if (!replies.ok()) return fail(replies.status());
  return print_replies(*replies, "execute") ? kExitOk : kExitError;
}

int cmd_push(const std::string& profile, ClientArgs& args, const std::vector<std::string>& assignments) {
  std::vector<std::pair<std::string, std::string>> values;
  for (const auto& a : assignments) {
    auto eq = a.find('=');
    if (eq == std::string::npos || eq == 0) {
      return fail(invalid_argument("push takes NAME=VALUE pairs with Python literals, e.g. a=5 'b=[1, 2]'; got '" + a + "'"));
    }
    values.emplace_back(a.substr(0, eq), a.substr(eq + 1));
  }
  auto replies =
      run_on_targets(profile, args, [&](Client& c, const auto& targets) { return c.push_literals(targets, values); });
  if (!replies.ok()) return fail(replies.status());
  return print_replies(*replies, "push") ? kExitOk : kExitError;
}

int cmd_pull(const std::string& profile, ClientArgs& args, const std::vector<std::string>& names, bool by_engine) {
  auto replies = run_on_targets(profile, args, [&](Client& c, const auto& targets) { return c.pull_repr(targets, names); });
  if (!replies.ok()) return fail(replies.status());
  if (!print_replies(*replies, "pull")) return kExitError;
  auto value_of = [&](const EngineReply& r) {
    std::string out;
    if (names.size() > 1) out += "[";
    for (std::size_t i = 0; i < r.value.size(); ++i) out += (i ? ", " : "") + r.value[i].to_string();
    if (names.size() > 1) out += "]";
    return out;
  };
  if (by_engine) {
    for (const auto& r : *replies) std::cout << "[" << r.engine_id << "] " << value_of(r) << "\n";
  } else {
    // As ipyparallel's rc[:]['c']: one list, in target order.
    std::cout << "[";
    for (std::size_t i = 0; i < replies->size(); ++i) std::cout << (i ? ", " : "") << value_of((*replies)[i]);
    std::cout << "]\n";
  }
  return kExitOk;
}

int cmd_status(const std::string& profile, ClientArgs& args, bool as_json) {
  auto client = connect_client(profile, args);
  if (!client.ok()) return fail(client.status());
  auto text = (*client)->cluster_status();
  if (!text.ok()) return fail(text.status());
  if (as_json) {
    std::cout << *text << "\n";
    return kExitOk;
  }
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded()) return fail(data_loss("malformed status from the controller"));
  // After a restart with --reuse, which engines of the previous run are back with their ids
  // (one line, so that the engine table stays where scripts look for it).
  std::string since = "?";
  if (j.contains("started_at") && j["started_at"].is_string()) since = j["started_at"].get<std::string>();
  if (j.contains("resumed") && j["resumed"].is_boolean() && j["resumed"].get<bool>()) {
    std::string back;
    if (j.contains("engines_back") && j["engines_back"].is_array()) {
      for (const auto& id : j["engines_back"]) {
        if (id.is_number_unsigned()) back += (back.empty() ? "" : ", ") + std::to_string(id.get<std::uint64_t>());
      }
    }
    since += ", restarted with --reuse; " +
             (back.empty() ? std::string("no engine of the previous run is back yet")
                           : "back with their ids: engine(s) " + back);
    std::string missing;
    if (j.contains("engines_not_back") && j["engines_not_back"].is_array()) {
      for (const auto& id : j["engines_not_back"]) {
        if (id.is_number_unsigned()) missing += (missing.empty() ? "" : ", ") + std::to_string(id.get<std::uint64_t>());
      }
    }
    const auto missing_count = j.value("engines_not_back_count", 0ull);
    if (missing_count > 0) {
      since += "; not back: engine(s) " + missing +
               (missing_count > j["engines_not_back"].size() ? " and " + std::to_string(missing_count - j["engines_not_back"].size()) + " more" : "");
    }
    const auto lost = j.value("tasks_lost_at_start", 0ull);
    if (lost > 0) since += "; " + std::to_string(lost) + " task(s) reported lost by the restart";
  }
  std::printf("controller up %.0f s (since %s); %zu engine(s), %d client(s), %llu task(s) done, %llu in flight\n",
              j.value("uptime_s", 0.0), since.c_str(), j["engines"].size(), j.value("clients", 0),
              static_cast<unsigned long long>(j.value("tasks_completed", 0ull)),
              static_cast<unsigned long long>(j.value("tasks_in_flight", 0ull)));
  // Flow control: what clients' requests hold here, and whether any client is waiting for it.
  if (j.contains("queue_limit_bytes")) {
    auto mib = [](std::uint64_t bytes) { return std::to_string((bytes + (1u << 19)) >> 20) + " MiB"; };
    std::printf("queued requests: %s held (limits: %s per client, %s in all); %zu client(s) waiting for room now, "
                "%llu wait(s) since start; %llu large request(s) relayed as they arrived, %llu large repl%s "
                "spooled to disk on arrival; %llu repl%s sent later from the task store to clients not reading\n",
                mib(j.value("queued_bytes", 0ull)).c_str(), mib(j.value("client_queue_limit_bytes", 0ull)).c_str(),
                mib(j.value("queue_limit_bytes", 0ull)).c_str(), j.value("clients_paused", std::size_t{0}),
                static_cast<unsigned long long>(j.value("client_pauses", 0ull)),
                static_cast<unsigned long long>(j.value("requests_relayed", 0ull)),
                static_cast<unsigned long long>(j.value("replies_spooled", 0ull)),
                j.value("replies_spooled", 0ull) == 1 ? "y" : "ies",
                static_cast<unsigned long long>(j.value("replies_deferred", 0ull)),
                j.value("replies_deferred", 0ull) == 1 ? "y" : "ies");
    std::printf("bulk path (sealed bodies spliced between data connections, never read here): %llu transfer(s), "
                "%s moved, %llu failed, %llu data connection(s) refused (bad tickets), %llu late (their task "
                "had ended)\n",
                static_cast<unsigned long long>(j.value("bulk_transfers", 0ull)),
                mib(j.value("bulk_bytes", 0ull)).c_str(), static_cast<unsigned long long>(j.value("bulk_failed", 0ull)),
                static_cast<unsigned long long>(j.value("bulk_refused", 0ull)),
                static_cast<unsigned long long>(j.value("bulk_late", 0ull)));
  }
  // How peers get in, and what the controller can see: said plainly (docs/e2e-design.md).
  if (j.contains("trust") && j["trust"].is_string()) {
    std::string logins;
    if (j.contains("logins") && j["logins"].is_array()) {
      for (const auto& m : j["logins"]) {
        if (m.is_string()) logins += (logins.empty() ? "" : ", ") + m.get<std::string>();
      }
    }
    std::printf("security: trust mode %s; logins: %s\n", j["trust"].get<std::string>().c_str(),
                logins.empty() ? "key" : logins.c_str());
  }
  // Whether this client seals decides what the controller can read of its work; when it
  // does, which engines it verified (its own roots decide, not the controller).
  const Client::Sealing sealing = (*client)->sealing();
  if (sealing.on) {
    std::printf("end-to-end sealing: on for this client (the controller relays its requests and results without "
                "reading or altering them; it sees who, what kind, which engines, sizes and timing)\n");
    if (args.engine_keys.empty() && args.engine_cafile.empty()) {
      std::printf("  engines are checked against the cluster's shared engine certificate, which the controller made at "
                  "its first start: this holds against a controller process taken over later, not against whoever "
                  "owns the controller's host and user (pin engine keys or use a CA: docs/security.md)\n");
    }
    auto verdicts = (*client)->sealing_check();
    if (!verdicts.ok()) return fail(verdicts.status());
    std::size_t verified = 0;
    for (const auto& v : *verdicts) verified += v.verified ? 1 : 0;
    std::printf("end-to-end: %zu of %zu engine(s) verified by this client\n", verified, verdicts->size());
    for (const auto& v : *verdicts) {
      if (!v.verified) std::printf("  engine %u: %s\n", v.engine, v.detail.c_str());
    }
  } else {
    std::printf("end-to-end sealing: OFF for this client: %s; the controller can read and alter its requests and "
                "results\n",
                sealing.why_off.c_str());
  }
  // Host and restarts come from what each engine reported at registration (its tags).
  nlohmann::json tags = nlohmann::json::object();
  if (auto listed = (*client)->engines_json(); listed.ok()) {
    auto parsed = nlohmann::json::parse(*listed, nullptr, false);
    if (parsed.is_object() && parsed.contains("tags") && parsed["tags"].is_object()) tags = parsed["tags"];
  }
  if (!j["engines"].empty()) {
    std::printf("%-6s %-22s %9s %10s %12s  %-16s %s\n", "engine", "address", "in flight", "tasks done", "heartbeat",
                "host", "restarts");
  }
  for (const auto& e : j["engines"]) {
    const std::string id = std::to_string(e.value("id", 0u));
    const nlohmann::json facts = tags.contains(id) && tags[id].is_object() ? tags[id] : nlohmann::json::object();
    const auto restarts = facts.contains("restarts") && facts["restarts"].is_number_integer()
                              ? std::to_string(facts["restarts"].get<long long>())
                              : std::string("-");
    std::printf("%-6u %-22s %9llu %10llu %10.1f s  %-16s %s\n", e.value("id", 0u),
                e.value("address", std::string()).c_str(), static_cast<unsigned long long>(e.value("in_flight", 0ull)),
                static_cast<unsigned long long>(e.value("tasks_done", 0ull)), e.value("last_heartbeat_s", 0.0),
                facts.value("hostname", std::string("-")).c_str(), restarts.c_str());
  }
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"testudo: a parallel-computing cluster with security on by default.\n"
               "Start a cluster with `testudo cluster start -n 4`, then run code on it with\n"
               "`testudo exec`, `testudo push`, `testudo pull`, or from Python with `import testudo`."};
  app.require_subcommand(1);
  app.fallthrough();  // --profile and --log-level may follow the subcommand
  CommonOptions common;
  common.add_to(app);
  const std::string& profile = common.profile;

  // controller
  controller::ControllerOptions copts;
  std::string controller_log;
  double heartbeat_timeout_s = 10;
  auto* c = app.add_subcommand("controller", "Run a controller (hub and scheduler) in the foreground");
  c->add_option("--ip", copts.ip, "Address to listen on (loopback unless told otherwise; 0.0.0.0, :: or * for every interface)")
      ->capture_default_str();
  c->add_option("--port", copts.port, "Port to listen on (0: random, or the last one with --reuse)")->capture_default_str();
  c->add_option("--location", copts.location,
                "Host name or address written into connection files, which clients and engines dial "
                "(default: --ip, or this host's name when --ip is every interface)");
  c->add_flag("--reuse", copts.reuse, "Reuse key, certificate, capabilities and port so connection files stay valid");
  double port_wait_s = -1;
  c->add_option("--port-wait", port_wait_s,
                "Seconds to wait for a fixed port (--port, or --reuse's) that another process holds (default: 60 "
                "with --reuse, else 0)")
      ->check(non_negative_seconds());
  c->add_option("--heartbeat-timeout", heartbeat_timeout_s, "Seconds of engine silence before it is declared dead")
      ->capture_default_str()
      ->check(positive_seconds());
  c->add_option("--log-file", controller_log, "Write the log here instead of stderr");
  c->add_option("--scheme", copts.scheme, "Load balancing: leastload, lru, twobin, weighted or random")
      ->capture_default_str();
  c->add_option("--hwm", copts.hwm,
                "Load-balanced tasks one engine holds at once: auto (as many as it runs in 1 ms, 2 to 32) "
                "or a number (0: no limit)")
      ->capture_default_str();
  c->add_option("--result-max-bytes", copts.result_max_bytes, "Results kept in the task store, in bytes")
      ->capture_default_str();
  c->add_option("--max-message-bytes", copts.max_message_bytes,
                "Largest message a client or engine may send (a push, a request, a result), in bytes; a bigger one "
                "is refused with this limit named")
      ->capture_default_str()
      ->check(CLI::Range(std::uint64_t{1} << 20, std::uint64_t{1} << 40));
  c->add_option("--client-queue-bytes", copts.client_queue_bytes,
                "Bytes of one client's requests the controller holds for engines before it reads no more from "
                "that client until they drain (the client waits; nothing is dropped)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--queue-bytes", copts.queue_bytes,
                "The same for all clients together")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--client-max-tasks", copts.client_max_tasks,
                "Unfinished tasks (queued, waiting or running) one client may have before the controller reads no "
                "more from it until some finish (the client waits; nothing is dropped; 0: no limit)")
      ->capture_default_str();
  c->add_option("--client-reply-queue-bytes", copts.client_reply_queue_bytes,
                "Bytes of replies a client has not read yet that the controller holds for it; past this, its "
                "further replies are sent from the task store as it reads (nothing is dropped; 0: no limit)")
      ->capture_default_str();
  c->add_option("--max-tasks", copts.max_tasks,
                "The same for all clients' unfinished tasks together: a client that sends while there are more "
                "is not read until some finish (0: no limit)")
      ->capture_default_str();
  c->add_option("--relay-from-bytes", copts.relay_from_bytes,
                "A direct request to engines that can take it now, with at least this many bytes after its "
                "first part (a large push or apply argument), is forwarded while it arrives, and a reply that "
                "large is written to the task store's file while it arrives and sent on from there: the "
                "controller holds an 8 MiB window of either, not all of it (0: receive every message whole "
                "first)")
      ->capture_default_str();
  c->add_option("--trust", copts.trust,
                "Who may connect: manual (keys in security/trust/), learn (unknown keys wait for `testudo keys "
                "accept`), ca (certificates signed by --cafile)")
      ->capture_default_str();
  c->add_flag("--auto-accept", copts.auto_accept, "learn: admit unknown keys at once (trusted networks only)");
  c->add_option("--cafile", copts.cafile, "ca: PEM file of the CA whose certificates are admitted");
  c->add_option("--crlfile", copts.crlfile, "ca: the CA's revocation list (PEM); reloaded when it changes");
  c->add_option("--certfile", copts.certfile, "The controller's certificate (default: a self-signed one)");
  c->add_option("--keyfile", copts.keyfile, "The controller's private key, for --certfile");
  c->add_option("--key-passphrase-from", copts.key_passphrase_from,
                "If --keyfile is encrypted: prompt, file:PATH, env:NAME or command:CMD");
  c->add_option("--policy", copts.policy_file,
                "Authorization policy (JSON; see docs/security.md); reloaded on SIGHUP or change. Default: only "
                "the user running the controller may do anything");
  c->add_option("--users", copts.users_file,
                "Password logins: the user file (see `testudo users`); re-read when it changes. Default: the "
                "profile's security/users.json if it exists, else no password logins");
  c->add_option("--token-issuers", copts.token_issuers,
                "Accept JSON Web Token logins from the issuers in this file (JSON; see docs/security.md, \"Tokens\")");
  c->add_option("--keytab", copts.keytab,
                "Accept Kerberos logins with this keytab (owner-only: it holds the service key; docs/security.md)");
  c->add_option("--service-principal", copts.service_principal,
                "With --keytab: the service principal (default testudo/<the connection files' host> in the default "
                "realm)");
  c->add_option("--audit-log", copts.audit_log, "Audit log, JSON lines (default: <profile>/log/audit.jsonl)");
  c->add_option("--audit-max-bytes", copts.audit_max_bytes,
                "Rotate the audit log beyond this size, keeping 8 old files (0: never)")
      ->capture_default_str();
  c->add_option("--tls-min-version", copts.tls_min_version, "1.3, or 1.2 (ECDHE + AEAD suites only)")
      ->capture_default_str();
  c->add_option("--tls-ciphersuites", copts.tls_ciphersuites,
                "TLS 1.3 suites, e.g. TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
  bool no_trust_local = false;
  c->add_flag("--no-trust-local", no_trust_local,
              "Do not trust your own client key and the shared engine key automatically");
  c->add_option("--ssh-server", copts.ssh_server,
                "Write this SSH gateway (user@host[:port]) into the client connection file: clients off this host "
                "reach the controller through it");
  c->add_option("--engine-ssh-server", copts.engine_ssh_server,
                "The same for the engine connection file: engines off this host tunnel through it");
  c->add_option("--owner-cert", copts.owner_cert_file,
                "The owner's client certificate (PEM) instead of your own client identity, e.g. for a controller "
                "started on this host by a user of another (cluster start --controller ssh)");
  c->add_option("--engine-cert", copts.engine_cert_file,
                "The shared engine identity's certificate (PEM) instead of the profile's security/engine-cert.pem");

  // engine: listed here for --help; run by exec_engine before parsing (testudo-engine --help
  // lists its options).
  app.add_subcommand("engine", "Run an engine: connect to a controller and execute Python code for it "
                               "(testudo-engine)");

  // cluster
  auto* cluster = app.add_subcommand("cluster", "Start or stop a local cluster (controller + engines)");
  cluster->require_subcommand(1);
  cluster->fallthrough();
  launch::ClusterOptions lopts;
  lopts.engines = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  bool daemonize = false;
  double start_timeout = 60;
  double cluster_heartbeat = 0;
  auto* start = cluster->add_subcommand("start", "Start a controller and N engines on this machine");
  start->footer("Settings can live in the profile: <profile>/cluster.json, e.g. {\"n\": 8, \"ip\": \"0.0.0.0\", "
                "\"tag\": [\"site=lab\"]} (long option names without dashes); the command line wins.");
  start->add_option("-n,--n", lopts.engines, "Number of engines (default: number of cores)")->capture_default_str();
  start->add_option("--ip", lopts.ip, "Address the controller listens on (0.0.0.0, :: or * for every interface)")
      ->capture_default_str();
  start->add_flag("--reuse", lopts.reuse, "Reuse the controller's key, capabilities and port");
  start->add_flag("--daemonize", daemonize, "Return once the cluster is ready and leave it running");
  start->add_option("--timeout", start_timeout, "Seconds to wait for every engine to register")
      ->capture_default_str()
      ->check(positive_seconds());
  start->add_option("--heartbeat-timeout", cluster_heartbeat, "Seconds of engine silence before it is declared dead")
      ->check(positive_seconds());
  std::string controller_kind = "local";
  start->add_option("--controller", controller_kind,
                    "Where the controller runs: local (this machine) or ssh (on --controller-host, owned by you; "
                    "listens on every interface there unless --ip says otherwise)")
      ->capture_default_str();
  start->add_option("--controller-host", lopts.controller_host, "ssh: the controller's host (host, user@host or an "
                                                                 "ssh config alias); --ssh-option and --remote-testudo apply");
  start->add_option("--controller-dir", lopts.controller_dir,
                    "ssh: where the controller's files go on its host (default .testudo/remote/<profile>/controller in "
                    "the remote home)");
  std::vector<std::string> cluster_tags;
  start->add_option("--tag", cluster_tags, "A label k=v given to every engine (repeatable)");
  LauncherArgs cluster_launcher;
  cluster_launcher.add_to(start);
  std::string cluster_scheme;
  start->add_option("--scheme", cluster_scheme, "Load balancing: leastload (default), lru, twobin, weighted, random");
  std::string cluster_hwm;
  start->add_option("--hwm", cluster_hwm, "As for `testudo controller --hwm` (default auto)");
  // Controller security options passed through as they are (see `testudo controller --help`).
  std::vector<std::pair<std::string, std::string>> passthrough_values = {
      {"--trust", ""}, {"--policy", ""}, {"--users", ""}, {"--cafile", ""}, {"--crlfile", ""}, {"--audit-log", ""},
      {"--token-issuers", ""}, {"--tls-min-version", ""}, {"--tls-ciphersuites", ""}, {"--location", ""}, {"--port", ""},
      {"--ssh-server", ""}, {"--engine-ssh-server", ""}, {"--keytab", ""},
      {"--service-principal", ""}, {"--max-message-bytes", ""}, {"--client-queue-bytes", ""}, {"--queue-bytes", ""},
      {"--relay-from-bytes", ""}, {"--client-max-tasks", ""}, {"--max-tasks", ""},
      {"--client-reply-queue-bytes", ""}};
  for (auto& [flag, value] : passthrough_values) {
    start->add_option(flag, value, "As for `testudo controller " + flag + "`");
  }
  bool cluster_auto_accept = false;
  start->add_flag("--auto-accept", cluster_auto_accept, "As for `testudo controller --auto-accept`");
  auto* list_clusters = cluster->add_subcommand("list", "List the clusters started on this machine, one per profile");
  auto* clean_clusters =
      cluster->add_subcommand("clean", "Remove the pid files of clusters whose controller is gone (and their engines)");
  auto* stop = cluster->add_subcommand("stop", "Stop the cluster of this profile");
  double stop_grace = 10;
  stop->add_option("--timeout", stop_grace, "Seconds to wait before terminating processes")
      ->capture_default_str()
      ->check(non_negative_seconds());

  // client commands
  KeysCommand keys(app);
  UsersCommand users(app);
  EnginesCommand engines(app);
  ClientArgs exec_args, push_args, pull_args, status_args;
  std::string code;
  auto* ex = app.add_subcommand("exec", "Execute Python code on engines (like view.execute)");
  exec_args.add_to(ex, true);
  ex->add_option("code", code, "Python code; - reads it from stdin")->required();
  std::vector<std::string> assignments;
  auto* push = app.add_subcommand("push", "Set variables on engines from Python literals (like view.push)");
  push_args.add_to(push, true);
  push->add_option("assignments", assignments, "NAME=VALUE pairs, VALUE a Python literal")->required();
  std::vector<std::string> names;
  bool by_engine = false;
  auto* pull = app.add_subcommand("pull", "Print the repr of variables on engines (like view.pull)");
  pull_args.add_to(pull, true);
  pull->add_option("names", names, "Variable names")->required();
  pull->add_flag("--by-engine", by_engine, "One line per engine instead of one list");
  bool as_json = false;
  auto* status = app.add_subcommand("status", "Show the controller's engines, clients and tasks");
  status_args.add_to(status, false);
  status->add_flag("--json", as_json, "Print the raw JSON report");

  if (int engine_index = engine_subcommand_index(app, argc, argv); engine_index > 0) {
    return exec_engine(argc, argv, engine_index);
  }
  if (auto done = parse_command_line(app, argc, argv)) return *done;

  if (Status st = common.apply_log_level(); !st.ok()) return fail(st);

  // A closed pipe (testudo pull | head) must not kill us mid-write; writes report EPIPE.
  std::signal(SIGPIPE, SIG_IGN);

  if (*c) {
    copts.heartbeat_timeout = seconds(heartbeat_timeout_s);
    copts.trust_local = !no_trust_local;
    copts.port_wait = seconds(port_wait_s >= 0 ? port_wait_s : copts.reuse ? 60 : 0);
    return run_controller(profile, copts, controller_log, common);
  }
  if (*start) {
    if (Status st = apply_profile_config(*start, profile_paths(profile).root + "/cluster.json"); !st.ok()) {
      return fail(st);
    }
    lopts.timeout = seconds(start_timeout);
    if (controller_kind == "ssh") {
      if (lopts.controller_host.empty()) return fail(invalid_argument("--controller ssh needs --controller-host HOST"));
      if (start->get_option("--ip")->count() == 0) lopts.ip = "*";  // loopback there would be out of reach
      for (const char* flag :
           {"--policy", "--users", "--cafile", "--crlfile", "--audit-log", "--token-issuers", "--keytab"}) {
        if (start->get_option(flag)->count() > 0) {
          return fail(invalid_argument(std::string(flag) + " names a file here, which a controller on " +
                                       lopts.controller_host + " cannot read: start it there by hand (docs/deploy.md)"));
        }
      }
    } else if (controller_kind != "local") {
      return fail(invalid_argument("--controller must be local or ssh, not '" + controller_kind + "'"));
    } else if (!lopts.controller_host.empty() || !lopts.controller_dir.empty()) {
      return fail(invalid_argument("--controller-host and --controller-dir are for --controller ssh"));
    }
    auto launcher = cluster_launcher.options();
    if (!launcher.ok()) return fail(launcher.status());
    lopts.launcher = *launcher;
    lopts.engines = LauncherArgs::engine_count(*launcher, start, lopts.engines);
    for (auto& arg : cluster_launcher.engine_args()) lopts.engine_args.push_back(arg);
    for (const auto& tag : cluster_tags) {
      lopts.engine_args.push_back("--tag");
      lopts.engine_args.push_back(tag);
    }
    if (!cluster_scheme.empty()) lopts.controller_args.insert(lopts.controller_args.end(), {"--scheme", cluster_scheme});
    if (!cluster_hwm.empty()) lopts.controller_args.insert(lopts.controller_args.end(), {"--hwm", cluster_hwm});
    for (const auto& [flag, value] : passthrough_values) {
      if (value.empty()) continue;
      // Files are named absolutely: the controller may run from another directory.
      const bool is_path = flag == "--policy" || flag == "--users" || flag == "--cafile" || flag == "--crlfile" ||
                           flag == "--audit-log" || flag == "--token-issuers" || flag == "--keytab";
      lopts.controller_args.insert(lopts.controller_args.end(),
                                   {flag, is_path ? std::filesystem::absolute(value).string() : value});
    }
    if (cluster_auto_accept) lopts.controller_args.push_back("--auto-accept");
    // End-to-end sealing in CA mode: the engines started on this host open sealed requests
    // from every client the CA issued (as the controller admits them), not only the owner's,
    // reading the CA file themselves. Engines on other hosts cannot read this path: they are
    // given --client-cafile by whoever starts them (docs/security.md, "End-to-end sealing").
    std::string trust, cafile;
    for (const auto& [flag, value] : passthrough_values) {
      if (flag == "--trust") trust = value;
      if (flag == "--cafile") cafile = value;
    }
    if (trust == "ca" && !cafile.empty() &&
        (launcher->kind == launch::EngineLauncherOptions::Kind::kLocal ||
         launcher->kind == launch::EngineLauncherOptions::Kind::kMpi)) {
      lopts.engine_args.insert(lopts.engine_args.end(), {"--client-cafile", std::filesystem::absolute(cafile).string()});
    }
    return cluster_start(profile, lopts, daemonize, cluster_heartbeat);
  }
  if (*list_clusters) return cmd_list_clusters();
  if (*clean_clusters) {
    for (const std::string& cleaned : launch::clean_clusters()) say("removed the stale cluster of profile " + cleaned);
    return kExitOk;
  }
  if (*stop) {
    Status st = launch::stop_cluster(profile, seconds(stop_grace), say);
    return st.ok() ? kExitOk : fail(st);
  }
  if (*ex) return cmd_exec(profile, exec_args, code);
  if (*push) return cmd_push(profile, push_args, assignments);
  if (*pull) return cmd_pull(profile, pull_args, names, by_engine);
  if (*status) return cmd_status(profile, status_args, as_json);
  if (keys.chosen()) return keys.run(profile);
  if (users.chosen()) return users.run(profile);
  if (engines.chosen()) return engines.run(profile);
  return kExitUsage;
}

}  // namespace testudo::cli
