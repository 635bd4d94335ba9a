// `lorarecycle embed` as a library: features of every image of an HDF5 image set, split over
// ranks, gathered into one output file by rank 0 (/features float32 [N, D], /labels copied).
#pragma once

#include <c10/core/Device.h>

#include <string>

#include "lorarecycle/model/vit.h"

namespace lorarec::dist {
class Communicator;
}

namespace lorarec::eval {

struct EmbedConfig {
  std::string model;          // HF model directory
  std::string lora;           // PEFT adapter directory (optional)
  std::string lora_official;  // official-format LoRA file (optional)
  std::string images;         // input HDF5 with /images uint8 [N,H,W,C]
  std::string out;            // output HDF5 with /features float32 [N, D]
  int batch_size = 64;        // images per forward pass
  model::Precision precision = model::Precision::kFp32;
  // InputError for a missing option, both LoRA forms, a bad batch size, or an --out that cannot
  // be written (its directory missing, or a file not ours).
  void validate() const;
};

// Collective. Checks the inputs (image shape, /labels) before any work.
void run_embed(const EmbedConfig& cfg, dist::Communicator& comm, const c10::Device& device);

}  // namespace lorarec::eval
