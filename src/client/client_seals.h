// The client's half of end-to-end sealing (docs/security.md "End-to-end sealing",
// docs/e2e-design.md): which engines this client can verify (their seal statements checked
// against its own roots, never the controller's word), a pair key per engine, sealing each
// direct request for each of its targets, and opening the replies and live output that come
// back — refusing any that are not sealed for exactly the request they answer.
//
// Threading: callers' threads prepare (prepare_request), the network thread opens (submitted,
// open_reply, open_output); one mutex guards the state. Sealing itself happens outside it.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "e2e/engine_seal.h"
#include "e2e/roots.h"
#include "e2e/sealed_body.h"
#include "testudo/client.h"
#include "tls/tls.h"
#include "wire/message.h"

namespace testudo::client {

class ClientSeals {
 public:
  // Engine roots from `options` (engine_keys, engine_cafile), else the shared engine
  // certificate beside the connection file (by default in the profile's security directory);
  // kNotFound if there is none (a client that cannot verify any engine cannot seal). `identity`: this client's key, which
  // signs the pair offers (a login identity has none the engines could check).
  static StatusOr<std::unique_ptr<ClientSeals>> create(const ClientOptions& options,
                                                       const tls::KeyAndCertificate& identity);

  std::string describe_roots() const { return roots_.describe(); }

  // Whether every one of `engines` has a verified seal statement (or a known reason not to).
  bool knows(const std::vector<EngineId>& engines) const;
  // Checks the seal statements of an engine list reply (its "seal" object) and remembers
  // each engine's verdict.
  void learn(std::string_view engine_list_json);

  // `body` prepared for sealing for each of `targets` in order (wire/message.h: equal parts;
  // e2e::seal_prepared seals one, or the bulk path as it sends), and the expectations to open
  // their replies with, filed under `request_id`; sequence numbers and offers are taken now.
  // kPermissionDenied (reported as Outcome::kSealBroken) naming an engine that cannot be
  // verified.
  StatusOr<std::vector<e2e::PreparedSeal>> prepare_request(std::uint64_t request_id, const wire::Envelope& head,
                                                           const std::vector<EngineId>& targets,
                                                           std::span<const SharedBytes> body);
  // `body` prepared once under this process's balanced key, for whichever engine the
  // controller picks among those this client paired with (paired()).
  StatusOr<e2e::PreparedSeal> prepare_balanced(std::uint64_t request_id, const wire::Envelope& head,
                                               std::span<const SharedBytes> body);

  // Engine ids the controller has listed (with a seal statement), and when the list was last
  // learned.
  std::vector<EngineId> listed() const;
  std::chrono::steady_clock::time_point learned_at() const;
  // Engines that can be sealed for: those the controller listed, now or before. For each of
  // `engines` that is not, the controller's words for why (wire::no_engine_text).
  std::vector<std::pair<EngineId, std::string>> unknown(const std::vector<EngineId>& engines) const;
  // Which of `engines` hold this process's keys (a sealed reply of theirs opened): the only
  // ones a balanced request may go to. And which of them could be paired but are not yet.
  std::vector<EngineId> paired(const std::vector<EngineId>& engines) const;
  std::vector<EngineId> pairable(const std::vector<EngineId>& engines);
  // The key fingerprint of `engine` if this client can verify it, else why not.
  StatusOr<std::string> verify(EngineId engine);

  // The controller's acknowledgement of a sealed request: its task ids in target order.
  void submitted(std::uint64_t request_id, const std::vector<std::uint64_t>& task_ids);
  // A request that failed before it was acknowledged: forget its expectations.
  void forget(std::uint64_t request_id);

  // What became of a task reply.
  enum class Verdict {
    kPlain,   // neither sealed nor an answer to a sealed request of this process: use it as it is
    kOpened,  // sealed for this identity (and this request, if this process sent it): `reply.segments`
              // now hold the plaintext
    kBroken,  // sealed but not openable here, or should have been sealed and is not: `why` says how
    // A genuine second answer to one balanced request of this process, from another engine:
    // the controller handed the request to two engines (it ran twice). `why` says which.
    kDuplicate,
  };
  Verdict open_reply(wire::Message& reply, std::string& why);
  // The text of a live output chunk, or nothing if it is not a sealed chunk of a running
  // request of this process (dropped; the final reply carries all output anyway).
  std::optional<std::string> open_output(const wire::Message& chunk, bool& was_sealed);

 private:
  struct Pair {
    e2e::VerifiedEngine engine;
    e2e::PairKey key;
    std::string offer;       // sent with each request until the engine answered under the key
    bool confirmed = false;  // a reply under this key opened
    std::uint64_t next_seq = 1;
  };
  struct Expectation {
    EngineId engine = 0;
    e2e::KeyId key_id{};
    std::uint64_t seq = 0;
    wire::MessageKind kind = wire::MessageKind::kExecute;
    std::uint64_t last_chunk = 0;
    std::optional<EngineId> answered_by;  // balanced requests: the engine whose answer opened
  };
  // Files the expectations of a request's replies (bounded: the oldest are forgotten).
  void remember(std::uint64_t request_id, std::vector<Expectation> parts);
  // Sealed requests remembered (to hold their replies to the request they answer); beyond
  // this the oldest are forgotten, and their stored results open as any process's would.
  static constexpr std::size_t kMaxRememberedRequests = 1u << 18;

  ClientSeals(e2e::Roots roots, tls::KeyAndCertificate identity, e2e::PairKey balanced, crypto::X25519KeyPair seal,
              std::string fingerprint)
      : roots_(std::move(roots)),
        identity_(std::move(identity)),
        balanced_(balanced),
        seal_(seal),
        fingerprint_(std::move(fingerprint)) {}
  // The result key a reply is sealed under, from its grant (checked once per grant).
  StatusOr<crypto::AeadKey> result_key(const e2e::SealHeader& header);
  StatusOr<Pair*> pair_for(EngineId engine);  // under mutex_
  // The expectation a reply or chunk is held to, or null if it answers no sealed request of
  // this process. Under mutex_.
  Expectation* expectation_of(std::uint64_t request_id, std::uint64_t task_id, EngineId engine);

  const e2e::Roots roots_;
  const tls::KeyAndCertificate identity_;
  const e2e::PairKey balanced_;  // this process's balanced key, in every offer it makes
  const crypto::X25519KeyPair seal_;  // the identity's seal key (e2e/result_key.h)
  const std::string fingerprint_;     // the identity's key fingerprint
  static constexpr std::size_t kMaxGrants = 1u << 16;
  std::map<e2e::KeyId, std::pair<std::string, crypto::AeadKey>> grants_;  // key id -> (grant, key)
  mutable std::mutex mutex_;
  std::uint64_t balanced_next_seq_ = 1;
  std::chrono::steady_clock::time_point learned_at_{};
  std::uint32_t next_engine_id_ = 0;  // as the last list said: ids below it were given out
  std::map<EngineId, std::string> statements_;  // as the controller relayed them
  std::map<EngineId, Pair> pairs_;
  std::unordered_map<std::uint64_t, std::vector<Expectation>> requests_;  // by request id, parts in target order
  // task id -> (request id, part), from the acknowledgements.
  std::unordered_map<std::uint64_t, std::pair<std::uint64_t, std::size_t>> tasks_;
  std::deque<std::uint64_t> request_order_;  // for forgetting the oldest
};

}  // namespace testudo::client
