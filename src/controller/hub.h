// The hub routes: it admits connections (through auth's Admission), keeps the registry of
// engines and clients, sends each request to the scheduler and on to its engines, sends each
// reply back to the client that asked, and answers clients' control requests from the
// gatekeeper, the stored results and the reports. It reads only Envelopes; bodies pass
// through untouched (docs/threat-model.md T17).
//
// Collaborators are handed in and outlive the hub: time and timers (Clock), admission, the
// gatekeeper (authorization and audit), the stored results and the engine ids. hub_test.cc drives it with
// fake connections and a fake clock.
//
// Threading: runs entirely on its clock's (loop's) thread; not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>
#include <variant>
#include <span>
#include <string>
#include <vector>

#include "auth/admission.h"
#include "base/clock.h"
#include "controller/ack_batcher.h"
#include "controller/byte_budget.h"
#include "controller/engine_ids.h"
#include "controller/gatekeeper.h"
#include "controller/peer_table.h"
#include "controller/refusal_digest.h"
#include "controller/reports.h"
#include "controller/result_file_sender.h"
#include "controller/scheduler.h"
#include "controller/bulk_relay.h"
#include "controller/relay_tap.h"
#include "controller/spooled_reply.h"
#include "controller/stored_results.h"
#include "controller/streamed_request.h"
#include "net/net.h"

namespace testudo::controller {

struct HubOptions {
  // An engine silent for this long is dropped and its tasks fail with "engine died".
  std::chrono::milliseconds heartbeat_timeout{10'000};
  // A connection must be admitted within this time after TLS.
  std::chrono::milliseconds hello_timeout{10'000};
  // Connections past TLS but not yet admitted; beyond this the oldest is dropped (T12).
  std::size_t max_unauthenticated = 256;
  // Limits for admitted peers.
  wire::Limits limits;
  // Bytes of requests the controller may hold per client and in all before it stops reading
  // from the clients over them (byte_budget.h).
  ByteLimits queue_limits;
  // Tasks one client may have unfinished here (queued, waiting or running) before the hub
  // stops reading from it until some finish, like the byte limits; 0: no limit.
  std::uint64_t client_max_tasks = 1'000'000;
  // The same for all clients' unfinished tasks together: whoever sends while there are more
  // is not read until some finish; 0: no limit.
  std::uint64_t max_tasks = 4'000'000;
  // A direct request with at least this many bytes after its first segment is forwarded to
  // its engines while it arrives (streamed_request.h), holding at most `relay_window_bytes` of
  // it here, when its engines can take it at once; 0: every request is received whole first.
  std::uint64_t relay_from_bytes = 16u << 20;
  std::uint64_t relay_window_bytes = 8u << 20;
  // A client whose connection holds more than this many bytes of replies it has not read yet
  // gets its further task replies later, from the task store (they are recorded there
  // anyway), as its connection drains: a client that does not read cannot make the controller
  // hold its replies (T20). 0: no limit.
  std::uint64_t client_reply_queue_bytes = 256u << 20;
  // Sealed bodies on data connections (bulk_relay.h): tickets, deadlines, transfers at once.
  BulkRelayOptions bulk;
  // One client's open transfers at most (its request bodies and the stored results it
  // fetches), so that a client holding tickets it never uses cannot take the relay from the
  // others. Beyond it a request body is refused (its task ends aborted, saying so) and a
  // result goes on the control connection.
  std::size_t bulk_per_client = 256;
  SchedulerOptions scheduler;
  // Seeds the scheduler's random choices (random and twobin schemes).
  std::uint64_t random_seed = 0;
};

// What the hub works with; each outlives it.
struct HubServices {
  Clock& clock;
  auth::Admission& admission;
  Gatekeeper& gate;
  StoredResults& results;
  EngineIds& engine_ids;  // which id an engine process gets (kept across restarts with --reuse)
  // The login methods the controller accepts (the admission's), for renewing a login on an
  // admitted connection. Null: no renewals (a login's session ends at its expiry).
  const auth::LoginRegistry* logins = nullptr;
};

class Hub : private SchedulerSink {
 public:
  // `on_stopped` runs once, on the clock's thread, when shutdown has finished.
  Hub(HubServices services, HubOptions options, std::function<void()> on_stopped);
  ~Hub() override;

  // Takes a freshly accepted TLS connection (not started).
  void accept(std::shared_ptr<net::Connection> connection);
  // A connection from `peer` that failed before reaching the hub (its TLS handshake): logged
  // and audited per host through refusals_ (the first in full, the rest summed each minute).
  void connection_refused(const std::string& peer, const std::string& reason);
  // A data connection's hello (net::ListenOptions::on_data_connection): joins its transfer.
  void accept_data(UniqueFd socket, const net::DataHello& hello, const std::string& peer);
  // Asks every engine to exit, closes every client, then calls on_stopped.
  void shutdown(const std::string& why);
  // Re-reads the policy, the trust directory and the CRL (SIGHUP), then re-checks the peers.
  void reload();
  // Cuts off every peer the gatekeeper would no longer admit (revoked, removed, expired: T14,
  // T15). Called after the trust directory, the CRL or a key changes, and now and then.
  void recheck_peers();

  // Tasks submitted and not finished (waiting, queued or running), and tasks answered by an
  // engine since the hub started.
  std::size_t tasks_in_flight() const { return scheduler_.tasks(); }
  std::uint64_t tasks_completed() const { return tasks_completed_; }

 private:
  // --- connections (hub.cc) ---
  void drop_oldest_unadmitted_if_full();
  void on_message(std::uint64_t serial, wire::Message&& message);
  void on_admission_message(Peer& peer, const wire::Message& message);
  void welcome(Peer& peer, auth::Admitted admitted);
  // Refuses and closes. `audited`: the refusal is already in the audit log.
  void reject(Peer& peer, const std::string& reason, bool audited = false,
              Outcome status = Outcome::kNotAllowed);
  void on_close(std::uint64_t serial, const Status& reason);
  void sweep_heartbeats();
  void maybe_finish_shutdown();
  // Flow control (byte_budget.h): a client over its budget is not read until its bytes drain.
  void pause_client(Peer& client);
  void resume_clients();  // those back under the limits
  // Whether `client_id` holds more bytes (budget_) or more unfinished tasks than allowed.
  bool over_limits(std::uint32_t client_id) const;

  // --- logins that expire (hub_login.cc) ---
  // Closes the connection the moment its login expires (identity.not_after), not at the next
  // periodic re-check.
  void arm_login_expiry(Peer& peer);
  // A kLoginStep from an admitted client: a fresh credential for the same identity (a token
  // before the old one expires). Verified on this connection's channel binding by a new
  // LoginServer; accepted: not_after and groups are the new credential's and an empty
  // kLoginStep answers; refused: the connection is closed with the reason.
  void renew_login(Peer& client, const wire::Message& message);

  // --- requests and replies (hub_routing.cc) ---
  // `streamed`: the request's segments after the first are still arriving (offer_stream).
  void route_request(Peer& client, wire::Message&& message, std::shared_ptr<StreamedRequest> streamed = nullptr);
  // A client's large request, offered by its connection once the first segment is in: a sink
  // that relays the rest to its engines as it arrives, or null to receive it whole first.
  std::shared_ptr<wire::StreamSink> offer_stream(std::uint64_t serial, const wire::Message& first,
                                                 std::span<const std::uint64_t> sizes);
  // The client of a relayed request went away before its end: its tasks never ran.
  void relay_abandoned(const Status& why, const StreamedRequest::Tasks& tasks);
  // A bulk task on its way to its engine: its ticket, sent to its client (kBulkTicket) and
  // appended to the engine's part; an error if the relay has no room.
  StatusOr<net::Ticket> issue_bulk_ticket(TaskId id, EngineId engine, const TaskSpec& task);
  void bulk_transfer_done(const BulkRelay::Done& done);
  // An engine's connection closed: its results still on their way into the store will not
  // come (their data connections may not even have been opened), so their files go now.
  void cancel_bulk_results_of(std::uint64_t engine_serial, const std::string& why);
  // The hostile test controller's relay tap may alter a transfer just issued (relay_tap.h).
  void offer_to_tap(std::uint64_t transfer, RelayTap::BulkTransfer what);
  // A reply's task, settled in the scheduler: whom it goes to and how it ended.
  struct SettledReply {
    TaskId id = 0;
    std::uint64_t request_id = 0;
    std::uint32_t client_id = 0;
    std::uint32_t engine_id = 0;
    Outcome outcome = Outcome::kOk;
    TaskState state = TaskState::kSucceeded;
    std::string text;  // for the client (an abort's reason)
  };
  // The task of `envelope` (a reply from `engine`) ends; nothing if it does not run there (T8).
  std::optional<SettledReply> settle_reply(Peer& engine, const wire::Envelope& envelope);
  void route_reply(Peer& engine, wire::Message&& message);
  // A bulk reply from an engine ([seal header, transfer sizes]): its ciphertext goes into the
  // task's result file on a data connection (the engine gets the ticket), or, if that cannot
  // be, the engine is told to send the reply whole.
  void route_bulk_reply(Peer& engine, wire::Message&& message);
  // A stored sealed result out of its file to `client` on a data connection (the reply
  // carries the ticket); false if it is not sealed or the relay has no room (send it in TLS).
  bool send_file_in_bulk(Peer& client, const wire::Envelope& envelope, const std::shared_ptr<const ResultFile>& file);
  // The spooled result of `settled` is complete: once the spool thread has written it, it is
  // recorded and sent (spooled_reply_written).
  void close_spool(const SettledReply& settled, std::shared_ptr<ResultSpool> spool);
  // An engine's large reply, offered once its first segment is in: a sink that writes the rest
  // to the task store's file as it arrives (spooled_reply.h), or null to receive it whole.
  std::shared_ptr<wire::StreamSink> offer_reply_stream(Peer& engine, const wire::Message& first,
                                                       std::span<const std::uint64_t> sizes);
  // Every part of a spooled reply has arrived: the task ends now; the reply goes on once the
  // file is written (spooled_reply_written, posted from the spool thread).
  void reply_spooled(std::uint64_t engine_serial, SpooledReply& reply);
  void spooled_reply_written(const SettledReply& settled, const std::shared_ptr<ResultSpool>& spool,
                             const Status& written);
  // Sends a reply whose segments lie in `file` a part at a time (result_file_sender.h); like
  // send_to_client, held acks leave first. A failed read answers the request with the reason.
  void send_file_to_client(Peer& client, wire::Envelope envelope, std::shared_ptr<const ResultFile> file);
  void route_output(Peer& engine, wire::Message&& message);
  void acknowledge(Peer& client, std::uint64_t request_id, std::vector<TaskId> ids);
  // Every message to a client goes through here: its held acks leave first, so a client never
  // sees a request's reply before its task ids.
  void send_to_client(Peer& client, wire::Message message);
  void send_held_acks(Peer& client);
  // Sends a recorded task's reply `reply` to `client` now, or, while its connection holds more
  // than client_reply_queue_bytes (or replies already wait), remembers (task, request) and
  // sends the stored reply later (resend_deferred_replies).
  void send_task_reply(Peer& client, wire::Message reply);
  void resend_deferred_replies();
  void reply_error(std::uint32_t client_id, std::uint64_t request_id, std::uint32_t engine_id,
                   Outcome status, const std::string& text);
  // Why a direct request for engine `id`, which is not connected, cannot run.
  std::string no_engine_text(std::uint32_t id) const;
  // SchedulerSink
  void dispatch(EngineId engine, TaskId id, const TaskSpec& task) override;
  void fail(TaskId id, const TaskSpec& task, TaskFailure why, const std::string& text) override;

  // --- control requests (hub_control.cc) ---
  void on_control(Peer& client, wire::Message&& message);
  // Asks the gatekeeper (one audited question). On denial answers the request (a control
  // reply of `reply_kind` with kNotAllowed, or one task reply per target) and returns false.
  bool authorize(Peer& client, const wire::Envelope& request, const AccessRequest& access,
                 const AuditDetails& details, wire::MessageKind reply_kind);
  // The facts the policy judges `engines` by (unknown ids get no tags).
  std::vector<auth::EngineFacts> facts_of(const std::vector<std::uint32_t>& engines);
  void register_engine_info(Peer& engine, const wire::Message& message);
  void get_results(Peer& client, const wire::Message& message);
  void abort_tasks(Peer& client, const wire::Message& message);
  void interrupt_engines(Peer& client, const wire::Message& message);
  void shutdown_engines(Peer& client, const wire::Message& message);
  void key_admin(Peer& client, const wire::Message& message);
  void send_control_reply(Peer& client, wire::MessageKind kind, const wire::Envelope& request, std::string json);
  void send_control_error(Peer& client, wire::MessageKind kind, const wire::Envelope& request,
                          Outcome status, const std::string& text);
  ClusterReport cluster_report();
  std::vector<EngineReport> engine_reports();

  Clock& clock_;
  auth::Admission& admission_;
  Gatekeeper& gate_;
  StoredResults& results_;
  EngineIds& engine_ids_;
  const auth::LoginRegistry* logins_;
  HubOptions options_;
  std::function<void()> on_stopped_;
  const Clock::TimePoint started_at_;
  const std::int64_t started_unix_us_;
  // Engines of the previous run (EngineIds::from_previous_run) that came back with their id.
  std::set<std::uint32_t> engines_back_;

  PeerTable peers_;
  Scheduler scheduler_;
  AckBatcher acks_;
  RefusalDigest refusals_;  // unauthenticated connections refused, summed per host
  std::uint64_t tasks_completed_ = 0;
  std::uint64_t rejected_ = 0;

  std::unique_ptr<Timer> heartbeat_sweep_;
  std::unique_ptr<Timer> expiry_;
  bool stopping_ = false;
  std::unique_ptr<Timer> stop_deadline_;
  // Closed peers are forgotten after the handler that closed them returns (it may be theirs).
  std::vector<std::uint64_t> closed_;
  std::unique_ptr<Timer> erase_closed_;
  bool erase_armed_ = false;
  std::set<std::uint32_t> paused_clients_;
  std::uint64_t pauses_ = 0;  // times a client was paused, since the start
  std::uint64_t relayed_ = 0;  // requests relayed while they arrived, since the start (status)
  std::uint64_t replies_spooled_ = 0;  // replies written to their file while they arrived (status)
  std::uint64_t replies_deferred_ = 0;  // replies sent later from the store to a client not reading (status)
  std::set<std::uint32_t> deferring_clients_;  // clients with deferred replies
  std::unique_ptr<Timer> deferred_timer_;       // resends while some wait
  // Work posted back from other threads (the spool's) runs only while this lives.
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  BulkRelay bulk_;
  // What each open bulk transfer is for (by transfer id, from next_transfer_), and the open
  // request-body transfers by task (cancelled when their task ends first).
  struct BulkRequestBody {
    TaskId task = 0;
    std::uint32_t client = 0;
  };
  struct BulkReplyIntoStore {
    std::uint64_t engine_serial = 0;
    wire::Envelope envelope;  // the engine's reply head, settled when its body is in
    std::shared_ptr<ResultSpool> spool;
    std::uint64_t bytes = 0;
  };
  struct BulkReplyToClient {
    TaskId task = 0;
    std::uint32_t client = 0;
  };
  std::unordered_map<std::uint64_t, std::variant<BulkRequestBody, BulkReplyIntoStore, BulkReplyToClient>> bulk_jobs_;
  std::unordered_map<TaskId, std::uint64_t> request_transfers_;
  std::unordered_map<std::uint32_t, std::size_t> bulk_by_client_;  // open transfers per client (bulk_per_client)
  std::uint64_t next_transfer_ = 1;
  // Last: destroyed (and detached) first, so that the segments the other members still hold
  // are released without calling back into a hub being destroyed.
  ByteBudget budget_;
};

}  // namespace testudo::controller
