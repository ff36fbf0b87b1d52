// The hub: authenticates peers, keeps the registry of engines and clients, routes requests
// to engines and replies back to the client that asked, and watches heartbeats.
// It reads only Envelopes; bodies pass through untouched (THREATS.md T17).
//
// Threading: runs entirely on its EventLoop's thread; not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "auth/capability.h"
#include "controller/gatekeeper.h"
#include "controller/scheduler.h"
#include "controller/task_store.h"
#include "net/net.h"

namespace testudo::controller {

struct HubOptions {
  auth::Capability client_capability{};
  auth::Capability engine_capability{};
  // An engine silent for this long is dropped and its tasks fail with "engine died".
  std::chrono::milliseconds heartbeat_timeout{10'000};
  // A connection must authenticate (send a valid hello) within this time after TLS.
  std::chrono::milliseconds hello_timeout{10'000};
  // Connections past TLS but not yet authenticated; beyond this the oldest is dropped (T12).
  std::size_t max_unauthenticated = 256;
  // Limits for authenticated peers.
  wire::Limits limits;
  SchedulerOptions scheduler;
  // Where every task and result is recorded; owned by the caller, outlives the hub. Null: none.
  TaskStore* store = nullptr;
  // Admission, authorization and audit; owned by the caller, outlives the hub. Required.
  Gatekeeper* gate = nullptr;
};

class Hub : private SchedulerSink {
 public:
  // `on_stopped` runs once, on the loop's thread, when shutdown has finished.
  Hub(net::EventLoop& loop, HubOptions options, std::function<void()> on_stopped);
  ~Hub();

  // Takes a freshly accepted TLS connection (not started).
  void accept(std::shared_ptr<net::Connection> connection);
  // Asks every engine to exit, closes every client, then calls on_stopped.
  void shutdown(const std::string& why);
  // Re-reads the policy, the trust directory and the CRL (SIGHUP), then cuts off every peer
  // that would no longer be admitted (revoked, removed, expired: T14, T15).
  void reload();
  // Tasks submitted and not finished (waiting, queued or running), and tasks answered by an
  // engine since the hub started.
  std::size_t tasks_in_flight() const { return scheduler_.tasks(); }
  std::uint64_t tasks_completed() const { return tasks_completed_; }

 private:
  struct Peer {
    std::uint64_t serial = 0;
    std::shared_ptr<net::Connection> connection;
    bool authenticated = false;
    wire::Role role = wire::Role::kClient;
    std::uint32_t id = 0;  // engine id or client id once authenticated
    std::string instance;
    std::chrono::steady_clock::time_point connected_at;
    std::chrono::steady_clock::time_point last_seen;
    std::unique_ptr<net::Timer> hello_deadline;
    std::uint64_t tasks_done = 0;
    std::string tags_json = "{}";  // engines: validated kEngineInfo (tags, host facts)
    auth::EngineFacts facts;       // engines: id and tags, for policy engine selectors
    PeerIdentity identity;         // who it is; a client's key fingerprint owns its tasks
    // Clients: acknowledgements (kSubmitted) not sent yet. They leave just before the next
    // message to this client, or after kAckDelay: a quick request's reply then carries its
    // ack in the same write, and the client wakes once instead of twice.
    std::vector<wire::Message> pending_acks;
    std::chrono::steady_clock::time_point acks_since;  // when the oldest pending ack was queued
  };

  void drop_oldest_unauthenticated_if_full();
  void on_message(std::uint64_t serial, wire::Message&& message);
  void on_close(std::uint64_t serial, const Status& reason);
  void on_hello(Peer& peer, const wire::Message& message);
  void admit(Peer& peer, PeerIdentity identity, const std::string& instance);
  // Refuses and closes. `audited`: the gatekeeper already recorded this refusal.
  void reject(Peer& peer, const std::string& reason, bool audited = false,
              Outcome status = Outcome::kNotAllowed);
  // Asks the policy whether `client` may do `op` (on each of `engines`, when given); audits
  // the answer. On denial, answers the request (a `reply_kind` control reply with outcome
  // kNotAllowed, or task replies for requests) and returns false.
  bool permit(Peer& client, auth::Operation op, const wire::Envelope& request, const std::vector<std::uint32_t>& engines,
              const AuditDetails& details, wire::MessageKind reply_kind);
  // Audits a denial and answers the request as permit() describes.
  void deny(Peer& client, auth::Operation op, const wire::Envelope& request, const std::vector<std::uint32_t>& engines,
            const AuditDetails& details, wire::MessageKind reply_kind, const std::string& denial);
  // Cuts off peers the gatekeeper would no longer admit.
  void recheck_peers();
  void key_admin(Peer& client, const wire::Message& message);
  // Own tasks always; others' only with the policy's read_others_results.
  bool may_read(const Peer& client, const TaskRecord& record) const;

  void route_request(Peer& client, wire::Message&& message);
  void acknowledge(Peer& client, std::uint64_t request_id, const std::vector<TaskId>& ids);
  // Every message to a client goes through here: its pending acks leave first, so a client
  // never sees a request's reply before its task ids.
  void send_to_client(Peer& client, wire::Message message);
  void flush_acks(Peer& client);
  // Sends the acks of every client whose oldest one has waited kAckDelay (all of them when
  // `everything`), and arms the timer for the rest.
  void flush_due_acks(bool everything = false);
  void arm_ack_flush(std::chrono::steady_clock::duration delay);
  // Stored results and records, for the requesting client's own tasks.
  void get_results(Peer& client, const wire::Message& message);
  void result_status(Peer& client, const wire::Message& message);
  void db_query(Peer& client, const wire::Message& message);
  void purge_results(Peer& client, const wire::Message& message);
  // Commits the store's pending writes; `wait`: also those whose result file is still being
  // written (shutdown), else they are left for a later tick.
  void flush_store(bool wait = false);
  void deliver_to_waiters(TaskId id, const wire::Message& reply);
  void route_reply(Peer& engine, wire::Message&& message);
  void abort_requests(Peer& client, const wire::Message& message);
  void record_engine_info(Peer& engine, const wire::Message& message);
  void shutdown_engines(Peer& client, const wire::Message& message);
  std::string engine_list_json() const;
  void interrupt_engines(Peer& client, const wire::Message& message);
  std::string queue_status_json() const;
  void reply_error(std::uint32_t client_id, std::uint64_t request_id, std::uint32_t engine_id,
                   Outcome status, const std::string& text);

  // SchedulerSink
  void dispatch(EngineId engine, TaskId id, const TaskSpec& task) override;
  void fail(TaskId id, const TaskSpec& task, TaskFailure why, const std::string& text) override;
  void send_control_reply(Peer& client, wire::MessageKind kind, const wire::Envelope& request, std::string json);
  std::string status_json() const;
  void sweep_heartbeats();
  void maybe_finish_shutdown();

  net::EventLoop& loop_;
  HubOptions options_;
  std::function<void()> on_stopped_;
  std::chrono::steady_clock::time_point started_at_ = std::chrono::steady_clock::now();

  std::uint64_t next_serial_ = 1;
  std::uint32_t next_engine_id_ = 0;
  std::uint32_t next_client_id_ = 1;
  std::uint64_t tasks_completed_ = 0;
  std::uint64_t rejected_ = 0;

  std::unordered_map<std::uint64_t, std::unique_ptr<Peer>> peers_;  // every connection, by serial
  std::map<std::uint32_t, Peer*> engines_;                           // registered, by engine id
  std::unordered_map<std::uint32_t, Peer*> clients_;                 // by client id
  std::unordered_map<std::string, std::uint32_t> engine_id_by_instance_;
  Scheduler scheduler_;
  // Clients that asked (get_result) for a task still running: (client id, request id).
  std::unordered_map<TaskId, std::vector<std::pair<std::uint32_t, std::uint64_t>>> waiters_;
  std::unique_ptr<net::Timer> ack_flush_;
  bool ack_flush_armed_ = false;
  std::unique_ptr<net::Timer> store_flush_;
  std::unique_ptr<net::Timer> store_limits_;
  Clock::time_point last_store_error_{};
  std::unique_ptr<net::Timer> expiry_;
  std::deque<std::uint64_t> unauthenticated_;  // serials in arrival order (may hold stale ones)
  std::size_t unauthenticated_count_ = 0;      // peers not yet authenticated and not closed

  std::unique_ptr<net::Timer> heartbeat_sweep_;
  std::unique_ptr<net::Timer> audit_flush_;
  std::unique_ptr<net::Timer> trust_watch_;
  int trust_watch_ticks_ = 0;
  bool stopping_ = false;
  std::unique_ptr<net::Timer> stop_deadline_;
};

}  // namespace testudo::controller
