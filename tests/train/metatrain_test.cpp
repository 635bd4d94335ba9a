#include "lorarecycle/train/metatrain.h"

#include "pool_fixture.h"
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <set>

#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "test_util.h"

namespace lorarec::train {
namespace {
namespace stdfs = std::filesystem;

TEST(DrawEpisode, RealClassesNeverCollideAndSupportAndQueryMayMixLoras) {
  test::TempDir tmp;
  // 4 LoRAs over 6 classes, each class covered twice.
  test::write_pool(tmp.path() / "pool", 4, 3, 6, 8, 4, true, {{0, 1, 2}, {3, 4, 5}, {0, 2, 4}, {1, 3, 5}});
  data::SurrogatePool pool = data::SurrogatePool::open((tmp.path() / "pool").string(), 8, 4, int64_t(1) << 30);
  ASSERT_EQ(pool.classes().size(), 6u);
  const data::EpisodeSpec spec{3, 1, 3};
  auto file_of = [&](int64_t r) { return r / 18; };
  int mixed = 0, single = 0;
  for (std::uint64_t e = 0; e < 400; ++e) {
    auto rng = data::make_rng(7, 1, e);
    const EpisodeRows ep = draw_episode(pool, spec, {0, 1, 2, 3}, 0.2, rng);
    ASSERT_EQ(ep.picked.size(), 3u);
    std::set<int64_t> ids;
    for (int c = 0; c < 3; ++c) {
      const auto& cls = pool.classes()[ep.classes[c]];
      ids.insert(cls.id);
      ASSERT_EQ(ep.picked[c].size(), 4u);
      std::set<int64_t> files;
      for (int64_t r : ep.picked[c]) {
        // every row belongs to the episode class: its file's label maps to that real class
        const auto& f = pool.files()[file_of(r)];
        EXPECT_EQ(f.classes[(r - f.first_row) % 3], ep.classes[c]);
        files.insert(file_of(r));
      }
      if (ep.file >= 0) {
        EXPECT_EQ(files, std::set<int64_t>{ep.file});  // single-LoRA episode: one teacher
        EXPECT_EQ(pool.files()[ep.file].classes[ep.cols[c]], ep.classes[c]);
      }
      mixed += files.size() > 1;
    }
    EXPECT_EQ(ids.size(), 3u) << "a real class under two labels in episode " << e;
    single += ep.file >= 0;
  }
  EXPECT_GT(mixed, 100);  // support and query of a class come from different LoRAs
  EXPECT_GT(single, 40);
  EXPECT_LT(single, 120);
}

TEST(DistinctRows, MapsEveryRepeatOfAnImageToItsFirstRow) {
  test::TempDir tmp;
  // File f's image i has every byte (f * 50 + i) % 256: with 80 images per file, file 1's first 30
  // repeat file 0's last 30 (global rows 80-109 = rows 50-79), and its last 50 are new.
  test::write_pool(tmp.path() / "pool", 2, 10, 8, 4, 4);
  for (int64_t cache : {int64_t(1) << 30, int64_t(0)}) {  // in memory, and read row by row
    data::SurrogatePool pool = data::SurrogatePool::open((tmp.path() / "pool").string(), 4, 4, cache);
    const DistinctRows d = distinct_rows(pool);
    ASSERT_EQ(d.rows.size(), 130u);
    ASSERT_EQ(d.of_row.size(), 160u);
    for (int64_t r = 0; r < 160; ++r) {
      const int64_t first = r >= 80 && r < 110 ? r - 30 : r;  // the image's first row
      ASSERT_EQ(d.rows[static_cast<size_t>(d.of_row[static_cast<size_t>(r)])], first) << "row " << r;
      EXPECT_TRUE(pool.images({r}).equal(pool.images({first})));
    }
    EXPECT_TRUE(std::is_sorted(d.rows.begin(), d.rows.end()));
  }
}

TEST(DrawEpisode, DisjointTeachersTakeQueriesFromTheOtherLoras) {
  test::TempDir tmp;
  // 4 LoRAs over 6 classes, each class covered twice, 6 images per LoRA and class.
  test::write_pool(tmp.path() / "pool", 4, 3, 6, 8, 4, true, {{0, 1, 2}, {3, 4, 5}, {0, 2, 4}, {1, 3, 5}});
  data::SurrogatePool pool = data::SurrogatePool::open((tmp.path() / "pool").string(), 8, 4, int64_t(1) << 30);
  const data::EpisodeSpec spec{3, 2, 4};
  auto file_of = [&](int64_t r) { return r / 18; };
  std::map<int, std::set<int64_t>> support_files;  // per pool class: the files its support came from
  for (std::uint64_t e = 0; e < 300; ++e) {
    auto rng = data::make_rng(7, 1, e);
    const EpisodeRows ep = draw_episode(pool, spec, {0, 1, 2, 3}, 0.0, rng, true);
    ASSERT_EQ(ep.file, -1);
    std::set<int> classes(ep.classes.begin(), ep.classes.end());
    EXPECT_EQ(classes.size(), 3u);
    for (int c = 0; c < 3; ++c) {
      const auto& rows = ep.picked[c];
      ASSERT_EQ(rows.size(), 6u);
      EXPECT_EQ(std::set<int64_t>(rows.begin(), rows.end()).size(), 6u);  // no image twice
      for (int64_t r : rows) {
        const auto& f = pool.files()[file_of(r)];
        EXPECT_EQ(f.classes[(r - f.first_row) % 3], ep.classes[c]);
      }
      EXPECT_EQ(file_of(rows[0]), file_of(rows[1]));  // the K = 2 support images: one teacher
      for (int k = 2; k < 6; ++k) EXPECT_NE(file_of(rows[k]), file_of(rows[0])) << "a query from the support's LoRA";
      support_files[ep.classes[c]].insert(file_of(rows[0]));
    }
  }
  for (const auto& [c, files] : support_files) EXPECT_EQ(files.size(), 2u) << "class " << c;  // either LoRA
  // Off, the same draw lets queries come from the support's LoRA.
  int same = 0;
  for (std::uint64_t e = 0; e < 100; ++e) {
    auto rng = data::make_rng(7, 1, e);
    const EpisodeRows ep = draw_episode(pool, spec, {}, 0.0, rng);
    for (const auto& rows : ep.picked)
      for (int k = 2; k < 6; ++k) same += file_of(rows[k]) == file_of(rows[0]);
  }
  EXPECT_GT(same, 100);
  // A class covered by one LoRA cannot be drawn so; Q larger than the other LoRAs hold neither.
  test::write_pool(tmp.path() / "once", 2, 3, 6, 8, 4, true, {{0, 1, 2}, {3, 4, 5}});
  data::SurrogatePool once = data::SurrogatePool::open((tmp.path() / "once").string(), 8, 4, int64_t(1) << 30);
  EXPECT_TRUE(disjoint_support_files(once, once.classes()[0], spec).empty());
  EXPECT_TRUE(disjoint_support_files(pool, pool.classes()[0], data::EpisodeSpec{3, 1, 7}).empty());
  EXPECT_EQ(disjoint_support_files(pool, pool.classes()[0], data::EpisodeSpec{3, 1, 6}).size(), 2u);
}

TEST(DrawEpisode, HardClassesComeFromTheFirstClassesNearest) {
  test::TempDir tmp;
  test::write_pool(tmp.path() / "pool", 4, 3, 6, 8, 4, true, {{0, 1, 2}, {3, 4, 5}, {0, 2, 4}, {1, 3, 5}});
  data::SurrogatePool pool = data::SurrogatePool::open((tmp.path() / "pool").string(), 8, 4, int64_t(1) << 30);
  const auto& classes = pool.classes();
  ASSERT_EQ(classes.size(), 6u);
  // Features on a line: pool class k's images at 10 * (its dataset class id) + noise < 1, so the
  // nearest classes are those with the closest ids.
  at::Tensor feat = at::zeros({pool.size(), 2});
  at::manual_seed(1);
  for (const auto& c : classes)
    for (int64_t r : c.rows) feat[r][0] = 10.0 * double(c.id) + at::rand({1}).item<double>();
  const auto near = nearest_classes(pool, feat, 2);
  std::map<int64_t, int> index_of;
  for (size_t k = 0; k < classes.size(); ++k) index_of[classes[k].id] = static_cast<int>(k);
  EXPECT_EQ(near[index_of[0]], (std::vector<int>{index_of[1], index_of[2]}));
  EXPECT_EQ(near[index_of[5]], (std::vector<int>{index_of[4], index_of[3]}));
  for (int id = 1; id <= 4; ++id) {  // the two ids either side come first (in either order)
    const std::set<int> got(near[index_of[id]].begin(), near[index_of[id]].end());
    EXPECT_EQ(got, (std::set<int>{index_of[id - 1], index_of[id + 1]})) << "class " << id;
  }
  EXPECT_THROW(nearest_classes(pool, feat, 0), InputError);
  EXPECT_THROW(nearest_classes(pool, feat, 6), InputError);
  // Episodes of 3 classes: the first at random, the other two its nearest.
  const data::EpisodeSpec spec{3, 1, 3};
  std::set<int> firsts;
  for (std::uint64_t e = 0; e < 200; ++e) {
    auto rng = data::make_rng(7, 1, e);
    const EpisodeRows ep = draw_episode(pool, spec, {}, 0.0, rng, false, &near);
    ASSERT_EQ(ep.classes.size(), 3u);
    firsts.insert(ep.classes[0]);
    EXPECT_EQ(std::set<int>(ep.classes.begin() + 1, ep.classes.end()),
              std::set<int>(near[ep.classes[0]].begin(), near[ep.classes[0]].end()));
    for (int c = 0; c < 3; ++c)
      for (int64_t r : ep.picked[c])
        EXPECT_NE(std::find(classes[ep.classes[c]].rows.begin(), classes[ep.classes[c]].rows.end(), r),
                  classes[ep.classes[c]].rows.end());
  }
  EXPECT_EQ(firsts.size(), 6u);  // every class can come first
}

TEST(TopPatches, KeepsTheHighestScoresInPatchOrder) {
  const at::Tensor s = at::tensor({0.1f, 0.9f, 0.3f, 0.8f, 0.2f, 0.7f, 0.0f, 0.5f}).view({1, 8});
  EXPECT_TRUE(top_patches(s, 0.0).equal(at::arange(8, at::kLong).view({1, 8})));
  EXPECT_TRUE(top_patches(s, 0.5).equal(at::tensor({1, 3, 5, 7}, at::kLong).view({1, 4})));
  EXPECT_TRUE(top_patches(s, 0.75).equal(at::tensor({1, 3}, at::kLong).view({1, 2})));
  // per row, against a full sort
  at::manual_seed(3);
  const at::Tensor r = at::rand({6, 64});
  const at::Tensor t = top_patches(r, 0.75);
  ASSERT_EQ(t.size(1), 16);
  for (int i = 0; i < 6; ++i) {
    const at::Tensor want = std::get<0>(std::get<1>(r[i].sort(0, true)).narrow(0, 0, 16).sort());
    EXPECT_TRUE(t[i].equal(want));
  }
}

TEST(RandomMaskScores, FixedPerRowVariantAndSeed) {
  using V = std::vector<int>;
  const at::Tensor a = random_mask_scores({3, 7, 11}, V{0, 0, 0}, 64, 5);
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{3, 64}));
  EXPECT_TRUE(a.equal(random_mask_scores({3, 7, 11}, V{0, 0, 0}, 64, 5)));  // reproducible
  EXPECT_TRUE(a[1].equal(random_mask_scores({7}, V{0}, 64, 5)[0]));         // a row's own, whatever the batch
  EXPECT_TRUE(a[2].equal(random_mask_scores({11, 3}, V{0, 0}, 64, 5)[0]));
  EXPECT_FALSE(a.equal(random_mask_scores({3, 7, 11}, V{1, 1, 1}, 64, 5)));  // another variant
  EXPECT_FALSE(a.equal(random_mask_scores({3, 7, 11}, V{0, 0, 0}, 64, 6)));  // another seed
  EXPECT_FALSE(a[0].equal(a[1]));                                            // another row
  // variants per row: each row as if asked alone with its own variant
  const at::Tensor mixed = random_mask_scores({3, 7}, V{2, 0}, 64, 5);
  EXPECT_TRUE(mixed[0].equal(random_mask_scores({3}, V{2}, 64, 5)[0]));
  EXPECT_TRUE(mixed[1].equal(a[1]));
  EXPECT_THROW(random_mask_scores({3, 7}, V{0}, 64, 5), RuntimeError);
  EXPECT_TRUE(a.ge(0).all().item<bool>() && a.lt(1).all().item<bool>());
  // As masks: 16 distinct patches per image, and over many variants every patch is kept about
  // equally often (uniform subsets, unlike the attention-top quarter).
  at::Tensor counts = at::zeros({64}, at::kLong);
  for (int v = 0; v < 400; ++v) {
    const at::Tensor t = top_patches(random_mask_scores({0}, V{v}, 64, 1), 0.75);
    ASSERT_EQ(t.size(1), 16);
    EXPECT_EQ(std::get<0>(at::_unique(t[0])).numel(), 16);
    counts.index_add_(0, t[0], at::ones({16}, at::kLong));
  }
  // 400 x 16 / 64 = 100 per patch; binomial sd ~8.7
  EXPECT_GT(counts.min().item<int64_t>(), 60);
  EXPECT_LT(counts.max().item<int64_t>(), 140);
}

TEST(FlipPatchScores, MirrorsEachRowOfTheGrid) {
  // 2 images, 3x3 grid: patch (r, c) of the flipped image is patch (r, 2 - c) of the original.
  const at::Tensor s = at::arange(18, at::kFloat).view({2, 9});
  const at::Tensor f = flip_patch_scores(s, 3);
  EXPECT_TRUE(f[0].equal(at::tensor({2.f, 1.f, 0.f, 5.f, 4.f, 3.f, 8.f, 7.f, 6.f})));
  EXPECT_TRUE(f[1].equal(s[1].view({3, 3}).flip({1}).reshape({9})));
  EXPECT_TRUE(flip_patch_scores(f, 3).equal(s));
}

// --affine: the identity matrix leaves images as they are; a shift by one pixel moves the ink
// one column and brings in white paper; random maps keep a white image white and its ink.
TEST(AffineImages, MapsInkAndBringsInWhite) {
  const int64_t S = 8;
  at::Tensor u8 = at::full({2, S, S, 3}, 255, at::kByte);
  u8[0].narrow(1, 2, 1).fill_(0);                   // a black column at x = 2
  u8[1].narrow(0, 1, 3).narrow(1, 3, 2).fill_(40);  // a dark block
  const at::Tensor id = at::tensor({1.f, 0.f, 0.f, 0.f, 1.f, 0.f}).view({1, 2, 3}).repeat({2, 1, 1});
  EXPECT_TRUE(affine_images(u8, id).equal(u8));
  // Output x reads input x - 1 pixel (2 / S in normalised coordinates): the ink moves right.
  const at::Tensor right = at::tensor({1.f, 0.f, -2.f / S, 0.f, 1.f, 0.f}).view({1, 2, 3}).repeat({2, 1, 1});
  const at::Tensor moved = affine_images(u8, right);
  EXPECT_TRUE(moved[0].narrow(1, 3, 1).eq(0).all().item<bool>());
  EXPECT_TRUE(moved[0].narrow(1, 2, 1).eq(255).all().item<bool>());
  EXPECT_TRUE(moved.select(2, 0).eq(255).all().item<bool>());  // column 0 came from outside: white
  EXPECT_TRUE(moved[1].narrow(1, 1, S - 1).equal(u8[1].narrow(1, 0, S - 1)));

  // Random maps (their ranges: the data test Augment.RandomAffineStaysInItsRanges).
  std::mt19937_64 rng(5);
  std::vector<float> all;
  for (int i = 0; i < 16; ++i) {
    const std::array<float, 6> m = data::random_affine(1, rng);
    all.insert(all.end(), m.begin(), m.end());
  }
  const at::Tensor theta = at::tensor(all, at::kFloat).view({-1, 2, 3});
  const at::Tensor white = at::full({16, S, S, 3}, 255, at::kByte);
  EXPECT_TRUE(affine_images(white, theta).equal(white));
  // A mapped image differs from the original (the maps are not the identity) but keeps its ink.
  const at::Tensor glyph = u8[1].unsqueeze(0).repeat({16, 1, 1, 1});
  const at::Tensor mapped = affine_images(glyph, theta);
  EXPECT_FALSE(mapped.equal(glyph));
  const double ink0 = at::rsub(glyph.to(at::kFloat), 255).sum().item<double>();
  const double ink1 = at::rsub(mapped.to(at::kFloat), 255).sum().item<double>();
  EXPECT_NEAR(ink1 / ink0, 1.0, 0.25);
}

// --compose: a vertical cut takes the columns from the cut on from the next part image, a horizontal
// cut the rows, axis 0 leaves the image (and uses no part); the parts are not changed.
TEST(ComposeImages, TakesThePartPastTheCutFromThePartner) {
  const int64_t S = 8;
  const at::Tensor a = at::arange(4 * S * S * 3, at::kInt).remainder(200).to(at::kByte).view({4, S, S, 3});
  at::Tensor b = at::full({2, S, S, 3}, 255, at::kByte);
  b[1].fill_(250);
  const at::Tensor b0 = b.clone();
  const at::Tensor out = compose_images(a.clone(), b, {{2, 3}, {0, 0}, {1, 5}, {0, 0}});
  EXPECT_TRUE(out[0].narrow(1, 0, 3).equal(a[0].narrow(1, 0, 3)));
  EXPECT_TRUE(out[0].narrow(1, 3, S - 3).eq(255).all().item<bool>());
  EXPECT_TRUE(out[1].equal(a[1]));
  EXPECT_TRUE(out[2].narrow(0, 0, 5).equal(a[2].narrow(0, 0, 5)));
  EXPECT_TRUE(out[2].narrow(0, 5, S - 5).eq(250).all().item<bool>());  // the second part
  EXPECT_TRUE(out[3].equal(a[3]));
  EXPECT_TRUE(b.equal(b0));
  EXPECT_THROW(compose_images(a.clone(), b, {{2, S + 1}, {0, 0}, {1, 5}, {0, 0}}), std::exception);
  EXPECT_THROW(compose_images(a.clone(), b, {{2, 3}, {0, 0}, {0, 0}, {0, 0}}), std::exception);  // 2 parts, 1 cut
  EXPECT_THROW(compose_images(a.clone(), b, {{2, 3}, {1, 5}}), std::exception);                  // 4 images, 2 cuts
}

TEST(MetaTrainConfig, RejectsBadValues) {
  MetaTrainConfig c;
  c.model = "m", c.pool = "p", c.out = "o";
  EXPECT_NO_THROW(c.validate());
  auto bad = [&](auto edit, const char* msg) {
    MetaTrainConfig d = c;
    edit(d);
    EXPECT_THROW_MSG(d.validate(), InputError, msg);
  };
  bad([](auto& d) { d.mask_ratio = 1.0; }, "--mask-ratio");
  bad([](auto& d) { d.warmup = 100; }, "--warmup");
  bad([](auto& d) { d.resume = d.restart = true; }, "exclude each other");
  bad([](auto& d) { d.spec.q_query = 0; }, "--query");
  bad([](auto& d) { d.single_lora_prob = 1.5; }, "--single-lora-prob");
  bad([](auto& d) { d.keep = "first"; }, "--keep must be last or best");
  bad([](auto& d) { d.keep = "best"; }, "needs --val");
  bad([](auto& d) { d.distill_dense = true, d.mask_ratio = 0.75; }, "--distill-dense");
  bad([](auto& d) { d.distill_dense = true, d.distill_weight = 1; }, "--distill-dense");
  bad([](auto& d) { d.mask_select = "bottom"; }, "--mask-select must be top or random");
  bad([](auto& d) { d.mask_variants = 0; }, "--mask-variants must be >= 1");
  bad([](auto& d) { d.affine = -0.5; }, "--affine must be in [0, 4]");
  bad([](auto& d) { d.affine = 1, d.mask_ratio = 0.5; }, "use --mask-select random with it");
  bad([](auto& d) { d.compose = 1.5; }, "--compose must be in [0, 1]");
  bad([](auto& d) { d.compose = 1, d.compose_partner = "both"; }, "--compose-partner must be other or same");
  bad([](auto& d) { d.compose_partner = "same"; }, "acts on composed episodes only: set --compose P > 0");
  bad([](auto& d) { d.compose = 0.5, d.mask_ratio = 0.5; }, "use --mask-select random with it");
  bad([](auto& d) { d.compose = 0.5, d.distill_weight = 1; }, "--compose makes images that no LoRA's stored features");
  bad([](auto& d) { d.align_weight = -1; }, "--align-weight must be >= 0");
  bad([](auto& d) { d.align_weight = 1; }, "--align-weight aligns the episodes' features with --distill-pool");
  bad([](auto& d) { d.distill_pool = "public"; }, "needs --distill-weight > 0 or --align-weight > 0");
  bad([](auto& d) { d.distill_pool = "public", d.align_weight = 1, d.distill_images = 1; }, "--distill-images >= 2");
  bad([](auto& d) { d.distill_weight = 1, d.distill_pool_weight = 1; }, "give --distill-pool");
  bad([](auto& d) { d.distill_targets = "teacher"; },
      "--distill-targets must be own, start, zoo-mean, zoo-concat or zoo");
  bad([](auto& d) { d.init_partial = true; }, "--init-partial concerns --init zoo-mean or an adapter directory");
  bad([](auto& d) { d.init = "zoo-mean", d.init_partial = true, d.scales_only = true; },
      "--init-partial and --scales-only exclude each other");
  bad([](auto& d) { d.distill_weight = 1, d.distill_targets = "start"; }, "--distill-targets start concerns");
  bad([](auto& d) { d.distill_pool = "public", d.align_weight = 1, d.distill_targets = "start"; }, "which is off");
  bad([](auto& d) { d.distill_pool = "public", d.distill_weight = 1, d.distill_pool_weight = -0.5; },
      "--distill-pool-weight must be >= 0");
  bad([](auto& d) { d.distill_pool = "public", d.distill_weight = 1, d.distill_pool_weight = 0; },
      "with --distill-pool-weight: that weight > 0");
  // --distill-dense concerns the episodes' own distillation: off under a --distill-pool that replaces it
  bad([](auto& d) { d.distill_pool = "public", d.distill_weight = 1, d.distill_dense = true, d.mask_ratio = 0.5; },
      "--distill-dense");
  c.keep = "best", c.val = "v.h5";
  c.distill_dense = true, c.distill_weight = 1, c.mask_ratio = 0.75;
  EXPECT_NO_THROW(c.validate());
  c.distill_dense = false, c.distill_weight = 0, c.distill_pool = "public", c.align_weight = 0.5;
  EXPECT_NO_THROW(c.validate());  // the alignment alone on the public pool
  c.align_weight = 0, c.distill_weight = 1, c.distill_pool_weight = 0.5;
  EXPECT_NO_THROW(c.validate());  // both distillation terms
  EXPECT_EQ(c.public_distill_weight(), 0.5);
  EXPECT_EQ(c.episode_distill_weight(), 1.0);
  c.distill_pool_weight = -1;  // unset: the pool's term replaces the episodes'
  EXPECT_EQ(c.public_distill_weight(), 1.0);
  EXPECT_EQ(c.episode_distill_weight(), 0.0);
  c.distill_pool.clear();
  EXPECT_EQ(c.episode_distill_weight(), 1.0);
}

// distance_gap: 0 when f holds the zoo's distances (one LoRA: its own features, rotated and shifted;
// two LoRAs: their features concatenated, over sqrt 2), a direct double loop's value otherwise,
// unchanged by a common scale, and a gradient that brings f's distances towards the zoo's.
TEST(DistanceGap, MatchesTheZoosPairwiseDistances) {
  at::manual_seed(5);
  const at::Tensor t = at::randn({6, 2, 4}, at::kDouble);
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({4, 4}, at::kDouble)));
  EXPECT_NEAR(distance_gap(at::matmul(t.select(1, 0), q) + 3, t.narrow(1, 0, 1)).item<double>(), 0.0, 1e-10);
  const at::Tensor concat = at::cat({t.select(1, 0), t.select(1, 1)}, 1) / std::sqrt(2.0);
  EXPECT_NEAR(distance_gap(concat, t).item<double>(), 0.0, 1e-10);
  const at::Tensor f = at::randn({6, 3}, at::kDouble);
  double sum = 0, mean = 0;
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j)
      if (i != j)
        mean += 0.5 * ((t[i][0] - t[j][0]).pow(2).sum() + (t[i][1] - t[j][1]).pow(2).sum()).item<double>() / 30;
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j) {
      if (i == j) continue;
      const double ds = (f[i] - f[j]).pow(2).sum().item<double>();
      const double dt = 0.5 * ((t[i][0] - t[j][0]).pow(2).sum() + (t[i][1] - t[j][1]).pow(2).sum()).item<double>();
      sum += std::pow((ds - dt) / mean, 2) / 30;
    }
  EXPECT_NEAR(distance_gap(f, t).item<double>(), sum, 1e-9 * sum);
  EXPECT_NEAR(distance_gap(f * 5, t * 5).item<double>(), sum, 1e-9 * sum);
  at::Tensor x = f.clone().requires_grad_(true);
  const at::Tensor g0 = distance_gap(x, t);
  g0.backward();
  EXPECT_LT(distance_gap((f - 1e-3 * x.grad()).detach(), t).item<double>(), g0.item<double>());
  EXPECT_THROW(distance_gap(at::randn({1, 4}), at::randn({1, 2, 4})), InputError);
  EXPECT_THROW(distance_gap(at::randn({4, 4}), at::randn({3, 2, 4})), InputError);
}

// zoo_concat_features: one LoRA gives back its own features (through both eigendecompositions:
// the scatter matrix when rows >= width, the Gram matrix when fewer); the distances of the targets
// are the concatenation's times one scale when it has no more than D components, and those of its
// top D principal components (an SVD computed here) when it has more; the mean is the zoo's mean.
TEST(ZooConcatFeatures, CarryTheConcatenationsGeometryNearTheMean) {
  at::manual_seed(7);
  for (const int64_t n : {9, 3}) {
    const at::Tensor x = at::randn({n, 1, 4}, at::kDouble);
    EXPECT_TRUE(at::allclose(zoo_concat_features(x), x.select(1, 0), 1e-9, 1e-9)) << n << " rows";
  }
  auto ratios = [](const at::Tensor& a, const at::Tensor& b) {  // off-diagonal |a_i - a_j|^2 / |b_i - b_j|^2
    const at::Tensor off = 1 - at::eye(a.size(0), a.options());
    return at::cdist(a, a).pow(2).masked_select(off.to(at::kBool)) /
           at::cdist(b, b).pow(2).masked_select(off.to(at::kBool));
  };
  const at::Tensor t4 = at::randn({4, 3, 4}, at::kDouble);  // 4 rows: 3 centred components <= D
  const at::Tensor c4 = t4.reshape({4, 12}) / std::sqrt(3.0);
  const at::Tensor r4 = ratios(zoo_concat_features(t4), c4);
  EXPECT_TRUE(at::allclose(r4, r4[0].expand_as(r4), 1e-9, 1e-9));
  const at::Tensor t = at::randn({20, 2, 4}, at::kDouble);  // 8 components > D = 4
  const at::Tensor c = t.reshape({20, 8}) / std::sqrt(2.0), cc = c - c.mean(0, true);
  const at::Tensor top = at::matmul(cc, std::get<2>(at::linalg_svd(cc, false)).narrow(0, 0, 4).t());
  const at::Tensor out = zoo_concat_features(t), r = ratios(out, top);
  EXPECT_TRUE(at::allclose(r, r[0].expand_as(r), 1e-9, 1e-9));
  EXPECT_TRUE(at::allclose(out.mean(0), t.mean(1).mean(0), 1e-9, 1e-9));
  EXPECT_EQ(zoo_concat_features(t.to(at::kFloat)).scalar_type(), at::kFloat);
  EXPECT_THROW(zoo_concat_features(at::randn({1, 2, 4})), InputError);
  EXPECT_THROW(zoo_concat_features(at::randn({4, 4})), InputError);
}

// neighbour_gap: 0 when f has the zoo's distances up to a common scale, a direct double loop's KL
// otherwise (each side's softmax over the other rows of -d / (r x its mean d)), unchanged when f alone
// is scaled, and a gradient that brings f's neighbours towards the zoo's.
TEST(NeighbourGap, MatchesTheZoosNeighbours) {
  at::manual_seed(6);
  const at::Tensor t = at::randn({5, 2, 4}, at::kDouble);
  const at::Tensor concat = at::cat({t.select(1, 0), t.select(1, 1)}, 1);
  EXPECT_NEAR(neighbour_gap(concat * 3 + 1, t, 0.3).item<double>(), 0.0, 1e-10);
  const at::Tensor f = at::randn({5, 3}, at::kDouble);
  auto dist = [](const at::Tensor& x, int i, int j) { return (x[i] - x[j]).pow(2).sum().item<double>(); };
  auto zoo = [&](int i, int j) { return 0.5 * (dist(t.select(1, 0), i, j) + dist(t.select(1, 1), i, j)); };
  auto own = [&](int i, int j) { return dist(f, i, j); };
  auto probs = [](const std::function<double(int, int)>& d, int i, double r) {
    double mean = 0;
    for (int a = 0; a < 5; ++a)
      for (int b = 0; b < 5; ++b)
        if (a != b) mean += d(a, b) / 20;
    std::vector<double> p(5, 0.0);
    double z = 0;
    for (int j = 0; j < 5; ++j)
      if (j != i) z += p[j] = std::exp(-d(i, j) / (r * mean));
    for (double& v : p) v /= z;
    return p;
  };
  double kl = 0;
  for (int i = 0; i < 5; ++i) {
    const auto pt = probs(zoo, i, 0.3), ps = probs(own, i, 0.3);
    for (int j = 0; j < 5; ++j)
      if (j != i) kl += pt[j] * std::log(pt[j] / ps[j]) / 5;
  }
  EXPECT_NEAR(neighbour_gap(f, t, 0.3).item<double>(), kl, 1e-9 * kl);
  EXPECT_NEAR(neighbour_gap(f * 9, t, 0.3).item<double>(), kl, 1e-9 * kl);
  at::Tensor x = f.clone().requires_grad_(true);
  const at::Tensor g0 = neighbour_gap(x, t, 0.3);
  g0.backward();
  EXPECT_LT(neighbour_gap((f - 1e-2 * x.grad()).detach(), t, 0.3).item<double>(), g0.item<double>());
  EXPECT_THROW(neighbour_gap(at::randn({2, 4}), at::randn({2, 2, 4}), 0.3), InputError);
  EXPECT_THROW(neighbour_gap(f, t, 0.0), InputError);
}

// feature_stats_gap: 0 for the same rows in another order, the squared mean shift over the mean
// squared norm for a shifted copy, unchanged by a common scale, and a gradient that moves a's
// statistics towards b's.
TEST(FeatureStatsGap, MeasuresMomentsScaleFree) {
  at::manual_seed(3);
  const at::Tensor b = at::randn({64, 8}, at::kDouble);
  EXPECT_NEAR(feature_stats_gap(b.flip({0}), b).item<double>(), 0.0, 1e-12);
  const at::Tensor shift = at::full({8}, 0.5, at::kDouble);
  const double norm = b.pow(2).sum(1).mean().item<double>();
  EXPECT_NEAR(feature_stats_gap(b + shift, b).item<double>(), 8 * 0.25 / norm, 1e-9);
  const at::Tensor a = at::randn({40, 8}, at::kDouble) * 2 + 1;
  EXPECT_NEAR(feature_stats_gap(a * 7, b * 7).item<double>(), feature_stats_gap(a, b).item<double>(), 1e-9);
  at::Tensor x = a.clone().requires_grad_(true);
  const at::Tensor g0 = feature_stats_gap(x, b);
  g0.backward();
  const at::Tensor stepped = (a - 0.05 * x.grad()).detach();
  EXPECT_LT(feature_stats_gap(stepped, b).item<double>(), g0.item<double>());
  EXPECT_THROW(feature_stats_gap(at::randn({1, 8}), at::randn({4, 8})), InputError);
  EXPECT_THROW(feature_stats_gap(at::randn({4, 8}), at::randn({4, 6})), InputError);
}

}  // namespace
}  // namespace lorarec::train
