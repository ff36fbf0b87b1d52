#include "controller/login_setup.h"

#include <memory>

#include "auth/token_login.h"
#include "base/log.h"

namespace testudo::controller {
namespace {

// The issuers and their verifier live as long as the registry's factory (the controller's).
struct TokenLogins {
  auth::TokenIssuers issuers;
  auth::TokenVerifier verifier{issuers};
  explicit TokenLogins(auth::TokenIssuers i) : issuers(std::move(i)) {}
};

}  // namespace

Status configure_logins(const ControllerOptions& options, auth::LoginRegistry& logins) {
  if (!options.token_issuers.empty()) {
    TESTUDO_ASSIGN_OR_RETURN(auto issuers, auth::TokenIssuers::load(options.token_issuers));
    auto tokens = std::make_shared<TokenLogins>(std::move(issuers));
    std::string names;
    for (const auto& i : tokens->issuers.issuers()) names += (names.empty() ? "" : ", ") + i.issuer;
    LOG_INFO("login") << "token logins accepted from " << names << " (" << options.token_issuers << ")";
    logins.add(auth::LoginMethod::kToken,
               [tokens](const auth::ChannelBinding&) -> StatusOr<std::unique_ptr<auth::LoginServer>> {
                 return auth::make_token_login_server(tokens->verifier);
               });
  }
  return ok_status();
}

}  // namespace testudo::controller
