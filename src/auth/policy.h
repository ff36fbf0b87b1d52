// Authorization policy: which admitted identity may do which operation on which
// engine. Default deny: there are no deny rules, and a subject that no rule matches may do
// nothing at all.
//
// The policy file is JSON, parsed strictly: an unknown key, a duplicate key, a wrong type or
// an unknown operation is an error naming its JSON path, so a typo can never silently widen
// or narrow access. Example:
//
//   {
//     "version": 1,
//     "groups": {
//       "admins": ["sha256:3f1c...<64 lowercase hex>", "cn:alice"],
//       "analysts": ["cn:bob", "cn:carol"]
//     },
//     "rules": [
//       { "identities": ["group:admins"], "allow": ["*"] },
//       { "identities": ["group:analysts", "sha256:9ab0...<64 hex>"],
//         "allow": ["execute", "apply", "push", "pull", "abort", "interrupt", "status"],
//         "engines": { "ids": [0, 1], "tags": { "gpu": "yes" } } },
//       { "identities": ["*"], "allow": ["status"] }
//     ]
//   }
//
// Keys:
//   "version"  required, the integer 1 (kPolicyFormatVersion); checked before anything else,
//              so a policy for a newer testudo is refused as such.
//   "groups"   optional, name -> array of members. Members are "sha256:<64 lowercase hex>"
//              (a key fingerprint), "cn:<name>" (a certificate common name), an identity a
//              login proves ("user:<name>", "krb:<principal>", "token:<issuer>#<subject>") or
//              "login-group:<name>" (a group a login reports: the user file's groups, a
//              token's group claim). Groups are flat: a member "group:..." is an error.
//   "rules"    required, an array (at most 10,000) of objects with
//     "identities"  required, non-empty array of patterns: any group member above
//                   ("cn:<name>" matches Subject::name exactly, never an empty name, and never
//                   a login: a password user "alice" is "user:alice", not "cn:alice"),
//                   "group:<name>" (must be defined in "groups"), or "*" (any admitted
//                   identity).
//     "allow"       required, non-empty array of operation names (see operation_name) or "*"
//                   (every operation).
//     "engines"     optional: absent or "*" = every engine; otherwise an object with
//                   "ids" (non-empty array of engine ids) and/or "tags" (non-empty object of
//                   string -> string, all of which the engine must carry with those values).
//                   When both are given both must match. An empty object is an error.
//                   Ignored for operations that have no engine (status, shutdown, ...).
// Bounds: files over 1 MiB, more than 10,000 rules and identities (patterns or members)
// longer than 256 bytes are refused.
//
// Evaluation is cheap (the controller asks per request, up to ~50,000/s): groups are resolved
// at parse time, each rule keeps a bitmask of operations, and candidate rules are found
// through hash maps keyed by fingerprint and by name.
//
// Thread-safety: a Policy is immutable after parse(); const methods may be called from any
// number of threads at once. Replacing the policy (reload) is the owner's business.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "testudo/status.h"

namespace testudo::auth {

enum class Operation : std::uint8_t {
  kExecute,
  kApply,
  kPush,
  kPull,
  kAbort,
  kInterrupt,
  kShutdown,
  kStatus,
  kReadOthersResults,
  kKeyAdmin,
};
inline constexpr std::size_t kOperationCount = 10;

// "execute", "apply", "push", "pull", "abort", "interrupt", "shutdown", "status",
// "read_others_results", "keys".
std::string_view operation_name(Operation op);
// The inverse of operation_name; nullopt for anything else (including "*").
std::optional<Operation> operation_from_name(std::string_view name);

// Who is asking: an admitted peer.
struct Subject {
  std::string key_fingerprint;  // "sha256:<64 hex>", or a login's identity ("user:alice")
  std::string name;             // certificate CN, may be empty (always empty for a login)
  std::vector<std::string> login_groups;  // a login's groups (patterns "login-group:<name>")
};

// What the policy may know about an engine.
struct EngineFacts {
  std::uint32_t id = 0;
  std::map<std::string, std::string> tags;
};

// The "version" this code writes and reads; a newer one is refused naming it (docs/formats.md).
inline constexpr std::int64_t kPolicyFormatVersion = 1;
inline constexpr std::size_t kMaxPolicyBytes = 1 << 20;
inline constexpr std::size_t kMaxPolicyRules = 10'000;
inline constexpr std::size_t kMaxPolicyIdentityBytes = 256;

class Policy {
 public:
  // The empty policy: denies everything.
  Policy() = default;

  // Errors are kInvalidArgument (kResourceExhausted for the bounds) and name the JSON path:
  //   rules[2].allow[1]: unknown operation "exec" (known: execute, apply, ...)
  static StatusOr<Policy> parse(std::string_view json_text);

  // Reads and parses a policy file. Errors read "policy file <path>: <reason>". A missing
  // file is kNotFound. A file writable by group or others, or owned by someone other than
  // the effective user or root, is refused (kPermissionDenied): whoever can write the policy
  // owns the cluster.
  static StatusOr<Policy> load(const std::string& path);

  // The built-in policy used when no policy file is configured: the identities in `owners`
  // ("sha256:<hex>" fingerprints) may do everything; nobody else anything.
  static Policy owners_only(const std::vector<std::string>& owner_key_fingerprints);

  // Operations that have no engine (status, cluster shutdown, read_others_results, keys):
  // allowed if some rule matches the subject and lists `op`. Engine selectors are ignored.
  bool allows(const Subject& who, Operation op) const;
  // Operations on one engine: allowed if some rule matches the subject, lists `op`, and its
  // engine selector matches `engine`.
  bool allows(const Subject& who, Operation op, const EngineFacts& engine) const;

  // True if some rule grants `op` to `who` with no engine selector: then it is allowed on
  // every engine, present and future (the controller skips per-engine checks, and only this
  // grants whole-cluster shutdown).
  bool allows_on_every_engine(const Subject& who, Operation op) const;

  // Explains a denial for error messages and the audit log, e.g.
  //   no rule allows 'push' for sha256:ab12cd34ef56…(alice) on engine 3
  // `engine` may be null for operations without an engine. Policies hold no secrets, and
  // the message carries no engine tag values. (Asked about an allowed request, it says so.)
  std::string explain_denial(const Subject& who, Operation op, const EngineFacts* engine) const;

  std::size_t rule_count() const { return rules_.size(); }

 private:
  struct Rule {
    std::uint32_t operations = 0;  // bit i = Operation(i)
    bool every_engine = true;
    std::vector<std::uint32_t> engine_ids;  // sorted; empty = any id
    std::vector<std::pair<std::string, std::string>> engine_tags;  // all must match
  };

  bool engine_matches(const Rule& rule, const EngineFacts& engine) const;
  // Calls f(rule_index) for each rule whose identities match `who` (a rule may be visited
  // more than once); stops early when f returns true, and returns whether it did.
  template <typename F>
  bool any_matching_rule(const Subject& who, F&& f) const;

  std::vector<Rule> rules_;
  // Rules by identity. Each list is sorted and free of duplicates.
  std::vector<std::uint32_t> any_identity_rules_;
  std::unordered_map<std::string, std::vector<std::uint32_t>> rules_by_fingerprint_;
  std::unordered_map<std::string, std::vector<std::uint32_t>> rules_by_name_;
  // Union of the operations of the rules in each list (for operations without an engine).
  std::uint32_t any_identity_operations_ = 0;
  std::unordered_map<std::string, std::uint32_t> operations_by_fingerprint_;
  std::unordered_map<std::string, std::uint32_t> operations_by_name_;
  std::unordered_map<std::string, std::vector<std::uint32_t>> rules_by_login_group_;
  std::unordered_map<std::string, std::uint32_t> operations_by_login_group_;
};

}  // namespace testudo::auth
