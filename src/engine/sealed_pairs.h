// The engine's half of end-to-end sealing (docs/security.md "End-to-end sealing",
// docs/e2e-design.md): its per-process seal key and statement, the client roots it trusts,
// the pair keys and balanced keys clients offered it, their replay windows and result keys.
// It opens sealed requests and seals replies and live output. Not thread-safe: the engine
// touches it only on its Python thread.
#pragma once

#include <cstdint>
#include <ctime>
#include <list>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "crypto/aead.h"
#include "e2e/engine_seal.h"
#include "e2e/pair_offer.h"
#include "e2e/replay_window.h"
#include "e2e/result_key.h"
#include "e2e/roots.h"
#include "e2e/sealed_body.h"
#include "engine/engine.h"
#include "testudo/outcome.h"
#include "testudo/status.h"
#include "tls/tls.h"
#include "wire/message.h"

namespace testudo::engine {

class SealedPairs {
 public:
  // Pair keys kept at once; the least recently used goes first (its client then re-offers).
  static constexpr std::size_t kMaxPairs = 4096;

  Status init(const tls::KeyAndCertificate& identity, const EngineOptions& options) {
    identity_ = identity;
    TESTUDO_ASSIGN_OR_RETURN(seal_, crypto::generate_x25519());
    TESTUDO_ASSIGN_OR_RETURN(statement_, e2e::make_engine_seal_statement(identity, seal_.public_key));
    TESTUDO_ASSIGN_OR_RETURN(fingerprint_, tls::key_fingerprint_of_pem(identity.cert_pem));
    TESTUDO_ASSIGN_OR_RETURN(roots_, e2e::Roots::make(options.trust_clients, options.client_cafile));
    return ok_status();
  }
  const std::string& statement() const { return statement_; }
  const e2e::Roots& roots() const { return roots_; }

  // What a sealed request opened to.
  struct Opened {
    wire::Message message;  // the plaintext request
    e2e::PairKey key;       // the pair key its reply and output are sealed under
    std::uint64_t seq = 0;
    e2e::Part reply_part = e2e::Part::kReply;
  };

  // Opens a sealed request routed to engine `engine_id`: the pair key (from the header's
  // offer, or one already held), a sequence number never run before, the body bound to this
  // engine, kind and flags, and the code digest the controller logged. Errors say which.
  StatusOr<Opened> open(wire::Message&& m, std::uint32_t engine_id) {
    if (m.segments.empty()) return permission_denied("a sealed request without a seal header");
    TESTUDO_ASSIGN_OR_RETURN(e2e::SealHeader header, e2e::decode_seal_header(m.segments[0].span()));
    if (header.part == e2e::Part::kBalancedRequest) return open_balanced(std::move(m), header);
    if (header.part != e2e::Part::kRequest) return permission_denied("the seal header is not a request's");
    Pair* pair = find(header.key_id);
    if (!header.offer.empty() && pair == nullptr) {
      TESTUDO_ASSIGN_OR_RETURN(e2e::AcceptedOffer accepted,
                               e2e::accept_pair_offer(header.offer, roots_, fingerprint_, seal_,
                                                      static_cast<std::int64_t>(std::time(nullptr))));
      if (accepted.key.id != header.key_id) return permission_denied("the pair offer is for another key");
      TESTUDO_ASSIGN_OR_RETURN(pair, add(std::move(accepted)));
    }
    if (pair == nullptr) {
      return permission_denied("unknown pair key (this engine restarted, or forgot it): the client offers it again "
                               "with its next request");
    }
    const e2e::SealContext context{m.envelope.kind, m.envelope.kind_flags(), engine_id, 0};
    auto plain = e2e::open_body(pair->key, header, context, e2e::take_sealed_body(m));
    if (!plain.ok()) {
      return permission_denied("the sealed request does not open: it was altered on the way, or made for another "
                               "engine, kind or sequence number");
    }
    if (e2e::request_code_digest(m.envelope.kind, *plain) != header.code_digest) {
      return permission_denied("the code digest the controller logged is not the code's");
    }
    // Only an authentic request uses up its number: a forged one cannot block a real one.
    if (Status fresh = first_time(pair->window, header.seq, "request " + std::to_string(header.seq) +
                                                                " under this pair key");
        !fresh.ok()) {
      return fresh;
    }
    Opened out{std::move(m), pair->key, header.seq, e2e::Part::kReply};
    out.message.segments = std::move(plain).value();
    out.message.envelope.set_sealed(false);
    return out;
  }

  // A load-balanced request: sealed under the balanced key of a client this engine paired
  // with, for any engine (the controller chose this one), answered under that pair's key.
  StatusOr<Opened> open_balanced(wire::Message&& m, const e2e::SealHeader& header) {
    auto it = balanced_.find(header.key_id);
    if (it == balanced_.end()) {
      return permission_denied("unknown balanced key (this engine never paired with the client, or restarted)");
    }
    Balanced& balanced = it->second;
    Pair* pair = find(balanced.pair_id);
    if (pair == nullptr) return permission_denied("unknown pair key (this engine restarted, or forgot it): the client "
                                                  "offers it again with its next request");
    const e2e::SealContext context{m.envelope.kind, m.envelope.kind_flags(), wire::kAnyEngine, 0};
    auto plain = e2e::open_body(balanced.key, header, context, e2e::take_sealed_body(m));
    if (!plain.ok()) {
      return permission_denied("the sealed load-balanced request does not open: it was altered on the way, or made "
                               "for another kind or sequence number");
    }
    if (e2e::request_code_digest(m.envelope.kind, *plain) != header.code_digest) {
      return permission_denied("the code digest the controller logged is not the code's");
    }
    if (Status fresh = first_time(balanced.window, header.seq,
                                  "load-balanced request " + std::to_string(header.seq) + " of this client");
        !fresh.ok()) {
      return fresh;
    }
    Opened out{std::move(m), pair->key, header.seq, e2e::Part::kBalancedReply};
    out.message.segments = std::move(plain).value();
    out.message.envelope.set_sealed(false);
    return out;
  }

  // The reply body sealed for the client identity of `opened` under the pair's result key
  // (e2e/result_key.h: any process of that identity can open it later), bound to this
  // engine, the task and the outcome; the header carries the key's grant.
  StatusOr<std::vector<SharedBytes>> seal_reply(const Opened& opened, std::uint32_t engine_id, std::uint64_t task_id,
                                                Outcome outcome, std::span<const SharedBytes> body) {
    Pair* pair = find(opened.key.id);
    if (pair == nullptr) return not_found("pair key gone");
    e2e::SealHeader header;
    header.part = opened.reply_part;
    header.seq = opened.seq;
    header.result_key = pair->result.grant;
    const e2e::PairKey result{opened.key.id, pair->result.key};
    return e2e::seal_body(result, header,
                          {wire::MessageKind::kTaskReply, 0, engine_id, static_cast<std::uint16_t>(outcome), task_id},
                          body);
  }

  // A live output chunk of the running request, sealed (chunk numbers never repeat per key).
  StatusOr<std::vector<SharedBytes>> seal_output(const e2e::PairKey& key, std::uint64_t seq, wire::MessageKind kind,
                                                 std::uint16_t stream, std::uint32_t engine_id, std::string_view text) {
    Pair* pair = find(key.id);
    if (pair == nullptr) return not_found("pair key gone");
    e2e::SealHeader header;
    header.part = e2e::Part::kOutput;
    header.seq = seq;
    header.chunk = ++pair->chunks;
    const SharedBytes body[] = {SharedBytes::copy_of(text)};
    return e2e::seal_body(key, header, {kind, stream, engine_id, 0}, body);
  }

 private:
  // Whether `seq` is new under its key's window (using it up), else why not.
  static Status first_time(e2e::ReplayWindow& window, std::uint64_t seq, const std::string& what) {
    switch (window.check(seq)) {
      case e2e::ReplayWindow::Verdict::kNew: return ok_status();
      case e2e::ReplayWindow::Verdict::kSeen: return permission_denied(what + " was already run here (a replay)");
      case e2e::ReplayWindow::Verdict::kTooOld: break;
    }
    return permission_denied(what + " is older than the " + std::to_string(e2e::ReplayWindow::kMaxNumbers) +
                             " numbers this engine remembers: refused, as it may have run");
  }

  struct Pair {
    e2e::PairKey key;
    e2e::KeyId balanced_id{};
    std::string client_fingerprint;
    e2e::ReplayWindow window;
    std::uint64_t chunks = 0;
    e2e::ResultKey result;  // replies are sealed under it
  };
  Pair* find(const e2e::KeyId& id) {
    auto it = pairs_.find(id);
    if (it == pairs_.end()) return nullptr;
    lru_.splice(lru_.begin(), lru_, it->second);
    return &*it->second;
  }
  struct Balanced {
    e2e::PairKey key;
    e2e::KeyId pair_id{};  // the pair whose key seals the replies
    e2e::ReplayWindow window;
  };
  StatusOr<Pair*> add(e2e::AcceptedOffer accepted) {
    // The result key of this pair, granted to the client's identity once.
    TESTUDO_ASSIGN_OR_RETURN(e2e::ResultKey result,
                             e2e::grant_result_key(identity_, accepted.client_fingerprint, accepted.client_seal_key,
                                                   accepted.key.id));
    if (pairs_.size() >= kMaxPairs) {
      balanced_.erase(lru_.back().balanced_id);
      pairs_.erase(lru_.back().key.id);
      lru_.pop_back();
    }
    // A client process makes one balanced key and one pair per engine, so a balanced key
    // arrives here once; one already held keeps its replay window.
    balanced_.try_emplace(accepted.balanced_key.id, Balanced{accepted.balanced_key, accepted.key.id, {}});
    lru_.push_front(
        Pair{accepted.key, accepted.balanced_key.id, std::move(accepted.client_fingerprint), {}, 0, std::move(result)});
    pairs_[lru_.front().key.id] = lru_.begin();
    return &lru_.front();
  }

  tls::KeyAndCertificate identity_;  // signs result-key grants
  crypto::X25519KeyPair seal_{};
  std::string statement_;
  std::string fingerprint_;
  e2e::Roots roots_;
  std::list<Pair> lru_;
  std::map<e2e::KeyId, std::list<Pair>::iterator> pairs_;
  std::map<e2e::KeyId, Balanced> balanced_;  // by balanced key id; at most one per pair
};


}  // namespace testudo::engine
