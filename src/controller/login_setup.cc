#include "controller/login_setup.h"

#include <memory>

#include "auth/kerberos_login.h"
#include "auth/token_login.h"
#include "base/log.h"
#include "controller/location.h"

namespace testudo::controller {
namespace {

// The issuers and their verifier live as long as the registry's factory (the controller's).
struct TokenLogins {
  auth::TokenIssuers issuers;
  auth::TokenVerifier verifier{issuers};
  explicit TokenLogins(auth::TokenIssuers i) : issuers(std::move(i)) {}
};

Status configure_kerberos(const ControllerOptions& options, auth::LoginRegistry& logins) {
  if (options.keytab.empty()) {
    if (!options.service_principal.empty()) return invalid_argument("--service-principal needs --keytab");
    return ok_status();
  }
  std::string principal = options.service_principal;
  if (principal.empty()) {
    // The host clients find in the connection file, so their default target is this principal.
    TESTUDO_ASSIGN_OR_RETURN(std::string host,
                             connection_address(options.ip, options.location, this_host_name()));
    principal = auth::default_kerberos_service(host);
  }
  TESTUDO_ASSIGN_OR_RETURN(auto acceptor, auth::KerberosAcceptor::create(options.keytab, principal));
  logins.add(auth::LoginMethod::kKerberos,
             [acceptor](const auth::ChannelBinding& binding) -> StatusOr<std::unique_ptr<auth::LoginServer>> {
               return acceptor->begin(binding);
             });
  return ok_status();
}

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
  TESTUDO_RETURN_IF_ERROR(configure_kerberos(options, logins));
  return ok_status();
}

}  // namespace testudo::controller
