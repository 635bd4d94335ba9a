// `lorarecycle invert`: the zoo sharded over ranks, each LoRA inverted into one HDF5 file of the
// surrogate pool, plus a pool index that meta-training reads.
//
// The pool's layout, writer and reader: data/surrogate_pool.h.
#pragma once

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "lorarecycle/data/zoo_manifest.h"
#include "lorarecycle/invert/invert.h"

namespace lorarec::dist {
class Communicator;
}

namespace lorarec::invert {

struct InvertJobConfig {
  std::string model;  // VFM directory
  std::string zoo;    // zoo directory (manifest.json + lora_<k>/)
  std::string prior;  // BN-prior ResNet (directory or .safetensors); empty: no BN term
  std::string out;    // pool directory
  InversionConfig inv;
  bool preview = false;            // also write lora_<k>.png, a contact sheet of the surrogates
  std::string real_images;         // control: store per_class REAL images of each LoRA's classes from this
                                   // HDF5 set (the zoo's data) instead of inverting; the k-th LoRA covering a
                                   // class gets the k-th block of a seeded permutation of its images
  std::string retrieve;            // HDF5 image set (public, none of the zoo's data) whose images stand in for the
                                   // surrogates instead of inverting: per LoRA, the per_class images of
                                   // retrieve_candidates (drawn per LoRA, seeded) it assigns to each class most
                                   // confidently (retrieve_rows); empty: off
  int retrieve_candidates = 4096;  // images of `retrieve` each LoRA scores (all when the set is smaller)
  std::string init_images;         // HDF5 image set (data/image_set.h) whose images start the inversion instead
                                   // of noise (InversionConfig::init_images); empty: noise
  std::string co_teacher_zoo;      // zoo whose LoRAs serve as co-teachers (inv.co_teachers > 0); empty: --zoo
  std::string feature_prior;       // HDF5 image set whose token statistics the surrogates match
                                   // (InversionConfig::feature_prior); empty: off
  std::string student;             // LoRA adapter directory (e.g. a meta-LoRA) the surrogates are inverted against
                                   // (InversionConfig::w_adv, invert_lora's student); empty: none
  int chunk_images = 64;           // HDF5 chunk (images) of /images
  bool restart = false;            // discard the pool files an earlier run left in `out`
  model::Precision precision = model::Precision::kFp32;  // of the ViT's passes (teacher, inversion)
};

// The settings that fix a pool file's content, keyed by option (util/provenance.h): the zoo
// manifest's, the VFM's (and the prior's, the real images') content digests and the inversion
// settings. Recorded in the pool's marker, in index.json and in every pool file (attribute
// "settings"); a finished file is reused only when they equal today's.
nlohmann::json pool_settings(const InvertJobConfig& cfg);

// Which co-teachers judge which surrogates of `lora` (inv.co_teachers = M > 0): for each class c of
// its task, up to M LoRAs of `zoo` other than `lora` (by directory) whose tasks hold c, drawn
// without replacement (seeded by seed, lora.id and c). One plan per co-teacher: its index in
// `zoo`, the batch rows of invert_lora's class-interleaved layout (row k N + l is image k of
// class l), their column in its head, and the weight 1 / (N per_class x the class's co-teachers).
struct CoTeacherPlan {
  size_t zoo_index = 0;
  std::vector<int64_t> rows, labels;
  std::vector<float> weight;
};
std::vector<CoTeacherPlan> plan_co_teachers(const data::ZooEntry& lora, const std::vector<data::ZooEntry>& zoo, int M,
                                            int per_class, std::uint64_t seed);

// Longest-processing-time-first assignment of costs to `ranks` bins; returns the bin of each
// item. Deterministic (ties to the lowest index).
std::vector<int> lpt_assign(const std::vector<double>& costs, int ranks);

// Collective. Before any work: --out must be new, empty or a pool (exit 2 otherwise), and every
// finished pool file in it must have today's settings (else exit 2 naming the first difference,
// unless cfg.restart, which removes the files).
void run_invert(const InvertJobConfig& cfg, dist::Communicator& comm, const c10::Device& device);

// Writes a PNG (8-bit RGB) of a grid of uint8 [n, H, W, 3] images, `cols` per row.
void write_png_grid(const std::string& path, const at::Tensor& images, int cols);

}  // namespace lorarec::invert
