#include "crypto/aead.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <climits>
#include <memory>

#include "crypto/crypto.h"

namespace testudo::crypto {
namespace {

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};
struct KdfFree {
  void operator()(EVP_KDF* k) const { EVP_KDF_free(k); }
};
struct KdfCtxFree {
  void operator()(EVP_KDF_CTX* c) const { EVP_KDF_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

const unsigned char* uc(const std::byte* p) { return reinterpret_cast<const unsigned char*>(p); }
unsigned char* uc(std::byte* p) { return reinterpret_cast<unsigned char*>(p); }

// Feeds `in` to EVP_{En,De}cryptUpdate in chunks an int can count.
template <typename Update>
bool update_pieces(EVP_CIPHER_CTX* ctx, std::span<const std::span<const std::byte>> in,
                   std::span<const std::span<std::byte>> out, Update update) {
  if (in.size() != out.size()) return false;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i].size() != out[i].size()) return false;
    std::size_t done = 0;
    while (done < in[i].size()) {
      const int chunk = static_cast<int>(std::min<std::size_t>(in[i].size() - done, INT_MAX / 2));
      int written = 0;
      if (update(ctx, uc(out[i].data() + done), &written, uc(in[i].data() + done), chunk) != 1 || written != chunk) {
        return false;
      }
      done += static_cast<std::size_t>(chunk);
    }
  }
  return true;
}

bool add_aad(EVP_CIPHER_CTX* ctx, std::span<const std::byte> aad, bool encrypt) {
  if (aad.empty()) return true;
  int ignored = 0;
  return (encrypt ? EVP_EncryptUpdate : EVP_DecryptUpdate)(ctx, nullptr, &ignored, uc(aad.data()),
                                                          static_cast<int>(aad.size())) == 1;
}

Status sealing_failure(std::string_view what) { return internal_error("AES-256-GCM " + std::string(what) + " failed"); }

}  // namespace

StatusOr<AeadKey> hkdf_sha256(std::span<const std::byte> ikm, std::span<const std::byte> salt, std::string_view info) {
  std::unique_ptr<EVP_KDF, KdfFree> kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  if (!kdf) return internal_error("HKDF is not available");
  std::unique_ptr<EVP_KDF_CTX, KdfCtxFree> ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return internal_error("HKDF context");
  char digest[] = "SHA256";
  // RFC 5869: an absent salt is HashLen zero bytes; OpenSSL wants that spelled out.
  const std::array<std::byte, 32> zero_salt{};
  if (salt.empty()) salt = zero_salt;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<std::byte*>(ikm.data()), ikm.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<std::byte*>(salt.data()), salt.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<char*>(info.data()), info.size()),
      OSSL_PARAM_construct_end(),
  };
  AeadKey key{};
  if (EVP_KDF_derive(ctx.get(), uc(key.data()), key.size(), params) != 1) return internal_error("HKDF failed");
  return key;
}

namespace {

// X25519(private, peer): the shared secret. An all-zero result (a small-order peer key) is
// refused, as RFC 7748 section 6.1 allows.
StatusOr<std::array<std::byte, kX25519Bytes>> x25519(std::span<const std::byte, kX25519Bytes> private_key,
                                                     const X25519Public& peer) {
  Pkey own(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, uc(private_key.data()), private_key.size()));
  Pkey other(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, uc(peer.data()), peer.size()));
  if (!own || !other) return invalid_argument("not an X25519 key");
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> ctx(EVP_PKEY_CTX_new(own.get(), nullptr));
  std::array<std::byte, kX25519Bytes> shared{};
  std::size_t size = shared.size();
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_derive_set_peer(ctx.get(), other.get()) != 1 ||
      EVP_PKEY_derive(ctx.get(), uc(shared.data()), &size) != 1 || size != shared.size()) {
    return permission_denied("X25519 key agreement failed (a small-order or malformed public key)");
  }
  std::byte any{0};
  for (std::byte b : shared) any |= b;
  if (any == std::byte{0}) return permission_denied("X25519 key agreement gave the all-zero secret");
  return shared;
}

}  // namespace

namespace {

// AES-256-GCM, fetched from the provider once. EVP_aes_256_gcm() makes OpenSSL 3 look the
// implementation up again on every Init (an "implicit fetch"), which costs more than
// sealing a small message. Never freed: it lives as long as the process.
const EVP_CIPHER* aes_256_gcm() {
  static EVP_CIPHER* const cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  return cipher;
}

// The cipher contexts of the last few keys this thread used, already keyed. A pair key
// seals and opens many small messages, and keying a context (the AES key schedule, the
// GHASH table) costs several times sealing 64 bytes; a keyed context then only needs its
// nonce per message. What must hold: a context is reused only for the very same key
// (compared in constant time) and direction, every use starts with Init(nonce), which resets
// the GCM state, and a context that failed midway is keyed afresh before its next use. Keys
// kept here are wiped when evicted and when the thread ends (EVP_CIPHER_CTX_free cleanses
// the key schedule); one-time keys (sealed boxes) do not come here.
class KeyedContexts {
 public:
  ~KeyedContexts() {
    for (Entry& e : entries_) crypto::wipe(e.key);
  }

  // A context keyed with `key` for `encrypt`, its nonce set; null on an OpenSSL error.
  EVP_CIPHER_CTX* get(const AeadKey& key, bool encrypt, const AeadNonce& nonce) {
    ++clock_;
    Entry* slot = nullptr;
    for (Entry& e : entries_) {
      if (e.ctx && e.encrypt == encrypt && constant_time_equal(e.key, key)) {
        slot = &e;
        break;
      }
    }
    const auto init = encrypt ? EVP_EncryptInit_ex2 : EVP_DecryptInit_ex2;
    if (slot == nullptr) {
      slot = &*std::min_element(entries_.begin(), entries_.end(),
                                [](const Entry& a, const Entry& b) { return a.last_used < b.last_used; });
      slot->ctx.reset(EVP_CIPHER_CTX_new());
      crypto::wipe(slot->key);
      if (!slot->ctx || aes_256_gcm() == nullptr ||
          init(slot->ctx.get(), aes_256_gcm(), uc(key.data()), nullptr, nullptr) != 1) {
        slot->ctx.reset();
        return nullptr;
      }
      slot->key = key;
      slot->encrypt = encrypt;
    }
    slot->last_used = clock_;
    if (init(slot->ctx.get(), nullptr, nullptr, uc(nonce.data()), nullptr) != 1) {
      forget(slot->ctx.get());
      return nullptr;
    }
    return slot->ctx.get();
  }

  // `ctx` (from get) is in an unknown state: it is keyed afresh next time.
  void forget(EVP_CIPHER_CTX* ctx) {
    for (Entry& e : entries_) {
      if (e.ctx.get() == ctx) {
        e.ctx.reset();
        crypto::wipe(e.key);
      }
    }
  }

 private:
  struct Entry {
    AeadKey key{};
    bool encrypt = false;
    std::uint64_t last_used = 0;
    CipherCtx ctx;
  };
  std::array<Entry, 8> entries_;  // a client talks to many engines, but a message to one
  std::uint64_t clock_ = 0;
};

thread_local KeyedContexts keyed_contexts;

// One GCM message on `ctx` (keyed, nonce set): the associated data, then the pieces.
StatusOr<AeadTag> seal_on(EVP_CIPHER_CTX* ctx, std::span<const std::byte> aad,
                          std::span<const std::span<const std::byte>> in, std::span<const std::span<std::byte>> out) {
  if (!add_aad(ctx, aad, true) || !update_pieces(ctx, in, out, EVP_EncryptUpdate)) {
    return sealing_failure("encryption");
  }
  int final_bytes = 0;
  unsigned char none[16];
  AeadTag tag{};
  if (EVP_EncryptFinal_ex(ctx, none, &final_bytes) != 1 || final_bytes != 0 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, static_cast<int>(tag.size()), tag.data()) != 1) {
    return sealing_failure("finish");
  }
  return tag;
}

Status open_on(EVP_CIPHER_CTX* ctx, std::span<const std::byte> aad, std::span<const std::span<const std::byte>> in,
               std::span<const std::span<std::byte>> out, const AeadTag& tag) {
  if (!add_aad(ctx, aad, false) || !update_pieces(ctx, in, out, EVP_DecryptUpdate)) {
    return sealing_failure("decryption");
  }
  AeadTag expected = tag;
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, static_cast<int>(expected.size()), expected.data()) != 1) {
    return sealing_failure("tag set-up");
  }
  int final_bytes = 0;
  unsigned char none[16];
  if (EVP_DecryptFinal_ex(ctx, none, &final_bytes) != 1) {
    return permission_denied("sealed body failed authentication");
  }
  return ok_status();
}

// A context of its own, keyed once and freed after use: for one-time keys.
CipherCtx one_time_context(const AeadKey& key, const AeadNonce& nonce, bool encrypt) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  const auto init = encrypt ? EVP_EncryptInit_ex2 : EVP_DecryptInit_ex2;
  if (!ctx || aes_256_gcm() == nullptr || init(ctx.get(), aes_256_gcm(), uc(key.data()), uc(nonce.data()), nullptr) != 1) {
    return nullptr;
  }
  return ctx;
}

}  // namespace

struct AeadSealStream::Ctx {
  CipherCtx cipher;
};

AeadSealStream::AeadSealStream(std::unique_ptr<Ctx> ctx) : ctx_(std::move(ctx)) {}
AeadSealStream::AeadSealStream(AeadSealStream&&) noexcept = default;
AeadSealStream& AeadSealStream::operator=(AeadSealStream&&) noexcept = default;
AeadSealStream::~AeadSealStream() = default;

StatusOr<AeadSealStream> AeadSealStream::start(const AeadKey& key, const AeadNonce& nonce,
                                               std::span<const std::byte> aad) {
  auto ctx = std::make_unique<Ctx>();
  ctx->cipher = one_time_context(key, nonce, true);
  if (!ctx->cipher) return sealing_failure("set-up");
  if (!add_aad(ctx->cipher.get(), aad, true)) return sealing_failure("encryption");
  return AeadSealStream(std::move(ctx));
}

Status AeadSealStream::update(std::span<const std::byte> in, std::span<std::byte> out) {
  if (!ctx_ || !ctx_->cipher) return sealing_failure("encryption (a spent stream)");
  const std::span<const std::byte> ins[] = {in};
  const std::span<std::byte> outs[] = {out};
  if (!update_pieces(ctx_->cipher.get(), ins, outs, EVP_EncryptUpdate)) {
    ctx_->cipher.reset();
    return sealing_failure("encryption");
  }
  return ok_status();
}

StatusOr<AeadTag> AeadSealStream::finish() {
  if (!ctx_ || !ctx_->cipher) return sealing_failure("finish (a spent stream)");
  auto tag = seal_on(ctx_->cipher.get(), {}, {}, {});  // nothing more to encrypt: the final and the tag
  ctx_->cipher.reset();
  return tag;
}

StatusOr<AeadTag> aead_seal(const AeadKey& key, const AeadNonce& nonce, std::span<const std::byte> aad,
                            std::span<const std::span<const std::byte>> in, std::span<const std::span<std::byte>> out) {
  EVP_CIPHER_CTX* ctx = keyed_contexts.get(key, true, nonce);
  if (ctx == nullptr) return sealing_failure("set-up");
  auto tag = seal_on(ctx, aad, in, out);
  if (!tag.ok()) keyed_contexts.forget(ctx);
  return tag;
}

Status aead_open(const AeadKey& key, const AeadNonce& nonce, std::span<const std::byte> aad,
                 std::span<const std::span<const std::byte>> in, std::span<const std::span<std::byte>> out,
                 const AeadTag& tag) {
  EVP_CIPHER_CTX* ctx = keyed_contexts.get(key, false, nonce);
  if (ctx == nullptr) return sealing_failure("set-up");
  Status opened = open_on(ctx, aad, in, out, tag);
  // A tag that does not match leaves the context as any finished message does; anything
  // else (an OpenSSL error midway) may not.
  if (!opened.ok() && opened.code() != StatusCode::kPermissionDenied) keyed_contexts.forget(ctx);
  return opened;
}

StatusOr<X25519KeyPair> x25519_from_private(std::span<const std::byte, kX25519Bytes> private_key) {
  Pkey key(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, uc(private_key.data()), private_key.size()));
  X25519KeyPair pair{};
  std::size_t public_size = pair.public_key.size();
  if (!key || EVP_PKEY_get_raw_public_key(key.get(), uc(pair.public_key.data()), &public_size) != 1 ||
      public_size != kX25519Bytes) {
    return internal_error("X25519 key from bytes failed");
  }
  std::copy(private_key.begin(), private_key.end(), pair.private_key.begin());
  return pair;
}

StatusOr<X25519KeyPair> generate_x25519() {
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &raw) != 1) {
    return internal_error("X25519 key generation failed");
  }
  Pkey key(raw);
  X25519KeyPair pair{};
  std::size_t private_size = pair.private_key.size();
  std::size_t public_size = pair.public_key.size();
  if (EVP_PKEY_get_raw_private_key(key.get(), uc(pair.private_key.data()), &private_size) != 1 ||
      EVP_PKEY_get_raw_public_key(key.get(), uc(pair.public_key.data()), &public_size) != 1 ||
      private_size != kX25519Bytes || public_size != kX25519Bytes) {
    return internal_error("X25519 key export failed");
  }
  return pair;
}

StatusOr<std::vector<std::byte>> seal_box(const X25519Public& recipient, std::string_view info,
                                          std::span<const std::byte> plaintext) {
  TESTUDO_ASSIGN_OR_RETURN(X25519KeyPair ephemeral, generate_x25519());
  auto shared = x25519(ephemeral.private_key, recipient);
  wipe(ephemeral.private_key);
  if (!shared.ok()) return shared.status();
  std::array<std::byte, 2 * kX25519Bytes> salt{};
  std::copy(ephemeral.public_key.begin(), ephemeral.public_key.end(), salt.begin());
  std::copy(recipient.begin(), recipient.end(), salt.begin() + kX25519Bytes);
  auto key = hkdf_sha256(*shared, salt, info);
  wipe(*shared);
  if (!key.ok()) return key.status();
  std::vector<std::byte> box(kX25519Bytes + plaintext.size() + kAeadTagBytes);
  std::copy(ephemeral.public_key.begin(), ephemeral.public_key.end(), box.begin());
  const std::span<const std::byte> in[] = {plaintext};
  const std::span<std::byte> out[] = {std::span(box).subspan(kX25519Bytes, plaintext.size())};
  CipherCtx ctx = one_time_context(*key, AeadNonce{}, true);
  wipe(*key);
  if (!ctx) return sealing_failure("set-up");
  auto tag = seal_on(ctx.get(), as_bytes(info), in, out);
  if (!tag.ok()) return tag.status();
  std::copy(tag->begin(), tag->end(), box.end() - kAeadTagBytes);
  return box;
}

StatusOr<std::vector<std::byte>> open_box(const X25519KeyPair& recipient, std::string_view info,
                                          std::span<const std::byte> box) {
  if (box.size() < kSealedBoxOverhead) return invalid_argument("sealed box too short");
  X25519Public ephemeral{};
  std::copy_n(box.begin(), kX25519Bytes, ephemeral.begin());
  auto shared = x25519(recipient.private_key, ephemeral);
  if (!shared.ok()) return permission_denied("sealed box does not open");
  std::array<std::byte, 2 * kX25519Bytes> salt{};
  std::copy(ephemeral.begin(), ephemeral.end(), salt.begin());
  std::copy(recipient.public_key.begin(), recipient.public_key.end(), salt.begin() + kX25519Bytes);
  auto key = hkdf_sha256(*shared, salt, info);
  wipe(*shared);
  if (!key.ok()) return key.status();
  const std::size_t size = box.size() - kSealedBoxOverhead;
  std::vector<std::byte> plaintext(size);
  AeadTag tag{};
  std::copy_n(box.end() - kAeadTagBytes, kAeadTagBytes, tag.begin());
  const std::span<const std::byte> in[] = {box.subspan(kX25519Bytes, size)};
  const std::span<std::byte> out[] = {plaintext};
  CipherCtx ctx = one_time_context(*key, AeadNonce{}, false);
  wipe(*key);
  Status opened = ctx ? open_on(ctx.get(), as_bytes(info), in, out, tag) : sealing_failure("set-up");
  if (!opened.ok()) {
    wipe(plaintext);
    return opened.code() == StatusCode::kPermissionDenied ? permission_denied("sealed box does not open") : opened;
  }
  return plaintext;
}

}  // namespace testudo::crypto
