// Token logins against real signatures: issuer keys made by OpenSSL, tokens signed by libjwt
// (or built by hand where libjwt would refuse to make them), verified by the controller's
// verifier with a fixed clock.
#include "auth/token_login.h"

#include <gtest/gtest.h>
#include <jwt.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "base/test_temp_dir.h"
#include "crypto/public_key.h"
#include "crypto/test_keys.h"

namespace testudo::auth {
namespace {

using crypto::testing::base64url_encode;
using crypto::testing::TestSigningKey;
using nlohmann::json;

constexpr std::int64_t kNow = 1'900'000'000;
constexpr const char* kIssuer = "https://id.example.org";
constexpr const char* kAudience = "testudo-test";

const TestSigningKey& rsa_key() {
  static const TestSigningKey key = *crypto::testing::make_test_signing_key("RSA");
  return key;
}
const TestSigningKey& other_rsa_key() {
  static const TestSigningKey key = *crypto::testing::make_test_signing_key("RSA");
  return key;
}
const TestSigningKey& ec_key() {
  static const TestSigningKey key = *crypto::testing::make_test_signing_key("P-256");
  return key;
}
const TestSigningKey& ec384_key() {
  static const TestSigningKey key = *crypto::testing::make_test_signing_key("P-384");
  return key;
}

void write_file(const std::string& path, const std::string& text, mode_t mode = 0644) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
}

// A token signed by libjwt: `claims` as JSON, `alg` and `key` as libjwt takes them.
std::string sign(const json& claims, jwt_alg_t alg, const std::string& key, const std::string& kid = "") {
  jwt_t* raw = nullptr;
  EXPECT_EQ(jwt_new(&raw), 0);
  std::unique_ptr<jwt_t, void (*)(jwt_t*)> jwt(raw, jwt_free);
  EXPECT_EQ(jwt_add_grants_json(jwt.get(), claims.dump().c_str()), 0);
  if (!kid.empty()) EXPECT_EQ(jwt_add_header(jwt.get(), "kid", kid.c_str()), 0);
  EXPECT_EQ(jwt_set_alg(jwt.get(), alg, key.empty() ? nullptr : reinterpret_cast<const unsigned char*>(key.data()),
                        static_cast<int>(key.size())),
            0);
  char* out = jwt_encode_str(jwt.get());
  EXPECT_NE(out, nullptr);
  std::string token = out ? out : "";
  std::free(out);
  return token;
}

json good_claims() {
  return {{"iss", kIssuer}, {"aud", kAudience}, {"sub", "alice"}, {"exp", kNow + 600}, {"iat", kNow - 5},
          {"nbf", kNow - 5}, {"groups", {"analysts", "staff"}}};
}

class TokenLoginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_file(dir_.path() + "/rsa.pem", rsa_key().public_pem);
    json jwks = {{"keys",
                  {{{"kty", "EC"}, {"crv", "P-256"}, {"kid", "ec-1"}, {"use", "sig"}, {"x", ec_key().x}, {"y", ec_key().y}},
                   {{"kty", "RSA"}, {"kid", "rsa-jwk"}, {"n", rsa_key().n}, {"e", rsa_key().e}}}}};
    write_file(dir_.path() + "/jwks.json", jwks.dump());
  }

  json issuer_json() const {
    return {{"issuer", kIssuer},
            {"audience", kAudience},
            {"keys", {"rsa.pem"}},
            {"jwks", "jwks.json"},
            {"algorithms", {"RS256", "ES256"}}};
  }

  StatusOr<TokenIssuers> parse(const json& issuer) const {
    return TokenIssuers::parse(json{{"version", 1}, {"issuers", {issuer}}}.dump(), dir_.path());
  }

  StatusOr<LoginIdentity> verify(const std::string& token, const json& issuer) {
    auto issuers = parse(issuer);
    if (!issuers.ok()) return issuers.status();
    issuers_ = std::move(issuers).value();
    TokenVerifier verifier(issuers_, [] { return kNow; });
    return verifier.verify(token);
  }
  StatusOr<LoginIdentity> verify(const std::string& token) { return verify(token, issuer_json()); }

  // The message of a refusal, which must name the reason and never the token.
  std::string refusal(const std::string& token, const json& issuer) {
    auto r = verify(token, issuer);
    EXPECT_FALSE(r.ok()) << token;
    if (r.ok()) return "";
    EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied);
    EXPECT_EQ(r.status().message().find(token), std::string::npos);
    return r.status().message();
  }
  std::string refusal(const std::string& token) { return refusal(token, issuer_json()); }

  testing::TempDir dir_;
  TokenIssuers issuers_;
};

TEST_F(TokenLoginTest, ValidRsaTokenProvesIssuerSubjectAndGroups) {
  auto id = verify(sign(good_claims(), JWT_ALG_RS256, rsa_key().private_pem));
  ASSERT_TRUE(id.ok()) << id.status().message();
  EXPECT_EQ(id->identity, std::string("token:") + kIssuer + "#alice");
  EXPECT_EQ(id->groups, (std::vector<std::string>{"analysts", "staff"}));
  EXPECT_EQ(id->expires_at, kNow + 600);
}

TEST_F(TokenLoginTest, ValidEcTokenFromJwksSelectedByKid) {
  json issuer = issuer_json();
  issuer.erase("keys");
  issuer["groups_claim"] = "roles";
  json claims = good_claims();
  claims["roles"] = {"ops"};
  claims["aud"] = {"other", kAudience};  // a list holding ours is fine
  auto id = verify(sign(claims, JWT_ALG_ES256, ec_key().private_pem, "ec-1"), issuer);
  ASSERT_TRUE(id.ok()) << id.status().message();
  EXPECT_EQ(id->groups, std::vector<std::string>{"ops"});
  // The RSA key of the same JWKS, by its kid.
  EXPECT_TRUE(verify(sign(claims, JWT_ALG_RS256, rsa_key().private_pem, "rsa-jwk"), issuer).ok());
}

TEST_F(TokenLoginTest, ExpiredNotYetValidAndFutureIssuedAreRefused) {
  json claims = good_claims();
  claims["exp"] = kNow - 1;
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).find("expired"), std::string::npos);
  claims["exp"] = kNow;  // exp is the first second it is no longer valid
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).find("expired"), std::string::npos);
  claims = good_claims();
  claims.erase("exp");
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).find("\"exp\""), std::string::npos);
  claims = good_claims();
  claims["nbf"] = kNow + 61;  // beyond the default skew of 60 s
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).find("not valid yet"), std::string::npos);
  claims["nbf"] = kNow + 59;  // within it
  EXPECT_TRUE(verify(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).ok());
  claims = good_claims();
  claims["iat"] = kNow + 3600;
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).find("\"iat\""), std::string::npos);
  json strict = issuer_json();
  strict["clock_skew_seconds"] = 0;
  claims = good_claims();
  claims["nbf"] = kNow + 1;
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem), strict).find("not valid yet"), std::string::npos);
  claims["exp"] = "soon";
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).find("not a number"), std::string::npos);
}

TEST_F(TokenLoginTest, WrongAudienceIssuerOrMissingSubjectAreRefused) {
  json claims = good_claims();
  claims["aud"] = "another-cluster";
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).find("audience"), std::string::npos);
  claims.erase("aud");
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).find("audience"), std::string::npos);
  claims = good_claims();
  claims["iss"] = "https://evil.example.org";
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).find("not configured"), std::string::npos);
  claims = good_claims();
  claims.erase("sub");
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).find("\"sub\""), std::string::npos);
  claims = good_claims();
  claims["groups"] = "analysts";  // not a list
  EXPECT_NE(refusal(sign(claims, JWT_ALG_RS256, rsa_key().private_pem)).find("not a list"), std::string::npos);
}

TEST_F(TokenLoginTest, BadSignatureIsRefused) {
  // Signed by another key than the issuer's.
  EXPECT_NE(refusal(sign(good_claims(), JWT_ALG_RS256, other_rsa_key().private_pem)).find("signature does not verify"),
            std::string::npos);
  // The issuer's signature over other claims: a payload swapped in.
  std::string token = sign(good_claims(), JWT_ALG_RS256, rsa_key().private_pem);
  json evil = good_claims();
  evil["sub"] = "root";
  const std::string payload = base64url_encode(evil.dump());
  const auto first = token.find('.');
  const auto second = token.find('.', first + 1);
  token = token.substr(0, first + 1) + payload + token.substr(second);
  EXPECT_NE(refusal(token).find("signature does not verify"), std::string::npos);
  // Garbage.
  EXPECT_NE(refusal("abc").find("not a JSON Web Token"), std::string::npos);
  EXPECT_NE(refusal("a.b.c").find("header"), std::string::npos);
  EXPECT_NE(refusal(std::string(kMaxTokenBytes + 1, 'a')).find("over the limit"), std::string::npos);
}

TEST_F(TokenLoginTest, AlgNoneIsRefused) {
  const std::string header = base64url_encode(R"({"alg":"none","typ":"JWT"})");
  const std::string payload = base64url_encode(good_claims().dump());
  EXPECT_NE(refusal(header + "." + payload + ".").find("alg \"none\""), std::string::npos);
  EXPECT_NE(refusal(header + "." + payload + ".c2ln").find("alg \"none\""), std::string::npos);
  // Made by libjwt itself.
  EXPECT_NE(refusal(sign(good_claims(), JWT_ALG_NONE, "")).find("none"), std::string::npos);
  // And none in the allowlist is a configuration error, not an option.
  json issuer = issuer_json();
  issuer["algorithms"] = {"none"};
  auto parsed = parse(issuer);
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("never accepted"), std::string::npos);
}

TEST_F(TokenLoginTest, HmacSignedWithThePublicKeyIsRefused) {
  // The classic confusion: the attacker has the issuer's public key (it is public) and uses
  // its PEM as an HMAC secret. libjwt, handed that PEM and a token saying HS256, would verify.
  const std::string forged = sign(good_claims(), JWT_ALG_HS256, rsa_key().public_pem);
  EXPECT_NE(refusal(forged).find("not allowed"), std::string::npos);
  // Even for an issuer that also allows HS256 (with a real shared secret): an HS token is
  // checked only against that secret, never against a public key.
  write_file(dir_.path() + "/hs.key", std::string(40, 'k'), 0600);
  json issuer = issuer_json();
  issuer["algorithms"] = {"RS256", "HS256"};
  issuer["secret_file"] = "hs.key";
  EXPECT_NE(refusal(forged, issuer).find("signature does not verify"), std::string::npos);
  // ...while a token made with the secret itself is good.
  EXPECT_TRUE(verify(sign(good_claims(), JWT_ALG_HS256, std::string(40, 'k')), issuer).ok());
}

TEST_F(TokenLoginTest, AlgorithmOutsideTheAllowlistOrKeyKindIsRefused) {
  EXPECT_NE(refusal(sign(good_claims(), JWT_ALG_RS384, rsa_key().private_pem)).find("RS384\" is not allowed"),
            std::string::npos);
  // An algorithm listed without a key of its kind is a configuration error.
  json issuer = issuer_json();
  issuer["algorithms"] = {"RS256", "ES384"};
  auto parsed = parse(issuer);
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("ES384 is allowed but the issuer has no EC P-384 key"), std::string::npos);
  issuer["algorithms"] = {"RS256"};
  EXPECT_NE(refusal(sign(good_claims(), JWT_ALG_ES256, ec_key().private_pem), issuer).find("not allowed"),
            std::string::npos);
}

TEST_F(TokenLoginTest, UnknownKidIsRefused) {
  json issuer = issuer_json();
  issuer.erase("keys");
  EXPECT_NE(refusal(sign(good_claims(), JWT_ALG_ES256, ec_key().private_pem, "no-such-key"), issuer).find("key id"),
            std::string::npos);
  // Without a kid every key of the right kind is tried.
  EXPECT_TRUE(verify(sign(good_claims(), JWT_ALG_ES256, ec_key().private_pem), issuer).ok());
}

TEST_F(TokenLoginTest, LoginServerTakesOneTokenAndClaimsItsIdentity) {
  auto issuers = parse(issuer_json());
  ASSERT_TRUE(issuers.ok());
  TokenVerifier verifier(*issuers, [] { return kNow; });
  auto server = make_token_login_server(verifier);
  const std::string token = sign(good_claims(), JWT_ALG_RS256, rsa_key().private_pem);
  EXPECT_EQ(claimed_token_identity(token), std::string("token:") + kIssuer + "#alice");
  EXPECT_EQ(token_expiry(token), kNow + 600);
  auto step = server->step(token);
  ASSERT_TRUE(step.ok()) << step.status().message();
  ASSERT_TRUE(step->identity.has_value());
  EXPECT_EQ(server->claimed_identity(), step->identity->identity);
  EXPECT_FALSE(server->step(token).ok());
  // A bad token still names whom it claims to be (for the failed-login counts).
  auto bad = make_token_login_server(verifier);
  EXPECT_FALSE(bad->step(sign(good_claims(), JWT_ALG_RS256, other_rsa_key().private_pem)).ok());
  EXPECT_EQ(bad->claimed_identity(), std::string("token:") + kIssuer + "#alice");
}

TEST(TokenLoginClient, SendsTheProvidersTokenAndRenewsFromIt) {
  int calls = 0;
  json claims = {{"exp", 1234}};
  const std::string token = base64url_encode(R"({"alg":"RS256"})") + "." + base64url_encode(claims.dump()) + ".c2ln";
  auto client = make_token_login_client([&]() -> StatusOr<std::string> {
    ++calls;
    return token + "\n";
  });
  ChannelBinding binding{};
  auto first = client->start(binding);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, token);
  EXPECT_EQ(client->expires_at(), 1234);
  EXPECT_TRUE(client->renew().ok());
  EXPECT_EQ(calls, 2);
  auto failing = make_token_login_client([]() -> StatusOr<std::string> { return not_found("no token in $TOKEN"); });
  auto r = failing->start(binding);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "no token in $TOKEN");
  auto empty = make_token_login_client([]() -> StatusOr<std::string> { return std::string("\n"); });
  EXPECT_FALSE(empty->start(binding).ok());
}

TEST(Jwks, ParsesRsaAndEcKeys) {
  json jwks = {{"keys",
                {{{"kty", "RSA"}, {"kid", "r"}, {"alg", "RS256"}, {"n", rsa_key().n}, {"e", rsa_key().e}},
                 {{"kty", "EC"}, {"crv", "P-256"}, {"kid", "e1"}, {"x", ec_key().x}, {"y", ec_key().y}},
                 {{"kty", "EC"}, {"crv", "P-384"}, {"kid", "e2"}, {"x", ec384_key().x}, {"y", ec384_key().y}},
                 {{"kty", "OKP"}, {"crv", "Ed25519"}, {"x", "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}},
                 {{"kty", "RSA"}, {"use", "enc"}, {"n", rsa_key().n}, {"e", rsa_key().e}}}}};
  auto keys = parse_jwks(jwks.dump(), "test");
  ASSERT_TRUE(keys.ok()) << keys.status().message();
  ASSERT_EQ(keys->size(), 3u);  // the Ed25519 and the encryption key are skipped
  EXPECT_EQ((*keys)[0].kind, TokenKeyKind::kRsa);
  EXPECT_EQ((*keys)[0].kid, "r");
  EXPECT_EQ((*keys)[1].kind, TokenKeyKind::kEcP256);
  EXPECT_EQ((*keys)[2].kind, TokenKeyKind::kEcP384);
  // The JWK's RSA key is the very key of the PEM.
  auto from_pem = crypto::public_key_from_pem(rsa_key().public_pem);
  ASSERT_TRUE(from_pem.ok());
  EXPECT_EQ((*keys)[0].material, from_pem->pem);
}

TEST(Jwks, RefusesBrokenOrPrivateKeys) {
  auto error = [](const json& key) {
    auto r = parse_jwks(json{{"keys", {key}}}.dump(), "jwks");
    return r.ok() ? std::string() : r.status().message();
  };
  EXPECT_NE(error({{"kty", "RSA"}, {"n", rsa_key().n}, {"e", rsa_key().e}, {"d", "AQAB"}}).find("private"), std::string::npos);
  EXPECT_NE(error({{"kty", "oct"}, {"k", "c2VjcmV0"}}).find("secret"), std::string::npos);
  EXPECT_NE(error({{"kty", "RSA"}, {"n", rsa_key().n}}).find("\"e\""), std::string::npos);
  EXPECT_NE(error({{"kty", "RSA"}, {"n", "AQAB"}, {"e", "AQAB"}}).find("bits"), std::string::npos);
  EXPECT_NE(error({{"kty", "RSA"}, {"n", rsa_key().n + "="}, {"e", "AQAB"}}).find("base64url"), std::string::npos);
  // A point that is not on the curve (y of another key).
  EXPECT_FALSE(error({{"kty", "EC"}, {"crv", "P-256"}, {"x", ec_key().x}, {"y", ec384_key().y}}).empty());
  EXPECT_FALSE(error({{"kty", "EC"}, {"crv", "P-256"}, {"x", ec_key().x}, {"y", base64url_encode(std::string(32, '\1'))}}).empty());
  EXPECT_NE(error({{"kty", "EC"}, {"crv", "secp256k1"}, {"x", ec_key().x}, {"y", ec_key().y}}).find("curve"), std::string::npos);
  EXPECT_FALSE(parse_jwks("[]", "jwks").ok());
  EXPECT_FALSE(parse_jwks("{\"keys\": 1}", "jwks").ok());
  EXPECT_FALSE(parse_jwks("{", "jwks").ok());
}

TEST_F(TokenLoginTest, StrictConfigurationErrors) {
  auto error = [&](const std::string& text) {
    auto r = TokenIssuers::parse(text, dir_.path());
    return r.ok() ? std::string() : r.status().message();
  };
  auto with = [&](const char* key, json value) {
    json issuer = issuer_json();
    if (value.is_null()) {
      issuer.erase(key);
    } else {
      issuer[key] = std::move(value);
    }
    return error(json{{"version", 1}, {"issuers", {issuer}}}.dump());
  };
  EXPECT_NE(error("{").find("not valid JSON"), std::string::npos);
  EXPECT_NE(error(R"({"issuers": []})").find("version"), std::string::npos);
  EXPECT_NE(error(R"({"version": 2, "issuers": []})").find("version"), std::string::npos);
  EXPECT_NE(error(R"({"version": 1, "issuers": []})").find("non-empty"), std::string::npos);
  EXPECT_NE(error(R"({"version": 1, "issuers": [], "extra": 1})").find("unknown key \"extra\""), std::string::npos);
  EXPECT_NE(with("audiences", "x").find("unknown key \"audiences\""), std::string::npos);
  EXPECT_NE(with("audience", nullptr).find("\"audience\" is required"), std::string::npos);
  EXPECT_NE(with("issuer", "a#b").find("'#'"), std::string::npos);
  EXPECT_NE(with("algorithms", {"PS256"}).find("unsupported algorithm \"PS256\""), std::string::npos);
  EXPECT_NE(with("algorithms", json::array()).find("non-empty list"), std::string::npos);
  EXPECT_NE(with("algorithms", {"HS256"}).find("HS256 is allowed but the issuer has no shared secret"), std::string::npos);
  EXPECT_NE(with("clock_skew_seconds", 3600).find("clock_skew_seconds"), std::string::npos);
  EXPECT_NE(with("jwks", nullptr).find("ES256 is allowed but the issuer has no EC P-256 key"), std::string::npos);
  EXPECT_NE(with("keys", {"missing.pem"}).find("not found"), std::string::npos);
  write_file(dir_.path() + "/private.pem", rsa_key().private_pem, 0600);
  EXPECT_NE(with("keys", {"private.pem"}).find("private key"), std::string::npos);
  // Who can write a key file decides who logs in.
  write_file(dir_.path() + "/loose.pem", rsa_key().public_pem, 0666);
  EXPECT_NE(with("keys", {"loose.pem"}).find("writable by others"), std::string::npos);
  write_file(dir_.path() + "/loose-jwks.json", "{\"keys\": []}", 0664);
  EXPECT_NE(with("jwks", "loose-jwks.json").find("writable by others"), std::string::npos);
  // A shared secret must be private and long enough.
  json issuer = issuer_json();
  issuer["algorithms"] = {"HS256"};
  issuer["secret_file"] = "hs-open.key";
  write_file(dir_.path() + "/hs-open.key", std::string(40, 'k'), 0644);
  EXPECT_NE(error(json{{"version", 1}, {"issuers", {issuer}}}.dump()).find("0644"), std::string::npos);
  issuer["secret_file"] = "hs-short.key";
  write_file(dir_.path() + "/hs-short.key", "short", 0600);
  EXPECT_NE(error(json{{"version", 1}, {"issuers", {issuer}}}.dump()).find("at least 32 bytes"), std::string::npos);
  // Twice the same issuer.
  json one = issuer_json();
  one["algorithms"] = {"RS256"};
  EXPECT_NE(error(json{{"version", 1}, {"issuers", {one, one}}}.dump()).find("listed twice"), std::string::npos);
  // The issuers file itself.
  write_file(dir_.path() + "/issuers.json", json{{"version", 1}, {"issuers", {one}}}.dump(), 0666);
  auto loaded = TokenIssuers::load(dir_.path() + "/issuers.json");
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("writable by others"), std::string::npos);
  ::chmod((dir_.path() + "/issuers.json").c_str(), 0644);
  EXPECT_TRUE(TokenIssuers::load(dir_.path() + "/issuers.json").ok());
}

TEST(Base64Url, StrictAlphabetAndLengths) {
  EXPECT_EQ(*crypto::base64url_decode(""), "");
  EXPECT_EQ(*crypto::base64url_decode("YQ"), "a");
  EXPECT_EQ(*crypto::base64url_decode("YWI"), "ab");
  EXPECT_EQ(*crypto::base64url_decode("YWJj"), "abc");
  EXPECT_EQ(*crypto::base64url_decode("-_8"), "\xfb\xff");
  EXPECT_FALSE(crypto::base64url_decode("YQ==").ok());
  EXPECT_FALSE(crypto::base64url_decode("Y").ok());
  EXPECT_FALSE(crypto::base64url_decode("Y Q").ok());
  EXPECT_FALSE(crypto::base64url_decode("+/8").ok());
}

}  // namespace
}  // namespace testudo::auth
