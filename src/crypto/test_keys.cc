#include "crypto/test_keys.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <memory>

namespace testudo::crypto::testing {
namespace {

struct Free {
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string bn_bytes(EVP_PKEY* key, const char* name, int pad_to) {
  BIGNUM* raw = nullptr;
  if (EVP_PKEY_get_bn_param(key, name, &raw) != 1) return "";
  std::unique_ptr<BIGNUM, Free> bn(raw);
  const int size = pad_to > 0 ? pad_to : BN_num_bytes(bn.get());
  std::string out(static_cast<std::size_t>(size), '\0');
  BN_bn2binpad(bn.get(), reinterpret_cast<unsigned char*>(out.data()), size);
  return out;
}

}  // namespace

std::string base64url_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (char& c : out) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return out;
}

StatusOr<TestSigningKey> make_test_signing_key(std::string_view type) {
  EVP_PKEY* raw = nullptr;
  int coordinate = 0;
  if (type == "RSA") {
    raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048));
  } else {
    const char* group = type == "P-256" ? "P-256" : type == "P-384" ? "P-384" : type == "P-521" ? "P-521" : nullptr;
    if (!group) return invalid_argument("unknown test key type");
    coordinate = type == "P-256" ? 32 : type == "P-384" ? 48 : 66;
    raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", group);
  }
  if (!raw) return internal_error("key generation failed");
  std::unique_ptr<EVP_PKEY, Free> key(raw);
  TestSigningKey out;
  std::unique_ptr<BIO, Free> priv(BIO_new(BIO_s_mem()));
  std::unique_ptr<BIO, Free> pub(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_PrivateKey(priv.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1 ||
      PEM_write_bio_PUBKEY(pub.get(), key.get()) != 1) {
    return internal_error("writing the test key failed");
  }
  out.private_pem = bio_text(priv.get());
  out.public_pem = bio_text(pub.get());
  if (type == "RSA") {
    out.n = base64url_encode(bn_bytes(key.get(), OSSL_PKEY_PARAM_RSA_N, 0));
    out.e = base64url_encode(bn_bytes(key.get(), OSSL_PKEY_PARAM_RSA_E, 0));
  } else {
    out.x = base64url_encode(bn_bytes(key.get(), OSSL_PKEY_PARAM_EC_PUB_X, coordinate));
    out.y = base64url_encode(bn_bytes(key.get(), OSSL_PKEY_PARAM_EC_PUB_Y, coordinate));
  }
  return out;
}

}  // namespace testudo::crypto::testing
