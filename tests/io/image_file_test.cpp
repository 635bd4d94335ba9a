#include "lorarecycle/io/image_file.h"

#include <gtest/gtest.h>
#include <png.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace lorarec::io {
namespace {

void write_rgba_png(const std::string& path, int w, int h, const std::vector<uint8_t>& rgba) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  img.width = static_cast<png_uint_32>(w);
  img.height = static_cast<png_uint_32>(h);
  img.format = PNG_FORMAT_RGBA;
  ASSERT_TRUE(png_image_write_to_file(&img, path.c_str(), 0, rgba.data(), 0, nullptr)) << img.message;
}

TEST(ImageFile, TransparencyIsCompositedOnWhite) {
  test::TempDir dir;
  const std::string path = dir.file("rgba.png");
  // A transparent pixel, an opaque one, a half-transparent red one.
  write_rgba_png(path, 3, 1, {200, 100, 50, 0, 10, 20, 30, 255, 255, 0, 0, 128});
  const at::Tensor img = read_image(path);
  ASSERT_EQ(img.sizes(), (std::vector<int64_t>{1, 3, 3}));
  const auto* p = img.data_ptr<uint8_t>();
  // Half way from red to white in the stored values, as PIL's alpha_composite (255, 127, 127).
  EXPECT_EQ(std::vector<int>(p, p + 9), (std::vector<int>{255, 255, 255, 10, 20, 30, 255, 127, 127}));
}

TEST(ImageFile, ListingWalksSubFoldersSkipsHiddenAndReportsOtherFiles) {
  test::TempDir dir;
  namespace stdfs = std::filesystem;
  const stdfs::path root = dir.file("cls");
  stdfs::create_directories(root / "sub");
  stdfs::create_directories(root / ".thumbs");
  for (const char* f : {"b.PNG", "sub/a.jpg", "c.webp", ".hidden.png", "._d.jpg", ".thumbs/e.png"})
    std::ofstream(root / f) << "x";
  std::vector<std::string> skipped;
  const auto files = list_images(root.string(), &skipped);
  EXPECT_EQ(files, (std::vector<std::string>{(root / "b.PNG").string(), (root / "sub/a.jpg").string()}));
  EXPECT_EQ(skipped, (std::vector<std::string>{(root / "c.webp").string()}));
  EXPECT_EQ(list_images(root.string()).size(), 2u);
}

}  // namespace
}  // namespace lorarec::io
