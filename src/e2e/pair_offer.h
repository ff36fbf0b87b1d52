// A pair offer (docs/e2e-design.md "Keys"): how a client gives one engine process its pair
// key through the controller. The key is sealed to the engine's seal key (crypto/aead.h
// seal_box, readable by that engine process only) and the offer is signed by the client's
// identity key, whose certificate travels with it; the engine checks that certificate
// against its own client roots (roots.h), never against what the controller says.
//
// The box carries two keys: the pair key of this (client process, engine), and the client
// process's balanced key (the same in every offer it makes), under which its load-balanced
// requests are sealed so that any engine it paired with can open them.
//
// One offer per (client process, engine); it rides in the seal header of that client's
// requests to the engine until the engine has answered under the key, so a request the
// controller drops (an abort) cannot strand the key. What the client signs:
//   "testudo-pair-offer-v1" 0 client fp 0 engine fp 0 engine seal key | key id |
//   client seal key | box
// so an offer cannot be replayed to another engine, or re-attributed to another client.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "crypto/aead.h"
#include "e2e/engine_seal.h"
#include "e2e/roots.h"
#include "e2e/sealed_body.h"
#include "testudo/status.h"
#include "tls/tls.h"

namespace testudo::e2e {

// The offer's bytes (a binary encoding; see pair_offer.cc) for `engine`, carrying `key`.
// `client_seal_key`: the public half of the client identity's seal key (result_key.h), to
// which the engine grants its result keys.
StatusOr<std::string> make_pair_offer(const tls::KeyAndCertificate& client, const VerifiedEngine& engine,
                                      const PairKey& key, const PairKey& balanced_key,
                                      const crypto::X25519Public& client_seal_key);

struct AcceptedOffer {
  std::string client_fingerprint;
  PairKey key;
  PairKey balanced_key;
  crypto::X25519Public client_seal_key{};
};

// The engine's check of an offer: the client's certificate trusted by `client_roots` at
// `now_unix`, the signature by its key over this engine's fingerprint and current seal key,
// and the box opening with `own_seal`. kPermissionDenied with the reason otherwise; network
// input (fuzzed with the seal header).
StatusOr<AcceptedOffer> accept_pair_offer(std::string_view offer, const Roots& client_roots,
                                          std::string_view own_fingerprint, const crypto::X25519KeyPair& own_seal,
                                          std::int64_t now_unix);

}  // namespace testudo::e2e
