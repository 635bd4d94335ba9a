// An HDF5 image set in memory (DESIGN 3 format): /images uint8 [N,H,W,C], /labels int32 [N]
// with values in [0, C), /class_names [C] (optional: "class <i>" otherwise).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace lorarec::data {

class ImageSet {
 public:
  // Loads and validates the whole file. InputError naming the file for a missing or wrongly
  // typed dataset, labels out of range, or counts that disagree.
  static ImageSet load(const std::string& path);
  // From tensors (tests, subsets). images uint8 [N,H,W,C], labels int64 [N].
  static ImageSet from_tensors(at::Tensor images, at::Tensor labels, std::vector<std::string> class_names,
                               std::string origin);

  const std::string& origin() const { return origin_; }
  const at::Tensor& images() const { return images_; }  // uint8 [N,H,W,C]
  const at::Tensor& labels() const { return labels_; }  // int64 [N]
  int64_t size() const { return images_.size(0); }
  int64_t num_classes() const { return static_cast<int64_t>(class_names_.size()); }
  const std::vector<std::string>& class_names() const { return class_names_; }
  // Row indices of each class, in stored order.
  const std::vector<std::vector<int64_t>>& by_class() const { return by_class_; }

  // Rows -> uint8 [len, H, W, C] (a copy).
  at::Tensor gather(const std::vector<int64_t>& rows) const;
  // A new set with the given rows (labels and class names kept).
  ImageSet subset(const std::vector<int64_t>& rows, const std::string& origin) const;
  // Per class, a seeded shuffle; the first round(fraction * n) rows go to the first list.
  std::pair<std::vector<int64_t>, std::vector<int64_t>> split_per_class(double fraction, std::uint64_t seed) const;

 private:
  void index();
  std::string origin_;
  at::Tensor images_, labels_;
  std::vector<std::string> class_names_;
  std::vector<std::vector<int64_t>> by_class_;
};

// N-way K-shot Q-query episodes.
struct EpisodeSpec {
  int n_way = 5;     // classes per episode
  int k_shot = 1;    // support images per class
  int q_query = 15;  // query images per class
};

struct Episode {
  std::vector<int64_t> classes;  // [N] class ids of the set
  std::vector<int64_t> support;  // [N*K] rows, class-major: class i's shots at i*K..
  std::vector<int64_t> query;    // [N*Q] rows, class-major
};

// Draws episodes from the classes of a set. Refuses (InputError, naming the class and the file,
// and `options`, the caller's names of N, K and Q, e.g. "--val-way, --val-shot or --val-query")
// a set with fewer than N classes or any class with fewer than K+Q images. Thread-compatible.
class EpisodeSampler {
 public:
  EpisodeSampler(const ImageSet& set, EpisodeSpec spec, const std::string& options = {});
  Episode sample(std::mt19937_64& rng) const;
  const EpisodeSpec& spec() const { return spec_; }

 private:
  const ImageSet* set_;
  EpisodeSpec spec_;
};

// k distinct values of [0, n), uniformly (partial Fisher-Yates), in draw order.
std::vector<int64_t> sample_without_replacement(int64_t n, int64_t k, std::mt19937_64& rng);

// Episode labels 0..N-1 in the class-major layout above: [N*per_class] int64.
at::Tensor episode_labels(int n_way, int per_class);

// Augmentation: each image of [B, C, H, W] rolled (circularly) by its own random offset in
// [-max_shift, max_shift] pixels per axis; optionally flipped horizontally with probability 1/2.
at::Tensor random_shift_flip(const at::Tensor& pixels, int max_shift, bool hflip, std::mt19937_64& rng);

// A random affine map of strength `strength` (0: the identity) as the 2 x 3 matrix (row-major)
// at::affine_grid takes: output coordinates (normalised to [-1, 1], x first) to input coordinates.
// At strength 1: rotation within +-10 degrees, scale 0.9-1.1, shear +-0.1, a shift of up to 1/16 of
// the side per axis, each drawn uniformly; the ranges scale linearly with the strength.
std::array<float, 6> random_affine(double strength, std::mt19937_64& rng);
// x [B, C, H, W] (float) mapped by theta [B, 2, 3] with bilinear interpolation; what the map
// brings in from outside the image is `fill` [C] (per channel). Differentiable in x.
at::Tensor affine_map(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& fill);

// A seeded generator for (seed, rank, step): the same triple always gives the same stream, so a
// resumed run draws what an uninterrupted one would have.
std::mt19937_64 make_rng(std::uint64_t seed, std::uint64_t rank, std::uint64_t step);

}  // namespace lorarec::data
