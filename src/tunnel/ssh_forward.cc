#include "tunnel/ssh_forward.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace testudo::tunnel {
namespace {

using Clock = std::chrono::steady_clock;

StatusOr<std::uint16_t> free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return unavailable(std::string("socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  if (!ok) return unavailable(std::string("cannot find a free local port: ") + std::strerror(errno));
  return ntohs(addr.sin_port);
}

bool accepts(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

// `ssh` on PATH (resolved here: the child only calls async-signal-safe functions).
StatusOr<std::string> ssh_program() {
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    const std::size_t colon = dirs.find(':', start);
    const std::string dir = dirs.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    const std::string candidate = (dir.empty() ? "." : dir) + "/ssh";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return failed_precondition("--ssh needs the OpenSSH client `ssh` on PATH (Debian: openssh-client)");
}

std::string last_line(const std::string& text) {
  std::size_t end = text.find_last_not_of("\r\n ");
  if (end == std::string::npos) return "";
  const std::size_t start = text.find_last_of('\n', end);
  const std::size_t from = start == std::string::npos ? 0 : start + 1;
  return text.substr(from, end + 1 - from);
}

}  // namespace

StatusOr<std::unique_ptr<SshForward>> SshForward::open(const std::string& gateway, const std::string& remote_host,
                                                       std::uint16_t remote_port,
                                                       const std::vector<std::string>& ssh_args,
                                                       std::chrono::milliseconds timeout) {
  if (gateway.empty() || gateway.front() == '-') return invalid_argument("--ssh: '" + gateway + "' is not a gateway");
  TESTUDO_ASSIGN_OR_RETURN(std::string ssh, ssh_program());
  TESTUDO_ASSIGN_OR_RETURN(std::uint16_t port, free_local_port());
  std::string host = gateway;
  std::string gateway_port;
  if (const auto colon = gateway.rfind(':'); colon != std::string::npos && gateway.find(':') == colon) {
    host = gateway.substr(0, colon);
    gateway_port = gateway.substr(colon + 1);
  }
  std::vector<std::string> argv{ssh, "-N", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                                "-o", "ServerAliveInterval=15", "-L",
                                "127.0.0.1:" + std::to_string(port) + ":" + remote_host + ":" + std::to_string(remote_port)};
  argv.insert(argv.end(), ssh_args.begin(), ssh_args.end());
  if (!gateway_port.empty()) argv.insert(argv.end(), {"-p", gateway_port});
  argv.insert(argv.end(), {"--", host});
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);

  // ssh's stderr goes to an unlinked temporary file, not a pipe: once the forward is up nobody
  // reads it, and a pipe without a reader would kill ssh with SIGPIPE at its next complaint.
  char err_path[] = "/tmp/testudo-ssh-XXXXXX";
  const int err = ::mkostemp(err_path, O_CLOEXEC);
  if (err < 0) return unavailable(std::string("mkostemp: ") + std::strerror(errno));
  ::unlink(err_path);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(err);
    return unavailable(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    // The child: only async-signal-safe calls. It ends when this process does.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(1);
    const int devnull = ::open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      ::dup2(devnull, 0);
      ::dup2(devnull, 1);
    }
    ::dup2(err, 2);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  std::unique_ptr<SshForward> forward(new SshForward(pid, port));
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      forward->pid_ = 0;  // already reaped
      std::string errors(16384, '\0');
      const ssize_t n = ::pread(err, errors.data(), errors.size(), 0);
      errors.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
      ::close(err);
      const std::string why = last_line(errors);
      return unavailable("SSH tunnel through " + gateway + " failed: " +
                         (why.empty() ? "ssh exit status " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1)
                                      : why));
    }
    if (accepts(port)) break;
    if (Clock::now() > deadline) {
      ::close(err);
      return deadline_exceeded("SSH tunnel through " + gateway + " not up within " +
                               std::to_string(timeout.count() / 1000) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::close(err);  // ssh keeps its own descriptor of the unlinked file
  return forward;
}

SshForward::~SshForward() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  int status = 0;
  for (int i = 0; i < 250 && ::waitpid(pid_, &status, WNOHANG) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (::waitpid(pid_, &status, WNOHANG) == 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
  }
}

}  // namespace testudo::tunnel
