// libFuzzer target: a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)
// loaded for a small ViT config. Input: u16 little-endian length L, L bytes of config JSON, the
// rest the safetensors file. Refusals must be InputErrors.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include "lorarecycle/model/clip_config.h"
#include "lorarecycle/model/peft.h"
#include "lorarecycle/model/vit.h"
#include "lorarecycle/util/error.h"

namespace {
const std::string& dir() {
  static const std::string d = [] {
    std::string p = "/dev/shm/lorarec_fuzz_peft." + std::to_string(::getpid());
    std::string cmd = "mkdir -p " + p;
    if (std::system(cmd.c_str()) != 0) __builtin_trap();
    return p;
  }();
  return d;
}
void put(const std::string& path, const std::uint8_t* p, std::size_t n) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(p), static_cast<std::streamsize>(n));
}
lorarec::model::ClipVisionConfig vit() {
  lorarec::model::ClipVisionConfig c;  // tests/reference/tiny_clip.py's TINY
  c.hidden_size = 64, c.intermediate_size = 128, c.num_hidden_layers = 3, c.num_attention_heads = 4;
  c.image_size = 32, c.patch_size = 8, c.num_channels = 3, c.projection_dim = 32;
  return c;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t n = std::min<std::size_t>(size - 2, data[0] | (std::size_t(data[1]) << 8));
  put(dir() + "/adapter_config.json", data + 2, n);
  put(dir() + "/adapter_model.safetensors", data + 2 + n, size - 2 - n);
  static const lorarec::model::ClipVisionConfig cfg = vit();
  try {
    (void)lorarec::model::load_peft(dir(), cfg);
  } catch (const lorarec::InputError&) {
  }
  return 0;
}
