// Control payloads the controller itself reads (unlike bodies, see body.h): scheduling
// options of load-balanced requests and id lists. Bounded and fuzzed like every decoder.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/shared_bytes.h"
#include "testudo/status.h"

namespace testudo::wire {

// Envelope::text of a load-balanced request: how the controller schedules it. Dependencies
// are task ids (from kSubmitted).
struct TaskOptions {
  std::uint32_t retries = 0;      // resubmissions after an engine dies under it
  std::uint32_t timeout_ms = 0;   // for dependencies to be met; 0: no limit
  std::vector<std::uint64_t> after;
  std::vector<std::uint64_t> follow;

  bool operator==(const TaskOptions&) const = default;
};
std::string encode_task_options(const TaskOptions& options);
StatusOr<TaskOptions> decode_task_options(std::string_view text);

// kAbort and kSubmitted bodies: task ids.
SharedBytes encode_ids(const std::vector<std::uint64_t>& ids);
StatusOr<std::vector<std::uint64_t>> decode_ids(const SharedBytes& segment);

}  // namespace testudo::wire
