#include "cli/engine_supervisor.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>

namespace testudo::cli {
namespace {

using Clock = std::chrono::steady_clock;

volatile sig_atomic_t g_child = 0;     // the engine now running (0: none)
volatile sig_atomic_t g_stopping = 0;  // SIGTERM seen: do not restart

void forward(int sig) {
  if (sig == SIGTERM) g_stopping = 1;
  const pid_t child = g_child;
  if (child > 0) ::kill(child, sig);
}

constexpr int kForwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2};

void install_forwarding() {
  struct sigaction sa {};
  sa.sa_handler = forward;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : kForwarded) ::sigaction(sig, &sa, nullptr);
}

void restore_defaults() {
  struct sigaction sa {};
  sa.sa_handler = SIG_DFL;
  sigemptyset(&sa.sa_mask);
  for (int sig : kForwarded) ::sigaction(sig, &sa, nullptr);
}

std::string describe(int status) {
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
                                  ::strsignal(WTERMSIG(status)) + ")";
  return "exited with status " + std::to_string(WEXITSTATUS(status));
}

}  // namespace

int supervise_engine(const SupervisorOptions& options, const std::function<void(const std::string&)>& log) {
  install_forwarding();
  std::deque<Clock::time_point> restarts;  // within the window
  int total_restarts = 0;
  for (;;) {
    ::setenv(kEngineRestartsEnv, std::to_string(total_restarts).c_str(), 1);
    const pid_t pid = ::fork();
    if (pid < 0) {
      log(std::string("cannot start the engine: fork: ") + std::strerror(errno));
      return 1;
    }
    if (pid == 0) {
      restore_defaults();
      return -1;  // the engine
    }
    g_child = pid;
    if (g_stopping) ::kill(pid, SIGTERM);  // SIGTERM arrived between two engines
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    g_child = 0;
    const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (clean || g_stopping) return clean ? 0 : 1;

    const auto now = Clock::now();
    while (!restarts.empty() && now - restarts.front() > options.window) restarts.pop_front();
    if (static_cast<int>(restarts.size()) >= options.limit) {
      log("engine " + describe(status) + "; it was restarted " + std::to_string(restarts.size()) + " times within " +
          std::to_string(options.window.count()) + " s: giving up");
      return 1;
    }
    auto backoff = options.first_backoff * (1 << std::min<std::size_t>(restarts.size(), 10));
    if (backoff > options.max_backoff) backoff = options.max_backoff;
    restarts.push_back(now);
    ++total_restarts;
    log("engine " + describe(status) + "; restarting it in " + std::to_string(backoff.count()) + " ms (restart " +
        std::to_string(total_restarts) + ")");
    const auto until = Clock::now() + backoff;
    while (Clock::now() < until && !g_stopping) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (g_stopping) return 0;
  }
}

}  // namespace testudo::cli
