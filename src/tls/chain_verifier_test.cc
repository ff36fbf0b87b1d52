// ChainVerifier (CA mode), encrypted private keys and load_key_and_certificate, over real
// certificates from tls/test_pki and real files in a temporary directory.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "crypto/private_file.h"
#include "tls/session.h"
#include "tls/test_pki.h"
#include "tls/tls.h"

namespace testudo::tls {
namespace {

namespace fs = std::filesystem;

std::int64_t now_unix() { return static_cast<std::int64_t>(std::time(nullptr)); }

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "testudo-tls-XXXXXX").string();
    char* made = ::mkdtemp(tmpl.data());
    EXPECT_NE(made, nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name, std::string_view contents) const {
    const std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary | std::ios::trunc) << contents;
    return p;
  }
  std::string private_file(const std::string& name, std::string_view contents) const {
    const std::string p = path_ + "/" + name;
    EXPECT_TRUE(crypto::write_private_file(p, contents).ok());
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// One CA, one other CA, made once: key generation and signing are the slow part.
struct Pki {
  testing::TestCa ca = must(testing::make_ca("Testudo Test Root"));
  testing::TestCa other = must(testing::make_ca("Someone Else's Root"));
  template <typename T>
  static T must(StatusOr<T> v) {
    EXPECT_TRUE(v.ok()) << v.status().to_string();
    return v.ok() ? std::move(v).value() : T{};
  }
};
const Pki& pki() {
  static const Pki* const kPki = new Pki();
  return *kPki;
}

KeyAndCertificate must_issue(const testing::TestCa& ca, std::string_view cn, std::int64_t from, std::int64_t to,
                             std::uint64_t serial) {
  auto kc = testing::issue(ca, cn, from, to, serial);
  EXPECT_TRUE(kc.ok()) << kc.status().to_string();
  return kc.ok() ? std::move(kc).value() : KeyAndCertificate{};
}

ChainVerifier must_load(const std::string& ca_file, const std::string& crl_file) {
  auto v = ChainVerifier::load(ca_file, crl_file);
  EXPECT_TRUE(v.ok()) << v.status().to_string();
  if (!v.ok()) std::abort();
  return std::move(v).value();
}

TEST(TestPkiTest, CertificatesHaveTheExpectedShape) {
  const std::int64_t now = now_unix();
  auto ca_facts = certificate_facts_of_pem(pki().ca.root.cert_pem);
  ASSERT_TRUE(ca_facts.ok());
  EXPECT_EQ(ca_facts->subject_cn, "Testudo Test Root");
  EXPECT_EQ(ca_facts->issuer_cn, "Testudo Test Root");
  KeyAndCertificate leaf = must_issue(pki().ca, "engine-1", now - 60, now + 3600, 0x1234);
  EXPECT_TRUE(check_key_matches_certificate(leaf).ok());
  auto facts = certificate_facts_of_pem(leaf.cert_pem);
  ASSERT_TRUE(facts.ok());
  EXPECT_EQ(facts->subject_cn, "engine-1");
  EXPECT_EQ(facts->issuer_cn, "Testudo Test Root");
  EXPECT_EQ(facts->serial_hex, "1234");
  EXPECT_EQ(facts->not_before, now - 60);
  EXPECT_EQ(facts->not_after, now + 3600);
  EXPECT_FALSE(testing::issue(pki().ca, "x", now, now + 10, 0).ok());  // serial 0
  EXPECT_FALSE(testing::make_crl(pki().ca, {}, now, now - 1).ok());
}

TEST(ChainVerifierTest, CertificateFromTheCaPasses) {
  TempDir dir;
  const std::int64_t now = now_unix();
  ChainVerifier v = must_load(dir.file("ca.pem", pki().ca.root.cert_pem), "");
  KeyAndCertificate leaf = must_issue(pki().ca, "engine-1", now - 60, now + 3600, 7);
  Status st = v.verify({leaf.cert_pem}, now);
  EXPECT_TRUE(st.ok()) << st.to_string();
  // The CA certificate sent along by the peer changes nothing.
  EXPECT_TRUE(v.verify({leaf.cert_pem, pki().ca.root.cert_pem}, now).ok());
}

TEST(ChainVerifierTest, CertificateFromAnotherCaFails) {
  TempDir dir;
  const std::int64_t now = now_unix();
  ChainVerifier v = must_load(dir.file("ca.pem", pki().ca.root.cert_pem), "");
  KeyAndCertificate stranger = must_issue(pki().other, "engine-1", now - 60, now + 3600, 7);
  for (const auto& chain : {std::vector<std::string>{stranger.cert_pem},
                            std::vector<std::string>{stranger.cert_pem, pki().other.root.cert_pem}}) {
    Status st = v.verify(chain, now);
    EXPECT_EQ(st.code(), StatusCode::kPermissionDenied);
    EXPECT_EQ(st.message().rfind("certificate is not signed by the configured CA", 0), 0u) << st.message();
  }
  // Nor does a self-signed certificate pass, even one with the CA's name.
  auto self = generate_self_signed("Testudo Test Root");
  ASSERT_TRUE(self.ok());
  Status st = v.verify({self->cert_pem}, now);
  EXPECT_NE(st.message().find("not signed by the configured CA"), std::string::npos) << st.message();
}

TEST(ChainVerifierTest, ExpiredAndNotYetValidFail) {
  TempDir dir;
  const std::int64_t now = now_unix();
  ChainVerifier v = must_load(dir.file("ca.pem", pki().ca.root.cert_pem), "");
  KeyAndCertificate old = must_issue(pki().ca, "engine-1", now - 7200, now - 1800, 8);
  Status st = v.verify({old.cert_pem}, now);
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(st.message().rfind("certificate expired at ", 0), 0u) << st.message();
  EXPECT_NE(st.message().find("Z"), std::string::npos);
  // The injected clock decides: at a time inside its window the same certificate passes.
  // (The test CA itself is valid from now-1h.)
  EXPECT_TRUE(v.verify({old.cert_pem}, now - 3000).ok());
  KeyAndCertificate future = must_issue(pki().ca, "engine-1", now + 3600, now + 7200, 9);
  st = v.verify({future.cert_pem}, now);
  EXPECT_EQ(st.message().rfind("certificate not valid until ", 0), 0u) << st.message();
}

TEST(ChainVerifierTest, RevocationFollowsTheCrl) {
  TempDir dir;
  const std::int64_t now = now_unix();
  const std::string ca_file = dir.file("ca.pem", pki().ca.root.cert_pem);
  KeyAndCertificate leaf = must_issue(pki().ca, "engine-1", now - 60, now + 3600, 0xbeef);

  auto empty_crl = testing::make_crl(pki().ca, {}, now - 60, now + 86400);
  ASSERT_TRUE(empty_crl.ok()) << empty_crl.status().to_string();
  ChainVerifier with_empty = must_load(ca_file, dir.file("empty.crl", *empty_crl));
  Status st = with_empty.verify({leaf.cert_pem}, now);
  EXPECT_TRUE(st.ok()) << st.to_string();

  auto crl = testing::make_crl(pki().ca, {3, 0xbeef}, now - 60, now + 86400);
  ASSERT_TRUE(crl.ok());
  ChainVerifier revoking = must_load(ca_file, dir.file("revoked.crl", *crl));
  st = revoking.verify({leaf.cert_pem}, now);
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(st.message(), "certificate has been revoked (serial beef)");
  // Another certificate from the same CA still passes.
  EXPECT_TRUE(revoking.verify({must_issue(pki().ca, "engine-2", now - 60, now + 3600, 4).cert_pem}, now).ok());

  // A CRL past its nextUpdate refuses everyone until a fresh one is published.
  auto stale = testing::make_crl(pki().ca, {}, now - 7200, now - 3600);
  ASSERT_TRUE(stale.ok());
  const std::string stale_file = dir.file("stale.crl", *stale);
  ChainVerifier with_stale = must_load(ca_file, stale_file);
  st = with_stale.verify({leaf.cert_pem}, now);
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(st.message().rfind("CRL expired at ", 0), 0u) << st.message();
  EXPECT_NE(st.message().find(stale_file), std::string::npos) << st.message();
}

TEST(ChainVerifierTest, LoadErrorsNameThePath) {
  TempDir dir;
  const std::string garbage = dir.file("garbage.pem", "this is not PEM\n");
  auto v = ChainVerifier::load(garbage, "");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(v.status().message().find("CA file " + garbage), std::string::npos) << v.status().message();

  const std::string missing = dir.path() + "/nope.pem";
  v = ChainVerifier::load(missing, "");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), StatusCode::kNotFound);
  EXPECT_NE(v.status().message().find(missing), std::string::npos) << v.status().message();

  const std::string ca_file = dir.file("ca.pem", pki().ca.root.cert_pem);
  v = ChainVerifier::load(ca_file, garbage);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("CRL file " + garbage), std::string::npos) << v.status().message();

  // A truncated CA bundle: the first certificate, then half of a second one.
  const std::string& pem = pki().ca.root.cert_pem;
  const std::string truncated = dir.file("truncated.pem", pem + pem.substr(0, pem.size() / 2));
  v = ChainVerifier::load(truncated, "");
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find(truncated), std::string::npos) << v.status().message();

  // A leaf certificate is not a CA.
  const std::int64_t now = now_unix();
  const std::string leaf_file = dir.file("leaf.pem", must_issue(pki().ca, "leaf", now - 60, now + 60, 5).cert_pem);
  v = ChainVerifier::load(leaf_file, "");
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("is not a CA certificate"), std::string::npos) << v.status().message();

  // A CRL signed by another CA is refused at load.
  auto foreign = testing::make_crl(pki().other, {1}, now - 60, now + 3600);
  ASSERT_TRUE(foreign.ok());
  const std::string foreign_file = dir.file("foreign.crl", *foreign);
  v = ChainVerifier::load(ca_file, foreign_file);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("not signed by a CA in " + ca_file), std::string::npos) << v.status().message();
}

TEST(ChainVerifierTest, GarbageChainsAreRefusedNotCrashed) {
  TempDir dir;
  ChainVerifier v = must_load(dir.file("ca.pem", pki().ca.root.cert_pem), "");
  EXPECT_EQ(v.verify({}, now_unix()).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(v.verify({"garbage"}, now_unix()).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(v.verify({pki().ca.root.cert_pem, "garbage"}, now_unix()).code(), StatusCode::kPermissionDenied);
  // The verifier moves.
  ChainVerifier moved = std::move(v);
  const std::int64_t now = now_unix();
  EXPECT_TRUE(moved.verify({must_issue(pki().ca, "e", now - 60, now + 60, 6).cert_pem}, now).ok());
}

TEST(KeyFingerprintTest, StaysTheSameWhenTheCertificateIsRenewed) {
  const std::int64_t now = now_unix();
  KeyAndCertificate first = must_issue(pki().ca, "engine-1", now - 60, now + 3600, 10);
  auto renewed = testing::issue_for_key(pki().ca, first.key_pem, "engine-1", now, now + 7200, 11);
  ASSERT_TRUE(renewed.ok()) << renewed.status().to_string();
  EXPECT_TRUE(check_key_matches_certificate(*renewed).ok());
  auto a = certificate_facts_of_pem(first.cert_pem);
  auto b = certificate_facts_of_pem(renewed->cert_pem);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->key_fingerprint, b->key_fingerprint);
  EXPECT_NE(a->cert_fingerprint, b->cert_fingerprint);
  EXPECT_NE(a->key_fingerprint, a->cert_fingerprint);
  EXPECT_NE(b->key_fingerprint, b->cert_fingerprint);
  KeyAndCertificate other = must_issue(pki().ca, "engine-1", now - 60, now + 3600, 12);
  EXPECT_NE(certificate_facts_of_pem(other.cert_pem)->key_fingerprint, a->key_fingerprint);
}

// ---- Encrypted private keys ----

constexpr std::string_view kPassphrase = "correct horse battery staple";

TEST(EncryptedKeyTest, RoundTripAndWrongPassphrase) {
  auto kc = generate_self_signed("testudo-controller");
  ASSERT_TRUE(kc.ok());
  EXPECT_FALSE(is_encrypted_private_key_pem(kc->key_pem));
  auto encrypted = encrypt_private_key_pem(kc->key_pem, kPassphrase);
  ASSERT_TRUE(encrypted.ok()) << encrypted.status().to_string();
  EXPECT_TRUE(is_encrypted_private_key_pem(*encrypted));
  EXPECT_EQ(encrypted->rfind("-----BEGIN ENCRYPTED PRIVATE KEY-----", 0), 0u);
  EXPECT_EQ(encrypted->find(kc->key_pem.substr(28, 40)), std::string::npos);
  // An encrypted key cannot be used as is.
  EXPECT_FALSE(check_key_matches_certificate({*encrypted, kc->cert_pem}).ok());

  auto decrypted = decrypt_private_key_pem(*encrypted, kPassphrase);
  ASSERT_TRUE(decrypted.ok()) << decrypted.status().to_string();
  EXPECT_FALSE(is_encrypted_private_key_pem(*decrypted));
  EXPECT_EQ(*decrypted, kc->key_pem);
  EXPECT_TRUE(check_key_matches_certificate({*decrypted, kc->cert_pem}).ok());

  const std::string wrong = "Tr0ub4dor&3-wrong-passphrase";
  auto refused = decrypt_private_key_pem(*encrypted, wrong);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(refused.status().message(), "wrong passphrase for the private key");
  EXPECT_EQ(refused.status().message().find(wrong), std::string::npos);

  // Salted: two encryptions of one key differ.
  auto again = encrypt_private_key_pem(kc->key_pem, kPassphrase);
  ASSERT_TRUE(again.ok());
  EXPECT_NE(*again, *encrypted);
}

TEST(EncryptedKeyTest, EdgeCases) {
  auto kc = generate_self_signed("k");
  ASSERT_TRUE(kc.ok());
  EXPECT_EQ(encrypt_private_key_pem(kc->key_pem, "").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(encrypt_private_key_pem("garbage", "pw").status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(encrypt_private_key_pem(kc->key_pem, std::string(2000, 'p')).ok());
  // An unencrypted key is returned as is, whatever the passphrase.
  EXPECT_EQ(*decrypt_private_key_pem(kc->key_pem, "anything"), kc->key_pem);
  EXPECT_EQ(*decrypt_private_key_pem(kc->key_pem, ""), kc->key_pem);
  // A damaged encrypted key is malformed input, not a wrong passphrase.
  auto damaged = decrypt_private_key_pem(
      "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", "pw");
  ASSERT_FALSE(damaged.ok());
  EXPECT_EQ(damaged.status().code(), StatusCode::kInvalidArgument);
  auto encrypted = encrypt_private_key_pem(kc->key_pem, "pw");
  ASSERT_TRUE(encrypted.ok());
  EXPECT_EQ(encrypt_private_key_pem(*encrypted, "pw").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(decrypt_private_key_pem(*encrypted, "").status().code(), StatusCode::kInvalidArgument);
}

TEST(LoadKeyAndCertificateTest, PlainEncryptedAndMismatched) {
  TempDir dir;
  const std::int64_t now = now_unix();
  KeyAndCertificate controller = must_issue(pki().ca, "testudo-controller", now - 60, now + 86400, 20);
  const std::string cert_file = dir.file("controller-cert.pem", controller.cert_pem);

  const std::string plain_key = dir.private_file("plain-key.pem", controller.key_pem);
  auto loaded = load_key_and_certificate(plain_key, cert_file, std::nullopt);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->cert_pem, controller.cert_pem);

  auto encrypted = encrypt_private_key_pem(controller.key_pem, kPassphrase);
  ASSERT_TRUE(encrypted.ok());
  const std::string enc_key = dir.private_file("enc-key.pem", *encrypted);
  loaded = load_key_and_certificate(enc_key, cert_file, std::string(kPassphrase));
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->key_pem, controller.key_pem);
  auto ctx = Context::server(ServerOptions{*loaded});
  EXPECT_TRUE(ctx.ok()) << ctx.status().to_string();

  auto no_pass = load_key_and_certificate(enc_key, cert_file, std::nullopt);
  ASSERT_FALSE(no_pass.ok());
  EXPECT_NE(no_pass.status().message().find("passphrase is required"), std::string::npos);
  EXPECT_NE(no_pass.status().message().find(enc_key), std::string::npos);
  auto wrong = load_key_and_certificate(enc_key, cert_file, std::string("nope-not-it"));
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(wrong.status().message().find("wrong passphrase"), std::string::npos);
  EXPECT_EQ(wrong.status().message().find("nope-not-it"), std::string::npos);

  KeyAndCertificate stranger = must_issue(pki().ca, "other", now - 60, now + 86400, 21);
  const std::string other_cert = dir.file("other-cert.pem", stranger.cert_pem);
  auto mismatch = load_key_and_certificate(plain_key, other_cert, std::nullopt);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.status().message().find("does not match"), std::string::npos) << mismatch.status().message();

  // The key file must be owner-only (docs/threat-model.md T7).
  const std::string loose = dir.file("loose-key.pem", controller.key_pem);
  fs::permissions(loose, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  auto refused = load_key_and_certificate(loose, cert_file, std::nullopt);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied);
  auto missing = load_key_and_certificate(plain_key, dir.path() + "/missing.pem", std::nullopt);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("missing.pem"), std::string::npos);
}

}  // namespace
}  // namespace testudo::tls
