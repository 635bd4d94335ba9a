#include "lorarecycle/util/fs.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec {
namespace {

TEST(Fs, WriteErrorsNameTheTargetNotTheTemporary) {
  test::TempDir dir;
  const auto target = dir.path() / "sub" / "f.txt";
  fs::write_text(dir.path() / "sub", "a file where a directory should be");
  try {
    fs::write_text(target, "x");
    FAIL() << "writing under a regular file must fail";
  } catch (const fs::WriteError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("cannot write '" + target.string() + "': ", 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find("the previous version, if any, is unchanged"), std::string::npos);
  }
  EXPECT_THROW(fs::make_dirs(dir.path() / "sub" / "deeper"), fs::WriteError);
}

TEST(Fs, FaultPointsFireOnTheNamedRankAndPass) {
  ::setenv(env::kFaultInject, "3:unit-a@2:corrupt", 1);
  EXPECT_FALSE(env::fault_point(2, "unit-a"));  // another rank
  EXPECT_FALSE(env::fault_point(3, "unit-a"));  // pass 1
  EXPECT_TRUE(env::fault_point(3, "unit-a"));   // pass 2: corrupt
  EXPECT_FALSE(env::fault_point(3, "unit-a"));  // pass 3
  ::setenv(env::kFaultInject, "0:unit-b@2+", 1);
  EXPECT_FALSE(env::fault_point(0, "unit-b"));
  EXPECT_THROW(env::fault_point(0, "unit-b"), RuntimeError);
  EXPECT_THROW(env::fault_point(0, "unit-b"), RuntimeError);  // and every later pass
  EXPECT_FALSE(env::fault_point(0, "other"));
  ::unsetenv(env::kFaultInject);
  EXPECT_FALSE(env::fault_point(0, "unit-b"));
}

TEST(Fs, WriteAtomicallyKeepsOldFileWhenTheWriterThrows) {
  test::TempDir dir;
  const auto target = dir.path() / "out.txt";
  fs::write_text(target, "old");
  EXPECT_THROW(fs::write_atomically(target,
                                    [](const fs::stdfs::path& tmp) {
                                      fs::write_text(tmp, "half");
                                      throw RuntimeError("crash while writing");
                                    }),
               RuntimeError);
  EXPECT_EQ(fs::read_text(target), "old");
  int entries = 0;
  for (const auto& e : fs::stdfs::directory_iterator(dir.path())) entries += e.path() == target ? 1 : 100;
  EXPECT_EQ(entries, 1) << "a temporary file was left behind";
}

TEST(Fs, WriteAtomicallyReplacesDirectories) {
  test::TempDir dir;
  const auto target = dir.path() / "adapter";
  for (const char* content : {"first", "second"})
    fs::write_atomically(target, [&](const fs::stdfs::path& tmp) {
      fs::stdfs::create_directories(tmp);
      fs::write_text(tmp / "f", content);
    });
  EXPECT_EQ(fs::read_text(target / "f"), "second");
}

TEST(Fs, RemoveTemporariesRemovesOnlyTemporarySiblings) {
  test::TempDir dir;
  const auto file = dir.path() / "lora_000.h5";
  fs::write_text(file, "finished");
  fs::write_text(fs::temp_sibling(file), "half");            // a file's temporary
  fs::make_dirs(fs::temp_sibling(dir.path() / "lora_001"));  // a directory's temporary
  fs::write_text(dir.path() / ".hidden", "kept");            // hidden, not a temporary
  std::vector<std::string> removed = fs::remove_temporaries(dir.path(), "unit");
  std::sort(removed.begin(), removed.end());
  ASSERT_EQ(removed.size(), 2u);
  EXPECT_EQ(removed[0], fs::temp_sibling(file).string());
  EXPECT_EQ(removed[1], fs::temp_sibling(dir.path() / "lora_001").string());
  int entries = 0;
  for (const auto& e : fs::stdfs::directory_iterator(dir.path())) (void)e, ++entries;
  EXPECT_EQ(entries, 2) << "the finished file and the hidden file stay";
  EXPECT_TRUE(fs::remove_temporaries(dir.path() / "missing", "unit").empty());
}

TEST(Fs, ReadTextOfMissingFileIsInputError) { EXPECT_THROW(fs::read_text("/nonexistent/file"), InputError); }

}  // namespace
}  // namespace lorarec
