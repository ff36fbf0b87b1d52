// An actor's persistent identity on disk: <dir>/<name>-key.pem (0600, PKCS#8, optionally
// encrypted with a passphrase) and <dir>/<name>-cert.pem (self-signed X.509, 0600).
// The identity *is* the key: tls::CertificateFacts::key_fingerprint (SHA-256 of the public
// key) names it in trust directories, policies, the audit log and task ownership, so renewing
// the certificate for the same key keeps the identity.
// Thread-safe (no shared state; files are written atomically).
#pragma once

#include <optional>
#include <string>

#include "auth/passphrase.h"
#include "testudo/status.h"
#include "tls/tls.h"

namespace testudo::auth {

struct IdentityFiles {
  std::string key_path;
  std::string cert_path;
};
IdentityFiles identity_files(const std::string& dir, const std::string& name);

struct CreateIdentityOptions {
  std::string common_name;                // default: "testudo-<name>"
  int valid_days = 3650;
  std::optional<std::string> passphrase;  // set: the key file is encrypted with it
  bool overwrite = false;                 // refuse to replace an existing key unless set
};
// Makes a fresh P-256 key and certificate and writes them; returns them unencrypted.
StatusOr<tls::KeyAndCertificate> create_identity(const std::string& dir, const std::string& name,
                                                 const CreateIdentityOptions& options);

// Reads an identity. An encrypted key is decrypted with the passphrase from `source` (default:
// default_passphrase_source()). A certificate outside its validity period is refused with the
// date and how to renew, so the user learns it here and not from a rejected handshake (T15).
StatusOr<tls::KeyAndCertificate> load_identity(const std::string& dir, const std::string& name,
                                               const std::optional<PassphraseSource>& source = std::nullopt);

// load_identity, or create_identity (unencrypted) if `dir` holds no key of that name yet.
StatusOr<tls::KeyAndCertificate> load_or_create_identity(const std::string& dir, const std::string& name,
                                                         const std::optional<PassphraseSource>& source = std::nullopt);

// The certificate alone (no key, no passphrase needed), e.g. for the controller to trust its
// owner's client identity.
StatusOr<std::string> load_identity_certificate(const std::string& dir, const std::string& name);
// load_identity_certificate, after create_identity(dir, name, options) (unencrypted) if `dir`
// holds no identity of that name yet: the user's client identity and the profile's shared
// engine identity, which a controller, here or started on another host, must trust.
StatusOr<std::string> load_or_create_identity_certificate(const std::string& dir, const std::string& name,
                                                          const CreateIdentityOptions& options = {});

}  // namespace testudo::auth
