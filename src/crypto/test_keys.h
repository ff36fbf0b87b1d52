// For tests only: fresh signing keys made by OpenSSL, as a token issuer would hold them (the
// private key in PEM to sign with; the public key in PEM and as JWK parameters to verify
// with). Never link this into a product binary. Thread-safe (no shared state).
#pragma once

#include <string>
#include <string_view>

#include "testudo/status.h"

namespace testudo::crypto::testing {

struct TestSigningKey {
  std::string private_pem;  // PKCS#8
  std::string public_pem;   // SubjectPublicKeyInfo
  // JWK parameters, base64url without padding: RSA n and e, or EC x and y (crv as asked).
  std::string n, e, x, y;
};

// `type` is "RSA" (2048 bits) or an EC curve: "P-256", "P-384", "P-521".
StatusOr<TestSigningKey> make_test_signing_key(std::string_view type);

// Base64url without padding (the inverse of base64url_decode), for tests that build tokens
// by hand.
std::string base64url_encode(std::string_view bytes);

}  // namespace testudo::crypto::testing
