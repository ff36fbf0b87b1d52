// JSON for files a person edits by hand (the policy, the user file, the token issuers): nlohmann keeps the last of
// duplicate keys silently, so `{"allow": [...], "allow": [...]}` would drop a rule without a
// word; these files refuse it instead. Include only from .cc files (nlohmann is private to
// testudo::auth). Thread-safe (no shared state).
#pragma once

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "testudo/status.h"

namespace testudo::auth {

// A string from a file for an error message: quoted, escaped, at most 80 bytes shown, never
// throwing on bad UTF-8.
inline std::string quoted_for_error(const std::string& s) {
  constexpr std::size_t kMax = 80;
  std::string shown = s.size() > kMax ? s.substr(0, kMax) : s;
  std::string out = nlohmann::json(shown).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > kMax) out.insert(out.size() - 1, "...");
  return out;
}

// "<path>: <what>", kInvalidArgument: errors that name where in the file they are ("<what>"
// alone for an empty path).
inline Status error_at(const std::string& path, const std::string& what) {
  return invalid_argument(path.empty() ? what : path + ": " + what);
}

// Refuses a key of `object` that is not in `known` (a typo must not be ignored silently).
inline Status check_keys(const std::string& path, const nlohmann::json& object,
                         std::initializer_list<std::string_view> known) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    if (std::find(known.begin(), known.end(), it.key()) != known.end()) continue;
    std::string list;
    for (auto k : known) list += (list.empty() ? "" : ", ") + std::string(k);
    return error_at(path, "unknown key " + quoted_for_error(it.key()) + " (known: " + list + ")");
  }
  return ok_status();
}

// Finds the first key seen twice in one object. The parser callback sees each key in the
// order read, and keys always belong to the innermost open object.
class DuplicateKeyCheck {
 public:
  bool operator()(int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    switch (event) {
      case nlohmann::json::parse_event_t::object_start:
        open_.emplace_back();
        break;
      case nlohmann::json::parse_event_t::object_end:
        if (!open_.empty()) open_.pop_back();
        break;
      case nlohmann::json::parse_event_t::key:
        if (!open_.empty() && parsed.is_string() && !open_.back().insert(parsed.get<std::string>()).second &&
            !duplicate_) {
          duplicate_ = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  }
  const std::optional<std::string>& duplicate() const { return duplicate_; }

 private:
  std::vector<std::unordered_set<std::string>> open_;
  std::optional<std::string> duplicate_;
};

// Parses `text`; kInvalidArgument "not valid JSON" or "duplicate key \"k\"".
inline StatusOr<nlohmann::json> parse_strict_json(std::string_view text) {
  // The callback is copied into the parser; it reports through this shared state.
  auto duplicates = std::make_shared<DuplicateKeyCheck>();
  nlohmann::json root = nlohmann::json::parse(
      text,
      [duplicates](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        return (*duplicates)(depth, event, parsed);
      },
      /*allow_exceptions=*/false);
  if (root.is_discarded()) return invalid_argument("not valid JSON");
  if (duplicates->duplicate()) return invalid_argument("duplicate key " + quoted_for_error(*duplicates->duplicate()));
  return root;
}

}  // namespace testudo::auth
