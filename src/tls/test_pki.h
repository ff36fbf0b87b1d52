// A tiny certificate authority for tests only (CA mode, ChainVerifier, integration tests):
// real X.509 v3 objects over ECDSA P-256 and SHA-256, made in memory. Never link this into a
// product binary. Functions are thread-safe (no shared state).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/status.h"
#include "tls/tls.h"

namespace testudo::tls::testing {

struct TestCa {
  KeyAndCertificate root;  // CA:TRUE, keyUsage keyCertSign+cRLSign, self-signed
};

// A fresh root CA with CN=`cn`, valid from now-1h for 10 years.
StatusOr<TestCa> make_ca(std::string_view cn);

// A fresh P-256 key and a leaf certificate for it signed by `ca`: CA:FALSE, keyUsage
// digitalSignature, extendedKeyUsage clientAuth+serverAuth, the given validity and serial
// (nonzero).
StatusOr<KeyAndCertificate> issue(const TestCa& ca, std::string_view cn, std::int64_t not_before_unix,
                                  std::int64_t not_after_unix, std::uint64_t serial);

// The same for an existing key (`key_pem`, unencrypted): renewing a certificate keeps the
// actor's key fingerprint.
StatusOr<KeyAndCertificate> issue_for_key(const TestCa& ca, std::string_view key_pem, std::string_view cn,
                                          std::int64_t not_before_unix, std::int64_t not_after_unix,
                                          std::uint64_t serial);

// A v2 CRL signed by `ca` listing `revoked_serials` (revoked at this_update), PEM.
StatusOr<std::string> make_crl(const TestCa& ca, const std::vector<std::uint64_t>& revoked_serials,
                               std::int64_t this_update_unix, std::int64_t next_update_unix);

}  // namespace testudo::tls::testing
