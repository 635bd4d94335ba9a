#include "lorarecycle/data/image_set.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <set>

#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec::data {
namespace {

// 4 classes; class c has 5 + c images; pixel values encode the row.
ImageSet make_set(int classes = 4) {
  std::vector<int64_t> labels;
  for (int c = 0; c < classes; ++c)
    for (int i = 0; i < 5 + c; ++i) labels.push_back(c);
  const int64_t n = static_cast<int64_t>(labels.size());
  at::Tensor images =
      (at::arange(n, at::kLong) % 256).to(at::kByte).view({n, 1, 1, 1}).expand({n, 4, 4, 3}).contiguous();
  std::vector<std::string> names;
  for (int c = 0; c < classes; ++c) names.push_back("c" + std::to_string(c));
  return ImageSet::from_tensors(images, at::tensor(labels, at::kLong), names, "mem");
}

TEST(ImageSet, LoadsTheBenchmarkFormatAndIndexesClasses) {
  test::TempDir dir;
  const std::string path = dir.file("s.h5");
  io::h5::write_file_atomically(path, [](io::h5::File& f) {
    f.write("/images", at::zeros({6, 2, 2, 3}, at::kByte));
    f.write("/labels", at::tensor({0, 1, 1, 2, 2, 2}, at::kInt));
    f.write_strings("/class_names", {"a", "b", "c"});
  });
  const ImageSet s = ImageSet::load(path);
  EXPECT_EQ(s.size(), 6);
  EXPECT_EQ(s.num_classes(), 3);
  EXPECT_EQ(s.by_class()[2], (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(s.class_names()[1], "b");
}

TEST(ImageSet, RejectsLabelsOutOfRangeAndMissingDatasets) {
  test::TempDir dir;
  const std::string path = dir.file("bad.h5");
  io::h5::write_file_atomically(path, [](io::h5::File& f) {
    f.write("/images", at::zeros({2, 2, 2, 3}, at::kByte));
    f.write("/labels", at::tensor({0, 5}, at::kInt));
    f.write_strings("/class_names", {"a", "b"});
  });
  EXPECT_THROW(ImageSet::load(path), InputError);
  const std::string path2 = dir.file("nolabels.h5");
  io::h5::write_file_atomically(path2, [](io::h5::File& f) { f.write("/images", at::zeros({2, 2, 2, 3}, at::kByte)); });
  EXPECT_THROW(ImageSet::load(path2), InputError);
  const std::string path3 = dir.file("float.h5");
  io::h5::write_file_atomically(path3, [](io::h5::File& f) {
    f.write("/images", at::zeros({2, 2, 2, 3}));
    f.write("/labels", at::tensor({0, 1}, at::kInt));
  });
  EXPECT_THROW(ImageSet::load(path3), InputError);
}

TEST(EpisodeSampler, RefusesAClassWithTooFewImagesNamingIt) {
  const ImageSet s = make_set();  // class c0 has 5 images
  try {
    EpisodeSampler(s, EpisodeSpec{3, 1, 5});
    FAIL() << "accepted";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("class 'c0' (id 0) has 5 images, fewer than K+Q = 6"), std::string::npos) << m;
    EXPECT_NE(m.find("mem"), std::string::npos) << m;
  }
  EXPECT_THROW(EpisodeSampler(s, EpisodeSpec{5, 1, 1}), InputError);  // 4 classes < N
}

TEST(EpisodeSampler, EpisodesAreWellFormedAndDeterministic) {
  const ImageSet s = make_set();
  const EpisodeSampler sampler(s, EpisodeSpec{3, 2, 3});
  for (int i = 0; i < 50; ++i) {
    auto rng = make_rng(1, 0, i);
    const Episode e = sampler.sample(rng);
    ASSERT_EQ(e.classes.size(), 3u);
    EXPECT_EQ(std::set<int64_t>(e.classes.begin(), e.classes.end()).size(), 3u);
    ASSERT_EQ(e.support.size(), 6u);
    ASSERT_EQ(e.query.size(), 9u);
    std::set<int64_t> rows(e.support.begin(), e.support.end());
    rows.insert(e.query.begin(), e.query.end());
    EXPECT_EQ(rows.size(), 15u) << "support and query overlap";
    for (int j = 0; j < 3; ++j) {
      for (int k = 0; k < 2; ++k) EXPECT_EQ(s.labels()[e.support[j * 2 + k]].item<int64_t>(), e.classes[j]);
      for (int k = 0; k < 3; ++k) EXPECT_EQ(s.labels()[e.query[j * 3 + k]].item<int64_t>(), e.classes[j]);
    }
    auto rng2 = make_rng(1, 0, i);
    EXPECT_EQ(sampler.sample(rng2).query, e.query);
  }
  EXPECT_TRUE(at::equal(episode_labels(3, 2), at::tensor({0, 0, 1, 1, 2, 2}, at::kLong)));
}

TEST(ImageSet, SplitPerClassIsDisjointCompleteAndSeeded) {
  const ImageSet s = make_set();
  const auto [a, b] = s.split_per_class(0.8, 3);
  std::set<int64_t> all(a.begin(), a.end());
  for (int64_t r : b) EXPECT_TRUE(all.insert(r).second);
  EXPECT_EQ(static_cast<int64_t>(all.size()), s.size());
  EXPECT_EQ(a.size(), 4u + 5u + 6u + 6u);  // round(0.8 * {5,6,7,8})
  EXPECT_EQ(s.split_per_class(0.8, 3).first, a);
  EXPECT_NE(s.split_per_class(0.8, 4).first, a);
}

TEST(Augment, ShiftRollsEachImageAndIsSeeded) {
  const at::Tensor x = at::arange(2 * 3 * 8 * 8, at::kFloat).view({2, 3, 8, 8});
  auto r1 = make_rng(0, 0, 0), r2 = make_rng(0, 0, 0);
  const at::Tensor a = random_shift_flip(x, 2, true, r1), b = random_shift_flip(x, 2, true, r2);
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_EQ(a.sizes(), x.sizes());
  // A roll/flip permutes pixels: same multiset per image.
  EXPECT_TRUE(at::equal(std::get<0>(a[0].flatten().sort()), std::get<0>(x[0].flatten().sort())));
}

// affine_map: the identity keeps x; a one-pixel shift brings in `fill` per channel; the gradient
// reaches x (the inversion steps through the map); random_affine is seeded.
TEST(Augment, AffineMapBringsInTheFillAndPassesGradients) {
  const int64_t S = 8;
  const at::Tensor x = at::rand({2, 3, S, S}).requires_grad_(true);
  const at::Tensor id = at::tensor({1.f, 0.f, 0.f, 0.f, 1.f, 0.f}).view({1, 2, 3}).repeat({2, 1, 1});
  const at::Tensor fill = at::tensor({2.f, -1.f, 0.5f});
  EXPECT_TRUE(at::allclose(affine_map(x, id, fill), x, 1e-6, 1e-6));
  const at::Tensor right = at::tensor({1.f, 0.f, -2.f / S, 0.f, 1.f, 0.f}).view({1, 2, 3}).repeat({2, 1, 1});
  const at::Tensor y = affine_map(x, right, fill);
  for (int c = 0; c < 3; ++c)
    EXPECT_TRUE(at::allclose(y.select(1, c).select(-1, 0), at::full({2, S}, fill[c].item<float>()), 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(y.narrow(-1, 1, S - 1), x.narrow(-1, 0, S - 1), 1e-6, 1e-6));
  y.sum().backward();
  // Every pixel but the last column moved into the image once: gradient 1 there, 0 in the last.
  EXPECT_TRUE(at::allclose(x.grad().narrow(-1, 0, S - 1), at::ones({2, 3, S, S - 1}), 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(x.grad().select(-1, S - 1), at::zeros({2, 3, S}), 1e-6, 1e-6));
  auto r1 = make_rng(3, 0, 0), r2 = make_rng(3, 0, 0);
  EXPECT_EQ(random_affine(1, r1), random_affine(1, r2));
  EXPECT_NE(random_affine(1, r1), random_affine(1, r1 /* the next draw */));
}

// random_affine: the identity at strength 0; at strength 1 the documented ranges (shift 1/16 of
// the side = 0.125 in normalised coordinates, scale 0.9-1.1 as the determinant 1 / scale^2, since
// the shear keeps area, rotation 10 degrees), each range used.
TEST(Augment, RandomAffineStaysInItsRanges) {
  std::mt19937_64 rng(5);
  EXPECT_EQ(random_affine(0, rng), (std::array<float, 6>{1, 0, 0, 0, 1, 0}));
  double max_shift = 0, min_det = 10, max_det = 0, max_angle = 0;
  for (int i = 0; i < 2000; ++i) {
    const std::array<float, 6> m = random_affine(1, rng);
    max_shift = std::max({max_shift, std::abs(double(m[2])), std::abs(double(m[5]))});
    const double det = double(m[0]) * m[4] - double(m[1]) * m[3];
    min_det = std::min(min_det, det), max_det = std::max(max_det, det);
    max_angle = std::max(max_angle, std::abs(std::atan2(double(m[3]), double(m[0]))));
  }
  EXPECT_LE(max_shift, 0.125 + 1e-6);
  EXPECT_GT(max_shift, 0.1);
  EXPECT_GE(min_det, 1 / (1.1 * 1.1) - 1e-5);
  EXPECT_LE(max_det, 1 / (0.9 * 0.9) + 1e-5);
  EXPECT_LT(min_det, 1 / (1.05 * 1.05));
  EXPECT_GT(max_det, 1 / (0.95 * 0.95));
  EXPECT_LE(max_angle, 10 * 3.14159265358979 / 180 + 1e-6);
  EXPECT_GT(max_angle, 9 * 3.14159265358979 / 180);
}

}  // namespace
}  // namespace lorarec::data
