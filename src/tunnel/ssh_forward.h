// An SSH local port forward (`ssh -N -L 127.0.0.1:P:HOST:PORT GATEWAY`, the real OpenSSH
// client) for engines and the `testudo` client commands that reach a controller only through
// a gateway (`--ssh user@gateway`). The user's keys, agent, config and known hosts apply; no
// SSH code of our own. The forward adds reachability only: the controller is still pinned by
// the connection file's fingerprint and the capability proven end to end through it.
// The ssh process is this process's child and is told to end with it (PR_SET_PDEATHSIG), so a
// killed engine leaves no tunnel behind. Not thread-safe; create before starting threads.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "testudo/status.h"

namespace testudo::tunnel {

class SshForward {
 public:
  // Forwards a free local port to remote_host:remote_port as seen from `gateway`
  // ("user@host" or "user@host:port"), waiting until the forward accepts connections.
  // kUnavailable naming the gateway and quoting ssh ("Permission denied (publickey)") when
  // ssh exits first; kDeadlineExceeded after `timeout`.
  static StatusOr<std::unique_ptr<SshForward>> open(const std::string& gateway, const std::string& remote_host,
                                                    std::uint16_t remote_port, const std::vector<std::string>& ssh_args,
                                                    std::chrono::milliseconds timeout);
  ~SshForward();  // ends ssh
  SshForward(const SshForward&) = delete;
  SshForward& operator=(const SshForward&) = delete;

  std::uint16_t local_port() const { return local_port_; }
  pid_t pid() const { return pid_; }

 private:
  SshForward(pid_t pid, std::uint16_t port) : pid_(pid), local_port_(port) {}
  pid_t pid_;
  std::uint16_t local_port_;
};

}  // namespace testudo::tunnel
