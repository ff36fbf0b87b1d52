// Token logins (login.h, LoginMethod::kToken): the client sends one JSON Web Token (RFC 7519,
// a JWS in compact form) from its token provider; the controller verifies it against the
// issuers it was configured with (token_issuers.h) and admits "token:<iss>#<sub>" with the
// groups the token lists. docs/security.md, "Tokens".
//
// Verification is libjwt's (1.10: it checks the signature with the key it is handed, using
// the algorithm the token's own header names). What libjwt does not do is done here, before
// it is asked, so that the token never chooses how it is checked:
//   * the header is decoded first (base64url by OpenSSL, JSON by nlohmann): "alg" must be on
//     the issuer's allowlist and match the kind of key it is checked with (RS* an RSA key,
//     ES256/384/512 an EC P-256/384/521 key, HS* only the issuer's configured shared secret,
//     never a public key: an HMAC "signed" with the public key is refused); "none" never;
//     a "crit" header is refused (no extensions are understood);
//   * the key is the issuer's: chosen by "kid" when the token names one and the issuer's keys
//     have ids (an unknown kid is refused), otherwise each key of the right kind is tried;
//   * the claims are checked here: "iss" configured, "aud" (a string or a list) holds the
//     configured audience, "exp" present and in the future, "nbf" and "iat" not in the future
//     by more than the issuer's clock skew, "sub" present; groups from the issuer's claim.
// A token is a bearer credential: it is not bound to the TLS session (the client has no key
// the token names). What protects it is TLS to a controller the client has pinned, a short
// lifetime and an audience per cluster (docs/security.md says what a stolen token gets).
//
// Threading: a verifier's const methods may be shared; servers and clients as in login.h.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "auth/login.h"
#include "auth/token_issuers.h"
#include "testudo/status.h"

namespace testudo::auth {

// Tokens longer than this are refused before anything is decoded (a token with a few dozen
// groups is well under 4 KiB).
inline constexpr std::size_t kMaxTokenBytes = 8 * 1024;
// Claims objects with more members, and group lists longer than this, are refused.
inline constexpr std::size_t kMaxTokenClaims = 64;
inline constexpr std::size_t kMaxTokenGroups = 64;
inline constexpr std::size_t kMaxTokenGroupBytes = 128;
inline constexpr std::size_t kMaxTokenSubjectBytes = 128;

// Unix seconds now; tests hand in a fixed clock.
using UnixClock = std::function<std::int64_t()>;
std::int64_t system_unix_seconds();

class TokenVerifier {
 public:
  // `issuers` outlives the verifier.
  explicit TokenVerifier(const TokenIssuers& issuers, UnixClock clock = system_unix_seconds);

  // The identity a token proves, or why not (a message for the peer and the audit log: it
  // names the claim or the rule, never the token).
  StatusOr<LoginIdentity> verify(std::string_view token) const;

 private:
  const TokenIssuers& issuers_;
  UnixClock clock_;
};

// "token:<iss>#<sub>" from a token's claims, without verifying anything: for counting failed
// logins against whom a token claims to be. Empty when the token does not say.
std::string claimed_token_identity(std::string_view token);
// The "exp" a token states (unverified: the client's own token, to know when to renew);
// 0 when it has none or cannot be read.
std::int64_t token_expiry(std::string_view token);

// The controller's half: one message, the token.
std::unique_ptr<LoginServer> make_token_login_server(const TokenVerifier& verifier);

// The client's half: `provider` gives the token (called again for each session and each
// renewal). Its errors are said to the user as they are.
std::unique_ptr<LoginClient> make_token_login_client(std::function<StatusOr<std::string>()> provider);

}  // namespace testudo::auth
