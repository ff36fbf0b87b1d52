#include "tls/tls.h"

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <openssl/pkcs12.h>
#include <openssl/tls1.h>

#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <ctime>

#include "crypto/crypto.h"
#include "crypto/private_file.h"
#include "tls/parse_cache.h"
#include "tls/tls_internal.h"

namespace testudo::tls {

namespace internal {

Status openssl_error_as(StatusCode code, std::string_view context) {
  std::string message(context);
  message += ": ";
  bool first = true;
  const char* data = nullptr;
  int flags = 0;
  while (unsigned long err = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof buf);
    if (!first) message += "; ";
    first = false;
    message += buf;
    if ((flags & ERR_TXT_STRING) != 0 && data != nullptr && *data != '\0') {
      message += " (";
      message += data;
      message += ")";
    }
  }
  if (first) message += "unknown OpenSSL error";
  return Status(code, std::move(message));
}

}  // namespace internal

namespace {

using namespace internal;  // NOLINT: this file is the implementation of internal/

using StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, Deleter<X509_STORE_CTX_free>>;
using StorePtr = std::unique_ptr<X509_STORE, Deleter<X509_STORE_free>>;
using X509SigPtr = std::unique_ptr<X509_SIG, Deleter<X509_SIG_free>>;
using P8InfoPtr = std::unique_ptr<PKCS8_PRIV_KEY_INFO, Deleter<PKCS8_PRIV_KEY_INFO_free>>;
using AlgorPtr = std::unique_ptr<X509_ALGOR, Deleter<X509_ALGOR_free>>;

constexpr std::string_view kFingerprintPrefix = "sha256:";
constexpr std::size_t kDigestSize = 32;
constexpr std::size_t kMaxPemBytes = 1 << 20;

// PBKDF2-HMAC-SHA256 iterations for encrypted private keys: 600000, OWASP's 2023 figure for
// PBKDF2-HMAC-SHA256. PBKDF2 rather than scrypt because OpenSSL's PKCS#8 decoder caps
// scrypt's memory at 32 MiB, which leaves scrypt weaker than its reputation, and because
// every PKCS#8 reader (openssl pkey, Python's cryptography) understands PBKDF2. A key is
// decrypted once per process start, so ~0.3 s is an acceptable price.
constexpr int kPbkdf2Iterations = 600000;
constexpr int kPbkdf2SaltBytes = 16;
// OpenSSL hands the passphrase callback a PEM_BUFSIZE (1024) buffer.
constexpr std::size_t kMaxPassphraseBytes = 1023;

// A read-only memory BIO over `pem`; null if it is too large for OpenSSL's int lengths.
BioPtr mem_bio(std::string_view pem) {
  if (pem.size() > kMaxPemBytes) return nullptr;
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Never prompts for a passphrase: an encrypted key without one fails to parse.
int no_password(char*, int, int, void*) { return -1; }

// Hands OpenSSL the passphrase (a std::string_view behind `u`), never its interactive prompt.
int passphrase_callback(char* buf, int size, int, void* u) {
  const auto* passphrase = static_cast<const std::string_view*>(u);
  if (passphrase == nullptr || size < 0 || passphrase->size() > static_cast<std::size_t>(size)) {
    return -1;
  }
  std::memcpy(buf, passphrase->data(), passphrase->size());
  return static_cast<int>(passphrase->size());
}

StatusOr<std::string> fingerprint_of(const X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &len) != 1 || len != kDigestSize) {
    return openssl_error_as(StatusCode::kInternal, "cannot compute certificate fingerprint");
  }
  return std::string(kFingerprintPrefix) +
         crypto::to_hex(std::as_bytes(std::span<const unsigned char>(md, len)));
}

// SHA-256 over the DER SubjectPublicKeyInfo of `key`.
StatusOr<std::string> key_fingerprint_of(const EVP_PKEY* key) {
  unsigned char* der = nullptr;
  const int len = key == nullptr ? -1 : i2d_PUBKEY(key, &der);
  if (len <= 0 || der == nullptr) {
    return openssl_error_as(StatusCode::kInvalidArgument, "cannot encode the public key");
  }
  const crypto::Digest digest =
      crypto::sha256(std::as_bytes(std::span<const unsigned char>(der, static_cast<std::size_t>(len))));
  OPENSSL_free(der);
  return std::string(kFingerprintPrefix) + crypto::to_hex(digest);
}

StatusOr<std::string> bio_contents(BIO* bio) {
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  if (len < 0 || (len > 0 && data == nullptr)) {
    return openssl_error_as(StatusCode::kInternal, "cannot read memory BIO");
  }
  return std::string(data, static_cast<std::size_t>(len));
}

Status add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return openssl_error_as(StatusCode::kInternal, std::string("cannot add extension ") + OBJ_nid2sn(nid));
  }
  return ok_status();
}

// "2030-01-01T00:00:00Z"
std::string format_utc(std::int64_t unix_seconds) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  if (gmtime_r(&t, &tm) == nullptr) return "@" + std::to_string(unix_seconds);
  char buf[64];
  if (std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
    return "@" + std::to_string(unix_seconds);
  }
  return buf;
}

StatusOr<std::int64_t> unix_time_of(const ASN1_TIME* t) {
  std::tm tm{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) {
    return openssl_error_as(StatusCode::kInvalidArgument, "cannot read a certificate time");
  }
  return static_cast<std::int64_t>(timegm(&tm));
}

std::string common_name_of(const X509_NAME* name) {
  if (name == nullptr) return {};
  const int index = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (index < 0) return {};
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
  unsigned char* utf8 = nullptr;
  const int len = ASN1_STRING_to_UTF8(&utf8, data);
  if (len < 0 || utf8 == nullptr) {
    ERR_clear_error();
    return {};
  }
  std::string out(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(len));
  OPENSSL_free(utf8);
  return out;
}

StatusOr<std::string> serial_hex_of(const X509* cert) {
  BignumPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  if (!bn) return openssl_error_as(StatusCode::kInvalidArgument, "cannot read certificate serial");
  char* hex = BN_bn2hex(bn.get());
  if (hex == nullptr) return openssl_error_as(StatusCode::kInternal, "BN_bn2hex");
  std::string raw(hex);
  OPENSSL_free(hex);
  std::string sign;
  if (!raw.empty() && raw[0] == '-') {
    sign = "-";
    raw.erase(0, 1);
  }
  const std::size_t first = raw.find_first_not_of('0');
  raw = first == std::string::npos ? "0" : raw.substr(first);
  for (char& c : raw) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return sign + raw;
}

StatusOr<CertificateFacts> facts_of(const X509* cert) {
  CertificateFacts facts;
  TESTUDO_ASSIGN_OR_RETURN(facts.key_fingerprint, key_fingerprint_of(X509_get0_pubkey(cert)));
  TESTUDO_ASSIGN_OR_RETURN(facts.cert_fingerprint, fingerprint_of(cert));
  facts.subject_cn = common_name_of(X509_get_subject_name(cert));
  facts.issuer_cn = common_name_of(X509_get_issuer_name(cert));
  TESTUDO_ASSIGN_OR_RETURN(facts.serial_hex, serial_hex_of(cert));
  TESTUDO_ASSIGN_OR_RETURN(facts.not_before, unix_time_of(X509_get0_notBefore(cert)));
  TESTUDO_ASSIGN_OR_RETURN(facts.not_after, unix_time_of(X509_get0_notAfter(cert)));
  TESTUDO_ASSIGN_OR_RETURN(facts.cert_pem, certificate_pem(cert));
  return facts;
}

// The label of the first PEM block ("CERTIFICATE", "PUBLIC KEY"...), empty if none.
std::string_view first_pem_label(std::string_view pem) {
  constexpr std::string_view kBegin = "-----BEGIN ";
  const std::size_t begin = pem.find(kBegin);
  if (begin == std::string_view::npos) return {};
  const std::size_t start = begin + kBegin.size();
  const std::size_t end = pem.find("-----", start);
  if (end == std::string_view::npos || end - start > 64) return {};
  return pem.substr(start, end - start);
}

// A file that holds no secret (certificate, CA bundle, CRL), read whole with a size limit.
StatusOr<std::string> read_public_file(const std::string& path, std::string_view what) {
  const std::string name = std::string(what) + " " + path;
  std::FILE* f = std::fopen(path.c_str(), "rbe");
  if (f == nullptr) {
    const int err = errno;
    Status st(err == ENOENT ? StatusCode::kNotFound
              : err == EACCES ? StatusCode::kPermissionDenied
                              : StatusCode::kInvalidArgument,
              "cannot open " + name + ": " + std::strerror(err));
    return st;
  }
  std::string out;
  char buf[8192];
  std::size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    out.append(buf, n);
    if (out.size() > kMaxPemBytes) {
      std::fclose(f);
      return resource_exhausted(name + " is larger than " + std::to_string(kMaxPemBytes) + " bytes");
    }
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return invalid_argument("cannot read " + name);
  return out;
}

// "sha256:" + 64 lowercase hex -> the 32 raw bytes; anything else is refused.
StatusOr<crypto::Digest> parse_fingerprint(std::string_view fp) {
  const auto bad = [&fp] {
    return invalid_argument("pinned fingerprint must be \"sha256:\" followed by 64 lowercase hex "
                            "digits; got " + std::to_string(fp.size()) + " characters");
  };
  if (fp.size() != kFingerprintPrefix.size() + 2 * kDigestSize ||
      fp.substr(0, kFingerprintPrefix.size()) != kFingerprintPrefix) {
    return bad();
  }
  const std::string_view hex = fp.substr(kFingerprintPrefix.size());
  for (char c : hex) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return bad();
  }
  auto bytes = crypto::from_hex(hex);
  if (!bytes.ok() || bytes->size() != kDigestSize) return bad();
  crypto::Digest out;
  std::memcpy(out.data(), bytes->data(), out.size());
  return out;
}

// The pinned digest lives on the heap, owned by the SSL_CTX through ex_data: the free
// callback runs in SSL_CTX_free, so it lives exactly as long as the context.
void free_pin(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<crypto::Digest*>(ptr);
}

int pin_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_pin);
  return index;
}

// The SSL object a verify callback runs for (null if the store was not made by libssl).
SSL* ssl_of(X509_STORE_CTX* store) {
  return static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
}

// Client side, min_version "1.2": OpenSSL 3 has no switch to require the extended master
// secret and SSL_get_extms_support answers only after the handshake, so the client reads the
// ServerHello itself (message callback, before the ServerHello is processed) and notes in
// the SSL's ex_data whether the server agreed; verify_pinned_server then refuses a TLS 1.2
// server that did not. The ex_data value is a tag, not an allocation.
int ems_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}
void* const kServerAgreedToEms = reinterpret_cast<void*>(static_cast<std::uintptr_t>(1));

// True if a ServerHello handshake message (header included) carries extension `type`.
bool server_hello_has_extension(const unsigned char* p, std::size_t len, unsigned type) {
  // type(1) length(3) version(2) random(32) session_id(1+n) cipher(2) compression(1) exts(2+m)
  if (len < 4 || p[0] != SSL3_MT_SERVER_HELLO) return false;
  const std::size_t body = (std::size_t{p[1]} << 16) | (std::size_t{p[2]} << 8) | p[3];
  if (body != len - 4) return false;
  std::size_t i = 4 + 2 + 32;
  if (i >= len) return false;
  i += 1 + p[i];           // session id
  i += 2 + 1;              // cipher suite, compression method
  if (i + 2 > len) return false;
  const std::size_t ext_len = (std::size_t{p[i]} << 8) | p[i + 1];
  i += 2;
  if (i + ext_len != len) return false;
  while (i + 4 <= len) {
    const unsigned ext_type = (unsigned{p[i]} << 8) | p[i + 1];
    const std::size_t n = (std::size_t{p[i + 2]} << 8) | p[i + 3];
    i += 4;
    if (i + n > len) return false;
    if (ext_type == type) return true;
    i += n;
  }
  return false;
}

void note_server_ems(int write_p, int, int content_type, const void* buf, std::size_t len, SSL* ssl, void*) {
  if (write_p != 0 || content_type != SSL3_RT_HANDSHAKE || buf == nullptr || len == 0) return;
  const auto* p = static_cast<const unsigned char*>(buf);
  if (p[0] != SSL3_MT_SERVER_HELLO) return;
  const bool agreed = server_hello_has_extension(p, len, TLSEXT_TYPE_extended_master_secret);
  SSL_set_ex_data(ssl, ems_index(), agreed ? kServerAgreedToEms : nullptr);
}

// Client side: replaces chain verification by comparing the server's leaf certificate with
// the pinned SHA-256 fingerprint. A mismatch fails the handshake inside OpenSSL, before the
// client sends its Finished or any application data (docs/threat-model.md T3). Under TLS 1.2 (only
// reachable with min_version "1.2") a server that did not agree to the extended master
// secret is refused here too: the ServerHello has been processed by now.
int verify_pinned_server(X509_STORE_CTX* store, void* arg) {
  const auto* pin = static_cast<const crypto::Digest*>(arg);
  X509* leaf = X509_STORE_CTX_get0_cert(store);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (pin == nullptr || leaf == nullptr || X509_digest(leaf, EVP_sha256(), md, &len) != 1 ||
      len != pin->size() || CRYPTO_memcmp(md, pin->data(), pin->size()) != 0) {
    X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);
    return 0;
  }
  SSL* ssl = ssl_of(store);
  if (ssl != nullptr && SSL_version(ssl) < TLS1_3_VERSION &&
      SSL_get_ex_data(ssl, ems_index()) != kServerAgreedToEms) {
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  X509_STORE_CTX_set_error(store, X509_V_OK);
  return 1;
}

// Server side: any certificate the client presents is accepted here if it is within its
// validity period, because this is not where identity is decided. TLS has already checked
// that the client holds the certificate's private key (CertificateVerify); who the peer is,
// and what it may do, is decided after the handshake by the capability proof over the TLS
// exporter, by identities and in CA mode by ChainVerifier (auth/, docs/security.md). The
// time check is defence in depth (docs/threat-model.md T15): an expired or not-yet-valid
// certificate never completes a handshake, whatever the layers above decide. A missing
// certificate never reaches this callback: SSL_VERIFY_FAIL_IF_NO_PEER_CERT refuses it first;
// the null check is belt and braces.
int accept_any_client_certificate(X509_STORE_CTX* store, void*) {
  X509* leaf = X509_STORE_CTX_get0_cert(store);
  if (leaf == nullptr) {
    X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);
    return 0;
  }
  // X509_cmp_current_time: -1 if the time is before now, 1 if after, 0 if unreadable.
  const int not_before = X509_cmp_current_time(X509_get0_notBefore(leaf));
  if (not_before >= 0) {
    X509_STORE_CTX_set_error(store, not_before == 0 ? X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD
                                                    : X509_V_ERR_CERT_NOT_YET_VALID);
    return 0;
  }
  const int not_after = X509_cmp_current_time(X509_get0_notAfter(leaf));
  if (not_after <= 0) {
    X509_STORE_CTX_set_error(store, not_after == 0 ? X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD
                                                   : X509_V_ERR_CERT_HAS_EXPIRED);
    return 0;
  }
  X509_STORE_CTX_set_error(store, X509_V_OK);
  return 1;
}

// True if a supported_versions extension body (RFC 8446 4.2.1) lists TLS 1.3.
bool offers_tls13(const unsigned char* data, std::size_t len) {
  if (data == nullptr || len < 1 || static_cast<std::size_t>(data[0]) + 1 != len || data[0] % 2 != 0) {
    return false;
  }
  for (std::size_t i = 1; i + 1 < len; i += 2) {
    if (data[i] == 0x03 && data[i + 1] == 0x04) return true;
  }
  return false;
}

// Server side, min_version "1.2": a ClientHello that will end in TLS 1.2 (it does not offer
// 1.3) must offer the extended master secret (RFC 7627), or the handshake stops here.
// OpenSSL 3 offers and accepts it by default but has no switch to require it.
int require_extended_master_secret(SSL* ssl, int* alert, void*) {
  const unsigned char* data = nullptr;
  std::size_t len = 0;
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_versions, &data, &len) == 1 &&
      offers_tls13(data, len)) {
    return SSL_CLIENT_HELLO_SUCCESS;
  }
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_extended_master_secret, &data, &len) == 1) {
    return SSL_CLIENT_HELLO_SUCCESS;
  }
  *alert = SSL_AD_HANDSHAKE_FAILURE;
  return SSL_CLIENT_HELLO_ERROR;
}

// TLS 1.2 suites admitted with min_version "1.2": forward secrecy and AEAD only.
constexpr const char* kTls12CipherList =
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256";
// TLS 1.3 suites a ciphersuites option may name. TLS_AES_128_CCM_8_SHA256 (64-bit tag) and
// the integrity-only suites of newer OpenSSL releases are left out on purpose.
constexpr std::string_view kAllowedTls13Suites[] = {
    "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256",
    "TLS_AES_128_CCM_SHA256"};

// Config text quoted in a message, cut short so a huge value cannot flood a log.
std::string quoted(std::string_view value) {
  constexpr std::size_t kMax = 200;
  if (value.size() > kMax) return "\"" + std::string(value.substr(0, kMax)) + "...\"";
  return "\"" + std::string(value) + "\"";
}

StatusOr<int> parse_min_version(std::string_view min_version) {
  if (min_version == "1.3") return TLS1_3_VERSION;
  if (min_version == "1.2") return TLS1_2_VERSION;
  return invalid_argument("TLS min_version must be \"1.3\" or \"1.2\"; got " + quoted(min_version));
}

Status check_ciphersuites(std::string_view list) {
  std::string_view rest = list;
  while (true) {
    const std::size_t colon = rest.find(':');
    const std::string_view name = rest.substr(0, colon);
    bool allowed = false;
    for (std::string_view ok : kAllowedTls13Suites) allowed = allowed || name == ok;
    if (!allowed) {
      std::string allowed_names;
      for (std::string_view ok : kAllowedTls13Suites) {
        if (!allowed_names.empty()) allowed_names += ", ";
        allowed_names += ok;
      }
      return invalid_argument("TLS ciphersuites " + quoted(list) + ": " +
                              (name.empty() ? std::string("empty entry") : "unknown or not allowed suite " + quoted(name)) +
                              "; allowed (TLS 1.3 AEAD): " + allowed_names);
    }
    if (colon == std::string_view::npos) return ok_status();
    rest = rest.substr(colon + 1);
  }
}

// The settings both sides share: TLS 1.3 (or 1.2 with ECDHE+AEAD), no compression, tickets
// or renegotiation, mutual certificates, and this side's identity.
StatusOr<SslCtxPtr> make_base_context(const KeyAndCertificate& identity, std::string_view min_version,
                                      std::string_view ciphersuites) {
  TESTUDO_ASSIGN_OR_RETURN(const int min_proto, parse_min_version(min_version));
  if (!ciphersuites.empty()) TESTUDO_RETURN_IF_ERROR(check_ciphersuites(ciphersuites));
  if (identity.key_pem.empty() || identity.cert_pem.empty()) {
    return invalid_argument("a TLS identity (private key and certificate) is required");
  }
  TESTUDO_ASSIGN_OR_RETURN(PkeyPtr key, parse_private_key(identity.key_pem));
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert, parse_certificate(identity.cert_pem));

  SslCtxPtr ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) return openssl_error_as(StatusCode::kInternal, "SSL_CTX_new");
  if (SSL_CTX_set_min_proto_version(ctx.get(), min_proto) != 1 ||
      SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot restrict the TLS protocol versions");
  }
  if (SSL_CTX_set_cipher_list(ctx.get(), kTls12CipherList) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot set the TLS 1.2 cipher list");
  }
  if (!ciphersuites.empty()) {
    const std::string list(ciphersuites);
    if (SSL_CTX_set_ciphersuites(ctx.get(), list.c_str()) != 1) {
      return openssl_error_as(StatusCode::kInvalidArgument, "OpenSSL refuses TLS ciphersuites " + quoted(list));
    }
  }
  // SSL_OP_NO_EXTENDED_MASTER_SECRET stays clear: OpenSSL 3 then offers and accepts the
  // extended master secret; the callbacks above require it of a TLS 1.2 peer.
  SSL_CTX_clear_options(ctx.get(), SSL_OP_NO_EXTENDED_MASTER_SECRET);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  // In TLS 1.3, SSL_OP_NO_TICKET alone switches to stateful tickets; send none at all and keep
  // no session cache: connections are long-lived, resumption buys nothing.
  if (SSL_CTX_set_num_tickets(ctx.get(), 0) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot disable session tickets");
  }
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);

  if (SSL_CTX_use_certificate(ctx.get(), cert.get()) != 1) {
    return openssl_error_as(StatusCode::kInvalidArgument, "cannot use the TLS certificate");
  }
  if (SSL_CTX_use_PrivateKey(ctx.get(), key.get()) != 1) {
    return openssl_error_as(StatusCode::kInvalidArgument, "cannot use the TLS private key");
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    return openssl_error_as(StatusCode::kInvalidArgument,
                            "the TLS private key does not match the certificate");
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return ctx;
}

StatusOr<BignumPtr> random_serial() {
  // Random 128-bit serial, positive (top bit clear) and nonzero.
  std::array<std::byte, 16> serial_bytes;
  TESTUDO_RETURN_IF_ERROR(crypto::fill_random(serial_bytes));
  serial_bytes[0] = (serial_bytes[0] & std::byte{0x7f}) | std::byte{0x01};
  BignumPtr serial(BN_bin2bn(reinterpret_cast<const unsigned char*>(serial_bytes.data()),
                             static_cast<int>(serial_bytes.size()), nullptr));
  if (!serial) return openssl_error_as(StatusCode::kInternal, "cannot make a certificate serial");
  return serial;
}

}  // namespace

namespace internal {

namespace {
// See parse_cache.h. Sizes: a process's own identity or two, and the peers it deals with.
ParseCache<X509, X509_up_ref, X509_free>& certificate_cache() {
  static ParseCache<X509, X509_up_ref, X509_free> cache(64);
  return cache;
}
ParseCache<EVP_PKEY, EVP_PKEY_up_ref, EVP_PKEY_free>& private_key_cache() {
  static ParseCache<EVP_PKEY, EVP_PKEY_up_ref, EVP_PKEY_free> cache(8);
  return cache;
}
}  // namespace

StatusOr<X509Ptr> parse_certificate(std::string_view cert_pem) {
  if (cert_pem.size() > kMaxPemBytes) return invalid_argument("certificate PEM is too large");
  const auto key = certificate_cache().key_of(cert_pem);
  if (auto cached = certificate_cache().find(key)) return X509Ptr(cached.release());
  BioPtr bio = mem_bio(cert_pem);
  if (!bio) return openssl_error_as(StatusCode::kInternal, "cannot allocate a memory BIO");
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, no_password, nullptr));
  if (!cert) return openssl_error_as(StatusCode::kInvalidArgument, "cannot parse certificate PEM");
  certificate_cache().keep(key, cert.get());
  return cert;
}

StatusOr<PkeyPtr> parse_private_key(std::string_view key_pem) {
  if (key_pem.size() > kMaxPemBytes) return invalid_argument("private key PEM is too large");
  const auto key_id = private_key_cache().key_of(key_pem);
  if (auto cached = private_key_cache().find(key_id)) return PkeyPtr(cached.release());
  BioPtr bio = mem_bio(key_pem);
  if (!bio) return openssl_error_as(StatusCode::kInternal, "cannot allocate a memory BIO");
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_password, nullptr));
  // The error text names the failing decoder only, never key material.
  if (!key) return openssl_error_as(StatusCode::kInvalidArgument, "cannot parse private key PEM");
  private_key_cache().keep(key_id, key.get());
  return key;
}

StatusOr<std::string> certificate_pem(const X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot encode certificate");
  }
  return bio_contents(bio.get());
}

StatusOr<std::string> private_key_pem(const EVP_PKEY* key) {
  // A secure-memory BIO: its buffer is cleansed when freed.
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot encode private key");
  }
  return bio_contents(bio.get());
}

StatusOr<Asn1TimePtr> asn1_time(std::int64_t unix_seconds) {
  if (unix_seconds < kMinUnixTime || unix_seconds > kMaxUnixTime) {
    return invalid_argument("time " + std::to_string(unix_seconds) + " is outside the years 1950 to 9999");
  }
  Asn1TimePtr t(ASN1_TIME_set(nullptr, static_cast<std::time_t>(unix_seconds)));
  if (!t) return openssl_error_as(StatusCode::kInternal, "ASN1_TIME_set");
  return t;
}

StatusOr<X509Ptr> build_certificate(EVP_PKEY* subject_key, std::string_view subject_cn,
                                    const X509* issuer, EVP_PKEY* issuer_key,
                                    std::int64_t not_before_unix, std::int64_t not_after_unix,
                                    const BIGNUM* serial, CertificateKind kind) {
  // ub_common_name (RFC 5280) is 64 characters.
  if (subject_cn.empty() || subject_cn.size() > 64) {
    return invalid_argument("certificate common name must be 1 to 64 characters");
  }
  if (not_before_unix >= not_after_unix) {
    return invalid_argument("certificate validity must end after it starts");
  }
  if (subject_key == nullptr || issuer_key == nullptr || serial == nullptr ||
      BN_is_negative(serial) || BN_is_zero(serial)) {
    return invalid_argument("a certificate needs keys and a positive serial");
  }
  TESTUDO_ASSIGN_OR_RETURN(Asn1TimePtr not_before, asn1_time(not_before_unix));
  TESTUDO_ASSIGN_OR_RETURN(Asn1TimePtr not_after, asn1_time(not_after_unix));

  X509Ptr cert(X509_new());
  if (!cert) return openssl_error_as(StatusCode::kInternal, "X509_new");
  if (X509_set_version(cert.get(), X509_VERSION_3) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot set certificate version");
  }
  if (BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert.get())) == nullptr) {
    return openssl_error_as(StatusCode::kInternal, "cannot set certificate serial");
  }
  if (X509_set1_notBefore(cert.get(), not_before.get()) != 1 ||
      X509_set1_notAfter(cert.get(), not_after.get()) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot set certificate validity");
  }
  X509NamePtr name(X509_NAME_new());
  if (!name ||
      X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(subject_cn.data()),
                                 static_cast<int>(subject_cn.size()), -1, 0) != 1 ||
      X509_set_subject_name(cert.get(), name.get()) != 1 ||
      X509_set_issuer_name(cert.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name.get()) != 1) {
    return openssl_error_as(StatusCode::kInvalidArgument, "cannot set certificate name");
  }
  if (X509_set_pubkey(cert.get(), subject_key) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot set certificate public key");
  }
  X509* signer = issuer != nullptr ? const_cast<X509*>(issuer) : cert.get();  // read only
  X509* c = cert.get();
  if (kind == CertificateKind::kCa) {
    TESTUDO_RETURN_IF_ERROR(add_extension(c, signer, NID_basic_constraints, "critical,CA:TRUE"));
    TESTUDO_RETURN_IF_ERROR(add_extension(c, signer, NID_key_usage, "critical,keyCertSign,cRLSign"));
  } else {
    TESTUDO_RETURN_IF_ERROR(add_extension(c, signer, NID_basic_constraints, "critical,CA:FALSE"));
    TESTUDO_RETURN_IF_ERROR(add_extension(c, signer, NID_key_usage, "critical,digitalSignature"));
    TESTUDO_RETURN_IF_ERROR(add_extension(c, signer, NID_ext_key_usage, "serverAuth,clientAuth"));
  }
  TESTUDO_RETURN_IF_ERROR(add_extension(c, signer, NID_subject_key_identifier, "hash"));
  if (issuer != nullptr) {
    TESTUDO_RETURN_IF_ERROR(add_extension(c, signer, NID_authority_key_identifier, "keyid:always"));
  }
  if (X509_sign(c, issuer_key, EVP_sha256()) <= 0) {
    return openssl_error_as(StatusCode::kInternal, "cannot sign certificate");
  }
  return cert;
}

}  // namespace internal

Status openssl_error(std::string_view context) {
  return openssl_error_as(StatusCode::kInternal, context);
}

StatusOr<KeyAndCertificate> generate_self_signed(std::string_view common_name, int valid_days) {
  if (valid_days <= 0 || valid_days > 100 * 366) {
    return invalid_argument("certificate validity must be 1 to 36600 days, got " +
                            std::to_string(valid_days));
  }
  const std::int64_t now = static_cast<std::int64_t>(std::time(nullptr));
  return generate_self_signed_for_period(common_name, now - 3600,
                                         now + static_cast<std::int64_t>(valid_days) * 86400);
}

StatusOr<KeyAndCertificate> generate_self_signed_for_period(std::string_view common_name,
                                                            std::int64_t not_before_unix,
                                                            std::int64_t not_after_unix) {
  if (common_name.empty() || common_name.size() > 64) {
    return invalid_argument("certificate common name must be 1 to 64 characters");
  }
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return openssl_error_as(StatusCode::kInternal, "cannot generate a P-256 key");
  TESTUDO_ASSIGN_OR_RETURN(BignumPtr serial, random_serial());
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert,
                           build_certificate(key.get(), common_name, nullptr, key.get(), not_before_unix,
                                             not_after_unix, serial.get(), CertificateKind::kEndEntity));
  KeyAndCertificate out;
  TESTUDO_ASSIGN_OR_RETURN(out.key_pem, private_key_pem(key.get()));
  TESTUDO_ASSIGN_OR_RETURN(out.cert_pem, certificate_pem(cert.get()));
  return out;
}

StatusOr<std::string> fingerprint_of_pem(std::string_view cert_pem) {
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert, parse_certificate(cert_pem));
  return fingerprint_of(cert.get());
}

StatusOr<std::string> key_fingerprint_of_pem(std::string_view pem) {
  const std::string_view label = first_pem_label(pem);
  if (label == "CERTIFICATE") {
    TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert, parse_certificate(pem));
    return key_fingerprint_of(X509_get0_pubkey(cert.get()));
  }
  if (label == "PUBLIC KEY") {
    BioPtr bio = mem_bio(pem);
    if (!bio) return invalid_argument("public key PEM is too large");
    PkeyPtr key(PEM_read_bio_PUBKEY(bio.get(), nullptr, no_password, nullptr));
    if (!key) return openssl_error_as(StatusCode::kInvalidArgument, "cannot parse public key PEM");
    return key_fingerprint_of(key.get());
  }
  return invalid_argument("expected a \"CERTIFICATE\" or \"PUBLIC KEY\" PEM");
}

StatusOr<std::string> public_key_pem_of_certificate(std::string_view cert_pem) {
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert, parse_certificate(cert_pem));
  const EVP_PKEY* key = X509_get0_pubkey(cert.get());
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (key == nullptr || !bio || PEM_write_bio_PUBKEY(bio.get(), key) != 1) {
    return openssl_error_as(StatusCode::kInvalidArgument, "cannot encode the certificate's public key");
  }
  return bio_contents(bio.get());
}

StatusOr<CertificateFacts> certificate_facts_of_pem(std::string_view cert_pem) {
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert, parse_certificate(cert_pem));
  return facts_of(cert.get());
}

Status check_validity_period(const CertificateFacts& facts, std::int64_t now_unix) {
  if (now_unix < facts.not_before) {
    return permission_denied("certificate not valid until " + format_utc(facts.not_before));
  }
  if (now_unix > facts.not_after) {
    return permission_denied("certificate expired at " + format_utc(facts.not_after));
  }
  return ok_status();
}

Status check_key_matches_certificate(const KeyAndCertificate& kc) {
  TESTUDO_ASSIGN_OR_RETURN(PkeyPtr key, parse_private_key(kc.key_pem));
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert, parse_certificate(kc.cert_pem));
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return openssl_error_as(StatusCode::kInvalidArgument,
                            "the private key does not match the certificate");
  }
  return ok_status();
}

StatusOr<std::string> sign_sha256(std::string_view key_pem, std::string_view data) {
  TESTUDO_ASSIGN_OR_RETURN(PkeyPtr key, parse_private_key(key_pem));
  std::unique_ptr<EVP_MD_CTX, Deleter<EVP_MD_CTX_free>> ctx(EVP_MD_CTX_new());
  std::size_t size = 0;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &size, reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot sign");
  }
  std::string signature(size, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(signature.data()), &size,
                     reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot sign");
  }
  signature.resize(size);
  return signature;
}

StatusOr<std::vector<std::byte>> private_key_der(std::string_view key_pem) {
  TESTUDO_ASSIGN_OR_RETURN(PkeyPtr key, parse_private_key(key_pem));
  unsigned char* der = nullptr;
  const int size = i2d_PrivateKey(key.get(), &der);  // PKCS#8 PrivateKeyInfo for EC keys in OpenSSL 3
  if (size <= 0 || der == nullptr) return openssl_error_as(StatusCode::kInternal, "cannot encode the private key");
  std::vector<std::byte> out(reinterpret_cast<std::byte*>(der), reinterpret_cast<std::byte*>(der) + size);
  OPENSSL_clear_free(der, static_cast<std::size_t>(size));
  return out;
}

Status verify_signature_sha256(std::string_view cert_pem, std::string_view data, std::string_view signature) {
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert, parse_certificate(cert_pem));
  EVP_PKEY* key = X509_get0_pubkey(cert.get());
  std::unique_ptr<EVP_MD_CTX, Deleter<EVP_MD_CTX_free>> ctx(EVP_MD_CTX_new());
  if (key == nullptr || !ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot verify a signature");
  }
  const int ok = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                                  reinterpret_cast<const unsigned char*>(data.data()), data.size());
  ERR_clear_error();  // a malformed signature leaves DER errors behind
  if (ok != 1) return permission_denied("the signature does not verify with the certificate's key");
  return ok_status();
}

bool is_encrypted_private_key_pem(std::string_view pem) {
  const std::string_view label = first_pem_label(pem);
  if (label == "ENCRYPTED PRIVATE KEY") return true;
  // Traditional ("BEGIN EC PRIVATE KEY") PEM encryption puts a Proc-Type header in the block.
  return label.ends_with("PRIVATE KEY") && pem.find("Proc-Type: 4,ENCRYPTED") != std::string_view::npos;
}

StatusOr<std::string> encrypt_private_key_pem(std::string_view key_pem, std::string_view passphrase) {
  if (passphrase.empty()) return invalid_argument("a passphrase is required to encrypt the private key");
  if (passphrase.size() > kMaxPassphraseBytes) {
    return invalid_argument("the passphrase is longer than " + std::to_string(kMaxPassphraseBytes) + " bytes");
  }
  if (is_encrypted_private_key_pem(key_pem)) return invalid_argument("the private key is already encrypted");
  TESTUDO_ASSIGN_OR_RETURN(PkeyPtr key, parse_private_key(key_pem));
  P8InfoPtr p8inf(EVP_PKEY2PKCS8(key.get()));
  if (!p8inf) return openssl_error_as(StatusCode::kInternal, "cannot convert the private key to PKCS#8");
  AlgorPtr pbe(PKCS5_pbe2_set_iv(EVP_aes_256_cbc(), kPbkdf2Iterations, nullptr, kPbkdf2SaltBytes,
                                 nullptr, NID_hmacWithSHA256));
  if (!pbe) return openssl_error_as(StatusCode::kInternal, "cannot set up PBKDF2 parameters");
  X509SigPtr encrypted(PKCS8_set0_pbe(passphrase.data(), static_cast<int>(passphrase.size()), p8inf.get(),
                                      pbe.get()));
  if (!encrypted) return openssl_error_as(StatusCode::kInternal, "cannot encrypt the private key");
  (void)pbe.release();  // now owned by `encrypted`
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PKCS8(bio.get(), encrypted.get()) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot encode the encrypted private key");
  }
  return bio_contents(bio.get());
}

StatusOr<std::string> decrypt_private_key_pem(std::string_view pem, std::string_view passphrase) {
  if (!is_encrypted_private_key_pem(pem)) return std::string(pem);
  if (pem.size() > kMaxPemBytes) return invalid_argument("private key PEM is too large");
  if (passphrase.empty()) return invalid_argument("the private key is encrypted; a passphrase is required");
  if (passphrase.size() > kMaxPassphraseBytes) {
    return invalid_argument("the passphrase is longer than " + std::to_string(kMaxPassphraseBytes) + " bytes");
  }
  // The structure first, so that a damaged file is not reported as a wrong passphrase.
  {
    BioPtr bio = mem_bio(pem);
    if (!bio) return openssl_error_as(StatusCode::kInternal, "cannot allocate a memory BIO");
    if (first_pem_label(pem) == "ENCRYPTED PRIVATE KEY") {
      X509SigPtr sig(PEM_read_bio_PKCS8(bio.get(), nullptr, no_password, nullptr));
      if (!sig) return openssl_error_as(StatusCode::kInvalidArgument, "cannot parse encrypted private key PEM");
    } else {
      char* name = nullptr;
      char* header = nullptr;
      unsigned char* data = nullptr;
      long len = 0;
      const int ok = PEM_read_bio(bio.get(), &name, &header, &data, &len);
      OPENSSL_free(name);
      OPENSSL_free(header);
      OPENSSL_clear_free(data, len > 0 ? static_cast<std::size_t>(len) : 0);
      if (ok != 1) return openssl_error_as(StatusCode::kInvalidArgument, "cannot parse encrypted private key PEM");
    }
  }
  BioPtr bio = mem_bio(pem);
  if (!bio) return openssl_error_as(StatusCode::kInternal, "cannot allocate a memory BIO");
  std::string_view pass = passphrase;
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, passphrase_callback, &pass));
  if (!key) {
    ERR_clear_error();  // says "bad decrypt" at best; the message below says it plainly
    return permission_denied("wrong passphrase for the private key");
  }
  return private_key_pem(key.get());
}

StatusOr<KeyAndCertificate> load_key_and_certificate(const std::string& key_file,
                                                     const std::string& cert_file,
                                                     std::optional<std::string> passphrase) {
  TESTUDO_ASSIGN_OR_RETURN(std::string key_pem, crypto::read_private_file(key_file, "private key"));
  TESTUDO_ASSIGN_OR_RETURN(std::string cert_pem, read_public_file(cert_file, "certificate"));
  if (is_encrypted_private_key_pem(key_pem)) {
    if (!passphrase.has_value() || passphrase->empty()) {
      return invalid_argument("private key " + key_file + " is encrypted; a passphrase is required");
    }
    auto decrypted = decrypt_private_key_pem(key_pem, *passphrase);
    if (!decrypted.ok()) return decrypted.status().with_context("private key " + key_file);
    key_pem = std::move(decrypted).value();
  }
  KeyAndCertificate kc{std::move(key_pem), std::move(cert_pem)};
  auto key = parse_private_key(kc.key_pem);
  if (!key.ok()) return key.status().with_context("private key " + key_file);
  auto cert = parse_certificate(kc.cert_pem);
  if (!cert.ok()) return cert.status().with_context("certificate " + cert_file);
  TESTUDO_RETURN_IF_ERROR(
      check_key_matches_certificate(kc).with_context("private key " + key_file + " and certificate " + cert_file));
  return kc;
}

namespace internal {

StatusOr<SslCtxPtr> make_server_context(const ServerOptions& options) {
  TESTUDO_ASSIGN_OR_RETURN(SslCtxPtr ctx, make_base_context(options.identity, options.min_version,
                                                            options.ciphersuites));
  SSL_CTX_set_cert_verify_callback(ctx.get(), accept_any_client_certificate, nullptr);
  if (SSL_CTX_get_min_proto_version(ctx.get()) < TLS1_3_VERSION) {
    SSL_CTX_set_client_hello_cb(ctx.get(), require_extended_master_secret, nullptr);
  }
  return ctx;
}

StatusOr<SslCtxPtr> make_client_context(const ClientOptions& options) {
  TESTUDO_ASSIGN_OR_RETURN(crypto::Digest pin, parse_fingerprint(options.pinned_fingerprint));
  TESTUDO_ASSIGN_OR_RETURN(SslCtxPtr ctx, make_base_context(options.identity, options.min_version,
                                                            options.ciphersuites));
  const int index = pin_index();
  if (index < 0) return openssl_error_as(StatusCode::kInternal, "SSL_CTX_get_ex_new_index");
  auto owned = std::make_unique<crypto::Digest>(pin);
  if (SSL_CTX_set_ex_data(ctx.get(), index, owned.get()) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot attach the pinned fingerprint");
  }
  crypto::Digest* stored = owned.release();  // now freed by free_pin in SSL_CTX_free
  SSL_CTX_set_cert_verify_callback(ctx.get(), verify_pinned_server, stored);
  if (SSL_CTX_get_min_proto_version(ctx.get()) < TLS1_3_VERSION) {
    if (ems_index() < 0) return openssl_error_as(StatusCode::kInternal, "SSL_get_ex_new_index");
    SSL_CTX_set_msg_callback(ctx.get(), note_server_ems);
  }
  return ctx;
}

StatusOr<std::array<std::byte, 32>> export_keying_material(SSL* ssl, std::string_view label,
                                                           std::string_view context) {
  if (ssl == nullptr) return invalid_argument("export_keying_material: no TLS session");
  if (SSL_is_init_finished(ssl) != 1) {
    return failed_precondition("export_keying_material: the TLS handshake is not finished");
  }
  static const char kEmpty[] = "";
  std::array<std::byte, 32> out;
  if (SSL_export_keying_material(ssl, reinterpret_cast<unsigned char*>(out.data()), out.size(),
                                 label.empty() ? kEmpty : label.data(), label.size(),
                                 reinterpret_cast<const unsigned char*>(
                                     context.empty() ? kEmpty : context.data()),
                                 context.size(), /*use_context=*/1) != 1) {
    return openssl_error_as(StatusCode::kInternal, "SSL_export_keying_material");
  }
  return out;
}

StatusOr<std::string> peer_fingerprint(SSL* ssl) {
  if (ssl == nullptr) return invalid_argument("peer_fingerprint: no TLS session");
  const X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return failed_precondition("the TLS peer presented no certificate");
  return fingerprint_of(cert);
}

StatusOr<CertificateFacts> peer_certificate_facts(SSL* ssl) {
  if (ssl == nullptr) return invalid_argument("peer_certificate_facts: no TLS session");
  const X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return failed_precondition("the TLS peer presented no certificate");
  return facts_of(cert);
}

StatusOr<std::vector<std::string>> peer_certificate_chain_pem(SSL* ssl) {
  if (ssl == nullptr) return invalid_argument("peer_certificate_chain_pem: no TLS session");
  const X509* leaf = SSL_get0_peer_certificate(ssl);
  if (leaf == nullptr) return failed_precondition("the TLS peer presented no certificate");
  std::vector<std::string> out;
  TESTUDO_ASSIGN_OR_RETURN(std::string leaf_pem, certificate_pem(leaf));
  out.push_back(std::move(leaf_pem));
  // Server side: the chain lacks the leaf; client side: it starts with it.
  STACK_OF(X509)* chain = SSL_get_peer_cert_chain(ssl);
  const int n = chain == nullptr ? 0 : sk_X509_num(chain);
  for (int i = 0; i < n; ++i) {
    const X509* cert = sk_X509_value(chain, i);
    if (cert == nullptr || (i == 0 && X509_cmp(cert, leaf) == 0)) continue;
    TESTUDO_ASSIGN_OR_RETURN(std::string pem, certificate_pem(cert));
    out.push_back(std::move(pem));
  }
  return out;
}

}  // namespace internal

// ---- ChainVerifier ----

struct ChainVerifier::Impl {
  StorePtr store;
  std::string crl_file;                        // empty: no revocation check
  std::optional<std::int64_t> crl_next_update; // of the first CRL, for "CRL expired at"
};

ChainVerifier::ChainVerifier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChainVerifier::ChainVerifier(ChainVerifier&&) noexcept = default;
ChainVerifier& ChainVerifier::operator=(ChainVerifier&&) noexcept = default;
ChainVerifier::~ChainVerifier() = default;

namespace {

// Every PEM object of one kind in `text`; at least one, else an error naming `what`.
template <typename T, typename Ptr, T* (*Read)(BIO*, T**, pem_password_cb*, void*)>
StatusOr<std::vector<Ptr>> read_all_pem(std::string_view text, const std::string& what) {
  BioPtr bio = mem_bio(text);
  if (!bio) return invalid_argument(what + " is too large");
  std::vector<Ptr> out;
  ERR_clear_error();
  while (true) {
    T* item = Read(bio.get(), nullptr, no_password, nullptr);
    if (item != nullptr) {
      out.emplace_back(item);
      continue;
    }
    const unsigned long err = ERR_peek_last_error();
    if (!out.empty() && ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
      ERR_clear_error();  // the end of the file
      return out;
    }
    return openssl_error_as(StatusCode::kInvalidArgument,
                            what + (out.empty() ? ": no PEM object of the expected kind found"
                                                : ": cannot parse PEM object " + std::to_string(out.size() + 1)));
  }
}

}  // namespace

StatusOr<ChainVerifier> ChainVerifier::load(const std::string& ca_file, const std::string& crl_file) {
  const std::string ca_what = "CA file " + ca_file;
  TESTUDO_ASSIGN_OR_RETURN(std::string ca_text, read_public_file(ca_file, "CA file"));
  TESTUDO_ASSIGN_OR_RETURN(auto cas, (read_all_pem<X509, X509Ptr, PEM_read_bio_X509>(ca_text, ca_what)));
  auto impl = std::make_unique<Impl>();
  impl->store.reset(X509_STORE_new());
  if (!impl->store) return openssl_error_as(StatusCode::kInternal, "X509_STORE_new");
  for (const X509Ptr& ca : cas) {
    if (X509_check_ca(ca.get()) == 0) {
      return invalid_argument(ca_what + ": certificate CN=" + common_name_of(X509_get_subject_name(ca.get())) +
                              " is not a CA certificate (basicConstraints CA:TRUE is missing)");
    }
    if (X509_STORE_add_cert(impl->store.get(), ca.get()) != 1) {
      return openssl_error_as(StatusCode::kInvalidArgument, ca_what + ": cannot add a CA certificate");
    }
  }
  if (!crl_file.empty()) {
    const std::string crl_what = "CRL file " + crl_file;
    TESTUDO_ASSIGN_OR_RETURN(std::string crl_text, read_public_file(crl_file, "CRL file"));
    TESTUDO_ASSIGN_OR_RETURN(auto crls,
                             (read_all_pem<X509_CRL, X509CrlPtr, PEM_read_bio_X509_CRL>(crl_text, crl_what)));
    for (const X509CrlPtr& crl : crls) {
      bool signed_by_ca = false;
      for (const X509Ptr& ca : cas) {
        if (X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), X509_get_subject_name(ca.get())) == 0 &&
            X509_CRL_verify(crl.get(), X509_get0_pubkey(ca.get())) == 1) {
          signed_by_ca = true;
          break;
        }
      }
      ERR_clear_error();
      if (!signed_by_ca) return invalid_argument(crl_what + ": a CRL is not signed by a CA in " + ca_file);
      if (X509_STORE_add_crl(impl->store.get(), crl.get()) != 1) {
        return openssl_error_as(StatusCode::kInvalidArgument, crl_what + ": cannot add the CRL");
      }
      if (!impl->crl_next_update.has_value() && X509_CRL_get0_nextUpdate(crl.get()) != nullptr) {
        auto next = unix_time_of(X509_CRL_get0_nextUpdate(crl.get()));
        if (next.ok()) impl->crl_next_update = *next;
      }
    }
    impl->crl_file = crl_file;
    X509_STORE_set_flags(impl->store.get(), X509_V_FLAG_CRL_CHECK);
  }
  return ChainVerifier(std::move(impl));
}

Status ChainVerifier::verify(const std::vector<std::string>& chain_pem_leaf_first, std::int64_t now_unix) const {
  if (chain_pem_leaf_first.empty()) return permission_denied("no certificate presented");
  std::vector<X509Ptr> certs;
  for (std::size_t i = 0; i < chain_pem_leaf_first.size(); ++i) {
    auto cert = parse_certificate(chain_pem_leaf_first[i]);
    if (!cert.ok()) {
      return permission_denied("certificate " + std::to_string(i) + " of the chain does not parse: " +
                               cert.status().message());
    }
    certs.push_back(std::move(cert).value());
  }
  struct StackDeleter {
    void operator()(STACK_OF(X509) * stack) const { sk_X509_free(stack); }  // not the certificates
  };
  using StackPtr = std::unique_ptr<STACK_OF(X509), StackDeleter>;
  StackPtr untrusted(sk_X509_new_null());  // borrows the certificates in `certs`
  if (!untrusted) return openssl_error_as(StatusCode::kInternal, "sk_X509_new_null");
  for (std::size_t i = 1; i < certs.size(); ++i) {
    if (sk_X509_push(untrusted.get(), certs[i].get()) <= 0) {
      return openssl_error_as(StatusCode::kInternal, "sk_X509_push");
    }
  }
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), impl_->store.get(), certs[0].get(), untrusted.get()) != 1 ||
      X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot set up certificate verification");
  }
  X509_STORE_CTX_set_time(ctx.get(), 0, static_cast<std::time_t>(now_unix));
  if (X509_verify_cert(ctx.get()) == 1) return ok_status();

  const int err = X509_STORE_CTX_get_error(ctx.get());
  const int depth = X509_STORE_CTX_get_error_depth(ctx.get());
  const X509* current = X509_STORE_CTX_get_current_cert(ctx.get());
  ERR_clear_error();
  const std::string detail = X509_verify_cert_error_string(err);
  const std::string which = depth > 0 ? "CA certificate" : "certificate";
  auto time_of = [](const ASN1_TIME* t) {
    auto v = unix_time_of(t);
    ERR_clear_error();
    return v.ok() ? format_utc(*v) : std::string("(unreadable time)");
  };
  switch (err) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
      return permission_denied("certificate is not signed by the configured CA: " + detail);
    case X509_V_ERR_CERT_REVOKED: {
      std::string serial = "?";
      if (current != nullptr) {
        auto hex = serial_hex_of(current);
        if (hex.ok()) serial = *hex;
      }
      ERR_clear_error();
      return permission_denied(which + " has been revoked (serial " + serial + ")");
    }
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return permission_denied(which + " expired at " +
                               (current != nullptr ? time_of(X509_get0_notAfter(current)) : std::string("?")));
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return permission_denied(which + " not valid until " +
                               (current != nullptr ? time_of(X509_get0_notBefore(current)) : std::string("?")));
    case X509_V_ERR_CRL_HAS_EXPIRED:
      return permission_denied("CRL expired" +
                               (impl_->crl_next_update ? " at " + format_utc(*impl_->crl_next_update) : std::string()) +
                               "; publish a fresh CRL to " + impl_->crl_file);
    case X509_V_ERR_CRL_NOT_YET_VALID:
      return permission_denied("CRL not yet valid (" + impl_->crl_file + ")");
    case X509_V_ERR_UNABLE_TO_GET_CRL:
      return permission_denied("no CRL from the certificate's issuer in " + impl_->crl_file);
    case X509_V_ERR_INVALID_PURPOSE:
      return permission_denied(which + " is not valid for TLS client authentication: " + detail);
    default:
      return permission_denied(which + " verification failed: " + detail);
  }
}

}  // namespace testudo::tls
