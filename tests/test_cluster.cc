#include "test_cluster.h"

#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace testudo::testing {

std::unique_ptr<TestCluster> TestCluster::start(int engines, std::vector<std::string> controller_args) {
  auto c = std::unique_ptr<TestCluster>(new TestCluster());
  char tmpl[] = "/tmp/testudo-test-XXXXXX";
  if (!mkdtemp(tmpl)) {
    ADD_FAILURE() << "mkdtemp failed";
    return nullptr;
  }
  c->home_ = tmpl;
  // Everything this process and its children read or write lives under this directory.
  setenv("TESTUDO_HOME", c->home_.c_str(), 1);
  launch::ClusterOptions o;
  o.program = testudo_binary();
  o.profile = c->profile_;
  o.engines = engines;
  o.timeout = std::chrono::seconds(60);
  o.controller_args = std::move(controller_args);
  auto procs = launch::start_cluster(o, [](const std::string&) {});
  if (!procs.ok()) {
    ADD_FAILURE() << "cluster did not start: " << procs.status().to_string() << "\n"
                  << read_file(c->paths().log_dir + "/controller.log");
    return nullptr;
  }
  c->processes_ = *procs;
  return c;
}

TestCluster::~TestCluster() {
  for (pid_t p : extra_) launch::terminate(p, std::chrono::milliseconds(2000));
  for (pid_t p : processes_.engines) launch::terminate(p, std::chrono::milliseconds(2000));
  if (processes_.controller) launch::terminate(processes_.controller, std::chrono::milliseconds(3000));
  if (!home_.empty()) std::filesystem::remove_all(home_);
}

std::unique_ptr<Client> TestCluster::client() {
  ClientOptions o;
  o.profile = profile_;
  auto c = Client::connect(o);
  EXPECT_TRUE(c.ok()) << c.status().to_string();
  return c.ok() ? std::move(c).value() : nullptr;
}

pid_t TestCluster::start_engine(const std::string& file) {
  std::vector<std::string> argv{testudo_binary(), "engine", "--profile", profile_};
  if (!file.empty()) {
    argv.push_back("--file");
    argv.push_back(file);
  }
  auto pid = launch::spawn_detached(argv, paths().log_dir + "/engine-extra-" + std::to_string(extra_.size()) + ".log");
  EXPECT_TRUE(pid.ok()) << pid.status().to_string();
  if (!pid.ok()) return 0;
  extra_.push_back(*pid);
  return *pid;
}

bool TestCluster::wait_for_engines(std::size_t n, std::chrono::milliseconds timeout) {
  auto c = client();
  if (!c) return false;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto ids = c->engine_ids();
    if (ids.ok() && ids->size() == n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::pair<int, std::string> run_command(const std::string& command) {
  std::string out;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (!p) return {-1, ""};
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string local_python(const std::string& script, const std::string& input) {
  std::string in_path = "/tmp/testudo-py-in-" + std::to_string(::getpid());
  {
    std::ofstream f(in_path, std::ios::binary);
    f << input;
  }
  auto [rc, out] = run_command("/usr/bin/python3 -c \"" + script + "\" < " + in_path);
  std::remove(in_path.c_str());
  EXPECT_EQ(rc, 0) << out;
  return out;
}

}  // namespace testudo::testing
