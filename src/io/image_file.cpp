#include "lorarecycle/io/image_file.h"

#include <ATen/ATen.h>
#include <jpeglib.h>
#include <png.h>

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "lorarecycle/util/error.h"

namespace lorarec::io {
namespace {
namespace stdfs = std::filesystem;

at::Tensor read_png(const std::string& path) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&img, path.c_str()))
    throw InputError(path + ": unreadable PNG (" + img.message + ")");
  // Read with alpha and composited on white here, in the stored (sRGB) values, as PIL and
  // data_tools/import_folder.py do (libpng's own compositing works in linear light).
  img.format = PNG_FORMAT_RGBA;
  at::Tensor rgba = at::empty({int64_t(img.height), int64_t(img.width), 4}, at::kByte);
  if (!png_image_finish_read(&img, nullptr, rgba.data_ptr<uint8_t>(), 0, nullptr)) {
    const std::string msg = img.message;
    png_image_free(&img);
    throw InputError(path + ": unreadable PNG (" + msg + ")");
  }
  const at::Tensor a = rgba.narrow(2, 3, 1).to(at::kFloat) / 255.0;
  const at::Tensor rgb = rgba.narrow(2, 0, 3).to(at::kFloat);
  const at::Tensor out = (rgb * a + 255.0 * (1.0 - a)).round_().clamp_(0, 255).to(at::kByte).contiguous();
  return out;
}

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

extern "C" void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

at::Tensor read_jpeg(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw InputError(path + ": cannot open");
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  at::Tensor out;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw InputError(path + ": unreadable JPEG (" + err.message + ")");
  }
  jpeg_create_decompress(&cinfo);
  jpeg_stdio_src(&cinfo, f.get());
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  out = at::empty({int64_t(cinfo.output_height), int64_t(cinfo.output_width), 3}, at::kByte);
  const size_t stride = size_t(cinfo.output_width) * 3;
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out.data_ptr<uint8_t>() + size_t(cinfo.output_scanline) * stride;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return out;
}

}  // namespace

at::Tensor read_image(const std::string& path) {
  unsigned char magic[8] = {0};
  {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!f) throw InputError(path + ": cannot open (" + std::strerror(errno) + ")");
    if (std::fread(magic, 1, 8, f.get()) < 3) throw InputError(path + ": too short to be an image");
  }
  static const unsigned char kPng[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  if (std::memcmp(magic, kPng, 8) == 0) return read_png(path);
  if (magic[0] == 0xff && magic[1] == 0xd8 && magic[2] == 0xff) return read_jpeg(path);
  throw InputError(path + ": not a PNG or JPEG file (convert it, or import a folder with data_tools/import_folder.py)");
}

std::vector<std::string> list_images(const std::string& dir, std::vector<std::string>* skipped) {
  if (!stdfs::is_directory(dir)) throw InputError(dir + ": not a directory");
  std::vector<std::string> out;
  std::error_code ec;
  stdfs::recursive_directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    // Hidden files and folders (.DS_Store, macOS ._x.jpg and __MACOSX/) are not images of the class.
    if (name.empty() || name[0] == '.' || name == "__MACOSX") {
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file()) continue;
    std::string ext = it->path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (ext == ".png" || ext == ".jpg" || ext == ".jpeg")
      out.push_back(it->path().string());
    else if (skipped != nullptr)
      skipped->push_back(it->path().string());
  }
  if (ec) throw InputError(dir + ": cannot list (" + ec.message() + ")");
  std::sort(out.begin(), out.end());
  if (skipped != nullptr) std::sort(skipped->begin(), skipped->end());
  return out;
}

}  // namespace lorarec::io
