#include "controller/reports.h"

#include <ctime>

#include <nlohmann/json.hpp>

namespace testudo::controller {
namespace {

std::string dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

std::string utc_text(std::int64_t unix_us) {
  const std::time_t seconds = static_cast<std::time_t>(unix_us / 1'000'000);
  std::tm tm{};
  char text[32] = "";
  if (::gmtime_r(&seconds, &tm) != nullptr) std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

}  // namespace

std::string engine_list_json(const std::vector<EngineReport>& engines, std::uint32_t next_engine_id) {
  nlohmann::json ids = nlohmann::json::array();
  nlohmann::json tags = nlohmann::json::object();
  // Each engine's seal statement as the text the engine sent: clients check it themselves.
  nlohmann::json seals = nlohmann::json::object();
  for (const auto& e : engines) {
    ids.push_back(e.id);
    tags[std::to_string(e.id)] = nlohmann::json::parse(e.info_json, nullptr, /*allow_exceptions=*/false);
    if (!e.seal_statement.empty()) seals[std::to_string(e.id)] = e.seal_statement;
  }
  return dump({{"engines", ids}, {"tags", tags}, {"seal", seals}, {"next_engine_id", next_engine_id}});
}

std::string cluster_status_json(const ClusterReport& report, const Scheduler& scheduler) {
  nlohmann::json engines = nlohmann::json::array();
  auto loads = scheduler.queue_status();
  for (const auto& e : report.engines) {
    engines.push_back({{"id", e.id},
                       {"address", e.address},
                       {"identity", e.identity},
                       {"in_flight", loads[e.id].running},
                       {"tasks_done", e.tasks_done},
                       {"connected_s", e.connected_s},
                       {"last_heartbeat_s", e.silent_s}});
  }
  nlohmann::json logins = nlohmann::json::array({"key"});
  for (const auto& method : report.logins) logins.push_back(method);
  return dump({{"engines", engines},
               {"clients", report.clients},
               {"tasks_in_flight", report.tasks_in_flight},
               {"tasks_completed", report.tasks_completed},
               {"connections_rejected", report.connections_rejected},
               {"uptime_s", report.uptime_s},
               {"started_at", utc_text(report.started_unix_us)},
               {"resumed", report.resumed},
               {"engines_back", report.engines_back},
               {"engines_not_back", report.engines_not_back},
               {"engines_not_back_count", report.engines_not_back_count},
               {"tasks_lost_at_start", report.tasks_lost_at_start},
               {"trust", report.trust_mode},
               {"logins", logins},
               {"queued_bytes", report.queued_bytes},
               {"client_queue_limit_bytes", report.client_queue_limit},
               {"queue_limit_bytes", report.queue_limit},
               {"clients_paused", report.clients_paused},
               {"client_pauses", report.client_pauses},
               {"requests_relayed", report.requests_relayed},
               {"replies_spooled", report.replies_spooled},
               {"replies_deferred", report.replies_deferred},
               {"bulk_transfers", report.bulk_completed},
               {"bulk_failed", report.bulk_failed},
               {"bulk_bytes", report.bulk_bytes},
               {"bulk_refused", report.bulk_refused},
               {"bulk_late", report.bulk_late}});
}

std::string queue_status_json(const Scheduler& scheduler) {
  nlohmann::json engines = nlohmann::json::object();
  for (const auto& [id, load] : scheduler.queue_status()) {
    engines[std::to_string(id)] = {
        {"queue", load.queued}, {"tasks", load.running}, {"completed", load.completed}, {"window", load.window}};
  }
  const auto& options = scheduler.options();
  return dump({{"engines", engines},
               {"unassigned", scheduler.unassigned()},
               {"waiting", scheduler.waiting()},
               {"scheme", std::string(scheme_name(options.scheme))},
               {"hwm", options.hwm == kAdaptiveWindow ? nlohmann::json("auto") : nlohmann::json(options.hwm)}});
}

}  // namespace testudo::controller
