// Trust roots for end-to-end sealing (docs/e2e-design.md "Trust roots"): how a client knows
// an engine's key, and an engine a client's, from something the controller cannot forge —
// keys pinned by fingerprint (the owner's client key that `cluster start` hands its engines,
// the shared engine certificate of the user's own profile), or a CA whose certificates both
// sides were given. Never from the controller: a compromised controller could otherwise
// invent participants.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/status.h"
#include "tls/tls.h"

namespace testudo::e2e {

class Roots {
 public:
  Roots() = default;
  // `fingerprints`: key fingerprints "sha256:<hex>" (tls::key_fingerprint_of_pem); `ca_file`:
  // empty or a PEM file of CA certificates. Errors name the bad fingerprint or file.
  static StatusOr<Roots> make(const std::vector<std::string>& fingerprints, const std::string& ca_file);

  bool empty() const { return fingerprints_.empty() && !ca_; }
  // "CA", "pinned", "CA and pinned", or "none".
  std::string describe() const;

  // The leaf's facts if the certificate chain `chain_pem` (leaf first, PEM concatenated) is
  // trusted at `now_unix`: the leaf within its validity period and its key pinned, or the
  // chain leading to the CA. kPermissionDenied names `whom` and the reason.
  StatusOr<tls::CertificateFacts> check(std::string_view chain_pem, std::int64_t now_unix, std::string_view whom) const;

 private:
  std::set<std::string> fingerprints_;
  std::shared_ptr<const tls::ChainVerifier> ca_;
};

// Splits concatenated PEM certificates into one string each, in order.
std::vector<std::string> split_pem_certificates(std::string_view chain_pem);

}  // namespace testudo::e2e
