#include "auth/registration.h"

#include <nlohmann/json.hpp>

#include "tls/tls.h"

namespace testudo::auth {
namespace {

// A signature is a DER ECDSA or RSA signature: far below this.
constexpr std::size_t kMaxSignatureBytes = 1024;

}  // namespace

StatusOr<EngineRegistration> decode_engine_info(std::string_view info_json) {
  auto info = nlohmann::json::parse(info_json, nullptr, /*allow_exceptions=*/false);
  if (info.is_discarded() || !info.is_object() || info.size() > kMaxEngineTags) {
    return invalid_argument("engine info must be a JSON object of at most " + std::to_string(kMaxEngineTags) + " tags");
  }
  EngineRegistration out;
  for (const auto& [key, value] : info.items()) {
    if (key.empty() || key.size() > kMaxEngineTagNameBytes || value.is_structured() || value.is_binary()) {
      return invalid_argument("engine tags are flat: a name of 1 to " + std::to_string(kMaxEngineTagNameBytes) +
                              " bytes -> a scalar");
    }
    out.tags[key] = value.is_string() ? value.get<std::string>() : value.dump();
  }
  // Invalid UTF-8 inside strings is replaced rather than thrown on: the text is the peer's.
  out.info_json = info.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  out.info_sha256 = crypto::to_hex(crypto::sha256(crypto::as_bytes(info_json)));
  return out;
}

StatusOr<EngineRegistration> verify_engine_registration(net::Connection& connection, const wire::Message& m) {
  if (m.segments.empty() || m.segments.size() > 2 || m.segments[0].size() > kMaxSignatureBytes) {
    return permission_denied("engine registration data must carry one signature");
  }
  if (m.segments.size() == 2 && m.segments[1].size() > kMaxSealStatementBytes) {
    return permission_denied("engine seal statement too large");
  }
  auto exporter = connection.export_keying_material(kRegistrationExporterLabel, kRegistrationExporterContext);
  auto cert = connection.peer_certificate();
  if (!exporter.ok() || !cert.ok()) return permission_denied("cannot check the registration signature");
  Status signed_ok = tls::verify_signature_sha256(cert->cert_pem, registration_signed_bytes(*exporter, m.envelope.text),
                                                  m.segments[0].view());
  if (!signed_ok.ok()) return permission_denied("engine registration data: " + signed_ok.message());
  TESTUDO_ASSIGN_OR_RETURN(EngineRegistration registration, decode_engine_info(m.envelope.text));
  if (m.segments.size() == 2) registration.seal_statement = m.segments[1].to_string();
  return registration;
}

}  // namespace testudo::auth
