// Tests of password logins (SCRAM-SHA-256-PLUS over GNU SASL): the controller's and the
// client's halves talking in memory, with real verifiers and real channel bindings (32-byte
// values as RFC 9266 exporters give them). The attacks are real messages: a login replayed
// with another session's binding, a relay rewriting the binding, tampered nonces, proofs and
// server signatures, a client without channel binding, an impostor controller.
#include "auth/scram_login.h"

#include <gtest/gtest.h>

#include "auth/user_file.h"

namespace testudo::auth {
namespace {

constexpr std::string_view kAlicePassword = "correct horse battery";
constexpr std::string_view kDavePassword = "dave's password";

ChannelBinding binding_of(std::uint8_t seed) {
  ChannelBinding b;
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::byte>(seed * 31 + i);
  return b;
}

std::shared_ptr<const UserFile> users() {
  static const std::shared_ptr<const UserFile> file = [] {
    auto f = UserFile::create();
    EXPECT_TRUE(f.ok());
    auto alice = make_scram_verifier(kAlicePassword, kMinScramIterations);
    auto dave = make_scram_verifier(kDavePassword, kMinScramIterations);
    EXPECT_TRUE(f->set("alice", UserEntry{*alice, {"analysts"}, false}).ok());
    EXPECT_TRUE(f->set("dave", UserEntry{*dave, {}, /*disabled=*/true}).ok());
    return std::make_shared<const UserFile>(std::move(f).value());
  }();
  return file;
}

std::unique_ptr<LoginServer> server(const ChannelBinding& b, std::shared_ptr<const UserFile> file = users()) {
  auto s = make_scram_login_server(std::move(file), b);
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  return std::move(s).value();
}

std::unique_ptr<LoginClient> client(std::string user, std::string_view password) {
  auto c = make_scram_login_client(std::move(user), [pw = std::string(password)] { return StatusOr<std::string>(pw); });
  EXPECT_TRUE(c.ok()) << c.status().to_string();
  return std::move(c).value();
}

// Every message of one exchange, and where it stopped.
struct Transcript {
  std::string client_first, server_first, client_final, server_final;
  Status server_status;   // the first server error, if any
  Status client_status;   // the first client error, or finished()
  std::optional<LoginIdentity> identity;
  std::string claimed;
};

// Runs a login; `tamper` may rewrite each message in flight (0: client-first, 1: server-first,
// 2: client-final, 3: server-final).
Transcript run(LoginClient& c, LoginServer& s, const ChannelBinding& client_binding,
               const std::function<void(int, std::string&)>& tamper = nullptr) {
  Transcript t;
  auto hop = [&](int i, std::string m) {
    if (tamper) tamper(i, m);
    return m;
  };
  auto first = c.start(client_binding);
  if (!first.ok()) {
    t.client_status = first.status();
    return t;
  }
  t.client_first = hop(0, *first);
  auto s1 = s.step(t.client_first);
  t.claimed = s.claimed_identity();
  if (!s1.ok()) {
    t.server_status = s1.status();
    return t;
  }
  t.server_first = hop(1, s1->reply);
  auto c1 = c.step(t.server_first);
  if (!c1.ok()) {
    t.client_status = c1.status();
    return t;
  }
  EXPECT_TRUE(c1->has_value());
  t.client_final = hop(2, c1->value_or(""));
  auto s2 = s.step(t.client_final);
  if (!s2.ok()) {
    t.server_status = s2.status();
    return t;
  }
  t.identity = s2->identity;
  t.server_final = hop(3, s2->reply);
  auto c2 = c.step(t.server_final);
  if (!c2.ok()) {
    t.client_status = c2.status();
    return t;
  }
  EXPECT_FALSE(c2->has_value());
  t.client_status = c.finished();
  return t;
}

Transcript login(std::string user, std::string_view password, const ChannelBinding& b = binding_of(1)) {
  auto c = client(std::move(user), password);
  auto s = server(b);
  return run(*c, *s, b);
}

void expect_no_secret(const Transcript& t) {
  for (const Status* st : {&t.server_status, &t.client_status}) {
    EXPECT_EQ(st->message().find(kAlicePassword), std::string::npos) << st->message();
    EXPECT_EQ(st->message().find("wrong password"), std::string::npos) << st->message();
  }
}

TEST(ScramLoginTest, RightPasswordLogsInAndTheControllerProvesItself) {
  const Transcript t = login("alice", kAlicePassword);
  ASSERT_TRUE(t.server_status.ok()) << t.server_status.to_string();
  ASSERT_TRUE(t.client_status.ok()) << t.client_status.to_string();
  ASSERT_TRUE(t.identity.has_value());
  EXPECT_EQ(t.identity->identity, "user:alice");
  EXPECT_EQ(t.identity->groups, std::vector<std::string>{"analysts"});
  EXPECT_EQ(t.identity->expires_at, 0);
  EXPECT_EQ(t.claimed, "user:alice");
  // The mechanism on the wire: channel binding required, tls-exporter; the password never.
  EXPECT_TRUE(t.client_first.starts_with("p=tls-exporter,,n=alice,r=")) << t.client_first;
  EXPECT_NE(t.server_first.find(",i=4096"), std::string::npos) << t.server_first;
  EXPECT_TRUE(t.server_final.starts_with("v=")) << t.server_final;
  for (const std::string* m : {&t.client_first, &t.server_first, &t.client_final, &t.server_final}) {
    EXPECT_EQ(m->find(kAlicePassword), std::string::npos);
  }
}

TEST(ScramLoginTest, AnotherSessionsBindingIsRefused) {
  // The client computed its proof on session 1; the controller's end is session 2: what a
  // relay in the middle, holding two TLS sessions, would see.
  auto c = client("alice", kAlicePassword);
  auto s = server(binding_of(2));
  const Transcript t = run(*c, *s, binding_of(1));
  EXPECT_FALSE(t.identity.has_value());
  EXPECT_EQ(t.server_status.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(t.server_status.message().find("channel binding mismatch"), std::string::npos) << t.server_status.message();
  expect_no_secret(t);
}

TEST(ScramLoginTest, ARelayRewritingTheBindingBreaksTheProof) {
  // A relay rewrites c= to the binding of its own session with the controller: the proof
  // covers c=, so it no longer verifies.
  auto c = client("alice", kAlicePassword);
  auto s = server(binding_of(2));
  std::string relay_cbind;
  {
    std::string input = "p=tls-exporter,,";
    const ChannelBinding b2 = binding_of(2);
    input.append(reinterpret_cast<const char*>(b2.data()), b2.size());
    relay_cbind = crypto::to_base64(crypto::as_bytes(input));
  }
  const Transcript t = run(*c, *s, binding_of(1), [&](int i, std::string& m) {
    if (i == 2) m = "c=" + relay_cbind + m.substr(m.find(','));
  });
  EXPECT_FALSE(t.identity.has_value());
  EXPECT_EQ(t.server_status.message(), kWrongCredentials);
}

TEST(ScramLoginTest, ARecordedLoginReplayedOnANewSessionIsRefused) {
  const Transcript recorded = login("alice", kAlicePassword, binding_of(1));
  ASSERT_TRUE(recorded.identity.has_value());
  // Replayed on a new session (new binding): the controller's fresh nonce is not the one the
  // recorded client-final carries, and the binding is not this session's.
  for (std::uint8_t session : {1, 3}) {
    auto s = server(binding_of(session));
    auto first = s->step(recorded.client_first);
    ASSERT_TRUE(first.ok());
    EXPECT_NE(first->reply, recorded.server_first);
    auto final = s->step(recorded.client_final);
    ASSERT_FALSE(final.ok()) << "session " << int(session);
    EXPECT_EQ(final.status().code(), StatusCode::kPermissionDenied);
  }
}

TEST(ScramLoginTest, WrongPasswordAndUnknownUserLookTheSame) {
  const Transcript wrong = login("alice", "not the password");
  const Transcript unknown = login("mallory", kAlicePassword);
  for (const Transcript* t : {&wrong, &unknown}) {
    EXPECT_FALSE(t->identity.has_value());
    EXPECT_EQ(t->server_status.code(), StatusCode::kPermissionDenied);
    EXPECT_EQ(t->server_status.message(), kWrongCredentials);
    // Both fail at the same step: the controller answered the first message of each.
    EXPECT_FALSE(t->server_first.empty());
    EXPECT_FALSE(t->client_final.empty());
    expect_no_secret(*t);
  }
  EXPECT_EQ(wrong.claimed, "user:alice");
  EXPECT_EQ(unknown.claimed, "user:mallory");
  // The server-first of an unknown name has the same shape as a user's: a 16-byte salt and
  // the iteration count the users have, the same on every try.
  auto salt_of = [](const std::string& server_first) {
    const auto s = server_first.find(",s=");
    return server_first.substr(s + 3, server_first.find(',', s + 1) - s - 3);
  };
  auto iterations_of = [](const std::string& server_first) { return server_first.substr(server_first.find(",i=")); };
  EXPECT_EQ(salt_of(unknown.server_first).size(), salt_of(wrong.server_first).size());
  EXPECT_EQ(iterations_of(unknown.server_first), iterations_of(wrong.server_first));
  EXPECT_EQ(salt_of(login("mallory", "other").server_first), salt_of(unknown.server_first));
  EXPECT_EQ(salt_of(login("alice", "other").server_first), salt_of(wrong.server_first));
}

TEST(ScramLoginTest, DisabledAccountIsSaidOnlyAfterTheRightPassword) {
  const Transcript right = login("dave", kDavePassword);
  EXPECT_FALSE(right.identity.has_value());
  EXPECT_NE(right.server_status.message().find("disabled"), std::string::npos) << right.server_status.message();
  const Transcript wrong = login("dave", "guess");
  EXPECT_EQ(wrong.server_status.message(), kWrongCredentials);
}

TEST(ScramLoginTest, ClientsWithoutChannelBindingAreRefused) {
  const std::pair<std::string, std::string> cases[] = {
      {"n,,n=alice,r=abcdefgh", "channel binding is required"},
      {"y,,n=alice,r=abcdefgh", "channel binding is required"},
      {"p=tls-unique,,n=alice,r=abcdefgh", "only the tls-exporter channel binding"},
      {"p=tls-server-end-point,,n=alice,r=abcdefgh", "only the tls-exporter channel binding"},
      {"p=tls-exporter,a=bob,n=alice,r=abcdefgh", "authorization identity"},
  };
  for (const auto& [message, error] : cases) {
    auto s = server(binding_of(1));
    auto step = s->step(message);
    ASSERT_FALSE(step.ok()) << message;
    EXPECT_NE(step.status().message().find(error), std::string::npos) << message << ": " << step.status().message();
    // The exchange is over after a refusal.
    EXPECT_FALSE(s->step("c=biws,r=abcdefgh,p=AAAA").ok());
  }
}

TEST(ScramLoginTest, MalformedAndTamperedClientMessagesAreRefused) {
  const std::vector<std::string> firsts = {
      "", "p=tls-exporter,,", "p=tls-exporter,,n=alice", "p=tls-exporter,,m=ext,n=alice,r=abc",
      "p=tls-exporter,,n=,r=abc", "p=tls-exporter,,n=al=2Cice,r=abc", "p=tls-exporter,,n=alice,x=abc",
      "p=tls-exporter,,n=alice,r=", std::string("p=tls-exporter,,n=alice,r=ab\0c", 30),
      "p=tls-exporter,,n=alice,r=" + std::string(5000, 'a'), "garbage"};
  for (const auto& m : firsts) {
    auto s = server(binding_of(1));
    auto step = s->step(m);
    EXPECT_FALSE(step.ok()) << m.substr(0, 60);
  }
  // Tampered client-final: the nonce, the proof, the proof's length, a missing proof.
  const std::vector<std::function<void(std::string&)>> tamper_final = {
      [](std::string& m) { m.replace(m.find(",r=") + 3, 1, "X"); },
      [](std::string& m) {
        const auto p = m.find(",p=") + 3;
        m[p] = m[p] == 'A' ? 'B' : 'A';
      },
      [](std::string& m) { m = m.substr(0, m.find(",p=")) + ",p=AAAA"; },
      [](std::string& m) { m = m.substr(0, m.find(",p=")); },
      [](std::string& m) { m += ",p=AAAA"; },
      [](std::string& m) { m = "r=" + m; },
  };
  for (std::size_t i = 0; i < tamper_final.size(); ++i) {
    auto c = client("alice", kAlicePassword);
    auto s = server(binding_of(1));
    const Transcript t = run(*c, *s, binding_of(1), [&](int hop, std::string& m) {
      if (hop == 2) tamper_final[i](m);
    });
    EXPECT_FALSE(t.identity.has_value()) << "case " << i;
    EXPECT_FALSE(t.server_status.ok()) << "case " << i;
  }
}

TEST(ScramLoginTest, TheClientChecksTheController) {
  // A tampered server signature.
  {
    auto c = client("alice", kAlicePassword);
    auto s = server(binding_of(1));
    const Transcript t = run(*c, *s, binding_of(1), [](int hop, std::string& m) {
      if (hop == 3) m[2] = m[2] == 'A' ? 'B' : 'A';
    });
    EXPECT_NE(t.client_status.message().find("server signature is wrong"), std::string::npos)
        << t.client_status.message();
  }
  // An impostor controller that has alice's StoredKey (enough to check her proof) but not her
  // ServerKey cannot sign.
  {
    auto file = UserFile::create();
    UserEntry alice = *users()->find("alice");
    alice.verifier.server_key[0] ^= std::byte{1};
    ASSERT_TRUE(file->set("alice", alice).ok());
    auto c = client("alice", kAlicePassword);
    auto s = server(binding_of(1), std::make_shared<const UserFile>(std::move(file).value()));
    const Transcript t = run(*c, *s, binding_of(1));
    EXPECT_TRUE(t.server_status.ok());
    EXPECT_EQ(t.client_status.code(), StatusCode::kPermissionDenied);
    EXPECT_NE(t.client_status.message().find("server signature is wrong"), std::string::npos);
  }
  // A welcome without the server-final: finished() refuses.
  {
    auto c = client("alice", kAlicePassword);
    ASSERT_TRUE(c->start(binding_of(1)).ok());
    EXPECT_FALSE(c->finished().ok());
  }
  // A server-first that changes the client's nonce, or asks for absurd iteration counts.
  const std::vector<std::pair<std::function<void(std::string&)>, std::string>> tamper_first = {
      {[](std::string& m) { m[3] = m[3] == 'A' ? 'B' : 'A'; }, "malformed"},
      {[](std::string& m) { m = m.substr(0, m.find(",i=")) + ",i=4095"; }, "PBKDF2 iterations"},
      {[](std::string& m) { m = m.substr(0, m.find(",i=")) + ",i=100000000"; }, "PBKDF2 iterations"},
      {[](std::string& m) { m = m.substr(0, m.find(",s=")) + ",s=!!!!,i=4096"; }, ""},
      {[](std::string& m) { m += std::string(5000, 'x'); }, "malformed"},
  };
  for (std::size_t i = 0; i < tamper_first.size(); ++i) {
    auto c = client("alice", kAlicePassword);
    auto s = server(binding_of(1));
    const Transcript t = run(*c, *s, binding_of(1), [&](int hop, std::string& m) {
      if (hop == 1) tamper_first[i].first(m);
    });
    EXPECT_FALSE(t.client_status.ok()) << "case " << i;
    EXPECT_TRUE(t.client_final.empty()) << "case " << i;
    EXPECT_NE(t.client_status.message().find(tamper_first[i].second), std::string::npos)
        << "case " << i << ": " << t.client_status.message();
  }
}

TEST(ScramLoginTest, StepsOutOfOrderAreRefused) {
  auto s = server(binding_of(1));
  auto c = client("alice", kAlicePassword);
  const Transcript t = run(*c, *s, binding_of(1));
  ASSERT_TRUE(t.identity.has_value());
  EXPECT_FALSE(s->step(t.client_final).ok());
  EXPECT_FALSE(c->step(t.server_final).ok());
  EXPECT_FALSE(c->start(binding_of(1)).ok());
}

TEST(ScramLoginTest, ClientRefusesBadChoices) {
  EXPECT_FALSE(make_scram_login_client("", [] { return StatusOr<std::string>("x"); }).ok());
  EXPECT_FALSE(make_scram_login_client("a,b", [] { return StatusOr<std::string>("x"); }).ok());
  EXPECT_FALSE(make_scram_login_client("alice", nullptr).ok());
  // The password source's error is said as it is; an empty password is refused.
  auto failing = make_scram_login_client("alice", [] { return StatusOr<std::string>(not_found("no $PW set")); });
  ASSERT_TRUE(failing.ok());
  EXPECT_EQ((*failing)->start(binding_of(1)).status().message(), "no $PW set");
  auto empty = make_scram_login_client("alice", [] { return StatusOr<std::string>(std::string()); });
  EXPECT_FALSE((*empty)->start(binding_of(1)).ok());

  LoginChoice choice;
  choice.method = LoginMethod::kPassword;
  EXPECT_FALSE(make_login_client_factory(choice, "localhost").ok());
  choice.username = "alice";
  EXPECT_FALSE(make_login_client_factory(choice, "localhost").ok());
  choice.secret = [] { return StatusOr<std::string>(std::string(kAlicePassword)); };
  auto factory = make_login_client_factory(choice, "localhost");
  ASSERT_TRUE(factory.ok());
  auto made = (*factory)();
  ASSERT_TRUE(made.ok());
  EXPECT_EQ((*made)->method(), LoginMethod::kPassword);
  auto s = server(binding_of(4));
  EXPECT_TRUE(run(**made, *s, binding_of(4)).identity.has_value());
}

}  // namespace
}  // namespace testudo::auth
