#include "lorarecycle/fewshot/fewshot.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec::fewshot {
namespace {

TEST(FewShot, PrototypeLogitsAreNegativeSquaredDistances) {
  at::manual_seed(0);
  const at::Tensor s = at::randn({3 * 2, 5}), q = at::randn({4, 5});
  const at::Tensor got = prototype_logits(s, q, 3, 2);
  for (int i = 0; i < 4; ++i)
    for (int c = 0; c < 3; ++c) {
      double d = 0;
      for (int k = 0; k < 5; ++k) {
        const double p = 0.5 * (s[c * 2][k].item<double>() + s[c * 2 + 1][k].item<double>());
        d += std::pow(q[i][k].item<double>() - p, 2);
      }
      EXPECT_NEAR(got[i][c].item<double>(), -d, 1e-4);
    }
}

TEST(FewShot, SummaryIsMeanAndNormalCi) {
  const Accuracy a = summarize({100, 0, 100, 0}, 2.0);
  EXPECT_DOUBLE_EQ(a.mean, 50);
  EXPECT_NEAR(a.ci95, 1.96 * 50 / 2, 1e-9);  // population std 50, sqrt(4) = 2
  EXPECT_DOUBLE_EQ(a.tasks_per_s(), 2.0);
}

TEST(FewShot, SummaryKeepsTheEpisodesInOrder) {
  EXPECT_EQ(summarize({100, 0, 40}, 1.0).values, (std::vector<double>{100, 0, 40}));
}

TEST(FewShot, PairedDifferenceIsTheSummaryOfPerEpisodeDifferences) {
  // d = {20, 0, 40, -20}: mean 10, population std sqrt(500), n 4.
  const Accuracy d = paired_difference({100, 0, 100, 0}, {80, 0, 60, 20});
  EXPECT_DOUBLE_EQ(d.mean, 10);
  EXPECT_NEAR(d.ci95, 1.96 * std::sqrt(500.0) / 2, 1e-9);
  EXPECT_EQ(d.episodes, 4);
  // A shorter list (a per-task method on the first n episodes): compared on those.
  const Accuracy p = paired_difference({100, 0}, {80, 0, 60, 20});
  EXPECT_EQ(p.episodes, 2);
  EXPECT_DOUBLE_EQ(p.mean, 10);
  // The same shift on every episode: no spread, however different the episodes are.
  const Accuracy s = paired_difference({90, 30, 70}, {80, 20, 60});
  EXPECT_DOUBLE_EQ(s.mean, 10);
  EXPECT_NEAR(s.ci95, 0, 1e-12);
  EXPECT_THROW(paired_difference({}, {1, 2}), InputError);
}

TEST(FewShot, RoundRobinValuesGoBackToEpisodeOrder) {
  // 7 episodes over 3 ranks: rank 0 took 0, 3, 6; rank 1 took 1, 4; rank 2 took 2, 5.
  EXPECT_EQ(round_robin_to_order({0, 3, 6, 1, 4, 2, 5}, 3), (std::vector<double>{0, 1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(round_robin_to_order({0, 2, 4, 1, 3}, 2), (std::vector<double>{0, 1, 2, 3, 4}));
  EXPECT_EQ(round_robin_to_order({5, 6}, 1), (std::vector<double>{5, 6}));
  EXPECT_THROW(round_robin_to_order({1}, 0), InputError);
}

TEST(FewShot, SeparableFeaturesScoreHundredAndChanceFeaturesScoreNear20) {
  // 6 classes x 20 images; feature = one-hot of the class (+ tiny noise).
  std::vector<int64_t> labels;
  for (int c = 0; c < 6; ++c)
    for (int i = 0; i < 20; ++i) labels.push_back(c);
  const auto set = data::ImageSet::from_tensors(at::zeros({120, 1, 1, 3}, at::kByte), at::tensor(labels, at::kLong),
                                                {"a", "b", "c", "d", "e", "f"}, "mem");
  at::manual_seed(1);
  const at::Tensor onehot = at::one_hot(at::tensor(labels, at::kLong), 6).to(at::kFloat) + 0.01 * at::randn({120, 6});
  dist::LocalCommunicator comm;
  const data::EpisodeSpec spec{5, 1, 15};
  EXPECT_DOUBLE_EQ(evaluate_prototypes(onehot, set, spec, 50, 3, comm).mean, 100.0);
  const Accuracy chance = evaluate_prototypes(at::randn({120, 6}), set, spec, 400, 3, comm);
  EXPECT_NEAR(chance.mean, 20.0, 4.0);
  EXPECT_EQ(chance.episodes, 400);
}

}  // namespace
}  // namespace lorarec::fewshot
