// OpenSSL helpers shared by tls.cc, session.cc and test_pki.cc, and by this folder's tests.
// Internal to src/tls: include only from .cc files in this folder (it pulls in OpenSSL
// headers, which public headers never do).
#pragma once

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/status.h"
#include "tls/tls.h"

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
using SslCtxPtr = std::unique_ptr<SSL_CTX, Deleter<SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, Deleter<SSL_free>>;

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

// SSL_CTX objects with the settings of ServerOptions / ClientOptions (see tls.h): immutable
// once made. tls::Context wraps them; tests drive raw SSL objects made from them.
StatusOr<SslCtxPtr> make_server_context(const ServerOptions& options);
StatusOr<SslCtxPtr> make_client_context(const ClientOptions& options);

// RFC 8446 exporter (SSL_export_keying_material) of 32 bytes for `label` and `context`.
// Both ends of one TLS session get the same value; any other session gets another.
StatusOr<std::array<std::byte, 32>> export_keying_material(SSL* ssl, std::string_view label,
                                                           std::string_view context);
// Fingerprint ("sha256:<hex>") of the peer's leaf certificate, or an error if none.
StatusOr<std::string> peer_fingerprint(SSL* ssl);
// Facts of the peer's leaf certificate; kFailedPrecondition if the peer presented none.
StatusOr<CertificateFacts> peer_certificate_facts(SSL* ssl);
// PEM of every certificate the peer sent, leaf first, each once (OpenSSL's server side leaves
// the leaf out of SSL_get_peer_cert_chain, its client side puts it in; this evens that out).
StatusOr<std::vector<std::string>> peer_certificate_chain_pem(SSL* ssl);

}  // namespace testudo::tls::internal
