// make_login_client_factory (login.h), apart from login.cc: it is what ties a client to the
// libraries of every login method, and only clients need it (engines never log in).
#include "auth/kerberos_login.h"
#include "auth/login.h"
#include "auth/scram_login.h"
#include "auth/token_login.h"
#include "auth/user_file.h"

namespace testudo::auth {

StatusOr<LoginClientFactory> make_login_client_factory(LoginChoice choice, const std::string& controller_host) {
  switch (choice.method) {
    case LoginMethod::kKey:
      return invalid_argument("a key login needs no login exchange");
    case LoginMethod::kToken: {
      if (!choice.secret) return invalid_argument("a token login needs a token provider (--token-from, token_provider=)");
      auto provider = std::move(choice.secret);
      return LoginClientFactory([provider]() -> StatusOr<std::unique_ptr<LoginClient>> {
        return make_token_login_client(provider);
      });
    }
    case LoginMethod::kPassword: {
      if (choice.username.empty()) return invalid_argument("a password login needs a user name");
      if (Status st = check_user_name(choice.username); !st.ok()) return st;
      if (!choice.secret) return invalid_argument("a password login needs a password source");
      return LoginClientFactory([username = std::move(choice.username), secret = std::move(choice.secret)] {
        return make_scram_login_client(username, secret);
      });
    }
    case LoginMethod::kKerberos: {
      // The controller accepts as testudo/<the host in its connection file> unless told
      // otherwise (--service-principal on both sides).
      std::string service = choice.service.empty() ? default_kerberos_service(controller_host) : choice.service;
      return LoginClientFactory([service = std::move(service)]() -> StatusOr<std::unique_ptr<LoginClient>> {
        return make_kerberos_login_client(service);
      });
    }
  }
  return failed_precondition(std::string(login_method_name(choice.method)) + " logins are not built yet");
}

}  // namespace testudo::auth
