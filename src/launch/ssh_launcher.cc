#include "launch/ssh_launcher.h"

#include "crypto/crypto.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

extern char** environ;

namespace testudo::launch {
namespace {

using Clock = std::chrono::steady_clock;

struct Finished {
  int exit_code = -1;   // -1: killed (timeout or signal)
  std::string errors;   // what it wrote on stderr (bounded)
};

// Runs argv with `input` on its stdin and waits up to `timeout`; stdout is discarded.
StatusOr<Finished> run_with_input(const std::vector<std::string>& argv, const std::string& input,
                                  std::chrono::milliseconds timeout) {
  int in[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return unavailable(std::string("pipe: ") + std::strerror(errno));
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(in[0]);
    ::close(in[1]);
    return unavailable(std::string("pipe: ") + std::strerror(errno));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, argv[0].c_str(), &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(in[0]);
  ::close(err[1]);
  if (rc != 0) {
    ::close(in[1]);
    ::close(err[0]);
    return unavailable("cannot run " + argv[0] + ": " + std::strerror(rc));
  }
  // Feed stdin and drain stderr together: neither side may block the other.
  ::fcntl(in[1], F_SETFL, O_NONBLOCK);
  std::size_t written = 0;
  if (input.empty()) {
    ::close(in[1]);
    in[1] = -1;
  }
  Finished out;
  const auto deadline = Clock::now() + timeout;
  bool err_open = true;
  while (err_open && Clock::now() < deadline) {
    pollfd fds[2] = {{err[0], POLLIN, 0}, {in[1], POLLOUT, 0}};
    const int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (::poll(fds, in[1] >= 0 ? 2 : 1, std::max(left, 1)) < 0 && errno != EINTR) break;
    if (in[1] >= 0 && (fds[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
      const ssize_t n = ::write(in[1], input.data() + written, input.size() - written);
      if (n > 0) written += static_cast<std::size_t>(n);
      if (n < 0 && errno != EAGAIN) written = input.size();  // the reader is gone: stop feeding
      if (written >= input.size()) {
        ::close(in[1]);
        in[1] = -1;
      }
    }
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[4096];
      const ssize_t n = ::read(err[0], buf, sizeof buf);
      if (n <= 0) {
        err_open = false;
      } else if (out.errors.size() < 64 * 1024) {
        out.errors.append(buf, static_cast<std::size_t>(n));
      }
    }
  }
  if (in[1] >= 0) ::close(in[1]);
  ::close(err[0]);
  const bool timed_out = err_open;  // stderr still open at the deadline
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  out.exit_code = !timed_out && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// The last non-empty line of ssh's stderr, for an error message.
std::string last_line(const std::string& text) {
  std::size_t end = text.find_last_not_of("\r\n ");
  if (end == std::string::npos) return "";
  std::size_t start = text.find_last_of('\n', end);
  return text.substr(start == std::string::npos ? 0 : start + 1, end + 1 - (start == std::string::npos ? 0 : start + 1));
}

}  // namespace

StatusOr<std::vector<SshHost>> parse_ssh_hosts(std::string_view text) {
  std::vector<SshHost> hosts;
  while (!text.empty()) {
    const auto comma = text.find(',');
    const std::string_view entry = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    SshHost host;
    const auto colon = entry.rfind(':');
    host.name = std::string(entry.substr(0, colon));
    if (colon != std::string_view::npos) {
      const std::string_view count = entry.substr(colon + 1);
      auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), host.engines);
      if (ec != std::errc() || end != count.data() + count.size() || host.engines < 1 || host.engines > 4096) {
        return invalid_argument("--hosts: '" + std::string(entry) + "' is not HOST or HOST:N with N from 1 to 4096");
      }
    }
    if (host.name.empty() || host.name.find_first_of(" \t'\"\\;&|$`") != std::string::npos ||
        host.name.front() == '-') {
      return invalid_argument("--hosts: '" + std::string(entry) + "' is not a host name");
    }
    hosts.push_back(std::move(host));
  }
  if (hosts.empty()) return invalid_argument("--hosts: no host given (e.g. --hosts node1:4,node2:4)");
  return hosts;
}

std::string shell_quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

Status copy_to_host(const SshSettings& settings, const std::string& host,
                    const std::vector<std::pair<std::string, std::string>>& files, std::chrono::milliseconds timeout) {
  // One SSH connection for every file (each costs a key exchange, ~1 s on a busy machine): the
  // remote shell reads a script on its standard input whose here-documents are the files. The
  // contents never reach argv; the delimiter is random, so no file line can end a document.
  TESTUDO_ASSIGN_OR_RETURN(auto nonce, crypto::random_secret());
  const std::string delimiter = "TESTUDO_END_" + crypto::to_hex(std::span(nonce).first(12));
  const std::string dir = shell_quote(settings.remote_dir);
  std::string script = "set -e\numask 077\nmkdir -p " + dir + "\n";
  for (const auto& [name, contents] : files) {
    script += "cat > " + dir + "/" + shell_quote(name) + " <<'" + delimiter + "'\n" + contents;
    if (!contents.empty() && contents.back() != '\n') script += "\n";
    script += delimiter + "\n";
  }
  std::vector<std::string> argv{settings.ssh};
  argv.insert(argv.end(), settings.ssh_args.begin(), settings.ssh_args.end());
  argv.insert(argv.end(), {"-o", "BatchMode=yes", "--", host, "sh -s"});
  TESTUDO_ASSIGN_OR_RETURN(Finished done, run_with_input(argv, script, timeout));
  crypto::wipe(script);
  if (done.exit_code != 0) {
    const std::string why = last_line(done.errors);
    return unavailable("cannot copy the engine's files to " + host + " over SSH: " +
                       (done.exit_code < 0 ? "no answer within " + std::to_string(timeout.count() / 1000) + " s"
                                           : why.empty() ? "ssh exit status " + std::to_string(done.exit_code)
                                                         : why));
  }
  return ok_status();
}

std::vector<std::string> ssh_engines_command(const SshSettings& settings, const std::string& host, int engines,
                                             const std::vector<std::string>& engine_args) {
  std::string engine = shell_quote(settings.remote_testudo) + " engine --file controller-engine.json";
  for (const auto& a : engine_args) engine += " " + shell_quote(a);
  // `command -v` first: a host without testudo says so in one line instead of n times.
  const std::string remote = "cd " + shell_quote(settings.remote_dir) + " && command -v " +
                             shell_quote(settings.remote_testudo) + " >/dev/null || { echo " +
                             shell_quote("testudo: " + settings.remote_testudo + " not found on " + host) +
                             " >&2; exit 127; }; i=0; while [ $i -lt " + std::to_string(engines) + " ]; do " + engine +
                             " & i=$((i+1)); done; wait";
  std::vector<std::string> argv{settings.ssh};
  argv.insert(argv.end(), settings.ssh_args.begin(), settings.ssh_args.end());
  argv.insert(argv.end(), {"-o", "BatchMode=yes", "-tt", "--", host, remote});
  return argv;
}

}  // namespace testudo::launch
