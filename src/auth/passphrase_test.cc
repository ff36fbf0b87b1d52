// Passphrase sources (auth/passphrase.h): each kind reads what it should, and no error ever
// repeats a passphrase, or a spec that might be one typed by mistake.
#include "auth/passphrase.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

namespace testudo::auth {
namespace {

bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

TEST(PassphraseTest, SpecsParse) {
  EXPECT_EQ(parse_passphrase_source("prompt")->kind, PassphraseSource::Kind::kPrompt);
  EXPECT_EQ(parse_passphrase_source("file:/x")->argument, "/x");
  EXPECT_EQ(parse_passphrase_source("env:NAME")->kind, PassphraseSource::Kind::kEnv);
  EXPECT_EQ(parse_passphrase_source("command:pass show x")->argument, "pass show x");
  EXPECT_EQ(parse_passphrase_source("env:NAME")->spec(), "env:NAME");
  for (const char* bad : {"", "env:", "file:", "command:", "hunter2", "ENV:X"}) {
    auto parsed = parse_passphrase_source(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    if (std::string(bad) == "hunter2") {
      EXPECT_FALSE(contains(parsed.status().message(), "hunter2"));
    }
  }
}

TEST(PassphraseTest, EnvironmentFileAndCommand) {
  ::setenv("TESTUDO_PASSPHRASE_TEST", "s3cret words", 1);
  auto from_env = read_passphrase({PassphraseSource::Kind::kEnv, "TESTUDO_PASSPHRASE_TEST"}, "test key");
  ASSERT_TRUE(from_env.ok()) << from_env.status().to_string();
  EXPECT_EQ(*from_env, "s3cret words");
  ::unsetenv("TESTUDO_PASSPHRASE_TEST");
  auto unset = read_passphrase({PassphraseSource::Kind::kEnv, "TESTUDO_PASSPHRASE_TEST"}, "test key");
  EXPECT_EQ(unset.status().code(), StatusCode::kNotFound);

  char dir_template[] = "/tmp/testudo-pass-XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string file = std::string(dir_template) + "/pass";
  {
    std::ofstream f(file);
    f << "first line only\r\nsecond line\n";
  }
  ::chmod(file.c_str(), 0644);
  auto loose = read_passphrase({PassphraseSource::Kind::kFile, file}, "test key");
  ASSERT_FALSE(loose.ok());
  EXPECT_EQ(loose.status().code(), StatusCode::kPermissionDenied);
  EXPECT_FALSE(contains(loose.status().message(), "first line"));
  ::chmod(file.c_str(), 0600);
  auto from_file = read_passphrase({PassphraseSource::Kind::kFile, file}, "test key");
  ASSERT_TRUE(from_file.ok()) << from_file.status().to_string();
  EXPECT_EQ(*from_file, "first line only");

  auto from_command = read_passphrase({PassphraseSource::Kind::kCommand, "printf 'from a command\\n'"}, "test key");
  ASSERT_TRUE(from_command.ok()) << from_command.status().to_string();
  EXPECT_EQ(*from_command, "from a command");
  auto failed = read_passphrase({PassphraseSource::Kind::kCommand, "echo leaked-output; exit 3"}, "test key");
  ASSERT_FALSE(failed.ok());
  EXPECT_TRUE(contains(failed.status().message(), "exit status 3")) << failed.status().message();
  EXPECT_FALSE(contains(failed.status().message(), "leaked-output\n"));
  auto empty = read_passphrase({PassphraseSource::Kind::kCommand, "true"}, "test key");
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  std::remove(file.c_str());
  ::rmdir(dir_template);
}

TEST(PassphraseTest, PromptWithoutTerminalSaysWhatToDo) {
  // ctest runs without a controlling terminal; setsid guarantees it in a child.
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::setsid();
    auto r = read_passphrase({}, "test key");
    std::_Exit(!r.ok() && contains(r.status().message(), "file:PATH") ? 0 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace
}  // namespace testudo::auth
