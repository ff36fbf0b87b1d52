// An engine's seal key (docs/e2e-design.md "Keys"): a fresh X25519 key pair per engine
// process, its public half signed by the engine's identity key, so that a client can seal a
// pair key that only this engine process opens. Fresh per process: a restarted engine
// cannot open what was sealed to its predecessor, so a controller that replays a recorded
// session to a new engine process gets nowhere.
//
// The statement travels from the engine through the controller (kEngineInfo, then the
// engine list) as JSON text: {"v": 1, "seal_key": hex, "certificate": PEM, "signature":
// base64}. The controller relays it unread; the client checks it against its own roots.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "crypto/aead.h"
#include "e2e/roots.h"
#include "testudo/status.h"
#include "tls/tls.h"

namespace testudo::e2e {

inline constexpr std::size_t kMaxSealStatementBytes = 16u << 10;

// What the identity key signs: a context string, the engine's key fingerprint, the seal key.
std::string engine_seal_signed_bytes(std::string_view engine_fingerprint, const crypto::X25519Public& seal_key);

StatusOr<std::string> make_engine_seal_statement(const tls::KeyAndCertificate& engine,
                                                 const crypto::X25519Public& seal_key);

// An engine as a client knows it once its statement checked out.
struct VerifiedEngine {
  std::string fingerprint;  // the engine's key fingerprint
  crypto::X25519Public seal_key{};
};

// Checks a statement against the client's engine roots at `now_unix`: well-formed (at most
// kMaxSealStatementBytes), the certificate trusted (roots.h), the signature made by its key.
// kPermissionDenied with the reason otherwise. Network input: fuzzed with the header.
StatusOr<VerifiedEngine> verify_engine_seal_statement(std::string_view statement, const Roots& engine_roots,
                                                      std::int64_t now_unix);

}  // namespace testudo::e2e
