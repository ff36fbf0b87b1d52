// Where a profile's files live:
//   $TESTUDO_HOME (default ~/.testudo)/profile_<name>/
//       security/  0700  controller-client.json, controller-engine.json, controller state
//       log/       0700  controller.log, engine-<pid>.log
//       run/       0700  pid files of a launched cluster
//       state/     0700  tasks.sqlite (+ tasks.sqlite.results/): every task and result;
//                        engine-ids.json: each engine process's id, for controller --reuse
// Thread-safe (pure functions of the environment).
#pragma once

#include <string>

namespace testudo {

struct ProfilePaths {
  std::string root;
  std::string security_dir;
  std::string log_dir;
  std::string run_dir;
  std::string state_dir;               // state/ (0700): the task store
  std::string client_connection_file;  // security/controller-client.json
  std::string engine_connection_file;  // security/controller-engine.json
  std::string controller_state_file;   // security/controller-state.json (key, certificate, capabilities)
};

// The testudo home: $TESTUDO_HOME if set, else $HOME/.testudo (or the passwd entry's home).
std::string testudo_home();
ProfilePaths profile_paths(const std::string& profile);

}  // namespace testudo
