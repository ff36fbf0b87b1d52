#include "crypto/public_key.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>

namespace testudo::crypto {
namespace {

struct Free {
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
  void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); }
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
  void operator()(X509* p) const { X509_free(p); }
};
template <class T>
using Owned = std::unique_ptr<T, Free>;

// The OpenSSL error queue, drained into one line (and emptied, so it does not leak into the
// next caller's error).
std::string openssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

// Largest JWK integer or coordinate accepted: a 16384-bit modulus.
constexpr std::size_t kMaxKeyParameterBytes = 2048;

StatusOr<std::string> to_pem(EVP_PKEY* key) {
  Owned<BIO> bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key) != 1) return internal_error("writing a public key: " + openssl_errors());
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

// Kind and size of a key OpenSSL has parsed; checks it (RSA exponent, EC point on the curve).
StatusOr<PublicKey> describe(EVP_PKEY* key) {
  PublicKey out;
  out.bits = EVP_PKEY_get_bits(key);
  const int id = EVP_PKEY_get_base_id(key);
  if (id == EVP_PKEY_RSA) {
    out.kind = PublicKeyKind::kRsa;
    if (out.bits < kMinRsaBits) {
      return invalid_argument("RSA key of " + std::to_string(out.bits) + " bits; at least " +
                              std::to_string(kMinRsaBits) + " are required");
    }
  } else if (id == EVP_PKEY_EC) {
    char group[64] = {};
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, nullptr) != 1) {
      ERR_clear_error();
      return invalid_argument("EC key without a named curve");
    }
    const std::string_view g(group);
    if (g == "prime256v1" || g == "P-256") {
      out.kind = PublicKeyKind::kEcP256;
    } else if (g == "secp384r1" || g == "P-384") {
      out.kind = PublicKeyKind::kEcP384;
    } else if (g == "secp521r1" || g == "P-521") {
      out.kind = PublicKeyKind::kEcP521;
    } else {
      return invalid_argument("EC key on curve " + std::string(g) + " (P-256, P-384 or P-521 are accepted)");
    }
  } else {
    return invalid_argument("unsupported key type (RSA or EC P-256/P-384/P-521 keys are accepted)");
  }
  Owned<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  if (!ctx || EVP_PKEY_public_check(ctx.get()) != 1) {
    const std::string why = openssl_errors();
    return invalid_argument("the public key does not check out: " + why);
  }
  TESTUDO_ASSIGN_OR_RETURN(out.pem, to_pem(key));
  return out;
}

StatusOr<PublicKey> from_params(const char* type, OSSL_PARAM_BLD* bld) {
  Owned<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(bld));
  Owned<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    const std::string why = openssl_errors();
    return invalid_argument(std::string("not a valid ") + type + " public key: " + why);
  }
  Owned<EVP_PKEY> key(raw);
  return describe(key.get());
}

}  // namespace

std::string_view public_key_kind_name(PublicKeyKind kind) {
  switch (kind) {
    case PublicKeyKind::kRsa: return "RSA";
    case PublicKeyKind::kEcP256: return "EC P-256";
    case PublicKeyKind::kEcP384: return "EC P-384";
    case PublicKeyKind::kEcP521: return "EC P-521";
  }
  return "unknown";
}

StatusOr<PublicKey> public_key_from_pem(std::string_view pem) {
  if (pem.find("PRIVATE KEY") != std::string_view::npos) {
    return invalid_argument("holds a private key; give the issuer's public key (openssl pkey -pubout) instead");
  }
  if (pem.size() > 64 * 1024) return invalid_argument("too large for a public key");
  Owned<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return internal_error("BIO_new_mem_buf failed");
  Owned<EVP_PKEY> key;
  if (pem.find("BEGIN CERTIFICATE") != std::string_view::npos) {
    Owned<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert) key.reset(X509_get_pubkey(cert.get()));
  } else {
    key.reset(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  }
  if (!key) {
    const std::string why = openssl_errors();
    return invalid_argument("no PEM public key or certificate: " + why);
  }
  return describe(key.get());
}

StatusOr<PublicKey> rsa_public_key(std::string_view modulus, std::string_view exponent) {
  if (modulus.empty() || exponent.empty() || modulus.size() > kMaxKeyParameterBytes || exponent.size() > 8) {
    return invalid_argument("RSA key parameters of a bad size");
  }
  auto bn = [](std::string_view bytes) {
    return Owned<BIGNUM>(
        BN_bin2bn(reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()), nullptr));
  };
  Owned<BIGNUM> n = bn(modulus);
  Owned<BIGNUM> e = bn(exponent);
  Owned<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (!n || !e || !bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1) {
    return internal_error("building RSA parameters: " + openssl_errors());
  }
  return from_params("RSA", bld.get());
}

StatusOr<PublicKey> ec_public_key(std::string_view curve, std::string_view x, std::string_view y) {
  const char* group = nullptr;
  std::size_t size = 0;
  if (curve == "P-256") {
    group = "prime256v1", size = 32;
  } else if (curve == "P-384") {
    group = "secp384r1", size = 48;
  } else if (curve == "P-521") {
    group = "secp521r1", size = 66;
  } else {
    return invalid_argument("unsupported EC curve (P-256, P-384 or P-521 are accepted)");
  }
  if (x.size() != size || y.size() != size) {
    return invalid_argument("EC coordinates of " + std::to_string(x.size()) + " and " + std::to_string(y.size()) +
                            " bytes; " + std::string(curve) + " needs " + std::to_string(size));
  }
  // The uncompressed point (SEC 1: 0x04 || x || y).
  std::string point(1, '\x04');
  point.append(x);
  point.append(y);
  Owned<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1) {
    return internal_error("building EC parameters: " + openssl_errors());
  }
  return from_params("EC", bld.get());
}

StatusOr<std::string> base64url_decode(std::string_view text) {
  if (text.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != std::string_view::npos) {
    return invalid_argument("not base64url (A-Z a-z 0-9 - _ without padding)");
  }
  if (text.size() % 4 == 1) return invalid_argument("not base64url (impossible length)");
  if (text.size() > (1u << 24)) return invalid_argument("base64url text too long");
  // EVP_DecodeBlock reads standard base64 in whole quads: translate the alphabet and pad.
  std::string standard(text);
  for (char& c : standard) {
    if (c == '-') c = '+';
    if (c == '_') c = '/';
  }
  const std::size_t padding = (4 - standard.size() % 4) % 4;
  standard.append(padding, '=');
  if (standard.empty()) return std::string();
  std::string out(standard.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(standard.data()), static_cast<int>(standard.size()));
  if (n < 0 || static_cast<std::size_t>(n) != out.size()) {
    ERR_clear_error();
    return invalid_argument("not base64url");
  }
  // EVP_DecodeBlock counts the bytes the padding stood for; they are not data.
  out.resize(out.size() - padding);
  return out;
}

}  // namespace testudo::crypto
