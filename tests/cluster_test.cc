// End-to-end behaviour of a secure local cluster through the C++ client and the CLI.
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <thread>

#include "test_cluster.h"

namespace testudo::testing {
namespace {

using namespace std::chrono_literals;

std::vector<std::string> repr_values(const std::vector<EngineReply>& replies) {
  std::vector<std::string> out;
  for (const auto& r : replies) {
    EXPECT_TRUE(r.status.ok()) << "engine " << r.engine_id << ": " << r.status.to_string();
    EXPECT_EQ(r.value.size(), 1u);
    out.push_back(r.value.empty() ? "<none>" : r.value[0].to_string());
  }
  return out;
}

std::vector<EngineId> every_other(const std::vector<EngineId>& ids, std::size_t start) {
  std::vector<EngineId> out;
  for (std::size_t i = start; i < ids.size(); i += 2) out.push_back(ids[i]);
  return out;
}

// The example of ipyparallel's documentation: rc[::2].execute('c=a+b');
// rc[1::2].execute('c=a-b'); rc[:]['c'] -> [15, -5, 15, -5].
TEST(ClusterTest, ReferenceExampleThroughTheCppClient) {
  auto cluster = TestCluster::start(4);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  ASSERT_TRUE(client);
  auto ids = client->engine_ids();
  ASSERT_TRUE(ids.ok()) << ids.status().to_string();
  ASSERT_EQ(ids->size(), 4u);

  auto pushed = client->push_literals(*ids, {{"a", "5"}, {"b", "10"}}).get(30s);
  ASSERT_TRUE(pushed.ok());
  for (const auto& r : *pushed) EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  auto even = client->execute(every_other(*ids, 0), "c = a + b");
  auto odd = client->execute(every_other(*ids, 1), "c = a - b");
  ASSERT_TRUE(even.get(30s).ok());
  ASSERT_TRUE(odd.get(30s).ok());
  auto pulled = client->pull_repr(*ids, {"c"}).get(30s);
  ASSERT_TRUE(pulled.ok()) << pulled.status().to_string();
  EXPECT_EQ(repr_values(*pulled), (std::vector<std::string>{"15", "-5", "15", "-5"}));
}

TEST(ClusterTest, ReferenceExampleThroughTheCli) {
  auto cluster = TestCluster::start(4);
  ASSERT_TRUE(cluster);
  const std::string t = testudo_binary() + " --profile test ";
  EXPECT_EQ(run_command(t + "push a=5 b=10").first, 0);
  EXPECT_EQ(run_command(t + "exec --targets ::2 'c = a + b'").first, 0);
  EXPECT_EQ(run_command(t + "exec --targets 1::2 'c = a - b'").first, 0);
  auto [rc, out] = run_command(t + "pull c");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "[15, -5, 15, -5]\n");
  auto [src, status] = run_command(t + "status");
  EXPECT_EQ(src, 0) << status;
  EXPECT_NE(status.find("4 engine(s)"), std::string::npos) << status;
}

TEST(ClusterTest, RemoteErrorsAndOutputComeBackPerEngine) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto ids = client->engine_ids();
  ASSERT_TRUE(ids.ok());
  auto replies = client->execute(*ids, "import sys\nprint('out', __testudo_engine_id__)\nprint('err', file=sys.stderr)\n1/0")
                     .get(30s);
  ASSERT_TRUE(replies.ok());
  ASSERT_EQ(replies->size(), 2u);
  for (const auto& r : *replies) {
    EXPECT_EQ(r.status.code(), StatusCode::kAborted);
    ASSERT_TRUE(r.remote_error.has_value());
    EXPECT_EQ(r.remote_error->ename, "ZeroDivisionError");
    EXPECT_EQ(r.remote_error->evalue, "division by zero");
    EXPECT_NE(r.remote_error->traceback.find("1/0"), std::string::npos);
    EXPECT_EQ(r.stdout_text, "out " + std::to_string(r.engine_id) + "\n");
    EXPECT_EQ(r.stderr_text, "err\n");
    EXPECT_GT(r.completed_us, 0u);
    EXPECT_GE(r.completed_us, r.started_us);
  }
  // The CLI shows the traceback and fails.
  auto [rc, out] = run_command(testudo_binary() + " --profile test exec 'undefined_name'");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("NameError"), std::string::npos) << out;
}

TEST(ClusterTest, UnknownTargetIsAnErrorForThatTargetOnly) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto replies = client->execute({0, 77}, "x = 1").get(30s);
  ASSERT_TRUE(replies.ok());
  ASSERT_EQ(replies->size(), 2u);
  EXPECT_TRUE((*replies)[0].status.ok());
  EXPECT_EQ((*replies)[1].status.code(), StatusCode::kNotFound);
  EXPECT_EQ((*replies)[1].outcome, Outcome::kNoSuchEngine);
  EXPECT_NE((*replies)[1].status.message().find("77"), std::string::npos);
}

// Values bigger than a frame (1 MiB) are chunked; pickles with out-of-band buffers travel
// unchanged through the controller in both directions.
TEST(ClusterTest, LargePickledValuesRoundTrip) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  ASSERT_TRUE(client->execute({0}, "import numpy as np\nx = np.arange(3_000_000, dtype='float64')").get(60s).ok());
  auto pulled = client->pull_pickled({0}, {"x"}).get(60s);
  ASSERT_TRUE(pulled.ok());
  const EngineReply& r = (*pulled)[0];
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  ASSERT_GE(r.value.size(), 2u);             // the pickle plus an out-of-band buffer
  EXPECT_EQ(r.value[1].size(), 24'000'000u);  // the array's bytes, not copied into the pickle

  // Push a pickled dict produced by engine 0 to engine 1, unchanged.
  ASSERT_TRUE(client->execute({0}, "payload = {'z': x * 2}").get(60s).ok());
  auto payload = client->pull_pickled({0}, {"payload"}).get(60s);
  ASSERT_TRUE(payload.ok());
  ASSERT_TRUE((*payload)[0].status.ok());
  auto pushed = client->push_pickled({1}, (*payload)[0].value).get(60s);
  ASSERT_TRUE(pushed.ok());
  ASSERT_TRUE((*pushed)[0].status.ok()) << (*pushed)[0].status.to_string();
  auto sum = client->execute({1}, "total = float(z.sum())").get(60s);
  ASSERT_TRUE(sum.ok());
  ASSERT_TRUE((*sum)[0].status.ok()) << (*sum)[0].status.to_string();
  auto total = client->pull_repr({1}, {"total"}).get(60s);
  ASSERT_TRUE(total.ok());
  // 2 * sum(0..n-1) = n*(n-1)
  EXPECT_EQ(repr_values(*total), (std::vector<std::string>{"8999997000000.0"}));
}

// apply with a cloudpickled function, exactly as the Python client sends it. A function from
// the client's __main__ runs with the engine's namespace as its globals (as in ipyparallel),
// so it sees the engine's __testudo_engine_id__.
TEST(ClusterTest, ApplyRunsACloudpickledFunction) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  std::string payload = local_python(
      "import sys, cloudpickle; "
      "sys.stdout.buffer.write(cloudpickle.dumps((lambda x, y=1: (x * y, __testudo_engine_id__), (6,), {'y': 7}), protocol=5))");
  auto applied = client->apply({0}, {SharedBytes::copy_of(payload)}).get(30s);
  ASSERT_TRUE(applied.ok());
  const EngineReply& r = (*applied)[0];
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  ASSERT_EQ(r.value.size(), 1u);
  EXPECT_EQ(local_python("import sys, pickle; print(repr(pickle.loads(sys.stdin.buffer.read())))", r.value[0].to_string()),
            "(42, 0)\n");

  std::string failing = local_python(
      "import sys, cloudpickle; sys.stdout.buffer.write(cloudpickle.dumps((lambda: {}['k'], (), {}), protocol=5))");
  auto failed = client->apply({0}, {SharedBytes::copy_of(failing)}).get(30s);
  ASSERT_TRUE(failed.ok());
  ASSERT_TRUE((*failed)[0].remote_error.has_value());
  EXPECT_EQ((*failed)[0].remote_error->ename, "KeyError");

  // Garbage instead of a pickle is a remote error, and the engine lives on.
  auto garbage = client->apply({0}, {SharedBytes::copy_of("not a pickle")}).get(30s);
  ASSERT_TRUE(garbage.ok());
  EXPECT_EQ((*garbage)[0].status.code(), StatusCode::kAborted);
  EXPECT_TRUE(client->execute({0}, "alive = 1").get(30s).ok());
}

// docs/threat-model.md F1 (the part this layer owns): an engine killed mid-task fails that
// task with a clear error; the client never hangs; other engines keep working.
TEST(ClusterTest, EngineKilledMidTaskFailsTheTaskClearly) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto ids = client->engine_ids();
  ASSERT_TRUE(ids.ok());
  auto pid_reply = client->execute({0}, "import os\npid = os.getpid()").get(30s);
  ASSERT_TRUE(pid_reply.ok());
  auto pid_text = client->pull_repr({0}, {"pid"}).get(30s);
  ASSERT_TRUE(pid_text.ok());
  pid_t pid = std::stoi((*pid_text)[0].value[0].to_string());

  auto slow = client->execute({0, 1}, "import time\ntime.sleep(0.5 if __testudo_engine_id__ else 60)");
  std::this_thread::sleep_for(200ms);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  auto replies = slow.get(30s);
  ASSERT_TRUE(replies.ok()) << replies.status().to_string();
  EXPECT_EQ((*replies)[0].status.code(), StatusCode::kUnavailable);
  EXPECT_NE((*replies)[0].status.message().find("engine 0 died"), std::string::npos) << (*replies)[0].status.message();
  EXPECT_TRUE((*replies)[1].status.ok());
  auto after = client->engine_ids();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, std::vector<EngineId>{1});
}

// A request that runs longer than the heartbeat timeout does not get its engine declared dead.
TEST(ClusterTest, LongRequestDoesNotBlockHeartbeats) {
  auto cluster = TestCluster::start(1, {"--heartbeat-timeout", "1"});
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto replies = client->execute({0}, "import time\ntime.sleep(3)\ndone = True").get(30s);
  ASSERT_TRUE(replies.ok());
  EXPECT_TRUE((*replies)[0].status.ok()) << (*replies)[0].status.to_string();
  auto ids = client->engine_ids();
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->size(), 1u);
}

// The controller dies: a client waiting on a result gets an error, not a hang.
TEST(ClusterTest, ControllerLossFailsPendingResults) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto pending = client->execute({0}, "import time\ntime.sleep(30)");
  std::this_thread::sleep_for(200ms);
  ASSERT_EQ(::kill(cluster->processes().controller, SIGKILL), 0);
  auto replies = pending.get(20s);
  ASSERT_TRUE(replies.ok()) << replies.status().to_string();
  EXPECT_EQ((*replies)[0].status.code(), StatusCode::kUnavailable);
  EXPECT_FALSE(client->connected());
  auto later = client->execute({0}, "x = 1").get(5s);
  ASSERT_TRUE(later.ok());
  EXPECT_EQ((*later)[0].status.code(), StatusCode::kUnavailable);
}

// F5: an engine asked to exit while user code loops forever still exits (after a grace period),
// rather than waiting on the loop for good.
TEST(ClusterTest, EngineAskedToExitLeavesEvenWhenUserCodeNeverReturns) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  auto client = cluster->client();
  auto spinning = client->execute({0}, "while True:\n    pass");
  std::this_thread::sleep_for(300ms);
  auto stopped = client->shutdown_engines({0});
  ASSERT_TRUE(stopped.ok()) << stopped.status().to_string();
  EXPECT_EQ(*stopped, 1u);
  const pid_t engine = cluster->processes().engines.at(0);
  EXPECT_TRUE(wait_until([&] { return !launch::process_alive(engine); }, 15s))
      << "the engine is still running user code and never exited";
  auto replies = spinning.get(15s);
  ASSERT_TRUE(replies.ok());
  EXPECT_FALSE((*replies)[0].status.ok());
}

TEST(ClusterTest, ClusterStopEndsEveryProcess) {
  auto cluster = TestCluster::start(3);
  ASSERT_TRUE(cluster);
  auto [rc, out] = run_command(testudo_binary() + " --profile test cluster stop");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_FALSE(launch::process_alive(cluster->processes().controller));
  for (pid_t p : cluster->processes().engines) EXPECT_FALSE(launch::process_alive(p));
}

}  // namespace
}  // namespace testudo::testing
