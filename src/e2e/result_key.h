// Results that outlive the client process (docs/e2e-design.md "Results", step 4). A result is
// stored by the controller and may be fetched later by a *new* process of the same client
// identity, which holds no pair key. So each engine seals its replies under a *result key*:
// random per pair (client process × engine process), handed to the client inside every reply
// header as a grant that any process of that identity can open:
//
//   client seal key   X25519 derived from the client's identity key (HKDF-SHA256 over its
//                     PKCS#8 DER, info "testudo-client-seal-key-v1"): every process holding
//                     the identity has it, no new file, the same passphrase protects it. Its
//                     public half rides, signed, in the pair offer.
//   grant             engine certificate chain | sealed box of the result key to the client
//                     seal key (info names both fingerprints and the key id) | signature by
//                     the engine's identity key over "testudo-result-key-v1" 0 client fp 0
//                     engine fp 0 key id | box.
//
// A process opening a stored result checks the engine's certificate against its own roots and
// the signature (so neither the controller nor another engine made the grant), opens the box
// with its seal key (so it was made for this identity), then the body. The key is per pair,
// so the (key, nonce) pairs of one client process never meet another's.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "crypto/aead.h"
#include "e2e/roots.h"
#include "e2e/sealed_body.h"
#include "testudo/status.h"
#include "tls/tls.h"

namespace testudo::e2e {

// The client identity's seal key (see above).
StatusOr<crypto::X25519KeyPair> client_seal_key(const tls::KeyAndCertificate& identity);

struct ResultKey {
  crypto::AeadKey key{};
  std::string grant;  // what every reply header under this key carries
};

// The engine's grant of a fresh result key to the client `client_fingerprint` whose seal key
// is `client_seal_key`, under the id `key_id` (the pair key's).
StatusOr<ResultKey> grant_result_key(const tls::KeyAndCertificate& engine, std::string_view client_fingerprint,
                                     const crypto::X25519Public& client_seal_key, const KeyId& key_id);

struct OpenedGrant {
  crypto::AeadKey key{};
  std::string engine_fingerprint;
};

// The client's check of a grant for `key_id` (see above). kPermissionDenied with the reason:
// an engine its roots do not trust, a signature that is not the engine's, a box for another
// identity or key id. Network input (fuzzed).
StatusOr<OpenedGrant> open_result_key(std::string_view grant, const KeyId& key_id, std::string_view own_fingerprint,
                                      const crypto::X25519KeyPair& own_seal, const Roots& engine_roots,
                                      std::int64_t now_unix);

}  // namespace testudo::e2e
