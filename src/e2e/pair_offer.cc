#include "e2e/pair_offer.h"

#include <algorithm>

#include "crypto/crypto.h"
#include "e2e/signed_statement.h"
#include "wire/byte_io.h"

namespace testudo::e2e {
namespace {

constexpr std::size_t kMaxCertificateBytes = 12u << 10;
constexpr std::size_t kMaxSignatureBytes = 1024;
// The box holds pair key | balanced key id | balanced key.
constexpr std::size_t kKeysBytes = 2 * crypto::kAeadKeyBytes + kKeyIdBytes;
constexpr std::size_t kBoxBytes = kKeysBytes + crypto::kSealedBoxOverhead;

std::string signed_bytes(std::string_view client_fp, std::string_view engine_fp, const crypto::X25519Public& seal_key,
                         const KeyId& key_id, const crypto::X25519Public& client_seal_key,
                         std::span<const std::byte> box) {
  return SignedStatement("testudo-pair-offer-v1")
      .text(client_fp)
      .text(engine_fp)
      .bytes(seal_key)
      .bytes(key_id)
      .bytes(client_seal_key)
      .bytes(box)
      .str();
}

// What the box is for: its info string names the parties and the key id.
std::string box_info(std::string_view client_fp, std::string_view engine_fp, const KeyId& key_id) {
  return "testudo-pair-key-v1|" + std::string(client_fp) + "|" + std::string(engine_fp) + "|" + crypto::to_hex(key_id);
}

}  // namespace

StatusOr<std::string> make_pair_offer(const tls::KeyAndCertificate& client, const VerifiedEngine& engine,
                                      const PairKey& key, const PairKey& balanced_key,
                                      const crypto::X25519Public& client_seal_key) {
  TESTUDO_ASSIGN_OR_RETURN(std::string client_fp, tls::key_fingerprint_of_pem(client.cert_pem));
  std::vector<std::byte> keys;
  keys.insert(keys.end(), key.key.begin(), key.key.end());
  keys.insert(keys.end(), balanced_key.id.begin(), balanced_key.id.end());
  keys.insert(keys.end(), balanced_key.key.begin(), balanced_key.key.end());
  auto sealed = crypto::seal_box(engine.seal_key, box_info(client_fp, engine.fingerprint, key.id), keys);
  crypto::wipe(keys);
  TESTUDO_ASSIGN_OR_RETURN(std::vector<std::byte> box, std::move(sealed));
  TESTUDO_ASSIGN_OR_RETURN(std::string signature,
                           tls::sign_sha256(client.key_pem, signed_bytes(client_fp, engine.fingerprint, engine.seal_key,
                                                                         key.id, client_seal_key, box)));
  wire::ByteWriter w;
  w.str(client.cert_pem);
  w.bytes(key.id);
  w.bytes(client_seal_key);
  w.bytes(box);
  w.str(signature);
  auto& bytes = w.buffer();
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

StatusOr<AcceptedOffer> accept_pair_offer(std::string_view offer, const Roots& client_roots,
                                          std::string_view own_fingerprint, const crypto::X25519KeyPair& own_seal,
                                          std::int64_t now_unix) {
  auto refuse = [](std::string why) { return permission_denied("pair offer refused: " + std::move(why)); };
  wire::ByteReader r(crypto::as_bytes(offer));
  const std::string certificate = r.str(kMaxCertificateBytes);
  KeyId key_id{};
  auto id = r.bytes(key_id.size());
  if (r.ok()) std::copy(id.begin(), id.end(), key_id.begin());
  crypto::X25519Public client_seal_key{};
  auto seal = r.bytes(client_seal_key.size());
  if (r.ok()) std::copy(seal.begin(), seal.end(), client_seal_key.begin());
  auto box = r.bytes(kBoxBytes);
  const std::string signature = r.str(kMaxSignatureBytes);
  if (!r.ok() || !r.at_end()) return refuse("malformed");
  if (client_roots.empty()) {
    return refuse("this engine trusts no client key for end-to-end sealing (start it with --trust-client FINGERPRINT "
                  "or --client-cafile FILE)");
  }
  auto facts = client_roots.check(certificate, now_unix, "client");
  if (!facts.ok()) return refuse(facts.status().message());
  const std::string& client_fp = facts->key_fingerprint;
  if (!tls::verify_signature_sha256(facts->cert_pem,
                                    signed_bytes(client_fp, own_fingerprint, own_seal.public_key, key_id,
                                                 client_seal_key, box),
                                    signature)
           .ok()) {
    // Also what a replay to another engine, or to a restarted engine (new seal key), gives.
    return refuse("not signed by client " + client_fp.substr(0, 23) + "… for this engine process");
  }
  auto keys = crypto::open_box(own_seal, box_info(client_fp, own_fingerprint, key_id), box);
  if (!keys.ok() || keys->size() != kKeysBytes) return refuse("the sealed key does not open");
  AcceptedOffer accepted;
  accepted.client_fingerprint = client_fp;
  accepted.client_seal_key = client_seal_key;
  accepted.key.id = key_id;
  auto at = keys->begin();
  std::copy_n(at, crypto::kAeadKeyBytes, accepted.key.key.begin());
  at += crypto::kAeadKeyBytes;
  std::copy_n(at, kKeyIdBytes, accepted.balanced_key.id.begin());
  at += kKeyIdBytes;
  std::copy_n(at, crypto::kAeadKeyBytes, accepted.balanced_key.key.begin());
  crypto::wipe(*keys);
  return accepted;
}

}  // namespace testudo::e2e
