#include "e2e/result_key.h"

#include <algorithm>

#include "crypto/crypto.h"
#include "e2e/signed_statement.h"
#include "wire/byte_io.h"

namespace testudo::e2e {
namespace {

constexpr std::size_t kMaxChainBytes = 12u << 10;
constexpr std::size_t kMaxSignatureBytes = 1024;
constexpr std::size_t kBoxBytes = crypto::kAeadKeyBytes + crypto::kSealedBoxOverhead;

std::string box_info(std::string_view client_fp, std::string_view engine_fp, const KeyId& key_id) {
  return "testudo-result-key-v1|" + std::string(client_fp) + "|" + std::string(engine_fp) + "|" + crypto::to_hex(key_id);
}

std::string signed_bytes(std::string_view client_fp, std::string_view engine_fp, const KeyId& key_id,
                         std::span<const std::byte> box) {
  return SignedStatement("testudo-result-key-v1").text(client_fp).text(engine_fp).bytes(key_id).bytes(box).str();
}

}  // namespace

StatusOr<crypto::X25519KeyPair> client_seal_key(const tls::KeyAndCertificate& identity) {
  TESTUDO_ASSIGN_OR_RETURN(std::vector<std::byte> der, tls::private_key_der(identity.key_pem));
  auto derived = crypto::hkdf_sha256(der, {}, "testudo-client-seal-key-v1");
  crypto::wipe(der);
  if (!derived.ok()) return derived.status();
  auto pair = crypto::x25519_from_private(*derived);
  crypto::wipe(*derived);
  return pair;
}

StatusOr<ResultKey> grant_result_key(const tls::KeyAndCertificate& engine, std::string_view client_fingerprint,
                                     const crypto::X25519Public& client_seal_key, const KeyId& key_id) {
  TESTUDO_ASSIGN_OR_RETURN(std::string engine_fp, tls::key_fingerprint_of_pem(engine.cert_pem));
  ResultKey result;
  TESTUDO_RETURN_IF_ERROR(crypto::fill_random(result.key));
  TESTUDO_ASSIGN_OR_RETURN(std::vector<std::byte> box,
                           crypto::seal_box(client_seal_key, box_info(client_fingerprint, engine_fp, key_id), result.key));
  TESTUDO_ASSIGN_OR_RETURN(std::string signature,
                           tls::sign_sha256(engine.key_pem, signed_bytes(client_fingerprint, engine_fp, key_id, box)));
  wire::ByteWriter w;
  w.str(engine.cert_pem);
  w.bytes(box);
  w.str(signature);
  result.grant.assign(reinterpret_cast<const char*>(w.buffer().data()), w.buffer().size());
  return result;
}

StatusOr<OpenedGrant> open_result_key(std::string_view grant, const KeyId& key_id, std::string_view own_fingerprint,
                                      const crypto::X25519KeyPair& own_seal, const Roots& engine_roots,
                                      std::int64_t now_unix) {
  auto refuse = [](std::string why) { return permission_denied("result key refused: " + std::move(why)); };
  wire::ByteReader r(crypto::as_bytes(grant));
  const std::string chain = r.str(kMaxChainBytes);
  auto box = r.bytes(kBoxBytes);
  const std::string signature = r.str(kMaxSignatureBytes);
  if (!r.ok() || !r.at_end()) return refuse("malformed");
  auto facts = engine_roots.check(chain, now_unix, "engine");
  if (!facts.ok()) return refuse(facts.status().message());
  if (!tls::verify_signature_sha256(facts->cert_pem,
                                    signed_bytes(own_fingerprint, facts->key_fingerprint, key_id, box), signature)
           .ok()) {
    return refuse("not granted to this identity by engine " + facts->key_fingerprint.substr(0, 23) + "…");
  }
  auto key = crypto::open_box(own_seal, box_info(own_fingerprint, facts->key_fingerprint, key_id), box);
  if (!key.ok() || key->size() != crypto::kAeadKeyBytes) return refuse("sealed for another identity");
  OpenedGrant opened;
  std::copy(key->begin(), key->end(), opened.key.begin());
  crypto::wipe(*key);
  opened.engine_fingerprint = facts->key_fingerprint;
  return opened;
}

}  // namespace testudo::e2e
