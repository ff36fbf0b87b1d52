// The controller's JSON reports for clients: the engine list (kEngineList), the cluster
// status (kClusterStatus, `testudo status`) and the queue status (kQueueStatus,
// ipyparallel's queue_status). Formatting only: the hub hands in what it knows.
// Thread-safe (pure functions).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "controller/scheduler.h"

namespace testudo::controller {

struct EngineReport {
  std::uint32_t id = 0;
  std::string address;     // "127.0.0.1:40112"
  std::string identity;    // key fingerprint
  std::string info_json;   // its registration facts: a flat JSON object
  std::string seal_statement;  // e2e/engine_seal.h; empty if none
  std::uint64_t tasks_done = 0;
  double connected_s = 0;  // since it connected
  double silent_s = 0;     // since its last message
};

struct ClusterReport {
  std::vector<EngineReport> engines;  // by id
  std::size_t clients = 0;
  std::size_t tasks_in_flight = 0;
  std::uint64_t tasks_completed = 0;
  std::uint64_t connections_rejected = 0;
  double uptime_s = 0;
  std::int64_t started_unix_us = 0;        // when this controller started
  // Whether it took over the engine ids of a previous run (a restart with --reuse), and which
  // of that run's engines have registered again since, with their old ids.
  bool resumed = false;
  std::vector<std::uint32_t> engines_back;
  // Ids remembered from the previous run whose engines have not come back (at most
  // kMaxListed, lowest first; engines_not_back_count says how many in all), and the tasks the
  // store marked lost when it opened (running or unrecorded when the last controller stopped).
  static constexpr std::size_t kMaxListed = 100;
  std::vector<std::uint32_t> engines_not_back;
  std::size_t engines_not_back_count = 0;
  std::uint64_t tasks_lost_at_start = 0;
  // How peers get in: the trust mode of keys and the login methods accepted beside them.
  std::string trust_mode;
  std::vector<std::string> logins;
  // Flow control (byte_budget.h): request bytes held now, the limits, the clients not read
  // now for being over them, and how often a client was paused since the start.
  std::uint64_t queued_bytes = 0;
  std::uint64_t client_queue_limit = 0;
  std::uint64_t queue_limit = 0;
  std::size_t clients_paused = 0;
  std::uint64_t client_pauses = 0;
  // Large requests forwarded to their engines while they arrived (streamed_request.h).
  std::uint64_t requests_relayed = 0;
  // Large replies written to their file while they arrived, then sent on (spooled_reply.h).
  std::uint64_t replies_spooled = 0;
  // Replies sent later from the task store because their client was not reading (T20).
  std::uint64_t replies_deferred = 0;
  // Sealed bodies moved on data connections, never read here (bulk_relay.h).
  std::uint64_t bulk_completed = 0;
  std::uint64_t bulk_failed = 0;
  std::uint64_t bulk_bytes = 0;
  std::uint64_t bulk_refused = 0;  // data connections with a bad ticket
  std::uint64_t bulk_late = 0;     // an end of a transfer cancelled before it came (its task ended)
};

// {"engines": [ids], "tags": {"<id>": {facts}}, "next_engine_id": n}: ids below n that are not
// listed belong to engines that are gone (ids are never given twice).
std::string engine_list_json(const std::vector<EngineReport>& engines, std::uint32_t next_engine_id);
// {"engines": [{id, address, identity, in_flight, tasks_done, connected_s, last_heartbeat_s}],
//  "clients", "tasks_in_flight", "tasks_completed", "connections_rejected", "uptime_s",
//  "started_at" (UTC, "2024-05-01T12:00:00Z"), "resumed", "engines_back" ([ids]),
//  "engines_not_back" ([ids], at most 100), "engines_not_back_count", "tasks_lost_at_start",
//  "trust" (the trust mode), "logins" (["key", and the login methods accepted])}
std::string cluster_status_json(const ClusterReport& report, const Scheduler& scheduler);
// {"engines": {"<id>": {queue, tasks, completed, window}}, "unassigned", "waiting", "scheme", "hwm"}
std::string queue_status_json(const Scheduler& scheduler);

}  // namespace testudo::controller
