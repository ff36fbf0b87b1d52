#include "tls/tls.h"

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <climits>
#include <cstring>

#include "crypto/crypto.h"

namespace testudo::tls {

void SslCtxDeleter::operator()(ssl_ctx_st* ctx) const { SSL_CTX_free(ctx); }

namespace {

template <auto Free>
struct Deleter {
  template <typename T>
  void operator()(T* p) const {
    Free(p);
  }
};
using BioPtr = std::unique_ptr<BIO, Deleter<BIO_free_all>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, Deleter<X509_NAME_free>>;
using X509ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION_free>>;
using BignumPtr = std::unique_ptr<BIGNUM, Deleter<BN_free>>;

constexpr std::string_view kFingerprintPrefix = "sha256:";
constexpr std::size_t kDigestSize = 32;
constexpr std::size_t kMaxPemBytes = 1 << 20;

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

// A read-only memory BIO over `pem`; null if it is too large for OpenSSL's int lengths.
BioPtr mem_bio(std::string_view pem) {
  if (pem.size() > kMaxPemBytes) return nullptr;
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

StatusOr<X509Ptr> parse_certificate(std::string_view cert_pem) {
  if (cert_pem.size() > kMaxPemBytes) return invalid_argument("certificate PEM is too large");
  BioPtr bio = mem_bio(cert_pem);
  if (!bio) return openssl_error_as(StatusCode::kInternal, "cannot allocate a memory BIO");
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return openssl_error_as(StatusCode::kInvalidArgument, "cannot parse certificate PEM");
  return cert;
}

// Never prompts for a passphrase: an encrypted key without one fails to parse.
int no_password(char*, int, int, void*) { return -1; }

StatusOr<PkeyPtr> parse_private_key(std::string_view key_pem) {
  if (key_pem.size() > kMaxPemBytes) return invalid_argument("private key PEM is too large");
  BioPtr bio = mem_bio(key_pem);
  if (!bio) return openssl_error_as(StatusCode::kInternal, "cannot allocate a memory BIO");
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_password, nullptr));
  // The error text names the failing decoder only, never key material.
  if (!key) return openssl_error_as(StatusCode::kInvalidArgument, "cannot parse private key PEM");
  return key;
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

StatusOr<std::string> bio_contents(BIO* bio) {
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  if (len < 0 || (len > 0 && data == nullptr)) {
    return openssl_error_as(StatusCode::kInternal, "cannot read memory BIO");
  }
  return std::string(data, static_cast<std::size_t>(len));
}

Status add_extension(X509* cert, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return openssl_error_as(StatusCode::kInternal, std::string("cannot add extension ") + OBJ_nid2sn(nid));
  }
  return ok_status();
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

// Client side: replaces chain verification by comparing the server's leaf certificate with
// the pinned SHA-256 fingerprint. A mismatch fails the handshake inside OpenSSL, before the
// client sends its Finished or any application data (THREATS.md T3).
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
  X509_STORE_CTX_set_error(store, X509_V_OK);
  return 1;
}

// Server side: any certificate the client presents is accepted here, because this is not
// where identity is decided. TLS has already checked that the client holds the certificate's
// private key (CertificateVerify); who the peer is, and what it may do, is decided after the
// handshake by the capability proof over the TLS exporter and by identities (DESIGN.md,
// auth/). A missing certificate never reaches this callback: SSL_VERIFY_FAIL_IF_NO_PEER_CERT
// refuses it first; the null check is belt and braces.
int accept_any_client_certificate(X509_STORE_CTX* store, void*) {
  if (X509_STORE_CTX_get0_cert(store) == nullptr) {
    X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);
    return 0;
  }
  X509_STORE_CTX_set_error(store, X509_V_OK);
  return 1;
}

// The settings both sides share: TLS 1.3 only, no compression/tickets/renegotiation,
// mutual certificates, and this side's identity.
StatusOr<SslCtxPtr> make_base_context(const KeyAndCertificate& identity) {
  if (identity.key_pem.empty() || identity.cert_pem.empty()) {
    return invalid_argument("a TLS identity (private key and certificate) is required");
  }
  TESTUDO_ASSIGN_OR_RETURN(PkeyPtr key, parse_private_key(identity.key_pem));
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert, parse_certificate(identity.cert_pem));

  SslCtxPtr ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) return openssl_error_as(StatusCode::kInternal, "SSL_CTX_new");
  if (SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot restrict the context to TLS 1.3");
  }
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

}  // namespace

Status openssl_error(std::string_view context) {
  return openssl_error_as(StatusCode::kInternal, context);
}

StatusOr<KeyAndCertificate> generate_self_signed(std::string_view common_name, int valid_days) {
  // ub_common_name (RFC 5280) is 64 characters.
  if (common_name.empty() || common_name.size() > 64) {
    return invalid_argument("certificate common name must be 1 to 64 characters");
  }
  if (valid_days <= 0 || valid_days > 100 * 366) {
    return invalid_argument("certificate validity must be 1 to 36600 days, got " +
                            std::to_string(valid_days));
  }

  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return openssl_error_as(StatusCode::kInternal, "cannot generate a P-256 key");

  X509Ptr cert(X509_new());
  if (!cert) return openssl_error_as(StatusCode::kInternal, "X509_new");
  if (X509_set_version(cert.get(), X509_VERSION_3) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot set certificate version");
  }

  // Random 128-bit serial, positive (top bit clear) and nonzero.
  std::array<std::byte, 16> serial_bytes;
  TESTUDO_RETURN_IF_ERROR(crypto::fill_random(serial_bytes));
  serial_bytes[0] = (serial_bytes[0] & std::byte{0x7f}) | std::byte{0x01};
  BignumPtr serial(BN_bin2bn(reinterpret_cast<const unsigned char*>(serial_bytes.data()),
                             static_cast<int>(serial_bytes.size()), nullptr));
  if (!serial || BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return openssl_error_as(StatusCode::kInternal, "cannot set certificate serial");
  }

  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(cert.get()), valid_days, 0, nullptr) == nullptr) {
    return openssl_error_as(StatusCode::kInternal, "cannot set certificate validity");
  }

  X509NamePtr name(X509_NAME_new());
  if (!name ||
      X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name.data()),
                                 static_cast<int>(common_name.size()), -1, 0) != 1 ||
      X509_set_subject_name(cert.get(), name.get()) != 1 ||
      X509_set_issuer_name(cert.get(), name.get()) != 1) {
    return openssl_error_as(StatusCode::kInvalidArgument, "cannot set certificate name");
  }
  if (X509_set_pubkey(cert.get(), key.get()) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot set certificate public key");
  }
  TESTUDO_RETURN_IF_ERROR(add_extension(cert.get(), NID_basic_constraints, "critical,CA:FALSE"));
  TESTUDO_RETURN_IF_ERROR(add_extension(cert.get(), NID_key_usage, "critical,digitalSignature"));
  TESTUDO_RETURN_IF_ERROR(add_extension(cert.get(), NID_ext_key_usage, "serverAuth,clientAuth"));
  TESTUDO_RETURN_IF_ERROR(add_extension(cert.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) {
    return openssl_error_as(StatusCode::kInternal, "cannot sign certificate");
  }

  KeyAndCertificate out;
  {
    // A secure-memory BIO: its buffer is cleansed when freed.
    BioPtr bio(BIO_new(BIO_s_secmem()));
    if (!bio || PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr,
                                         nullptr) != 1) {
      return openssl_error_as(StatusCode::kInternal, "cannot encode private key");
    }
    TESTUDO_ASSIGN_OR_RETURN(out.key_pem, bio_contents(bio.get()));
  }
  {
    BioPtr bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_X509(bio.get(), cert.get()) != 1) {
      return openssl_error_as(StatusCode::kInternal, "cannot encode certificate");
    }
    TESTUDO_ASSIGN_OR_RETURN(out.cert_pem, bio_contents(bio.get()));
  }
  return out;
}

StatusOr<std::string> fingerprint_of_pem(std::string_view cert_pem) {
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert, parse_certificate(cert_pem));
  return fingerprint_of(cert.get());
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

StatusOr<SslCtxPtr> make_server_context(const ServerOptions& options) {
  TESTUDO_ASSIGN_OR_RETURN(SslCtxPtr ctx, make_base_context(options.identity));
  SSL_CTX_set_cert_verify_callback(ctx.get(), accept_any_client_certificate, nullptr);
  return ctx;
}

StatusOr<SslCtxPtr> make_client_context(const ClientOptions& options) {
  TESTUDO_ASSIGN_OR_RETURN(crypto::Digest pin, parse_fingerprint(options.pinned_fingerprint));
  TESTUDO_ASSIGN_OR_RETURN(SslCtxPtr ctx, make_base_context(options.identity));
  const int index = pin_index();
  if (index < 0) return openssl_error_as(StatusCode::kInternal, "SSL_CTX_get_ex_new_index");
  auto owned = std::make_unique<crypto::Digest>(pin);
  if (SSL_CTX_set_ex_data(ctx.get(), index, owned.get()) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot attach the pinned fingerprint");
  }
  crypto::Digest* stored = owned.release();  // now freed by free_pin in SSL_CTX_free
  SSL_CTX_set_cert_verify_callback(ctx.get(), verify_pinned_server, stored);
  return ctx;
}

StatusOr<std::array<std::byte, 32>> export_keying_material(ssl_st* ssl, std::string_view label,
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

StatusOr<std::string> peer_fingerprint(ssl_st* ssl) {
  if (ssl == nullptr) return invalid_argument("peer_fingerprint: no TLS session");
  const X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return failed_precondition("the TLS peer presented no certificate");
  return fingerprint_of(cert);
}

}  // namespace testudo::tls
