// Engine registration data (tags and host facts) is signed by the engine's identity
// (docs/threat-model.md T8): the controller files the facts only if the signature verifies
// with the key of the certificate this engine presented, and only under this connection's
// engine id. The signed bytes include this TLS session's exporter, so a signature recorded on
// one connection is worthless on any other (no replay, no relay of another engine's facts).
// Thread-safe (pure functions).
#pragma once

#include <string>
#include <string_view>

#include "crypto/crypto.h"

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

}  // namespace testudo::auth
