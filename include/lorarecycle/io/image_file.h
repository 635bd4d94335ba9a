// Reading single image files (PNG through libpng, JPEG through libjpeg) for `predict`.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace lorarec::io {

// uint8 [H, W, 3] (grey and palette images expanded, alpha dropped). InputError naming the file
// for an unreadable, truncated or unsupported file (by content, not by extension).
at::Tensor read_image(const std::string& path);

// The image files (.png, .jpg, .jpeg; any case) directly inside `dir`, sorted by name.
std::vector<std::string> list_images(const std::string& dir);

}  // namespace lorarec::io
