// The split between the two executables: `testudo` (controller, clients, launcher) never maps
// a Python interpreter; `testudo-engine` is the only one that does, and `testudo engine ...`
// reaches it with every argument, or says clearly where it expected it.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test_cluster.h"

namespace testudo::testing {
namespace {

using namespace std::chrono_literals;

std::string maps_of(pid_t pid) { return read_file("/proc/" + std::to_string(pid) + "/maps"); }

std::string exe_of(pid_t pid) {
  std::error_code ec;
  return std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/exe", ec).string();
}

bool maps_python(pid_t pid) { return maps_of(pid).find("libpython") != std::string::npos; }

// A scratch directory with a copy of `testudo` and no testudo-engine beside it.
class LoneTestudo {
 public:
  LoneTestudo() {
    char tmpl[] = "/tmp/testudo-lone-XXXXXX";
    if (mkdtemp(tmpl)) dir_ = tmpl;
    std::error_code ec;
    std::filesystem::copy_file(testudo_binary(), dir_ + "/testudo", ec);
    EXPECT_FALSE(ec) << ec.message();
  }
  ~LoneTestudo() {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  const std::string& dir() const { return dir_; }
  std::string binary() const { return dir_ + "/testudo"; }

 private:
  std::string dir_;
};

TEST(ExecutablesTest, ControllerMapsNoPythonAndEnginesDo) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const pid_t controller = cluster->processes().controller;
  ASSERT_FALSE(maps_of(controller).empty()) << "cannot read /proc/" << controller << "/maps";
  EXPECT_EQ(exe_of(controller), std::filesystem::canonical(testudo_binary()).string());
  EXPECT_FALSE(maps_python(controller)) << "the controller process maps libpython:\n" << maps_of(controller);

  ASSERT_EQ(cluster->processes().engines.size(), 1u);
  const pid_t engine = cluster->processes().engines[0];
  // The launcher runs the engine executable itself, not `testudo engine`.
  EXPECT_EQ(exe_of(engine), std::filesystem::canonical(testudo_engine_binary()).string());
  EXPECT_TRUE(maps_python(engine)) << "an engine without libpython mapped? its maps:\n" << maps_of(engine);
}

TEST(ExecutablesTest, TestudoEngineBecomesTheEngineUnderTheSamePid) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  // `testudo engine --profile test`: the process execs testudo-engine, so the pid the caller
  // holds is the engine's (signals and waits reach it).
  const pid_t pid = cluster->start_engine();
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(cluster->wait_for_engines(2)) << read_file(cluster->paths().log_dir + "/engine-extra-0.log");
  EXPECT_EQ(exe_of(pid), std::filesystem::canonical(testudo_engine_binary()).string());
  EXPECT_TRUE(maps_python(pid));
}

TEST(ExecutablesTest, ProfileAndLogLevelReachTheEngineBeforeOrAfterTheSubcommand) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  // The profile must arrive (otherwise the engine reads the default profile's missing
  // connection file and exits); --log-level warning drops the INFO line of registration.
  const std::vector<std::vector<std::string>> command_lines = {
      {testudo_binary(), "--profile", "test", "--log-level", "warning", "engine"},
      {testudo_binary(), "engine", "--log-level=warning", "--profile", "test"},
  };
  std::vector<pid_t> pids;
  std::vector<std::string> logs;
  for (const auto& argv : command_lines) {
    logs.push_back(cluster->paths().log_dir + "/engine-by-hand-" + std::to_string(logs.size()) + ".log");
    auto pid = launch::spawn_detached(argv, logs.back());
    ASSERT_TRUE(pid.ok()) << pid.status().to_string();
    pids.push_back(*pid);
  }
  const bool registered = cluster->wait_for_engines(3);
  for (pid_t p : pids) EXPECT_EQ(exe_of(p), std::filesystem::canonical(testudo_engine_binary()).string());
  for (pid_t p : pids) launch::terminate(p, 2s);
  ASSERT_TRUE(registered) << read_file(logs[0]) << read_file(logs[1]);
  for (const auto& log : logs) EXPECT_EQ(read_file(log).find("registered as engine"), std::string::npos) << read_file(log);
  // ... which an engine at the default level does write.
  EXPECT_NE(read_file(cluster->paths().log_dir + "/engine-0.log").find("registered as engine"), std::string::npos);
}

TEST(ExecutablesTest, TestudoEngineHelpIsTheEnginesHelp) {
  auto [rc, through_testudo] = run_command(testudo_binary() + " engine --help");
  EXPECT_EQ(rc, 0) << through_testudo;
  auto [erc, direct] = run_command(testudo_engine_binary() + " --help");
  EXPECT_EQ(erc, 0) << direct;
  EXPECT_EQ(through_testudo, direct);
  EXPECT_NE(direct.find("Usage: testudo-engine"), std::string::npos) << direct;
  for (const char* option : {"--profile", "--log-level", "--file", "--tag", "--max-output-bytes", "--identity-dir"}) {
    EXPECT_NE(direct.find(option), std::string::npos) << option << " missing from:\n" << direct;
  }
  // Options of testudo before the subcommand do not stop it from reaching the engine.
  EXPECT_EQ(run_command(testudo_binary() + " --profile x --log-level=debug engine --help").second, direct);
  // testudo's own help still lists the subcommand.
  EXPECT_NE(run_command(testudo_binary() + " --help").second.find("engine "), std::string::npos);
}

TEST(ExecutablesTest, MissingEngineExecutableIsAClearError) {
  LoneTestudo lone;
  ASSERT_FALSE(lone.dir().empty());
  const std::string expected = lone.dir() + "/testudo-engine";

  auto [rc, out] = run_command(lone.binary() + " engine --help");
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find(expected), std::string::npos) << out;
  EXPECT_NE(out.find("missing"), std::string::npos) << out;

  // A cluster is refused before its controller starts, naming the same path.
  auto [crc, cout] = run_command("TESTUDO_HOME=" + lone.dir() + " " + lone.binary() + " cluster start -n 1 --daemonize");
  EXPECT_EQ(crc, 1) << cout;
  EXPECT_NE(cout.find(expected), std::string::npos) << cout;
  EXPECT_EQ(cout.find("controller started"), std::string::npos) << cout;

  // Commands that need no engine still work from the lone copy.
  auto [hrc, help] = run_command(lone.binary() + " controller --help");
  EXPECT_EQ(hrc, 0) << help;
}

}  // namespace
}  // namespace testudo::testing
