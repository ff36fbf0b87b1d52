// make_task_store_fixture DIR: writes DIR/tasks.sqlite (and DIR/tasks.sqlite.results/) with
// the tasks of task_store_fixture.h, using the task store of this build. Run it once per
// format version, into tests/fixtures/store-v<N>/ (docs/formats.md); DIR must not hold a
// store already, so a kept fixture is never overwritten by accident.
//
// Two runs, as a controller's life would write them: the first records every task and stops
// with some unfinished; the second open marks those lost.
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <string_view>

#include "controller/task_store.h"
#include "controller/task_store_fixture.h"

using namespace testudo;
using namespace testudo::controller;

namespace {

int fail(const Status& st) {
  std::fprintf(stderr, "make_task_store_fixture: %s\n", st.to_string().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_task_store_fixture DIR\n");
    return 2;
  }
  TaskStoreOptions options;
  options.path = std::string(argv[1]) + "/tasks.sqlite";
  options.inline_limit = fixture::kInlineLimit;
  options.max_age = std::chrono::seconds(100LL * 365 * 24 * 3600);  // kept, whenever a test opens it
  if (std::filesystem::exists(options.path)) {
    std::fprintf(stderr, "make_task_store_fixture: %s exists; remove it first\n", options.path.c_str());
    return 1;
  }
  ::umask(077);
  const std::int64_t t0 = fixture::kReopenedUs - 3'600'000'000;  // an hour before the restart
  {
    auto opened = TaskStore::open(options, t0);
    if (!opened.ok()) return fail(opened.status());
    TaskStore& store = **opened;
    for (const fixture::FixtureTask& t : fixture::fixture_tasks()) {
      TaskRecord r;
      r.task_id = t.id;
      r.owner = t.owner;
      r.request_id = 100 + t.id;
      r.kind = t.id % 2 == 0 ? "apply" : "execute";
      r.targets = {t.engine};
      r.submitted_us = t0 + static_cast<std::int64_t>(t.id) * 1000;
      store.record_submitted(r);
      const bool lost = t.state == TaskState::kLost;
      if (lost && std::string_view(t.owner) == fixture::kOwnerB) continue;  // still queued at the "crash"
      store.record_started(t.id, t.engine, r.submitted_us + 100);
      if (lost) continue;  // still running at the "crash"
      std::vector<SharedBytes> result;
      for (const std::string& s : t.result) result.push_back(SharedBytes::copy_of(s));
      store.record_finished(t.id, t.state, r.submitted_us + 500, std::move(result), t.error);
    }
    Status st = store.sync();
    if (!st.ok()) return fail(st);
  }
  auto reopened = TaskStore::open(options, fixture::kReopenedUs);
  if (!reopened.ok()) return fail(reopened.status());
  std::printf("wrote %s: %llu tasks lost at the restart\n", options.path.c_str(),
              static_cast<unsigned long long>((*reopened)->lost_at_open()));
  return 0;
}
