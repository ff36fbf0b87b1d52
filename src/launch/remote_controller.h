// A controller on another host, started over SSH (`cluster start --controller ssh
// --controller-host HOST`, ipyparallel's SSHControllerLauncher).
//
// Who owns it: the user who starts it here. Their client certificate and the profile's shared
// engine certificate (public halves only) travel to the host, and the controller runs there
// with --owner-cert/--engine-cert, so it admits this user and this profile's engines while
// their private keys never leave this machine. The controller makes its own TLS key and
// capabilities on the host; its two connection files come back here over SSH (to memory,
// then into the profile's owner-only security/ directory, never through argv or a log), so
// the clients and engines of this profile find it as they would a local one.
//
// Lifetime: the controller runs in the foreground of one SSH session with a pseudo-terminal
// (as the ssh launcher's engines do), whose local ssh process stands for it in the pid file:
// `cluster stop` asks the controller to shut down and waits for that ssh to end; a lost SSH
// session hangs up the terminal and the controller ends with it.
//
// On the host everything lives under remote_dir (default .testudo/remote/<profile>/controller
// in the remote home, 0700): the certificates, and home/ as the controller's TESTUDO_HOME
// (its key, task store and logs), apart from any testudo profile of the remote user's own.
// Thread-safety: functions are safe to call from one thread at a time.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "launch/ssh_launcher.h"
#include "testudo/status.h"

namespace testudo::launch {

struct RemoteControllerOptions {
  std::string host;     // as ssh takes it: host, user@host, an alias of the ssh config
  SshSettings ssh;      // ssh: the client program, resolved; remote_dir: as above (empty: default)
  std::string profile = "default";
  std::string ip = "*";  // where it listens on the host: every interface unless told otherwise
  bool reuse = false;
  // More controller options (--heartbeat-timeout 3...). Without a --location among them the
  // connection files name the host as ssh does, less any "user@".
  std::vector<std::string> controller_args;
};

// The remote_dir used when none is given.
std::string default_controller_dir(const std::string& profile);

// The address written into the connection files by default: `host` without "user@".
std::string controller_location(const std::string& host);

// The remote command line of the controller's SSH session (after `cd remote_dir`).
std::string remote_controller_command(const RemoteControllerOptions& options);

// Starts the controller on options.host, logging its output to `log_file` here, and waits
// (until `deadline`) for its connection files, which it then writes into the local profile.
// Returns the pid of the ssh process holding its session. Errors name the host and say what
// failed (ssh's last words, or the controller's last log line); nothing is left running then.
StatusOr<pid_t> start_remote_controller(const RemoteControllerOptions& options, const std::string& log_file,
                                        std::chrono::steady_clock::time_point deadline,
                                        const std::function<void(const std::string&)>& progress);

}  // namespace testudo::launch
