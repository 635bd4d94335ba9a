#include "lorarecycle/eval/lorahub.h"

#include "zoo_lora.h"
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec::eval {
namespace {

using test::zoo_lora;

TEST(ComposeLoras, WeightsTheAAndBMatricesSeparately) {
  const auto c = test::tiny_config();
  const std::vector<model::Lora> zoo{zoo_lora(c, 1), zoo_lora(c, 2), zoo_lora(c, 3)};
  const std::vector<double> w{0.5, -1.25, 0.75};
  const model::Lora m = compose_loras(zoo, w, c);
  ASSERT_EQ(m.adapters().size(), zoo[0].adapters().size());
  EXPECT_EQ(m.config().r, 4);
  EXPECT_DOUBLE_EQ(m.scale(), zoo[0].scale());
  for (const auto& [key, ad] : m.adapters()) {
    // element by element, in double
    at::Tensor a = at::zeros(ad.a.sizes(), at::kDouble), b = at::zeros(ad.b.sizes(), at::kDouble);
    for (size_t k = 0; k < zoo.size(); ++k) {
      a += w[k] * zoo[k].adapters().at(key).a.to(at::kDouble);
      b += w[k] * zoo[k].adapters().at(key).b.to(at::kDouble);
    }
    EXPECT_LT(test::rel_error(ad.a, a), test::kFloatTol);
    EXPECT_LT(test::rel_error(ad.b, b), test::kFloatTol);
    // the weight delta is the product of the sums, not the sum of the products
    const at::Tensor delta = at::matmul(ad.b.to(at::kDouble), ad.a.to(at::kDouble));
    EXPECT_LT(test::rel_error(delta, at::matmul(b, a)), test::kFloatTol);
  }
  // one-hot weights give that LoRA back: the same features
  const model::ClipVision vit = model::ClipVision::random(c, 5);
  at::manual_seed(4);
  const at::Tensor px = at::randn({3, 3, c.image_size, c.image_size});
  const model::Lora only1 = compose_loras(zoo, {0, 1, 0}, c);
  EXPECT_LT(test::rel_error(vit.forward(px, {}, &only1).feature, vit.forward(px, {}, &zoo[1]).feature),
            test::kFloatTol);
  EXPECT_THROW_MSG(compose_loras(zoo, {1, 2}, c), InputError, "one weight per LoRA");
}

TEST(CmaEs, FindsTheMinimumOfAShiftedQuadratic) {
  const std::vector<double> target{0.3, -0.7, 1.1, 0.0, -0.2};
  int calls = 0;
  auto f = [&](const std::vector<double>& x) {
    ++calls;
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) s += (i + 1) * (x[i] - target[i]) * (x[i] - target[i]);
    return s;
  };
  double best = 0;
  const auto x = cma_es(f, std::vector<double>(5, 0.0), 0.5, 600, -1.5, 1.5, 7, &best);
  EXPECT_EQ(calls, 600);
  EXPECT_LT(best, 1e-4);
  for (size_t i = 0; i < 5; ++i) EXPECT_NEAR(x[i], target[i], 0.02);
  // bounds hold: a minimum outside [-1, 1] is found on the boundary
  const auto y = cma_es([](const std::vector<double>& v) { return (v[0] - 3) * (v[0] - 3) + v[1] * v[1]; }, {0.0, 0.5},
                        0.5, 300, -1.0, 1.0, 3, &best);
  EXPECT_NEAR(y[0], 1.0, 1e-9);
  EXPECT_NEAR(best, 4.0, 1e-3);
}

TEST(Lorahub, TheSearchLowersTheSupportObjectiveBelowEqualWeights) {
  const auto c = test::tiny_config();
  const model::ClipVision vit = model::ClipVision::random(c, 5);
  std::vector<model::Lora> zoo;
  for (int k = 0; k < 4; ++k) zoo.push_back(zoo_lora(c, 10 + k));
  at::manual_seed(11);
  const at::Tensor support = at::randn({5, 3, c.image_size, c.image_size});
  const at::Tensor query = support.repeat({3, 1, 1, 1}) + 0.3 * at::randn({15, 3, c.image_size, c.image_size});
  HubConfig cfg;
  cfg.budget = 60;
  const HubResult r = lorahub_episode(vit, zoo, support, query, 5, 1, cfg, 3);
  EXPECT_EQ(r.evaluations, 60);
  ASSERT_EQ(r.weights.size(), 4u);
  EXPECT_LT(r.objective, r.objective_equal);
  // the start's value is the objective at equal weights 1/K (L1 = 1)
  EXPECT_NEAR(r.objective_equal, hub_support_loss(vit, zoo, std::vector<double>(4, 0.25), support, 5, 1, 1) + cfg.l1,
              1e-6);
  double l1 = 0;
  for (double w : r.weights) {
    EXPECT_LE(std::abs(w), cfg.bound);
    l1 += std::abs(w);
  }
  // the reported objective is the support loss at the weights found plus the L1 term
  EXPECT_NEAR(r.objective, hub_support_loss(vit, zoo, r.weights, support, 5, 1, 1) + cfg.l1 * l1, 1e-6);
  EXPECT_GE(r.accuracy, 0.0);
  EXPECT_LE(r.accuracy, 100.0);
}

}  // namespace
}  // namespace lorarec::eval
