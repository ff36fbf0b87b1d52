#include "controller/scheduler.h"

#include <gtest/gtest.h>

#include <deque>
#include <map>

namespace testudo::controller {
namespace {

using namespace std::chrono_literals;

struct Event {
  bool dispatched;
  TaskId id;
  EngineId engine;      // dispatch target
  TaskFailure failure;  // when !dispatched
  std::string text;
};

class RecordingSink : public SchedulerSink {
 public:
  void dispatch(EngineId engine, TaskId id, const TaskSpec&) override { events.push_back({true, id, engine, {}, ""}); }
  void fail(TaskId id, const TaskSpec&, TaskFailure why, const std::string& text) override {
    events.push_back({false, id, 0, why, text});
  }
  std::vector<Event> take() { return std::exchange(events, {}); }
  std::map<EngineId, int> per_engine(const std::vector<Event>& ev) {
    std::map<EngineId, int> out;
    for (const auto& e : ev) {
      if (e.dispatched) ++out[e.engine];
    }
    return out;
  }
  std::vector<Event> events;
};

TaskSpec balanced() { return TaskSpec{}; }
TaskSpec direct(EngineId engine) {
  TaskSpec t;
  t.engine = engine;
  return t;
}

class SchedulerTest : public ::testing::Test {
 protected:
  Scheduler make(SchedulerOptions o = {}) { return Scheduler(o, sink, 42); }
  RecordingSink sink;
  SteadyClock::time_point now = SteadyClock::now();
};

TEST_F(SchedulerTest, LeastLoadSpreadsWorkAndRespectsTheHighWaterMark) {
  SchedulerOptions o;
  o.hwm = 2;
  auto s = make(o);
  for (EngineId e : {0u, 1u, 2u}) s.add_engine(e);
  std::vector<TaskId> ids;
  for (int i = 0; i < 9; ++i) ids.push_back(s.submit(balanced(), now));
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 6u);  // 3 engines x hwm 2; 3 wait in the controller
  EXPECT_EQ(sink.per_engine(ev), (std::map<EngineId, int>{{0, 2}, {1, 2}, {2, 2}}));
  EXPECT_EQ(s.unassigned(), 3u);
  // A reply makes room on that engine, and the next queued task (FIFO) goes there.
  ASSERT_TRUE(s.finished(ev[0].id, ev[0].engine, true, now));
  auto next = sink.take();
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].engine, ev[0].engine);
  EXPECT_EQ(next[0].id, ids[6]);
}

TEST_F(SchedulerTest, EverySchemePlacesOnlyWhereAllowedAndWithRoom) {
  for (const char* name : {"leastload", "lru", "twobin", "weighted", "random"}) {
    SchedulerOptions o;
    o.scheme = *parse_scheme(name);
    o.hwm = 1;
    auto s = make(o);
    for (EngineId e : {0u, 1u, 2u, 3u}) s.add_engine(e);
    TaskSpec t = balanced();
    t.allowed = {1, 3};
    s.submit(t, now);
    s.submit(t, now);
    s.submit(t, now);  // both allowed engines are full: waits
    auto ev = sink.take();
    ASSERT_EQ(ev.size(), 2u) << name;
    EXPECT_EQ(sink.per_engine(ev), (std::map<EngineId, int>{{1, 1}, {3, 1}})) << name;
    EXPECT_EQ(s.unassigned(), 1u) << name;
  }
  EXPECT_FALSE(parse_scheme("fastest").has_value());
}

TEST_F(SchedulerTest, RestrictedTasksWaitingForAFullSetDoNotHoldUpOtherSets) {
  SchedulerOptions o;
  o.hwm = 1;
  auto s = make(o);
  for (EngineId e : {0u, 1u, 2u, 3u}) s.add_engine(e);
  TaskSpec pair = balanced();
  pair.allowed = {1, 3};
  for (int i = 0; i < 4; ++i) s.submit(pair, now);  // two run, two wait for 1 or 3
  TaskSpec zero = balanced();
  zero.allowed = {0};
  const TaskId on_zero = s.submit(zero, now);  // queued behind them, but 0 has room
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev.back().id, on_zero);
  EXPECT_EQ(ev.back().engine, 0u);
  EXPECT_EQ(s.unassigned(), 2u);
  // Room on 3 takes the first waiting {1, 3} task, in order.
  auto on_three = std::find_if(ev.begin(), ev.end(), [](const auto& e) { return e.engine == 3u; });
  ASSERT_NE(on_three, ev.end());
  ASSERT_TRUE(s.finished(on_three->id, 3, true, now));
  auto next = sink.take();
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].engine, 3u);
  EXPECT_EQ(s.unassigned(), 1u);
}

TEST_F(SchedulerTest, LruRotatesThroughEngines) {
  SchedulerOptions o;
  o.scheme = SchedulingScheme::kLru;
  o.hwm = 0;
  auto s = make(o);
  for (EngineId e : {0u, 1u, 2u}) s.add_engine(e);
  for (int i = 0; i < 6; ++i) s.submit(balanced(), now);
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 6u);
  std::vector<EngineId> order;
  for (auto& e : ev) order.push_back(e.engine);
  EXPECT_EQ(order, (std::vector<EngineId>{0, 1, 2, 0, 1, 2}));
}

TEST_F(SchedulerTest, DirectTasksGoToTheirEngineWithinTheWindow) {
  SchedulerOptions o;
  o.direct_window = 2;
  auto s = make(o);
  s.add_engine(5);
  TaskId a = s.submit(direct(5), now);
  s.submit(direct(5), now);
  TaskId c = s.submit(direct(5), now);
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(s.queue_status().at(5).queued, 1u);
  ASSERT_TRUE(s.finished(a, 5, true, now));
  ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, c);
  // An unknown engine fails at once.
  TaskId d = s.submit(direct(9), now);
  ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, d);
  EXPECT_EQ(ev[0].failure, TaskFailure::kNoSuchEngine);
}

TEST_F(SchedulerTest, RepliesFromTheWrongEngineAreRefused) {
  auto s = make();
  s.add_engine(0);
  s.add_engine(1);
  TaskId id = s.submit(direct(0), now);
  sink.take();
  EXPECT_FALSE(s.finished(id, 1, true, now));   // T8: engine 1 cannot answer engine 0's task
  EXPECT_TRUE(s.finished(id, 0, true, now));
  EXPECT_FALSE(s.finished(id, 0, true, now));   // nor can a reply arrive twice
}

TEST_F(SchedulerTest, EngineDeathRetriesBalancedTasksElsewhereAndFailsTheRest) {
  SchedulerOptions o;
  o.hwm = 1;
  auto s = make(o);
  s.add_engine(0);
  TaskSpec retried = balanced();
  retried.retries = 1;
  TaskId r = s.submit(retried, now);
  TaskId d = s.submit(direct(0), now);
  TaskId plain = s.submit(balanced(), now);  // waits: hwm 1
  sink.take();
  s.add_engine(1);
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, plain);
  EXPECT_EQ(ev[0].engine, 1u);

  EXPECT_EQ(s.remove_engine(0, "engine 0 died"), 2u);
  ev = sink.take();
  // The direct task fails; the retried one waits for room on engine 1 (busy with `plain`).
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, d);
  EXPECT_EQ(ev[0].failure, TaskFailure::kEngineDied);
  ASSERT_TRUE(s.finished(plain, 1, true, now));
  ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, r);
  EXPECT_EQ(ev[0].engine, 1u);
  // No retries left: the next death fails it.
  s.remove_engine(1, "engine 1 died");
  ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].failure, TaskFailure::kEngineDied);
}

TEST_F(SchedulerTest, AfterWaitsForSuccessAndFailsOnFailure) {
  auto s = make();
  s.add_engine(0);
  TaskId first = s.submit(balanced(), now);
  sink.take();
  TaskSpec later = balanced();
  later.after = {first};
  TaskId second = s.submit(later, now);
  EXPECT_TRUE(sink.take().empty());
  EXPECT_EQ(s.waiting(), 1u);
  ASSERT_TRUE(s.finished(first, 0, true, now));
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, second);

  TaskId failing = s.submit(balanced(), now);
  sink.take();
  TaskSpec dependent = balanced();
  dependent.after = {failing};
  TaskId doomed = s.submit(dependent, now);
  ASSERT_TRUE(s.finished(failing, 0, false, now));
  ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, doomed);
  EXPECT_EQ(ev[0].failure, TaskFailure::kDependencyFailed);
  // Depending on an already failed task fails at submission.
  TaskId immediate = s.submit(dependent, now);
  ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, immediate);
}

TEST_F(SchedulerTest, DependencyRulesAnyOneAndFailuresCount) {
  SchedulerOptions o;
  o.hwm = 0;
  auto s = make(o);
  s.add_engine(0);
  s.add_engine(1);
  TaskId a = s.submit(direct(0), now);
  TaskId b = s.submit(direct(1), now);
  sink.take();
  // all=False: the first one that succeeds is enough, and the task runs once only.
  TaskSpec any = balanced();
  any.after = {a, b};
  any.after_rule = {.all = false};
  TaskId any_id = s.submit(any, now);
  // failure=True: a failed dependency counts as met.
  TaskSpec either = balanced();
  either.after = {a};
  either.after_rule = {.all = true, .success = true, .failure = true};
  TaskId either_id = s.submit(either, now);
  // success=False: only a failure meets it, so a success makes it impossible.
  TaskSpec only_failure = balanced();
  only_failure.after = {b};
  only_failure.after_rule = {.all = true, .success = false, .failure = true};
  TaskId only_failure_id = s.submit(only_failure, now);
  EXPECT_TRUE(sink.take().empty());
  ASSERT_TRUE(s.finished(a, 0, false, now));
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);  // `any` waits for b (a failed, which does not count); `either` runs
  EXPECT_TRUE(ev[0].dispatched);
  EXPECT_EQ(ev[0].id, either_id);
  ASSERT_TRUE(s.finished(b, 1, true, now));
  ev = sink.take();
  ASSERT_EQ(ev.size(), 2u);
  for (const auto& e : ev) {
    if (e.id == any_id) EXPECT_TRUE(e.dispatched);
    if (e.id == only_failure_id) {
      EXPECT_FALSE(e.dispatched);
      EXPECT_EQ(e.failure, TaskFailure::kDependencyFailed);
      EXPECT_EQ(e.text, "dependency " + std::to_string(b) + " succeeded");
    }
  }
  // all=False is impossible only once every dependency is out.
  TaskSpec none = balanced();
  none.after = {a};
  none.after_rule = {.all = false};
  s.submit(none, now);
  ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].failure, TaskFailure::kDependencyFailed);
}

TEST_F(SchedulerTest, FollowAnyRunsWhereOneOfThemRan) {
  SchedulerOptions o;
  o.hwm = 0;
  auto s = make(o);
  for (EngineId e : {0u, 1u, 2u}) s.add_engine(e);
  TaskId on0 = s.submit(direct(0), now);
  TaskId on1 = s.submit(direct(1), now);
  sink.take();
  ASSERT_TRUE(s.finished(on0, 0, true, now));
  ASSERT_TRUE(s.finished(on1, 1, false, now));
  TaskSpec follow_all = balanced();
  follow_all.follow = {on0, on1};
  follow_all.follow_rule = {.all = true, .success = true, .failure = true};
  s.submit(follow_all, now);  // they ran on different engines
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].failure, TaskFailure::kDependencyFailed);
  for (int i = 0; i < 6; ++i) {
    TaskSpec follow_any = balanced();
    follow_any.follow = {on0, on1};
    follow_any.follow_rule = {.all = false, .success = true, .failure = true};
    s.submit(follow_any, now);
  }
  ev = sink.take();
  ASSERT_EQ(ev.size(), 6u);
  for (const auto& e : ev) {
    EXPECT_TRUE(e.dispatched);
    EXPECT_NE(e.engine, 2u);  // never where none of them ran
  }
}

TEST_F(SchedulerTest, FinishedOutcomesAreKeptForAtLeastTheLastIdsAndThenForgotten) {
  SchedulerOptions o;
  o.hwm = 0;
  o.finished_records = 5'000;
  auto s = make(o);
  s.add_engine(0);
  s.add_engine(1);
  // The first task runs long: it finishes after 20,000 younger ones.
  TaskId slow = s.submit(balanced(), now);
  std::map<TaskId, EngineId> where;
  for (int i = 0; i < 20'000; ++i) s.submit(balanced(), now);
  for (const auto& e : sink.take()) where[e.id] = e.engine;
  ASSERT_EQ(where.size(), 20'001u);
  for (const auto& [id, engine] : where) {
    if (id != slow) ASSERT_TRUE(s.finished(id, engine, id % 7 != 0, now));
  }
  ASSERT_TRUE(s.finished(slow, where[slow], true, now));  // too old to be kept by now
  const TaskId newest = slow + 20'000;
  auto submit_after = [&](TaskId dep, bool follow) {
    TaskSpec t = balanced();
    (follow ? t.follow : t.after) = {dep};
    s.submit(t, now);
    auto ev = sink.take();
    EXPECT_EQ(ev.size(), 1u);
    return ev.empty() ? Event{} : ev[0];
  };
  Event ok = submit_after(newest - 1, /*follow=*/true);  // (newest - 1) % 7 != 0 here
  ASSERT_NE((newest - 1) % 7, 0u);
  EXPECT_TRUE(ok.dispatched);
  EXPECT_EQ(ok.engine, where[newest - 1]);
  const TaskId failed = newest / 7 * 7;
  Event doomed = submit_after(failed, false);
  EXPECT_FALSE(doomed.dispatched);
  EXPECT_EQ(doomed.text, "dependency " + std::to_string(failed) + " failed");
  for (TaskId id : {newest - 4'000, newest - 4'999}) {  // within the window: known
    Event e = submit_after(id, false);
    EXPECT_EQ(e.dispatched, id % 7 != 0) << id;
  }
  Event forgotten = submit_after(slow + 1, false);
  EXPECT_FALSE(forgotten.dispatched);
  EXPECT_EQ(forgotten.text, "unknown dependency " + std::to_string(slow + 1));
  Event slow_one = submit_after(slow, false);
  EXPECT_FALSE(slow_one.dispatched);
  EXPECT_EQ(slow_one.text, "unknown dependency " + std::to_string(slow));
}

TEST_F(SchedulerTest, FollowRunsWhereTheFollowedTaskRan) {
  SchedulerOptions o;
  o.hwm = 0;
  auto s = make(o);
  for (EngineId e : {0u, 1u, 2u}) s.add_engine(e);
  s.submit(balanced(), now);
  TaskId leader = s.submit(balanced(), now);
  auto ev = sink.take();
  EngineId where = ev[1].engine;
  TaskSpec follower = balanced();
  follower.follow = {leader};
  s.submit(follower, now);
  s.submit(follower, now);
  EXPECT_TRUE(sink.take().empty());
  ASSERT_TRUE(s.finished(leader, where, true, now));
  ev = sink.take();
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].engine, where);
  EXPECT_EQ(ev[1].engine, where);
}

TEST_F(SchedulerTest, DependencyTimeoutFailsTheWaitingTask) {
  auto s = make();
  s.add_engine(0);
  TaskId slow = s.submit(balanced(), now);
  sink.take();
  TaskSpec t = balanced();
  t.after = {slow};
  t.timeout = 500ms;
  TaskId waiting = s.submit(t, now);
  s.expire(now + 100ms);
  EXPECT_TRUE(sink.take().empty());
  s.expire(now + 600ms);
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, waiting);
  EXPECT_EQ(ev[0].failure, TaskFailure::kDependencyTimeout);
}

TEST_F(SchedulerTest, AbortReachesQueuedTasksOfThatClientOnly) {
  SchedulerOptions o;
  o.hwm = 1;
  auto s = make(o);
  s.add_engine(0);
  TaskSpec mine = balanced();
  mine.client_id = 7;
  TaskSpec theirs = balanced();
  theirs.client_id = 8;
  TaskId running = s.submit(mine, now);
  TaskId queued = s.submit(mine, now);
  TaskId other = s.submit(theirs, now);
  sink.take();
  std::vector<std::pair<TaskId, EngineId>> sent;
  EXPECT_EQ(s.abort(7, {running, queued, other}, &sent), 1u);
  // The one sent to engine 0 is left to the engine (to drop if it has not started it).
  EXPECT_EQ(sent, (std::vector<std::pair<TaskId, EngineId>>{{running, 0}}));
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, queued);
  EXPECT_EQ(ev[0].failure, TaskFailure::kAborted);
  ASSERT_TRUE(s.finished(running, 0, true, now));
  ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, other);  // the aborted one is skipped
}

TEST_F(SchedulerTest, TasksNoEngineMayRunFail) {
  auto s = make();
  s.add_engine(0);
  TaskSpec t = balanced();
  t.allowed = {4};
  TaskId id = s.submit(t, now);
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, id);
  EXPECT_EQ(ev[0].failure, TaskFailure::kUnreachable);
}

TEST_F(SchedulerTest, BalancedTasksWaitForTheFirstEngine) {
  auto s = make();
  TaskId id = s.submit(balanced(), now);
  EXPECT_TRUE(sink.take().empty());
  s.add_engine(3);
  auto ev = sink.take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, id);
  EXPECT_EQ(ev[0].engine, 3u);
}

// Replies `count` of the oldest tasks running on `engine`, one every `gap`, advancing `now`.
// `running` holds the ids sent to the engine and not answered, oldest first.
void reply_every(Scheduler& s, RecordingSink& sink, std::deque<TaskId>& running, EngineId engine, int count,
                 std::chrono::microseconds gap, SteadyClock::time_point& now) {
  for (int i = 0; i < count && !running.empty(); ++i) {
    now += gap;
    ASSERT_TRUE(s.finished(running.front(), engine, true, now));
    running.pop_front();
    for (const auto& e : sink.take()) {
      if (e.dispatched) running.push_back(e.id);
    }
  }
}

TEST_F(SchedulerTest, AdaptiveWindowGrowsForShortTasksAndShrinksAtOnceForALongOne) {
  auto s = make();  // adaptive by default, budget 1 ms
  s.add_engine(0);
  std::deque<TaskId> running;
  for (int i = 0; i < 200; ++i) s.submit(balanced(), now);
  for (const auto& e : sink.take()) running.push_back(e.id);
  ASSERT_EQ(running.size(), kMinAdaptiveWindow);  // nothing measured yet
  EXPECT_EQ(s.queue_status().at(0).window, kMinAdaptiveWindow);

  // 20 µs tasks: 1 ms holds 50 of them, capped at the maximum.
  reply_every(s, sink, running, 0, 60, std::chrono::microseconds(20), now);
  EXPECT_EQ(running.size(), kMaxAdaptiveWindow);
  EXPECT_EQ(s.queue_status().at(0).window, kMaxAdaptiveWindow);

  // One task of 50 ms: the window drops to the minimum at once; nothing more is sent until
  // the engine holds fewer tasks than that, and then it is kept at the minimum.
  reply_every(s, sink, running, 0, 1, std::chrono::milliseconds(50), now);
  EXPECT_EQ(s.queue_status().at(0).window, kMinAdaptiveWindow);
  EXPECT_EQ(running.size(), kMaxAdaptiveWindow - 1);
  reply_every(s, sink, running, 0, static_cast<int>(kMaxAdaptiveWindow) - 3, std::chrono::milliseconds(5), now);
  EXPECT_EQ(running.size(), 2u);
  reply_every(s, sink, running, 0, 5, std::chrono::milliseconds(5), now);
  EXPECT_EQ(running.size(), kMinAdaptiveWindow);
  EXPECT_EQ(s.queue_status().at(0).window, kMinAdaptiveWindow);
}

TEST_F(SchedulerTest, AdaptiveWindowIgnoresGapsWhileTheEngineWasIdle) {
  auto s = make();
  s.add_engine(0);
  // One task at a time, answered quickly after arriving at an idle engine: the gaps between
  // replies are the client's think time, not the engine's, and must not widen the window.
  for (int i = 0; i < 10; ++i) {
    TaskId id = s.submit(balanced(), now);
    ASSERT_EQ(sink.take().size(), 1u);
    now += std::chrono::microseconds(10);
    ASSERT_TRUE(s.finished(id, 0, true, now));
    now += std::chrono::milliseconds(3);
  }
  EXPECT_EQ(s.queue_status().at(0).window, kMinAdaptiveWindow);
}

TEST_F(SchedulerTest, FixedLimitsIgnoreTaskTimes) {
  SchedulerOptions o;
  o.hwm = 2;
  o.direct_window = 3;
  auto s = make(o);
  s.add_engine(0);
  std::deque<TaskId> running;
  for (int i = 0; i < 100; ++i) s.submit(balanced(), now);
  for (const auto& e : sink.take()) running.push_back(e.id);
  reply_every(s, sink, running, 0, 40, std::chrono::microseconds(10), now);
  EXPECT_EQ(running.size(), 2u);
  EXPECT_EQ(s.queue_status().at(0).window, 2u);
  for (int i = 0; i < 10; ++i) s.submit(direct(0), now);
  EXPECT_EQ(sink.take().size(), 3u);
}

TEST_F(SchedulerTest, AdaptiveWindowAppliesToDirectTasks) {
  auto s = make();
  s.add_engine(0);
  std::deque<TaskId> running;
  for (int i = 0; i < 100; ++i) s.submit(direct(0), now);
  for (const auto& e : sink.take()) running.push_back(e.id);
  ASSERT_EQ(running.size(), kMinAdaptiveWindow);
  reply_every(s, sink, running, 0, 40, std::chrono::microseconds(100), now);  // 1 ms holds 10
  EXPECT_EQ(running.size(), 11u);
  EXPECT_EQ(s.queue_status().at(0).queued, 100u - 40u - 11u);
}

}  // namespace
}  // namespace testudo::controller
