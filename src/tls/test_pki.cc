#include "tls/test_pki.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ctime>

#include "tls/tls_internal.h"

namespace testudo::tls::testing {
namespace {

using namespace internal;  // NOLINT: the OpenSSL helpers of this folder

using RevokedPtr = std::unique_ptr<X509_REVOKED, Deleter<X509_REVOKED_free>>;

StatusOr<BignumPtr> serial_bn(std::uint64_t serial) {
  if (serial == 0) return invalid_argument("a certificate serial must be nonzero");
  unsigned char bytes[8];
  for (int i = 7; i >= 0; --i) {
    bytes[i] = static_cast<unsigned char>(serial & 0xff);
    serial >>= 8;
  }
  BignumPtr bn(BN_bin2bn(bytes, sizeof bytes, nullptr));
  if (!bn) return openssl_error_as(StatusCode::kInternal, "BN_bin2bn");
  return bn;
}

}  // namespace

StatusOr<TestCa> make_ca(std::string_view cn) {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return openssl_error_as(StatusCode::kInternal, "cannot generate a P-256 key");
  const std::int64_t now = static_cast<std::int64_t>(std::time(nullptr));
  TESTUDO_ASSIGN_OR_RETURN(BignumPtr serial, serial_bn(1));
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert, build_certificate(key.get(), cn, nullptr, key.get(), now - 3600,
                                                           now + 10LL * 366 * 86400, serial.get(),
                                                           CertificateKind::kCa));
  TestCa ca;
  TESTUDO_ASSIGN_OR_RETURN(ca.root.key_pem, private_key_pem(key.get()));
  TESTUDO_ASSIGN_OR_RETURN(ca.root.cert_pem, certificate_pem(cert.get()));
  return ca;
}

StatusOr<KeyAndCertificate> issue_for_key(const TestCa& ca, std::string_view key_pem, std::string_view cn,
                                          std::int64_t not_before_unix, std::int64_t not_after_unix,
                                          std::uint64_t serial) {
  TESTUDO_ASSIGN_OR_RETURN(PkeyPtr ca_key, parse_private_key(ca.root.key_pem));
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr ca_cert, parse_certificate(ca.root.cert_pem));
  TESTUDO_ASSIGN_OR_RETURN(PkeyPtr key, parse_private_key(key_pem));
  TESTUDO_ASSIGN_OR_RETURN(BignumPtr bn, serial_bn(serial));
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr cert, build_certificate(key.get(), cn, ca_cert.get(), ca_key.get(),
                                                           not_before_unix, not_after_unix, bn.get(),
                                                           CertificateKind::kEndEntity));
  KeyAndCertificate out;
  out.key_pem = std::string(key_pem);
  TESTUDO_ASSIGN_OR_RETURN(out.cert_pem, certificate_pem(cert.get()));
  return out;
}

StatusOr<KeyAndCertificate> issue(const TestCa& ca, std::string_view cn, std::int64_t not_before_unix,
                                  std::int64_t not_after_unix, std::uint64_t serial) {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return openssl_error_as(StatusCode::kInternal, "cannot generate a P-256 key");
  TESTUDO_ASSIGN_OR_RETURN(std::string key_pem, private_key_pem(key.get()));
  return issue_for_key(ca, key_pem, cn, not_before_unix, not_after_unix, serial);
}

StatusOr<std::string> make_crl(const TestCa& ca, const std::vector<std::uint64_t>& revoked_serials,
                               std::int64_t this_update_unix, std::int64_t next_update_unix) {
  if (this_update_unix >= next_update_unix) return invalid_argument("a CRL's nextUpdate must follow thisUpdate");
  TESTUDO_ASSIGN_OR_RETURN(PkeyPtr ca_key, parse_private_key(ca.root.key_pem));
  TESTUDO_ASSIGN_OR_RETURN(X509Ptr ca_cert, parse_certificate(ca.root.cert_pem));
  TESTUDO_ASSIGN_OR_RETURN(Asn1TimePtr this_update, asn1_time(this_update_unix));
  TESTUDO_ASSIGN_OR_RETURN(Asn1TimePtr next_update, asn1_time(next_update_unix));

  X509CrlPtr crl(X509_CRL_new());
  if (!crl || X509_CRL_set_version(crl.get(), X509_CRL_VERSION_2) != 1 ||
      X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca_cert.get())) != 1 ||
      X509_CRL_set1_lastUpdate(crl.get(), this_update.get()) != 1 ||
      X509_CRL_set1_nextUpdate(crl.get(), next_update.get()) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot set up the CRL");
  }
  for (std::uint64_t serial : revoked_serials) {
    TESTUDO_ASSIGN_OR_RETURN(BignumPtr bn, serial_bn(serial));
    Asn1IntegerPtr asn1_serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
    RevokedPtr revoked(X509_REVOKED_new());
    if (!asn1_serial || !revoked || X509_REVOKED_set_serialNumber(revoked.get(), asn1_serial.get()) != 1 ||
        X509_REVOKED_set_revocationDate(revoked.get(), this_update.get()) != 1 ||
        X509_CRL_add0_revoked(crl.get(), revoked.get()) != 1) {
      return openssl_error_as(StatusCode::kInternal, "cannot add a revoked serial to the CRL");
    }
    (void)revoked.release();  // owned by the CRL
  }
  // crlNumber (RFC 5280 5.2.3) and authorityKeyIdentifier, as real CAs write them.
  Asn1IntegerPtr number(ASN1_INTEGER_new());
  if (!number || ASN1_INTEGER_set(number.get(), 1) != 1 ||
      X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, number.get(), 0, 0) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot add crlNumber");
  }
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca_cert.get(), nullptr, nullptr, crl.get(), 0);
  X509ExtPtr aki(X509V3_EXT_conf_nid(nullptr, &ctx, NID_authority_key_identifier, "keyid:always"));
  if (!aki || X509_CRL_add_ext(crl.get(), aki.get(), -1) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot add authorityKeyIdentifier to the CRL");
  }
  if (X509_CRL_sort(crl.get()) != 1 || X509_CRL_sign(crl.get(), ca_key.get(), EVP_sha256()) <= 0) {
    return openssl_error_as(StatusCode::kInternal, "cannot sign the CRL");
  }
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509_CRL(bio.get(), crl.get()) != 1) {
    return openssl_error_as(StatusCode::kInternal, "cannot encode the CRL");
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0 || data == nullptr) return openssl_error_as(StatusCode::kInternal, "cannot read the CRL");
  return std::string(data, static_cast<std::size_t>(len));
}

}  // namespace testudo::tls::testing
