// `testudo-engine --restart`: the engine process becomes a small supervisor that runs the real
// engine as its child and starts it again when it dies (a crash, a kill, an exit with an
// error), with backoff, at most `limit` times within `window`. A clean exit (the controller
// asked the engine to stop) or SIGTERM to the supervisor ends both. Signals an operator sends
// to the supervisor (SIGINT to interrupt user code, SIGTERM, SIGHUP, SIGUSR1/2) reach the
// engine. The restarted engine registers anew (a new engine id) and reports how many restarts
// came before it (its "restarts" fact, in the engine's tags). The fork happens before Python
// or any thread exists.
#pragma once

#include <chrono>
#include <functional>
#include <string>

namespace testudo::cli {

struct SupervisorOptions {
  int limit = 5;                         // restarts allowed within `window`
  std::chrono::seconds window{60};
  std::chrono::milliseconds first_backoff{500};   // doubled per restart in the window, capped
  std::chrono::milliseconds max_backoff{10'000};
};

// In the supervisor: returns its exit code when it is done. In the engine (the child): returns
// -1, and the caller goes on to run the engine.
int supervise_engine(const SupervisorOptions& options, const std::function<void(const std::string&)>& log);

// The environment variable that tells an engine how many restarts preceded it.
inline constexpr char kEngineRestartsEnv[] = "TESTUDO_ENGINE_RESTARTS";

}  // namespace testudo::cli
