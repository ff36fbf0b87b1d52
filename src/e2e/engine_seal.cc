#include "e2e/engine_seal.h"

#include <nlohmann/json.hpp>

#include "crypto/crypto.h"
#include "e2e/signed_statement.h"

namespace testudo::e2e {

std::string engine_seal_signed_bytes(std::string_view engine_fingerprint, const crypto::X25519Public& seal_key) {
  return SignedStatement("testudo-engine-seal-v1").text(engine_fingerprint).bytes(seal_key).str();
}

StatusOr<std::string> make_engine_seal_statement(const tls::KeyAndCertificate& engine,
                                                 const crypto::X25519Public& seal_key) {
  TESTUDO_ASSIGN_OR_RETURN(std::string fingerprint, tls::key_fingerprint_of_pem(engine.cert_pem));
  TESTUDO_ASSIGN_OR_RETURN(std::string signature,
                           tls::sign_sha256(engine.key_pem, engine_seal_signed_bytes(fingerprint, seal_key)));
  return nlohmann::json{{"v", 1},
                        {"seal_key", crypto::to_hex(seal_key)},
                        {"certificate", engine.cert_pem},
                        {"signature", crypto::to_base64(crypto::as_bytes(signature))}}
      .dump();
}

StatusOr<VerifiedEngine> verify_engine_seal_statement(std::string_view statement, const Roots& engine_roots,
                                                      std::int64_t now_unix) {
  auto refuse = [](std::string why) { return permission_denied("engine seal statement: " + std::move(why)); };
  if (statement.empty()) return refuse("the engine sent none (an engine older than end-to-end sealing?)");
  if (statement.size() > kMaxSealStatementBytes) return refuse("too large");
  auto j = nlohmann::json::parse(statement, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || j.size() != 4 || !j.contains("v") || j["v"] != 1 ||
      !j.contains("seal_key") || !j["seal_key"].is_string() || !j.contains("certificate") ||
      !j["certificate"].is_string() || !j.contains("signature") || !j["signature"].is_string()) {
    return refuse("malformed");
  }
  auto key = crypto::from_hex(j["seal_key"].get<std::string>());
  if (!key.ok() || key->size() != crypto::kX25519Bytes) return refuse("malformed seal key");
  auto signature = crypto::from_base64(j["signature"].get<std::string>());
  if (!signature.ok()) return refuse("malformed signature");
  const std::string chain = j["certificate"].get<std::string>();
  TESTUDO_ASSIGN_OR_RETURN(tls::CertificateFacts facts, engine_roots.check(chain, now_unix, "engine"));
  VerifiedEngine engine;
  engine.fingerprint = facts.key_fingerprint;
  std::copy(key->begin(), key->end(), engine.seal_key.begin());
  const std::string signed_bytes = engine_seal_signed_bytes(engine.fingerprint, engine.seal_key);
  if (!tls::verify_signature_sha256(facts.cert_pem, signed_bytes,
                                    std::string_view(reinterpret_cast<const char*>(signature->data()), signature->size()))
           .ok()) {
    return refuse("the signature is not the engine key's (" + engine.fingerprint.substr(0, 23) + "…)");
  }
  return engine;
}

}  // namespace testudo::e2e
