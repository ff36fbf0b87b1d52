// TLS over OpenSSL 3 for testudo's one-port, mutually authenticated channels: keys and
// certificates, the TLS settings of both sides, and CA-mode chain checks. tls/session.h drives
// one TLS session over a socket. OpenSSL is a private dependency of this folder: no OpenSSL
// type or header appears in its public headers, and no other folder includes OpenSSL (the
// network layer, net/, sees only tls::Context and tls::Session). Functions are thread-safe.
//
// What must hold:
//  * TLS 1.3 only by default; min_version "1.2" also admits TLS 1.2 with ECDHE + AEAD suites
//    and the extended master secret (RFC 7627) only. No compression, no renegotiation, no
//    session tickets.
//  * Both sides present a certificate (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT).
//  * A client context verifies the server by SHA-256 fingerprint of its leaf certificate
//    (pinning) inside the handshake: a mismatch fails the handshake, so nothing is ever
//    written to a wrong server (docs/threat-model.md T3).
//  * A server context accepts any well-formed client certificate that is within its validity
//    period: who the peer is, is decided after the handshake by the capability proof over the
//    TLS exporter (auth/), by identities, and in CA mode by ChainVerifier below (the hub, not
//    the handshake, decides admission, so it can give a clear reason and reload the CRL).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/status.h"

namespace testudo::tls {

// A private key and its certificate (self-signed, or issued by a CA), both PEM.
struct KeyAndCertificate {
  std::string key_pem;   // PKCS#8, unencrypted: written only to owner-only files
  std::string cert_pem;
};

// A fresh ECDSA P-256 key and a self-signed X.509 v3 certificate with CN=`common_name`,
// valid from now-1h for `valid_days`, random 128-bit serial.
StatusOr<KeyAndCertificate> generate_self_signed(std::string_view common_name, int valid_days = 3650);
// The same with an explicit validity window (unix seconds, not_before < not_after, years
// 1950..9999); tests use it to make expired and not-yet-valid certificates.
StatusOr<KeyAndCertificate> generate_self_signed_for_period(std::string_view common_name,
                                                            std::int64_t not_before_unix,
                                                            std::int64_t not_after_unix);

// "sha256:<64 lowercase hex>" of the DER encoding of the first certificate in `cert_pem`.
StatusOr<std::string> fingerprint_of_pem(std::string_view cert_pem);

// "sha256:<64 lowercase hex>" of SHA-256 over the DER SubjectPublicKeyInfo of the key in
// `pem`, which is either a "CERTIFICATE" or a "PUBLIC KEY" PEM (an admin may drop either into
// a trust directory). This is the identity of an actor: it stays the same when a certificate
// is renewed for the same key.
StatusOr<std::string> key_fingerprint_of_pem(std::string_view pem);
// The "PUBLIC KEY" PEM (SubjectPublicKeyInfo) of the certificate's key.
StatusOr<std::string> public_key_pem_of_certificate(std::string_view cert_pem);

// What testudo reads off a certificate. Values only: no OpenSSL objects.
struct CertificateFacts {
  std::string key_fingerprint;   // see key_fingerprint_of_pem: the actor's identity
  std::string cert_fingerprint;  // as fingerprint_of_pem: this one certificate
  std::string subject_cn;        // UTF-8; empty if the subject has no CN
  std::string issuer_cn;         // UTF-8; empty if the issuer has no CN
  std::string serial_hex;        // lowercase hex, no leading zeros ("0" for zero)
  std::int64_t not_before = 0;   // unix seconds
  std::int64_t not_after = 0;    // unix seconds
  std::string cert_pem;          // the certificate itself, PEM
};
// Facts of the first certificate in `cert_pem`; kInvalidArgument if it does not parse.
StatusOr<CertificateFacts> certificate_facts_of_pem(std::string_view cert_pem);
// kPermissionDenied "certificate not valid until 2030-01-01T00:00:00Z" or "certificate
// expired at 2020-01-01T00:00:00Z" when now_unix lies outside [not_before, not_after].
Status check_validity_period(const CertificateFacts& facts, std::int64_t now_unix);

// Checks that key_pem and cert_pem parse and belong together.
Status check_key_matches_certificate(const KeyAndCertificate& kc);

// A signature over `data` with the private key (ECDSA or RSA, SHA-256), DER-encoded, and its
// check against the public key of `cert_pem`. verify_signature fails with kPermissionDenied
// for a signature that does not verify, whatever its bytes (attacker input never crashes).
StatusOr<std::string> sign_sha256(std::string_view key_pem, std::string_view data);
// The private key of `key_pem` (unencrypted) as PKCS#8 DER: the same bytes however the file
// writes it (PKCS#8 or traditional PEM), for deriving keys that must not change with the
// file's format (e2e/result_key.h: the client's seal key).
StatusOr<std::vector<std::byte>> private_key_der(std::string_view key_pem);
Status verify_signature_sha256(std::string_view cert_pem, std::string_view data, std::string_view signature);

// Private keys at rest (docs/threat-model.md T14).
// True if `pem` holds an encrypted private key (PKCS#8 "ENCRYPTED PRIVATE KEY", or a
// traditional PEM with "Proc-Type: 4,ENCRYPTED").
bool is_encrypted_private_key_pem(std::string_view pem);
// PKCS#8 "ENCRYPTED PRIVATE KEY" PEM of the unencrypted key `key_pem`: AES-256-CBC under a key
// from PBKDF2-HMAC-SHA256 with 600000 iterations and a random 16-byte salt. kInvalidArgument
// for an empty passphrase or a key that does not parse (or is already encrypted).
StatusOr<std::string> encrypt_private_key_pem(std::string_view key_pem, std::string_view passphrase);
// The unencrypted PKCS#8 PEM of `pem`. A wrong passphrase gives kPermissionDenied "wrong
// passphrase for the private key"; a malformed PEM kInvalidArgument. An unencrypted key is
// returned as is. Messages never contain the passphrase or key material.
StatusOr<std::string> decrypt_private_key_pem(std::string_view pem, std::string_view passphrase);
// Reads a key (owner-only file, as crypto::read_private_file demands) and its certificate
// (e.g. a controller certificate issued by a CA), decrypts the key with `passphrase` if it
// is encrypted (an encrypted key without a passphrase is kInvalidArgument), and checks that
// they belong together. Errors name the file.
StatusOr<KeyAndCertificate> load_key_and_certificate(const std::string& key_file,
                                                     const std::string& cert_file,
                                                     std::optional<std::string> passphrase);

// TLS settings both sides share (Hazelcast's ssl_* options).
//  min_version: "1.3" (default) or "1.2"; anything else is kInvalidArgument. "1.2" admits TLS
//    1.2 with ECDHE-{ECDSA,RSA}-{AES256-GCM,CHACHA20-POLY1305,AES128-GCM} only, the extended
//    master secret required (both sides refuse a TLS 1.2 peer without it), no renegotiation.
//  ciphersuites: TLS 1.3 suites in OpenSSL syntax, e.g.
//    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"; empty = OpenSSL's default. Allowed
//    names: TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256, TLS_AES_128_GCM_SHA256,
//    TLS_AES_128_CCM_SHA256; anything else (unknown, non-AEAD, short-tag) is kInvalidArgument.
struct ServerOptions {
  KeyAndCertificate identity;  // the controller's key and certificate
  std::string min_version = "1.3";
  std::string ciphersuites;
};

struct ClientOptions {
  KeyAndCertificate identity;       // this client's or engine's key and certificate
  std::string pinned_fingerprint;   // "sha256:<hex>" of the controller certificate; required
  std::string min_version = "1.3";  // as ServerOptions
  std::string ciphersuites;         // as ServerOptions
};

// Verifies a peer's certificate chain against a CA file and, optionally, a CRL, at the
// application level (CA mode): the hub admits or refuses with a clear reason after the
// handshake, and can reload the CRL without rebuilding an SSL_CTX. Purpose: TLS client.
// Immutable after load; verify() is thread-safe. Movable, not copyable.
class ChainVerifier {
 public:
  // `ca_file`: one or more PEM CA certificates (each must be a CA). `crl_file`: empty, or PEM
  // CRLs each signed by a CA in ca_file; when given, the leaf's revocation status is checked
  // and a missing or expired CRL refuses. Errors name the file.
  static StatusOr<ChainVerifier> load(const std::string& ca_file, const std::string& crl_file);

  // OK if the chain (leaf first, then any intermediates the peer sent) leads to a configured
  // CA and nothing is expired or revoked at `now_unix`. Otherwise kPermissionDenied with a
  // reason, e.g. "certificate is not signed by the configured CA: ...", "certificate has been
  // revoked (serial 2a)", "certificate expired at 2020-01-01T00:00:00Z", "CRL expired at ...".
  Status verify(const std::vector<std::string>& chain_pem_leaf_first, std::int64_t now_unix) const;

  ChainVerifier(ChainVerifier&&) noexcept;
  ChainVerifier& operator=(ChainVerifier&&) noexcept;
  ~ChainVerifier();

 private:
  struct Impl;
  explicit ChainVerifier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Drains OpenSSL's thread-local error queue into one Status with `context` in front.
Status openssl_error(std::string_view context);

}  // namespace testudo::tls
