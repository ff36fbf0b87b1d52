#include "controller/requests.h"

#include <array>
#include <cmath>
#include <nlohmann/json.hpp>

namespace testudo::controller {
namespace {

constexpr std::array kStates{TaskState::kQueued, TaskState::kRunning, TaskState::kSucceeded,
                             TaskState::kFailed, TaskState::kAborted, TaskState::kLost};

constexpr std::array kActions{KeyAdminRequest::Action::kList, KeyAdminRequest::Action::kShow,
                              KeyAdminRequest::Action::kAccept, KeyAdminRequest::Action::kReject,
                              KeyAdminRequest::Action::kRevoke};

StatusOr<nlohmann::json> parse_object(std::string_view json, std::string_view what) {
  auto j = nlohmann::json::parse(json.empty() ? std::string_view("{}") : json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument(std::string(what) + " must be a JSON object");
  return j;
}

// A short, printable rendering of a peer's string for an error message.
std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s.substr(0, 32)) out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  return out + (s.size() > 32 ? "…'" : "'");
}

}  // namespace

StatusOr<ResultQuery> decode_result_query(std::string_view json) {
  TESTUDO_ASSIGN_OR_RETURN(nlohmann::json j, parse_object(json, "a result query"));
  ResultQuery q;
  for (const auto& [key, value] : j.items()) {
    if (key == "states") {
      if (!value.is_array()) return invalid_argument("result query: \"states\" must be a list of state names");
      for (const auto& name : value) {
        if (!name.is_string()) return invalid_argument("result query: \"states\" must be a list of state names");
        const std::string text = name.get<std::string>();
        auto found = std::find_if(kStates.begin(), kStates.end(), [&](TaskState s) { return task_state_name(s) == text; });
        if (found == kStates.end()) {
          return invalid_argument("result query: unknown state " + quoted(text) +
                                  " (queued, running, succeeded, failed, aborted or lost)");
        }
        if (std::find(q.states.begin(), q.states.end(), *found) == q.states.end()) q.states.push_back(*found);
      }
    } else if (key == "after_task_id") {
      if (!value.is_number_unsigned()) return invalid_argument("result query: \"after_task_id\" must be a task id");
      q.after_task_id = value.get<std::uint64_t>();
    } else if (key == "submitted_after") {
      // Unix seconds, as ipyparallel's datetimes; bounded so the microseconds fit.
      if (!value.is_number() || !std::isfinite(value.get<double>()) || std::abs(value.get<double>()) > 1e11) {
        return invalid_argument("result query: \"submitted_after\" must be a time in seconds since 1970");
      }
      q.submitted_after_us = static_cast<std::int64_t>(value.get<double>() * 1e6);
    } else if (key == "limit") {
      if (!value.is_number_unsigned()) return invalid_argument("result query: \"limit\" must be a count");
      q.limit = static_cast<std::size_t>(std::min<std::uint64_t>(value.get<std::uint64_t>(), kMaxQueryLimit));
    } else {
      return invalid_argument("result query: unknown key " + quoted(key) +
                              " (states, after_task_id, submitted_after, limit)");
    }
  }
  return q;
}

std::string_view key_action_name(KeyAdminRequest::Action action) {
  switch (action) {
    case KeyAdminRequest::Action::kList: return "list";
    case KeyAdminRequest::Action::kShow: return "show";
    case KeyAdminRequest::Action::kAccept: return "accept";
    case KeyAdminRequest::Action::kReject: return "reject";
    case KeyAdminRequest::Action::kRevoke: return "revoke";
  }
  return "list";
}

StatusOr<KeyAdminRequest> decode_key_admin_request(std::string_view json) {
  TESTUDO_ASSIGN_OR_RETURN(nlohmann::json j, parse_object(json, "a key administration request"));
  KeyAdminRequest r;
  bool have_action = false;
  for (const auto& [key, value] : j.items()) {
    if (key == "action") {
      if (!value.is_string()) return invalid_argument("key administration: \"action\" must be a string");
      const std::string text = value.get<std::string>();
      auto found = std::find_if(kActions.begin(), kActions.end(), [&](auto a) { return key_action_name(a) == text; });
      if (found == kActions.end()) {
        return invalid_argument("unknown key action " + quoted(text) + ": list, show, accept, reject or revoke");
      }
      r.action = *found;
      have_action = true;
    } else if (key == "who") {
      if (!value.is_string() || value.get_ref<const std::string&>().size() > kMaxKeyAdminWhoBytes) {
        return invalid_argument("key administration: \"who\" must be a fingerprint or a prefix of one");
      }
      r.who = value.get<std::string>();
    } else {
      return invalid_argument("key administration: unknown key " + quoted(key) + " (action, who)");
    }
  }
  if (!have_action) return invalid_argument("key administration request must be a JSON object with an \"action\"");
  if (r.action != KeyAdminRequest::Action::kList && r.who.empty()) {
    return invalid_argument("key administration: '" + std::string(key_action_name(r.action)) + "' needs \"who\"");
  }
  return r;
}

}  // namespace testudo::controller
