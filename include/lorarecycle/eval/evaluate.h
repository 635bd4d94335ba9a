// `lorarecycle eval` (DESIGN 2.7): a fixed, seeded list of few-shot episodes over the classes of
// real image sets; every method scores the same episodes:
//   nn        bare VFM, prototypes (nearest class mean, squared Euclidean)
//   lora-avg  the zoo's LoRAs averaged (the mean of their weight deltas), prototypes
//   lora-ft   a fresh LoRA + a head fine-tuned on each support set (the head starts as the
//             prototype classifier, so step 0 equals nn), then the head classifies the queries
//   lorahub   per task, the zoo's LoRAs composed with weights found by CMA-ES on the support set
//             (LoRAHub; eval/lorahub.h), then prototypes
//   meta      one or more meta-LoRAs, prototypes (tuning-free: one forward pass)
// Episodes are split over ranks. fewshot::Accuracy = mean over episodes +- 1.96 std / sqrt(n).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "lorarecycle/eval/lorahub.h"
#include "lorarecycle/fewshot/fewshot.h"
#include "lorarecycle/model/vit.h"

namespace lorarec::dist {
class Communicator;
}

namespace lorarec::eval {

struct EvalConfig {
  std::string model;                 // VFM directory
  std::vector<std::string> data;     // "NAME=path.h5" or "path.h5" (name: the file stem)
  std::string zoo;                   // zoo directory (manifest.json): enables lora-avg
  std::vector<std::string> meta;     // "NAME=dir" or "dir" (name: "meta" or the dir name)
  std::vector<std::string> methods;  // subset of nn, lora-avg, lora-ft, lorahub, meta; empty = all available
  int way = 5, query = 15;
  std::vector<int> shots{1, 5};
  int episodes = 600;
  int ft_episodes = 0;        // lora-ft: the first n episodes of the same list (0 = all)
  int timing_episodes = 100;  // tuning-free methods: tasks/s measured on the first n episodes
  int ft_steps = 20;          // lora-ft: Adam steps on the support set
  double ft_lr = 1e-3;
  model::LoraConfig ft_lora;  // lora-ft: adapter shape (default r 4, q/v)
  int hub_episodes = 0;       // lorahub: the first n episodes of the same list (0 = all)
  HubConfig hub;              // lorahub: search budget, L1 weight, CMA-ES step, bounds
  std::uint64_t seed = 0;
  std::string out;  // directory for results.csv / results.json (rank 0); empty: none
  int batch_size = 256;
  model::Precision precision = model::Precision::kFp32;  // of every ViT pass (all methods)
  void validate() const;
};

struct EvalRow {
  std::string dataset, method;
  int way = 0, shot = 0, query = 0;
  fewshot::Accuracy acc;   // acc.values: per episode, in the episode list's order
  double tasks_per_s = 0;  // global throughput: tasks / slowest rank's time
  int64_t timed_tasks = 0;
  // add_paired: this row against `ref` on the same episodes (fewshot::paired_difference, this
  // minus ref); ref empty where there is none.
  std::string ref;
  fewshot::Accuracy vs_ref;
};

// The methods a row is compared with, the first found first: lora-avg (the bar of the paper's
// comparison), else nn (the bare VFM). lora-avg rows are compared with nn, nn rows with nothing.
inline constexpr const char* kPairedRefs[] = {"lora-avg", "nn"};
// Sets ref and vs_ref of every row that has per-episode values and whose dataset, way, shot and
// query have a reference row (kPairedRefs) with them too. A row scored on fewer episodes
// (lora-ft, lorahub: the first n of the same list) is compared on those.
void add_paired(std::vector<EvalRow>& rows);

// "NAME=path" -> {NAME, path}; a bare "path" -> {default_name, path}.
std::pair<std::string, std::string> split_named(const std::string& spec, const std::string& default_name);
// A --data spec: {name, path}, the name given or the file's stem.
std::pair<std::string, std::string> split_data(const std::string& spec);
// One of `count` --meta specs: {name, dir}, the name given, else "meta" when it is the only one,
// else the directory's name.
std::pair<std::string, std::string> split_meta(const std::string& spec, size_t count);

// One episode of the lora-ft baseline; returns the query accuracy in percent.
double finetune_episode(const model::ClipVision& vit, const at::Tensor& support_px, const at::Tensor& query_px, int way,
                        int shot, const model::LoraConfig& lora_cfg, int steps, double lr, std::uint64_t seed);

// Collective. Runs every configured method on every dataset and shot; prints the table (rank 0)
// and writes results.csv / results.json when cfg.out is set.
std::vector<EvalRow> run_eval(const EvalConfig& cfg, dist::Communicator& comm, const c10::Device& device);

// The table as text (what run_eval prints).
std::string format_table(const std::vector<EvalRow>& rows);

}  // namespace lorarec::eval
