// The hub's connections: every one by serial from accept to close, the admitted engines and
// clients by their ids (which engine id an engine gets is EngineIds' question), and the order
// of those not admitted yet, so that a flood of them pushes out the oldest instead of locking
// real peers out (docs/threat-model.md T12).
//
// Threading: the hub's loop thread, not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "auth/admission.h"
#include "auth/policy.h"
#include "base/clock.h"
#include "net/net.h"
#include "testudo/status.h"

namespace testudo::controller {

struct Peer {
  std::uint64_t serial = 0;
  std::shared_ptr<net::Connection> connection;
  // Until admitted: the exchange that decides (auth/admission.h) and its deadline.
  std::unique_ptr<auth::AdmissionExchange> admission;
  std::unique_ptr<Timer> admission_deadline;
  bool admitted = false;
  wire::Role role = wire::Role::kClient;
  std::uint32_t id = 0;  // engine id or client id once admitted
  std::string instance;
  Clock::TimePoint connected_at{};
  Clock::TimePoint last_seen{};  // the last message or bytes from it (see Hub::sweep_heartbeats)
  std::uint64_t bytes_seen = 0;  // its connection's bytes_received() at the last sweep
  auth::PeerIdentity identity;  // who it is; a client's key fingerprint owns its tasks
  // A login that expires (identity.not_after): the connection is closed when it fires, unless
  // the client renewed the login before (hub_login.cc).
  std::unique_ptr<Timer> login_expiry;
  // Clients: replies of recorded tasks (task id, request id) to send from the task store once
  // its connection has drained (Hub::send_task_reply), oldest first.
  std::deque<std::pair<std::uint64_t, std::uint64_t>> deferred_replies;
  // Engines only:
  std::uint64_t tasks_done = 0;
  std::string info_json = "{}";  // its signed registration facts (auth/registration.h)
  std::string seal_statement;    // relayed to clients unread (e2e/engine_seal.h)
  auth::EngineFacts facts;       // id and tags, for the policy's engine selectors
  // A large reply it is sending, received in parts (Hub::offer_reply_stream): while that sink
  // is backlogged, its connection is not read and the hub answers for its heartbeats.
  std::weak_ptr<wire::StreamSink> reply_stream;
};

class PeerTable {
 public:
  // A new connection, not admitted; `now` is when it arrived.
  Peer& add(std::shared_ptr<net::Connection> connection, Clock::TimePoint now);
  Peer* find(std::uint64_t serial);
  // Forgets a peer whose connection has closed (see closed()).
  void erase(std::uint64_t serial);
  bool empty() const { return peers_.empty(); }

  // Marks `peer` admitted as engine `id` (no other connection may hold it: close that one
  // first) / as a new client (whose id this assigns).
  void admit_engine(Peer& peer, std::uint32_t id);
  void admit_client(Peer& peer);
  // Takes a peer out of the engine or client index when its connection closes. Returns false
  // for an engine whose id had already passed to a newer connection of the same engine.
  bool closed(Peer& peer);

  Peer* engine(std::uint32_t id);
  Peer* client(std::uint32_t id);
  const std::map<std::uint32_t, Peer*>& engines() const { return engines_; }
  const std::unordered_map<std::uint32_t, Peer*>& clients() const { return clients_; }
  const std::unordered_map<std::uint64_t, std::unique_ptr<Peer>>& all() const { return peers_; }

  // Connections not admitted and still open.
  std::size_t unadmitted() const { return unadmitted_; }
  // The oldest of them (to drop when too many wait), or null.
  Peer* oldest_unadmitted();

 private:
  std::uint64_t next_serial_ = 1;
  std::uint32_t next_client_id_ = 1;
  std::unordered_map<std::uint64_t, std::unique_ptr<Peer>> peers_;
  std::map<std::uint32_t, Peer*> engines_;  // by id, in order (reports list them so)
  std::unordered_map<std::uint32_t, Peer*> clients_;
  std::deque<std::uint64_t> arrival_;  // serials not admitted, oldest first (may hold stale ones)
  std::size_t unadmitted_ = 0;
};

}  // namespace testudo::controller
