#include "crypto/private_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace testudo::crypto {
namespace {

// A fresh directory per test under the test temp dir, removed afterwards.
class PrivateFileTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = testing::TempDir() + "testudo_private_file_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    ASSERT_EQ(::chmod(root_.c_str(), 0700), 0);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(root_, ec);
  }

  static mode_t mode_of(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
  }

  // Writes a file with the ordinary API (whatever the umask gives), then sets its mode.
  static void plain_write(const std::string& path, const std::string& contents, mode_t mode) {
    std::ofstream(path) << contents;
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
  }

  std::string root_;
};

TEST_F(PrivateFileTest, WrittenFileIsOwnerOnlyAndReadable) {
  const mode_t old_umask = ::umask(0);  // the most permissive umask must not loosen the file
  const std::string path = root_ + "/key.pem";
  Status st = write_private_file(path, "top secret");
  ::umask(old_umask);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(mode_of(path), 0600u);
  auto read = read_private_file(path, "private key");
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(*read, "top secret");
}

TEST_F(PrivateFileTest, AtomicWriteReplacesAndLeavesNoTemporaries) {
  const std::string path = root_ + "/conn.json";
  ASSERT_TRUE(write_private_file(path, "first version, rather long").ok());
  ASSERT_TRUE(write_private_file(path, "second").ok());
  auto read = read_private_file(path, "connection file");
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(*read, "second");
  EXPECT_EQ(mode_of(path), 0600u);
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(root_)) {
    ++entries;
    EXPECT_EQ(e.path().filename(), "conn.json");
  }
  EXPECT_EQ(entries, 1);
}

TEST_F(PrivateFileTest, AtomicWriteTightensAnExistingLooseFile) {
  const std::string path = root_ + "/conn.json";
  plain_write(path, "old", 0644);
  ASSERT_TRUE(write_private_file(path, "new").ok());
  EXPECT_EQ(mode_of(path), 0600u);
}

TEST_F(PrivateFileTest, WriteIntoMissingDirectoryFailsCleanly) {
  Status st = write_private_file(root_ + "/missing/conn.json", "x");
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
}

TEST_F(PrivateFileTest, EmptyFileReadsEmpty) {
  const std::string path = root_ + "/empty";
  ASSERT_TRUE(write_private_file(path, "").ok());
  auto read = read_private_file(path, "connection file");
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_TRUE(read->empty());
}

TEST_F(PrivateFileTest, GroupReadableFileRefused) {
  const std::string path = root_ + "/conn.json";
  plain_write(path, "capability-that-must-not-leak", 0640);
  auto read = read_private_file(path, "connection file");
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kPermissionDenied);
  const std::string& msg = read.status().message();
  EXPECT_NE(msg.find("connection file"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("0640"), std::string::npos) << msg;
  EXPECT_NE(msg.find("chmod 600"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("capability-that-must-not-leak"), std::string::npos) << msg;
}

TEST_F(PrivateFileTest, WorldWritableFileRefused) {
  const std::string path = root_ + "/conn.json";
  plain_write(path, "x", 0602);
  auto read = read_private_file(path, "connection file");
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(read.status().message().find("writable"), std::string::npos);
}

TEST_F(PrivateFileTest, SymlinkRefused) {
  const std::string target = root_ + "/real.pem";
  const std::string link = root_ + "/link.pem";
  ASSERT_TRUE(write_private_file(target, "key").ok());
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  auto read = read_private_file(link, "private key");
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(read.status().message().find(link), std::string::npos);
}

TEST_F(PrivateFileTest, DirectoryAndFifoRefused) {
  auto dir = read_private_file(root_, "private key");
  EXPECT_EQ(dir.status().code(), StatusCode::kPermissionDenied);
  const std::string fifo = root_ + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto read = read_private_file(fifo, "private key");  // must not block
  EXPECT_EQ(read.status().code(), StatusCode::kPermissionDenied);
}

TEST_F(PrivateFileTest, OversizedFileRefused) {
  const std::string path = root_ + "/big";
  ASSERT_TRUE(write_private_file(path, std::string(101, 'x')).ok());
  auto read = read_private_file(path, "connection file", 100);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kResourceExhausted);
  auto exact = read_private_file(path, "connection file", 101);
  ASSERT_TRUE(exact.ok()) << exact.status().to_string();
  EXPECT_EQ(exact->size(), 101u);
}

TEST_F(PrivateFileTest, MissingFileIsNotFound) {
  auto read = read_private_file(root_ + "/nope", "connection file");
  EXPECT_EQ(read.status().code(), StatusCode::kNotFound);
}

TEST_F(PrivateFileTest, EnsurePrivateDirCreatesParentsWith0700) {
  const mode_t old_umask = ::umask(0);
  const std::string dir = root_ + "/a/b/c";
  Status st = ensure_private_dir(dir);
  ::umask(old_umask);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(mode_of(root_ + "/a"), 0700u);
  EXPECT_EQ(mode_of(root_ + "/a/b"), 0700u);
  EXPECT_EQ(mode_of(dir), 0700u);
  // Existing and private: fine, and idempotent. Trailing slash too.
  EXPECT_TRUE(ensure_private_dir(dir).ok());
  EXPECT_TRUE(ensure_private_dir(dir + "/").ok());
}

TEST_F(PrivateFileTest, EnsurePrivateDirRefusesOpenDirUnlessFixing) {
  const std::string dir = root_ + "/shared";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);
  Status st = ensure_private_dir(dir);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(st.message().find(dir), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("0755"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("chmod 700"), std::string::npos) << st.message();
  EXPECT_EQ(mode_of(dir), 0755u);  // refused, not silently changed

  Status fixed = ensure_private_dir(dir, /*fix_mode=*/true);
  ASSERT_TRUE(fixed.ok()) << fixed.to_string();
  EXPECT_EQ(mode_of(dir), 0700u);
}

TEST_F(PrivateFileTest, EnsurePrivateDirRefusesAFile) {
  const std::string path = root_ + "/file";
  ASSERT_TRUE(write_private_file(path, "x").ok());
  EXPECT_FALSE(ensure_private_dir(path).ok());
  EXPECT_FALSE(ensure_private_dir(path + "/sub").ok());
  EXPECT_EQ(ensure_private_dir("").code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace testudo::crypto
