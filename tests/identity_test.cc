// Identities, trust modes, key administration, authorization policy and the audit log
// (docs/threat-model.md T6, T8, T10, T14, T15, T16) over real processes: the testudo
// controller and engines, real TLS on loopback, real key files, a real CA made with OpenSSL,
// and the `testudo keys` command line. Each test plays strangers, pending and revoked keys,
// expired and foreign certificates, wrong passphrases and under-privileged users, and checks
// both what they get and what the audit log says.
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <sstream>
#include <thread>

#include "auth/connection_file.h"
#include "auth/identity.h"
#include "auth/registration.h"
#include "auth/session.h"
#include "crypto/crypto.h"
#include "crypto/private_file.h"
#include "net/net.h"
#include "test_cluster.h"
#include "tls/test_pki.h"
#include "tls/tls.h"

namespace testudo::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::int64_t now_unix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool contains(std::string_view haystack, std::string_view needle) { return haystack.find(needle) != std::string_view::npos; }


void write_file(const std::string& path, const std::string& text, mode_t mode = 0600) {
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << text;
  }
  ::chmod(path.c_str(), mode);
}

// A fresh directory under the cluster's home for an actor's identity.
std::string identity_dir(const TestCluster& cluster, const std::string& who) {
  std::string dir = cluster.home() + "/users/" + who;
  EXPECT_TRUE(crypto::ensure_private_dir(dir).ok());
  return dir;
}

// A client identity `who` (CN = who) in its own directory; returns the directory.
std::string make_user(const TestCluster& cluster, const std::string& who, std::optional<std::string> passphrase = {}) {
  std::string dir = identity_dir(cluster, who);
  auth::CreateIdentityOptions o;
  o.common_name = who;
  o.passphrase = std::move(passphrase);
  auto kc = auth::create_identity(dir, "client", o);
  EXPECT_TRUE(kc.ok()) << kc.status().to_string();
  return dir;
}

std::string fingerprint_of_user(const std::string& dir) {
  auto cert = auth::load_identity_certificate(dir, "client");
  EXPECT_TRUE(cert.ok());
  auto fp = tls::key_fingerprint_of_pem(cert.ok() ? *cert : "");
  EXPECT_TRUE(fp.ok());
  return fp.ok() ? *fp : "";
}

StatusOr<std::unique_ptr<Client>> connect_as(const TestCluster& cluster, const std::string& dir,
                                             const std::string& passphrase_from = "") {
  ClientOptions o;
  o.profile = cluster.profile();
  o.identity_dir = dir;
  o.key_passphrase_from = passphrase_from;
  o.connect_timeout = 5s;
  // These users are the controller's to admit or refuse (what this file tests); the engines
  // were told to trust only the owner, so sealed requests of theirs would be refused by the
  // engines, not the controller (tests/python/test_e2e.py and test_e2e_ca.py test that).
  o.e2e = ClientOptions::E2e::kOff;
  return Client::connect(o);
}

// `testudo keys ...` as the cluster's owner; returns (exit code, output).
std::pair<int, std::string> keys(const TestCluster& cluster, const std::string& args) {
  return run_command(testudo_binary() + " --profile " + cluster.profile() + " keys " + args);
}

// Every audit line so far (flushed within 20 ms; waits for `min_lines` lines matching `match`).
std::vector<nlohmann::json> audit_lines(const TestCluster& cluster) {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_file(cluster.paths().log_dir + "/audit.jsonl"));
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "audit line is not JSON: " << line;
    if (!j.is_discarded()) out.push_back(std::move(j));
  }
  return out;
}

std::size_t count_audit(const TestCluster& cluster, const std::string& operation, const std::string& outcome,
                        const std::string& identity) {
  std::size_t n = 0;
  for (const auto& j : audit_lines(cluster)) {
    if (j.value("operation", "") == operation && j.value("outcome", "") == outcome &&
        (identity.empty() || j.value("identity", "") == identity)) {
      ++n;
    }
  }
  return n;
}

bool audited(const TestCluster& cluster, const std::string& operation, const std::string& outcome,
             const std::string& identity, std::chrono::milliseconds timeout = 3s) {
  return wait_until([&] { return count_audit(cluster, operation, outcome, identity) > 0; }, timeout);
}

// Opens one session presenting `identity` directly (bypassing the client library's own checks
// of its key) and closes it again; returns how the controller answered.
Status try_session(const auth::ConnectionInfo& info, const tls::KeyAndCertificate& identity) {
  net::EventLoop loop;
  std::thread runner([&] { loop.run(); });
  std::promise<Status> done;
  loop.post([&] {
    auth::open_session(loop, {info, identity, "raw", 5s}, [&](StatusOr<auth::Session> s) {
      if (s.ok()) s->connection->close(ok_status());
      done.set_value(s.ok() ? ok_status() : s.status());
    });
  });
  Status st = done.get_future().get();
  loop.stop();
  runner.join();
  return st;
}

std::string cloudpickled_call() {
  return local_python(
      "import sys, cloudpickle; sys.stdout.buffer.write(cloudpickle.dumps((lambda: 6 * 7, (), {}), protocol=5))");
}

// ---------------- manual trust mode (default) ----------------

// A stranger with the client capability is refused (it is not in the trust directory); an
// administrator drops its certificate into security/trust/client/ and it gets in within a
// second, without restarting anything. The built-in policy still lets it do nothing.
TEST(IdentityTest, Manual_StrangerRefusedUntilItsCertificateIsPlaced) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const std::string alice = make_user(*cluster, "alice");
  const std::string fp = fingerprint_of_user(alice);

  auto refused = connect_as(*cluster, alice);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied) << refused.status().to_string();
  EXPECT_TRUE(contains(refused.status().message(), "not trusted")) << refused.status().message();
  EXPECT_TRUE(audited(*cluster, "login", "rejected", fp));

  auto cert = auth::load_identity_certificate(alice, "client");
  ASSERT_TRUE(cert.ok());
  write_file(cluster->paths().security_dir + "/trust/client/alice.pem", *cert, 0600);
  std::unique_ptr<Client> client;
  ASSERT_TRUE(wait_until(
      [&] {
        auto c = connect_as(*cluster, alice);
        if (c.ok()) client = std::move(c).value();
        return client != nullptr;
      },
      5s));
  EXPECT_TRUE(audited(*cluster, "login", "accepted", fp));
  // Default deny: trusted is not authorized.
  auto ids = client->engine_ids();
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), StatusCode::kPermissionDenied) << ids.status().to_string();
  auto run = client->execute({0}, "x = 1").get(10s);
  ASSERT_TRUE(run.ok());
  EXPECT_EQ((*run)[0].status.code(), StatusCode::kPermissionDenied) << (*run)[0].status.to_string();
  EXPECT_TRUE(audited(*cluster, "execute", "denied", fp));
  // The owner is unaffected.
  auto owner = cluster->client();
  ASSERT_TRUE(owner);
  auto ok = owner->execute({0}, "x = 1").get(10s);
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE((*ok)[0].status.ok());
}

// T16: roles are bound to identities too: the owner's client key presenting the engine
// capability is refused (it is trusted as a client, not as an engine), and an engine with a
// key of its own is refused until trusted as an engine.
TEST(IdentityTest, Manual_RolesAreBoundToIdentities) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  auto engine_info = auth::load_connection_file(cluster->paths().engine_connection_file, wire::Role::kEngine);
  ASSERT_TRUE(engine_info.ok());
  auto owner = auth::load_identity(cluster->home() + "/identity", "client");
  ASSERT_TRUE(owner.ok()) << owner.status().to_string();
  Status st = try_session(*engine_info, *owner);
  // "Not trusted (yet)" reaches a raw session as kFailedPrecondition (an engine waits on it).
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.to_string();
  EXPECT_TRUE(contains(st.message(), "(engine) is not trusted")) << st.message();

  // An engine process with its own key: refused, never registered, until trusted; it waits
  // and joins once an administrator places its certificate.
  const std::string dir = identity_dir(*cluster, "engine-b");
  ASSERT_TRUE(auth::create_identity(dir, "engine", {}).ok());
  auto pid = launch::spawn_detached({testudo_binary(), "engine", "--profile", cluster->profile(), "--identity-dir", dir},
                                    cluster->paths().log_dir + "/engine-b.log");
  ASSERT_TRUE(pid.ok());
  std::this_thread::sleep_for(1500ms);
  auto client = cluster->client();
  ASSERT_TRUE(client);
  EXPECT_EQ(client->engine_ids()->size(), 1u);
  auto cert = auth::load_identity_certificate(dir, "engine");
  ASSERT_TRUE(cert.ok());
  write_file(cluster->paths().security_dir + "/trust/engine/b.pem", *cert);
  EXPECT_TRUE(cluster->wait_for_engines(2, 15s)) << read_file(cluster->paths().log_dir + "/engine-b.log");
  launch::terminate(*pid, 2s);
}

// ---------------- learn trust mode ----------------

// learn: an unknown key is recorded as pending and refused; `testudo keys accept` admits it;
// `testudo keys revoke` cuts off its live connection at once and refuses it from then on.
TEST(IdentityTest, Learn_PendingAcceptedThenRevokedWhileConnected) {
  auto cluster = TestCluster::start(1, {"--trust", "learn"});
  ASSERT_TRUE(cluster);
  const std::string bob = make_user(*cluster, "bob");
  const std::string fp = fingerprint_of_user(bob);

  auto pending = connect_as(*cluster, bob);
  ASSERT_FALSE(pending.ok());
  EXPECT_TRUE(contains(pending.status().message(), "waiting for approval")) << pending.status().message();
  auto [rc, listed] = keys(*cluster, "list");
  ASSERT_EQ(rc, 0) << listed;
  EXPECT_TRUE(contains(listed, "pending")) << listed;
  EXPECT_TRUE(contains(listed, fp)) << listed;
  EXPECT_TRUE(contains(listed, "bob")) << listed;

  auto [arc, accepted] = keys(*cluster, "accept " + fp.substr(7, 12));
  ASSERT_EQ(arc, 0) << accepted;
  auto client = connect_as(*cluster, bob);
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  EXPECT_TRUE(audited(*cluster, "keys.accept", "allowed", ""));
  EXPECT_TRUE((*client)->connected());

  auto [rrc, revoked] = keys(*cluster, "revoke " + fp);
  ASSERT_EQ(rrc, 0) << revoked;
  // T14: the live connection goes at once, and every reconnection is refused.
  EXPECT_TRUE(wait_until([&] { return !(*client)->connected(); }, 2s)) << "revoked client still connected";
  auto again = connect_as(*cluster, bob);
  ASSERT_FALSE(again.ok());
  EXPECT_TRUE(contains(again.status().message(), "revoked")) << again.status().message();
  EXPECT_TRUE(audited(*cluster, "disconnect", "rejected", fp));
  auto [lrc, after] = keys(*cluster, "show " + fp);
  EXPECT_EQ(lrc, 0) << after;
  EXPECT_TRUE(contains(after, "revoked")) << after;
}

TEST(IdentityTest, Learn_AutoAcceptAdmitsAndRecordsNewKeys) {
  auto cluster = TestCluster::start(1, {"--trust", "learn", "--auto-accept"});
  ASSERT_TRUE(cluster);
  const std::string carol = make_user(*cluster, "carol");
  auto client = connect_as(*cluster, carol);
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  auto [rc, listed] = keys(*cluster, "list");
  ASSERT_EQ(rc, 0) << listed;
  EXPECT_TRUE(contains(listed, fingerprint_of_user(carol))) << listed;
  EXPECT_TRUE(contains(listed, "accepted")) << listed;
}

// Without the "keys" operation, key administration is refused (and audited).
TEST(IdentityTest, KeyAdministrationNeedsThePolicy) {
  auto cluster = TestCluster::start(1, {"--trust", "learn", "--auto-accept"});
  ASSERT_TRUE(cluster);
  const std::string mallory = make_user(*cluster, "mallory");
  auto client = connect_as(*cluster, mallory);
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  auto listed = (*client)->key_admin("list");
  ASSERT_FALSE(listed.ok());
  EXPECT_EQ(listed.status().code(), StatusCode::kPermissionDenied) << listed.status().to_string();
  auto accepted = (*client)->key_admin("accept", fingerprint_of_user(mallory));
  EXPECT_EQ(accepted.status().code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(audited(*cluster, "keys", "denied", fingerprint_of_user(mallory)));
}

// ---------------- expiry and passphrases ----------------

// T15: a certificate past its end date is refused: the client's own loader says so with the
// date, and a peer that presents it anyway is refused by the controller.
TEST(IdentityTest, ExpiredCertificateIsRefused) {
  auto cluster = TestCluster::start(1, {"--trust", "learn", "--auto-accept"});
  ASSERT_TRUE(cluster);
  auto expired = tls::generate_self_signed_for_period("old", now_unix() - 30 * 86400, now_unix() - 86400);
  ASSERT_TRUE(expired.ok()) << expired.status().to_string();
  const std::string dir = identity_dir(*cluster, "old");
  ASSERT_TRUE(crypto::write_private_file(dir + "/client-key.pem", expired->key_pem).ok());
  ASSERT_TRUE(crypto::write_private_file(dir + "/client-cert.pem", expired->cert_pem).ok());
  auto loaded = connect_as(*cluster, dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_TRUE(contains(loaded.status().message(), "expired")) << loaded.status().message();

  // Presenting it anyway (bypassing the loader) fails too, and nothing is admitted.
  auto info = auth::load_connection_file(cluster->paths().client_connection_file, wire::Role::kClient);
  ASSERT_TRUE(info.ok());
  Status st = try_session(*info, *expired);
  EXPECT_FALSE(st.ok());
  auto [rc, listed] = keys(*cluster, "list");
  EXPECT_FALSE(contains(listed, "old")) << "an expired certificate was auto-accepted: " << listed;
}

// T14: an encrypted key needs its passphrase; a wrong one is refused with a clear error that
// does not contain it, from every source kind.
TEST(IdentityTest, EncryptedKeyNeedsTheRightPassphrase) {
  auto cluster = TestCluster::start(1, {"--trust", "learn", "--auto-accept"});
  ASSERT_TRUE(cluster);
  const std::string secret = "correct horse battery staple";
  const std::string dir = make_user(*cluster, "dave", secret);
  EXPECT_TRUE(contains(read_file(dir + "/client-key.pem"), "ENCRYPTED PRIVATE KEY"));
  EXPECT_FALSE(contains(read_file(dir + "/client-key.pem"), secret));

  ::setenv("DAVE_WRONG", "Tr0ub4dor&3", 1);
  auto wrong = connect_as(*cluster, dir, "env:DAVE_WRONG");
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), StatusCode::kPermissionDenied) << wrong.status().to_string();
  EXPECT_TRUE(contains(wrong.status().message(), "wrong passphrase")) << wrong.status().message();
  EXPECT_FALSE(contains(wrong.status().message(), "Tr0ub4dor")) << wrong.status().message();

  auto unset = connect_as(*cluster, dir, "env:DAVE_NOT_SET");
  ASSERT_FALSE(unset.ok());
  EXPECT_TRUE(contains(unset.status().message(), "DAVE_NOT_SET")) << unset.status().message();

  // A passphrase file readable by others is refused like any secret file (T7).
  write_file(cluster->home() + "/dave-pass", secret + "\n", 0644);
  auto loose = connect_as(*cluster, dir, "file:" + cluster->home() + "/dave-pass");
  ASSERT_FALSE(loose.ok());
  EXPECT_TRUE(contains(loose.status().message(), "chmod 600")) << loose.status().message();

  ::chmod((cluster->home() + "/dave-pass").c_str(), 0600);
  auto from_file = connect_as(*cluster, dir, "file:" + cluster->home() + "/dave-pass");
  ASSERT_TRUE(from_file.ok()) << from_file.status().to_string();
  auto from_command = connect_as(*cluster, dir, "command:cat " + cluster->home() + "/dave-pass");
  ASSERT_TRUE(from_command.ok()) << from_command.status().to_string();
  auto failing_command = connect_as(*cluster, dir, "command:false");
  ASSERT_FALSE(failing_command.ok());
  EXPECT_TRUE(contains(failing_command.status().message(), "exit status 1")) << failing_command.status().message();
  ::unsetenv("DAVE_WRONG");
}

// ---------------- every trust mode, every kind of key ----------------

// The trust-mode matrix: for each trust mode, a stranger, a pending key, an accepted key, a key
// revoked while connected, an expired certificate, a certificate from another CA and a wrong
// key passphrase, each with the outcome that mode promises (docs/security.md).
enum class Mode { kManual, kLearn, kAutoAccept, kCa };

std::string mode_name(Mode m) {
  switch (m) {
    case Mode::kManual: return "Manual";
    case Mode::kLearn: return "Learn";
    case Mode::kAutoAccept: return "LearnAutoAccept";
    case Mode::kCa: return "Ca";
  }
  return "?";
}

class TrustModeMatrix : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    auto ca = tls::testing::make_ca("matrix CA");
    auto other = tls::testing::make_ca("someone else's CA");
    ASSERT_TRUE(ca.ok() && other.ok());
    ca_ = *ca;
    other_ca_ = *other;
    files_ = "/tmp/testudo-matrix-" + std::to_string(::getpid());
    std::filesystem::create_directories(files_);
    write_file(files_ + "/ca.pem", ca_.root.cert_pem, 0644);
    std::vector<std::string> args;
    switch (GetParam()) {
      case Mode::kManual: break;
      case Mode::kLearn: args = {"--trust", "learn"}; break;
      case Mode::kAutoAccept: args = {"--trust", "learn", "--auto-accept"}; break;
      case Mode::kCa: args = {"--trust", "ca", "--cafile", files_ + "/ca.pem"}; break;
    }
    cluster_ = TestCluster::start(1, args);
    ASSERT_TRUE(cluster_);
    info_ = *auth::load_connection_file(cluster_->paths().client_connection_file, wire::Role::kClient);
  }
  void TearDown() override { std::filesystem::remove_all(files_); }

  // An identity directory for `cn`: self-signed (the key a user makes with `testudo keys
  // create`) in the trust-directory modes, issued by the CA in ca mode.
  std::string user(const std::string& cn) {
    if (GetParam() != Mode::kCa) return make_user(*cluster_, cn);
    return install(cn, tls::testing::issue(ca_, cn, now_unix() - 3600, now_unix() + 86400, ++serial_));
  }
  std::string install(const std::string& cn, const StatusOr<tls::KeyAndCertificate>& kc) {
    EXPECT_TRUE(kc.ok()) << kc.status().to_string();
    const std::string dir = identity_dir(*cluster_, cn);
    EXPECT_TRUE(crypto::write_private_file(dir + "/client-key.pem", kc->key_pem).ok());
    EXPECT_TRUE(crypto::write_private_file(dir + "/client-cert.pem", kc->cert_pem).ok());
    return dir;
  }
  // Makes `dir`'s key trusted the way this mode's administrator would.
  void trust(const std::string& dir) {
    switch (GetParam()) {
      case Mode::kManual:
        write_file(cluster_->paths().security_dir + "/trust/client/" + std::filesystem::path(dir).filename().string() +
                       ".pem",
                   *auth::load_identity_certificate(dir, "client"));
        break;
      case Mode::kLearn: {
        (void)connect_as(*cluster_, dir);  // first contact makes it pending
        auto [rc, out] = keys(*cluster_, "accept " + fingerprint_of_user(dir));
        EXPECT_EQ(rc, 0) << out;
        break;
      }
      case Mode::kAutoAccept:
      case Mode::kCa:
        break;  // nothing to do: admitted on first contact / by the CA's signature
    }
  }
  StatusOr<std::unique_ptr<Client>> connect_eventually(const std::string& dir) {
    StatusOr<std::unique_ptr<Client>> c = connect_as(*cluster_, dir);
    for (int i = 0; i < 30 && !c.ok(); ++i) {  // a placed file is seen within a second
      std::this_thread::sleep_for(100ms);
      c = connect_as(*cluster_, dir);
    }
    return c;
  }

  tls::testing::TestCa ca_, other_ca_;
  std::string files_;
  std::uint64_t serial_ = 100;
  std::unique_ptr<TestCluster> cluster_;
  auth::ConnectionInfo info_;
};

TEST_P(TrustModeMatrix, StrangerPendingAcceptedRevokedExpiredForeignAndWrongPassphrase) {
  const Mode mode = GetParam();
  // A stranger: a key nobody has seen.
  const std::string stranger = make_user(*cluster_, "stranger");
  auto first = connect_as(*cluster_, stranger);
  if (mode == Mode::kAutoAccept) {
    EXPECT_TRUE(first.ok()) << first.status().to_string();
  } else {
    ASSERT_FALSE(first.ok());
    EXPECT_EQ(first.status().code(), StatusCode::kPermissionDenied);
    const char* expected = mode == Mode::kManual  ? "not trusted"
                           : mode == Mode::kLearn ? "waiting for approval"
                                                  : "not signed by the configured CA";
    EXPECT_TRUE(contains(first.status().message(), expected)) << first.status().message();
  }
  // A pending key: only learn mode records one.
  auto [rc, listed] = keys(*cluster_, "list");
  ASSERT_EQ(rc, 0) << listed;
  EXPECT_EQ(contains(listed, "pending"), mode == Mode::kLearn) << listed;

  // An accepted key: works.
  const std::string alice = user("alice");
  trust(alice);
  auto client = connect_eventually(alice);
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  auto owner = cluster_->client();
  ASSERT_TRUE(owner);

  // Revoked while connected: cut off at once, refused afterwards, in every mode.
  auto [vrc, revoked] = keys(*cluster_, "revoke " + fingerprint_of_user(alice));
  ASSERT_EQ(vrc, 0) << revoked;
  EXPECT_TRUE(wait_until([&] { return !(*client)->connected(); }, 2s)) << "revoked key still connected";
  auto again = connect_as(*cluster_, alice);
  ASSERT_FALSE(again.ok());
  EXPECT_TRUE(contains(again.status().message(), "revoked")) << again.status().message();

  // An expired certificate (from the CA in ca mode), presented anyway: refused, never trusted.
  auto expired = mode == Mode::kCa
                     ? tls::testing::issue(ca_, "old", now_unix() - 30 * 86400, now_unix() - 86400, ++serial_)
                     : tls::generate_self_signed_for_period("old", now_unix() - 30 * 86400, now_unix() - 86400);
  ASSERT_TRUE(expired.ok()) << expired.status().to_string();
  EXPECT_FALSE(try_session(info_, *expired).ok());
  EXPECT_FALSE(connect_as(*cluster_, install("old", expired)).ok());

  // A certificate from another CA: just another unknown key, except with auto-accept.
  const std::string foreign = install("foreign", tls::testing::issue(other_ca_, "foreign", now_unix() - 3600,
                                                                     now_unix() + 86400, 7));
  EXPECT_EQ(connect_as(*cluster_, foreign).ok(), mode == Mode::kAutoAccept);

  // A wrong passphrase: refused on the client's side; the key never reaches the controller.
  const std::string locked = make_user(*cluster_, "locked", std::string("the right one"));
  ::setenv("MATRIX_PASS", "the wrong one", 1);
  auto wrong = connect_as(*cluster_, locked, "env:MATRIX_PASS");
  ASSERT_FALSE(wrong.ok());
  EXPECT_TRUE(contains(wrong.status().message(), "wrong passphrase")) << wrong.status().message();
  EXPECT_EQ(count_audit(*cluster_, "login", "accepted", fingerprint_of_user(locked)), 0u);
  ::unsetenv("MATRIX_PASS");

  // Through all of it, the owner was never disturbed.
  EXPECT_TRUE(owner->connected());
  auto ran = owner->execute({0}, "m = 1").get(10s);
  ASSERT_TRUE(ran.ok());
  EXPECT_TRUE((*ran)[0].status.ok());
}

INSTANTIATE_TEST_SUITE_P(EveryMode, TrustModeMatrix,
                         ::testing::Values(Mode::kManual, Mode::kLearn, Mode::kAutoAccept, Mode::kCa),
                         [](const ::testing::TestParamInfo<Mode>& p) { return mode_name(p.param); });

// ---------------- CA trust mode ----------------

class CaModeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ca = tls::testing::make_ca("testudo test CA");
    ASSERT_TRUE(ca.ok()) << ca.status().to_string();
    ca_ = *ca;
    auto other = tls::testing::make_ca("another CA");
    ASSERT_TRUE(other.ok());
    other_ca_ = *other;
    dir_ = "/tmp/testudo-ca-" + std::to_string(::getpid());
    std::filesystem::create_directories(dir_);
    write_file(dir_ + "/ca.pem", ca_.root.cert_pem, 0644);
    write_crl({});
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void write_crl(const std::vector<std::uint64_t>& serials) {
    auto crl = tls::testing::make_crl(ca_, serials, now_unix() - 60, now_unix() + 86400);
    ASSERT_TRUE(crl.ok()) << crl.status().to_string();
    write_file(dir_ + "/crl.pem.tmp", *crl, 0644);
    std::filesystem::rename(dir_ + "/crl.pem.tmp", dir_ + "/crl.pem");
  }

  // A client identity directory holding a certificate `ca` issued for `cn`.
  std::string issued_user(const TestCluster& cluster, const tls::testing::TestCa& ca, const std::string& cn,
                          std::uint64_t serial, std::int64_t not_before, std::int64_t not_after) {
    auto kc = tls::testing::issue(ca, cn, not_before, not_after, serial);
    EXPECT_TRUE(kc.ok()) << kc.status().to_string();
    const std::string dir = identity_dir(cluster, cn);
    EXPECT_TRUE(crypto::write_private_file(dir + "/client-key.pem", kc->key_pem).ok());
    EXPECT_TRUE(crypto::write_private_file(dir + "/client-cert.pem", kc->cert_pem).ok());
    return dir;
  }

  tls::testing::TestCa ca_, other_ca_;
  std::string dir_;
};

// ca: a certificate from the CA is admitted (and named by its CN in the policy); one from
// another CA is refused; a revoked serial is refused; revoking a connected user by publishing
// a new CRL cuts it off within a second or two.
TEST_F(CaModeTest, CaSignedAdmittedOthersRefusedRevocationIsImmediate) {
  const std::string policy_path = "/tmp/testudo-ca-policy-" + std::to_string(::getpid()) + ".json";
  write_file(policy_path,
             nlohmann::json{{"version", 1},
                            {"rules", {{{"identities", {"cn:erin"}}, {"allow", {"status", "execute", "pull"}}}}}}
                 .dump(),
             0600);
  auto cluster = TestCluster::start(1, {"--trust", "ca", "--cafile", dir_ + "/ca.pem", "--crlfile", dir_ + "/crl.pem",
                                        "--policy", policy_path});
  ASSERT_TRUE(cluster);
  const std::int64_t now = now_unix();
  const std::string erin = issued_user(*cluster, ca_, "erin", 1001, now - 3600, now + 86400);
  const std::string frank = issued_user(*cluster, other_ca_, "frank", 1002, now - 3600, now + 86400);
  const std::string grace = issued_user(*cluster, ca_, "grace", 1003, now - 3600, now + 86400);

  auto client = connect_as(*cluster, erin);
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  auto run = (*client)->execute({0}, "y = 5").get(10s);
  ASSERT_TRUE(run.ok());
  EXPECT_TRUE((*run)[0].status.ok()) << (*run)[0].status.to_string();

  auto foreign = connect_as(*cluster, frank);
  ASSERT_FALSE(foreign.ok());
  EXPECT_TRUE(contains(foreign.status().message(), "certificate refused")) << foreign.status().message();

  write_crl({1003});
  std::this_thread::sleep_for(1500ms);  // the controller looks for a changed CRL every second
  auto revoked = connect_as(*cluster, grace);
  ASSERT_FALSE(revoked.ok());
  EXPECT_TRUE(contains(revoked.status().message(), "revoked")) << revoked.status().message();

  write_crl({1001, 1003});
  EXPECT_TRUE(wait_until([&] { return !(*client)->connected(); }, 4s)) << "revoked CA user still connected";
  std::filesystem::remove(policy_path);
}

// ---------------- authorization policy ----------------

class PolicyTest : public ::testing::Test {
 protected:
  // Two engines (ids 0 and 1); "lim" may only execute on engine 0 and see status; "full" may
  // do everything, including reading others' results.
  void SetUp() override {
    policy_path_ = "/tmp/testudo-policy-" + std::to_string(::getpid()) + ".json";
    write_file(policy_path_, R"({"version": 1, "rules": []})", 0600);
    cluster_ = TestCluster::start(2, {"--trust", "learn", "--auto-accept", "--policy", policy_path_});
    ASSERT_TRUE(cluster_);
    lim_dir_ = make_user(*cluster_, "lim");
    full_dir_ = make_user(*cluster_, "full");
    lim_fp_ = fingerprint_of_user(lim_dir_);
    full_fp_ = fingerprint_of_user(full_dir_);
    set_policy(limited_policy());
  }
  void TearDown() override { std::filesystem::remove(policy_path_); }

  nlohmann::json limited_policy() const {
    return {{"version", 1},
            {"groups", {{"admins", {full_fp_}}}},
            {"rules",
             {{{"identities", {"group:admins"}}, {"allow", {"*"}}},
              {{"identities", {"cn:lim"}}, {"allow", {"execute"}}, {"engines", {{"ids", {0}}}}},
              {{"identities", {"cn:lim"}}, {"allow", {"status"}}}}}};
  }

  // Replaces the policy file and waits until the controller has reloaded it.
  void set_policy(const nlohmann::json& policy) {
    const std::size_t before = count_audit(*cluster_, "policy.reload", "allowed", "");
    std::string tmp = policy_path_ + ".tmp";
    write_file(tmp, policy.dump(), 0600);
    std::filesystem::rename(tmp, policy_path_);
    ASSERT_TRUE(wait_until([&] { return count_audit(*cluster_, "policy.reload", "allowed", "") > before; }, 5s));
  }

  std::unique_ptr<Client> as(const std::string& dir) {
    auto c = connect_as(*cluster_, dir);
    EXPECT_TRUE(c.ok()) << c.status().to_string();
    return c.ok() ? std::move(c).value() : nullptr;
  }

  static StatusCode first_code(const StatusOr<std::vector<EngineReply>>& r) {
    if (!r.ok()) return r.status().code();
    return r->empty() ? StatusCode::kInternal : (*r)[0].status.code();
  }

  std::string policy_path_;
  std::unique_ptr<TestCluster> cluster_;
  std::string lim_dir_, full_dir_, lim_fp_, full_fp_;
};

// Every operation, allowed and denied, each denial audited exactly once.
TEST_F(PolicyTest, EachOperationAllowedAndDenied) {
  auto lim = as(lim_dir_);
  auto full = as(full_dir_);
  ASSERT_TRUE(lim && full);
  const std::string payload = cloudpickled_call();
  const auto denied = StatusCode::kPermissionDenied;

  // status: allowed for both.
  ASSERT_TRUE(lim->engine_ids().ok());
  ASSERT_TRUE(full->queue_status().ok());
  // execute: lim on engine 0 only.
  EXPECT_EQ(first_code(lim->execute({0}, "z = 1").get(10s)), StatusCode::kOk);
  EXPECT_EQ(first_code(lim->execute({1}, "z = 1").get(10s)), denied);
  EXPECT_EQ(first_code(lim->execute({0, 1}, "z = 1").get(10s)), denied);
  EXPECT_EQ(first_code(full->execute({0, 1}, "z = 2").get(10s)), StatusCode::kOk);
  // load-balanced execute: lim's tasks run only where it may run them.
  for (int i = 0; i < 6; ++i) {
    auto r = lim->execute_balanced({}, "z = 3").get(10s);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ((*r)[0].status.code(), StatusCode::kOk);
    EXPECT_EQ((*r)[0].engine_id, 0u) << "a load-balanced task ran on an engine the policy does not allow";
  }
  EXPECT_EQ(first_code(lim->execute_balanced({1}, "z = 3").get(10s)), denied);
  // apply, push, pull.
  EXPECT_EQ(first_code(lim->apply({0}, {SharedBytes::copy_of(payload)}).get(10s)), denied);
  EXPECT_EQ(first_code(full->apply({0}, {SharedBytes::copy_of(payload)}).get(10s)), StatusCode::kOk);
  EXPECT_EQ(first_code(lim->push_literals({0}, {{"w", "1"}}).get(10s)), denied);
  EXPECT_EQ(first_code(full->push_literals({0}, {{"w", "1"}}).get(10s)), StatusCode::kOk);
  EXPECT_EQ(first_code(lim->pull_repr({0}, {"w"}).get(10s)), denied);
  EXPECT_EQ(first_code(full->pull_repr({0}, {"w"}).get(10s)), StatusCode::kOk);
  // abort, interrupt, shutdown of an engine, key administration.
  EXPECT_EQ(lim->abort({12345}).status().code(), denied);
  EXPECT_TRUE(full->abort({12345}).ok());
  EXPECT_EQ(lim->interrupt({0}).status().code(), denied);
  EXPECT_TRUE(full->interrupt({0}).ok());
  EXPECT_EQ(lim->key_admin("list").status().code(), denied);
  EXPECT_TRUE(full->key_admin("list").ok());
  EXPECT_EQ(lim->shutdown_engines({1}).status().code(), denied);
  EXPECT_EQ(lim->shutdown_cluster().code(), denied);

  // read_others_results: full reads lim's result; lim cannot read full's.
  auto lims = lim->execute({0}, "v = 1");
  ASSERT_TRUE(lims.get(10s).ok());
  auto lim_task = lims.task_ids(5s);
  ASSERT_TRUE(lim_task.ok());
  auto fulls = full->execute({0}, "v = 2");
  ASSERT_TRUE(fulls.get(10s).ok());
  auto full_task = fulls.task_ids(5s);
  ASSERT_TRUE(full_task.ok());
  EXPECT_EQ(first_code(full->get_result(*lim_task).get(10s)), StatusCode::kOk);
  EXPECT_EQ(first_code(lim->get_result(*full_task).get(10s)), StatusCode::kNotFound);

  // Every denial of lim is in the audit log exactly once per request.
  const std::map<std::string, std::size_t> expected_denials = {{"execute", 3}, {"apply", 1}, {"push", 1}, {"pull", 1},
                                                                {"abort", 1},   {"interrupt", 1}, {"keys", 1},
                                                                {"shutdown", 2}};
  // Allowed requests reach the file within 20 ms (denials at once).
  ASSERT_TRUE(wait_until([&] { return count_audit(*cluster_, "execute", "allowed", lim_fp_) == 8; }, 3s))
      << "executes allowed to lim: " << count_audit(*cluster_, "execute", "allowed", lim_fp_);
  for (const auto& [op, n] : expected_denials) {
    EXPECT_EQ(count_audit(*cluster_, op, "denied", lim_fp_), n) << op;
  }
  for (const std::string op : {"apply", "push", "pull", "abort", "interrupt", "keys"}) {
    EXPECT_EQ(count_audit(*cluster_, op, "allowed", full_fp_), 1u) << op;
  }
  // The audit line of an execute names the code by its SHA-256, never the code.
  bool found_digest = false;
  for (const auto& j : audit_lines(*cluster_)) {
    EXPECT_FALSE(contains(j.dump(), "z = 1")) << "code in the audit log: " << j.dump();
    if (j.value("operation", "") == "execute" && j.value("code_sha256", "") ==
        crypto::to_hex(crypto::sha256(crypto::as_bytes("z = 1")))) {
      found_digest = true;
    }
  }
  EXPECT_TRUE(found_digest);
  // The cluster still runs: nothing lim tried had an effect.
  EXPECT_TRUE(cluster_->wait_for_engines(2, 5s));
}

// The policy reloads on change and on SIGHUP without dropping connections; a broken file is
// refused with a clear error and the previous policy stays in force.
TEST_F(PolicyTest, ReloadsOnChangeAndSighupKeepsOldPolicyWhenBroken) {
  auto lim = as(lim_dir_);
  ASSERT_TRUE(lim);
  EXPECT_EQ(first_code(lim->push_literals({0}, {{"w", "1"}}).get(10s)), StatusCode::kPermissionDenied);

  auto widened = limited_policy();
  widened["rules"].push_back({{"identities", {"cn:lim"}}, {"allow", {"push"}}});
  set_policy(widened);
  EXPECT_EQ(first_code(lim->push_literals({0}, {{"w", "1"}}).get(10s)), StatusCode::kOk);
  EXPECT_TRUE(lim->connected()) << "a reload dropped the connection";

  // Broken: a typo in an operation name. The old (widened) policy stays.
  const std::size_t errors_before = count_audit(*cluster_, "policy.reload", "error", "");
  write_file(policy_path_ + ".tmp", R"({"version": 1, "rules": [{"identities": ["*"], "allow": ["exec"]}]})", 0600);
  std::filesystem::rename(policy_path_ + ".tmp", policy_path_);
  ASSERT_TRUE(wait_until([&] { return count_audit(*cluster_, "policy.reload", "error", "") > errors_before; }, 5s));
  EXPECT_TRUE(contains(read_file(cluster_->controller_log()), "keeping the previous policy"));
  EXPECT_TRUE(contains(read_file(cluster_->controller_log()), "exec"));
  EXPECT_EQ(first_code(lim->push_literals({0}, {{"w", "2"}}).get(10s)), StatusCode::kOk);

  // SIGHUP: narrowed again at once (the file is rewritten in place within the same second,
  // which the change detector may miss; the signal does not).
  write_file(policy_path_, limited_policy().dump(), 0600);
  ASSERT_EQ(::kill(cluster_->processes().controller, SIGHUP), 0);
  ASSERT_TRUE(wait_until([&] { return first_code(lim->push_literals({0}, {{"w", "3"}}).get(10s)) ==
                                      StatusCode::kPermissionDenied; },
                         5s));
  EXPECT_TRUE(lim->connected());
}

// ---------------- failed-login limits (T6) ----------------

// Five failed proofs by one identity lock that identity out (even with the right capability)
// while another identity from the same address still gets in; the lockout is audited.
TEST(IdentityTest, FailedLoginsAreRateLimitedPerIdentity) {
  auto cluster = TestCluster::start(1, {"--trust", "learn", "--auto-accept"});
  ASSERT_TRUE(cluster);
  const std::string ivan = make_user(*cluster, "ivan");
  auto identity = auth::load_identity(ivan, "client");
  ASSERT_TRUE(identity.ok());
  auto info = auth::load_connection_file(cluster->paths().client_connection_file, wire::Role::kClient);
  ASSERT_TRUE(info.ok());
  auto guess = *info;
  auto random = crypto::random_secret();
  ASSERT_TRUE(random.ok());
  guess.capability = *random;

  for (int i = 0; i < 5; ++i) {
    Status st = try_session(guess, *identity);
    EXPECT_TRUE(contains(st.message(), "capability proof failed")) << st.to_string();
  }
  Status locked = try_session(*info, *identity);
  EXPECT_FALSE(locked.ok());
  EXPECT_TRUE(contains(locked.message(), "too many failed logins")) << locked.to_string();
  // Another identity from the same address is not locked out.
  auto other = connect_as(*cluster, make_user(*cluster, "judy"));
  EXPECT_TRUE(other.ok()) << other.status().to_string();
  const std::string fp = fingerprint_of_user(ivan);
  EXPECT_EQ(count_audit(*cluster, "login", "rejected", fp), 6u);
}

// ---------------- engines' registration data ----------------

// A raw engine session with the shared engine key, for playing with registration data.
struct RawEngine {
  net::EventLoop loop;
  std::thread runner{[this] { loop.run(); }};
  std::shared_ptr<net::Connection> connection;
  std::uint32_t id = 0;
  std::promise<Status> closed;

  Status open(const auth::ConnectionInfo& info, const tls::KeyAndCertificate& identity, const std::string& instance) {
    std::promise<StatusOr<auth::Session>> opened;
    loop.post([&] { auth::open_session(loop, {info, identity, instance, 5s}, [&](auto s) { opened.set_value(s); }); });
    auto session = opened.get_future().get();
    if (!session.ok()) return session.status();
    connection = session->connection;
    id = session->assigned_id;
    std::promise<void> set;
    loop.post([&] {
      connection->set_handlers({[](wire::Message&&) {}, [this](const Status& why) { closed.set_value(why); }});
      set.set_value();
    });
    set.get_future().wait();
    return ok_status();
  }
  crypto::Digest exporter() {
    std::promise<crypto::Digest> out;
    loop.post([&] {
      out.set_value(*connection->export_keying_material(auth::kRegistrationExporterLabel,
                                                        auth::kRegistrationExporterContext));
    });
    return out.get_future().get();
  }
  void send_info(const std::string& json, std::optional<std::string> signature) {
    loop.post([this, json, signature] {
      wire::Message info;
      info.envelope.kind = wire::MessageKind::kEngineInfo;
      info.envelope.engine_id = 0;  // claims to speak for engine 0; the controller ignores it
      info.envelope.text = json;
      if (signature) info.segments.push_back(SharedBytes::copy_of(*signature));
      connection->send(std::move(info));
    });
  }
  ~RawEngine() {
    loop.post([this] {
      if (connection) connection->close(ok_status());
    });
    std::this_thread::sleep_for(50ms);
    loop.stop();
    runner.join();
  }
};

// T8: an engine's tags are signed by its key over its own session and filed under its own id:
// engine A cannot set facts for engine B, an unsigned or foreign-signed registration is
// refused, and a signature recorded on one session is worthless on another.
TEST(IdentityTest, EngineRegistrationIsSignedAndCannotSpeakForAnotherEngine) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  auto info = auth::load_connection_file(cluster->paths().engine_connection_file, wire::Role::kEngine);
  ASSERT_TRUE(info.ok());
  auto shared = auth::load_identity(cluster->paths().security_dir, "engine");
  ASSERT_TRUE(shared.ok()) << shared.status().to_string();
  auto client = cluster->client();
  ASSERT_TRUE(client);
  const std::string evil = R"({"zone": "evil", "gpu": "yes"})";

  // Properly signed, but claiming engine 0: filed under the sender's own id only.
  RawEngine rogue;
  ASSERT_TRUE(rogue.open(*info, *shared, "rogue-instance").ok());
  const std::string signature = *tls::sign_sha256(shared->key_pem, auth::registration_signed_bytes(rogue.exporter(), evil));
  rogue.send_info(evil, signature);
  nlohmann::json tags;
  ASSERT_TRUE(wait_until(
      [&] {
        auto text = client->engines_json();
        if (!text.ok()) return false;
        tags = nlohmann::json::parse(*text)["tags"];
        return tags.contains(std::to_string(rogue.id)) && tags[std::to_string(rogue.id)].value("zone", "") == "evil";
      },
      5s))
      << tags.dump();
  EXPECT_FALSE(tags["0"].contains("zone")) << "engine 0's facts were overwritten: " << tags.dump();
  EXPECT_FALSE(tags["0"].contains("gpu")) << "engine 0's facts were overwritten: " << tags.dump();
  EXPECT_TRUE(tags["0"].contains("hostname")) << tags.dump();
  EXPECT_TRUE(audited(*cluster, "engine.register", "allowed", ""));

  // The same signature replayed on a new session, no signature, a signature by another key:
  // each refused and that connection cut off.
  auto other_key = tls::generate_self_signed("not the engine");
  ASSERT_TRUE(other_key.ok());
  for (int attempt = 0; attempt < 3; ++attempt) {
    SCOPED_TRACE(attempt);
    RawEngine liar;
    ASSERT_TRUE(liar.open(*info, *shared, "liar-" + std::to_string(attempt)).ok());
    std::optional<std::string> sig;
    if (attempt == 0) sig = signature;  // from the rogue's session
    if (attempt == 2) sig = *tls::sign_sha256(other_key->key_pem, auth::registration_signed_bytes(liar.exporter(), evil));
    liar.send_info(evil, sig);
    auto why = liar.closed.get_future();
    ASSERT_EQ(why.wait_for(5s), std::future_status::ready) << "the controller kept a liar connected";
    auto text = client->engines_json();
    ASSERT_TRUE(text.ok());
    EXPECT_FALSE(nlohmann::json::parse(*text)["tags"].contains(std::to_string(liar.id)));
  }
  EXPECT_TRUE(cluster->wait_for_engines(2, 5s));  // engine 0 and the (honest) rogue remain
}

// ---------------- secrets stay out of logs ----------------

// After logins, refusals, wrong passphrases and key administration, no capability, private
// key or passphrase used in the test appears in any log or the audit log.
TEST(IdentityTest, NoSecretInLogsOrAuditLog) {
  auto cluster = TestCluster::start(1, {"--trust", "learn"});
  ASSERT_TRUE(cluster);
  const std::string secret = "hunter2-but-longer";
  const std::string dir = make_user(*cluster, "kate", secret);
  ::setenv("KATE_PASS", secret.c_str(), 1);
  EXPECT_FALSE(connect_as(*cluster, dir, "env:KATE_PASS").ok());  // pending
  ::setenv("KATE_PASS", "not-it-at-all", 1);
  EXPECT_FALSE(connect_as(*cluster, dir, "env:KATE_PASS").ok());  // wrong passphrase
  ::setenv("KATE_PASS", secret.c_str(), 1);
  auto [rc, out] = keys(*cluster, "accept " + fingerprint_of_user(dir));
  ASSERT_EQ(rc, 0) << out;
  auto kate = connect_as(*cluster, dir, "env:KATE_PASS");
  ASSERT_TRUE(kate.ok()) << kate.status().to_string();
  ::unsetenv("KATE_PASS");
  auto owner = cluster->client();
  ASSERT_TRUE(owner);
  ASSERT_TRUE(owner->execute({0}, "q = 1").get(10s).ok());
  std::this_thread::sleep_for(100ms);

  auto client_info = auth::load_connection_file(cluster->paths().client_connection_file, wire::Role::kClient);
  auto engine_info = auth::load_connection_file(cluster->paths().engine_connection_file, wire::Role::kEngine);
  ASSERT_TRUE(client_info.ok() && engine_info.ok());
  std::vector<std::string> needles = {secret, crypto::to_hex(client_info->capability),
                                      crypto::to_hex(engine_info->capability)};
  // The base64 body of every private key involved (owner, shared engine, kate's encrypted file).
  for (const std::string& key_file : {cluster->home() + "/identity/client-key.pem",
                                      cluster->paths().security_dir + "/engine-key.pem", dir + "/client-key.pem"}) {
    std::string pem = read_file(key_file);
    auto line_start = pem.find('\n');
    ASSERT_NE(line_start, std::string::npos);
    needles.push_back(pem.substr(line_start + 1, 40));
  }
  std::string logs;
  for (const auto& entry : std::filesystem::directory_iterator(cluster->paths().log_dir)) logs += read_file(entry.path());
  ASSERT_TRUE(contains(logs, "\"operation\":\"login\"")) << "no audit log among the logs";
  for (const auto& needle : needles) EXPECT_FALSE(contains(logs, needle)) << "a secret is in the logs";
}

}  // namespace
}  // namespace testudo::testing
