// `lorarecycle predict` as a library: labelled support images and query images in (PNG/JPEG
// folders, files or HDF5 image sets, any size, brought to the model's size), predicted labels
// and class probabilities out, in one forward pass of the VFM (+ meta-LoRA): prototypes (the mean
// support feature of each class), softmax over negative squared Euclidean distances.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>
#include <vector>

#include "lorarecycle/model/clip_config.h"
#include "lorarecycle/model/vit.h"

namespace lorarec::dist {
class Communicator;
}

namespace lorarec::eval {

struct PredictConfig {
  std::string model;    // VFM directory
  std::string lora;     // meta-LoRA PEFT directory; empty: the bare VFM
  std::string support;  // see load_predict_inputs
  std::string query;
  std::string out;  // .json or .csv; empty: JSON on stdout
  int batch_size = 256;
  model::Precision precision = model::Precision::kFp32;
  // InputError for a missing option, a bad batch size or an --out that is not .json/.csv or not ours.
  void validate() const;
};

struct PredictInputs {
  std::vector<std::string> class_names;
  at::Tensor support;                   // uint8 [n, S, S, 3] at the model's image size
  std::vector<int64_t> support_labels;  // index into class_names
  std::vector<std::string> query_names;
  at::Tensor query;                  // uint8 [m, S, S, 3]
  std::vector<std::string> skipped;  // files in the folders that are not PNG/JPEG
  int64_t resized = 0, total = 0;    // images brought to the model's size, of all read
};

// support: a directory with one sub-directory of PNG/JPEG files per class (at least 2), or an
// HDF5 image set; query: comma-separated PNG/JPEG files, directories of them, or HDF5 image sets
// (labels ignored). InputError naming what is missing or unreadable.
PredictInputs load_predict_inputs(const std::string& support, const std::string& query,
                                  const model::ClipVisionConfig& vit);
// " (not PNG/JPEG: a.webp, ...; convert them ...)": the note on files predict does not read.
std::string not_read_note(const std::vector<std::string>& files);

struct Predictions {
  at::Tensor probs;  // double [m, C]
  at::Tensor pred;   // int64 [m]
};
Predictions predict(const model::ClipVision& vit, const model::Lora* lora, const PredictInputs& in, int batch_size);

// validate(), the support and query images (before any collective: input errors come first), and
// rank 0's warnings about files skipped and images resized.
PredictInputs prepare_predict(const PredictConfig& cfg, int rank);
// The VFM (+ LoRA) on the images, the predictions written by rank 0 to cfg.out or stdout.
void run_predict(const PredictConfig& cfg, const PredictInputs& in, dist::Communicator& comm,
                 const c10::Device& device);

// The predictions as CSV (query, prediction, probability, p_<class>...) or JSON (with the model,
// LoRA and the support image count).
std::string format_predictions(const PredictInputs& in, const Predictions& p, bool csv, const std::string& model_dir,
                               const std::string& lora_dir);

}  // namespace lorarec::eval
