// Tests of the user file: verifiers (RFC 7677's worked example), strict parsing with JSON
// paths in the errors, owner-only files on real modes, atomic writes, round trips, decoys for
// unknown names, and the controller's reload on change (UserStore).
#include "auth/user_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/test_temp_dir.h"

namespace testudo::auth {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::byte> bytes_of(std::string_view base64) {
  auto b = crypto::from_base64(base64);
  EXPECT_TRUE(b.ok()) << base64;
  return b.ok() ? *b : std::vector<std::byte>{};
}

UserEntry entry_for(std::string_view password, std::vector<std::string> groups = {}, bool disabled = false) {
  auto v = make_scram_verifier(password, kMinScramIterations);
  EXPECT_TRUE(v.ok()) << v.status().to_string();
  return UserEntry{v.ok() ? *v : ScramVerifier{}, std::move(groups), disabled};
}

UserFile sample_file() {
  auto file = UserFile::create();
  EXPECT_TRUE(file.ok());
  EXPECT_TRUE(file->set("alice", entry_for("correct horse", {"analysts", "admins"})).ok());
  EXPECT_TRUE(file->set("bob", entry_for("battery staple", {}, /*disabled=*/true)).ok());
  return std::move(file).value();
}

void write_file(const std::string& path, const std::string& text, mode_t mode = 0600) {
  ::chmod(path.c_str(), 0600);  // a previous case may have left it read-only
  {
    std::ofstream out(path, std::ios::trunc);
    out << text;
  }
  ASSERT_EQ(::chmod(path.c_str(), mode), 0);
}

TEST(ScramVerifierTest, MatchesTheWorkedExampleOfRfc7677) {
  // RFC 7677 section 3: user "user", password "pencil".
  const auto salt = bytes_of("W22ZaJ0SNY7soEsUEjb6gQ==");
  auto salted = scram_salted_password("pencil", salt, 4096);
  ASSERT_TRUE(salted.ok());
  const ScramVerifier v = scram_verifier_from_salted(*salted, salt, 4096);
  const std::string nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
  const std::string auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=" + nonce +
                                   ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=" + nonce;
  // The server's signature is the example's v=...
  EXPECT_EQ(crypto::to_base64(crypto::hmac_sha256(v.server_key, crypto::as_bytes(auth_message))),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
  // ... and the example's ClientProof verifies against StoredKey the way a server checks it.
  const auto proof = bytes_of("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
  crypto::Digest client_key = crypto::hmac_sha256(v.stored_key, crypto::as_bytes(auth_message));
  for (std::size_t i = 0; i < client_key.size(); ++i) client_key[i] ^= proof[i];
  EXPECT_EQ(crypto::sha256(client_key), v.stored_key);
}

TEST(ScramVerifierTest, SaltsAreFreshAndBadPasswordsAndCountsAreRefused) {
  auto a = make_scram_verifier("same password", kMinScramIterations);
  auto b = make_scram_verifier("same password", kMinScramIterations);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->salt.size(), kScramSaltBytes);
  EXPECT_NE(a->salt, b->salt);
  EXPECT_NE(a->stored_key, b->stored_key);
  EXPECT_FALSE(make_scram_verifier("", kMinScramIterations).ok());
  EXPECT_FALSE(make_scram_verifier("x", kMinScramIterations - 1).ok());
  EXPECT_FALSE(make_scram_verifier("x", kMaxScramIterations + 1).ok());
  // SASLprep refuses control characters; the error does not repeat the password.
  auto bad = make_scram_verifier("hunter\x07secret", kMinScramIterations);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message().find("hunter"), std::string::npos) << bad.status().message();
  // SASLprep maps a non-ASCII space to a space: both spellings are one password.
  std::vector<std::byte> salt(16, std::byte{1});
  EXPECT_EQ(*scram_salted_password("a\xC2\xA0" "b", salt, 4096), *scram_salted_password("a b", salt, 4096));
}

TEST(UserNameTest, OnlyNamesThatNeedNoEscaping) {
  for (const char* good : {"alice", "a", "Bob.Smith", "carol_1", "dave@example.org", "e-f"}) {
    EXPECT_TRUE(check_user_name(good).ok()) << good;
  }
  for (const char* bad : {"", ".alice", "-x", "al,ice", "al=ice", "al ice", "al:ice", "\xC3\xA9lise", "a\nb"}) {
    EXPECT_FALSE(check_user_name(bad).ok()) << bad;
  }
  EXPECT_TRUE(check_user_name(std::string(64, 'x')).ok());
  EXPECT_FALSE(check_user_name(std::string(65, 'x')).ok());
  EXPECT_FALSE(check_group_name("a,b").ok());
}

TEST(UserFileTest, RoundTripKeepsEverythingButNoPassword) {
  const UserFile file = sample_file();
  const std::string text = file.serialize();
  EXPECT_EQ(text.find("correct horse"), std::string::npos);
  auto again = UserFile::parse(text);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(again->serialize(), text);
  const UserEntry* alice = again->find("alice");
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->groups, (std::vector<std::string>{"admins", "analysts"}));
  EXPECT_FALSE(alice->disabled);
  EXPECT_EQ(alice->verifier.stored_key, file.find("alice")->verifier.stored_key);
  EXPECT_EQ(alice->verifier.server_key, file.find("alice")->verifier.server_key);
  EXPECT_EQ(alice->verifier.salt, file.find("alice")->verifier.salt);
  EXPECT_EQ(alice->verifier.iterations, kMinScramIterations);
  ASSERT_NE(again->find("bob"), nullptr);
  EXPECT_TRUE(again->find("bob")->disabled);
  EXPECT_EQ(again->find("carol"), nullptr);
  EXPECT_EQ(again->decoy_verifier("carol").salt, file.decoy_verifier("carol").salt);
}

TEST(UserFileTest, SetAndRemove) {
  UserFile file = sample_file();
  EXPECT_FALSE(file.set("no,comma", entry_for("x")).ok());
  EXPECT_FALSE(file.set("carol", entry_for("x", {"bad group"})).ok());
  UserEntry low = entry_for("x");
  low.verifier.iterations = 10;
  EXPECT_FALSE(file.set("carol", low).ok());
  EXPECT_TRUE(file.set("carol", entry_for("x", {"b", "a", "b"})).ok());
  EXPECT_EQ(file.find("carol")->groups, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(file.remove("carol"));
  EXPECT_FALSE(file.remove("carol"));
  EXPECT_EQ(file.users().size(), 2u);
}

// Each case: what to change in a valid file, and a part of the error it must give.
TEST(UserFileTest, StrictParsingNamesThePath) {
  const json base = json::parse(sample_file().serialize());
  struct Case {
    std::string what;
    std::function<void(json&)> change;
    std::string error;
  };
  const std::vector<Case> cases = {
      {"unknown top-level key", [](json& j) { j["userz"] = json::object(); }, "unknown key \"userz\""},
      {"no version", [](json& j) { j.erase("version"); }, "version: missing"},
      {"newer version", [](json& j) { j["version"] = 2; }, "newer testudo"},
      {"version as text", [](json& j) { j["version"] = "1"; }, "unsupported version"},
      {"no decoy key", [](json& j) { j.erase("decoy_key"); }, "decoy_key: missing"},
      {"short decoy key", [](json& j) { j["decoy_key"] = "AAAA"; }, "decoy_key: must hold 32 bytes"},
      {"no users", [](json& j) { j.erase("users"); }, "users: missing"},
      {"users as array", [](json& j) { j["users"] = json::array(); }, "users: must be an object"},
      {"a password in the file", [](json& j) { j["users"]["alice"]["password"] = "x"; },
       "users.alice: unknown key \"password\""},
      {"bad user name", [](json& j) { j["users"]["a,b"] = j["users"]["alice"]; }, "users: user name"},
      {"no salt", [](json& j) { j["users"]["alice"].erase("salt"); }, "users.alice: missing \"salt\""},
      {"bad base64", [](json& j) { j["users"]["alice"]["salt"] = "not base64!"; }, "users.alice.salt"},
      {"short salt", [](json& j) { j["users"]["alice"]["salt"] = "AAAA"; }, "users.alice.salt: must hold 8..64"},
      {"few iterations", [](json& j) { j["users"]["alice"]["iterations"] = 4095; }, "users.alice.iterations"},
      {"too many iterations", [](json& j) { j["users"]["alice"]["iterations"] = 10'000'001; },
       "users.alice.iterations"},
      {"negative iterations", [](json& j) { j["users"]["alice"]["iterations"] = -5000; }, "users.alice.iterations"},
      {"short stored key", [](json& j) { j["users"]["alice"]["stored_key"] = "AAAA"; }, "users.alice.stored_key"},
      {"server key as number", [](json& j) { j["users"]["alice"]["server_key"] = 7; }, "users.alice.server_key"},
      {"groups as text", [](json& j) { j["users"]["alice"]["groups"] = "admins"; }, "users.alice.groups"},
      {"bad group", [](json& j) { j["users"]["alice"]["groups"] = {"ok", "not ok"}; }, "users.alice.groups[1]"},
      {"disabled as text", [](json& j) { j["users"]["alice"]["disabled"] = "yes"; }, "users.alice.disabled"},
  };
  for (const auto& c : cases) {
    json j = base;
    c.change(j);
    auto parsed = UserFile::parse(j.dump());
    ASSERT_FALSE(parsed.ok()) << c.what;
    EXPECT_NE(parsed.status().message().find(c.error), std::string::npos)
        << c.what << ": " << parsed.status().message();
  }
  for (const char* bad : {"", "[]", "{", "{\"version\": 1, \"version\": 1}"}) EXPECT_FALSE(UserFile::parse(bad).ok()) << bad;
  // A duplicate user: nlohmann would keep the second silently.
  std::string text = base.dump();
  const std::string alice = "\"alice\":" + base["users"]["alice"].dump();
  text.insert(text.find(alice), alice + ",");
  auto dup = UserFile::parse(text);
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.status().message().find("duplicate key \"alice\""), std::string::npos) << dup.status().message();
}

TEST(UserFileTest, LoadRefusesLooseModesAndNamesTheFix) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/users.json";
  EXPECT_EQ(UserFile::load(path).status().code(), StatusCode::kNotFound);
  const std::string text = sample_file().serialize();
  for (mode_t mode : {0640, 0604, 0660, 0644}) {
    write_file(path, text, mode);
    auto loaded = UserFile::load(path);
    ASSERT_FALSE(loaded.ok()) << std::oct << mode;
    EXPECT_EQ(loaded.status().code(), StatusCode::kPermissionDenied);
    EXPECT_NE(loaded.status().message().find("chmod 600 " + path), std::string::npos) << loaded.status().message();
  }
  write_file(path, text, 0600);
  EXPECT_TRUE(UserFile::load(path).ok());
  write_file(path, text, 0400);
  EXPECT_TRUE(UserFile::load(path).ok());
  // A symbolic link to a good file is refused too (whoever can plant it can point it anywhere).
  fs::create_symlink(path, dir.path() + "/link.json");
  EXPECT_EQ(UserFile::load(dir.path() + "/link.json").status().code(), StatusCode::kPermissionDenied);
  // Errors in the contents name the file.
  write_file(path, "{\"version\": 1}", 0600);
  auto bad = UserFile::load(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("user file " + path + ": decoy_key: missing"), std::string::npos)
      << bad.status().message();
}

TEST(UserFileTest, SaveIsAtomicAndOwnerOnly) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/users.json";
  const UserFile file = sample_file();
  ASSERT_TRUE(file.save(path).ok());
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  EXPECT_EQ(before.st_mode & 07777, 0600u);
  // A reader holding the old file keeps reading the old contents: the new one is renamed in.
  std::ifstream old_reader(path);
  UserFile changed = file;
  ASSERT_TRUE(changed.remove("bob"));
  ASSERT_TRUE(changed.save(path).ok());
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_NE(before.st_ino, after.st_ino);
  EXPECT_EQ(after.st_mode & 07777, 0600u);
  std::string old_text((std::istreambuf_iterator<char>(old_reader)), std::istreambuf_iterator<char>());
  EXPECT_EQ(old_text, file.serialize());
  auto loaded = UserFile::load(path);
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->find("bob"), nullptr);
  // Nothing but the file is left in the directory (no temporary files).
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
}

TEST(UserFileTest, DecoysAreStablePerNameAndLookLikeUsers) {
  UserFile file = sample_file();
  const ScramVerifier carol1 = file.decoy_verifier("carol");
  const ScramVerifier carol2 = file.decoy_verifier("carol");
  const ScramVerifier dave = file.decoy_verifier("dave");
  EXPECT_EQ(carol1.salt, carol2.salt);
  EXPECT_EQ(carol1.salt.size(), kScramSaltBytes);
  EXPECT_NE(carol1.salt, dave.salt);
  EXPECT_EQ(carol1.iterations, kMinScramIterations);  // what both users have
  // Another file (another decoy key) shows other salts.
  EXPECT_NE(sample_file().decoy_verifier("carol").salt, carol1.salt);
  // With no users, the default count.
  EXPECT_EQ(UserFile::create()->decoy_verifier("carol").iterations, kDefaultScramIterations);
}

// Every kept user file fixture (tests/fixtures/users-v<N>.json, written by `testudo users` of
// that format version; docs/formats.md) parses with this code, and its users' passwords still
// verify: alice ("alice-fixture-password", groups admins and analysts) and bob
// ("bob-fixture-password", disabled).
TEST(UserFileTest, EveryKeptFixtureParsesAndItsPasswordsVerify) {
  int fixtures = 0;
  for (const auto& entry : fs::directory_iterator(TESTUDO_FIXTURES_DIR)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with("users-v") || !name.ends_with(".json")) continue;
    SCOPED_TRACE(name);
    ++fixtures;
    std::ifstream in(entry.path());
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto file = UserFile::parse(text);
    ASSERT_TRUE(file.ok()) << file.status().to_string();
    EXPECT_EQ(file->users().size(), 2u);
    for (const auto& [user, password] : {std::pair<std::string, std::string>{"alice", "alice-fixture-password"},
                                         {"bob", "bob-fixture-password"}}) {
      const UserEntry* e = file->find(user);
      ASSERT_NE(e, nullptr) << user;
      auto salted = scram_salted_password(password, e->verifier.salt, e->verifier.iterations);
      ASSERT_TRUE(salted.ok());
      const ScramVerifier again = scram_verifier_from_salted(*salted, e->verifier.salt, e->verifier.iterations);
      EXPECT_EQ(again.stored_key, e->verifier.stored_key) << user;
      EXPECT_EQ(again.server_key, e->verifier.server_key) << user;
    }
    EXPECT_EQ(file->find("alice")->groups, (std::vector<std::string>{"admins", "analysts"}));
    EXPECT_FALSE(file->find("alice")->disabled);
    EXPECT_TRUE(file->find("bob")->disabled);
  }
  EXPECT_GE(fixtures, 1) << "no user file fixtures in " << TESTUDO_FIXTURES_DIR;
}

TEST(UserStoreTest, RereadsTheFileWhenItChangesAndFailsClosed) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/users.json";
  EXPECT_EQ(UserStore::open(path).status().code(), StatusCode::kNotFound);
  UserFile file = sample_file();
  ASSERT_TRUE(file.save(path).ok());
  auto store = UserStore::open(path);
  ASSERT_TRUE(store.ok());
  auto first = (*store)->current();
  ASSERT_TRUE(first.ok());
  EXPECT_EQ((*first)->users().size(), 2u);
  // Unchanged: the same snapshot, not a re-read.
  EXPECT_EQ((*store)->current()->get(), first->get());

  ASSERT_TRUE(file.set("carol", entry_for("pw")).ok());
  ASSERT_TRUE(file.save(path).ok());
  auto second = (*store)->current();
  ASSERT_TRUE(second.ok());
  EXPECT_NE((*second)->find("carol"), nullptr);
  // The snapshot a login holds does not change under it.
  EXPECT_EQ((*first)->find("carol"), nullptr);

  // Loosened in place (same inode and contents): refused until fixed.
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  EXPECT_EQ((*store)->current().status().code(), StatusCode::kPermissionDenied);
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  EXPECT_TRUE((*store)->current().ok());

  // Removed: every login fails; no stale copy is used.
  ASSERT_EQ(::unlink(path.c_str()), 0);
  EXPECT_EQ((*store)->current().status().code(), StatusCode::kNotFound);
  // Broken by a hand edit: refused, naming the problem.
  write_file(path, "{\"version\": 1, \"users\": {}}");
  auto broken = (*store)->current();
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("decoy_key"), std::string::npos);
  ASSERT_TRUE(file.save(path).ok());
  EXPECT_TRUE((*store)->current().ok());
}

}  // namespace
}  // namespace testudo::auth
