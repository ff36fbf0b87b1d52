#include "auth/token_issuers.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "auth/strict_json.h"
#include "crypto/crypto.h"
#include "crypto/private_file.h"
#include "crypto/public_key.h"

namespace testudo::auth {
namespace {

using nlohmann::json;

constexpr std::array<std::string_view, 9> kAlgorithmNames = {"RS256", "RS384", "RS512", "ES256", "ES384",
                                                             "ES512", "HS256", "HS384", "HS512"};

// A file that decides who gets in (the issuers file, a public key, a JWKS): a regular file
// owned by this user or root that nobody else may write.
StatusOr<std::string> read_trusted_file(const std::string& path, const std::string& what, std::size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return not_found(what + " " + path + ": not found");
    return permission_denied(what + " " + path + ": cannot open: " + std::strerror(err));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return internal_error(what + " " + path + ": fstat: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return invalid_argument(what + " " + path + ": not a regular file");
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return permission_denied(what + " " + path + " is writable by others (mode " + mode +
                             "); whoever can write it decides who logs in: chmod 644 it");
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return permission_denied(what + " " + path + " is owned by uid " + std::to_string(st.st_uid) +
                             ", neither this user nor root; whoever owns it decides who logs in");
  }
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    return resource_exhausted(what + " " + path + ": over the limit of " + std::to_string(max_bytes) + " bytes");
  }
  std::string text;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return internal_error(what + " " + path + ": read: " + std::strerror(errno));
    }
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > max_bytes) return resource_exhausted(what + " " + path + ": over the limit of " + std::to_string(max_bytes) + " bytes");
  }
  return text;
}

std::string resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || path.front() == '/' || base_dir.empty()) return path;
  return (std::filesystem::path(base_dir) / path).string();
}

TokenKeyKind kind_of(crypto::PublicKeyKind kind) {
  switch (kind) {
    case crypto::PublicKeyKind::kRsa: return TokenKeyKind::kRsa;
    case crypto::PublicKeyKind::kEcP256: return TokenKeyKind::kEcP256;
    case crypto::PublicKeyKind::kEcP384: return TokenKeyKind::kEcP384;
    case crypto::PublicKeyKind::kEcP521: return TokenKeyKind::kEcP521;
  }
  return TokenKeyKind::kRsa;
}

std::string_view key_kind_name(TokenKeyKind kind) {
  switch (kind) {
    case TokenKeyKind::kRsa: return "RSA key";
    case TokenKeyKind::kEcP256: return "EC P-256 key";
    case TokenKeyKind::kEcP384: return "EC P-384 key";
    case TokenKeyKind::kEcP521: return "EC P-521 key";
    case TokenKeyKind::kSecret: return "shared secret (secret_file)";
  }
  return "key";
}

// A base64url JWK member, decoded.
StatusOr<std::string> jwk_bytes(const json& key, const char* name, const std::string& where) {
  auto it = key.find(name);
  if (it == key.end() || !it->is_string()) return error_at(where, std::string("\"") + name + "\" missing or not a string");
  auto bytes = crypto::base64url_decode(it->get_ref<const std::string&>());
  if (!bytes.ok()) return error_at(where, std::string("\"") + name + "\": " + bytes.status().message());
  return bytes;
}

StatusOr<TokenIssuer> parse_issuer(const json& j, const std::string& where, const std::string& base_dir) {
  if (!j.is_object()) return error_at(where, "must be an object, not " + std::string(j.type_name()));
  TESTUDO_RETURN_IF_ERROR(check_keys(where, j, {"issuer", "audience", "keys", "jwks", "secret_file", "algorithms",
                                                "groups_claim", "clock_skew_seconds"}));
  TokenIssuer out;
  auto string_member = [&](const char* name, std::string& into, bool required) -> Status {
    auto it = j.find(name);
    if (it == j.end()) return required ? error_at(where, std::string("\"") + name + "\" is required") : ok_status();
    if (!it->is_string() || it->get_ref<const std::string&>().empty()) {
      return error_at(where + "." + name, "must be a non-empty string");
    }
    if (it->get_ref<const std::string&>().size() > 256) return error_at(where + "." + name, "longer than 256 bytes");
    into = it->get<std::string>();
    return ok_status();
  };
  TESTUDO_RETURN_IF_ERROR(string_member("issuer", out.issuer, true));
  TESTUDO_RETURN_IF_ERROR(string_member("audience", out.audience, true));
  TESTUDO_RETURN_IF_ERROR(string_member("groups_claim", out.groups_claim, false));
  std::string jwks_path, secret_path;
  TESTUDO_RETURN_IF_ERROR(string_member("jwks", jwks_path, false));
  TESTUDO_RETURN_IF_ERROR(string_member("secret_file", secret_path, false));
  if (out.issuer.find('#') != std::string::npos) {
    // "token:<issuer>#<subject>" must split at the first '#'.
    return error_at(where + ".issuer", "may not contain '#'");
  }
  if (auto it = j.find("clock_skew_seconds"); it != j.end()) {
    if (!it->is_number_integer() || it->get<std::int64_t>() < 0 || it->get<std::int64_t>() > kMaxClockSkewSeconds) {
      return error_at(where + ".clock_skew_seconds", "must be an integer from 0 to " + std::to_string(kMaxClockSkewSeconds));
    }
    out.clock_skew_seconds = it->get<std::int64_t>();
  }
  auto algs = j.find("algorithms");
  if (algs == j.end() || !algs->is_array() || algs->empty()) {
    return error_at(where + ".algorithms", "a non-empty list of algorithms is required (e.g. [\"RS256\"])");
  }
  for (std::size_t i = 0; i < algs->size(); ++i) {
    const json& a = (*algs)[i];
    const std::string at = where + ".algorithms[" + std::to_string(i) + "]";
    if (!a.is_string()) return error_at(at, "must be a string");
    const std::string& name = a.get_ref<const std::string&>();
    auto alg = token_algorithm_from_name(name);
    if (!alg) {
      std::string known;
      for (auto n : kAlgorithmNames) known += (known.empty() ? "" : ", ") + std::string(n);
      if (name == "none" || name == "None" || name == "NONE") return error_at(at, "\"none\" (unsigned tokens) is never accepted");
      return error_at(at, "unknown or unsupported algorithm " + quoted_for_error(std::string(name)) + " (supported: " + known + ")");
    }
    if (std::find(out.algorithms.begin(), out.algorithms.end(), *alg) == out.algorithms.end()) out.algorithms.push_back(*alg);
  }
  if (auto keys = j.find("keys"); keys != j.end()) {
    if (!keys->is_array()) return error_at(where + ".keys", "must be a list of PEM file paths");
    for (std::size_t i = 0; i < keys->size(); ++i) {
      const std::string at = where + ".keys[" + std::to_string(i) + "]";
      const json& k = (*keys)[i];
      if (!k.is_string() || k.get_ref<const std::string&>().empty()) return error_at(at, "must be a PEM file path");
      const std::string path = resolve(base_dir, k.get<std::string>());
      TESTUDO_ASSIGN_OR_RETURN(std::string pem, read_trusted_file(path, "issuer key file", 64 * 1024));
      auto key = crypto::public_key_from_pem(pem);
      if (!key.ok()) return error_at(at, path + ": " + key.status().message());
      out.keys.push_back(TokenKey{kind_of(key->kind), "", std::move(key->pem), path});
    }
  }
  if (!jwks_path.empty()) {
    const std::string path = resolve(base_dir, jwks_path);
    TESTUDO_ASSIGN_OR_RETURN(std::string text, read_trusted_file(path, "JWKS file", kMaxTokenIssuersBytes));
    auto keys = parse_jwks(text, path);
    if (!keys.ok()) return keys.status().with_context(where + ".jwks");
    for (auto& k : *keys) out.keys.push_back(std::move(k));
  }
  if (!secret_path.empty()) {
    const std::string path = resolve(base_dir, secret_path);
    // A shared secret mints tokens: owner-only, like a private key.
    TESTUDO_ASSIGN_OR_RETURN(std::string secret, crypto::read_private_file(path, "token secret file", 4096));
    while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
    if (secret.size() < kMinHmacSecretBytes) {
      crypto::wipe(secret);
      return error_at(where + ".secret_file", path + ": a shared secret of at least " +
                                                  std::to_string(kMinHmacSecretBytes) + " bytes is required");
    }
    out.keys.push_back(TokenKey{TokenKeyKind::kSecret, "", std::move(secret), path});
  }
  if (out.keys.size() > kMaxKeysPerIssuer) {
    return error_at(where, "more than " + std::to_string(kMaxKeysPerIssuer) + " keys");
  }
  // Every algorithm allowed must have a key of its kind, and a secret is only there for HS*:
  // the allowlist and the keys say the same thing, or the file is wrong.
  for (TokenAlgorithm alg : out.algorithms) {
    const TokenKeyKind needed = key_kind_for(alg);
    const bool have = std::any_of(out.keys.begin(), out.keys.end(), [&](const TokenKey& k) { return k.kind == needed; });
    if (!have) {
      return error_at(where + ".algorithms", std::string(token_algorithm_name(alg)) + " is allowed but the issuer has no " +
                                                 std::string(key_kind_name(needed)));
    }
  }
  if (!secret_path.empty()) {
    const bool hs = std::any_of(out.algorithms.begin(), out.algorithms.end(),
                                [](TokenAlgorithm a) { return key_kind_for(a) == TokenKeyKind::kSecret; });
    if (!hs) return error_at(where + ".secret_file", "a shared secret without an HS256/HS384/HS512 algorithm");
  }
  return out;
}

}  // namespace

std::string_view token_algorithm_name(TokenAlgorithm alg) { return kAlgorithmNames[static_cast<std::size_t>(alg)]; }

std::optional<TokenAlgorithm> token_algorithm_from_name(std::string_view name) {
  for (std::size_t i = 0; i < kAlgorithmNames.size(); ++i) {
    if (kAlgorithmNames[i] == name) return static_cast<TokenAlgorithm>(i);
  }
  return std::nullopt;
}

TokenKeyKind key_kind_for(TokenAlgorithm alg) {
  switch (alg) {
    case TokenAlgorithm::kRS256:
    case TokenAlgorithm::kRS384:
    case TokenAlgorithm::kRS512: return TokenKeyKind::kRsa;
    case TokenAlgorithm::kES256: return TokenKeyKind::kEcP256;
    case TokenAlgorithm::kES384: return TokenKeyKind::kEcP384;
    case TokenAlgorithm::kES512: return TokenKeyKind::kEcP521;
    case TokenAlgorithm::kHS256:
    case TokenAlgorithm::kHS384:
    case TokenAlgorithm::kHS512: return TokenKeyKind::kSecret;
  }
  return TokenKeyKind::kSecret;
}

bool TokenIssuer::allows(TokenAlgorithm alg) const {
  return std::find(algorithms.begin(), algorithms.end(), alg) != algorithms.end();
}

StatusOr<std::vector<TokenKey>> parse_jwks(std::string_view text, const std::string& source) {
  if (text.size() > kMaxTokenIssuersBytes) return resource_exhausted(source + ": JWKS larger than 1 MiB");
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return invalid_argument(source + ": not valid JSON");
  if (!doc.is_object()) return invalid_argument(source + ": a JWKS is an object with \"keys\"");
  auto keys = doc.find("keys");
  if (keys == doc.end() || !keys->is_array()) return invalid_argument(source + ": \"keys\" missing or not a list");
  if (keys->size() > kMaxKeysPerIssuer) {
    return invalid_argument(source + ": more than " + std::to_string(kMaxKeysPerIssuer) + " keys");
  }
  std::vector<TokenKey> out;
  for (std::size_t i = 0; i < keys->size(); ++i) {
    const json& k = (*keys)[i];
    std::string where = source + " key " + std::to_string(i);
    if (!k.is_object()) return error_at(where, "must be an object");
    auto kty = k.find("kty");
    if (kty == k.end() || !kty->is_string()) return error_at(where, "\"kty\" missing or not a string");
    std::string kid;
    if (auto it = k.find("kid"); it != k.end()) {
      if (!it->is_string() || it->get_ref<const std::string&>().size() > 256) return error_at(where, "\"kid\" must be a string of at most 256 bytes");
      kid = it->get<std::string>();
      where += " (kid " + quoted_for_error(std::string(kid)) + ")";
    }
    if (k.contains("d") || k.contains("p") || k.contains("k")) {
      return error_at(where, "holds private or secret key material; a controller needs only the issuer's public keys");
    }
    if (auto use = k.find("use"); use != k.end() && (!use->is_string() || *use != "sig")) continue;
    if (auto ops = k.find("key_ops"); ops != k.end()) {
      if (!ops->is_array() || std::find(ops->begin(), ops->end(), json("verify")) == ops->end()) continue;
    }
    StatusOr<crypto::PublicKey> key = invalid_argument("");
    const std::string& type = kty->get_ref<const std::string&>();
    if (type == "RSA") {
      TESTUDO_ASSIGN_OR_RETURN(std::string n, jwk_bytes(k, "n", where));
      TESTUDO_ASSIGN_OR_RETURN(std::string e, jwk_bytes(k, "e", where));
      key = crypto::rsa_public_key(n, e);
    } else if (type == "EC") {
      auto crv = k.find("crv");
      if (crv == k.end() || !crv->is_string()) return error_at(where, "\"crv\" missing or not a string");
      TESTUDO_ASSIGN_OR_RETURN(std::string x, jwk_bytes(k, "x", where));
      TESTUDO_ASSIGN_OR_RETURN(std::string y, jwk_bytes(k, "y", where));
      key = crypto::ec_public_key(crv->get_ref<const std::string&>(), x, y);
    } else {
      continue;  // another consumer's key type ("OKP", "oct" without "k" is malformed anyway)
    }
    if (!key.ok()) return error_at(where, key.status().message());
    out.push_back(TokenKey{kind_of(key->kind), std::move(kid), std::move(key->pem), where});
  }
  return out;
}

StatusOr<TokenIssuers> TokenIssuers::load(const std::string& path) {
  TESTUDO_ASSIGN_OR_RETURN(std::string text, read_trusted_file(path, "token issuers file", kMaxTokenIssuersBytes));
  auto parsed = parse(text, std::filesystem::path(path).parent_path().string());
  if (!parsed.ok()) return parsed.status().with_context("token issuers file " + path);
  return parsed;
}

StatusOr<TokenIssuers> TokenIssuers::parse(std::string_view text, const std::string& base_dir) {
  if (text.size() > kMaxTokenIssuersBytes) return resource_exhausted("larger than 1 MiB");
  // Strict: this file decides who logs in, and a duplicated key must not drop a setting silently.
  TESTUDO_ASSIGN_OR_RETURN(json doc, parse_strict_json(text));
  if (!doc.is_object()) return invalid_argument("must be a JSON object with \"version\" and \"issuers\"");
  TESTUDO_RETURN_IF_ERROR(check_keys("(top level)", doc, {"version", "issuers"}));
  auto version = doc.find("version");
  if (version == doc.end()) return invalid_argument("\"version\" is required (1)");
  if (!version->is_number_integer() || version->get<std::int64_t>() != 1) {
    return invalid_argument("unsupported \"version\" " + quoted_for_error(version->dump()) + " (this controller reads version 1)");
  }
  auto list = doc.find("issuers");
  if (list == doc.end() || !list->is_array() || list->empty()) {
    return invalid_argument("\"issuers\" must be a non-empty list");
  }
  if (list->size() > kMaxTokenIssuers) return invalid_argument("more than " + std::to_string(kMaxTokenIssuers) + " issuers");
  TokenIssuers out;
  for (std::size_t i = 0; i < list->size(); ++i) {
    TESTUDO_ASSIGN_OR_RETURN(TokenIssuer issuer, parse_issuer((*list)[i], "issuers[" + std::to_string(i) + "]", base_dir));
    if (out.find(issuer.issuer)) {
      return invalid_argument("issuers[" + std::to_string(i) + "]: issuer " + quoted_for_error(issuer.issuer) + " is listed twice");
    }
    out.issuers_.push_back(std::move(issuer));
  }
  return out;
}

const TokenIssuer* TokenIssuers::find(std::string_view iss) const {
  for (const auto& i : issuers_) {
    if (i.issuer == iss) return &i;
  }
  return nullptr;
}

}  // namespace testudo::auth
