// What the task store fixtures hold (tests/fixtures/store-v<N>/): the tasks that
// make_task_store_fixture writes and task_store_test expects to read back, one list for both.
//
// Two owners, each with finished, failed and lost tasks; results inline and in a file (the
// fixture is written with a small inline_limit), with several segments and an empty one.
// Never change an entry: a fixture already in the repository was written from this list, and
// every later format must still read it (docs/formats.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "controller/task_store.h"

namespace testudo::controller::fixture {

inline constexpr const char* kOwnerA = "sha256:aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11";
inline constexpr const char* kOwnerB = "sha256:bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22";
// Results bigger than this go to files in the fixture.
inline constexpr std::uint64_t kInlineLimit = 1024;
// When the fixture's first run ends and its second (which marks tasks lost) opens.
inline constexpr std::int64_t kReopenedUs = 1'800'000'000'000'000;

struct FixtureTask {
  std::uint64_t id;
  const char* owner;
  TaskState state;  // as the fixture holds it: unfinished tasks are kLost there
  std::uint32_t engine;
  std::vector<std::string> result;  // segments (finished tasks only)
  std::string error;
};

inline std::vector<FixtureTask> fixture_tasks() {
  const std::string big(3000, 'r');  // above kInlineLimit: a result file
  return {
      {1, kOwnerA, TaskState::kSucceeded, 0, {"header of task 1", "value 42"}, ""},
      {2, kOwnerA, TaskState::kFailed, 1, {"ZeroDivisionError: division by zero"}, "engine 1: error"},
      {3, kOwnerA, TaskState::kSucceeded, 0, {"big", big + "A"}, ""},
      {4, kOwnerA, TaskState::kLost, 1, {}, ""},
      {5, kOwnerB, TaskState::kSucceeded, 1, {"", "value of task 5"}, ""},
      {6, kOwnerB, TaskState::kFailed, 0, {"NameError: name 'x' is not defined"}, "engine 0: error"},
      {7, kOwnerB, TaskState::kSucceeded, 1, {big + "B"}, ""},
      {8, kOwnerB, TaskState::kLost, 0, {}, ""},
      {9, kOwnerB, TaskState::kAborted, 0, {}, "aborted by its owner"},
  };
}

}  // namespace testudo::controller::fixture
