// lorarecycle pretrain: supervised pre-training of the small VFM on the base classes.
#include "lorarecycle/train/pretrain.h"

#include <filesystem>
#include <sstream>

#include "cli/commands.h"
#include "cli/options.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/model/vit.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"

namespace lorarec::cli {

int run_pretrain(int argc, char** argv, dist::Runtime& rt) {
  train::PretrainConfig c;
  c.vit.hidden_size = 128;
  c.vit.intermediate_size = 512;
  c.vit.num_hidden_layers = 4;
  c.vit.num_attention_heads = 4;
  c.vit.image_size = 32;
  c.vit.patch_size = 4;
  c.vit.projection_dim = 128;
  std::string act = "quick_gelu";
  std::string resnet_layers = "1,1,1,1";
  bool no_resume = false;
  CommonOptions common;
  po::options_description desc = common_options(common);
  po::options_description own("Pretrain options");
  // One option per line:
  // clang-format off
  own.add_options()
      ("arch", po::value(&c.arch)->default_value(c.arch), "what to pre-train: vit (the VFM) | resnet (the BN prior for inversion)")
      ("data", po::value(&c.data), "HDF5 image set of the base classes (e.g. data/demo/base.h5)")
      ("out", po::value(&c.out), "output HF model directory (config.json, preprocessor_config.json, model.safetensors)")
      ("work", po::value(&c.work), "checkpoint/metrics directory (default: <out>.work)")
      ("eval-data", po::value(&c.eval_data), "optional HDF5 set scored at the end with 5-way 1-shot prototypes (e.g. test.h5)")
      ("steps", po::value(&c.steps)->default_value(c.steps), "optimizer steps")
      ("batch-size", po::value(&c.batch_size)->default_value(c.batch_size), "images per rank per step")
      ("lr", po::value(&c.lr)->default_value(c.lr), "peak learning rate (AdamW)")
      ("min-lr", po::value(&c.min_lr)->default_value(c.min_lr), "learning rate at the end of the cosine")
      ("warmup", po::value(&c.warmup)->default_value(c.warmup), "linear warm-up steps")
      ("weight-decay", po::value(&c.weight_decay)->default_value(c.weight_decay), "decoupled weight decay")
      ("clip-norm", po::value(&c.clip_norm)->default_value(c.clip_norm), "gradient-norm clip (0 = off)")
      ("holdout", po::value(&c.holdout)->default_value(c.holdout), "fraction of each class held out for the report")
      ("shift", po::value(&c.shift)->default_value(c.shift), "augmentation: random roll by up to this many pixels")
      ("max-bad-steps", po::value(&c.max_bad_steps)->default_value(c.max_bad_steps), "abort after this many consecutive steps with a non-finite loss or gradient (each is skipped, not applied)")
      ("checkpoint-every", po::value(&c.checkpoint_every)->default_value(c.checkpoint_every), "steps between checkpoints")
      ("log-every", po::value(&c.log_every)->default_value(c.log_every), "steps between metrics lines")
      ("eval-episodes", po::value(&c.eval_episodes)->default_value(c.eval_episodes), "episodes of the final prototype check")
      ("seed", po::value(&c.seed)->default_value(c.seed), "seed of initialisation, sampling and augmentation")
      ("no-resume", po::bool_switch(&no_resume), "ignore an existing checkpoint and start over")
      ("stop-after", po::value(&c.stop_after)->default_value(c.stop_after), "checkpoint and exit after this many steps of this run (0 = run to the end)");
  // clang-format on
  po::options_description arch("Architecture (HF CLIPVisionConfig fields)");
  // One option per line:
  // clang-format off
  arch.add_options()
      ("width", po::value(&c.vit.hidden_size)->default_value(c.vit.hidden_size), "hidden_size")
      ("mlp", po::value(&c.vit.intermediate_size)->default_value(c.vit.intermediate_size), "intermediate_size")
      ("layers", po::value(&c.vit.num_hidden_layers)->default_value(c.vit.num_hidden_layers), "num_hidden_layers")
      ("heads", po::value(&c.vit.num_attention_heads)->default_value(c.vit.num_attention_heads), "num_attention_heads")
      ("image-size", po::value(&c.vit.image_size)->default_value(c.vit.image_size), "image_size (images are resized to it)")
      ("patch", po::value(&c.vit.patch_size)->default_value(c.vit.patch_size), "patch_size")
      ("proj-dim", po::value(&c.vit.projection_dim)->default_value(c.vit.projection_dim), "projection_dim (feature width)")
      ("act", po::value(&act)->default_value(act), "hidden_act: quick_gelu | gelu");
  // clang-format on
  po::options_description cnn("BN-prior CNN (--arch resnet; torchvision naming)");
  // One option per line:
  // clang-format off
  cnn.add_options()
      ("resnet-width", po::value(&c.resnet.width)->default_value(c.resnet.width), "channels of the stem and first stage (torchvision: 64)")
      ("resnet-layers", po::value(&resnet_layers)->default_value(resnet_layers), "blocks per stage, 4 comma-separated (ResNet-18: 2,2,2,2)")
      ("resnet-bottleneck", po::bool_switch(&c.resnet.bottleneck), "Bottleneck blocks (ResNet-50 style) instead of BasicBlock")
      ("resnet-imagenet-stem", po::bool_switch(&c.resnet.imagenet_stem), "7x7/2 conv + max-pool stem (for large images)");
  // clang-format on
  desc.add(own).add(arch).add(cnn);
  if (!parse("pretrain", "usage: lorarecycle pretrain [--arch vit|resnet] --data base.h5 --out DIR [options]", argc,
             argv, desc, common, rt.rank()))
    return 0;
  c.vit.hidden_act = model::parse_activation(act, "--act");
  c.resume = !no_resume;
  {
    c.resnet.layers.clear();
    std::stringstream ss(resnet_layers);
    for (std::string t; std::getline(ss, t, ',');) {
      try {
        c.resnet.layers.push_back(std::stoi(t));
      } catch (const std::exception&) {
        throw InputError("pretrain: --resnet-layers must be 4 comma-separated integers, got '" + resnet_layers + "'");
      }
    }
    if (c.resnet.layers.size() != 4) throw InputError("pretrain: --resnet-layers needs 4 numbers");
    for (int l : c.resnet.layers)
      if (l < 1) throw InputError("pretrain: --resnet-layers must be positive");
  }
  c.validate();
  RunContext ctx = start("pretrain", rt, common);
  train::run_pretrain(c, *ctx.comm, ctx.device);
  return 0;
}

}  // namespace lorarec::cli
