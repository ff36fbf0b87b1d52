// Tests of the SQLite task store: round trips, queries, purges, limits, restarts, real
// crashes (fork + SIGKILL), read-only and full disks (docs/threat-model.md F2, F3, F6, F7).
#include "controller/task_store.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/test_small_disk.h"
#include "base/test_temp_dir.h"
#include "controller/task_store_fixture.h"

namespace testudo::controller {
namespace {

namespace fs = std::filesystem;

using testing::private_mounts;
using testing::SmallDisk;
using testing::TempDir;

TaskStoreOptions options_in(const std::string& dir) {
  TaskStoreOptions o;
  o.path = dir + "/state/tasks.sqlite";
  return o;
}

std::unique_ptr<TaskStore> open_ok(const TaskStoreOptions& o, std::int64_t now_us = 1'000'000) {
  auto store = TaskStore::open(o, now_us);
  EXPECT_TRUE(store.ok()) << store.status().to_string();
  if (!store.ok()) return nullptr;
  return std::move(store).value();
}

TaskRecord submitted(std::uint64_t id, std::string owner, std::int64_t at_us = 100) {
  TaskRecord r;
  r.task_id = id;
  r.owner = std::move(owner);
  r.request_id = id * 10;
  r.kind = "execute";
  r.targets = {static_cast<std::uint32_t>(id % 7)};
  r.submitted_us = at_us;
  return r;
}

std::vector<SharedBytes> segments_of(const std::vector<std::string>& parts) {
  std::vector<SharedBytes> out;
  for (const std::string& p : parts) out.push_back(SharedBytes::copy_of(p));
  return out;
}

std::vector<std::string> strings_of(const std::vector<SharedBytes>& segments) {
  std::vector<std::string> out;
  for (const SharedBytes& s : segments) out.push_back(s.to_string());
  return out;
}

TaskRecord get_ok(TaskStore& store, std::uint64_t id) {
  auto r = store.get(id);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r.ok() && r->has_value()) << "task " << id << " missing";
  return r.ok() && r->has_value() ? **r : TaskRecord{};
}

// Opens the database file directly (the store must be closed: it holds an exclusive lock).
// Exclusive locking like the store's, so no -shm file is needed (the disk may be full).
std::string sql_text(const std::string& path, const char* sql) {
  sqlite3* db = nullptr;
  std::string out;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK &&
      sqlite3_exec(db, "PRAGMA locking_mode=EXCLUSIVE", nullptr, nullptr, nullptr) == SQLITE_OK) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) {
      const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
      out = text != nullptr ? text : "(null)";
    }
    sqlite3_finalize(stmt);
  }
  if (out.empty()) out = std::string("(error: ") + sqlite3_errmsg(db) + ")";
  sqlite3_close(db);
  return out;
}

TEST(TaskStore, RoundTripOfEveryField) {
  TempDir dir;
  auto o = options_in(dir.path());
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  TaskRecord r;
  r.task_id = 42;
  r.owner = "SHA256:ab:cd";
  r.request_id = 0xfedcba9876543210ull;
  r.kind = "apply";
  r.targets = {0, 3, 0xffffffffu};
  r.submitted_us = -5;  // any value survives
  store->record_submitted(r);
  store->record_started(42, 3, 2'000);
  store->record_finished(42, TaskState::kFailed, 3'000, segments_of({"xy", ""}), "ZeroDivisionError");
  ASSERT_TRUE(store->flush().ok());
  EXPECT_EQ(store->pending_writes(), 0u);

  TaskRecord want = r;
  want.engine = 3;
  want.state = TaskState::kFailed;
  want.started_us = 2'000;
  want.completed_us = 3'000;
  want.result_bytes = 2;
  want.error = "ZeroDivisionError";
  EXPECT_EQ(get_ok(*store, 42), want);

  // Reads see writes not yet flushed (they flush first).
  store->record_submitted(submitted(43, "bob"));
  TaskRecord got = get_ok(*store, 43);
  EXPECT_EQ(got, submitted(43, "bob"));
  EXPECT_EQ(got.state, TaskState::kQueued);
  EXPECT_FALSE(got.engine.has_value());

  auto none = store->get(9999);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  EXPECT_GT(store->next_task_id(), 43u);

  // A second finish does not overwrite the first.
  store->record_finished(42, TaskState::kSucceeded, 9'000, segments_of({"other"}), "");
  EXPECT_EQ(get_ok(*store, 42), want);

  // Files are private.
  struct stat st {};
  ASSERT_EQ(::stat(o.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((dir.path() + "/state").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat((o.path + ".results").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST(TaskStore, ResultSegmentsInlineAndInFiles) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.inline_limit = 1024;
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  const std::string big(5000, 'b');
  const std::vector<std::string> small_parts = {"", "abc", "", std::string("\0\x01\xff", 3), ""};
  const std::vector<std::string> big_parts = {"", big, "", "tail"};
  for (std::uint64_t id = 1; id <= 5; ++id) store->record_submitted(submitted(id, "alice"));
  store->record_finished(1, TaskState::kSucceeded, 10, segments_of(small_parts), "");
  store->record_finished(2, TaskState::kSucceeded, 10, segments_of(big_parts), "");
  store->record_finished(3, TaskState::kSucceeded, 10, {}, "");
  store->record_finished(4, TaskState::kSucceeded, 10, segments_of({""}), "");
  ASSERT_TRUE(store->sync().ok());

  auto r1 = store->result(1);
  ASSERT_TRUE(r1.ok()) << r1.status().to_string();
  EXPECT_EQ(strings_of(*r1), small_parts);
  auto r2 = store->result(2);
  ASSERT_TRUE(r2.ok()) << r2.status().to_string();
  EXPECT_EQ(strings_of(*r2), big_parts);
  EXPECT_EQ(get_ok(*store, 2).result_bytes, big.size() + 4);
  auto r3 = store->result(3);
  ASSERT_TRUE(r3.ok());
  EXPECT_TRUE(r3->empty());
  auto r4 = store->result(4);
  ASSERT_TRUE(r4.ok());
  EXPECT_EQ(strings_of(*r4), std::vector<std::string>{""});

  // Only the big one is a file, 0600.
  const std::string file = o.path + ".results/2.res";
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(fs::exists(o.path + ".results/1.res"));

  EXPECT_EQ(store->result(5).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->result(77).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store->stored_result_bytes(), 3u + 3u + big.size() + 4u);

  // A damaged result file is reported, not trusted.
  fs::resize_file(file, st.st_size - 1);
  EXPECT_EQ(store->result(2).status().code(), StatusCode::kDataLoss);
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0);
    f.write("XXXX", 4);
  }
  fs::resize_file(file, st.st_size);
  EXPECT_EQ(store->result(2).status().code(), StatusCode::kDataLoss);
}

TEST(TaskStore, QueryByOwnerStateTimeAndLimit) {
  TempDir dir;
  auto store = open_ok(options_in(dir.path()));
  ASSERT_TRUE(store);
  for (std::uint64_t id = 1; id <= 30; ++id) {
    store->record_submitted(submitted(id, id % 3 == 0 ? "carol" : (id % 2 == 0 ? "bob" : "alice"),
                                      static_cast<std::int64_t>(id) * 100));
    if (id % 5 == 0) store->record_finished(id, TaskState::kSucceeded, 5'000, {}, "");
    if (id % 5 == 1) store->record_started(id, 1, 4'000);
  }
  ASSERT_TRUE(store->flush().ok());

  TaskStore::Query q;
  q.owner = "alice";
  auto alice = store->query(q);
  ASSERT_TRUE(alice.ok());
  std::vector<std::uint64_t> ids;
  for (const TaskRecord& r : *alice) {
    EXPECT_EQ(r.owner, "alice");
    ids.push_back(r.task_id);
  }
  EXPECT_EQ(ids, (std::vector<std::uint64_t>{1, 5, 7, 11, 13, 17, 19, 23, 25, 29}));

  q.states = {TaskState::kSucceeded};
  auto done = store->query(q);
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->size(), 2u);  // 5, 25
  EXPECT_EQ((*done)[0].task_id, 5u);
  EXPECT_EQ((*done)[1].task_id, 25u);

  q.states = {TaskState::kRunning, TaskState::kSucceeded};
  q.submitted_after_us = 1'100;  // ids > 11
  auto later = store->query(q);
  ASSERT_TRUE(later.ok());
  ids.clear();
  for (const TaskRecord& r : *later) ids.push_back(r.task_id);
  EXPECT_EQ(ids, (std::vector<std::uint64_t>{25}));  // 21 is carol's, 16 bob's, 11 not after

  // All owners, paged.
  TaskStore::Query all;
  all.limit = 7;
  std::vector<std::uint64_t> seen;
  for (;;) {
    auto page = store->query(all);
    ASSERT_TRUE(page.ok());
    if (page->empty()) break;
    EXPECT_LE(page->size(), 7u);
    for (const TaskRecord& r : *page) seen.push_back(r.task_id);
    all.after_task_id = page->back().task_id;
  }
  ASSERT_EQ(seen.size(), 30u);
  for (std::size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], i + 1);

  q = {};
  q.owner = "nobody";
  auto nobody = store->query(q);
  ASSERT_TRUE(nobody.ok());
  EXPECT_TRUE(nobody->empty());
}

TEST(TaskStore, PurgeTouchesOnlyThatOwnersFinishedTasks) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.inline_limit = 64;
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  // alice: 1, 2 finished (2 has a file result), 3 running; bob: 4 finished, 5 queued.
  for (std::uint64_t id = 1; id <= 5; ++id) store->record_submitted(submitted(id, id <= 3 ? "alice" : "bob"));
  store->record_finished(1, TaskState::kSucceeded, 10, segments_of({"one"}), "");
  store->record_finished(2, TaskState::kAborted, 10, segments_of({std::string(200, 'x')}), "");
  store->record_started(3, 1, 5);
  store->record_finished(4, TaskState::kSucceeded, 10, segments_of({"four"}), "");
  ASSERT_TRUE(store->sync().ok());
  ASSERT_TRUE(fs::exists(o.path + ".results/2.res"));

  auto n = store->purge("alice", {1, 3, 4, 99});  // 3 running, 4 bob's, 99 unknown
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1u);
  EXPECT_FALSE(store->get(1)->has_value());
  EXPECT_TRUE(store->get(3)->has_value());
  EXPECT_TRUE(store->get(4)->has_value());

  n = store->purge("alice", {});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1u);  // 2 only
  EXPECT_FALSE(store->get(2)->has_value());
  EXPECT_FALSE(fs::exists(o.path + ".results/2.res"));
  EXPECT_EQ(get_ok(*store, 3).state, TaskState::kRunning);
  EXPECT_EQ(store->result(4).ok(), true);
  EXPECT_EQ(store->stored_result_bytes(), 4u);

  n = store->purge(std::nullopt, {});  // admin: every finished task
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1u);  // 4
  EXPECT_TRUE(store->get(3)->has_value());
  EXPECT_TRUE(store->get(5)->has_value());
  EXPECT_EQ(store->stored_result_bytes(), 0u);
}

TEST(TaskStore, EnforceLimitsByAge) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.max_age = std::chrono::seconds(100);
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  const std::int64_t s = 1'000'000;
  for (std::uint64_t id = 1; id <= 6; ++id) store->record_submitted(submitted(id, "alice", 0));
  store->record_finished(1, TaskState::kSucceeded, 10 * s, segments_of({"a"}), "");   // old
  store->record_finished(2, TaskState::kFailed, 50 * s, {}, "x");                     // old
  store->record_finished(3, TaskState::kSucceeded, 150 * s, segments_of({"c"}), "");  // recent
  store->record_started(4, 1, 1);                                                     // old but running
  ASSERT_TRUE(store->flush().ok());                                                   // 5, 6 queued
  auto n = store->enforce_limits(200 * s);
  ASSERT_TRUE(n.ok()) << n.status().to_string();
  EXPECT_EQ(*n, 2u);
  EXPECT_FALSE(store->get(1)->has_value());
  EXPECT_FALSE(store->get(2)->has_value());
  for (std::uint64_t id : {3, 4, 5, 6}) EXPECT_TRUE(store->get(id)->has_value()) << id;
  EXPECT_EQ(store->stored_result_bytes(), 1u);
}

TEST(TaskStore, EnforceLimitsBySizeOldestFirst) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.max_result_bytes = 250;
  o.inline_limit = 150;  // some results in files, some inline
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  // Completion order differs from id order: 5, 1, 4, 2, 3 (oldest first).
  const std::int64_t completed[] = {0, 20, 40, 50, 30, 10};
  for (std::uint64_t id = 1; id <= 5; ++id) {
    store->record_submitted(submitted(id, "alice"));
    store->record_finished(id, TaskState::kSucceeded, completed[id],
                           segments_of({std::string(id % 2 == 0 ? 100 : 60, 'r'), std::string(40, 's')}), "");
  }
  store->record_submitted(submitted(6, "alice"));
  store->record_finished(6, TaskState::kFailed, 1, {}, "no result, oldest");
  ASSERT_TRUE(store->sync().ok());
  EXPECT_EQ(store->stored_result_bytes(), 5u * 100 + 2 * 40);
  auto n = store->enforce_limits(60);
  ASSERT_TRUE(n.ok()) << n.status().to_string();
  // 580 bytes: drop 5 (100), 1 (100), 4 (140) -> 240 <= 250.
  EXPECT_EQ(*n, 3u);
  EXPECT_EQ(store->stored_result_bytes(), 240u);
  for (std::uint64_t id : {1, 4, 5}) EXPECT_FALSE(store->get(id)->has_value()) << id;
  for (std::uint64_t id : {2, 3, 6}) EXPECT_TRUE(store->get(id)->has_value()) << id;
  EXPECT_FALSE(fs::exists(o.path + ".results/4.res"));
  ASSERT_TRUE(store->result(2).ok());
  // Totals are recomputed on reopen.
  store.reset();
  store = open_ok(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->stored_result_bytes(), 240u);
}

TEST(TaskStore, RestartMarksUnfinishedLostAndIdsContinue) {
  TempDir dir;
  auto o = options_in(dir.path());
  {
    auto store = open_ok(o);
    ASSERT_TRUE(store);
    EXPECT_EQ(store->next_task_id(), 1u);
    for (std::uint64_t id = 1; id <= 3; ++id) store->record_submitted(submitted(id, "alice"));
    store->record_started(2, 7, 150);
    store->record_finished(3, TaskState::kSucceeded, 200, segments_of({"three"}), "");
    ASSERT_TRUE(store->flush().ok());
    // Not flushed: lost with the "crash" (destruction does not flush).
    store->record_submitted(submitted(4, "alice"));
    store->record_finished(1, TaskState::kSucceeded, 300, segments_of({"one"}), "");
    EXPECT_EQ(store->pending_writes(), 2u);
  }
  auto store = open_ok(o, 9'000'000);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->lost_at_open(), 2u);
  TaskRecord one = get_ok(*store, 1);
  EXPECT_EQ(one.state, TaskState::kLost);
  EXPECT_EQ(one.completed_us, 9'000'000);
  EXPECT_FALSE(one.error.empty());
  TaskRecord two = get_ok(*store, 2);
  EXPECT_EQ(two.state, TaskState::kLost);
  EXPECT_EQ(two.engine, 7u);
  EXPECT_EQ(get_ok(*store, 3).state, TaskState::kSucceeded);
  auto three = store->result(3);
  ASSERT_TRUE(three.ok());
  EXPECT_EQ(strings_of(*three), std::vector<std::string>{"three"});
  // Id 4 was handed out but never flushed: it reads as lost (owner unknown), never as
  // unknown, and the reservation keeps it from coming back.
  TaskRecord four = get_ok(*store, 4);
  EXPECT_EQ(four.state, TaskState::kLost);
  EXPECT_EQ(four.owner, "");
  EXPECT_EQ(four.completed_us, 9'000'000);
  EXPECT_NE(four.error.find("before it could record"), std::string::npos) << four.error;
  EXPECT_FALSE(store->get(3)->value().owner.empty());
  EXPECT_GT(store->next_task_id(), 4u);
  EXPECT_GE(store->id_reserved_until(), store->next_task_id());
  auto lost_result = store->result(1);
  ASSERT_TRUE(lost_result.ok());
  EXPECT_TRUE(lost_result->empty());

  // A third run: ids still continue, nothing more is lost.
  const std::uint64_t next = store->next_task_id();
  store->record_submitted(submitted(next, "alice"));
  ASSERT_TRUE(store->flush().ok());
  store.reset();
  store = open_ok(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->lost_at_open(), 1u);
  EXPECT_GT(store->next_task_id(), next);
}

TEST(TaskStore, SecondControllerOnTheSameStoreIsRefused) {
  TempDir dir;
  auto o = options_in(dir.path());
  auto first = open_ok(o);
  ASSERT_TRUE(first);
  auto second = TaskStore::open(o, 1);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition) << second.status().to_string();
  first.reset();
  EXPECT_TRUE(open_ok(o));
}

TEST(TaskStore, RefusesGarbageAndUnsafePlaces) {
  TempDir dir;
  auto o = options_in(dir.path());
  fs::create_directories(dir.path() + "/state");
  fs::permissions(dir.path() + "/state", fs::perms::owner_all);
  {
    std::ofstream f(o.path);
    f << std::string(8192, 'g');
  }
  auto garbage = TaskStore::open(o, 1);
  ASSERT_FALSE(garbage.ok());
  EXPECT_EQ(garbage.status().code(), StatusCode::kDataLoss) << garbage.status().to_string();
  EXPECT_EQ(fs::file_size(o.path), 8192u);  // not overwritten

  fs::remove(o.path);
  fs::permissions(dir.path() + "/state", fs::perms::all);  // 0777, no sticky bit
  auto unsafe = TaskStore::open(o, 1);
  ASSERT_FALSE(unsafe.ok());
  EXPECT_EQ(unsafe.status().code(), StatusCode::kPermissionDenied) << unsafe.status().to_string();

  o.path.clear();
  EXPECT_EQ(TaskStore::open(o, 1).status().code(), StatusCode::kInvalidArgument);
}

TEST(TaskStore, DuplicateIdsAndOverflowAreDroppedAndCounted) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.max_pending_writes = 3;
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  store->record_submitted(submitted(1, "alice"));
  store->record_submitted(submitted(1, "mallory"));  // same id: dropped at flush
  ASSERT_TRUE(store->flush().ok());
  EXPECT_EQ(store->dropped_writes(), 1u);
  EXPECT_EQ(get_ok(*store, 1).owner, "alice");
  for (std::uint64_t id = 2; id <= 6; ++id) store->record_submitted(submitted(id, "alice"));
  EXPECT_EQ(store->pending_writes(), 3u);
  EXPECT_EQ(store->dropped_writes(), 3u);
  ASSERT_TRUE(store->flush().ok());
  EXPECT_TRUE(store->get(4)->has_value());
  EXPECT_FALSE(store->get(5)->has_value());
}

// Child side of the crash tests: only async-signal-safe-ish work, results by exit code.
[[noreturn]] void child_exit(bool ok) { ::_exit(ok ? 0 : 3); }

TEST(TaskStore, SurvivesSigkillBeforeTheSecondBatchIsCommitted) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.inline_limit = 256;
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto opened = TaskStore::open(o, 1);
    if (!opened.ok()) child_exit(false);
    TaskStore& store = **opened;
    for (std::uint64_t id = 1; id <= 100; ++id) {
      store.record_submitted(submitted(id, "alice"));
      if (id % 2 == 0) {
        store.record_finished(id, TaskState::kSucceeded, 500,
                              segments_of({std::to_string(id), std::string(id % 10 == 0 ? 1000 : 3, 'z')}), "");
      } else if (id % 3 == 0) {
        store.record_started(id, 2, 400);
      }
    }
    if (!store.sync().ok()) child_exit(false);
    for (std::uint64_t id = 101; id <= 200; ++id) {
      store.record_submitted(submitted(id, "alice"));
      store.record_finished(id, TaskState::kSucceeded, 600, segments_of({"never"}), "");
    }
    ::raise(SIGKILL);
    child_exit(false);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;

  EXPECT_EQ(sql_text(o.path, "PRAGMA integrity_check"), "ok");
  auto store = open_ok(o, 7'000);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->lost_at_open(), 50u);
  for (std::uint64_t id = 1; id <= 100; ++id) {
    TaskRecord r = get_ok(*store, id);
    if (id % 2 == 0) {
      ASSERT_EQ(r.state, TaskState::kSucceeded) << id;
      auto res = store->result(id);
      ASSERT_TRUE(res.ok()) << id << ": " << res.status().to_string();
      EXPECT_EQ(strings_of(*res), (std::vector<std::string>{std::to_string(id),
                                                            std::string(id % 10 == 0 ? 1000 : 3, 'z')}));
    } else {
      EXPECT_EQ(r.state, TaskState::kLost) << id;
      EXPECT_EQ(r.completed_us, 7'000);
    }
  }
  // Handed out, never committed: lost, not unknown.
  EXPECT_EQ(get_ok(*store, 101).state, TaskState::kLost);
  EXPECT_EQ(get_ok(*store, 200).state, TaskState::kLost);
  EXPECT_GT(store->next_task_id(), 200u);
}

TEST(TaskStore, SigkillDuringFlushesLeavesWholeBatches) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.inline_limit = 4096;
  constexpr std::uint64_t kBatch = 2000;
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(ready[0]);
    auto opened = TaskStore::open(o, 1);
    if (!opened.ok()) child_exit(false);
    TaskStore& store = **opened;
    for (std::uint64_t batch = 0;; ++batch) {
      for (std::uint64_t i = 0; i < kBatch; ++i) {
        const std::uint64_t id = batch * kBatch + i + 1;
        store.record_submitted(submitted(id, "alice"));
        store.record_finished(id, TaskState::kSucceeded, 500,
                              segments_of({std::to_string(id), std::string(i == 7 ? 10'000 : 50, 'p')}), "");
      }
      if (!store.sync().ok()) child_exit(false);
      if (batch == 0 && ::write(ready[1], "r", 1) != 1) child_exit(false);
    }
  }
  ::close(ready[1]);
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  ::close(ready[0]);
  std::this_thread::sleep_for(std::chrono::milliseconds(30 + ::getpid() % 40));
  ::kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child status " << status;

  EXPECT_EQ(sql_text(o.path, "PRAGMA integrity_check"), "ok");
  const std::uint64_t rows = std::stoull(sql_text(o.path, "SELECT COUNT(*) FROM tasks"));
  EXPECT_GE(rows, kBatch);
  EXPECT_EQ(rows % kBatch, 0u) << "a batch was committed in part";
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->lost_at_open(), 0u);
  for (std::uint64_t id = 1; id <= rows; id += (id % kBatch == 7 ? 1 : 97)) {
    auto res = store->result(id);
    ASSERT_TRUE(res.ok()) << id << ": " << res.status().to_string();
    ASSERT_EQ(res->size(), 2u);
    EXPECT_EQ((*res)[0].to_string(), std::to_string(id));
  }
  // No half-written result file survives the reopen.
  for (const auto& e : fs::directory_iterator(o.path + ".results")) {
    EXPECT_EQ(e.path().extension(), ".res") << e.path();
  }
  EXPECT_GT(store->next_task_id(), rows);
}

TEST(TaskStore, HundredThousandTasksInAFewTransactions) {
  TempDir dir;
  auto store = open_ok(options_in(dir.path()));
  ASSERT_TRUE(store);
  constexpr std::uint64_t kTasks = 100'000;
  const SharedBytes reply = SharedBytes::copy_of(std::string(16, 'r'));
  for (std::uint64_t id = 1; id <= kTasks; ++id) {
    store->record_submitted(submitted(id, id % 2 ? "alice" : "bob"));
    store->record_finished(id, TaskState::kSucceeded, 1'000, {reply}, "");
    if (id % 25'000 == 0) {
      ASSERT_TRUE(store->flush().ok());
      EXPECT_EQ(store->pending_writes(), 0u);
    }
  }
  EXPECT_EQ(store->stored_result_bytes(), kTasks * 16);
  TaskStore::Query q;
  q.owner = "bob";
  q.states = {TaskState::kSucceeded};
  q.limit = kTasks;
  auto bob = store->query(q);
  ASSERT_TRUE(bob.ok());
  EXPECT_EQ(bob->size(), kTasks / 2);
  auto n = store->purge("alice", {});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, kTasks / 2);
  EXPECT_EQ(store->stored_result_bytes(), kTasks / 2 * 16);
}

// Names in the results directory (".res" and ".res.tmp" files).
std::vector<std::string> result_files(const TaskStoreOptions& o) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(o.path + ".results")) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(TaskStore, BigResultsAreWrittenOffTheCallersThreadAndCommittedInOrder) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.inline_limit = 1024;
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  const std::string big(8 << 20, 'B');
  // A second finish of the same task never overtakes the first, even while the first's
  // file is being written: 1 keeps its big result, 2 keeps its error (its file is deleted).
  for (std::uint64_t id = 1; id <= 3; ++id) store->record_submitted(submitted(id, "alice"));
  store->record_finished(1, TaskState::kSucceeded, 10, segments_of({"head", big}), "");
  store->record_finished(1, TaskState::kFailed, 11, {}, "second finish of 1");
  store->record_finished(2, TaskState::kFailed, 12, {}, "engine died");
  store->record_finished(2, TaskState::kSucceeded, 13, segments_of({big}), "");
  store->record_finished(3, TaskState::kSucceeded, 14, segments_of({"small"}), "");
  Status st = store->flush();  // does not wait for the files
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_LE(store->pending_writes(), 3u);  // at most 1's two finishes and 2's file
  st = store->sync();
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(store->pending_writes(), 0u);

  TaskRecord r1 = get_ok(*store, 1);
  EXPECT_EQ(r1.state, TaskState::kSucceeded);
  EXPECT_EQ(r1.completed_us, 10);
  auto res1 = store->result(1);
  ASSERT_TRUE(res1.ok()) << res1.status().to_string();
  EXPECT_EQ(strings_of(*res1), (std::vector<std::string>{"head", big}));
  TaskRecord r2 = get_ok(*store, 2);
  EXPECT_EQ(r2.state, TaskState::kFailed);
  EXPECT_EQ(r2.error, "engine died");
  EXPECT_EQ(r2.result_bytes, 0u);
  EXPECT_EQ(get_ok(*store, 3).state, TaskState::kSucceeded);
  EXPECT_EQ(result_files(o), std::vector<std::string>{"1.res"});
  EXPECT_EQ(store->stored_result_bytes(), 4 + big.size() + 5);

  // Reads never wait for the file: a get() or result() right after record_finished answers
  // from memory.
  store->record_submitted(submitted(4, "alice"));
  store->record_finished(4, TaskState::kSucceeded, 20, segments_of({big}), "");
  EXPECT_EQ(get_ok(*store, 4).state, TaskState::kSucceeded);
  auto res4 = store->result(4);
  ASSERT_TRUE(res4.ok()) << res4.status().to_string();
  EXPECT_EQ(strings_of(*res4), std::vector<std::string>{big});
  ASSERT_TRUE(store->sync().ok());
  EXPECT_EQ(store->pending_writes(), 0u);
}

TEST(TaskStore, FlushAndRecordWaitForTheWriterWhenItFallsBehind) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.inline_limit = 1024;
  o.max_pending_result_bytes = 64 << 20;  // flush() waits beyond 32 MiB of unwritten files
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  for (std::uint64_t id = 1; id <= 4; ++id) {
    store->record_submitted(submitted(id, "alice"));
    store->record_finished(id, TaskState::kSucceeded, 10, segments_of({std::string(12 << 20, 'w')}), "");
  }
  Status st = store->flush();
  ASSERT_TRUE(st.ok()) << st.to_string();
  // It waited until at most 32 MiB (two results) were left unwritten, so at most those two
  // finishes are still pending (without the wait: up to all four).
  EXPECT_LE(store->pending_writes(), 2u);
  // Beyond the pending bound, recording waits for the writer too instead of dropping.
  for (std::uint64_t id = 5; id <= 7; ++id) {
    store->record_submitted(submitted(id, "alice"));
    store->record_finished(id, TaskState::kSucceeded, 10, segments_of({std::string(24 << 20, 'w')}), "");
  }
  ASSERT_TRUE(store->sync().ok());
  EXPECT_EQ(store->dropped_writes(), 0u);
  EXPECT_EQ(store->stored_result_bytes(), 4u * (12 << 20) + 3u * (24 << 20));
  EXPECT_EQ(result_files(o).size(), 7u);
}

TEST(TaskStore, ClosingWhileAResultFileIsWrittenLeavesNoFileAndTheTaskLost) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.inline_limit = 1024;
  {
    auto store = open_ok(o);
    ASSERT_TRUE(store);
    store->record_submitted(submitted(1, "alice"));
    ASSERT_TRUE(store->flush().ok());
    store->record_finished(1, TaskState::kSucceeded, 10, segments_of({std::string(64 << 20, 'c')}), "");
  }  // closed without sync(): the finish is dropped, as a crash would drop it
  EXPECT_TRUE(result_files(o).empty());
  auto store = open_ok(o, 5'000);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->lost_at_open(), 1u);
  EXPECT_EQ(get_ok(*store, 1).state, TaskState::kLost);
}

TEST(TaskStore, SigkillWhileAResultFileIsPendingLosesOnlyThatTask) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.inline_limit = 1024;
  constexpr std::size_t kBig = 96u << 20;
  int report[2];
  ASSERT_EQ(::pipe(report), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(report[0]);
    auto opened = TaskStore::open(o, 1);
    if (!opened.ok()) child_exit(false);
    TaskStore& store = **opened;
    for (std::uint64_t id = 1; id <= 3; ++id) store.record_submitted(submitted(id, "alice"));
    store.record_finished(1, TaskState::kSucceeded, 10, segments_of({std::string(kBig, 'k')}), "");
    store.record_finished(2, TaskState::kSucceeded, 11, segments_of({"two"}), "");
    if (!store.flush().ok()) child_exit(false);
    // Tell the parent whether 1's finish was committed (its file may, rarely, have been
    // written already on a fast machine), then die before any later flush.
    const char pending = static_cast<char>('0' + store.pending_writes());
    if (::write(report[1], &pending, 1) != 1) child_exit(false);
    ::raise(SIGKILL);
    child_exit(false);
  }
  ::close(report[1]);
  char pending = 0;
  ASSERT_EQ(::read(report[0], &pending, 1), 1);
  ::close(report[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;

  EXPECT_EQ(sql_text(o.path, "PRAGMA integrity_check"), "ok");
  auto store = open_ok(o, 9'000);
  ASSERT_TRUE(store);
  EXPECT_EQ(get_ok(*store, 2).state, TaskState::kSucceeded);  // committed though 1 was pending
  EXPECT_EQ(get_ok(*store, 3).state, TaskState::kLost);
  if (pending == '1') {
    EXPECT_EQ(store->lost_at_open(), 2u);
    EXPECT_EQ(get_ok(*store, 1).state, TaskState::kLost);
    EXPECT_TRUE(result_files(o).empty()) << "a pending file survived the reopen";
  } else {
    ASSERT_EQ(pending, '0');
    EXPECT_EQ(store->lost_at_open(), 1u);
    auto res = store->result(1);
    ASSERT_TRUE(res.ok()) << res.status().to_string();
    EXPECT_EQ((*res)[0].size(), kBig);
    EXPECT_EQ(result_files(o), std::vector<std::string>{"1.res"});
  }
}

// ---- read-only and full disks. Root ignores file modes, so for root these tests use a
// private mount namespace (read-only bind mount, tiny tmpfs); they skip where that is denied.

// Spooling (docs/protocol.md "Relaying a large reply"): a result written while it arrives.
// Waits for the spool's close to report (it runs on the spool thread).
Status close_and_wait(ResultSpool& spool) {
  std::promise<Status> written;
  spool.close([&](const Status& st) { written.set_value(st); });
  auto f = written.get_future();
  if (f.wait_for(std::chrono::seconds(30)) != std::future_status::ready) return deadline_exceeded("close hung");
  return f.get();
}

// Every segment, back to back, read from `file` in pieces of `piece` bytes.
std::string read_in_pieces(const ResultFile& file, std::size_t piece) {
  std::string out;
  for (std::uint64_t at = 0; at < file.total_bytes(); at += piece) {
    auto part = file.read(at, static_cast<std::size_t>(std::min<std::uint64_t>(piece, file.total_bytes() - at)));
    EXPECT_TRUE(part.ok()) << part.status().to_string();
    if (!part.ok()) break;
    out += part->to_string();
  }
  return out;
}

TEST(TaskStore, ASpooledResultIsWrittenAsItArrivesAndReadBackInParts) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.inline_limit = 1024;
  const std::string head = "meta", body(3000, 'b'), tail(5000, 't');
  {
    auto store = open_ok(o);
    ASSERT_TRUE(store);
    store->record_submitted(submitted(1, "alice"));
    store->record_started(1, 3, 150);
    auto spool = store->spool_result(1, {head.size(), body.size(), tail.size()});
    ASSERT_TRUE(spool.ok()) << spool.status().to_string();
    // Each part is released once written, on the spool thread: what paces the sender.
    std::atomic<int> released{0};
    const std::string all = head + body + tail;
    for (std::size_t at = 0; at < all.size(); at += 1000) {
      SharedBytes copy = SharedBytes::copy_of(all.substr(at, 1000));
      std::byte* data = copy.data();
      const std::size_t size = copy.size();
      (*spool)->append(SharedBytes::adopt(data, size, [keep = std::move(copy), &released]() mutable {
        keep = {};
        ++released;
      }));
    }
    Status st = close_and_wait(**spool);
    ASSERT_TRUE(st.ok()) << st.to_string();
    EXPECT_EQ(released.load(), 9);
    // Written but not recorded: the task is still running.
    EXPECT_EQ(get_ok(*store, 1).state, TaskState::kRunning);
    EXPECT_EQ(read_in_pieces(*(*spool)->file(), 700), all);

    store->record_spooled(1, TaskState::kSucceeded, 200, *spool, "");
    // Pending: read from the spool's file, whole or in parts.
    auto pending = store->result(1);
    ASSERT_TRUE(pending.ok()) << pending.status().to_string();
    EXPECT_EQ(strings_of(*pending), (std::vector<std::string>{head, body, tail}));
    ASSERT_TRUE(store->sync().ok());
    EXPECT_EQ(store->pending_writes(), 0u);
    EXPECT_EQ(result_files(o), std::vector<std::string>{"1.res"});
    TaskRecord r = get_ok(*store, 1);
    EXPECT_EQ(r.state, TaskState::kSucceeded);
    EXPECT_EQ(r.result_bytes, all.size());
    EXPECT_EQ(store->stored_result_bytes(), all.size());
  }
  // After a restart: the committed file, opened for reading in parts and whole.
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  auto stored = store->result_body(1);
  ASSERT_TRUE(stored.ok()) << stored.status().to_string();
  const auto& file = stored->file;
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->sizes(), (std::vector<std::uint64_t>{head.size(), body.size(), tail.size()}));
  EXPECT_EQ(read_in_pieces(*file, 4096), head + body + tail);
  EXPECT_EQ(file->read(8000, 100).status().code(), StatusCode::kInvalidArgument) << "past the end";
  auto whole = store->result(1);
  ASSERT_TRUE(whole.ok()) << whole.status().to_string();
  EXPECT_EQ(strings_of(*whole), (std::vector<std::string>{head, body, tail}));
  // A small result lies in the database: no file to open.
  store->record_submitted(submitted(2, "alice"));
  store->record_finished(2, TaskState::kSucceeded, 10, segments_of({"small"}), "");
  auto small = store->result_body(2);
  ASSERT_TRUE(small.ok()) << small.status().to_string();
  EXPECT_EQ(small->file, nullptr);
  EXPECT_EQ(strings_of(small->segments), std::vector<std::string>{"small"});
  EXPECT_EQ(store->result_body(99).status().code(), StatusCode::kNotFound);
  // A damaged file (cut short) is data loss, not an over-read.
  store.reset();
  fs::resize_file(o.path + ".results/1.res", 100);
  store = open_ok(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->result_body(1).status().code(), StatusCode::kDataLoss);
}

TEST(TaskStore, SpoolsThatAreSmallAbandonedOrNeverRecordedLeaveNoFile) {
  TempDir dir;
  auto o = options_in(dir.path());
  o.inline_limit = 1024;
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  for (std::uint64_t id = 1; id <= 4; ++id) store->record_submitted(submitted(id, "alice"));
  EXPECT_EQ(store->spool_result(1, {10, 20}).status().code(), StatusCode::kFailedPrecondition)
      << "a result within inline_limit is kept whole";
  {
    auto spool = store->spool_result(2, {4, 4000});
    ASSERT_TRUE(spool.ok()) << spool.status().to_string();
    (*spool)->append(SharedBytes::copy_of(std::string(2000, 'x')));
    (*spool)->abandon();
  }
  {
    auto spool = store->spool_result(3, {4, 4000});
    ASSERT_TRUE(spool.ok());
    (*spool)->append(SharedBytes::copy_of(std::string(4004, 'y')));
    ASSERT_TRUE(close_and_wait(**spool).ok());
  }  // written, never recorded (the hub went another way): deleted with the spool
  // Closed short: reported, and recording it records a failure instead.
  auto spool = store->spool_result(4, {4, 4000});
  ASSERT_TRUE(spool.ok());
  (*spool)->append(SharedBytes::copy_of(std::string(100, 'z')));
  Status st = close_and_wait(**spool);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("100 of 4004"), std::string::npos) << st.to_string();
  store->record_spooled(4, TaskState::kSucceeded, 30, *spool, "");
  spool->reset();
  ASSERT_TRUE(store->sync().ok());
  TaskRecord r4 = get_ok(*store, 4);
  EXPECT_EQ(r4.state, TaskState::kFailed);
  EXPECT_NE(r4.error.find("not stored whole"), std::string::npos) << r4.error;
  EXPECT_TRUE(result_files(o).empty()) << result_files(o).size();
}

TEST(TaskStore, ReadOnlyStateDirectoryIsAClearError) {
  TempDir dir;
  auto o = options_in(dir.path());
  {
    auto store = open_ok(o);
    ASSERT_TRUE(store);
    store->record_submitted(submitted(1, "alice"));
    ASSERT_TRUE(store->flush().ok());
  }
  const std::string state = dir.path() + "/state";
  bool mounted = false;
  if (::geteuid() == 0) {
    if (!private_mounts()) GTEST_SKIP() << "root without mount rights: cannot make a read-only directory";
    ASSERT_EQ(::mount(state.c_str(), state.c_str(), nullptr, MS_BIND, nullptr), 0);
    mounted = true;
    ASSERT_EQ(::mount(nullptr, state.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr), 0)
        << std::strerror(errno);
  } else {
    ASSERT_EQ(::chmod(state.c_str(), 0500), 0);
    ASSERT_EQ(::chmod(o.path.c_str(), 0400), 0);
  }
  auto existing = TaskStore::open(o, 1);
  ASSERT_FALSE(existing.ok());
  EXPECT_EQ(existing.status().code(), StatusCode::kFailedPrecondition) << existing.status().to_string();
  EXPECT_NE(existing.status().message().find("read-only"), std::string::npos) << existing.status().to_string();
  auto other = o;
  other.path = state + "/other.sqlite";
  auto fresh = TaskStore::open(other, 1);
  ASSERT_FALSE(fresh.ok());
  EXPECT_EQ(fresh.status().code(), StatusCode::kFailedPrecondition) << fresh.status().to_string();

  if (mounted) {
    ASSERT_EQ(::umount(state.c_str()), 0);
  } else {
    ::chmod(state.c_str(), 0700);
    ::chmod(o.path.c_str(), 0600);
  }
  EXPECT_EQ(sql_text(o.path, "PRAGMA integrity_check"), "ok");
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  EXPECT_TRUE(store->get(1)->has_value());
}

TEST(TaskStore, DiskFullIsReportedAndNothingIsCorruptedOrLost) {
  if (!private_mounts()) GTEST_SKIP() << "needs a private mount namespace (root) for a small tmpfs";
  TempDir dir;
  const std::string disk = dir.path() + "/disk";
  SmallDisk small_disk(disk, "1m");
  ASSERT_TRUE(small_disk.mounted()) << small_disk.error();

  TaskStoreOptions o;
  o.path = disk + "/tasks.sqlite";
  o.inline_limit = 32 << 10;
  {
    auto store = open_ok(o);
    ASSERT_TRUE(store);
    for (std::uint64_t id = 1; id <= 10; ++id) {
      store->record_submitted(submitted(id, "alice"));
      store->record_finished(id, TaskState::kSucceeded, 10, segments_of({"early" + std::to_string(id)}), "");
    }
    ASSERT_TRUE(store->flush().ok());

    // Fill the disk.
    const std::string filler = disk + "/filler";
    ASSERT_EQ(small_disk.fill("filler"), filler);
    // The database's own write fails (SQLITE_FULL at commit) ...
    for (std::uint64_t id = 11; id <= 60; ++id) {
      store->record_submitted(submitted(id, "alice"));
      store->record_finished(id, TaskState::kSucceeded, 20, segments_of({std::string(16 << 10, 'L')}), "");
    }
    Status st = store->flush();
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.to_string();
    EXPECT_NE(st.message().find("disk full"), std::string::npos) << st.to_string();
    EXPECT_NE(st.message().find("commit"), std::string::npos) << st.to_string();
    EXPECT_EQ(store->pending_writes(), 100u);  // kept for the next try
    // ... and so does a result file (ENOSPC; written by the store's thread, reported by the
    // flush after it, which sync() waits for).
    store->record_submitted(submitted(61, "alice"));
    store->record_finished(61, TaskState::kSucceeded, 20, segments_of({std::string(100 << 10, 'F')}), "");
    st = store->sync();
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.to_string();
    EXPECT_NE(st.message().find("result file"), std::string::npos) << st.to_string();
    EXPECT_EQ(store->pending_writes(), 102u);

    // Reads of the tasks recorded meanwhile answer from memory, without waiting for the disk.
    const auto started = std::chrono::steady_clock::now();
    EXPECT_EQ(get_ok(*store, 60).state, TaskState::kSucceeded);
    auto in_memory = store->result(60);
    ASSERT_TRUE(in_memory.ok()) << in_memory.status().to_string();
    EXPECT_EQ((*in_memory)[0].size(), 16u << 10);
    auto big_in_memory = store->result(61);
    ASSERT_TRUE(big_in_memory.ok()) << big_in_memory.status().to_string();
    EXPECT_EQ((*big_in_memory)[0].size(), 100u << 10);
    EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(1));
    // New tasks are still accepted: their ids are reserved and memory has room.
    EXPECT_TRUE(store->room_for_tasks(store->next_task_id(), 1).ok());

    // Still readable: committed records, nothing half-written.
    EXPECT_EQ(get_ok(*store, 3).state, TaskState::kSucceeded);
    auto early = store->result(3);
    ASSERT_TRUE(early.ok()) << early.status().to_string();
    EXPECT_EQ(strings_of(*early), std::vector<std::string>{"early3"});
    auto q = store->query({});
    ASSERT_TRUE(q.ok()) << q.status().to_string();
    EXPECT_EQ(q->size(), 10u);
    EXPECT_FALSE(fs::exists(o.path + ".results/61.res"));
    // A failed flush hands the file to the writer again, which may be writing its .tmp at this
    // moment (and removes it when that fails): only such a file may be there now.
    for (const auto& e : fs::directory_iterator(o.path + ".results")) {
      if (!e.path().filename().string().starts_with("61-") || e.path().extension() != ".tmp") {
        ADD_FAILURE() << "left behind: " << e.path();
      }
    }

    // Space comes back: the kept writes go in (the file is written again).
    fs::remove(filler);
    Status again = store->sync();
    ASSERT_TRUE(again.ok()) << again.to_string();
    EXPECT_EQ(store->pending_writes(), 0u);
    auto late = store->result(60);
    ASSERT_TRUE(late.ok()) << late.status().to_string();
    EXPECT_EQ((*late)[0].size(), 16u << 10);
    auto file = store->result(61);
    ASSERT_TRUE(file.ok()) << file.status().to_string();
    EXPECT_EQ((*file)[0].size(), 100u << 10);
    // Settled: every file renamed into place, no temporary one left.
    for (const auto& e : fs::directory_iterator(o.path + ".results")) {
      EXPECT_NE(e.path().extension(), ".tmp") << "left behind: " << e.path();
    }
  }
  EXPECT_EQ(sql_text(o.path, "PRAGMA integrity_check"), "ok");
  EXPECT_EQ(sql_text(o.path, "SELECT COUNT(*) FROM tasks"), "61");
}

TEST(TaskStore, StoppingOnAFullDiskLeavesEveryHandedOutIdLostNeverUnknown) {
  if (!private_mounts()) GTEST_SKIP() << "needs a private mount namespace (root) for a small tmpfs";
  TempDir dir;
  const std::string disk = dir.path() + "/disk";
  SmallDisk small_disk(disk, "1m");
  ASSERT_TRUE(small_disk.mounted()) << small_disk.error();

  TaskStoreOptions o;
  o.path = disk + "/tasks.sqlite";
  o.max_pending_writes = 100;
  o.max_pending_result_bytes = 1 << 20;
  const std::string filler = disk + "/filler";
  std::uint64_t handed_out_until = 0;
  {
    auto store = open_ok(o);
    ASSERT_TRUE(store);
    for (std::uint64_t id = 1; id <= 10; ++id) {
      store->record_submitted(submitted(id, "alice"));
      store->record_finished(id, TaskState::kSucceeded, 10, segments_of({"early"}), "");
    }
    ASSERT_TRUE(store->flush().ok());
    ASSERT_EQ(small_disk.fill("filler"), filler);
    std::uint64_t id = store->next_task_id();
    EXPECT_EQ(id, 11u);
    // The hub asks before it hands out ids; while flushes fail, half of the pending bound is
    // kept for the tasks already accepted, and beyond it new tasks are refused.
    for (; store->room_for_tasks(id, 1).ok(); ++id) {
      store->record_submitted(submitted(id, "alice"));
      if (id > 11) store->record_finished(id, TaskState::kSucceeded, 20, segments_of({std::string(8 << 10, 'x')}), "");
      (void)store->flush();
    }
    // A result beyond the pending-bytes bound is not kept, but its task still ends, with why.
    store->record_finished(11, TaskState::kSucceeded, 30, segments_of({std::string(2 << 20, 'y')}), "");
    TaskRecord eleven = get_ok(*store, 11);
    EXPECT_EQ(eleven.state, TaskState::kFailed);
    EXPECT_NE(eleven.error.find("not stored"), std::string::npos) << eleven.error;
    EXPECT_EQ(store->dropped_writes(), 1u);
    EXPECT_GT(id, 11u);
    Status refused = store->room_for_tasks(id, 1);
    EXPECT_EQ(refused.code(), StatusCode::kResourceExhausted);
    EXPECT_NE(refused.message().find("disk full"), std::string::npos) << refused.to_string();
    EXPECT_EQ(get_ok(*store, id - 1).state, TaskState::kSucceeded);  // from memory
    EXPECT_FALSE(store->sync().ok());
    handed_out_until = id;
  }  // stopped with the disk full: the pending writes are gone
  fs::remove(filler);
  {
    auto store = open_ok(o, 77'000);
    ASSERT_TRUE(store);
    for (std::uint64_t id = 1; id <= 10; ++id) EXPECT_EQ(get_ok(*store, id).state, TaskState::kSucceeded) << id;
    for (std::uint64_t id = 11; id < handed_out_until; ++id) {
      TaskRecord r = get_ok(*store, id);
      EXPECT_EQ(r.state, TaskState::kLost) << id;
      EXPECT_EQ(r.completed_us, 77'000) << id;
    }
    EXPECT_GE(store->next_task_id(), handed_out_until);
    const std::uint64_t next = store->next_task_id();
    store->record_submitted(submitted(next, "alice"));
    ASSERT_TRUE(store->sync().ok());
  }  // a clean close: the unused reservation is given back
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->lost_at_open(), 1u);  // the task submitted above never finished
  EXPECT_FALSE(store->get(store->next_task_id())->has_value());
  EXPECT_EQ(get_ok(*store, handed_out_until - 1).state, TaskState::kLost);
}

TEST(TaskStore, ACleanCloseLosesNoIdsAndIdsContinue) {
  TempDir dir;
  auto o = options_in(dir.path());
  {
    auto store = open_ok(o);
    ASSERT_TRUE(store);
    for (std::uint64_t id = 1; id <= 3; ++id) store->record_submitted(submitted(id, "alice"));
    for (std::uint64_t id = 1; id <= 3; ++id) store->record_finished(id, TaskState::kSucceeded, 5, {}, "");
    ASSERT_TRUE(store->sync().ok());
  }
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->lost_at_open(), 0u);
  EXPECT_EQ(store->next_task_id(), 4u);
  EXPECT_FALSE(store->get(4)->has_value());
  EXPECT_FALSE(store->get(1000)->has_value());
  EXPECT_EQ(get_ok(*store, 3).state, TaskState::kSucceeded);
}

// Every fixture kept in tests/fixtures (one per format version, written by that version's
// make_task_store_fixture) opens with this code, and every owner reads every one of its
// results, and sees none of the other owner's tasks.
TEST(TaskStore, EveryKeptFixtureOpensAndEachOwnerReadsAllItsResults) {
  int fixtures = 0;
  for (const auto& entry : fs::directory_iterator(TESTUDO_FIXTURES_DIR)) {
    if (!entry.path().filename().string().starts_with("store-v")) continue;
    SCOPED_TRACE(entry.path().string());
    ++fixtures;
    TempDir dir;
    auto o = options_in(dir.path());
    o.max_age = std::chrono::seconds(100LL * 365 * 24 * 3600);
    fs::create_directories(dir.path() + "/state");
    fs::permissions(dir.path() + "/state", fs::perms::owner_all);
    fs::copy(entry.path(), dir.path() + "/state", fs::copy_options::recursive);
    auto store = open_ok(o, fixture::kReopenedUs + 1'000'000);
    ASSERT_TRUE(store);
    EXPECT_EQ(store->lost_at_open(), 0u);  // the fixture's lost tasks were marked when it was written
    for (const char* owner : {fixture::kOwnerA, fixture::kOwnerB}) {
      SCOPED_TRACE(owner);
      std::vector<std::uint64_t> expected_ids;
      for (const fixture::FixtureTask& t : fixture::fixture_tasks()) {
        if (std::string_view(t.owner) != owner) continue;
        expected_ids.push_back(t.id);
        const TaskRecord r = get_ok(*store, t.id);
        EXPECT_EQ(r.owner, owner);
        EXPECT_EQ(r.state, t.state) << "task " << t.id;
        if (t.state == TaskState::kLost) {
          EXPECT_EQ(r.error, "controller stopped before the task finished");
          continue;
        }
        EXPECT_EQ(r.error, t.error);
        EXPECT_EQ(r.engine, std::optional<std::uint32_t>(t.engine));
        auto result = store->result(t.id);
        ASSERT_TRUE(result.ok()) << "task " << t.id << ": " << result.status().to_string();
        EXPECT_EQ(strings_of(*result), t.result) << "task " << t.id;
      }
      auto mine = store->query({.owner = std::string(owner)});
      ASSERT_TRUE(mine.ok()) << mine.status().to_string();
      std::vector<std::uint64_t> ids;
      for (const TaskRecord& r : *mine) ids.push_back(r.task_id);
      EXPECT_EQ(ids, expected_ids);  // all of its own, none of the other owner's
    }
    // A new task after the upgrade continues the ids (no reuse of a fixture's id).
    EXPECT_GT(store->next_task_id(), 9u);
  }
  EXPECT_GE(fixtures, 1) << "no fixtures in " << TESTUDO_FIXTURES_DIR;
}

TEST(TaskStore, RefusesANewerFormatNamingBothVersionsAndLeavesItAlone) {
  TempDir dir;
  auto o = options_in(dir.path());
  {
    auto store = open_ok(o);
    store->record_submitted(submitted(1, "alice"));
    ASSERT_TRUE(store->sync().ok());
  }
  sql_text(o.path, "PRAGMA user_version = 2");
  ASSERT_EQ(sql_text(o.path, "PRAGMA user_version"), "2");
  auto newer = TaskStore::open(o, 2'000'000);
  ASSERT_FALSE(newer.ok());
  EXPECT_EQ(newer.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(newer.status().message().find("format version 2"), std::string::npos) << newer.status().message();
  EXPECT_NE(newer.status().message().find("up to 1"), std::string::npos) << newer.status().message();
  EXPECT_NE(newer.status().message().find(o.path), std::string::npos) << newer.status().message();
  EXPECT_EQ(sql_text(o.path, "PRAGMA user_version"), "2");
  EXPECT_EQ(sql_text(o.path, "SELECT state FROM tasks WHERE task_id = 1"), "0");  // not marked lost
}

TEST(TaskStore, AnUnversionedStoreOfTodaysTablesIsVersion1AndAForeignDatabaseIsRefused) {
  TempDir dir;
  auto o = options_in(dir.path());
  {
    auto store = open_ok(o);
    store->record_submitted(submitted(1, "alice"));
    store->record_finished(1, TaskState::kSucceeded, 200, segments_of({"kept"}), "");
    ASSERT_TRUE(store->sync().ok());
  }
  sql_text(o.path, "PRAGMA user_version = 0");
  {
    auto store = open_ok(o);
    ASSERT_TRUE(store);
    auto result = store->result(1);
    ASSERT_TRUE(result.ok()) << result.status().to_string();
    EXPECT_EQ(strings_of(*result), std::vector<std::string>{"kept"});
  }
  EXPECT_EQ(sql_text(o.path, "PRAGMA user_version"), "1");

  fs::remove(o.path);
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(o.path.c_str(), &db), SQLITE_OK);
    EXPECT_EQ(sqlite3_exec(db, "CREATE TABLE photos(id INTEGER PRIMARY KEY, jpeg BLOB)", nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  auto foreign = TaskStore::open(o, 1);
  ASSERT_FALSE(foreign.ok());
  EXPECT_EQ(foreign.status().code(), StatusCode::kDataLoss) << foreign.status().to_string();
  EXPECT_EQ(sql_text(o.path, "SELECT group_concat(name) FROM sqlite_schema"), "photos");
}

// A disk that fills while a result is spooled: the close says so (the sender fails the task
// with the reason), the half-written file is gone, and while flushes fail no spool starts.
TEST(TaskStore, ADiskFullWhileSpoolingIsReportedAndLeavesNoFile) {
  if (!private_mounts()) GTEST_SKIP() << "needs a private mount namespace (root) for a small tmpfs";
  TempDir dir;
  const std::string disk = dir.path() + "/disk";
  SmallDisk small_disk(disk, "2m");
  ASSERT_TRUE(small_disk.mounted()) << small_disk.error();
  TaskStoreOptions o;
  o.path = disk + "/tasks.sqlite";
  o.inline_limit = 32 << 10;
  auto store = open_ok(o);
  ASSERT_TRUE(store);
  store->record_submitted(submitted(1, "alice"));
  ASSERT_TRUE(store->flush().ok());
  const std::uint64_t size = 4 << 20;  // twice the disk
  auto spool = store->spool_result(1, {4, size});
  ASSERT_TRUE(spool.ok()) << spool.status().to_string();
  (*spool)->append(SharedBytes::copy_of(std::string(4, 'h')));
  for (std::uint64_t at = 0; at < size; at += 1 << 20) (*spool)->append(SharedBytes::copy_of(std::string(1 << 20, 'd')));
  Status st = close_and_wait(**spool);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.to_string();
  EXPECT_TRUE(result_files(o).empty()) << "the half-written file stays behind";
  // The disk is full for the database too: once a flush failed, spooling is refused at once.
  const std::string filler = disk + "/filler";
  ASSERT_EQ(small_disk.fill("filler"), filler);
  for (std::uint64_t id = 2; id <= 200; ++id) store->record_submitted(submitted(id, std::string(200, 'o')));
  if (!store->flush().ok()) {
    EXPECT_EQ(store->spool_result(2, {4, size}).status().code(), StatusCode::kUnavailable);
  }
  ::unlink(filler.c_str());
  EXPECT_TRUE(store->sync().ok());
}

}  // namespace
}  // namespace testudo::controller
