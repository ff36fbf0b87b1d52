// Tests of the audit log: the lines (valid JSON, fields, bounds, bad UTF-8), the file and
// directory modes, refusals (readable file, symlink), appending across reopen, and a real
// full disk (a tiny tmpfs in a private mount namespace, as in task_store_test.cc).
#include "auth/audit_log.h"
#include "base/test_small_disk.h"
#include "base/test_temp_dir.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace testudo::auth {
namespace {

using testing::private_mounts;
using testing::SmallDisk;
using testing::TempDir;

namespace fs = std::filesystem;
using nlohmann::json;


std::unique_ptr<AuditLog> open_ok(const std::string& path, std::size_t max_buffered = kAuditMaxBufferedBytes) {
  auto log = AuditLog::open(path, max_buffered);
  EXPECT_TRUE(log.ok()) << log.status().to_string();
  return log.ok() ? std::move(log).value() : nullptr;
}

// Every line of the file, each parsed strictly (nlohmann rejects invalid UTF-8 on parse).
std::vector<json> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<json> out;
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
    if (!j.is_discarded()) out.push_back(std::move(j));
  }
  return out;
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

AuditEvent full_event() {
  AuditEvent e;
  e.operation = "execute";
  e.outcome = "denied";
  e.identity = "sha256:" + std::string(64, 'a');
  e.name = "alice";
  e.role = "client";
  e.peer = "10.0.0.7:51234";
  e.targets = {3, 4};
  e.code_sha256 = std::string(64, 'c');
  e.reason = "no rule allows 'execute' for sha256:aaaa\u2026(alice) on engine 3";
  e.task_id = 17;
  return e;
}

TEST(AuditLog, LinesAreJsonWithTheFields) {
  TempDir dir;
  const std::string path = dir.path() + "/audit/audit.log";
  auto log = open_ok(path);
  ASSERT_TRUE(log);
  log->record(full_event());
  AuditEvent minimal;
  minimal.operation = "login";
  minimal.outcome = "accepted";
  minimal.peer = "[::1]:40000";
  log->record(minimal);
  EXPECT_EQ(log->buffered(), 2u);
  EXPECT_EQ(fs::file_size(path), 0u);  // record() only buffers
  ASSERT_TRUE(log->flush().ok());
  EXPECT_EQ(log->buffered(), 0u);

  auto lines = read_lines(path);
  ASSERT_EQ(lines.size(), 2u);
  const json& a = lines[0];
  const std::regex time_re(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z)");
  EXPECT_TRUE(std::regex_match(a["time"].get<std::string>(), time_re)) << a["time"];
  EXPECT_EQ(a["operation"], "execute");
  EXPECT_EQ(a["outcome"], "denied");
  EXPECT_EQ(a["identity"], "sha256:" + std::string(64, 'a'));
  EXPECT_EQ(a["name"], "alice");
  EXPECT_EQ(a["role"], "client");
  EXPECT_EQ(a["peer"], "10.0.0.7:51234");
  EXPECT_EQ(a["targets"], json::array({3, 4}));
  EXPECT_EQ(a["code_sha256"], std::string(64, 'c'));
  EXPECT_EQ(a["reason"], full_event().reason);
  EXPECT_EQ(a["task_id"], 17);
  // The key order is fixed, "time" first.
  std::ifstream in(path);
  std::string first;
  std::getline(in, first);
  EXPECT_EQ(first.rfind(R"({"time":")", 0), 0u) << first;
  EXPECT_LT(first.find("\"operation\""), first.find("\"task_id\""));

  const json& b = lines[1];
  EXPECT_EQ(b["operation"], "login");
  EXPECT_EQ(b["outcome"], "accepted");
  EXPECT_EQ(b["peer"], "[::1]:40000");
  for (const char* absent : {"identity", "name", "role", "targets", "code_sha256", "reason", "task_id"}) {
    EXPECT_FALSE(b.contains(absent)) << absent;
  }
}

TEST(AuditLog, CreatesFile0600AndDirectories0700) {
  TempDir dir;
  const std::string parent = dir.path() + "/a/b";
  const std::string path = parent + "/audit.log";
  const mode_t old_umask = ::umask(0);  // the modes must not depend on a permissive umask
  auto log = open_ok(path);
  ::umask(old_umask);
  ASSERT_TRUE(log);
  EXPECT_EQ(mode_of(path), 0600u);
  EXPECT_EQ(mode_of(parent), 0700u);
  EXPECT_EQ(mode_of(dir.path() + "/a"), 0700u);
}

TEST(AuditLog, RefusesAnExistingFileReadableByOthers) {
  TempDir dir;
  const std::string path = dir.path() + "/audit.log";
  std::ofstream(path) << "{\"operation\":\"old\"}\n";
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  auto log = AuditLog::open(path);
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(log.status().message().find("audit log " + path + " has mode 0644"), std::string::npos)
      << log.status().message();
  EXPECT_NE(log.status().message().find("chmod 600"), std::string::npos) << log.status().message();
  EXPECT_EQ(fs::file_size(path), 20u);  // untouched
}

TEST(AuditLog, RefusesASymlink) {
  TempDir dir;
  const std::string target = dir.path() + "/elsewhere.log";
  std::ofstream(target) << "";
  ASSERT_EQ(::chmod(target.c_str(), 0600), 0);
  const std::string path = dir.path() + "/audit.log";
  ASSERT_EQ(::symlink(target.c_str(), path.c_str()), 0);
  auto log = AuditLog::open(path);
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(log.status().message().find("audit log " + path + " is a symbolic link"), std::string::npos)
      << log.status().message();
  // A dangling symlink is not followed to create its target either.
  fs::remove(target);
  EXPECT_FALSE(AuditLog::open(path).ok());
  EXPECT_FALSE(fs::exists(target));
}

// Size-based rotation keeps at most keep_files old files, each 0600, each of whole lines, the
// newest events in the live file and the oldest in the highest-numbered one.
TEST(AuditLog, RotatesBySizeKeepingWholeLinesAndTheNewestFiles) {
  TempDir dir;
  const std::string path = dir.path() + "/audit.log";
  auto log = open_ok(path);
  ASSERT_TRUE(log);
  log->set_rotation(2000, 2);
  for (int i = 0; i < 200; ++i) {
    AuditEvent e;
    e.operation = "op";
    e.task_id = static_cast<std::uint64_t>(i + 1);
    log->record(e);
    if (i % 10 == 9) {
      ASSERT_TRUE(log->flush().ok());
    }
  }
  ASSERT_TRUE(log->flush().ok());
  log.reset();
  EXPECT_FALSE(fs::exists(path + ".3"));
  std::vector<std::uint64_t> ids;
  for (const std::string& file : {path + ".2", path + ".1", path}) {
    ASSERT_TRUE(fs::exists(file)) << file;
    EXPECT_EQ(mode_of(file), 0600u) << file;
    for (const auto& j : read_lines(file)) ids.push_back(j["task_id"].get<std::uint64_t>());
  }
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.back(), 200u);  // the newest survive
  for (std::size_t i = 1; i < ids.size(); ++i) EXPECT_EQ(ids[i], ids[i - 1] + 1) << "a gap or reordering at " << i;
  EXPECT_LT(ids.size(), 200u);  // the oldest file was dropped
}

TEST(AuditLog, AppendsAcrossReopenAndFlushesOnDestruction) {
  TempDir dir;
  const std::string path = dir.path() + "/audit.log";
  {
    auto log = open_ok(path);
    ASSERT_TRUE(log);
    log->record(full_event());
    ASSERT_TRUE(log->flush().ok());
    AuditEvent e;
    e.operation = "first-run-unflushed";
    log->record(e);  // the destructor writes it
  }
  {
    auto log = open_ok(path);
    ASSERT_TRUE(log);
    AuditEvent e;
    e.operation = "second-run";
    log->record(e);
  }
  auto lines = read_lines(path);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["operation"], "execute");
  EXPECT_EQ(lines[1]["operation"], "first-run-unflushed");
  EXPECT_EQ(lines[2]["operation"], "second-run");
}

TEST(AuditLog, EndsAFragmentLeftByACrashedWriter) {
  TempDir dir;
  const std::string path = dir.path() + "/audit.log";
  {
    std::ofstream out(path);
    out << "{\"operation\":\"ok\"}\n{\"operation\":\"cut";
  }
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  auto log = open_ok(path);
  ASSERT_TRUE(log);
  AuditEvent e;
  e.operation = "after";
  log->record(e);
  ASSERT_TRUE(log->flush().ok());
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1], "{\"operation\":\"cut");
  EXPECT_EQ(json::parse(lines[2])["operation"], "after");
}

TEST(AuditLog, InvalidUtf8FromAPeerYieldsValidJson) {
  TempDir dir;
  const std::string path = dir.path() + "/audit.log";
  auto log = open_ok(path);
  ASSERT_TRUE(log);
  AuditEvent e;
  e.operation = "login";
  e.outcome = "rejected";
  e.name = std::string("ev\xff\xfeil\xc3", 7);
  static const char kRaw[] = "bad \xc0\xaf utf8 \xed\xa0\x80 and a nul \0 byte";
  e.reason = std::string(kRaw, sizeof kRaw - 1);
  EXPECT_NO_THROW(log->record(e));
  ASSERT_TRUE(log->flush().ok());
  auto lines = read_lines(path);
  ASSERT_EQ(lines.size(), 1u);
  const std::string name = lines[0]["name"];
  EXPECT_NE(name.find("\xEF\xBF\xBD"), std::string::npos) << name;  // U+FFFD
  EXPECT_EQ(name.rfind("ev", 0), 0u);
  const std::string reason = lines[0]["reason"];
  EXPECT_NE(reason.find("nul "), std::string::npos);
  EXPECT_NE(reason.find(" byte"), std::string::npos);
}

TEST(AuditLog, LongFieldsAreTruncatedOnCharacterBoundaries) {
  TempDir dir;
  const std::string path = dir.path() + "/audit.log";
  auto log = open_ok(path);
  ASSERT_TRUE(log);
  AuditEvent e;
  e.operation = "execute";
  e.reason = std::string(10 * 1024, 'r');
  log->record(e);
  // Multi-byte characters: a cut in the middle of one would be replaced, not kept broken.
  std::string accents;
  for (int i = 0; i < 5000; ++i) accents += "\u00e9";  // 2 bytes each
  e.reason = accents;
  e.name = accents;
  log->record(e);
  ASSERT_TRUE(log->flush().ok());
  auto lines = read_lines(path);
  ASSERT_EQ(lines.size(), 2u);
  const std::string r0 = lines[0]["reason"];
  EXPECT_LE(r0.size(), kAuditMaxReasonBytes);
  EXPECT_GE(r0.size(), kAuditMaxReasonBytes - 8);
  EXPECT_EQ(r0.rfind(std::string(400, 'r'), 0), 0u);
  const std::string r1 = lines[1]["reason"];
  const std::string n1 = lines[1]["name"];
  EXPECT_LE(r1.size(), kAuditMaxReasonBytes);
  EXPECT_LE(n1.size(), kAuditMaxFieldBytes);
  EXPECT_EQ(r1.find("\xEF\xBF\xBD"), std::string::npos) << "cut inside a character";
  EXPECT_EQ(n1.find("\xEF\xBF\xBD"), std::string::npos) << "cut inside a character";
}

// ---- a full disk: a tiny tmpfs in a private mount namespace (root only; skipped elsewhere).

AuditEvent numbered(int i) {
  AuditEvent e = full_event();
  e.task_id = static_cast<std::uint64_t>(i);
  e.reason = "event " + std::to_string(i) + " " + std::string(200, 'x');
  return e;
}

TEST(AuditLog, DiskFullKeepsTheLinesUntilSpaceReturns) {
  if (!private_mounts()) GTEST_SKIP() << "needs a private mount namespace (root) for a small tmpfs";
  TempDir dir;
  SmallDisk disk(dir.path() + "/disk", "64k");
  if (!disk.mounted()) GTEST_SKIP() << "cannot mount a tmpfs: " << disk.error();
  const std::string path = dir.path() + "/disk/audit.log";
  auto log = open_ok(path);
  ASSERT_TRUE(log);
  int next = 1;
  for (; next <= 5; ++next) log->record(numbered(next));
  ASSERT_TRUE(log->flush().ok());

  const auto before = fs::file_size(path);
  const std::string filler = disk.fill("filler");
  for (; next <= 90; ++next) log->record(numbered(next));  // ~40 KB: fits once the filler is gone
  Status st = log->flush();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.to_string();
  EXPECT_NE(st.message().find("disk full"), std::string::npos) << st.to_string();
  EXPECT_NE(st.message().find(path), std::string::npos) << st.to_string();
  EXPECT_GT(log->buffered(), 0u);
  // tmpfs still had room in the log's last page: the failed flush wrote part of the lines,
  // most likely ending inside one, which the next flush must complete.
  EXPECT_GT(fs::file_size(path), before) << "expected a partial write into the last page";
  const std::size_t kept = log->buffered();
  // Still failing: nothing lost, nothing duplicated.
  EXPECT_FALSE(log->flush().ok());
  EXPECT_EQ(log->buffered(), kept);

  fs::remove(filler);
  st = log->flush();
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(log->buffered(), 0u);
  EXPECT_EQ(log->dropped(), 0u);
  log.reset();

  // Every event arrived exactly once, in order, each line whole (no fragment of a partial
  // write left behind).
  auto lines = read_lines(path);
  ASSERT_EQ(lines.size(), 90u);
  for (std::size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(lines[i]["task_id"], i + 1) << i;
}

TEST(AuditLog, BoundedBufferDropsTheOldestAndSaysSo) {
  if (!private_mounts()) GTEST_SKIP() << "needs a private mount namespace (root) for a small tmpfs";
  TempDir dir;
  SmallDisk disk(dir.path() + "/disk", "64k");
  if (!disk.mounted()) GTEST_SKIP() << "cannot mount a tmpfs: " << disk.error();
  const std::string path = dir.path() + "/disk/audit.log";
  constexpr std::size_t kBound = 8 * 1024;
  auto log = open_ok(path, kBound);
  ASSERT_TRUE(log);
  const std::string filler = disk.fill("filler");
  constexpr int kEvents = 300;  // ~100 KB, far over the bound
  for (int i = 1; i <= kEvents; ++i) {
    log->record(numbered(i));
    if (i % 50 == 0 && i < kEvents) {
      EXPECT_FALSE(log->flush().ok());
    }
  }
  EXPECT_GT(log->dropped(), 0u);
  EXPECT_LT(log->buffered(), 40u);  // ~350-byte lines under an 8 KiB bound
  const std::uint64_t dropped = log->dropped();

  fs::remove(filler);
  ASSERT_TRUE(log->flush().ok());
  log.reset();
  auto lines = read_lines(path);
  ASSERT_GE(lines.size(), 2u);
  // The marker comes first (it stands in for the oldest events), then the newest survivors.
  // Drops counted before the last failed flush may sit in an earlier marker line.
  std::uint64_t counted = 0;
  std::size_t events = 0;
  std::uint64_t last_task = 0;
  for (const auto& j : lines) {
    if (j["operation"] == "audit.dropped") {
      counted += j["count"].get<std::uint64_t>();
      EXPECT_EQ(events, 0u) << "marker after surviving events";
    } else {
      ++events;
      EXPECT_GT(j["task_id"].get<std::uint64_t>(), last_task);
      last_task = j["task_id"];
    }
  }
  EXPECT_GE(counted, dropped);
  EXPECT_EQ(counted + events, static_cast<std::uint64_t>(kEvents));
  EXPECT_EQ(last_task, static_cast<std::uint64_t>(kEvents));
}

}  // namespace
}  // namespace testudo::auth
