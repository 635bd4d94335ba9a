#include "lorarecycle/train/metatrain.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <set>

#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "test_util.h"

namespace lorarec::train {
namespace {
namespace stdfs = std::filesystem;

// A pool of `files` LoRAs, N classes, `per` images per class, S x S images, P patches. File f's
// label l is dataset class ids[f][l] (default: f * N + l, no class shared). format < 2 writes the
// old layout (no format marks).
void write_pool(const stdfs::path& dir, int files, int N, int per, int S, int P, bool complete = true,
                std::vector<std::vector<int>> ids = {}, int format = 2) {
  stdfs::create_directories(dir);
  nlohmann::json index = {{"files", nlohmann::json::array()}};
  if (format >= 2) index["format"] = format;
  if (ids.empty())
    for (int f = 0; f < files; ++f) {
      ids.emplace_back();
      for (int l = 0; l < N; ++l) ids.back().push_back(f * N + l);
    }
  for (int f = 0; f < files; ++f) {
    const int n = N * per;
    const std::string name = "lora_00" + std::to_string(f) + ".h5";
    std::vector<int32_t> labels, global;
    for (int i = 0; i < n; ++i) labels.push_back(i % N), global.push_back(ids[f][i % N]);
    // image i of file f: every byte = (f * 50 + i) % 256
    at::Tensor img = (at::arange(n, at::kInt) + f * 50)
                         .remainder(256)
                         .to(at::kByte)
                         .view({n, 1, 1, 1})
                         .expand({n, S, S, 3})
                         .contiguous();
    io::h5::write_file_atomically((dir / name).string(), [&](io::h5::File& h) {
      h.write("/images", img, 4);
      h.write("/labels", at::tensor(labels, at::kInt));
      h.write("/global_class", at::tensor(global, at::kInt));
      if (format >= 2) h.set_attr("/", "pool_format", int64_t(format));
      h.write("/teacher_logits", at::randn({n, N}));
      h.write("/patch_scores", at::rand({n, P}));
      h.write("/keep_mask", at::ones({n, P}, at::kByte));
      if (complete) h.set_attr("/", "complete", int64_t(1));
    });
    index["files"].push_back({{"file", name}, {"lora_id", f}, {"images", n}, {"classes", N}});
  }
  fs::write_text(dir / "index.json", index.dump());
}

TEST(SurrogatePool, CachedAndOnDemandReadsAgree) {
  test::TempDir tmp;
  write_pool(tmp.path() / "pool", 3, 5, 4, 8, 4);
  SurrogatePool cached = SurrogatePool::open((tmp.path() / "pool").string(), 8, 4, int64_t(1) << 30);
  SurrogatePool lazy = SurrogatePool::open((tmp.path() / "pool").string(), 8, 4, 0);
  EXPECT_TRUE(cached.cached());
  EXPECT_FALSE(lazy.cached());
  EXPECT_EQ(cached.size(), 60);
  ASSERT_EQ(cached.classes().size(), 15u);  // no class shared: 3 x 5 distinct classes
  for (const auto& c : cached.classes()) EXPECT_EQ(c.rows.size(), 4u);
  const std::vector<int64_t> rows{0, 59, 21, 40, 3};
  const at::Tensor a = cached.images(rows), b = lazy.images(rows);
  EXPECT_TRUE(a.equal(b));
  EXPECT_EQ(a[1][0][0][0].item<int>(), (2 * 50 + 19) % 256);  // row 59 = file 2, image 19
  EXPECT_EQ(a[2][3][3][2].item<int>(), (1 * 50 + 1) % 256);   // row 21 = file 1, image 1
  // rows of a class all carry its label
  const auto& c7 = cached.classes()[7];  // file 1, local class 2
  EXPECT_EQ(c7.id, 7);
  EXPECT_EQ(c7.loras, 1);
  EXPECT_EQ(cached.files()[1].classes[2], 7);
  for (int64_t r : c7.rows) EXPECT_EQ((r - 20) % 5, 2);
}

// Two LoRAs tuned on overlapping tasks: file 0 covers classes {10, 11, 12}, file 1 {12, 13, 10}.
TEST(SurrogatePool, PoolsImagesByRealClassAcrossLoras) {
  test::TempDir tmp;
  write_pool(tmp.path() / "pool", 2, 3, 4, 8, 4, true, {{10, 11, 12}, {12, 13, 10}});
  SurrogatePool pool = SurrogatePool::open((tmp.path() / "pool").string(), 8, 4, int64_t(1) << 30);
  ASSERT_EQ(pool.classes().size(), 4u);  // 10, 11, 12, 13: one label per real class
  std::map<int64_t, const SurrogatePool::Class*> by_id;
  for (const auto& c : pool.classes()) by_id[c.id] = &c;
  ASSERT_EQ(by_id.size(), 4u);
  EXPECT_EQ(by_id[10]->rows.size(), 8u);  // 4 from each LoRA
  EXPECT_EQ(by_id[10]->loras, 2);
  EXPECT_EQ(by_id[12]->loras, 2);
  EXPECT_EQ(by_id[11]->rows.size(), 4u);
  // file 1's label 2 is class 10, the same class as file 0's label 0
  EXPECT_EQ(pool.files()[1].classes[2], pool.files()[0].classes[0]);
  for (int64_t r : by_id[10]->rows) EXPECT_EQ(r < 12 ? r % 3 : (r - 12) % 3, r < 12 ? 0 : 2);
}

TEST(DrawEpisode, RealClassesNeverCollideAndSupportAndQueryMayMixLoras) {
  test::TempDir tmp;
  // 4 LoRAs over 6 classes, each class covered twice.
  write_pool(tmp.path() / "pool", 4, 3, 6, 8, 4, true, {{0, 1, 2}, {3, 4, 5}, {0, 2, 4}, {1, 3, 5}});
  SurrogatePool pool = SurrogatePool::open((tmp.path() / "pool").string(), 8, 4, int64_t(1) << 30);
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

TEST(SurrogatePool, RefusesAPoolOfTheOldPerLoraLayout) {
  test::TempDir tmp;
  write_pool(tmp.path() / "old", 2, 5, 4, 8, 4, true, {}, /*format=*/1);
  EXPECT_THROW_MSG(SurrogatePool::open((tmp.path() / "old").string(), 8, 4, 0), InputError,
                   "re-run `lorarecycle invert`");
}

TEST(SurrogatePool, RefusesIncompleteOrMisshapedFiles) {
  test::TempDir tmp;
  write_pool(tmp.path() / "a", 1, 5, 4, 8, 4, /*complete=*/false);
  EXPECT_THROW_MSG(SurrogatePool::open((tmp.path() / "a").string(), 8, 4, 0), InputError, "incomplete pool file");
  write_pool(tmp.path() / "b", 1, 5, 4, 8, 4);
  EXPECT_THROW_MSG(SurrogatePool::open((tmp.path() / "b").string(), 16, 4, 0), InputError,
                   "/images must be [n, 16, 16, 3]");
  EXPECT_THROW_MSG(SurrogatePool::open((tmp.path() / "b").string(), 8, 9, 0), InputError, "9 patches expected");
  EXPECT_THROW_MSG(SurrogatePool::open((tmp.path() / "none").string(), 8, 4, 0), InputError, "no pool index");
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

TEST(FlipPatchScores, MirrorsEachRowOfTheGrid) {
  // 2 images, 3x3 grid: patch (r, c) of the flipped image is patch (r, 2 - c) of the original.
  const at::Tensor s = at::arange(18, at::kFloat).view({2, 9});
  const at::Tensor f = flip_patch_scores(s, 3);
  EXPECT_TRUE(f[0].equal(at::tensor({2.f, 1.f, 0.f, 5.f, 4.f, 3.f, 8.f, 7.f, 6.f})));
  EXPECT_TRUE(f[1].equal(s[1].view({3, 3}).flip({1}).reshape({9})));
  EXPECT_TRUE(flip_patch_scores(f, 3).equal(s));
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
  c.keep = "best", c.val = "v.h5";
  c.distill_dense = true, c.distill_weight = 1, c.mask_ratio = 0.75;
  EXPECT_NO_THROW(c.validate());
}

}  // namespace
}  // namespace lorarec::train
