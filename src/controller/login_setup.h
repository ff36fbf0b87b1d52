// Which login methods (auth/login.h) this controller accepts, from its options: --users
// (passwords), --token-issuers (JSON Web Tokens), --keytab/--service-principal (Kerberos).
// Each configured method adds its LoginServer factory to the registry; none configured:
// keys only. A method whose files are unusable (missing, readable by others, malformed) is
// an error naming the file, so the controller does not start half-configured.
#pragma once

#include "auth/login.h"
#include "controller/controller.h"
#include "testudo/status.h"

namespace testudo::controller {

Status configure_logins(const ControllerOptions& options, auth::LoginRegistry& logins);

}  // namespace testudo::controller
