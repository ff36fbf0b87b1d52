// EngineIds: an engine process keeps its id, a new process gets a new one, no id is given twice,
// and all of that survives a reopen with resume (a controller restart with --reuse).
#include "controller/engine_ids.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "base/test_temp_dir.h"

namespace testudo::controller {
namespace {

class EngineIdsTest : public ::testing::Test {
 protected:
  std::unique_ptr<EngineIds> open(bool resume) {
    auto ids = EngineIds::open(path_, resume);
    EXPECT_TRUE(ids.ok()) << ids.status().to_string();
    return ids.ok() ? std::move(ids).value() : nullptr;
  }
  std::uint32_t id_of(EngineIds& ids, std::string_view key, std::string_view instance) {
    auto a = ids.assign(key, instance);
    EXPECT_TRUE(a.ok()) << a.status().to_string();
    return a.ok() ? a->id : UINT32_MAX;
  }
  void write(const std::string& text) {
    std::ofstream(path_) << text;
    ::chmod(path_.c_str(), 0600);
  }

  testudo::testing::TempDir dir_{"engine_ids_test"};
  std::string path_ = dir_.path() + "/engine-ids.json";
};

TEST_F(EngineIdsTest, AProcessKeepsItsIdAndAnotherProcessGetsANewOne) {
  EngineIds ids;
  EXPECT_EQ(id_of(ids, "sha256:shared", "a"), 0u);
  EXPECT_EQ(id_of(ids, "sha256:shared", "b"), 1u);
  auto again = ids.assign("sha256:shared", "a");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id, 0u);
  EXPECT_TRUE(again->returning);
  // The instance alone is not enough: another key is another engine.
  EXPECT_EQ(id_of(ids, "sha256:other", "a"), 2u);
  // No instance: never remembered, never reused.
  EXPECT_EQ(id_of(ids, "sha256:shared", ""), 3u);
  EXPECT_EQ(id_of(ids, "sha256:shared", ""), 4u);
  EXPECT_TRUE(ids.issued(4));
  EXPECT_FALSE(ids.issued(5));
}

TEST_F(EngineIdsTest, IdsSurviveAResumedOpenAndAreNeverGivenAgain) {
  {
    auto ids = open(false);
    EXPECT_EQ(id_of(*ids, "k", "a"), 0u);
    EXPECT_EQ(id_of(*ids, "k", "b"), 1u);
    EXPECT_EQ(id_of(*ids, "k", ""), 2u);
  }
  struct stat st{};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // Nothing in the file names a key or an instance.
  std::ifstream in(path_);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.find("\"a\""), std::string::npos);

  auto ids = open(true);
  EXPECT_EQ(ids->from_previous_run(), (std::set<std::uint32_t>{0, 1}));
  EXPECT_EQ(id_of(*ids, "k", "b"), 1u);  // in any order
  EXPECT_EQ(id_of(*ids, "k", "a"), 0u);
  EXPECT_EQ(id_of(*ids, "k", "c"), 3u);  // 2 went to the engine without an instance
  // And once more: the new id is remembered too.
  auto third = open(true);
  EXPECT_EQ(id_of(*third, "k", "c"), 3u);
  EXPECT_EQ(id_of(*third, "k", "d"), 4u);
}

TEST_F(EngineIdsTest, WithoutResumeTheOldFileIsIgnored) {
  EXPECT_EQ(id_of(*open(false), "k", "a"), 0u);
  EXPECT_EQ(id_of(*open(false), "k", "b"), 0u);
  auto ids = open(true);
  EXPECT_EQ(id_of(*ids, "k", "b"), 0u);
  EXPECT_EQ(id_of(*ids, "k", "a"), 1u);
}

TEST_F(EngineIdsTest, ABadOrNewerFileIsRefusedWithItsName) {
  for (const char* bad : {"", "[]", "{\"version\":1}", "{\"version\":1,\"next_id\":1,\"engines\":{\"zz\":0}}",
                          "{\"version\":1,\"next_id\":1,\"engines\":{\"" 
                          "0000000000000000000000000000000000000000000000000000000000000000\":1}}",
                          "{\"version\":1,\"next_id\":-1,\"engines\":{}}"}) {
    write(bad);
    auto ids = EngineIds::open(path_, true);
    ASSERT_FALSE(ids.ok()) << bad;
    EXPECT_EQ(ids.status().code(), StatusCode::kDataLoss) << bad;
    EXPECT_NE(ids.status().message().find(path_), std::string::npos);
  }
  write("{\"version\":2,\"next_id\":0,\"engines\":{}}");
  auto newer = EngineIds::open(path_, true);
  ASSERT_FALSE(newer.ok());
  EXPECT_EQ(newer.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(newer.status().message().find("format version 2"), std::string::npos);
  // Readable by others: refused, as every state file.
  write("{\"version\":1,\"next_id\":0,\"engines\":{}}");
  ::chmod(path_.c_str(), 0644);
  EXPECT_EQ(EngineIds::open(path_, true).status().code(), StatusCode::kPermissionDenied);
}

TEST_F(EngineIdsTest, AFailedWriteGivesNoIdAndChangesNothing) {
  auto ids = EngineIds::open(dir_.path() + "/no-such-dir/engine-ids.json", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_FALSE((*ids)->assign("k", "a").ok());
  EXPECT_FALSE((*ids)->assign("k", "").ok());
  EXPECT_EQ((*ids)->next_id(), 0u);
  EXPECT_FALSE((*ids)->issued(0));
}

}  // namespace
}  // namespace testudo::controller
