#include "auth/identity.h"

#include <sys/stat.h>

#include <chrono>

#include "crypto/crypto.h"
#include "crypto/private_file.h"

namespace testudo::auth {
namespace {

std::int64_t now_unix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace

IdentityFiles identity_files(const std::string& dir, const std::string& name) {
  return {dir + "/" + name + "-key.pem", dir + "/" + name + "-cert.pem"};
}

StatusOr<tls::KeyAndCertificate> create_identity(const std::string& dir, const std::string& name,
                                                 const CreateIdentityOptions& options) {
  const IdentityFiles files = identity_files(dir, name);
  if (!options.overwrite && exists(files.key_path)) {
    return already_exists("identity key " + files.key_path + " exists; pass --force to replace it (its fingerprint, "
                          "and everything trusted or owned under it, would change)");
  }
  TESTUDO_RETURN_IF_ERROR(crypto::ensure_private_dir(dir));
  std::string cn = options.common_name.empty() ? "testudo-" + name : options.common_name;
  TESTUDO_ASSIGN_OR_RETURN(tls::KeyAndCertificate kc, tls::generate_self_signed(cn, options.valid_days));
  std::string key_file_pem = kc.key_pem;
  if (options.passphrase) {
    TESTUDO_ASSIGN_OR_RETURN(key_file_pem, tls::encrypt_private_key_pem(kc.key_pem, *options.passphrase));
  }
  // Certificate first: a key without its certificate would be an identity nobody can load.
  TESTUDO_RETURN_IF_ERROR(crypto::write_private_file(files.cert_path, kc.cert_pem));
  TESTUDO_RETURN_IF_ERROR(crypto::write_private_file(files.key_path, key_file_pem));
  return kc;
}

StatusOr<tls::KeyAndCertificate> load_identity(const std::string& dir, const std::string& name,
                                               const std::optional<PassphraseSource>& source) {
  const IdentityFiles files = identity_files(dir, name);
  // A directory others can write to lets them swap the key: refused like a loose key file.
  if (Status st = crypto::check_private_dir(dir); !st.ok() && st.code() != StatusCode::kNotFound) return st;
  TESTUDO_ASSIGN_OR_RETURN(std::string key_pem, crypto::read_private_file(files.key_path, "private key"));
  TESTUDO_ASSIGN_OR_RETURN(std::string cert_pem, crypto::read_private_file(files.cert_path, "certificate"));
  if (tls::is_encrypted_private_key_pem(key_pem)) {
    PassphraseSource from;
    if (source) {
      from = *source;
    } else {
      TESTUDO_ASSIGN_OR_RETURN(from, default_passphrase_source());
    }
    TESTUDO_ASSIGN_OR_RETURN(std::string passphrase, read_passphrase(from, "private key " + files.key_path));
    auto clear = tls::decrypt_private_key_pem(key_pem, passphrase);
    crypto::wipe(passphrase);
    if (!clear.ok()) return clear.status().with_context(files.key_path);
    key_pem = std::move(clear).value();
  }
  tls::KeyAndCertificate kc{std::move(key_pem), std::move(cert_pem)};
  TESTUDO_RETURN_IF_ERROR(tls::check_key_matches_certificate(kc).with_context(files.key_path));
  TESTUDO_ASSIGN_OR_RETURN(tls::CertificateFacts facts, tls::certificate_facts_of_pem(kc.cert_pem));
  Status valid = tls::check_validity_period(facts, now_unix());
  if (!valid.ok()) {
    return Status(valid.code(), files.cert_path + ": " + valid.message() +
                                    "; make a new identity with: testudo keys create --force (its fingerprint changes, "
                                    "so it must be trusted again)");
  }
  return kc;
}

StatusOr<tls::KeyAndCertificate> load_or_create_identity(const std::string& dir, const std::string& name,
                                                         const std::optional<PassphraseSource>& source) {
  auto loaded = load_identity(dir, name, source);
  if (loaded.ok() || loaded.status().code() != StatusCode::kNotFound ||
      exists(identity_files(dir, name).key_path)) {
    return loaded;
  }
  return create_identity(dir, name, {});
}

StatusOr<std::string> load_identity_certificate(const std::string& dir, const std::string& name) {
  return crypto::read_private_file(identity_files(dir, name).cert_path, "certificate");
}

StatusOr<std::string> load_or_create_identity_certificate(const std::string& dir, const std::string& name,
                                                          const CreateIdentityOptions& options) {
  auto cert = load_identity_certificate(dir, name);
  if (cert.ok() || cert.status().code() != StatusCode::kNotFound) return cert;
  TESTUDO_ASSIGN_OR_RETURN(tls::KeyAndCertificate made, create_identity(dir, name, options));
  return made.cert_pem;
}

}  // namespace testudo::auth
