// OpenSSL helpers shared by tls.cc and test_pki.cc. Internal to src/tls: include only from
// .cc files in this folder (it pulls in OpenSSL headers, which public headers never do).
#pragma once

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "testudo/status.h"

namespace testudo::tls::internal {

template <auto Free>
struct Deleter {
  template <typename T>
  void operator()(T* p) const {
    Free(p);
  }
};
using BioPtr = std::unique_ptr<BIO, Deleter<BIO_free_all>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, Deleter<X509_NAME_free>>;
using X509ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION_free>>;
using X509CrlPtr = std::unique_ptr<X509_CRL, Deleter<X509_CRL_free>>;
using BignumPtr = std::unique_ptr<BIGNUM, Deleter<BN_free>>;
using Asn1TimePtr = std::unique_ptr<ASN1_TIME, Deleter<ASN1_TIME_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, Deleter<ASN1_INTEGER_free>>;

// Drains OpenSSL's error queue into one Status with `context` in front.
Status openssl_error_as(StatusCode code, std::string_view context);

// Parsers for untrusted PEM: size-limited, never prompt for a passphrase.
StatusOr<X509Ptr> parse_certificate(std::string_view cert_pem);
StatusOr<PkeyPtr> parse_private_key(std::string_view key_pem);

StatusOr<std::string> certificate_pem(const X509* cert);
StatusOr<std::string> private_key_pem(const EVP_PKEY* key);  // unencrypted PKCS#8, secure memory

// Times in [1950, 9999] as RFC 5280 wants them (UTCTime before 2050, GeneralizedTime after).
constexpr std::int64_t kMinUnixTime = -631152000;      // 1950-01-01T00:00:00Z
constexpr std::int64_t kMaxUnixTime = 253402300799;    // 9999-12-31T23:59:59Z
StatusOr<Asn1TimePtr> asn1_time(std::int64_t unix_seconds);

// What a certificate made here is for.
enum class CertificateKind {
  kEndEntity,  // CA:FALSE, digitalSignature, EKU serverAuth+clientAuth
  kCa,         // CA:TRUE, keyCertSign+cRLSign
};

// An X.509 v3 certificate for `subject_key` with CN=`subject_cn`, signed with SHA-256 by
// `issuer_key`. `issuer` null means self-signed (issuer name = subject name, signed by
// `issuer_key`, which must then be `subject_key`'s private half). `serial` must be positive.
StatusOr<X509Ptr> build_certificate(EVP_PKEY* subject_key, std::string_view subject_cn,
                                    const X509* issuer, EVP_PKEY* issuer_key,
                                    std::int64_t not_before_unix, std::int64_t not_after_unix,
                                    const BIGNUM* serial, CertificateKind kind);

}  // namespace testudo::tls::internal
