// Public keys of token issuers (auth/token_login.h): what kind a key is, and the keys a JWKS
// document describes (RFC 7517/7518: RSA "n"/"e", EC "crv"/"x"/"y") turned into PEM
// (SubjectPublicKeyInfo), the form libjwt verifies with. Also base64url (RFC 4648 §5), which
// JWTs and JWKs are written in. OpenSSL types never appear here. Thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "testudo/status.h"

namespace testudo::crypto {

enum class PublicKeyKind {
  kRsa,
  kEcP256,
  kEcP384,
  kEcP521,
};
std::string_view public_key_kind_name(PublicKeyKind kind);  // "RSA", "EC P-256", ...

struct PublicKey {
  PublicKeyKind kind = PublicKeyKind::kRsa;
  int bits = 0;     // modulus or field size
  std::string pem;  // "-----BEGIN PUBLIC KEY-----" (SubjectPublicKeyInfo)
};

// Smallest RSA modulus accepted for an issuer key (NIST SP 800-131A).
inline constexpr int kMinRsaBits = 2048;

// A PEM public key ("BEGIN PUBLIC KEY") or certificate (its key is taken). Private keys are
// refused: an issuer's private key has no business on the controller. Other key types
// (Ed25519, DSA, other curves) and RSA keys under kMinRsaBits are refused with the reason.
StatusOr<PublicKey> public_key_from_pem(std::string_view pem);

// JWK parameters, already base64url-decoded (big-endian unsigned integers / coordinates).
StatusOr<PublicKey> rsa_public_key(std::string_view modulus, std::string_view exponent);
// `curve` is the JWK "crv": "P-256", "P-384" or "P-521"; x and y must be the curve's size.
StatusOr<PublicKey> ec_public_key(std::string_view curve, std::string_view x, std::string_view y);

// Strict base64url without padding (as JWS and JWK write it): only A-Z a-z 0-9 - _, no '=',
// no whitespace, and a length that is not 1 mod 4. Decoded by OpenSSL (EVP_DecodeBlock).
StatusOr<std::string> base64url_decode(std::string_view text);

}  // namespace testudo::crypto
