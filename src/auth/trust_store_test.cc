#include "auth/trust_store.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "crypto/crypto.h"
#include "crypto/private_file.h"

namespace testudo::auth {
namespace {

namespace fs = std::filesystem;

// A fake for tls::key_fingerprint_of_pem, which lives in another branch (OpenSSL stays out of
// auth): the SHA-256 of the PEM block's text instead of the key's SubjectPublicKeyInfo. It
// accepts only CERTIFICATE and PUBLIC KEY blocks, as the real one does. A body line
// "fp=<64 hex>" forces the fingerprint, so tests can craft keys whose fingerprints share a
// prefix. The controller passes the real function.
StatusOr<std::string> fake_fingerprint(std::string_view pem) {
  const bool cert = pem.starts_with("-----BEGIN CERTIFICATE-----\n") &&
                    pem.ends_with("-----END CERTIFICATE-----\n");
  const bool key = pem.starts_with("-----BEGIN PUBLIC KEY-----\n") &&
                   pem.ends_with("-----END PUBLIC KEY-----\n");
  if (!cert && !key) return invalid_argument("not a CERTIFICATE or PUBLIC KEY PEM block");
  if (auto at = pem.find("\nfp="); at != std::string_view::npos) {
    return "sha256:" + std::string(pem.substr(at + 4, 64));
  }
  return "sha256:" + crypto::to_hex(crypto::sha256(crypto::as_bytes(pem)));
}

std::string key_pem(const std::string& body) {
  return "-----BEGIN PUBLIC KEY-----\n" + body + "\n-----END PUBLIC KEY-----\n";
}
std::string fp_of(const std::string& pem) { return *fake_fingerprint(pem); }
std::string hex_of(const std::string& pem) { return fp_of(pem).substr(7); }
// A key whose fingerprint is exactly `hex` (64 digits).
std::string key_with_fp(const std::string& hex) { return key_pem("fp=" + hex); }

mode_t mode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

void write_file(const std::string& path, const std::string& text, mode_t mode = 0600) {
  { std::ofstream(path, std::ios::binary | std::ios::trunc) << text; }
  ASSERT_EQ(::chmod(path.c_str(), mode), 0) << path;
}

class TrustStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/testudo-trust-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    dir_ = root_ + "/profile/security/trust";
  }
  void TearDown() override { fs::remove_all(root_); }

  std::unique_ptr<TrustStore> open_store(TrustStoreOptions options = {}) {
    auto store = TrustStore::open(dir_, fake_fingerprint, options);
    EXPECT_TRUE(store.ok()) << store.status().to_string();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  std::string root_, dir_;
  const std::string alice_ = key_pem("alice's key");
  const std::string bob_ = key_pem("bob's key");
  const std::string engine_ = key_pem("engine 1's key");
};

TEST_F(TrustStoreTest, CreatesOwnerOnlyDirectories) {
  auto store = open_store();
  ASSERT_TRUE(store);
  for (const char* sub : {"", "/client", "/engine", "/pending", "/revoked"}) {
    EXPECT_EQ(mode_of(dir_ + sub), 0700u) << sub;
  }
  EXPECT_TRUE(store->list().empty());
  EXPECT_TRUE(store->warnings().empty());
}

// docs/formats.md: a directory without format.json (today's layout, from before it was
// versioned) is version 1 and gets the file; a newer version is refused naming it and left
// alone; a damaged format.json is a clear error.
TEST_F(TrustStoreTest, FormatVersionIsWrittenCheckedAndANewerOneRefused) {
  ASSERT_TRUE(open_store());
  EXPECT_EQ(mode_of(dir_ + "/format.json"), 0600u);
  {
    std::ifstream in(dir_ + "/format.json");
    EXPECT_EQ(nlohmann::json::parse(in), (nlohmann::json{{"version", 1}}));
  }
  // Unversioned, with a key in it: opens as version 1 and keeps the key.
  fs::remove(dir_ + "/format.json");
  write_file(dir_ + "/client/alice.pem", alice_);
  auto store = open_store();
  ASSERT_TRUE(store);
  EXPECT_EQ(store->state("client", fp_of(alice_)), TrustState::kAccepted);
  EXPECT_TRUE(fs::exists(dir_ + "/format.json"));

  write_file(dir_ + "/format.json", R"({"version": 2, "keys": "elsewhere"})");
  auto newer = TrustStore::open(dir_, fake_fingerprint);
  ASSERT_FALSE(newer.ok());
  EXPECT_EQ(newer.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(newer.status().message().find("format version 2 was written by a newer testudo; this one reads version 1"),
            std::string::npos)
      << newer.status().message();
  EXPECT_NE(newer.status().message().find(dir_), std::string::npos) << newer.status().message();
  {
    std::ifstream in(dir_ + "/format.json");
    EXPECT_EQ(nlohmann::json::parse(in)["version"], 2);  // left alone
  }

  for (const char* bad : {"", "[1]", R"({"version": "1"})", R"({"version": 0})", R"({"version": -3})"}) {
    write_file(dir_ + "/format.json", bad);
    auto damaged = TrustStore::open(dir_, fake_fingerprint);
    ASSERT_FALSE(damaged.ok()) << bad;
    EXPECT_EQ(damaged.status().code(), StatusCode::kDataLoss) << bad << ": " << damaged.status().to_string();
    EXPECT_NE(damaged.status().message().find("format.json"), std::string::npos) << damaged.status().message();
  }
  // Writable by others: refused like every file here.
  write_file(dir_ + "/format.json", R"({"version": 1})", 0622);
  auto unsafe = TrustStore::open(dir_, fake_fingerprint);
  ASSERT_FALSE(unsafe.ok());
  EXPECT_EQ(unsafe.status().code(), StatusCode::kPermissionDenied) << unsafe.status().to_string();
}

// The trust store fixture (tests/fixtures/trust-v<N>/, one per format version): written by
// the TrustStore of that version through write_trust_fixture(); every later version must open
// it with the same answers (docs/formats.md). Keys use fake_fingerprint, as every test here.
const std::string kFixtureAlice = key_pem("fixture: alice's client key");
const std::string kFixtureEngine = key_pem("fixture: the cluster's engine key");
const std::string kFixtureMallory = key_pem("fixture: mallory's revoked key");
const std::string kFixtureCarol = key_pem("fixture: carol's pending key");

Status write_trust_fixture(const std::string& dir) {
  TESTUDO_ASSIGN_OR_RETURN(auto store, TrustStore::open(dir, fake_fingerprint));
  TESTUDO_RETURN_IF_ERROR(store->accept_pem("client", kFixtureAlice, "alice").status());
  TESTUDO_RETURN_IF_ERROR(store->accept_pem("engine", kFixtureEngine, "engines").status());
  TESTUDO_RETURN_IF_ERROR(store->accept_pem("client", kFixtureMallory, "mallory").status());
  TESTUDO_RETURN_IF_ERROR(store->revoke(fp_of(kFixtureMallory)).status());
  return store->add_pending("client", fp_of(kFixtureCarol), kFixtureCarol, "carol", "10.0.0.7:50000",
                            1'800'000'000);
}

// Regenerates the fixture: TESTUDO_WRITE_TRUST_FIXTURE=tests/fixtures/trust-v<N> (a directory
// that does not exist yet) build/src/auth/trust_store_test --gtest_filter='*WriteTrustFixture*'
TEST(TrustStoreFixture, WriteTrustFixture) {
  const char* dir = std::getenv("TESTUDO_WRITE_TRUST_FIXTURE");
  if (dir == nullptr) GTEST_SKIP() << "set TESTUDO_WRITE_TRUST_FIXTURE to write a fixture";
  ASSERT_FALSE(fs::exists(dir)) << dir << " exists; remove it first";
  Status st = write_trust_fixture(dir);
  ASSERT_TRUE(st.ok()) << st.to_string();
}

TEST_F(TrustStoreTest, EveryKeptFixtureOpensWithTheSameAnswers) {
  int fixtures = 0;
  for (const auto& entry : fs::directory_iterator(TESTUDO_FIXTURES_DIR)) {
    if (!entry.path().filename().string().starts_with("trust-v")) continue;
    SCOPED_TRACE(entry.path().string());
    ++fixtures;
    fs::remove_all(root_ + "/profile");
    fs::create_directories(root_ + "/profile/security");
    fs::copy(entry.path(), dir_, fs::copy_options::recursive);
    // git keeps no modes: make them what the store wrote.
    for (const auto& f : fs::recursive_directory_iterator(dir_)) {
      fs::permissions(f.path(), f.is_directory() ? fs::perms::owner_all : fs::perms::owner_read | fs::perms::owner_write);
    }
    fs::permissions(dir_, fs::perms::owner_all);
    auto store = open_store();
    ASSERT_TRUE(store);
    EXPECT_TRUE(store->warnings().empty()) << store->warnings().front();
    EXPECT_EQ(store->state("client", fp_of(kFixtureAlice)), TrustState::kAccepted);
    EXPECT_EQ(store->state("engine", fp_of(kFixtureAlice)), TrustState::kUnknown);
    EXPECT_EQ(store->state("engine", fp_of(kFixtureEngine)), TrustState::kAccepted);
    EXPECT_EQ(store->state("client", fp_of(kFixtureMallory)), TrustState::kRevoked);
    EXPECT_EQ(store->state("client", fp_of(kFixtureCarol)), TrustState::kPending);
    auto carol = store->show(fp_of(kFixtureCarol));
    ASSERT_TRUE(carol.ok()) << carol.status().to_string();
    EXPECT_EQ(carol->name, "carol");
    EXPECT_EQ(carol->peer, "10.0.0.7:50000");
    EXPECT_EQ(carol->first_seen, 1'800'000'000);
  }
  EXPECT_GE(fixtures, 1) << "no trust store fixtures in " << TESTUDO_FIXTURES_DIR;
}

TEST_F(TrustStoreTest, PendingAcceptRevokeAndRejectTransitions) {
  auto store = open_store();
  ASSERT_TRUE(store);
  const std::string fp = fp_of(alice_), hex = hex_of(alice_);
  EXPECT_EQ(store->state("client", fp), TrustState::kUnknown);

  // Learn mode: unknown -> pending, on disk as pending/client-<hex>.{pem,json}, 0600.
  ASSERT_TRUE(store->add_pending("client", fp, alice_, "alice@laptop", "10.0.0.5", 1000).ok());
  EXPECT_EQ(store->state("client", fp), TrustState::kPending);
  EXPECT_EQ(store->state("client", hex), TrustState::kPending);  // without "sha256:"
  const std::string pending_pem = dir_ + "/pending/client-" + hex + ".pem";
  const std::string pending_json = dir_ + "/pending/client-" + hex + ".json";
  EXPECT_EQ(mode_of(pending_pem), 0600u);
  EXPECT_EQ(mode_of(pending_json), 0600u);

  // Idempotent: a second connection updates last_seen, peer and attempts.
  ASSERT_TRUE(store->add_pending("client", fp, alice_, "alice@laptop", "10.0.0.6", 1060).ok());
  auto shown = store->show(hex.substr(0, 8));
  ASSERT_TRUE(shown.ok()) << shown.status().to_string();
  EXPECT_EQ(shown->state, TrustState::kPending);
  EXPECT_EQ(shown->name, "alice@laptop");
  EXPECT_EQ(shown->peer, "10.0.0.6");
  EXPECT_EQ(shown->first_seen, 1000);
  EXPECT_EQ(shown->last_seen, 1060);
  EXPECT_EQ(shown->attempts, 2);
  auto j = nlohmann::json::parse(*crypto::read_private_file(pending_json, "pending record"));
  EXPECT_EQ(j["role"], "client");
  EXPECT_EQ(j["fingerprint"], fp);
  EXPECT_EQ(j["attempts"], 2);
  EXPECT_EQ(j["last_seen"], 1060);
  ASSERT_EQ(store->list().size(), 1u);
  // Seen again within a minute: updated in memory, the record on disk waits (no write storm).
  ASSERT_TRUE(store->add_pending("client", fp, alice_, "alice@laptop", "10.0.0.6", 1070).ok());
  EXPECT_EQ(store->show(hex)->attempts, 3);
  j = nlohmann::json::parse(*crypto::read_private_file(pending_json, "pending record"));
  EXPECT_EQ(j["attempts"], 2);
  ASSERT_TRUE(store->add_pending("client", fp, alice_, "alice@laptop", "10.0.0.6", 1120).ok());
  j = nlohmann::json::parse(*crypto::read_private_file(pending_json, "pending record"));
  EXPECT_EQ(j["attempts"], 4);
  EXPECT_EQ(j["last_seen"], 1120);

  // pending -> accepted: client/<hex>.pem, the pending files are gone.
  auto accepted = store->accept("sha256:" + hex.substr(0, 10));
  ASSERT_TRUE(accepted.ok()) << accepted.status().to_string();
  EXPECT_EQ(accepted->state, TrustState::kAccepted);
  EXPECT_EQ(accepted->role, "client");
  EXPECT_EQ(accepted->file, dir_ + "/client/" + hex + ".pem");
  EXPECT_EQ(mode_of(accepted->file), 0600u);
  EXPECT_FALSE(fs::exists(pending_pem));
  EXPECT_FALSE(fs::exists(pending_json));
  EXPECT_EQ(store->state("client", fp), TrustState::kAccepted);
  // Accepting again, or seeing the key again in learn mode, changes nothing.
  EXPECT_TRUE(store->accept(hex).ok());
  EXPECT_TRUE(store->add_pending("client", fp, alice_, "x", "y", 2000).ok());
  EXPECT_EQ(store->state("client", fp), TrustState::kAccepted);
  EXPECT_FALSE(fs::exists(pending_pem));

  // accepted -> revoked, in every role; the accepted file is removed.
  auto revoked = store->revoke(hex);
  ASSERT_TRUE(revoked.ok()) << revoked.status().to_string();
  EXPECT_EQ(revoked->state, TrustState::kRevoked);
  EXPECT_EQ(revoked->file, dir_ + "/revoked/" + hex + ".pem");
  EXPECT_FALSE(fs::exists(accepted->file));
  EXPECT_EQ(store->state("client", fp), TrustState::kRevoked);
  EXPECT_EQ(store->state("engine", fp), TrustState::kRevoked);
  EXPECT_EQ(store->revoke(hex)->state, TrustState::kRevoked);  // idempotent
  // A revoked key is not learnt again, nor accepted.
  auto again = store->add_pending("client", fp, alice_, "alice", "10.0.0.5", 3000);
  EXPECT_EQ(again.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(store->accept_pem("client", alice_, "alice").status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->accept(hex).status().code(), StatusCode::kFailedPrecondition);

  // pending -> rejected: deleted, unknown again (it may come back as pending).
  ASSERT_TRUE(store->add_pending("client", fp_of(bob_), bob_, "bob", "10.0.0.7", 1000).ok());
  auto rejected = store->reject(hex_of(bob_));
  ASSERT_TRUE(rejected.ok()) << rejected.status().to_string();
  EXPECT_EQ(store->state("client", fp_of(bob_)), TrustState::kUnknown);
  EXPECT_FALSE(fs::exists(dir_ + "/pending/client-" + hex_of(bob_) + ".pem"));
  EXPECT_FALSE(fs::exists(dir_ + "/pending/client-" + hex_of(bob_) + ".json"));
  // reject only applies to pending identities.
  ASSERT_TRUE(store->accept_pem("client", bob_, "bob").ok());
  EXPECT_EQ(store->reject(hex_of(bob_)).status().code(), StatusCode::kFailedPrecondition);

  // pending -> revoked directly.
  ASSERT_TRUE(store->add_pending("engine", fp_of(engine_), engine_, "e1", "10.0.0.8", 1000).ok());
  ASSERT_TRUE(store->revoke(hex_of(engine_)).ok());
  EXPECT_EQ(store->state("engine", fp_of(engine_)), TrustState::kRevoked);
  EXPECT_FALSE(fs::exists(dir_ + "/pending/engine-" + hex_of(engine_) + ".pem"));
}

TEST_F(TrustStoreTest, AddPendingChecksTheCertificateAgainstTheFingerprint) {
  auto store = open_store();
  ASSERT_TRUE(store);
  EXPECT_EQ(store->add_pending("client", fp_of(bob_), alice_, "n", "p", 1).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store->add_pending("client", fp_of(alice_), "garbage", "n", "p", 1).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store->add_pending("admin", fp_of(alice_), alice_, "n", "p", 1).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store->add_pending("client", "sha256:1234", alice_, "n", "p", 1).code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(store->list().empty());
}

TEST_F(TrustStoreTest, PrefixMatching) {
  auto store = open_store();
  ASSERT_TRUE(store);
  const std::string a = "abcdef01" + std::string(56, '1');
  const std::string b = "abcdef01" + std::string(56, '2');
  const std::string c = "12345678" + std::string(56, '3');
  for (const auto& hex : {a, b, c}) {
    ASSERT_TRUE(store->add_pending("client", "sha256:" + hex, key_with_fp(hex), "k", "p", 1).ok());
  }
  // Unique: 8 digits are enough, with or without "sha256:", in any case.
  EXPECT_EQ(store->show("12345678")->fingerprint, "sha256:" + c);
  EXPECT_EQ(store->show("sha256:12345678")->fingerprint, "sha256:" + c);
  EXPECT_EQ(store->show("ABCDEF011")->fingerprint, "sha256:" + a);
  EXPECT_EQ(store->show("sha256:" + b)->fingerprint, "sha256:" + b);

  // Ambiguous: both candidates are listed.
  auto amb = store->accept("abcdef01");
  ASSERT_FALSE(amb.ok());
  EXPECT_EQ(amb.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(amb.status().message().find("ambiguous"), std::string::npos);
  EXPECT_NE(amb.status().message().find("sha256:" + a), std::string::npos);
  EXPECT_NE(amb.status().message().find("sha256:" + b), std::string::npos);
  EXPECT_EQ(store->state("client", a), TrustState::kPending);  // nothing was accepted

  // Too short, or not hex.
  auto shorter = store->accept("abcdef0");
  EXPECT_EQ(shorter.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(shorter.status().message().find("at least 8"), std::string::npos);
  EXPECT_EQ(store->accept("zzzzzzzzzz").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->accept(std::string(65, 'a')).status().code(), StatusCode::kInvalidArgument);

  // Unknown: not found, with the pending identities listed as a hint.
  auto unknown = store->revoke("deadbeef");
  EXPECT_EQ(unknown.status().code(), StatusCode::kNotFound);
  EXPECT_NE(unknown.status().message().find("sha256:" + c), std::string::npos);

  // A key pending in both roles: the role prefix picks one.
  const std::string d = "99999999" + std::string(56, '4');
  ASSERT_TRUE(store->add_pending("client", "sha256:" + d, key_with_fp(d), "k", "p", 1).ok());
  ASSERT_TRUE(store->add_pending("engine", "sha256:" + d, key_with_fp(d), "k", "p", 1).ok());
  EXPECT_EQ(store->accept("99999999").status().code(), StatusCode::kInvalidArgument);
  auto engine = store->accept("engine:99999999");
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  EXPECT_EQ(engine->role, "engine");
  EXPECT_EQ(store->state("engine", d), TrustState::kAccepted);
  EXPECT_EQ(store->state("client", d), TrustState::kPending);
}

TEST_F(TrustStoreTest, RoleSeparation) {
  auto store = open_store();
  ASSERT_TRUE(store);
  auto e = store->accept_pem("client", alice_, "alice");
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  EXPECT_EQ(e->fingerprint, fp_of(alice_));
  EXPECT_EQ(store->state("client", fp_of(alice_)), TrustState::kAccepted);
  EXPECT_EQ(store->state("engine", fp_of(alice_)), TrustState::kUnknown);
  EXPECT_EQ(store->state("controller", fp_of(alice_)), TrustState::kUnknown);
  ASSERT_TRUE(store->accept_pem("engine", engine_, "engine-1").ok());
  EXPECT_EQ(store->state("client", fp_of(engine_)), TrustState::kUnknown);
  EXPECT_EQ(store->state("engine", fp_of(engine_)), TrustState::kAccepted);
  // Idempotent, and the same key may also be accepted in the other role, separately.
  EXPECT_EQ(store->accept_pem("client", alice_, "other name")->name, "alice");
  ASSERT_TRUE(store->accept_pem("engine", alice_, "alice as engine").ok());
  EXPECT_EQ(store->state("engine", fp_of(alice_)), TrustState::kAccepted);
  EXPECT_EQ(store->list().size(), 3u);
  // Not a PEM, or a PEM block of another kind.
  EXPECT_EQ(store->accept_pem("client", "hello", "x").status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(store->accept_pem("client", "-----BEGIN RSA PRIVATE KEY-----\nx\n-----END RSA PRIVATE KEY-----\n", "x").ok());
  EXPECT_EQ(store->accept_pem("admin", alice_, "x").status().code(), StatusCode::kInvalidArgument);
}

TEST_F(TrustStoreTest, HandPlacedFileIsPickedUpByReload) {
  auto store = open_store();
  ASSERT_TRUE(store);
  // An admin copies a key in by hand, with any name and a umask-ish 0644 mode (public keys
  // may be readable; only writable is refused). Text around the PEM block is allowed.
  write_file(dir_ + "/client/bob-laptop.pem", "Bob's key, from his email\n" + bob_, 0644);
  EXPECT_EQ(store->state("client", fp_of(bob_)), TrustState::kUnknown);  // not yet rescanned
  ASSERT_TRUE(store->reload().ok());
  EXPECT_EQ(store->state("client", fp_of(bob_)), TrustState::kAccepted);
  auto shown = store->show(hex_of(bob_).substr(0, 8));
  ASSERT_TRUE(shown.ok());
  EXPECT_EQ(shown->name, "bob-laptop");
  EXPECT_EQ(shown->file, dir_ + "/client/bob-laptop.pem");
  // The same key twice under two names is fine.
  write_file(dir_ + "/client/bob-copy.pem", bob_);
  ASSERT_TRUE(store->reload().ok());
  EXPECT_EQ(store->state("client", fp_of(bob_)), TrustState::kAccepted);
  EXPECT_EQ(store->list().size(), 1u);
  EXPECT_TRUE(store->warnings().empty());
  // Removing the files by hand and reloading forgets the key.
  fs::remove(dir_ + "/client/bob-laptop.pem");
  fs::remove(dir_ + "/client/bob-copy.pem");
  ASSERT_TRUE(store->reload().ok());
  EXPECT_EQ(store->state("client", fp_of(bob_)), TrustState::kUnknown);
}

TEST_F(TrustStoreTest, GarbageFilesAreSkippedWithWarningsOthersStillLoad) {
  {
    auto store = open_store();
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->accept_pem("client", alice_, "alice").ok());
    ASSERT_TRUE(store->add_pending("engine", fp_of(engine_), engine_, "e", "p", 1).ok());
  }
  write_file(dir_ + "/client/garbage.pem", "this is not a key\n");
  write_file(dir_ + "/client/private.pem", "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n");
  write_file(dir_ + "/client/truncated.pem", "-----BEGIN PUBLIC KEY-----\nabc\n");
  write_file(dir_ + "/client/README", "notes\n");
  write_file(dir_ + "/pending/engine-" + hex_of(engine_) + ".json", "{not json");
  write_file(dir_ + "/pending/client-" + std::string(64, 'f') + ".pem", bob_);  // wrong name
  write_file(dir_ + "/pending/whatever.pem", bob_);
  fs::create_symlink(dir_ + "/client/" + hex_of(alice_) + ".pem", dir_ + "/engine/link.pem");

  auto store = open_store();
  ASSERT_TRUE(store);
  EXPECT_EQ(store->state("client", fp_of(alice_)), TrustState::kAccepted);
  EXPECT_EQ(store->state("engine", fp_of(alice_)), TrustState::kUnknown);  // symlink not followed
  EXPECT_EQ(store->state("engine", fp_of(engine_)), TrustState::kPending);  // metadata lost only
  EXPECT_EQ(store->state("client", fp_of(bob_)), TrustState::kUnknown);
  const auto& w = store->warnings();
  auto warned = [&w](const std::string& needle) {
    return std::any_of(w.begin(), w.end(),
                       [&](const std::string& line) { return line.find(needle) != std::string::npos; });
  };
  EXPECT_TRUE(warned("/client/garbage.pem")) << ::testing::PrintToString(w);
  EXPECT_TRUE(warned("/client/private.pem"));
  EXPECT_TRUE(warned("/client/truncated.pem"));
  EXPECT_TRUE(warned("/client/README"));
  EXPECT_TRUE(warned("/engine/link.pem"));
  EXPECT_TRUE(warned("engine-" + hex_of(engine_) + ".json"));
  EXPECT_TRUE(warned("client-" + std::string(64, 'f') + ".pem"));
  EXPECT_TRUE(warned("/pending/whatever.pem"));
  EXPECT_EQ(w.size(), 8u) << ::testing::PrintToString(w);
}

// A key the store never held (admitted by a CA, say) can be revoked by its PEM, and stays
// revoked across a reopen; accepting it afterwards is refused.
TEST_F(TrustStoreTest, RevokePemOfAnUnknownKey) {
  auto store = open_store();
  auto e = store->revoke_pem(alice_, "alice");
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  EXPECT_EQ(e->state, TrustState::kRevoked);
  EXPECT_EQ(store->state("client", fp_of(alice_)), TrustState::kRevoked);
  EXPECT_EQ(store->state("engine", fp_of(alice_)), TrustState::kRevoked);
  EXPECT_FALSE(store->accept_pem("client", alice_, "alice").ok());
  EXPECT_TRUE(store->revoke_pem(alice_, "alice").ok());  // idempotent
  store.reset();
  auto reopened = open_store();
  EXPECT_EQ(reopened->state("client", fp_of(alice_)), TrustState::kRevoked);
  EXPECT_FALSE(reopened->revoke_pem("not a pem", "x").ok());
}

TEST_F(TrustStoreTest, RevokedBeatsAcceptedEvenIfTheAdminLeftTheFile) {
  auto store = open_store();
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->accept_pem("client", alice_, "alice").ok());
  write_file(dir_ + "/client/alice-by-hand.pem", alice_);
  write_file(dir_ + "/engine/alice-engine.pem", alice_);
  ASSERT_TRUE(store->reload().ok());
  EXPECT_EQ(store->state("engine", fp_of(alice_)), TrustState::kAccepted);

  // revoke removes every accepted file holding the key, whatever its name and role.
  ASSERT_TRUE(store->revoke(hex_of(alice_).substr(0, 8)).ok());
  EXPECT_FALSE(fs::exists(dir_ + "/client/" + hex_of(alice_) + ".pem"));
  EXPECT_FALSE(fs::exists(dir_ + "/client/alice-by-hand.pem"));
  EXPECT_FALSE(fs::exists(dir_ + "/engine/alice-engine.pem"));

  // An admin puts an accepted copy back: the revocation still wins, with a warning.
  write_file(dir_ + "/client/restored.pem", alice_);
  ASSERT_TRUE(store->reload().ok());
  EXPECT_EQ(store->state("client", fp_of(alice_)), TrustState::kRevoked);
  ASSERT_EQ(store->warnings().size(), 1u);
  EXPECT_NE(store->warnings()[0].find("restored.pem"), std::string::npos);
  auto all = store->list();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].state, TrustState::kRevoked);

  // A damaged revoked/<hex>.pem still revokes the key its name gives (fail safe).
  write_file(dir_ + "/revoked/" + hex_of(alice_) + ".pem", "damaged");
  ASSERT_TRUE(store->reload().ok());
  EXPECT_EQ(store->state("client", fp_of(alice_)), TrustState::kRevoked);
  // And a hand-placed revoked file with any name revokes the key it holds.
  ASSERT_TRUE(store->accept_pem("engine", engine_, "e").ok());
  write_file(dir_ + "/revoked/stolen-laptop.pem", engine_);
  ASSERT_TRUE(store->reload().ok());
  EXPECT_EQ(store->state("engine", fp_of(engine_)), TrustState::kRevoked);
}

TEST_F(TrustStoreTest, PendingIsBounded) {
  TrustStoreOptions options;
  options.max_pending = 3;
  auto store = open_store(options);
  ASSERT_TRUE(store);
  for (int i = 0; i < 3; ++i) {
    const std::string pem = key_pem("flood " + std::to_string(i));
    ASSERT_TRUE(store->add_pending("client", fp_of(pem), pem, "n", "p", i).ok()) << i;
  }
  const std::string fourth = key_pem("flood 3");
  auto full = store->add_pending("client", fp_of(fourth), fourth, "n", "p", 9);
  EXPECT_EQ(full.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(store->state("client", fp_of(fourth)), TrustState::kUnknown);
  EXPECT_FALSE(fs::exists(dir_ + "/pending/client-" + hex_of(fourth) + ".pem"));
  // Known pending ones are still updated; accepted keys are unaffected by the bound.
  const std::string first = key_pem("flood 0");
  EXPECT_TRUE(store->add_pending("client", fp_of(first), first, "n", "p", 10).ok());
  EXPECT_TRUE(store->accept_pem("client", alice_, "alice").ok());
  // Room again after an admin decision, and the count survives a reopen.
  ASSERT_TRUE(store->reject(hex_of(first)).ok());
  EXPECT_TRUE(store->add_pending("client", fp_of(fourth), fourth, "n", "p", 11).ok());
  store.reset();
  store = open_store(options);
  ASSERT_TRUE(store);
  const std::string fifth = key_pem("flood 4");
  EXPECT_EQ(store->add_pending("client", fp_of(fifth), fifth, "n", "p", 12).code(),
            StatusCode::kResourceExhausted);
  // The default bound is 1,000.
  EXPECT_EQ(TrustStoreOptions{}.max_pending, 1000u);
}

TEST_F(TrustStoreTest, WritableByOthersIsRefused) {
  {
    auto store = open_store();
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->accept_pem("client", alice_, "alice").ok());
  }
  // The trust directory itself.
  ASSERT_EQ(::chmod(dir_.c_str(), 0777), 0);
  auto opened = TrustStore::open(dir_, fake_fingerprint);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(opened.status().message().find(dir_), std::string::npos);
  EXPECT_NE(opened.status().message().find("chmod go-w"), std::string::npos);
  ASSERT_EQ(::chmod(dir_.c_str(), 0700), 0);

  // A subdirectory writable by the group.
  ASSERT_EQ(::chmod((dir_ + "/engine").c_str(), 0770), 0);
  opened = TrustStore::open(dir_, fake_fingerprint);
  ASSERT_FALSE(opened.ok());
  EXPECT_NE(opened.status().message().find(dir_ + "/engine"), std::string::npos);
  ASSERT_EQ(::chmod((dir_ + "/engine").c_str(), 0700), 0);

  // A key file writable by others: the whole load fails (fail closed), naming the file.
  auto store = open_store();
  ASSERT_TRUE(store);
  const std::string file = dir_ + "/client/mallory.pem";
  write_file(file, bob_, 0666);
  Status st = store->reload();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(st.message().find(file), std::string::npos);
  // The previous state is kept: alice still passes, the planted key does not.
  EXPECT_EQ(store->state("client", fp_of(alice_)), TrustState::kAccepted);
  EXPECT_EQ(store->state("client", fp_of(bob_)), TrustState::kUnknown);
  EXPECT_FALSE(TrustStore::open(dir_, fake_fingerprint).ok());
  ASSERT_EQ(::chmod(file.c_str(), 0644), 0);
  ASSERT_TRUE(store->reload().ok());
  EXPECT_EQ(store->state("client", fp_of(bob_)), TrustState::kAccepted);
}

TEST_F(TrustStoreTest, ReopenKeepsState) {
  const std::string pend = key_pem("pending one");
  {
    auto store = open_store();
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->accept_pem("client", alice_, "alice").ok());
    ASSERT_TRUE(store->accept_pem("engine", engine_, "engine-1").ok());
    ASSERT_TRUE(store->add_pending("client", fp_of(bob_), bob_, "bob", "10.0.0.2", 100).ok());
    ASSERT_TRUE(store->accept(hex_of(bob_)).ok());
    ASSERT_TRUE(store->revoke(hex_of(alice_)).ok());
    ASSERT_TRUE(store->add_pending("engine", fp_of(pend), pend, "e-2", "10.0.0.3", 200).ok());
    ASSERT_TRUE(store->add_pending("engine", fp_of(pend), pend, "e-2", "10.0.0.3", 260).ok());
  }
  auto store = open_store();
  ASSERT_TRUE(store);
  EXPECT_TRUE(store->warnings().empty()) << ::testing::PrintToString(store->warnings());
  EXPECT_EQ(store->state("client", fp_of(alice_)), TrustState::kRevoked);
  EXPECT_EQ(store->state("engine", fp_of(engine_)), TrustState::kAccepted);
  EXPECT_EQ(store->state("client", fp_of(bob_)), TrustState::kAccepted);
  EXPECT_EQ(store->state("engine", fp_of(pend)), TrustState::kPending);
  auto all = store->list();
  ASSERT_EQ(all.size(), 4u);
  // Sorted by state: pending, accepted (by fingerprint), revoked.
  EXPECT_EQ(all[0].state, TrustState::kPending);
  EXPECT_EQ(all[0].name, "e-2");
  EXPECT_EQ(all[0].peer, "10.0.0.3");
  EXPECT_EQ(all[0].first_seen, 200);
  EXPECT_EQ(all[0].last_seen, 260);
  EXPECT_EQ(all[0].attempts, 2);
  EXPECT_EQ(all[1].state, TrustState::kAccepted);
  EXPECT_EQ(all[2].state, TrustState::kAccepted);
  EXPECT_LT(all[1].fingerprint, all[2].fingerprint);
  EXPECT_EQ(all[3].state, TrustState::kRevoked);
  // Names written by the store come back.
  EXPECT_EQ(store->show(hex_of(engine_))->name, "engine-1");
  EXPECT_EQ(store->show(hex_of(bob_))->name, "bob");
  EXPECT_EQ(store->show(hex_of(alice_))->name, "alice");
}

// Names from peers are untrusted: never in file names, no control characters, capped.
TEST_F(TrustStoreTest, PeerNamesAreUntrusted) {
  auto store = open_store();
  ASSERT_TRUE(store);
  const std::string evil = "../../../etc/passwd\n# name: admin\x1b[31m" + std::string(1000, 'x');
  ASSERT_TRUE(store->add_pending("client", fp_of(bob_), bob_, evil, evil, 1).ok());
  ASSERT_TRUE(store->accept(hex_of(bob_)).ok());
  for (const auto& entry : fs::recursive_directory_iterator(dir_)) {
    const std::string name = entry.path().filename().string();
    EXPECT_EQ(name.find(".."), std::string::npos) << name;
    EXPECT_EQ(name.find("passwd"), std::string::npos) << name;
  }
  store.reset();
  store = open_store();
  ASSERT_TRUE(store);
  auto shown = store->show(hex_of(bob_));
  ASSERT_TRUE(shown.ok());
  EXPECT_EQ(shown->state, TrustState::kAccepted);
  EXPECT_LE(shown->name.size(), 256u);
  EXPECT_TRUE(shown->name.starts_with("../../../etc/passwd?# name: admin?[31m")) << shown->name;
  EXPECT_EQ(shown->name.find('\n'), std::string::npos);
}

}  // namespace
}  // namespace testudo::auth
