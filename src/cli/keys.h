// `testudo keys ...` (like salt-key): make and inspect identities locally (create,
// fingerprint); list, show, accept, reject and revoke them on the controller, which needs the
// policy's "keys" operation. Secrets never come from argv: passphrases come from a source
// spec (auth/passphrase.h).
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

namespace testudo::cli {

class KeysCommand {
 public:
  // Adds `keys` and its subcommands to `app`.
  explicit KeysCommand(CLI::App& app);
  ~KeysCommand();
  bool chosen() const;
  int run(const std::string& profile);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace testudo::cli
