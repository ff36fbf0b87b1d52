// The hub with fake connections and a fake clock: routing, acknowledgements, engine death,
// heartbeats, authorization, admission bounds, stored results and shutdown, without sockets.
// Its collaborators are real (a gatekeeper over a temporary trust directory, a SQLite task
// store) except admission, which admits whoever says "<role>:<name>" in its hello.
#include "controller/hub.h"

#include <gtest/gtest.h>

#include <sys/socket.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/fake_clock.h"
#include "base/test_small_disk.h"
#include "base/test_temp_dir.h"
#include "e2e/sealed_body.h"
#include "net/fake_connection.h"
#include "wire/control.h"
#include "wire/reply.h"

namespace testudo::controller {
namespace {

using testing::FakeClock;
using testing::FakeConnection;
using wire::MessageKind;
using namespace std::chrono_literals;

constexpr const char* kOwner = "sha256:alice";

// Admits a hello whose text is "client:<name>" or "engine:<name>" as identity sha256:<name>;
// refuses anything else. "engine:" instances are the name, so a reconnect keeps its id.
class NamedAdmission final : public auth::Admission {
 public:
  std::unique_ptr<auth::AdmissionExchange> begin(net::Connection&) override { return std::make_unique<Exchange>(); }

 private:
  struct Exchange final : auth::AdmissionExchange {
    std::optional<StatusOr<auth::Admitted>> on_message(const wire::Message& m) override {
      const std::string& text = m.envelope.text;
      auto colon = text.find(':');
      if (m.envelope.kind != MessageKind::kHello || colon == std::string::npos) {
        return StatusOr<auth::Admitted>(permission_denied("bad hello"));
      }
      auth::Admitted a;
      a.identity.role = text.substr(0, colon) == "engine" ? wire::Role::kEngine : wire::Role::kClient;
      a.identity.fingerprint = "sha256:" + text.substr(colon + 1);
      a.identity.name = text.substr(colon + 1);
      a.instance = text.substr(colon + 1);
      return StatusOr<auth::Admitted>(std::move(a));
    }
  };
};

wire::Message hello(const std::string& text) {
  wire::Message m;
  m.envelope.kind = MessageKind::kHello;
  m.envelope.text = text;
  return m;
}

wire::Message request(MessageKind kind, std::uint64_t request_id, std::vector<std::uint32_t> targets,
                      std::string body = "code") {
  wire::Message m;
  m.envelope.kind = kind;
  m.envelope.request_id = request_id;
  m.envelope.targets = std::move(targets);
  m.segments.push_back(SharedBytes::copy_of(body));
  return m;
}

wire::Message balanced(std::uint64_t request_id, wire::TaskOptions options = {}) {
  wire::Message m = request(MessageKind::kApply, request_id, {});
  m.envelope.set_load_balanced(true);
  m.envelope.text = wire::encode_task_options(options);
  return m;
}

wire::Message engine_reply(const wire::Message& task, std::string value = "result", bool failed = false) {
  return wire::task_reply(failed ? Outcome::kPythonError : Outcome::kOk,
                          {.task_id = task.envelope.task_id, .engine_id = task.envelope.engine_id}, {},
                          {SharedBytes::copy_of(value)});
}

wire::Message control(MessageKind kind, std::uint64_t request_id, std::vector<std::uint64_t> ids = {}) {
  wire::Message m;
  m.envelope.kind = kind;
  m.envelope.request_id = request_id;
  if (!ids.empty()) m.segments.push_back(wire::encode_ids(ids));
  return m;
}

Outcome status_of(const wire::Message& m) { return m.envelope.outcome(); }

class HubTest : public ::testing::Test {
 protected:
  void SetUp() override { start(HubOptions{}); }

  // `resume`: the engine ids of the previous start() carry over, as with controller --reuse.
  // `store_options`: for the task store (path defaults to one in dir_).
  void start(HubOptions options, bool resume = false, TaskStoreOptions store_options = {}) {
    hub_.reset();
    results_.reset();
    store_.reset();  // one controller per store: the old one lets go first
    GatekeeperOptions g;
    g.trust_dir = dir_.path() + "/trust";
    g.owners = {kOwner};
    g.audit_log = dir_.path() + "/audit.jsonl";
    auto gate = Gatekeeper::create(g);
    ASSERT_TRUE(gate.ok()) << gate.status().to_string();
    gate_ = std::move(gate).value();
    TaskStoreOptions s = std::move(store_options);
    if (s.path.empty()) s.path = dir_.path() + "/state/tasks.sqlite";
    auto store = TaskStore::open(s, clock_.unix_micros());
    ASSERT_TRUE(store.ok()) << store.status().to_string();
    store_ = std::move(store).value();
    results_ = std::make_unique<StoredResults>(*store_, *gate_, clock_);
    auto ids = EngineIds::open(dir_.path() + "/state/engine-ids.json", resume);
    ASSERT_TRUE(ids.ok()) << ids.status().to_string();
    engine_ids_ = std::move(ids).value();
    hub_ = std::make_unique<Hub>(HubServices{clock_, admission_, *gate_, *results_, *engine_ids_}, options,
                                 [this] { ++stopped_; });
  }

  // A new connection that has sent `hello_text` (and been admitted, if it is well-formed).
  std::shared_ptr<FakeConnection> join(const std::string& hello_text) {
    auto c = std::make_shared<FakeConnection>();
    hub_->accept(c);
    c->deliver(hello(hello_text));
    return c;
  }
  // The cluster report `c` gets for a kClusterStatus it sends now.
  nlohmann::json cluster_report(FakeConnection& c) {
    c.deliver(control(MessageKind::kClusterStatus, 1000));
    auto replies = c.sent_of(MessageKind::kClusterStatusReply);
    EXPECT_FALSE(replies.empty());
    return replies.empty() ? nlohmann::json() : nlohmann::json::parse(replies.back().segments.at(0).view());
  }
  std::uint32_t engine_id_of(const FakeConnection& c) { return c.sent_of(MessageKind::kWelcome).at(0).envelope.engine_id; }

  std::string audit_text() {
    gate_->flush();
    std::ifstream in(dir_.path() + "/audit.jsonl");
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  testing::TempDir dir_{"hub_test"};
  FakeClock clock_;
  NamedAdmission admission_;
  std::unique_ptr<Gatekeeper> gate_;
  std::unique_ptr<TaskStore> store_;
  std::unique_ptr<StoredResults> results_;
  std::unique_ptr<EngineIds> engine_ids_;
  std::unique_ptr<Hub> hub_;
  int stopped_ = 0;
};

TEST_F(HubTest, AdmitsEnginesAndClientsWithIdsAndAuthenticatedLimits) {
  auto e0 = join("engine:e0");
  auto e1 = join("engine:e1");
  auto c = join("client:alice");
  ASSERT_EQ(e0->sent_of(MessageKind::kWelcome).size(), 1u);
  EXPECT_EQ(engine_id_of(*e0), 0u);
  EXPECT_EQ(engine_id_of(*e1), 1u);
  EXPECT_GT(c->sent_of(MessageKind::kWelcome).at(0).envelope.client_id, 0u);
  // Admitted peers get the authenticated limits, not the pre-authentication ones.
  EXPECT_GT(c->limits.max_segments, 0u);
}

TEST_F(HubTest, AbortOfATaskSentToItsEngineIsForwardedAndTheEnginesAbortedAnswerRecorded) {
  auto e0 = join("engine:e0");
  auto c = join("client:alice");
  c->deliver(request(MessageKind::kExecute, 7, {0}));
  auto sent = e0->sent_of(MessageKind::kExecute);
  ASSERT_EQ(sent.size(), 1u);
  const TaskId id = sent[0].envelope.task_id;
  c->sent.clear();
  c->deliver(control(MessageKind::kAbort, 8, {id}));
  auto forwarded = e0->sent_of(MessageKind::kEngineAbort);
  ASSERT_EQ(forwarded.size(), 1u);
  EXPECT_EQ(forwarded[0].envelope.task_id, id);
  // The engine had not started it: it answers kAborted, and the client gets TaskAborted.
  e0->deliver(wire::task_reply(Outcome::kAborted, {.task_id = id, .engine_id = 0}, "aborted"));
  auto replies = c->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(status_of(replies[0]), Outcome::kAborted);
  EXPECT_EQ(replies[0].envelope.request_id, 7u);
  c->deliver(control(MessageKind::kGetResult, 9, {id}));  // recorded as aborted
  replies = c->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(status_of(replies[1]), Outcome::kAborted);
}

TEST_F(HubTest, DirectRequestReachesEachTargetAndRepliesComeBackAfterTheirAck) {
  auto e0 = join("engine:e0");
  auto e1 = join("engine:e1");
  auto c = join("client:alice");
  c->sent.clear();
  c->deliver(request(MessageKind::kExecute, 7, {0, 1}));
  auto t0 = e0->sent_of(MessageKind::kExecute);
  auto t1 = e1->sent_of(MessageKind::kExecute);
  ASSERT_EQ(t0.size(), 1u);
  ASSERT_EQ(t1.size(), 1u);
  EXPECT_EQ(t0[0].segments.at(0).to_string(), "code");
  EXPECT_NE(t0[0].envelope.task_id, t1[0].envelope.task_id);
  EXPECT_TRUE(c->sent.empty()) << "the ack waits for company";

  e0->deliver(engine_reply(t0[0], "zero"));
  // The ack leaves first, then the reply, in one go.
  ASSERT_EQ(c->sent.size(), 2u);
  EXPECT_EQ(c->sent[0].envelope.kind, MessageKind::kSubmitted);
  auto ids = wire::decode_ids(c->sent[0].segments.at(0));
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<std::uint64_t>{t0[0].envelope.task_id, t1[0].envelope.task_id}));
  EXPECT_EQ(c->sent[1].envelope.kind, MessageKind::kTaskReply);
  EXPECT_EQ(c->sent[1].envelope.request_id, 7u);
  EXPECT_EQ(c->sent[1].envelope.engine_id, 0u);
  EXPECT_EQ(c->sent[1].segments.at(0).to_string(), "zero");
  e1->deliver(engine_reply(t1[0], "one"));
  EXPECT_EQ(c->sent.back().segments.at(0).to_string(), "one");
  EXPECT_EQ(hub_->tasks_completed(), 2u);
  EXPECT_EQ(hub_->tasks_in_flight(), 0u);
}

TEST_F(HubTest, AnAckWithoutCompanyLeavesAfterAboutAMillisecond) {
  join("engine:e0");
  auto c = join("client:alice");
  c->sent.clear();
  c->deliver(request(MessageKind::kExecute, 1, {0}));
  EXPECT_TRUE(c->sent_of(MessageKind::kSubmitted).empty());
  clock_.advance(2ms);
  EXPECT_EQ(c->sent_of(MessageKind::kSubmitted).size(), 1u);
}

TEST_F(HubTest, LoadBalancedTaskRunsOnOneEngineAndItsReplyNamesIt) {
  auto e0 = join("engine:e0");
  auto e1 = join("engine:e1");
  auto c = join("client:alice");
  c->deliver(balanced(3));
  const auto sent0 = e0->sent_of(MessageKind::kApply);
  const auto sent1 = e1->sent_of(MessageKind::kApply);
  ASSERT_EQ(sent0.size() + sent1.size(), 1u);
  const wire::Message& task = sent0.empty() ? sent1[0] : sent0[0];
  EXPECT_FALSE(task.envelope.load_balanced()) << "the controller clears the flag";
  (sent0.empty() ? e1 : e0)->deliver(engine_reply(task));
  auto replies = c->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].envelope.engine_id, task.envelope.engine_id);
  EXPECT_EQ(status_of(replies[0]), Outcome::kOk);
}

TEST_F(HubTest, AnEngineCannotAnswerATaskItDoesNotHold) {
  auto e0 = join("engine:e0");
  auto e1 = join("engine:e1");
  auto c = join("client:alice");
  c->deliver(request(MessageKind::kExecute, 1, {0}));
  auto task = e0->sent_of(MessageKind::kExecute).at(0);
  // T8: engine 1 answers engine 0's task: ignored.
  wire::Message forged = engine_reply(task, "forged");
  forged.envelope.engine_id = 1;
  e1->deliver(forged);
  EXPECT_TRUE(c->sent_of(MessageKind::kTaskReply).empty());
  e0->deliver(engine_reply(task, "real"));
  ASSERT_EQ(c->sent_of(MessageKind::kTaskReply).size(), 1u);
  EXPECT_EQ(c->sent_of(MessageKind::kTaskReply)[0].segments.at(0).to_string(), "real");
}

TEST_F(HubTest, EngineDeathFailsItsTasksAndAClientCanStillFetchTheOutcome) {
  auto e0 = join("engine:e0");
  auto c = join("client:alice");
  c->deliver(request(MessageKind::kExecute, 1, {0}));
  const std::uint64_t id = e0->sent_of(MessageKind::kExecute).at(0).envelope.task_id;
  e0->drop(unavailable("killed"));
  auto replies = c->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(status_of(replies[0]), Outcome::kEngineDied);
  EXPECT_NE(replies[0].envelope.text.find("killed"), std::string::npos);
  // The stored outcome says the same to a later get_result of the same identity.
  auto c2 = join("client:alice");
  c2->deliver(control(MessageKind::kGetResult, 9, {id}));
  auto stored = c2->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(stored[0].envelope.task_id, id);
  EXPECT_EQ(status_of(stored[0]), Outcome::kEngineDied);
}

TEST_F(HubTest, ASilentEngineIsDroppedAfterTheHeartbeatTimeout) {
  HubOptions o;
  o.heartbeat_timeout = 4s;
  start(o);
  auto e0 = join("engine:e0");
  auto e1 = join("engine:e1");
  for (int i = 0; i < 6; ++i) {
    clock_.advance(1s);
    wire::Message beat;
    beat.envelope.kind = MessageKind::kHeartbeat;
    e1->deliver(beat);  // e1 keeps beating, e0 says nothing
  }
  EXPECT_FALSE(e0->is_open());
  EXPECT_NE(e0->close_reason.message().find("no heartbeat"), std::string::npos);
  EXPECT_TRUE(e1->is_open());
  EXPECT_EQ(e1->sent_of(MessageKind::kHeartbeatAck).size(), 6u);
}

// A large result on a slow link takes longer than the heartbeat timeout to arrive, and the
// engine's heartbeats wait behind it: bytes arriving count as life. Once they stop, the
// timeout runs again.
TEST_F(HubTest, AnEngineWhoseBytesAreArrivingIsNotDroppedWithoutHeartbeats) {
  HubOptions o;
  o.heartbeat_timeout = 4s;
  start(o);
  auto e0 = join("engine:e0");
  for (int i = 0; i < 12; ++i) {
    clock_.advance(1s);
    e0->received_bytes += 1u << 20;  // a message in progress, no complete message
  }
  EXPECT_TRUE(e0->is_open()) << e0->close_reason.to_string();
  for (int i = 0; i < 6; ++i) clock_.advance(1s);  // the bytes stopped
  EXPECT_FALSE(e0->is_open());
  EXPECT_NE(e0->close_reason.message().find("no heartbeat"), std::string::npos);
}

// A client whose requests the controller holds beyond its byte budget is not read until they
// drain (flow control, nothing dropped); its heartbeats are answered for it meanwhile, and
// another client is read as before.
TEST_F(HubTest, AClientOverItsByteBudgetIsPausedUntilItsBytesLeave) {
  HubOptions o;
  o.queue_limits = {.per_client = 100, .total = 1000};
  o.scheduler.direct_window = 1;
  o.heartbeat_timeout = 4s;
  start(o);
  auto e0 = join("engine:e0");
  auto alice = join("client:alice");
  auto other = join("client:alice");
  const std::string sixty(60, 'x');
  alice->deliver(request(MessageKind::kPush, 1, {0}, sixty));
  EXPECT_FALSE(alice->paused) << "60 of 100 bytes";
  alice->deliver(request(MessageKind::kPush, 2, {0}, sixty));  // waits behind the first
  EXPECT_TRUE(alice->paused) << "120 of 100 bytes";
  EXPECT_FALSE(other->paused);
  ASSERT_EQ(e0->sent_of(MessageKind::kPush).size(), 1u);

  clock_.advance(1s);
  EXPECT_FALSE(alice->sent_of(MessageKind::kHeartbeatAck).empty()) << "a paused client's link must hear from us";

  // The first push is written to the engine's socket (the fake keeps what it "wrote"): the
  // scheduler kept no copy of a direct task's body, so alice is back under her budget.
  e0->sent.clear();
  EXPECT_FALSE(alice->paused);

  // The engine finishes; the second push goes out, is written, and nothing is held any more.
  wire::Message first;
  first.envelope.task_id = 1;
  first.envelope.engine_id = 0;
  e0->deliver(engine_reply(first));
  ASSERT_EQ(e0->sent_of(MessageKind::kPush).size(), 1u);
  EXPECT_EQ(e0->sent_of(MessageKind::kPush)[0].segments.at(0).to_string(), sixty);
  e0->sent.clear();
  EXPECT_FALSE(alice->paused);
  EXPECT_EQ(alice->sent_of(MessageKind::kTaskReply).size(), 1u);
}

// Tasks are bounded per client like bytes: over client_max_tasks unfinished (queued, waiting
// or running), the client is not read until one ends — answered by an engine or failed.
TEST_F(HubTest, AClientOverItsTaskLimitIsPausedUntilATaskEnds) {
  HubOptions o;
  o.client_max_tasks = 3;
  start(o);
  auto e0 = join("engine:e0");
  auto alice = join("client:alice");
  auto bob = join("client:bob");
  for (std::uint64_t r = 1; r <= 3; ++r) alice->deliver(request(MessageKind::kExecute, r, {0}));
  EXPECT_FALSE(alice->paused) << "3 of 3 tasks";
  alice->deliver(balanced(4));
  EXPECT_TRUE(alice->paused) << "4 of 3 tasks";
  bob->deliver(request(MessageKind::kExecute, 1, {0}));
  EXPECT_FALSE(bob->paused) << "the limit is per client";
  auto sent = e0->sent_of(MessageKind::kExecute);
  ASSERT_GE(sent.size(), 1u);
  e0->deliver(engine_reply(sent[0]));
  EXPECT_FALSE(alice->paused) << "back to 3 of 3";
  // A request to an engine that does not exist fails at once: counted and uncounted at once.
  alice->deliver(request(MessageKind::kExecute, 5, {7}));
  EXPECT_FALSE(alice->paused);
}

// The task limit over all clients pauses whoever sends past it, however few tasks it has.
TEST_F(HubTest, TheTotalTaskLimitPausesWhoeverSendsPastItUntilATaskEnds) {
  HubOptions o;
  o.max_tasks = 3;
  start(o);
  auto e0 = join("engine:e0");
  auto alice = join("client:alice");
  auto bob = join("client:alice");  // a second connection (client id) of the owner
  for (std::uint64_t r = 1; r <= 3; ++r) alice->deliver(request(MessageKind::kExecute, r, {0}));
  EXPECT_FALSE(alice->paused) << "3 of 3 tasks in all";
  bob->deliver(request(MessageKind::kExecute, 1, {0}));
  EXPECT_TRUE(bob->paused) << "4 of 3 in all, though this client has one";
  EXPECT_FALSE(alice->paused) << "the first client sent nothing past the limit";
  auto sent = e0->sent_of(MessageKind::kExecute);
  ASSERT_GE(sent.size(), 1u);
  e0->deliver(engine_reply(sent[0]));
  EXPECT_FALSE(bob->paused) << "back to 3 of 3";
}

// The limit over all clients pauses a client that holds little itself.
TEST_F(HubTest, TheTotalByteBudgetPausesEveryClientThatSends) {
  HubOptions o;
  o.queue_limits = {.per_client = 1000, .total = 100};
  o.scheduler.direct_window = 1;
  start(o);
  auto e0 = join("engine:e0");
  auto alice = join("client:alice");
  auto other = join("client:alice");  // a second connection (client id) of the owner
  alice->deliver(request(MessageKind::kPush, 1, {0}, std::string(90, 'x')));
  EXPECT_FALSE(alice->paused);
  other->deliver(request(MessageKind::kExecute, 1, {0}, std::string(20, 'y')));
  EXPECT_TRUE(other->paused);
  // The engine leaves: its tasks fail, their bytes go, and the client is read again.
  e0->drop();
  EXPECT_FALSE(other->paused);
}

// Relaying: a large direct push whose engines can take it now is forwarded while it arrives:
// the engine's connection gets the head and first segment at once and each part as the client's
// connection hands it over; the client's connection is held back while the window is full.
TEST_F(HubTest, ALargeDirectRequestIsRelayedToItsEnginesAsItArrives) {
  HubOptions options;
  options.relay_from_bytes = 1000;
  options.relay_window_bytes = 3000;
  start(options);
  auto e0 = join("engine:e0");
  auto e1 = join("engine:e1");
  auto c = join("client:alice");
  EXPECT_EQ(c->stream_offers_from, 1000u);
  EXPECT_EQ(e0->stream_offers_from, 1000u) << "engines' large replies are spooled (offered too)";
  wire::Message first = request(MessageKind::kPush, 7, {0, 1}, "names");
  const std::vector<std::uint64_t> sizes{5, 4000};
  auto sink = c->offer(first, sizes);
  ASSERT_NE(sink, nullptr);
  for (auto* e : {e0.get(), e1.get()}) {
    ASSERT_EQ(e->streams.size(), 1u);
    const wire::Message& started = e->sent.at(e->streams[0].first);
    EXPECT_EQ(started.envelope.kind, MessageKind::kPush);
    EXPECT_EQ(started.segments.at(0).to_string(), "names");
    EXPECT_EQ(e->streams[0].second->sizes(), sizes);
    EXPECT_TRUE(e->sending_stream());
  }
  sink->chunk(1, SharedBytes::copy_of(std::string(2000, 'a')));
  EXPECT_FALSE(sink->backlogged());
  sink->chunk(1, SharedBytes::copy_of(std::string(1500, 'b')));
  EXPECT_TRUE(sink->backlogged()) << "3500 bytes held for the engines, over the 3000-byte window";
  bool room = false;
  sink->when_room([&] { room = true; });
  auto& parts0 = e0->streams[0].second->parts();
  auto& parts1 = e1->streams[0].second->parts();
  ASSERT_EQ(parts0.size(), 2u);
  EXPECT_EQ(parts0[1].to_string(), std::string(1500, 'b'));
  parts0.clear();
  EXPECT_FALSE(room) << "the slowest engine sets the pace";
  parts1.clear();
  EXPECT_TRUE(room);
  sink->chunk(1, SharedBytes::copy_of(std::string(500, 'c')));
  sink->end();
  EXPECT_EQ(e0->streams[0].second->state(), net::OutgoingStream::State::kFinished);
  EXPECT_FALSE(e1->sending_stream());
  // The cluster report counts it (a refused or declined request would not be).
  auto report = cluster_report(*c);
  EXPECT_EQ(report.value("requests_relayed", 0), 1);
  // The engines answer as for any request.
  const wire::Message started0 = e0->sent.at(e0->streams[0].first);
  e0->deliver(engine_reply(started0, "pushed"));
  auto replies = c->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(status_of(replies[0]), Outcome::kOk);
  EXPECT_EQ(replies[0].envelope.request_id, 7u);
}

// Runs what other threads posted (the spool thread's releases and reports) until `done` holds
// or five seconds pass.
template <typename Pred>
bool settle(FakeClock& clock, Pred done) {
  for (int i = 0; i < 5000; ++i) {
    clock.run_due();
    if (done()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return done();
}

// The bytes of a streamed message sent on `c` (index `n` of its streams), taken part by part
// (each taken part releases the sender's window) until it is finished or abandoned.
std::string drain_stream(FakeClock& clock, FakeConnection& c, std::size_t n) {
  std::string out;
  auto& stream = *c.streams.at(n).second;
  for (int i = 0; i < 5000 && stream.state() == net::OutgoingStream::State::kOpen; ++i) {
    while (!stream.parts().empty()) {
      out += stream.parts().front().to_string();
      stream.parts().pop_front();
    }
    clock.run_due();
    if (stream.parts().empty()) std::this_thread::sleep_for(1ms);
  }
  while (!stream.parts().empty()) {
    out += stream.parts().front().to_string();
    stream.parts().pop_front();
  }
  return out;
}

// A large reply is written to the task store's file as it arrives (the engine's connection not
// read while the window is full, the engine still alive), then sent to its client from the
// file a part at a time; get_result later streams the same file (docs/protocol.md "Relaying a
// large reply").
TEST_F(HubTest, ALargeReplyIsSpooledToItsFileAsItArrivesAndSentOnFromIt) {
  HubOptions options;
  options.relay_from_bytes = 1000;
  options.relay_window_bytes = 3000;
  options.heartbeat_timeout = 1000ms;
  TaskStoreOptions store_options;
  store_options.inline_limit = 1024;
  start(options, false, store_options);
  auto e0 = join("engine:e0");
  auto c = join("client:alice");
  c->deliver(request(MessageKind::kExecute, 7, {0}));
  const wire::Message task = e0->sent_of(MessageKind::kExecute).at(0);
  const TaskId id = task.envelope.task_id;

  wire::Message first = engine_reply(task, "meta");
  const std::string value(2500, 'v'), more(4000, 'w');
  const std::vector<std::uint64_t> sizes{4, 0, value.size(), more.size()};
  auto sink = e0->offer(first, sizes);
  ASSERT_NE(sink, nullptr);
  sink->chunk(2, SharedBytes::copy_of(value));
  sink->chunk(3, SharedBytes::copy_of(more.substr(0, 1000)));
  EXPECT_TRUE(sink->backlogged()) << "3504 bytes not yet written, over the 3000-byte window";
  // Not read meanwhile, yet alive: the hub answers for its heartbeats.
  clock_.advance(1500ms);
  EXPECT_TRUE(e0->is_open()) << "an engine whose reply waits for the disk was declared dead";
  EXPECT_FALSE(e0->sent_of(MessageKind::kHeartbeatAck).empty());
  bool room = false;
  sink->when_room([&] { room = true; });
  ASSERT_TRUE(settle(clock_, [&] { return room; })) << "the window never opened";
  sink->chunk(3, SharedBytes::copy_of(more.substr(1000)));
  EXPECT_TRUE(c->sent_of(MessageKind::kTaskReply).empty()) << "a reply sent before it was whole";
  sink->end();
  ASSERT_TRUE(settle(clock_, [&] { return !c->streams.empty(); })) << "the reply never left";
  const wire::Message& head = c->sent.at(c->streams[0].first);
  EXPECT_EQ(head.envelope.kind, MessageKind::kTaskReply);
  EXPECT_EQ(status_of(head), Outcome::kOk);
  EXPECT_EQ(head.envelope.request_id, 7u);
  EXPECT_EQ(head.envelope.task_id, id);
  EXPECT_EQ(head.segments.at(0).to_string(), "meta");
  EXPECT_EQ(c->streams[0].second->sizes(), sizes);
  EXPECT_EQ(drain_stream(clock_, *c, 0), value + more);
  EXPECT_EQ(c->streams[0].second->state(), net::OutgoingStream::State::kFinished);
  EXPECT_EQ(hub_->tasks_in_flight(), 0u);

  // Recorded: get_result from another connection of the same identity streams the file.
  auto c2 = join("client:alice");
  c2->deliver(control(MessageKind::kGetResult, 9, {id}));
  ASSERT_EQ(c2->streams.size(), 1u);
  EXPECT_EQ(c2->sent.at(c2->streams[0].first).envelope.request_id, 9u);
  EXPECT_EQ(c2->sent.at(c2->streams[0].first).segments.at(0).to_string(), "meta");
  EXPECT_EQ(drain_stream(clock_, *c2, 0), value + more);
  auto report = cluster_report(*c2);
  EXPECT_EQ(report.value("replies_spooled", 0), 1);
}

// Received whole instead: a small reply, a reply to a task the engine does not run, any other
// kind. An engine that leaves halfway: its task fails as for any engine death, no file stays.
TEST_F(HubTest, ARepliesSpoolIsDeclinedOrAbandonedCleanly) {
  HubOptions options;
  options.relay_from_bytes = 1000;
  TaskStoreOptions store_options;
  store_options.inline_limit = 1024;
  start(options, false, store_options);
  auto e0 = join("engine:e0");
  auto e1 = join("engine:e1");
  auto c = join("client:alice");
  c->deliver(request(MessageKind::kExecute, 7, {0}));
  const wire::Message task = e0->sent_of(MessageKind::kExecute).at(0);
  const std::vector<std::uint64_t> sizes{4, 5000};
  EXPECT_EQ(e1->offer(engine_reply(task, "meta"), sizes), nullptr) << "engine 1 does not run it (T8)";
  wire::Message output = engine_reply(task, "meta");
  output.envelope.kind = MessageKind::kTaskOutput;
  EXPECT_EQ(e0->offer(output, sizes), nullptr);
  auto sink = e0->offer(engine_reply(task, "meta"), sizes);
  ASSERT_NE(sink, nullptr);
  sink->chunk(1, SharedBytes::copy_of(std::string(2000, 'x')));
  sink->abandon(unavailable("connection closed"));
  e0->close(unavailable("connection closed"));
  auto replies = c->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(status_of(replies[0]), Outcome::kEngineDied);
  ASSERT_TRUE(settle(clock_, [&] {
    return std::filesystem::is_empty(dir_.path() + "/state/tasks.sqlite.results");
  })) << "a half-written reply's file stayed";
}

// A client that does not read (its connection holds more unread replies than the limit) gets
// its further replies later, from the task store, as it drains: the controller does not hold
// them meanwhile (T20). Its task ids still go at once.
TEST_F(HubTest, RepliesToAClientThatDoesNotReadWaitInTheStoreNotInMemory) {
  HubOptions options;
  options.client_reply_queue_bytes = 500;
  start(options);
  auto e0 = join("engine:e0");
  auto c = join("client:alice");
  c->queued = 1000;  // stands for 1000 bytes it has not read
  c->deliver(request(MessageKind::kExecute, 7, {0}));
  c->deliver(request(MessageKind::kExecute, 8, {0}));
  auto tasks = e0->sent_of(MessageKind::kExecute);
  ASSERT_EQ(tasks.size(), 2u);
  e0->deliver(engine_reply(tasks[0], std::string(300, 'a')));
  e0->deliver(engine_reply(tasks[1], std::string(300, 'b')));
  EXPECT_TRUE(c->sent_of(MessageKind::kTaskReply).empty()) << "replies queued for a client that does not read";
  EXPECT_EQ(c->sent_of(MessageKind::kSubmitted).size(), 2u) << "task ids go at once";
  clock_.advance(100ms);
  EXPECT_TRUE(c->sent_of(MessageKind::kTaskReply).empty()) << "sent before the connection drained";
  c->queued = 0;  // it reads again
  clock_.advance(25ms);
  auto replies = c->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[0].envelope.request_id, 7u);
  EXPECT_EQ(replies[0].envelope.task_id, tasks[0].envelope.task_id);
  EXPECT_EQ(status_of(replies[0]), Outcome::kOk);
  EXPECT_EQ(replies[0].segments.at(0).to_string(), std::string(300, 'a'));
  EXPECT_EQ(replies[1].envelope.request_id, 8u);
  EXPECT_EQ(replies[1].segments.at(0).to_string(), std::string(300, 'b'));
  // Back to normal: the next reply goes at once.
  c->deliver(request(MessageKind::kExecute, 9, {0}));
  e0->deliver(engine_reply(e0->sent_of(MessageKind::kExecute).at(2), "c"));
  EXPECT_EQ(c->sent_of(MessageKind::kTaskReply).size(), 3u);
  auto report = cluster_report(*c);
  EXPECT_EQ(report.value("replies_deferred", 0), 2);
}

// Relayed only where order and pace allow: not a load-balanced or small request, not to an
// engine with direct tasks waiting or already relaying, not a target named twice, not a sealed
// request split among engines. Those are received whole, as before.
TEST_F(HubTest, ARequestIsReceivedWholeWhenItsEnginesCannotTakeItNow) {
  HubOptions options;
  options.relay_from_bytes = 1000;
  start(options);
  auto e0 = join("engine:e0");
  auto e1 = join("engine:e1");
  auto c = join("client:alice");
  const std::vector<std::uint64_t> sizes{4, 5000};
  wire::Message lb = balanced(1);
  EXPECT_EQ(c->offer(lb, sizes), nullptr);
  EXPECT_EQ(c->offer(request(MessageKind::kPush, 2, {0, 0}), sizes), nullptr);
  EXPECT_EQ(c->offer(request(MessageKind::kPull, 3, {0}), sizes), nullptr);
  wire::Message sealed = request(MessageKind::kPush, 4, {0, 1});
  sealed.envelope.set_sealed(true);
  EXPECT_EQ(c->offer(sealed, std::vector<std::uint64_t>{4, 2500, 4, 2500}), nullptr);
  EXPECT_TRUE(e0->streams.empty());
  ASSERT_NE(c->offer(request(MessageKind::kPush, 5, {0}), sizes), nullptr);
  EXPECT_EQ(c->offer(request(MessageKind::kPush, 6, {0, 1}), sizes), nullptr) << "engine 0 is relaying";
  // Engine 1 busy with direct tasks beyond its window: a new one would wait here, so not relayed.
  for (std::uint64_t r = 10; r < 14; ++r) c->deliver(request(MessageKind::kExecute, r, {1}));
  EXPECT_EQ(c->offer(request(MessageKind::kPush, 7, {1}), sizes), nullptr);
}

// The client goes away halfway: the engine is told to drop the message (it never ran), the
// task ends as aborted with a reason, and the engine takes the next task.
TEST_F(HubTest, ARelayedRequestWhoseClientLeavesHalfwayIsAbandonedAndRecorded) {
  HubOptions options;
  options.relay_from_bytes = 1000;
  start(options);
  auto e0 = join("engine:e0");
  auto c = join("client:alice");
  auto sink = c->offer(request(MessageKind::kPush, 7, {0}, "names"), std::vector<std::uint64_t>{5, 4000});
  ASSERT_NE(sink, nullptr);
  const TaskId id = e0->sent.at(e0->streams.at(0).first).envelope.task_id;
  sink->chunk(1, SharedBytes::copy_of(std::string(1000, 'a')));
  sink->abandon(unavailable("connection closed"));
  EXPECT_EQ(e0->streams[0].second->state(), net::OutgoingStream::State::kAbandoned);
  EXPECT_EQ(hub_->tasks_in_flight(), 0u);
  auto reply = c->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(reply.size(), 1u);
  EXPECT_EQ(status_of(reply[0]), Outcome::kAborted);
  EXPECT_NE(reply[0].envelope.text.find("never arrived whole"), std::string::npos) << reply[0].envelope.text;
  auto other = join("client:alice");
  other->deliver(control(MessageKind::kGetResult, 9, {id}));
  auto stored = other->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(status_of(stored[0]), Outcome::kAborted);
  other->deliver(request(MessageKind::kExecute, 10, {0}));
  EXPECT_EQ(e0->sent_of(MessageKind::kExecute).size(), 1u);
}

TEST_F(HubTest, ARequestThePolicyDeniesIsAnsweredAndAuditedAndNothingRuns) {
  auto e0 = join("engine:e0");
  auto bob = join("client:bob");  // not an owner; the built-in policy allows him nothing
  bob->deliver(request(MessageKind::kExecute, 5, {0}));
  EXPECT_TRUE(e0->sent_of(MessageKind::kExecute).empty());
  auto replies = bob->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(status_of(replies[0]), Outcome::kNotAllowed);
  EXPECT_NE(replies[0].envelope.text.find("permission denied"), std::string::npos);
  bob->deliver(balanced(6));
  EXPECT_TRUE(e0->sent_of(MessageKind::kApply).empty());
  bob->deliver(control(MessageKind::kQueueStatus, 7));
  auto status = bob->sent_of(MessageKind::kQueueStatusReply);
  ASSERT_EQ(status.size(), 1u);
  EXPECT_EQ(status_of(status[0]), Outcome::kNotAllowed);
  const std::string audit = audit_text();
  EXPECT_NE(audit.find("\"operation\":\"execute\",\"outcome\":\"denied\""), std::string::npos) << audit;
  EXPECT_NE(audit.find("\"operation\":\"apply\",\"outcome\":\"denied\""), std::string::npos) << audit;
  EXPECT_TRUE(bob->is_open()) << "a denial is an answer, not a disconnection";
}

TEST_F(HubTest, AnotherIdentitysResultIsAnsweredAsUnknown) {
  auto e0 = join("engine:e0");
  auto alice = join("client:alice");
  alice->deliver(request(MessageKind::kExecute, 1, {0}));
  auto task = e0->sent_of(MessageKind::kExecute).at(0);
  e0->deliver(engine_reply(task, "secret"));
  auto bob = join("client:bob");
  bob->deliver(control(MessageKind::kGetResult, 2, {task.envelope.task_id}));
  auto replies = bob->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(status_of(replies[0]), Outcome::kNoSuchTask);  // T10: as if it did not exist
  for (const auto& seg : replies[0].segments) EXPECT_EQ(seg.view().find("secret"), std::string_view::npos);
}

TEST_F(HubTest, AWaitingGetResultIsAnsweredWhenTheTaskEnds) {
  auto e0 = join("engine:e0");
  auto alice = join("client:alice");
  alice->deliver(request(MessageKind::kExecute, 1, {0}));
  auto task = e0->sent_of(MessageKind::kExecute).at(0);
  auto later = join("client:alice");
  later->deliver(control(MessageKind::kGetResult, 2, {task.envelope.task_id}));
  EXPECT_TRUE(later->sent_of(MessageKind::kTaskReply).empty());
  e0->deliver(engine_reply(task, "done"));
  auto replies = later->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].envelope.request_id, 2u);
  EXPECT_EQ(replies[0].segments.at(0).to_string(), "done");
}

TEST_F(HubTest, OnAFullDiskNewTasksAreRefusedBeforeTheyGetAnIdAndResultsComeFromMemory) {
  // A 1 MiB tmpfs for the task store, in a private mount namespace (root only).
  if (!testing::private_mounts()) GTEST_SKIP() << "needs a private mount namespace (root) for a small tmpfs";
  const std::string disk = dir_.path() + "/disk";
  testing::SmallDisk small_disk(disk, "1m");
  ASSERT_TRUE(small_disk.mounted()) << small_disk.error();
  TaskStoreOptions s;
  s.path = disk + "/tasks.sqlite";
  s.max_pending_writes = 40;  // new tasks refused beyond 20 pending writes while the disk fails
  start(HubOptions{}, false, s);

  auto e0 = join("engine:e0");
  auto alice = join("client:alice");
  ASSERT_FALSE(small_disk.fill("filler").empty());
  std::vector<std::uint64_t> handed_out;
  std::uint64_t request_id = 1;
  for (; request_id < 100; ++request_id) {
    alice->sent.clear();
    alice->deliver(request(MessageKind::kExecute, request_id, {0}));
    clock_.advance(21ms);  // the ack leaves, a flush fails
    auto replies = alice->sent_of(MessageKind::kTaskReply);
    if (!replies.empty()) {
      // Refused: no id was handed out for it, and the reason says why.
      EXPECT_TRUE(alice->sent_of(MessageKind::kSubmitted).empty());
      EXPECT_EQ(status_of(replies[0]), Outcome::kControllerFailed);
      EXPECT_NE(replies[0].envelope.text.find("disk full"), std::string::npos) << replies[0].envelope.text;
      break;
    }
    auto task = e0->sent_of(MessageKind::kExecute).back();
    handed_out.push_back(task.envelope.task_id);
    e0->deliver(engine_reply(task, "r" + std::to_string(task.envelope.task_id)));
  }
  ASSERT_LT(request_id, 100u) << "never refused";
  ASSERT_GT(handed_out.size(), 2u);
  EXPECT_EQ(store_->dropped_writes(), 0u);

  // Another connection of alice's gets every result at once, from memory.
  auto later = join("client:alice");
  later->deliver(control(MessageKind::kGetResult, 500, handed_out));
  auto answers = later->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(answers.size(), handed_out.size());
  for (std::size_t i = 0; i < answers.size(); ++i) {
    EXPECT_EQ(status_of(answers[i]), Outcome::kOk) << handed_out[i];
    EXPECT_EQ(answers[i].segments.at(0).to_string(), "r" + std::to_string(handed_out[i]));
  }
  // Space comes back: new tasks are taken again.
  std::filesystem::remove(disk + "/filler");
  clock_.advance(21ms);
  alice->sent.clear();
  alice->deliver(request(MessageKind::kExecute, 1000, {0}));
  EXPECT_EQ(e0->sent_of(MessageKind::kExecute).size(), handed_out.size() + 1);
  EXPECT_TRUE(alice->sent_of(MessageKind::kTaskReply).empty());
}

TEST_F(HubTest, ASealedRequestGivesEachEngineOnlyItsOwnPart) {
  auto e0 = join("engine:e0");
  auto e1 = join("engine:e1");
  auto c = join("client:alice");
  // Two parts of two segments each (wire/message.h): [header, body] per target, in order.
  wire::Message m = request(MessageKind::kExecute, 7, {0, 1}, "head-for-0");
  m.segments.push_back(SharedBytes::copy_of(std::string_view("body-for-0")));
  m.segments.push_back(SharedBytes::copy_of(std::string_view("head-for-1")));
  m.segments.push_back(SharedBytes::copy_of(std::string_view("body-for-1")));
  m.envelope.set_sealed(true);
  c->deliver(std::move(m));
  auto t0 = e0->sent_of(MessageKind::kExecute);
  auto t1 = e1->sent_of(MessageKind::kExecute);
  ASSERT_EQ(t0.size(), 1u);
  ASSERT_EQ(t1.size(), 1u);
  EXPECT_TRUE(t0[0].envelope.sealed());
  ASSERT_EQ(t0[0].segments.size(), 2u);
  EXPECT_EQ(t0[0].segments[1].to_string(), "body-for-0");
  ASSERT_EQ(t1[0].segments.size(), 2u);
  EXPECT_EQ(t1[0].segments[0].to_string(), "head-for-1");
  EXPECT_EQ(t1[0].segments[1].to_string(), "body-for-1");
  // The audit log names the digest the (unreadable) header states, not a hash of ciphertext.
  EXPECT_NE(audit_text().find("sealed:"), std::string::npos);

  // Parts that do not split evenly: a broken client, cut off.
  wire::Message uneven = request(MessageKind::kExecute, 8, {0, 1}, "a");
  uneven.segments.push_back(SharedBytes::copy_of(std::string_view("b")));
  uneven.segments.push_back(SharedBytes::copy_of(std::string_view("c")));
  uneven.envelope.set_sealed(true);
  c->deliver(std::move(uneven));
  EXPECT_EQ(e0->sent_of(MessageKind::kExecute).size(), 1u);
  EXPECT_FALSE(c->is_open());
}

// A nonblocking socket pair: one end for the hub, one for the test.
std::pair<UniqueFd, UniqueFd> socket_pair() {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// Whether the hub has closed its end of a socket_pair (EOF within a few seconds).
bool closed_by_hub(int fd) {
  for (int i = 0; i < 500; ++i) {
    char byte;
    const ssize_t n = ::read(fd, &byte, 1);
    if (n == 0) return true;
    if (n > 0) return false;  // it sent something instead
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

net::Ticket ticket_of(const SharedBytes& segment) {
  const auto ticket = net::ticket_in(segment);
  EXPECT_TRUE(ticket.has_value());
  return ticket.value_or(net::Ticket{});
}

TEST_F(HubTest, ABulkRequestGetsATicketPerEngineAndItsBodyGoesAroundTheHub) {
  auto e0 = join("engine:e0");
  auto e1 = join("engine:e1");
  auto c = join("client:alice");
  // Per target [seal header, transfer sizes] (wire/message.h, bulk).
  wire::Message m = request(MessageKind::kPush, 7, {0, 1}, "head-for-0");
  m.segments.push_back(net::encode_transfer_sizes(std::vector<std::uint64_t>{5}));
  m.segments.push_back(SharedBytes::copy_of(std::string_view("head-for-1")));
  m.segments.push_back(net::encode_transfer_sizes(std::vector<std::uint64_t>{3, 4}));
  m.envelope.set_sealed(true);
  m.envelope.set_bulk(true);
  c->deliver(std::move(m));
  // The ids first, then a ticket per task as it leaves for its engine.
  const auto sent = c->sent;
  ASSERT_GE(sent.size(), 3u);
  EXPECT_EQ(sent[sent.size() - 3].envelope.kind, MessageKind::kSubmitted);
  wire::Message tickets;  // both tickets, in target order
  for (std::size_t i = sent.size() - 2; i < sent.size(); ++i) {
    ASSERT_EQ(sent[i].envelope.kind, MessageKind::kBulkTicket);
    EXPECT_EQ(sent[i].envelope.request_id, 7u);
    EXPECT_EQ(sent[i].envelope.engine_id, i - (sent.size() - 2));
    ASSERT_EQ(sent[i].segments.size(), 1u);
    tickets.segments.push_back(sent[i].segments[0]);
  }
  EXPECT_NE(tickets.segments[0].to_string(), tickets.segments[1].to_string());
  auto t0 = e0->sent_of(MessageKind::kPush);
  auto t1 = e1->sent_of(MessageKind::kPush);
  ASSERT_EQ(t0.size(), 1u);
  ASSERT_EQ(t1.size(), 1u);
  EXPECT_TRUE(t0[0].envelope.bulk());
  ASSERT_EQ(t0[0].segments.size(), 3u);  // its part and its ticket
  EXPECT_EQ(t0[0].segments[0].to_string(), "head-for-0");
  EXPECT_EQ(t0[0].segments[2].to_string(), tickets.segments[0].to_string());
  ASSERT_EQ(t1[0].segments.size(), 3u);
  EXPECT_EQ(t1[0].segments[0].to_string(), "head-for-1");
  EXPECT_EQ(t1[0].segments[2].to_string(), tickets.segments[1].to_string());

  // Engine 1's transfer (7 bytes): the two data connections meet in the hub's relay.
  auto [client_end, client_side] = socket_pair();
  auto [engine_end, engine_side] = socket_pair();
  hub_->accept_data(std::move(client_end), {net::DataRole::kSender, ticket_of(tickets.segments[1])}, "client");
  hub_->accept_data(std::move(engine_end), {net::DataRole::kReceiver, ticket_of(tickets.segments[1])}, "engine");
  ASSERT_EQ(::write(client_side.get(), "1234567", 7), 7);
  std::string got;
  for (int i = 0; i < 500 && got.size() < 7; ++i) {
    char buf[16];
    const ssize_t n = ::read(engine_side.get(), buf, sizeof buf);
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(got, "1234567");
  nlohmann::json report;
  for (int i = 0; i < 500; ++i) {
    clock_.advance(std::chrono::milliseconds(10));  // runs the relay's posted report
    report = cluster_report(*c);
    if (report.value("bulk_transfers", 0) == 1) break;
  }
  EXPECT_EQ(report.value("bulk_transfers", 0), 1);
  EXPECT_EQ(report.value("bulk_bytes", 0), 7);

  // Engine 0 goes away before its body moved: its transfer is cancelled with its task, and
  // its ticket no longer joins anything. The client's end that still comes is closed as late,
  // not counted as a bad ticket; the same ticket again is one.
  e0->drop(unavailable("engine died"));
  clock_.advance(std::chrono::milliseconds(10));
  auto [late, late_side] = socket_pair();
  hub_->accept_data(std::move(late), {net::DataRole::kSender, ticket_of(tickets.segments[0])}, "client");
  EXPECT_TRUE(closed_by_hub(late_side.get()));
  report = cluster_report(*c);
  EXPECT_EQ(report.value("bulk_failed", 0), 1);
  EXPECT_EQ(report.value("bulk_refused", 0), 0);
  EXPECT_EQ(report.value("bulk_late", 0), 1);
  auto [again, again_side] = socket_pair();
  hub_->accept_data(std::move(again), {net::DataRole::kSender, ticket_of(tickets.segments[0])}, "client");
  EXPECT_EQ(cluster_report(*c).value("bulk_refused", 0), 1);

  // A bulk request whose sizes do not decode: a broken client, cut off.
  wire::Message broken = request(MessageKind::kPush, 8, {1}, "head");
  broken.segments.push_back(SharedBytes::copy_of(std::string_view("not sizes")));
  broken.envelope.set_sealed(true);
  broken.envelope.set_bulk(true);
  c->deliver(std::move(broken));
  EXPECT_EQ(e1->sent_of(MessageKind::kPush).size(), 1u);
  EXPECT_FALSE(c->is_open());
}

TEST_F(HubTest, ABulkTaskThatWaitsHereGetsItsTicketOnlyWhenItLeaves) {
  HubOptions options;
  options.scheduler.direct_window = 1;  // one direct task at the engine at a time
  start(options);
  auto e0 = join("engine:e0");
  auto c = join("client:alice");
  c->deliver(request(MessageKind::kExecute, 1, {0}, "long"));
  wire::Message bulk = request(MessageKind::kPush, 2, {0}, "head");
  bulk.segments.push_back(net::encode_transfer_sizes(std::vector<std::uint64_t>{5}));
  bulk.envelope.set_sealed(true);
  bulk.envelope.set_bulk(true);
  c->deliver(std::move(bulk));
  // Waiting here far past a ticket's deadline: no ticket exists yet, so none can expire.
  for (int i = 0; i < 60; ++i) {
    clock_.advance(std::chrono::seconds(2));
    wire::Message beat;
    beat.envelope.kind = MessageKind::kHeartbeat;
    e0->deliver(std::move(beat));
  }
  EXPECT_TRUE(c->sent_of(MessageKind::kBulkTicket).empty());
  EXPECT_TRUE(e0->sent_of(MessageKind::kPush).empty());
  const auto first = e0->sent_of(MessageKind::kExecute).at(0);
  e0->deliver(wire::task_reply(Outcome::kOk, {.task_id = first.envelope.task_id, .engine_id = 0}, {}, {}));
  auto tickets = c->sent_of(MessageKind::kBulkTicket);
  ASSERT_EQ(tickets.size(), 1u);
  auto pushes = e0->sent_of(MessageKind::kPush);
  ASSERT_EQ(pushes.size(), 1u);
  ASSERT_EQ(pushes[0].segments.size(), 3u);
  EXPECT_EQ(pushes[0].segments[2].to_string(), tickets[0].segments.at(0).to_string());
  EXPECT_EQ(tickets[0].envelope.task_id, pushes[0].envelope.task_id);
}

TEST_F(HubTest, OneClientCannotHoldMoreBulkTransfersThanItsShare) {
  HubOptions options;
  options.bulk_per_client = 1;
  start(options);
  auto e0 = join("engine:e0");
  auto e1 = join("engine:e1");
  auto alice = join("client:alice");
  auto bob = join("client:alice");  // another client (connection), the same owner
  auto bulk_push = [](std::uint64_t request_id, std::vector<std::uint32_t> targets) {
    wire::Message m = request(MessageKind::kPush, request_id, targets, "head");
    m.segments.pop_back();
    for (std::size_t i = 0; i < targets.size(); ++i) {
      m.segments.push_back(SharedBytes::copy_of(std::string_view("head")));
      m.segments.push_back(net::encode_transfer_sizes(std::vector<std::uint64_t>{5}));
    }
    m.envelope.set_sealed(true);
    m.envelope.set_bulk(true);
    return m;
  };
  // Alice's broadcast to two engines: the first task gets her one transfer, the second
  // ends aborted with the reason, and never reaches its engine.
  alice->deliver(bulk_push(1, {0, 1}));
  ASSERT_EQ(alice->sent_of(MessageKind::kBulkTicket).size(), 1u);
  EXPECT_EQ(e0->sent_of(MessageKind::kPush).size(), 1u);
  EXPECT_TRUE(e1->sent_of(MessageKind::kPush).empty());
  clock_.advance(std::chrono::milliseconds(10));  // the refused task ends once dispatch is done
  bool told = false;
  for (const auto& reply : alice->sent_of(MessageKind::kTaskReply)) {
    if (reply.envelope.engine_id == 1 && reply.envelope.text.find("the most one client may at once") != std::string::npos) {
      told = true;
    }
  }
  EXPECT_TRUE(told) << "the refused task's reply says why";
  // Another client is not held back by what this one holds.
  bob->deliver(bulk_push(2, {1}));
  EXPECT_EQ(bob->sent_of(MessageKind::kBulkTicket).size(), 1u);
  EXPECT_EQ(e1->sent_of(MessageKind::kPush).size(), 1u);
  // Once Alice's transfer is over (her engine went away: cancelled), she has room again.
  e0->drop(unavailable("engine died"));
  clock_.advance(std::chrono::milliseconds(10));
  alice->deliver(bulk_push(3, {1}));
  EXPECT_EQ(alice->sent_of(MessageKind::kBulkTicket).size(), 2u);
}

// Reads exactly `n` bytes from a nonblocking socket within a few seconds.
std::string read_exactly(int fd, std::size_t n) {
  std::string got;
  for (int i = 0; i < 500 && got.size() < n; ++i) {
    char buf[4096];
    const ssize_t r = ::read(fd, buf, std::min(sizeof buf, n - got.size()));
    if (r > 0) {
      got.append(buf, static_cast<std::size_t>(r));
      continue;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return got;
}

TEST_F(HubTest, ABulkResultGoesIntoTheStoreAndOutToItsClientAroundTheHub) {
  TaskStoreOptions store;
  store.inline_limit = 8;  // results above it live in files, as a bulk result must
  start(HubOptions{}, false, store);
  auto e0 = join("engine:e0");
  auto c = join("client:alice");
  c->deliver(request(MessageKind::kPull, 3, {0}, "names"));
  auto task = e0->sent_of(MessageKind::kPull).at(0);
  // The engine offers a sealed result in bulk: [seal header, transfer sizes].
  e2e::SealHeader header;
  header.part = e2e::Part::kReply;
  header.seq = 1;
  const SharedBytes sealed_header = e2e::encode_seal_header(header);
  wire::Message offer = wire::task_reply(Outcome::kOk, {.task_id = task.envelope.task_id, .engine_id = 0}, {},
                                         {sealed_header, net::encode_transfer_sizes(std::vector<std::uint64_t>{4, 6})});
  offer.envelope.set_bulk(true);
  e0->deliver(std::move(offer));
  auto answers = e0->sent_of(MessageKind::kBulkTicket);
  ASSERT_EQ(answers.size(), 1u);
  ASSERT_EQ(answers[0].segments.size(), 1u);  // a ticket, not "send it whole"
  EXPECT_EQ(answers[0].envelope.task_id, task.envelope.task_id);
  EXPECT_TRUE(c->sent_of(MessageKind::kTaskReply).empty());  // nothing until the bytes are in

  auto [engine_end, engine_side] = socket_pair();
  hub_->accept_data(std::move(engine_end), {net::DataRole::kSender, ticket_of(answers[0].segments[0])}, "engine");
  ASSERT_EQ(::write(engine_side.get(), "0123456789", 10), 10);
  std::vector<wire::Message> replies;
  for (int i = 0; i < 500 && replies.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    clock_.advance(std::chrono::milliseconds(10));  // the relay's and the spool's posted reports
    replies = c->sent_of(MessageKind::kTaskReply);
  }
  ASSERT_EQ(replies.size(), 1u);
  // Sealed and in a file: it goes to the client on a data connection too.
  const wire::Message& reply = replies[0];
  EXPECT_TRUE(reply.envelope.bulk());
  EXPECT_EQ(reply.envelope.outcome(), Outcome::kOk);
  ASSERT_EQ(reply.segments.size(), 3u);
  EXPECT_EQ(reply.segments[0].to_string(), sealed_header.to_string());
  auto sizes = net::decode_transfer_sizes(reply.segments[1].span(), 16, 1 << 20);
  ASSERT_TRUE(sizes.ok());
  EXPECT_EQ(*sizes, (std::vector<std::uint64_t>{4, 6}));
  auto [client_end, client_side] = socket_pair();
  hub_->accept_data(std::move(client_end), {net::DataRole::kReceiver, ticket_of(reply.segments[2])}, "client");
  EXPECT_EQ(read_exactly(client_side.get(), 10), "0123456789");
  nlohmann::json report;
  for (int i = 0; i < 500; ++i) {
    clock_.advance(std::chrono::milliseconds(10));
    report = cluster_report(*c);
    if (report.value("bulk_transfers", 0) == 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(report.value("bulk_transfers", 0), 2);
  EXPECT_EQ(hub_->tasks_completed(), 1u);

  // A malformed offer is answered "send it whole".
  c->deliver(request(MessageKind::kPull, 4, {0}, "names"));
  auto second = e0->sent_of(MessageKind::kPull).at(1);
  wire::Message bad = wire::task_reply(Outcome::kOk, {.task_id = second.envelope.task_id, .engine_id = 0}, {},
                                       {sealed_header});
  bad.envelope.set_bulk(true);
  e0->deliver(std::move(bad));
  answers = e0->sent_of(MessageKind::kBulkTicket);
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_TRUE(answers[1].segments.empty());
}

TEST_F(HubTest, ASealedLoadBalancedRequestGoesWholeToTheEngineThatRunsIt) {
  auto e0 = join("engine:e0");
  auto c = join("client:alice");
  wire::Message m = balanced(9);
  m.segments.push_back(SharedBytes::copy_of(std::string_view("ciphertext")));
  m.envelope.set_sealed(true);
  c->deliver(std::move(m));
  auto tasks = e0->sent_of(MessageKind::kApply);
  ASSERT_EQ(tasks.size(), 1u);
  EXPECT_TRUE(tasks[0].envelope.sealed());
  ASSERT_EQ(tasks[0].segments.size(), 2u);
  EXPECT_EQ(tasks[0].segments[1].to_string(), "ciphertext");
}

TEST_F(HubTest, ALoadBalancedBulkTaskGetsANewTicketEachTimeItLeaves) {
  auto e0 = join("engine:e0");
  auto c = join("client:alice");
  wire::TaskOptions options;
  options.retries = 1;
  wire::Message m = balanced(9, options);
  m.segments[0] = SharedBytes::copy_of(std::string_view("head"));  // [seal header, sizes]: one part
  m.segments.push_back(net::encode_transfer_sizes(std::vector<std::uint64_t>{6}));
  m.envelope.set_sealed(true);
  m.envelope.set_bulk(true);
  c->deliver(std::move(m));
  auto first = e0->sent_of(MessageKind::kApply);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_TRUE(first[0].envelope.bulk());
  ASSERT_EQ(first[0].segments.size(), 3u);
  auto tickets = c->sent_of(MessageKind::kBulkTicket);
  ASSERT_EQ(tickets.size(), 1u);
  EXPECT_EQ(tickets[0].envelope.engine_id, 0u);  // the engine the scheduler chose
  EXPECT_EQ(tickets[0].envelope.task_id, first[0].envelope.task_id);
  EXPECT_EQ(first[0].segments[2].to_string(), tickets[0].segments.at(0).to_string());

  // Its engine dies before the body moved: the retry leaves for engine 1 with a ticket of its
  // own, and the first one joins nothing any more.
  auto e1 = join("engine:e1");
  e0->drop(unavailable("engine died"));
  clock_.advance(std::chrono::milliseconds(10));
  auto second = e1->sent_of(MessageKind::kApply);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].envelope.task_id, first[0].envelope.task_id);
  tickets = c->sent_of(MessageKind::kBulkTicket);
  ASSERT_EQ(tickets.size(), 2u);
  EXPECT_EQ(tickets[1].envelope.engine_id, 1u);
  EXPECT_NE(tickets[1].segments.at(0).to_string(), tickets[0].segments.at(0).to_string());
  EXPECT_EQ(second[0].segments.at(2).to_string(), tickets[1].segments.at(0).to_string());
  auto [stale, stale_side] = socket_pair();
  hub_->accept_data(std::move(stale), {net::DataRole::kSender, ticket_of(tickets[0].segments[0])}, "client");
  EXPECT_TRUE(closed_by_hub(stale_side.get()));
  EXPECT_EQ(cluster_report(*c).value("bulk_late", 0), 1);
  EXPECT_EQ(cluster_report(*c).value("bulk_refused", 0), 0);

  // The second one moves the body to engine 1.
  auto [client_end, client_side] = socket_pair();
  auto [engine_end, engine_side] = socket_pair();
  hub_->accept_data(std::move(client_end), {net::DataRole::kSender, ticket_of(tickets[1].segments[0])}, "client");
  hub_->accept_data(std::move(engine_end), {net::DataRole::kReceiver, ticket_of(tickets[1].segments[0])}, "engine");
  ASSERT_EQ(::write(client_side.get(), "abcdef", 6), 6);
  EXPECT_EQ(read_exactly(engine_side.get(), 6), "abcdef");

  // A load-balanced bulk request with more than its one part: a broken client, cut off.
  wire::Message two = balanced(10);
  two.segments[0] = SharedBytes::copy_of(std::string_view("head"));
  two.segments.push_back(net::encode_transfer_sizes(std::vector<std::uint64_t>{6}));
  two.segments.push_back(SharedBytes::copy_of(std::string_view("head")));
  two.segments.push_back(net::encode_transfer_sizes(std::vector<std::uint64_t>{6}));
  two.envelope.set_sealed(true);
  two.envelope.set_bulk(true);
  c->deliver(std::move(two));
  EXPECT_FALSE(c->is_open());
  EXPECT_EQ(e1->sent_of(MessageKind::kApply).size(), 1u);
}

TEST_F(HubTest, ProtocolViolationsCutThePeerOff) {
  auto e0 = join("engine:e0");
  // T16/T17: an engine sending a client request.
  e0->deliver(request(MessageKind::kExecute, 1, {0}));
  EXPECT_FALSE(e0->is_open());
  ASSERT_EQ(e0->sent_of(MessageKind::kRejected).size(), 1u);
  // A malformed hello.
  auto stranger = join("nonsense");
  EXPECT_FALSE(stranger->is_open());
  EXPECT_EQ(stranger->sent_of(MessageKind::kWelcome).size(), 0u);
}

TEST_F(HubTest, APeerThatNeverSaysHelloIsCutOffAtTheDeadline) {
  auto silent = std::make_shared<FakeConnection>();
  hub_->accept(silent);
  clock_.advance(9s);
  EXPECT_TRUE(silent->is_open());
  clock_.advance(2s);
  EXPECT_FALSE(silent->is_open());
}

TEST_F(HubTest, TooManyUnadmittedConnectionsPushOutTheOldest) {
  HubOptions o;
  o.max_unauthenticated = 2;
  start(o);
  auto first = std::make_shared<FakeConnection>();
  auto second = std::make_shared<FakeConnection>();
  auto third = std::make_shared<FakeConnection>();
  hub_->accept(first);
  hub_->accept(second);
  hub_->accept(third);
  EXPECT_FALSE(first->is_open());
  EXPECT_TRUE(second->is_open());
  EXPECT_TRUE(third->is_open());
  // An admitted peer does not count.
  third->deliver(hello("client:alice"));
  auto fourth = std::make_shared<FakeConnection>();
  hub_->accept(fourth);
  EXPECT_TRUE(second->is_open());
  EXPECT_TRUE(fourth->is_open());
}

TEST_F(HubTest, AReconnectingEngineGetsItsIdBackAndItsNewConnectionReplacesAStaleOne) {
  auto e = join("engine:same");
  const std::uint32_t id = engine_id_of(*e);
  auto other = join("engine:other");
  auto c = join("client:alice");
  c->deliver(request(MessageKind::kExecute, 1, {id}));
  ASSERT_EQ(e->sent_of(MessageKind::kExecute).size(), 1u);
  // The same process redials while its old connection still looks open here (it stopped
  // hearing us): the new connection takes the id, the old one is closed and its task fails.
  auto again = join("engine:same");
  EXPECT_EQ(engine_id_of(*again), id);
  EXPECT_FALSE(e->is_open());
  EXPECT_TRUE(again->is_open());
  auto replies = c->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(status_of(replies[0]), Outcome::kEngineDied);
  clock_.run_due();
  // The id now routes to the new connection (the old one's close did not take it away).
  c->deliver(request(MessageKind::kExecute, 2, {id}));
  EXPECT_EQ(again->sent_of(MessageKind::kExecute).size(), 1u);
  again->drop();
  clock_.run_due();
  EXPECT_EQ(engine_id_of(*join("engine:same")), id);
  EXPECT_NE(engine_id_of(*other), id);
}

TEST_F(HubTest, EnginesKeepTheirIdsAcrossAResumedRestartAndNewOnesNeverTakeThem) {
  auto a = join("engine:a");
  auto b = join("engine:b");
  auto gone = join("engine:gone");
  ASSERT_EQ(engine_id_of(*a), 0u);
  ASSERT_EQ(engine_id_of(*b), 1u);
  ASSERT_EQ(engine_id_of(*gone), 2u);
  start(HubOptions{}, /*resume=*/true);  // the controller restarts with --reuse
  // A newcomer arrives first and the old engines come back in another order.
  EXPECT_EQ(engine_id_of(*join("engine:new")), 3u);
  EXPECT_EQ(engine_id_of(*join("engine:b")), 1u);
  EXPECT_EQ(engine_id_of(*join("engine:a")), 0u);
  auto c = join("client:alice");
  c->deliver(control(MessageKind::kClusterStatus, 1));
  auto status = c->sent_of(MessageKind::kClusterStatusReply);
  ASSERT_EQ(status.size(), 1u);
  auto j = nlohmann::json::parse(status[0].segments.at(0).view());
  EXPECT_EQ(j["resumed"], true);
  EXPECT_EQ(j["engines_back"], nlohmann::json::array({0, 1}));
  EXPECT_EQ(j["started_at"].get<std::string>().size(), 20u);  // 2024-05-01T12:00:00Z
  EXPECT_TRUE(j["trust"].is_string());
  EXPECT_EQ(j["logins"], nlohmann::json::array({"key"}));  // no login method configured here
  // The engine that did not come back: its id is not reused, and a request to it says it is gone.
  c->deliver(request(MessageKind::kExecute, 2, {2}));
  auto replies = c->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(status_of(replies[0]), Outcome::kNoSuchEngine);
  EXPECT_NE(replies[0].envelope.text.find("engine 2 is gone"), std::string::npos) << replies[0].envelope.text;
  c->deliver(control(MessageKind::kEngineList, 3));
  auto list = nlohmann::json::parse(c->sent_of(MessageKind::kEngineListReply).at(0).segments.at(0).view());
  EXPECT_EQ(list["engines"], nlohmann::json::array({0, 1, 3}));
  EXPECT_EQ(list["next_engine_id"], 4);
  // Without --reuse the cluster starts over.
  start(HubOptions{});
  EXPECT_EQ(engine_id_of(*join("engine:b")), 0u);
}

TEST_F(HubTest, ARequestToAnIdNeverGivenOutSaysSo) {
  auto c = join("client:alice");
  c->deliver(request(MessageKind::kExecute, 1, {7}));
  join("engine:e0");
  c->deliver(request(MessageKind::kExecute, 2, {7}));
  auto replies = c->sent_of(MessageKind::kTaskReply);
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[0].envelope.text, "no engine with id 7 (no engine has registered yet)");
  EXPECT_EQ(replies[1].envelope.text, "no engine with id 7 (this cluster has given out ids 0 to 0)");
}

TEST_F(HubTest, ShutdownStopsEnginesClosesEveryoneAndReportsStopped) {
  auto e0 = join("engine:e0");
  auto c = join("client:alice");
  c->deliver(balanced(1));
  c->deliver(balanced(2));
  c->deliver(balanced(3));  // beyond the engine's window: queued in the controller
  c->deliver(control(MessageKind::kClusterShutdown, 4));
  EXPECT_EQ(e0->sent_of(MessageKind::kEngineShutdown).size(), 1u);
  EXPECT_FALSE(e0->is_open());
  EXPECT_FALSE(c->is_open());
  // Tasks that never ran are answered: the client is not left waiting.
  bool shutting_down_reply = false;
  for (const auto& r : c->sent_of(MessageKind::kTaskReply)) {
    shutting_down_reply |= status_of(r) == Outcome::kShuttingDown;
  }
  EXPECT_TRUE(shutting_down_reply);
  EXPECT_EQ(c->sent_of(MessageKind::kClusterShutdownReply).size(), 1u);
  EXPECT_EQ(stopped_, 0);
  clock_.run_due();  // the closed peers are forgotten after their handlers return
  EXPECT_EQ(stopped_, 1);
  // No one new gets in.
  auto late = std::make_shared<FakeConnection>();
  hub_->accept(late);
  EXPECT_FALSE(late->is_open());
}

TEST_F(HubTest, WholeClusterShutdownNeedsAnUnrestrictedGrant) {
  auto e0 = join("engine:e0");
  auto bob = join("client:bob");
  bob->deliver(control(MessageKind::kClusterShutdown, 1));
  auto replies = bob->sent_of(MessageKind::kClusterShutdownReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(status_of(replies[0]), Outcome::kNotAllowed);
  EXPECT_TRUE(e0->is_open());
  EXPECT_EQ(stopped_, 0);
}

TEST_F(HubTest, LiveOutputGoesOnlyToTheClientOfTheRunningTask) {
  auto e0 = join("engine:e0");
  auto c = join("client:alice");
  c->deliver(request(MessageKind::kExecute, 11, {0}));
  auto task = e0->sent_of(MessageKind::kExecute).at(0);
  wire::Message out;
  out.envelope.kind = MessageKind::kTaskOutput;
  out.envelope.set_output_stream(wire::OutputStream::kStdout);
  out.envelope.task_id = task.envelope.task_id;
  out.segments.push_back(SharedBytes::copy_of("hello\n"));
  e0->deliver(out);
  auto chunks = c->sent_of(MessageKind::kTaskOutput);
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].envelope.request_id, 11u);
  // Output for a task the engine does not run is dropped.
  out.envelope.task_id += 100;
  e0->deliver(out);
  EXPECT_EQ(c->sent_of(MessageKind::kTaskOutput).size(), 1u);
}

TEST_F(HubTest, AMalformedResultQueryIsAnErrorAnswerNotADisconnection) {
  auto c = join("client:alice");
  wire::Message q = control(MessageKind::kDbQuery, 3);
  q.envelope.text = R"({"limit": "many"})";
  c->deliver(q);
  auto replies = c->sent_of(MessageKind::kDbQueryReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(status_of(replies[0]), Outcome::kInvalidRequest);
  EXPECT_NE(replies[0].envelope.text.find("limit"), std::string::npos);
  EXPECT_TRUE(c->is_open());
}

}  // namespace
}  // namespace testudo::controller
