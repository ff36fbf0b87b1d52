// An engine process: dials the controller (never listens), proves the engine capability,
// receives an engine id, heartbeats, reconnects with backoff, and runs each request in its
// embedded Python namespace (PythonRuntime).
//
// Threads: the calling thread (run()) is the Python thread — CPython and user code live there
// so SIGINT can later interrupt it; a second thread runs the network EventLoop, so a long
// request never delays heartbeats. They meet at a locked work queue and EventLoop::post().
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "testudo/status.h"

namespace testudo::engine {

struct EngineOptions {
  std::string connection_file;                            // controller-engine.json
  // Dial this address instead of the connection file's: the local end of an SSH tunnel
  // (`testudo engine --ssh`). Pin and capability still come from the file. Empty: the file's.
  std::string dial_host;
  std::uint16_t dial_port = 0;
  std::chrono::milliseconds heartbeat_interval{1'000};
  // No heartbeat answer from the controller for this long: drop the connection, reconnect.
  std::chrono::milliseconds controller_timeout{10'000};
  // Without a controller for this long (in total since the last connection), exit. 0: never
  // (the engines a cluster launches: they end with the cluster).
  std::chrono::milliseconds reconnect_give_up{120'000};
  // User labels ("--tag gpu=true"): values are JSON literals when they parse as one (true,
  // 4, "x"), strings otherwise. Host facts (hostname, cores, memory, pid) are added.
  std::vector<std::pair<std::string, std::string>> tags;
  // Per request: stdout/stderr characters kept, and the largest pickled result (bytes).
  std::uint64_t max_output_chars = 64ull << 20;
  std::uint64_t max_result_bytes = 2ull << 30;
  // The engine's identity (auth/identity.h): <identity_dir>/<identity_name>-{key,cert}.pem.
  // Default: the shared engine identity beside the connection file (a controller makes one in
  // its profile's security directory for the engines it launches), else this user's own
  // $TESTUDO_HOME/identity/engine-*.pem, made on first use (a controller must trust it).
  std::string identity_dir;
  std::string identity_name = "engine";
  std::string key_passphrase_from;  // for an encrypted key; default $TESTUDO_KEY_PASSPHRASE_FROM or prompt
  // End-to-end sealing (docs/security.md): the clients whose sealed requests this engine
  // opens — key fingerprints pinned here (`cluster start` passes its owner's) and/or a CA
  // file. Never learned from the controller. Neither: sealed requests are refused.
  std::vector<std::string> trust_clients;
  std::string client_cafile;
};

class Engine {
 public:
  static StatusOr<std::unique_ptr<Engine>> create(const EngineOptions& options);
  ~Engine();
  // Serves until the controller says shut down, a signal arrives, or the controller stays
  // unreachable past reconnect_give_up (an error).
  Status run();

 private:
  Engine();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace testudo::engine
