#include "lorarecycle/eval/predict.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/fewshot/fewshot.h"
#include "lorarecycle/io/image_file.h"
#include "lorarecycle/model/peft.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::eval {
namespace {
namespace stdfs = std::filesystem;
using json = nlohmann::json;

bool is_h5(const std::string& p) {
  const std::string e = stdfs::path(p).extension().string();
  return e == ".h5" || e == ".hdf5";
}

at::Tensor to_rgb(const at::Tensor& u8) { return u8.size(-1) == 1 ? u8.expand({-1, -1, -1, 3}).contiguous() : u8; }

// Images of any size to the model's size (CLIP's geometry), counting how many were resized.
struct Fitter {
  int64_t size;
  PredictInputs& in;
  at::Tensor operator()(const at::Tensor& nhwc) {
    in.total += nhwc.size(0);
    if (nhwc.size(1) != size || nhwc.size(2) != size) in.resized += nhwc.size(0);
    return model::fit_images(nhwc, size);
  }
};

void load_support(const std::string& support, const model::ClipVisionConfig& vit, Fitter& fit, PredictInputs& in) {
  std::vector<at::Tensor> imgs;
  if (is_h5(support)) {
    const data::ImageSet s = data::ImageSet::load(support);
    in.class_names = s.class_names();
    for (int64_t c = 0; c < s.num_classes(); ++c)
      if (s.by_class()[c].empty())
        throw InputError(support + ": class '" + in.class_names[c] + "' has no support image");
    model::check_image_shape(s.images().sizes(), vit, support, false);
    imgs.push_back(fit(to_rgb(s.images())));
    const auto* l = s.labels().data_ptr<int64_t>();
    in.support_labels.assign(l, l + s.size());
  } else {
    if (!stdfs::is_directory(support)) throw InputError(support + ": no such directory or HDF5 file");
    std::vector<std::string> dirs;
    for (const auto& e : stdfs::directory_iterator(support))
      if (e.is_directory()) dirs.push_back(e.path().string());
    std::sort(dirs.begin(), dirs.end());
    if (dirs.size() < 2) throw InputError(support + ": needs one sub-directory per class, at least 2 classes");
    for (const auto& d : dirs) {
      std::vector<std::string> other;
      const auto files = io::list_images(d, &other);
      if (files.empty())
        throw InputError("class '" + stdfs::path(d).filename().string() + "' (" + d + ") has no support image" +
                         (other.empty() ? std::string() : not_read_note(other)));
      in.skipped.insert(in.skipped.end(), other.begin(), other.end());
      for (const auto& f : files) {
        imgs.push_back(fit(io::read_image(f).unsqueeze(0)));
        in.support_labels.push_back(static_cast<int64_t>(in.class_names.size()));
      }
      in.class_names.push_back(stdfs::path(d).filename().string());
    }
  }
  in.support = at::cat(imgs);
}

void load_queries(const std::string& query, const model::ClipVisionConfig& vit, Fitter& fit, PredictInputs& in) {
  std::vector<at::Tensor> imgs;
  std::stringstream ss(query);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    if (is_h5(item)) {
      const data::ImageSet s = data::ImageSet::load(item);
      model::check_image_shape(s.images().sizes(), vit, item, false);
      for (int64_t i = 0; i < s.size(); ++i) in.query_names.push_back(item + "#" + std::to_string(i));
      imgs.push_back(fit(to_rgb(s.images())));
    } else if (stdfs::is_directory(item)) {
      std::vector<std::string> other;
      const auto files = io::list_images(item, &other);
      if (files.empty())
        throw InputError(item + ": no PNG/JPEG files" + (other.empty() ? std::string() : not_read_note(other)));
      in.skipped.insert(in.skipped.end(), other.begin(), other.end());
      for (const auto& f : files) {
        in.query_names.push_back(f);
        imgs.push_back(fit(io::read_image(f).unsqueeze(0)));
      }
    } else {
      in.query_names.push_back(item);
      imgs.push_back(fit(io::read_image(item).unsqueeze(0)));
    }
  }
  if (in.query_names.empty()) throw InputError("predict: no query images");
  in.query = at::cat(imgs);
}

}  // namespace

std::string not_read_note(const std::vector<std::string>& files) {
  std::string s = " (not PNG/JPEG: ";
  for (size_t i = 0; i < files.size() && i < 3; ++i) s += (i ? ", " : "") + files[i];
  if (files.size() > 3) s += ", ... (" + std::to_string(files.size() - 3) + " more)";
  return s + "; convert them to PNG or JPEG, or import the folder with data_tools/import_folder.py and pass the .h5)";
}

PredictInputs load_predict_inputs(const std::string& support, const std::string& query,
                                  const model::ClipVisionConfig& vit) {
  PredictInputs in;
  Fitter fit{vit.image_size, in};
  load_support(support, vit, fit, in);
  load_queries(query, vit, fit, in);
  return in;
}

Predictions predict(const model::ClipVision& vit, const model::Lora* lora, const PredictInputs& in, int batch_size) {
  const at::Tensor all = at::cat({in.support, in.query});
  const at::Tensor f = fewshot::embed_rows(vit, lora, 0, all.size(0), batch_size,
                                           [&](int64_t s, int64_t c) { return all.slice(0, s, s + c); });
  const int64_t ns = in.support.size(0);
  const at::Tensor protos = fewshot::class_prototypes(f.narrow(0, 0, ns), at::tensor(in.support_labels, at::kLong),
                                                      static_cast<int64_t>(in.class_names.size()));
  const at::Tensor logits = fewshot::prototype_distances(f.narrow(0, ns, f.size(0) - ns), protos);
  Predictions p;
  p.probs = at::softmax(logits.to(at::kDouble), -1);
  p.pred = p.probs.argmax(-1);
  return p;
}

std::string format_predictions(const PredictInputs& in, const Predictions& p, bool csv, const std::string& model_dir,
                               const std::string& lora_dir) {
  const auto& names = in.class_names;
  const int64_t C = static_cast<int64_t>(names.size());
  if (csv) {
    std::string text = "query,prediction,probability";
    for (const auto& c : names) text += ",p_" + c;
    text += "\n";
    for (size_t i = 0; i < in.query_names.size(); ++i) {
      const int64_t k = p.pred[i].item<int64_t>();
      text += in.query_names[i] + "," + names[k] + "," + std::to_string(p.probs[i][k].item<double>());
      for (int64_t c = 0; c < C; ++c) text += "," + std::to_string(p.probs[i][c].item<double>());
      text += "\n";
    }
    return text;
  }
  json j = {{"model", model_dir},
            {"lora", lora_dir},
            {"classes", names},
            {"support_images", in.support.size(0)},
            {"predictions", json::array()}};
  for (size_t i = 0; i < in.query_names.size(); ++i) {
    json pr = json::object();
    for (int64_t c = 0; c < C; ++c) pr[names[c]] = p.probs[i][c].item<double>();
    j["predictions"].push_back(
        {{"query", in.query_names[i]}, {"prediction", names[p.pred[i].item<int64_t>()]}, {"probabilities", pr}});
  }
  return j.dump(2) + "\n";
}

void PredictConfig::validate() const {
  if (model.empty() || support.empty() || query.empty())
    throw InputError("predict: --model, --support and --query are required");
  if (!out.empty()) {
    const std::string e = stdfs::path(out).extension().string();
    if (e != ".json" && e != ".csv") throw InputError("predict: --out must end in .json or .csv, got '" + out + "'");
    prov::check_output_file(out, "predict: --out");
  }
  if (batch_size < 1) throw InputError("predict: --batch-size must be >= 1");
}

PredictInputs prepare_predict(const PredictConfig& cfg, int rank) {
  cfg.validate();
  const model::ClipVisionConfig vit_config = model::load_clip_config(cfg.model);
  PredictInputs in = load_predict_inputs(cfg.support, cfg.query, vit_config);
  if (!in.skipped.empty() && rank == 0)
    LOG_WARN("predict", "skipped " << in.skipped.size() << " file(s)" << not_read_note(in.skipped));
  if (in.resized > 0 && rank == 0)
    LOG_WARN("predict", in.resized << " of " << in.total << " support and query images resized to the model's "
                                   << vit_config.image_size << "x" << vit_config.image_size
                                   << " (shorter side, bicubic, centre crop)");
  return in;
}

void run_predict(const PredictConfig& cfg, const PredictInputs& in, dist::Communicator& comm,
                 const c10::Device& device) {
  model::ClipVision vit = model::ClipVision::load(cfg.model);
  vit.to(device);
  vit.set_precision(cfg.precision);
  std::unique_ptr<model::Lora> lora;
  if (!cfg.lora.empty()) {
    lora = std::make_unique<model::Lora>(model::load_peft(cfg.lora, vit.config(), cfg.model));
    lora->to(device);
  }
  const Predictions p = predict(vit, lora.get(), in, cfg.batch_size);
  if (comm.rank() != 0) return;
  const bool csv = !cfg.out.empty() && stdfs::path(cfg.out).extension() == ".csv";
  const std::string text = format_predictions(in, p, csv, cfg.model, cfg.lora);
  if (cfg.out.empty()) {
    std::cout << text << std::flush;
  } else {
    fs::write_text(cfg.out, text);
    LOG_INFO("predict", "wrote " << cfg.out << ": " << in.query_names.size() << " predictions over "
                                 << in.class_names.size() << " classes");
  }
}

}  // namespace lorarec::eval
