// The evaluation methods as one table (src/eval/methods.cpp): adding a method is one entry there.
//
// Each entry says what the method needs (an option: the zoo, meta-LoRAs, or nothing) and how it
// adapts to a task:
//   kFixed    one LoRA (or none: the bare VFM) for every task; eval embeds each image once and
//             scores the tasks by prototypes over those features (nn, lora-avg, meta);
//   kPerTask  adapts on each task's support set, one episode at a time (lora-ft, lorahub).
// An entry's `make` builds its instances from the configuration: usually one, several for meta
// (one per --meta adapter, each its own result rows).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lorarecycle/eval/evaluate.h"
#include "lorarecycle/model/vit.h"

namespace lorarec::eval {

enum class Adapts { kFixed, kPerTask };
enum class Needs { kNothing, kZoo, kMeta };

// What the methods are made from: the configuration, the VFM, and the zoo's LoRAs (read once,
// only when a method that needs them is run).
struct MethodContext {
  const EvalConfig& cfg;
  const model::ClipVision& vit;
  c10::Device device;
  std::vector<model::Lora>* zoo = nullptr;  // the zoo's LoRAs (--zoo), in manifest order
  std::string zoo_source;                   // their files' identity (the result cache's key)
};

// One method as it runs: its result rows carry `name`.
struct MethodInstance {
  std::string name;
  // kFixed: the LoRA every task uses (nullptr: the bare VFM).
  std::unique_ptr<model::Lora> lora;
  // kPerTask: one episode (normalised support and query pixels, shot, seed) -> query accuracy %;
  // `episodes` of them (the first n of the list; 0 = all).
  std::function<double(const at::Tensor&, const at::Tensor&, int, std::uint64_t)> episode;
  int episodes = 0;
  std::string source;     // identity of what it was built from (the result cache's key)
  std::string detail;     // for the log line of a kPerTask row
  std::string input;      // the results.json input it was computed from besides model and data ("" none)
  std::string input_dir;  // meta: the adapter directory of that input
};

struct MethodSpec {
  const char* name;
  Needs needs;
  Adapts adapts;
  const char* help;
  std::function<std::vector<MethodInstance>(MethodContext&)> make;
};

// The table, in the order of the result rows (kFixed methods first).
const std::vector<MethodSpec>& method_table();
// The entry called `name`; nullptr when there is none.
const MethodSpec* find_method(const std::string& name);
// "nn, lora-avg, ..." (for messages and --help).
std::string method_names();
// Whether the configuration asks for the method: listed in --methods, or --methods empty and the
// method's needs given.
bool method_wanted(const MethodSpec& m, const EvalConfig& cfg);

}  // namespace lorarec::eval
