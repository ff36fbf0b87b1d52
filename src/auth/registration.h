// Engine registration data (tags and host facts) is signed by the engine's identity
// (docs/threat-model.md T8): the controller files the facts only if the signature verifies
// with the key of the certificate this engine presented, and only under this connection's
// engine id. The signed bytes include this TLS session's exporter, so a signature recorded on
// one connection is worthless on any other (no replay, no relay of another engine's facts).
// Thread-safe (pure functions).
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "crypto/crypto.h"
#include "net/net.h"
#include "testudo/status.h"
#include "wire/message.h"

namespace testudo::auth {

inline constexpr std::string_view kRegistrationExporterLabel = "EXPORTER-testudo-registration-v1";
inline constexpr std::string_view kRegistrationExporterContext = "engine";

// What the engine signs: a context string, the exporter, then the facts (JSON text).
inline std::string registration_signed_bytes(const crypto::Digest& exporter, std::string_view info_json) {
  std::string out = "testudo-engine-registration-v1";
  out.push_back('\0');
  out.append(reinterpret_cast<const char*>(exporter.data()), exporter.size());
  out.append(info_json);
  return out;
}

// What an engine says about itself, as the controller keeps it.
struct EngineRegistration {
  std::string info_json;  // the facts, re-encoded: a flat JSON object of scalars
  // The same as text, for the policy's engine selectors: strings as they are, other scalars as
  // their JSON text ("true", "8").
  std::map<std::string, std::string> tags;
  std::string info_sha256;  // hex of the facts as signed, for the audit log
  // The engine's seal statement (e2e/engine_seal.h), relayed unread to clients, who check it
  // against their own roots; empty if the engine sent none.
  std::string seal_statement;
};
// Bound on the seal statement the controller keeps per engine (a certificate chain and a
// signature; e2e/engine_seal.h has the same bound).
inline constexpr std::size_t kMaxSealStatementBytes = 16u << 10;
inline constexpr std::size_t kMaxEngineTags = 256;
inline constexpr std::size_t kMaxEngineTagNameBytes = 64;

// Parses an engine's facts (the text it signs): a JSON object of at most kMaxEngineTags
// entries, names up to kMaxEngineTagNameBytes, values scalars. Anything else is
// kInvalidArgument. Pure; fuzzed (fuzz/engine_info_fuzz.cc).
StatusOr<EngineRegistration> decode_engine_info(std::string_view info_json);

// The controller's check of a kEngineInfo message on `connection`: a segment holding the
// signature of registration_signed_bytes(this session's exporter, envelope.text), made with
// the key of the certificate this connection presented, and optionally a second one with
// the engine's seal statement (kept opaque); then decode_engine_info. Errors
// (kPermissionDenied, kInvalidArgument) are safe to send to the peer.
StatusOr<EngineRegistration> verify_engine_registration(net::Connection& connection, const wire::Message& message);

}  // namespace testudo::auth
