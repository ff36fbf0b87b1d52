// Small crypto primitives over OpenSSL 3: randomness, SHA-256, HMAC-SHA-256, PBKDF2, TLS-free
// constant-time comparison, hex, base64. OpenSSL types never appear here. Thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/status.h"

namespace testudo::crypto {

using Digest = std::array<std::byte, 32>;

// Fills `out` from OpenSSL's CSPRNG (RAND_bytes). Fails only if the RNG is not seeded.
Status fill_random(std::span<std::byte> out);
// A fresh 256-bit secret (capabilities, nonces).
StatusOr<Digest> random_secret();

Digest sha256(std::span<const std::byte> data);
Digest hmac_sha256(std::span<const std::byte> key, std::span<const std::byte> data);
// PBKDF2-HMAC-SHA-256 with a 32-byte output (RFC 8018): SCRAM-SHA-256's Hi(password, salt, i).
// `iterations` must be at least 1.
Digest pbkdf2_hmac_sha256(std::string_view password, std::span<const std::byte> salt, std::uint32_t iterations);

// Compares in time independent of where the inputs differ (CRYPTO_memcmp). Different
// lengths compare unequal (the length itself is not secret).
bool constant_time_equal(std::span<const std::byte> a, std::span<const std::byte> b);

// Overwrites a string holding a secret (a passphrase, a key's PEM) before it is freed, in a
// way the compiler may not optimise away (OPENSSL_cleanse), and empties it.
void wipe(std::string& secret);
// The same for a buffer that held a secret (a read buffer, a single character).
void wipe(std::span<std::byte> secret);

std::string to_hex(std::span<const std::byte> bytes);  // lowercase
// Accepts upper or lower case; rejects odd length and non-hex characters.
StatusOr<std::vector<std::byte>> from_hex(std::string_view hex);

// Standard base64 with padding (RFC 4648 section 4), no line breaks.
std::string to_base64(std::span<const std::byte> bytes);
// Only the canonical encoding: padding required, no whitespace, unused bits zero.
StatusOr<std::vector<std::byte>> from_base64(std::string_view text);

inline std::span<const std::byte> as_bytes(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

}  // namespace testudo::crypto
