// ControllerLink against a real net::Listener on loopback and a small fake controller that
// answers hellos as told (welcome, not trusted yet, refused, dropped, silent), checks the
// capability proof, and answers heartbeats or stops answering them.
#include "auth/link.h"

#include <gtest/gtest.h>

#include <deque>
#include <fstream>
#include <future>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "auth/capability.h"
#include "base/test_temp_dir.h"
#include "crypto/crypto.h"
#include "wire/reply.h"

namespace testudo::auth {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using wire::MessageKind;

enum class Answer { kWelcome, kNotTrustedYet, kRefuse, kDrop, kSilent };

crypto::Digest filled(std::uint8_t v) {
  crypto::Digest d;
  d.fill(std::byte{v});
  return d;
}

wire::Message message(MessageKind kind, std::string text = {}) {
  wire::Message m;
  m.envelope.kind = kind;
  if (kind == MessageKind::kTaskOutput) m.envelope.set_output_stream(wire::OutputStream::kStdout);
  m.envelope.text = std::move(text);
  return m;
}

// The controller's side of the hello, reduced to what a link can tell apart. Loop thread only.
class FakeController {
 public:
  struct HelloSeen {
    std::string instance;
    Clock::time_point at;
  };

  explicit FakeController(net::EventLoop& loop) : loop_(loop) {}

  Status listen(const tls::KeyAndCertificate& identity) {
    net::ListenOptions lo;
    lo.tls.identity = identity;
    TESTUDO_ASSIGN_OR_RETURN(listener_, net::Listener::create(loop_, lo, [this](std::shared_ptr<net::Connection> c) {
                               accept(std::move(c));
                             }));
    return ok_status();
  }
  std::uint16_t port() const { return listener_->port(); }
  void close_listener() {
    if (listener_) listener_->close();
  }

  // Closes every connection: the links see a loss (or a failed attempt).
  void drop_all() {
    auto all = open_;
    for (auto& [raw, c] : all) c->close(unavailable("dropped by the fake controller"));
  }
  // Welcomes the hellos it left unanswered (Answer::kSilent).
  void welcome_silent() {
    auto waiting = std::move(silent_);
    silent_.clear();
    for (auto& [c, instance] : waiting) {
      if (c->is_open()) welcome(*c, instance);
    }
  }
  void send_to_welcomed(const wire::Message& m) {
    for (auto& [raw, c] : open_) {
      if (authenticated_.count(raw)) c->send(m);
    }
  }
  void shutdown() {
    drop_all();
    close_listener();
  }

  Capability capability = filled(0x42);
  Answer answer = Answer::kWelcome;   // for hellos past `next_answers`
  std::deque<Answer> next_answers;    // consumed one per hello
  bool answer_heartbeats = true;

  std::vector<HelloSeen> hellos;
  std::vector<wire::Message> received;  // after the welcome, heartbeats excepted
  int heartbeats = 0;
  int closed = 0;  // connections that ended, by either side

 private:
  void accept(std::shared_ptr<net::Connection> c) {
    net::Connection* raw = c.get();
    open_[raw] = c;
    c->start({
        [this, raw](wire::Message&& m) { on_message(*raw, std::move(m)); },
        [this, raw](const Status&) {
          ++closed;
          authenticated_.erase(raw);
          open_.erase(raw);
        },
    });
  }

  void on_message(net::Connection& c, wire::Message&& m) {
    if (!authenticated_.count(&c)) return on_hello(c, m);
    if (m.envelope.kind == MessageKind::kHeartbeat) {
      ++heartbeats;
      if (answer_heartbeats) c.send(message(MessageKind::kHeartbeatAck));
      return;
    }
    received.push_back(std::move(m));
  }

  void on_hello(net::Connection& c, const wire::Message& m) {
    auto hello = decode_hello(m.envelope.text);
    if (m.envelope.kind != MessageKind::kHello || !hello.ok()) return c.close(data_loss("not a hello"));
    hellos.push_back({hello->instance, Clock::now()});
    auto exporter = c.export_keying_material(kExporterLabel, wire::role_name(hello->role));
    if (!exporter.ok() || !crypto::constant_time_equal(capability_proof(capability, hello->role, *exporter), hello->proof)) {
      return reject(c, Outcome::kNotAllowed, "wrong capability");
    }
    Answer a = answer;
    if (!next_answers.empty()) {
      a = next_answers.front();
      next_answers.pop_front();
    }
    switch (a) {
      case Answer::kWelcome:
        return welcome(c, hello->instance);
      case Answer::kNotTrustedYet:
        return reject(c, Outcome::kAwaitingTrust, "this key (engine) is not trusted yet");
      case Answer::kRefuse:
        return reject(c, Outcome::kNotAllowed, "revoked");
      case Answer::kDrop:
        return c.close(unavailable("dropped at hello"));
      case Answer::kSilent:
        silent_.emplace_back(open_.at(&c), hello->instance);
        return;
    }
  }

  // The same instance gets the same id back, as the hub does for engines.
  void welcome(net::Connection& c, const std::string& instance) {
    auto [it, added] = ids_.try_emplace(instance, next_id_);
    if (added) ++next_id_;
    wire::Message w = message(MessageKind::kWelcome);
    w.envelope.engine_id = it->second;
    authenticated_.insert(&c);
    c.set_limits(wire::Limits{});
    c.send(std::move(w));
  }

  void reject(net::Connection& c, Outcome status, std::string why) {
    c.send(wire::rejection(status, std::move(why)));
    c.close_after_flush(permission_denied("rejected"), 500ms);
  }

  net::EventLoop& loop_;
  std::unique_ptr<net::Listener> listener_;
  std::map<net::Connection*, std::shared_ptr<net::Connection>> open_;
  std::set<net::Connection*> authenticated_;
  std::vector<std::pair<std::shared_ptr<net::Connection>, std::string>> silent_;
  std::map<std::string, std::uint32_t> ids_;
  std::uint32_t next_id_ = 7;
};

// What the hooks saw. Loop thread only.
struct Events {
  int welcomes = 0;
  std::vector<std::uint32_t> connected;
  std::vector<Status> lost;
  std::vector<Status> stopped;
  std::vector<MessageKind> messages;
  bool snapshot_cleared_before_lost = true;
  bool sent_while_lost = false;  // what send() returned inside on_lost
};

class LinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto controller_identity = tls::generate_self_signed("link-test-controller");
    ASSERT_TRUE(controller_identity.ok()) << controller_identity.status().to_string();
    auto fingerprint = tls::fingerprint_of_pem(controller_identity->cert_pem);
    ASSERT_TRUE(fingerprint.ok());
    auto identity = tls::generate_self_signed("link-test-engine");
    ASSERT_TRUE(identity.ok());
    identity_ = *identity;
    loop_thread_ = std::thread([this] { loop_.run(); });
    Status listening = ok_status();
    on_loop([&] {
      fake_ = std::make_unique<FakeController>(loop_);
      listening = fake_->listen(*controller_identity);
    });
    ASSERT_TRUE(listening.ok()) << listening.to_string();
    info_.role = wire::Role::kEngine;
    info_.host = "127.0.0.1";
    on_loop([&] { info_.port = fake_->port(); });
    info_.fingerprint = *fingerprint;
    info_.capability = fake_->capability;
  }

  void TearDown() override {
    on_loop([this] {
      link_.reset();
      fake_->shutdown();
    });
    // Let the closes (and any attempt still in flight) run out before the loop goes.
    std::this_thread::sleep_for(50ms);
    on_loop([this] { fake_.reset(); });
    loop_.stop();
    loop_thread_.join();
  }

  // Small delays, no jitter: each redial waits exactly its backoff base.
  LinkOptions options() {
    LinkOptions o;
    o.session = {info_, identity_, "instance-1", 5s};
    o.initial_backoff = 20ms;
    o.max_backoff = 200ms;
    o.random = [] { return std::uint64_t{0}; };
    o.log_name = "link-test";
    return o;
  }

  void start(LinkOptions o, std::function<Status(net::Connection&)> on_welcome = {}) {
    on_loop([&] {
      LinkHooks hooks;
      hooks.on_welcome = [this, on_welcome](net::Connection& c, std::uint32_t) {
        ++events_.welcomes;
        return on_welcome ? on_welcome(c) : ok_status();
      };
      hooks.on_connected = [this](std::uint32_t id) { events_.connected.push_back(id); };
      hooks.on_message = [this](wire::Message&& m) { events_.messages.push_back(m.envelope.kind); };
      hooks.on_lost = [this](const Status& why) {
        if (link_->current_connection() != nullptr) events_.snapshot_cleared_before_lost = false;
        events_.sent_while_lost = link_->send(message(MessageKind::kEngineInfo, "sent in on_lost"));
        events_.lost.push_back(why);
      };
      hooks.on_stopped = [this](const Status& why) { events_.stopped.push_back(why); };
      link_ = std::make_unique<ControllerLink>(loop_, std::move(o), std::move(hooks));
      link_->start();
    });
  }

  // Runs `fn` on the loop's thread and waits for it.
  void on_loop(std::function<void()> fn) {
    std::promise<void> done;
    loop_.post([&] {
      fn();
      done.set_value();
    });
    done.get_future().get();
  }

  // Polls `done()` on the loop's thread until it holds, at most `timeout`.
  bool wait_for(std::function<bool()> done, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      bool ok = false;
      on_loop([&] { ok = done(); });
      if (ok) return true;
      std::this_thread::sleep_for(2ms);
    }
    return false;
  }

  // Reads a value on the loop's thread.
  template <typename F>
  auto read(F fn) {
    decltype(fn()) value{};
    on_loop([&] { value = fn(); });
    return value;
  }

  net::EventLoop loop_;
  std::thread loop_thread_;
  std::unique_ptr<FakeController> fake_;  // loop thread
  std::unique_ptr<ControllerLink> link_;  // loop thread
  Events events_;                         // loop thread
  ConnectionInfo info_;
  tls::KeyAndCertificate identity_;
};

// ---------------- Backoff ----------------

// A source that returns the queued values in turn (0 once they run out).
RandomSource queued(std::vector<std::uint64_t> values) {
  auto q = std::make_shared<std::deque<std::uint64_t>>(values.begin(), values.end());
  return [q] {
    if (q->empty()) return std::uint64_t{0};
    auto v = q->front();
    q->pop_front();
    return v;
  };
}

TEST(BackoffTest, DoublesFromInitialToMaxWithoutJitterAtZero) {
  Backoff b(100ms, 5'000ms, [] { return std::uint64_t{0}; });
  std::vector<long> got;
  for (int i = 0; i < 9; ++i) got.push_back(b.next().count());
  EXPECT_EQ(got, (std::vector<long>{100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000}));
  b.reset();
  EXPECT_EQ(b.next(), 100ms);
}

// The largest jitter is half the base: each delay is at most 1.5 times its base, also at the cap.
TEST(BackoffTest, JitterReachesHalfTheBaseAndNoMore) {
  const std::vector<long> bases = {100, 200, 400, 800, 1600, 3200, 5000, 5000};
  std::vector<std::uint64_t> largest;
  for (long base : bases) largest.push_back(static_cast<std::uint64_t>(base / 2));
  Backoff b(100ms, 5'000ms, queued(largest));
  for (long base : bases) EXPECT_EQ(b.next().count(), base + base / 2);
  // Arbitrary values (including the extremes) stay inside [base, 1.5 base].
  std::mt19937_64 rng(7);
  Backoff any(100ms, 5'000ms, [&rng] { return rng(); });
  Backoff extreme(100ms, 5'000ms, [] { return ~std::uint64_t{0}; });
  for (long base : bases) {
    for (Backoff* x : {&any, &extreme}) {
      const long d = x->next().count();
      EXPECT_GE(d, base);
      EXPECT_LE(d, base + base / 2);
    }
  }
}

// ---------------- the link ----------------

TEST_F(LinkTest, ConnectsAndRunsTheWelcomeHookBeforeAnythingElse) {
  start(options(), [](net::Connection& c) {
    c.send(message(MessageKind::kEngineInfo, "registration"));
    return ok_status();
  });
  ASSERT_TRUE(wait_for([&] { return !events_.connected.empty(); }));
  EXPECT_TRUE(read([&] { return link_->send(message(MessageKind::kTaskOutput, "after")); }));
  ASSERT_TRUE(wait_for([&] { return fake_->received.size() == 2; }));
  on_loop([&] {
    EXPECT_EQ(events_.welcomes, 1);
    EXPECT_EQ(events_.connected, std::vector<std::uint32_t>{7});
    EXPECT_EQ(link_->assigned_id(), 7u);
    EXPECT_TRUE(link_->connected());
    EXPECT_NE(link_->current_connection(), nullptr);
    EXPECT_EQ(fake_->received[0].envelope.text, "registration");
    EXPECT_EQ(fake_->received[1].envelope.text, "after");
    EXPECT_TRUE(events_.lost.empty());
    EXPECT_TRUE(events_.stopped.empty());
  });
}

// A welcome hook that fails closes that connection and counts as a failed attempt.
TEST_F(LinkTest, FailedWelcomeHookIsAFailedAttempt) {
  int calls = 0;
  start(options(), [&calls](net::Connection&) {
    return ++calls < 3 ? unavailable("cannot sign yet") : ok_status();
  });
  ASSERT_TRUE(wait_for([&] { return !events_.connected.empty(); }));
  on_loop([&] {
    EXPECT_EQ(events_.welcomes, 3);
    EXPECT_EQ(fake_->hellos.size(), 3u);
    EXPECT_TRUE(events_.lost.empty());  // never connected before the third
  });
}

TEST_F(LinkTest, RedialsAfterADropWithTheSameInstanceAndGetsItsIdBack) {
  start(options());
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 1; }));
  on_loop([&] { fake_->drop_all(); });
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 2; }));
  on_loop([&] {
    ASSERT_EQ(events_.lost.size(), 1u);
    EXPECT_EQ(events_.lost[0].code(), StatusCode::kUnavailable) << events_.lost[0].to_string();
    EXPECT_TRUE(events_.snapshot_cleared_before_lost);
    ASSERT_EQ(fake_->hellos.size(), 2u);
    EXPECT_EQ(fake_->hellos[0].instance, "instance-1");
    EXPECT_EQ(fake_->hellos[1].instance, "instance-1");
    EXPECT_EQ(events_.connected, (std::vector<std::uint32_t>{7, 7}));
    EXPECT_EQ(events_.welcomes, 2);  // the welcome hook runs after every welcome
    EXPECT_TRUE(link_->connected());
  });
}

// Every attempt fails (dropped at hello): the gaps between hellos follow the backoff (20, 40,
// 80, 160 ms, then capped at 200), and a success resets it.
TEST_F(LinkTest, BackoffDelaysGrowAndCap) {
  on_loop([&] { fake_->answer = Answer::kDrop; });
  start(options());
  ASSERT_TRUE(wait_for([&] { return fake_->hellos.size() >= 7; }));
  const std::vector<long> expected = {20, 40, 80, 160, 200, 200};
  on_loop([&] {
    for (std::size_t i = 0; i < expected.size(); ++i) {
      const auto gap = std::chrono::duration_cast<std::chrono::milliseconds>(fake_->hellos[i + 1].at - fake_->hellos[i].at);
      // A timer never fires early; the rest is one TLS dial on loopback.
      EXPECT_GE(gap.count(), expected[i]) << "redial " << i;
      EXPECT_LT(gap.count(), expected[i] * 3 / 2 + 100) << "redial " << i;
    }
    fake_->answer = Answer::kWelcome;
  });
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 1; }));
  on_loop([&] {
    fake_->answer = Answer::kDrop;
    fake_->drop_all();
  });
  ASSERT_TRUE(wait_for([&] { return events_.lost.size() == 1; }));
  const std::size_t before = read([&] { return fake_->hellos.size(); });
  ASSERT_TRUE(wait_for([&] { return fake_->hellos.size() >= before + 2; }));
  on_loop([&] {
    const auto gap = std::chrono::duration_cast<std::chrono::milliseconds>(fake_->hellos[before + 1].at - fake_->hellos[before].at);
    EXPECT_LT(gap.count(), 40 * 3 / 2 + 100) << "the backoff was not reset by the welcome";
  });
}

// The jitter comes from the injected source: with its largest values each delay is 1.5 base.
TEST_F(LinkTest, JitterComesFromTheRandomSource) {
  on_loop([&] { fake_->answer = Answer::kDrop; });
  LinkOptions o = options();
  o.initial_backoff = 40ms;
  o.max_backoff = 80ms;
  o.random = queued({20, 40, 40});  // half of 40, 80, 80
  start(std::move(o));
  ASSERT_TRUE(wait_for([&] { return fake_->hellos.size() >= 4; }));
  on_loop([&] {
    const std::vector<long> expected = {60, 120, 120};
    for (std::size_t i = 0; i < expected.size(); ++i) {
      const auto gap = std::chrono::duration_cast<std::chrono::milliseconds>(fake_->hellos[i + 1].at - fake_->hellos[i].at);
      EXPECT_GE(gap.count(), expected[i]) << "redial " << i;
    }
  });
}

// Not trusted yet: retried quietly (one warning per wait), the wait does not count towards
// give_up, and the link joins once trusted.
TEST_F(LinkTest, AwaitingTrustIsRetriedQuietlyThenAdmitted) {
  testing::TempDir dir("link-test");
  const std::string log_file = dir.path() + "/log";
  ASSERT_TRUE(log::set_file(log_file));
  on_loop([&] {
    fake_->next_answers = {Answer::kNotTrustedYet, Answer::kNotTrustedYet, Answer::kNotTrustedYet,
                           Answer::kNotTrustedYet, Answer::kNotTrustedYet};
  });
  LinkOptions o = options();
  o.initial_backoff = 50ms;
  o.give_up = 100ms;  // shorter than the wait (50+100+200+200+200 ms)
  start(std::move(o));
  ASSERT_TRUE(wait_for([&] { return !events_.connected.empty() || !events_.stopped.empty(); }));
  on_loop([&] {
    EXPECT_TRUE(events_.stopped.empty()) << events_.stopped[0].to_string();
    EXPECT_EQ(events_.connected.size(), 1u);
    EXPECT_EQ(fake_->hellos.size(), 6u);
  });
  std::ifstream in(log_file);
  std::stringstream text;
  text << in.rdbuf();
  std::size_t warnings = 0;
  for (std::size_t at = 0; (at = text.str().find("retrying until it is", at)) != std::string::npos; ++at) ++warnings;
  EXPECT_EQ(warnings, 1u) << text.str();
  EXPECT_EQ(text.str().find("reconnecting in"), std::string::npos) << text.str();
  // The log stays in the file for the rest of this process (ctest runs each test alone).
}

TEST_F(LinkTest, RefusalStopsWithoutRetry) {
  on_loop([&] { fake_->answer = Answer::kRefuse; });
  start(options());
  ASSERT_TRUE(wait_for([&] { return !events_.stopped.empty(); }));
  std::this_thread::sleep_for(300ms);  // many backoff delays
  on_loop([&] {
    ASSERT_EQ(events_.stopped.size(), 1u);
    EXPECT_EQ(events_.stopped[0].code(), StatusCode::kPermissionDenied) << events_.stopped[0].to_string();
    EXPECT_NE(events_.stopped[0].message().find("revoked"), std::string::npos);
    EXPECT_EQ(fake_->hellos.size(), 1u);
    EXPECT_TRUE(link_->stopped());
    EXPECT_FALSE(link_->connected());
  });
}

// A wrong capability (the fake checks the proof) is refused, after a loss as well: no retry.
TEST_F(LinkTest, WrongCapabilityAfterALossStopsWithoutRetry) {
  start(options());
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 1; }));
  on_loop([&] {
    fake_->capability = filled(0x43);  // as if the controller came back with new secrets
    fake_->drop_all();
  });
  ASSERT_TRUE(wait_for([&] { return !events_.stopped.empty(); }));
  std::this_thread::sleep_for(300ms);
  on_loop([&] {
    EXPECT_EQ(events_.stopped[0].code(), StatusCode::kPermissionDenied);
    EXPECT_EQ(fake_->hellos.size(), 2u);
    EXPECT_EQ(events_.lost.size(), 1u);
  });
}

// retry_first_attempt = false (Client::connect): the first failure, of any kind, is final and
// reported as it is.
TEST_F(LinkTest, FirstAttemptFailureIsFinalWhenAskedTo) {
  on_loop([&] { fake_->answer = Answer::kNotTrustedYet; });
  LinkOptions o = options();
  o.retry_first_attempt = false;
  start(std::move(o));
  ASSERT_TRUE(wait_for([&] { return !events_.stopped.empty(); }));
  std::this_thread::sleep_for(200ms);
  on_loop([&] {
    EXPECT_EQ(events_.stopped[0].code(), StatusCode::kFailedPrecondition) << events_.stopped[0].to_string();
    EXPECT_EQ(fake_->hellos.size(), 1u);
  });
}

TEST_F(LinkTest, GivesUpAfterGiveUpTime) {
  LinkOptions o = options();
  o.give_up = 300ms;
  start(std::move(o));
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 1; }));
  on_loop([&] {
    fake_->close_listener();  // redials now fail at TCP
    fake_->drop_all();
  });
  const auto lost_at = Clock::now();
  ASSERT_TRUE(wait_for([&] { return !events_.stopped.empty(); }, 5s));
  const auto after = Clock::now() - lost_at;
  on_loop([&] {
    EXPECT_EQ(events_.stopped[0].code(), StatusCode::kUnavailable);
    EXPECT_NE(events_.stopped[0].message().find("no controller for"), std::string::npos) << events_.stopped[0].to_string();
  });
  EXPECT_GE(after, 300ms);
  EXPECT_LT(after, 2s);
}

TEST_F(LinkTest, HeartbeatTimeoutClosesAndRedials) {
  LinkOptions o = options();
  o.heartbeat_interval = 20ms;
  o.controller_timeout = 200ms;
  start(std::move(o));
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 1; }));
  std::this_thread::sleep_for(500ms);
  on_loop([&] {
    EXPECT_TRUE(events_.lost.empty()) << "dropped although the controller answers";
    EXPECT_GE(fake_->heartbeats, 10);
    fake_->answer_heartbeats = false;
  });
  ASSERT_TRUE(wait_for([&] { return events_.lost.size() == 1; }, 3s));
  on_loop([&] {
    EXPECT_NE(events_.lost[0].message().find("stopped answering"), std::string::npos) << events_.lost[0].to_string();
    fake_->answer_heartbeats = true;
  });
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 2; }));
  on_loop([&] {
    EXPECT_EQ(fake_->hellos.size(), 2u);
    EXPECT_EQ(fake_->hellos[1].instance, "instance-1");
    // Heartbeat acks are the link's, not the owner's.
    for (MessageKind k : events_.messages) EXPECT_NE(k, MessageKind::kHeartbeatAck);
  });
}

// Without heartbeats the link sends none, however long it is connected.
TEST_F(LinkTest, NoHeartbeatsUnlessAskedFor) {
  start(options());
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 1; }));
  std::this_thread::sleep_for(200ms);
  on_loop([&] { EXPECT_EQ(fake_->heartbeats, 0); });
}

// The resend rules: nothing is sent while the link is down, and nothing sent then arrives
// after the redial.
TEST_F(LinkTest, MessagesSentWhileDownAreDroppedNotResent) {
  LinkOptions o = options();
  o.initial_backoff = 300ms;  // a wide window while down
  start(std::move(o));
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 1; }));
  on_loop([&] { fake_->drop_all(); });
  ASSERT_TRUE(wait_for([&] { return events_.lost.size() == 1; }));
  on_loop([&] {
    EXPECT_FALSE(events_.sent_while_lost);
    EXPECT_FALSE(link_->connected());
    EXPECT_EQ(link_->current_connection(), nullptr);
    EXPECT_FALSE(link_->send(message(MessageKind::kTaskReply, "while down")));
  });
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 2; }));
  EXPECT_TRUE(read([&] { return link_->send(message(MessageKind::kTaskReply, "after")); }));
  ASSERT_TRUE(wait_for([&] { return !fake_->received.empty(); }));
  std::this_thread::sleep_for(50ms);
  on_loop([&] {
    ASSERT_EQ(fake_->received.size(), 1u);
    EXPECT_EQ(fake_->received[0].envelope.text, "after");
  });
}

// A message a controller may not send closes the connection; the link redials.
TEST_F(LinkTest, ForbiddenMessageFromTheControllerIsALoss) {
  start(options());
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 1; }));
  on_loop([&] { fake_->send_to_welcomed(message(MessageKind::kHello)); });
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 2; }));
  on_loop([&] {
    ASSERT_EQ(events_.lost.size(), 1u);
    EXPECT_EQ(events_.lost[0].code(), StatusCode::kDataLoss) << events_.lost[0].to_string();
    EXPECT_TRUE(events_.messages.empty());
  });
}

// stop() while the hello is unanswered: the attempt is closed when it completes, no hook runs.
TEST_F(LinkTest, StopDuringAPendingDialLeavesNothingRunning) {
  on_loop([&] { fake_->answer = Answer::kSilent; });
  start(options());
  ASSERT_TRUE(wait_for([&] { return fake_->hellos.size() == 1; }));
  on_loop([&] {
    link_->stop(Status(StatusCode::kCancelled, "test stops the link"));
    EXPECT_TRUE(link_->stopped());
    fake_->answer = Answer::kWelcome;
    fake_->welcome_silent();
  });
  ASSERT_TRUE(wait_for([&] { return fake_->closed == 1; })) << "the late welcome's connection stayed open";
  std::this_thread::sleep_for(200ms);
  on_loop([&] {
    EXPECT_EQ(events_.welcomes, 0);
    EXPECT_TRUE(events_.connected.empty());
    EXPECT_TRUE(events_.lost.empty());
    EXPECT_TRUE(events_.stopped.empty());
    EXPECT_EQ(fake_->hellos.size(), 1u);
  });
}

// The link destroyed while its hello is unanswered: the late welcome reaches no freed memory
// (ASan) and its connection is closed.
TEST_F(LinkTest, DestroyedDuringAPendingDial) {
  on_loop([&] { fake_->answer = Answer::kSilent; });
  start(options());
  ASSERT_TRUE(wait_for([&] { return fake_->hellos.size() == 1; }));
  on_loop([&] {
    link_.reset();
    fake_->welcome_silent();
  });
  ASSERT_TRUE(wait_for([&] { return fake_->closed == 1; }));
  on_loop([&] { EXPECT_EQ(events_.welcomes, 0); });
}

// stop() during the backoff: the redial never happens.
TEST_F(LinkTest, StopDuringBackoffCancelsTheRedial) {
  on_loop([&] { fake_->answer = Answer::kDrop; });
  LinkOptions o = options();
  o.initial_backoff = 100ms;
  start(std::move(o));
  ASSERT_TRUE(wait_for([&] { return fake_->hellos.size() == 1 && fake_->closed == 1; }));
  on_loop([&] { link_->stop(Status(StatusCode::kCancelled, "test stops the link")); });
  std::this_thread::sleep_for(400ms);
  on_loop([&] {
    EXPECT_EQ(fake_->hellos.size(), 1u);
    EXPECT_TRUE(events_.stopped.empty());
  });
  // Destroyed after stop, also fine.
  on_loop([&] { link_.reset(); });
}

// stop() while connected: on_lost runs once with stop's reason, on_closed after it, no redial;
// with a grace, queued messages are written first.
TEST_F(LinkTest, StopWhileConnectedFlushesAndDoesNotRedial) {
  start(options());
  ASSERT_TRUE(wait_for([&] { return events_.connected.size() == 1; }));
  bool closed = false;
  on_loop([&] {
    EXPECT_TRUE(link_->send(message(MessageKind::kTaskReply, "goodbye")));
    link_->stop(Status(StatusCode::kCancelled, "engine exiting"), 1000ms, [&] { closed = true; });
    EXPECT_FALSE(link_->connected());
    EXPECT_EQ(link_->current_connection(), nullptr);
    EXPECT_FALSE(link_->send(message(MessageKind::kTaskReply, "after stop")));
  });
  ASSERT_TRUE(wait_for([&] { return closed; }));
  std::this_thread::sleep_for(200ms);
  on_loop([&] {
    ASSERT_EQ(events_.lost.size(), 1u);
    EXPECT_EQ(events_.lost[0].message(), "engine exiting");
    EXPECT_EQ(fake_->hellos.size(), 1u);
    ASSERT_EQ(fake_->received.size(), 1u);
    EXPECT_EQ(fake_->received[0].envelope.text, "goodbye");
    // A second stop only adds an on_closed, run at once now.
    bool again = false;
    link_->stop(Status(StatusCode::kCancelled, "again"), {}, [&] { again = true; });
    EXPECT_TRUE(again);
  });
}

}  // namespace
}  // namespace testudo::auth
