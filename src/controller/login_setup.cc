#include "controller/login_setup.h"

#include <sys/stat.h>

#include <memory>

#include "auth/kerberos_login.h"
#include "auth/scram_login.h"
#include "auth/token_login.h"
#include "auth/user_file.h"
#include "base/log.h"
#include "base/profile.h"
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

// Passwords: --users FILE, or the profile's security/users.json when it exists. The file is
// checked now (a controller does not start with a user file it would refuse at every login)
// and re-read when it changes, so `testudo users add` applies to the next login.
Status configure_passwords(const ControllerOptions& options, auth::LoginRegistry& logins) {
  std::string path = options.users_file;
  if (path.empty()) {
    path = profile_paths(options.profile).security_dir + "/users.json";
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return ok_status();  // no user file: no password logins
  }
  TESTUDO_ASSIGN_OR_RETURN(std::shared_ptr<auth::UserStore> store, auth::UserStore::open(path));
  if (auto users = store->current(); users.ok()) {
    LOG_INFO("login") << "password logins: " << (*users)->users().size() << " users in " << path;
  }
  logins.add(auth::LoginMethod::kPassword,
             [store](const auth::ChannelBinding& binding) -> StatusOr<std::unique_ptr<auth::LoginServer>> {
               auto file = store->current();
               // The details (the path, the mode) are in the controller's log, not for the peer.
               if (!file.ok()) {
                 return unavailable("password logins are unavailable: the controller's user file is unusable");
               }
               return auth::make_scram_login_server(*file, binding);
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
  TESTUDO_RETURN_IF_ERROR(configure_passwords(options, logins));
  return ok_status();
}

}  // namespace testudo::controller
