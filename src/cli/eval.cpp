// lorarecycle eval: few-shot evaluation of nn / lora-avg / lora-ft / meta on the same episodes.
#include <sstream>

#include "cli/commands.h"
#include "cli/options.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/eval/evaluate.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"

namespace lorarec::cli {
int run_eval(int argc, char** argv, dist::Runtime& rt) {
  eval::EvalConfig c;
  std::string data, meta, methods, shots = "1,5", targets = "q_proj,v_proj";
  CommonOptions common;
  po::options_description desc = common_options(common);
  po::options_description own("Evaluation options");
  // One option per line:
  // clang-format off
  own.add_options()
      ("model", po::value(&c.model), "HF model directory of the VFM")
      ("data", po::value(&data), "comma-separated HDF5 image sets to evaluate on, each PATH or NAME=PATH (e.g. test=data/demo/test.h5,hangul=data/demo/cross_hangul.h5)")
      ("methods", po::value(&methods), "comma-separated subset of nn, lora-avg, lora-ft, lorahub, meta (default: every method whose inputs are given; lora-avg and lorahub need --zoo)")
      ("zoo", po::value(&c.zoo), "zoo directory (manifest.json): enables lora-avg, the mean of the zoo's LoRAs")
      ("meta", po::value(&meta), "comma-separated meta-LoRA PEFT directories, each DIR or NAME=DIR (e.g. meta=runs/demo/meta,meta-mask75=runs/demo/meta_mask75)")
      ("way", po::value(&c.way)->default_value(c.way), "N: classes per episode")
      ("shots", po::value(&shots)->default_value(shots), "comma-separated K values (support images per class)")
      ("query", po::value(&c.query)->default_value(c.query), "Q: query images per class")
      ("episodes", po::value(&c.episodes)->default_value(c.episodes), "episodes per setting (episode i is drawn from seed and i alone: the same list for every method and world size)")
      ("ft-episodes", po::value(&c.ft_episodes)->default_value(c.ft_episodes), "lora-ft: evaluate only the first n of those episodes (0 = all)")
      ("timing-episodes", po::value(&c.timing_episodes)->default_value(c.timing_episodes), "tuning-free methods: tasks/s measured by running the first n episodes' images through the network")
      ("ft-steps", po::value(&c.ft_steps)->default_value(c.ft_steps), "lora-ft: Adam steps on each support set")
      ("hub-episodes", po::value(&c.hub_episodes)->default_value(c.hub_episodes), "lorahub: evaluate only the first n episodes (0 = all; each task runs a search)")
      ("hub-budget", po::value(&c.hub.budget)->default_value(c.hub.budget), "lorahub: loss evaluations (forward passes of the support set) per task (LoRAHub: 40)")
      ("hub-l1", po::value(&c.hub.l1)->default_value(c.hub.l1), "lorahub: weight of the L1 penalty on the LoRA weights (LoRAHub: 0.05)")
      ("hub-sigma", po::value(&c.hub.sigma)->default_value(c.hub.sigma), "lorahub: initial CMA-ES step size (the search starts at equal weights 1/K)")
      ("hub-bound", po::value(&c.hub.bound)->default_value(c.hub.bound), "lorahub: weights are kept in [-bound, bound] (LoRAHub: 1.5)")
      ("ft-lr", po::value(&c.ft_lr)->default_value(c.ft_lr), "lora-ft: learning rate")
      ("ft-rank", po::value(&c.ft_lora.r)->default_value(c.ft_lora.r), "lora-ft: LoRA rank")
      ("ft-alpha", po::value(&c.ft_lora.alpha)->default_value(c.ft_lora.alpha), "lora-ft: lora_alpha")
      ("ft-targets", po::value(&targets)->default_value(targets), "lora-ft: target modules")
      ("batch-size", po::value(&c.batch_size)->default_value(c.batch_size), "images per forward pass when embedding a set")
      ("seed", po::value(&c.seed)->default_value(c.seed), "seed of the episode list")
      ("out", po::value(&c.out), "directory for results.csv and results.json");
  // clang-format on
  desc.add(own);
  if (!parse("eval",
             "usage: lorarecycle eval --model DIR --data [NAME=]SET.h5[,...] [--zoo ZOO] [--meta [NAME=]DIR[,...]] "
             "[options]",
             argc, argv, desc, common, rt.rank()))
    return 0;
  c.data = split_list(data);
  c.meta = split_list(meta);
  c.methods = split_list(methods);
  c.shots.clear();
  for (const auto& s : split_list(shots)) {
    try {
      c.shots.push_back(std::stoi(s));
    } catch (const std::exception&) {
      throw InputError("eval: --shots must be comma-separated integers, got '" + shots + "'");
    }
  }
  c.ft_lora.target_modules = parse_modules(targets);
  c.validate();
  RunContext ctx = start("eval", rt, common, true);
  c.precision = ctx.precision;
  eval::run_eval(c, *ctx.comm, ctx.device);
  return 0;
}

}  // namespace lorarec::cli
