// Scheduler: the controller's task table and its placement decisions. Pure logic — no
// sockets, no clock of its own, no randomness of its own — so every rule below is unit-tested
// with a fake sink (scheduler_test.cc).
//
// A task is one request for one engine: a direct request to N engines makes N tasks bound to
// those engines; a load-balanced request makes one task that the policy places.
//   waiting  -> its `after`/`follow` dependencies are not done yet (fails after `timeout`)
//   queued   -> ready; direct tasks wait in their engine's queue, load-balanced ones in the
//               unassigned queue, until an engine has room (outstanding < window / hwm;
//               see "Adaptive window" below)
//   running  -> sent to an engine; ends with the engine's reply, or with the engine's death
//               (load-balanced tasks with retries left are queued again, elsewhere)
//   done     -> a small record (success, engine) kept for later dependencies
//
// Adaptive window (the default for both limits): an engine is sent as many tasks ahead as it
// runs in `adaptive_budget` (1 ms), judged by the time between its replies while it had more
// work (an average over the last few), between 2 and 32. Tasks sent ahead hide the round trip
// to the engine behind work: trivial tasks fill the window and an engine never idles waiting
// for the next one; tasks of a millisecond or more keep ipyparallel-like strictness (2), so a
// long task holds back at most one other. What must hold: the window only grows from
// measured replies, and an engine with nothing measured gets the minimum.
//
// Threading: not thread-safe; the hub calls it on its loop thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "testudo/shared_bytes.h"
#include "wire/control.h"
#include "wire/message.h"

namespace testudo::controller {

using SteadyClock = std::chrono::steady_clock;
using TaskId = std::uint64_t;
using EngineId = std::uint32_t;

enum class SchedulingScheme { kLeastLoad, kLru, kTwoBin, kWeighted, kRandom };
// "leastload", "lru", "twobin", "weighted", "random" (ipyparallel's names).
std::optional<SchedulingScheme> parse_scheme(std::string_view name);
std::string_view scheme_name(SchedulingScheme scheme);

// hwm / direct_window value: adapt to each engine's task times (see the file comment).
inline constexpr std::uint32_t kAdaptiveWindow = std::numeric_limits<std::uint32_t>::max();
inline constexpr std::uint32_t kMinAdaptiveWindow = 2;
inline constexpr std::uint32_t kMaxAdaptiveWindow = 32;

struct SchedulerOptions {
  SchedulingScheme scheme = SchedulingScheme::kLeastLoad;
  // Load-balanced tasks an engine may hold at once (running + sent); 0 = no limit.
  std::uint32_t hwm = kAdaptiveWindow;
  // Direct tasks sent ahead to an engine (with 2: one running, one ready behind it); the
  // others wait in the controller, where abort reaches them.
  std::uint32_t direct_window = kAdaptiveWindow;
  // Adaptive windows: the engine time worth of tasks an engine is sent ahead.
  std::chrono::microseconds adaptive_budget{1000};
  // Outcomes of finished tasks kept for dependencies: at least those of the last this many
  // task ids (older ones are forgotten: a dependency on them is "unknown").
  std::size_t finished_records = 1'000'000;
};

// How a task failed without an engine's reply.
enum class TaskFailure {
  kEngineDied,             // its engine died or disconnected
  kNoSuchEngine,           // a direct target that is not registered
  kAborted,                // aborted while queued
  kDependencyFailed,       // an `after`/`follow` task failed (ImpossibleDependency)
  kDependencyTimeout,      // dependencies not met within `timeout`
  kUnreachable,            // no engine can ever satisfy the placement constraints
  kShuttingDown,
};

class StreamedRequest;  // streamed_request.h

struct TaskSpec {
  std::uint32_t client_id = 0;
  std::uint64_t request_id = 0;
  wire::MessageKind kind = wire::MessageKind::kApply;
  std::uint16_t flags = 0;
  std::vector<SharedBytes> body;
  std::optional<EngineId> engine;      // direct: this engine; load-balanced: unset
  std::vector<EngineId> allowed;       // load-balanced: only these engines (empty: any)
  std::uint32_t retries = 0;           // load-balanced: resubmissions after an engine death
  std::vector<TaskId> after;           // run only after these succeeded (as after_rule says)
  std::vector<TaskId> follow;          // run where these ran, after they succeeded (follow_rule)
  wire::DependencyRule after_rule;     // default: all of them, succeeded
  wire::DependencyRule follow_rule;
  std::optional<std::chrono::milliseconds> timeout;  // for dependencies to be met
  // A direct request relayed while it arrives (streamed_request.h): `body` is its first
  // segment only; dispatch starts the message on the engine's connection through this.
  std::shared_ptr<StreamedRequest> streamed;
  // A bulk request (wire/message.h): the bytes of its sealed body that travel on data
  // connections; dispatch issues their ticket. 0: not bulk.
  std::uint64_t bulk_bytes = 0;
};

// Where the scheduler's decisions go.
class SchedulerSink {
 public:
  virtual ~SchedulerSink() = default;
  virtual void dispatch(EngineId engine, TaskId id, const TaskSpec& task) = 0;
  virtual void fail(TaskId id, const TaskSpec& task, TaskFailure why, const std::string& text) = 0;
};

class Scheduler {
 public:
  Scheduler(SchedulerOptions options, SchedulerSink& sink, std::uint64_t random_seed);

  void add_engine(EngineId engine);
  // Fails or requeues what the engine held. Returns how many tasks were affected.
  std::size_t remove_engine(EngineId engine, const std::string& why);

  // The id the next submit() will give.
  TaskId next_id() const { return next_id_; }
  // Ids continue after `first` (a restarted controller continues the stored numbering).
  void set_next_id(TaskId first) { next_id_ = std::max(next_id_, first); }
  // Accepts a task; dispatches, queues or fails it at once. Returns its id.
  TaskId submit(TaskSpec task, SteadyClock::time_point now);
  // Whether a direct task for `engine` with no dependencies, submitted now, is dispatched
  // within submit() (the engine is registered, none of its direct tasks waits, it has room).
  bool sends_direct_now(EngineId engine) const;
  // The engine's reply for `id` arrived at `now`. Returns the task (for routing its reply), or
  // nothing if it is not running on that engine (a late or forged reply, to be ignored).
  std::optional<TaskSpec> finished(TaskId id, EngineId engine, bool success, SteadyClock::time_point now);
  // Aborts the queued or waiting tasks of `client_id` among `ids`. Those already sent to an
  // engine are left to it: `sent` gets (task, engine) for each, for the engine to drop if it
  // has not started it. Returns the number aborted here.
  std::size_t abort(std::uint32_t client_id, const std::vector<TaskId>& ids,
                    std::vector<std::pair<TaskId, EngineId>>* sent = nullptr);
  // Fails waiting tasks whose dependency timeout passed.
  void expire(SteadyClock::time_point now);
  // Fails everything still queued or waiting (controller shutdown).
  void fail_all(const std::string& why);

  // The earliest task sent to `engine` and not answered: the one it runs, or is about to.
  std::optional<TaskId> oldest_running(EngineId engine) const;
  // The task running on `engine` as `id`, or null.
  const TaskSpec* running_spec(TaskId id, EngineId engine) const;

  struct EngineLoad {
    std::size_t queued = 0;   // direct tasks waiting in the controller
    std::size_t running = 0;  // sent to the engine, not answered
    std::uint64_t completed = 0;
    std::uint32_t window = 0;  // load-balanced tasks it may hold now (hwm, or its adaptive window)
  };
  std::map<EngineId, EngineLoad> queue_status() const;
  std::size_t unassigned() const { return unassigned_.size() + restricted_.size(); }
  std::size_t waiting() const { return waiting_.size(); }
  std::size_t tasks() const { return tasks_.size(); }
  // Tasks of client `client_id` not finished (the hub bounds them per client: T20).
  std::size_t tasks_of(std::uint32_t client_id) const {
    auto it = client_tasks_.find(client_id);
    return it == client_tasks_.end() ? 0 : it->second;
  }
  const SchedulerOptions& options() const { return options_; }

 private:
  enum class State { kWaiting, kQueued, kRunning };
  struct Task {
    TaskSpec spec;
    State state = State::kWaiting;
    std::optional<EngineId> assigned;
    std::set<EngineId> excluded;   // engines that died running it
    SteadyClock::time_point deadline = SteadyClock::time_point::max();
  };
  struct Engine {
    std::deque<TaskId> direct;      // direct tasks waiting in the controller
    std::unordered_set<TaskId> running;
    std::size_t running_balanced = 0;
    std::uint64_t completed = 0;
    std::uint64_t last_assigned = 0;  // LRU clock value
    // Adaptive window: average time between replies that came while the engine held more
    // work (its time per task; 0: not measured yet), when the last reply came and whether
    // the engine held more work then.
    double service_us = 0;
    SteadyClock::time_point last_reply{};
    bool busy_at_last_reply = false;
    std::uint32_t window = kMinAdaptiveWindow;
    // Its entry in the placement index (see reindex), as last inserted.
    bool indexed = false;
    std::size_t indexed_load = 0;
    std::uint64_t indexed_lru = 0;
    std::size_t load() const { return running.size() + direct.size(); }
  };
  struct Record {
    bool success;
    EngineId engine;
  };
  // Outcomes of finished tasks by id, for dependencies: at least the last `capacity` ids (ids
  // are handed out in order). Slots live in blocks of 4,096, so a million finished tasks cost
  // ~8 MB in ~250 allocations and none per task: a small allocation per task (a map node)
  // lands between the transient buffers of a burst and pins their heap pages (150 MB kept
  // after a burst of 100,000 queued tasks, instead of ~40 MB).
  class FinishedRecords {
   public:
    explicit FinishedRecords(std::size_t capacity) : capacity_(capacity) {}
    void put(TaskId id, Record record);
    std::optional<Record> find(TaskId id) const;

   private:
    static constexpr TaskId kBlock = 4096;
    struct Slot {
      EngineId engine = 0;
      std::uint8_t state = 0;  // 0: no record, 1: succeeded, 2: failed
    };
    using Block = std::array<Slot, kBlock>;
    std::size_t capacity_;
    TaskId first_ = 0;  // the id of blocks_.front()[0], a multiple of kBlock
    std::deque<std::unique_ptr<Block>> blocks_;
  };

  void make_ready(TaskId id, Task& task);
  void forget_client_task(std::uint32_t client_id);  // one of tasks_ of this client ended
  void enqueue(TaskId id, Task& task);
  void pump();                       // sends whatever can be sent now
  void pump_engine(EngineId engine, Engine& e);
  bool balanced_room(const Engine& e) const;
  bool direct_room(const Engine& e) const;
  // Updates `e`'s adaptive window from a reply at `now`; `e.running` no longer holds it.
  void measure_reply(Engine& e, SteadyClock::time_point now);
  std::optional<EngineId> place(const Task& task);
  // Applies `scheme` to `candidates` (engines with room that may run the task, by id).
  EngineId pick(const std::vector<EngineId>& candidates);
  // Brings `engine`'s entries in the placement index and the direct backlog up to date; call
  // after any change to its load, room or LRU clock. O(log engines).
  void reindex(EngineId engine, Engine& e);
  void unindex(EngineId engine, Engine& e);
  bool placeable_somewhere(const Task& task) const;
  bool eligible(EngineId engine, const Task& task) const;
  void send(EngineId engine, Engine& e, TaskId id, Task& task);
  void complete(TaskId id, bool success, std::optional<EngineId> engine);
  void fail_task(TaskId id, TaskFailure why, const std::string& text);
  void remember(TaskId id, Record record);
  void resolve_dependents(TaskId id);
  enum class Dependencies { kMet, kWaiting, kUnreachable };
  // ipyparallel's Dependency.check / unreachable for one of a task's sets; `why` names a
  // task whose outcome makes it unreachable.
  Dependencies dependency_state(const std::vector<TaskId>& deps, const wire::DependencyRule& rule,
                                std::string& why) const;
  // Both sets: met (make it ready), still waiting, or failed (the task is failed here).
  Dependencies check_dependencies(TaskId id, Task& task);

  SchedulerOptions options_;
  SchedulerSink& sink_;
  std::mt19937_64 random_;
  TaskId next_id_ = 1;
  std::uint64_t lru_clock_ = 0;

  std::unordered_map<TaskId, Task> tasks_;  // not finished
  std::unordered_map<std::uint32_t, std::size_t> client_tasks_;  // of tasks_, per client id
  std::map<EngineId, Engine> engines_;
  // Placement index over the engines with room for a load-balanced task, so a decision costs
  // O(log engines) rather than a scan: by (load, LRU clock, id) for leastload, by (LRU clock,
  // id) for lru, and their ids in order for random and twobin (weighted still weighs each).
  std::set<std::tuple<std::size_t, std::uint64_t, EngineId>> by_load_;
  std::set<std::pair<std::uint64_t, EngineId>> by_lru_;
  std::vector<EngineId> with_room_;  // sorted
  std::set<EngineId> direct_backlog_;  // engines with direct tasks waiting in the controller
  std::deque<TaskId> unassigned_;           // load-balanced, any engine
  std::deque<TaskId> restricted_;           // load-balanced with allowed/follow/excluded constraints
  std::unordered_set<TaskId> waiting_;      // dependencies pending
  std::unordered_map<TaskId, std::vector<TaskId>> dependents_;
  FinishedRecords records_;
};

}  // namespace testudo::controller
