#include "cli/login_options.h"

#include <memory>
#include <mutex>
#include <optional>

#include "auth/passphrase.h"

namespace testudo::cli {

void LoginArgs::add_to(CLI::App* app) {
  app->add_option("--user", user, "Log in as this user with a password (SCRAM-SHA-256-PLUS) instead of your key");
  app->add_option("--password-from", password_from,
                  "With --user: where the password comes from: prompt (default), file:PATH, env:NAME or command:CMD");
  app->add_option("--token-from", token_from,
                  "Log in with a JSON Web Token from file:PATH, env:NAME or command:CMD (read again when it expires)");
  app->add_flag("--kerberos", kerberos, "Log in with your Kerberos credentials (run kinit first)");
  app->add_option("--service-principal", service_principal,
                  "With --kerberos: the controller's service principal (default: the one its connection file names)");
}

StatusOr<ClientOptions::Login> LoginArgs::to_login() const {
  ClientOptions::Login login;
  const int methods = (user.empty() ? 0 : 1) + (token_from.empty() ? 0 : 1) + (kerberos ? 1 : 0);
  if (methods > 1) return invalid_argument("--user, --token-from and --kerberos are different logins: give one");
  if (!password_from.empty() && user.empty()) return invalid_argument("--password-from needs --user NAME");
  if (!service_principal.empty() && !kerberos) return invalid_argument("--service-principal needs --kerberos");
  if (!user.empty()) {
    TESTUDO_ASSIGN_OR_RETURN(auto source, auth::parse_passphrase_source(password_from.empty() ? "prompt" : password_from));
    login.method = "password";
    login.username = user;
    // Asked once per command: a reconnect must not prompt again.
    auto cached = std::make_shared<std::optional<std::string>>();
    auto lock = std::make_shared<std::mutex>();
    const std::string what = "user " + user;
    login.secret = [source, cached, lock, what]() -> StatusOr<std::string> {
      std::lock_guard<std::mutex> hold(*lock);
      if (!*cached) {
        TESTUDO_ASSIGN_OR_RETURN(std::string password, auth::read_passphrase(source, what));
        *cached = std::move(password);
      }
      return **cached;
    };
  } else if (!token_from.empty()) {
    TESTUDO_ASSIGN_OR_RETURN(auto source, auth::parse_passphrase_source(token_from));
    if (source.kind == auth::PassphraseSource::Kind::kPrompt) {
      return invalid_argument("--token-from: file:PATH, env:NAME or command:CMD (a token is not typed in)");
    }
    login.method = "token";
    // Read each time a session needs one: a renewed token replaces an expired one there.
    login.secret = [source]() { return auth::read_passphrase(source, "login token", false, 16 * 1024); };
  } else if (kerberos) {
    login.method = "kerberos";
    login.service = service_principal;
  }
  return login;
}

}  // namespace testudo::cli
