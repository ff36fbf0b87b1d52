#include "auth/connection_file.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "crypto/private_file.h"

namespace testudo::auth {
namespace {

using nlohmann::json;

StatusOr<std::string> get_string(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return invalid_argument(std::string("missing or non-string \"") + key + "\"");
  return it->get<std::string>();
}

}  // namespace

Status check_ssh_gateway(std::string_view gateway, std::string_view what) {
  const bool bad = gateway.empty() || gateway.size() > 255 || gateway.front() == '-' ||
                   std::any_of(gateway.begin(), gateway.end(), [](unsigned char c) {
                     return c <= ' ' || c >= 0x7f || c == '\'' || c == '"' || c == '\\' || c == '`' || c == '$' ||
                            c == ';' || c == '&' || c == '|';
                   });
  if (bad) return invalid_argument(std::string(what) + " must be an SSH gateway like user@host or user@host:port");
  return ok_status();
}

Status save_connection_file(const std::string& path, const ConnectionInfo& info) {
  json j = {
      {"version", kConnectionFileVersion},
      {"role", std::string(wire::role_name(info.role))},
      {"host", info.host},
      {"port", info.port},
      {"fingerprint", info.fingerprint},
      {"capability", crypto::to_hex(info.capability)},
  };
  if (!info.ssh.empty()) j["ssh"] = info.ssh;
  return crypto::write_private_file(path, j.dump(2) + "\n");
}

StatusOr<ConnectionInfo> parse_connection_info(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument("not a JSON object");
  // The version before any other field: a newer file may lack or change them, and its reader
  // must be told to use the newer testudo, not that the file is broken (docs/formats.md).
  auto version = j.find("version");
  if (version != j.end() && version->is_number_unsigned() &&
      version->get<std::uint64_t>() > kConnectionFileVersion) {
    return failed_precondition("format version " + version->dump() +
                               " was written by a newer testudo; this one reads version " +
                               std::to_string(kConnectionFileVersion));
  }
  if (version == j.end() || !version->is_number_unsigned() ||
      version->get<std::uint64_t>() != kConnectionFileVersion) {
    return invalid_argument("unsupported or missing \"version\" (expected 1)");
  }
  ConnectionInfo info;
  TESTUDO_ASSIGN_OR_RETURN(std::string role, get_string(j, "role"));
  if (role == "client") {
    info.role = wire::Role::kClient;
  } else if (role == "engine") {
    info.role = wire::Role::kEngine;
  } else {
    return invalid_argument("\"role\" must be \"client\" or \"engine\"");
  }
  TESTUDO_ASSIGN_OR_RETURN(info.host, get_string(j, "host"));
  auto port = j.find("port");
  if (port == j.end() || !port->is_number_unsigned() || port->get<std::uint64_t>() == 0 ||
      port->get<std::uint64_t>() > 65535) {
    return invalid_argument("\"port\" must be a number in 1..65535");
  }
  info.port = static_cast<std::uint16_t>(port->get<std::uint64_t>());
  TESTUDO_ASSIGN_OR_RETURN(info.fingerprint, get_string(j, "fingerprint"));
  if (info.fingerprint.rfind("sha256:", 0) != 0 || info.fingerprint.size() != 7 + 64 ||
      info.fingerprint.find_first_not_of("0123456789abcdef", 7) != std::string::npos) {
    return invalid_argument("\"fingerprint\" must be sha256:<64 lowercase hex digits>");
  }
  TESTUDO_ASSIGN_OR_RETURN(std::string cap_hex, get_string(j, "capability"));
  auto cap = crypto::from_hex(cap_hex);
  // The capability's value never appears in an error message.
  if (!cap.ok() || cap->size() != info.capability.size()) return invalid_argument("\"capability\" must be 64 hex digits");
  std::copy(cap->begin(), cap->end(), info.capability.begin());
  if (j.contains("ssh")) {
    TESTUDO_ASSIGN_OR_RETURN(info.ssh, get_string(j, "ssh"));
    TESTUDO_RETURN_IF_ERROR(check_ssh_gateway(info.ssh, "\"ssh\""));
  }
  return info;
}

StatusOr<ConnectionInfo> load_connection_file(const std::string& path, wire::Role expected_role) {
  TESTUDO_ASSIGN_OR_RETURN(std::string text, crypto::read_private_file(path, "connection file", 64 * 1024));
  auto info = parse_connection_info(text);
  if (!info.ok()) return info.status().with_context("connection file " + path);
  if (info->role != expected_role) {
    return invalid_argument("connection file " + path + " is for a " + std::string(wire::role_name(info->role)) +
                            ", not a " + std::string(wire::role_name(expected_role)));
  }
  return info;
}

}  // namespace testudo::auth
