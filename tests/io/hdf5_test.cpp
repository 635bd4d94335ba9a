#include "lorarecycle/io/hdf5.h"

#include <gtest/gtest.h>

#include <fstream>

#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec::io::h5 {
namespace {

TEST(Hdf5, RoundTripSlicesStringsAndAttributes) {
  test::TempDir dir;
  const std::string path = dir.file("d.h5");
  const at::Tensor images = at::randint(0, 256, {10, 4, 4, 3}, at::kByte);
  const at::Tensor labels = at::arange(10, at::kInt);
  write_file_atomically(path, [&](File& f) {
    f.write("/images", images, 4, 1);
    f.write("/labels", labels);
    f.write_strings("/class_names", {"alpha", "βeta", ""});
    f.set_attr("/", "seed", int64_t{7});
    f.set_attr("/", "source", std::string("unit test"));
    f.set_attr("/images", "scale", 0.5);
  });
  const File f = File::open_read(path);
  EXPECT_EQ(f.shape("/images"), (std::vector<int64_t>{10, 4, 4, 3}));
  EXPECT_TRUE(at::equal(f.read("/images"), images));
  EXPECT_TRUE(at::equal(f.read("/images", 3, 4, at::kByte), images.slice(0, 3, 7)));
  EXPECT_TRUE(at::equal(f.read("/labels"), labels));
  EXPECT_EQ(f.read_strings("/class_names"), (std::vector<std::string>{"alpha", "βeta", ""}));
  EXPECT_EQ(f.attr_string("/", "source"), "unit test");
  EXPECT_EQ(f.attr_double("/", "seed"), 7.0);
  EXPECT_EQ(f.attr_double("/images", "scale"), 0.5);
}

TEST(Hdf5, BadFilesAndDatasetsAreInputErrors) {
  test::TempDir dir;
  const std::string junk = dir.file("junk.h5");
  std::ofstream(junk) << "not hdf5 at all";
  EXPECT_THROW(File::open_read(junk), InputError);
  EXPECT_THROW(File::open_read(dir.file("absent.h5")), InputError);
  const std::string path = dir.file("d.h5");
  write_file_atomically(path, [&](File& f) { f.write("/labels", at::arange(3, at::kInt)); });
  const File f = File::open_read(path);
  EXPECT_FALSE(f.has("/images"));
  EXPECT_FALSE(f.has("/group/images"));
  EXPECT_THROW(f.read("/images"), InputError);
  EXPECT_THROW(f.read("/labels", 2, 5), InputError);
  EXPECT_THROW(f.read("/labels", 0, -1, at::kByte), InputError);  // wrong type
}

TEST(Hdf5, FailedWriteLeavesNoFileBehind) {
  test::TempDir dir;
  const std::string path = dir.file("out.h5");
  EXPECT_THROW(write_file_atomically(path,
                                     [&](File& f) {
                                       f.write("/x", at::ones({2}));
                                       throw RuntimeError("simulated crash");
                                     }),
               RuntimeError);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace lorarec::io::h5
