// Load balancing and the task lifecycle over real processes: the controller's scheduler
// (placement, high-water mark, retries after engine death, dependencies, abort) and engine
// interrupts, seen through the C++ client.
#include <nlohmann/json.hpp>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "test_cluster.h"

namespace testudo::testing {
namespace {

using namespace std::chrono_literals;

// The one reply of a load-balanced request.
EngineReply one_reply(const AsyncResult& r, std::chrono::milliseconds timeout = 30s) {
  auto replies = r.get(timeout);
  EXPECT_TRUE(replies.ok()) << replies.status().to_string();
  EXPECT_TRUE(!replies.ok() || replies->size() == 1u);
  if (replies.ok() && !replies->empty()) return (*replies)[0];
  EngineReply missing;
  missing.engine_id = kAnyEngine;
  missing.status = replies.ok() ? Status(StatusCode::kInternal, "no reply") : replies.status();
  return missing;
}

std::uint64_t task_id(const AsyncResult& r) {
  auto ids = r.task_ids(10s);
  EXPECT_TRUE(ids.ok()) << ids.status().to_string();
  if (!ids.ok() || ids->size() != 1) {
    ADD_FAILURE() << "expected one task id";
    return 0;
  }
  return (*ids)[0];
}

nlohmann::json queue_status(Client& client) {
  auto text = client.queue_status();
  EXPECT_TRUE(text.ok()) << text.status().to_string();
  return text.ok() ? nlohmann::json::parse(*text) : nlohmann::json::object();
}

pid_t engine_pid(Client& client, EngineId engine) {
  auto r = client.execute({engine}, "import os\n__pid = os.getpid()").get(30s);
  EXPECT_TRUE(r.ok() && (*r)[0].status.ok());
  auto text = client.pull_repr({engine}, {"__pid"}).get(30s);
  EXPECT_TRUE(text.ok() && (*text)[0].status.ok() && (*text)[0].value.size() == 1);
  if (!text.ok() || (*text)[0].value.empty()) return -1;
  return std::stoi((*text)[0].value[0].to_string());
}

// Least-load spreads independent tasks over every engine, and each reply's engine_id names
// the engine that really ran it (the engine's own id, printed by the task, agrees).
TEST(SchedulingTest, BalancedTasksSpreadOverEveryEngine) {
  auto cluster = TestCluster::start(4);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto ids = client->engine_ids();
  ASSERT_TRUE(ids.ok());
  ASSERT_EQ(ids->size(), 4u);

  std::vector<AsyncResult> results;
  for (int i = 0; i < 16; ++i) {
    results.push_back(client->execute_balanced({}, "import time\ntime.sleep(0.2)\nprint(__testudo_engine_id__)"));
  }
  std::map<EngineId, int> per_engine;
  for (auto& r : results) {
    EngineReply reply = one_reply(r);
    ASSERT_TRUE(reply.status.ok()) << reply.status.to_string();
    ASSERT_NE(reply.engine_id, kAnyEngine);
    EXPECT_EQ(reply.stdout_text, std::to_string(reply.engine_id) + "\n");
    ++per_engine[reply.engine_id];
  }
  EXPECT_EQ(per_engine.size(), 4u);
  // Least-load with equal work: an even share each.
  for (const auto& [engine, n] : per_engine) EXPECT_EQ(n, 4) << "engine " << engine;

  // `allowed` restricts placement.
  std::set<EngineId> used;
  std::vector<AsyncResult> restricted;
  for (int i = 0; i < 8; ++i) restricted.push_back(client->execute_balanced({1, 3}, "x = 1"));
  for (auto& r : restricted) {
    EngineReply reply = one_reply(r);
    EXPECT_TRUE(reply.status.ok()) << reply.status.to_string();
    used.insert(reply.engine_id);
  }
  EXPECT_EQ(used, (std::set<EngineId>{1, 3}));
}

// While every engine is busy with long tasks, no engine holds more than its window (the
// adaptive default: 2 for tasks this long) of balanced tasks; the rest wait unassigned in
// the controller.
TEST(SchedulingTest, HighWaterMarkBoundsTasksPerEngine) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  std::vector<AsyncResult> results;
  for (int i = 0; i < 8; ++i) results.push_back(client->execute_balanced({}, "import time\ntime.sleep(1)"));
  for (auto& r : results) task_id(r);  // every request acknowledged, so all are in the scheduler

  nlohmann::json status = queue_status(*client);
  ASSERT_TRUE(status.contains("engines")) << status.dump();
  EXPECT_EQ(status["hwm"], "auto") << status.dump();
  EXPECT_EQ(status["scheme"], "leastload") << status.dump();
  ASSERT_EQ(status["engines"].size(), 2u) << status.dump();
  for (const auto& [engine, load] : status["engines"].items()) {
    EXPECT_EQ(load["tasks"], 2) << "engine " << engine << ": " << status.dump();
    EXPECT_EQ(load["window"], 2) << status.dump();
    EXPECT_EQ(load["queue"], 0) << status.dump();
  }
  EXPECT_EQ(status["unassigned"], 4) << status.dump();
  EXPECT_EQ(status["waiting"], 0) << status.dump();

  // Sampled again while the work drains: never above the mark.
  std::size_t finished = 0;
  while (finished < results.size()) {
    nlohmann::json s = queue_status(*client);
    for (const auto& [engine, load] : s["engines"].items()) {
      EXPECT_LE(load["tasks"].get<int>(), 2) << s.dump();
    }
    finished = 0;
    for (auto& r : results) finished += r.ready() ? 1 : 0;
    std::this_thread::sleep_for(50ms);
  }
  for (auto& r : results) EXPECT_TRUE(one_reply(r).status.ok());
  nlohmann::json done = queue_status(*client);
  int completed = 0;
  for (const auto& [engine, load] : done["engines"].items()) {
    EXPECT_EQ(load["tasks"], 0) << done.dump();
    completed += load["completed"].get<int>();
  }
  // A sealing client (the default) paired with both engines first: one sealed empty pull each.
  const int pairing = client->sealing().on ? 2 : 0;
  EXPECT_EQ(completed, 8 + pairing) << done.dump();
  EXPECT_EQ(done["unassigned"], 0) << done.dump();
}

// A balanced task whose engine is SIGKILLed mid-task: with retries=1 it runs again on the
// other engine and succeeds; with retries=0 it fails kUnavailable naming the dead engine.
TEST(SchedulingTest, EngineDeathRetriesOrFailsTheTask) {
  auto cluster = TestCluster::start(3);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  std::map<EngineId, pid_t> pids;
  for (EngineId e : {0u, 1u, 2u}) pids[e] = engine_pid(*client, e);

  TaskOptions retry;
  retry.retries = 1;
  // Sleeps only on its first attempt (a marker file says whether one began), so the retry
  // finishes quickly.
  const std::string marker = cluster->home() + "/first-attempt";
  auto retried = client->execute_balanced(
      {0, 1},
      "import os, time\nif not os.path.exists(" + nlohmann::json(marker).dump() +
          "):\n    open(" + nlohmann::json(marker).dump() +
          ", 'w').close()\n    time.sleep(60)\nprint('ran on', __testudo_engine_id__)",
      retry);
  task_id(retried);
  // Where did the first attempt go?
  std::optional<EngineId> first;
  for (int i = 0; i < 100 && !first; ++i) {
    nlohmann::json s = queue_status(*client);
    for (EngineId e : {0u, 1u}) {
      if (s["engines"][std::to_string(e)]["tasks"] == 1) first = e;
    }
    if (!first) std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(first.has_value());
  const EngineId other = *first == 0 ? 1 : 0;
  for (int i = 0; i < 100 && ::access(marker.c_str(), F_OK) != 0; ++i) std::this_thread::sleep_for(50ms);
  ASSERT_EQ(::kill(pids[*first], SIGKILL), 0);
  EngineReply r1 = one_reply(retried);
  EXPECT_TRUE(r1.status.ok()) << r1.status.to_string();
  EXPECT_EQ(r1.engine_id, other);
  EXPECT_EQ(r1.stdout_text, "ran on " + std::to_string(other) + "\n");

  auto once = client->execute_balanced({2}, "import time\ntime.sleep(60)");
  task_id(once);
  std::this_thread::sleep_for(500ms);
  ASSERT_EQ(::kill(pids[2], SIGKILL), 0);
  EngineReply r2 = one_reply(once);
  EXPECT_EQ(r2.status.code(), StatusCode::kUnavailable) << r2.status.to_string();
  EXPECT_EQ(r2.outcome, Outcome::kEngineDied);
  EXPECT_NE(r2.status.message().find("engine 2 died"), std::string::npos) << r2.status.message();

  // Retries left but nowhere else to go: the only allowed engine dies.
  auto nowhere = client->execute_balanced({other}, "import time\ntime.sleep(60)", retry);
  task_id(nowhere);
  std::this_thread::sleep_for(500ms);
  ASSERT_EQ(::kill(pids[other], SIGKILL), 0);
  EngineReply r3 = one_reply(nowhere);
  EXPECT_EQ(r3.status.code(), StatusCode::kUnavailable) << r3.status.to_string();
  EXPECT_NE(r3.status.message().find("engine " + std::to_string(other) + " died"), std::string::npos)
      << r3.status.message();
}

// Direct tasks behind a busy engine can be aborted: the running one completes; those queued in
// the controller fail kCancelled, and so does the one already sent ahead (the direct window of
// 2), which the engine drops unstarted.
TEST(SchedulingTest, AbortCancelsDirectTasksThatHaveNotStarted) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto running = client->execute({0}, "import time\ntime.sleep(1.5)\nfirst = 1");
  auto sent_ahead = client->execute({0}, "second = 2");
  auto queued1 = client->execute({0}, "third = 3");
  auto queued2 = client->execute({0}, "fourth = 4");
  std::vector<std::uint64_t> ids = {task_id(running), task_id(sent_ahead), task_id(queued1), task_id(queued2)};
  std::this_thread::sleep_for(300ms);
  nlohmann::json before = queue_status(*client);
  EXPECT_EQ(before["engines"]["0"]["queue"], 2) << before.dump();
  EXPECT_EQ(before["engines"]["0"]["tasks"], 2) << before.dump();

  auto aborted = client->abort(ids);
  ASSERT_TRUE(aborted.ok()) << aborted.status().to_string();
  EXPECT_EQ(*aborted, 2u);  // in the controller; the engine answers for the one it holds
  EXPECT_TRUE(one_reply(running).status.ok());
  for (auto* r : {&sent_ahead, &queued1, &queued2}) {
    EngineReply reply = one_reply(*r);
    EXPECT_EQ(reply.status.code(), StatusCode::kCancelled) << reply.status.to_string();
    EXPECT_EQ(reply.outcome, Outcome::kAborted);
    EXPECT_EQ(reply.engine_id, 0u);
    EXPECT_EQ(reply.started_us, 0u);
  }
  // The aborted code never ran there.
  auto names = client->execute({0}, "print(sorted(n for n in ('first', 'second', 'third', 'fourth') if n in globals()))")
                   .get(30s);
  ASSERT_TRUE(names.ok());
  EXPECT_EQ((*names)[0].stdout_text, "['first']\n");
  // Aborting finished tasks again does nothing.
  auto again = client->abort(ids);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 0u);
}

// Balanced tasks not started can be aborted too, unassigned or sent ahead to the engine;
// another client cannot abort them.
TEST(SchedulingTest, AbortCancelsUnassignedBalancedTasksOfItsOwnClientOnly) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto other = cluster->client();
  std::vector<AsyncResult> results;
  for (int i = 0; i < 4; ++i) results.push_back(client->execute_balanced({}, "import time\ntime.sleep(0.8)"));
  std::vector<std::uint64_t> ids;
  for (auto& r : results) ids.push_back(task_id(r));
  auto foreign = other->abort(ids);
  ASSERT_TRUE(foreign.ok());
  EXPECT_EQ(*foreign, 0u);
  std::this_thread::sleep_for(300ms);  // the first has started: abort leaves it alone
  auto aborted = client->abort(ids);
  ASSERT_TRUE(aborted.ok());
  EXPECT_EQ(*aborted, 2u);  // two are on the engine (hwm 2), two wait unassigned
  EXPECT_TRUE(one_reply(results[0]).status.ok());  // running: it goes on
  for (int i : {1, 2, 3}) {
    EngineReply reply = one_reply(results[i]);
    EXPECT_EQ(reply.status.code(), StatusCode::kCancelled) << reply.status.to_string();
    EXPECT_EQ(reply.outcome, Outcome::kAborted);
    EXPECT_EQ(reply.engine_id, i == 1 ? 0u : kAnyEngine);  // the second was dropped by its engine
  }
}

// Interrupting a spinning task raises KeyboardInterrupt in it within seconds; the engine
// keeps answering, and the task queued behind the spinning one runs normally.
TEST(SchedulingTest, InterruptStopsOnlyTheRunningTask) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto spinning = client->execute({1}, "while True: pass");
  auto behind = client->execute({1}, "import time\ntime.sleep(0.5)\nbehind = 'done'");
  task_id(spinning);
  task_id(behind);
  std::this_thread::sleep_for(500ms);
  EXPECT_FALSE(spinning.ready());
  auto t0 = std::chrono::steady_clock::now();
  auto reached = client->interrupt({1});
  ASSERT_TRUE(reached.ok()) << reached.status().to_string();
  EXPECT_EQ(*reached, 1u);
  auto replies = spinning.get(10s);
  ASSERT_TRUE(replies.ok()) << replies.status().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  const EngineReply& r = (*replies)[0];
  EXPECT_EQ(r.status.code(), StatusCode::kAborted) << r.status.to_string();
  ASSERT_TRUE(r.remote_error.has_value());
  EXPECT_EQ(r.remote_error->ename, "KeyboardInterrupt");

  EngineReply b = one_reply(behind);
  EXPECT_TRUE(b.status.ok()) << b.status.to_string() << (b.remote_error ? b.remote_error->ename : "");
  auto value = client->pull_repr({1}, {"behind"}).get(30s);
  ASSERT_TRUE(value.ok());
  ASSERT_TRUE((*value)[0].status.ok()) << (*value)[0].status.to_string();
  EXPECT_EQ((*value)[0].value[0].to_string(), "'done'");

  // Interrupting an idle engine is harmless: its next task is not hit.
  ASSERT_TRUE(client->interrupt({0}).ok());
  std::this_thread::sleep_for(300ms);
  auto later = client->execute({0}, "import time\ntime.sleep(0.3)\nok = 1").get(30s);
  ASSERT_TRUE(later.ok());
  EXPECT_TRUE((*later)[0].status.ok()) << (*later)[0].status.to_string();
}

TEST(SchedulingTest, AfterWaitsForItsDependency) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto a = client->execute_balanced({}, "import time\ntime.sleep(1)");
  TaskOptions opts;
  opts.after = {task_id(a)};
  auto b = client->execute_balanced({}, "x = 1", opts);
  task_id(b);
  nlohmann::json status = queue_status(*client);
  EXPECT_EQ(status["waiting"], 1) << status.dump();
  EngineReply ra = one_reply(a);
  EngineReply rb = one_reply(b);
  ASSERT_TRUE(ra.status.ok()) << ra.status.to_string();
  ASSERT_TRUE(rb.status.ok()) << rb.status.to_string();
  EXPECT_GE(ra.completed_us - ra.started_us, 900'000u);
  EXPECT_GE(rb.started_us, ra.completed_us);
}

TEST(SchedulingTest, FailedDependencyFailsTheDependent) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto a = client->execute_balanced({}, "import time\ntime.sleep(0.3)\n1/0");
  TaskOptions opts;
  opts.after = {task_id(a)};
  auto b = client->execute_balanced({}, "never = 1", opts);  // waits, then fails
  EngineReply ra = one_reply(a);
  EXPECT_EQ(ra.status.code(), StatusCode::kAborted);
  EXPECT_EQ(ra.outcome, Outcome::kPythonError);
  ASSERT_TRUE(ra.remote_error.has_value());
  EXPECT_EQ(ra.remote_error->ename, "ZeroDivisionError");
  EngineReply rb = one_reply(b);
  EXPECT_EQ(rb.status.code(), StatusCode::kFailedPrecondition) << rb.status.to_string();
  EXPECT_EQ(rb.outcome, Outcome::kDependencyFailed);
  EXPECT_NE(rb.status.message().find("dependency " + std::to_string(task_id(a)) + " failed"), std::string::npos)
      << rb.status.message();
  EXPECT_EQ(rb.started_us, 0u);
  // Submitted after the failure is known: fails at once.
  auto c = client->execute_balanced({}, "never = 1", opts);
  EXPECT_EQ(one_reply(c, 5s).status.code(), StatusCode::kFailedPrecondition);
  // An unknown task id is an impossible dependency too.
  TaskOptions unknown;
  unknown.after = {999'999};
  auto d = client->execute_balanced({}, "never = 1", unknown);
  EngineReply rd = one_reply(d, 5s);
  EXPECT_EQ(rd.status.code(), StatusCode::kFailedPrecondition) << rd.status.to_string();
  EXPECT_NE(rd.status.message().find("999999"), std::string::npos) << rd.status.message();
  auto never = client->execute({0, 1}, "print('never' in globals())").get(30s);
  ASSERT_TRUE(never.ok());
  for (const auto& r : *never) EXPECT_EQ(r.stdout_text, "False\n");
}

TEST(SchedulingTest, DependencyTimeoutFailsWithDeadlineExceeded) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto a = client->execute_balanced({}, "import time\ntime.sleep(3)");
  TaskOptions opts;
  opts.after = {task_id(a)};
  opts.timeout = 500ms;
  auto t0 = std::chrono::steady_clock::now();
  auto b = client->execute_balanced({}, "x = 1", opts);
  EngineReply rb = one_reply(b, 10s);
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(rb.status.code(), StatusCode::kDeadlineExceeded) << rb.status.to_string();
  EXPECT_EQ(rb.outcome, Outcome::kDependencyTimeout);
  EXPECT_GE(took, 450ms);
  EXPECT_LT(took, 2s);
  EXPECT_FALSE(a.ready());  // the dependency itself goes on
  EXPECT_TRUE(one_reply(a).status.ok());
  // A timeout with dependencies that finish in time does not fire.
  auto c = client->execute_balanced({}, "import time\ntime.sleep(0.2)");
  TaskOptions in_time;
  in_time.after = {task_id(c)};
  in_time.timeout = 5s;
  EXPECT_TRUE(one_reply(client->execute_balanced({}, "y = 1", in_time)).status.ok());
}

TEST(SchedulingTest, FollowRunsWhereTheDependencyRan) {
  auto cluster = TestCluster::start(4);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  for (int round = 0; round < 3; ++round) {
    auto a = client->execute_balanced({}, "import time\ntime.sleep(0.2)\nfollowed = __testudo_engine_id__");
    TaskOptions opts;
    opts.follow = {task_id(a)};
    std::vector<AsyncResult> followers;
    for (int i = 0; i < 4; ++i) followers.push_back(client->execute_balanced({}, "print(followed)", opts));
    EngineReply ra = one_reply(a);
    ASSERT_TRUE(ra.status.ok()) << ra.status.to_string();
    for (auto& f : followers) {
      EngineReply rf = one_reply(f);
      ASSERT_TRUE(rf.status.ok()) << rf.status.to_string();
      EXPECT_EQ(rf.engine_id, ra.engine_id);
      EXPECT_EQ(rf.stdout_text, std::to_string(ra.engine_id) + "\n");
      EXPECT_GE(rf.started_us, ra.completed_us);
    }
  }
}

// 1,000 trivial cloudpickled applies, load-balanced: every one succeeds, on every engine.
// Also: acknowledgements (task ids) wait briefly to travel with the reply (controller/hub.h),
// but never arrive after it: once a reply is in, its ids are known without waiting.
TEST(SchedulingTest, BurstOfAThousandBalancedAppliesAllComplete) {
  auto cluster = TestCluster::start(4);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  std::string payload = local_python(
      "import sys, cloudpickle; "
      "sys.stdout.buffer.write(cloudpickle.dumps((lambda x: x + 1, (41,), {}), protocol=5))");
  SharedBytes body = SharedBytes::copy_of(payload);
  std::vector<AsyncResult> results;
  results.reserve(1000);
  for (int i = 0; i < 1000; ++i) results.push_back(client->apply_balanced({}, {body}));
  int successes = 0;
  std::map<EngineId, int> per_engine;
  std::set<std::string> values;
  std::set<std::uint64_t> ids;
  for (auto& r : results) {
    auto replies = r.get(120s);
    ASSERT_TRUE(replies.ok()) << replies.status().to_string();
    ASSERT_EQ(replies->size(), 1u);
    auto task_ids = r.task_ids(0ms);
    ASSERT_TRUE(task_ids.ok()) << task_ids.status().to_string();
    ASSERT_EQ(task_ids->size(), 1u);
    ids.insert((*task_ids)[0]);
    const EngineReply& reply = (*replies)[0];
    if (reply.status.ok()) {
      ++successes;
      ++per_engine[reply.engine_id];
      if (reply.value.size() == 1) values.insert(reply.value[0].to_string());
    } else {
      ADD_FAILURE() << reply.status.to_string();
    }
  }
  EXPECT_EQ(successes, 1000);
  EXPECT_EQ(ids.size(), 1000u);
  EXPECT_EQ(per_engine.size(), 4u);
  ASSERT_EQ(values.size(), 1u);
  EXPECT_EQ(local_python("import sys, pickle; print(pickle.loads(sys.stdin.buffer.read()))", *values.begin()), "42\n");
  nlohmann::json status = queue_status(*client);
  int completed = 0;
  for (const auto& [engine, load] : status["engines"].items()) completed += load["completed"].get<int>();
  // A sealing client (the default) paired with the four engines first: one sealed empty pull each.
  const int pairing = client->sealing().on ? 4 : 0;
  EXPECT_EQ(completed, 1000 + pairing) << status.dump();
  for (int i = 0; i < 50; ++i) {  // direct requests to every engine: four ids each
    auto r = client->execute({0, 1, 2, 3}, "pass");
    ASSERT_TRUE(r.get(30s).ok());
    auto task_ids = r.task_ids(0ms);
    ASSERT_TRUE(task_ids.ok()) << task_ids.status().to_string();
    EXPECT_EQ(task_ids->size(), 4u);
  }
}

}  // namespace
}  // namespace testudo::testing
