#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "auth/capability.h"
#include "auth/connection_file.h"

namespace testudo::auth {
namespace {

crypto::Digest filled(std::uint8_t v) {
  crypto::Digest d;
  d.fill(std::byte{v});
  return d;
}

TEST(CapabilityTest, ProofDependsOnSecretRoleAndSession) {
  auto base = capability_proof(filled(1), wire::Role::kClient, filled(9));
  EXPECT_EQ(base, capability_proof(filled(1), wire::Role::kClient, filled(9)));
  EXPECT_NE(base, capability_proof(filled(2), wire::Role::kClient, filled(9)));   // other secret
  EXPECT_NE(base, capability_proof(filled(1), wire::Role::kEngine, filled(9)));   // other role
  EXPECT_NE(base, capability_proof(filled(1), wire::Role::kClient, filled(8)));   // other TLS session
}

TEST(HelloTest, RoundTripAndGarbage) {
  Hello h{wire::Role::kEngine, "abc123", filled(7)};
  auto d = decode_hello(encode_hello(h));
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->role, h.role);
  EXPECT_EQ(d->instance, h.instance);
  EXPECT_EQ(d->proof, h.proof);
  std::string enc = encode_hello(h);
  for (std::size_t n = 0; n < enc.size(); ++n) EXPECT_FALSE(decode_hello(enc.substr(0, n)).ok());
  enc[0] = 3;  // the controller role cannot say hello
  EXPECT_FALSE(decode_hello(enc).ok());
}

TEST(HelloTest, CarriesALoginAndRefusesMalformedOnes) {
  Hello h{wire::Role::kClient, "i1", filled(3), LoginMethod::kPassword, std::string("n,,n=alice,r=\0nonce", 19)};
  const std::string enc = encode_hello(h);
  auto d = decode_hello(enc);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->login, LoginMethod::kPassword);
  EXPECT_EQ(d->login_message, h.login_message);  // binary-safe
  EXPECT_EQ(d->proof, h.proof);
  // A key hello carries no login at all: it is byte for byte the hello before logins existed.
  Hello key{wire::Role::kClient, "i1", filled(3)};
  EXPECT_EQ(encode_hello(key).size(), 1 + 4 + 2 + 32u);
  // Truncated anywhere inside the login, trailing bytes, an unknown method, or "key" spelled
  // out as a login: malformed.
  for (std::size_t n = encode_hello(key).size() + 1; n < enc.size(); ++n) EXPECT_FALSE(decode_hello(enc.substr(0, n)).ok());
  EXPECT_FALSE(decode_hello(enc + "x").ok());
  std::string unknown = enc;
  unknown[encode_hello(key).size()] = 9;
  EXPECT_FALSE(decode_hello(unknown).ok());
  std::string key_as_login = enc;
  key_as_login[encode_hello(key).size()] = 0;
  EXPECT_FALSE(decode_hello(key_as_login).ok());
  // A login message over the bound is refused before it is copied.
  Hello big = h;
  big.login_message.assign(kMaxLoginMessageBytes + 1, 'a');
  EXPECT_FALSE(decode_hello(encode_hello(big)).ok());
}

class ConnectionFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/testudo-auth-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/controller-client.json";
    info_.role = wire::Role::kClient;
    info_.host = "127.0.0.1";
    info_.port = 4242;
    info_.fingerprint = "sha256:" + std::string(64, 'a');
    info_.capability = filled(0x5a);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_, path_;
  ConnectionInfo info_;
};

TEST_F(ConnectionFileTest, SavesOwnerOnlyAndLoadsBack) {
  ASSERT_TRUE(save_connection_file(path_, info_).ok());
  struct stat st {};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto loaded = load_connection_file(path_, wire::Role::kClient);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->port, 4242);
  EXPECT_EQ(loaded->capability, info_.capability);
  EXPECT_EQ(loaded->fingerprint, info_.fingerprint);
}

TEST_F(ConnectionFileTest, AnSshGatewayIsKeptAndABadOneRefused) {
  info_.ssh = "alice@gateway.example.org:2222";
  ASSERT_TRUE(save_connection_file(path_, info_).ok());
  auto loaded = load_connection_file(path_, wire::Role::kClient);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->ssh, "alice@gateway.example.org:2222");

  // Without the field: no gateway. With one that would become an ssh option or a shell word:
  // refused, naming the field.
  info_.ssh.clear();
  ASSERT_TRUE(save_connection_file(path_, info_).ok());
  EXPECT_EQ(load_connection_file(path_, wire::Role::kClient)->ssh, "");
  for (const char* bad : {"-oProxyCommand=id", "a b", "x;id", "$(id)", ""}) {
    std::ifstream in(path_);
    nlohmann::json j = nlohmann::json::parse(in);
    j["ssh"] = bad;
    auto parsed = parse_connection_info(j.dump());
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find("\"ssh\""), std::string::npos) << parsed.status().message();
  }
}

// docs/threat-model.md T7: a connection file another local user can read is refused, and the error
// says which file and how to fix it, without echoing the secret.
TEST_F(ConnectionFileTest, GroupReadableFileIsRefused) {
  ASSERT_TRUE(save_connection_file(path_, info_).ok());
  ASSERT_EQ(chmod(path_.c_str(), 0640), 0);
  auto loaded = load_connection_file(path_, wire::Role::kClient);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(loaded.status().message().find(path_), std::string::npos);
  EXPECT_NE(loaded.status().message().find("chmod 600"), std::string::npos);
  EXPECT_EQ(loaded.status().message().find(crypto::to_hex(info_.capability)), std::string::npos);
}

TEST_F(ConnectionFileTest, WrongRoleIsRefused) {
  ASSERT_TRUE(save_connection_file(path_, info_).ok());
  auto loaded = load_connection_file(path_, wire::Role::kEngine);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("not a engine"), std::string::npos);
}

TEST(ConnectionInfoParseTest, RejectsMalformed) {
  EXPECT_FALSE(parse_connection_info("").ok());
  EXPECT_FALSE(parse_connection_info("[]").ok());
  EXPECT_FALSE(parse_connection_info(R"({"version":1})").ok());
  EXPECT_FALSE(parse_connection_info(
                   R"({"version":1,"role":"client","host":"h","port":70000,"fingerprint":"x","capability":"00"})")
                   .ok());
  std::string good = R"({"version":1,"role":"engine","host":"h","port":7,"fingerprint":"sha256:)" +
                     std::string(64, 'b') + R"(","capability":")" + std::string(64, 'c') + R"("})";
  EXPECT_TRUE(parse_connection_info(good).ok());
  std::string short_cap = good;
  short_cap.replace(short_cap.find(std::string(64, 'c')), 64, std::string(62, 'c'));
  EXPECT_FALSE(parse_connection_info(short_cap).ok());
}

// A file from a newer testudo is refused as such, naming its version, even when its other
// fields are ones this code does not know.
TEST(ConnectionInfoParseTest, RefusesANewerVersionNamingIt) {
  auto newer = parse_connection_info(R"({"version":2,"role":"client","endpoint":"quic://h:7"})");
  ASSERT_FALSE(newer.ok());
  EXPECT_EQ(newer.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(newer.status().message().find("format version 2 was written by a newer testudo; this one reads version 1"),
            std::string::npos)
      << newer.status().message();
  for (const char* bad : {R"({"version":0})", R"({"version":-1})", R"({"version":"1"})", R"({"version":1.5})"}) {
    auto refused = parse_connection_info(bad);
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace testudo::auth
