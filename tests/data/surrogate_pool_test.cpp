#include "lorarecycle/data/surrogate_pool.h"

#include "pool_fixture.h"
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

namespace lorarec::data {
namespace {
namespace stdfs = std::filesystem;
using test::write_pool;

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

// images_into (a GPU step's one pass into page-locked memory) gives what images() and a
// left-right flip give, cached or read on demand, on any number of threads.
TEST(SurrogatePool, ImagesIntoCopiesAndFlipsAsImagesDo) {
  test::TempDir tmp;
  write_pool(tmp.path() / "pool", 3, 5, 4, 8, 4, true, {}, 2, /*textured=*/true);
  const std::vector<int64_t> rows{0, 59, 21, 40, 3, 21, 7};
  const std::vector<bool> flip{true, false, true, true, false, false, true};
  for (int64_t cache : {int64_t(1) << 30, int64_t(0)}) {
    SurrogatePool pool = SurrogatePool::open((tmp.path() / "pool").string(), 8, 4, cache);
    at::Tensor want = pool.images(rows).clone();
    for (size_t i = 0; i < rows.size(); ++i)
      if (flip[i]) want[static_cast<int64_t>(i)].copy_(want[static_cast<int64_t>(i)].flip({1}));
    ASSERT_FALSE(want.equal(pool.images(rows)));  // the flips change these images
    for (int threads : {1, 3, 16}) {
      at::Tensor out = at::full({7, 8, 8, 3}, 255, at::kByte);
      pool.images_into(rows, flip, out, threads);
      EXPECT_TRUE(out.equal(want)) << "cache " << cache << ", threads " << threads;
    }
    at::Tensor wrong = at::empty({7, 8, 4, 3}, at::kByte);
    EXPECT_THROW(pool.images_into(rows, flip, wrong, 2), InputError);
    at::Tensor short_out = at::empty({6, 8, 8, 3}, at::kByte);
    EXPECT_THROW(pool.images_into(rows, flip, short_out, 2), InputError);
    at::Tensor one = at::empty({1, 8, 8, 3}, at::kByte);
    EXPECT_THROW(pool.images_into({60}, {false}, one, 1), InputError);  // rows 0..59
  }
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

// The writer and the reader agree: arrays written by write_pool_file read back through
// SurrogatePool, and write_pool_index pools the classes of two LoRAs that share one.
TEST(SurrogatePool, WriterAndReaderRoundTrip) {
  test::TempDir tmp;
  const stdfs::path dir = tmp.path() / "pool";
  stdfs::create_directories(dir);
  const int N = 3, per = 2, S = 8, P = 4, n = N * per;
  const std::vector<std::vector<int64_t>> ids = {{10, 11, 12}, {12, 13, 10}};
  std::vector<PoolArrays> written;
  std::vector<PoolIndexEntry> entries;
  for (int f = 0; f < 2; ++f) {
    PoolArrays a;
    a.images = at::randint(0, 256, {n, S, S, 3}, at::kByte);
    a.labels = at::arange(N, at::kInt).repeat({per});
    a.global_class = at::tensor(ids[f], at::kLong).index_select(0, a.labels.to(at::kLong)).to(at::kInt);
    a.teacher_logits = at::randn({n, N});
    a.patch_scores = at::rand({n, P});
    a.keep_mask = at::ones({n, P}, at::kByte);
    const std::string path = (dir / pool_file_name(f)).string();
    write_pool_file(path, a, 4, [&](io::h5::File& h) { h.set_attr("/", "lora_id", int64_t{f}); });
    EXPECT_TRUE(pool_file_complete(path));
    EXPECT_NO_THROW(check_pool_file_intact(path));
    EXPECT_EQ(io::h5::File::open_read(path).attr_string("/", "data_digest"), pool_data_digest(a));
    written.push_back(a);
    entries.push_back({pool_file_name(f), f, ids[f]});
  }
  EXPECT_EQ(pool_file_name(7), "lora_007.h5");
  const nlohmann::json index = write_pool_index(dir.string(), {{"model", "m"}}, entries);
  EXPECT_EQ(index.at("format"), kPoolFormat);
  EXPECT_EQ(index.at("model"), "m");
  EXPECT_EQ(index.at("images"), 2 * n);
  ASSERT_EQ(index.at("classes").size(), 4u);  // 10, 11, 12, 13
  EXPECT_EQ(index.at("classes")[0].at("class"), 10);
  EXPECT_EQ(index.at("classes")[0].at("images"), 2 * per);
  EXPECT_EQ(index.at("classes")[0].at("loras"), nlohmann::json({0, 1}));
  EXPECT_EQ(nlohmann::json::parse(fs::read_text(dir / kPoolIndexFile)), index);

  SurrogatePool pool = SurrogatePool::open(dir.string(), S, P, int64_t(1) << 30);
  ASSERT_EQ(pool.classes().size(), 4u);
  ASSERT_EQ(pool.files().size(), 2u);
  std::vector<int64_t> all(2 * n);
  for (int64_t i = 0; i < 2 * n; ++i) all[i] = i;
  EXPECT_TRUE(pool.images(all).equal(at::cat({written[0].images, written[1].images})));
  EXPECT_TRUE(pool.patch_scores().equal(at::cat({written[0].patch_scores, written[1].patch_scores})));
  EXPECT_TRUE(pool.teacher_logits(1).equal(written[1].teacher_logits));
  EXPECT_EQ(pool.files()[1].classes[2], pool.files()[0].classes[0]);  // class 10 in both LoRAs
}

TEST(SurrogatePool, IndexRefusesAMissingFile) {
  test::TempDir tmp;
  EXPECT_THROW_MSG(write_pool_index(tmp.path().string(), nlohmann::json::object(), {{"lora_000.h5", 0, {1, 2}}}),
                   RuntimeError, "lora_000.h5 is missing or incomplete");
}

TEST(SurrogatePool, IntegrityCheckNamesAFileWhoseDataChanged) {
  test::TempDir tmp;
  PoolArrays a{at::zeros({2, 8, 8, 3}, at::kByte),
               at::zeros({2}, at::kInt),
               at::zeros({2}, at::kInt),
               at::zeros({2, 3}),
               at::zeros({2, 4}),
               at::ones({2, 4}, at::kByte)};
  const std::string digest = pool_data_digest(a);
  a.images[1][2][3][0] = 1;  // one byte differs from what the digest was made of
  EXPECT_NE(pool_data_digest(a), digest);
  const std::string path = tmp.file("lora_000.h5");
  io::h5::write_file_atomically(path, [&](io::h5::File& h) {
    for (const auto& [name, t] : {std::pair<const char*, at::Tensor*>{"/images", &a.images},
                                  {"/labels", &a.labels},
                                  {"/global_class", &a.global_class},
                                  {"/teacher_logits", &a.teacher_logits},
                                  {"/patch_scores", &a.patch_scores},
                                  {"/keep_mask", &a.keep_mask}})
      h.write(name, *t);
    h.set_attr("/", "data_digest", digest);
  });
  EXPECT_THROW_MSG(check_pool_file_intact(path), InputError, path + ": corrupt pool file");
  EXPECT_FALSE(pool_file_complete(path));  // no pool_format, no complete mark
}

}  // namespace
}  // namespace lorarec::data
