// Where the passphrase of an encrypted private key comes from (docs/threat-model.md T14;
// Hazelcast's `ssl_password` callable, OpenSSH's askpass). A source is named by a short spec
// that may appear in argv or a config file because it never contains the secret itself:
//   "prompt"        ask on the controlling terminal (/dev/tty) without echo
//   "file:PATH"     the first line of PATH, which must be owner-only (0600 or 0400)
//   "env:NAME"      the value of environment variable NAME
//   "command:CMD"   the first line CMD prints on stdout, run by /bin/sh (e.g. "pass show testudo");
//                   a non-zero exit is an error
// Thread-safe (no shared state); "prompt" serialises on the terminal.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "testudo/status.h"

namespace testudo::auth {

// The environment variable holding a default spec for every testudo process.
inline constexpr const char* kPassphraseSourceEnv = "TESTUDO_KEY_PASSPHRASE_FROM";

struct PassphraseSource {
  // kCallback: a function of the program's (Python's Client(key_passphrase_from=callable),
  // Hazelcast's ssl_password callable); it has no spec and is never parsed from text.
  enum class Kind { kPrompt, kFile, kEnv, kCommand, kCallback };
  Kind kind = Kind::kPrompt;
  std::string argument;  // path, variable name or command
  std::function<StatusOr<std::string>()> callback;  // kCallback
  std::string spec() const;
};

StatusOr<PassphraseSource> parse_passphrase_source(std::string_view spec);

// The spec to use when none is given: $TESTUDO_KEY_PASSPHRASE_FROM if set, else "prompt".
StatusOr<PassphraseSource> default_passphrase_source();

// Reads the passphrase for `what` (e.g. "private key /home/u/.testudo/identity/client-key.pem",
// shown only in the prompt and in errors). Errors never contain the passphrase. With `confirm`
// ("prompt" only) the passphrase is asked twice and must match (for creating keys). The same
// sources serve passwords and tokens (logins); a token may be longer: `max_bytes`.
StatusOr<std::string> read_passphrase(const PassphraseSource& source, std::string_view what, bool confirm = false,
                                      std::size_t max_bytes = 1024);

}  // namespace testudo::auth
