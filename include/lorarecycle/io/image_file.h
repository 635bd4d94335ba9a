// Reading single image files (PNG through libpng, JPEG through libjpeg) for `predict`.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace lorarec::io {

// uint8 [H, W, 3] (grey and palette images expanded, transparency composited on white). InputError naming the file
// for an unreadable, truncated or unsupported file (by content, not by extension).
at::Tensor read_image(const std::string& path);

// The image files (.png, .jpg, .jpeg; any case) inside `dir` and its sub-directories, sorted by
// path; hidden files and folders are ignored. Other files go to *skipped (sorted) when given.
std::vector<std::string> list_images(const std::string& dir, std::vector<std::string>* skipped = nullptr);

}  // namespace lorarec::io
