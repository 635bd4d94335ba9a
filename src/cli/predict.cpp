// lorarecycle predict: the options, then eval/predict.h (labelled support images + query images
// in, predicted labels and class probabilities out).
#include "lorarecycle/eval/predict.h"

#include "cli/commands.h"
#include "cli/options.h"
#include "lorarecycle/dist/runtime.h"

namespace lorarec::cli {

int run_predict(int argc, char** argv, dist::Runtime& rt) {
  eval::PredictConfig c;
  CommonOptions common;
  po::options_description desc = common_options(common);
  po::options_description own("Prediction options");
  // One option per line:
  // clang-format off
  own.add_options()
      ("model", po::value(&c.model), "HF model directory of the VFM")
      ("lora", po::value(&c.lora), "meta-LoRA PEFT directory (e.g. runs/demo/meta); empty: the bare VFM")
      ("support", po::value(&c.support), "labelled support images: a directory with one sub-directory of PNG/JPEG files per class, or an HDF5 image set")
      ("query", po::value(&c.query), "comma-separated query images: PNG/JPEG files, directories of them, or HDF5 image sets (labels ignored)")
      ("out", po::value(&c.out), "output file, .json or .csv (default: JSON on stdout)")
      ("batch-size", po::value(&c.batch_size)->default_value(c.batch_size), "images per forward pass");
  // clang-format on
  desc.add(own);
  if (!parse("predict",
             "usage: lorarecycle predict --model DIR [--lora META_DIR] --support DIR|SET.h5 --query FILES|DIR|SET.h5 "
             "[--out preds.json|csv]",
             argc, argv, desc, common, rt.rank()))
    return 0;
  const eval::PredictInputs in = eval::prepare_predict(c, rt.rank());
  RunContext ctx = start("predict", rt, common, true);
  c.precision = ctx.precision;
  eval::run_predict(c, in, *ctx.comm, ctx.device);
  return 0;
}

}  // namespace lorarec::cli
