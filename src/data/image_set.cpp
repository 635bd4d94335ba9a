#include "lorarecycle/data/image_set.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/util/error.h"

namespace lorarec::data {

ImageSet ImageSet::load(const std::string& path) {
  const io::h5::File f = io::h5::File::open_read(path);
  const auto shape = f.shape("/images");
  if (shape.size() != 4) throw InputError(path + ": /images must be [N, H, W, C]");
  at::Tensor images = f.read("/images", 0, -1, at::kByte);
  if (!f.has("/labels")) throw InputError(path + ": missing dataset '/labels'");
  at::Tensor labels = f.read("/labels");
  if (labels.scalar_type() != at::kInt && labels.scalar_type() != at::kLong)
    throw InputError(path + ": /labels must be int32 or int64");
  std::vector<std::string> names;
  if (f.has("/class_names")) names = f.read_strings("/class_names");
  if (names.empty() && labels.numel() > 0) {
    const int64_t c = labels.max().item<int64_t>() + 1;
    for (int64_t i = 0; i < c; ++i) names.push_back("class " + std::to_string(i));
  }
  return from_tensors(std::move(images), labels.to(at::kLong), std::move(names), path);
}

ImageSet ImageSet::from_tensors(at::Tensor images, at::Tensor labels, std::vector<std::string> class_names,
                                std::string origin) {
  ImageSet s;
  s.origin_ = std::move(origin);
  if (images.dim() != 4 || images.scalar_type() != at::kByte)
    throw InputError(s.origin_ + ": images must be uint8 [N, H, W, C]");
  if (labels.dim() != 1 || labels.size(0) != images.size(0))
    throw InputError(s.origin_ + ": " + std::to_string(labels.numel()) + " labels for " +
                     std::to_string(images.size(0)) + " images");
  s.images_ = images.contiguous();
  s.labels_ = labels.to(at::kLong).contiguous();
  s.class_names_ = std::move(class_names);
  if (s.labels_.numel() > 0) {
    const int64_t lo = s.labels_.min().item<int64_t>(), hi = s.labels_.max().item<int64_t>();
    if (lo < 0 || hi >= s.num_classes())
      throw InputError(s.origin_ + ": labels span [" + std::to_string(lo) + ", " + std::to_string(hi) +
                       "] but there are " + std::to_string(s.num_classes()) + " class names");
  }
  s.index();
  return s;
}

void ImageSet::index() {
  by_class_.assign(num_classes(), {});
  const int64_t* l = labels_.data_ptr<int64_t>();
  for (int64_t i = 0; i < labels_.numel(); ++i) by_class_[l[i]].push_back(i);
}

at::Tensor ImageSet::gather(const std::vector<int64_t>& rows) const {
  const at::Tensor idx = at::tensor(rows, at::kLong);
  return images_.index_select(0, idx);
}

ImageSet ImageSet::subset(const std::vector<int64_t>& rows, const std::string& origin) const {
  const at::Tensor idx = at::tensor(rows, at::kLong);
  return from_tensors(images_.index_select(0, idx), labels_.index_select(0, idx), class_names_, origin);
}

std::pair<std::vector<int64_t>, std::vector<int64_t>> ImageSet::split_per_class(double fraction,
                                                                                std::uint64_t seed) const {
  std::vector<int64_t> a, b;
  for (size_t c = 0; c < by_class_.size(); ++c) {
    std::vector<int64_t> rows = by_class_[c];
    std::mt19937_64 rng = make_rng(seed, 0x5eed, c);
    std::shuffle(rows.begin(), rows.end(), rng);
    const auto cut = static_cast<size_t>(std::lround(fraction * double(rows.size())));
    a.insert(a.end(), rows.begin(), rows.begin() + std::min(cut, rows.size()));
    b.insert(b.end(), rows.begin() + std::min(cut, rows.size()), rows.end());
  }
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  return {a, b};
}

EpisodeSampler::EpisodeSampler(const ImageSet& set, EpisodeSpec spec, const std::string& options)
    : set_(&set), spec_(spec) {
  const std::string change = options.empty() ? std::string() : " (change " + options + ")";
  if (spec.n_way < 1 || spec.k_shot < 1 || spec.q_query < 0)
    throw InputError("episodes need N >= 1, K >= 1 and Q >= 0");
  if (set.num_classes() < spec.n_way)
    throw InputError(set.origin() + ": " + std::to_string(set.num_classes()) + " classes, fewer than N = " +
                     std::to_string(spec.n_way) + " for " + std::to_string(spec.n_way) + "-way episodes" + change);
  const size_t need = static_cast<size_t>(spec.k_shot + spec.q_query);
  for (size_t c = 0; c < set.by_class().size(); ++c)
    if (set.by_class()[c].size() < need)
      throw InputError(set.origin() + ": class '" + set.class_names()[c] + "' (id " + std::to_string(c) + ") has " +
                       std::to_string(set.by_class()[c].size()) + " images, fewer than K+Q = " + std::to_string(need) +
                       change);
}

std::vector<int64_t> sample_without_replacement(int64_t n, int64_t k, std::mt19937_64& rng) {
  std::vector<int64_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  for (int64_t i = 0; i < k; ++i) {
    std::uniform_int_distribution<int64_t> d(i, n - 1);
    std::swap(all[i], all[d(rng)]);
  }
  all.resize(k);
  return all;
}

Episode EpisodeSampler::sample(std::mt19937_64& rng) const {
  Episode e;
  e.classes = sample_without_replacement(set_->num_classes(), spec_.n_way, rng);
  const int take = spec_.k_shot + spec_.q_query;
  for (int64_t c : e.classes) {
    const std::vector<int64_t>& rows = set_->by_class()[c];
    const std::vector<int64_t> pick = sample_without_replacement(static_cast<int64_t>(rows.size()), take, rng);
    for (int i = 0; i < take; ++i) (i < spec_.k_shot ? e.support : e.query).push_back(rows[pick[i]]);
  }
  return e;
}

at::Tensor episode_labels(int n_way, int per_class) {
  return at::arange(n_way, at::kLong).repeat_interleave(per_class);
}

std::array<float, 6> random_affine(double strength, std::mt19937_64& rng) {
  const double pi = 3.14159265358979323846;
  std::uniform_real_distribution<double> u(-1, 1);
  const double angle = u(rng) * strength * 10 * pi / 180, scale = 1 + u(rng) * strength * 0.1;
  const double shear = u(rng) * strength * 0.1;
  const double tx = u(rng) * strength * 0.125, ty = u(rng) * strength * 0.125;  // 1/16 of the side
  // Output to input about the centre: rotation times shear ([[1, shear], [0, 1]]: area kept) over
  // the scale, then the shift. The draws are symmetric, so this map and its inverse are alike.
  const double c = std::cos(angle) / scale, s = std::sin(angle) / scale;
  return {static_cast<float>(c), static_cast<float>(c * shear - s), static_cast<float>(tx),
          static_cast<float>(s), static_cast<float>(s * shear + c), static_cast<float>(ty)};
}

at::Tensor affine_map(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& fill) {
  LORAREC_CHECK(x.dim() == 4 && theta.dim() == 3 && theta.size(0) == x.size(0) && theta.size(1) == 2 &&
                    theta.size(2) == 3 && fill.numel() == x.size(1),
                "affine_map: need x [B, C, H, W], theta [B, 2, 3] and fill [C]");
  const at::Tensor f = fill.to(x.options()).view({1, -1, 1, 1});
  // The sampler brings in zeros from outside: map x - fill, then add fill back.
  const at::Tensor grid = at::affine_grid_generator(theta.to(x.options()), x.sizes(), /*align_corners=*/false);
  return at::grid_sampler_2d(x - f, grid, /*bilinear*/ 0, /*zeros*/ 0, /*align_corners=*/false) + f;
}

at::Tensor random_shift_flip(const at::Tensor& pixels, int max_shift, bool hflip, std::mt19937_64& rng) {
  if (max_shift <= 0 && !hflip) return pixels;
  std::vector<at::Tensor> out;
  std::uniform_int_distribution<int> shift(-max_shift, max_shift);
  std::bernoulli_distribution flip(0.5);
  for (int64_t i = 0; i < pixels.size(0); ++i) {
    at::Tensor x = pixels[i];
    if (max_shift > 0) {
      const int dy = shift(rng), dx = shift(rng);
      x = at::roll(x, {dy, dx}, {1, 2});
    }
    if (hflip && flip(rng)) x = x.flip({2});
    out.push_back(x);
  }
  return at::stack(out);
}

std::mt19937_64 make_rng(std::uint64_t seed, std::uint64_t rank, std::uint64_t step) {
  std::seed_seq seq{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                    static_cast<std::uint32_t>(rank), static_cast<std::uint32_t>(rank >> 32),
                    static_cast<std::uint32_t>(step), static_cast<std::uint32_t>(step >> 32)};
  return std::mt19937_64(seq);
}

}  // namespace lorarec::data
