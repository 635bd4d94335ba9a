// Supervised pre-training on the base classes, data parallel over the communicator, of either
//  - a small CLIP-architecture ViT (the benchmark's stand-in for CLIP's pre-training), saved as an
//    HF model directory, or
//  - the BN-prior CNN for inversion (a torchvision-named ResNet), saved as model.safetensors.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>

#include "lorarecycle/model/clip_config.h"
#include "lorarecycle/model/resnet.h"

namespace lorarec::dist {
class Communicator;
}

namespace lorarec::train {

struct PretrainConfig {
  std::string data;                // HDF5 image set of the base classes
  std::string out;                 // output HF model directory
  std::string work;                // checkpoints and metrics (default: <out>.work)
  std::string eval_data;           // optional HDF5 set (e.g. test classes) for a prototype check at the end
  std::string arch = "vit";        // vit | resnet
  model::ClipVisionConfig vit;     // ViT architecture (also the pixel normalisation of both)
  model::ResNetConfig resnet;      // ResNet architecture (num_classes set from the data)
  int64_t steps = 3000;            // optimizer steps
  int batch_size = 64;             // images per rank per step
  double lr = 1e-3;                // peak learning rate
  double min_lr = 1e-5;            // end of the cosine
  int64_t warmup = 200;            // linear warm-up steps
  double weight_decay = 0.05;      // optim::AdamW
  double clip_norm = 1.0;          // gradient-norm clip (0 = off)
  int max_bad_steps = 10;          // consecutive non-finite steps (each skipped) before aborting
  double holdout = 0.25;           // fraction of each base class held out for the report
  int shift = 2;                   // augmentation: random roll by up to this many pixels
  int64_t checkpoint_every = 500;  // steps between checkpoints (and at the end)
  int64_t log_every = 50;          // steps between metrics lines
  int eval_episodes = 600;         // 5-way 1-shot episodes of the final check
  std::uint64_t seed = 0;
  bool resume = true;      // continue from <work>/checkpoint.safetensors when present
  int64_t stop_after = 0;  // > 0: checkpoint and stop after this many steps of this run (time-limited jobs)
  void validate() const;
};

// Collective. Trains, checkpoints, writes the model to cfg.out (rank 0) and a report
// (<out>/pretrain_report.json). Returns the report as JSON text.
std::string run_pretrain(const PretrainConfig& cfg, dist::Communicator& comm, const c10::Device& device);

}  // namespace lorarec::train
