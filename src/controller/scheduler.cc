#include "controller/scheduler.h"

#include <algorithm>
#include <set>
#include <cmath>
#include <limits>

namespace testudo::controller {

std::optional<SchedulingScheme> parse_scheme(std::string_view name) {
  if (name == "leastload") return SchedulingScheme::kLeastLoad;
  if (name == "lru") return SchedulingScheme::kLru;
  if (name == "twobin") return SchedulingScheme::kTwoBin;
  if (name == "weighted") return SchedulingScheme::kWeighted;
  if (name == "random") return SchedulingScheme::kRandom;
  return std::nullopt;
}

std::string_view scheme_name(SchedulingScheme scheme) {
  switch (scheme) {
    case SchedulingScheme::kLeastLoad: return "leastload";
    case SchedulingScheme::kLru: return "lru";
    case SchedulingScheme::kTwoBin: return "twobin";
    case SchedulingScheme::kWeighted: return "weighted";
    case SchedulingScheme::kRandom: return "random";
  }
  return "unknown";
}

Scheduler::Scheduler(SchedulerOptions options, SchedulerSink& sink, std::uint64_t random_seed)
    : options_(options), sink_(sink), random_(random_seed), records_(options.finished_records) {}

void Scheduler::add_engine(EngineId engine) {
  auto [it, added] = engines_.try_emplace(engine);
  reindex(engine, it->second);
  pump();
}

std::size_t Scheduler::remove_engine(EngineId engine, const std::string& why) {
  auto it = engines_.find(engine);
  if (it == engines_.end()) return 0;
  unindex(engine, it->second);
  direct_backlog_.erase(engine);
  Engine e = std::move(it->second);
  engines_.erase(it);
  std::size_t affected = 0;
  for (TaskId id : e.direct) {
    ++affected;
    fail_task(id, TaskFailure::kEngineDied, why);
  }
  for (TaskId id : e.running) {
    ++affected;
    auto t = tasks_.find(id);
    if (t == tasks_.end()) continue;
    Task& task = t->second;
    if (!task.spec.engine && task.spec.retries > 0) {
      // Load-balanced with retries left: run it again, elsewhere.
      --task.spec.retries;
      task.excluded.insert(engine);
      task.assigned.reset();
      task.state = State::kQueued;
      if (!placeable_somewhere(task)) {
        fail_task(id, TaskFailure::kEngineDied, why + "; no other engine may run it");
        continue;
      }
      restricted_.push_back(id);
    } else {
      fail_task(id, TaskFailure::kEngineDied, why);
    }
  }
  // Tasks that could only ever run there fail now rather than wait forever.
  for (auto q = restricted_.begin(); q != restricted_.end();) {
    auto t = tasks_.find(*q);
    if (t != tasks_.end() && !placeable_somewhere(t->second) && !engines_.empty()) {
      TaskId id = *q;
      q = restricted_.erase(q);
      fail_task(id, TaskFailure::kUnreachable, "no registered engine may run this task");
    } else {
      ++q;
    }
  }
  pump();
  return affected;
}

TaskId Scheduler::submit(TaskSpec spec, SteadyClock::time_point now) {
  TaskId id = next_id_++;
  Task& task = tasks_[id];
  task.spec = std::move(spec);
  ++client_tasks_[task.spec.client_id];
  if (task.spec.timeout) task.deadline = now + *task.spec.timeout;
  if (task.spec.engine && !engines_.count(*task.spec.engine)) {
    fail_task(id, TaskFailure::kNoSuchEngine, "no engine with id " + std::to_string(*task.spec.engine));
    return id;
  }
  // Dependencies: each must be a task finished or still in the table.
  for (const auto* deps : {&task.spec.after, &task.spec.follow}) {
    for (TaskId dep : *deps) {
      if (!records_.find(dep) && (!tasks_.count(dep) || dep == id)) {
        fail_task(id, TaskFailure::kDependencyFailed, "unknown dependency " + std::to_string(dep));
        return id;
      }
    }
  }
  switch (check_dependencies(id, task)) {
    case Dependencies::kUnreachable:
      return id;
    case Dependencies::kWaiting:
      // Looked at again as each unfinished one finishes (a task listed twice is looked at twice).
      for (const auto* deps : {&task.spec.after, &task.spec.follow}) {
        for (TaskId dep : *deps) {
          if (!records_.find(dep)) dependents_[dep].push_back(id);
        }
      }
      waiting_.insert(id);
      return id;
    case Dependencies::kMet:
      break;
  }
  make_ready(id, task);
  pump();
  return id;
}

Scheduler::Dependencies Scheduler::dependency_state(const std::vector<TaskId>& deps,
                                                     const wire::DependencyRule& rule, std::string& why) const {
  if (deps.empty()) return Dependencies::kMet;
  std::size_t counted = 0, against = 0;
  for (TaskId dep : deps) {
    auto r = records_.find(dep);
    if (!r) continue;  // not finished yet
    if (r->success ? rule.success : rule.failure) {
      ++counted;
    } else {
      ++against;
      why = "dependency " + std::to_string(dep) + (r->success ? " succeeded" : " failed");
    }
  }
  if (rule.all) {
    if (against > 0) return Dependencies::kUnreachable;
    return counted == deps.size() ? Dependencies::kMet : Dependencies::kWaiting;
  }
  if (counted > 0) return Dependencies::kMet;
  return against == deps.size() ? Dependencies::kUnreachable : Dependencies::kWaiting;
}

Scheduler::Dependencies Scheduler::check_dependencies(TaskId id, Task& task) {
  std::string why;
  Dependencies after = dependency_state(task.spec.after, task.spec.after_rule, why);
  Dependencies follow = dependency_state(task.spec.follow, task.spec.follow_rule, why);
  if (after == Dependencies::kUnreachable || follow == Dependencies::kUnreachable) {
    fail_task(id, TaskFailure::kDependencyFailed, why);
    return Dependencies::kUnreachable;
  }
  return after == Dependencies::kMet && follow == Dependencies::kMet ? Dependencies::kMet : Dependencies::kWaiting;
}

void Scheduler::make_ready(TaskId id, Task& task) {
  // follow: only where the followed tasks that count ran (all=True: every one, so one engine;
  // all=False: any of them). A task that failed without an engine (aborted, say) ran nowhere.
  if (!task.spec.follow.empty()) {
    const wire::DependencyRule& rule = task.spec.follow_rule;
    std::set<EngineId> where;
    for (TaskId dep : task.spec.follow) {
      auto r = records_.find(dep);
      if (r && (r->success ? rule.success : rule.failure) && r->engine != std::numeric_limits<EngineId>::max()) {
        where.insert(r->engine);
      }
    }
    if (rule.all && where.size() > 1) {
      return fail_task(id, TaskFailure::kDependencyFailed, "followed tasks ran on different engines");
    }
    std::vector<EngineId> allowed;
    for (EngineId e : where) {
      if (task.spec.allowed.empty() ||
          std::find(task.spec.allowed.begin(), task.spec.allowed.end(), e) != task.spec.allowed.end()) {
        allowed.push_back(e);
      }
    }
    if (allowed.empty()) {
      return fail_task(id, TaskFailure::kUnreachable, "followed tasks ran outside the allowed engines");
    }
    task.spec.allowed = std::move(allowed);
  }
  enqueue(id, task);
}

void Scheduler::enqueue(TaskId id, Task& task) {
  task.state = State::kQueued;
  if (task.spec.engine) {
    auto e = engines_.find(*task.spec.engine);
    if (e == engines_.end()) {
      return fail_task(id, TaskFailure::kEngineDied, "engine " + std::to_string(*task.spec.engine) + " is gone");
    }
    e->second.direct.push_back(id);
    reindex(e->first, e->second);
    return;
  }
  if (!engines_.empty() && !placeable_somewhere(task)) {
    return fail_task(id, TaskFailure::kUnreachable, "no registered engine may run this task");
  }
  (task.spec.allowed.empty() && task.excluded.empty() ? unassigned_ : restricted_).push_back(id);
}

bool Scheduler::balanced_room(const Engine& e) const {
  const std::uint32_t limit = options_.hwm == kAdaptiveWindow ? e.window : options_.hwm;
  return limit == 0 || e.running_balanced < limit;
}

bool Scheduler::sends_direct_now(EngineId engine) const {
  auto e = engines_.find(engine);
  return e != engines_.end() && e->second.direct.empty() && direct_room(e->second);
}

bool Scheduler::direct_room(const Engine& e) const {
  const std::uint32_t limit = options_.direct_window == kAdaptiveWindow ? e.window : options_.direct_window;
  return e.running.size() - e.running_balanced < limit;
}

void Scheduler::measure_reply(Engine& e, SteadyClock::time_point now) {
  if (e.busy_at_last_reply && now > e.last_reply) {
    // The engine went straight from the previous task to this one: the gap is its time per
    // task (plus, when the next task was still in flight, some network time: an
    // overestimate, which only makes the window smaller).
    const double sample = std::chrono::duration<double, std::micro>(now - e.last_reply).count();
    e.service_us = e.service_us == 0 ? sample : e.service_us + (sample - e.service_us) / 8;
    const double budget = static_cast<double>(options_.adaptive_budget.count());
    const double ahead = 1 + std::ceil(budget / std::max(e.service_us, 1.0));
    e.window = static_cast<std::uint32_t>(
        std::clamp(ahead, double{kMinAdaptiveWindow}, double{kMaxAdaptiveWindow}));
  }
  e.last_reply = now;
  e.busy_at_last_reply = !e.running.empty();
}

bool Scheduler::eligible(EngineId engine, const Task& task) const {
  if (task.excluded.count(engine)) return false;
  return task.spec.allowed.empty() ||
         std::find(task.spec.allowed.begin(), task.spec.allowed.end(), engine) != task.spec.allowed.end();
}

bool Scheduler::placeable_somewhere(const Task& task) const {
  for (const auto& [id, e] : engines_) {
    if (eligible(id, task)) return true;
  }
  return false;
}

std::optional<EngineId> Scheduler::place(const Task& task) {
  if (with_room_.empty()) return std::nullopt;
  if (task.spec.allowed.empty() && task.excluded.empty()) {
    // Any engine with room may run it: the index answers without looking at the others.
    switch (options_.scheme) {
      case SchedulingScheme::kLeastLoad: return std::get<2>(*by_load_.begin());
      case SchedulingScheme::kLru: return by_lru_.begin()->second;
      default: return pick(with_room_);
    }
  }
  std::vector<EngineId> candidates;
  if (!task.spec.allowed.empty()) {
    // Usually a few engines: look only at those.
    candidates = task.spec.allowed;
    std::sort(candidates.begin(), candidates.end());
    candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
    std::erase_if(candidates, [&](EngineId id) {
      auto e = engines_.find(id);
      return e == engines_.end() || !balanced_room(e->second) || task.excluded.count(id);
    });
  } else {
    for (EngineId id : with_room_) {
      if (eligible(id, task)) candidates.push_back(id);
    }
  }
  if (candidates.empty()) return std::nullopt;
  return pick(candidates);
}

EngineId Scheduler::pick(const std::vector<EngineId>& candidates) {
  auto load = [this](EngineId id) { return engines_.at(id).load(); };
  auto lru_pick = [this](const std::vector<EngineId>& c) {
    return *std::min_element(c.begin(), c.end(), [this](EngineId a, EngineId b) {
      return engines_.at(a).last_assigned < engines_.at(b).last_assigned;
    });
  };
  switch (options_.scheme) {
    case SchedulingScheme::kLeastLoad:
      // Fewest outstanding; among equals the least recently used, so work spreads evenly.
      return *std::min_element(candidates.begin(), candidates.end(), [&](EngineId a, EngineId b) {
        auto la = load(a), lb = load(b);
        return la != lb ? la < lb : engines_.at(a).last_assigned < engines_.at(b).last_assigned;
      });
    case SchedulingScheme::kLru:
      return lru_pick(candidates);
    case SchedulingScheme::kTwoBin: {
      // Two engines at random, the less recently used of them (ipyparallel's twobin).
      std::uniform_int_distribution<std::size_t> pick(0, candidates.size() - 1);
      EngineId a = candidates[pick(random_)], b = candidates[pick(random_)];
      return lru_pick({a, b});
    }
    case SchedulingScheme::kWeighted: {
      // Random, weighted towards idle engines: weight 1 / (1 + load).
      std::vector<double> weights;
      weights.reserve(candidates.size());
      for (EngineId id : candidates) weights.push_back(1.0 / (1.0 + static_cast<double>(load(id))));
      std::discrete_distribution<std::size_t> pick(weights.begin(), weights.end());
      return candidates[pick(random_)];
    }
    case SchedulingScheme::kRandom:
      break;
  }
  std::uniform_int_distribution<std::size_t> pick(0, candidates.size() - 1);
  return candidates[pick(random_)];
}

void Scheduler::unindex(EngineId engine, Engine& e) {
  if (!e.indexed) return;
  by_load_.erase({e.indexed_load, e.indexed_lru, engine});
  by_lru_.erase({e.indexed_lru, engine});
  auto it = std::lower_bound(with_room_.begin(), with_room_.end(), engine);
  if (it != with_room_.end() && *it == engine) with_room_.erase(it);
  e.indexed = false;
}

void Scheduler::reindex(EngineId engine, Engine& e) {
  if (e.direct.empty()) {
    direct_backlog_.erase(engine);
  } else {
    direct_backlog_.insert(engine);
  }
  const bool room = balanced_room(e);
  if (e.indexed && room) {
    if (e.indexed_load == e.load() && e.indexed_lru == e.last_assigned) return;
    by_load_.erase({e.indexed_load, e.indexed_lru, engine});
    by_lru_.erase({e.indexed_lru, engine});
  } else if (e.indexed) {
    unindex(engine, e);
    return;
  } else if (!room) {
    return;
  } else {
    with_room_.insert(std::lower_bound(with_room_.begin(), with_room_.end(), engine), engine);
  }
  e.indexed = true;
  e.indexed_load = e.load();
  e.indexed_lru = e.last_assigned;
  by_load_.emplace(e.indexed_load, e.indexed_lru, engine);
  by_lru_.emplace(e.indexed_lru, engine);
}

void Scheduler::send(EngineId engine, Engine& e, TaskId id, Task& task) {
  task.state = State::kRunning;
  task.assigned = engine;
  e.running.insert(id);
  if (!task.spec.engine) ++e.running_balanced;
  e.last_assigned = ++lru_clock_;
  reindex(engine, e);
  sink_.dispatch(engine, id, task.spec);
  // A task that can never be sent again (direct, or load-balanced without retries left) need
  // not keep its body: the engine's connection holds it until written, then it is freed.
  if (task.spec.engine || task.spec.retries == 0) task.spec.body = {};
}

void Scheduler::pump_engine(EngineId engine, Engine& e) {
  while (!e.direct.empty() && direct_room(e)) {
    TaskId id = e.direct.front();
    e.direct.pop_front();
    auto t = tasks_.find(id);
    if (t != tasks_.end()) send(engine, e, id, t->second);
  }
  reindex(engine, e);
}

void Scheduler::pump() {
  // Only engines with direct tasks waiting (pump_engine may take one off the set).
  for (auto it = direct_backlog_.begin(); it != direct_backlog_.end();) {
    EngineId engine = *it++;
    pump_engine(engine, engines_.at(engine));
  }
  // Unrestricted tasks: FIFO while some engine has room; when none has, no later one fits
  // either, so this never scans the whole queue.
  while (!unassigned_.empty()) {
    TaskId id = unassigned_.front();
    auto t = tasks_.find(id);
    if (t == tasks_.end()) {
      unassigned_.pop_front();
      continue;
    }
    auto engine = place(t->second);
    if (!engine) break;
    unassigned_.pop_front();
    send(*engine, engines_.at(*engine), id, t->second);
  }
  // Restricted tasks: each may fit elsewhere, so look at each. The list is long when a client
  // restricts every task (a sealing client names the engines it paired with): stop once no
  // engine has room, and skip a task whose allowed set already found no room in this pass.
  std::set<std::vector<EngineId>> full;
  for (auto q = restricted_.begin(); q != restricted_.end() && !with_room_.empty();) {
    auto t = tasks_.find(*q);
    if (t == tasks_.end()) {
      q = restricted_.erase(q);
      continue;
    }
    const bool plain_set = t->second.excluded.empty() && !t->second.spec.allowed.empty();
    if (plain_set && full.contains(t->second.spec.allowed)) {
      ++q;
      continue;
    }
    auto engine = place(t->second);
    if (!engine) {
      if (plain_set) full.insert(t->second.spec.allowed);
      ++q;
      continue;
    }
    TaskId id = *q;
    q = restricted_.erase(q);
    send(*engine, engines_.at(*engine), id, t->second);
  }
}

std::optional<TaskSpec> Scheduler::finished(TaskId id, EngineId engine, bool success, SteadyClock::time_point now) {
  auto t = tasks_.find(id);
  if (t == tasks_.end() || t->second.state != State::kRunning || t->second.assigned != engine) return std::nullopt;
  auto e = engines_.find(engine);
  if (e != engines_.end()) {
    e->second.running.erase(id);
    if (!t->second.spec.engine) --e->second.running_balanced;
    ++e->second.completed;
    measure_reply(e->second, now);
    reindex(engine, e->second);
  }
  TaskSpec spec = std::move(t->second.spec);
  forget_client_task(spec.client_id);
  complete(id, success, engine);
  pump();
  return spec;
}

void Scheduler::complete(TaskId id, bool success, std::optional<EngineId> engine) {
  tasks_.erase(id);
  waiting_.erase(id);
  remember(id, Record{success, engine.value_or(std::numeric_limits<EngineId>::max())});
  resolve_dependents(id);
}

void Scheduler::resolve_dependents(TaskId id) {
  auto d = dependents_.find(id);
  if (d == dependents_.end()) return;
  std::vector<TaskId> waiting_on_it = std::move(d->second);
  dependents_.erase(d);
  for (TaskId dependent : waiting_on_it) {
    auto t = tasks_.find(dependent);
    // Gone, or already ready: with all=False one finished dependency may have been enough.
    if (t == tasks_.end() || t->second.state != State::kWaiting) continue;
    if (check_dependencies(dependent, t->second) == Dependencies::kMet) {
      waiting_.erase(dependent);
      make_ready(dependent, t->second);
    }
  }
}

void Scheduler::fail_task(TaskId id, TaskFailure why, const std::string& text) {
  auto t = tasks_.find(id);
  if (t == tasks_.end()) return;
  TaskSpec spec = std::move(t->second.spec);
  std::optional<EngineId> engine = t->second.assigned;
  if (engine && t->second.state == State::kRunning) {
    if (auto e = engines_.find(*engine); e != engines_.end()) {
      e->second.running.erase(id);
      if (!spec.engine) --e->second.running_balanced;
      reindex(e->first, e->second);
    }
  }
  forget_client_task(spec.client_id);
  sink_.fail(id, spec, why, text);
  complete(id, false, engine);
}

void Scheduler::forget_client_task(std::uint32_t client_id) {
  auto it = client_tasks_.find(client_id);
  if (it != client_tasks_.end() && --it->second == 0) client_tasks_.erase(it);
}

std::size_t Scheduler::abort(std::uint32_t client_id, const std::vector<TaskId>& ids,
                             std::vector<std::pair<TaskId, EngineId>>* sent) {
  std::size_t aborted = 0;
  for (TaskId id : ids) {
    auto t = tasks_.find(id);
    if (t == tasks_.end() || t->second.spec.client_id != client_id) continue;
    if (t->second.state == State::kRunning) {
      if (sent && t->second.assigned) sent->emplace_back(id, *t->second.assigned);
      continue;
    }
    if (t->second.spec.engine) {
      auto e = engines_.find(*t->second.spec.engine);
      if (e != engines_.end()) {
        auto& q = e->second.direct;
        q.erase(std::remove(q.begin(), q.end(), id), q.end());
        reindex(e->first, e->second);
      }
    }
    // Stale ids in unassigned_/restricted_ are skipped by pump().
    fail_task(id, TaskFailure::kAborted, "aborted while queued");
    ++aborted;
  }
  return aborted;
}

void Scheduler::expire(SteadyClock::time_point now) {
  std::vector<TaskId> late;
  for (TaskId id : waiting_) {
    if (tasks_.at(id).deadline <= now) late.push_back(id);
  }
  for (TaskId id : late) fail_task(id, TaskFailure::kDependencyTimeout, "dependencies not met within the timeout");
  if (!late.empty()) pump();
}

void Scheduler::fail_all(const std::string& why) {
  std::vector<TaskId> ids;
  for (const auto& [id, t] : tasks_) ids.push_back(id);
  for (TaskId id : ids) fail_task(id, TaskFailure::kShuttingDown, why);
  unassigned_.clear();
  restricted_.clear();
  for (auto& [engine, e] : engines_) {
    e.direct.clear();
    reindex(engine, e);
  }
}

std::optional<TaskId> Scheduler::oldest_running(EngineId engine) const {
  auto e = engines_.find(engine);
  if (e == engines_.end() || e->second.running.empty()) return std::nullopt;
  // Ids grow with submission, and an engine runs its tasks in the order they were sent.
  return *std::min_element(e->second.running.begin(), e->second.running.end());
}

const TaskSpec* Scheduler::running_spec(TaskId id, EngineId engine) const {
  auto t = tasks_.find(id);
  if (t == tasks_.end() || t->second.state != State::kRunning || t->second.assigned != engine) return nullptr;
  return &t->second.spec;
}

std::map<EngineId, Scheduler::EngineLoad> Scheduler::queue_status() const {
  std::map<EngineId, EngineLoad> out;
  for (const auto& [id, e] : engines_) {
    out[id] = EngineLoad{e.direct.size(), e.running.size(), e.completed,
                         options_.hwm == kAdaptiveWindow ? e.window : options_.hwm};
  }
  return out;
}

void Scheduler::remember(TaskId id, Record record) { records_.put(id, record); }

void Scheduler::FinishedRecords::put(TaskId id, Record record) {
  const TaskId block_start = id / kBlock * kBlock;
  if (blocks_.empty()) first_ = block_start;
  // A task that ran long finishes after younger ones: its block may lie before the first.
  while (id < first_) {
    if ((blocks_.size() + 1) * kBlock > capacity_ + kBlock) return;  // older than we keep
    blocks_.push_front(std::make_unique<Block>());
    first_ -= kBlock;
  }
  while (id >= first_ + blocks_.size() * kBlock) blocks_.push_back(std::make_unique<Block>());
  // Forget the oldest blocks while the rest still cover `capacity` ids.
  while (blocks_.size() > 1 && (blocks_.size() - 1) * kBlock >= capacity_) {
    blocks_.pop_front();
    first_ += kBlock;
  }
  if (id < first_) return;
  Slot& slot = (*blocks_[(id - first_) / kBlock])[(id - first_) % kBlock];
  slot.engine = record.engine;
  slot.state = record.success ? 1 : 2;
}

std::optional<Scheduler::Record> Scheduler::FinishedRecords::find(TaskId id) const {
  if (id < first_ || id >= first_ + blocks_.size() * kBlock) return std::nullopt;
  const Slot& slot = (*blocks_[(id - first_) / kBlock])[(id - first_) % kBlock];
  if (slot.state == 0) return std::nullopt;
  return Record{slot.state == 1, slot.engine};
}

}  // namespace testudo::controller
