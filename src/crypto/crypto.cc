#include "crypto/crypto.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <memory>

#include "base/log.h"

namespace testudo::crypto {
namespace {

// The digest functions return a plain Digest: OpenSSL fails them only when it cannot
// allocate or its providers are missing. Returning a zero "digest" would be worse than
// stopping, so that case terminates.
[[noreturn]] void die(std::string_view what) {
  LOG_ERROR("crypto") << what << " failed inside OpenSSL; stopping";
  std::abort();
}

// OpenSSL dislikes null pointers even with zero lengths; a static byte stands in.
const unsigned char* ptr_or_empty(std::span<const std::byte> s) {
  static const unsigned char kEmpty = 0;
  return s.empty() ? &kEmpty : reinterpret_cast<const unsigned char*>(s.data());
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Status fill_random(std::span<std::byte> out) {
  while (!out.empty()) {
    const std::size_t chunk = std::min<std::size_t>(out.size(), INT_MAX);
    if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(chunk)) != 1) {
      // The queue holds nothing secret, only the reason the RNG refused.
      ERR_clear_error();
      return internal_error("RAND_bytes failed: the OpenSSL random generator is not seeded");
    }
    out = out.subspan(chunk);
  }
  return ok_status();
}

StatusOr<Digest> random_secret() {
  Digest d;
  TESTUDO_RETURN_IF_ERROR(fill_random(d));
  return d;
}

Digest sha256(std::span<const std::byte> data) {
  // Fetched once and a context per thread: EVP_sha256() makes OpenSSL 3 look the
  // implementation up on every use, which costs as much as hashing a small message, and
  // this runs for every request (code digests, the audit log).
  static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  struct CtxFree {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
  };
  thread_local const std::unique_ptr<EVP_MD_CTX, CtxFree> ctx(EVP_MD_CTX_new());
  Digest d;
  unsigned int len = 0;
  if (md == nullptr || !ctx || EVP_DigestInit_ex2(ctx.get(), md, nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), ptr_or_empty(data), data.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(d.data()), &len) != 1 || len != d.size()) {
    die("SHA-256");
  }
  return d;
}

Digest hmac_sha256(std::span<const std::byte> key, std::span<const std::byte> data) {
  Digest d;
  unsigned int len = 0;
  if (key.size() > INT_MAX ||
      HMAC(EVP_sha256(), ptr_or_empty(key), static_cast<int>(key.size()), ptr_or_empty(data),
           data.size(), reinterpret_cast<unsigned char*>(d.data()), &len) == nullptr ||
      len != d.size()) {
    die("HMAC-SHA-256");
  }
  return d;
}

Digest pbkdf2_hmac_sha256(std::string_view password, std::span<const std::byte> salt, std::uint32_t iterations) {
  Digest d;
  if (iterations == 0 || iterations > INT_MAX || password.size() > INT_MAX || salt.size() > INT_MAX ||
      PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                        reinterpret_cast<const unsigned char*>(ptr_or_empty(salt)), static_cast<int>(salt.size()),
                        static_cast<int>(iterations), EVP_sha256(), static_cast<int>(d.size()),
                        reinterpret_cast<unsigned char*>(d.data())) != 1) {
    die("PBKDF2-HMAC-SHA-256");
  }
  return d;
}

bool constant_time_equal(std::span<const std::byte> a, std::span<const std::byte> b) {
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

void wipe(std::string& secret) {
  if (!secret.empty()) OPENSSL_cleanse(secret.data(), secret.size());
  secret.clear();
}

void wipe(std::span<std::byte> secret) {
  if (!secret.empty()) OPENSSL_cleanse(secret.data(), secret.size());
}

std::string to_hex(std::span<const std::byte> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::byte b : bytes) {
    const auto v = std::to_integer<unsigned>(b);
    out.push_back(kDigits[v >> 4]);
    out.push_back(kDigits[v & 0xf]);
  }
  return out;
}

StatusOr<std::vector<std::byte>> from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) {
    return invalid_argument("hex string has odd length " + std::to_string(hex.size()));
  }
  std::vector<std::byte> out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = hex_value(hex[i]);
    const int lo = hex_value(hex[i + 1]);
    if (hi < 0 || lo < 0) {
      // The position, not the character: the string may be a secret.
      return invalid_argument("hex string has a non-hex character at offset " +
                              std::to_string(hi < 0 ? i : i + 1));
    }
    out.push_back(static_cast<std::byte>((hi << 4) | lo));
  }
  return out;
}

namespace {
constexpr char kBase64Digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace

std::string to_base64(std::span<const std::byte> bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    const std::size_t n = std::min<std::size_t>(3, bytes.size() - i);
    std::uint32_t v = std::to_integer<std::uint32_t>(bytes[i]) << 16;
    if (n > 1) v |= std::to_integer<std::uint32_t>(bytes[i + 1]) << 8;
    if (n > 2) v |= std::to_integer<std::uint32_t>(bytes[i + 2]);
    out.push_back(kBase64Digits[(v >> 18) & 63]);
    out.push_back(kBase64Digits[(v >> 12) & 63]);
    out.push_back(n > 1 ? kBase64Digits[(v >> 6) & 63] : '=');
    out.push_back(n > 2 ? kBase64Digits[v & 63] : '=');
  }
  return out;
}

StatusOr<std::vector<std::byte>> from_base64(std::string_view text) {
  if (text.size() % 4 != 0) return invalid_argument("base64 text of " + std::to_string(text.size()) +
                                                    " characters, not a multiple of 4");
  std::vector<std::byte> out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    const int pad = last ? (text[i + 3] == '=') + (text[i + 2] == '=' && text[i + 3] == '=') : 0;
    std::uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const int d = k >= 4 - pad ? 0 : base64_value(text[i + k]);
      // The position, not the character: the text may be a secret.
      if (d < 0) return invalid_argument("base64 text has a bad character at offset " + std::to_string(i + k));
      v = (v << 6) | static_cast<std::uint32_t>(d);
    }
    // Non-canonical: bits that the padding drops must be zero.
    if ((pad == 1 && (v & 0xff) != 0) || (pad == 2 && (v & 0xffff) != 0)) {
      return invalid_argument("base64 text is not in canonical form");
    }
    out.push_back(static_cast<std::byte>(v >> 16));
    if (pad < 2) out.push_back(static_cast<std::byte>((v >> 8) & 0xff));
    if (pad < 1) out.push_back(static_cast<std::byte>(v & 0xff));
  }
  return out;
}

}  // namespace testudo::crypto
