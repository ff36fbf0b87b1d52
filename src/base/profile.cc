#include "base/profile.h"

#include <pwd.h>
#include <unistd.h>

#include <cstdlib>

namespace testudo {

std::string testudo_home() {
  if (const char* h = std::getenv("TESTUDO_HOME"); h && *h) return h;
  if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.testudo";
  if (const passwd* pw = getpwuid(geteuid()); pw && pw->pw_dir) return std::string(pw->pw_dir) + "/.testudo";
  return "/tmp/.testudo-" + std::to_string(geteuid());
}

ProfilePaths profile_paths(const std::string& profile) {
  ProfilePaths p;
  p.root = testudo_home() + "/profile_" + profile;
  p.security_dir = p.root + "/security";
  p.log_dir = p.root + "/log";
  p.run_dir = p.root + "/run";
  p.state_dir = p.root + "/state";
  p.client_connection_file = p.security_dir + "/controller-client.json";
  p.engine_connection_file = p.security_dir + "/controller-engine.json";
  p.controller_state_file = p.security_dir + "/controller-state.json";
  return p;
}

}  // namespace testudo
