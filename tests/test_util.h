// Shared helpers for the GoogleTest suites: temporary directories, a tiny ViT config,
// named tolerances, and the process runtime for multi-rank suites.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "lorarecycle/model/clip_config.h"

namespace lorarec::test {

// Float32 vs float32 of the same maths in another order.
inline constexpr double kFloatTol = 1e-5;

// A fresh directory under /tmp, removed at destruction.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "lorarec_test_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline model::ClipVisionConfig tiny_config(model::Activation act = model::Activation::kQuickGelu) {
  model::ClipVisionConfig c;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.image_size = 16;
  c.patch_size = 4;
  c.projection_dim = 12;
  c.hidden_act = act;
  return c;
}

// max |a - b| / max |b|
inline double rel_error(const at::Tensor& a, const at::Tensor& b) {
  const double denom = std::max(b.abs().max().item<double>(), 1e-12);
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / denom;
}

}  // namespace lorarec::test

// Expects `stmt` to throw `type` with `needle` in its message.
#define EXPECT_THROW_MSG(stmt, type, needle)                                          \
  do {                                                                                \
    try {                                                                             \
      (void)(stmt);                                                                   \
      ADD_FAILURE() << #stmt " did not throw";                                        \
    } catch (const type& e_) {                                                        \
      EXPECT_NE(std::string(e_.what()).find(needle), std::string::npos) << e_.what(); \
    }                                                                                 \
  } while (0)
