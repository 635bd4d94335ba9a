// `lorarecycle invert`: the zoo sharded over ranks, each LoRA inverted into one HDF5 file of the
// surrogate pool, plus a pool index that meta-training reads.
//
// Pool layout (<out>/):
//   lora_<kkk>.h5   /images uint8 [n,S,S,3], /labels int32 [n] (local: the LoRA's head),
//                   /global_class int32 [n] (the dataset class id of the zoo task's class),
//                   /teacher_logits float [n,N], /patch_scores float [n,P], /keep_mask uint8 [n,P],
//                   root attributes (lora_id, lora_path (read by metatrain --distill-weight), seed,
//                   iterations, per_class, gray, flip, losses, teacher accuracy, pool_format,
//                   software version, time, complete = 1). Written to a temporary name, renamed.
//   index.json      format, every LoRA file with its dataset class ids and counts, and every real
//                   class with its image count and the LoRAs that cover it (rank 0, at the end).
//   summary.json    per LoRA: teacher accuracy on its own surrogates, losses, seconds, rank.
// Surrogates are pooled by real class (DESIGN 2.4): two LoRAs tuned on the same dataset class put
// their images under one class id, so an episode's support and query of a class may come from
// different teachers. Format 1 (earlier versions) numbered classes per LoRA (lora_id * N + label); such
// files count as incomplete (invert re-inverts them) and metatrain refuses such a pool.
#pragma once

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "lorarecycle/invert/invert.h"

namespace lorarec::dist {
class Communicator;
}

namespace lorarec::invert {

// The pool layout's version (index.json "format", pool files' pool_format attribute).
inline constexpr int kPoolFormat = 2;

struct InvertJobConfig {
  std::string model;  // VFM directory
  std::string zoo;    // zoo directory (manifest.json + lora_<k>/)
  std::string prior;  // BN-prior ResNet (directory or .safetensors); empty: no BN term
  std::string out;    // pool directory
  InversionConfig inv;
  bool preview = false;     // also write lora_<k>.png, a contact sheet of the surrogates
  std::string real_images;  // control: store per_class REAL images of each LoRA's classes from this
                            // HDF5 set (the zoo's data) instead of inverting; the k-th LoRA covering a
                            // class gets the k-th block of a seeded permutation of its images
  int chunk_images = 64;    // HDF5 chunk (images) of /images
  bool restart = false;     // discard the pool files an earlier run left in `out`
  model::Precision precision = model::Precision::kFp32;  // of the ViT's passes (teacher, inversion)
};

// The settings that fix a pool file's content, keyed by option (util/provenance.h): the zoo
// manifest's, the VFM's (and the prior's, the real images') content digests and the inversion
// settings. Recorded in the pool's marker, in index.json and in every pool file (attribute
// "settings"); a finished file is reused only when they equal today's.
nlohmann::json pool_settings(const InvertJobConfig& cfg);

// Longest-processing-time-first assignment of costs to `ranks` bins; returns the bin of each
// item. Deterministic (ties to the lowest index).
std::vector<int> lpt_assign(const std::vector<double>& costs, int ranks);

// Name of LoRA k's pool file: "lora_007.h5".
std::string pool_file_name(int id);
// True when the file is a complete, readable pool file with n images.
bool pool_file_complete(const std::string& path);
// Integrity: the content digest of a pool file's datasets (/images, /labels, /global_class,
// /teacher_logits, /patch_scores, /keep_mask, in that order and in their stored types), as the
// writer records it in the root attribute "data_digest". check_pool_file_intact re-reads the
// datasets and throws InputError naming the file when the digest differs (a flipped bit, a
// truncated dataset); files without the attribute (older versions) pass.
std::string pool_data_digest(const at::Tensor& images, const at::Tensor& labels, const at::Tensor& global_class,
                             const at::Tensor& teacher_logits, const at::Tensor& patch_scores,
                             const at::Tensor& keep_mask);
void check_pool_file_intact(const std::string& path);

// Collective. Before any work: --out must be new, empty or a pool (exit 2 otherwise), and every
// finished pool file in it must have today's settings (else exit 2 naming the first difference,
// unless cfg.restart, which removes the files).
void run_invert(const InvertJobConfig& cfg, dist::Communicator& comm, const c10::Device& device);

// Writes a PNG (8-bit RGB) of a grid of uint8 [n, H, W, 3] images, `cols` per row.
void write_png_grid(const std::string& path, const at::Tensor& images, int cols);

}  // namespace lorarec::invert
