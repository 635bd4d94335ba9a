// A surrogate pool written dataset by dataset, independently of data::write_pool_file, so that
// the reader is tested against the layout itself (data/surrogate_pool.h).
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/util/fs.h"

namespace lorarec::test {

// A pool of `files` LoRAs, N classes, `per` images per class, S x S images, P patches. File f's
// label l is dataset class ids[f][l] (default: f * N + l, no class shared). format < 2 writes the
// old layout (no format marks). textured: each byte also varies with its row, column and channel
// (for checks that move pixels).
inline void write_pool(const std::filesystem::path& dir, int files, int N, int per, int S, int P, bool complete = true,
                       std::vector<std::vector<int>> ids = {}, int format = 2, bool textured = false) {
  std::filesystem::create_directories(dir);
  nlohmann::json index = {{"files", nlohmann::json::array()}};
  if (format >= 2) index["format"] = format;
  if (ids.empty())
    for (int f = 0; f < files; ++f) {
      ids.emplace_back();
      for (int l = 0; l < N; ++l) ids.back().push_back(f * N + l);
    }
  for (int f = 0; f < files; ++f) {
    const int n = N * per;
    const std::string name = "lora_00" + std::to_string(f) + ".h5";
    std::vector<int32_t> labels, global;
    for (int i = 0; i < n; ++i) labels.push_back(i % N), global.push_back(ids[f][i % N]);
    // image i of file f: every byte = (f * 50 + i) % 256
    at::Tensor img = (at::arange(n, at::kInt) + f * 50)
                         .remainder(256)
                         .to(at::kByte)
                         .view({n, 1, 1, 1})
                         .expand({n, S, S, 3})
                         .contiguous();
    if (textured) {
      const at::Tensor pos = at::arange(S, at::kInt).view({S, 1, 1}) * 7 + at::arange(S, at::kInt).view({1, S, 1}) * 3 +
                             at::arange(3, at::kInt).view({1, 1, 3});
      img = (img.to(at::kInt) + pos.unsqueeze(0)).remainder(256).to(at::kByte).contiguous();
    }
    io::h5::write_file_atomically((dir / name).string(), [&](io::h5::File& h) {
      h.write("/images", img, 4);
      h.write("/labels", at::tensor(labels, at::kInt));
      h.write("/global_class", at::tensor(global, at::kInt));
      if (format >= 2) h.set_attr("/", "pool_format", int64_t(format));
      h.write("/teacher_logits", at::randn({n, N}));
      h.write("/patch_scores", at::rand({n, P}));
      h.write("/keep_mask", at::ones({n, P}, at::kByte));
      if (complete) h.set_attr("/", "complete", int64_t(1));
    });
    index["files"].push_back({{"file", name}, {"lora_id", f}, {"images", n}, {"classes", N}});
  }
  fs::write_text(dir / "index.json", index.dump());
}

}  // namespace lorarec::test
