// Tests of the authorization policy: matching by fingerprint, name, group and "*", engine
// selectors, the owners-only default, strict parsing with JSON paths in the errors, and the
// file checks of load() (real files, real modes).
#include "auth/policy.h"
#include "base/test_temp_dir.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>

namespace testudo::auth {
namespace {

using testing::TempDir;

namespace fs = std::filesystem;

const std::string kAlice = "sha256:" + std::string(64, 'a');
const std::string kBob = "sha256:" + std::string(64, 'b');
const std::string kCarol = "sha256:" + std::string(64, 'c');
const std::string kMallory = "sha256:" + std::string(64, 'e');

constexpr Operation kAllOps[] = {Operation::kExecute,  Operation::kApply,  Operation::kPush,
                                 Operation::kPull,     Operation::kAbort,  Operation::kInterrupt,
                                 Operation::kShutdown, Operation::kStatus, Operation::kReadOthersResults,
                                 Operation::kKeyAdmin};

Policy parse_ok(const std::string& text) {
  auto p = Policy::parse(text);
  EXPECT_TRUE(p.ok()) << p.status().to_string();
  return p.ok() ? std::move(p).value() : Policy();
}

// Expects a parse error whose message contains `needle` (usually the JSON path).
void expect_error(const std::string& text, const std::string& needle, StatusCode code = StatusCode::kInvalidArgument) {
  auto p = Policy::parse(text);
  ASSERT_FALSE(p.ok()) << "accepted: " << text;
  EXPECT_EQ(p.status().code(), code) << p.status().to_string();
  EXPECT_NE(p.status().message().find(needle), std::string::npos)
      << "message: " << p.status().message() << "\nexpected to contain: " << needle;
}

std::string rules(const std::string& body) { return R"({"version": 1, "rules": [)" + body + "]}"; }

TEST(Operation, NamesRoundTrip) {
  for (Operation op : kAllOps) {
    auto back = operation_from_name(operation_name(op));
    ASSERT_TRUE(back.has_value()) << operation_name(op);
    EXPECT_EQ(*back, op);
  }
  EXPECT_EQ(operation_name(Operation::kReadOthersResults), "read_others_results");
  EXPECT_EQ(operation_name(Operation::kKeyAdmin), "keys");
  EXPECT_FALSE(operation_from_name("exec").has_value());
  EXPECT_FALSE(operation_from_name("*").has_value());
  EXPECT_FALSE(operation_from_name("").has_value());
}

TEST(Policy, EachOperationAllowedOnlyWhereListed) {
  for (Operation op : kAllOps) {
    Policy p = parse_ok(rules(R"({"identities": [")" + kAlice + R"("], "allow": [")" +
                              std::string(operation_name(op)) + R"("]})"));
    const Subject alice{kAlice, ""};
    const EngineFacts engine{7, {}};
    for (Operation other : kAllOps) {
      EXPECT_EQ(p.allows(alice, other), other == op) << operation_name(op) << " vs " << operation_name(other);
      EXPECT_EQ(p.allows(alice, other, engine), other == op) << operation_name(op) << " vs " << operation_name(other);
    }
    EXPECT_FALSE(p.allows({kBob, ""}, op));
    EXPECT_FALSE(p.allows({kBob, ""}, op, engine));
  }
}

TEST(Policy, StarAllowsEveryOperation) {
  Policy p = parse_ok(rules(R"({"identities": [")" + kAlice + R"("], "allow": ["*"]})"));
  for (Operation op : kAllOps) {
    EXPECT_TRUE(p.allows({kAlice, ""}, op)) << operation_name(op);
    EXPECT_TRUE(p.allows({kAlice, ""}, op, EngineFacts{123, {}})) << operation_name(op);
    EXPECT_FALSE(p.allows({kBob, "alice"}, op)) << operation_name(op);
  }
}

TEST(Policy, LoginIdentitiesAndLoginGroups) {
  Policy p = parse_ok(R"({"version": 1,
    "groups": {"staff": ["user:carol", "login-group:ops"]},
    "rules": [
      {"identities": ["user:alice", "krb:bob@EXAMPLE.ORG", "token:https://idp.example#dave"], "allow": ["execute"]},
      {"identities": ["login-group:analysts"], "allow": ["pull"], "engines": {"ids": [1]}},
      {"identities": ["group:staff"], "allow": ["status"]},
      {"identities": ["cn:alice"], "allow": ["shutdown"]}
    ]})");
  const EngineFacts e1{1, {}}, e2{2, {}};
  EXPECT_TRUE(p.allows(Subject{"user:alice", "", {}}, Operation::kExecute));
  EXPECT_TRUE(p.allows(Subject{"krb:bob@EXAMPLE.ORG", "", {}}, Operation::kExecute, e2));
  EXPECT_TRUE(p.allows(Subject{"token:https://idp.example#dave", "", {}}, Operation::kExecute));
  // Exact matches only: another realm, issuer or user is someone else.
  EXPECT_FALSE(p.allows(Subject{"krb:bob@EVIL.ORG", "", {}}, Operation::kExecute));
  EXPECT_FALSE(p.allows(Subject{"token:https://evil.example#dave", "", {}}, Operation::kExecute));
  EXPECT_FALSE(p.allows(Subject{"user:alice2", "", {}}, Operation::kExecute));
  // A login's groups count, with their engine selector.
  const Subject analyst{"user:erin", "", {"analysts"}};
  EXPECT_TRUE(p.allows(analyst, Operation::kPull));
  EXPECT_TRUE(p.allows(analyst, Operation::kPull, e1));
  EXPECT_FALSE(p.allows(analyst, Operation::kPull, e2));
  EXPECT_FALSE(p.allows(analyst, Operation::kExecute));
  // Policy groups may hold login identities and login groups.
  EXPECT_TRUE(p.allows(Subject{"user:carol", "", {}}, Operation::kStatus));
  EXPECT_TRUE(p.allows(Subject{"user:frank", "", {"ops"}}, Operation::kStatus));
  EXPECT_FALSE(p.allows(Subject{"user:frank", "", {"dev"}}, Operation::kStatus));
  // "cn:" is a certificate's name: a login never carries one, so user:alice is not cn:alice.
  EXPECT_FALSE(p.allows(Subject{"user:alice", "", {}}, Operation::kShutdown));
  EXPECT_NE(p.explain_denial(Subject{"user:alice", "", {}}, Operation::kPush, nullptr).find("user:alice"),
            std::string::npos);
}

TEST(Policy, MalformedLoginPatternsAreErrors) {
  expect_error(rules(R"({"identities": ["user:"], "allow": ["execute"]})"), "rules[0].identities[0]: empty name");
  expect_error(rules(R"({"identities": ["krb:"], "allow": ["execute"]})"), "empty name");
  expect_error(rules(R"({"identities": ["token:issuer-without-subject"], "allow": ["execute"]})"), "bad token identity");
  expect_error(rules(R"({"identities": ["login-group:"], "allow": ["execute"]})"), "empty group name");
  expect_error(rules(R"({"identities": ["ldap:alice"], "allow": ["execute"]})"), "unknown identity");
}

TEST(Policy, DefaultDenyAndEmptyPolicy) {
  Policy p = parse_ok(rules(""));
  EXPECT_EQ(p.rule_count(), 0u);
  Policy empty;
  for (Operation op : kAllOps) {
    EXPECT_FALSE(p.allows({kAlice, "alice"}, op));
    EXPECT_FALSE(empty.allows({kAlice, "alice"}, op, EngineFacts{}));
  }
}

// Every kept policy fixture (tests/fixtures/policy-v<N>.json, one per format version, using
// every feature of that version) parses with this code and gives the same answers
// (docs/formats.md). Policies are written by people, so the fixture is too.
TEST(Policy, EveryKeptFixtureParsesWithTheSameAnswers) {
  int fixtures = 0;
  for (const auto& entry : std::filesystem::directory_iterator(TESTUDO_FIXTURES_DIR)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with("policy-v") || !name.ends_with(".json")) continue;
    SCOPED_TRACE(name);
    ++fixtures;
    std::ifstream in(entry.path());
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    Policy p = parse_ok(text);
    std::string a = "sha256:";
    std::string b = "sha256:";
    for (int i = 0; i < 16; ++i) {
      a += "aa11";
      b += "bb22";
    }
    const EngineFacts gpu0{0, {{"gpu", "yes"}}};
    const EngineFacts cpu0{0, {}};
    const EngineFacts gpu5{5, {{"gpu", "yes"}}};
    EXPECT_TRUE(p.allows({a, ""}, Operation::kShutdown));
    EXPECT_TRUE(p.allows({kMallory, "root"}, Operation::kKeyAdmin));
    EXPECT_TRUE(p.allows({kMallory, "carol"}, Operation::kPush, gpu0));
    EXPECT_FALSE(p.allows({kMallory, "carol"}, Operation::kPush, cpu0));
    EXPECT_FALSE(p.allows({kMallory, "carol"}, Operation::kPush, gpu5));
    EXPECT_TRUE(p.allows({b, ""}, Operation::kExecute, gpu0));
    EXPECT_FALSE(p.allows({b, ""}, Operation::kShutdown));
    EXPECT_TRUE(p.allows({kMallory, "dave"}, Operation::kPull, gpu5));
    EXPECT_FALSE(p.allows({kMallory, "dave"}, Operation::kPush, gpu5));
    EXPECT_TRUE(p.allows({kMallory, ""}, Operation::kStatus));
    EXPECT_FALSE(p.allows({kMallory, ""}, Operation::kReadOthersResults));
  }
  EXPECT_GE(fixtures, 1) << "no policy fixtures in " << TESTUDO_FIXTURES_DIR;
}

TEST(Policy, IdentityPatterns) {
  Policy p = parse_ok(R"({
    "version": 1,
    "groups": {"admins": [")" + kAlice + R"(", "cn:root"], "analysts": ["cn:bob"]},
    "rules": [
      {"identities": ["group:admins"], "allow": ["*"]},
      {"identities": ["group:analysts", ")" + kCarol + R"("], "allow": ["execute", "pull"]},
      {"identities": ["cn:dave"], "allow": ["push"]},
      {"identities": ["*"], "allow": ["status"]}
    ]})");
  // sha256: in a group
  EXPECT_TRUE(p.allows({kAlice, ""}, Operation::kShutdown));
  // cn: in a group, whatever the key
  EXPECT_TRUE(p.allows({kMallory, "root"}, Operation::kKeyAdmin));
  EXPECT_FALSE(p.allows({kMallory, "roo"}, Operation::kKeyAdmin));
  EXPECT_FALSE(p.allows({kMallory, "Root"}, Operation::kKeyAdmin));
  // group of names, plus a fingerprint in the same rule
  EXPECT_TRUE(p.allows({kMallory, "bob"}, Operation::kExecute, EngineFacts{1, {}}));
  EXPECT_TRUE(p.allows({kCarol, ""}, Operation::kPull, EngineFacts{1, {}}));
  EXPECT_FALSE(p.allows({kCarol, ""}, Operation::kPush, EngineFacts{1, {}}));
  // cn: directly
  EXPECT_TRUE(p.allows({kBob, "dave"}, Operation::kPush, EngineFacts{1, {}}));
  EXPECT_FALSE(p.allows({kBob, "dave"}, Operation::kExecute, EngineFacts{1, {}}));
  // "*": anyone, but only what it lists
  EXPECT_TRUE(p.allows({kMallory, ""}, Operation::kStatus));
  EXPECT_FALSE(p.allows({kMallory, ""}, Operation::kExecute, EngineFacts{1, {}}));
  EXPECT_FALSE(p.allows({kMallory, ""}, Operation::kShutdown));
  // An empty name never matches a cn: pattern.
  EXPECT_FALSE(p.allows({kMallory, ""}, Operation::kPush, EngineFacts{1, {}}));
}

TEST(Policy, EngineIdSelector) {
  Policy p = parse_ok(rules(R"({"identities": [")" + kBob + R"("], "allow": ["execute", "status"],
                               "engines": {"ids": [0, 1, 5]}})"));
  const Subject bob{kBob, "bob"};
  EXPECT_TRUE(p.allows(bob, Operation::kExecute, EngineFacts{0, {}}));
  EXPECT_TRUE(p.allows(bob, Operation::kExecute, EngineFacts{5, {}}));
  EXPECT_FALSE(p.allows(bob, Operation::kExecute, EngineFacts{2, {}}));
  // Operations without an engine ignore the selector.
  EXPECT_TRUE(p.allows(bob, Operation::kStatus));
  // ... but an engine-limited grant is not a grant on every engine.
  EXPECT_FALSE(p.allows_on_every_engine(bob, Operation::kExecute));
}

TEST(Policy, EngineTagSelector) {
  Policy p = parse_ok(rules(R"({"identities": ["cn:bob"], "allow": ["execute"],
                               "engines": {"tags": {"gpu": "yes", "site": "eu"}}})"));
  const Subject bob{kBob, "bob"};
  EXPECT_TRUE(p.allows(bob, Operation::kExecute, EngineFacts{3, {{"gpu", "yes"}, {"site", "eu"}, {"x", "1"}}}));
  EXPECT_FALSE(p.allows(bob, Operation::kExecute, EngineFacts{3, {{"gpu", "no"}, {"site", "eu"}}}));  // mismatch
  EXPECT_FALSE(p.allows(bob, Operation::kExecute, EngineFacts{3, {{"site", "eu"}}}));                 // missing tag
  EXPECT_FALSE(p.allows(bob, Operation::kExecute, EngineFacts{3, {}}));
}

TEST(Policy, EngineIdsAndTagsMustBothMatch) {
  Policy p = parse_ok(rules(R"({"identities": ["cn:bob"], "allow": ["push"],
                               "engines": {"ids": [1], "tags": {"gpu": "yes"}}},
                              {"identities": ["cn:bob"], "allow": ["pull"], "engines": "*"})"));
  const Subject bob{kBob, "bob"};
  EXPECT_TRUE(p.allows_on_every_engine(bob, Operation::kPull));
  EXPECT_FALSE(p.allows_on_every_engine(bob, Operation::kPush));
  EXPECT_FALSE(p.allows_on_every_engine(Subject{kBob, "carol"}, Operation::kPull));
  EXPECT_TRUE(p.allows(bob, Operation::kPush, EngineFacts{1, {{"gpu", "yes"}}}));
  EXPECT_FALSE(p.allows(bob, Operation::kPush, EngineFacts{2, {{"gpu", "yes"}}}));
  EXPECT_FALSE(p.allows(bob, Operation::kPush, EngineFacts{1, {{"gpu", "no"}}}));
  // A second rule adds pull on every engine, not push.
  EXPECT_TRUE(p.allows(bob, Operation::kPull, EngineFacts{99, {}}));
  EXPECT_FALSE(p.allows(bob, Operation::kPush, EngineFacts{99, {}}));
}

TEST(Policy, OwnersOnly) {
  Policy p = Policy::owners_only({kAlice, kBob});
  for (Operation op : kAllOps) {
    EXPECT_TRUE(p.allows({kAlice, ""}, op));
    EXPECT_TRUE(p.allows({kBob, "whoever"}, op, EngineFacts{4, {{"gpu", "yes"}}}));
    EXPECT_FALSE(p.allows({kCarol, "alice"}, op));
    EXPECT_FALSE(p.allows({kCarol, ""}, op, EngineFacts{4, {}}));
  }
  Policy nobody = Policy::owners_only({});
  EXPECT_FALSE(nobody.allows({kAlice, ""}, Operation::kStatus));
}

TEST(Policy, ExplainDenialNamesOperationSubjectAndEngine) {
  Policy p = parse_ok(rules(R"({"identities": ["cn:alice"], "allow": ["push"], "engines": {"ids": [1]}})"));
  const Subject alice{"sha256:ab12" + std::string(60, '0'), "alice"};
  const EngineFacts engine{3, {{"secret-ish", "value"}}};
  ASSERT_FALSE(p.allows(alice, Operation::kPush, engine));
  const std::string why = p.explain_denial(alice, Operation::kPush, &engine);
  EXPECT_NE(why.find("'push'"), std::string::npos) << why;
  EXPECT_NE(why.find("engine 3"), std::string::npos) << why;
  EXPECT_NE(why.find("sha256:ab12"), std::string::npos) << why;
  EXPECT_NE(why.find("(alice)"), std::string::npos) << why;
  EXPECT_NE(why.find("other engines"), std::string::npos) << why;
  EXPECT_EQ(why.find("value"), std::string::npos) << why;  // no tag values
  const std::string why2 = p.explain_denial({kMallory, ""}, Operation::kShutdown, nullptr);
  EXPECT_NE(why2.find("'shutdown'"), std::string::npos) << why2;
  EXPECT_EQ(why2.find("engine"), std::string::npos) << why2;
  const EngineFacts engine1{1, {}};
  EXPECT_EQ(p.explain_denial(alice, Operation::kPush, &engine1).find("no rule"), std::string::npos);
}

TEST(PolicyParse, MalformedInputsNameTheirPath) {
  const std::string fp = R"([")" + kAlice + R"("])";
  expect_error("{not json", "not valid JSON");
  expect_error("[]", "must be a JSON object");
  expect_error(R"({"version": 1, "rules": [], "rulez": []})", "unknown key \"rulez\"");
  expect_error(R"({"rules": []})", "version: missing");
  expect_error(R"({"version": 2, "rules": []})", "version: format version 2 was written for a newer testudo; this one reads version 1");
  // A newer policy's new keys are not called typos: its version is what is wrong.
  expect_error(R"({"version": 3, "rules": [], "defaults": {}})", "version: format version 3 was written for a newer");
  expect_error(R"({"version": 0, "rules": []})", "version: unsupported version 0");
  expect_error(R"({"version": "1", "rules": []})", "version: unsupported");
  expect_error(R"({"version": 1.0, "rules": []})", "version: unsupported");
  expect_error(R"({"version": 1})", "rules: missing");
  expect_error(R"({"version": 1, "rules": {}})", "rules: must be an array");
  expect_error(rules(R"({"identities": )" + fp + R"(, "allow": ["execute"]},
                        {"identities": )" + fp + R"(, "allow": ["pull", "exec"]})"),
               "rules[1].allow[1]: unknown operation \"exec\" (known: execute, apply,");
  expect_error(rules(R"({"identities": )" + fp + R"(, "allow": ["execute"], "alow": ["push"]})"),
               "rules[0]: unknown key \"alow\"");
  expect_error(rules(R"({"identities": )" + fp + R"(, "allow": "execute"})"), "rules[0].allow: must be a non-empty array");
  expect_error(rules(R"({"identities": )" + fp + R"(, "allow": []})"), "rules[0].allow: must be a non-empty array");
  expect_error(rules(R"({"identities": )" + fp + R"(, "allow": [7]})"), "rules[0].allow[0]: must be a string, not number");
  expect_error(rules(R"({"identities": )" + fp + R"(})"), "rules[0]: missing \"allow\"");
  expect_error(rules(R"({"allow": ["push"]})"), "rules[0]: missing \"identities\"");
  expect_error(rules(R"({"identities": [], "allow": ["push"]})"), "rules[0].identities: must be a non-empty array");
  expect_error(rules(R"({"identities": ["sha256:ABC"], "allow": ["push"]})"), "rules[0].identities[0]: bad fingerprint");
  expect_error(rules(R"({"identities": ["sha256:)" + std::string(64, 'A') + R"("], "allow": ["push"]})"),
               "rules[0].identities[0]: bad fingerprint");
  expect_error(rules(R"({"identities": ["cn:a", "alice"], "allow": ["push"]})"), "rules[0].identities[1]: unknown identity");
  expect_error(rules(R"({"identities": ["cn:"], "allow": ["push"]})"), "rules[0].identities[0]: empty name");
  expect_error(rules(R"({"identities": [42], "allow": ["push"]})"), "rules[0].identities[0]: must be a string");
  expect_error(rules(R"({"identities": ["group:nope"], "allow": ["push"]})"),
               "rules[0].identities[0]: undefined group \"nope\"");
  expect_error(rules(R"("not a rule")"), "rules[0]: must be an object");
  expect_error(rules(R"({"identities": ["*"], "allow": ["push"], "engines": {}})"), "rules[0].engines: empty object");
  expect_error(rules(R"({"identities": ["*"], "allow": ["push"], "engines": "all"})"), "rules[0].engines: must be");
  expect_error(rules(R"({"identities": ["*"], "allow": ["push"], "engines": [0]})"), "rules[0].engines: must be");
  expect_error(rules(R"({"identities": ["*"], "allow": ["push"], "engines": {"id": [0]}})"),
               "rules[0].engines: unknown key \"id\"");
  expect_error(rules(R"({"identities": ["*"], "allow": ["push"], "engines": {"ids": [0, -1]}})"),
               "rules[0].engines.ids[1]: must be an engine id");
  expect_error(rules(R"({"identities": ["*"], "allow": ["push"], "engines": {"ids": [4294967296]}})"),
               "rules[0].engines.ids[0]: must be an engine id");
  expect_error(rules(R"({"identities": ["*"], "allow": ["push"], "engines": {"ids": ["0"]}})"),
               "rules[0].engines.ids[0]: must be an engine id");
  expect_error(rules(R"({"identities": ["*"], "allow": ["push"], "engines": {"ids": []}})"),
               "rules[0].engines.ids: must be a non-empty array");
  expect_error(rules(R"({"identities": ["*"], "allow": ["push"], "engines": {"tags": {"gpu": true}}})"),
               "rules[0].engines.tags.gpu: must be a string");
  expect_error(rules(R"({"identities": ["*"], "allow": ["push"], "engines": {"tags": {}}})"),
               "rules[0].engines.tags: must be a non-empty object");
  // Groups: flat, well-formed members.
  expect_error(R"({"version": 1, "groups": {"admins": ["cn:a"], "ops": ["cn:b", "group:admins"]}, "rules": []})",
               "groups.ops[1]: nested groups are not supported");
  expect_error(R"({"version": 1, "groups": {"admins": ["*"]}, "rules": []})", "groups.admins[0]: unknown identity");
  expect_error(R"({"version": 1, "groups": {"admins": "cn:a"}, "rules": []})", "groups.admins: must be an array");
  expect_error(R"({"version": 1, "groups": {"admins": ["sha256:00"]}, "rules": []})", "groups.admins[0]: bad fingerprint");
  expect_error(R"({"version": 1, "groups": [], "rules": []})", "groups: must be an object");
  // Duplicate keys would otherwise silently keep only the last.
  expect_error(rules(R"({"identities": ["*"], "allow": ["status"], "allow": ["*"]})"), "duplicate key \"allow\"");
}

TEST(PolicyParse, Bounds) {
  const std::string long_name = "cn:" + std::string(300, 'x');
  expect_error(rules(R"({"identities": [")" + long_name + R"("], "allow": ["push"]})"),
               "rules[0].identities[0]: identity longer than 256 bytes");
  std::string many;
  for (int i = 0; i < 10'001; ++i) many += std::string(i ? "," : "") + R"({"identities":["*"],"allow":["status"]})";
  expect_error(rules(many), "over the limit of 10000", StatusCode::kResourceExhausted);
  expect_error(std::string(kMaxPolicyBytes + 1, ' '), "over the limit", StatusCode::kResourceExhausted);
  // Exactly 10,000 rules is fine.
  many.clear();
  for (int i = 0; i < 10'000; ++i) many += std::string(i ? "," : "") + R"({"identities":["*"],"allow":["status"]})";
  EXPECT_EQ(parse_ok(rules(many)).rule_count(), 10'000u);
}

TEST(PolicyParse, GarbageNeverCrashes) {
  const std::string valid = rules(R"({"identities": ["cn:bob", ")" + kAlice + R"("], "allow": ["push", "*"],
                                     "engines": {"ids": [0, 1], "tags": {"gpu": "yes"}}})");
  ASSERT_TRUE(Policy::parse(valid).ok());
  // Every prefix, and a stray byte at every position, is an error value, not a crash.
  for (std::size_t i = 0; i < valid.size(); ++i) {
    EXPECT_FALSE(Policy::parse(valid.substr(0, i)).ok());
    std::string mutated = valid;
    mutated[i] = '\xff';
    (void)Policy::parse(mutated);
  }
}


std::string write_file(const std::string& path, const std::string& text, mode_t mode) {
  std::ofstream(path) << text;
  EXPECT_EQ(::chmod(path.c_str(), mode), 0);
  return path;
}

TEST(PolicyLoad, AcceptsOwnerWritableFiles) {
  TempDir dir;
  const std::string text = rules(R"({"identities": ["cn:bob"], "allow": ["status"]})");
  for (mode_t mode : {0600, 0644, 0400}) {
    const std::string path = write_file(dir.path() + "/policy.json", text, mode);
    auto p = Policy::load(path);
    ASSERT_TRUE(p.ok()) << std::oct << mode << ": " << p.status().to_string();
    EXPECT_TRUE(p->allows({kBob, "bob"}, Operation::kStatus));
    fs::remove(path);
  }
}

TEST(PolicyLoad, RefusesFilesWritableByOthers) {
  TempDir dir;
  const std::string text = rules(R"({"identities": ["*"], "allow": ["*"]})");
  for (mode_t mode : {0664, 0646, 0666}) {
    const std::string path = write_file(dir.path() + "/policy.json", text, mode);
    auto p = Policy::load(path);
    ASSERT_FALSE(p.ok()) << std::oct << mode;
    EXPECT_EQ(p.status().code(), StatusCode::kPermissionDenied);
    EXPECT_NE(p.status().message().find("policy file " + path + " is writable by others"), std::string::npos)
        << p.status().message();
    EXPECT_NE(p.status().message().find("chmod 600 or 644"), std::string::npos) << p.status().message();
    fs::remove(path);
  }
}

TEST(PolicyLoad, MissingFileIsNotFound) {
  TempDir dir;
  auto p = Policy::load(dir.path() + "/nope.json");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kNotFound);
  EXPECT_NE(p.status().message().find("policy file " + dir.path() + "/nope.json"), std::string::npos);
}

TEST(PolicyLoad, ParseErrorsNameTheFileAndPath) {
  TempDir dir;
  const std::string path =
      write_file(dir.path() + "/policy.json", rules(R"({"identities": ["*"], "allow": ["exec"]})"), 0600);
  auto p = Policy::load(path);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("policy file " + path + ": rules[0].allow[0]: unknown operation"),
            std::string::npos)
      << p.status().message();
  // A directory is not a policy file.
  auto d = Policy::load(dir.path());
  EXPECT_FALSE(d.ok());
}

}  // namespace
}  // namespace testudo::auth
