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

EvalRow row(const std::string& dataset, const std::string& method, int shot, std::vector<double> values) {
  EvalRow r;
  r.dataset = dataset, r.method = method, r.way = 5, r.shot = shot, r.query = 15;
  r.acc = fewshot::summarize(values, 1.0);
  return r;
}

TEST(PairedComparison, EachRowAgainstLoraAvgElseNnOnTheSameEpisodes) {
  std::vector<EvalRow> rows{row("test", "nn", 1, {40, 60, 20, 80}),
                            row("test", "lora-avg", 1, {50, 60, 30, 90}),
                            row("test", "meta", 1, {60, 60, 40, 90}),
                            row("test", "lora-ft", 1, {70, 50}),
                            row("test", "meta", 5, {60, 70}),
                            row("test", "nn", 5, {50, 50}),
                            row("cross", "meta", 1, {30, 20}),
                            row("cross", "nn", 1, {10, 20}),
                            row("test", "lorahub", 1, {})};
  add_paired(rows);
  const auto check = [&](size_t i, const std::string& ref, double diff, int64_t n) {
    EXPECT_EQ(rows[i].ref, ref) << rows[i].dataset << " " << rows[i].method << " " << rows[i].shot;
    EXPECT_DOUBLE_EQ(rows[i].vs_ref.mean, diff) << rows[i].method;
    EXPECT_EQ(rows[i].vs_ref.episodes, n) << rows[i].method;
  };
  check(0, "", 0, 0);                                    // nn: the base, compared with nothing
  check(1, "nn", 7.5, 4);                                // lora-avg against nn
  check(2, "lora-avg", 5, 4);                            // meta against lora-avg: {10, 0, 10, 0}
  check(3, "lora-avg", 5, 2);                            // the first 2 episodes only: {20, -10}
  check(4, "nn", 15, 2);                                 // 5-shot: no lora-avg row, so nn
  check(6, "nn", 10, 2);                                 // another dataset: its own nn
  check(8, "", 0, 0);                                    // no per-episode values: nothing to pair
  EXPECT_NEAR(rows[2].vs_ref.ci95, 1.96 * 5 / 2, 1e-9);  // {10, 0, 10, 0}: population std 5
  EXPECT_NE(format_table(rows).find("+5.00 +- 4.90 vs lora-avg"), std::string::npos) << format_table(rows);
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

// Rows are keyed by dataset and method name (result cache, paired differences): names are unique.
TEST(MethodTable, ValidationRefusesTwoRowsOfOneName) {
  EvalConfig c = config();
  c.data = {"a/test.h5", "b/test.h5"};
  EXPECT_THROW_MSG(c.validate(), InputError, "two --data sets are named 'test' (name them: NAME=path.h5)");
  c.data = {"a/test.h5", "other=b/test.h5"};
  EXPECT_NO_THROW(c.validate());
  c.meta = {"x/m1", "y/m1"};
  EXPECT_THROW_MSG(c.validate(), InputError, "two --meta adapters are named 'm1' (name them: NAME=dir)");
  c.meta = {"lora-avg=x/m1", "y/m1"};
  EXPECT_THROW_MSG(c.validate(), InputError, "--meta 'lora-avg=x/m1' is named 'lora-avg', the name of a method");
  c.meta = {"x/nn"};  // one adapter is named "meta" whatever its directory
  EXPECT_NO_THROW(c.validate());
  c.meta = {"x/m1", "y/m2", "meta=z/m3"};
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
