#include "launch/run_command.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

extern char** environ;

namespace testudo::launch {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kMaxCaptured = 64 * 1024;

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// Reads what `fd` has (closing it at EOF) into `text`, up to kMaxCaptured.
void drain(int& fd, std::string& text, short revents) {
  if (fd < 0 || !(revents & (POLLIN | POLLHUP | POLLERR))) return;
  char buf[4096];
  const ssize_t n = ::read(fd, buf, sizeof buf);
  if (n <= 0) {
    close_fd(fd);
  } else if (text.size() < kMaxCaptured) {
    text.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace

StatusOr<CommandResult> run_command(const std::vector<std::string>& argv, const std::string& input,
                                    std::chrono::milliseconds timeout) {
  if (argv.empty()) return invalid_argument("run_command: no program");
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    const int e = errno;
    for (int* p : {in, out, err}) {
      close_fd(p[0]);
      close_fd(p[1]);
    }
    return unavailable(std::string("pipe: ") + std::strerror(e));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, argv[0].c_str(), &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close_fd(in[0]);
  close_fd(out[1]);
  close_fd(err[1]);
  if (rc != 0) {
    close_fd(in[1]);
    close_fd(out[0]);
    close_fd(err[0]);
    return unavailable("cannot run " + argv[0] + ": " + std::strerror(rc));
  }
  // Feed stdin and drain both outputs together: no side may block another.
  ::fcntl(in[1], F_SETFL, O_NONBLOCK);
  std::size_t written = 0;
  if (input.empty()) close_fd(in[1]);
  CommandResult result;
  const auto deadline = Clock::now() + timeout;
  while ((out[0] >= 0 || err[0] >= 0) && Clock::now() < deadline) {
    pollfd fds[3] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}, {in[1], POLLOUT, 0}};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (::poll(fds, 3, static_cast<int>(std::max<long long>(left, 1))) < 0 && errno != EINTR) break;
    if (in[1] >= 0 && (fds[2].revents & (POLLOUT | POLLERR | POLLHUP))) {
      const ssize_t n = ::write(in[1], input.data() + written, input.size() - written);
      if (n > 0) written += static_cast<std::size_t>(n);
      if ((n < 0 && errno != EAGAIN) || written >= input.size()) close_fd(in[1]);  // done, or nobody reads
    }
    drain(out[0], result.out, fds[0].revents);
    drain(err[0], result.err, fds[1].revents);
  }
  const bool timed_out = out[0] >= 0 || err[0] >= 0;
  close_fd(in[1]);
  close_fd(out[0]);
  close_fd(err[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = !timed_out && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string last_line(const std::string& text) {
  const std::size_t end = text.find_last_not_of("\r\n ");
  if (end == std::string::npos) return "";
  const std::size_t start = text.find_last_of('\n', end);
  const std::size_t from = start == std::string::npos ? 0 : start + 1;
  return text.substr(from, end + 1 - from);
}

}  // namespace testudo::launch
