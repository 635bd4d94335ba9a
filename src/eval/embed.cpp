#include "lorarecycle/eval/embed.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <optional>

#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/fewshot/fewshot.h"
#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/model/peft.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/progress.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::eval {

void EmbedConfig::validate() const {
  if (model.empty()) throw InputError("embed: --model is required");
  if (images.empty()) throw InputError("embed: --images is required");
  if (out.empty()) throw InputError("embed: --out is required");
  if (!lora.empty() && !lora_official.empty()) throw InputError("embed: give --lora or --lora-official, not both");
  if (batch_size <= 0) throw InputError("embed: --batch-size must be positive");
  const auto parent = std::filesystem::absolute(out).parent_path();
  if (!std::filesystem::is_directory(parent))
    throw InputError("embed: output directory '" + parent.string() + "' does not exist");
  prov::check_output_file(out, "embed: --out");
}

void run_embed(const EmbedConfig& cfg, dist::Communicator& comm, const c10::Device& device) {
  model::ClipVision vit = model::ClipVision::load(cfg.model);
  vit.to(device);
  vit.set_precision(cfg.precision);
  std::optional<model::Lora> lora;
  if (!cfg.lora.empty()) lora = model::load_peft(cfg.lora, vit.config(), cfg.model);
  if (!cfg.lora_official.empty()) lora = model::load_official(cfg.lora_official, vit.config());
  if (lora) lora->to(device);

  const io::h5::File in = io::h5::File::open_read(cfg.images);
  const std::vector<int64_t> shape = in.shape("/images");
  model::check_image_shape(shape, vit.config(), cfg.images);
  const int64_t n = shape[0];
  if (in.has("/labels")) {  // copied to the output: checked before any work
    const at::Tensor l = in.read("/labels");
    if ((l.scalar_type() != at::kInt && l.scalar_type() != at::kLong) || l.dim() != 1 || l.size(0) != n)
      throw InputError(cfg.images + ": /labels must be int32 or int64 [N] with N = " + std::to_string(n) +
                       " (the image count)");
  }
  const int64_t begin = n * comm.rank() / comm.size(), end = n * (comm.rank() + 1) / comm.size();
  LOG_INFO("embed", "model " << cfg.model << " (" << vit.config().num_hidden_layers << " layers, width "
                             << vit.config().hidden_size << ", feature " << vit.feature_dim() << "); " << n
                             << " images of " << shape[1] << "x" << shape[2] << "x" << shape[3] << "; device "
                             << device);
  Progress progress("embed", "embedding", end - begin, "images");
  const at::Tensor local = fewshot::embed_rows(
      vit, lora ? &*lora : nullptr, begin, end, cfg.batch_size,
      [&](int64_t s, int64_t c) { return in.read("/images", s, c, at::kByte); },
      [&](int64_t c) { progress.advance(c, comm.size()); });
  progress.finish();
  const at::Tensor all = comm.gather_rows(local, 0);
  if (comm.rank() == 0) {
    LORAREC_CHECK(all.size(0) == n, "gathered feature count differs from the image count");
    io::h5::write_file_atomically(cfg.out, [&](io::h5::File& f) {
      f.write("/features", all);
      if (in.has("/labels")) f.write("/labels", in.read("/labels"));
      f.set_attr("/", "model", cfg.model);
      f.set_attr("/", "lora", !cfg.lora.empty() ? cfg.lora : cfg.lora_official);
      f.set_attr("/", "images", cfg.images);
      f.set_attr("/", "producer", std::string("lorarecycle embed ") + LORAREC_VERSION);
    });
    LOG_INFO("embed", "wrote " << cfg.out << ": /features [" << all.size(0) << ", " << all.size(1) << "]");
  }
  comm.barrier();
}

}  // namespace lorarec::eval
