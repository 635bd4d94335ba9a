// The evaluation's pieces: the method table, the lora-avg method (the zoo's mean weight delta)
// and the lora-ft episode.
#include "lorarecycle/eval/methods.h"

#include "zoo_lora.h"
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/eval/evaluate.h"
#include "lorarecycle/fewshot/fewshot.h"
#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec::eval {
namespace {

using test::zoo_lora;

EvalConfig config() {
  EvalConfig c;
  c.model = "vfm";
  c.data = {"test.h5"};
  return c;
}

TEST(MethodTable, NamesEachMethodOnceFixedMethodsFirst) {
  std::vector<std::string> names;
  bool seen_per_task = false;
  for (const MethodSpec& m : method_table()) {
    names.push_back(m.name);
    EXPECT_EQ(find_method(m.name), &m);
    EXPECT_TRUE(m.make) << m.name;
    if (m.adapts == Adapts::kPerTask) seen_per_task = true;
    EXPECT_FALSE(seen_per_task && m.adapts == Adapts::kFixed) << m.name << ": a kFixed method after a kPerTask one";
  }
  EXPECT_EQ(names, (std::vector<std::string>{"nn", "lora-avg", "meta", "lora-ft", "lorahub"}));
  EXPECT_EQ(find_method("nope"), nullptr);
  EXPECT_EQ(method_names(), "nn, lora-avg, meta, lora-ft, lorahub");
}

TEST(MethodTable, WantedMethodsFollowTheOptions) {
  EvalConfig c = config();
  std::set<std::string> wanted;
  for (const MethodSpec& m : method_table())
    if (method_wanted(m, c)) wanted.insert(m.name);
  EXPECT_EQ(wanted, (std::set<std::string>{"nn", "lora-ft"}));  // no --zoo, no --meta
  c.zoo = "zoo";
  c.meta = {"m"};
  wanted.clear();
  for (const MethodSpec& m : method_table())
    if (method_wanted(m, c)) wanted.insert(m.name);
  EXPECT_EQ(wanted.size(), 5u);
  c.methods = {"meta"};
  EXPECT_TRUE(method_wanted(*find_method("meta"), c));
  EXPECT_FALSE(method_wanted(*find_method("nn"), c));
}

TEST(MethodTable, ValidationNamesWhatAMethodNeeds) {
  EvalConfig c = config();
  c.methods = {"knn"};
  EXPECT_THROW_MSG(c.validate(), InputError, "unknown method 'knn' (nn, lora-avg, meta, lora-ft, lorahub)");
  c.methods = {"nn", "lorahub"};
  EXPECT_THROW_MSG(c.validate(), InputError, "method lorahub needs --zoo");
  c.methods = {"meta"};
  EXPECT_THROW_MSG(c.validate(), InputError, "method meta needs --meta");
  c.meta = {"dir"};
  EXPECT_NO_THROW(c.validate());
}

// lora-avg is one adapter whose weight delta is the mean of the zoo's deltas.
TEST(LoraAvgMethod, ItsWeightDeltaIsTheMeanOfTheZoos) {
  const auto cfg = test::tiny_config();
  const model::ClipVision vit = model::ClipVision::random(cfg, 5);
  std::vector<model::Lora> zoo{zoo_lora(cfg, 1), zoo_lora(cfg, 2), zoo_lora(cfg, 3)};
  EvalConfig ec = config();
  ec.zoo = "zoo";
  MethodContext ctx{ec, vit, c10::Device(at::kCPU), &zoo, "zoo files"};
  std::vector<MethodInstance> made = find_method("lora-avg")->make(ctx);
  ASSERT_EQ(made.size(), 1u);
  const MethodInstance& m = made[0];
  EXPECT_EQ(m.name, "lora-avg");
  EXPECT_EQ(m.source, "zoo files");
  EXPECT_EQ(m.input, "zoo");
  ASSERT_TRUE(m.lora);
  for (const auto& [key, ad] : m.lora->adapters()) {
    at::Tensor mean = at::zeros({ad.b.size(0), ad.a.size(1)}, at::kDouble);
    for (const auto& l : zoo) {
      const auto& z = l.adapters().at(key);
      mean += l.scale() * at::matmul(z.b.to(at::kDouble), z.a.to(at::kDouble)) / double(zoo.size());
    }
    const at::Tensor delta = m.lora->scale() * at::matmul(ad.b.to(at::kDouble), ad.a.to(at::kDouble));
    EXPECT_LT(test::rel_error(delta, mean), test::kFloatTol);
  }
}

// lora-ft starts from the prototype classifier: with no step its predictions are the prototypes'.
// Its steps fit the support set.
TEST(LoraFtEpisode, StartsAtThePrototypesAndFitsTheSupport) {
  const auto cfg = test::tiny_config();
  const model::ClipVision vit = model::ClipVision::random(cfg, 7);
  const int way = 3, shot = 2, q = 4;
  at::manual_seed(11);
  const at::Tensor support = at::randn({way * shot, 3, cfg.image_size, cfg.image_size});
  const at::Tensor query = at::randn({way * q, 3, cfg.image_size, cfg.image_size});
  const model::LoraConfig lc{};
  // steps 0: the head is the prototype classifier
  const at::Tensor fs = vit.forward(support).feature, fq = vit.forward(query).feature;
  const at::Tensor pred = fewshot::prototype_logits(fs, fq, way, shot).argmax(-1);
  const double proto_acc = 100.0 * pred.eq(data::episode_labels(way, q)).to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(finetune_episode(vit, support, query, way, shot, lc, 0, 1e-2, 3), proto_acc, 1e-9);
  // the support set as the queries: fine-tuning on it classifies it
  const at::Tensor support_as_query = support.view({way, shot, 3, cfg.image_size, cfg.image_size})
                                          .repeat({1, q / shot, 1, 1, 1})
                                          .view({way * q, 3, cfg.image_size, cfg.image_size});
  EXPECT_DOUBLE_EQ(finetune_episode(vit, support, support_as_query, way, shot, lc, 30, 1e-2, 3), 100.0);
}

}  // namespace
}  // namespace lorarec::eval
