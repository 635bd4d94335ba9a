// A zoo LoRA for the eval tests: the tiny config's default LoRA with B drawn (seeded), so that its
// weight delta is not zero.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "lorarecycle/model/vit.h"

namespace lorarec::test {

inline model::Lora zoo_lora(const model::ClipVisionConfig& c, std::uint64_t seed) {
  model::Lora l(c, model::LoraConfig{}, seed);
  at::manual_seed(seed);
  for (const auto& [key, ad] : l.adapters())
    l.find(key.first, static_cast<model::Module>(key.second))->b.normal_(0, 0.2);
  return l;
}

}  // namespace lorarec::test
