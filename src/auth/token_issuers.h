// Who may issue the JSON Web Tokens a controller accepts (--token-issuers FILE;
// docs/security.md, "Tokens"). The file decides who gets in, so it and every key file it
// names must not be writable by anyone but its owner (this user or root), and a shared HMAC
// secret must not be readable by anyone else either.
//
//   {"version": 1,
//    "issuers": [{"issuer": "https://id.example.org",      // the tokens' "iss", exactly
//                 "audience": "testudo-prod",              // must be in the tokens' "aud"
//                 "keys": ["idp.pem"],                     // PEM public keys or certificates
//                 "jwks": "idp-jwks.json",                 // and/or a JWKS file (RFC 7517)
//                 "secret_file": "hs.key",                 // HS256/384/512 only: a shared secret
//                 "algorithms": ["RS256", "ES256"],        // the allowlist; never "none"
//                 "groups_claim": "groups",                // optional (default "groups")
//                 "clock_skew_seconds": 60}]}              // optional (default 60, at most 600)
//
// Parsing is strict like the policy file's: unknown keys, wrong types, an algorithm without a
// key of its kind and a duplicate issuer are errors naming the place. Relative paths are
// relative to the issuers file. Not thread-safe to change; const methods may be shared.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/status.h"

namespace testudo::auth {

// The signature algorithms libjwt 1.10 verifies (it has no PS256/384/512 and no EdDSA).
enum class TokenAlgorithm : std::uint8_t { kRS256, kRS384, kRS512, kES256, kES384, kES512, kHS256, kHS384, kHS512 };
std::string_view token_algorithm_name(TokenAlgorithm alg);
std::optional<TokenAlgorithm> token_algorithm_from_name(std::string_view name);

// The kind of key an algorithm verifies with. HS* need a shared secret: a public key given as
// an HMAC key would let anyone who has the public key sign tokens (the "key confusion").
enum class TokenKeyKind : std::uint8_t { kRsa, kEcP256, kEcP384, kEcP521, kSecret };
TokenKeyKind key_kind_for(TokenAlgorithm alg);

struct TokenKey {
  TokenKeyKind kind = TokenKeyKind::kRsa;
  std::string kid;       // from the JWKS; empty for PEM keys and the secret
  std::string material;  // SubjectPublicKeyInfo PEM, or the secret's bytes
  std::string source;    // "idp.pem", "idp-jwks.json key 2 (kid \"k1\")": for messages
};

struct TokenIssuer {
  std::string issuer;
  std::string audience;
  std::vector<TokenAlgorithm> algorithms;
  std::vector<TokenKey> keys;
  std::string groups_claim = "groups";
  std::int64_t clock_skew_seconds = 60;

  bool allows(TokenAlgorithm alg) const;
};

// Bounds: an issuers file of at most 1 MiB, 64 issuers, 64 keys an issuer, JWKS files of 1 MiB.
inline constexpr std::size_t kMaxTokenIssuersBytes = 1 << 20;
inline constexpr std::size_t kMaxTokenIssuers = 64;
inline constexpr std::size_t kMaxKeysPerIssuer = 64;
inline constexpr std::int64_t kMaxClockSkewSeconds = 600;
// A shared HMAC secret shorter than this is refused (RFC 7518 §3.2: at least the hash size).
inline constexpr std::size_t kMinHmacSecretBytes = 32;

class TokenIssuers {
 public:
  // Reads the file and every key file it names (checking their modes).
  static StatusOr<TokenIssuers> load(const std::string& path);
  // The file's text; `base_dir` resolves relative key paths (files are still read and checked).
  static StatusOr<TokenIssuers> parse(std::string_view text, const std::string& base_dir);

  // The issuer whose "issuer" is exactly `iss`, or null.
  const TokenIssuer* find(std::string_view iss) const;
  const std::vector<TokenIssuer>& issuers() const { return issuers_; }

 private:
  std::vector<TokenIssuer> issuers_;
};

// The keys of a JWKS document (RFC 7517 "keys"): RSA (n, e) and EC P-256/P-384/P-521
// (crv, x, y) signature keys; keys for encryption ("use": "enc"), of other types ("oct",
// "OKP") and private parts ("d") are refused or skipped as said below. `source` names the
// document in messages. Bytes come from a file the administrator placed, but are parsed as if
// hostile (fuzz/token_fuzz.cc).
//   * a key with "d" (private) is an error: private keys do not belong on the controller;
//   * a key with "use" other than "sig" or a "key_ops" without "verify" is skipped;
//   * a key of another type is skipped (a JWKS may list keys for other consumers).
StatusOr<std::vector<TokenKey>> parse_jwks(std::string_view text, const std::string& source);

}  // namespace testudo::auth
