#include "controller/login_setup.h"

namespace testudo::controller {

Status configure_logins(const ControllerOptions& /*options*/, auth::LoginRegistry& /*logins*/) {
  // Each login method adds itself here when its option is set.
  return ok_status();
}

}  // namespace testudo::controller
