// Log rotation, in child processes: the logger is process-wide state.
#include "base/log.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "base/test_temp_dir.h"

namespace testudo::log {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::uintmax_t size_of(const std::string& path) {
  std::error_code ec;
  const auto n = std::filesystem::file_size(path, ec);
  return ec ? 0 : n;
}

// Runs `body` in a child process and returns its exit status (0: all went well there).
int in_child(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(body());
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

TEST(LogRotationTest, AFileLogStaysBelowItsLimitKeepingTheNewestLines) {
  testudo::testing::TempDir dir{"log_test"};
  const std::string path = dir.path() + "/controller.log";
  ASSERT_EQ(in_child([&] {
              if (!set_file(path)) return 1;
              if (set_rotation(2000, 2) != path) return 2;
              for (int i = 0; i < 500; ++i) LOG_INFO("test") << "line " << i << " of a flood of refused connections";
              return 0;
            }),
            0);
  for (const std::string& p : {path, path + ".1", path + ".2"}) {
    EXPECT_GT(size_of(p), 0u) << p;
    EXPECT_LE(size_of(p), 2000u) << p;
  }
  EXPECT_FALSE(std::filesystem::exists(path + ".3")) << "only 2 old files are kept";
  EXPECT_NE(read_file(path).find("line 499 of"), std::string::npos) << "the newest line is in the live file";
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(LogRotationTest, StderrThatIsALaunchersFileRotatesAndStdoutFollows) {
  testudo::testing::TempDir dir{"log_test"};
  const std::string path = dir.path() + "/engine-0.log";
  ASSERT_EQ(in_child([&] {
              // As launch::spawn_detached leaves it: stdout and stderr are one appended file.
              const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
              if (fd < 0 || ::dup2(fd, 1) < 0 || ::dup2(fd, 2) < 0) return 1;
              ::close(fd);
              if (set_rotation(1000, 1) != path) return 2;
              for (int i = 0; i < 100; ++i) LOG_INFO("test") << "engine line " << i;
              std::printf("printed after the rotation\n");
              std::fflush(stdout);
              return 0;
            }),
            0);
  EXPECT_LE(size_of(path), 1000u);
  EXPECT_LE(size_of(path + ".1"), 1000u);
  EXPECT_GT(size_of(path + ".1"), 0u);
  EXPECT_NE(read_file(path).find("printed after the rotation"), std::string::npos) << "stdout followed stderr";
  EXPECT_NE(read_file(path).find("engine line 99"), std::string::npos);
}

TEST(LogRotationTest, AStderrThatIsNoFileIsNeverRotated) {
  ASSERT_EQ(in_child([] {
              int pipe_fds[2];
              if (::pipe(pipe_fds) != 0 || ::dup2(pipe_fds[1], 2) < 0) return 1;
              return set_rotation(1000, 1).empty() ? 0 : 2;
            }),
            0);
}

}  // namespace
}  // namespace testudo::log
