// The zoo between stages (DESIGN 2.3): written by `zoo`, read by `invert`, `eval` (lora-avg,
// lorahub) and `verify`. The one place that knows its layout.
//
// <zoo>/manifest.json   {"model", "data", "num_loras", "n_way", "cover_classes", "settings",
//                        "loras": [{"id", "dir", "classes", "heldout_accuracy"}, ...],
//                        "mean_heldout_accuracy",
//                        "coverage": {"classes", "min_loras_per_class", "max_loras_per_class",
//                                     "loras_per_class": {"<class id>": LoRAs, ...}}}
//                        written once every LoRA is finished (atomically).
// <zoo>/lora_<kkk>/     one PEFT adapter directory per LoRA (model/peft.h) with task.json: the
//                        task's dataset class ids ("classes", in head order), its settings and
//                        the held-out accuracy, written with the adapter (atomically).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace lorarec::data {

inline constexpr const char* kZooManifestFile = "manifest.json";
inline constexpr const char* kZooTaskFile = "task.json";

// Directory name of LoRA `id`: "lora_007".
std::string zoo_entry_name(int id);
// True when <dir> holds a complete entry (adapter files and a task.json with an accuracy).
bool zoo_entry_complete(const std::string& dir);

struct ZooEntry {
  int id = 0;
  std::string dir;               // the LoRA's PEFT directory: <zoo>/lora_<kkk>
  std::vector<int64_t> classes;  // dataset class id of each head column (the task)
  double heldout_accuracy = 0;   // percent
  double train_loss = 0;         // mean training loss of the last epoch (set by the run that trained it)
};

struct ZooManifest {
  std::string dir;              // the zoo directory
  nlohmann::json content;       // the whole manifest (model, data, settings, coverage, ...)
  std::vector<ZooEntry> loras;  // in manifest order

  // Reads <dir>/manifest.json. InputError naming the file when it is missing, not JSON or not a
  // zoo manifest.
  static ZooManifest read(const std::string& dir);
  // The same from a manifest's content already read (InputError naming `dir`'s manifest).
  static ZooManifest parse(const std::string& dir, nlohmann::json content);
  // The manifest of a finished zoo of `num_loras` LoRAs, from their task.json files (RuntimeError
  // naming the first one missing), with `header` (model, data, num_loras, n_way, cover_classes,
  // settings) and the coverage of the dataset's classes. Not written.
  static ZooManifest build(const std::string& dir, const nlohmann::json& header, int num_loras);
  // Writes <dir>/manifest.json atomically.
  void write() const;

  std::vector<std::string> lora_dirs() const;
};

}  // namespace lorarec::data
