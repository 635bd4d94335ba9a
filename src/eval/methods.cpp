#include "lorarecycle/eval/methods.h"

#include "result_cache.h"

#include <algorithm>

#include "lorarecycle/eval/lorahub.h"
#include "lorarecycle/model/peft.h"
#include "lorarecycle/util/log.h"

namespace lorarec::eval {
namespace {

std::vector<MethodInstance> make_nn(MethodContext&) {
  std::vector<MethodInstance> out(1);
  out[0].name = "nn";
  return out;
}

std::vector<MethodInstance> make_lora_avg(MethodContext& c) {
  std::vector<MethodInstance> out(1);
  MethodInstance& m = out[0];
  m.name = "lora-avg";
  m.lora = std::make_unique<model::Lora>(model::average_loras(*c.zoo, c.vit.config()));
  m.lora->to(c.device);
  m.source = c.zoo_source;
  m.input = "zoo";
  LOG_INFO("eval", "lora-avg: the mean of " << c.zoo->size() << " zoo LoRAs of " << c.cfg.zoo);
  return out;
}

std::vector<MethodInstance> make_meta(MethodContext& c) {
  std::vector<MethodInstance> out;
  for (const auto& spec : c.cfg.meta) {
    auto [name, dir] = split_meta(spec, c.cfg.meta.size());
    MethodInstance m;
    m.name = name;
    m.lora = std::make_unique<model::Lora>(model::load_peft(dir, c.vit.config(), c.cfg.model));
    m.lora->to(c.device);
    m.source = fingerprint(dir);
    m.input = "meta/" + name;
    m.input_dir = dir;
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<MethodInstance> make_lora_ft(MethodContext& c) {
  std::vector<MethodInstance> out(1);
  MethodInstance& m = out[0];
  const EvalConfig& cfg = c.cfg;
  const model::ClipVision& vit = c.vit;
  m.name = "lora-ft";
  m.episodes = cfg.ft_episodes;
  m.detail = std::to_string(cfg.ft_steps) + " steps, lr " + std::to_string(cfg.ft_lr);
  m.episode = [&cfg, &vit](const at::Tensor& s, const at::Tensor& q, int shot, std::uint64_t seed) {
    return finetune_episode(vit, s, q, cfg.way, shot, cfg.ft_lora, cfg.ft_steps, cfg.ft_lr, seed);
  };
  return out;
}

std::vector<MethodInstance> make_lorahub(MethodContext& c) {
  std::vector<MethodInstance> out(1);
  MethodInstance& m = out[0];
  const EvalConfig& cfg = c.cfg;
  const model::ClipVision& vit = c.vit;
  std::vector<model::Lora>& zoo = *c.zoo;
  model::require_same_shape(zoo, "lorahub");  // up front, not per task
  for (auto& l : zoo) l.to(c.device);
  m.name = "lorahub";
  m.episodes = cfg.hub_episodes;
  m.source = "|lorahub " + std::to_string(cfg.hub.budget) + " " + std::to_string(cfg.hub.l1) + " " +
             std::to_string(cfg.hub.sigma) + " " + std::to_string(cfg.hub.bound) + " " + std::to_string(cfg.hub.shift) +
             c.zoo_source;
  m.detail = "CMA-ES, " + std::to_string(cfg.hub.budget) + " evaluations";
  m.input = "zoo";
  LOG_INFO("eval", "lorahub: " << zoo.size() << " zoo LoRAs of " << cfg.zoo << ", CMA-ES over their weights, "
                               << cfg.hub.budget << " evaluations per task, L1 " << cfg.hub.l1);
  m.episode = [&cfg, &vit, &zoo](const at::Tensor& s, const at::Tensor& q, int shot, std::uint64_t seed) {
    return lorahub_episode(vit, zoo, s, q, cfg.way, shot, cfg.hub, seed).accuracy;
  };
  return out;
}

}  // namespace

// clang-format off
const std::vector<MethodSpec>& method_table() {
  static const std::vector<MethodSpec> table = {
    {"nn", Needs::kNothing, Adapts::kFixed, "the bare VFM: prototypes of its features", make_nn},
    {"lora-avg", Needs::kZoo, Adapts::kFixed, "the mean of the zoo's LoRAs (one exact adapter)", make_lora_avg},
    {"meta", Needs::kMeta, Adapts::kFixed, "each --meta adapter (the meta-LoRA)", make_meta},
    {"lora-ft", Needs::kNothing, Adapts::kPerTask, "a fresh LoRA fine-tuned on each task's support set", make_lora_ft},
    {"lorahub", Needs::kZoo, Adapts::kPerTask, "LoRAHub: CMA-ES over one weight per zoo LoRA, per task", make_lorahub},
  };
  return table;
}
// clang-format on

const MethodSpec* find_method(const std::string& name) {
  for (const MethodSpec& m : method_table())
    if (name == m.name) return &m;
  return nullptr;
}

std::string method_names() {
  std::string s;
  for (const MethodSpec& m : method_table()) s += (s.empty() ? "" : ", ") + std::string(m.name);
  return s;
}

bool method_wanted(const MethodSpec& m, const EvalConfig& cfg) {
  if (!cfg.methods.empty()) return std::count(cfg.methods.begin(), cfg.methods.end(), m.name) > 0;
  switch (m.needs) {
    case Needs::kZoo:
      return !cfg.zoo.empty();
    case Needs::kMeta:
      return !cfg.meta.empty();
    case Needs::kNothing:
      break;
  }
  return true;
}

}  // namespace lorarec::eval
