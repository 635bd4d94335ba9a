#include "lorarecycle/util/fs.h"

#include <gtest/gtest.h>

#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec {
namespace {

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

TEST(Fs, ReadTextOfMissingFileIsInputError) {
  EXPECT_THROW(fs::read_text("/nonexistent/file"), InputError);
}

}  // namespace
}  // namespace lorarec
