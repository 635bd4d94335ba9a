// Zoo pre-tuning (DESIGN 2.3): K LoRAs, each with its classifier head, pre-tuned on one seeded
// N-way task of a dataset's classes (Adam, cross-entropy, LoRA + head trained), on a fraction of
// each class's images; the rest measure the LoRA's held-out accuracy (stored in task.json).
// LoRA k is trained by rank k mod world; each is written as one PEFT directory
// <out>/lora_<kkk>/ (adapter files + task.json, atomically); a re-run skips finished ones.
#pragma once

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "lorarecycle/data/zoo_manifest.h"
#include "lorarecycle/model/vit.h"

namespace lorarec::dist {
class Communicator;
}

namespace lorarec::train {

struct ZooConfig {
  std::string model;            // HF model directory of the VFM
  std::string data;             // HDF5 image set of the zoo classes
  std::string out;              // zoo directory
  int num_loras = 20;           // K
  int n_way = 5;                // classes per LoRA task
  int cover_classes = 0;        // > 0: tasks drawn from this many classes, balanced coverage (zoo_tasks)
  double train_fraction = 0.8;  // of each class's images; the rest is held out
  int epochs = 20;              // passes over the task's training images
  int batch_size = 25;          // images per step
  double lr = 1e-3;             // Adam
  int max_bad_steps = 10;       // consecutive non-finite steps (each skipped) before aborting
  model::LoraConfig lora;       // r, alpha, targets, layers
  std::uint64_t seed = 0;
  bool restart = false;  // discard the LoRAs and manifest already in `out`
  void validate() const;
};

// Classes of LoRA `id`'s task (seeded, the same for every world size), drawn from all classes.
std::vector<int64_t> zoo_task_classes(std::uint64_t seed, int id, int n_way, int64_t num_classes);
// Every LoRA's task. cover_classes = 0: zoo_task_classes per LoRA. cover_classes = M > 0: M
// classes of the dataset are chosen by the seed, and the tasks deal them out like cards from
// shuffled decks of those M (a class already in a task goes back for the next), so each class is
// covered floor or ceil of num_loras * n_way / M times, give or take one; no task repeats a class.
std::vector<std::vector<int64_t>> zoo_tasks(std::uint64_t seed, int num_loras, int n_way, int64_t num_classes,
                                            int cover_classes);
// The settings that fix a zoo LoRA's content, keyed by option (util/provenance.h): the data's and
// the VFM's content digests, the task and training settings. Recorded in the zoo's marker and in
// every task.json; a finished LoRA is reused only when they equal today's.
nlohmann::json zoo_settings(const ZooConfig& cfg);

// Collective. Before any work: --out must be new, empty or a zoo (exit 2 otherwise), and every
// finished LoRA in it must have today's settings (else exit 2 naming the first difference, unless
// cfg.restart, which removes them). Builds the zoo and writes its manifest (data/zoo_manifest.h, rank 0). Returns every
// entry.
std::vector<data::ZooEntry> run_zoo(const ZooConfig& cfg, dist::Communicator& comm, const c10::Device& device);

}  // namespace lorarec::train
