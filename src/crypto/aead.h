// Authenticated encryption for end-to-end sealed bodies (docs/e2e-design.md): AES-256-GCM
// over OpenSSL 3's EVP interface, and X25519 sealed boxes (ECIES) for the keys that travel
// through the controller. Standard constructions only; OpenSSL types never appear here.
// Thread-safe (no shared state).
//
// What must hold for callers:
//  * A (key, nonce) pair is never used twice: callers derive nonces from a per-key counter
//    and a direction byte (e2e/sealed_body.h), never at random for a long-lived key.
//  * A body of several pieces (a message's segments) is one GCM message: its ciphertext
//    pieces have the pieces' sizes, and the associated data must name those sizes, so that
//    moving bytes between pieces fails the tag.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "testudo/status.h"

namespace testudo::crypto {

inline constexpr std::size_t kAeadKeyBytes = 32;
inline constexpr std::size_t kAeadNonceBytes = 12;
inline constexpr std::size_t kAeadTagBytes = 16;
using AeadKey = std::array<std::byte, kAeadKeyBytes>;
using AeadNonce = std::array<std::byte, kAeadNonceBytes>;
using AeadTag = std::array<std::byte, kAeadTagBytes>;

// Encrypts the pieces in order as one AES-256-GCM message with associated data `aad`;
// out[i] must be exactly in[i].size() bytes (it may be the same memory as in[i]). Returns
// the tag. Fails only on an OpenSSL error.
StatusOr<AeadTag> aead_seal(const AeadKey& key, const AeadNonce& nonce, std::span<const std::byte> aad,
                            std::span<const std::span<const std::byte>> in, std::span<const std::span<std::byte>> out);

// The reverse. kPermissionDenied "sealed body failed authentication" when the tag does not
// match the key, nonce, associated data and every byte of every piece; the plaintext written
// to `out` must then be discarded (callers zero nothing: they drop the buffers).
Status aead_open(const AeadKey& key, const AeadNonce& nonce, std::span<const std::byte> aad,
                 std::span<const std::span<const std::byte>> in, std::span<const std::span<std::byte>> out,
                 const AeadTag& tag);

// One AES-256-GCM message sealed piece by piece as its bytes become available (the bulk
// path encrypts while it sends): the same bytes and tag as aead_seal over the same pieces.
// One thread at a time; a context of its own, freed with it.
class AeadSealStream {
 public:
  // Fails only on an OpenSSL error.
  static StatusOr<AeadSealStream> start(const AeadKey& key, const AeadNonce& nonce, std::span<const std::byte> aad);
  // Encrypts `in` into `out` (the same size; it may be the same memory).
  Status update(std::span<const std::byte> in, std::span<std::byte> out);
  // The tag, once every byte went through update; the stream is spent.
  StatusOr<AeadTag> finish();

  AeadSealStream(AeadSealStream&&) noexcept;
  AeadSealStream& operator=(AeadSealStream&&) noexcept;
  ~AeadSealStream();

 private:
  struct Ctx;
  explicit AeadSealStream(std::unique_ptr<Ctx> ctx);
  std::unique_ptr<Ctx> ctx_;
};

// X25519 key pairs (RFC 7748) for sealing keys to a recipient.
inline constexpr std::size_t kX25519Bytes = 32;
using X25519Public = std::array<std::byte, kX25519Bytes>;
struct X25519KeyPair {
  std::array<std::byte, kX25519Bytes> private_key;  // raw; wipe() it when done
  X25519Public public_key;
};
StatusOr<X25519KeyPair> generate_x25519();
// The key pair of a given private key (32 bytes; clamped as RFC 7748 says), e.g. one derived
// with hkdf_sha256.
StatusOr<X25519KeyPair> x25519_from_private(std::span<const std::byte, kX25519Bytes> private_key);

// HKDF-SHA256 (RFC 5869) with a 32-byte output; an empty salt means the RFC's default (32 zero
// bytes).
StatusOr<AeadKey> hkdf_sha256(std::span<const std::byte> ikm, std::span<const std::byte> salt, std::string_view info);

// A sealed box (ECIES over X25519, as HPKE's base mode would do; OpenSSL 3.0 has no HPKE):
//   eph = fresh X25519 pair; shared = X25519(eph.private, recipient)
//   key = HKDF-SHA256(ikm = shared, salt = eph.public | recipient, info = `info`)
//   box = eph.public | AES-256-GCM(key, nonce 0, aad = `info`, plaintext) | tag
// The key is used once, so a zero nonce is safe. `info` binds the box to its purpose and
// parties (a box made for one purpose does not open for another). An all-zero shared
// secret (a small-order recipient key) is refused.
inline constexpr std::size_t kSealedBoxOverhead = kX25519Bytes + kAeadTagBytes;
StatusOr<std::vector<std::byte>> seal_box(const X25519Public& recipient, std::string_view info,
                                          std::span<const std::byte> plaintext);
// kPermissionDenied "sealed box does not open" for a box made for another key, another
// `info`, or altered; kInvalidArgument for one shorter than the overhead.
StatusOr<std::vector<std::byte>> open_box(const X25519KeyPair& recipient, std::string_view info,
                                          std::span<const std::byte> box);

}  // namespace testudo::crypto
