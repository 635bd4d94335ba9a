// lorarecycle embed: features of every image of an HDF5 image set, split over ranks, gathered
// into one output file by rank 0.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <filesystem>

#include "cli/commands.h"
#include "cli/options.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/io/peft.h"
#include "lorarecycle/model/vit.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/progress.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::cli {
namespace {

struct EmbedOptions {
  std::string model;          // HF model directory
  std::string lora;           // PEFT adapter directory (optional)
  std::string lora_official;  // official-format LoRA file (optional)
  std::string images;         // input HDF5 with /images uint8 [N,H,W,C]
  std::string out;            // output HDF5 with /features float32 [N, D]
  int batch_size = 64;        // images per forward pass
};

void validate(const EmbedOptions& o) {
  if (o.model.empty()) throw InputError("embed: --model is required");
  if (o.images.empty()) throw InputError("embed: --images is required");
  if (o.out.empty()) throw InputError("embed: --out is required");
  if (!o.lora.empty() && !o.lora_official.empty()) throw InputError("embed: give --lora or --lora-official, not both");
  if (o.batch_size <= 0) throw InputError("embed: --batch-size must be positive");
  const auto parent = std::filesystem::absolute(o.out).parent_path();
  if (!std::filesystem::is_directory(parent))
    throw InputError("embed: output directory '" + parent.string() + "' does not exist");
  prov::check_output_file(o.out, "embed: --out");
}

}  // namespace

int run_embed(int argc, char** argv, dist::Runtime& rt) {
  EmbedOptions o;
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
  validate(o);
  RunContext ctx = start("embed", rt, common, true);
  auto& comm = ctx.comm;
  const c10::Device device = ctx.device;
  model::ClipVision vit = model::ClipVision::load(o.model);
  vit.to(device);
  vit.set_precision(ctx.precision);
  std::optional<model::Lora> lora;
  if (!o.lora.empty()) lora = io::load_peft(o.lora, vit.config(), o.model);
  if (!o.lora_official.empty()) lora = io::load_official(o.lora_official, vit.config());
  if (lora) lora->to(device);

  const io::h5::File in = io::h5::File::open_read(o.images);
  const std::vector<int64_t> shape = in.shape("/images");
  model::check_image_shape(shape, vit.config(), o.images);
  const int64_t n = shape[0];
  if (in.has("/labels")) {  // copied to the output: checked before any work
    const at::Tensor l = in.read("/labels");
    if ((l.scalar_type() != at::kInt && l.scalar_type() != at::kLong) || l.dim() != 1 || l.size(0) != n)
      throw InputError(o.images + ": /labels must be int32 or int64 [N] with N = " + std::to_string(n) +
                       " (the image count)");
  }
  const int64_t begin = n * rt.rank() / rt.world_size(), end = n * (rt.rank() + 1) / rt.world_size();
  LOG_INFO("embed", "model " << o.model << " (" << vit.config().num_hidden_layers << " layers, width "
                             << vit.config().hidden_size << ", feature " << vit.feature_dim() << "); " << n
                             << " images of " << shape[1] << "x" << shape[2] << "x" << shape[3] << "; device "
                             << device);

  Progress progress("embed", "embedding", end - begin, "images");
  std::vector<at::Tensor> parts;
  {
    at::NoGradGuard no_grad;
    for (int64_t s = begin; s < end; s += o.batch_size) {
      const int64_t count = std::min<int64_t>(o.batch_size, end - s);
      const at::Tensor pixels = vit.preprocess(in.read("/images", s, count, at::kByte));
      parts.push_back(vit.forward(pixels, {}, lora ? &*lora : nullptr).feature.to(at::kCPU, at::kFloat));
      progress.advance(count, rt.world_size());
    }
  }
  progress.finish();
  const at::Tensor local = parts.empty() ? at::empty({0, vit.feature_dim()}, at::kFloat) : at::cat(parts);
  const at::Tensor all = comm->gather_rows(local, 0);
  if (rt.rank() == 0) {
    LORAREC_CHECK(all.size(0) == n, "gathered feature count differs from the image count");
    io::h5::write_file_atomically(o.out, [&](io::h5::File& f) {
      f.write("/features", all);
      if (in.has("/labels")) f.write("/labels", in.read("/labels"));
      f.set_attr("/", "model", o.model);
      f.set_attr("/", "lora", !o.lora.empty() ? o.lora : o.lora_official);
      f.set_attr("/", "images", o.images);
      f.set_attr("/", "producer", std::string("lorarecycle embed ") + LORAREC_VERSION);
    });
    LOG_INFO("embed", "wrote " << o.out << ": /features [" << all.size(0) << ", " << all.size(1) << "]");
  }
  comm->barrier();
  return 0;
}

}  // namespace lorarec::cli
