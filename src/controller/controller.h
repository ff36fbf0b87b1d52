// The controller process: loads or creates its TLS identity and the two capabilities, listens
// (the only listening process of a cluster), writes the connection files, and runs the hub
// until asked to stop (SIGINT/SIGTERM or a client's shutdown request).
// Threading: create() and run() on one thread; request_stop() from anywhere.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "testudo/status.h"

namespace testudo::controller {

struct ControllerOptions {
  std::string profile = "default";     // files under $TESTUDO_HOME/profile_<profile>/
  std::string ip = "127.0.0.1";        // bind address; loopback unless told otherwise
  std::uint16_t port = 0;              // 0: random (or the previous one with reuse)
  std::string location;                // address written into connection files; default: ip
  bool reuse = false;                  // keep key, certificate, capabilities and port of the last run
  std::chrono::milliseconds heartbeat_timeout{10'000};
  std::chrono::milliseconds hello_timeout{10'000};
  std::uint64_t max_message_bytes = 4ull << 30;
  // The task store (state/tasks.sqlite): results kept this long and up to this many bytes.
  std::chrono::seconds result_max_age{7 * 24 * 3600};
  std::uint64_t result_max_bytes = 4ull << 30;
  std::string scheme = "leastload";    // load-balancing scheme
  std::uint32_t hwm = 2;               // load-balanced tasks per engine at once (0: no limit)
};

class Controller {
 public:
  static StatusOr<std::unique_ptr<Controller>> create(const ControllerOptions& options);
  ~Controller();

  // Serves until stopped. Returns OK after a clean shutdown.
  Status run();
  void request_stop();  // thread-safe
  std::uint16_t port() const;

 private:
  Controller();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace testudo::controller
