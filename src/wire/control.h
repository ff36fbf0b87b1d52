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

// Which outcomes of the tasks in `after` or `follow` meet the dependency (ipyparallel's
// Dependency): every task or any one, counting those that succeeded and/or those that failed.
struct DependencyRule {
  bool all = true;
  bool success = true;
  bool failure = false;

  bool operator==(const DependencyRule&) const = default;
};

// Envelope::text of a load-balanced request: how the controller schedules it. Dependencies
// are task ids (from kSubmitted). The rules travel only when one is not the default, so the
// encoding of a request without them is what it always was.
struct TaskOptions {
  std::uint32_t retries = 0;      // resubmissions after an engine dies under it
  std::uint32_t timeout_ms = 0;   // for dependencies to be met; 0: no limit
  std::vector<std::uint64_t> after;
  std::vector<std::uint64_t> follow;
  DependencyRule after_rule;
  DependencyRule follow_rule;

  bool operator==(const TaskOptions&) const = default;
};
std::string encode_task_options(const TaskOptions& options);
StatusOr<TaskOptions> decode_task_options(std::string_view text);

// kWelcome's Envelope::text: what the controller accepts from this peer, so that the peer
// refuses a message beyond it alone, with the limit named, instead of losing its connection
// over it. Empty (a controller that says nothing): wire::Limits' defaults.
struct WelcomeTerms {
  std::uint64_t max_message_bytes = 4ull << 30;

  bool operator==(const WelcomeTerms&) const = default;
};
std::string encode_welcome_terms(const WelcomeTerms& terms);
StatusOr<WelcomeTerms> decode_welcome_terms(std::string_view text);

// kAbort and kSubmitted bodies: task ids.
SharedBytes encode_ids(const std::vector<std::uint64_t>& ids);

// Why a request cannot go to engine `id`, in the controller's words, when the cluster has
// given out ids below `next_id` (ids are never given twice): gone, or never there. The
// controller answers with it; a sealing client, which cannot seal for an engine the
// controller no longer lists, says the same before sending.
std::string no_engine_text(std::uint32_t id, std::uint32_t next_id);
StatusOr<std::vector<std::uint64_t>> decode_ids(const SharedBytes& segment);

}  // namespace testudo::wire
