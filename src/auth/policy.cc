#include "auth/policy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "auth/strict_json.h"

namespace testudo::auth {
namespace {

using nlohmann::json;

constexpr std::array<std::string_view, kOperationCount> kOperationNames = {
    "execute", "apply", "push", "pull", "abort", "interrupt", "shutdown", "status", "read_others_results", "keys",
};
constexpr std::uint32_t kAllOperations = (1u << kOperationCount) - 1;

std::uint32_t bit(Operation op) { return 1u << static_cast<unsigned>(op); }

std::string known_operations() {
  std::string out;
  for (auto name : kOperationNames) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out + ", *";
}

std::string quoted(const std::string& s) { return quoted_for_error(s); }

// A key from the file as a step in a JSON path: as is when plain, quoted otherwise.
std::string path_key(const std::string& key) {
  const bool plain = !key.empty() && key.size() <= 80 &&
                     key.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ==
                         std::string::npos;
  return plain ? key : quoted(key);
}

std::string type_name(const json& j) { return j.type_name(); }

// Identities a login proves: matched exactly, like key fingerprints.
constexpr std::array<std::string_view, 3> kLoginIdentityPrefixes = {"user:", "krb:", "token:"};


bool is_fingerprint(std::string_view s) {
  constexpr std::string_view kPrefix = "sha256:";
  if (s.size() != kPrefix.size() + 64 || s.substr(0, kPrefix.size()) != kPrefix) return false;
  return s.find_first_not_of("0123456789abcdef", kPrefix.size()) == std::string_view::npos;
}

// Checks what every identity string must satisfy, then its form. Rule identities may be
// "group:..." or "*"; group members (`in_group`) may not.
Status check_identity(const std::string& path, const json& j, bool in_group) {
  if (!j.is_string()) return error_at(path, "must be a string, not " + type_name(j));
  const auto& s = j.get_ref<const std::string&>();
  if (s.size() > kMaxPolicyIdentityBytes) {
    return error_at(path, "identity longer than " + std::to_string(kMaxPolicyIdentityBytes) + " bytes");
  }
  if (s.rfind("sha256:", 0) == 0) {
    if (!is_fingerprint(s)) return error_at(path, "bad fingerprint " + quoted(s) + " (expected sha256:<64 lowercase hex digits>)");
    return ok_status();
  }
  if (s.rfind("cn:", 0) == 0) {
    if (s.size() == 3) return error_at(path, "empty name in \"cn:\"");
    return ok_status();
  }
  // Identities proved by a login (login.h) and the groups a login reports.
  for (std::string_view prefix : kLoginIdentityPrefixes) {
    if (s.rfind(prefix, 0) == 0) {
      if (s.size() == prefix.size()) return error_at(path, "empty name in " + quoted(std::string(prefix)));
      if (prefix == "token:" && s.find('#') == std::string::npos) {
        return error_at(path, "bad token identity " + quoted(s) + " (expected \"token:<issuer>#<subject>\")");
      }
      return ok_status();
    }
  }
  if (s.rfind("login-group:", 0) == 0) {
    if (s.size() == 12) return error_at(path, "empty group name in \"login-group:\"");
    return ok_status();
  }
  if (s.rfind("group:", 0) == 0) {
    if (in_group) return error_at(path, "nested groups are not supported (" + quoted(s) + "); list its members instead");
    if (s.size() == 6) return error_at(path, "empty group name in \"group:\"");
    return ok_status();
  }
  if (s == "*" && !in_group) return ok_status();
  return error_at(path, "unknown identity " + quoted(s) + " (expected " + (in_group ? "" : "\"group:<name>\", \"*\", ") +
                            "\"sha256:<64 lowercase hex>\", \"cn:<name>\", \"user:<name>\", \"krb:<principal>\", "
                            "\"token:<issuer>#<subject>\" or \"login-group:<name>\")");
}

// Resolved members of one group, or of one rule's identity list.
struct Members {
  bool any = false;
  std::set<std::string> fingerprints;  // key fingerprints and login identities
  std::set<std::string> names;
  std::set<std::string> login_groups;
  void add(const std::string& identity) {
    if (identity.rfind("cn:", 0) == 0) {
      names.insert(identity.substr(3));
    } else if (identity.rfind("login-group:", 0) == 0) {
      login_groups.insert(identity.substr(12));
    } else {
      fingerprints.insert(identity);  // "sha256:", "user:", "krb:", "token:"
    }
  }
  void add_all(const Members& other) {
    fingerprints.insert(other.fingerprints.begin(), other.fingerprints.end());
    names.insert(other.names.begin(), other.names.end());
    login_groups.insert(other.login_groups.begin(), other.login_groups.end());
  }
};

}  // namespace

std::string_view operation_name(Operation op) {
  const auto i = static_cast<std::size_t>(op);
  return i < kOperationNames.size() ? kOperationNames[i] : std::string_view("unknown");
}

std::optional<Operation> operation_from_name(std::string_view name) {
  for (std::size_t i = 0; i < kOperationNames.size(); ++i) {
    if (kOperationNames[i] == name) return static_cast<Operation>(i);
  }
  return std::nullopt;
}

StatusOr<Policy> Policy::parse(std::string_view text) {
  if (text.size() > kMaxPolicyBytes) {
    return resource_exhausted("policy is " + std::to_string(text.size()) + " bytes, over the limit of " +
                              std::to_string(kMaxPolicyBytes));
  }
  auto parsed = parse_strict_json(text);
  if (!parsed.ok()) return parsed.status();
  json root = std::move(parsed).value();
  if (!root.is_object()) return invalid_argument("must be a JSON object, not " + type_name(root));
  // The version first: a newer format may have keys this code does not know, and its reader
  // must be told the file is newer, not that it has a typo (docs/formats.md).
  auto version = root.find("version");
  if (version == root.end()) return invalid_argument("version: missing (expected 1)");
  if (version->is_number_unsigned() && version->get<std::uint64_t>() > kPolicyFormatVersion) {
    return error_at("version", "format version " + version->dump() +
                                   " was written for a newer testudo; this one reads version " +
                                   std::to_string(kPolicyFormatVersion));
  }
  if (!version->is_number_integer() || version->get<std::int64_t>() != kPolicyFormatVersion) {
    return error_at("version", "unsupported version " + version->dump() + " (expected 1)");
  }
  if (auto st = check_keys("", root, {"version", "groups", "rules"}); !st.ok()) {
    return invalid_argument("top level: " + st.message());
  }

  // Groups, resolved to sets of fingerprints and names.
  std::map<std::string, Members> groups;
  if (auto it = root.find("groups"); it != root.end()) {
    if (!it->is_object()) return error_at("groups", "must be an object, not " + type_name(*it));
    for (auto g = it->begin(); g != it->end(); ++g) {
      const std::string path = "groups." + path_key(g.key());
      if (g.key().empty() || g.key().size() > kMaxPolicyIdentityBytes) {
        return error_at("groups", "group name must be 1.." + std::to_string(kMaxPolicyIdentityBytes) + " bytes");
      }
      if (!g->is_array()) return error_at(path, "must be an array of identities, not " + type_name(*g));
      Members members;
      for (std::size_t i = 0; i < g->size(); ++i) {
        const std::string member_path = path + "[" + std::to_string(i) + "]";
        TESTUDO_RETURN_IF_ERROR(check_identity(member_path, (*g)[i], /*in_group=*/true));
        members.add((*g)[i].get<std::string>());
      }
      groups.emplace(g.key(), std::move(members));
    }
  }

  auto rules = root.find("rules");
  if (rules == root.end()) return invalid_argument("rules: missing (an array of rules)");
  if (!rules->is_array()) return error_at("rules", "must be an array, not " + type_name(*rules));
  if (rules->size() > kMaxPolicyRules) {
    return resource_exhausted("rules: " + std::to_string(rules->size()) + " rules, over the limit of " +
                              std::to_string(kMaxPolicyRules));
  }

  Policy policy;
  std::map<std::string, std::set<std::uint32_t>> by_fingerprint;
  std::map<std::string, std::set<std::uint32_t>> by_name;
  std::map<std::string, std::set<std::uint32_t>> by_login_group;
  for (std::size_t r = 0; r < rules->size(); ++r) {
    const std::string path = "rules[" + std::to_string(r) + "]";
    const json& jr = (*rules)[r];
    if (!jr.is_object()) return error_at(path, "must be an object, not " + type_name(jr));
    TESTUDO_RETURN_IF_ERROR(check_keys(path, jr, {"identities", "allow", "engines"}));
    Rule rule;

    // identities
    auto ids = jr.find("identities");
    if (ids == jr.end()) return error_at(path, "missing \"identities\"");
    if (!ids->is_array() || ids->empty()) {
      return error_at(path + ".identities", "must be a non-empty array of identities");
    }
    Members members;
    for (std::size_t i = 0; i < ids->size(); ++i) {
      const std::string id_path = path + ".identities[" + std::to_string(i) + "]";
      TESTUDO_RETURN_IF_ERROR(check_identity(id_path, (*ids)[i], /*in_group=*/false));
      const auto& s = (*ids)[i].get_ref<const std::string&>();
      if (s == "*") {
        members.any = true;
      } else if (s.rfind("group:", 0) == 0) {
        auto g = groups.find(s.substr(6));
        if (g == groups.end()) return error_at(id_path, "undefined group " + quoted(s.substr(6)));
        members.add_all(g->second);
      } else {
        members.add(s);
      }
    }

    // allow
    auto allow = jr.find("allow");
    if (allow == jr.end()) return error_at(path, "missing \"allow\"");
    if (!allow->is_array() || allow->empty()) {
      return error_at(path + ".allow", "must be a non-empty array of operation names");
    }
    for (std::size_t i = 0; i < allow->size(); ++i) {
      const std::string op_path = path + ".allow[" + std::to_string(i) + "]";
      const json& jo = (*allow)[i];
      if (!jo.is_string()) return error_at(op_path, "must be a string, not " + type_name(jo));
      const auto& name = jo.get_ref<const std::string&>();
      if (name == "*") {
        rule.operations |= kAllOperations;
      } else if (auto op = operation_from_name(name)) {
        rule.operations |= bit(*op);
      } else {
        return error_at(op_path, "unknown operation " + quoted(name) + " (known: " + known_operations() + ")");
      }
    }

    // engines
    if (auto eng = jr.find("engines"); eng != jr.end()) {
      const std::string eng_path = path + ".engines";
      if (eng->is_string()) {
        if (eng->get_ref<const std::string&>() != "*") {
          return error_at(eng_path, "must be \"*\" or an object with \"ids\" and/or \"tags\"");
        }
      } else if (eng->is_object()) {
        if (eng->empty()) return error_at(eng_path, "empty object; omit \"engines\" or use \"*\" for every engine");
        TESTUDO_RETURN_IF_ERROR(check_keys(eng_path, *eng, {"ids", "tags"}));
        rule.every_engine = false;
        if (auto jids = eng->find("ids"); jids != eng->end()) {
          if (!jids->is_array() || jids->empty()) {
            return error_at(eng_path + ".ids", "must be a non-empty array of engine ids");
          }
          for (std::size_t i = 0; i < jids->size(); ++i) {
            const json& ji = (*jids)[i];
            if (!ji.is_number_unsigned() || ji.get<std::uint64_t>() > UINT32_MAX) {
              return error_at(eng_path + ".ids[" + std::to_string(i) + "]",
                              "must be an engine id (an integer in 0..4294967295), not " + ji.dump());
            }
            rule.engine_ids.push_back(static_cast<std::uint32_t>(ji.get<std::uint64_t>()));
          }
          std::sort(rule.engine_ids.begin(), rule.engine_ids.end());
          rule.engine_ids.erase(std::unique(rule.engine_ids.begin(), rule.engine_ids.end()), rule.engine_ids.end());
        }
        if (auto jtags = eng->find("tags"); jtags != eng->end()) {
          if (!jtags->is_object() || jtags->empty()) {
            return error_at(eng_path + ".tags", "must be a non-empty object of tag -> value strings");
          }
          for (auto t = jtags->begin(); t != jtags->end(); ++t) {
            if (!t->is_string()) {
              return error_at(eng_path + ".tags." + path_key(t.key()), "must be a string, not " + type_name(*t));
            }
            rule.engine_tags.emplace_back(t.key(), t->get<std::string>());
          }
        }
      } else {
        return error_at(eng_path, "must be \"*\" or an object, not " + type_name(*eng));
      }
    }

    const auto index = static_cast<std::uint32_t>(r);
    if (members.any) {
      policy.any_identity_rules_.push_back(index);
      policy.any_identity_operations_ |= rule.operations;
    }
    for (const auto& f : members.fingerprints) {
      by_fingerprint[f].insert(index);
      policy.operations_by_fingerprint_[f] |= rule.operations;
    }
    for (const auto& n : members.names) {
      by_name[n].insert(index);
      policy.operations_by_name_[n] |= rule.operations;
    }
    for (const auto& g : members.login_groups) {
      by_login_group[g].insert(index);
      policy.operations_by_login_group_[g] |= rule.operations;
    }
    policy.rules_.push_back(std::move(rule));
  }
  for (auto& [f, set] : by_fingerprint) policy.rules_by_fingerprint_.emplace(f, std::vector(set.begin(), set.end()));
  for (auto& [n, set] : by_name) policy.rules_by_name_.emplace(n, std::vector(set.begin(), set.end()));
  for (auto& [g, set] : by_login_group) policy.rules_by_login_group_.emplace(g, std::vector(set.begin(), set.end()));
  return policy;
}

StatusOr<Policy> Policy::load(const std::string& path) {
  const std::string what = "policy file " + path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return not_found(what + ": not found");
    return permission_denied(what + ": cannot open: " + std::strerror(err));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return internal_error(what + ": fstat: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return invalid_argument(what + ": not a regular file");
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return permission_denied(what + " is writable by others (mode " + mode + "); chmod 600 or 644 it");
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return permission_denied(what + " is owned by uid " + std::to_string(st.st_uid) +
                             ", neither this user nor root; whoever owns it can change the policy");
  }
  if (static_cast<std::uint64_t>(st.st_size) > kMaxPolicyBytes) {
    return resource_exhausted(what + ": " + std::to_string(st.st_size) + " bytes, over the limit of " +
                              std::to_string(kMaxPolicyBytes));
  }
  std::string text;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return internal_error(what + ": read: " + std::strerror(errno));
    }
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > kMaxPolicyBytes) return resource_exhausted(what + ": over the limit of " + std::to_string(kMaxPolicyBytes) + " bytes");
  }
  auto policy = parse(text);
  if (!policy.ok()) return policy.status().with_context(what);
  return policy;
}

Policy Policy::owners_only(const std::vector<std::string>& owners) {
  Policy policy;
  Rule rule;
  rule.operations = kAllOperations;
  policy.rules_.push_back(rule);
  for (const auto& f : owners) {
    policy.rules_by_fingerprint_[f] = {0};
    policy.operations_by_fingerprint_[f] = kAllOperations;
  }
  return policy;
}

template <typename F>
bool Policy::any_matching_rule(const Subject& who, F&& f) const {
  for (auto r : any_identity_rules_) {
    if (f(r)) return true;
  }
  if (auto it = rules_by_fingerprint_.find(who.key_fingerprint); it != rules_by_fingerprint_.end()) {
    for (auto r : it->second) {
      if (f(r)) return true;
    }
  }
  if (!who.name.empty()) {
    if (auto it = rules_by_name_.find(who.name); it != rules_by_name_.end()) {
      for (auto r : it->second) {
        if (f(r)) return true;
      }
    }
  }
  for (const auto& group : who.login_groups) {
    if (auto it = rules_by_login_group_.find(group); it != rules_by_login_group_.end()) {
      for (auto r : it->second) {
        if (f(r)) return true;
      }
    }
  }
  return false;
}

bool Policy::engine_matches(const Rule& rule, const EngineFacts& engine) const {
  if (rule.every_engine) return true;
  if (!rule.engine_ids.empty() && !std::binary_search(rule.engine_ids.begin(), rule.engine_ids.end(), engine.id)) {
    return false;
  }
  for (const auto& [key, value] : rule.engine_tags) {
    auto it = engine.tags.find(key);
    if (it == engine.tags.end() || it->second != value) return false;
  }
  return true;
}

bool Policy::allows(const Subject& who, Operation op) const {
  std::uint32_t ops = any_identity_operations_;
  if (auto it = operations_by_fingerprint_.find(who.key_fingerprint); it != operations_by_fingerprint_.end()) {
    ops |= it->second;
  }
  if (!who.name.empty()) {
    if (auto it = operations_by_name_.find(who.name); it != operations_by_name_.end()) ops |= it->second;
  }
  for (const auto& group : who.login_groups) {
    if (auto it = operations_by_login_group_.find(group); it != operations_by_login_group_.end()) ops |= it->second;
  }
  return (ops & bit(op)) != 0;
}

bool Policy::allows(const Subject& who, Operation op, const EngineFacts& engine) const {
  const std::uint32_t b = bit(op);
  return any_matching_rule(who, [&](std::uint32_t r) {
    const Rule& rule = rules_[r];
    return (rule.operations & b) != 0 && engine_matches(rule, engine);
  });
}

bool Policy::allows_on_every_engine(const Subject& who, Operation op) const {
  const std::uint32_t b = bit(op);
  return any_matching_rule(who, [&](std::uint32_t r) { return (rules_[r].operations & b) != 0 && rules_[r].every_engine; });
}

std::string Policy::explain_denial(const Subject& who, Operation op, const EngineFacts* engine) const {
  std::string subject = who.key_fingerprint;
  constexpr std::size_t kShown = 7 + 12;  // "sha256:" and 12 hex digits
  if (subject.rfind("sha256:", 0) == 0 && subject.size() > kShown) subject = subject.substr(0, kShown) + "\u2026";
  if (subject.size() > 128) subject = subject.substr(0, 128) + "\u2026";  // a login identity: bounded
  if (subject.empty()) subject = "(no key)";
  // Names come from certificates: bounded here (consumers escape them).
  if (!who.name.empty()) subject += "(" + who.name.substr(0, 64) + ")";
  const std::string what = "'" + std::string(operation_name(op)) + "' for " + subject;
  // Asked about something allowed (a caller's mistake): say so rather than mislead.
  if (engine != nullptr ? allows(who, op, *engine) : allows(who, op)) {
    return "the policy allows " + what + (engine != nullptr ? " on engine " + std::to_string(engine->id) : "");
  }
  std::string out = "no rule allows " + what;
  if (engine != nullptr) {
    out += " on engine " + std::to_string(engine->id);
    // A hint worth giving: the subject may do this, only not on this engine.
    const std::uint32_t b = bit(op);
    const bool elsewhere = any_matching_rule(who, [&](std::uint32_t r) { return (rules_[r].operations & b) != 0; });
    if (elsewhere) out += " (the policy allows it on other engines only)";
  }
  return out;
}

}  // namespace testudo::auth
