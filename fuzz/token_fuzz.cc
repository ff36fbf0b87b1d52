// Fuzzes the token verifier (auth/token_login.h) and the JWKS parser (auth/token_issuers.h).
// A token arrives from any client that passed the capability proof, before it is anyone: it
// must be an error value, never a crash, a hang or an identity it did not earn. The first byte
// picks the input: 't' a token verified against a fixed issuer (an RSA and an EC P-256 key
// from a JWKS, a fixed clock), anything else a JWKS document.
// Properties: no crash; a verified token names the issuer's identity and bounded groups and
// an expiry after the clock; refusals are non-empty and never repeat the token.
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>

#include "auth/token_login.h"
#include "fuzz_util.h"

using namespace testudo;

namespace {

constexpr std::int64_t kNow = 1'900'000'000;

// Public keys only (the seeds in corpus/token_fuzz were signed with their private halves).
constexpr std::string_view kJwks = R"json({"keys": [{"kty": "RSA", "kid": "r1", "n": "qmlEKcjPBjImAIXzSp4xWB-TD9dPqv90wWAt6qgvX-l3fSJ2hQKWE-iJFPkRrg1rmbg5yexff4mzp4B1iCQpcDQhWS4wIRuOGua8-1anf8rPBs4L0bNXyHP3PAdUzGRBpP_XIPmXRKdP_xgFbAyh7gK17ORjVVUTh2xjs2IuDQin5DpcESifD5xB13KeSmLOrbM1jD5ZthK9xLNxk4F9Iy2PieUb77v-hVdZKPq31Uk1BhdgakhpKM_7w7xwjG-YX9E36YXG_f9X6rIMeA53_X2KmSyAAgi_DIEeFvnWubrprmmN62XvRdMys8P8OFH0qN5_E6u11r4z0_RXkW0qVw", "e": "AQAB"}, {"kty": "EC", "crv": "P-256", "kid": "e1", "x": "jL0QrLl19MkCDCA0427XCdW_N4OR8Om9lDn3aG2cDLk", "y": "P3rMZHFQsRAXxvU7cXpvKFj8SycA3XIdTOYxaUbAldo"}]})json";

const auth::TokenIssuers& issuers() {
  static const auth::TokenIssuers loaded = [] {
    char dir[] = "/tmp/token_fuzz.XXXXXX";
    FUZZ_CHECK(::mkdtemp(dir) != nullptr);
    const std::string base(dir);
    std::ofstream(base + "/jwks.json") << kJwks;
    auto parsed = auth::TokenIssuers::parse(
        R"({"version": 1, "issuers": [{"issuer": "https://fuzz.example", "audience": "testudo-fuzz",
            "jwks": "jwks.json", "algorithms": ["RS256", "ES256"]}]})",
        base);
    ::unlink((base + "/jwks.json").c_str());
    ::rmdir(dir);
    FUZZ_CHECK(parsed.ok());
    return std::move(parsed).value();
  }();
  return loaded;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] == 't') {
    static const auth::TokenVerifier verifier(issuers(), [] { return kNow; });
    (void)auth::claimed_token_identity(input);
    (void)auth::token_expiry(input);
    auto identity = verifier.verify(input);
    if (identity.ok()) {
      FUZZ_CHECK(identity->identity.rfind("token:https://fuzz.example#", 0) == 0);
      FUZZ_CHECK(identity->expires_at > kNow);
      FUZZ_CHECK(identity->groups.size() <= auth::kMaxTokenGroups);
    } else {
      FUZZ_CHECK(!identity.status().message().empty());
      // The message never echoes the token. Checked on inputs the verifier's own (printable
      // ASCII) texts cannot contain, so that a fuzzer input spelling part of a message is not
      // taken for an echo.
      const bool unprintable = std::any_of(input.begin(), input.end(), [](char c) { return c < 0x20 || c > 0x7e; });
      FUZZ_CHECK(input.size() < 16 || !unprintable || identity.status().message().find(input) == std::string::npos);
    }
    return 0;
  }
  auto keys = auth::parse_jwks(input, "fuzz");
  if (keys.ok()) {
    FUZZ_CHECK(keys->size() <= auth::kMaxKeysPerIssuer);
    for (const auto& key : *keys) FUZZ_CHECK(key.material.rfind("-----BEGIN PUBLIC KEY-----", 0) == 0);
  } else {
    FUZZ_CHECK(!keys.status().message().empty());
  }
  return 0;
}
