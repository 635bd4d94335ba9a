// lorarecycle embed: the options, then eval/embed.h (features of every image of an HDF5 image set,
// split over ranks, gathered into one output file by rank 0).
#include "lorarecycle/eval/embed.h"

#include "cli/commands.h"
#include "cli/options.h"
#include "lorarecycle/dist/runtime.h"

namespace lorarec::cli {

int run_embed(int argc, char** argv, dist::Runtime& rt) {
  eval::EmbedConfig o;
  CommonOptions common;
  po::options_description desc = common_options(common);
  po::options_description own("Embed options");
  // One option per line:
  // clang-format off
  own.add_options()
      ("model", po::value(&o.model), "HF CLIP model directory (config.json, preprocessor_config.json, model.safetensors)")
      ("lora", po::value(&o.lora), "PEFT adapter directory applied to the VFM (optional)")
      ("lora-official", po::value(&o.lora_official), "LoRA file in the official repo's w_a_/w_b_ format (optional)")
      ("images", po::value(&o.images), "input HDF5 image set: /images uint8 [N,H,W,C] (resized to the model's image_size)")
      ("out", po::value(&o.out), "output HDF5: /features float32 [N, projection_dim] (+ /labels copied when present)")
      ("batch-size", po::value(&o.batch_size)->default_value(o.batch_size), "images per forward pass on each rank");
  // clang-format on
  desc.add(own);
  if (!parse("embed", "usage: lorarecycle embed --model DIR [--lora DIR] --images IN.h5 --out OUT.h5 [options]", argc,
             argv, desc, common, rt.rank()))
    return 0;
  o.validate();
  RunContext ctx = start("embed", rt, common, true);
  o.precision = ctx.precision;
  eval::run_embed(o, *ctx.comm, ctx.device);
  return 0;
}

}  // namespace lorarec::cli
