// Connection files: what a client or an engine needs to reach and prove itself to a
// controller. JSON, owner-only (0600) in a 0700 directory, written atomically:
//   {"version": 1, "role": "client", "host": "127.0.0.1", "port": 40111,
//    "fingerprint": "sha256:<hex of the controller certificate>",
//    "capability": "<64 hex: the 256-bit secret of this role only>",
//    "ssh": "user@gateway[:port]"}    (optional: reach the controller through this SSH gateway)
// The engine file's capability does not admit a client and vice versa (T1, T16).
// Thread-safe (no shared state).
#pragma once

#include <cstdint>
#include <string>

#include "auth/capability.h"
#include "testudo/status.h"
#include "wire/message.h"

namespace testudo::auth {

// The "version" written and read. A newer one is refused naming it (kFailedPrecondition), so a
// profile made by a newer testudo says so instead of looking damaged (docs/formats.md).
inline constexpr std::uint64_t kConnectionFileVersion = 1;

struct ConnectionInfo {
  wire::Role role = wire::Role::kClient;
  std::string host;
  std::uint16_t port = 0;
  std::string fingerprint;
  Capability capability{};
  // An SSH gateway ("user@host[:port]") through which those off the controller's host reach it
  // (`controller --ssh-server`, ipyparallel's "ssh" field). Reachability only: the pin and the
  // capability still hold end to end. Empty: dial host:port directly.
  std::string ssh;
};

// An SSH gateway as the "ssh" field and --ssh take it: user@host[:port], without spaces, quotes
// or a leading '-' (it becomes one argument of ssh). kInvalidArgument naming `what` otherwise.
Status check_ssh_gateway(std::string_view gateway, std::string_view what);

Status save_connection_file(const std::string& path, const ConnectionInfo& info);
// Refuses files readable by group/others (T7), malformed JSON, wrong types, and a role other
// than `expected_role`.
StatusOr<ConnectionInfo> load_connection_file(const std::string& path, wire::Role expected_role);
// The parser behind load_connection_file (fuzzed).
StatusOr<ConnectionInfo> parse_connection_info(std::string_view json_text);

}  // namespace testudo::auth
