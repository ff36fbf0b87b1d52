// Capability proofs (docs/security.md, "Joining a cluster"): a peer shows it holds the
// 256-bit secret of its role without sending it. The proof is
//   HMAC-SHA-256(capability, "testudo-capability-proof-v1" | role | exporter)
// where exporter is the TLS 1.3 exporter value of *this* session (RFC 8446 §7.5, label
// kExporterLabel, context = role name). A proof is therefore useless on any other TLS
// session: it cannot be replayed (T5) or relayed by a man in the middle, and a hostile server
// learns nothing reusable from it (T3; besides, clients pin the server before sending it).
// Thread-safe (pure functions).
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "auth/login.h"
#include "crypto/crypto.h"
#include "testudo/status.h"
#include "wire/message.h"

namespace testudo::auth {

inline constexpr std::string_view kExporterLabel = "EXPORTER-testudo-capability-v1";

using Capability = crypto::Digest;

crypto::Digest capability_proof(const Capability& capability, wire::Role role, const crypto::Digest& exporter);

// The body of a kHello (carried in Envelope::text).
struct Hello {
  wire::Role role = wire::Role::kClient;
  // A random id the peer keeps for its process lifetime, so an engine that reconnects gets
  // its engine id back. Not a secret.
  std::string instance;
  crypto::Digest proof{};
  // A login (login.h), clients only: the method and its first message. kKey (the default)
  // carries no message and is encoded as no login at all, as before logins existed.
  LoginMethod login = LoginMethod::kKey;
  std::string login_message;
};
inline constexpr std::size_t kMaxInstanceBytes = 64;

std::string encode_hello(const Hello& hello);
StatusOr<Hello> decode_hello(std::string_view text);

}  // namespace testudo::auth
