#include "cli/engines.h"

#include "cli/common_options.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <map>

#include "base/profile.h"
#include "cli/launcher_args.h"
#include "launch/launcher.h"
#include "testudo/client.h"

namespace testudo::cli {
namespace {

int fail(const Status& st) {
  std::cerr << "testudo engines: " << st.message() << "\n";
  return st.code() == StatusCode::kInvalidArgument ? 2 : 1;
}

void say(const std::string& line) { std::cerr << "testudo: " << line << "\n"; }

struct EngineFacts {
  EngineId id = 0;
  std::string host;
};

// pid -> engine id and host, as the engines reported them at registration; empty if the
// controller cannot be asked.
std::map<pid_t, EngineFacts> registered_engines(const std::string& profile) {
  std::map<pid_t, EngineFacts> out;
  ClientOptions co;
  co.profile = profile;
  co.connect_timeout = std::chrono::milliseconds(3000);
  auto client = Client::connect(co);
  if (!client.ok()) return out;
  auto text = (*client)->engines_json();
  if (!text.ok()) return out;
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (!j.is_object() || !j.contains("tags") || !j["tags"].is_object()) return out;
  for (const auto& [id, facts] : j["tags"].items()) {
    // The process the launcher started: the engine, or its supervisor (--restart-engines).
    const char* key = facts.contains("supervisor_pid") ? "supervisor_pid" : "pid";
    if (!facts.is_object() || !facts.contains(key) || !facts[key].is_number_integer()) continue;
    out[facts[key].get<pid_t>()] = {static_cast<EngineId>(std::stoull(id)), facts.value("hostname", std::string())};
  }
  return out;
}

}  // namespace

struct EnginesCommand::Impl {
  CLI::App* engines = nullptr;
  CLI::App* start = nullptr;
  CLI::App* stop = nullptr;
  CLI::App* list = nullptr;

  launch::AddEnginesOptions add;
  LauncherArgs launcher;
  double start_timeout = 60;
  std::vector<std::string> tags;
  std::vector<pid_t> stop_pids;
  std::vector<EngineId> stop_ids;
  std::vector<std::string> stop_jobs;
  double stop_grace = 5;

  int run_start(const std::string& profile) {
    add.profile = profile;
    auto options = launcher.options();
    if (!options.ok()) return fail(options.status());
    add.launcher = *options;
    add.engines = LauncherArgs::engine_count(*options, start, add.engines);
    for (auto& arg : launcher.engine_args()) add.engine_args.push_back(arg);
    add.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(start_timeout * 1000));
    for (const auto& tag : tags) add.engine_args.insert(add.engine_args.end(), {"--tag", tag});
    auto added = launch::add_engines(add, say);
    if (!added.ok()) return fail(added.status());
    // For scripts: one pid a line, and "job:<id>" for a batch job.
    for (pid_t p : added->pids) std::printf("%d\n", static_cast<int>(p));
    for (const std::string& job : added->jobs) std::printf("job:%s\n", job.c_str());
    return 0;
  }

  int run_stop(const std::string& profile) {
    if (!stop_jobs.empty()) {
      auto cancelled = launch::cancel_jobs(profile, stop_jobs);
      if (!cancelled.ok()) return fail(cancelled.status());
      say("cancelled " + std::to_string(cancelled->size()) + " batch job" + (cancelled->size() == 1 ? "" : "s"));
      if (stop_pids.empty() && stop_ids.empty()) return 0;
    }
    std::vector<pid_t> pids = stop_pids;
    if (!stop_ids.empty()) {
      // Engine ids name engines anywhere; only those this machine started can be stopped here.
      const auto registered = registered_engines(profile);
      for (EngineId id : stop_ids) {
        auto it = std::find_if(registered.begin(), registered.end(), [&](const auto& e) { return e.second.id == id; });
        if (it == registered.end()) {
          return fail(not_found("engine " + std::to_string(id) + " is not registered with the cluster of profile '" +
                                profile + "'"));
        }
        pids.push_back(it->first);
      }
    }
    auto stopped = launch::stop_engines(profile, pids, std::chrono::milliseconds(static_cast<std::int64_t>(stop_grace * 1000)));
    if (!stopped.ok()) return fail(stopped.status());
    say("stopped " + std::to_string(stopped->size()) + " engine" + (stopped->size() == 1 ? "" : "s"));
    return 0;
  }

  int run_list(const std::string& profile) {
    auto procs = launch::read_cluster_file(profile);
    if (!procs.ok() || !launch::process_alive(procs->controller)) {
      return fail(failed_precondition("no cluster of profile '" + profile + "' is running on this machine"));
    }
    const auto registered = registered_engines(profile);
    std::printf("%-8s %-6s %-9s %s\n", "PID", "ID", "STATE", "HOST");
    for (const auto& job : procs->jobs) {
      std::printf("%-8s %-6s %-9s %s\n", ("job:" + job.id).c_str(), "-", "submitted",
                  launch::batch_system_name(job.system));
    }
    for (pid_t p : procs->engines) {
      auto it = registered.find(p);
      const bool alive = launch::process_alive(p);
      std::printf("%-8d %-6s %-9s %s\n", static_cast<int>(p),
                  it == registered.end() ? "-" : std::to_string(it->second.id).c_str(),
                  // Alive but no engine of that pid: starting, or a launcher process (mpiexec).
                  !alive ? "exited" : it == registered.end() ? "running" : "ready",
                  it == registered.end() ? "" : it->second.host.c_str());
    }
    return 0;
  }
};

EnginesCommand::EnginesCommand(CLI::App& app) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.engines = app.add_subcommand("engines", "Add, remove and list the engines of a running cluster on this machine");
  m.engines->require_subcommand(1);
  m.engines->fallthrough();

  m.start = m.engines->add_subcommand("start", "Start N more engines and wait until they are ready (prints their pids)");
  m.start->add_option("-n,--n", m.add.engines, "Number of engines to add")->capture_default_str();
  m.start->add_option("--tag", m.tags, "A label k=v given to every new engine (repeatable)");
  m.start->add_option("--timeout", m.start_timeout, "Seconds to wait for the new engines to register")
      ->capture_default_str()
      ->check(positive_seconds());
  m.launcher.add_to(m.start);

  m.stop = m.engines->add_subcommand("stop", "Stop engines of the cluster (all of them unless --pids or --ids)");
  m.stop->add_option("--pids", m.stop_pids, "Process ids of engines to stop (see `engines list`)")->delimiter(',');
  m.stop->add_option("--ids", m.stop_ids, "Engine ids to stop (engines started on this machine)")->delimiter(',');
  m.stop->add_option("--jobs", m.stop_jobs, "Batch jobs (slurm, pbs) to cancel")->delimiter(',');
  m.stop->add_option("--timeout", m.stop_grace, "Seconds to wait before killing an engine that does not exit")
      ->capture_default_str()
      ->check(non_negative_seconds());

  m.list = m.engines->add_subcommand("list", "List the engines this machine started for the cluster");
}

EnginesCommand::~EnginesCommand() = default;

bool EnginesCommand::chosen() const { return impl_->engines->parsed(); }

int EnginesCommand::run(const std::string& profile) {
  Impl& m = *impl_;
  if (m.start->parsed()) return m.run_start(profile);
  if (m.stop->parsed()) return m.run_stop(profile);
  if (m.list->parsed()) return m.run_list(profile);
  return 2;
}

}  // namespace testudo::cli
