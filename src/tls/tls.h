// TLS over OpenSSL 3 for testudo's one-port, mutually authenticated channels.
// This layer makes SSL_CTX objects and reads facts off an established SSL session; the
// asio stream that drives the handshake lives in net/. Only OpenSSL forward declarations
// appear here. Functions are thread-safe; an SSL_CTX made here is immutable after creation.
//
// What must hold:
//  * TLS 1.3 only by default (min_version may be raised later, never below 1.2 with AEAD
//    suites); no compression, no renegotiation, no session tickets.
//  * Both sides present a certificate (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT).
//  * A client context verifies the server by SHA-256 fingerprint of its leaf certificate
//    (pinning) inside the handshake: a mismatch fails the handshake, so nothing is ever
//    written to a wrong server (THREATS.md T3).
//  * A server context accepts any well-formed client certificate for now: who the peer is,
//    is decided by the capability proof over the TLS exporter (auth/) and later by identities.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "testudo/status.h"

struct ssl_ctx_st;  // SSL_CTX
struct ssl_st;      // SSL

namespace testudo::tls {

struct SslCtxDeleter {
  void operator()(ssl_ctx_st* ctx) const;
};
using SslCtxPtr = std::unique_ptr<ssl_ctx_st, SslCtxDeleter>;

// A private key and its self-signed certificate, both PEM.
struct KeyAndCertificate {
  std::string key_pem;   // PKCS#8, unencrypted: written only to owner-only files
  std::string cert_pem;
};

// A fresh ECDSA P-256 key and a self-signed X.509 v3 certificate with CN=`common_name`,
// valid from now-1h for `valid_days`, random 128-bit serial.
StatusOr<KeyAndCertificate> generate_self_signed(std::string_view common_name, int valid_days = 3650);

// "sha256:<64 lowercase hex>" of the DER encoding of the first certificate in `cert_pem`.
StatusOr<std::string> fingerprint_of_pem(std::string_view cert_pem);

// Checks that key_pem and cert_pem parse and belong together.
Status check_key_matches_certificate(const KeyAndCertificate& kc);

struct ServerOptions {
  KeyAndCertificate identity;  // the controller's key and certificate
};
StatusOr<SslCtxPtr> make_server_context(const ServerOptions& options);

struct ClientOptions {
  KeyAndCertificate identity;       // this client's or engine's key and certificate
  std::string pinned_fingerprint;   // "sha256:<hex>" of the controller certificate; required
};
StatusOr<SslCtxPtr> make_client_context(const ClientOptions& options);

// RFC 8446 exporter (SSL_export_keying_material) of 32 bytes for `label` and `context`.
// Both ends of one TLS session get the same value; any other session gets another.
StatusOr<std::array<std::byte, 32>> export_keying_material(ssl_st* ssl, std::string_view label,
                                                           std::string_view context);

// Fingerprint ("sha256:<hex>") of the peer's leaf certificate, or an error if none.
StatusOr<std::string> peer_fingerprint(ssl_st* ssl);

// Drains OpenSSL's thread-local error queue into one Status with `context` in front.
Status openssl_error(std::string_view context);

}  // namespace testudo::tls
