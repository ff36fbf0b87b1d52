#include "controller/peer_table.h"

namespace testudo::controller {

Peer& PeerTable::add(std::shared_ptr<net::Connection> connection, Clock::TimePoint now) {
  auto peer = std::make_unique<Peer>();
  peer->serial = next_serial_++;
  peer->connection = std::move(connection);
  peer->connected_at = peer->last_seen = now;
  arrival_.push_back(peer->serial);
  ++unadmitted_;
  Peer& p = *peer;
  peers_.emplace(p.serial, std::move(peer));
  return p;
}

Peer* PeerTable::find(std::uint64_t serial) {
  auto it = peers_.find(serial);
  return it == peers_.end() ? nullptr : it->second.get();
}

void PeerTable::erase(std::uint64_t serial) { peers_.erase(serial); }

void PeerTable::admit_engine(Peer& peer, std::uint32_t id) {
  peer.admitted = true;
  peer.role = wire::Role::kEngine;
  peer.id = id;
  peer.facts.id = id;
  engines_[id] = &peer;
  --unadmitted_;
}

void PeerTable::admit_client(Peer& peer) {
  peer.admitted = true;
  peer.role = wire::Role::kClient;
  peer.id = next_client_id_++;
  clients_[peer.id] = &peer;
  --unadmitted_;
}

bool PeerTable::closed(Peer& peer) {
  if (!peer.admitted) {
    --unadmitted_;
  } else if (peer.role == wire::Role::kEngine) {
    auto it = engines_.find(peer.id);
    if (it == engines_.end() || it->second != &peer) return false;
    engines_.erase(it);
  } else {
    clients_.erase(peer.id);
  }
  return true;
}

Peer* PeerTable::engine(std::uint32_t id) {
  auto it = engines_.find(id);
  return it == engines_.end() ? nullptr : it->second;
}

Peer* PeerTable::client(std::uint32_t id) {
  auto it = clients_.find(id);
  return it == clients_.end() ? nullptr : it->second;
}

Peer* PeerTable::oldest_unadmitted() {
  // Serials of peers admitted or gone since are skipped (and forgotten), so the queue stays
  // as short as the set of peers waiting.
  while (!arrival_.empty()) {
    Peer* p = find(arrival_.front());
    if (p && !p->admitted && p->connection->is_open()) return p;
    arrival_.pop_front();
  }
  return nullptr;
}

}  // namespace testudo::controller
