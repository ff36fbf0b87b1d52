// Kerberos logins against a real MIT KDC. The KDC, its principals, keytabs and credential
// caches are made by tests/python/test_kerberos_gss.py (tests/python/krb5kdc.py), which runs
// this binary with them in the environment; without them (plain ctest) every test skips.
//
//   KRB5_CONFIG, KRB5CCNAME, KRB5RCACHEDIR   the fixture's realm, alice's tickets, replay cache
//   TESTUDO_TEST_KRB5_KEYTAB                 keytab of TESTUDO_TEST_KRB5_SERVICE
//   TESTUDO_TEST_KRB5_OTHER_SERVICE          a service the KDC knows, not in that keytab
//   TESTUDO_TEST_KRB5_ROTATED_SERVICE/_KEYTAB a service whose key changed after its keytab was made
//   TESTUDO_TEST_KRB5_SKEWED_CCACHE          alice's tickets, with the clock an hour ahead
//   TESTUDO_TEST_KRB5_EXPIRED_CCACHE         alice's tickets, expired
#include "auth/kerberos_login.h"

#include <gssapi/gssapi.h>
#include <gssapi/gssapi_krb5.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

namespace testudo::auth {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

ChannelBinding binding_of(std::uint8_t fill) {
  ChannelBinding b;
  b.fill(std::byte{fill});
  return b;
}

class KerberosLoginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    keytab_ = env("TESTUDO_TEST_KRB5_KEYTAB");
    service_ = env("TESTUDO_TEST_KRB5_SERVICE");
    if (keytab_.empty() || service_.empty()) GTEST_SKIP() << "needs the KDC of tests/python/test_kerberos_gss.py";
    ccache_ = env("KRB5CCNAME");
    auto acceptor = KerberosAcceptor::create(keytab_, service_);
    ASSERT_TRUE(acceptor.ok()) << acceptor.status().message();
    acceptor_ = *acceptor;
  }
  void TearDown() override {
    if (!ccache_.empty()) setenv("KRB5CCNAME", ccache_.c_str(), 1);
  }

  std::string keytab_, service_, ccache_;
  std::shared_ptr<KerberosAcceptor> acceptor_;
};

TEST_F(KerberosLoginTest, MutualChannelBoundLoginProvesTheClientPrincipal) {
  EXPECT_EQ(acceptor_->principal(), service_ + "@TESTUDO.TEST");
  const auto binding = binding_of(7);
  auto client = make_kerberos_login_client(service_);
  EXPECT_FALSE(client->finished().ok());
  auto first = client->start(binding);
  ASSERT_TRUE(first.ok()) << first.status().message();
  auto server = acceptor_->begin(binding);
  EXPECT_EQ(server->claimed_identity(), "");
  auto step = server->step(*first);
  ASSERT_TRUE(step.ok()) << step.status().message();
  ASSERT_TRUE(step->identity.has_value());
  EXPECT_EQ(step->identity->identity, "krb:alice@TESTUDO.TEST");
  EXPECT_TRUE(step->identity->groups.empty());
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch()).count();
  // The session ends with the ticket (10 hours in the fixture's realm), give or take the
  // acceptor's allowed clock skew (5 minutes).
  EXPECT_GT(step->identity->expires_at, now + 9 * 3600);
  EXPECT_LE(step->identity->expires_at, now + 10 * 3600 + 305);
  EXPECT_EQ(server->claimed_identity(), "krb:alice@TESTUDO.TEST");
  ASSERT_FALSE(step->reply.empty());  // the AP-REP: mutual authentication
  // Before the controller's reply, the client has not verified it.
  EXPECT_FALSE(client->finished().ok());
  auto answer = client->step(step->reply);
  ASSERT_TRUE(answer.ok()) << answer.status().message();
  EXPECT_FALSE(answer->has_value());
  EXPECT_TRUE(client->finished().ok());
  // Nothing more is taken on either side.
  EXPECT_FALSE(server->step(*first).ok());
  EXPECT_FALSE(client->step(step->reply).ok());
  // The client knows when its ticket ends, and renews with a fresh AP-REQ on the same session
  // (the controller's renewal check is a login on the connection's binding).
  EXPECT_GT(client->expires_at(), now + 9 * 3600);
  EXPECT_LE(client->expires_at(), step->identity->expires_at);
  auto fresh = client->renew();
  ASSERT_TRUE(fresh.ok()) << fresh.status().message();
  EXPECT_NE(*fresh, *first);
  auto renewed = acceptor_->begin(binding)->step(*fresh);
  ASSERT_TRUE(renewed.ok()) << renewed.status().message();
  EXPECT_EQ(renewed->identity->identity, "krb:alice@TESTUDO.TEST");
  EXPECT_FALSE(acceptor_->begin(binding_of(70))->step(*fresh).ok());
  EXPECT_FALSE(make_kerberos_login_client(service_)->renew().ok());
}

TEST_F(KerberosLoginTest, AnAuthenticatorForAnotherTlsSessionIsRefused) {
  // A relay: the client's TLS session (binding 1) ends at the man in the middle, who passes
  // the AP-REQ on over its own session to the controller (binding 2).
  auto client = make_kerberos_login_client(service_);
  auto first = client->start(binding_of(1));
  ASSERT_TRUE(first.ok()) << first.status().message();
  auto step = acceptor_->begin(binding_of(2))->step(*first);
  ASSERT_FALSE(step.ok());
  EXPECT_NE(step.status().message().find("channel binding mismatch"), std::string::npos) << step.status().message();
}

TEST_F(KerberosLoginTest, AnInitiatorWithoutChannelBindingsIsRefused) {
  // MIT's acceptor takes an AP-REQ without bindings even when it has some; the login must not.
  OM_uint32 minor = 0;
  std::string service = service_;
  gss_buffer_desc name_buf{service.size(), service.data()};
  gss_name_t target = GSS_C_NO_NAME;
  ASSERT_FALSE(GSS_ERROR(gss_import_name(&minor, &name_buf, GSS_KRB5_NT_PRINCIPAL_NAME, &target)));
  gss_ctx_id_t ctx = GSS_C_NO_CONTEXT;
  gss_buffer_desc out{0, nullptr};
  OM_uint32 major = gss_init_sec_context(&minor, GSS_C_NO_CREDENTIAL, &ctx, target, gss_mech_krb5,
                                         GSS_C_MUTUAL_FLAG | GSS_C_REPLAY_FLAG, 0, GSS_C_NO_CHANNEL_BINDINGS,
                                         GSS_C_NO_BUFFER, nullptr, &out, nullptr, nullptr);
  ASSERT_FALSE(GSS_ERROR(major)) << major;
  std::string token(static_cast<const char*>(out.value), out.length);
  gss_release_buffer(&minor, &out);
  gss_delete_sec_context(&minor, &ctx, GSS_C_NO_BUFFER);
  gss_release_name(&minor, &target);
  auto step = acceptor_->begin(binding_of(3))->step(token);
  ASSERT_FALSE(step.ok());
  EXPECT_NE(step.status().message().find("not bound to this TLS session"), std::string::npos)
      << step.status().message();
}

TEST_F(KerberosLoginTest, AReplayedAuthenticatorIsRefused) {
  const auto binding = binding_of(4);
  auto client = make_kerberos_login_client(service_);
  auto first = client->start(binding);
  ASSERT_TRUE(first.ok()) << first.status().message();
  ASSERT_TRUE(acceptor_->begin(binding)->step(*first).ok());
  auto again = acceptor_->begin(binding)->step(*first);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.status().message().find("replayed"), std::string::npos) << again.status().message();
}

TEST_F(KerberosLoginTest, TheClientRefusesAReplyThatIsNotFromItsAcceptor) {
  // Mutual authentication: an AP-REP for another login (another session key) does not verify.
  const auto binding = binding_of(5);
  auto one = make_kerberos_login_client(service_);
  auto two = make_kerberos_login_client(service_);
  auto first_one = one->start(binding);
  auto first_two = two->start(binding);
  ASSERT_TRUE(first_one.ok() && first_two.ok());
  auto step = acceptor_->begin(binding)->step(*first_one);
  ASSERT_TRUE(step.ok()) << step.status().message();
  auto answer = two->step(step->reply);
  ASSERT_FALSE(answer.ok());
  EXPECT_NE(answer.status().message().find("did not verify"), std::string::npos) << answer.status().message();
  EXPECT_FALSE(two->finished().ok());
  EXPECT_FALSE(make_kerberos_login_client(service_)->step("garbage").ok());
}

TEST_F(KerberosLoginTest, ATicketForAnotherServiceIsRefused) {
  const std::string other = env("TESTUDO_TEST_KRB5_OTHER_SERVICE");
  ASSERT_FALSE(other.empty());
  const auto binding = binding_of(6);
  auto first = make_kerberos_login_client(other)->start(binding);
  ASSERT_TRUE(first.ok()) << first.status().message();
  auto step = acceptor_->begin(binding)->step(*first);
  ASSERT_FALSE(step.ok());
  EXPECT_NE(step.status().message().find("wrong service"), std::string::npos) << step.status().message();
  // One the KDC does not know: the client says so before sending anything.
  auto unknown = make_kerberos_login_client("testudo/nowhere.invalid")->start(binding);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("KDC knows no service principal testudo/nowhere.invalid"),
            std::string::npos)
      << unknown.status().message();
}

TEST_F(KerberosLoginTest, AStaleKeytabIsNamedAsSuch) {
  const std::string rotated = env("TESTUDO_TEST_KRB5_ROTATED_SERVICE");
  auto acceptor = KerberosAcceptor::create(env("TESTUDO_TEST_KRB5_ROTATED_KEYTAB"), rotated);
  ASSERT_TRUE(acceptor.ok()) << acceptor.status().message();
  const auto binding = binding_of(8);
  auto first = make_kerberos_login_client(rotated)->start(binding);
  ASSERT_TRUE(first.ok()) << first.status().message();
  auto step = (*acceptor)->begin(binding)->step(*first);
  ASSERT_FALSE(step.ok());
  EXPECT_NE(step.status().message().find("lacks the key version"), std::string::npos) << step.status().message();
}

TEST_F(KerberosLoginTest, ClockSkewBeyondTheLimitIsRefused) {
  setenv("KRB5CCNAME", env("TESTUDO_TEST_KRB5_SKEWED_CCACHE").c_str(), 1);
  const auto binding = binding_of(9);
  auto first = make_kerberos_login_client(service_)->start(binding);
  ASSERT_TRUE(first.ok()) << first.status().message();
  auto step = acceptor_->begin(binding)->step(*first);
  ASSERT_FALSE(step.ok());
  EXPECT_NE(step.status().message().find("clock skew too great"), std::string::npos) << step.status().message();
}

TEST_F(KerberosLoginTest, ExpiredOrMissingTicketsSayRunKinit) {
  setenv("KRB5CCNAME", env("TESTUDO_TEST_KRB5_EXPIRED_CCACHE").c_str(), 1);
  auto expired = make_kerberos_login_client(service_)->start(binding_of(10));
  ASSERT_FALSE(expired.ok());
  EXPECT_NE(expired.status().message().find("expired (run kinit)"), std::string::npos) << expired.status().message();
  const std::string missing = "FILE:" + std::filesystem::temp_directory_path().string() + "/testudo-no-such-ccache";
  setenv("KRB5CCNAME", missing.c_str(), 1);
  auto none = make_kerberos_login_client(service_)->start(binding_of(10));
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().message(), "no Kerberos credentials (run kinit)");
}

TEST_F(KerberosLoginTest, DamagedAuthenticatorsAreRefusedNotCrashedOn) {
  // A valid AP-REQ with bytes flipped, and its truncations. Kerberos leaves a few fields in
  // the clear unauthenticated (RFC 4120: unused ap-options bits, the ticket's realm and
  // name); a flip there may still log in, but only as the ticket's own client. Everything
  // else (the encrypted ticket and authenticator, the DER structure) must be refused.
  const auto binding = binding_of(11);
  auto first = make_kerberos_login_client(service_)->start(binding);
  ASSERT_TRUE(first.ok()) << first.status().message();
  const std::string token = *first;
  int tried = 0, refused = 0;
  for (std::size_t i = 0; i < token.size(); i += 7) {
    std::string flipped = token;
    flipped[i] = static_cast<char>(flipped[i] ^ 0x5a);
    auto step = acceptor_->begin(binding)->step(flipped);
    ++tried;
    if (!step.ok()) {
      ++refused;
    } else {
      ASSERT_TRUE(step->identity.has_value());
      EXPECT_EQ(step->identity->identity, "krb:alice@TESTUDO.TEST") << "byte " << i;
      // 17 bytes of GSS framing, then the AP-REQ, whose ticket enc-part starts at 111 with the
      // fixture's principal names.
      EXPECT_LT(i, 17u + 111u) << "a flip inside the encrypted ticket logged in: byte " << i;
    }
    EXPECT_FALSE(acceptor_->begin(binding)->step(std::string_view(token).substr(0, i)).ok()) << "length " << i;
  }
  EXPECT_GE(refused, tried - 3);
}

// Without a KDC: an acceptor over a keytab written here (a fixed AES-256 key; the format of
// MIT's FILE keytabs, version 0x502), fed what a peer may send before it proves anything.
class KerberosAcceptorWithoutKdcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("testudo-krb5-unit-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    const std::string own_config = (dir_ / "krb5.conf").string();
    if (env("KRB5_CONFIG").empty() || env("KRB5_CONFIG") == own_config) {
      std::ofstream(dir_ / "krb5.conf") << "[libdefaults]\n  default_realm = TESTUDO.TEST\n";
      setenv("KRB5_CONFIG", (dir_ / "krb5.conf").c_str(), 1);
      setenv("KRB5RCACHEDIR", dir_.c_str(), 1);
    }
    keytab_ = (dir_ / "unit.keytab").string();
    write_keytab(keytab_, {"testudo", "unit.test"}, "TESTUDO.TEST");
    ASSERT_EQ(chmod(keytab_.c_str(), 0600), 0);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static void write_keytab(const std::string& path, const std::vector<std::string>& components,
                           const std::string& realm) {
    std::string entry;
    auto u16 = [&entry](std::size_t v) { entry += static_cast<char>(v >> 8), entry += static_cast<char>(v & 0xff); };
    auto u32 = [&u16](std::uint32_t v) { u16(v >> 16), u16(v & 0xffff); };
    auto counted = [&](const std::string& s) { u16(s.size()), entry += s; };
    u16(components.size());
    counted(realm);
    for (const auto& c : components) counted(c);
    u32(1);           // KRB5_NT_PRINCIPAL
    u32(1700000000);  // timestamp
    entry += '\x01';  // kvno (8 bits)
    u16(18);          // aes256-cts-hmac-sha1-96
    counted(std::string(32, '\x42'));
    u32(1);           // kvno (32 bits)
    std::string file("\x05\x02", 2);
    const std::uint32_t n = entry.size();
    for (int shift : {24, 16, 8, 0}) file += static_cast<char>((n >> shift) & 0xff);
    file += entry;
    std::ofstream(path, std::ios::binary) << file;
  }

  std::filesystem::path dir_;
  std::string keytab_;
};

TEST_F(KerberosAcceptorWithoutKdcTest, GarbageIsRefusedWithAnError) {
  auto acceptor = KerberosAcceptor::create(keytab_, "testudo/unit.test");
  ASSERT_TRUE(acceptor.ok()) << acceptor.status().message();
  EXPECT_EQ((*acceptor)->principal(), "testudo/unit.test@TESTUDO.TEST");
  const auto binding = binding_of(1);
  // The GSS-API framing of an AP-REQ: [APPLICATION 0] { OID 1.2.840.113554.1.2.2, 01 00, ... }.
  const std::string framed("\x60\x10\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x01\x00\x6e\x01\x00", 18);
  std::string oversized(kMaxLoginMessageBytes, '\x60');
  for (const std::string& token : {std::string(), std::string("\x60", 1), std::string("\x60\x84\xff\xff\xff\xff", 6),
                                   framed, oversized, std::string(100, '\0')}) {
    auto server = (*acceptor)->begin(binding);
    auto step = server->step(token);
    EXPECT_FALSE(step.ok());
    EXPECT_EQ(server->claimed_identity(), "");
    EXPECT_FALSE(server->step(token).ok());
  }
}

TEST_F(KerberosAcceptorWithoutKdcTest, AKeytabOthersCanReadOrWithoutThePrincipalIsRefused) {
  ASSERT_EQ(chmod(keytab_.c_str(), 0644), 0);
  auto loose = KerberosAcceptor::create(keytab_, "testudo/unit.test");
  ASSERT_FALSE(loose.ok());
  EXPECT_EQ(loose.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(loose.status().message().find("keytab " + keytab_ + " has mode 0644"), std::string::npos)
      << loose.status().message();
  ASSERT_EQ(chmod(keytab_.c_str(), 0600), 0);
  // A keytab without the principal's key: said at start, not at the first login.
  auto wrong = KerberosAcceptor::create(keytab_, "testudo/elsewhere");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("has no key for testudo/elsewhere@TESTUDO.TEST"), std::string::npos)
      << wrong.status().message();
  EXPECT_FALSE(KerberosAcceptor::create((dir_ / "missing.keytab").string(), "testudo/unit.test").ok());
  EXPECT_FALSE(KerberosAcceptor::create("", "testudo/unit.test").ok());
}

}  // namespace
}  // namespace testudo::auth
