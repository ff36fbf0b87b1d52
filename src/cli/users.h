// `testudo users add|passwd|modify|remove|list`: the controller's user file for password logins
// (auth/user_file.h), edited locally by the user who runs the controller. Passwords never come
// from argv: --password-from names a source (prompt, file:, env:, command:; auth/passphrase.h);
// `list` shows names, groups and whether an account is disabled, never a verifier. A running
// controller re-reads the file at the next login.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

namespace testudo::cli {

class UsersCommand {
 public:
  // Adds `users` and its subcommands to `app`.
  explicit UsersCommand(CLI::App& app);
  ~UsersCommand();
  bool chosen() const;
  int run(const std::string& profile);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace testudo::cli
