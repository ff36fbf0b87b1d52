// A real local cluster for integration tests: the `testudo` binary started as separate
// processes (controller + engines) in a private $TESTUDO_HOME, on loopback, port 0.
// Stopped by process id when the fixture goes away. Not thread-safe.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/profile.h"
#include "launch/launcher.h"
#include "testudo/client.h"

namespace testudo::testing {

// Paths of the executables under test (set by CMake): `testudo`, and `testudo-engine` beside it.
inline std::string testudo_binary() { return TESTUDO_BINARY_PATH; }
inline std::string testudo_engine_binary() { return TESTUDO_ENGINE_BINARY_PATH; }

class TestCluster {
 public:
  // Starts `engines` engines; extra controller flags such as {"--heartbeat-timeout", "2"}.
  static std::unique_ptr<TestCluster> start(int engines, std::vector<std::string> controller_args = {});
  ~TestCluster();

  const std::string& home() const { return home_; }
  const std::string& profile() const { return profile_; }
  ProfilePaths paths() const { return profile_paths(profile_); }
  const launch::ClusterProcesses& processes() const { return processes_; }
  std::string controller_log() const { return paths().log_dir + "/controller.log"; }

  // A connected client (fails the test if it cannot connect).
  std::unique_ptr<Client> client();

  // Starts one more engine process with the profile's engine connection file, or `file`.
  pid_t start_engine(const std::string& file = "");
  // Waits until the controller reports `n` engines; false on timeout.
  bool wait_for_engines(std::size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(30));

 private:
  std::string home_;
  std::string profile_ = "test";
  launch::ClusterProcesses processes_;
  std::vector<pid_t> extra_;
};

// Polls `pred` every 20 ms until it holds or `timeout` passes; returns its last answer.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout);
// Reads a whole file ("" if missing).
std::string read_file(const std::string& path);
// Runs a shell command, returns (exit code, stdout+stderr).
std::pair<int, std::string> run_command(const std::string& command);
// Runs Debian's python3 here with `script`, feeding `input` on stdin; returns its stdout
// (fails the test if it exits non-zero). Used to make and read cloudpickled payloads.
std::string local_python(const std::string& script, const std::string& input = "");

}  // namespace testudo::testing
