#include "auth/token_login.h"

#include <jwt.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <vector>

#include <nlohmann/json.hpp>

#include "crypto/crypto.h"
#include "crypto/public_key.h"

namespace testudo::auth {
namespace {

using nlohmann::json;

struct JwtFree {
  void operator()(jwt_t* p) const { jwt_free(p); }
};

// The three parts of a compact JWS, still encoded.
struct Parts {
  std::string_view header, payload, signature;
  std::string_view signing_input;  // header "." payload
};

StatusOr<Parts> split(std::string_view token) {
  if (token.empty()) return permission_denied("empty token");
  if (token.size() > kMaxTokenBytes) {
    return permission_denied("token of " + std::to_string(token.size()) + " bytes, over the limit of " +
                             std::to_string(kMaxTokenBytes));
  }
  const auto first = token.find('.');
  const auto second = first == std::string_view::npos ? first : token.find('.', first + 1);
  if (second == std::string_view::npos || token.find('.', second + 1) != std::string_view::npos) {
    return permission_denied("not a JSON Web Token (expected three base64url parts separated by '.')");
  }
  Parts p;
  p.header = token.substr(0, first);
  p.payload = token.substr(first + 1, second - first - 1);
  p.signature = token.substr(second + 1);
  p.signing_input = token.substr(0, second);
  return p;
}

StatusOr<json> decode_object(std::string_view part, const char* what) {
  auto text = crypto::base64url_decode(part);
  if (!text.ok()) return permission_denied(std::string("token ") + what + " is " + text.status().message());
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return permission_denied(std::string("token ") + what + " is not a JSON object");
  if (j.size() > kMaxTokenClaims) {
    return permission_denied(std::string("token ") + what + " has more than " + std::to_string(kMaxTokenClaims) + " members");
  }
  return j;
}

// A claim the message may show: bounded and escaped (iss and kid come from the peer).
std::string shown(const std::string& s) {
  std::string cut = s.size() > 80 ? s.substr(0, 80) + "..." : s;
  return json(cut).dump(-1, ' ', false, json::error_handler_t::replace);
}

// A NumericDate (RFC 7519 §2): a JSON number of seconds, whole or not; bounded so that
// arithmetic on it cannot overflow.
std::optional<std::int64_t> numeric_date(const json& claims, const char* name, Status& error) {
  auto it = claims.find(name);
  if (it == claims.end()) return std::nullopt;
  if (!it->is_number()) {
    error = permission_denied(std::string("token claim \"") + name + "\" is not a number");
    return std::nullopt;
  }
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < 0 || v > 1e12) {
    error = permission_denied(std::string("token claim \"") + name + "\" is out of range");
    return std::nullopt;
  }
  return static_cast<std::int64_t>(std::floor(v));
}

bool is_printable(const std::string& s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

jwt_alg_t libjwt_alg(TokenAlgorithm alg) {
  switch (alg) {
    case TokenAlgorithm::kRS256: return JWT_ALG_RS256;
    case TokenAlgorithm::kRS384: return JWT_ALG_RS384;
    case TokenAlgorithm::kRS512: return JWT_ALG_RS512;
    case TokenAlgorithm::kES256: return JWT_ALG_ES256;
    case TokenAlgorithm::kES384: return JWT_ALG_ES384;
    case TokenAlgorithm::kES512: return JWT_ALG_ES512;
    case TokenAlgorithm::kHS256: return JWT_ALG_HS256;
    case TokenAlgorithm::kHS384: return JWT_ALG_HS384;
    case TokenAlgorithm::kHS512: return JWT_ALG_HS512;
  }
  return JWT_ALG_INVAL;
}

// libjwt's check of the signature of `token` under `key`, with the algorithm already decided
// here; true only if libjwt verified it with that very algorithm.
bool signature_verifies(const std::string& token, const TokenKey& key, TokenAlgorithm alg) {
  jwt_t* raw = nullptr;
  const int rc = jwt_decode(&raw, token.c_str(), reinterpret_cast<const unsigned char*>(key.material.data()),
                            static_cast<int>(key.material.size()));
  std::unique_ptr<jwt_t, JwtFree> decoded(raw);
  return rc == 0 && decoded && jwt_get_alg(decoded.get()) == libjwt_alg(alg);
}

class TokenLoginServer final : public LoginServer {
 public:
  explicit TokenLoginServer(const TokenVerifier& verifier) : verifier_(verifier) {}

  StatusOr<Step> step(std::string_view message) override {
    if (done_) return permission_denied("the token login takes one message");
    done_ = true;
    claimed_ = claimed_token_identity(message);
    TESTUDO_ASSIGN_OR_RETURN(LoginIdentity identity, verifier_.verify(message));
    return Step{"", std::move(identity)};
  }
  std::string claimed_identity() const override { return claimed_; }

 private:
  const TokenVerifier& verifier_;
  bool done_ = false;
  std::string claimed_;
};

class TokenLoginClient final : public LoginClient {
 public:
  explicit TokenLoginClient(std::function<StatusOr<std::string>()> provider) : provider_(std::move(provider)) {}
  ~TokenLoginClient() override = default;

  LoginMethod method() const override { return LoginMethod::kToken; }

  StatusOr<std::string> start(const ChannelBinding& /*binding*/) override { return fetch(); }

  StatusOr<std::optional<std::string>> step(std::string_view message) override {
    // The controller answers a token with a welcome or a refusal; a reply step with content
    // is not part of this method.
    if (!message.empty()) return permission_denied("the controller sent an unexpected token login step");
    return std::optional<std::string>();
  }

  Status finished() override { return ok_status(); }
  std::int64_t expires_at() const override { return expires_at_; }
  StatusOr<std::string> renew() override { return fetch(); }

 private:
  StatusOr<std::string> fetch() {
    if (!provider_) return invalid_argument("a token login needs a token provider");
    TESTUDO_ASSIGN_OR_RETURN(std::string token, provider_());
    // Providers read files and run commands: a trailing newline is not part of a token.
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
    if (token.empty()) return invalid_argument("the token provider gave an empty token");
    if (token.size() > kMaxTokenBytes) {
      return invalid_argument("the token provider gave " + std::to_string(token.size()) + " bytes, over the limit of " +
                              std::to_string(kMaxTokenBytes));
    }
    expires_at_ = token_expiry(token);
    return token;
  }

  std::function<StatusOr<std::string>()> provider_;
  std::int64_t expires_at_ = 0;
};

}  // namespace

std::int64_t system_unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

TokenVerifier::TokenVerifier(const TokenIssuers& issuers, UnixClock clock) : issuers_(issuers), clock_(std::move(clock)) {}

StatusOr<LoginIdentity> TokenVerifier::verify(std::string_view token_view) const {
  TESTUDO_ASSIGN_OR_RETURN(Parts parts, split(token_view));
  TESTUDO_ASSIGN_OR_RETURN(json header, decode_object(parts.header, "header"));
  TESTUDO_ASSIGN_OR_RETURN(json claims, decode_object(parts.payload, "payload"));

  // 1. Which issuer: the unverified "iss" only picks whose keys and rules apply.
  auto iss = claims.find("iss");
  if (iss == claims.end() || !iss->is_string()) return permission_denied("token has no \"iss\" (issuer) claim");
  const TokenIssuer* issuer = issuers_.find(iss->get_ref<const std::string&>());
  if (!issuer) return permission_denied("token issuer " + shown(*iss) + " is not configured on this controller");

  // 2. How it is checked: decided here from the allowlist, never by the token alone.
  auto alg_it = header.find("alg");
  if (alg_it == header.end() || !alg_it->is_string()) return permission_denied("token header has no \"alg\"");
  const std::string& alg_name = alg_it->get_ref<const std::string&>();
  if (alg_name == "none" || alg_name == "None" || alg_name == "NONE" || alg_name.empty()) {
    return permission_denied("unsigned token (alg \"none\") refused");
  }
  auto alg = token_algorithm_from_name(alg_name);
  if (!alg || !issuer->allows(*alg)) {
    std::string allowed;
    for (auto a : issuer->algorithms) allowed += (allowed.empty() ? "" : ", ") + std::string(token_algorithm_name(a));
    return permission_denied("token algorithm " + shown(alg_name) + " is not allowed for issuer " + shown(issuer->issuer) +
                             " (allowed: " + allowed + ")");
  }
  if (header.contains("crit")) return permission_denied("token header has \"crit\" extensions, which are not supported");
  if (parts.signature.empty()) return permission_denied("token has no signature");

  // 3. With which key: the kind the algorithm needs (an HS* token is checked only against the
  // configured secret, so a token "signed" with a public key as HMAC key finds none), and the
  // token's "kid" when it names one and the issuer's keys have ids.
  const TokenKeyKind kind = key_kind_for(*alg);
  std::string kid;
  if (auto k = header.find("kid"); k != header.end()) {
    if (!k->is_string()) return permission_denied("token header \"kid\" is not a string");
    kid = k->get<std::string>();
  }
  bool issuer_has_kids = false;
  for (const TokenKey& key : issuer->keys) issuer_has_kids = issuer_has_kids || !key.kid.empty();
  std::vector<const TokenKey*> candidates;
  for (const TokenKey& key : issuer->keys) {
    if (key.kind != kind) continue;
    if (!kid.empty() && issuer_has_kids && key.kid != kid) continue;
    candidates.push_back(&key);
  }
  if (candidates.empty()) {
    if (!kid.empty() && issuer_has_kids) {
      return permission_denied("token key id " + shown(kid) + " is not one of issuer " + shown(issuer->issuer) + "'s keys");
    }
    return permission_denied("issuer " + shown(issuer->issuer) + " has no key for " + alg_name);
  }
  std::string token(token_view);  // libjwt reads a C string; wiped below
  bool verified = false;
  for (const TokenKey* key : candidates) {
    if (signature_verifies(token, *key, *alg)) {
      verified = true;
      break;
    }
  }
  crypto::wipe(token);
  if (!verified) return permission_denied("token signature does not verify with issuer " + shown(issuer->issuer) + "'s keys");

  // 4. The claims (from the very payload the signature covers).
  const std::int64_t now = clock_();
  Status error = ok_status();
  const auto exp = numeric_date(claims, "exp", error);
  const auto nbf = numeric_date(claims, "nbf", error);
  const auto iat = numeric_date(claims, "iat", error);
  if (!error.ok()) return error;
  if (!exp) return permission_denied("token has no \"exp\" (expiry) claim; tokens without an expiry are not accepted");
  if (now >= *exp) return permission_denied("token expired " + std::to_string(now - *exp) + " s ago");
  const std::int64_t skew = issuer->clock_skew_seconds;
  if (nbf && *nbf > now + skew) {
    return permission_denied("token not valid yet (\"nbf\" is " + std::to_string(*nbf - now) + " s in the future)");
  }
  if (iat && *iat > now + skew) {
    return permission_denied("token issued in the future (\"iat\" is " + std::to_string(*iat - now) + " s ahead)");
  }
  bool audience_ok = false;
  if (auto aud = claims.find("aud"); aud != claims.end()) {
    if (aud->is_string()) {
      audience_ok = *aud == issuer->audience;
    } else if (aud->is_array()) {
      for (const json& a : *aud) audience_ok = audience_ok || (a.is_string() && a == issuer->audience);
    }
  }
  if (!audience_ok) return permission_denied("token audience (\"aud\") does not include " + shown(issuer->audience));
  auto sub = claims.find("sub");
  if (sub == claims.end() || !sub->is_string() || sub->get_ref<const std::string&>().empty()) {
    return permission_denied("token has no \"sub\" (subject) claim");
  }
  const std::string& subject = sub->get_ref<const std::string&>();
  if (subject.size() > kMaxTokenSubjectBytes || !is_printable(subject)) {
    return permission_denied("token subject is longer than " + std::to_string(kMaxTokenSubjectBytes) +
                             " bytes or holds control characters");
  }
  LoginIdentity identity;
  identity.identity = "token:" + issuer->issuer + "#" + subject;
  identity.expires_at = *exp;
  if (auto groups = claims.find(issuer->groups_claim); groups != claims.end()) {
    if (!groups->is_array()) return permission_denied("token claim " + shown(issuer->groups_claim) + " is not a list");
    if (groups->size() > kMaxTokenGroups) {
      return permission_denied("token lists more than " + std::to_string(kMaxTokenGroups) + " groups");
    }
    for (const json& g : *groups) {
      if (!g.is_string() || g.get_ref<const std::string&>().empty() ||
          g.get_ref<const std::string&>().size() > kMaxTokenGroupBytes || !is_printable(g.get_ref<const std::string&>())) {
        return permission_denied("token claim " + shown(issuer->groups_claim) + " holds something other than group names");
      }
      identity.groups.push_back(g.get<std::string>());
    }
  }
  return identity;
}

std::string claimed_token_identity(std::string_view token) {
  auto parts = split(token);
  if (!parts.ok()) return "";
  auto claims = decode_object(parts->payload, "payload");
  if (!claims.ok()) return "";
  auto iss = claims->find("iss");
  auto sub = claims->find("sub");
  if (iss == claims->end() || sub == claims->end() || !iss->is_string() || !sub->is_string()) return "";
  const std::string& i = iss->get_ref<const std::string&>();
  const std::string& s = sub->get_ref<const std::string&>();
  if (i.empty() || s.empty() || i.size() > 256 || s.size() > kMaxTokenSubjectBytes) return "";
  return "token:" + i + "#" + s;
}

std::int64_t token_expiry(std::string_view token) {
  auto parts = split(token);
  if (!parts.ok()) return 0;
  auto claims = decode_object(parts->payload, "payload");
  if (!claims.ok()) return 0;
  Status error = ok_status();
  return numeric_date(*claims, "exp", error).value_or(0);
}

std::unique_ptr<LoginServer> make_token_login_server(const TokenVerifier& verifier) {
  return std::make_unique<TokenLoginServer>(verifier);
}

std::unique_ptr<LoginClient> make_token_login_client(std::function<StatusOr<std::string>()> provider) {
  return std::make_unique<TokenLoginClient>(std::move(provider));
}

}  // namespace testudo::auth
