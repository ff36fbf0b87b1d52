#include "launch/remote_controller.h"
#include "launch/ssh_launcher.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace testudo::launch {
namespace {

TEST(SshLauncherTest, HostsWithEngineCounts) {
  auto hosts = parse_ssh_hosts("node1:4,node2,user@node3:2");
  ASSERT_TRUE(hosts.ok()) << hosts.status().to_string();
  ASSERT_EQ(hosts->size(), 3u);
  EXPECT_EQ((*hosts)[0].name, "node1");
  EXPECT_EQ((*hosts)[0].engines, 4);
  EXPECT_EQ((*hosts)[1].name, "node2");
  EXPECT_EQ((*hosts)[1].engines, 1);
  EXPECT_EQ((*hosts)[2].name, "user@node3");
  EXPECT_EQ((*hosts)[2].engines, 2);
}

TEST(SshLauncherTest, BadHostListsAreRefusedNamingTheEntry) {
  for (const char* bad : {"", "a:0", "a:-1", "a:x", "a:4096000", ":3", "a,,b", "-oProxyCommand=evil", "a;rm -rf /",
                          "a b", "$(id)", "a`id`"}) {
    auto hosts = parse_ssh_hosts(bad);
    EXPECT_FALSE(hosts.ok()) << bad;
    EXPECT_EQ(hosts.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(parse_ssh_hosts("a:x").status().message().find("'a:x'"), std::string::npos);
}

TEST(SshLauncherTest, ShellQuotingSurvivesQuotes) {
  EXPECT_EQ(shell_quote("plain"), "'plain'");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
  EXPECT_EQ(shell_quote("$(id) `id` ; &"), "'$(id) `id` ; &'");
}

TEST(SshLauncherTest, TheEngineCommandRunsInOneSessionWithATerminal) {
  SshSettings settings;
  settings.ssh = "/usr/bin/ssh";
  settings.ssh_args = {"-F", "/tmp/cfg"};
  settings.remote_dir = "dir with space";
  auto argv = ssh_engines_command(settings, "node1", 3, {"--tag", "site=lab"});
  ASSERT_GE(argv.size(), 7u);
  EXPECT_EQ(argv[0], "/usr/bin/ssh");
  EXPECT_EQ(argv[1], "-F");
  EXPECT_NE(std::find(argv.begin(), argv.end(), "-tt"), argv.end());  // hang-up ends the engines
  EXPECT_EQ(argv[argv.size() - 2], "node1");
  const std::string& remote = argv.back();
  EXPECT_NE(remote.find("cd 'dir with space'"), std::string::npos) << remote;
  EXPECT_NE(remote.find("-lt 3"), std::string::npos) << remote;
  EXPECT_NE(remote.find("'--tag' 'site=lab'"), std::string::npos) << remote;
  EXPECT_NE(remote.find("wait"), std::string::npos) << remote;
}

TEST(RemoteControllerTest, TheControllerRunsAsItsOwnersWithOnlyCertificatesAndNoSecretsInArgv) {
  RemoteControllerOptions options;
  options.host = "alice@head-node";
  options.ssh.remote_dir = default_controller_dir("lab");
  options.profile = "lab";
  options.controller_args = {"--heartbeat-timeout", "3"};
  const std::string command = remote_controller_command(options);
  EXPECT_NE(command.find("cd '.testudo/remote/lab/controller'"), std::string::npos) << command;
  // Its own home there, apart from the remote user's profiles; exec so that a hang-up reaches it.
  EXPECT_NE(command.find("TESTUDO_HOME=\"$PWD/home\" exec 'testudo' controller --profile 'lab' --ip '*'"),
            std::string::npos)
      << command;
  EXPECT_NE(command.find("--owner-cert owner-cert.pem --engine-cert engine-cert.pem"), std::string::npos) << command;
  EXPECT_NE(command.find("--location 'head-node'"), std::string::npos) << command;  // without "alice@"
  EXPECT_NE(command.find("'--heartbeat-timeout' '3'"), std::string::npos) << command;
  EXPECT_EQ(command.find("capability"), std::string::npos) << command;
  EXPECT_EQ(command.find("--reuse"), std::string::npos) << command;

  options.controller_args = {"--location", "10.0.0.5"};
  options.reuse = true;
  const std::string located = remote_controller_command(options);
  EXPECT_EQ(located.find("head-node"), std::string::npos) << located;  // the given location wins
  EXPECT_NE(located.find("--reuse"), std::string::npos) << located;
  EXPECT_EQ(controller_location("head-node"), "head-node");
}

}  // namespace
}  // namespace testudo::launch
