#include "tls/tls.h"

#include "tls/test_pki.h"
#include "tls/tls_internal.h"

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <cctype>
#include <ctime>
#include <utility>

namespace testudo::tls {
namespace {

// These tests drive raw SSL objects made from the contexts tls::Context wraps.
using internal::export_keying_material;
using internal::make_client_context;
using internal::make_server_context;
using internal::peer_certificate_chain_pem;
using internal::peer_certificate_facts;
using internal::peer_fingerprint;
using internal::SslCtxPtr;
using internal::SslPtr;

constexpr std::string_view kLabel = "EXPORTER-testudo-test";

KeyAndCertificate must_generate(std::string_view cn) {
  auto kc = generate_self_signed(cn);
  EXPECT_TRUE(kc.ok()) << kc.status().to_string();
  return kc.ok() ? std::move(kc).value() : KeyAndCertificate{};
}

std::string must_fingerprint(const KeyAndCertificate& kc) {
  auto fp = fingerprint_of_pem(kc.cert_pem);
  EXPECT_TRUE(fp.ok()) << fp.status().to_string();
  return fp.ok() ? *fp : std::string();
}

// Identities made once: key generation is the slow part.
struct Identities {
  KeyAndCertificate server = must_generate("testudo-controller");
  KeyAndCertificate client = must_generate("testudo-client");
  KeyAndCertificate other = must_generate("someone-else");
};
const Identities& ids() {
  static const Identities* const kIds = new Identities();
  return *kIds;
}

SslCtxPtr must_server_ctx() {
  auto ctx = make_server_context(ServerOptions{ids().server});
  EXPECT_TRUE(ctx.ok()) << ctx.status().to_string();
  return ctx.ok() ? std::move(ctx).value() : nullptr;
}

SslCtxPtr must_client_ctx(std::string pin) {
  auto ctx = make_client_context(ClientOptions{ids().client, std::move(pin)});
  EXPECT_TRUE(ctx.ok()) << ctx.status().to_string();
  return ctx.ok() ? std::move(ctx).value() : nullptr;
}

// A server and a client SSL joined by an in-memory BIO pair, handshaking in lockstep.
struct Session {
  SslPtr server;
  SslPtr client;
  bool server_done = false, client_done = false;
  bool server_failed = false, client_failed = false;
  std::string server_error, client_error;

  Session(SSL_CTX* server_ctx, SSL_CTX* client_ctx)
      : server(SSL_new(server_ctx)), client(SSL_new(client_ctx)) {
    BIO* server_bio = nullptr;
    BIO* client_bio = nullptr;
    EXPECT_EQ(BIO_new_bio_pair(&server_bio, 0, &client_bio, 0), 1);
    SSL_set_bio(server.get(), server_bio, server_bio);  // one reference each, owned by the SSL
    SSL_set_bio(client.get(), client_bio, client_bio);
    SSL_set_accept_state(server.get());
    SSL_set_connect_state(client.get());
  }

  static void step(SSL* ssl, bool& done, bool& failed, std::string& error) {
    if (done || failed) return;
    const int rc = SSL_do_handshake(ssl);
    if (rc == 1) {
      done = true;
      return;
    }
    const int err = SSL_get_error(ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
    failed = true;
    error = openssl_error("handshake").message();
  }

  void handshake() {
    for (int i = 0; i < 100; ++i) {
      step(client.get(), client_done, client_failed, client_error);
      step(server.get(), server_done, server_failed, server_error);
      if ((client_done || client_failed) && (server_done || server_failed)) break;
    }
    ERR_clear_error();
  }
};

TEST(TlsTest, GenerateSelfSignedAndFingerprintFormat) {
  const auto& kc = ids().server;
  EXPECT_NE(kc.key_pem.find("-----BEGIN PRIVATE KEY-----"), std::string::npos);  // PKCS#8
  EXPECT_NE(kc.cert_pem.find("-----BEGIN CERTIFICATE-----"), std::string::npos);
  EXPECT_TRUE(check_key_matches_certificate(kc).ok());
  const std::string fp = must_fingerprint(kc);
  ASSERT_EQ(fp.size(), 7u + 64u);
  EXPECT_EQ(fp.substr(0, 7), "sha256:");
  for (char c : fp.substr(7)) {
    EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << fp;
  }
  EXPECT_EQ(must_fingerprint(kc), fp);  // deterministic
}

TEST(TlsTest, GeneratedCertificateHasExpectedFields) {
  const auto& kc = ids().server;
  BIO* bio = BIO_new_mem_buf(kc.cert_pem.data(), static_cast<int>(kc.cert_pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(X509_get_version(cert), X509_VERSION_3);
  char cn[128] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
  EXPECT_STREQ(cn, "testudo-controller");
  EXPECT_EQ(X509_check_ca(cert), 0);
  EXPECT_EQ(X509_cmp_current_time(X509_get0_notBefore(cert)), -1);
  EXPECT_EQ(X509_cmp_current_time(X509_get0_notAfter(cert)), 1);
  EXPECT_EQ(X509_get_signature_nid(cert), NID_ecdsa_with_SHA256);
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  EXPECT_GE(serial->length, 15);  // 128 random bits with the top bit cleared
  X509_free(cert);
}

TEST(TlsTest, FingerprintsDifferBetweenCertificates) {
  EXPECT_NE(must_fingerprint(ids().server), must_fingerprint(ids().client));
}

// Parsing is cached by the PEM's digest (parse_cache.h): the same PEM gives the same object,
// a different one (even one byte) another; the cache is bounded, oldest out first; a failed
// parse is not kept.
TEST(TlsTest, ParsedCertificatesAndKeysAreSharedAndBounded) {
  auto a = generate_self_signed("cache-a");
  ASSERT_TRUE(a.ok());
  auto first = internal::parse_certificate(a->cert_pem);
  auto second = internal::parse_certificate(a->cert_pem);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(first->get(), second->get());
  auto key1 = internal::parse_private_key(a->key_pem);
  auto key2 = internal::parse_private_key(a->key_pem);
  ASSERT_TRUE(key1.ok() && key2.ok());
  EXPECT_EQ(key1->get(), key2->get());
  EXPECT_TRUE(sign_sha256(a->key_pem, "data").ok());

  const std::string damaged = a->cert_pem.substr(0, a->cert_pem.size() / 2);  // no END line
  EXPECT_FALSE(internal::parse_certificate(damaged).ok());
  EXPECT_FALSE(internal::parse_certificate(damaged).ok()) << "a failed parse must not be cached";

  X509* held = first->get();
  first->reset();
  second->reset();
  for (int i = 0; i < 70; ++i) {  // more than the certificate cache holds
    auto other = generate_self_signed("cache-" + std::to_string(i));
    ASSERT_TRUE(other.ok());
    ASSERT_TRUE(internal::parse_certificate(other->cert_pem).ok());
  }
  auto again = internal::parse_certificate(a->cert_pem);
  ASSERT_TRUE(again.ok());
  EXPECT_NE(again->get(), held) << "evicted: parsed afresh";
  EXPECT_EQ(fingerprint_of_pem(a->cert_pem).value(), fingerprint_of_pem(a->cert_pem).value());
}

TEST(TlsTest, FingerprintOfGarbageFails) {
  EXPECT_EQ(fingerprint_of_pem("not a certificate").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(fingerprint_of_pem("").status().code(), StatusCode::kInvalidArgument);
}

TEST(TlsTest, MismatchedKeyAndCertificateRejected) {
  KeyAndCertificate mixed{ids().server.key_pem, ids().client.cert_pem};
  Status st = check_key_matches_certificate(mixed);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(make_server_context(ServerOptions{mixed}).ok());
  EXPECT_FALSE(make_client_context(ClientOptions{mixed, must_fingerprint(ids().server)}).ok());
  EXPECT_FALSE(check_key_matches_certificate({"garbage", ids().client.cert_pem}).ok());
}

TEST(TlsTest, GenerateRejectsBadArguments) {
  EXPECT_FALSE(generate_self_signed("").ok());
  EXPECT_FALSE(generate_self_signed(std::string(65, 'x')).ok());
  EXPECT_FALSE(generate_self_signed("ok", 0).ok());
}

TEST(TlsTest, ClientContextRejectsBadFingerprints) {
  const std::string good = must_fingerprint(ids().server);
  const std::string hex = good.substr(7);
  std::string upper = good;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  upper.replace(0, 7, "sha256:");
  const std::string bads[] = {
      "",
      hex,                       // no prefix
      "sha1:" + hex,             // wrong algorithm
      "SHA256:" + hex,           // prefix is case-sensitive
      upper,                     // hex must be lowercase
      good.substr(0, good.size() - 1),
      good + "0",
      "sha256:" + std::string(64, 'g'),
      "sha256:" + hex.substr(0, 62) + " 0",
  };
  for (const auto& bad : bads) {
    auto ctx = make_client_context(ClientOptions{ids().client, bad});
    EXPECT_FALSE(ctx.ok()) << bad;
    EXPECT_EQ(ctx.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(make_client_context(ClientOptions{ids().client, good}).ok());
}

TEST(TlsTest, ContextsRequireAnIdentity) {
  EXPECT_EQ(make_server_context(ServerOptions{}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(make_client_context(ClientOptions{{}, must_fingerprint(ids().server)}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(TlsTest, ContextSettings) {
  SslCtxPtr contexts[] = {must_server_ctx(), must_client_ctx(must_fingerprint(ids().server))};
  for (const SslCtxPtr& ctx : contexts) {
    ASSERT_NE(ctx, nullptr);
    EXPECT_EQ(SSL_CTX_get_min_proto_version(ctx.get()), TLS1_3_VERSION);
    EXPECT_EQ(SSL_CTX_get_max_proto_version(ctx.get()), TLS1_3_VERSION);
    const uint64_t opts = SSL_CTX_get_options(ctx.get());
    EXPECT_TRUE(opts & SSL_OP_NO_COMPRESSION);
    EXPECT_TRUE(opts & SSL_OP_NO_TICKET);
    EXPECT_TRUE(opts & SSL_OP_NO_RENEGOTIATION);
    EXPECT_EQ(SSL_CTX_get_num_tickets(ctx.get()), 0u);
    EXPECT_EQ(SSL_CTX_get_verify_mode(ctx.get()),
              SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
  }
}

TEST(TlsTest, HandshakeWithCorrectPinSucceeds) {
  SslCtxPtr server_ctx = must_server_ctx();
  SslCtxPtr client_ctx = must_client_ctx(must_fingerprint(ids().server));
  ASSERT_TRUE(server_ctx && client_ctx);

  Session s(server_ctx.get(), client_ctx.get());
  s.handshake();
  ASSERT_TRUE(s.client_done) << s.client_error;
  ASSERT_TRUE(s.server_done) << s.server_error;
  EXPECT_EQ(SSL_version(s.client.get()), TLS1_3_VERSION);
  EXPECT_EQ(SSL_version(s.server.get()), TLS1_3_VERSION);
  EXPECT_EQ(SSL_get_current_compression(s.client.get()), nullptr);

  auto server_ekm = export_keying_material(s.server.get(), kLabel, "ctx");
  auto client_ekm = export_keying_material(s.client.get(), kLabel, "ctx");
  ASSERT_TRUE(server_ekm.ok()) << server_ekm.status().to_string();
  ASSERT_TRUE(client_ekm.ok()) << client_ekm.status().to_string();
  EXPECT_EQ(*server_ekm, *client_ekm);
  // Label and context both bind the value.
  EXPECT_NE(*export_keying_material(s.client.get(), kLabel, "other"), *client_ekm);
  EXPECT_NE(*export_keying_material(s.client.get(), "EXPORTER-other", "ctx"), *client_ekm);

  auto server_sees = peer_fingerprint(s.server.get());
  ASSERT_TRUE(server_sees.ok()) << server_sees.status().to_string();
  EXPECT_EQ(*server_sees, must_fingerprint(ids().client));
  auto client_sees = peer_fingerprint(s.client.get());
  ASSERT_TRUE(client_sees.ok()) << client_sees.status().to_string();
  EXPECT_EQ(*client_sees, must_fingerprint(ids().server));

  // Application data flows both ways.
  ASSERT_EQ(SSL_write(s.client.get(), "ping", 4), 4);
  char buf[8] = {};
  ASSERT_EQ(SSL_read(s.server.get(), buf, sizeof buf), 4);
  EXPECT_EQ(std::string_view(buf, 4), "ping");

  // A second, independent session over the same contexts exports another value.
  Session s2(server_ctx.get(), client_ctx.get());
  s2.handshake();
  ASSERT_TRUE(s2.client_done && s2.server_done) << s2.client_error << s2.server_error;
  EXPECT_EQ(SSL_session_reused(s2.client.get()), 0);
  auto ekm2 = export_keying_material(s2.client.get(), kLabel, "ctx");
  ASSERT_TRUE(ekm2.ok());
  EXPECT_NE(*ekm2, *client_ekm);
}

TEST(TlsTest, HandshakeWithWrongPinFailsBeforeAnyData) {
  SslCtxPtr server_ctx = must_server_ctx();
  SslCtxPtr client_ctx = must_client_ctx(must_fingerprint(ids().other));
  ASSERT_TRUE(server_ctx && client_ctx);

  Session s(server_ctx.get(), client_ctx.get());
  s.handshake();
  EXPECT_TRUE(s.client_failed);
  EXPECT_FALSE(s.client_done);
  EXPECT_FALSE(s.server_done);
  EXPECT_EQ(SSL_get_verify_result(s.client.get()), X509_V_ERR_CERT_REJECTED);
  EXPECT_NE(s.client_error.find("certificate verify failed"), std::string::npos) << s.client_error;

  // The client cannot write application data, and the server receives none.
  EXPECT_LE(SSL_write(s.client.get(), "secret", 6), 0);
  char buf[8];
  EXPECT_LE(SSL_read(s.server.get(), buf, sizeof buf), 0);
  EXPECT_FALSE(export_keying_material(s.client.get(), kLabel, "").ok());
  ERR_clear_error();
}

TEST(TlsTest, ServerRefusesClientWithoutCertificate) {
  SslCtxPtr server_ctx = must_server_ctx();
  ASSERT_TRUE(server_ctx);
  // A bare TLS 1.3 client with no certificate (and, for this test, no verification).
  SslCtxPtr bare(SSL_CTX_new(TLS_client_method()));
  ASSERT_TRUE(bare);
  ASSERT_EQ(SSL_CTX_set_min_proto_version(bare.get(), TLS1_3_VERSION), 1);

  Session s(server_ctx.get(), bare.get());
  s.handshake();
  EXPECT_TRUE(s.server_failed);
  EXPECT_FALSE(s.server_done);
  EXPECT_NE(s.server_error.find("peer did not return a certificate"), std::string::npos)
      << s.server_error;
  EXPECT_FALSE(peer_fingerprint(s.server.get()).ok());
  // In TLS 1.3 the client may believe it finished; its first read sees the refusal.
  if (s.client_done) {
    char buf[8];
    EXPECT_LE(SSL_read(s.client.get(), buf, sizeof buf), 0);
  }
  ERR_clear_error();
}

TEST(TlsTest, ServerRefusesTls12Client) {
  SslCtxPtr server_ctx = must_server_ctx();
  ASSERT_TRUE(server_ctx);
  SslCtxPtr old(SSL_CTX_new(TLS_client_method()));
  ASSERT_TRUE(old);
  ASSERT_EQ(SSL_CTX_set_max_proto_version(old.get(), TLS1_2_VERSION), 1);
  Session s(server_ctx.get(), old.get());
  s.handshake();
  EXPECT_TRUE(s.server_failed);
  EXPECT_TRUE(s.client_failed);
}

TEST(TlsTest, ExportAndPeerFingerprintNeedASession) {
  EXPECT_FALSE(export_keying_material(nullptr, kLabel, "").ok());
  EXPECT_FALSE(peer_fingerprint(nullptr).ok());
  SslCtxPtr server_ctx = must_server_ctx();
  SslPtr fresh(SSL_new(server_ctx.get()));
  EXPECT_EQ(export_keying_material(fresh.get(), kLabel, "").status().code(),
            StatusCode::kFailedPrecondition);
}

TEST(TlsTest, OpensslErrorDrainsTheQueue) {
  ERR_clear_error();
  EXPECT_FALSE(fingerprint_of_pem("garbage").ok());
  EXPECT_EQ(ERR_peek_error(), 0ul);
  ERR_raise(ERR_LIB_SSL, SSL_R_BAD_LENGTH);
  Status st = openssl_error("context here");
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.message().rfind("context here: ", 0), 0u) << st.message();
  EXPECT_EQ(ERR_peek_error(), 0ul);
  EXPECT_NE(openssl_error("empty").message().find("unknown"), std::string::npos);
}


// ---- Certificate facts ----

constexpr std::int64_t k2020 = 1577836800;  // 2020-01-01T00:00:00Z
constexpr std::int64_t k2021 = 1609459200;  // 2021-01-01T00:00:00Z

std::int64_t now_unix() { return static_cast<std::int64_t>(std::time(nullptr)); }

TEST(TlsTest, CertificateFactsOfGeneratedCertificate) {
  const auto& kc = ids().client;
  auto facts = certificate_facts_of_pem(kc.cert_pem);
  ASSERT_TRUE(facts.ok()) << facts.status().to_string();
  EXPECT_EQ(facts->subject_cn, "testudo-client");
  EXPECT_EQ(facts->issuer_cn, "testudo-client");
  EXPECT_EQ(facts->cert_fingerprint, must_fingerprint(kc));
  EXPECT_NE(facts->key_fingerprint, facts->cert_fingerprint);
  EXPECT_EQ(facts->key_fingerprint.rfind("sha256:", 0), 0u);
  EXPECT_EQ(facts->key_fingerprint.size(), 7u + 64u);
  EXPECT_EQ(facts->cert_pem, kc.cert_pem);
  EXPECT_NEAR(static_cast<double>(facts->not_before), static_cast<double>(now_unix() - 3600), 120.0);
  EXPECT_NEAR(static_cast<double>(facts->not_after - facts->not_before), 3650.0 * 86400 + 3600, 120.0);
  ASSERT_FALSE(facts->serial_hex.empty());
  for (char c : facts->serial_hex) EXPECT_TRUE(std::isxdigit(c) && !std::isupper(c)) << facts->serial_hex;
  EXPECT_NE(facts->serial_hex[0], '0');

  // The key fingerprint is SHA-256 over the DER SubjectPublicKeyInfo, computed independently.
  BIO* bio = BIO_new_mem_buf(kc.cert_pem.data(), static_cast<int>(kc.cert_pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(cert, nullptr);
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(X509_get0_pubkey(cert), &der);
  ASSERT_GT(len, 0);
  unsigned char md[32];
  unsigned int md_len = 0;
  ASSERT_EQ(EVP_Digest(der, static_cast<std::size_t>(len), md, &md_len, EVP_sha256(), nullptr), 1);
  OPENSSL_free(der);
  X509_free(cert);
  std::string hex;
  for (unsigned i = 0; i < md_len; ++i) {
    static const char* const kDigits = "0123456789abcdef";
    hex += kDigits[md[i] >> 4];
    hex += kDigits[md[i] & 15];
  }
  EXPECT_EQ(facts->key_fingerprint, "sha256:" + hex);

  // Either PEM form gives the same key fingerprint.
  auto pub = public_key_pem_of_certificate(kc.cert_pem);
  ASSERT_TRUE(pub.ok()) << pub.status().to_string();
  EXPECT_NE(pub->find("-----BEGIN PUBLIC KEY-----"), std::string::npos);
  EXPECT_EQ(*key_fingerprint_of_pem(*pub), facts->key_fingerprint);
  EXPECT_EQ(*key_fingerprint_of_pem(kc.cert_pem), facts->key_fingerprint);
  EXPECT_NE(*key_fingerprint_of_pem(ids().server.cert_pem), facts->key_fingerprint);
}

TEST(TlsTest, CertificateFactsOfGarbageFail) {
  EXPECT_EQ(certificate_facts_of_pem("garbage").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(key_fingerprint_of_pem("garbage").status().code(), StatusCode::kInvalidArgument);
  // A private key is neither a certificate nor a public key.
  auto st = key_fingerprint_of_pem(ids().client.key_pem).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message().find("BEGIN"), std::string::npos);
  EXPECT_FALSE(key_fingerprint_of_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").ok());
  EXPECT_FALSE(public_key_pem_of_certificate("garbage").ok());
}

TEST(TlsTest, ValidityPeriodChecks) {
  auto kc = generate_self_signed_for_period("old", k2020, k2021);
  ASSERT_TRUE(kc.ok()) << kc.status().to_string();
  auto facts = certificate_facts_of_pem(kc->cert_pem);
  ASSERT_TRUE(facts.ok());
  EXPECT_EQ(facts->not_before, k2020);
  EXPECT_EQ(facts->not_after, k2021);
  EXPECT_TRUE(check_validity_period(*facts, k2020 + 10).ok());
  Status early = check_validity_period(*facts, k2020 - 1);
  EXPECT_EQ(early.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(early.message(), "certificate not valid until 2020-01-01T00:00:00Z");
  Status late = check_validity_period(*facts, k2021 + 1);
  EXPECT_EQ(late.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(late.message(), "certificate expired at 2021-01-01T00:00:00Z");
}

TEST(TlsTest, GenerateForPeriodRejectsBadWindows) {
  EXPECT_FALSE(generate_self_signed_for_period("x", k2021, k2020).ok());
  EXPECT_FALSE(generate_self_signed_for_period("x", k2020, k2020).ok());
  EXPECT_FALSE(generate_self_signed_for_period("x", -4000000000LL, k2020).ok());
  EXPECT_FALSE(generate_self_signed_for_period("x", k2020, 300000000000LL).ok());
  EXPECT_FALSE(generate_self_signed_for_period("", k2020, k2021).ok());
  // A certificate valid past 2050 is written as GeneralizedTime and read back exactly.
  auto far = generate_self_signed_for_period("far", k2020, 4102444800LL);  // 2100-01-01
  ASSERT_TRUE(far.ok());
  EXPECT_EQ(certificate_facts_of_pem(far->cert_pem)->not_after, 4102444800LL);
}

// ---- Handshake-time checks of the client certificate ----

TEST(TlsTest, ExpiredOrNotYetValidClientCertificateFailsHandshake) {
  SslCtxPtr server_ctx = must_server_ctx();
  ASSERT_TRUE(server_ctx);
  const std::int64_t now = now_unix();
  const std::pair<std::int64_t, std::int64_t> windows[] = {{k2020, k2021}, {now + 86400, now + 2 * 86400}};
  for (const auto& [from, to] : windows) {
    auto kc = generate_self_signed_for_period("testudo-client", from, to);
    ASSERT_TRUE(kc.ok());
    auto client_ctx = make_client_context(ClientOptions{*kc, must_fingerprint(ids().server)});
    ASSERT_TRUE(client_ctx.ok()) << client_ctx.status().to_string();
    Session s(server_ctx.get(), client_ctx->get());
    s.handshake();
    EXPECT_TRUE(s.server_failed) << from;
    EXPECT_FALSE(s.server_done);
    EXPECT_NE(s.server_error.find("certificate verify failed"), std::string::npos) << s.server_error;
    EXPECT_EQ(SSL_get_verify_result(s.server.get()),
              from == k2020 ? X509_V_ERR_CERT_HAS_EXPIRED : X509_V_ERR_CERT_NOT_YET_VALID);
    if (s.client_done) {
      char buf[8];
      EXPECT_LE(SSL_read(s.client.get(), buf, sizeof buf), 0);
    }
    ERR_clear_error();
  }
}

TEST(TlsTest, PeerCertificateFactsAndChainAfterHandshake) {
  SslCtxPtr server_ctx = must_server_ctx();
  SslCtxPtr client_ctx = must_client_ctx(must_fingerprint(ids().server));
  ASSERT_TRUE(server_ctx && client_ctx);
  Session s(server_ctx.get(), client_ctx.get());
  s.handshake();
  ASSERT_TRUE(s.client_done && s.server_done) << s.client_error << s.server_error;

  auto server_sees = peer_certificate_facts(s.server.get());
  ASSERT_TRUE(server_sees.ok()) << server_sees.status().to_string();
  EXPECT_EQ(server_sees->subject_cn, "testudo-client");
  EXPECT_EQ(server_sees->cert_fingerprint, must_fingerprint(ids().client));
  EXPECT_EQ(server_sees->key_fingerprint, *key_fingerprint_of_pem(ids().client.cert_pem));
  auto client_sees = peer_certificate_facts(s.client.get());
  ASSERT_TRUE(client_sees.ok());
  EXPECT_EQ(client_sees->subject_cn, "testudo-controller");

  // Both sides: the leaf once, first (OpenSSL's client-side chain includes it, the server's not).
  for (SSL* ssl : {s.server.get(), s.client.get()}) {
    auto chain = peer_certificate_chain_pem(ssl);
    ASSERT_TRUE(chain.ok()) << chain.status().to_string();
    ASSERT_EQ(chain->size(), 1u);
  }
  EXPECT_EQ(peer_certificate_chain_pem(s.server.get())->front(), ids().client.cert_pem);
  EXPECT_EQ(peer_certificate_chain_pem(s.client.get())->front(), ids().server.cert_pem);

  EXPECT_FALSE(peer_certificate_facts(nullptr).ok());
  EXPECT_FALSE(peer_certificate_chain_pem(nullptr).ok());
  SslPtr fresh(SSL_new(server_ctx.get()));
  EXPECT_EQ(peer_certificate_facts(fresh.get()).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(peer_certificate_chain_pem(fresh.get()).status().code(), StatusCode::kFailedPrecondition);
}

TEST(TlsTest, ClientChainFromCaReachesServerLeafFirst) {
  auto ca = testing::make_ca("Test Root");
  ASSERT_TRUE(ca.ok()) << ca.status().to_string();
  const std::int64_t now = now_unix();
  auto leaf = testing::issue(*ca, "engine-7", now - 60, now + 86400, 42);
  ASSERT_TRUE(leaf.ok()) << leaf.status().to_string();
  SslCtxPtr server_ctx = must_server_ctx();
  auto client_ctx = make_client_context(ClientOptions{*leaf, must_fingerprint(ids().server)});
  ASSERT_TRUE(server_ctx && client_ctx.ok());
  // The client sends its CA certificate after the leaf, as a real deployment may.
  BIO* bio = BIO_new_mem_buf(ca->root.cert_pem.data(), static_cast<int>(ca->root.cert_pem.size()));
  X509* ca_cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(ca_cert, nullptr);
  ASSERT_EQ(SSL_CTX_add0_chain_cert(client_ctx->get(), ca_cert), 1);  // owned by the context now

  Session s(server_ctx.get(), client_ctx->get());
  s.handshake();
  ASSERT_TRUE(s.client_done && s.server_done) << s.client_error << s.server_error;
  auto chain = peer_certificate_chain_pem(s.server.get());
  ASSERT_TRUE(chain.ok()) << chain.status().to_string();
  ASSERT_EQ(chain->size(), 2u);
  EXPECT_EQ((*chain)[0], leaf->cert_pem);
  EXPECT_EQ((*chain)[1], ca->root.cert_pem);
  auto facts = peer_certificate_facts(s.server.get());
  ASSERT_TRUE(facts.ok());
  EXPECT_EQ(facts->issuer_cn, "Test Root");
  EXPECT_EQ(facts->serial_hex, "2a");
}

// ---- min_version and ciphersuites ----

std::string cipher_name(SSL* ssl) {
  const SSL_CIPHER* c = SSL_get_current_cipher(ssl);
  return c == nullptr ? std::string() : SSL_CIPHER_get_name(c);
}

StatusOr<SslCtxPtr> server_ctx_with(std::string min_version, std::string suites) {
  ServerOptions o{ids().server};
  o.min_version = std::move(min_version);
  o.ciphersuites = std::move(suites);
  return make_server_context(o);
}

StatusOr<SslCtxPtr> client_ctx_with(std::string min_version, std::string suites) {
  ClientOptions o{ids().client, must_fingerprint(ids().server)};
  o.min_version = std::move(min_version);
  o.ciphersuites = std::move(suites);
  return make_client_context(o);
}

TEST(TlsTest, MinVersionMustBeKnown) {
  for (const char* bad : {"1.1", "1.0", "", "1.4", "TLSv1.3", "1.2 "}) {
    for (const auto& ctx : {server_ctx_with(bad, ""), client_ctx_with(bad, "")}) {
      ASSERT_FALSE(ctx.ok()) << bad;
      EXPECT_EQ(ctx.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(ctx.status().message().find("\"1.3\" or \"1.2\""), std::string::npos) << ctx.status().message();
    }
  }
  EXPECT_TRUE(server_ctx_with("1.2", "").ok());
  auto ctx12 = client_ctx_with("1.2", "");
  ASSERT_TRUE(ctx12.ok());
  EXPECT_EQ(SSL_CTX_get_min_proto_version(ctx12->get()), TLS1_2_VERSION);
  EXPECT_EQ(SSL_CTX_get_max_proto_version(ctx12->get()), TLS1_3_VERSION);
  EXPECT_FALSE(SSL_CTX_get_options(ctx12->get()) & SSL_OP_NO_EXTENDED_MASTER_SECRET);
  EXPECT_TRUE(SSL_CTX_get_options(ctx12->get()) & SSL_OP_NO_RENEGOTIATION);
}

TEST(TlsTest, CiphersuitesAreChecked) {
  const char* bads[] = {"TLS_AES_128_CCM_8_SHA256", "bogus", "TLS_AES_128_GCM_SHA256:", ":",
                        "TLS_AES_128_GCM_SHA256::TLS_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
                        "TLS_SHA256_SHA256", "tls_aes_128_gcm_sha256"};
  for (const char* bad : bads) {
    for (const auto& ctx : {server_ctx_with("1.3", bad), client_ctx_with("1.3", bad)}) {
      ASSERT_FALSE(ctx.ok()) << bad;
      EXPECT_EQ(ctx.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(ctx.status().message().find(std::string("\"") + bad + "\""), std::string::npos)
          << ctx.status().message();
    }
  }
  EXPECT_TRUE(server_ctx_with("1.3", "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256").ok());
  EXPECT_TRUE(client_ctx_with("1.2", "TLS_AES_128_CCM_SHA256").ok());
}

TEST(TlsTest, CiphersuiteMismatchFailsHandshake) {
  auto server_ctx = server_ctx_with("1.3", "TLS_CHACHA20_POLY1305_SHA256");
  auto client_ctx = client_ctx_with("1.3", "TLS_AES_128_GCM_SHA256");
  ASSERT_TRUE(server_ctx.ok() && client_ctx.ok());
  Session s(server_ctx->get(), client_ctx->get());
  s.handshake();
  EXPECT_TRUE(s.server_failed);
  EXPECT_TRUE(s.client_failed);
  EXPECT_NE(s.server_error.find("no shared cipher"), std::string::npos) << s.server_error;
}

TEST(TlsTest, CiphersuiteRestrictionIsNegotiated) {
  auto server_ctx = server_ctx_with("1.3", "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384");
  auto client_ctx = client_ctx_with("1.3", "TLS_CHACHA20_POLY1305_SHA256");
  ASSERT_TRUE(server_ctx.ok() && client_ctx.ok());
  Session s(server_ctx->get(), client_ctx->get());
  s.handshake();
  ASSERT_TRUE(s.client_done && s.server_done) << s.client_error << s.server_error;
  EXPECT_EQ(cipher_name(s.client.get()), "TLS_CHACHA20_POLY1305_SHA256");
}

TEST(TlsTest, Tls12ClientAdmittedWithMinVersion12) {
  auto server_ctx = server_ctx_with("1.2", "");
  auto client_ctx = client_ctx_with("1.2", "");
  ASSERT_TRUE(server_ctx.ok() && client_ctx.ok());
  ASSERT_EQ(SSL_CTX_set_max_proto_version(client_ctx->get(), TLS1_2_VERSION), 1);  // a TLS 1.2 peer
  Session s(server_ctx->get(), client_ctx->get());
  s.handshake();
  ASSERT_TRUE(s.client_done && s.server_done) << s.client_error << s.server_error;
  EXPECT_EQ(SSL_version(s.server.get()), TLS1_2_VERSION);
  const std::string cipher = cipher_name(s.server.get());
  EXPECT_EQ(cipher.rfind("ECDHE-ECDSA-", 0), 0u) << cipher;
  EXPECT_TRUE(cipher.find("GCM") != std::string::npos || cipher.find("CHACHA20") != std::string::npos) << cipher;
  EXPECT_EQ(SSL_get_extms_support(s.server.get()), 1);
  EXPECT_EQ(SSL_get_extms_support(s.client.get()), 1);
  auto a = export_keying_material(s.server.get(), kLabel, "ctx");
  auto b = export_keying_material(s.client.get(), kLabel, "ctx");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(*peer_fingerprint(s.server.get()), must_fingerprint(ids().client));

  // The same server still speaks TLS 1.3 to a 1.3 client.
  auto modern = client_ctx_with("1.3", "");
  ASSERT_TRUE(modern.ok());
  Session s13(server_ctx->get(), modern->get());
  s13.handshake();
  ASSERT_TRUE(s13.client_done && s13.server_done);
  EXPECT_EQ(SSL_version(s13.server.get()), TLS1_3_VERSION);
}

TEST(TlsTest, Tls12WithoutExtendedMasterSecretRefused) {
  // A TLS 1.2 client that does not offer the extended master secret: the server refuses it.
  {
    auto server_ctx = server_ctx_with("1.2", "");
    auto client_ctx = client_ctx_with("1.2", "");
    ASSERT_TRUE(server_ctx.ok() && client_ctx.ok());
    ASSERT_EQ(SSL_CTX_set_max_proto_version(client_ctx->get(), TLS1_2_VERSION), 1);
    SSL_CTX_set_options(client_ctx->get(), SSL_OP_NO_EXTENDED_MASTER_SECRET);
    Session s(server_ctx->get(), client_ctx->get());
    s.handshake();
    EXPECT_TRUE(s.server_failed);
    EXPECT_FALSE(s.server_done);
    EXPECT_FALSE(s.client_done);
  }
  // A TLS 1.2 server that does not agree to it: the client refuses it.
  {
    auto server_ctx = server_ctx_with("1.2", "");
    auto client_ctx = client_ctx_with("1.2", "");
    ASSERT_TRUE(server_ctx.ok() && client_ctx.ok());
    ASSERT_EQ(SSL_CTX_set_max_proto_version(server_ctx->get(), TLS1_2_VERSION), 1);
    SSL_CTX_set_options(server_ctx->get(), SSL_OP_NO_EXTENDED_MASTER_SECRET);
    Session s(server_ctx->get(), client_ctx->get());
    s.handshake();
    EXPECT_TRUE(s.client_failed);
    EXPECT_FALSE(s.client_done);
    EXPECT_NE(s.client_error.find("certificate verify failed"), std::string::npos) << s.client_error;
  }
  ERR_clear_error();
}

TEST(TlsTest, Tls12CbcOrStaticSuitesRefused) {
  auto server_ctx = server_ctx_with("1.2", "");
  ASSERT_TRUE(server_ctx.ok());
  for (const char* list : {"ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA", "AES128-GCM-SHA256"}) {
    auto client_ctx = client_ctx_with("1.2", "");
    ASSERT_TRUE(client_ctx.ok());
    ASSERT_EQ(SSL_CTX_set_max_proto_version(client_ctx->get(), TLS1_2_VERSION), 1);
    ASSERT_EQ(SSL_CTX_set_cipher_list(client_ctx->get(), list), 1) << list;
    Session s(server_ctx->get(), client_ctx->get());
    s.handshake();
    EXPECT_TRUE(s.server_failed) << list;
    EXPECT_FALSE(s.client_done) << list;
  }
  ERR_clear_error();
}

TEST(TlsTest, Server13RefusesTls12ClientEvenWithCertificate) {
  SslCtxPtr server_ctx = must_server_ctx();
  auto client_ctx = client_ctx_with("1.2", "");
  ASSERT_TRUE(server_ctx && client_ctx.ok());
  ASSERT_EQ(SSL_CTX_set_max_proto_version(client_ctx->get(), TLS1_2_VERSION), 1);
  Session s(server_ctx.get(), client_ctx->get());
  s.handshake();
  EXPECT_TRUE(s.server_failed);
  EXPECT_TRUE(s.client_failed);
  ERR_clear_error();
}

}  // namespace
}  // namespace testudo::tls
