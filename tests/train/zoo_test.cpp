#include "lorarecycle/train/zoo.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec::train {
namespace {

// The coverage sampler: 100 LoRAs x 5 classes over 64 classes (the paper's zoo) of 600.
TEST(ZooTasks, CoverAChosenSetOfClassesEvenly) {
  const auto tasks = zoo_tasks(3, 100, 5, 600, 64);
  ASSERT_EQ(tasks.size(), 100u);
  std::map<int64_t, int> cover;
  for (const auto& t : tasks) {
    ASSERT_EQ(t.size(), 5u);
    EXPECT_EQ(std::set<int64_t>(t.begin(), t.end()).size(), 5u) << "a class twice in one task";
    for (int64_t c : t) {
      EXPECT_GE(c, 0);
      EXPECT_LT(c, 600);
      ++cover[c];
    }
  }
  EXPECT_EQ(cover.size(), 64u);
  int lo = 1000, hi = 0;
  for (const auto& [c, k] : cover) lo = std::min(lo, k), hi = std::max(hi, k);
  EXPECT_GE(lo, 7);  // 500 / 64 = 7.8
  EXPECT_LE(hi, 9);
  // deterministic, and a prefix of a larger zoo is the smaller zoo (a zoo can grow)
  EXPECT_EQ(zoo_tasks(3, 100, 5, 600, 64), tasks);
  const auto small = zoo_tasks(3, 20, 5, 600, 64);
  EXPECT_TRUE(std::equal(small.begin(), small.end(), tasks.begin()));
  EXPECT_NE(zoo_tasks(4, 100, 5, 600, 64), tasks);
}

TEST(ZooTasks, TwentyLorasOverTwentyClassesCoverEachFiveTimes) {
  std::map<int64_t, int> cover;
  for (const auto& t : zoo_tasks(0, 20, 5, 600, 20)) {
    EXPECT_EQ(std::set<int64_t>(t.begin(), t.end()).size(), 5u);
    for (int64_t c : t) ++cover[c];
  }
  ASSERT_EQ(cover.size(), 20u);
  for (const auto& [c, k] : cover) EXPECT_TRUE(k >= 4 && k <= 6) << "class " << c << " covered " << k << " times";
}

TEST(ZooTasks, ZeroClassesKeepsTheIndependentPerLoraDraw) {
  const auto tasks = zoo_tasks(5, 10, 5, 600, 0);
  for (int id = 0; id < 10; ++id) EXPECT_EQ(tasks[id], zoo_task_classes(5, id, 5, 600));
  EXPECT_THROW_MSG(zoo_tasks(5, 10, 5, 600, 601), InputError, "only 600 classes");
  ZooConfig c;
  c.model = "m", c.data = "d", c.out = "o", c.cover_classes = 3;
  EXPECT_THROW_MSG(c.validate(), InputError, "--classes");
}

}  // namespace
}  // namespace lorarec::train
