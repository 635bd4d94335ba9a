// lorarecycle predict: labelled support images + query images in, predicted labels and class
// probabilities out, in one forward pass of the VFM (+ meta-LoRA): prototypes, softmax over
// negative squared Euclidean distances.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>

#include "cli/commands.h"
#include "cli/options.h"
#include "lorarecycle/data/image_set.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/eval/fewshot.h"
#include "lorarecycle/io/image_file.h"
#include "lorarecycle/io/peft.h"
#include "lorarecycle/model/vit.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::cli {
namespace {
namespace stdfs = std::filesystem;
using json = nlohmann::json;

bool is_h5(const std::string& p) {
  const std::string e = stdfs::path(p).extension().string();
  return e == ".h5" || e == ".hdf5";
}

// Query images with their names.
struct Images {
  std::vector<std::string> names;
  std::vector<at::Tensor> u8;  // [n, S, S, C] blocks at the model's image size S
};

// Images of any size to the model's size (CLIP's geometry), counting how many were resized.
struct Fitter {
  int64_t size;
  int64_t resized = 0, total = 0;
  at::Tensor operator()(const at::Tensor& nhwc) {
    total += nhwc.size(0);
    if (nhwc.size(1) != size || nhwc.size(2) != size) resized += nhwc.size(0);
    return model::fit_images(nhwc, size);
  }
};

// " (not PNG/JPEG: a.webp, b.gif, ...; ...)": the files of a folder that predict does not read.
std::string not_read(const std::vector<std::string>& files) {
  std::string s = " (not PNG/JPEG: ";
  for (size_t i = 0; i < files.size() && i < 3; ++i) s += (i ? ", " : "") + files[i];
  if (files.size() > 3) s += ", ... (" + std::to_string(files.size() - 3) + " more)";
  return s + "; convert them to PNG or JPEG, or import the folder with data_tools/import_folder.py and pass the .h5)";
}

at::Tensor to_rgb(const at::Tensor& u8) { return u8.size(-1) == 1 ? u8.expand({-1, -1, -1, 3}).contiguous() : u8; }

}  // namespace

int run_predict(int argc, char** argv, dist::Runtime& rt) {
  std::string model_dir, lora_dir, support, query, out;
  int batch = 256;
  CommonOptions common;
  po::options_description desc = common_options(common);
  po::options_description own("Prediction options");
  // One option per line:
  // clang-format off
  own.add_options()
      ("model", po::value(&model_dir), "HF model directory of the VFM")
      ("lora", po::value(&lora_dir), "meta-LoRA PEFT directory (e.g. runs/demo/meta); empty: the bare VFM")
      ("support", po::value(&support), "labelled support images: a directory with one sub-directory of PNG/JPEG files per class, or an HDF5 image set")
      ("query", po::value(&query), "comma-separated query images: PNG/JPEG files, directories of them, or HDF5 image sets (labels ignored)")
      ("out", po::value(&out), "output file, .json or .csv (default: JSON on stdout)")
      ("batch-size", po::value(&batch)->default_value(batch), "images per forward pass");
  // clang-format on
  desc.add(own);
  if (!parse("predict",
             "usage: lorarecycle predict --model DIR [--lora META_DIR] --support DIR|SET.h5 --query FILES|DIR|SET.h5 "
             "[--out preds.json|csv]",
             argc, argv, desc, common, rt.rank()))
    return 0;
  if (model_dir.empty() || support.empty() || query.empty())
    throw InputError("predict: --model, --support and --query are required");
  if (!out.empty()) {
    const std::string e = stdfs::path(out).extension().string();
    if (e != ".json" && e != ".csv") throw InputError("predict: --out must end in .json or .csv, got '" + out + "'");
    prov::check_output_file(out, "predict: --out");
  }
  if (batch < 1) throw InputError("predict: --batch-size must be >= 1");

  // Support set, every image brought to the model's image size.
  const model::ClipVisionConfig vit_config = model::load_clip_config(model_dir);
  Fitter fit{vit_config.image_size};
  std::vector<std::string> class_names;
  std::vector<std::string> skipped;  // files in the folders that are not PNG/JPEG
  std::vector<at::Tensor> support_imgs;
  std::vector<int64_t> support_labels;
  if (is_h5(support)) {
    const data::ImageSet s = data::ImageSet::load(support);
    class_names = s.class_names();
    for (int64_t c = 0; c < s.num_classes(); ++c)
      if (s.by_class()[c].empty()) throw InputError(support + ": class '" + class_names[c] + "' has no support image");
    model::check_image_shape(s.images().sizes(), vit_config, support, false);
    support_imgs.push_back(fit(to_rgb(s.images())));
    const auto* l = s.labels().data_ptr<int64_t>();
    support_labels.assign(l, l + s.size());
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
                         (other.empty() ? std::string() : not_read(other)));
      skipped.insert(skipped.end(), other.begin(), other.end());
      for (const auto& f : files) {
        support_imgs.push_back(fit(io::read_image(f).unsqueeze(0)));
        support_labels.push_back(static_cast<int64_t>(class_names.size()));
      }
      class_names.push_back(stdfs::path(d).filename().string());
    }
  }

  // Queries.
  Images q;
  std::stringstream ss(query);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    if (is_h5(item)) {
      const data::ImageSet s = data::ImageSet::load(item);
      model::check_image_shape(s.images().sizes(), vit_config, item, false);
      for (int64_t i = 0; i < s.size(); ++i) q.names.push_back(item + "#" + std::to_string(i));
      q.u8.push_back(fit(to_rgb(s.images())));
    } else if (stdfs::is_directory(item)) {
      std::vector<std::string> other;
      const auto files = io::list_images(item, &other);
      if (files.empty())
        throw InputError(item + ": no PNG/JPEG files" + (other.empty() ? std::string() : not_read(other)));
      skipped.insert(skipped.end(), other.begin(), other.end());
      for (const auto& f : files) {
        q.names.push_back(f);
        q.u8.push_back(fit(io::read_image(f).unsqueeze(0)));
      }
    } else {
      q.names.push_back(item);
      q.u8.push_back(fit(io::read_image(item).unsqueeze(0)));
    }
  }
  if (q.names.empty()) throw InputError("predict: no query images");
  if (!skipped.empty() && rt.rank() == 0)
    LOG_WARN("predict", "skipped " << skipped.size() << " file(s)" << not_read(skipped));
  if (fit.resized > 0 && rt.rank() == 0)
    LOG_WARN("predict", fit.resized << " of " << fit.total << " support and query images resized to the model's "
                                    << fit.size << "x" << fit.size << " (shorter side, bicubic, centre crop)");

  RunContext ctx = start("predict", rt, common, true);
  model::ClipVision vit = model::ClipVision::load(model_dir);
  vit.to(ctx.device);
  vit.set_precision(ctx.precision);
  std::unique_ptr<model::Lora> lora;
  if (!lora_dir.empty()) {
    lora = std::make_unique<model::Lora>(io::load_peft(lora_dir, vit.config(), model_dir));
    lora->to(ctx.device);
  }
  const at::Tensor all = at::cat({at::cat(support_imgs), at::cat(q.u8)});
  const int64_t ns = static_cast<int64_t>(support_labels.size());
  std::vector<at::Tensor> feats;
  {
    at::NoGradGuard ng;
    for (int64_t s = 0; s < all.size(0); s += batch)
      feats.push_back(
          vit.forward(vit.preprocess(all.slice(0, s, std::min<int64_t>(all.size(0), s + batch))), {}, lora.get())
              .feature.to(at::kCPU, at::kFloat));
  }
  const at::Tensor f = at::cat(feats);
  const int64_t C = static_cast<int64_t>(class_names.size());
  const at::Tensor y = at::tensor(support_labels, at::kLong);
  const at::Tensor protos = at::zeros({C, f.size(1)}).index_add_(0, y, f.narrow(0, 0, ns)) /
                            at::bincount(y, {}, C).to(at::kFloat).unsqueeze(1);
  const at::Tensor fq = f.narrow(0, ns, f.size(0) - ns);
  const at::Tensor logits =
      -(fq.pow(2).sum(-1, true) - 2.0 * at::matmul(fq, protos.t()) + protos.pow(2).sum(-1).unsqueeze(0));
  const at::Tensor probs = at::softmax(logits.to(at::kDouble), -1);
  const at::Tensor pred = probs.argmax(-1);

  if (ctx.comm->rank() == 0) {
    std::string text;
    const bool csv = !out.empty() && stdfs::path(out).extension() == ".csv";
    if (csv) {
      text = "query,prediction,probability";
      for (const auto& c : class_names) text += ",p_" + c;
      text += "\n";
      for (size_t i = 0; i < q.names.size(); ++i) {
        const int64_t p = pred[i].item<int64_t>();
        text += q.names[i] + "," + class_names[p] + "," + std::to_string(probs[i][p].item<double>());
        for (int64_t c = 0; c < C; ++c) text += "," + std::to_string(probs[i][c].item<double>());
        text += "\n";
      }
    } else {
      json j = {{"model", model_dir},
                {"lora", lora_dir},
                {"classes", class_names},
                {"support_images", ns},
                {"predictions", json::array()}};
      for (size_t i = 0; i < q.names.size(); ++i) {
        json pr = json::object();
        for (int64_t c = 0; c < C; ++c) pr[class_names[c]] = probs[i][c].item<double>();
        j["predictions"].push_back(
            {{"query", q.names[i]}, {"prediction", class_names[pred[i].item<int64_t>()]}, {"probabilities", pr}});
      }
      text = j.dump(2) + "\n";
    }
    if (out.empty())
      std::cout << text << std::flush;
    else {
      fs::write_text(out, text);
      LOG_INFO("predict", "wrote " << out << ": " << q.names.size() << " predictions over " << C << " classes");
    }
  }
  return 0;
}

}  // namespace lorarec::cli
