// Decoders of the JSON control requests the controller reads from authenticated clients:
// result queries (kDbQuery) and key administration (kKeyAdmin). Strict: unknown keys, wrong
// types and out-of-range values are kInvalidArgument with a message naming the field, never an
// exception or a silently widened query. Pure functions; fuzzed (fuzz/control_request_fuzz.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "controller/task_store.h"
#include "testudo/status.h"

namespace testudo::controller {

// kDbQuery's filter: {"states": ["succeeded", ...], "after_task_id": n, "submitted_after":
// unix seconds, "limit": n}, every key optional; "" means {}.
struct ResultQuery {
  std::vector<TaskState> states;  // empty: any state
  std::uint64_t after_task_id = 0;
  std::optional<std::int64_t> submitted_after_us;
  std::size_t limit = 1000;
};
inline constexpr std::size_t kMaxQueryLimit = 100'000;  // larger limits are lowered to this
StatusOr<ResultQuery> decode_result_query(std::string_view json);

// kKeyAdmin: {"action": "list"|"show"|"accept"|"reject"|"revoke", "who": fingerprint or prefix}.
struct KeyAdminRequest {
  enum class Action { kList, kShow, kAccept, kReject, kRevoke };
  Action action = Action::kList;
  std::string who;  // empty for list
};
inline constexpr std::size_t kMaxKeyAdminWhoBytes = 128;
StatusOr<KeyAdminRequest> decode_key_admin_request(std::string_view json);
std::string_view key_action_name(KeyAdminRequest::Action action);

}  // namespace testudo::controller
