// lorarecycle zoo: pre-tune K LoRAs (+ heads) on N-way tasks, sharded over ranks.
#include "lorarecycle/train/zoo.h"

#include <sstream>

#include "cli/commands.h"
#include "cli/options.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"

namespace lorarec::cli {

int run_zoo(int argc, char** argv, dist::Runtime& rt) {
  train::ZooConfig c;
  std::string targets = "q_proj,v_proj";
  CommonOptions common;
  po::options_description desc = common_options(common);
  po::options_description own("Zoo options");
  // One option per line:
  // clang-format off
  own.add_options()
      ("model", po::value(&c.model), "HF model directory of the VFM")
      ("data", po::value(&c.data), "HDF5 image set of the zoo classes (e.g. data/demo/zoo.h5)")
      ("out", po::value(&c.out), "zoo directory: one PEFT directory lora_<k> per LoRA + manifest.json")
      ("num-loras", po::value(&c.num_loras)->default_value(c.num_loras), "number of LoRAs K (paper: 100)")
      ("way", po::value(&c.n_way)->default_value(c.n_way), "classes per LoRA task (paper: 5)")
      ("classes", po::value(&c.cover_classes)->default_value(c.cover_classes), "draw every LoRA's task from this many of the dataset's classes (chosen by the seed), each class covered about K x way / classes times, so that several LoRAs share each class (paper: 100 LoRAs over 64 classes); 0 = each task from all classes independently")
      ("train-fraction", po::value(&c.train_fraction)->default_value(c.train_fraction), "share of each class's images for training; the rest measure held-out accuracy")
      ("epochs", po::value(&c.epochs)->default_value(c.epochs), "passes over a task's training images")
      ("batch-size", po::value(&c.batch_size)->default_value(c.batch_size), "images per step")
      ("lr", po::value(&c.lr)->default_value(c.lr), "Adam learning rate (paper: 1e-3)")
      ("max-bad-steps", po::value(&c.max_bad_steps)->default_value(c.max_bad_steps), "abort after this many consecutive steps with a non-finite loss or gradient (each is skipped, not applied)")
      ("rank", po::value(&c.lora.r)->default_value(c.lora.r), "LoRA rank r")
      ("alpha", po::value(&c.lora.alpha)->default_value(c.lora.alpha), "lora_alpha (scale = alpha / r)")
      ("targets", po::value(&targets)->default_value(targets), "comma-separated target modules (q_proj,k_proj,v_proj,out_proj,fc1,fc2)")
      ("seed", po::value(&c.seed)->default_value(c.seed), "seed of tasks, splits and initialisation")
      ("restart", po::bool_switch(&c.restart), "discard the LoRAs and manifest an earlier run left in --out and train every LoRA anew (without it, finished LoRAs are reused when their recorded settings equal today's, and the run is refused otherwise)");
  // clang-format on
  desc.add(own);
  if (!parse("zoo", "usage: lorarecycle zoo --model DIR --data zoo.h5 --out ZOO_DIR [options]", argc, argv, desc,
             common, rt.rank()))
    return 0;
  c.lora.target_modules = parse_modules(targets);
  c.validate();
  RunContext ctx = start("zoo", rt, common);
  train::run_zoo(c, *ctx.comm, ctx.device);
  return 0;
}

}  // namespace lorarec::cli
