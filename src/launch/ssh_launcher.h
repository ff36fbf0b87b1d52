// Engines on other hosts over SSH (the real OpenSSH client, `ssh`): the engine connection file
// and the shared engine identity reach each host over the SSH channel (its standard input,
// never argv) into an owner-only directory, and each host's engines run in one SSH session
// with a pseudo-terminal, so they end with it: stopping the local `ssh` (cluster stop, engines
// stop, a lost connection) hangs up the terminal and the engines get SIGHUP; no orphans.
// Thread-safety: functions are safe to call from one thread at a time.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/status.h"

namespace testudo::launch {

struct SshHost {
  std::string name;  // as ssh takes it: host, user@host, an alias of the ssh config
  int engines = 1;
};

// "a:4,b,user@c:2" -> {a 4} {b 1} {user@c 2}. kInvalidArgument naming the bad entry.
StatusOr<std::vector<SshHost>> parse_ssh_hosts(std::string_view text);

struct SshSettings {
  std::string ssh = "ssh";                  // the client program
  std::vector<std::string> ssh_args;        // before the host: -F config, -i key, -p port...
  std::string remote_testudo = "testudo";   // on the remote PATH, or a path there
  std::string remote_dir;                   // where the files go (relative: to the remote home)
};

// Single-quotes `s` for a POSIX shell (the remote command line).
std::string shell_quote(std::string_view s);

// The argv of `ssh ARGS -o BatchMode=yes [-tt] -- HOST REMOTE_COMMAND` (BatchMode: a missing
// key fails at once instead of prompting for a password nobody will type).
std::vector<std::string> ssh_argv(const SshSettings& settings, const std::string& host, bool tty,
                                  const std::string& remote_command);

// The error for an ssh command that failed: "cannot WHAT on HOST over SSH: <ssh's last words>".
Status ssh_failure(const std::string& what, const std::string& host, int exit_code, const std::string& err,
                   std::chrono::milliseconds timeout);

// A POSIX shell script, to be read by a remote `sh -s` on its standard input, that makes `dir`
// (0700; relative: to the remote home) and writes `files` (name -> contents) there as 0600
// here-documents under a random delimiter (no file line can end one). Secrets in it travel
// on ssh's standard input, never argv; wipe the script after use.
StatusOr<std::string> write_files_script(const std::string& dir,
                                         const std::vector<std::pair<std::string, std::string>>& files);

// Copies `files` (name -> contents) into settings.remote_dir on `host` (0700 directory, 0600
// files), each over ssh's standard input. Errors name the host and quote ssh's last words
// ("Permission denied (publickey)", "Connection refused"...), never a file's contents.
Status copy_to_host(const SshSettings& settings, const std::string& host,
                    const std::vector<std::pair<std::string, std::string>>& files, std::chrono::milliseconds timeout);

// The argv that runs `engines` engines on `host` in one SSH session with a pseudo-terminal:
//   ssh ARGS -tt HOST 'cd DIR && for ...; do TESTUDO engine --file controller-engine.json
//   ENGINE_ARGS & done; wait'
std::vector<std::string> ssh_engines_command(const SshSettings& settings, const std::string& host, int engines,
                                             const std::vector<std::string>& engine_args);

}  // namespace testudo::launch
