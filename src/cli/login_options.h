// How a client command logs in (docs/security.md, "Logins"): the options every client
// command shares. Secrets never appear in argv: passwords and tokens come from sources
// (auth/passphrase.h: prompt, file:PATH, env:NAME, command:CMD).
//   --user NAME --password-from SRC   SCRAM-SHA-256-PLUS as user:NAME (default source: prompt)
//   --token-from SRC                  a JSON Web Token, read again when it expires
//   --kerberos [--service-principal P]  the credential cache of `kinit`
// None given: the client's key is its identity, as always.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "testudo/client.h"
#include "testudo/status.h"

namespace testudo::cli {

struct LoginArgs {
  std::string user;
  std::string password_from;
  std::string token_from;
  bool kerberos = false;
  std::string service_principal;

  // Adds the options to `app` (bound to this object, which must outlive parsing).
  void add_to(CLI::App* app);
  // The login the options describe (method "" when none). kInvalidArgument for a bad
  // combination: two methods at once, --password-from without --user, a bad source spec.
  StatusOr<ClientOptions::Login> to_login() const;
};

}  // namespace testudo::cli
